//! `sg-agent audit on|off|status` (L3): audit mode passes what the policy would drop and
//! reports it (the `audit_would_drop_*` counters, AUDIT events, REJECT lines of the flow log); turning
//! it off ends the flows it admitted at once. Malformed packets, interfaces without a policy
//! and a full conntrack table stay dropped.

use anyhow::Result;

use super::{Globals, open_agent};

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Pass what the policy drops, and report it.
    On,
    /// Enforce again; the flows opened while auditing end now.
    Off,
    /// Is audit mode on?
    Status,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    let dp = agent.dataplane()?;
    let (on, ended) = match a.mode {
        Mode::On => {
            dp.set_audit(true)?;
            (true, None)
        }
        Mode::Off => {
            dp.set_audit(false)?;
            // After the flag is off no new flow gets the audit mark, so this catches them all.
            (false, Some(dp.end_audited_flows()?))
        }
        Mode::Status => (dp.audit()?, None),
    };
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "audit": on, "flows_ended": ended })
        );
        return Ok(());
    }
    match (on, ended) {
        (true, _) => println!(
            "audit mode ON: packets the policy drops pass and are counted as audit_would_drop_* \
             (sg-agent counters); sg-agent audit off ends it"
        ),
        (false, Some(n)) => println!(
            "audit mode OFF: the policy is enforced; {n} flows opened while auditing ended"
        ),
        (false, None) => println!("audit mode off: the policy is enforced"),
    }
    Ok(())
}
