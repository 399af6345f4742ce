//! What the daemon does when something under the enforced policy changes: the policy file
//! (polled), the host's devices and addresses (polled), the pins (removed under us), or an
//! operator's SIGHUP.
//!
//! The rules it keeps: an invalid policy is reported and the enforced one stays; a policy
//! whose interfaces are not here (NotOnThisHost) is waited for quietly; a namespace detached
//! under us (`sg-agent detach`) stops the daemon and is never re-attached.
//!
//! And the confirmation window's (L1): a change that cannot be applied while another waits
//! for `sg-agent confirm` is held until the window closes; a source that still holds a
//! policy a revert undid (the store's revision, a file not edited since) is not applied
//! again by itself, only its memberships are, until it changes or an operator's SIGHUP asks.

use super::systemd::sd_notify;
use super::{Daemon, Next, host_fingerprint, now_unix, policy_source};
use crate::agent::{ApplyOutcome, PolicySource, RevertRecord, TextSource};
use crate::error::{self, Error};
use crate::store::Follower;

/// What to do with the source when a revert undid its policy (L1).
pub(super) enum AfterRevert {
    /// Not the undone policy (or asked for by SIGHUP): apply it.
    Apply,
    /// The undone policy with other memberships: apply those to the enforced policy.
    Memberships(TextSource),
    /// The undone policy, nothing new: leave the enforced one as it is.
    Nothing,
}

impl Daemon {
    pub(super) fn on_sighup(&mut self) -> Next {
        // This read of the file counts for the poll too: a broken file is reported once,
        // not again at the next tick.
        self.fingerprint = self.src.fingerprint();
        // An operator's SIGHUP applies the source even when a revert undid it.
        self.reload_as("SIGHUP", true)
    }

    /// Whether the source holds the policy the last revert undid (memberships aside), and
    /// what to apply instead. Errors here are the apply's to report: apply.
    pub(super) fn after_revert(&mut self, asked: bool) -> AfterRevert {
        let found = if asked { None } else { self.source_reverted() };
        let Some((r, new)) = found else {
            self.stats.not_enforced = None;
            return AfterRevert::Apply;
        };
        self.log_not_enforced(&r);
        match self.agent.enforced_with_memberships(&r, &new) {
            Ok(Some(m)) => AfterRevert::Memberships(m),
            Ok(None) => AfterRevert::Nothing,
            Err(e) => {
                log::warn!("applying the new memberships to the enforced policy: {e:#}");
                AfterRevert::Nothing
            }
        }
    }

    /// The last revert's record and the source's policy, when that policy is the one the
    /// revert undid (memberships aside). Reading nothing (no revert, a source that does not
    /// load: the apply reports it) is None.
    fn source_reverted(&self) -> Option<(RevertRecord, crate::policy::Policy)> {
        if !matches!(self.agent.last_revert(), Ok(Some(_))) {
            return None;
        }
        let new = policy_source(self.fleet.as_ref(), &self.src).load().ok()?;
        let r = self.agent.reverted_again(&new.policy).ok()??;
        Some((r, new.policy))
    }

    /// Says once per reverted change that its source still holds it.
    fn log_not_enforced(&mut self, r: &RevertRecord) {
        if self.stats.not_enforced.as_deref() == Some(r.source.as_str()) {
            return;
        }
        log::warn!(
            "{} still holds the policy of {}, which was reverted (not confirmed in time): it \
             is not applied again (only its memberships are) until it changes; hint: fix \
             it, or send SIGHUP to apply it anyway",
            self.source_name(),
            r.source
        );
        self.stats.not_enforced = Some(r.source.clone());
    }

    fn source_name(&self) -> String {
        match &self.opts.policy {
            super::PolicyFrom::File(p) => p.display().to_string(),
            super::PolicyFrom::Store(f) => f.store.describe(),
        }
    }

    /// A window seen at the last tick that is gone now: reverted (the record names it) or
    /// confirmed.
    pub(super) fn window_closed(&mut self, follower: Option<&Follower>) {
        let Ok(now) = self.agent.pending().map(|p| p.map(|p| p.set_at_ms)) else {
            return;
        };
        let Some(was) = std::mem::replace(&mut self.stats.window, now) else {
            return;
        };
        if now == Some(was) {
            return;
        }
        match self.agent.last_revert() {
            Ok(Some(r)) if r.set_at_ms == was => {
                // The metric is about this daemon's source: does it still hold the change?
                if let Some((r, _)) = self.source_reverted() {
                    self.log_not_enforced(&r);
                }
                self.store_change_reverted(&r, follower);
            }
            _ => {
                log::info!("the pending change was confirmed");
                self.store_change_confirmed();
            }
        }
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
        self.reload_as(why, false)
    }

    /// [`Daemon::reload`]; `asked`: an operator's, which applies even a reverted policy.
    fn reload_as(&mut self, why: &str, asked: bool) -> Next {
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
        let merged = match self.after_revert(asked) {
            AfterRevert::Apply => None,
            AfterRevert::Memberships(m) => Some(m),
            AfterRevert::Nothing => return Next::Continue,
        };
        let src = match &merged {
            Some(m) => m as &dyn PolicySource,
            None => policy_source(self.fleet.as_ref(), &self.src),
        };
        match self.agent.apply(src, opts) {
            Ok(out) => self.reloaded(&out, why, was_waiting),
            Err(e) if error::is(&e, |k| matches!(k, Error::DetachedUnderUs)) => {
                self.pins = None;
                return Next::Detached;
            }
            Err(e) if was_waiting && error::is(&e, |k| matches!(k, Error::NotOnThisHost(_))) => {
                log::debug!("still waiting: {e}");
            }
            Err(e) if error::is(&e, |k| matches!(k, Error::Pending(_))) => {
                log::warn!(
                    "holding the new policy ({why}) until the pending change is confirmed or \
                     reverted: {e}"
                );
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
        for n in out.notes.iter().filter(|n| n.contains("confirm")) {
            log::warn!("{n}");
        }
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
