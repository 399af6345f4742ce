//! Fleet mode (`sg-agent daemon --store etcd://...`): the policy is the store's, followed by
//! [`Follower`]. Each new snapshot is one reload (the agent takes the membership-delta path
//! when only memberships changed, a new generation otherwise), then an acknowledgement under
//! `hosts/<host>/ack` and a local copy of what was applied.
//!
//! The local copy (`store.yaml` beside the state file, a native policy) is what a restarted
//! daemon enforces before the store answers: an agent killed while etcd is down comes back
//! with its last applied policy, and a host that never had one enforces nothing until the
//! store answers.

use std::path::{Path, PathBuf};

use super::{Daemon, Next};
use crate::bind::LocalIface;
use crate::state::{StateDir, write_private};
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
    /// The newest snapshot offered, as a policy source.
    current: Option<StoreSource>,
    /// What this host enforces (revision, content hash), for the next ack.
    applied: Option<(i64, String)>,
}

impl Fleet {
    pub fn new(opts: FleetOptions, sd: &StateDir) -> Fleet {
        Fleet {
            snapshot_file: sd.run.join("store.yaml"),
            opts,
            current: None,
            applied: None,
        }
    }

    pub fn snapshot_file(&self) -> &Path {
        &self.snapshot_file
    }

    /// The policy to apply: the newest snapshot once one arrived.
    pub fn source(&self) -> Option<&StoreSource> {
        self.current.as_ref()
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
        fleet.current = Some(StoreSource {
            name: fleet.opts.store.describe(),
            snapshot,
        });
        let applies = self.stats.applies;
        if let Next::Detached = self.reload(&format!("store revision {revision}")) {
            return Next::Detached;
        }
        let ok = self.stats.applies > applies;
        let fleet = self.fleet.as_mut().expect("fleet mode");
        if ok {
            fleet.applied = Some((revision, hash));
            if let Some(text) = fleet.current.as_ref().and_then(|s| s.snapshot.yaml().ok()) {
                let text = format!(
                    "# sg store {} at revision {revision}\n{text}",
                    fleet.opts.store.describe()
                );
                if let Err(e) = write_private(&fleet.snapshot_file, text.as_bytes()) {
                    log::warn!("keeping a local copy of the store's policy: {e:#}");
                }
            }
        }
        let (rev, hash) = fleet.applied.clone().unwrap_or_default();
        let error = if ok {
            None
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
