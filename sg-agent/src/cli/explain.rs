//! `sg-agent explain --in|--out --proto P --peer ADDR ...`: why is (or isn't) this packet
//! allowed? Prints the reference model's verdict and the real program's; exits 1 when they
//! disagree.

use std::net::IpAddr;

use anyhow::Result;

use super::{Globals, open_agent};
use crate::agent::{ExplainProto, ExplainQuery, Explanation, IcmpTypeCode};
use crate::policy::Direction;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    direction: DirectionArg,
    /// tcp, udp, icmp, icmpv6, or a protocol number.
    #[arg(long)]
    proto: ExplainProto,
    /// The remote address.
    #[arg(long)]
    peer: IpAddr,
    /// Destination port (tcp/udp).
    #[arg(long)]
    port: Option<u16>,
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

/// The packet's direction: exactly one of `--in` and `--out` (clap refuses both or neither,
/// exit 2).
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
    /// The agent's question.
    pub(super) fn query(self) -> ExplainQuery {
        ExplainQuery {
            direction: self.direction.direction(),
            proto: self.proto,
            peer: self.peer,
            port: self.port,
            icmp: self.icmp,
            iface: self.iface,
            local: self.local,
        }
    }
}

pub fn run(g: &Globals, a: Args) -> Result<()> {
    let q = a.query();
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
