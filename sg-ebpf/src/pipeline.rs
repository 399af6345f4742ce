//! The pipeline, one for both families, both directions and every hook (design.md):
//!
//! ```text
//! parse -> exemptions -> later-fragment check -> conntrack -> related ICMP -> policy
//!       -> create state (only after allow) -> verdict funnel (count, event, return)
//! ```
//!
//! A router's interface facing a subnet (`iface_flags::NACL`) takes the same road up to the
//! conntrack lookup, which it skips (`SG_NACL_PORTS` gives a router port's lists), then meets
//! the subnet's network ACL instead of related ICMP and the security groups, and never creates
//! state (A1, A22). Exemptions and fragments (G1, A27) are shared.
//!
//! Owns the order of the steps and the exemptions (N1, N2); each step lives in its own file.
//! Every path ends in `funnel::finish`: no early return bypasses the counters.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use sg_common::{DIR_INGRESS, Reason, iface_flags, rule_flags};

use crate::{
    conntrack,
    ctx::Hook,
    frag, funnel,
    parse::{self, FRAG_FIRST, FRAG_LATER, L4_ICMP, L4_UDP, Pkt},
    policy::{self, NaclScopes},
    related,
    verdict::{Packed, Verdict, pack, unpack},
};

/// Judges the packet in `ctx`, seen in direction `dir`, and returns the hook's action.
#[inline(always)]
pub fn run<C: Hook>(ctx: &C, dir: u8) -> u32 {
    let mut pkt = Pkt::new(ctx.ifindex(), dir, ctx.len());
    let v = judge(ctx, &mut pkt);
    funnel::finish::<C>(&pkt, v)
}

#[inline(always)]
fn judge<C: Hook>(ctx: &C, pkt: &mut Pkt) -> Verdict {
    if let Some(reason) = parse::parse(ctx, pkt) {
        return Verdict::of(reason);
    }
    // The coarse clock (CLOCK_MONOTONIC_COARSE: CLOCK_MONOTONIC as of the last timer tick,
    // 1-10 ms old depending on CONFIG_HZ) is a plain read of the timekeeper's cached value;
    // bpf_ktime_get_ns reads the clocksource and was the largest single cost of an
    // established flow's packet (~25 ns of ~85 on a TSC-clocked VM). Every use is measured in
    // seconds: conntrack idle timeouts (C5, >= 1 s) and the 30 s fragment window (G1).
    pkt.now = unsafe { bpf_ktime_get_coarse_ns() };
    let pkt = &*pkt;
    let v = if let Some(reason) = exemption(pkt) {
        Verdict::of(reason)
    } else if pkt.frag == FRAG_LATER {
        return frag::later(pkt);
    } else {
        judge_flow(ctx, pkt)
    };
    if pkt.frag == FRAG_FIRST {
        frag::record(pkt, &v);
    }
    v
}

/// Traffic security groups never filter (N1, N2), both directions, no rule charged:
/// - ICMPv6 133-137 (router solicitation/advertisement, neighbour solicitation/advertisement,
///   redirect): `PassNdp`;
/// - the DHCP client's exchange: IPv4 UDP 67 -> 68 in, 68 -> 67 out; IPv6 UDP 547 -> 546 in,
///   546 -> 547 out: `PassDhcp`.
#[inline(always)]
fn exemption(pkt: &Pkt) -> Option<Reason> {
    if pkt.l4 == L4_ICMP && pkt.v6 != 0 && matches!(pkt.icmp_type, 133..=137) {
        return Some(Reason::PassNdp);
    }
    if pkt.l4 == L4_UDP && pkt.frag != FRAG_LATER {
        let (server, client) = if pkt.v6 != 0 { (547, 546) } else { (67, 68) };
        let dhcp = if pkt.dir == DIR_INGRESS {
            pkt.sport == server && pkt.dport == client
        } else {
            pkt.sport == client && pkt.dport == server
        };
        if dhcp {
            return Some(Reason::PassDhcp);
        }
    }
    None
}

/// Conntrack, related ICMP, policy, state: for a whole packet or a first fragment.
#[inline(always)]
fn judge_flow<C: Hook>(ctx: &C, pkt: &Pkt) -> Verdict {
    // A router port never has conntrack state (A1: it never creates any), so its packets
    // skip the two conntrack misses and the SG_IFACES lookup: SG_NACL_PORTS, an array the
    // verifier inlines, gives its lists (BPF_PROG_TEST_RUN, NACL decision at 20 entries:
    // ~270 -> ~215 ns). A host without router ports pays one read of SG_ACTIVE and a branch.
    let active = policy::active();
    if let Some(lists) = policy::nacl_port(active, pkt.ifindex) {
        return nacl(lists, pkt);
    }
    let key = conntrack::key_of(pkt);
    if let Some(k) = &key
        && let Some(v) = conntrack::lookup(k.key(), pkt)
    {
        return v;
    }
    let conf = policy::iface(active, pkt.ifindex);
    // The agent gives every router port a slot of SG_NACL_PORTS; one that reached here
    // anyway is not judged by security groups: fail closed. Read before related ICMP: a
    // NACL interface passes nothing by state (A22).
    if let Some(c) = conf
        && c.flags & iface_flags::NACL != 0
    {
        return Verdict::of(Reason::DropNaclRule);
    }
    if let Some(v) = related::lookup(ctx, pkt) {
        return v;
    }
    let Some(conf) = conf else {
        return Verdict::of(Reason::DropNoPolicy);
    };
    let Some(rule) = policy::rule(conf, pkt) else {
        return Verdict::of(Reason::DropNoRule);
    };
    match key {
        Some(k)
            if rule.flags & rule_flags::UNTRACKED == 0
                && conntrack::opens_flow(pkt)
                && !policy::answers_untracked(conf, pkt) =>
        {
            conntrack::create(k.key(), pkt, conf, rule.slot)
        }
        // C4 untracked flows (and answers within them), ICMP errors, echo replies and other
        // ICMP types.
        _ => Verdict::rule(Reason::PassRuleUntracked, rule.slot),
    }
}

/// The network ACL's verdict on a NACL interface (A4-A6, A21), stateless:
/// 1. the lowest-numbered entry matching the packet (the compiler put it in the class) denies:
///    `DropNaclRule`, charging it; the `*` rule is such an entry too (A6);
/// 2. the remote address is one of the router's own (A21): `PassRouterLocal`, nothing charged;
/// 3. it allows: `PassNaclRule`, charging it;
/// 4. no entry at all (a generation being torn down, never written by the compiler):
///    `DropNaclRule` with no rule (fail closed).
#[inline(always)]
fn nacl(lists: NaclScopes, pkt: &Pkt) -> Verdict {
    match unpack(nacl_call(lists, pkt)) {
        Some(v) => v,
        None => Verdict::of(Reason::DropNaclRule),
    }
}

// verifier: a frame of its own, like the other cold steps (main.rs): inlined, a second copy of
// the peer and port lookups doubled what the verifier walks after the conntrack miss.
#[inline(never)]
fn nacl_call(lists: NaclScopes, pkt: &Pkt) -> Packed {
    let v = match policy::nacl_rule(lists, pkt) {
        None => Verdict::of(Reason::DropNaclRule),
        Some(r) if r.flags & rule_flags::DENY != 0 => Verdict::rule(Reason::DropNaclRule, r.slot),
        Some(r) if r.flags & rule_flags::ROUTER_LOCAL != 0 => Verdict::of(Reason::PassRouterLocal),
        Some(r) => Verdict::rule(Reason::PassNaclRule, r.slot),
    };
    pack(Some(v))
}
