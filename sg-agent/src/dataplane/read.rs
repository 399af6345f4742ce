//! Reading what the datapath counted and remembers: rule and reason counters (summed over
//! CPUs), conntrack statistics (C6: exceeded and available), conntrack entries of both tables
//! decoded, and the agent's own conntrack writes (flush, sweep of expired entries).
//!
//! Concurrency: the datapath keeps writing while we read. Per-CPU counters are read one CPU
//! slot at a time by the kernel, so a sum is a consistent-enough snapshot (each CPU's value is
//! exact, the sum may straddle a few packets). Deleting conntrack entries races with packets
//! of the same flow: see [`Dataplane::sweep_conntrack`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapError, PerCpuValues};
use sg_common::{Addr, FlowKey, FlowVal, Reason, RuleCounter, ct_stat, ct_state, maps};

use super::Dataplane;
use crate::policy::RuleId;

/// Conntrack statistics (C6). Counts are derived: inserts minus deletes of each table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    pub ct_inserts: u64,
    pub ct_deletes: u64,
    pub new_inserts: u64,
    pub new_deletes: u64,
    /// EC2's conntrack_allowance_exceeded: flows dropped because a table was full.
    pub exceeded: u64,
    pub user_ct_deletes: u64,
    pub user_new_deletes: u64,
    /// Entries in SG_CT / SG_CT_NEW (derived from the counters above).
    pub ct_count: u64,
    pub new_count: u64,
    /// Free entries (capacity minus count): EC2's conntrack_allowance_available.
    pub ct_available: u64,
    pub new_available: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CtTable {
    /// SG_CT: confirmed flows.
    Confirmed,
    /// SG_CT_NEW: unconfirmed flows.
    New,
}

/// One conntrack entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub table: CtTable,
    pub key: FlowKey,
    pub val: FlowVal,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub age: Duration,
    pub idle: Duration,
    /// The idle timeout of the entry's current state (C5).
    pub timeout: Duration,
    /// Zero when the entry has expired (it is deleted when next met or swept).
    pub timeout_left: Duration,
}

impl CtEntry {
    /// (local, remote) ports as a user reads them: TCP/UDP ports; ICMP echo: (id, 0) (the
    /// key's remote port only records which side opened the flow, `ECHO_OPENED_BY_PEER`);
    /// other protocols: (0, 0).
    pub fn ports(&self) -> (u16, u16) {
        let icmp = if self.local.is_ipv4() {
            sg_common::proto::ICMP
        } else {
            sg_common::proto::ICMPV6
        };
        if self.key.proto == icmp {
            (self.key.lport, 0)
        } else {
            (self.key.lport, self.key.rport)
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.val.state {
            ct_state::NEW => "new",
            ct_state::REPLIED => "replied",
            ct_state::ESTABLISHED => "established",
            ct_state::CLOSING => "closing",
            ct_state::RESET => "reset",
            _ => "unknown",
        }
    }
}

/// The timeout (seconds) of a flow in its current state: `FlowVal::timeouts` holds TCP
/// [established, embryonic, closing], UDP [stream, single, single], others [t, t, t].
pub fn flow_timeout_s(v: &FlowVal) -> u32 {
    match v.state {
        ct_state::ESTABLISHED => v.timeouts[0],
        ct_state::NEW | ct_state::REPLIED => v.timeouts[1],
        _ => v.timeouts[2],
    }
}

/// A 16-byte address as an IpAddr (IPv4-mapped -> IPv4).
pub fn ip_of(a: &Addr) -> IpAddr {
    if sg_common::is_v4_mapped(a) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the datapath's clock (`bpf_ktime_get_coarse_ns`,
/// the same timekeeper value), so idle times and the sweeper agree with the kernel to the tick.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Dataplane {
    /// Packets and bytes charged to one rule slot, summed over CPUs.
    pub fn rule_counter(&self, slot: u32) -> Result<RuleCounter> {
        let v = self
            .maps
            .rule_cnt
            .get(&slot, 0)
            .with_context(|| format!("reading {} slot {slot}", maps::RULE_COUNTERS))?;
        Ok(v.iter().fold(RuleCounter::default(), |a, c| RuleCounter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }

    /// Counters of the rules of the last applied image, by rule id.
    pub fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounter>> {
        let mut out = BTreeMap::new();
        for (rule, &slot) in &self.mirror.slots.by_rule {
            out.insert(rule.clone(), self.rule_counter(slot)?);
        }
        Ok(out)
    }

    /// Non-zero counters of the slots any applied image used (including rules since removed,
    /// whose flows may still be charging them: X1).
    pub fn known_slot_counters(&self) -> Result<BTreeMap<u32, RuleCounter>> {
        let mut out = BTreeMap::new();
        for &slot in &self.mirror.known_slots {
            let c = self.rule_counter(slot)?;
            if c.packets != 0 {
                out.insert(slot, c);
            }
        }
        Ok(out)
    }

    /// Packets per reason, summed over CPUs (every reason listed, zeros included).
    pub fn reason_counters(&self) -> Result<BTreeMap<Reason, u64>> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            out.insert(
                r,
                self.per_cpu_sum(&self.maps.reason_cnt, r as u32, maps::REASON_COUNTERS)?,
            );
        }
        Ok(out)
    }

    fn per_cpu_sum(
        &self,
        m: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
        idx: u32,
        name: &str,
    ) -> Result<u64> {
        let v = m
            .get(&idx, 0)
            .with_context(|| format!("reading {name}[{idx}]"))?;
        Ok(v.iter().sum())
    }

    pub fn ct_stats(&self) -> Result<CtStats> {
        let g = |i: u32| self.per_cpu_sum(&self.maps.ct_stats, i, maps::CT_STATS);
        let mut s = CtStats {
            ct_inserts: g(ct_stat::CT_INSERTS)?,
            ct_deletes: g(ct_stat::CT_DELETES)?,
            new_inserts: g(ct_stat::NEW_INSERTS)?,
            new_deletes: g(ct_stat::NEW_DELETES)?,
            exceeded: g(ct_stat::EXCEEDED)?,
            user_ct_deletes: g(ct_stat::USER_CT_DELETES)?,
            user_new_deletes: g(ct_stat::USER_NEW_DELETES)?,
            ..CtStats::default()
        };
        s.ct_count = s
            .ct_inserts
            .saturating_sub(s.ct_deletes + s.user_ct_deletes);
        s.new_count = s
            .new_inserts
            .saturating_sub(s.new_deletes + s.user_new_deletes);
        s.ct_available = u64::from(self.caps.ct).saturating_sub(s.ct_count);
        s.new_available = u64::from(self.caps.ct_new).saturating_sub(s.new_count);
        Ok(s)
    }

    /// Every conntrack entry of both tables, decoded (confirmed first).
    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for (table, map, name) in [
            (CtTable::Confirmed, &self.maps.ct, maps::CT),
            (CtTable::New, &self.maps.ct_new, maps::CT_NEW),
        ] {
            for kv in map.iter() {
                let (key, val) = match kv {
                    Ok(kv) => kv,
                    // Deleted by the datapath between listing its key and reading it.
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {name}")),
                };
                let timeout = Duration::from_secs(u64::from(flow_timeout_s(&val)));
                let idle = Duration::from_nanos(now.saturating_sub(val.seen_ns));
                out.push(CtEntry {
                    table,
                    key,
                    val,
                    local: ip_of(&key.local),
                    remote: ip_of(&key.remote),
                    age: Duration::from_nanos(now.saturating_sub(val.created_ns)),
                    idle,
                    timeout,
                    timeout_left: timeout.saturating_sub(idle),
                });
            }
        }
        Ok(out)
    }

    /// Deletes every conntrack entry (both tables). Returns how many.
    pub fn flush_conntrack(&mut self) -> Result<usize> {
        self.delete_flows(|_, _| true)
    }

    /// Deletes entries whose idle timeout has passed. Returns how many.
    ///
    /// Race: a packet of the flow may refresh `seen_ns` between our read and our delete; the
    /// entry is re-read just before deleting, which narrows the window to one syscall. Losing
    /// that race deletes a flow that had just become active again; its next packet is judged
    /// by the rules (and, if allowed, recreates it).
    pub fn sweep_conntrack(&mut self) -> Result<usize> {
        self.delete_flows(|_, v| {
            let now = monotonic_ns();
            now.saturating_sub(v.seen_ns) > u64::from(flow_timeout_s(v)) * 1_000_000_000
        })
    }

    pub(super) fn delete_flows(
        &mut self,
        pred: impl Fn(&FlowKey, &FlowVal) -> bool,
    ) -> Result<usize> {
        let mut deleted = [0u64; 2];
        for (i, name) in [(0usize, maps::CT), (1, maps::CT_NEW)] {
            let map = if i == 0 {
                &mut self.maps.ct
            } else {
                &mut self.maps.ct_new
            };
            let keys: Vec<FlowKey> = map.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                let v = match map.get(&k, 0) {
                    Ok(v) => v,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {name}")),
                };
                if !pred(&k, &v) {
                    continue;
                }
                match map.remove(&k) {
                    Ok(()) => deleted[i] += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).with_context(|| format!("deleting from {name}")),
                }
            }
        }
        self.add_user_stat(ct_stat::USER_CT_DELETES, deleted[0])?;
        self.add_user_stat(ct_stat::USER_NEW_DELETES, deleted[1])?;
        Ok((deleted[0] + deleted[1]) as usize)
    }

    /// Adds to a statistic only userspace writes (into CPU 0's slot; the datapath never
    /// touches these indexes, so read-modify-write is safe).
    fn add_user_stat(&mut self, idx: u32, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let cur = self
            .maps
            .ct_stats
            .get(&idx, 0)
            .with_context(|| format!("reading {}[{idx}]", maps::CT_STATS))?;
        let mut v: Vec<u64> = cur.iter().copied().collect();
        v[0] += n;
        let values = PerCpuValues::try_from(v)?;
        self.maps
            .ct_stats
            .set(idx, values, 0)
            .with_context(|| format!("writing {}[{idx}]", maps::CT_STATS))
    }
}

impl Dataplane {
    /// First-fragment verdicts the datapath remembers (G1), for tests and `status`.
    pub fn fragment_records(&self) -> Result<Vec<(sg_common::FragKey, sg_common::FragVal)>> {
        let mut out = Vec::new();
        for kv in self.maps.frags.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", maps::FRAGS)),
            }
        }
        Ok(out)
    }
}

impl Dataplane {
    /// Forgets every first-fragment verdict (tests; a policy change does not need it: later
    /// fragments follow the verdict their first fragment got, like a tracked flow).
    pub fn flush_fragments(&mut self) -> Result<usize> {
        let keys: Vec<sg_common::FragKey> = self.maps.frags.keys().filter_map(|k| k.ok()).collect();
        let mut n = 0;
        for k in keys {
            match self.maps.frags.remove(&k) {
                Ok(()) => n += 1,
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting from {}", maps::FRAGS)),
            }
        }
        Ok(n)
    }
}

impl Dataplane {
    /// Takes up to `max` records from the event ring (drops and new flows, rate limited by
    /// the datapath; see [`Dataplane::set_events_per_sec`]). Never blocks.
    pub fn drain_events(&mut self, max: usize) -> Result<Vec<sg_common::Event>> {
        if self.events.is_none() {
            let m = self
                .ebpf
                .take_map(maps::EVENTS)
                .context("the eBPF object has no event ring")?;
            self.events =
                Some(aya::maps::RingBuf::try_from(m).context("SG_EVENTS is not a ring buffer")?);
        }
        let rb = self.events.as_mut().expect("just set");
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = rb.next() else { break };
            if item.len() >= std::mem::size_of::<sg_common::Event>() {
                // SAFETY: Event is repr(C), Pod, and the record holds at least its size.
                out.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr() as *const sg_common::Event)
                });
            }
        }
        Ok(out)
    }
}
