//! Each partition's **term**: the newest epoch at which its placement could have changed
//! (`Ring::term`). Replication leads, follows and checks a copy by its partition's term instead
//! of the layout's epoch, so a layout change costs only the partitions it touches: a move of one
//! tenant leaves every other partition's take-overs and checked followers as they were.
//!
//! A partition's placement — its owner, holders, voters, retiring copies, and whether it is
//! replicated at all (`Ring`) — reads only these parts of a layout: the replication factor and
//! quorum, the circle (which nodes have virtual nodes), the states of the nodes in its old and
//! new sets, its pin, and, while a change it touches is in flight, the transition. The layout
//! keeps, for each part, the epoch it last changed ([`Terms`]); a partition's term is the newest
//! of the parts it reads. Two rules make that a term:
//!
//! - **Equal terms, equal placement.** Any change to a part a partition reads stamps that part
//!   with the new epoch, so its term moves.
//! - **Terms never go back.** When a part stops being read — a node leaves a set, a pin goes, a
//!   transition ends — whatever replaces it is stamped too: the node that took the place, the
//!   partition's own pin entry (kept after the pin is gone), the nodes a transition brought in
//!   and the pins it set. A change this cannot follow cheaply — a node leaving the layout or
//!   losing its virtual nodes, a new replication factor — moves every term (`base`).
//!
//! The stamps are written by the ring store on every compare-and-swap, from the layout it
//! replaces ([`ClusterLayout::stamped_after`]), so no writer can forget one. A layout without
//! them (written by an older binary) gives every partition the epoch as its term, as before.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ClusterLayout;
use crate::ids::NodeId;
use crate::scope::PartitionKey;

/// The epochs at which the parts of a layout that placement reads last changed (see the module
/// notes). Entries no newer than `base` are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// Every partition's term is at least this: the last change that moved every partition.
    pub base: u64,
    /// Per node: its last change of state, arrival on the circle, or arrival by a change that
    /// ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<NodeId, u64>,
    /// Per partition: its pin's last change (set, moved, removed, or its move ended).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<PartitionKey, u64>,
    /// The last change of the transition in flight (read only by the partitions it touches).
    #[serde(default)]
    pub transition: u64,
}

impl Terms {
    /// Terms that move every partition to `epoch`.
    fn all_at(epoch: u64) -> Self {
        Self { base: epoch, nodes: BTreeMap::new(), pins: BTreeMap::new(), transition: epoch }
    }

    /// The stamp of node `id` (`base` if it has none newer).
    pub fn node(&self, id: &NodeId) -> u64 {
        self.nodes.get(id).copied().unwrap_or(0).max(self.base)
    }

    /// The stamp of `partition`'s pin (`base` if it has none newer).
    pub fn pin(&self, partition: &PartitionKey) -> u64 {
        self.pins.get(partition).copied().unwrap_or(0).max(self.base)
    }
}

impl ClusterLayout {
    /// Whether node `id` has virtual nodes on this layout's circle (`ring.rs`): with
    /// replication every node does; without, a draining node does not; a dedicated one never.
    pub fn on_circle(&self, id: &NodeId) -> bool {
        (self.replication_factor > 1 || !self.states.get(id).is_draining())
            && !self.is_dedicated(id)
    }

    /// This layout, the successor of `before`, with its [`Terms`] stamped from `before`'s and
    /// what changed between them (whatever terms it carried are replaced). The ring stores call
    /// this on every compare-and-swap.
    pub fn stamped_after(&self, before: &ClusterLayout) -> ClusterLayout {
        let mut next = self.clone();
        next.terms = Some(stamps(before, self));
        next
    }
}

impl ClusterLayout {
    /// If this layout differs from the earlier `before` only in pins — pins set, moved or
    /// removed, and changes of pins alone in flight — the partitions whose term may differ
    /// between the two: every other partition has the same term, and so the same placement, in
    /// both. `None` for any other difference (nodes, their states or stamps, R, W, the circle,
    /// a change of nodes in flight), or where either layout has no terms.
    pub fn pins_touched_since(&self, before: &ClusterLayout) -> Option<BTreeSet<PartitionKey>> {
        let (now, was) = (self.terms.as_ref()?, before.terms.as_ref()?);
        let pins_alone = |l: &ClusterLayout| {
            l.transition.as_ref().is_none_or(|t| t.nodes == l.nodes && t.down.is_empty())
        };
        let same = now.base == was.base
            && now.nodes == was.nodes
            && self.nodes == before.nodes
            && self.states == before.states
            && self.replication_factor == before.replication_factor
            && self.write_quorum() == before.write_quorum()
            && self.vnodes_per_node == before.vnodes_per_node
            && self.extra_copies == before.extra_copies
            && self.size_policy.as_ref().map(|p| &p.dedicated_nodes)
                == before.size_policy.as_ref().map(|p| &p.dedicated_nodes)
            && pins_alone(self)
            && pins_alone(before);
        if !same {
            return None;
        }
        let mut touched: BTreeSet<PartitionKey> = BTreeSet::new();
        for p in now.pins.keys().chain(was.pins.keys()) {
            if now.pins.get(p) != was.pins.get(p) {
                touched.insert(p.clone());
            }
        }
        for t in self.transition.iter().chain(&before.transition) {
            touched.extend(t.pins.keys().cloned());
        }
        Some(touched)
    }
}

/// The terms of `after`, the layout following `before` (see [`ClusterLayout::stamped_after`]).
fn stamps(before: &ClusterLayout, after: &ClusterLayout) -> Terms {
    let epoch = after.epoch;
    // The change in flight before, if this one ends it or puts another in its place (a phase
    // flip or new pins keep it going).
    let ended = before.transition.as_ref().filter(|t| {
        after.transition.as_ref().is_none_or(|now| now.since != t.since || now.nodes != t.nodes)
    });
    let moves_all = before.terms.is_none()
        || before.replication_factor != after.replication_factor
        || before.write_quorum() != after.write_quorum()
        || before.vnodes_per_node != after.vnodes_per_node
        || before.extra_copies != after.extra_copies
        // A node leaving the layout or the circle: the sets it was in take other nodes, and
        // nothing would stamp those. The same at the end of a change that took nodes out.
        || before.nodes.iter().any(|n| {
            after.node(&n.id).is_none() || (before.on_circle(&n.id) && !after.on_circle(&n.id))
        })
        || ended.is_some_and(|t| t.nodes.iter().any(|n| after.node(&n.id).is_none()));
    let mut terms = match &before.terms {
        Some(terms) if !moves_all => terms.clone(),
        _ => return Terms::all_at(epoch),
    };
    // A node that arrived, came onto the circle or changed state (its own, or down by the
    // change in flight: `Transition::down`): the sets it is in now.
    for n in &after.nodes {
        let arrived = before.node(&n.id).is_none()
            || before.states.get(&n.id) != after.states.get(&n.id)
            || before.is_down(&n.id) != after.is_down(&n.id)
            || before.on_circle(&n.id) != after.on_circle(&n.id);
        if arrived {
            terms.nodes.insert(n.id.clone(), epoch);
        }
    }
    // A pin set, moved or removed (its entry outlives the pin).
    for p in before.pins.keys().chain(after.pins.keys()) {
        if before.pins.node(p) != after.pins.node(p) {
            terms.pins.insert(p.clone(), epoch);
        }
    }
    if before.transition != after.transition {
        terms.transition = epoch;
    }
    if let Some(ended) = ended {
        // The partitions the change touched stop reading it, so what it brought in is stamped:
        // the pins it set, and the nodes it added (in every set it changed that a pin does
        // not place; a change that took nodes out moved every term above).
        for p in ended.pins.keys() {
            terms.pins.insert(p.clone(), epoch);
        }
        for n in after.nodes.iter().filter(|n| ended.nodes.iter().all(|m| m.id != n.id)) {
            terms.nodes.insert(n.id.clone(), epoch);
        }
    } else if let (Some(was), Some(now)) = (&before.transition, &after.transition) {
        // The same change going on without some of its pins: those stop reading it.
        for p in was.pins.keys().filter(|p| !now.pins.contains_key(*p)) {
            terms.pins.insert(p.clone(), epoch);
        }
    }
    let base = terms.base;
    terms.nodes.retain(|id, at| after.node(id).is_some() && *at > base);
    terms.pins.retain(|_, at| *at > base);
    terms
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::layout::{LayoutNode, NodeState, PinKind, SizePolicy, Transition, TransitionPhase};
    use crate::ring::Ring;
    use crate::{Scope, TenantId};

    fn id(i: u8) -> NodeId {
        NodeId::parse(&format!("shard-{i}")).expect("id")
    }

    fn key(i: u8) -> PartitionKey {
        PartitionKey::new(&TenantId::parse(&format!("t-{i}")).expect("tenant"), &Scope::Shared)
    }

    /// One change an operator, failover or the control plane's engine makes (each a new epoch).
    #[derive(Debug, Clone)]
    enum Change {
        AddNode(u8),
        RemoveNode(u8),
        SetState(u8, u8),
        Pin(u8, u8),
        Unpin(u8),
        /// A staged pin move, node arrival or drain (`reconcile::stage`; a drain of a node
        /// marked down records it as down in the transition).
        StagePin(u8, u8),
        StageNode(u8),
        StageDrain(u8),
        /// A flipped node change in one step (`resize.rs`).
        Resize(u8, bool),
        Flip,
        End,
        Replication(u32),
        Dedicate(u8, bool),
    }

    fn change() -> impl Strategy<Value = Change> {
        let node = 0u8..6;
        let part = 0u8..24;
        prop_oneof![
            node.clone().prop_map(Change::AddNode),
            node.clone().prop_map(Change::RemoveNode),
            (node.clone(), 0u8..4).prop_map(|(n, s)| Change::SetState(n, s)),
            (part.clone(), node.clone()).prop_map(|(p, n)| Change::Pin(p, n)),
            part.clone().prop_map(Change::Unpin),
            (part, node.clone()).prop_map(|(p, n)| Change::StagePin(p, n)),
            node.clone().prop_map(Change::StageNode),
            node.clone().prop_map(Change::StageDrain),
            (node.clone(), any::<bool>()).prop_map(|(n, add)| Change::Resize(n, add)),
            Just(Change::Flip),
            Just(Change::End),
            Just(Change::Flip),
            Just(Change::End),
            (1u32..4).prop_map(Change::Replication),
            (node, any::<bool>()).prop_map(|(n, on)| Change::Dedicate(n, on)),
        ]
    }

    fn node(i: u8) -> LayoutNode {
        LayoutNode { id: id(i), addr: format!("127.0.0.1:{}", 7000 + u16::from(i)) }
    }

    /// The layout after `change`, unstamped (the store stamps it), or `None` where the change
    /// does not apply.
    fn apply(l: &ClusterLayout, change: &Change) -> Option<ClusterLayout> {
        let mut next = l.clone();
        next.epoch += 1;
        let has = |i: u8| l.node(&id(i)).is_some();
        match *change {
            Change::AddNode(i) if !has(i) => next = l.with_node(node(i)),
            Change::RemoveNode(i) if has(i) && l.nodes.len() > 1 => next = l.without_node(&id(i)),
            Change::SetState(i, s) if has(i) => {
                let state = match s {
                    0 => NodeState::Active,
                    1 => NodeState::Joining,
                    2 => NodeState::Draining,
                    _ => NodeState::Down { draining: false },
                };
                next.states.set(&id(i), state);
            }
            Change::Pin(p, i) if has(i) => next.pins.set(key(p), id(i), PinKind::Operator),
            Change::Unpin(p) if l.pins.contains_key(&key(p)) => {
                next.pins.remove(&key(p));
            }
            Change::StagePin(p, i) if has(i) && l.transition.is_none() => {
                next.pins.set(key(p), id(i), PinKind::Operator);
                next.transition = Some(Transition::staged(l, &next));
            }
            Change::StageNode(i) if !has(i) && l.transition.is_none() => {
                next = l.with_node(node(i));
                next.transition = Some(Transition::staged(l, &next));
            }
            Change::StageDrain(i) if has(i) && l.transition.is_none() && l.nodes.len() > 1 => {
                next = l.without_node(&id(i));
                next.transition = Some(Transition::staged(l, &next));
            }
            Change::Resize(i, add) if l.transition.is_none() && has(i) != add => {
                next = if add { l.with_node(node(i)) } else { l.without_node(&id(i)) };
                if next.nodes.is_empty() {
                    return None;
                }
                next.transition = Some(Transition::from_nodes(next.epoch, &l.nodes));
            }
            Change::Flip => {
                let t = next.transition.as_mut()?;
                if t.phase != TransitionPhase::OldLeads {
                    return None;
                }
                t.phase = TransitionPhase::NewLeads;
            }
            Change::End => {
                next.transition.take()?;
            }
            Change::Replication(r) if r != l.replication_factor => {
                next.replication_factor = r;
                next.write_quorum = None;
            }
            Change::Dedicate(i, on) if has(i) => {
                let mut nodes: BTreeSet<NodeId> =
                    l.size_policy.as_ref().map(|p| p.dedicated_nodes.clone()).unwrap_or_default();
                if on {
                    nodes.insert(id(i));
                } else {
                    nodes.remove(&id(i));
                }
                next.size_policy = Some(SizePolicy {
                    dedicate_at_memories: 100,
                    release_below_memories: 50,
                    dedicated_nodes: nodes,
                    dedicate_at_bytes: None,
                    release_below_bytes: None,
                });
            }
            _ => return None,
        }
        Some(next)
    }

    /// Everything replication reads of where `p` lives.
    type Placement = (Option<NodeId>, Vec<NodeId>, Vec<NodeId>, Vec<NodeId>, bool, Vec<bool>);

    fn placement(ring: &Ring, p: &PartitionKey) -> Placement {
        let ids = |nodes: Vec<&LayoutNode>| {
            let mut ids: Vec<NodeId> = nodes.into_iter().map(|n| n.id.clone()).collect();
            ids.sort();
            ids
        };
        let holders = ids(ring.holders(p));
        let down = holders.iter().map(|n| ring.layout().is_down(n)).collect();
        (
            ring.owner(p).map(|n| n.id.clone()),
            holders,
            ids(ring.voters(p)),
            ids(ring.retiring(p)),
            ring.replicated(p),
            down,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Along any run of layout changes, stamped as the stores stamp them, a partition's
        /// term never goes back and never passes the epoch, and while it stays the same its
        /// placement does too.
        #[test]
        fn a_term_moves_whenever_placement_does_and_never_back(
            r in 1u32..4,
            changes in proptest::collection::vec(change(), 1..60),
        ) {
            let mut l = ClusterLayout { vnodes_per_node: 8, replication_factor: r, ..Default::default() };
            for i in 0..3 {
                l = l.with_node(node(i));
            }
            l = l.stamped_after(&ClusterLayout::default());
            let keys: Vec<PartitionKey> = (0..24).map(key).collect();
            let mut ring = Ring::new(l.clone());
            let mut before: Vec<(u64, Placement)> =
                keys.iter().map(|p| (ring.term(p), placement(&ring, p))).collect();
            // The ring some changes back, for the pins-alone difference over several epochs.
            let mut earlier = ring.layout().clone();
            for (n, change) in changes.iter().enumerate() {
                let Some(next) = apply(ring.layout(), change) else { continue };
                let next = next.stamped_after(ring.layout());
                let old = std::mem::replace(&mut ring, Ring::new(next));
                for from in [old.layout(), &earlier] {
                    let Some(touched) = ring.layout().pins_touched_since(from) else { continue };
                    let from = Ring::new(from.clone());
                    for p in keys.iter().filter(|p| !touched.contains(*p)) {
                        prop_assert_eq!(ring.term(p), from.term(p), "{} untouched since {}", p, from.epoch());
                        prop_assert_eq!(placement(&ring, p), placement(&from, p));
                    }
                }
                if n % 4 == 3 {
                    earlier = ring.layout().clone();
                }
                for (p, (term, was)) in keys.iter().zip(before.iter_mut()) {
                    let (t, now) = (ring.term(p), placement(&ring, p));
                    prop_assert!(t <= ring.epoch(), "{p}: term {t} after epoch {}", ring.epoch());
                    prop_assert!(t >= *term, "{p}: term went back from {term} to {t} on {change:?}");
                    prop_assert!(
                        t > *term || now == *was,
                        "{p}: placement changed at term {t} on {change:?}: {was:?} -> {now:?}"
                    );
                    (*term, *was) = (t, now);
                }
            }
        }
    }

    /// A move of one partition leaves every other partition's term where it was, through its
    /// stage, flip and end.
    #[test]
    fn a_move_changes_only_the_moved_partitions_term() {
        let mut l =
            ClusterLayout { vnodes_per_node: 16, replication_factor: 2, ..Default::default() };
        for i in 0..3 {
            l = l.with_node(node(i));
        }
        let mut ring = Ring::new(l.stamped_after(&ClusterLayout::default()));
        let keys: Vec<PartitionKey> = (0..24).map(key).collect();
        let first: Vec<u64> = keys.iter().map(|p| ring.term(p)).collect();
        let moved = key(5);
        let outside = ring
            .layout()
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .find(|n| ring.replicas(&moved).iter().all(|m| m.id != *n));
        let target = outside.expect("a node outside the set");
        let mut next = ring.layout().clone();
        next.epoch += 1;
        next.pins.set(moved.clone(), target, PinKind::Operator);
        next.transition = Some(Transition::staged(ring.layout(), &next));
        for step in [Change::Flip, Change::End, Change::End] {
            let before = ring.layout().clone();
            ring = Ring::new(next.stamped_after(&before));
            let touched = ring.layout().pins_touched_since(&before);
            assert_eq!(touched, Some(BTreeSet::from([moved.clone()])), "a change of one pin");
            assert_eq!(ring.term(&moved), ring.epoch(), "the moved partition's term moves");
            for (p, was) in keys.iter().zip(&first).filter(|(p, _)| **p != moved) {
                assert_eq!(ring.term(p), *was, "{p} kept its term at epoch {}", ring.epoch());
            }
            let Some(after) = apply(ring.layout(), &step) else { break };
            next = after;
        }
        assert!(ring.layout().transition.is_none(), "the move ended");
    }
}
