//! Wire types of the control plane's API (`GET /v1/cluster`, `shardctl status`): the cluster
//! view of nodes, replica sets and epochs.

use serde::{Deserialize, Serialize};

/// One node in the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Stable name.
    pub id: crate::ids::NodeId,
    /// Address (from the layout, or from its live record if not in the ring).
    pub addr: String,
    /// In the ring layout.
    pub in_ring: bool,
    /// Holds a live lease.
    pub live: bool,
    /// Share of the key space (0 when not in the ring).
    pub share: f64,
    /// Partitions stored, when the node answered.
    pub partitions: Option<u64>,
    /// Memories stored, when the node answered.
    pub episodes: Option<u64>,
    /// Marked down by failover (replication): never a primary until re-admitted.
    #[serde(default)]
    pub down: bool,
    /// Re-admitted or new (replication): follows, leads nothing until handed back.
    #[serde(default)]
    pub joining: bool,
    /// Log entries its follower copies are behind their primaries, when it answered.
    #[serde(default)]
    pub lag: Option<u64>,
}

/// One partition's copies in the cluster view (with replication).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaSetView {
    /// The partition, `tenant/scope`.
    pub partition: String,
    /// Its replica set, owner first.
    pub replicas: Vec<crate::ids::NodeId>,
    /// Members of the set that are marked down.
    pub down: Vec<crate::ids::NodeId>,
    /// Live members that hold no copy yet.
    pub missing: Vec<crate::ids::NodeId>,
    /// Fewer live copies than the replication factor.
    pub under_replicated: bool,
}

/// `GET /v1/cluster` on the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The layout epoch.
    pub epoch: u64,
    /// Which ring store holds it.
    pub store: String,
    /// Virtual nodes per node.
    pub vnodes_per_node: u32,
    /// Copies of every partition.
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// Copies a write must reach before it is acknowledged.
    #[serde(default = "one")]
    pub write_quorum: u32,
    /// Every node known: in the layout or live.
    pub nodes: Vec<NodeView>,
    /// Placement overrides.
    pub overrides: std::collections::BTreeMap<String, String>,
    /// Migrations in flight, from the control plane's journal (partition, from, to, phase).
    pub migrations: Vec<serde_json::Value>,
    /// With replication: every stored partition's replica set and what it lacks.
    #[serde(default)]
    pub replica_sets: Vec<ReplicaSetView>,
    /// Layout epochs this control plane has seen since it started, oldest first (at most 50).
    #[serde(default)]
    pub epoch_history: Vec<EpochSeen>,
}

/// One layout epoch in the cluster view's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSeen {
    /// The epoch.
    pub epoch: u64,
    /// When this control plane first saw it, unix ms.
    pub seen_at_ms: i64,
    /// Nodes in the layout then.
    pub nodes: usize,
    /// Nodes marked down then.
    pub down: usize,
    /// Copies per partition then.
    pub replication_factor: u32,
}

fn one() -> u32 {
    1
}
