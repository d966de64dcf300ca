//! `memring-bench`: a reproducible load test of a local memring cluster.
//!
//! It starts its own cluster (the release binaries beside it, 3 shard nodes + 1 router, temp
//! dirs), generates seeded *clustered* data (each tenant's vectors scatter around a few random
//! centers, like real embeddings do; uniform random vectors have no neighbourhoods and make
//! recall meaningless), spreads it over tenants with Zipf-skewed sizes, loads it through the
//! router in batches (each memory's content 12 words of a Zipf pseudo-word vocabulary), then
//! measures search throughput and latency at two concurrencies — by vector, by keyword (three
//! words of the same vocabulary) and hybrid (both, fused by RRF) — recall@10
//! against an exact scan computed here, and the router's overhead (p50 through the router minus
//! p50 straight to the owning shard node, same queries). It prints a Markdown report.
//!
//! Searches are timed in the steady state: the first searches load the indexes (big partitions
//! answer by exact scan while their HNSW graphs are built in the background), and the timed runs
//! start once no shard node is building a graph; how long that took is reported on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use memring_common::store::RingStore;
use memring_common::store::embedded::EmbeddedStore;
use memring_common::{PartitionKey, Ring, Scope, TenantId};
use memring_tests::Cluster;
use memring_tests::data::{around, gaussian, unit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(name = "memring-bench", about = "load and measure a local memring cluster")]
struct Args {
    /// Total vectors.
    #[arg(long, default_value_t = 100_000)]
    vectors: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// Tenants (sizes follow Zipf with exponent 1).
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Queries per measured run.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Items per batch write.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent batch writers.
    #[arg(long, default_value_t = 4)]
    ingest_concurrency: usize,
    /// Shard nodes.
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seconds to wait after the graph builds before timing (for shard binaries that do not
    /// export `memring_index_builds_running`, e.g. an older build to compare with).
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
    /// Extra flags for every shard node, e.g. "--flat-limit=2048".
    #[arg(long)]
    shard_flag: Vec<String>,
    /// Measure filtered vector search on the largest tenant instead of the usual report:
    /// metadata filters keeping about 50%, 5% and 0.5% of it, and a range keeping 5%, against
    /// the same search unfiltered (recall@10 against an exact filtered scan, latency).
    #[arg(long)]
    filters: bool,
}

struct Tenant {
    id: String,
    vectors: Vec<Vec<f32>>,
    centers: Vec<Vec<f32>>,
}

fn generate(args: &Args) -> Vec<Tenant> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let harmonic: f64 = (1..=args.tenants).map(|i| 1.0 / i as f64).sum();
    let spread = 1.0 / (args.dims as f32).sqrt();
    (0..args.tenants)
        .map(|i| {
            let size =
                ((args.vectors as f64 / harmonic) / (i + 1) as f64).round().max(1.0) as usize;
            let n_centers = (size / 200).clamp(4, 64);
            let centers: Vec<Vec<f32>> = (0..n_centers)
                .map(|_| unit((0..args.dims).map(|_| gaussian(&mut rng)).collect()))
                .collect();
            let vectors =
                (0..size).map(|j| around(&centers[j % n_centers], spread, &mut rng)).collect();
            Tenant { id: format!("tenant-{i:03}"), vectors, centers }
        })
        .collect()
}

fn exact_top(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    exact_top_among(vectors, 0..vectors.len(), q, k)
}

/// The exact top `k` of `vectors[i]` for the `i` in `among`.
fn exact_top_among(
    vectors: &[Vec<f32>],
    among: impl Iterator<Item = usize>,
    q: &[f32],
    k: usize,
) -> Vec<usize> {
    let qn = unit(q.to_vec());
    let mut scored: Vec<(f32, usize)> =
        among.map(|i| (vectors[i].iter().zip(&qn).map(|(a, b)| a * b).sum::<f32>(), i)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct Query {
    tenant: usize,
    /// The same question three ways: by vector, by words (keyword), by both (hybrid).
    bodies: [bytes::Bytes; 3],
    vector: Vec<f32>,
}

/// Search modes of [`Query::bodies`], in order.
const MODES: [&str; 3] = ["vector", "keyword", "hybrid"];

/// A pseudo-word vocabulary with Zipf(1) frequencies: memories' content and queries' words.
struct Words {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Words {
    fn new(n: usize, rng: &mut StdRng) -> Self {
        let letters = b"abcdefghijklmnopqrstuvwxyz";
        let words = (0..n)
            .map(|_| {
                let len = rng.random_range(3..9);
                (0..len).map(|_| letters[rng.random_range(0..26)] as char).collect()
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Self { words, cumulative }
    }

    fn pick(&self, rng: &mut StdRng) -> &str {
        let at = rng.random_range(0.0..self.cumulative.last().copied().unwrap_or(1.0));
        let i = self.cumulative.partition_point(|c| *c < at).min(self.words.len() - 1);
        &self.words[i]
    }

    fn text(&self, n: usize, rng: &mut StdRng) -> String {
        (0..n).map(|_| self.pick(rng)).collect::<Vec<_>>().join(" ")
    }
}

/// Memory `n`'s metadata. With `filters`, fields that the filtered searches select on, drawn from
/// a hash of `n` so that no field lines up with the vectors' clusters (`n % centers`).
fn metadata(n: usize, filters: bool) -> serde_json::Value {
    if !filters {
        return json!({"n": n % 10});
    }
    let h = splitmix(n as u64);
    json!({
        "n": n % 10,
        "half": h % 2,
        "twentieth": (h >> 8) % 20,
        "bucket": (h >> 16) % 200,
        "rank": (h >> 32) % 1000,
    })
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One filtered search of `--filters`: a name, the filter, and which memories pass it.
type FilterCase = (&'static str, serde_json::Value, fn(&serde_json::Value) -> bool);

/// The filtered searches of `--filters`.
fn filter_cases() -> Vec<FilterCase> {
    vec![
        ("none", json!(null), |_| true),
        ("equality, 50%", json!({"half": 0}), |m| m["half"] == 0),
        ("equality, 5%", json!({"twentieth": 0}), |m| m["twentieth"] == 0),
        ("equality, 0.5%", json!({"bucket": 0}), |m| m["bucket"] == 0),
        ("$in, 5%", json!({"bucket": {"$in": (0..10).collect::<Vec<_>>()}}), |m| {
            m["bucket"].as_u64().is_some_and(|b| b < 10)
        }),
        ("range $gte/$lt, 5%", json!({"rank": {"$gte": 100, "$lt": 150}}), |m| {
            m["rank"].as_u64().is_some_and(|r| (100..150).contains(&r))
        }),
    ]
}

async fn run_queries(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    queries: Arc<Vec<Query>>,
    concurrency: usize,
    total: usize,
    mode: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, urls, queries, next) =
            (client.clone(), urls.clone(), queries.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let q = &queries[i % queries.len()];
                let body = q.bodies[mode].clone();
                let t = Instant::now();
                let resp = client
                    .post(&urls[i % queries.len()])
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                anyhow::ensure!(status.is_success(), "search answered {status}");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok((wall, all))
}

/// Batch bodies of `(tenant, vectors)` with ids `<prefix><n>`.
fn make_batches(
    router: &str,
    data: &[(&str, Vec<Vec<f32>>)],
    batch: usize,
    prefix: &str,
    words: &Words,
    rng: &mut StdRng,
    filters: bool,
) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut batches = Vec::new();
    for (tenant, vectors) in data {
        for (c, chunk) in vectors.chunks(batch).enumerate() {
            let items: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    let n = c * batch + j;
                    json!({"id": format!("{prefix}{n}"), "scope": "shared", "content": words.text(12, rng), "embedding": v, "metadata": metadata(n, filters)})
                })
                .collect();
            let body = serde_json::to_vec(&json!({"items": items}))?;
            batches.push((format!("{router}/v1/tenants/{tenant}/memories:batch"), body.into()));
        }
    }
    Ok(batches)
}

/// Sends every batch with `concurrency` writers; fails on any item error. Returns the wall time.
async fn ingest_all(
    client: &reqwest::Client,
    batches: Vec<(String, bytes::Bytes)>,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let batches = Arc::new(batches);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, batches, next) = (client.clone(), batches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((url, body)) = batches.get(i) else { return Ok::<_, anyhow::Error>(()) };
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "batch answered {}", resp.status());
                let v: serde_json::Value = resp.json().await?;
                let bad = v["results"]
                    .as_array()
                    .map(|r| r.iter().filter(|x| x.get("error").is_some()).count())
                    .unwrap_or(1);
                anyhow::ensure!(bad == 0, "{bad} items failed: {}", v["results"][0]);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!(
        "generating {} × {} clustered vectors over {} tenants (seed {})…",
        args.vectors, args.dims, args.tenants, args.seed
    );
    let tenants = generate(&args);
    let total: usize = tenants.iter().map(|t| t.vectors.len()).sum();
    let largest = tenants.iter().map(|t| t.vectors.len()).max().unwrap_or(0);
    let flags: Vec<&str> = args.shard_flag.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(args.shards, &flags).await.context("starting the cluster")?;
    let client = memring_common::tls::http_client_builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let router = cluster.url();

    // ---- ingest (cold: partitions' indexes are built on their first search)
    eprintln!("loading {total} vectors in batches of {}…", args.batch);
    let cold: Vec<(&str, Vec<Vec<f32>>)> =
        tenants.iter().map(|t| (t.id.as_str(), t.vectors.clone())).collect();
    let mut word_rng = StdRng::seed_from_u64(args.seed ^ 0x0057_0bd5);
    let words = Words::new(2000, &mut word_rng);
    let batches =
        make_batches(&router, &cold, args.batch, "v", &words, &mut word_rng, args.filters)?;
    let ingest = ingest_all(&client, batches, args.ingest_concurrency).await?;

    let ingest_rate = total as f64 / ingest.as_secs_f64();
    eprintln!(
        "ingest: {total} vectors in {:.1} s = {ingest_rate:.0} vectors/s",
        ingest.as_secs_f64()
    );

    // ---- queries: tenants drawn by size (Zipf), each query near one of the tenant's centers.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let spread = 1.0 / (args.dims as f32).sqrt();
    let store = EmbeddedStore::open(cluster.ring_dir())?;
    let ring = Ring::new(store.load().await?.layout);
    let mut queries = Vec::with_capacity(args.queries);
    let mut direct_urls = Vec::new();
    let mut router_urls = Vec::new();
    for _ in 0..args.queries {
        let mut pick = rng.random_range(0..total);
        let mut tenant = 0;
        while pick >= tenants[tenant].vectors.len() {
            pick -= tenants[tenant].vectors.len();
            tenant += 1;
        }
        let t = &tenants[tenant];
        let center = &t.centers[rng.random_range(0..t.centers.len())];
        let vector = around(center, spread, &mut rng);
        let text = words.text(3, &mut word_rng);
        let body =
            serde_json::to_vec(&json!({"scopes": ["shared"], "embedding": vector, "k": 10}))?;
        let keyword = serde_json::to_vec(
            &json!({"scopes": ["shared"], "query": text, "mode": "keyword", "k": 10}),
        )?;
        let hybrid = serde_json::to_vec(
            &json!({"scopes": ["shared"], "query": text, "embedding": vector, "k": 10}),
        )?;
        let partition = PartitionKey::new(&TenantId::parse(&t.id)?, &Scope::Shared);
        let owner = ring.owner(&partition).context("empty ring")?;
        direct_urls.push(format!("http://{}/internal/v1/p/{}/shared/search", owner.addr, t.id));
        router_urls.push(format!("{router}/v1/tenants/{}/memories/search", t.id));
        queries.push(Query {
            tenant,
            bodies: [body.into(), keyword.into(), hybrid.into()],
            vector,
        });
    }
    let queries = Arc::new(queries);
    let router_urls = Arc::new(router_urls);
    let direct_urls = Arc::new(direct_urls);

    // ---- the first searches load the indexes; big partitions answer by exact scan while their
    // graphs are built in the background. Steady state: every graph built (the time to full
    // speed is reported on its own).
    let first_search = Instant::now();
    run_queries(&client, router_urls.clone(), queries.clone(), 8, queries.len(), 0).await?;
    let full_speed = wait_for_graphs(&client, &cluster, first_search).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    eprintln!("full speed {:.1} s after the first search", full_speed.as_secs_f64());

    // ---- recall@10 against an exact scan, of the graphs
    let mut hits = 0usize;
    for (i, q) in queries.iter().enumerate() {
        let truth = exact_top(&tenants[q.tenant].vectors, &q.vector, 10);
        let resp: serde_json::Value = client
            .post(&router_urls[i])
            .header("content-type", "application/json")
            .body(q.bodies[0].clone())
            .send()
            .await?
            .json()
            .await?;
        let got: Vec<usize> = resp["results"]
            .as_array()
            .map(|r| {
                r.iter().filter_map(|h| h["id"].as_str()?.strip_prefix('v')?.parse().ok()).collect()
            })
            .unwrap_or_default();
        hits += truth.iter().filter(|t| got.contains(t)).count();
    }
    let recall = hits as f64 / (queries.len() * 10) as f64;
    eprintln!("recall@10: {recall:.4}");

    if args.filters {
        let largest = (0..tenants.len()).max_by_key(|&i| tenants[i].vectors.len()).unwrap_or(0);
        return filtered(&args, &client, &router, &tenants[largest], &mut rng).await;
    }

    // ---- warm-up, then throughput and latency
    let mut rows = Vec::new();
    for (mode, name) in MODES.iter().enumerate() {
        run_queries(&client, router_urls.clone(), queries.clone(), 8, queries.len(), mode).await?;
        for concurrency in [1usize, 8] {
            let n = if concurrency == 1 { queries.len() } else { queries.len() * 3 };
            let (wall, lat) =
                run_queries(&client, router_urls.clone(), queries.clone(), concurrency, n, mode)
                    .await?;
            let qps = n as f64 / wall.as_secs_f64();
            eprintln!(
                "{name} search c={concurrency}: {qps:.0} q/s, p50 {:?}, p99 {:?}",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
            rows.push((
                MODES[mode],
                concurrency,
                qps,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
            ));
        }
    }

    // ---- router overhead: same queries, one at a time, through the router and straight to the owner
    let mut via_router = Vec::new();
    let mut direct = Vec::new();
    for round in 0..2 {
        let (_, r) =
            run_queries(&client, router_urls.clone(), queries.clone(), 1, queries.len(), 0).await?;
        let (_, d) =
            run_queries(&client, direct_urls.clone(), queries.clone(), 1, queries.len(), 0).await?;
        if round == 1 {
            via_router = r;
            direct = d;
        }
    }
    let (p50_router, p50_direct) = (percentile(&via_router, 0.5), percentile(&direct, 0.5));
    let overhead = p50_router.as_secs_f64() - p50_direct.as_secs_f64();
    // One bare loopback HTTP round trip (GET /health on the router), the floor of what a hop costs here.
    let mut bare = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let resp = client.get(format!("{router}/health")).send().await?;
        let _ = resp.bytes().await?;
        bare.push(t.elapsed());
    }
    bare.sort();
    let p50_bare = percentile(&bare, 0.5);

    // ---- warm ingest: 10% more vectors into partitions whose indexes are loaded, so every write
    // also inserts into HNSW (or the flat index) before it is acknowledged.
    let warm: Vec<(&str, Vec<Vec<f32>>)> = tenants
        .iter()
        .map(|t| {
            let n = (t.vectors.len() / 10).max(1);
            (
                t.id.as_str(),
                (0..n).map(|j| around(&t.centers[j % t.centers.len()], spread, &mut rng)).collect(),
            )
        })
        .collect();
    let warm_total: usize = warm.iter().map(|(_, v)| v.len()).sum();
    let warm_time = ingest_all(
        &client,
        make_batches(&router, &warm, args.batch, "w", &words, &mut word_rng, false)?,
        args.ingest_concurrency,
    )
    .await?;
    let warm_rate = warm_total as f64 / warm_time.as_secs_f64();
    eprintln!("warm ingest: {warm_total} vectors = {warm_rate:.0} vectors/s");

    println!("| setting | value |\n|---|---|");
    println!(
        "| data | {total} vectors × {} dims, clustered (seed {}), {} tenants, Zipf sizes (largest {largest}) |",
        args.dims, args.seed, args.tenants
    );
    println!(
        "| cluster | {} shard nodes + 1 router, embedded ring store, release build, all on this machine |",
        args.shards
    );
    println!("| machine | {} |", machine());
    println!();
    println!("| measure | result |\n|---|---|");
    println!(
        "| ingest (batches of {}, {} writers) | {ingest_rate:.0} vectors/s ({total} in {:.1} s) |",
        args.batch,
        args.ingest_concurrency,
        ingest.as_secs_f64()
    );
    println!(
        "| ingest into loaded indexes ({warm_total} more vectors) | {warm_rate:.0} vectors/s ({:.1} s) |",
        warm_time.as_secs_f64()
    );
    println!("| recall@10 vs exact ({} queries) | {recall:.4} |", queries.len());
    println!(
        "| time to full speed (every graph built, from the first search) | {:.1} s |",
        full_speed.as_secs_f64()
    );
    for (mode, c, qps, p50, p99) in &rows {
        println!(
            "| {mode} search, concurrency {c} | {qps:.0} q/s, p50 {:.0} µs, p99 {:.0} µs |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    println!(
        "| p50 via router / direct to owner | {:.0} µs / {:.0} µs |",
        p50_router.as_secs_f64() * 1e6,
        p50_direct.as_secs_f64() * 1e6
    );
    println!("| router overhead at p50 | {:.0} µs |", overhead * 1e6);
    println!(
        "| one bare HTTP round trip (GET /health), p50 | {:.0} µs |",
        p50_bare.as_secs_f64() * 1e6
    );
    drop(cluster);
    Ok(())
}

/// Waits until no shard node is building an index graph (`memring_index_builds_running` is 0
/// everywhere); returns the time since `since`.
async fn wait_for_graphs(
    client: &reqwest::Client,
    cluster: &Cluster,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut running = 0.0;
        for shard in &cluster.shards {
            let text = client.get(format!("{}/metrics", shard.url())).send().await?.text().await?;
            running += text
                .lines()
                .find_map(|l| l.strip_prefix("memring_index_builds_running "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        if running <= 0.0 {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "graphs still building after 10 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This machine's cores and CPU model, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// `--filters`: vector searches of `tenant` under each of [`filter_cases`], one at a time (p50,
/// p99) and 8 at a time (q/s), with recall@10 against an exact scan of the memories that pass.
async fn filtered(
    args: &Args,
    client: &reqwest::Client,
    router: &str,
    tenant: &Tenant,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let spread = 1.0 / (args.dims as f32).sqrt();
    let url = Arc::new(vec![format!("{router}/v1/tenants/{}/memories/search", tenant.id)]);
    let metadata: Vec<serde_json::Value> =
        (0..tenant.vectors.len()).map(|n| metadata(n, true)).collect();
    let vectors: Vec<Vec<f32>> = (0..args.queries.min(500))
        .map(|_| around(&tenant.centers[rng.random_range(0..tenant.centers.len())], spread, rng))
        .collect();
    let mut rows = Vec::new();
    for (name, filter, passes) in filter_cases() {
        let passing: Vec<usize> = (0..metadata.len()).filter(|&n| passes(&metadata[n])).collect();
        let queries: Vec<Query> = vectors
            .iter()
            .map(|v| {
                let mut body = json!({"scopes": ["shared"], "embedding": v, "k": 10});
                if !filter.is_null() {
                    body["filter"] = json!({ "metadata": filter });
                }
                let body: bytes::Bytes = serde_json::to_vec(&body).unwrap_or_default().into();
                Query { tenant: 0, bodies: [body.clone(), body.clone(), body], vector: v.clone() }
            })
            .collect();
        // recall@10 against the exact top 10 of the passing memories
        let mut hits = 0usize;
        let mut wanted = 0usize;
        for q in &queries {
            let truth = exact_top_among(&tenant.vectors, passing.iter().copied(), &q.vector, 10);
            let resp: serde_json::Value = client
                .post(&url[0])
                .header("content-type", "application/json")
                .body(q.bodies[0].clone())
                .send()
                .await?
                .json()
                .await?;
            let got: Vec<usize> = resp["results"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|h| h["id"].as_str()?.strip_prefix('v')?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            anyhow::ensure!(
                got.iter().all(|n| passes(&metadata[*n])),
                "{name}: a result does not pass the filter"
            );
            wanted += truth.len();
            hits += truth.iter().filter(|t| got.contains(t)).count();
        }
        let recall = hits as f64 / wanted.max(1) as f64;
        let queries = Arc::new(queries);
        let urls = Arc::new(vec![url[0].clone(); queries.len()]);
        run_queries(client, urls.clone(), queries.clone(), 8, queries.len(), 0).await?;
        let (_, one) =
            run_queries(client, urls.clone(), queries.clone(), 1, queries.len(), 0).await?;
        let n = queries.len() * 3;
        let (wall, _) = run_queries(client, urls, queries.clone(), 8, n, 0).await?;
        let row = (name, passing.len(), recall, percentile(&one, 0.5), percentile(&one, 0.99));
        eprintln!("{name}: {} pass, recall@10 {recall:.4}, p50 {:?}", row.1, row.3);
        rows.push((row, n as f64 / wall.as_secs_f64()));
    }
    let base = rows.first().map(|((_, _, _, p50, _), _)| p50.as_secs_f64()).unwrap_or(1.0);
    println!("| setting | value |\n|---|---|");
    println!(
        "| data | one partition of {} vectors × {} dims, clustered (seed {}); metadata fields drawn from a hash of the id |",
        tenant.vectors.len(),
        args.dims,
        args.seed
    );
    println!(
        "| cluster | {} shard nodes + 1 router, release build, shard flags: {} |",
        args.shards,
        if args.shard_flag.is_empty() { "none".to_owned() } else { args.shard_flag.join(" ") }
    );
    println!("| machine | {} |", machine());
    println!();
    println!(
        "| filter | passing | recall@10 vs exact filtered | p50 | p99 | p50 ÷ unfiltered | q/s, 8 at a time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, passing, recall, p50, p99), qps) in rows {
        println!(
            "| {name} | {passing} | {recall:.4} | {:.0} µs | {:.0} µs | {:.2} | {qps:.0} |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p50.as_secs_f64() / base,
        );
    }
    Ok(())
}
