//! The stateless policy decision of the reference model: given a policy, an interface, a
//! direction and a packet's (remote address, protocol, port), which rule allows it (E1-E6,
//! F1-F5, R1-R4), which one is charged (E4) and whether the flow is tracked (C4).
//!
//! It is deliberately the slow, literal reading of SEMANTICS.md and docs/design.md: it walks
//! the interface's groups' rules one by one for every question. It shares nothing with the
//! compiler but the policy types, so that a property test comparing the two proves something.
//! It must not grow caches, indexes or any trick the compiler uses; it knows nothing of maps,
//! slots or conntrack state.
//!
//! One choice the spec leaves open is written here and in the compiler independently: the
//! kernel keys every address in one 16-byte space with IPv4 mapped into `::ffff:0:0/96`, so
//! an IPv6 remote (or member address) that is IPv4-mapped is judged as the IPv4 address it
//! maps (Linux drops such packets on the wire anyway, RFC 4291 2.5.5.2). IPv6 CIDRs therefore
//! never match an IPv4-mapped remote.

use std::cmp::Reverse;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::{Direction, IcmpMatch, Interface, Peer, Policy, Protocol, Rule, RuleId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `rule` is the charged rule (E4); `tracked` is false for C4 untracked flows.
    Allow { rule: RuleId, tracked: bool },
    /// No rule allows the packet (E1), or the interface is not in the policy.
    Deny,
}

/// The decision for one packet.
///
/// `port`: the packet's destination port for TCP/UDP (E6), `type << 8 | code` for
/// ICMP/ICMPv6, 0 otherwise.
pub fn decide(
    policy: &Policy,
    iface: &str,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> Decision {
    let remote = canonical(remote);
    let Some(interface) = policy.interface(iface) else {
        return Decision::Deny;
    };
    let matching = matching_rules(policy, interface, dir, remote, proto, port);
    // E4: longest matching peer prefix, then fewest (protocol, port) points, then smallest id.
    let Some((_, charged)) = matching
        .iter()
        .min_by_key(|(len, r)| (Reverse(*len), points(&r.protocol), &r.id))
    else {
        return Decision::Deny;
    };
    Decision::Allow {
        rule: charged.id.clone(),
        tracked: !untracked(policy, interface, dir, remote, proto, &matching),
    }
}

/// Every rule that allows the packet, the charged one (E4) first, then in E4 preference order.
/// For `explain`.
pub fn allowing_rules<'p>(
    policy: &'p Policy,
    iface: &str,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> Vec<&'p Rule> {
    let remote = canonical(remote);
    let Some(interface) = policy.interface(iface) else {
        return Vec::new();
    };
    let mut matching = matching_rules(policy, interface, dir, remote, proto, port);
    matching.sort_by(|(la, a), (lb, b)| {
        (Reverse(*la), points(&a.protocol), &a.id).cmp(&(Reverse(*lb), points(&b.protocol), &b.id))
    });
    matching.into_iter().map(|(_, r)| r).collect()
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps (see the module doc).
pub(crate) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The interface's rules for `dir` (E2), the union over its groups (E3). A group listed twice
/// contributes its rules once.
fn interface_rules<'p>(policy: &'p Policy, interface: &Interface, dir: Direction) -> Vec<&'p Rule> {
    let mut groups: Vec<_> = interface.groups.iter().collect();
    groups.sort();
    groups.dedup();
    groups
        .into_iter()
        .filter_map(|g| policy.groups.get(g))
        .flat_map(|g| g.rules(dir))
        .collect()
}

/// The rules that allow the packet, each with the length of its longest peer prefix covering
/// `remote` (E4 step 1).
fn matching_rules<'p>(
    policy: &'p Policy,
    interface: &Interface,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> Vec<(u8, &'p Rule)> {
    interface_rules(policy, interface, dir)
        .into_iter()
        .filter(|r| protocol_matches(&r.protocol, proto, port))
        .filter_map(|r| peer_match_len(policy, &r.peer, remote).map(|len| (len, r)))
        .collect()
}

/// The longest prefix of `peer` covering `remote`, or None when the peer does not cover it.
fn peer_match_len(policy: &Policy, peer: &Peer, remote: IpAddr) -> Option<u8> {
    match peer {
        Peer::Cidr(net) => cidr_contains(net, remote).then(|| net.prefix_len()),
        // R4: every entry of the list; the most specific covering entry counts.
        Peer::PrefixList(id) => policy
            .prefix_lists
            .get(id)?
            .entries
            .iter()
            .filter(|e| cidr_contains(e, remote))
            .map(|e| e.prefix_len())
            .max(),
        // R1, R3: any address of any interface carrying the group, this one included; a member
        // counts as a host prefix.
        Peer::Group(g) => policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(g))
            .flat_map(|i| i.addresses.iter())
            .any(|a| canonical(*a) == remote)
            .then_some(match remote {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            }),
    }
}

/// Containment within one family: an IPv6 CIDR never holds an IPv4 (or IPv4-mapped) remote.
pub(crate) fn cidr_contains(net: &IpNet, remote: IpAddr) -> bool {
    match (net, remote) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        _ => false,
    }
}

/// F1-F4, E6.
pub(crate) fn protocol_matches(p: &Protocol, proto: u8, port: u16) -> bool {
    let icmp = |m: &IcmpMatch| match m {
        IcmpMatch::All => true,
        IcmpMatch::Type(t) => (port >> 8) as u8 == *t,
        IcmpMatch::TypeCode(t, c) => port == (u16::from(*t) << 8 | u16::from(*c)),
    };
    match p {
        Protocol::All => true,
        Protocol::Tcp(r) => proto == 6 && r.contains(port),
        Protocol::Udp(r) => proto == 17 && r.contains(port),
        Protocol::Icmp(m) => proto == 1 && icmp(m),
        Protocol::Icmpv6(m) => proto == 58 && icmp(m),
        // F2: any other protocol number matches all of its traffic.
        Protocol::Number(n) => proto == *n,
    }
}

/// E4 step 2: how many (protocol, port) points the rule covers.
fn points(p: &Protocol) -> u32 {
    match p {
        Protocol::All => 256 * 65536,
        Protocol::Tcp(r) | Protocol::Udp(r) => r.width(),
        Protocol::Icmp(m) | Protocol::Icmpv6(m) => match m {
            IcmpMatch::All => 65536,
            IcmpMatch::Type(_) => 256,
            IcmpMatch::TypeCode(..) => 1,
        },
        Protocol::Number(_) => 65536,
    }
}

/// C4, as docs/design.md words it: a TCP/UDP packet allowed by some rule whose peer is the
/// CIDR 0.0.0.0/0 (or ::/0 for IPv6), while the opposite direction has a rule to the same /0
/// allowing all traffic or all ports of the same protocol.
fn untracked(
    policy: &Policy,
    interface: &Interface,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    matching: &[(u8, &Rule)],
) -> bool {
    if proto != 6 && proto != 17 {
        return false;
    }
    let is_world = |peer: &Peer| match peer {
        Peer::Cidr(net) => {
            net.prefix_len() == 0
                && matches!(
                    (net, remote),
                    (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
                )
        }
        Peer::PrefixList(_) | Peer::Group(_) => false,
    };
    let allowed_by_world = matching.iter().any(|(_, r)| is_world(&r.peer));
    let opposite_all = interface_rules(policy, interface, dir.opposite())
        .into_iter()
        .any(|r| {
            is_world(&r.peer)
                && match r.protocol {
                    Protocol::All => true,
                    Protocol::Tcp(range) => proto == 6 && range == crate::policy::PortRange::ALL,
                    Protocol::Udp(range) => proto == 17 && range == crate::policy::PortRange::ALL,
                    _ => false,
                }
        });
    allowed_by_world && opposite_all
}
