//! A process's live view of the ring, kept current by watching the ring store.
//!
//! [`RingView`] holds the newest [`Ring`] behind a lock that is only taken to clone an `Arc`, so
//! request paths never wait on the store. A background task follows the store's watch stream,
//! resuming from the last revision after an error with capped exponential backoff; while the store
//! is unreachable the last ring keeps serving, and the view reports itself stale (a metric and a
//! log line) until the store answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;

use crate::clock::now_millis;
use crate::ring::Ring;
use crate::store::{RingStore, StoreError, Versioned};

/// The current ring plus the means to refresh it.
pub struct RingView {
    store: Arc<dyn RingStore>,
    current: RwLock<(u64, Arc<Ring>)>,
    loaded: AtomicBool,
    stale: AtomicBool,
    watch_paused: AtomicBool,
    last_contact_ms: AtomicI64,
    /// The epoch of every ring installed, for tasks that must act on a change at once.
    epochs: tokio::sync::watch::Sender<u64>,
}

impl RingView {
    /// A view that has not loaded anything yet (its ring is empty at epoch 0).
    pub fn new(store: Arc<dyn RingStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            current: RwLock::new((0, Arc::new(Ring::new(Default::default())))),
            loaded: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            watch_paused: AtomicBool::new(false),
            last_contact_ms: AtomicI64::new(0),
            epochs: tokio::sync::watch::channel(0).0,
        })
    }

    /// The newest ring seen.
    pub fn ring(&self) -> Arc<Ring> {
        self.current.read().1.clone()
    }

    /// A receiver that is told the epoch of each ring this view installs.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epochs.subscribe()
    }

    /// True once a layout has been loaded from the store.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// True while the store cannot be reached (the ring may be out of date).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Stops (or resumes) taking layouts from the watch; explicit [`RingView::refresh`] still
    /// works. Tests use it to hold a router at a stale epoch on purpose.
    pub fn set_watch_paused(&self, paused: bool) {
        self.watch_paused.store(paused, Ordering::Release);
    }

    /// Installs `v` if it is newer than what the view holds. Returns true if it was installed.
    pub fn install(&self, v: Versioned) -> bool {
        let mut current = self.current.write();
        let installed = if v.layout.epoch > current.1.epoch() || !self.is_loaded() {
            let epoch = v.layout.epoch;
            *current = (v.revision, Arc::new(Ring::new(v.layout)));
            metrics::gauge!("memring_ring_epoch").set(epoch as f64);
            tracing::info!(epoch, revision = current.0, "ring updated");
            self.epochs.send_replace(epoch);
            true
        } else {
            false
        };
        self.loaded.store(true, Ordering::Release);
        installed
    }

    /// Makes sure this view has seen layout epoch `epoch`: refreshes if it is behind, and
    /// answers 503 if the store still shows an older one.
    pub async fn reach(&self, epoch: u64) -> Result<(), crate::ApiError> {
        if self.ring().epoch() < epoch {
            let _ = self.refresh().await;
        }
        let seen = self.ring().epoch();
        if seen < epoch {
            return Err(crate::ApiError::unavailable(
                format!("this node has seen layout epoch {seen}, not yet {epoch}"),
                1,
            ));
        }
        Ok(())
    }

    /// Reads the layout from the store now (after a 421, or at start-up).
    pub async fn refresh(&self) -> Result<Arc<Ring>, StoreError> {
        match self.store.load().await {
            Ok(v) => {
                self.mark_contact(true);
                self.install(v);
                Ok(self.ring())
            }
            Err(e) => {
                self.mark_contact(false);
                Err(e)
            }
        }
    }

    fn mark_contact(&self, ok: bool) {
        if ok {
            self.last_contact_ms.store(now_millis(), Ordering::Release);
            if self.stale.swap(false, Ordering::AcqRel) {
                tracing::info!(store = %self.store.describe(), "ring store reachable again");
            }
            metrics::gauge!("memring_ring_stale").set(0.0);
        } else {
            if !self.stale.swap(true, Ordering::AcqRel) {
                tracing::warn!(store = %self.store.describe(), "ring store unreachable; serving with the last ring seen");
            }
            metrics::gauge!("memring_ring_stale").set(1.0);
        }
    }

    /// Follows the store until `shutdown` resolves. Spawn it once per process.
    pub async fn follow(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let after = self.current.read().0;
            let result = async {
                let mut stream = self.store.watch(after).await?;
                self.mark_contact(true);
                while let Some(item) = stream.next().await {
                    let v = item?;
                    self.mark_contact(true);
                    if !self.watch_paused.load(Ordering::Acquire) {
                        self.install(v);
                    }
                }
                Err::<std::convert::Infallible, _>(StoreError::Unavailable(
                    "watch stream ended".into(),
                ))
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                res = result => {
                    let Err(e) = res;
                    self.mark_contact(false);
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "ring watch interrupted");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // A fresh load catches up on anything the watch missed while it was down.
            if self.refresh().await.is_ok() {
                backoff = Duration::from_millis(100);
            }
        }
    }
}
