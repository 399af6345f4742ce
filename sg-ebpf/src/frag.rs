//! Fragments (G1): a first fragment's verdict is recorded; later fragments follow it.
//!
//! Owns `SG_FRAGS` reads and writes. It must not judge a first fragment (the pipeline does,
//! like any packet) nor create or refresh conntrack state: later fragments never do.
use sg_common::{FRAG_TIMEOUT_NS, FragKey, FragVal, Reason};

use crate::{
    maps::SG_FRAGS,
    parse::{L4_ICMP, L4_TCP, L4_UDP, Pkt, addr},
    verdict::{Packed, Verdict, pack, unpack},
};

/// The datagram a fragment belongs to, on this interface and direction: (ifindex, direction,
/// protocol, IP id, source, destination); for IPv6 the protocol is the fragment header's next
/// header (see `Pkt::frag_proto`).
#[inline(always)]
fn key(pkt: &Pkt) -> FragKey {
    FragKey {
        ifindex: pkt.ifindex,
        dir: pkt.dir,
        proto: pkt.frag_proto,
        _pad: [0; 2],
        id: pkt.frag_id,
        _pad2: 0,
        src: addr(&pkt.src),
        dst: addr(&pkt.dst),
    }
}

/// A later fragment (offset > 0), in order:
/// 1. its offset in bytes is below the transport header's minimum length (TCP 20, UDP 8,
///    ICMP 8, others 0): `DropBadFragment` (it would overlap, i.e. rewrite, the header the
///    first fragment was judged on);
/// 2. no record of the first fragment, or one older than `FRAG_TIMEOUT_NS`: `DropFragOrphan`;
/// 3. the first fragment passed: `PassFragment`, charging its rule; else `DropFragDenied`.
#[inline(always)]
pub fn later(pkt: &Pkt) -> Verdict {
    match unpack(later_call(pkt)) {
        Some(v) => v,
        None => Verdict::of(Reason::DropFragOrphan),
    }
}

// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
fn later_call(pkt: &Pkt) -> Packed {
    pack(Some(later_inline(pkt)))
}

#[inline(always)]
fn later_inline(pkt: &Pkt) -> Verdict {
    let min = match pkt.l4 {
        L4_TCP => 20,
        L4_UDP | L4_ICMP => 8,
        _ => 0,
    };
    if (pkt.frag_off as u32) * 8 < min {
        return Verdict::of(Reason::DropBadFragment);
    }
    let k = key(pkt);
    let Some(rec) = (unsafe { SG_FRAGS.get(k) }) else {
        return Verdict::of(Reason::DropFragOrphan);
    };
    if pkt.now.wrapping_sub(rec.first_ns) > FRAG_TIMEOUT_NS {
        return Verdict::of(Reason::DropFragOrphan);
    }
    if rec.pass != 0 {
        Verdict::rule(Reason::PassFragment, rec.rule_slot)
    } else {
        Verdict::of(Reason::DropFragDenied)
    }
}

/// Records a first fragment's verdict. A retransmitted first fragment overwrites the record
/// (its verdict is as current as it gets). A failed write only orphans the later fragments,
/// which fails closed.
// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
pub fn record(pkt: &Pkt, v: &Verdict) {
    let k = key(pkt);
    let val = FragVal {
        first_ns: pkt.now,
        rule_slot: v.slot,
        pass: v.reason.is_pass() as u8,
        reason: v.reason as u8,
        _pad: [0; 2],
    };
    let _ = SG_FRAGS.insert(k, val, 0);
}
