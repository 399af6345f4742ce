//! The network ACL decision of the reference model (A1-A8, A13-A17): which numbered rule of a
//! NACL's list decides a packet, and which lists a packet crosses between subnets.
//!
//! The slow, literal reading of SEMANTICS.md "Network ACLs": walk the list in number order and
//! stop at the first rule that matches; nothing matched is the family's `*` rule (deny). Prefix
//! length plays no role (A4, contrast E4). It shares nothing with the compiler but the policy
//! types and the protocol/CIDR matching of `decide` (both are the spec's plain words), so that
//! the NACL differential test proves something.

use std::net::IpAddr;

use crate::policy::{Direction, Family, NaclAction, NaclId, NetworkAcl, Policy, RuleId, Subnet};

use super::decide::{canonical, cidr_contains, protocol_matches};

/// The rule that decided: a numbered entry, or the family's `*` rule (A6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NaclRule {
    Number(u16),
    Star(Family),
}

impl std::fmt::Display for NaclRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NaclRule::Number(n) => write!(f, "{n}"),
            NaclRule::Star(_) => f.write_str("*"),
        }
    }
}

/// The counter id of a NACL rule, as the datapath's counters name it:
/// `acl-x/in/100`, `acl-x/out/*v4`, `acl-x/out/*v6` (`list` Ingress: the inbound list).
pub fn rule_id(acl: &NaclId, list: Direction, rule: NaclRule) -> RuleId {
    let list = match list {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let rule = match rule {
        NaclRule::Number(n) => n.to_string(),
        NaclRule::Star(Family::V4) => "*v4".into(),
        NaclRule::Star(Family::V6) => "*v6".into(),
    };
    RuleId(format!("{}/{list}/{rule}", acl.0))
}

/// A list's answer for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaclDecision {
    pub rule: NaclRule,
    pub allow: bool,
}

/// The decision of `acl`'s `list` (Ingress: inbound, Egress: outbound) for a packet whose
/// address on the far side of the subnet boundary is `remote` (inbound: the source; outbound:
/// the destination), with `proto` and `port` (`port`: the destination port for TCP/UDP in
/// both directions (A18), `type << 8 | code` for ICMP (A19), else 0).
pub fn decide_list(
    acl: &NetworkAcl,
    list: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> NaclDecision {
    let remote = canonical(remote);
    // A4: lowest number first, first match decides. The lists are sorted by validation; sort a
    // copy anyway so that the model never depends on it.
    let mut entries: Vec<_> = acl.entries(list).iter().collect();
    entries.sort_by_key(|e| e.number);
    for e in entries {
        // A8: an entry of one family never matches the other's traffic.
        if cidr_contains(&e.cidr, remote) && protocol_matches(&e.protocol, proto, port) {
            return NaclDecision {
                rule: NaclRule::Number(e.number),
                allow: e.action == NaclAction::Allow,
            };
        }
    }
    let family = match remote {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    };
    NaclDecision {
        rule: NaclRule::Star(family),
        allow: false,
    }
}

/// The NACL lists a packet from `src` to `dst` crosses, in order (A13-A15): the source
/// subnet's outbound list, then the destination subnet's inbound list. None within one subnet,
/// and none for an end outside every subnet of the policy.
pub fn crossings(policy: &Policy, src: IpAddr, dst: IpAddr) -> Vec<(&Subnet, Direction)> {
    let (src, dst) = (canonical(src), canonical(dst));
    let from = policy.subnet_of(src);
    let to = policy.subnet_of(dst);
    if let (Some(a), Some(b)) = (from, to)
        && a.id == b.id
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(a) = from {
        out.push((a, Direction::Egress));
    }
    if let Some(b) = to {
        out.push((b, Direction::Ingress));
    }
    out
}

/// Every list a packet from `src` to `dst` crosses, with its decision, up to and including the
/// first deny (a drop at any layer drops the packet, A15).
pub fn judge_path(
    policy: &Policy,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> Vec<(&Subnet, Direction, NaclDecision)> {
    let mut out = Vec::new();
    for (subnet, list) in crossings(policy, src, dst) {
        let Some(acl) = policy.network_acls.get(&subnet.network_acl) else {
            continue;
        };
        let remote = match list {
            Direction::Ingress => src,
            Direction::Egress => dst,
        };
        let d = decide_list(acl, list, remote, proto, port);
        out.push((subnet, list, d));
        if !d.allow {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::{addr, nacl_entry, tcp, tcp_range, udp};
    use crate::policy::{NaclEntry, Origin, Protocol, SubnetId};

    fn acl(inbound: Vec<NaclEntry>, outbound: Vec<NaclEntry>) -> NetworkAcl {
        NetworkAcl {
            id: NaclId("acl-1".into()),
            is_default: false,
            inbound,
            outbound,
            origin: Origin::default(),
        }
    }

    #[test]
    fn a4_lowest_number_decides_whatever_the_prefix_length() {
        use NaclAction::*;
        let a = acl(
            vec![
                nacl_entry(100, Allow, tcp(22), "0.0.0.0/0"),
                nacl_entry(90, Deny, tcp(22), "198.51.100.0/24"),
            ],
            vec![],
        );
        let d = decide_list(&a, Direction::Ingress, addr("198.51.100.7"), 6, 22);
        assert_eq!((d.rule, d.allow), (NaclRule::Number(90), false));
        let d = decide_list(&a, Direction::Ingress, addr("203.0.113.7"), 6, 22);
        assert_eq!((d.rule, d.allow), (NaclRule::Number(100), true));
        // A4: renumbering the deny above the allow flips the verdict.
        let a = acl(
            vec![
                nacl_entry(100, Allow, tcp(22), "0.0.0.0/0"),
                nacl_entry(110, Deny, tcp(22), "198.51.100.0/24"),
            ],
            vec![],
        );
        let d = decide_list(&a, Direction::Ingress, addr("198.51.100.7"), 6, 22);
        assert_eq!((d.rule, d.allow), (NaclRule::Number(100), true));
    }

    #[test]
    fn a6_a8_a11_unmatched_and_other_family_fall_to_the_star_rule() {
        let a = acl(
            vec![nacl_entry(100, NaclAction::Allow, udp(53), "0.0.0.0/0")],
            vec![],
        );
        let d = decide_list(&a, Direction::Ingress, addr("2001:db8::1"), 17, 53);
        assert_eq!((d.rule, d.allow), (NaclRule::Star(Family::V6), false));
        let d = decide_list(&a, Direction::Egress, addr("192.0.2.1"), 17, 53);
        assert_eq!((d.rule, d.allow), (NaclRule::Star(Family::V4), false));
    }

    #[test]
    fn a1_a13_a14_crossings_between_subnets() {
        let subnet = |id: &str, cidr: &str, nacl: &str| Subnet {
            id: SubnetId(id.into()),
            cidrs: vec![cidr.parse().unwrap()],
            network_acl: NaclId(nacl.into()),
            router_device: None,
            origin: Origin::default(),
        };
        let mut web = acl(
            vec![nacl_entry(100, NaclAction::Allow, tcp(22), "0.0.0.0/0")],
            vec![],
        );
        web.id = NaclId("acl-web".into());
        let mut db = acl(
            vec![nacl_entry(
                100,
                NaclAction::Allow,
                Protocol::All,
                "0.0.0.0/0",
            )],
            vec![nacl_entry(
                100,
                NaclAction::Allow,
                tcp_range(1024, 65535),
                "0.0.0.0/0",
            )],
        );
        db.id = NaclId("acl-db".into());
        let policy = Policy {
            network_acls: [(web.id.clone(), web), (db.id.clone(), db)].into(),
            subnets: vec![
                subnet("subnet-web", "198.51.100.0/25", "acl-web"),
                subnet("subnet-db", "198.51.100.128/25", "acl-db"),
            ],
            ..Policy::default()
        };
        let (web_host, db_host) = (addr("198.51.100.10"), addr("198.51.100.140"));
        // A13: within a subnet, no list.
        assert!(crossings(&policy, web_host, addr("198.51.100.11")).is_empty());
        // A14: db -> web SSH: db's outbound allows 1024-65535 only, so port 22 is denied there.
        let path = judge_path(&policy, db_host, web_host, 6, 22);
        assert_eq!(path.len(), 1);
        assert_eq!(path[0].1, Direction::Egress);
        assert!(!path[0].2.allow);
        // web -> db SSH: the web subnet has no outbound rule, so its `*` rule drops it.
        let path = judge_path(&policy, web_host, db_host, 6, 22);
        assert_eq!(path[0].2.rule, NaclRule::Star(Family::V4));
    }
}
