//! What each node of the layout is doing: [`NodeState`], one per node ([`NodeStates`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// What a node of the layout is doing. A node with no state recorded is active: it has its ring
/// share and leads the partitions whose set it comes first in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Serving normally.
    Active,
    /// With replication: following, leading nothing yet — one back from being down (re-admitted
    /// by failover), or one a rebalance added. It keeps its place in every replica set, counts
    /// toward write quorums and answers take-overs, but is never the primary; the control plane
    /// makes it active only once every copy it holds has been checked against its owner's log at
    /// the current epoch and is caught up. So a node that returns never takes the writes back
    /// just because it comes first in ring order.
    Joining,
    /// Being drained: still addressable (pins may name it) but given no ring share, so no new
    /// partition lands on it. With replication it keeps its ring places (so replica sets do not
    /// change under it) but is never a primary, and nobody waits on it; removing the node
    /// afterwards moves its copies.
    Draining,
    /// With replication: found dead by the control plane (its lease expired). It keeps its
    /// place in every replica set but is never the primary, so the next live replica takes the
    /// partition's writes. Returning, it follows its primaries and is re-admitted (joining, or
    /// still draining if `draining`); one gone for longer than the control plane's
    /// `replace_after` is removed from the layout, so its replica sets take the next node in.
    Down {
        /// It was being drained when it went down.
        draining: bool,
    },
}

impl NodeState {
    /// Draining, or down while draining.
    pub fn is_draining(self) -> bool {
        matches!(self, NodeState::Draining | NodeState::Down { draining: true })
    }

    /// Marked down by failover.
    pub fn is_marked_down(self) -> bool {
        matches!(self, NodeState::Down { .. })
    }
}

/// The state of every node that is not simply active (see [`NodeState`]). In the stored
/// document it keeps the shape older binaries read: the sets `draining` (draining nodes, down
/// or not), `down` and `joining`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StatesDocument", into = "StatesDocument")]
pub struct NodeStates(BTreeMap<NodeId, NodeState>);

impl NodeStates {
    /// The state of node `id` (active unless recorded).
    pub fn get(&self, id: &NodeId) -> NodeState {
        self.0.get(id).copied().unwrap_or(NodeState::Active)
    }

    /// Records node `id`'s state.
    pub fn set(&mut self, id: &NodeId, state: NodeState) {
        match state {
            NodeState::Active => self.0.remove(id),
            other => self.0.insert(id.clone(), other),
        };
    }

    /// Forgets node `id` (it left the layout).
    pub fn remove(&mut self, id: &NodeId) {
        self.0.remove(id);
    }

    /// Whether every node is active.
    pub fn all_active(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes whose state `is` accepts, in id order.
    pub fn nodes(&self, is: impl Fn(NodeState) -> bool) -> impl Iterator<Item = &NodeId> {
        self.0.iter().filter(move |(_, s)| is(**s)).map(|(id, _)| id)
    }

    /// The nodes marked down.
    pub fn down(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes(NodeState::is_marked_down)
    }

    /// The joining nodes.
    pub fn joining(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes(|s| s == NodeState::Joining)
    }

    /// The draining nodes, down or not.
    pub fn draining(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes(NodeState::is_draining)
    }
}

/// The stored shape of [`NodeStates`] (see there).
#[derive(Serialize, Deserialize)]
struct StatesDocument {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    draining: BTreeSet<NodeId>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    down: BTreeSet<NodeId>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    joining: BTreeSet<NodeId>,
}

impl From<StatesDocument> for NodeStates {
    fn from(doc: StatesDocument) -> Self {
        let ids = doc.draining.iter().chain(&doc.down).chain(&doc.joining);
        let state = |id: &NodeId| match (doc.down.contains(id), doc.draining.contains(id)) {
            (true, draining) => NodeState::Down { draining },
            (false, true) => NodeState::Draining,
            // A joining node marked draining drains: it leads nothing either way.
            (false, false) => NodeState::Joining,
        };
        NodeStates(ids.map(|id| (id.clone(), state(id))).collect())
    }
}

impl From<NodeStates> for StatesDocument {
    fn from(states: NodeStates) -> Self {
        StatesDocument {
            draining: states.draining().cloned().collect(),
            down: states.down().cloned().collect(),
            joining: states.joining().cloned().collect(),
        }
    }
}
