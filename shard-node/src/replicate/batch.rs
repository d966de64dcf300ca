//! One replication step for many partitions of this node in one request
//! (`POST /internal/v1/replicate/batch`): what the control plane asks each node once per look of
//! a layout change, instead of once per partition the change moves. Each partition gets exactly
//! what its one-partition route gives it (`replicate/position`, `replicate/take-over`,
//! `replicate/hand-over`); a partition the step fails for gets its error, the others go on.

use futures::future::join_all;
use memring_common::api::{ReplicaStep, ReplicaStepResult};

use super::*;

/// How many partitions of a batch take their writes over at once. A take-over not yet made at
/// this term asks the other copies for their positions, and a write to the partition waits for
/// it: more at once would make the other copies' nodes, busy filling new copies, the bottleneck
/// of those writes.
const CONCURRENT: usize = 64;

impl Replication {
    /// `step` for each of `partitions`, once this node has seen layout `epoch`, in the order
    /// given. The positions are read in one storage call.
    pub async fn batch(
        &self,
        step: ReplicaStep,
        epoch: u64,
        partitions: Vec<PartitionKey>,
    ) -> Result<Vec<ReplicaStepResult>, ApiError> {
        self.ring.reach(epoch).await?;
        let done: Vec<Result<LogPos, ApiError>> = match step {
            ReplicaStep::HandOver => self.hand_over_many(&partitions, epoch).await?,
            ReplicaStep::Position => self.last_positions(partitions, Vec::new()).await?,
            ReplicaStep::TakeOver => {
                let mut taken = Vec::with_capacity(partitions.len());
                for chunk in partitions.chunks(CONCURRENT) {
                    let takes = chunk.iter().map(|p| async move {
                        owns(&self.ring.ring(), &self.me, p)?;
                        self.take_over(p).await
                    });
                    taken.extend(join_all(takes).await);
                }
                self.last_positions(partitions, taken).await?
            }
        };
        Ok(done.into_iter().map(answer).collect())
    }

    /// The last log position of each of `partitions`, read in one storage call, or the error
    /// `failed` has for it (`failed` empty: none failed).
    async fn last_positions(
        &self,
        partitions: Vec<PartitionKey>,
        failed: Vec<Result<(), ApiError>>,
    ) -> Result<Vec<Result<LogPos, ApiError>>, ApiError> {
        let read = self
            .blocking(move |s| Ok(partitions.iter().map(|p| s.last_pos(p)).collect::<Vec<_>>()))
            .await?;
        if failed.is_empty() {
            return Ok(read);
        }
        Ok(read.into_iter().zip(failed).map(|(at, ok)| ok.and(at)).collect())
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
