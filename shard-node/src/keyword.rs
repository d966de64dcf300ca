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

use crate::labels::LabelSet;

/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalisation.
pub const B: f32 = 0.75;

/// The terms of `text`: its Unicode words, lower-cased, in order.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.unicode_words().map(str::to_lowercase)
}

/// Hashes a document label (a partition's labels are small counters) with one multiplication.
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

/// One occurrence of a term: the document's slot, the term's count there, the document's length.
#[derive(Debug, Clone, Copy)]
struct Posting {
    slot: u32,
    tf: u32,
    len: u32,
}

/// An indexed document: its label, its length in terms, and for each of its distinct terms the
/// term's id and where its posting sits in that term's list (so removal is a swap, not a scan).
#[derive(Debug)]
struct Doc {
    label: u64,
    len: u32,
    terms: Vec<(u32, u32)>,
}

/// One partition's inverted index.
///
/// Documents live in dense slots (reused after removal) so that scoring adds into a plain array,
/// and each term's postings are a vector walked front to back: a query costs one pass over the
/// postings of its terms, with no hashing per posting.
#[derive(Debug, Default)]
pub struct KeywordIndex {
    /// Term → its id.
    term_ids: HashMap<Box<str>, u32>,
    /// Term id → the term (to forget it when its last posting goes) and its postings, unordered.
    lists: Vec<(Box<str>, Vec<Posting>)>,
    /// Term ids whose lists emptied, for reuse.
    free_terms: Vec<u32>,
    /// Document label → its slot.
    slots: ByLabel<u32>,
    /// Slot → the document there, `None` when free.
    docs: Vec<Option<Doc>>,
    /// Free slots, for reuse.
    free_slots: Vec<u32>,
    /// Sum of the documents' lengths.
    total_len: u64,
}

impl KeywordIndex {
    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Indexes `text` as document `label` (replacing what `label` held).
    pub fn insert(&mut self, label: u64, text: &str) {
        self.remove(label);
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut len = 0u32;
        for term in terms(text) {
            *counts.entry(term).or_default() += 1;
            len = len.saturating_add(1);
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.docs.push(None);
                (self.docs.len() - 1) as u32
            }
        };
        let mut doc_terms = Vec::with_capacity(counts.len());
        for (term, tf) in counts {
            let id = self.term_id(term);
            let list = &mut self.lists[id as usize].1;
            doc_terms.push((id, list.len() as u32));
            list.push(Posting { slot, tf, len });
        }
        self.total_len += u64::from(len);
        self.slots.insert(label, slot);
        self.docs[slot as usize] = Some(Doc { label, len, terms: doc_terms });
    }

    /// The id of `term`, given a new one (with an empty list) when unseen.
    fn term_id(&mut self, term: String) -> u32 {
        if let Some(&id) = self.term_ids.get(term.as_str()) {
            return id;
        }
        let term = term.into_boxed_str();
        let id = match self.free_terms.pop() {
            Some(id) => {
                self.lists[id as usize] = (term.clone(), Vec::new());
                id
            }
            None => {
                self.lists.push((term.clone(), Vec::new()));
                (self.lists.len() - 1) as u32
            }
        };
        self.term_ids.insert(term, id);
        id
    }

    /// Removes document `label`, if indexed.
    pub fn remove(&mut self, label: u64) {
        let Some(slot) = self.slots.remove(&label) else { return };
        let Some(doc) = self.docs[slot as usize].take() else { return };
        self.free_slots.push(slot);
        self.total_len -= u64::from(doc.len);
        for (id, pos) in doc.terms {
            let (term, list) = &mut self.lists[id as usize];
            list.swap_remove(pos as usize);
            if let Some(moved) = list.get(pos as usize) {
                // The list's last posting now sits at `pos`: tell its document.
                if let Some(other) = self.docs[moved.slot as usize].as_mut()
                    && let Some(entry) = other.terms.iter_mut().find(|(t, _)| *t == id)
                {
                    entry.1 = pos;
                }
            } else if list.is_empty() {
                self.term_ids.remove(&**term);
                *term = Box::default();
                *list = Vec::new();
                self.free_terms.push(id);
            }
        }
    }

    /// The best `k` documents for `query` among `allowed` (all when `None`), best first, ties
    /// by label; documents sharing no term with the query are not results.
    pub fn search(&self, query: &str, k: usize, allowed: Option<&LabelSet>) -> Vec<(u64, f32)> {
        let n = self.slots.len() as f32;
        if n == 0.0 || k == 0 {
            return Vec::new();
        }
        let mean_len = self.total_len as f32 / n;
        let mut scores = vec![0f32; self.docs.len()];
        let mut touched: Vec<u32> = Vec::new();
        let mut seen = HashSet::new();
        for term in terms(query) {
            let Some(&id) = self.term_ids.get(term.as_str()) else { continue };
            if !seen.insert(id) {
                continue;
            }
            let list = &self.lists[id as usize].1;
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for posting in list {
                let slot = posting.slot as usize;
                let (tf, len) = (posting.tf as f32, posting.len as f32);
                let norm = K1 * (1.0 - B + B * len / mean_len);
                // Every term adds a positive amount, so a zero marks a document not yet seen.
                if scores[slot] == 0.0 {
                    touched.push(posting.slot);
                }
                scores[slot] += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut ranked: Vec<(u64, f32)> = touched
            .into_iter()
            .filter_map(|slot| {
                // The filter is applied here, once per document rather than once per posting.
                let doc = self.docs[slot as usize].as_ref()?;
                allowed
                    .is_none_or(|a| a.contains(doc.label))
                    .then(|| (doc.label, scores[slot as usize]))
            })
            .collect();
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
        let only = LabelSet::from_labels([3]);
        assert_eq!(
            index.search("alpha", 5, Some(&only)).iter().map(|r| r.0).collect::<Vec<_>>(),
            [3]
        );
        index.remove(3);
        index.remove(4);
        index.remove(1);
        assert!(index.is_empty() && index.term_ids.is_empty() && index.total_len == 0);
        assert_eq!(index.free_slots.len(), index.docs.len());
    }

    /// BM25 computed the slow way, from the texts, for checking the index against.
    fn by_hand(docs: &ByLabel<String>, query: &str, k: usize) -> Vec<(u64, f32)> {
        let n = docs.len() as f32;
        let lens: ByLabel<usize> = docs.iter().map(|(&l, t)| (l, terms(t).count())).collect();
        let mean_len = lens.values().sum::<usize>() as f32 / n;
        let mut query_terms: Vec<String> = Vec::new();
        for term in terms(query) {
            if !query_terms.contains(&term) {
                query_terms.push(term);
            }
        }
        let mut ranked = Vec::new();
        for (&label, text) in docs {
            let words: Vec<String> = terms(text).collect();
            let mut score = 0f32;
            let mut any = false;
            for term in &query_terms {
                let df = docs.values().filter(|t| terms(t).any(|w| &w == term)).count() as f32;
                let tf = words.iter().filter(|w| *w == term).count() as f32;
                if tf == 0.0 {
                    continue;
                }
                any = true;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let norm = K1 * (1.0 - B + B * lens[&label] as f32 / mean_len);
                score += idf * tf * (K1 + 1.0) / (tf + norm);
            }
            if any {
                ranked.push((label, score));
            }
        }
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }

    #[test]
    fn random_inserts_replacements_and_removals_score_as_by_hand() {
        let words = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut index = KeywordIndex::default();
        let mut docs: ByLabel<String> = ByLabel::default();
        for step in 0..3_000 {
            let label = next(60) as u64;
            if next(4) == 0 {
                index.remove(label);
                docs.remove(&label);
            } else {
                // Skewed word choice, so some terms are common and some rare.
                let len = 1 + next(12);
                let mut text: Vec<&str> = Vec::with_capacity(len);
                for _ in 0..len {
                    let spread = 1 + next(words.len());
                    text.push(words[next(spread)]);
                }
                let text = text.join(" ");
                index.insert(label, &text);
                docs.insert(label, text);
            }
            if step % 50 == 0 {
                let query = format!("{} {}", words[next(words.len())], words[next(words.len())]);
                let got = index.search(&query, 7, None);
                let want = by_hand(&docs, &query, 7);
                assert_eq!(got.len(), want.len(), "{query} at step {step}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.1 - w.1).abs() <= 1e-5 * w.1.abs().max(1.0), "{got:?} vs {want:?}");
                }
                // Scores may tie; the labels must agree wherever the scores differ.
                let got_labels: HashSet<u64> = got.iter().map(|g| g.0).collect();
                let cut = want.last().map_or(0.0, |w| w.1);
                for w in want.iter().filter(|w| w.1 > cut + 1e-5) {
                    assert!(got_labels.contains(&w.0), "{query}: {got:?} vs {want:?}");
                }
            }
        }
        assert_eq!(index.len(), docs.len());
        for label in 0..60 {
            index.remove(label);
        }
        assert!(index.is_empty() && index.term_ids.is_empty() && index.total_len == 0);
    }
}
