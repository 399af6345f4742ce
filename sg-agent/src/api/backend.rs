//! The API's side of the store: reads of the whole policy at one revision, and
//! compare-and-swap commits against that revision, on one of two stores: etcd (a fleet; one
//! connection, re-made after a failure) or the local policy file of this host (no etcd;
//! store/local.rs). Everything above sees one `Backend`. Any failure to reach the store is a
//! 503 (P1), so that clients retry.

use tokio::sync::Mutex;

use super::change;
use super::fault::Fault;
use super::view::State;
use crate::error::{self, Error};
use crate::store::StoreOptions;
use crate::store::etcd::Store;
use crate::store::layout::Snapshot;
use crate::store::local::{Commit, LocalStore};

/// Where the API keeps the policy.
#[derive(Clone, Debug)]
pub enum Where {
    Etcd(StoreOptions),
    Local(LocalStore),
}

pub enum Backend {
    Etcd {
        options: StoreOptions,
        /// Calls take turns on one client: API writes are rare, and serializing them spares
        /// most compare-and-swap retries. Boxed: a client is kilobytes.
        store: Mutex<Option<Box<Store>>>,
    },
    Local(LocalStore),
}

impl Backend {
    pub fn new(at: Where) -> Backend {
        match at {
            Where::Etcd(options) => Backend::Etcd {
                options,
                store: Mutex::new(None),
            },
            Where::Local(file) => Backend::Local(file),
        }
    }

    async fn with_store<T>(
        options: &StoreOptions,
        slot: &Mutex<Option<Box<Store>>>,
        f: impl AsyncFnOnce(&mut Store) -> anyhow::Result<T>,
    ) -> Result<T, Fault> {
        let mut slot = slot.lock().await;
        if slot.is_none() {
            let store = options
                .connect()
                .await
                .map_err(|e| Fault::unavailable(&e))?;
            *slot = Some(Box::new(store));
        }
        let store = slot.as_mut().expect("connected above");
        match f(store).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Connect again next time: the client may be the problem.
                *slot = None;
                Err(Fault::unavailable(&e))
            }
        }
    }

    /// Runs a file operation off the runtime's thread (it may wait for another writer's
    /// lock). A file that does not validate is the store's own fault (500, as etcd values
    /// that do not), anything else a 503.
    async fn on_file<T: Send + 'static>(
        file: &LocalStore,
        f: impl FnOnce(LocalStore) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Fault> {
        let file = file.clone();
        let r = tokio::task::spawn_blocking(move || f(file))
            .await
            .map_err(|e| Fault::internal(format!("the local store's task failed: {e}")))?;
        r.map_err(|e| {
            if error::is(&e, |k| matches!(k, Error::InvalidInput(_))) {
                Fault::internal(format!("the store's policy is not valid: {e:#}"))
            } else {
                Fault::unavailable(&e)
            }
        })
    }

    /// The store's policy at one revision, as EC2 sees it.
    pub async fn read(&self) -> Result<State, Fault> {
        let snapshot = match self {
            Backend::Etcd { options, store } => {
                let listing =
                    Self::with_store(options, store, async |s| s.list_under("v1/").await).await?;
                Snapshot::new(listing.revision, listing.kvs)
            }
            Backend::Local(file) => Self::on_file(file, |f| f.snapshot()).await?,
        };
        State::new(snapshot)
    }

    /// Writes if nothing under `v1/` changed since `revision`: false when something did
    /// (read again and retry). The local store validates the file it would write once more
    /// (with what the keys do not hold): a refusal is EC2's error for it (P4).
    pub async fn commit(
        &self,
        revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<bool, Fault> {
        match self {
            Backend::Etcd { options, store } => {
                let done = Self::with_store(options, store, async |s| {
                    s.commit_if_unchanged_since("v1/", revision, puts, deletes)
                        .await
                })
                .await?;
                Ok(done.is_some())
            }
            Backend::Local(file) => {
                let r = Self::on_file(file, move |f| {
                    f.commit_if_unchanged_since(revision, puts, deletes)
                })
                .await?;
                match r {
                    Commit::Done(_) => Ok(true),
                    Commit::Conflict => Ok(false),
                    Commit::Invalid(d) => Err(change::fault(&d)),
                    Commit::Refused(why) => Err(Fault::client("UnsupportedOperation", why)),
                }
            }
        }
    }
}

impl Where {
    pub fn describe(&self) -> String {
        match self {
            Where::Etcd(o) => o.describe(),
            Where::Local(f) => f.describe(),
        }
    }
}
