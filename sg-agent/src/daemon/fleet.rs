//! Fleet mode (`sg-agent daemon --store etcd://...`): the policy is the store's, followed by
//! [`Follower`]. Each new snapshot is one reload (the agent takes the membership-delta path
//! when only memberships changed, a new generation otherwise), then an acknowledgement under
//! `status/<host>/ack`.
//!
//! The local copy is the applied policy's text the agent keeps anyway (`policy.applied`
//! beside the state file, written whole or not at all; from the store it is the snapshot's
//! native document as JSON). It is what a restarted daemon enforces before the store answers: an agent killed while etcd is down comes back
//! with its last applied policy. A registered device that policy does not cover (a host that
//! never had a policy, or a device registered since) is held closed until the store answers:
//! it carries one group, `sg-awaiting-store`, that admits nothing and lets out only TCP to the
//! store's endpoints (replies come back through conntrack, C1). No mode fails open.
//!
//! With `--confirm-changes` (L1) a revision that changes more than memberships is applied
//! under a confirmation window. Reverted, it stays in the store: the ack then names the
//! revision enforced before it and says that the newer one was reverted, and the daemon
//! applies only the memberships of that revision and of later ones with the same policy
//! (reload.rs), until a revision changes the policy again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Daemon, Next};
use crate::agent::{PolicySource, RevertRecord, TextSource};
use crate::bind::LocalIface;
use crate::state::StateDir;
use crate::store::follow::{content_hash, host_instance};
use crate::store::layout::{Ack, Snapshot};
use crate::store::{Follower, Registration, StoreOptions, StoreSource};

/// `--store`, `--host`, `--register`, `--lease-ttl`.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub store: StoreOptions,
    /// This host's name in the store (`hosts/<host>/...`).
    pub host: String,
    /// Local devices this host puts in the store, with their groups.
    pub register: Vec<Registration>,
    /// Seconds the store keeps this host's registration after its last keepalive.
    pub lease_ttl: i64,
}

/// The daemon's fleet state.
pub struct Fleet {
    opts: FleetOptions,
    snapshot_file: PathBuf,
    /// What to enforce: the newest snapshot offered, or before the first one the local copy
    /// (with held devices).
    current: Option<Box<dyn PolicySource + Send>>,
    /// What this host enforces (revision, content hash), for the next ack.
    applied: Option<(i64, String)>,
    /// A revision applied under a confirmation window (L1): what was acknowledged before it,
    /// for the ack of a revert.
    window: Option<Window>,
}

struct Window {
    before: Option<(i64, String)>,
}

impl Fleet {
    pub fn new(opts: FleetOptions, sd: &StateDir) -> Fleet {
        Fleet {
            snapshot_file: sd.applied_policy_file(),
            opts,
            current: None,
            applied: None,
            window: None,
        }
    }

    pub fn snapshot_file(&self) -> &Path {
        &self.snapshot_file
    }

    /// The policy to apply: the newest snapshot, else what `hold` put together.
    pub fn source(&self) -> Option<&dyn PolicySource> {
        self.current.as_deref().map(|s| s as &dyn PolicySource)
    }

    /// Before the store answers: the local copy of the last applied policy, with every
    /// registered device it does not cover held closed. None when there is nothing to
    /// enforce (no copy, nothing registered).
    pub fn hold(&mut self, local: &[LocalIface]) {
        // A copy that is not JSON (a file-mode policy applied before) is no copy of the
        // store's: its devices are held closed like any other.
        let copy = std::fs::read(&self.snapshot_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(Value::is_object);
        let had_copy = copy.is_some();
        let mut doc = copy.unwrap_or_else(|| json!({"version": 1, "security_groups": []}));
        // The last applied policy may itself be a holding one: hold afresh.
        let awaiting = format!("{}-awaiting-store", self.opts.host);
        retain(&mut doc, "security_groups", |g| g["id"] != HOLD_GROUP);
        retain(&mut doc, "instances", |i| i["name"] != awaiting.as_str());
        let held = held_interfaces(&doc, &self.opts.register, local);
        if !held.is_empty() {
            let group = hold_group(&self.opts.store);
            push(&mut doc, "security_groups", group);
            push(
                &mut doc,
                "instances",
                json!({"name": awaiting, "interfaces": held}),
            );
        }
        if doc["instances"].as_array().is_none_or(Vec::is_empty) {
            return;
        }
        let what = if had_copy {
            "the local copy of the store's policy"
        } else {
            "no policy yet"
        };
        let held = if held.is_empty() {
            String::new()
        } else {
            format!(", {} device(s) held closed", held.len())
        };
        self.current = Some(Box::new(TextSource {
            name: format!("{what}{held}, until the store answers"),
            text: doc.to_string(),
        }));
    }

    /// Whether this daemon has applied one of the store's revisions yet.
    pub fn has_applied(&self) -> bool {
        self.applied.is_some()
    }

    /// Starts the follower task (on the daemon's runtime).
    pub fn follow(&mut self) -> Follower {
        Follower::start(
            self.opts.store.clone(),
            self.opts.host.clone(),
            self.opts.lease_ttl,
        )
    }
}

/// The next snapshot from the follower; never, without one (file mode).
pub async fn next_snapshot(follower: &mut Option<Follower>) -> Snapshot {
    match follower {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// A new policy from the store: apply it, keep a copy, acknowledge.
    pub(super) fn on_snapshot(&mut self, snapshot: Snapshot, follower: Option<&Follower>) -> Next {
        let Some(fleet) = self.fleet.as_mut() else {
            return Next::Continue;
        };
        let revision = snapshot.revision;
        let hash = content_hash(&snapshot);
        let source = StoreSource::new(fleet.opts.store.describe(), snapshot);
        fleet.current = Some(Box::new(source));
        let applies = self.stats.applies;
        let window_before = self.stats.window;
        if let Next::Detached = self.reload(&format!("store revision {revision}")) {
            return Next::Detached;
        }
        // A revision whose policy a revert undid is not enforced, whatever was applied of it.
        let held = self.stats.not_enforced.is_some();
        let ok = self.stats.applies > applies && !held;
        self.stats.reverted_revision = held.then_some(revision);
        let pending = self.agent.pending().ok().flatten().map(|p| p.set_at_ms);
        let fleet = self.fleet.as_mut().expect("fleet mode");
        if ok && pending.is_some() && pending != window_before && fleet.window.is_none() {
            fleet.window = Some(Window {
                before: fleet.applied.clone(),
            });
        }
        if ok {
            fleet.applied = Some((revision, hash));
        }
        let (rev, hash) = fleet.applied.clone().unwrap_or_default();
        let error = if ok {
            None
        } else if held {
            Some(format!(
                "revision {revision}: its policy was reverted on this host (not confirmed in \
                 time, L1) and is not enforced, only its memberships; a revision that changes \
                 the policy, or SIGHUP, applies it"
            ))
        } else if self.stats.waiting {
            Some("waiting: no interface of the policy is on this host".to_string())
        } else {
            self.stats.last_error.clone()
        };
        if let Some(f) = follower {
            f.ack(Ack {
                revision: rev,
                tried: revision,
                hash,
                generation: self.agent.state().generation,
                unix_ms: unix_ms(),
                error,
            });
        }
        Next::Continue
    }

    /// A revision applied under a window was confirmed: it is simply what this host enforces.
    pub(super) fn store_change_confirmed(&mut self) {
        if let Some(f) = self.fleet.as_mut() {
            f.window = None;
        }
    }

    /// A revision applied under a window was reverted: acknowledge the revision enforced
    /// before it, naming the reverted one.
    pub(super) fn store_change_reverted(&mut self, r: &RevertRecord, follower: Option<&Follower>) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(w) = fleet.window.take() else {
            return;
        };
        let tried = fleet.applied.as_ref().map_or(0, |a| a.0);
        fleet.applied = w.before;
        self.stats.reverted_revision = Some(tried);
        let (rev, hash) = fleet.applied.clone().unwrap_or_default();
        log::warn!(
            "store revision {tried} was reverted on this host (not confirmed in time); revision \
             {rev}'s policy is enforced, with the store's memberships, until a revision \
             changes the policy"
        );
        if let Some(f) = follower {
            f.ack(Ack {
                revision: rev,
                tried,
                hash,
                generation: self.agent.state().generation,
                unix_ms: unix_ms(),
                error: Some(format!(
                    "revision {tried} ({}) was reverted: not confirmed in time (L1)",
                    r.source
                )),
            });
        }
    }

    /// Puts this host's registered devices (with their current addresses) in the store.
    pub(super) fn register(&self, follower: Option<&Follower>, local: Option<&[LocalIface]>) {
        let (Some(fleet), Some(f), Some(local)) = (self.fleet.as_ref(), follower, local) else {
            return;
        };
        if fleet.opts.register.is_empty() {
            return;
        }
        f.register(host_instance(&fleet.opts.host, &fleet.opts.register, local));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn retain(doc: &mut Value, list: &str, keep: impl Fn(&Value) -> bool) {
    if let Some(items) = doc[list].as_array_mut() {
        items.retain(keep);
    }
}

fn push(doc: &mut Value, list: &str, item: Value) {
    match doc[list].as_array_mut() {
        Some(items) => items.push(item),
        None => doc[list] = json!([item]),
    }
}

/// Interfaces (native form) for the registered devices that no instance of `doc` covers by
/// device name or address, each carrying only the holding group.
fn held_interfaces(doc: &Value, regs: &[Registration], local: &[LocalIface]) -> Vec<Value> {
    let mut names = Vec::new();
    let mut addrs = Vec::new();
    for inst in doc["instances"].as_array().into_iter().flatten() {
        let ifaces = inst["interfaces"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![inst.clone()]);
        for i in ifaces {
            names.extend(i["device"].as_str().map(str::to_string));
            addrs.extend(
                i["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string)),
            );
        }
    }
    let Some(Value::Object(inst)) = host_instance("held", regs, local) else {
        return Vec::new();
    };
    inst["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            let dev = i["device"].as_str().unwrap_or_default();
            let covered_by_addr = i["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a.as_str().is_some_and(|a| addrs.iter().any(|x| x == a)));
            !names.iter().any(|n| n == dev) && !covered_by_addr
        })
        .map(|i| {
            let mut i = i.clone();
            i["groups"] = json!([HOLD_GROUP]);
            i
        })
        .collect()
}

const HOLD_GROUP: &str = "sg-awaiting-store";

/// Admits nothing; lets out TCP to each store endpoint given as an address (a name cannot
/// be allowed before it resolves: say so).
fn hold_group(store: &StoreOptions) -> Value {
    let egress: Vec<Value> = store
        .endpoints
        .hosts()
        .iter()
        .filter_map(|hp| match hp.parse::<SocketAddr>() {
            Ok(sa) => Some(sa),
            Err(_) => {
                log::warn!(
                    "store endpoint {hp} is not an address: devices held closed until the store \
                     answers cannot reach it"
                );
                None
            }
        })
        .map(|sa| {
            let len = if sa.is_ipv4() { 32 } else { 128 };
            let net = format!("{}/{len}", sa.ip());
            json!({"protocol": "tcp", "ports": sa.port(), "destination": net,
                   "description": "the store, until it answers"})
        })
        .collect();
    json!({"id": HOLD_GROUP, "name": "awaiting the store",
           "description": "sg: closed until the store answers", "ingress": [], "egress": egress})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(dir: &Path) -> Fleet {
        let opts = FleetOptions {
            store: StoreOptions {
                endpoints: "etcd://192.0.2.1:2379,[2001:db8::1]:2379".parse().unwrap(),
                credentials: None,
                prefix: "/sg/".into(),
            },
            host: "h1".into(),
            register: vec![
                "eth0=sg-web".parse().unwrap(),
                "eth1=sg-db".parse().unwrap(),
            ],
            lease_ttl: 10,
        };
        Fleet {
            snapshot_file: dir.join("policy.applied"),
            opts,
            current: None,
            applied: None,
            window: None,
        }
    }

    fn local() -> Vec<LocalIface> {
        let dev = |name: &str, ifindex, a: &str| LocalIface {
            name: name.into(),
            ifindex,
            addresses: vec![a.parse().unwrap()],
        };
        vec![dev("eth0", 2, "192.0.2.11"), dev("eth1", 3, "192.0.2.12")]
    }

    /// No local copy: every registered device is held closed, and the holding policy is a
    /// valid policy (ingress none; egress only TCP to the store's endpoints).
    #[test]
    fn without_a_local_copy_registered_devices_are_held_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = fleet(dir.path());
        f.hold(&local());
        let p = f.source().expect("a holding policy").load().unwrap().policy;
        let g = &p.groups[&crate::policy::GroupId(HOLD_GROUP.into())];
        assert!(g.ingress.is_empty());
        let egress: Vec<String> = g
            .egress
            .iter()
            .map(|r| format!("{:?} {:?}", r.protocol, r.peer))
            .collect();
        assert_eq!(egress.len(), 2, "{egress:?}");
        assert!(
            egress
                .iter()
                .all(|e| e.contains("Tcp(PortRange { from: 2379, to: 2379 })")),
            "{egress:?}"
        );
        let held: Vec<&str> = p
            .interfaces
            .iter()
            .map(|i| i.device.as_deref().unwrap())
            .collect();
        assert_eq!(held, ["eth0", "eth1"]);
    }

    /// A local copy covering eth0 is enforced as it is; only eth1 is held.
    #[test]
    fn a_local_copy_is_enforced_and_only_uncovered_devices_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let copy = json!({"security_groups": [{"id": "sg-web", "ingress": [
            {"protocol": "tcp", "ports": 443, "source": "0.0.0.0/0"}]}],
            "instances": [{"name": "h1", "interfaces": [
                {"name": "eth0", "addresses": ["192.0.2.11"], "groups": ["sg-web"]}]}]});
        std::fs::write(dir.path().join("policy.applied"), copy.to_string()).unwrap();
        let mut f = fleet(dir.path());
        f.hold(&local());
        let p = f.source().unwrap().load().unwrap().policy;
        let by_name = p.memberships();
        assert_eq!(
            by_name,
            [
                ("h1/eth0".to_string(), vec!["sg-web".to_string()]),
                (
                    "h1-awaiting-store/eth1".to_string(),
                    vec![HOLD_GROUP.to_string()]
                )
            ]
        );
    }

    /// The last applied policy may be a holding one (the agent stopped before the store
    /// answered): it is held afresh, not held twice.
    #[test]
    fn a_holding_policy_as_the_local_copy_is_held_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = fleet(dir.path());
        f.hold(&local());
        let first = f.source().unwrap().text().unwrap();
        std::fs::write(dir.path().join("policy.applied"), &first).unwrap();
        let mut again = fleet(dir.path());
        again.hold(&local());
        let p = again.source().unwrap().load().unwrap().policy;
        assert_eq!(p.groups.len(), 1, "{:?}", p.groups.keys());
        assert_eq!(p.interfaces.len(), 2);
    }

    /// A file-mode policy's YAML text is no copy of the store's: every device is held.
    #[test]
    fn a_local_copy_that_is_not_json_is_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.applied"), "security_groups: []\n").unwrap();
        let mut f = fleet(dir.path());
        f.hold(&local());
        let src = f.source().unwrap();
        assert!(
            src.describe().starts_with("no policy yet"),
            "{}",
            src.describe()
        );
        assert_eq!(src.load().unwrap().policy.interfaces.len(), 2);
    }

    #[test]
    fn nothing_registered_and_no_copy_is_nothing_to_enforce() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = fleet(dir.path());
        f.opts.register.clear();
        f.hold(&local());
        assert!(f.source().is_none());
    }
}
