//! Policy (E1-E6): which rule, if any, allows a packet that conntrack did not let through.
//!
//! Owns the reads of `SG_ACTIVE`, `SG_IFACES`, `SG_PEERS` and `SG_PORTS`. It must not create
//! state or count: it answers "which rule", the pipeline acts on it.
//!
//! One peer lookup, then one port lookup per class of the chain until one hits (at most
//! `CLASS_CHAIN`; the compiler merges deeper nesting into the chain's first class):
//! ```text
//!  SG_PEERS  /160  scope (BE, 32 bits) | remote address (128 bits, IPv4 mapped)  -> PeerVal
//!  SG_PORTS  /56   class (BE, 32 bits) | protocol (8) | port (BE, 16)           -> RuleVal
//! ```
//! Precedence (design.md "Pipeline" 6):
//! 1. the interface unknown in the active generation: `DropNoPolicy` (fail closed);
//! 2. no peer prefix of the direction's scope covers the remote address: `DropNoRule`;
//! 3. no (protocol, port) entry of any class of the chain covers the packet: `DropNoRule`;
//! 4. otherwise the entry's rule allows it (its slot is the E4 choice the compiler made).
use aya_ebpf::maps::lpm_trie::Key;
use sg_common::{
    CLASS_CHAIN, DIR_INGRESS, IfaceConf, IfaceKey, PORT_FULL_BITS, PeerData, PortData, RuleVal,
    rule_flags,
};

use crate::{
    maps::{SG_ACTIVE, SG_IFACES, SG_PEERS, SG_PORTS},
    parse::{L4_ICMP, L4_TCP, L4_UDP, Pkt, addr},
};

/// Full prefix of a `PeerData` key: the scope and all 128 address bits.
const PEER_FULL_BITS: u32 = 160;

/// The interface's configuration in the active generation. The generation is read once per
/// call; a swap between two calls is harmless (each answer is one whole generation's).
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceConf> {
    let generation = SG_ACTIVE.get(0).copied().unwrap_or(0);
    unsafe {
        SG_IFACES.get(IfaceKey {
            generation,
            ifindex,
        })
    }
}

/// The rule that allows `pkt` (in its direction) on an interface configured by `conf`.
#[inline(always)]
pub fn rule(conf: &IfaceConf, pkt: &Pkt) -> Option<RuleVal> {
    let (scope, remote) = if pkt.dir == DIR_INGRESS {
        (conf.scope_in, pkt.src)
    } else {
        (conf.scope_out, pkt.dst)
    };
    // E6: the destination port (ingress: local, egress: remote); ICMP: type<<8|code.
    let port = match pkt.l4 {
        L4_TCP | L4_UDP => pkt.dport,
        L4_ICMP => (pkt.icmp_type as u16) << 8 | pkt.icmp_code as u16,
        _ => 0,
    };
    lookup(scope, &remote, pkt.proto, port)
}

/// C4 for answers: true when the packet travelling back (the other direction, the same
/// remote, its destination port = this packet's source port) would be allowed as an
/// untracked flow. Then this TCP/UDP packet belongs to that untracked flow (e.g. the server's
/// SYN-ACK of an untracked SSH session) and must not create state, or X2 would not hold.
#[inline(always)]
pub fn answers_untracked(conf: &IfaceConf, pkt: &Pkt) -> bool {
    if pkt.l4 != L4_TCP && pkt.l4 != L4_UDP {
        return false;
    }
    let (scope, remote) = if pkt.dir == DIR_INGRESS {
        (conf.scope_out, pkt.src)
    } else {
        (conf.scope_in, pkt.dst)
    };
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
    let mut key = Key::new(
        PORT_FULL_BITS,
        PortData {
            class: [0; 4],
            proto,
            port: port.to_be_bytes(),
            _pad: 0,
        },
    );
    for i in 0..CLASS_CHAIN {
        let class = chain.classes[i];
        if class == 0 {
            return None;
        }
        key.data.class = class.to_be_bytes();
        if let Some(r) = SG_PORTS.get(&key) {
            return Some(*r);
        }
    }
    None
}
