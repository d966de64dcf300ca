//! Drops copies that no replica set has a place for any more — the third copy of every partition
//! after the replication factor went from 3 to 2, or a copy a stopped move left behind — once
//! the set provably holds everything the copy holds. The active control plane sweeps every
//! [`EVERY`], between jobs (it holds the jobs lock while it sweeps).
//!
//! A copy of partition P on node N is dropped only when all of these hold:
//! - N is not among P's holders in the layout (its replica set and extra copies);
//! - nothing is moving: no migration or replicated rebalance in the journal, no replicated
//!   move's extra copies, no rebalance's staging pins or creation freeze, no node draining;
//! - P's owner and every other live member of its set hold an entry of the copy's last term at
//!   the copy's last log position. Logs with an entry of the same term at a position hold the
//!   same entries up to it (`replicate.rs`), so the set has every entry the copy has; a copy
//!   from another lineage (a partition left on a node by a layout edited by hand, say) does not
//!   match and is kept for an operator. A member whose log is trimmed past that position
//!   (`shard-node/src/storage/trim.rs`) can no longer show the entry: it counts when its log
//!   starts at a term at least the copy's last — its trimmed entries were held by a quorum, and
//!   every acknowledged write is in the owner's log; a copy of another lineage with older
//!   terms is then dropped as well;
//! - the layout epoch did not change while this was checked.
//!
//! A copy outside every replica set appears only through a layout change (a smaller
//! replication factor, a stopped move, a finished migration), so once a sweep at an epoch found
//! nothing left to drop or keep, the janitor does not sweep again until the epoch changes: an
//! idle cluster lists no partition (a sweep lists every copy of every node).

use std::time::Duration;

use memring_common::api::PartitionStats;
use memring_common::internal::InternalClient;
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, Ring};

/// How often the active control plane sweeps.
pub const EVERY: Duration = Duration::from_secs(5);

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// The layout epoch it looked at.
    pub epoch: u64,
    /// Copies dropped.
    pub dropped: usize,
    /// Every node was listed and no copy outside its replica set is left: nothing to do
    /// until the layout changes.
    pub complete: bool,
}

/// Sweeps every [`EVERY`] while no job holds `jobs` and the layout changed since the last
/// complete sweep, for as long as the task lives.
pub async fn run(
    store: std::sync::Arc<dyn RingStore>,
    client: InternalClient,
    jobs: std::sync::Arc<tokio::sync::Mutex<()>>,
) {
    let mut clean_at = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let Ok(_between_jobs) = jobs.try_lock() else { continue };
        let Ok(view) = store.load().await else { continue };
        if clean_at == Some(view.layout.epoch) {
            continue;
        }
        match sweep(store.as_ref(), &client).await {
            Ok(swept) => {
                if swept.dropped > 0 {
                    tracing::info!(
                        dropped = swept.dropped,
                        "copies outside their replica sets dropped"
                    );
                }
                clean_at = swept.complete.then_some(swept.epoch);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "sweep for unneeded copies failed"),
        }
    }
}

/// Whether anything is on the move in `layout` (a sweep then waits for the next round).
fn moving(layout: &ClusterLayout) -> bool {
    !layout.extra_copies.is_empty()
        || !layout.staging_pins.is_empty()
        || layout.creation_frozen
        || !layout.draining.is_empty()
}

/// One sweep over every live node.
pub async fn sweep(store: &dyn RingStore, client: &InternalClient) -> anyhow::Result<Swept> {
    let layout = store.load().await?.layout;
    let mut swept = Swept { epoch: layout.epoch, ..Swept::default() };
    if moving(&layout)
        || !crate::journal::pending(store).await?.is_empty()
        || crate::resize::pending(store).await?.is_some()
    {
        return Ok(swept);
    }
    let ring = Ring::new(layout.clone());
    let mut complete = layout.down.is_empty();
    for node in layout.nodes.iter().filter(|n| !layout.is_down(&n.id)) {
        let Ok(list) = crate::shard_client::partitions(client, &node.addr, None).await else {
            complete = false;
            continue;
        };
        for copy in list.partitions {
            let p = &copy.partition;
            if ring.replicas(p).iter().any(|n| n.id == node.id) {
                continue;
            }
            if !covered(client, &ring, &copy).await? {
                complete = false;
                continue;
            }
            if store.load().await?.layout.epoch != layout.epoch {
                return Ok(swept);
            }
            crate::shard_client::drop_copy(client, node, p, layout.epoch).await?;
            tracing::info!(partition = %p, node = %node.id, position = copy.last_seq, "copy outside its replica set dropped");
            metrics::counter!("memring_control_copies_dropped_total").increment(1);
            swept.dropped += 1;
        }
    }
    swept.complete = complete;
    Ok(swept)
}

/// Whether the owner and every other live member of the copy's replica set hold the copy's last
/// log entry (see the module notes).
async fn covered(
    client: &InternalClient,
    ring: &Ring,
    copy: &PartitionStats,
) -> anyhow::Result<bool> {
    let p = &copy.partition;
    let Some(owner) = ring.owner(p) else { return Ok(false) };
    if ring.layout().is_down(&owner.id) {
        return Ok(false);
    }
    if copy.last_seq == 0 {
        // Holds no log entry: an empty copy.
        return Ok(copy.count == 0);
    }
    for member in ring.replica_set(p).iter().filter(|n| !ring.layout().is_down(&n.id)) {
        if !crate::shard_client::holds(client, member, p, copy.last_seq, copy.last_term).await? {
            return Ok(false);
        }
    }
    Ok(true)
}
