//! Every binary's `/metrics` against the reference table in docs/operations.md: after traffic
//! that makes each event happen (reads by replicas, a rate limit, a follower killed so writes
//! lack their quorum and reads fail over, a node marked down), each documented series is
//! scraped from the binaries the table names. A series documented but never exported fails the
//! test, and so does one exported under a name the table does not know.

use std::collections::BTreeSet;
use std::time::Duration;

use memring_tests::etcd::EtcdCluster;
use memring_tests::load::{set_replication, wait_for};
use memring_tests::{Proc, client, shardctl, vector};
use serde_json::json;

/// Series an event we do not stage here creates: documented, not scraped.
const EVENT_ONLY: &[(&str, &str)] = &[
    (
        "memring_router_wrong_owner_retries_total",
        "a router with a stale ring (tests/tests/etcd.rs)",
    ),
    (
        "memring_router_fenced_retries_total",
        "a write during a migration's fence (tests/tests/migration.rs)",
    ),
    ("memring_router_replica_fallbacks_total", "a follower behind its staleness bound"),
    (
        "memring_replication_resyncs_total",
        "a returning primary with unacknowledged writes (tests/tests/failover.rs)",
    ),
    ("memring_ttl_purged_total", "an expired memory purged (tests/tests/api.rs)"),
    ("memring_replication_reseeds_total", "a copy back behind a trimmed log (tests/tests/trim.rs)"),
    (
        "memring_replication_graphs_taken_total",
        "a move of a partition whose owner has its graph loaded (tests/tests/migration.rs)",
    ),
    (
        "memring_replication_graph_bytes_total",
        "a move of a partition whose owner has its graph loaded (tests/tests/migration.rs)",
    ),
    ("memring_replication_rounds_total", "a replicated write (tests/tests/replication.rs)"),
    (
        "memring_replication_inlined_entries_total",
        "a replicated write (tests/tests/replication.rs)",
    ),
    (
        "memring_log_trimmed_entries_total",
        "a log trimmed after --log-keep-secs (tests/tests/trim.rs)",
    ),
    ("memring_log_trim_waiting_partitions", "the first trim round, 5 s after a start"),
    ("memring_router_breaker_rejections_total", "a request while a breaker is open"),
    (
        "memring_migration_copied",
        "a migration (tests/tests/migration.rs, tests/tests/dashboard.rs)",
    ),
    ("memring_migration_total", "a migration"),
    (
        "memring_control_copies_dropped_total",
        "a copy outside its replica set (tests/tests/replication.rs)",
    ),
    ("memring_embed_texts_total", "a router with an embedder (tests/tests/text.rs)"),
    ("memring_embed_batches_total", "a router with an embedder (tests/tests/text.rs)"),
    ("memring_embed_batch_seconds", "a router with an embedder (tests/tests/text.rs)"),
    ("memring_embed_queue_wait_seconds", "a router with an embedder (tests/tests/text.rs)"),
    ("memring_embed_queue_texts", "a router with an embedder (tests/tests/text.rs)"),
    ("memring_embed_rejected_total", "a full embedder queue (tests/tests/text.rs)"),
    (
        "memring_embed_remote_failures_total",
        "an `openai` embedder's service down (tests/tests/text.rs)",
    ),
    (
        "memring_router_read_retries_total",
        "a read whose owner cannot be reached (with replica reads a follower answers first)",
    ),
];

/// `(metric, binaries)` rows of the reference table.
fn documented() -> anyhow::Result<Vec<(String, String)>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md"))?;
    let section =
        doc.split("## Metrics").nth(1).ok_or_else(|| anyhow::anyhow!("no Metrics section"))?;
    Ok(section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(2)?.to_string()))
        })
        .collect())
}

/// The metric names a binary exports (histograms by their base name).
async fn exported(p: &Proc) -> anyhow::Result<BTreeSet<String>> {
    let text = client().get(format!("{}/metrics", p.url())).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .collect())
}

#[tokio::test]
async fn every_documented_series_is_exported_by_its_binaries() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 3).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 2).await?;
    let control = c.start_control_with(&["--replace-after-secs", "0"]).await?;
    let epoch = memring_common::store::RingStore::load(&store).await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let (router, http) = (c.router(0), client());
    let items: Vec<_> = (0..40)
        .map(|n| json!({"id": format!("m{n}"), "scope": "shared", "content": "x", "embedding": vector(8, n % 8, 0.2)}))
        .collect();
    for t in 0..6 {
        memring_tests::write_batch(&http, &router, &format!("t{t}"), items.clone()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in 0..6 {
        let q = json!({"scopes": ["shared"], "embedding": vector(8, 1, 0.2)});
        http.post(format!("{router}/v1/tenants/t{t}/memories/search")).json(&q).send().await?;
    }
    // A rate limit hit.
    shardctl(&control, &["limits", "set", "--tenant", "t0", "--requests-per-sec", "1"]).await?;
    wait_for("a 429", Duration::from_secs(5), || async {
        let r = http.get(format!("{router}/v1/tenants/t0/memories?scope=shared")).send().await?;
        Ok((r.status().as_u16() == 429).then_some(()))
    })
    .await?;
    // A node dies: writes whose follower it was lack their quorum, reads to it fail and retry,
    // its breaker opens, and the control plane marks it down.
    c.shards[2].kill();
    for t in 1..6 {
        let m = json!({"id": "late", "scope": "shared", "content": "y", "embedding": vector(8, 2, 0.2)});
        let _ = http.post(format!("{router}/v1/tenants/t{t}/memories")).json(&m).send().await;
        for _ in 0..6 {
            let _ =
                http.get(format!("{router}/v1/tenants/t{t}/memories/m1?scope=shared")).send().await;
        }
    }
    wait_for("the dead node marked down", Duration::from_secs(20), || async {
        let l = memring_common::store::RingStore::load(&store).await?.layout;
        Ok((l.states.down().next().is_some()).then_some(()))
    })
    .await?;

    let (r, s, ctl) =
        (exported(&c.routers[0]).await?, exported(&c.shards[0]).await?, exported(&control).await?);
    let s2 = exported(&c.shards[1]).await?;
    let shards: BTreeSet<String> = s.union(&s2).cloned().collect();
    let mut missing = Vec::new();
    let docs = documented()?;
    assert!(docs.len() >= 15, "the reference table was not found: {docs:?}");
    for (name, on) in &docs {
        if EVENT_ONLY.iter().any(|(n, _)| n == name) {
            continue;
        }
        for (flag, got, binary) in
            [("r", &r, "router"), ("s", &shards, "shard node"), ("c", &ctl, "control plane")]
        {
            if on.split_whitespace().any(|f| f == flag) && !got.contains(name) {
                missing.push(format!("{name} on the {binary}"));
            }
        }
    }
    assert!(missing.is_empty(), "documented but not exported: {missing:?}");
    // Every memring series a binary exports is documented.
    let known: BTreeSet<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    let unknown: Vec<&String> = r
        .iter()
        .chain(&shards)
        .chain(&ctl)
        .filter(|n| {
            (n.starts_with("memring_") || n.starts_with("http_")) && !known.contains(n.as_str())
        })
        .collect();
    assert!(unknown.is_empty(), "exported but not documented in docs/operations.md: {unknown:?}");
    Ok(())
}
