//! The API's side of the store: one connection (re-made after a failure), reads of the whole
//! policy at one revision, and compare-and-swap commits against that revision. Any failure to
//! reach the store is a 503 (P1), so that clients retry.

use tokio::sync::Mutex;

use super::fault::Fault;
use super::view::State;
use crate::store::StoreOptions;
use crate::store::etcd::Store;
use crate::store::layout::Snapshot;

pub struct Backend {
    options: StoreOptions,
    /// Calls take turns on one client: API writes are rare, and serializing them spares
    /// most compare-and-swap retries.
    store: Mutex<Option<Store>>,
}

impl Backend {
    pub fn new(options: StoreOptions) -> Backend {
        Backend {
            options,
            store: Mutex::new(None),
        }
    }

    pub fn describe(&self) -> String {
        self.options.describe()
    }

    async fn with_store<T>(
        &self,
        f: impl AsyncFnOnce(&mut Store) -> anyhow::Result<T>,
    ) -> Result<T, Fault> {
        let mut slot = self.store.lock().await;
        if slot.is_none() {
            let store = self
                .options
                .connect()
                .await
                .map_err(|e| Fault::unavailable(&e))?;
            *slot = Some(store);
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

    /// The store's policy at one revision, as EC2 sees it.
    pub async fn read(&self) -> Result<State, Fault> {
        let listing = self.with_store(async |s| s.list_under("v1/").await).await?;
        State::new(Snapshot::new(listing.revision, listing.kvs))
    }

    /// Writes if nothing under `v1/` changed since `revision`: false when something did
    /// (read again and retry).
    pub async fn commit(
        &self,
        revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<bool, Fault> {
        let done = self
            .with_store(async |s| {
                s.commit_if_unchanged_since("v1/", revision, puts, deletes)
                    .await
            })
            .await?;
        Ok(done.is_some())
    }
}
