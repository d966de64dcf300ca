//! Bounded logs against real shard nodes and a real etcd: logs are trimmed as writes go on, a
//! copy that comes back behind the trimmed part is re-seeded from a snapshot, and neither a
//! kill of the re-seeding node nor one of its source leaves a copy different or a write lost.
//!
//! The shard nodes of test clusters keep one second of log and a reader's pin for 10 s
//! (`--log-keep-secs 1 --log-pin-secs 10`, `memring_tests::etcd::TEST_SHARD_FLAGS`), so trimming
//! runs within the tests' time (every 5 s).

use std::time::Duration;

use anyhow::Context;

use memring_common::api::partition_path;
use memring_common::store::RingStore;
use memring_common::{PartitionKey, Ring};
use memring_tests::load::{
    assert_readable, replicated_cluster, start_writers, stop_writers, wait_for, wait_verified,
};
use memring_tests::{Proc, client, last_pos_at, metric, shardctl, vector, write_batch};
use serde_json::{Value, json};

/// `(count, checksum, last_seq)` of `partition` on the node at `addr`.
async fn sum_at(addr: &str, partition: &PartitionKey) -> anyhow::Result<(u64, String, u64)> {
    let url = format!("http://{addr}/internal/v1/migrate/{}/checksum", partition_path(partition));
    let v: Value = client().get(url).send().await?.error_for_status()?.json().await?;
    Ok((
        v["count"].as_u64().unwrap_or(0),
        v["checksum"].as_str().unwrap_or("").to_owned(),
        v["last_seq"].as_u64().unwrap_or(0),
    ))
}

/// Whether the log of `partition` on the node at `addr` starts after position `(term, seq)`
/// (asking for the entries after it is `log_trimmed`).
async fn log_starts_after(
    addr: &str,
    partition: &PartitionKey,
    (term, seq): (u64, u64),
) -> anyhow::Result<bool> {
    let url = format!(
        "http://{addr}/internal/v1/replicate/log/{}?after={seq}&term={term}&limit=1",
        partition_path(partition)
    );
    let resp = client().get(url).send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    anyhow::ensure!(status == 200 || status == 410, "asking the log after {seq}: {status} {body}");
    Ok(status == 410)
}

/// Seeds `tenant` with `n` memories in batches of 500 (8 dimensions, as the writers use).
async fn seed(router: &str, tenant: &str, n: usize) -> anyhow::Result<()> {
    let http = client();
    for start in (0..n).step_by(500) {
        let items: Vec<_> = (start..(start + 500).min(n))
            .map(|i| json!({"id": format!("s{i}"), "scope": "shared", "content": format!("seed {i}"), "embedding": vector(8, i % 8, 0.1 + (i % 7) as f32 * 0.01)}))
            .collect();
        write_batch(&http, router, tenant, items).await?;
    }
    Ok(())
}

/// Waits until every node's copy of `p` equals the others' (count, checksum and position).
async fn wait_equal_copies(
    store: &memring_common::store::etcd::EtcdStore,
    p: &PartitionKey,
) -> anyhow::Result<()> {
    wait_for(&format!("equal copies of {p}"), Duration::from_secs(60), || async {
        let ring = Ring::new(store.load().await?.layout);
        let mut sums = Vec::new();
        for node in ring.replicas(p) {
            sums.push(sum_at(&node.addr, p).await?);
        }
        Ok(sums.windows(2).all(|w| w[0] == w[1]).then_some(()))
    })
    .await
}

/// A follower killed while writes go on comes back behind its primaries' trimmed logs: it is
/// re-seeded from snapshots, its copies equal the others', `shardctl verify` is clean, and
/// every acknowledged write reads back.
#[tokio::test]
async fn a_follower_back_after_the_trim_window_is_reseeded_and_verifies() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 3).await?;
    let router = c.router(0);
    for t in 0..4 {
        seed(&router, &format!("tr{t}"), 300).await?;
    }
    let (stop, _, writers) = start_writers(&router, (0..4).map(|t| format!("tr{t}")));
    // The first node's copies: it leads some partitions and follows the others.
    let back = 2;
    c.shards[back].kill();
    wait_for("logs trimmed while a follower is away", Duration::from_secs(40), || async {
        let mut trimmed = 0.0;
        for (i, shard) in c.shards.iter().enumerate() {
            if i != back {
                trimmed += metric(shard, "memring_log_trimmed_entries_total").await?;
            }
        }
        Ok((trimmed >= 200.0).then_some(()))
    })
    .await?;
    c.shards[back].start_again()?;
    c.shards[back].wait_ready(Duration::from_secs(30)).await?;
    wait_for("the returning node re-seeded", Duration::from_secs(60), || async {
        Ok((metric(&c.shards[back], "memring_replication_reseeds_total").await? >= 1.0)
            .then_some(()))
    })
    .await
    .with_context(|| c.logs())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    assert!(acked.len() > 50, "the writers made no progress: {}", acked.len());
    for t in 0..4 {
        wait_equal_copies(&store, &format!("tr{t}/shared").parse()?).await?;
    }
    let report = wait_verified(&control, Duration::from_secs(60)).await?;
    // Writes answered 503 (no quorum yet) stay and replicate too: at least the acknowledged.
    let memories = report["memories"].as_u64().unwrap_or(0);
    assert!(memories >= 3 * (1200 + acked.len() as u64) && memories % 3 == 0, "{report}");
    assert_readable(&router, acked.iter().copied(), "after the re-seed").await?;
    let verify = shardctl(&control, &["verify"]).await?;
    println!("{verify}");
    Ok(())
}

/// The memories of the partition whose copy `a_reseed_killed_on_either_side_…` kills.
const BIG: usize = 24_000;

/// SIGKILL of the re-seeding node in the middle of its copy, and then of the copy's source in
/// the middle of the next one: each time the copy starts over (the re-seed mark survives the
/// kill) and ends complete and equal.
#[tokio::test]
async fn a_reseed_killed_on_either_side_ends_complete_and_verified() -> anyhow::Result<()> {
    let (mut c, store, control) = replicated_cluster(3, 3).await?;
    let router = c.router(0);
    let p: PartitionKey = "big/shared".parse()?;
    // Big enough that its copy outlasts the poll below and the node's log writes (one run in
    // many saw a copy of 12,000 finish before the test could kill it).
    seed(&router, "big", BIG).await?;
    let ring = Ring::new(store.load().await?.layout);
    let set = ring.replicas(&p);
    let index_of =
        |addr: &str| c.shards.iter().position(|s| s.addr == addr).expect("a shard process");
    let (primary, follower) = (index_of(&set[0].addr), index_of(&set[2].addr));

    // The follower may already have been re-seeded while the seed ran (it fell a trimmed stretch
    // behind): start from equal copies, and count its re-seeds from here.
    wait_equal_copies(&store, &p).await?;
    let left_at = last_pos_at(&set[2].addr, &p).await?;

    // The follower misses a trimmed stretch of the log. A trim held back by a copy not yet
    // caught up waits for the partition's next write, and one held by the pin of a re-seed
    // during the seed waits for the pin to lapse (10 s in tests): rounds go on until the
    // primary's log starts after where the follower left.
    c.shards[follower].kill();
    let http = client();
    let mut rounds = 0;
    loop {
        let items: Vec<_> = (0..200)
            .map(|i| json!({"id": format!("s{i}"), "scope": "shared", "content": format!("round {rounds}"), "embedding": vector(8, i % 8, 0.3)}))
            .collect();
        write_batch(&http, &router, "big", items).await?;
        rounds += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if rounds >= 6 && log_starts_after(&c.shards[primary].addr, &p, left_at).await? {
            break;
        }
        anyhow::ensure!(rounds < 40, "the primary never trimmed past {left_at:?}");
    }

    // Kill the follower as soon as its re-seed has begun (the log line of the drop).
    let count = |shard: &Proc, line: &str| shard.log_text().matches(line).count();
    let (begun_before, done_before) = (
        count(&c.shards[follower], "dropped to be re-seeded"),
        count(&c.shards[follower], "copy re-seeded"),
    );
    c.shards[follower].start_again()?;
    c.shards[follower].wait_ready(Duration::from_secs(30)).await?;
    // Polled closely: the copy takes about a second.
    let begun = |c: &memring_tests::etcd::EtcdCluster, n: usize| {
        let started = std::time::Instant::now();
        while count(&c.shards[follower], "dropped to be re-seeded") < begun_before + n {
            assert!(started.elapsed() < Duration::from_secs(30), "no re-seed began\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    begun(&c, 1);
    assert!(
        count(&c.shards[follower], "copy re-seeded") == done_before,
        "the copy was too quick\n{}",
        c.shards[follower].log_tail()
    );
    c.shards[follower].kill();
    c.shards[follower].start_again()?;
    c.shards[follower].wait_ready(Duration::from_secs(30)).await?;
    // The mark made it start over; kill the source as soon as the new attempt begins.
    begun(&c, 2);
    c.shards[primary].kill();
    // Writes go on against the remaining two copies once the failover has moved the lead.
    let (stop, _, writers) = start_writers(&router, ["big".to_owned()]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.shards[primary].start_again()?;
    c.shards[primary].wait_ready(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    wait_equal_copies(&store, &p).await?;
    let report = wait_verified(&control, Duration::from_secs(90)).await?;
    let memories = report["memories"].as_u64().unwrap_or(0);
    assert!(memories >= 3 * (BIG as u64 + acked.len() as u64) && memories % 3 == 0, "{report}");
    assert_readable(&router, acked.iter().copied(), "after both kills").await?;
    let v: Value = http
        .get(format!("{router}/v1/tenants/big/memories/s7?scope=shared"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["content"], format!("round {}", rounds - 1), "{v}");
    Ok(())
}

/// A migration (a replicated move to a fourth node) runs while logs are trimmed and one
/// follower is paused: the new copy is re-seeded or replays what it needs, the paused follower
/// is re-seeded once resumed, and nothing acknowledged is lost.
#[tokio::test]
async fn a_move_while_logs_are_trimmed_and_a_follower_is_paused_loses_nothing() -> anyhow::Result<()>
{
    let (c, store, control) = replicated_cluster(4, 3).await?;
    let router = c.router(0);
    seed(&router, "mv", 2000).await?;
    let p: PartitionKey = "mv/shared".parse()?;
    let layout = store.load().await?.layout;
    let ring = Ring::new(layout.clone());
    let set: Vec<String> = ring.replicas(&p).iter().map(|n| n.addr.clone()).collect();
    let paused = c.shards.iter().find(|s| s.addr == set[2]).expect("the third copy");
    let outsider = layout
        .nodes
        .iter()
        .find(|n| !set.contains(&n.addr))
        .map(|n| n.id.to_string())
        .expect("a fourth node");
    let (stop, _, writers) = start_writers(&router, ["mv".into(), "other".into()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The move starts; a member of the set is paused while it runs, long enough for the primary
    // to trim past it; shardctl may give up while a node is unreachable, and running it again
    // finishes the move (its steps are recorded in the layout).
    let mut cmd = tokio::process::Command::new(memring_tests::binary("shardctl")?);
    cmd.args(["--control", &control.url(), "migrate", "--tenant", "mv", "--to", &outsider]);
    let first = tokio::spawn(async move { cmd.output().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    paused.pause()?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    paused.resume()?;
    let first = first.await??;
    println!(
        "first run: {}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    if !first.status.success() {
        let again = wait_for("the move finished", Duration::from_secs(90), || async {
            Ok(shardctl(&control, &["migrate", "--tenant", "mv", "--to", &outsider]).await.ok())
        })
        .await?;
        println!("run again: {again}");
    }
    let ring_now = Ring::new(store.load().await?.layout);
    assert_eq!(ring_now.owner(&p).map(|o| o.id.to_string()), Some(outsider.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<_> = seen.iter().flat_map(|s| &s.acked).collect();
    assert!(seen[0].acked.len() > 10, "the moved tenant's writer made no progress");
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    assert_readable(&router, acked.iter().copied(), "after the move").await?;
    wait_equal_copies(&store, &p).await?;
    let report = wait_verified(&control, Duration::from_secs(90))
        .await
        .with_context(|| format!("{}\n{}", c.logs(), control.log_tail()))?;
    println!("verify after the move: {report}");
    let trimmed: f64 = {
        let mut sum = 0.0;
        for shard in &c.shards {
            sum += metric(shard, "memring_log_trimmed_entries_total").await?;
        }
        sum
    };
    assert!(trimmed > 0.0, "no log was trimmed during the test");
    Ok(())
}
