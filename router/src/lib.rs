//! memring router: the stateless front door of the public API.
//!
//! - [`config`]: settings and flags
//! - [`service`]: routes of API v1, validation, fan-out and merge
//! - [`forward`]: the pooled client to shard nodes, the 421 retry rule, retries of reads
//! - [`breaker`]: a circuit breaker per shard node
//!
//! It holds no data; it must never decide placement on its own (the ring does) nor serve a
//! request it could not validate.

pub mod breaker;
pub mod config;
pub mod forward;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use memring_common::http::{ServerOptions, serve};
use memring_common::store::RingStore;
use memring_common::watcher::RingView;
use tokio::net::TcpListener;

pub use config::{RouterArgs, RouterConfig};

/// Runs a router on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: RouterConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let store: Arc<dyn RingStore> = memring_common::store::open(&config.store).await?;
    let ring = RingView::new(store);
    if let Err(e) = ring.refresh().await {
        tracing::warn!(error = %e, "ring store not readable yet; will keep trying");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(ring.clone().follow(stop_rx));
    let service = Arc::new(service::RouterService::new(
        forward::Forwarder::new(ring, config.replica_reads)?,
        config,
    ));
    tracing::info!(listen = %listener.local_addr()?, "router serving the API");
    serve(listener, service, ServerOptions::default(), shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = follower.await;
    Ok(())
}
