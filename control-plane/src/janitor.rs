//! Drops copies that no replica set has a place for any more — the third copy of every partition
//! after the replication factor went from 3 to 2, or a copy a stopped move left behind — once
//! the set provably holds everything the copy holds. The active control plane sweeps every
//! [`EVERY`], between jobs (it holds the jobs lock while it sweeps).
//!
//! A copy is dropped by the one rule of `copies.rs` (outside its partition's holders, and its
//! last entry held by the owner and every live member of the set, the layout unchanged
//! meanwhile), and only while nothing is moving: no migration, rebalance or drain in the
//! journal, no layout change in flight (one whose job has stopped the sweep finishes itself: a
//! staged one is undone, `reconcile::unstage`, a flipped one ended, `reconcile::end_transition`),
//! no node draining, and none of what older control planes left while moving (extra copies,
//! staging pins, a creation freeze).
//!
//! A copy outside every replica set appears only through a layout change (a smaller
//! replication factor, a stopped move, a finished migration), so once a sweep at an epoch found
//! nothing left to drop or keep, the janitor does not sweep again until the epoch changes: an
//! idle cluster lists no partition (a sweep lists every copy of every node).

use std::time::Duration;

use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, PinKind};
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, Ring};

use crate::copies;

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
        || layout.transition.is_some()
        || layout.pins.of(PinKind::Staging).next().is_some()
        || layout.creation_frozen
        || layout.states.draining().next().is_some()
}

/// One sweep over every live node.
pub async fn sweep(store: &dyn RingStore, client: &InternalClient) -> anyhow::Result<Swept> {
    let layout = store.load().await?.layout;
    let mut swept = Swept { epoch: layout.epoch, ..Swept::default() };
    let resizing = crate::resize::pending(store).await?.is_some();
    let migrating = !crate::journal::pending(store).await?.is_empty();
    if crate::reconcile::staged(&layout) {
        // A staged change whose job is gone (cancelled, then stopped before undoing it) is
        // undone: the old layout never stopped leading.
        if !resizing && !migrating {
            crate::reconcile::unstage(store).await?;
            tracing::info!("a staged layout change left by a stopped job was undone");
        }
        return Ok(swept);
    }
    if layout.transition.is_some() && !resizing {
        // A change whose job stopped after its flip (cancelled): its transition ends here once
        // the sets have caught up; the next sweep drops the copies.
        if crate::reconcile::end_transition(store, client, &Default::default()).await? {
            tracing::info!("a replicated layout change left unsettled has settled");
        }
        return Ok(swept);
    }
    if moving(&layout) || migrating || resizing {
        return Ok(swept);
    }
    let ring = Ring::new(layout.clone());
    let nodes: Vec<LayoutNode> = crate::reconcile::listable(&layout).cloned().collect();
    let done = copies::drop_outside(store, client, &ring, &nodes, Duration::ZERO).await?;
    swept.dropped = done.dropped;
    // A node marked down may hold copies to drop once it is back.
    swept.complete = done.complete() && layout.states.down().next().is_none();
    Ok(swept)
}
