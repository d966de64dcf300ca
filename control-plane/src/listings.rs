//! What each shard node holds, as the cluster view shows it (`view.rs`): kept in a
//! `memring_common::usage::Usage` from each node's change feed, so a look at the view (the
//! dashboard polls it; `shardctl status`) asks each node only for the partitions changed since
//! its last answer (`GET /internal/v1/partitions?feed&since`) instead of listing every partition
//! of every node. A node asked for the first time, or one that restarted (a new feed), answers
//! with a full list once.

use std::collections::{BTreeMap, HashMap};

use memring_common::internal::InternalClient;
use memring_common::usage::Usage;
use memring_common::{NodeId, PartitionKey, Ring};

use crate::shard_client as shard;

/// Each node's copies as last listed.
#[derive(Default)]
pub struct Listings(tokio::sync::Mutex<Usage>);

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
        ring: &Ring,
        nodes: &[(NodeId, String)],
        holders: bool,
    ) -> (HashMap<NodeId, NodeHolds>, BTreeMap<PartitionKey, Vec<NodeId>>) {
        let mut known = self.0.lock().await;
        known.retain(ring, |id| nodes.iter().any(|(n, _)| n == id));
        let asked = nodes.iter().map(|(id, addr)| {
            let query = known.query(id);
            async move { shard::partitions_changed(client, addr, &query).await }
        });
        let answers = futures::future::join_all(asked).await;
        let mut holds = HashMap::new();
        for ((id, _), answer) in nodes.iter().zip(answers) {
            let Ok(list) = answer else { continue };
            known.apply(ring, id, list);
            if let Some((partitions, memories)) = known.node_totals(id) {
                holds.insert(id.clone(), NodeHolds { partitions, memories });
            }
        }
        let mut by_partition = if holders { known.holders() } else { BTreeMap::new() };
        // Only what the nodes that answered now hold.
        for held in by_partition.values_mut() {
            held.retain(|id| holds.contains_key(id));
        }
        by_partition.retain(|_, held| !held.is_empty());
        (holds, by_partition)
    }
}
