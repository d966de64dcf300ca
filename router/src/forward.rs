//! Forwarding to shard nodes: one pooled keep-alive HTTP client, the ring lookup, and the
//! "421 → reload the ring → retry once" rule.
//!
//! A shard node answers 421 `wrong_owner` when the router's ring is stale; the router then reads
//! the layout from the store and tries the (new) owner once more. Network failures and timeouts
//! become 503 `unavailable` with `Retry-After`, never a 500. Reads (get, list, search) that fail
//! in transport are retried with exponential backoff and full jitter while their time allows;
//! writes and deletes are not (the client decides, with the write's idempotent id). Every node
//! has a circuit breaker (`breaker.rs`): after repeated transport failures its requests fail at
//! once until a probe gets through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use memring_common::api::{
    EPOCH_HEADER, LAST_SEQ_HEADER, REPLICA_READ_HEADER, REQUEST_ID_HEADER, partition_path,
};
use memring_common::error::ErrorBody;
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, PartitionKey};

use crate::breaker::{BreakerConfig, Breakers};

/// A shard node's answer: status and body, passed through or parsed by the caller.
#[derive(Debug)]
pub struct ShardReply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (JSON).
    pub body: Bytes,
    /// The partition's log position the answer reports (`x-memring-last-seq`), if any.
    pub last_seq: Option<u64>,
}

/// How long a router keeps retrying a partition whose writes are fenced for a hand-off.
const MOVING_PATIENCE: Duration = Duration::from_secs(5);
/// Tries of a read whose node could not be reached (the first included).
const READ_ATTEMPTS: u32 = 3;
/// First backoff before retrying a read; doubled each time, with full jitter.
const READ_BACKOFF: Duration = Duration::from_millis(20);

impl ShardReply {
    /// The error code of an error answer, if it has one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        serde_json::from_slice::<ErrorBody>(&self.body).ok().map(|b| b.error.code)
    }

    /// Turns an error status into the `ApiError` the shard node sent.
    pub fn into_result(self) -> Result<Bytes, ApiError> {
        if self.status < 300 {
            return Ok(self.body);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => ApiError::from_body(body),
            Err(_) => ApiError::internal(format!(
                "shard node answered {} with a body that is not an error",
                self.status
            )),
        })
    }
}

/// Sends requests to the shard node that owns a partition.
pub struct Forwarder {
    client: memring_common::internal::InternalClient,
    ring: Arc<RingView>,
    breakers: Breakers,
    /// Send reads to followers first (with replication).
    replica_reads: bool,
}

impl Forwarder {
    /// A forwarder over `ring` with a pooled client.
    pub fn new(
        ring: Arc<RingView>,
        replica_reads: bool,
        credential: Arc<memring_common::internal::ClusterCredential>,
    ) -> anyhow::Result<Self> {
        let client = memring_common::tls::http_client_builder()
            .no_proxy()
            .tcp_nodelay(true)
            // Below the servers' 10 s keep-alive header timeout, so a connection the shard node
            // is about to close is never picked for a request (which would fail in transport).
            .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(2))
            .http1_only()
            .build()?;
        let client = memring_common::internal::InternalClient::new(client, credential);
        Ok(Self { client, ring, breakers: Breakers::new(BreakerConfig::default()), replica_reads })
    }

    /// The ring view.
    pub fn ring(&self) -> &Arc<RingView> {
        &self.ring
    }

    /// A read (get, list: no body; search: a body) of `partition`: with replication, first from one of its
    /// followers — one that is not marked down and whose breaker is closed, picked at random —
    /// asking it for log position `min_seq` (a read token's, 0 for none); the owner answers
    /// when the follower is behind, is no longer a copy, or cannot be reached.
    pub async fn read_partition(
        &self,
        partition: &PartitionKey,
        suffix: &str,
        body: Option<Bytes>,
        request_id: &str,
        timeout: Duration,
        min_seq: u64,
    ) -> Result<ShardReply, ApiError> {
        // A search has a body (POST); get and list have none (GET).
        let method = if body.is_some() { Method::POST } else { Method::GET };
        let ring = self.ring.ring();
        let now = Instant::now();
        let followers: Vec<LayoutNode> = if self.replica_reads {
            ring.followers(partition)
                .into_iter()
                .filter(|n| !ring.layout().is_down(&n.id) && !self.breakers.holds(&n.id, now))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if !followers.is_empty() {
            let follower = &followers[rand::random_range(0..followers.len())];
            let path = format!("/internal/v1/p/{}/{suffix}", partition_path(partition));
            let replica = Some(min_seq);
            let sent = self
                .send(
                    follower,
                    method.clone(),
                    &path,
                    body.clone(),
                    request_id,
                    Some(ring.epoch()),
                    timeout,
                    replica,
                )
                .await;
            match sent {
                Ok(reply)
                    if reply.status != 421
                        && reply.error_code() != Some(ErrorCode::ReplicaBehind) =>
                {
                    metrics::counter!("memring_router_reads_total", "role" => "replica")
                        .increment(1);
                    return Ok(reply);
                }
                Ok(_) => metrics::counter!("memring_router_replica_fallbacks_total").increment(1),
                Err(e) => {
                    tracing::debug!(node = %follower.id, error = %e, "replica read failed; asking the owner");
                    metrics::counter!("memring_router_replica_fallbacks_total").increment(1);
                }
            }
        }
        metrics::counter!("memring_router_reads_total", "role" => "primary").increment(1);
        self.to_partition(partition, method, suffix, body, request_id, timeout).await
    }

    /// Sends `method` to `/internal/v1/p/{partition}/{suffix}` on the owner, retrying once on 421.
    pub async fn to_partition(
        &self,
        partition: &PartitionKey,
        method: Method,
        suffix: &str,
        body: Option<Bytes>,
        request_id: &str,
        timeout: Duration,
    ) -> Result<ShardReply, ApiError> {
        let path = format!("/internal/v1/p/{}/{suffix}", partition_path(partition));
        // A 421 means our ring is stale: reload it and retry once. A fenced partition (moving to
        // another node) answers 503 partition_moving for a few milliseconds: wait and retry, with
        // the ring reloaded each time, for up to MOVING_PATIENCE, so the client sees a slower
        // request rather than an error.
        let started = std::time::Instant::now();
        let read = method == Method::GET || suffix == "search";
        let mut wrong_owner_retried = false;
        let mut pause = Duration::from_millis(5);
        let mut attempt = 0;
        loop {
            let ring = self.ring.ring();
            let Some(owner) = ring.owner(partition).cloned() else {
                return Err(ApiError::unavailable("no shard nodes are in the ring yet", 1));
            };
            attempt += 1;
            let sent = self
                .send(
                    &owner,
                    method.clone(),
                    &path,
                    body.clone(),
                    request_id,
                    Some(ring.epoch()),
                    timeout,
                    None,
                )
                .await;
            let reply = match sent {
                Ok(reply) => reply,
                Err(e)
                    if read
                        && attempt < READ_ATTEMPTS
                        && !self.breakers.holds(&owner.id, Instant::now()) =>
                {
                    // Full jitter: a random wait up to the doubled backoff, within the time left.
                    let ceiling = READ_BACKOFF * 2u32.pow(attempt - 1);
                    let wait = ceiling.mul_f64(rand::random::<f64>());
                    if started.elapsed() + wait >= timeout {
                        return Err(e);
                    }
                    metrics::counter!("memring_router_read_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let moving =
                reply.status == 503 && reply.error_code() == Some(ErrorCode::PartitionMoving);
            if reply.status == 421 && !wrong_owner_retried {
                wrong_owner_retried = true;
                tracing::info!(%partition, node = %owner.id, epoch = ring.epoch(), "stale ring; reloading and retrying");
                metrics::counter!("memring_router_wrong_owner_retries_total").increment(1);
                if let Err(e) = self.ring.refresh().await {
                    tracing::warn!(error = %e, "ring reload failed; retrying with the ring we have");
                }
                continue;
            }
            if moving && started.elapsed() < MOVING_PATIENCE {
                metrics::counter!("memring_router_fenced_retries_total").increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
                // The flip may have happened meanwhile; a 421 after it deserves its own retry.
                wrong_owner_retried = false;
                let _ = self.ring.refresh().await;
                continue;
            }
            if reply.status == 421 || moving {
                return Err(ApiError::unavailable(
                    format!("{partition} is changing owners; retry shortly"),
                    1,
                ));
            }
            return Ok(reply);
        }
    }

    /// Sends one request to one node; with `replica`, as a replica read asking for that log
    /// position.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        node: &LayoutNode,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        request_id: &str,
        epoch: Option<u64>,
        timeout: Duration,
        replica: Option<u64>,
    ) -> Result<ShardReply, ApiError> {
        if let Err(wait) = self.breakers.admit(&node.id, Instant::now()) {
            metrics::counter!("memring_router_breaker_rejections_total", "node" => node.id.to_string())
                .increment(1);
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "shard node {} is failing; the router holds its requests for {} ms more",
                    node.id,
                    wait.as_millis()
                ),
            )
            .with_retry_after(u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX)));
        }
        let url = format!("http://{}{path}", node.addr);
        let mut req = self
            .client
            .request(method, &url)
            .timeout(timeout)
            .header(REQUEST_ID_HEADER, request_id);
        if let Some(epoch) = epoch {
            req = req.header(EPOCH_HEADER, epoch);
        }
        if let Some(min_seq) = replica {
            req = req.header(REPLICA_READ_HEADER, min_seq);
        }
        if let Some(body) = body {
            req = req.header(http::header::CONTENT_TYPE, "application/json").body(body);
        }
        let started = Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let last_seq = resp
                .headers()
                .get(LAST_SEQ_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(ShardReply { status, body, last_seq })
        }
        .await;
        metrics::histogram!("memring_forward_duration_seconds", "node" => node.id.to_string())
            .record(started.elapsed().as_secs_f64());
        if let Some(state) = self.breakers.record(&node.id, result.is_ok(), Instant::now()) {
            tracing::warn!(node = %node.id, state = ["closed", "half-open", "open"][usize::from(state)], "circuit breaker changed");
            metrics::gauge!("memring_router_breaker_state", "node" => node.id.to_string())
                .set(f64::from(state));
        }
        result.map_err(|e| {
            metrics::counter!("memring_forward_errors_total", "node" => node.id.to_string())
                .increment(1);
            let what = if e.is_timeout() { "timed out" } else { "could not be reached" };
            tracing::warn!(node = %node.id, addr = %node.addr, error = %e, "shard node {what}");
            ApiError::new(
                ErrorCode::Unavailable,
                format!("shard node {} {what}; retry shortly", node.id),
            )
            .with_retry_after(1)
        })
    }
}
