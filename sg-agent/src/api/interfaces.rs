//! Network interfaces as EC2 shows them: every interface of the store's policy (imported
//! instances and the ones hosts registered), its addresses and groups. The interface id is
//! its policy name (`web-1`, `web-1/eth1`, `<host>/<device>`). Only imported instances'
//! groups can be changed here (ModifyNetworkInterfaceAttribute): a registered interface is its
//! host's (`sg-agent daemon --register`) and changes there. Too many groups is P7's
//! SecurityGroupsPerInterfaceLimitExceeded, from the validator's Q2.

use serde_json::Value;

use super::Account;
use super::actions::{Answer, Finish, paginate};
use super::change::Change;
use super::fault::Fault;
use super::view::{State, any_match};
use super::wire::{Filter, Page};
use crate::policy::{GroupId, Interface};
use crate::store::layout::{Key, decode};

/// One interface as DescribeNetworkInterfaces answers it.
#[derive(Clone, Debug)]
pub struct InterfaceView {
    pub id: String,
    pub instance: String,
    pub vpc: String,
    pub v4: Vec<String>,
    pub v6: Vec<String>,
    /// (id, name)
    pub groups: Vec<(String, String)>,
}

fn not_found(id: &str) -> Fault {
    Fault::client(
        "InvalidNetworkInterfaceID.NotFound",
        format!("The networkInterface ID '{id}' does not exist"),
    )
}

fn view(s: &State, acct: &Account, i: &Interface) -> InterfaceView {
    let (v4, v6): (Vec<std::net::IpAddr>, Vec<_>) = i.addresses.iter().partition(|a| a.is_ipv4());
    InterfaceView {
        id: i.name.clone(),
        instance: i.instance.clone(),
        vpc: acct.vpc.clone(),
        v4: v4.iter().map(ToString::to_string).collect(),
        v6: v6.iter().map(ToString::to_string).collect(),
        groups: i
            .groups
            .iter()
            .map(|g| {
                let name = s.policy.groups.get(g).map(|g| g.name.clone());
                (g.to_string(), name.unwrap_or_default())
            })
            .collect(),
    }
}

fn filter_values(name: &str, v: &InterfaceView) -> Option<Vec<String>> {
    Some(match name {
        "network-interface-id" => vec![v.id.clone()],
        "group-id" => v.groups.iter().map(|(id, _)| id.clone()).collect(),
        "group-name" => v.groups.iter().map(|(_, n)| n.clone()).collect(),
        "addresses.private-ip-address" | "private-ip-address" => v.v4.clone(),
        "ipv6-addresses.ipv6-address" => v.v6.clone(),
        "vpc-id" => vec![v.vpc.clone()],
        "description" => vec![v.instance.clone()],
        _ => return None,
    })
}

pub fn describe(
    s: &State,
    acct: &Account,
    ids: &[String],
    filters: &[Filter],
    page: &Page,
) -> Result<Answer, Fault> {
    for id in ids {
        if s.policy.interface(id).is_none() {
            return Err(not_found(id));
        }
    }
    let mut out = Vec::new();
    for i in &s.policy.interfaces {
        if !ids.is_empty() && !ids.contains(&i.name) {
            continue;
        }
        let v = view(s, acct, i);
        let mut keep = true;
        for f in filters {
            let values = filter_values(&f.name, &v)
                .ok_or_else(|| Fault::invalid(format!("The filter '{}' is invalid", f.name)))?;
            keep &= any_match(f, &values);
        }
        if keep {
            out.push(v);
        }
    }
    let (interfaces, next) = paginate(out, page)?;
    Ok(Answer::Interfaces { interfaces, next })
}

/// Replaces the groups of an imported instance's interface.
pub fn modify(s: &State, id: &str, groups: &[String]) -> Result<(Change, Finish), Fault> {
    let iface = s.policy.interface(id).ok_or_else(|| not_found(id))?;
    for g in groups {
        if !s.policy.groups.contains_key(&GroupId(g.clone())) {
            return Err(Fault::group_not_found(g));
        }
    }
    let key = Key::Instance(iface.instance.clone());
    let Some(bytes) = s.snapshot.values.get(&key) else {
        return Err(Fault::client(
            "OperationNotPermitted",
            format!(
                "interface {id} is registered by its host's agent (sg-agent daemon --register); \
                 change its groups there"
            ),
        ));
    };
    let old = decode(&key, bytes).map_err(|e| Fault::internal(format!("{e:#}")))?;
    let mut new = old.clone();
    let list: Value = groups.iter().map(|g| Value::from(g.as_str())).collect();
    let prefix = format!("{}/", iface.instance);
    match new.get_mut("interfaces").and_then(Value::as_array_mut) {
        None => new["groups"] = list,
        Some(items) => {
            let only_one = items.len() == 1;
            let j = items.iter().enumerate().position(|(j, item)| {
                let full = match item["name"].as_str() {
                    Some(n) => format!("{prefix}{n}"),
                    None if only_one => iface.instance.clone(),
                    None => format!("{prefix}eth{j}"),
                };
                full == id
            });
            let j = j.ok_or_else(|| not_found(id))?;
            items[j]["groups"] = list;
        }
    }
    let mut change = Change::default();
    change.instances.insert(iface.instance.clone(), (old, new));
    Ok((change, Box::new(|_| Answer::Done)))
}
