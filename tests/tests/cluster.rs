//! The cluster around the API: the control plane's view, `shardctl`, ring changes reaching the
//! router, request ids crossing processes.

use std::process::Command;
use std::time::Duration;

use memring_tests::{Cluster, binary, vector};
use serde_json::{Value, json};

#[tokio::test]
async fn control_plane_and_shardctl_show_the_cluster() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    for i in 0..30 {
        let m = json!({"scope": "shared", "content": "x", "embedding": vector(4, 0, 0.1)});
        assert_eq!(c.post(&format!("/v1/tenants/t{i}/memories"), &m).await?.0, 201);
    }
    let control = c.start_control().await?;

    let view: Value = memring_tests::client()
        .get(format!("{}/v1/cluster", control.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(view["epoch"], 3, "three nodes joined: {view}");
    let nodes = view["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let share: f64 = nodes.iter().filter_map(|n| n["share"].as_f64()).sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to 1: {share}");
    assert!(nodes.iter().all(|n| n["live"] == true && n["in_ring"] == true));
    let memories: u64 = nodes.iter().filter_map(|n| n["episodes"].as_u64()).sum();
    assert_eq!(memories, 30, "{view}");
    let partitions: u64 = nodes.iter().filter_map(|n| n["partitions"].as_u64()).sum();
    assert_eq!(partitions, 30, "one partition per tenant: {view}");

    // The next looks ask the nodes only for what changed (`listings.rs`), and see all of it: a
    // new tenant, more memories in an old one, a tenant deleted.
    for i in 0..4 {
        let m = json!({"scope": "shared", "content": "x", "embedding": vector(4, i, 0.1)});
        assert_eq!(c.post("/v1/tenants/fresh/memories", &m).await?.0, 201);
        assert_eq!(c.post("/v1/tenants/t0/memories", &m).await?.0, 201);
    }
    assert!(c.delete("/v1/tenants/t1").await?.0 < 300, "the tenant is deleted");
    let client = memring_tests::client();
    let mut seen = (0, 0);
    for _ in 0..50 {
        let view: Value =
            client.get(format!("{}/v1/cluster", control.url())).send().await?.json().await?;
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let sum = |field: &str| nodes.iter().filter_map(|n| n[field].as_u64()).sum::<u64>();
        seen = (sum("episodes"), sum("partitions"));
        if seen == (37, 30) {
            break;
        }
        // A tenant's deletion reaches its nodes' feeds once it is done (202: in the background).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (37, 30), "30 + 8 - 1 memories in 30 + 1 - 1 partitions");

    let out =
        Command::new(binary("shardctl")?).args(["--control", &control.url(), "status"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("epoch 3"), "{text}");
    for i in 1..=3 {
        assert!(text.contains(&format!("shard-{i}")), "{text}");
    }
    // Offline: the same view straight from the ring store.
    let out = Command::new(binary("memring-control")?)
        .args(["--ring-dir", &c.ring_dir().display().to_string(), "status", "--json"])
        .output()?;
    assert!(out.status.success());
    let offline: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(offline["epoch"], 3);
    // A control plane that is not there: non-zero exit and a message saying what to do.
    let out = Command::new(binary("shardctl")?)
        .args(["--control", "http://127.0.0.1:9", "status"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control plane"));
    Ok(())
}

#[tokio::test]
async fn a_node_joining_reaches_the_router_and_requests_keep_working() -> anyhow::Result<()> {
    let mut c = Cluster::start(3).await?;
    for i in 0..20 {
        let m = json!({"id": format!("m{i}"), "scope": "shared", "content": "x", "embedding": vector(4, i, 0.1)});
        assert_eq!(c.post(&format!("/v1/tenants/t{i}/memories"), &m).await?.0, 201);
    }
    // A fourth node joins the ring (epoch 4). New tenants route over four nodes; the router
    // follows the layout within a second.
    let fourth = c.start_shard("shard-4", &[]).await?;
    let started = std::time::Instant::now();
    c.wait_ring_size(4).await?;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "router saw the change after {:?}",
        started.elapsed()
    );
    let (_, ring) = c.get("/v1/ring").await?;
    assert_eq!(ring["epoch"], 4);
    // Writes and reads of new data succeed on the new layout, wherever they land.
    for i in 100..140 {
        let m =
            json!({"id": "n", "scope": "shared", "content": "y", "embedding": vector(4, i, 0.1)});
        assert_eq!(c.post(&format!("/v1/tenants/t{i}/memories"), &m).await?.0, 201);
        assert_eq!(c.get(&format!("/v1/tenants/t{i}/memories/n?scope=shared")).await?.0, 200);
    }
    c.shards.push(fourth);
    Ok(())
}

#[tokio::test]
async fn the_request_id_travels_from_router_to_shard() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let m = json!({"scope": "shared", "content": "x", "embedding": vector(4, 0, 0.1)});
    assert_eq!(c.post("/v1/tenants/acme/memories", &m).await?.0, 201);
    // The first search of a partition logs its index build inside the request's span.
    let resp = memring_tests::client()
        .post(format!("{}/v1/tenants/acme/memories/search", c.url()))
        .header("x-request-id", "trace-me-4711")
        .header("content-type", "application/json")
        .body(json!({"scopes": ["shared"], "embedding": vector(4, 0, 0.0)}).to_string())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("trace-me-4711")
    );
    let found = c
        .shards
        .iter()
        .any(|s| std::fs::read_to_string(&s.log).unwrap_or_default().contains("trace-me-4711"));
    assert!(found, "no shard log mentions the request id\n{}", c.logs());
    Ok(())
}

/// A dead shard node costs the router's callers a fast 503, not a connection attempt each: after
/// five transport failures its breaker opens (503 with `Retry-After`, visible in the router's
/// metrics); once the node is back, a probe closes the breaker and requests succeed again.
#[tokio::test]
async fn a_dead_node_trips_its_circuit_breaker_and_a_probe_closes_it() -> anyhow::Result<()> {
    use memring_common::store::RingStore;
    use memring_common::{PartitionKey, Ring, Scope, TenantId};
    let mut c = Cluster::start(2).await?;
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let ring = Ring::new(store.load().await?.layout);
    let tenant = (0..200)
        .map(|i| format!("t{i}"))
        .find(|t| {
            let p = PartitionKey::new(&TenantId::parse(t).expect("tenant"), &Scope::Shared);
            ring.owner(&p).is_some_and(|o| o.id.as_str() == "shard-1")
        })
        .expect("a tenant on shard-1");
    let m = json!({"id": "m1", "scope": "shared", "content": "x", "embedding": vector(4, 0, 0.1)});
    assert_eq!(c.post(&format!("/v1/tenants/{tenant}/memories"), &m).await?.0, 201);
    let url = format!("{}/v1/tenants/{tenant}/memories/m1?scope=shared", c.url());
    let http = memring_tests::client();

    c.shards[0].kill();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let resp = http.get(&url).send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        let body: Value = resp.json().await?;
        answers.push((
            status,
            retry_after,
            body["error"]["message"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert!(answers.iter().all(|(s, r, _)| *s == 503 && *r), "{answers:?}");
    assert!(answers[0].2.contains("could not be reached"), "{answers:?}");
    assert!(answers[5].2.contains("is failing"), "the breaker did not open: {answers:?}");
    let metrics = http.get(format!("{}/metrics", c.url())).send().await?.text().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("memring_router_breaker_state{node=\"shard-1\"} 2")),
        "{metrics}"
    );

    c.shards[0].start_again()?;
    c.shards[0].wait_ready(Duration::from_secs(30)).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = http.get(&url).send().await?.status().as_u16();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status} after the node came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http.get(format!("{}/metrics", c.url())).send().await?.text().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("memring_router_breaker_state{node=\"shard-1\"} 0")),
        "{metrics}"
    );
    Ok(())
}
