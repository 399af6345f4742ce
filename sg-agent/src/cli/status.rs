//! `sg-agent status`: interfaces, programs and modes, groups per interface, generation,
//! conntrack fill, and the inconsistencies found.

use anyhow::Result;

use super::{Globals, open_agent};

pub fn run(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let s = a.status()?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("sg-agent {} (ABI {})", s.version, s.abi);
    println!(
        "policy:      {} (applied at unix {})",
        s.source, s.applied_at
    );
    println!("generation:  {} ({} rules)", s.generation, s.rules);
    if s.kernel_generation != s.generation {
        println!("kernel:      generation {} is active", s.kernel_generation);
    }
    println!("pins:        {}", s.pins);
    println!("state:       {}", s.state);
    println!(
        "conntrack:   {} confirmed ({} free of {}), {} unconfirmed ({} free of {}), exceeded {}",
        s.conntrack.ct_count,
        s.conntrack.ct_available,
        s.ct_capacity,
        s.conntrack.new_count,
        s.conntrack.new_available,
        s.ct_new_capacity,
        s.conntrack.exceeded
    );
    println!("interfaces:");
    for i in &s.interfaces {
        println!(
            "  {} (ifindex {}, {}): ingress {}, egress {}; groups {}",
            i.device,
            i.ifindex,
            i.interface,
            i.ingress,
            i.egress,
            i.groups.join(", ")
        );
    }
    if let Some(p) = &s.confirm {
        println!(
            "confirm:     {} waits for `sg-agent confirm`: {}; else {} comes back{}",
            p.source,
            p.describe_deadline(),
            p.previous.source,
            p.watchdog_pid
                .map(|w| format!(" (watchdog pid {w})"))
                .unwrap_or_default()
        );
    }
    if s.confirm_reverts > 0 {
        println!("reverted:    {} unconfirmed applies", s.confirm_reverts);
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
