//! Replication with real etcd and real shard nodes: followers tail their primaries' change logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use memring_common::api::partition_path;
use memring_common::store::RingStore;
use memring_common::{PartitionKey, Ring};
use memring_tests::etcd::EtcdCluster;
use memring_tests::{binary, client, vector};
use serde_json::{Value, json};

/// `(count, checksum)` of `partition` on the node at `addr` (from its meta; 0 if absent).
async fn sum_at(addr: &str, partition: &PartitionKey) -> anyhow::Result<(u64, String)> {
    let url = format!("http://{addr}/internal/v1/migrate/{}/checksum", partition_path(partition));
    let v: Value = client().get(url).send().await?.error_for_status()?.json().await?;
    Ok((v["count"].as_u64().unwrap_or(0), v["checksum"].as_str().unwrap_or("").to_owned()))
}

/// With `replication_factor` 2, every partition written through the router — creates, an update
/// and a delete — reaches its follower (same count and checksum as the primary; every node's lag
/// gauge back at 0), and `shardctl verify` accepts follower copies. Rebalance refuses a replicated
/// layout for now, with a clear message.
#[tokio::test]
async fn followers_catch_up_with_their_primaries() -> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 1, 10).await?;
    let store = c.etcd.store().await?;
    let set = tokio::process::Command::new(binary("memring-control")?)
        .args(["--etcd", &c.etcd.url, "layout", "set-replication", "2"])
        .output()
        .await?;
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let bad = tokio::process::Command::new(binary("memring-control")?)
        .args(["--etcd", &c.etcd.url, "layout", "set-replication", "9"])
        .output()
        .await?;
    assert!(!bad.status.success(), "9 copies must be refused");
    let layout = store.load().await?.layout;
    assert_eq!(layout.replication_factor, 2);
    c.wait_shards_epoch(layout.epoch).await?;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    let router = c.router(0);
    let http = client();
    for t in 0..12 {
        let items: Vec<_> = (0..25)
            .map(|n| json!({"id": format!("m{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        let resp = http
            .post(format!("{router}/v1/tenants/r{t}/memories:batch"))
            .json(&json!({"items": items}))
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200);
        // Changes after the first copy: an update and a delete.
        let upd = json!({"id": "m1", "scope": "shared", "content": "changed", "embedding": vector(8, 1, 0.2)});
        assert_eq!(
            http.post(format!("{router}/v1/tenants/r{t}/memories"))
                .json(&upd)
                .send()
                .await?
                .status()
                .as_u16(),
            200
        );
        let del = http
            .delete(format!("{router}/v1/tenants/r{t}/memories/m2?scope=shared"))
            .send()
            .await?;
        assert_eq!(del.status().as_u16(), 204);
    }
    let ring = Ring::new(store.load().await?.layout);
    let started = Instant::now();
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    loop {
        pending.clear();
        for t in 0..12 {
            let p: PartitionKey = format!("r{t}/shared").parse()?;
            let set = ring.replicas(&p);
            assert_eq!(set.len(), 2);
            let primary = sum_at(&set[0].addr, &p).await?;
            assert_eq!(primary.0, 24, "{p} on its primary");
            let follower = sum_at(&set[1].addr, &p).await?;
            if follower != primary {
                pending
                    .insert(p.to_string(), format!("{primary:?} vs {follower:?} on {}", set[1].id));
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "followers behind: {pending:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("12 partitions replicated to their followers in {:?}", started.elapsed());
    for shard in &c.shards {
        let metrics = http.get(format!("{}/metrics", shard.url())).send().await?.text().await?;
        let lags: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("memring_replication_lag_entries")).collect();
        assert!(!lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0")), "{lags:?}");
    }

    let control = c.start_control().await?;
    let verify = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "verify"])
        .output()
        .await?;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let rebalance = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "rebalance"])
        .output()
        .await?;
    let err = String::from_utf8_lossy(&rebalance.stderr);
    assert!(!rebalance.status.success() && err.contains("not built yet"), "{err}");
    Ok(())
}
