//! Placement by size: the layout's [`SizePolicy`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::NodeId;

/// Placement by size: a tenant storing at least `dedicate_at_memories` memories, or at least
/// `dedicate_at_bytes` bytes, is moved, all its partitions, to a node of `dedicated_nodes` that
/// holds no other tenant, when one is free; once it is below both release sizes it returns to
/// the shared ring. A threshold of 0 memories (or no byte threshold) is not used.
///
/// The byte fields are newer than the others and are written only when set: a binary from
/// before them refuses a layout whose policy has them, so set them once every node and control
/// plane runs a release that knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizePolicy {
    /// The size (memories, over all its scopes) at which a tenant gets a dedicated node; 0: none.
    pub dedicate_at_memories: u64,
    /// The size below which a dedicated tenant may return to the ring (at most the one above; a
    /// gap between them keeps a tenant near the threshold from moving back and forth).
    pub release_below_memories: u64,
    /// Nodes kept for dedicated tenants: given no ring share, one tenant each.
    pub dedicated_nodes: BTreeSet<NodeId>,
    /// The stored bytes (contents, metadata, vectors; what a byte quota counts) at which a
    /// tenant gets a dedicated node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicate_at_bytes: Option<u64>,
    /// The bytes below which a dedicated tenant may return (at most `dedicate_at_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_below_bytes: Option<u64>,
}

impl SizePolicy {
    /// Whether a tenant of `memories` memories and `bytes` bytes is big enough for a node of its
    /// own.
    pub fn wants_own_node(&self, memories: u64, bytes: u64) -> bool {
        (self.dedicate_at_memories > 0 && memories >= self.dedicate_at_memories)
            || self.dedicate_at_bytes.is_some_and(|at| bytes >= at)
    }

    /// Whether a dedicated tenant of `memories` memories and `bytes` bytes has shrunk enough to
    /// return to the ring: below every release size the policy has.
    pub fn may_return(&self, memories: u64, bytes: u64) -> bool {
        let by_memories = self.dedicate_at_memories == 0 || memories < self.release_below_memories;
        let by_bytes = self.dedicate_at_bytes.is_none()
            || bytes < self.release_below_bytes.or(self.dedicate_at_bytes).unwrap_or(0);
        by_memories && by_bytes
    }

    /// The thresholds in words, for operators (`shardctl plan`).
    pub fn describe(&self) -> String {
        let mut at = Vec::new();
        let mut below = Vec::new();
        if self.dedicate_at_memories > 0 {
            at.push(format!("{} memories", self.dedicate_at_memories));
            below.push(format!("{} memories", self.release_below_memories));
        }
        if let Some(bytes) = self.dedicate_at_bytes {
            at.push(format!("{bytes} bytes"));
            below.push(format!("{} bytes", self.release_below_bytes.unwrap_or(bytes)));
        }
        let nodes: Vec<&str> = self.dedicated_nodes.iter().map(NodeId::as_str).collect();
        format!(
            "{} and up on {}, back below {}",
            at.join(" or "),
            nodes.join(", "),
            below.join(" and ")
        )
    }

    /// Checks the thresholds (see the fields).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.dedicate_at_memories == 0 && self.dedicate_at_bytes.is_none() {
            return Err(ApiError::invalid(
                "size policy: give a threshold in memories (dedicate_at_memories at least 1) or \
                 in bytes (dedicate_at_bytes)",
            ));
        }
        if self.release_below_memories > self.dedicate_at_memories {
            return Err(ApiError::invalid(
                "size policy: release_below_memories must be at most dedicate_at_memories",
            ));
        }
        match (self.dedicate_at_bytes, self.release_below_bytes) {
            (Some(0), _) => {
                Err(ApiError::invalid("size policy: dedicate_at_bytes must be at least 1"))
            }
            (None, Some(_)) => {
                Err(ApiError::invalid("size policy: release_below_bytes needs dedicate_at_bytes"))
            }
            (Some(at), Some(below)) if below > at => Err(ApiError::invalid(
                "size policy: release_below_bytes must be at most dedicate_at_bytes",
            )),
            _ => Ok(()),
        }
    }
}
