//! What the daemon does when something under the enforced policy changes: the policy file
//! (polled), the host's devices and addresses (polled), the pins (removed under us), or an
//! operator's SIGHUP.
//!
//! The rules it keeps: an invalid policy is reported and the enforced one stays; a policy
//! whose interfaces are not here (NotOnThisHost) is waited for quietly; a namespace detached
//! under us (`sg-agent detach`) stops the daemon and is never re-attached.

use super::systemd::sd_notify;
use super::{Daemon, Next, host_fingerprint, now_unix, policy_source};
use crate::agent::{ApplyOutcome, PolicySource};
use crate::error::{self, Error};
use crate::store::Follower;

impl Daemon {
    pub(super) fn on_sighup(&mut self) -> Next {
        // This read of the file counts for the poll too: a broken file is reported once,
        // not again at the next tick.
        self.fingerprint = self.src.fingerprint();
        self.reload("SIGHUP")
    }

    pub(super) fn on_poll(&mut self, follower: Option<&Follower>) -> Next {
        let fp = self.src.fingerprint();
        let hp = host_fingerprint();
        if hp != self.host {
            // Registered devices' addresses go to the store first: other hosts need them too.
            self.register(follower, hp.as_deref());
        }
        if self.fleet.is_some() {
            // The snapshot file is ours to write; only the store changes the policy.
            self.fingerprint = fp;
        }
        if fp != self.fingerprint {
            self.fingerprint = fp;
            self.host = hp;
            self.reload("file change")
        } else if hp != self.host {
            // A device or an address came or went: the binding may differ (an interface
            // recreated under a new ifindex, the addresses of a waiting policy configured
            // at last).
            self.host = hp;
            self.reload("interface change")
        } else {
            self.check_pins()
        }
    }

    /// Puts back pins that disappeared under the daemon (it holds the objects, so enforcement
    /// never stopped), unless the namespace was detached on purpose.
    pub(super) fn check_pins(&mut self) -> Next {
        let Some(g) = self.pins.as_ref() else {
            return Next::Continue;
        };
        let missing = g.missing();
        if missing.is_empty() {
            return Next::Continue;
        }
        let sd = self.agent.state_dir();
        // `detach` removes pins and state under the lock: take it, then look at the state.
        let lock = match sd.lock_existing() {
            Ok(l) => l,
            Err(e) => {
                log::warn!("checking pins: {e:#}");
                return Next::Continue;
            }
        };
        if lock.is_none() || !sd.state_file().exists() {
            self.pins = None;
            return Next::Detached;
        }
        match g.restore() {
            Ok(n) => {
                self.stats.pins_restored += n as u64;
                log::warn!(
                    "{} pins under {} had been removed; enforcement never stopped (the daemon \
                     holds the links and maps) and {n} were pinned again",
                    missing.len(),
                    sd.pins.display()
                );
            }
            Err(e) => log::error!(
                "pins under {} were removed and could not be restored: {e:#}; enforcement \
                 continues while the daemon runs",
                sd.pins.display()
            ),
        }
        Next::Continue
    }

    /// Applies the policy again; `why` names the trigger in the log.
    pub(super) fn reload(&mut self, why: &str) -> Next {
        // Removed pins first: an apply must adopt the maps that are enforcing, not create new
        // ones beside them. A detached namespace stays detached.
        if let Next::Detached = self.check_pins() {
            return Next::Detached;
        }
        let was_waiting = self.stats.waiting;
        if !was_waiting {
            let _ = sd_notify("RELOADING=1");
        }
        let opts = self.apply_options();
        match self
            .agent
            .apply(policy_source(self.fleet.as_ref(), &self.src), opts)
        {
            Ok(out) => self.reloaded(&out, why, was_waiting),
            Err(e) if error::is(&e, |k| matches!(k, Error::DetachedUnderUs)) => {
                self.pins = None;
                return Next::Detached;
            }
            Err(e) if was_waiting && error::is(&e, |k| matches!(k, Error::NotOnThisHost(_))) => {
                log::debug!("still waiting: {e}");
            }
            Err(e) if error::is(&e, |k| matches!(k, Error::Pending(_))) => {
                log::warn!("reload on {why} deferred: {e}");
                self.stats.deferred = Some(format!("reload on {why}"));
            }
            Err(e) => {
                self.stats.apply_errors += 1;
                self.stats.last_error = Some(format!("{e:#}"));
                log::error!("reload on {why} failed, the enforced policy stays:\n{e:#}");
            }
        }
        if !(was_waiting && self.stats.waiting) {
            let _ = sd_notify(&format!("READY=1\nSTATUS={}", self.status_line()));
        }
        Next::Continue
    }

    /// After a successful reload: the stats, the log line, flow log events once the policy
    /// stops waiting, and the new set of pins to hold.
    fn reloaded(&mut self, out: &ApplyOutcome, why: &str, was_waiting: bool) {
        self.stats.applies += 1;
        self.stats.last_apply_unix = now_unix();
        self.stats.last_to_effect_ms = out.to_effect_ms;
        self.stats.last_error = None;
        self.stats.waiting = false;
        log::info!(
            "reloaded on {why}: generation {} in effect after {:.1} ms ({} rules added, {} removed)",
            out.generation,
            out.to_effect_ms,
            out.diff.rules_added.len(),
            out.diff.rules_removed.len()
        );
        let rate = self.events_per_sec();
        if was_waiting
            && let Err(e) = self
                .agent
                .dataplane()
                .and_then(|d| d.set_events_per_sec(rate))
        {
            log::warn!("enabling flow log events: {e:#}");
        }
        // The links may have changed (interfaces added or released): hold the new set before
        // letting go of the old. A change written in place changed no link, and a whole apply
        // that attached and released nothing (a rule change) usually left every pin as it
        // was: holding them again would open the same objects.
        if out.in_place && self.pins.is_some() {
            return;
        }
        if self.pins.as_ref().is_some_and(|g| g.is_current()) {
            return;
        }
        match self.agent.hold_pins() {
            Ok(g) => self.pins = Some(g),
            Err(e) => log::warn!("holding the pins: {e:#}"),
        }
    }
}
