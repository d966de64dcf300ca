//! API keys (API.md, "Auth and tenants"): a tenant key reaches only its own tenant; an admin
//! key reaches every tenant, may write `global` memories and runs the control plane; an operator
//! key only reads the cluster's state (the control plane's `/v1/cluster` and operator page, a
//! router's ring) and reaches no tenant's data.
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
    /// Every tenant, `global` writes, and every control-plane action.
    Admin,
    /// Reads the cluster's state (placement, nodes, jobs); no tenant's data, no change.
    Operator,
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
            Principal::Operator => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "an operator key reads the cluster's state; it cannot reach tenant {tenant}"
                ),
            )),
        }
    }

    /// 403 unless this principal may read the cluster's state (admin and operator keys);
    /// `what` completes "only an admin or operator key may …".
    pub fn allow_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin | Principal::Operator => Ok(()),
            Principal::Tenant(_) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("only an admin or operator key may {what}"),
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
            Principal::Tenant(_) | Principal::Operator => {
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

/// Decodes standard base64 (with or without padding); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits = text.trim_end_matches('=').as_bytes();
    if digits.len() % 4 == 1 || text.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= u32::from(value(*c)?) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
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

    /// Who the `Authorization` header's key acts as: 401 if it is missing, malformed, unknown
    /// or revoked. The key comes as `Bearer <key>`, or as the password of `Basic` credentials
    /// (what a browser sends for the control plane's operator page; the user name is ignored).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        self.authenticate_key(authorization).map(|(_, principal)| principal)
    }

    /// [`KeyCache::authenticate`], with the key's id (for the audit log).
    pub fn authenticate_key(
        &self,
        authorization: Option<&str>,
    ) -> Result<(String, Principal), ApiError> {
        let unauthorized = |why: &str| ApiError::new(ErrorCode::Unauthorized, why.to_owned());
        let header = authorization.ok_or_else(|| {
            unauthorized("this endpoint requires an API key: send Authorization: Bearer <key>")
        })?;
        let basic = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .and_then(|b| base64_decode(b.trim()))
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, key)| key.to_owned()));
        let token = match &basic {
            Some(key) => key.as_str(),
            None => header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <key>\""))?,
        };
        let (id, secret) =
            parse_token(token).ok_or_else(|| unauthorized("the API key is not valid"))?;
        let keys = self.keys.read();
        match keys.get(id) {
            Some(record) if record.accepts(secret) => Ok((id.to_owned(), record.principal.clone())),
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
    fn basic_credentials_carry_the_key_as_their_password() {
        assert_eq!(base64_decode("b3A6bXJr").as_deref(), Some(&b"op:mrk"[..]));
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI").as_deref(), Some(&b"ab"[..]));
        assert!(base64_decode("a").is_none() && base64_decode("!!!!").is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn RingStore> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).expect("store"));
        let cache = KeyCache::new(store);
        let (record, token) = KeyRecord::generate(Principal::Operator, "ops", 1);
        cache.keys.write().insert(record.id.clone(), record);
        let encode = |raw: &[u8]| {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            raw.chunks(3)
                .flat_map(|c| {
                    let n = (u32::from(c[0]) << 16)
                        | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                        | u32::from(*c.get(2).unwrap_or(&0));
                    (0..=c.len()).map(move |i| A[((n >> (18 - 6 * i)) & 63) as usize] as char)
                })
                .collect::<String>()
        };
        let basic = format!("Basic {}", encode(format!("anyone:{token}").as_bytes()));
        assert_eq!(cache.authenticate(Some(&basic)).expect("basic"), Principal::Operator);
        assert_eq!(
            cache.authenticate(Some(&format!("Bearer {token}"))).expect("bearer"),
            Principal::Operator
        );
        let wrong = format!("Basic {}", encode(b"anyone:mrk_nope"));
        assert_eq!(cache.authenticate(Some(&wrong)).expect_err("wrong").status(), 401);
        let ops = Principal::Operator;
        assert!(ops.allow_operator("read").is_ok());
        assert_eq!(ops.allow_admin("change").expect_err("admin").status(), 403);
        assert_eq!(
            ops.allow_tenant(&TenantId::parse("acme").expect("t")).expect_err("t").status(),
            403
        );
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
