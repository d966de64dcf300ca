//! The embedded ring store: the layout and node records as files in a directory.
//!
//! One machine needs no etcd: every memring process started with the same `--data-dir` shares
//! `<dir>/layout.json` and `<dir>/nodes/*.json`. Compare-and-swap holds an exclusive file lock
//! (`<dir>/lock`) across read-compare-write, and writes go to a temporary file that is fsynced
//! and renamed over the old one, so a crash never leaves a torn layout. Watchers poll the file
//! (every 100 ms by default); node leases are heartbeats that rewrite the record's expiry.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{Leadership, NodeLease, NodeRecord, Records, RingStore, StoreError, Versioned};
use crate::clock::now_millis;
use crate::layout::ClusterLayout;

/// The layout file's own format version (the layout inside has one too).
const FILE_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct LayoutFile {
    format_version: u32,
    revision: u64,
    layout: ClusterLayout,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    format_version: u32,
    expires_at_ms: i64,
    record: NodeRecord,
}

/// A ring store in a local directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    dir: PathBuf,
    poll: Duration,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("nodes")).map_err(|e| io_err(&dir, e))?;
        Ok(Self { dir, poll: Duration::from_millis(100) })
    }

    /// Sets how often watchers look for changes.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    fn layout_path(&self) -> PathBuf {
        self.dir.join("layout.json")
    }

    fn node_path(&self, id: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{id}.json"))
    }

    fn read_layout(path: &Path) -> Result<Versioned, StoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Versioned { revision: 0, layout: ClusterLayout::default() });
            }
            Err(e) => return Err(io_err(path, e)),
        };
        let file: LayoutFile = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if file.format_version > FILE_FORMAT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "{} has format {} and this binary reads up to {FILE_FORMAT_VERSION}; upgrade memring",
                path.display(),
                file.format_version
            )));
        }
        file.layout.validate().map_err(|e| StoreError::Corrupt(e.message().to_owned()))?;
        Ok(Versioned { revision: file.revision, layout: file.layout })
    }

    fn cas_blocking(&self, expected: u64, new: ClusterLayout) -> Result<Versioned, StoreError> {
        let lock = lock_file(&self.dir.join("lock"))?;
        let current = Self::read_layout(&self.layout_path())?;
        if current.layout.epoch != expected {
            return Err(StoreError::Conflict { expected, current: Box::new(current) });
        }
        let layout = new.stamped_after(&current.layout);
        let stored = Versioned { revision: current.revision + 1, layout };
        let file = LayoutFile {
            format_version: FILE_FORMAT_VERSION,
            revision: stored.revision,
            layout: stored.layout.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::Invalid(format!("layout does not serialize: {e}")))?;
        write_atomically(&self.layout_path(), &bytes)?;
        drop(lock);
        Ok(stored)
    }
}

/// Opens (creating) `path` and takes an exclusive lock on it, waiting for the holder; the OS
/// releases it when the file is closed or the process dies.
fn lock_file(path: &Path) -> Result<std::fs::File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.lock().map_err(|e| io_err(path, e))?;
    Ok(file)
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path, e)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

#[async_trait]
impl RingStore for EmbeddedStore {
    async fn load(&self) -> Result<Versioned, StoreError> {
        let path = self.layout_path();
        blocking(move || Self::read_layout(&path)).await
    }

    async fn compare_and_swap(
        &self,
        expected_epoch: u64,
        new: &ClusterLayout,
    ) -> Result<Versioned, StoreError> {
        super::check_successor(expected_epoch, new)?;
        let (this, new) = (self.clone(), new.clone());
        blocking(move || this.cas_blocking(expected_epoch, new)).await
    }

    async fn watch(
        &self,
        after_revision: u64,
    ) -> Result<BoxStream<'static, Result<Versioned, StoreError>>, StoreError> {
        let path = self.layout_path();
        let poll = self.poll;
        let stream = futures::stream::unfold(after_revision, move |mut seen| {
            let path = path.clone();
            async move {
                loop {
                    let p = path.clone();
                    match blocking(move || Self::read_layout(&p)).await {
                        Ok(v) if v.revision > seen => {
                            seen = v.revision;
                            return Some((Ok(v), seen));
                        }
                        Ok(_) => tokio::time::sleep(poll).await,
                        Err(e) => return Some((Err(e), seen)),
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn register_node(
        &self,
        record: NodeRecord,
        ttl: Duration,
    ) -> Result<NodeLease, StoreError> {
        let path = self.node_path(record.id.as_str());
        let write = {
            let path = path.clone();
            let record = record.clone();
            move || {
                let file = NodeFile {
                    format_version: FILE_FORMAT_VERSION,
                    expires_at_ms: now_millis() + ttl.as_millis() as i64,
                    record: record.clone(),
                };
                let bytes = serde_json::to_vec(&file)
                    .map_err(|e| StoreError::Invalid(format!("node record: {e}")))?;
                write_atomically(&path, &bytes)
            }
        };
        let first = write.clone();
        blocking(first).await?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(50)));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {
                        if let Err(e) = blocking(write.clone()).await {
                            tracing::warn!(error = %e, "node lease heartbeat failed");
                        }
                    }
                }
            }
            let _ = tokio::task::spawn_blocking(move || fs::remove_file(&path)).await;
        });
        Ok(NodeLease::new(stop_tx, task))
    }

    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let dir = self.dir.join("nodes");
        blocking(move || {
            let now = now_millis();
            let mut out = Vec::new();
            for entry in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
                let path = entry.map_err(|e| io_err(&dir, e))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                // A record being replaced or removed right now is simply skipped this time.
                let Ok(bytes) = fs::read(&path) else { continue };
                let Ok(file) = serde_json::from_slice::<NodeFile>(&bytes) else { continue };
                if file.expires_at_ms > now {
                    out.push(file.record);
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn put_record(&self, kind: Records, id: &str, record: &[u8]) -> Result<(), StoreError> {
        crate::ids::validate_id("record id", id)
            .map_err(|e| StoreError::Invalid(e.message().to_owned()))?;
        let dir = self.dir.join(kind.dir());
        let (path, record) = (dir.join(id), record.to_vec());
        blocking(move || {
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            write_atomically(&path, &record)
        })
        .await
    }

    async fn records(&self, kind: Records) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = self.dir.join(kind.dir());
        blocking(move || {
            let mut out = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(io_err(&dir, e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| io_err(&dir, e))?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
                else {
                    continue;
                };
                if name.contains(".tmp.") {
                    continue;
                }
                out.push((name, fs::read(&path).map_err(|e| io_err(&path, e))?));
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn delete_record(&self, kind: Records, id: &str) -> Result<(), StoreError> {
        crate::ids::validate_id("record id", id)
            .map_err(|e| StoreError::Invalid(e.message().to_owned()))?;
        let path = self.dir.join(kind.dir()).join(id);
        blocking(move || match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(()),
        })
        .await
    }

    async fn watch_records(
        &self,
        kind: Records,
    ) -> Result<BoxStream<'static, Result<(), StoreError>>, StoreError> {
        // Files have no watch here: the folder's names, sizes and times, compared every 200 ms.
        let dir = self.dir.join(kind.dir());
        let signature = move |dir: &Path| -> Vec<(String, u64, Option<std::time::SystemTime>)> {
            let mut out: Vec<_> = fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        meta.len(),
                        meta.modified().ok(),
                    ))
                })
                .collect();
            out.sort();
            out
        };
        let first = signature(&dir);
        let out = futures::stream::unfold((dir, first), move |(dir, mut seen)| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = signature(&dir);
                if now != seen {
                    seen = now;
                    return Some((Ok(()), (dir, seen)));
                }
            }
        });
        Ok(Box::pin(out))
    }

    async fn lead(&self, name: &str, _ttl: Duration) -> Result<Leadership, StoreError> {
        crate::ids::validate_id("leadership name", name)
            .map_err(|e| StoreError::Invalid(e.message().to_owned()))?;
        // An exclusive lock on a file: the OS releases it when the holder dies.
        let path = self.dir.join(format!("lead-{name}.lock"));
        let file = blocking(move || lock_file(&path)).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stop_rx.await;
            drop(file);
        });
        let (_lost_tx, lost) = tokio::sync::watch::channel(false);
        // The sender is dropped: a file lock is never lost while the process lives.
        Ok(Leadership { hold: NodeLease::new(stop_tx, task), lost })
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::layout::LayoutNode;
    use futures::StreamExt;

    fn node(id: &str) -> LayoutNode {
        LayoutNode { id: NodeId::parse(id).expect("id"), addr: "127.0.0.1:1".into() }
    }

    #[tokio::test]
    async fn cas_persists_and_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let empty = store.load().await.expect("load");
        assert_eq!((empty.revision, empty.layout.epoch), (0, 0));
        let one = empty.layout.with_node(node("a"));
        let stored = store.compare_and_swap(0, &one).await.expect("cas");
        assert_eq!(stored.revision, 1);
        // The same expectation again loses.
        match store.compare_and_swap(0, &one).await {
            Err(StoreError::Conflict { current, .. }) => assert_eq!(current.layout.epoch, 1),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // A wrong epoch step is refused outright.
        assert!(matches!(store.compare_and_swap(1, &one).await, Err(StoreError::Invalid(_))));
        // Reopening finds it again, with the terms the store stamped.
        let again = EmbeddedStore::open(dir.path()).expect("reopen").load().await.expect("load");
        assert_eq!(again.layout, stored.layout);
        assert_eq!(again.layout, one.stamped_after(&empty.layout));
        assert_eq!(again.layout.terms.as_ref().map(|t| t.base), Some(1), "every term starts at 1");
    }

    #[tokio::test]
    async fn concurrent_cas_has_exactly_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let base = store.load().await.expect("load").layout;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let next = base.with_node(node(&format!("n{i}")));
            tasks.push(tokio::spawn(async move { store.compare_and_swap(0, &next).await }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn a_record_watch_reports_writes_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let mut changes = store.watch_records(Records::Keys).await.expect("watch");
        store.put_record(Records::Keys, "k1", b"one").await.expect("put");
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        assert!(matches!(seen, Ok(Some(Ok(())))), "{seen:?}");
        store.delete_record(Records::Keys, "k1").await.expect("delete");
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        assert!(matches!(seen, Ok(Some(Ok(())))), "{seen:?}");
        // Another collection's writes are not reported.
        store.put_record(Records::Limits, "t", b"{}").await.expect("put");
        assert!(tokio::time::timeout(Duration::from_millis(600), changes.next()).await.is_err());
    }

    #[tokio::test]
    async fn watch_sees_later_changes_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path())
            .expect("open")
            .with_poll_interval(Duration::from_millis(10));
        let mut watch = store.watch(0).await.expect("watch");
        let l1 = ClusterLayout::default().with_node(node("a"));
        store.compare_and_swap(0, &l1).await.expect("cas");
        let seen =
            tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("in time");
        let seen = seen.expect("item").expect("ok");
        assert_eq!(seen.layout.epoch, 1);
        // A watch resumed after revision 1 does not repeat it, but sees the next change.
        let mut resumed = store.watch(seen.revision).await.expect("watch");
        store.compare_and_swap(1, &l1.with_node(node("b"))).await.expect("cas");
        let next =
            tokio::time::timeout(Duration::from_secs(5), resumed.next()).await.expect("in time");
        assert_eq!(next.expect("item").expect("ok").layout.epoch, 2);
    }

    #[tokio::test]
    async fn node_records_live_with_their_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let record = NodeRecord {
            id: NodeId::parse("a").expect("id"),
            addr: "127.0.0.1:9".into(),
            version: "test".into(),
            started_at_ms: 0,
        };
        let lease =
            store.register_node(record.clone(), Duration::from_secs(5)).await.expect("register");
        assert_eq!(store.live_nodes().await.expect("list"), vec![record]);
        lease.revoke().await;
        assert!(store.live_nodes().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn journal_records_persist_until_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store.put_job("m-2", b"two").await.expect("put");
        store.put_job("m-1", b"one").await.expect("put");
        store.put_job("m-1", b"uno").await.expect("replace");
        assert!(store.put_job("../x", b"no").await.is_err());
        let again = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            again.jobs().await.expect("jobs"),
            vec![("m-1".into(), b"uno".to_vec()), ("m-2".into(), b"two".to_vec())]
        );
        again.delete_job("m-1").await.expect("delete");
        again.delete_job("m-1").await.expect("deleting twice is fine");
        assert_eq!(again.jobs().await.expect("jobs").len(), 1);
    }

    #[tokio::test]
    async fn an_expired_record_is_not_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let file = NodeFile {
            format_version: 1,
            expires_at_ms: now_millis() - 1,
            record: NodeRecord {
                id: NodeId::parse("dead").expect("id"),
                addr: "x".into(),
                version: "v".into(),
                started_at_ms: 0,
            },
        };
        fs::write(store.node_path("dead"), serde_json::to_vec(&file).expect("json"))
            .expect("write");
        assert!(store.live_nodes().await.expect("list").is_empty());
    }
}
