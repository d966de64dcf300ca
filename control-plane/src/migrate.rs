//! Online migration of one partition from its owner to another node (DESIGN.md, "Online
//! migration"): copy → catch up → fence → drain → verify → flip → drop.
//!
//! The control plane pipes the shard nodes' versioned record batches from source to target
//! without decoding them. The target is filled as a replica is re-seeded: snapshot pages, then
//! the source's own log entries after the first page's position, so its log *is* the source's
//! and "caught up" means "at the source's position". Writes continue on the source until the
//! fence; after the fence the last log entries are drained, both sides' positions, counts and
//! checksums must match, and only then is ownership flipped by a compare-and-swap on the layout
//! (a placement override, epoch + 1).
//! Routers retry writes that meet the fence, so clients see a slower request, not an error.
//!
//! Each step is journaled in the ring store before it runs (`journal.rs`), with a failpoint
//! after it (`failpoint.rs`), so a control plane killed anywhere resumes. A migration can be
//! cancelled until its fence: the target's partial copy is dropped and the source keeps owning
//! the partition; from the fence on it finishes (the fence lasts milliseconds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::store::{RingStore, update_layout};
use memring_common::{NodeId, PartitionKey, Ring};

use crate::job::{Cancel, JobError, Throttle};
use crate::shard_client as shard;
pub use memring_common::api::Flip;
use memring_common::api::{CopyPhase, MigrationReport, MovePhase, ReplicaPosition};

/// Copy page size (memories per request).
const PAGE: usize = 500;

/// How long a catch-up may chase a source whose writes keep coming before the fence is set
/// anyway (the fence then drains what is left, with writes held back meanwhile).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// Replays the source's log after `at` onto the target: with `until_empty` until nothing is
/// left (the source is fenced), otherwise until a round brings fewer than 100 entries or
/// [`CATCH_UP_LIMIT`] has passed. Returns the position reached and how many entries.
async fn replay(
    client: &InternalClient,
    from: &LayoutNode,
    to: &LayoutNode,
    p: &PartitionKey,
    mut at: ReplicaPosition,
    until_empty: bool,
) -> anyhow::Result<(ReplicaPosition, u64)> {
    let started = Instant::now();
    let mut replayed = 0u64;
    loop {
        let answer = shard::log(client, from, p, at, 1000).await?;
        let last = answer.position()?;
        if last.last_seq == at.last_seq {
            return Ok((at, replayed));
        }
        replayed += last.last_seq - at.last_seq;
        shard::import_log(client, to, p, answer.body).await?;
        let small = last.last_seq - at.last_seq < 100;
        at = last;
        if !until_empty && (small || started.elapsed() > CATCH_UP_LIMIT) {
            if !small {
                tracing::warn!(partition = %p, "catch-up is not gaining on the source's writes; fencing anyway");
            }
            return Ok((at, replayed));
        }
    }
}

/// Copies the source's loaded HNSW graph of `p` to the target; the bytes moved (0: none).
async fn ship_index(
    client: &InternalClient,
    from: &LayoutNode,
    to: &LayoutNode,
    p: &PartitionKey,
) -> anyhow::Result<u64> {
    let graph = shard::index(client, from, p).await?;
    if graph.is_empty() {
        return Ok(0);
    }
    let len = graph.len() as u64;
    shard::put_index(client, to, p, graph).await?;
    tracing::info!(partition = %p, bytes = len, "index graph handed to the target");
    Ok(len)
}

/// Undoes a migration that has not fenced: drops the target's partial copy and the journal
/// record; the source never stopped owning the partition.
async fn abandon(
    store: &dyn RingStore,
    client: &InternalClient,
    target: &LayoutNode,
    partition: &PartitionKey,
) -> anyhow::Result<MigrationReport> {
    shard::drop_partition(client, target, partition).await?;
    store.delete_job(&crate::journal::job_id(partition)).await?;
    tracing::warn!(%partition, to = %target.id, "migration cancelled; the source still owns it");
    Err(JobError::Cancelled(format!(
        "during the migration of {partition}; the source still owns it"
    ))
    .into())
}

/// Moves `partition` from its current owner to node `to`.
pub async fn migrate_partition(
    store: &dyn RingStore,
    client: &InternalClient,
    partition: &PartitionKey,
    to: &NodeId,
    flip: Flip,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<MigrationReport> {
    let started = Instant::now();
    let layout = store.load().await?.layout;
    if layout.replication_factor > 1 {
        // Copies move by replaying the log, not by this copy protocol.
        return crate::move_set::move_set(store, client, partition, to, flip, cancel).await;
    }
    let ring = Ring::new(layout.clone());
    let from = ring.owner(partition).cloned().context("the ring has no nodes")?;
    let target =
        layout.node(to).cloned().with_context(|| format!("node {to} is not in the ring layout"))?;
    let mut report = MigrationReport {
        partition: partition.to_string(),
        from: from.id.to_string(),
        to: to.to_string(),
        copied: 0,
        replayed: 0,
        fenced_ms: 0,
        count: 0,
        epoch: layout.epoch,
        took_ms: 0,
        index_bytes: 0,
    };
    if from.id == *to {
        return Ok(report);
    }
    let (from_name, to_name) = (from.id.to_string(), to.to_string());
    // (copied, total), read by every journal write; atomics keep the future Send.
    let progress = (AtomicU64::new(0), AtomicU64::new(0));
    // Journals a phase before it runs, then passes its failpoint.
    let (from_ref, to_ref) = (from_name.as_str(), to_name.as_str());
    let journal = |phase: CopyPhase| {
        let now = (progress.0.load(Ordering::Relaxed), progress.1.load(Ordering::Relaxed));
        async move {
            crate::journal::record(store, partition, from_ref, to_ref, flip, phase.into(), now)
                .await?;
            crate::failpoint::hit(&format!("migrate.{}", MovePhase::from(phase))).await
        }
    };
    journal(CopyPhase::Copy).await?;
    tracing::info!(%partition, from = %from.id, to = %to, "migration: copy");
    // Start from a clean target: it does not own the partition, so whatever it has is a leftover.
    shard::reseed(client, &target, partition).await?;
    // 1. copy, page by page; the first page's log position is where the copy's log starts.
    let mut after: Option<String> = None;
    let mut start = None;
    let copy_started = Instant::now();
    let mut reported = Instant::now();
    loop {
        if cancel.is_set() {
            return abandon(store, client, &target, partition).await;
        }
        let page = shard::export(client, &from, partition, after.as_deref(), PAGE).await?;
        if start.is_none() {
            start = Some(page.position()?);
        }
        let next = page.header_text(shard::NEXT_AFTER_HEADER);
        let (count, total) = (
            page.header_u64(shard::PAGE_COUNT_HEADER)?,
            page.header_u64(shard::PAGE_TOTAL_HEADER)?,
        );
        shard::import(client, &target, partition, page.body).await?;
        report.copied += count;
        progress.0.store(report.copied, Ordering::Relaxed);
        progress.1.store(total, Ordering::Relaxed);
        if reported.elapsed() > Duration::from_secs(2) {
            journal(CopyPhase::Copy).await?;
            reported = Instant::now();
        }
        if throttle.memories_per_sec > 0 {
            // Stay at or under the rate: sleep until the copied count is due.
            let due =
                Duration::from_secs_f64(report.copied as f64 / throttle.memories_per_sec as f64);
            if let Some(wait) = due.checked_sub(copy_started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    // 2. catch up while the source keeps taking writes.
    journal(CopyPhase::CatchUp).await?;
    let start = start.unwrap_or_default();
    shard::place(client, &target, partition, start).await?;
    let (at, n) = replay(client, &from, &target, partition, start, false).await?;
    report.replayed += n;
    // 2b. a hot partition keeps answering searches after the flip: hand over the source's
    // graph (it may be ahead of the copy; the catch-up from `at` replays over it), then catch
    // up once more so the fence has little left to drain.
    report.index_bytes = ship_index(client, &from, &target, partition).await?;
    let (at, n) = replay(client, &from, &target, partition, at, false).await?;
    report.replayed += n;
    if cancel.is_set() {
        return abandon(store, client, &target, partition).await;
    }
    // 3. fence, drain the last entries, verify.
    journal(CopyPhase::Fenced).await?;
    let fenced_at = Instant::now();
    shard::fence(client, &from, partition).await?;
    let result = async {
        let (_, n) = replay(client, &from, &target, partition, at, true).await?;
        report.replayed += n;
        journal(CopyPhase::Drained).await?;
        let (a, b) = (
            shard::checksum(client, &from, partition, false).await?,
            shard::checksum(client, &target, partition, false).await?,
        );
        if a.last_seq != b.last_seq || a.count != b.count || a.checksum != b.checksum {
            bail!(
                "verification failed for {partition}: source at log position {} with {} \
                 memories / {}, target at {} with {} / {}",
                a.last_seq,
                a.count,
                a.checksum,
                b.last_seq,
                b.count,
                b.checksum
            );
        }
        report.count = b.count;
        // 4. flip ownership to the target (epoch + 1, compare-and-swap).
        let stored = update_layout(store, 20, |l| {
            let mut next = l.clone();
            next.epoch += 1;
            crate::placement::place(&mut next, partition, to, flip);
            Some(next)
        })
        .await?;
        report.epoch = stored.layout.epoch;
        journal(CopyPhase::Flipped).await
    }
    .await;
    if let Err(e) = result {
        // Nothing was flipped: the source stays the owner; let it take writes again.
        let _ = shard::unfence(client, &from, partition).await;
        return Err(
            e.context(format!("migration of {partition} aborted; the source still owns it"))
        );
    }
    report.fenced_ms = fenced_at.elapsed().as_millis() as u64;
    // 5. the source's copy goes once it has seen the new epoch (it refuses the partition then)
    // and the target holds its last entry, by the one rule for dropping a copy.
    crate::copies::drop_leaver(store, client, partition, &from.id, crate::copies::PATIENCE).await?;
    store.delete_job(&crate::journal::job_id(partition)).await?;
    report.took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(%partition, from = %from.id, to = %to, count = report.count, fenced_ms = report.fenced_ms, "migration done");
    Ok(report)
}

/// Finishes every journaled migration. Called at start-up, before serving.
pub async fn resume(
    store: &dyn RingStore,
    client: &InternalClient,
    throttle: Throttle,
    cancel: &Cancel,
) -> anyhow::Result<usize> {
    let jobs = crate::journal::pending(store).await?;
    for job in &jobs {
        let partition: PartitionKey = job.partition.parse()?;
        let to = NodeId::parse(&job.to)?;
        let layout = store.load().await?.layout;
        let ring = Ring::new(layout.clone());
        tracing::warn!(partition = %partition, from = %job.from, to = %to, phase = %job.phase, "resuming migration");
        if layout.node(&to).is_none() {
            // A rebalance that never staged its layout: nothing moved, nothing to finish.
            store.delete_job(&crate::journal::job_id(&partition)).await?;
            continue;
        }
        if layout.replication_factor > 1 {
            // The layout records how far a replicated move got; running it again finishes it
            // (or, cancelled before the target leads, drops the joining copies).
            migrate_partition(store, client, &partition, &to, job.flip, throttle, cancel).await?;
            continue;
        }
        if ring.owner(&partition).map(|o| &o.id) == Some(&to) {
            // The flip happened: only the source copy is left to drop.
            if let Ok(from) = NodeId::parse(&job.from)
                && from != to
            {
                crate::copies::drop_leaver(
                    store,
                    client,
                    &partition,
                    &from,
                    crate::copies::PATIENCE,
                )
                .await?;
            }
            store.delete_job(&crate::journal::job_id(&partition)).await?;
            continue;
        }
        if let Some(owner) = ring.owner(&partition) {
            // Not flipped: let the source take writes again, then start over.
            shard::unfence(client, owner, &partition).await?;
        }
        if cancel.is_set() {
            // Not started again: drop the record; the source still owns the partition.
            if let Some(target) = layout.node(&to) {
                shard::drop_partition(client, target, &partition).await?;
            }
            store.delete_job(&crate::journal::job_id(&partition)).await?;
            continue;
        }
        migrate_partition(store, client, &partition, &to, job.flip, throttle, cancel).await?;
    }
    Ok(jobs.len())
}
