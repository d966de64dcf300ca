//! Rebalance after nodes join, and drain before a node leaves: plan what the new ring
//! requires, then carry it out as one layout change of the one engine (`resize.rs`, by the
//! rule of `reconcile.rs`): staged with the old sets leading while the new members fill, flipped
//! once they hold their old owners' logs, ended once they hold the new owners'.
//!
//! - Only what the new ring requires moves (the plan's moves; each partition's new members
//!   follow its old owner).
//! - Placement overrides (pinned tenants) are respected: a pinned partition does not move
//!   unless its pin is on the drained node.
//! - The stage is one compare-and-swap on the epoch the plan was made at; a concurrent layout
//!   change makes the plan stale and the run refuses (plan again).
//! - No partition can be missed: one first written while the change is staged is created by
//!   its old owner and followed by its new set, like every other.

use anyhow::{Context, bail};
use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, PinKind};
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, NodeId, Ring};
use serde::{Deserialize, Serialize};

use crate::job::{Cancel, Throttle};
use crate::placement::{self, Holdings};
use memring_common::api::{ChangePlan, MigrationReport};

/// A layout change to plan for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Put every live node that is not in the ring into it.
    Join,
    /// Move everything off this node and take it out of the ring.
    Drain(String),
}

/// Every partition each node not marked down holds data for, with its memories there.
async fn holdings(layout: &ClusterLayout, client: &InternalClient) -> anyhow::Result<Holdings> {
    let mut out = Holdings::new();
    // A node marked down is in no quorum: its sets' live members hold every acknowledged write.
    for node in crate::reconcile::listable(layout) {
        let list = crate::shard_client::partitions(client, &node.addr, None)
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
    Ok(plan_at(store, client, change).await?.0)
}

/// Plans `change`. Returns the plan and the layout the change makes (none when nothing
/// changes): the joiners in, or the drained node out with its pins released.
async fn plan_at(
    store: &dyn RingStore,
    client: &InternalClient,
    change: &Change,
) -> anyhow::Result<(ChangePlan, Option<ClusterLayout>)> {
    let layout = store.load().await?.layout;
    let leaver = match change {
        Change::Drain(node) => Some(NodeId::parse(node)?),
        Change::Join => None,
    };
    if let Some(why) = placement::unsettled(&layout, leaver.as_ref()) {
        bail!("{why}");
    }
    let mut next = layout.clone();
    next.creation_frozen = false;
    // Partitions an older control plane's cancelled rebalance left pinned where their data is
    // are planned afresh.
    next.pins.retain(|_, pin| pin.kind != PinKind::Staging);
    let (mut joining, mut leaving) = (Vec::new(), None);
    match change {
        Change::Join => {
            let mut waiting: Vec<_> = store
                .live_nodes()
                .await?
                .into_iter()
                .filter(|record| layout.node(&record.id).is_none())
                .collect();
            waiting.sort_by(|a, b| a.id.cmp(&b.id));
            for record in waiting {
                joining.push(record.id.to_string());
                next = next.with_node(LayoutNode { id: record.id, addr: record.addr });
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
            next = next.without_node(&id);
            leaving = Some(id.to_string());
        }
    }
    next.epoch = layout.epoch;
    let (now, end) = (Ring::new(layout.clone()), Ring::new(next.clone()));
    let held = holdings(&layout, client).await?;
    let moves = placement::copies_to_make(&now, &end, &held);
    let sizes: Vec<u64> = held.iter().map(|(p, on)| placement::size(&now, p, on)).collect();
    let memories: u64 = sizes.iter().sum();
    let moved: u64 = moves.iter().map(|m| m.memories).sum();
    let copies = memories * u64::from(layout.replication_factor.max(1));
    let ideal_fraction = match change {
        Change::Join => share_of(&end, &joining),
        Change::Drain(node) => share_of(&now, std::slice::from_ref(node)),
    };
    let changes_something = !joining.is_empty()
        || leaving.is_some()
        || layout.pins.of(PinKind::Staging).next().is_some()
        || layout.creation_frozen;
    let plan = ChangePlan {
        epoch: layout.epoch,
        joining,
        later: Vec::new(),
        leaving,
        moves,
        partitions: sizes.iter().filter(|n| **n > 0).count(),
        memories,
        moved_fraction: if copies == 0 { 0.0 } else { moved as f64 / copies as f64 },
        ideal_fraction,
    };
    Ok((plan, changes_something.then_some(next)))
}

/// The nodes' `ids` share of `ring`'s key space.
fn share_of(ring: &Ring, ids: &[String]) -> f64 {
    ring.shares().iter().filter(|(id, _)| ids.iter().any(|j| j == id.as_str())).map(|s| s.1).sum()
}

/// Carries out `change`: plans it, and runs the layout change it makes (`resize.rs`). The
/// migrations of the report are none: no partition is moved on its own.
pub async fn execute(
    store: &dyn RingStore,
    client: &InternalClient,
    change: &Change,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<(ChangePlan, Vec<MigrationReport>)> {
    let (plan, next) = plan_at(store, client, change).await?;
    let Some(next) = next else { return Ok((plan, Vec::new())) };
    let planned = crate::resize::Planned {
        epoch: plan.epoch,
        joining: plan.joining.clone(),
        leaving: plan.leaving.clone(),
        layout: next,
    };
    let dropped =
        crate::resize::run(store, client, planned, throttle, cancel).await.with_context(|| {
            match &plan.leaving {
                Some(node) => format!("draining {node}"),
                None => format!("admitting {}", plan.joining.join(", ")),
            }
        })?;
    tracing::info!(dropped, joined = ?plan.joining, leaving = ?plan.leaving, "layout change settled");
    Ok((plan, Vec::new()))
}

/// Lifts a creation freeze an older control plane left (no change, no epoch bump otherwise).
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
