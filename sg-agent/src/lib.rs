//! sg-agent as a library: the pipeline from a policy file to enforcement, one layer a module.
//!
//! ```text
//! config    the only code that knows file formats (native YAML, CloudFormation, describe JSON)
//! policy    the validated model
//! image     MapImage: the contents of the kernel's policy maps for one generation
//! bind      which local interface carries which policy interface (by name or by address)
//! compile   pure: Policy -> MapImage (the contents of the kernel maps)
//! lint      pure: the best-practice checks of `sg-agent lint` over a Policy
//! model     the reference model of SEMANTICS.md: slow, plain, shares only `policy` with compile
//! packet    abstract packets and the Ethernet frames built from them (tests, explain)
//! dataplane the only code that imports aya: load, pin, attach, swap, counters, conntrack
//! state     pins, the state file and the apply lock of one network namespace
//! store     the fleet's store (etcd): key layout, client, follower, import/export/status
//! api       the EC2 Query API (aws CLI, boto3) writing groups into the store
//! agent     one namespace's enforcement over time: apply, status, counters, explain, detach
//! daemon    apply, then stay: reloads, metrics, flow logs, systemd notification
//! cli       the `sg-agent` command line, one module per verb
//! error     the error kinds and the exit code each one means
//! ```
//! Above the pipeline the imports only go down: cli -> daemon -> store / agent -> the layers.
//! Product functions stay under 80 lines (clippy.toml); tests may be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]
pub mod agent;
pub mod api;
pub mod bind;
pub mod cli;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod image;
pub mod lint;
pub mod model;
pub mod packet;
pub mod policy;
pub mod state;
pub mod store;

/// The eBPF object (sg-ebpf for bpfel-unknown-none), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf.o"));

/// `sg-agent --version`: the crate version and the kernel ABI version it speaks.
pub fn version_string() -> String {
    format!(
        "{} (ABI {})",
        env!("CARGO_PKG_VERSION"),
        sg_common::ABI_VERSION
    )
}
