//! `shardctl verify`: every partition stored anywhere must be stored on exactly one node, its
//! owner at the current epoch, and each stored copy must match its own bookkeeping: a scan of
//! its data gives the count and order-independent checksum of (id, version) its meta holds.
//!
//! A partition with a migration in flight legitimately has data on two nodes (source and the
//! target being filled); it is reported under `in_flight` with both sides' counts and checksums,
//! not as a problem. (The migration itself compares them, fenced, before ownership flips.)
//! With replication a partition's copies belong on its replica set: a follower copy that differs
//! from the owner's is catching up (`in_flight`), a copy on a down node makes the partition
//! `under_replicated`, and only copies outside the set are problems.

use std::collections::{BTreeMap, BTreeSet};

use memring_common::api::VerifyReport;
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::store::RingStore;
use memring_common::{PartitionKey, Ring};

/// One node's copy of a partition.
struct Copy {
    node: String,
    count: u64,
    checksum: String,
}

/// Checks placement and integrity of every partition (of `tenant`, if given).
pub async fn verify(
    store: &dyn RingStore,
    client: &InternalClient,
    tenant: Option<&str>,
) -> anyhow::Result<VerifyReport> {
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let moving: BTreeSet<String> =
        crate::journal::pending(store).await?.into_iter().map(|job| job.partition).collect();
    let mut problems = Vec::new();
    let mut copies: BTreeMap<PartitionKey, Vec<Copy>> = BTreeMap::new();
    for node in &layout.nodes {
        let list = match crate::shard_client::partitions(client, &node.addr, None).await {
            Ok(list) => list,
            Err(e) => {
                problems.push(format!("node {}: {e:#}", node.id));
                continue;
            }
        };
        for p in list.partitions {
            if tenant.is_some_and(|t| p.partition.tenant().map(|x| x.as_str()) != Some(t)) {
                continue;
            }
            match scan_copy(client, node, &p.partition).await {
                Ok(copy) => copies.entry(p.partition).or_default().push(copy),
                Err(e) => problems.push(format!("{} on {}: {e:#}", p.partition, node.id)),
            }
        }
    }
    let mut in_flight = Vec::new();
    let mut under_replicated = Vec::new();
    for (partition, held) in &copies {
        let describe =
            |c: &Copy| format!("{}: {} memories, checksum {}", c.node, c.count, c.checksum);
        if moving.contains(&partition.to_string()) {
            let sides: Vec<String> = held.iter().map(describe).collect();
            in_flight.push(format!("{partition}: {}", sides.join("; ")));
            continue;
        }
        // Copies belong on the partition's replica set: its owner and (with replication) its
        // followers, which may lag behind the owner or be missing while they catch up.
        let set = ring.replicas(partition);
        let owner = ring.owner(partition).map(|n| n.id.to_string());
        let owner = owner.as_deref();
        let copy_on = |node: &str| held.iter().find(|c| c.node == node);
        for c in held.iter().filter(|c| c.count > 0) {
            if !set.iter().any(|n| n.id.as_str() == c.node) {
                problems.push(format!(
                    "{partition} has {} memories on {}, which holds no copy of it (owner: {})",
                    c.count,
                    c.node,
                    owner.unwrap_or("none")
                ));
            }
        }
        let Some(primary) = owner.and_then(copy_on) else { continue };
        if primary.count == 0 {
            continue;
        }
        let mut behind = Vec::new();
        for follower in set.iter().filter(|n| Some(n.id.as_str()) != owner) {
            if layout.is_down(&follower.id) {
                under_replicated.push(format!("{partition}: copy on {} is down", follower.id));
                continue;
            }
            match copy_on(follower.id.as_str()) {
                Some(c) if c.checksum == primary.checksum => {}
                Some(c) => behind.push(describe(c)),
                None => behind.push(format!("{}: no copy yet", follower.id)),
            }
        }
        if set.len() < layout.replication_factor as usize {
            under_replicated.push(format!(
                "{partition}: {} copies, the layout asks for {}",
                set.len(),
                layout.replication_factor
            ));
        }
        if !behind.is_empty() {
            in_flight.push(format!(
                "{partition}: followers catching up with {}: {}",
                describe(primary),
                behind.join("; ")
            ));
        }
    }
    Ok(VerifyReport {
        epoch: layout.epoch,
        partitions_checked: copies.len(),
        memories: copies.values().flatten().map(|c| c.count).sum(),
        problems,
        in_flight,
        under_replicated,
    })
}

/// Scans `node`'s copy of `partition`; an error when its data disagrees with its meta.
async fn scan_copy(
    client: &InternalClient,
    node: &LayoutNode,
    partition: &PartitionKey,
) -> anyhow::Result<Copy> {
    let sum = crate::shard_client::checksum(client, node, partition, true).await?;
    anyhow::ensure!(
        sum.consistent,
        "stored data disagrees with the partition's bookkeeping (a scan finds {} memories, checksum {}); \
         this is a memring bug: keep the node's data directory and report it",
        sum.count,
        sum.checksum
    );
    Ok(Copy { node: node.id.to_string(), count: sum.count, checksum: sum.checksum })
}
