//! Random VALID policies and policy queries (proptest strategies) for the property tests and
//! the differential runs, plus a compact policy printer for reproducers.
//!
//! Generation is biased toward the places where compilers go wrong: nested prefixes and
//! shared boundaries from a small pool inside the documentation ranges (plus `0.0.0.0/0`,
//! `::/0` and `::/64`, which covers the IPv4-mapped block), overlapping port ranges and their
//! edges, ICMP type/code with wildcards, other protocol numbers, group references (self
//! included) and prefix lists, and interfaces sharing group sets in different orders.
//! Queries aim at prefix edges, member addresses and range boundaries of the policy at hand.
//!
//! It owns no semantics: it only builds inputs. Everything generated satisfies what the
//! validator guarantees (well-formed ids, canonical CIDRs, resolving references, protocol
//! numbers 1/6/17/58 only as their named variants, quotas).

pub mod fuzz;
pub mod nacl;
pub mod packets;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use sg_agent::policy::{
    Direction, Family, Group, GroupId, IcmpMatch, Interface, Origin, Peer, Policy, PortRange,
    PrefixList, PrefixListId, Protocol, Quotas, Rule, RuleId, Timeouts,
};

/// One stateless policy question: a packet's interface, direction, remote address, protocol
/// and destination port (`type << 8 | code` for ICMP, 0 for protocols without ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub iface: String,
    pub dir: Direction,
    pub remote: IpAddr,
    pub proto: u8,
    pub port: u16,
}

/// Size knobs for [`policy_with`].
#[derive(Clone, Copy, Debug)]
pub struct PolicyShape {
    /// Groups: 1..=max_groups (at most 16).
    pub max_groups: usize,
    /// Rules per group and direction: 0..=max_rules.
    pub max_rules: usize,
    /// Interfaces: 1..=max_interfaces.
    pub max_interfaces: usize,
    /// Prefix lists: 0..=max_prefix_lists.
    pub max_prefix_lists: usize,
}

impl Default for PolicyShape {
    fn default() -> Self {
        PolicyShape {
            max_groups: 16,
            max_rules: 8,
            max_interfaces: 5,
            max_prefix_lists: 3,
        }
    }
}

/// `sg-` + 17 hex digits; distinct `n` give distinct ids, in an order unrelated to `n`.
pub fn group_id(seed: u64, n: u64) -> GroupId {
    GroupId(format!("sg-{:017x}", mix(seed ^ 0x5347, n)))
}

/// `sgr-` + 17 hex digits (F6); distinct `n` give distinct ids, in an order unrelated to `n`
/// (E4 step 3 breaks ties by id).
pub fn rule_id(seed: u64, n: u64) -> RuleId {
    RuleId(format!("sgr-{:017x}", mix(seed ^ 0x0053_4752, n)))
}

/// `pl-` + 17 hex digits.
pub fn prefix_list_id(seed: u64, n: u64) -> PrefixListId {
    PrefixListId(format!("pl-{:017x}", mix(seed ^ 0x504c, n)))
}

/// splitmix64 of `seed + n`: a bijection in `n` for a fixed seed.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const V4_POOL: &[&str] = &[
    "0.0.0.0/0",
    "192.0.2.0/24",
    "192.0.2.0/25",
    "192.0.2.128/25",
    "192.0.2.0/26",
    "192.0.2.64/26",
    "192.0.2.0/28",
    "192.0.2.16/28",
    "192.0.2.0/31",
    "192.0.2.1/32",
    "192.0.2.7/32",
    "192.0.2.255/32",
    "198.51.100.0/24",
    "198.51.100.0/25",
    "198.51.100.128/25",
    "198.51.100.200/29",
    "198.51.100.7/32",
    "203.0.113.0/24",
    "203.0.113.0/26",
    "203.0.113.0/30",
    "203.0.113.4/30",
    "203.0.113.8/29",
];

const V6_POOL: &[&str] = &[
    "::/0",
    "2001:db8::/32",
    "2001:db8::/33",
    "2001:db8:8000::/33",
    "2001:db8::/48",
    "2001:db8:1::/48",
    "2001:db8::/64",
    "2001:db8:0:1::/64",
    "2001:db8::/126",
    "2001:db8::1/128",
    "2001:db8::7/128",
];

const V4_HOSTS: &[&str] = &[
    "192.0.2.1",
    "192.0.2.7",
    "192.0.2.8",
    "192.0.2.129",
    "192.0.2.255",
    "198.51.100.7",
    "198.51.100.201",
    "203.0.113.5",
];

const V6_HOSTS: &[&str] = &[
    "2001:db8::1",
    "2001:db8::7",
    "2001:db8:0:1::5",
    "2001:db8:1::1",
    "2001:db8:8000::9",
];

const PORT_POOL: &[u16] = &[
    0, 1, 21, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 1025, 8080, 32767, 32768, 65534, 65535,
];

const ICMP_TYPES: &[u8] = &[0, 3, 8, 11, 128, 129, 255];
const ICMP_CODES: &[u8] = &[0, 1, 4, 255];

/// Protocol numbers other than 1/6/17/58 (F2).
const OTHER_PROTOS: &[u8] = &[0, 2, 4, 41, 47, 50, 51, 132, 255];

const DOC_V4: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];

fn parse_nets(pool: &[&str]) -> Vec<IpNet> {
    pool.iter()
        .map(|s| s.parse().expect("pool prefixes are valid"))
        .collect()
}

fn parse_addrs(pool: &'static [&'static str]) -> Vec<IpAddr> {
    pool.iter()
        .map(|s| s.parse().expect("pool addresses are valid"))
        .collect()
}

/// Canonical IPv4 prefixes: mostly from the nested pool, sometimes random inside a
/// documentation /24.
pub fn v4_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        3 => select(parse_nets(V4_POOL)),
        1 => (0..3usize, any::<u8>(), 24u8..=32).prop_map(|(net, host, len)| {
            let [a, b, c] = DOC_V4[net];
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(a, b, c, host), len).expect("len <= 32").trunc())
        }),
    ]
}

/// Canonical IPv6 prefixes: mostly from the nested pool (with `::/0`), rarely `::/64` (which
/// covers the IPv4-mapped block), sometimes random inside 2001:db8::/32.
pub fn v6_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        6 => select(parse_nets(V6_POOL)),
        1 => Just("::/64".parse().expect("valid")),
        2 => (any::<u16>(), any::<u16>(), 32u8..=128).prop_map(|(hi, lo, len)| {
            let a = Ipv6Addr::new(0x2001, 0xdb8, hi & 0x8001, 0, 0, 0, 0, lo & 0x00ff);
            IpNet::V6(Ipv6Net::new(a, len).expect("len <= 128").trunc())
        }),
    ]
}

/// Either family, with the world prefixes (C4) more often than the pools alone give them.
pub fn cidr() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        6 => v4_prefix(),
        4 => v6_prefix(),
        1 => select(parse_nets(&["0.0.0.0/0", "::/0"])),
    ]
}

/// An interface address inside the documentation ranges.
pub fn member_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => select(parse_addrs(V4_HOSTS)),
        2 => select(parse_addrs(V6_HOSTS)),
        1 => (0..3usize, any::<u8>()).prop_map(|(net, host)| {
            let [a, b, c] = DOC_V4[net];
            IpAddr::V4(Ipv4Addr::new(a, b, c, host))
        }),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(hi, lo)| {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, hi & 0x8001, 0, 0, 0, 0, u16::from(lo)))
        }),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => select(PORT_POOL), 1 => any::<u16>()]
}

/// TCP/UDP ranges: single ports, all ports, overlapping ranges with pool edges, random.
pub fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        3 => port().prop_map(|p| PortRange { from: p, to: p }),
        1 => Just(PortRange::ALL),
        3 => (port(), port()).prop_map(|(a, b)| PortRange { from: a.min(b), to: a.max(b) }),
        1 => (port(), 0u16..8).prop_map(|(a, w)| PortRange { from: a, to: a.saturating_add(w) }),
    ]
}

/// F4: all, one type (code -1), or one type and code.
pub fn icmp_match() -> impl Strategy<Value = IcmpMatch> {
    let ty = prop_oneof![3 => select(ICMP_TYPES), 1 => any::<u8>()];
    let code = prop_oneof![3 => select(ICMP_CODES), 1 => any::<u8>()];
    prop_oneof![
        1 => Just(IcmpMatch::All),
        2 => ty.clone().prop_map(IcmpMatch::Type),
        2 => (ty, code).prop_map(|(t, c)| IcmpMatch::TypeCode(t, c)),
    ]
}

/// F1/F2: 1, 6, 17 and 58 only as their named variants.
pub fn protocol() -> impl Strategy<Value = Protocol> {
    let other = prop_oneof![
        2 => select(OTHER_PROTOS),
        1 => any::<u8>().prop_filter("named protocols have their own variants", |n| {
            ![1, 6, 17, 58].contains(n)
        }),
    ];
    prop_oneof![
        5 => port_range().prop_map(Protocol::Tcp),
        3 => port_range().prop_map(Protocol::Udp),
        2 => icmp_match().prop_map(Protocol::Icmp),
        2 => icmp_match().prop_map(Protocol::Icmpv6),
        2 => Just(Protocol::All),
        1 => other.prop_map(Protocol::Number),
    ]
}

/// A rule's peer before ids exist: indexes into the policy's groups and prefix lists.
#[derive(Clone, Debug)]
enum PeerSpec {
    Cidr(IpNet),
    PrefixList(usize),
    Group(usize),
    OwnGroup,
}

fn peer_spec(groups: usize, lists: usize) -> BoxedStrategy<PeerSpec> {
    let mut choices: Vec<(u32, BoxedStrategy<PeerSpec>)> = vec![
        (8, cidr().prop_map(PeerSpec::Cidr).boxed()),
        (2, (0..groups).prop_map(PeerSpec::Group).boxed()),
        (1, Just(PeerSpec::OwnGroup).boxed()),
    ];
    if lists > 0 {
        choices.push((2, (0..lists).prop_map(PeerSpec::PrefixList).boxed()));
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

/// Rule lists; egress lists are often the D2 default (all to 0.0.0.0/0 and ::/0), ingress
/// lists sometimes include the same, so that /0 rules make C4 untracked flows both ways.
fn rule_specs(
    groups: usize,
    lists: usize,
    max_rules: usize,
    direction: Direction,
) -> BoxedStrategy<Vec<(Protocol, PeerSpec)>> {
    let any_rules =
        proptest::collection::vec((protocol(), peer_spec(groups, lists)), 0..=max_rules).boxed();
    let world = vec![
        (
            Protocol::All,
            PeerSpec::Cidr("0.0.0.0/0".parse().expect("valid")),
        ),
        (
            Protocol::All,
            PeerSpec::Cidr("::/0".parse().expect("valid")),
        ),
    ];
    let (any_weight, world_weight) = match direction {
        Direction::Ingress => (6, 0),
        Direction::Egress => (2, 1),
    };
    prop_oneof![
        any_weight => any_rules.clone(),
        world_weight => Just(world.clone()),
        1 => any_rules.prop_map(move |mut v| {
            v.extend(world.clone());
            v
        }),
    ]
    .boxed()
}

fn prefix_list_spec() -> impl Strategy<Value = (Family, Vec<IpNet>)> {
    prop_oneof![
        proptest::collection::vec(v4_prefix(), 1..=4).prop_map(|v| (Family::V4, v)),
        proptest::collection::vec(v6_prefix(), 1..=4).prop_map(|v| (Family::V6, v)),
    ]
}

/// Random valid policies of the default [`PolicyShape`].
pub fn policy() -> impl Strategy<Value = Policy> {
    policy_with(PolicyShape::default())
}

/// Random valid policies: groups with ingress and egress rules, prefix lists, interfaces with
/// addresses and group sets (some sharing a set in another order).
pub fn policy_with(shape: PolicyShape) -> impl Strategy<Value = Policy> {
    let max_groups = shape.max_groups.clamp(1, 16);
    // Small policies are the common case; large ones still come.
    let groups = prop_oneof![3 => 1..=max_groups.min(4), 1 => 1..=max_groups];
    (
        groups,
        0..=shape.max_prefix_lists,
        1..=shape.max_interfaces.max(1),
        any::<u64>(),
    )
        .prop_flat_map(move |(n_groups, n_lists, n_ifaces, seed)| {
            let group = (
                rule_specs(n_groups, n_lists, shape.max_rules, Direction::Ingress),
                rule_specs(n_groups, n_lists, shape.max_rules, Direction::Egress),
            );
            let iface = (
                proptest::collection::vec(member_address(), 0..=3),
                subsequence((0..n_groups).collect::<Vec<_>>(), 0..=n_groups.min(5)).prop_shuffle(),
            );
            (
                proptest::collection::vec(group, n_groups),
                proptest::collection::vec(prefix_list_spec(), n_lists),
                proptest::collection::vec(iface, n_ifaces),
                Just(seed),
            )
        })
        .prop_map(|(groups, lists, ifaces, seed)| build(seed, groups, lists, ifaces))
}

type GroupSpec = (Vec<(Protocol, PeerSpec)>, Vec<(Protocol, PeerSpec)>);

fn build(
    seed: u64,
    groups: Vec<GroupSpec>,
    lists: Vec<(Family, Vec<IpNet>)>,
    ifaces: Vec<(Vec<IpAddr>, Vec<usize>)>,
) -> Policy {
    let gids: Vec<GroupId> = (0..groups.len() as u64)
        .map(|i| group_id(seed, i))
        .collect();
    let pids: Vec<PrefixListId> = (0..lists.len() as u64)
        .map(|i| prefix_list_id(seed, i))
        .collect();
    let mut next_rule = 0u64;
    let mut policy = Policy {
        quotas: Quotas {
            groups_per_interface: 16,
            ..Quotas::default()
        },
        ..Policy::default()
    };
    for (gi, (ingress, egress)) in groups.into_iter().enumerate() {
        let mut rules = |specs: Vec<(Protocol, PeerSpec)>, direction| -> Vec<Rule> {
            specs
                .into_iter()
                .map(|(protocol, peer)| {
                    next_rule += 1;
                    Rule {
                        id: rule_id(seed, next_rule),
                        group: gids[gi].clone(),
                        direction,
                        protocol,
                        peer: match peer {
                            PeerSpec::Cidr(n) => Peer::Cidr(n),
                            PeerSpec::PrefixList(i) => Peer::PrefixList(pids[i].clone()),
                            PeerSpec::Group(i) => Peer::Group(gids[i].clone()),
                            PeerSpec::OwnGroup => Peer::Group(gids[gi].clone()),
                        },
                        description: None,
                        origin: Origin::default(),
                    }
                })
                .collect()
        };
        let group = Group {
            id: gids[gi].clone(),
            name: format!("g{gi}"),
            description: String::new(),
            ingress: rules(ingress, Direction::Ingress),
            egress: rules(egress, Direction::Egress),
            origin: Origin::default(),
        };
        policy.groups.insert(group.id.clone(), group);
    }
    for (i, (family, entries)) in lists.into_iter().enumerate() {
        let mut entries = entries;
        entries.sort();
        entries.dedup();
        policy.prefix_lists.insert(
            pids[i].clone(),
            PrefixList {
                id: pids[i].clone(),
                name: format!("pl{i}"),
                family,
                max_entries: entries.len() as u32,
                version: 1,
                entries,
                origin: Origin::default(),
            },
        );
    }
    for (i, (mut addresses, groups)) in ifaces.into_iter().enumerate() {
        addresses.sort();
        addresses.dedup();
        policy.interfaces.push(Interface {
            name: format!("if-{i}"),
            instance: format!("i-{i}"),
            device: None,
            addresses,
            groups: groups.into_iter().map(|g| gids[g].clone()).collect(),
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        });
    }
    policy
}

/// Addresses just inside and just outside every prefix the policy mentions, its members, a
/// few fixed ones, and each IPv4 candidate also as an IPv4-mapped IPv6 address (rarely).
fn remote_candidates(policy: &Policy) -> Vec<IpAddr> {
    let mut nets: Vec<IpNet> = parse_nets(V4_POOL);
    nets.extend(parse_nets(V6_POOL));
    for r in policy.all_rules() {
        if let Peer::Cidr(n) = &r.peer {
            nets.push(*n);
        }
    }
    for pl in policy.prefix_lists.values() {
        nets.extend(pl.entries.iter().copied());
    }
    let mut out: Vec<IpAddr> = parse_addrs(V4_HOSTS);
    out.extend(parse_addrs(V6_HOSTS));
    for i in &policy.interfaces {
        out.extend(i.addresses.iter().copied());
    }
    for n in nets {
        match n {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                    out.push(IpAddr::V4(Ipv4Addr::from(a)));
                }
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                    out.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Destination ports at and beside every TCP/UDP range edge of the policy, plus the pool.
fn port_candidates(policy: &Policy) -> Vec<u16> {
    let mut out: Vec<u16> = PORT_POOL.to_vec();
    for r in policy.all_rules() {
        if let Protocol::Tcp(p) | Protocol::Udp(p) = r.protocol {
            out.extend([p.from.wrapping_sub(1), p.from, p.to, p.to.wrapping_add(1)]);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// ICMP `type << 8 | code` values at and beside every ICMP match of the policy.
fn icmp_candidates(policy: &Policy) -> Vec<u16> {
    let tc = |t: u8, c: u8| u16::from(t) << 8 | u16::from(c);
    let mut out: Vec<u16> = ICMP_TYPES
        .iter()
        .flat_map(|&t| ICMP_CODES.iter().map(move |&c| tc(t, c)))
        .collect();
    for r in policy.all_rules() {
        if let Protocol::Icmp(m) | Protocol::Icmpv6(m) = r.protocol {
            match m {
                IcmpMatch::All => {}
                IcmpMatch::Type(t) => out.extend([
                    tc(t, 0),
                    tc(t, 255),
                    tc(t.wrapping_sub(1), 255),
                    tc(t.wrapping_add(1), 0),
                ]),
                IcmpMatch::TypeCode(t, c) => {
                    out.extend([tc(t, c), tc(t, c.wrapping_sub(1)), tc(t, c.wrapping_add(1))])
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Queries aimed at each rule: an interface carrying the rule's group, the rule's direction,
/// an address its peer covers (prefix edges, members) and a point of its protocol match, so
/// that many queries are allowed, often by several rules at once (E4) and by /0 rules (C4).
fn rule_targets(policy: &Policy) -> Vec<Query> {
    let mut out = Vec::new();
    let tc = |t: u8, c: u8| u16::from(t) << 8 | u16::from(c);
    for r in policy.all_rules() {
        let mut remotes: Vec<IpAddr> = Vec::new();
        let mut net_points = |n: &IpNet| match n {
            IpNet::V4(n) => {
                let lo = u32::from(n.network());
                let hi = u32::from(n.broadcast());
                remotes.extend([lo, hi, lo + (hi - lo) / 2].map(|a| IpAddr::V4(a.into())));
            }
            IpNet::V6(n) => {
                let lo = u128::from(n.network());
                let hi = u128::from(n.broadcast());
                remotes.extend([lo, hi, lo + (hi - lo) / 2].map(|a| IpAddr::V6(a.into())));
            }
        };
        match &r.peer {
            Peer::Cidr(n) => net_points(n),
            Peer::PrefixList(id) => policy.prefix_lists[id].entries.iter().for_each(net_points),
            Peer::Group(g) => remotes.extend(
                policy
                    .interfaces
                    .iter()
                    .filter(|i| i.groups.contains(g))
                    .flat_map(|i| i.addresses.iter().copied()),
            ),
        }
        let points: Vec<(u8, u16)> = match r.protocol {
            Protocol::All => vec![(6, 22), (17, 53), (1, tc(8, 0)), (58, tc(128, 0)), (47, 0)],
            Protocol::Tcp(p) => vec![(6, p.from), (6, p.to)],
            Protocol::Udp(p) => vec![(17, p.from), (17, p.to)],
            Protocol::Icmp(m) | Protocol::Icmpv6(m) => {
                let proto = r.protocol.number().expect("icmp has a number");
                match m {
                    IcmpMatch::All => vec![(proto, tc(8, 0)), (proto, tc(255, 255))],
                    IcmpMatch::Type(t) => vec![(proto, tc(t, 0)), (proto, tc(t, 255))],
                    IcmpMatch::TypeCode(t, c) => vec![(proto, tc(t, c))],
                }
            }
            Protocol::Number(n) => vec![(n, 0)],
        };
        for i in policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(&r.group))
        {
            for remote in &remotes {
                for &(proto, port) in &points {
                    out.push(Query {
                        iface: i.name.clone(),
                        dir: r.direction,
                        remote: *remote,
                        proto,
                        port,
                    });
                }
            }
        }
    }
    out
}

/// Queries against `policy` (which must have an interface): half aimed at its rules, half
/// at prefix edges, member addresses and port/ICMP boundaries whatever the rules.
pub fn query(policy: &Policy) -> BoxedStrategy<Query> {
    let targets = rule_targets(policy);
    let edges = edge_query(policy);
    if targets.is_empty() {
        return edges;
    }
    prop_oneof![1 => select(targets), 1 => edges].boxed()
}

fn edge_query(policy: &Policy) -> BoxedStrategy<Query> {
    let names: Vec<String> = policy.interfaces.iter().map(|i| i.name.clone()).collect();
    assert!(!names.is_empty(), "queries need an interface");
    let remotes = remote_candidates(policy);
    let mapped: Vec<IpAddr> = remotes
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        })
        .collect();
    let remote = prop_oneof![
        20 => select(remotes),
        2 => member_address(),
        1 => select(mapped),
    ];
    let mut protos: Vec<u8> = OTHER_PROTOS.to_vec();
    protos.extend(policy.all_rules().filter_map(|r| match r.protocol {
        Protocol::Number(n) => Some(n),
        _ => None,
    }));
    let ports = port_candidates(policy);
    let icmp = icmp_candidates(policy);
    let proto_port = prop_oneof![
        6 => (select(vec![6u8, 17]), prop_oneof![4 => select(ports), 1 => any::<u16>()]),
        3 => (select(vec![1u8, 58]), prop_oneof![4 => select(icmp), 1 => any::<u16>()]),
        1 => select(protos).prop_map(|p| (p, 0)),
        1 => any::<u8>().prop_map(|p| (p, 0)),
    ];
    (
        select(names),
        select(Direction::BOTH.to_vec()),
        remote,
        proto_port,
    )
        .prop_map(|(iface, dir, remote, (proto, port))| {
            // Protocols without ports are asked with port 0, as the dataplane does.
            let port = if [1, 6, 17, 58].contains(&proto) {
                port
            } else {
                0
            };
            Query {
                iface,
                dir,
                remote,
                proto,
                port,
            }
        })
        .boxed()
}

/// A policy and `n` queries against it.
pub fn policy_and_queries(
    shape: PolicyShape,
    n: usize,
) -> impl Strategy<Value = (Policy, Vec<Query>)> {
    policy_with(shape).prop_flat_map(move |p| {
        let q = proptest::collection::vec(query(&p), n);
        (Just(p), q)
    })
}

/// A minimal reproducer: removes rules, interfaces, addresses, group memberships, prefix-list
/// entries and unreferenced groups and prefix lists, one at a time, for as long as
/// `still_fails` holds. Every step keeps the policy valid. Deterministic; O(n^2) calls of
/// `still_fails` for n removable items, so meant for small failing policies.
pub fn minimize(policy: &Policy, still_fails: impl Fn(&Policy) -> bool) -> Policy {
    let mut current = policy.clone();
    'outer: loop {
        for candidate in reductions(&current) {
            if still_fails(&candidate) {
                current = candidate;
                continue 'outer;
            }
        }
        return current;
    }
}

/// Every policy one removal smaller than `p`, biggest removals first.
fn reductions(p: &Policy) -> Vec<Policy> {
    let mut out = Vec::new();
    let referenced = |g: &GroupId| {
        p.interfaces.iter().any(|i| i.groups.contains(g))
            || p.all_rules().any(|r| r.peer == Peer::Group(g.clone()))
    };
    for g in p.groups.keys().filter(|g| !referenced(g)) {
        let mut q = p.clone();
        q.groups.remove(g);
        out.push(q);
    }
    for (i, _) in p.interfaces.iter().enumerate() {
        let mut q = p.clone();
        q.interfaces.remove(i);
        out.push(q);
    }
    for (g, group) in &p.groups {
        for dir in Direction::BOTH {
            for i in 0..group.rules(dir).len() {
                let mut q = p.clone();
                let group = q.groups.get_mut(g).expect("present");
                match dir {
                    Direction::Ingress => group.ingress.remove(i),
                    Direction::Egress => group.egress.remove(i),
                };
                out.push(q);
            }
        }
    }
    for id in p.prefix_lists.keys() {
        if !p
            .all_rules()
            .any(|r| r.peer == Peer::PrefixList(id.clone()))
        {
            let mut q = p.clone();
            q.prefix_lists.remove(id);
            out.push(q);
        }
    }
    for (id, pl) in &p.prefix_lists {
        for e in 0..pl.entries.len() {
            if pl.entries.len() > 1 {
                let mut q = p.clone();
                let pl = q.prefix_lists.get_mut(id).expect("present");
                pl.entries.remove(e);
                pl.max_entries = pl.entries.len() as u32;
                out.push(q);
            }
        }
    }
    for (i, iface) in p.interfaces.iter().enumerate() {
        for a in 0..iface.addresses.len() {
            let mut q = p.clone();
            q.interfaces[i].addresses.remove(a);
            out.push(q);
        }
        for g in 0..iface.groups.len() {
            let mut q = p.clone();
            q.interfaces[i].groups.remove(g);
            out.push(q);
        }
    }
    out
}

/// Every interface of `policy` bound, to ifindex 10 + its position (a compile input for
/// tests and benches that have no real devices).
pub fn all_bound(policy: &Policy) -> std::collections::BTreeMap<String, u32> {
    policy
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| (iface.name.clone(), 10 + i as u32))
        .collect()
}

/// A compact, readable listing of a policy (for failure reports).
pub fn describe(policy: &Policy) -> String {
    let mut s = String::new();
    for g in policy.groups.values() {
        let _ = writeln!(s, "group {} ({})", g.id, g.name);
        for r in g.ingress.iter().chain(&g.egress) {
            let (dir, word) = match r.direction {
                Direction::Ingress => ("in ", "from"),
                Direction::Egress => ("out", "to"),
            };
            let _ = writeln!(
                s,
                "  {dir} {} {} {word} {}",
                r.id,
                describe_protocol(&r.protocol),
                describe_peer(&r.peer)
            );
        }
    }
    for pl in policy.prefix_lists.values() {
        let entries: Vec<String> = pl.entries.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(s, "prefix list {} [{}]", pl.id, entries.join(", "));
    }
    for i in &policy.interfaces {
        let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
        let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
        let _ = writeln!(
            s,
            "interface {} addresses [{}] groups [{}]",
            i.name,
            addrs.join(", "),
            groups.join(", ")
        );
    }
    s
}

/// A protocol as `tcp 22-22`, `icmp 8/-1` (EC2's -1 for any type or code), `proto 132`.
pub fn describe_protocol(p: &Protocol) -> String {
    protocol_text(p, |m| match m {
        IcmpMatch::All => "-1/-1".to_string(),
        IcmpMatch::Type(t) => format!("{t}/-1"),
        IcmpMatch::TypeCode(t, c) => format!("{t}/{c}"),
    })
}

/// A protocol as `PROTO PORTS`, its ICMP type and code as `icmp` writes them.
pub fn protocol_text(p: &Protocol, icmp: impl Fn(&IcmpMatch) -> String) -> String {
    match p {
        Protocol::All => "all".to_string(),
        Protocol::Tcp(r) => format!("tcp {}-{}", r.from, r.to),
        Protocol::Udp(r) => format!("udp {}-{}", r.from, r.to),
        Protocol::Icmp(m) => format!("icmp {}", icmp(m)),
        Protocol::Icmpv6(m) => format!("icmpv6 {}", icmp(m)),
        Protocol::Number(n) => format!("proto {n}"),
    }
}

pub fn describe_peer(p: &Peer) -> String {
    match p {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(id) => id.to_string(),
        Peer::Group(g) => g.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn generated_policies_are_well_formed() {
        let mut runner = TestRunner::deterministic();
        let hex17 = |s: &str| s.len() == 17 && s.chars().all(|c| c.is_ascii_hexdigit());
        for _ in 0..200 {
            let p = policy().new_tree(&mut runner).unwrap().current();
            let mut ids: Vec<&RuleId> = p.all_rules().map(|r| &r.id).collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "rule ids are unique");
            for r in p.all_rules() {
                assert!(hex17(r.id.as_str().strip_prefix("sgr-").unwrap()));
                match &r.peer {
                    Peer::Cidr(c) => assert_eq!(*c, c.trunc(), "canonical CIDR"),
                    Peer::PrefixList(id) => assert!(p.prefix_lists.contains_key(id)),
                    Peer::Group(g) => assert!(p.groups.contains_key(g)),
                }
                assert!(!matches!(r.protocol, Protocol::Number(1 | 6 | 17 | 58)));
            }
            assert!(!p.interfaces.is_empty());
            for i in &p.interfaces {
                assert!(i.groups.len() <= 5);
                assert!(i.groups.iter().all(|g| p.groups.contains_key(g)));
            }
            for pl in p.prefix_lists.values() {
                assert!(pl.entries.iter().all(|e| Family::of_net(e) == pl.family));
            }
        }
    }
}
