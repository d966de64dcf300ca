//! One partition's vector index: an exact flat scan while the partition is small, HNSW (usearch)
//! once it grows.
//!
//! The index is derived data: it holds only labels (u64 keys) and vectors, and is rebuilt from
//! RocksDB whenever it is missing. Scores are cosine similarity (higher is closer).
//!
//! Why two engines: an exact scan over a few thousand normalized vectors costs less than an HNSW
//! walk at ef 64 and has perfect recall; see `docs/benchmarks.md` for the crossover measured on
//! this machine, which sets [`IndexConfig::flat_limit`]. A partition switches to HNSW when it
//! crosses the limit and stays there.
//!
//! A big partition loaded from RocksDB first gets an exact index that does not switch
//! ([`VectorIndex::exact`]): it is ready in the time the vectors take to read and answers every
//! search exactly (slower, never wrong) while its graph is built beside it
//! ([`VectorIndex::into_graph`]) — see `Storage::ensure_loaded`.
//!
//! Filters run *inside* the search: the caller passes the set of labels that pass; when few pass,
//! the search is an exact scan over exactly those, and an HNSW walk that comes back short falls
//! back to that scan, so a selective filter never returns fewer than `k` results that exist.

use std::collections::HashMap;

use crate::labels::LabelSet;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Vectors inserted per round while a graph is built (each round on several threads).
const GRAPH_CHUNK: usize = 4096;

/// Tuning for every partition index on a node.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Partitions with at most this many vectors use the exact flat scan.
    pub flat_limit: usize,
    /// HNSW graph degree.
    pub connectivity: usize,
    /// HNSW beam width while inserting.
    pub expansion_add: usize,
    /// HNSW beam width while searching a graph of up to 25,000 vectors (wider for bigger
    /// graphs, narrower for selective filters: [`walk_beam`]).
    pub expansion_search: usize,
    /// Concurrent operations an HNSW index must allow (usearch reserves a context per thread).
    pub threads: usize,
    /// A filtered search of a graph scores the passing vectors exactly when at most this many
    /// pass, and walks the graph (with the beam of [`walk_beam`]) when more do. Measured on
    /// 100,000 × 384 (`examples/index_crossover.rs`): the exact scan of 2,000 answers 2,283 q/s
    /// against ~1,370 for the walk, of 5,000 667 q/s against ~1,500.
    pub exact_filter_limit: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            flat_limit: 1024,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            threads: 16,
            exact_filter_limit: 3000,
        }
    }
}

/// A failure inside the vector engine (a bug or resource exhaustion, never a client mistake).
#[derive(Debug, thiserror::Error)]
#[error("vector index: {0}")]
pub struct IndexError(String);

/// A scored label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The label.
    pub label: u64,
    /// Cosine similarity.
    pub score: f32,
}

enum Engine {
    Flat(Flat),
    Hnsw(Hnsw),
}

/// A partition's vectors, searchable.
pub struct VectorIndex {
    dims: usize,
    config: IndexConfig,
    engine: Engine,
    /// Whether a flat index turns into a graph when it grows past `flat_limit`.
    grows_graph: bool,
}

impl VectorIndex {
    /// An empty index for `dims`-dimensional vectors.
    pub fn new(dims: usize, config: IndexConfig) -> Self {
        Self { dims, engine: Engine::Flat(Flat::new(dims)), config, grows_graph: true }
    }

    /// An exact (flat) index that stays exact however large it grows, until
    /// [`VectorIndex::allow_graph`]: what serves a big partition while its graph is built.
    pub fn exact(dims: usize, config: IndexConfig) -> Self {
        Self { grows_graph: false, ..Self::new(dims, config) }
    }

    /// Lets an [`VectorIndex::exact`] index turn into a graph once it grows past `flat_limit`.
    pub fn allow_graph(&mut self) {
        self.grows_graph = true;
    }

    /// A copy of a flat index (`None` for a graph, which cannot be copied cheaply).
    pub fn flat_copy(&self) -> Option<Self> {
        let Engine::Flat(flat) = &self.engine else { return None };
        Some(Self {
            dims: self.dims,
            config: self.config.clone(),
            engine: Engine::Flat(flat.clone()),
            grows_graph: self.grows_graph,
        })
    }

    /// The (normalized) vector stored for `label` in a flat index; `None` if absent or if this
    /// is a graph.
    pub fn flat_vector(&self, label: u64) -> Option<&[f32]> {
        let Engine::Flat(flat) = &self.engine else { return None };
        let i = *flat.pos.get(&label)?;
        Some(&flat.vectors[i * flat.dims..(i + 1) * flat.dims])
    }

    /// The same vectors in an HNSW graph, inserted on up to `threads` threads (a graph stays as
    /// it is). Slow for big indexes: run it off the request path.
    pub fn into_graph(self, threads: usize) -> Result<Self, IndexError> {
        let Engine::Flat(flat) = &self.engine else { return Ok(self) };
        let hnsw = Hnsw::new(self.dims, &self.config, (flat.labels.len() * 2).max(1024))?;
        let mut graph = Self {
            dims: self.dims,
            config: self.config.clone(),
            engine: Engine::Hnsw(hnsw),
            grows_graph: true,
        };
        let items: Vec<(u64, &[f32])> =
            flat.labels.iter().copied().zip(flat.vectors.chunks_exact(flat.dims)).collect();
        for chunk in items.chunks(GRAPH_CHUNK) {
            graph.upsert_many(chunk, threads)?;
        }
        Ok(graph)
    }

    /// Dimension of every vector.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        match &self.engine {
            Engine::Flat(f) => f.labels.len(),
            Engine::Hnsw(h) => h.index.size(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"flat"` or `"hnsw"`.
    pub fn engine_name(&self) -> &'static str {
        match &self.engine {
            Engine::Flat(_) => "flat",
            Engine::Hnsw(_) => "hnsw",
        }
    }

    /// Adds (or replaces) the vector of `label`.
    pub fn upsert(&mut self, label: u64, vector: &[f32]) -> Result<(), IndexError> {
        if vector.len() != self.dims {
            return Err(IndexError(format!(
                "vector has {} dims, index has {}",
                vector.len(),
                self.dims
            )));
        }
        if let Engine::Flat(flat) = &mut self.engine
            && self.grows_graph
            && flat.labels.len() >= self.config.flat_limit
            && !flat.pos.contains_key(&label)
        {
            let hnsw = Hnsw::from_flat(flat, &self.config)?;
            self.engine = Engine::Hnsw(hnsw);
        }
        match &mut self.engine {
            Engine::Flat(flat) => {
                flat.upsert(label, vector);
                Ok(())
            }
            Engine::Hnsw(hnsw) => hnsw.upsert(label, vector),
        }
    }

    /// Adds (or replaces) many vectors at once; on an HNSW graph the adds run on up to
    /// `threads` threads (usearch allows concurrent adds into reserved capacity). A label may
    /// appear once only.
    pub fn upsert_many(
        &mut self,
        items: &[(u64, &[f32])],
        threads: usize,
    ) -> Result<(), IndexError> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dims) {
            return Err(IndexError(format!(
                "vector has {} dims, index has {}",
                v.len(),
                self.dims
            )));
        }
        // Small batches, and a flat index still filling up, go one by one.
        let Engine::Hnsw(hnsw) = &mut self.engine else {
            return items.iter().try_for_each(|(label, v)| self.upsert(*label, v));
        };
        if items.len() < 64 || threads < 2 {
            return items.iter().try_for_each(|(label, v)| hnsw.upsert(*label, v));
        }
        for (label, _) in items {
            if hnsw.index.contains(*label) {
                hnsw.index.remove(*label).map_err(|e| IndexError(e.to_string()))?;
            }
        }
        let needed = hnsw.index.size() + items.len();
        if needed > hnsw.index.capacity() {
            hnsw.reserve((needed * 2).max(1024))?;
        }
        let index = &hnsw.index;
        let chunk = items.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter().try_for_each(|(label, v)| {
                            index.add(*label, v).map_err(|e| IndexError(e.to_string()))
                        })
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().map_err(|_| IndexError("an index worker panicked".into()))?
            })
        })
    }

    /// Removes `label` if present.
    pub fn remove(&mut self, label: u64) -> Result<(), IndexError> {
        match &mut self.engine {
            Engine::Flat(flat) => {
                flat.remove(label);
                Ok(())
            }
            Engine::Hnsw(hnsw) => {
                hnsw.index.remove(label).map_err(|e| IndexError(e.to_string()))?;
                Ok(())
            }
        }
    }

    /// The HNSW graph as bytes (usearch's own format), to hand a loaded index to another node
    /// instead of having it rebuild the graph; `None` for a flat index, which rebuilds at once.
    pub fn to_bytes(&self) -> Result<Option<Vec<u8>>, IndexError> {
        let Engine::Hnsw(hnsw) = &self.engine else { return Ok(None) };
        let mut buf = vec![0u8; hnsw.index.serialized_length()];
        hnsw.index.save_to_buffer(&mut buf).map_err(|e| IndexError(e.to_string()))?;
        Ok(Some(buf))
    }

    /// An index from [`VectorIndex::to_bytes`] of a `dims`-dimensional index. The bytes come from
    /// another shard node over the internal API; a buffer of the wrong shape is refused.
    pub fn from_bytes(dims: usize, config: IndexConfig, bytes: &[u8]) -> Result<Self, IndexError> {
        let hnsw = Hnsw::new(dims, &config, 0)?;
        hnsw.index.load_from_buffer(bytes).map_err(|e| IndexError(e.to_string()))?;
        if hnsw.index.dimensions() != dims {
            return Err(IndexError(format!(
                "received index has {} dims, the partition {dims}",
                hnsw.index.dimensions()
            )));
        }
        // Loading sets capacity to the size and forgets the tuning: restore both.
        hnsw.index.change_expansion_add(config.expansion_add);
        hnsw.index.change_expansion_search(1);
        hnsw.reserve((hnsw.index.size() * 2).max(1024))?;
        Ok(Self { dims, config, engine: Engine::Hnsw(hnsw), grows_graph: true })
    }

    /// The best `k` labels for `query`; with `allowed`, only among those labels.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&LabelSet>,
    ) -> Result<Vec<Scored>, IndexError> {
        if query.len() != self.dims {
            return Err(IndexError(format!(
                "query has {} dims, index has {}",
                query.len(),
                self.dims
            )));
        }
        let q = normalized(query);
        match (&self.engine, allowed) {
            (Engine::Flat(flat), None) => Ok(flat.search_all(&q, k)),
            (Engine::Flat(flat), Some(allowed)) => Ok(flat.search_among(&q, k, allowed)),
            (Engine::Hnsw(hnsw), None) => {
                let beam = walk_beam(self.config.expansion_search, self.len(), self.len());
                hnsw.search(&q, k, beam)
            }
            (Engine::Hnsw(hnsw), Some(allowed)) => {
                // Few passing labels: score exactly those. Otherwise filter inside the HNSW walk,
                // and fall back to the exact scan if the walk found fewer than exist.
                if allowed.len() <= self.config.exact_filter_limit {
                    return hnsw.exact_among(&q, k, allowed);
                }
                let beam = walk_beam(self.config.expansion_search, allowed.len(), self.len());
                let found = hnsw.filtered_search(&q, k, beam, allowed)?;
                if found.len() < k.min(allowed.len()) {
                    return hnsw.exact_among(&q, k, allowed);
                }
                Ok(found)
            }
        }
    }

    /// Measurement hook (`examples/index_crossover.rs`): a filtered search of a graph by one
    /// given plan — the exact scan of the passing vectors (`beam` `None`), or the filtered walk
    /// with that beam — whatever [`VectorIndex::search`] would choose. A flat index scans.
    pub fn search_filtered_by(
        &self,
        query: &[f32],
        k: usize,
        allowed: &LabelSet,
        beam: Option<usize>,
    ) -> Result<Vec<Scored>, IndexError> {
        let q = normalized(query);
        match (&self.engine, beam) {
            (Engine::Flat(flat), _) => Ok(flat.search_among(&q, k, allowed)),
            (Engine::Hnsw(hnsw), None) => hnsw.exact_among(&q, k, allowed),
            (Engine::Hnsw(hnsw), Some(beam)) => hnsw.filtered_search(&q, k, beam, allowed),
        }
    }
}

/// The beam of a walk over a graph of `total` vectors for the best `k` of `passing` of them
/// (all of them: an unfiltered search): `base` up to 25,000 vectors, growing as the square root
/// of the graph's size (at most 4×), and for a filtered walk shrinking as the square root of the
/// share that passes, never below 16. Measured (`examples/index_crossover.rs`, 100,000 × 384,
/// recall@10 against the exact answer): unfiltered, beam 64 gives 0.946 and 128 0.993; a walk
/// that lets few through meets many vectors for each one it keeps and needs a narrow beam (5%
/// passing: recall 1.000 at beam 16, and 1,666 q/s there against 298 at 128), one that lets most
/// through a wide one (50%: 0.988 at 64, 0.997 at 96).
pub fn walk_beam(base: usize, passing: usize, total: usize) -> usize {
    let size = (total as f64 / 25_000.0).sqrt().clamp(1.0, 4.0);
    let share = (passing as f64 / total.max(1) as f64).clamp(0.0, 1.0);
    ((base as f64 * size * share.sqrt()).ceil() as usize).max(16)
}

/// `v / |v|` (the zero vector is refused at the API, but stays zero here rather than NaN).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt();
    if norm == 0.0 { v.to_vec() } else { v.iter().map(|x| x / norm).collect() }
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        sum += x * y;
    }
    sum
}

/// Keeps the best `k` scored labels.
fn top_k(mut all: Vec<Scored>, k: usize) -> Vec<Scored> {
    let by_score = |a: &Scored, b: &Scored| b.score.total_cmp(&a.score).then(a.label.cmp(&b.label));
    if all.len() > k {
        all.select_nth_unstable_by(k, by_score);
        all.truncate(k);
    }
    all.sort_by(by_score);
    all
}

/// Normalized vectors in one contiguous buffer; removal swaps the last one in.
#[derive(Clone)]
struct Flat {
    dims: usize,
    labels: Vec<u64>,
    vectors: Vec<f32>,
    pos: HashMap<u64, usize>,
}

impl Flat {
    fn new(dims: usize) -> Self {
        Self { dims, labels: Vec::new(), vectors: Vec::new(), pos: HashMap::new() }
    }

    fn upsert(&mut self, label: u64, vector: &[f32]) {
        let v = normalized(vector);
        match self.pos.get(&label) {
            Some(&i) => self.vectors[i * self.dims..(i + 1) * self.dims].copy_from_slice(&v),
            None => {
                self.pos.insert(label, self.labels.len());
                self.labels.push(label);
                self.vectors.extend_from_slice(&v);
            }
        }
    }

    fn remove(&mut self, label: u64) {
        let Some(i) = self.pos.remove(&label) else { return };
        let last = self.labels.len() - 1;
        if i != last {
            let moved = self.labels[last];
            self.labels[i] = moved;
            self.vectors.copy_within(last * self.dims..(last + 1) * self.dims, i * self.dims);
            self.pos.insert(moved, i);
        }
        self.labels.pop();
        self.vectors.truncate(last * self.dims);
    }

    fn search_all(&self, q: &[f32], k: usize) -> Vec<Scored> {
        let scored = self
            .labels
            .iter()
            .zip(self.vectors.chunks_exact(self.dims))
            .map(|(&label, v)| Scored { label, score: dot(q, v) })
            .collect();
        top_k(scored, k)
    }

    fn search_among(&self, q: &[f32], k: usize, allowed: &LabelSet) -> Vec<Scored> {
        let scored = allowed
            .iter()
            .filter_map(|label| self.pos.get(&label).map(|&i| (label, i)))
            .map(|(label, i)| Scored {
                label,
                score: dot(q, &self.vectors[i * self.dims..(i + 1) * self.dims]),
            })
            .collect();
        top_k(scored, k)
    }
}

struct Hnsw {
    index: Index,
    dims: usize,
    threads: usize,
}

impl Hnsw {
    fn new(dims: usize, config: &IndexConfig, capacity: usize) -> Result<Self, IndexError> {
        let options = IndexOptions {
            dimensions: dims,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F32,
            connectivity: config.connectivity,
            expansion_add: config.expansion_add,
            // The beam of every search is asked for per query (`Hnsw::search`), so usearch's
            // own floor is kept at one.
            expansion_search: 1,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| IndexError(e.to_string()))?;
        let hnsw = Self { index, dims, threads: config.threads };
        hnsw.reserve(capacity)?;
        Ok(hnsw)
    }

    fn from_flat(flat: &Flat, config: &IndexConfig) -> Result<Self, IndexError> {
        let mut hnsw = Self::new(flat.dims, config, (flat.labels.len() * 2).max(1024))?;
        for (label, v) in flat.labels.iter().zip(flat.vectors.chunks_exact(flat.dims)) {
            hnsw.upsert(*label, v)?;
        }
        Ok(hnsw)
    }

    fn reserve(&self, capacity: usize) -> Result<(), IndexError> {
        self.index
            .reserve_capacity_and_threads(capacity, self.threads)
            .map_err(|e| IndexError(e.to_string()))
    }

    fn upsert(&mut self, label: u64, vector: &[f32]) -> Result<(), IndexError> {
        if self.index.contains(label) {
            self.index.remove(label).map_err(|e| IndexError(e.to_string()))?;
        }
        if self.index.size() + 1 > self.index.capacity() {
            // Capacity does not grow by itself; double it (we hold the partition's write lock).
            self.reserve((self.index.capacity() * 2).max(1024))?;
        }
        self.index.add(label, vector).map_err(|e| IndexError(e.to_string()))
    }

    fn to_scored(matches: usearch::ffi::Matches) -> Vec<Scored> {
        matches
            .keys
            .into_iter()
            .zip(matches.distances)
            .map(|(label, distance)| Scored { label, score: 1.0 - distance })
            .collect()
    }

    /// The best `k` by a walk with a beam of `beam` (usearch's beam is the number of results
    /// asked for, at least its configured floor).
    fn search(&self, q: &[f32], k: usize, beam: usize) -> Result<Vec<Scored>, IndexError> {
        let m = self.index.search(q, beam.max(k)).map_err(|e| IndexError(e.to_string()))?;
        let mut found = Self::to_scored(m);
        found.truncate(k);
        Ok(found)
    }

    /// The best `k` of `allowed` by a walk with a beam of `beam`.
    fn filtered_search(
        &self,
        q: &[f32],
        k: usize,
        beam: usize,
        allowed: &LabelSet,
    ) -> Result<Vec<Scored>, IndexError> {
        let m = self
            .index
            .filtered_search(q, beam.max(k), |label| allowed.contains(label))
            .map_err(|e| IndexError(e.to_string()))?;
        let mut found = Self::to_scored(m);
        found.truncate(k);
        Ok(found)
    }

    /// Exact cosine scores of the `allowed` labels, read back from the index.
    fn exact_among(
        &self,
        q: &[f32],
        k: usize,
        allowed: &LabelSet,
    ) -> Result<Vec<Scored>, IndexError> {
        let mut buf = vec![0.0f32; self.dims];
        let mut scored = Vec::with_capacity(allowed.len());
        for label in allowed.iter() {
            let found = self.index.get(label, &mut buf).map_err(|e| IndexError(e.to_string()))?;
            if found == 0 {
                continue;
            }
            let norm = dot(&buf, &buf).sqrt();
            if norm > 0.0 {
                scored.push(Scored { label, score: dot(q, &buf) / norm });
            }
        }
        Ok(top_k(scored, k))
    }
}

#[cfg(test)]
mod tests;
