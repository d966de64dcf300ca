//! What a shard node reports of its own state to routers, followers and the control plane:
//! the partitions it holds, replication polls and positions, its replication status, checksums.

use serde::{Deserialize, Serialize};

/// A shard node's view of one partition it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStats {
    /// The partition.
    pub partition: crate::scope::PartitionKey,
    /// Live memories.
    pub count: u64,
    /// Embedding dimension, once fixed.
    pub dimensions: Option<u32>,
    /// Last change-log sequence number.
    pub last_seq: u64,
    /// Term of the entry at `last_seq`.
    #[serde(default)]
    pub last_term: u64,
    /// Size of the stored memories (what a byte quota counts).
    #[serde(default)]
    pub bytes: u64,
}

/// `POST /internal/v1/replicate/poll` body: a follower's long-poll on its primary's change
/// feed. The answer (binary, `shard-node/src/replicate/feed.rs`) names the partitions changed
/// after the cursor `(feed, seen)`, with the entries the follower is known to lack.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPoll {
    /// The follower asking.
    pub follower: crate::ids::NodeId,
    /// The primary's feed instance the cursor belongs to (0: none yet).
    #[serde(default)]
    pub feed: u64,
    /// The cursor: the feed counter the follower has seen. 0, or a cursor of another feed
    /// instance, asks for a full listing of the primary's partitions; a primary never hands
    /// out 0 (a feed's counter starts at 1).
    pub seen: u64,
    /// The layout epoch the follower follows by (entries are inlined only at it).
    #[serde(default)]
    pub epoch: u64,
    /// How long the primary may hold the answer, ms (capped by the primary).
    pub wait_ms: u64,
    /// Positions the follower has applied since its last poll (each partition it follows, under
    /// which lead term); unchanged ones are not sent again.
    pub acks: Vec<ReplicaAck>,
}

/// A follower's acknowledgement: its copy of `partition` continues the primary's log up to
/// `seq`, as the primary led it at `term` (a layout epoch). Counts only for writes of that term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// The partition.
    pub partition: crate::scope::PartitionKey,
    /// Position applied.
    pub seq: u64,
    /// The primary's lead term the position was checked against.
    pub term: u64,
}

/// `POST /internal/v1/replicate/position/{tenant}/{scope}?epoch=E` answer: a copy's log
/// position, given to a node taking the partition's writes over at epoch `E`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPosition {
    /// The copy's last log sequence number (0: it holds nothing).
    pub last_seq: u64,
    /// The term of its entry there (0: none, or written before terms).
    #[serde(default)]
    pub last_term: u64,
}

/// The most partitions one `POST /internal/v1/replicate/batch` may name.
pub const MAX_REPLICA_BATCH: usize = 4096;

/// What `POST /internal/v1/replicate/batch` does to each partition it names, as the route of
/// one partition does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaStep {
    /// Nothing: the copy's position (`replicate/position`).
    Position,
    /// The owner takes the partition's writes over (`replicate/take-over`).
    TakeOver,
    /// The owner hands the partition's writes over (`replicate/hand-over`).
    HandOver,
}

/// `POST /internal/v1/replicate/batch` body: one replication step for many partitions of one
/// node in one round trip, once the node has seen layout `epoch` (a change that moves
/// thousands of partitions asks each node once per step, not once per partition).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaBatch {
    /// The step.
    pub step: ReplicaStep,
    /// The layout epoch the node answers at (at least).
    pub epoch: u64,
    /// The partitions, at most [`MAX_REPLICA_BATCH`].
    pub partitions: Vec<crate::PartitionKey>,
}

/// `POST /internal/v1/replicate/batch` answer: for each partition asked, in the order asked,
/// its copy's position after the step, or why the step failed there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaBatchAnswer {
    /// One per partition asked.
    pub results: Vec<ReplicaStepResult>,
}

/// One partition's part of a [`ReplicaBatchAnswer`]: exactly one of the two is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStepResult {
    /// The copy's position after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<ReplicaPosition>,
    /// Why the step failed for this partition (the error the one-partition route answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /internal/v1/replicate/status` answer: how a node's followed copies stand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The node answering.
    pub node: crate::ids::NodeId,
    /// Layout epoch it has seen.
    pub epoch: u64,
    /// Partitions it follows.
    pub following: usize,
    /// Log entries its copies are behind their primaries, summed.
    pub lag: u64,
    /// Copies not yet checked against their owner's log at this epoch (the owner has not taken
    /// over yet, or cannot be reached).
    #[serde(default)]
    pub unchecked: usize,
    /// Every primary it follows answered a poll recently and no copy is behind: safe to give
    /// this node writes again (the control plane's re-admission test).
    pub caught_up: bool,
}

/// `GET /internal/v1/migrate/{tenant}/{scope}/checksum` answer: count and order-independent
/// checksum of a partition's memories on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChecksum {
    /// Stored memories.
    pub count: u64,
    /// Wrapping sum of XXH3(id ‖ 0 ‖ version), as 16 hex digits.
    pub checksum: String,
    /// Log position.
    pub last_seq: u64,
    /// Whether writes are fenced.
    pub fenced: bool,
    /// False when a `deep` scan found data that disagrees with the partition's meta (then
    /// `count` and `checksum` are the scan's).
    #[serde(default = "yes")]
    pub consistent: bool,
}

fn yes() -> bool {
    true
}

/// `GET /internal/v1/partitions` answer. With `?feed=F&since=C` (a cursor of an earlier answer)
/// only the partitions changed since are listed (a removed one with count 0); a cursor of
/// another feed instance (the node restarted), or none, gets every partition (`full`).
#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionList {
    /// The node answering.
    pub node: crate::ids::NodeId,
    /// The ring epoch the node is at.
    pub epoch: u64,
    /// Every partition it holds data for (or, not `full`, those changed since the cursor).
    pub partitions: Vec<PartitionStats>,
    /// The node's change-feed instance the cursor belongs to.
    #[serde(default)]
    pub feed: u64,
    /// The cursor to ask from next: never 0, which asks for every partition.
    #[serde(default)]
    pub cursor: u64,
    /// `partitions` is every partition the node holds.
    #[serde(default = "yes")]
    pub full: bool,
}
