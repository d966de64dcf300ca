//! Failover (DESIGN.md, "Replication and failure"), run by the active control plane while the
//! layout is replicated:
//!
//! - a node in the ring whose lease has expired (no live record) is marked **down** in the
//!   layout (epoch + 1): it keeps its place in every replica set, but the next replica owns its
//!   partitions; that node takes their writes over only after making its log the most
//!   up-to-date of enough live copies (`shard-node/src/replicate.rs`), so no acknowledged write
//!   is lost while fewer than W copies fail;
//! - a down node that is alive again follows its primaries (cutting back writes nobody
//!   acknowledged); once its `/internal/v1/replicate/status` says every copy it holds was
//!   checked against its owner's log at the current epoch and is caught up, it is
//!   **re-admitted** as *joining* (epoch + 1): live and counted again, but still leading
//!   nothing;
//! - a joining node that is caught up at the epoch that made it joining gets its leadership
//!   **handed back** (epoch + 1): it becomes the owner where it comes first in its replica sets
//!   and takes over from the copies that served meanwhile, whose whole log it has. A node that
//!   returns therefore never takes the writes back at once, and only ever from a log it holds;
//! - a node down for longer than `replace_after` is **replaced**: drained as `shardctl drain`
//!   drains it, staged with the node recorded as down, so each replica set it was in keeps
//!   leading while the next node on the ring fills its copy, and leads with it once it holds
//!   the owner's log; every partition returns to R copies without an operator.
//!
//! How long a node has been down is kept by this control plane; a newly active one starts the
//! clock again (a late replacement, never an early one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use memring_common::layout::NodeState;
use memring_common::store::{RingStore, update_layout};
use memring_common::{ClusterLayout, NodeId};

use crate::job::Jobs;
use crate::rebalance::{self, Change};

/// How often the layout and the live nodes are compared.
const TICK: Duration = Duration::from_millis(500);

/// Failover settings.
#[derive(Debug, Clone, Copy)]
pub struct FailoverConfig {
    /// Remove a node down this long from the layout (None: never, an operator decides).
    pub replace_after: Option<Duration>,
}

/// What one round decided for one node.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    MarkDown(NodeId),
    Readmit(NodeId),
    HandBack(NodeId),
    Replace(NodeId),
}

/// Runs failover rounds for as long as the task lives (the leader's lifetime). A replacement
/// is a drain, run in `jobs`' slot like an operator's.
pub async fn run(jobs: Jobs, config: FailoverConfig) {
    let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut replaced_at: HashMap<NodeId, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if let Err(e) = round(&jobs, config, &mut down_since, &mut replaced_at).await {
            tracing::warn!(error = %format!("{e:#}"), "failover round failed");
        }
    }
}

async fn round(
    jobs: &Jobs,
    config: FailoverConfig,
    down_since: &mut HashMap<NodeId, Instant>,
    replaced_at: &mut HashMap<NodeId, Instant>,
) -> anyhow::Result<()> {
    let (store, client) = (jobs.store.as_ref(), &jobs.client);
    let layout = store.load().await?.layout;
    if layout.replication_factor < 2 {
        down_since.clear();
        return Ok(());
    }
    let live: Vec<NodeId> = store.live_nodes().await?.into_iter().map(|n| n.id).collect();
    down_since.retain(|id, _| layout.states.get(id).is_marked_down());
    replaced_at.retain(|id, _| layout.node(id).is_some());
    for id in layout.states.down() {
        down_since.entry(id.clone()).or_insert_with(Instant::now);
    }
    let mut caught_up = Vec::new();
    let waiting = |id: &NodeId| {
        let state = layout.states.get(id);
        state.is_marked_down() || state == NodeState::Joining
    };
    for node in layout.nodes.iter().filter(|n| waiting(&n.id) && live.contains(&n.id)) {
        // Caught up by the newest layout (so it follows its primaries of that layout).
        let status = crate::shard_client::replica_status(client, &node.addr).await;
        if status.is_ok_and(|s| s.caught_up && s.epoch >= layout.epoch) {
            caught_up.push(node.id.clone());
        }
    }
    for action in decide(&layout, &live, &caught_up, down_since, config, Instant::now()) {
        if let Action::Replace(id) = &action {
            replace(jobs, &layout, id, replaced_at);
            continue;
        }
        apply(store, &action).await?;
        tracing::warn!(?action, "failover");
        count(&action);
    }
    Ok(())
}

/// Counts a failover action in `memring_failover_actions_total`.
fn count(action: &Action) {
    metrics::counter!("memring_failover_actions_total", "action" => match action {
        Action::MarkDown(_) => "mark_down",
        Action::Readmit(_) => "readmit",
        Action::HandBack(_) => "hand_back",
        Action::Replace(_) => "replace",
    })
    .increment(1);
}

/// How long after starting the replacement of a node failover may start it again (one that
/// could not start, failed or was cancelled).
const REPLACE_AGAIN: Duration = Duration::from_secs(30);

/// Replaces node `id`, down for longer than `replace_after`, by draining it as `shardctl drain`
/// does (`rebalance.rs`, staged by `resize.rs` with the node recorded as down): its sets keep
/// leading without it while the nodes that take its places fill, and lead with them only once
/// they hold their owners' logs. Taking it out of its sets at once instead would let a
/// take-over hear an empty new member alone and miss a write the set acknowledged (the model's
/// `Membership::Replaced`). Runs in the background in the job slot; not while another job
/// holds it, a journaled one waits to be resumed, or another node is not active (the drain
/// would refuse); tried again after [`REPLACE_AGAIN`].
fn replace(
    jobs: &Jobs,
    layout: &ClusterLayout,
    id: &NodeId,
    replaced_at: &mut HashMap<NodeId, Instant>,
) {
    if replaced_at.get(id).is_some_and(|at| at.elapsed() < REPLACE_AGAIN) {
        return;
    }
    if let Some(why) = crate::placement::unsettled(layout, Some(id)) {
        tracing::debug!(node = %id, why, "failover: the replacement waits");
        return;
    }
    let Ok(slot) = jobs.slot.clone().try_lock_owned() else { return };
    replaced_at.insert(id.clone(), Instant::now());
    let (jobs, id) = (jobs.clone(), id.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let store = jobs.store.as_ref();
        if crate::resize::journaled(store).await.unwrap_or(true) {
            return;
        }
        tracing::warn!(node = %id, "failover: replacing a node down for too long (a drain)");
        jobs.cancel.clear();
        let drain = Change::Drain(id.to_string());
        match rebalance::execute(store, &jobs.client, &drain, jobs.throttle, &jobs.cancel).await {
            Ok(_) => {
                tracing::warn!(node = %id, "failover: replaced");
                count(&Action::Replace(id));
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %format!("{e:#}"), "failover: the replacement failed; it is tried again later")
            }
        }
    });
}

/// The round's decisions: pure, so the rules are tested without a cluster.
fn decide(
    layout: &ClusterLayout,
    live: &[NodeId],
    caught_up: &[NodeId],
    down_since: &HashMap<NodeId, Instant>,
    config: FailoverConfig,
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for node in &layout.nodes {
        let id = &node.id;
        let alive = live.contains(id);
        let state = layout.states.get(id);
        // A draining node stays down until the drain takes it out.
        let ready = caught_up.contains(id) && !state.is_draining();
        if !state.is_marked_down() {
            if !alive {
                actions.push(Action::MarkDown(id.clone()));
            } else if state == NodeState::Joining && ready {
                actions.push(Action::HandBack(id.clone()));
            }
        } else if alive {
            if ready {
                actions.push(Action::Readmit(id.clone()));
            }
        } else if let (Some(after), Some(since)) = (config.replace_after, down_since.get(id))
            && now.duration_since(*since) >= after
        {
            actions.push(Action::Replace(id.clone()));
        }
    }
    actions
}

/// One layout change by compare-and-swap, re-checked against the layout it applies to (a
/// replacement is a drain: [`replace`]).
async fn apply(store: &dyn RingStore, action: &Action) -> anyhow::Result<()> {
    update_layout(store, 20, |layout| {
        if layout.replication_factor < 2 {
            return None;
        }
        let mut next = layout.clone();
        let state = |id: &NodeId| layout.states.get(id);
        match action {
            Action::MarkDown(id) if layout.node(id).is_some() && !state(id).is_marked_down() => {
                next.epoch += 1;
                next.states.set(id, NodeState::Down { draining: state(id).is_draining() });
            }
            Action::Readmit(id) if state(id).is_marked_down() => {
                next.epoch += 1;
                let back =
                    if state(id).is_draining() { NodeState::Draining } else { NodeState::Joining };
                next.states.set(id, back);
            }
            Action::HandBack(id) if state(id) == NodeState::Joining => {
                next.epoch += 1;
                next.states.set(id, NodeState::Active);
            }
            _ => return None,
        }
        Some(next)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use memring_common::layout::LayoutNode;

    use super::*;

    fn layout(down: &[&str]) -> ClusterLayout {
        let mut l = ClusterLayout { replication_factor: 3, ..Default::default() };
        for id in ["a", "b", "c", "d"] {
            l = l.with_node(LayoutNode {
                id: NodeId::parse(id).expect("id"),
                addr: format!("{id}:1"),
            });
        }
        for d in down {
            l.states.set(&NodeId::parse(d).expect("id"), NodeState::Down { draining: false });
        }
        l
    }

    fn ids(list: &[&str]) -> Vec<NodeId> {
        list.iter().map(|d| NodeId::parse(d).expect("id")).collect()
    }

    #[test]
    fn dead_nodes_go_down_caught_up_ones_come_back_long_gone_ones_are_replaced() {
        let now = Instant::now();
        let config = FailoverConfig { replace_after: Some(Duration::from_secs(60)) };
        let none = HashMap::new();
        // b's lease expired: down.
        let acts = decide(&layout(&[]), &ids(&["a", "c", "d"]), &[], &none, config, now);
        assert_eq!(acts, [Action::MarkDown(NodeId::parse("b").expect("id"))]);
        // b is back but still catching up: nothing; caught up: readmitted, as joining.
        let l = layout(&["b"]);
        assert!(decide(&l, &ids(&["a", "b", "c", "d"]), &[], &none, config, now).is_empty());
        let acts = decide(&l, &ids(&["a", "b", "c", "d"]), &ids(&["b"]), &none, config, now);
        assert_eq!(acts, [Action::Readmit(NodeId::parse("b").expect("id"))]);
        // Joining: leadership is handed back only once it is caught up at that layout too.
        let mut joining = layout(&[]);
        joining.states.set(&NodeId::parse("b").expect("id"), NodeState::Joining);
        assert!(decide(&joining, &ids(&["a", "b", "c", "d"]), &[], &none, config, now).is_empty());
        let acts = decide(&joining, &ids(&["a", "b", "c", "d"]), &ids(&["b"]), &none, config, now);
        assert_eq!(acts, [Action::HandBack(NodeId::parse("b").expect("id"))]);
        // A joining node that dies is marked down.
        let acts = decide(&joining, &ids(&["a", "c", "d"]), &[], &none, config, now);
        assert_eq!(acts, [Action::MarkDown(NodeId::parse("b").expect("id"))]);
        // b still dead: replaced once down for replace_after, not before, never without it.
        let since: HashMap<NodeId, Instant> =
            [(NodeId::parse("b").expect("id"), now - Duration::from_secs(30))].into();
        assert!(decide(&l, &ids(&["a", "c", "d"]), &[], &since, config, now).is_empty());
        let later = now + Duration::from_secs(31);
        let acts = decide(&l, &ids(&["a", "c", "d"]), &[], &since, config, later);
        assert_eq!(acts, [Action::Replace(NodeId::parse("b").expect("id"))]);
        let never = FailoverConfig { replace_after: None };
        assert!(decide(&l, &ids(&["a", "c", "d"]), &[], &since, never, later).is_empty());
    }
}
