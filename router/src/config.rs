//! The router's configuration: defaults → TOML (`--config`) → `MEMRING_*` env → flags.

use std::path::PathBuf;

use clap::Parser;
use memring_common::config::{check_addr, load_file, overlay};
use memring_common::store::{StoreArgs, StoreConfig};
use serde::Deserialize;

/// Settings of one router.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Address to listen on.
    pub listen: String,
    /// Where the ring store is (`ring_dir`, or `etcd` + `etcd_prefix`), at the top level of the file.
    #[serde(flatten)]
    pub store: StoreConfig,
    /// The cluster token its requests to shard nodes carry, at the top level of the file.
    #[serde(flatten)]
    pub internal: memring_common::internal::InternalAuthConfig,
    /// HTTPS on the public API (`tls_cert_file`, `tls_key_file`), at the top level of the file.
    #[serde(flatten)]
    pub tls: memring_common::tls::TlsConfig,
    /// Largest request body, bytes. Must admit a full batch (1000 × 1536 dims ≈ 20 MiB of JSON).
    pub body_limit_bytes: usize,
    /// Timeout of one forwarded write, get, list or delete, milliseconds.
    pub forward_timeout_ms: u64,
    /// Timeout of one scope's search; a scope slower than this is left out (`partial: true`).
    pub search_timeout_ms: u64,
    /// With replication, send reads (get, list, search) to a follower first; the owner answers
    /// when the follower is behind. Off: every read goes to the owner.
    pub replica_reads: bool,
    /// Require an API key (`Authorization: Bearer`) on every tenant request. Default: on in
    /// cluster mode (etcd), off on the embedded store (said loudly at start).
    pub auth: Option<bool>,
    /// This router's share of every tenant rate limit (set 1/N with N routers behind one load
    /// balancer); 0 < share <= 1.
    pub limit_share: f64,
    /// The embedder (`[embedder]` table): what turns text into vectors.
    pub embedder: crate::embed::EmbedderConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".into(),
            store: StoreConfig::default(),
            internal: Default::default(),
            tls: Default::default(),
            body_limit_bytes: 32 << 20,
            forward_timeout_ms: 10_000,
            search_timeout_ms: 2_000,
            replica_reads: true,
            auth: None,
            limit_share: 1.0,
            embedder: Default::default(),
        }
    }
}

/// Command-line flags (each also readable from its `MEMRING_*` variable).
#[derive(Debug, Parser)]
#[command(name = "memring-router", version, about = "memring router: the public API")]
pub struct RouterArgs {
    /// TOML config file.
    #[arg(long, env = "MEMRING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, host:port.
    #[arg(long, env = "MEMRING_LISTEN")]
    pub listen: Option<String>,
    /// Ring store flags.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The cluster token flags.
    #[command(flatten)]
    pub internal: memring_common::internal::InternalAuthArgs,
    /// TLS flags.
    #[command(flatten)]
    pub tls: memring_common::tls::TlsArgs,
    /// Largest request body in bytes.
    #[arg(long, env = "MEMRING_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Forward timeout in milliseconds.
    #[arg(long, env = "MEMRING_FORWARD_TIMEOUT_MS")]
    pub forward_timeout_ms: Option<u64>,
    /// Per-scope search timeout in milliseconds.
    #[arg(long, env = "MEMRING_SEARCH_TIMEOUT_MS")]
    pub search_timeout_ms: Option<u64>,
    /// Replica reads on or off (true/false).
    #[arg(long, env = "MEMRING_REPLICA_READS")]
    pub replica_reads: Option<bool>,
    /// API keys required (true/false); default true with etcd, false on the embedded store.
    #[arg(long, env = "MEMRING_AUTH")]
    pub auth: Option<bool>,
    /// Share of the tenant rate limits this router enforces.
    #[arg(long, env = "MEMRING_LIMIT_SHARE")]
    pub limit_share: Option<f64>,
    /// Embedder: none, builtin (all-MiniLM-L6-v2 on this CPU) or openai.
    #[arg(long, env = "MEMRING_EMBEDDER")]
    pub embedder: Option<crate::embed::EmbedderKind>,
    /// Directory of the built-in model's files (scripts/fetch-model.py fills it).
    #[arg(long, env = "MEMRING_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Threads of the built-in embedder.
    #[arg(long, env = "MEMRING_EMBED_THREADS")]
    pub embed_threads: Option<usize>,
    /// Most texts waiting for the built-in embedder.
    #[arg(long, env = "MEMRING_EMBED_QUEUE_TEXTS")]
    pub embed_queue_texts: Option<usize>,
    /// Base URL of an OpenAI-compatible embeddings service, up to /v1.
    #[arg(long, env = "MEMRING_OPENAI_URL")]
    pub openai_url: Option<String>,
    /// Model name to ask the OpenAI-compatible service for.
    #[arg(long, env = "MEMRING_OPENAI_MODEL")]
    pub openai_model: Option<String>,
    /// That model's vector length.
    #[arg(long, env = "MEMRING_OPENAI_DIMENSIONS")]
    pub openai_dimensions: Option<usize>,
    /// Environment variable that holds the service's API key.
    #[arg(long, env = "MEMRING_OPENAI_KEY_ENV")]
    pub openai_key_env: Option<String>,
    /// Timeout of one call to the service, milliseconds.
    #[arg(long, env = "MEMRING_OPENAI_TIMEOUT_MS")]
    pub openai_timeout_ms: Option<u64>,
    /// PEM file of certificate authorities to trust for an https:// service, besides the system's.
    #[arg(long, env = "MEMRING_OPENAI_CA_FILE")]
    pub openai_ca_file: Option<PathBuf>,
}

impl RouterArgs {
    /// Resolves the layers into a validated config.
    pub fn resolve(self) -> anyhow::Result<RouterConfig> {
        let mut c: RouterConfig = load_file(self.config.as_deref())?;
        overlay(&mut c.listen, self.listen);
        self.store.overlay(&mut c.store);
        self.internal.overlay(&mut c.internal);
        self.tls.overlay(&mut c.tls);
        overlay(&mut c.body_limit_bytes, self.body_limit_bytes);
        overlay(&mut c.forward_timeout_ms, self.forward_timeout_ms);
        overlay(&mut c.search_timeout_ms, self.search_timeout_ms);
        overlay(&mut c.replica_reads, self.replica_reads);
        overlay(&mut c.limit_share, self.limit_share);
        let e = &mut c.embedder;
        overlay(&mut e.kind, self.embedder);
        if self.model_dir.is_some() {
            e.model_dir = self.model_dir;
        }
        if self.embed_threads.is_some() {
            e.threads = self.embed_threads;
        }
        overlay(&mut e.queue_texts, self.embed_queue_texts);
        for (slot, value) in [
            (&mut e.openai_url, self.openai_url),
            (&mut e.openai_model, self.openai_model),
            (&mut e.openai_key_env, self.openai_key_env),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        if self.openai_dimensions.is_some() {
            e.openai_dimensions = self.openai_dimensions;
        }
        overlay(&mut e.openai_timeout_ms, self.openai_timeout_ms);
        if self.openai_ca_file.is_some() {
            e.openai_ca_file = self.openai_ca_file;
        }
        if self.auth.is_some() {
            c.auth = self.auth;
        }
        c.validate()?;
        Ok(c)
    }
}

impl RouterConfig {
    /// Checks every setting, naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_addr("listen", &self.listen)?;
        anyhow::ensure!(
            (1024..64 << 20).contains(&self.body_limit_bytes),
            "setting `body_limit_bytes` must be from 1024 up to (not including) 64 MiB, got {}",
            self.body_limit_bytes
        );
        anyhow::ensure!(
            self.forward_timeout_ms >= 10,
            "setting `forward_timeout_ms` must be at least 10"
        );
        anyhow::ensure!(
            self.limit_share > 0.0 && self.limit_share <= 1.0,
            "setting `limit_share` must be in (0, 1], got {}",
            self.limit_share
        );
        anyhow::ensure!(
            self.search_timeout_ms >= 10,
            "setting `search_timeout_ms` must be at least 10"
        );
        self.embedder.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_loads_and_validates() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/router.toml");
        let file: RouterConfig = load_file(Some(&path)).expect("deploy/config/router.toml loads");
        file.validate().expect("and validates");
        assert_eq!(file.body_limit_bytes, RouterConfig::default().body_limit_bytes);
    }

    #[test]
    fn a_body_limit_of_64_mib_is_refused() {
        let err = RouterArgs::parse_from(["memring-router", "--body-limit-bytes", "67108864"])
            .resolve()
            .expect_err("bad");
        assert!(err.to_string().contains("body_limit_bytes"), "{err}");
    }
}
