//! A rebalance's join and a drain, at every replication factor, as one layout change by the rule
//! of `reconcile.rs` (docs/one-engine.md), the change a move of one partition makes too, with
//! nodes instead of a pin:
//!
//! 1. **stage** ([`ResizePhase::Staging`]): the joiners enter the layout, or the drained node
//!    leaves it, staged. Every partition's old set still leads it and takes its write quorums;
//!    each member of a new set follows the old owner (a drained node keeps leading what it owned
//!    until the flip). A copy that holds nothing is filled from the owner's snapshot, paced at
//!    the layout's `fill_rate`, and then takes the owner's HNSW graph
//!    (`shard-node/src/replicate/sync.rs`).
//! 2. **flip** ([`ResizePhase::Flipping`]): once every live member of every set the change
//!    moves holds its old owner's log (the partitions listed behind a barrier at the staged
//!    epoch, `reconcile::moving`), the new layout leads. The members the change took out are
//!    retiring copies, asked by every take-over until the end.
//! 3. **settle** ([`ResizePhase::Settling`]): once the new sets hold their owners' logs, the
//!    transition ends (`reconcile::end_transition`), and the copies held outside the new sets
//!    (the members a join displaced, everything on the drained node) are dropped by the one rule
//!    of `copies.rs`.
//!
//! Each step is journaled (one record, [`JOB_ID`]) before it runs, and passes the failpoint of
//! its step of the one engine (`reconcile.stage`, `reconcile.flip`; `reconcile.end` in the
//! end's every look), so the next active control plane finishes a job the last one was killed
//! in ([`resume`]) by taking the steps from the one recorded. A cancel before the flip undoes
//! the stage (`reconcile::unstage`: the joiners leave, the drained node returns; the old sets
//! never stopped leading), and the copies the joiners made are dropped; after it, the janitor
//! ends the transition.
//!
//! Nothing else is needed for a partition first written while the change is staged: its old
//! owner creates it, its new set follows, and the flip and the end look at it like any other.

use anyhow::bail;
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, NodeId, Ring};

use serde::{Deserialize, Serialize};

use crate::copies::{self, PATIENCE};
use crate::job::{Cancel, JobError, Throttle, wait};
use crate::reconcile;

/// The journal id of the running rebalance or drain (one runs at a time).
pub const JOB_ID: &str = "resize";
/// Format 2: the steps of the one engine. A format-1 record (an older control plane's join,
/// hand-over and removal steps) is finished by [`resume`] too.
const JOB_FORMAT_VERSION: u32 = 2;

/// The step a rebalance or drain record says was started last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePhase {
    /// The staged layout is being written (compare-and-swap).
    Staging,
    /// Waiting for the new sets to hold their old owners' logs, then flipping.
    Flipping,
    /// Waiting for the new sets to hold their new owners' logs, then ending the transition and
    /// dropping the copies outside the new sets.
    Settling,
    /// Format 1, without replication: the moves were journaled one by one (`journal.rs`).
    Migrating,
    /// Format 1: waiting for joining nodes to be handed their leadership.
    Joining,
    /// Format 1: a drained node handing its leadership over.
    HandingOver,
    /// Format 1: a drained node leaving the layout.
    Removing,
}

impl ResizePhase {
    /// The steps of a change, in order.
    const STEPS: [ResizePhase; 3] =
        [ResizePhase::Staging, ResizePhase::Flipping, ResizePhase::Settling];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ResizePhase::Staging => "staging",
            ResizePhase::Flipping => "flipping",
            ResizePhase::Settling => "settling",
            ResizePhase::Migrating => "migrating",
            ResizePhase::Joining => "joining",
            ResizePhase::HandingOver => "handing_over",
            ResizePhase::Removing => "removing",
        }
    }

    /// The failpoint passed once the step is journaled (the end passes `reconcile.end` in each
    /// of its looks instead).
    fn failpoint(self) -> Option<&'static str> {
        match self {
            ResizePhase::Staging => Some("reconcile.stage"),
            ResizePhase::Flipping => Some("reconcile.flip"),
            _ => None,
        }
    }
}

impl std::fmt::Display for ResizePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The journal record of a rebalance or drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeJob {
    /// Record format.
    pub format_version: u32,
    /// The epoch the plan was made at (the stage expects it).
    pub planned_at: u64,
    /// Nodes entering the layout.
    pub joining: Vec<String>,
    /// The node being drained, with its address (kept to drop its copies once it is out).
    pub leaving: Option<LayoutNode>,
    /// The drained node was marked down when the change was staged (a node that will not
    /// return): the change took it out as down (`Transition::down`), and its copies, which it
    /// cannot be asked to drop, are left where they are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving_down: bool,
    /// The step started last.
    pub phase: ResizePhase,
    /// When it was recorded, unix ms.
    pub at_ms: i64,
}

impl ResizeJob {
    async fn record(&mut self, store: &dyn RingStore, phase: ResizePhase) -> anyhow::Result<()> {
        self.phase = phase;
        self.format_version = JOB_FORMAT_VERSION;
        self.at_ms = memring_common::clock::now_millis();
        store.put_job(JOB_ID, &serde_json::to_vec(self)?).await?;
        tracing::info!(%phase, joining = ?self.joining, leaving = ?self.leaving.as_ref().map(|n| &n.id), "layout change");
        match phase.failpoint() {
            Some(point) => crate::failpoint::hit(point).await,
            None => Ok(()),
        }
    }

    /// Whether `layout` shows this job's change made: its joiners in, its drained node out.
    fn made_in(&self, layout: &ClusterLayout) -> bool {
        let joined = self
            .joining
            .iter()
            .all(|j| NodeId::parse(j).is_ok_and(|id| layout.node(&id).is_some()));
        let drained = self.leaving.as_ref().is_none_or(|n| layout.node(&n.id).is_none());
        layout.epoch > self.planned_at && joined && drained
    }
}

/// The journaled rebalance or drain, if one is unfinished.
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

/// Whether a journaled job (a migration, a join or a drain) waits to be finished: its
/// resumption owns the cluster until it is done, so a job the control plane would start by
/// itself (the autopilot's, failover's replacement) waits.
pub async fn journaled(store: &dyn RingStore) -> anyhow::Result<bool> {
    Ok(pending(store).await?.is_some() || !crate::journal::pending(store).await?.is_empty())
}

/// A planned join or drain.
pub struct Planned {
    /// The epoch it was planned at.
    pub epoch: u64,
    /// Nodes entering the layout.
    pub joining: Vec<String>,
    /// The node leaving it.
    pub leaving: Option<String>,
    /// The layout it makes: the joiners in, or the drained node out.
    pub layout: ClusterLayout,
}

/// Carries out a join or drain, staged only if the layout is still the one it was planned at
/// (see the module notes). New copies are filled at `throttle`. Returns how many copies outside
/// the new sets were dropped.
pub async fn run(
    store: &dyn RingStore,
    client: &InternalClient,
    planned: Planned,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let Planned { epoch, joining, leaving, layout: change } = planned;
    let before = store.load().await?.layout;
    let leaving = leaving
        .map(|id| {
            NodeId::parse(&id)
                .ok()
                .and_then(|id| before.node(&id).cloned())
                .ok_or_else(|| anyhow::anyhow!("node {id} is not in the ring layout"))
        })
        .transpose()?;
    let leaving_down = leaving.as_ref().is_some_and(|n| before.states.get(&n.id).is_marked_down());
    let mut job = ResizeJob {
        format_version: JOB_FORMAT_VERSION,
        planned_at: epoch,
        joining,
        leaving,
        leaving_down,
        phase: ResizePhase::Staging,
        at_ms: 0,
    };
    job.record(store, ResizePhase::Staging).await?;
    let stored =
        reconcile::stage(store, throttle, |l| (l.epoch == epoch).then(|| change.clone())).await?;
    let ours =
        stored.as_ref().is_some_and(|s| reconcile::staged(&s.layout) && job.made_in(&s.layout));
    if !ours {
        store.delete_job(JOB_ID).await?;
        let now = store.load().await?.layout;
        bail!("the layout changed since the plan (epoch {epoch} → {}); plan again", now.epoch);
    }
    tracing::info!(epoch = epoch + 1, joining = ?job.joining, leaving = ?job.leaving.as_ref().map(|n| &n.id), "layout change staged; the new sets follow the old owners");
    finish(store, client, job, cancel).await
}

/// Finishes a journaled rebalance or drain the last active control plane left (at start-up,
/// before serving changes). Returns whether there was one.
pub async fn resume(
    store: &dyn RingStore,
    client: &InternalClient,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<bool> {
    let Some(mut job) = pending(store).await? else { return Ok(false) };
    tracing::warn!(phase = %job.phase, joining = ?job.joining, leaving = ?job.leaving.as_ref().map(|n| &n.id), "resuming a layout change");
    let layout = store.load().await?.layout;
    match job.phase {
        ResizePhase::Staging if !job.made_in(&layout) => {
            // Killed around the stage: it never happened.
            store.delete_job(JOB_ID).await?;
            tracing::warn!("the layout change was never staged; nothing to finish");
            return Ok(true);
        }
        ResizePhase::Migrating | ResizePhase::HandingOver | ResizePhase::Removing
            if job.leaving.as_ref().is_some_and(|n| layout.node(&n.id).is_some()) =>
        {
            // Format 1: a drain whose node is still in the layout is staged again, now.
            let Some(id) = job.leaving.as_ref().map(|n| n.id.clone()) else { return Ok(true) };
            store.delete_job(JOB_ID).await?;
            if layout.transition.is_some() {
                bail!("a format-1 drain of {id} meets a change in flight; run the drain again");
            }
            let planned = Planned {
                epoch: layout.epoch,
                joining: Vec::new(),
                leaving: Some(id.to_string()),
                layout: layout.without_node(&id),
            };
            run(store, client, planned, throttle, cancel).await?;
            return Ok(true);
        }
        ResizePhase::Migrating | ResizePhase::Joining | ResizePhase::HandingOver => {
            // Format 1, the change made: failover hands joiners their leadership; what is left
            // is to settle.
            job.phase = ResizePhase::Settling;
        }
        ResizePhase::Removing => job.phase = ResizePhase::Settling,
        ResizePhase::Staging | ResizePhase::Flipping | ResizePhase::Settling => {}
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
                ResizePhase::Flipping => flip(store, client, &job, cancel).await?,
                ResizePhase::Settling => {
                    let gone = job.leaving.as_ref().filter(|_| !job.leaving_down);
                    return settle(store, client, gone, cancel).await;
                }
                _ => {}
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

/// Waits until the staged change can flip, and flips it; a cancel before the flip undoes it.
async fn flip(
    store: &dyn RingStore,
    client: &InternalClient,
    job: &ResizeJob,
    cancel: &Cancel,
) -> anyhow::Result<()> {
    let looks = reconcile::Looks::default();
    let flipped = wait(cancel, "the new replica sets to hold their old owners' logs", || {
        reconcile::flip(store, client, &looks)
    })
    .await;
    let Err(e) = flipped else {
        tracing::info!(joining = ?job.joining, "layout change flipped; the new sets lead");
        return Ok(());
    };
    let layout = store.load().await?.layout;
    if cancel.is_set() && reconcile::staged(&layout) && job.made_in(&layout) {
        reconcile::unstage(store).await?;
        // The copies the joiners made: on nodes outside the layout now.
        let joiners: Vec<LayoutNode> = job
            .joining
            .iter()
            .filter_map(|j| NodeId::parse(j).ok())
            .filter_map(|id| layout.node(&id).cloned())
            .collect();
        let dropped = drop_outside(store, client, &joiners).await?;
        tracing::warn!(dropped, "layout change cancelled before its flip: undone");
        return Err(JobError::Cancelled(format!(
            "before the new replica sets led; the layout is as it was (the copies {} had \
             made are dropped)",
            job.joining.join(", ")
        ))
        .into());
    }
    Err(e)
}

/// Waits until every set holds its owner's log and ends the transition
/// (`reconcile::end_transition`), then drops the copies held outside the new sets (on `gone`
/// too, a node just taken out). Returns how many were dropped.
async fn settle(
    store: &dyn RingStore,
    client: &InternalClient,
    gone: Option<&LayoutNode>,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let looks = reconcile::Looks::default();
    wait(cancel, "every replica set to hold its owner's log", || {
        reconcile::end_transition(store, client, &looks)
    })
    .await?;
    drop_outside(store, client, gone.into_iter().cloned().collect::<Vec<_>>().as_slice()).await
}

/// Drops, by the one rule of `copies.rs`, every copy held outside its partition's holders on
/// the layout's nodes (those not marked down: the janitor sweeps a node once it is back) and on
/// `outside` (nodes not in the layout, which no sweep lists: one that cannot be listed fails the
/// call). A copy the rule keeps is left for the janitor. Returns how many were dropped.
async fn drop_outside(
    store: &dyn RingStore,
    client: &InternalClient,
    outside: &[LayoutNode],
) -> anyhow::Result<usize> {
    let layout = store.load().await?.layout;
    let mut nodes: Vec<LayoutNode> = reconcile::listable(&layout).cloned().collect();
    nodes.extend(outside.iter().filter(|n| layout.node(&n.id).is_none()).cloned());
    let swept = copies::drop_outside(store, client, &Ring::new(layout), &nodes, PATIENCE).await?;
    if let Some(id) = swept.unlisted.iter().find(|id| outside.iter().any(|n| n.id == **id)) {
        bail!("{id}, out of the layout, could not be listed to drop its copies; run the job again");
    }
    Ok(swept.dropped)
}
