//! Explicit layout changes: every change names the epoch it expects and is applied by
//! compare-and-swap, so two operators (or an operator and a rebalance) can never overwrite each
//! other silently: the loser is told what the layout is now and re-runs against it.

use memring_common::layout::LayoutNode;
use memring_common::store::{RingStore, StoreError};
use memring_common::{ClusterLayout, NodeId};

/// The layout as pretty JSON with its store revision.
pub async fn show(store: &dyn RingStore) -> anyhow::Result<String> {
    let v = store.load().await?;
    Ok(format!("revision {}\n{}", v.revision, serde_json::to_string_pretty(&v.layout)?))
}

async fn apply(
    store: &dyn RingStore,
    expect: Option<u64>,
    change: impl FnOnce(&ClusterLayout) -> anyhow::Result<Option<ClusterLayout>>,
) -> anyhow::Result<String> {
    let current = store.load().await?;
    let expected = expect.unwrap_or(current.layout.epoch);
    if expected != current.layout.epoch {
        anyhow::bail!(
            "conflict: the layout is at epoch {}, not {expected}; run `memring-control layout show` and retry against it",
            current.layout.epoch
        );
    }
    let Some(next) = change(&current.layout)? else {
        return Ok(format!(
            "nothing to change; the layout stays at epoch {}",
            current.layout.epoch
        ));
    };
    match store.compare_and_swap(expected, &next).await {
        Ok(stored) => Ok(format!(
            "layout is now at epoch {} (revision {})",
            stored.layout.epoch, stored.revision
        )),
        Err(StoreError::Conflict { current, .. }) => anyhow::bail!(
            "conflict: another change won; the layout is now at epoch {}; run `memring-control layout show` and retry against it",
            current.layout.epoch
        ),
        Err(e) => Err(e.into()),
    }
}

/// Adds `id` at `addr` to the ring (or updates its address).
pub async fn add_node(
    store: &dyn RingStore,
    id: &str,
    addr: &str,
    expect: Option<u64>,
) -> anyhow::Result<String> {
    let id = NodeId::parse(id)?;
    memring_common::config::check_addr("addr", addr)?;
    let node = LayoutNode { id, addr: addr.to_owned() };
    apply(store, expect, |layout| {
        Ok(match layout.node(&node.id) {
            Some(existing) if existing.addr == node.addr => None,
            Some(_) => Some(layout.with_node(node)),
            None if layout.replication_factor > 1 => anyhow::bail!(
                "the layout keeps {} copies of every partition: a node added here would lead \
                 partitions at once with no copy of them. Start the node and run `shardctl \
                 rebalance`: it adds every live node that is not in the layout as a joining copy, \
                 which leads nothing until it has caught up, then drops the copies it displaced. \
                 (`layout add-node` can still change the address of a node already in the layout.)",
                layout.replication_factor
            ),
            None => Some(layout.with_node(node)),
        })
    })
    .await
}

/// Removes `id` from the ring.
pub async fn remove_node(
    store: &dyn RingStore,
    id: &str,
    expect: Option<u64>,
) -> anyhow::Result<String> {
    let id = NodeId::parse(id)?;
    apply(store, expect, |layout| {
        anyhow::ensure!(layout.node(&id).is_some(), "node {id} is not in the layout");
        anyhow::ensure!(
            layout.replication_factor < 2,
            "the layout keeps {} copies of every partition: taking {id} out here would hand its \
             replica sets to nodes that hold nothing yet, and a node taking a partition over \
             could hear only those. Run `shardctl drain {id}`, which keeps the sets leading \
             until the nodes taking its places hold their logs (a node marked down too).",
            layout.replication_factor
        );
        Ok(Some(layout.without_node(&id)))
    })
    .await
}

/// Sets one setting of the layout: nothing when `set` leaves it as it is, else epoch + 1 (and
/// the whole layout validated).
async fn set_setting(
    store: &dyn RingStore,
    expect: Option<u64>,
    set: impl FnOnce(&mut ClusterLayout),
) -> anyhow::Result<String> {
    apply(store, expect, |layout| {
        let mut next = layout.clone();
        set(&mut next);
        if next == *layout {
            return Ok(None);
        }
        next.epoch += 1;
        next.validate().map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(Some(next))
    })
    .await
}

/// Sets the number of copies of every partition. Existing partitions gain (or lose) followers as
/// the shard nodes see the new layout; followers copy the primary's whole log on first contact.
pub async fn set_replication(
    store: &dyn RingStore,
    copies: u32,
    expect: Option<u64>,
) -> anyhow::Result<String> {
    set_setting(store, expect, |l| l.replication_factor = copies).await
}

/// Switches rebalancing without an operator on or off (`auto_rebalance`, read by the active
/// control plane's autopilot, `autopilot.rs`).
pub async fn set_auto_rebalance(
    store: &dyn RingStore,
    on: bool,
    expect: Option<u64>,
) -> anyhow::Result<String> {
    set_setting(store, expect, |l| l.auto_rebalance = on).await
}
