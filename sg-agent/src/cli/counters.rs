//! `sg-agent counters [--watch SECONDS]`: per-rule packets/bytes and pass/drop reasons.

use anyhow::Result;

use super::{Globals, desc, open_agent};
use crate::agent::Counters;

#[derive(clap::Args)]
pub struct Args {
    /// Refresh every SECONDS until interrupted.
    #[arg(long, value_name = "SECONDS")]
    watch: Option<u64>,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    loop {
        let c = agent.counters()?;
        if g.json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            if a.watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print_counters(&c);
        }
        match a.watch {
            Some(n) => std::thread::sleep(std::time::Duration::from_secs(n.max(1))),
            None => return Ok(()),
        }
    }
}

/// The text form: a line per rule, then the reasons that moved (and every drop reason).
pub fn print_counters(c: &Counters) {
    println!(
        "{:<22} {:<12} {:<8} {:>10} {:>12}  rule",
        "rule id", "group", "dir", "packets", "bytes"
    );
    for r in &c.rules {
        println!(
            "{:<22} {:<12} {:<8} {:>10} {:>12}  {}{}",
            r.id,
            r.meta.group,
            r.meta.direction,
            r.packets,
            r.bytes,
            r.meta.text,
            desc(&r.meta.description)
        );
    }
    println!();
    println!("{:<28} {:>10}", "reason", "packets");
    for (r, n) in &c.reasons {
        if *n > 0 || !r.is_pass() {
            println!("{:<28} {:>10}", r.name(), n);
        }
    }
    println!(
        "\nconntrack: {} confirmed, {} unconfirmed, {} available, exceeded {}",
        c.conntrack.ct_count, c.conntrack.new_count, c.conntrack.ct_available, c.conntrack.exceeded
    );
    if c.confirm_reverts > 0 {
        println!(
            "confirm: {} unconfirmed applies reverted",
            c.confirm_reverts
        );
    }
}
