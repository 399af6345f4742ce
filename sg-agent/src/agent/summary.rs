//! What an applied policy amounts to on this host (groups, rules in one line each, members,
//! the devices it binds), as the state file records it, and the diff of two of them: what an
//! apply (or a dry run) changes. Pure: no kernel, no files.

use std::collections::{BTreeMap, BTreeSet};

use crate::bind::{Binding, RouterPort};
use crate::compile::nacl;
use crate::policy::{
    Direction, Family, Group, IcmpMatch, NaclAction, NaclEntry, Peer, Policy, PortRange, Protocol,
    Rule, RuleId,
};
use crate::state::{Applied, InterfaceSummary, RouterSummary, RuleSummary};

/// What changed between two applied policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
    pub rules_added: Vec<(String, RuleSummary)>,
    pub rules_removed: Vec<(String, RuleSummary)>,
    /// group -> (members added, members removed)
    pub members: BTreeMap<String, (Vec<String>, Vec<String>)>,
    pub interfaces_added: Vec<(String, InterfaceSummary)>,
    pub interfaces_removed: Vec<(String, InterfaceSummary)>,
    pub interfaces_changed: Vec<(String, InterfaceSummary)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// The protocol and ports of a rule: "tcp 443", "icmp type 8", "all traffic".
fn protocol_text(p: &Protocol) -> String {
    let ports = |pr: &PortRange| {
        if pr.from == pr.to {
            pr.from.to_string()
        } else {
            format!("{}-{}", pr.from, pr.to)
        }
    };
    let icmp = |m: &IcmpMatch| match m {
        IcmpMatch::All => "all".to_string(),
        IcmpMatch::Type(t) => format!("type {t}"),
        IcmpMatch::TypeCode(t, c) => format!("type {t} code {c}"),
    };
    match p {
        Protocol::All => "all traffic".to_string(),
        Protocol::Tcp(p) => format!("tcp {}", ports(p)),
        Protocol::Udp(p) => format!("udp {}", ports(p)),
        Protocol::Icmp(m) => format!("icmp {}", icmp(m)),
        Protocol::Icmpv6(m) => format!("icmpv6 {}", icmp(m)),
        Protocol::Number(n) => format!("protocol {n}"),
    }
}

/// One line for a rule: "tcp 443 from 0.0.0.0/0 (Public HTTPS)".
pub fn rule_line(r: &Rule) -> String {
    let proto = protocol_text(&r.protocol);
    let peer = match &r.peer {
        Peer::Cidr(c) => c.to_string(),
        Peer::PrefixList(p) => p.0.clone(),
        Peer::Group(g) if *g == r.group => format!("{g} (self)"),
        Peer::Group(g) => g.0.clone(),
    };
    let way = if r.direction == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    match &r.description {
        Some(d) => format!("{proto} {way} {peer} \"{d}\""),
        None => format!("{proto} {way} {peer}"),
    }
}

/// One line for a NACL entry: "100 allow tcp 22 from 0.0.0.0/0".
pub fn nacl_line(e: &NaclEntry, list: Direction) -> String {
    let action = match e.action {
        NaclAction::Allow => "allow",
        NaclAction::Deny => "deny",
    };
    let way = if list == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    format!(
        "{} {action} {} {way} {}",
        e.number,
        protocol_text(&e.protocol),
        e.cidr
    )
}

/// What an applied policy amounts to on this host: the groups' rules and the devices it
/// binds; on a router also the subnets its devices face and their NACLs' rules.
pub fn summarize(policy: &Policy, bindings: &[Binding], router: &[RouterPort]) -> Applied {
    let mut a = Applied::default();
    summarize_router(policy, router, &mut a);
    for g in policy.groups.values() {
        a.groups.insert(g.id.0.clone(), g.name.clone());
        for r in g.ingress.iter().chain(g.egress.iter()) {
            a.rules.insert(r.id.0.clone(), rule_summary(g, r));
        }
        let mut members: Vec<String> = policy
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(&g.id))
            .flat_map(|i| i.addresses.iter().map(|x| x.to_string()))
            .collect();
        members.sort();
        members.dedup();
        a.members.insert(g.id.0.clone(), members);
    }
    for b in bindings {
        let groups = policy
            .interface(&b.interface)
            .map(|i| i.groups.iter().map(|g| g.0.clone()).collect())
            .unwrap_or_default();
        a.interfaces.insert(
            b.device.clone(),
            InterfaceSummary {
                interface: b.interface.clone(),
                ifindex: b.ifindex,
                groups,
            },
        );
    }
    a
}

/// The router ports and every rule (the `*` ones included) of the NACLs they enforce, keyed
/// by their counter ids.
fn summarize_router(policy: &Policy, router: &[RouterPort], a: &mut Applied) {
    for port in router {
        let Some(subnet) = policy.subnet(&port.subnet) else {
            continue;
        };
        a.routers.insert(
            port.device.clone(),
            RouterSummary {
                subnet: subnet.id.0.clone(),
                network_acl: subnet.network_acl.0.clone(),
                ifindex: port.ifindex,
            },
        );
        let Some(acl) = policy.network_acls.get(&subnet.network_acl) else {
            continue;
        };
        a.groups.insert(acl.id.0.clone(), acl.id.0.clone());
        for list in Direction::BOTH {
            let dir = match list {
                Direction::Ingress => "inbound",
                Direction::Egress => "outbound",
            };
            let mut add = |id: RuleId, text: String| {
                a.rules.insert(
                    id.0,
                    RuleSummary {
                        group: acl.id.0.clone(),
                        direction: dir.into(),
                        text,
                        description: None,
                    },
                );
            };
            for e in acl.entries(list) {
                let id = nacl::slot_id(&acl.id, list, Some(e.number), Family::of_net(&e.cidr));
                add(id, nacl_line(e, list));
            }
            for fam in [Family::V4, Family::V6] {
                let root = if fam == Family::V4 {
                    "0.0.0.0/0"
                } else {
                    "::/0"
                };
                let way = if list == Direction::Ingress {
                    "from"
                } else {
                    "to"
                };
                add(
                    nacl::slot_id(&acl.id, list, None, fam),
                    format!("* deny all traffic {way} {root}"),
                );
            }
        }
    }
}

fn rule_summary(g: &Group, r: &Rule) -> RuleSummary {
    RuleSummary {
        group: g.id.0.clone(),
        direction: r.direction.name().into(),
        text: rule_line(&Rule {
            description: None,
            ..r.clone()
        }),
        description: r.description.clone(),
    }
}

/// What changes from `old` to `new`.
pub fn diff(old: &Applied, new: &Applied) -> Diff {
    let mut d = Diff {
        groups_added: keys_not_in(&new.groups, &old.groups),
        groups_removed: keys_not_in(&old.groups, &new.groups),
        rules_added: entries_differing(&new.rules, &old.rules),
        rules_removed: entries_differing(&old.rules, &new.rules),
        ..Diff::default()
    };
    for (g, m) in &new.members {
        let before: BTreeSet<&String> = old
            .members
            .get(g)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let after: BTreeSet<&String> = m.iter().collect();
        let added: Vec<String> = after.difference(&before).map(|s| (*s).clone()).collect();
        let removed: Vec<String> = before.difference(&after).map(|s| (*s).clone()).collect();
        if !added.is_empty() || !removed.is_empty() {
            d.members.insert(g.clone(), (added, removed));
        }
    }
    for (dev, i) in &new.interfaces {
        match old.interfaces.get(dev) {
            None => d.interfaces_added.push((dev.clone(), i.clone())),
            Some(o) if o != i => d.interfaces_changed.push((dev.clone(), i.clone())),
            _ => {}
        }
    }
    for (dev, i) in &old.interfaces {
        if !new.interfaces.contains_key(dev) {
            d.interfaces_removed.push((dev.clone(), i.clone()));
        }
    }
    d
}

fn keys_not_in<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
}

/// The entries of `a` that `b` lacks or holds differently.
fn entries_differing<V: Clone + PartialEq>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
) -> Vec<(String, V)> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(group: &str, text: &str) -> RuleSummary {
        RuleSummary {
            group: group.into(),
            direction: "ingress".into(),
            text: text.into(),
            description: None,
        }
    }

    fn iface(name: &str, ifindex: u32, groups: &[&str]) -> InterfaceSummary {
        InterfaceSummary {
            interface: name.into(),
            ifindex,
            groups: groups.iter().map(|g| (*g).to_string()).collect(),
        }
    }

    #[test]
    fn a_diff_lists_what_was_added_removed_or_changed() {
        let mut old = Applied::default();
        old.groups.insert("sg-a".into(), "a".into());
        old.groups.insert("sg-b".into(), "b".into());
        old.rules
            .insert("r1".into(), rule("sg-a", "tcp 22 from 0.0.0.0/0"));
        old.rules
            .insert("r2".into(), rule("sg-a", "tcp 80 from 0.0.0.0/0"));
        old.members
            .insert("sg-a".into(), vec!["192.0.2.1".into(), "192.0.2.2".into()]);
        old.interfaces
            .insert("eth0".into(), iface("web", 2, &["sg-a"]));
        old.interfaces
            .insert("eth1".into(), iface("db", 3, &["sg-b"]));
        assert!(diff(&old, &old).is_empty());

        let mut new = old.clone();
        new.groups.remove("sg-b");
        new.groups.insert("sg-c".into(), "c".into());
        // A rule whose text changes is removed and added under the same id.
        new.rules
            .insert("r2".into(), rule("sg-a", "tcp 443 from 0.0.0.0/0"));
        new.members
            .insert("sg-a".into(), vec!["192.0.2.2".into(), "192.0.2.3".into()]);
        new.interfaces.remove("eth1");
        new.interfaces
            .insert("eth0".into(), iface("web", 2, &["sg-a", "sg-c"]));
        new.interfaces
            .insert("eth2".into(), iface("app", 4, &["sg-c"]));

        let d = diff(&old, &new);
        assert_eq!(d.groups_added, ["sg-c"]);
        assert_eq!(d.groups_removed, ["sg-b"]);
        assert_eq!(d.rules_added, [("r2".into(), new.rules["r2"].clone())]);
        assert_eq!(d.rules_removed, [("r2".into(), old.rules["r2"].clone())]);
        assert_eq!(
            d.members["sg-a"],
            (vec!["192.0.2.3".to_string()], vec!["192.0.2.1".to_string()])
        );
        assert_eq!(
            d.interfaces_added,
            [("eth2".into(), iface("app", 4, &["sg-c"]))]
        );
        assert_eq!(
            d.interfaces_changed,
            [("eth0".into(), iface("web", 2, &["sg-a", "sg-c"]))]
        );
        assert_eq!(
            d.interfaces_removed,
            [("eth1".into(), iface("db", 3, &["sg-b"]))]
        );
    }
}
