//! The EC2 view of the store: one snapshot validated as one policy (the same validator as
//! `sg-agent check`), plus what EC2 knows of each group that the policy does not carry (its
//! VPC and tags, kept beside the group in its store value). Rules are shown as EC2 shows them:
//! one [`SgRule`] per rule (DescribeSecurityGroupRules), or grouped into IpPermissions by
//! protocol and ports (DescribeSecurityGroups).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fault::Fault;
use super::wire::{Filter, GroupRef};
use crate::config::Loaded;
use crate::policy::{Direction, Group, GroupId, IcmpMatch, Peer, Policy, Protocol, Rule};
use crate::store::layout::{Key, Snapshot};

/// What the API adds to a group's store value, beside its policy payload:
/// `{"schema":1,"group":{...},"ec2":{"vpc_id":..,"tags":{..}}}`. Agents read only `group`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// On the default group of a VPC made by CreateVpc: the VPC's CIDR block (a VPC exists
    /// while a group names it, and its default group cannot be deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_cidr: Option<String>,
    /// The tags of the group's rules, by rule id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_tags: BTreeMap<String, BTreeMap<String, String>>,
}

/// The account and the VPC every group without its own belongs to.
#[derive(Clone, Debug)]
pub struct Account {
    pub owner: String,
    pub vpc: String,
    /// For ARNs only.
    pub region: String,
}

/// The store at one revision, as EC2 sees it.
pub struct State {
    pub revision: i64,
    pub snapshot: Snapshot,
    /// The snapshot as one native document (what changes are made to).
    pub doc: Value,
    pub policy: Policy,
    pub meta: BTreeMap<String, Meta>,
    /// The EC2 metadata of network ACLs (their VPC and tags), by NACL id.
    pub nacl_meta: BTreeMap<String, Meta>,
}

impl State {
    pub fn new(snapshot: Snapshot) -> Result<State, Fault> {
        let rendered = snapshot
            .render()
            .map_err(|e| Fault::internal(format!("the store cannot be read: {e:#}")))?;
        let Loaded { policy, .. } = rendered
            .load("the store")
            .map_err(|e| Fault::internal(format!("the store's policy is not valid: {e:#}")))?;
        let (mut meta, mut nacl_meta) = (BTreeMap::new(), BTreeMap::new());
        for (key, bytes) in &snapshot.values {
            let into = match key {
                Key::Group(id) => (&mut meta, id),
                Key::NetworkAcl(id) => (&mut nacl_meta, id),
                _ => continue,
            };
            if let Ok(v) = serde_json::from_slice::<Value>(bytes)
                && let Some(m) = v.get("ec2")
                && let Ok(m) = serde_json::from_value::<Meta>(m.clone())
            {
                into.0.insert(into.1.clone(), m);
            }
        }
        Ok(State {
            revision: snapshot.revision,
            doc: rendered.doc,
            snapshot,
            policy,
            meta,
            nacl_meta,
        })
    }

    pub fn meta(&self, id: &GroupId) -> Meta {
        self.meta.get(id.as_str()).cloned().unwrap_or_default()
    }

    pub fn vpc_of<'a>(&'a self, id: &GroupId, acct: &'a Account) -> &'a str {
        self.meta
            .get(id.as_str())
            .and_then(|m| m.vpc_id.as_deref())
            .unwrap_or(&acct.vpc)
    }

    /// The group a request names: by id, or by name in the default VPC.
    pub fn group(&self, r: &GroupRef, acct: &Account) -> Result<&Group, Fault> {
        match r {
            GroupRef::Id(id) => self
                .policy
                .groups
                .get(&GroupId(id.clone()))
                .ok_or_else(|| Fault::group_not_found(id)),
            GroupRef::Name(name) => self
                .policy
                .groups
                .values()
                .find(|g| g.name == *name && self.vpc_of(&g.id, acct) == acct.vpc)
                .ok_or_else(|| {
                    Fault::client(
                        "InvalidGroup.NotFound",
                        format!(
                            "The security group '{name}' does not exist in default VPC '{}'",
                            acct.vpc
                        ),
                    )
                }),
        }
    }
}

/// A rule's peer as EC2 names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RulePeer {
    Cidr4(String),
    Cidr6(String),
    PrefixList(String),
    Group(String),
}

/// One rule as DescribeSecurityGroupRules and Authorize answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgRule {
    pub id: String,
    pub group_id: String,
    pub egress: bool,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `-1` or a number.
    pub protocol: String,
    /// -1 when the protocol has no ports (as EC2 shows rules).
    pub from: i32,
    pub to: i32,
    pub peer: RulePeer,
    pub description: Option<String>,
    /// Filled by DescribeSecurityGroupRules from the group's metadata.
    pub tags: BTreeMap<String, String>,
}

impl SgRule {
    pub fn of(r: &Rule) -> SgRule {
        let (protocol, from, to) = protocol(&r.protocol);
        let peer = match &r.peer {
            Peer::Cidr(n @ ipnet::IpNet::V4(_)) => RulePeer::Cidr4(n.to_string()),
            Peer::Cidr(n) => RulePeer::Cidr6(n.to_string()),
            Peer::PrefixList(id) => RulePeer::PrefixList(id.to_string()),
            Peer::Group(id) => RulePeer::Group(id.to_string()),
        };
        SgRule {
            id: r.id.to_string(),
            group_id: r.group.to_string(),
            egress: r.direction == Direction::Egress,
            protocol,
            from,
            to,
            peer,
            description: r.description.clone(),
            tags: BTreeMap::new(),
        }
    }

    /// AWS's words for a rule in InvalidPermission messages.
    pub fn words(&self) -> String {
        let peer = match &self.peer {
            RulePeer::Cidr4(c) | RulePeer::Cidr6(c) => c.clone(),
            RulePeer::PrefixList(p) => p.clone(),
            RulePeer::Group(g) => g.clone(),
        };
        let proto = match self.protocol.as_str() {
            "-1" => "ALL".to_string(),
            p => p.to_ascii_uppercase(),
        };
        format!(
            "peer: {peer}, {proto}, from port: {}, to port: {}, ALLOW",
            self.from, self.to
        )
    }
}

/// EC2's protocol name and port fields of a rule (ICMP: type and code).
fn protocol(p: &Protocol) -> (String, i32, i32) {
    let icmp = |m: &IcmpMatch| match *m {
        IcmpMatch::All => (-1, -1),
        IcmpMatch::Type(t) => (i32::from(t), -1),
        IcmpMatch::TypeCode(t, c) => (i32::from(t), i32::from(c)),
    };
    match p {
        Protocol::All => ("-1".into(), -1, -1),
        Protocol::Tcp(r) => ("tcp".into(), i32::from(r.from), i32::from(r.to)),
        Protocol::Udp(r) => ("udp".into(), i32::from(r.from), i32::from(r.to)),
        Protocol::Icmp(m) => {
            let (f, t) = icmp(m);
            ("icmp".into(), f, t)
        }
        Protocol::Icmpv6(m) => {
            let (f, t) = icmp(m);
            ("icmpv6".into(), f, t)
        }
        Protocol::Number(n) => (n.to_string(), -1, -1),
    }
}

/// One IpPermission of DescribeSecurityGroups: the rules of one protocol and port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPermission {
    pub protocol: String,
    /// None for `-1` and other protocols without ports (EC2 leaves the fields out).
    pub ports: Option<(i32, i32)>,
    pub peers: Vec<(RulePeer, Option<String>)>,
}

/// A group's rules of one direction, grouped as EC2 shows them (order of first appearance).
pub fn permissions(rules: &[Rule]) -> Vec<IpPermission> {
    let mut out: Vec<IpPermission> = Vec::new();
    for r in rules.iter().map(SgRule::of) {
        let has_ports = matches!(r.protocol.as_str(), "tcp" | "udp" | "icmp" | "icmpv6");
        let ports = has_ports.then_some((r.from, r.to));
        let peer = (r.peer, r.description);
        match out
            .iter_mut()
            .find(|p| p.protocol == r.protocol && p.ports == ports)
        {
            Some(p) => p.peers.push(peer),
            None => out.push(IpPermission {
                protocol: r.protocol,
                ports,
                peers: vec![peer],
            }),
        }
    }
    out
}

/// EC2's filter values: `*` any run of characters, `?` any one; case-sensitive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether any of `values` matches any of the filter's values.
pub fn any_match(f: &Filter, values: &[String]) -> bool {
    f.values
        .iter()
        .any(|pat| values.iter().any(|v| glob(pat, v)))
}

/// The values a DescribeSecurityGroups filter looks at in one group, or None for a filter
/// name EC2 does not have.
pub fn group_filter_values(
    name: &str,
    g: &Group,
    state: &State,
    acct: &Account,
) -> Option<Vec<String>> {
    let meta = state.meta(&g.id);
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(meta.tags.get(key).cloned().into_iter().collect());
    }
    let (rules, field) = match name.strip_prefix("egress.ip-permission.") {
        Some(field) => (&g.egress, field),
        None => match name.strip_prefix("ip-permission.") {
            Some(field) => (&g.ingress, field),
            None => (&g.ingress, ""),
        },
    };
    if !field.is_empty() {
        return rule_field_values(field, rules);
    }
    Some(match name {
        "group-id" => vec![g.id.to_string()],
        "group-name" => vec![g.name.clone()],
        "description" => vec![g.description.clone()],
        "vpc-id" => vec![state.vpc_of(&g.id, acct).to_string()],
        "owner-id" => vec![acct.owner.clone()],
        "tag-key" => meta.tags.keys().cloned().collect(),
        "tag-value" => meta.tags.values().cloned().collect(),
        _ => return None,
    })
}

fn rule_field_values(field: &str, rules: &[Rule]) -> Option<Vec<String>> {
    let rules: Vec<SgRule> = rules.iter().map(SgRule::of).collect();
    let pick = |f: &dyn Fn(&SgRule) -> Option<String>| rules.iter().filter_map(f).collect();
    Some(match field {
        "protocol" => pick(&|r| Some(r.protocol.clone())),
        "from-port" => pick(&|r| Some(r.from.to_string())),
        "to-port" => pick(&|r| Some(r.to.to_string())),
        "cidr" => pick(&|r| match &r.peer {
            RulePeer::Cidr4(c) => Some(c.clone()),
            _ => None,
        }),
        "ipv6-cidr" => pick(&|r| match &r.peer {
            RulePeer::Cidr6(c) => Some(c.clone()),
            _ => None,
        }),
        "prefix-list-id" => pick(&|r| match &r.peer {
            RulePeer::PrefixList(p) => Some(p.clone()),
            _ => None,
        }),
        "group-id" => pick(&|r| match &r.peer {
            RulePeer::Group(g) => Some(g.clone()),
            _ => None,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_ec2_filters_do() {
        for (p, t, want) in [
            ("web", "web", true),
            ("web", "webs", false),
            ("w*", "web", true),
            ("*b", "web", true),
            ("w?b", "web", true),
            ("*", "", true),
            ("a*c*e", "abcde", true),
            ("a*c*e", "abcdf", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }
}
