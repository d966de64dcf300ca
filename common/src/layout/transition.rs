//! A replicated layout change that has not settled: the layout's [`Transition`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ClusterLayout, LayoutNode, Pin};
use crate::error::ApiError;
use crate::ids::NodeId;
use crate::scope::PartitionKey;

/// Which layout leads while a change is in flight (docs/one-engine.md, "The rule").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionPhase {
    /// Staged: each partition's owner is its owner in the layout before the change, the members
    /// of its old and new sets follow that owner, and a write's quorum is W of the old set.
    OldLeads,
    /// Flipped: the new layout leads, and the members the change took out of a set are
    /// *retiring* copies, asked by every take-over until the change settles. (A change staged
    /// before phases existed is in this phase: the document has no `phase`.)
    #[default]
    NewLeads,
}

impl TransitionPhase {
    fn is_new_leads(&self) -> bool {
        *self == TransitionPhase::NewLeads
    }
}

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
    /// Which layout leads. Left out of the document in the default phase, so a layout without a
    /// staged change reads the same in binaries from before phases.
    #[serde(default, skip_serializing_if = "TransitionPhase::is_new_leads")]
    pub phase: TransitionPhase,
    /// The pins the change set, moved or removed, each with the pin it had before (`None`: not
    /// pinned): what a staged change leads by, and what undoing it puts back. A move is a pin
    /// change, so this stays as small as the change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<PartitionKey, Option<Pin>>,
    /// The nodes the change took out of the layout while failover had them marked down (a drain
    /// of a node that will not return): down for as long as the change is in flight, so nobody
    /// waits on them or lists them, and a take-over asks them last ([`ClusterLayout::is_down`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub down: BTreeSet<NodeId>,
}

impl Transition {
    /// A flipped transition away from the layout whose nodes were `nodes`, made at epoch
    /// `since`, with no pin changed.
    pub fn from_nodes(since: u64, nodes: &[LayoutNode]) -> Self {
        Self {
            since,
            nodes: nodes.to_vec(),
            phase: TransitionPhase::NewLeads,
            pins: BTreeMap::new(),
            down: BTreeSet::new(),
        }
    }

    /// The change from `before` to `after` staged (`OldLeads`), made at `after`'s epoch: the
    /// nodes of `before`, and the old pin of every pin the change set, moved or removed.
    pub fn staged(before: &ClusterLayout, after: &ClusterLayout) -> Self {
        let mut pins = BTreeMap::new();
        for p in before.pins.keys().chain(after.pins.keys()) {
            let old = before.pins.get(p);
            if old != after.pins.get(p) {
                pins.insert(p.clone(), old.cloned());
            }
        }
        Self {
            since: after.epoch,
            nodes: before.nodes.clone(),
            phase: TransitionPhase::OldLeads,
            pins,
            down: before
                .nodes
                .iter()
                .filter(|n| {
                    after.node(&n.id).is_none() && before.states.get(&n.id).is_marked_down()
                })
                .map(|n| n.id.clone())
                .collect(),
        }
    }

    /// Checks it as part of a layout at `epoch`.
    pub fn validate(&self, epoch: u64) -> Result<(), ApiError> {
        if self.since > epoch {
            return Err(ApiError::invalid(format!(
                "transition since epoch {} is newer than the layout (epoch {epoch})",
                self.since
            )));
        }
        if let Some(id) = self.down.iter().find(|id| self.nodes.iter().all(|n| &n.id != *id)) {
            return Err(ApiError::invalid(format!(
                "transition down node {id} is not among its nodes"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    /// A flipped transition with no pin changed is written as before phases existed (binaries
    /// from before read it: they refuse unknown fields), and such a document reads as flipped;
    /// a staged one keeps its phase and old pins.
    #[test]
    fn a_flipped_transition_keeps_the_document_of_before_phases() {
        let node = LayoutNode { id: NodeId::parse("shard-1").expect("id"), addr: "h:1".into() };
        let flipped = Transition::from_nodes(7, std::slice::from_ref(&node));
        let text = serde_json::to_string(&flipped).expect("json");
        assert_eq!(text, r#"{"since":7,"nodes":[{"id":"shard-1","addr":"h:1"}]}"#);
        let read: Transition = serde_json::from_str(&text).expect("read");
        assert_eq!(read, flipped);
        assert_eq!(read.phase, TransitionPhase::NewLeads);

        let mut staged = flipped.clone();
        staged.phase = TransitionPhase::OldLeads;
        staged.pins.insert("t/shared".parse().expect("key"), None);
        let text = serde_json::to_string(&staged).expect("json");
        assert!(text.contains(r#""phase":"old_leads""#), "{text}");
        assert_eq!(serde_json::from_str::<Transition>(&text).expect("read"), staged);
    }

    /// A staged change keeps the nodes before it and the old pin of exactly the pins it set,
    /// moved or removed.
    #[test]
    fn a_staged_change_keeps_the_old_node_of_each_pin_it_touched() {
        use crate::layout::PinKind;
        let id = |s: &str| NodeId::parse(s).expect("id");
        let key = |s: &str| -> PartitionKey { s.parse().expect("key") };
        let mut before = ClusterLayout::default();
        for i in 1..=3 {
            before = before
                .with_node(LayoutNode { id: id(&format!("shard-{i}")), addr: format!("h:{i}") });
        }
        before.pins.set(key("kept/shared"), id("shard-1"), PinKind::Operator);
        before.pins.set(key("moved/shared"), id("shard-1"), PinKind::Operator);
        before.pins.set(key("freed/shared"), id("shard-2"), PinKind::Policy);
        let mut after = before.without_node(&id("shard-3"));
        after.epoch = before.epoch + 1;
        after.pins.set(key("moved/shared"), id("shard-2"), PinKind::Operator);
        after.pins.remove(&key("freed/shared"));
        after.pins.set(key("new/shared"), id("shard-1"), PinKind::Operator);
        let t = Transition::staged(&before, &after);
        assert_eq!((t.since, t.phase), (after.epoch, TransitionPhase::OldLeads));
        assert_eq!(t.nodes, before.nodes, "the nodes before the change");
        let pin = |node: &str, kind| Some(Pin { node: id(node), kind });
        let expected = BTreeMap::from([
            (key("freed/shared"), pin("shard-2", PinKind::Policy)),
            (key("moved/shared"), pin("shard-1", PinKind::Operator)),
            (key("new/shared"), None),
        ]);
        assert_eq!(t.pins, expected);
        t.validate(after.epoch).expect("valid");
    }

    /// A drain staged while failover has the node marked down records it as down: in the staged
    /// layout it is down though its state went with it, so no old set it comes first in is led
    /// by it, and its sets' quorums and take-overs treat it as they did. A node drained while
    /// up, or marked down and staying, is not recorded.
    #[test]
    fn a_drain_of_a_node_marked_down_keeps_it_down_while_staged() {
        use crate::Ring;
        use crate::layout::NodeState;
        let id = |s: &str| NodeId::parse(s).expect("id");
        let mut before = ClusterLayout { replication_factor: 2, ..ClusterLayout::default() };
        for i in 1..=4 {
            before = before
                .with_node(LayoutNode { id: id(&format!("shard-{i}")), addr: format!("h:{i}") });
        }
        before.states.set(&id("shard-4"), NodeState::Down { draining: false });
        let stage = |gone: &str| {
            let mut after = before.without_node(&id(gone));
            after.epoch = before.epoch + 1;
            after.transition = Some(Transition::staged(&before, &after));
            after
        };
        let up_drained = stage("shard-1");
        let t = up_drained.transition.as_ref().expect("staged");
        assert!(t.down.is_empty(), "{t:?}");
        assert!(!up_drained.is_down(&id("shard-1")) && up_drained.is_down(&id("shard-4")));

        let staged = stage("shard-4");
        let t = staged.transition.clone().expect("staged");
        assert_eq!(t.down, BTreeSet::from([id("shard-4")]));
        t.validate(staged.epoch).expect("valid");
        assert!(staged.is_down(&id("shard-4")) && !staged.may_lead(&id("shard-4")));
        let text = serde_json::to_string(&t).expect("json");
        assert!(text.contains(r#""down":["shard-4"]"#), "{text}");
        assert_eq!(serde_json::from_str::<Transition>(&text).expect("read"), t);

        let (old, ring) = (Ring::new(before.clone()), Ring::new(staged.clone()));
        let mut led_elsewhere = 0;
        for n in 0..200 {
            let p: PartitionKey = format!("t{n}/shared").parse().expect("key");
            let owner = ring.owner(&p).expect("owner");
            assert_ne!(owner.id, id("shard-4"), "{p} is led by the down node");
            assert_eq!(
                owner.id,
                old.owner(&p).expect("owner").id,
                "{p} changed owner at the stage"
            );
            led_elsewhere += usize::from(old.replica_set(&p)[0].id == id("shard-4"));
        }
        assert!(led_elsewhere > 0, "no partition had the down node first in its set");

        let mut stray = t.clone();
        stray.down.insert(id("shard-9"));
        assert!(stray.validate(staged.epoch).is_err());
    }
}
