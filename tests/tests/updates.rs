//! Updates (API.md part 2, "Updates") end to end: JSON Merge Patch through the router on three
//! shard nodes with the built-in model, `ETag` on every single-memory answer, `If-Match` /
//! `If-None-Match` / `Idempotency-Key` on writes, patches and deletes; a read-modify-write
//! counter that loses no update while its partition's primary is killed (R = 3 on etcd); and
//! patches racing a migration's fence, applied once or refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memring_common::store::RingStore;
use memring_common::{PartitionKey, Ring, Scope, TenantId};
use memring_tests::etcd::EtcdCluster;
use memring_tests::load::{replicated_cluster, wait_for};
use memring_tests::{Cluster, binary, client, vector};
use serde_json::{Value, json};

const MODEL: &str = "all-MiniLM-L6-v2";

/// One request with optional headers; status, body and `ETag`. 5xx answers and transport
/// failures are returned as status 0 / 5xx for the caller to judge.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value, Option<String>) {
    let mut req = http.request(method, url).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let Ok(resp) = req.send().await else { return (0, Value::Null, None) };
    let status = resp.status().as_u16();
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.bytes().await.unwrap_or_default();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, value, etag)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .unwrap_or_default()
}

/// Merge patch semantics, re-embedding, ETags and every condition, on a router with the
/// built-in model, then through a router without an embedder.
#[tokio::test]
async fn patches_merge_reembed_and_honour_conditions() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(3, &["--embedder", "builtin"]).await?;
    let http = client();
    let base = format!("{}/v1/tenants/acme/memories", c.url());
    let one = format!("{base}/note?scope=shared");
    use reqwest::Method as M;

    // A text-only write: the router embeds it; GET says so and carries the ETag.
    let write = json!({"id": "note", "scope": "shared", "content": "The user likes green tea.",
                       "metadata": {"kind": "preference", "user": {"name": "Ana", "city": "Porto"}}});
    let (status, body, etag) = call(&http, M::POST, &base, &[], Some(&write)).await;
    assert_eq!((status, etag.as_deref()), (201, Some("\"1\"")), "{body}");
    let (status, got, etag) = call(&http, M::GET, &one, &[], None).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")), "{got}");
    assert_eq!(got["embedded_by"], MODEL);
    let first_vector = floats(&got["embedding"]);
    assert_eq!(first_vector.len(), 384);

    // Metadata merges member by member; null removes; the vector stays.
    let patch = json!({"metadata": {"user": {"city": null, "lang": "pt"}, "n": 1}});
    let (status, after, etag) = call(&http, M::PATCH, &one, &[], Some(&patch)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")), "{after}");
    assert_eq!(
        after["metadata"],
        json!({"kind": "preference", "user": {"name": "Ana", "lang": "pt"}, "n": 1})
    );
    assert_eq!(after["version"], 2);
    assert_eq!(floats(&after["embedding"]), first_vector);
    assert_eq!(after["content"], "The user likes green tea.");
    // An empty patch changes nothing: same version.
    let (status, same, etag) = call(&http, M::PATCH, &one, &[], Some(&json!({}))).await;
    assert_eq!((status, etag.as_deref(), &same["version"]), (200, Some("\"2\""), &json!(2)));

    // New content is embedded again (the router made the vector), and search finds it by it.
    let text = "The user switched to black coffee in the mornings.";
    let (status, changed, _) =
        call(&http, M::PATCH, &one, &[], Some(&json!({"content": text}))).await;
    assert_eq!(status, 200, "{changed}");
    let (_, made, _) = call(
        &http,
        M::POST,
        &format!("{}/v1/embeddings", c.url()),
        &[],
        Some(&json!({"input": text})),
    )
    .await;
    let want = floats(&made["data"][0]["embedding"]);
    let now = floats(&changed["embedding"]);
    assert_eq!(now.len(), want.len());
    assert!(now.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "not the new text's vector");
    assert_eq!(changed["embedded_by"], MODEL);
    let search = json!({"scopes": ["shared"], "query": "coffee", "mode": "keyword"});
    let (_, found, _) = call(&http, M::POST, &format!("{base}/search"), &[], Some(&search)).await;
    assert_eq!(found["results"][0]["id"], "note", "{found}");
    let search = json!({"scopes": ["shared"], "query": "tea", "mode": "keyword"});
    let (_, found, _) = call(&http, M::POST, &format!("{base}/search"), &[], Some(&search)).await;
    assert_eq!(found["results"], json!([]), "the old text is still indexed: {found}");

    // TTL: set from now, then removed.
    let (_, timed, _) = call(&http, M::PATCH, &one, &[], Some(&json!({"ttl_seconds": 3600}))).await;
    assert!(timed["expires_at"].is_string(), "{timed}");
    let (_, forever, _) =
        call(&http, M::PATCH, &one, &[], Some(&json!({"ttl_seconds": null}))).await;
    assert!(forever.get("expires_at").is_none(), "{forever}");
    let version = forever["version"].as_u64().unwrap_or(0);
    assert_eq!(version, 5);

    // If-Match: a stale version is 412 naming the current one; the current one applies.
    let (status, err, _) =
        call(&http, M::PATCH, &one, &[("if-match", "\"2\"")], Some(&json!({"metadata": {"n": 2}})))
            .await;
    assert_eq!(status, 412, "{err}");
    assert_eq!(err["error"]["code"], "precondition_failed");
    assert!(err["error"]["message"].as_str().unwrap_or("").contains("version 5"), "{err}");
    let (status, ok, etag) =
        call(&http, M::PATCH, &one, &[("if-match", "\"5\"")], Some(&json!({"metadata": {"n": 2}})))
            .await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"6\"")), "{ok}");
    // An idempotency key: the same conditional change sent again is answered as applied, not
    // 412, and not applied twice; another key with the stale version is refused.
    let keyed = [("if-match", "\"6\""), ("idempotency-key", "inc-7")];
    let inc = json!({"metadata": {"n": 3}});
    let (status, first, _) = call(&http, M::PATCH, &one, &keyed, Some(&inc)).await;
    assert_eq!((status, &first["version"]), (200, &json!(7)), "{first}");
    let (status, again, etag) = call(&http, M::PATCH, &one, &keyed, Some(&inc)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"7\"")), "{again}");
    let other = [("if-match", "\"6\""), ("idempotency-key", "inc-8")];
    let (status, _, _) = call(&http, M::PATCH, &one, &other, Some(&inc)).await;
    assert_eq!(status, 412);
    // The key survives a restart of every node (it is stored with the memory).
    let mut c = c;
    for shard in &mut c.shards {
        shard.stop();
        shard.start_again()?;
        shard.wait_ready(Duration::from_secs(30)).await?;
    }
    let (status, again, _) = call(&http, M::PATCH, &one, &keyed, Some(&inc)).await;
    assert_eq!((status, &again["version"]), (200, &json!(7)), "{again}");

    // Bad conditions and bad patches are 400s naming what is wrong; a missing memory is 404.
    for (headers, patch, code) in [
        (vec![("if-match", "7")], json!({}), "invalid_request"),
        (vec![("if-match", "W/\"7\"")], json!({}), "invalid_request"),
        (vec![("if-none-match", "*")], json!({}), "invalid_request"),
        (vec![("idempotency-key", "no spaces please")], json!({}), "invalid_request"),
        (vec![], json!({"scope": "agent:x"}), "invalid_request"),
        (vec![], json!({"contents": "typo"}), "invalid_json"),
        (vec![], json!({"content": null}), "invalid_request"),
        (vec![], json!({"metadata": "x"}), "invalid_request"),
        (vec![], json!({"embedding": [0.1, 0.2]}), "dimension_mismatch"),
        (vec![], json!({"ttl_seconds": 0}), "invalid_request"),
    ] {
        let (status, err, _) = call(&http, M::PATCH, &one, &headers, Some(&patch)).await;
        assert_eq!((status, err["error"]["code"].as_str()), (400, Some(code)), "{patch}: {err}");
    }
    let missing = format!("{base}/nope?scope=shared");
    let (status, _, _) = call(&http, M::PATCH, &missing, &[], Some(&json!({}))).await;
    assert_eq!(status, 404);
    let (status, _, _) =
        call(&http, M::PATCH, &missing, &[("if-match", "*")], Some(&json!({}))).await;
    assert_eq!(status, 404);
    let (_, still, _) = call(&http, M::GET, &one, &[], None).await;
    assert_eq!(still["version"], 7, "a refused patch changed the memory: {still}");

    // A client's vector does not follow new content by itself.
    let mine =
        json!({"id": "mine", "scope": "shared", "content": "v1", "embedding": vector(384, 3, 0.2)});
    assert_eq!(call(&http, M::POST, &base, &[], Some(&mine)).await.0, 201);
    let url = format!("{base}/mine?scope=shared");
    let (status, err, _) = call(&http, M::PATCH, &url, &[], Some(&json!({"content": "v2"}))).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap_or("").contains("\"embedding\""), "{err}");
    let both = json!({"content": "v2", "embedding": vector(384, 4, 0.2)});
    let (status, ok, _) = call(&http, M::PATCH, &url, &[], Some(&both)).await;
    assert_eq!((status, ok.get("embedded_by")), (200, None), "{ok}");
    assert_eq!(floats(&ok["embedding"]), vector(384, 4, 0.2));
    // A stale If-Match is decided first: 412, not the 400 the patch itself would get.
    let stale = [("if-match", "\"1\"")];
    let (status, _, _) = call(&http, M::PATCH, &url, &stale, Some(&json!({"content": "v3"}))).await;
    assert_eq!(status, 412);

    // Writes by id: If-None-Match: * creates only; If-Match replaces only that version.
    let create =
        json!({"id": "once", "scope": "shared", "content": "a", "embedding": vector(384, 1, 0.1)});
    let star = [("if-none-match", "*")];
    let (status, _, etag) = call(&http, M::POST, &base, &star, Some(&create)).await;
    assert_eq!((status, etag.as_deref()), (201, Some("\"1\"")));
    assert_eq!(call(&http, M::POST, &base, &star, Some(&create)).await.0, 200, "same body again");
    let mut other = create.clone();
    other["content"] = json!("b");
    let (status, err, _) = call(&http, M::POST, &base, &star, Some(&other)).await;
    assert_eq!((status, err["error"]["code"].as_str()), (412, Some("precondition_failed")));
    let (status, _, _) = call(&http, M::POST, &base, &[("if-match", "\"2\"")], Some(&other)).await;
    assert_eq!(status, 412);
    let (status, _, etag) =
        call(&http, M::POST, &base, &[("if-match", "\"1\"")], Some(&other)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")));
    let no_id = json!({"scope": "shared", "content": "x", "embedding": vector(384, 1, 0.1)});
    let (status, _, _) = call(&http, M::POST, &base, &[("if-match", "\"1\"")], Some(&no_id)).await;
    assert_eq!(status, 400);
    let batch = json!({"items": [create]});
    let (status, _, _) =
        call(&http, M::POST, &format!("{base}:batch"), &[("if-match", "\"1\"")], Some(&batch))
            .await;
    assert_eq!(status, 400, "a batch takes no conditions");

    // DELETE with If-Match.
    let once = format!("{base}/once?scope=shared");
    let (status, _, _) = call(&http, M::DELETE, &once, &[("if-match", "\"1\"")], None).await;
    assert_eq!(status, 412);
    assert_eq!(call(&http, M::GET, &once, &[], None).await.0, 200, "a refused delete deleted");
    let (status, _, _) = call(&http, M::DELETE, &once, &[("if-match", "\"2\"")], None).await;
    assert_eq!(status, 204);
    assert_eq!(call(&http, M::GET, &once, &[], None).await.0, 404);

    // A router without an embedder cannot re-embed the router's vector: 400 no_embedder, and a
    // patch that leaves the content alone still works there.
    let plain = c.start_router("plain", &[]).await?;
    let there = format!("{}/v1/tenants/acme/memories/note?scope=shared", plain.url());
    let (status, err, _) =
        call(&http, M::PATCH, &there, &[], Some(&json!({"content": "tea again"}))).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("no_embedder")), "{err}");
    let (status, ok, _) =
        call(&http, M::PATCH, &there, &[], Some(&json!({"metadata": {"seen": true}}))).await;
    assert_eq!((status, &ok["embedded_by"]), (200, &json!(MODEL)), "{ok}");
    Ok(())
}

/// What one client of [`counter_clients`] did.
#[derive(Debug, Default)]
struct Tally {
    applied: u64,
    conflicts: u64,
    retried_unknown: u64,
    /// Attempts that had an unknown outcome, with the statuses they got in order (what a
    /// failure of the test is read from).
    unsure: Vec<String>,
}

/// One read-modify-write client: `goal` increments of `metadata.counter` with `If-Match`, each
/// with its own idempotency key. A 412 reads again; a 503 or a lost answer sends the same
/// change again (same version, same key) until it has a definite answer.
async fn increment(
    memory: String,
    name: String,
    goal: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Tally> {
    let http = client();
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut attempt = 0u64;
    'increments: while tally.applied < goal && !stop.load(Ordering::Relaxed) {
        anyhow::ensure!(Instant::now() < deadline, "{name}: not done in time: {tally:?}");
        let (status, now, etag) = call(&http, reqwest::Method::GET, &memory, &[], None).await;
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let (Some(counter), Some(etag)) = (now["metadata"]["counter"].as_u64(), etag) else {
            anyhow::bail!("{name}: no counter or ETag in {now}");
        };
        attempt += 1;
        let key = format!("{name}-{attempt}");
        let patch = json!({"metadata": {"counter": counter + 1}});
        let headers = [("if-match", etag.as_str()), ("idempotency-key", key.as_str())];
        let mut statuses: Vec<String> = Vec::new();
        loop {
            let (status, body, _) =
                call(&http, reqwest::Method::PATCH, &memory, &headers, Some(&patch)).await;
            if !statuses.is_empty() || !matches!(status, 200 | 412) {
                statuses.push(format!("{status} {}", body["version"]));
                if matches!(status, 200 | 412) {
                    tally.unsure.push(format!(
                        "{key} (If-Match {etag}, counter {}): {}",
                        counter + 1,
                        statuses.join(", ")
                    ));
                }
            }
            match status {
                200 => {
                    tally.applied += 1;
                    continue 'increments;
                }
                412 => {
                    tally.conflicts += 1;
                    continue 'increments;
                }
                0 | 503 => {
                    // Applied or not: unknown. The same change again decides.
                    tally.retried_unknown += 1;
                    anyhow::ensure!(Instant::now() < deadline, "{name}: stuck on {body}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => anyhow::bail!("{name}: PATCH answered {other}: {body}"),
            }
        }
    }
    Ok(tally)
}

/// Starts `clients` incrementers of `memory` (its URL on a router), each aiming at `goal`.
fn counter_clients(
    memory: &str,
    clients: usize,
    goal: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>> {
    (0..clients)
        .map(|i| {
            tokio::spawn(increment(memory.to_owned(), format!("client{i}"), goal, stop.clone()))
        })
        .collect()
}

/// The acceptance test of the lost update: 8 clients × 50 read-modify-write increments of one
/// memory's counter with `If-Match`, on R = 3 / W = 2, while the memory's primary is SIGKILLed.
/// The counter ends at exactly the number of successful PATCHes (400).
#[tokio::test]
async fn no_update_is_lost_across_a_failover() -> anyhow::Result<()> {
    let (mut c, store, _control) = replicated_cluster(3, 3).await?;
    let router = c.router(0);
    let http = client();
    let base = format!("{router}/v1/tenants/count/memories");
    let seed = json!({"id": "c", "scope": "shared", "content": "a counter",
                      "embedding": vector(8, 1, 0.2), "metadata": {"counter": 0}});
    let (status, body, _) = call(&http, reqwest::Method::POST, &base, &[], Some(&seed)).await;
    assert_eq!(status, 201, "{body}");
    let memory = format!("{base}/c?scope=shared");
    let partition = PartitionKey::new(&TenantId::parse("count")?, &Scope::Shared);
    let layout = store.load().await?.layout;
    let owner = Ring::new(layout).owner(&partition).expect("owner").clone();
    let victim = c.shards.iter().position(|s| s.addr == owner.addr).expect("owner's process");

    let stop = Arc::new(AtomicBool::new(false));
    let clients = counter_clients(&memory, 8, 50, &stop);
    // Kill the primary once a quarter of the increments are in.
    wait_for("100 increments", Duration::from_secs(120), || async {
        let (_, now, _) = call(&client(), reqwest::Method::GET, &memory, &[], None).await;
        Ok(now["metadata"]["counter"].as_u64().filter(|n| *n >= 100).map(|_| ()))
    })
    .await?;
    c.shards[victim].kill();
    let killed_at = Instant::now();

    let mut total = Tally::default();
    for client in clients {
        let tally = match client.await? {
            Ok(tally) => tally,
            Err(e) => anyhow::bail!("{e:#}\n{}", c.logs()),
        };
        assert_eq!(tally.applied, 50, "{tally:?}");
        total.applied += tally.applied;
        total.conflicts += tally.conflicts;
        total.retried_unknown += tally.retried_unknown;
        total.unsure.extend(tally.unsure);
    }
    println!(
        "8 clients: {} increments applied, {} conflicts (412) read again, {} sent again after \
         an unknown outcome; the last {:?} after the kill",
        total.applied,
        total.conflicts,
        total.retried_unknown,
        killed_at.elapsed()
    );
    // Reads may come from a follower up to `replica_staleness_ms` behind: the counter must reach
    // 400 within a few seconds and never pass it.
    let (now, etag) = wait_for("the counter at 400", Duration::from_secs(15), || async {
        let (status, now, etag) = call(&client(), reqwest::Method::GET, &memory, &[], None).await;
        anyhow::ensure!(status == 200, "{now}");
        let counter = now["metadata"]["counter"].as_u64().unwrap_or_default();
        anyhow::ensure!(
            counter <= 400,
            "doubled updates: {now}\nattempts with an unknown outcome:\n{}\n{}",
            total.unsure.join("\n"),
            c.logs()
        );
        Ok((counter == 400).then_some((now, etag)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    assert_eq!(etag, Some(format!("\"{}\"", now["version"])));
    assert!(total.conflicts > 0, "8 clients on one memory never conflicted: not a real test");
    Ok(())
}

async fn shardctl(control: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new(binary("shardctl")?)
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .await?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Patches racing a migration's fence: 4 clients increment one memory of a tenant (with 2,000
/// others to copy) while it moves to the other node and back. Every PATCH is applied once or
/// refused: the counter equals the successful PATCHes.
#[tokio::test]
async fn patches_racing_a_migration_fence_apply_once() -> anyhow::Result<()> {
    let c = EtcdCluster::start(2, 1, 10).await?;
    let control = c.start_control().await?;
    let router = c.router(0);
    let http = client();
    for chunk in 0..4 {
        let items: Vec<Value> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"id": format!("m{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.3)})
            })
            .collect();
        memring_tests::write_batch(&http, &router, "moving", items).await?;
    }
    let base = format!("{router}/v1/tenants/moving/memories");
    let seed = json!({"id": "counter", "scope": "shared", "content": "a counter",
                      "embedding": vector(8, 2, 0.2), "metadata": {"counter": 0}});
    assert_eq!(call(&http, reqwest::Method::POST, &base, &[], Some(&seed)).await.0, 201);
    let memory = format!("{base}/counter?scope=shared");
    let nodes = [c.shard_id(0).to_string(), c.shard_id(1).to_string()];
    let ring = Ring::new(c.etcd.store().await?.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse("moving")?, &Scope::Shared);
    let first = ring.owner(&partition).expect("owner").id.to_string();
    let other = nodes.iter().find(|n| **n != first).expect("two nodes").clone();

    let stop = Arc::new(AtomicBool::new(false));
    let clients = counter_clients(&memory, 4, u64::MAX, &stop);
    let mut moves = 0;
    for to in [&other, &first, &other] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (ok, out) = shardctl(
            &control.url(),
            &["migrate", "--tenant", "moving", "--scope", "shared", "--to", to],
        )
        .await?;
        assert!(ok, "migrate to {to}: {out}\n{}", c.logs());
        moves += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut applied = 0;
    for client in clients {
        let tally = match client.await? {
            Ok(tally) => tally,
            Err(e) => anyhow::bail!("{e:#}\n{}", c.logs()),
        };
        applied += tally.applied;
    }
    let (status, now, _) = call(&http, reqwest::Method::GET, &memory, &[], None).await;
    assert_eq!(status, 200);
    println!("{moves} moves; {applied} patches applied; counter {}", now["metadata"]["counter"]);
    assert!(applied > 20, "the clients hardly ran: {applied}");
    assert_eq!(now["metadata"]["counter"], applied, "a patch applied twice or lost\n{}", c.logs());
    let (ok, out) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}
