//! Followers (DESIGN.md, "Replication and failure"; first step): with a layout's
//! `replication_factor` R > 1, every partition lives on the R nodes of `Ring::replicas`; the first
//! is the primary and takes the writes, the others follow it by tailing its change log — the same
//! `changes` feed a migration catches up from — and applying the entries in order with
//! `Storage::import_replicated`, which records the primary's log position in the same batch.
//!
//! Each node polls each primary's partition list (one request per primary per round, whatever
//! the number of partitions), and pulls the changes of the partitions it follows and lags on.
//! Lag (entries behind, per primary) is the gauge `memring_replication_lag_entries`.
//!
//! Not yet: acknowledging writes only after W copies have them, replica reads, failover
//! (the next steps). A follower's copy is a warm standby and a second copy on disk.

use std::sync::Arc;
use std::time::Duration;

use memring_common::api::{PartitionList, partition_path};
use memring_common::layout::LayoutNode;
use memring_common::watcher::RingView;
use memring_common::{NodeId, PartitionKey};

use crate::record::{LogOp, decode};
use crate::storage::Storage;

/// How often a follower asks its primaries what changed.
const ROUND: Duration = Duration::from_millis(100);
/// Log entries pulled per request.
const PAGE: usize = 1000;

/// Follows every primary this node replicates, until `stop` turns true.
pub async fn follow(
    me: NodeId,
    storage: Arc<Storage>,
    ring: Arc<RingView>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client =
        match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "replication client cannot be built; not following");
                return;
            }
        };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
        let ring = ring.ring();
        if ring.layout().replication_factor < 2 {
            continue;
        }
        for primary in ring.layout().nodes.iter().filter(|n| n.id != me) {
            match follow_one(&client, &me, &storage, &ring, primary).await {
                Ok(lag) => metrics::gauge!("memring_replication_lag_entries", "primary" => primary.id.to_string())
                    .set(lag as f64),
                Err(e) => tracing::debug!(primary = %primary.id, error = %e, "replication round failed"),
            }
        }
    }
}

/// One round against `primary`: applies what this node follows and lacks; returns the entries
/// still behind (0 when caught up).
async fn follow_one(
    client: &reqwest::Client,
    me: &NodeId,
    storage: &Arc<Storage>,
    ring: &memring_common::Ring,
    primary: &LayoutNode,
) -> anyhow::Result<u64> {
    let list: PartitionList = client
        .get(format!("http://{}/internal/v1/partitions", primary.addr))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut lag = 0;
    for stats in list.partitions {
        let set = ring.replicas(&stats.partition);
        let follows = set.first().is_some_and(|p| p.id == primary.id)
            && set.iter().skip(1).any(|n| n.id == *me);
        if !follows {
            continue;
        }
        let mut applied = blocking(storage, {
            let p = stats.partition.clone();
            move |s| s.replicated_seq(&p)
        })
        .await?;
        while applied < stats.last_seq {
            let (ops, last) = pull(client, primary, &stats.partition, applied).await?;
            if last <= applied {
                break;
            }
            let p = stats.partition.clone();
            blocking(storage, move |s| {
                s.import_replicated(&p, ops, memring_common::clock::now_millis(), last)
            })
            .await?;
            applied = last;
        }
        lag += stats.last_seq.saturating_sub(applied);
    }
    Ok(lag)
}

/// The primary's log of `p` after `after`: the operations and the last sequence number.
async fn pull(
    client: &reqwest::Client,
    primary: &LayoutNode,
    p: &PartitionKey,
    after: u64,
) -> anyhow::Result<(Vec<LogOp>, u64)> {
    let url = format!(
        "http://{}/internal/v1/migrate/{}/changes?after={after}&limit={PAGE}",
        primary.addr,
        partition_path(p)
    );
    let resp = client.get(&url).send().await?.error_for_status()?;
    let last = resp
        .headers()
        .get("x-memring-last-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("{url}: no x-memring-last-seq"))?;
    let ops: Vec<LogOp> = decode(&resp.bytes().await?)?;
    Ok((ops, last))
}

async fn blocking<T: Send + 'static>(
    storage: &Arc<Storage>,
    work: impl FnOnce(&Storage) -> Result<T, memring_common::ApiError> + Send + 'static,
) -> anyhow::Result<T> {
    let storage = storage.clone();
    Ok(tokio::task::spawn_blocking(move || work(&storage)).await??)
}
