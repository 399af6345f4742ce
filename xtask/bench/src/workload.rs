//! The synthetic policies the bench measures: `n` rules spread round robin over 16 groups,
//! many distinct CIDRs (both families, nested at random) and port ranges, plus the few rules
//! that allow the bench's own traffic. One interface, the receiver, carries all 16 groups, so
//! every rule of the policy is enforced on it (the worst case for a rule count).
//!
//! Addresses come from the documentation ranges only. IPv4 CIDRs are packed into the three
//! /24s (mostly hosts and small blocks, some /24-/25), so the generator's address sits under
//! several nested prefixes (a lookup walks a deep trie path, not an empty one); IPv6 CIDRs
//! (/48-/128 in 2001:db8::/32) supply most of the distinct prefixes. Random rules never use the bench's ports
//! ([`RESERVED_PORTS`]) and never allow every protocol from an IPv4 CIDR, so the bench's
//! "denied" flow is denied whatever the seed.
//!
//! Deterministic: the same (n, seed) gives the same policy.

use sg_testkit::random::fuzz::Rng;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use sg_agent::policy::{
    Direction, Family, Group, GroupId, IcmpMatch, Interface, Origin, Peer, Policy, PortRange,
    PrefixList, PrefixListId, Protocol, Rule, RuleId, Timeouts,
};

pub const GROUPS: usize = 16;
const OTHER_INTERFACES: usize = 15;
pub const PREFIX_LISTS: usize = 8;

/// The receiver: the interface every rule is enforced on.
pub const RECEIVER_IFACE: &str = "receiver";
pub const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The generator (sender) of all bench traffic.
pub const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Allowed from the sender: UDP to this port (the flood).
pub const UDP_ALLOWED: u16 = 9000;
/// Allowed from [`TCP_SENDERS`]: TCP to this port (iperf3, test_run flows).
pub const TCP_ALLOWED: u16 = 5201;
/// TCP to [`TCP_ALLOWED`] is allowed from this /28 (the sender's), so the in-kernel bench
/// has enough distinct new flows: 14 sources x 64k source ports.
pub const TCP_SENDERS: &str = "198.51.100.0/28";
/// Not a member of anything until [`with_newcomer`] makes it one: UDP [`UDP_ALLOWED`] from a
/// member of group 0 is allowed.
pub const NEWCOMER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// Never allowed from the sender (UDP and TCP): the "dropped" flow.
pub const DENIED_PORT: u16 = 9001;
/// Random rules stay out of these ports.
pub const RESERVED_PORTS: PortRange = PortRange {
    from: 5000,
    to: 9999,
};

const DOC_V4: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];

/// Mostly hosts and small blocks, some wider ones: every address ends up under a few nested
/// prefixes, as in real policies, without every prefix inheriting hundreds of rules.
fn v4_net(rng: &mut Rng) -> IpNet {
    let [a, b, c] = DOC_V4[rng.below(3)];
    let addr = Ipv4Addr::new(a, b, c, rng.below(256) as u8);
    let len = match rng.below(100) {
        0..60 => 32,
        60..75 => 29 + rng.below(3) as u8,
        75..90 => 26 + rng.below(3) as u8,
        _ => 24 + rng.below(2) as u8,
    };
    IpNet::V4(Ipv4Net::new(addr, len).expect("len <= 32").trunc())
}

fn v6_net(rng: &mut Rng) -> IpNet {
    let low = (u128::from(rng.next_u64()) << 32) | u128::from(rng.next_u64() as u32);
    let addr = Ipv6Addr::from((0x2001_0db8u128 << 96) | (low & ((1u128 << 96) - 1)));
    // /48 (a site) to /128 (a host): random prefixes this long rarely nest.
    let len = 48 + rng.below(81) as u8;
    IpNet::V6(Ipv6Net::new(addr, len).expect("len <= 128").trunc())
}

/// A port range that stays out of [`RESERVED_PORTS`].
fn ports(rng: &mut Rng, max_width: usize) -> PortRange {
    let from = rng.below(65536) as u16;
    let to = from.saturating_add(rng.below(max_width + 1) as u16);
    let r = RESERVED_PORTS;
    if to < r.from || from > r.to {
        PortRange { from, to }
    } else {
        // Move it above the reserved band, keeping its width.
        let w = to - from;
        let from = r.to + 1 + from % 20_000;
        PortRange {
            from,
            to: from.saturating_add(w),
        }
    }
}

/// `v6`: the peer's addresses are IPv6 (ICMP rules then use ICMPv6); `mixed`: both families
/// (a group): ICMP type matches would apply to the other family too, so only "all ICMP".
fn protocol(rng: &mut Rng, peer: &Peer, v6: bool, mixed: bool) -> Protocol {
    let v6_cidr = matches!(peer, Peer::Cidr(IpNet::V6(_)));
    match rng.below(100) {
        0..55 => Protocol::Tcp(ports(rng, 0)),
        55..70 => Protocol::Tcp(ports(rng, 2000)),
        70..80 => Protocol::Udp(ports(rng, 100)),
        80..90 => {
            let m = match rng.below(3) {
                _ if mixed => IcmpMatch::All,
                0 => IcmpMatch::TypeCode(rng.below(256) as u8, rng.below(16) as u8),
                1 => IcmpMatch::Type(rng.below(256) as u8),
                _ => IcmpMatch::All,
            };
            if v6 {
                Protocol::Icmpv6(m)
            } else {
                Protocol::Icmp(m)
            }
        }
        // "All traffic" only from IPv6 CIDRs: see the module comment.
        90..95 if v6_cidr => Protocol::All,
        90..95 => Protocol::Tcp(ports(rng, 0)),
        _ => Protocol::Number([47, 50, 51, 132][rng.below(4)]),
    }
}

/// Ingress seven times in ten: random rules lean inbound, as real policies do.
pub fn direction(rng: &mut Rng) -> Direction {
    if rng.chance(70, 100) {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

pub fn group_id(i: usize) -> GroupId {
    GroupId(format!("sg-{:017x}", i + 1))
}

pub fn list_id(i: usize) -> PrefixListId {
    PrefixListId(format!("pl-{:017x}", i + 1))
}

/// The bench's own rules (ingress, in the last group, last): UDP [`UDP_ALLOWED`] from the
/// sender's /32, TCP [`TCP_ALLOWED`] from [`TCP_SENDERS`], UDP [`UDP_ALLOWED`] from members
/// of group 0.
pub const OWN_RULES: usize = 3;

/// The groups (empty) and prefix lists of a random policy: `GROUPS` groups and
/// `PREFIX_LISTS` prefix lists of 10 to 49 random entries, alternately IPv4 and IPv6. The
/// compile bench builds on it too.
pub fn skeleton(rng: &mut Rng) -> Policy {
    let mut p = Policy::default();
    for i in 0..PREFIX_LISTS {
        let family = if i % 2 == 0 { Family::V4 } else { Family::V6 };
        let entries: BTreeSet<IpNet> = (0..10 + rng.below(40))
            .map(|_| match family {
                Family::V4 => v4_net(rng),
                Family::V6 => v6_net(rng),
            })
            .collect();
        p.prefix_lists.insert(
            list_id(i),
            PrefixList {
                id: list_id(i),
                name: format!("pl{i}"),
                family,
                max_entries: entries.len() as u32,
                version: 1,
                entries: entries.into_iter().collect(),
                origin: Origin::default(),
            },
        );
    }
    for g in 0..GROUPS {
        p.groups.insert(
            group_id(g),
            Group {
                id: group_id(g),
                name: format!("g{g}"),
                description: String::new(),
                ingress: vec![],
                egress: vec![],
                origin: Origin::default(),
            },
        );
    }
    p
}

/// A policy of exactly `n` rules (at least [`OWN_RULES`]).
pub fn policy(n: usize, seed: u64) -> Policy {
    let mut rng = Rng::new(seed);
    let mut p = skeleton(&mut rng);
    let random = n.saturating_sub(OWN_RULES);
    let world = |s: &str| Peer::Cidr(s.parse().expect("valid CIDR"));
    let push = |p: &mut Policy, rng: &mut Rng, g: usize, dir: Direction, proto, peer| {
        let rule = Rule {
            id: RuleId(format!("sgr-{:017x}", rng.next_u64())),
            group: group_id(g),
            direction: dir,
            protocol: proto,
            peer,
            description: None,
            origin: Origin::default(),
        };
        let group = p.groups.get_mut(&group_id(g)).expect("group exists");
        match dir {
            Direction::Ingress => group.ingress.push(rule),
            Direction::Egress => group.egress.push(rule),
        }
    };
    for i in 0..random {
        let g = i % GROUPS;
        // The first rules of each group are the usual world rules: egress all (D2) and
        // ingress 443 from anywhere; the rest are random.
        let (dir, proto, peer) = match i / GROUPS {
            0 => (Direction::Egress, Protocol::All, world("0.0.0.0/0")),
            1 => (Direction::Egress, Protocol::All, world("::/0")),
            2 => (
                Direction::Ingress,
                Protocol::Tcp(PortRange { from: 443, to: 443 }),
                world("0.0.0.0/0"),
            ),
            _ => {
                let dir = direction(&mut rng);
                // IPv6 carries most of the distinct CIDRs: the documentation ranges hold
                // only 768 IPv4 addresses.
                let peer = match rng.below(100) {
                    0..35 => Peer::Cidr(v4_net(&mut rng)),
                    35..90 => Peer::Cidr(v6_net(&mut rng)),
                    90..95 => Peer::PrefixList(list_id(rng.below(PREFIX_LISTS))),
                    _ => Peer::Group(group_id(rng.below(GROUPS))),
                };
                let (v6, mixed) = match &peer {
                    Peer::Cidr(n) => (matches!(n, IpNet::V6(_)), false),
                    Peer::PrefixList(id) => (p.prefix_lists[id].family == Family::V6, false),
                    Peer::Group(_) => (false, true),
                };
                let proto = protocol(&mut rng, &peer, v6, mixed);
                (dir, proto, peer)
            }
        };
        push(&mut p, &mut rng, g, dir, proto, peer);
    }
    let sender = Peer::Cidr(IpNet::V4(
        Ipv4Net::new(SENDER_V4, 32).expect("/32 is valid"),
    ));
    let udp = Protocol::Udp(PortRange {
        from: UDP_ALLOWED,
        to: UDP_ALLOWED,
    });
    let tcp = Protocol::Tcp(PortRange {
        from: TCP_ALLOWED,
        to: TCP_ALLOWED,
    });
    for (proto, peer) in [
        (udp, sender),
        (tcp, world(TCP_SENDERS)),
        (udp, Peer::Group(group_id(0))),
    ] {
        push(
            &mut p,
            &mut rng,
            GROUPS - 1,
            Direction::Ingress,
            proto,
            peer,
        );
    }
    // The receiver carries every group; the others three each (members for group peers),
    // addressed inside 203.0.113.0/24 and 2001:db8:ffff::/48.
    p.interfaces.push(Interface {
        name: RECEIVER_IFACE.to_string(),
        instance: "i-receiver".into(),
        device: None,
        addresses: vec![IpAddr::V4(RECEIVER_V4)],
        groups: (0..GROUPS).map(group_id).collect(),
        timeouts: Timeouts::AWS_DEFAULT,
        origin: Origin::default(),
    });
    for i in 0..OTHER_INTERFACES {
        let set: BTreeSet<usize> = (0..3).map(|_| rng.below(GROUPS)).collect();
        p.interfaces.push(Interface {
            name: format!("if-{i}"),
            instance: format!("i-{i}"),
            device: None,
            addresses: vec![
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 100 + i as u8)),
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xffff,
                    0,
                    0,
                    0,
                    0,
                    i as u16 + 1,
                )),
            ],
            groups: set.into_iter().map(group_id).collect(),
            timeouts: Timeouts::AWS_DEFAULT,
            origin: Origin::default(),
        });
    }
    p
}

/// `policy` plus one more interface, [`NEWCOMER_V4`], carrying group 0: the membership
/// change whose effect the control-plane bench times.
pub fn with_newcomer(policy: &Policy) -> Policy {
    let mut p = policy.clone();
    p.interfaces.push(Interface {
        name: "newcomer".into(),
        instance: "i-newcomer".into(),
        device: None,
        addresses: vec![IpAddr::V4(NEWCOMER_V4)],
        groups: vec![group_id(0)],
        timeouts: Timeouts::AWS_DEFAULT,
        origin: Origin::default(),
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_exactly_n_rules_and_is_deterministic() {
        for n in [3, 10, 1000] {
            let p = policy(n, 7);
            assert_eq!(p.all_rules().count(), n);
            assert_eq!(p, policy(n, 7));
        }
        assert_ne!(policy(1000, 7), policy(1000, 8));
    }

    #[test]
    fn every_policy_translates_to_nftables() {
        for seed in 1..20 {
            let p = policy(400, seed);
            for style in [
                super::super::nft::Style::Sets,
                super::super::nft::Style::PerRule,
            ] {
                super::super::nft::ruleset(&p, RECEIVER_IFACE, "veth0", style)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
            }
        }
    }

    #[test]
    fn random_rules_never_touch_the_bench_ports_or_allow_all_from_ipv4() {
        let p = policy(5000, 3);
        let ids: BTreeSet<&str> = p.all_rules().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 5000, "rule ids are unique");
        for r in p.all_rules() {
            let last = &p.groups[&group_id(GROUPS - 1)].ingress;
            if last[last.len() - OWN_RULES..].contains(r) {
                continue;
            }
            match r.protocol {
                Protocol::Tcp(pr) | Protocol::Udp(pr) => assert!(
                    pr.to < RESERVED_PORTS.from || pr.from > RESERVED_PORTS.to,
                    "{r:?}"
                ),
                Protocol::All => assert!(
                    matches!(&r.peer, Peer::Cidr(IpNet::V6(_)))
                        || matches!(&r.peer, Peer::Cidr(IpNet::V4(n)) if n.prefix_len() == 0),
                    "{r:?}"
                ),
                _ => {}
            }
        }
    }
}
