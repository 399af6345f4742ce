//! One write of the API: the groups (prefix lists, network ACLs, subnets) it puts or deletes, applied to the snapshot's native
//! document and validated as a whole policy by the one validator (`config::load_str`, what
//! `sg-agent check` runs), then turned into the store values to commit. A validation error
//! becomes EC2's code for it (P4, P7) and nothing is written.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fault::Fault;
use super::view::{Meta, State};
use crate::config::{self, Diagnostics, Severity};
use crate::policy::{GroupId, NaclId, Policy, SubnetId};
use crate::store::layout::{Key, encode};
use crate::store::native;

/// The key every API write also puts, so that a concurrent API write that only deletes is
/// still seen by the others' compare-and-swap (`Store::commit_if_unchanged_since`). Agents
/// and `store import` ignore it (no layout key of theirs).
pub const SERIAL_KEY: &str = "v1/api/serial";

/// Groups to put (their native value and EC2 metadata) or delete (None), and imported
/// instances to rewrite (name -> their value before and after).
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub groups: BTreeMap<String, Option<(Value, Meta)>>,
    pub instances: BTreeMap<String, (Value, Value)>,
    /// Prefix lists to put (their native value) or delete (None).
    pub prefix_lists: BTreeMap<String, Option<Value>>,
    /// Network ACLs to put (their native value and EC2 metadata) or delete (None).
    pub network_acls: BTreeMap<String, Option<(Value, Meta)>>,
    /// Subnets to rewrite (their native value: a new association, A12).
    pub subnets: BTreeMap<String, Value>,
}

impl Change {
    pub fn put(&mut self, id: &str, group: Value, meta: Meta) {
        self.groups.insert(id.to_string(), Some((group, meta)));
    }

    pub fn delete(&mut self, id: &str) {
        self.groups.insert(id.to_string(), None);
    }
}

/// The native value of one group in the snapshot's document.
pub fn group_value(state: &State, id: &GroupId) -> Result<Value, Fault> {
    state.doc["security_groups"]
        .as_array()
        .and_then(|l| l.iter().find(|g| g["id"] == id.as_str()))
        .cloned()
        .ok_or_else(|| Fault::group_not_found(id.as_str()))
}

/// The document with the change applied.
pub fn document(state: &State, change: &Change) -> Value {
    let mut doc = state.doc.clone();
    let list = doc["security_groups"]
        .as_array_mut()
        .expect("a rendered document has security_groups");
    for (id, put) in &change.groups {
        let at = list.iter().position(|g| g["id"] == id.as_str());
        match (put, at) {
            (Some((v, _)), Some(i)) => list[i] = v.clone(),
            (Some((v, _)), None) => list.push(v.clone()),
            (None, Some(i)) => {
                list.remove(i);
            }
            (None, None) => {}
        }
    }
    if !change.prefix_lists.is_empty() && doc.get("prefix_lists").is_none() {
        doc["prefix_lists"] = Value::Array(vec![]);
    }
    if let Some(list) = doc.get_mut("prefix_lists").and_then(Value::as_array_mut) {
        for (id, put) in &change.prefix_lists {
            let at = list.iter().position(|p| p["id"] == id.as_str());
            match (put, at) {
                (Some(v), Some(i)) => list[i] = v.clone(),
                (Some(v), None) => list.push(v.clone()),
                (None, Some(i)) => {
                    list.remove(i);
                }
                (None, None) => {}
            }
        }
    }
    for (id, put) in &change.network_acls {
        upsert(&mut doc, "network_acls", id, put.as_ref().map(|(v, _)| v));
    }
    for (id, v) in &change.subnets {
        upsert(&mut doc, "subnets", id, Some(v));
    }
    if let Some(list) = doc.get_mut("instances").and_then(Value::as_array_mut) {
        for (old, new) in change.instances.values() {
            if let Some(item) = list.iter_mut().find(|i| *i == old) {
                *item = new.clone();
            }
        }
    }
    doc
}

/// Puts (Some) or deletes (None) the item `id` of the document's list `list`.
fn upsert(doc: &mut Value, list: &str, id: &str, put: Option<&Value>) {
    if doc.get(list).is_none() {
        doc[list] = Value::Array(vec![]);
    }
    let Some(items) = doc[list].as_array_mut() else {
        return;
    };
    let at = items.iter().position(|i| i["id"] == id);
    match (put, at) {
        (Some(v), Some(i)) => items[i] = v.clone(),
        (Some(v), None) => items.push(v.clone()),
        (None, Some(i)) => {
            items.remove(i);
        }
        (None, None) => {}
    }
}

/// Validates a document with the product's validator; errors in EC2's terms.
pub fn validate(doc: &Value) -> Result<Policy, Fault> {
    config::load_str(&native::to_yaml(doc), "the request")
        .map(|l| l.policy)
        .map_err(|d| fault(&d))
}

/// The validated policy the change would make.
pub fn candidate(state: &State, change: &Change) -> Result<Policy, Fault> {
    validate(&document(state, change))
}

/// EC2's code for the validator's first error.
pub fn fault(d: &Diagnostics) -> Fault {
    let Some(first) = d.0.iter().find(|d| d.severity == Severity::Error) else {
        return Fault::invalid(d.to_string());
    };
    let m = &first.message;
    let text = match &first.hint {
        Some(h) => format!("{m} ({h})"),
        None => m.clone(),
    };
    if m.contains("duplicate rule") {
        Fault::client(
            "InvalidPermission.Duplicate",
            format!("the specified rule already exists: {text}"),
        )
    } else if m.contains("rules; the limit is") {
        Fault::client(
            "RulesPerSecurityGroupLimitExceeded",
            format!("The maximum number of rules per security group has been reached. ({m})"),
        )
    } else if m.contains("per network ACL, direction and family") {
        Fault::client(
            "NetworkAclEntryLimitExceeded",
            format!("The maximum number of network acl entries has been reached. ({m})"),
        )
    } else if m.contains("network ACLs; the limit is") {
        Fault::client(
            "NetworkAclLimitExceeded",
            format!("The maximum number of network ACLs has been reached. ({m})"),
        )
    } else if m.contains("security groups; the limit is") {
        Fault::client(
            "SecurityGroupsPerInterfaceLimitExceeded",
            format!("The maximum number of security groups per interface has been reached. ({m})"),
        )
    } else {
        Fault::invalid(text)
    }
}

/// A store value with the EC2 metadata beside its payload (when there is any).
fn with_meta(key: &Key, payload: Value, meta: &Meta) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&encode(key, payload)).expect("encode writes JSON");
    if *meta != Meta::default() {
        v["ec2"] = serde_json::to_value(meta).expect("metadata serializes");
    }
    serde_json::to_vec(&v).expect("JSON values serialize")
}

/// The store writes of a validated change: each put group as the validator completed it
/// (ids derived, D2 applied), with its EC2 metadata beside the payload.
pub fn values(
    policy: &Policy,
    change: &Change,
    serial: &str,
) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut puts = vec![(SERIAL_KEY.to_string(), serial.as_bytes().to_vec())];
    let mut deletes = Vec::new();
    for (id, put) in &change.groups {
        let key = Key::Group(id.clone());
        match put {
            Some((_, meta)) => {
                let g = &policy.groups[&GroupId(id.clone())];
                puts.push((key.path(), with_meta(&key, native::group(g), meta)));
            }
            None => deletes.push(key.path()),
        }
    }
    for (id, put) in &change.prefix_lists {
        let key = Key::PrefixList(id.clone());
        match put {
            Some(_) => {
                let pl = &policy.prefix_lists[&crate::policy::PrefixListId(id.clone())];
                puts.push((key.path(), encode(&key, native::prefix_list(pl))));
            }
            None => deletes.push(key.path()),
        }
    }
    for (id, put) in &change.network_acls {
        let key = Key::NetworkAcl(id.clone());
        match put {
            Some((_, meta)) => {
                let acl = &policy.network_acls[&NaclId(id.clone())];
                puts.push((key.path(), with_meta(&key, native::network_acl(acl), meta)));
            }
            None => deletes.push(key.path()),
        }
    }
    for id in change.subnets.keys() {
        let key = Key::Subnet(id.clone());
        if let Some(s) = policy.subnet(&SubnetId(id.clone())) {
            puts.push((key.path(), encode(&key, native::subnet(s))));
        }
    }
    for name in change.instances.keys() {
        let key = Key::Instance(name.clone());
        let all = native::instances(policy);
        if let Some((_, ifaces)) = all.iter().find(|(n, _)| n == name) {
            puts.push((key.path(), encode(&key, native::instance(name, ifaces))));
        }
    }
    (puts, deletes)
}
