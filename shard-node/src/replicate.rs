//! Replication (DESIGN.md, "Replication and failure"): with a layout's `replication_factor`
//! R > 1, every partition lives on the R nodes of `Ring::replicas`; its owner (the first that is
//! not marked down) takes the writes, the others follow it.
//!
//! **One log per partition.** A follower applies its primary's log entries under the primary's
//! own sequence numbers (`Storage::import_replicated`), so every copy's log is a prefix of the
//! primary's and a position (`last_seq`) means the same thing on every copy: it is what a
//! follower acknowledges, what a read-your-writes token names, and what a node taking over
//! compares.
//!
//! - **Follower** ([`Replication::follow`]): one task per other node, long-polling its `POST
//!   /internal/v1/replicate/poll` (answered as soon as anything there changes), then pulling the
//!   log entries of the partitions this node follows there. The first time a task sees a
//!   partition it checks that its own last entry is the primary's entry at that position; if
//!   not (this node came back after being replaced as primary and holds writes nobody
//!   acknowledged), it drops its copy and replays the primary's log from the start.
//! - **Primary** ([`Acks`]): a node-wide change counter the polls wait on, and each follower's
//!   acknowledged position per partition; a write is answered once `write_quorum` copies (the
//!   primary's included) have it, else 503 after `quorum_timeout` (the write stays and keeps
//!   replicating; retrying it is idempotent).
//! - **Taking over** ([`Replication::take_over`]): before its first write at a new layout epoch,
//!   the owner asks every live copy for its position (`POST /internal/v1/replicate/position`,
//!   answered under that copy's write lock once it has seen the epoch — from then on it applies
//!   nothing from an older primary) and pulls what the most advanced one has beyond its own. A
//!   write acknowledged by W copies is on at least one live copy while fewer than W copies fail,
//!   so it survives the change of primary.
//! - **Replica reads** ([`Replication::replica_read`]): a follower answers a read if it has
//!   applied the position the read asks for, or — without one — if it was caught up with its
//!   primary within the staleness bound; otherwise `replica_behind` and the router asks the owner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memring_common::api::{
    self, ReplicaPoll, ReplicaPollAnswer, ReplicaPosition, ReplicaStatus, partition_path,
};
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, NodeId, PartitionKey, Ring};
use parking_lot::Mutex;

use crate::record::{LogEntry, decode};
use crate::storage::Storage;

/// How long a primary holds a follower's poll when nothing changes.
pub const POLL_WAIT: Duration = Duration::from_secs(1);
/// Log entries pulled per request.
const PAGE: usize = 1000;
/// A primary not heard from for this long makes a node not caught up.
const ROUND_FRESH: Duration = Duration::from_secs(3);

/// The primary side: what changed, and what each follower has acknowledged.
pub struct Acks {
    changed: tokio::sync::watch::Sender<u64>,
    acked: Mutex<HashMap<(PartitionKey, NodeId), u64>>,
    notify: tokio::sync::Notify,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            changed: tokio::sync::watch::channel(0).0,
            acked: Mutex::new(HashMap::new()),
            notify: tokio::sync::Notify::new(),
        }
    }
}

impl Acks {
    /// Called after every committed change on this node: wakes the followers' polls.
    pub fn bump(&self) {
        self.changed.send_modify(|c| *c += 1);
    }

    /// Waits until the change counter passes `seen` (or `max` passes); returns the counter.
    pub async fn wait_change(&self, seen: u64, max: Duration) -> u64 {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|c| *c > seen)).await;
        *rx.borrow()
    }

    /// Records `follower`'s applied positions and wakes writes waiting for them.
    pub fn record(&self, follower: &NodeId, acks: Vec<(PartitionKey, u64)>) {
        if acks.is_empty() {
            return;
        }
        let mut acked = self.acked.lock();
        for (partition, seq) in acks {
            // A copy that was dropped and replays from the start acknowledges less than before;
            // its position is what it has now.
            acked.insert((partition, follower.clone()), seq);
        }
        drop(acked);
        self.notify.notify_waiters();
    }

    /// Waits until `needed` of `followers` have acknowledged `partition` up to `seq`; false if
    /// `timeout` passes first.
    pub async fn wait_quorum(
        &self,
        partition: &PartitionKey,
        followers: &[NodeId],
        needed: usize,
        seq: u64,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let have = || {
            let acked = self.acked.lock();
            followers
                .iter()
                .filter(|f| {
                    acked.get(&(partition.clone(), (*f).clone())).is_some_and(|s| *s >= seq)
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

/// How one followed copy stands.
struct Progress {
    /// The primary it follows.
    primary: NodeId,
    /// Entries behind the primary at the last poll.
    behind: u64,
    /// When it last had everything the primary had (the poll answer's time).
    fresh_at: Option<Instant>,
}

/// Replication on one node: its primary side ([`Acks`], taking over) and its follower side.
pub struct Replication {
    me: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    client: reqwest::Client,
    /// Acknowledgements of this node's followers.
    pub acks: Acks,
    quorum_timeout: Duration,
    staleness: Duration,
    /// Followed copies.
    progress: Mutex<HashMap<PartitionKey, Progress>>,
    /// When each primary last answered a poll, and the layout epoch that round followed by.
    rounds: Mutex<HashMap<NodeId, (Instant, u64)>>,
    /// Partitions whose writes this node has taken over, with the epoch it did so at.
    taken: Mutex<HashMap<PartitionKey, u64>>,
    /// One take-over at a time per partition (partitions take over side by side after a
    /// layout change, each asking its own peers).
    taking: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Replication {
    /// Replication for node `me`: writes wait up to `quorum_timeout` for their copies, and a
    /// follower answers reads without a token while it was caught up within `staleness`.
    pub fn new(
        me: NodeId,
        storage: Arc<Storage>,
        ring: Arc<RingView>,
        quorum_timeout: Duration,
        staleness: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
            .timeout(POLL_WAIT + Duration::from_secs(10))
            .build()?;
        Ok(Self {
            me,
            storage,
            ring,
            client,
            acks: Acks::default(),
            quorum_timeout,
            staleness,
            progress: Mutex::new(HashMap::new()),
            rounds: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashMap::new()),
            taking: Mutex::new(HashMap::new()),
        })
    }

    /// After a committed change reaching log position `seq` of `partition`: wakes the
    /// followers, then, with replication, waits until the layout's write quorum of copies has
    /// it (503 if that takes too long).
    pub async fn replicated(&self, partition: &PartitionKey, seq: u64) -> Result<(), ApiError> {
        self.acks.bump();
        let ring = self.ring.ring();
        let needed = ring.layout().write_quorum().saturating_sub(1) as usize;
        if needed == 0 {
            return Ok(());
        }
        let followers: Vec<NodeId> =
            ring.followers(partition).iter().map(|n| n.id.clone()).collect();
        if self.acks.wait_quorum(partition, &followers, needed, seq, self.quorum_timeout).await {
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

    /// Before this node's first write to `partition` at the current epoch: makes sure it holds
    /// everything any live copy holds (see the module notes). 503 while a live copy cannot be
    /// asked.
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
        // Any acknowledged write is on W of the set's copies; this copy and R - W others
        // answering make sure at least one of them holds it.
        let set = ring.replicas(partition).len();
        let needed = set.saturating_sub(ring.layout().write_quorum() as usize);
        let peers: Vec<LayoutNode> = ring
            .followers(partition)
            .into_iter()
            .filter(|n| !ring.layout().is_down(&n.id))
            .cloned()
            .collect();
        let asked = futures::future::join_all(peers.iter().map(|peer| async move {
            let url = format!(
                "http://{}/internal/v1/replicate/position/{}?epoch={epoch}",
                peer.addr,
                partition_path(partition)
            );
            let ask = async {
                let resp = self.client.post(&url).send().await?.error_for_status()?;
                resp.json::<ReplicaPosition>().await
            };
            let answer = tokio::time::timeout(self.quorum_timeout, ask).await;
            answer.ok().and_then(Result::ok).map(|position| (position.last_seq, peer.clone()))
        }))
        .await;
        let answered: Vec<(u64, LayoutNode)> = asked.into_iter().flatten().collect();
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
        let best = answered.into_iter().max_by_key(|(seq, _)| *seq);
        let mine = self.last_seq(partition).await?;
        if let Some((theirs, peer)) = best
            && theirs > mine
        {
            tracing::info!(%partition, from = %peer.id, mine, theirs, "taking over: pulling what a copy has beyond ours");
            let (me, p) = (self.me.clone(), partition.clone());
            let reached = self
                .copy_log(&peer, partition, mine, theirs, move |ring| owns(ring, &me, &p))
                .await?;
            if reached < theirs {
                // The copy lost entries while we pulled (it was dropped): ask everyone again.
                return Err(ApiError::unavailable(
                    format!(
                        "{} could pull {partition} only to {reached} of {theirs} from {}; retry",
                        self.me, peer.id
                    ),
                    1,
                ));
            }
        }
        self.taken.lock().insert(partition.clone(), epoch);
        Ok(())
    }

    /// Checked under the partition's write lock right before a write or delete commits here:
    /// this node owns `partition` in its current layout and, with replication, has taken its
    /// writes over at that layout's epoch. A position this node reported to a new owner (under
    /// the same lock, at a newer epoch) can therefore never be followed by an entry of its own.
    pub fn may_commit(&self, partition: &PartitionKey) -> Result<(), ApiError> {
        let ring = self.ring.ring();
        owns(&ring, &self.me, partition)?;
        if ring.layout().replication_factor >= 2
            && self.taken.lock().get(partition) != Some(&ring.epoch())
        {
            return Err(ApiError::new(
                ErrorCode::PartitionMoving,
                format!(
                    "the layout changed to epoch {} while this write waited; retry",
                    ring.epoch()
                ),
            )
            .with_retry_after(1));
        }
        Ok(())
    }

    /// This copy's position for a node taking `partition` over at `epoch`: answered once this
    /// node has seen that epoch, under the partition's write lock, so nothing from an older
    /// primary is applied here afterwards.
    pub async fn position(
        &self,
        partition: &PartitionKey,
        epoch: u64,
    ) -> Result<ReplicaPosition, ApiError> {
        self.ring.reach(epoch).await?;
        let p = partition.clone();
        // `last_seq` reads under the partition's write lock.
        let last_seq = self.blocking(move |s| s.last_seq(&p)).await?;
        Ok(ReplicaPosition { last_seq })
    }

    /// Whether this node may answer a read of `partition` as a replica: it is the owner, or a
    /// follower that has applied `min_seq` (when asked for one) or was caught up within the
    /// staleness bound.
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
        if min_seq > 0 {
            let have = self.last_seq(partition).await?;
            if have < min_seq {
                return behind(format!("this copy of {partition} is at {have}, not {min_seq}"));
            }
            return Ok("replica");
        }
        let fresh = self
            .progress
            .lock()
            .get(partition)
            .and_then(|p| p.fresh_at)
            .is_some_and(|at| at.elapsed() <= self.staleness);
        if fresh {
            Ok("replica")
        } else {
            behind(format!(
                "this copy of {partition} was not caught up within the last {} ms",
                self.staleness.as_millis()
            ))
        }
    }

    /// How this node's followed copies stand (the control plane's re-admission test).
    pub fn status(&self) -> ReplicaStatus {
        let ring = self.ring.ring();
        let layout = ring.layout();
        let rounds = self.rounds.lock();
        // Every primary answered lately, in a round that chose what to follow by this epoch.
        let heard_all =
            layout.nodes.iter().filter(|n| n.id != self.me && !layout.is_down(&n.id)).all(|n| {
                rounds.get(&n.id).is_some_and(|(at, epoch)| {
                    at.elapsed() <= ROUND_FRESH && *epoch == ring.epoch()
                })
            });
        let progress = self.progress.lock();
        let lag: u64 = progress.values().map(|p| p.behind).sum();
        ReplicaStatus {
            node: self.me.clone(),
            epoch: ring.epoch(),
            following: progress.len(),
            lag,
            caught_up: layout.replication_factor > 1 && heard_all && lag == 0,
        }
    }

    /// Follows every primary of this node's copies until `stop` turns true: one task per other
    /// node in the layout, started and ended as nodes come and go.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tasks: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tasks.retain(|_, t| !t.is_finished());
            let current = self.ring.ring();
            if current.layout().replication_factor > 1 {
                for node in current.layout().nodes.iter().filter(|n| n.id != self.me) {
                    if !tasks.contains_key(&node.id) {
                        let task = self.clone().follow_primary(node.id.clone(), stop.clone());
                        tasks.insert(node.id.clone(), tokio::spawn(task));
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }

    /// Follows one node until it leaves the layout, replication is switched off, or `stop`.
    async fn follow_primary(
        self: Arc<Self>,
        primary_id: NodeId,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut seen = 0;
        let mut acks: Vec<(PartitionKey, u64)> = Vec::new();
        // Positions of the copies followed from this primary, checked against it once each.
        let mut applied: HashMap<PartitionKey, u64> = HashMap::new();
        let mut epochs = self.ring.subscribe();
        loop {
            // Marked seen before the ring is read, so a newer one always wakes the poll below.
            epochs.borrow_and_update();
            let ring = self.ring.ring();
            let Some(primary) = ring.layout().node(&primary_id).cloned() else { break };
            if ring.layout().replication_factor < 2 {
                break;
            }
            let ask = ReplicaPoll {
                follower: self.me.clone(),
                seen,
                wait_ms: POLL_WAIT.as_millis() as u64,
                acks: std::mem::take(&mut acks),
            };
            let polled = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                // A new layout may make this node follow partitions the last answer was read
                // without (a new primary's first write waits for us): ask again at once.
                Ok(()) = epochs.changed() => {
                    acks = ask.acks;
                    seen = 0;
                    continue;
                }
                r = self.poll(&primary, &ask) => r,
            };
            let answer = match polled {
                Ok(answer) => answer,
                Err(e) => {
                    // Keep the acknowledgements for the next try; wait a little before it.
                    acks = ask.acks;
                    tracing::debug!(primary = %primary.id, error = %e, "replication poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let answered = Instant::now();
            seen = answer.counter;
            let (lag, epoch) = self.catch_up(&primary, answer, answered, &mut applied).await;
            acks = applied.iter().map(|(p, s)| (p.clone(), *s)).collect();
            self.rounds.lock().insert(primary.id.clone(), (answered, epoch));
            metrics::gauge!("memring_replication_lag_entries", "primary" => primary.id.to_string())
                .set(lag as f64);
        }
        self.progress.lock().retain(|_, p| p.primary != primary_id);
        self.rounds.lock().remove(&primary_id);
    }

    async fn poll(
        &self,
        primary: &LayoutNode,
        ask: &ReplicaPoll,
    ) -> anyhow::Result<ReplicaPollAnswer> {
        Ok(self
            .client
            .post(format!("http://{}/internal/v1/replicate/poll", primary.addr))
            .json(ask)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Applies what this node follows on `primary` and lacks, keeping `applied` to the copies
    /// followed there; returns the entries still behind and the layout epoch it followed by.
    async fn catch_up(
        &self,
        primary: &LayoutNode,
        answer: ReplicaPollAnswer,
        answered: Instant,
        applied: &mut HashMap<PartitionKey, u64>,
    ) -> (u64, u64) {
        let ring = self.ring.ring();
        let mut lag = 0;
        let mut followed = std::collections::HashSet::new();
        for stats in answer.partitions {
            let p = stats.partition.clone();
            if !follows(&ring, &self.me, &primary.id, &p) {
                continue;
            }
            followed.insert(p.clone());
            match self.catch_up_one(primary, &p, stats.last_seq, applied.get(&p).copied()).await {
                Ok(at) => {
                    applied.insert(p.clone(), at);
                    let behind = stats.last_seq.saturating_sub(at);
                    lag += behind;
                    let mut progress = self.progress.lock();
                    let entry = progress.entry(p).or_insert(Progress {
                        primary: primary.id.clone(),
                        behind,
                        fresh_at: None,
                    });
                    entry.primary = primary.id.clone();
                    entry.behind = behind;
                    if behind == 0 {
                        entry.fresh_at = Some(answered);
                    }
                }
                Err(e) => {
                    // Checked afresh (divergence included) on the next round.
                    applied.remove(&p);
                    self.progress.lock().remove(&p);
                    tracing::warn!(partition = %p, primary = %primary.id, error = %e, "replication apply failed");
                }
            }
        }
        // Copies no longer followed from here are checked again if they come back to it.
        applied.retain(|p, _| followed.contains(p));
        self.progress
            .lock()
            .retain(|p, progress| progress.primary != primary.id || followed.contains(p));
        (lag, ring.epoch())
    }

    /// Brings this node's copy of `p` up to `target` from `primary`; `known` is its position
    /// if this task has checked it already. Returns the position reached.
    async fn catch_up_one(
        &self,
        primary: &LayoutNode,
        p: &PartitionKey,
        target: u64,
        known: Option<u64>,
    ) -> anyhow::Result<u64> {
        let at = match known {
            Some(at) => at,
            None => self.check_log(primary, p).await?,
        };
        let (me, primary_id, key) = (self.me.clone(), primary.id.clone(), p.clone());
        let still_primary = move |ring: &Ring| {
            if follows(ring, &me, &primary_id, &key) {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::WrongOwner,
                    format!("{primary_id} is no longer the primary of {key}"),
                ))
            }
        };
        Ok(self.copy_log(primary, p, at, target, still_primary).await?)
    }

    /// Pulls `node`'s log of `p` from position `at` up to `to` (or its end) and applies it here
    /// page by page; `allowed` is checked against the current ring under the partition's write
    /// lock before each page lands. Returns the position reached.
    async fn copy_log(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        mut at: u64,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<u64, ApiError> {
        while at < to {
            let entries = self.pull(node, p, at, PAGE).await?;
            let Some(last) = entries.last().map(|e| e.seq) else { break };
            let (ring, key, allowed) = (self.ring.clone(), p.clone(), allowed.clone());
            self.blocking(move |s| s.import_replicated(&key, entries, &|| allowed(&ring.ring())))
                .await?;
            at = last;
        }
        Ok(at)
    }

    /// This copy's position, after making sure its log is a prefix of `primary`'s: its last
    /// entry must be the primary's entry at that position. A copy that holds entries the
    /// primary does not (written here while this node was primary, never acknowledged) is
    /// dropped, to be replayed from the primary's log.
    async fn check_log(&self, primary: &LayoutNode, p: &PartitionKey) -> anyhow::Result<u64> {
        let mine = self.last_seq(p).await?;
        if mine == 0 {
            return Ok(0);
        }
        let theirs = self.pull(primary, p, mine - 1, 1).await?.into_iter().find(|e| e.seq == mine);
        let Some(theirs) = theirs else {
            // The primary has not reached this position: it is a new owner that has not taken
            // the writes over yet, and this copy may hold an acknowledged write it will pull
            // from here. Not a divergence: keep the copy and look again next round.
            anyhow::bail!(
                "primary {} is behind position {mine} of {p}; waiting for it",
                primary.id
            );
        };
        let key = p.clone();
        let ours = self.blocking(move |s| s.entry_at(&key, mine)).await?;
        if ours.is_some_and(|o| o.fingerprint() == theirs.fingerprint()) {
            return Ok(mine);
        }
        tracing::warn!(partition = %p, primary = %primary.id, position = mine, "this copy's log differs from its primary's; dropping it to replay the primary's");
        metrics::counter!("memring_replication_resyncs_total").increment(1);
        let key = p.clone();
        self.blocking(move |s| s.drop_partition(&key)).await?;
        Ok(0)
    }

    /// `node`'s log entries of `p` after `after` (at most `limit`).
    async fn pull(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ApiError> {
        let url = format!(
            "http://{}/internal/v1/migrate/{}/entries?after={after}&limit={limit}",
            node.addr,
            partition_path(p)
        );
        let fetched = async {
            let resp = self.client.get(&url).send().await?.error_for_status()?;
            resp.bytes().await
        }
        .await
        .map_err(|e| ApiError::unavailable(format!("{url}: {e}"), 1))?;
        decode(&fetched)
    }

    async fn last_seq(&self, p: &PartitionKey) -> Result<u64, ApiError> {
        let key = p.clone();
        self.blocking(move |s| s.last_seq(&key)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Storage) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || work(&storage))
            .await
            .map_err(|e| ApiError::internal(format!("replication task failed: {e}")))?
    }
}

/// Whether `me` follows `primary` for `p` in `ring`: `primary` owns it and `me` holds a copy.
fn follows(ring: &Ring, me: &NodeId, primary: &NodeId, p: &PartitionKey) -> bool {
    ring.owner(p).is_some_and(|o| o.id == *primary)
        && ring.replicas(p).iter().any(|n| n.id == *me)
        && primary != me
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

/// The header a router sends for a replica read: the position asked for (0: none).
pub fn replica_read_header(headers: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(api::REPLICA_READ_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.parse::<u64>().ok()).map(Some).ok_or_else(|| {
            ApiError::invalid(format!("header {} must be a log position", api::REPLICA_READ_HEADER))
        }),
    }
}
