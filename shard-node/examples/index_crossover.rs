//! Measures where HNSW starts to beat the exact flat scan, to set `flat_limit`, and how a filtered
//! search of a big graph should run, to set `exact_filter_limit` and the filtered beam.
//!
//! `cargo run --release -p memring-shard --example index_crossover`
//! First table, for each partition size: single-thread queries/s of the flat scan and of HNSW
//! (ef 64, M 16), and HNSW's recall@10 against the flat scan, on clustered 384-d data (seed 7).
//! Second table, on one 100,000-vector graph: for filters letting all (an unfiltered walk) down
//! to 0.5% through, queries/s and recall@10 (against an exact scan of the passing vectors) of the
//! exact scan of the passing vectors and of walks with beams 16 to 128, and the beam `search`
//! picks (`walk_beam`).

use std::collections::HashSet;
use std::time::Instant;

use memring_shard::index::{IndexConfig, VectorIndex};
use memring_shard::labels::LabelSet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// `n` clustered vectors and `queries` queries near the same centers.
fn clustered(rng: &mut StdRng, dims: usize, n: usize, queries: usize) -> Vec<Vec<f32>> {
    let spread = 1.0 / (dims as f32).sqrt();
    let centers: Vec<Vec<f32>> =
        (0..(n / 200).clamp(4, 64)).map(|_| (0..dims).map(|_| gaussian(rng)).collect()).collect();
    (0..n + queries)
        .map(|i| {
            centers[i % centers.len()].iter().map(|c| c + spread * gaussian(rng) * 8.0).collect()
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The second table (see the module notes).
fn filtered(dims: usize) {
    let (n, nq) = (100_000usize, 200usize);
    let mut rng = StdRng::seed_from_u64(11);
    let mut data = clustered(&mut rng, dims, n, nq);
    let queries = data.split_off(n);
    let config = IndexConfig { flat_limit: 0, ..Default::default() };
    let mut graph = VectorIndex::new(dims, config.clone());
    let items: Vec<(u64, &[f32])> =
        data.iter().enumerate().map(|(i, v)| (i as u64, v.as_slice())).collect();
    graph.upsert(0, &data[0]).expect("first");
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    graph.upsert_many(&items[1..], threads).expect("build");
    let mut flat = VectorIndex::exact(dims, IndexConfig { flat_limit: usize::MAX, ..config });
    for (label, v) in &items {
        flat.upsert(*label, v).expect("flat");
    }
    let beams = [16usize, 24, 32, 48, 64, 96, 128];
    print!("\n| passing | exact scan q/s |");
    for b in beams {
        print!(" beam {b} q/s | recall |");
    }
    println!(" beam picked |");
    println!("|---|---|{}---|", "---|---|".repeat(beams.len()));
    for per_mille in [1000u64, 500, 200, 100, 50, 20, 5] {
        let allowed =
            LabelSet::from_labels((0..n as u64).filter(|l| splitmix(*l) % 1000 < per_mille));
        let truth: Vec<HashSet<u64>> = queries
            .iter()
            .map(|q| {
                let exact = flat.search_filtered_by(q, 10, &allowed, None).expect("exact");
                exact.iter().map(|s| s.label).collect()
            })
            .collect();
        let run = |beam: Option<usize>| {
            let t = Instant::now();
            let mut hits = 0;
            for (q, want) in queries.iter().zip(&truth) {
                let got = graph.search_filtered_by(q, 10, &allowed, beam).expect("search");
                hits += got.iter().filter(|s| want.contains(&s.label)).count();
            }
            (nq as f64 / t.elapsed().as_secs_f64(), hits as f64 / (nq * 10) as f64)
        };
        let (exact_qps, _) = run(None);
        print!("| {} | {exact_qps:.0} |", allowed.len());
        for b in beams {
            let (qps, recall) = run(Some(b));
            print!(" {qps:.0} | {recall:.3} |");
        }
        println!(" {} |", memring_shard::index::walk_beam(64, allowed.len(), n));
    }
}

fn main() {
    let dims = 384;
    let mut rng = StdRng::seed_from_u64(7);
    let spread = 1.0 / (dims as f32).sqrt();
    println!("| vectors | flat q/s | hnsw q/s | hnsw recall@10 | hnsw build vectors/s |");
    println!("|---|---|---|---|---|");
    for n in [500usize, 1000, 2000, 4000, 8000, 16000] {
        let centers: Vec<Vec<f32>> = (0..(n / 200).clamp(4, 64))
            .map(|_| (0..dims).map(|_| gaussian(&mut rng)).collect())
            .collect();
        let data: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                centers[i % centers.len()]
                    .iter()
                    .map(|c| c + spread * gaussian(&mut rng) * 8.0)
                    .collect()
            })
            .collect();
        let queries: Vec<Vec<f32>> = (0..300)
            .map(|i| {
                centers[i % centers.len()]
                    .iter()
                    .map(|c| c + spread * gaussian(&mut rng) * 8.0)
                    .collect()
            })
            .collect();
        let mut flat =
            VectorIndex::new(dims, IndexConfig { flat_limit: usize::MAX, ..Default::default() });
        let mut hnsw = VectorIndex::new(dims, IndexConfig { flat_limit: 0, ..Default::default() });
        for (i, v) in data.iter().enumerate() {
            flat.upsert(i as u64, v).expect("flat add");
        }
        let t = Instant::now();
        for (i, v) in data.iter().enumerate() {
            hnsw.upsert(i as u64, v).expect("hnsw add");
        }
        let build = n as f64 / t.elapsed().as_secs_f64();
        let time = |index: &VectorIndex| {
            let t = Instant::now();
            for q in &queries {
                index.search(q, 10, None).expect("search");
            }
            queries.len() as f64 / t.elapsed().as_secs_f64()
        };
        let (flat_qps, hnsw_qps) = (time(&flat), time(&hnsw));
        let mut hits = 0;
        for q in &queries {
            let truth: HashSet<u64> =
                flat.search(q, 10, None).expect("search").iter().map(|s| s.label).collect();
            hits += hnsw
                .search(q, 10, None)
                .expect("search")
                .iter()
                .filter(|s| truth.contains(&s.label))
                .count();
        }
        let recall = hits as f64 / (queries.len() * 10) as f64;
        println!("| {n} | {flat_qps:.0} | {hnsw_qps:.0} | {recall:.3} | {build:.0} |");
    }
    filtered(dims);
}
