//! API keys (API.md, "Auth and tenants"): a tenant key reaches only its own tenant; an admin
//! key reaches every tenant and may write `global` memories.
//!
//! A key is `mrk_<id>_<secret>`: `id` (16 hex digits) names its record in the ring store, and
//! `secret` (64 hex digits, 256 random bits) is never stored — only `SHA-256(salt ‖ secret)`
//! with a random salt per key. Checking a key hashes the presented secret and compares digests
//! in constant time. Routers keep every record in memory ([`KeyCache`]), reloaded when the
//! store's watch reports a change to the key records (and every 30 s besides), so a new or
//! revoked key takes effect everywhere within moments.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};
use crate::ids::TenantId;
use crate::store::{Records, RingStore};

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// Every tenant, and `global` writes.
    Admin,
    /// One tenant.
    Tenant(TenantId),
}

impl Principal {
    /// 403 unless this principal may act on `tenant`.
    pub fn allow_tenant(&self, tenant: &TenantId) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant(own) if own == tenant => Ok(()),
            Principal::Tenant(own) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this key belongs to tenant {own}; it cannot reach tenant {tenant}"),
            )),
        }
    }

    /// 403 unless this principal may write `global` memories (admin keys only).
    pub fn allow_global_write(&self) -> Result<(), ApiError> {
        self.allow_admin("write or delete global memories; tenant keys may search them")
    }

    /// 403 unless this is an admin key; `what` completes "only an admin key may …".
    pub fn allow_admin(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant(_) => {
                Err(ApiError::new(ErrorCode::Forbidden, format!("only an admin key may {what}")))
            }
        }
    }
}

/// A key as stored: who it is for and a salted hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id (the record's name in the store).
    pub id: String,
    /// Who the key acts as.
    pub principal: Principal,
    /// An operator's note.
    #[serde(default)]
    pub label: String,
    /// When it was made, unix ms.
    pub created_at_ms: i64,
    /// Random salt, hex.
    salt: String,
    /// SHA-256(salt ‖ secret), hex.
    hash: String,
}

impl KeyRecord {
    /// Makes a new key for `principal`: the record to store and the key to hand out once.
    pub fn generate(principal: Principal, label: &str, now_ms: i64) -> (Self, String) {
        let id = hex(&rand::random::<[u8; 8]>());
        let secret = hex(&rand::random::<[u8; 32]>());
        let salt = hex(&rand::random::<[u8; 16]>());
        let hash = digest(&salt, &secret);
        let token = format!("mrk_{id}_{secret}");
        (Self { id, principal, label: label.to_owned(), created_at_ms: now_ms, salt, hash }, token)
    }

    /// Whether `secret` is this key's, compared in constant time.
    fn accepts(&self, secret: &str) -> bool {
        digest(&self.salt, secret).as_bytes().ct_eq(self.hash.as_bytes()).into()
    }
}

fn digest(salt: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(secret.as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `mrk_<id>_<secret>`; `None` for anything else.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("mrk_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexlike = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexlike(id, 16) && hexlike(secret, 64)).then_some((id, secret))
}

/// Every key record, kept in memory and reloaded from the ring store.
pub struct KeyCache {
    store: Arc<dyn RingStore>,
    keys: RwLock<HashMap<String, KeyRecord>>,
}

impl KeyCache {
    /// An empty cache over `store`; call [`KeyCache::reload`] or [`KeyCache::keep_fresh`].
    pub fn new(store: Arc<dyn RingStore>) -> Arc<Self> {
        Arc::new(Self { store, keys: RwLock::new(HashMap::new()) })
    }

    /// Reads every key record from the store (kept as they were if the store cannot be read).
    pub async fn reload(&self) -> Result<usize, crate::store::StoreError> {
        let mut keys = HashMap::new();
        for (id, bytes) in self.store.records(Records::Keys).await? {
            match serde_json::from_slice::<KeyRecord>(&bytes) {
                Ok(record) if record.id == id => {
                    keys.insert(id, record);
                }
                _ => tracing::warn!(key = %id, "key record unreadable; ignored"),
            }
        }
        let n = keys.len();
        *self.keys.write() = keys;
        Ok(n)
    }

    /// [`KeyCache::reload`], keeping the known keys (and saying so) when the store cannot be read.
    async fn reload_logged(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "API keys not reloaded; keeping the ones known");
        }
    }

    /// Reloads whenever the store's key records change (a watch), and every 30 s besides,
    /// until `stop` turns true. After a watch error it reloads and watches again.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        use futures::StreamExt;
        loop {
            let watch = self.store.watch_records(Records::Keys).await;
            self.reload_logged().await;
            let Ok(mut changes) = watch else {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    change = changes.next() => match change {
                        Some(Ok(())) => {
                            self.reload_logged().await;
                        }
                        // The watch broke: reload and watch again after a pause.
                        _ => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {
                        self.reload_logged().await;
                    }
                }
            }
        }
    }

    /// Who the `Authorization` header's bearer key acts as: 401 if it is missing, malformed,
    /// unknown or revoked.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let unauthorized = |why: &str| ApiError::new(ErrorCode::Unauthorized, why.to_owned());
        let header = authorization.ok_or_else(|| {
            unauthorized("this router requires an API key: send Authorization: Bearer <key>")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <key>\""))?;
        let (id, secret) =
            parse_token(token).ok_or_else(|| unauthorized("the API key is not valid"))?;
        let keys = self.keys.read();
        match keys.get(id) {
            Some(record) if record.accepts(secret) => Ok(record.principal.clone()),
            _ => Err(unauthorized("the API key is not valid (unknown or revoked)")),
        }
    }
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not held across awaits).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Stores a new key for `principal` and returns its record and the key itself (shown once).
pub async fn create_key(
    store: &dyn RingStore,
    principal: Principal,
    label: &str,
) -> Result<(KeyRecord, String), crate::store::StoreError> {
    let (record, token) = KeyRecord::generate(principal, label, crate::clock::now_millis());
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| crate::store::StoreError::Invalid(format!("key record: {e}")))?;
    store.put_record(Records::Keys, &record.id, &bytes).await?;
    Ok((record, token))
}

/// Every key record (secrets are not stored, so none is shown).
pub async fn list_keys(store: &dyn RingStore) -> Result<Vec<KeyRecord>, crate::store::StoreError> {
    Ok(store
        .records(Records::Keys)
        .await?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_only_its_own_secret_and_the_stored_record_holds_no_secret() {
        let tenant = Principal::Tenant(TenantId::parse("acme").expect("tenant"));
        let (record, token) = KeyRecord::generate(tenant.clone(), "ci", 1);
        let (id, secret) = parse_token(&token).expect("well formed");
        assert_eq!(id, record.id);
        assert!(record.accepts(secret));
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!record.accepts(&wrong));
        let stored = serde_json::to_string(&record).expect("json");
        assert!(!stored.contains(secret), "{stored}");
        for bad in ["", "mrk_", "mrk_zz_yy", &token[..token.len() - 1], "Bearer x"] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_keys_stay_in_their_tenant_and_only_admins_write_global() {
        let acme = TenantId::parse("acme").expect("tenant");
        let other = TenantId::parse("other").expect("tenant");
        let key = Principal::Tenant(acme.clone());
        assert!(key.allow_tenant(&acme).is_ok());
        assert_eq!(key.allow_tenant(&other).expect_err("other").status(), 403);
        assert_eq!(key.allow_global_write().expect_err("global").status(), 403);
        assert!(Principal::Admin.allow_tenant(&other).is_ok());
        assert!(Principal::Admin.allow_global_write().is_ok());
    }
}
