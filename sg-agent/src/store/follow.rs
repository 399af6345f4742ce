//! The daemon's side of the store: a task that follows the store and hands the daemon the
//! newest policy, and writes what the daemon reports back (acknowledgements, this host's
//! interfaces).
//!
//! The task lists the store at one revision, then watches from the next one. Every batch of
//! changes replaces the snapshot offered to the daemon (a `watch` channel keeps only the
//! newest, so a burst becomes one apply). A watch cancelled by compaction lists again; a lost
//! connection or lease reconnects with backoff and lists again; a listing equal to the
//! policy already offered offers nothing (no flap). While the store is away the daemon keeps
//! enforcing what it has.
//!
//! Under a lease (gone when this host is): `status/<host>/alive` and, when the daemon
//! registers interfaces, `hosts/<host>/instance`, so every other host's rules that reference
//! their groups include their addresses (R1) until the lease expires.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::etcd::{Credentials, Endpoints, Store, WatchBatch, WatchEvent};
use super::layout::{Ack, Key, Rendered, Snapshot, encode};
use crate::bind::LocalIface;
use crate::error::Error;

/// Where the store is and how to reach it.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub endpoints: Endpoints,
    /// A root-only file naming the CA, client certificate and key (etcd's TLS).
    pub credentials: Option<std::path::PathBuf>,
    /// Every key lives under it, e.g. `/sg/`.
    pub prefix: String,
}

impl StoreOptions {
    pub async fn connect(&self) -> Result<Store> {
        let creds = self
            .credentials
            .as_deref()
            .map(Credentials::from_file)
            .transpose()?;
        Store::connect(&self.endpoints, creds.as_ref(), &self.prefix).await
    }

    /// A name for messages and the state file: `etcd://a:2379,b:2379/sg/`.
    pub fn describe(&self) -> String {
        format!("{}{}", self.endpoints, self.prefix)
    }
}

/// `--register DEVICE=GROUP[,GROUP...]`: a local device this host puts in the store, with the
/// groups it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub device: String,
    pub groups: Vec<String>,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Registration, String> {
        let usage = || format!("`{s}`: expected DEVICE=GROUP[,GROUP...], e.g. eth0=sg-web");
        let (dev, groups) = s.split_once('=').ok_or_else(usage)?;
        let groups: Vec<String> = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        if dev.is_empty() || groups.is_empty() {
            return Err(usage());
        }
        Ok(Registration {
            device: dev.to_string(),
            groups,
        })
    }
}

/// The instance value this host registers: one interface per registered device, with the
/// device's global addresses as they are now. None when no registered device has an address
/// yet (nothing to register).
pub fn host_instance(host: &str, regs: &[Registration], local: &[LocalIface]) -> Option<Value> {
    let ifaces: Vec<Value> = regs
        .iter()
        .filter_map(|r| {
            let dev = local.iter().find(|l| l.name == r.device)?;
            let addrs: Vec<String> = dev
                .addresses
                .iter()
                .filter(|a| is_private_address(a))
                .map(ToString::to_string)
                .collect();
            (!addrs.is_empty()).then(|| {
                json!({"name": r.device, "device": r.device, "addresses": addrs, "groups": r.groups})
            })
        })
        .collect();
    (!ifaces.is_empty()).then(|| json!({"name": host, "interfaces": ifaces}))
}

/// What an ENI's private addresses are: not loopback, not link-local.
fn is_private_address(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_link_local() && !v.is_unspecified(),
        IpAddr::V6(v) => {
            !v.is_loopback() && !v.is_unspecified() && (v.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The policy of a snapshot as a [`crate::agent::PolicySource`], rendered once (an apply
/// asks for both the policy and its text).
pub struct StoreSource {
    pub name: String,
    pub snapshot: Snapshot,
    rendered: Result<Rendered, String>,
}

impl StoreSource {
    pub fn new(name: String, snapshot: Snapshot) -> StoreSource {
        let rendered = snapshot.render().map_err(|e| format!("{e:#}"));
        StoreSource {
            name,
            snapshot,
            rendered,
        }
    }

    fn rendered(&self) -> Result<&Rendered> {
        self.rendered
            .as_ref()
            .map_err(|e| Error::InvalidInput(e.clone()).into())
    }
}

impl crate::agent::PolicySource for StoreSource {
    fn describe(&self) -> String {
        format!("{} at revision {}", self.name, self.snapshot.revision)
    }
    fn load(&self) -> Result<crate::config::Loaded> {
        self.rendered()?.load(&self.name)
    }
    /// The document as JSON: what the agent keeps as the applied policy, which is also the
    /// local copy a restarted daemon enforces before the store answers.
    fn text(&self) -> Result<String> {
        Ok(self.rendered()?.doc.to_string())
    }
    fn fingerprint(&self) -> Option<(u64, std::time::SystemTime)> {
        let rev = u64::try_from(self.snapshot.revision).unwrap_or(0);
        Some((rev, std::time::UNIX_EPOCH))
    }
}

/// The content hash of a snapshot's policy keys: equal on every host that sees the same
/// policy, whatever revision it saw it at (`store status` compares it).
pub fn content_hash(s: &Snapshot) -> String {
    let mut h = Sha256::new();
    for (k, v) in &s.values {
        let path = k.path();
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the daemon tells the follower.
#[derive(Clone, Debug, Default, PartialEq)]
struct Report {
    ack: Option<Ack>,
    instance: Option<Value>,
    /// The store revision that wrote `instance` (in what a session wrote).
    registered_at: i64,
}

/// The follower task and its channels. Dropping it stops the task (the lease then expires,
/// or is revoked when the task could still reach the store).
pub struct Follower {
    snapshots: watch::Receiver<Option<Snapshot>>,
    reports: watch::Sender<Report>,
    /// Watches given up as silent and relisted ([`super::etcd::WatchBatch::Silent`]).
    silent_watches: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Starts following on the current tokio runtime.
    pub fn start(opts: StoreOptions, host: String, lease_ttl: i64) -> Follower {
        let (snap_tx, snapshots) = watch::channel(None);
        let (reports, report_rx) = watch::channel(Report::default());
        let silent_watches = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(follow(
            opts,
            host,
            lease_ttl,
            snap_tx,
            report_rx,
            silent_watches.clone(),
        ));
        Follower {
            snapshots,
            reports,
            silent_watches,
            task,
        }
    }

    /// How many watches went silent and were relisted so far.
    pub fn silent_watches(&self) -> u64 {
        self.silent_watches.load(Ordering::Relaxed)
    }

    /// The newest snapshot once it differs from the last one taken. Never completes when the
    /// task has ended (it only ends with the follower).
    pub async fn changed(&mut self) -> Snapshot {
        loop {
            if self.snapshots.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Some(s) = self.snapshots.borrow_and_update().clone() {
                return s;
            }
        }
    }

    /// Records what this host enforces; written to `status/<host>/ack` (the newest only).
    pub fn ack(&self, ack: Ack) {
        self.reports.send_modify(|r| r.ack = Some(ack));
    }

    /// Sets this host's registered instance (None: nothing registered).
    pub fn register(&self, instance: Option<Value>) {
        self.reports.send_if_modified(|r| {
            let changed = r.instance != instance;
            r.instance = instance;
            changed
        });
    }
}

async fn follow(
    opts: StoreOptions,
    host: String,
    ttl: i64,
    snap_tx: watch::Sender<Option<Snapshot>>,
    mut reports: watch::Receiver<Report>,
    silent_watches: Arc<AtomicU64>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut last_error = String::new();
    loop {
        let err = match session(&opts, &host, ttl, &snap_tx, &mut reports, &silent_watches).await {
            Ok(()) => return,
            Err(e) => format!("{e:#}"),
        };
        // Once per distinct failure: an etcd down for minutes is one line, not one a second.
        if err == last_error {
            log::debug!("store {}: {err}", opts.describe());
        } else {
            log::warn!(
                "store {}: {err}; enforcement unchanged, retrying",
                opts.describe()
            );
            last_error = err;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection: register, then list and watch until something fails. Ok only when the
/// daemon has gone (its channels closed).
async fn session(
    opts: &StoreOptions,
    host: &str,
    ttl: i64,
    snap_tx: &watch::Sender<Option<Snapshot>>,
    reports: &mut watch::Receiver<Report>,
    silent_watches: &AtomicU64,
) -> Result<()> {
    let mut store = opts.connect().await?;
    let mut lease = store.grant_lease(ttl).await?;
    // A daemon that stops (an upgrade, a restart) leaves enforcement in place: its host stays
    // a member until the TTL runs out, and a new daemon within it registers again seamlessly.
    lease.set_revoke_on_drop(false);
    let alive = json!({"pid": std::process::id(), "version": crate::version_string()});
    let key = Key::HostAlive(host.to_string());
    store
        .put(&key.path(), encode(&key, alive), Some(lease.id()))
        .await?;
    // Whatever the daemon reported before this connection is written again.
    let mut written = Report::default();
    let now = reports.borrow_and_update().clone();
    write_report(&mut store, host, lease.id(), &now, &mut written).await?;
    loop {
        // Only the policy (`v1/`): the hosts' acks and liveness live beside it, under
        // `status/`, since a fleet of N hosts writes N acks per change.
        let listing = store.list_under(POLICY).await?;
        let mut kvs: BTreeMap<String, Vec<u8>> = listing
            .kvs
            .into_iter()
            .filter(|(k, _)| is_policy_key(k))
            .collect();
        offer(snap_tx, Snapshot::new(listing.revision, kvs.clone()));
        let mut watch = store.watch_under(POLICY, listing.revision + 1).await?;
        log::info!(
            "store {}: following from revision {}",
            opts.describe(),
            listing.revision
        );
        loop {
            tokio::select! {
                batch = watch.next() => match batch? {
                    None => bail!("the watch ended"),
                    Some(WatchBatch::Compacted { compact_revision }) => {
                        log::warn!("store: history compacted at revision {compact_revision}; listing again");
                        break;
                    }
                    Some(WatchBatch::Silent { delivered, store, owed }) => {
                        log::warn!(
                            "store: the watch went silent {} revisions behind (delivered up to \
                             revision {delivered}, the store is at {store}; it owed {owed}); \
                             listing again",
                            store - delivered
                        );
                        silent_watches.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(WatchBatch::Changes { revision, events }) => {
                        if apply_events(&mut kvs, events) {
                            offer(snap_tx, Snapshot::new(revision, kvs.clone()));
                        }
                        if registration_lost(host, &kvs, &written, revision) {
                            log::warn!("store: this host's registration was removed or changed by someone else; writing it again");
                            written.instance = None;
                            let now = reports.borrow().clone();
                            write_report(&mut store, host, lease.id(), &now, &mut written).await?;
                        }
                    }
                },
                r = reports.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let now = reports.borrow_and_update().clone();
                    write_report(&mut store, host, lease.id(), &now, &mut written).await?;
                }
                () = lease.lost() => bail!("the lease of hosts/{host} was lost"),
                () = snap_tx.closed() => return Ok(()),
            }
        }
    }
}

/// The part of the store a follower lists and watches.
const POLICY: &str = "v1/";

fn is_policy_key(rel: &str) -> bool {
    Key::parse(rel).is_some_and(|k| k.is_policy())
}

/// Applies a watch batch to the policy's keys; whether any of them changed.
fn apply_events(kvs: &mut BTreeMap<String, Vec<u8>>, events: Vec<WatchEvent>) -> bool {
    let mut touched = false;
    for e in events {
        match e {
            WatchEvent::Put { key, value } if is_policy_key(&key) => {
                touched |= kvs.get(&key) != Some(&value);
                kvs.insert(key, value);
            }
            WatchEvent::Delete { key } if is_policy_key(&key) => {
                touched |= kvs.remove(&key).is_some();
            }
            WatchEvent::Put { .. } | WatchEvent::Delete { .. } => {}
        }
    }
    touched
}

/// Whether the registration this session wrote is no longer in the store as written (an
/// operator deleted or overwrote `v1/hosts/<host>/instance`): other hosts would stop
/// admitting this host's addresses, so it is written again.
/// Batches older than that write cannot show it yet.
fn registration_lost(
    host: &str,
    kvs: &BTreeMap<String, Vec<u8>>,
    written: &Report,
    revision: i64,
) -> bool {
    let Some(v) = &written.instance else {
        return false;
    };
    if revision < written.registered_at {
        return false;
    }
    let key = Key::HostInstance(host.to_string());
    kvs.get(&key.path()) != Some(&encode(&key, v.clone()))
}

/// Offers a snapshot unless its policy equals the one offered last.
fn offer(tx: &watch::Sender<Option<Snapshot>>, s: Snapshot) {
    tx.send_if_modified(|cur| {
        if cur.as_ref().is_some_and(|c| c.values == s.values) {
            return false;
        }
        *cur = Some(s);
        true
    });
}

/// Writes what changed in the daemon's report since `written`.
async fn write_report(
    store: &mut Store,
    host: &str,
    lease: i64,
    now: &Report,
    written: &mut Report,
) -> Result<()> {
    if now.instance != written.instance {
        let key = Key::HostInstance(host.to_string());
        written.registered_at = match &now.instance {
            Some(v) => {
                store
                    .put(&key.path(), encode(&key, v.clone()), Some(lease))
                    .await
            }
            None => store.commit(vec![], vec![key.path()], vec![]).await,
        }
        .context("registering this host's interfaces")?;
        written.instance.clone_from(&now.instance);
    }
    if now.ack != written.ack
        && let Some(ack) = &now.ack
    {
        let key = Key::HostAck(host.to_string());
        let v = serde_json::to_value(ack).map_err(|e| anyhow!("{e}"))?;
        store.put(&key.path(), encode(&key, v), None).await?;
        written.ack = now.ack.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_parse_or_say_the_form() {
        let r: Registration = "eth0=sg-web, sg-admin".parse().unwrap();
        assert_eq!(r.device, "eth0");
        assert_eq!(r.groups, ["sg-web", "sg-admin"]);
        for bad in ["eth0", "=sg-web", "eth0=", "eth0=,"] {
            let e = bad.parse::<Registration>().unwrap_err();
            assert!(e.contains("DEVICE=GROUP"), "{bad}: {e}");
        }
    }

    /// A host registers its devices' private addresses only, and nothing for a device that
    /// has none (yet).
    #[test]
    fn a_host_instance_holds_the_private_addresses_of_registered_devices() {
        let local = vec![
            LocalIface {
                name: "eth0".into(),
                ifindex: 2,
                addresses: ["192.0.2.11", "fe80::1", "2001:db8::11", "169.254.1.1"]
                    .map(|a| a.parse().unwrap())
                    .to_vec(),
            },
            LocalIface {
                name: "eth1".into(),
                ifindex: 3,
                addresses: vec!["fe80::2".parse().unwrap()],
            },
        ];
        let regs: Vec<Registration> = ["eth0=sg-web", "eth1=sg-db", "eth9=sg-db"]
            .map(|r| r.parse().unwrap())
            .to_vec();
        let v = host_instance("h1", &regs, &local).unwrap();
        assert_eq!(
            v,
            json!({"name": "h1", "interfaces": [{"name": "eth0", "device": "eth0",
                "addresses": ["192.0.2.11", "2001:db8::11"], "groups": ["sg-web"]}]})
        );
        assert_eq!(host_instance("h1", &regs[1..], &local), None);
    }

    /// Other hosts' acks and liveness (N per change in a fleet of N) change nothing.
    #[test]
    fn only_policy_keys_make_a_new_snapshot() {
        let put = |k: &str, v: &str| WatchEvent::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        };
        let mut kvs = BTreeMap::new();
        assert!(!apply_events(
            &mut kvs,
            vec![put("status/h1/ack", "a"), put("status/h2/alive", "b")]
        ));
        assert!(kvs.is_empty());
        assert!(apply_events(&mut kvs, vec![put("v1/groups/sg-a", "1")]));
        assert!(
            !apply_events(&mut kvs, vec![put("v1/groups/sg-a", "1")]),
            "same value"
        );
        assert!(apply_events(
            &mut kvs,
            vec![put("v1/hosts/h1/instance", "i")]
        ));
        let del = |k: &str| WatchEvent::Delete { key: k.into() };
        assert!(!apply_events(
            &mut kvs,
            vec![del("status/h1/ack"), del("v1/groups/sg-x")]
        ));
        assert!(apply_events(&mut kvs, vec![del("v1/groups/sg-a")]));
        assert_eq!(kvs.keys().collect::<Vec<_>>(), ["v1/hosts/h1/instance"]);
    }

    /// A registration deleted or overwritten by someone else is noticed (and written again),
    /// but not from a batch older than the write.
    #[test]
    fn a_registration_removed_under_the_host_is_noticed() {
        let inst = json!({"name": "h1", "interfaces": []});
        let written = Report {
            instance: Some(inst.clone()),
            registered_at: 10,
            ..Report::default()
        };
        let key = Key::HostInstance("h1".into());
        let mut kvs = BTreeMap::new();
        assert!(!registration_lost("h1", &kvs, &written, 9), "older batch");
        assert!(registration_lost("h1", &kvs, &written, 12), "deleted");
        kvs.insert(key.path(), encode(&key, inst));
        assert!(!registration_lost("h1", &kvs, &written, 12));
        kvs.insert(key.path(), encode(&key, json!({"name": "h1"})));
        assert!(registration_lost("h1", &kvs, &written, 13), "overwritten");
        assert!(
            !registration_lost("h1", &kvs, &Report::default(), 13),
            "none written"
        );
    }

    #[test]
    fn the_content_hash_follows_the_policy_not_the_revision() {
        let kv = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        let a = Snapshot::new(5, [kv("v1/groups/sg-a", "1")]);
        let b = Snapshot::new(9, [kv("v1/groups/sg-a", "1"), kv("status/h/ack", "x")]);
        let c = Snapshot::new(9, [kv("v1/groups/sg-a", "2")]);
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }
}
