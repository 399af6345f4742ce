//! Confirmed applies (L1): `apply --confirm DURATION` keeps what it replaced, and unless
//! `confirm` arrives before the deadline the previous policy comes back, atomically, by the
//! same transaction as any apply (its image is written into the generation that is not live,
//! which still holds it, so the writes are few, then SG_ACTIVE flips).
//!
//! The deadline outlives the process that set it: it is a marker file beside the state
//! ([`MARKER`]: the deadline, the previous policy's text, the SSH connection that set it).
//! Whoever holds the timer (the daemon, or the detached watchdog `apply` starts when no
//! daemon runs) calls [`Agent::revert_if_overdue`]; so does every agent at start, which makes
//! an overdue revert happen after a crash of both. Every step runs under the apply lock and
//! the marker is removed last, so two of them racing revert once.
//!
//! Owns the marker and the confirm/rollback/revert transitions; it spawns nothing (the CLI
//! starts the watchdog) and prints nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::apply::{ApplyOutcome, bind_to_host};
use super::summary::diff;
use super::{Agent, TextSource};
use crate::dataplane::HookPlan;
use crate::error::Error;
use crate::state::StateDir;

/// The marker's file name in the state's run directory.
pub const MARKER: &str = "confirm.json";

/// A change waiting for `sg-agent confirm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// What was applied with `--confirm`.
    pub source: String,
    /// When it was applied and when it reverts (milliseconds since the epoch).
    pub set_at_ms: u64,
    pub deadline_ms: u64,
    /// The policy it replaced, to go back to.
    pub previous: Previous,
    /// `SSH_CONNECTION` of the session that applied it: a confirm over the same connection
    /// proves nothing about new ones.
    pub ssh_connection: Option<String>,
    /// The ingress hooks for devices a revert attaches again (`--ingress-hook` values).
    pub ingress: String,
    /// The detached watchdog holding the timer, when one was started.
    pub watchdog_pid: Option<u32>,
}

/// The policy a revert goes back to: its text as it was applied, and its names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub source: String,
    pub text: String,
}

impl Pending {
    /// Milliseconds left before the revert (0 when overdue).
    pub fn left_ms(&self) -> u64 {
        self.deadline_ms.saturating_sub(now_ms())
    }

    pub fn overdue(&self) -> bool {
        now_ms() >= self.deadline_ms
    }

    /// The deadline for people: seconds left and the UTC time.
    pub fn describe_deadline(&self) -> String {
        let secs = self.deadline_ms / 1000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        format!(
            "{:.1} s left (at {h:02}:{m:02}:{s:02} UTC)",
            self.left_ms() as f64 / 1000.0
        )
    }
}

/// A revert that happened: what it applied and what it undid.
#[derive(Clone, Debug, Serialize)]
pub struct Reverted {
    pub undone: Pending,
    pub outcome: ApplyOutcome,
}

/// Why a revert runs, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevertWhy {
    /// The deadline passed without a confirm.
    Overdue,
    /// `sg-agent confirm --rollback`.
    Asked,
}

/// The pending change recorded in `sd`, if any.
pub fn read_marker(sd: &StateDir) -> Result<Option<Pending>> {
    let p = sd.run.join(MARKER);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("the confirmation marker {} is corrupted", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// Writes the marker atomically (temp file + rename), like the state.
fn write_marker(sd: &StateDir, p: &Pending) -> Result<()> {
    let path = sd.run.join(MARKER);
    let tmp = path.with_extension("json.tmp");
    crate::state::write_private(&tmp, &serde_json::to_vec_pretty(p)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
}

fn remove_marker(sd: &StateDir) -> Result<()> {
    let path = sd.run.join(MARKER);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The refusal of an apply while a change waits for its confirmation.
pub(super) fn pending_error(p: &Pending) -> anyhow::Error {
    Error::Pending(format!(
        "an apply of {} is waiting for confirmation: {}; nothing else is applied until then. \
         hint: `sg-agent confirm` keeps it, `sg-agent confirm --rollback` goes back to {} now",
        p.source,
        p.describe_deadline(),
        p.previous.source
    ))
    .into()
}

impl Agent {
    /// The change waiting for confirmation, if any.
    pub fn pending(&self) -> Result<Option<Pending>> {
        read_marker(&self.sd)
    }

    /// What a `--confirm` apply must remember, taken under the lock before it changes
    /// anything. Refused when nothing is applied (there would be no policy to go back to).
    pub(super) fn previous_for_confirm(&self) -> Result<Previous> {
        if !self.is_applied() {
            return Err(Error::InvalidInput(
                "--confirm needs a policy to go back to, and nothing is applied in this network \
                 namespace yet; hint: apply without --confirm first (the SSH pre-flight still \
                 checks that your next connection gets in)"
                    .into(),
            )
            .into());
        }
        let text = std::fs::read_to_string(self.sd.run.join("policy.applied"))
            .context("reading the applied policy text (to go back to it)")?;
        Ok(Previous {
            source: self.state.source.clone(),
            text,
        })
    }

    /// Records the deadline of the apply that just succeeded (under its lock).
    pub(super) fn set_pending(
        &self,
        source: String,
        within: Duration,
        previous: Previous,
        ingress: &HookPlan,
        ssh_connection: Option<String>,
    ) -> Result<Pending> {
        let now = now_ms();
        let p = Pending {
            source,
            set_at_ms: now,
            deadline_ms: now + u64::try_from(within.as_millis()).unwrap_or(u64::MAX / 2),
            previous,
            ssh_connection,
            ingress: ingress.to_string(),
            watchdog_pid: None,
        };
        write_marker(&self.sd, &p).context(
            "recording the confirmation deadline (the new policy is applied; hint: `sg-agent \
             apply` the previous one to go back)",
        )?;
        Ok(p)
    }

    /// Records the watchdog that holds the timer (for `status` and for tests).
    pub fn set_watchdog(&self, pid: u32) -> Result<()> {
        let _lock = self.sd.lock()?;
        if let Some(mut p) = read_marker(&self.sd)? {
            p.watchdog_pid = Some(pid);
            write_marker(&self.sd, &p)?;
        }
        Ok(())
    }

    /// `sg-agent confirm`: keeps the pending change. Its timer holder finds the marker gone
    /// and stands down.
    pub fn confirm(&mut self) -> Result<Pending> {
        let _lock = self.sd.lock()?;
        let Some(p) = read_marker(&self.sd)? else {
            bail!(
                "nothing is waiting for confirmation in this network namespace (a change \
                 not confirmed in time has been reverted: `sg-agent status` shows what is \
                 enforced, `sg-agent counters` how many reverts happened)"
            );
        };
        remove_marker(&self.sd)?;
        log::info!(
            "confirmed the apply of {} ({})",
            p.source,
            p.describe_deadline()
        );
        Ok(p)
    }

    /// Reverts the pending change when its deadline has passed (the timer's tick, and every
    /// agent's start). None when nothing is pending or it is not due yet.
    pub fn revert_if_overdue(&mut self) -> Result<Option<Reverted>> {
        match read_marker(&self.sd)? {
            Some(p) if p.overdue() => self.revert(RevertWhy::Overdue),
            _ => Ok(None),
        }
    }

    /// Goes back to the policy the pending change replaced: the same apply transaction (the
    /// previous image lands in the generation that is not live, then the flip). The marker
    /// goes last: an error leaves it, and the next tick or agent start tries again.
    pub fn revert(&mut self, why: RevertWhy) -> Result<Option<Reverted>> {
        let t0 = std::time::Instant::now();
        let _lock = self.sd.lock()?;
        self.refresh()?;
        let Some(p) = read_marker(&self.sd)? else {
            return Ok(None);
        };
        if why == RevertWhy::Overdue && !p.overdue() {
            return Ok(None);
        }
        let src = TextSource {
            name: p.previous.source.clone(),
            text: p.previous.text.clone(),
        };
        let bound = bind_to_host(&src).context("reverting: binding the previous policy")?;
        let d = diff(&self.state.applied, &bound.applied);
        let ingress: HookPlan = p.ingress.parse().unwrap_or_default();
        let mut outcome = self
            .apply_whole(&src, bound, &ingress, d, &p.previous.text, t0)
            .context("reverting to the previous policy (the unconfirmed one stays)")?;
        let mut st = self.state.clone();
        st.confirm_reverts += 1;
        st.last_revert_at = outcome_time();
        self.sd.save(&st)?;
        self.state = st;
        remove_marker(&self.sd)?;
        let reason = match why {
            RevertWhy::Overdue => "its confirmation deadline passed",
            RevertWhy::Asked => "`sg-agent confirm --rollback` asked for it",
        };
        outcome.notes.push(format!(
            "reverted the apply of {} because {reason}",
            p.source
        ));
        log::warn!(
            "reverted the unconfirmed apply of {} because {reason}: {} is enforced again \
             (generation {}, in effect after {:.1} ms)",
            p.source,
            p.previous.source,
            outcome.generation,
            outcome.to_effect_ms
        );
        Ok(Some(Reverted { undone: p, outcome }))
    }
}

fn outcome_time() -> u64 {
    now_ms() / 1000
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir {
            pins: dir.path().join("pins"),
            run: dir.path().join("run"),
        };
        crate::state::create_private_dir(&sd.run).unwrap();
        (dir, sd)
    }

    fn pending(deadline_ms: u64) -> Pending {
        Pending {
            source: "bad.yaml".into(),
            set_at_ms: 0,
            deadline_ms,
            previous: Previous {
                source: "good.yaml".into(),
                text: "security_groups: []\n".into(),
            },
            ssh_connection: Some("198.51.100.10 50000 192.0.2.11 22".into()),
            ingress: "tc".into(),
            watchdog_pid: None,
        }
    }

    /// L1: the marker is what survives the session; it round-trips and goes away cleanly.
    #[test]
    fn l1_marker_round_trips_and_is_removed() {
        let (_d, sd) = sd();
        assert_eq!(read_marker(&sd).unwrap(), None);
        let p = pending(now_ms() + 60_000);
        write_marker(&sd, &p).unwrap();
        assert_eq!(read_marker(&sd).unwrap(), Some(p.clone()));
        assert!(!p.overdue());
        assert!(p.left_ms() > 50_000);
        remove_marker(&sd).unwrap();
        remove_marker(&sd).unwrap();
        assert_eq!(read_marker(&sd).unwrap(), None);
    }

    fn lo_policy() -> TextSource {
        TextSource {
            name: "p.yaml".into(),
            text: "security_groups:\n  - id: sg-a\ninstances:\n  - {name: lo, addresses: \
                   [127.0.0.1], groups: [sg-a]}\n"
                .into(),
        }
    }

    fn agent(dir: &tempfile::TempDir) -> Agent {
        Agent::open(super::super::OpenOptions {
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap()
    }

    /// L1: while a change waits for its confirmation another apply is refused (exit 2) before
    /// anything is loaded or created; and `--confirm` with nothing applied (no policy to go
    /// back to) is refused the same way. Neither needs privileges: they stop first.
    #[test]
    fn l1_applies_wait_for_a_pending_change_and_confirm_needs_a_previous_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts =
            super::super::ApplyOptions::new(HookPlan::fixed(crate::dataplane::IngressHook::Tc));
        opts.confirm = Some(Duration::from_secs(30));
        let e = agent(&dir).apply(&lo_policy(), opts.clone()).unwrap_err();
        assert!(
            crate::error::is(
                &e,
                |k| matches!(k, Error::InvalidInput(m) if m.contains("go back to"))
            ),
            "{e:#}"
        );
        let sd = StateDir::for_current_netns(Some(dir.path())).unwrap();
        sd.save(&crate::state::AgentState {
            abi: sg_common::ABI_VERSION,
            ..Default::default()
        })
        .unwrap();
        write_marker(&sd, &pending(now_ms() + 60_000)).unwrap();
        for opts in [
            super::super::ApplyOptions::new(HookPlan::fixed(crate::dataplane::IngressHook::Tc)),
            opts,
        ] {
            let e = agent(&dir).apply(&lo_policy(), opts).unwrap_err();
            assert!(
                crate::error::is(&e, |k| matches!(k, Error::Pending(_))),
                "{e:#}"
            );
        }
        assert!(!sd.pins.exists(), "nothing was loaded or pinned");
        assert!(read_marker(&sd).unwrap().is_some(), "still pending");
    }

    /// L1: a deadline in the past is overdue; the refusal names the deadline and both ways out.
    #[test]
    fn l1_overdue_and_the_refusal_says_how_to_confirm_or_roll_back() {
        let p = pending(1);
        assert!(p.overdue());
        assert_eq!(p.left_ms(), 0);
        let e = pending_error(&pending(now_ms() + 10_000));
        let msg = format!("{e:#}");
        for want in [
            "bad.yaml",
            "s left",
            "sg-agent confirm",
            "--rollback",
            "good.yaml",
        ] {
            assert!(msg.contains(want), "{want:?} missing from {msg}");
        }
        assert_eq!(crate::error::kind(&e), crate::error::Kind::Invalid);
    }
}
