//! `sg-agent detach`: remove programs, links, maps, pins and state of this namespace
//! (enforcement stops), and stop its daemon.

use anyhow::Result;

use super::Globals;
use crate::agent::Agent;

pub fn run(g: &Globals) -> Result<()> {
    let a = Agent::open_for_detach(g.open_options())?;
    for w in a.warnings() {
        eprintln!("warning: {w} (removed anyway)");
    }
    let d = a.detach()?;
    let gone = d.interfaces;
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "detached": gone, "daemon_stopped": d.daemon })
        );
        return Ok(());
    }
    if let Some(pid) = d.daemon {
        println!("stopped the daemon (pid {pid})");
    }
    if gone.is_empty() {
        println!("nothing was attached; pins and state removed");
    } else {
        println!(
            "detached {}; pins and state removed (enforcement stopped)",
            gone.join(", ")
        );
    }
    Ok(())
}
