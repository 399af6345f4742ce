//! Questions about what is enforced: status (with the inconsistencies found between the
//! state, the pins and the kernel), per-rule and per-reason counters, and the conntrack
//! table (list, flush, sweep). The report types serialize as `--json` prints them.
//! Read-only commands adopt the pinned maps and never create them.

use anyhow::Result;
use sg_common::{ABI_VERSION, Reason, RuleCounter};

use super::Agent;
use crate::dataplane::{self, CtEntry, CtStats, PinnedIface};
use crate::state::{AgentState, InterfaceSummary, RuleSummary};

#[derive(Clone, Debug, serde::Serialize)]
pub struct IfaceStatus {
    pub device: String,
    pub ifindex: u32,
    pub interface: String,
    pub groups: Vec<String>,
    pub ingress: String,
    pub egress: String,
    /// In audit mode of its own (L3): `policy` (`audit: true`) or `command` (`sg-agent audit
    /// on DEV`); None when it enforces (unless the global `audit` is on).
    pub audit: Option<&'static str>,
}

/// The last revert of an unconfirmed apply (L1), from the record the revert left.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LastRevert {
    /// The change that was undone, and when it had been applied (ms since the epoch).
    pub source: String,
    pub set_at_ms: u64,
    /// When it was reverted (ms since the epoch), why, and what came back.
    pub at_ms: u64,
    pub why: String,
    pub restored: String,
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
    /// An `apply --confirm` waiting for `sg-agent confirm` (L1), and the reverts so far.
    pub confirm: Option<super::Pending>,
    pub confirm_reverts: u64,
    /// What the last revert undid, when and why (L1).
    pub last_revert: Option<LastRevert>,
    /// Audit mode (L3): the policy's drops pass and are reported.
    pub audit: bool,
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
    /// `apply --confirm` changes reverted so far (L1).
    pub confirm_reverts: u64,
    /// Audit mode (L3) on every interface, and the interfaces in audit mode of their own.
    pub audit: bool,
    pub audit_interfaces: Vec<super::AuditedDevice>,
}

fn ser_reasons<S: serde::Serializer>(r: &[(Reason, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(r.len()))?;
    for (k, v) in r {
        m.serialize_entry(k.name(), v)?;
    }
    m.end()
}

/// A protocol number as `status`, `conntrack` and `explain` print it.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

impl Agent {
    /// Interfaces, programs and modes, generation, conntrack fill, and every inconsistency
    /// found between the state, the pins and the kernel.
    pub fn status(&mut self) -> Result<Status> {
        self.require_applied()?;
        self.require_pins()?;
        let pinned = dataplane::pinned_ifaces(&self.links_dir());
        let dp = self.dataplane()?;
        let ct = dp.ct_stats()?;
        let caps = dp.capacities();
        let kernel_generation = dp.active_generation();
        let audit = dp.audit()?;
        let (ki, kp, kq) = dp.generation_entries(kernel_generation);
        let st = &self.state;
        let mut warnings = self.warnings.clone();
        warnings.extend(kernel_warnings(st, kernel_generation, ki + kp + kq));
        warnings.extend(pin_warnings(st, &pinned));
        if audit {
            warnings.push(
                "audit mode is ON: packets the policy drops pass (counted as audit_would_drop_*); \
                 hint: sg-agent audit off"
                    .into(),
            );
        }
        let mut interfaces = iface_statuses(st, &pinned, &mut warnings);
        for d in self.audited_devices()? {
            if let Some(i) = interfaces.iter_mut().find(|i| i.device == d.device) {
                i.audit = Some(d.by);
            }
        }
        let st = &self.state;
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
            confirm: super::confirm::read_marker(&self.sd)?,
            confirm_reverts: st.confirm_reverts,
            last_revert: super::confirm::read_revert_record(&self.sd)?.map(|r| LastRevert {
                source: r.source,
                set_at_ms: r.set_at_ms,
                at_ms: r.at_ms,
                why: r.why,
                restored: r.restored,
            }),
            audit,
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
        let conntrack = dp.ct_stats()?;
        let audit = dp.audit()?;
        Ok(Counters {
            rules,
            reasons: reasons.into_iter().collect(),
            conntrack,
            confirm_reverts: self.state.confirm_reverts,
            audit,
            audit_interfaces: self.audited_devices()?,
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
}

/// The kernel enforces another generation than the state records, or nothing at all.
fn kernel_warnings(st: &AgentState, kernel_generation: u32, entries: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if kernel_generation != st.generation {
        warnings.push(format!(
            "the kernel enforces generation {kernel_generation} but the state records \
             generation {}: an apply was interrupted after it took effect, so what is \
             listed here may be older than what is enforced; hint: sg-agent apply FILE",
            st.generation
        ));
    }
    if entries == 0 {
        warnings.push(
            "the policy maps are empty (the pins were removed or replaced?): every packet \
             of an attached interface is dropped as \"no policy\"; hint: sg-agent apply FILE"
                .into(),
        );
    }
    warnings
}

/// Pins of deleted devices, and attached devices the state does not know.
fn pin_warnings(st: &AgentState, pinned: &[PinnedIface]) -> Vec<String> {
    let mut warnings = Vec::new();
    for p in pinned {
        let known = enforced(st).any(|(_, i)| i.ifindex == p.ifindex);
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
    warnings
}

/// Every device the state records as enforced: the policy interfaces (their groups) and a
/// router's ports (interface `router for SUBNET`, the subnet's NACL in place of groups).
fn enforced(st: &AgentState) -> impl Iterator<Item = (&String, InterfaceSummary)> {
    let routers = st.applied.routers.iter().map(|(dev, r)| {
        (
            dev,
            InterfaceSummary {
                interface: format!("router for {}", r.subnet),
                ifindex: r.ifindex,
                groups: vec![format!("network ACL {}", r.network_acl)],
            },
        )
    });
    st.applied
        .interfaces
        .iter()
        .map(|(dev, i)| (dev, i.clone()))
        .chain(routers)
}

/// Each recorded interface with its live hooks; one that has none is not enforced.
fn iface_statuses(
    st: &AgentState,
    pinned: &[PinnedIface],
    warnings: &mut Vec<String>,
) -> Vec<IfaceStatus> {
    enforced(st)
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
                // The hook and why it was chosen, e.g. "tc (auto: driver veth; ...)".
                ingress: match (p, st.hook_reasons.get(dev)) {
                    (Some(p), Some(why)) => format!("{} ({why})", p.ingress_hook),
                    (Some(p), None) => p.ingress_hook.clone(),
                    (None, _) => "not attached".into(),
                },
                egress: if p.is_some_and(|p| p.has_egress) {
                    "tc".into()
                } else {
                    "not attached".into()
                },
                audit: None,
            }
        })
        .collect()
}
