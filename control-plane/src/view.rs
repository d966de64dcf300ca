//! The cluster view: layout, ring shares, live nodes, and what each node stores.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use memring_common::Ring;
use memring_common::api::{ClusterView, NodeView, PartitionList};
use memring_common::store::RingStore;

/// The client the control plane uses to ask shard nodes about their partitions.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build()?)
}

/// What the node at `addr` stores (`GET /internal/v1/partitions`).
pub async fn partition_list(client: &reqwest::Client, addr: &str) -> anyhow::Result<PartitionList> {
    partition_list_after(client, addr, None).await
}

/// [`partition_list`], but with `barrier` the node first catches up to that layout epoch and
/// waits out every partition creation decided under an older one (see `creation_frozen`).
pub async fn partition_list_after(
    client: &reqwest::Client,
    addr: &str,
    barrier: Option<u64>,
) -> anyhow::Result<PartitionList> {
    let mut url = format!("http://{addr}/internal/v1/partitions");
    if let Some(epoch) = barrier {
        url.push_str(&format!("?barrier={epoch}"));
    }
    let resp =
        client.get(&url).send().await.with_context(|| format!("node at {addr} unreachable"))?;
    Ok(resp.error_for_status()?.json().await?)
}

/// Builds the view from the store, then asks every reachable node what it holds.
pub async fn cluster_view(
    store: &dyn RingStore,
    client: &reqwest::Client,
) -> anyhow::Result<ClusterView> {
    let layout = store.load().await?.layout;
    let live = store.live_nodes().await?;
    let ring = Ring::new(layout.clone());
    let shares: BTreeMap<_, _> = ring.shares().into_iter().collect();
    let mut nodes: Vec<NodeView> = layout
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id.clone(),
            addr: n.addr.clone(),
            in_ring: true,
            live: live.iter().any(|r| r.id == n.id),
            share: shares.get(&n.id).copied().unwrap_or(0.0),
            partitions: None,
            episodes: None,
        })
        .collect();
    for record in &live {
        if !nodes.iter().any(|n| n.id == record.id) {
            nodes.push(NodeView {
                id: record.id.clone(),
                addr: record.addr.clone(),
                in_ring: false,
                live: true,
                share: 0.0,
                partitions: None,
                episodes: None,
            });
        }
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let answers = futures::future::join_all(
        addrs.iter().map(|addr| async move { partition_list(client, addr).await.ok() }),
    )
    .await;
    for (node, answer) in nodes.iter_mut().zip(answers) {
        if let Some(list) = answer {
            node.partitions = Some(list.partitions.len() as u64);
            node.episodes = Some(list.partitions.iter().map(|p| p.count).sum());
        }
    }
    Ok(ClusterView {
        epoch: layout.epoch,
        store: store.describe(),
        vnodes_per_node: layout.vnodes_per_node,
        replication_factor: layout.replication_factor,
        write_quorum: layout.write_quorum(),
        nodes,
        overrides: layout.overrides.iter().map(|(p, n)| (p.to_string(), n.to_string())).collect(),
        migrations: crate::journal::pending(store)
            .await?
            .into_iter()
            .map(|j| serde_json::to_value(j).unwrap_or_default())
            .collect(),
    })
}

/// Renders the view as the table `shardctl status` prints.
pub fn render(view: &ClusterView) -> String {
    let mut out = format!(
        "epoch {}   store {}   vnodes/node {}   copies {} (writes acknowledged at {})\n\n{:<16} {:<22} {:>7} {:>5} {:>8} {:>11} {:>10}\n",
        view.epoch,
        view.store,
        view.vnodes_per_node,
        view.replication_factor,
        view.write_quorum,
        "NODE",
        "ADDR",
        "IN RING",
        "LIVE",
        "SHARE",
        "PARTITIONS",
        "MEMORIES"
    );
    for n in &view.nodes {
        let show = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{:<16} {:<22} {:>7} {:>5} {:>7.2}% {:>11} {:>10}\n",
            n.id.as_str(),
            n.addr,
            if n.in_ring { "yes" } else { "no" },
            if n.live { "yes" } else { "no" },
            n.share * 100.0,
            show(n.partitions),
            show(n.episodes)
        ));
    }
    if !view.migrations.is_empty() {
        out.push_str("\nmigrations in flight:\n");
        for m in &view.migrations {
            out.push_str(&format!(
                "  {} {} -> {} ({})\n",
                m["partition"], m["from"], m["to"], m["phase"]
            ));
        }
    }
    if !view.overrides.is_empty() {
        out.push_str("\noverrides:\n");
        for (p, n) in &view.overrides {
            out.push_str(&format!("  {p} -> {n}\n"));
        }
    }
    out
}

/// Every partition of `tenant` stored on any node in the layout.
pub async fn tenant_partitions(
    store: &dyn RingStore,
    client: &reqwest::Client,
    tenant: &memring_common::TenantId,
) -> anyhow::Result<Vec<memring_common::PartitionKey>> {
    let layout = store.load().await?.layout;
    let mut out = std::collections::BTreeSet::new();
    for node in &layout.nodes {
        let list = partition_list(client, &node.addr).await?;
        out.extend(
            list.partitions.into_iter().map(|p| p.partition).filter(|p| p.tenant() == Some(tenant)),
        );
    }
    Ok(out.into_iter().collect())
}
