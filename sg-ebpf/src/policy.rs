//! Policy (E1-E6): which rule, if any, allows a packet that conntrack did not let through.
//!
//! Owns the reads of `SG_ACTIVE`, `SG_IFACES`, `SG_PEERS` and `SG_PORTS`. It must not create
//! state or count: it answers "which rule", the pipeline acts on it.
//!
//! One peer lookup, then the classes of the chain in order until one answers (at most
//! `CLASS_CHAIN`; the compiler merges deeper nesting into the chain's first class):
//! ```text
//!  SG_PEERS  LPM /160  scope (BE, 32 bits) | remote address (128 bits, IPv4 mapped) -> PeerVal
//!  SG_PORTS  hash      (class, protocol, page)                                      -> PortPage
//! ```
//! A class answers from its page tree for the protocol (a hash hit and a 4-step binary search
//! per level; most classes have one level), or from its every-protocol page when it has no
//! tree for the protocol. The cost of a class does not grow with the policy: a hash lookup,
//! where an LPM trie over every class's ports walks ~log2(entries) nodes.
//! Precedence (design.md "Pipeline" 6):
//! 1. the interface unknown in the active generation: `DropNoPolicy` (fail closed);
//! 2. no peer prefix of the direction's scope covers the remote address: `DropNoRule`;
//! 3. no (protocol, port) entry of any class of the chain covers the packet: `DropNoRule`;
//! 4. otherwise the entry's rule allows it (its slot is the E4 choice the compiler made).
//!
//! On a network ACL interface the same two maps answer with the lowest-numbered entry of the
//! list (see [`nacl_rule`]); the cost stays flat in the number of entries. A router port's
//! scopes come from `SG_NACL_PORTS` ([`nacl_port`]).
use aya_ebpf::maps::lpm_trie::Key;
use sg_common::{
    CLASS_CHAIN, DIR_INGRESS, IfaceConf, IfaceKey, NO_RULE_SLOT, PAGE_LEVELS, PAGE_SEGS, PeerData,
    PortKey, PortPage, RuleVal, active, iface_flags, nacl_port_slot, rule_flags,
};

use crate::{
    maps::{SG_ACTIVE, SG_IFACES, SG_NACL_PORTS, SG_PEERS, SG_PORTS, audit_on},
    parse::{L4_ICMP, L4_TCP, L4_UDP, Pkt, addr},
};

/// Full prefix of a `PeerData` key: the scope and all 128 address bits.
const PEER_FULL_BITS: u32 = 160;

/// `SG_ACTIVE`'s value (`sg_common::active`): the live generation and what it holds. Read
/// once per packet and passed to the reads below, so one packet's answers all come from one
/// generation; a swap between two packets is harmless (each sees one whole generation).
#[inline(always)]
pub fn active() -> u32 {
    SG_ACTIVE.get(0).copied().unwrap_or(0)
}

/// The interface's configuration in the generation `active` names.
#[inline(always)]
pub fn iface(active: u32, ifindex: u32) -> Option<&'static IfaceConf> {
    unsafe {
        SG_IFACES.get(IfaceKey {
            generation: active & active::GENERATION,
            ifindex,
        })
    }
}

/// Audit mode (L3) for a packet of interface `ifindex`: the global switch, or the interface's
/// own flag. The interface is looked up only when the generation has an auditing interface.
/// Read on the drop and flow-creation paths only.
#[inline(always)]
pub fn audits(ifindex: u32) -> bool {
    if audit_on() {
        return true;
    }
    let active = active();
    active & active::AUDIT_IFACES != 0
        && iface(active, ifindex).is_some_and(|c| c.flags & iface_flags::AUDIT != 0)
}

/// [`audits`] for an interface whose configuration is at hand.
#[inline(always)]
pub fn audits_conf(conf: &IfaceConf) -> bool {
    conf.flags & iface_flags::AUDIT != 0 || audit_on()
}

/// A router port's two lists: the NACL's inbound list (`IfaceConf::scope_in`) and its
/// outbound list (`IfaceConf::scope_out`).
#[derive(Clone, Copy)]
pub struct NaclScopes {
    pub inbound: u32,
    pub outbound: u32,
}

/// The scopes of `ifindex` when `SG_NACL_PORTS` says it is a router port of the generation
/// `active` names; None otherwise. A host without router ports pays the branch on
/// `active::ROUTER_PORTS` only. The agent refuses a router port beyond the array.
#[inline(always)]
pub fn nacl_port(active: u32, ifindex: u32) -> Option<NaclScopes> {
    if active & active::ROUTER_PORTS == 0 {
        return None;
    }
    let v = *SG_NACL_PORTS.get(nacl_port_slot(ifindex, active & active::GENERATION)?)?;
    if v == 0 {
        return None;
    }
    Some(NaclScopes {
        inbound: (v >> 32) as u32,
        outbound: v as u32,
    })
}

/// The rule that allows `pkt` (in its direction) on an interface configured by `conf`.
#[inline(always)]
pub fn rule(conf: &IfaceConf, pkt: &Pkt) -> Option<RuleVal> {
    let (scope, remote) = if pkt.dir == DIR_INGRESS {
        (conf.scope_in, pkt.src)
    } else {
        (conf.scope_out, pkt.dst)
    };
    lookup(scope, &remote, pkt.proto, port_of(pkt))
}

/// E6, A18, A19: the destination port (ingress: local, egress: remote); ICMP: type<<8|code.
#[inline(always)]
fn port_of(pkt: &Pkt) -> u16 {
    match pkt.l4 {
        L4_TCP | L4_UDP => pkt.dport,
        L4_ICMP => (pkt.icmp_type as u16) << 8 | pkt.icmp_code as u16,
        _ => 0,
    }
}

/// The network ACL entry deciding `pkt` on a NACL interface (`iface_flags::NACL`): at hook
/// ingress the packet leaves the subnet and meets the outbound list (`scope_out`) by its
/// destination; at egress it enters and meets the inbound list (`scope_in`) by its source
/// (A13, A14). The compiler's classes answer every point with the lowest-numbered matching
/// entry or the family's `*` rule (A4, A6), so one class decides: `rule_flags::DENY` or
/// `rule_flags::ROUTER_LOCAL` say what the pipeline does with it.
#[inline(always)]
pub fn nacl_rule(lists: NaclScopes, pkt: &Pkt) -> Option<RuleVal> {
    let (scope, remote) = if pkt.dir == DIR_INGRESS {
        (lists.outbound, pkt.dst)
    } else {
        (lists.inbound, pkt.src)
    };
    lookup(scope, &remote, pkt.proto, port_of(pkt))
}

/// C4 for answers: true when the packet travelling back (the other direction, the same
/// remote, its destination port = this packet's source port) would be allowed as an
/// untracked flow. Then this TCP/UDP packet belongs to that untracked flow (e.g. the server's
/// SYN-ACK of an untracked SSH session) and must not create state, or X2 would not hold.
/// Skipped (false) when the compiler marked the other direction's scope as having no
/// untracked point.
#[inline(always)]
pub fn answers_untracked(conf: &IfaceConf, pkt: &Pkt) -> bool {
    if pkt.l4 != L4_TCP && pkt.l4 != L4_UDP {
        return false;
    }
    let (scope, remote, tracked_only) = if pkt.dir == DIR_INGRESS {
        (conf.scope_out, pkt.src, iface_flags::TRACKED_ONLY_OUT)
    } else {
        (conf.scope_in, pkt.dst, iface_flags::TRACKED_ONLY_IN)
    };
    if conf.flags & tracked_only != 0 {
        return false;
    }
    match lookup(scope, &remote, pkt.proto, pkt.sport) {
        Some(r) => r.flags & rule_flags::UNTRACKED != 0,
        None => false,
    }
}

#[inline(always)]
fn lookup(scope: u32, remote: &[u32; 4], proto: u8, port: u16) -> Option<RuleVal> {
    let chain = SG_PEERS.get(Key::new(
        PEER_FULL_BITS,
        PeerData {
            scope: scope.to_be_bytes(),
            addr: addr(remote),
        },
    ))?;
    for i in 0..CLASS_CHAIN {
        let class = chain.classes[i];
        if class == 0 {
            return None;
        }
        if let Some(r) = class_rule(class, proto, port) {
            return Some(r);
        }
    }
    None
}

/// The rule class `class` answers for (proto, port) with, or None (no rule of it covers the
/// point; a missing or too deep page, which the compiler never writes, is None too).
///
/// The key is lent to every lookup, not passed by value as clippy suggests: by value, each
/// lookup copies it into a stack slot of its own (measured: +72 instructions in sg_xdp_in,
/// +29k instructions processed by the verifier in sg_tc_in).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, every lookup copies the key: +72 BPF instructions"
)]
fn class_rule(class: u32, proto: u8, port: u16) -> Option<RuleVal> {
    let mut key = PortKey {
        class,
        proto,
        any: 0,
        page: 0,
    };
    let mut page = match unsafe { SG_PORTS.get(&key) } {
        Some(p) => p,
        None => {
            key.proto = 0;
            key.any = 1;
            unsafe { SG_PORTS.get(&key) }?
        }
    };
    for _ in 0..PAGE_LEVELS {
        let v = search(page, port);
        if v.flags & rule_flags::PAGE == 0 {
            return if v.slot == NO_RULE_SLOT {
                None
            } else {
                Some(v)
            };
        }
        key.page = v.slot as u16;
        page = unsafe { SG_PORTS.get(&key) }?;
    }
    None
}

/// The segment of `point` in `page`: the last `i` with `starts[i] <= point` (`starts[0]` is at
/// most every point that reaches the page), by a branch per bit of the index.
#[inline(always)]
fn search(page: &PortPage, point: u16) -> RuleVal {
    let mut i = 0usize;
    let mut step = PAGE_SEGS / 2;
    while step > 0 {
        let j = (i + step) & (PAGE_SEGS - 1);
        if page.starts[j] <= point {
            i = j;
        }
        step /= 2;
    }
    page.vals[i & (PAGE_SEGS - 1)]
}
