//! The control plane's one client of shard nodes: every internal endpoint it calls, with its URL,
//! its timeout and what its answer means, and one error type ([`ShardError`]) for what can go
//! wrong. No other module formats a shard node's URL or reads its status codes.
//!
//! Calls fall into three groups: what a node holds (`partitions`, `partitions_changed`,
//! `replica_status`), the replication steps of a layout change or a failover (`position`,
//! `held`, `take_over`, `hand_over`, `holds`, and `batch` for many partitions of a node), and steps on one copy (`checksum`,
//! `drop_partition`, and `unfence` for a source an older control plane's copy
//! protocol fenced).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use memring_common::api::{
    MAX_REPLICA_BATCH, PartitionChecksum, PartitionList, ReplicaBatch, ReplicaBatchAnswer,
    ReplicaPosition, ReplicaStatus, ReplicaStep, partition_path,
};
use memring_common::internal::InternalClient;
use memring_common::layout::LayoutNode;
use memring_common::{NodeId, PartitionKey};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

/// How long one step on a node's copy may take (unfence, checksum, drop).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// A node's listing (also behind a creation barrier).
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// A node's replication status: failover reads it to decide, so it must not wait long.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// A replication step (a position once the node has seen an epoch; a take-over asking the
/// other copies; a log check): a few round trips.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(3);
/// A replication step for a batch of partitions: a few hundred at a time, each a few round
/// trips.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A call to a shard node that did not give the answer it should.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// No answer: refused, reset, timed out.
    #[error("{call} on the shard node at {addr}: no answer: {source}")]
    Unreachable {
        /// The call, e.g. `POST …/migrate/acme/shared/fence`.
        call: String,
        /// The node's address.
        addr: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// An error status.
    #[error("{call} on the shard node at {addr}: answered {status}: {body}")]
    Refused {
        /// The call.
        call: String,
        /// The node's address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body (memring's error JSON), for the log.
        body: String,
    },
    /// A success whose body or headers are not what the endpoint answers.
    #[error("{call} on the shard node at {addr}: the answer does not read: {why}")]
    Garbled {
        /// The call.
        call: String,
        /// The node's address.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A successful answer: body and headers.
pub struct Answer {
    /// The body.
    pub body: Bytes,
    /// The headers.
    pub headers: HeaderMap,
    call: String,
    addr: String,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ShardError> {
        serde_json::from_slice(&self.body).map_err(|e| self.garbled(e.to_string()))
    }

    fn garbled(&self, why: String) -> ShardError {
        ShardError::Garbled { call: self.call.clone(), addr: self.addr.clone(), why }
    }
}

/// One request: `method` on `path` of the node at `addr`; an error unless it answered 2xx.
async fn send(
    client: &InternalClient,
    addr: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Answer, ShardError> {
    let call = format!("{method} {path}");
    let mut req = client.request(method, format!("http://{addr}{path}")).timeout(timeout);
    if let Some(body) = body {
        req = req.header("content-type", "application/octet-stream").body(body);
    }
    let unreachable =
        |source| ShardError::Unreachable { call: call.clone(), addr: addr.to_owned(), source };
    let resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(ShardError::Refused {
            call,
            addr: addr.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(Answer { body, headers, call, addr: addr.to_owned() })
}

// ---------------------------------------------------------------------------------------------
// What a node holds

/// What the node at `addr` stores (`GET /internal/v1/partitions`). With `barrier` the node first
/// catches up to that layout epoch and waits out every partition creation decided under an older
/// one (see `creation_frozen`).
pub async fn partitions(
    client: &InternalClient,
    addr: &str,
    barrier: Option<u64>,
) -> Result<PartitionList, ShardError> {
    let path = match barrier {
        Some(epoch) => format!("/internal/v1/partitions?barrier={epoch}"),
        None => "/internal/v1/partitions".to_owned(),
    };
    send(client, addr, Method::GET, &path, None, LIST_TIMEOUT).await?.json()
}

/// The node's partitions changed since a cursor of its change feed; `query` is
/// `memring_common::usage::Usage::query`'s (empty: every partition, a full list).
pub async fn partitions_changed(
    client: &InternalClient,
    addr: &str,
    query: &str,
) -> Result<PartitionList, ShardError> {
    let path = format!("/internal/v1/partitions{query}");
    send(client, addr, Method::GET, &path, None, LIST_TIMEOUT).await?.json()
}

/// The node's replication status (`GET /internal/v1/replicate/status`).
pub async fn replica_status(
    client: &InternalClient,
    addr: &str,
) -> Result<ReplicaStatus, ShardError> {
    let path = "/internal/v1/replicate/status";
    send(client, addr, Method::GET, path, None, STATUS_TIMEOUT).await?.json()
}

// ---------------------------------------------------------------------------------------------
// Replication steps

/// `node`'s log position of `p`, once it has seen layout `epoch`
/// (`POST /internal/v1/replicate/position/…`).
pub async fn position(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
    epoch: u64,
) -> Result<u64, ShardError> {
    Ok(held(client, node, p, epoch).await?.last_seq)
}

/// `node`'s log position of `p` and the term there, once it has seen layout `epoch`.
pub async fn held(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
    epoch: u64,
) -> Result<ReplicaPosition, ShardError> {
    let path = format!("/internal/v1/replicate/position/{}?epoch={epoch}", partition_path(p));
    send(client, &node.addr, Method::POST, &path, None, REPLICATION_TIMEOUT).await?.json()
}

/// Asks `owner` to take `p`'s writes over now (`POST /internal/v1/replicate/take-over/…`).
pub async fn take_over(
    client: &InternalClient,
    owner: &LayoutNode,
    p: &PartitionKey,
) -> Result<(), ShardError> {
    let path = format!("/internal/v1/replicate/take-over/{}", partition_path(p));
    send(client, &owner.addr, Method::POST, &path, None, REPLICATION_TIMEOUT).await.map(drop)
}

/// Asks `owner`, the owner of `p` at layout `epoch`, to hand its writes over: it holds new
/// writes back until the layout moves on (or a few seconds pass) and answers once those it
/// committed have their quorum (`POST /internal/v1/replicate/hand-over/…`).
pub async fn hand_over(
    client: &InternalClient,
    owner: &LayoutNode,
    p: &PartitionKey,
    epoch: u64,
) -> Result<ReplicaPosition, ShardError> {
    let path = format!("/internal/v1/replicate/hand-over/{}?epoch={epoch}", partition_path(p));
    send(client, &owner.addr, Method::POST, &path, None, REPLICATION_TIMEOUT).await?.json()
}

/// `items` grouped by the node each names, in node id order: the calls of a step that asks
/// each node once ([`batch`]).
pub fn by_node<T>(items: impl IntoIterator<Item = (LayoutNode, T)>) -> Vec<(LayoutNode, Vec<T>)> {
    let mut groups: std::collections::BTreeMap<_, (LayoutNode, Vec<T>)> = Default::default();
    for (node, item) in items {
        groups.entry(node.id.clone()).or_insert_with(|| (node, Vec::new())).1.push(item);
    }
    groups.into_values().collect()
}

/// `step` for each of `partitions` on `node`, once it has seen layout `epoch`
/// (`POST /internal/v1/replicate/batch`, in requests of at most [`MAX_REPLICA_BATCH`]): each
/// partition's position after the step, or why the step failed there, in the order given.
pub async fn batch(
    client: &InternalClient,
    node: &LayoutNode,
    step: ReplicaStep,
    epoch: u64,
    partitions: &[PartitionKey],
) -> Result<Vec<Result<ReplicaPosition, String>>, ShardError> {
    let path = "/internal/v1/replicate/batch";
    let mut out = Vec::with_capacity(partitions.len());
    // An empty batch still makes the node reach the epoch.
    let chunks: Vec<&[PartitionKey]> = match partitions.len() {
        0 => vec![&[]],
        _ => partitions.chunks(MAX_REPLICA_BATCH).collect(),
    };
    for chunk in chunks {
        let ask = ReplicaBatch { step, epoch, partitions: chunk.to_vec() };
        let body = serde_json::to_vec(&ask).map_err(|e| ShardError::Garbled {
            call: format!("POST {path}"),
            addr: node.addr.clone(),
            why: format!("the batch does not serialize: {e}"),
        })?;
        let body = Bytes::from(body);
        let answer =
            send(client, &node.addr, Method::POST, path, Some(body), BATCH_TIMEOUT).await?;
        let read: ReplicaBatchAnswer = answer.json()?;
        if read.results.len() != chunk.len() {
            let why = format!("{} results for {} partitions", read.results.len(), chunk.len());
            return Err(answer.garbled(why));
        }
        out.extend(read.results.into_iter().map(|r| match (r.position, r.error) {
            (Some(at), None) => Ok(at),
            (_, error) => Err(error.unwrap_or_else(|| "no position".to_owned())),
        }));
    }
    Ok(out)
}

/// `step` on each node of `asks` for its partitions there, each node asked once ([`batch`]):
/// the positions the nodes gave (none for a node that did not answer, or a partition the step
/// failed for).
pub async fn positions_of(
    client: &InternalClient,
    epoch: u64,
    step: ReplicaStep,
    asks: &[(LayoutNode, PartitionKey)],
) -> HashMap<(NodeId, PartitionKey), ReplicaPosition> {
    let nodes = by_node(asks.iter().cloned());
    let asked = nodes.iter().map(|(node, ps)| batch(client, node, step, epoch, ps));
    let mut out = HashMap::new();
    for ((node, ps), answer) in nodes.iter().zip(futures::future::join_all(asked).await) {
        match answer {
            Ok(results) => {
                for (p, at) in ps.iter().zip(results) {
                    if let Ok(at) = at {
                        out.insert((node.id.clone(), p.clone()), at);
                    }
                }
            }
            Err(e) => tracing::debug!(node = %node.id, ?step, error = %e, "a node did not answer"),
        }
    }
    out
}

/// Whether `node`'s copy of `p`, whose log ends at `at`, holds the entry `entry` (its position
/// and term): it does if it ends there, not if it ends before; otherwise (it ends after, or at
/// another term there) its log is asked ([`holds`]).
pub async fn holds_entry(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
    at: ReplicaPosition,
    entry: ReplicaPosition,
) -> Result<bool, ShardError> {
    if at == entry {
        return Ok(true);
    }
    if at.last_seq < entry.last_seq {
        return Ok(false);
    }
    holds(client, node, p, entry.last_seq, entry.last_term).await
}

/// Whether `node`'s log of `p` holds the entry of term `term` at position `seq`, asked with the
/// follower's check of `GET /internal/v1/replicate/log` (log matching: then it holds every entry
/// before it too). A log trimmed past `seq` can no longer show it; it counts when the trimmed
/// part ends in a term at least `term`.
pub async fn holds(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
    seq: u64,
    term: u64,
) -> Result<bool, ShardError> {
    let path =
        format!("/internal/v1/replicate/log/{}?after={seq}&term={term}&limit=1", partition_path(p));
    match send(client, &node.addr, Method::GET, &path, None, REPLICATION_TIMEOUT).await {
        Ok(_) => Ok(true),
        Err(ShardError::Refused { status: 409, .. }) => Ok(false),
        Err(ShardError::Refused { status: 410, body, .. }) => {
            let trimmed_term = serde_json::from_str::<memring_common::error::ErrorBody>(&body)
                .ok()
                .and_then(|b| b.error.details)
                .and_then(|d| d.get("trimmed_term").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            Ok(trimmed_term >= term)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The migration copy path (`/internal/v1/migrate/{partition}/{action}`)

fn migrate_path(p: &PartitionKey, action: &str) -> String {
    format!("/internal/v1/migrate/{}/{action}", partition_path(p))
}

/// Lifts [`fence`].
pub async fn unfence(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
) -> Result<(), ShardError> {
    send(client, &node.addr, Method::DELETE, &migrate_path(p, "fence"), None, STEP_TIMEOUT)
        .await
        .map(drop)
}

/// `node`'s count and checksum of `p`: from its meta, or with `deep` by scanning its data.
pub async fn checksum(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
    deep: bool,
) -> Result<PartitionChecksum, ShardError> {
    let path = format!("{}?deep={deep}", migrate_path(p, "checksum"));
    send(client, &node.addr, Method::GET, &path, None, STEP_TIMEOUT).await?.json()
}

/// Deletes `node`'s copy of `p` (data, log, meta, index).
pub async fn drop_partition(
    client: &InternalClient,
    node: &LayoutNode,
    p: &PartitionKey,
) -> Result<(), ShardError> {
    send(client, &node.addr, Method::DELETE, &migrate_path(p, "partition"), None, STEP_TIMEOUT)
        .await
        .map(drop)
}
