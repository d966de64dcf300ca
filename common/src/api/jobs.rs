//! Wire types of the control plane's jobs: a migration's request and report, a rebalance's or
//! drain's plan and report, `GET /v1/plan`'s placement report and `shardctl verify`'s verdict.
//! `shardctl` and the control plane both read them from here.

use serde::{Deserialize, Serialize};

use super::MigrationJob;

/// Body of `POST /v1/migrations`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The tenant to move.
    pub tenant: String,
    /// Only this scope (default: every partition of the tenant).
    #[serde(default)]
    pub scope: Option<String>,
    /// The node to move to.
    pub to: String,
}

/// What a finished migration did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The partition.
    pub partition: String,
    /// Old owner.
    pub from: String,
    /// New owner.
    pub to: String,
    /// Memories the control plane copied itself: 0 since a move's new copies are filled by the
    /// nodes (they follow the old owner); kept for the clients that read it.
    pub copied: u64,
    /// The log position the slowest new copy had reached when the move flipped.
    pub replayed: u64,
    /// How long writes were fenced, ms: 0 since moves have no fence (a write waits only for
    /// the hand-over: `HAND_OVER_HOLD` at most); kept for the clients that read it.
    pub fenced_ms: u64,
    /// Memories on the target at the end.
    pub count: u64,
    /// Layout epoch at the end.
    pub epoch: u64,
    /// Whole migration, ms.
    pub took_ms: u64,
    /// Bytes of HNSW graph the control plane handed over: 0 since the new copy takes the old
    /// owner's graph itself (the target's `memring_replication_graph_bytes_total`); kept for
    /// the clients that read it.
    #[serde(default)]
    pub index_bytes: u64,
}

/// One partition to move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: String,
    /// Where its data is.
    pub from: String,
    /// Its owner in the new ring.
    pub to: String,
    /// Memories in it.
    pub memories: u64,
}

/// What a rebalance or drain will do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangePlan {
    /// The epoch the plan was made at.
    pub epoch: u64,
    /// Nodes entering the ring.
    pub joining: Vec<String>,
    /// Nodes waiting that join in a later step. Every waiting node now joins in the one staged
    /// change, so this is empty; kept for clients that read it.
    #[serde(default)]
    pub later: Vec<String>,
    /// Node leaving the ring.
    pub leaving: Option<String>,
    /// The moves, each partition at most once.
    pub moves: Vec<Move>,
    /// Partitions with data in the cluster.
    pub partitions: usize,
    /// Memories in the cluster.
    pub memories: u64,
    /// Memories moved / memories.
    pub moved_fraction: f64,
    /// What consistent hashing should move: the joining share, or the leaving node's share.
    pub ideal_fraction: f64,
}

/// Answer of `/v1/rebalance` and `/v1/drain/{node}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeReport {
    /// What was (or would be) done.
    pub plan: ChangePlan,
    /// The migrations run (empty on a dry run).
    pub migrations: Vec<MigrationReport>,
}

/// Answer of `GET /v1/plan` (`shardctl plan`): desired against observed, and the next step.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanReport {
    /// The layout epoch it was read at.
    pub epoch: u64,
    /// Whether the control plane admits registered nodes itself.
    pub auto_rebalance: bool,
    /// The placement-by-size policy, if any.
    pub size_policy: Option<crate::layout::SizePolicy>,
    /// Live nodes outside the layout.
    pub waiting: Vec<String>,
    /// The rebalance that would admit them (a dry run), when some wait.
    pub join: Option<ChangePlan>,
    /// The size policy's next step, in words (from the sizes the active control plane read).
    pub policy_next: Option<String>,
    /// Migrations in flight, from the journal.
    pub migrations: Vec<MigrationJob>,
    /// What the engine does next, in words (`None`: the cluster is where the layout wants it).
    pub next: Option<String>,
}

/// The verdict of `shardctl verify` (`GET /v1/verify`): every partition on exactly its holders,
/// every copy's data matching its meta.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Layout epoch checked against.
    pub epoch: u64,
    /// Partitions seen (restricted to `tenant` if given).
    pub partitions_checked: usize,
    /// Memories in them (every copy counted).
    pub memories: u64,
    /// What is wrong; empty when all is well.
    pub problems: Vec<String>,
    /// Partitions being migrated right now, with both copies' count and checksum, and
    /// follower copies still catching up with their owner.
    #[serde(default)]
    pub in_flight: Vec<String>,
    /// Partitions with fewer live copies than the replication factor (a copy's node is down,
    /// or the ring has fewer nodes than copies asked for).
    #[serde(default)]
    pub under_replicated: Vec<String>,
}
