//! The agent: one namespace's enforcement over time. Ties the layers together in order —
//! validated policy -> binding to local devices -> compile -> attach (pinned links) ->
//! atomic swap -> state file — and answers questions about what is enforced (status,
//! counters, conntrack, explain).
//!
//! Owns the ordering that keeps enforcement safe: new devices are attached before the flip
//! (their packets are dropped as "no policy" for the few milliseconds until it), a failed step
//! undoes what this apply attached, devices no longer in the policy are released only after
//! the flip, and the state file is written last. It prints nothing: the CLI does.
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
use crate::cli::InvalidInput;
use crate::compile::{self, CompileOptions};
use crate::config::{self, Loaded};
use crate::dataplane::{
    self, ApplyReport, AttachReport, Capacities, CtEntry, CtStats, Dataplane, Hook, IngressHook,
    LoadOptions, XdpMode,
};
use crate::model::{Model, decide};
use crate::packet::{L4, Packet};
use crate::policy::{Direction, Group, IcmpMatch, Peer, Policy, PortRange, Protocol, Rule};
use crate::state::{AgentState, Applied, InterfaceSummary, RuleSummary, StateDir};

/// Where the desired policy comes from. A file today; a distributed store tomorrow.
pub trait PolicySource {
    /// A human name for messages (a path, a store key).
    fn describe(&self) -> String;
    /// The current policy, validated. Invalid input is an [`InvalidInput`] error.
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
        config::load_file(&self.0).map_err(|d| InvalidInput(d.to_string()).into())
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
        other => Err(InvalidInput(format!(
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
    /// Start of apply to the generation flip (the moment packets see the new policy).
    pub to_effect_ms: f64,
    pub compile_ms: f64,
    pub total_ms: f64,
}

/// One namespace's agent: its state directory, remembered state and loaded dataplane.
pub struct Agent {
    pub sd: StateDir,
    pub state: AgentState,
    dp: Option<Dataplane>,
    pub capacities: Capacities,
}

impl Agent {
    /// Opens the namespace's state (without loading anything into the kernel yet).
    pub fn open(state_dir: Option<&Path>) -> Result<Agent> {
        let sd = StateDir::for_current_netns(state_dir)?;
        let state = sd.load()?.unwrap_or_default();
        if state.abi != 0 && state.abi != ABI_VERSION {
            bail!(
                "the state in {} was written by an agent speaking ABI {}, this one speaks ABI \
                 {ABI_VERSION}; enforcement is left as it is. hint: run `sg-agent detach` with \
                 the old binary, or remove {} and {} (conntrack state is lost)",
                sd.run.display(),
                state.abi,
                sd.pins.display(),
                sd.run.display()
            );
        }
        Ok(Agent {
            sd,
            state,
            dp: None,
            capacities: Capacities::default(),
        })
    }

    /// True when this namespace has an applied policy.
    pub fn is_applied(&self) -> bool {
        self.state.abi != 0
    }

    fn require_applied(&self) -> Result<()> {
        if !self.is_applied() {
            bail!(
                "nothing is applied in this network namespace (no state in {}); hint: \
                 sg-agent apply FILE",
                self.sd.run.display()
            );
        }
        Ok(())
    }

    /// The loaded dataplane, adopting pinned maps.
    pub fn dataplane(&mut self) -> Result<&mut Dataplane> {
        if self.dp.is_none() {
            self.sd.create()?;
            let dp = Dataplane::load(LoadOptions {
                capacities: self.capacities,
                pin_dir: Some(self.sd.pins.join("maps")),
                object: None,
            })?;
            self.dp = Some(dp);
        }
        Ok(self.dp.as_mut().expect("just loaded"))
    }

    fn links_dir(&self) -> PathBuf {
        self.sd.pins.join("links")
    }

    /// Validate -> bind -> compile -> attach -> swap -> save. On error nothing changed.
    pub fn apply(&mut self, src: &dyn PolicySource, opts: ApplyOptions) -> Result<ApplyOutcome> {
        let t0 = Instant::now();
        let loaded = src.load()?;
        let policy = &loaded.policy;
        let local = bind::local_interfaces().context("reading this namespace's interfaces")?;
        let bindings = bind::bind(policy, &local).map_err(|e| {
            InvalidInput(format!(
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
            return Err(InvalidInput(format!(
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
        let diff = diff(&self.state.applied, &new_applied);
        let by_name: BTreeMap<String, u32> = bindings
            .iter()
            .map(|b| (b.interface.clone(), b.ifindex))
            .collect();

        if opts.dry_run {
            let tc = Instant::now();
            compile::compile(
                policy,
                &by_name,
                &self.state.slot_table(),
                &CompileOptions {
                    generation: 1 - self.state.generation.min(1),
                    slot_capacity: self.capacities.rule_slots,
                },
            )
            .map_err(|e| anyhow!("compiling the policy: {e}"))?;
            let compile_ms = ms(tc.elapsed());
            return Ok(ApplyOutcome {
                source: src.describe(),
                dry_run: true,
                diff,
                generation: self.state.generation,
                entries: 0,
                attached: Vec::new(),
                detached: Vec::new(),
                notes: Vec::new(),
                to_effect_ms: 0.0,
                compile_ms,
                total_ms: ms(t0.elapsed()),
            });
        }

        let _lock = self.sd.lock()?;
        let text = src.text()?;
        let links = self.links_dir();
        let prev_slots = self.state.slot_table();
        let prev_hooks = self.state.hooks.clone();
        let dp = self.dataplane()?;
        let tc = Instant::now();
        let image = compile::compile(
            policy,
            &by_name,
            &prev_slots,
            &CompileOptions {
                generation: dp.next_generation(),
                slot_capacity: dp.capacities().rule_slots,
            },
        )
        .map_err(|e| anyhow!("compiling the policy: {e}"))?;
        let compile_ms = ms(tc.elapsed());
        let entries = image.ifaces.len() + image.peers.len() + image.ports.len();

        // 1. Attach (or re-attach with this binary's programs) every bound device. New ones
        //    judge with "no policy" until the flip: fail closed, for milliseconds.
        let before: BTreeSet<u32> = dataplane::pinned_ifaces(&links)
            .iter()
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
        // 2. The atomic swap.
        let report: ApplyReport = match dp.apply(&image) {
            Ok(r) => r,
            Err(e) => {
                undo_new_attachments(&links, &bindings, &before);
                return Err(e.context("swapping the policy in (the previous one stays)"));
            }
        };
        // 3. Release devices the policy no longer covers.
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
                    .unwrap_or_else(|| format!("ifindex {}", p.ifindex));
                detached.push(name);
            }
        }
        // 4. Remember.
        let mut st = self.state.clone();
        st.abi = ABI_VERSION;
        st.generation = report.generation;
        st.set_slots(&image.slots);
        st.source = src.describe();
        st.applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        st.applied = new_applied;
        st.hooks = hooks;
        std::fs::write(self.sd.run.join("policy.applied"), &text)
            .context("saving the applied policy text")?;
        std::fs::write(
            self.sd.run.join("policy.applied.name"),
            src.describe().rsplit('/').next().unwrap_or("policy"),
        )?;
        self.sd.save(&st)?;
        self.state = st;
        Ok(ApplyOutcome {
            source: src.describe(),
            dry_run: false,
            diff,
            generation: report.generation,
            entries,
            attached,
            detached,
            notes,
            to_effect_ms: ms(report.to_flip),
            compile_ms,
            total_ms: ms(t0.elapsed()),
        })
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

    pub fn status(&mut self) -> Result<Status> {
        self.require_applied()?;
        let links = self.links_dir();
        let pinned = dataplane::pinned_ifaces(&links);
        let dp = self.dataplane()?;
        let ct = dp.ct_stats()?;
        let caps = dp.capacities();
        let st = &self.state;
        let interfaces = st
            .applied
            .interfaces
            .iter()
            .map(|(dev, i)| {
                let p = pinned.iter().find(|p| p.ifindex == i.ifindex);
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
            interfaces,
            rules: st.applied.rules.len(),
            conntrack: ct,
            ct_capacity: caps.ct,
            ct_new_capacity: caps.ct_new,
            pins: self.sd.pins.display().to_string(),
        })
    }

    /// Per-rule counters (every applied rule, zero traffic included) and reason counters.
    pub fn counters(&mut self) -> Result<Counters> {
        self.require_applied()?;
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
        self.dataplane()?.conntrack()
    }

    pub fn flush_conntrack(&mut self) -> Result<usize> {
        self.require_applied()?;
        self.dataplane()?.flush_conntrack()
    }

    /// Deletes expired conntrack entries (the datapath deletes those it meets).
    pub fn sweep_conntrack(&mut self) -> Result<usize> {
        self.dataplane()?.sweep_conntrack()
    }

    /// Removes links, maps, pins and state: enforcement stops.
    pub fn detach(self) -> Result<Vec<String>> {
        let _lock = self.sd.lock()?;
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
        let _ = std::fs::remove_file(self.sd.run.join("policy.applied"));
        let _ = std::fs::remove_file(self.sd.run.join("policy.applied.name"));
        self.sd.remove()?;
        Ok(gone)
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
                    InvalidInput(format!(
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
                            e.key.lport,
                            e.remote,
                            e.key.rport,
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
                    InvalidInput(format!(
                        "--iface {w}: not an enforced interface (enforced: {})",
                        ifs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                    .into()
                }),
            None if ifs.len() == 1 => {
                let (d, i) = ifs.iter().next().expect("one");
                Ok((d.clone(), i.clone()))
            }
            None => Err(InvalidInput(format!(
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
    pub interfaces: Vec<IfaceStatus>,
    pub rules: usize,
    #[serde(serialize_with = "ser_ct")]
    pub conntrack: CtStats,
    pub ct_capacity: u32,
    pub ct_new_capacity: u32,
    pub pins: String,
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
        let bad = |m: String| -> anyhow::Error { InvalidInput(m).into() };
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
