//! Replication with real etcd and real shard nodes: followers tail their primaries' change logs.

use std::time::{Duration, Instant};

use memring_common::api::partition_path;
use memring_common::layout::PinKind;
use memring_common::store::RingStore;
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};
use memring_tests::etcd::EtcdCluster;
use memring_tests::load::{
    assert_readable, replicated_cluster, set_replication, start_writers, stop_writers, wait_for,
    wait_verified,
};
use memring_tests::{Proc, binary, client, metric, shardctl, vector, write_batch};
use serde_json::{Value, json};

/// Writes `memories` memories (`s0`, `s1`, …, scope `shared`) to each of `tenants` tenants
/// named `{prefix}0`, `{prefix}1`, … through `router`.
async fn seed(router: &str, prefix: &str, tenants: usize, memories: usize) -> anyhow::Result<()> {
    let http = client();
    for t in 0..tenants {
        let items: Vec<_> = (0..memories)
            .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, router, &format!("{prefix}{t}"), items).await?;
    }
    Ok(())
}

/// `(count, checksum)` of `partition` on the node at `addr` (from its meta; 0 if absent).
async fn sum_at(addr: &str, partition: &PartitionKey) -> anyhow::Result<(u64, String)> {
    let url = format!("http://{addr}/internal/v1/migrate/{}/checksum", partition_path(partition));
    let v: Value = client().get(url).send().await?.error_for_status()?.json().await?;
    Ok((v["count"].as_u64().unwrap_or(0), v["checksum"].as_str().unwrap_or("").to_owned()))
}

/// With `replication_factor` 2 (write quorum 2), a write is acknowledged only once its follower
/// has it: right after creates, an update and a delete the follower's count and checksum equal
/// the primary's, and every node's lag gauge is 0. With the follower dead, writes answer 503 (no
/// quorum) and are kept; after its restart it catches up and the retried write succeeds.
/// `shardctl verify` accepts follower copies.
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
        write_batch(&http, &router, &format!("r{t}"), items).await?;
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
    // Every write above was acknowledged only once its follower had it (write quorum 2 of 2):
    // the copies are equal right now, without waiting.
    let ring = Ring::new(store.load().await?.layout);
    for t in 0..12 {
        let p: PartitionKey = format!("r{t}/shared").parse()?;
        let set = ring.replicas(&p);
        assert_eq!(set.len(), 2);
        let primary = sum_at(&set[0].addr, &p).await?;
        assert_eq!(primary.0, 24, "{p} on its primary");
        assert_eq!(sum_at(&set[1].addr, &p).await?, primary, "{p} on its follower {}", set[1].id);
    }
    let mut took = Vec::new();
    for n in 0..100 {
        let m = json!({"id": format!("lat{n}"), "scope": "shared", "content": "x", "embedding": vector(8, n, 0.2)});
        let t = Instant::now();
        let status =
            http.post(format!("{router}/v1/tenants/r0/memories")).json(&m).send().await?.status();
        took.push(t.elapsed());
        assert_eq!(status.as_u16(), 201);
    }
    took.sort();
    println!("write p50 with 2 copies acknowledged: {:?} (p99 {:?})", took[50], took[98]);
    for shard in &c.shards {
        let metrics = http.get(format!("{}/metrics", shard.url())).send().await?.text().await?;
        let lags: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("memring_replication_lag_entries")).collect();
        assert!(!lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0")), "{lags:?}");
        // Every follower polled over its stream, none over HTTP.
        assert!(polls(&metrics, "stream") > 0.0 && polls(&metrics, "http") == 0.0, "{metrics}");
    }

    // The follower of a partition dies: its writes are kept on the primary but not acknowledged
    // (503, no quorum); once the follower is back it catches up and the retried write succeeds.
    let (tenant, follower_index) = (0..200)
        .find_map(|t| {
            let p: PartitionKey = format!("q{t}/shared").parse().ok()?;
            let set = ring.replicas(&p);
            let i = c.shards.iter().position(|s| s.addr == set[1].addr)?;
            Some((format!("q{t}"), i))
        })
        .expect("some tenant");
    let mut c = c;
    c.shards[follower_index].kill();
    let m =
        json!({"id": "kept", "scope": "shared", "content": "x", "embedding": vector(8, 3, 0.2)});
    let resp = http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&m).send().await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("copies"), "{body}");
    c.shards[follower_index].start_again()?;
    c.shards[follower_index].wait_ready(Duration::from_secs(30)).await?;
    let started = Instant::now();
    loop {
        let resp =
            http.post(format!("{router}/v1/tenants/{tenant}/memories")).json(&m).send().await?;
        if resp.status().is_success() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no quorum after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p: PartitionKey = format!("{tenant}/shared").parse()?;
    let set = ring.replicas(&p);
    assert_eq!(sum_at(&set[1].addr, &p).await?, sum_at(&set[0].addr, &p).await?);

    let control = c.start_control().await?;
    let status = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "status"])
        .output()
        .await?;
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("copies 2 (writes acknowledged at 2)"), "{status}");
    let verify = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "verify"])
        .output()
        .await?;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    Ok(())
}

/// A node's count of answered replication polls over `transport` (`stream` or `http`).
fn polls(metrics: &str, transport: &str) -> f64 {
    let name = format!("memring_replication_polls_total{{transport=\"{transport}\"}} ");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name.as_str()))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// Followers of primaries that do not serve the replication stream (binaries from before it,
/// during a rolling upgrade; here `--replication-stream false`) poll them over HTTP: with three
/// copies, writes are acknowledged, updates and deletes reach every copy, and the copies end
/// equal.
#[tokio::test]
async fn followers_poll_primaries_without_streams_over_http() -> anyhow::Result<()> {
    let flags = ["--replication-stream", "false"];
    let c = EtcdCluster::start_with_shard_flags(3, 1, 10, &flags).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 3).await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_shards_epoch(epoch).await?;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    let (router, http) = (c.router(0), client());
    for t in 0..6 {
        let items: Vec<_> = (0..20)
            .map(|n| json!({"id": format!("m{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &router, &format!("h{t}"), items).await?;
        let upd = json!({"id": "m1", "scope": "shared", "content": "changed", "embedding": vector(8, 1, 0.3)});
        let resp =
            http.post(format!("{router}/v1/tenants/h{t}/memories")).json(&upd).send().await?;
        assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await?);
        let del = http
            .delete(format!("{router}/v1/tenants/h{t}/memories/m2?scope=shared"))
            .send()
            .await?;
        assert_eq!(del.status().as_u16(), 204);
    }
    // Acknowledged by two of three copies; the third follows within a round or two.
    let ring = Ring::new(store.load().await?.layout);
    for t in 0..6 {
        let p: PartitionKey = format!("h{t}/shared").parse()?;
        let set = ring.replicas(&p);
        assert_eq!(set.len(), 3);
        let primary = sum_at(&set[0].addr, &p).await?;
        assert_eq!(primary.0, 19, "{p} on its primary");
        wait_for(&format!("{p}: every copy equal to its primary"), Duration::from_secs(15), || {
            let (set, primary) = (set.clone(), primary.clone());
            let p = p.clone();
            async move {
                for copy in &set[1..] {
                    if sum_at(&copy.addr, &p).await? != primary {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;
    }
    for shard in &c.shards {
        let metrics = http.get(format!("{}/metrics", shard.url())).send().await?.text().await?;
        assert!(polls(&metrics, "http") > 0.0 && polls(&metrics, "stream") == 0.0, "{metrics}");
    }
    Ok(())
}

/// A replicated cluster (R = 3) grows and shrinks under a write + read-back load: a fourth node
/// joins with `shardctl rebalance` (it follows as joining until caught up, is handed leadership,
/// and the copies it displaced are dropped; `layout add-node` and `remove-node` refuse), then `shardctl drain shard-1` hands shard-1's partitions over and
/// takes it out. No write is lost or refused for long, no read with its token misses its write,
/// verify finds three equal copies of every partition, and shard-1 ends empty.
#[tokio::test]
async fn a_replicated_cluster_grows_and_shrinks_under_writes() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 3).await?;
    let http = client();
    seed(&c.router(0), "g", 8, 30).await?;
    let (stop, _, writers) = start_writers(&c.router(0), (0..3).map(|t| format!("g{t}")));

    let joining = c.start_shard("shard-4").await?;
    // Editing a replicated layout by hand would hand replica sets to copies that hold nothing:
    // refused, naming the command that does it safely.
    let by_hand = [
        (vec!["add-node", "shard-4", joining.addr.as_str()], "shardctl rebalance"),
        (vec!["remove-node", "shard-1"], "shardctl drain shard-1"),
    ];
    for (args, names) in by_hand {
        let out = tokio::process::Command::new(binary("memring-control")?)
            .args(["--etcd", &c.etcd.url, "layout"])
            .args(&args)
            .output()
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(names), "layout {args:?}: {err}");
    }
    assert_eq!(store.load().await?.layout.nodes.len(), 3);
    c.shards.push(joining);
    let shardctl = |args: Vec<String>| {
        let control = control.url();
        async move {
            let mut cmd = tokio::process::Command::new(binary("shardctl")?);
            cmd.args(["--control", &control]).args(&args);
            let out = cmd.output().await?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::ensure!(out.status.success(), "shardctl {args:?} failed: {text}");
            Ok::<_, anyhow::Error>(text)
        }
    };
    let grown = shardctl(vec!["rebalance".into()]).await?;
    println!("{grown}");
    let layout = store.load().await?.layout;
    assert_eq!(layout.nodes.len(), 4);
    assert!(layout.states.down().next().is_none(), "{:?}", layout.states);
    let shrunk = shardctl(vec!["drain".into(), "shard-1".into()]).await?;
    println!("{shrunk}");
    let layout = store.load().await?.layout;
    assert_eq!(
        layout.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["shard-2", "shard-3", "shard-4"]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    println!(
        "while growing and shrinking: {} writes acknowledged, {failed} failed (503/timeout): \
         {failures:#?}",
        acked.len()
    );
    assert!(!acked.is_empty());
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    println!("{report}");
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    assert_readable(&c.router(0), acked.iter().copied(), "after the layout changes").await?;
    for t in 0..8 {
        let url = format!("{}/v1/tenants/g{t}/memories/s7?scope=shared", c.router(0));
        assert_eq!(http.get(url).send().await?.status().as_u16(), 200);
    }
    assert!(!c.partitions_on(&c.shards[3]).await?.is_empty(), "shard-4 holds no copy");
    assert!(
        c.partitions_on(&c.shards[0]).await?.is_empty(),
        "the drained shard-1 still holds copies"
    );
    Ok(())
}

/// Two nodes start together beside a replicated cluster (R = 2, two nodes) and one
/// `shardctl rebalance` admits both in one staged change, though some replica sets become the
/// two joiners only: the old sets lead until both joiners hold their old owners' logs, so they
/// are filled from a member that has the data (until 2026-12-07 joiners were admitted one after
/// the other to avoid such sets). The tenants whose final set is exactly those two are written
/// before and during the join; every acknowledged write is readable after it, and verify finds
/// every copy equal.
#[tokio::test]
async fn two_nodes_join_a_replicated_cluster_in_one_change() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(2, 2).await?;
    let http = client();
    // The tenants whose replica set, once both nodes are in, holds neither of today's nodes.
    let mut grown = store.load().await?.layout;
    for id in ["shard-3", "shard-4"] {
        grown = grown.with_node(memring_common::layout::LayoutNode {
            id: NodeId::parse(id)?,
            addr: "127.0.0.1:1".into(),
        });
    }
    let ring = Ring::new(grown);
    let newcomers_only: Vec<String> = (0..400)
        .map(|t| format!("j{t}"))
        .filter(|t| {
            let p: PartitionKey = format!("{t}/shared").parse().expect("key");
            ring.replica_set(&p).iter().all(|n| ["shard-3", "shard-4"].contains(&n.id.as_str()))
        })
        .take(4)
        .collect();
    assert!(!newcomers_only.is_empty(), "no tenant of 400 lands on the two newcomers only");
    for t in &newcomers_only {
        let items: Vec<_> = (0..40)
            .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &c.router(0), t, items).await?;
    }
    let (stop, _, writers) = start_writers(&c.router(0), newcomers_only.iter().cloned());
    c.shards.push(c.start_shard("shard-3").await?);
    c.shards.push(c.start_shard("shard-4").await?);
    let out = shardctl(&control, &["rebalance"]).await?;
    println!("{out}");
    let layout = store.load().await?.layout;
    assert_eq!(layout.nodes.len(), 4, "{out}");
    assert!(layout.states.all_active(), "{:?}", layout.states);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    assert!(!acked.is_empty());
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    println!("{report}");
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    assert_readable(&c.router(0), acked.iter().copied(), "after both joined").await?;
    for t in &newcomers_only {
        for n in [0, 39] {
            let url = format!("{}/v1/tenants/{t}/memories/s{n}?scope=shared", c.router(0));
            assert_eq!(http.get(url).send().await?.status().as_u16(), 200, "{t}/s{n}");
        }
    }
    Ok(())
}

/// A write the old replica set acknowledged just before a join is not lost when the join takes
/// the member that holds it out of the set and the owner then fails (R = 3, W = 2, three nodes
/// and a fourth joining). The member staying is stopped, so the write is on the owner and the
/// member the join displaces only; the owner and the stopped member are killed right before the
/// join is staged, the member comes back from its disk without the write, and once the owner is
/// marked down it takes the partition over. It must ask the displaced member, retiring until
/// the join settles (`Transition`), and find the write there: the joiner never had it.
#[tokio::test]
async fn a_write_on_the_member_a_join_displaces_survives_the_owner_failing() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 3).await?;
    let http = client();
    c.shards.push(c.start_shard("shard-4").await?);
    let before = store.load().await?.layout;
    let after = before.with_node(memring_common::layout::LayoutNode {
        id: NodeId::parse("shard-4")?,
        addr: c.shards[3].addr.clone(),
    });
    let (old, new) = (Ring::new(before), Ring::new(after));
    let ids = |set: Vec<&memring_common::layout::LayoutNode>| -> Vec<NodeId> {
        set.into_iter().map(|n| n.id.clone()).collect()
    };
    // A tenant whose owner stays, one follower stays and the other is displaced by shard-4.
    let (tenant, owner, staying, displaced) = (0..400)
        .find_map(|t| {
            let p: PartitionKey = format!("d{t}/shared").parse().ok()?;
            let (was, will) = (ids(old.replica_set(&p)), ids(new.replica_set(&p)));
            let owner = old.owner(&p)?.id.clone();
            let gone: Vec<&NodeId> = was.iter().filter(|n| !will.contains(n)).collect();
            let stays: Vec<&NodeId> =
                was.iter().filter(|n| will.contains(n) && **n != owner).collect();
            (new.owner(&p)?.id == owner && gone.len() == 1 && gone[0] != &owner && stays.len() == 1)
                .then(|| (format!("d{t}"), owner.clone(), stays[0].clone(), gone[0].clone()))
        })
        .expect("a tenant of 400 whose join displaces a follower");
    let index = |id: &NodeId| {
        c.shards.iter().position(|s| {
            s.addr == old.layout().node(id).map(|n| n.addr.clone()).unwrap_or_default()
        })
    };
    let (a, b) = (index(&owner).expect("owner"), index(&staying).expect("staying"));
    println!("tenant {tenant}: owner {owner}, staying {staying}, displaced {displaced}");
    let items: Vec<_> = (0..20)
        .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &c.router(0), &tenant, items).await?;

    // The join is planned, and held right before its layout is staged.
    set_failpoint(&control, "reconcile.stage", "pause").await?;
    let job = spawn_shardctl(&control, &["rebalance"])?;
    wait_resize_phase(&store, "the join", "staging", Duration::from_secs(30)).await?;
    // Acknowledged by the owner and the member the join displaces: the staying one is stopped.
    c.shards[b].pause()?;
    let body = json!({"id": "late", "scope": "shared", "content": "acknowledged before the join", "embedding": vector(8, 3, 0.3)});
    let url = format!("{}/v1/tenants/{tenant}/memories", c.router(0));
    let status =
        http.post(&url).json(&body).timeout(Duration::from_secs(10)).send().await?.status();
    assert!(status.is_success(), "the write was not acknowledged: {status}");
    // The owner dies; the staying member comes back from its disk (a poll answer waiting in its
    // socket could carry the write), so only the displaced member holds it.
    c.shards[a].kill();
    c.shards[b].kill();
    set_failpoint(&control, "reconcile.stage", "off").await?;
    wait_for("the join staged", Duration::from_secs(20), || async {
        Ok((store.load().await?.layout.nodes.len() == 4).then_some(()))
    })
    .await?;
    c.shards[b].start_again()?;
    c.shards[b].wait_ready(Duration::from_secs(30)).await?;
    wait_for("the old owner marked down", Duration::from_secs(30), || async {
        Ok(store.load().await?.layout.states.get(&owner).is_marked_down().then_some(()))
    })
    .await?;
    let done = tokio::time::timeout(Duration::from_secs(120), job).await???;
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(done.status.success(), "{out}{}", String::from_utf8_lossy(&done.stderr));
    let layout = store.load().await?.layout;
    assert!(layout.transition.is_none(), "the join settled: {:?}", layout.transition);
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    let read = |id: String| {
        let url = format!("{}/v1/tenants/{tenant}/memories/{id}?scope=shared", c.router(0));
        let http = http.clone();
        async move { anyhow::Ok(http.get(url).send().await?.status().as_u16()) }
    };
    assert_eq!(read("late".into()).await?, 200, "the write acknowledged before the join was lost");
    for n in [0, 19] {
        assert_eq!(read(format!("s{n}")).await?, 200, "s{n}");
    }
    Ok(())
}

/// A replicated move does not start while a join has not settled: the join's retiring copies
/// are the old replica sets worked out again from today's pins, so a pin set meanwhile would name
/// the wrong old copies (`placement::settling`). The join is held before its transition ends (a
/// failpoint) and cancelled, so the transition lingers with no job running: `shardctl migrate`
/// refuses, naming it, and changes nothing; once the janitor has ended it, the same command moves
/// the tenant.
#[tokio::test]
async fn a_replicated_move_waits_until_a_join_has_settled() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 2).await?;
    let http = client();
    let items: Vec<_> = (0..20)
        .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &c.router(0), "mv", items).await?;
    c.shards.push(c.start_shard("shard-4").await?);
    set_failpoint(&control, "reconcile.end", "error").await?;
    let join = spawn_shardctl(&control, &["rebalance"])?;
    wait_resize_phase(&store, "the join", "settling", Duration::from_secs(60)).await?;
    let resp = http.post(format!("{}/v1/migrations/cancel", control.url())).send().await?;
    assert!(resp.status().is_success(), "{}", resp.text().await?);
    let out = join.await??;
    assert!(!out.status.success(), "a cancelled rebalance exits non-zero");
    let layout = store.load().await?.layout;
    let since = layout.transition.as_ref().map(|t| t.since).expect("the join left its transition");

    let p: PartitionKey = "mv/shared".parse()?;
    let set: Vec<NodeId> =
        Ring::new(layout.clone()).replica_set(&p).into_iter().map(|n| n.id.clone()).collect();
    let outsider = layout.nodes.iter().map(|n| n.id.clone()).find(|id| !set.contains(id));
    let outsider = outsider.expect("a node outside the set").to_string();
    let refused = shardctl(&control, &["migrate", "--tenant", "mv", "--to", &outsider]).await;
    let why = format!("{:#}", refused.expect_err("a move while the join settles"));
    assert!(why.contains(&format!("layout change of epoch {since} has not settled")), "{why}");
    let now = store.load().await?.layout;
    assert!(now.extra_copies.is_empty() && !now.pins.contains_key(&p), "the move changed {now:?}");
    assert!(now.transition.is_some(), "the transition ended while its failpoint fails");

    set_failpoint(&control, "reconcile.end", "off").await?;
    wait_for("the janitor ending the transition", Duration::from_secs(30), || async {
        Ok(store.load().await?.layout.transition.is_none().then_some(()))
    })
    .await?;
    shardctl(&control, &["migrate", "--tenant", "mv", "--to", &outsider]).await?;
    let layout = store.load().await?.layout;
    let owner = Ring::new(layout.clone()).owner(&p).map(|o| o.id.to_string());
    assert_eq!(owner, Some(outsider), "the move ran once the join had settled");
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    for n in [0, 19] {
        let url = format!("{}/v1/tenants/mv/memories/s{n}?scope=shared", c.router(0));
        assert_eq!(http.get(url).send().await?.status().as_u16(), 200, "s{n}");
    }
    Ok(())
}

/// A replicated join or drain waits while another node is marked down (a set whose one live
/// holder the change pushes out would be led by a node holding nothing): `shardctl rebalance`
/// and `shardctl drain` refuse naming the node, `shardctl plan` says the join comes later, and
/// once the node is back and failover has re-admitted it the same rebalance admits the
/// newcomer with every memory readable.
#[tokio::test]
async fn a_replicated_change_waits_while_a_node_is_down() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 2).await?;
    let http = client();
    seed(&c.router(0), "w", 6, 20).await?;
    c.shards[2].kill();
    let down = NodeId::parse("shard-3")?;
    wait_for("shard-3 marked down", Duration::from_secs(30), || async {
        Ok(store.load().await?.layout.states.get(&down).is_marked_down().then_some(()))
    })
    .await?;
    c.shards.push(c.start_shard("shard-4").await?);
    for args in [&["drain", "shard-1"][..], &["rebalance"][..]] {
        let refused = shardctl(&control, args).await.expect_err("refused while shard-3 is down");
        assert!(format!("{refused:#}").contains("node shard-3 is marked down"), "{refused:#}");
    }
    let plan = shardctl(&control, &["plan"]).await?;
    assert!(plan.contains("admit shard-4 later: node shard-3 is marked down"), "{plan}");
    let layout = store.load().await?.layout;
    assert_eq!(layout.nodes.len(), 3, "nothing was staged");
    assert!(layout.states.draining().next().is_none());

    c.shards[2].start_again()?;
    c.shards[2].wait_ready(Duration::from_secs(30)).await?;
    wait_for("shard-3 active again", Duration::from_secs(60), || async {
        Ok(store.load().await?.layout.states.all_active().then_some(()))
    })
    .await?;
    let out = shardctl(&control, &["rebalance"]).await?;
    assert!(out.contains("joining [\"shard-4\"]"), "{out}");
    assert_eq!(store.load().await?.layout.nodes.len(), 4);
    wait_verified(&control, Duration::from_secs(30)).await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    for t in 0..6 {
        let url = format!("{}/v1/tenants/w{t}/memories/s19?scope=shared", c.router(0));
        assert_eq!(http.get(url).send().await?.status().as_u16(), 200, "w{t}");
    }
    Ok(())
}

/// A node that will not return is drained while failover has it marked down (R = 2, four nodes,
/// writes running). The drain is staged like any other: the sets it was in keep leading without
/// it while the nodes that take its places fill from their owners (the change records it as
/// down, so nobody waits on it or lists it), and `shardctl drain` returns once the change has
/// settled: the view shows no set short of a copy as soon as it returns, verify finds every
/// copy equal, and every acknowledged write is readable. `memring-control layout remove-node`,
/// which would hand its sets to an empty copy at once, refuses and names the drain. Until
/// 2026-12-07 the drain failed (its plan listed every node, the down one too) and remove-node
/// took a down node out.
#[tokio::test]
async fn a_drained_down_node_leaves_and_its_sets_get_their_copies_back() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(4, 2).await?;
    let http = client();
    seed(&c.router(0), "d", 8, 20).await?;
    let gone = NodeId::parse("shard-4")?;
    let held = c.partitions_on(&c.shards[3]).await?;
    assert!(!held.is_empty(), "shard-4 holds no copy to replace");
    let (stop, _, writers) = start_writers(&c.router(0), (0..4).map(|t| format!("d{t}")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.shards[3].kill();
    wait_for("shard-4 marked down", Duration::from_secs(30), || async {
        Ok(store.load().await?.layout.states.get(&gone).is_marked_down().then_some(()))
    })
    .await?;

    // Taking it out of the layout by hand would hand its sets to an empty copy at once.
    let by_hand = tokio::process::Command::new(binary("memring-control")?)
        .args(["--etcd", &c.etcd.url, "layout", "remove-node", "shard-4"])
        .output()
        .await?;
    let err = String::from_utf8_lossy(&by_hand.stderr);
    assert!(!by_hand.status.success() && err.contains("shardctl drain shard-4"), "{err}");
    let drain = shardctl(&control, &["drain", "shard-4"]);
    let out = tokio::time::timeout(Duration::from_secs(60), drain).await.map_err(|_| {
        anyhow::anyhow!("the drain of the down node has not ended after 60 s\n{}", c.logs())
    })??;
    assert!(out.contains("leaving Some(\"shard-4\")"), "{out}");
    let layout = store.load().await?.layout;
    assert!(layout.node(&gone).is_none() && layout.transition.is_none(), "{layout:?}");
    let url = format!("{}/v1/cluster?replica_sets=short", control.url());
    let view: Value = http.get(url).send().await?.json().await?;
    let summary = &view["replica_summary"];
    assert_eq!(summary["under_replicated"], 0, "{view}");
    assert_eq!(summary["missing_copies"], 0, "{view}");
    assert!(summary["partitions"].as_u64().is_some_and(|n| n as usize >= held.len()), "{view}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    println!("{} writes acknowledged; failed: {failures:#?}", acked.len());
    assert!(!acked.is_empty());
    wait_verified(&control, Duration::from_secs(30)).await?;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    assert_readable(&c.router(0), acked.iter().copied(), "after the drain").await?;
    for t in 0..8 {
        let url = format!("{}/v1/tenants/d{t}/memories/s19?scope=shared", c.router(0));
        assert_eq!(http.get(url).send().await?.status().as_u16(), 200, "d{t}");
    }
    Ok(())
}

/// `shardctl migrate` in a replicated cluster (R = 3, W = 2, four nodes) under a write + read-back
/// load: a tenant moves to the node outside its replica set (it joins as an extra copy, replays
/// the log, takes the writes over, and the member the new set leaves out drops its copy), then
/// to a member of its set (only the lead changes). The tenant ends pinned with three copies led
/// by the named node; no acknowledged write is lost, no read with its token misses its write,
/// and verify finds every copy equal. Then the replication factor goes down to 2 and the control
/// plane drops each partition's third copy by itself.
#[tokio::test]
async fn a_tenant_moves_within_a_replicated_cluster_under_writes() -> anyhow::Result<()> {
    let (c, store, control) = replicated_cluster(4, 3).await?;
    let http = client();
    for batch in 0..3 {
        let items: Vec<_> = (0..200)
            .map(|n| json!({"id": format!("s{batch}-{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &c.router(0), "mv", items).await?;
    }
    let (stop, _, writers) = start_writers(&c.router(0), ["mv".into(), "bystander".into()]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let p: PartitionKey = "mv/shared".parse()?;
    let ids = |ring: &Ring| -> Vec<String> {
        ring.replicas(&p).iter().map(|n| n.id.to_string()).collect()
    };
    let layout = store.load().await?.layout;
    let before = ids(&Ring::new(layout.clone()));
    let outsider =
        layout.nodes.iter().map(|n| n.id.to_string()).find(|id| !before.contains(id)).expect("4th");
    let moved = shardctl(&control, &["migrate", "--tenant", "mv", "--to", &outsider]).await?;
    println!("{moved}");
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let after = ids(&ring);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[0], outsider, "the named node leads the set: {after:?}");
    assert_eq!(ring.owner(&p).map(|o| o.id.to_string()), Some(outsider.clone()));
    assert!(layout.extra_copies.is_empty(), "{:?}", layout.extra_copies);
    let left_out: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
    assert_eq!(left_out.len(), 1, "{before:?} -> {after:?}");
    let leaver_addr = layout.node(&NodeId::parse(left_out[0])?).map(|n| n.addr.clone());
    let leaver =
        c.shards.iter().find(|s| Some(&s.addr) == leaver_addr.as_ref()).expect("its process");
    assert!(
        !c.partitions_on(leaver).await?.contains(&"mv/shared".to_owned()),
        "{} still holds a copy it no longer has a place for",
        left_out[0]
    );

    // Within the set: the lead changes, nothing is copied.
    let member = after[1].clone();
    shardctl(&control, &["migrate", "--tenant", "mv", "--to", &member]).await?;
    let ring = Ring::new(store.load().await?.layout);
    assert_eq!(ring.owner(&p).map(|o| o.id.to_string()), Some(member.clone()));
    assert_eq!(ids(&ring).len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    let gap = seen[0].acked_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!(
        "replicated moves under load: {} writes acknowledged, {failed} failed (503/timeout), \
         longest gap between acknowledged writes to the moved tenant {gap:?}",
        acked.len()
    );
    assert!(seen[0].acked.len() > 10, "the moved tenant's writer made no progress");
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    assert_readable(&c.router(0), acked.iter().copied(), "after the layout changes").await?;
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    let three_copies = report["memories"].as_u64().unwrap_or(0);
    assert!(three_copies >= 3 * (600 + acked.len() as u64), "{report}");

    // Down to two copies: the control plane's sweep drops every third copy by itself.
    set_replication(&c.etcd.url, 2).await?;
    let holders = || async {
        let mut n = 0;
        for shard in &c.shards {
            n += usize::from(c.partitions_on(shard).await?.contains(&"mv/shared".to_owned()));
        }
        anyhow::Ok(n)
    };
    wait_for("the third copies dropped", Duration::from_secs(40), || async {
        Ok((holders().await? == 2).then_some(()))
    })
    .await?;
    let report = wait_verified(&control, Duration::from_secs(30)).await?;
    // The same memories, on two copies instead of three.
    assert_eq!(3 * report["memories"].as_u64().unwrap_or(0), 2 * three_copies, "{report}");
    let v: Value = http
        .get(format!("{}/v1/tenants/mv/memories/s2-199?scope=shared", c.router(0)))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["content"], "seed 199", "{v}");
    Ok(())
}

/// `layout` with `change` applied as a staged layout change at the next epoch
/// (docs/one-engine.md).
fn staged(layout: &ClusterLayout, change: impl FnOnce(&mut ClusterLayout)) -> ClusterLayout {
    let mut next = layout.clone();
    change(&mut next);
    next.epoch += 1;
    next.transition = Some(memring_common::layout::Transition::staged(layout, &next));
    next
}

/// Writes the layout with `change` applied at the next epoch (compare-and-swap) and waits until
/// every shard node and the router have it.
async fn advance(
    c: &EtcdCluster,
    store: &impl RingStore,
    change: impl Fn(&mut ClusterLayout) + Send + Sync,
) -> anyhow::Result<ClusterLayout> {
    let stored = memring_common::store::update_layout(store, 20, |l| {
        let mut next = l.clone();
        change(&mut next);
        next.epoch = l.epoch + 1;
        Some(next)
    })
    .await?;
    c.wait_shards_epoch(stored.layout.epoch).await?;
    c.wait_router_epoch(0, stored.layout.epoch, Duration::from_secs(10)).await?;
    Ok(stored.layout)
}

/// A shard node's replication status (`GET /internal/v1/replicate/status`).
async fn replica_status(shard: &Proc) -> anyhow::Result<Value> {
    let url = format!("{}/internal/v1/replicate/status", shard.url());
    Ok(client().get(url).send().await?.error_for_status()?.json().await?)
}

/// A move costs the partitions it moves, not every partition held: through the three layouts of
/// a replicated move (stage, flip, end) the 300 other tenants' partitions keep their terms, so
/// no owner takes them over again and no follower pulls them again (`Ring::term`); the layouts
/// differ in pins alone, so no follower asks for a full listing either. Before terms,
/// each new epoch had every owner take every partition over and every follower pull every copy.
#[tokio::test]
async fn a_move_takes_over_and_checks_again_only_the_partition_it_moves() -> anyhow::Result<()> {
    let (c, store, control) = replicated_cluster(3, 2).await?;
    let http = client();
    for t in 0..300 {
        let item = json!({"id": "m", "scope": "shared", "content": "idle", "embedding": vector(8, t, 0.1)});
        write_batch(&http, &c.router(0), &format!("idle-{t}"), vec![item]).await?;
    }
    let seed: Vec<_> = (0..50)
        .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": "seed", "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &c.router(0), "mv", seed).await?;
    let counted = || async {
        let (mut takeovers, mut checks, mut listings) = (0.0, 0.0, 0.0);
        for shard in &c.shards {
            takeovers += metric(shard, "memring_replication_takeovers_total").await?;
            checks += metric(shard, "memring_replication_copy_checks_total").await?;
            listings += metric(shard, "memring_replication_full_listings_total").await?;
        }
        anyhow::Ok((takeovers, checks, listings))
    };
    // Settled: every copy checked, and the counts stay put.
    let settle_by = Instant::now() + Duration::from_secs(30);
    let mut before = counted().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let now = counted().await?;
        if now == before && now.1 >= 300.0 {
            break;
        }
        anyhow::ensure!(Instant::now() < settle_by, "the followers did not settle: {now:?}");
        before = now;
    }
    let (stop, _, writers) = start_writers(&c.router(0), ["mv".into(), "idle-7".into()]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let p: PartitionKey = "mv/shared".parse()?;
    let layout = store.load().await?.layout;
    let set: Vec<NodeId> =
        Ring::new(layout.clone()).replicas(&p).iter().map(|n| n.id.clone()).collect();
    let outsider = layout.nodes.iter().find(|n| !set.contains(&n.id)).expect("a third node");
    let start_epoch = layout.epoch;
    shardctl(&control, &["migrate", "--tenant", "mv", "--to", outsider.id.as_str()]).await?;
    let epoch = store.load().await?.layout.epoch;
    assert!(epoch >= start_epoch + 3, "staged, flipped and ended: {start_epoch} -> {epoch}");
    wait_for("every node caught up at the new epoch", Duration::from_secs(20), || async {
        for shard in &c.shards {
            let status = replica_status(shard).await?;
            if status["epoch"].as_u64() != Some(epoch) || status["caught_up"] != json!(true) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let after = counted().await?;
    let (takeovers, checks, listings) =
        (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    println!(
        "a move through {} epochs beside 300 idle partitions: {takeovers} take-overs, {checks} \
         copy checks, {listings} full listings",
        epoch - start_epoch
    );
    // A change of pins alone: no follower lists its primaries' partitions again.
    assert_eq!(listings, 0.0, "full listings during a move");
    // The moved partition: taken over by its old owner at the stage and its new one at the
    // flip; checked by its followers at each of the three terms (and a few retries); the
    // bystander's writers add nothing. 300 partitions re-checked would be 300 and more.
    assert!(takeovers <= 6.0, "{takeovers} take-overs for one moved partition");
    assert!(checks <= 30.0, "{checks} copy checks for one moved partition");
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    assert_eq!(failed, 0, "no write failed during the move");
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    assert!(seen.iter().all(|s| !s.acked.is_empty()), "both writers made progress");
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    assert_readable(&c.router(0), acked.iter().copied(), "after the move").await?;
    wait_verified(&control, Duration::from_secs(30)).await?;
    Ok(())
}

/// A node that has changed nothing since it started (restarted, nothing written to it since)
/// is asked for what changed, not listed in full, after each reader's first ask: its followers'
/// polls wait for a change, and a listing's next ask (the cluster view's, the routers' usage)
/// names no partition. Before, such a node's feed handed out cursor 0, which readers send to
/// ask for everything: each follower listed every partition of it again at once, poll after
/// poll, and each look at the cluster view checked every replica set again.
#[tokio::test]
async fn an_idle_restarted_node_is_asked_for_changes_not_listed_in_full_again() -> anyhow::Result<()>
{
    let (mut c, _store, _control) = replicated_cluster(3, 2).await?;
    seed(&c.router(0), "idle-", 40, 1).await?;
    c.shards[0].stop();
    c.shards[0].start_again()?;
    c.shards[0].wait_ready(Duration::from_secs(30)).await?;
    // Failover marks it down, re-admits it and hands its leadership back; each new layout has
    // its followers list it in full once. Then the count stays put.
    c.wait_settled(Duration::from_secs(1), Duration::from_secs(30)).await?;
    let full_listings = || metric(&c.shards[0], "memring_replication_full_listings_total");
    let settled = full_listings().await?;
    assert!(settled >= 1.0, "its followers listed it once: {settled}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(full_listings().await?, settled, "a follower listed the idle node in full again");

    // A listing's second ask, from the cursor the first handed out, names nothing.
    let url = format!("{}/internal/v1/partitions", c.shards[0].url());
    let first: Value = client().get(&url).send().await?.error_for_status()?.json().await?;
    assert_eq!(first["full"], json!(true));
    let held = first["partitions"].as_array().map_or(0, Vec::len);
    assert!(held >= 10, "the node holds copies: {held}");
    let since = format!("{url}?feed={}&since={}", first["feed"], first["cursor"]);
    let next: Value = client().get(&since).send().await?.error_for_status()?.json().await?;
    assert_eq!(next["full"], json!(false), "listed in full again: cursor {}", first["cursor"]);
    assert_eq!(next["partitions"], json!([]));
    Ok(())
}

/// With one copy of every partition (R = 1), a partition moves by the rule of
/// docs/one-engine.md, with the shard nodes alone doing the copying: staged, the old owner keeps
/// the writes and the new node follows it — filled from a snapshot, since the old log is trimmed
/// — while every other partition stays unreplicated; flipped, the new node takes the writes over
/// (asking the old one, now retiring); ended, it writes alone. Writers on the moved tenant and on
/// a bystander see no failed write, and everything acknowledged is readable and searchable at
/// the end. The layout is written here by hand, as the control plane's engine will.
#[tokio::test]
async fn at_one_copy_a_staged_move_fills_the_new_node_then_hands_it_the_writes()
-> anyhow::Result<()> {
    let c = EtcdCluster::start(2, 1, 10).await?;
    let store = c.etcd.store().await?;
    let http = client();
    let p: PartitionKey = "mv/shared".parse()?;
    for batch in 0..3 {
        let items: Vec<_> = (0..100)
            .map(|n| json!({"id": format!("s{batch}-{n}"), "scope": "shared", "content": format!("seed {batch} {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &c.router(0), "mv", items).await?;
    }
    let layout = store.load().await?.layout;
    assert_eq!(layout.replication_factor, 1);
    let from = Ring::new(layout.clone()).owner(&p).cloned().expect("an owner");
    let to = layout.nodes.iter().find(|n| n.id != from.id).cloned().expect("a second node");
    let process = |addr: &str| c.shards.iter().find(|s| s.addr == addr).expect("its process");
    let (source, target) = (process(&from.addr), process(&to.addr));
    // The old owner's log is trimmed (one copy: nothing waits for it), so a new copy cannot be
    // filled from the log alone.
    let from_start = format!(
        "{}/internal/v1/replicate/log/{}?after=0&term=0&limit=10",
        source.url(),
        partition_path(&p)
    );
    wait_for("the old owner's log trimmed", Duration::from_secs(20), || async {
        let resp = http.get(&from_start).send().await?;
        if resp.status().is_success() {
            return Ok(None);
        }
        let v: Value = resp.json().await?;
        Ok((v["error"]["code"] == "log_trimmed").then_some(()))
    })
    .await?;
    assert_eq!(replica_status(target).await?["following"], 0, "one copy: nothing followed");

    let (stop, _, writers) = start_writers(&c.router(0), ["mv".into(), "bystander".into()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1. Staged: the old owner leads, the new node follows it, nothing else is followed.
    let stage = staged(&layout, |l| l.pins.set(p.clone(), to.id.clone(), PinKind::Operator));
    let now = advance(&c, &store, |l| *l = stage.clone()).await?;
    let epoch = now.epoch;
    let ring = Ring::new(now);
    assert_eq!(ring.owner(&p).map(|o| o.id.clone()), Some(from.id.clone()));
    let position = |addr: String| {
        let url = format!(
            "http://{addr}/internal/v1/replicate/position/{}?epoch={epoch}",
            partition_path(&p)
        );
        async move {
            let v: Value = client().post(url).send().await?.error_for_status()?.json().await?;
            anyhow::Ok(v["last_seq"].as_u64().unwrap_or(0))
        }
    };
    wait_for("the new copy caught up with the old owner", Duration::from_secs(30), || async {
        let owner = position(from.addr.clone()).await?;
        let copy = position(to.addr.clone()).await?;
        Ok((copy >= owner).then_some(()))
    })
    .await?;
    let status = replica_status(target).await?;
    assert_eq!(status["following"], 1, "only the moving partition is followed: {status}");
    let metrics = http.get(format!("{}/metrics", target.url())).send().await?.text().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("memring_replication_reseeds_total")
                && !l.trim_end().ends_with(" 0")),
        "the new copy was filled from a snapshot"
    );

    // 2. Flipped: the new node leads, having taken the writes over from the retiring copy.
    let flipped = advance(&c, &store, |l| {
        if let Some(t) = l.transition.as_mut() {
            t.phase = memring_common::layout::TransitionPhase::NewLeads;
        }
    })
    .await?;
    assert_eq!(Ring::new(flipped).owner(&p).map(|o| o.id.clone()), Some(to.id.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 3. Ended: one copy again; the new owner writes alone and follows nobody.
    let ended = advance(&c, &store, |l| l.transition = None).await?;
    assert!(!Ring::new(ended).replicating());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(failures.is_empty(), "failed writes: {failures:?}\n{}", c.logs());
    assert!(seen[0].acked.len() > 10, "the moved tenant's writer made no progress");
    wait_for("the new owner follows nobody", Duration::from_secs(10), || async {
        Ok((replica_status(target).await?["following"] == 0).then_some(()))
    })
    .await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    assert_readable(&c.router(0), acked.iter().copied(), "after the move").await?;
    let (count, _) = sum_at(&to.addr, &p).await?;
    assert_eq!(count, 300 + seen[0].acked.len() as u64, "the new owner holds every memory");
    // The new owner's index has the copied memories: the nearest are seeds on axis 7.
    let found: Value = http
        .post(format!("{}/v1/tenants/mv/memories/search", c.router(0)))
        .json(&json!({"scopes": ["shared"], "embedding": vector(8, 7, 0.2), "k": 3}))
        .send()
        .await?
        .json()
        .await?;
    let first = found["results"][0]["id"].as_str().unwrap_or_default().to_owned();
    let on_axis = first
        .strip_prefix('s')
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(_, n)| n.parse::<usize>().ok())
        .is_some_and(|n| n % 8 == 7);
    assert!(on_axis && found["partial"] == false, "the nearest seed is found: {found}");
    Ok(())
}

/// A staged layout change whose job is gone — a control plane that cancelled a move and stopped
/// before undoing it — is undone by the janitor: the partition's pin is back to what it was, the
/// transition is gone, the old set still owns the tenant, and its memories read back.
#[tokio::test]
async fn a_staged_change_left_without_a_job_is_undone_by_the_janitor() -> anyhow::Result<()> {
    let (c, store, _control) = replicated_cluster(3, 2).await?;
    let http = client();
    let items: Vec<_> = (0..20)
        .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &c.router(0), "mv", items).await?;
    let p: PartitionKey = "mv/shared".parse()?;
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let owner = ring.owner(&p).map(|o| o.id.clone());
    let set: Vec<NodeId> = ring.replica_set(&p).into_iter().map(|n| n.id.clone()).collect();
    let outsider = layout.nodes.iter().map(|n| n.id.clone()).find(|id| !set.contains(id));
    let outsider = outsider.expect("a node outside the set");
    let stage = staged(&layout, |l| l.pins.set(p.clone(), outsider.clone(), PinKind::Operator));
    let now = advance(&c, &store, |l| *l = stage.clone()).await?;
    assert!(memring_control::reconcile::staged(&now), "{:?}", now.transition);
    let undone = wait_for("the janitor undoing the change", Duration::from_secs(30), || async {
        let l = store.load().await?.layout;
        Ok((l.transition.is_none()).then_some(l))
    })
    .await?;
    assert!(!undone.pins.contains_key(&p), "the pin it staged is gone: {:?}", undone.pins);
    assert_eq!(Ring::new(undone.clone()).owner(&p).map(|o| o.id.clone()), owner);
    c.wait_router_epoch(0, undone.epoch, Duration::from_secs(5)).await?;
    for n in [0, 19] {
        let url = format!("{}/v1/tenants/mv/memories/s{n}?scope=shared", c.router(0));
        assert_eq!(http.get(url).send().await?.status().as_u16(), 200, "s{n}");
    }
    Ok(())
}

/// Switches failpoint `name` of the control plane to `action` (`pause`, `error`, `off`).
async fn set_failpoint(control: &Proc, name: &str, action: &str) -> anyhow::Result<()> {
    let url = format!("{}/debug/v1/failpoints/{name}", control.url());
    let resp = client().post(url).body(action.to_owned()).send().await?;
    anyhow::ensure!(resp.status().is_success(), "control plane built without the testing feature?");
    Ok(())
}

/// `shardctl migrate --tenant T --to NODE`, running in the background.
fn spawn_migrate(
    control: &Proc,
    tenant: &str,
    to: &str,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<std::process::Output>>> {
    let mut cmd = tokio::process::Command::new(binary("shardctl")?);
    cmd.args(["--control", &control.url(), "migrate", "--tenant", tenant, "--to", to]);
    Ok(tokio::spawn(async move { cmd.output().await }))
}

/// Waits until the journaled rebalance or drain (`what`) has started step `phase`.
async fn wait_resize_phase(
    store: &impl RingStore,
    what: &str,
    phase: &str,
    within: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("{what} at {phase}"), within, || async {
        let pending = memring_control::resize::pending(store).await?;
        Ok(pending.is_some_and(|j| j.phase.name() == phase).then_some(()))
    })
    .await
}

/// Waits until a migration in the journal stands at `phase`.
async fn wait_phase(store: &impl RingStore, phase: &str) -> anyhow::Result<()> {
    wait_for(&format!("a move at {phase}"), Duration::from_secs(20), || async {
        let jobs = memring_control::journal::pending(store).await?;
        Ok(jobs.iter().any(|j| j.phase.name() == phase).then_some(()))
    })
    .await
}

/// A replicated move (R = 3, four nodes) under writes whose control plane is SIGKILLed at each
/// step of its layout change (`reconcile.rs`) — before it is staged, staged before it flips, and
/// flipped before it ends — is finished by the restarted control plane: the tenant ends
/// led by the named node with three copies, the member left out holds none, and no acknowledged
/// write is lost. A move cancelled before the target leads is undone: the old set owns the tenant,
/// its pin is gone, and the joining copy is dropped.
#[tokio::test]
async fn a_replicated_move_finishes_after_a_crash_at_any_step_and_can_be_cancelled()
-> anyhow::Result<()> {
    let (c, store, mut control) = replicated_cluster(4, 3).await?;
    let http = client();
    let holders_of = |p: &PartitionKey, layout: ClusterLayout| -> Vec<String> {
        Ring::new(layout).replicas(p).iter().map(|n| n.id.to_string()).collect()
    };
    for (point, phase) in [("stage", "join"), ("flip", "lead"), ("end", "settle")] {
        let tenant = format!("ck-{point}");
        let items: Vec<_> = (0..200)
            .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &c.router(0), &tenant, items).await?;
        let p: PartitionKey = format!("{tenant}/shared").parse()?;
        let layout = store.load().await?.layout;
        let before = holders_of(&p, layout.clone());
        let outsider =
            layout.nodes.iter().map(|n| n.id.to_string()).find(|id| !before.contains(id));
        let outsider = outsider.expect("a fourth node");

        set_failpoint(&control, &format!("reconcile.{point}"), "pause").await?;
        let (stop, _, writers) = start_writers(&c.router(0), [tenant.clone()]);
        let migrate = spawn_migrate(&control, &tenant, &outsider)?;
        wait_phase(&store, phase).await?;
        control.kill();
        assert!(!migrate.await??.status.success(), "shardctl reports the lost control plane");
        control.start_again()?;
        control.wait_ready(Duration::from_secs(20)).await?;
        wait_for(
            "the journal emptied by the restarted control plane",
            Duration::from_secs(60),
            || async {
                Ok(memring_control::journal::pending(&store).await?.is_empty().then_some(()))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = stop_writers(&stop, writers, || c.logs()).await?;

        let layout = store.load().await?.layout;
        let after = holders_of(&p, layout.clone());
        assert_eq!(after.len(), 3, "killed at {point}: {after:?}");
        assert_eq!(after[0], outsider, "killed at {point}: {after:?}");
        assert!(layout.extra_copies.is_empty(), "killed at {point}: {:?}", layout.extra_copies);
        for shard in &c.shards {
            let id = layout.nodes.iter().find(|n| n.addr == shard.addr).map(|n| n.id.to_string());
            let holds = c.partitions_on(shard).await?.contains(&p.to_string());
            assert_eq!(
                holds,
                id.as_ref().is_some_and(|id| after.contains(id)),
                "killed at {point}: {id:?}"
            );
        }
        let epoch = layout.epoch;
        c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
        let acked = seen.iter().flat_map(|s| &s.acked);
        assert_readable(&c.router(0), acked, &format!("killed at {point}")).await?;
        println!(
            "killed at {point}: {} writes acknowledged, {} failed (503/timeout)",
            seen[0].acked.len(),
            seen[0].failed
        );
    }
    wait_verified(&control, Duration::from_secs(30)).await?;

    // Cancelled while the joining copy has caught up but before the target leads.
    let items: Vec<_> = (0..200)
        .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": "seed", "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &c.router(0), "ck-cancel", items).await?;
    let p: PartitionKey = "ck-cancel/shared".parse()?;
    let layout = store.load().await?.layout;
    let before = holders_of(&p, layout.clone());
    let outsider = layout.nodes.iter().map(|n| n.id.to_string()).find(|id| !before.contains(id));
    let outsider = outsider.expect("a fourth node");
    set_failpoint(&control, "reconcile.flip", "pause").await?;
    let migrate = spawn_migrate(&control, "ck-cancel", &outsider)?;
    wait_phase(&store, "lead").await?;
    let resp = http.post(format!("{}/v1/migrations/cancel", control.url())).send().await?;
    assert!(resp.status().is_success(), "{}", resp.text().await?);
    set_failpoint(&control, "reconcile.flip", "off").await?;
    let out = migrate.await??;
    assert!(!out.status.success(), "a cancelled move exits non-zero");
    let layout = store.load().await?.layout;
    assert_eq!(holders_of(&p, layout.clone()), before, "the old set still holds it");
    assert!(layout.extra_copies.is_empty() && !layout.pins.contains_key(&p));
    let outsider_addr = layout.nodes.iter().find(|n| n.id.as_str() == outsider).map(|n| &n.addr);
    let outsider_proc =
        c.shards.iter().find(|s| Some(&s.addr) == outsider_addr).expect("its process");
    assert!(!c.partitions_on(outsider_proc).await?.contains(&p.to_string()), "joining copy left");
    assert!(memring_control::journal::pending(&store).await?.is_empty());
    wait_verified(&control, Duration::from_secs(30)).await?;
    Ok(())
}

fn args_tag(drain: bool) -> &'static str {
    if drain { "d" } else { "r" }
}

/// `shardctl drain NODE` or `shardctl rebalance`, running in the background.
fn spawn_shardctl(
    control: &Proc,
    args: &[&str],
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<std::process::Output>>> {
    let mut cmd = tokio::process::Command::new(binary("shardctl")?);
    cmd.args(["--control", &control.url()]).args(args);
    Ok(tokio::spawn(async move { cmd.output().await }))
}

/// A replicated drain and a replicated rebalance (R = 3, four nodes, writes running), each with
/// the control plane SIGKILLed at every journaled step of the one engine (`resize.rs`: staging,
/// flipping, settling; the failpoints `reconcile.stage`, `.flip`, `.end`), finish by themselves
/// once it is started again: the drained node ends out of the layout holding nothing, the
/// rebalanced one back in and leading, every acknowledged write readable, verify clean. Killed
/// before staging, nothing happened and the journal record is dropped; running the command again
/// then finishes it.
#[tokio::test]
async fn a_replicated_drain_and_rebalance_finish_after_a_crash_at_every_step() -> anyhow::Result<()>
{
    drain_and_rebalance_killed_at_every_step(3).await
}

/// The same with one copy of every partition: a drain and a rebalance at R = 1 are the same
/// change on the same engine, and finish the same way after a crash at any of its steps.
#[tokio::test]
async fn an_unreplicated_drain_and_rebalance_finish_after_a_crash_at_every_step()
-> anyhow::Result<()> {
    drain_and_rebalance_killed_at_every_step(1).await
}

/// The body of the two tests above, with `copies` copies of every partition.
async fn drain_and_rebalance_killed_at_every_step(copies: u32) -> anyhow::Result<()> {
    let (c, store, mut control) = replicated_cluster(4, copies).await?;
    let http = client();
    let tenants: Vec<String> = (0..3).map(|t| format!("rs{t}")).collect();
    for t in &tenants {
        let items: Vec<_> = (0..50)
            .map(|n| json!({"id": format!("s{n}"), "scope": "shared", "content": format!("seed {n}"), "embedding": vector(8, n, 0.2)}))
            .collect();
        write_batch(&http, &c.router(0), t, items).await?;
    }
    let node = NodeId::parse("shard-4")?;
    let steps = [("staging", "stage"), ("flipping", "flip"), ("settling", "end")];
    for (phase, step) in steps {
        for drain in [true, false] {
            let what = if drain { "drain shard-4" } else { "rebalance" };
            set_failpoint(&control, &format!("reconcile.{step}"), "pause").await?;
            // Fresh writer tenants each round (a writer numbers its ids from 1).
            let round: Vec<String> =
                tenants.iter().map(|t| format!("{t}-{phase}-{}", args_tag(drain))).collect();
            let (stop, _, writers) = start_writers(&c.router(0), round);
            let args: Vec<&str> = what.split(' ').collect();
            let job = spawn_shardctl(&control, &args)?;
            wait_resize_phase(&store, what, phase, Duration::from_secs(30)).await?;
            let before = store.load().await?.layout.epoch;
            control.kill();
            let _ = job.await?;
            control.start_again()?;
            control.wait_ready(Duration::from_secs(20)).await?;
            let done = |l: &ClusterLayout| {
                let member = l.node(&node).is_some();
                let settled = l.states.all_active();
                settled && member != drain
            };
            let finished = wait_for(
                &format!("{what} killed at {phase} to finish"),
                Duration::from_secs(60),
                || async {
                    let pending = memring_control::resize::pending(&store).await?;
                    let layout = store.load().await?.layout;
                    Ok(pending.is_none().then_some(layout))
                },
            )
            .await?;
            if phase == "staging" {
                assert_eq!(
                    finished.epoch, before,
                    "{what} killed before staging changed the layout"
                );
                shardctl(&control, &args).await?;
            }
            wait_for(
                &format!("{what} killed at {phase}: settled"),
                Duration::from_secs(60),
                || async {
                    let layout = store.load().await?.layout;
                    Ok(done(&layout).then_some(()))
                },
            )
            .await?;
            let seen = stop_writers(&stop, writers, || c.logs()).await?;
            let layout = store.load().await?.layout;
            c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
            let acked = seen.iter().flat_map(|s| &s.acked);
            assert_readable(&c.router(0), acked, &format!("{what} killed at {phase}")).await?;
            if drain {
                let gone = &c.shards[3];
                wait_for("the drained node to hold nothing", Duration::from_secs(30), || async {
                    Ok(c.partitions_on(gone).await?.is_empty().then_some(()))
                })
                .await?;
            }
            wait_verified(&control, Duration::from_secs(60)).await?;
            let acked: usize = seen.iter().map(|s| s.acked.len()).sum();
            println!(
                "R = {copies}, {what} killed at {phase}: finished, {acked} writes acknowledged meanwhile"
            );
        }
    }
    Ok(())
}

/// Placement by size with replication (R = 3, W = 2): with a policy of 400 memories and one
/// dedicated node, a tenant that grows past it under write load is moved — its replica set
/// re-formed around the dedicated node, which leads it, the other two copies staying on shared
/// nodes — with no failed write (writes waiting for their quorum when the epoch changes complete
/// with the new term's first entry, `rules::rebase`); the dedicated node holds nothing else; once
/// the tenant shrinks below 100 its set goes back to where the ring puts it, unpinned, and the dedicated node's
/// copy is dropped. No acknowledged write is lost and verify finds every copy equal.
#[tokio::test]
async fn with_replication_a_big_tenant_gets_a_dedicated_node_and_returns() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 5).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 3).await?;
    let flags = [
        "--replace-after-secs",
        "0",
        "--auto-rebalance",
        "true",
        "--auto-rebalance-settle-secs",
        "1",
    ];
    let control = c.start_control_with(&flags).await?;
    let policy = ["policy", "set", "--dedicate-at", "400", "--release-below", "100"];
    shardctl(&control, &[&policy[..], &["--node", "shard-4"]].concat()).await?;
    let fourth = c.start_shard("shard-4").await?;
    c.shards.push(fourth);
    let four = c.shard_id(3);
    wait_for("shard-4 admitted and leading", Duration::from_secs(60), || async {
        let l = store.load().await?.layout;
        Ok((l.node(&four).is_some() && l.may_lead(&four)).then_some(()))
    })
    .await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    assert!(c.partitions_on(&c.shards[3]).await?.is_empty(), "a dedicated node gets no share");

    let router = c.router(0);
    let http = client();
    let tenants = ["whale".to_owned(), "minnow".to_owned()];
    let (stop, _, writers) = start_writers(&router, tenants.clone());
    // The whale grows past the policy while its writer keeps writing.
    let items: Vec<_> = (0..450)
        .map(|n| json!({"id": format!("g{n}"), "scope": "shared", "content": "g", "embedding": vector(8, n, 0.4)}))
        .collect();
    write_batch(&http, &router, "whale", items).await?;
    let whale: PartitionKey = "whale/shared".parse()?;
    wait_for("the whale led from its dedicated node", Duration::from_secs(90), || async {
        let l = store.load().await?.layout;
        let ring = Ring::new(l.clone());
        let led = ring.owner(&whale).is_some_and(|o| o.id == four);
        let settled = led && l.pins.is(&whale, PinKind::Policy) && l.extra_copies.is_empty();
        let held = c.partitions_on(&c.shards[3]).await?;
        Ok((settled && held == ["whale/shared"]).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    let ring = Ring::new(store.load().await?.layout);
    let set: Vec<NodeId> = ring.replica_set(&whale).iter().map(|n| n.id.clone()).collect();
    assert_eq!(set.len(), 3, "{set:?}");
    assert_eq!(set[0], four, "{set:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    assert!(seen[0].acked.len() > 10, "the whale's writer made no progress");
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    println!("the whale moved under load: {failed} requests failed: {failures:#?}");
    assert_eq!(failed, 0, "requests failed while the whale moved: {failures:#?}\n{}", c.logs());
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    assert_readable(&router, acked.iter().copied(), "on the dedicated node").await?;

    // It shrinks below the release size: back to the ring, unpinned.
    let whale_ids =
        (0..450).map(|n| format!("g{n}")).chain(seen[0].acked.iter().map(|a| a.1.clone()));
    for id in whale_ids {
        let url = format!("{router}/v1/tenants/whale/memories/{id}?scope=shared");
        let status = http.delete(url).send().await?.status().as_u16();
        assert_eq!(status, 204, "delete {id}");
    }
    wait_for("the whale back in the ring", Duration::from_secs(90), || async {
        let l = store.load().await?.layout;
        let home = l.pins.is_empty() && l.extra_copies.is_empty();
        let left = c.partitions_on(&c.shards[3]).await?.is_empty();
        Ok((home && left).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    assert_readable(&router, seen[1].acked.iter(), "after the whale went home").await?;
    wait_verified(&control, Duration::from_secs(30)).await?;
    Ok(())
}
