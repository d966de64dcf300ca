//! Sets of a partition's labels (the small integers its memories are known by inside the
//! vector and keyword indexes): what a filter lets through.
//!
//! A partition hands out labels counting up from zero, so a set is a bitmap over `0..next_label`:
//! a membership test inside the HNSW walk is one shift and mask, and building the set from the
//! sorted lists of the metadata index (`metadata_index.rs`) is one pass.

/// A set of labels, as a bitmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    words: Vec<u64>,
    len: usize,
}

impl LabelSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The labels of a list (any order, duplicates allowed).
    pub fn from_labels(labels: impl IntoIterator<Item = u64>) -> Self {
        let mut set = Self::new();
        for label in labels {
            set.insert(label);
        }
        set
    }

    /// Adds `label`; true when it was not in the set.
    pub fn insert(&mut self, label: u64) -> bool {
        let (word, bit) = ((label / 64) as usize, label % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        self.len += usize::from(fresh);
        fresh
    }

    /// Takes `label` out; true when it was in the set.
    pub fn remove(&mut self, label: u64) -> bool {
        let (word, bit) = ((label / 64) as usize, label % 64);
        let Some(w) = self.words.get_mut(word) else { return false };
        let held = *w & (1 << bit) != 0;
        *w &= !(1 << bit);
        self.len -= usize::from(held);
        held
    }

    /// Keeps the labels also in `other`.
    pub fn intersect(&mut self, other: &LabelSet) {
        self.words.truncate(other.words.len());
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= o;
        }
        self.recount();
    }

    /// Adds the labels of `other`.
    pub fn unite(&mut self, other: &LabelSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
        self.recount();
    }

    /// Takes out the labels of `other`.
    pub fn subtract(&mut self, other: &LabelSet) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= !o;
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.len = self.words.iter().map(|w| w.count_ones() as usize).sum();
    }

    /// Is `label` in the set?
    #[inline]
    pub fn contains(&self, label: u64) -> bool {
        self.words.get((label / 64) as usize).is_some_and(|w| w & (1 << (label % 64)) != 0)
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The labels, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }

    /// Keeps only the labels for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let mut rest = *word;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                if !keep(i as u64 * 64 + u64::from(bit)) {
                    *word &= !(1 << bit);
                    self.len -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_was_put_in() {
        let mut set = LabelSet::from_labels([3, 64, 200, 3, 0]);
        assert_eq!(set.len(), 4);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 3, 64, 200]);
        assert!(set.contains(64) && !set.contains(65) && !set.contains(10_000));
        assert!(!set.insert(200) && set.insert(201));
        set.retain(|l| l % 2 == 0);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 64, 200]);
        assert_eq!(set.len(), 3);
        assert!(LabelSet::new().is_empty());
        let mut a = LabelSet::from_labels([1, 2, 3, 130]);
        let b = LabelSet::from_labels([2, 3, 4]);
        a.intersect(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), [2, 3]);
        a.unite(&LabelSet::from_labels([500]));
        a.subtract(&LabelSet::from_labels([3]));
        assert_eq!((a.iter().collect::<Vec<_>>(), a.len()), (vec![2, 500], 2));
        assert!(a.remove(2) && !a.remove(2) && a.len() == 1);
    }
}
