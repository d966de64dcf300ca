//! What each shard node holds, as the cluster view shows it (`view.rs`): kept in a
//! `memring_common::usage::Usage` from each node's change feed, so a look at the view (the
//! dashboard polls it; `shardctl status`) asks each node only for the partitions changed since
//! its last answer (`GET /internal/v1/partitions?feed&since`) instead of listing every partition
//! of every node. A node asked for the first time, or one that restarted (a new feed), answers
//! with a full list once. With replication the partitions a look finds changed are the ones
//! whose replica sets are checked again (`replica_sets.rs`).

use std::collections::{BTreeSet, HashMap};

use memring_common::api::{ReplicaSetView, ReplicaSetsShown, ReplicaSummary};
use memring_common::internal::InternalClient;
use memring_common::usage::Usage;
use memring_common::{NodeId, Ring};

use crate::replica_sets::{self, Changed, SetHealth};
use crate::shard_client as shard;

/// Each node's copies as last listed, and the replica sets short of a copy.
#[derive(Default)]
pub struct Listings(tokio::sync::Mutex<Known>);

#[derive(Default)]
struct Known {
    copies: Usage,
    sets: SetHealth,
}

/// What one node holds, as [`Listings::refresh`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHolds {
    /// Partitions it holds a copy of.
    pub partitions: u64,
    /// Memories in them.
    pub memories: u64,
}

/// One look at what the nodes hold.
pub struct Look {
    /// What each node that answered holds.
    pub holds: HashMap<NodeId, NodeHolds>,
    /// With replication, the replica sets asked for (`shown`), by partition.
    pub replica_sets: Vec<ReplicaSetView>,
    /// With replication, the counts over every stored partition's set.
    pub summary: Option<ReplicaSummary>,
}

impl Listings {
    /// Asks each of `nodes` (id, address) for what changed since its last answer, forgets
    /// nodes not among them, and brings the replica sets up to date (`replica_sets.rs`; `live`:
    /// the nodes with a lease). Only the nodes that answered count.
    pub async fn refresh(
        &self,
        client: &InternalClient,
        ring: &Ring,
        nodes: &[(NodeId, String)],
        live: &BTreeSet<NodeId>,
        shown: ReplicaSetsShown,
    ) -> Look {
        let mut known = self.0.lock().await;
        let known = &mut *known;
        let forgot = known.copies.retain(ring, |id| nodes.iter().any(|(n, _)| n == id));
        let asked = nodes.iter().map(|(id, addr)| {
            let query = known.copies.query(id);
            async move { shard::partitions_changed(client, addr, &query).await }
        });
        let answers = futures::future::join_all(asked).await;
        let mut holds = HashMap::new();
        let mut changed = (!forgot).then(Vec::new);
        for ((id, _), answer) in nodes.iter().zip(answers) {
            let Ok(list) = answer else { continue };
            match (&mut changed, list.full) {
                (Some(some), false) => {
                    some.extend(list.partitions.iter().map(|p| p.partition.clone()))
                }
                _ => changed = None,
            }
            known.copies.apply(ring, id, list);
            if let Some((partitions, memories)) = known.copies.node_totals(id) {
                holds.insert(id.clone(), NodeHolds { partitions, memories });
            }
        }
        if ring.layout().replication_factor < 2 {
            known.sets = SetHealth::default();
            return Look { holds, replica_sets: Vec::new(), summary: None };
        }
        let answered: BTreeSet<NodeId> = holds.keys().cloned().collect();
        let changed = changed.map_or(Changed::Everything, Changed::Only);
        known.sets.update(&known.copies, ring, live, &answered, changed);
        let replica_sets = match shown {
            ReplicaSetsShown::All => replica_sets::all(&known.copies, ring, live, &answered),
            ReplicaSetsShown::Short => known.sets.short(),
            ReplicaSetsShown::None => Vec::new(),
        };
        Look { holds, replica_sets, summary: Some(known.sets.summary()) }
    }
}
