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
//! While a change waits, memberships keep moving (instances join and leave groups elsewhere):
//! a change of memberships alone is applied and also written into the policy a revert goes
//! back to ([`Agent::window_memberships`]), so a revert keeps them. Anything else waits.
//!
//! A revert leaves a record ([`REVERTED`]: what was undone, as the hash of its policy without
//! its memberships), so that a daemon following a file or a store that still holds the undone
//! policy does not apply it again by itself ([`Agent::reverted_again`]).
//!
//! Owns the marker, the record and the confirm/rollback/revert transitions; it spawns
//! nothing (the CLI starts the watchdog) and prints nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::apply::{ApplyOutcome, bind_to_host};
use super::summary::{Diff, diff};
use super::{Agent, PolicySource, TextSource};
use crate::dataplane::HookPlan;
use crate::error::Error;
use crate::policy::Policy;
use crate::state::StateDir;

/// The marker's file name in the state's run directory.
pub const MARKER: &str = "confirm.json";

/// The record of the last revert, beside the marker.
pub const REVERTED: &str = "confirm.reverted.json";

/// What the last revert undid. A daemon reads it to leave that policy alone until its source
/// changes it (a new store revision, an edited file) beyond memberships.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertRecord {
    /// The name of the undone change, and the pending change's `set_at_ms`.
    pub source: String,
    pub set_at_ms: u64,
    /// When it was reverted (milliseconds since the epoch).
    pub at_ms: u64,
    /// [`policy_hash`] of the undone policy.
    pub policy_hash: String,
    /// Its text: the memberships a daemon applies later are those changed since it.
    pub undone: String,
    /// Why it was reverted ("its confirmation deadline passed", ...); empty in records
    /// written before it was kept.
    #[serde(default)]
    pub why: String,
    /// The policy that came back (its name).
    #[serde(default)]
    pub restored: String,
}

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

impl RevertWhy {
    /// Why, for people: the log, the revert's notes and its record.
    pub fn describe(self) -> &'static str {
        match self {
            RevertWhy::Overdue => "its confirmation deadline passed",
            RevertWhy::Asked => "`sg-agent confirm --rollback` asked for it",
        }
    }
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

/// The record of the last revert in `sd`, if any.
pub fn read_revert_record(sd: &StateDir) -> Result<Option<RevertRecord>> {
    let p = sd.run.join(REVERTED);
    match std::fs::read(&p) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// A policy without its memberships (instances, their interfaces and addresses), as the
/// native document: what a confirmation is about. Origins (file lines) are not part of it.
fn without_memberships(p: &Policy) -> serde_json::Value {
    let mut doc = crate::store::native::document(p);
    if let Some(m) = doc.as_object_mut() {
        m.remove("instances");
    }
    doc
}

/// Whether `new` differs from `enforced` by memberships alone (or not at all).
pub fn only_memberships(enforced: &Policy, new: &Policy) -> bool {
    without_memberships(enforced) == without_memberships(new)
}

/// The hash (sha256, 16 hex digits) of a policy without its memberships.
pub fn policy_hash(p: &Policy) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(without_memberships(p).to_string().as_bytes());
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `base` with the membership changes from `from` to `to` (a three-way merge by interface
/// name): an interface `to` added or changed takes `to`'s form, keeping only the groups `base`
/// has (a group the pending change added is not in the policy a revert goes back to; an
/// interface left with none is left out); one `to` removed goes; one unchanged keeps `base`'s
/// form, so this host's interfaces keep what `base` gave them.
pub fn with_memberships(base: &Policy, from: &Policy, to: &Policy) -> Policy {
    let named = |p: &Policy, n: &str| p.interfaces.iter().find(|i| i.name == n).cloned();
    let mut merged = base.clone();
    merged
        .interfaces
        .retain(|i| named(from, &i.name).is_none() || named(to, &i.name).is_some());
    for i in &to.interfaces {
        if named(from, &i.name).is_some_and(|f| same_membership(&f, i)) {
            continue;
        }
        let mut i = i.clone();
        i.groups.retain(|g| base.groups.contains_key(g));
        merged.interfaces.retain(|m| m.name != i.name);
        if !i.groups.is_empty() {
            merged.interfaces.push(i);
        }
    }
    merged
}

/// Two interfaces alike but for where they were written.
fn same_membership(a: &crate::policy::Interface, b: &crate::policy::Interface) -> bool {
    (
        &a.name,
        &a.instance,
        &a.device,
        &a.addresses,
        &a.groups,
        &a.timeouts,
    ) == (
        &b.name,
        &b.instance,
        &b.device,
        &b.addresses,
        &b.groups,
        &b.timeouts,
    )
}

fn same_memberships(a: &Policy, b: &Policy) -> bool {
    a.interfaces.len() == b.interfaces.len()
        && a.interfaces
            .iter()
            .all(|i| b.interfaces.iter().any(|j| same_membership(i, j)))
}

/// A policy as native JSON text under `name`, checked to load again.
fn native_source(name: &str, p: &Policy) -> Result<TextSource> {
    let src = TextSource {
        name: name.to_string(),
        text: serde_json::to_string_pretty(&crate::store::native::document(p))?,
    };
    src.load()
        .context("the policy with the new memberships does not load")?;
    Ok(src)
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

    /// Whether the change from the enforced policy to `new` is of memberships alone, with no
    /// interface of this host bound, released or given other groups (`diff` says; that would
    /// change what this host enforces on itself, a change to confirm).
    /// The enforced policy when it cannot be read counts as a change.
    pub(super) fn only_memberships(&self, new: &Policy, diff: &Diff) -> bool {
        if !(diff.interfaces_added.is_empty()
            && diff.interfaces_removed.is_empty()
            && diff.interfaces_changed.is_empty())
        {
            return false;
        }
        match self.applied_policy() {
            Ok(enforced) => only_memberships(&enforced.policy, new),
            Err(e) => {
                log::debug!("comparing with the enforced policy: {e:#}");
                false
            }
        }
    }

    /// A change arriving while `p` waits (L1): memberships alone land in both generations,
    /// so this returns `p` with the policy it goes back to given `new`'s memberships (the
    /// caller applies the change, then writes it). Anything else is refused until the window
    /// closes.
    pub(super) fn window_memberships(
        &self,
        p: &Pending,
        new: &Policy,
        diff: &Diff,
    ) -> Result<Pending> {
        if !self.only_memberships(new, diff) {
            return Err(pending_error(p));
        }
        let enforced = self.applied_policy()?.policy;
        let previous = TextSource {
            name: p.previous.source.clone(),
            text: p.previous.text.clone(),
        }
        .load()
        .context("loading the policy a revert goes back to")?
        .policy;
        let merged = with_memberships(&previous, &enforced, new);
        let merged = native_source(&p.previous.source, &merged)
            .map_err(|e| pending_error(p).context(format!("{e:#}")))?;
        let mut p = p.clone();
        p.previous.text = merged.text;
        Ok(p)
    }

    /// Writes the marker of the window a membership change went through (under its lock).
    pub(super) fn update_pending(&self, p: &Pending) -> Result<()> {
        write_marker(&self.sd, p).context("recording the new memberships for a revert")
    }

    /// What the last revert undid, if anything was ever reverted here.
    pub fn last_revert(&self) -> Result<Option<RevertRecord>> {
        read_revert_record(&self.sd)
    }

    /// The last revert's record when `new` is the policy it undid, memberships aside: a
    /// daemon applies it again only when asked (SIGHUP), and meanwhile only its memberships
    /// ([`Agent::enforced_with_memberships`]).
    pub fn reverted_again(&self, new: &Policy) -> Result<Option<RevertRecord>> {
        Ok(read_revert_record(&self.sd)?.filter(|r| r.policy_hash == policy_hash(new)))
    }

    /// The enforced policy with the membership changes from the policy `r` undid to `new`
    /// (native JSON, named as the enforced one); None when there are none.
    pub fn enforced_with_memberships(
        &self,
        r: &RevertRecord,
        new: &Policy,
    ) -> Result<Option<TextSource>> {
        let enforced = self.applied_policy()?.policy;
        let undone = TextSource {
            name: r.source.clone(),
            text: r.undone.clone(),
        }
        .load()
        .context("loading the policy the revert undid")?
        .policy;
        let merged = with_memberships(&enforced, &undone, new);
        if same_memberships(&merged, &enforced) {
            return Ok(None);
        }
        native_source(&self.state.source, &merged).map(Some)
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
        let undone = self.applied_policy().and_then(|l| {
            let text = std::fs::read_to_string(self.sd.applied_policy_file())?;
            Ok((policy_hash(&l.policy), text))
        });
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
        let reason = why.describe();
        self.record_revert(&p, undone, reason);
        remove_marker(&self.sd)?;
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

impl Agent {
    /// Writes the revert's record (before the marker goes). A record that cannot be written
    /// is logged: the revert stands, a daemon may then try the undone policy again.
    fn record_revert(&self, p: &Pending, undone: Result<(String, String)>, why: &str) {
        let written = undone.and_then(|(policy_hash, undone)| {
            let r = RevertRecord {
                source: p.source.clone(),
                set_at_ms: p.set_at_ms,
                at_ms: now_ms(),
                policy_hash,
                undone,
                why: why.to_string(),
                restored: p.previous.source.clone(),
            };
            let path = self.sd.run.join(REVERTED);
            crate::state::replace_private(&path, &serde_json::to_vec_pretty(&r)?)
        });
        if let Err(e) = written {
            log::warn!("recording the revert of {}: {e:#}", p.source);
        }
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

    fn load(text: &str) -> Policy {
        TextSource {
            name: "t.yaml".into(),
            text: text.into(),
        }
        .load()
        .unwrap()
        .policy
    }

    const GROUPS: &str = "security_groups:\n  - id: sg-a\n    ingress:\n      - {protocol: tcp, \
                          ports: 22, source: 198.51.100.10/32}\n  - id: sg-b\n";

    /// L1: what a confirmation is about is the policy without its memberships: instances
    /// joining or leaving (or moving lines in the file) are memberships only; a rule is not.
    /// The policy a revert goes back to takes the new memberships, minus the groups it lacks
    /// (an interface left with none is left out), and its hash ignores memberships.
    #[test]
    fn l1_memberships_alone_are_no_change_to_confirm_and_merge_into_the_previous_policy() {
        let one = load(&format!(
            "{GROUPS}instances:\n  - {{name: a, addresses: [192.0.2.1], groups: [sg-a]}}\n"
        ));
        let two = load(&format!(
            "# moved\n{GROUPS}instances:\n  - {{name: a, addresses: [192.0.2.1], groups: \
             [sg-a]}}\n  - {{name: b, addresses: [192.0.2.2], groups: [sg-a, sg-b]}}\n"
        ));
        assert!(only_memberships(&one, &two));
        assert_eq!(policy_hash(&one), policy_hash(&two));
        let rule = load(&format!(
            "{}  - id: sg-c\ninstances:\n  - {{name: c, addresses: [192.0.2.3], groups: \
             [sg-c]}}\n",
            GROUPS.replace("22", "443")
        ));
        assert!(!only_memberships(&one, &rule));
        assert_ne!(policy_hash(&one), policy_hash(&rule));

        // b joins during the window of `rule_a` (which moved a to sg-c): the policy a revert
        // goes back to gets b, and keeps a as `one` had it.
        let rule_a = load(&format!(
            "{}  - id: sg-c\ninstances:\n  - {{name: a, addresses: [192.0.2.1], groups: \
             [sg-c]}}\n",
            GROUPS.replace("22", "443")
        ));
        let rule_b = load(&format!(
            "{}  - id: sg-c\ninstances:\n  - {{name: a, addresses: [192.0.2.1], groups: \
             [sg-c]}}\n  - {{name: b, addresses: [192.0.2.2], groups: [sg-a, sg-c]}}\n",
            GROUPS.replace("22", "443")
        ));
        assert!(only_memberships(&rule_a, &rule_b));
        let merged = with_memberships(&one, &rule_a, &rule_b);
        assert!(only_memberships(&one, &merged));
        let got = merged.memberships();
        assert_eq!(
            got,
            [
                ("a".to_string(), vec!["sg-a".to_string()]),
                ("b".to_string(), vec!["sg-a".to_string()])
            ],
            "a keeps its groups, b joins without sg-c (not in the previous policy)"
        );
        assert!(same_memberships(&with_memberships(&one, &one, &two), &two));
        let gone = with_memberships(&two, &two, &one);
        assert!(same_memberships(&gone, &one), "b left during the window");
        let src = native_source("good.yaml", &merged).unwrap();
        assert_eq!(src.load().unwrap().policy.interfaces.len(), 2);
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
