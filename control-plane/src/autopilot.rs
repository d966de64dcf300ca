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
//!
//! Placement by size (the layout's `size_policy`) is the autopilot's other duty:
//! `autopilot/policy.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memring_common::api::{AutopilotRun, AutopilotView, Flip, PartitionList};
use memring_common::clock::now_millis;
use memring_common::layout::SizePolicy;
use memring_common::usage::Usage;
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};

use crate::job::{JobError, Jobs};
use crate::migrate::migrate_partition;
use crate::rebalance::{self, Change};
use crate::shard_client as shard;

mod policy;
pub use policy::dedicated;
use policy::{Sizes, jobs_policy};

/// How often the autopilot looks at the layout and the live nodes.
const TICK: Duration = Duration::from_secs(1);
/// Runs kept for the cluster view.
const HISTORY: usize = 10;
/// First wait after a failed run; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The autopilot's memory between ticks (it restarts empty with the control plane).
#[derive(Default)]
struct State {
    /// When each waiting node was first seen live outside the layout.
    first_seen: HashMap<NodeId, Instant>,
    running: bool,
    history: VecDeque<AutopilotRun>,
    /// The waiting set whose rebalance an operator cancelled: left alone until it changes.
    held: Option<BTreeSet<NodeId>>,
    /// When a rebalance may be tried again after a failed one.
    backoff: Backoff,
    /// The size policy's last move or failure.
    last_policy_action: Option<String>,
    /// When a policy move may be tried again after a failed one.
    policy_backoff: Backoff,
    /// The policy whose move an operator cancelled: no move while the layout still has it.
    policy_held: Option<SizePolicy>,
}

/// The wait after failures: none at first, then [`FIRST_BACKOFF`], doubling up to
/// [`MAX_BACKOFF`]; a success forgets it.
#[derive(Default)]
struct Backoff {
    wait: Duration,
    until: Option<Instant>,
}

impl Backoff {
    /// Records a failure; answers the wait before the next try.
    fn failed(&mut self) -> Duration {
        self.wait = (self.wait * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        self.until = Some(Instant::now() + self.wait);
        self.wait
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Whether a try must wait still.
    fn waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

/// Admits registered nodes when the layout asks for it (see the module documentation).
pub struct Autopilot {
    settle: Duration,
    state: Mutex<State>,
    /// Every tenant's size, kept from the nodes' change feeds (only while a size policy is set).
    usage: Mutex<Sizes>,
}

impl Autopilot {
    /// An autopilot that admits nodes live outside the layout for at least `settle`.
    pub fn new(settle: Duration) -> Arc<Self> {
        Arc::new(Self {
            settle,
            state: Mutex::new(State::default()),
            usage: Mutex::new(Sizes::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills in what the autopilot knows (nodes waiting, runs, the size policy's last action)
    /// beside what the layout says (`view.rs`: on or off, the dedicated nodes).
    pub fn fill(&self, view: &mut AutopilotView) {
        let state = self.state();
        view.waiting = state.first_seen.keys().map(|n| n.to_string()).collect();
        view.waiting.sort();
        view.running = state.running;
        view.history = state.history.iter().cloned().collect();
        view.last_policy_action = state.last_policy_action.clone();
    }

    /// Ticks until the task is aborted (the control plane stops leading or shuts down).
    pub async fn run(self: Arc<Self>, jobs: Jobs) {
        loop {
            tokio::time::sleep(TICK).await;
            if let Err(e) = self.tick(&jobs).await {
                tracing::warn!(error = %format!("{e:#}"), "autopilot: cannot read the cluster's state");
            }
            if let Err(e) = self.place_by_size(&jobs).await {
                let error = format!("{e:#}");
                let cancelled = JobError::is_cancelled(&e);
                let held = if cancelled { jobs_policy(&jobs).await } else { None };
                let mut state = self.state();
                if cancelled {
                    tracing::warn!(%error, "autopilot: size policy move cancelled; no move until the policy changes");
                    state.policy_held = held;
                } else {
                    let wait = state.policy_backoff.failed();
                    tracing::warn!(%error, retry_in_secs = wait.as_secs(), "autopilot: placement by size failed");
                }
                state.last_policy_action = Some(format!("failed: {error}"));
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
            let backing_off = state.backoff.waiting(now);
            if waiting.is_empty() || !settled || backing_off || state.held.is_some() {
                return Ok(());
            }
            if crate::placement::unsettled(&layout, None).is_some() {
                // Failover settles the other nodes first; the join is not a failure to back
                // off from.
                return Ok(());
            }
        }
        if crate::resize::journaled(jobs.store.as_ref()).await? {
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
                state.backoff.succeeded();
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
                    let wait = state.backoff.failed();
                    tracing::warn!(%error, retry_in_secs = wait.as_secs(), "autopilot: rebalance failed");
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
