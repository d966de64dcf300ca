//! HNSW graphs kept across a clean restart. Building a partition's graph from RocksDB takes
//! seconds to minutes (25 s for 100,000 × 384 here), and searches of that partition wait for it;
//! a graceful shutdown therefore writes every loaded graph to `<data_dir>/graphs/`, and the next
//! start loads them back before the node serves, so its hot partitions answer at once.
//!
//! A graph file is only used when it matches the data exactly: it records the partition's log
//! position when it was written, and is loaded only if the partition is still at that position
//! (nothing can write in between: files are read during `Storage::open` and deleted once read,
//! used or not). After a crash there are no files, and graphs are rebuilt on first search.
//!
//! File: `MRG1` ‖ log position (u64 BE) ‖ XXH3 of the graph (u64 BE) ‖ usearch graph bytes.

use std::path::{Path, PathBuf};

use memring_common::{ApiError, PartitionKey};
use xxhash_rust::xxh3::xxh3_64;

use super::{CF_EPISODES, Loaded, Storage, entry_of};
use crate::index::VectorIndex;
use crate::record::{StoredEpisode, decode, parse_metadata, partition_of_meta_key};

const MAGIC: &[u8; 4] = b"MRG1";
const HEADER: usize = 4 + 8 + 8;

/// The graphs folder of a data directory.
pub(super) fn graphs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("graphs")
}

fn file_name(enc: &[u8]) -> String {
    let hex: String = enc.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.graph")
}

fn partition_of_file(path: &Path) -> Option<Vec<u8>> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".graph")?;
    if stem.len() % 2 != 0 {
        return None;
    }
    (0..stem.len()).step_by(2).map(|i| u8::from_str_radix(stem.get(i..i + 2)?, 16).ok()).collect()
}

impl Storage {
    /// Writes every loaded HNSW graph to the graphs folder (at shutdown). Returns how many.
    pub fn save_graphs(&self) -> Result<usize, ApiError> {
        let dir = &self.graphs_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        let keys: Vec<PartitionKey> =
            self.partitions.read().values().map(|p| p.key.clone()).collect();
        let mut saved = 0;
        for key in keys {
            let Some((seq, graph)) = self.export_index(&key)? else { continue };
            let mut bytes = Vec::with_capacity(HEADER + graph.len());
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(&seq.to_be_bytes());
            bytes.extend_from_slice(&xxh3_64(&graph).to_be_bytes());
            bytes.extend_from_slice(&graph);
            let path = dir.join(file_name(&key.encode()));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
            saved += 1;
        }
        Ok(saved)
    }

    /// Loads the graphs a clean shutdown left (called by `open`, before anything can write), and
    /// deletes every file it read. A file that does not match its partition is skipped.
    pub(super) fn load_graphs(&self) {
        let Ok(files) = std::fs::read_dir(&self.graphs_dir) else { return };
        for file in files.flatten() {
            let path = file.path();
            let started = std::time::Instant::now();
            match self.load_graph(&path) {
                Ok(Some((key, vectors))) => tracing::info!(
                    partition = %key,
                    vectors,
                    millis = started.elapsed().as_millis() as u64,
                    "graph loaded from the last clean shutdown"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "graph file not used; the graph will be rebuilt")
                }
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a graph file");
            }
        }
    }

    fn load_graph(&self, path: &Path) -> Result<Option<(PartitionKey, usize)>, ApiError> {
        let Some(key) = partition_of_file(path).as_deref().and_then(partition_of_meta_key) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| ApiError::internal(e.to_string()))?;
        let (header, graph) = bytes.split_at_checked(HEADER).ok_or_else(|| bad("too short"))?;
        let field = |at: usize| {
            header.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
        };
        let (seq, sum) =
            (field(4).ok_or_else(|| bad("header"))?, field(12).ok_or_else(|| bad("header"))?);
        if &header[..4] != MAGIC || xxh3_64(graph) != sum {
            return Err(bad("not a graph file, or damaged"));
        }
        let Some(p) = self.partition(&key, false)? else { return Ok(None) };
        let meta = p.meta.lock();
        if meta.last_seq != seq {
            return Err(bad("the partition changed after the graph was written"));
        }
        let Some(&dims) = p.dimensions.get() else { return Err(bad("partition has no vectors")) };
        let index = VectorIndex::from_bytes(dims as usize, self.config.index.clone(), graph)
            .map_err(|e| bad(&e.to_string()))?;
        let (loaded, vectors) = self.with_stored_entries(&p.enc, index)?;
        if loaded.vectors.as_ref().map_or(0, VectorIndex::len) != vectors {
            return Err(bad("the graph and the stored memories disagree"));
        }
        self.totals.load(p.search.write().replace(loaded).is_none());
        Ok(Some((key, vectors)))
    }
}

impl Storage {
    /// Search state around a ready graph: the filter entries and keyword index of every stored
    /// memory in partition `enc` (a scan without the cost of inserting into the graph), and how
    /// many of them have a vector.
    pub(super) fn with_stored_entries(
        &self,
        enc: &[u8],
        index: VectorIndex,
    ) -> Result<(Loaded, usize), ApiError> {
        let mut loaded = Loaded::new(self.config.metadata_index_min);
        loaded.vectors = Some(index);
        let mut vectors = 0;
        for item in self.scan(CF_EPISODES, enc, enc, Storage::uncached())? {
            let (_, value) = item?;
            let e: StoredEpisode = decode(&value)?;
            vectors += usize::from(e.embedding.is_some());
            loaded.insert(e.label, entry_of(&e, &parse_metadata(&e.metadata_json)?));
        }
        Ok((loaded, vectors))
    }
}

fn bad(why: &str) -> ApiError {
    ApiError::internal(format!("graph file unusable: {why}"))
}
