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
//! - **Follower** ([`Replication::follow`], `replicate/follower.rs`): one thread per other
//!   node, long-polling its change feed (`replicate/feed.rs`, over the stream of
//!   `replicate/stream.rs` or `POST /internal/v1/replicate/poll`; answered as soon as anything
//!   there changes), applying the entries the answer inlined where they continue its copy as
//!   checked, and pulling the rest from `GET /internal/v1/replicate/log` with the layout epoch
//!   it follows by (`replicate/sync.rs`). The owner answers only once it has taken over at
//!   exactly that epoch, and only if its entry at the follower's last position has the
//!   follower's term there; otherwise it says where its entries of that term end, and the
//!   follower probes back and cuts its log to where they agree (entries no quorum acknowledged)
//!   before it applies anything.
//! - **Primary** ([`Acks`], `replicate/acks.rs`): a node-wide change counter the polls wait on, and each follower's
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

mod acks;
mod copies;
pub mod feed;
mod follower;
pub mod rules;
mod stream;
mod sync;
pub use stream::PROTOCOL as STREAM_PROTOCOL;
pub mod trim;

pub use acks::Acks;

#[cfg(test)]
mod model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memring_common::api::{self, ReplicaPosition, ReplicaStatus, partition_path};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, NodeId, PartitionKey, Ring};
use parking_lot::Mutex;

use crate::record::LogEntry;
use crate::storage::Storage;
use copies::Copies;
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
    /// The partitions this node leads, and the rule for appending to their logs.
    lead: Arc<Leads>,
    /// One take-over at a time per partition (partitions take over side by side after a
    /// layout change, each asking its own peers).
    taking: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Turns true when the node stops (ends the followers' streams served here).
    stop: tokio::sync::watch::Receiver<bool>,
}

/// The partitions this node has taken the writes of over, and the rule for appending to their
/// logs (shared with the blocking tasks that append).
struct Leads {
    me: NodeId,
    ring: Arc<RingView>,
    /// Partitions whose writes this node has taken over.
    taken: Mutex<HashMap<PartitionKey, TakenOver>>,
    /// Partitions this node is handing over to another owner: no write commits while the
    /// layout is still at the epoch (the hand-over's flip ends it) and until the instant.
    handing: Mutex<HashMap<PartitionKey, (u64, Instant)>>,
}

impl Leads {
    /// See [`Replication::may_commit`].
    fn may_commit(&self, partition: &PartitionKey, last_term: u64) -> Result<u64, ApiError> {
        let ring = self.ring.ring();
        owns(&ring, &self.me, partition)?;
        let replicated = ring.layout().replication_factor >= 2;
        if let Some(&(epoch, until)) = self.handing.lock().get(partition)
            && epoch == ring.epoch()
            && Instant::now() < until
        {
            return Err(ApiError::new(
                ErrorCode::PartitionMoving,
                format!("{partition} is being handed over to its next owner; retry in a moment"),
            )
            .with_retry_after(1));
        }
        let taken = self.taken.lock().get(partition).map(|t| t.epoch);
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
}

/// How long a hand-over holds an owner's writes at most ([`Replication::hand_over`]): the
/// control plane flips the layout right after, and routers retry a moving partition for 5 s.
pub const HAND_OVER_HOLD: Duration = Duration::from_secs(3);

/// A take-over of a partition's writes: the epoch it happened at (the term of the entries this
/// node appends from then on) and the last position of its log then (the term's first entry
/// comes right after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TakenOver {
    epoch: u64,
    base: u64,
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
        let lead = Arc::new(Leads {
            me: me.clone(),
            ring: ring.clone(),
            taken: Mutex::default(),
            handing: Mutex::default(),
        });
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
            taking: Mutex::new(HashMap::new()),
            lead,
            stop,
        })
    }

    /// After a committed change reaching log position `at` of `partition`: wakes the
    /// followers, then, with replication, waits until the layout's write quorum of copies has
    /// acknowledged it under its term (503 if that takes too long).
    pub async fn replicated(&self, partition: &PartitionKey, at: LogPos) -> Result<(), ApiError> {
        let (followers, needed) = self.quorum(partition);
        if needed == 0 {
            return Ok(());
        }
        let Some(mut waiting) = self.acks.register(partition, &followers, needed, at) else {
            return Ok(());
        };
        // A take-over at a newer term since this write committed may have rebased the waiting
        // writes before this one registered.
        if self.lead.taken.lock().get(partition).is_some_and(|t| t.epoch > at.term) {
            self.rebase_waiting(partition).await;
        }
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        let mut epochs = self.ring.subscribe();
        let held = loop {
            let ring = self.ring.ring();
            if ring.owner(partition).is_none_or(|o| o.id != self.me) {
                // Acknowledgements stop coming to a primary that no longer leads: the owner
                // now answers for the write.
                if self.acks.forget(partition, &waiting) == Some(true) {
                    break true;
                }
                break self.forward(partition, at, deadline).await;
            }
            let epoch = ring.epoch();
            let changed = async {
                if epochs.wait_for(|e| *e > epoch).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                held = self.acks.wait(partition, &mut waiting, deadline) => break held,
                () = changed => {}
            }
        };
        if held {
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

    /// A write this node committed at `at` while it led `partition`, handed to the owner that
    /// leads it now (`POST /internal/v1/replicate/committed/…`, [`Replication::wait_committed`]):
    /// true once that owner's quorum holds it, false if its log no longer does or `deadline`
    /// passes first.
    async fn forward(
        &self,
        partition: &PartitionKey,
        at: LogPos,
        deadline: tokio::time::Instant,
    ) -> bool {
        metrics::counter!("memring_replication_forwarded_writes_total").increment(1);
        loop {
            let ring = self.ring.ring();
            let Some(owner) = ring.owner(partition).filter(|o| o.id != self.me) else {
                return false;
            };
            let url = format!(
                "http://{}/internal/v1/replicate/committed/{}?epoch={}&seq={}&term={}",
                owner.addr,
                partition_path(partition),
                ring.epoch(),
                at.seq,
                at.term
            );
            let asked = tokio::time::timeout_at(deadline, self.client().post(&url).send()).await;
            match asked.map(|r| r.map(|resp| resp.status().as_u16())) {
                Ok(Ok(200)) => return true,
                // Cut from the owner's log: it never will be held.
                Ok(Ok(409)) => return false,
                Err(_) => return false,
                // Not there yet (another epoch, a take-over under way): ask again.
                Ok(_) => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(20) >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /internal/v1/replicate/committed/{p}?epoch=E&seq=S&term=T`, asked of the owner of
    /// `partition` at epoch `epoch` by a node that committed entry `at` while it led and no longer
    /// does: once this node has taken the writes over, the entry waits here as this node's own
    /// would (`rules::rebase`: for the first entry of this term). `Ok(true)` once its quorum holds
    /// it, `Ok(false)` if that takes longer than the quorum timeout, `Conflict` if this log does
    /// not hold it.
    pub async fn wait_committed(
        &self,
        partition: &PartitionKey,
        epoch: u64,
        at: LogPos,
    ) -> Result<bool, ApiError> {
        self.owner_at(partition, epoch).await?;
        self.take_over(partition).await?;
        let key = partition.clone();
        let held = self.blocking(move |s| s.term_at(&key, at.seq)).await.ok().flatten();
        if held != Some(at.term) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the log of {partition} on {} has no entry of term {} at position {}",
                    self.me, at.term, at.seq
                ),
            ));
        }
        let (followers, needed) = self.quorum(partition);
        let Some(mut waiting) = self.acks.register(partition, &followers, needed, at) else {
            return Ok(true);
        };
        self.rebase_waiting(partition).await;
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        Ok(self.acks.wait(partition, &mut waiting, deadline).await)
    }

    /// Once this node has seen layout `epoch`: that it is still at it and owns `partition` there
    /// (what a node answering as the owner at a named epoch checks first).
    async fn owner_at(&self, partition: &PartitionKey, epoch: u64) -> Result<(), ApiError> {
        self.ring.reach(epoch).await?;
        let ring = self.ring.ring();
        same_epoch(&ring, epoch)?;
        owns(&ring, &self.me, partition)
    }

    /// The followers of `partition` in the current layout, and how many of them a write needs.
    fn quorum(&self, partition: &PartitionKey) -> (Vec<NodeId>, usize) {
        let ring = self.ring.ring();
        let needed = ring.layout().write_quorum().saturating_sub(1) as usize;
        (ring.followers(partition).iter().map(|n| n.id.clone()).collect(), needed)
    }

    /// The cluster credential its requests carry (the one its node checks, too).
    pub fn credential(&self) -> &Arc<memring_common::internal::ClusterCredential> {
        self.client.credential()
    }

    /// The client for internal requests made on this thread (a follower's own, on its thread).
    fn client(&self) -> InternalClient {
        follower::follower_client().unwrap_or_else(|| self.client.clone())
    }

    /// The epoch this node leads `partition` at: the current one, if it has taken it over then.
    fn lead_term(&self, partition: &PartitionKey) -> Option<u64> {
        let epoch = self.ring.ring().epoch();
        self.lead.taken.lock().get(partition).map(|t| t.epoch).filter(|e| *e == epoch)
    }

    /// Before this node's first write to `partition` (or read as its owner) at the current
    /// epoch: makes its log the most up-to-date of its own and R − W other live copies' (see
    /// the module notes). 503 while those copies cannot be asked or the log cannot be adopted.
    pub async fn take_over(&self, partition: &PartitionKey) -> Result<(), ApiError> {
        let ring = self.ring.ring();
        let epoch = ring.epoch();
        let taken_now = || self.lead.taken.lock().get(partition).is_some_and(|t| t.epoch == epoch);
        if ring.layout().replication_factor < 2 || taken_now() {
            return Ok(());
        }
        let lock = self.taking.lock().entry(partition.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        if taken_now() {
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
        // No entry is appended here before `taken` is set: the new term starts after `base`.
        let base = self.last_pos(partition).await?.seq;
        self.lead.taken.lock().insert(partition.clone(), TakenOver { epoch, base });
        self.rebase_waiting(partition).await;
        Ok(())
    }

    /// `POST /internal/v1/replicate/hand-over/{p}?epoch=E`, asked of the owner right before
    /// the control plane makes another node lead `partition`: from now until the layout leaves
    /// epoch `epoch` (or [`HAND_OVER_HOLD`] passes) no write commits here — writes meet a
    /// retryable `partition_moving`, which routers retry — and the writes already committed get
    /// their quorum (or time out) before this answers. No write is then left waiting on a
    /// primary that no longer leads, where acknowledgements stop coming. Returns the owner's
    /// position.
    pub async fn hand_over(
        &self,
        partition: &PartitionKey,
        epoch: u64,
    ) -> Result<LogPos, ApiError> {
        self.owner_at(partition, epoch).await?;
        let until = Instant::now() + HAND_OVER_HOLD;
        self.lead.handing.lock().insert(partition.clone(), (epoch, until));
        let key = partition.clone();
        // Nothing commits after this: a write that passed its check before the hold holds the
        // partition's lock until its batch is written, which this waits for.
        let at = self.blocking(move |s| s.last_pos(&key)).await?;
        // Every write committed is held by its quorum once the last one is (log matching); an
        // older term's last entry means none of this term, and rebased writes wait for the
        // start of the term, so then the waiting writes are watched instead.
        let (followers, needed) = self.quorum(partition);
        if self.lead_term(partition) == Some(at.term) {
            self.acks.wait_quorum(partition, &followers, needed, at, self.quorum_timeout).await;
        } else {
            let settled = Instant::now() + self.quorum_timeout;
            while self.acks.waits(partition) && Instant::now() < settled {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(at)
    }

    /// After a take-over of `partition`: its writes still waiting from an older term either
    /// wait for the first entry of the new term, if the log still holds them, or fail
    /// (`rules::rebase`); a start of the term is appended for them when no write supplies it.
    async fn rebase_waiting(&self, partition: &PartitionKey) {
        let Some(taken) = self.lead.taken.lock().get(partition).copied() else { return };
        let older = self.acks.older(partition, taken.epoch);
        if older.is_empty() {
            return;
        }
        let (key, seqs) =
            (partition.clone(), older.iter().map(|(_, at)| at.seq).collect::<Vec<_>>());
        // A term not read (a trimmed position, an error) counts as cut: failing is safe.
        let held = self
            .blocking(move |s| {
                Ok(seqs.iter().map(|seq| s.term_at(&key, *seq).ok().flatten()).collect())
            })
            .await
            .unwrap_or_else(|_: ApiError| vec![None; older.len()]);
        let base = LogPos::new(taken.epoch, taken.base);
        let verdicts = older
            .into_iter()
            .zip(held)
            .map(|((id, at), held)| (id, at, rules::rebase(at, held, base)))
            .collect();
        if !self.acks.rebase(partition, verdicts) {
            return;
        }
        metrics::counter!("memring_replication_rebased_writes_total").increment(1);
        let (lead, key) = (self.lead.clone(), partition.clone());
        let started = self
            .blocking(move |s| {
                let check = |last_term| lead.may_commit(&key, last_term);
                s.start_term(&key, memring_common::clock::now_millis(), &check)
            })
            .await;
        match started {
            Ok(_) => {}
            // The layout moved on: the next take-over rebases them again, or they time out.
            Err(e) => {
                tracing::debug!(%partition, error = %e, "no start of term for waiting writes")
            }
        }
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
        self.lead.may_commit(partition, last_term)
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
    /// With `pin` (a migration's catch-up), the log after `after` is kept from trimming for a
    /// while (`Storage::pin_log`).
    pub async fn serve_log(
        &self,
        partition: &PartitionKey,
        after: LogPos,
        limit: usize,
        epoch: Option<u64>,
        pin: bool,
    ) -> Result<Vec<LogEntry>, ApiError> {
        if let Some(epoch) = epoch {
            self.owner_at(partition, epoch).await?;
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
                if pin {
                    s.pin_log(&p, after.seq);
                }
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
        if follower::on_follower_thread() {
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
