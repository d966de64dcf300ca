//! Replication (DESIGN.md, "Replication and failure"): with a layout's `replication_factor`
//! R > 1, every partition lives on the R nodes of `Ring::replicas`; its owner (the first that may
//! lead) takes the writes, the others follow it. The protocol's decisions are the pure functions
//! of [`rules`], which the model checker of `replicate/model.rs` explores exhaustively.
//!
//! **One log per partition, with terms.** A follower applies its primary's log entries under the
//! primary's own sequence numbers and terms (`Storage::import_replicated`); an entry's term is
//! the layout epoch at which its writer had taken the partition over. Logs are compared by
//! `(last term, last position)`, and two copies with an entry of the same term at a position hold
//! the same entries up to it, so a position (`last_seq`) read by a copy that has checked its log
//! against the owner's means the same everywhere: it is what a follower acknowledges, what a
//! read-your-writes token names, and what a node taking over compares.
//!
//! - **Taking over** ([`Replication::take_over`]): before an owner writes or answers reads at a
//!   new layout epoch, it asks R − W other copies for their position (live ones first; `POST
//!   /internal/v1/replicate/position`, answered under that copy's write lock once it has seen the
//!   epoch; from then on it follows only an owner that took over at an epoch at least as new) and
//!   makes its log the most up to date one: it probes back to where the two agree, cuts its own
//!   entries after that, and pulls the rest. Any write acknowledged by W copies is on one of the
//!   copies it heard, and the most up-to-date log holds every acknowledged write.
//! - **Follower** ([`Replication::follow`]): one task per other node, long-polling its `POST
//!   /internal/v1/replicate/poll` (answered as soon as anything there changes), then pulling the
//!   log of each partition it follows there from `GET /internal/v1/replicate/log` with the
//!   layout epoch it follows by. The owner answers only once it has taken over at exactly that
//!   epoch, and only if its entry at the follower's last position has the follower's term there;
//!   otherwise it says where its entries of that term end, and the follower probes back and cuts
//!   its log to where they agree (entries no quorum acknowledged) before it applies anything.
//! - **Primary** ([`Acks`]): a node-wide change counter the polls wait on, and each follower's
//!   acknowledged position per partition *with the term it was made under*; a write is answered
//!   once `write_quorum` copies (the primary's included) acknowledged it under the write's own
//!   term, else 503 after `quorum_timeout` (the write stays and keeps replicating; retrying it is
//!   idempotent).
//! - **Replica reads** ([`Replication::replica_read`]): a follower answers a read only if its copy
//!   was checked against the owner at the current epoch, and has applied the position the read
//!   asks for or — without one — was caught up within the staleness bound; otherwise
//!   `replica_behind` and the router asks the owner.
//! - **Status** ([`Replication::status`]): caught up only when every primary answered a round
//!   at the current epoch and every copy followed there was checked against its owner at that
//!   epoch and is not behind: the control plane's test for re-admitting a node and for handing
//!   leadership back to it.

mod copies;
pub mod feed;
pub mod rules;
mod stream;
pub use stream::PROTOCOL as STREAM_PROTOCOL;
pub mod trim;

#[cfg(test)]
mod model;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memring_common::api::{
    self, ReplicaAck, ReplicaPoll, ReplicaPosition, ReplicaStatus, partition_path,
};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, NodeId, PartitionKey, Ring};
use parking_lot::Mutex;

use crate::record::{LogEntry, decode};
use crate::storage::Storage;
use copies::{Copies, Progress};
use feed::{Change, FeedAnswer};
use rules::{LogPos, Refusal};

/// How long a primary holds a follower's poll when nothing changes.
pub const POLL_WAIT: Duration = Duration::from_secs(1);
/// Log entries pulled per request.
const PAGE: usize = 1000;
/// Memories per snapshot page of a re-seed.
const SNAPSHOT_PAGE: usize = 500;
/// How long a poll may wait while some copies are being retried or acknowledgements wait.
const RETRY_WAIT: Duration = Duration::from_millis(200);
/// Acknowledgements sent in one poll at most (after a full listing there is one per copy).
const MAX_ACKS: usize = 10_000;
/// A primary not heard from for this long makes a node not caught up.
const ROUND_FRESH: Duration = Duration::from_secs(3);

/// The primary side: what each follower has acknowledged (what changed is the storage's feed).
#[derive(Default)]
pub struct Acks {
    /// Each follower's acknowledged (position, term) per partition.
    acked: Mutex<HashMap<(PartitionKey, NodeId), (u64, u64)>>,
    notify: tokio::sync::Notify,
}

impl Acks {
    /// `follower`'s last acknowledged (position, term) of `partition`.
    pub fn acked(&self, partition: &PartitionKey, follower: &NodeId) -> Option<(u64, u64)> {
        self.acked.lock().get(&(partition.clone(), follower.clone())).copied()
    }

    /// Records `follower`'s acknowledgements and wakes writes waiting for them.
    pub fn record(&self, follower: &NodeId, acks: Vec<ReplicaAck>) {
        if acks.is_empty() {
            return;
        }
        let mut acked = self.acked.lock();
        for ack in acks {
            // A copy cut back acknowledges less than before; its position is what it has now.
            acked.insert((ack.partition, follower.clone()), (ack.seq, ack.term));
        }
        drop(acked);
        self.notify.notify_waiters();
    }

    /// Waits until `needed` of `followers` have acknowledged `partition` up to `seq` under
    /// `term` (the write's); false if `timeout` passes first.
    pub async fn wait_quorum(
        &self,
        partition: &PartitionKey,
        followers: &[NodeId],
        needed: usize,
        at: LogPos,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let have = || {
            let acked = self.acked.lock();
            followers
                .iter()
                .filter(|f| {
                    acked
                        .get(&(partition.clone(), (*f).clone()))
                        .is_some_and(|(seq, term)| rules::ack_covers(*seq, *term, at.seq, at.term))
                })
                .count()
        };
        loop {
            // Listen before looking, so an ack between the two is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if have() >= needed {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return have() >= needed;
            }
        }
    }
}

/// What a log pull answered.
enum Pulled {
    /// The node's entry at the asked position has the asked term: its entries after it.
    Entries(Vec<LogEntry>),
    /// It does not: the node's last position holding an entry of a term ≤ the asked one.
    Diverges { end_of_term: u64 },
}

/// A follower's state for one primary (`Replication::follow_primary`).
#[derive(Default)]
struct Following {
    /// The primary's feed instance and the cursor in it (`seen` 0: ask for a full listing).
    feed: u64,
    seen: u64,
    /// The layout epoch the cursor was taken at.
    epoch: u64,
    /// Copies found to continue the primary's log: their position, with the primary's lead
    /// term as the term (what the acknowledgements carry).
    applied: HashMap<PartitionKey, LogPos>,
    /// Acknowledgements not yet sent.
    unsent: HashMap<PartitionKey, LogPos>,
    /// Copies to bring up again next round (a pull failed or fell short), with the primary's
    /// position to reach.
    retry: HashMap<PartitionKey, u64>,
}

impl Following {
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
    /// The primary's position.
    target: u64,
    /// The primary leads it at this epoch and its last position equals this copy's.
    same: bool,
    /// The primary's committed position (`Change::committed`).
    committed: u64,
}

/// Replication on one node: its primary side ([`Acks`], taking over) and its follower side.
pub struct Replication {
    me: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    client: InternalClient,
    /// Acknowledgements of this node's followers.
    pub acks: Acks,
    quorum_timeout: Duration,
    staleness: Duration,
    /// Followed copies.
    copies: Mutex<Copies>,
    /// When each primary last answered a poll whose changes this node has applied since (so
    /// every copy followed there that is not behind had all the primary had then), and the
    /// layout epoch that round followed by.
    rounds: Mutex<HashMap<NodeId, (Instant, u64)>>,
    /// Partitions whose writes this node has taken over, with the epoch it did so at.
    taken: Mutex<HashMap<PartitionKey, u64>>,
    /// One take-over at a time per partition (partitions take over side by side after a
    /// layout change, each asking its own peers).
    taking: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Turns true when the node stops (ends the followers' streams served here).
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Replication {
    /// Replication for node `me`: writes wait up to `quorum_timeout` for their copies, and a
    /// follower answers reads without a token while it was caught up within `staleness`.
    pub fn new(
        me: NodeId,
        storage: Arc<Storage>,
        ring: Arc<RingView>,
        credential: Arc<memring_common::internal::ClusterCredential>,
        quorum_timeout: Duration,
        staleness: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let client = internal_client(credential)?;
        Ok(Self {
            me,
            storage,
            ring,
            client,
            acks: Acks::default(),
            quorum_timeout,
            staleness,
            copies: Mutex::new(Copies::default()),
            rounds: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashMap::new()),
            taking: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// After a committed change reaching log position `at` of `partition`: wakes the
    /// followers, then, with replication, waits until the layout's write quorum of copies has
    /// acknowledged it under its term (503 if that takes too long).
    pub async fn replicated(&self, partition: &PartitionKey, at: LogPos) -> Result<(), ApiError> {
        let ring = self.ring.ring();
        let needed = ring.layout().write_quorum().saturating_sub(1) as usize;
        if needed == 0 {
            return Ok(());
        }
        let followers: Vec<NodeId> =
            ring.followers(partition).iter().map(|n| n.id.clone()).collect();
        if self.acks.wait_quorum(partition, &followers, needed, at, self.quorum_timeout).await {
            return Ok(());
        }
        metrics::counter!("memring_replication_quorum_timeouts_total").increment(1);
        Err(ApiError::unavailable(
            format!(
                "written on the primary of {partition}, but not yet on {} copies within {} ms; \
                 retry (writes by id are idempotent)",
                needed + 1,
                self.quorum_timeout.as_millis()
            ),
            1,
        ))
    }

    /// The cluster credential its requests carry (the one its node checks, too).
    pub fn credential(&self) -> &Arc<memring_common::internal::ClusterCredential> {
        self.client.credential()
    }

    /// The client for internal requests made on this thread (a follower's own, on its thread).
    fn client(&self) -> InternalClient {
        follower_client().unwrap_or_else(|| self.client.clone())
    }

    /// The epoch this node leads `partition` at: the current one, if it has taken it over then.
    fn lead_term(&self, partition: &PartitionKey) -> Option<u64> {
        let epoch = self.ring.ring().epoch();
        self.taken.lock().get(partition).copied().filter(|e| *e == epoch)
    }

    /// Before this node's first write to `partition` (or read as its owner) at the current
    /// epoch: makes its log the most up-to-date of its own and R − W other live copies' (see
    /// the module notes). 503 while those copies cannot be asked or the log cannot be adopted.
    pub async fn take_over(&self, partition: &PartitionKey) -> Result<(), ApiError> {
        let ring = self.ring.ring();
        let epoch = ring.epoch();
        if ring.layout().replication_factor < 2 || self.taken.lock().get(partition) == Some(&epoch)
        {
            return Ok(());
        }
        let lock = self.taking.lock().entry(partition.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        if self.taken.lock().get(partition) == Some(&epoch) {
            return Ok(());
        }
        owns(&ring, &self.me, partition)?;
        let needed = rules::take_over_peers(
            ring.replicas(partition).len(),
            ring.layout().write_quorum() as usize,
        );
        // The live copies first; if too few answer, the ones marked down as well: a copy
        // marked down that is back (not yet re-admitted) can answer, and any R − W answers
        // make the quorums meet, whoever gives them. Its own re-admission waits for this
        // take-over, so it must be asked when it is the only other copy left.
        let (live, down): (Vec<&LayoutNode>, Vec<&LayoutNode>) =
            ring.followers(partition).into_iter().partition(|n| !ring.layout().is_down(&n.id));
        let mut answered = self.positions(partition, epoch, &live).await;
        if answered.len() < needed {
            answered.extend(self.positions(partition, epoch, &down).await);
        }
        if answered.len() < needed {
            return Err(ApiError::unavailable(
                format!(
                    "{} is taking over the writes of {partition} and needs the log positions of \
                     {needed} other copies; {} answered; retry shortly",
                    self.me,
                    answered.len()
                ),
                1,
            ));
        }
        let mine = self.last_pos(partition).await?;
        if let Some((peer, best)) = rules::adopt_from(mine, answered) {
            if !rules::may_adopt(epoch, best) {
                return Err(ApiError::unavailable(
                    format!(
                        "{} holds {partition} up to term {}, newer than this node's layout \
                         (epoch {epoch}); retry once it has caught up",
                        peer.id, best.term
                    ),
                    1,
                ));
            }
            tracing::info!(%partition, from = %peer.id, mine_term = mine.term, mine = mine.seq, theirs_term = best.term, theirs = best.seq, "taking over: adopting a more up-to-date copy's log");
            let (me, p) = (self.me.clone(), partition.clone());
            let allowed = move |ring: &Ring| {
                owns(ring, &me, &p)?;
                same_epoch(ring, epoch)
            };
            let reached = self.sync_from(&peer, partition, None, best.seq, allowed).await?;
            if reached < best {
                // The copy changed while we pulled: ask everyone again.
                return Err(ApiError::unavailable(
                    format!(
                        "{} could adopt {partition} only to {}/{} of {}/{} from {}; retry",
                        self.me, reached.term, reached.seq, best.term, best.seq, peer.id
                    ),
                    1,
                ));
            }
        } else if mine == LogPos::default() {
            // A copy dropped for a re-seed and no copy heard holds anything: it starts empty.
            let key = partition.clone();
            if self.blocking(move |s| s.is_reseeding(&key)).await? {
                let key = partition.clone();
                self.blocking(move |s| s.drop_partition(&key)).await?;
            }
        }
        self.taken.lock().insert(partition.clone(), epoch);
        Ok(())
    }

    /// The log positions `peers` give for a take-over of `partition` at `epoch` (those that
    /// answer within the quorum timeout).
    async fn positions(
        &self,
        partition: &PartitionKey,
        epoch: u64,
        peers: &[&LayoutNode],
    ) -> Vec<(LayoutNode, LogPos)> {
        let asked = futures::future::join_all(peers.iter().map(|peer| async move {
            let url = format!(
                "http://{}/internal/v1/replicate/position/{}?epoch={epoch}",
                peer.addr,
                partition_path(partition)
            );
            let ask = async {
                let resp = self.client().post(&url).send().await?.error_for_status()?;
                resp.json::<ReplicaPosition>().await
            };
            let answer = tokio::time::timeout(self.quorum_timeout, ask).await;
            answer
                .ok()
                .and_then(Result::ok)
                .map(|pos| ((*peer).clone(), LogPos::new(pos.last_term, pos.last_seq)))
        }))
        .await;
        asked.into_iter().flatten().collect()
    }

    /// Checked under the partition's write lock right before a write or delete commits here,
    /// given the term of the partition's last log entry: this node owns `partition` in its
    /// current layout and, with replication, has taken its writes over at that layout's epoch,
    /// which is the term of the new entries. A position this node reported to a new owner
    /// (under the same lock, at a newer epoch) can therefore never be followed by an entry of
    /// its own.
    pub fn may_commit(&self, partition: &PartitionKey, last_term: u64) -> Result<u64, ApiError> {
        let ring = self.ring.ring();
        owns(&ring, &self.me, partition)?;
        let replicated = ring.layout().replication_factor >= 2;
        let taken = self.taken.lock().get(partition).copied();
        rules::commit_term(replicated, ring.epoch(), taken, last_term).map_err(|why| {
            let message = match why {
                Refusal::NotTakenOver => format!(
                    "the layout changed to epoch {} while this write waited; retry",
                    ring.epoch()
                ),
                Refusal::StaleLayout => format!(
                    "{partition} has entries of term {last_term}, newer than this node's layout \
                     (epoch {}); retry",
                    ring.epoch()
                ),
            };
            ApiError::new(ErrorCode::PartitionMoving, message).with_retry_after(1)
        })
    }

    /// This copy's position for a node taking `partition` over at `epoch`: answered once this
    /// node has seen that epoch, under the partition's write lock, so nothing from an owner of an
    /// older epoch is applied here afterwards.
    pub async fn position(
        &self,
        partition: &PartitionKey,
        epoch: u64,
    ) -> Result<ReplicaPosition, ApiError> {
        self.ring.reach(epoch).await?;
        let pos = self.last_pos(partition).await?;
        Ok(ReplicaPosition { last_seq: pos.seq, last_term: pos.term })
    }

    /// `GET /internal/v1/replicate/log`: this copy's entries of `partition` after position
    /// `after`, if its entry there has term `term` (else where its entries of that term end).
    /// With `epoch` (a follower asking its owner), this node answers only as the partition's
    /// owner at exactly that epoch, having taken it over; the epoch is then its lead term.
    pub async fn serve_log(
        &self,
        partition: &PartitionKey,
        after: LogPos,
        limit: usize,
        epoch: Option<u64>,
    ) -> Result<Vec<LogEntry>, ApiError> {
        if let Some(epoch) = epoch {
            self.ring.reach(epoch).await?;
            let ring = self.ring.ring();
            same_epoch(&ring, epoch)?;
            owns(&ring, &self.me, partition)?;
            self.take_over(partition).await?;
            if self.lead_term(partition) != Some(epoch) {
                return Err(ApiError::unavailable(
                    format!("{} is no longer leading {partition} at epoch {epoch}", self.me),
                    1,
                ));
            }
        }
        let p = partition.clone();
        let answer = self
            .blocking(move |s| {
                if !rules::entries_match(after.term, s.term_at(&p, after.seq)?) {
                    return Ok(Err(s.end_of_term(&p, after.term)?));
                }
                Ok(Ok(s.log_after(&p, after.seq, limit)?))
            })
            .await?;
        match answer {
            Ok(entries) => Ok(entries),
            Err(end_of_term) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the log of {partition} on {} has no entry of term {} at position {}",
                    self.me, after.term, after.seq
                ),
            )
            .with_details(serde_json::json!({ "end_of_term": end_of_term }))),
        }
    }

    /// Whether this node may answer a read of `partition` as a replica: it is the owner, or a
    /// follower whose copy was checked against the owner at the current epoch and has applied
    /// `min_seq` (when asked for one) or was caught up within the staleness bound.
    pub async fn replica_read(
        &self,
        partition: &PartitionKey,
        min_seq: u64,
    ) -> Result<&'static str, ApiError> {
        let ring = self.ring.ring();
        if ring.owner(partition).is_some_and(|o| o.id == self.me) {
            // As the owner, it answers once it holds every acknowledged write.
            self.take_over(partition).await?;
            return Ok("primary");
        }
        if !ring.replicas(partition).iter().any(|n| n.id == self.me) {
            return Err(ApiError::new(
                ErrorCode::WrongOwner,
                format!("node {} holds no copy of {partition} at epoch {}", self.me, ring.epoch()),
            ));
        }
        let behind = |why: String| Err(ApiError::new(ErrorCode::ReplicaBehind, why));
        let copy = self.copies.lock().get(partition).cloned();
        let synced = copy.as_ref().is_some_and(|c| c.synced == Some(ring.epoch()));
        // Caught up at its primary's last round, and that round is recent enough.
        let fresh = copy.is_some_and(|c| {
            c.behind == 0
                && self.rounds.lock().get(&c.primary).is_some_and(|(at, epoch)| {
                    *epoch == ring.epoch() && at.elapsed() <= self.staleness
                })
        });
        if !synced {
            // A position on a copy not checked at this epoch may name other entries.
            return behind(format!(
                "this copy of {partition} has not been checked against its owner at epoch {}",
                ring.epoch()
            ));
        }
        if min_seq > 0 {
            let have = self.last_pos(partition).await?.seq;
            if have < min_seq {
                return behind(format!("this copy of {partition} is at {have}, not {min_seq}"));
            }
            return Ok("replica");
        }
        if fresh {
            Ok("replica")
        } else {
            behind(format!(
                "this copy of {partition} was not caught up within the last {} ms",
                self.staleness.as_millis()
            ))
        }
    }

    /// How this node's followed copies stand (the control plane's test for re-admission and
    /// for handing leadership back).
    pub fn status(&self) -> ReplicaStatus {
        let ring = self.ring.ring();
        let layout = ring.layout();
        let epoch = ring.epoch();
        let rounds = self.rounds.lock();
        // Every primary answered lately, in a round that chose what to follow by this epoch.
        let heard_all =
            layout.nodes.iter().filter(|n| n.id != self.me && !layout.is_down(&n.id)).all(|n| {
                rounds
                    .get(&n.id)
                    .is_some_and(|(at, seen)| at.elapsed() <= ROUND_FRESH && *seen == epoch)
            });
        let copies = self.copies.lock();
        let (lag, unchecked) = (copies.lag(), copies.unchecked(epoch));
        ReplicaStatus {
            node: self.me.clone(),
            epoch,
            following: copies.len(),
            lag,
            unchecked,
            caught_up: layout.replication_factor > 1 && heard_all && lag == 0 && unchecked == 0,
        }
    }

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
            if current.layout().replication_factor > 1 {
                for node in current.layout().nodes.iter().filter(|n| n.id != self.me) {
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

    /// Follows one node until it leaves the layout, replication is switched off, or `stop`:
    /// long-polls its change feed (`feed.rs`) and applies what changed there. A round costs what
    /// changed on the primary plus the copies still being retried; a full listing (at the
    /// start, when the primary restarted, at each new layout epoch) checks every copy again.
    async fn follow_primary(
        self: Arc<Self>,
        primary_id: NodeId,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut f = Following::default();
        let mut link = Link::Closed;
        let mut epochs = self.ring.subscribe();
        let lag_gauge =
            metrics::gauge!("memring_replication_lag_entries", "primary" => primary_id.to_string());
        loop {
            // Marked seen before the ring is read, so a newer one always wakes the poll below.
            epochs.borrow_and_update();
            let ring = self.ring.ring();
            let Some(primary) = ring.layout().node(&primary_id).cloned() else { break };
            if ring.layout().replication_factor < 2 {
                break;
            }
            let epoch = ring.epoch();
            if f.epoch != epoch {
                // A new layout: every copy followed here is checked again (a full listing).
                f.epoch = epoch;
                f.seen = 0;
            }
            let ask = ReplicaPoll {
                follower: self.me.clone(),
                feed: f.feed,
                seen: f.seen,
                epoch,
                wait_ms: 0,
                acks: f.take_unsent(MAX_ACKS),
            };
            // Hold the poll only with nothing left to retry or to acknowledge.
            let idle = f.retry.is_empty() && f.unsent.is_empty();
            let ask = ReplicaPoll {
                wait_ms: if idle { POLL_WAIT } else { RETRY_WAIT }.as_millis() as u64,
                ..ask
            };
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
            let (full, more, cursor, feed) =
                (answer.full || answer.feed != f.feed, answer.more, answer.cursor, answer.feed);
            if full {
                if !self.round_full(&primary, epoch, answer.changes, &mut f).await {
                    // This node's own listing failed: ask for the full listing again.
                    f.seen = 0;
                    tokio::time::sleep(RETRY_WAIT).await;
                    continue;
                }
            } else {
                self.round_changes(&primary, epoch, answer.changes, &mut f).await;
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

    /// A full listing of `primary`'s partitions: checks every copy followed there (and every
    /// copy held here that it did not list) and forgets copies no longer followed from it.
    /// False if this node's own listing could not be read.
    async fn round_full(
        &self,
        primary: &LayoutNode,
        epoch: u64,
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
            wanted.push(Want {
                partition: c.partition,
                target: c.last_seq,
                same,
                committed: c.committed,
            });
        }
        // Copies held here the primary does not list (it may hold nothing yet) are checked
        // against it like the others.
        for p in mine.into_keys().filter(|p| !listed.contains(p)) {
            wanted.push(Want { partition: p, target: 0, same: false, committed: 0 });
        }
        wanted.retain(|w| follows(&ring, &self.me, &primary.id, &w.partition));
        let followed: HashSet<PartitionKey> = wanted.iter().map(|w| w.partition.clone()).collect();
        f.applied.clear();
        f.retry.clear();
        self.catch_up(primary, epoch, wanted, f).await;
        self.copies.lock().retain_from(&primary.id, |p| followed.contains(p));
        true
    }

    /// The partitions changed on `primary` since the last round: applies the entries it sent
    /// where they continue this copy as checked, pulls the rest, and retries the copies that
    /// failed before.
    async fn round_changes(
        &self,
        primary: &LayoutNode,
        epoch: u64,
        changes: Vec<Change>,
        f: &mut Following,
    ) {
        let ring = self.ring.ring();
        let mut wanted: Vec<Want> = Vec::new();
        let mut inline: Vec<Inline> = Vec::new();
        for c in changes {
            if !follows(&ring, &self.me, &primary.id, &c.partition) {
                continue;
            }
            f.retry.remove(&c.partition);
            let continues = c.entries.first().is_some_and(|first| {
                f.applied.get(&c.partition) == Some(&LogPos::new(epoch, first.seq - 1))
                    && c.entries.iter().all(|e| e.term <= epoch)
            });
            let want = Want {
                partition: c.partition,
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
        wanted.extend(f.retry.drain().map(|(partition, target)| Want {
            partition,
            target,
            same: false,
            committed: 0,
        }));
        if !wanted.is_empty() || !inline.is_empty() {
            metrics::counter!("memring_replication_rounds_total").increment(1);
        }
        if !inline.is_empty() {
            let entries: usize = inline.iter().map(|i| i.entries.len()).sum();
            metrics::counter!("memring_replication_inlined_entries_total")
                .increment(entries as u64);
            for (want, result) in self.apply_inline(primary, epoch, inline).await {
                match result {
                    Some(reached) => self.note_checked(primary, epoch, reached, want, f),
                    None => wanted.push(want),
                }
            }
        }
        self.catch_up(primary, epoch, wanted, f).await;
    }

    /// Applies entries a primary inlined in its answer, each partition under the same check
    /// as a pull (`catch_up_one`). Per partition: the position reached, or `None` (on failure:
    /// pull instead).
    async fn apply_inline(
        &self,
        primary: &LayoutNode,
        epoch: u64,
        inline: Vec<Inline>,
    ) -> Vec<(Want, Option<u64>)> {
        let (ring, me, primary_id) = (self.ring.clone(), self.me.clone(), primary.id.clone());
        let work = move |s: &Storage| {
            let mut out = Vec::with_capacity(inline.len());
            for Inline { want, entries } in inline {
                let last = entries.last().map_or(0, |e| e.seq);
                let p = &want.partition;
                let allowed = || still_leading(&ring.ring(), &me, &primary_id, p, epoch);
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

    /// Brings the `wanted` copies to `primary`'s log at `epoch` (one pull per copy that is
    /// not known to continue it already); copies that could not be checked are retried at the
    /// next round.
    async fn catch_up(
        &self,
        primary: &LayoutNode,
        epoch: u64,
        wanted: Vec<Want>,
        f: &mut Following,
    ) {
        for w in wanted {
            // Known to continue the primary's log at this epoch and not behind: nothing to ask.
            let known = f.applied.get(&w.partition).copied().filter(|at| at.term == epoch);
            let reached = match known {
                Some(at) if at.seq >= w.target => Ok(at.seq),
                _ if w.same => Ok(w.target),
                _ => self.catch_up_one(primary, &w.partition, epoch, w.target).await,
            };
            match reached {
                Ok(at) => self.note_checked(primary, epoch, at, w, f),
                Err(e) => {
                    // Not checked (the owner has not taken over yet, or is gone): asked again
                    // on the next round, and not caught up until then.
                    tracing::debug!(partition = %w.partition, primary = %primary.id, error = %e, "replication round did not check this copy");
                    f.applied.remove(&w.partition);
                    let progress = Progress {
                        primary: primary.id.clone(),
                        behind: w.target,
                        synced: None,
                        at: 0,
                        committed: 0,
                    };
                    self.copies.lock().set(&w.partition, progress);
                    f.retry.insert(w.partition, w.target);
                }
            }
        }
    }

    /// Records that the copy `w` names continues `primary`'s log at `epoch` up to `at`, and
    /// queues its acknowledgement.
    fn note_checked(&self, primary: &LayoutNode, epoch: u64, at: u64, w: Want, f: &mut Following) {
        let (p, target) = (w.partition, w.target);
        let pos = LogPos::new(epoch, at);
        // A full listing starts from no known copy, so every copy's position is sent again
        // then (the primary may have restarted since).
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
            synced: Some(epoch),
            at,
            committed: w.committed.min(at),
        };
        self.copies.lock().set(&p, progress);
    }

    /// Brings this node's copy of `p` to the log of `primary` leading at `epoch`, up to
    /// `target` (its position at the poll) or further. Returns the position reached.
    async fn catch_up_one(
        &self,
        primary: &LayoutNode,
        p: &PartitionKey,
        epoch: u64,
        target: u64,
    ) -> Result<u64, ApiError> {
        let (me, primary_id, key) = (self.me.clone(), primary.id.clone(), p.clone());
        let still_primary = move |ring: &Ring| still_leading(ring, &me, &primary_id, &key, epoch);
        Ok(self.sync_from(primary, p, Some(epoch), target, still_primary).await?.seq)
    }

    /// Makes this copy of `p` continue `node`'s log and pulls it up to position `to` (or its
    /// end): probes back from this copy's last position to where the two logs agree, cuts this
    /// copy's entries after that, then applies `node`'s page by page. `allowed` is checked
    /// against the current ring under the partition's write lock before each change lands; with
    /// `epoch`, `node` must be leading the partition at that epoch (a follower asking its
    /// owner). The one loop of a follower's round and of a take-over. A copy marked as being
    /// re-seeded, or that cannot continue `node`'s log because one of the two is trimmed past
    /// where they would meet (`log_trimmed`), is re-seeded from `node` instead
    /// ([`Replication::reseed`]). Returns the position reached.
    async fn sync_from(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        epoch: Option<u64>,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        let key = p.clone();
        let (reseeding, at) =
            self.blocking(move |s| Ok((s.is_reseeding(&key)?, s.last_pos(&key)?))).await?;
        if reseeding {
            return self.reseed(node, p, epoch, to, allowed).await;
        }
        match self.sync_log(node, p, epoch, at, to, allowed.clone()).await {
            Err(e) if e.code() == ErrorCode::LogTrimmed => {
                tracing::info!(partition = %p, from = %node.id, reason = %e, "re-seeding this copy");
                self.reseed(node, p, epoch, to, allowed).await
            }
            reached => reached,
        }
    }

    /// Replaces this copy of `p` by a snapshot of `node`'s (the migration copy path: its export
    /// pages, `storage/trim.rs`), then pulls `node`'s entries after the snapshot's position up to
    /// `to`. The copy stays marked until then, so a crash anywhere re-seeds it again.
    async fn reseed(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        epoch: Option<u64>,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        metrics::counter!("memring_replication_reseeds_total").increment(1);
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.begin_reseed(&key, &|| a(&ring.ring()))).await?;
        let mut after: Option<String> = None;
        let mut start: Option<LogPos> = None;
        let mut copied = 0usize;
        loop {
            let mut url = format!(
                "http://{}/internal/v1/migrate/{}/export?limit={SNAPSHOT_PAGE}",
                node.addr,
                partition_path(p)
            );
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let (body, headers) = self.get_bytes(&url).await?;
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::internal(format!("{url} answered without {name}")))
            };
            let number = |name: &str| {
                header(name)?
                    .parse::<u64>()
                    .map_err(|_| ApiError::internal(format!("{url}: {name} is not a number")))
            };
            if start.is_none() {
                start = Some(LogPos::new(
                    number(api::LAST_TERM_HEADER)?,
                    number(api::LAST_SEQ_HEADER)?,
                ));
            }
            let ops: Vec<crate::record::LogOp> = decode(&body)?;
            copied += ops.len();
            let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
            self.blocking(move |s| s.import_snapshot(&key, ops, &|| a(&ring.ring()))).await?;
            match header(api::NEXT_AFTER_HEADER) {
                Ok(next) => after = Some(next),
                Err(_) => break,
            }
        }
        let start = start.unwrap_or_default();
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.place_snapshot(&key, start, &|| a(&ring.ring()))).await?;
        let reached = self.sync_log(node, p, epoch, start, to.max(start.seq), allowed).await?;
        let key = p.clone();
        self.blocking(move |s| s.end_reseed(&key)).await?;
        tracing::info!(partition = %p, from = %node.id, memories = copied, snapshot = start.seq, reached = reached.seq, "copy re-seeded from a snapshot");
        Ok(reached)
    }

    /// A GET of an internal binary answer: its body and headers, or the error it carried.
    async fn get_bytes(&self, url: &str) -> Result<(bytes::Bytes, http::HeaderMap), ApiError> {
        let unreachable = |e: reqwest::Error| ApiError::unavailable(format!("{url}: {e}"), 1);
        let resp = self.client().get(url).send().await.map_err(unreachable)?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok((body, headers));
        }
        Err(match serde_json::from_slice::<memring_common::error::ErrorBody>(&body) {
            Ok(parsed) => ApiError::from_body(parsed),
            Err(_) => ApiError::unavailable(
                format!("{url} answered {status}: {}", String::from_utf8_lossy(&body)),
                1,
            ),
        })
    }

    /// The loop of [`Replication::sync_from`] from this copy's position `at`.
    async fn sync_log(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        epoch: Option<u64>,
        mut at: LogPos,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        loop {
            match self.pull(node, p, at, epoch).await? {
                Pulled::Diverges { end_of_term } => {
                    let probe = rules::next_probe(at.seq, end_of_term);
                    let key = p.clone();
                    let term = self.blocking(move |s| s.term_at(&key, probe)).await?;
                    let term = term.ok_or_else(|| {
                        ApiError::unavailable(format!("{p} changed while its log was compared"), 1)
                    })?;
                    at = LogPos::new(term, probe);
                }
                Pulled::Entries(entries) => {
                    let last = entries.last().map(|e| LogPos::new(e.term, e.seq));
                    let (ring, key, allowed) = (self.ring.clone(), p.clone(), allowed.clone());
                    let cut_to = at.seq;
                    self.blocking(move |s| {
                        let check = || allowed(&ring.ring());
                        let cut = s.truncate_log(&key, cut_to, &check)?;
                        if cut > 0 {
                            metrics::counter!("memring_replication_resyncs_total").increment(1);
                        }
                        match epoch {
                            _ if entries.is_empty() => 0,
                            // Following `node` as it leads at that epoch.
                            Some(_) => s.import_followed(&key, entries, &check)?,
                            None => s.import_replicated(&key, entries, &check)?,
                        };
                        Ok(())
                    })
                    .await?;
                    match last {
                        Some(last) if last.seq < to => at = last,
                        Some(last) => return Ok(last),
                        None => return Ok(at),
                    }
                }
            }
        }
    }

    /// `node`'s log entries of `p` after position `after` (one page), if its entry there has
    /// `after`'s term; with `epoch`, answered by `node` only as the owner leading at it.
    async fn pull(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        after: LogPos,
        epoch: Option<u64>,
    ) -> Result<Pulled, ApiError> {
        let mut url = format!(
            "http://{}/internal/v1/replicate/log/{}?after={}&term={}&limit={PAGE}",
            node.addr,
            partition_path(p),
            after.seq,
            after.term
        );
        if let Some(epoch) = epoch {
            url.push_str(&format!("&epoch={epoch}"));
        }
        let error = match self.get_bytes(&url).await {
            Ok((body, _)) => return decode(&body).map(Pulled::Entries),
            Err(error) => error,
        };
        let end_of_term =
            error.details().and_then(|d| d.get("end_of_term")).and_then(serde_json::Value::as_u64);
        match end_of_term {
            Some(end_of_term) if error.code() == ErrorCode::Conflict => {
                Ok(Pulled::Diverges { end_of_term })
            }
            _ => Err(error),
        }
    }

    async fn last_pos(&self, p: &PartitionKey) -> Result<LogPos, ApiError> {
        let key = p.clone();
        self.blocking(move |s| s.last_pos(&key)).await
    }

    /// Storage work: on a blocking thread, or right here on a follower's own thread (which
    /// runs nothing else).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Storage) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if FOLLOWER_CLIENT.with(|c| c.borrow().is_some()) {
            return work(&self.storage);
        }
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || work(&storage))
            .await
            .map_err(|e| ApiError::internal(format!("replication task failed: {e}")))?
    }
}

/// The client of a node's internal requests (one per follower thread, one for the rest).
fn internal_client(
    credential: Arc<memring_common::internal::ClusterCredential>,
) -> anyhow::Result<InternalClient> {
    let client = memring_common::tls::http_client_builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
        .timeout(POLL_WAIT + Duration::from_secs(10))
        .build()?;
    Ok(InternalClient::new(client, credential))
}

thread_local! {
    /// Set on a follower's own thread ([`Replication::follow`]): its storage work runs right
    /// there, and its requests go through this client, whose connections that thread drives.
    static FOLLOWER_CLIENT: std::cell::RefCell<Option<InternalClient>> =
        const { std::cell::RefCell::new(None) };
}

/// This thread's follower client, if it is a follower's thread.
fn follower_client() -> Option<InternalClient> {
    FOLLOWER_CLIENT.with(|c| c.borrow().clone())
}

/// Whether `me` follows `primary` for `p` in `ring`: `primary` owns it and `me` holds a copy.
fn follows(ring: &Ring, me: &NodeId, primary: &NodeId, p: &PartitionKey) -> bool {
    ring.owner(p).is_some_and(|o| o.id == *primary)
        && ring.replicas(p).iter().any(|n| n.id == *me)
        && primary != me
}

/// Ok while `ring` is at `epoch` and `me` follows `primary` for `p` there.
fn still_leading(
    ring: &Ring,
    me: &NodeId,
    primary: &NodeId,
    p: &PartitionKey,
    epoch: u64,
) -> Result<(), ApiError> {
    same_epoch(ring, epoch)?;
    if follows(ring, me, primary, p) {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::WrongOwner, format!("{primary} is no longer the primary of {p}")))
}

/// Ok while `me` owns `p` in `ring`.
fn owns(ring: &Ring, me: &NodeId, p: &PartitionKey) -> Result<(), ApiError> {
    match ring.owner(p) {
        Some(o) if o.id == *me => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::WrongOwner,
            format!("{me} no longer owns {p} at epoch {}", ring.epoch()),
        )),
    }
}

/// Ok while `ring` is still at `epoch` (a change decided at one epoch lands only at it).
fn same_epoch(ring: &Ring, epoch: u64) -> Result<(), ApiError> {
    if ring.epoch() == epoch {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::PartitionMoving,
        format!("the layout is at epoch {}, not {epoch}; retry", ring.epoch()),
    )
    .with_retry_after(1))
}

/// The header a router sends for a replica read: the position asked for (0: none).
pub fn replica_read_header(headers: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(api::REPLICA_READ_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.parse::<u64>().ok()).map(Some).ok_or_else(|| {
            ApiError::invalid(format!("header {} must be a log position", api::REPLICA_READ_HEADER))
        }),
    }
}
