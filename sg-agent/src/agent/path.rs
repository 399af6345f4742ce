//! `explain --from SRC --to DST`: a packet's way between two addresses through every layer it
//! crosses, in AWS's order (A15): the source instance's security group (egress), the source
//! subnet's network ACL (outbound), the destination subnet's network ACL (inbound), the
//! destination instance's security group (ingress). Each layer names what decided: a rule id,
//! a NACL rule number or `*`. The walk stops at the first drop.
//!
//! It reads the policy only (the reference model's `decide` and `nacl::decide_list`): the
//! layers are on different hosts (instances, the router), so no one host's program can run
//! them all. Each host's `explain --in/--out` compares its own layer with its real program.

use std::net::IpAddr;

use super::explain::{describe_packet, match_port};
use crate::model::decide::{Decision, decide};
use crate::model::nacl::{crossings, decide_list};
use crate::packet::Packet;
use crate::policy::{Direction, Interface, Policy};

/// One layer of the way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathStep {
    /// "security group egress", "network ACL outbound", ...
    pub layer: String,
    /// The instance interface and its groups, or the subnet and its NACL.
    pub at: String,
    pub allow: bool,
    /// The rule that decided: a security-group rule id, a NACL rule number or `*`; None when
    /// no security-group rule allows it (E1).
    pub rule: Option<String>,
    /// Why, in a sentence, citing SEMANTICS ids.
    pub why: String,
}

/// The whole way of one packet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathExplanation {
    pub packet: String,
    pub steps: Vec<PathStep>,
    pub pass: bool,
}

/// The layers `pkt` crosses from its source to its destination, and what each decided.
pub fn explain_path(policy: &Policy, pkt: &Packet) -> PathExplanation {
    let (proto, port) = (pkt.proto(), match_port(pkt));
    let mut steps = Vec::new();
    if let Some(i) = instance_of(policy, pkt.src) {
        steps.push(sg_step(policy, i, Direction::Egress, pkt.dst, proto, port));
    }
    if steps.iter().all(|s| s.allow) {
        for (subnet, list) in crossings(policy, pkt.src, pkt.dst) {
            let Some(acl) = policy.network_acls.get(&subnet.network_acl) else {
                continue;
            };
            let remote = match list {
                Direction::Ingress => pkt.src,
                Direction::Egress => pkt.dst,
            };
            let d = decide_list(acl, list, remote, proto, port);
            let (layer, edge) = match list {
                Direction::Ingress => ("network ACL inbound", "enters"),
                Direction::Egress => ("network ACL outbound", "leaves"),
            };
            let why = match (d.allow, d.rule) {
                (_, crate::model::nacl::NaclRule::Star(_)) => format!(
                    "no numbered rule matches as it {edge} {}: the `*` rule denies (A6){}",
                    subnet.id,
                    stateless_hint(list)
                ),
                (true, r) => format!("rule {r} allows it, the lowest-numbered match (A4)"),
                (false, r) => format!(
                    "rule {r} denies it, the lowest-numbered match (A4){}",
                    stateless_hint(list)
                ),
            };
            steps.push(PathStep {
                layer: layer.into(),
                at: format!("{} ({})", subnet.id, acl.id),
                allow: d.allow,
                rule: Some(d.rule.to_string()),
                why,
            });
            if !d.allow {
                break;
            }
        }
    }
    if steps.iter().all(|s| s.allow)
        && let Some(i) = instance_of(policy, pkt.dst)
    {
        steps.push(sg_step(policy, i, Direction::Ingress, pkt.src, proto, port));
    }
    PathExplanation {
        packet: describe_packet(pkt),
        pass: steps.iter().all(|s| s.allow),
        steps,
    }
}

/// A15/A1: NACLs are stateless; a reply needs its own rule.
fn stateless_hint(list: Direction) -> &'static str {
    match list {
        Direction::Egress => {
            "; NACLs are stateless (A1): replies need an outbound rule for the client's ephemeral ports (A18, A23)"
        }
        Direction::Ingress => "; NACLs are stateless (A1): replies need their own inbound rule",
    }
}

/// The security group layer of instance interface `i` for a new flow (E1-E6).
fn sg_step(
    policy: &Policy,
    i: &Interface,
    dir: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> PathStep {
    let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
    let (allow, rule, why) = match decide(policy, &i.name, dir, remote, proto, port) {
        Decision::Allow { rule, .. } => (
            true,
            Some(rule.0.clone()),
            format!("rule {rule} allows it (E4 charges it)"),
        ),
        Decision::Deny => (
            false,
            None,
            "no rule of its groups allows it (E1: anything not allowed is dropped)".into(),
        ),
    };
    PathStep {
        layer: format!("security group {}", dir.name()),
        at: format!("{} ({})", i.name, groups.join(", ")),
        allow,
        rule,
        why,
    }
}

/// The instance interface of the policy holding `addr`.
fn instance_of(policy: &Policy, addr: IpAddr) -> Option<&Interface> {
    policy
        .interfaces
        .iter()
        .find(|i| i.addresses.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::{PolicyBuilder, addr, all, cidr, nacl_entry, sg, tcp, tcp_range};
    use crate::policy::{NaclAction, NaclId, NetworkAcl, Origin, Protocol, Subnet, SubnetId};

    /// The seed article's tiers in two subnets: sg-web (HTTPS from anywhere) in the public
    /// subnet, sg-db (3306 from sg-web) in the private one; the private subnet's NACL admits
    /// 3306 from the public subnet and answers only to ports 1024-65535.
    fn article() -> Policy {
        let mut p = PolicyBuilder::new()
            .group("sg-web")
            .group("sg-db")
            .ingress("sg-web", tcp(443), cidr("0.0.0.0/0"))
            .ingress("sg-db", tcp(3306), sg("sg-web"))
            .egress("sg-web", all(), cidr("0.0.0.0/0"))
            .egress("sg-db", all(), cidr("0.0.0.0/0"))
            .iface("web-1", &["198.51.100.10"], &["sg-web"])
            .iface("db-1", &["198.51.100.140"], &["sg-db"])
            .build();
        let open = NetworkAcl {
            id: NaclId("acl-public".into()),
            is_default: false,
            inbound: vec![nacl_entry(
                100,
                NaclAction::Allow,
                Protocol::All,
                "0.0.0.0/0",
            )],
            outbound: vec![nacl_entry(
                100,
                NaclAction::Allow,
                Protocol::All,
                "0.0.0.0/0",
            )],
            origin: Origin::default(),
        };
        let private = NetworkAcl {
            id: NaclId("acl-private".into()),
            is_default: false,
            inbound: vec![
                nacl_entry(90, NaclAction::Deny, tcp(3306), "198.51.100.11/32"),
                nacl_entry(100, NaclAction::Allow, tcp(3306), "198.51.100.0/25"),
            ],
            outbound: vec![nacl_entry(
                100,
                NaclAction::Allow,
                tcp_range(1024, 65535),
                "198.51.100.0/25",
            )],
            origin: Origin::default(),
        };
        let subnet = |id: &str, net: &str, acl: &str| Subnet {
            id: SubnetId(id.into()),
            cidrs: vec![net.parse().unwrap()],
            network_acl: NaclId(acl.into()),
            router_device: None,
            origin: Origin::default(),
        };
        p.network_acls = [(open.id.clone(), open), (private.id.clone(), private)].into();
        p.subnets = vec![
            subnet("subnet-public", "198.51.100.0/25", "acl-public"),
            subnet("subnet-private", "198.51.100.128/25", "acl-private"),
        ];
        p
    }

    fn layers(e: &PathExplanation) -> Vec<(&str, bool, Option<&str>)> {
        e.steps
            .iter()
            .map(|s| (s.layer.as_str(), s.allow, s.rule.as_deref()))
            .collect()
    }

    #[test]
    fn a15_web_to_db_crosses_four_layers_in_aws_order() {
        let p = article();
        let (web, db) = (addr("198.51.100.10"), addr("198.51.100.140"));
        let e = explain_path(&p, &Packet::syn(web, db, 40000, 3306));
        assert!(e.pass, "{e:?}");
        let got = layers(&e);
        assert_eq!(got[0].0, "security group egress");
        assert_eq!(got[1], ("network ACL outbound", true, Some("100")));
        assert_eq!(got[2], ("network ACL inbound", true, Some("100")));
        assert_eq!(got[3].0, "security group ingress");
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a4_the_deciding_nacl_rule_is_named_and_the_walk_stops_there() {
        let p = article();
        let e = explain_path(
            &p,
            &Packet::syn(addr("198.51.100.11"), addr("198.51.100.140"), 40000, 3306),
        );
        assert!(!e.pass);
        assert_eq!(
            layers(&e).last().copied(),
            Some(("network ACL inbound", false, Some("90")))
        );
    }

    #[test]
    fn a1_a13_the_reply_needs_its_own_rule_the_star_rule_is_named_and_a_subnet_has_no_inner_nacl() {
        let p = article();
        // db's reply to a client port below 1024: no numbered outbound rule matches.
        let e = explain_path(
            &p,
            &Packet::syn(addr("198.51.100.140"), addr("198.51.100.10"), 3306, 1000),
        );
        let last = e.steps.last().unwrap();
        assert_eq!(
            (last.layer.as_str(), last.allow, last.rule.as_deref()),
            ("network ACL outbound", false, Some("*"))
        );
        assert!(last.why.contains("stateless (A1)"), "{}", last.why);
        // A13: within one subnet no NACL is crossed.
        let e = explain_path(
            &p,
            &Packet::syn(addr("198.51.100.20"), addr("198.51.100.10"), 40000, 443),
        );
        assert_eq!(
            layers(&e),
            [("security group ingress", true, e.steps[0].rule.as_deref())]
        );
    }
}
