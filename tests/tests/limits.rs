//! Tenant rate limits and quotas against real binaries (embedded ring store, limits set with
//! `shardctl limits`).

use std::time::{Duration, Instant};

use memring_tests::{Cluster, client, shardctl, vector};
use serde_json::{Value, json};

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Searches one at a time, `n` of them or for `span` if given: their latencies (sorted) and
/// any non-200 statuses.
async fn searches_for(
    url: &str,
    n: usize,
    span: Option<Duration>,
) -> anyhow::Result<(Vec<Duration>, Vec<u16>)> {
    let http = client();
    let (mut took, mut bad) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0.. {
        if span.map_or(i >= n, |s| started.elapsed() >= s) {
            break;
        }
        let q = json!({"scopes": ["shared"], "embedding": vector(8, i % 8, 0.2), "k": 5});
        let t = Instant::now();
        let status = http.post(url).json(&q).send().await?.status().as_u16();
        took.push(t.elapsed());
        if status != 200 {
            bad.push(status);
        }
    }
    took.sort();
    Ok((took, bad))
}

/// A tenant over its request rate gets 429s with `Retry-After` and a message naming the limit,
/// while another tenant gets none (its search latency, unloaded and beside the noisy one, is
/// printed). Over its written-bytes rate: 429 naming `write_bytes_per_sec`. At its quota of
/// memories: 403 `quota_exceeded`, and writes pass again once it deletes.
#[tokio::test]
async fn a_noisy_tenant_is_slowed_and_the_others_are_not() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    let control = c.start_control().await?;
    let http = client();
    for tenant in ["quiet", "noisy"] {
        let items: Vec<Value> = (0..50)
            .map(|n| json!({"id": format!("m{n}"), "scope": "shared", "content": "x", "embedding": vector(8, n % 8, 0.2)}))
            .collect();
        memring_tests::write_batch(&http, &c.url(), tenant, items).await?;
    }
    shardctl(&control, &["limits", "set", "--tenant", "noisy", "--requests-per-sec", "50"]).await?;
    let quiet_url = format!("{}/v1/tenants/quiet/memories/search", c.url());
    let noisy_url = format!("{}/v1/tenants/noisy/memories/search", c.url());
    // Routers reload limits every second.
    let started = Instant::now();
    loop {
        let (_, bad) = searches_for(&noisy_url, 60, None).await?;
        if bad.contains(&429) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the limit never applied");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (unloaded, bad) = searches_for(&quiet_url, 0, Some(Duration::from_secs(2))).await?;
    assert!(bad.is_empty(), "{bad:?}");

    // The noisy tenant sends 12x its rate for as long as the quiet one measures.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop) = (noisy_url.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let (mut ok, mut limited, mut checked) = (0usize, 0usize, None);
                // 100 requests/s per client, 600/s in all: twelve times the tenant's limit.
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let q = json!({"scopes": ["shared"], "embedding": vector(8, 1, 0.2)});
                    let Ok(resp) = http.post(&url).json(&q).send().await else { continue };
                    match resp.status().as_u16() {
                        200 => ok += 1,
                        429 => {
                            limited += 1;
                            if checked.is_none() {
                                let retry = resp
                                    .headers()
                                    .get("retry-after")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                let body: Value = resp.json().await.unwrap_or_default();
                                checked = Some((retry, body));
                            }
                        }
                        other => panic!("noisy tenant got {other}"),
                    }
                }
                (ok, limited, checked)
            })
        })
        .collect();
    let (loaded, bad) = searches_for(&quiet_url, 0, Some(Duration::from_secs(2))).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(bad.is_empty(), "the quiet tenant was refused: {bad:?}");
    let (mut ok, mut limited, mut sample) = (0, 0, None);
    for h in hammers {
        let (o, l, c) = h.await?;
        ok += o;
        limited += l;
        sample = sample.or(c);
    }
    let (retry, body) = sample.expect("a 429 was seen");
    assert!(retry.is_some_and(|r| r.parse::<u32>().is_ok_and(|s| s >= 1)));
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("requests_per_sec"), "{body}");
    println!(
        "noisy tenant (50 req/s limit, sending 600/s): {ok} served, {limited} refused with 429; quiet tenant search \
         p50/p99 unloaded {:?}/{:?}, beside the noisy one {:?}/{:?} ({:.2}x at p50)",
        pct(&unloaded, 0.5),
        pct(&unloaded, 0.99),
        pct(&loaded, 0.5),
        pct(&loaded, 0.99),
        pct(&loaded, 0.5).as_secs_f64() / pct(&unloaded, 0.5).as_secs_f64()
    );
    assert!(limited > 0 && ok > 0);

    // Written bytes: ~1 KiB bodies against 2,000 bytes/s.
    shardctl(&control, &["limits", "set", "--tenant", "writer", "--write-bytes-per-sec", "2000"])
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut statuses = Vec::new();
    let mut message = String::new();
    for n in 0..6 {
        let m = json!({"id": format!("w{n}"), "scope": "shared", "content": "y".repeat(900), "embedding": vector(8, 1, 0.2)});
        let resp =
            http.post(format!("{}/v1/tenants/writer/memories", c.url())).json(&m).send().await?;
        statuses.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            message = resp.text().await?;
        }
    }
    assert_eq!(statuses[0], 201, "{statuses:?}");
    assert!(
        statuses.contains(&429) && message.contains("write_bytes_per_sec"),
        "{statuses:?} {message}"
    );

    // A quota of 5 memories.
    shardctl(&control, &["limits", "set", "--tenant", "capped", "--max-memories", "5"]).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 0..5 {
        let m = json!({"id": format!("c{n}"), "scope": "shared", "content": "z", "embedding": vector(8, 1, 0.2)});
        let resp =
            http.post(format!("{}/v1/tenants/capped/memories", c.url())).json(&m).send().await?;
        assert_eq!(resp.status().as_u16(), 201);
    }
    let extra =
        json!({"id": "c5", "scope": "shared", "content": "z", "embedding": vector(8, 1, 0.2)});
    let started = Instant::now();
    let body: Value = loop {
        let resp = http
            .post(format!("{}/v1/tenants/capped/memories", c.url()))
            .json(&extra)
            .send()
            .await?;
        if resp.status().as_u16() == 403 {
            break resp.json().await?;
        }
        // Counts refresh every 2 s; before that the write may pass (then remove it again).
        if resp.status().is_success() {
            http.delete(format!("{}/v1/tenants/capped/memories/c5?scope=shared", c.url()))
                .send()
                .await?;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "the quota never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    // A byte quota: ~150-byte memories against 400 bytes.
    shardctl(&control, &["limits", "set", "--tenant", "heavy", "--max-bytes", "400"]).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut n = 0;
    let refused: Value = loop {
        let m = json!({"id": format!("h{n}"), "scope": "shared", "content": "q".repeat(60), "embedding": vector(8, 1, 0.2)});
        n += 1;
        let resp =
            http.post(format!("{}/v1/tenants/heavy/memories", c.url())).json(&m).send().await?;
        if resp.status().as_u16() == 403 {
            break resp.json().await?;
        }
        assert_eq!(resp.status().as_u16(), 201);
        assert!(started.elapsed() < Duration::from_secs(8), "the byte quota never applied");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(refused["error"]["code"], "quota_exceeded", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or("").contains("max_bytes"), "{refused}");
    assert!(n >= 3, "refused after {n} writes of ~150 bytes against 400");
    let resp = http
        .delete(format!("{}/v1/tenants/capped/memories/c0?scope=shared", c.url()))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 204, "deletes pass at the quota");
    let started = Instant::now();
    loop {
        let resp = http
            .post(format!("{}/v1/tenants/capped/memories", c.url()))
            .json(&extra)
            .send()
            .await?;
        if resp.status().as_u16() == 201 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "writes never passed again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
