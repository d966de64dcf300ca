//! The shard node's HTTP API (`/internal/v1/...`), spoken by routers and the control plane.
//!
//! Every partition request is checked against the ring first ([`ShardService::check_owner`]): the
//! node serves only partitions it owns at the newer of its own epoch and the caller's, and answers
//! 421 `wrong_owner` with the current owner otherwise, so a stale router retries instead of writing
//! to a node that has handed the partition off. Storage work runs on blocking threads, bounded by
//! a semaphore so no more operations reach a vector index at once than it has contexts for.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    self, EPOCH_HEADER, ListResponse, PartitionList, ReplicaPoll, SearchResponse, ShardItemResult,
    ShardWrite, ShardWriteResponse, TenantDeleted,
};
use memring_common::clock::now_millis;
use memring_common::http::{
    BoxFuture, Reply, Service, error_response, json, percent_decode, percent_encode, query_pairs,
    read_body,
};
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, MemoryId, NodeId, PartitionKey, TenantId};
use tokio::sync::Semaphore;

use crate::background::Background;
use crate::replicate::{Replication, replica_read_header};
use crate::storage::Storage;

mod migration;
mod partition;
mod replication;

/// Shared state of the shard node's handlers.
pub struct ShardService {
    node: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    slots: Arc<Semaphore>,
    body_limit: usize,
    /// Low-priority threads for migration work.
    background: Arc<Background>,
    /// Replication: followers' acknowledgements, taking writes over, replica reads.
    repl: Arc<Replication>,
    /// The cluster token every internal route requires.
    credential: Arc<memring_common::internal::ClusterCredential>,
    /// Followers may poll over upgraded connections (`ShardConfig::replication_stream`).
    streams: bool,
}

impl ShardService {
    /// Builds the service.
    pub fn new(
        node: NodeId,
        storage: Arc<Storage>,
        ring: Arc<RingView>,
        concurrency: usize,
        body_limit: usize,
        background: Arc<Background>,
        repl: Arc<Replication>,
    ) -> Self {
        Self {
            credential: repl.credential().clone(),
            node,
            storage,
            ring,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            body_limit,
            background,
            repl,
            streams: true,
        }
    }

    /// Serves followers' polls over upgraded connections or (false) only over HTTP.
    pub fn with_replication_stream(mut self, streams: bool) -> Self {
        self.streams = streams;
        self
    }

    /// Refuses the request unless this node owns `partition` at the newer of the caller's epoch and
    /// its own.
    pub async fn check_owner(
        &self,
        partition: &PartitionKey,
        caller_epoch: Option<u64>,
    ) -> Result<(), ApiError> {
        let mut ring = self.ring.ring();
        if caller_epoch.is_some_and(|e| e > ring.epoch()) {
            // The caller has seen a newer layout than we have: catch up before deciding.
            ring = self.ring.refresh().await.unwrap_or(ring);
        }
        owned_by(&ring, &self.node, partition)
    }

    /// The check before a partition request: a read a router sent as a replica read may be
    /// answered by any copy that is fresh enough ([`Replication::replica_read`]); everything
    /// else needs the owner. Counts reads by the role that answered them.
    async fn check_access(
        &self,
        partition: &PartitionKey,
        caller_epoch: Option<u64>,
        read: bool,
        replica_read: Option<u64>,
    ) -> Result<(), ApiError> {
        let role = match replica_read.filter(|_| read) {
            Some(min_seq) => {
                if caller_epoch.is_some_and(|e| e > self.ring.ring().epoch()) {
                    let _ = self.ring.refresh().await;
                }
                self.repl.replica_read(partition, min_seq).await?
            }
            None => {
                self.check_owner(partition, caller_epoch).await?;
                if read {
                    // A new owner answers reads only once it holds every acknowledged write
                    // (the same take-over its first write makes; a no-op after the first).
                    self.repl.take_over(partition).await?;
                }
                "primary"
            }
        };
        if read {
            metrics::counter!("memring_shard_reads_total", "role" => role).increment(1);
        }
        Ok(())
    }

    /// Blocks until every write that could still create a partition under a layout older than
    /// `epoch` has finished: catches up to `epoch` (503 if the store cannot say), then passes the
    /// storage's write gate. A rebalance lists partitions after this, with creation frozen.
    async fn creation_barrier(&self, epoch: u64) -> Result<(), ApiError> {
        self.ring.reach(epoch).await?;
        self.blocking(|s| {
            s.write_barrier();
            Ok(())
        })
        .await
    }
}

impl ShardService {
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Storage) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("shutting down", 1))?;
        let storage = self.storage.clone();
        // Keep the request's span (request id, path) on the blocking thread's log lines.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&storage)))
            .await
            .map_err(|e| ApiError::internal(format!("storage task failed: {e}")))?
    }

    /// Runs bulk migration work on the low-priority threads, so the node's own requests go first.
    async fn in_background<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Storage) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let storage = self.storage.clone();
        self.background.run(move || work(&storage)).await
    }

    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> (&'static str, Result<http::Response<memring_common::http::Body>, ApiError>) {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["internal", "v1", "partitions"]) => {
                let r = async {
                    // `?barrier=EPOCH`: list only after every partition creation that could
                    // have been decided under an older layout has finished. `?feed=F&since=C`:
                    // only what changed after that cursor of this node's change feed.
                    let (mut barrier, mut feed, mut since) = (None, 0, 0);
                    for (k, v) in query_pairs(req.uri().query())? {
                        let number = |what: &str| {
                            v.parse::<u64>().map_err(|_| {
                                ApiError::invalid(format!("\"{k}\" must be {what}, got {v:?}"))
                            })
                        };
                        match k.as_str() {
                            "barrier" => barrier = Some(number("an epoch")?),
                            "feed" => feed = number("a feed instance")?,
                            "since" => since = number("a feed cursor")?,
                            other => {
                                return Err(ApiError::invalid(format!(
                                    "unknown parameter {other:?}; the list takes barrier, feed, since"
                                )));
                            }
                        }
                    }
                    if let Some(epoch) = barrier {
                        self.creation_barrier(epoch).await?;
                    }
                    let node = self.node.clone();
                    let epoch = self.ring.ring().epoch();
                    let (partitions, feed, cursor, full) =
                        self.blocking(move |s| s.partitions_since(feed, since)).await?;
                    Ok(json(200, &PartitionList { node, epoch, partitions, feed, cursor, full }))
                }
                .await;
                ("internal.partitions", r)
            }
            (&Method::DELETE, ["internal", "v1", "tenants", tenant]) => {
                let r = async {
                    let tenant = TenantId::parse(&percent_decode(tenant)?)?;
                    let removed = self.blocking(move |s| s.delete_tenant(&tenant)).await?;
                    Ok(json(200, &TenantDeleted { partitions_removed: removed }))
                }
                .await;
                ("internal.tenant.delete", r)
            }
            (&Method::POST, ["internal", "v1", "replicate", "stream"]) if self.streams => {
                ("internal.replicate.stream", self.replica_stream(req))
            }
            (&Method::POST, ["internal", "v1", "replicate", "poll"]) => {
                ("internal.replicate.poll", self.replica_poll(req).await)
            }
            (&Method::POST, ["internal", "v1", "replicate", "position", tenant, scope]) => {
                let r = async {
                    let partition = parse_partition(tenant, scope)?;
                    let epoch = epoch_param(req.uri().query())?;
                    Ok(json(200, &self.repl.position(&partition, epoch).await?))
                }
                .await;
                ("internal.replicate.position", r)
            }
            (&Method::POST, ["internal", "v1", "replicate", "take-over", tenant, scope]) => {
                // The control plane makes a new owner take its writes over now (a drain does,
                // before the old owner leaves the replica set) instead of at its next write.
                let r = async {
                    let partition = parse_partition(tenant, scope)?;
                    self.check_owner(&partition, None).await?;
                    self.repl.take_over(&partition).await?;
                    let p = partition.clone();
                    let at = self.blocking(move |s| s.last_pos(&p)).await?;
                    Ok(json(200, &api::ReplicaPosition { last_seq: at.seq, last_term: at.term }))
                }
                .await;
                ("internal.replicate.take_over", r)
            }
            (&Method::POST, ["internal", "v1", "replicate", "hand-over", tenant, scope]) => {
                let r = async {
                    let partition = parse_partition(tenant, scope)?;
                    let epoch = epoch_param(req.uri().query())?;
                    let at = self.repl.hand_over(&partition, epoch).await?;
                    Ok(json(200, &api::ReplicaPosition { last_seq: at.seq, last_term: at.term }))
                }
                .await;
                ("internal.replicate.hand_over", r)
            }
            (&Method::POST, ["internal", "v1", "replicate", "batch"]) => {
                ("internal.replicate.batch", self.replica_batch(req).await)
            }
            (&Method::POST, ["internal", "v1", "replicate", "committed", tenant, scope]) => {
                let r = async {
                    let partition = parse_partition(tenant, scope)?;
                    let query = query_pairs(req.uri().query())?;
                    let number = |name: &str| {
                        query
                            .iter()
                            .find(|(k, _)| k == name)
                            .and_then(|(_, v)| v.parse::<u64>().ok())
                            .ok_or_else(|| {
                                ApiError::invalid(format!("\"{name}\" must be a number"))
                            })
                    };
                    let at = crate::replicate::rules::LogPos::new(number("term")?, number("seq")?);
                    let epoch = number("epoch")?;
                    if self.repl.wait_committed(&partition, epoch, at).await? {
                        return Ok(json(200, &serde_json::json!({ "committed": true })));
                    }
                    Err(ApiError::unavailable(
                        format!(
                            "{partition}: entry {} of term {} is not yet on its quorum",
                            at.seq, at.term
                        ),
                        1,
                    ))
                }
                .await;
                ("internal.replicate.committed", r)
            }
            (&Method::GET, ["internal", "v1", "replicate", "log", tenant, scope]) => {
                ("internal.replicate.log", self.replica_log(tenant, scope, req.uri().query()).await)
            }
            (&Method::GET, ["internal", "v1", "replicate", "status"]) => {
                ("internal.replicate.status", Ok(json(200, &self.repl.status())))
            }
            (_, ["internal", "v1", "migrate", tenant, scope, action]) => {
                let action = action.to_string();
                let r = async {
                    let partition = parse_partition(tenant, scope)?;
                    self.migrate_route(method.clone(), &action, partition, req).await
                }
                .await;
                ("internal.migrate", r)
            }
            (_, ["internal", "v1", "p", tenant, scope, rest @ ..]) => {
                let partition = match parse_partition(tenant, scope) {
                    Ok(p) => p,
                    Err(e) => return ("internal.partition", Err(e)),
                };
                let checked = async {
                    let epoch = caller_epoch(&req)?;
                    let replica_read = replica_read_header(req.headers())?;
                    let read = method == Method::GET || rest == ["search"];
                    self.check_access(&partition, epoch, read, replica_read).await
                }
                .await;
                if let Err(e) = checked {
                    return ("internal.partition", Err(e));
                }
                self.partition_route(
                    method,
                    rest.iter().map(|s| s.to_string()).collect(),
                    partition,
                    req,
                )
                .await
            }
            _ => (
                "unknown",
                Err(ApiError::new(
                    ErrorCode::RouteNotFound,
                    format!("no internal endpoint {method} {path}"),
                )),
            ),
        }
    }
}

/// A binary body (the versioned bincode of `record.rs`) with extra headers.
/// Largest index graph a node accepts from a migration source (bytes).
const INDEX_BODY_LIMIT: usize = 16 << 30;

fn binary(
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> http::Response<memring_common::http::Body> {
    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    for (name, value) in headers {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

/// Ok if `node` owns `partition` in `ring`, else the error a caller can act on.
fn owned_by(
    ring: &memring_common::Ring,
    node: &NodeId,
    partition: &PartitionKey,
) -> Result<(), ApiError> {
    match ring.owner(partition) {
        Some(owner) if owner.id == *node => Ok(()),
        Some(owner) => Err(ApiError::new(
            ErrorCode::WrongOwner,
            format!(
                "node {node} does not own {partition} at epoch {}; {} does",
                ring.epoch(),
                owner.id
            ),
        )
        .with_details(serde_json::json!({
            "epoch": ring.epoch(),
            "owner": { "id": owner.id, "addr": owner.addr },
        }))),
        None => Err(ApiError::unavailable("the ring has no nodes yet", 1)),
    }
}

/// Whether this node may create `partition` now (its first write): it must own it in the
/// current layout and creation must not be frozen by a rebalance taking stock. Checked under
/// the storage's write gate, so [`ShardService::creation_barrier`] can wait for every check
/// made before it.
fn may_create(ring: &RingView, node: &NodeId, partition: &PartitionKey) -> Result<(), ApiError> {
    let ring = ring.ring();
    if ring.layout().creation_frozen {
        return Err(ApiError::new(
            ErrorCode::PartitionMoving,
            format!("{partition} is new and a rebalance is taking stock; retry in a moment"),
        )
        .with_retry_after(1));
    }
    owned_by(&ring, node, partition)
}

fn parse_partition(tenant: &str, scope: &str) -> Result<PartitionKey, ApiError> {
    PartitionKey::from_parts(&percent_decode(tenant)?, &percent_decode(scope)?)
}

fn caller_epoch(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    match req.headers().get(EPOCH_HEADER) {
        None => Ok(None),
        Some(v) => {
            v.to_str().ok().and_then(|s| s.parse::<u64>().ok()).map(Some).ok_or_else(|| {
                ApiError::invalid(format!("header {EPOCH_HEADER} must be an integer"))
            })
        }
    }
}

impl Service for ShardService {
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<Reply> {
        Box::pin(async move {
            // Every route here is internal: nothing answers without the cluster token (not even
            // a 421 naming the owner), only /health, /ready and /metrics (served before this).
            if let Err(e) = self.credential.check(req.headers()) {
                return Reply { route: "unauthorized", response: error_response(&e) };
            }
            let (route, result) = self.route(req).await;
            let response = result.unwrap_or_else(|e| {
                if e.code() != ErrorCode::WrongOwner && e.status() >= 500 {
                    tracing::warn!(error = %e, route, "request failed");
                }
                error_response(&e)
            });
            Reply { route, response }
        })
    }

    fn ready(&self) -> Result<(), String> {
        if !self.ring.is_loaded() {
            return Err("ring not loaded yet".into());
        }
        Ok(())
    }
}

/// The `epoch` query parameter (a layout epoch) the replication endpoints require.
fn epoch_param(query: Option<&str>) -> Result<u64, ApiError> {
    query_pairs(query)?
        .into_iter()
        .find(|(k, _)| k == "epoch")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::invalid("\"epoch\" must be a layout epoch"))
}
