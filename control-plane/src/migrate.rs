//! Moving one partition so that a named node leads it (`shardctl migrate`, a rebalance's or
//! drain's moves without replication, the size policy), at any replication factor, as one
//! layout change by the rule of `reconcile.rs` (docs/one-engine.md). The control plane streams
//! no data: the layout says who holds a copy, and a new copy follows the old owner (the
//! follower path of `shard-node/src/replicate.rs`; a copy that holds nothing is filled from a
//! snapshot paced at the layout's `fill_rate`, `--migration-rate`, and is then handed the old
//! owner's HNSW graph). Each step is one compare-and-swap on the layout (epoch + 1), journaled
//! before it runs (`SetPhase`) and passing its failpoint (`reconcile.stage`, `reconcile.flip`,
//! `reconcile.end`):
//!
//! 1. **join** (stage): the partition is pinned on the target, staged. Its old set still leads
//!    it and takes its write quorums; the members of the new set follow the old owner. Wait
//!    until each has the owner's position.
//! 2. **lead** (flip): once every live member of the new set holds the old owner's log, the old
//!    owner hands its writes over and the new set leads. The target takes the writes over
//!    asking the members the move takes out too (retiring copies), so a write acknowledged by
//!    the old set just before is found.
//! 3. **settle** (end): once the new set holds the target's log, the transition ends and the
//!    leavers' copies are dropped.
//!
//! At every step an acknowledged write is on W copies that the current owner (or a node taking
//! over from it) will ask, so nothing acknowledged is lost (the model check of
//! `shard-node/src/replicate/model.rs`, `Membership::Staged`, at R = 1 and R = 3). The layout
//! records how far a move got, so a run that stopped anywhere is finished by running it again
//! ([`resume`] does so for every journaled move). A move cancelled before step 2 is undone
//! (`reconcile::unstage`): the old set never stopped leading, and the joiners' copies are
//! dropped.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use memring_common::internal::InternalClient;
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

use crate::copies::{self, PATIENCE};
use crate::job::{Cancel, JobError, Throttle, wait};
use crate::placement;
use crate::reconcile;
use crate::shard_client as shard;
pub use memring_common::api::Flip;
use memring_common::api::{MigrationReport, SetPhase};

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

/// Moves `partition` so that `to` leads it (see the module notes); new copies are filled at
/// `throttle`. Runs from whatever step an earlier run reached.
pub async fn migrate_partition(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    to: &NodeId,
    flip: Flip,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<MigrationReport> {
    let started = Instant::now();
    let layout = store.load().await?.layout;
    let target =
        layout.node(to).cloned().with_context(|| format!("node {to} is not in the ring layout"))?;
    if layout.is_down(to) {
        bail!("node {to} is marked down or draining; it cannot lead a partition");
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
        let point = match phase {
            SetPhase::Join => "reconcile.stage",
            SetPhase::Lead => "reconcile.flip",
            SetPhase::Settle => "reconcile.end",
        };
        crate::failpoint::hit(point).await
    };
    let pinned = |l: &ClusterLayout| placement::placed(l, partition, to, flip);
    // This move's change is in flight: the layout's transition set the partition's pin.
    let ours = |l: &ClusterLayout| pinned(l) && l.change_pins(partition);
    if !pinned(&layout)
        && let Some(why) = placement::settling(&layout)
    {
        bail!("the move of {partition} to {to} waits: {why}");
    }
    step(SetPhase::Join).await?;

    // 1. join: staged, the old set leads and the new one follows.
    let staged = reconcile::stage(store, throttle, |l| {
        if pinned(l) {
            return None;
        }
        let mut next = l.clone();
        placement::place(&mut next, partition, to, flip);
        Some(next)
    })
    .await?;
    // Another change in flight (staged by someone else, or pinned meanwhile while it is staged)
    // is never flipped here: the move waits for it.
    let staged = staged.filter(|s| !reconcile::staged(&s.layout) || ours(&s.layout));
    let Some(staged) = staged else {
        let why = placement::settling(&store.load().await?.layout).unwrap_or_default();
        bail!("the move of {partition} to {to} waits: {why}");
    };
    let new_set = placement::set_led_by(&staged.layout, partition, to);
    tracing::info!(%partition, to = %to, set = ?new_set, epoch = staged.layout.epoch, "move staged; the new set follows the old owner");
    let reported = std::sync::Mutex::new(Instant::now());
    // The log position the joining copies reached (entries they replayed).
    let replayed = std::sync::atomic::AtomicU64::new(0);
    if reconcile::staged(&staged.layout) {
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
                abandon(store, client, partition, to).await?;
            }
            return Err(e);
        }
    }

    // 2. lead: the new set leads once it holds the old owner's log.
    step(SetPhase::Lead).await?;
    let now = store.load().await?.layout;
    if cancel.is_set() && ours(&now) && reconcile::staged(&now) {
        abandon(store, client, partition, to).await?;
        return Err(JobError::Cancelled(format!(
            "during the move of {partition} to {to}; the old replica set still owns it"
        ))
        .into());
    }
    let looks = reconcile::Looks::default();
    wait(cancel, "the new replica set to hold the old owner's log", || {
        reconcile::flip(store, client, &looks)
    })
    .await?;
    // The members the move takes out (dropped once it settles).
    let now = store.load().await?.layout;
    let leavers: Vec<NodeId> = if ours(&now) {
        Ring::new(now).retiring(partition).iter().map(|n| n.id.clone()).collect()
    } else {
        Vec::new()
    };
    tracing::info!(%partition, to = %to, "move flipped; the new set leads");

    // 3. settle: the transition ends once the new set holds the target's log; the leavers go.
    step(SetPhase::Settle).await?;
    let looks = reconcile::Looks::default();
    wait(cancel, "the new replica set to hold the new owner's log", || {
        reconcile::end_transition(store, client, &looks)
    })
    .await?;
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
        fenced_ms: 0,
        count: sum.count,
        epoch: store.load().await?.layout.epoch,
        took_ms: started.elapsed().as_millis() as u64,
        index_bytes: 0,
    })
}

/// A move cancelled before its target leads: the staged change is undone (the old set never
/// stopped leading) and the joiners' copies are dropped. Nothing if the move's change is no
/// longer staged (it flipped: the move finishes when run again).
async fn abandon(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    to: &NodeId,
) -> anyhow::Result<()> {
    let layout = store.load().await?.layout;
    if !reconcile::staged(&layout) || !layout.change_pins(partition) {
        return Ok(());
    }
    let ring = Ring::new(layout);
    let old: Vec<NodeId> = ring.old_set(partition).iter().map(|n| n.id.clone()).collect();
    let joiners: Vec<NodeId> = ring
        .replicas(partition)
        .iter()
        .map(|n| n.id.clone())
        .filter(|id| !old.contains(id))
        .collect();
    reconcile::unstage(store).await?;
    for id in &joiners {
        copies::drop_leaver(store, client, partition, id, PATIENCE).await?;
    }
    store.delete_job(&crate::journal::job_id(partition)).await?;
    tracing::warn!(%partition, to = %to, "move cancelled; the old replica set still owns it");
    Ok(())
}

/// Finishes every journaled move (called at start-up, before serving). A move the layout shows
/// flipped by an older control plane's copy protocol (the target owns the partition, no change
/// in flight) only has the source's copy left to drop; any other is run again from the step the
/// layout shows, after its source is unfenced (that protocol fenced it before its flip).
pub async fn resume(
    store: &dyn RingStore,
    client: &InternalClient,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let jobs = crate::journal::pending(store).await?;
    for job in &jobs {
        let partition: PartitionKey = job.partition.parse()?;
        let to = NodeId::parse(&job.to)?;
        let layout = store.load().await?.layout;
        let ring = Ring::new(layout.clone());
        tracing::warn!(partition = %partition, from = %job.from, to = %to, phase = %job.phase, "resuming a move");
        let done = crate::journal::job_id(&partition);
        if layout.node(&to).is_none() {
            // A rebalance that never staged its layout: nothing moved, nothing to finish.
            store.delete_job(&done).await?;
            continue;
        }
        let in_flight = layout.change_pins(&partition);
        if !in_flight && ring.owner(&partition).map(|o| &o.id) == Some(&to) {
            if let Ok(from) = NodeId::parse(&job.from)
                && from != to
                && !ring.keeps(&partition, &from)
            {
                copies::drop_leaver(store, client, &partition, &from, PATIENCE).await?;
            }
            store.delete_job(&done).await?;
            continue;
        }
        if let Some(owner) = ring.owner(&partition).filter(|_| !in_flight) {
            shard::unfence(client, owner, &partition).await?;
        }
        if cancel.is_set() && !in_flight {
            // Not started again: the source still owns the partition.
            store.delete_job(&done).await?;
            continue;
        }
        migrate_partition(store, client, &partition, &to, job.flip, throttle, cancel).await?;
    }
    Ok(jobs.len())
}
