//! `sg-agent audit on|off|status [DEV]` (L3): audit mode passes what the policy would drop and
//! reports it (the `audit_would_drop_*` counters, AUDIT events, REJECT lines of the flow log);
//! turning it off ends the flows it admitted at once. Without DEV the switch is global; with
//! DEV it is that device's alone (kept through applies until `audit off DEV`), and `off`
//! ends the flows audit admitted on that device only. Malformed packets, interfaces without a
//! policy and a full conntrack table stay dropped.

use anyhow::Result;

use super::{Globals, open_agent};
use crate::agent::{Agent, AuditedDevice, DeviceAudit};

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// One enforced device (`sg-agent status` lists them): audit mode for it alone.
    device: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Pass what the policy drops, and report it.
    On,
    /// Enforce again; the flows opened while auditing end now.
    Off,
    /// Is audit mode on, and on which devices?
    Status,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    match (a.mode, &a.device) {
        (Mode::Status, Some(_)) => Err(crate::error::usage(
            "`audit status` takes no device: it lists every device in audit mode",
        )),
        (Mode::On | Mode::Off, Some(dev)) => {
            let r = agent.set_device_audit(dev, a.mode == Mode::On)?;
            print_device(g, &r);
            Ok(())
        }
        (mode, None) => global(g, &mut agent, mode),
    }
}

fn global(g: &Globals, agent: &mut Agent, mode: Mode) -> Result<()> {
    let dp = agent.dataplane()?;
    let (on, ended) = match mode {
        Mode::On => {
            dp.set_audit(true)?;
            (true, None)
        }
        Mode::Off => {
            dp.set_audit(false)?;
            // After the flag is off no new flow gets the audit mark, so this catches them all
            // (but those of devices still in audit mode of their own).
            (false, Some(dp.end_audited_flows()?))
        }
        Mode::Status => (dp.audit()?, None),
    };
    let devices = if agent.is_applied() {
        agent.audited_devices()?
    } else {
        Vec::new()
    };
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "audit": on, "flows_ended": ended, "devices": devices })
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
    print_devices(&devices);
    Ok(())
}

fn print_devices(devices: &[AuditedDevice]) {
    for d in devices {
        let why = match d.by {
            "policy" => "by its policy (`audit: true`; remove it and apply to end it)".into(),
            _ => format!("(sg-agent audit off {} ends it)", d.device),
        };
        println!(
            "  {} (ifindex {}) is in audit mode {why}",
            d.device, d.ifindex
        );
    }
}

fn print_device(g: &Globals, r: &DeviceAudit) {
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "device": r.device,
                "ifindex": r.ifindex,
                "audit": r.on,
                "flows_ended": r.flows_ended,
                "global": r.global,
            })
        );
        return;
    }
    match (r.on, r.flows_ended) {
        (true, _) => println!(
            "audit mode ON for {}: packets its policy drops pass and are counted as \
             audit_would_drop_* (sg-agent counters); sg-agent audit off {} ends it",
            r.device, r.device
        ),
        (false, Some(n)) => println!(
            "audit mode OFF for {}: its policy is enforced; {n} flows opened while auditing \
             ended",
            r.device
        ),
        (false, None) => println!("audit mode off for {}", r.device),
    }
    if r.global {
        println!(
            "note: the global audit mode is ON: {} still passes what its policy drops; \
             sg-agent audit off ends it",
            r.device
        );
    }
}
