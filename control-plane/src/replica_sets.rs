//! The replica sets of the cluster view (`view.rs`) with replication: which stored partitions
//! are short of a copy (under-replicated, or a live member holding none yet), kept as the
//! nodes' copies change, so the dashboard's poll and `shardctl status` cost what changed, not
//! what the cluster stores.
//!
//! A set is a pure function of the ring (the layout), the live nodes and which answering nodes
//! hold the partition ([`replica_set`]). [`SetHealth::update`] checks again only the partitions
//! a node's change feed listed, unless what every set depends on moved: the layout epoch, the
//! live nodes, the nodes that answered this look, or a node's full list (a first look or a
//! restart). Then every set is checked again, once: a walk over every copy known, the same cost
//! as the layout change or restart that caused it.

use std::collections::{BTreeMap, BTreeSet};

use memring_common::api::{ReplicaSetView, ReplicaSummary};
use memring_common::usage::Usage;
use memring_common::{NodeId, PartitionKey, Ring};

/// What every replica set depends on besides the copies: a change here checks them all again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Basis {
    epoch: u64,
    replication_factor: u32,
    live: BTreeSet<NodeId>,
    answered: BTreeSet<NodeId>,
}

/// The stored partitions and the sets short of a copy, as of the last look.
#[derive(Default)]
pub struct SetHealth {
    basis: Option<Basis>,
    /// Every partition an answering node holds a copy of.
    stored: BTreeSet<PartitionKey>,
    /// The sets of `stored` that are under-replicated or missing a copy.
    short: BTreeMap<PartitionKey, ReplicaSetView>,
}

/// What changed in the nodes' copies since the last look.
pub enum Changed {
    /// A node listed everything it holds (or nodes were forgotten): check every set.
    Everything,
    /// These partitions' copies changed on some node.
    Only(Vec<PartitionKey>),
}

impl SetHealth {
    /// Brings the sets up to date with `known` (the copies as last listed) under `ring`, `live`
    /// (the nodes with a lease) and `answered` (the nodes whose copies count this look).
    pub fn update(
        &mut self,
        known: &Usage,
        ring: &Ring,
        live: &BTreeSet<NodeId>,
        answered: &BTreeSet<NodeId>,
        changed: Changed,
    ) {
        let basis = Basis {
            epoch: ring.epoch(),
            replication_factor: ring.layout().replication_factor,
            live: live.clone(),
            answered: answered.clone(),
        };
        // Each partition to check with the nodes holding it: looked up for the listed ones,
        // from one walk over every copy otherwise.
        let partitions: Vec<(PartitionKey, Vec<NodeId>)> = match changed {
            Changed::Only(list) if self.basis.as_ref() == Some(&basis) => list
                .into_iter()
                .map(|p| {
                    let held = known.holders_of(&p);
                    (p, held)
                })
                .collect(),
            _ => {
                self.stored.clear();
                self.short.clear();
                known.holders().into_iter().collect()
            }
        };
        self.basis = Some(basis);
        for (p, mut held) in partitions {
            held.retain(|id| answered.contains(id));
            if held.is_empty() {
                self.stored.remove(&p);
                self.short.remove(&p);
                continue;
            }
            let set = replica_set(ring, live, &p, &held);
            self.stored.insert(p.clone());
            if short(&set) {
                self.short.insert(p, set);
            } else {
                self.short.remove(&p);
            }
        }
    }

    /// The counts over every stored partition's set.
    pub fn summary(&self) -> ReplicaSummary {
        ReplicaSummary {
            partitions: self.stored.len() as u64,
            under_replicated: self.short.values().filter(|s| s.under_replicated).count() as u64,
            missing_copies: self.short.values().filter(|s| !s.missing.is_empty()).count() as u64,
        }
    }

    /// The sets short of a copy, by partition.
    pub fn short(&self) -> Vec<ReplicaSetView> {
        self.short.values().cloned().collect()
    }
}

/// Every stored partition's set, by partition (a walk over every copy known).
pub fn all(
    known: &Usage,
    ring: &Ring,
    live: &BTreeSet<NodeId>,
    answered: &BTreeSet<NodeId>,
) -> Vec<ReplicaSetView> {
    let mut holders = known.holders();
    holders.values_mut().for_each(|held| held.retain(|id| answered.contains(id)));
    holders
        .iter()
        .filter(|(_, held)| !held.is_empty())
        .map(|(p, held)| replica_set(ring, live, p, held))
        .collect()
}

/// Whether `set` lacks a copy: fewer serving than the replication factor, or a live member
/// without one.
fn short(set: &ReplicaSetView) -> bool {
    set.under_replicated || !set.missing.is_empty()
}

/// The replica set of `p` under `ring` against the nodes that hold it (`held`) and those with
/// a lease (`live`).
fn replica_set(
    ring: &Ring,
    live: &BTreeSet<NodeId>,
    p: &PartitionKey,
    held: &[NodeId],
) -> ReplicaSetView {
    let layout = ring.layout();
    let replicas: Vec<NodeId> =
        ring.owner(p).into_iter().chain(ring.followers(p)).map(|n| n.id.clone()).collect();
    let down: Vec<_> = replicas.iter().filter(|n| layout.is_down(n)).cloned().collect();
    let missing: Vec<_> = replicas
        .iter()
        .filter(|n| !layout.is_down(n) && live.contains(*n) && !held.contains(n))
        .cloned()
        .collect();
    let serving = replicas.len() - down.len() - missing.len();
    ReplicaSetView {
        partition: p.to_string(),
        under_replicated: serving < layout.replication_factor as usize,
        replicas,
        down,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use memring_common::ClusterLayout;
    use memring_common::api::{PartitionList, PartitionStats};
    use memring_common::layout::{LayoutNode, NodeState};

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    fn ring(epoch: u64, down: &[&str]) -> Ring {
        let mut l = ClusterLayout { replication_factor: 3, epoch, ..Default::default() };
        for n in ["a", "b", "c", "d"] {
            l = l.with_node(LayoutNode { id: id(n), addr: format!("{n}:1") });
        }
        for d in down {
            l.states.set(&id(d), NodeState::Down { draining: false });
        }
        Ring::new(l)
    }

    fn list(node: &str, partitions: &[(usize, u64)], cursor: u64, full: bool) -> PartitionList {
        PartitionList {
            node: id(node),
            epoch: 1,
            partitions: partitions
                .iter()
                .map(|(t, count)| PartitionStats {
                    partition: format!("t{t}/shared").parse().expect("partition"),
                    count: *count,
                    dimensions: None,
                    last_seq: 1,
                    last_term: 0,
                    bytes: *count,
                })
                .collect(),
            feed: 1,
            cursor,
            full,
        }
    }

    /// The incremental sets agree with a look from scratch after every step of a random walk:
    /// copies made and dropped, nodes marked down and back, a node not answering, a node's
    /// lease gone, full lists.
    #[test]
    fn kept_sets_agree_with_a_fresh_look_at_every_step() {
        use proptest::prelude::Rng;
        use proptest::test_runner::{RngAlgorithm, TestRng};
        let nodes = ["a", "b", "c", "d"];
        let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut next = move |n: u64| rng.next_u64() % n;
        let mut known = Usage::default();
        let mut kept = SetHealth::default();
        let (mut looks_short, mut looks_under) = (0, 0);
        let (mut epoch, mut down, mut cursor) = (1u64, Vec::<&str>::new(), 1u64);
        let mut live: BTreeSet<NodeId> = nodes.iter().map(|n| id(n)).collect();
        let mut answered = live.clone();
        for step in 0..3_000 {
            let ring = ring(epoch, &down);
            let changed = match next(20) {
                0 => {
                    epoch += 1;
                    down = if down.is_empty() { vec![nodes[next(4) as usize]] } else { vec![] };
                    Changed::Only(Vec::new())
                }
                1 => {
                    let n = id(nodes[next(4) as usize]);
                    if !live.remove(&n) {
                        live.insert(n);
                    }
                    Changed::Only(Vec::new())
                }
                2 => {
                    let n = id(nodes[next(4) as usize]);
                    if !answered.remove(&n) {
                        answered.insert(n);
                    }
                    Changed::Only(Vec::new())
                }
                3 => {
                    let node = nodes[next(4) as usize];
                    let all: Vec<(usize, u64)> = (0..40).map(|t| (t, next(2) * 5)).collect();
                    let held: Vec<_> = all.into_iter().filter(|(_, n)| *n > 0).collect();
                    cursor += 1;
                    known.apply(&ring, &id(node), list(node, &held, cursor, true));
                    Changed::Everything
                }
                _ => {
                    let node = nodes[next(4) as usize];
                    let some: Vec<(usize, u64)> =
                        (0..3).map(|_| (next(40) as usize, next(3) * 2)).collect();
                    cursor += 1;
                    known.apply(&ring, &id(node), list(node, &some, cursor, false));
                    Changed::Only(
                        some.iter()
                            .map(|(t, _)| format!("t{t}/shared").parse().expect("partition"))
                            .collect(),
                    )
                }
            };
            // The ring of this step: a change of epoch or down nodes is seen at once.
            let ring = self::ring(epoch, &down);
            kept.update(&known, &ring, &live, &answered, changed);
            let fresh = all(&known, &ring, &live, &answered);
            let expected: Vec<ReplicaSetView> =
                fresh.iter().filter(|s| short(s)).cloned().collect();
            assert_eq!(kept.short(), expected, "step {step}");
            assert_eq!(kept.summary().partitions, fresh.len() as u64, "step {step}");
            looks_short += usize::from(kept.summary().missing_copies > 0);
            looks_under += usize::from(kept.summary().under_replicated > 0);
        }
        // The walk went through sets missing a copy and under-replicated ones, many times.
        assert!(looks_short > 100 && looks_under > 100, "{looks_short} {looks_under}");
    }
}
