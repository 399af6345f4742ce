//! Network ACLs over the API (A1-A27 as EC2 speaks them): CreateNetworkAcl,
//! Create/Replace/DeleteNetworkAclEntry, DeleteNetworkAcl, ReplaceNetworkAclAssociation,
//! DescribeNetworkAcls and DescribeSubnets.
//!
//! NACLs and subnets are the store's `v1/network-acls/<id>` and `v1/subnets/<id>` values. A
//! write changes one NACL's (or subnet's) native value and the whole policy is validated by
//! the one validator (config/nacl.rs: rule numbers, protocols and their ports or ICMP type and
//! code, CIDRs, quotas), so a call may write exactly what a file may say, all or nothing (P4).
//! What only EC2 has lives here: the `*` entries answers show (A6), association ids, a NACL's
//! VPC and tags (kept beside its payload), and EC2's codes for what the API checks itself
//! (an entry that exists or does not, the default NACL, a NACL in use).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Account;
use super::actions::{Answer, Finish, new_id, paginate};
use super::change::Change;
use super::fault::Fault;
use super::tags::tag_map;
use super::view::{Meta, State, any_match};
use super::wire::{Filter, Listing, NaclEntrySpec, Request};
use crate::policy::{
    Direction, IcmpMatch, NaclAction, NaclEntry, NaclId, NetworkAcl, Policy, Protocol, Subnet,
};
use crate::store::native;

/// One entry as EC2 shows it (`*` entries included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub number: u32,
    pub egress: bool,
    /// `allow` or `deny`.
    pub action: &'static str,
    /// A number as EC2 shows it: `-1`, `6`, `17`, `1`, `58`, ...
    pub protocol: String,
    pub cidr: IpNet,
    pub ports: Option<(u16, u16)>,
    /// (type, code); -1 is all.
    pub icmp: Option<(i32, i32)>,
}

/// One network ACL as DescribeNetworkAcls answers it.
#[derive(Clone, Debug)]
pub struct NaclView {
    pub id: String,
    pub vpc: String,
    pub default: bool,
    pub entries: Vec<EntryView>,
    /// (association id, subnet id)
    pub associations: Vec<(String, String)>,
    pub tags: BTreeMap<String, String>,
}

/// One subnet as DescribeSubnets answers it.
#[derive(Clone, Debug)]
pub struct SubnetView {
    pub id: String,
    pub vpc: String,
    pub cidr: Option<String>,
    pub ipv6_cidr: Option<String>,
    pub available: u64,
}

fn acl_not_found(id: &str) -> Fault {
    Fault::client(
        "InvalidNetworkAclID.NotFound",
        format!("The network ACL ID '{id}' does not exist"),
    )
}

fn entry_not_found(n: i64, egress: bool) -> Fault {
    Fault::client(
        "InvalidNetworkAclEntry.NotFound",
        format!("The network acl entry identified by {n} (egress: {egress}) does not exist."),
    )
}

/// The id of the association of `subnet` with `acl`: EC2 gives a new one at every
/// association, and so does this derivation when the NACL changes (A12).
pub fn association_id(subnet: &str, acl: &str) -> String {
    let digest = Sha256::digest(format!("{subnet}\n{acl}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("aclassoc-{}", &hex[..17])
}

/// Whether the VPC has IPv6 (a subnet with an IPv6 CIDR): then the lists also end with the
/// IPv6 `*` rule (A6).
fn has_v6(p: &Policy) -> bool {
    p.subnets
        .iter()
        .any(|s| s.cidrs.iter().any(|c| c.addr().is_ipv6()))
}

fn entry_view(e: &NaclEntry, egress: bool) -> EntryView {
    let icmp = |m: &IcmpMatch| match *m {
        IcmpMatch::All => (-1, -1),
        IcmpMatch::Type(t) => (i32::from(t), -1),
        IcmpMatch::TypeCode(t, c) => (i32::from(t), i32::from(c)),
    };
    let (protocol, ports, icmp) = match &e.protocol {
        Protocol::All => ("-1".to_string(), None, None),
        Protocol::Tcp(r) => ("6".into(), Some((r.from, r.to)), None),
        Protocol::Udp(r) => ("17".into(), Some((r.from, r.to)), None),
        Protocol::Icmp(m) => ("1".into(), None, Some(icmp(m))),
        Protocol::Icmpv6(m) => ("58".into(), None, Some(icmp(m))),
        Protocol::Number(n) => (n.to_string(), None, None),
    };
    EntryView {
        number: u32::from(e.number),
        egress,
        action: match e.action {
            NaclAction::Allow => "allow",
            NaclAction::Deny => "deny",
        },
        protocol,
        cidr: e.cidr,
        ports,
        icmp,
    }
}

/// The `*` rule of one list and family (A6): deny everything, numbered 32767 (IPv4) or 32768
/// (IPv6) as EC2 shows them.
fn star(egress: bool, v6: bool) -> EntryView {
    let (number, cidr) = if v6 {
        (32768, "::/0")
    } else {
        (32767, "0.0.0.0/0")
    };
    EntryView {
        number,
        egress,
        action: "deny",
        protocol: "-1".into(),
        cidr: cidr.parse().expect("a CIDR"),
        ports: None,
        icmp: None,
    }
}

/// A NACL as EC2 shows it: each list (egress first, as EC2 does) in number order, its `*`
/// rules last.
pub fn view(p: &Policy, acct: &Account, meta: &Meta, acl: &NetworkAcl) -> NaclView {
    let mut entries = Vec::new();
    for (dir, egress) in [(Direction::Egress, true), (Direction::Ingress, false)] {
        entries.extend(acl.entries(dir).iter().map(|e| entry_view(e, egress)));
        entries.push(star(egress, false));
        if has_v6(p) {
            entries.push(star(egress, true));
        }
    }
    let associations = p
        .subnets
        .iter()
        .filter(|s| s.network_acl == acl.id)
        .map(|s| {
            (
                association_id(s.id.as_str(), acl.id.as_str()),
                s.id.to_string(),
            )
        })
        .collect();
    NaclView {
        id: acl.id.to_string(),
        vpc: meta.vpc_id.clone().unwrap_or_else(|| acct.vpc.clone()),
        default: acl.is_default,
        entries,
        associations,
        tags: meta.tags.clone(),
    }
}

fn find<'a>(s: &'a State, id: &str) -> Result<&'a NetworkAcl, Fault> {
    s.policy
        .network_acls
        .get(&NaclId(id.to_string()))
        .ok_or_else(|| acl_not_found(id))
}

fn meta(s: &State, id: &str) -> Meta {
    s.nacl_meta.get(id).cloned().unwrap_or_default()
}

/// The VPCs the API knows: the account's and those of CreateVpc (a group names each).
fn known_vpc(s: &State, acct: &Account, id: &str) -> bool {
    id == acct.vpc || s.meta.values().any(|m| m.vpc_id.as_deref() == Some(id))
}

/// The writes.
pub fn plan(s: &State, acct: &Account, req: &Request) -> Result<(Change, Finish), Fault> {
    match req {
        Request::CreateNetworkAcl { vpc_id, tags } => create(s, acct, vpc_id, tags),
        Request::PutNetworkAclEntry { replace, entry } => put_entry(s, *replace, entry),
        Request::DeleteNetworkAclEntry {
            acl_id,
            number,
            egress,
        } => delete_entry(s, acl_id, *number, *egress),
        Request::DeleteNetworkAcl { acl_id } => delete(s, acl_id),
        Request::ReplaceNetworkAclAssociation {
            association_id,
            acl_id,
        } => reassociate(s, association_id, acl_id),
        _ => unreachable!("nacl::plan takes its writes only"),
    }
}

/// A11: a new custom NACL has empty lists: it denies everything until given entries.
fn create(
    s: &State,
    acct: &Account,
    vpc_id: &str,
    tags: &[super::wire::Tag],
) -> Result<(Change, Finish), Fault> {
    if !known_vpc(s, acct, vpc_id) {
        return Err(Fault::client(
            "InvalidVpcID.NotFound",
            format!("The vpc ID '{vpc_id}' does not exist"),
        ));
    }
    let id = new_id("acl-");
    let meta = Meta {
        vpc_id: Some(vpc_id.to_string()),
        tags: tag_map(tags)?,
        ..Meta::default()
    };
    let value = json!({"id": id, "default": false, "inbound": [], "outbound": []});
    let mut change = Change::default();
    change
        .network_acls
        .insert(id.clone(), Some((value, meta.clone())));
    let acct = acct.clone();
    let finish: Finish = Box::new(move |p| {
        let acl = &p.network_acls[&NaclId(id)];
        Answer::NetworkAcl {
            acl: view(p, &acct, &meta, acl),
        }
    });
    Ok((change, finish))
}

/// The list an entry goes to: egress is the outbound list (traffic leaving the subnet).
fn list_key(egress: bool) -> &'static str {
    if egress { "outbound" } else { "inbound" }
}

fn direction(egress: bool) -> Direction {
    if egress {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// The entry `number` of one list, when the number is one a list can hold (others are the
/// validator's to refuse, A3).
fn existing(acl: &NetworkAcl, number: i64, egress: bool) -> Option<&NaclEntry> {
    acl.entries(direction(egress))
        .iter()
        .find(|e| i64::from(e.number) == number)
}

/// The native entry of a request; values stay as sent, for the validator to judge.
fn native_entry(e: &NaclEntrySpec) -> Result<Value, Fault> {
    let cidr = match (&e.cidr, &e.ipv6_cidr) {
        (Some(c), None) | (None, Some(c)) => c,
        (Some(_), Some(_)) => {
            return Err(Fault::client(
                "InvalidParameterCombination",
                "An entry has one CidrBlock or one Ipv6CidrBlock, not both",
            ));
        }
        (None, None) => return Err(Fault::missing("CidrBlock")),
    };
    let mut m = json!({
        "number": e.number,
        "action": e.action,
        "protocol": e.protocol,
        "cidr": cidr,
    });
    match e.ports {
        (Some(from), Some(to)) => m["ports"] = json!({"from": from, "to": to}),
        (Some(_), None) => return Err(Fault::missing("PortRange.To")),
        (None, Some(_)) => return Err(Fault::missing("PortRange.From")),
        (None, None) => {}
    }
    if let Some(t) = e.icmp.0 {
        m["type"] = t.into();
    }
    if let Some(c) = e.icmp.1 {
        m["code"] = c.into();
    }
    Ok(m)
}

/// The NACL's native value with one list changed by `edit`.
fn edited(acl: &NetworkAcl, egress: bool, edit: impl FnOnce(&mut Vec<Value>)) -> Value {
    let mut value = native::network_acl(acl);
    let list = value[list_key(egress)]
        .as_array_mut()
        .expect("a native NACL has both lists");
    edit(list);
    value
}

fn put_nacl(s: &State, acl: &NetworkAcl, value: Value) -> Change {
    let mut change = Change::default();
    change.network_acls.insert(
        native::acl_id(acl.id.as_str()),
        Some((value, meta(s, acl.id.as_str()))),
    );
    change
}

/// CreateNetworkAclEntry (a number already used: NetworkAclEntryAlreadyExists, A7) and
/// ReplaceNetworkAclEntry (a number not used: InvalidNetworkAclEntry.NotFound).
fn put_entry(s: &State, replace: bool, e: &NaclEntrySpec) -> Result<(Change, Finish), Fault> {
    let acl = find(s, &e.acl_id)?;
    let old = existing(acl, e.number, e.egress);
    if !replace && old.is_some() {
        return Err(Fault::client(
            "NetworkAclEntryAlreadyExists",
            format!(
                "The network acl entry identified by {} already exists.",
                e.number
            ),
        ));
    }
    if replace && old.is_none() {
        return Err(entry_not_found(e.number, e.egress));
    }
    let new = native_entry(e)?;
    let value = edited(acl, e.egress, |list| {
        list.retain(|x| x["number"] != e.number);
        list.push(new);
    });
    Ok((put_nacl(s, acl, value), Box::new(|_| Answer::Done)))
}

fn delete_entry(
    s: &State,
    acl_id: &str,
    number: i64,
    egress: bool,
) -> Result<(Change, Finish), Fault> {
    let acl = find(s, acl_id)?;
    if existing(acl, number, egress).is_none() {
        return Err(entry_not_found(number, egress));
    }
    let value = edited(acl, egress, |list| list.retain(|x| x["number"] != number));
    Ok((put_nacl(s, acl, value), Box::new(|_| Answer::Done)))
}

/// A9: the default NACL cannot be deleted; A12: nor one a subnet uses.
fn delete(s: &State, id: &str) -> Result<(Change, Finish), Fault> {
    let acl = find(s, id)?;
    if acl.is_default {
        return Err(Fault::client(
            "InvalidParameterValue",
            format!("cannot delete default network ACL {id} (A9)"),
        ));
    }
    if s.policy.subnets.iter().any(|sub| sub.network_acl == acl.id) {
        return Err(Fault::client(
            "DependencyViolation",
            format!("The networkAcl '{id}' has dependencies and cannot be deleted."),
        ));
    }
    let mut change = Change::default();
    change
        .network_acls
        .insert(native::acl_id(acl.id.as_str()), None);
    Ok((change, Box::new(|_| Answer::Done)))
}

/// A12: a new association replaces the subnet's old one.
fn reassociate(s: &State, assoc: &str, acl_id: &str) -> Result<(Change, Finish), Fault> {
    let subnet: &Subnet = s
        .policy
        .subnets
        .iter()
        .find(|sub| association_id(sub.id.as_str(), sub.network_acl.as_str()) == assoc)
        .ok_or_else(|| {
            Fault::client(
                "InvalidAssociationID.NotFound",
                format!("The association ID '{assoc}' does not exist"),
            )
        })?;
    let acl = find(s, acl_id)?;
    let mut value = native::subnet(subnet);
    value["network_acl"] = native::acl_id(acl.id.as_str()).into();
    let id = native::subnet_id(subnet.id.as_str());
    let mut change = Change::default();
    change.subnets.insert(id, value);
    let new_id = association_id(subnet.id.as_str(), acl.id.as_str());
    Ok((
        change,
        Box::new(move |_| Answer::NaclAssociation { id: new_id }),
    ))
}

/// The reads: DescribeNetworkAcls, DescribeSubnets.
pub fn read(s: &State, acct: &Account, req: &Request) -> Result<Answer, Fault> {
    match req {
        Request::DescribeNetworkAcls(Listing { ids, filters, page }) => {
            for id in ids {
                find(s, id)?;
            }
            let mut out = Vec::new();
            for acl in s.policy.network_acls.values() {
                if !ids.is_empty() && !ids.contains(&acl.id.0) {
                    continue;
                }
                let v = view(&s.policy, acct, &meta(s, acl.id.as_str()), acl);
                if keep(filters, |name| nacl_filter_values(name, &v, acct))? {
                    out.push(v);
                }
            }
            let (acls, next) = paginate(out, page)?;
            Ok(Answer::NetworkAcls { acls, next })
        }
        Request::DescribeSubnets(Listing { ids, filters, page }) => {
            for id in ids {
                if !s.policy.subnets.iter().any(|sub| sub.id.0 == *id) {
                    return Err(Fault::client(
                        "InvalidSubnetID.NotFound",
                        format!("The subnet ID '{id}' does not exist"),
                    ));
                }
            }
            let mut out = Vec::new();
            for sub in &s.policy.subnets {
                if !ids.is_empty() && !ids.contains(&sub.id.0) {
                    continue;
                }
                let v = subnet_view(sub, acct);
                if keep(filters, |name| subnet_filter_values(name, &v, acct))? {
                    out.push(v);
                }
            }
            let (subnets, next) = paginate(out, page)?;
            Ok(Answer::Subnets { subnets, next })
        }
        _ => unreachable!("nacl::read takes its reads only"),
    }
}

/// Every filter matches (values of one filter: any); an unknown filter name is EC2's error.
fn keep(filters: &[Filter], values: impl Fn(&str) -> Option<Vec<String>>) -> Result<bool, Fault> {
    let mut keep = true;
    for f in filters {
        let v = values(&f.name)
            .ok_or_else(|| Fault::invalid(format!("The filter '{}' is invalid", f.name)))?;
        keep &= any_match(f, &v);
    }
    Ok(keep)
}

fn nacl_filter_values(name: &str, v: &NaclView, acct: &Account) -> Option<Vec<String>> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(v.tags.get(key).cloned().into_iter().collect());
    }
    let entries = |f: &dyn Fn(&EntryView) -> Option<String>| -> Vec<String> {
        v.entries.iter().filter_map(f).collect()
    };
    Some(match name {
        "network-acl-id" => vec![v.id.clone()],
        "vpc-id" => vec![v.vpc.clone()],
        "default" => vec![v.default.to_string()],
        "owner-id" => vec![acct.owner.clone()],
        "tag-key" => v.tags.keys().cloned().collect(),
        "association.association-id" => v.associations.iter().map(|a| a.0.clone()).collect(),
        "association.subnet-id" => v.associations.iter().map(|a| a.1.clone()).collect(),
        "association.network-acl-id" if !v.associations.is_empty() => vec![v.id.clone()],
        "association.network-acl-id" => vec![],
        "entry.rule-number" => entries(&|e| Some(e.number.to_string())),
        "entry.rule-action" => entries(&|e| Some(e.action.to_string())),
        "entry.protocol" => entries(&|e| Some(e.protocol.clone())),
        "entry.egress" => entries(&|e| Some(e.egress.to_string())),
        "entry.cidr" => entries(&|e| e.cidr.addr().is_ipv4().then(|| e.cidr.to_string())),
        "entry.ipv6-cidr" => entries(&|e| e.cidr.addr().is_ipv6().then(|| e.cidr.to_string())),
        "entry.port-range.from" => entries(&|e| e.ports.map(|p| p.0.to_string())),
        "entry.port-range.to" => entries(&|e| e.ports.map(|p| p.1.to_string())),
        "entry.icmp.type" => entries(&|e| e.icmp.map(|i| i.0.to_string())),
        "entry.icmp.code" => entries(&|e| e.icmp.map(|i| i.1.to_string())),
        _ => return None,
    })
}

fn subnet_view(s: &Subnet, acct: &Account) -> SubnetView {
    let v4 = s.cidrs.iter().find(|c| c.addr().is_ipv4());
    let v6 = s.cidrs.iter().find(|c| c.addr().is_ipv6());
    // AWS reserves five addresses of every subnet.
    let available = v4.map_or(0, |c| {
        (1u64 << (32 - u32::from(c.prefix_len()))).saturating_sub(5)
    });
    SubnetView {
        id: s.id.to_string(),
        vpc: acct.vpc.clone(),
        cidr: v4.map(ToString::to_string),
        ipv6_cidr: v6.map(ToString::to_string),
        available,
    }
}

fn subnet_filter_values(name: &str, v: &SubnetView, acct: &Account) -> Option<Vec<String>> {
    Some(match name {
        "subnet-id" => vec![v.id.clone()],
        "vpc-id" => vec![v.vpc.clone()],
        "cidr-block" | "cidr" | "cidrBlock" => v.cidr.clone().into_iter().collect(),
        "ipv6-cidr-block-association.ipv6-cidr-block" => v.ipv6_cidr.clone().into_iter().collect(),
        "owner-id" => vec![acct.owner.clone()],
        "state" => vec!["available".into()],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::actions::testing::{acct, after, holding};
    use crate::config;
    use crate::store::layout::{self, Key};

    /// The lab's VPC (examples/vpc-nacl.yaml) as the store holds it.
    fn state() -> State {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/vpc-nacl.yaml");
        holding(
            &config::load_file(std::path::Path::new(path))
                .unwrap()
                .policy,
        )
    }

    fn code(s: &State, req: &Request) -> &'static str {
        after(s, req).err().expect("the call fails").code
    }

    fn entry(acl: &str, number: i64, action: &str, egress: bool, cidr: &str) -> NaclEntrySpec {
        NaclEntrySpec {
            acl_id: acl.into(),
            number,
            protocol: "6".into(),
            action: action.into(),
            egress,
            cidr: Some(cidr.into()),
            ipv6_cidr: None,
            ports: (Some(22), Some(22)),
            icmp: (None, None),
        }
    }

    fn create_entry(e: NaclEntrySpec) -> Request {
        Request::PutNetworkAclEntry {
            replace: false,
            entry: e,
        }
    }

    fn acl<'a>(s: &'a State, id: &str) -> &'a NetworkAcl {
        &s.policy.network_acls[&NaclId(id.into())]
    }

    /// A11, A6: a new custom NACL has no numbered entries, and its answer shows the `*`
    /// deny-all of each list and family.
    #[test]
    fn a11_a_new_nacl_denies_everything() {
        let req = Request::CreateNetworkAcl {
            vpc_id: "vpc-0a1b2c3d".into(),
            tags: vec![],
        };
        let (s, answer) = after(&state(), &req).unwrap();
        let Answer::NetworkAcl { acl: v } = answer else {
            panic!("{answer:?}")
        };
        assert!(v.id.starts_with("acl-") && v.id.len() == 21, "{}", v.id);
        assert!(!v.default);
        let stars: Vec<(u32, bool)> = v.entries.iter().map(|e| (e.number, e.egress)).collect();
        assert_eq!(
            stars,
            [(32767, true), (32768, true), (32767, false), (32768, false)]
        );
        assert!(
            v.entries
                .iter()
                .all(|e| e.action == "deny" && e.protocol == "-1")
        );
        let made = acl(&s, &v.id);
        assert!(made.inbound.is_empty() && made.outbound.is_empty());
        let other_vpc = Request::CreateNetworkAcl {
            vpc_id: "vpc-nowhere".into(),
            tags: vec![],
        };
        assert_eq!(code(&state(), &other_vpc), "InvalidVpcID.NotFound");
    }

    /// A4, A25: a deny numbered below an allow is written to the NACL's store key (what a
    /// router's agent reads) and sorts first; A7: its number is then taken.
    #[test]
    fn a4_a7_an_entry_lands_in_the_store_key_and_its_number_is_unique() {
        let deny = create_entry(entry("acl-public", 90, "deny", false, "198.51.100.10/32"));
        let (s, answer) = after(&state(), &deny).unwrap();
        assert!(matches!(answer, Answer::Done));
        let first = &acl(&s, "acl-public").inbound[0];
        assert_eq!((first.number, first.action), (90, NaclAction::Deny));
        let key = Key::NetworkAcl("acl-public".into());
        let payload = layout::decode(&key, &s.snapshot.values[&key]).unwrap();
        assert_eq!(payload["inbound"][0]["number"], 90, "{payload}");
        assert_eq!(code(&s, &deny), "NetworkAclEntryAlreadyExists");
        // The same number in the other list is another entry (A2).
        let out = create_entry(entry("acl-public", 90, "deny", true, "198.51.100.10/32"));
        assert!(after(&s, &out).is_ok());
    }

    /// ReplaceNetworkAclEntry changes an entry in place; a number no entry has is
    /// InvalidNetworkAclEntry.NotFound, for Replace and Delete alike.
    #[test]
    fn replace_and_delete_need_the_entry() {
        let replace = Request::PutNetworkAclEntry {
            replace: true,
            entry: entry("acl-public", 110, "deny", false, "198.51.100.10/32"),
        };
        let (s, _) = after(&state(), &replace).unwrap();
        let e = acl(&s, "acl-public")
            .inbound
            .iter()
            .find(|e| e.number == 110)
            .unwrap();
        assert_eq!(e.action, NaclAction::Deny);
        let missing = Request::PutNetworkAclEntry {
            replace: true,
            entry: entry("acl-public", 7, "deny", false, "198.51.100.10/32"),
        };
        assert_eq!(code(&s, &missing), "InvalidNetworkAclEntry.NotFound");
        let delete = |number| Request::DeleteNetworkAclEntry {
            acl_id: "acl-public".into(),
            number,
            egress: false,
        };
        let (s, _) = after(&s, &delete(110)).unwrap();
        assert!(
            acl(&s, "acl-public")
                .inbound
                .iter()
                .all(|e| e.number != 110)
        );
        assert_eq!(code(&s, &delete(110)), "InvalidNetworkAclEntry.NotFound");
        let nowhere = create_entry(entry("acl-nowhere", 1, "allow", false, "0.0.0.0/0"));
        assert_eq!(code(&s, &nowhere), "InvalidNetworkAclID.NotFound");
    }

    /// A3, A5, A18 through the one validator: what a file may not say, a call may not write
    /// (P4: nothing is written).
    #[test]
    fn a3_a5_a18_the_validator_judges_every_entry() {
        let s = state();
        for (number, action, ports) in [
            (0, "allow", (Some(22), Some(22))),
            (32767, "allow", (Some(22), Some(22))),
            (40000, "allow", (Some(22), Some(22))),
            (5, "permit", (Some(22), Some(22))),
            (5, "allow", (None, None)),
        ] {
            let mut e = entry("acl-public", number, action, false, "192.0.2.0/24");
            e.ports = ports;
            assert_eq!(
                code(&s, &create_entry(e)),
                "InvalidParameterValue",
                "{number} {action} {ports:?}"
            );
        }
        let mut both = entry("acl-public", 5, "allow", false, "192.0.2.0/24");
        both.ipv6_cidr = Some("::/0".into());
        assert_eq!(code(&s, &create_entry(both)), "InvalidParameterCombination");
    }

    /// A24: 20 entries per list and family counting the `*` rule: the 20th numbered entry is
    /// NetworkAclEntryLimitExceeded.
    #[test]
    fn a24_the_entry_quota_has_awss_code() {
        let mut s = state();
        // acl-private has 1 IPv4 outbound entry: 18 more fill the quota.
        for n in 0..18 {
            let e = entry("acl-private", 200 + n, "allow", true, "203.0.113.0/24");
            s = after(&s, &create_entry(e)).unwrap().0;
        }
        let e = entry("acl-private", 300, "allow", true, "203.0.113.0/24");
        assert_eq!(code(&s, &create_entry(e)), "NetworkAclEntryLimitExceeded");
    }

    /// A9: the default NACL cannot be deleted; A12: nor one a subnet uses; a NACL no subnet
    /// uses can.
    #[test]
    fn a9_a12_deleting_nacls() {
        let delete = |id: &str| Request::DeleteNetworkAcl { acl_id: id.into() };
        let s = state();
        assert_eq!(code(&s, &delete("acl-default")), "InvalidParameterValue");
        assert_eq!(code(&s, &delete("acl-public")), "DependencyViolation");
        assert_eq!(
            code(&s, &delete("acl-nowhere")),
            "InvalidNetworkAclID.NotFound"
        );
        let create = Request::CreateNetworkAcl {
            vpc_id: "vpc-0a1b2c3d".into(),
            tags: vec![],
        };
        let (s, Answer::NetworkAcl { acl: v }) = after(&s, &create).unwrap() else {
            panic!()
        };
        let (s, _) = after(&s, &delete(&v.id)).unwrap();
        assert!(!s.policy.network_acls.contains_key(&NaclId(v.id.clone())));
        assert!(!s.snapshot.values.contains_key(&Key::NetworkAcl(v.id)));
    }

    /// A12: a new association replaces the old one and has a new id; the old id is gone.
    #[test]
    fn a12_reassociating_a_subnet() {
        let s = state();
        let old = association_id("subnet-public", "acl-public");
        let req = |assoc: &str, acl: &str| Request::ReplaceNetworkAclAssociation {
            association_id: assoc.into(),
            acl_id: acl.into(),
        };
        let (s, answer) = after(&s, &req(&old, "acl-default")).unwrap();
        let Answer::NaclAssociation { id } = answer else {
            panic!("{answer:?}")
        };
        assert_ne!(id, old);
        let sub = s
            .policy
            .subnets
            .iter()
            .find(|x| x.id.0 == "subnet-public")
            .unwrap();
        assert_eq!(sub.network_acl.as_str(), "acl-default");
        assert_eq!(
            code(&s, &req(&old, "acl-public")),
            "InvalidAssociationID.NotFound"
        );
        assert_eq!(
            code(&s, &req(&id, "acl-nowhere")),
            "InvalidNetworkAclID.NotFound"
        );
        // The default NACL written by the API stays the default one.
        let (s, _) = after(&s, &req(&id, "acl-public")).unwrap();
        assert!(acl(&s, "acl-default").is_default);
    }

    #[test]
    fn describe_filters_pick_nacls_and_subnets() {
        let s = state();
        let f = |name: &str, v: &str| Filter {
            name: name.into(),
            values: vec![v.into()],
        };
        let ids = |filters: Vec<Filter>| {
            let req = Request::DescribeNetworkAcls(Listing {
                ids: vec![],
                filters,
                page: Default::default(),
            });
            let Answer::NetworkAcls { acls, .. } = read(&s, &acct(), &req).unwrap() else {
                panic!()
            };
            acls.into_iter().map(|a| a.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(vec![f("default", "true")]), ["acl-default"]);
        assert_eq!(
            ids(vec![f("association.subnet-id", "subnet-private")]),
            ["acl-private"]
        );
        assert_eq!(
            // Each filter looks at every entry: the `*` rules deny too.
            ids(vec![
                f("entry.rule-action", "deny"),
                f("entry.cidr", "192.0.2.12/32")
            ]),
            ["acl-private"]
        );
        assert_eq!(ids(vec![f("vpc-id", "vpc-0a1b2c3d")]).len(), 3);
        let bad = Request::DescribeNetworkAcls(Listing {
            ids: vec![],
            filters: vec![f("colour", "red")],
            page: Default::default(),
        });
        assert_eq!(
            read(&s, &acct(), &bad).unwrap_err().code,
            "InvalidParameterValue"
        );
        let subnets = Request::DescribeSubnets(Listing {
            ids: vec!["subnet-public".into()],
            filters: vec![],
            page: Default::default(),
        });
        let Answer::Subnets { subnets, .. } = read(&s, &acct(), &subnets).unwrap() else {
            panic!()
        };
        assert_eq!(subnets[0].cidr.as_deref(), Some("192.0.2.0/25"));
        assert_eq!(subnets[0].ipv6_cidr.as_deref(), Some("2001:db8:10::/64"));
        assert_eq!(subnets[0].available, 123);
    }
}
