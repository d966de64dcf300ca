//! memring control plane: reads the cluster's state from the ring store and the shard nodes and
//! serves it to operators (`GET /v1/cluster`, used by `shardctl status` and `shardctl nodes`).
//!
//! It also admits shard nodes that register when the layout asks for it (`autopilot.rs`), runs
//! online migrations of a tenant's partitions to a named node (`migrate.rs`, one staged layout
//! change each, carried out by `reconcile.rs`), rebalances and drains (`rebalance.rs`,
//! `resize.rs`),
//! failover (`failover.rs`) and the sweep for copies no replica set needs (`janitor.rs`), and
//! verifies placement (`verify.rs`). Nothing here changes the layout except by a
//! compare-and-swap layout change.

pub mod autopilot;
pub mod copies;
pub mod failover;
pub mod failpoint;
pub mod janitor;
pub mod job;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod listings;
pub mod migrate;
pub mod placement;
pub mod rebalance;
pub mod reconcile;
pub mod replica_sets;
pub mod report;
pub mod resize;
mod service;
pub mod shard_client;
pub mod verify;
pub mod view;

use std::future::Future;
use std::sync::Arc;

use memring_common::http::{ServerOptions, serve};
use memring_common::store::RingStore;
use tokio::net::TcpListener;

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the ring store is.
    pub store: memring_common::store::StoreConfig,
    /// Leadership lease TTL: how soon a standby takes over from a dead leader.
    pub lease_ttl_secs: u64,
    /// Memories per second a migration may copy (0: unlimited). Migrations run one at a time.
    pub migration_rate: u64,
    /// With replication: a node down this long is removed from the layout so its partitions
    /// get their R copies back elsewhere (0: never; an operator removes it).
    pub replace_after_secs: u64,
    /// The cluster token its requests to shard nodes carry.
    pub internal: memring_common::internal::InternalAuthConfig,
    /// Require API keys on the admin API (admin keys; operator keys for `/v1/cluster` and the
    /// operator page). Default: on in cluster mode (etcd), off on the embedded store.
    pub auth: Option<bool>,
    /// The layout's `auto_rebalance`, set on taking leadership (`None`: left as it is).
    pub auto_rebalance: Option<bool>,
    /// How long a new node stays live before the autopilot admits it.
    pub auto_rebalance_settle: std::time::Duration,
}

use service::ControlService;

/// Runs the control plane's HTTP API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store: Arc<dyn RingStore> = memring_common::store::open(&config.store).await?;
    let cluster_mode = config.store.is_etcd();
    let credential = config.internal.credential(cluster_mode, "memring-control")?;
    let client = view::http_client(credential.clone())?;
    let keys = config
        .auth
        .unwrap_or(cluster_mode)
        .then(|| memring_common::auth::KeyCache::new(store.clone()));
    match &keys {
        Some(keys) => {
            let n = keys.reload().await.unwrap_or(0);
            tracing::info!(
                keys = n,
                "admin API requires API keys (an admin key; an operator key reads /v1/cluster)"
            );
        }
        None => {
            let warning = "AUTH IS OFF: anyone who can reach the control plane can mint keys, \
                           move tenants and read the cluster. Fine on one machine for development; \
                           set --auth true anywhere else.";
            tracing::warn!("{warning}");
            eprintln!("memring-control: {warning}");
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let key_refresher = keys.clone().map(|k| tokio::spawn(k.keep_fresh(stop_rx.clone())));
    let token_refresher = tokio::spawn(credential.keep_fresh(stop_rx));
    let service = Arc::new(ControlService {
        keys,
        store: store.clone(),
        client: client.clone(),
        migrating: Arc::new(tokio::sync::Mutex::new(())),
        leader: std::sync::atomic::AtomicBool::new(false),
        throttle: job::Throttle { memories_per_sec: config.migration_rate },
        cancel: job::Cancel::default(),
        epochs: Arc::new(view::EpochHistory::default()),
        autopilot: autopilot::Autopilot::new(config.auto_rebalance_settle),
        listings: listings::Listings::default(),
    });
    let recorder = tokio::spawn(view::record_epochs(store.clone(), service.epochs.clone()));
    // One active control plane: wait for leadership in the background (serving /health and the
    // read-only endpoints meanwhile), then finish what a previous leader started.
    let ttl = std::time::Duration::from_secs(config.lease_ttl_secs);
    let replace_after = (config.replace_after_secs > 0)
        .then(|| std::time::Duration::from_secs(config.replace_after_secs));
    let auto_rebalance = config.auto_rebalance;
    let leading = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut leadership = loop {
                match service.store.lead("control-plane", ttl).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot contend for leadership yet");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            };
            service.leader.store(true, std::sync::atomic::Ordering::Release);
            tracing::info!("this control plane is the active one");
            // A previous leader that died while taking stock left partition creation frozen.
            if let Err(e) = rebalance::unfreeze(service.store.as_ref()).await {
                tracing::error!(error = %format!("{e:#}"), "cannot lift a leftover creation freeze");
            }
            // Failover first: a resumed join waits for it to hand the joining nodes leadership.
            let jobs = job::Jobs {
                store: service.store.clone(),
                client: service.client.clone(),
                slot: service.migrating.clone(),
                throttle: service.throttle,
                cancel: service.cancel.clone(),
            };
            let failover = tokio::spawn(failover::run(
                jobs.clone(),
                failover::FailoverConfig { replace_after },
            ));
            let janitor = tokio::spawn(janitor::run(
                service.store.clone(),
                service.client.clone(),
                service.migrating.clone(),
            ));
            let resuming = {
                let service = service.clone();
                tokio::spawn(async move {
                    let _one_at_a_time = service.migrating.lock().await;
                    let (store, client) = (service.store.as_ref(), &service.client);
                    match migrate::resume(store, client, service.throttle, &service.cancel).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(jobs = n, "journaled migrations finished"),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "resuming journaled migrations failed")
                        }
                    }
                    match resize::resume(store, client, service.throttle, &service.cancel).await {
                        Ok(false) => {}
                        Ok(true) => tracing::info!("journaled layout change finished"),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "resuming the journaled layout change failed")
                        }
                    }
                })
            };
            if let Some(on) = auto_rebalance {
                match layout::set_auto_rebalance(service.store.as_ref(), on, None).await {
                    Ok(done) => tracing::info!(auto_rebalance = on, "{done}"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot set the layout's auto_rebalance")
                    }
                }
            }
            let autopilot = tokio::spawn(service.autopilot.clone().run(jobs));
            if leadership.lost.wait_for(|lost| *lost).await.is_ok() {
                // Another control plane may be active now; acting on would risk two drivers.
                tracing::error!(
                    "leadership lost; exiting so a supervisor restarts this control plane as a standby"
                );
                std::process::exit(2);
            }
            // The sender is gone (a store whose leadership cannot be lost): hold it for good.
            std::future::pending::<()>().await;
            failover.abort();
            janitor.abort();
            autopilot.abort();
            resuming.abort();
            leadership.hold.revoke().await;
        })
    };
    tracing::info!(listen = %listener.local_addr()?, store = %store.describe(), "control plane serving");
    serve(listener, service, ServerOptions::default(), shutdown).await?;
    // Dropping the task's leadership on shutdown lets a standby take over at once.
    leading.abort();
    recorder.abort();
    let _ = stop_tx.send(true);
    let _ = token_refresher.await;
    if let Some(r) = key_refresher {
        let _ = r.await;
    }
    Ok(())
}
