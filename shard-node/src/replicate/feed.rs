//! The primary's side of a follower's long-poll, `POST /internal/v1/replicate/poll`: the
//! partitions changed after the follower's cursor (from the node's change feed,
//! `storage/feed.rs`), each with its position, and — where the follower is known to continue
//! this node's log — the entries it lacks, so a round is one request however many partitions
//! changed. The cost of an answer is proportional to what changed since the cursor; a node
//! holding 100,000 idle partitions answers an idle poll with nothing.
//!
//! A cursor of 0, or one from another process (another feed instance), gets a **full listing**
//! instead: every partition this node holds, once. A follower asks for one when it starts, when
//! the primary restarted, and at every new layout epoch (each copy is checked again then).
//!
//! **Inlined entries keep the divergence check.** Entries of a partition are inlined only when
//! this node leads it at the follower's epoch and the follower acknowledged a position under
//! exactly that lead term: it has then been checked to continue this log up to that position,
//! and this node only appends while it leads at one epoch. The follower applies them only when
//! they continue the position it holds as checked at that epoch (`replicate.rs`); anything else
//! it pulls through the checked `GET /internal/v1/replicate/log`.

use std::time::Duration;

use memring_common::api::ReplicaPoll;
use memring_common::{ApiError, PartitionKey};
use serde::{Deserialize, Serialize};

use super::{POLL_WAIT, Replication};
use crate::record::{LogEntry, Record};

/// Partitions named in one answer at most (the rest follow at once: `more`).
const MAX_CHANGES: usize = 5000;
/// Log entries inlined in one answer at most (the follower pulls the rest).
const MAX_INLINE: usize = 1000;

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

impl Record for FeedAnswer {}

/// One partition in a [`FeedAnswer`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Change {
    /// The partition.
    pub partition: PartitionKey,
    /// Its last log position here (0: it is gone or was never written).
    pub last_seq: u64,
    /// The term of the entry there.
    pub last_term: u64,
    /// This node has taken the partition over at the follower's epoch (its log there is the
    /// one to follow, as of the answer).
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
    /// for a change after its cursor (up to its `wait_ms`, capped at [`POLL_WAIT`]), and lists
    /// what changed.
    pub async fn serve_poll(&self, ask: ReplicaPoll) -> Result<FeedAnswer, ApiError> {
        self.acks.record(&ask.follower, ask.acks);
        let feed = self.storage.feed();
        let full = ask.seen == 0 || ask.feed != feed.instance();
        if !full {
            feed.wait(ask.seen, Duration::from_millis(ask.wait_ms).min(POLL_WAIT)).await;
        }
        let listed = self
            .blocking(move |s| {
                let feed = s.feed();
                if full {
                    // Read before listing: a change made during the listing is sent again.
                    let cursor = feed.now();
                    let all = s.partitions()?;
                    let positions =
                        all.into_iter().map(|p| (p.partition, p.last_seq, p.last_term)).collect();
                    return Ok((positions, cursor, false));
                }
                let changed = feed.since(ask.seen, MAX_CHANGES);
                let mut positions = Vec::with_capacity(changed.partitions.len());
                for p in changed.partitions {
                    let at = s.last_pos(&p)?;
                    positions.push((p, at.seq, at.term));
                }
                Ok((positions, changed.cursor, changed.more))
            })
            .await?;
        let (positions, cursor, more): (Vec<(PartitionKey, u64, u64)>, u64, bool) = listed;
        let ring = self.ring.ring();
        let leading = ring.epoch() == ask.epoch;
        let mut changes: Vec<Change> = positions
            .into_iter()
            .map(|(partition, last_seq, last_term)| {
                let led = leading && self.lead_term(&partition) == Some(ask.epoch);
                let committed = if led { self.committed(&ring, &partition, last_seq) } else { 0 };
                Change { led, committed, partition, last_seq, last_term, entries: Vec::new() }
            })
            .collect();
        if !full {
            self.inline_entries(&ask.follower, ask.epoch, &mut changes).await?;
        }
        Ok(FeedAnswer { feed: feed.instance(), cursor, full, more, changes })
    }

    /// Fills in the entries `follower` is known to lack (within [`MAX_INLINE`]).
    async fn inline_entries(
        &self,
        follower: &memring_common::NodeId,
        epoch: u64,
        changes: &mut [Change],
    ) -> Result<(), ApiError> {
        // (index into `changes`, the follower's acknowledged position)
        let wanted: Vec<(usize, PartitionKey, u64)> = changes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.led)
            .filter_map(|(i, c)| {
                let (seq, term) = self.acks.acked(&c.partition, follower)?;
                (term == epoch && seq < c.last_seq).then(|| (i, c.partition.clone(), seq))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let pages = self
            .blocking(move |s| {
                let mut budget = MAX_INLINE;
                let mut pages = Vec::new();
                for (i, p, after) in wanted {
                    if budget == 0 {
                        break;
                    }
                    let entries = match s.log_after(&p, after, budget) {
                        Ok(entries) => entries,
                        // Behind where the log starts: the follower re-seeds when it pulls.
                        Err(e) if e.code() == memring_common::ErrorCode::LogTrimmed => continue,
                        Err(e) => return Err(e),
                    };
                    budget = budget.saturating_sub(entries.len());
                    pages.push((i, entries));
                }
                Ok(pages)
            })
            .await?;
        for (i, entries) in pages {
            changes[i].entries = entries;
        }
        Ok(())
    }
}
