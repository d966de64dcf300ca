//! Rebalance and drain of a replicated layout. Copies are not migrated one by one: a replica
//! set change is a layout change, and the new member replays its primary's log (the follower
//! path of `shard-node/src/replicate.rs`). Primaries only change hands through the take-over
//! that failover uses, inside one replica set, so no acknowledged write is lost:
//!
//! - **join**: new nodes enter the layout as *joining* (epoch + 1): they take their places in
//!   replica sets (each set changes by at most one member) and follow, but lead nothing; the
//!   failover loop hands each its leadership once every copy it holds is checked and caught up,
//!   and it then takes its partitions' writes over from the copies that served meanwhile;
//! - **drain**: the node is marked draining (epoch + 1): it stays in its replica sets but is
//!   never a primary; each of its partitions' new owner is told to take over now; then the node
//!   leaves the layout (epoch + 1) and its sets take the next node in, which replays;
//! - **transition** (both): the layout that takes members out of sets (the join's staging, the
//!   drained node's removal) keeps the nodes before it as its `Transition`, so the members taken
//!   out stay *retiring* copies that every take-over asks — a write the old set acknowledged
//!   may be on one of them alone (the model of `shard-node/src/replicate/model.rs`, with
//!   `Membership::Forgotten`, finds the loss without it);
//! - **settle** (both): once every partition with a retiring copy was taken over by its owner
//!   in the new layout and every live member of every replica set has caught up with its owner,
//!   the transition ends (`reconcile::end_transition`, epoch + 1; the janitor ends one a cancelled job
//!   left), and copies on nodes outside the set (the member a join displaced, the drained node)
//!   are dropped by the one rule of `copies.rs`.
//!
//! Each step is journaled (one record, [`JOB_ID`]) before it runs and passes a failpoint
//! (`resize.<phase>`), so the next active control plane finishes a job the last one was killed
//! in ([`resume`]); every step is idempotent, so resuming just runs the rest from the phase
//! recorded. A cancel stops the waiting steps and leaves the staged layout (failover still hands
//! joining nodes their leadership; running the drain again finishes a drain).

use anyhow::bail;
use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, NodeState, Transition};
use memring_common::store::{RingStore, update_layout};
use memring_common::{ClusterLayout, NodeId, Ring};

use serde::{Deserialize, Serialize};

use crate::copies::{self, Held, Outcome, PATIENCE};
use crate::job::{Cancel, wait};
use crate::reconcile::{self, end_transition};

/// The journal id of the running rebalance or drain (one runs at a time).
pub const JOB_ID: &str = "resize";
const JOB_FORMAT_VERSION: u32 = 1;

/// The step a rebalance or drain record says was started last (its wire name, snake_case, is also
/// the failpoint's: `resize.<phase>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePhase {
    /// Without replication: the moves are journaled one by one (`journal.rs`).
    Migrating,
    /// The staged layout is being written (compare-and-swap).
    Staging,
    /// Waiting for the joining nodes to catch up and lead.
    Joining,
    /// A drained node hands its leadership over.
    HandingOver,
    /// A drained node leaves the layout.
    Removing,
    /// Copies outside the new replica sets are dropped.
    Settling,
}

impl ResizePhase {
    /// The steps of a replicated change, in order.
    const STEPS: [ResizePhase; 5] = [
        ResizePhase::Staging,
        ResizePhase::Joining,
        ResizePhase::HandingOver,
        ResizePhase::Removing,
        ResizePhase::Settling,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ResizePhase::Migrating => "migrating",
            ResizePhase::Staging => "staging",
            ResizePhase::Joining => "joining",
            ResizePhase::HandingOver => "handing_over",
            ResizePhase::Removing => "removing",
            ResizePhase::Settling => "settling",
        }
    }
}

impl std::fmt::Display for ResizePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The journal record of a replicated rebalance or drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeJob {
    /// Record format.
    pub format_version: u32,
    /// The epoch the plan was made at (the staging compare-and-swap expects it).
    pub planned_at: u64,
    /// Nodes entering the layout.
    pub joining: Vec<String>,
    /// The node being drained, with its address (kept to drop its copies once it is out).
    pub leaving: Option<LayoutNode>,
    /// The step started last.
    pub phase: ResizePhase,
    /// When it was recorded, unix ms.
    pub at_ms: i64,
}

impl ResizeJob {
    async fn record(&mut self, store: &dyn RingStore, phase: ResizePhase) -> anyhow::Result<()> {
        self.phase = phase;
        self.at_ms = memring_common::clock::now_millis();
        store.put_job(JOB_ID, &serde_json::to_vec(self)?).await?;
        tracing::info!(%phase, joining = ?self.joining, leaving = ?self.leaving.as_ref().map(|n| &n.id), "replicated layout change");
        crate::failpoint::hit(&format!("resize.{phase}")).await
    }
}

/// Journals a rebalance or drain of a layout without replication (`rebalance.rs`), whose moves
/// are journaled one by one (`journal.rs`): the record (phase `migrating`) is what lets the
/// next control plane take a drained node out once those moves are finished.
pub async fn record_unreplicated(
    store: &dyn RingStore,
    planned_at: u64,
    joining: &[String],
    leaving: Option<LayoutNode>,
) -> anyhow::Result<()> {
    let mut job = ResizeJob {
        format_version: JOB_FORMAT_VERSION,
        planned_at,
        joining: joining.to_vec(),
        leaving,
        phase: ResizePhase::Migrating,
        at_ms: 0,
    };
    job.record(store, ResizePhase::Migrating).await
}

/// The journaled replicated rebalance or drain, if one is unfinished.
pub async fn pending(store: &dyn RingStore) -> anyhow::Result<Option<ResizeJob>> {
    let Some((_, bytes)) = store.jobs().await?.into_iter().find(|(id, _)| id == JOB_ID) else {
        return Ok(None);
    };
    let job: ResizeJob = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("journal record {JOB_ID} is unreadable: {e}"))?;
    anyhow::ensure!(
        job.format_version <= JOB_FORMAT_VERSION,
        "journal record {JOB_ID} has format {}; upgrade memring",
        job.format_version
    );
    Ok(Some(job))
}

/// Carries out a staged join or drain (see the module notes).
pub async fn run(
    store: &dyn RingStore,
    client: &InternalClient,
    epoch: u64,
    staged: ClusterLayout,
    joining: &[String],
    leaving: Option<&str>,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let before = store.load().await?.layout;
    let leaving = leaving
        .map(|id| {
            NodeId::parse(id)
                .ok()
                .and_then(|id| before.node(&id).cloned())
                .ok_or_else(|| anyhow::anyhow!("node {id} is not in the ring layout"))
        })
        .transpose()?;
    let mut job = ResizeJob {
        format_version: JOB_FORMAT_VERSION,
        planned_at: epoch,
        joining: joining.to_vec(),
        leaving,
        phase: ResizePhase::Staging,
        at_ms: 0,
    };
    job.record(store, ResizePhase::Staging).await?;
    match store.compare_and_swap(epoch, &staged).await {
        Ok(_) => {}
        Err(e) => {
            store.delete_job(JOB_ID).await?;
            if let memring_common::store::StoreError::Conflict { current, .. } = e {
                bail!(
                    "the layout changed since the plan (epoch {epoch} → {}); plan again",
                    current.layout.epoch
                );
            }
            return Err(e.into());
        }
    }
    tracing::info!(epoch = staged.epoch, ?joining, "replicated layout change staged");
    finish(store, client, job, cancel).await
}

/// Finishes a journaled replicated rebalance or drain the last active control plane left (at
/// start-up, before serving changes). Returns whether there was one.
pub async fn resume(
    store: &dyn RingStore,
    client: &InternalClient,
    cancel: &Cancel,
) -> anyhow::Result<bool> {
    let Some(job) = pending(store).await? else { return Ok(false) };
    tracing::warn!(phase = %job.phase, joining = ?job.joining, leaving = ?job.leaving.as_ref().map(|n| &n.id), "resuming a layout change");
    if job.phase == ResizePhase::Migrating {
        // Without replication: the journal's moves were finished before this runs; a drained
        // node whose partitions have all moved leaves the layout.
        if let Some(node) = &job.leaving {
            let layout = store.load().await?.layout;
            let staged = layout.states.get(&node.id).is_draining();
            let empty = crate::shard_client::partitions(client, &node.addr, None)
                .await
                .is_ok_and(|l| l.partitions.iter().all(|p| p.count == 0));
            if staged && empty {
                update_layout(store, 20, |l| {
                    l.node(&node.id).is_some().then(|| l.without_node(&node.id))
                })
                .await?;
                tracing::info!(node = %node.id, "node drained and out of the ring");
            }
        }
        store.delete_job(JOB_ID).await?;
        return Ok(true);
    }
    if job.phase == ResizePhase::Staging {
        // Killed around the compare-and-swap: it happened if the layout shows the change.
        let layout = store.load().await?.layout;
        let joined =
            job.joining.iter().all(|j| NodeId::parse(j).is_ok_and(|id| layout.node(&id).is_some()));
        let drained = job
            .leaving
            .as_ref()
            .is_none_or(|n| layout.states.get(&n.id).is_draining() || layout.node(&n.id).is_none());
        if layout.epoch == job.planned_at || !(joined && drained) {
            store.delete_job(JOB_ID).await?;
            tracing::warn!("the replicated layout change was never staged; nothing to finish");
            return Ok(true);
        }
    }
    finish(store, client, job, cancel).await?;
    Ok(true)
}

/// The steps after staging, from the one `job` records.
async fn finish(
    store: &dyn RingStore,
    client: &InternalClient,
    mut job: ResizeJob,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let steps = ResizePhase::STEPS;
    let from = steps.iter().position(|p| *p == job.phase).unwrap_or(0).max(1);
    let outcome = async {
        for phase in steps[from..].iter().copied() {
            job.record(store, phase).await?;
            match phase {
                ResizePhase::Joining => {
                    let ids: Vec<NodeId> =
                        job.joining.iter().filter_map(|j| NodeId::parse(j).ok()).collect();
                    wait(cancel, "the joining nodes to catch up and lead", || async {
                        let layout = store.load().await?.layout;
                        Ok(ids.iter().all(|id| {
                            let state = layout.states.get(id);
                            !state.is_marked_down() && state != NodeState::Joining
                        }))
                    })
                    .await?;
                }
                ResizePhase::HandingOver => {
                    if let Some(node) = &job.leaving {
                        hand_over(store, client, node, cancel).await?;
                    }
                }
                ResizePhase::Removing => {
                    if let Some(node) = &job.leaving {
                        update_layout(store, 20, |l| {
                            let mut next =
                                l.node(&node.id).is_some().then(|| l.without_node(&node.id))?;
                            // Its copies are still asked until the sets it leaves catch up.
                            next.transition = Some(Transition::from_nodes(next.epoch, &l.nodes));
                            Some(next)
                        })
                        .await?;
                        tracing::info!(node = %node.id, "drained node out of the layout");
                    }
                }
                ResizePhase::Settling => {
                    return settle(store, client, job.leaving.as_ref(), cancel).await;
                }
                // Before the steps `finish` runs (it starts after staging).
                ResizePhase::Staging | ResizePhase::Migrating => {}
            }
        }
        Ok(0)
    }
    .await;
    if outcome.is_ok() || cancel.is_set() {
        store.delete_job(JOB_ID).await?;
    }
    outcome
}

/// Makes the owner of every partition `node` holds take its writes over (`node` is draining,
/// so it owns none of them any more). A node already gone holds nothing to hand over.
async fn hand_over(
    store: &dyn RingStore,
    client: &InternalClient,
    node: &LayoutNode,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    if store.load().await?.layout.node(&node.id).is_none() {
        return Ok(());
    }
    let held = crate::shard_client::partitions(client, &node.addr, None).await?;
    for p in held.partitions {
        wait(cancel, "a new owner to take over", || async {
            let ring = Ring::new(store.load().await?.layout);
            let Some(owner) = ring.owner(&p.partition) else { return Ok(false) };
            Ok(crate::shard_client::take_over(client, owner, &p.partition).await.is_ok())
        })
        .await?;
    }
    Ok(())
}

/// Waits until every live member of every replica set has caught up with its owner and ends
/// the layout's transition ([`end_transition`]), then drops the copies held outside replica
/// sets (on `gone` too, a node just taken out) by the rule of `copies.rs`; one it must keep is
/// left for the janitor. Returns how many copies were dropped.
async fn settle(
    store: &dyn RingStore,
    client: &InternalClient,
    gone: Option<&LayoutNode>,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    wait(cancel, "every replica set to catch up", || end_transition(store, client)).await?;
    // Dropped by the one rule (`copies.rs`), under the layout as it is after the wait; a node
    // marked down cannot be asked (the janitor sweeps it once it is back).
    let layout = store.load().await?.layout;
    let mut nodes: Vec<LayoutNode> = reconcile::listable(&layout).cloned().collect();
    nodes.extend(gone.cloned());
    let ring = Ring::new(layout);
    let mut dropped = 0;
    for node in &nodes {
        let list = crate::shard_client::partitions(client, &node.addr, None).await?;
        for p in list.partitions {
            let held = Held::from(&p);
            let outcome =
                copies::drop_when_covered(store, client, &ring, node, &p.partition, held, PATIENCE)
                    .await?;
            dropped += usize::from(outcome == Outcome::Dropped);
        }
    }
    Ok(dropped)
}
