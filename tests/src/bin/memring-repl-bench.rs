//! `memring-repl-bench`: what replication costs a write.
//!
//! Starts etcd, 3 shard nodes and a router (all on this machine), then for replication factors
//! 1, 2 and 3 (write quorum: the default majority, so 1, 2 and 2 copies acknowledged) sends the
//! same writes — one at a time for latency, then 8 at a time for throughput — and prints a
//! Markdown table. Then, with R = 3, it searches one hot partition 8 at a time through a router
//! with replica reads on and through one with them off, and prints the rates and which copies
//! answered (the shard nodes' `memring_shard_reads_total`). With `--rounds N` it measures the
//! factors N times in turn, each round on new tenants (a factor's new followers first copy what
//! earlier rounds wrote), and ends the write table with each factor's mean writes/s and its ratio
//! to the first factor's: on a shared machine one round's ratio moves with the machine.
//!
//! With `--scale-tenants 1000,100000` (`make bench-scale`) it measures instead what many tenants
//! cost a replicated cluster (R = 3, W = 2): beside a few big tenants (`--big-tenants` of
//! `--big-size` memories) it adds tenants of 1–10 memories (Zipf) up to each count, waits until
//! every copy is caught up, the logs are trimmed (the nodes keep `--log-keep-secs`, default 10
//! here) and the nodes are quiet, then measures each shard node's CPU (and the router's and a
//! control plane's, whose autopilot is on as in `make cluster`) over a quiet interval (from
//! `/proc/<pid>/stat`), its resident memory and its data directory's size (against the stored
//! memories' own bytes, `memring_shard_memory_bytes`), searches of random small tenants, and
//! single and 8-in-flight writes to other tenants; then it restarts the first shard node and,
//! once the cluster has settled (failover re-admitted it and handed its leadership back, every
//! copy caught up, the epoch still for 10 s; the time to that is printed) and 10 s more have
//! passed, measures each node's CPU over the same quiet interval; one row per count. Last, it
//! deletes the big tenants and reports the data directories' size 30 s to 5 min later.

use std::time::{Duration, Instant};

use clap::Parser;
use memring_common::store::RingStore;
use memring_tests::etcd::EtcdCluster;
use memring_tests::vector;
use serde_json::json;

/// The shard nodes' default `--log-keep-secs`.
const PRODUCTION_LOG_KEEP_SECS: u64 = 600;

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
    /// Measure scale instead (`make bench-scale`): tenant counts to grow to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    scale_tenants: Vec<usize>,
    /// With `--scale-tenants`: big tenants beside the small ones.
    #[arg(long, default_value_t = 3)]
    big_tenants: usize,
    /// With `--scale-tenants`: memories in each big tenant.
    #[arg(long, default_value_t = 20_000)]
    big_size: usize,
    /// Seconds of quiet over which idle CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// The shard nodes' `--log-keep-secs` (how soon a log is trimmed): by default production's
    /// 600, and 10 with `--scale-tenants`, whose disk figures are taken once that window and
    /// two trim rounds have passed.
    #[arg(long)]
    log_keep_secs: Option<u64>,
    /// Replication factors to measure, comma-separated (each after the one before).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2, 3])]
    copies: Vec<u32>,
    /// Measure the `--copies` list this many times, one factor after the other, each round on
    /// tenants of its own; with more than one, a summary follows: each factor's writes/s over the
    /// rounds and its ratio to the first factor's (a shared machine's drift reaches both).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

impl Args {
    /// The shard nodes' `--log-keep-secs` (see the flag).
    fn keep_secs(&self) -> u64 {
        let default = if self.scale_tenants.is_empty() { PRODUCTION_LOG_KEEP_SECS } else { 10 };
        self.log_keep_secs.unwrap_or(default)
    }
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Test clusters trim logs after a second; the bench keeps what production keeps unless
    // told otherwise (the scale mode waits for trimmed logs, so it keeps less).
    let keep = args.keep_secs().to_string();
    let flags = ["--log-keep-secs", keep.as_str()];
    let mut c = if args.internal_auth {
        EtcdCluster::start_with_shard_flags(3, 1, 10, &flags).await?
    } else {
        EtcdCluster::start_without_internal_auth(3, 1, 10, &flags).await?
    };
    println!(
        "internal authentication (cluster token): {}",
        if args.internal_auth { "on" } else { "off" }
    );
    if !args.scale_tenants.is_empty() {
        return scale(&mut c, &args).await;
    }
    let owner_only = c.add_router(&["--replica-reads", "false"]).await?;
    let store = c.etcd.store().await?;
    let router = c.router(0);
    let http = memring_common::tls::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    println!(
        "| copies (R) | acknowledged after (W) | write p50 | write p99 | writes/s, 8 at a time | CPU per write, 8 at a time: shard nodes / router | machine idle meanwhile | follower rounds per write (entries per round) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Writes/s of each factor, round after round.
    let mut rates: Vec<(u32, Vec<f64>)> = args.copies.iter().map(|&r| (r, Vec::new())).collect();
    for (round, &r) in (0..args.rounds.max(1)).flat_map(|i| args.copies.iter().map(move |r| (i, r)))
    {
        memring_control::layout::set_replication(&store, r, None).await?;
        let layout = store.load().await?.layout;
        c.wait_shards_epoch(layout.epoch).await?;
        c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
        // New followers first copy what earlier rounds wrote: measured once that is done.
        if r > 1 {
            caught_up(&c).await?;
        }
        let write = |n: usize| {
            let (http, router) = (http.clone(), router.clone());
            let body = json!({"id": format!("r{r}-{n}"), "scope": "shared", "content": "x", "embedding": vector(args.dims, n, 0.2)});
            async move {
                let t = Instant::now();
                let resp = http
                    .post(format!("{router}/v1/tenants/bench{round}-{}/memories", n % 20))
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
        let shards: Vec<u32> = c.shards.iter().filter_map(memring_tests::Proc::pid).collect();
        let router_pid = c.routers[0].pid();
        let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<anyhow::Result<f64>>();
        let (shards_before, router_before) = (cpu(&shards)?, cpu(router_pid.as_slice())?);
        let rounds_before = replication_rounds(&c.shards).await?;
        let idle_before = machine_idle_secs();
        let started = Instant::now();
        in_flight(8, (0..args.writes).map(|n| write(2_000_000 + n))).await?;
        let took_all = started.elapsed().as_secs_f64();
        let rate = args.writes as f64 / took_all;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let idle = (machine_idle_secs() - idle_before) / (took_all * cores) * 100.0;
        let per_write = |now: f64, before: f64| (now - before) * 1000.0 / args.writes as f64;
        let (cpu_shards, cpu_router) = (
            per_write(cpu(&shards)?, shards_before),
            per_write(cpu(router_pid.as_slice())?, router_before),
        );
        if let Some((_, seen)) = rates.iter_mut().find(|(f, _)| *f == r) {
            seen.push(rate);
        }
        let rounds_after = replication_rounds(&c.shards).await?;
        let rounds = rounds_after.0 - rounds_before.0;
        let entries = rounds_after.1 - rounds_before.1;
        println!(
            "| {r} | {} | {:.2} ms | {:.2} ms | {rate:.0} | {cpu_shards:.3} / {cpu_router:.3} ms | {idle:.0}% | {:.2} ({:.2}) |",
            layout.write_quorum(),
            pct(&took, 0.5),
            pct(&took, 0.99),
            rounds / args.writes as f64,
            if rounds > 0.0 { entries / rounds } else { 0.0 },
        );
    }

    if args.rounds > 1 {
        print_summary(&rates);
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
            async move { timed_search(&http, &router, "hot", &body).await }
        };
        for n in 0..200 {
            search(n).await?;
        }
        let before = c.reads_by_role().await?;
        let started = Instant::now();
        let mut took = in_flight(8, (0..args.searches).map(search)).await?;
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

/// Each factor's writes/s (8 at a time) over the rounds, and the ratio of its mean to the first
/// factor's.
fn print_summary(rates: &[(u32, Vec<f64>)]) {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = rates.first().map_or(0.0, |(_, v)| mean(v));
    println!();
    println!(
        "| copies (R) | rounds | writes/s, 8 at a time: mean (lowest – highest) | ÷ R = {} (means) |",
        rates.first().map_or(0, |(r, _)| *r)
    );
    println!("|---|---|---|---|");
    for (r, v) in rates {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let ratio = if base > 0.0 { mean(v) / base } else { 0.0 };
        println!("| {r} | {} | {:.0} ({lo:.0} – {hi:.0}) | {ratio:.2} |", v.len(), mean(v));
    }
}

/// One search of `tenant` through `router`: how long it took (an error unless 200).
async fn timed_search(
    http: &reqwest::Client,
    router: &str,
    tenant: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let resp = http
        .post(format!("{router}/v1/tenants/{tenant}/memories/search"))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status().as_u16() == 200, "search answered {}", resp.status());
    Ok(t.elapsed())
}

/// Runs `work` with at most `width` at a time; their results in the order they finished.
async fn in_flight<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    width: usize,
    work: impl Iterator<Item = F>,
) -> anyhow::Result<Vec<T>> {
    use futures::StreamExt;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut out = Vec::new();
    for w in work {
        pending.push(w);
        if pending.len() >= width
            && let Some(done) = pending.next().await
        {
            out.push(done?);
        }
    }
    while let Some(done) = pending.next().await {
        out.push(done?);
    }
    Ok(out)
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

/// Seconds every core of the machine has spent idle since boot, from `/proc/stat`.
fn machine_idle_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait …", in clock ticks of USER_HZ (100 per second).
    stat.lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
        .map_or(0.0, |ticks| ticks / 100.0)
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

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A shard node's `/metrics` page.
async fn metrics_page(shard: &memring_tests::Proc) -> anyhow::Result<String> {
    let url = format!("{}/metrics", shard.url());
    Ok(memring_tests::client().get(url).send().await?.text().await?)
}

/// Follower rounds and entries applied from poll answers, summed over `shards` (the
/// `memring_replication_rounds_total` and `…_inlined_entries_total` counters).
async fn replication_rounds(shards: &[memring_tests::Proc]) -> anyhow::Result<(f64, f64)> {
    let mut sums = (0.0, 0.0);
    for shard in shards {
        let page = metrics_page(shard).await?;
        sums.0 += gauge(&page, "memring_replication_rounds_total");
        sums.1 += gauge(&page, "memring_replication_inlined_entries_total");
    }
    Ok(sums)
}

/// A gauge's (or counter's) value from a Prometheus text page.
fn gauge(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// 1 to 10 memories, Zipf (P(k) ∝ 1/k).
fn zipf_size(rng: &mut rand::rngs::StdRng) -> usize {
    use rand::Rng;
    let total: f64 = (1..=10).map(|k| 1.0 / k as f64).sum();
    let mut pick = rng.random::<f64>() * total;
    for k in 1..=10 {
        pick -= 1.0 / k as f64;
        if pick <= 0.0 {
            return k;
        }
    }
    10
}

/// Writes `items` to `tenant` in batches, retrying what a first write's take-over refuses.
async fn load_tenant(
    http: &reqwest::Client,
    router: &str,
    tenant: &str,
    items: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    for chunk in items.chunks(500) {
        let mut tries = 0;
        loop {
            match memring_tests::write_batch(http, router, tenant, chunk.to_vec()).await {
                Ok(()) => break,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Waits (up to 30 minutes) until every shard node says each copy it follows has caught up.
async fn caught_up(c: &EtcdCluster) -> anyhow::Result<()> {
    memring_tests::load::wait_for("every copy caught up", Duration::from_secs(1800), || async {
        Ok(c.all_caught_up().await?.then_some(()))
    })
    .await
}

/// The CPU of each of `procs` over `secs` seconds from now, in % of a core.
async fn idle_cpu(procs: &[&memring_tests::Proc], secs: u64) -> anyhow::Result<Vec<f64>> {
    let pids: Vec<u32> = procs.iter().filter_map(|p| p.pid()).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect::<Result<_, _>>()?;
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let took = quiet.elapsed().as_secs_f64();
    let after: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect::<Result<_, _>>()?;
    Ok(before.iter().zip(&after).map(|(b, a)| (a - b) / took * 100.0).collect())
}

/// The `--scale-tenants` measurement (see the module notes).
async fn scale(c: &mut EtcdCluster, args: &Args) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let store = c.etcd.store().await?;
    memring_control::layout::set_replication(&store, 3, None).await?;
    let layout = store.load().await?.layout;
    c.wait_shards_epoch(layout.epoch).await?;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    // A control plane as `make cluster` runs one (the autopilot on), for its idle cost.
    let control = c.start_control_with(&["--auto-rebalance", "true"]).await?;
    let router = c.router(0);
    let http = memring_tests::client();
    let dims = args.dims;
    // Dense embeddings, as real ones are (a sparse test vector compresses to nearly nothing and
    // would hide what the disk holds).
    let memory = |n: usize, id: String| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
        let v: Vec<f32> = (0..dims).map(|_| memring_tests::data::gaussian(&mut rng)).collect();
        json!({"id": id, "scope": "shared", "content": format!("memory {n} of a small tenant"), "embedding": memring_tests::data::unit(v)})
    };
    let write = |tenant: String, id: String, n: usize| {
        let (http, router) = (http.clone(), router.clone());
        let body = memory(n, id);
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
    let search = |tenant: String, n: usize| {
        let (http, router) = (http.clone(), router.clone());
        let body = json!({"scopes": ["shared"], "embedding": vector(dims, n, 0.3), "k": 10});
        async move { timed_search(&http, &router, &tenant, &body).await }
    };
    // The big tenants first: the same at every tenant count.
    for b in 0..args.big_tenants {
        let items = (0..args.big_size).map(|n| memory(n, format!("b{n}"))).collect();
        load_tenant(&http, &router, &format!("big{b}"), items).await?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut memories = args.big_tenants * args.big_size;
    println!(
        "replicated cluster (R = 3, W = 2, 3 shard nodes and a router on this machine); tenants of \
         1-10 memories (Zipf) beside {} of {} memories, {dims} dims:",
        args.big_tenants, args.big_size
    );
    println!();
    println!(
        "| tenants | memories | load | idle CPU per node (% of a core) | idle CPU: router / control plane | idle CPU per node after the first restarts | RSS per node | write p50 / p99 | writes/s, 8 at a time | search p50 / p99 (random tenants) | data dir per node | SST files ÷ stored bytes | data dir per memory copy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut have = 0;
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
    for &target in &args.scale_tenants {
        let started = Instant::now();
        let mut loads = Vec::with_capacity(target.saturating_sub(have));
        for n in have..target {
            let size = zipf_size(&mut rng);
            memories += size;
            let items: Vec<serde_json::Value> =
                (0..size).map(|i| memory(n + i, format!("m{i}"))).collect();
            let (http, router) = (http.clone(), router.clone());
            loads.push(
                async move { load_tenant(&http, &router, &format!("small{n}"), items).await },
            );
        }
        in_flight(32, loads.into_iter()).await?;
        let load = started.elapsed();
        have = target;
        caught_up(c).await?;
        // Quiet: let what the load started settle — the logs trimmed (the window and a round),
        // then no partition left waiting for its trim and no compaction pending on any node (up
        // to two minutes) — then measure.
        tokio::time::sleep(Duration::from_secs(args.keep_secs() + 10)).await;
        let settled = Instant::now();
        while settled.elapsed() < Duration::from_secs(120) {
            let mut busy = 0.0;
            for shard in &c.shards {
                let page = metrics_page(shard).await?;
                busy += gauge(&page, "memring_log_trim_waiting_partitions")
                    + gauge(&page, "memring_rocksdb_pending_compaction_bytes");
            }
            if busy == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Two more metric rounds, so the figures read below are from after the settling.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut procs: Vec<&memring_tests::Proc> = c.shards.iter().collect();
        procs.extend([&c.routers[0], &control]);
        let mut cpu = idle_cpu(&procs, args.idle_secs).await?;
        let others = cpu.split_off(c.shards.len());
        let pids: Vec<u32> = c.shards.iter().filter_map(memring_tests::Proc::pid).collect();
        let rss: Vec<String> = pids
            .iter()
            .map(|p| rss_mib(*p).map(|m| format!("{m:.0}")))
            .collect::<Result<_, _>>()?;
        let (mut disk, mut stored, mut sst) = (Vec::new(), 0.0, 0.0);
        for (i, shard) in c.shards.iter().enumerate() {
            disk.push(disk_bytes(&c.dir.path().join(c.shard_id(i).as_str())));
            let page = metrics_page(shard).await?;
            stored += gauge(&page, "memring_shard_memory_bytes");
            sst += gauge(&page, "memring_rocksdb_sst_bytes");
        }
        let disk_total: u64 = disk.iter().sum();
        // Searches of random small tenants, one at a time (the first of each loads its index).
        let mut took = Vec::with_capacity(args.searches);
        for n in 0..args.searches {
            took.push(search(format!("small{}", rng.random_range(0..have)), n).await?);
        }
        took.sort();
        let (search_p50, search_p99) = (pct(&took, 0.5), pct(&took, 0.99));
        for n in 0..50 {
            write("hot".into(), format!("warm{n}"), n).await?;
        }
        let mut took = Vec::with_capacity(args.writes);
        for n in 0..args.writes {
            took.push(write("hot".into(), format!("t{target}-{n}"), n).await?);
        }
        took.sort();
        let rate_started = Instant::now();
        let busy =
            (0..args.writes).map(|n| write(format!("busy{}", n % 20), format!("t{target}-{n}"), n));
        in_flight(8, busy).await?;
        let rate = args.writes as f64 / rate_started.elapsed().as_secs_f64();
        // A node that restarts and has nothing written to it after: failover marks it down,
        // re-admits it and hands its leadership back (three epochs), then every node settles
        // back to idle.
        let restarting = Instant::now();
        c.shards[0].restart()?;
        c.shards[0].wait_ready(Duration::from_secs(120)).await?;
        c.wait_settled(Duration::from_secs(10), Duration::from_secs(600)).await?;
        let settling = restarting.elapsed();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let shards: Vec<&memring_tests::Proc> = c.shards.iter().collect();
        let restarted = idle_cpu(&shards, args.idle_secs).await?;
        let mib = |b: u64| format!("{:.0}", b as f64 / (1 << 20) as f64);
        let shares =
            |cpu: &[f64]| cpu.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" / ");
        println!(
            "| {target} | {memories} | {:.0} s | {} | {} | {} (settled after {:.0} s) | {} MiB | {:.2} / {:.2} ms | {rate:.0} | {search_p50:.2} / {search_p99:.2} ms | {} MiB | {:.2} | {:.0} B |",
            load.as_secs_f64(),
            shares(&cpu),
            shares(&others),
            shares(&restarted),
            settling.as_secs_f64(),
            rss.join(" / "),
            pct(&took, 0.5),
            pct(&took, 0.99),
            disk.iter().map(|d| mib(*d)).collect::<Vec<_>>().join(" / "),
            sst / stored.max(1.0),
            disk_total as f64 / (memories * 3) as f64,
        );
        rows.push((target, pct(&took, 0.5), rate));
    }
    // Deleting the big tenants: how soon their space is back.
    let disk_now = || -> Vec<u64> {
        (0..c.shards.len())
            .map(|i| disk_bytes(&c.dir.path().join(c.shard_id(i).as_str())))
            .collect()
    };
    let before = disk_now();
    for b in 0..args.big_tenants {
        let resp = http.delete(format!("{router}/v1/tenants/big{b}")).send().await?;
        anyhow::ensure!(resp.status().is_success(), "tenant deletion answered {}", resp.status());
    }
    let deleted = Instant::now();
    let mut samples = Vec::new();
    for at in [30u64, 60, 120, 300] {
        let wait = Duration::from_secs(at).saturating_sub(deleted.elapsed());
        tokio::time::sleep(wait).await;
        samples.push((at, disk_now()));
    }
    let mib = |b: &[u64]| {
        b.iter()
            .map(|d| format!("{:.0}", *d as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!();
    println!(
        "deleting the {} big tenants ({} memories each): disk per node {} MiB before",
        args.big_tenants,
        args.big_size,
        mib(&before)
    );
    for (at, disk) in &samples {
        println!("- {at} s after: {} MiB", mib(disk));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && rows.len() > 1
    {
        println!();
        println!(
            "{} vs {} tenants: write p50 {:.2}×, writes/s {:.2}×",
            last.0,
            first.0,
            last.1 / first.1.max(1e-9),
            last.2 / first.2.max(1e-9)
        );
    }
    Ok(())
}
