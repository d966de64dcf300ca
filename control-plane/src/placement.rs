//! Placement: where a layout wants each partition's copies, and the copies a change of layout
//! has to make to get there. Pure functions of two rings and of what the nodes report holding;
//! the same for every replication factor (with R = 1 a replica set is one node, and a move is
//! the one copy its new owner needs plus the one its old owner drops).
//!
//! The rule this module keeps: **a new copy is filled from a node the layout says holds the
//! partition now**, never from a copy found elsewhere. A copy outside its partition's replica
//! set (a source a migration had not dropped yet, a node's leftover) may be stale: newer writes
//! went to the set. So holdings only size a partition; the layouts alone say where its data is
//! and where it goes.

use std::collections::{BTreeMap, BTreeSet};

use memring_common::api::{Flip, Move};
use memring_common::layout::{NodeState, PinKind};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

/// What the nodes hold: partition → node → memories in that node's copy.
pub type Holdings = BTreeMap<PartitionKey, BTreeMap<NodeId, u64>>;

/// The nodes the layout of `ring` says hold `partition`: its replica set, then the extra copies
/// of a replicated move under way.
pub fn holders(ring: &Ring, partition: &PartitionKey) -> Vec<NodeId> {
    ring.replicas(partition).iter().map(|n| n.id.clone()).collect()
}

/// The replica set `ring` wants for `partition` (its owner first when it may lead).
pub fn desired(ring: &Ring, partition: &PartitionKey) -> Vec<NodeId> {
    ring.replica_set(partition).iter().map(|n| n.id.clone()).collect()
}

/// The replica set `partition` has in `layout` once pinned on `to` (a move's target leads it).
pub fn set_led_by(layout: &ClusterLayout, partition: &PartitionKey, to: &NodeId) -> Vec<NodeId> {
    let mut pinned = layout.unpinned([partition]);
    pinned.pins.set(partition.clone(), to.clone(), PinKind::Operator);
    desired(&Ring::new(pinned), partition)
}

/// The replica set the ring alone gives `partition` in `layout` (no pin, no extra copies).
pub fn natural_set(layout: &ClusterLayout, partition: &PartitionKey) -> Vec<NodeId> {
    desired(&Ring::new(layout.unpinned([partition])), partition)
}

/// Places `partition` on `to` in `next` as a move's flip (R = 1) or lead step (R > 1) does:
/// an operator's pin ([`Flip::Pin`]), a size policy's pin ([`Flip::Policy`]), or — back to the
/// ring ([`Flip::Natural`]) — no pin where the ring alone gives the set `to` leads. If the ring
/// changed under the move and it does not, a staging pin (`PinKind::of_flip`), so a later
/// rebalance places it. The same rule for every R: with R = 1 the sets are one node each.
pub fn place(next: &mut ClusterLayout, partition: &PartitionKey, to: &NodeId, flip: Flip) {
    let as_set = |ids: Vec<NodeId>| ids.into_iter().collect::<BTreeSet<NodeId>>();
    let led = as_set(set_led_by(next, partition, to));
    next.pins.remove(partition);
    if flip == Flip::Natural && as_set(natural_set(next, partition)) == led {
        return;
    }
    if flip == Flip::Natural {
        tracing::warn!(%partition, to = %to, "the ring changed during the move; pinned where it moved");
    }
    next.pins.set(partition.clone(), to.clone(), PinKind::of_flip(flip));
}

/// Whether [`place`] has happened in `layout`: `partition` pinned on `to`, or — back to the ring
/// — unpinned and led by `to` once any change in flight has flipped.
pub fn placed(layout: &ClusterLayout, partition: &PartitionKey, to: &NodeId, flip: Flip) -> bool {
    match (flip, layout.pins.node(partition)) {
        (Flip::Natural, None) => {
            let settled = ClusterLayout { transition: None, ..layout.clone() };
            Ring::new(settled).owner(partition).is_some_and(|o| o.id == *to)
        }
        (_, pin) => pin == Some(to),
    }
}

/// A partition's size: its largest copy among the nodes `now` says hold it (0: nothing there,
/// whatever other nodes report).
pub fn size(now: &Ring, partition: &PartitionKey, on: &BTreeMap<NodeId, u64>) -> u64 {
    holders(now, partition).iter().filter_map(|id| on.get(id)).copied().max().unwrap_or(0)
}

/// The node a new copy of `partition` is filled from: its owner in `now`. A layout change is
/// staged first (`reconcile.rs`): the old set leads, and its owner takes the writes, until every
/// member of the new set holds its log.
pub fn source(now: &Ring, partition: &PartitionKey) -> Option<NodeId> {
    now.owner(partition).map(|n| n.id.clone())
}

/// Why no replicated change of placement — a join, a drain or a move — may start in `layout`
/// now: the last join or drain has not settled. Its [`Ring::retiring`] copies are the old replica
/// sets worked out again from the transition's node list and today's pins, so a pin set meanwhile
/// would name the wrong old set for its partition, and a node taking it over could miss the one
/// copy that holds a write the old set acknowledged. `None` once it has settled.
///
/// [`Ring::retiring`]: memring_common::Ring::retiring
pub fn settling(layout: &ClusterLayout) -> Option<String> {
    let t = layout.transition.as_ref()?;
    Some(format!(
        "the layout change of epoch {} has not settled (its new replica sets are \
         still catching up; the running rebalance or drain, else the janitor, settles it)",
        t.since
    ))
}

/// Why a replicated join or drain (of `leaving`) cannot start in `layout` now: the last one has
/// not settled (its transition is one list of nodes; a second change would replace it), or
/// another node is down, joining or draining. A set may then have no member that can lead but the newcomer:
/// with R = 2, a set of a down node and the one live holder that the join's newcomer pushes out
/// is left with the newcomer to lead, holding nothing. Such changes wait until failover has
/// settled the nodes (re-admitted, handed back or replaced). `None` without replication: a
/// migration copies each partition before its owner changes.
pub fn unsettled(layout: &ClusterLayout, leaving: Option<&NodeId>) -> Option<String> {
    if layout.replication_factor <= 1 {
        return None;
    }
    if let Some(why) = settling(layout) {
        return Some(why);
    }
    let (id, state) = layout
        .nodes
        .iter()
        .filter(|n| Some(&n.id) != leaving)
        .map(|n| (&n.id, layout.states.get(&n.id)))
        .find(|(_, state)| *state != NodeState::Active)?;
    Some(format!(
        "node {id} is {}; a replicated layout change waits until every other node is active \
         (failover re-admits a node that is back and hands its leadership back, and replaces \
         one down for --replace-after-secs; `shardctl drain` takes out a down node that \
         will not return)",
        match state {
            NodeState::Joining => "joining",
            NodeState::Draining => "draining",
            NodeState::Down { .. } => "marked down",
            NodeState::Active => "active",
        }
    ))
}

/// The copies that going from `now` to `next` makes, for every partition with data in
/// `held`: each member of its set in `next` that is not among its holders in `now`, filled
/// from [`source`]. Partitions empty on their holders move nothing (their new owner starts
/// them empty, as the old one had them).
pub fn copies_to_make(now: &Ring, next: &Ring, held: &Holdings) -> Vec<Move> {
    let mut moves = Vec::new();
    for (partition, on) in held {
        let memories = size(now, partition, on);
        if memories == 0 {
            continue;
        }
        let Some(from) = source(now, partition) else { continue };
        let have = holders(now, partition);
        for to in desired(next, partition).into_iter().filter(|id| !have.contains(id)) {
            moves.push(Move {
                partition: partition.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                memories,
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use memring_common::layout::LayoutNode;
    use proptest::prelude::*;

    use super::*;

    /// The copies going from `now` to `next` leaves outside their partition's set: each holder in
    /// `now` that `next` does not want, for every partition in `held`. (The one rule of `copies.rs`
    /// decides when each may go.)
    fn copies_to_drop(now: &Ring, next: &Ring, held: &Holdings) -> Vec<(PartitionKey, NodeId)> {
        let mut out = Vec::new();
        for partition in held.keys() {
            let want = desired(next, partition);
            for id in holders(now, partition).into_iter().filter(|id| !want.contains(id)) {
                out.push((partition.clone(), id));
            }
        }
        out
    }

    fn node(i: usize) -> LayoutNode {
        LayoutNode { id: NodeId::parse(&format!("n{i}")).expect("id"), addr: format!("a{i}:1") }
    }

    fn layout(nodes: usize, r: u32, vnodes: u32) -> ClusterLayout {
        let mut l =
            ClusterLayout { replication_factor: r, vnodes_per_node: vnodes, ..Default::default() };
        for i in 0..nodes {
            l = l.with_node(node(i));
        }
        l
    }

    fn key(t: usize) -> PartitionKey {
        format!("t{t}/shared").parse().expect("key")
    }

    /// A join as the planner stages it: new nodes in.
    fn joined(l: &ClusterLayout, new: std::ops::Range<usize>) -> ClusterLayout {
        let mut next = l.clone();
        for i in new {
            next = next.with_node(node(i));
        }
        next
    }

    /// A drain as the planner ends it: the node's pins released, the node out.
    fn drained(l: &ClusterLayout, gone: usize) -> ClusterLayout {
        let mut next = l.clone();
        next.pins.retain(|_, pin| pin.node != node(gone).id);
        next.without_node(&node(gone).id)
    }

    /// `l` with node i in state `states[i]` (0 joining, 1 draining, 2 down, else active); only
    /// replicated layouts have such states.
    fn with_states(mut l: ClusterLayout, states: &[u8]) -> ClusterLayout {
        if l.replication_factor > 1 {
            for (i, s) in states.iter().enumerate().take(l.nodes.len()) {
                let state = match s {
                    0 => NodeState::Joining,
                    1 => NodeState::Draining,
                    2 => NodeState::Down { draining: false },
                    _ => continue,
                };
                l.states.set(&node(i).id, state);
            }
        }
        l
    }

    /// `l` with the nodes' `states` ([`with_states`]) and operator pins of `pinned` (tenant,
    /// node index modulo the node count).
    fn pinned_layout(l: ClusterLayout, states: &[u8], pinned: &[(usize, usize)]) -> ClusterLayout {
        let mut l = with_states(l, states);
        let nodes = l.nodes.len();
        for (t, n) in pinned {
            l.pins.set(key(*t), node(n % nodes).id, PinKind::Operator);
        }
        l
    }

    /// Every partition on its holders with `count` memories, plus a stale leftover copy of
    /// some on a node outside their set.
    fn holdings(ring: &Ring, keys: &[usize], count: u64, nodes: usize) -> Holdings {
        let mut held = Holdings::new();
        for &t in keys {
            let on = held.entry(key(t)).or_default();
            for id in holders(ring, &key(t)) {
                on.insert(id, count);
            }
            let stray = node(t % nodes).id;
            on.entry(stray).or_insert(count * 7 + 1);
        }
        held
    }

    /// The checks every plan must pass, for a change from `before` to `after`: the copies it
    /// makes and drops turn each partition's holders into its desired set; every copy is filled
    /// from a node that holds the partition now and stays in its set (never a stale copy); a
    /// partition's size is read from its holders only.
    fn check(before: &ClusterLayout, after: &ClusterLayout, held: &Holdings) {
        let (now, next) = (Ring::new(before.clone()), Ring::new(after.clone()));
        let made = copies_to_make(&now, &next, held);
        let dropped = copies_to_drop(&now, &next, held);
        for (p, on) in held {
            let have: BTreeSet<NodeId> = holders(&now, p).into_iter().collect();
            let want: BTreeSet<NodeId> = desired(&next, p).into_iter().collect();
            let adds: BTreeSet<NodeId> = made
                .iter()
                .filter(|m| m.partition == p.to_string())
                .map(|m| NodeId::parse(&m.to).expect("id"))
                .collect();
            let drops: BTreeSet<NodeId> =
                dropped.iter().filter(|(q, _)| q == p).map(|(_, id)| id.clone()).collect();
            let size = size(&now, p, on);
            if size == 0 {
                assert!(adds.is_empty(), "{p}: an empty partition moves nothing");
                continue;
            }
            let end: BTreeSet<NodeId> =
                have.union(&adds).filter(|id| !drops.contains(id)).cloned().collect();
            assert_eq!(end, want, "{p}: holders + made − dropped is the desired set");
            assert_eq!(
                made.iter().filter(|m| m.partition == p.to_string()).count(),
                adds.len(),
                "{p}: one copy per new member"
            );
            for m in made.iter().filter(|m| m.partition == p.to_string()) {
                let from = NodeId::parse(&m.from).expect("id");
                assert!(have.contains(&from), "{p}: filled from {from}, which does not hold it");
                assert!(!adds.contains(&from), "{p}: filled from a copy being made");
                assert_eq!(m.memories, size, "{p}: sized by its holders, not a stray copy");
            }
        }
    }

    #[test]
    fn a_stale_copy_outside_the_set_is_never_a_source() {
        // Regression: the planner once took "where the data is" from any node listing the
        // partition, so a source copy not yet dropped could be pinned and migrated back.
        let before = layout(3, 1, 32);
        let after = joined(&before, 3..4);
        let now = Ring::new(before.clone());
        let next = Ring::new(after.clone());
        let p = (0..500).map(key).find(|p| {
            let (a, b) = (now.owner(p).map(|n| &n.id), next.owner(p).map(|n| &n.id));
            a != b
        });
        let p = p.expect("a join moves some partition");
        let owner = now.owner(&p).expect("owner").id.clone();
        let stray = (0..3).map(|i| node(i).id).find(|id| *id != owner).expect("another node");
        let held: Holdings =
            [(p.clone(), [(owner.clone(), 10), (stray.clone(), 99)].into_iter().collect())].into();
        let made = copies_to_make(&now, &next, &held);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].from, owner.to_string());
        assert_eq!(made[0].to, "n3");
        assert_eq!(made[0].memories, 10);
        // Only on the stray node: nothing to move (its owner holds nothing).
        let held: Holdings = [(p, [(stray, 99)].into_iter().collect())].into();
        assert!(copies_to_make(&now, &next, &held).is_empty());
    }

    #[test]
    fn a_join_adds_each_set_at_most_one_copy_and_a_drain_replaces_the_leaver() {
        let three = layout(3, 3, 64);
        let four = joined(&three, 3..4);
        let (before, after) = (Ring::new(three.clone()), Ring::new(four.clone()));
        let held = holdings(&before, &(0..200).collect::<Vec<_>>(), 10, 3);
        let moves = copies_to_make(&before, &after, &held);
        // Every new copy lands on the joining node, at most one per partition, from an owner
        // that is not the joining node.
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.to == "n3" && m.from != "n3"));
        let partitions: BTreeSet<&str> = moves.iter().map(|m| m.partition.as_str()).collect();
        assert_eq!(partitions.len(), moves.len());
        // Draining n0 out of the four: its sets take another node in, from a live owner.
        let four_up = four.clone();
        let out = drained(&four_up, 0);
        let moves = copies_to_make(&Ring::new(four_up), &Ring::new(out), &held);
        assert!(moves.iter().all(|m| m.to != "n0"));
        assert!(!moves.is_empty());
    }

    #[test]
    fn two_joiners_at_once_are_filled_from_the_old_owner() {
        // Joiners that take every place of a replicated set: the old set leads while they fill,
        // so each is filled from its old owner, which holds the data.
        let one = layout(1, 2, 4);
        let three = joined(&one, 1..3);
        let (now, next) = (Ring::new(one), Ring::new(three));
        let p = key(2703);
        let want = desired(&next, &p);
        assert!(!want.contains(&node(0).id), "the set is all joiners: {want:?}");
        let from = source(&now, &p).expect("an owner");
        assert!(holders(&now, &p).contains(&from), "{from} holds what it fills the joiners with");
    }

    #[test]
    fn a_join_waits_while_a_set_has_a_down_member() {
        // R = 2, n2 down: a set of n2 and its one live holder that the newcomer pushes out
        // would be led by the newcomer, which holds nothing.
        let mut three = layout(3, 2, 8);
        three.states.set(&node(2).id, NodeState::Down { draining: false });
        let four = joined(&three, 3..4);
        let (now, next) = (Ring::new(three.clone()), Ring::new(four));
        let stranded = (0..2000).map(key).find(|p| {
            let live = |id: &NodeId| !three.is_down(id);
            let keeps = holders(&now, p).into_iter().filter(live);
            !keeps.into_iter().any(|id| desired(&next, p).contains(&id))
        });
        assert!(stranded.is_some(), "some set would keep no live member that holds its data");
        let why = unsettled(&three, None).expect("the join waits");
        assert!(why.contains("n2 is marked down"), "{why}");
        // Draining the down node itself is allowed; draining another is not.
        assert!(unsettled(&three, Some(&node(2).id)).is_none());
        assert!(unsettled(&three, Some(&node(0).id)).is_some());
        assert!(unsettled(&layout(3, 1, 8), None).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Joins: every copy made lands on a joining node (consistent hashing moves only the
        /// joiners' share), filled from a node that holds the partition now.
        #[test]
        fn joins_fill_only_joiners_from_holders(
            nodes in 1usize..6,
            new in 1usize..3,
            r in 1u32..4,
            vnodes in 4u32..40,
            keys in proptest::collection::vec(0usize..10_000, 1..80),
            pinned in proptest::collection::vec((0usize..10_000, 0usize..6), 0..6),
            states in proptest::collection::vec(0u8..12, 6),
        ) {
            let before = pinned_layout(layout(nodes, r, vnodes), &states, &pinned);
            // What follows holds whenever the planner lets a join start.
            prop_assume!(unsettled(&before, None).is_none());
            let after = joined(&before, nodes..nodes + new);
            let held = holdings(&Ring::new(before.clone()), &keys, 5, nodes);
            check(&before, &after, &held);
            let made = copies_to_make(&Ring::new(before), &Ring::new(after), &held);
            let joiners: Vec<String> = (nodes..nodes + new).map(|i| node(i).id.to_string()).collect();
            prop_assert!(made.iter().all(|m| joiners.contains(&m.to)));
        }

        /// A move's set: led by its target, R distinct nodes (or every node when fewer), and
        /// the ring's own set when the target already leads it there.
        #[test]
        fn a_set_led_by_a_node_starts_with_it(
            nodes in 1usize..7,
            r in 1u32..4,
            vnodes in 4u32..40,
            t in 0usize..10_000,
            to in 0usize..7,
        ) {
            let l = layout(nodes, r, vnodes);
            let (p, to) = (key(t), node(to % nodes).id);
            let set = set_led_by(&l, &p, &to);
            prop_assert_eq!(&set[0], &to);
            let distinct: BTreeSet<&NodeId> = set.iter().collect();
            prop_assert_eq!(distinct.len(), set.len());
            prop_assert_eq!(set.len(), (r as usize).min(nodes));
            let natural = natural_set(&l, &p);
            if natural[0] == to {
                prop_assert_eq!(set, natural);
            }
        }

        /// A move's placement: the layout after it gives the set the target leads, pinned there
        /// unless a move back to the ring finds the ring's own set led by the target; and the
        /// move counts as placed.
        #[test]
        fn a_placed_partition_has_the_set_its_target_leads(
            nodes in 1usize..7,
            r in 1u32..4,
            vnodes in 4u32..40,
            t in 0usize..10_000,
            to in 0usize..7,
            flip in 0u8..3,
            pinned_before in proptest::option::of(0usize..7),
        ) {
            let mut l = layout(nodes, r, vnodes);
            let (p, to) = (key(t), node(to % nodes).id);
            if let Some(n) = pinned_before {
                l.pins.set(p.clone(), node(n % nodes).id, PinKind::Operator);
            }
            let flip = [Flip::Pin, Flip::Policy, Flip::Natural][flip as usize];
            let want: BTreeSet<NodeId> = set_led_by(&l, &p, &to).into_iter().collect();
            let natural = natural_set(&l, &p);
            let mut next = l.clone();
            place(&mut next, &p, &to, flip);
            let got: BTreeSet<NodeId> = desired(&Ring::new(next.clone()), &p).into_iter().collect();
            prop_assert_eq!(&got, &want);
            let unpinned = next.pins.node(&p).is_none();
            let natural_is_led = natural.iter().cloned().collect::<BTreeSet<_>>() == want;
            prop_assert_eq!(unpinned, flip == Flip::Natural && natural_is_led);
            if !unpinned {
                prop_assert!(next.pins.is(&p, PinKind::of_flip(flip)));
            }
            if flip != Flip::Natural || natural[0] == to {
                prop_assert!(placed(&next, &p, &to, flip));
            }
        }

        /// Drains: nothing lands on the drained node; without replication every move leaves it.
        #[test]
        fn drains_empty_the_leaver_from_holders(
            nodes in 2usize..7,
            gone in 0usize..7,
            r in 1u32..4,
            vnodes in 4u32..40,
            keys in proptest::collection::vec(0usize..10_000, 1..80),
            pinned in proptest::collection::vec((0usize..10_000, 0usize..7), 0..6),
            states in proptest::collection::vec(0u8..12, 7),
        ) {
            let gone = gone % nodes;
            let before = pinned_layout(layout(nodes, r, vnodes), &states, &pinned);
            prop_assume!(unsettled(&before, Some(&node(gone).id)).is_none());
            let after = drained(&before, gone);
            let held = holdings(&Ring::new(before.clone()), &keys, 5, nodes);
            check(&before, &after, &held);
            let made = copies_to_make(&Ring::new(before), &Ring::new(after), &held);
            let leaver = node(gone).id.to_string();
            prop_assert!(made.iter().all(|m| m.to != leaver));
            if r == 1 {
                prop_assert!(made.iter().all(|m| m.from == leaver));
            }
        }
    }

    /// What a rebalance plan costs the control plane, at 1,000 and 100,000 partitions per node
    /// (`cargo test --release -p memring-control --lib plan_cost -- --ignored --nocapture`). A
    /// plan is an operator's (or the autopilot's) one-off question over every partition, not a
    /// per-request or per-round path; this is its pure part, after the nodes' listings.
    #[test]
    #[ignore = "a measurement"]
    fn plan_cost_at_1_000_and_100_000_partitions_per_node() {
        for r in [1u32, 3] {
            for per_node in [1_000usize, 100_000] {
                let three = layout(3, r, 64);
                let four = joined(&three, 3..4);
                let (now, next) = (Ring::new(three), Ring::new(four));
                // Three nodes with `per_node` copies each: R copies per partition.
                let partitions = per_node * 3 / r as usize;
                let held = holdings(&now, &(0..partitions).collect::<Vec<_>>(), 10, 3);
                let started = std::time::Instant::now();
                let made = copies_to_make(&now, &next, &held);
                let sizes: u64 = held.iter().map(|(p, on)| size(&now, p, on)).sum();
                let took = started.elapsed();
                println!(
                    "R = {r}, {per_node} partitions per node ({partitions} partitions): plan of \
                     {} copies over {sizes} memories in {:.1} ms ({:.2} µs per partition)",
                    made.len(),
                    took.as_secs_f64() * 1e3,
                    took.as_secs_f64() * 1e6 / partitions as f64
                );
                assert!(!made.is_empty());
            }
        }
    }
}
