//! The credential of internal traffic — router → shard, shard → shard (replication, take-overs,
//! migration) and control plane → shard: a **cluster token** every process of one cluster
//! shares, sent in [`CLUSTER_TOKEN_HEADER`] and compared in constant time by shard nodes on every
//! `/internal/v1` and `/debug/v1` route. Why a token rather than mutual TLS is in
//! docs/operations.md ("Security").
//!
//! The token lives in a file (a mounted secret; never a flag or an environment value, which a
//! process list shows): one token per line, the **first is sent, every line is accepted**. The
//! file is read again every [`RELOAD_EVERY`] when it changes, so a token rotates without a
//! restart and without a failed request: `old` → `old⏎new` (both accepted everywhere) →
//! `new⏎old` (the new one sent) → `new`, each step once every process has read the last.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};

/// The header internal requests carry the cluster token in.
pub const CLUSTER_TOKEN_HEADER: &str = "x-memring-cluster-token";
/// How often a token file is checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Shortest token accepted (a generated one is 64 hex digits).
const MIN_TOKEN_LEN: usize = 32;

/// The tokens read from the file.
#[derive(Default)]
struct Tokens {
    /// The file's text they were read from (to see a change).
    text: String,
    /// The first token, as a header value: what this process sends.
    send: Option<http::HeaderValue>,
    /// Every token: what this process accepts.
    accept: Vec<Vec<u8>>,
}

/// A process's cluster credential: off (a single machine), or the tokens of a token file.
pub struct ClusterCredential {
    file: Option<PathBuf>,
    tokens: RwLock<Tokens>,
}

impl ClusterCredential {
    /// No internal authentication: nothing is sent, everything is accepted.
    pub fn off() -> Arc<Self> {
        Arc::new(Self { file: None, tokens: RwLock::new(Tokens::default()) })
    }

    /// The tokens of `file` (see the module notes); an error names what is wrong with it.
    pub fn from_file(file: &Path) -> anyhow::Result<Arc<Self>> {
        let credential =
            Self { file: Some(file.to_path_buf()), tokens: RwLock::new(Tokens::default()) };
        credential.reload()?;
        Ok(Arc::new(credential))
    }

    /// Whether internal requests must carry a token.
    pub fn is_on(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the token file again; true if its tokens changed. On an error (the file gone,
    /// empty, a token too short) the tokens known stay in force.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let Some(file) = &self.file else { return Ok(false) };
        let text = std::fs::read_to_string(file).map_err(|e| {
            anyhow::anyhow!("cannot read the cluster token file {}: {e}", file.display())
        })?;
        if text == self.tokens.read().text {
            return Ok(false);
        }
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        anyhow::ensure!(
            !lines.is_empty(),
            "the cluster token file {} holds no token (one per line; `memring-control token \
             generate {}` writes one)",
            file.display(),
            file.display()
        );
        for line in &lines {
            anyhow::ensure!(
                line.len() >= MIN_TOKEN_LEN && line.bytes().all(|b| b.is_ascii_graphic()),
                "a token in {} is shorter than {MIN_TOKEN_LEN} characters or not printable ASCII",
                file.display()
            );
        }
        let send = http::HeaderValue::from_str(lines[0]).map_err(|e| {
            anyhow::anyhow!("the first token in {} cannot be sent: {e}", file.display())
        })?;
        *self.tokens.write() = Tokens {
            send: Some(send),
            accept: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
            text,
        };
        Ok(true)
    }

    /// Re-reads the file every [`RELOAD_EVERY`] until `stop`; logs each change (never a token).
    pub async fn keep_fresh(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.is_on() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            match self.reload() {
                Ok(true) => {
                    let accepted = self.tokens.read().accept.len();
                    tracing::info!(target: "audit", action = "cluster_token.reload", accepted, "cluster token file changed");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cluster token file not reloaded; keeping the tokens known")
                }
            }
        }
    }

    /// The header value to send (none when off).
    pub fn token(&self) -> Option<http::HeaderValue> {
        self.tokens.read().send.clone()
    }

    /// 401 unless the request carries an accepted token (always Ok when off). Compared in
    /// constant time against every accepted token.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        if !self.is_on() {
            return Ok(());
        }
        let presented = headers.get(CLUSTER_TOKEN_HEADER).map(http::HeaderValue::as_bytes);
        let Some(presented) = presented else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("internal routes need the cluster token ({CLUSTER_TOKEN_HEADER})"),
            ));
        };
        let tokens = self.tokens.read();
        // Every token is compared (no early exit), each in constant time.
        let matched = tokens
            .accept
            .iter()
            .fold(subtle::Choice::from(0), |any, t| any | t.as_slice().ct_eq(presented));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Unauthorized, "the cluster token is not valid"))
        }
    }
}

/// A reqwest client for internal routes: every request carries the cluster token in force.
#[derive(Clone)]
pub struct InternalClient {
    inner: reqwest::Client,
    credential: Arc<ClusterCredential>,
}

impl InternalClient {
    /// Wraps `inner`; requests carry `credential`'s token.
    pub fn new(inner: reqwest::Client, credential: Arc<ClusterCredential>) -> Self {
        Self { inner, credential }
    }

    /// A request with the cluster token attached.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        let request = self.inner.request(method, url);
        match self.credential.token() {
            Some(token) => request.header(CLUSTER_TOKEN_HEADER, token),
            None => request,
        }
    }

    /// `GET url`.
    pub fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url)
    }

    /// `PUT url`.
    pub fn put(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, url)
    }

    /// `DELETE url`.
    pub fn delete(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, url)
    }

    /// The credential its requests carry.
    pub fn credential(&self) -> &Arc<ClusterCredential> {
        &self.credential
    }
}

/// Internal authentication settings, shared by every binary.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct InternalAuthConfig {
    /// The cluster token file (see the module notes).
    pub cluster_token_file: Option<PathBuf>,
    /// Require the cluster token on internal routes. Default: on in cluster mode (etcd), off on
    /// the embedded store of one machine.
    pub internal_auth: Option<bool>,
}

/// The internal authentication flags every binary shares.
#[derive(Debug, Default, clap::Args)]
pub struct InternalAuthArgs {
    /// File holding the cluster token (one per line: the first sent, every one accepted).
    #[arg(long, env = "MEMRING_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Require the cluster token on internal routes (true/false); default true with etcd.
    #[arg(long, env = "MEMRING_INTERNAL_AUTH")]
    pub internal_auth: Option<bool>,
}

impl InternalAuthArgs {
    /// Lays the given flags over `config` (flags win).
    pub fn overlay(self, config: &mut InternalAuthConfig) {
        crate::config::overlay(&mut config.cluster_token_file, self.cluster_token_file.map(Some));
        crate::config::overlay(&mut config.internal_auth, self.internal_auth.map(Some));
    }
}

impl InternalAuthConfig {
    /// The credential these settings give a process (`cluster_mode`: it runs on etcd). Says
    /// loudly when internal traffic goes unauthenticated in cluster mode.
    pub fn credential(
        &self,
        cluster_mode: bool,
        process: &str,
    ) -> anyhow::Result<Arc<ClusterCredential>> {
        match (self.internal_auth.unwrap_or(cluster_mode), &self.cluster_token_file) {
            (true, Some(file)) => ClusterCredential::from_file(file),
            (true, None) => anyhow::bail!(
                "cluster mode authenticates internal traffic: set cluster_token_file \
                 (--cluster-token-file, MEMRING_CLUSTER_TOKEN_FILE) to a file holding the \
                 cluster token (`memring-control token generate FILE` writes one), the same file \
                 for every process of the cluster; or internal_auth = false to run without"
            ),
            (false, _) => {
                if cluster_mode {
                    let warning = "INTERNAL AUTH IS OFF: anyone who can reach a shard node can \
                                   read and write every tenant's data through its internal routes.";
                    tracing::warn!("{warning}");
                    eprintln!("{process}: {warning}");
                }
                Ok(ClusterCredential::off())
            }
        }
    }
}

/// A new random cluster token: 64 hex digits (256 bits).
pub fn generate_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(CLUSTER_TOKEN_HEADER, http::HeaderValue::from_str(t).expect("value"));
        }
        h
    }

    #[test]
    fn the_first_token_is_sent_every_one_accepted_and_a_change_is_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        let (old, new) = (generate_token(), generate_token());
        std::fs::write(&file, format!("{old}\n")).expect("write");
        let c = ClusterCredential::from_file(&file).expect("credential");
        assert!(c.check(&headers(Some(&old))).is_ok());
        assert_eq!(c.check(&headers(Some(&new))).expect_err("new").status(), 401);
        assert_eq!(c.check(&headers(None)).expect_err("none").status(), 401);
        std::fs::write(&file, format!("{new}\n{old}\n")).expect("write");
        assert!(c.reload().expect("reload"));
        assert_eq!(c.token().expect("sent").to_str().expect("ascii"), new);
        assert!(c.check(&headers(Some(&old))).is_ok() && c.check(&headers(Some(&new))).is_ok());
        assert!(!c.reload().expect("unchanged"));
        // A broken file leaves the tokens in force.
        std::fs::write(&file, "short\n").expect("write");
        assert!(c.reload().is_err());
        assert!(c.check(&headers(Some(&new))).is_ok());
        assert!(ClusterCredential::off().check(&headers(None)).is_ok());
    }

    #[test]
    fn cluster_mode_needs_a_token_file_unless_internal_auth_is_switched_off() {
        let none = InternalAuthConfig::default();
        assert!(none.credential(true, "test").is_err());
        assert!(!none.credential(false, "test").expect("embedded").is_on());
        let off = InternalAuthConfig { internal_auth: Some(false), ..Default::default() };
        assert!(!off.credential(true, "test").expect("off").is_on());
    }
}
