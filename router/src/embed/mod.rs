//! Text to vectors on the router: the configured embedder (`builtin`, `openai` or `none`).
//!
//! - [`builtin`]: all-MiniLM-L6-v2 on candle, checked against the reference vectors
//! - [`pool`]: the bounded queue and the threads the built-in model runs on (micro-batching)
//! - [`openai`]: a client of any OpenAI-compatible `POST /v1/embeddings`
//!
//! The router embeds a text-only write's `content` before forwarding it, a `query` before a
//! vector or hybrid search, and serves `POST /v1/embeddings` itself.

pub mod builtin;
pub mod openai;
pub mod pool;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use memring_common::{ApiError, ErrorCode};
use serde::Deserialize;

pub use builtin::Embedding;

/// Which embedder a router runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// No embedder: text-only writes are stored without a vector, text queries are keyword only.
    None,
    /// all-MiniLM-L6-v2 on this router's CPU.
    Builtin,
    /// An OpenAI-compatible embeddings service.
    Openai,
}

/// The `[embedder]` table of the router's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    /// `none`, `builtin` or `openai`.
    pub kind: EmbedderKind,
    /// `builtin`: the directory `scripts/fetch-model.py` fills (default
    /// `~/.cache/memring/models/all-minilm-l6-v2`).
    pub model_dir: Option<PathBuf>,
    /// `builtin`: threads that run forward passes (default: one less than the cores, at least 1).
    pub threads: Option<usize>,
    /// `builtin`: nice value of those threads, so request forwarding always comes first.
    pub nice: i32,
    /// `builtin`: most texts waiting; past it a request is `503` with `Retry-After`.
    pub queue_texts: usize,
    /// Most texts in one forward pass (`builtin`) or one call (`openai`).
    pub max_batch: usize,
    /// `openai`: base URL up to `/v1`, e.g. `https://api.openai.com/v1` or `http://ollama:11434/v1`.
    pub openai_url: Option<String>,
    /// `openai`: the model to ask for.
    pub openai_model: Option<String>,
    /// `openai`: the model's vector length.
    pub openai_dimensions: Option<usize>,
    /// `openai`: the environment variable holding the API key (unset: no key sent).
    pub openai_key_env: Option<String>,
    /// `openai`: send `"dimensions"` in each call (for models that can shorten their vectors).
    pub openai_send_dimensions: bool,
    /// `openai`: timeout of one call, milliseconds.
    pub openai_timeout_ms: u64,
    /// `openai`: retries of a failed call (within the request's own deadline).
    pub openai_retries: u32,
    /// `openai` over `https://`: a PEM file of certificate authorities trusted besides the
    /// system's (a private CA, or a self-signed service).
    pub openai_ca_file: Option<PathBuf>,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            kind: EmbedderKind::None,
            model_dir: None,
            threads: None,
            nice: 5,
            queue_texts: 4096,
            max_batch: 32,
            openai_url: None,
            openai_model: None,
            openai_dimensions: None,
            openai_key_env: None,
            openai_send_dimensions: false,
            openai_timeout_ms: 5_000,
            openai_retries: 3,
            openai_ca_file: None,
        }
    }
}

impl EmbedderConfig {
    /// Checks the settings the chosen kind needs, naming the missing one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=1024).contains(&self.max_batch),
            "setting `embedder.max_batch` must be from 1 to 1024, got {}",
            self.max_batch
        );
        anyhow::ensure!(
            (0..=19).contains(&self.nice),
            "setting `embedder.nice` must be from 0 to 19"
        );
        anyhow::ensure!(self.queue_texts >= 1, "setting `embedder.queue_texts` must be at least 1");
        if self.kind == EmbedderKind::Openai {
            for (name, missing) in [
                ("embedder.openai_url", self.openai_url.is_none()),
                ("embedder.openai_model", self.openai_model.is_none()),
                ("embedder.openai_dimensions", self.openai_dimensions.is_none()),
            ] {
                anyhow::ensure!(!missing, "embedder kind `openai` needs setting `{name}`");
            }
            let url = self.openai_url.as_deref().unwrap_or_default();
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "setting `embedder.openai_url` must be an http:// or https:// URL, got {url:?}"
            );
            let dims = self.openai_dimensions.unwrap_or(0);
            anyhow::ensure!(
                (1..=memring_common::api::MAX_DIMENSIONS).contains(&dims),
                "setting `embedder.openai_dimensions` must be from 1 to {}",
                memring_common::api::MAX_DIMENSIONS
            );
        }
        Ok(())
    }

    fn default_model_dir() -> PathBuf {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/memring/models/all-minilm-l6-v2")
    }
}

/// The configured embedder.
pub enum Embedder {
    /// The built-in model on its pool.
    Builtin(pool::EmbedPool),
    /// An OpenAI-compatible service.
    OpenAi(openai::OpenAiEmbedder),
}

impl Embedder {
    /// Builds what `config` names (`None` for `none`): loads the model, starts its threads.
    pub fn start(config: &EmbedderConfig) -> anyhow::Result<Option<Self>> {
        match config.kind {
            EmbedderKind::None => Ok(None),
            EmbedderKind::Builtin => {
                let dir =
                    config.model_dir.clone().unwrap_or_else(EmbedderConfig::default_model_dir);
                let threads = config.threads.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map_or(1, |n| n.get().saturating_sub(1))
                        .max(1)
                });
                // The matrix multiplies run on rayon's global pool: bound it to the same threads
                // at the same priority (a second router in the process keeps the first pool).
                let nice = config.nice;
                if let Err(e) = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("embed-mm-{i}"))
                    .start_handler(move |_| memring_common::threads::lower_priority(nice))
                    .build_global()
                {
                    tracing::debug!(error = %e, "rayon's pool was already built");
                }
                let started = Instant::now();
                let model = builtin::BertEmbedder::load(&dir, config.max_batch)?;
                tracing::info!(model = builtin::MODEL_NAME, dir = %dir.display(), threads, ms = started.elapsed().as_millis() as u64, "built-in embedder loaded");
                let pool = pool::EmbedPool::start(
                    model,
                    threads,
                    nice,
                    config.queue_texts,
                    config.max_batch,
                )?;
                Ok(Some(Embedder::Builtin(pool)))
            }
            EmbedderKind::Openai => {
                let api_key = match &config.openai_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        anyhow::anyhow!(
                            "setting `embedder.openai_key_env` names {var}, which is not set"
                        )
                    })?),
                    None => None,
                };
                let settings = openai::OpenAiSettings {
                    url: config.openai_url.clone().unwrap_or_default(),
                    model: config.openai_model.clone().unwrap_or_default(),
                    dimensions: config.openai_dimensions.unwrap_or_default(),
                    api_key,
                    timeout: Duration::from_millis(config.openai_timeout_ms.max(1)),
                    retries: config.openai_retries,
                    max_batch: config.max_batch,
                    send_dimensions: config.openai_send_dimensions,
                    ca_file: config.openai_ca_file.clone(),
                };
                Ok(Some(Embedder::OpenAi(openai::OpenAiEmbedder::new(settings)?)))
            }
        }
    }

    /// The model's name (what answers' `embedded_by` and partitions carry).
    pub fn model(&self) -> &str {
        match self {
            Embedder::Builtin(_) => builtin::MODEL_NAME,
            Embedder::OpenAi(client) => client.model(),
        }
    }

    /// Its vectors' length.
    pub fn dimensions(&self) -> usize {
        match self {
            Embedder::Builtin(_) => builtin::DIMENSIONS,
            Embedder::OpenAi(client) => client.dimensions(),
        }
    }

    /// Embeds `texts` in order, before `deadline` (`503` + `Retry-After` when it cannot).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Vec<Embedding>, ApiError> {
        match self {
            Embedder::Builtin(pool) => {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, pool.embed(texts)).await.unwrap_or_else(|_| {
                    Err(ApiError::unavailable(
                        "the embedder did not finish in time; nothing was stored, retry shortly",
                        1,
                    ))
                })
            }
            Embedder::OpenAi(client) => client.embed(texts, deadline).await,
        }
    }
}

/// `400 no_embedder` for a request that needs text embedded on a router without an embedder.
pub fn no_embedder(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NoEmbedder,
        format!(
            "{what} needs an embedder and this router has none (embedder kind `none`); send an \"embedding\", or start the router with --embedder builtin"
        ),
    )
}
