//! The change log as replication compares it: positions with their terms, where a term ends, and
//! cutting back a suffix that diverges from the log a copy must follow (`replicate/rules.rs`).
//!
//! Cutting back undoes entries no quorum acknowledged: the entries after the cut are deleted,
//! and every memory they touched is set back to its state at the cut, read from this copy's own
//! log (the latest entry at or before the cut that names it; none means the memory did not exist
//! then). The count, checksum, byte total and index follow, as for any write.

use std::collections::{HashMap, HashSet};

use memring_common::{ApiError, PartitionKey};
use rocksdb::{ReadOptions, WriteBatch};

use super::{CF_EPISODES, CF_LOG, CF_META, Storage, db_err, entry_of};
use crate::record::{LogEntry, LogOp, StoredEpisode, decode, encode, episode_key, log_key};
use crate::record::{parse_metadata, prefix_end};
use crate::replicate::rules::LogPos;

/// Entries [`Storage::log_upto`] reads by key at most (more are scanned).
const POINT_READS: u64 = 16;

impl Storage {
    /// The term of this copy's entry at `seq` (`Some(0)` for position 0, the empty prefix every
    /// untrimmed log shares; `None` if this copy has no entry there; `log_trimmed` before where
    /// its log starts).
    pub fn term_at(&self, key: &PartitionKey, seq: u64) -> Result<Option<u64>, ApiError> {
        let start = self.log_start(key)?;
        if seq < start.seq {
            return Err(super::trim::trimmed_error(key, seq, start));
        }
        if seq == start.seq {
            return Ok(Some(start.term));
        }
        let cf = self.cf(CF_LOG)?;
        match self.db.get_cf(&cf, log_key(&key.encode(), seq)).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode::<LogEntry>(&bytes)?.term)),
            None => Ok(None),
        }
    }

    /// The last position of this copy's log holding an entry of a term ≤ `term` (0 if none): what
    /// a follower whose entry of term `term` differs from ours probes next. Terms never decrease
    /// along a log, so this is a binary search of point reads.
    pub fn end_of_term(&self, key: &PartitionKey, term: u64) -> Result<u64, ApiError> {
        let last = self.last_pos(key)?;
        if last.term <= term {
            return Ok(last.seq);
        }
        let start = self.log_start(key)?;
        if start.term > term {
            // Where entries of that term end was trimmed away.
            return Err(super::trim::trimmed_error(key, start.seq.saturating_sub(1), start));
        }
        // term_at(lo) <= term < term_at(hi)
        let (mut lo, mut hi) = (start.seq, last.seq);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.term_at(key, mid)? {
                Some(t) if t <= term => lo = mid,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Cuts this copy's log back to position `to`, undoing every entry after it (see the module
    /// notes); `may_apply` is checked under the partition's write lock first. Returns how many
    /// entries were removed. `log_trimmed` (nothing changed) when `to` is before where the log
    /// starts, or a memory's state at `to` is older than the log: the copy must be re-seeded.
    pub fn truncate_log(
        &self,
        key: &PartitionKey,
        to: u64,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<usize, ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, false)? else { return Ok(0) };
        let mut meta = p.meta.lock();
        may_apply()?;
        if meta.last_seq <= to {
            return Ok(0);
        }
        if to < meta.trimmed_seq {
            return Err(super::trim::trimmed_error(
                key,
                to,
                LogPos::new(meta.trimmed_term, meta.trimmed_seq),
            ));
        }
        let removed = self.read_log_after(key, to, usize::MAX)?;
        let touched: HashSet<String> =
            removed.iter().filter_map(|e| e.id()).map(str::to_owned).collect();
        // Each touched memory as it was at `to`, and the term of the entry at `to`.
        let mut before: HashMap<String, Option<StoredEpisode>> = HashMap::new();
        let mut term_at_cut = meta.trimmed_term;
        if to > meta.trimmed_seq {
            let mut opts = ReadOptions::default();
            opts.set_iterate_lower_bound(p.enc.clone());
            opts.fill_cache(false);
            let cf = self.cf(CF_LOG)?;
            let from = log_key(&p.enc, to);
            let iter = self.db.iterator_cf_opt(
                &cf,
                opts,
                rocksdb::IteratorMode::From(&from, rocksdb::Direction::Reverse),
            );
            for (i, item) in iter.enumerate() {
                let (_, value) = item.map_err(db_err)?;
                let entry: LogEntry = decode(&value)?;
                if i == 0 {
                    term_at_cut = entry.term;
                }
                if let Some(id) = entry.id()
                    && touched.contains(id)
                    && !before.contains_key(id)
                {
                    let id = id.to_owned();
                    match entry.op {
                        LogOp::Put(e) => before.insert(id, Some(e)),
                        LogOp::Delete { .. } => before.insert(id, None),
                        LogOp::TermStart => None,
                    };
                }
                if before.len() == touched.len() {
                    break;
                }
            }
        }
        if meta.trimmed_seq > 0 && before.len() < touched.len() {
            // A memory's state at the cut was in the trimmed part of the log.
            return Err(super::trim::trimmed_error(
                key,
                to,
                LogPos::new(meta.trimmed_term, meta.trimmed_seq),
            ));
        }
        let mut next = meta.clone();
        next.last_seq = to;
        next.last_term = term_at_cut;
        let (ep_cf, log_cf, meta_cf) = (self.cf(CF_EPISODES)?, self.cf(CF_LOG)?, self.cf(CF_META)?);
        let mut batch = WriteBatch::default();
        let (mut removals, mut inserts) = (Vec::new(), Vec::new());
        for id in &touched {
            let now = self.read_episode(&p.enc, id)?;
            let then = before.get(id).cloned().flatten();
            next.replace_memory(
                now.as_ref().map(StoredEpisode::term),
                then.as_ref().map(StoredEpisode::term),
            );
            next.count =
                (next.count + u64::from(then.is_some())).saturating_sub(u64::from(now.is_some()));
            if let Some(now) = &now {
                removals.push((now.label, None, None));
            }
            match &then {
                Some(e) => {
                    batch.put_cf(&ep_cf, episode_key(&p.enc, id), encode(e)?);
                    super::purge::mark_expiry(&mut batch, &meta_cf, &p.enc, e.expires_at_ms);
                    let metadata = parse_metadata(&e.metadata_json)?;
                    inserts.push((e.label, e.embedding.clone(), Some(entry_of(e, &metadata))));
                }
                None => batch.delete_cf(&ep_cf, episode_key(&p.enc, id)),
            }
        }
        batch.delete_range_cf(&log_cf, log_key(&p.enc, to + 1), prefix_end(&p.enc));
        batch.put_cf(&meta_cf, &p.enc, encode(&next)?);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        self.commit(&p, &mut meta, next);
        // Every removal before any insert: a label freed by one memory may be another's now.
        removals.extend(inserts);
        self.apply_to_index(&p, removals);
        tracing::warn!(partition = %p.key, to, removed = removed.len(), memories = touched.len(), "log cut back to where it agrees with the log it follows");
        Ok(removed.len())
    }
}

impl Storage {
    /// Change-log entries of a partition after `after_seq` (at most `limit`), for tests, replication
    /// and migration catch-up; `log_trimmed` if the log no longer holds the entry after it.
    pub fn log_after(
        &self,
        key: &PartitionKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ApiError> {
        let entries = self.read_log_after(key, after_seq, limit)?;
        self.still_after_start(key, after_seq)?;
        Ok(entries)
    }

    /// `log_trimmed` if this copy's log now starts after `after_seq`. Checked after a read of
    /// the entries after it: a trim meanwhile removes only entries up to its new start.
    fn still_after_start(&self, key: &PartitionKey, after_seq: u64) -> Result<(), ApiError> {
        let start = self.log_start(key)?;
        if after_seq < start.seq {
            return Err(super::trim::trimmed_error(key, after_seq, start));
        }
        Ok(())
    }

    /// The entries after `after_seq` up to `last` (this copy's last position, read before),
    /// at most `limit`, as [`Storage::log_after`] reads them. A replication round asks for the
    /// few newest entries of a partition: up to [`POINT_READS`] of them are read by key, which
    /// costs less than opening an iterator over every level of the log.
    pub fn log_upto(
        &self,
        key: &PartitionKey,
        after_seq: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ApiError> {
        let wanted = last.saturating_sub(after_seq);
        if wanted == 0 || wanted > POINT_READS || wanted > limit as u64 {
            return self.log_after(key, after_seq, limit);
        }
        let enc = key.encode();
        let keys: Vec<Vec<u8>> = (after_seq + 1..=last).map(|seq| log_key(&enc, seq)).collect();
        let cf = self.cf(CF_LOG)?;
        let mut entries = Vec::with_capacity(keys.len());
        for value in self.db.batched_multi_get_cf(&cf, &keys, true) {
            match value.map_err(db_err)? {
                Some(bytes) => entries.push(decode(&bytes)?),
                // Trimmed or cut back meanwhile: the scan says which.
                None => return self.log_after(key, after_seq, limit),
            }
        }
        self.still_after_start(key, after_seq)?;
        Ok(entries)
    }

    /// The log entries stored after `after_seq`, without the check of [`Storage::log_after`]
    /// (callers holding the partition's write lock check `trimmed_seq` themselves).
    pub(super) fn read_log_after(
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
