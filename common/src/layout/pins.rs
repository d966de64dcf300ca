//! Partitions placed by name rather than by the ring: one map of pins, each with who set it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::scope::PartitionKey;

/// Who pinned a partition to a node, which decides who may lift the pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    /// An operator (`shardctl migrate`): it stays across later ring changes until an operator
    /// moves the partition again.
    Operator,
    /// Where a move back to the ring found the ring changed under it (and, written by control
    /// planes from before the one engine, a rebalance's hold of a partition where its data
    /// was). The next rebalance plans these partitions afresh.
    Staging,
    /// The size policy (a tenant's partitions on its dedicated node): released by the policy
    /// only.
    Policy,
}

impl PinKind {
    /// The pin a migration's flip leaves when the target is not where the ring alone puts it.
    pub fn of_flip(flip: crate::api::Flip) -> Self {
        match flip {
            crate::api::Flip::Pin => PinKind::Operator,
            crate::api::Flip::Natural => PinKind::Staging,
            crate::api::Flip::Policy => PinKind::Policy,
        }
    }
}

/// One partition's pin: the node it is placed on, and who placed it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The node that holds it (with replication: the first member of its set, which leads it).
    pub node: NodeId,
    /// Who pinned it.
    pub kind: PinKind,
}

/// Every pinned partition of a layout: the one map of placement by name. In the stored
/// document it keeps the shape older binaries read — `overrides` (partition → node, every
/// pin), `staging_pins` and `policy_pins` (the partitions of those kinds) — so a layout written
/// by this binary routes the same on one that predates the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PinsDocument", into = "PinsDocument")]
pub struct Pins(BTreeMap<PartitionKey, Pin>);

impl std::ops::Deref for Pins {
    type Target = BTreeMap<PartitionKey, Pin>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Pins {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Pins {
    /// The node `partition` is pinned to, whoever pinned it.
    pub fn node(&self, partition: &PartitionKey) -> Option<&NodeId> {
        self.0.get(partition).map(|pin| &pin.node)
    }

    /// Pins `partition` to `node` for `kind` (replacing any pin it had).
    pub fn set(&mut self, partition: PartitionKey, node: NodeId, kind: PinKind) {
        self.0.insert(partition, Pin { node, kind });
    }

    /// The pins of one kind: partition and node.
    pub fn of(&self, kind: PinKind) -> impl Iterator<Item = (&PartitionKey, &NodeId)> {
        self.0.iter().filter(move |(_, pin)| pin.kind == kind).map(|(p, pin)| (p, &pin.node))
    }

    /// Whether `partition` has a pin of `kind`.
    pub fn is(&self, partition: &PartitionKey, kind: PinKind) -> bool {
        self.0.get(partition).is_some_and(|pin| pin.kind == kind)
    }
}

/// The stored shape of [`Pins`] (see there).
#[derive(Serialize, Deserialize)]
struct PinsDocument {
    #[serde(default)]
    overrides: BTreeMap<PartitionKey, NodeId>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    staging_pins: BTreeSet<PartitionKey>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    policy_pins: BTreeSet<PartitionKey>,
}

impl From<PinsDocument> for Pins {
    fn from(doc: PinsDocument) -> Self {
        // A kind recorded for a partition with no override (a document edited by hand) pins
        // nothing: the override is what places it.
        let kind = |p: &PartitionKey| {
            if doc.policy_pins.contains(p) {
                PinKind::Policy
            } else if doc.staging_pins.contains(p) {
                PinKind::Staging
            } else {
                PinKind::Operator
            }
        };
        Pins(
            doc.overrides
                .iter()
                .map(|(p, node)| (p.clone(), Pin { node: node.clone(), kind: kind(p) }))
                .collect(),
        )
    }
}

impl From<Pins> for PinsDocument {
    fn from(pins: Pins) -> Self {
        let of = |kind: PinKind| pins.of(kind).map(|(p, _)| p.clone()).collect();
        PinsDocument {
            staging_pins: of(PinKind::Staging),
            policy_pins: of(PinKind::Policy),
            overrides: pins.0.into_iter().map(|(p, pin)| (p, pin.node)).collect(),
        }
    }
}
