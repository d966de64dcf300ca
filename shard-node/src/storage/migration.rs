//! What a shard node does for an online migration of one partition (DESIGN.md, "Online
//! migration"); the control plane drives the steps and pipes the bytes between nodes.
//!
//! A migration's target is filled the way a replica is re-seeded (`trim.rs`), so a partition has
//! one import path and one log wherever its copies are:
//! - **export** (source): pages of stored memories in id order, each page read from one RocksDB
//!   snapshot, with the log position that page reflects at least;
//! - **snapshot pages** (target, marked as being re-seeded): stored as they are, with no log
//!   entries; then the copy's position is set to the first page's ([`Storage::place_snapshot`]);
//! - **log entries** (source → target): the source's own entries after that position, under
//!   their sequence numbers and terms, as a follower applies its primary's — so the target is
//!   caught up exactly when its position is the source's;
//! - **fence** (source): refuses writes to the partition, persisted so a restart keeps it;
//! - **checksum** (both): count and an order-independent sum of hash(id, version), kept in the
//!   partition meta with every change (or recomputed by a scan, `deep`);
//! - **drop** (source, after the flip): removes the partition's data, log and meta.
//!
//! Why a page needs no global snapshot: the copy continues the log from the position of the
//! *first* page. Every change before it is reflected in every later page (they are read later),
//! and every change after it is replayed from the log in order, and replaying a put or delete
//! sets the memory to exactly that state, so the target ends where the source is.

use std::sync::atomic::Ordering;

use memring_common::api::PartitionChecksum;
use memring_common::{ApiError, ErrorCode, PartitionKey};
use rocksdb::WriteBatch;

use super::feed::Wake;
use super::{CF_EPISODES, CF_LOG, CF_META, Storage, db_err, entry_of};
use crate::index::VectorIndex;
use crate::record::{
    LogEntry, LogOp, PartitionMeta, StoredEpisode, decode, encode, episode_key, log_key,
    parse_metadata, prefix_end,
};

/// Meta key that marks a partition fenced: `0xFF ‖ "fence" ‖ partition`.
pub fn fence_key(partition: &[u8]) -> Vec<u8> {
    let mut key = b"\xfffence".to_vec();
    key.extend_from_slice(partition);
    key
}

/// How imported entries land in a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Another copy's log entries (a follower's primary, a migration's source), under their own
    /// sequence numbers and terms.
    Log,
    /// A re-seed's (or a migration's) snapshot pages: no log entries (`trim.rs`).
    Snapshot,
}

/// One page of an export.
pub struct ExportPage {
    /// The memories, as puts, ready for [`Storage::import`].
    pub ops: Vec<LogOp>,
    /// The last id in the page, to ask for the next; `None` at the end.
    pub next_after: Option<String>,
    /// The partition's log position this page reflects at least.
    pub last_seq: u64,
    /// The term of the entry there.
    pub last_term: u64,
    /// Memories in the partition at this page's snapshot (for progress).
    pub total: u64,
}

impl Storage {
    /// Up to `limit` memories after id `after`, read from one snapshot.
    pub fn export_page(
        &self,
        key: &PartitionKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportPage, ApiError> {
        let enc = key.encode();
        let snapshot = self.db.snapshot();
        let meta_cf = self.cf(CF_META)?;
        let (last_seq, last_term, total) = match snapshot.get_cf(&meta_cf, &enc).map_err(db_err)? {
            Some(bytes) => {
                let meta = decode::<PartitionMeta>(&bytes)?;
                (meta.last_seq, meta.last_term, meta.count)
            }
            None => (0, 0, 0),
        };
        if after.is_none() {
            // What follows reads the log after this page's position (`trim.rs`).
            self.pin_log(key, last_seq);
        }
        let start = match after {
            Some(id) => {
                let mut k = episode_key(&enc, id);
                k.push(0);
                k
            }
            None => enc.clone(),
        };
        let mut opts = Storage::uncached();
        opts.set_snapshot(&snapshot);
        let mut ops = Vec::new();
        let mut more = false;
        for item in self.scan(CF_EPISODES, &enc, &start, opts)? {
            let (_, value) = item?;
            if ops.len() == limit {
                more = true;
                break;
            }
            ops.push(LogOp::Put(decode::<StoredEpisode>(&value)?));
        }
        let next_after = match (more, ops.last()) {
            (true, Some(LogOp::Put(e))) => Some(e.id.clone()),
            _ => None,
        };
        Ok(ExportPage { ops, next_after, last_seq, last_term, total })
    }

    /// Applies another copy's log entries — a follower its primary's, a migration's target its
    /// source's — each under its own sequence number and term, so every copy of a partition
    /// shares one log and one position (`last_seq`).
    /// `entries` must continue this copy's log without a gap and without a term going down
    /// (else `Conflict`); that they continue *this* log, not another one of the same length, the
    /// caller has checked (`replicate.rs`: the primary's term at this copy's last position).
    /// `may_apply` is checked under the partition's write lock, so once a newer primary has
    /// asked this copy for its position ([`Storage::last_seq`] takes the same lock) nothing from
    /// an older one lands.
    pub fn import_replicated(
        &self,
        key: &PartitionKey,
        entries: Vec<LogEntry>,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<usize, ApiError> {
        self.import_at(key, entries, Import::Log, may_apply, Wake::Waiters)
    }

    /// [`Storage::import_replicated`] by a follower copying the primary that leads `key` at
    /// the epoch `may_apply` checks: no follower copies `key` from this node at that epoch, so
    /// the change feed's waiters are not woken for it (`feed.rs`, [`Wake::Nobody`]).
    pub fn import_followed(
        &self,
        key: &PartitionKey,
        entries: Vec<LogEntry>,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<usize, ApiError> {
        self.import_at(key, entries, Import::Log, may_apply, Wake::Nobody)
    }

    /// The log entry with sequence number `seq`, if this copy has it.
    pub fn entry_at(&self, key: &PartitionKey, seq: u64) -> Result<Option<LogEntry>, ApiError> {
        Ok(self.log_after(key, seq.saturating_sub(1), 1)?.into_iter().find(|e| e.seq == seq))
    }

    pub(super) fn import_at(
        &self,
        key: &PartitionKey,
        entries: Vec<LogEntry>,
        mode: Import,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
        wake: Wake,
    ) -> Result<usize, ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, true)? else {
            return Err(ApiError::internal("partition vanished while being created"));
        };
        let mut meta = p.meta.lock();
        may_apply()?;
        // Snapshot pages only while re-seeding; then the source's entries after the snapshot
        // (`Storage::place_snapshot` set where they continue).
        let reseeding = p.reseeding.load(Ordering::Acquire);
        if mode == Import::Snapshot && !reseeding {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{}: snapshot pages apply only to a copy being re-seeded", p.key),
            ));
        }
        let logged = mode == Import::Log;
        let mut next = meta.clone();
        let (ep_cf, log_cf, meta_cf) = (self.cf(CF_EPISODES)?, self.cf(CF_LOG)?, self.cf(CF_META)?);
        let mut batch = WriteBatch::default();
        let mut index_ops = Vec::with_capacity(entries.len());
        // What each id holds as the batch goes: (version, label, size) or absent; later ops of
        // the batch must see earlier ones, which are not on disk yet.
        let mut present: std::collections::HashMap<String, Option<(u64, u64, u64)>> =
            std::collections::HashMap::new();
        let applied = entries.len();
        for LogEntry { seq, at_ms, op, term } in entries {
            if logged && (seq != next.last_seq + 1 || term < next.last_term) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{} is at log position {} of term {}; entry {seq} of term {term} does \
                         not follow it",
                        p.key, next.last_seq, next.last_term
                    ),
                ));
            }
            // The start of a term changes no memory: the log keeps it, a snapshot has none.
            let Some(id) = op.id().map(str::to_owned) else {
                if logged {
                    next.last_seq += 1;
                    next.last_term = term;
                    let entry = LogEntry { seq: next.last_seq, at_ms, op, term };
                    batch.put_cf(&log_cf, log_key(&p.enc, next.last_seq), encode(&entry)?);
                }
                continue;
            };
            let before = match present.get(&id) {
                Some(&known) => known,
                None => self.read_episode(&p.enc, &id)?.map(|e| (e.version, e.label, e.size())),
            };
            match &op {
                LogOp::Put(e) => {
                    if let Some(v) = &e.embedding {
                        match next.dimensions {
                            Some(d) if d as usize != v.len() => {
                                return Err(ApiError::new(
                                    ErrorCode::DimensionMismatch,
                                    format!(
                                        "imported memory {} has {} dimensions, {} holds {d}",
                                        e.id,
                                        v.len(),
                                        p.key
                                    ),
                                ));
                            }
                            Some(_) => {}
                            None => next.dimensions = Some(v.len() as u32),
                        }
                        // The copy's first vector carries the partition's model (format 6).
                        if next.embedding_model.is_none() {
                            next.embedding_model.clone_from(&e.embedding_model);
                        }
                    }
                    next.next_label = next.next_label.max(e.label + 1);
                    next.count += u64::from(before.is_none());
                    next.replace_memory(
                        before.map(|(version, _, size)| (id.as_str(), version, size)),
                        Some(e.term()),
                    );
                    if let Some((_, old_label, _)) = before
                        && old_label != e.label
                    {
                        index_ops.push((old_label, None, None));
                    }
                    batch.put_cf(&ep_cf, episode_key(&p.enc, &e.id), encode(e)?);
                    super::purge::mark_expiry(&mut batch, &meta_cf, &p.enc, e.expires_at_ms);
                    let metadata = parse_metadata(&e.metadata_json)?;
                    index_ops.push((e.label, e.embedding.clone(), Some(entry_of(e, &metadata))));
                    present.insert(id, Some((e.version, e.label, e.size())));
                }
                // With nothing to delete, the log still keeps the entry: it stays the source's.
                LogOp::Delete { .. } => {
                    if let Some((version, label, size)) = before {
                        index_ops.push((label, None, None));
                        next.count = next.count.saturating_sub(1);
                        next.replace_memory(Some((&id, version, size)), None);
                        batch.delete_cf(&ep_cf, episode_key(&p.enc, &id));
                        present.insert(id, None);
                    }
                }
                LogOp::TermStart => {}
            }
            if mode == Import::Snapshot {
                continue;
            }
            next.last_seq += 1;
            next.last_term = term;
            batch.put_cf(
                &log_cf,
                log_key(&p.enc, next.last_seq),
                encode(&LogEntry { seq: next.last_seq, at_ms, op, term })?,
            );
        }
        batch.put_cf(&meta_cf, &p.enc, encode(&next)?);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        self.commit_waking(&p, &mut meta, next, wake);
        self.apply_to_index(&p, index_ops);
        Ok(applied)
    }

    /// Fences (or unfences) writes to the partition. Once this returns, no write is in flight.
    pub fn set_fence(&self, key: &PartitionKey, fenced: bool) -> Result<(), ApiError> {
        let Some(p) = self.partition(key, true)? else {
            return Err(ApiError::internal("partition vanished while being created"));
        };
        let _meta = p.meta.lock();
        let cf = self.cf(CF_META)?;
        if fenced {
            self.db
                .put_cf_opt(&cf, fence_key(&p.enc), b"1", &self.write_options())
                .map_err(db_err)?;
        } else {
            self.db.delete_cf_opt(&cf, fence_key(&p.enc), &self.write_options()).map_err(db_err)?;
        }
        p.fenced.store(fenced, Ordering::Release);
        tracing::info!(partition = %p.key, fenced, "partition fence changed");
        Ok(())
    }

    /// Count and checksum of the partition's memories: from its meta (kept with every change), or
    /// with `deep` by scanning every stored memory, which also proves the meta right.
    pub fn checksum(&self, key: &PartitionKey, deep: bool) -> Result<PartitionChecksum, ApiError> {
        let Some(p) = self.partition(key, false)? else {
            return Ok(PartitionChecksum {
                count: 0,
                checksum: format!("{:016x}", 0),
                last_seq: 0,
                fenced: false,
                consistent: true,
            });
        };
        // Holding the write mutex keeps count, checksum and log position consistent.
        let meta = p.meta.lock();
        let kept = (meta.count, meta.checksum.unwrap_or(0), meta.bytes.unwrap_or(0));
        let (count, sum, bytes) = if deep { self.scan_checksum(&p.enc)? } else { kept };
        let consistent = (count, sum, bytes) == kept;
        if !consistent {
            tracing::error!(
                partition = %p.key,
                scanned_count = count,
                meta_count = kept.0,
                "partition meta disagrees with its data; the scan is reported"
            );
        }
        Ok(PartitionChecksum {
            count,
            checksum: format!("{sum:016x}"),
            last_seq: meta.last_seq,
            fenced: p.fenced.load(Ordering::Acquire),
            consistent,
        })
    }

    /// The partition's HNSW graph as bytes with the log position it reflects, if it is loaded
    /// here (a flat or unloaded index is not worth shipping: the target builds it quickly or
    /// lazily, as the source would). Writes to the partition wait while the graph is copied out.
    pub fn export_index(&self, key: &PartitionKey) -> Result<Option<(u64, Vec<u8>)>, ApiError> {
        let Some(p) = self.partition(key, false)? else { return Ok(None) };
        let meta = p.meta.lock();
        let search = p.search.read();
        let Some(index) = search.as_ref().and_then(|l| l.vectors.as_ref()) else {
            return Ok(None);
        };
        let bytes = index.to_bytes().map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(bytes.map(|b| (meta.last_seq, b)))
    }

    /// Installs a graph from [`Storage::export_index`] of the source as this partition's index,
    /// with the search entries read from the memories copied so far. Without `at`, the source's
    /// graph may be ahead of the copy; replaying the source's log from the copy's position
    /// afterwards brings both to the same state (puts and deletes by label are idempotent).
    /// With `at`, the graph's log position, it is installed only if the copy is exactly there
    /// and holds a vector for each of the graph's (a follower filled for a move: nothing is
    /// replayed over it), and refused with `Conflict` otherwise.
    pub fn import_index(
        &self,
        key: &PartitionKey,
        bytes: &[u8],
        at: Option<u64>,
    ) -> Result<usize, ApiError> {
        let Some(p) = self.partition(key, true)? else {
            return Err(ApiError::internal("partition vanished while being created"));
        };
        let meta = p.meta.lock();
        if let Some(seq) = at
            && meta.last_seq != seq
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{} is at log position {}, the graph at {seq}", p.key, meta.last_seq),
            ));
        }
        let Some(&dims) = p.dimensions.get() else {
            return Err(ApiError::invalid(format!(
                "{} has no memories with embeddings yet; copy them before its index",
                p.key
            )));
        };
        let index = VectorIndex::from_bytes(dims as usize, self.config.index.clone(), bytes)
            .map_err(|e| ApiError::invalid(format!("the shipped index is unusable: {e}")))?;
        let (loaded, vectors) = self.with_stored_entries(&p.enc, index)?;
        let in_graph = loaded.vectors.as_ref().map_or(0, |v| v.len());
        if at.is_some() && in_graph != vectors {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{}: the graph has {in_graph} vectors, the copy {vectors}", p.key),
            ));
        }
        self.totals.load(p.search.write().replace(loaded).is_none());
        drop(meta);
        tracing::info!(partition = %p.key, vectors = in_graph, "index installed from another copy");
        Ok(in_graph)
    }

    /// Removes the partition from this node: memories, log, meta, fence and re-seed mark.
    pub fn drop_partition(&self, key: &PartitionKey) -> Result<(), ApiError> {
        let _gate = self.gate.write();
        self.remove_partition(key, false)?;
        tracing::info!(partition = %key, "partition dropped from this node");
        Ok(())
    }

    /// Removes the partition's data (with the write gate held exclusively), leaving the re-seed
    /// mark if `reseed`.
    pub(super) fn remove_partition(
        &self,
        key: &PartitionKey,
        reseed: bool,
    ) -> Result<(), ApiError> {
        let enc = key.encode();
        let end = prefix_end(&enc);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&self.cf(CF_EPISODES)?, &enc, &end);
        batch.delete_range_cf(&self.cf(CF_LOG)?, &enc, &end);
        let meta = self.cf(CF_META)?;
        batch.delete_cf(&meta, &enc);
        batch.delete_cf(&meta, fence_key(&enc));
        if reseed {
            batch.put_cf(&meta, super::trim::reseed_key(&enc), b"1");
        } else {
            batch.delete_cf(&meta, super::trim::reseed_key(&enc));
        }
        let before = match self.partition(key, false)? {
            Some(p) if p.stored.load(Ordering::Acquire) => Some(self.stats_of(key)?),
            _ => None,
        };
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        let dropped = self.partitions.write().remove(&enc);
        if let Some(p) = dropped {
            self.totals.unload(p.search.read().is_some());
        }
        if let Some(before) = before {
            self.totals.remove(&before);
        }
        self.feed.note(key);
        self.queue_reclaim(enc, end);
        Ok(())
    }
}
