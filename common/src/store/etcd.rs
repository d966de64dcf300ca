//! The etcd ring store: the layout, and leased node records, in an etcd cluster.
//!
//! Keys (all under a configurable prefix, default `/memring/`, so clusters can share an etcd):
//! - `<prefix>layout`: the layout document (JSON with a format version); its etcd `mod_revision`
//!   is the store revision watchers resume from;
//! - `<prefix>nodes/<node id>`: a live node's record, attached to that node's lease, so it
//!   disappears by itself when the node stops renewing.
//!
//! Compare-and-swap reads the layout, checks its epoch, and writes in a transaction guarded by
//! the key's `mod_revision` (or its absence), so of two concurrent changes exactly one commits.
//! Every call has a timeout, so a router never hangs on an unreachable etcd; it keeps its last ring.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LockOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{Leadership, NodeLease, NodeRecord, Records, RingStore, StoreError, Versioned};
use crate::layout::ClusterLayout;

const DOC_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct LayoutDoc {
    format_version: u32,
    layout: ClusterLayout,
}

/// A ring store in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Watches `key` with `options` and yields `pick(response)` for each response it is `Some`
    /// for. A cancelled watch (compaction), a dropped connection or an error ends the stream
    /// with an error; callers reload and watch again.
    async fn watch_key<T: Send + 'static>(
        &self,
        key: String,
        options: WatchOptions,
        pick: impl Fn(&etcd_client::WatchResponse) -> Option<Result<T, StoreError>> + Send + 'static,
    ) -> Result<impl futures::Stream<Item = Result<T, StoreError>> + Send + 'static, StoreError>
    {
        let stream = self.client.clone().watch(key, Some(options)).await.map_err(unavailable)?;
        Ok(futures::stream::unfold(Some((stream, pick)), |state| async move {
            let (mut stream, pick) = state?;
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => {
                        let why = format!(
                            "etcd cancelled the watch (compacted at {}): {}",
                            resp.compact_revision(),
                            resp.cancel_reason()
                        );
                        return Some((Err(StoreError::Unavailable(why)), None));
                    }
                    Ok(Some(resp)) => {
                        if let Some(item) = pick(&resp) {
                            return Some((item, Some((stream, pick))));
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(unavailable(e)), None)),
                }
            }
        }))
    }

    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`), keeping keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_as(endpoints, prefix, None).await
    }

    /// [`EtcdStore::connect`] as an etcd user (`(name, password)`), with etcd's authentication
    /// on; the client renews its auth token as etcd expires it.
    pub async fn connect_as(
        endpoints: &[String],
        prefix: &str,
        user: Option<(String, String)>,
    ) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some((name, password)) = user {
            options = options.with_user(name, password);
        }
        let client = Client::connect(endpoints, Some(options)).await.map_err(unavailable)?;
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { client, endpoints: endpoints.to_vec(), prefix })
    }

    fn layout_key(&self) -> String {
        format!("{}layout", self.prefix)
    }

    fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    fn parse(bytes: &[u8], revision: i64) -> Result<Versioned, StoreError> {
        let doc: LayoutDoc = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Corrupt(format!("layout in etcd: {e}")))?;
        if doc.format_version > DOC_FORMAT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "layout in etcd has format {} and this binary reads up to {DOC_FORMAT_VERSION}; upgrade memring",
                doc.format_version
            )));
        }
        doc.layout.validate().map_err(|e| StoreError::Corrupt(e.message().to_owned()))?;
        Ok(Versioned { revision: revision.max(0) as u64, layout: doc.layout })
    }

    /// The layout and its `mod_revision` (0 when absent).
    async fn read(&self) -> Result<(Versioned, i64), StoreError> {
        let resp = self.client.clone().get(self.layout_key(), None).await.map_err(unavailable)?;
        match resp.kvs().first() {
            Some(kv) => Ok((Self::parse(kv.value(), kv.mod_revision())?, kv.mod_revision())),
            None => Ok((Versioned { revision: 0, layout: ClusterLayout::default() }, 0)),
        }
    }
}

#[async_trait]
impl RingStore for EtcdStore {
    async fn load(&self) -> Result<Versioned, StoreError> {
        Ok(self.read().await?.0)
    }

    async fn compare_and_swap(
        &self,
        expected_epoch: u64,
        new: &ClusterLayout,
    ) -> Result<Versioned, StoreError> {
        super::check_successor(expected_epoch, new)?;
        let (current, mod_revision) = self.read().await?;
        if current.layout.epoch != expected_epoch {
            return Err(StoreError::Conflict {
                expected: expected_epoch,
                current: Box::new(current),
            });
        }
        let new = &new.stamped_after(&current.layout);
        let key = self.layout_key();
        let guard = if mod_revision == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision)
        };
        let doc = serde_json::to_vec(&LayoutDoc {
            format_version: DOC_FORMAT_VERSION,
            layout: new.clone(),
        })
        .map_err(|e| StoreError::Invalid(format!("layout does not serialize: {e}")))?;
        let txn = Txn::new().when(vec![guard]).and_then(vec![TxnOp::put(key, doc, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(unavailable)?;
        if !resp.succeeded() {
            let (now, _) = self.read().await?;
            return Err(StoreError::Conflict { expected: expected_epoch, current: Box::new(now) });
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(mod_revision + 1);
        Ok(Versioned { revision: revision.max(0) as u64, layout: new.clone() })
    }

    async fn watch(
        &self,
        after_revision: u64,
    ) -> Result<BoxStream<'static, Result<Versioned, StoreError>>, StoreError> {
        let options = WatchOptions::new().with_start_revision(after_revision as i64 + 1);
        let out = self
            .watch_key(self.layout_key(), options, |resp| {
                // The "created" answer and deletions carry no layout; the newest put wins.
                resp.events()
                    .iter()
                    .rev()
                    .filter(|e| e.event_type() == EventType::Put)
                    .find_map(|e| e.kv())
                    .map(|kv| Self::parse(kv.value(), kv.mod_revision()))
            })
            .await?;
        Ok(Box::pin(out))
    }

    async fn register_node(
        &self,
        record: NodeRecord,
        ttl: Duration,
    ) -> Result<NodeLease, StoreError> {
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let key = format!("{}{}", self.nodes_prefix(), record.id);
        let value = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Invalid(format!("node record: {e}")))?;
        let client = self.client.clone();
        let grant = {
            let (client, key, value) = (client.clone(), key.clone(), value.clone());
            move || {
                let (mut client, key, value) = (client.clone(), key.clone(), value.clone());
                async move {
                    let lease = client.lease_grant(ttl_secs, None).await.map_err(unavailable)?.id();
                    client
                        .put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                        .map_err(unavailable)?;
                    Ok::<i64, StoreError>(lease)
                }
            }
        };
        let first = grant().await?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut lease = first;
            let period = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(200));
            loop {
                // One keep-alive stream until it breaks; then re-open (or re-grant) and go on.
                let kept = async {
                    let (mut keeper, mut answers) =
                        client.clone().lease_keep_alive(lease).await.map_err(unavailable)?;
                    loop {
                        keeper.keep_alive().await.map_err(unavailable)?;
                        match answers.message().await.map_err(unavailable)? {
                            Some(answer) if answer.ttl() > 0 => {}
                            _ => return Err(StoreError::Unavailable("lease expired".into())),
                        }
                        tokio::time::sleep(period).await;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), StoreError>(())
                };
                tokio::select! {
                    _ = &mut stop_rx => break,
                    result = kept => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, lease, "node lease keep-alive interrupted");
                        }
                    }
                }
                // The lease may have expired while etcd was away: a fresh one re-publishes us.
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                match client.clone().lease_time_to_live(lease, None).await {
                    Ok(info) if info.ttl() > 0 => {}
                    _ => match grant().await {
                        Ok(fresh) => {
                            tracing::info!(
                                lease = fresh,
                                "node record re-published under a new lease"
                            );
                            lease = fresh;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot re-publish node record yet"),
                    },
                }
            }
            let _ = client.clone().lease_revoke(lease).await;
        });
        Ok(NodeLease::new(stop_tx, task))
    }

    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.nodes_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match serde_json::from_slice::<NodeRecord>(kv.value()) {
                Ok(record) => out.push(record),
                Err(e) => {
                    tracing::warn!(error = %e, key = %String::from_utf8_lossy(kv.key()), "unreadable node record skipped")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn put_record(&self, kind: Records, id: &str, record: &[u8]) -> Result<(), StoreError> {
        crate::ids::validate_id("record id", id)
            .map_err(|e| StoreError::Invalid(e.message().to_owned()))?;
        self.client
            .clone()
            .put(format!("{}{}/{id}", self.prefix, kind.dir()), record.to_vec(), None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn records(&self, kind: Records) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = format!("{}{}/", self.prefix, kind.dir());
        let resp = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        let mut out: Vec<(String, Vec<u8>)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn delete_record(&self, kind: Records, id: &str) -> Result<(), StoreError> {
        self.client
            .clone()
            .delete(format!("{}{}/{id}", self.prefix, kind.dir()), None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn watch_records(
        &self,
        kind: Records,
    ) -> Result<BoxStream<'static, Result<(), StoreError>>, StoreError> {
        let prefix = format!("{}{}/", self.prefix, kind.dir());
        // The "created" answer has no events; anything else is a change.
        let out = self
            .watch_key(prefix, WatchOptions::new().with_prefix(), |resp| {
                (!resp.events().is_empty()).then_some(Ok(()))
            })
            .await?;
        Ok(Box::pin(out))
    }

    async fn lead(&self, name: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let mut client = self.client.clone();
        let lease = client.lease_grant(ttl_secs, None).await.map_err(unavailable)?.id();
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let keeper_client = client.clone();
        let task = tokio::spawn(async move {
            let period = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(200));
            let deadline_of = || tokio::time::Instant::now() + Duration::from_secs(ttl_secs as u64);
            let mut expires = deadline_of();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(period) => {}
                }
                let renewed = async {
                    let (mut keeper, mut answers) =
                        keeper_client.clone().lease_keep_alive(lease).await.ok()?;
                    keeper.keep_alive().await.ok()?;
                    answers.message().await.ok()?.filter(|a| a.ttl() > 0)
                }
                .await;
                if renewed.is_some() {
                    expires = deadline_of();
                } else if tokio::time::Instant::now() >= expires {
                    tracing::error!(lease, "leadership lease expired");
                    let _ = lost_tx.send(true);
                    break;
                }
            }
            let _ = keeper_client.clone().lease_revoke(lease).await;
        });
        let key = format!("{}lead/{name}", self.prefix);
        // Lock calls are bounded by the client's timeout; keep asking while the lease lives.
        loop {
            match client.lock(key.clone(), Some(LockOptions::new().with_lease(lease))).await {
                Ok(_) => break,
                Err(e) => {
                    if *lost.borrow() {
                        return Err(unavailable(e));
                    }
                    tracing::debug!(error = %e, "waiting for leadership");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Ok(Leadership { hold: NodeLease::new(stop_tx, task), lost })
    }

    fn describe(&self) -> String {
        format!("etcd:{}{}", self.endpoints.join(","), self.prefix)
    }
}
