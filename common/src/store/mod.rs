//! Where the layout lives: the `RingStore` trait and its backends.
//!
//! The trait is shaped after etcd, the production backend: every stored layout has a store
//! **revision** (etcd's `mod_revision`), changes are compare-and-swap on the layout's epoch,
//! watchers resume from a revision after a dropped stream, and node liveness records are tied to
//! a lease that keeps them alive only while their owner does. Liveness is not membership: a
//! registered node is *known*; only a layout change puts it in the ring.
//!
//! Backends: [`embedded::EmbeddedStore`] (files in the data dir, for one machine; several local
//! processes can share it) and [`etcd::EtcdStore`] (cluster mode). [`open`] picks one from config.

pub mod embedded;
pub mod etcd;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::layout::ClusterLayout;

/// A layout together with the store revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// Store revision; strictly increases with every write of the layout.
    pub revision: u64,
    /// The layout.
    pub layout: ClusterLayout,
}

/// A live shard node's self-description, kept alive by its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Stable name.
    pub id: NodeId,
    /// `host:port` it serves on.
    pub addr: String,
    /// memring version it runs.
    pub version: String,
    /// Process start, unix ms.
    pub started_at_ms: i64,
}

/// What can go wrong talking to a ring store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The compare-and-swap lost: someone changed the layout first.
    #[error("layout changed concurrently: expected epoch {expected}, store has epoch {}", current.layout.epoch)]
    Conflict {
        /// The epoch the caller expected.
        expected: u64,
        /// What the store holds now.
        current: Box<Versioned>,
    },
    /// The new layout is not acceptable (wrong epoch step, invalid contents).
    #[error("invalid layout: {0}")]
    Invalid(String),
    /// The store could not be reached or read; retry later.
    #[error("ring store unavailable: {0}")]
    Unavailable(String),
    /// The stored data could not be understood.
    #[error("ring store holds unreadable data: {0}")]
    Corrupt(String),
}

/// Keeps a node record alive; dropping it (or calling [`NodeLease::revoke`]) ends the lease.
pub struct NodeLease {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl NodeLease {
    /// Wraps a keep-alive task that ends (and removes the record) when `stop` fires.
    pub fn new(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) -> Self {
        Self { stop: Some(stop), task: Some(task) }
    }

    /// Ends the lease now and waits until the record is removed.
    pub async fn revoke(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Held leadership (see [`RingStore::lead`]).
pub struct Leadership {
    /// Releases the leadership when revoked or dropped.
    pub hold: NodeLease,
    /// Turns true if the leadership was lost (its lease expired while etcd was unreachable).
    pub lost: tokio::sync::watch::Receiver<bool>,
}

/// The small collections kept beside the layout, each under its own prefix (etcd) or folder
/// (embedded store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// The control plane's migration journal.
    Jobs,
    /// API keys (salted hashes only).
    Keys,
    /// Per-tenant rate limits and quotas.
    Limits,
}

impl Records {
    /// The prefix or folder name.
    pub fn dir(self) -> &'static str {
        match self {
            Records::Jobs => "jobs",
            Records::Keys => "keys",
            Records::Limits => "limits",
        }
    }
}

/// The ring store: layout with epochs, watches, and leased node records.
#[async_trait]
pub trait RingStore: Send + Sync + 'static {
    /// The current layout (epoch 0 and no nodes when nothing was ever written).
    async fn load(&self) -> Result<Versioned, StoreError>;

    /// Replaces the layout if its epoch is still `expected_epoch`. `new.epoch` must be
    /// `expected_epoch + 1`. Of two concurrent calls with the same expectation exactly one wins;
    /// the other gets [`StoreError::Conflict`] with what the store holds now. What is stored
    /// (and returned) is `new` with its partitions' terms stamped from the layout it replaces
    /// ([`ClusterLayout::stamped_after`]).
    async fn compare_and_swap(
        &self,
        expected_epoch: u64,
        new: &ClusterLayout,
    ) -> Result<Versioned, StoreError>;

    /// Every layout written after `after_revision`, in order. The stream ends or yields an error
    /// when the connection drops; callers resume from the last revision they saw.
    async fn watch(
        &self,
        after_revision: u64,
    ) -> Result<BoxStream<'static, Result<Versioned, StoreError>>, StoreError>;

    /// Publishes `record` for as long as the returned lease lives (and at most `ttl` after its
    /// holder dies).
    async fn register_node(
        &self,
        record: NodeRecord,
        ttl: Duration,
    ) -> Result<NodeLease, StoreError>;

    /// The node records whose leases are alive.
    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Writes (or replaces) record `id` of a collection: the control plane's migration journal,
    /// API keys, tenant limits. `id` is 1–128 chars of `[A-Za-z0-9_.-]`.
    async fn put_record(&self, kind: Records, id: &str, record: &[u8]) -> Result<(), StoreError>;

    /// Every record of a collection, in id order.
    async fn records(&self, kind: Records) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes record `id` of a collection (no error if it is gone).
    async fn delete_record(&self, kind: Records, id: &str) -> Result<(), StoreError>;

    /// Yields once each time a record of the collection is written or removed (etcd: a prefix
    /// watch; embedded: the folder polled). The stream ends or errs when the connection drops;
    /// callers reload everything and watch again.
    async fn watch_records(
        &self,
        kind: Records,
    ) -> Result<BoxStream<'static, Result<(), StoreError>>, StoreError>;

    /// Writes (or replaces) the control plane's journal record `id` (a migration step, say), so
    /// a restarted control plane can resume.
    async fn put_job(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put_record(Records::Jobs, id, record).await
    }

    /// Every journal record, in id order.
    async fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.records(Records::Jobs).await
    }

    /// Removes journal record `id` (no error if it is gone).
    async fn delete_job(&self, id: &str) -> Result<(), StoreError> {
        self.delete_record(Records::Jobs, id).await
    }

    /// Waits until this process is the one holder of `name` (the active control plane, say) and
    /// holds it while the returned [`Leadership`] lives; if the holder dies, another waiter takes
    /// over within `ttl`.
    async fn lead(&self, name: &str, ttl: Duration) -> Result<Leadership, StoreError>;

    /// A short name for logs and `/v1/cluster` (`embedded:/path`, `etcd:http://…`).
    fn describe(&self) -> String;
}

/// The precondition every backend checks before a compare-and-swap: the new layout is valid and
/// is exactly one epoch after the one it replaces.
pub fn check_successor(expected_epoch: u64, new: &ClusterLayout) -> Result<(), StoreError> {
    if new.epoch != expected_epoch + 1 {
        return Err(StoreError::Invalid(format!(
            "a new layout must have epoch {} (expected + 1), it has {}",
            expected_epoch + 1,
            new.epoch
        )));
    }
    new.validate().map_err(|e| StoreError::Invalid(e.message().to_owned()))
}

/// Applies `change` to the current layout and stores it, retrying on conflicts up to `attempts`
/// times. `change` returns `None` when nothing needs to change.
pub async fn update_layout<F>(
    store: &dyn RingStore,
    attempts: usize,
    mut change: F,
) -> Result<Versioned, StoreError>
where
    F: FnMut(&ClusterLayout) -> Option<ClusterLayout> + Send,
{
    let mut current = store.load().await?;
    for _ in 0..attempts.max(1) {
        let Some(next) = change(&current.layout) else {
            return Ok(current);
        };
        match store.compare_and_swap(current.layout.epoch, &next).await {
            Ok(stored) => return Ok(stored),
            Err(StoreError::Conflict { current: now, .. }) => current = *now,
            Err(other) => return Err(other),
        }
    }
    Err(StoreError::Unavailable(format!("layout update lost {attempts} compare-and-swap races")))
}

/// Where a process finds its ring store: etcd when endpoints are given, else the embedded store.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Embedded store directory (used when `etcd` is empty).
    pub ring_dir: std::path::PathBuf,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub etcd_prefix: String,
    /// etcd user name (with etcd's authentication on).
    pub etcd_user: Option<String>,
    /// File holding that user's password (a mounted secret; never a flag or environment
    /// value, which a process list shows).
    pub etcd_password_file: Option<std::path::PathBuf>,
}

impl StoreConfig {
    /// True in cluster mode (etcd).
    pub fn is_etcd(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// The etcd user and password to authenticate with, if a user is set.
    pub fn etcd_credentials(&self) -> Result<Option<(String, String)>, StoreError> {
        let Some(user) = &self.etcd_user else {
            return match &self.etcd_password_file {
                Some(_) => Err(StoreError::Invalid(
                    "etcd_password_file is set but etcd_user is not; set both (--etcd-user)".into(),
                )),
                None => Ok(None),
            };
        };
        let Some(file) = &self.etcd_password_file else {
            return Err(StoreError::Invalid(format!(
                "etcd_user {user:?} needs etcd_password_file (--etcd-password-file): a file \
                 holding its password"
            )));
        };
        let password = std::fs::read_to_string(file).map_err(|e| {
            StoreError::Invalid(format!(
                "cannot read the etcd password file {}: {e}",
                file.display()
            ))
        })?;
        let password = password.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(StoreError::Invalid(format!(
                "the etcd password file {} is empty",
                file.display()
            )));
        }
        Ok(Some((user.clone(), password)))
    }
}

/// The ring-store flags every binary shares (each also readable from its `MEMRING_*` variable).
#[derive(Debug, Default, clap::Args)]
pub struct StoreArgs {
    /// Embedded ring store directory (one machine).
    #[arg(long, env = "MEMRING_RING_DIR")]
    pub ring_dir: Option<std::path::PathBuf>,
    /// etcd endpoints, comma-separated (cluster mode).
    #[arg(long, env = "MEMRING_ETCD")]
    pub etcd: Option<String>,
    /// Key prefix in etcd, so several clusters can share one etcd.
    #[arg(long, env = "MEMRING_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// etcd user name (etcd with authentication on).
    #[arg(long, env = "MEMRING_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "MEMRING_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<std::path::PathBuf>,
}

impl StoreArgs {
    /// Lays the given flags over `config` (flags win).
    pub fn overlay(self, config: &mut StoreConfig) {
        crate::config::overlay(&mut config.ring_dir, self.ring_dir);
        crate::config::overlay(&mut config.etcd, self.etcd.as_deref().map(parse_endpoints));
        crate::config::overlay(&mut config.etcd_prefix, self.etcd_prefix);
        crate::config::overlay(&mut config.etcd_user, self.etcd_user.map(Some));
        crate::config::overlay(&mut config.etcd_password_file, self.etcd_password_file.map(Some));
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            ring_dir: std::path::PathBuf::from("data/ring"),
            etcd: Vec::new(),
            etcd_prefix: "/memring/".into(),
            etcd_user: None,
            etcd_password_file: None,
        }
    }
}

/// Opens the configured ring store.
pub async fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn RingStore>, StoreError> {
    if config.is_etcd() {
        let credentials = config.etcd_credentials()?;
        Ok(std::sync::Arc::new(
            etcd::EtcdStore::connect_as(&config.etcd, &config.etcd_prefix, credentials).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(embedded::EmbeddedStore::open(&config.ring_dir)?))
    }
}

/// Splits a comma-separated endpoint list (`--etcd a,b`), dropping blanks.
pub fn parse_endpoints(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}
