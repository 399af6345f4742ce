//! The agent: one namespace's enforcement over time. Ties the layers together in order —
//! validated policy -> binding to local devices -> compile -> attach (pinned links) ->
//! atomic swap -> state file — and answers questions about what is enforced (status,
//! counters, conntrack, explain).
//!
//! Owns the ordering that keeps enforcement safe: new devices are attached before the flip
//! (their packets are dropped as "no policy" for the few milliseconds until it), a failed step
//! undoes what this apply attached, the counter slots are saved before the flip (so a process
//! killed on either side of it leaves a state that names the live slots), devices no longer
//! in the policy are released only after the flip, and the state file is completed last. A
//! long-lived agent (the daemon) re-reads the state and SG_ACTIVE under the lock before each
//! apply, so another agent's apply never leaves it writing into the live generation.
//! It prints nothing: the CLI does. docs/agent.md "Failure behaviour" lists the outcomes.
//!
//! Where policy comes from is one seam, [`PolicySource`]: a file today; a distributed store
//! (etcd) can implement it later without touching anything below.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use sg_common::{ABI_VERSION, Reason, RuleCounter};

use crate::bind::{self, Binding};
use crate::compile::{self, CompileOptions};
use crate::config::{self, Loaded};
use crate::dataplane::{
    self, ApplyReport, AttachReport, Capacities, CtEntry, CtStats, Dataplane, Hook, IngressHook,
    LoadOptions, PinGuard, XdpMode,
};
use crate::error::Error;
use crate::model::{Model, decide};
use crate::packet::{L4, Packet};
use crate::policy::{Direction, Group, IcmpMatch, Peer, Policy, PortRange, Protocol, Rule};
use crate::state::{AgentState, Applied, InterfaceSummary, RuleSummary, StateDir};

/// Where the desired policy comes from. A file today; a distributed store tomorrow.
pub trait PolicySource {
    /// A human name for messages (a path, a store key).
    fn describe(&self) -> String;
    /// The current policy, validated. Invalid input is an [`Error::InvalidInput`] error.
    fn load(&self) -> Result<Loaded>;
    /// The raw text, kept beside the state so `explain` judges what is enforced.
    fn text(&self) -> Result<String>;
    /// A fingerprint that changes when the policy may have changed (for reloads).
    fn fingerprint(&self) -> Option<(u64, SystemTime)>;
}

/// A policy file (native YAML, CloudFormation or describe-security-groups JSON).
pub struct FileSource(pub PathBuf);

impl PolicySource for FileSource {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
    fn load(&self) -> Result<Loaded> {
        config::load_file(&self.0).map_err(|d| Error::InvalidInput(d.to_string()).into())
    }
    fn text(&self) -> Result<String> {
        std::fs::read_to_string(&self.0).with_context(|| format!("read {}", self.0.display()))
    }
    fn fingerprint(&self) -> Option<(u64, SystemTime)> {
        let md = std::fs::metadata(&self.0).ok()?;
        Some((md.len(), md.modified().ok()?))
    }
}

/// How `apply` attaches devices it has not attached before.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub ingress: IngressHook,
}

pub fn parse_hook(s: &str) -> Result<IngressHook> {
    match s {
        "xdp" => Ok(IngressHook::Xdp(XdpMode::Native)),
        "xdp-skb" => Ok(IngressHook::Xdp(XdpMode::Skb)),
        "tc" => Ok(IngressHook::Tc),
        other => Err(Error::InvalidInput(format!(
            "unknown ingress hook {other:?}; hint: use xdp, xdp-skb or tc"
        ))
        .into()),
    }
}

fn hook_name(h: IngressHook) -> &'static str {
    match h {
        IngressHook::Xdp(_) => "xdp",
        IngressHook::Tc => "tc",
    }
}

/// What changed between two applied policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    pub rules_added: Vec<(String, RuleSummary)>,
    pub rules_removed: Vec<(String, RuleSummary)>,
    /// group -> (members added, members removed)
    pub members: BTreeMap<String, (Vec<String>, Vec<String>)>,
    pub interfaces_added: Vec<(String, InterfaceSummary)>,
    pub interfaces_removed: Vec<(String, InterfaceSummary)>,
    pub interfaces_changed: Vec<(String, InterfaceSummary)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// What one apply did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyOutcome {
    pub source: String,
    pub dry_run: bool,
    pub diff: Diff,
    pub generation: u32,
    pub entries: usize,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub notes: Vec<String>,
    /// From the start of the apply (reading the file) to the generation flip: how long until
    /// packets see the new policy. Includes loading the programs (the verifier) when this
    /// process had not loaded them yet.
    pub to_effect_ms: f64,
    /// Writing the new generation and flipping (the part that touches the policy maps).
    pub swap_ms: f64,
    pub compile_ms: f64,
    pub total_ms: f64,
}

/// A named point inside an apply where a test can freeze the agent (`SG_AGENT_TEST_STOP_AT`
/// = `STAGE` or `STAGE:N` for the Nth time it is reached): the process stops itself with
/// SIGSTOP so that the test can SIGKILL it at exactly that point. Stages: `compiled`
/// (nothing touched yet), `attached` (programs replaced, old policy still enforced),
/// `swapped` (new policy enforced, state not yet saved).
pub fn test_stop_point(stage: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEEN: [AtomicU32; 3] = [const { AtomicU32::new(0) }; 3];
    let Ok(want) = std::env::var("SG_AGENT_TEST_STOP_AT") else {
        return;
    };
    let (name, nth) = match want.split_once(':') {
        Some((n, k)) => (n.to_string(), k.parse::<u32>().unwrap_or(1)),
        None => (want.clone(), 1),
    };
    let idx = match stage {
        "compiled" => 0,
        "attached" => 1,
        _ => 2,
    };
    let count = SEEN[idx].fetch_add(1, Ordering::SeqCst) + 1;
    if name == stage && count == nth {
        eprintln!("sg-agent: stopped at {stage} (SG_AGENT_TEST_STOP_AT={want})");
        // SAFETY: plain syscall; the process continues (or dies) as its parent decides.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// One namespace's agent: its state directory, remembered state and loaded dataplane.
pub struct Agent {
    pub sd: StateDir,
    pub state: AgentState,
    dp: Option<Dataplane>,
    /// Map sizes for maps created by this agent; adopted (pinned) maps keep theirs, and
    /// this is updated to the real sizes when the dataplane is loaded.
    pub capacities: Capacities,
    /// Things worth telling the user that did not stop the command.
    pub warnings: Vec<String>,
    /// A daemon's agent: once it has applied, finding the namespace detached under it (by
    /// `sg-agent detach`) stops an apply with [`Error::DetachedUnderUs`] instead of starting over.
    pub stop_if_detached: bool,
    /// What this agent last applied whole, kept so that a reload that only changes
    /// memberships is a delta of the live image (a daemon's common case).
    live: Option<Live>,
}

/// The live generation as this agent wrote it.
struct Live {
    policy: Policy,
    bindings: BTreeMap<String, u32>,
    image: crate::image::MapImage,
    index: compile::Index,
}

impl Agent {
    /// Opens the namespace's state (without loading anything into the kernel yet). Refuses a
    /// corrupted state file or one written by an agent of another ABI, touching nothing.
    pub fn open(state_dir: Option<&Path>) -> Result<Agent> {
        let sd = StateDir::for_current_netns(state_dir)?;
        let mut warnings = Vec::new();
        let state = load_state(&sd, state_dir.is_none(), &mut warnings)?;
        Ok(Agent {
            sd,
            state,
            dp: None,
            capacities: Capacities::default(),
            warnings,
            stop_if_detached: false,
            live: None,
        })
    }

    /// Like [`Agent::open`] but for `detach`, the way out: an unreadable or foreign state
    /// does not stop it (it is removed with everything else).
    pub fn open_for_detach(state_dir: Option<&Path>) -> Result<Agent> {
        let sd = StateDir::for_current_netns(state_dir)?;
        let mut warnings = Vec::new();
        let state = match sd.load() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                warnings.push(format!("{e:#}"));
                AgentState::default()
            }
        };
        Ok(Agent {
            sd,
            state,
            dp: None,
            capacities: Capacities::default(),
            warnings,
            stop_if_detached: false,
            live: None,
        })
    }

    /// True when this namespace has an applied policy.
    pub fn is_applied(&self) -> bool {
        self.state.abi != 0
    }

    fn require_applied(&self) -> Result<()> {
        if !self.is_applied() {
            let pinned = dataplane::pinned_ifaces(&self.links_dir());
            if !pinned.is_empty() {
                bail!(
                    "nothing is recorded as applied in this network namespace (no state in {}), \
                     but {} interface(s) have pinned sg programs in {}: an apply was \
                     interrupted; hint: sg-agent apply FILE, or sg-agent detach",
                    self.sd.run.display(),
                    pinned.len(),
                    self.links_dir().display()
                );
            }
            bail!(
                "nothing is applied in this network namespace (no state in {}); hint: \
                 sg-agent apply FILE",
                self.sd.run.display()
            );
        }
        Ok(())
    }

    /// The loaded dataplane, adopting pinned maps (at their real sizes) and the counter slots
    /// the state remembers.
    pub fn dataplane(&mut self) -> Result<&mut Dataplane> {
        if self.dp.is_none() {
            self.sd.create()?;
            let maps_dir = self.sd.pins.join("maps");
            let hint = "loading the sg dataplane; hint: run as root (CAP_BPF, CAP_NET_ADMIN, \
                        CAP_PERFMON)";
            self.capacities =
                dataplane::pinned_capacities(&maps_dir, self.capacities).context(hint)?;
            let mut dp = Dataplane::load(LoadOptions {
                capacities: self.capacities,
                pin_dir: Some(maps_dir),
                object: None,
            })
            .context(hint)?;
            if self.is_applied() {
                dp.adopt_slots(&self.state.slot_table());
            }
            self.dp = Some(dp);
        }
        Ok(self.dp.as_mut().expect("just loaded"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.sd.pins.join("links")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.sd.pins.join("maps")
    }

    /// Another agent (a CLI `apply` beside a daemon, or one killed half-way) may have changed
    /// the namespace since this one loaded it: re-read the state, and drop the loaded
    /// dataplane when its picture of the kernel is stale, so the next apply never writes
    /// into the live generation. Call with the lock held.
    fn refresh(&mut self) -> Result<()> {
        let mut warnings = Vec::new();
        let disk = load_state(&self.sd, false, &mut warnings)?;
        if disk != self.state {
            self.state = disk;
            self.dp = None;
        } else if let Some(dp) = &self.dp
            && !dp.still_current().unwrap_or(false)
        {
            self.dp = None;
        }
        if self.dp.is_none() {
            self.live = None;
        }
        Ok(())
    }

    /// Validate -> bind -> compile -> attach -> swap -> save. On error the enforced policy
    /// is the one before (see docs/agent.md "Failure behaviour").
    pub fn apply(&mut self, src: &dyn PolicySource, opts: ApplyOptions) -> Result<ApplyOutcome> {
        let t0 = Instant::now();
        let loaded = src.load()?;
        let policy = &loaded.policy;
        let local = bind::local_interfaces().context("reading this namespace's interfaces")?;
        let bindings = bind::bind(policy, &local).map_err(|e| {
            Error::InvalidInput(format!(
                "{}: cannot bind the policy to this host:\n{e}",
                src.describe()
            ))
        })?;
        if bindings.is_empty() {
            let here: Vec<String> = local
                .iter()
                .filter(|l| l.name != "lo")
                .map(|l| format!("{} {:?}", l.name, l.addresses))
                .collect();
            return Err(Error::NotOnThisHost(format!(
                "{}: no interface of the policy is on this host (local devices: {}); hint: \
                 give the instance's addresses in the policy, or name the device with \
                 `device:`",
                src.describe(),
                if here.is_empty() {
                    "none".into()
                } else {
                    here.join(", ")
                }
            ))
            .into());
        }
        let new_applied = summarize(policy, &bindings);
        let by_name: BTreeMap<String, u32> = bindings
            .iter()
            .map(|b| (b.interface.clone(), b.ifindex))
            .collect();

        if opts.dry_run {
            // Read-only: what is recorded now, the real sizes of pinned maps; nothing is
            // created, loaded or locked.
            let current = self.sd.load()?.unwrap_or_default();
            let caps = dataplane::pinned_capacities(&self.maps_dir(), self.capacities)?;
            let diff = diff(&current.applied, &new_applied);
            let tc = Instant::now();
            compile::compile(
                policy,
                &by_name,
                &current.slot_table(),
                &CompileOptions {
                    generation: 1 - current.generation.min(1),
                    slot_capacity: caps.rule_slots,
                },
            )
            .map_err(Error::from)?;
            let compile_ms = ms(tc.elapsed());
            return Ok(ApplyOutcome {
                source: src.describe(),
                dry_run: true,
                diff,
                generation: current.generation,
                entries: 0,
                attached: Vec::new(),
                detached: Vec::new(),
                notes: Vec::new(),
                to_effect_ms: 0.0,
                swap_ms: 0.0,
                compile_ms,
                total_ms: ms(t0.elapsed()),
            });
        }

        let was_applied = self.is_applied();
        let _lock = self.sd.lock()?;
        self.refresh()?;
        if self.stop_if_detached && was_applied && !self.is_applied() {
            return Err(Error::DetachedUnderUs.into());
        }
        let diff = diff(&self.state.applied, &new_applied);
        let text = src.text()?;
        if let Some(done) =
            self.apply_membership(src, policy, &by_name, &new_applied, &text, &diff, t0)?
        {
            return Ok(done);
        }
        let links = self.links_dir();
        let prev_slots = self.state.slot_table();
        let prev_hooks = self.state.hooks.clone();
        let had_state = self.sd.state_file().exists();
        let cookie = crate::state::netns_cookie().unwrap_or(0);
        let dp = self.dataplane()?;
        let tc = Instant::now();
        let (mut image, index) = compile::compile_indexed(
            policy,
            &by_name,
            &prev_slots,
            &CompileOptions {
                generation: dp.next_generation(),
                slot_capacity: dp.capacities().rule_slots,
            },
        )
        .map_err(Error::from)?;
        // Drop events (flow log REJECT lines) are wanted on every interface; whether any are
        // produced is one global switch (SG_CONFIG.events_per_sec), on while a daemon with a
        // flow log runs. So a CLI apply beside such a daemon does not silence it.
        for conf in image.ifaces.values_mut() {
            conf.flags |= sg_common::iface_flags::LOG_DROPS;
        }
        let compile_ms = ms(tc.elapsed());
        let entries = image.ifaces.len() + image.peers.len() + image.ports.len();
        test_stop_point("compiled");

        // 1. Attach (or re-attach with this binary's programs) every bound device. New ones
        //    judge with "no policy" until the flip: fail closed, for milliseconds.
        let before: BTreeSet<u32> = dataplane::pinned_ifaces(&links)
            .iter()
            .filter(|p| p.live)
            .map(|p| p.ifindex)
            .collect();
        let mut attached = Vec::new();
        let mut notes = Vec::new();
        let mut hooks = BTreeMap::new();
        for b in &bindings {
            let hook = match prev_hooks.get(&b.device) {
                Some(h) if before.contains(&b.ifindex) => parse_hook(h).unwrap_or(opts.ingress),
                _ => opts.ingress,
            };
            match dp.attach_pinned(&b.device, hook, &links) {
                Ok(r) => {
                    notes.extend(r.notes.iter().cloned());
                    if !before.contains(&b.ifindex) {
                        attached.push(describe_attach(&b.device, &r));
                    }
                    hooks.insert(b.device.clone(), hook_name(hook).to_string());
                }
                Err(e) => {
                    undo_new_attachments(&links, &bindings, &before);
                    return Err(e.context(format!("attaching to {}", b.device)));
                }
            }
        }
        test_stop_point("attached");

        // 2. Remember the new counter slots before the flip, beside the old ones: whichever
        //    generation is live when this process dies, the state names its slots.
        let mut pre = self.state.clone();
        pre.abi = ABI_VERSION;
        pre.netns_cookie = cookie;
        for (rule, slot) in &image.slots.by_rule {
            pre.slots.insert(rule.0.clone(), *slot);
        }
        pre.slot_cursor = image.slots.cursor;
        if let Err(e) = self.sd.save(&pre) {
            undo_new_attachments(&links, &bindings, &before);
            return Err(e.context("saving the state before the swap (nothing was swapped)"));
        }

        // 3. The atomic swap.
        let dp = self.dp.as_mut().expect("loaded above");
        let t_swap = Instant::now();
        let report: ApplyReport = match dp.apply(&image) {
            Ok(r) => r,
            Err(e) => {
                undo_new_attachments(&links, &bindings, &before);
                let restored = if had_state {
                    self.sd.save(&self.state)
                } else {
                    std::fs::remove_file(self.sd.state_file()).map_err(Into::into)
                };
                if let Err(e2) = restored {
                    log::warn!("restoring the state file after a failed swap: {e2:#}");
                }
                return Err(e.context("swapping the policy in (the previous one stays)"));
            }
        };
        let to_effect_ms = ms(t_swap.duration_since(t0)) + ms(report.to_flip);
        test_stop_point("swapped");

        // 4. Release devices the policy no longer covers, and pins whose device is gone.
        let bound: BTreeSet<u32> = bindings.iter().map(|b| b.ifindex).collect();
        let mut detached = Vec::new();
        for p in dataplane::pinned_ifaces(&links) {
            if !bound.contains(&p.ifindex) {
                dataplane::unpin_iface(&links, p.ifindex)?;
                let name = self
                    .state
                    .applied
                    .interfaces
                    .iter()
                    .find(|(_, i)| i.ifindex == p.ifindex)
                    .map(|(d, _)| d.clone())
                    .unwrap_or_else(|| "device".into());
                detached.push(if p.live {
                    format!("{name} (ifindex {})", p.ifindex)
                } else {
                    format!(
                        "{name} (ifindex {}, deleted: stale pins removed)",
                        p.ifindex
                    )
                });
            }
        }
        // 5. Remember.
        let mut st = pre;
        st.generation = report.generation;
        st.set_slots(&image.slots);
        st.source = src.describe();
        st.applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        st.applied = new_applied;
        st.hooks = hooks;
        crate::state::write_private(&self.sd.run.join("policy.applied"), text.as_bytes())
            .context("saving the applied policy text")?;
        crate::state::write_private(
            &self.sd.run.join("policy.applied.name"),
            src.describe()
                .rsplit('/')
                .next()
                .unwrap_or("policy")
                .as_bytes(),
        )?;
        self.sd.save(&st)?;
        self.state = st;
        self.live = Some(Live {
            policy: policy.clone(),
            bindings: by_name,
            image,
            index,
        });
        Ok(ApplyOutcome {
            source: src.describe(),
            dry_run: false,
            diff,
            generation: report.generation,
            entries,
            attached,
            detached,
            notes,
            to_effect_ms,
            swap_ms: ms(report.to_flip),
            compile_ms,
            total_ms: ms(t0.elapsed()),
        })
    }

    /// A reload that only changes memberships (instances joining or leaving groups, their
    /// addresses), on the interfaces this agent bound and attached last time: the delta of
    /// the live image, written in place (`Dataplane::apply_delta`), no compile of the whole
    /// policy, no attach, no flip. None when that does not apply: the caller applies whole.
    #[expect(clippy::too_many_arguments, reason = "parts apply already computed")]
    fn apply_membership(
        &mut self,
        src: &dyn PolicySource,
        policy: &Policy,
        by_name: &BTreeMap<String, u32>,
        new_applied: &Applied,
        text: &str,
        diff: &Diff,
        t0: Instant,
    ) -> Result<Option<ApplyOutcome>> {
        let (Some(live), Some(dp)) = (self.live.as_mut(), self.dp.as_mut()) else {
            return Ok(None);
        };
        if live.bindings != *by_name || dp.active_generation() != live.image.generation {
            return Ok(None);
        }
        let links = self.sd.pins.join("links");
        let pinned: BTreeSet<u32> = dataplane::pinned_ifaces(&links)
            .iter()
            .filter(|p| p.live)
            .map(|p| p.ifindex)
            .collect();
        if !by_name.values().all(|i| pinned.contains(i)) {
            return Ok(None);
        }
        let tc = Instant::now();
        let delta = match compile::membership_delta(
            &live.policy,
            policy,
            by_name,
            &live.image,
            &live.index,
        ) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => {
                log::debug!("membership delta: {e}; applying whole");
                return Ok(None);
            }
        };
        let compile_ms = ms(tc.elapsed());
        let report = dp
            .apply_delta(&delta)
            .context("changing memberships in place (the previous policy stays)")?;
        let to_effect_ms = ms(t0.elapsed());
        delta.patch(&mut live.image);
        live.policy = policy.clone();
        live.index.absorb(delta);
        let mut st = self.state.clone();
        st.source = src.describe();
        st.applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        st.applied = new_applied.clone();
        crate::state::write_private(&self.sd.run.join("policy.applied"), text.as_bytes())
            .context("saving the applied policy text")?;
        self.sd.save(&st)?;
        self.state = st;
        Ok(Some(ApplyOutcome {
            source: src.describe(),
            dry_run: false,
            diff: diff.clone(),
            generation: report.generation,
            entries: report.entries,
            attached: Vec::new(),
            detached: Vec::new(),
            notes: vec![format!(
                "membership change: {} entries written in place, no flip",
                report.written
            )],
            to_effect_ms,
            swap_ms: ms(report.to_flip),
            compile_ms,
            total_ms: ms(t0.elapsed()),
        }))
    }

    /// The policy as last applied (its saved text, re-validated).
    pub fn applied_policy(&self) -> Result<Loaded> {
        self.require_applied()?;
        let text = std::fs::read_to_string(self.sd.run.join("policy.applied"))
            .context("reading the applied policy text")?;
        let name = std::fs::read_to_string(self.sd.run.join("policy.applied.name"))
            .unwrap_or_else(|_| "policy.applied".into());
        config::load_str(&text, &name)
            .map_err(|d| anyhow!("the applied policy no longer loads: {d}"))
    }

    /// Read-only commands adopt the pinned maps; when they are gone they must not create
    /// empty ones in their place.
    fn require_pins(&self) -> Result<()> {
        if self.dp.is_some() {
            // A loaded dataplane holds its maps (a daemon; pins can be put back).
            return Ok(());
        }
        let abi = self
            .maps_dir()
            .join(format!("abi-{ABI_VERSION}"))
            .join(sg_common::maps::ACTIVE);
        if !abi.exists() {
            bail!(
                "a policy is recorded in {} but its pinned maps are gone from {} (removed \
                 by hand?): nothing is enforced; hint: sg-agent apply FILE, or sg-agent detach",
                self.sd.run.display(),
                self.sd.pins.display()
            );
        }
        Ok(())
    }

    pub fn status(&mut self) -> Result<Status> {
        self.require_applied()?;
        self.require_pins()?;
        let links = self.links_dir();
        let pinned = dataplane::pinned_ifaces(&links);
        let dp = self.dataplane()?;
        let ct = dp.ct_stats()?;
        let caps = dp.capacities();
        let kernel_generation = dp.active_generation();
        let (ki, kp, kq) = dp.generation_entries(kernel_generation);
        let st = &self.state;
        let mut warnings = self.warnings.clone();
        if kernel_generation != st.generation {
            warnings.push(format!(
                "the kernel enforces generation {kernel_generation} but the state records \
                 generation {}: an apply was interrupted after it took effect, so what is \
                 listed here may be older than what is enforced; hint: sg-agent apply FILE",
                st.generation
            ));
        }
        if ki + kp + kq == 0 {
            warnings.push(
                "the policy maps are empty (the pins were removed or replaced?): every packet \
                 of an attached interface is dropped as \"no policy\"; hint: sg-agent apply FILE"
                    .into(),
            );
        }
        for p in &pinned {
            let known = st
                .applied
                .interfaces
                .values()
                .any(|i| i.ifindex == p.ifindex);
            if !p.live {
                warnings.push(format!(
                    "ifindex {} is gone but its pins remain (the device was deleted); the next \
                     apply removes them",
                    p.ifindex
                ));
            } else if !known {
                warnings.push(format!(
                    "ifindex {} has sg programs attached but is not in the recorded policy (an \
                     apply was interrupted); hint: sg-agent apply FILE, or sg-agent detach",
                    p.ifindex
                ));
            }
        }
        let interfaces = st
            .applied
            .interfaces
            .iter()
            .map(|(dev, i)| {
                let p = pinned.iter().find(|p| p.ifindex == i.ifindex && p.live);
                if p.is_none() {
                    warnings.push(format!(
                        "{dev} (ifindex {}) has no live pinned programs: it is NOT enforced \
                         (pins removed, or the device was deleted); hint: sg-agent apply FILE",
                        i.ifindex
                    ));
                }
                IfaceStatus {
                    device: dev.clone(),
                    ifindex: i.ifindex,
                    interface: i.interface.clone(),
                    groups: i.groups.clone(),
                    ingress: p
                        .map(|p| p.ingress_hook.clone())
                        .unwrap_or_else(|| "not attached".into()),
                    egress: if p.is_some_and(|p| p.has_egress) {
                        "tc".into()
                    } else {
                        "not attached".into()
                    },
                }
            })
            .collect();
        Ok(Status {
            abi: ABI_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            source: st.source.clone(),
            applied_at: st.applied_at,
            generation: st.generation,
            kernel_generation,
            interfaces,
            rules: st.applied.rules.len(),
            conntrack: ct,
            ct_capacity: caps.ct,
            ct_new_capacity: caps.ct_new,
            pins: self.sd.pins.display().to_string(),
            state: self.sd.run.display().to_string(),
            warnings,
        })
    }

    /// Per-rule counters (every applied rule, zero traffic included) and reason counters.
    pub fn counters(&mut self) -> Result<Counters> {
        self.require_applied()?;
        self.require_pins()?;
        let slots = self.state.slots.clone();
        let rules_meta = self.state.applied.rules.clone();
        let dp = self.dataplane()?;
        let mut rules = Vec::new();
        for (id, meta) in &rules_meta {
            let c = match slots.get(id) {
                Some(&s) => dp.rule_counter(s)?,
                None => RuleCounter::default(),
            };
            rules.push(RuleCount {
                id: id.clone(),
                meta: meta.clone(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        rules.sort_by(|a, b| {
            (&a.meta.group, &a.meta.direction, &a.id).cmp(&(
                &b.meta.group,
                &b.meta.direction,
                &b.id,
            ))
        });
        let reasons = dp.reason_counters()?;
        Ok(Counters {
            rules,
            reasons: reasons.into_iter().collect(),
            conntrack: dp.ct_stats()?,
        })
    }

    pub fn conntrack(&mut self) -> Result<Vec<CtEntry>> {
        self.require_applied()?;
        self.require_pins()?;
        self.dataplane()?.conntrack()
    }

    pub fn flush_conntrack(&mut self) -> Result<usize> {
        self.require_applied()?;
        self.require_pins()?;
        self.dataplane()?.flush_conntrack()
    }

    /// Deletes expired conntrack entries (the datapath deletes those it meets).
    pub fn sweep_conntrack(&mut self) -> Result<usize> {
        self.dataplane()?.sweep_conntrack()
    }

    /// Holds every pinned object open (a daemon does, so removed pins can be put back).
    pub fn hold_pins(&self) -> Result<PinGuard> {
        PinGuard::hold(&self.links_dir(), &self.maps_dir())
    }

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

    /// `explain`: the reference model's verdict and the real program's, for a new packet.
    pub fn explain(&mut self, q: &ExplainQuery) -> Result<Explanation> {
        let loaded = self.applied_policy()?;
        let policy = loaded.policy;
        let (device, iface) = self.pick_interface(q.iface.as_deref())?;
        let ifindex = iface.ifindex;
        let pol_iface = policy
            .interface(&iface.interface)
            .ok_or_else(|| anyhow!("{} is not in the applied policy", iface.interface))?
            .clone();
        let local = match q.local {
            Some(a) => a,
            None => *pol_iface
                .addresses
                .iter()
                .find(|a| a.is_ipv6() == q.peer.is_ipv6())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{} has no {} address; hint: --local ADDR",
                        iface.interface,
                        if q.peer.is_ipv6() { "IPv6" } else { "IPv4" }
                    ))
                })?,
        };
        let dir = if q.inbound {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let (src, dst) = if q.inbound {
            (q.peer, local)
        } else {
            (local, q.peer)
        };
        let pkt = q.packet(src, dst)?;

        // The reference model, on a fresh flow table: "what would a new flow meet".
        let mut model = Model::new(policy.clone());
        let m = model.process(&iface.interface, dir, &pkt);

        // The real program, in a private copy (fresh maps: nothing live is touched).
        let mut dp = Dataplane::load(LoadOptions {
            capacities: Capacities::small_for(&policy),
            pin_dir: None,
            object: None,
        })?;
        let bindings: BTreeMap<String, u32> = self
            .state
            .applied
            .interfaces
            .values()
            .map(|i| (i.interface.clone(), i.ifindex))
            .collect();
        let image = compile::compile(
            &policy,
            &bindings,
            &self.state.slot_table(),
            &CompileOptions {
                generation: 0,
                slot_capacity: Capacities::small_for(&policy).rule_slots,
            },
        )
        .map_err(|e| anyhow!("compiling the applied policy: {e}"))?;
        dp.apply(&image)?;
        let hook = match (dir, self.state.hooks.get(&device).map(String::as_str)) {
            (Direction::Egress, _) => Hook::TcOut,
            (Direction::Ingress, Some("tc")) => Hook::TcIn,
            (Direction::Ingress, _) => Hook::XdpIn,
        };
        let k = dp.run_frame(hook, &pkt.to_frame(), ifindex)?;
        let kernel_rule = k
            .slot
            .and_then(|s| image.slots.rule(s).map(|r| r.0.clone()));

        let remote = q.peer;
        let port = match &pkt.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport,
            _ => pkt
                .icmp_type_code()
                .map(|(t, c)| u16::from(t) << 8 | u16::from(c))
                .unwrap_or(0),
        };
        let allowing: Vec<String> =
            decide::allowing_rules(&policy, &iface.interface, dir, remote, pkt.proto(), port)
                .iter()
                .map(|r| format!("{} ({})", r.id, rule_line(r)))
                .collect();
        let candidates: Vec<String> = pol_iface
            .groups
            .iter()
            .filter_map(|g| policy.groups.get(g))
            .flat_map(|g| g.rules(dir).iter())
            .filter(|r| r.protocol.number().is_none() || r.protocol.number() == Some(pkt.proto()))
            .map(|r| format!("{} ({})", r.id, rule_line(r)))
            .collect();
        // A live flow of this 5-tuple lets it through whatever the rules say (C1, X1).
        let live = self
            .dataplane()
            .and_then(|d| d.conntrack())
            .map(|es| {
                es.iter()
                    .filter(|e| e.key.ifindex == ifindex && e.remote == remote && e.local == local)
                    .map(|e| {
                        format!(
                            "{} {}:{} <-> {}:{} {} (idle {}s of {}s)",
                            proto_name(e.key.proto),
                            e.local,
                            e.ports().0,
                            e.remote,
                            e.ports().1,
                            e.state_name(),
                            e.idle.as_secs(),
                            e.timeout.as_secs()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let model_rule = m.rule.as_ref().map(|r| r.0.clone());
        Ok(Explanation {
            device,
            interface: iface.interface.clone(),
            direction: dir.name().into(),
            packet: describe_packet(&pkt),
            model_pass: m.pass,
            model_reason: m.reason.name().into(),
            model_rule: model_rule.clone(),
            kernel_pass: k.pass,
            kernel_reason: k.reason.name().into(),
            kernel_rule: kernel_rule.clone(),
            kernel_hook: format!("{hook:?}"),
            agree: m.pass == k.pass && m.reason == k.reason && model_rule == kernel_rule,
            allowing,
            candidates,
            groups: pol_iface.groups.iter().map(|g| g.0.clone()).collect(),
            live_flows: live,
        })
    }

    fn pick_interface(&self, want: Option<&str>) -> Result<(String, InterfaceSummary)> {
        let ifs = &self.state.applied.interfaces;
        match want {
            Some(w) => ifs
                .iter()
                .find(|(d, i)| d.as_str() == w || i.interface == w)
                .map(|(d, i)| (d.clone(), i.clone()))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "--iface {w}: not an enforced interface (enforced: {})",
                        ifs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                    .into()
                }),
            None if ifs.len() == 1 => {
                let (d, i) = ifs.iter().next().expect("one");
                Ok((d.clone(), i.clone()))
            }
            None => Err(Error::InvalidInput(format!(
                "several interfaces are enforced ({}); hint: --iface DEVICE",
                ifs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into()),
        }
    }
}

impl Capacities {
    /// Small private tables sized for one policy (explain's throw-away copy).
    pub fn small_for(policy: &Policy) -> Capacities {
        let rules = policy.all_rules().count() as u32;
        let mut c = Capacities::small();
        c.rule_slots = c
            .rule_slots
            .max((rules + 2).next_power_of_two())
            .max(Capacities::default().rule_slots);
        c.peers = Capacities::default().peers;
        c.ports = Capacities::default().ports;
        c
    }
}

/// Reads the state file and checks that this agent may adopt it: same ABI, same network
/// namespace (by cookie: an inode can be reused after its namespace is deleted; the pins of
/// a dead namespace are then removed rather than adopted).
fn load_state(sd: &StateDir, check_netns: bool, warnings: &mut Vec<String>) -> Result<AgentState> {
    let state = sd.load()?.unwrap_or_default();
    if state.abi != 0 && state.abi != ABI_VERSION {
        bail!(
            "the state in {} was written by an agent speaking ABI {}, this one speaks ABI \
             {ABI_VERSION}; enforcement is left as it is. hint: `sg-agent detach` (with either \
             binary) removes it, then apply again (conntrack state is lost)",
            sd.run.display(),
            state.abi,
        );
    }
    if check_netns && state.netns_cookie != 0 {
        // Kernels without SO_NETNS_COOKIE (< 5.14) record 0 and skip the check.
        let here = crate::state::netns_cookie().unwrap_or(state.netns_cookie);
        if here != state.netns_cookie {
            let links = sd.pins.join("links");
            for p in dataplane::pinned_ifaces(&links) {
                let _ = dataplane::unpin_iface(&links, p.ifindex);
            }
            let _ = std::fs::remove_dir_all(&sd.pins);
            let _ = std::fs::remove_dir_all(&sd.run);
            let msg = format!(
                "removed pins and state left by a deleted network namespace whose inode this \
                 one reuses ({}, {})",
                sd.pins.display(),
                sd.run.display()
            );
            log::warn!("{msg}");
            warnings.push(msg);
            return Ok(AgentState::default());
        }
    }
    Ok(state)
}

fn undo_new_attachments(links: &Path, bindings: &[Binding], before: &BTreeSet<u32>) {
    for b in bindings {
        if !before.contains(&b.ifindex) {
            let _ = dataplane::unpin_iface(links, b.ifindex);
        }
    }
}

fn describe_attach(dev: &str, r: &AttachReport) -> String {
    format!("{dev}: ingress {}, egress {}", r.ingress, r.egress)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What `detach` removed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Detached {
    /// Devices whose programs were detached.
    pub interfaces: Vec<String>,
    /// The daemon that was stopped.
    pub daemon: Option<i32>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct IfaceStatus {
    pub device: String,
    pub ifindex: u32,
    pub interface: String,
    pub groups: Vec<String>,
    pub ingress: String,
    pub egress: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub abi: u32,
    pub version: String,
    pub source: String,
    pub applied_at: u64,
    pub generation: u32,
    /// The generation SG_ACTIVE names (differs from `generation` after an interrupted apply).
    pub kernel_generation: u32,
    pub interfaces: Vec<IfaceStatus>,
    pub rules: usize,
    #[serde(serialize_with = "ser_ct")]
    pub conntrack: CtStats,
    pub ct_capacity: u32,
    pub ct_new_capacity: u32,
    pub pins: String,
    pub state: String,
    /// Inconsistencies found (interrupted apply, pins removed, device deleted).
    pub warnings: Vec<String>,
}

pub fn ser_ct<S: serde::Serializer>(c: &CtStats, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(5))?;
    m.serialize_entry("confirmed", &c.ct_count)?;
    m.serialize_entry("unconfirmed", &c.new_count)?;
    m.serialize_entry("confirmed_available", &c.ct_available)?;
    m.serialize_entry("unconfirmed_available", &c.new_available)?;
    m.serialize_entry("exceeded", &c.exceeded)?;
    m.end()
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleCount {
    pub id: String,
    #[serde(flatten)]
    pub meta: RuleSummary,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Counters {
    pub rules: Vec<RuleCount>,
    #[serde(serialize_with = "ser_reasons")]
    pub reasons: Vec<(Reason, u64)>,
    #[serde(serialize_with = "ser_ct")]
    pub conntrack: CtStats,
}

fn ser_reasons<S: serde::Serializer>(r: &[(Reason, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(r.len()))?;
    for (k, v) in r {
        m.serialize_entry(k.name(), v)?;
    }
    m.end()
}

/// `explain`'s question.
pub struct ExplainQuery {
    pub inbound: bool,
    pub proto: String,
    pub peer: IpAddr,
    pub port: Option<u16>,
    pub icmp: Option<String>,
    pub iface: Option<String>,
    pub local: Option<IpAddr>,
}

impl ExplainQuery {
    fn packet(&self, src: IpAddr, dst: IpAddr) -> Result<Packet> {
        let bad = |m: String| -> anyhow::Error { Error::InvalidInput(m).into() };
        let v6 = self.peer.is_ipv6();
        let icmp = |s: &str| -> Result<(u8, u8)> {
            let (t, c) = s.split_once('/').unwrap_or((s, "0"));
            Ok((
                t.parse()
                    .map_err(|_| bad(format!("--icmp {s}: TYPE/CODE, e.g. 8/0")))?,
                c.parse()
                    .map_err(|_| bad(format!("--icmp {s}: TYPE/CODE, e.g. 8/0")))?,
            ))
        };
        let p = match self.proto.to_ascii_lowercase().as_str() {
            "tcp" | "6" | "udp" | "17" => {
                let port = self
                    .port
                    .ok_or_else(|| bad("--port N is needed for tcp and udp".into()))?;
                let (sport, dport) = (40000, port);
                if matches!(self.proto.as_str(), "tcp" | "6") {
                    Packet::syn(src, dst, sport, dport)
                } else {
                    Packet::udp(src, dst, sport, dport)
                }
            }
            "icmp" | "1" | "icmpv6" | "58" => {
                let (t, c) =
                    icmp(
                        self.icmp
                            .as_deref()
                            .unwrap_or(if v6 { "128/0" } else { "8/0" }),
                    )?;
                let echo = if v6 { 128 } else { 8 };
                if t == echo && c == 0 {
                    Packet::echo_request(src, dst, 4242, 1)
                } else {
                    Packet::icmp(src, dst, t, c)
                }
            }
            other => {
                let n: u8 = other.parse().map_err(|_| {
                    bad(format!(
                        "--proto {other}: use tcp, udp, icmp, icmpv6 or a number 0-255"
                    ))
                })?;
                Packet::other(src, dst, n)
            }
        };
        Ok(p)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    pub device: String,
    pub interface: String,
    pub direction: String,
    pub packet: String,
    pub model_pass: bool,
    pub model_reason: String,
    pub model_rule: Option<String>,
    pub kernel_pass: bool,
    pub kernel_reason: String,
    pub kernel_rule: Option<String>,
    pub kernel_hook: String,
    pub agree: bool,
    /// Every rule that allows the packet, the charged one first (E4).
    pub allowing: Vec<String>,
    /// The interface's rules of this direction and protocol (for "why not").
    pub candidates: Vec<String>,
    pub groups: Vec<String>,
    pub live_flows: Vec<String>,
}

pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

fn describe_packet(p: &Packet) -> String {
    match &p.l4 {
        L4::Tcp { sport, dport, .. } => format!("tcp {}:{sport} -> {}:{dport}", p.src, p.dst),
        L4::Udp { sport, dport } => format!("udp {}:{sport} -> {}:{dport}", p.src, p.dst),
        _ => match p.icmp_type_code() {
            Some((t, c)) => format!(
                "{} type {t} code {c} {} -> {}",
                proto_name(p.proto()),
                p.src,
                p.dst
            ),
            None => format!("{} {} -> {}", proto_name(p.proto()), p.src, p.dst),
        },
    }
}

/// One line for a rule: "tcp 443 from 0.0.0.0/0 (Public HTTPS)".
pub fn rule_line(r: &Rule) -> String {
    let ports = |pr: &PortRange| {
        if pr.from == pr.to {
            pr.from.to_string()
        } else {
            format!("{}-{}", pr.from, pr.to)
        }
    };
    let icmp = |m: &IcmpMatch| match m {
        IcmpMatch::All => "all".to_string(),
        IcmpMatch::Type(t) => format!("type {t}"),
        IcmpMatch::TypeCode(t, c) => format!("type {t} code {c}"),
    };
    let proto = match &r.protocol {
        Protocol::All => "all traffic".to_string(),
        Protocol::Tcp(p) => format!("tcp {}", ports(p)),
        Protocol::Udp(p) => format!("udp {}", ports(p)),
        Protocol::Icmp(m) => format!("icmp {}", icmp(m)),
        Protocol::Icmpv6(m) => format!("icmpv6 {}", icmp(m)),
        Protocol::Number(n) => format!("protocol {n}"),
    };
    let peer = match &r.peer {
        Peer::Cidr(c) => c.to_string(),
        Peer::PrefixList(p) => p.0.clone(),
        Peer::Group(g) if *g == r.group => format!("{g} (self)"),
        Peer::Group(g) => g.0.clone(),
    };
    let way = if r.direction == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    match &r.description {
        Some(d) => format!("{proto} {way} {peer} \"{d}\""),
        None => format!("{proto} {way} {peer}"),
    }
}

/// What an applied policy amounts to on this host.
pub fn summarize(policy: &Policy, bindings: &[Binding]) -> Applied {
    let mut a = Applied::default();
    for g in policy.groups.values() {
        a.groups.insert(g.id.0.clone(), g.name.clone());
        for r in g.ingress.iter().chain(g.egress.iter()) {
            a.rules.insert(r.id.0.clone(), rule_summary(g, r));
        }
        let mut members: Vec<String> = policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(&g.id))
            .flat_map(|i| i.addresses.iter().map(|x| x.to_string()))
            .collect();
        members.sort();
        members.dedup();
        a.members.insert(g.id.0.clone(), members);
    }
    for b in bindings {
        let groups = policy
            .interface(&b.interface)
            .map(|i| i.groups.iter().map(|g| g.0.clone()).collect())
            .unwrap_or_default();
        a.interfaces.insert(
            b.device.clone(),
            InterfaceSummary {
                interface: b.interface.clone(),
                ifindex: b.ifindex,
                groups,
            },
        );
    }
    a
}

fn rule_summary(g: &Group, r: &Rule) -> RuleSummary {
    RuleSummary {
        group: g.id.0.clone(),
        direction: r.direction.name().into(),
        text: rule_line(&Rule {
            description: None,
            ..r.clone()
        }),
        description: r.description.clone(),
    }
}

pub fn diff(old: &Applied, new: &Applied) -> Diff {
    let mut d = Diff::default();
    for g in new.groups.keys() {
        if !old.groups.contains_key(g) {
            d.groups_added.push(g.clone());
        }
    }
    for g in old.groups.keys() {
        if !new.groups.contains_key(g) {
            d.groups_removed.push(g.clone());
        }
    }
    for (id, r) in &new.rules {
        if old.rules.get(id) != Some(r) {
            d.rules_added.push((id.clone(), r.clone()));
        }
    }
    for (id, r) in &old.rules {
        if new.rules.get(id) != Some(r) {
            d.rules_removed.push((id.clone(), r.clone()));
        }
    }
    for (g, m) in &new.members {
        let before: BTreeSet<&String> = old
            .members
            .get(g)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let after: BTreeSet<&String> = m.iter().collect();
        let added: Vec<String> = after.difference(&before).map(|s| (*s).clone()).collect();
        let removed: Vec<String> = before.difference(&after).map(|s| (*s).clone()).collect();
        if !added.is_empty() || !removed.is_empty() {
            d.members.insert(g.clone(), (added, removed));
        }
    }
    for (dev, i) in &new.interfaces {
        match old.interfaces.get(dev) {
            None => d.interfaces_added.push((dev.clone(), i.clone())),
            Some(o) if o != i => d.interfaces_changed.push((dev.clone(), i.clone())),
            _ => {}
        }
    }
    for (dev, i) in &old.interfaces {
        if !new.interfaces.contains_key(dev) {
            d.interfaces_removed.push((dev.clone(), i.clone()));
        }
    }
    d
}
