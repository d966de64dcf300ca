//! Replication (DESIGN.md, "Replication and failure"): with a layout's `replication_factor`
//! R > 1, every partition lives on the R nodes of `Ring::replicas`; its owner (the first that may
//! lead) takes the writes, the others follow it. At R = 1 a partition has a second copy only
//! while a layout change moves it (docs/one-engine.md): from the staged change to its end its
//! writes are replicated exactly as at R > 1 (`Ring::replicated`), and every other partition
//! costs nothing (a node follows nobody while `Ring::replicating` is false). The protocol's decisions are the pure functions
//! of [`rules`], which the model checker of `replicate/model.rs` explores exhaustively.
//!
//! **One log per partition, with terms.** A follower applies its primary's log entries under the
//! primary's own sequence numbers and terms (`Storage::import_replicated`); an entry's term is
//! the partition's term at which its writer had taken the partition over (`Ring::term`: the
//! newest epoch at which the layout changed anything of the partition's placement; two layouts
//! that give it the same term place it alike, so a layout change that does not touch a partition
//! leaves its take-over and its checked copies as they are). Logs are compared by
//! `(last term, last position)`, and two copies with an entry of the same term at a position hold
//! the same entries up to it, so a position (`last_seq`) read by a copy that has checked its log
//! against the owner's means the same everywhere: it is what a follower acknowledges, what a
//! read-your-writes token names, and what a node taking over compares.
//!
//! - **Taking over** ([`Replication::take_over`]): before an owner writes or answers reads at a
//!   new term of the partition, it asks R − W other copies for their position (live ones first;
//!   `POST /internal/v1/replicate/position`, answered under that copy's write lock once it has
//!   seen the taker's layout epoch, whose term for the partition is at least the taker's; from
//!   then on it follows only an owner that took over at that term or a newer one) and
//!   makes its log the most up to date one: it probes back to where the two agree, cuts its own
//!   entries after that, and pulls the rest. Any write acknowledged by W copies is on one of the
//!   copies it heard, and the most up-to-date log holds every acknowledged write. While a
//!   replicated join or drain settles, the copies it took out of the set (`Ring::retiring`)
//!   are among those asked, and the count is over old and new copies together.
//! - **Follower** ([`Replication::follow`], `replicate/follower.rs`): one thread per other
//!   node, long-polling its change feed (`replicate/feed.rs`, over the stream of
//!   `replicate/stream.rs` or `POST /internal/v1/replicate/poll`; answered as soon as anything
//!   there changes), applying the entries the answer inlined where they continue its copy as
//!   checked, and pulling the rest from `GET /internal/v1/replicate/log` with the partition's
//!   term it follows by (`replicate/sync.rs`). The owner answers only once it has taken over at
//!   exactly that term, and only if its entry at the follower's last position has the
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
mod batch;
mod copies;
pub mod feed;
mod follower;
mod lead;
pub mod rules;
mod stream;
mod sync;
mod waiting;
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
pub use lead::HAND_OVER_HOLD;
use lead::Leads;
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
    /// The node's low-priority threads: a fill's snapshot pages are written there, as the
    /// copy routes' work is (`background.rs`).
    background: Arc<crate::background::Background>,
    /// Turns true when the node stops (ends the followers' streams served here).
    stop: tokio::sync::watch::Receiver<bool>,
}

/// How long replication waits, from the node's config.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// How long a write waits for its copies.
    pub quorum_timeout: Duration,
    /// How recently a follower must have been caught up to answer reads without a token.
    pub staleness: Duration,
}

impl Replication {
    /// Replication for node `me`, waiting as `waits` says.
    pub fn new(
        me: NodeId,
        storage: Arc<Storage>,
        ring: Arc<RingView>,
        credential: Arc<memring_common::internal::ClusterCredential>,
        Waits { quorum_timeout, staleness }: Waits,
        background: Arc<crate::background::Background>,
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
            background,
            stop,
        })
    }

    /// Once this node has seen layout `epoch`: that it is still at it and owns `partition` there
    /// (what a node answering as the owner at a named epoch checks first).
    async fn owner_at(&self, partition: &PartitionKey, epoch: u64) -> Result<(), ApiError> {
        self.ring.reach(epoch).await?;
        let ring = self.ring.ring();
        same_epoch(&ring, epoch)?;
        owns(&ring, &self.me, partition)
    }

    /// The cluster credential its requests carry (the one its node checks, too).
    pub fn credential(&self) -> &Arc<memring_common::internal::ClusterCredential> {
        self.client.credential()
    }

    /// The client for internal requests made on this thread (a follower's own, on its thread).
    fn client(&self) -> InternalClient {
        follower::follower_client().unwrap_or_else(|| self.client.clone())
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
    /// With `lead` (a follower asking its owner; the request's `epoch`), this node answers only
    /// as the partition's owner at exactly that term of the partition, having taken it over at
    /// it. (In a layout without terms a partition's term is the epoch, which is what followers
    /// of earlier versions send.)
    /// With `pin` (a migration's catch-up), the log after `after` is kept from trimming for a
    /// while (`Storage::pin_log`).
    pub async fn serve_log(
        &self,
        partition: &PartitionKey,
        after: LogPos,
        limit: usize,
        lead: Option<u64>,
        pin: bool,
    ) -> Result<Vec<LogEntry>, ApiError> {
        if let Some(term) = lead {
            self.ring.reach(term).await?;
            let ring = self.ring.ring();
            same_term(&ring, partition, term)?;
            owns(&ring, &self.me, partition)?;
            self.take_over(partition).await?;
            if self.lead_term(partition) != Some(term) {
                return Err(ApiError::unavailable(
                    format!("{} is no longer leading {partition} at term {term}", self.me),
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
    /// follower whose copy was checked against the owner at the partition's current term and has applied
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
        if !ring.holders(partition).iter().any(|n| n.id == self.me) {
            return Err(ApiError::new(
                ErrorCode::WrongOwner,
                format!("node {} holds no copy of {partition} at epoch {}", self.me, ring.epoch()),
            ));
        }
        let behind = |why: String| Err(ApiError::new(ErrorCode::ReplicaBehind, why));
        let copy = self.copies.lock().get(partition).cloned();
        let synced = copy.as_ref().is_some_and(|c| c.synced == Some(ring.term(partition)));
        // Caught up at its primary's last round, and that round is recent enough.
        let fresh = copy.is_some_and(|c| {
            c.behind == 0
                && self.rounds.lock().get(&c.primary).is_some_and(|(at, epoch)| {
                    *epoch == ring.epoch() && at.elapsed() <= self.staleness
                })
        });
        if !synced {
            // A position on a copy not checked at this term may name other entries.
            return behind(format!(
                "this copy of {partition} has not been checked against its owner at its term {} \
                 (epoch {})",
                ring.term(partition),
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
        let (lag, unchecked) = (copies.lag(), copies.unchecked());
        ReplicaStatus {
            node: self.me.clone(),
            epoch,
            following: copies.len(),
            lag,
            unchecked,
            caught_up: ring.replicating() && heard_all && lag == 0 && unchecked == 0,
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
        && ring.holders(p).iter().any(|n| n.id == *me)
        && primary != me
}

/// Ok while `ring` gives `p` the term `term` and `me` follows `primary` for `p` there.
fn still_leading(
    ring: &Ring,
    me: &NodeId,
    primary: &NodeId,
    p: &PartitionKey,
    term: u64,
) -> Result<(), ApiError> {
    same_term(ring, p, term)?;
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

/// Ok while `ring` still gives `p` the term `term` (what was decided at one term lands only at
/// it; a layout change that leaves the term as it is changes nothing for `p`).
fn same_term(ring: &Ring, p: &PartitionKey, term: u64) -> Result<(), ApiError> {
    let now = ring.term(p);
    if now == term {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::PartitionMoving,
        format!("{p} is at term {now} (layout epoch {}), not {term}; retry", ring.epoch()),
    )
    .with_retry_after(1))
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
