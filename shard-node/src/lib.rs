//! memring shard node: owns partitions, keeps their memories and change log in RocksDB and one
//! vector index per partition in memory (derived, rebuilt from RocksDB).
//!
//! - [`config`]: settings and flags
//! - [`record`]: what is written to disk, and its versioned encoding
//! - [`storage`]: RocksDB, partitions, writes/reads/search/tenant deletion
//! - [`index`]: the per-partition vector index (exact flat scan, then HNSW)
//! - [`keyword`]: the per-partition BM25 index over `content`
//! - [`service`]: the internal HTTP API and the ownership (epoch) check
//! - [`background`]: low-priority threads for migration work
//! - [`replicate`]: followers tailing their primaries' change logs (R > 1, or a partition a
//!   layout change is moving)
//!
//! It never talks to another shard node and never decides placement: the ring store does.

pub mod background;
pub mod config;
pub mod index;
pub mod keyword;
pub mod labels;
pub mod metadata_index;
pub mod record;
pub mod replicate;
pub mod service;
pub mod storage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use memring_common::NodeId;
use memring_common::clock::now_millis;
use memring_common::http::{ServerOptions, serve};
use memring_common::layout::LayoutNode;
use memring_common::store::{NodeRecord, RingStore, update_layout};
use memring_common::watcher::RingView;
use tokio::net::TcpListener;

pub use config::{ShardArgs, ShardConfig};

/// Runs a shard node on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: ShardConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let node = NodeId::parse(&config.node_id)?;
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    std::fs::create_dir_all(&config.data_dir)?;
    let storage_config = storage::StorageConfig {
        sync_writes: config.sync_writes,
        index: index::IndexConfig {
            flat_limit: config.flat_limit,
            expansion_search: config.expansion_search,
            threads: config.concurrency,
            ..Default::default()
        },
        build_nice: config.migration_nice,
        metadata_index_min: config.metadata_index_min,
        ..Default::default()
    };
    // Exported from the start (it counts builds up and down from here).
    metrics::gauge!("memring_index_builds_running").set(0.0);
    let dir = config.data_dir.clone();
    let node_for_open = node.clone();
    let storage = tokio::task::spawn_blocking(move || {
        storage::Storage::open(&dir, &node_for_open, storage_config)
    })
    .await??;
    let storage = Arc::new(storage);

    let store: Arc<dyn RingStore> = memring_common::store::open(&config.store).await?;
    let credential = config.internal.credential(config.store.is_etcd(), "memring-shard")?;
    let lease = store
        .register_node(
            NodeRecord {
                id: node.clone(),
                addr: advertise.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at_ms: now_millis(),
            },
            Duration::from_secs(config.lease_ttl_secs),
        )
        .await?;
    if config.joins_ring() {
        let me = LayoutNode { id: node.clone(), addr: advertise.clone() };
        let stored = update_layout(store.as_ref(), 50, |layout| match layout.node(&me.id) {
            Some(existing) if existing.addr == me.addr => None,
            _ => Some(layout.with_node(me.clone())),
        })
        .await?;
        tracing::info!(node = %node, epoch = stored.layout.epoch, "in the ring layout");
    }
    let ring = RingView::new(store.clone());
    ring.refresh().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(ring.clone().follow(stop_rx.clone()));
    let token_task = tokio::spawn(credential.clone().keep_fresh(stop_rx.clone()));
    let background =
        Arc::new(background::Background::start(config.migration_threads, config.migration_nice)?);
    let repl = Arc::new(replicate::Replication::new(
        node.clone(),
        storage.clone(),
        ring.clone(),
        credential.clone(),
        replicate::Waits {
            quorum_timeout: Duration::from_millis(config.quorum_timeout_ms),
            staleness: Duration::from_millis(config.replica_staleness_ms),
        },
        background.clone(),
        stop_rx.clone(),
    )?);
    let replicator = tokio::spawn(repl.clone().follow(stop_rx.clone()));
    let reporter = tokio::spawn(report_stats(storage.clone(), stop_rx.clone()));
    let reclaimer =
        tokio::spawn(reclaim_deleted(storage.clone(), background.clone(), stop_rx.clone()));
    let keep = replicate::trim::Keep {
        time: Duration::from_secs(config.log_keep_secs),
        entries: config.log_keep_entries,
        pins: Duration::from_secs(config.log_pin_secs),
    };
    let trimmer = tokio::spawn(trim_logs(repl.clone(), keep, stop_rx.clone()));
    let purger = tokio::spawn(purge_expired(
        node.clone(),
        storage.clone(),
        ring.clone(),
        repl.clone(),
        Duration::from_secs(config.purge_interval_secs),
        stop_rx,
    ));

    let service = Arc::new(
        service::ShardService::new(
            node.clone(),
            storage.clone(),
            ring,
            config.concurrency,
            config.body_limit_bytes,
            background,
            repl,
        )
        .with_replication_stream(config.replication_stream),
    );
    tracing::info!(node = %node, listen = %listener.local_addr()?, advertise = %advertise, data_dir = %config.data_dir.display(), "shard node serving");
    serve(listener, service, ServerOptions::default(), shutdown).await?;
    // Nothing writes any more once the followers stop: then keep the loaded graphs for the next
    // start (a crash skips this; graphs then rebuild).
    let _ = stop_tx.send(true);
    let _ = follower.await;
    let _ = replicator.await;
    let _ = purger.await;
    let _ = trimmer.await;
    let _ = reporter.await;
    let _ = reclaimer.await;
    let _ = token_task.await;
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || storage.save_graphs()).await {
        Ok(Ok(n)) => tracing::info!(
            graphs = n,
            millis = started.elapsed().as_millis() as u64,
            "graphs saved"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "graphs not saved; they will be rebuilt"),
        Err(e) => tracing::warn!(error = %e, "graphs not saved; they will be rebuilt"),
    }
    lease.revoke().await;
    tracing::info!(node = %node, "shard node stopped");
    Ok(())
}

/// Every `interval`, purges expired memories of the partitions due (the expiry index) from disk
/// (`storage/purge.rs`): the owner deletes them through the log, every copy redacts its log.
async fn purge_expired(
    node: NodeId,
    storage: Arc<storage::Storage>,
    ring: Arc<RingView>,
    repl: Arc<replicate::Replication>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // Only the partitions the expiry index names as due (`storage/purge.rs`). An owner
        // deletes only once it has taken the partition's writes over at this layout (as a
        // client's delete would); a partition it cannot take over yet stays due.
        let due = {
            let storage = storage.clone();
            match tokio::task::spawn_blocking(move || storage.due_for_purge(now_millis())).await {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TTL purge pass failed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TTL purge pass failed");
                    continue;
                }
            }
        };
        if due.is_empty() {
            continue;
        }
        let ring_now = ring.ring();
        for (p, _) in &due {
            if ring_now.owner(p).is_some_and(|o| o.id == node) {
                let _ = repl.take_over(p).await;
            }
        }
        let (storage, ring, node, repl) =
            (storage.clone(), ring.ring(), node.clone(), repl.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let (mut deleted, mut redacted) = (0, 0);
            for (p, keys) in due {
                let owner = ring.owner(&p).is_some_and(|o| o.id == node);
                let check = |last_term| repl.may_commit(&p, last_term);
                let may_commit: Option<storage::CommitCheck<'_>> = owner.then_some(&check);
                let done = storage.purge_expired(&p, now_millis(), may_commit)?;
                deleted += done.deleted;
                redacted += done.redacted;
                if !done.unfinished {
                    storage.clear_due(&keys)?;
                }
            }
            Ok::<_, memring_common::ApiError>((deleted, redacted))
        })
        .await;
        match pass {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((deleted, redacted))) => {
                metrics::counter!("memring_ttl_purged_total").increment(deleted as u64);
                tracing::info!(deleted, redacted, "expired memories purged");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "TTL purge pass failed"),
            Err(e) => tracing::warn!(error = %e, "TTL purge pass failed"),
        }
    }
}

/// Every few seconds, trims the logs of the partitions that changed once their window has
/// passed (`replicate/trim.rs`), until `stop`.
async fn trim_logs(
    repl: Arc<replicate::Replication>,
    keep: replicate::trim::Keep,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let trimmer = Arc::new(parking_lot::Mutex::new(replicate::trim::Trimmer::default()));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(TRIM_INTERVAL) => {}
        }
        let (repl, trimmer) = (repl.clone(), trimmer.clone());
        let round = tokio::task::spawn_blocking(move || {
            let mut t = trimmer.lock();
            let done = repl.trim_round(&mut t, keep);
            metrics::gauge!("memring_log_trim_waiting_partitions").set(t.waiting() as f64);
            done
        });
        match round.await {
            Ok(Ok(done)) if done.entries > 0 => {
                tracing::debug!(
                    partitions = done.partitions,
                    entries = done.entries,
                    "logs trimmed"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "log trim round failed"),
            Err(e) => tracing::warn!(error = %e, "log trim round failed"),
        }
    }
}

/// How often the logs of changed partitions are looked at for trimming.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Every few seconds, compacts the key ranges deletions left (`storage/reclaim.rs`) on the
/// low-priority threads, until `stop`.
async fn reclaim_deleted(
    storage: Arc<storage::Storage>,
    background: Arc<background::Background>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if storage.reclaim_pending() == 0 {
            continue;
        }
        let storage = storage.clone();
        match background.run(move || storage.reclaim_queued()).await {
            Ok(n) => tracing::info!(ranges = n, "space of deleted data reclaimed"),
            Err(e) => tracing::warn!(error = %e, "reclaiming deleted data failed"),
        }
    }
}

/// Publishes the node's figures (`Storage::node_stats`) as gauges every 5 s until `stop`.
async fn report_stats(
    storage: Arc<storage::Storage>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stats = storage.clone();
        if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || stats.node_stats()).await {
            metrics::gauge!("memring_shard_partitions").set(s.partitions as f64);
            metrics::gauge!("memring_shard_memories").set(s.memories as f64);
            metrics::gauge!("memring_shard_memory_bytes").set(s.bytes as f64);
            metrics::gauge!("memring_shard_loaded_indexes").set(s.loaded_indexes as f64);
            metrics::gauge!("memring_rocksdb_sst_bytes").set(s.sst_bytes as f64);
            metrics::gauge!("memring_rocksdb_pending_compaction_bytes")
                .set(s.pending_compaction_bytes as f64);
            metrics::gauge!("memring_rocksdb_write_stopped")
                .set(f64::from(u8::from(s.write_stopped)));
            metrics::gauge!("memring_rocksdb_reclaimable_bytes").set(s.reclaimable_bytes as f64);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
