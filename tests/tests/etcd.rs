//! Cluster mode against a real etcd: shared ring, watches, epochs and fencing, conflicts, etcd
//! outages, and node leases.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memring_common::store::{RingStore, StoreError};
use memring_common::{PartitionKey, Ring, Scope, TenantId};
use memring_tests::etcd::{EtcdCluster, add_to_layout, live_node_ids};
use memring_tests::{binary, client, send_allowing_5xx, vector};
use serde_json::json;

async fn post(url: &str, body: serde_json::Value) -> anyhow::Result<(u16, serde_json::Value)> {
    send_allowing_5xx(&client(), reqwest::Method::POST, url, Some(body.to_string().into_bytes()))
        .await
}

async fn get(url: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    send_allowing_5xx(&client(), reqwest::Method::GET, url, None).await
}

fn memory(id: &str) -> serde_json::Value {
    json!({"id": id, "scope": "shared", "content": id, "embedding": vector(4, id.len(), 0.2)})
}

/// A steady, bounded load through every router: unique writes and searches, until `stop` (at most
/// 30 s). Returns (requests, failures as "status body").
fn spawn_load(
    routers: Vec<String>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<anyhow::Result<(usize, Vec<String>)>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut done = 0usize;
        let mut failures = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(30) {
            let router = &routers[i % routers.len()];
            let tenant = format!("load{}", i % 17);
            let (status, body) =
                post(&format!("{router}/v1/tenants/{tenant}/memories"), memory(&format!("l{i}")))
                    .await?;
            if status != 201 {
                failures.push(format!("write {status} {body}"));
            }
            let q = json!({"scopes": ["shared"], "embedding": vector(4, 1, 0.0)});
            let (status, body) =
                post(&format!("{router}/v1/tenants/{tenant}/memories/search"), q).await?;
            if status != 200 {
                failures.push(format!("search {status} {body}"));
            }
            done += 2;
            sent.fetch_add(2, Ordering::Relaxed);
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((done, failures))
    })
}

#[tokio::test]
async fn writes_through_one_router_are_read_through_another() -> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 2, 10).await?;
    for i in 0..30 {
        let (status, body) =
            post(&format!("{}/v1/tenants/t{i}/memories", c.router(0)), memory(&format!("m{i}")))
                .await?;
        assert_eq!(status, 201, "{body}");
    }
    for i in 0..30 {
        let (status, body) =
            get(&format!("{}/v1/tenants/t{i}/memories/m{i}?scope=shared", c.router(1))).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["content"], format!("m{i}"));
    }
    // The data really is spread over the three nodes.
    for shard in &c.shards {
        assert!(!c.partitions_on(shard).await?.is_empty(), "{} holds nothing", shard.addr);
    }
    Ok(())
}

#[tokio::test]
async fn a_ring_change_reaches_both_routers_within_a_second_under_load() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 2, 10).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = spawn_load(vec![c.router(0), c.router(1)], stop.clone(), sent.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let fourth = c.start_shard("shard-4").await?;
    let epoch = add_to_layout(&c.etcd.store().await?, &fourth).await?;
    assert_eq!(epoch, 4);
    let (a, b) = tokio::join!(
        c.wait_router_epoch(0, 4, Duration::from_secs(5)),
        c.wait_router_epoch(1, 4, Duration::from_secs(5))
    );
    let (a, b) = (a?, b?);
    println!("routers saw epoch 4 after {a:?} and {b:?}");
    assert!(a < Duration::from_secs(1) && b < Duration::from_secs(1), "{a:?} {b:?}");
    c.shards.push(fourth);

    tokio::time::sleep(Duration::from_millis(700)).await;
    // Run on until the load has done its share, however slow the machine is today.
    while sent.load(Ordering::Relaxed) <= 50 && !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    let (requests, failures) = load.await??;
    assert!(requests > 50, "the load ran ({requests} requests)");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // New partitions now land on the fourth node too.
    let on_fourth = c.partitions_on(&c.shards[3]).await?;
    println!("{} partitions on shard-4 after the change", on_fourth.len());
    Ok(())
}

#[tokio::test]
async fn a_stale_router_is_refused_by_the_old_owner_and_succeeds_after_its_retry()
-> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 2, 10).await?;
    let store = c.etcd.store().await?;
    let before = Ring::new(store.load().await?.layout);
    // Router 0 stops following the watch: it will keep routing with epoch 3.
    let (status, _) =
        post(&format!("{}/debug/v1/ring/watch/pause", c.router(0)), json!({})).await?;
    assert_eq!(status, 200, "router built without the testing feature?");

    let fourth = c.start_shard("shard-4").await?;
    add_to_layout(&store, &fourth).await?;
    c.shards.push(fourth);
    let after = Ring::new(store.load().await?.layout);
    c.wait_shards_epoch(4).await?;
    c.wait_router_epoch(1, 4, Duration::from_secs(5)).await?;
    assert_eq!(c.router_epoch(0).await?, 3, "router 0 is stale on purpose");

    // A fresh partition that moved from an old node to shard-4.
    let (tenant, old_owner) = (0..1000)
        .map(|i| format!("fresh{i}"))
        .find_map(|t| {
            let p = PartitionKey::new(&TenantId::parse(&t).ok()?, &Scope::Shared);
            let (was, now) = (before.owner(&p)?.clone(), after.owner(&p)?.clone());
            (now.id.as_str() == "shard-4").then_some((t, was))
        })
        .expect("some partition moves to the new node");

    let (status, body) =
        post(&format!("{}/v1/tenants/{tenant}/memories", c.router(0)), memory("x")).await?;
    assert_eq!(status, 201, "{body}");
    // The router learned the new ring through the 421 and retried once.
    assert_eq!(c.router_epoch(0).await?, 4);
    let metrics = client().get(format!("{}/metrics", c.router(0))).send().await?.text().await?;
    assert!(metrics.contains("memring_router_wrong_owner_retries_total 1"), "{metrics}");
    // The write is on the new owner and nowhere else.
    let partition = format!("{tenant}/shared");
    let old = c.shards.iter().find(|s| s.addr == old_owner.addr).expect("old owner runs");
    assert!(!c.partitions_on(old).await?.contains(&partition), "a write landed on the old owner");
    assert!(c.partitions_on(&c.shards[3]).await?.contains(&partition));
    let (status, _) =
        get(&format!("{}/v1/tenants/{tenant}/memories/x?scope=shared", c.router(1))).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn of_two_concurrent_layout_changes_one_wins() -> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 1, 10).await?;
    let store = c.etcd.store().await?;
    let current = store.load().await?.layout;
    let a = current.without_node(&c.shard_id(0));
    let b = current.without_node(&c.shard_id(1));
    let (ra, rb) = tokio::join!(
        store.compare_and_swap(current.epoch, &a),
        store.compare_and_swap(current.epoch, &b)
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{ra:?} / {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    match loser {
        Err(StoreError::Conflict { expected, current: now }) => {
            assert_eq!(expected, 3);
            assert_eq!(now.layout.epoch, 4);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The CLI refuses a stale expectation and says what to do.
    let add_node_expecting = |epoch: &'static str| {
        Command::new(binary("memring-control")?)
            .args([
                "--etcd",
                &c.etcd.url,
                "layout",
                "add-node",
                "shard-9",
                "127.0.0.1:1",
                "--expect-epoch",
                epoch,
            ])
            .output()
            .map_err(anyhow::Error::from)
    };
    let out = add_node_expecting("3")?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict") && err.contains("epoch 4"), "{err}");
    let out = add_node_expecting("4")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(store.load().await?.layout.epoch, 5);
    Ok(())
}

#[tokio::test]
async fn routers_keep_serving_while_etcd_is_down_and_resume_watching() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 2, 10).await?;
    // The shard nodes too must have the ring before the store goes away (the routers do:
    // `start` waits for them); a node started before the layout was written has its watch to
    // catch up on, and without etcd it would keep an empty ring.
    c.wait_shards_epoch(3).await?;
    c.etcd.proc.stop();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(vec![c.router(0), c.router(1)], stop.clone(), Default::default());
    tokio::time::sleep(Duration::from_secs(10)).await;
    for r in &c.routers {
        let ready = client().get(format!("{}/ready", r.url())).send().await?.status().as_u16();
        assert_eq!(ready, 200, "/ready stays up on the last ring");
        let metrics = client().get(format!("{}/metrics", r.url())).send().await?.text().await?;
        assert!(metrics.contains("memring_ring_stale 1"), "the router says its ring is stale");
    }
    stop.store(true, Ordering::Release);
    let (requests, failures) = load.await??;
    assert!(requests > 100, "{requests}");
    assert!(
        failures.is_empty(),
        "{} of {requests} failed while etcd was down: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    c.etcd.proc.start_again()?;
    c.etcd.proc.wait_ready(Duration::from_secs(30)).await?;
    let fourth = c.start_shard("shard-4").await?;
    add_to_layout(&c.etcd.store().await?, &fourth).await?;
    c.shards.push(fourth);
    for r in 0..2 {
        let took = c.wait_router_epoch(r, 4, Duration::from_secs(15)).await?;
        println!("router {r} caught up {took:?} after the change");
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_node_leaves_the_node_list_but_not_the_ring() -> anyhow::Result<()> {
    let ttl = 3;
    let mut c = EtcdCluster::start(3, 1, ttl).await?;
    let store = c.etcd.store().await?;
    assert_eq!(live_node_ids(&store).await?, ["shard-1", "shard-2", "shard-3"]);
    let ring = Ring::new(store.load().await?.layout);
    let tenant = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|t| {
            TenantId::parse(t)
                .ok()
                .and_then(|id| {
                    ring.owner(&PartitionKey::new(&id, &Scope::Shared))
                        .map(|o| o.id.as_str() == "shard-2")
                })
                .unwrap_or(false)
        })
        .expect("some tenant lives on shard-2");

    c.shards[1].kill();
    let killed = Instant::now();
    loop {
        let live = live_node_ids(&store).await?;
        if !live.contains(&"shard-2".to_owned()) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(ttl + 1),
            "still live after {:?}: {live:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("shard-2 left the node list {:?} after SIGKILL (lease TTL {ttl} s)", killed.elapsed());
    assert_eq!(store.load().await?.layout.nodes.len(), 3, "liveness is not membership");

    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/tenants/{tenant}/memories", c.router(0)))
        .header("content-type", "application/json")
        .body(memory("y").to_string())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    // Other partitions keep working.
    let counter = AtomicUsize::new(0);
    for i in 0..20 {
        let (status, _) =
            post(&format!("{}/v1/tenants/other{i}/memories", c.router(0)), memory("z")).await?;
        if status == 201 {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            assert_eq!(status, 503, "only the dead node's partitions fail");
        }
    }
    assert!(counter.load(Ordering::Relaxed) > 5);
    Ok(())
}

/// Routers learn of API-key changes through an etcd watch on the key records: a write and a
/// removal each reach a watcher at once; another collection's writes do not.
#[tokio::test]
async fn a_record_watch_on_etcd_reports_key_changes() -> anyhow::Result<()> {
    use futures::StreamExt;
    use memring_common::store::Records;
    let dir = tempfile::tempdir()?;
    let etcd = memring_tests::etcd::Etcd::start(dir.path()).await?;
    let store = etcd.store().await?;
    let mut changes = store.watch_records(Records::Keys).await?;
    store.put_record(Records::Keys, "k1", b"one").await?;
    let seen = tokio::time::timeout(Duration::from_secs(5), changes.next()).await?;
    assert!(matches!(seen, Some(Ok(()))), "{seen:?}");
    store.put_record(Records::Limits, "t", b"{}").await?;
    store.delete_record(Records::Keys, "k1").await?;
    let seen = tokio::time::timeout(Duration::from_secs(5), changes.next()).await?;
    assert!(matches!(seen, Some(Ok(()))), "{seen:?}");
    assert!(tokio::time::timeout(Duration::from_millis(500), changes.next()).await.is_err());
    Ok(())
}
