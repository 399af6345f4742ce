//! sg's test kit: everything the tests, the lab and the bench share that is not the product.
//! Never shipped: `cargo tree -p sg-agent -e normal` does not contain it.
//!
//! ```text
//! random             random valid policies, packet sequences and fuzz drivers (proptest)
//! lookup             the kernel's policy lookup, in userspace, over a MapImage (the oracle)
//! netns              network namespaces, veth links and processes, deleted on drop
//! dataplane_harness  the privileged dataplane tests' namespace, image builder and fixture runner
//! agent_harness      the agent tests' two-namespace site driving the real sg-agent binary
//! etcd               real etcd clusters in namespaces, hosts beside them, fault controls
//! fleet              agents following one etcd store on those hosts, traffic between them
//! aws                the aws CLI and boto3 (target/aws-venv) against `sg-agent api`
//! ```
//!
//! One harness per level a test runs at: the model (`sg_agent::model`, no harness needed),
//! the kernel programs through BPF_PROG_TEST_RUN (`dataplane_harness`), the agent binary in
//! two namespaces (`agent_harness`), and whole labs of hosts with real clients and servers
//! (`sg_lab::bed` and its probe tables, `sg_lab::probe::table`).
pub mod agent_harness;
pub mod aws;
pub mod dataplane_harness;
pub mod etcd;
pub mod fleet;
pub mod lookup;
pub mod netns;
pub mod random;

use std::path::PathBuf;
use std::sync::OnceLock;

use sg_agent::config::TemplateInputs;
use sg_agent::policy::{IcmpMatch, Rule};

/// A template's inputs as the tests write them: `Key=Value` (a parameter), `import:Name=Value`,
/// `region:R`, `bind:Id=DEV`, `as:Id` and `dev:DEV` (a default-route device of the host, as
/// the command line finds it). Panics on one the command line would refuse.
pub fn template_inputs(opts: &[&str]) -> TemplateInputs {
    let mut i = TemplateInputs::default();
    for o in opts {
        if let Some(imp) = o.strip_prefix("import:") {
            i.add_import(imp).unwrap();
        } else if let Some(r) = o.strip_prefix("region:") {
            i.region = Some(r.to_string());
        } else if let Some(b) = o.strip_prefix("bind:") {
            i.add_bind(b).unwrap();
        } else if let Some(a) = o.strip_prefix("as:") {
            i.as_instance = Some(a.to_string());
        } else if let Some(dev) = o.strip_prefix("dev:") {
            i.host_devices.push(dev.to_string());
        } else {
            i.add_parameter(o).unwrap();
        }
    }
    i
}

/// The `sg-agent` binary the privileged tests drive: `SG_AGENT_BIN` when set, else the one
/// cargo built beside the running test (`target/<profile>/sg-agent`; `cargo xtask test`
/// builds it first). Panics with the remedy when it is missing: a test never skips.
pub fn agent_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = match std::env::var_os("SG_AGENT_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().expect("the test's own path");
                // target/<profile>/deps/<test> -> target/<profile>/sg-agent
                let profile = exe
                    .parent()
                    .and_then(|deps| deps.parent())
                    .expect("a test binary lives in target/<profile>/deps");
                profile.join("sg-agent")
            }
        };
        assert!(
            path.exists(),
            "the sg-agent binary is missing at {}; hint: `cargo build -p sg-agent` (cargo xtask \
             test builds it), or set SG_AGENT_BIN",
            path.display()
        );
        path.to_string_lossy().into_owned()
    })
}

/// A rule as `PROTO PORTS PEER` (`tcp 22-22 192.0.2.0/24`, `icmp 8 sg-web`), written
/// independently of sg's own formatting: what the template tests compare rules by.
pub fn rule_text(r: &Rule) -> String {
    let icmp = |m: &IcmpMatch| match m {
        IcmpMatch::All => "all".to_string(),
        IcmpMatch::Type(t) => t.to_string(),
        IcmpMatch::TypeCode(t, c) => format!("{t}/{c}"),
    };
    let proto = random::protocol_text(&r.protocol, icmp);
    format!("{proto} {}", random::describe_peer(&r.peer))
}
