//! The store's keys and values (docs/fleet.md): what is written where, and how a listing of
//! the store becomes one native policy for the one validator (`config::load_str`).
//!
//! Keys are relative to the store's prefix (`/sg/` by default); every value is JSON with a
//! schema version beside its one payload key, so that a later layout can live beside this
//! one:
//!
//! ```text
//! v1/settings                 {"schema":1,"settings":{"quotas":{...}}}
//! v1/groups/<group id>        {"schema":1,"group":{id, name, description, ingress, egress}}
//! v1/prefix-lists/<id>        {"schema":1,"prefix_list":{...}}
//! v1/instances/<name>         {"schema":1,"instance":{name, addresses, groups | interfaces}}
//! v1/network-acls/<acl id>    {"schema":1,"network_acl":{id, default, inbound, outbound}}
//! v1/subnets/<subnet id>      {"schema":1,"subnet":{id, cidr, ipv6_cidr, network_acl}}
//! v1/hosts/<host>/instance    the same, registered by the host's agent under its lease
//! status/<host>/alive         {"schema":1,"alive":{pid, version}}  (lease)
//! status/<host>/ack           {"schema":1,"ack":{revision, ...}}  what the host enforces
//! ```
//!
//! Everything under `v1/` is the policy, and the agents watch only that: the status a fleet
//! of N hosts writes (N acks per change) never reaches them.
//!
//! Rules and memberships travel apart: a group's value holds its rules, with group peers as
//! ids; which addresses a group stands for comes from the instances. A new instance is one
//! key written, never a rewrite of the groups that reference its groups.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::native;
use crate::config::{self, Diagnostics, Loaded};
use crate::error::Error;
use crate::policy::{Origin, Policy, Quotas};

/// The version of this layout, in every value.
pub const SCHEMA: u64 = 1;

/// What a key under the prefix stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Settings,
    Group(String),
    PrefixList(String),
    Instance(String),
    /// A network ACL with both numbered lists (A2; the `*` rules stay implicit, A6).
    NetworkAcl(String),
    /// A subnet: its CIDRs and its one NACL (A12).
    Subnet(String),
    HostInstance(String),
    HostAlive(String),
    HostAck(String),
}

impl Key {
    pub fn path(&self) -> String {
        match self {
            Key::Settings => "v1/settings".into(),
            Key::Group(id) => format!("v1/groups/{id}"),
            Key::PrefixList(id) => format!("v1/prefix-lists/{id}"),
            Key::Instance(n) => format!("v1/instances/{n}"),
            Key::NetworkAcl(id) => format!("v1/network-acls/{id}"),
            Key::Subnet(id) => format!("v1/subnets/{id}"),
            Key::HostInstance(h) => format!("v1/hosts/{h}/instance"),
            Key::HostAlive(h) => format!("status/{h}/alive"),
            Key::HostAck(h) => format!("status/{h}/ack"),
        }
    }

    /// None for keys of another layout or unknown to this one (left alone).
    pub fn parse(rel: &str) -> Option<Key> {
        if let Some(status) = rel.strip_prefix("status/") {
            let (host, what) = status.split_once('/')?;
            return match what {
                "alive" => Some(Key::HostAlive(host.to_string())),
                "ack" => Some(Key::HostAck(host.to_string())),
                _ => None,
            };
        }
        let rest = rel.strip_prefix("v1/")?;
        if rest == "settings" {
            return Some(Key::Settings);
        }
        let (kind, name) = rest.split_once('/')?;
        let name = name.to_string();
        match kind {
            "groups" => Some(Key::Group(name)),
            "prefix-lists" => Some(Key::PrefixList(name)),
            "instances" => Some(Key::Instance(name)),
            "network-acls" => Some(Key::NetworkAcl(name)),
            "subnets" => Some(Key::Subnet(name)),
            "hosts" => {
                let (host, what) = name.split_once('/')?;
                (what == "instance").then(|| Key::HostInstance(host.to_string()))
            }
            _ => None,
        }
    }

    /// Whether the key is part of the policy (everything but a host's liveness and acks).
    pub fn is_policy(&self) -> bool {
        !matches!(self, Key::HostAlive(_) | Key::HostAck(_))
    }

    /// The payload's name in the value.
    fn payload(&self) -> &'static str {
        match self {
            Key::Settings => "settings",
            Key::Group(_) => "group",
            Key::PrefixList(_) => "prefix_list",
            Key::Instance(_) | Key::HostInstance(_) => "instance",
            Key::NetworkAcl(_) => "network_acl",
            Key::Subnet(_) => "subnet",
            Key::HostAlive(_) => "alive",
            Key::HostAck(_) => "ack",
        }
    }
}

/// A value with its schema version.
pub fn encode(key: &Key, payload: Value) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("schema".into(), SCHEMA.into());
    m.insert(key.payload().into(), payload);
    serde_json::to_vec(&Value::Object(m)).expect("JSON values serialize")
}

/// The payload of a value, or why it cannot be used (naming the key).
pub fn decode(key: &Key, bytes: &[u8]) -> Result<Value> {
    let path = key.path();
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| anyhow!("store key {path}: not JSON: {e}"))?;
    match v.get("schema").and_then(Value::as_u64) {
        Some(SCHEMA) => {}
        Some(s) => bail!(
            "store key {path}: schema {s}, this agent reads schema {SCHEMA} (upgrade the agent)"
        ),
        None => bail!("store key {path}: no \"schema\" number"),
    }
    v.get(key.payload())
        .cloned()
        .ok_or_else(|| anyhow!("store key {path}: no \"{}\" in the value", key.payload()))
}

/// What a host reports after each apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The store revision of the policy the host enforces now.
    pub revision: i64,
    /// The newest revision the host tried; differs from `revision` when it was refused.
    pub tried: i64,
    /// The content hash of the enforced policy (`follow::content_hash`): equal hashes, equal
    /// policies, whatever revision each host saw them at.
    pub hash: String,
    pub generation: u32,
    pub unix_ms: u64,
    /// Why `tried` was not applied (invalid policy, ...): the enforced one stayed.
    pub error: Option<String>,
}

/// The keys and values of one policy (for `store import`).
pub fn policy_values(p: &Policy) -> Vec<(Key, Vec<u8>)> {
    let mut quotas = native::quotas(&p.quotas);
    // Written only when it means something, so that a store without NACLs keeps the
    // settings value it always had.
    let nacl_quota = p.quotas.nacl_rules_per_list;
    if !p.network_acls.is_empty() || nacl_quota != Quotas::default().nacl_rules_per_list {
        quotas["nacl_rules_per_list"] = nacl_quota.into();
    }
    let mut out = vec![(
        Key::Settings,
        encode(&Key::Settings, json!({ "quotas": quotas })),
    )];
    for g in p.groups.values() {
        let k = Key::Group(g.id.0.clone());
        out.push((k.clone(), encode(&k, native::group(g))));
    }
    for pl in p.prefix_lists.values() {
        let k = Key::PrefixList(pl.id.0.clone());
        out.push((k.clone(), encode(&k, native::prefix_list(pl))));
    }
    for (name, ifaces) in native::instances(p) {
        let k = Key::Instance(name.clone());
        out.push((k.clone(), encode(&k, native::instance(&name, &ifaces))));
    }
    for a in p.network_acls.values() {
        let k = Key::NetworkAcl(native::acl_id(a.id.as_str()));
        out.push((k.clone(), encode(&k, native::network_acl(a))));
    }
    for s in &p.subnets {
        let k = Key::Subnet(native::subnet_id(s.id.as_str()));
        out.push((k.clone(), encode(&k, native::subnet(s))));
    }
    out
}

/// The policy keys of the store at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub values: BTreeMap<Key, Vec<u8>>,
}

impl Snapshot {
    /// Keeps the policy keys of a listing (relative keys and values).
    pub fn new(revision: i64, kvs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Snapshot {
        let values = kvs
            .into_iter()
            .filter_map(|(k, v)| Some((Key::parse(&k)?, v)))
            .filter(|(k, _)| k.is_policy())
            .collect();
        Snapshot { revision, values }
    }

    /// The native document, and which key each list item came from (`security_groups[2]`
    /// -> `v1/groups/sg-db`) for messages.
    pub fn document(&self) -> Result<(Value, Vec<(String, String)>)> {
        let mut lists: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut sources = Vec::new();
        let mut quotas = None;
        for (key, bytes) in &self.values {
            let payload = decode(key, bytes)?;
            let list = match key {
                Key::Settings => {
                    quotas = payload.get("quotas").cloned();
                    continue;
                }
                Key::Group(_) => "security_groups",
                Key::PrefixList(_) => "prefix_lists",
                Key::Instance(_) | Key::HostInstance(_) => "instances",
                Key::NetworkAcl(_) => "network_acls",
                Key::Subnet(_) => "subnets",
                Key::HostAlive(_) | Key::HostAck(_) => continue,
            };
            let items = lists.entry(list).or_default();
            sources.push((format!("{list}[{}]", items.len()), key.path()));
            items.push(payload);
        }
        let mut doc = serde_json::Map::new();
        doc.insert("version".into(), 1.into());
        if let Some(q) = quotas {
            doc.insert("quotas".into(), q);
        }
        // An empty store is an empty policy, not a file of unknown format.
        doc.entry("security_groups").or_insert(json!([]));
        for (list, items) in lists {
            doc.insert(list.into(), items.into());
        }
        Ok((Value::Object(doc), sources))
    }

    /// The hosts whose registered interfaces the snapshot holds.
    pub fn registrations(&self) -> Vec<String> {
        self.values
            .keys()
            .filter_map(|k| match k {
                Key::HostInstance(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// Leaves out what hosts registered under their leases: what `store import` owns.
    pub fn drop_registrations(&mut self) {
        self.values
            .retain(|k, _| !matches!(k, Key::HostInstance(_)));
    }

    /// The native YAML of the whole snapshot (what `store export` prints).
    pub fn yaml(&self) -> Result<String> {
        Ok(native::to_yaml(&self.render()?.doc))
    }

    /// The document and where each item came from, computed once for a load.
    pub fn render(&self) -> Result<Rendered> {
        let (doc, sources) = self
            .document()
            .map_err(|e| Error::InvalidInput(format!("{e:#}")))?;
        Ok(Rendered { doc, sources })
    }

    /// Validates the snapshot as one policy. Errors name the store key and the path inside
    /// its value.
    pub fn load(&self, name: &str) -> Result<Loaded> {
        self.render()?.load(name)
    }
}

/// A snapshot as one native document.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub doc: Value,
    /// `security_groups[2]` -> `v1/groups/sg-db`.
    sources: Vec<(String, String)>,
}

impl Rendered {
    /// Validates the document (read as it stands, never printed and parsed again); errors
    /// name the store key and the path inside its value.
    pub fn load(&self, name: &str) -> Result<Loaded> {
        config::load_value(&self.doc, name).map_err(|d| {
            let d = Diagnostics(
                d.0.into_iter()
                    .map(|d| at_key(d, name, &self.sources))
                    .collect(),
            );
            Error::InvalidInput(d.to_string()).into()
        })
    }
}

/// Points a diagnostic at the store key its path falls in.
fn at_key(
    mut d: config::Diagnostic,
    name: &str,
    sources: &[(String, String)],
) -> config::Diagnostic {
    let path = d.origin.path.clone();
    let found = sources.iter().find(|(p, _)| {
        path.strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    });
    if let Some((p, key)) = found {
        d.origin = Origin {
            file: format!("{name} key {key}"),
            line: 0,
            column: 0,
            path: path[p.len()..].trim_start_matches('.').to_string(),
        };
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Policy {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ec2-lab.yaml");
        config::load_file(std::path::Path::new(path))
            .unwrap()
            .policy
    }

    fn snapshot_of(values: Vec<(Key, Vec<u8>)>) -> Snapshot {
        Snapshot::new(7, values.into_iter().map(|(k, v)| (k.path(), v)))
    }

    #[test]
    fn every_key_parses_back_and_foreign_keys_are_ignored() {
        for k in [
            Key::Settings,
            Key::Group("sg-web".into()),
            Key::PrefixList("pl-1".into()),
            Key::Instance("web-1".into()),
            Key::NetworkAcl("acl-web".into()),
            Key::Subnet("subnet-web".into()),
            Key::HostInstance("h1".into()),
            Key::HostAlive("h1".into()),
            Key::HostAck("h1".into()),
        ] {
            assert_eq!(Key::parse(&k.path()), Some(k.clone()), "{k:?}");
        }
        for k in [
            "v2/groups/sg-a",
            "v1/other/x",
            "v1/hosts/h1/other",
            "settings",
        ] {
            assert_eq!(Key::parse(k), None, "{k}");
        }
    }

    /// S1-S2: a policy written as store values and read back is the same policy.
    #[test]
    fn a_policy_written_to_store_values_loads_back_the_same() {
        let p = lab();
        let snap = snapshot_of(policy_values(&p));
        let back = snap.load("etcd").unwrap().policy;
        assert_eq!(
            native::tests::meaning(back),
            native::tests::meaning(p),
            "{}",
            snap.yaml().unwrap()
        );
    }

    fn vpc_nacl() -> Policy {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/vpc-nacl.yaml");
        config::load_file(std::path::Path::new(path))
            .unwrap()
            .policy
    }

    /// A2, A9, A12, A24: network ACLs (both lists, the default one) and subnets (their NACL)
    /// written as store values load back the same, raised quota included; `store export`
    /// prints them and its text loads to the same policy again.
    #[test]
    fn network_acls_and_subnets_round_trip_through_store_values() {
        let mut p = vpc_nacl();
        assert!(!p.network_acls.is_empty() && !p.subnets.is_empty());
        p.quotas.nacl_rules_per_list = 40;
        let values = policy_values(&p);
        for want in ["v1/network-acls/acl-", "v1/subnets/subnet-"] {
            assert!(
                values.iter().any(|(k, _)| k.path().starts_with(want)),
                "{want}"
            );
        }
        let snap = snapshot_of(values);
        let back = snap.load("etcd").unwrap().policy;
        assert_eq!(
            native::tests::meaning(back.clone()),
            native::tests::meaning(p.clone()),
            "{}",
            snap.yaml().unwrap()
        );
        let exported = config::load_str(&snap.yaml().unwrap(), "export")
            .unwrap()
            .policy;
        assert_eq!(native::tests::meaning(exported), native::tests::meaning(p));
    }

    /// A policy without NACLs keeps the settings value it always had (no NACL quota key), so
    /// an existing store sees no change on import.
    #[test]
    fn a_policy_without_nacls_writes_no_nacl_keys() {
        let values = policy_values(&lab());
        assert!(
            values
                .iter()
                .all(|(k, _)| !matches!(k, Key::NetworkAcl(_) | Key::Subnet(_)))
        );
        let settings = decode(&Key::Settings, &values[0].1).unwrap();
        assert!(
            settings["quotas"].get("nacl_rules_per_list").is_none(),
            "{settings}"
        );
    }

    /// A3, A7: a bad entry in a NACL's value never loads, and the message names its key.
    #[test]
    fn a_bad_nacl_value_names_its_key() {
        let mut values = policy_values(&vpc_nacl());
        let (key, bytes) = values
            .iter()
            .find(|(k, _)| matches!(k, Key::NetworkAcl(_)))
            .cloned()
            .unwrap();
        let mut acl = decode(&key, &bytes).unwrap();
        acl["inbound"] =
            json!([{"number": 40000, "action": "allow", "protocol": -1, "cidr": "0.0.0.0/0"}]);
        values.retain(|(k, _)| *k != key);
        values.push((key.clone(), encode(&key, acl)));
        let e = snapshot_of(values).load("etcd").unwrap_err().to_string();
        assert!(e.contains(&key.path()) && e.contains("40000"), "{e}");
    }

    #[test]
    fn an_empty_store_is_an_empty_policy() {
        let p = Snapshot::default().load("etcd").unwrap().policy;
        assert!(p.groups.is_empty() && p.interfaces.is_empty());
    }

    /// Bad values never load: the message names the key and what is wrong in it.
    #[test]
    fn errors_name_the_store_key() {
        let mut values = policy_values(&lab());
        let bad_rule = Key::Group("sg-db".into());
        let mut g = decode(
            &bad_rule,
            &values.iter().find(|(k, _)| *k == bad_rule).unwrap().1,
        )
        .unwrap();
        g["ingress"][0]["source"] = "sg-nowhere".into();
        values.retain(|(k, _)| *k != bad_rule);
        values.push((bad_rule.clone(), encode(&bad_rule, g)));
        let e = snapshot_of(values.clone())
            .load("etcd")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etcd key v1/groups/sg-db") && e.contains("sg-nowhere"),
            "{e}"
        );

        let cases = [
            (b"not json".to_vec(), "not JSON"),
            (br#"{"schema":2,"group":{}}"#.to_vec(), "schema 2"),
            (br#"{"group":{}}"#.to_vec(), "no \"schema\""),
            (br#"{"schema":1,"grp":{}}"#.to_vec(), "no \"group\""),
        ];
        for (bytes, want) in cases {
            let mut v = values.clone();
            v.push((Key::Group("sg-x".into()), bytes));
            let e = snapshot_of(v).load("etcd").unwrap_err().to_string();
            assert!(
                e.contains("v1/groups/sg-x") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn liveness_and_acks_are_not_policy() {
        let mut v = policy_values(&lab());
        let ack = encode(&Key::HostAck("h".into()), json!({"revision": 3}));
        v.push((Key::HostAck("h".into()), ack));
        v.push((Key::HostAlive("h".into()), b"anything".to_vec()));
        assert_eq!(snapshot_of(v), snapshot_of(policy_values(&lab())));
    }
}
