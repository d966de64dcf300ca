//! The write path: puts, patches and deletes of one partition's memories. Each write checks its
//! items' conditions (`If-Match`, `If-None-Match: *`, idempotency keys: API.md "Updates"),
//! applies patches to the stored memories and commits episodes, log entries and the partition's
//! meta in one RocksDB batch — all under the partition's write lock, so a condition, the change it
//! guards and the log entry that replicates it are one step on the owner.

use std::collections::HashMap;

use memring_common::api::{
    BaseVector, IfMatch, MemoryView, PatchBase, PatchedVector, ShardPatch, WriteItem, WriteOutcome,
    WriteResult,
};
use memring_common::clock::format_millis;
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey};
use rocksdb::WriteBatch;

use super::{
    CF_EPISODES, CF_LOG, CF_META, CommitCheck, Entry, ItemResult, Storage, db_err, entry_of,
    model_mismatch, purge, same_term,
};
use crate::record::{
    LogEntry, LogOp, NewExpiry, PartitionMeta, StoredEpisode, encode, episode_key, log_key,
    parse_metadata,
};

/// One change to one memory.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write the memory whole (a write by id, a batch item).
    Put(WriteItem),
    /// Apply a merge patch to the stored memory.
    Patch(MemoryId, ShardPatch),
}

impl Op {
    fn id(&self) -> &MemoryId {
        match self {
            Op::Put(item) => &item.id,
            Op::Patch(id, _) => id,
        }
    }

    fn conditions(&self) -> &memring_common::api::Conditions {
        match self {
            Op::Put(item) => &item.conditions,
            Op::Patch(_, patch) => &patch.conditions,
        }
    }
}

/// What one op did: its outcome and the memory as it is after it.
type Done = Result<(WriteOutcome, StoredEpisode), ApiError>;

impl Storage {
    /// Writes `items` (all of `key`'s partition) in one atomic batch. Each item succeeds or fails
    /// on its own; failed items change nothing. Idempotent by id: the same body again is
    /// `Unchanged` and writes nothing, not even a log entry.
    pub fn write(
        &self,
        key: &PartitionKey,
        items: Vec<WriteItem>,
        now_ms: i64,
    ) -> Result<Vec<ItemResult>, ApiError> {
        self.write_checked(key, items, now_ms, &|| Ok(()), &same_term)
    }

    /// [`Storage::write`], asking `may_create` first when the partition does not exist yet, and
    /// `may_commit` with the partition's write lock held, right before anything is written; a
    /// refusal fails the whole write. The creation check and the write both happen inside the
    /// write gate, so [`Storage::write_barrier`] waits for every check made before it; the commit
    /// check is what keeps a node that has just lost the partition (or not yet taken it over at
    /// the current layout) from writing a log entry under a position a new owner already reported,
    /// and it gives the new entries their term.
    pub fn write_checked(
        &self,
        key: &PartitionKey,
        items: Vec<WriteItem>,
        now_ms: i64,
        may_create: &dyn Fn() -> Result<(), ApiError>,
        may_commit: CommitCheck<'_>,
    ) -> Result<Vec<ItemResult>, ApiError> {
        let ops = items.into_iter().map(Op::Put).collect();
        let done = self.apply(key, ops, now_ms, Some(may_create), may_commit)?;
        Ok(done
            .into_iter()
            .map(|d| {
                d.and_then(|(outcome, e)| {
                    let result = WriteResult {
                        id: MemoryId::parse(&e.id)?,
                        scope: key.scope().clone(),
                        created_at: format_millis(e.created_at_ms),
                        version: e.version,
                        embedded_by: None,
                        embedded_truncated: None,
                    };
                    Ok((outcome, result))
                })
            })
            .collect())
    }

    /// Applies a merge patch to memory `id` (`404` when it does not exist or has expired) and
    /// answers the whole memory after it. A patch that changes nothing is `Unchanged` and writes
    /// nothing. The commit check is [`Storage::write_checked`]'s.
    pub fn patch_checked(
        &self,
        key: &PartitionKey,
        id: MemoryId,
        patch: ShardPatch,
        now_ms: i64,
        may_commit: CommitCheck<'_>,
    ) -> Result<(WriteOutcome, MemoryView), ApiError> {
        let done = self.apply(key, vec![Op::Patch(id.clone(), patch)], now_ms, None, may_commit);
        let (outcome, episode) = match done?.pop() {
            Some(done) => done?,
            None => return Err(ApiError::internal("a patch answered no result")),
        };
        Ok((outcome, episode.to_view(key.scope())?))
    }

    /// Applies `ops` in order in one batch (see [`Storage::write_checked`]). Without
    /// `may_create` a missing partition means every op is about a memory that does not exist.
    fn apply(
        &self,
        key: &PartitionKey,
        ops: Vec<Op>,
        now_ms: i64,
        may_create: Option<&dyn Fn() -> Result<(), ApiError>>,
        may_commit: CommitCheck<'_>,
    ) -> Result<Vec<Done>, ApiError> {
        let _gate = self.gate.read();
        let p = match (self.partition(key, false)?, may_create) {
            (Some(p), _) => p,
            (None, Some(may_create)) => {
                may_create()?;
                self.partition(key, true)?
                    .ok_or_else(|| ApiError::internal("partition vanished while being created"))?
            }
            (None, None) => {
                return Ok(ops.iter().map(|op| Err(not_found(key, op.id()))).collect());
            }
        };
        let mut meta = p.meta.lock();
        let term = may_commit(meta.last_term)?;
        p.check_not_fenced()?;
        let mut next = meta.clone();
        let mut batch = WriteBatch::default();
        let (ep_cf, log_cf, meta_cf) = (self.cf(CF_EPISODES)?, self.cf(CF_LOG)?, self.cf(CF_META)?);
        // Later items of the same batch see earlier ones through this overlay.
        let mut pending: HashMap<String, StoredEpisode> = HashMap::new();
        let mut index_ops: Vec<(u64, Option<Vec<f32>>, Option<Entry>)> = Vec::new();
        let mut results: Vec<Done> = Vec::with_capacity(ops.len());
        for op in ops {
            let id = op.id().as_str().to_owned();
            // `stored` may have expired (not yet purged); `existing` is what a reader sees.
            let stored = match pending.get(&id) {
                Some(e) => Some(e.clone()),
                None => self.read_episode(&p.enc, &id)?,
            };
            let existing = stored.as_ref().filter(|e| !e.is_expired(now_ms));
            let conditions = op.conditions().clone();
            if let Some(old) = existing
                && conditions.replayed(&old.change_keys)
            {
                // Sent again: answered as the first time, not applied twice.
                results.push(Ok((WriteOutcome::Unchanged, old.clone())));
                continue;
            }
            let (item, expiry) = match op {
                Op::Put(item) => {
                    let expiry = NewExpiry::FromTtl(item.ttl_seconds);
                    (item, expiry)
                }
                Op::Patch(id, patch) => {
                    let Some(old) = existing else {
                        results.push(Err(not_found(&p.key, &id)));
                        continue;
                    };
                    // A precondition is decided before the patch is looked at (RFC 9110
                    // 13.2.2): a stale version is 412 even for a patch this memory would refuse.
                    if let Err(e) = conditions.check(id.as_str(), Some(old.version), false) {
                        results.push(Err(e));
                        continue;
                    }
                    match patched(&p.key, id, old, patch, now_ms) {
                        Ok(patched) => patched,
                        Err(e) => {
                            results.push(Err(e));
                            continue;
                        }
                    }
                }
            };
            let metadata_json = serde_json::to_string(&item.metadata)
                .map_err(|e| ApiError::internal(format!("metadata does not serialize: {e}")))?;
            let embedded_by =
                if item.embedded_by_router { item.embedding_model.clone() } else { None };
            let unchanged = existing.filter(|old| {
                old.same_body(
                    &item.content,
                    &metadata_json,
                    &item.embedding,
                    embedded_by.as_deref(),
                    &expiry,
                )
            });
            let current = existing.map(|old| old.version);
            if let Err(e) = conditions.check(&id, current, unchanged.is_some()) {
                results.push(Err(e));
                continue;
            }
            if let Some(embedding) = &item.embedding {
                if let Err(e) = check_model(&mut next, &item, &p.key) {
                    results.push(Err(e));
                    continue;
                }
                match next.dimensions {
                    Some(d) if d as usize != embedding.len() => {
                        results.push(Err(ApiError::new(
                            ErrorCode::DimensionMismatch,
                            format!(
                                "embedding has {} dimensions but partition {} was created with {d}; all memories of a scope share one dimension",
                                embedding.len(),
                                p.key
                            ),
                        )));
                        continue;
                    }
                    Some(_) => {}
                    None => next.dimensions = Some(embedding.len() as u32),
                }
            }
            if let Some(old) = unchanged {
                results.push(Ok((WriteOutcome::Unchanged, old.clone())));
                continue;
            }
            let embedding_model = model_of(&next, &item);
            let (outcome, episode) = match existing {
                Some(old) => (
                    WriteOutcome::Updated,
                    StoredEpisode {
                        id: id.clone(),
                        content: item.content,
                        metadata_json,
                        embedding: item.embedding,
                        created_at_ms: old.created_at_ms,
                        updated_at_ms: now_ms,
                        version: old.version + 1,
                        expires_at_ms: expiry.at(now_ms),
                        label: old.label,
                        embedding_model,
                        embedded_by_router: item.embedded_by_router,
                        change_keys: conditions.keys_after(&old.change_keys),
                    },
                ),
                None => {
                    // An expired record being replaced keeps its index label (and its slot in
                    // the count); only a new id takes a new label.
                    let label = match &stored {
                        Some(expired) => expired.label,
                        None => {
                            next.count += 1;
                            next.next_label += 1;
                            next.next_label - 1
                        }
                    };
                    (
                        WriteOutcome::Created,
                        StoredEpisode {
                            id: id.clone(),
                            content: item.content,
                            metadata_json,
                            embedding: item.embedding,
                            created_at_ms: now_ms,
                            updated_at_ms: now_ms,
                            version: 1,
                            expires_at_ms: expiry.at(now_ms),
                            label,
                            embedding_model,
                            embedded_by_router: item.embedded_by_router,
                            change_keys: conditions.keys_after(&[]),
                        },
                    )
                }
            };
            next.last_seq += 1;
            next.last_term = term;
            next.replace_memory(stored.as_ref().map(StoredEpisode::term), Some(episode.term()));
            let entry = LogEntry {
                seq: next.last_seq,
                at_ms: now_ms,
                op: LogOp::Put(episode.clone()),
                term,
            };
            batch.put_cf(&ep_cf, episode_key(&p.enc, &id), encode(&episode)?);
            purge::mark_expiry(&mut batch, &meta_cf, &p.enc, episode.expires_at_ms);
            batch.put_cf(&log_cf, log_key(&p.enc, next.last_seq), encode(&entry)?);
            index_ops.push((
                episode.label,
                episode.embedding.clone(),
                Some(entry_of(&episode, &item.metadata)),
            ));
            results.push(Ok((outcome, episode.clone())));
            pending.insert(id, episode);
        }
        if next != *meta {
            batch.put_cf(&meta_cf, &p.enc, encode(&next)?);
            self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
            self.commit(&p, &mut meta, next);
            self.apply_to_index(&p, index_ops);
        }
        Ok(results)
    }

    /// Deletes one memory. `NotFound` if it does not exist (or has expired).
    pub fn delete(&self, key: &PartitionKey, id: &MemoryId, now_ms: i64) -> Result<(), ApiError> {
        self.delete_checked(key, id, None, now_ms, &same_term)
    }

    /// [`Storage::delete`] if the memory is as `if_match` says (else `412`), asking `may_commit`
    /// with the partition's write lock held (see [`Storage::write_checked`]).
    pub fn delete_checked(
        &self,
        key: &PartitionKey,
        id: &MemoryId,
        if_match: Option<IfMatch>,
        now_ms: i64,
        may_commit: CommitCheck<'_>,
    ) -> Result<(), ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, false)? else { return Err(not_found(key, id)) };
        let mut meta = p.meta.lock();
        let term = may_commit(meta.last_term)?;
        p.check_not_fenced()?;
        let Some(old) = self.read_episode(&p.enc, id.as_str())? else {
            return Err(not_found(key, id));
        };
        if if_match.is_some() {
            // A conditional delete of an expired memory deletes nothing: it is already gone.
            let current = Some(old.version).filter(|_| !old.is_expired(now_ms));
            let conditions = memring_common::api::Conditions { if_match, ..Default::default() };
            conditions.check(id.as_str(), current, false)?;
        }
        let mut next = meta.clone();
        next.last_seq += 1;
        next.last_term = term;
        next.count = next.count.saturating_sub(1);
        next.replace_memory(Some(old.term()), None);
        let entry = LogEntry {
            seq: next.last_seq,
            at_ms: now_ms,
            op: LogOp::Delete { id: old.id.clone(), version: old.version },
            term,
        };
        let mut batch = WriteBatch::default();
        batch.delete_cf(&self.cf(CF_EPISODES)?, episode_key(&p.enc, id.as_str()));
        batch.put_cf(&self.cf(CF_LOG)?, log_key(&p.enc, next.last_seq), encode(&entry)?);
        batch.put_cf(&self.cf(CF_META)?, &p.enc, encode(&next)?);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        self.commit(&p, &mut meta, next);
        self.apply_to_index(&p, vec![(old.label, None, None)]);
        if old.is_expired(now_ms) {
            return Err(not_found(key, id));
        }
        Ok(())
    }

    /// Appends the start of the term `may_commit` gives (a [`LogOp::TermStart`]) unless the log
    /// already ends in that term; returns its position, if it appended one. With the write lock
    /// held, like every write.
    pub fn start_term(
        &self,
        key: &PartitionKey,
        now_ms: i64,
        may_commit: CommitCheck<'_>,
    ) -> Result<Option<u64>, ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, false)? else { return Ok(None) };
        let mut meta = p.meta.lock();
        let term = may_commit(meta.last_term)?;
        if meta.last_term >= term {
            return Ok(None);
        }
        p.check_not_fenced()?;
        let mut next = meta.clone();
        next.last_seq += 1;
        next.last_term = term;
        let entry = LogEntry { seq: next.last_seq, at_ms: now_ms, op: LogOp::TermStart, term };
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.cf(CF_LOG)?, log_key(&p.enc, next.last_seq), encode(&entry)?);
        batch.put_cf(&self.cf(CF_META)?, &p.enc, encode(&next)?);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        let at = next.last_seq;
        self.commit(&p, &mut meta, next);
        Ok(Some(at))
    }
}

fn not_found(key: &PartitionKey, id: &MemoryId) -> ApiError {
    ApiError::not_found(format!("memory {id} does not exist in scope {}", key.scope()))
}

/// The write a patch makes of `old`, with its expiry.
fn patched(
    key: &PartitionKey,
    id: MemoryId,
    old: &StoredEpisode,
    patch: ShardPatch,
    now_ms: i64,
) -> Result<(WriteItem, NewExpiry), ApiError> {
    let vector = match (&old.embedding, old.embedded_by_router) {
        (None, _) => BaseVector::None,
        (Some(_), true) => BaseVector::Router(old.embedding_model.clone().unwrap_or_default()),
        (Some(_), false) => BaseVector::Client,
    };
    let base = PatchBase {
        content: old.content.clone(),
        metadata: parse_metadata(&old.metadata_json)?,
        vector,
    };
    let out = patch.patch.apply(&base, patch.embedded.as_ref())?;
    let (embedding, embedding_model, embedded_by_router) = match out.vector {
        PatchedVector::Kept => {
            let model = if old.embedded_by_router { old.embedding_model.clone() } else { None };
            (old.embedding.clone(), model, old.embedded_by_router)
        }
        PatchedVector::None => (None, None, false),
        PatchedVector::Client(v, model) => (Some(v), model, false),
        PatchedVector::Router(e) => (Some(e.embedding), Some(e.model), true),
    };
    let expiry = match out.expiry {
        memring_common::api::Expiry::Keep => NewExpiry::At(old.expires_at_ms),
        memring_common::api::Expiry::Never => NewExpiry::At(None),
        memring_common::api::Expiry::After(ttl) => {
            NewExpiry::At(Some(now_ms.saturating_add((ttl as i64).saturating_mul(1000))))
        }
    };
    let item = WriteItem {
        id,
        scope: key.scope().clone(),
        content: out.content,
        embedding,
        embedding_model,
        embedded_by_router,
        metadata: out.metadata,
        ttl_seconds: None,
        conditions: patch.conditions,
        no_embedding: false,
    };
    Ok((item, expiry))
}

/// The partition remembers the model of its vectors (API.md, "Partitions remember their
/// model"): the first vector fixes it; later the router may embed for the partition only with
/// that same model, while a client-sent vector of the right dimension is always accepted.
/// A partition whose dimension was fixed before models were recorded holds client vectors.
fn check_model(
    next: &mut PartitionMeta,
    item: &WriteItem,
    key: &PartitionKey,
) -> Result<(), ApiError> {
    let model = item.embedding_model.as_deref().unwrap_or(memring_common::api::CLIENT_MODEL);
    let held = match (&next.embedding_model, next.dimensions) {
        (Some(held), _) => held.as_str(),
        (None, Some(_)) => memring_common::api::CLIENT_MODEL,
        (None, None) => {
            next.embedding_model = Some(model.to_owned());
            return Ok(());
        }
    };
    if item.embedded_by_router && held != model {
        return Err(model_mismatch(key, held, model));
    }
    Ok(())
}

/// The model an item's vector is recorded with: the partition's (which [`check_model`] fixed).
fn model_of(next: &PartitionMeta, item: &WriteItem) -> Option<String> {
    item.embedding.as_ref().and(next.embedding_model.clone())
}
