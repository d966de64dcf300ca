//! A write waiting for its quorum: the primary's wait for the acknowledgements of W − 1 copies
//! under its lead term, and the hand-off of a waiting write to the node that leads the
//! partition once this one no longer does.

use super::*;

impl Replication {
    /// After a committed change reaching log position `at` of `partition`: wakes the
    /// followers, then, with replication, waits until the layout's write quorum of copies has
    /// acknowledged it under its term (503 if that takes too long).
    pub async fn replicated(&self, partition: &PartitionKey, at: LogPos) -> Result<(), ApiError> {
        let (followers, needed) = self.quorum(partition);
        if needed == 0 {
            return Ok(());
        }
        let Some(mut waiting) = self.acks.register(partition, &followers, needed, at) else {
            return Ok(());
        };
        // A take-over at a newer term since this write committed may have rebased the waiting
        // writes before this one registered.
        if self.lead.taken.lock().get(partition).is_some_and(|t| t.term > at.term) {
            self.rebase_waiting(partition).await;
        }
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        let mut epochs = self.ring.subscribe();
        let mut new_layout = false;
        let held = loop {
            let ring = self.ring.ring();
            if ring.owner(partition).is_none_or(|o| o.id != self.me) {
                // Acknowledgements stop coming to a primary that no longer leads: the owner
                // now answers for the write.
                if self.acks.forget(partition, &waiting) == Some(true) {
                    break true;
                }
                break self.forward(partition, at, deadline).await;
            }
            if new_layout && self.lead_term_in(&ring, partition).is_none() {
                // A layout change moved the partition's term while this write waited: the
                // copies now check what they hold against the new term, so no acknowledgement
                // comes until this node takes the writes over at it. It does so now, as the
                // next write would (which rebases this one: `rebase_waiting`), instead of
                // waiting for such a write or for the control plane to ask.
                if let Err(e) = self.take_over(partition).await {
                    tracing::debug!(%partition, error = %e, "no take-over for a waiting write yet");
                }
            }
            let epoch = ring.epoch();
            let changed = async {
                if epochs.wait_for(|e| *e > epoch).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                held = self.acks.wait(partition, &mut waiting, deadline) => break held,
                () = changed => new_layout = true,
            }
        };
        if held {
            return Ok(());
        }
        metrics::counter!("memring_replication_quorum_timeouts_total").increment(1);
        Err(ApiError::unavailable(
            format!(
                "written on the primary of {partition}, but not yet on {} copies within {} ms; \
                 retry (writes by id are idempotent)",
                needed + 1,
                self.quorum_timeout.as_millis()
            ),
            1,
        ))
    }

    /// A write this node committed at `at` while it led `partition`, handed to the owner that
    /// leads it now (`POST /internal/v1/replicate/committed/…`, [`Replication::wait_committed`]):
    /// true once that owner's quorum holds it, false if its log no longer does or `deadline`
    /// passes first.
    pub(super) async fn forward(
        &self,
        partition: &PartitionKey,
        at: LogPos,
        deadline: tokio::time::Instant,
    ) -> bool {
        metrics::counter!("memring_replication_forwarded_writes_total").increment(1);
        loop {
            let ring = self.ring.ring();
            let Some(owner) = ring.owner(partition).filter(|o| o.id != self.me) else {
                return false;
            };
            let url = format!(
                "http://{}/internal/v1/replicate/committed/{}?epoch={}&seq={}&term={}",
                owner.addr,
                partition_path(partition),
                ring.epoch(),
                at.seq,
                at.term
            );
            let asked = tokio::time::timeout_at(deadline, self.client().post(&url).send()).await;
            match asked.map(|r| r.map(|resp| resp.status().as_u16())) {
                Ok(Ok(200)) => return true,
                // Cut from the owner's log: it never will be held.
                Ok(Ok(409)) => return false,
                Err(_) => return false,
                // Not there yet (another epoch, a take-over under way): ask again.
                Ok(_) => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(20) >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /internal/v1/replicate/committed/{p}?epoch=E&seq=S&term=T`, asked of the owner of
    /// `partition` at epoch `epoch` by a node that committed entry `at` while it led and no longer
    /// does: once this node has taken the writes over, the entry waits here as this node's own
    /// would (`rules::rebase`: for the first entry of this term). `Ok(true)` once its quorum holds
    /// it, `Ok(false)` if that takes longer than the quorum timeout, `Conflict` if this log does
    /// not hold it.
    pub async fn wait_committed(
        &self,
        partition: &PartitionKey,
        epoch: u64,
        at: LogPos,
    ) -> Result<bool, ApiError> {
        self.owner_at(partition, epoch).await?;
        self.take_over(partition).await?;
        let key = partition.clone();
        let held = self.blocking(move |s| s.term_at(&key, at.seq)).await.ok().flatten();
        if held != Some(at.term) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the log of {partition} on {} has no entry of term {} at position {}",
                    self.me, at.term, at.seq
                ),
            ));
        }
        let (followers, needed) = self.quorum(partition);
        let Some(mut waiting) = self.acks.register(partition, &followers, needed, at) else {
            return Ok(true);
        };
        self.rebase_waiting(partition).await;
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        Ok(self.acks.wait(partition, &mut waiting, deadline).await)
    }

    /// The followers of `partition` whose acknowledgements count toward a write's quorum
    /// (`Ring::voters`), and how many of them a write needs.
    pub(super) fn quorum(&self, partition: &PartitionKey) -> (Vec<NodeId>, usize) {
        let ring = self.ring.ring();
        let needed = ring.layout().write_quorum().saturating_sub(1) as usize;
        (ring.voters(partition).iter().map(|n| n.id.clone()).collect(), needed)
    }
}
