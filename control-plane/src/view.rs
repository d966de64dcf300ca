//! The cluster view: layout, ring shares, live nodes, and what each node stores.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use memring_common::Ring;
use memring_common::api::{
    ClusterView, EpochSeen, LayoutChangeView, NodeView, ReplicaSetsShown, ReplicaSummary,
};
use memring_common::internal::InternalClient;
use memring_common::store::RingStore;

use crate::listings::Listings;
use crate::shard_client as shard;

/// The client the control plane uses to ask shard nodes about their partitions.
pub fn http_client(
    credential: std::sync::Arc<memring_common::internal::ClusterCredential>,
) -> anyhow::Result<InternalClient> {
    let inner = memring_common::tls::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
        .build()?;
    Ok(InternalClient::new(inner, credential))
}

/// Builds the view from the store, then asks every reachable node what changed in what it
/// holds since `listings` last asked it (`listings.rs`); `shown` says which replica sets it
/// lists.
pub async fn cluster_view(
    store: &dyn RingStore,
    client: &InternalClient,
    listings: &Listings,
    shown: ReplicaSetsShown,
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
            down: layout.is_down(&n.id),
            joining: layout.states.get(&n.id) == memring_common::layout::NodeState::Joining,
            lag: None,
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
                down: false,
                joining: false,
                lag: None,
            });
        }
    }
    // What each node holds, from its change feed (only what changed since the last look), the
    // replica sets short of a copy (kept as copies change), and the followers' lag.
    let asked: Vec<(memring_common::NodeId, String)> =
        nodes.iter().map(|n| (n.id.clone(), n.addr.clone())).collect();
    let leased: BTreeSet<memring_common::NodeId> = live.iter().map(|r| r.id.clone()).collect();
    let (look, statuses) = futures::future::join(
        listings.refresh(client, &ring, &asked, &leased, shown),
        futures::future::join_all(nodes.iter().map(|n| shard::replica_status(client, &n.addr))),
    )
    .await;
    for (node, status) in nodes.iter_mut().zip(statuses) {
        if let Some(held) = look.holds.get(&node.id) {
            node.partitions = Some(held.partitions);
            node.episodes = Some(held.memories);
        }
        node.lag = status.ok().filter(|_| ring.replicating()).map(|s| s.lag);
    }
    Ok(ClusterView {
        epoch: layout.epoch,
        store: store.describe(),
        vnodes_per_node: layout.vnodes_per_node,
        replication_factor: layout.replication_factor,
        write_quorum: layout.write_quorum(),
        nodes,
        overrides: layout
            .pins
            .iter()
            .map(|(p, pin)| (p.to_string(), pin.node.to_string()))
            .collect(),
        pins: layout.pins.iter().map(|(p, pin)| (p.to_string(), pin.clone())).collect(),
        migrations: crate::journal::pending(store).await?,
        replica_sets: look.replica_sets,
        replica_summary: look.summary,
        settling_since: layout.transition.as_ref().map(|t| t.since),
        layout_change: crate::resize::pending(store).await?.map(|job| LayoutChangeView {
            joining: job.joining,
            leaving: job.leaving.map(|n| n.id.to_string()),
            phase: job.phase.name().to_owned(),
            since_ms: job.at_ms,
        }),
        epoch_history: Vec::new(),
        autopilot: memring_common::api::AutopilotView {
            enabled: layout.auto_rebalance,
            dedicated: crate::autopilot::dedicated(&layout)
                .into_iter()
                .map(|(node, tenant)| (node.to_string(), tenant))
                .collect(),
            ..Default::default()
        },
    })
}

/// The autopilot's lines of `shardctl status`: on or off, who waits, its last run.
fn render_autopilot(a: &memring_common::api::AutopilotView) -> String {
    let mut out = format!(
        "\nauto-rebalance {}{}",
        if a.enabled { "on" } else { "off" },
        if a.running { " (running now)" } else { "" }
    );
    if !a.waiting.is_empty() {
        out.push_str(&format!("; waiting to join: {}", a.waiting.join(", ")));
    }
    out.push('\n');
    if !a.dedicated.is_empty() {
        let nodes: Vec<String> = a
            .dedicated
            .iter()
            .map(|(node, tenant)| format!("{node} ({})", tenant.as_deref().unwrap_or("free")))
            .collect();
        out.push_str(&format!("  dedicated nodes (size policy): {}\n", nodes.join(", ")));
    }
    if let Some(action) = &a.last_policy_action {
        out.push_str(&format!("  size policy, last: {action}\n"));
    }
    if let Some(last) = a.history.last() {
        let what = match &last.error {
            Some(error) => format!("failed: {error}"),
            None => format!(
                "{} moves, {:.1}% of memories (ideal {:.1}%)",
                last.moves,
                last.moved_fraction * 100.0,
                last.ideal_fraction * 100.0
            ),
        };
        out.push_str(&format!(
            "  last run: admitted {} in {:.1} s: {what}\n",
            last.joining.join(", "),
            last.took_ms as f64 / 1000.0
        ));
    }
    out
}

/// Renders the view as the table `shardctl status` prints.
pub fn render(view: &ClusterView) -> String {
    let mut out = format!(
        "epoch {}   store {}   vnodes/node {}   copies {} (writes acknowledged at {})\n\n{:<16} {:<22} {:>7} {:>5} {:>7} {:>8} {:>11} {:>10} {:>6}\n",
        view.epoch,
        view.store,
        view.vnodes_per_node,
        view.replication_factor,
        view.write_quorum,
        "NODE",
        "ADDR",
        "IN RING",
        "LIVE",
        "DOWN",
        "SHARE",
        "PARTITIONS",
        "MEMORIES",
        "LAG"
    );
    if let Some(since) = view.settling_since {
        out.insert_str(
            0,
            &format!(
                "settling: the layout change of epoch {since} waits for its new replica sets \
                 to catch up; the members it took out are still asked\n"
            ),
        );
    }
    if let Some(change) = &view.layout_change {
        let what = match &change.leaving {
            Some(node) => format!("draining {node}"),
            None => format!("admitting {}", change.joining.join(", ")),
        };
        out.insert_str(
            0,
            &format!(
                "layout change: {what}, step {} (LAG: entries the new copies still miss)\n",
                change.phase
            ),
        );
    }
    for n in &view.nodes {
        let show = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        let yes = |b: bool| if b { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<16} {:<22} {:>7} {:>5} {:>7} {:>7.2}% {:>11} {:>10} {:>6}\n",
            n.id.as_str(),
            n.addr,
            yes(n.in_ring),
            yes(n.live),
            if n.joining { "joining" } else { yes(n.down) },
            n.share * 100.0,
            show(n.partitions),
            show(n.episodes),
            if n.lag.is_some() { show(n.lag) } else { "-".into() }
        ));
    }
    out.push_str(&render_autopilot(&view.autopilot));
    if !view.migrations.is_empty() {
        out.push_str("\nmigrations in flight:\n");
        for m in &view.migrations {
            out.push_str(&format!("  {} {} -> {} ({})\n", m.partition, m.from, m.to, m.phase));
        }
    }
    // The counts: the control plane's summary, or (one from before it) counted from the list.
    let summary = view.replica_summary.unwrap_or_else(|| ReplicaSummary {
        partitions: view.replica_sets.len() as u64,
        under_replicated: view.replica_sets.iter().filter(|r| r.under_replicated).count() as u64,
        missing_copies: view.replica_sets.iter().filter(|r| !r.missing.is_empty()).count() as u64,
    });
    if summary.partitions > 0 {
        const SHOWN: usize = 20;
        out.push_str(&format!(
            "\nreplica sets (owner first): {} partitions, {} under-replicated, {} missing a copy\n",
            summary.partitions, summary.under_replicated, summary.missing_copies
        ));
        // Under-replicated ones first, then the rest listed, up to SHOWN rows.
        let under = view.replica_sets.iter().filter(|r| r.under_replicated);
        let rows = under.chain(view.replica_sets.iter().filter(|r| !r.under_replicated));
        for r in rows.take(SHOWN) {
            let set: Vec<&str> = r.replicas.iter().map(|n| n.as_str()).collect();
            let mut notes = Vec::new();
            if !r.down.is_empty() {
                notes.push(format!(
                    "down: {}",
                    r.down.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(",")
                ));
            }
            if !r.missing.is_empty() {
                notes.push(format!(
                    "no copy yet: {}",
                    r.missing.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(",")
                ));
            }
            out.push_str(&format!(
                "  {:<40} {}  {}\n",
                r.partition,
                set.join(" "),
                notes.join("; ")
            ));
        }
        let unshown = summary.partitions.saturating_sub(SHOWN.min(view.replica_sets.len()) as u64);
        if unshown > 0 {
            out.push_str(&format!("  … {unshown} more (--json lists all)\n"));
        }
    }
    if !view.overrides.is_empty() {
        out.push_str("\npins:\n");
        for (p, n) in &view.overrides {
            // A control plane from before the kinds sends the nodes only.
            let kind = view.pins.get(p).map(|pin| format!(" ({:?})", pin.kind).to_lowercase());
            out.push_str(&format!("  {p} -> {n}{}\n", kind.unwrap_or_default()));
        }
    }
    out
}

/// Every partition of `tenant` stored on any node in the layout.
pub async fn tenant_partitions(
    store: &dyn RingStore,
    client: &InternalClient,
    tenant: &memring_common::TenantId,
) -> anyhow::Result<Vec<memring_common::PartitionKey>> {
    let layout = store.load().await?.layout;
    let mut out = std::collections::BTreeSet::new();
    for node in &layout.nodes {
        let list = shard::partitions(client, &node.addr, None).await?;
        out.extend(
            list.partitions.into_iter().map(|p| p.partition).filter(|p| p.tenant() == Some(tenant)),
        );
    }
    Ok(out.into_iter().collect())
}

/// The layout epochs this control plane has seen, recorded by [`record_epochs`].
#[derive(Default)]
pub struct EpochHistory(parking_lot::Mutex<Vec<EpochSeen>>);

impl EpochHistory {
    /// Oldest first.
    pub fn list(&self) -> Vec<EpochSeen> {
        self.0.lock().clone()
    }

    fn note(&self, layout: &memring_common::ClusterLayout) {
        let mut seen = self.0.lock();
        if seen.last().is_some_and(|e| e.epoch == layout.epoch) {
            return;
        }
        seen.push(EpochSeen {
            epoch: layout.epoch,
            seen_at_ms: memring_common::clock::now_millis(),
            nodes: layout.nodes.len(),
            down: layout.states.down().count(),
            replication_factor: layout.replication_factor,
        });
        let excess = seen.len().saturating_sub(50);
        seen.drain(..excess);
    }
}

/// Loads the layout every second and records each new epoch, for as long as the task lives.
pub async fn record_epochs(
    store: std::sync::Arc<dyn RingStore>,
    history: std::sync::Arc<EpochHistory>,
) {
    loop {
        if let Ok(v) = store.load().await {
            history.note(&v.layout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
