//! A partition's search state in memory (`Loaded`): loading it from RocksDB (exact first, a
//! graph built beside it for a big partition), keeping it up to date with every commit, and the
//! filters' view of its entries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use memring_common::api::Filter;
use memring_common::{ApiError, PartitionKey};
use serde_json::{Map, Value};

use super::{CF_EPISODES, Entry, GRAPH_BUILDS, Loaded, Partition, Storage};
use crate::index::VectorIndex;
use crate::labels::LabelSet;
use crate::metadata_index::MetadataIndex;
use crate::record::{StoredEpisode, decode, parse_metadata};

impl Loaded {
    pub(super) fn new(metadata_index_min: usize) -> Self {
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

    pub(super) fn insert(&mut self, label: u64, mut entry: Entry) {
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

    pub(super) fn remove(&mut self, label: u64) {
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
    pub(super) fn allowed(&self, filter: &Filter, now_ms: i64) -> Option<LabelSet> {
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

impl Storage {
    /// Applies committed changes to the loaded index (if it is loaded; otherwise the next load
    /// reads them from RocksDB). Called with the partition's write mutex held, so in log order.
    /// Each op sets its label's final state, so only the last op per label touches the graph,
    /// and the vectors of a big batch go in on several threads.
    pub(super) fn apply_to_index(
        &self,
        p: &Partition,
        ops: Vec<(u64, Option<Vec<f32>>, Option<Entry>)>,
    ) {
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
    pub(super) fn ensure_loaded(&self, p: &Arc<Partition>) -> Result<(), ApiError> {
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
    pub(super) fn build_graph_beside(&self, p: Arc<Partition>, id: u64, exact: VectorIndex) {
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
}

/// Counts one graph build out of `memring_index_builds_running` when it ends, however it ends.
struct BuildRunning;

impl Drop for BuildRunning {
    fn drop(&mut self) {
        metrics::gauge!("memring_index_builds_running").decrement(1.0);
    }
}

pub(super) fn entry_of(e: &StoredEpisode, metadata: &Map<String, Value>) -> Entry {
    Entry {
        id: e.id.clone(),
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
        expires_at_ms: e.expires_at_ms,
        metadata: metadata.clone(),
        content: e.content.clone(),
    }
}
