//! The way out: `detach` removes links, maps, pins and state (enforcement stops), and stops
//! this namespace's daemon, which would otherwise hold the programs attached.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Agent;
use crate::dataplane;

/// What `detach` removed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Detached {
    /// Devices whose programs were detached.
    pub interfaces: Vec<String>,
    /// The daemon that was stopped.
    pub daemon: Option<i32>,
}

impl Agent {
    /// Removes links, maps, pins and state: enforcement stops. A daemon of this namespace
    /// (it holds the links open) is stopped too, and waited for.
    pub fn detach(self) -> Result<Detached> {
        let lock = self.sd.lock()?;
        let daemon = self.sd.daemon();
        let links = self.links_dir();
        let mut gone = Vec::new();
        for p in dataplane::pinned_ifaces(&links) {
            dataplane::unpin_iface(&links, p.ifindex)?;
            gone.push(
                self.state
                    .applied
                    .interfaces
                    .iter()
                    .find(|(_, i)| i.ifindex == p.ifindex)
                    .map(|(d, _)| d.clone())
                    .unwrap_or_else(|| format!("ifindex {}", p.ifindex)),
            );
        }
        drop(self.dp);
        if self.sd.pins.exists() {
            std::fs::remove_dir_all(&self.sd.pins)
                .with_context(|| format!("removing {}", self.sd.pins.display()))?;
        }
        self.sd.remove()?;
        drop(lock);
        let mut out = Detached {
            interfaces: gone,
            daemon: None,
        };
        if let Some((pid, claim)) = daemon {
            // SAFETY: plain syscall; the pid holds this namespace's daemon claim.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let stopped = crate::state::wait_released(&claim, Duration::from_secs(10));
            if !stopped {
                bail!(
                    "pins and state are removed but the daemon (pid {pid}) did not stop within \
                     10 s; it holds the programs attached until it exits; hint: kill {pid}"
                );
            }
            out.daemon = Some(pid);
        }
        Ok(out)
    }
}
