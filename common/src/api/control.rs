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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// How much of the replica sets `GET /v1/cluster` lists: `?replica_sets=all` (the default:
/// every stored partition's), `short` (only those under-replicated or missing a copy: what the
/// dashboard and `shardctl status` show, kept as copies change, so a look costs what changed)
/// or `none`. [`ClusterView::replica_summary`] counts them all in every case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplicaSetsShown {
    /// Every stored partition's set (a walk over every copy known).
    #[default]
    All,
    /// The sets short of a copy.
    Short,
    /// None; the summary only.
    None,
}

impl ReplicaSetsShown {
    /// The value of `?replica_sets=`; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "all" => Some(Self::All),
            "short" => Some(Self::Short),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The value `?replica_sets=` takes for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Short => "short",
            Self::None => "none",
        }
    }
}

/// Counts over every stored partition's replica set (with replication).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSummary {
    /// Partitions a node that answered holds a copy of.
    pub partitions: u64,
    /// Of those, the ones with fewer serving copies than the replication factor.
    pub under_replicated: u64,
    /// Of those, the ones with a live member that holds no copy yet.
    pub missing_copies: u64,
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
    /// Pinned partitions: partition → node (every pin, whoever set it).
    pub overrides: std::collections::BTreeMap<String, String>,
    /// The same pins with who set each ([`crate::layout::PinKind`]).
    #[serde(default)]
    pub pins: std::collections::BTreeMap<String, crate::layout::Pin>,
    /// Migrations in flight, from the control plane's journal (partition, from, to, phase).
    pub migrations: Vec<MigrationJob>,
    /// With replication: every stored partition's replica set and what it lacks (or only the
    /// sets short of a copy, or none: [`ReplicaSetsShown`]).
    #[serde(default)]
    pub replica_sets: Vec<ReplicaSetView>,
    /// With replication: how many partitions are stored, under-replicated and missing a copy,
    /// whatever `replica_sets` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_summary: Option<ReplicaSummary>,
    /// The epoch of a layout change that has not settled yet: until it does, the members it
    /// took out of replica sets are still asked by every take-over
    /// (`crate::layout::Transition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settling_since: Option<u64>,
    /// The rebalance or drain under way, from the control plane's journal (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_change: Option<LayoutChangeView>,
    /// Layout epochs this control plane has seen since it started, oldest first (at most 50).
    #[serde(default)]
    pub epoch_history: Vec<EpochSeen>,
    /// Rebalancing without an operator: whether the layout asks for it and what the active
    /// control plane last did about it (absent from a standby's answer).
    #[serde(default)]
    pub autopilot: AutopilotView,
}

/// A rebalance or drain under way (`control-plane/src/resize.rs`): who joins or leaves, and its
/// step. While it is `flipping`, the new copies fill; the nodes' `lag` says how far they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayoutChangeView {
    /// Nodes entering the layout.
    pub joining: Vec<String>,
    /// The node being drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<String>,
    /// The step started last: `staging`, `flipping` (the new copies fill, then the new sets
    /// lead) or `settling` (the new sets catch up with their new owners; then the copies
    /// outside them are dropped).
    pub phase: String,
    /// When that step started, unix ms.
    pub since_ms: i64,
}

/// The autopilot's part of the cluster view (`control-plane/src/autopilot.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutopilotView {
    /// The layout's `auto_rebalance`.
    pub enabled: bool,
    /// Live nodes outside the layout, waiting to be admitted (their settle time, or a job that
    /// holds the control plane's one job slot).
    #[serde(default)]
    pub waiting: Vec<String>,
    /// Whether the autopilot's rebalance is running now.
    #[serde(default)]
    pub running: bool,
    /// What its last rebalance did, newest last (at most 10).
    #[serde(default)]
    pub history: Vec<AutopilotRun>,
    /// Placement by size: each dedicated node and the tenant the policy put there (if any).
    #[serde(default)]
    pub dedicated: std::collections::BTreeMap<String, Option<String>>,
    /// The size policy's last move or its last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_policy_action: Option<String>,
}

/// One rebalance the autopilot ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutopilotRun {
    /// When it started, unix ms.
    pub started_at_ms: i64,
    /// How long it took, ms.
    pub took_ms: u64,
    /// The nodes it admitted.
    pub joining: Vec<String>,
    /// Partitions moved (or given a new copy, with replication).
    pub moves: usize,
    /// Memories moved ÷ memories in the cluster.
    pub moved_fraction: f64,
    /// What consistent hashing should move (the joining nodes' share).
    pub ideal_fraction: f64,
    /// Why it failed or stopped (absent when it finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

/// How ownership flips to the target at the end of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flip {
    /// Pin the partition on the target with a placement override (`shardctl migrate`): it stays
    /// there across later ring changes.
    Pin,
    /// Drop the partition's override so the ring places it (rebalance, drain): the target must be
    /// its ring owner; if it is not (the layout changed meanwhile), it is pinned instead.
    Natural,
    /// Pin it on the target for the size policy (a dedicated node): like `Pin`, and recorded in
    /// the layout's `policy_pins` so the policy alone releases it.
    Policy,
}

/// The step a partition's move is at, journaled before the step runs: one of the steps of a
/// staged layout change ([`SetPhase`], `control-plane/src/migrate.rs`), or `pending` (planned by
/// a rebalance or drain). The other [`CopyPhase`] steps are those of the copy protocol older
/// control planes ran without replication; they are still read from a journal they left. On the
/// wire and in the journal it is the step's snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MovePhase {
    /// Pending, or a step of an older control plane's copy protocol.
    Copy(CopyPhase),
    /// A step of a move.
    Set(SetPhase),
}

/// A move planned and not started (`Pending`), or, after it, the steps of the copy protocol
/// older control planes ran without replication, in order (read from their journals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyPhase {
    /// Planned by a rebalance or drain, not started.
    Pending,
    /// Pages of the source's snapshot to the target.
    Copy,
    /// The source's log replayed onto the target while it takes writes.
    CatchUp,
    /// The source's writes fenced.
    Fenced,
    /// The last entries drained and both sides verified.
    Drained,
    /// Ownership flipped to the target.
    Flipped,
}

/// The steps of a move (one staged layout change, `control-plane/src/reconcile.rs`), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetPhase {
    /// Staged: the target is pinned, the old set leads and the new set follows its owner.
    Join,
    /// Flipped: the new set leads, the target having taken the writes over.
    Lead,
    /// The change ends once the new set holds the target's log; the leavers go.
    Settle,
}

impl MovePhase {
    /// The step's name (the journal's and the failpoints' word for it).
    pub fn name(self) -> &'static str {
        match self {
            MovePhase::Copy(CopyPhase::Pending) => "pending",
            MovePhase::Copy(CopyPhase::Copy) => "copy",
            MovePhase::Copy(CopyPhase::CatchUp) => "catch_up",
            MovePhase::Copy(CopyPhase::Fenced) => "fenced",
            MovePhase::Copy(CopyPhase::Drained) => "drained",
            MovePhase::Copy(CopyPhase::Flipped) => "flipped",
            MovePhase::Set(SetPhase::Join) => "join",
            MovePhase::Set(SetPhase::Lead) => "lead",
            MovePhase::Set(SetPhase::Settle) => "settle",
        }
    }
}

impl std::fmt::Display for MovePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<CopyPhase> for MovePhase {
    fn from(p: CopyPhase) -> Self {
        MovePhase::Copy(p)
    }
}

impl From<SetPhase> for MovePhase {
    fn from(p: SetPhase) -> Self {
        MovePhase::Set(p)
    }
}

/// One partition's move in the control plane's journal (and in the cluster view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationJob {
    /// Record format.
    pub format_version: u32,
    /// The partition (`tenant/scope`).
    pub partition: String,
    /// Where its data was when the job was written.
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// How ownership flips.
    pub flip: Flip,
    /// The last step started.
    pub phase: MovePhase,
    /// Memories copied so far (updated every few seconds during the copy).
    #[serde(default)]
    pub copied: u64,
    /// Memories in the partition when the copy began.
    #[serde(default)]
    pub total: u64,
    /// When this step was recorded, unix ms.
    #[serde(default)]
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal's words for every step read back as the same step (records written before
    /// the phases were typed are plain strings of these words).
    #[test]
    fn phases_are_their_names_on_the_wire() {
        use CopyPhase::*;
        use SetPhase::*;
        let all: [MovePhase; 9] = [
            Pending.into(),
            Copy.into(),
            CatchUp.into(),
            Fenced.into(),
            Drained.into(),
            Flipped.into(),
            Join.into(),
            Lead.into(),
            Settle.into(),
        ];
        for phase in all {
            let wire = serde_json::to_string(&phase).expect("serializes");
            assert_eq!(wire, format!("\"{}\"", phase.name()));
            assert_eq!(serde_json::from_str::<MovePhase>(&wire).expect("parses"), phase);
        }
        assert!(serde_json::from_str::<MovePhase>("\"sideways\"").is_err());
    }
}
