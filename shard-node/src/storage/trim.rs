//! Bounded logs: trimming a partition's change log, and re-seeding a copy from a snapshot.
//!
//! Without trimming the log is a second full copy of every memory, growing with every update.
//! [`Storage::trim_log`] drops the entries up to a position and keeps that position and its term
//! in the partition meta (`trimmed_seq`, `trimmed_term`): the divergence check of replication
//! still works where the log now starts, and asking for entries before it is `log_trimmed`
//! (410), never a silent gap. How far it is safe to trim is `replicate/rules.rs`'s decision;
//! `replicate/trim.rs` applies it to the partitions that changed.
//!
//! **Re-seeding.** A copy that needs entries its source no longer holds (or that would have to
//! cut its own log back past where it starts) is re-seeded from a snapshot, the migration copy
//! path: [`Storage::begin_reseed`] drops its data and marks the partition, durably, so a restart
//! re-seeds again; [`Storage::import_snapshot`] takes the source's export pages without log
//! entries; [`Storage::place_snapshot`] sets the copy's position to the first page's (its log
//! starts there); the follower replays the source's entries after it, and
//! [`Storage::end_reseed`] clears the mark. While marked, the copy reports position (0, 0): it
//! holds nothing it can vouch for.
//!
//! **Pins.** A migration reads the source's log after its first export page (the control
//! plane's `migrate.rs`), and a re-seeding copy after the snapshot it took: export and changes
//! pin the log at the position they read from, and trimming keeps the pinned entries for a while
//! after the last use (`--log-pin-secs`, default 5 minutes: a reader that vanished releases its
//! pin by its silence).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memring_common::{ApiError, ErrorCode, PartitionKey};
use rocksdb::WriteBatch;

use super::{CF_LOG, CF_META, Storage, db_err};
use crate::record::{LogEntry, LogOp, decode, encode, log_key};
use crate::replicate::rules::LogPos;

/// Trims removing at least this many entries queue their key range for compaction at once.
const RECLAIM_AT: u64 = 1000;
/// Up to this many entries are removed by point deletes (many small range tombstones slow
/// RocksDB's reads of the log).
const POINT_DELETES: u64 = 32;

/// Meta key marking a partition as being re-seeded: `0xFF ‖ "reseed" ‖ partition`.
pub fn reseed_key(partition: &[u8]) -> Vec<u8> {
    let mut key = b"\xffreseed".to_vec();
    key.extend_from_slice(partition);
    key
}

/// The error for entries a log no longer holds.
pub fn trimmed_error(key: &PartitionKey, after: u64, start: LogPos) -> ApiError {
    ApiError::new(
        ErrorCode::LogTrimmed,
        format!(
            "the log of {key} starts after position {}; entries after {after} are gone \
             (re-seed from a snapshot)",
            start.seq
        ),
    )
    .with_details(serde_json::json!({ "trimmed_seq": start.seq, "trimmed_term": start.term }))
}

impl Storage {
    /// Where the partition's log starts: the position it is trimmed through, with its term
    /// (`(0, 0)`: it holds every entry, or the partition does not exist).
    pub fn log_start(&self, key: &PartitionKey) -> Result<LogPos, ApiError> {
        Ok(self.partition(key, false)?.map_or(LogPos::default(), |p| {
            let meta = p.meta.lock();
            LogPos::new(meta.trimmed_term, meta.trimmed_seq)
        }))
    }

    /// Drops the partition's log entries up to position `to` (at most its last), keeping the
    /// position and its term. Returns how many entries went. Not a change of the partition's
    /// data: the change feed is not told.
    pub fn trim_log(&self, key: &PartitionKey, to: u64) -> Result<u64, ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, false)? else { return Ok(0) };
        let mut meta = p.meta.lock();
        let to = to.min(meta.last_seq);
        if to <= meta.trimmed_seq || p.reseeding.load(Ordering::Acquire) {
            return Ok(0);
        }
        let from = meta.trimmed_seq;
        let log_cf = self.cf(CF_LOG)?;
        let term = match self.db.get_cf(&log_cf, log_key(&p.enc, to)).map_err(db_err)? {
            Some(bytes) => decode::<LogEntry>(&bytes)?.term,
            None => {
                return Err(ApiError::internal(format!(
                    "{key}: log entry {to} is missing though the log runs from {from} to {}",
                    meta.last_seq
                )));
            }
        };
        let mut next = meta.clone();
        next.trimmed_seq = to;
        next.trimmed_term = term;
        let mut batch = WriteBatch::default();
        if to - from <= POINT_DELETES {
            for seq in from + 1..=to {
                batch.delete_cf(&log_cf, log_key(&p.enc, seq));
            }
        } else {
            batch.delete_range_cf(&log_cf, log_key(&p.enc, from + 1), log_key(&p.enc, to + 1));
        }
        batch.put_cf(&self.cf(CF_META)?, &p.enc, encode(&next)?);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        p.install(&mut meta, next);
        drop(meta);
        let removed = to - from;
        if removed >= RECLAIM_AT {
            self.queue_reclaim(log_key(&p.enc, from + 1), log_key(&p.enc, to + 1));
        }
        self.trimmed_since_compaction.fetch_add(removed, Ordering::Relaxed);
        metrics::counter!("memring_log_trimmed_entries_total").increment(removed);
        Ok(removed)
    }

    /// Keeps the partition's log after `seq` from being trimmed for a while ([`Storage::pinned`]).
    pub fn pin_log(&self, key: &PartitionKey, seq: u64) {
        let mut pins = self.pins.lock();
        let pin = pins.entry(key.encode()).or_insert((seq, Instant::now()));
        *pin = (pin.0.min(seq), Instant::now());
    }

    /// The position the partition's log is pinned at, if a pin used within `ttl` holds.
    pub fn pinned(&self, key: &PartitionKey, ttl: Duration) -> Option<u64> {
        let mut pins = self.pins.lock();
        let enc = key.encode();
        match pins.get(&enc) {
            Some((seq, used)) if used.elapsed() < ttl => Some(*seq),
            Some(_) => {
                pins.remove(&enc);
                None
            }
            None => None,
        }
    }

    /// Whether the partition is marked as being re-seeded.
    pub fn is_reseeding(&self, key: &PartitionKey) -> Result<bool, ApiError> {
        if let Some(p) = self.partition(key, false)? {
            return Ok(p.reseeding.load(Ordering::Acquire));
        }
        // Dropped for the re-seed, no page in yet: only the mark is on disk.
        let cf = self.cf(CF_META)?;
        Ok(self.db.get_cf(&cf, reseed_key(&key.encode())).map_err(db_err)?.is_some())
    }

    /// Drops this copy of the partition to re-seed it, leaving the durable mark; `may_apply` is
    /// checked with every write excluded.
    pub fn begin_reseed(
        &self,
        key: &PartitionKey,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let _gate = self.gate.write();
        may_apply()?;
        self.remove_partition(key, true)?;
        tracing::warn!(partition = %key, "copy dropped to be re-seeded from a snapshot");
        Ok(())
    }

    /// Applies one page of a snapshot (memories as puts) to a partition being re-seeded, with
    /// no log entries: the copy's position is set by [`Storage::place_snapshot`].
    pub fn import_snapshot(
        &self,
        key: &PartitionKey,
        ops: Vec<LogOp>,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<usize, ApiError> {
        let entries =
            ops.into_iter().map(|op| LogEntry { seq: 0, at_ms: 0, op, term: 0 }).collect();
        self.import_at(
            key,
            entries,
            super::migration::Import::Snapshot,
            may_apply,
            super::feed::Wake::Waiters,
        )
    }

    /// Sets a re-seeded copy's position to `at`, the snapshot's (its first page's): its log
    /// starts there, and the source's entries after it follow.
    pub fn place_snapshot(
        &self,
        key: &PartitionKey,
        at: LogPos,
        may_apply: &dyn Fn() -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let _gate = self.gate.read();
        let Some(p) = self.partition(key, true)? else {
            return Err(ApiError::internal("partition vanished while being created"));
        };
        let mut meta = p.meta.lock();
        may_apply()?;
        if !p.reseeding.load(Ordering::Acquire) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{key} is not being re-seeded: its position is its own log's"),
            ));
        }
        let mut next = meta.clone();
        next.last_seq = at.seq;
        next.last_term = at.term;
        next.trimmed_seq = at.seq;
        next.trimmed_term = at.term;
        let cf = self.cf(CF_META)?;
        self.db.put_cf_opt(&cf, &p.enc, encode(&next)?, &self.write_options()).map_err(db_err)?;
        self.commit(&p, &mut meta, next);
        Ok(())
    }

    /// Clears the re-seed mark: the copy has caught up with its source.
    pub fn end_reseed(&self, key: &PartitionKey) -> Result<(), ApiError> {
        let Some(p) = self.partition(key, true)? else {
            return Err(ApiError::internal("partition vanished while being created"));
        };
        let _meta = p.meta.lock();
        let cf = self.cf(CF_META)?;
        self.db.delete_cf_opt(&cf, reseed_key(&p.enc), &self.write_options()).map_err(db_err)?;
        p.reseeding.store(false, Ordering::Release);
        tracing::info!(partition = %key, "copy re-seeded");
        Ok(())
    }
}
