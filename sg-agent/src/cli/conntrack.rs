//! `sg-agent conntrack [list|flush]`: the tracked flows, or delete them all.

use anyhow::Result;
use clap::Subcommand;

use super::{Globals, open_agent};
use crate::agent::proto_name;
use crate::dataplane::CtEntry;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// List tracked flows (default).
    List,
    /// Delete every tracked flow (established connections then need a rule again).
    Flush,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    match a.action {
        None | Some(Action::List) => list(g),
        Some(Action::Flush) => flush(g),
    }
}

/// `sg-agent conntrack [list]`
fn list(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let entries = a.conntrack()?;
    if g.json {
        let v: Vec<_> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<7} {:<28} {:<28} {:<8} {:<11} {:>7} {:>9}",
        "proto", "local", "remote", "opened", "state", "age s", "left s"
    );
    for e in &entries {
        println!(
            "{:<7} {:<28} {:<28} {:<8} {:<11} {:>7} {:>9}",
            proto_name(e.key.proto),
            format!("{}:{}", e.local, e.ports().0),
            format!("{}:{}", e.remote, e.ports().1),
            if opened_inbound(e) { "in" } else { "out" },
            e.state_name(),
            e.age.as_secs(),
            e.timeout_left.as_secs()
        );
    }
    println!(
        "{} tracked flows (untracked flows, C4, keep no state)",
        entries.len()
    );
    Ok(())
}

fn opened_inbound(e: &CtEntry) -> bool {
    e.val.origin == sg_common::DIR_INGRESS
}

fn entry_json(e: &CtEntry) -> serde_json::Value {
    serde_json::json!({
        "table": format!("{:?}", e.table).to_lowercase(),
        "ifindex": e.key.ifindex,
        "proto": proto_name(e.key.proto),
        "local": e.local, "local_port": e.ports().0,
        "remote": e.remote, "remote_port": e.ports().1,
        "state": e.state_name(),
        "opened": if opened_inbound(e) { "inbound" } else { "outbound" },
        "tracked": true,
        "age_s": e.age.as_secs(), "idle_s": e.idle.as_secs(),
        "timeout_s": e.timeout.as_secs(), "timeout_left_s": e.timeout_left.as_secs(),
        "packets": e.val.packets, "bytes": e.val.bytes,
    })
}

/// `sg-agent conntrack flush`
fn flush(g: &Globals) -> Result<()> {
    let mut a = open_agent(g)?;
    let n = a.flush_conntrack()?;
    if g.json {
        println!("{}", serde_json::json!({ "flushed": n }));
    } else {
        println!("flushed {n} tracked flows");
    }
    Ok(())
}
