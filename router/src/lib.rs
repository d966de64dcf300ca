//! memring router: the stateless front door of the public API.
//!
//! - [`config`]: settings and flags
//! - [`service`]: routes of API v1, validation, fan-out and merge
//! - [`fusion`]: hybrid search's one ranking from the vector and keyword lists
//! - [`forward`]: the pooled client to shard nodes, the 421 retry rule, retries of reads
//! - [`breaker`]: a circuit breaker per shard node
//! - [`embed`]: the embedder (built-in model, or an OpenAI-compatible service)
//!
//! It holds no data; it must never decide placement on its own (the ring does) nor serve a
//! request it could not validate.

pub mod breaker;
pub mod config;
pub mod embed;
pub mod forward;
pub mod fusion;
pub mod limits;
pub mod openapi;
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
    // Read the certificate first: a bad file stops the start with its name.
    let tls = config.tls.acceptor()?;
    let store: Arc<dyn RingStore> = memring_common::store::open(&config.store).await?;
    let auth = config.auth.unwrap_or(config.store.is_etcd());
    let keys = auth.then(|| memring_common::auth::KeyCache::new(store.clone()));
    match &keys {
        Some(keys) => {
            let n = keys.reload().await.unwrap_or(0);
            tracing::info!(keys = n, "API keys required (Authorization: Bearer <key>)");
        }
        None => {
            let warning = "AUTH IS OFF: any client can read and write every tenant. Fine on one \
                           machine for development; set auth = true (or --auth true) anywhere else.";
            tracing::warn!("{warning}");
            eprintln!("memring-router: {warning}");
        }
    }
    let credential = config.internal.credential(config.store.is_etcd(), "memring-router")?;
    let ring = RingView::new(store.clone());
    let limiter =
        limits::Limiter::new(store, ring.clone(), config.limit_share, credential.clone())?;
    if let Err(e) = ring.refresh().await {
        tracing::warn!(error = %e, "ring store not readable yet; will keep trying");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(ring.clone().follow(stop_rx.clone()));
    let refresher = keys.clone().map(|k| tokio::spawn(k.keep_fresh(stop_rx.clone())));
    let limits_task = tokio::spawn(limiter.clone().keep_fresh(stop_rx.clone()));
    let token_task = tokio::spawn(credential.clone().keep_fresh(stop_rx));
    let embedder = embed::Embedder::start(&config.embedder)?.map(Arc::new);
    if let Some(e) = &embedder {
        tracing::info!(model = e.model(), dimensions = e.dimensions(), "embedding text");
    }
    let service = Arc::new(service::RouterService::new(
        forward::Forwarder::new(ring, config.replica_reads, credential)?,
        config,
        keys,
        limiter,
        embedder,
    ));
    let https = tls.is_some();
    tracing::info!(listen = %listener.local_addr()?, https, "router serving the API");
    serve(listener, service, ServerOptions { tls, ..ServerOptions::default() }, shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = follower.await;
    let _ = limits_task.await;
    let _ = token_task.await;
    if let Some(r) = refresher {
        let _ = r.await;
    }
    Ok(())
}
