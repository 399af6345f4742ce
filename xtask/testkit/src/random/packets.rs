//! Random packets and packet SEQUENCES against a policy, for the differential runs (model vs
//! kernel) and property tests.
//!
//! A sequence is generated as a list of [`Action`]s that may refer to earlier packets by
//! index (a reply, an ICMP error about it, a later fragment of it, the same packet again);
//! [`materialize`] resolves them into concrete [`Step`]s. Indexes are taken modulo the number
//! of earlier packets, so every generated list is valid and proptest shrinks it freely.
//!
//! Addresses, ports and ICMP types are drawn from pools derived from the policy (rule prefix
//! edges: first, last, just outside; group members; prefix-list entries; port range ends and
//! their neighbours; ICMP type/code of rules) mixed with arbitrary values, so sequences hit
//! rule boundaries far more often than uniform randomness would.
//!
//! Owns generation only: it must not judge packets (the model does), and it only produces
//! packets both judges can read the same way (no "other protocol" that is really an IPv6
//! extension header, no ICMP protocol number in the wrong family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use sg_agent::packet::{Ext, Frag, L4, Packet, icmp, tcp_flags};
use sg_agent::policy::{Direction, IcmpMatch, Peer, Policy, Protocol};

/// One packet of a sequence: seen on `iface` (a policy interface name) in `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub iface: String,
    pub dir: Direction,
    pub pkt: Packet,
}

/// Transport of a new packet; ports/types are indexes into the policy's pools (or raw).
#[derive(Clone, Debug)]
pub enum L4Spec {
    Tcp { sport: u16, dport: Pick, flags: u8 },
    Udp { sport: u16, dport: Pick },
    Echo { request: bool, id: u16 },
    Icmp { tc: Pick },
    Other { proto: Pick },
}

/// A value from a pool (by index, modulo its length) or an arbitrary one.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    Pool(usize),
    Raw(u16),
}

#[derive(Clone, Debug)]
pub struct NewPacket {
    pub iface: usize,
    pub egress: bool,
    pub v6: bool,
    /// Index into the remote-address pool of the family.
    pub remote: usize,
    /// Use an address that is not the interface's own (a spoofed or routed local side).
    pub foreign_local: bool,
    pub l4: L4Spec,
    /// 0..=3 VLAN tags.
    pub vlan: u8,
    /// IPv4 options / IPv6 extension headers: 0 none, 1 one, 2 several.
    pub ext: u8,
    /// Sent as the first fragment of a datagram with this id.
    pub first_frag: Option<u32>,
    pub payload: u16,
}

#[derive(Clone, Debug)]
pub enum Action {
    New(NewPacket),
    /// The other end answers packet `of` (opposite direction, same interface).
    Reply {
        of: usize,
    },
    /// Packet `of` again (a retransmission, the next packet of its flow).
    Again {
        of: usize,
    },
    /// An ICMP error about packet `of`, sent back towards its source. `kind` picks the error
    /// type; `router` sends it from a third address instead of the packet's destination.
    Error {
        of: usize,
        kind: u8,
        router: bool,
    },
    /// A later fragment of packet `of`'s datagram (an orphan if it was not a first fragment).
    LaterFragment {
        of: usize,
        offset8: u16,
        more: bool,
    },
}

/// Pools of interesting values derived from a policy.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    pub remotes_v4: Vec<IpAddr>,
    pub remotes_v6: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// ICMP `type << 8 | code` values.
    pub icmp: Vec<u16>,
    pub protos: Vec<u8>,
}

/// IPv6 extension header numbers (and the ICMP numbers): never generated as "other".
const NOT_OTHER: [u8; 9] = [0, 1, 6, 17, 43, 44, 51, 58, 60];

impl Pools {
    pub fn of(policy: &Policy) -> Pools {
        let mut p = Pools::default();
        let mut nets: Vec<IpNet> = Vec::new();
        for r in policy.all_rules() {
            match &r.peer {
                Peer::Cidr(n) => nets.push(*n),
                Peer::PrefixList(id) => {
                    if let Some(pl) = policy.prefix_lists.get(id) {
                        nets.extend(pl.entries.iter().copied());
                    }
                }
                Peer::Group(_) => {}
            }
            match r.protocol {
                Protocol::Tcp(pr) | Protocol::Udp(pr) => {
                    for v in [pr.from, pr.to] {
                        p.ports.push(v);
                        p.ports.push(v.saturating_sub(1));
                        p.ports.push(v.saturating_add(1));
                    }
                }
                Protocol::Icmp(m) | Protocol::Icmpv6(m) => match m {
                    IcmpMatch::All => {}
                    IcmpMatch::Type(t) => {
                        p.icmp.push(u16::from(t) << 8);
                        p.icmp.push((u16::from(t) << 8) | 9);
                        p.icmp.push(u16::from(t.wrapping_add(1)) << 8);
                    }
                    IcmpMatch::TypeCode(t, c) => {
                        p.icmp.push((u16::from(t) << 8) | u16::from(c));
                        p.icmp
                            .push((u16::from(t) << 8) | u16::from(c.wrapping_add(1)));
                    }
                },
                Protocol::Number(n) => p.protos.push(n),
                Protocol::All => {}
            }
        }
        for n in nets {
            for a in edges(&n) {
                match a {
                    IpAddr::V4(_) => p.remotes_v4.push(a),
                    IpAddr::V6(_) => p.remotes_v6.push(a),
                }
            }
        }
        for i in &policy.interfaces {
            for a in &i.addresses {
                match a {
                    IpAddr::V4(_) => p.remotes_v4.push(*a),
                    IpAddr::V6(_) => p.remotes_v6.push(*a),
                }
            }
        }
        // Always something outside every rule, and the usual suspects.
        p.remotes_v4.extend(
            ["192.0.2.77", "198.51.100.7", "203.0.113.200"].map(|s| s.parse::<IpAddr>().unwrap()),
        );
        p.remotes_v6.extend(
            ["2001:db8::77", "2001:db8:1::7", "2001:db8:ffff::1"]
                .map(|s| s.parse::<IpAddr>().unwrap()),
        );
        p.ports
            .extend([22, 53, 80, 443, 0, 65535, 67, 68, 546, 547]);
        p.icmp.extend([
            0x0800, 0x0000, 0x8000, 0x8100, 0x0304, 0x0b00, 0x0d00, 0x8700,
        ]);
        p.protos.extend([47, 50, 59, 132]);
        p.protos.retain(|n| !NOT_OTHER.contains(n));
        for v in [&mut p.remotes_v4, &mut p.remotes_v6] {
            v.sort();
            v.dedup();
        }
        p.ports.sort();
        p.ports.dedup();
        p.icmp.sort();
        p.icmp.dedup();
        p.protos.sort();
        p.protos.dedup();
        p
    }

    fn pick<T: Copy>(pool: &[T], i: usize) -> T {
        pool[i % pool.len()]
    }
}

/// The first and last address of a prefix, the ones just outside it, and one inside.
fn edges(n: &IpNet) -> Vec<IpAddr> {
    // Both families as u128 (IPv4 in the low 32 bits), bounded by the family's last address.
    let (lo, hi, max) = match n {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
            u128::from(u32::MAX),
        ),
        IpNet::V6(n) => (
            u128::from(n.network()),
            u128::from(n.broadcast()),
            u128::MAX,
        ),
    };
    let mut v = vec![lo, hi, lo + (hi - lo) / 2];
    v.extend(lo.checked_sub(1));
    v.extend(hi.checked_add(1).filter(|&x| x <= max));
    v.into_iter()
        .map(|x| match n {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(x as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(x)),
        })
        // IPv4-mapped IPv6 addresses are judged as IPv4 by the kernel: not generated.
        .filter(|a| match a {
            IpAddr::V6(a) => a.to_ipv4_mapped().is_none(),
            IpAddr::V4(_) => true,
        })
        .collect()
}

fn arb_pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => any::<usize>().prop_map(Pick::Pool),
        1 => any::<u16>().prop_map(Pick::Raw),
    ]
}

fn arb_flags() -> impl Strategy<Value = u8> {
    use tcp_flags::*;
    prop_oneof![
        4 => Just(SYN),
        3 => Just(ACK),
        1 => Just(SYN | ACK),
        1 => Just(PSH | ACK),
        1 => Just(FIN | ACK),
        1 => Just(RST),
    ]
}

fn arb_l4() -> impl Strategy<Value = L4Spec> {
    let ephemeral = prop_oneof![4 => 32768u16..61000, 1 => any::<u16>()];
    prop_oneof![
        4 => (ephemeral.clone(), arb_pick(), arb_flags())
            .prop_map(|(sport, dport, flags)| L4Spec::Tcp { sport, dport, flags }),
        3 => (ephemeral, arb_pick()).prop_map(|(sport, dport)| L4Spec::Udp { sport, dport }),
        2 => (any::<bool>(), 0u16..4).prop_map(|(request, id)| L4Spec::Echo { request, id }),
        1 => arb_pick().prop_map(|tc| L4Spec::Icmp { tc }),
        1 => arb_pick().prop_map(|proto| L4Spec::Other { proto }),
    ]
}

fn arb_new() -> impl Strategy<Value = NewPacket> {
    (
        any::<usize>(),
        any::<bool>(),
        prop_oneof![3 => Just(false), 2 => Just(true)],
        any::<usize>(),
        prop_oneof![9 => Just(false), 1 => Just(true)],
        arb_l4(),
        prop_oneof![12 => Just(0u8), 2 => Just(1), 2 => Just(2), 1 => Just(3)],
        prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)],
        prop_oneof![8 => Just(None), 1 => (1u32..6).prop_map(Some)],
        prop_oneof![3 => 0u16..64, 1 => 64u16..1400],
    )
        .prop_map(
            |(iface, egress, v6, remote, foreign_local, l4, vlan, ext, first_frag, payload)| {
                NewPacket {
                    iface,
                    egress,
                    v6,
                    remote,
                    foreign_local,
                    l4,
                    vlan,
                    ext,
                    first_frag,
                    payload,
                }
            },
        )
}

/// One action of a sequence; earlier packets are referred to by (any) index.
pub fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => arb_new().prop_map(Action::New),
        4 => any::<usize>().prop_map(|of| Action::Reply { of }),
        2 => any::<usize>().prop_map(|of| Action::Again { of }),
        2 => (any::<usize>(), any::<u8>(), any::<bool>())
            .prop_map(|(of, kind, router)| Action::Error { of, kind, router }),
        2 => (any::<usize>(), prop_oneof![1 => 0u16..4, 3 => 4u16..200], any::<bool>())
            .prop_map(|(of, offset8, more)| Action::LaterFragment { of, offset8, more }),
    ]
}

/// Action lists of `len` (the first action is always a new packet once materialized).
pub fn arb_actions(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Action>> {
    proptest::collection::vec(arb_action(), len)
}

/// A sequence of steps against `policy` (which must have at least one interface).
pub fn arb_sequence(
    policy: &Policy,
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Step>> + use<> {
    let policy = policy.clone();
    let pools = Pools::of(&policy);
    arb_actions(len).prop_map(move |a| materialize(&policy, &pools, &a))
}

/// Resolves actions into steps. References to earlier packets wrap around; a reference with
/// no earlier packet becomes a fresh packet built from the index.
pub fn materialize(policy: &Policy, pools: &Pools, actions: &[Action]) -> Vec<Step> {
    assert!(
        !policy.interfaces.is_empty(),
        "sequences need an interface in the policy"
    );
    let mut steps: Vec<Step> = Vec::with_capacity(actions.len());
    let mut next_frag_id = 0x100u32;
    for a in actions {
        let prev =
            |of: usize| -> Option<&Step> { (!steps.is_empty()).then(|| &steps[of % steps.len()]) };
        let step = match a {
            Action::New(n) => new_packet(policy, pools, n),
            Action::Reply { of } => match prev(*of) {
                Some(s) => Step {
                    iface: s.iface.clone(),
                    dir: s.dir.opposite(),
                    pkt: s.pkt.reply(),
                },
                None => fallback(policy, pools, *of),
            },
            Action::Again { of } => match prev(*of) {
                Some(s) => s.clone(),
                None => fallback(policy, pools, *of),
            },
            Action::Error { of, kind, router } => match prev(*of) {
                Some(s)
                    if !matches!(s.pkt.l4, L4::IcmpError { .. }) && !s.pkt.is_later_fragment() =>
                {
                    let v6 = s.pkt.is_v6();
                    let kinds: [(u8, u8); 4] = if v6 {
                        [
                            (icmp::V6_PACKET_TOO_BIG, 0),
                            (icmp::V6_DEST_UNREACH, 4),
                            (icmp::V6_TIME_EXCEEDED, 0),
                            (icmp::V6_PARAM_PROBLEM, 0),
                        ]
                    } else {
                        [
                            (icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED),
                            (icmp::V4_DEST_UNREACH, 1),
                            (icmp::V4_TIME_EXCEEDED, 0),
                            (icmp::V4_PARAM_PROBLEM, 0),
                        ]
                    };
                    let (ty, code) = kinds[usize::from(*kind) % 4];
                    let from = if *router {
                        if v6 {
                            "2001:db8:ff::1".parse().unwrap()
                        } else {
                            "203.0.113.254".parse().unwrap()
                        }
                    } else {
                        s.pkt.dst
                    };
                    Step {
                        iface: s.iface.clone(),
                        dir: s.dir.opposite(),
                        pkt: s.pkt.error_reply(from, ty, code),
                    }
                }
                Some(s) => s.clone(),
                None => fallback(policy, pools, *of),
            },
            Action::LaterFragment { of, offset8, more } => match prev(*of) {
                Some(s) if !matches!(s.pkt.l4, L4::IcmpError { .. }) => {
                    let mut p = s.pkt.clone();
                    let id = match s.pkt.frag {
                        Some(f) => f.id,
                        None => {
                            next_frag_id += 1;
                            next_frag_id
                        }
                    };
                    p.frag = Some(Frag::later(id, offset8 * 8, *more));
                    p.payload_len = 40;
                    Step {
                        iface: s.iface.clone(),
                        dir: s.dir,
                        pkt: p,
                    }
                }
                Some(s) => s.clone(),
                None => fallback(policy, pools, *of),
            },
        };
        steps.push(step);
    }
    steps
}

fn fallback(policy: &Policy, pools: &Pools, seed: usize) -> Step {
    new_packet(
        policy,
        pools,
        &NewPacket {
            iface: seed,
            egress: seed % 2 == 1,
            v6: seed % 3 == 2,
            remote: seed,
            foreign_local: false,
            l4: L4Spec::Tcp {
                sport: 40000 + (seed % 1000) as u16,
                dport: Pick::Pool(seed),
                flags: tcp_flags::SYN,
            },
            vlan: 0,
            ext: 0,
            first_frag: None,
            payload: 0,
        },
    )
}

fn new_packet(policy: &Policy, pools: &Pools, n: &NewPacket) -> Step {
    let iface = &policy.interfaces[n.iface % policy.interfaces.len()];
    let v6 = n.v6;
    let own: Vec<IpAddr> = iface
        .addresses
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    let local = if own.is_empty() || n.foreign_local {
        if v6 {
            "2001:db8::fa".parse().unwrap()
        } else {
            "192.0.2.250".parse().unwrap()
        }
    } else {
        own[n.remote % own.len()]
    };
    let remote = if v6 {
        Pools::pick(&pools.remotes_v6, n.remote)
    } else {
        Pools::pick(&pools.remotes_v4, n.remote)
    };
    let port = |p: Pick| match p {
        Pick::Pool(i) => Pools::pick(&pools.ports, i),
        Pick::Raw(v) => v,
    };
    let l4 = match &n.l4 {
        L4Spec::Tcp {
            sport,
            dport,
            flags,
        } => L4::Tcp {
            sport: *sport,
            dport: port(*dport),
            flags: *flags,
        },
        L4Spec::Udp { sport, dport } => L4::Udp {
            sport: *sport,
            dport: port(*dport),
        },
        L4Spec::Echo { request, id } => L4::IcmpEcho {
            request: *request,
            id: *id,
            seq: 1,
        },
        L4Spec::Icmp { tc } => {
            let v = match tc {
                Pick::Pool(i) => Pools::pick(&pools.icmp, *i),
                Pick::Raw(v) => *v,
            };
            let (ty, code) = ((v >> 8) as u8, v as u8);
            // Echo and error types have their own variants (errors need a quoted packet).
            let special = if v6 {
                matches!(ty, 1..=4 | 128 | 129)
            } else {
                matches!(ty, 0 | 3 | 8 | 11 | 12)
            };
            if special {
                L4::IcmpOther { ty: 13, code }
            } else {
                L4::IcmpOther { ty, code }
            }
        }
        L4Spec::Other { proto } => {
            let p = match proto {
                Pick::Pool(i) => Pools::pick(&pools.protos, *i),
                Pick::Raw(v) => *v as u8,
            };
            L4::Other {
                proto: if NOT_OTHER.contains(&p) { 47 } else { p },
            }
        }
    };
    let (src, dst, dir) = if n.egress {
        (local, remote, Direction::Egress)
    } else {
        (remote, local, Direction::Ingress)
    };
    let mut pkt = Packet::new(src, dst, l4).with_payload(n.payload);
    pkt.vlan = (0..n.vlan).map(|i| 100 + u16::from(i)).collect();
    pkt.ext = match (v6, n.ext) {
        (_, 0) => vec![],
        (false, 1) => vec![Ext::v4_router_alert()],
        (false, _) => vec![Ext::v4_router_alert(), Ext::V4Option(vec![1, 1, 1, 1])],
        (true, 1) => vec![Ext::HopByHop { len8: 0 }],
        (true, _) => vec![
            Ext::HopByHop { len8: 0 },
            Ext::DestOpts { len8: 1 },
            Ext::Routing { len8: 0 },
        ],
    };
    if let Some(id) = n.first_frag {
        pkt.frag = Some(Frag::first(id));
    }
    Step {
        iface: iface.name.clone(),
        dir,
        pkt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::{Config, TestRunner};
    use sg_agent::model::build::*;
    use std::cell::Cell;

    fn policy() -> Policy {
        PolicyBuilder::new()
            .ingress("sg-a", tcp(22), cidr("198.51.100.0/24"))
            .ingress("sg-a", udp_range(1000, 2000), cidr("2001:db8:1::/48"))
            .ingress("sg-a", icmp_type(8), cidr("0.0.0.0/0"))
            .egress("sg-a", all(), cidr("0.0.0.0/0"))
            .ingress("sg-a", Protocol::Number(132), sg("sg-a"))
            .iface("eth0", &["192.0.2.10", "2001:db8::10"], &["sg-a"])
            .iface("eth1", &["192.0.2.11"], &["sg-a"])
            .build()
    }

    #[test]
    fn pools_hold_prefix_edges_port_neighbours_and_members() {
        let p = Pools::of(&policy());
        for a in [
            "198.51.100.0",
            "198.51.100.255",
            "198.51.99.255",
            "198.51.101.0",
            "192.0.2.11",
        ] {
            assert!(p.remotes_v4.contains(&a.parse().unwrap()), "{a}");
        }
        assert!(p.remotes_v6.contains(&"2001:db8:1::".parse().unwrap()));
        for port in [21, 22, 23, 999, 1000, 2000, 2001] {
            assert!(p.ports.contains(&port), "{port}");
        }
        assert!(p.protos.contains(&132) && !p.protos.iter().any(|n| NOT_OTHER.contains(n)));
    }

    #[test]
    fn sequences_build_frames_and_refer_to_earlier_packets() {
        let pol = policy();
        let mut runner = TestRunner::new(Config::with_cases(200));
        let (replies, errors, later) = (Cell::new(0), Cell::new(0), Cell::new(0));
        runner
            .run(&arb_sequence(&pol, 1..30), |steps| {
                for (i, s) in steps.iter().enumerate() {
                    let f = s.pkt.to_frame();
                    prop_assert!(f.len() >= 14 + 20);
                    prop_assert!(pol.interface(&s.iface).is_some());
                    prop_assert_eq!(s.pkt.src.is_ipv6(), s.pkt.dst.is_ipv6());
                    if let L4::Other { proto } = s.pkt.l4 {
                        prop_assert!(!NOT_OTHER.contains(&proto));
                    }
                    if let L4::IcmpError { inner, .. } = &s.pkt.l4 {
                        errors.set(errors.get() + 1);
                        // The quoted packet was seen earlier.
                        let seen = steps[..i]
                            .iter()
                            .any(|e| e.pkt.src == inner.src && e.pkt.dst == inner.dst);
                        prop_assert!(seen, "error about an unseen packet");
                    }
                    if s.pkt.is_later_fragment() {
                        later.set(later.get() + 1);
                    }
                    if i > 0 && steps[..i].iter().any(|e| e.pkt.reply() == s.pkt) {
                        replies.set(replies.get() + 1);
                    }
                }
                Ok(())
            })
            .unwrap();
        let (r, e, l) = (replies.get(), errors.get(), later.get());
        assert!(
            r > 50 && e > 20 && l > 20,
            "replies {r}, errors {e}, later fragments {l}"
        );
    }
}
