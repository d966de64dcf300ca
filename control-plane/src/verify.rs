//! `shardctl verify`: every partition stored anywhere must be stored on exactly one node, its
//! owner at the current epoch. (During a migration the source's copy is checked against the
//! target by the migration itself, count and checksum, before ownership flips.)

use memring_common::Ring;
use memring_common::store::RingStore;
use serde::{Deserialize, Serialize};

/// The verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Layout epoch checked against.
    pub epoch: u64,
    /// Partitions seen (restricted to `tenant` if given).
    pub partitions_checked: usize,
    /// Memories in them.
    pub memories: u64,
    /// What is wrong; empty when all is well.
    pub problems: Vec<String>,
}

/// Checks placement of every partition (of `tenant`, if given) against the ring.
pub async fn verify(
    store: &dyn RingStore,
    client: &reqwest::Client,
    tenant: Option<&str>,
) -> anyhow::Result<VerifyReport> {
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let mut problems = Vec::new();
    let mut seen: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for node in &layout.nodes {
        match crate::view::partition_list(client, &node.addr).await {
            Ok(list) => {
                for p in list.partitions {
                    if tenant.is_some_and(|t| p.partition.tenant().map(|x| x.as_str()) != Some(t)) {
                        continue;
                    }
                    let owner = ring.owner(&p.partition).map(|o| o.id.clone());
                    if owner.as_ref() != Some(&node.id) && p.count > 0 {
                        problems.push(format!(
                            "{} has {} memories on {}, which does not own it (owner: {})",
                            p.partition,
                            p.count,
                            node.id,
                            owner.map(|o| o.to_string()).unwrap_or_else(|| "none".into())
                        ));
                    }
                    seen.entry(p.partition.to_string())
                        .or_default()
                        .push((node.id.to_string(), p.count));
                }
            }
            Err(e) => problems.push(format!("node {}: {e:#}", node.id)),
        }
    }
    for (partition, holders) in &seen {
        let with_data: Vec<&(String, u64)> = holders.iter().filter(|(_, c)| *c > 0).collect();
        if with_data.len() > 1 {
            problems
                .push(format!("{partition} has data on {} nodes: {with_data:?}", with_data.len()));
        }
    }
    Ok(VerifyReport {
        epoch: layout.epoch,
        partitions_checked: seen.len(),
        memories: seen.values().flatten().map(|(_, c)| c).sum(),
        problems,
    })
}
