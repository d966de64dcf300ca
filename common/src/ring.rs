//! The ring: consistent hashing with virtual nodes, with a pinned hash.
//!
//! Placement is built on the `hashring` crate, which hashes through `std::hash::Hash` with the
//! `BuildHasher` it is given. Neither std's `DefaultHasher` nor std's `Hash` impls for `str` are
//! promised to stay the same across Rust releases, and a ring must not move when the compiler
//! does. So every value placed on or looked up in the ring implements `Hash` by handing exactly
//! one explicit byte string to the hasher, and the hasher is [`StableHasher`]: XXH3-64 (seed 0)
//! over those bytes. The golden test at the bottom pins concrete outputs.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use xxhash_rust::xxh3::xxh3_64;

use crate::ids::NodeId;
use crate::layout::{ClusterLayout, LayoutNode, TransitionPhase};
use crate::scope::PartitionKey;

/// XXH3-64 over the bytes written; see the module docs for why.
#[derive(Default)]
pub struct StableHasher {
    bytes: Vec<u8>,
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        xxh3_64(&self.bytes)
    }
}

/// Builds [`StableHasher`]s.
#[derive(Clone, Copy, Default)]
pub struct StableBuildHasher;

impl BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;
    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// One virtual node: the `replica`-th point of physical node `node` (an index into the layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VNode {
    node: usize,
    replica: u32,
    /// The ring position, computed once from the node id and replica number.
    point: u64,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Re-hashing the precomputed point keeps the placement a function of (node id, replica)
        // only, not of the node's index in this layout.
        state.write(&self.point.to_be_bytes());
    }
}

fn vnode_point(node: &NodeId, replica: u32) -> u64 {
    let mut bytes = Vec::with_capacity(node.as_str().len() + 5);
    bytes.extend_from_slice(node.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&replica.to_be_bytes());
    xxh3_64(&bytes)
}

/// A partition key as the ring sees it: its stable byte encoding.
struct KeyBytes<'a>(&'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// The placement function of one layout: partition → owning node (and its replica set).
pub struct Ring {
    layout: ClusterLayout,
    ring: HashRing<VNode, StableBuildHasher>,
    /// Every vnode's position (as `hashring` places it) and its node's index, sorted: the walk
    /// clockwise from a key that picks replicas, and the arcs behind `shares`.
    points: Vec<(u64, usize)>,
    /// The same for the nodes of the layout's unsettled [`Transition`] (indices into its node
    /// list); empty without one.
    ///
    /// [`Transition`]: crate::layout::Transition
    before: Vec<(u64, usize)>,
}

/// The virtual nodes `nodes` place on the ring of `layout`.
fn vnodes(layout: &ClusterLayout, nodes: &[LayoutNode]) -> Vec<VNode> {
    nodes
        .iter()
        .enumerate()
        // With replication a draining node keeps its places (it is only never a primary).
        // A dedicated node holds only what the size policy pins there.
        .filter(|(_, n)| layout.replication_factor > 1 || !layout.states.get(&n.id).is_draining())
        .filter(|(_, n)| !layout.is_dedicated(&n.id))
        .flat_map(|(node, n)| {
            (0..layout.vnodes_per_node).map(move |replica| VNode {
                node,
                replica,
                point: vnode_point(&n.id, replica),
            })
        })
        .collect()
}

/// Every vnode's position (as `hashring` places it) with its node's index, sorted.
fn points(vnodes: &[VNode]) -> Vec<(u64, usize)> {
    let hasher = StableBuildHasher;
    let mut points: Vec<(u64, usize)> =
        vnodes.iter().map(|v| (hasher.hash_one(v), v.node)).collect();
    points.sort_unstable();
    points
}

/// Distinct nodes of `nodes` in the order of `points`, starting at the vnode that owns `key`.
fn walk<'a>(
    points: &'a [(u64, usize)],
    nodes: &'a [LayoutNode],
    key: &[u8],
) -> impl Iterator<Item = &'a LayoutNode> + 'a {
    let k = StableBuildHasher.hash_one(KeyBytes(key));
    // The first point at or after the key, wrapping to the start (as `hashring` does).
    let start = points.partition_point(|(p, _)| *p < k) % points.len().max(1);
    let mut seen = vec![false; nodes.len()];
    points[start..]
        .iter()
        .chain(&points[..start])
        .filter_map(move |&(_, node)| (!std::mem::replace(&mut seen[node], true)).then_some(node))
        .map(|node| &nodes[node])
}

/// A replica set of `r` nodes on one circle: `pinned` first (if any), then the next distinct
/// nodes clockwise from `key`.
fn set_of<'a>(
    points: &'a [(u64, usize)],
    nodes: &'a [LayoutNode],
    pinned: Option<&'a LayoutNode>,
    key: &[u8],
    r: usize,
) -> Vec<&'a LayoutNode> {
    let mut set: Vec<&LayoutNode> = pinned.into_iter().collect();
    // Only as far round the ring as the set needs (the walk is lazy; all of it would visit
    // every vnode).
    let rest = r.saturating_sub(set.len());
    set.extend(walk(points, nodes, key).filter(|n| pinned.is_none_or(|p| p.id != n.id)).take(rest));
    set
}

impl Ring {
    /// Builds the ring of `layout`.
    pub fn new(layout: ClusterLayout) -> Self {
        let mut ring = HashRing::with_hasher(StableBuildHasher);
        let placed = vnodes(&layout, &layout.nodes);
        let sorted = points(&placed);
        ring.batch_add(placed);
        // A change in flight: the circle of the layout before it (its sets still lead, or are
        // still asked).
        let before = match &layout.transition {
            Some(t) => points(&vnodes(&layout, &t.nodes)),
            None => Vec::new(),
        };
        Self { layout, ring, points: sorted, before }
    }

    /// The layout this ring was built from.
    pub fn layout(&self) -> &ClusterLayout {
        &self.layout
    }

    /// The epoch of that layout.
    pub fn epoch(&self) -> u64 {
        self.layout.epoch
    }

    /// The node that owns `partition` (takes its writes), for every replication factor alike:
    /// the first of its replica set (its override, else its ring position, then the next nodes
    /// clockwise; without the extra copies of a migration) that may lead — not down, draining or
    /// joining — or the first one if none may. With R = 1 the set is one node: the override or
    /// the ring position.
    ///
    /// While a change is staged ([`TransitionPhase::OldLeads`]) the owner is the one of the
    /// partition's set before the change ([`Ring::old_set`]).
    pub fn owner(&self, partition: &PartitionKey) -> Option<&LayoutNode> {
        let set =
            if self.old_leads() { self.old_set(partition) } else { self.replica_set(partition) };
        set.iter().find(|n| self.layout.may_lead(&n.id)).or(set.first()).copied()
    }

    /// The copies of `partition` other than its owner (empty without replication): its
    /// [`Ring::replicas`], and while a change is staged the members of its old set too.
    pub fn followers(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        let owner = self.owner(partition).map(|n| n.id.clone());
        self.holders(partition).into_iter().filter(|n| Some(&n.id) != owner.as_ref()).collect()
    }

    /// The followers of `partition` whose acknowledgements count toward a write's quorum: while
    /// a change is staged those of its old set (a member only the new set has is still being
    /// filled), else every follower.
    pub fn voters(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        if !self.old_leads() {
            return self.followers(partition);
        }
        let owner = self.owner(partition).map(|n| n.id.clone());
        self.old_set(partition).into_iter().filter(|n| Some(&n.id) != owner.as_ref()).collect()
    }

    /// Whether a change is staged: the layout before it still leads.
    fn old_leads(&self) -> bool {
        self.layout.transition.as_ref().is_some_and(|t| t.phase == TransitionPhase::OldLeads)
    }

    /// The replica set `partition` had in the layout before the change in flight: that layout's
    /// nodes, and the pin it had then. Empty without a change in flight.
    pub fn old_set(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        let Some(transition) = self.layout.transition.as_ref() else { return Vec::new() };
        let r = self.layout.replication_factor.max(1) as usize;
        let nodes = &transition.nodes;
        let pin = match transition.pins.get(partition) {
            Some(before) => before.as_ref().map(|pin| &pin.node),
            None => self.layout.pins.node(partition),
        };
        let pinned = pin.and_then(|id| nodes.iter().find(|n| n.id == *id));
        set_of(&self.before, nodes, pinned, &partition.encode(), r)
    }

    /// Every node that holds a copy of `partition` it must keep in step with the owner: its
    /// [`Ring::replicas`], and while a change is staged the members of its old set.
    pub fn holders(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        let mut holders = self.replicas(partition);
        if self.old_leads() {
            for node in self.old_set(partition) {
                if holders.iter().all(|n| n.id != node.id) {
                    holders.push(node);
                }
            }
        }
        holders
    }

    /// The ring owner of an arbitrary key (ignores overrides); used by tests and benchmarks.
    pub fn owner_of_bytes(&self, key: &[u8]) -> Option<&LayoutNode> {
        self.ring.get(&KeyBytes(key)).map(|v| &self.layout.nodes[v.node])
    }

    /// The nodes that hold `partition`: its replica set ([`Ring::replica_set`]), then the extra
    /// copies a replicated migration keeps while it moves the set (they follow the owner and
    /// count toward its write quorum, but never own the partition).
    pub fn replicas(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        let mut set = self.replica_set(partition);
        if let Some(extra) = self.layout.extra_copies.get(partition) {
            for node in extra.iter().filter_map(|id| self.layout.node(id)) {
                if set.iter().all(|n| n.id != node.id) {
                    set.push(node);
                }
            }
        }
        set
    }

    /// The replica set of `partition` with the layout's replication factor R: its pin (if
    /// any) first, then the next distinct nodes clockwise from its ring position, R in all (fewer
    /// if the ring has fewer nodes). The first is where the ring alone would put the partition
    /// when it has no override, so with R = 1 this is `[owner]`.
    pub fn replica_set(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        let r = self.layout.replication_factor.max(1) as usize;
        let pinned = self.layout.pins.node(partition).and_then(|id| self.layout.node(id));
        set_of(&self.points, &self.layout.nodes, pinned, &partition.encode(), r)
    }

    /// The *retiring* copies of `partition` while the layout's replicated change has not
    /// settled ([`Transition`]): the members of its replica set in the layout before the
    /// change that the change took out. A node taking the partition over asks them too; they
    /// neither follow nor count toward a write's quorum. Empty without a transition, and while
    /// the change is staged ([`TransitionPhase::OldLeads`]): the old set leads then, and its
    /// members follow.
    ///
    /// [`Transition`]: crate::layout::Transition
    pub fn retiring(&self, partition: &PartitionKey) -> Vec<&LayoutNode> {
        if self.before.is_empty() || self.old_leads() {
            return Vec::new();
        }
        let now = self.replicas(partition);
        let mut set = self.old_set(partition);
        set.retain(|n| now.iter().all(|m| m.id != n.id));
        set
    }

    /// The term of `partition` in this layout: the newest epoch at which its placement (owner,
    /// holders, voters, retiring copies, whether it is replicated) could have changed
    /// (`layout/terms.rs`). Two layouts that give a partition the same term place it alike, and
    /// a later layout never gives it an older term. Replication takes a partition over, follows
    /// and checks it at its term, so a layout change leaves the partitions it does not touch as
    /// they were. The epoch itself for a layout without terms.
    pub fn term(&self, partition: &PartitionKey) -> u64 {
        let Some(terms) = &self.layout.terms else { return self.layout.epoch };
        let set = self.replica_set(partition);
        let old = self.old_set(partition);
        let extra = self.layout.extra_copies.get(partition).into_iter().flatten();
        let mut term = terms.pin(partition);
        for id in set.iter().chain(&old).map(|n| &n.id).chain(extra) {
            term = term.max(terms.node(id));
        }
        // A change in flight is read by the partitions it touches: those it pinned, and those
        // whose set it changed.
        if self.layout.transition.is_some() {
            let same_set =
                set.len() == old.len() && set.iter().zip(&old).all(|(a, b)| a.id == b.id);
            if self.layout.change_pins(partition) || !same_set {
                term = term.max(terms.transition);
            }
        }
        term
    }

    /// Whether some partition may have more than one copy to keep in step: R > 1, or a layout
    /// change in flight (at R = 1 the only time a partition has a second copy). Without it a
    /// node follows nobody.
    pub fn replicating(&self) -> bool {
        self.layout.replication_factor > 1 || self.layout.transition.is_some()
    }

    /// The node with this id: one of the layout's, or one the change in flight takes out (a
    /// drained node leads its partitions until the change flips, and is asked until it ends).
    pub fn node(&self, id: &NodeId) -> Option<&LayoutNode> {
        let before = || self.layout.transition.as_ref()?.nodes.iter().find(|n| n.id == *id);
        self.layout.node(id).or_else(before)
    }

    /// The nodes `me` follows: every other node at R > 1, or while a change of nodes is in
    /// flight (the nodes it takes out too: they lead until it flips); with one copy and a change
    /// of pins alone, the owners of the partitions the change moves to `me` (so a move at R = 1
    /// costs the two nodes it touches, not a listing of every node's partitions on every node);
    /// nobody with one copy and nothing in flight.
    pub fn primaries_of(&self, me: &NodeId) -> Vec<&LayoutNode> {
        let others = || {
            let leaving = self.layout.transition.iter().flat_map(|t| &t.nodes);
            let leaving = leaving.filter(|n| self.layout.node(&n.id).is_none());
            self.layout.nodes.iter().chain(leaving).filter(|n| n.id != *me).collect()
        };
        if self.layout.replication_factor > 1 {
            return others();
        }
        let Some(t) = &self.layout.transition else { return Vec::new() };
        if t.nodes != self.layout.nodes {
            return others();
        }
        let mut primaries: Vec<&LayoutNode> = Vec::new();
        for p in t.pins.keys() {
            let Some(owner) = self.owner(p).filter(|o| o.id != *me) else { continue };
            let follows = self.holders(p).iter().any(|n| n.id == *me);
            if follows && !primaries.iter().any(|n| n.id == owner.id) {
                primaries.push(owner);
            }
        }
        primaries
    }

    /// Whether the writes of `partition` are replicated: R > 1, or a change in flight gives it
    /// more than one copy the layout counts on ([`Ring::holders`] and [`Ring::retiring`]). Its
    /// owner then takes its writes over at each epoch and waits for a quorum of its voters;
    /// otherwise (R = 1, one copy) it writes alone.
    pub fn replicated(&self, partition: &PartitionKey) -> bool {
        self.layout.replication_factor > 1
            || (self.layout.transition.is_some()
                && self.holders(partition).len() + self.retiring(partition).len() > 1)
    }

    /// Whether the change in flight moves `partition`: it set the partition's pin, or (a change
    /// of nodes) its replica set before the change is not its set now.
    pub fn moving(&self, partition: &PartitionKey) -> bool {
        let Some(t) = &self.layout.transition else { return false };
        if self.layout.change_pins(partition) {
            return true;
        }
        // A change of pins alone changed no other partition's set.
        t.nodes != self.layout.nodes && {
            let (now, old) = (self.replica_set(partition), self.old_set(partition));
            now.len() != old.len() || now.iter().zip(&old).any(|(a, b)| a.id != b.id)
        }
    }

    /// The pace at which a copy of `partition` is filled, if the change in flight moves it
    /// ([`Ring::moving`]): the layout's `fill_rate` in memories per second, 0 for as fast as it
    /// goes. `None` for every other partition.
    pub fn filling(&self, partition: &PartitionKey) -> Option<u64> {
        self.moving(partition).then(|| self.layout.fill_rate.unwrap_or(0))
    }

    /// Whether node `id` holds a copy of `partition` the layout still counts on: one of its
    /// [`Ring::holders`] or a [`Ring::retiring`] copy (a copy held anywhere else may be dropped
    /// once the set has what it has).
    pub fn keeps(&self, partition: &PartitionKey, id: &NodeId) -> bool {
        self.holders(partition).iter().chain(&self.retiring(partition)).any(|n| n.id == *id)
    }

    /// The first `r` distinct nodes clockwise from an arbitrary key (ignores overrides).
    pub fn replicas_of_bytes(&self, key: &[u8], r: usize) -> Vec<&LayoutNode> {
        walk(&self.points, &self.layout.nodes, key).take(r).collect()
    }

    /// Each node's share of the key space (fractions summing to 1), in layout order.
    pub fn shares(&self) -> Vec<(NodeId, f64)> {
        let points = &self.points;
        let mut owned = vec![0u128; self.layout.nodes.len()];
        let mut prev = points.last().map(|p| p.0).unwrap_or(0);
        for &(point, node) in points {
            // A vnode owns the arc (prev, point], wrapping around zero for the first one.
            owned[node] += u128::from(point.wrapping_sub(prev));
            prev = point;
        }
        if points.len() == 1 {
            owned[points[0].1] = 1u128 << 64;
        }
        let total = (1u128 << 64) as f64;
        self.layout
            .nodes
            .iter()
            .zip(owned)
            .map(|(n, arc)| (n.id.clone(), arc as f64 / total))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::layout::{NodeState, PinKind};
    use crate::scope::Scope;
    use proptest::prelude::*;

    fn layout(n: usize, vnodes: u32) -> ClusterLayout {
        let mut l = ClusterLayout { vnodes_per_node: vnodes, ..Default::default() };
        for i in 0..n {
            l = l.with_node(LayoutNode {
                id: NodeId::parse(&format!("shard-{i}")).expect("id"),
                addr: format!("127.0.0.1:{}", 7710 + i),
            });
        }
        l
    }

    fn keys(n: usize) -> Vec<PartitionKey> {
        (0..n)
            .map(|i| {
                PartitionKey::new(
                    &TenantId::parse(&format!("tenant-{i}")).expect("id"),
                    &Scope::Shared,
                )
            })
            .collect()
    }

    fn key_of(i: u64) -> PartitionKey {
        PartitionKey::new(&TenantId::parse(&format!("tenant-{i}")).expect("id"), &Scope::Shared)
    }

    /// Pins the hash: if this fails, placement changed and every cluster's data would move.
    #[test]
    fn golden_placement_values() {
        assert_eq!(xxh3_64(b""), 0x2d06800538d394c2);
        assert_eq!(StableBuildHasher.hash_one(KeyBytes(b"memring")), xxh3_64(b"memring"));
        let ring = Ring::new(layout(3, 256));
        let owners: Vec<&str> = keys(8)
            .iter()
            .map(|k| ring.owner(k).map(|n| n.id.as_str()).unwrap_or("none"))
            .collect();
        assert_eq!(owners, GOLDEN_OWNERS, "placement moved: {owners:?}");
    }

    /// Owners of tenant-0..7/shared on shard-0..2 with 256 vnodes, recorded when the hash was pinned.
    const GOLDEN_OWNERS: [&str; 8] =
        ["shard-1", "shard-0", "shard-0", "shard-1", "shard-1", "shard-0", "shard-0", "shard-1"];

    #[test]
    fn empty_ring_has_no_owner() {
        assert!(Ring::new(ClusterLayout::default()).owner(&PartitionKey::global()).is_none());
    }

    #[test]
    fn pins_win() {
        let mut l = layout(3, 16);
        let key = keys(1).remove(0);
        let ring = Ring::new(l.clone());
        let natural = ring.owner(&key).expect("owner").id.clone();
        let other = l.nodes.iter().find(|n| n.id != natural).expect("another").id.clone();
        l.pins.set(key.clone(), other.clone(), PinKind::Operator);
        assert_eq!(Ring::new(l).owner(&key).expect("owner").id, other);
    }

    #[test]
    fn a_draining_node_gets_no_new_keys_but_keeps_its_pins() {
        let mut l = layout(3, 64);
        let gone = l.nodes[1].id.clone();
        let key = keys(1).remove(0);
        l.pins.set(key.clone(), gone.clone(), PinKind::Operator);
        l.states.set(&gone, NodeState::Draining);
        let ring = Ring::new(l);
        assert_eq!(ring.owner(&key).expect("owner").id, gone, "the pin still holds");
        for k in keys(2000).iter().skip(1) {
            assert_ne!(ring.owner(k).expect("owner").id, gone);
        }
        let share: f64 = ring.shares().iter().filter(|s| s.0 == gone).map(|s| s.1).sum();
        assert_eq!(share, 0.0);
    }

    #[test]
    fn shares_sum_to_one() {
        for n in 1..5 {
            let total: f64 = Ring::new(layout(n, 64)).shares().iter().map(|s| s.1).sum();
            assert!((total - 1.0).abs() < 1e-9, "{n} nodes: {total}");
        }
    }

    /// Moving from 3 to 4 nodes moves about a quarter of the keys, all onto the new node; prints
    /// the balance (max/mean load) for 16/128/256 vnodes (recorded in docs/benchmarks.md).
    #[test]
    fn add_a_fourth_node_moves_a_quarter_onto_it_only() {
        let keys = keys(100_000);
        for vnodes in [16, 128, 256] {
            let before = Ring::new(layout(3, vnodes));
            let after = Ring::new(layout(4, vnodes));
            let mut moved = 0usize;
            let mut load = [0usize; 4];
            for key in &keys {
                let a = before.owner(key).expect("owner");
                let b = after.owner(key).expect("owner");
                if a.id != b.id {
                    moved += 1;
                    assert_eq!(b.id.as_str(), "shard-3", "a key moved between old nodes");
                }
                let idx = after.layout().nodes.iter().position(|n| n.id == b.id).expect("member");
                load[idx] += 1;
            }
            let fraction = moved as f64 / keys.len() as f64;
            let mean = keys.len() as f64 / 4.0;
            let max = *load.iter().max().expect("nonempty") as f64;
            println!(
                "vnodes={vnodes}: moved {:.2}% (ideal 25%), max/mean load {:.3}",
                fraction * 100.0,
                max / mean
            );
            let tolerance = if vnodes >= 128 { 0.04 } else { 0.10 };
            assert!((fraction - 0.25).abs() < tolerance, "vnodes={vnodes}: moved {fraction}");
        }
    }

    #[test]
    fn replica_sets_are_distinct_nodes_led_by_the_owner_or_the_pin() {
        let mut l = layout(5, 64);
        l.replication_factor = 3;
        let ring = Ring::new(l.clone());
        for key in keys(500) {
            let set: Vec<&str> = ring.replicas(&key).iter().map(|n| n.id.as_str()).collect();
            assert_eq!(set.len(), 3);
            assert_eq!(set[0], ring.owner(&key).expect("owner").id.as_str());
            let distinct: std::collections::BTreeSet<_> = set.iter().collect();
            assert_eq!(distinct.len(), 3, "{set:?}");
        }
        // A pin leads its set; the rest follow the ring without repeating it.
        let key = keys(1).remove(0);
        let natural = ring.replicas(&key);
        let pin = l.nodes.iter().find(|n| natural.iter().all(|m| m.id != n.id)).expect("outsider");
        l.pins.set(key.clone(), pin.id.clone(), PinKind::Operator);
        let pinned = Ring::new(l.clone());
        let set = pinned.replicas(&key);
        assert_eq!(set[0].id, pin.id);
        assert_eq!(
            set[1..].iter().map(|n| &n.id).collect::<Vec<_>>(),
            [&natural[0].id, &natural[1].id]
        );
        // More copies than nodes: every node once.
        l.replication_factor = 9;
        assert_eq!(Ring::new(l).replicas(&keys(1)[0]).len(), 5);
        assert!(Ring::new(ClusterLayout::default()).replicas(&key).is_empty());
    }

    #[test]
    fn a_down_node_hands_its_writes_to_the_next_replica_and_keeps_its_place() {
        let mut l = layout(4, 64);
        l.replication_factor = 3;
        let up = Ring::new(l.clone());
        let key = keys(1).remove(0);
        let set: Vec<NodeId> = up.replicas(&key).iter().map(|n| n.id.clone()).collect();
        l.states.set(&set[0], NodeState::Down { draining: false });
        let ring = Ring::new(l.clone());
        // Same three copies; the second is the owner now, the down one a follower.
        assert_eq!(ring.replicas(&key).iter().map(|n| n.id.clone()).collect::<Vec<_>>(), set);
        assert_eq!(ring.owner(&key).expect("owner").id, set[1]);
        let followers: Vec<NodeId> = ring.followers(&key).iter().map(|n| n.id.clone()).collect();
        assert_eq!(followers, [set[0].clone(), set[2].clone()]);
        // Every copy down: the owner stays the first (its requests fail rather than move).
        for id in &set {
            l.states.set(id, NodeState::Down { draining: false });
        }
        assert_eq!(Ring::new(l.clone()).owner(&key).expect("owner").id, set[0]);
        // Removing the down node keeps the owner and slides the next node into the set.
        for id in &set[1..] {
            l.states.set(id, NodeState::Active);
        }
        let removed = Ring::new(l.without_node(&set[0]));
        assert_eq!(removed.owner(&key).expect("owner").id, set[1]);
        let after: Vec<NodeId> = removed.replicas(&key).iter().map(|n| n.id.clone()).collect();
        assert_eq!(after.len(), 3);
        assert_eq!(after[..2], set[1..]);
    }

    #[test]
    fn a_joining_node_follows_in_its_place_but_leads_nothing_until_handed_back() {
        let mut l = layout(4, 64);
        l.replication_factor = 3;
        let key = keys(1).remove(0);
        let set: Vec<NodeId> =
            Ring::new(l.clone()).replicas(&key).iter().map(|n| n.id.clone()).collect();
        l.states.set(&set[0], NodeState::Joining);
        l.validate().expect("valid");
        let ring = Ring::new(l.clone());
        assert_eq!(ring.replicas(&key).iter().map(|n| n.id.clone()).collect::<Vec<_>>(), set);
        assert_eq!(ring.owner(&key).expect("owner").id, set[1]);
        // Unlike a down node it is live: asked by take-overs, readable as a replica.
        assert!(!l.is_down(&set[0]) && !l.may_lead(&set[0]));
        l.states.set(&set[0], NodeState::Active);
        assert_eq!(Ring::new(l.clone()).owner(&key).expect("owner").id, set[0]);
        l.states.set(&NodeId::parse("zz").expect("id"), NodeState::Joining);
        assert!(l.validate().is_err());
    }

    /// A join's transition: each partition's retiring copies are exactly the members of its old
    /// set the join took out; they are kept but neither own nor follow; without a transition (or
    /// replication) there are none.
    #[test]
    fn a_transition_keeps_the_members_a_join_displaced_as_retiring_copies() {
        let mut l = layout(3, 32);
        l.replication_factor = 3;
        let mut joined = l.with_node(LayoutNode {
            id: NodeId::parse("shard-9").expect("id"),
            addr: "127.0.0.1:7799".into(),
        });
        joined.transition = Some(crate::layout::Transition::from_nodes(joined.epoch, &l.nodes));
        let (before, after) = (Ring::new(l.clone()), Ring::new(joined.clone()));
        let ids = |set: Vec<&LayoutNode>| set.into_iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let mut displaced_some = 0;
        for key in keys(200) {
            let (was, now) = (ids(before.replica_set(&key)), ids(after.replica_set(&key)));
            let gone: Vec<NodeId> = was.iter().filter(|n| !now.contains(n)).cloned().collect();
            assert_eq!(ids(after.retiring(&key)), gone, "{key}");
            for id in &gone {
                assert!(after.keeps(&key, id));
                assert!(after.replicas(&key).iter().all(|n| n.id != *id));
                assert!(after.owner(&key).is_some_and(|o| o.id != *id));
            }
            displaced_some += usize::from(!gone.is_empty());
            let settled = Ring::new(ClusterLayout { transition: None, ..joined.clone() });
            assert!(settled.retiring(&key).is_empty());
            // With one copy the one member taken out is the old owner, when it moved.
            let single =
                |l: &ClusterLayout| Ring::new(ClusterLayout { replication_factor: 1, ..l.clone() });
            let (was, now) = (single(&l), single(&joined));
            let moved =
                was.owner(&key).map(|o| o.id.clone()) != now.owner(&key).map(|o| o.id.clone());
            let expect = if moved { ids(was.replica_set(&key)) } else { Vec::new() };
            assert_eq!(ids(now.retiring(&key)), expect, "{key}");
        }
        assert!(displaced_some > 0, "the join displaced nobody among 200 partitions");
    }

    /// A staged change (docs/one-engine.md) leads from the layout before it: with one copy and
    /// with three, every partition's owner is its old set's, the old and the new members follow
    /// it, only the old set's count toward a quorum, and nothing is retiring; once flipped the
    /// new layout leads and the old members it left out retire.
    #[test]
    fn a_staged_change_leads_from_the_old_sets_until_it_flips() {
        use crate::layout::{Transition, TransitionPhase};
        let ids = |set: Vec<&LayoutNode>| set.into_iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        for r in [1, 3] {
            let mut l = layout(3, 32);
            l.replication_factor = r;
            let mut staged = l.with_node(LayoutNode {
                id: NodeId::parse("shard-9").expect("id"),
                addr: "127.0.0.1:7799".into(),
            });
            let mut t = Transition::from_nodes(staged.epoch, &l.nodes);
            t.phase = TransitionPhase::OldLeads;
            staged.transition = Some(t);
            let flipped = {
                let mut f = staged.clone();
                if let Some(t) = f.transition.as_mut() {
                    t.phase = TransitionPhase::NewLeads;
                }
                f
            };
            let (before, target) = (
                Ring::new(l.clone()),
                Ring::new(ClusterLayout { transition: None, ..staged.clone() }),
            );
            let (during, after) = (Ring::new(staged.clone()), Ring::new(flipped));
            let mut moved = 0;
            for key in keys(300) {
                let (old, new) = (ids(before.replica_set(&key)), ids(target.replica_set(&key)));
                assert_eq!(ids(during.old_set(&key)), old, "R = {r}, {key}");
                let owner = before.owner(&key).map(|o| o.id.clone());
                assert_eq!(during.owner(&key).map(|o| o.id.clone()), owner, "R = {r}, {key}");
                let mut holders: Vec<NodeId> = new.clone();
                holders.extend(old.iter().filter(|n| !new.contains(n)).cloned());
                assert_eq!(ids(during.holders(&key)), holders, "R = {r}, {key}");
                let others = |set: &[NodeId]| {
                    set.iter().filter(|n| Some(*n) != owner.as_ref()).cloned().collect::<Vec<_>>()
                };
                assert_eq!(ids(during.followers(&key)), others(&holders), "R = {r}, {key}");
                assert_eq!(ids(during.voters(&key)), others(&old), "R = {r}, {key}");
                assert!(during.retiring(&key).is_empty(), "R = {r}, {key}");
                for id in &holders {
                    assert!(during.keeps(&key, id));
                }
                // Flipped: the new layout leads; the old members it left out retire.
                assert_eq!(ids(after.replica_set(&key)), new);
                assert_eq!(
                    after.owner(&key).map(|o| o.id.clone()),
                    target.owner(&key).map(|o| o.id.clone())
                );
                let gone: Vec<NodeId> = old.iter().filter(|n| !new.contains(n)).cloned().collect();
                assert_eq!(ids(after.retiring(&key)), gone, "R = {r}, {key}");
                moved += usize::from(!gone.is_empty());
            }
            assert!(moved > 0, "R = {r}: the join moved nothing among 300 partitions");
        }
    }

    /// A move staged as a pin change: its transition keeps the pin the partition had before
    /// (none here), so the old set — and its owner — are the ring's until the flip, and the
    /// pinned node leads after it with the old owner retiring.
    #[test]
    fn a_staged_pin_leads_from_the_old_pin_until_it_flips() {
        use crate::layout::{Transition, TransitionPhase};
        let mut l = layout(4, 32);
        l.replication_factor = 1;
        let key = keys(1).remove(0);
        let before = Ring::new(l.clone());
        let owner = before.owner(&key).map(|o| o.id.clone()).expect("an owner");
        let to = l.nodes.iter().map(|n| n.id.clone()).find(|id| *id != owner).expect("another");
        let mut staged = l.clone();
        staged.epoch += 1;
        staged.pins.set(key.clone(), to.clone(), PinKind::Operator);
        let mut t = Transition::from_nodes(staged.epoch, &l.nodes);
        t.phase = TransitionPhase::OldLeads;
        t.pins.insert(key.clone(), None);
        staged.transition = Some(t);
        assert!(!before.replicating() && !before.replicated(&key), "one copy: nothing to follow");
        let during = Ring::new(staged.clone());
        assert!(during.replicating());
        assert!(during.replicated(&key), "the moving partition has two copies while staged");
        let still = keys(64)
            .into_iter()
            .find(|k| *k != key && during.holders(k).len() == 1 && during.retiring(k).is_empty());
        assert!(
            still.is_some_and(|k| !during.replicated(&k)),
            "a partition not moving stays alone"
        );
        assert_eq!(during.owner(&key).map(|o| o.id.clone()), Some(owner.clone()));
        assert_eq!(
            during.followers(&key).iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
            vec![to.clone()]
        );
        assert!(during.voters(&key).is_empty(), "with one copy the new one is filled, not counted");
        let ids = |nodes: Vec<&LayoutNode>| nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(during.primaries_of(&to)), vec![owner.clone()], "the new copy follows");
        for n in l.nodes.iter().filter(|n| n.id != to) {
            assert!(during.primaries_of(&n.id).is_empty(), "{} follows nobody", n.id);
        }
        assert!(before.primaries_of(&to).is_empty(), "nothing in flight: nobody follows");
        let mut three = l.clone();
        three.replication_factor = 3;
        assert_eq!(Ring::new(three).primaries_of(&to).len(), 3, "R = 3: every other node");
        if let Some(t) = staged.transition.as_mut() {
            t.phase = TransitionPhase::NewLeads;
        }
        let after = Ring::new(staged.clone());
        assert!(after.replicated(&key), "flipped: the new owner still asks the retiring copy");
        assert_eq!(after.owner(&key).map(|o| o.id.clone()), Some(to.clone()));
        assert_eq!(
            after.retiring(&key).iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
            vec![owner]
        );
        staged.epoch += 1;
        staged.transition = None;
        let ended = Ring::new(staged);
        assert!(!ended.replicating() && !ended.replicated(&key), "settled: one copy again");
        assert_eq!(ended.owner(&key).map(|o| o.id.clone()), Some(to));
    }

    #[test]
    fn extra_copies_follow_but_never_own() {
        let mut l = layout(5, 64);
        l.replication_factor = 3;
        let key = keys(1).remove(0);
        let set: Vec<NodeId> =
            Ring::new(l.clone()).replicas(&key).iter().map(|n| n.id.clone()).collect();
        let outsider = l.nodes.iter().find(|n| !set.contains(&n.id)).expect("outsider").id.clone();
        l.extra_copies.insert(key.clone(), [outsider.clone(), set[1].clone()].into());
        l.validate().expect("valid");
        let ring = Ring::new(l.clone());
        let all: Vec<NodeId> = ring.replicas(&key).iter().map(|n| n.id.clone()).collect();
        // The set is unchanged, the outsider follows it (once), the owner is unchanged.
        assert_eq!(all[..3], set[..]);
        assert_eq!(all[3], outsider);
        assert_eq!(all.len(), 4);
        assert_eq!(ring.replica_set(&key).len(), 3);
        assert_eq!(ring.owner(&key).expect("owner").id, set[0]);
        assert!(ring.followers(&key).iter().any(|n| n.id == outsider));
        // Even with every member of the set down, an extra copy never owns the partition.
        for id in &set {
            l.states.set(id, NodeState::Down { draining: false });
        }
        assert_eq!(Ring::new(l.clone()).owner(&key).expect("owner").id, set[0]);
        // Removing the extra node removes its copy; naming a stranger is refused.
        let without = l.without_node(&outsider);
        assert_eq!(without.extra_copies.get(&key).map(|e| e.len()), Some(1));
        let mut bad = l.clone();
        bad.extra_copies.insert(key, [NodeId::parse("zz").expect("id")].into());
        assert!(bad.validate().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The replica walk starts where `hashring` puts the key, so R = 1 is exactly the owner.
        #[test]
        fn the_first_replica_is_the_ring_owner(n in 1usize..8, vnodes in 1u32..64, seed in 0u64..1000) {
            let ring = Ring::new(layout(n, vnodes));
            for i in 0..300u64 {
                let key = (seed * 7_919 + i).to_be_bytes();
                let first = ring.replicas_of_bytes(&key, 1);
                prop_assert_eq!(&first[0].id, &ring.owner_of_bytes(&key).expect("owner").id);
            }
        }

        /// Without replication the one owner rule gives what the ring alone gives: a pin's
        /// node, else the ring position (a draining node has no ring share).
        #[test]
        fn without_replication_the_owner_is_the_pin_or_the_ring_position(
            n in 2usize..8,
            vnodes in 1u32..64,
            seed in 0u64..1000,
            drain in 0usize..8,
        ) {
            let mut l = layout(n, vnodes);
            let pinned_to = l.nodes[(seed as usize) % n].id.clone();
            let drained = l.nodes[drain % n].id.clone();
            l.states.set(&drained, NodeState::Draining);
            for t in 0..50u64 {
                l.pins.set(key_of(seed * 31 + t), pinned_to.clone(), PinKind::Operator);
            }
            let ring = Ring::new(l.clone());
            for t in 0..300u64 {
                let p = key_of(seed * 31 + t);
                let want = match l.pins.node(&p) {
                    Some(pin) => pin.clone(),
                    None => ring.owner_of_bytes(&p.encode()).expect("owner").id.clone(),
                };
                prop_assert_eq!(&ring.owner(&p).expect("owner").id, &want);
                prop_assert_eq!(&ring.replica_set(&p)[0].id, &want);
                if !l.pins.contains_key(&p) {
                    prop_assert!(want != drained, "a draining node got {}", p);
                }
            }
        }

        /// Adding a node changes each replica set by at most one member (the new node enters,
        /// one old member leaves): replication moves as little as placement does.
        #[test]
        fn adding_a_node_swaps_at_most_one_replica(n in 3usize..8, seed in 0u64..1000) {
            let (before, after) = (Ring::new(layout(n, 32)), Ring::new(layout(n + 1, 32)));
            for i in 0..300u64 {
                let key = (seed * 104_729 + i).to_be_bytes();
                let a: Vec<&NodeId> = before.replicas_of_bytes(&key, 3).iter().map(|x| &x.id).collect();
                let b: Vec<&NodeId> = after.replicas_of_bytes(&key, 3).iter().map(|x| &x.id).collect();
                let kept = b.iter().filter(|id| a.contains(id)).count();
                prop_assert!(kept >= 2, "{:?} -> {:?}", a, b);
            }
        }

        /// Adding any node to any ring only moves keys onto the added node.
        #[test]
        fn adding_a_node_only_moves_keys_to_it(n in 1usize..8, vnodes in 1u32..64, seed in 0u64..1000) {
            let before = Ring::new(layout(n, vnodes));
            let after = Ring::new(layout(n + 1, vnodes));
            let added = format!("shard-{n}");
            for i in 0..500u64 {
                let key = (seed * 1_000_003 + i).to_be_bytes();
                let a = before.owner_of_bytes(&key).expect("owner");
                let b = after.owner_of_bytes(&key).expect("owner");
                prop_assert!(a.id == b.id || b.id.as_str() == added);
            }
        }

        /// Removing a node only moves the keys it owned.
        #[test]
        fn removing_a_node_only_moves_its_keys(n in 2usize..8, vnodes in 1u32..64, gone in 0usize..8) {
            let gone = gone % n;
            let full = layout(n, vnodes);
            let gone_id = full.nodes[gone].id.clone();
            let before = Ring::new(full.clone());
            let after = Ring::new(full.without_node(&gone_id));
            for i in 0..500u64 {
                let key = i.to_le_bytes();
                let a = before.owner_of_bytes(&key).expect("owner");
                let b = after.owner_of_bytes(&key).expect("owner");
                prop_assert!(a.id == b.id || a.id == gone_id);
            }
        }

        /// The same layout always gives the same placement (no hidden per-process state).
        #[test]
        fn placement_is_deterministic(n in 1usize..6, key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let a = Ring::new(layout(n, 32));
            let b = Ring::new(layout(n, 32));
            prop_assert_eq!(&a.owner_of_bytes(&key).expect("owner").id, &b.owner_of_bytes(&key).expect("owner").id);
        }
    }
}
