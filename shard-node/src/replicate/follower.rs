//! The follower side of replication: a thread per followed primary ([`Replication::follow`])
//! long-polls that primary's change feed (over `stream.rs`, or over HTTP) and applies what
//! changed there — the entries inlined in the answer where they continue this copy as checked,
//! a checked pull (`sync.rs`) for the rest — then acknowledges with its next poll. A full
//! listing (at the start, when the primary restarted, at a new layout epoch that changed more
//! than pins) goes over every copy followed there; a copy is checked (pulled) again only where
//! its partition's term moved (`Ring::term`) or the primary restarted. A new epoch that changed
//! pins alone (a move) needs no listing: the partitions whose pins changed are checked again,
//! and nothing else (`ClusterLayout::pins_touched_since`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memring_common::api::{ReplicaAck, ReplicaPoll};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::{ApiError, NodeId, PartitionKey, Ring};

use super::copies::Progress;
use super::feed::{Change, FeedAnswer};
use super::rules::LogPos;
use super::{
    MAX_ACKS, POLL_WAIT, RETRY_WAIT, Replication, follows, internal_client, still_leading, stream,
};
use crate::record::{LogEntry, decode};
use crate::storage::Storage;

/// A follower's state for one primary (`Replication::follow_primary`).
#[derive(Default)]
struct Following {
    /// The primary's feed instance and the cursor in it (`seen` 0: ask for a full listing).
    feed: u64,
    seen: u64,
    /// The layout epoch the cursor was taken at.
    epoch: u64,
    /// Copies found to continue the primary's log: their position, with the primary's lead
    /// term (the partition's term it took over at) as the term, which the acknowledgements
    /// carry.
    applied: HashMap<PartitionKey, LogPos>,
    /// Acknowledgements not yet sent.
    unsent: HashMap<PartitionKey, LogPos>,
    /// Copies to bring up again next round (a pull failed or fell short), with the primary's
    /// position to reach.
    retry: HashMap<PartitionKey, u64>,
    /// Copies whose last pull failed: not pulled again before their time ([`Backoff`]), however
    /// often their primary writes to them meanwhile.
    backoff: HashMap<PartitionKey, Backoff>,
    /// The last round left pulls for the next ([`PULLS_PER_ROUND`]): ask again without waiting.
    deferred: bool,
}

/// How long a copy whose pull failed waits before the next: [`BACKOFF_FIRST`] after the first
/// failure, doubling with each one after it, at most [`BACKOFF_MAX`]. A fill that fails at once
/// (its owner has not taken over yet, a snapshot page refused) is then not started again on
/// every write its primary takes.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// The wait after a first failure: short, since most are a take-over not finished yet, and a
/// write's quorum may wait on this copy.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// The longest wait between two pulls of a copy that keeps failing: short enough that a copy
/// whose owner took over late (a flip of many partitions) acknowledges that owner's writes soon
/// after, long enough that a fill failing at once runs a few times a second, not on every write.
const BACKOFF_MAX: Duration = Duration::from_millis(250);

impl Following {
    /// Whether `p` may be pulled now (its last pull did not fail, or its wait is over).
    fn due(&self, p: &PartitionKey, now: Instant) -> bool {
        self.backoff.get(p).is_none_or(|b| now >= b.until)
    }

    /// Records that a pull of `p` failed at `now`: the next waits longer than the last.
    fn failed(&mut self, p: &PartitionKey, now: Instant) {
        let b = self.backoff.entry(p.clone()).or_insert(Backoff { failures: 0, until: now });
        b.failures = b.failures.saturating_add(1);
        let wait = BACKOFF_FIRST.saturating_mul(1 << (b.failures - 1).min(10)).min(BACKOFF_MAX);
        b.until = now + wait;
    }

    /// Queues `p` for a pull to `target` (the furthest position asked for wins).
    fn queue(&mut self, p: PartitionKey, target: u64) {
        let at = self.retry.entry(p).or_insert(target);
        *at = (*at).max(target);
    }

    /// Up to `max` acknowledgements not yet sent, taken out of the queue.
    fn take_unsent(&mut self, max: usize) -> Vec<ReplicaAck> {
        let keys: Vec<PartitionKey> = self.unsent.keys().take(max).cloned().collect();
        keys.into_iter()
            .filter_map(|partition| {
                let at = self.unsent.remove(&partition)?;
                Some(ReplicaAck { partition, seq: at.seq, term: at.term })
            })
            .collect()
    }

    /// Puts back acknowledgements a failed poll did not deliver (newer ones win).
    fn keep_unsent(&mut self, acks: Vec<ReplicaAck>) {
        for ack in acks {
            self.unsent.entry(ack.partition).or_insert(LogPos::new(ack.term, ack.seq));
        }
    }
}

/// How a follower reaches one primary's feed.
enum Link {
    /// Nothing open: the next poll opens a stream.
    Closed,
    /// A stream to the primary at `addr`.
    Stream { addr: String, stream: stream::FeedStream },
    /// The primary does not serve streams (an earlier binary): poll over HTTP, and try a
    /// stream again after `until`.
    Http { until: Instant },
}

/// The target of a copy to bring to the end of its primary's log, wherever that is (a copy
/// whose partition's term moved without a change in the primary's feed).
const TO_END: u64 = u64::MAX;

/// Copies a round pulls from one primary at once.
const PULLS_AT_ONCE: usize = 32;

/// Copies one round pulls at most; the rest wait for the next rounds. The acknowledgements of
/// the writes waiting on this primary go out with the next poll, so a round's length is what
/// they wait: a layout change that moves the term of thousands of partitions must not hold
/// them back for all of those pulls (a join's stage made every write wait 0.6–1.1 s).
const PULLS_PER_ROUND: usize = 32;

/// How long a follower polls a primary without streams over HTTP before it tries again.
const STREAM_RETRY: Duration = Duration::from_secs(60);

/// Entries a primary inlined for a copy that continues its log.
struct Inline {
    want: Want,
    entries: Vec<LogEntry>,
}

/// A copy a round brings up to its primary.
struct Want {
    partition: PartitionKey,
    /// Its term in the ring the round follows by: the term its primary must lead at.
    term: u64,
    /// The primary's position.
    target: u64,
    /// The primary leads it at its term and its last position equals this copy's.
    same: bool,
    /// The primary's committed position (`Change::committed`).
    committed: u64,
}

impl Want {
    /// How far behind the copy is known to be before its pull (nothing known: the end of the
    /// log was asked for).
    fn behind(&self) -> u64 {
        if self.target == TO_END { 0 } else { self.target }
    }
}

thread_local! {
    /// Set on a follower's own thread ([`Replication::follow`]): its storage work runs right
    /// there, and its requests go through this client, whose connections that thread drives.
    static FOLLOWER_CLIENT: std::cell::RefCell<Option<InternalClient>> =
        const { std::cell::RefCell::new(None) };
}

/// This thread's follower client, if it is a follower's thread.
pub(super) fn follower_client() -> Option<InternalClient> {
    FOLLOWER_CLIENT.with(|c| c.borrow().clone())
}

/// Whether this is a follower's own thread (its storage work runs right here).
pub(super) fn on_follower_thread() -> bool {
    FOLLOWER_CLIENT.with(|c| c.borrow().is_some())
}

impl Replication {
    /// Follows every primary of this node's copies until `stop` turns true: one thread per
    /// other node in the layout, started and ended as nodes come and go.
    ///
    /// A follower has a thread of its own, with its own small runtime and HTTP client, and does
    /// its storage work (applying what its primary sent) right there instead of handing it to
    /// a blocking thread: a round under write load is then one wake-up of one thread — read the
    /// answer, apply it, send the next poll — where on the shared runtime it took three hand-offs
    /// between threads, which on a busy node cost more CPU than the round's own work
    /// (docs/benchmarks.md, "Replication"). Idle, the thread waits in its runtime's poll for
    /// the primary's answer.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut threads: HashMap<NodeId, std::thread::JoinHandle<()>> = HashMap::new();
        loop {
            threads.retain(|_, t| !t.is_finished());
            let current = self.ring.ring();
            if current.replicating() {
                for node in current.primaries_of(&self.me) {
                    if threads.contains_key(&node.id) {
                        continue;
                    }
                    match self.clone().follower_thread(node.id.clone(), stop.clone()) {
                        Ok(thread) => {
                            threads.insert(node.id.clone(), thread);
                        }
                        Err(e) => {
                            tracing::warn!(primary = %node.id, error = %e, "cannot start a follower; retrying")
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        for (_, thread) in threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Starts the thread that follows `primary` ([`Replication::follow`]).
    fn follower_thread(
        self: Arc<Self>,
        primary: NodeId,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let client = internal_client(self.client.credential().clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("follower".into()).spawn(move || {
            FOLLOWER_CLIENT.with(|c| *c.borrow_mut() = Some(client));
            runtime.block_on(self.follow_primary(primary, stop));
        })?;
        Ok(thread)
    }

    /// Follows one node until it is out of the layout (and out of the node list of the change
    /// in flight, which it may still lead: `Ring::node`), nothing is replicated any more (R = 1 and
    /// no change in flight: `Ring::replicating`), or `stop`:
    /// long-polls its change feed (`feed.rs`) and applies what changed there. A round costs what
    /// changed on the primary plus the copies still being retried; a full listing (at the
    /// start, when the primary restarted, at each new layout epoch) checks every copy again.
    async fn follow_primary(
        self: Arc<Self>,
        primary_id: NodeId,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut f = Following::default();
        // The ring of `f.epoch`, what a new one is compared with.
        let mut followed_by: Option<Arc<Ring>> = None;
        let mut link = Link::Closed;
        let mut epochs = self.ring.subscribe();
        let lag_gauge =
            metrics::gauge!("memring_replication_lag_entries", "primary" => primary_id.to_string());
        loop {
            // Marked seen before the ring is read, so a newer one always wakes the poll below.
            epochs.borrow_and_update();
            let ring = self.ring.ring();
            let Some(primary) = ring.node(&primary_id).cloned() else { break };
            if !ring.replicating() {
                break;
            }
            let epoch = ring.epoch();
            if f.epoch != epoch {
                // A new layout that changed pins alone: the copies of those partitions are
                // checked again. Any other: every copy followed here is looked at again (a
                // full listing), and pulled where its term moved.
                let touched = followed_by
                    .as_ref()
                    .filter(|_| f.seen != 0)
                    .and_then(|was| ring.layout().pins_touched_since(was.layout()));
                match touched {
                    Some(touched) => self.check_again(&primary.id, &ring, touched, &mut f),
                    None => f.seen = 0,
                }
                f.epoch = epoch;
                followed_by = Some(ring.clone());
            }
            let ask = ReplicaPoll {
                follower: self.me.clone(),
                feed: f.feed,
                seen: f.seen,
                epoch,
                wait_ms: 0,
                acks: f.take_unsent(MAX_ACKS),
            };
            // Hold the poll only with nothing left to retry or to acknowledge, and not at all
            // while pulls wait for their turn.
            let idle = f.retry.is_empty() && f.unsent.is_empty();
            let wait = match (f.deferred, idle) {
                (true, _) => Duration::ZERO,
                (false, true) => POLL_WAIT,
                (false, false) => RETRY_WAIT,
            };
            let ask = ReplicaPoll { wait_ms: wait.as_millis() as u64, ..ask };
            let polled = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                // A new layout may make this node follow partitions the last answer was read
                // without (a new primary's first write waits for us): ask again at once. The
                // poll was cut off mid-way, so its stream is dropped.
                Ok(()) = epochs.changed() => {
                    f.keep_unsent(ask.acks);
                    link = Link::Closed;
                    continue;
                }
                r = self.poll(&primary, &ask, &mut link) => r,
            };
            let answer = match polled {
                Ok(answer) => answer,
                Err(e) => {
                    // Keep the acknowledgements for the next try; wait a little before it.
                    f.keep_unsent(ask.acks);
                    tracing::debug!(primary = %primary.id, error = %e, "replication poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let answered = Instant::now();
            let restarted = answer.feed != f.feed;
            let (full, more, cursor, feed) =
                (answer.full || restarted, answer.more, answer.cursor, answer.feed);
            if restarted {
                // A primary that restarted leads nothing and holds no acknowledgement: every
                // copy is checked again, and its position sent again.
                f.applied.clear();
            }
            if full {
                if !self.round_full(&primary, answer.changes, &mut f).await {
                    // This node's own listing failed: ask for the full listing again.
                    f.seen = 0;
                    tokio::time::sleep(RETRY_WAIT).await;
                    continue;
                }
            } else {
                self.round_changes(&primary, answer.changes, &mut f).await;
            }
            (f.feed, f.seen) = (feed, cursor);
            if !more {
                // Every change the primary had at `answered` is applied (or being retried,
                // which keeps those copies behind).
                self.rounds.lock().insert(primary.id.clone(), (answered, epoch));
            }
            lag_gauge.set(self.copies.lock().lag_of(&primary.id) as f64);
        }
        self.copies.lock().retain_from(&primary_id, |_| false);
        self.rounds.lock().remove(&primary_id);
    }

    /// After a change of pins alone: the `touched` partitions' copies followed from
    /// `primary` in `ring` are marked unchecked and brought to the end of its log next round;
    /// those no longer followed from it are forgotten. Every other copy keeps its term, and
    /// stays checked.
    fn check_again(
        &self,
        primary: &NodeId,
        ring: &Ring,
        touched: std::collections::BTreeSet<PartitionKey>,
        f: &mut Following,
    ) {
        let mut copies = self.copies.lock();
        for p in touched {
            f.applied.remove(&p);
            f.unsent.remove(&p);
            f.retry.remove(&p);
            if follows(ring, &self.me, primary, &p) {
                copies.set(&p, Progress::unchecked(primary.clone(), 0));
                f.retry.insert(p, TO_END);
            } else if copies.get(&p).is_some_and(|c| c.primary == *primary) {
                copies.remove(&p);
            }
        }
    }

    /// A full listing of `primary`'s partitions: checks every copy followed there (and every
    /// copy held here that it did not list) and forgets copies no longer followed from it. A
    /// copy already checked at its partition's current term, and unchanged here since, needs no
    /// pull. False if this node's own listing could not be read.
    async fn round_full(
        &self,
        primary: &LayoutNode,
        changes: Vec<Change>,
        f: &mut Following,
    ) -> bool {
        let Ok(held) = self.blocking(|s| s.partitions()).await else { return false };
        let ring = self.ring.ring();
        let mine: HashMap<PartitionKey, LogPos> =
            held.into_iter().map(|h| (h.partition, LogPos::new(h.last_term, h.last_seq))).collect();
        let mut wanted: Vec<Want> = Vec::new();
        let mut listed = HashSet::new();
        for c in changes {
            listed.insert(c.partition.clone());
            // Equal to the primary's last position, which it leads at this epoch: the copy
            // continues its log (log matching), nothing to ask.
            let same =
                c.led && mine.get(&c.partition) == Some(&LogPos::new(c.last_term, c.last_seq));
            let term = ring.term(&c.partition);
            wanted.push(Want {
                partition: c.partition,
                term,
                target: c.last_seq,
                same,
                committed: c.committed,
            });
        }
        // Copies held here the primary does not list (it may hold nothing yet) are checked
        // against it like the others.
        for p in mine.keys().filter(|p| !listed.contains(*p)) {
            let term = ring.term(p);
            wanted.push(Want { partition: p.clone(), term, target: 0, same: false, committed: 0 });
        }
        wanted.retain(|w| follows(&ring, &self.me, &primary.id, &w.partition));
        // Each copy followed, with its partition's term.
        let followed: HashMap<PartitionKey, u64> =
            wanted.iter().map(|w| (w.partition.clone(), w.term)).collect();
        // What was checked stays checked where the partition's term is the same and the copy
        // has not moved since.
        f.applied.retain(|p, at| {
            followed.get(p) == Some(&at.term) && mine.get(p).is_some_and(|m| m.seq == at.seq)
        });
        f.retry.clear();
        f.backoff.retain(|p, _| followed.contains_key(p));
        self.catch_up(primary, wanted, f).await;
        self.copies.lock().retain_from(&primary.id, |p| followed.contains_key(p));
        true
    }

    /// The partitions changed on `primary` since the last round: applies the entries it sent
    /// where they continue this copy as checked, pulls the rest, and retries the copies that
    /// failed before.
    async fn round_changes(&self, primary: &LayoutNode, changes: Vec<Change>, f: &mut Following) {
        let ring = self.ring.ring();
        let mut wanted: Vec<Want> = Vec::new();
        let mut inline: Vec<Inline> = Vec::new();
        for c in changes {
            if !follows(&ring, &self.me, &primary.id, &c.partition) {
                continue;
            }
            if !f.due(&c.partition, Instant::now()) {
                // Its last pull failed: pulled when its wait is over, to where it is now.
                f.queue(c.partition, c.last_seq);
                continue;
            }
            f.retry.remove(&c.partition);
            let term = ring.term(&c.partition);
            let continues = c.entries.first().is_some_and(|first| {
                f.applied.get(&c.partition) == Some(&LogPos::new(term, first.seq - 1))
                    && c.entries.iter().all(|e| e.term <= term)
            });
            let want = Want {
                partition: c.partition,
                term,
                target: c.last_seq,
                same: false,
                committed: c.committed,
            };
            if continues {
                inline.push(Inline { want, entries: c.entries });
            } else {
                wanted.push(want);
            }
        }
        // A round's share of the copies waiting (their pulls are [`PULLS_PER_ROUND`] a round),
        // so a round costs what it pulls, not every copy still waiting.
        let now = Instant::now();
        let mut due: Vec<PartitionKey> =
            f.retry.keys().filter(|p| f.due(p, now)).take(PULLS_PER_ROUND + 1).cloned().collect();
        let more_due = due.len() > PULLS_PER_ROUND;
        due.truncate(PULLS_PER_ROUND);
        for partition in due {
            let Some(target) = f.retry.remove(&partition) else { continue };
            let term = ring.term(&partition);
            wanted.push(Want { partition, term, target, same: false, committed: 0 });
        }
        if !wanted.is_empty() || !inline.is_empty() {
            metrics::counter!("memring_replication_rounds_total").increment(1);
        }
        if !inline.is_empty() {
            let entries: usize = inline.iter().map(|i| i.entries.len()).sum();
            metrics::counter!("memring_replication_inlined_entries_total")
                .increment(entries as u64);
            for (want, result) in self.apply_inline(primary, inline).await {
                match result {
                    Some(reached) => self.note_checked(primary, reached, want, f),
                    None => wanted.push(want),
                }
            }
        }
        self.catch_up(primary, wanted, f).await;
        f.deferred |= more_due;
    }

    /// Applies entries a primary inlined in its answer, each partition under the same check
    /// as a pull (`catch_up_one`). Per partition: the position reached, or `None` (on failure:
    /// pull instead).
    async fn apply_inline(
        &self,
        primary: &LayoutNode,
        inline: Vec<Inline>,
    ) -> Vec<(Want, Option<u64>)> {
        let (ring, me, primary_id) = (self.ring.clone(), self.me.clone(), primary.id.clone());
        let work = move |s: &Storage| {
            let mut out = Vec::with_capacity(inline.len());
            for Inline { want, entries } in inline {
                let last = entries.last().map_or(0, |e| e.seq);
                let p = &want.partition;
                let allowed = || still_leading(&ring.ring(), &me, &primary_id, p, want.term);
                match s.import_followed(p, entries, &allowed) {
                    Ok(_) => out.push((want, Some(last))),
                    Err(e) => {
                        tracing::debug!(partition = %p, error = %e, "inlined entries not applied; pulling");
                        out.push((want, None));
                    }
                }
            }
            Ok(out)
        };
        self.blocking(work).await.unwrap_or_default()
    }

    /// One round's poll of `primary`: over its stream (`stream.rs`; opened first if `link` has
    /// none), or over HTTP while it does not serve streams. A failed stream is dropped.
    async fn poll(
        &self,
        primary: &LayoutNode,
        ask: &ReplicaPoll,
        link: &mut Link,
    ) -> anyhow::Result<FeedAnswer> {
        match link {
            Link::Stream { addr, .. } if *addr != primary.addr => *link = Link::Closed,
            Link::Http { until } if Instant::now() >= *until => *link = Link::Closed,
            _ => {}
        }
        if let Link::Closed = link {
            *link = match stream::FeedStream::open(&self.client(), &primary.addr).await? {
                Some(stream) => Link::Stream { addr: primary.addr.clone(), stream },
                None => Link::Http { until: Instant::now() + STREAM_RETRY },
            };
        }
        let (answer, transport) = match link {
            Link::Stream { stream, .. } => {
                let answer = stream.poll(ask).await;
                if answer.is_err() {
                    *link = Link::Closed;
                }
                (answer, "stream")
            }
            _ => (self.poll_http(primary, ask).await, "http"),
        };
        if answer.is_ok() {
            metrics::counter!("memring_replication_polls_total", "transport" => transport)
                .increment(1);
        }
        answer
    }

    /// A poll over `POST /internal/v1/replicate/poll` (a primary without streams).
    async fn poll_http(
        &self,
        primary: &LayoutNode,
        ask: &ReplicaPoll,
    ) -> anyhow::Result<FeedAnswer> {
        let resp = self
            .client()
            .post(format!("http://{}/internal/v1/replicate/poll", primary.addr))
            .json(ask)
            .send()
            .await?
            .error_for_status()?;
        let body = resp.bytes().await?;
        Ok(decode::<FeedAnswer>(&body)?)
    }

    /// Brings the `wanted` copies to `primary`'s log, each at its term (one pull per copy that
    /// is not known to continue it already, [`PULLS_AT_ONCE`] at a time); copies that could not
    /// be checked are retried at the next round.
    async fn catch_up(&self, primary: &LayoutNode, wanted: Vec<Want>, f: &mut Following) {
        use futures::StreamExt;
        let mut reached = Vec::with_capacity(wanted.len());
        let mut pulls = Vec::new();
        for w in wanted {
            // Known to continue the primary's log at this term and not behind: nothing to ask.
            let known = f.applied.get(&w.partition).copied().filter(|at| at.term == w.term);
            match known {
                Some(at) if at.seq >= w.target => reached.push((w, Ok(at.seq))),
                _ if w.same => {
                    let target = w.target;
                    reached.push((w, Ok(target)));
                }
                _ => pulls.push(w),
            }
        }
        // Beyond this round's share, a copy waits unchecked for its turn (not a failure: no
        // back-off), and the next poll does not wait.
        f.deferred = pulls.len() > PULLS_PER_ROUND;
        if f.deferred {
            let mut copies = self.copies.lock();
            for w in pulls.split_off(PULLS_PER_ROUND) {
                // Counted unchecked (a copy not yet followed included) until its pull.
                if copies.get(&w.partition).is_none_or(|p| p.synced.is_some()) {
                    copies.set(&w.partition, Progress::unchecked(primary.id.clone(), w.behind()));
                }
                f.queue(w.partition, w.target);
            }
        }
        // Each pull is its own partition's; one at a time, a round after a new term (every
        // partition a layout change touched) kept every acknowledgement waiting for all of them.
        let pulled = futures::stream::iter(pulls)
            .map(|w| async move {
                let r = self.catch_up_one(primary, &w.partition, w.term, w.target).await;
                (w, r)
            })
            .buffer_unordered(PULLS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        for (mut w, reached) in reached.into_iter().chain(pulled) {
            match reached {
                Ok(at) => {
                    if w.target == TO_END {
                        w.target = at;
                    }
                    self.note_checked(primary, at, w, f)
                }
                Err(e) => {
                    // Not checked (the owner has not taken over yet, or is gone): asked again
                    // on the next round, and not caught up until then.
                    tracing::debug!(partition = %w.partition, primary = %primary.id, error = %e, "replication round did not check this copy");
                    f.applied.remove(&w.partition);
                    let progress = Progress::unchecked(primary.id.clone(), w.behind());
                    self.copies.lock().set(&w.partition, progress);
                    f.failed(&w.partition, Instant::now());
                    f.retry.insert(w.partition, w.target);
                }
            }
        }
    }

    /// Records that the copy `w` names continues `primary`'s log at its term up to `at`, and
    /// queues its acknowledgement.
    fn note_checked(&self, primary: &LayoutNode, at: u64, w: Want, f: &mut Following) {
        let (p, target, w_term) = (w.partition, w.target, w.term);
        f.backoff.remove(&p);
        let pos = LogPos::new(w.term, at);
        // A restarted primary's full listing starts from no known copy, so every copy's
        // position is sent to it again.
        if f.applied.insert(p.clone(), pos) != Some(pos) {
            f.unsent.insert(p.clone(), pos);
        }
        let behind = target.saturating_sub(at);
        if behind > 0 {
            f.retry.insert(p.clone(), target);
        }
        let progress = Progress {
            primary: primary.id.clone(),
            behind,
            synced: Some(w_term),
            at,
            committed: w.committed.min(at),
        };
        self.copies.lock().set(&p, progress);
    }

    /// Brings this node's copy of `p` to the log of `primary` leading at `p`'s term `term`, up
    /// to `target` (its position at the poll) or further. Returns the position reached.
    async fn catch_up_one(
        &self,
        primary: &LayoutNode,
        p: &PartitionKey,
        term: u64,
        target: u64,
    ) -> Result<u64, ApiError> {
        let (me, primary_id, key) = (self.me.clone(), primary.id.clone(), p.clone());
        let still_primary = move |ring: &Ring| still_leading(ring, &me, &primary_id, &key, term);
        metrics::counter!("memring_replication_copy_checks_total").increment(1);
        Ok(self.sync_from(primary, p, Some(term), target, still_primary).await?.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy whose pulls keep failing waits longer after each, up to the cap, whatever its
    /// primary writes meanwhile; one pull that succeeds ends the wait.
    #[test]
    fn a_copy_whose_pulls_fail_waits_longer_each_time() {
        let mut f = Following::default();
        let p: PartitionKey = "t/shared".parse().expect("key");
        let t0 = Instant::now();
        assert!(f.due(&p, t0), "never failed: due");
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            f.failed(&p, now);
            let until = f.backoff.get(&p).map(|b| b.until).expect("recorded");
            assert!(!f.due(&p, now), "right after a failure: not due");
            assert!(f.due(&p, until), "due once its wait is over");
            waits.push(until - now);
            now = until;
        }
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [20, 40, 80, 160, 250, 250, 250]);
        f.queue(p.clone(), 10);
        f.queue(p.clone(), 7);
        assert_eq!(f.retry.get(&p), Some(&10), "the furthest target asked for");
        f.backoff.remove(&p);
        assert!(f.due(&p, now), "a pull that succeeded ends the wait");
    }
}
