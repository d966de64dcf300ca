//! The cluster layout: the document the ring store keeps.
//!
//! A layout names the shard nodes in the ring (with their addresses), the virtual-node count,
//! and placement overrides (a partition pinned to a node, e.g. a big tenant on a dedicated node or
//! a partition mid-migration). Every change bumps the one cluster **epoch**; stores accept a new
//! layout only by compare-and-swap on the epoch it replaces. The document carries a format version
//! so that a newer binary can read an older store and refuse one it does not understand.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::scope::PartitionKey;

mod pins;
mod policy;
mod states;
mod terms;
mod transition;

pub use pins::{Pin, PinKind, Pins};
pub use policy::SizePolicy;
pub use states::{NodeState, NodeStates};
pub use terms::Terms;
pub use transition::{Transition, TransitionPhase};

/// The layout format this binary writes.
pub const LAYOUT_FORMAT_VERSION: u32 = 1;
/// Virtual nodes per physical node unless the layout says otherwise (see docs/benchmarks.md for
/// the balance measured at 16, 128 and 256).
pub const DEFAULT_VNODES: u32 = 256;
/// Most copies a layout may ask for.
pub const MAX_REPLICATION: u32 = 7;

/// One shard node in the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutNode {
    /// Stable name.
    pub id: NodeId,
    /// `host:port` of its HTTP API.
    pub addr: String,
}

/// The whole placement state, versioned by `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    /// On-disk/on-wire format of this document.
    pub format_version: u32,
    /// Bumped by one on every change.
    pub epoch: u64,
    /// Virtual nodes per physical node.
    pub vnodes_per_node: u32,
    /// Nodes in the ring, sorted by id.
    pub nodes: Vec<LayoutNode>,
    /// Partitions placed on a named node regardless of the ring, each with who placed it there
    /// ([`Pins`]; stored as the `overrides`, `staging_pins` and `policy_pins` of the document).
    #[serde(flatten)]
    pub pins: Pins,
    /// What each node is doing, if not serving normally ([`NodeState`]; stored as the
    /// `draining`, `down` and `joining` of the document).
    #[serde(flatten)]
    pub states: NodeStates,
    /// Set by control planes from before the one engine while a rebalance or drain took stock
    /// of every partition: shard nodes refuse to *create* a partition (its first write gets a
    /// retryable `partition_moving`). A change staged now needs no freeze (a partition created
    /// meanwhile is followed by its new set), so none is set; the next rebalance, or the
    /// control plane when it starts, clears one left behind.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creation_frozen: bool,
    /// Copies of every partition (see `Ring::replicas`); 1 until replication is switched on.
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// Copies a write must reach before it is acknowledged; default a majority of
    /// `replication_factor` (see [`ClusterLayout::write_quorum`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<u32>,
    /// Copies a replicated migration keeps beside a partition's replica set while it moves the
    /// set (`control-plane/src/move_set.rs`): a node that is joining the set replays the log
    /// before it may own the partition, and a node that is leaving it stays until the new set
    /// has everything. These nodes follow the owner and count toward its write quorum (a write
    /// is on W of *all* the copies, and a node taking over asks enough of all of them), but are
    /// never the owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_copies: BTreeMap<PartitionKey, BTreeSet<NodeId>>,
    /// A replicated join or drain that has not settled: the nodes before it, whose replica sets
    /// are still asked by a node taking a partition over ([`Transition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
    /// Whether the active control plane admits shard nodes that register without an operator:
    /// it runs the same rebalance `shardctl rebalance` runs once a new node has been live for a
    /// few seconds (`control-plane/src/autopilot.rs`). Off unless switched on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_rebalance: bool,
    /// Placement by size (`control-plane/src/autopilot.rs`): tenants this large get a node of
    /// their own. Its dedicated nodes have no ring share: they hold only what the policy pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_policy: Option<SizePolicy>,
    /// When each part of the layout that placement reads last changed, from which each
    /// partition's term follows (`Ring::term`; stamped by the ring store on every write). A
    /// layout without them gives every partition the epoch as its term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<Terms>,
    /// How fast a node fills a copy the change in flight moves to it from a snapshot, in
    /// memories per second (`shardctl --migration-rate`; absent: as fast as it goes). Written
    /// with the change by the control plane that stages it (`control-plane/src/reconcile.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_rate: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Default for ClusterLayout {
    fn default() -> Self {
        Self {
            format_version: LAYOUT_FORMAT_VERSION,
            epoch: 0,
            vnodes_per_node: DEFAULT_VNODES,
            nodes: Vec::new(),
            pins: Pins::default(),
            states: NodeStates::default(),
            creation_frozen: false,
            replication_factor: 1,
            write_quorum: None,
            extra_copies: BTreeMap::new(),
            transition: None,
            auto_rebalance: false,
            size_policy: None,
            terms: None,
            fill_rate: None,
        }
    }
}

impl ClusterLayout {
    /// Checks a layout read from a store or received from an operator.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.format_version > LAYOUT_FORMAT_VERSION {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "layout format {} is newer than this binary understands ({LAYOUT_FORMAT_VERSION}); upgrade memring",
                    self.format_version
                ),
            ));
        }
        if self.vnodes_per_node == 0 || self.vnodes_per_node > 4096 {
            return Err(ApiError::invalid(format!(
                "vnodes_per_node must be 1..=4096, got {}",
                self.vnodes_per_node
            )));
        }
        if !(1..=MAX_REPLICATION).contains(&self.replication_factor) {
            return Err(ApiError::invalid(format!(
                "replication_factor must be 1..={MAX_REPLICATION}, got {}",
                self.replication_factor
            )));
        }
        if self.write_quorum.is_some_and(|w| w == 0 || w > self.replication_factor) {
            return Err(ApiError::invalid(format!(
                "write_quorum must be 1..={} (the replication factor)",
                self.replication_factor
            )));
        }
        for pair in self.nodes.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(ApiError::invalid(format!(
                    "layout nodes must be sorted and unique; {} then {}",
                    pair[0].id, pair[1].id
                )));
            }
        }
        for node in self.states.nodes(|_| true) {
            if self.node(node).is_none() {
                return Err(ApiError::invalid(format!(
                    "node {node} ({:?}) is not in the layout",
                    self.states.get(node)
                )));
            }
        }
        for (partition, pin) in self.pins.iter() {
            if self.node(&pin.node).is_none() {
                return Err(ApiError::invalid(format!(
                    "pin {partition} -> {} names a node that is not in the layout",
                    pin.node
                )));
            }
        }
        if let Some(policy) = &self.size_policy {
            policy.validate()?;
        }
        if let Some(transition) = &self.transition {
            transition.validate(self.epoch)?;
        }
        for (partition, nodes) in &self.extra_copies {
            if let Some(node) = nodes.iter().find(|n| self.node(n).is_none()) {
                return Err(ApiError::invalid(format!(
                    "extra copy of {partition} on {node} names a node that is not in the layout"
                )));
            }
        }
        Ok(())
    }

    /// Copies a write must reach before it is acknowledged: the configured quorum, else a
    /// majority of the replication factor (1 of 1, 2 of 2, 2 of 3).
    pub fn write_quorum(&self) -> u32 {
        self.write_quorum
            .unwrap_or(self.replication_factor / 2 + 1)
            .clamp(1, self.replication_factor.max(1))
    }

    /// Whether the change in flight set (moved or removed) the pin of `partition`: a move, or
    /// a change of pins, brings it to its new set (a change of nodes sets no pin).
    pub fn change_pins(&self, partition: &PartitionKey) -> bool {
        self.transition.as_ref().is_some_and(|t| t.pins.contains_key(partition))
    }

    /// Whether replicated node `id` is out of service: marked down by failover, or (with
    /// replication) draining — it keeps its place in replica sets and follows until it is out —
    /// or taken out by the change in flight while marked down ([`Transition::down`]). Nobody
    /// waits on such a node: a take-over asks it last, routers do not read from it.
    pub fn is_down(&self, id: &NodeId) -> bool {
        let state = self.states.get(id);
        state.is_marked_down()
            || (self.replication_factor > 1 && state.is_draining())
            || self.transition.as_ref().is_some_and(|t| t.down.contains(id))
    }

    /// Whether replicated node `id` may be a primary: not down, not draining, not joining.
    pub fn may_lead(&self, id: &NodeId) -> bool {
        !self.is_down(id) && self.states.get(id) != NodeState::Joining
    }

    /// Whether `id` is kept for dedicated tenants (no ring share; see [`SizePolicy`]).
    pub fn is_dedicated(&self, id: &NodeId) -> bool {
        self.size_policy.as_ref().is_some_and(|p| p.dedicated_nodes.contains(id))
    }

    /// The node with this id.
    pub fn node(&self, id: &NodeId) -> Option<&LayoutNode> {
        self.nodes.iter().find(|n| &n.id == id)
    }

    /// A copy with `node` added (or its address updated), epoch + 1.
    pub fn with_node(&self, node: LayoutNode) -> Self {
        let mut next = self.clone();
        next.epoch += 1;
        match next.nodes.iter_mut().find(|n| n.id == node.id) {
            Some(existing) => existing.addr = node.addr,
            None => {
                next.nodes.push(node);
                next.nodes.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        next
    }

    /// A copy in which `partitions` are placed by the ring alone: no pin, no extra copies (the
    /// same epoch; for asking where they would be, not for storing).
    pub fn unpinned<'a>(&self, partitions: impl IntoIterator<Item = &'a PartitionKey>) -> Self {
        let mut bare = self.clone();
        for p in partitions {
            bare.pins.remove(p);
            bare.extra_copies.remove(p);
        }
        bare
    }

    /// A copy without `id` (and without pins pointing at it), epoch + 1.
    pub fn without_node(&self, id: &NodeId) -> Self {
        let mut next = self.clone();
        next.epoch += 1;
        next.nodes.retain(|n| &n.id != id);
        next.pins.retain(|_, pin| pin.node != *id);
        for nodes in next.extra_copies.values_mut() {
            nodes.remove(id);
        }
        next.extra_copies.retain(|_, nodes| !nodes.is_empty());
        next.states.remove(id);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> LayoutNode {
        LayoutNode { id: NodeId::parse(id).expect("id"), addr: format!("127.0.0.1:1/{id}") }
    }

    #[test]
    fn adding_and_removing_bumps_the_epoch_and_keeps_order() {
        let l = ClusterLayout::default().with_node(node("b")).with_node(node("a"));
        assert_eq!(l.epoch, 2);
        assert_eq!(l.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        l.validate().expect("valid");
        let l = l.without_node(&NodeId::parse("a").expect("id"));
        assert_eq!(l.epoch, 3);
        assert_eq!(l.nodes.len(), 1);
    }

    #[test]
    fn newer_formats_are_refused() {
        let l = ClusterLayout { format_version: LAYOUT_FORMAT_VERSION + 1, ..Default::default() };
        assert!(l.validate().is_err());
    }

    #[test]
    fn pins_must_name_a_member() {
        let mut l = ClusterLayout::default().with_node(node("a"));
        l.pins.set(PartitionKey::global(), NodeId::parse("zz").expect("id"), PinKind::Operator);
        assert!(l.validate().is_err());
    }

    /// The pin map is stored in the shape binaries before it read (`overrides`, `staging_pins`,
    /// `policy_pins`), both ways, and a layout without pins reads as one without pins.
    #[test]
    fn pins_are_stored_as_overrides_with_their_kinds_beside() {
        let p = |s: &str| s.parse::<PartitionKey>().expect("partition");
        let mut l = ClusterLayout::default().with_node(node("a")).with_node(node("b"));
        let (a, b) = (NodeId::parse("a").expect("id"), NodeId::parse("b").expect("id"));
        l.pins.set(p("op/shared"), a.clone(), PinKind::Operator);
        l.pins.set(p("stage/shared"), b.clone(), PinKind::Staging);
        l.pins.set(p("big/shared"), b.clone(), PinKind::Policy);
        let doc = serde_json::to_value(&l).expect("json");
        assert_eq!(
            doc["overrides"],
            serde_json::json!({"op/shared": "a", "stage/shared": "b", "big/shared": "b"})
        );
        assert_eq!(doc["staging_pins"], serde_json::json!(["stage/shared"]));
        assert_eq!(doc["policy_pins"], serde_json::json!(["big/shared"]));
        assert!(doc.get("pins").is_none(), "{doc}");
        let back: ClusterLayout = serde_json::from_value(doc).expect("read back");
        assert_eq!(back, l);
        assert_eq!(back.pins.node(&p("stage/shared")), Some(&b));
        assert!(back.pins.is(&p("big/shared"), PinKind::Policy));
        assert_eq!(back.pins.of(PinKind::Operator).collect::<Vec<_>>(), [(&p("op/shared"), &a)]);
        // Without pins: an empty `overrides`, no kind lists; and a document with none at all.
        let bare = serde_json::to_value(ClusterLayout::default()).expect("json");
        assert_eq!(bare["overrides"], serde_json::json!({}));
        assert!(bare.get("staging_pins").is_none() && bare.get("policy_pins").is_none());
        let old = serde_json::json!({"format_version": 1, "epoch": 3, "vnodes_per_node": 16,
            "nodes": [], "staging_pins": ["x/shared"]});
        let read: ClusterLayout = serde_json::from_value(old).expect("older document");
        assert!(read.pins.is_empty(), "a kind without an override pins nothing");
        assert_eq!(read.epoch, 3);
    }

    /// Node states are stored as the sets binaries before them read (`draining`, `down`,
    /// `joining`), both ways; a node down while draining is in `down` and `draining`, and stays
    /// draining when it is back.
    #[test]
    fn node_states_are_stored_as_the_older_sets() {
        let id = |s: &str| NodeId::parse(s).expect("id");
        let mut l = ClusterLayout::default();
        for n in ["a", "b", "c", "d", "e"] {
            l = l.with_node(node(n));
        }
        l.replication_factor = 3;
        l.states.set(&id("b"), NodeState::Joining);
        l.states.set(&id("c"), NodeState::Draining);
        l.states.set(&id("d"), NodeState::Down { draining: false });
        l.states.set(&id("e"), NodeState::Down { draining: true });
        l.validate().expect("valid");
        let doc = serde_json::to_value(&l).expect("json");
        assert_eq!(doc["joining"], serde_json::json!(["b"]));
        assert_eq!(doc["draining"], serde_json::json!(["c", "e"]));
        assert_eq!(doc["down"], serde_json::json!(["d", "e"]));
        let back: ClusterLayout = serde_json::from_value(doc).expect("read back");
        assert_eq!(back, l);
        assert_eq!(back.states.get(&id("a")), NodeState::Active);
        assert!(back.may_lead(&id("a")));
        for n in ["b", "c", "d", "e"] {
            assert!(!back.may_lead(&id(n)), "{n} leads nothing");
        }
        assert!(!back.is_down(&id("b")), "a joining node is waited on");
        assert!(back.is_down(&id("c")) && back.is_down(&id("d")) && back.is_down(&id("e")));
        assert_eq!(back.states.draining().collect::<Vec<_>>(), [&id("c"), &id("e")]);
        l.states.set(&id("e"), NodeState::Active);
        l.states.set(&id("d"), NodeState::Active);
        l.states.set(&id("c"), NodeState::Active);
        l.states.set(&id("b"), NodeState::Active);
        assert!(l.states.all_active());
        let bare = serde_json::to_value(&l).expect("json");
        assert!(["draining", "down", "joining"].iter().all(|k| bare.get(k).is_none()), "{bare}");
        // Leaving the layout forgets the state; a state for a node outside it is refused.
        let mut l = back.without_node(&id("e"));
        assert!(l.states.nodes(|_| true).all(|n| n != &id("e")));
        l.states.set(&id("zz"), NodeState::Joining);
        assert!(l.validate().is_err());
    }
}
