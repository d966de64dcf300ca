//! The node's totals — partitions, memories, their bytes, indexes in memory — kept up to date
//! by every commit, so the metrics that publish them (every 5 s) cost nothing per partition.
//! Counted from the stored metas once when the node opens its data.
//!
//! Every change of a partition's meta goes through [`Storage::commit`], which also notes the
//! partition in the node's change feed (`feed.rs`): the one place a committed change is made
//! visible.

use std::sync::atomic::Ordering;

use memring_common::ApiError;
use memring_common::api::PartitionStats;
use parking_lot::Mutex;

use super::feed::Wake;
use super::{NodeStats, Partition, Storage};
use crate::record::PartitionMeta;

/// Running totals over the partitions stored here.
#[derive(Default)]
pub struct Totals {
    counts: Mutex<Counts>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    partitions: u64,
    memories: u64,
    bytes: u64,
    loaded: u64,
}

impl Totals {
    /// The totals as node figures (RocksDB's are added by the caller).
    pub fn stats(&self) -> NodeStats {
        let c = *self.counts.lock();
        NodeStats {
            partitions: c.partitions,
            memories: c.memories,
            bytes: c.bytes,
            loaded_indexes: c.loaded,
            ..NodeStats::default()
        }
    }

    /// A partition's search state went in memory (`was_empty`: there was none before).
    pub fn load(&self, was_empty: bool) {
        if was_empty {
            self.counts.lock().loaded += 1;
        }
    }

    /// A partition's search state left memory (`was_loaded`: there was one).
    pub fn unload(&self, was_loaded: bool) {
        if was_loaded {
            let mut c = self.counts.lock();
            c.loaded = c.loaded.saturating_sub(1);
        }
    }

    /// A stored partition was removed.
    pub fn remove(&self, gone: &PartitionStats) {
        let mut c = self.counts.lock();
        c.partitions = c.partitions.saturating_sub(1);
        c.memories = c.memories.saturating_sub(gone.count);
        c.bytes = c.bytes.saturating_sub(gone.bytes);
    }

    fn changed(&self, new_partition: bool, before: &PartitionMeta, after: &PartitionMeta) {
        let mut c = self.counts.lock();
        c.partitions += u64::from(new_partition);
        c.memories = (c.memories + after.count).saturating_sub(before.count);
        c.bytes = (c.bytes + after.bytes.unwrap_or(0)).saturating_sub(before.bytes.unwrap_or(0));
    }
}

impl Storage {
    /// Makes a committed meta change visible (with the partition's write mutex held, the batch
    /// written): installs it, updates the totals and notes the partition in the change feed
    /// (still under the mutex, so a follower told of the change reads at least this state).
    pub(super) fn commit(&self, p: &Partition, meta: &mut PartitionMeta, next: PartitionMeta) {
        self.commit_waking(p, meta, next, Wake::Waiters);
    }

    /// [`Storage::commit`], waking the feed's waiters only with [`Wake::Waiters`].
    pub(super) fn commit_waking(
        &self,
        p: &Partition,
        meta: &mut PartitionMeta,
        next: PartitionMeta,
        wake: Wake,
    ) {
        let new_partition = !p.stored.swap(true, Ordering::AcqRel);
        self.totals.changed(new_partition, meta, &next);
        p.install(meta, next);
        self.feed.note_as(&p.key, wake);
    }

    /// Counts the totals from the stored metas (once, when the node opens its data).
    pub(super) fn count_totals(&self) -> Result<(), ApiError> {
        let all = self.partitions_with_prefix(&[])?;
        let mut c = self.totals.counts.lock();
        c.partitions = all.len() as u64;
        c.memories = all.iter().map(|p| p.count).sum();
        c.bytes = all.iter().map(|p| p.bytes).sum();
        Ok(())
    }

    /// The totals counted the slow way, from every stored meta (for tests of the running ones).
    #[cfg(test)]
    pub fn counted_stats(&self) -> Result<NodeStats, ApiError> {
        let all = self.partitions()?;
        Ok(NodeStats {
            partitions: all.len() as u64,
            memories: all.iter().map(|p| p.count).sum(),
            bytes: all.iter().map(|p| p.bytes).sum(),
            loaded_indexes: self
                .partitions
                .read()
                .values()
                .filter(|p| p.search.read().is_some())
                .count() as u64,
            ..NodeStats::default()
        })
    }
}
