//! `memring-migrate-bench`: online migration and rebalance, measured.
//!
//! 1. A 100,000-memory tenant (384-d clustered vectors) is migrated to another node with
//!    `POST /v1/migrations` while a paced writer sends 500 writes/s to it: reports memories/s
//!    moved and the slowest write any client saw during the run (the hand-over's pause).
//! 2. 2,000 small tenants over 3 nodes, a 4th node joins: the rebalance plan's moved fraction
//!    against the ideal (the new node's ring share). With `--join` the rebalance is then run
//!    (`POST /v1/rebalance`, `control-plane/src/resize.rs`) while the paced writer writes to the
//!    small tenants: its wall time and the slowest write.
//!
//! It starts its own cluster (3 shard nodes, router, control plane, embedded ring store) in a
//! temporary directory and prints a Markdown report. With `--copies 2` the layout keeps two
//! copies of every partition and the tenant moves to the node outside its set; the join then
//! adds copies (the fractions count copies). Either way the move is
//! `control-plane/src/migrate.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use memring_common::store::RingStore;
use memring_common::store::embedded::EmbeddedStore;
use memring_common::{PartitionKey, Ring, Scope, TenantId};
use memring_tests::Cluster;
use memring_tests::data::{around, centers};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "memring-migrate-bench")]
struct Args {
    /// Memories in the migrated tenant.
    #[arg(long, default_value_t = 100_000)]
    memories: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// Writes per second to the tenant during the migration.
    #[arg(long, default_value_t = 500)]
    writes_per_sec: u64,
    /// Tenants for the rebalance measurement.
    #[arg(long, default_value_t = 2000)]
    rebalance_tenants: usize,
    /// Memories per second a migration may copy (0: unlimited), passed to the control plane.
    #[arg(long, default_value_t = 0)]
    migration_rate: u64,
    /// Search the migrated tenant before it moves, so its source holds the HNSW graph in memory
    /// and hands it over (a hot tenant); without it the tenant is only written (a cold one).
    #[arg(long)]
    hot: bool,
    /// Idle tenants of one small memory each, loaded before the move (so each node holds many
    /// partitions the move does not touch: what a move costs must not grow with them).
    #[arg(long, default_value_t = 0)]
    idle_tenants: usize,
    /// Run the rebalance that admits the 4th node, under writes to the small tenants, and
    /// time it.
    #[arg(long)]
    join: bool,
    /// Copies of every partition (the layout's replication factor): 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    copies: u32,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// A paced writer: one write every 1/`rate` s to `tenants` in turn (ids `live{i}`, vectors
/// around `cs`), each on its own task so a slow one does not hold the pace, until `stop`.
/// What a paced writer saw.
struct Written {
    /// Writes sent.
    sent: usize,
    /// Writes that did not answer 201.
    failed: usize,
    /// The slowest write's latency.
    slowest: Duration,
    /// When the slowest write was sent.
    slowest_sent: Instant,
}

/// Returns what it saw.
fn spawn_writer(
    http: reqwest::Client,
    router: String,
    tenants: Vec<String>,
    cs: Vec<Vec<f32>>,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Written>> {
    tokio::spawn(async move {
        let dims = cs.first().map(Vec::len).unwrap_or(1);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        let mut tasks = Vec::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) {
            tick.tick().await;
            let body = json!({"id": format!("live{i}"), "scope": "shared", "content": "live", "embedding": around(&cs[i % cs.len()], 1.0 / (dims as f32).sqrt(), &mut rng)});
            let tenant = &tenants[i % tenants.len()];
            let (http, url) = (http.clone(), format!("{router}/v1/tenants/{tenant}/memories"));
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let ok = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 201)
                    .unwrap_or(false);
                (sent.elapsed(), sent, ok)
            }));
            i += 1;
        }
        let mut slowest = (Duration::ZERO, Instant::now());
        let mut failed = 0usize;
        for t in tasks {
            let (took, sent, ok) = t.await?;
            if took > slowest.0 {
                slowest = (took, sent);
            }
            failed += usize::from(!ok);
        }
        Ok::<_, anyhow::Error>(Written {
            sent: i,
            failed,
            slowest: slowest.0,
            slowest_sent: slowest.1,
        })
    })
}

/// Watches the router's layout epoch (`GET /v1/ring`, every 100 ms; it reads no partition, so
/// watching does not load the nodes) until `stop`: when each new epoch was first seen, named by
/// the step of a layout change that makes it (stage, flip, end; a fourth and later: "epoch N").
fn spawn_step_watch(
    http: reqwest::Client,
    router: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    tokio::spawn(async move {
        let mut seen: Vec<(String, Instant)> = Vec::new();
        let mut first = None;
        let mut last = None;
        while !stop.load(Ordering::Acquire) {
            let ring = http.get(format!("{router}/v1/ring")).send().await;
            let epoch = match ring {
                Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| v["epoch"].as_u64()),
                Err(_) => None,
            };
            if let Some(epoch) = epoch.filter(|e| last != Some(*e)) {
                let base = *first.get_or_insert(epoch);
                let step = match epoch - base {
                    0 => None,
                    1 => Some("staged".to_owned()),
                    2 => Some("flipped".to_owned()),
                    3 => Some("ended".to_owned()),
                    _ => Some(format!("epoch {epoch}")),
                };
                seen.extend(step.map(|s| (s, Instant::now())));
                last = Some(epoch);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// Runs searches against `tenants` (2 at a time) until `stop`; returns the latencies, sorted.
fn spawn_searcher(
    http: reqwest::Client,
    router: String,
    tenants: Vec<String>,
    query: Vec<f32>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..2 {
            let (http, router, tenants, query, stop) =
                (http.clone(), router.clone(), tenants.clone(), query.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = w;
                while !stop.load(Ordering::Acquire) {
                    let body = json!({"scopes": ["shared"], "embedding": query, "k": 10});
                    let t = Instant::now();
                    let ok = http
                        .post(format!(
                            "{router}/v1/tenants/{}/memories/search",
                            tenants[i % tenants.len()]
                        ))
                        .json(&body)
                        .send()
                        .await
                        .is_ok();
                    if ok {
                        lat.push(t.elapsed());
                    }
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort();
        all
    })
}

/// Searches `tenant`'s shared scope until it answers in full (a cold index answers 503 or
/// `partial` while it builds): milliseconds until then, and how many answers were not full.
async fn timed_search(
    http: &reqwest::Client,
    router: &str,
    tenant: &str,
    query: &[f32],
) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let mut misses = 0;
    while t.elapsed() < Duration::from_secs(120) {
        let resp = http
            .post(format!("{router}/v1/tenants/{tenant}/memories/search"))
            .json(&json!({"scopes": ["shared"], "embedding": query, "k": 10}))
            .send()
            .await?;
        if resp.status().is_success() {
            let body: serde_json::Value = resp.json().await?;
            if !body["partial"].as_bool().unwrap_or(false) {
                return Ok((t.elapsed().as_secs_f64() * 1000.0, misses));
            }
        }
        misses += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{tenant} never answered a full search")
}

fn p99(sorted: &[Duration]) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * 0.99).round() as usize)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = Cluster::start(3).await?;
    let rate_flag = args.migration_rate.to_string();
    let control = cluster.start_control_with(&["--migration-rate", &rate_flag]).await?;
    let router = cluster.url();
    let http = memring_common::tls::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let spread = 1.0 / (args.dims as f32).sqrt();
    let cs = centers(64, args.dims, &mut rng);
    let store = EmbeddedStore::open(cluster.ring_dir())?;
    if args.copies > 1 {
        memring_control::layout::set_replication(&store, args.copies, None).await?;
        let epoch = store.load().await?.layout.epoch;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, ring) = cluster.get("/v1/ring").await?;
            if ring["epoch"].as_u64().unwrap_or(0) >= epoch {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the router never saw epoch {epoch}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The shard nodes watch the same store.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    if args.idle_tenants > 0 {
        use futures::StreamExt;
        eprintln!("loading {} idle tenants…", args.idle_tenants);
        let started = Instant::now();
        let loads = futures::stream::iter(0..args.idle_tenants).map(|t| {
            let (http, router) = (http.clone(), router.clone());
            async move {
                let body = json!({"id": "m", "scope": "shared", "content": "idle", "embedding": [1.0, t as f32]});
                let url = format!("{router}/v1/tenants/idle{t}/memories");
                let resp = http.post(url).json(&body).send().await?;
                anyhow::ensure!(resp.status().is_success(), "idle tenant {t}: {}", resp.status());
                anyhow::Ok(())
            }
        });
        let loaded: Vec<anyhow::Result<()>> = loads.buffer_unordered(32).collect().await;
        loaded.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    }

    eprintln!("loading {} memories into tenant whale…", args.memories);
    let started = Instant::now();
    for chunk in 0..args.memories.div_ceil(500) {
        let items: Vec<_> = (chunk * 500..((chunk + 1) * 500).min(args.memories))
            .map(|n| json!({"id": format!("w{n}"), "scope": "shared", "content": format!("memory {n}"), "embedding": around(&cs[n % 64], spread, &mut rng)}))
            .collect();
        memring_tests::write_batch(&http, &router, "whale", items).await?;
    }
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    // A hot tenant is searched before it moves, so its source has the graph in memory.
    let whale_query = around(&cs[5], spread, &mut rng);
    let before = if args.hot {
        let (cold_ms, cold_misses) = timed_search(&http, &router, "whale", &whale_query).await?;
        let (warm_ms, _) = timed_search(&http, &router, "whale", &whale_query).await?;
        format!(
            "before the move: first {cold_ms:.0} ms ({cold_misses} refused while its graph was built), then {warm_ms:.1} ms"
        )
    } else {
        "not searched before the move (cold)".to_owned()
    };
    eprintln!("whale: {before}");

    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse("whale")?, &Scope::Shared);
    let source = ring.owner(&partition).ok_or_else(|| anyhow::anyhow!("empty ring"))?.clone();
    // A node without a copy of the tenant (with two copies of three nodes, the one outside its
    // set).
    let set = ring.replicas(&partition);
    let target = ring
        .layout()
        .nodes
        .iter()
        .find(|n| set.iter().all(|m| m.id != n.id))
        .ok_or_else(|| anyhow::anyhow!("every node holds the tenant"))?
        .clone();

    // Bystanders: tenants living on the source and target nodes, searched before and during the
    // migration to see what it costs the busy nodes.
    let mut bystanders = Vec::new();
    for t in 0..400 {
        let name = format!("bystander{t}");
        let owner = ring
            .owner(&PartitionKey::new(&TenantId::parse(&name)?, &Scope::Shared))
            .map(|o| o.id.clone());
        if owner.as_ref() == Some(&source.id) || owner.as_ref() == Some(&target.id) {
            let items: Vec<_> = (0..1000).map(|n| json!({"id": format!("b{n}"), "scope": "shared", "content": "x", "embedding": around(&cs[n % 64], spread, &mut rng)})).collect();
            http.post(format!("{router}/v1/tenants/{name}/memories:batch"))
                .json(&json!({"items": items}))
                .send()
                .await?
                .error_for_status()?;
            bystanders.push(name);
        }
        if bystanders.len() == 4 {
            break;
        }
    }
    let query = around(&cs[3], spread, &mut rng);
    let idle_stop = Arc::new(AtomicBool::new(false));
    let idle = spawn_searcher(
        http.clone(),
        router.clone(),
        bystanders.clone(),
        query.clone(),
        idle_stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    idle_stop.store(true, Ordering::Release);
    let idle = idle.await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(
        http.clone(),
        router.clone(),
        vec!["whale".to_owned()],
        cs.clone(),
        args.writes_per_sec,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writes alone, before any migration: what the load itself costs the searches.
    let writes_stop = Arc::new(AtomicBool::new(false));
    let writes_only = spawn_searcher(
        http.clone(),
        router.clone(),
        bystanders.clone(),
        query.clone(),
        writes_stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    writes_stop.store(true, Ordering::Release);
    let writes_only = writes_only.await?;
    let busy_stop = Arc::new(AtomicBool::new(false));
    let busy = spawn_searcher(
        http.clone(),
        router.clone(),
        bystanders.clone(),
        query.clone(),
        busy_stop.clone(),
    );
    eprintln!(
        "migrating whale/shared {} -> {} under {} writes/s…",
        source.id, target.id, args.writes_per_sec
    );
    let resp = match http
        .post(format!("{}/v1/migrations", control.url()))
        .json(&json!({"tenant": "whale", "scope": "shared", "to": target.id}))
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("{}\n{}", control.log_tail(), cluster.logs());
            return Err(e.into());
        }
    };
    anyhow::ensure!(
        resp.status().is_success(),
        "migration answered {}: {}",
        resp.status(),
        resp.text().await?
    );
    let reports: serde_json::Value = resp.json().await?;
    let report = &reports[0];
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let Written { sent: writes, failed, slowest, .. } = writer.await??;
    busy_stop.store(true, Ordering::Release);
    let busy = busy.await?;
    let (moved_first_ms, moved_misses) =
        timed_search(&http, &router, "whale", &whale_query).await?;
    let (moved_next_ms, _) = timed_search(&http, &router, "whale", &whale_query).await?;
    let i = cluster
        .shards
        .iter()
        .position(|p| p.log.file_stem().and_then(|s| s.to_str()) == Some(target.id.as_str()))
        .ok_or_else(|| anyhow::anyhow!("target process not found"))?;
    // The graph the target took from the source with its copy (counted by the target).
    let graph_bytes =
        memring_tests::metric(&cluster.shards[i], "memring_replication_graph_bytes_total").await?;
    // A clean restart of the node that now holds the tenant: its loaded graph is kept.
    let restart = {
        let started = Instant::now();
        cluster.shards[i].restart()?;
        cluster.shards[i].wait_ready(Duration::from_secs(120)).await?;
        let ready = started.elapsed().as_secs_f64();
        let (first_ms, refused) = timed_search(&http, &router, "whale", &whale_query).await?;
        format!("SIGTERM → ready {ready:.1} s; first search {first_ms:.0} ms ({refused} refused)")
    };
    let took_ms = report["took_ms"].as_f64().unwrap_or(0.0);
    let count = report["count"].as_f64().unwrap_or(0.0);
    eprintln!("migration: {report}");

    // Rebalance plan: many small tenants, a 4th node joins.
    let rebalance;
    let mut joined = None;
    // The 4th node lives to the end: the cluster view is timed with it in the layout.
    let _fourth;
    {
        eprintln!("loading {} small tenants for the rebalance plan…", args.rebalance_tenants);
        for t in 0..args.rebalance_tenants {
            let items: Vec<_> = (0..10).map(|n| json!({"id": format!("m{n}"), "scope": "shared", "content": "x", "embedding": [1.0, n as f32]})).collect();
            let resp = http
                .post(format!("{router}/v1/tenants/small{t}/memories:batch"))
                .json(&json!({"items": items}))
                .send()
                .await?;
            anyhow::ensure!(resp.status().is_success());
        }
        _fourth = cluster.start_shard("shard-4", &["--join-ring", "false"]).await?;
        let plan: serde_json::Value =
            http.get(format!("{}/v1/rebalance", control.url())).send().await?.json().await?;
        let moved = plan["plan"]["moved_fraction"].as_f64().unwrap_or(0.0);
        let ideal = plan["plan"]["ideal_fraction"].as_f64().unwrap_or(0.0);
        let moves = plan["plan"]["moves"].as_array().map(Vec::len).unwrap_or(0);
        let partitions = plan["plan"]["partitions"].as_u64().unwrap_or(0);
        rebalance = Some((moved, ideal, moves, partitions));
        if args.join {
            let small: Vec<String> =
                (0..args.rebalance_tenants.max(1)).map(|t| format!("small{t}")).collect();
            let stop = Arc::new(AtomicBool::new(false));
            // The small tenants' memories have two dimensions.
            let flat = centers(8, 2, &mut rng);
            let writer = spawn_writer(
                http.clone(),
                router.clone(),
                small,
                flat,
                args.writes_per_sec,
                stop.clone(),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!("rebalancing: shard-4 joins under {} writes/s…", args.writes_per_sec);
            let started = Instant::now();
            let steps = spawn_step_watch(http.clone(), router.clone(), stop.clone());
            let resp = http.post(format!("{}/v1/rebalance", control.url())).send().await?;
            let took = started.elapsed();
            let status = resp.status();
            let body = resp.text().await?;
            anyhow::ensure!(status.is_success(), "rebalance answered {status}: {body}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Ordering::Release);
            let Written { sent: writes, failed, slowest, slowest_sent: sent } = writer.await??;
            let at = |t: Instant| match t.checked_duration_since(started) {
                Some(d) => format!("+{:.2} s", d.as_secs_f64()),
                None => format!("-{:.2} s", started.duration_since(t).as_secs_f64()),
            };
            let steps: Vec<String> =
                steps.await?.iter().map(|(step, t)| format!("{step} {}", at(*t))).collect();
            let when = format!("sent at {}; steps seen: {}", at(sent), steps.join(", "));
            joined = Some((took, writes, failed, slowest, when));
        }
    }

    println!("| measure | result |\n|---|---|");
    println!("| tenant migrated | {count:.0} memories × {} dims (+ the live writes) |", args.dims);
    if args.idle_tenants > 0 {
        let per_node: Vec<String> = futures::future::join_all(
            cluster.shards.iter().map(|s| memring_tests::partitions_at(&s.addr)),
        )
        .await
        .into_iter()
        .map(|held| held.map(|h| h.len().to_string()).unwrap_or_else(|e| e.to_string()))
        .collect();
        println!(
            "| partitions held per node | {} ({} idle tenants, {} copies) |",
            per_node.join(" / "),
            args.idle_tenants,
            args.copies
        );
    }
    println!(
        "| migration wall time | {:.2} s = {:.0} memories/s (copy {}, replayed {}) |",
        took_ms / 1000.0,
        count / (took_ms / 1000.0),
        report["copied"],
        report["replayed"]
    );
    println!("| clean restart of the node holding the moved tenant | {restart} |");
    println!("| HNSW graph handed from source to target | {:.0} MB |", graph_bytes.max(0.0) / 1e6);
    println!(
        "| search p99 on the two busy nodes' other tenants | idle {:.2} ms; writes alone {:.2} ms; writes + migration {:.2} ms ({:.2}× idle, {:.2}× writes alone); migration rate limit {} |",
        p99(&idle),
        p99(&writes_only),
        p99(&busy),
        p99(&busy) / p99(&idle).max(1e-9),
        p99(&busy) / p99(&writes_only).max(1e-9),
        if args.migration_rate == 0 {
            "none".to_owned()
        } else {
            format!("{}/s", args.migration_rate)
        }
    );
    println!(
        "| writes during the run ({} /s) | {writes} sent, {failed} failed, slowest {:.0} ms |",
        args.writes_per_sec,
        slowest.as_secs_f64() * 1000.0
    );
    println!(
        "| searches of the moved tenant (until a full answer) | {before}; after: first {moved_first_ms:.0} ms ({moved_misses} refused), then {moved_next_ms:.1} ms |"
    );
    if let Some((moved, ideal, moves, partitions)) = rebalance {
        // Copies made of all copies (with one copy: partitions moved of all partitions).
        let part_fraction = moves as f64 / (partitions * u64::from(args.copies)).max(1) as f64;
        println!(
            "| rebalance 3 → 4 nodes, {partitions} partitions × {} copies | {moves} copies made = {:.2}% (ideal {:.2}%, ratio {:.3}); {:.2}% of memories (the pinned whale stays) |",
            args.copies,
            part_fraction * 100.0,
            ideal * 100.0,
            if ideal > 0.0 { part_fraction / ideal } else { 0.0 },
            moved * 100.0
        );
    }
    if let Some((took, writes, failed, slowest, when)) = joined {
        println!(
            "| rebalance 3 → 4 nodes run (`POST /v1/rebalance`) | {:.2} s; writes to the small tenants ({} /s) during it: {writes} sent, {failed} failed, slowest {:.0} ms ({when}) |",
            took.as_secs_f64(),
            args.writes_per_sec,
            slowest.as_secs_f64() * 1000.0
        );
    }
    // What a look at the cluster view costs (the dashboard polls it): ten calls in a row, with
    // every replica set listed, then with the short ones only (the dashboard's and `shardctl
    // status`'s ask; a control plane from before it answers with every set).
    for shown in ["all", "short"] {
        let mut took = Vec::new();
        let (mut size, mut view) = (0, serde_json::Value::Null);
        for _ in 0..10 {
            let started = Instant::now();
            let url = format!("{}/v1/cluster?replica_sets={shown}", control.url());
            let resp = http.get(url).send().await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "GET /v1/cluster answered {}",
                resp.status()
            );
            let body = resp.bytes().await?;
            took.push(started.elapsed().as_secs_f64() * 1000.0);
            size = body.len();
            view = serde_json::from_slice(&body)?;
        }
        let first = took.remove(0);
        took.sort_by(f64::total_cmp);
        println!(
            "| cluster view (`GET /v1/cluster?replica_sets={shown}`), ten calls | first {first:.1} ms, then median {:.1} ms, slowest {:.1} ms; {size} bytes; sets: {} |",
            took[took.len() / 2],
            took.last().copied().unwrap_or(0.0),
            view["replica_summary"]
        );
        if let (Some(set), "short") = (view["replica_sets"].get(0), shown) {
            eprintln!("a replica set short of a copy after the run: {set}");
        }
    }
    Ok(())
}
