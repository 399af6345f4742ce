//! TEMPORARY (dataplane branch): a naive stand-in for the compile helper's `decide`, so the
//! stateful model and its tests build before that lands. It will be replaced at merge; the
//! signature below is the agreed one and must not change.
//!
//! The stateless policy decision: which rule (if any) allows a packet with this remote
//! address, protocol and port on this interface and direction (E1-E6, F1-F5, R1-R4, E4's
//! charging order, C4's untracked test). Straight from docs/design.md, rule by rule.

use std::net::IpAddr;

use crate::policy::{Direction, IcmpMatch, Interface, Peer, Policy, Protocol, Rule, RuleId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: RuleId, tracked: bool },
    Deny,
}

/// `port`: TCP/UDP destination port, ICMP `type << 8 | code`, else 0.
pub fn decide(
    policy: &Policy,
    iface: &str,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> Decision {
    let Some(ifc) = policy.interface(iface) else {
        return Decision::Deny;
    };
    // (prefix length, width, rule)
    let mut best: Option<(u8, u64, &Rule)> = None;
    let mut any_world = false;
    for rule in rules_of(policy, ifc, dir) {
        let Some(width) = proto_width(&rule.protocol, proto, port) else {
            continue;
        };
        let Some(len) = peer_match(policy, &rule.peer, remote) else {
            continue;
        };
        if matches!(&rule.peer, Peer::Cidr(n) if n.prefix_len() == 0) {
            any_world = true;
        }
        let better = match best {
            None => true,
            Some((bl, bw, br)) => {
                (len, std::cmp::Reverse(width), std::cmp::Reverse(&rule.id))
                    > (bl, std::cmp::Reverse(bw), std::cmp::Reverse(&br.id))
            }
        };
        if better {
            best = Some((len, width, rule));
        }
    }
    let Some((_, _, rule)) = best else {
        return Decision::Deny;
    };
    let untracked = (proto == 6 || proto == 17)
        && any_world
        && rules_of(policy, ifc, dir.opposite()).any(|r| {
            matches!(&r.peer, Peer::Cidr(n) if n.prefix_len() == 0
                && (n.addr().is_ipv4() == remote.is_ipv4()))
                && match r.protocol {
                    Protocol::All => true,
                    Protocol::Tcp(pr) => proto == 6 && pr.from == 0 && pr.to == 65535,
                    Protocol::Udp(pr) => proto == 17 && pr.from == 0 && pr.to == 65535,
                    _ => false,
                }
        });
    Decision::Allow {
        rule: rule.id.clone(),
        tracked: !untracked,
    }
}

fn rules_of<'a>(
    policy: &'a Policy,
    ifc: &'a Interface,
    dir: Direction,
) -> impl Iterator<Item = &'a Rule> + 'a {
    ifc.groups
        .iter()
        .filter_map(|g| policy.groups.get(g))
        .flat_map(move |g| g.rules(dir).iter())
}

/// The number of (protocol, port) points the rule covers when it matches, else None.
fn proto_width(p: &Protocol, proto: u8, port: u16) -> Option<u64> {
    let icmp = |m: &IcmpMatch| match *m {
        IcmpMatch::All => Some(65536),
        IcmpMatch::Type(t) => (t == (port >> 8) as u8).then_some(256),
        IcmpMatch::TypeCode(t, c) => (t == (port >> 8) as u8 && c == port as u8).then_some(1),
    };
    match p {
        Protocol::All => Some(256 * 65536),
        Protocol::Tcp(r) => (proto == 6 && r.contains(port)).then(|| u64::from(r.width())),
        Protocol::Udp(r) => (proto == 17 && r.contains(port)).then(|| u64::from(r.width())),
        Protocol::Icmp(m) if proto == 1 => icmp(m),
        Protocol::Icmpv6(m) if proto == 58 => icmp(m),
        Protocol::Number(n) => (*n == proto).then_some(65536),
        _ => None,
    }
}

/// The length of the longest peer prefix covering `remote`, if any.
fn peer_match(policy: &Policy, peer: &Peer, remote: IpAddr) -> Option<u8> {
    match peer {
        Peer::Cidr(n) => n.contains(&remote).then(|| n.prefix_len()),
        Peer::PrefixList(id) => policy
            .prefix_lists
            .get(id)?
            .entries
            .iter()
            .filter(|n| n.contains(&remote))
            .map(|n| n.prefix_len())
            .max(),
        Peer::Group(g) => policy
            .interfaces
            .iter()
            .any(|i| i.groups.contains(g) && i.addresses.contains(&remote))
            .then_some(if remote.is_ipv4() { 32 } else { 128 }),
    }
}
