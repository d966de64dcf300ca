//! Failover with real etcd, real shard nodes, routers and the control plane: a primary killed
//! under load, its return as a follower, a node gone for good, replica reads with read-your-
//! writes tokens, and an isolated old primary that must not acknowledge writes.

use std::time::Duration;

use memring_common::api::READ_TOKEN_HEADER;
use memring_common::layout::LayoutNode;
use memring_common::store::{RingStore, update_layout};
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};
use memring_tests::etcd::EtcdCluster;
use memring_tests::load::{
    assert_readable, replicated_cluster, set_replication, start_writers, stop_writers, wait_for,
    wait_verified,
};
use memring_tests::proxy::Proxy;
use memring_tests::{binary, client, last_pos_at, vector};
use serde_json::{Value, json};

async fn layout_of(store: &impl RingStore) -> anyhow::Result<ClusterLayout> {
    Ok(store.load().await?.layout)
}

/// The index of the shard process serving `node`.
fn index_of(c: &EtcdCluster, node: &LayoutNode) -> usize {
    c.shards.iter().position(|s| s.addr == node.addr).unwrap_or(usize::MAX)
}

/// R = 3, W = 2, four nodes, 5 s leases. Under a write + read-back load on four tenants, the
/// primary of the busiest partition is SIGKILLed: every acknowledged write is readable after,
/// every failure the clients saw was a 503 or a timeout (no wrong answer, and no read with a
/// token missed its write), and writes to that partition resume once the node's lease expires
/// (the gap is printed). The node restarts, catches up as a follower, is re-admitted and takes
/// its partitions back; verify passes on all copies. Then another node dies for good: with
/// `--replace-after-secs 2` its replica sets take the remaining node in and every partition is
/// back to three equal copies without an operator.
#[tokio::test]
async fn a_killed_primary_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(4, 3).await?;
    let layout = layout_of(&store).await?;
    let ring = Ring::new(layout.clone());
    let busy: PartitionKey = "f0/shared".parse()?;
    let victim = index_of(&c, ring.owner(&busy).expect("owner"));
    let victim_id = c.shard_id(victim);

    let (stop, t0, writers) = start_writers(&c.router(0), (0..4).map(|t| format!("f{t}")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.shards[victim].kill();
    let killed_at = t0.elapsed();
    wait_for("the killed primary marked down", Duration::from_secs(20), || async {
        Ok(layout_of(&store).await?.states.get(&victim_id).is_marked_down().then_some(()))
    })
    .await?;
    let marked_down_at = t0.elapsed();
    // The operator's view: the node is down and the partitions it holds are under-replicated.
    let status = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "status"])
        .output()
        .await?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let row = status.lines().find(|l| l.starts_with(victim_id.as_str())).unwrap_or("");
    assert!(row.split_whitespace().nth(4) == Some("yes"), "DOWN column of {victim_id}: {status}");
    assert!(status.contains("under-replicated") && status.contains("down: "), "{status}");
    println!("{status}");
    short_sets_agree_with_all(&control.url(), &victim_id).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    let acked: Vec<&(String, String, String)> = seen.iter().flat_map(|s| &s.acked).collect();
    // The longest time without an acknowledged write to the busy partition.
    let busy_acks = &seen[0].acked_at;
    let gap = busy_acks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!(
        "failover: {} writes acknowledged, {failed} failed requests (503/timeout); killed at \
         {killed_at:?}, marked down at {marked_down_at:?}; longest gap on {busy}: {gap:?}",
        acked.len()
    );
    assert!(
        busy_acks.last().is_some_and(|at| *at > marked_down_at),
        "writes to {busy} did not resume after the failover\n{}",
        c.logs()
    );
    let http = client();
    assert_readable(&c.router(0), acked.iter().copied(), "after the failover").await?;

    // The killed node returns: a follower first, re-admitted once caught up, then the owner of
    // its partitions again; every copy ends equal.
    c.shards[victim].start_again()?;
    c.shards[victim].wait_ready(Duration::from_secs(30)).await?;
    wait_for("the restarted node re-admitted", Duration::from_secs(40), || async {
        Ok(layout_of(&store).await?.states.down().next().is_none().then_some(()))
    })
    .await?;
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let after = json!({"id": "after", "scope": "shared", "content": "back", "embedding": vector(8, 1, 0.3)});
    let resp =
        http.post(format!("{}/v1/tenants/f0/memories", c.router(0))).json(&after).send().await?;
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    assert!(report["memories"].as_u64().unwrap_or(0) >= 3 * acked.len() as u64, "{report}");

    // A node gone for good: replaced after 2 s down, every partition back to three copies.
    let mut control = control;
    control.stop();
    let control = c.start_control_with(&["--replace-after-secs", "2"]).await?;
    let ring = Ring::new(layout_of(&store).await?);
    let gone = index_of(&c, ring.owner(&"f1/shared".parse()?).expect("owner"));
    let gone_id = c.shard_id(gone);
    c.shards[gone].kill();
    wait_for("the dead node replaced", Duration::from_secs(40), || async {
        let l = layout_of(&store).await?;
        Ok((l.node(&gone_id).is_none() && l.states.down().next().is_none()).then_some(()))
    })
    .await?;
    let report = wait_verified(&control, Duration::from_secs(60)).await?;
    let l = layout_of(&store).await?;
    assert_eq!(l.nodes.len(), 3);
    assert!(report["memories"].as_u64().unwrap_or(0) >= 3 * acked.len() as u64, "{report}");
    assert_readable(&c.router(0), acked.iter().copied().step_by(7), "after the replacement")
        .await?;
    Ok(())
}

/// `GET /v1/cluster?replica_sets=short` (kept by the control plane as copies change) lists
/// exactly the sets of `?replica_sets=all` that are under-replicated or missing a copy, among
/// them a set with `down` in it; both carry the same counts, and `none` lists nothing. A bad
/// value or an unknown parameter is a 400.
async fn short_sets_agree_with_all(control: &str, down: &NodeId) -> anyhow::Result<()> {
    let http = client();
    let view = |shown: &'static str| {
        let http = http.clone();
        async move {
            let url = format!("{control}/v1/cluster?replica_sets={shown}");
            let answer = http.get(url).send().await?;
            anyhow::ensure!(answer.status().as_u16() == 200, "{shown}: {}", answer.status());
            Ok::<Value, anyhow::Error>(answer.json().await?)
        }
    };
    // The writers keep going: retry until two looks in a row see the same copies.
    wait_for("the short replica sets to match all of them", Duration::from_secs(20), || async {
        let (short, all, none) = (view("short").await?, view("all").await?, view("none").await?);
        let lacking = |s: &&Value| {
            s["under_replicated"] == true || s["missing"].as_array().is_some_and(|m| !m.is_empty())
        };
        let all_sets = all["replica_sets"].as_array().cloned().unwrap_or_default();
        let expected: Vec<&Value> = all_sets.iter().filter(lacking).collect();
        let listed: Vec<&Value> = short["replica_sets"].as_array().into_iter().flatten().collect();
        let summary = &all["replica_summary"];
        let same = listed == expected
            && short["replica_summary"] == *summary
            && none["replica_summary"] == *summary
            && summary["partitions"].as_u64() == Some(all_sets.len() as u64);
        Ok(same.then_some(()))
    })
    .await?;
    let short = view("short").await?;
    let sets = short["replica_sets"].as_array().cloned().unwrap_or_default();
    assert!(
        sets.iter()
            .any(|s| s["down"].as_array().is_some_and(|d| d.iter().any(|n| n == down.as_str()))),
        "no short set has {down} down: {short}"
    );
    assert_eq!(view("none").await?["replica_sets"], json!([]));
    for bad in ["replica_sets=some", "replica_sets=", "sets=short"] {
        let answer = http.get(format!("{control}/v1/cluster?{bad}")).send().await?;
        assert_eq!(answer.status().as_u16(), 400, "{bad}: {}", answer.text().await?);
    }
    Ok(())
}

/// With R = 2, reads of a hot partition go to its follower (per-node read metrics show > 70%
/// answered by non-primaries). With R = 3, W = 2, a read carrying a write's token never misses
/// that write, whichever copy answers (a follower that has not applied it hands the read to the
/// owner). A malformed token is a 400.
#[tokio::test]
async fn replicas_serve_reads_and_tokens_read_your_writes() -> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 1, 10).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 2).await?;
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    c.wait_shards_epoch(epoch).await?;
    let (router, http) = (c.router(0), client());
    let items: Vec<Value> = (0..50)
        .map(|n| json!({"id": format!("h{n}"), "scope": "shared", "content": format!("hot {n}"), "embedding": vector(8, n % 8, 0.2)}))
        .collect();
    memring_tests::write_batch(&http, &router, "hot", items).await?;
    // Followers answer token-less reads once they have caught up within the staleness bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = c.reads_by_role().await?;
    for n in 0..300 {
        if n % 2 == 0 {
            let q = json!({"scopes": ["shared"], "embedding": vector(8, n % 8, 0.2), "k": 3});
            let resp = http
                .post(format!("{router}/v1/tenants/hot/memories/search"))
                .json(&q)
                .send()
                .await?;
            assert_eq!(resp.status().as_u16(), 200);
        } else {
            let url = format!("{router}/v1/tenants/hot/memories/h{}?scope=shared", n % 50);
            assert_eq!(http.get(url).send().await?.status().as_u16(), 200);
        }
    }
    let after = c.reads_by_role().await?;
    let (primary, replica) = (after.0 - before.0, after.1 - before.1);
    let share = replica / (primary + replica);
    println!(
        "R=2 reads: {replica} by the follower, {primary} by the primary ({:.0}%)",
        share * 100.0
    );
    assert!(share > 0.7, "only {share:.2} of reads on non-primaries");

    set_replication(&c.etcd.url, 3).await?;
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let before = c.reads_by_role().await?;
    for n in 0..150 {
        let id = format!("ryw{n}");
        let body = json!({"id": id, "scope": "shared", "content": format!("mine {n}"), "embedding": vector(8, n % 8, 0.9)});
        let resp =
            http.post(format!("{router}/v1/tenants/hot/memories")).json(&body).send().await?;
        assert_eq!(resp.status().as_u16(), 201);
        let token = resp
            .headers()
            .get(READ_TOKEN_HEADER)
            .expect("a write answers with a read token")
            .to_str()?
            .to_owned();
        assert!(token.starts_with("shared="), "{token}");
        let got = http
            .get(format!("{router}/v1/tenants/hot/memories/{id}?scope=shared"))
            .header(READ_TOKEN_HEADER, &token)
            .send()
            .await?;
        assert_eq!(got.status().as_u16(), 200, "read with token {token} missed {id}");
        let q = json!({"scopes": ["shared"], "embedding": vector(8, n % 8, 0.9), "k": 1000});
        let found: Value = http
            .post(format!("{router}/v1/tenants/hot/memories/search"))
            .header(READ_TOKEN_HEADER, &token)
            .json(&q)
            .send()
            .await?
            .json()
            .await?;
        let ids: Vec<&str> = found["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["id"].as_str())
            .collect();
        assert!(ids.contains(&id.as_str()), "search with token {token} missed {id}");
    }
    let after = c.reads_by_role().await?;
    println!(
        "R=3 read-your-writes: {} reads by followers, {} by primaries",
        after.1 - before.1,
        after.0 - before.0
    );
    assert!(after.1 > before.1, "no read with a token was answered by a follower");
    let bad = http
        .get(format!("{router}/v1/tenants/hot/memories/h1?scope=shared"))
        .header(READ_TOKEN_HEADER, "shared=notanumber")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    Ok(())
}

/// A shard node cut off from etcd and from its peers (its port and its etcd connection both go
/// through proxies the test cuts) keeps its stale ring and still believes it owns its
/// partitions. Once its lease has expired and the control plane has marked it down, a write
/// sent straight to it is not acknowledged (503: no follower takes entries from a fenced
/// primary), and the router's new owner never shows it. Healed, the node drops the write nobody
/// acknowledged, catches up, is re-admitted, and verify finds every copy equal.
#[tokio::test]
async fn an_isolated_old_primary_cannot_acknowledge_writes() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(2, 1, 3).await?;
    let store = c.etcd.store().await?;
    let (front, to_etcd) = (Proxy::bind().await?, Proxy::bind().await?);
    to_etcd.forward_to(c.etcd.url.trim_start_matches("http://"));
    let flags = vec!["--advertise".to_owned(), front.addr.clone()];
    let isolated =
        c.start_shard_with("shard-3", &format!("http://{}", to_etcd.addr), &flags).await?;
    front.forward_to(&isolated.addr);
    let isolated_url = isolated.url();
    c.shards.push(isolated);
    let node = LayoutNode { id: NodeId::parse("shard-3")?, addr: front.addr.clone() };
    update_layout(&store, 20, |l| Some(l.with_node(node.clone()))).await?;
    set_replication(&c.etcd.url, 3).await?;
    let control = c.start_control_with(&["--replace-after-secs", "0"]).await?;
    let layout = layout_of(&store).await?;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    let ring = Ring::new(layout);
    let tenant = (0..500)
        .map(|t| format!("iso{t}"))
        .find(|t| {
            let p: PartitionKey = format!("{t}/shared").parse().expect("key");
            ring.owner(&p).is_some_and(|o| o.id == node.id)
        })
        .expect("a tenant owned by shard-3");
    let (router, http) = (c.router(0), client());
    for n in 0..20 {
        let m = json!({"id": format!("m{n}"), "scope": "shared", "content": "before", "embedding": vector(8, n % 8, 0.1)});
        let resp =
            http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&m).send().await?;
        assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);
    }

    front.cut();
    to_etcd.cut();
    wait_for("the isolated node marked down", Duration::from_secs(30), || async {
        Ok(layout_of(&store).await?.states.get(&node.id).is_marked_down().then_some(()))
    })
    .await?;
    // Straight to the isolated node, as a router on its side of the cut would send it.
    let stale = json!({"items": [{"id": "split", "scope": "shared", "content": "never acknowledged", "embedding": vector(8, 2, 0.1), "metadata": {}, "ttl_seconds": null}]});
    let url = format!("{isolated_url}/internal/v1/p/{tenant}/shared/memories");
    let resp = http.post(url).json(&stale).send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    assert_eq!(status, 503, "the isolated old primary answered {status}: {body}");
    // The cluster's side: the new owner takes writes and never saw that one.
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let m = json!({"id": "during", "scope": "shared", "content": "new owner", "embedding": vector(8, 3, 0.1)});
    let resp = http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&m).send().await?;
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);
    let split = format!("{router}/v1/tenants/{tenant}/memories/split?scope=shared");
    assert_eq!(http.get(&split).send().await?.status().as_u16(), 404);

    front.heal();
    to_etcd.heal();
    wait_for("the healed node re-admitted", Duration::from_secs(40), || async {
        Ok(layout_of(&store).await?.states.down().next().is_none().then_some(()))
    })
    .await?;
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    println!("after healing: {report}");
    assert_eq!(
        http.get(&split).send().await?.status().as_u16(),
        404,
        "an unacknowledged write resurfaced"
    );
    let during = format!("{router}/v1/tenants/{tenant}/memories/during?scope=shared");
    assert_eq!(http.get(&during).send().await?.status().as_u16(), 200);
    Ok(())
}

/// How the old primary of [`old_primary_returns_with_a_longer_log`] fails.
#[derive(Debug, Clone, Copy)]
enum Fails {
    Killed,
    Paused,
}

/// The sequence, made deterministic, on partition `{tenant}/shared` of a three-node
/// R = 3, W = 2 cluster: both followers are paused while the primary commits three writes nobody
/// can acknowledge; the primary is then killed (or paused past its lease) and the followers
/// restart from their disks and go on; once it is marked down, a write through the new owner is acknowledged *at the position of
/// the first unacknowledged one*; the old primary comes back with the longer log, is re-admitted
/// and handed its leadership back. The acknowledged write must be on every copy, readable with
/// and without its token; the three that were never acknowledged are cut from every log.
async fn old_primary_returns_with_a_longer_log(
    c: &mut EtcdCluster,
    store: &memring_common::store::etcd::EtcdStore,
    control: &memring_tests::Proc,
    tenant: &str,
    fails: Fails,
) -> anyhow::Result<()> {
    let (router, http) = (c.router(0), client());
    let p: PartitionKey = format!("{tenant}/shared").parse()?;
    let ring = Ring::new(layout_of(store).await?);
    let set: Vec<usize> = ring.replicas(&p).iter().map(|n| index_of(c, n)).collect();
    let (primary, followers) = (set[0], [set[1], set[2]]);
    let mut items = Vec::new();
    for n in 0..20 {
        items.push(json!({"id": format!("m{n}"), "scope": "shared", "content": format!("kept {n}"), "embedding": vector(8, n % 8, 0.2)}));
    }
    memring_tests::write_batch(&http, &router, tenant, items).await?;
    let base = last_pos_at(&c.shards[primary].addr, &p).await?.1;

    // Followers paused: the primary commits three writes it can never get acknowledged.
    for f in followers {
        c.shards[f].pause()?;
    }
    let mut lost = Vec::new();
    for n in 0..3 {
        let (http, router, tenant) = (http.clone(), router.clone(), tenant.to_owned());
        lost.push(tokio::spawn(async move {
            let body = json!({"id": format!("lost{n}"), "scope": "shared", "content": "never acknowledged", "embedding": vector(8, n, 0.4)});
            let url = format!("{router}/v1/tenants/{tenant}/memories");
            http.post(url).json(&body).timeout(Duration::from_secs(20)).send().await.map(|r| r.status().as_u16())
        }));
    }
    wait_for("the primary to commit the three writes", Duration::from_secs(5), || async {
        Ok((last_pos_at(&c.shards[primary].addr, &p).await?.1 == base + 3).then_some(()))
    })
    .await?;
    match fails {
        Fails::Killed => c.shards[primary].kill(),
        Fails::Paused => c.shards[primary].pause()?,
    }
    // The followers come back from their disks, not just resumed: a poll answer the primary
    // sent while they were paused may carry the three entries in their socket buffers (the feed
    // inlines entries), and the sequence needs followers that never got them.
    for f in followers {
        c.shards[f].kill();
        c.shards[f].start_again()?;
    }
    for f in followers {
        c.shards[f].wait_ready(Duration::from_secs(30)).await?;
    }
    for w in lost {
        let answer = w.await?;
        assert!(!matches!(answer, Ok(200..=299)), "an unacknowledgeable write answered {answer:?}");
    }
    let old_id = c.shard_id(primary);
    wait_for("the old primary marked down", Duration::from_secs(20), || async {
        Ok(layout_of(store).await?.states.get(&old_id).is_marked_down().then_some(()))
    })
    .await?;

    // The new owner acknowledges a write at the position the old primary's first lost one has.
    let body = json!({"id": "acked", "scope": "shared", "content": "acknowledged by the new owner", "embedding": vector(8, 5, 0.3)});
    let token = wait_for("a write through the new owner", Duration::from_secs(20), || async {
        let resp =
            http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&body).send().await?;
        if resp.status().as_u16() != 201 {
            return Ok(None);
        }
        Ok(resp.headers().get(READ_TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned))
    })
    .await?;
    assert_eq!(token, format!("shared={}", base + 1), "the acknowledged write's position");

    match fails {
        Fails::Killed => {
            c.shards[primary].start_again()?;
            c.shards[primary].wait_ready(Duration::from_secs(30)).await?;
        }
        Fails::Paused => c.shards[primary].resume()?,
    }
    wait_for("the old primary re-admitted and handed back", Duration::from_secs(60), || async {
        let l = layout_of(store).await?;
        let (down, joining) = (l.states.down().next(), l.states.joining().next());
        Ok((down.is_none() && joining.is_none()).then_some(()))
    })
    .await?;
    let layout = layout_of(store).await?;
    assert_eq!(Ring::new(layout.clone()).owner(&p).map(|o| o.id.clone()), Some(old_id.clone()));
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    let after = json!({"id": "back", "scope": "shared", "content": "led again", "embedding": vector(8, 6, 0.3)});
    let resp =
        http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&after).send().await?;
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);

    let url = format!("{router}/v1/tenants/{tenant}/memories/acked?scope=shared");
    for with_token in [true, false] {
        let mut req = http.get(&url);
        if with_token {
            req = req.header(READ_TOKEN_HEADER, &token);
        }
        let v: Value = req.send().await?.json().await?;
        assert_eq!(
            v["content"],
            "acknowledged by the new owner",
            "token {with_token}: {v}\n{}",
            c.logs()
        );
    }
    let seq = base + 1;
    for (i, shard) in c.shards.iter().enumerate() {
        let direct = format!("{}/internal/v1/p/{tenant}/shared/memories/acked", shard.url());
        let read = wait_for(
            "the copy to have the acknowledged write",
            Duration::from_secs(10),
            || async {
                let resp = http
                    .get(&direct)
                    .header("x-memring-replica-read", seq.to_string())
                    .send()
                    .await?;
                Ok((resp.status().as_u16() == 200).then_some(resp.json::<Value>().await?))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("copy on shard {i}: {e}\n{}", c.logs()))?;
        assert_eq!(read["content"], "acknowledged by the new owner");
    }
    for n in 0..3 {
        let url = format!("{router}/v1/tenants/{tenant}/memories/lost{n}?scope=shared");
        assert_eq!(http.get(url).send().await?.status().as_u16(), 404, "lost{n} came back");
    }
    wait_verified(control, Duration::from_secs(30)).await?;
    println!("{fails:?}: the acknowledged write at {seq} survived the return of a longer log");
    Ok(())
}

/// The lost write of the issue, killed and paused: a primary that committed writes its paused
/// followers never acknowledged returns with the longer log after a new owner acknowledged a
/// write at the same position; nothing acknowledged is lost.
#[tokio::test]
async fn a_returning_primary_with_a_longer_log_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 3).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 3).await?;
    let control = c.start_control_with(&["--replace-after-secs", "0"]).await?;
    let epoch = layout_of(&store).await?.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    old_primary_returns_with_a_longer_log(&mut c, &store, &control, "probe-kill", Fails::Killed)
        .await?;
    old_primary_returns_with_a_longer_log(&mut c, &store, &control, "probe-pause", Fails::Paused)
        .await?;
    Ok(())
}
