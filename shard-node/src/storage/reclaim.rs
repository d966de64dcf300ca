//! Disk comes back after deletions. A tenant deletion or a dropped partition removes its keys
//! with range tombstones, which RocksDB turns into free space only when a compaction reaches
//! those files — possibly never on a quiet node. Each deletion therefore queues its key ranges,
//! and the node compacts them, one range at a time, on a low-priority thread
//! ([`Storage::reclaim_queued`], called by the shard node every few seconds): the files holding
//! only deleted keys are dropped, the others rewritten without them.
//!
//! Trimmed logs (`trim.rs`) give theirs back the same way: a big trim queues its range, and
//! once [`LOG_COMPACTION_AFTER`] entries were trimmed in small pieces the log column family is
//! compacted whole; between those, RocksDB compacts files that are mostly tombstones by itself
//! (a deletion collector on the log column family).
//!
//! The queue lives in memory; after a restart before its turn, a range waits for RocksDB's own
//! compactions. `memring_rocksdb_reclaimable_bytes` shows what compaction could still free
//! (SST bytes beyond RocksDB's estimate of live data).

use memring_common::ApiError;

use std::sync::atomic::Ordering;

use super::{CF_EPISODES, CF_LOG, CF_META, Storage};

/// Trimmed log entries after which the whole log column family is compacted.
pub const LOG_COMPACTION_AFTER: u64 = 100_000;

/// A key range of every column family to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First key.
    pub start: Vec<u8>,
    /// The key after the last one.
    pub end: Vec<u8>,
}

impl Storage {
    /// Queues `[start, end)` of every column family for compaction.
    pub(super) fn queue_reclaim(&self, start: Vec<u8>, end: Vec<u8>) {
        let mut queue = self.reclaim.lock();
        let range = Range { start, end };
        if !queue.contains(&range) {
            queue.push(range);
        }
    }

    /// Ranges waiting for compaction (a whole-log compaction owed by trimming counts as one).
    pub fn reclaim_pending(&self) -> usize {
        let log = self.trimmed_since_compaction.load(Ordering::Relaxed) >= LOG_COMPACTION_AFTER;
        self.reclaim.lock().len() + usize::from(log)
    }

    /// Compacts the queued ranges (blocking: call on a low-priority thread). Returns how many.
    pub fn reclaim_queued(&self) -> Result<usize, ApiError> {
        let mut done = 0;
        if self.trimmed_since_compaction.load(Ordering::Relaxed) >= LOG_COMPACTION_AFTER {
            // Many small trims leave point tombstones all over the log: compact it whole (it
            // holds only the kept window, so this costs little once trimmed).
            self.trimmed_since_compaction.store(0, Ordering::Relaxed);
            self.db.compact_range_cf(&self.cf(CF_LOG)?, None::<&[u8]>, None::<&[u8]>);
            done += 1;
        }
        loop {
            let Some(range) = self.reclaim.lock().first().cloned() else { return Ok(done) };
            for name in [CF_EPISODES, CF_LOG, CF_META] {
                let cf = self.cf(name)?;
                self.db.compact_range_cf(&cf, Some(&range.start[..]), Some(&range.end[..]));
            }
            self.reclaim.lock().retain(|r| *r != range);
            done += 1;
        }
    }
}
