//! TTL purge: expired memories already vanish from get, list and search at once (every read
//! checks `expires_at_ms`); this removes them from disk.
//!
//! - The partition's **owner** deletes each expired memory through the change log (one delete
//!   entry each), so followers and migrations remove it the same way.
//! - **Every copy** then redacts the put entries of its log whose memory has expired: content,
//!   embedding and metadata are emptied, id, version, label and times stay. Replaying a log is
//!   unchanged by this (the put is always followed by a later put or by the delete), counts and
//!   checksums use only id and version, and copies compare entries by position and term
//!   (`replicate/rules.rs`), which redaction does not touch.
//! - The partition's key range is then compacted, so the removed bytes leave the SST files too.
//!
//! **What is due** is kept in an expiry index: every put of a memory with a TTL also writes
//! `\xffexpiry ‖ second ‖ partition` (the second it expires in, rounded up) in the same batch.
//! A pass (every purge interval, default 60 s) reads the index up to now and purges only the
//! partitions named there, so an idle node with 100,000 partitions reads nothing; purging one
//! partition scans its episodes and log once. Data from before the index gets one key per
//! partition, due at once, when the node first opens it (`seed_expiry_index`).

use std::collections::BTreeMap;

use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey};
use rocksdb::{ReadOptions, WriteBatch};

use super::{CF_EPISODES, CF_LOG, CF_META, Storage, db_err};
use crate::record::{
    LogEntry, LogOp, StoredEpisode, decode, encode, partition_of_meta_key, prefix_end,
};

/// Expiry index keys start with this (in the meta column family, beside the node's own keys).
const EXPIRY: &[u8] = b"\xffexpiry/";
/// Present once the expiry index covers every partition.
const EXPIRY_INDEXED: &[u8] = b"\xffexpiry-indexed";
/// Expiry times are kept to the second (rounded up): one key per partition and second.
const BUCKET_MS: i64 = 1_000;

fn expiry_key(bucket_ms: i64, enc: &[u8]) -> Vec<u8> {
    let mut key = EXPIRY.to_vec();
    key.extend_from_slice(&(bucket_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(enc);
    key
}

/// In `batch`: the partition `enc` holds a memory that expires at `expires_at_ms` (if any).
pub(super) fn mark_expiry(
    batch: &mut WriteBatch,
    meta_cf: &std::sync::Arc<rocksdb::BoundColumnFamily<'_>>,
    enc: &[u8],
    expires_at_ms: Option<i64>,
) {
    if let Some(at) = expires_at_ms {
        let bucket = at.div_euclid(BUCKET_MS).saturating_add(1).saturating_mul(BUCKET_MS);
        batch.put_cf(meta_cf, expiry_key(bucket, enc), []);
    }
}

/// Partitions with memories due to expire by now, with the index keys that say so.
pub type Due = Vec<(PartitionKey, Vec<Vec<u8>>)>;

/// What one purge pass did to a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Expired memories deleted (owner only).
    pub deleted: usize,
    /// Log entries redacted.
    pub redacted: usize,
    /// The owner could not delete every expired memory now (moving, or not taken over yet):
    /// the partition stays due.
    pub unfinished: bool,
}

impl Storage {
    /// The partitions the expiry index names as due by `now_ms` (cost: the due keys).
    pub fn due_for_purge(&self, now_ms: i64) -> Result<Due, ApiError> {
        let start = expiry_key(0, &[]);
        let mut due: BTreeMap<Vec<u8>, (PartitionKey, Vec<Vec<u8>>)> = BTreeMap::new();
        for item in self.scan(CF_META, EXPIRY, &start, ReadOptions::default())? {
            let (key, _) = item?;
            let Some(rest) = key.strip_prefix(EXPIRY) else { continue };
            let Some((bucket, enc)) = rest.split_first_chunk::<8>() else { continue };
            if u64::from_be_bytes(*bucket) as i64 > now_ms {
                break;
            }
            let Some(partition) = partition_of_meta_key(enc) else { continue };
            due.entry(enc.to_vec()).or_insert_with(|| (partition, Vec::new())).1.push(key.to_vec());
        }
        Ok(due.into_values().collect())
    }

    /// Removes index keys of a partition that has been purged.
    pub fn clear_due(&self, keys: &[Vec<u8>]) -> Result<(), ApiError> {
        let meta = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.delete_cf(&meta, key);
        }
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)
    }

    /// Once per data directory: makes every partition stored before the expiry index due now
    /// (its first pass marks the memories that expire later).
    pub(super) fn seed_expiry_index(&self) -> Result<(), ApiError> {
        let meta = self.cf(CF_META)?;
        if self.db.get_cf(&meta, EXPIRY_INDEXED).map_err(db_err)?.is_some() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut seeded = 0;
        for p in self.partitions_with_prefix(&[])? {
            batch.put_cf(&meta, expiry_key(0, &p.partition.encode()), []);
            seeded += 1;
        }
        batch.put_cf(&meta, EXPIRY_INDEXED, []);
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        if seeded > 0 {
            tracing::info!(
                partitions = seeded,
                "expiry index started: each partition is checked once"
            );
        }
        Ok(())
    }

    /// Purges the expired memories of `key` at `now_ms`: deletes them through the log when this
    /// node owns it (`owner` is then the check each delete makes under the write lock, as a
    /// client's delete does), redacts expired puts in this copy's log, and compacts the range if
    /// anything changed.
    pub fn purge_expired(
        &self,
        key: &PartitionKey,
        now_ms: i64,
        owner: Option<super::CommitCheck<'_>>,
    ) -> Result<Purged, ApiError> {
        let enc = key.encode();
        let mut purged = Purged::default();
        let mut expired = Vec::new();
        let mut later = WriteBatch::default();
        let meta_cf = self.cf(CF_META)?;
        for item in self.scan(CF_EPISODES, &enc, &enc, Storage::uncached())? {
            let (_, value) = item?;
            let e: StoredEpisode = decode(&value)?;
            if e.is_expired(now_ms) {
                expired.push(e.id);
            } else {
                // Marked again: idempotent, and it covers data from before the index.
                mark_expiry(&mut later, &meta_cf, &enc, e.expires_at_ms);
            }
        }
        if !later.is_empty() {
            self.db.write_opt(later, &self.write_options()).map_err(db_err)?;
        }
        if let Some(may_commit) = owner {
            for id in expired {
                let id = MemoryId::parse(&id)?;
                // Deleting an expired memory answers "not found" once it is gone; a fenced
                // partition (moving) is purged by its next owner.
                match self.delete_checked(key, &id, None, now_ms, may_commit) {
                    Ok(()) => purged.deleted += 1,
                    Err(e) if e.code() == ErrorCode::NotFound => purged.deleted += 1,
                    // Moving, or not (yet) taken over at this layout: the owner purges later.
                    Err(e)
                        if matches!(
                            e.code(),
                            ErrorCode::PartitionMoving | ErrorCode::WrongOwner
                        ) =>
                    {
                        purged.unfinished = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let log_cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for item in self.scan(CF_LOG, &enc, &enc, Storage::uncached())? {
            let (k, value) = item?;
            let mut entry: LogEntry = decode(&value)?;
            if let LogOp::Put(e) = &mut entry.op
                && e.is_expired(now_ms)
                && !is_redacted(e)
            {
                e.content.clear();
                e.embedding = None;
                e.metadata_json = "{}".into();
                batch.put_cf(&log_cf, &k, encode(&entry)?);
                purged.redacted += 1;
            }
        }
        if purged.redacted > 0 {
            self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        }
        if purged.deleted > 0 || purged.redacted > 0 {
            let end = prefix_end(&enc);
            for name in [CF_EPISODES, CF_LOG] {
                self.db.compact_range_cf(&self.cf(name)?, Some(&enc[..]), Some(&end[..]));
            }
        }
        Ok(purged)
    }
}

fn is_redacted(e: &StoredEpisode) -> bool {
    e.content.is_empty() && e.embedding.is_none() && e.metadata_json == "{}"
}
