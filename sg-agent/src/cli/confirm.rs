//! `sg-agent confirm [--rollback]` (L1): keep the change an `apply --confirm` made, or go back
//! now; and the timer of such an apply when no daemon holds it: a detached watchdog process
//! (`sg-agent confirm-watchdog`, hidden), started by `apply` in its own session with no
//! terminal, so it outlives the SSH session that set the deadline.
//!
//! Owns the watchdog's process (spawn, its loop) and the warning about confirming over the
//! very connection that set the deadline; the transitions themselves are the agent's.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Globals, open_agent};
use crate::agent::{Agent, Pending, RevertWhy, Reverted};

#[derive(clap::Args)]
pub struct Args {
    /// Go back to the previous policy now instead of keeping the new one.
    #[arg(long)]
    rollback: bool,
}

#[derive(clap::Args)]
pub struct WatchdogArgs {
    /// The pending change this watchdog times (its `set_at_ms`): a newer one has its own.
    #[arg(long)]
    set_at_ms: u64,
}

pub fn run(g: &Globals, a: &Args) -> Result<()> {
    let mut agent = open_agent(g)?;
    if a.rollback {
        return match agent.revert(RevertWhy::Asked)? {
            Some(r) => {
                print_reverted(g, &r)?;
                Ok(())
            }
            None => Err(nothing_pending()),
        };
    }
    let p = agent.confirm()?;
    if let Some(w) = same_connection_warning(&p, std::env::var("SSH_CONNECTION").ok()) {
        eprintln!("warning: {w}{}", flow_age(&mut agent, &p));
    }
    if g.json {
        println!("{}", serde_json::json!({ "confirmed": p }));
    } else {
        println!(
            "confirmed: {} stays ({} was {:.1} s from coming back)",
            p.source,
            p.previous.source,
            p.left_ms() as f64 / 1000.0
        );
    }
    Ok(())
}

fn nothing_pending() -> anyhow::Error {
    anyhow::anyhow!(
        "nothing is waiting for confirmation in this network namespace (a change not \
         confirmed in time has been reverted: `sg-agent status` shows what is enforced)"
    )
}

/// A confirmation over the SSH connection that applied the change proves nothing: that
/// connection is a tracked flow and outlives its rule (X1); only a new one shows the way in.
fn same_connection_warning(p: &Pending, here: Option<String>) -> Option<String> {
    let set_by = p.ssh_connection.as_deref()?;
    let here = here?;
    (here.split_whitespace().eq(set_by.split_whitespace())).then(|| {
        format!(
            "this confirmation comes over the SSH connection that applied the change \
             ({set_by}); it stays open because sg tracks it (X1), which says nothing about \
             new connections. hint: check from a new SSH session before confirming"
        )
    })
}

/// How long sg has tracked the SSH connection that set the deadline (", tracked for N s"),
/// from conntrack; empty when it is not tracked (untracked, C4) or cannot be read.
fn flow_age(agent: &mut Agent, p: &Pending) -> String {
    let Some(ssh) = p
        .ssh_connection
        .as_deref()
        .and_then(|s| crate::agent::SshConnection::parse(s).ok())
    else {
        return String::new();
    };
    let Ok(flows) = agent.conntrack() else {
        return String::new();
    };
    flows
        .iter()
        .find(|f| {
            f.key.proto == 6
                && f.remote == ssh.client
                && f.local == ssh.server
                && f.ports() == (ssh.server_port, ssh.client_port)
        })
        .map(|f| format!(" (its flow is tracked since {} s ago)", f.age.as_secs()))
        .unwrap_or_default()
}

/// What a revert did, as text or JSON.
pub fn print_reverted(g: &Globals, r: &Reverted) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "reverted: {} is enforced again instead of {} (generation {}, in effect after \
             {:.1} ms)",
            r.undone.previous.source, r.undone.source, r.outcome.generation, r.outcome.to_effect_ms
        );
    }
    Ok(())
}

/// After an `apply --confirm`: who holds the timer. A running daemon does (it checks every
/// second); otherwise a watchdog is started. Returns a line for the user.
pub fn start_timer(g: &Globals, agent: &Agent, p: &Pending) -> Result<String> {
    if let Some((pid, _claim)) = agent.state_dir().daemon() {
        return Ok(format!("the daemon (pid {pid}) reverts it at the deadline"));
    }
    let log = agent.state_dir().run.join("confirm-watchdog.log");
    let err = std::fs::File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let exe = std::env::current_exe().context("finding this binary for the watchdog")?;
    let mut cmd = Command::new(exe);
    if let Some(dir) = &g.state_dir {
        cmd.arg("--state-dir").arg(dir);
    }
    cmd.arg("confirm-watchdog")
        .arg("--set-at-ms")
        .arg(p.set_at_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; between fork and exec nothing else runs. Its own
    // session: no controlling terminal, out of the SSH session's process group, so neither
    // the session's end (SIGHUP) nor its closed pipes reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the confirmation watchdog")?;
    agent.set_watchdog(child.id())?;
    Ok(format!(
        "a watchdog (pid {}, log {}) reverts it at the deadline, even if this session ends",
        child.id(),
        log.display()
    ))
}

/// The watchdog's life: wait for the deadline of its change, revert it unless it was
/// confirmed (or rolled back, or replaced) meanwhile. A failed revert is retried: the
/// administrator may be locked out until it succeeds.
pub fn watchdog(g: &Globals, a: &WatchdogArgs) -> Result<()> {
    let mut agent = Agent::open(g.open_options())?;
    log::info!("confirmation watchdog {} started", std::process::id());
    loop {
        let p = match agent.pending()? {
            Some(p) if p.set_at_ms == a.set_at_ms => p,
            _ => {
                log::info!("the change was confirmed or reverted; the watchdog stops");
                return Ok(());
            }
        };
        if !p.overdue() {
            std::thread::sleep(Duration::from_millis(p.left_ms().clamp(10, 1000)));
            continue;
        }
        match agent.revert(RevertWhy::Overdue) {
            Ok(_) => return Ok(()),
            Err(e) => {
                log::error!("reverting failed, retrying in 5 s: {e:#}");
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Previous;

    fn pending(ssh: Option<&str>) -> Pending {
        Pending {
            source: "bad.yaml".into(),
            set_at_ms: 1,
            deadline_ms: 2,
            previous: Previous {
                source: "good.yaml".into(),
                text: String::new(),
            },
            ssh_connection: ssh.map(Into::into),
            ingress: "xdp".into(),
            watchdog_pid: None,
        }
    }

    /// L1: only a new connection proves the way in, so confirming over the one that set the
    /// deadline warns; another connection (another client port) does not.
    #[test]
    fn l1_confirm_over_the_same_ssh_connection_warns() {
        let p = pending(Some("198.51.100.10 50000 192.0.2.11 22"));
        let same = Some("198.51.100.10 50000 192.0.2.11 22".to_string());
        let w = same_connection_warning(&p, same).expect("warns");
        assert!(w.contains("new SSH session"), "{w}");
        let other = Some("198.51.100.10 50001 192.0.2.11 22".to_string());
        assert_eq!(same_connection_warning(&p, other), None);
        assert_eq!(same_connection_warning(&p, None), None);
        assert_eq!(
            same_connection_warning(&pending(None), Some("x".into())),
            None
        );
    }
}
