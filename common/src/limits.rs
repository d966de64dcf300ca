//! Per-tenant limits (stored in the ring store, `Records::Limits`): request and written-byte
//! rates, enforced by routers with token buckets, and quotas on memories stored.
//!
//! The record `_default` holds the defaults; a record named after a tenant overrides any of
//! its fields for that tenant. A missing field means "no limit".

use serde::{Deserialize, Serialize};

use crate::store::{Records, RingStore, StoreError};

/// The name of the defaults record.
pub const DEFAULTS: &str = "_default";

/// One tenant's limits (or the defaults). `None`: unlimited (or: use the default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests per second (sustained; bursts up to one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Request-body bytes written per second (writes and batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_per_sec: Option<f64>,
    /// Memories the tenant may store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memories: Option<u64>,
    /// Bytes of memories (id, content, metadata, embedding) the tenant may store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl TenantLimits {
    /// `self` with every unset field taken from `defaults`.
    pub fn over(&self, defaults: &TenantLimits) -> TenantLimits {
        TenantLimits {
            requests_per_sec: self.requests_per_sec.or(defaults.requests_per_sec),
            write_bytes_per_sec: self.write_bytes_per_sec.or(defaults.write_bytes_per_sec),
            max_memories: self.max_memories.or(defaults.max_memories),
            max_bytes: self.max_bytes.or(defaults.max_bytes),
        }
    }

    /// Whether a quota (memories or bytes) is set.
    pub fn has_quota(&self) -> bool {
        self.max_memories.is_some() || self.max_bytes.is_some()
    }

    /// Refuses rates that are not positive finite numbers.
    pub fn validate(&self) -> Result<(), crate::ApiError> {
        for (name, v) in [
            ("requests_per_sec", self.requests_per_sec),
            ("write_bytes_per_sec", self.write_bytes_per_sec),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(crate::ApiError::invalid(format!("{name} must be a positive number")));
            }
        }
        Ok(())
    }
}

/// Every limits record: the defaults and the per-tenant overrides.
pub async fn load(
    store: &dyn RingStore,
) -> Result<(TenantLimits, Vec<(String, TenantLimits)>), StoreError> {
    let mut defaults = TenantLimits::default();
    let mut tenants = Vec::new();
    for (id, bytes) in store.records(Records::Limits).await? {
        let Ok(limits) = serde_json::from_slice::<TenantLimits>(&bytes) else {
            tracing::warn!(record = %id, "limits record unreadable; ignored");
            continue;
        };
        if id == DEFAULTS {
            defaults = limits;
        } else {
            tenants.push((id, limits));
        }
    }
    Ok((defaults, tenants))
}
