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

/// The ring store: layout with epochs, watches, and leased node records.
#[async_trait]
pub trait RingStore: Send + Sync + 'static {
    /// The current layout (epoch 0 and no nodes when nothing was ever written).
    async fn load(&self) -> Result<Versioned, StoreError>;

    /// Replaces the layout if its epoch is still `expected_epoch`. `new.epoch` must be
    /// `expected_epoch + 1`. Of two concurrent calls with the same expectation exactly one wins;
    /// the other gets [`StoreError::Conflict`] with what the store holds now.
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

    /// A short name for logs and `/v1/cluster` (`embedded:/path`, `etcd:http://…`).
    fn describe(&self) -> String;
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
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Embedded store directory (used when `etcd` is empty).
    pub ring_dir: std::path::PathBuf,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    pub etcd_prefix: String,
}

impl StoreConfig {
    /// True in cluster mode (etcd).
    pub fn is_etcd(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// Opens the configured ring store.
pub async fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn RingStore>, StoreError> {
    if config.is_etcd() {
        Ok(std::sync::Arc::new(etcd::EtcdStore::connect(&config.etcd, &config.etcd_prefix).await?))
    } else {
        Ok(std::sync::Arc::new(embedded::EmbeddedStore::open(&config.ring_dir)?))
    }
}

/// Splits a comma-separated endpoint list (`--etcd a,b`), dropping blanks.
pub fn parse_endpoints(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}
