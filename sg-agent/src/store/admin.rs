//! The operator's side of the store: `store import` (a policy file into the store, validated
//! first, one transaction), `store export` (the store as one native file) and `store status`
//! (the hosts, what each enforces, who is behind).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use super::etcd::Store;
use super::follow::content_hash;
use super::layout::{Ack, Key, Snapshot, decode, policy_values};
use crate::config::Loaded;

/// What an import wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    pub revision: i64,
    pub written: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// Replaces the store's groups, prefix lists, imported instances, network ACLs, subnets and
/// settings with those of `loaded` (already validated), in one transaction. Interfaces that
/// hosts registered stay; the result (import + registrations) is validated as a whole first,
/// so an import that removes a group a live host still carries is refused and nothing is
/// written.
pub async fn import(store: &mut Store, loaded: &Loaded, name: &str) -> Result<Imported> {
    let listing = store.list().await?;
    let current: BTreeMap<Key, Vec<u8>> = listing
        .kvs
        .into_iter()
        .filter_map(|(k, v)| Some((Key::parse(&k)?, v)))
        .collect();
    // What other writers keep beside a group's payload (the EC2 API's VPC and tags) stays
    // with the group: an import owns the payload only.
    let new: Vec<(Key, Vec<u8>)> = policy_values(&loaded.policy)
        .into_iter()
        .map(|(k, v)| {
            let v = keep_beside(&k, v, current.get(&k));
            (k, v)
        })
        .collect();
    let mut combined: Vec<(String, Vec<u8>)> =
        new.iter().map(|(k, v)| (k.path(), v.clone())).collect();
    combined.extend(
        current
            .iter()
            .filter(|(k, _)| matches!(k, Key::HostInstance(_)))
            .map(|(k, v)| (k.path(), v.clone())),
    );
    Snapshot::new(listing.revision, combined)
        .load(&format!("{name} with the hosts' registered interfaces"))?;

    let new_keys: BTreeSet<&Key> = new.iter().map(|(k, _)| k).collect();
    let deletes: Vec<String> = current
        .keys()
        .filter(|k| imported_kind(k) && !new_keys.contains(k))
        .map(Key::path)
        .collect();
    let puts: Vec<(String, Vec<u8>)> = new
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (k.path(), v.clone()))
        .collect();
    let unchanged = new.len() - puts.len();
    let (written, deleted) = (puts.len(), deletes.len());
    let revision = if written + deleted == 0 {
        listing.revision
    } else {
        store.commit(puts, deletes, vec![]).await?
    };
    Ok(Imported {
        revision,
        written,
        deleted,
        unchanged,
    })
}

/// `new` with the keys of `old` that are neither the schema nor the payload (JSON objects
/// both; anything else leaves `new` as it is).
fn keep_beside(key: &Key, new: Vec<u8>, old: Option<&Vec<u8>>) -> Vec<u8> {
    let Some(old) = old else { return new };
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(mut v))) = (
        serde_json::from_slice::<serde_json::Value>(old),
        serde_json::from_slice::<serde_json::Value>(&new),
    ) else {
        return new;
    };
    let extra: Vec<_> = old
        .into_iter()
        .filter(|(k, _)| k != "schema" && !v.contains_key(k))
        .collect();
    if extra.is_empty() || !matches!(key, Key::Group(_) | Key::NetworkAcl(_) | Key::Subnet(_)) {
        return new;
    }
    v.extend(extra);
    serde_json::to_vec(&v).expect("JSON values serialize")
}

/// Keys an import owns (everything but what hosts write).
fn imported_kind(k: &Key) -> bool {
    matches!(
        k,
        Key::Settings
            | Key::Group(_)
            | Key::PrefixList(_)
            | Key::Instance(_)
            | Key::NetworkAcl(_)
            | Key::Subnet(_)
    )
}

/// The store's policy at one revision.
pub async fn snapshot(store: &mut Store) -> Result<Snapshot> {
    let listing = store.list().await?;
    Ok(Snapshot::new(listing.revision, listing.kvs))
}

/// One host as the store sees it.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    pub host: String,
    /// Its lease is live (the agent is running and reaches the store).
    pub alive: bool,
    /// Interfaces it registered (under its lease).
    pub registered: Vec<String>,
    pub ack: Option<Ack>,
    /// Its enforced policy is the store's current one.
    pub current: bool,
    /// Store revisions between what it enforces and now (0 when current).
    pub behind: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    pub revision: i64,
    pub hash: String,
    pub groups: usize,
    pub prefix_lists: usize,
    pub instances: usize,
    pub network_acls: usize,
    pub subnets: usize,
    pub hosts: Vec<HostStatus>,
}

/// Every host that ever acknowledged or is alive, against the store's current policy.
pub async fn status(store: &mut Store) -> Result<StoreStatus> {
    let listing = store.list().await?;
    let mut hosts: BTreeMap<String, HostStatus> = BTreeMap::new();
    let mut counts = [0usize; 5];
    for (k, v) in &listing.kvs {
        let Some(key) = Key::parse(k) else { continue };
        let entry = |h: &String, hosts: &mut BTreeMap<String, HostStatus>| {
            hosts.entry(h.clone()).or_insert_with(|| HostStatus {
                host: h.clone(),
                alive: false,
                registered: vec![],
                ack: None,
                current: false,
                behind: 0,
            });
        };
        match &key {
            Key::Group(_) => counts[0] += 1,
            Key::PrefixList(_) => counts[1] += 1,
            Key::Instance(_) => counts[2] += 1,
            Key::NetworkAcl(_) => counts[3] += 1,
            Key::Subnet(_) => counts[4] += 1,
            Key::HostAlive(h) => {
                entry(h, &mut hosts);
                hosts.get_mut(h).expect("inserted").alive = true;
            }
            Key::HostAck(h) => {
                entry(h, &mut hosts);
                // An ack this agent cannot read (another schema) shows as none.
                let ack = decode(&key, v)
                    .ok()
                    .and_then(|a| serde_json::from_value(a).ok());
                hosts.get_mut(h).expect("inserted").ack = ack;
            }
            Key::HostInstance(h) => {
                entry(h, &mut hosts);
                let names = decode(&key, v)
                    .map(|i| interface_names(&i))
                    .unwrap_or_default();
                hosts.get_mut(h).expect("inserted").registered = names;
            }
            Key::Settings => {}
        }
    }
    let snap = Snapshot::new(listing.revision, listing.kvs);
    let hash = content_hash(&snap);
    for h in hosts.values_mut() {
        if let Some(a) = &h.ack {
            h.current = a.hash == hash;
            h.behind = if h.current {
                0
            } else {
                listing.revision - a.revision
            };
        }
    }
    Ok(StoreStatus {
        revision: listing.revision,
        hash,
        groups: counts[0],
        prefix_lists: counts[1],
        instances: counts[2],
        network_acls: counts[3],
        subnets: counts[4],
        hosts: hosts.into_values().collect(),
    })
}

fn interface_names(instance: &serde_json::Value) -> Vec<String> {
    instance["interfaces"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An import rewrites a group's payload and keeps what the EC2 API keeps beside it.
    #[test]
    fn an_import_keeps_what_others_wrote_beside_a_groups_payload() {
        let key = Key::Group("sg-a".into());
        let old = br#"{"ec2":{"tags":{"env":"prod"}},"group":{"id":"sg-a"},"schema":1}"#.to_vec();
        let new = br#"{"group":{"id":"sg-a","name":"a"},"schema":1}"#.to_vec();
        let kept: serde_json::Value =
            serde_json::from_slice(&keep_beside(&key, new.clone(), Some(&old))).unwrap();
        assert_eq!(kept["ec2"]["tags"]["env"], "prod");
        assert_eq!(kept["group"]["name"], "a");
        assert_eq!(keep_beside(&key, new.clone(), None), new);
        let other = Key::Instance("i".into());
        assert_eq!(keep_beside(&other, new.clone(), Some(&old)), new);
    }
}
