//! memring control plane: reads the cluster's state from the ring store and the shard nodes and
//! serves it to operators (`GET /v1/cluster`, used by `shardctl status` and `shardctl nodes`).
//!
//! Migration, rebalancing and verification are the control-plane issue's; this crate today only
//! observes, and must not change the layout behind an operator's back.

pub mod layout;
pub mod view;

use std::future::Future;
use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::http::{BoxFuture, Reply, ServerOptions, Service, error_response, json, serve};
use memring_common::store::RingStore;
use memring_common::{ApiError, ErrorCode};
use tokio::net::TcpListener;

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the ring store is.
    pub store: memring_common::store::StoreConfig,
}

struct ControlService {
    store: Arc<dyn RingStore>,
    client: reqwest::Client,
}

impl Service for ControlService {
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<Reply> {
        Box::pin(async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/v1/cluster") => {
                    let response = match view::cluster_view(self.store.as_ref(), &self.client).await
                    {
                        Ok(v) => json(200, &v),
                        Err(e) => error_response(&ApiError::unavailable(e.to_string(), 1)),
                    };
                    Reply { route: "cluster", response }
                }
                (m, p) => Reply {
                    route: "unknown",
                    response: error_response(&ApiError::new(
                        ErrorCode::RouteNotFound,
                        format!("no endpoint {m} {p}"),
                    )),
                },
            }
        })
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Runs the control plane's HTTP API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store: Arc<dyn RingStore> = memring_common::store::open(&config.store).await?;
    let client = view::http_client()?;
    tracing::info!(listen = %listener.local_addr()?, store = %store.describe(), "control plane serving");
    serve(listener, Arc::new(ControlService { store, client }), ServerOptions::default(), shutdown)
        .await?;
    Ok(())
}
