//! Hybrid search: one ranking from the vector list and the keyword list (API.md part 2).
//!
//! The router fuses after merging each list across every scope, so the answer depends only on
//! the two global lists — never on which nodes hold the scopes or how they were grouped.
//! - `rrf`: Σ 1 / (k + rank) over the lists a memory is in (ranks from 1);
//! - `weighted`: alpha × the min-max normalised vector score + (1 − alpha) × the min-max
//!   normalised keyword score (a memory missing from a list has 0 for it; a list whose scores are
//!   all equal normalises to 1).

use std::collections::HashMap;

use memring_common::api::{Fusion, Scores, SearchHit};

use crate::service::sort_hits;

/// Fuses `vector` and `keyword` (each already merged across scopes) into the best `depth`,
/// best first, each hit's `score` the fused one and `scores` its two parts.
pub fn fuse(
    mut vector: Vec<SearchHit>,
    mut keyword: Vec<SearchHit>,
    fusion: Fusion,
    depth: usize,
) -> Vec<SearchHit> {
    for list in [&mut vector, &mut keyword] {
        sort_hits(list);
        list.truncate(depth);
    }
    let weights = |list: &[SearchHit]| -> Vec<f64> {
        match fusion {
            Fusion::Rrf { k } => {
                (0..list.len()).map(|rank| 1.0 / (k + rank as f64 + 1.0)).collect()
            }
            Fusion::Weighted { .. } => {
                let (lo, hi) = list.iter().fold((f64::MAX, f64::MIN), |(lo, hi), h| {
                    let s = f64::from(h.score.unwrap_or(0.0));
                    (lo.min(s), hi.max(s))
                });
                list.iter()
                    .map(|h| {
                        let s = f64::from(h.score.unwrap_or(0.0));
                        if hi > lo { (s - lo) / (hi - lo) } else { 1.0 }
                    })
                    .collect()
            }
        }
    };
    let (alpha_vector, alpha_keyword) = match fusion {
        Fusion::Rrf { .. } => (1.0, 1.0),
        Fusion::Weighted { alpha } => (alpha, 1.0 - alpha),
    };
    // (scope, id) → (hit, fused score)
    let mut fused: HashMap<(String, String), (SearchHit, f64)> = HashMap::new();
    for (list, alpha, is_vector) in [(vector, alpha_vector, true), (keyword, alpha_keyword, false)]
    {
        let part = weights(&list);
        for (hit, weight) in list.into_iter().zip(part) {
            let key = (hit.scope.to_string(), hit.id.to_string());
            let raw = hit.score.unwrap_or(0.0);
            let entry = fused
                .entry(key)
                .or_insert_with(|| (SearchHit { scores: Some(Scores::default()), ..hit }, 0.0));
            entry.1 += alpha * weight;
            let scores = entry.0.scores.get_or_insert_with(Scores::default);
            if is_vector {
                scores.vector = Some(raw);
            } else {
                scores.keyword = Some(raw);
            }
        }
    }
    let mut hits: Vec<SearchHit> = fused
        .into_values()
        .map(|(mut hit, score)| {
            hit.score = Some(score as f32);
            hit
        })
        .collect();
    sort_hits(&mut hits);
    hits.truncate(depth);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use memring_common::{MemoryId, Scope};

    fn hit(id: &str, score: f32) -> SearchHit {
        SearchHit {
            id: MemoryId::parse(id).expect("id"),
            scope: Scope::Shared,
            score: Some(score),
            scores: None,
            content: String::new(),
            metadata: Default::default(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn order(hits: &[SearchHit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn rrf_adds_reciprocal_ranks_and_keeps_both_parts() {
        let vector = vec![hit("a", 0.9), hit("b", 0.8), hit("c", 0.1)];
        let keyword = vec![hit("c", 7.0), hit("b", 3.0)];
        let fused = fuse(vector, keyword, Fusion::Rrf { k: 60.0 }, 10);
        // c: 1/63 + 1/61 = 0.0322664; b: 1/62 + 1/62 = 0.0322581; a: 1/61.
        assert_eq!(order(&fused), ["c", "b", "a"]);
        let fused_score = |h: &SearchHit| f64::from(h.score.unwrap_or(0.0));
        assert!((fused_score(&fused[0]) - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert_eq!(fused[0].scores, Some(Scores { vector: Some(0.1), keyword: Some(7.0) }));
        assert!((fused_score(&fused[1]) - 2.0 / 62.0).abs() < 1e-7);
        assert_eq!(fused[2].scores, Some(Scores { vector: Some(0.9), keyword: None }));
    }

    #[test]
    fn weighted_normalises_each_list_and_alpha_picks_the_side() {
        let vector = || vec![hit("a", 0.9), hit("b", 0.5), hit("c", 0.1)];
        let keyword = || vec![hit("c", 10.0), hit("a", 2.0)];
        let all_vector = fuse(vector(), keyword(), Fusion::Weighted { alpha: 1.0 }, 10);
        assert_eq!(order(&all_vector), ["a", "b", "c"]);
        let all_keyword = fuse(vector(), keyword(), Fusion::Weighted { alpha: 0.0 }, 10);
        assert_eq!(order(&all_keyword)[0], "c");
        let half = fuse(vector(), keyword(), Fusion::Weighted { alpha: 0.5 }, 10);
        // a: 0.5·1 + 0.5·0 = 0.5; c: 0.5·0 + 0.5·1 = 0.5; b: 0.5·0.5 = 0.25 → a, c tie by id.
        assert_eq!(order(&half), ["a", "c", "b"]);
        let (top, last) = (half[0].score.unwrap_or(0.0), half[2].score.unwrap_or(0.0));
        assert!((top - 0.5).abs() < 1e-6 && (last - 0.25).abs() < 1e-6, "{top} {last}");
    }

    #[test]
    fn the_answer_does_not_depend_on_how_the_lists_arrived() {
        let vector = vec![hit("a", 0.3), hit("b", 0.9), hit("c", 0.6)];
        let keyword = vec![hit("d", 1.0), hit("a", 4.0)];
        let mut shuffled_v = vector.clone();
        shuffled_v.reverse();
        let mut shuffled_k = keyword.clone();
        shuffled_k.reverse();
        let one = fuse(vector, keyword, Fusion::default(), 3);
        let two = fuse(shuffled_v, shuffled_k, Fusion::default(), 3);
        assert_eq!(order(&one), order(&two));
        assert_eq!(one.len(), 3);
    }
}
