//! The daemon's VPC-Flow-Log-style lines: ACCEPT lines from tracked flows' packet/byte deltas
//! every interval (one line per direction with traffic), REJECT lines from the drop events of
//! the event ring, aggregated per 5-tuple until the next flush. Untracked flows (C4) keep no
//! state and appear only through their rules' counters.
//!
//! It reads the conntrack table and the event ring through the agent it is handed; it never
//! changes policy or conntrack state.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

use anyhow::{Context, Result};

use super::now_unix;
use crate::agent::Agent;
use crate::dataplane::{CtEntry, ip_of};

/// (ifindex, src, dst, sport, dport, protocol, audit: passed only because of audit mode)
type RejectKey = (u32, IpAddr, IpAddr, u16, u16, u8, bool);
/// (packets, bytes, first seen, last seen)
type RejectAgg = (u64, u64, u64, u64);
/// (flow key, created) -> packets/bytes already reported [orig, reply]
type Seen = BTreeMap<(sg_common::FlowKey, u64), ([u64; 2], [u64; 2])>;

pub(super) struct FlowLog {
    /// `None`: no flow log; every method is then a no-op.
    out: Option<Box<dyn Write + Send>>,
    seen: Seen,
    rejects: BTreeMap<RejectKey, RejectAgg>,
    last_flush: u64,
}

impl FlowLog {
    /// No flow log.
    pub(super) fn off() -> FlowLog {
        FlowLog {
            out: None,
            seen: BTreeMap::new(),
            rejects: BTreeMap::new(),
            last_flush: now_unix(),
        }
    }

    /// `-` is stdout; anything else a file, appended to.
    pub(super) fn open(target: Option<&str>) -> Result<FlowLog> {
        let out: Box<dyn Write + Send> = match target {
            None => return Ok(FlowLog::off()),
            Some("-") => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening flow log {p}"))?,
            ),
        };
        Ok(FlowLog {
            out: Some(out),
            ..FlowLog::off()
        })
    }

    /// Counts what tracked flows carried so far without reporting it.
    pub(super) fn baseline(&mut self, agent: &mut Agent) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        for e in agent.conntrack()? {
            self.seen
                .insert((e.key, e.val.created_ns), (e.val.packets, e.val.bytes));
        }
        // Drop events queued while no daemon was reading are old news.
        agent.dataplane()?.drain_events(usize::MAX)?;
        Ok(())
    }

    /// Drains the event ring into the REJECT aggregates (other events are not logged).
    pub(super) fn take_events(&mut self, agent: &mut Agent) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        let now = now_unix();
        for e in agent.dataplane()?.drain_events(4096)? {
            // Audit mode (L3): what the policy would drop (it passed) is logged as REJECT too.
            if e.kind != sg_common::event_kind::DROP && e.kind != sg_common::event_kind::AUDIT {
                continue;
            }
            let k = (
                e.ifindex,
                ip_of(&e.src),
                ip_of(&e.dst),
                e.sport,
                e.dport,
                e.proto,
                e.kind == sg_common::event_kind::AUDIT,
            );
            let r = self.rejects.entry(k).or_insert((0, 0, now, now));
            r.0 += 1;
            r.1 += u64::from(e.len);
            r.3 = now;
        }
        Ok(())
    }

    /// Writes the ACCEPT lines of the interval since the last flush, then the REJECT lines
    /// aggregated since, and starts a new interval.
    pub(super) fn flush(&mut self, agent: &mut Agent) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let now = now_unix();
        let names: BTreeMap<u32, String> = agent
            .state()
            .applied
            .interfaces
            .iter()
            .map(|(d, i)| (i.ifindex, d.clone()))
            .collect();
        let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
        let (accepts, live) = accepted(agent.conntrack()?, &self.seen, &name, self.last_flush, now);
        for rec in &accepts {
            writeln!(out, "{}", rec.line())?;
        }
        self.seen = live;
        for ((ifi, src, dst, sport, dport, proto, audit), (packets, bytes, start, end)) in
            std::mem::take(&mut self.rejects)
        {
            let rec = FlowRecord {
                interface: name(ifi),
                src,
                dst,
                sport,
                dport,
                proto,
                packets,
                bytes,
                start,
                end,
                action: if audit {
                    Action::AuditReject
                } else {
                    Action::Reject
                },
            };
            writeln!(out, "{}", rec.line())?;
        }
        out.flush()?;
        self.last_flush = now;
        Ok(())
    }
}

/// The ACCEPT records of tracked flows for `start..now`: what each direction carried beyond
/// what `seen` says was reported. Also returns the new `seen`: the live flows only, so
/// expired ones are forgotten.
fn accepted(
    entries: Vec<CtEntry>,
    seen: &Seen,
    name: &impl Fn(u32) -> String,
    start: u64,
    now: u64,
) -> (Vec<FlowRecord>, Seen) {
    let mut records = Vec::new();
    let mut live = Seen::new();
    for e in entries {
        let id = (e.key, e.val.created_ns);
        let (p0, b0) = seen.get(&id).copied().unwrap_or(([0; 2], [0; 2]));
        for d in 0..2 {
            let packets = e.val.packets[d] - p0[d].min(e.val.packets[d]);
            let bytes = e.val.bytes[d] - b0[d].min(e.val.bytes[d]);
            if packets == 0 {
                continue;
            }
            // The direction of travel: d = 0 is the opener's direction.
            let outbound = (e.val.origin == sg_common::DIR_EGRESS) == (d == 0);
            let (lport, rport) = e.ports();
            let (src, dst, sport, dport) = if outbound {
                (e.local, e.remote, lport, rport)
            } else {
                (e.remote, e.local, rport, lport)
            };
            records.push(FlowRecord {
                interface: name(e.key.ifindex),
                src,
                dst,
                sport,
                dport,
                proto: e.key.proto,
                packets,
                bytes,
                start,
                end: now,
                action: Action::Accept,
            });
        }
        live.insert(id, (e.val.packets, e.val.bytes));
    }
    (records, live)
}

/// What a line says of its packets: the `action` and `log-status` fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    /// `ACCEPT OK`: a tracked flow's packets.
    Accept,
    /// `REJECT OK`: dropped packets.
    Reject,
    /// `REJECT AUDIT`: packets the policy rejects, passed because audit mode is on (L3).
    /// VPC Flow Logs' log-status is OK, NODATA or SKIPDATA; AUDIT is sg's own, so a reader
    /// that counts rejects by action alone still sees what audit mode would drop.
    AuditReject,
}

/// One flow in VPC Flow Logs' default format (version 2 fields, sg's interface name in place
/// of the ENI id and `-` for account id):
/// `version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status`
struct FlowRecord {
    interface: String,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    bytes: u64,
    /// Seconds since the epoch.
    start: u64,
    end: u64,
    action: Action,
}

impl FlowRecord {
    fn line(&self) -> String {
        format!(
            "2 - {} {} {} {} {} {} {} {} {} {} {}",
            self.interface,
            self.src,
            self.dst,
            self.sport,
            self.dport,
            self.proto,
            self.packets,
            self.bytes,
            self.start,
            self.end,
            match self.action {
                Action::Accept => "ACCEPT OK",
                Action::Reject => "REJECT OK",
                Action::AuditReject => "REJECT AUDIT",
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_log_line_has_vpc_field_order() {
        let mut r = FlowRecord {
            interface: "eth0".into(),
            src: "198.51.100.10".parse().unwrap(),
            dst: "192.0.2.11".parse().unwrap(),
            sport: 40000,
            dport: 443,
            proto: 6,
            packets: 10,
            bytes: 840,
            start: 1,
            end: 2,
            action: Action::Accept,
        };
        assert_eq!(
            r.line(),
            "2 - eth0 198.51.100.10 192.0.2.11 40000 443 6 10 840 1 2 ACCEPT OK"
        );
        r.action = Action::Reject;
        assert!(r.line().ends_with(" 1 2 REJECT OK"), "{}", r.line());
        // L3: what only audit mode passed keeps the field count and says so.
        r.action = Action::AuditReject;
        assert!(r.line().ends_with(" 1 2 REJECT AUDIT"), "{}", r.line());
        assert_eq!(r.line().split(' ').count(), 14);
    }
}
