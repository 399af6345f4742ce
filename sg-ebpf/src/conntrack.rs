//! Connection tracking (C1-C6, X1): flow keys, lookups with idle expiry, the per-protocol
//! state machine, creation of new flows and their promotion from `SG_CT_NEW` to `SG_CT`.
//!
//! Owns every write to `SG_CT` and `SG_CT_NEW` and the `ct_stat` counters. It must not
//! consult the rules: a hit passes whatever the policy says now (X1), and creation is asked
//! for by the pipeline only after a rule allowed the packet.
//!
//! Concurrency. Both directions of a flow may be handled on two CPUs at once, and the agent's
//! sweeper deletes expired entries concurrently.
//! - Counters, `seen_ns` and `state` are plain stores through the value pointer: a lost
//!   increment or a slightly older `seen_ns` only shortens an idle timeout by the gap between
//!   two packets; a lost state step is redone by the next packet of the flow.
//! - The maps are BPF_F_NO_PREALLOC (maps.rs): a store into an entry another CPU just deleted
//!   lands in a dead element, never in another flow.
//! - New flows are inserted with BPF_NOEXIST. Losing that race (another CPU inserted the same
//!   key between our lookup and insert) is a hit, not a failure: we look up again.
//! - Promotion inserts a copy into `SG_CT` with BPF_NOEXIST, then deletes the `SG_CT_NEW`
//!   entry, and never writes through the old pointer after the delete. Two CPUs promoting the
//!   same flow: one insert wins, the other gets -EEXIST and only deletes (counts from one
//!   packet are lost, harmless). A packet that looks the flow up between the insert and the
//!   delete finds it in `SG_CT` first.
use aya_ebpf::bindings::BPF_NOEXIST;
use sg_common::{
    DIR_INGRESS, ECHO_OPENED_BY_PEER, FlowKey, FlowVal, IfaceConf, Reason, ct_flags, ct_stat,
    ct_state,
};

use crate::{
    maps::{SG_CT, SG_CT_NEW, ct_stat},
    parse::{L4_ICMP, L4_TCP, L4_UDP, Pkt, Words, tcp_flags},
    policy::audits_conf,
    verdict::{Packed, Verdict, pack, unpack},
};

const NS_PER_SEC: u64 = 1_000_000_000;
const EEXIST: i32 = 17;

/// ICMP echo types: request/reply for IPv4 (8/0) and IPv6 (128/129).
#[inline(always)]
pub fn is_echo_request(pkt: &Pkt) -> bool {
    pkt.l4 == L4_ICMP && pkt.icmp_type == if pkt.v6 != 0 { 128 } else { 8 }
}

#[inline(always)]
fn is_echo_reply(pkt: &Pkt) -> bool {
    pkt.l4 == L4_ICMP && pkt.icmp_type == if pkt.v6 != 0 { 129 } else { 0 }
}

/// A conntrack key held in a buffer aligned to 8 bytes and written as six 8-byte words.
///
/// Why not a plain `FlowKey` filled field by field: the hash map reads the key back at once,
/// as 4-byte words (jhash2) and 8-byte words (the key compare). A key assembled from 1-, 2-
/// and 4-byte stores makes those loads straddle several just-written stores, which the CPU
/// cannot forward from its store buffer: each such load waits for the stores to retire.
/// Measured on sg_xdp_in (BPF_PROG_TEST_RUN, established TCP flow): 60 -> 54 ns per packet.
/// Whole words, written once, forward to every narrower load inside them.
#[repr(C, align(8))]
pub union KeyBuf {
    words: [u64; 6],
    key: FlowKey,
}

// The word layout below follows FlowKey's fields (little endian, bpfel).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(FlowKey, ifindex) == 0 && offset_of!(FlowKey, proto) == 4);
    assert!(offset_of!(FlowKey, lport) == 8 && offset_of!(FlowKey, rport) == 10);
    assert!(offset_of!(FlowKey, local) == 12 && offset_of!(FlowKey, remote) == 28);
    assert!(size_of::<FlowKey>() == 44 && size_of::<KeyBuf>() == 48);
};

impl KeyBuf {
    #[inline(always)]
    pub fn key(&self) -> &FlowKey {
        // SAFETY: every KeyBuf is built by `flow_key`, which writes all 48 bytes; every bit
        // pattern is a valid FlowKey.
        unsafe { &self.key }
    }
}

/// Two 4-byte halves as one little-endian word (`lo` at the lower address).
#[inline(always)]
const fn word(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// The flow key of a packet seen in direction `dir`: (local, remote) = (destination, source)
/// on ingress and (source, destination) on egress, so both directions of a flow meet in one
/// entry. `ports` are the packet's (source, destination) ports; see [`key_of`] for ICMP echo
/// and other protocols. Padding is zero (it is part of the hash key).
#[inline(always)]
pub fn flow_key(
    ifindex: u32,
    dir: u8,
    proto: u8,
    src: &Words,
    dst: &Words,
    ports: (u16, u16),
) -> KeyBuf {
    let (sport, dport) = ports;
    let (local, remote, lport, rport) = if dir == DIR_INGRESS {
        (dst, src, dport, sport)
    } else {
        (src, dst, sport, dport)
    };
    // ifindex | proto, pad | lport, rport, local[0..4] | local[4..12] | local[12..16],
    // remote[0..4] | remote[4..12] | remote[12..16], 4 bytes beyond the key.
    KeyBuf {
        words: [
            word(ifindex, proto as u32),
            word(lport as u32 | (rport as u32) << 16, local[0]),
            word(local[1], local[2]),
            word(local[3], remote[0]),
            word(remote[1], remote[2]),
            remote[3] as u64,
        ],
    }
}

/// The key of `pkt` itself (see [`flow_key`]). Ports: TCP/UDP ports; ICMP echo: (id,
/// opener) as seen from the local side, see [`echo_ports`]; other protocols (C3): (0, 0).
/// ICMP other than echo belongs to no flow: `None`.
#[inline(always)]
pub fn key_of(pkt: &Pkt) -> Option<KeyBuf> {
    let dir = pkt.dir;
    let ports = match pkt.l4 {
        L4_TCP | L4_UDP => (pkt.sport, pkt.dport),
        L4_ICMP if is_echo_request(pkt) || is_echo_reply(pkt) => {
            echo_ports(dir, pkt.icmp_id, is_echo_request(pkt))
        }
        L4_ICMP => return None,
        _ => (0, 0),
    };
    Some(flow_key(
        pkt.ifindex,
        dir,
        pkt.proto,
        &pkt.src,
        &pkt.dst,
        ports,
    ))
}

/// The (source, destination) "ports" of an ICMP echo request or reply with identifier `id`
/// seen in direction `dir`, for [`flow_key`]: as seen from the local side, the local port is
/// the id and the remote port says which side opened the flow (`ECHO_OPENED_BY_PEER` when
/// an echo request came in, 0 when this host sent one). A request opens its flow in its own
/// direction, a reply answers a flow opened in the other, so a request and its reply meet
/// in one entry, and pings with one id from both sides are two flows (C2).
#[inline(always)]
pub fn echo_ports(dir: u8, id: u16, request: bool) -> (u16, u16) {
    let opened_inbound = (dir == DIR_INGRESS) == request;
    let opener = if opened_inbound {
        ECHO_OPENED_BY_PEER
    } else {
        0
    };
    // flow_key swaps on ingress: (remote, local) there, (local, remote) on egress.
    if dir == DIR_INGRESS {
        (opener, id)
    } else {
        (id, opener)
    }
}

/// Whether an allowed packet opens a flow (design.md "Pipeline" 7): TCP, UDP, ICMP echo
/// request and any non-ICMP protocol. ICMP errors, echo replies and other ICMP types do not.
#[inline(always)]
pub fn opens_flow(pkt: &Pkt) -> bool {
    pkt.l4 != L4_ICMP || is_echo_request(pkt)
}

/// Idle timeout of an entry in its current state, in ns. `timeouts` was captured at creation:
/// TCP [established, embryonic, closing]; UDP [stream, single, single]; others [t, t, t].
#[inline(always)]
fn timeout_ns(v: &FlowVal) -> u64 {
    let secs = match v.state {
        ct_state::ESTABLISHED => v.timeouts[0],
        ct_state::CLOSING | ct_state::RESET => v.timeouts[2],
        _ => v.timeouts[1],
    };
    secs as u64 * NS_PER_SEC
}

#[inline(always)]
pub fn expired(v: &FlowVal, now: u64) -> bool {
    now.saturating_sub(v.seen_ns) > timeout_ns(v)
}

/// The state after a packet (C5 table in design.md).
///
/// TCP: RST -> RESET; FIN -> CLOSING (unless reset); NEW + any packet from the other side ->
/// REPLIED; REPLIED + a non-SYN packet from the opener -> ESTABLISHED. Others (UDP, ICMP echo,
/// other protocols), from the per-direction packet counts including this packet: at least two
/// each way -> ESTABLISHED (a stream); a reply seen -> REPLIED; else NEW.
#[inline(always)]
fn next_state(pkt: &Pkt, state: u8, from_origin: bool, packets: &[u64; 2]) -> u8 {
    if pkt.l4 == L4_TCP {
        let f = pkt.tcp_flags;
        if f & tcp_flags::RST != 0 {
            return ct_state::RESET;
        }
        if f & tcp_flags::FIN != 0 {
            return if state == ct_state::RESET {
                ct_state::RESET
            } else {
                ct_state::CLOSING
            };
        }
        match state {
            ct_state::NEW if !from_origin => ct_state::REPLIED,
            ct_state::REPLIED if from_origin && f & tcp_flags::SYN == 0 => ct_state::ESTABLISHED,
            s => s,
        }
    } else if packets[0] >= 2 && packets[1] >= 2 {
        ct_state::ESTABLISHED
    } else if packets[1] >= 1 {
        ct_state::REPLIED
    } else {
        ct_state::NEW
    }
}

/// Looks the packet's flow up, `SG_CT` first, then `SG_CT_NEW`, and applies a hit.
/// `None`: a miss (absent, expired -- then deleted -- or an ICMP echo in the wrong role).
///
/// Inlined into the entry point, both tables: an established flow's packet is a hit in
/// `SG_CT`, a flow that has not been answered yet (a one-way UDP stream, a handshake in
/// progress) a hit in `SG_CT_NEW`, and neither makes a BPF-to-BPF call. Only the promotion
/// of a flow from `SG_CT_NEW` to `SG_CT` is a call of its own ([`promote_call`]): it copies
/// the `FlowVal`, which must not land on the entry's stack.
#[inline(always)]
pub fn lookup(key: &FlowKey, pkt: &Pkt) -> Option<Verdict> {
    // `promote_call` always returns a verdict; the fallback is never taken.
    lookup_with(key, pkt, |p| {
        unpack(promote_call(key, p, pkt)).unwrap_or(Verdict::of(Reason::DropCtFull))
    })
}

/// [`lookup`] as one BPF-to-BPF call (both tables, the promotion inline), for callers off
/// the hot path.
#[inline(always)]
pub fn lookup_cold(key: &FlowKey, pkt: &Pkt) -> Option<Verdict> {
    unpack(lookup_call(key, pkt))
}

// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
fn lookup_call(key: &FlowKey, pkt: &Pkt) -> Packed {
    pack(lookup_with(key, pkt, |p| promote(key, p, pkt)))
}

/// The lookup; `promote` moves an `SG_CT_NEW` entry that became established to `SG_CT`
/// (inline, or as a call of its own where the caller's frame has no room for the copy).
#[inline(always)]
fn lookup_with(
    key: &FlowKey,
    pkt: &Pkt,
    promote: impl FnOnce(*mut FlowVal) -> Verdict,
) -> Option<Verdict> {
    if let Some(p) = SG_CT.get_ptr_mut(key)
        && let Hit::Pass(v) = hit(key, p, true, pkt)
    {
        return Some(v);
    }
    let p = SG_CT_NEW.get_ptr_mut(key)?;
    match hit(key, p, false, pkt) {
        Hit::Pass(v) => Some(v),
        Hit::Promote => Some(promote(p)),
        Hit::Miss => None,
    }
}

/// What a hit on an entry comes to.
enum Hit {
    /// Absent for this packet: expired (and deleted), or an ICMP echo in the wrong role.
    Miss,
    /// Counted in the entry; the packet passes with this verdict.
    Pass(Verdict),
    /// An `SG_CT_NEW` entry this packet makes established, left untouched: the caller
    /// promotes it ([`promote`]).
    Promote,
}

/// Which way `pkt` goes in the flow whose entry is `v`: (from the opener, its index in the
/// per-direction counters).
#[inline(always)]
fn side(v: &FlowVal, pkt: &Pkt) -> (bool, usize) {
    let from_origin = v.origin == pkt.dir;
    (from_origin, if from_origin { 0 } else { 1 })
}

/// The pass reason of a packet of a tracked flow.
#[inline(always)]
fn ct_reason(from_origin: bool) -> Reason {
    if from_origin {
        Reason::PassCtOriginal
    } else {
        Reason::PassCtReply
    }
}

/// Applies a hit on the entry at `p` (in `SG_CT` when `confirmed`).
#[inline(always)]
fn hit(key: &FlowKey, p: *mut FlowVal, confirmed: bool, pkt: &Pkt) -> Hit {
    let now = pkt.now;
    let v = unsafe { &mut *p };
    if expired(v, now) {
        // Whoever deletes counts: a concurrent delete by the sweeper or another CPU fails
        // here with -ENOENT and is not counted twice.
        let (map, stat) = if confirmed {
            (&SG_CT, ct_stat::CT_DELETES)
        } else {
            (&SG_CT_NEW, ct_stat::NEW_DELETES)
        };
        if map.remove(key).is_ok() {
            ct_stat(stat);
        }
        return Hit::Miss;
    }
    let (from_origin, d) = side(v, pkt);
    // C2 echo roles: a request matches only in the direction that opened the flow, a reply
    // only in the other. The echo key already says which side opened the flow (echo_ports),
    // so this only refuses entries keyed before it did (state adopted across an upgrade).
    if pkt.l4 == L4_ICMP && (is_echo_request(pkt) != from_origin) {
        return Hit::Miss;
    }
    let mut packets = v.packets;
    packets[d] += 1;
    let state = next_state(pkt, v.state, from_origin, &packets);
    if !confirmed && state == ct_state::ESTABLISHED {
        return Hit::Promote;
    }
    v.packets[d] = packets[d];
    v.bytes[d] += pkt.len as u64;
    v.seen_ns = now;
    if state != v.state {
        v.state = state;
    }
    Hit::Pass(Verdict::rule(ct_reason(from_origin), v.rule_slot))
}

/// [`promote`] as a BPF-to-BPF call of its own; `PACKED_NONE` never comes back.
// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
fn promote_call(key: &FlowKey, p: *mut FlowVal, pkt: &Pkt) -> Packed {
    pack(Some(promote(key, p, pkt)))
}

/// Moves the `SG_CT_NEW` entry at `p`, which `pkt` makes established, to `SG_CT`: a copy
/// with this packet counted is inserted there, then the `SG_CT_NEW` entry is deleted; no
/// write through `p` after the delete.
#[inline(always)]
fn promote(key: &FlowKey, p: *mut FlowVal, pkt: &Pkt) -> Verdict {
    let v = unsafe { &*p };
    let (from_origin, d) = side(v, pkt);
    let mut nv = *v;
    nv.packets[d] += 1;
    nv.bytes[d] += pkt.len as u64;
    nv.seen_ns = pkt.now;
    nv.state = ct_state::ESTABLISHED;
    nv.flags |= ct_flags::CONFIRMED;
    match SG_CT.insert(key, nv, BPF_NOEXIST as u64) {
        Ok(()) => ct_stat(ct_stat::CT_INSERTS),
        // Another CPU promoted it first: it is in SG_CT, carry on.
        Err(e) if e == -EEXIST => {}
        // SG_CT full (C6): the promotion and its packet are dropped; the flow stays in
        // SG_CT_NEW unchanged and the next packet tries again.
        Err(_) => {
            ct_stat(ct_stat::EXCEEDED);
            return Verdict::of(Reason::DropCtFull);
        }
    }
    if SG_CT_NEW.remove(key).is_ok() {
        ct_stat(ct_stat::NEW_DELETES);
    }
    Verdict::rule(ct_reason(from_origin), nv.rule_slot)
}

/// Creates the flow `pkt` opens, charged to rule `slot`, with the timeouts of its interface
/// `conf`. `PassRuleNew`, or `DropCtFull` when `SG_CT_NEW` is full (C6).
#[inline(always)]
pub fn create(key: &FlowKey, pkt: &Pkt, conf: &IfaceConf, slot: u32) -> Verdict {
    match unpack(create_call(key, pkt, conf, slot)) {
        Some(v) => v,
        // Another CPU created this flow between our lookup and our insert: it is a hit now.
        // (Looked up again from here, not from inside `create_call`, so the two frames are
        // siblings on the stack rather than nested.)
        None => match lookup_cold(key, pkt) {
            Some(v) => v,
            // The key is taken by an entry this packet cannot use (expired meanwhile, or an
            // echo entry keyed before echo keys carried their opener): allowed, stateless.
            None => Verdict::rule(Reason::PassRuleUntracked, slot),
        },
    }
}

/// A BPF-to-BPF call of its own. `None`: the insert lost a race (-EEXIST).
// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
fn create_call(key: &FlowKey, pkt: &Pkt, conf: &IfaceConf, slot: u32) -> Packed {
    pack(create_inline(key, pkt, conf, slot))
}

#[inline(always)]
fn create_inline(key: &FlowKey, pkt: &Pkt, conf: &IfaceConf, slot: u32) -> Option<Verdict> {
    let t = &conf.timeouts;
    let now = pkt.now;
    let (timeouts, state) = match pkt.l4 {
        L4_TCP => {
            let f = pkt.tcp_flags;
            let state = if f & tcp_flags::RST != 0 {
                ct_state::RESET
            } else if f & tcp_flags::FIN != 0 {
                ct_state::CLOSING
            } else {
                ct_state::NEW
            };
            ([t.tcp_established, t.tcp_embryonic, t.tcp_closing], state)
        }
        L4_UDP => ([t.udp_stream, t.udp_single, t.udp_single], ct_state::NEW),
        L4_ICMP => ([t.icmp; 3], ct_state::NEW),
        _ => ([t.other; 3], ct_state::NEW),
    };
    let val = FlowVal {
        created_ns: now,
        seen_ns: now,
        packets: [1, 0],
        bytes: [pkt.len as u64, 0],
        rule_slot: slot,
        timeouts,
        origin: pkt.dir,
        state,
        // L3: a flow created while auditing (everywhere, or on its interface) ends when that
        // audit mode does.
        flags: if audits_conf(conf) {
            ct_flags::AUDIT
        } else {
            0
        },
        _pad: 0,
        _pad2: 0,
    };
    match SG_CT_NEW.insert(key, val, BPF_NOEXIST as u64) {
        Ok(()) => {
            ct_stat(ct_stat::NEW_INSERTS);
            Some(Verdict::rule(Reason::PassRuleNew, slot))
        }
        Err(e) if e == -EEXIST => None,
        Err(_) => {
            ct_stat(ct_stat::EXCEEDED);
            Some(Verdict::of(Reason::DropCtFull))
        }
    }
}
