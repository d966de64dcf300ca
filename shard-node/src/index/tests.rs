//! Tests of `index.rs`.

use super::*;

#[test]
fn batched_parallel_upserts_equal_one_by_one() {
    let config = IndexConfig { flat_limit: 16, ..IndexConfig::default() };
    let vectors = clustered(2000, 8, 5);
    let mut one = VectorIndex::new(8, config.clone());
    let mut many = VectorIndex::new(8, config);
    for (i, v) in vectors.iter().enumerate().take(100) {
        one.upsert(i as u64, v).expect("upsert");
        many.upsert(i as u64, v).expect("upsert");
    }
    // Labels 50..2000: half of the first hundred are replaced, the rest are new.
    for (i, v) in vectors.iter().enumerate().skip(50) {
        one.upsert(i as u64, v).expect("upsert");
    }
    let items: Vec<(u64, &[f32])> =
        vectors.iter().enumerate().skip(50).map(|(i, v)| (i as u64, v.as_slice())).collect();
    many.upsert_many(&items, 2).expect("upsert_many");
    assert_eq!((many.len(), many.engine_name()), (2000, "hnsw"));
    // Vectors find themselves first as often in both graphs. The graphs are approximate
    // (and the parallel one is built in a different order each run), so this is a recall over
    // many queries, not a promise for each: one in a thousand may meet a near twin first.
    let self_recall = |index: &VectorIndex| {
        let queries = vectors.iter().enumerate().step_by(7);
        let found = queries
            .clone()
            .filter(|(i, v)| index.search(v, 1, None).expect("search")[0].label == *i as u64)
            .count();
        found as f64 / queries.count() as f64
    };
    let (one, many) = (self_recall(&one), self_recall(&many));
    println!("self-recall at k = 1: one by one {one:.4}, batched {many:.4}");
    assert!(one >= 0.97 && many >= 0.97, "self-recall one by one {one}, batched {many}");
    assert!((one - many).abs() <= 0.03, "self-recall one by one {one}, batched {many}");
}

#[test]
fn an_hnsw_index_survives_bytes_and_keeps_taking_writes() {
    let config = IndexConfig { flat_limit: 16, ..IndexConfig::default() };
    let mut index = VectorIndex::new(8, config.clone());
    let vectors = clustered(300, 8, 3);
    for (i, v) in vectors.iter().enumerate() {
        index.upsert(i as u64, v).expect("upsert");
    }
    let small = VectorIndex::new(8, config.clone());
    assert!(small.to_bytes().expect("bytes").is_none(), "a flat index is not shipped");
    let bytes = index.to_bytes().expect("bytes").expect("hnsw");
    let mut copy = VectorIndex::from_bytes(8, config.clone(), &bytes).expect("load");
    assert_eq!((copy.len(), copy.engine_name()), (300, "hnsw"));
    let q = &vectors[42];
    assert_eq!(copy.search(q, 5, None).expect("search"), index.search(q, 5, None).expect("search"));
    // It grows past the loaded size and replaces and removes like any other.
    for i in 300..1500u64 {
        copy.upsert(i, &vectors[(i % 300) as usize]).expect("upsert after load");
    }
    copy.remove(42).expect("remove");
    assert!(copy.search(q, 3, None).expect("search").iter().all(|s| s.label != 42));
    assert!(VectorIndex::from_bytes(9, config.clone(), &bytes).is_err(), "wrong dims");
    assert!(VectorIndex::from_bytes(8, config, &bytes[..bytes.len() / 2]).is_err(), "cut");
}
use rand::{Rng, SeedableRng};

fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> =
        (0..16).map(|_| (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
    (0..n)
        .map(|i| centers[i % 16].iter().map(|c| c + rng.random_range(-0.2..0.2)).collect())
        .collect()
}

fn exact(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
    let q = normalized(q);
    let all = data
        .iter()
        .enumerate()
        .map(|(i, v)| Scored { label: i as u64, score: dot(&q, &normalized(v)) })
        .collect();
    top_k(all, k).into_iter().map(|s| s.label).collect()
}

fn config(flat_limit: usize) -> IndexConfig {
    IndexConfig { flat_limit, ..IndexConfig::default() }
}

#[test]
fn flat_is_exact_and_handles_updates_and_removals() {
    let data = clustered(500, 16, 1);
    let mut index = VectorIndex::new(16, config(10_000));
    for (i, v) in data.iter().enumerate() {
        index.upsert(i as u64, v).expect("add");
    }
    assert_eq!(index.engine_name(), "flat");
    let q = &data[7];
    let got: Vec<u64> =
        index.search(q, 10, None).expect("search").iter().map(|s| s.label).collect();
    assert_eq!(got, exact(&data, q, 10));
    assert_eq!(got[0], 7);
    index.remove(7).expect("remove");
    assert!(index.search(q, 10, None).expect("search").iter().all(|s| s.label != 7));
    assert_eq!(index.len(), 499);
    // Replacing a vector moves it.
    index.upsert(8, &data[100]).expect("update");
    assert_eq!(index.len(), 499);
    assert_eq!(index.search(&data[100], 2, None).expect("search").len(), 2);
}

#[test]
fn hnsw_takes_over_past_the_limit_with_high_recall() {
    let data = clustered(3000, 32, 2);
    let mut index = VectorIndex::new(32, config(1000));
    for (i, v) in data.iter().enumerate() {
        index.upsert(i as u64, v).expect("add");
    }
    assert_eq!(index.engine_name(), "hnsw");
    assert_eq!(index.len(), 3000);
    let mut hits = 0;
    for q in data.iter().step_by(100) {
        let truth = exact(&data, q, 10);
        let got = index.search(q, 10, None).expect("search");
        hits += got.iter().filter(|s| truth.contains(&s.label)).count();
    }
    let recall = hits as f64 / (30.0 * 10.0);
    assert!(recall >= 0.9, "recall@10 {recall}");
    // Updating an existing label in HNSW replaces, not duplicates.
    index.upsert(0, &data[1]).expect("update");
    assert_eq!(index.len(), 3000);
}

#[test]
fn selective_filters_still_return_k_results() {
    let data = clustered(3000, 32, 3);
    for flat_limit in [100_000, 1000] {
        let mut index = VectorIndex::new(32, config(flat_limit));
        for (i, v) in data.iter().enumerate() {
            index.upsert(i as u64, v).expect("add");
        }
        // Every 97th label passes: 31 of them, spread over all clusters.
        let allowed = LabelSet::from_labels((0..3000u64).filter(|l| l % 97 == 0));
        let got = index.search(&data[5], 10, Some(&allowed)).expect("search");
        assert_eq!(got.len(), 10, "{}", index.engine_name());
        assert!(got.iter().all(|s| allowed.contains(s.label)));
        // The best passing label is found exactly.
        let best = allowed.iter().max_by(|a, b| {
            let qa = dot(&normalized(&data[5]), &normalized(&data[*a as usize]));
            let qb = dot(&normalized(&data[5]), &normalized(&data[*b as usize]));
            qa.total_cmp(&qb)
        });
        assert_eq!(Some(got[0].label), best);
    }
}

#[test]
fn wrong_dimensions_are_errors() {
    let mut index = VectorIndex::new(4, IndexConfig::default());
    assert!(index.upsert(1, &[1.0, 2.0]).is_err());
    assert!(index.search(&[1.0], 1, None).is_err());
}
