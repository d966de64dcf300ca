//! `memring-repl-bench`: what replication costs a write.
//!
//! Starts etcd, 3 shard nodes and a router (all on this machine), then for replication factors
//! 1, 2 and 3 (write quorum: the default majority, so 1, 2 and 2 copies acknowledged) sends the
//! same writes — one at a time for latency, then 8 at a time for throughput — and prints a
//! Markdown table.

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
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let c = EtcdCluster::start(3, 1, 10).await?;
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
    Ok(())
}
