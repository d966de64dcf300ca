//! The primary's side of replication: what each follower has acknowledged, per partition and
//! with the term it was made under, and the write-quorum wait on it (what changed is the
//! storage's change feed, `storage/feed.rs`).
//!
//! A write waiting for its quorum is woken only by an acknowledgement of its own partition
//! that completes it, not by every acknowledgement the node receives: with many writes in
//! flight, waking them all on each ack cost more than the acks themselves.
//!
//! When the primary takes the writes over again at a new term while writes wait, those still in
//! its log are *rebased* to the first entry of the new term (`rules::rebase`), and the others
//! fail (`Replication::rebase_waiting`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use memring_common::api::ReplicaAck;
use memring_common::{NodeId, PartitionKey};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::rules::{self, LogPos};

/// The primary side: what each follower has acknowledged, and the writes waiting on it.
#[derive(Default)]
pub struct Acks {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per partition, each follower's acknowledged (position, term).
    acked: HashMap<PartitionKey, Vec<(NodeId, u64, u64)>>,
    /// Per partition, the writes waiting for acknowledgements.
    waiting: HashMap<PartitionKey, Vec<Waiter>>,
    next_waiter: u64,
}

/// A write waiting until `needed` of `followers` acknowledged `at`.
struct Waiter {
    id: u64,
    followers: Vec<NodeId>,
    needed: usize,
    at: LogPos,
    /// True once held by the quorum; false once cut from the log.
    done: oneshot::Sender<bool>,
}

/// A write registered as waiting ([`Acks::register`]).
pub struct Waiting {
    id: u64,
    done: oneshot::Receiver<bool>,
}

impl State {
    fn acked(&self, partition: &PartitionKey, follower: &NodeId) -> Option<(u64, u64)> {
        let copies = self.acked.get(partition)?;
        copies.iter().find(|(f, ..)| f == follower).map(|&(_, seq, term)| (seq, term))
    }

    /// How many of `followers` acknowledged `partition` up to `at` under its term.
    fn holding(&self, partition: &PartitionKey, followers: &[NodeId], at: LogPos) -> usize {
        followers
            .iter()
            .filter(|f| {
                self.acked(partition, f)
                    .is_some_and(|(seq, term)| rules::ack_covers(seq, term, at.seq, at.term))
            })
            .count()
    }
}

impl Acks {
    /// `follower`'s last acknowledged (position, term) of `partition`.
    pub fn acked(&self, partition: &PartitionKey, follower: &NodeId) -> Option<(u64, u64)> {
        self.state.lock().acked(partition, follower)
    }

    /// Records `follower`'s acknowledgements and wakes the writes they complete.
    pub fn record(&self, follower: &NodeId, acks: Vec<ReplicaAck>) {
        if acks.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut touched = Vec::new();
        for ack in acks {
            // A copy cut back acknowledges less than before; its position is what it has now.
            let copies = state.acked.entry(ack.partition.clone()).or_default();
            match copies.iter_mut().find(|(f, ..)| f == follower) {
                Some(copy) => (copy.1, copy.2) = (ack.seq, ack.term),
                None => copies.push((follower.clone(), ack.seq, ack.term)),
            }
            if state.waiting.contains_key(&ack.partition) {
                touched.push(ack.partition);
            }
        }
        for partition in touched {
            let Some(waiters) = state.waiting.remove(&partition) else { continue };
            let mut still = Vec::with_capacity(waiters.len());
            for w in waiters {
                if state.holding(&partition, &w.followers, w.at) >= w.needed {
                    // The write may have stopped waiting (timed out) meanwhile: nothing to do.
                    let _ = w.done.send(true);
                } else if !w.done.is_closed() {
                    still.push(w);
                }
            }
            if !still.is_empty() {
                state.waiting.insert(partition, still);
            }
        }
    }

    /// Waits until `needed` of `followers` have acknowledged `partition` up to `at` under
    /// its term (the write's); false if `timeout` passes first.
    pub async fn wait_quorum(
        &self,
        partition: &PartitionKey,
        followers: &[NodeId],
        needed: usize,
        at: LogPos,
        timeout: Duration,
    ) -> bool {
        match self.register(partition, followers, needed, at) {
            Some(mut waiting) => self.wait(partition, &mut waiting, Instant::now() + timeout).await,
            None => true,
        }
    }

    /// Registers a write waiting until `needed` of `followers` have acknowledged `partition` up
    /// to `at` under its term; `None` if they already have.
    pub fn register(
        &self,
        partition: &PartitionKey,
        followers: &[NodeId],
        needed: usize,
        at: LogPos,
    ) -> Option<Waiting> {
        let mut state = self.state.lock();
        if state.holding(partition, followers, at) >= needed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.next_waiter += 1;
        let id = state.next_waiter;
        let waiter = Waiter { id, followers: followers.to_vec(), needed, at, done: tx };
        state.waiting.entry(partition.clone()).or_default().push(waiter);
        Some(Waiting { id, done: rx })
    }

    /// Waits for a registered write: true once its quorum holds it, false if it was cut from
    /// the log or `deadline` passes first (it then stops waiting). Cancel-safe: dropped before
    /// the deadline, the write stays registered and can be waited for again.
    pub async fn wait(
        &self,
        partition: &PartitionKey,
        waiting: &mut Waiting,
        deadline: Instant,
    ) -> bool {
        if let Ok(answer) = tokio::time::timeout_at(deadline, &mut waiting.done).await {
            return answer.unwrap_or(false);
        }
        self.forget(partition, waiting).is_some_and(|held| held)
    }

    /// Stops a registered write waiting; whether its quorum holds it now (`None`: it no
    /// longer waited).
    pub fn forget(&self, partition: &PartitionKey, waiting: &Waiting) -> Option<bool> {
        let mut state = self.state.lock();
        let waiters = state.waiting.get_mut(partition)?;
        let i = waiters.iter().position(|w| w.id == waiting.id)?;
        let w = waiters.swap_remove(i);
        if waiters.is_empty() {
            state.waiting.remove(partition);
        }
        Some(state.holding(partition, &w.followers, w.at) >= w.needed)
    }

    /// Whether writes of `partition` wait for their quorum.
    pub fn waits(&self, partition: &PartitionKey) -> bool {
        self.state.lock().waiting.contains_key(partition)
    }

    /// The writes of `partition` waiting at a term older than `term`: (waiter, position).
    pub fn older(&self, partition: &PartitionKey, term: u64) -> Vec<(u64, LogPos)> {
        let state = self.state.lock();
        let Some(waiters) = state.waiting.get(partition) else { return Vec::new() };
        waiters.iter().filter(|w| w.at.term < term).map(|w| (w.id, w.at)).collect()
    }

    /// Moves each waiter named to its new position (`rules::rebase`), or fails it (`None`), if
    /// it still waits at the position the verdict was made for. Returns whether any now waits
    /// at a new position.
    pub fn rebase(
        &self,
        partition: &PartitionKey,
        verdicts: Vec<(u64, LogPos, Option<LogPos>)>,
    ) -> bool {
        let mut state = self.state.lock();
        let state = &mut *state;
        let Some(mut waiters) = state.waiting.remove(partition) else { return false };
        let mut moved = false;
        for (id, was, now) in verdicts {
            let Some(i) = waiters.iter().position(|w| w.id == id && w.at == was) else { continue };
            match now {
                Some(now) => {
                    waiters[i].at = now;
                    moved = true;
                }
                None => {
                    let _ = waiters.swap_remove(i).done.send(false);
                }
            }
        }
        let mut still = Vec::with_capacity(waiters.len());
        for w in waiters {
            if state.holding(partition, &w.followers, w.at) >= w.needed {
                let _ = w.done.send(true);
            } else if !w.done.is_closed() {
                still.push(w);
            }
        }
        if !still.is_empty() {
            state.waiting.insert(partition.clone(), still);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Tenant `t`'s shared scope.
    fn key(t: &str) -> PartitionKey {
        format!("{t}/shared").parse().expect("a partition key")
    }

    fn node(n: &str) -> NodeId {
        NodeId::parse(n).expect("a node id")
    }

    fn ack(t: &str, seq: u64, term: u64) -> ReplicaAck {
        ReplicaAck { partition: key(t), seq, term }
    }

    fn waiting(acks: &Acks) -> usize {
        acks.state.lock().waiting.values().map(Vec::len).sum()
    }

    #[tokio::test]
    async fn a_write_is_answered_by_the_acks_that_complete_its_quorum_only() {
        let acks = Arc::new(Acks::default());
        let followers = [node("b"), node("c")];
        let at = LogPos::new(3, 5);
        let wait = {
            let (acks, followers) = (acks.clone(), followers.clone());
            tokio::spawn(async move {
                acks.wait_quorum(&key("t1"), &followers, 2, at, Duration::from_secs(10)).await
            })
        };
        while waiting(&acks) == 0 {
            tokio::task::yield_now().await;
        }
        // Another partition, an older position, another term, one copy of two: still waiting.
        acks.record(&node("b"), vec![ack("t2", 9, 3)]);
        acks.record(&node("b"), vec![ack("t1", 4, 3)]);
        acks.record(&node("c"), vec![ack("t1", 9, 2)]);
        acks.record(&node("b"), vec![ack("t1", 5, 3)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!wait.is_finished());
        assert_eq!(waiting(&acks), 1);
        acks.record(&node("c"), vec![ack("t1", 6, 3)]);
        assert!(wait.await.expect("task"));
        assert_eq!(waiting(&acks), 0);
        assert_eq!(acks.acked(&key("t1"), &node("c")), Some((6, 3)));
        // Already held: answered at once.
        assert!(acks.wait_quorum(&key("t1"), &followers, 2, at, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_rebased_write_waits_for_its_new_position_and_a_cut_one_fails() {
        let acks = Arc::new(Acks::default());
        let followers = [node("b"), node("c")];
        let long = Instant::now() + Duration::from_secs(10);
        let old = LogPos::new(3, 5);
        let mut kept = acks.register(&key("t1"), &followers, 1, old).expect("waits");
        let mut cut = acks.register(&key("t1"), &followers, 1, LogPos::new(3, 6)).expect("waits");
        let mut current =
            acks.register(&key("t1"), &followers, 1, LogPos::new(4, 8)).expect("waits");
        assert_eq!(acks.older(&key("t1"), 4).len(), 2);
        // A verdict made for another position than the waiter's now changes nothing.
        assert!(!acks.rebase(&key("t1"), vec![(kept.id, LogPos::new(2, 5), None)]));
        let new = LogPos::new(4, 7);
        let verdicts = vec![(kept.id, old, Some(new)), (cut.id, LogPos::new(3, 6), None)];
        assert!(acks.rebase(&key("t1"), verdicts));
        assert!(!acks.wait(&key("t1"), &mut cut, long).await, "a cut write fails at once");
        assert!(acks.older(&key("t1"), 4).is_empty());
        // An acknowledgement under the old term no longer counts; one under the new term at
        // the term's first entry does.
        acks.record(&node("b"), vec![ack("t1", 5, 3)]);
        acks.record(&node("b"), vec![ack("t1", 6, 4)]);
        assert_eq!(waiting(&acks), 2);
        acks.record(&node("c"), vec![ack("t1", 7, 4)]);
        assert!(acks.wait(&key("t1"), &mut kept, long).await);
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(!acks.wait(&key("t1"), &mut current, soon).await);
        assert_eq!(waiting(&acks), 0);
    }

    #[tokio::test]
    async fn a_write_that_times_out_leaves_no_waiter_behind() {
        let acks = Acks::default();
        let followers = [node("b")];
        let at = LogPos::new(1, 1);
        let t = Duration::from_millis(10);
        assert!(!acks.wait_quorum(&key("t1"), &followers, 1, at, t).await);
        assert_eq!(waiting(&acks), 0);
        // A copy cut back acknowledges less than before, and that is what counts.
        acks.record(&node("b"), vec![ack("t1", 1, 1)]);
        acks.record(&node("b"), vec![ack("t1", 0, 1)]);
        assert!(!acks.wait_quorum(&key("t1"), &followers, 1, at, t).await);
    }
}
