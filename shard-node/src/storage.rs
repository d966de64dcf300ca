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

use memring_common::api::{
    Filter, MemoryView, PartitionStats, Scores, SearchHit, WriteOutcome, WriteResult,
};
use memring_common::clock::format_millis;
use memring_common::scope::tenant_prefix;
use memring_common::{ApiError, ErrorCode, MemoryId, NodeId, PartitionKey, TenantId};
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options,
    ReadOptions, WriteBatch, WriteOptions,
};
use serde_json::{Map, Value};

use crate::index::{IndexConfig, VectorIndex};
use crate::labels::LabelSet;
use crate::metadata_index::MetadataIndex;
use crate::record::{
    LogEntry, PartitionMeta, StoredEpisode, decode, encode, episode_key, log_key, parse_metadata,
    partition_of_meta_key, prefix_end,
};
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

impl Loaded {
    fn new(metadata_index_min: usize) -> Self {
        Self {
            vectors: None,
            keywords: Default::default(),
            entries: HashMap::new(),
            metadata: None,
            metadata_index_min,
            expiries: BTreeSet::new(),
            building: None,
        }
    }

    fn insert(&mut self, label: u64, mut entry: Entry) {
        self.remove(label);
        self.keywords.insert(label, &std::mem::take(&mut entry.content));
        if let Some(at) = entry.expires_at_ms {
            self.expiries.insert((at, label));
        }
        if let Some(index) = &mut self.metadata {
            index.insert(label, &entry.metadata);
        }
        self.entries.insert(label, entry);
        if self.metadata.is_none() && self.entries.len() >= self.metadata_index_min {
            let mut index = MetadataIndex::default();
            for (&label, entry) in &self.entries {
                index.insert(label, &entry.metadata);
            }
            self.metadata = Some(index);
        }
    }

    fn remove(&mut self, label: u64) {
        let Some(old) = self.entries.remove(&label) else { return };
        self.keywords.remove(label);
        if let Some(at) = old.expires_at_ms {
            self.expiries.remove(&(at, label));
        }
        if let Some(index) = &mut self.metadata {
            index.remove(label, &old.metadata);
        }
    }

    /// The labels a search may return under `filter` at `now_ms`; `None` when every entry may.
    /// A big partition answers the metadata condition from its metadata index when it can; else
    /// (and in a small partition) each entry's metadata is read.
    fn allowed(&self, filter: &Filter, now_ms: i64) -> Option<LabelSet> {
        if filter.is_empty() && self.expiries.is_empty() {
            return None;
        }
        let indexed = self.metadata.as_ref().and_then(|index| match &filter.metadata {
            Some(condition) => index.matching(condition),
            None => Some(index.all().clone()),
        });
        let Some(mut allowed) = indexed else {
            let passing = self.entries.iter().filter(|(_, e)| {
                e.expires_at_ms.is_none_or(|at| at > now_ms)
                    && filter.matches(&e.metadata, e.created_at_ms)
            });
            return Some(LabelSet::from_labels(passing.map(|(label, _)| *label)));
        };
        if filter.created_after_ms.is_some() || filter.created_before_ms.is_some() {
            allowed.retain(|label| {
                self.entries.get(&label).is_some_and(|e| filter.created_passes(e.created_at_ms))
            });
        }
        for &(_, label) in self.expiries.range(..=(now_ms, u64::MAX)) {
            allowed.remove(label);
        }
        Some(allowed)
    }
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

    /// Applies committed changes to the loaded index (if it is loaded; otherwise the next load
    /// reads them from RocksDB). Called with the partition's write mutex held, so in log order.
    /// Each op sets its label's final state, so only the last op per label touches the graph,
    /// and the vectors of a big batch go in on several threads.
    fn apply_to_index(&self, p: &Partition, ops: Vec<(u64, Option<Vec<f32>>, Option<Entry>)>) {
        let mut guard = p.search.write();
        let Some(loaded) = guard.as_mut() else { return };
        let last: HashMap<u64, usize> =
            ops.iter().enumerate().map(|(i, (label, _, _))| (*label, i)).collect();
        if let Some((_, touched)) = &mut loaded.building {
            touched.extend(last.keys());
        }
        let mut upserts: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut result = Ok(());
        for (i, (label, vector, entry)) in ops.into_iter().enumerate() {
            match entry {
                Some(entry) => loaded.insert(label, entry),
                None => loaded.remove(label),
            }
            if last.get(&label) != Some(&i) {
                continue;
            }
            match vector {
                Some(v) => upserts.push((label, v)),
                None => {
                    if let Some(index) = &mut loaded.vectors {
                        result = result.and(index.remove(label));
                    }
                }
            }
        }
        if let Some((_, first)) = upserts.first() {
            let config = self.config.index.clone();
            let index = loaded.vectors.get_or_insert_with(|| VectorIndex::new(first.len(), config));
            let items: Vec<(u64, &[f32])> =
                upserts.iter().map(|(label, v)| (*label, v.as_slice())).collect();
            result = result.and(index.upsert_many(&items, self.config.build_threads));
        }
        if let Err(e) = result {
            // The data is committed; only the derived index failed. Drop it so the next search
            // rebuilds it from RocksDB rather than serving a wrong answer.
            tracing::error!(partition = %p.key, error = %e, "index update failed; index will be rebuilt");
            self.totals.unload(guard.take().is_some());
        }
    }

    /// Builds the partition's search state from RocksDB if it is not loaded. A big partition
    /// gets an exact index first — ready once its vectors are read, answering every search
    /// exactly — and its HNSW graph is built on a background thread from a copy of it; writes
    /// meanwhile go to the exact index and are replayed onto the graph before it takes over.
    fn ensure_loaded(&self, p: &Arc<Partition>) -> Result<(), ApiError> {
        if p.search.read().is_some() {
            return Ok(());
        }
        let _meta = p.meta.lock();
        let mut guard = p.search.write();
        if guard.is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut loaded = Loaded::new(self.config.metadata_index_min);
        let config = self.config.index.clone();
        for item in self.scan(CF_EPISODES, &p.enc, &p.enc, Self::uncached())? {
            let (_, value) = item?;
            let episode: StoredEpisode = decode(&value)?;
            let metadata = parse_metadata(&episode.metadata_json)?;
            loaded.insert(episode.label, entry_of(&episode, &metadata));
            let Some(vector) = episode.embedding.as_deref() else { continue };
            let index = loaded
                .vectors
                .get_or_insert_with(|| VectorIndex::exact(vector.len(), config.clone()));
            index.upsert(episode.label, vector).map_err(|e| ApiError::internal(e.to_string()))?;
        }
        let vectors = loaded.vectors.as_ref().map_or(0, VectorIndex::len);
        let graph_due = loaded.vectors.as_ref().is_some_and(|v| v.len() > config.flat_limit);
        let snapshot = match &mut loaded.vectors {
            Some(index) if graph_due => {
                let id = GRAPH_BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                loaded.building = Some((id, Vec::new()));
                index.flat_copy().map(|copy| (id, copy))
            }
            Some(index) => {
                // Small: exact is the right engine, and it turns into a graph as it grows.
                index.allow_graph();
                None
            }
            None => None,
        };
        tracing::info!(
            partition = %p.key,
            vectors,
            graph_follows = snapshot.is_some(),
            millis = started.elapsed().as_millis() as u64,
            "index loaded from RocksDB"
        );
        self.totals.load(guard.replace(loaded).is_none());
        if let Some((id, copy)) = snapshot {
            self.build_graph_beside(p.clone(), id, copy);
        }
        Ok(())
    }

    /// Builds `exact`'s graph on a background thread, then puts it in place of the partition's
    /// exact index with the changes made meanwhile (unless the search state was replaced or
    /// dropped since: build `id` no longer matches). If the build fails, the exact index stays
    /// and turns into a graph as it grows.
    fn build_graph_beside(&self, p: Arc<Partition>, id: u64, exact: VectorIndex) {
        let (threads, nice) = (self.config.build_threads, self.config.build_nice);
        let fall_back = move |p: &Partition, why: String| {
            tracing::error!(partition = %p.key, error = %why, "graph build failed; searches stay exact");
            let mut guard = p.search.write();
            if let Some(loaded) =
                guard.as_mut().filter(|l| l.building.as_ref().is_some_and(|b| b.0 == id))
            {
                loaded.building = None;
                if let Some(index) = &mut loaded.vectors {
                    index.allow_graph();
                }
            }
        };
        let partition = p.clone();
        metrics::gauge!("memring_index_builds_running").increment(1.0);
        let spawned = std::thread::Builder::new().name("graph-build".into()).spawn(move || {
            let _running = BuildRunning;
            crate::background::lower_priority(nice);
            let started = std::time::Instant::now();
            let mut graph = match exact.into_graph(threads) {
                Ok(graph) => graph,
                Err(e) => return fall_back(&partition, e.to_string()),
            };
            let mut guard = partition.search.write();
            let Some(loaded) = guard.as_mut() else { return };
            if loaded.building.as_ref().is_none_or(|b| b.0 != id) {
                return;
            }
            let (_, mut touched) = loaded.building.take().unwrap_or_default();
            touched.sort_unstable();
            touched.dedup();
            let current = loaded.vectors.as_ref();
            let replayed = touched.iter().try_for_each(|label| {
                match current.and_then(|c| c.flat_vector(*label)) {
                    Some(v) => graph.upsert(*label, v),
                    None => graph.remove(*label),
                }
            });
            if let Err(e) = replayed {
                loaded.building = Some((id, Vec::new()));
                drop(guard);
                return fall_back(&partition, e.to_string());
            }
            loaded.vectors = Some(graph);
            tracing::info!(
                partition = %partition.key,
                vectors = loaded.vectors.as_ref().map_or(0, VectorIndex::len),
                replayed = touched.len(),
                millis = started.elapsed().as_millis() as u64,
                "index graph built; it answers the searches now"
            );
        });
        if let Err(e) = spawned {
            metrics::gauge!("memring_index_builds_running").decrement(1.0);
            fall_back(&p, format!("cannot start a thread: {e}"));
        }
    }

    /// True when a search of the partition is quick CPU work: its index is in memory and is a
    /// graph or a small exact one (not an exact scan standing in while a graph is built).
    pub fn is_search_quick(&self, key: &PartitionKey) -> bool {
        self.partitions.read().get(&key.encode()).is_some_and(|p| {
            p.search.read().as_ref().is_some_and(|l| {
                l.building.is_none()
                    && l.vectors.as_ref().is_none_or(|v| {
                        v.engine_name() == "hnsw" || v.len() <= self.config.index.flat_limit
                    })
            })
        })
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

    /// True when the partition's search state is in memory, so a search is CPU work only (no
    /// index build from RocksDB).
    pub fn is_search_loaded(&self, key: &PartitionKey) -> bool {
        self.partitions.read().get(&key.encode()).is_some_and(|p| p.search.read().is_some())
    }

    /// `400 embedding_model_mismatch` when the router embedded a query with `router_model` and
    /// the partition's vectors came from another model (a partition without vectors takes any).
    pub fn check_query_model(
        &self,
        key: &PartitionKey,
        router_model: &str,
    ) -> Result<(), ApiError> {
        let Some(p) = self.partition(key, false)? else { return Ok(()) };
        if p.dimensions.get().is_none() {
            return Ok(());
        }
        let held =
            p.embedding_model.get().map_or(memring_common::api::CLIENT_MODEL, String::as_str);
        if held != router_model {
            return Err(model_mismatch(key, held, router_model));
        }
        Ok(())
    }

    /// The best `k` memories of the partition for `query` that pass `filter`, best first.
    pub fn search(
        &self,
        key: &PartitionKey,
        query: &[f32],
        k: usize,
        filter: &Filter,
        now_ms: i64,
    ) -> Result<Vec<SearchHit>, ApiError> {
        let Some(p) = self.partition(key, false)? else { return Ok(Vec::new()) };
        if let Some(&d) = p.dimensions.get()
            && d as usize != query.len()
        {
            return Err(ApiError::new(
                ErrorCode::DimensionMismatch,
                format!(
                    "query embedding has {} dimensions but scope {} holds {d}-dimensional memories",
                    query.len(),
                    key.scope()
                ),
            ));
        }
        self.ranked_hits(&p, filter, now_ms, Some(Scores::vector), |loaded, allowed| {
            let Some(index) = &loaded.vectors else { return Ok(Vec::new()) };
            let scored =
                index.search(query, k, allowed).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(scored.into_iter().map(|s| (s.label, s.score)).collect())
        })
    }

    /// The best `k` memories of the partition for the words of `query` by BM25 over their
    /// content (`keyword.rs`), among those that pass `filter`, best first.
    pub fn keyword_search(
        &self,
        key: &PartitionKey,
        query: &str,
        k: usize,
        filter: &Filter,
        now_ms: i64,
    ) -> Result<Vec<SearchHit>, ApiError> {
        let Some(p) = self.partition(key, false)? else { return Ok(Vec::new()) };
        self.ranked_hits(&p, filter, now_ms, Some(Scores::keyword), |loaded, allowed| {
            Ok(loaded.keywords.search(query, k, allowed))
        })
    }

    /// The partition's first `k` memories that pass `filter`, newest `updated_at` first, ties
    /// by id ascending (a search with neither words nor vector), each with no score.
    pub fn list_filtered(
        &self,
        key: &PartitionKey,
        k: usize,
        filter: &Filter,
        now_ms: i64,
    ) -> Result<Vec<SearchHit>, ApiError> {
        let Some(p) = self.partition(key, false)? else { return Ok(Vec::new()) };
        self.ranked_hits(&p, filter, now_ms, None, |loaded, allowed| {
            let mut order: Vec<(&u64, &Entry)> = loaded
                .entries
                .iter()
                .filter(|(label, _)| allowed.is_none_or(|a| a.contains(**label)))
                .collect();
            let newest = |a: &(&u64, &Entry), b: &(&u64, &Entry)| {
                b.1.updated_at_ms.cmp(&a.1.updated_at_ms).then_with(|| a.1.id.cmp(&b.1.id))
            };
            if order.len() > k {
                order.select_nth_unstable_by(k, newest);
                order.truncate(k);
            }
            order.sort_by(newest);
            Ok(order.into_iter().map(|(label, _)| (*label, 0.0)).collect())
        })
    }

    /// Loads the partition's search state, ranks with `rank` among the memories that pass
    /// `filter` (and have not expired), and reads the ranked memories for the answer.
    fn ranked_hits(
        &self,
        p: &Arc<Partition>,
        filter: &Filter,
        now_ms: i64,
        part: Option<fn(f32) -> Scores>,
        rank: impl FnOnce(&Loaded, Option<&LabelSet>) -> Result<Vec<(u64, f32)>, ApiError>,
    ) -> Result<Vec<SearchHit>, ApiError> {
        self.ensure_loaded(p)?;
        let guard = p.search.read();
        let Some(loaded) = guard.as_ref() else { return Ok(Vec::new()) };
        let allowed = loaded.allowed(filter, now_ms);
        let scored = rank(loaded, allowed.as_ref())?;
        let ids: Vec<(&Entry, f32)> = scored
            .iter()
            .filter_map(|(label, score)| loaded.entries.get(label).map(|e| (e, *score)))
            .collect();
        let cf = self.cf(CF_EPISODES)?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|(e, _)| episode_key(&p.enc, &e.id)).collect();
        let values = self.db.batched_multi_get_cf(&cf, &keys, false);
        let mut hits = Vec::with_capacity(ids.len());
        for ((entry, score), value) in ids.into_iter().zip(values) {
            // A memory deleted since the index lookup is simply left out.
            let Some(bytes) = value.map_err(db_err)? else { continue };
            let episode: StoredEpisode = decode(&bytes)?;
            hits.push(SearchHit {
                id: MemoryId::parse(&entry.id)?,
                scope: p.key.scope().clone(),
                score: part.map(|_| score),
                scores: part.map(|part| part(score)),
                content: episode.content,
                metadata: entry.metadata.clone(),
                created_at: format_millis(episode.created_at_ms),
                updated_at: format_millis(episode.updated_at_ms),
            });
        }
        Ok(hits)
    }

    /// One memory. `NotFound` if absent or expired.
    pub fn get(
        &self,
        key: &PartitionKey,
        id: &MemoryId,
        now_ms: i64,
    ) -> Result<MemoryView, ApiError> {
        let enc = key.encode();
        match self.read_episode(&enc, id.as_str())? {
            Some(e) if !e.is_expired(now_ms) => e.to_view(key.scope()),
            _ => Err(ApiError::not_found(format!(
                "memory {id} does not exist in scope {}",
                key.scope()
            ))),
        }
    }

    /// Up to `limit` memories after `after` (exclusive), in id order, and whether more follow.
    pub fn list(
        &self,
        key: &PartitionKey,
        after: Option<&MemoryId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<MemoryView>, bool), ApiError> {
        let enc = key.encode();
        let start = match after {
            // The byte after the id: ids never contain 0x00, so this is the next possible key.
            Some(id) => {
                let mut k = episode_key(&enc, id.as_str());
                k.push(0);
                k
            }
            None => enc.clone(),
        };
        let mut items = Vec::with_capacity(limit.min(1024));
        for item in self.scan(CF_EPISODES, &enc, &start, ReadOptions::default())? {
            let (_, value) = item?;
            let episode: StoredEpisode = decode(&value)?;
            if episode.is_expired(now_ms) {
                continue;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            items.push(episode.to_view(key.scope())?);
        }
        Ok((items, false))
    }

    /// Deletes every partition of `tenant` on this node (data, log and meta). Returns how many
    /// partitions were removed.
    pub fn delete_tenant(&self, tenant: &TenantId) -> Result<usize, ApiError> {
        let _gate = self.gate.write();
        let prefix = tenant_prefix(tenant);
        let end = prefix_end(&prefix);
        let removed = self.partitions_with_prefix(&prefix)?;
        let mut batch = WriteBatch::default();
        for name in [CF_EPISODES, CF_LOG, CF_META] {
            batch.delete_range_cf(&self.cf(name)?, &prefix, &end);
        }
        // The node-level keys that name the tenant's partitions: their fences and re-seed marks.
        for marks in [migration::fence_key(&prefix), trim::reseed_key(&prefix)] {
            batch.delete_range_cf(&self.cf(CF_META)?, &marks, &prefix_end(&marks));
        }
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        let mut dropped = Vec::new();
        self.partitions.write().retain(|enc, p| {
            let keep = !enc.starts_with(&prefix);
            if !keep {
                dropped.push(p.clone());
            }
            keep
        });
        for p in dropped {
            self.totals.unload(p.search.read().is_some());
        }
        for gone in &removed {
            self.totals.remove(gone);
            self.feed.note(&gone.partition);
        }
        if !removed.is_empty() {
            self.queue_reclaim(prefix, end);
        }
        Ok(removed.len())
    }

    fn partitions_with_prefix(&self, prefix: &[u8]) -> Result<Vec<PartitionStats>, ApiError> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, prefix, prefix, ReadOptions::default())? {
            let (k, v) = item?;
            let Some(partition) = partition_of_meta_key(&k) else { continue };
            let mut meta: PartitionMeta = decode(&v)?;
            if meta.bytes.is_none()
                && let Some(p) = self.partition(&partition, false)?
            {
                // An older format: loading the partition upgrades (and stores) its meta.
                meta = p.meta.lock().clone();
            }
            out.push(PartitionStats {
                partition,
                count: meta.count,
                dimensions: meta.dimensions,
                last_seq: meta.last_seq,
                last_term: meta.last_term,
                bytes: meta.bytes.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Every partition stored on this node.
    pub fn partitions(&self) -> Result<Vec<PartitionStats>, ApiError> {
        let mut all = self.partitions_with_prefix(&[])?;
        // Meta may lag the in-memory state of a partition being written right now; prefer memory.
        let live = self.partitions.read();
        for stats in &mut all {
            if let Some(p) = live.get(&stats.partition.encode()) {
                let meta = p.meta.lock();
                stats.count = meta.count;
                stats.last_seq = meta.last_seq;
                stats.last_term = meta.last_term;
                stats.dimensions = meta.dimensions;
            }
        }
        Ok(all)
    }

    /// The partitions changed after cursor `since` of feed instance `feed` (see
    /// [`PartitionList`](memring_common::api::PartitionList)), with the feed instance, the next
    /// cursor and whether the list is full: every partition when the cursor is 0 or of another
    /// instance.
    pub fn partitions_since(
        &self,
        feed: u64,
        since: u64,
    ) -> Result<(Vec<PartitionStats>, u64, u64, bool), ApiError> {
        let instance = self.feed.instance();
        if since == 0 || feed != instance {
            // Read before listing: a change made during the listing is listed again.
            let cursor = self.feed.now();
            return Ok((self.partitions()?, instance, cursor, true));
        }
        let changed = self.feed.since(since, usize::MAX);
        let mut out = Vec::with_capacity(changed.partitions.len());
        for p in changed.partitions {
            out.push(self.stats_of(&p)?);
        }
        Ok((out, instance, changed.cursor, false))
    }

    /// One partition's figures (all zero once it is gone).
    fn stats_of(&self, key: &PartitionKey) -> Result<PartitionStats, ApiError> {
        let empty = PartitionStats {
            partition: key.clone(),
            count: 0,
            dimensions: None,
            last_seq: 0,
            last_term: 0,
            bytes: 0,
        };
        let Some(p) = self.partition(key, false)? else { return Ok(empty) };
        let meta = p.meta.lock();
        Ok(PartitionStats {
            count: meta.count,
            dimensions: meta.dimensions,
            last_seq: meta.last_seq,
            last_term: meta.last_term,
            bytes: meta.bytes.unwrap_or(0),
            ..empty
        })
    }

    /// Change-log entries of a partition after `after_seq` (at most `limit`), for tests, replication
    /// and migration catch-up; `log_trimmed` if the log no longer holds the entry after it.
    pub fn log_after(
        &self,
        key: &PartitionKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ApiError> {
        let entries = self.read_log_after(key, after_seq, limit)?;
        // Checked after the read: a trim meanwhile removes only entries up to its new start.
        let start = self.log_start(key)?;
        if after_seq < start.seq {
            return Err(trim::trimmed_error(key, after_seq, start));
        }
        Ok(entries)
    }

    /// The log entries stored after `after_seq`, without the check of [`Storage::log_after`]
    /// (callers holding the partition's write lock check `trimmed_seq` themselves).
    fn read_log_after(
        &self,
        key: &PartitionKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ApiError> {
        let enc = key.encode();
        let start = log_key(&enc, after_seq.saturating_add(1));
        let mut out = Vec::new();
        for item in self.scan(CF_LOG, &enc, &start, ReadOptions::default())? {
            let (_, value) = item?;
            out.push(decode(&value)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// Counts one graph build out of `memring_index_builds_running` when it ends, however it ends.
struct BuildRunning;

impl Drop for BuildRunning {
    fn drop(&mut self) {
        metrics::gauge!("memring_index_builds_running").decrement(1.0);
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

fn entry_of(e: &StoredEpisode, metadata: &Map<String, Value>) -> Entry {
    Entry {
        id: e.id.clone(),
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
        expires_at_ms: e.expires_at_ms,
        metadata: metadata.clone(),
        content: e.content.clone(),
    }
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
pub mod log;
pub mod migration;
pub mod purge;
pub mod reclaim;
mod totals;
pub mod trim;
mod write;

#[cfg(test)]
mod tests;
