//! One replication step for many partitions of this node in one request
//! (`POST /internal/v1/replicate/batch`): what the control plane asks each node once per look of
//! a layout change, instead of once per partition the change moves. Each partition gets exactly
//! what its one-partition route gives it (`replicate/position`, `replicate/take-over`,
//! `replicate/hand-over`); a partition the step fails for gets its error, the others go on.

use futures::future::join_all;
use memring_common::api::{ReplicaStep, ReplicaStepResult};

use super::*;

/// How many partitions of a batch take their writes over, or hand them over, at once: each may
/// wait for its quorum, and a few hundred waits cost no more than one.
const CONCURRENT: usize = 256;

impl Replication {
    /// `step` for each of `partitions`, once this node has seen layout `epoch`, in the order
    /// given.
    pub async fn batch(
        &self,
        step: ReplicaStep,
        epoch: u64,
        partitions: Vec<PartitionKey>,
    ) -> Result<Vec<ReplicaStepResult>, ApiError> {
        self.ring.reach(epoch).await?;
        if step == ReplicaStep::Position {
            // Positions only: one read of storage for the lot.
            let read = self
                .blocking(move |s| Ok(partitions.iter().map(|p| s.last_pos(p)).collect::<Vec<_>>()))
                .await?;
            return Ok(read.into_iter().map(answer).collect());
        }
        let mut out = Vec::with_capacity(partitions.len());
        for chunk in partitions.chunks(CONCURRENT) {
            let steps = chunk.iter().map(|p| async move {
                match step {
                    ReplicaStep::HandOver => self.hand_over(p, epoch).await,
                    _ => {
                        owns(&self.ring.ring(), &self.me, p)?;
                        self.take_over(p).await?;
                        self.last_pos(p).await
                    }
                }
            });
            out.extend(join_all(steps).await.into_iter().map(answer));
        }
        Ok(out)
    }
}

/// A partition's part of the answer.
fn answer(done: Result<LogPos, ApiError>) -> ReplicaStepResult {
    match done {
        Ok(at) => ReplicaStepResult {
            position: Some(ReplicaPosition { last_seq: at.seq, last_term: at.term }),
            error: None,
        },
        Err(e) => ReplicaStepResult { position: None, error: Some(e.message().to_owned()) },
    }
}
