//! What each tenant stores (memories, bytes), summed over the owners' copies of its partitions:
//! the routers' memory and byte quotas (`router/src/limits.rs`) and the control plane's placement
//! by size (`control-plane/src/autopilot.rs`) read it. Kept from each shard node's partition list
//! read incrementally: after the first (full) list the router asks only for the partitions
//! changed since its cursor in that node's change feed (`GET /internal/v1/partitions?feed&since`),
//! and updates the tenants' sums by the difference, so a refresh costs what changed, not what
//! the cluster holds. The sums are recounted from the known copies only when the layout changes
//! (ownership moves) or a node restarts (a full list).

use std::collections::{BTreeSet, HashMap};

use crate::api::{PartitionList, PartitionStats};
use crate::{NodeId, PartitionKey, Ring};

/// One node's copies as last listed.
#[derive(Default)]
struct NodeCopies {
    feed: u64,
    cursor: u64,
    copies: HashMap<PartitionKey, (u64, u64)>,
    /// The memories in `copies`, kept as they change.
    memories: u64,
}

/// The tenants' stored memories and bytes.
#[derive(Default)]
pub struct Usage {
    nodes: HashMap<NodeId, NodeCopies>,
    /// The layout epoch the sums were counted at.
    epoch: Option<u64>,
    sums: HashMap<String, (u64, u64)>,
    /// Each tenant's copies (node, partition), so one tenant's are found without a walk.
    held: HashMap<String, BTreeSet<(NodeId, PartitionKey)>>,
}

impl Usage {
    /// The query asking `node` for what changed since the last list (empty: a full list).
    pub fn query(&self, node: &NodeId) -> String {
        match self.nodes.get(node) {
            Some(n) if n.feed != 0 => format!("?feed={}&since={}", n.feed, n.cursor),
            _ => String::new(),
        }
    }

    /// Takes `node`'s answer into account, under `ring`; true when every sum was counted again
    /// (a layout change or a full list), false when only the listed partitions' tenants changed.
    pub fn apply(&mut self, ring: &Ring, node: &NodeId, list: PartitionList) -> bool {
        let recount = self.epoch != Some(ring.epoch()) || list.full;
        let owned = |p: &PartitionKey| ring.owner(p).is_some_and(|o| o.id == *node);
        let copies = self.nodes.entry(node.clone()).or_default();
        if list.full {
            forget(&mut self.held, node, copies.copies.drain().map(|(p, _)| p));
            copies.memories = 0;
        }
        (copies.feed, copies.cursor) = (list.feed, list.cursor);
        for p in list.partitions {
            let now = (p.count, p.bytes);
            let before = copies.copies.insert(p.partition.clone(), now).unwrap_or((0, 0));
            copies.memories = (copies.memories + now.0).saturating_sub(before.0);
            if !recount && owned(&p.partition) {
                adjust(&mut self.sums, &p, before, now);
            }
            if let Some(t) = p.partition.tenant() {
                let copy = (node.clone(), p.partition.clone());
                let held = self.held.entry(t.to_string()).or_default();
                if now == (0, 0) {
                    held.remove(&copy);
                } else {
                    held.insert(copy);
                }
            }
            if now == (0, 0) {
                copies.copies.remove(&p.partition);
            }
        }
        if recount {
            self.recount(ring);
        }
        recount
    }

    /// Forgets the nodes no longer in `ring`'s layout; true when that counted the sums again.
    pub fn retain_nodes(&mut self, ring: &Ring) -> bool {
        self.retain(ring, |id| ring.layout().node(id).is_some())
    }

    /// Forgets the nodes `keep` says no to; true when that counted the sums again (under
    /// `ring`).
    pub fn retain(&mut self, ring: &Ring, keep: impl Fn(&NodeId) -> bool) -> bool {
        let gone: Vec<NodeId> = self.nodes.keys().filter(|id| !keep(id)).cloned().collect();
        for id in &gone {
            if let Some(copies) = self.nodes.remove(id) {
                forget(&mut self.held, id, copies.copies.into_keys());
            }
        }
        let recount = !gone.is_empty();
        if recount {
            self.recount(ring);
        }
        recount
    }

    /// What `node` held when it last answered: (partitions, memories); none if it never did.
    pub fn node_totals(&self, node: &NodeId) -> Option<(u64, u64)> {
        self.nodes.get(node).map(|n| (n.copies.len() as u64, n.memories))
    }

    /// The nodes holding a copy of each partition, by id (a walk over every copy known).
    pub fn holders(&self) -> std::collections::BTreeMap<PartitionKey, Vec<NodeId>> {
        let mut out: std::collections::BTreeMap<PartitionKey, Vec<NodeId>> = Default::default();
        for (node, copies) in &self.nodes {
            for p in copies.copies.keys() {
                out.entry(p.clone()).or_default().push(node.clone());
            }
        }
        out.values_mut().for_each(|held| held.sort());
        out
    }

    /// The nodes holding a copy of `partition`, by id: one lookup per known node, not a walk.
    pub fn holders_of(&self, partition: &PartitionKey) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, copies)| copies.copies.contains_key(partition))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Each tenant's (memories, bytes).
    pub fn sums(&self) -> &HashMap<String, (u64, u64)> {
        &self.sums
    }

    /// Every copy of `tenant`'s partitions the nodes last listed: (node, partition, memories),
    /// by partition then node; costs that tenant's copies, not the cluster's.
    pub fn copies_of(&self, tenant: &str) -> Vec<(NodeId, PartitionKey, u64)> {
        let Some(held) = self.held.get(tenant) else { return Vec::new() };
        let mut out: Vec<(NodeId, PartitionKey, u64)> = held
            .iter()
            .filter_map(|(node, p)| {
                let (count, _) = self.nodes.get(node)?.copies.get(p)?;
                Some((node.clone(), p.clone(), *count))
            })
            .collect();
        out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        out
    }

    /// Counts the sums again from every known copy (a walk over them: at a layout change or a
    /// node's full list only).
    fn recount(&mut self, ring: &Ring) {
        let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
        for (node, copies) in &self.nodes {
            for (p, (count, bytes)) in &copies.copies {
                let owned = ring.owner(p).is_some_and(|o| o.id == *node);
                if let (true, Some(t)) = (owned, p.tenant()) {
                    let slot = sums.entry(t.to_string()).or_default();
                    slot.0 += count;
                    slot.1 += bytes;
                }
            }
        }
        self.sums = sums;
        self.epoch = Some(ring.epoch());
    }
}

/// Takes `node`'s copies of `partitions` out of the tenants' lists of copies.
fn forget(
    held: &mut HashMap<String, BTreeSet<(NodeId, PartitionKey)>>,
    node: &NodeId,
    partitions: impl Iterator<Item = PartitionKey>,
) {
    for p in partitions {
        let Some(t) = p.tenant().map(|t| t.to_string()) else { continue };
        if let Some(copies) = held.get_mut(&t) {
            copies.remove(&(node.clone(), p));
            if copies.is_empty() {
                held.remove(&t);
            }
        }
    }
}

fn adjust(
    sums: &mut HashMap<String, (u64, u64)>,
    p: &PartitionStats,
    before: (u64, u64),
    now: (u64, u64),
) {
    let Some(t) = p.partition.tenant() else { return };
    let slot = sums.entry(t.to_string()).or_default();
    slot.0 = (slot.0 + now.0).saturating_sub(before.0);
    slot.1 = (slot.1 + now.1).saturating_sub(before.1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterLayout;
    use crate::layout::LayoutNode;

    fn stats(p: &str, count: u64, bytes: u64) -> PartitionStats {
        PartitionStats {
            partition: p.parse().expect("partition"),
            count,
            dimensions: None,
            last_seq: 1,
            last_term: 0,
            bytes,
        }
    }

    fn list(
        node: &NodeId,
        partitions: Vec<PartitionStats>,
        cursor: u64,
        full: bool,
    ) -> PartitionList {
        PartitionList { node: node.clone(), epoch: 1, partitions, feed: 7, cursor, full }
    }

    /// Node `a` alone in a ring at epoch 1.
    fn one_node_ring() -> (NodeId, Ring) {
        let a = NodeId::parse("a").expect("id");
        let mut layout = ClusterLayout::default();
        layout.nodes.push(LayoutNode { id: a.clone(), addr: "127.0.0.1:1".into() });
        layout.epoch = 1;
        (a, Ring::new(layout))
    }

    #[test]
    fn sums_follow_full_and_incremental_lists_of_the_owners_copies() {
        let (a, ring) = one_node_ring();
        let mut usage = Usage::default();
        assert_eq!(usage.query(&a), "");
        usage.apply(
            &ring,
            &a,
            list(
                &a,
                vec![
                    stats("t1/shared", 3, 30),
                    stats("t1/agent:x", 2, 20),
                    stats("t2/shared", 1, 10),
                ],
                5,
                true,
            ),
        );
        assert_eq!(usage.sums().get("t1"), Some(&(5, 50)));
        assert_eq!(usage.query(&a), "?feed=7&since=5");
        assert_eq!(usage.node_totals(&a), Some((3, 6)), "partitions and memories on a");
        // Changed since: one partition grew, one is gone.
        usage.apply(
            &ring,
            &a,
            list(&a, vec![stats("t1/shared", 4, 45), stats("t2/shared", 0, 0)], 9, false),
        );
        assert_eq!(usage.sums().get("t1"), Some(&(6, 65)));
        assert_eq!(usage.sums().get("t2"), Some(&(0, 0)));
        assert_eq!(usage.query(&a), "?feed=7&since=9");
        assert_eq!(usage.node_totals(&a), Some((2, 6)), "t2 gone, t1/shared 3 → 4");
        let holders: Vec<String> = usage.holders().keys().map(|p| p.to_string()).collect();
        assert_eq!(holders, ["t1/agent:x", "t1/shared"]);
        let of = |p: &str| usage.holders_of(&p.parse().expect("partition"));
        assert_eq!((of("t1/shared"), of("t2/shared")), (vec![a.clone()], vec![]));
        // One tenant's copies, found without a walk: the gone one is not among them.
        let copies = |usage: &Usage, t: &str| -> Vec<(String, u64)> {
            usage.copies_of(t).into_iter().map(|(_, p, n)| (p.to_string(), n)).collect()
        };
        assert_eq!(
            copies(&usage, "t1"),
            [("t1/agent:x".to_owned(), 2), ("t1/shared".to_owned(), 4)]
        );
        assert!(copies(&usage, "t2").is_empty());
        // A node that restarted lists everything again: the sums are what it lists.
        usage.apply(&ring, &a, list(&a, vec![stats("t1/shared", 1, 1)], 2, true));
        assert_eq!(usage.sums().get("t1"), Some(&(1, 1)));
        assert_eq!(usage.sums().get("t2"), None);
        assert_eq!(usage.node_totals(&a), Some((1, 1)));
        assert_eq!(usage.node_totals(&NodeId::parse("b").expect("id")), None);
        assert_eq!(copies(&usage, "t1"), [("t1/shared".to_owned(), 1)]);
    }

    /// What a quota refresh costs once the first full list is in: 20 partitions changed since
    /// the cursor, at 1,000 and at 100,000 partitions on the node (docs/benchmarks.md; printed,
    /// not asserted: `cargo test --release -p memring-common --lib refresh_cost -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore = "a measurement"]
    fn refresh_cost_follows_what_changed() {
        let (a, ring) = one_node_ring();
        for held in [1_000usize, 100_000] {
            let mut usage = Usage::default();
            let all = (0..held).map(|t| stats(&format!("t{t}/shared"), 3, 30)).collect();
            usage.apply(&ring, &a, list(&a, all, 1, true));
            let rounds = 2_000u32;
            let started = std::time::Instant::now();
            for r in 0..rounds {
                let changed = (0..20)
                    .map(|i| stats(&format!("t{}/shared", (r as usize * 20 + i) % held), 4, 40))
                    .collect();
                usage.apply(&ring, &a, list(&a, changed, 2 + u64::from(r), false));
                usage.retain_nodes(&ring);
            }
            let per = started.elapsed() / rounds;
            println!("{held} partitions held, 20 changed: {per:?} per refresh");
        }
    }
}
