//! Random network ACL cases for the NACL differential (issue 17): a policy with one or two
//! NACLs and up to three subnets, the router's ports facing those subnets and its own
//! addresses, and packet sequences aimed at the lists' boundaries.
//!
//! Generation is biased toward what a first-match compiler gets wrong: interleaved allow and
//! deny, nested and disjoint CIDRs from a small pool (so the same CIDR often appears twice
//! with different numbers), `-1`, TCP/UDP ranges sharing edges, ICMP type/code with
//! wildcards, other protocol numbers (58 with an IPv4 CIDR included, A17), both families, an
//! IPv6 entry covering the IPv4-mapped block (A8), and router addresses inside the lists'
//! CIDRs (A21). Packets hit CIDR edges (first, last, one outside), port range edges, ICMP
//! types and codes of the lists, ICMP errors (A22) and fragment pairs (A27).
//!
//! It owns no semantics: it only builds inputs that the validator would accept (numbers
//! unique per list across families, A7; protocols normalised as `policy::NaclEntry` says).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::select;

use sg_agent::packet::{Frag, Packet, tcp_flags};
use sg_agent::policy::{
    Direction, Family, IcmpMatch, NaclAction, NaclEntry, NaclId, NetworkAcl, Origin, Policy,
    PortRange, Protocol, Subnet, SubnetId,
};

use super::packets::Step;

const V4_CIDRS: &[&str] = &[
    "0.0.0.0/0",
    "192.0.2.0/24",
    "192.0.2.0/25",
    "192.0.2.128/25",
    "192.0.2.64/26",
    "192.0.2.7/32",
    "198.51.100.0/24",
    "198.51.100.128/25",
    "203.0.113.0/24",
    "203.0.113.0/28",
];
const V6_CIDRS: &[&str] = &[
    "::/0",
    "::ffff:0:0/96",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1::/64",
    "2001:db8:1::7/128",
    "2001:db8:2::/48",
];
const PORTS: &[u16] = &[
    0, 1, 21, 22, 23, 53, 80, 443, 1023, 1024, 32768, 60999, 65534, 65535,
];
const ICMP_TYPES: &[u8] = &[0, 2, 3, 8, 11, 128, 129];
const ICMP_CODES: &[u8] = &[0, 1, 4];
const OTHER_PROTOS: &[u8] = &[47, 132];
const ROUTER_ADDRS: &[&str] = &[
    "192.0.2.1",
    "192.0.2.7",
    "198.51.100.129",
    "2001:db8:1::1",
    "2001:db8:1::7",
];
/// The router's ports, in order: the differential binds them to its namespace's devices.
pub const PORT_NAMES: [&str; 3] = ["p0", "p1", "p2"];

/// A router's NACL setup.
#[derive(Clone, Debug)]
pub struct NaclCase {
    pub policy: Policy,
    /// Port name -> the subnet it faces.
    pub ports: BTreeMap<String, SubnetId>,
    pub addrs: Vec<IpAddr>,
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a pool CIDR")
}

fn arb_range() -> impl Strategy<Value = PortRange> {
    (select(PORTS), select(PORTS)).prop_map(|(a, b)| PortRange {
        from: a.min(b),
        to: a.max(b),
    })
}

fn arb_icmp() -> impl Strategy<Value = IcmpMatch> {
    prop_oneof![
        Just(IcmpMatch::All),
        select(ICMP_TYPES).prop_map(IcmpMatch::Type),
        (select(ICMP_TYPES), select(ICMP_CODES)).prop_map(|(t, c)| IcmpMatch::TypeCode(t, c)),
    ]
}

/// A protocol as validation leaves it for an entry of `fam` (A17-A19).
fn arb_protocol(fam: Family) -> BoxedStrategy<Protocol> {
    let icmp = match fam {
        Family::V4 => arb_icmp().prop_map(Protocol::Icmp).boxed(),
        Family::V6 => prop_oneof![
            arb_icmp().prop_map(Protocol::Icmpv6),
            arb_icmp().prop_map(Protocol::Icmp)
        ]
        .boxed(),
    };
    let other = match fam {
        // A17: 58 with an IPv4 CIDR is a plain number, all of its traffic.
        Family::V4 => prop_oneof![select(OTHER_PROTOS), Just(58u8)].boxed(),
        Family::V6 => select(OTHER_PROTOS).boxed(),
    };
    prop_oneof![
        1 => Just(Protocol::All),
        3 => arb_range().prop_map(Protocol::Tcp),
        2 => arb_range().prop_map(Protocol::Udp),
        2 => icmp,
        1 => other.prop_map(Protocol::Number),
    ]
    .boxed()
}

fn arb_entry() -> impl Strategy<Value = NaclEntry> {
    let cidr = prop_oneof![3 => select(V4_CIDRS), 2 => select(V6_CIDRS)].prop_map(net);
    (
        // A small number range: interleaving, and renumbering pressure.
        1u16..200,
        // One deny in three: allows must win often enough to be seen.
        proptest::bool::weighted(1.0 / 3.0),
        cidr,
    )
        .prop_flat_map(|(number, deny, cidr)| {
            arb_protocol(Family::of_net(&cidr)).prop_map(move |protocol| NaclEntry {
                number,
                action: if deny {
                    NaclAction::Deny
                } else {
                    NaclAction::Allow
                },
                protocol,
                cidr,
                origin: Origin::default(),
            })
        })
}

/// A list: numbers unique across families (A7), sorted by number.
fn arb_list() -> impl Strategy<Value = Vec<NaclEntry>> {
    proptest::collection::vec(arb_entry(), 0..10).prop_map(|mut v| {
        let mut seen = BTreeSet::new();
        v.retain(|e| seen.insert(e.number));
        v.sort_by_key(|e| e.number);
        v
    })
}

pub fn arb_nacl_case() -> impl Strategy<Value = NaclCase> {
    (
        proptest::collection::vec((arb_list(), arb_list()), 1..=2),
        proptest::collection::vec(0usize..2, 1..=3),
        proptest::sample::subsequence(ROUTER_ADDRS, 0..=3),
    )
        .prop_map(|(lists, subnet_acls, addrs)| {
            let acls: BTreeMap<NaclId, NetworkAcl> = lists
                .into_iter()
                .enumerate()
                .map(|(i, (inbound, outbound))| {
                    let id = NaclId(format!("acl-{i:017x}"));
                    let acl = NetworkAcl {
                        id: id.clone(),
                        is_default: i == 0,
                        inbound,
                        outbound,
                        origin: Origin::default(),
                    };
                    (id, acl)
                })
                .collect();
            let ids: Vec<NaclId> = acls.keys().cloned().collect();
            let subnets: Vec<Subnet> = subnet_acls
                .iter()
                .enumerate()
                .map(|(i, a)| Subnet {
                    id: SubnetId(format!("subnet-{i:017x}")),
                    cidrs: vec![
                        net(&format!("192.0.2.{}/26", i * 64)),
                        net(&format!("2001:db8:a{i}::/64")),
                    ],
                    network_acl: ids[a % ids.len()].clone(),
                    router_device: Some(PORT_NAMES[i].to_string()),
                    origin: Origin::default(),
                })
                .collect();
            let ports = subnets
                .iter()
                .enumerate()
                .map(|(i, s)| (PORT_NAMES[i].to_string(), s.id.clone()))
                .collect();
            NaclCase {
                policy: Policy {
                    network_acls: acls,
                    subnets,
                    ..Policy::default()
                },
                ports,
                addrs: addrs
                    .iter()
                    .map(|a| a.parse().expect("a pool address"))
                    .collect(),
            }
        })
}

/// Inside the documentation ranges (the only addresses a test may use).
fn documentation(a: &IpAddr) -> bool {
    [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
    ]
    .iter()
    .any(|n| net(n).contains(a))
}

/// The remote addresses worth trying against `case`: each entry CIDR's first and last
/// address and the ones just outside, the router's addresses, and a few fixed ones.
pub fn remotes(case: &NaclCase) -> Vec<IpAddr> {
    let mut out: BTreeSet<IpAddr> = case.addrs.iter().copied().collect();
    for s in [
        "198.51.100.7",
        "203.0.113.9",
        "2001:db8:1::9",
        "2001:db8:ff::1",
    ] {
        out.insert(s.parse().expect("fixed address"));
    }
    for acl in case.policy.network_acls.values() {
        for e in acl.inbound.iter().chain(&acl.outbound) {
            let (first, last) = match e.cidr {
                IpNet::V4(n) => (
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                ),
                IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
            };
            for x in [
                first.wrapping_sub(1),
                first,
                first + 1,
                last,
                last.wrapping_add(1),
            ] {
                let a = match e.cidr {
                    IpNet::V4(_) => IpAddr::V4((x as u32).into()),
                    IpNet::V6(_) => IpAddr::V6(x.into()),
                };
                out.insert(a);
            }
        }
    }
    out.into_iter().filter(documentation).collect()
}

/// One packet to try: which port and hook direction, the remote and the transport, by pool
/// index (resolved against the case by [`materialize`]).
#[derive(Clone, Debug)]
pub struct Shot {
    port: usize,
    egress: bool,
    remote: usize,
    kind: u8,
    a: usize,
    b: usize,
    fragmented: bool,
}

pub fn arb_shots(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Shot>> {
    let shot = (
        0usize..3,
        any::<bool>(),
        any::<usize>(),
        0u8..8,
        any::<usize>(),
        any::<usize>(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(port, egress, remote, kind, a, b, fragmented)| Shot {
            port,
            egress,
            remote,
            kind,
            a,
            b,
            fragmented,
        });
    proptest::collection::vec(shot, len)
}

/// The local end of a packet on a port: a host of the port's subnet, of the remote's family.
fn local(port: usize, remote: &IpAddr) -> IpAddr {
    let s = match remote {
        IpAddr::V4(_) => format!("192.0.2.{}", port * 64 + 10),
        IpAddr::V6(_) => format!("2001:db8:a{port}::10"),
    };
    s.parse().expect("a local address")
}

/// The packets of `shots` against `case` (a fragmented shot is two: the first fragment and a
/// later one of the same datagram).
pub fn materialize(case: &NaclCase, shots: &[Shot]) -> Vec<Step> {
    let remotes = remotes(case);
    let ports: Vec<&String> = case.ports.keys().collect();
    let mut out = Vec::new();
    for (i, s) in shots.iter().enumerate() {
        let port = s.port % ports.len();
        let remote = remotes[s.remote % remotes.len()];
        let local = local(port, &remote);
        // Hook ingress: the packet comes from the subnet (local -> remote); egress: it goes
        // into the subnet (remote -> local).
        let (src, dst, dir) = if s.egress {
            (remote, local, Direction::Egress)
        } else {
            (local, remote, Direction::Ingress)
        };
        let p = |k: usize| PORTS[k % PORTS.len()];
        let v6 = remote.is_ipv6();
        let pkt = match s.kind {
            0 => Packet::syn(src, dst, p(s.b), p(s.a)),
            1 => Packet::tcp(src, dst, p(s.b), p(s.a), tcp_flags::ACK),
            2 => Packet::udp(src, dst, p(s.b), p(s.a)),
            3 => Packet::echo_request(src, dst, p(s.b), 1),
            4 => Packet::icmp(
                src,
                dst,
                ICMP_TYPES[s.a % ICMP_TYPES.len()],
                ICMP_CODES[s.b % ICMP_CODES.len()],
            ),
            // A22: a frag-needed / packet-too-big error about a packet that went the other
            // way; no state passes it at a NACL.
            5 => {
                let inner = Packet::tcp(dst, src, p(s.a), p(s.b), tcp_flags::ACK);
                let (ty, code) = if v6 { (2, 0) } else { (3, 4) };
                Packet::icmp_error(src, dst, ty, code, inner)
            }
            6 => Packet::other(src, dst, OTHER_PROTOS[s.a % OTHER_PROTOS.len()]),
            // N2: the DHCP exchange stays exempt on a NACL interface too.
            _ if v6 => Packet::udp(src, dst, 547, 546),
            _ => Packet::udp(src, dst, 67, 68),
        };
        let pkt = pkt.with_payload(64);
        let iface = ports[port].clone();
        if s.fragmented && !matches!(s.kind, 5) {
            let id = 0x100 + i as u32;
            let mut first = pkt.clone();
            first.frag = Some(Frag::first(id));
            let mut later = pkt;
            later.frag = Some(Frag::later(id, 64, false));
            later.payload_len = 40;
            out.push(Step {
                iface: iface.clone(),
                dir,
                pkt: first,
            });
            out.push(Step {
                iface,
                dir,
                pkt: later,
            });
        } else {
            out.push(Step { iface, dir, pkt });
        }
    }
    out
}

/// A compact listing of `case` for a reproducer.
pub fn describe(case: &NaclCase) -> String {
    let mut s = String::new();
    for acl in case.policy.network_acls.values() {
        let _ = writeln!(s, "{}:", acl.id);
        for (name, list) in [("in", &acl.inbound), ("out", &acl.outbound)] {
            for e in list {
                let _ = writeln!(
                    s,
                    "  {name} {:>5} {:?} {:?} {}",
                    e.number, e.action, e.protocol, e.cidr
                );
            }
        }
    }
    for sub in &case.policy.subnets {
        let _ = writeln!(s, "{} -> {}", sub.id, sub.network_acl);
    }
    let _ = writeln!(
        s,
        "ports {:?}, router addresses {:?}",
        case.ports, case.addrs
    );
    s
}
