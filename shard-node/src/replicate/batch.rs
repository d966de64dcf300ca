//! One replication step for many partitions of this node in one request
//! (`POST /internal/v1/replicate/batch`): what the control plane asks each node once per look of
//! a layout change, instead of once per partition the change moves. Each partition gets exactly
//! what its one-partition route gives it (`replicate/position`, `replicate/take-over`,
//! `replicate/hand-over`); a partition the step fails for gets its error, the others go on.

use futures::future::join_all;
use memring_common::api::{
    MAX_REPLICA_BATCH, ReplicaBatch, ReplicaBatchAnswer, ReplicaStep, ReplicaStepResult,
};

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
                let ahead = self.ask_ahead(&partitions).await;
                let ahead = &ahead;
                let mut taken = Vec::with_capacity(partitions.len());
                for chunk in partitions.chunks(CONCURRENT) {
                    let takes = chunk.iter().map(|p| async move {
                        owns(&self.ring.ring(), &self.me, p)?;
                        self.take_over_with(p, Some(ahead)).await
                    });
                    taken.extend(join_all(takes).await);
                }
                self.last_positions(partitions, taken).await?
            }
        };
        Ok(done.into_iter().map(answer).collect())
    }

    /// The positions the take-overs of `partitions` will ask the other copies for, asked of
    /// each copy's node in one request per [`MAX_REPLICA_BATCH`] partitions (its `position`
    /// step, which answers what the one-partition route would) instead of one request per
    /// partition and copy: a layout change that moves 40,000 partitions to a node no longer
    /// makes it send 40,000 requests to the nodes they come from. Only partitions this node
    /// owns and has not taken over are asked about; a node that does not answer is asked again
    /// by each take-over.
    async fn ask_ahead(&self, partitions: &[PartitionKey]) -> AskedAhead {
        let ring = self.ring.ring();
        let epoch = ring.epoch();
        let mut by_node: HashMap<NodeId, (LayoutNode, Vec<PartitionKey>)> = HashMap::new();
        for p in partitions {
            let mine = ring.owner(p).is_some_and(|o| o.id == self.me);
            if !mine || !ring.replicated(p) || self.lead_term_in(&ring, p).is_some() {
                continue;
            }
            let copies = ring.followers(p).into_iter().chain(ring.retiring(p));
            for node in copies.filter(|n| !ring.layout().is_down(&n.id)) {
                let asked =
                    by_node.entry(node.id.clone()).or_insert_with(|| (node.clone(), Vec::new()));
                asked.1.push(p.clone());
            }
        }
        let asks = by_node.into_values().map(|(node, asked)| async move {
            let mut known = Vec::new();
            for chunk in asked.chunks(MAX_REPLICA_BATCH) {
                let url = format!("http://{}/internal/v1/replicate/batch", node.addr);
                let body =
                    ReplicaBatch { step: ReplicaStep::Position, epoch, partitions: chunk.to_vec() };
                let ask = async {
                    let resp = self.client().post(&url).json(&body).send().await?;
                    resp.error_for_status()?.json::<ReplicaBatchAnswer>().await
                };
                let answer = match tokio::time::timeout(self.quorum_timeout, ask).await {
                    Ok(Ok(answer)) if answer.results.len() == chunk.len() => answer,
                    _ => break,
                };
                for (p, result) in chunk.iter().zip(answer.results) {
                    if let Some(at) = result.position {
                        let at = LogPos::new(at.last_term, at.last_seq);
                        known.push(((node.id.clone(), p.clone()), at));
                    }
                }
            }
            known
        });
        AskedAhead { epoch, known: join_all(asks).await.into_iter().flatten().collect() }
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

/// The other copies' positions a batch of take-overs asked for ahead of them
/// ([`Replication::ask_ahead`]), good at the epoch they were asked at only.
pub(super) struct AskedAhead {
    epoch: u64,
    known: HashMap<(NodeId, PartitionKey), LogPos>,
}

impl AskedAhead {
    /// The position `node` gave for `partition`, if it was asked at `epoch`.
    pub(super) fn position(
        &self,
        epoch: u64,
        node: &NodeId,
        partition: &PartitionKey,
    ) -> Option<LogPos> {
        if epoch != self.epoch {
            return None;
        }
        self.known.get(&(node.clone(), partition.clone())).copied()
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
