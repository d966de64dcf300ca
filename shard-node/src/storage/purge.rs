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
//! Finding what to purge scans the partition's episodes and log: O(partition) per pass, at the
//! purge interval (default 60 s).

use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey};
use rocksdb::WriteBatch;

use super::{CF_EPISODES, CF_LOG, Storage, db_err};
use crate::record::{LogEntry, LogOp, StoredEpisode, decode, encode, prefix_end};

/// What one purge pass did to a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Expired memories deleted (owner only).
    pub deleted: usize,
    /// Log entries redacted.
    pub redacted: usize,
}

impl Storage {
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
        if let Some(may_commit) = owner {
            let mut expired = Vec::new();
            for item in self.scan(CF_EPISODES, &enc, &enc, Storage::uncached())? {
                let (_, value) = item?;
                let e: StoredEpisode = decode(&value)?;
                if e.is_expired(now_ms) {
                    expired.push(e.id);
                }
            }
            for id in expired {
                let id = MemoryId::parse(&id)?;
                // Deleting an expired memory answers "not found" once it is gone; a fenced
                // partition (moving) is purged by its next owner.
                match self.delete_checked(key, &id, now_ms, may_commit) {
                    Ok(()) => purged.deleted += 1,
                    Err(e) if e.code() == ErrorCode::NotFound => purged.deleted += 1,
                    // Moving, or not (yet) taken over at this layout: the owner purges later.
                    Err(e)
                        if matches!(
                            e.code(),
                            ErrorCode::PartitionMoving | ErrorCode::WrongOwner
                        ) =>
                    {
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
        if purged != Purged::default() {
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
