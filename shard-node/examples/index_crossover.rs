//! Measures where HNSW starts to beat the exact flat scan, to set `flat_limit`.
//!
//! `cargo run --release -p memring-shard --example index_crossover`
//! For each partition size: single-thread queries/s of the flat scan and of HNSW (ef 64, M 16),
//! and HNSW's recall@10 against the flat scan, on clustered 384-d data (seed 7).

use std::collections::HashSet;
use std::time::Instant;

use memring_shard::index::{IndexConfig, VectorIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
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
}
