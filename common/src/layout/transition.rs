//! A replicated layout change that has not settled: the layout's [`Transition`].

use serde::{Deserialize, Serialize};

use super::LayoutNode;
use crate::error::ApiError;

/// Set by a replicated layout change that takes nodes out of replica sets — a joining node
/// displacing a member, a drained node leaving the layout — until every new set holds what the
/// old one did (`control-plane/src/resize.rs`, "settle").
///
/// A member a change displaces may hold writes its set acknowledged just before the change
/// that the members staying have not received yet. Until the change settles it is a *retiring*
/// copy of those partitions (`Ring::retiring`): a node taking a partition over asks it too, as
/// one of the copies a quorum may have used, so such a write is found even when the owner that
/// took it fails first. A retiring copy does not follow and does not count toward any write's
/// quorum, so once every member of the new sets has reached its owner's position (taken over
/// after the change), every acknowledged write is on the new sets alone and the transition
/// ends. The copies are dropped after that, by the one rule of `control-plane/src/copies.rs`.
///
/// The layout before the change differs from the one after only in its nodes, so only those
/// are kept (one list, whatever the number of partitions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The epoch of the layout that made the change (the first that routes by the new sets).
    pub since: u64,
    /// The nodes of the layout before it, sorted by id (a drained node's address kept).
    pub nodes: Vec<LayoutNode>,
}

impl Transition {
    /// A transition away from the layout whose nodes were `nodes`, made at epoch `since`.
    pub fn from_nodes(since: u64, nodes: &[LayoutNode]) -> Self {
        Self { since, nodes: nodes.to_vec() }
    }

    /// Checks it as part of a layout at `epoch`.
    pub fn validate(&self, epoch: u64) -> Result<(), ApiError> {
        if self.since > epoch {
            return Err(ApiError::invalid(format!(
                "transition since epoch {} is newer than the layout (epoch {epoch})",
                self.since
            )));
        }
        for pair in self.nodes.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(ApiError::invalid(format!(
                    "transition nodes must be sorted and unique; {} then {}",
                    pair[0].id, pair[1].id
                )));
            }
        }
        Ok(())
    }
}
