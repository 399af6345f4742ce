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
/// 3. it starts before the end of the first fragment's transport header (which may sit behind
///    IPv6 extension headers of the fragmentable part): `DropBadFragment`;
/// 4. the first fragment passed: `PassFragment`, charging its rule; else `DropFragDenied`.
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

/// The minimum transport header length of a protocol (TCP 20, UDP 8, ICMP 8, others 0).
#[inline(always)]
fn min_l4(l4: u8) -> u32 {
    match l4 {
        L4_TCP => 20,
        L4_UDP | L4_ICMP => 8,
        _ => 0,
    }
}

/// For a first fragment: the end of its minimum transport header, from the start of the
/// fragmentable part. When IPv6 extension headers sit between the fragment header and the
/// transport (the fragment header's next header is not the transport protocol), where the
/// transport header ends is not recorded and every later fragment is refused (fail closed;
/// RFC 8200's header order makes such datagrams rare).
// verifier: recording the exact offset needs a Pkt field written inside the IPv6
// extension-header walk, which took the verifier past 1M processed instructions.
#[inline(always)]
fn l4_end(pkt: &Pkt) -> u16 {
    if pkt.v6 != 0 && pkt.frag_proto != pkt.proto {
        u16::MAX
    } else {
        min_l4(pkt.l4) as u16
    }
}

#[inline(always)]
fn later_inline(pkt: &Pkt) -> Verdict {
    if (pkt.frag_off as u32) * 8 < min_l4(pkt.l4) {
        return Verdict::of(Reason::DropBadFragment);
    }
    let k = key(pkt);
    let Some(rec) = (unsafe { SG_FRAGS.get(k) }) else {
        return Verdict::of(Reason::DropFragOrphan);
    };
    // Saturating: another CPU's record may carry a coarse timestamp one tick newer than ours.
    if pkt.now.saturating_sub(rec.first_ns) > FRAG_TIMEOUT_NS {
        return Verdict::of(Reason::DropFragOrphan);
    }
    // The first fragment knows where its transport header really ends (after any extension
    // headers of the fragmentable part): nothing may start before that either.
    if (pkt.frag_off as u32) * 8 < rec.l4_end as u32 {
        return Verdict::of(Reason::DropBadFragment);
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
        l4_end: l4_end(pkt),
    };
    let _ = SG_FRAGS.insert(k, val, 0);
}
