//! Replication (DESIGN.md, "Replication and failure"): with a layout's `replication_factor`
//! R > 1, every partition lives on the R nodes of `Ring::replicas`; the first is the primary and
//! takes the writes, the others follow it by tailing its change log — the same `changes` feed a
//! migration catches up from — and applying the entries in order with
//! `Storage::import_replicated`, which records the primary's log position in the same batch.
//!
//! - **Follower** ([`follow`]): one task per primary, long-polling `POST
//!   /internal/v1/replicate/poll` — the answer comes as soon as anything on the primary changed —
//!   then pulling the changes of the partitions it follows and lags on. Each poll carries the
//!   follower's applied positions (its acknowledgements).
//! - **Primary** ([`Acks`]): a node-wide change counter the polls wait on, and each follower's
//!   acknowledged position per partition; a write is answered once `write_quorum` copies (the
//!   primary's included) have it, else 503 after `quorum_timeout` (the write stays and keeps
//!   replicating; retrying it is idempotent).
//!
//! Lag (entries behind, per primary) is the gauge `memring_replication_lag_entries`. Not yet:
//! replica reads, failover, re-replication (the next steps).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use memring_common::api::{self, ReplicaPoll, ReplicaPollAnswer, partition_path};
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{NodeId, PartitionKey};
use parking_lot::Mutex;

use crate::record::{LogOp, decode};
use crate::storage::Storage;

/// How long a primary holds a follower's poll when nothing changes.
pub const POLL_WAIT: Duration = Duration::from_secs(1);
/// Log entries pulled per request.
const PAGE: usize = 1000;

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
            let slot = acked.entry((partition, follower.clone())).or_insert(0);
            *slot = (*slot).max(seq);
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

/// Follows every primary of this node's replicated partitions, until `stop` turns true: one
/// task per primary, started and ended as nodes come and go in the layout.
pub async fn follow(
    me: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(POLL_WAIT + Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "replication client cannot be built; not following");
            return;
        }
    };
    let mut tasks: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tasks.retain(|_, t| !t.is_finished());
        let current = ring.ring();
        if current.layout().replication_factor > 1 {
            for node in current.layout().nodes.iter().filter(|n| n.id != me) {
                if !tasks.contains_key(&node.id) {
                    let task = follow_primary(
                        client.clone(),
                        me.clone(),
                        node.id.clone(),
                        storage.clone(),
                        ring.clone(),
                        stop.clone(),
                    );
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

/// Follows one primary until it leaves the layout, replication is switched off, or `stop`.
async fn follow_primary(
    client: reqwest::Client,
    me: NodeId,
    primary_id: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = 0;
    let mut acks: Vec<(PartitionKey, u64)> = Vec::new();
    // Applied positions of the partitions followed here, read from storage once each.
    let mut applied: HashMap<PartitionKey, u64> = HashMap::new();
    loop {
        let ring = ring.ring();
        let Some(primary) = ring.layout().node(&primary_id).cloned() else { return };
        if ring.layout().replication_factor < 2 {
            return;
        }
        let ask = ReplicaPoll {
            follower: me.clone(),
            seen,
            wait_ms: POLL_WAIT.as_millis() as u64,
            acks: std::mem::take(&mut acks),
        };
        let polled = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = poll(&client, &primary, &ask) => r,
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
        seen = answer.counter;
        match catch_up(&client, &me, &storage, &ring, &primary, answer, &mut applied).await {
            Ok((applied, lag)) => {
                acks = applied;
                metrics::gauge!("memring_replication_lag_entries", "primary" => primary.id.to_string())
                    .set(lag as f64);
            }
            Err(e) => {
                tracing::warn!(primary = %primary.id, error = %e, "replication apply failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn poll(
    client: &reqwest::Client,
    primary: &LayoutNode,
    ask: &ReplicaPoll,
) -> anyhow::Result<ReplicaPollAnswer> {
    Ok(client
        .post(format!("http://{}/internal/v1/replicate/poll", primary.addr))
        .json(ask)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Applies what this node follows on `primary` and lacks, keeping `applied` current; returns the
/// positions to acknowledge (every partition followed) and the entries still behind.
async fn catch_up(
    client: &reqwest::Client,
    me: &NodeId,
    storage: &Arc<Storage>,
    ring: &memring_common::Ring,
    primary: &LayoutNode,
    answer: ReplicaPollAnswer,
    applied: &mut HashMap<PartitionKey, u64>,
) -> anyhow::Result<(Vec<(PartitionKey, u64)>, u64)> {
    let mut lag = 0;
    let mut acks = Vec::new();
    for stats in answer.partitions {
        let set = ring.replicas(&stats.partition);
        let follows = set.first().is_some_and(|p| p.id == primary.id)
            && set.iter().skip(1).any(|n| n.id == *me);
        if !follows {
            continue;
        }
        let mut at = match applied.get(&stats.partition) {
            Some(&at) => at,
            None => {
                let p = stats.partition.clone();
                blocking(storage, move |s| s.replicated_seq(&p)).await?
            }
        };
        while at < stats.last_seq {
            let (ops, last) = pull(client, primary, &stats.partition, at).await?;
            if last <= at {
                break;
            }
            let p = stats.partition.clone();
            blocking(storage, move |s| {
                s.import_replicated(&p, ops, memring_common::clock::now_millis(), last)
            })
            .await?;
            at = last;
        }
        applied.insert(stats.partition.clone(), at);
        lag += stats.last_seq.saturating_sub(at);
        acks.push((stats.partition, at));
    }
    Ok((acks, lag))
}

/// The primary's log of `p` after `after`: the operations and the last sequence number.
async fn pull(
    client: &reqwest::Client,
    primary: &LayoutNode,
    p: &PartitionKey,
    after: u64,
) -> anyhow::Result<(Vec<LogOp>, u64)> {
    let url = format!(
        "http://{}/internal/v1/migrate/{}/changes?after={after}&limit={PAGE}",
        primary.addr,
        partition_path(p)
    );
    let resp = client.get(&url).send().await?.error_for_status()?;
    let last = resp
        .headers()
        .get(api::LAST_SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("{url}: no x-memring-last-seq"))?;
    let ops: Vec<LogOp> = decode(&resp.bytes().await?)?;
    Ok((ops, last))
}

async fn blocking<T: Send + 'static>(
    storage: &Arc<Storage>,
    work: impl FnOnce(&Storage) -> Result<T, memring_common::ApiError> + Send + 'static,
) -> anyhow::Result<T> {
    let storage = storage.clone();
    Ok(tokio::task::spawn_blocking(move || work(&storage)).await??)
}
