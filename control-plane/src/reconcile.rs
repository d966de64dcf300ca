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

use memring_common::api::ReplicaStep;
use memring_common::internal::InternalClient;
use memring_common::layout::{LayoutNode, NodeState, Transition, TransitionPhase};
use memring_common::store::{RingStore, StoreError, Versioned, update_layout};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

use futures::future::join_all;

use crate::job::Throttle;
use crate::shard_client as shard;

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

/// Undoes a staged change (epoch + 1): the nodes and the pins it set get their old values
/// back (a joiner goes, a drained node returns, marked down if it left so), and the transition
/// goes. Nothing if no change is staged (a flipped one is finished, never undone).
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
            // A drained node the change took out marked down returns marked down.
            for id in &t.down {
                next.states.set(id, NodeState::Down { draining: false });
            }
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
    let nodes = listed_in_change(layout);
    let held = positions(client, &nodes, layout.epoch).await?;
    Ok(held.into_keys().filter(|p| ring.moving(p)).collect())
}

/// One look at whether the staged change can flip; if so, and the layout is still the one looked
/// at, flips it (epoch + 1). Returns whether the layout has no staged change left. The first
/// look at an epoch lists the partitions the change moves ([`moving`]); `looks` keeps those not
/// yet seen caught up for the next (see [`Looks`] for the check).
pub async fn flip(
    store: &dyn RingStore,
    client: &InternalClient,
    looks: &Looks,
) -> anyhow::Result<bool> {
    let layout = store.load().await?.layout;
    if !staged(&layout) {
        return Ok(true);
    }
    let ring = Ring::new(layout.clone());
    let left = match looks.take(ring.epoch()) {
        Some(left) => left,
        None => {
            let moving = moving(client, &ring).await?;
            looks.start(ring.epoch(), moving.clone());
            moving
        }
    };
    if !look(client, &ring, looks, left).await {
        return Ok(false);
    }
    let partitions = looks.moving();
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
    // One request per old owner: a write to the first partition handed over waits until the
    // flip is seen, so the hand-overs of a large change must not be made one by one.
    let olds = shard::by_node(handed.iter().map(|(p, old, _)| ((*old).clone(), (*p).clone())));
    let asked = olds
        .iter()
        .map(|(old, ps)| shard::batch(client, old, ReplicaStep::HandOver, layout.epoch, ps));
    for ((old, ps), answer) in olds.iter().zip(join_all(asked).await) {
        let failed = match answer {
            Ok(results) => results.iter().filter(|r| r.is_err()).count(),
            Err(e) => {
                tracing::warn!(from = %old.id, error = %e, "the old owner did not answer its hand-overs");
                ps.len()
            }
        };
        if failed > 0 {
            tracing::warn!(from = %old.id, failed, "the old owner did not hand every partition's writes over; flipping anyway");
        }
    }
    if !swapped(store, layout.epoch, &next).await? {
        return Ok(false);
    }
    // The nodes would learn of the flip from the store's watch; told now, the new owners take
    // the writes over at once, and the old ones send the writes they hold back to the routers
    // (which then read the new layout), so the hand-over's pause is a few round trips. Nothing
    // depends on it: a node not reached learns from the watch.
    let news = shard::by_node(handed.iter().map(|(p, _, new)| ((*new).clone(), (*p).clone())));
    let takes = news
        .iter()
        .map(|(new, ps)| shard::batch(client, new, ReplicaStep::TakeOver, next.epoch, ps));
    let tells = olds
        .iter()
        .map(|(old, _)| shard::batch(client, old, ReplicaStep::Position, next.epoch, &[]));
    futures::future::join(join_all(takes), join_all(tells)).await;
    Ok(true)
}

/// What the looks of one step (a flip, an end) found so far: the partitions it checks, listed
/// at one epoch, and those not yet seen caught up. A look asks only about those left, a chunk
/// at a time, and stops after the first chunk with one still behind, so a look costs what is
/// left of the change, not what the change moves, nor what the nodes hold.
///
/// A partition once seen caught up is not asked about again at that epoch. That is safe: the
/// checks are about how far behind the new sets are, not about which writes they hold. Every
/// write acknowledged after a partition's check is on W copies of its old set before the flip,
/// and the new owner's take-over asks those copies, retiring, until the end; after the flip
/// every write is on W copies of the new set. A new epoch (a node marked down, another change)
/// starts the step's checks over.
#[derive(Debug, Default)]
pub struct Looks(parking_lot::Mutex<Option<Seen>>);

/// [`Looks`]'s state.
#[derive(Debug, Default)]
struct Seen {
    epoch: u64,
    /// Every partition the step checks.
    checked: Vec<PartitionKey>,
    /// Those not yet seen caught up.
    left: Vec<PartitionKey>,
}

impl Looks {
    /// The partitions left to check at `epoch`, if an earlier look listed them at it.
    fn take(&self, epoch: u64) -> Option<Vec<PartitionKey>> {
        let mut seen = self.0.lock();
        seen.as_mut().filter(|s| s.epoch == epoch).map(|s| std::mem::take(&mut s.left))
    }

    /// Starts over at `epoch`, checking `partitions`.
    fn start(&self, epoch: u64, partitions: Vec<PartitionKey>) {
        *self.0.lock() = Some(Seen { epoch, checked: partitions, left: Vec::new() });
    }

    /// Keeps `left` as the partitions still to check at `epoch`.
    fn keep(&self, epoch: u64, left: Vec<PartitionKey>) {
        if let Some(seen) = self.0.lock().as_mut().filter(|s| s.epoch == epoch) {
            seen.left = left;
        }
    }

    /// Every partition the step checks.
    fn moving(&self) -> Vec<PartitionKey> {
        self.0.lock().as_ref().map(|s| s.checked.clone()).unwrap_or_default()
    }
}

/// How many partitions one look asks about before it decides whether to go on.
const LOOK_CHUNK: usize = 2048;

/// Checks `left` ([`lagging`]) a chunk at a time, stopping after the first chunk with one
/// behind, and keeps those behind and those not asked in `looks`. Returns whether none is left.
async fn look(
    client: &InternalClient,
    ring: &Ring,
    looks: &Looks,
    left: Vec<PartitionKey>,
) -> bool {
    let mut still = Vec::new();
    let mut rest = left.as_slice();
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(LOOK_CHUNK));
        let behind = lagging(client, ring, chunk).await;
        still.extend(chunk.iter().filter(|p| behind.contains(*p)).cloned());
        rest = after;
        if !behind.is_empty() {
            still.extend_from_slice(rest);
            break;
        }
    }
    let done = still.is_empty();
    looks.keep(ring.epoch(), still);
    done
}

/// Those of `partitions` whose owner in `ring` has not taken its writes over there, or one of
/// whose live members other than the owner does not hold the owner's log (its last entry, term
/// and position: log matching). Each node is asked once per round (`shard::batch`): first the
/// positions alone, owners then members, so a partition whose members are still filling costs
/// its owner no take-over; then, for the others, the owners take their writes over and the
/// members are asked again. A node that does not answer leaves its partitions behind.
async fn lagging(
    client: &InternalClient,
    ring: &Ring,
    partitions: &[PartitionKey],
) -> BTreeSet<PartitionKey> {
    let epoch = ring.epoch();
    let owned: Vec<(LayoutNode, PartitionKey)> =
        partitions.iter().filter_map(|p| Some((ring.owner(p)?.clone(), p.clone()))).collect();
    let owners = shard::positions_of(client, epoch, ReplicaStep::Position, &owned).await;
    let members =
        shard::positions_of(client, epoch, ReplicaStep::Position, &members_of(ring, &owned)).await;
    let filled: Vec<(LayoutNode, PartitionKey)> = owned
        .into_iter()
        .filter(|(owner, p)| {
            let Some(at) = owners.get(&(owner.id.clone(), p.clone())) else { return false };
            live_members(ring, p).iter().all(|m| {
                members.get(&(m.id.clone(), p.clone())).is_some_and(|m| m.last_seq >= at.last_seq)
            })
        })
        .collect();
    // The check itself.
    let taken = shard::positions_of(client, epoch, ReplicaStep::TakeOver, &filled).await;
    let members =
        shard::positions_of(client, epoch, ReplicaStep::Position, &members_of(ring, &filled)).await;
    let mut held = BTreeSet::new();
    for (owner, p) in &filled {
        let Some(at) = taken.get(&(owner.id.clone(), p.clone())) else { continue };
        let mut holds = true;
        for member in live_members(ring, p) {
            holds = holds
                && match members.get(&(member.id.clone(), p.clone())) {
                    _ if at.last_seq == 0 => true,
                    Some(m) => {
                        shard::holds_entry(client, &member, p, *m, *at).await.unwrap_or(false)
                    }
                    None => false,
                };
        }
        if holds {
            held.insert(p);
        }
    }
    partitions.iter().filter(|p| !held.contains(p)).cloned().collect()
}

/// Each live member other than the owner of each of `owned`'s partitions, with the partition.
fn members_of(
    ring: &Ring,
    owned: &[(LayoutNode, PartitionKey)],
) -> Vec<(LayoutNode, PartitionKey)> {
    owned
        .iter()
        .flat_map(|(_, p)| live_members(ring, p).into_iter().map(move |m| (m, p.clone())))
        .collect()
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
/// partitions only, and only those are looked at; the first look at a change of nodes lists
/// every partition ([`unsettled`]). `looks` keeps what is left for the next look ([`Looks`]).
pub async fn end_transition(
    store: &dyn RingStore,
    client: &InternalClient,
    looks: &Looks,
) -> anyhow::Result<bool> {
    crate::failpoint::hit("reconcile.end").await?;
    let layout = store.load().await?.layout;
    let Some(t) = layout.transition.as_ref() else { return Ok(true) };
    if staged(&layout) {
        return Ok(false);
    }
    let ring = Ring::new(layout.clone());
    let left = match looks.take(ring.epoch()) {
        Some(left) => left,
        None => {
            let left = if t.nodes == layout.nodes {
                t.pins.keys().cloned().collect()
            } else {
                unsettled(client, &ring).await?
            };
            looks.start(ring.epoch(), left.clone());
            left
        }
    };
    let mut next = layout.clone();
    next.epoch += 1;
    next.transition = None;
    if !look(client, &ring, looks, left).await || !swapped(store, layout.epoch, &next).await? {
        return Ok(false);
    }
    tracing::info!(
        epoch = next.epoch,
        "layout change settled: retiring copies are no longer asked"
    );
    Ok(true)
}

/// [`end_transition`]'s first look at a change of nodes: every partition held anywhere, as
/// listed by every node that can be listed (and by a drained node already out of the layout,
/// which may hold retiring copies), less those without a retiring copy whose live members had
/// all reached their owner's position. The owners are listed before the members are.
async fn unsettled(client: &InternalClient, ring: &Ring) -> anyhow::Result<Vec<PartitionKey>> {
    let layout = ring.layout();
    let nodes = listed_in_change(layout);
    let first = positions(client, &nodes, layout.epoch).await?;
    let then = positions(client, &nodes, layout.epoch).await?;
    let at = |on: &BTreeMap<NodeId, (u64, u64)>, p: &PartitionKey| {
        ring.owner(p).and_then(|o| on.get(&o.id)).copied().unwrap_or((0, 0))
    };
    let reached = |p: &PartitionKey, on: &BTreeMap<NodeId, (u64, u64)>| {
        let (seq, _) = at(on, p);
        live_members(ring, p)
            .iter()
            .all(|m| then.get(p).and_then(|at| at.get(&m.id)).is_some_and(|m| m.0 >= seq))
    };
    Ok(first
        .iter()
        .filter(|(p, on)| !ring.retiring(p).is_empty() || !reached(p, on))
        .map(|(p, _)| p.clone())
        .collect())
}

/// The nodes a look at the change in flight in `layout` lists: [`listable`] ones, and those
/// the change took out of the layout (a drained node, which leads or holds retiring copies
/// until the change is over) unless it took them out marked down.
fn listed_in_change(layout: &ClusterLayout) -> Vec<LayoutNode> {
    let before = layout.transition.iter().flat_map(|t| &t.nodes);
    let gone = before.filter(|n| layout.node(&n.id).is_none() && !layout.is_down(&n.id));
    listable(layout).chain(gone).cloned().collect()
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

#[cfg(test)]
mod tests {
    use memring_common::store::embedded::EmbeddedStore;

    use super::*;

    /// A drain of a node failover has marked down, staged and then undone (`shardctl cancel`
    /// before the flip): while staged the node is out of the layout and down by the transition;
    /// undone, it is back in the layout marked down, not active (failover would otherwise see a
    /// dead node leading its sets until its next round).
    #[tokio::test]
    async fn undoing_the_drain_of_a_node_marked_down_leaves_it_marked_down() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(dir.path())?;
        let id = |s: &str| NodeId::parse(s).expect("id");
        let mut layout = ClusterLayout { replication_factor: 2, ..ClusterLayout::default() };
        for i in 1..=3 {
            let node = LayoutNode { id: id(&format!("shard-{i}")), addr: format!("h:{i}") };
            layout = layout.with_node(node);
        }
        layout.states.set(&id("shard-3"), NodeState::Down { draining: false });
        let first = store.load().await?.layout.epoch;
        layout.epoch = first + 1;
        store.compare_and_swap(first, &layout).await?;

        let gone = id("shard-3");
        let staged = stage(&store, Throttle::default(), |l| Some(l.without_node(&gone))).await?;
        let staged = staged.expect("nothing else in flight").layout;
        let t = staged.transition.as_ref().expect("staged");
        assert_eq!(t.down, BTreeSet::from([gone.clone()]));
        assert!(staged.node(&gone).is_none() && staged.is_down(&gone));

        unstage(&store).await?;
        let back = store.load().await?.layout;
        assert!(back.transition.is_none());
        assert_eq!(back.nodes, layout.nodes);
        assert!(back.states.get(&gone).is_marked_down(), "{:?}", back.states);
        assert!(back.is_down(&gone) && !back.may_lead(&gone));
        Ok(())
    }
}
