//! `sg-agent explain --in|--out --proto P --peer ADDR ...`: why is (or isn't) this packet
//! allowed here? Prints the reference model's verdict and the real program's; exits 1 when
//! they disagree.
//!
//! `sg-agent explain --from SRC --to DST --proto P ...`: the packet's way between two
//! addresses through every layer (security groups and network ACLs, A15), each naming the
//! rule that decided; exits 1 when a layer drops it.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;

use super::{Globals, load_policy, open_agent};
use crate::agent::{
    ExplainProto, ExplainQuery, Explanation, IcmpTypeCode, PathExplanation, explain_path,
};
use crate::error::Error;
use crate::policy::Direction;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    direction: DirectionArg,
    /// tcp, udp, icmp, icmpv6, or a protocol number.
    #[arg(long)]
    proto: ExplainProto,
    /// The remote address (with --in/--out).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    peer: Option<IpAddr>,
    /// The packet's source address: explain its way to --to through every layer.
    #[arg(long, group = "DirectionArg", requires = "to", conflicts_with_all = ["iface", "local"])]
    from: Option<IpAddr>,
    /// The packet's destination address (with --from).
    #[arg(long, requires = "from")]
    to: Option<IpAddr>,
    /// With --from/--to: the policy file to read (default: the applied policy).
    #[arg(long, requires = "from")]
    policy: Option<PathBuf>,
    /// Destination port (tcp/udp).
    #[arg(long)]
    port: Option<u16>,
    /// Source port (tcp/udp; default 40000): explain a reply with --sport 22 --port 40000.
    #[arg(long)]
    sport: Option<u16>,
    /// ICMP TYPE/CODE, e.g. 8/0.
    #[arg(long, value_name = "TYPE/CODE")]
    icmp: Option<IcmpTypeCode>,
    /// The local device (default: the only attached one).
    #[arg(long)]
    iface: Option<String>,
    /// The local address (default: the interface's first address of the peer's family).
    #[arg(long)]
    local: Option<IpAddr>,
}

/// The packet's direction: exactly one of `--in`, `--out` and `--from` (the whole way; clap
/// refuses two or none, exit 2).
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct DirectionArg {
    /// Inbound packet (the peer is the source).
    #[arg(long = "in")]
    inbound: bool,
    /// Outbound packet (the peer is the destination).
    #[arg(long = "out")]
    outbound: bool,
}

impl DirectionArg {
    fn direction(&self) -> Direction {
        if self.inbound {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }
}

impl Args {
    /// The agent's question (`--peer` is the remote; with --from/--to, the destination).
    pub(super) fn query(&self) -> Result<ExplainQuery> {
        let peer = self
            .peer
            .or(self.to)
            .ok_or_else(|| crate::error::usage("--peer ADDR is needed with --in/--out"))?;
        Ok(ExplainQuery {
            direction: self.direction.direction(),
            proto: self.proto,
            peer,
            port: self.port,
            sport: self.sport,
            icmp: self.icmp,
            iface: self.iface.clone(),
            local: self.local,
        })
    }
}

pub fn run(g: &Globals, a: Args) -> Result<()> {
    let q = a.query()?;
    if let Some(from) = a.from {
        return run_path(g, &a, &q, from);
    }
    let mut agent = open_agent(g)?;
    let e = agent.explain(&q)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_verdicts(&e);
        print_rules(&e);
    }
    if e.agree {
        Ok(())
    } else {
        anyhow::bail!("the reference model and the program disagree")
    }
}

/// `--from/--to`: the way through every layer, from a policy file or the applied policy.
fn run_path(g: &Globals, a: &Args, q: &ExplainQuery, from: IpAddr) -> Result<()> {
    if from.is_ipv6() != q.peer.is_ipv6() {
        return Err(Error::InvalidInput(format!(
            "--from {from} and --to {} are of different families",
            q.peer
        ))
        .into());
    }
    let policy = match &a.policy {
        Some(file) => load_policy(file)?.policy,
        None => open_agent(g)?.applied_policy()?.policy,
    };
    let e = explain_path(&policy, &q.packet(from, q.peer)?);
    if g.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_path(&e);
    }
    if e.pass {
        Ok(())
    } else {
        anyhow::bail!("dropped on the way")
    }
}

fn print_path(e: &PathExplanation) {
    println!(
        "{}: {}",
        e.packet,
        if e.pass { "ALLOWED" } else { "DROPPED" }
    );
    if e.steps.is_empty() {
        println!(
            "  no layer of the policy is on its way (neither end is an instance or in a subnet)"
        );
    }
    for (i, s) in e.steps.iter().enumerate() {
        println!(
            "  {}. {} at {}: {} ({})",
            i + 1,
            s.layer,
            s.at,
            pass_drop(s.allow),
            s.why
        );
    }
}

fn pass_drop(pass: bool) -> &'static str {
    if pass { "pass" } else { "drop" }
}

fn rule_suffix(r: &Option<String>) -> String {
    r.as_ref().map(|r| format!(" rule {r}")).unwrap_or_default()
}

/// The verdict, then the model's and the program's, and whether they agree.
fn print_verdicts(e: &Explanation) {
    let verdict = if e.kernel_pass { "ALLOWED" } else { "DROPPED" };
    println!(
        "{} {} on {} ({}):",
        e.direction, e.packet, e.device, e.interface
    );
    match (&e.kernel_rule, e.kernel_pass) {
        (Some(r), true) => println!("  {verdict}: {} by rule {r}", e.kernel_reason),
        _ => println!("  {verdict}: {}", e.kernel_reason),
    }
    println!(
        "  reference model: {} {}{}",
        pass_drop(e.model_pass),
        e.model_reason,
        rule_suffix(&e.model_rule)
    );
    println!(
        "  real program ({} via BPF_PROG_TEST_RUN): {} {}{}",
        e.kernel_hook,
        pass_drop(e.kernel_pass),
        e.kernel_reason,
        rule_suffix(&e.kernel_rule)
    );
    println!(
        "  they {}",
        if e.agree {
            "agree"
        } else {
            "DISAGREE (please report this)"
        }
    );
}

/// The rules that allow it, or those that could have; live flows with the peer.
fn print_rules(e: &Explanation) {
    if e.allowing.is_empty() {
        println!(
            "  no rule of {} allows it (E1: anything not allowed is dropped)",
            e.groups.join(", ")
        );
        if e.candidates.is_empty() {
            println!(
                "  the interface's groups have no {} rule for this protocol",
                e.direction
            );
        } else {
            println!("  {} rules for this protocol:", e.direction);
            for c in &e.candidates {
                println!("    {c}");
            }
        }
    } else {
        println!("  rules that allow it (the first is charged, E4):");
        for r in &e.allowing {
            println!("    {r}");
        }
    }
    for f in &e.live_flows {
        println!("  live tracked flow with this peer: {f}");
    }
}
