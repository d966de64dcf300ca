//! Text on the wire (API.md part 2): `POST /v1/embeddings`, and a search's `query`, `mode`,
//! `fusion` and `offset`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{MAX_K, validate_model_name};
use crate::{ApiError, ErrorCode};

/// Most inputs of one `POST /v1/embeddings`.
pub const MAX_EMBED_INPUTS: usize = 256;
/// The longest search `query`, bytes.
pub const MAX_QUERY_BYTES: usize = 8 << 10;

/// `POST /v1/embeddings` body (OpenAI's shape).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddingsRequest {
    /// One text or a list of texts.
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// The model to use; must be the router's.
    #[serde(default)]
    pub model: Option<String>,
    /// OpenAI clients send it; only `"float"` is served.
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// OpenAI clients may send it; it must equal the model's length.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// OpenAI's end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// A validated `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    /// The texts, in order.
    pub input: Vec<String>,
    /// The model asked for, if any.
    pub model: Option<String>,
    /// The length asked for, if any.
    pub dimensions: Option<usize>,
}

impl RawEmbeddingsRequest {
    /// Checks the shape: 1..=256 strings, each at most `content`'s limit.
    pub fn validate(self) -> Result<EmbeddingsRequest, ApiError> {
        let input = match self.input {
            None => {
                return Err(ApiError::invalid(
                    "\"input\" is required: a string or a list of strings",
                ));
            }
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => {
                let mut texts = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => texts.push(s),
                        _ => {
                            return Err(ApiError::invalid(format!(
                                "\"input\"[{i}] is not a string; token-id inputs are not served"
                            )));
                        }
                    }
                }
                texts
            }
            Some(_) => {
                return Err(ApiError::invalid("\"input\" must be a string or a list of strings"));
            }
        };
        if input.is_empty() {
            return Err(ApiError::invalid("\"input\" is empty; send at least one text"));
        }
        if input.len() > MAX_EMBED_INPUTS {
            return Err(ApiError::invalid(format!(
                "\"input\" has {} texts; the limit is {MAX_EMBED_INPUTS} per request",
                input.len()
            )));
        }
        if let Some((i, text)) =
            input.iter().enumerate().find(|(_, t)| t.len() > super::MAX_CONTENT_BYTES)
        {
            return Err(ApiError::invalid(format!(
                "\"input\"[{i}] is {} bytes; the limit is {}",
                text.len(),
                super::MAX_CONTENT_BYTES
            )));
        }
        if let Some(model) = &self.model {
            validate_model_name("model", model)?;
        }
        if let Some(format) = &self.encoding_format
            && format != "float"
        {
            return Err(ApiError::invalid(format!(
                "\"encoding_format\" {format:?} is not served; use \"float\""
            )));
        }
        Ok(EmbeddingsRequest { input, model: self.model, dimensions: self.dimensions })
    }
}

/// `POST /v1/embeddings` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `"list"` (OpenAI's shape).
    pub object: String,
    /// The model that made the vectors.
    pub model: String,
    /// Their length.
    pub dimensions: usize,
    /// One per input, in order.
    pub data: Vec<EmbeddingDatum>,
    /// Token counts (OpenAI's shape; memring does not count tokens, so 0).
    pub usage: EmbeddingsUsage,
}

/// One vector of an [`EmbeddingsResponse`].
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingDatum {
    /// Always `"embedding"`.
    pub object: String,
    /// The input's position.
    pub index: usize,
    /// The vector.
    pub embedding: Vec<f32>,
    /// The input was longer than the model's window (only its first window was embedded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// OpenAI's `usage` object.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    /// Tokens in the inputs (not counted: 0).
    pub prompt_tokens: u64,
    /// Same.
    pub total_tokens: u64,
}

/// How a search finds its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Nearest vectors.
    Vector,
    /// BM25 over `content`.
    Keyword,
    /// Both, fused.
    Hybrid,
}

impl SearchMode {
    /// Parses `"vector" | "keyword" | "hybrid"`, naming the field otherwise.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        match raw {
            "vector" => Ok(SearchMode::Vector),
            "keyword" => Ok(SearchMode::Keyword),
            "hybrid" => Ok(SearchMode::Hybrid),
            other => Err(ApiError::invalid(format!(
                "\"mode\" {other:?} is not one of \"vector\", \"keyword\", \"hybrid\""
            ))),
        }
    }
}

/// How a hybrid search combines its two lists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ 1 / (k + rank).
    Rrf {
        /// The rank offset (default 60).
        k: f64,
    },
    /// alpha × normalised vector score + (1 − alpha) × normalised keyword score.
    Weighted {
        /// The vector part's weight, in [0, 1].
        alpha: f64,
    },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

impl Fusion {
    /// Parses `{"method": "rrf", "k"?: n}` or `{"method": "weighted", "alpha": a}`; anything
    /// else is a `400` naming what was wrong.
    pub fn parse(raw: &Value) -> Result<Self, ApiError> {
        let bad =
            |why: String| ApiError::new(ErrorCode::InvalidRequest, format!("\"fusion\": {why}"));
        let Value::Object(fields) = raw else {
            return Err(bad("must be an object such as {\"method\": \"rrf\", \"k\": 60}".into()));
        };
        let method = fields
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("\"method\" is required: \"rrf\" or \"weighted\"".into()))?;
        let allowed: &[&str] = match method {
            "rrf" => &["method", "k"],
            "weighted" => &["method", "alpha"],
            other => return Err(bad(format!("method {other:?} is not \"rrf\" or \"weighted\""))),
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!("unknown field {unknown:?} for method {method:?}")));
        }
        let number = |name: &str| -> Result<Option<f64>, ApiError> {
            match fields.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(format!("\"{name}\" must be a number"))),
            }
        };
        match method {
            "rrf" => {
                let k = number("k")?.unwrap_or(60.0);
                if !(k > 0.0 && k <= 1e6) {
                    return Err(bad(format!("\"k\" must be above 0 and at most 1e6, got {k}")));
                }
                Ok(Fusion::Rrf { k })
            }
            _ => {
                let alpha = number("alpha")?
                    .ok_or_else(|| bad("\"alpha\" is required for \"weighted\"".into()))?;
                if !(0.0..=1.0).contains(&alpha) {
                    return Err(bad(format!("\"alpha\" must be in [0, 1], got {alpha}")));
                }
                Ok(Fusion::Weighted { alpha })
            }
        }
    }
}

/// Checks a search `query`: at most 8 KiB.
pub fn validate_query_text(query: &str) -> Result<(), ApiError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid(format!(
            "\"query\" is {} bytes; the limit is {MAX_QUERY_BYTES}",
            query.len()
        )));
    }
    Ok(())
}

/// Checks `offset + k <= 1000`.
pub fn validate_offset(offset: usize, k: usize) -> Result<(), ApiError> {
    if offset.saturating_add(k) > MAX_K {
        return Err(ApiError::invalid(format!(
            "\"offset\" + \"k\" must be at most {MAX_K}, got {offset} + {k}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_takes_the_two_documented_shapes_and_names_what_is_wrong() {
        let ok = |v: Value| Fusion::parse(&v).expect("valid");
        assert_eq!(ok(serde_json::json!({"method": "rrf"})), Fusion::Rrf { k: 60.0 });
        assert_eq!(ok(serde_json::json!({"method": "rrf", "k": 10})), Fusion::Rrf { k: 10.0 });
        assert_eq!(
            ok(serde_json::json!({"method": "weighted", "alpha": 0.7})),
            Fusion::Weighted { alpha: 0.7 }
        );
        for (bad, says) in [
            (serde_json::json!("rrf"), "object"),
            (serde_json::json!({"method": "borda"}), "borda"),
            (serde_json::json!({"method": "weighted"}), "alpha"),
            (serde_json::json!({"method": "weighted", "alpha": 1.5}), "[0, 1]"),
            (serde_json::json!({"method": "rrf", "alpha": 0.5}), "unknown field"),
            (serde_json::json!({"method": "rrf", "k": 0}), "above 0"),
            (serde_json::json!({"method": "rrf", "k": "60"}), "number"),
        ] {
            let err = Fusion::parse(&bad).expect_err("invalid");
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains("fusion") && err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn embeddings_input_is_one_or_many_strings_within_limits() {
        let parse =
            |v: Value| serde_json::from_value::<RawEmbeddingsRequest>(v).expect("shape").validate();
        assert_eq!(parse(serde_json::json!({"input": "hi"})).expect("ok").input, ["hi"]);
        assert_eq!(parse(serde_json::json!({"input": ["a", "b"]})).expect("ok").input.len(), 2);
        let many: Vec<String> = (0..257).map(|i| i.to_string()).collect();
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"input": []}),
            serde_json::json!({"input": [1, 2]}),
            serde_json::json!({"input": many}),
            serde_json::json!({"input": "x", "encoding_format": "base64"}),
            serde_json::json!({"input": "x", "model": ""}),
        ] {
            assert_eq!(parse(bad.clone()).expect_err("invalid").status(), 400, "{bad}");
        }
    }
}
