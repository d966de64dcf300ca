//! Rebalance after nodes join, and drain before a node leaves: plan the moves the new ring
//! requires, stage the new layout with the moving partitions pinned where their data is (old and
//! new ring side by side), then migrate each one and let the ring place it.
//!
//! - Only what the new ring requires moves, each partition at most once per plan.
//! - Placement overrides (pinned tenants) are respected: a pinned partition does not move.
//! - Staging is one compare-and-swap on the epoch the plan was made at; a concurrent layout
//!   change makes the plan stale and the run refuses (plan again).
//!
//! - No partition can be missed: a real run first freezes partition creation in the layout
//!   (`creation_frozen`, epoch + 1), lists every node's partitions behind a barrier at that epoch
//!   (each node has seen the freeze and finished every creation decided before it), and the
//!   staging compare-and-swap lifts the freeze. First writes of new partitions wait those few
//!   hundred milliseconds as a retried `partition_moving`; nothing else is held up.

use anyhow::{Context, bail};
use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, NodeState, PinKind, Transition};
use memring_common::store::{RingStore, StoreError};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};
use serde::{Deserialize, Serialize};

use crate::job::{Cancel, JobError, Throttle};
use crate::migrate::migrate_partition;
use crate::placement::{self, Holdings};
use memring_common::api::{ChangePlan, Flip, MigrationReport};

/// A layout change to plan for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Put every live node that is not in the ring into it.
    Join,
    /// Move everything off this node and take it out of the ring.
    Drain(String),
}

/// Every partition each node holds data for, with its memories there.
async fn holdings(
    layout: &ClusterLayout,
    client: &InternalClient,
    barrier: Option<u64>,
) -> anyhow::Result<Holdings> {
    let mut out = Holdings::new();
    for node in &layout.nodes {
        let list = crate::shard_client::partitions(client, &node.addr, barrier)
            .await
            .with_context(|| format!("node {}: a plan needs every node", node.id))?;
        for p in list.partitions.into_iter().filter(|p| p.count > 0) {
            out.entry(p.partition).or_default().insert(node.id.clone(), p.count);
        }
    }
    Ok(out)
}

/// Plans `change` against the current layout (what `--dry-run` shows).
pub async fn plan(
    store: &dyn RingStore,
    client: &InternalClient,
    change: &Change,
) -> anyhow::Result<ChangePlan> {
    Ok(plan_at(store, client, change, false).await?.0)
}

/// Plans `change`; with `frozen` the layout has creation frozen and every node is listed behind
/// a barrier at its epoch, so the plan sees every partition that can exist before staging.
/// Returns the plan and the layout to stage (none when nothing changes; without replication,
/// each moving partition is pinned there where its data is).
async fn plan_at(
    store: &dyn RingStore,
    client: &InternalClient,
    change: &Change,
    frozen: bool,
) -> anyhow::Result<(ChangePlan, Option<ClusterLayout>)> {
    let layout = store.load().await?.layout;
    let replicated = layout.replication_factor > 1;
    if frozen && !layout.creation_frozen {
        bail!(
            "partition creation was unfrozen during planning (another control plane?); plan again"
        );
    }
    let leaver = match change {
        Change::Drain(node) => Some(NodeId::parse(node)?),
        Change::Join => None,
    };
    if let Some(why) = placement::unsettled(&layout, leaver.as_ref()) {
        bail!("{why}");
    }
    let mut next = layout.clone();
    next.epoch += 1;
    next.creation_frozen = false;
    // Partitions a cancelled rebalance left pinned where their data is are planned afresh.
    next.pins.retain(|_, pin| pin.kind != PinKind::Staging);
    let (mut joining, mut later, mut leaving) = (Vec::new(), Vec::new(), None);
    match change {
        Change::Join => {
            let mut waiting: Vec<_> = store
                .live_nodes()
                .await?
                .into_iter()
                .filter(|record| layout.node(&record.id).is_none())
                .collect();
            waiting.sort_by(|a, b| a.id.cmp(&b.id));
            let admitted = placement::admitted_together(layout.replication_factor, waiting.len());
            later = waiting.split_off(admitted).into_iter().map(|r| r.id.to_string()).collect();
            for record in waiting {
                joining.push(record.id.to_string());
                if replicated {
                    // It follows until caught up; failover hands it leadership then.
                    next.states.set(&record.id, NodeState::Joining);
                }
                next = next.with_node(LayoutNode { id: record.id, addr: record.addr });
                next.epoch = layout.epoch + 1;
            }
            if replicated && !joining.is_empty() {
                // The members the joiners displace are still asked until the new sets catch
                // up (a drain's sets change only when the node leaves: `resize.rs`).
                next.transition = Some(Transition::from_nodes(next.epoch, &layout.nodes));
            }
        }
        Change::Drain(node) => {
            let id = NodeId::parse(node)?;
            if layout.node(&id).is_none() {
                bail!("node {id} is not in the ring layout");
            }
            if layout.nodes.len() < 2 {
                bail!("cannot drain the last node of the ring");
            }
            // Pins on the leaving node are released: its partitions go where the ring says.
            next.pins.retain(|_, pin| pin.node != id);
            next.states.set(&id, NodeState::Draining);
            leaving = Some(id.to_string());
        }
    }
    // Where the change ends: a drained node's sets change when it leaves the layout (with
    // replication, after it hands its leadership over).
    let end = match &leaving {
        Some(id) => next.without_node(&NodeId::parse(id)?),
        None => next.clone(),
    };
    let (now, end) = (Ring::new(layout.clone()), Ring::new(end));
    let held = holdings(&layout, client, frozen.then_some(layout.epoch)).await?;
    let moves = placement::copies_to_make(&now, &end, &held);
    if !replicated {
        // Stage: each moving partition stays pinned where its data is until its migration
        // flips it.
        for m in &moves {
            next.pins.set(m.partition.parse()?, NodeId::parse(&m.from)?, PinKind::Staging);
        }
    }
    let sizes: Vec<u64> = held.iter().map(|(p, on)| placement::size(&now, p, on)).collect();
    let memories: u64 = sizes.iter().sum();
    let moved: u64 = moves.iter().map(|m| m.memories).sum();
    let copies = memories * u64::from(layout.replication_factor.max(1));
    let ideal_fraction = match change {
        Change::Join => share_of(&end, &joining),
        Change::Drain(node) => share_of(&now, std::slice::from_ref(node)),
    };
    // Without replication, staging pins a cancelled rebalance left are re-planned too.
    let changes_something = !joining.is_empty()
        || leaving.is_some()
        || (!replicated && layout.pins.of(PinKind::Staging).next().is_some());
    let plan = ChangePlan {
        epoch: layout.epoch,
        joining,
        later,
        leaving,
        moves,
        partitions: sizes.iter().filter(|n| **n > 0).count(),
        memories,
        moved_fraction: if copies == 0 { 0.0 } else { moved as f64 / copies as f64 },
        ideal_fraction,
    };
    Ok((plan, changes_something.then_some(next)))
}

/// Plan `first` followed by `next`, the step after it: the joining nodes and moves of both, the
/// moved fractions added up (the ideal is the caller's to set: the final ring's share of every
/// joiner).
fn then(mut first: ChangePlan, next: ChangePlan) -> ChangePlan {
    first.joining.extend(next.joining);
    first.later = next.later;
    first.moves.extend(next.moves);
    first.moved_fraction += next.moved_fraction;
    first
}

/// The nodes' `ids` share of `ring`'s key space.
fn share_of(ring: &Ring, ids: &[String]) -> f64 {
    ring.shares().iter().filter(|(id, _)| ids.iter().any(|j| j == id.as_str())).map(|s| s.1).sum()
}

/// Carries out `change`: freezes partition creation, plans behind the nodes' barriers, stages
/// (which lifts the freeze), migrates, and for a drain takes the node out. The freeze is lifted
/// on every path that does not stage.
pub async fn execute(
    store: &dyn RingStore,
    client: &InternalClient,
    change: &Change,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<(ChangePlan, Vec<MigrationReport>)> {
    if store.load().await?.layout.replication_factor > 1 {
        // New copies replay logs as followers: nothing to freeze, nothing to pin. Nodes join
        // one per step; each step is a plan of its own, run to its end before the next.
        let mut done: Option<ChangePlan> = None;
        loop {
            let (plan, staged) = plan_at(store, client, change, false).await?;
            let Some(staged) = staged else {
                return Ok((done.unwrap_or(plan), Vec::new()));
            };
            let dropped = crate::resize::run(
                store,
                client,
                plan.epoch,
                staged,
                &plan.joining,
                plan.leaving.as_deref(),
                cancel,
            )
            .await?;
            tracing::info!(dropped, joined = ?plan.joining, later = ?plan.later, "replicated layout change settled");
            let more = !plan.later.is_empty();
            let so_far = match done {
                Some(before) => {
                    let mut both = then(before, plan);
                    let ring = Ring::new(store.load().await?.layout);
                    both.ideal_fraction = share_of(&ring, &both.joining);
                    both
                }
                None => plan,
            };
            if !more {
                return Ok((so_far, Vec::new()));
            }
            if cancel.is_set() {
                return Err(JobError::Cancelled(format!(
                    "after {} joined; {} still wait (`shardctl rebalance` admits them)",
                    so_far.joining.join(", "),
                    so_far.later.join(", ")
                ))
                .into());
            }
            done = Some(so_far);
        }
    }
    memring_common::store::update_layout(store, 20, |l| {
        let mut next = l.clone();
        next.epoch += 1;
        next.creation_frozen = true;
        Some(next)
    })
    .await?;
    let (plan, staged) = match plan_at(store, client, change, true).await {
        Ok((plan, Some(staged))) => (plan, staged),
        other => {
            unfreeze(store).await?;
            return other.map(|(plan, _)| (plan, Vec::new()));
        }
    };
    if let Err(e) = crate::failpoint::hit("rebalance.planned").await {
        unfreeze(store).await?;
        return Err(e);
    }
    let reports = run(store, client, &plan, staged, throttle, cancel).await?;
    Ok((plan, reports))
}

/// Lifts a creation freeze if one is set (no change, no epoch bump otherwise).
pub async fn unfreeze(store: &dyn RingStore) -> anyhow::Result<()> {
    memring_common::store::update_layout(store, 20, |l| {
        l.creation_frozen.then(|| {
            let mut next = l.clone();
            next.epoch += 1;
            next.creation_frozen = false;
            next
        })
    })
    .await?;
    Ok(())
}

/// Stages the plan's layout `staged`, migrates every move, and (for a drain) takes the node
/// out.
async fn run(
    store: &dyn RingStore,
    client: &InternalClient,
    plan: &ChangePlan,
    staged: ClusterLayout,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<Vec<MigrationReport>> {
    // Journal the job (a drain's last step, taking the node out, is resumed from it) and every
    // move before staging, so a control plane killed mid-way finishes them.
    let leaving = match &plan.leaving {
        Some(id) => store.load().await?.layout.node(&NodeId::parse(id)?).cloned(),
        None => None,
    };
    crate::resize::record_unreplicated(store, plan.epoch, &plan.joining, leaving).await?;
    let mut keys = Vec::new();
    for m in &plan.moves {
        let partition: PartitionKey = m.partition.parse()?;
        crate::journal::record(
            store,
            &partition,
            &m.from,
            &m.to,
            Flip::Natural,
            memring_common::api::CopyPhase::Pending.into(),
            (0, m.memories),
        )
        .await?;
        keys.push(partition);
    }
    let staged_result = store.compare_and_swap(plan.epoch, &staged).await;
    if staged_result.is_err() {
        for p in &keys {
            let _ = store.delete_job(&crate::journal::job_id(p)).await;
        }
        let _ = store.delete_job(crate::resize::JOB_ID).await;
        unfreeze(store).await?;
    }
    match staged_result {
        Ok(_) => {}
        Err(StoreError::Conflict { current, .. }) => bail!(
            "the layout changed since the plan (epoch {} → {}); plan again",
            plan.epoch,
            current.layout.epoch
        ),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(epoch = staged.epoch, moves = plan.moves.len(), "layout staged; migrating");
    let mut reports = Vec::new();
    for (i, (m, partition)) in plan.moves.iter().zip(&keys).enumerate() {
        let report = if cancel.is_set() {
            Err(JobError::Cancelled(format!("before the move of {partition}")).into())
        } else {
            let to = NodeId::parse(&m.to)?;
            migrate_partition(store, client, partition, &to, Flip::Natural, throttle, cancel).await
        };
        if let Err(e) = &report
            && cancel.is_set()
        {
            // The rest stay pinned where their data is (staging pins); nothing is half-moved
            // (a cancelled migration has dropped its own journal record already).
            for p in &keys[i..] {
                store.delete_job(&crate::journal::job_id(p)).await?;
            }
            store.delete_job(crate::resize::JOB_ID).await?;
            bail!(
                "{e:#}; {i} of {} moves were done, the other partitions stay where they are \
                 (pinned) and `shardctl rebalance` finishes the job",
                keys.len()
            );
        }
        reports.push(report?);
    }
    if let Some(node) = &plan.leaving {
        let id = NodeId::parse(node)?;
        memring_common::store::update_layout(store, 20, |l| {
            l.node(&id).is_some().then(|| l.without_node(&id))
        })
        .await?;
        tracing::info!(node = %id, "node drained and out of the ring");
    }
    store.delete_job(crate::resize::JOB_ID).await?;
    Ok(reports)
}
