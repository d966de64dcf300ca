//! Wire types of the internal API between memring's own processes (`/internal/v1`): the
//! router's writes to a shard node, and the headers internal requests and answers carry.
//! Clients never see these.

use serde::{Deserialize, Serialize};

use super::{WriteItem, WriteOutcome, WriteResult};

/// Header carrying the ring epoch the router routed with.
pub const EPOCH_HEADER: &str = "x-memring-epoch";
/// Migration and replication feeds (`export`, `changes`, `index`): the partition's log position
/// the answer reflects.
pub const LAST_SEQ_HEADER: &str = "x-memring-last-seq";
/// Migration `export`: the term of the entry at the position of [`LAST_SEQ_HEADER`] (a re-seeded
/// copy starts its log there).
pub const LAST_TERM_HEADER: &str = "x-memring-last-term";
/// Migration `export`: memories in this page.
pub const PAGE_COUNT_HEADER: &str = "x-memring-count";
/// Migration `export`: memories in the partition when the page was read.
pub const PAGE_TOTAL_HEADER: &str = "x-memring-total";
/// Migration `export`: the id to ask the next page after (absent on the last page).
pub const NEXT_AFTER_HEADER: &str = "x-memring-next-after";
/// Router → follower: "answer this read as a replica if you have applied the primary's log up
/// to this position" (0: no position asked, the replica's staleness bound decides).
pub const REPLICA_READ_HEADER: &str = "x-memring-replica-read";

/// The body the router sends a shard node: validated items of one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardWrite {
    /// The items, in the client's order.
    pub items: Vec<WriteItem>,
}

/// The shard node's answer for one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardItemResult {
    /// Stored (or already there).
    Ok {
        /// What the write did.
        outcome: WriteOutcome,
        /// The public result.
        result: WriteResult,
    },
    /// Refused; nothing of it was stored.
    Err {
        /// Why.
        error: crate::error::ErrorPayload,
    },
}

/// The shard node's answer to a [`ShardWrite`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardWriteResponse {
    /// One per item, in order.
    pub results: Vec<ShardItemResult>,
    /// The partition's log position after this write (its read-your-writes token).
    #[serde(default)]
    pub seq: u64,
}

/// The shard node's answer to a tenant deletion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantDeleted {
    /// Partitions removed from this node.
    pub partitions_removed: usize,
}

/// The path segment naming a partition's tenant on the internal API (`*` for the global partition).
pub fn partition_path(partition: &crate::scope::PartitionKey) -> String {
    let tenant = partition.tenant().map(|t| t.as_str()).unwrap_or("*");
    format!("{tenant}/{}", crate::http::percent_encode(&partition.scope_part()))
}
