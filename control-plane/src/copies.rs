//! Dropping a copy of a partition: the one rule every path that deletes a copy follows — the
//! janitor's sweep (`janitor.rs`), a replicated rebalance's or drain's settle (`resize.rs`), and
//! a move's leavers and the joiners of a move cancelled early (`migrate.rs`; a new copy
//! continues the old owner's log, so it holds the leaver's last entry).
//!
//! A node's copy of partition P is dropped only when:
//! - the node is not among P's holders in the layout (its replica set and extra copies, and
//!   while a replicated join or drain settles the retiring copies it is still asked for:
//!   `Ring::keeps`), and
//! - P's owner and every other live member of its set hold an entry of the copy's last term at
//!   the copy's last log position (an empty copy holds nothing to lose). Logs with an entry of
//!   the same term at a position hold the same entries up to it (`shard-node/src/replicate.rs`),
//!   so the set then has every entry the copy has. A copy of another lineage (a partition left
//!   on a node by a layout edited by hand, say) does not match and is kept for an operator. A
//!   member whose log is trimmed past that position can no longer show the entry: it counts
//!   when its log starts at a term at least the copy's last (its trimmed entries were held by a
//!   quorum, and every acknowledged write is in the owner's log).
//!
//! The node deletes the copy only once it has seen the layout that gives it none
//! (`drop_copies`), so no follower round of an older layout writes it again.

use std::time::{Duration, Instant};

use futures::future::join_all;
use memring_common::api::{PartitionStats, ReplicaPosition, ReplicaStep};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::store::RingStore;
use memring_common::{NodeId, PartitionKey, Ring};

use crate::shard_client as shard;

/// How long a job that drops copies waits for their sets to hold what they hold (the janitor
/// does not wait: it sweeps again).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What became of a copy [`drop_when_covered`] looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped.
    Dropped,
    /// Kept: still a holder, or not covered in time.
    Kept,
    /// Kept: the layout changed while it was checked (every later check at the old layout
    /// would end the same way).
    LayoutChanged,
}

/// What a node's copy of a partition holds, as far as dropping it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its last log position.
    pub last_seq: u64,
    /// The term of its entry there.
    pub last_term: u64,
    /// It holds no memory and no log entry.
    pub empty: bool,
}

impl From<&PartitionStats> for Held {
    fn from(s: &PartitionStats) -> Self {
        Held {
            last_seq: s.last_seq,
            last_term: s.last_term,
            empty: s.last_seq == 0 && s.count == 0,
        }
    }
}

impl From<ReplicaPosition> for Held {
    fn from(p: ReplicaPosition) -> Self {
        // Position 0 is a copy that holds nothing (`ReplicaPosition::last_seq`).
        Held { last_seq: p.last_seq, last_term: p.last_term, empty: p.last_seq == 0 }
    }
}

/// Whether `ring`'s set for `p` holds everything a copy holding `held` has (see the module
/// notes): its owner and every other live member hold the copy's last entry.
pub async fn covered(
    client: &InternalClient,
    ring: &Ring,
    p: &PartitionKey,
    held: Held,
) -> anyhow::Result<bool> {
    let verdicts = covered_many(client, ring, &[(p.clone(), held)]).await?;
    Ok(verdicts.first().copied().unwrap_or(false))
}

/// [`covered`] for each of `copies`, in order. Each live member node is asked once, for the
/// positions of all the partitions it is asked about (`shard::positions_of`), and each position
/// is read by `shard::holds_entry`; a member that does not answer does not cover.
pub async fn covered_many(
    client: &InternalClient,
    ring: &Ring,
    copies: &[(PartitionKey, Held)],
) -> anyhow::Result<Vec<bool>> {
    let live = |n: &LayoutNode| !ring.layout().is_down(&n.id);
    let mut verdicts = vec![true; copies.len()];
    let mut asks = Vec::new();
    for (i, (p, held)) in copies.iter().enumerate() {
        let Some(owner) = ring.owner(p).filter(|o| live(o)) else {
            verdicts[i] = false;
            continue;
        };
        if held.last_seq == 0 {
            verdicts[i] = held.empty;
            continue;
        }
        let set = ring.replica_set(p);
        let members = set.iter().filter(|m| live(m)).map(|m| ((*m).clone(), i));
        asks.extend(
            members.chain((!set.iter().any(|m| m.id == owner.id)).then(|| (owner.clone(), i))),
        );
    }
    let pairs: Vec<(LayoutNode, PartitionKey)> =
        asks.iter().map(|(member, i)| (member.clone(), copies[*i].0.clone())).collect();
    let ends = shard::positions_of(client, ring.epoch(), ReplicaStep::Position, &pairs).await;
    for ((member, p), (_, i)) in pairs.iter().zip(&asks) {
        let held = copies[*i].1;
        let entry = ReplicaPosition { last_seq: held.last_seq, last_term: held.last_term };
        let holds = match ends.get(&(member.id.clone(), p.clone())) {
            Some(at) => shard::holds_entry(client, member, p, *at, entry).await?,
            // A member that did not answer does not show it.
            None => false,
        };
        verdicts[*i] &= holds;
    }
    Ok(verdicts)
}

/// Drops `node`'s copy of `p` (holding `held`) by the rule of the module notes, under `ring`
/// (the layout `store` holds now), waiting up to `patience` for the set to hold what the copy
/// holds (members a few entries behind under write load catch up in moments). A copy kept —
/// not covered in time, or the layout changed meanwhile — is left for the janitor, which tries
/// again at its next sweep.
pub async fn drop_when_covered(
    store: &dyn RingStore,
    client: &InternalClient,
    ring: &Ring,
    node: &LayoutNode,
    p: &PartitionKey,
    held: Held,
    patience: Duration,
) -> anyhow::Result<Outcome> {
    if ring.keeps(p, &node.id) {
        return Ok(Outcome::Kept);
    }
    let done = drop_covered(store, client, ring, node, vec![(p.clone(), held)], patience).await?;
    Ok(match done {
        Batch { layout_changed: true, .. } => Outcome::LayoutChanged,
        Batch { dropped: 1, .. } => Outcome::Dropped,
        _ => Outcome::Kept,
    })
}

/// What [`drop_outside`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Copies dropped.
    pub dropped: usize,
    /// Copies outside their holders left in place: not covered within the patience.
    pub kept: usize,
    /// Nodes that could not be listed (their copies were not looked at).
    pub unlisted: Vec<NodeId>,
    /// The layout changed while it looked: it stopped there (every later check at the old
    /// layout would end the same way).
    pub layout_changed: bool,
}

impl Swept {
    /// Whether every node was listed and no copy outside its holders is left on them.
    pub fn complete(&self) -> bool {
        self.kept == 0 && self.unlisted.is_empty() && !self.layout_changed
    }
}

/// Drops every copy held on `nodes` outside its partition's holders in `ring`, by the rule of
/// the module notes, waiting up to `patience` for the sets to hold what the copies hold: the
/// janitor's sweep (no patience, every live node) and the end of a join or drain (the nodes it
/// took out too). Lists each node once, and works through its copies [`DROP_CHUNK`] at a time:
/// one batched check of the sets ([`covered_many`]), one look at the layout, then the drops,
/// [`DROPS_AT_ONCE`] at a time, once the node has seen the layout.
pub async fn drop_outside(
    store: &dyn RingStore,
    client: &InternalClient,
    ring: &Ring,
    nodes: &[LayoutNode],
    patience: Duration,
) -> anyhow::Result<Swept> {
    let mut swept = Swept::default();
    for node in nodes {
        let Ok(list) = shard::partitions(client, &node.addr, None).await else {
            swept.unlisted.push(node.id.clone());
            continue;
        };
        let outside: Vec<(PartitionKey, Held)> = list
            .partitions
            .iter()
            .filter(|c| !ring.keeps(&c.partition, &node.id))
            .map(|c| (c.partition.clone(), Held::from(c)))
            .collect();
        for chunk in outside.chunks(DROP_CHUNK) {
            let done = drop_covered(store, client, ring, node, chunk.to_vec(), patience).await?;
            swept.dropped += done.dropped;
            swept.kept += done.kept;
            if done.layout_changed {
                swept.layout_changed = true;
                return Ok(swept);
            }
        }
    }
    Ok(swept)
}

/// What became of some copies of one node [`drop_covered`] looked at.
#[derive(Debug, Default)]
struct Batch {
    dropped: usize,
    kept: usize,
    /// The layout changed after they were checked: none was dropped.
    layout_changed: bool,
}

/// Drops those of `node`'s `copies` (each outside its partition's holders in `ring`) that
/// their sets hold, waiting up to `patience` for the sets to hold what they hold; the others
/// are kept for the janitor. Checks the layout is still `ring`'s once, before the drops.
async fn drop_covered(
    store: &dyn RingStore,
    client: &InternalClient,
    ring: &Ring,
    node: &LayoutNode,
    copies: Vec<(PartitionKey, Held)>,
    patience: Duration,
) -> anyhow::Result<Batch> {
    let deadline = Instant::now() + patience;
    let (mut covered, mut left) = (Vec::new(), copies);
    loop {
        let verdicts = covered_many(client, ring, &left).await?;
        let (yes, no): (Vec<_>, Vec<_>) =
            left.into_iter().zip(verdicts).partition(|(_, covered)| *covered);
        covered.extend(yes.into_iter().map(|(copy, _)| copy));
        left = no.into_iter().map(|(copy, _)| copy).collect();
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (p, held) in &left {
        tracing::warn!(partition = %p, node = %node.id, position = held.last_seq, term = held.last_term,
            "copy outside its replica set kept: the set does not hold its last entry");
    }
    let mut done = Batch { kept: left.len(), ..Batch::default() };
    if covered.is_empty() {
        return Ok(done);
    }
    if store.load().await?.layout.epoch != ring.epoch() {
        // The sets checked may not be the sets now.
        done.layout_changed = true;
        return Ok(done);
    }
    done.dropped = drop_copies(client, node, &covered, ring.epoch()).await?;
    Ok(done)
}

/// How many copies of a node [`drop_outside`] checks and drops together.
const DROP_CHUNK: usize = 1024;

/// How many copies of a node are deleted at once.
const DROPS_AT_ONCE: usize = 16;

/// Deletes `node`'s `copies`, checked covered at layout `epoch`, once the node has seen that
/// epoch (so no follower round of an older layout writes them again). Returns how many.
async fn drop_copies(
    client: &InternalClient,
    node: &LayoutNode,
    copies: &[(PartitionKey, Held)],
    epoch: u64,
) -> anyhow::Result<usize> {
    let ps: Vec<PartitionKey> = copies.iter().map(|(p, _)| p.clone()).collect();
    shard::batch(client, node, ReplicaStep::Position, epoch, &ps).await?;
    for batch in copies.chunks(DROPS_AT_ONCE) {
        let drops = batch.iter().map(|(p, _)| shard::drop_partition(client, node, p));
        for ((p, held), dropped) in batch.iter().zip(join_all(drops).await) {
            dropped?;
            tracing::debug!(partition = %p, node = %node.id, position = held.last_seq, "copy outside its replica set dropped");
        }
        metrics::counter!("memring_control_copies_dropped_total").increment(batch.len() as u64);
    }
    if !copies.is_empty() {
        tracing::info!(node = %node.id, dropped = copies.len(), epoch, "copies outside their replica sets dropped");
    }
    Ok(copies.len())
}

/// Drops node `id`'s copy of `partition`, no longer among its holders in the layout `store`
/// holds now, by the rule of the module notes; a layout change meanwhile starts the check over
/// at the new layout. A copy the set does not cover within `patience` is left for the janitor.
pub async fn drop_leaver(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    id: &NodeId,
    patience: Duration,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + patience;
    loop {
        let ring = Ring::new(store.load().await?.layout);
        let Some(node) = ring.layout().node(id).cloned() else { return Ok(Outcome::Kept) };
        let held = shard::held(client, &node, partition, ring.epoch()).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        match drop_when_covered(store, client, &ring, &node, partition, held.into(), left).await? {
            Outcome::LayoutChanged if !left.is_zero() => continue,
            outcome => return Ok(outcome),
        }
    }
}
