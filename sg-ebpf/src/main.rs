//! sg's dataplane: the entry points, and nothing else. Each hands its context to the one
//! generic pipeline (`pipeline.rs`) with its direction.
//!
//! ```text
//! clock.rs      the pipeline's clock (jiffies, calibrated) and the sg_clock program
//! ctx.rs        the Hook trait over XDP/TC and the one bounds-checked packet accessor
//! parse.rs      Ethernet/VLAN/IPv4/IPv6/L4 -> Pkt (family-agnostic), malformed reasons
//! pipeline.rs   the order of the steps; exemptions (N1, N2)
//! frag.rs       G1: first-fragment verdicts, later fragments
//! conntrack.rs  keys, lookup/expiry, state machine, creation and promotion (C1-C6)
//! related.rs    ICMP errors quoting a tracked flow (I2)
//! policy.rs     SG_ACTIVE -> SG_IFACES -> SG_PEERS -> SG_PORTS (E1-E6)
//! verdict.rs    what a step decides (reason, rule charged) and its packed form
//! funnel.rs     the one exit: counters, events, the action value
//! events.rs     ring-buffer events with a per-CPU token bucket
//! maps.rs       every map
//! ```
//!
//! Frames. Everything is `#[inline(always)]` except the steps marked `#[inline(never)]`
//! (the promotion of a flow from `SG_CT_NEW` to `SG_CT`, flow creation and the lookup that
//! follows a lost creation race, related ICMP, later fragments, fragment record, events):
//! each is a BPF-to-BPF call with its own stack frame, all called from the entry point, never
//! from each other, so the deepest chain is the entry frame plus one step. As one function
//! the program needed ~900 bytes of stack (the limit is 512). Those steps return a packed
//! scalar (`verdict::Packed`), never an `Option`/`Result`. What a packet of a known flow
//! needs (parse, the hit in `SG_CT` or `SG_CT_NEW`, the verdict funnel) is inline: that path
//! makes no BPF-to-BPF call.
//!
//! Verifier workarounds are labelled `// verifier: <the message it avoids>` where they are.
//!
//! On the host (clippy, `cargo check --workspace`) the modules are type-checked; only the
//! entry points, the panic handler and the license are BPF-only.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(
    not(target_arch = "bpf"),
    expect(
        dead_code,
        reason = "on the host the entry points, the only callers, are compiled out"
    )
)]

mod clock;
mod conntrack;
mod ctx;
mod events;
mod frag;
mod funnel;
mod maps;
mod parse;
mod pipeline;
mod policy;
mod related;
mod verdict;

#[cfg(target_arch = "bpf")]
mod bpf {
    use aya_ebpf::{
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use sg_common::{DIR_EGRESS, DIR_INGRESS};

    use crate::{clock, pipeline};

    /// Ingress at XDP (the default on NIC-like devices).
    #[xdp]
    pub fn sg_xdp_in(ctx: XdpContext) -> u32 {
        pipeline::run(&ctx, DIR_INGRESS)
    }

    /// Ingress at TC (keeps GRO/TSO batching; the default on veth).
    #[classifier]
    pub fn sg_tc_in(ctx: TcContext) -> i32 {
        pipeline::run(&ctx, DIR_INGRESS) as i32
    }

    /// Egress at TC.
    #[classifier]
    pub fn sg_tc_out(ctx: TcContext) -> i32 {
        pipeline::run(&ctx, DIR_EGRESS) as i32
    }

    /// The clock's calibration sample (never attached; the agent test-runs it).
    #[xdp]
    pub fn sg_clock(ctx: XdpContext) -> u32 {
        clock::sample(&ctx)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(no_mangle)]
    #[unsafe(link_section = "license")]
    pub static LICENSE: [u8; 4] = *b"GPL\0";
}

/// The host build (clippy, `cargo check --workspace`) only type-checks this crate.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
