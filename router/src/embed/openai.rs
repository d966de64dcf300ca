//! The `openai` embedder: any service that speaks OpenAI's `POST /v1/embeddings` (OpenAI,
//! Ollama, vLLM, Text Embeddings Inference, another memring router).
//!
//! Texts go out in batches of at most `max_batch` inputs; each call has its own timeout and is
//! retried with jittered exponential backoff while the request's deadline allows. A service that
//! stays down or slow is `503` + `Retry-After` for the caller, within the request's time — the
//! caller then stores nothing (a text-only write is never stored without its vector).

use std::time::{Duration, Instant};

use memring_common::ApiError;
use rand::Rng;
use serde::Deserialize;

use super::builtin::Embedding;

/// Settings of the `openai` embedder (the `[embedder]` table's `openai_*` keys).
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Base URL up to and including `/v1`, e.g. `https://api.openai.com/v1`.
    pub url: String,
    /// The model name sent in each call (and the name partitions remember).
    pub model: String,
    /// The vectors' length; an answer of another length is refused.
    pub dimensions: usize,
    /// The API key, read from the environment variable the settings name (none: no header).
    pub api_key: Option<String>,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Calls after the first one fails.
    pub retries: u32,
    /// Inputs per call.
    pub max_batch: usize,
    /// Send `"dimensions"` in the call (OpenAI's text-embedding-3 models take it; others may not).
    pub send_dimensions: bool,
    /// Certificate authorities trusted besides the system's, for `https://` (PEM).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A client of one OpenAI-compatible embeddings service.
pub struct OpenAiEmbedder {
    settings: OpenAiSettings,
    client: reqwest::Client,
    endpoint: String,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f32>,
}

/// Why one call failed, and whether another try may help.
enum CallError {
    /// Timeouts, refused connections, 429 and 5xx.
    Retryable(String),
    /// The service understood and refused (4xx other than 429), or answered nonsense.
    Fatal(String),
}

impl OpenAiEmbedder {
    /// Builds the client (no call is made until the first text).
    pub fn new(settings: OpenAiSettings) -> anyhow::Result<Self> {
        // HTTPS with rustls and its `ring` provider (the one the router's own TLS listener uses),
        // verifying against the system's certificate authorities and any in `ca_file`.
        let mut builder = memring_common::tls::http_client_builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)));
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read embedder.openai_ca_file {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("embedder.openai_ca_file {} is not PEM: {e}", path.display())
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "embedder.openai_ca_file {} holds no certificate",
                path.display()
            );
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build()?;
        let endpoint = format!("{}/embeddings", settings.url.trim_end_matches('/'));
        Ok(Self { settings, client, endpoint })
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// The vectors' length.
    pub fn dimensions(&self) -> usize {
        self.settings.dimensions
    }

    /// Embeds `texts` in order, by `max_batch` per call, before `deadline`.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        deadline: Instant,
    ) -> Result<Vec<Embedding>, ApiError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.settings.max_batch.max(1)) {
            out.extend(self.embed_chunk(chunk, deadline).await?);
        }
        Ok(out)
    }

    async fn embed_chunk(
        &self,
        texts: &[String],
        deadline: Instant,
    ) -> Result<Vec<Embedding>, ApiError> {
        let mut body = serde_json::json!({ "model": self.settings.model, "input": texts });
        if self.settings.send_dimensions {
            body["dimensions"] = self.settings.dimensions.into();
        }
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = if left.is_zero() {
                Err(CallError::Retryable("no time left".into()))
            } else {
                self.call(&body, texts.len(), left.min(self.settings.timeout)).await
            };
            let why = match outcome {
                Ok(vectors) => return Ok(vectors),
                Err(CallError::Fatal(why)) => {
                    metrics::counter!("memring_embed_remote_failures_total", "kind" => "refused")
                        .increment(1);
                    return Err(ApiError::unavailable(
                        format!("the embedding service at {} refused: {why}", self.endpoint),
                        5,
                    ));
                }
                Err(CallError::Retryable(why)) => why,
            };
            metrics::counter!("memring_embed_remote_failures_total", "kind" => "retryable")
                .increment(1);
            attempt += 1;
            // Full jitter: sleep a random part of the backoff, never past the deadline.
            let pause = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            if attempt > self.settings.retries || Instant::now() + pause >= deadline {
                tracing::warn!(endpoint = %self.endpoint, attempts = attempt, error = %why, "embedding service unavailable");
                return Err(ApiError::unavailable(
                    format!(
                        "the embedding service at {} did not answer ({why}); nothing was stored, retry shortly",
                        self.endpoint
                    ),
                    1,
                ));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn call(
        &self,
        body: &serde_json::Value,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Embedding>, CallError> {
        let mut request = self.client.post(&self.endpoint).timeout(timeout).json(body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| CallError::Retryable(causes(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| CallError::Retryable(causes(&e)))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(CallError::Retryable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(CallError::Fatal(format!("HTTP {status}: {text}")));
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Fatal(format!("the answer is not an embeddings list: {e}")))?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
        for datum in answer.data {
            if datum.embedding.len() != self.settings.dimensions {
                return Err(CallError::Fatal(format!(
                    "it answered vectors of {} dimensions; the router is configured for {}",
                    datum.embedding.len(),
                    self.settings.dimensions
                )));
            }
            if memring_common::api::validate_embedding(&datum.embedding).is_err() {
                return Err(CallError::Fatal("it answered a zero or non-finite vector".into()));
            }
            match vectors.get_mut(datum.index) {
                Some(slot) => *slot = Some(datum.embedding),
                None => return Err(CallError::Fatal(format!("it answered index {}", datum.index))),
            }
        }
        vectors
            .into_iter()
            .map(|v| {
                v.map(|vector| Embedding { vector, truncated: false })
                    .ok_or_else(|| CallError::Fatal(format!("it answered fewer than {n} vectors")))
            })
            .collect()
    }
}

/// An error with its causes (reqwest's own text leaves out why: a refused certificate, say).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
