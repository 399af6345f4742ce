//! The apply transaction: validate -> bind -> compile -> attach -> save slots -> swap ->
//! release -> record. On error the enforced policy is the one before (docs/agent.md
//! "Failure behaviour").
//!
//! Owns the ordering that keeps enforcement safe: new devices are attached before the flip
//! (their packets are dropped as "no policy" for the few milliseconds until it), a failed step
//! undoes what this apply attached, the counter slots are saved before the flip (so a process
//! killed on either side of it leaves a state that names the live slots), devices no longer
//! in the policy are released only after the flip, and the state file is completed last. A
//! long-lived agent (the daemon) re-reads the state and SG_ACTIVE under the lock before each
//! apply, so another agent's apply never leaves it writing into the live generation.
//! A reload that only changes memberships is written in place instead (no compile of the
//! whole policy, no attach, no flip), and a dry run touches nothing at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sg_common::ABI_VERSION;

use super::confirm;
use super::preflight::{self, SshConnection, Verdict};
use super::summary::{Diff, diff, summarize};
use super::{Agent, PolicySource};
use crate::bind::{self, Binding};
use crate::compile::{self, CompileOptions, Delta, Router, RouterPort};
use crate::config::Loaded;
use crate::dataplane::{self, ApplyReport, AttachReport, HookPlan, IngressHook, XdpMode};
use crate::error::Error;
use crate::image::MapImage;
use crate::policy::Policy;
use crate::state::{AgentState, Applied};

/// How `apply` attaches devices (a device attached before keeps its hook unless the plan
/// forces one on it by name), and the safety of the change (L1, L2).
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub ingress: HookPlan,
    /// The administrator's SSH session (`SSH_CONNECTION`): the pre-flight (L2) checks that a
    /// new connection from its client would still get in.
    pub admin: Option<SshConnection>,
    /// Apply even when the pre-flight finds the administrator locked out.
    pub force: bool,
    /// `--confirm DURATION` (L1): revert unless confirmed within it.
    pub confirm: Option<Duration>,
    /// With `confirm`: a change of memberships alone (instances elsewhere joining, leaving,
    /// readdressed) opens no window. A daemon's `--confirm-changes` sets it; `apply
    /// --confirm` does not (what the administrator applies, they confirm).
    pub confirm_policy_only: bool,
}

impl ApplyOptions {
    /// A plain apply: no SSH session to protect, no confirmation deadline.
    pub fn new(ingress: HookPlan) -> ApplyOptions {
        ApplyOptions {
            ingress,
            ..ApplyOptions::default()
        }
    }
}

/// Reads an ingress hook's name as the state records it (`xdp`, `xdp-skb`, `tc`).
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

/// The hook's name in the state (an XDP device is re-attached natively, falling back again).
pub(super) fn hook_name(h: IngressHook) -> &'static str {
    match h {
        IngressHook::Xdp(_) => "xdp",
        IngressHook::Tc => "tc",
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
    /// Written into the live generation (a membership change): no flip, nothing attached or
    /// detached.
    pub in_place: bool,
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

/// The live generation as this agent wrote it.
pub(super) struct Live {
    policy: Policy,
    bindings: BTreeMap<String, u32>,
    router: Router,
    image: MapImage,
    index: compile::Index,
}

/// The desired policy, validated and bound to this host's devices.
pub(super) struct Bound {
    loaded: Loaded,
    bindings: Vec<Binding>,
    /// Policy interface name -> ifindex, what the compiler takes.
    by_name: BTreeMap<String, u32>,
    /// The devices facing subnets (a router's), enforcing their NACLs (A13).
    ports: Vec<bind::RouterPort>,
    /// What the compiler takes of them, with this host's own addresses (A21).
    router: Router,
    /// What it amounts to on this host (for the diff and the state).
    pub(super) applied: Applied,
}

impl Bound {
    /// Every device the policy is enforced on: the instance interfaces' and the router
    /// ports (attached, rolled back and released alike).
    fn devices(&self) -> Vec<Binding> {
        let ports = self.ports.iter().map(|p| Binding {
            interface: p.subnet.0.clone(),
            device: p.device.clone(),
            ifindex: p.ifindex,
        });
        self.bindings.iter().cloned().chain(ports).collect()
    }
}

/// The next generation, compiled.
struct Compiled {
    image: MapImage,
    index: compile::Index,
    compile_ms: f64,
    entries: usize,
}

/// What step 1 (attach) did.
struct Attached {
    /// Devices that had live pinned programs before this apply (only the others are undone).
    before: BTreeSet<u32>,
    attached: Vec<String>,
    notes: Vec<String>,
    /// Device -> hook name and why, for the state.
    hooks: Hooks,
}

/// The ingress hook of each attached device as the state records it, and why it was chosen
/// (auto's reason, or the `--ingress-hook DEV=HOOK` that forced it).
#[derive(Default)]
struct Hooks {
    names: BTreeMap<String, String>,
    reasons: BTreeMap<String, String>,
}

/// The ingress hook of one device and why: the one forced on it by name, else the one it was
/// attached with before (kept, with its recorded reason), else the plan's default (`auto`
/// reads its driver).
fn hook_of(
    st: &AgentState,
    plan: &HookPlan,
    b: &Binding,
    attached_before: bool,
) -> (IngressHook, Option<String>) {
    if attached_before
        && plan.forced(&b.device).is_none()
        && let Some(h) = st.hooks.get(&b.device).and_then(|h| parse_hook(h).ok())
    {
        return (h, st.hook_reasons.get(&b.device).cloned());
    }
    plan.choose(&b.device, || dataplane::driver_info(&b.device))
}

/// Undoes the attachments this apply made, when a later step fails.
struct Rollback<'a> {
    links: &'a Path,
    bindings: &'a [Binding],
    before: &'a BTreeSet<u32>,
}

impl Rollback<'_> {
    fn new_attachments(&self) {
        for b in self.bindings {
            if !self.before.contains(&b.ifindex) {
                let _ = dataplane::unpin_iface(self.links, b.ifindex);
            }
        }
    }
}

impl Agent {
    /// Validate -> bind -> pre-flight -> compile -> attach -> swap -> save. On error the
    /// enforced policy is the one before (see docs/agent.md "Failure behaviour"). While a
    /// `--confirm` apply waits for its confirmation every other apply is refused
    /// ([`Error::Pending`]: a daemon holds its reload until the window closes), except a
    /// change of memberships alone: it lands in both generations (the live one, and the
    /// policy a revert goes back to), so a revert keeps it.
    pub fn apply(&mut self, src: &dyn PolicySource, opts: ApplyOptions) -> Result<ApplyOutcome> {
        let t0 = Instant::now();
        let bound = bind_to_host(src)?;
        let preflight = preflight_notes(&bound, &opts)?;
        if opts.dry_run {
            let mut out = self.dry_run(src, &bound, t0)?;
            out.notes.extend(preflight);
            return Ok(out);
        }
        let was_applied = self.is_applied();
        let _lock = self.sd.lock()?;
        self.refresh()?;
        if self.stop_if_detached && was_applied && !self.is_applied() {
            return Err(Error::DetachedUnderUs.into());
        }
        let diff = diff(&self.state.applied, &bound.applied);
        let window = match confirm::read_marker(&self.sd)? {
            Some(p) => Some(self.window_memberships(&p, &bound.loaded.policy, &diff)?),
            None => None,
        };
        let previous = match opts.confirm {
            Some(_) if window.is_none() => Some(self.previous_for_confirm()?),
            _ => None,
        };
        let previous = match previous {
            Some(_) if opts.confirm_policy_only => {
                let quiet = self.only_memberships(&bound.loaded.policy, &diff);
                previous.filter(|_| !quiet)
            }
            p => p,
        };
        let text = src.text()?;
        let mut out = match self.apply_membership(src, &bound, &text, &diff, t0)? {
            Some(done) => done,
            None => self.apply_whole(src, bound, &opts.ingress, diff, &text, t0)?,
        };
        out.notes.extend(preflight);
        if let Some(p) = window {
            self.update_pending(&p)?;
            out.notes.push(format!(
                "memberships changed while {} waits for confirmation: a revert keeps them",
                p.source
            ));
        }
        if let (Some(within), Some(previous)) = (opts.confirm, previous) {
            let ssh = opts.admin.map(|c| c.to_string());
            let p = self.set_pending(src.describe(), within, previous, &opts.ingress, ssh)?;
            out.notes.push(format!(
                "waiting for `sg-agent confirm`: {}; without it {} comes back",
                p.describe_deadline(),
                p.previous.source
            ));
        }
        Ok(out)
    }

    /// Read-only: what is recorded now, the real sizes of pinned maps; nothing is created,
    /// loaded or locked. The compile runs, so a policy too big for the maps is refused.
    fn dry_run(&self, src: &dyn PolicySource, bound: &Bound, t0: Instant) -> Result<ApplyOutcome> {
        let current = self.sd.load()?.unwrap_or_default();
        let caps = dataplane::pinned_capacities(&self.maps_dir(), self.capacities)?;
        let diff = diff(&current.applied, &bound.applied);
        let tc = Instant::now();
        compile::compile_router(
            &bound.loaded.policy,
            &bound.by_name,
            &current.slot_table(),
            &CompileOptions {
                generation: 1 - current.generation.min(1),
                slot_capacity: caps.rule_slots,
            },
            &bound.router,
        )
        .map_err(Error::from)?;
        let compile_ms = ms(tc.elapsed());
        Ok(ApplyOutcome {
            source: src.describe(),
            dry_run: true,
            diff,
            generation: current.generation,
            entries: 0,
            attached: Vec::new(),
            detached: Vec::new(),
            notes: Vec::new(),
            in_place: false,
            to_effect_ms: 0.0,
            swap_ms: 0.0,
            compile_ms,
            total_ms: ms(t0.elapsed()),
        })
    }

    /// The whole transaction, under the lock: compile, 1. attach, 2. save the slots,
    /// 3. swap, 4. release, 5. record.
    pub(super) fn apply_whole(
        &mut self,
        src: &dyn PolicySource,
        bound: Bound,
        ingress: &HookPlan,
        diff: Diff,
        text: &str,
        t0: Instant,
    ) -> Result<ApplyOutcome> {
        let links = self.links_dir();
        let had_state = self.sd.state_file().exists();
        let cookie = crate::state::netns_cookie().unwrap_or(0);
        let compiled = self.compile_next(&bound)?;
        test_stop_point("compiled");

        let devices = bound.devices();
        let att = self.attach_all(&links, &devices, ingress)?;
        test_stop_point("attached");
        let rollback = Rollback {
            links: &links,
            bindings: &devices,
            before: &att.before,
        };

        let pre = self.save_slots(&compiled.image, cookie, &rollback)?;
        let t_swap = Instant::now();
        let report = self.swap(&compiled.image, had_state, &rollback)?;
        let to_effect_ms = ms(t_swap.duration_since(t0)) + ms(report.to_flip);
        test_stop_point("swapped");

        let detached = self.release_unbound(&links, &devices)?;
        self.record(src, pre, &report, &compiled.image, &bound, att.hooks, text)?;
        self.live = Some(Live {
            policy: bound.loaded.policy,
            bindings: bound.by_name,
            router: bound.router,
            image: compiled.image,
            index: compiled.index,
        });
        Ok(ApplyOutcome {
            source: src.describe(),
            dry_run: false,
            diff,
            generation: report.generation,
            entries: compiled.entries,
            attached: att.attached,
            detached,
            notes: att.notes.into_iter().chain(audit_note(&report)).collect(),
            in_place: false,
            to_effect_ms,
            swap_ms: ms(report.to_flip),
            compile_ms: compiled.compile_ms,
            total_ms: ms(t0.elapsed()),
        })
    }

    /// Loads the dataplane (adopting the pins) and compiles the generation that is not live,
    /// keeping the counter slots of rules that stay.
    fn compile_next(&mut self, bound: &Bound) -> Result<Compiled> {
        let prev_slots = self.state.slot_table();
        let audit = self.state.audit_devices.clone();
        let dp = self.dataplane()?;
        let tc = Instant::now();
        let (image, index) = compile_image(bound, &prev_slots, dp.next_generation(), dp, &audit)?;
        let compile_ms = ms(tc.elapsed());
        let entries = image.ifaces.len() + image.peers.len() + image.ports.len();
        Ok(Compiled {
            image,
            index,
            compile_ms,
            entries,
        })
    }

    /// 1. Attach (or re-attach with this binary's programs) every bound device. New ones
    ///    judge with "no policy" until the flip: fail closed, for milliseconds. A device
    ///    attached before keeps its hook unless `--ingress-hook DEV=HOOK` names it; a failure
    ///    undoes this apply's new attachments.
    fn attach_all(
        &mut self,
        links: &Path,
        bindings: &[Binding],
        plan: &HookPlan,
    ) -> Result<Attached> {
        let mut out = Attached {
            before: live_pinned(links),
            attached: Vec::new(),
            notes: Vec::new(),
            hooks: Hooks::default(),
        };
        let dp = self.dp.as_mut().expect("loaded by compile_next");
        for b in bindings {
            let before = out.before.contains(&b.ifindex);
            let (hook, why) = hook_of(&self.state, plan, b, before);
            match dp.attach_pinned(&b.device, hook, links) {
                Ok(mut r) => {
                    out.notes.extend(r.notes.iter().cloned());
                    if let Some(why) = &why {
                        r.ingress = format!("{} ({why})", r.ingress);
                        out.hooks.reasons.insert(b.device.clone(), why.clone());
                    }
                    if !before {
                        out.attached.push(describe_attach(&b.device, &r));
                    } else if self.state.hooks.get(&b.device).map(String::as_str)
                        != Some(hook_name(hook))
                    {
                        // Forced by name onto a device attached with another hook.
                        out.notes
                            .push(format!("{}: ingress hook now {}", b.device, r.ingress));
                    }
                    out.hooks
                        .names
                        .insert(b.device.clone(), hook_name(hook).to_string());
                }
                Err(e) => {
                    let rollback = Rollback {
                        links,
                        bindings,
                        before: &out.before,
                    };
                    rollback.new_attachments();
                    return Err(e.context(format!("attaching to {}", b.device)));
                }
            }
        }
        Ok(out)
    }

    /// 2. Remember the new counter slots before the flip, beside the old ones: whichever
    ///    generation is live when this process dies, the state names its slots.
    fn save_slots(&self, image: &MapImage, cookie: u64, rollback: &Rollback) -> Result<AgentState> {
        let mut pre = self.state.clone();
        pre.abi = ABI_VERSION;
        pre.netns_cookie = cookie;
        for (rule, slot) in &image.slots.by_rule {
            pre.slots.insert(rule.0.clone(), *slot);
        }
        pre.slot_cursor = image.slots.cursor;
        if let Err(e) = self.sd.save(&pre) {
            rollback.new_attachments();
            return Err(e.context("saving the state before the swap (nothing was swapped)"));
        }
        Ok(pre)
    }

    /// 3. The atomic swap. On failure the new attachments are undone and the state file is
    ///    put back as it was (or removed, when there was none).
    fn swap(
        &mut self,
        image: &MapImage,
        had_state: bool,
        rollback: &Rollback,
    ) -> Result<ApplyReport> {
        let dp = self.dp.as_mut().expect("loaded by compile_next");
        match dp.apply(image) {
            Ok(r) => Ok(r),
            Err(e) => {
                rollback.new_attachments();
                let restored = if had_state {
                    self.sd.save(&self.state)
                } else {
                    std::fs::remove_file(self.sd.state_file()).map_err(Into::into)
                };
                if let Err(e2) = restored {
                    log::warn!("restoring the state file after a failed swap: {e2:#}");
                }
                Err(e.context("swapping the policy in (the previous one stays)"))
            }
        }
    }

    /// 4. Release devices the policy no longer covers, and pins whose device is gone.
    fn release_unbound(&self, links: &Path, bindings: &[Binding]) -> Result<Vec<String>> {
        let bound: BTreeSet<u32> = bindings.iter().map(|b| b.ifindex).collect();
        let mut detached = Vec::new();
        for p in dataplane::pinned_ifaces(links) {
            if bound.contains(&p.ifindex) {
                continue;
            }
            dataplane::unpin_iface(links, p.ifindex)?;
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
        Ok(detached)
    }

    /// 5. Remember: the applied policy's text and name beside the state, then the state.
    #[expect(
        clippy::too_many_arguments,
        reason = "the last step of the transaction takes what the earlier ones produced"
    )]
    fn record(
        &mut self,
        src: &dyn PolicySource,
        pre: AgentState,
        report: &ApplyReport,
        image: &MapImage,
        bound: &Bound,
        hooks: Hooks,
        text: &str,
    ) -> Result<()> {
        let mut st = pre;
        st.generation = report.generation;
        st.set_slots(&image.slots);
        st.source = src.describe();
        st.applied_at = unix_now();
        st.applied = bound.applied.clone();
        st.hooks = hooks.names;
        st.hook_reasons = hooks.reasons;
        self.write_applied_text(text, &src.inputs())?;
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
        Ok(())
    }

    /// The text, and the inputs a template was evaluated with: together they give back the
    /// policy applied (explain judges with it). The text is written whole or not at all: in
    /// fleet mode it is the local copy a restarted daemon enforces.
    fn write_applied_text(&self, text: &str, inputs: &crate::config::TemplateInputs) -> Result<()> {
        crate::state::replace_private(&self.sd.applied_policy_file(), text.as_bytes())
            .context("saving the applied policy text")?;
        crate::state::write_private(
            &self.sd.run.join("policy.applied.inputs"),
            serde_json::to_string(inputs)?.as_bytes(),
        )
        .context("saving the applied policy's template inputs")
    }

    /// A reload that only changes memberships (instances joining or leaving groups, their
    /// addresses), on the interfaces this agent bound and attached last time: the delta of
    /// the live image, written in place (`Dataplane::apply_delta`), no compile of the whole
    /// policy, no attach, no flip. None when that does not apply: the caller applies whole.
    fn apply_membership(
        &mut self,
        src: &dyn PolicySource,
        bound: &Bound,
        text: &str,
        diff: &Diff,
        t0: Instant,
    ) -> Result<Option<ApplyOutcome>> {
        if !self.delta_applies(&bound.by_name, &bound.router) {
            return Ok(None);
        }
        let tc = Instant::now();
        let Some(delta) = self.membership_delta(bound) else {
            return Ok(None);
        };
        let compile_ms = ms(tc.elapsed());
        let (Some(live), Some(dp)) = (self.live.as_mut(), self.dp.as_mut()) else {
            unreachable!("checked by delta_applies");
        };
        let report = dp
            .apply_delta(&delta)
            .context("changing memberships in place (the previous policy stays)")?;
        let to_effect_ms = ms(t0.elapsed());
        delta.patch(&mut live.image);
        live.policy = bound.loaded.policy.clone();
        live.index.absorb(delta);
        let mut st = self.state.clone();
        st.source = src.describe();
        st.applied_at = unix_now();
        st.applied = bound.applied.clone();
        self.write_applied_text(text, &src.inputs())?;
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
            in_place: true,
            to_effect_ms,
            swap_ms: ms(report.to_flip),
            compile_ms,
            total_ms: ms(t0.elapsed()),
        }))
    }

    /// The delta path needs the live image this agent wrote, still active in the kernel,
    /// over the same bindings, every one of them still attached.
    fn delta_applies(&self, by_name: &BTreeMap<String, u32>, router: &Router) -> bool {
        let (Some(live), Some(dp)) = (self.live.as_ref(), self.dp.as_ref()) else {
            return false;
        };
        if live.bindings != *by_name
            || live.router != *router
            || dp.active_generation() != live.image.generation
        {
            return false;
        }
        let pinned = live_pinned(&self.links_dir());
        by_name.values().all(|i| pinned.contains(i))
    }

    /// The membership delta from the live policy to `bound`'s, or None when something else
    /// changed too (or the delta cannot be computed: then the apply is whole).
    fn membership_delta(&self, bound: &Bound) -> Option<Delta> {
        let live = self.live.as_ref()?;
        match compile::membership_delta(
            &live.policy,
            &bound.loaded.policy,
            &bound.by_name,
            &live.image,
            &live.index,
        ) {
            Ok(d) => d,
            Err(e) => {
                log::debug!("membership delta: {e}; applying whole");
                None
            }
        }
    }
}

/// What the swap ended of audit mode (L3), when it ended flows.
fn audit_note(report: &ApplyReport) -> Option<String> {
    (report.audit_flows_ended > 0).then(|| {
        format!(
            "audit mode ended on interfaces of this policy: {} flows it admitted ended (L3)",
            report.audit_flows_ended
        )
    })
}

/// The image of a bound policy for `generation` of `dp`'s maps, keeping the counter slots of
/// `slots`; the devices of `audit_devices` (`sg-agent audit on DEV`) in audit mode (L3) as the
/// policy's `audit: true` interfaces are.
pub(super) fn compile_image(
    bound: &Bound,
    slots: &crate::image::SlotTable,
    generation: u32,
    dp: &dataplane::Dataplane,
    audit_devices: &BTreeSet<String>,
) -> Result<(MapImage, compile::Index)> {
    let (mut image, index) = compile::compile_router(
        &bound.loaded.policy,
        &bound.by_name,
        slots,
        &CompileOptions {
            generation,
            slot_capacity: dp.capacities().rule_slots,
        },
        &bound.router,
    )
    .map_err(Error::from)?;
    // Drop events (flow log REJECT lines) are wanted on every interface; whether any are
    // produced is one global switch (SG_CONFIG.events_per_sec), on while a daemon with a
    // flow log runs. So a CLI apply beside such a daemon does not silence it.
    for conf in image.ifaces.values_mut() {
        conf.flags |= sg_common::iface_flags::LOG_DROPS;
    }
    let audited: BTreeSet<u32> = bound
        .devices()
        .iter()
        .filter(|b| audit_devices.contains(&b.device))
        .map(|b| b.ifindex)
        .collect();
    for (_, conf) in image
        .ifaces
        .iter_mut()
        .filter(|(k, _)| audited.contains(&k.ifindex))
    {
        conf.flags |= sg_common::iface_flags::AUDIT;
    }
    Ok((image, index))
}

/// Validates the policy and binds it to this namespace's devices. A policy none of whose
/// interfaces is here is [`Error::NotOnThisHost`] (a daemon waits for it).
pub(super) fn bind_to_host(src: &dyn PolicySource) -> Result<Bound> {
    let loaded = src.load()?;
    let local = bind::local_interfaces().context("reading this namespace's interfaces")?;
    let bindings = bind::bind(&loaded.policy, &local).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: cannot bind the policy to this host:\n{e}",
            src.describe()
        ))
    })?;
    let ports = bind::router_ports(&loaded.policy, &local, &bindings).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: cannot bind the policy's subnets to this router:\n{e}",
            src.describe()
        ))
    })?;
    if bindings.is_empty() && ports.is_empty() {
        let here: Vec<String> = local
            .iter()
            .filter(|l| l.name != "lo")
            .map(|l| format!("{} {:?}", l.name, l.addresses))
            .collect();
        let hint = if loaded.format == crate::config::Format::CloudFormation {
            let mut ids: Vec<&str> = loaded
                .policy
                .interfaces
                .iter()
                .map(|i| i.instance.as_str())
                .collect();
            ids.dedup();
            format!(
                "a template carries no addresses: `--as ID` (this host is that instance) or \
                 `--bind ID=DEVICE`, or the tag `sg:device`; its instances: {}",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            )
        } else {
            "give the instance's addresses in the policy, or name the device with `device:`"
                .to_string()
        };
        return Err(Error::NotOnThisHost(format!(
            "{}: no interface of the policy is on this host (local devices: {}); hint: {hint}",
            src.describe(),
            if here.is_empty() {
                "none".into()
            } else {
                here.join(", ")
            }
        ))
        .into());
    }
    let router = router_of(&ports, &local);
    let mut applied = summarize(&loaded.policy, &bindings, &ports);
    applied.router_addrs = router.addrs.clone();
    let by_name = bindings
        .iter()
        .map(|b| (b.interface.clone(), b.ifindex))
        .collect();
    Ok(Bound {
        loaded,
        bindings,
        by_name,
        ports,
        router,
        applied,
    })
}

/// What the compiler takes of the router ports: their subnets and ifindexes, and every
/// address of this host (A21: traffic to or from the router itself is not a NACL's).
/// Empty on a host that routes nothing.
fn router_of(ports: &[bind::RouterPort], local: &[bind::LocalIface]) -> Router {
    if ports.is_empty() {
        return Router::default();
    }
    let mut addrs: Vec<std::net::IpAddr> = local
        .iter()
        .flat_map(|l| l.addresses.iter().copied())
        .collect();
    addrs.sort();
    addrs.dedup();
    Router {
        ports: ports
            .iter()
            .map(|p| RouterPort {
                subnet: p.subnet.clone(),
                ifindex: p.ifindex,
            })
            .collect(),
        addrs,
    }
}

/// The SSH pre-flight (L2) of an apply from an SSH session: a lock-out is an error unless
/// forced (then a note); otherwise a note says what was checked.
fn preflight_notes(bound: &Bound, opts: &ApplyOptions) -> Result<Vec<String>> {
    let Some(ssh) = opts.admin else {
        return Ok(Vec::new());
    };
    let local = bind::local_interfaces().context("reading this namespace's interfaces")?;
    match preflight::check(&bound.loaded.policy, &bound.bindings, &local, &ssh) {
        Verdict::LockedOut(why) if !opts.force => Err(Error::WouldLockOut(format!(
            "pre-flight (SSH_CONNECTION {ssh}): {why}. Refusing to lock you out; hint: add \
             the rule, or apply with --force (with --confirm DURATION to come back \
             automatically)"
        ))
        .into()),
        Verdict::LockedOut(why) => Ok(vec![format!("pre-flight: {why} (applied anyway: --force)")]),
        Verdict::Allowed(what) | Verdict::NotCovered(what) => {
            Ok(vec![format!("pre-flight: {what}")])
        }
    }
}

/// The ifindexes with live pinned sg programs.
fn live_pinned(links: &Path) -> BTreeSet<u32> {
    dataplane::pinned_ifaces(links)
        .iter()
        .filter(|p| p.live)
        .map(|p| p.ifindex)
        .collect()
}

fn describe_attach(dev: &str, r: &AttachReport) -> String {
    format!("{dev}: ingress {}, egress {}", r.ingress, r.egress)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
