//! Reads of one partition: vector, keyword and filtered searches over its loaded search state,
//! a memory by id, and listing pages.

use std::sync::Arc;

use memring_common::api::{Filter, MemoryView, Scores, SearchHit};
use memring_common::clock::format_millis;
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey};
use rocksdb::ReadOptions;

use super::{CF_EPISODES, Entry, Loaded, Partition, Storage, db_err, model_mismatch};
use crate::labels::LabelSet;
use crate::record::{StoredEpisode, decode, episode_key};

impl Storage {
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
    pub(super) fn ranked_hits(
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
}
