//! How this node's followed copies stand: per copy its primary, how far behind it was at the
//! last round and the partition's term it was last checked against its owner at, plus the
//! totals a status call reads (entries behind per primary, copies not checked) kept up to date
//! on every change, so reading them costs nothing per copy. A follower marks a copy unchecked
//! when its partition's term moves (`replicate/follower.rs`), so a copy counted as checked is
//! checked at its partition's current term once its primary's round at the current epoch is
//! done.

use std::collections::HashMap;

use memring_common::{NodeId, PartitionKey};

/// One followed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The primary it follows.
    pub primary: NodeId,
    /// Entries behind the primary at the last round that looked at it.
    pub behind: u64,
    /// The partition's term (`Ring::term`) at which the copy was last found to continue the
    /// log of its primary, leading at that term (`None`: not checked since, or the check
    /// failed).
    pub synced: Option<u64>,
    /// The position checked then (0 if not checked).
    pub at: u64,
    /// Up to where, within `at`, the primary said a quorum holds its log: how far this copy may
    /// trim (`rules::follower_trim`).
    pub committed: u64,
}

/// Every followed copy, with running totals.
#[derive(Debug, Default)]
pub struct Copies {
    all: HashMap<PartitionKey, Progress>,
    /// Sum of `behind` per primary.
    lag: HashMap<NodeId, u64>,
    /// How many copies are checked (`synced` set).
    checked: usize,
}

impl Progress {
    /// A copy followed from `primary` that is not checked (yet, or since its check failed), and
    /// how far behind it is known to be.
    pub fn unchecked(primary: NodeId, behind: u64) -> Progress {
        Progress { primary, behind, synced: None, at: 0, committed: 0 }
    }
}

impl Copies {
    /// The copy of `partition`, if followed.
    pub fn get(&self, partition: &PartitionKey) -> Option<&Progress> {
        self.all.get(partition)
    }

    /// Copies followed.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Records how the copy of `partition` stands now.
    pub fn set(&mut self, partition: &PartitionKey, progress: Progress) {
        self.remove(partition);
        *self.lag.entry(progress.primary.clone()).or_default() += progress.behind;
        if progress.synced.is_some() {
            self.checked += 1;
        }
        self.all.insert(partition.clone(), progress);
    }

    /// Forgets the copy of `partition`.
    pub fn remove(&mut self, partition: &PartitionKey) {
        let Some(old) = self.all.remove(partition) else { return };
        if let Some(lag) = self.lag.get_mut(&old.primary) {
            *lag -= old.behind;
        }
        if old.synced.is_some() {
            self.checked -= 1;
        }
    }

    /// Keeps, of the copies followed from `primary`, those `keep` says (a walk over every copy:
    /// for a full round, and when a primary leaves).
    pub fn retain_from(&mut self, primary: &NodeId, keep: impl Fn(&PartitionKey) -> bool) {
        let gone: Vec<PartitionKey> = self
            .all
            .iter()
            .filter(|(p, progress)| progress.primary == *primary && !keep(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.remove(&p);
        }
        if self.lag.get(primary) == Some(&0) {
            self.lag.remove(primary);
        }
    }

    /// Entries the copies followed from `primary` were behind at their last rounds.
    pub fn lag_of(&self, primary: &NodeId) -> u64 {
        self.lag.get(primary).copied().unwrap_or(0)
    }

    /// Entries behind, over every primary.
    pub fn lag(&self) -> u64 {
        self.lag.values().sum()
    }

    /// Copies not checked against their owner.
    pub fn unchecked(&self) -> usize {
        self.all.len() - self.checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> PartitionKey {
        PartitionKey::new(
            &memring_common::TenantId::parse(t).expect("tenant"),
            &memring_common::Scope::parse("shared").expect("scope"),
        )
    }

    fn node(n: &str) -> NodeId {
        NodeId::parse(n).expect("node")
    }

    fn at(primary: &str, behind: u64, synced: Option<u64>) -> Progress {
        Progress { primary: node(primary), behind, synced, at: 0, committed: 0 }
    }

    /// The totals, counted the slow way.
    fn counted(c: &Copies) -> (u64, usize) {
        let lag = c.all.values().map(|p| p.behind).sum();
        let unchecked = c.all.values().filter(|p| p.synced.is_none()).count();
        (lag, unchecked)
    }

    #[test]
    fn the_running_totals_equal_a_count_after_any_sequence_of_changes() {
        let mut c = Copies::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut epoch: u64 = 1;
        for _ in 0..5000 {
            let p = key(&format!("t{}", next(40)));
            let primary = ["a", "b", "c"][next(3) as usize];
            match next(10) {
                0 => c.remove(&p),
                1 => epoch += 1,
                2 => c.retain_from(&node(primary), |k| k.to_string().len() % 2 == 0),
                _ => {
                    let synced = match next(3) {
                        0 => None,
                        1 => Some(epoch),
                        _ => Some(epoch.saturating_sub(1)),
                    };
                    c.set(&p, at(primary, next(5), synced));
                }
            }
            assert_eq!((c.lag(), c.unchecked()), counted(&c));
            let of_a: u64 =
                c.all.values().filter(|p| p.primary == node("a")).map(|p| p.behind).sum();
            assert_eq!(c.lag_of(&node("a")), of_a);
        }
    }

    #[test]
    fn a_copy_marked_unchecked_counts_until_checked_again() {
        let mut c = Copies::default();
        c.set(&key("x"), at("a", 0, Some(3)));
        c.set(&key("y"), at("a", 2, Some(3)));
        assert_eq!((c.lag(), c.unchecked(), c.len()), (2, 0, 2));
        c.set(&key("x"), at("a", 0, None));
        assert_eq!(c.unchecked(), 1);
        c.set(&key("x"), at("a", 0, Some(4)));
        assert_eq!(c.unchecked(), 0);
        c.retain_from(&node("a"), |p| *p == key("x"));
        assert_eq!((c.lag(), c.unchecked(), c.len()), (0, 0, 1));
    }
}
