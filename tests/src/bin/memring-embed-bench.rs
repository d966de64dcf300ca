//! `memring-embed-bench`: what the built-in embedder costs, and what of it text writes keep.
//!
//! 1. The machine's single-core f32 matrix-multiply rate: candle's CPU matmul (the kernels the
//!    model runs on) on square matrices, one thread, best of several runs.
//! 2. The embedder alone, in this process, on one thread: memories/s for 20-word memories at batch
//!    1 and batch 32, and the fraction of (1) the forward pass reaches (its multiply-adds counted
//!    from the token counts: 6 layers of QKV, output, two MLP projections and attention).
//! 3. Text writes through a router of the `make run` layout (3 shard nodes, router with
//!    `--embedder builtin --embed-threads 1`): single text-only writes from 32 concurrent
//!    clients (the router batches them), and batches of 32 text-only items; as a share of (2).
//!
//! It prints a Markdown report for docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Parser;
use memring_router::embed::builtin::{BertEmbedder, DIMENSIONS};
use memring_tests::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "memring-embed-bench", about = "measure the built-in embedder and text writes")]
struct Args {
    /// Memories embedded per measurement.
    #[arg(long, default_value_t = 640)]
    memories: usize,
    /// Words per memory.
    #[arg(long, default_value_t = 20)]
    words: usize,
    /// Model directory (default: where scripts/fetch-model.py puts it).
    #[arg(long)]
    model_dir: Option<std::path::PathBuf>,
    /// Random seed of the generated texts.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Skip part 3 (no cluster).
    #[arg(long)]
    no_cluster: bool,
}

/// Everyday words, so the texts tokenize like notes an agent keeps.
const WORDS: &[&str] = &[
    "the",
    "user",
    "prefers",
    "meeting",
    "in",
    "the",
    "morning",
    "and",
    "asked",
    "about",
    "flight",
    "to",
    "berlin",
    "next",
    "week",
    "remember",
    "that",
    "her",
    "daughter",
    "plays",
    "piano",
    "project",
    "deadline",
    "moved",
    "friday",
    "because",
    "design",
    "review",
    "was",
    "late",
    "coffee",
    "without",
    "sugar",
    "allergic",
    "peanuts",
    "password",
    "reset",
    "ticket",
    "opened",
    "by",
    "support",
    "team",
    "budget",
    "approved",
    "for",
    "quarter",
    "three",
    "dog",
    "named",
    "biscuit",
    "likes",
    "long",
    "walks",
    "near",
    "river",
    "call",
    "mom",
    "on",
    "sunday",
    "invoice",
    "paid",
    "late",
    "again",
    "server",
    "restarted",
    "after",
    "memory",
    "leak",
    "fixed",
    "version",
];

fn texts(n: usize, words: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Multiply-adds × 2 of one forward pass over `tokens` tokens (all-MiniLM-L6-v2: 6 layers,
/// hidden 384, MLP 1536): per layer Q, K, V and output projections (4 · t · h²), the MLP
/// (2 · t · h · 4h) and attention scores and mixing (2 · t² · h).
fn forward_flops(tokens: usize) -> f64 {
    let (t, h) = (tokens as f64, DIMENSIONS as f64);
    6.0 * 2.0 * (4.0 * t * h * h + 2.0 * t * h * 4.0 * h + 2.0 * t * t * h)
}

/// Single-thread f32 matmul rate of candle's CPU kernels, FLOP/s (best of `runs`).
fn matmul_rate(n: usize, runs: usize) -> anyhow::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let _ = a.matmul(&b)?; // warm up
    let mut best = f64::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dims();
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}

fn embed_rate(model: &BertEmbedder, texts: &[String], batch: usize) -> anyhow::Result<f64> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let _ = model.embed(&refs[..batch.min(refs.len())])?; // warm up
    let started = Instant::now();
    for chunk in refs.chunks(batch) {
        model.embed(chunk)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

async fn text_writes(
    router: &str,
    texts: &[String],
    batch: usize,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let client = memring_common::tls::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    let bodies: Vec<(String, serde_json::Value)> = texts
        .chunks(batch)
        .enumerate()
        .map(|(n, chunk)| {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"id": format!("{tag}-{n}-{i}"), "scope": "shared", "content": t}))
                .collect();
            let tenant = format!("t{}", n % 50);
            if batch == 1 {
                (format!("{router}/v1/tenants/{tenant}/memories"), items[0].clone())
            } else {
                (format!("{router}/v1/tenants/{tenant}/memories:batch"), json!({"items": items}))
            }
        })
        .collect();
    let started = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let workers = (0..concurrency).map(|_| {
        let (client, queue) = (client.clone(), queue.clone());
        tokio::spawn(async move {
            loop {
                let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some((url, body)) = next else { break };
                let resp = client.post(&url).json(&body).send().await?;
                let status = resp.status().as_u16();
                let text = resp.text().await?;
                anyhow::ensure!(status == 200 || status == 201, "{url} answered {status}: {text}");
                anyhow::ensure!(text.contains("embedded_by"), "not embedded by the router: {text}");
            }
            anyhow::Ok(())
        })
    });
    for w in futures::future::join_all(workers).await {
        w??;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread for the multiplies, as the per-core figures say (the router sizes the same pool).
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().context("rayon pool")?;
    let dir = args.model_dir.clone().unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/memring/models/all-minilm-l6-v2")
    });
    let model = BertEmbedder::load(&dir, 32)?;
    let corpus = texts(args.memories, args.words, args.seed);
    let tokens: Vec<usize> =
        corpus.iter().map(|t| model.token_ids(t).map(|ids| ids.len())).collect::<Result<_, _>>()?;
    let mean_tokens = tokens.iter().sum::<usize>() as f64 / tokens.len() as f64;
    let flops_per_memory =
        tokens.iter().map(|&t| forward_flops(t)).sum::<f64>() / tokens.len() as f64;

    eprintln!("matmul rate…");
    let peak = [256, 512, 1024]
        .iter()
        .map(|&n| matmul_rate(n, 5))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .fold(0.0, f64::max);
    eprintln!("embedder alone…");
    let alone_1 = embed_rate(&model, &corpus[..corpus.len().min(200)], 1)?;
    let alone_32 = embed_rate(&model, &corpus, 32)?;

    println!("### Built-in embedder (all-MiniLM-L6-v2, candle CPU, one thread)\n");
    println!(
        "{} memories of {} words ({mean_tokens:.1} tokens each with [CLS]/[SEP]); {:.2} GFLOP per memory.\n",
        corpus.len(),
        args.words,
        flops_per_memory / 1e9
    );
    println!("| measure | value |\n|---|---|");
    println!(
        "| single-core f32 matmul (candle, square 256–1024, best) | {:.1} GFLOP/s |",
        peak / 1e9
    );
    for (batch, rate) in [(1, alone_1), (32, alone_32)] {
        println!(
            "| embedder, batch {batch} | {rate:.0} memories/s per core ({:.0}% of the matmul rate) |",
            100.0 * rate * flops_per_memory / peak
        );
    }
    if args.no_cluster {
        return Ok(());
    }
    eprintln!("starting the make-run layout (3 shards, router with the built-in embedder)…");
    let cluster = Cluster::start_with_router(3, &["--embedder", "builtin", "--embed-threads", "1"])
        .await
        .context("starting the cluster")?;
    let router = cluster.url();
    text_writes(&router, &corpus[..64], 1, 8, "warm").await?;
    let single = text_writes(&router, &corpus, 1, 32, "s").await?;
    let batched = text_writes(&router, &corpus, 32, 2, "b").await?;
    println!(
        "| text writes through the router, single writes × 32 clients | {single:.0} memories/s ({:.0}% of batch 32 alone) |",
        100.0 * single / alone_32
    );
    println!(
        "| text writes through the router, batches of 32 × 2 clients | {batched:.0} memories/s ({:.0}% of batch 32 alone) |",
        100.0 * batched / alone_32
    );
    Ok(())
}
