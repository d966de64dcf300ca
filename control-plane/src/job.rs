//! What every job of the control plane shares (migrations, moves of a replica set, rebalances,
//! drains, the autopilot's runs): how fast it may copy, how an operator stops it, why it stopped,
//! and the wait for a condition that an operator can cancel. No job module imports another for
//! these. What jobs answer (a migration's report, a planned move, plans) are wire types in
//! `common/src/api/jobs.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

/// How fast a migration may copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    /// Memories per second copied (0: as fast as the nodes go).
    pub memories_per_sec: u64,
}

/// A request to cancel the running migration (or rebalance), shared with the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Asks the running job to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Forgets an earlier request (a new job starts).
    pub fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether cancelling was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a job the control plane starts by itself needs (the autopilot's rebalances and size
/// moves, failover's replacements): the same parts an operator's request uses.
#[derive(Clone)]
pub struct Jobs {
    /// The ring store.
    pub store: std::sync::Arc<dyn memring_common::store::RingStore>,
    /// Requests to shard nodes.
    pub client: memring_common::internal::InternalClient,
    /// The control plane's one job slot.
    pub slot: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Copy rate of every migration.
    pub throttle: Throttle,
    /// Set by `shardctl cancel`.
    pub cancel: Cancel,
}

/// Why a migration, move, rebalance or drain stopped before it was done.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An operator cancelled it (`shardctl cancel`); the text says where it stopped and what
    /// the cluster is left with.
    #[error("cancelled by an operator {0}")]
    Cancelled(String),
}

impl JobError {
    /// Whether `e` (or an error it wraps) is a cancellation.
    pub fn is_cancelled(e: &anyhow::Error) -> bool {
        e.chain().any(|c| matches!(c.downcast_ref::<JobError>(), Some(JobError::Cancelled(_))))
    }
}

/// How long a waiting step pauses between looks, at most. It pauses a twentieth of the time
/// it has waited so far, and at least as long as its last look took, between [`POLL_FIRST`]
/// and this: a step that is done quickly is seen quickly, a long wait looks every half second,
/// and a look that lists many partitions is never run back to back.
const POLL: Duration = Duration::from_millis(500);

/// The shortest pause between a waiting step's looks.
const POLL_FIRST: Duration = Duration::from_millis(20);

/// Polls `done` until it is true; stops with an error when the operator cancels.
pub async fn wait<F, Fut>(cancel: &Cancel, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = std::time::Instant::now();
    let mut logged = started;
    loop {
        let look = std::time::Instant::now();
        match done().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "waiting for {what}"),
        }
        if cancel.is_set() {
            return Err(JobError::Cancelled(format!("while waiting for {what}")).into());
        }
        if logged.elapsed() > Duration::from_secs(10) {
            tracing::info!("still waiting for {what}");
            logged = std::time::Instant::now();
        }
        let pause = (started.elapsed() / 20).max(look.elapsed());
        tokio::time::sleep(pause.clamp(POLL_FIRST, POLL)).await;
    }
}
