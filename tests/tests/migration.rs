//! Online migration of a tenant under load, with real etcd, shard nodes, router and control plane.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memring_common::store::RingStore;
use memring_common::{PartitionKey, Ring, Scope, TenantId};
use memring_tests::etcd::{EtcdCluster, add_to_layout};
use memring_tests::{binary, client, send_allowing_5xx, vector};
use serde_json::json;

const TENANT: &str = "big";

#[tokio::test]
async fn a_tenant_moves_under_write_load_without_losing_a_write() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 10).await?;
    let control = c.start_control().await?;
    let router = c.router(0);
    let http = client();

    // 3,000 memories to move.
    for chunk in 0..6 {
        let items: Vec<_> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"id": format!("pre{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.3)})
            })
            .collect();
        let resp = http
            .post(format!("{router}/v1/tenants/{TENANT}/memories:batch"))
            .json(&json!({"items": items}))
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200);
    }
    let store = c.etcd.store().await?;
    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse(TENANT)?, &Scope::Shared);
    let source = ring.owner(&partition).expect("owner").clone();
    let target =
        ring.layout().nodes.iter().find(|n| n.id != source.id).expect("another node").clone();

    // A steady write + search load, each write with a unique id, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, router, http) = (stop.clone(), router.clone(), http.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            let started = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60) {
                let id = format!("live{i}");
                let body = json!({"id": id, "scope": "shared", "content": id, "embedding": vector(8, i, 0.1)});
                let t = Instant::now();
                let (status, resp) = send_allowing_5xx(
                    &http,
                    reqwest::Method::POST,
                    &format!("{router}/v1/tenants/{TENANT}/memories"),
                    Some(body.to_string().into_bytes()),
                )
                .await?;
                slowest = slowest.max(t.elapsed());
                if status == 201 {
                    acked.push(id);
                } else {
                    failures.push(format!("write {status} {resp}"));
                }
                if i % 5 == 0 {
                    let q = json!({"scopes": ["shared"], "embedding": vector(8, i, 0.0), "k": 5});
                    let (status, resp) = send_allowing_5xx(
                        &http,
                        reqwest::Method::POST,
                        &format!("{router}/v1/tenants/{TENANT}/memories/search"),
                        Some(q.to_string().into_bytes()),
                    )
                    .await?;
                    if status != 200 {
                        failures.push(format!("search {status} {resp}"));
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            Ok::<_, anyhow::Error>((acked, failures, slowest))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = tokio::process::Command::new(binary("shardctl")?)
        .args([
            "--control",
            &control.url(),
            "--json",
            "migrate",
            "--tenant",
            TENANT,
            "--scope",
            "shared",
            "--to",
            target.id.as_str(),
        ])
        .output()
        .await?;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("migration report: {reports}");
    assert_eq!(reports[0]["from"], source.id.as_str());
    assert_eq!(reports[0]["to"], target.id.as_str());

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let (acked, failures, slowest) = load.await??;
    println!("{} writes acknowledged during the test; slowest write {slowest:?}", acked.len());
    assert!(acked.len() > 100, "the load ran");
    assert!(failures.is_empty(), "clients saw errors: {:?}", &failures[..failures.len().min(5)]);

    // Every acknowledged write is readable, exactly once, from the new owner only.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{router}/v1/tenants/{TENANT}/memories?scope=shared&limit=1000");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let page: serde_json::Value = http.get(url).send().await?.json().await?;
        listed.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a memory listed twice");
    let expected: BTreeSet<String> =
        (0..3000).map(|n| format!("pre{n}")).chain(acked.iter().cloned()).collect();
    let got: BTreeSet<String> = listed.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "acknowledged writes missing: {missing:?}");
    assert_eq!(got.len(), expected.len());

    let name = partition.to_string();
    let src = c.shards.iter().find(|s| s.addr == source.addr).expect("source");
    let dst = c.shards.iter().find(|s| s.addr == target.addr).expect("target");
    assert!(!c.partitions_on(src).await?.contains(&name), "the source still holds the partition");
    assert!(c.partitions_on(dst).await?.contains(&name));
    let verify = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "verify"])
        .output()
        .await?;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // The placement override keeps the tenant on its node when the ring changes.
    let fourth = c.start_shard("shard-4").await?;
    add_to_layout(&store, &fourth).await?;
    c.shards.push(fourth);
    let ring = Ring::new(store.load().await?.layout);
    assert_eq!(ring.owner(&partition).expect("owner").id, target.id);
    c.wait_router_epoch(0, ring.epoch(), Duration::from_secs(5)).await?;
    let (status, _) = send_allowing_5xx(
        &http,
        reqwest::Method::GET,
        &format!("{router}/v1/tenants/{TENANT}/memories/pre7?scope=shared"),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}
