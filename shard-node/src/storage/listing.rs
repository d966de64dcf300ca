//! What the node holds: its partitions with their figures (all, by tenant, or those changed after
//! a change-feed cursor), and deleting a tenant's.

use memring_common::api::PartitionStats;
use memring_common::scope::tenant_prefix;
use memring_common::{ApiError, PartitionKey, TenantId};
use rocksdb::{ReadOptions, WriteBatch};

use super::{CF_EPISODES, CF_LOG, CF_META, Storage, db_err, migration, trim};
use crate::record::{PartitionMeta, decode, partition_of_meta_key, prefix_end};

impl Storage {
    /// Deletes every partition of `tenant` on this node (data, log and meta). Returns how many
    /// partitions were removed.
    pub fn delete_tenant(&self, tenant: &TenantId) -> Result<usize, ApiError> {
        let _gate = self.gate.write();
        let prefix = tenant_prefix(tenant);
        let end = prefix_end(&prefix);
        let removed = self.partitions_with_prefix(&prefix)?;
        let mut batch = WriteBatch::default();
        for name in [CF_EPISODES, CF_LOG, CF_META] {
            batch.delete_range_cf(&self.cf(name)?, &prefix, &end);
        }
        // The node-level keys that name the tenant's partitions: their fences and re-seed marks.
        for marks in [migration::fence_key(&prefix), trim::reseed_key(&prefix)] {
            batch.delete_range_cf(&self.cf(CF_META)?, &marks, &prefix_end(&marks));
        }
        self.db.write_opt(batch, &self.write_options()).map_err(db_err)?;
        let mut dropped = Vec::new();
        self.partitions.write().retain(|enc, p| {
            let keep = !enc.starts_with(&prefix);
            if !keep {
                dropped.push(p.clone());
            }
            keep
        });
        for p in dropped {
            self.totals.unload(p.search.read().is_some());
        }
        for gone in &removed {
            self.totals.remove(gone);
            self.feed.note(&gone.partition);
        }
        if !removed.is_empty() {
            self.queue_reclaim(prefix, end);
        }
        Ok(removed.len())
    }

    pub(super) fn partitions_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<PartitionStats>, ApiError> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, prefix, prefix, ReadOptions::default())? {
            let (k, v) = item?;
            let Some(partition) = partition_of_meta_key(&k) else { continue };
            let mut meta: PartitionMeta = decode(&v)?;
            if meta.bytes.is_none()
                && let Some(p) = self.partition(&partition, false)?
            {
                // An older format: loading the partition upgrades (and stores) its meta.
                meta = p.meta.lock().clone();
            }
            out.push(PartitionStats {
                partition,
                count: meta.count,
                dimensions: meta.dimensions,
                last_seq: meta.last_seq,
                last_term: meta.last_term,
                bytes: meta.bytes.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Every partition stored on this node.
    pub fn partitions(&self) -> Result<Vec<PartitionStats>, ApiError> {
        let mut all = self.partitions_with_prefix(&[])?;
        // Meta may lag the in-memory state of a partition being written right now; prefer memory.
        let live = self.partitions.read();
        for stats in &mut all {
            if let Some(p) = live.get(&stats.partition.encode()) {
                let meta = p.meta.lock();
                stats.count = meta.count;
                stats.last_seq = meta.last_seq;
                stats.last_term = meta.last_term;
                stats.dimensions = meta.dimensions;
            }
        }
        Ok(all)
    }

    /// The partitions changed after cursor `since` of feed instance `feed` (see
    /// [`PartitionList`](memring_common::api::PartitionList)), with the feed instance, the next
    /// cursor and whether the list is full: every partition when the cursor is 0 or of another
    /// instance.
    pub fn partitions_since(
        &self,
        feed: u64,
        since: u64,
    ) -> Result<(Vec<PartitionStats>, u64, u64, bool), ApiError> {
        let instance = self.feed.instance();
        if since == 0 || feed != instance {
            // Read before listing: a change made during the listing is listed again.
            let cursor = self.feed.now();
            return Ok((self.partitions()?, instance, cursor, true));
        }
        let changed = self.feed.since(since, usize::MAX);
        let mut out = Vec::with_capacity(changed.partitions.len());
        for p in changed.partitions {
            out.push(self.stats_of(&p)?);
        }
        Ok((out, instance, changed.cursor, false))
    }

    /// One partition's figures (all zero once it is gone).
    pub(super) fn stats_of(&self, key: &PartitionKey) -> Result<PartitionStats, ApiError> {
        let empty = PartitionStats {
            partition: key.clone(),
            count: 0,
            dimensions: None,
            last_seq: 0,
            last_term: 0,
            bytes: 0,
        };
        let Some(p) = self.partition(key, false)? else { return Ok(empty) };
        let meta = p.meta.lock();
        Ok(PartitionStats {
            count: meta.count,
            dimensions: meta.dimensions,
            last_seq: meta.last_seq,
            last_term: meta.last_term,
            bytes: meta.bytes.unwrap_or(0),
            ..empty
        })
    }
}
