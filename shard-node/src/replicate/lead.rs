//! Leading a partition: taking its writes over at a new epoch (the log made the most
//! up-to-date of R − W other copies' and the term's first entry placed after it), handing them
//! over before the control plane makes another node lead, rebasing the writes that wait across
//! a layout change, and the rule every append to a led partition's log is checked against.

use super::*;

/// The partitions this node has taken the writes of over, and the rule for appending to their
/// logs (shared with the blocking tasks that append).
pub(super) struct Leads {
    pub(super) me: NodeId,
    pub(super) ring: Arc<RingView>,
    /// Partitions whose writes this node has taken over.
    pub(super) taken: Mutex<HashMap<PartitionKey, TakenOver>>,
    /// Partitions this node is handing over to another owner: no write commits while the
    /// layout is still at the epoch (the hand-over's flip ends it) and until the instant.
    pub(super) handing: Mutex<HashMap<PartitionKey, (u64, Instant)>>,
}

impl Leads {
    /// See [`Replication::may_commit`].
    pub(super) fn may_commit(
        &self,
        partition: &PartitionKey,
        last_term: u64,
    ) -> Result<u64, ApiError> {
        let ring = self.ring.ring();
        owns(&ring, &self.me, partition)?;
        let replicated = ring.replicated(partition);
        if let Some(&(epoch, until)) = self.handing.lock().get(partition)
            && epoch == ring.epoch()
            && Instant::now() < until
        {
            return Err(ApiError::new(
                ErrorCode::PartitionMoving,
                format!("{partition} is being handed over to its next owner; retry in a moment"),
            )
            .with_retry_after(1));
        }
        let taken = self.taken.lock().get(partition).map(|t| t.term);
        let term = ring.term(partition);
        rules::commit_term(replicated, term, taken, last_term).map_err(|why| {
            let message = match why {
                Refusal::NotTakenOver => format!(
                    "the layout moved {partition} to term {term} (epoch {}) while this write \
                     waited; retry",
                    ring.epoch()
                ),
                Refusal::StaleLayout => format!(
                    "{partition} has entries of term {last_term}, newer than its term in this \
                     node's layout ({term}, epoch {}); retry",
                    ring.epoch()
                ),
            };
            ApiError::new(ErrorCode::PartitionMoving, message).with_retry_after(1)
        })
    }
}

/// How long a hand-over holds an owner's writes at most ([`Replication::hand_over`]): the
/// control plane flips the layout right after, and routers retry a moving partition for 5 s.
pub const HAND_OVER_HOLD: Duration = Duration::from_secs(3);

/// A take-over of a partition's writes: the partition's term it happened at (`Ring::term`;
/// the term of the entries this node appends from then on) and the last position of its log
/// then (the term's first entry comes right after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TakenOver {
    pub(super) term: u64,
    pub(super) base: u64,
}

impl Replication {
    /// The term this node leads `partition` at: its term in the current layout
    /// (`Ring::term`), if it has taken it over at that term.
    pub(super) fn lead_term(&self, partition: &PartitionKey) -> Option<u64> {
        self.lead_term_in(&self.ring.ring(), partition)
    }

    /// [`Replication::lead_term`] by `ring`, a layout the caller has in hand.
    pub(super) fn lead_term_in(&self, ring: &Ring, partition: &PartitionKey) -> Option<u64> {
        let taken = self.lead.taken.lock().get(partition).map(|t| t.term)?;
        (taken == ring.term(partition)).then_some(taken)
    }

    /// Before this node's first write to `partition` (or read as its owner) at its current
    /// term: makes its log the most up-to-date of its own and R − W other live copies' (see
    /// the module notes). 503 while those copies cannot be asked or the log cannot be adopted.
    /// A layout change that leaves the partition's term as it was keeps the take-over.
    pub async fn take_over(&self, partition: &PartitionKey) -> Result<(), ApiError> {
        self.take_over_with(partition, None).await
    }

    /// [`Self::take_over`], with the positions `ahead` of it asked for many partitions at once
    /// (`replicate/batch.rs`): a copy's position asked there, at this layout's epoch, is one
    /// this take-over would have asked for (the same question, once the copy has seen the
    /// epoch), so it is not asked again; the other copies are asked here.
    pub(super) async fn take_over_with(
        &self,
        partition: &PartitionKey,
        ahead: Option<&batch::AskedAhead>,
    ) -> Result<(), ApiError> {
        let ring = self.ring.ring();
        let (epoch, term) = (ring.epoch(), ring.term(partition));
        let taken_now = || self.lead.taken.lock().get(partition).is_some_and(|t| t.term == term);
        if !ring.replicated(partition) || taken_now() {
            return Ok(());
        }
        let lock = self.taking.lock().entry(partition.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        if taken_now() {
            return Ok(());
        }
        owns(&ring, &self.me, partition)?;
        // While a replicated layout change settles, the copies it took out of the set are
        // asked as well (`Ring::retiring`): a write its old set acknowledged may be on one of
        // them only. Hearing all but W of every copy, old and new, meets any quorum of either.
        let retiring = ring.retiring(partition);
        let needed = rules::take_over_peers(
            ring.holders(partition).len() + retiring.len(),
            ring.layout().write_quorum() as usize,
        );
        // The live copies first; if too few answer, the ones marked down as well: a copy
        // marked down that is back (not yet re-admitted) can answer, and any R − W answers
        // make the quorums meet, whoever gives them. Its own re-admission waits for this
        // take-over, so it must be asked when it is the only other copy left.
        let (live, down): (Vec<&LayoutNode>, Vec<&LayoutNode>) = ring
            .followers(partition)
            .into_iter()
            .chain(retiring)
            .partition(|n| !ring.layout().is_down(&n.id));
        let (mut answered, mut ask) = (Vec::new(), Vec::new());
        for peer in &live {
            match ahead.and_then(|a| a.position(epoch, &peer.id, partition)) {
                Some(at) => answered.push(((*peer).clone(), at)),
                None => ask.push(*peer),
            }
        }
        answered.extend(self.positions(partition, epoch, &ask).await);
        if answered.len() < needed {
            answered.extend(self.positions(partition, epoch, &down).await);
        }
        if answered.len() < needed {
            return Err(ApiError::unavailable(
                format!(
                    "{} is taking over the writes of {partition} and needs the log positions of \
                     {needed} other copies; {} answered; retry shortly",
                    self.me,
                    answered.len()
                ),
                1,
            ));
        }
        let mine = self.last_pos(partition).await?;
        if let Some((peer, best)) = rules::adopt_from(mine, answered) {
            if !rules::may_adopt(term, best) {
                return Err(ApiError::unavailable(
                    format!(
                        "{} holds {partition} up to term {}, newer than its term in this node's \
                         layout ({term}, epoch {epoch}); retry once it has caught up",
                        peer.id, best.term
                    ),
                    1,
                ));
            }
            tracing::info!(%partition, from = %peer.id, mine_term = mine.term, mine = mine.seq, theirs_term = best.term, theirs = best.seq, "taking over: adopting a more up-to-date copy's log");
            let (me, p) = (self.me.clone(), partition.clone());
            let allowed = move |ring: &Ring| {
                owns(ring, &me, &p)?;
                same_term(ring, &p, term)
            };
            let reached = self.sync_from(&peer, partition, None, best.seq, allowed).await?;
            if reached < best {
                // The copy changed while we pulled: ask everyone again.
                return Err(ApiError::unavailable(
                    format!(
                        "{} could adopt {partition} only to {}/{} of {}/{} from {}; retry",
                        self.me, reached.term, reached.seq, best.term, best.seq, peer.id
                    ),
                    1,
                ));
            }
        } else if mine == LogPos::default() {
            // A copy dropped for a re-seed and no copy heard holds anything: it starts empty.
            let key = partition.clone();
            if self.blocking(move |s| s.is_reseeding(&key)).await? {
                let key = partition.clone();
                self.blocking(move |s| s.drop_partition(&key)).await?;
            }
        }
        // No entry is appended here before `taken` is set: the new term starts after `base`.
        let base = self.last_pos(partition).await?.seq;
        self.lead.taken.lock().insert(partition.clone(), TakenOver { term, base });
        metrics::counter!("memring_replication_takeovers_total").increment(1);
        self.rebase_waiting(partition).await;
        Ok(())
    }

    /// `POST /internal/v1/replicate/hand-over/{p}?epoch=E`, asked of the owner right before
    /// the control plane makes another node lead `partition`: from now until the layout leaves
    /// epoch `epoch` (or [`HAND_OVER_HOLD`] passes) no write commits here — writes meet a
    /// retryable `partition_moving`, which routers retry — and the writes already committed get
    /// their quorum (or time out) before this answers. No write is then left waiting on a
    /// primary that no longer leads, where acknowledgements stop coming. Returns the owner's
    /// position.
    pub async fn hand_over(
        &self,
        partition: &PartitionKey,
        epoch: u64,
    ) -> Result<LogPos, ApiError> {
        let mut done = self.hand_over_many(std::slice::from_ref(partition), epoch).await?;
        done.pop().unwrap_or_else(|| Err(ApiError::internal("a hand-over gave no answer")))
    }

    /// [`Self::hand_over`] for each of `partitions` (`replicate/batch.rs`), in order: every hold
    /// is placed first, then every position is read in one storage call, then the committed
    /// writes' quorums are waited for together, so handing over thousands of partitions holds
    /// their writes back about as long as handing over one.
    pub async fn hand_over_many(
        &self,
        partitions: &[PartitionKey],
        epoch: u64,
    ) -> Result<Vec<Result<LogPos, ApiError>>, ApiError> {
        self.ring.reach(epoch).await?;
        let ring = self.ring.ring();
        same_epoch(&ring, epoch)?;
        let until = Instant::now() + HAND_OVER_HOLD;
        let owned: Vec<Result<(), ApiError>> =
            partitions.iter().map(|p| owns(&ring, &self.me, p)).collect();
        {
            let mut handing = self.lead.handing.lock();
            for (p, _) in partitions.iter().zip(&owned).filter(|(_, o)| o.is_ok()) {
                handing.insert(p.clone(), (epoch, until));
            }
        }
        // Nothing commits after this: a write that passed its check before the hold holds the
        // partition's lock until its batch is written, which these reads wait for.
        let keys = partitions.to_vec();
        let read = self
            .blocking(move |s| Ok(keys.iter().map(|p| s.last_pos(p)).collect::<Vec<_>>()))
            .await?;
        // Every write committed is held by its quorum once the last one is (log matching); an
        // older term's last entry means none of this term, and rebased writes wait for the
        // start of the term, so then the waiting writes are watched instead.
        let settled = partitions.iter().zip(owned).zip(read).map(|((p, owned), at)| async move {
            owned?;
            let at = at?;
            let (followers, needed) = self.quorum(p);
            if self.lead_term(p) == Some(at.term) {
                self.acks.wait_quorum(p, &followers, needed, at, self.quorum_timeout).await;
            } else {
                let deadline = Instant::now() + self.quorum_timeout;
                while self.acks.waits(p) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok(at)
        });
        Ok(futures::future::join_all(settled).await)
    }

    /// After a take-over of `partition`: its writes still waiting from an older term either
    /// wait for the first entry of the new term, if the log still holds them, or fail
    /// (`rules::rebase`); a start of the term is appended for them when no write supplies it.
    pub(super) async fn rebase_waiting(&self, partition: &PartitionKey) {
        let Some(taken) = self.lead.taken.lock().get(partition).copied() else { return };
        let older = self.acks.older(partition, taken.term);
        if older.is_empty() {
            return;
        }
        let (key, seqs) =
            (partition.clone(), older.iter().map(|(_, at)| at.seq).collect::<Vec<_>>());
        // A term not read (a trimmed position, an error) counts as cut: failing is safe.
        let held = self
            .blocking(move |s| {
                Ok(seqs.iter().map(|seq| s.term_at(&key, *seq).ok().flatten()).collect())
            })
            .await
            .unwrap_or_else(|_: ApiError| vec![None; older.len()]);
        let base = LogPos::new(taken.term, taken.base);
        let verdicts = older
            .into_iter()
            .zip(held)
            .map(|((id, at), held)| (id, at, rules::rebase(at, held, base)))
            .collect();
        if !self.acks.rebase(partition, verdicts) {
            return;
        }
        metrics::counter!("memring_replication_rebased_writes_total").increment(1);
        let (lead, key) = (self.lead.clone(), partition.clone());
        let started = self
            .blocking(move |s| {
                let check = |last_term| lead.may_commit(&key, last_term);
                s.start_term(&key, memring_common::clock::now_millis(), &check)
            })
            .await;
        match started {
            Ok(_) => {}
            // The layout moved on: the next take-over rebases them again, or they time out.
            Err(e) => {
                tracing::debug!(%partition, error = %e, "no start of term for waiting writes")
            }
        }
    }

    /// The log positions `peers` give for a take-over of `partition` at `epoch` (those that
    /// answer within the quorum timeout).
    pub(super) async fn positions(
        &self,
        partition: &PartitionKey,
        epoch: u64,
        peers: &[&LayoutNode],
    ) -> Vec<(LayoutNode, LogPos)> {
        let asked = futures::future::join_all(peers.iter().map(|peer| async move {
            let url = format!(
                "http://{}/internal/v1/replicate/position/{}?epoch={epoch}",
                peer.addr,
                partition_path(partition)
            );
            let ask = async {
                let resp = self.client().post(&url).send().await?.error_for_status()?;
                resp.json::<ReplicaPosition>().await
            };
            let answer = tokio::time::timeout(self.quorum_timeout, ask).await;
            answer
                .ok()
                .and_then(Result::ok)
                .map(|pos| ((*peer).clone(), LogPos::new(pos.last_term, pos.last_seq)))
        }))
        .await;
        asked.into_iter().flatten().collect()
    }

    /// Checked under the partition's write lock right before a write or delete commits here,
    /// given the term of the partition's last log entry: this node owns `partition` in its
    /// current layout and, with replication, has taken its writes over at that layout's epoch,
    /// which is the term of the new entries. A position this node reported to a new owner
    /// (under the same lock, at a newer epoch) can therefore never be followed by an entry of
    /// its own.
    pub fn may_commit(&self, partition: &PartitionKey, last_term: u64) -> Result<u64, ApiError> {
        self.lead.may_commit(partition, last_term)
    }
}
