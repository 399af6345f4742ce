//! Related ICMP (I2): an ICMP error about a tracked flow passes without any ICMP rule, so
//! path MTU discovery (ICMP 3/4, ICMPv6 2) and traceroute-style errors work.
//!
//! Owns the parsing of the packet an ICMP error quotes. It must not change any state: the
//! flow is only looked up (a dead flow's error is judged by the rules like any ICMP).
//!
//! The quoted packet travelled the opposite way to the error (we sent it, the error comes
//! back), so its flow key is built as if it were seen in the opposite direction. Only fixed
//! reads at bounded offsets: the inner IPv4 header's IHL is honoured; inner IPv6 extension
//! headers are not walked (the quoted next header must be the transport).
use sg_common::{DIR_EGRESS, DIR_INGRESS, proto};

use crate::{
    conntrack::{echo_ports, expired, flow_key},
    ctx::Hook,
    maps::{SG_CT, SG_CT_NEW},
    parse::{FRAG_LATER, Ipv4Hdr, Ipv6Hdr, L4_ICMP, L4Head, Pkt, v4_words},
    verdict::{Packed, Verdict, pack, unpack},
};

/// ICMPv4 destination unreachable, time exceeded, parameter problem; ICMPv6 destination
/// unreachable, packet too big, time exceeded, parameter problem.
#[inline(always)]
fn is_error(pkt: &Pkt) -> bool {
    if pkt.v6 != 0 {
        matches!(pkt.icmp_type, 1..=4)
    } else {
        matches!(pkt.icmp_type, 3 | 11 | 12)
    }
}

/// `PassRelated` (charging the flow's rule) when `pkt` is an ICMP error quoting a packet of
/// a live flow in either conntrack map; `None` otherwise (the policy judges it then).
#[inline(always)]
pub fn lookup<C: Hook>(ctx: &C, pkt: &Pkt) -> Option<Verdict> {
    unpack(lookup_call(ctx, pkt))
}

/// A BPF-to-BPF call of its own: its stack frame is not the entry point's.
// verifier: LLVM "Looks like the BPF stack limit is exceeded" -- a frame of its own (main.rs).
#[inline(never)]
fn lookup_call<C: Hook>(ctx: &C, pkt: &Pkt) -> Packed {
    pack(lookup_inline(ctx, pkt))
}

#[inline(always)]
fn lookup_inline<C: Hook>(ctx: &C, pkt: &Pkt) -> Option<Verdict> {
    let dir = pkt.dir;
    if pkt.l4 != L4_ICMP || pkt.frag == FRAG_LATER || !is_error(pkt) {
        return None;
    }
    // The ICMP header is 8 bytes; the quoted IP header follows.
    let inner = pkt.l4_off + 8;
    let (src, dst, iproto, l4) = if pkt.v6 != 0 {
        let ip: Ipv6Hdr = ctx.load_cold(inner as usize)?;
        if ip.vtcfl[0] >> 4 != 6 {
            return None;
        }
        (ip.src, ip.dst, ip.next, inner + 40)
    } else {
        let ip: Ipv4Hdr = ctx.load_cold(inner as usize)?;
        let ihl = (ip.vihl & 0x0f) as u32 * 4;
        // A quoted later fragment carries no transport header.
        if ip.vihl >> 4 != 4 || ihl < 20 || u16::from_be(ip.frag) & 0x1fff != 0 {
            return None;
        }
        (v4_words(ip.src), v4_words(ip.dst), ip.proto, inner + ihl)
    };
    // The inner IP header plus 8 bytes must be inside the error's datagram.
    if l4 + 8 > pkt.ip_end {
        return None;
    }
    let h: L4Head = ctx.load_cold(l4 as usize)?;
    let icmp = if pkt.v6 != 0 {
        proto::ICMPV6
    } else {
        proto::ICMP
    };
    let odir = if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let ports = if iproto == proto::TCP || iproto == proto::UDP {
        (u16::from_be_bytes([h.b0, h.b1]), u16::from_be(h.w1))
    } else if iproto == icmp {
        // Only echo belongs to a flow. The quoted packet travelled the opposite way: key it
        // as seen in that direction, with its own role (see conntrack::echo_ports).
        let t = h.b0;
        let (request, reply) = if pkt.v6 != 0 {
            (t == 128, t == 129)
        } else {
            (t == 8, t == 0)
        };
        if !request && !reply {
            return None;
        }
        echo_ports(odir, u16::from_be(h.w2), request)
    } else {
        (0, 0)
    };
    let key = flow_key(pkt.ifindex, odir, iproto, &src, &dst, ports);
    let key = key.key();
    // Reads only; a value freed under us is still readable memory (NO_PREALLOC, RCU).
    let flow = match unsafe { SG_CT.get(key) } {
        Some(f) => Some(f),
        None => unsafe { SG_CT_NEW.get(key) },
    };
    let f = flow?;
    if expired(f, pkt.now) {
        return None;
    }
    Some(Verdict::rule(sg_common::Reason::PassRelated, f.rule_slot))
}
