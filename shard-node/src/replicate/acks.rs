//! The primary's side of replication: what each follower has acknowledged, per partition and
//! with the term it was made under, and the write-quorum wait on it (what changed is the
//! storage's change feed, `storage/feed.rs`).

use std::collections::HashMap;
use std::time::Duration;

use memring_common::api::ReplicaAck;
use memring_common::{NodeId, PartitionKey};
use parking_lot::Mutex;

use super::rules::{self, LogPos};

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
