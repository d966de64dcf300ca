//! `memring-repl-bench`: what replication costs a write.
//!
//! Starts etcd, 3 shard nodes and a router (all on this machine), then for replication factors
//! 1, 2 and 3 (write quorum: the default majority, so 1, 2 and 2 copies acknowledged) sends the
//! same writes — one at a time for latency, then 8 at a time for throughput — and prints a
//! Markdown table. Then, with R = 3, it searches one hot partition 8 at a time through a router
//! with replica reads on and through one with them off, and prints the rates and which copies
//! answered (the shard nodes' `memring_shard_reads_total`).
//!
//! With `--idle-tenants 1000,100000` it measures instead what idle partitions cost a replicated
//! cluster (R = 3, W = 2): it adds one-memory tenants up to each count, waits until every copy
//! is caught up, then measures each shard node's CPU over a quiet interval (from
//! `/proc/<pid>/stat`) and its resident memory, and single-write and 8-in-flight writes to
//! other tenants, one row per count.

use std::time::{Duration, Instant};

use clap::Parser;
use memring_common::store::RingStore;
use memring_tests::etcd::EtcdCluster;
use memring_tests::vector;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "memring-repl-bench")]
struct Args {
    /// Writes per measurement.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Embedding dimensions.
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// Memories in the hot partition of the read measurement.
    #[arg(long, default_value_t = 5000)]
    hot: usize,
    /// Searches per read measurement.
    #[arg(long, default_value_t = 4000)]
    searches: usize,
    /// Internal traffic carries (and shard nodes check) the cluster token, as in production;
    /// false measures what that costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    internal_auth: bool,
    /// Measure idle partitions instead: tenant counts to grow to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    idle_tenants: Vec<usize>,
    /// Seconds of quiet over which idle CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c = if args.internal_auth {
        EtcdCluster::start(3, 1, 10).await?
    } else {
        EtcdCluster::start_without_internal_auth(3, 1, 10).await?
    };
    println!(
        "internal authentication (cluster token): {}",
        if args.internal_auth { "on" } else { "off" }
    );
    if !args.idle_tenants.is_empty() {
        return idle_partitions(&mut c, &args).await;
    }
    let owner_only = c.add_router(&["--replica-reads", "false"]).await?;
    let store = c.etcd.store().await?;
    let router = c.router(0);
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    println!(
        "| copies (R) | acknowledged after (W) | write p50 | write p99 | writes/s, 8 at a time |"
    );
    println!("|---|---|---|---|---|");
    for r in [1u32, 2, 3] {
        memring_control::layout::set_replication(&store, r, None).await?;
        let layout = store.load().await?.layout;
        c.wait_shards_epoch(layout.epoch).await?;
        c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
        let write = |n: usize| {
            let (http, router) = (http.clone(), router.clone());
            let body = json!({"id": format!("r{r}-{n}"), "scope": "shared", "content": "x", "embedding": vector(args.dims, n, 0.2)});
            async move {
                let t = Instant::now();
                let resp = http
                    .post(format!("{router}/v1/tenants/bench{}/memories", n % 20))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 201, "write answered {}", resp.status());
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        };
        for n in 0..100 {
            write(1_000_000 + n).await?;
        }
        let mut took = Vec::with_capacity(args.writes);
        for n in 0..args.writes {
            took.push(write(n).await?);
        }
        took.sort();
        let started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        use futures::StreamExt;
        for n in 0..args.writes {
            pending.push(write(2_000_000 + n));
            if pending.len() == 8
                && let Some(done) = pending.next().await
            {
                done?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        let rate = args.writes as f64 / started.elapsed().as_secs_f64();
        println!(
            "| {r} | {} | {:.2} ms | {:.2} ms | {rate:.0} |",
            layout.write_quorum(),
            pct(&took, 0.5),
            pct(&took, 0.99)
        );
    }

    // Reads of one hot partition with R = 3: through a router with replica reads, then one without.
    let items: Vec<serde_json::Value> = (0..args.hot)
        .map(|n| json!({"id": format!("h{n}"), "scope": "shared", "content": format!("hot {n}"), "embedding": vector(args.dims, n, 0.2)}))
        .collect();
    for chunk in items.chunks(500) {
        memring_tests::write_batch(&http, &router, "hot", chunk.to_vec()).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!();
    println!(
        "| reads of one partition (R = 3, 8 at a time) | searches/s | search p50 | search p99 | answered by primary / followers |"
    );
    println!("|---|---|---|---|---|");
    for (label, r) in [("replica reads on", 0usize), ("replica reads off (owner only)", owner_only)]
    {
        let router = c.router(r);
        let search = |n: usize| {
            let (http, router) = (http.clone(), router.clone());
            let body =
                json!({"scopes": ["shared"], "embedding": vector(args.dims, n * 7, 0.3), "k": 10});
            async move {
                let t = Instant::now();
                let resp = http
                    .post(format!("{router}/v1/tenants/hot/memories/search"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 200, "search answered {}", resp.status());
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        };
        for n in 0..200 {
            search(n).await?;
        }
        let before = c.reads_by_role().await?;
        let started = Instant::now();
        let mut took = Vec::with_capacity(args.searches);
        let mut pending = futures::stream::FuturesUnordered::new();
        use futures::StreamExt;
        for n in 0..args.searches {
            pending.push(search(n));
            if pending.len() == 8
                && let Some(done) = pending.next().await
            {
                took.push(done?);
            }
        }
        while let Some(done) = pending.next().await {
            took.push(done?);
        }
        let rate = args.searches as f64 / started.elapsed().as_secs_f64();
        took.sort();
        let after = c.reads_by_role().await?;
        println!(
            "| {label} | {rate:.0} | {:.2} ms | {:.2} ms | {:.0} / {:.0} |",
            pct(&took, 0.5),
            pct(&took, 0.99),
            after.0 - before.0,
            after.1 - before.1
        );
    }
    Ok(())
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state.
    // In clock ticks of USER_HZ, 100 per second on Linux.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(kib / 1024.0)
}

/// The `--idle-tenants` measurement (see the module notes).
async fn idle_partitions(c: &mut EtcdCluster, args: &Args) -> anyhow::Result<()> {
    use futures::StreamExt;
    let store = c.etcd.store().await?;
    memring_control::layout::set_replication(&store, 3, None).await?;
    let layout = store.load().await?.layout;
    c.wait_shards_epoch(layout.epoch).await?;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    let router = c.router(0);
    let http = memring_tests::client();
    let write = |tenant: String, id: String, dims: usize, n: usize| {
        let (http, router) = (http.clone(), router.clone());
        let body =
            json!({"id": id, "scope": "shared", "content": "x", "embedding": vector(dims, n, 0.2)});
        async move {
            let t = Instant::now();
            for _ in 0..50 {
                let resp = http
                    .post(format!("{router}/v1/tenants/{tenant}/memories"))
                    .json(&body)
                    .send()
                    .await?;
                match resp.status().as_u16() {
                    201 | 200 => return Ok::<_, anyhow::Error>(t.elapsed()),
                    // A first write to a partition may wait for its take-over: retried.
                    503 => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => anyhow::bail!("write answered {other}: {}", resp.text().await?),
                }
            }
            anyhow::bail!("a write to {tenant} kept answering 503")
        }
    };
    println!("replicated cluster (R = 3, W = 2, 3 shard nodes on this machine), idle partitions:");
    println!();
    println!(
        "| tenants (partitions per node) | load time | idle CPU per node (% of a core) | RSS per node | write p50 | write p99 | writes/s, 8 at a time |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut have = 0;
    for &target in &args.idle_tenants {
        let started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for n in have..target {
            pending.push(write(format!("idle{n}"), "m".into(), 8, n));
            if pending.len() >= 32
                && let Some(done) = pending.next().await
            {
                done?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        let load = started.elapsed();
        have = target;
        memring_tests::load::wait_for(
            "every copy caught up",
            Duration::from_secs(1800),
            || async {
                let mut all = true;
                for shard in &c.shards {
                    let url = format!("http://{}/internal/v1/replicate/status", shard.addr);
                    let status: serde_json::Value =
                        memring_tests::client().get(&url).send().await?.json().await?;
                    all &= status["caught_up"] == true;
                }
                Ok(all.then_some(()))
            },
        )
        .await?;
        // Quiet: let anything the load started settle, then measure.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pids: Vec<u32> = c.shards.iter().filter_map(memring_tests::Proc::pid).collect();
        let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect::<Result<_, _>>()?;
        let quiet = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let secs = quiet.elapsed().as_secs_f64();
        let after: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect::<Result<_, _>>()?;
        let cpu: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| format!("{:.2}", (a - b) / secs * 100.0))
            .collect();
        let rss: Vec<String> = pids
            .iter()
            .map(|p| rss_mib(*p).map(|m| format!("{m:.0}")))
            .collect::<Result<_, _>>()?;
        for n in 0..50 {
            write("hot".into(), format!("warm{n}"), args.dims, n).await?;
        }
        let mut took = Vec::with_capacity(args.writes);
        for n in 0..args.writes {
            took.push(write("hot".into(), format!("t{target}-{n}"), args.dims, n).await?);
        }
        took.sort();
        let rate_started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for n in 0..args.writes {
            pending.push(write(format!("busy{}", n % 20), format!("t{target}-{n}"), args.dims, n));
            if pending.len() == 8
                && let Some(done) = pending.next().await
            {
                done?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        let rate = args.writes as f64 / rate_started.elapsed().as_secs_f64();
        println!(
            "| {target} | {:.0} s | {} | {} MiB | {:.2} ms | {:.2} ms | {rate:.0} |",
            load.as_secs_f64(),
            cpu.join(" / "),
            rss.join(" / "),
            pct(&took, 0.5),
            pct(&took, 0.99)
        );
    }
    Ok(())
}
