//! The shard node's durable state: RocksDB, and the partitions (with their indexes) on top of it.
//!
//! Column families:
//! - `episodes`: `partition ‖ id` → [`StoredEpisode`]
//! - `log`: `partition ‖ seq` → [`LogEntry`]; every put and delete, appended in the *same* write
//!   batch as the change it records, so the log and the data can never disagree after a crash
//! - `meta`: `partition` → [`PartitionMeta`] (dimension, last seq, count, next label), in the same
//!   batch too; plus node-level keys under a `0xFF` prefix no partition encoding can start with.
//!
//! Concurrency: each partition has one write mutex (guarding its meta) that orders its changes;
//! its vector index sits behind a read-write lock taken after the mutex. Searches take only the
//! read lock. A node-wide gate lets a tenant deletion exclude writes while it runs. All methods
//! here block (RocksDB and usearch are synchronous); the HTTP layer calls them on blocking threads.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use memring_common::api::{WriteOutcome, WriteResult};
use memring_common::{ApiError, ErrorCode, NodeId, PartitionKey};
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options,
    ReadOptions, WriteOptions,
};
use serde_json::{Map, Value};

use crate::index::{IndexConfig, VectorIndex};
use crate::metadata_index::MetadataIndex;
use crate::record::{PartitionMeta, StoredEpisode, decode, encode, episode_key, prefix_end};
use crate::replicate::rules::LogPos;
use feed::Feed;
use totals::Totals;

type Db = DBWithThreadMode<MultiThreaded>;

/// A raw RocksDB key and value.
type KeyValue = (Box<[u8]>, Box<[u8]>);

const CF_EPISODES: &str = "episodes";
const CF_LOG: &str = "log";
const CF_META: &str = "meta";
/// Node-level meta key: the node id this data directory belongs to.
const NODE_ID_KEY: &[u8] = b"\xffnode_id";

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// fsync the WAL on every write (survives power loss; slower). Without it a write survives a
    /// process crash but not a machine crash.
    pub sync_writes: bool,
    /// RocksDB block cache, bytes.
    pub block_cache_bytes: usize,
    /// Vector index tuning.
    pub index: IndexConfig,
    /// Threads that insert a big batch of vectors into a graph at once (index builds, batch
    /// writes, migration imports).
    pub build_threads: usize,
    /// Nice value of the threads that build a loaded partition's graph in the background (0:
    /// normal priority): searches of other partitions go first.
    pub build_nice: i32,
    /// A loaded partition with this many memories keeps an index of their metadata values
    /// (`metadata_index.rs`) for filters; smaller ones read each memory's metadata.
    pub metadata_index_min: usize,
}

/// Numbers the background graph builds (see `Storage::ensure_loaded`).
static GRAPH_BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync_writes: false,
            block_cache_bytes: 256 << 20,
            index: IndexConfig::default(),
            build_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            build_nice: 0,
            metadata_index_min: 2_048,
        }
    }
}

/// The outcome of one item of a write: what happened and the public result, or why it was refused.
pub type ItemResult = Result<(WriteOutcome, WriteResult), ApiError>;

/// The check a write or delete makes under the partition's write lock: given the term of the
/// partition's last log entry, the term its new entries get, or why it may not commit.
pub type CommitCheck<'a> = &'a dyn Fn(u64) -> Result<u64, ApiError>;

/// The commit check of a node that does not replicate (and of tests): new entries keep the
/// log's last term.
pub fn same_term(last_term: u64) -> Result<u64, ApiError> {
    Ok(last_term)
}

/// What the index needs to know about a memory to filter and answer without touching RocksDB.
struct Entry {
    id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    expires_at_ms: Option<i64>,
    metadata: Map<String, Value>,
    /// The memory's text on its way into the keyword index ([`Loaded::insert`] takes it out).
    content: String,
}

/// A partition's loaded search state.
struct Loaded {
    vectors: Option<VectorIndex>,
    /// BM25 over the memories' content.
    keywords: crate::keyword::KeywordIndex,
    /// Every stored memory (with a vector or not), by label: what filters read.
    entries: HashMap<u64, Entry>,
    /// The metadata values of the entries, once there are `metadata_index_min` of them (a small
    /// partition's filter reads its few entries instead).
    metadata: Option<MetadataIndex>,
    metadata_index_min: usize,
    /// `(expires_at_ms, label)` of the entries with a TTL: a search leaves out those due, and
    /// while none has a TTL needs no expiry check at all.
    expiries: BTreeSet<(i64, u64)>,
    /// While a graph is built beside the exact index (see `Storage::ensure_loaded`): the
    /// build's number and the labels changed since its snapshot, replayed onto the graph before
    /// it takes the exact index's place.
    building: Option<(u64, Vec<u64>)>,
}

/// One partition on this node.
struct Partition {
    key: PartitionKey,
    enc: Vec<u8>,
    meta: Mutex<PartitionMeta>,
    search: RwLock<Option<Loaded>>,
    /// Writes refused while the partition is handed to another node (persisted, see migration).
    fenced: std::sync::atomic::AtomicBool,
    /// The embedding dimension once fixed (it never changes after), readable by searches without
    /// waiting on the write mutex that a long batch write holds.
    dimensions: std::sync::OnceLock<u32>,
    /// The model of its vectors once fixed (with the dimension), read the same way.
    embedding_model: std::sync::OnceLock<String>,
    /// Its meta is on disk (it counts in the node's totals).
    stored: std::sync::atomic::AtomicBool,
    /// Being re-seeded from a snapshot (persisted, see `trim.rs`).
    reseeding: std::sync::atomic::AtomicBool,
}

impl Partition {
    /// Installs committed meta (with the write mutex held) and publishes a newly fixed
    /// dimension.
    fn install(&self, meta: &mut PartitionMeta, next: PartitionMeta) {
        if let Some(d) = next.dimensions {
            let _ = self.dimensions.set(d);
        }
        if let Some(m) = &next.embedding_model
            && self.embedding_model.get().is_none()
        {
            let _ = self.embedding_model.set(m.clone());
        }
        *meta = next;
    }

    fn check_not_fenced(&self) -> Result<(), ApiError> {
        if self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ApiError::new(
                ErrorCode::PartitionMoving,
                format!("{} is moving to another node; retry in a moment", self.key),
            )
            .with_retry_after(1));
        }
        Ok(())
    }
}

/// The node's storage engine.
pub struct Storage {
    db: Db,
    config: StorageConfig,
    partitions: RwLock<HashMap<Vec<u8>, Arc<Partition>>>,
    /// Writes hold it shared; a tenant deletion holds it exclusively.
    gate: RwLock<()>,
    /// Where a clean shutdown leaves the loaded HNSW graphs (`graphs.rs`).
    graphs_dir: std::path::PathBuf,
    /// Which partitions changed, for the followers (`feed.rs`).
    feed: Feed,
    /// Node-wide totals, kept up to date by every commit (`totals.rs`).
    totals: Totals,
    /// Deleted key ranges waiting for compaction (`reclaim.rs`).
    reclaim: Mutex<Vec<reclaim::Range>>,
    /// Logs a migration or a re-seed is reading: partition → (position, last use) (`trim.rs`).
    pins: Mutex<HashMap<Vec<u8>, (u64, std::time::Instant)>>,
    /// Log entries trimmed since the log was last compacted whole (`reclaim.rs`).
    trimmed_since_compaction: std::sync::atomic::AtomicU64,
}

fn db_err(e: rocksdb::Error) -> ApiError {
    ApiError::internal(format!("rocksdb: {e}"))
}

impl Storage {
    /// Opens (or creates) the database in `dir` for node `node`. Refuses a directory that belongs
    /// to another node id: two nodes must never share data.
    pub fn open(dir: &Path, node: &NodeId, config: StorageConfig) -> anyhow::Result<Self> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        let mut log_opts = cf_opts.clone();
        // Files that are mostly trimmed entries' tombstones get compacted (`trim.rs`): half of
        // any 128 consecutive keys deleted.
        log_opts.add_compact_on_deletion_collector_factory(128, 64, 0.5);
        let cfs = [(CF_EPISODES, cf_opts.clone()), (CF_LOG, log_opts), (CF_META, cf_opts)]
            .into_iter()
            .map(|(name, opts)| ColumnFamilyDescriptor::new(name, opts));
        let db = Db::open_cf_descriptors(&db_opts, dir, cfs)
            .map_err(|e| anyhow::anyhow!("cannot open RocksDB in {}: {e}", dir.display()))?;
        let storage = Self {
            db,
            config,
            partitions: RwLock::new(HashMap::new()),
            gate: RwLock::new(()),
            graphs_dir: graphs::graphs_dir(dir),
            feed: Feed::new(),
            totals: Totals::default(),
            reclaim: Mutex::new(Vec::new()),
            pins: Mutex::new(HashMap::new()),
            trimmed_since_compaction: std::sync::atomic::AtomicU64::new(0),
        };
        storage.claim(node)?;
        storage
            .count_totals()
            .map_err(|e| anyhow::anyhow!("cannot count the stored partitions: {e}"))?;
        storage
            .seed_expiry_index()
            .map_err(|e| anyhow::anyhow!("cannot start the expiry index: {e}"))?;
        storage.load_graphs();
        Ok(storage)
    }

    fn claim(&self, node: &NodeId) -> anyhow::Result<()> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(&meta, NODE_ID_KEY)? {
            Some(owner) if owner != node.as_str().as_bytes() => anyhow::bail!(
                "data directory belongs to node {:?}, not {node}; give each node its own --data-dir",
                String::from_utf8_lossy(&owner)
            ),
            Some(_) => Ok(()),
            None => Ok(self.db.put_cf(&meta, NODE_ID_KEY, node.as_str().as_bytes())?),
        }
    }

    fn cf(&self, name: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>, ApiError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| ApiError::internal(format!("column family {name} is missing")))
    }

    /// Key/value pairs of column family `cf` from `start` to the end of the keys starting with
    /// `prefix`, in key order. `opts` carries the caller's snapshot or cache choice.
    fn scan<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        mut opts: ReadOptions,
    ) -> Result<impl Iterator<Item = Result<KeyValue, ApiError>> + 'a, ApiError> {
        opts.set_iterate_upper_bound(prefix_end(prefix));
        let cf = self.cf(cf)?;
        let iter = self.db.iterator_cf_opt(
            &cf,
            opts,
            rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        Ok(iter.map(|item| item.map_err(db_err)))
    }

    /// Read options for a one-off full scan that should not evict hot blocks from the cache.
    fn uncached() -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        opts
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.config.sync_writes);
        w
    }

    /// The partition, loading its meta from disk; `None` if it has never been written (and
    /// `create` is false).
    fn partition(
        &self,
        key: &PartitionKey,
        create: bool,
    ) -> Result<Option<Arc<Partition>>, ApiError> {
        let enc = key.encode();
        if let Some(p) = self.partitions.read().get(&enc) {
            return Ok(Some(p.clone()));
        }
        let meta_cf = self.cf(CF_META)?;
        let mut stored = true;
        let meta = match self.db.get_cf(&meta_cf, &enc).map_err(db_err)? {
            Some(bytes) => {
                let mut meta = decode::<PartitionMeta>(&bytes)?;
                if meta.checksum.is_none() || meta.bytes.is_none() {
                    // Written by format 1 or 2: count, checksum and bytes once from the data,
                    // stored back at once (partition lists read metas from disk).
                    let (count, sum, bytes) = self.scan_checksum(&enc)?;
                    tracing::info!(partition = %key, count, "partition meta upgraded to format 3");
                    meta.count = count;
                    meta.checksum = Some(sum);
                    meta.bytes = Some(bytes);
                    self.db
                        .put_cf_opt(&meta_cf, &enc, encode(&meta)?, &self.write_options())
                        .map_err(db_err)?;
                }
                meta
            }
            None if create => {
                stored = false;
                PartitionMeta { checksum: Some(0), bytes: Some(0), ..PartitionMeta::default() }
            }
            None => return Ok(None),
        };
        let fenced =
            self.db.get_cf(&meta_cf, migration::fence_key(&enc)).map_err(db_err)?.is_some();
        let reseeding = self.db.get_cf(&meta_cf, trim::reseed_key(&enc)).map_err(db_err)?.is_some();
        let mut map = self.partitions.write();
        let p = map
            .entry(enc.clone())
            .or_insert_with(|| {
                Arc::new(Partition {
                    key: key.clone(),
                    enc,
                    search: RwLock::new(None),
                    fenced: std::sync::atomic::AtomicBool::new(fenced),
                    stored: std::sync::atomic::AtomicBool::new(stored),
                    reseeding: std::sync::atomic::AtomicBool::new(reseeding),
                    dimensions: meta_dimensions(&meta),
                    embedding_model: meta
                        .embedding_model
                        .clone()
                        .map(std::sync::OnceLock::from)
                        .unwrap_or_default(),
                    meta: Mutex::new(meta),
                })
            })
            .clone();
        Ok(Some(p))
    }

    fn read_episode(&self, enc: &[u8], id: &str) -> Result<Option<StoredEpisode>, ApiError> {
        let cf = self.cf(CF_EPISODES)?;
        match self.db.get_cf(&cf, episode_key(enc, id)).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The partition's last log sequence number (0 if it does not exist).
    pub fn last_seq(&self, key: &PartitionKey) -> Result<u64, ApiError> {
        Ok(self.last_pos(key)?.seq)
    }

    /// The partition's last log position with its term, read under its write lock (`(0, 0)` if
    /// it does not exist, or while it is being re-seeded: it vouches for nothing then).
    pub fn last_pos(&self, key: &PartitionKey) -> Result<LogPos, ApiError> {
        Ok(self.partition(key, false)?.map_or(LogPos::default(), |p| {
            let meta = p.meta.lock();
            if p.reseeding.load(std::sync::atomic::Ordering::Acquire) {
                return LogPos::default();
            }
            LogPos::new(meta.last_term, meta.last_seq)
        }))
    }

    /// The node's change feed (`feed.rs`).
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Returns once every write that had entered the write gate before this call has finished.
    pub fn write_barrier(&self) {
        drop(self.gate.write());
    }

    /// Count, checksum and byte total of the partition's stored memories, by a full scan.
    fn scan_checksum(&self, enc: &[u8]) -> Result<(u64, u64, u64), ApiError> {
        let (mut count, mut sum, mut bytes) = (0u64, 0u64, 0u64);
        for item in self.scan(CF_EPISODES, enc, enc, Self::uncached())? {
            let (_, value) = item?;
            let e: StoredEpisode = decode(&value)?;
            sum = sum.wrapping_add(crate::record::checksum_term(&e.id, e.version));
            bytes += e.size();
            count += 1;
        }
        Ok((count, sum, bytes))
    }

    /// Node-level figures for the metrics (bounded cardinality: no per-partition series):
    /// partitions held, memories, their bytes, indexes in memory, and RocksDB's SST size,
    /// pending compaction bytes and whether writes are stopped.
    /// Costs nothing per partition: the totals are kept by every commit (`totals.rs`).
    pub fn node_stats(&self) -> Result<NodeStats, ApiError> {
        let mut stats = self.totals.stats();
        for name in [CF_EPISODES, CF_LOG, CF_META] {
            let cf = self.cf(name)?;
            let prop =
                |key: &str| self.db.property_int_value_cf(&cf, key).ok().flatten().unwrap_or(0);
            let sst = prop("rocksdb.total-sst-files-size");
            stats.sst_bytes += sst;
            stats.reclaimable_bytes += sst.saturating_sub(prop("rocksdb.estimate-live-data-size"));
            stats.pending_compaction_bytes += prop("rocksdb.estimate-pending-compaction-bytes");
            stats.write_stopped |= prop("rocksdb.is-write-stopped") > 0;
        }
        Ok(stats)
    }
}

/// `400 embedding_model_mismatch`: the router would embed for `key` with `router_model`, and
/// the partition's vectors came from `held`.
pub fn model_mismatch(key: &PartitionKey, held: &str, router_model: &str) -> ApiError {
    ApiError::new(
        ErrorCode::EmbeddingModelMismatch,
        format!(
            "scope {} holds vectors of model {held:?} and the router embeds with {router_model:?}; send an \"embedding\" made by {held:?} (or use keyword mode), or write to another scope",
            key.scope()
        ),
    )
}

fn meta_dimensions(meta: &PartitionMeta) -> std::sync::OnceLock<u32> {
    let cell = std::sync::OnceLock::new();
    if let Some(d) = meta.dimensions {
        let _ = cell.set(d);
    }
    cell
}

/// See [`Storage::node_stats`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeStats {
    /// Partitions held.
    pub partitions: u64,
    /// Memories in them.
    pub memories: u64,
    /// Their size (what byte quotas count).
    pub bytes: u64,
    /// Partitions whose index is in memory.
    pub loaded_indexes: u64,
    /// RocksDB SST files, bytes.
    pub sst_bytes: u64,
    /// RocksDB's estimate of bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// RocksDB is stopping writes (a stall).
    pub write_stopped: bool,
    /// SST bytes beyond RocksDB's estimate of live data: what compaction could still free.
    pub reclaimable_bytes: u64,
}

pub mod feed;
mod graphs;
mod listing;
mod loaded;
use loaded::entry_of;
pub mod log;
pub mod migration;
pub mod purge;
mod read;
pub mod reclaim;
mod totals;
pub mod trim;
mod write;

#[cfg(test)]
mod tests;
