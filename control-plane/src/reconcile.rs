//! One layout change carried out by the rule of docs/one-engine.md, whatever the replication
//! factor. Each step is one compare-and-swap of the layout, and the layout's [`Transition`] says
//! how far a change got, so a run that stopped anywhere is finished by taking the same steps
//! again:
//!
//! 1. **stage** ([`stage`]): the layout shows the change, staged (`TransitionPhase::OldLeads`).
//!    Each partition's owner is still its owner before the change, a write's quorum is W of
//!    the old set, and every member of the new set follows that owner (at R = 1 the new node is
//!    the only follower, filled from a snapshot where the log is trimmed). Undone by
//!    [`unstage`], which puts the old pins back.
//! 2. **flip** ([`flip`]): once the old owner of every partition the change moves has taken its
//!    writes over at the staged layout and every live member of the new set holds its log, the
//!    new layout leads (`NewLeads`). The copies the change took out are *retiring*: every
//!    take-over asks them until the end, so a write the old owner took after the members'
//!    positions were read is still found. The old owner hands its writes over first, so none is
//!    left waiting on it.
//! 3. **end** ([`end_transition`]): once every owner of a partition with a retiring copy has
//!    taken its writes over and every live member holds its log, the transition goes; the
//!    retiring copies are then dropped by the one rule of `copies.rs`.
//!
//! The model check of `shard-node/src/replicate/model.rs` (`Membership::Staged`) explores these
//! three steps at R = 1 and R = 3; the checks here are the ones it makes before its `Flip` and
//! `Settle` steps (`caught_up_under_owner`).

use std::collections::{BTreeMap, BTreeSet};

use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, Transition, TransitionPhase};
use memring_common::store::{RingStore, StoreError, Versioned, update_layout};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

use futures::future::join_all;

use crate::job::Throttle;
use crate::shard_client as shard;

/// How many partitions a step asks the shard nodes about at once (their hand-overs, their
/// positions): a change that moves thousands costs round trips divided by this, not summed.
const CONCURRENT: usize = 16;

/// Stages the change `change` makes to the layout (epoch + 1), if no other change is in
/// flight; `change` answers `None` when there is nothing to stage (done before). The copies it
/// makes are filled at `throttle` (the layout's `fill_rate`). Returns the layout stored, or
/// `None` if another change is in flight.
pub async fn stage(
    store: &dyn RingStore,
    throttle: Throttle,
    change: impl Fn(&ClusterLayout) -> Option<ClusterLayout> + Send + Sync,
) -> anyhow::Result<Option<Versioned>> {
    let mut busy = false;
    let stored = update_layout(store, 20, |l| {
        busy = false;
        let mut next = change(l)?;
        busy = l.transition.is_some();
        if busy {
            return None;
        }
        next.epoch = l.epoch + 1;
        next.transition = Some(Transition::staged(l, &next));
        next.fill_rate = (throttle.memories_per_sec > 0).then_some(throttle.memories_per_sec);
        Some(next)
    })
    .await?;
    Ok((!busy).then_some(stored))
}

/// Whether `layout` has a staged change (the old layout still leads).
pub fn staged(layout: &ClusterLayout) -> bool {
    layout.transition.as_ref().is_some_and(|t| t.phase == TransitionPhase::OldLeads)
}

/// Whether the change in flight in `layout` set (moved or removed) the pin of `partition`.
pub fn touches(layout: &ClusterLayout, partition: &PartitionKey) -> bool {
    layout.transition.as_ref().is_some_and(|t| t.pins.contains_key(partition))
}

/// Undoes a staged change (epoch + 1): the nodes and the pins it set get their old values
/// back (a joiner goes, a drained node returns), and the transition goes. Nothing if no change
/// is staged (a flipped one is finished, never undone).
pub async fn unstage(store: &dyn RingStore) -> anyhow::Result<()> {
    update_layout(store, 20, |l| {
        let t = l.transition.as_ref().filter(|_| staged(l))?;
        let mut next = l.clone();
        next.epoch += 1;
        if t.nodes != l.nodes {
            for joiner in l.nodes.iter().filter(|n| t.nodes.iter().all(|m| m.id != n.id)) {
                next.states.remove(&joiner.id);
            }
            next.nodes = t.nodes.clone();
        }
        for (p, old) in &t.pins {
            match old {
                Some(pin) => next.pins.set(p.clone(), pin.node.clone(), pin.kind),
                None => {
                    next.pins.remove(p);
                }
            }
        }
        next.transition = None;
        Some(next)
    })
    .await?;
    Ok(())
}

/// The partitions the change in flight in `ring`'s layout moves ([`Ring::moving`]): those whose
/// pin it set, and for a change of nodes every partition whose set it changes, as listed by
/// every node of the layouts before and after it once it has seen this epoch (a node that
/// cannot be listed fails the call). A partition created after the listing is one its new owner
/// takes over asking the old set, as a write the old set acknowledged after the flip's look.
pub async fn moving(client: &InternalClient, ring: &Ring) -> anyhow::Result<Vec<PartitionKey>> {
    let layout = ring.layout();
    let Some(t) = &layout.transition else { return Ok(Vec::new()) };
    if t.nodes == layout.nodes {
        return Ok(t.pins.keys().cloned().collect());
    }
    let gone = t.nodes.iter().filter(|n| layout.node(&n.id).is_none());
    let nodes: Vec<LayoutNode> = listable(layout).chain(gone).cloned().collect();
    let held = positions(client, &nodes, layout.epoch).await?;
    Ok(held.into_keys().filter(|p| ring.moving(p)).collect())
}

/// One look at whether the staged change can flip; if so, and the layout is still the one looked
/// at, flips it (epoch + 1). Returns whether the layout has no staged change left. `partitions`
/// are the ones the change moves (see the module notes for the check).
pub async fn flip(
    store: &dyn RingStore,
    client: &InternalClient,
    partitions: &[PartitionKey],
) -> anyhow::Result<bool> {
    let layout = store.load().await?.layout;
    if !staged(&layout) {
        return Ok(true);
    }
    let ring = Ring::new(layout.clone());
    if !hold_owners_logs(client, &ring, partitions).await? {
        return Ok(false);
    }
    // The partitions whose owner changes: the old one lets the writes it committed reach their
    // quorum and holds new ones back until it sees the flip.
    let mut next = layout.clone();
    next.epoch += 1;
    if let Some(t) = next.transition.as_mut() {
        t.phase = TransitionPhase::NewLeads;
    }
    let flipped = Ring::new(next.clone());
    let handed: Vec<(&PartitionKey, &LayoutNode, &LayoutNode)> = partitions
        .iter()
        .filter_map(|p| Some((p, ring.owner(p)?, flipped.owner(p)?)))
        .filter(|(_, old, new)| old.id != new.id)
        .collect();
    // Several at a time: a write to the first partition handed over waits until the flip is
    // seen.
    for batch in handed.chunks(CONCURRENT) {
        let hand_overs =
            batch.iter().map(|(p, old, _)| shard::hand_over(client, old, p, layout.epoch));
        for ((p, old, _), done) in batch.iter().zip(join_all(hand_overs).await) {
            if let Err(e) = done {
                tracing::warn!(partition = %p, from = %old.id, error = %e, "the old owner did not hand its writes over; flipping anyway");
            }
        }
    }
    if !swapped(store, layout.epoch, &next).await? {
        return Ok(false);
    }
    // The nodes would learn of the flip from the store's watch; told now, the new owner takes
    // the writes over at once, and the old one sends the writes it holds back to the routers
    // (which then read the new layout), so the hand-over's pause is a few round trips. Nothing
    // depends on it: a node not reached learns from the watch.
    for batch in handed.chunks(CONCURRENT) {
        join_all(batch.iter().map(|(p, old, new)| async move {
            if shard::held(client, new, p, next.epoch).await.is_ok() {
                let _ = shard::take_over(client, new, p).await;
            }
            let _ = shard::held(client, old, p, next.epoch).await;
        }))
        .await;
    }
    Ok(true)
}

/// Whether, for each of `partitions`, its owner in `ring` has taken its writes over there and
/// every live member of its set other than the owner holds the owner's log (its last entry,
/// term and position). Looks at [`CONCURRENT`] partitions at a time, and stops after the first
/// batch with one that does not.
async fn hold_owners_logs(
    client: &InternalClient,
    ring: &Ring,
    partitions: impl IntoIterator<Item = &PartitionKey>,
) -> anyhow::Result<bool> {
    let partitions: Vec<&PartitionKey> = partitions.into_iter().collect();
    for batch in partitions.chunks(CONCURRENT) {
        let answers = join_all(batch.iter().map(|p| holds_owners_log(client, ring, p))).await;
        for answer in answers {
            if !answer? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// [`hold_owners_logs`] for one partition.
async fn holds_owners_log(
    client: &InternalClient,
    ring: &Ring,
    p: &PartitionKey,
) -> anyhow::Result<bool> {
    let Some(owner) = ring.owner(p) else { return Ok(false) };
    if shard::take_over(client, owner, p).await.is_err() {
        return Ok(false);
    }
    let at = shard::held(client, owner, p, ring.epoch()).await?;
    for member in live_members(ring, p) {
        if at.last_seq > 0 && !shard::holds(client, &member, p, at.last_seq, at.last_term).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The members of `p`'s set in `ring` other than its owner that are not marked down.
fn live_members(ring: &Ring, p: &PartitionKey) -> Vec<LayoutNode> {
    let owner = ring.owner(p).map(|o| o.id.clone());
    ring.replicas(p)
        .into_iter()
        .filter(|n| !ring.layout().is_down(&n.id) && Some(&n.id) != owner.as_ref())
        .cloned()
        .collect()
}

/// Stores `next` if the layout is still at `epoch`; false (looked at again later) if another
/// change came first.
async fn swapped(store: &dyn RingStore, epoch: u64, next: &ClusterLayout) -> anyhow::Result<bool> {
    match store.compare_and_swap(epoch, next).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One look at whether a flipped change has settled; if so, and the layout is still the one
/// looked at, ends its [`Transition`] (epoch + 1). Returns whether the sets had caught up and no
/// transition is left. A staged change never ends here: it flips first ([`flip`]).
///
/// A partition a retiring copy is asked for is caught up once its owner has taken its writes
/// over in this layout — its log then holds every write acknowledged before the change, the
/// retiring copies' included — and every live member of its new set holds the owner's last
/// entry then (log matching: the whole log up to it). Writes after that are acknowledged by W
/// members of the new set, never by a retiring copy, so the new sets alone hold every
/// acknowledged write and the retiring copies need not be asked any more. The other
/// partitions are caught up once each live member has reached its owner's position.
///
/// A change of pins alone (the nodes are those before it) changed the sets of its pinned
/// partitions only, and only those are looked at; a change of nodes lists every partition.
pub async fn end_transition(
    store: &dyn RingStore,
    client: &InternalClient,
) -> anyhow::Result<bool> {
    crate::failpoint::hit("reconcile.end").await?;
    let layout = store.load().await?.layout;
    let Some(t) = layout.transition.as_ref() else { return Ok(true) };
    if staged(&layout) {
        return Ok(false);
    }
    let ring = Ring::new(layout.clone());
    let caught_up = if t.nodes == layout.nodes {
        hold_owners_logs(client, &ring, t.pins.keys()).await?
    } else {
        every_set_caught_up(client, &ring).await?
    };
    let mut next = layout.clone();
    next.epoch += 1;
    next.transition = None;
    if !caught_up || !swapped(store, layout.epoch, &next).await? {
        return Ok(false);
    }
    tracing::info!(
        epoch = next.epoch,
        "layout change settled: retiring copies are no longer asked"
    );
    Ok(true)
}

/// [`end_transition`]'s check for a change of nodes: every partition held anywhere, as listed
/// by every node that can be listed (and by a drained node already out of the layout, which may
/// hold retiring copies).
async fn every_set_caught_up(client: &InternalClient, ring: &Ring) -> anyhow::Result<bool> {
    let layout = ring.layout();
    let before = layout.transition.iter().flat_map(|t| &t.nodes);
    let nodes: Vec<LayoutNode> =
        listable(layout).chain(before.filter(|n| layout.node(&n.id).is_none())).cloned().collect();
    let first = positions(client, &nodes, layout.epoch).await?;
    let retiring: BTreeSet<PartitionKey> =
        first.keys().filter(|p| !ring.retiring(p).is_empty()).cloned().collect();
    if !hold_owners_logs(client, ring, &retiring).await? {
        return Ok(false);
    }
    // Owners' positions first, members' after.
    let then = positions(client, &nodes, layout.epoch).await?;
    let at = |on: &BTreeMap<NodeId, (u64, u64)>, p: &PartitionKey| {
        ring.owner(p).and_then(|o| on.get(&o.id)).copied().unwrap_or((0, 0))
    };
    Ok(first.iter().filter(|(p, _)| !retiring.contains(p)).all(|(p, on)| {
        let (seq, _) = at(on, p);
        live_members(ring, p)
            .iter()
            .all(|m| then.get(p).and_then(|at| at.get(&m.id)).is_some_and(|m| m.0 >= seq))
    }))
}

/// The nodes of `layout` a settle lists: all but those marked down (nobody waits on them).
pub fn listable(layout: &ClusterLayout) -> impl Iterator<Item = &LayoutNode> {
    layout.nodes.iter().filter(|n| !layout.states.get(&n.id).is_marked_down())
}

/// Each partition's log position `(last_seq, last_term)` on each node that holds it, listed
/// once each node has seen layout `epoch` (a node that cannot be listed fails the call).
async fn positions(
    client: &InternalClient,
    nodes: &[LayoutNode],
    epoch: u64,
) -> anyhow::Result<BTreeMap<PartitionKey, BTreeMap<NodeId, (u64, u64)>>> {
    let mut out: BTreeMap<PartitionKey, BTreeMap<NodeId, (u64, u64)>> = BTreeMap::new();
    for node in nodes {
        let list = shard::partitions(client, &node.addr, Some(epoch)).await?;
        for p in list.partitions {
            out.entry(p.partition).or_default().insert(node.id.clone(), (p.last_seq, p.last_term));
        }
    }
    Ok(out)
}
