//! `memring-repl-bench`: what replication costs a write.
//!
//! Starts etcd, 3 shard nodes and a router (all on this machine), then for replication factors
//! 1, 2 and 3 (write quorum: the default majority, so 1, 2 and 2 copies acknowledged) sends the
//! same writes — one at a time for latency, then 8 at a time for throughput — and prints a
//! Markdown table. Then, with R = 3, it searches one hot partition 8 at a time through a router
//! with replica reads on and through one with them off, and prints the rates and which copies
//! answered (the shard nodes' `memring_shard_reads_total`).

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
