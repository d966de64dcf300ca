//! The primary's side of a follower's long-poll, `POST /internal/v1/replicate/poll`: the
//! partitions changed after the follower's cursor (from the node's change feed,
//! `storage/feed.rs`) that it follows from this node, each with its position, and — where the follower is known to continue
//! this node's log — the entries it lacks, so a round is one request however many partitions
//! changed. The cost of an answer is proportional to what changed since the cursor; a node
//! holding 100,000 idle partitions answers an idle poll with nothing.
//!
//! A cursor of 0, or one from another process (another feed instance), gets a **full listing**
//! instead: every partition this node holds, once. A follower asks for one when it starts, when
//! the primary restarted, and at every new layout epoch (it pulls again only the copies whose
//! partition's term moved, or all of them if this node restarted).
//!
//! **Inlined entries keep the divergence check.** Entries of a partition are inlined only when
//! this node leads it at its term in the follower's layout and the follower acknowledged a
//! position under exactly that lead term: it has then been checked to continue this log up to
//! that position, and this node only appends while it leads at one term. The follower applies
//! them only when they continue the position it holds as checked at that term (`replicate.rs`); anything else
//! it pulls through the checked `GET /internal/v1/replicate/log`.

use std::time::{Duration, Instant};

use memring_common::api::ReplicaPoll;
use memring_common::ring::Ring;
use memring_common::{ApiError, ErrorCode, PartitionKey};
use serde::{Deserialize, Serialize};

use super::rules::LogPos;
use super::{POLL_WAIT, Replication, follows};
use crate::record::{self, LogEntry, Record};
use crate::storage::Storage;

/// Partitions named in one answer at most (the rest follow at once: `more`).
const MAX_CHANGES: usize = 5000;
/// Log entries inlined in one answer at most (the follower pulls the rest).
const MAX_INLINE: usize = 1000;
/// Partitions whose positions and entries an answer reads on the poll's own task at most.
const READ_HERE: usize = 8;

/// The answer to a follower's poll.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedAnswer {
    /// This process's feed instance: the cursor below belongs to it.
    pub feed: u64,
    /// The cursor to ask from next.
    pub cursor: u64,
    /// `changes` lists every partition this node holds, not only those changed.
    pub full: bool,
    /// More changes wait beyond `cursor` (the answer was cut): ask again at once.
    pub more: bool,
    /// The partitions changed (or all of them).
    pub changes: Vec<Change>,
}

impl Record for FeedAnswer {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        match version {
            7.. => record::bincode_body(body),
            6 => {
                record::bincode_body::<OldFeedAnswer<record::StoredEpisodeV6>>(body).map(Into::into)
            }
            _ => {
                record::bincode_body::<OldFeedAnswer<record::StoredEpisodeV5>>(body).map(Into::into)
            }
        }
    }
}

/// [`FeedAnswer`] as a primary of an earlier record format sends it (during a rolling upgrade),
/// with that format's episodes `E` in its entries.
#[derive(Deserialize)]
struct OldFeedAnswer<E> {
    feed: u64,
    cursor: u64,
    full: bool,
    more: bool,
    changes: Vec<OldChange<E>>,
}

#[derive(Deserialize)]
struct OldChange<E> {
    partition: PartitionKey,
    last_seq: u64,
    last_term: u64,
    led: bool,
    committed: u64,
    entries: Vec<record::OldLogEntry<E>>,
}

impl<E: Into<record::StoredEpisode>> From<OldFeedAnswer<E>> for FeedAnswer {
    fn from(old: OldFeedAnswer<E>) -> Self {
        let changes = old
            .changes
            .into_iter()
            .map(|c| Change {
                partition: c.partition,
                last_seq: c.last_seq,
                last_term: c.last_term,
                led: c.led,
                committed: c.committed,
                entries: c.entries.into_iter().map(LogEntry::from).collect(),
            })
            .collect();
        FeedAnswer { feed: old.feed, cursor: old.cursor, full: old.full, more: old.more, changes }
    }
}

/// One partition in a [`FeedAnswer`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Change {
    /// The partition.
    pub partition: PartitionKey,
    /// Its last log position here (0: it is gone or was never written).
    pub last_seq: u64,
    /// The term of the entry there.
    pub last_term: u64,
    /// This node has taken the partition over at its term in the follower's layout (its log
    /// there is the one to follow, as of the answer).
    pub led: bool,
    /// Where led: the position up to which a quorum of copies holds this node's log (how far a
    /// follower may trim its own, `rules::follower_trim`); 0 otherwise.
    pub committed: u64,
    /// Entries after the position the follower acknowledged under this node's lead term at
    /// the follower's epoch, in order (empty when there is none, or over the inline budget).
    pub entries: Vec<LogEntry>,
}

impl Replication {
    /// Answers a follower's poll (see the module notes): records its acknowledgements, waits
    /// for a change after its cursor that concerns it (up to its `wait_ms`, capped at
    /// [`POLL_WAIT`]), and lists what changed, in one blocking hop.
    pub async fn serve_poll(&self, mut ask: ReplicaPoll) -> Result<FeedAnswer, ApiError> {
        self.acks.record(&ask.follower, std::mem::take(&mut ask.acks));
        let feed = self.storage.feed();
        if ask.seen == 0 || ask.feed != feed.instance() {
            return self.full_listing(ask.epoch).await;
        }
        let (partitions, cursor, more) = self.changes_for(&ask).await;
        let ring = self.ring.ring();
        // Known before reading: whether this node leads each partition at the follower's
        // epoch, and where so, the position the follower acknowledged under that lead (the
        // entries after it are inlined).
        let plan: Vec<(PartitionKey, Option<u64>, Option<u64>)> = partitions
            .into_iter()
            .map(|p| {
                let lead = self.lead_at(&ring, &p, ask.epoch);
                let from = lead
                    .and_then(|lead| {
                        self.acks.acked(&p, &ask.follower).filter(|&(_, term)| term == lead)
                    })
                    .map(|(seq, _)| seq);
                (p, lead, from)
            })
            .collect();
        let plan_len = plan.len();
        let read = move |s: &Storage| {
            let mut budget = MAX_INLINE;
            let mut read = Vec::with_capacity(plan.len());
            for (p, lead, from) in plan {
                let at = s.last_pos(&p)?;
                let mut entries = Vec::new();
                if let Some(after) = from.filter(|after| *after < at.seq && budget > 0) {
                    match s.log_upto(&p, after, at.seq, budget) {
                        Ok(found) => entries = found,
                        // Behind where the log starts: the follower re-seeds when it pulls.
                        Err(e) if e.code() == ErrorCode::LogTrimmed => {}
                        Err(e) => return Err(e),
                    }
                    budget = budget.saturating_sub(entries.len());
                }
                read.push((p, lead, at, entries));
            }
            Ok(read)
        };
        // A few partitions changed a moment ago (a round under write load): their metas and
        // newest entries are in memory, and reading them here costs less than handing the
        // reads to a blocking thread and back. More (a follower far behind) go to one.
        let read =
            if plan_len <= READ_HERE { read(&self.storage)? } else { self.blocking(read).await? };
        let changes = read
            .into_iter()
            .map(|(partition, lead, at, entries)| self.change(&ring, partition, lead, at, entries))
            .collect();
        Ok(FeedAnswer { feed: feed.instance(), cursor, full: false, more, changes })
    }

    /// Every partition this node holds, with its position, for a follower at `epoch` (its
    /// first round, or its first at a new epoch or with a restarted primary).
    async fn full_listing(&self, epoch: u64) -> Result<FeedAnswer, ApiError> {
        metrics::counter!("memring_replication_full_listings_total").increment(1);
        let (positions, cursor) = self
            .blocking(move |s| {
                // Read before listing: a change made during the listing is sent again.
                let cursor = s.feed().now();
                Ok((s.partitions()?, cursor))
            })
            .await?;
        let ring = self.ring.ring();
        let changes = positions
            .into_iter()
            .map(|p| {
                let lead = self.lead_at(&ring, &p.partition, epoch);
                let at = LogPos::new(p.last_term, p.last_seq);
                self.change(&ring, p.partition, lead, at, Vec::new())
            })
            .collect();
        Ok(FeedAnswer {
            feed: self.storage.feed().instance(),
            cursor,
            full: true,
            more: false,
            changes,
        })
    }

    /// The term this node leads `p` at in `ring`, if `ring` is at `epoch` and it does (a
    /// follower at another epoch is told of no lead).
    fn lead_at(&self, ring: &Ring, p: &PartitionKey, epoch: u64) -> Option<u64> {
        (ring.epoch() == epoch).then(|| self.lead_term_in(ring, p)).flatten()
    }

    /// `partition` at position `at` in an answer, with where this node leads it (at `lead`)
    /// the position a quorum holds.
    fn change(
        &self,
        ring: &Ring,
        partition: PartitionKey,
        lead: Option<u64>,
        at: LogPos,
        entries: Vec<LogEntry>,
    ) -> Change {
        let committed = match lead {
            Some(_) => self.committed_at(ring, &partition, at.seq, lead),
            None => 0,
        };
        let led = lead.is_some();
        Change { committed, led, partition, last_seq: at.seq, last_term: at.term, entries }
    }

    /// Waits (up to the ask's `wait_ms`, capped at [`POLL_WAIT`]) for changes after the
    /// follower's cursor to partitions it follows from this node, and returns those, the
    /// cursor after them and whether more wait. A change it does not follow (one this node
    /// applied as a follower itself, say) moves the cursor on without waking it: at the
    /// follower's epoch it reads the same ring and would skip it (`round_changes`).
    async fn changes_for(&self, ask: &ReplicaPoll) -> (Vec<PartitionKey>, u64, bool) {
        let feed = self.storage.feed();
        let deadline = Instant::now() + Duration::from_millis(ask.wait_ms).min(POLL_WAIT);
        let mut seen = ask.seen;
        loop {
            feed.wait(seen, deadline.saturating_duration_since(Instant::now())).await;
            let changed = feed.since(seen, MAX_CHANGES);
            let mut partitions = changed.partitions;
            let ring = self.ring.ring();
            if ring.epoch() == ask.epoch {
                partitions.retain(|p| follows(&ring, &ask.follower, &self.me, p));
            }
            seen = changed.cursor;
            if !partitions.is_empty() || changed.more || Instant::now() >= deadline {
                return (partitions, seen, changed.more);
            }
        }
    }
}
