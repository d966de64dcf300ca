//! What each shard node holds, as the cluster view shows it (`view.rs`): kept from each node's
//! change feed, so a look at the view (the dashboard polls it; `shardctl status`) asks each node
//! only for the partitions changed since its last answer (`GET /internal/v1/partitions?feed&since`)
//! instead of listing every partition of every node. A node asked for the first time, or one
//! that restarted (a new feed), answers with a full list once.

use std::collections::{BTreeMap, HashMap};

use memring_common::api::PartitionList;
use memring_common::internal::InternalClient;
use memring_common::{NodeId, PartitionKey};

use crate::shard_client as shard;

/// Each node's copies as last listed: memories per partition (a partition the node no longer
/// holds is forgotten).
#[derive(Default)]
pub struct Listings(tokio::sync::Mutex<HashMap<NodeId, Listed>>);

/// One node's copies.
#[derive(Default)]
struct Listed {
    feed: u64,
    cursor: u64,
    memories: u64,
    copies: HashMap<PartitionKey, u64>,
}

/// What one node holds, as [`Listings::refresh`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHolds {
    /// Partitions it holds a copy of.
    pub partitions: u64,
    /// Memories in them.
    pub memories: u64,
}

impl Listings {
    /// Asks each of `nodes` (id, address) for what changed since its last answer, and forgets
    /// nodes not among them. Returns what each node that answered holds, and, with `holders`,
    /// which nodes hold each partition (a walk over every copy known: the view's replica sets
    /// need it).
    pub async fn refresh(
        &self,
        client: &InternalClient,
        nodes: &[(NodeId, String)],
        holders: bool,
    ) -> (HashMap<NodeId, NodeHolds>, BTreeMap<PartitionKey, Vec<NodeId>>) {
        let mut known = self.0.lock().await;
        known.retain(|id, _| nodes.iter().any(|(n, _)| n == id));
        let asked = nodes.iter().map(|(id, addr)| {
            let query = known.get(id).map(Listed::query).unwrap_or_default();
            async move { shard::partitions_changed(client, addr, &query).await }
        });
        let answers = futures::future::join_all(asked).await;
        let mut holds = HashMap::new();
        for ((id, _), answer) in nodes.iter().zip(answers) {
            let Ok(list) = answer else { continue };
            let listed = known.entry(id.clone()).or_default();
            listed.apply(list);
            let held =
                NodeHolds { partitions: listed.copies.len() as u64, memories: listed.memories };
            holds.insert(id.clone(), held);
        }
        let mut by_partition: BTreeMap<PartitionKey, Vec<NodeId>> = BTreeMap::new();
        if holders {
            for (id, listed) in known.iter().filter(|(id, _)| holds.contains_key(*id)) {
                for p in listed.copies.keys() {
                    by_partition.entry(p.clone()).or_default().push(id.clone());
                }
            }
            for held in by_partition.values_mut() {
                held.sort();
            }
        }
        (holds, by_partition)
    }
}

impl Listed {
    /// The query for what changed since the last answer (empty: a full list).
    fn query(&self) -> String {
        if self.feed == 0 {
            return String::new();
        }
        format!("?feed={}&since={}", self.feed, self.cursor)
    }

    /// Takes a node's answer in: a full list replaces what was known, a list of changes
    /// updates the partitions it names (one it names with nothing in it is gone).
    fn apply(&mut self, list: PartitionList) {
        if list.full {
            self.copies.clear();
            self.memories = 0;
        }
        (self.feed, self.cursor) = (list.feed, list.cursor);
        for p in list.partitions {
            let before = match p.count == 0 && p.last_seq == 0 {
                true => self.copies.remove(&p.partition),
                false => self.copies.insert(p.partition.clone(), p.count),
            };
            let after = if p.count == 0 && p.last_seq == 0 { 0 } else { p.count };
            self.memories = (self.memories + after).saturating_sub(before.unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use memring_common::api::PartitionStats;

    use super::*;

    fn stats(p: &str, count: u64, last_seq: u64) -> PartitionStats {
        PartitionStats {
            partition: p.parse().expect("partition"),
            count,
            dimensions: None,
            last_seq,
            last_term: 0,
            bytes: 0,
        }
    }

    fn list(full: bool, cursor: u64, partitions: Vec<PartitionStats>) -> PartitionList {
        PartitionList {
            node: NodeId::parse("a").expect("id"),
            epoch: 1,
            partitions,
            feed: 7,
            cursor,
            full,
        }
    }

    #[test]
    fn changes_update_what_a_full_list_gave_and_a_new_full_list_replaces_it() {
        let mut l = Listed::default();
        assert_eq!(l.query(), "", "nothing known: a full list");
        l.apply(list(true, 10, vec![stats("t1/shared", 5, 5), stats("t2/shared", 3, 3)]));
        assert_eq!((l.copies.len(), l.memories), (2, 8));
        assert_eq!(l.query(), "?feed=7&since=10");
        // t1 grew, t2 was dropped, t3 is new, and an empty partition with a log stays.
        l.apply(list(
            false,
            12,
            vec![
                stats("t1/shared", 9, 9),
                stats("t2/shared", 0, 0),
                stats("t3/shared", 1, 1),
                stats("t4/shared", 0, 4),
            ],
        ));
        assert_eq!((l.copies.len(), l.memories), (3, 10));
        assert_eq!(l.query(), "?feed=7&since=12");
        l.apply(list(true, 20, vec![stats("t9/shared", 2, 2)]));
        assert_eq!((l.copies.len(), l.memories), (1, 2), "a full list replaces everything");
    }
}
