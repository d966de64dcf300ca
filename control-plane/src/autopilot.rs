//! Rebalancing without an operator: with the layout's `auto_rebalance` on, the active control
//! plane admits shard nodes that register and are not in the layout, by running the rebalance an
//! operator runs with `shardctl rebalance` (`rebalance.rs`: plan, freeze, stage, migrate or
//! add copies, throttled, journaled, cancellable).
//!
//! When it acts, and when it does not:
//! - A node is admitted once every node waiting has been live for `settle` (nodes started
//!   together join in one rebalance, and a node that crashes at start is not admitted).
//! - It takes the control plane's one job slot with `try_lock`: an operator's migration,
//!   rebalance or drain, the copy sweep and a resumed journal run first, and it waits for any
//!   journaled job left by a crash (whose resumption owns the cluster until it is done).
//! - A failed rebalance is tried again after a back-off (5 s, doubling up to 5 minutes); one an
//!   operator cancelled (`shardctl cancel`) is not tried again for the same waiting nodes until
//!   that set changes or the control plane restarts (`shardctl rebalance` still runs it by hand).
//! - Its cost at rest is two reads of the ring store per tick (the layout and the leases), never
//!   a walk over partitions: the shard nodes are listed only by a rebalance it decided to run.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memring_common::NodeId;
use memring_common::api::{AutopilotRun, AutopilotView};
use memring_common::clock::now_millis;
use memring_common::internal::InternalClient;
use memring_common::store::RingStore;

use crate::job::{Cancel, JobError, Throttle};
use crate::rebalance::{self, Change};

/// How often the autopilot looks at the layout and the live nodes.
const TICK: Duration = Duration::from_secs(1);
/// Runs kept for the cluster view.
const HISTORY: usize = 10;
/// First wait after a failed run; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the autopilot needs to run a rebalance: the same parts an operator's request uses.
pub struct Jobs {
    /// The ring store.
    pub store: Arc<dyn RingStore>,
    /// Requests to shard nodes.
    pub client: InternalClient,
    /// The control plane's one job slot.
    pub slot: Arc<tokio::sync::Mutex<()>>,
    /// Copy rate of every migration.
    pub throttle: Throttle,
    /// Set by `shardctl cancel`.
    pub cancel: Cancel,
}

/// The autopilot's memory between ticks (it restarts empty with the control plane).
#[derive(Default)]
struct State {
    /// When each waiting node was first seen live outside the layout.
    first_seen: HashMap<NodeId, Instant>,
    running: bool,
    history: VecDeque<AutopilotRun>,
    /// The waiting set whose rebalance an operator cancelled: left alone until it changes.
    held: Option<BTreeSet<NodeId>>,
    /// No new try before this (after a failure), and the wait that set it.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// Admits registered nodes when the layout asks for it (see the module documentation).
pub struct Autopilot {
    settle: Duration,
    state: Mutex<State>,
}

impl Autopilot {
    /// An autopilot that admits nodes live outside the layout for at least `settle`.
    pub fn new(settle: Duration) -> Arc<Self> {
        Arc::new(Self { settle, state: Mutex::new(State::default()) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its part of the cluster view; `enabled` is the layout's `auto_rebalance`.
    pub fn view(&self, enabled: bool) -> AutopilotView {
        let state = self.state();
        let mut waiting: Vec<String> = state.first_seen.keys().map(|n| n.to_string()).collect();
        waiting.sort();
        AutopilotView {
            enabled,
            waiting,
            running: state.running,
            history: state.history.iter().cloned().collect(),
        }
    }

    /// Ticks until the task is aborted (the control plane stops leading or shuts down).
    pub async fn run(self: Arc<Self>, jobs: Jobs) {
        loop {
            tokio::time::sleep(TICK).await;
            if let Err(e) = self.tick(&jobs).await {
                tracing::warn!(error = %format!("{e:#}"), "autopilot: cannot read the cluster's state");
            }
        }
    }

    /// One look at the cluster; runs a rebalance when nodes are waiting and nothing holds it.
    async fn tick(&self, jobs: &Jobs) -> anyhow::Result<()> {
        let layout = jobs.store.load().await?.layout;
        if !layout.auto_rebalance {
            self.state().first_seen.clear();
            return Ok(());
        }
        let waiting: BTreeSet<NodeId> = jobs
            .store
            .live_nodes()
            .await?
            .into_iter()
            .map(|record| record.id)
            .filter(|id| layout.node(id).is_none())
            .collect();
        let now = Instant::now();
        {
            let mut state = self.state();
            state.first_seen.retain(|id, _| waiting.contains(id));
            for id in &waiting {
                state.first_seen.entry(id.clone()).or_insert(now);
            }
            if state.held.as_ref().is_some_and(|held| *held != waiting) {
                state.held = None;
            }
            let settled = state.first_seen.values().all(|seen| now - *seen >= self.settle);
            let backing_off = state.retry_at.is_some_and(|at| now < at);
            if waiting.is_empty() || !settled || backing_off || state.held.is_some() {
                return Ok(());
            }
        }
        if !crate::journal::pending(jobs.store.as_ref()).await?.is_empty()
            || crate::resize::pending(jobs.store.as_ref()).await?.is_some()
        {
            // A journaled job's resumption owns the cluster until it is done.
            return Ok(());
        }
        let Ok(_slot) = jobs.slot.try_lock() else {
            return Ok(());
        };
        self.rebalance(jobs, waiting).await;
        Ok(())
    }

    /// Runs the rebalance that admits `waiting` (holding the job slot) and records the outcome.
    async fn rebalance(&self, jobs: &Jobs, waiting: BTreeSet<NodeId>) {
        let names: Vec<String> = waiting.iter().map(|n| n.to_string()).collect();
        tracing::info!(nodes = ?names, "autopilot: admitting nodes that registered");
        jobs.cancel.clear();
        self.state().running = true;
        let (started, started_at_ms) = (Instant::now(), now_millis());
        let outcome = rebalance::execute(
            jobs.store.as_ref(),
            &jobs.client,
            &Change::Join,
            jobs.throttle,
            &jobs.cancel,
        )
        .await;
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut state = self.state();
        state.running = false;
        let run = match outcome {
            Ok((plan, _)) => {
                tracing::info!(
                    joined = ?plan.joining,
                    moves = plan.moves.len(),
                    moved_fraction = plan.moved_fraction,
                    ideal_fraction = plan.ideal_fraction,
                    took_ms,
                    "autopilot: rebalance done"
                );
                state.retry_at = None;
                state.backoff = Duration::ZERO;
                AutopilotRun {
                    started_at_ms,
                    took_ms,
                    joining: plan.joining,
                    moves: plan.moves.len(),
                    moved_fraction: plan.moved_fraction,
                    ideal_fraction: plan.ideal_fraction,
                    error: None,
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                if JobError::is_cancelled(&e) {
                    tracing::warn!(%error, "autopilot: rebalance cancelled; not retried for these nodes");
                    state.held = Some(waiting);
                } else {
                    state.backoff = (state.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    state.retry_at = Some(Instant::now() + state.backoff);
                    tracing::warn!(%error, retry_in_secs = state.backoff.as_secs(), "autopilot: rebalance failed");
                }
                AutopilotRun {
                    started_at_ms,
                    took_ms,
                    joining: names,
                    moves: 0,
                    moved_fraction: 0.0,
                    ideal_fraction: 0.0,
                    error: Some(error),
                }
            }
        };
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(run);
    }
}
