//! Per-tenant rate limits and quotas at the router (`memring_common::limits`).
//!
//! - **Rates**: a token bucket per tenant for requests and one for written body bytes, refilled
//!   continuously at the configured rate times this router's `limit_share`, holding at most one
//!   second's worth. A request that finds too few tokens is a 429 whose `Retry-After` is when
//!   enough will be there, and whose message names the limit. Several routers split a tenant's
//!   budget: each enforces `rate × limit_share` (set `limit_share = 1/N` for N routers behind one
//!   load balancer); nothing is shared between routers per request.
//! - **Quotas**: with a `max_memories` or `max_bytes` in force, the router sums each tenant's
//!   stored memories and bytes every 2 s from what changed in the shard nodes' partition lists
//!   (`common/src/usage.rs`); a write while the tenant is at a quota is a 403 `quota_exceeded` (deletes
//!   still pass). A tenant can overshoot by what it writes within one refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memring_common::limits::TenantLimits;
use memring_common::store::RingStore;
use memring_common::watcher::RingView;
use memring_common::{ApiError, ErrorCode, TenantId};
use parking_lot::{Mutex, RwLock};

/// A token bucket that may go into debt by one oversized take.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Self {
        Self { tokens: rate, at: now }
    }

    /// Takes `n` tokens at `rate`/s (capacity one second's worth), or says how long to wait.
    fn take(&mut self, rate: f64, n: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + rate * elapsed).min(rate);
        self.at = now;
        // A take larger than the whole bucket passes when the bucket is full, then repays.
        if self.tokens >= n.min(rate) {
            self.tokens -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64((n.min(rate) - self.tokens) / rate))
    }
}

#[derive(Default)]
struct Buckets {
    requests: Option<Bucket>,
    bytes: Option<Bucket>,
    used: Option<Instant>,
}

/// The router's view of every tenant's limits, their buckets, and stored-memory counts.
pub struct Limiter {
    store: Arc<dyn RingStore>,
    ring: Arc<RingView>,
    client: memring_common::internal::InternalClient,
    share: f64,
    limits: RwLock<(TenantLimits, HashMap<String, TenantLimits>)>,
    buckets: Mutex<HashMap<TenantId, Buckets>>,
    /// The copies the stored counts are summed from.
    usage: Mutex<memring_common::usage::Usage>,
}

impl Limiter {
    /// A limiter enforcing `share` of every rate (see the module notes).
    pub fn new(
        store: Arc<dyn RingStore>,
        ring: Arc<RingView>,
        share: f64,
        credential: Arc<memring_common::internal::ClusterCredential>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = memring_common::tls::http_client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
            .build()?;
        let client = memring_common::internal::InternalClient::new(client, credential);
        Ok(Arc::new(Self {
            store,
            ring,
            client,
            share,
            limits: RwLock::new((TenantLimits::default(), HashMap::new())),
            buckets: Mutex::new(HashMap::new()),
            usage: Mutex::new(memring_common::usage::Usage::default()),
        }))
    }

    fn limits_of(&self, tenant: &TenantId) -> TenantLimits {
        let limits = self.limits.read();
        match limits.1.get(tenant.as_str()) {
            Some(own) => own.over(&limits.0),
            None => limits.0.clone(),
        }
    }

    /// One request of `tenant`: 429 when it is over its request rate.
    pub fn check_request(&self, tenant: &TenantId) -> Result<(), ApiError> {
        let Some(rate) = self.limits_of(tenant).requests_per_sec else { return Ok(()) };
        self.take(tenant, "requests_per_sec", rate * self.share, 1.0, |b| &mut b.requests)
    }

    /// A write of `bytes` request-body bytes: 429 over the byte rate, 403 at the quota.
    pub fn check_write(&self, tenant: &TenantId, bytes: usize) -> Result<(), ApiError> {
        let limits = self.limits_of(tenant);
        let (memories, stored_bytes) =
            self.usage.lock().sums().get(tenant.as_str()).copied().unwrap_or((0, 0));
        for (what, quota, have) in [
            ("max_memories", limits.max_memories, memories),
            ("max_bytes", limits.max_bytes, stored_bytes),
        ] {
            if let Some(max) = quota
                && have >= max
            {
                return Err(ApiError::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "tenant {tenant} stores {have} against its quota {what} = {max}; delete \
                         some memories or ask for a higher quota"
                    ),
                ));
            }
        }
        let Some(rate) = limits.write_bytes_per_sec else { return Ok(()) };
        self.take(tenant, "write_bytes_per_sec", rate * self.share, bytes as f64, |b| &mut b.bytes)
    }

    fn take(
        &self,
        tenant: &TenantId,
        limit: &str,
        rate: f64,
        n: f64,
        which: impl Fn(&mut Buckets) -> &mut Option<Bucket>,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let entry = buckets.entry(tenant.clone()).or_default();
        entry.used = Some(now);
        let bucket = which(entry).get_or_insert_with(|| Bucket::full(rate, now));
        bucket.take(rate, n, now).map_err(|wait| {
            metrics::counter!("memring_router_rate_limited_total", "limit" => limit.to_owned())
                .increment(1);
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "tenant {tenant} is over its {limit} limit ({rate:.0}/s at this router); \
                     retry after the Retry-After seconds"
                ),
            )
            .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u32)
        })
    }

    /// Reloads the limits every second (and, with quotas in force, the stored-memory counts
    /// every two) until `stop` turns true.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut round = 0u64;
        loop {
            match memring_common::limits::load(self.store.as_ref()).await {
                Ok((defaults, tenants)) => {
                    *self.limits.write() = (defaults, tenants.into_iter().collect());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tenant limits not reloaded; keeping the ones known")
                }
            }
            let quotas = {
                let limits = self.limits.read();
                limits.0.has_quota() || limits.1.values().any(TenantLimits::has_quota)
            };
            if quotas && round.is_multiple_of(2) {
                self.count_stored().await;
            }
            // Forget buckets idle for a minute (they refill to full anyway).
            self.buckets
                .lock()
                .retain(|_, b| b.used.is_some_and(|at| at.elapsed() < Duration::from_secs(60)));
            round += 1;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Sums each tenant's memories and bytes over the owners' copies of its partitions, from
    /// what changed on each node since the last refresh (`common/src/usage.rs`).
    async fn count_stored(&self) {
        let ring = self.ring.ring();
        for node in &ring.layout().nodes {
            let query = self.usage.lock().query(&node.id);
            let url = format!("http://{}/internal/v1/partitions{query}", node.addr);
            let Ok(resp) = self.client.get(url).send().await else { return };
            let Ok(list) = resp.json::<memring_common::api::PartitionList>().await else { return };
            self.usage.lock().apply(&ring, &node.id, list);
        }
        self.usage.lock().retain_nodes(&ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_says_when_to_come_back() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10.0, t0);
        for _ in 0..10 {
            assert!(b.take(10.0, 1.0, t0).is_ok());
        }
        let wait = b.take(10.0, 1.0, t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take(10.0, 1.0, t0 + Duration::from_millis(100)).is_ok());
        // An oversized take passes on a full bucket and is repaid before the next one.
        let mut big = Bucket::full(100.0, t0);
        assert!(big.take(100.0, 250.0, t0).is_ok());
        assert!(big.take(100.0, 1.0, t0 + Duration::from_secs(1)).is_err());
        assert!(big.take(100.0, 1.0, t0 + Duration::from_millis(2600)).is_ok());
    }
}
