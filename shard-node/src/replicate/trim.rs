//! Trimming the logs of the partitions that changed (`storage/trim.rs` holds the mechanics):
//! every few seconds the node reads its own change feed, queues each partition that changed
//! with the time and position it was seen at, and once that position is older than the kept
//! window trims the partition's log as far as `rules.rs` allows:
//!
//! - as the primary leading it: up to what a quorum of copies holds (`rules::committed`), so a
//!   copy that later has to be re-seeded held nothing fewer than W others hold;
//! - as a follower: up to what its primary said a quorum holds, within what this copy has
//!   checked against that primary at the current epoch;
//! - never past a pin (a migration or a re-seed reading the log) nor into the last
//!   `log_keep_entries` entries.
//!
//! A trim held back only by the window is tried again a window later; one held back by a copy
//! that is behind waits for the partition's next change. A round costs what changed since the
//! last one (plus, once after a start, one pass over the partitions held).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use memring_common::{ApiError, PartitionKey, Ring};

use super::{Replication, rules};

/// What is kept of each log.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Entries younger than this.
    pub time: Duration,
    /// The last this many entries.
    pub entries: u64,
    /// Entries a reader pinned, for this long after its last read (`Storage::pin_log`).
    pub pins: Duration,
}

/// The trimmer's state between rounds.
#[derive(Default)]
pub struct Trimmer {
    /// The node's feed instance and the cursor read to (0: not read yet).
    feed: u64,
    seen: u64,
    /// Partitions waiting for their window to pass: when seen, and their last position then.
    queue: VecDeque<(Instant, PartitionKey, u64)>,
    queued: HashSet<PartitionKey>,
}

/// What a round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Partitions whose logs were trimmed.
    pub partitions: usize,
    /// Entries removed.
    pub entries: u64,
}

impl Trimmer {
    /// Partitions waiting for their window.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }
}

impl Replication {
    /// The position up to which a quorum of copies holds this node's log of `p`, which it
    /// leads (0 if it does not lead it at the current epoch); its own last position when its
    /// writes are not replicated (`Ring::replicated`).
    pub(super) fn committed(&self, ring: &Ring, p: &PartitionKey, last: u64) -> u64 {
        self.committed_at(ring, p, last, self.lead_term_in(ring, p))
    }

    /// [`Replication::committed`] for a node whose lead term of `p` in `ring` is `lead`.
    pub(super) fn committed_at(
        &self,
        ring: &Ring,
        p: &PartitionKey,
        last: u64,
        lead: Option<u64>,
    ) -> u64 {
        if !ring.replicated(p) {
            return last;
        }
        let Some(lead) = lead else { return 0 };
        let acks: Vec<(u64, u64)> =
            ring.voters(p).iter().filter_map(|f| self.acks.acked(p, &f.id)).collect();
        rules::committed(last, acks, lead, ring.layout().write_quorum() as usize)
    }

    /// How far this node may trim its log of `p` ending at `last`, by its role in `ring`.
    fn trim_limit(&self, ring: &Ring, p: &PartitionKey, last: u64) -> u64 {
        if ring.owner(p).is_some_and(|o| o.id == self.me) {
            return self.committed(ring, p, last);
        }
        if !ring.holders(p).iter().any(|n| n.id == self.me) {
            return 0;
        }
        match self.copies.lock().get(p) {
            Some(c) if c.synced == Some(ring.term(p)) => {
                let quorum = ring.layout().write_quorum() as usize;
                let committed = rules::follower_committed(c.at, c.committed, quorum);
                rules::follower_trim(c.at, committed, u64::MAX)
            }
            _ => 0,
        }
    }

    /// One round (blocking: storage calls): queues what changed since the last round and trims
    /// the partitions whose window has passed.
    pub fn trim_round(&self, t: &mut Trimmer, keep: Keep) -> Result<Trimmed, ApiError> {
        let now = Instant::now();
        let feed = self.storage.feed();
        let changed: Vec<PartitionKey> = if t.seen == 0 || t.feed != feed.instance() {
            // Once after a start: every partition held.
            t.feed = feed.instance();
            t.seen = feed.now();
            self.storage.partitions()?.into_iter().map(|p| p.partition).collect()
        } else {
            let changed = feed.since(t.seen, usize::MAX);
            t.seen = changed.cursor;
            changed.partitions
        };
        for p in changed {
            if !t.queued.contains(&p) {
                let last = self.storage.last_pos(&p)?.seq;
                t.queued.insert(p.clone());
                t.queue.push_back((now, p, last));
            }
        }
        let ring = self.ring.ring();
        let mut done = Trimmed::default();
        // Each queued partition once at most (a requeued one goes to the back).
        for _ in 0..t.queue.len() {
            match t.queue.front() {
                Some((seen, _, _)) if now.duration_since(*seen) >= keep.time => {}
                _ => break,
            }
            let Some((_, p, aged)) = t.queue.pop_front() else { break };
            let last = self.storage.last_pos(&p)?.seq;
            let pin = self.storage.pinned(&p, keep.pins).unwrap_or(u64::MAX);
            let others = self.trim_limit(&ring, &p, last).min(pin);
            let floor = rules::keep_floor(last, keep.entries, aged);
            let to = rules::primary_trim(others, floor);
            let removed = self.storage.trim_log(&p, to)?;
            if removed > 0 {
                done.partitions += 1;
                done.entries += removed;
            }
            // Held back by the window's time (or changed since): again a window later.
            let by_time = aged < others && aged < last.saturating_sub(keep.entries);
            if to < last && (by_time || last > aged) {
                t.queue.push_back((now, p, last));
            } else {
                t.queued.remove(&p);
            }
        }
        Ok(done)
    }
}
