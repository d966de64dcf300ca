//! `shardctl migrate` of a replicated layout: moving one partition's replica set so that a named
//! node leads it. Copies are not streamed by the control plane as in `migrate.rs`; the layout
//! says who holds a copy, and new copies replay the owner's log (the follower path of
//! `shard-node/src/replicate.rs`). Every step is one compare-and-swap on the layout (epoch + 1):
//!
//! 1. **join**: the members of the new set that hold no copy become *extra copies* of the
//!    partition (`ClusterLayout::extra_copies`): they follow the owner and count toward its
//!    write quorum, but own nothing. Wait until each has the owner's position.
//! 2. **lead**: pin the partition on the target (or, for a size policy's tenant going back to
//!    the ring, remove its pin where the ring alone gives the new set); the members of the old
//!    set that the new one leaves out become its extra copies. Right before, the old owner hands
//!    its writes over (it holds new ones back and lets those in flight reach their quorum), so
//!    none is left waiting on a primary that no longer leads. The target takes the writes over
//!    by position (it asks enough of *all* the copies, extra ones included, so a write
//!    acknowledged by any W of them is found).
//! 3. **settle**: fence the partition on its new owner for a moment, wait until every live
//!    member of the new set has everything it has, drop the extra copies from the layout,
//!    unfence, and delete the leavers' data.
//!
//! At every step an acknowledged write is on W copies that the current owner (or a node taking
//! over from it) will ask, so nothing acknowledged is lost. The layout itself records how far a
//! move got, so a run that stopped anywhere is finished by running it again (the journal's
//! resume does so); the target is not pinned before its copy has caught up, so a move cancelled
//! before step 2 leaves the old set owning the partition and only drops the joiners' copies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::store::{RingStore, update_layout};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

use crate::copies::{self, PATIENCE};
use crate::job::{Cancel, JobError, wait};
use crate::placement;
use crate::shard_client as shard;
use memring_common::api::{Flip, MigrationReport, MovePhase, SetPhase};

/// How long the settle step keeps the partition fenced waiting for the new set to catch up
/// before it gives up (unfences) and tries again.
const SETTLE_FENCE_LIMIT: Duration = Duration::from_secs(5);

/// Where the owner of `partition` is (read first) and where the slowest of `members` it waits
/// on is (not down or draining: `ClusterLayout::is_down`, the rule of the copy-drop check and
/// of a layout change's settle too); caught up when the second is at least the first.
async fn caught_up(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    members: &[NodeId],
) -> anyhow::Result<(u64, u64)> {
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let owner = ring.owner(partition).cloned().context("the ring has no nodes")?;
    let target = shard::position(client, &owner, partition, layout.epoch).await?;
    let mut slowest = target;
    for id in members.iter().filter(|id| **id != owner.id && !layout.is_down(id)) {
        let node = layout.node(id).with_context(|| format!("node {id} left the layout"))?;
        slowest = slowest.min(shard::position(client, node, partition, layout.epoch).await?);
    }
    Ok((target, slowest))
}

/// Moves `partition`'s replica set so that `to` leads it (see the module notes). Runs from
/// whatever step an earlier run reached.
pub async fn move_set(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    to: &NodeId,
    flip: Flip,
    cancel: &Cancel,
) -> anyhow::Result<MigrationReport> {
    let started = Instant::now();
    let layout = store.load().await?.layout;
    let target =
        layout.node(to).cloned().with_context(|| format!("node {to} is not in the ring layout"))?;
    if layout.is_down(to) {
        bail!("node {to} is marked down or draining; it cannot lead a replica set");
    }
    let from =
        Ring::new(layout.clone()).owner(partition).cloned().context("the ring has no nodes")?;
    let journal = |phase: SetPhase, progress: (u64, u64)| {
        crate::journal::record(
            store,
            partition,
            from.id.as_str(),
            to.as_str(),
            flip,
            phase.into(),
            progress,
        )
    };
    // Each step is journaled before it runs, then passes its failpoint (`testing` builds).
    let step = |phase: SetPhase| async move {
        journal(phase, (0, 0)).await?;
        crate::failpoint::hit(&format!("move_set.{}", MovePhase::from(phase))).await
    };
    let pinned = |l: &ClusterLayout| placement::placed(l, partition, to, flip);
    let started_before = layout.extra_copies.contains_key(partition) || pinned(&layout);
    if !started_before && let Some(why) = placement::settling(&layout) {
        bail!("the move of {partition} to {to} waits: {why}");
    }
    step(SetPhase::Join).await?;

    // 1. join: the new set's members without a copy become extra copies and replay the log.
    let joined = update_layout(store, 20, |l| {
        let held = placement::holders(&Ring::new(l.clone()), partition);
        let missing: Vec<NodeId> = placement::set_led_by(l, partition, to)
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect();
        if missing.is_empty() {
            return None;
        }
        let mut next = l.clone();
        next.epoch += 1;
        next.extra_copies.entry(partition.clone()).or_default().extend(missing);
        Some(next)
    })
    .await?;
    let new_set = placement::set_led_by(&joined.layout, partition, to);
    tracing::info!(%partition, to = %to, set = ?new_set, epoch = joined.layout.epoch, "replicated move: joining copies replay the log");
    let reported = std::sync::Mutex::new(Instant::now());
    // The log position the joining copies reached (entries they replayed).
    let replayed = std::sync::atomic::AtomicU64::new(0);
    if !pinned(&joined.layout) {
        let joining = wait(cancel, "the joining copies to catch up", || async {
            let (owner_at, slowest) = caught_up(store, client, partition, &new_set).await?;
            replayed.store(slowest, std::sync::atomic::Ordering::Relaxed);
            let due =
                reported.lock().map(|at| at.elapsed() > Duration::from_secs(2)).unwrap_or(true);
            if due {
                journal(SetPhase::Join, (slowest, owner_at)).await?;
                if let Ok(mut at) = reported.lock() {
                    *at = Instant::now();
                }
            }
            Ok(slowest >= owner_at)
        })
        .await;
        if let Err(e) = joining {
            if cancel.is_set() {
                abandon_join(store, client, partition, to).await?;
            }
            return Err(e);
        }
    }

    // 2. lead: pin on the target; the old set's members it leaves out stay as extra copies.
    step(SetPhase::Lead).await?;
    if cancel.is_set() && !pinned(&store.load().await?.layout) {
        abandon_join(store, client, partition, to).await?;
        return Err(JobError::Cancelled(format!(
            "during the move of {partition} to {to}; the old replica set still owns it"
        ))
        .into());
    }
    // The old owner finishes the writes it committed before the target leads: acknowledgements
    // stop coming to a primary that no longer leads, so a write left waiting there would fail.
    let now = store.load().await?.layout;
    if !pinned(&now)
        && let Some(owner) = Ring::new(now.clone()).owner(partition).filter(|o| o.id != *to)
        && let Err(e) = shard::hand_over(client, owner, partition, now.epoch).await
    {
        tracing::warn!(%partition, from = %owner.id, error = %e, "the old owner did not hand its writes over; flipping anyway");
    }
    let led = update_layout(store, 20, |l| {
        if pinned(l) {
            return None;
        }
        let set = placement::set_led_by(l, partition, to);
        let leaving: BTreeSet<NodeId> = placement::holders(&Ring::new(l.clone()), partition)
            .into_iter()
            .filter(|id| !set.contains(id))
            .collect();
        let mut next = l.clone();
        next.epoch += 1;
        placement::place(&mut next, partition, to, flip);
        next.extra_copies.remove(partition);
        if !leaving.is_empty() {
            next.extra_copies.insert(partition.clone(), leaving);
        }
        Some(next)
    })
    .await?;
    wait(cancel, "the new owner to take the writes over", || async {
        Ok(shard::take_over(client, &target, partition).await.is_ok())
    })
    .await?;
    tracing::info!(%partition, to = %to, epoch = led.layout.epoch, "replicated move: new owner took over");

    // 3. settle: the new set catches up behind a short fence, then the leavers go.
    step(SetPhase::Settle).await?;
    let (leavers, fenced_ms) = settle(store, client, &target, partition, cancel).await?;
    for id in &leavers {
        copies::drop_leaver(store, client, partition, id, PATIENCE).await?;
    }
    let sum = shard::checksum(client, &target, partition, false).await?;
    store.delete_job(&crate::journal::job_id(partition)).await?;
    Ok(MigrationReport {
        partition: partition.to_string(),
        from: from.id.to_string(),
        to: to.to_string(),
        copied: 0,
        replayed: replayed.into_inner(),
        fenced_ms,
        count: sum.count,
        epoch: layout.epoch,
        took_ms: started.elapsed().as_millis() as u64,
        index_bytes: 0,
    })
}

/// Step 3: with the partition fenced on its owner, waits for every live member of its set to
/// reach the owner's position, then removes the extra copies from the layout; unfences either
/// way. Returns the nodes whose copies left the layout (their data is still to be dropped) and
/// how long the fence held writes, ms.
async fn settle(
    store: &dyn RingStore,
    client: &InternalClient,
    owner: &LayoutNode,
    partition: &PartitionKey,
    cancel: &Cancel,
) -> anyhow::Result<(Vec<NodeId>, u64)> {
    loop {
        let layout = store.load().await?.layout;
        let Some(extra) = layout.extra_copies.get(partition).cloned() else {
            // Settled by an earlier run; it may have stopped before unfencing.
            shard::unfence(client, owner, partition).await?;
            return Ok((Vec::new(), 0));
        };
        let set: Vec<NodeId> =
            Ring::new(layout).replica_set(partition).iter().map(|n| n.id.clone()).collect();
        shard::fence(client, owner, partition).await?;
        let fenced = Instant::now();
        let settled = async {
            crate::failpoint::hit("move_set.fenced").await?;
            loop {
                let (owner_at, slowest) = caught_up(store, client, partition, &set).await?;
                if slowest >= owner_at {
                    break;
                }
                if fenced.elapsed() > SETTLE_FENCE_LIMIT {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop_extra_copies(store, partition).await?;
            anyhow::Ok(true)
        }
        .await;
        shard::unfence(client, owner, partition).await?;
        if settled? {
            let fenced_ms = fenced.elapsed().as_millis() as u64;
            tracing::info!(%partition, fenced_ms, "replicated move settled");
            return Ok((extra.into_iter().collect(), fenced_ms));
        }
        if cancel.is_set() {
            return Err(JobError::Cancelled(format!(
                "while the new replica set of {partition} caught up"
            ))
            .into());
        }
        tracing::warn!(%partition, "the new replica set did not catch up behind the fence; trying again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A move cancelled before its target leads: the joining copies leave the layout and their data
/// is dropped; the old set never stopped owning the partition.
async fn abandon_join(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    to: &NodeId,
) -> anyhow::Result<()> {
    let joiners: Vec<NodeId> = store
        .load()
        .await?
        .layout
        .extra_copies
        .get(partition)
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    drop_extra_copies(store, partition).await?;
    for id in &joiners {
        copies::drop_leaver(store, client, partition, id, PATIENCE).await?;
    }
    store.delete_job(&crate::journal::job_id(partition)).await?;
    tracing::warn!(%partition, to = %to, "replicated move cancelled; the old replica set still owns it");
    Ok(())
}

/// Takes `partition`'s extra copies out of the layout (epoch + 1; nothing if it has none).
async fn drop_extra_copies(store: &dyn RingStore, partition: &PartitionKey) -> anyhow::Result<()> {
    update_layout(store, 20, |l| {
        let mut next = l.clone();
        next.epoch += 1;
        next.extra_copies.remove(partition)?;
        Some(next)
    })
    .await?;
    Ok(())
}
