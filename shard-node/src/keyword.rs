//! Keyword search: BM25 over a partition's `content`, in memory beside its vector index.
//!
//! Terms are the Unicode words of the text (UAX #29 word boundaries), lower-cased; the scores
//! are Okapi BM25 with k1 = 1.2 and b = 0.75 and the idf of Lucene (and of `bm25s`' default),
//! `ln(1 + (N − df + 0.5) / (df + 0.5))`, always positive, in the textbook form
//! `idf · tf · (k1 + 1) / (tf + k1 · (1 − b + b · len / mean len))` (Lucene and bm25s leave out
//! the constant `k1 + 1`, which ranks the same: `make bench-bm25` finds the same top 10). The statistics (N, df, the mean
//! length) are the partition's own, so the same memory scores the same on every copy of it.
//! Like the vector index it is derived: built from RocksDB when the partition loads, changed by
//! each committed write in the same step, so a memory is found as soon as its write is
//! acknowledged.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use unicode_segmentation::UnicodeSegmentation;

/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalisation.
pub const B: f32 = 0.75;

/// The terms of `text`: its Unicode words, lower-cased, in order.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.unicode_words().map(str::to_lowercase)
}

/// Hashes a document label (a partition's labels are small counters) with one multiplication:
/// scoring touches every posting of the query's terms, and SipHash there was most of the cost.
#[derive(Default)]
struct LabelHasher(u64);

impl Hasher for LabelHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, label: u64) {
        self.0 = (self.0 ^ label).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by document label.
type ByLabel<V> = HashMap<u64, V, BuildHasherDefault<LabelHasher>>;

/// One partition's inverted index.
#[derive(Debug, Default)]
pub struct KeywordIndex {
    /// Term → the documents holding it, with the term's count there and the document's length.
    postings: HashMap<Box<str>, ByLabel<(u32, u32)>>,
    /// Document → its distinct terms (to remove it) and its length in terms.
    docs: ByLabel<(Vec<Box<str>>, u32)>,
    /// Sum of the documents' lengths.
    total_len: u64,
}

impl KeywordIndex {
    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Indexes `text` as document `label` (replacing what `label` held).
    pub fn insert(&mut self, label: u64, text: &str) {
        self.remove(label);
        let mut counts: HashMap<Box<str>, u32> = HashMap::new();
        let mut length = 0u32;
        for term in terms(text) {
            *counts.entry(term.into_boxed_str()).or_default() += 1;
            length += 1;
        }
        let mut distinct = Vec::with_capacity(counts.len());
        for (term, count) in counts {
            self.postings.entry(term.clone()).or_default().insert(label, (count, length));
            distinct.push(term);
        }
        self.total_len += u64::from(length);
        self.docs.insert(label, (distinct, length));
    }

    /// Removes document `label`, if indexed.
    pub fn remove(&mut self, label: u64) {
        let Some((distinct, length)) = self.docs.remove(&label) else { return };
        self.total_len -= u64::from(length);
        for term in distinct {
            if let Some(list) = self.postings.get_mut(&term) {
                list.remove(&label);
                if list.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
    }

    /// The best `k` documents for `query` among `allowed` (all when `None`), best first, ties
    /// by label; documents sharing no term with the query are not results.
    pub fn search(&self, query: &str, k: usize, allowed: Option<&HashSet<u64>>) -> Vec<(u64, f32)> {
        let n = self.docs.len() as f32;
        if n == 0.0 || k == 0 {
            return Vec::new();
        }
        let mean_len = self.total_len as f32 / n;
        let mut seen = HashSet::new();
        let mut scores: ByLabel<f32> = ByLabel::default();
        for term in terms(query) {
            if !seen.insert(term.clone()) {
                continue;
            }
            let Some(list) = self.postings.get(term.as_str()) else { continue };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (&label, &(tf, length)) in list {
                if allowed.is_some_and(|a| !a.contains(&label)) {
                    continue;
                }
                let (tf, length) = (tf as f32, length as f32);
                let norm = K1 * (1.0 - B + B * length / mean_len);
                *scores.entry(label).or_default() += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut ranked: Vec<(u64, f32)> = scores.into_iter().collect();
        let best_first = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k, best_first);
            ranked.truncate(k);
        }
        ranked.sort_by(best_first);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_unicode_words_lower_cased() {
        let got: Vec<String> = terms("Error E1234: can't reach db-7 — Über Café, 東京!").collect();
        assert_eq!(
            got,
            ["error", "e1234", "can't", "reach", "db", "7", "über", "café", "東", "京"]
        );
    }

    #[test]
    fn scores_follow_bm25_by_hand() {
        let mut index = KeywordIndex::default();
        index.insert(1, "the cat sat");
        index.insert(2, "the dog sat on the mat");
        index.insert(3, "a bird");
        // "cat": df 1 of N 3; doc 1 has length 3, the mean length is 11/3.
        let idf = (1.0f32 + (3.0 - 1.0 + 0.5) / (1.0 + 0.5)).ln();
        let norm = K1 * (1.0 - B + B * 3.0 / (11.0 / 3.0));
        let want = idf * (K1 + 1.0) / (1.0 + norm);
        let got = index.search("cat", 10, None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1);
        assert!((got[0].1 - want).abs() < 1e-6, "{} vs {want}", got[0].1);
        // A repeated query word counts once; a word in no document adds nothing.
        assert_eq!(index.search("cat cat zebra", 10, None), got);
        // "the" is in two documents: the shorter one with it ranks first.
        let ranked: Vec<u64> = index.search("the sat", 10, None).iter().map(|r| r.0).collect();
        assert_eq!(ranked, [1, 2]);
    }

    #[test]
    fn removal_and_replacement_change_the_statistics_and_filters_apply_inside() {
        let mut index = KeywordIndex::default();
        index.insert(1, "alpha beta");
        index.insert(2, "alpha gamma");
        index.insert(1, "delta");
        assert_eq!(index.len(), 2);
        assert!(index.search("beta", 5, None).is_empty());
        assert_eq!(index.search("delta", 5, None)[0].0, 1);
        index.remove(2);
        assert!(index.search("alpha", 5, None).is_empty());
        assert_eq!(index.total_len, 1);
        index.insert(3, "alpha");
        index.insert(4, "alpha alpha");
        let only: HashSet<u64> = [3].into_iter().collect();
        assert_eq!(
            index.search("alpha", 5, Some(&only)).iter().map(|r| r.0).collect::<Vec<_>>(),
            [3]
        );
        index.remove(3);
        index.remove(4);
        index.remove(1);
        assert!(index.is_empty() && index.postings.is_empty() && index.total_len == 0);
    }
}
