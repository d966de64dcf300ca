//! The one error type that crosses process boundaries, and its HTTP mapping.
//!
//! Every failure a client can see is an [`ApiError`]: a stable snake_case [`ErrorCode`], a message
//! that says what was wrong and how to fix it, and optional details (the current owner on a 421,
//! say). The status of each code is decided in exactly one exhaustive `match` ([`ErrorCode::status`]),
//! so adding a code forces a decision about its status. Internal failures carry a message for the
//! log but answer the client with a generic text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure this is; the wire form is the snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A tenant, agent, memory or node id breaks the id rule.
    InvalidId,
    /// A scope is not `agent:<id>`, `shared` or `global`.
    InvalidScope,
    /// A partition name is not `tenant/scope`.
    InvalidPartition,
    /// The body is not JSON, or not the JSON this endpoint takes.
    InvalidJson,
    /// An embedding is empty, too long, all zeros, or holds a non-finite number.
    InvalidEmbedding,
    /// An embedding's dimension differs from the one the partition was created with.
    DimensionMismatch,
    /// A field or query parameter is out of range or missing.
    InvalidRequest,
    /// The request needs text embedded and this router has no embedder configured.
    NoEmbedder,
    /// `POST /v1/embeddings` named a model this router does not serve.
    UnknownModel,
    /// The router would embed for a partition whose vectors came from another model.
    EmbeddingModelMismatch,
    /// A list cursor was not one this server issued.
    InvalidCursor,
    /// A search filter uses an unknown operator, a wrong argument type, or is too big or deep.
    InvalidFilter,
    /// The memory (or other resource) does not exist.
    NotFound,
    /// No endpoint at this path.
    RouteNotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// No key, or an unknown key.
    Unauthorized,
    /// The key is valid but not for this tenant or operation.
    Forbidden,
    /// The request conflicts with the current state (e.g. a stale compare-and-swap).
    Conflict,
    /// An `If-Match` or `If-None-Match` condition does not hold for the memory as it is now.
    PreconditionFailed,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// Too many requests; retry after the given time.
    RateLimited,
    /// A tenant is at its quota (memories or bytes stored).
    QuotaExceeded,
    /// The client sent its request body too slowly.
    RequestTimeout,
    /// The shard node does not own the partition at the caller's epoch.
    WrongOwner,
    /// No node that holds the data could be reached; retry later.
    Unavailable,
    /// The partition is being handed to another node (writes are fenced for milliseconds);
    /// routers retry this themselves.
    PartitionMoving,
    /// A follower asked for a replica read has not applied enough of its primary's log (the
    /// read token's position, or within the staleness bound); routers then ask the primary.
    ReplicaBehind,
    /// A copy asked for log entries its log no longer holds (trimmed, `shard-node/src/storage/trim.rs`):
    /// the asking copy must be re-seeded from a snapshot. Internal routes only.
    LogTrimmed,
    /// A bug or an I/O failure on our side.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code. One exhaustive match: the only place statuses are decided.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidId
            | ErrorCode::InvalidScope
            | ErrorCode::InvalidPartition
            | ErrorCode::InvalidJson
            | ErrorCode::InvalidEmbedding
            | ErrorCode::DimensionMismatch
            | ErrorCode::InvalidRequest
            | ErrorCode::NoEmbedder
            | ErrorCode::UnknownModel
            | ErrorCode::EmbeddingModelMismatch
            | ErrorCode::InvalidCursor
            | ErrorCode::InvalidFilter => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::QuotaExceeded => 403,
            ErrorCode::NotFound | ErrorCode::RouteNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::LogTrimmed => 410,
            ErrorCode::Conflict => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::WrongOwner => 421,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::PartitionMoving | ErrorCode::ReplicaBehind => 503,
        }
    }

    /// The wire name, e.g. `invalid_scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidPartition => "invalid_partition",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidEmbedding => "invalid_embedding",
            ErrorCode::DimensionMismatch => "dimension_mismatch",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NoEmbedder => "no_embedder",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::EmbeddingModelMismatch => "embedding_model_mismatch",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::WrongOwner => "wrong_owner",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PartitionMoving => "partition_moving",
            ErrorCode::ReplicaBehind => "replica_behind",
            ErrorCode::LogTrimmed => "log_trimmed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A failure with its code, message and optional structured details.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Option<serde_json::Value>,
    retry_after_secs: Option<u32>,
}

/// The JSON body of every error response: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorPayload,
}

/// The inner object of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorPayload {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What was wrong and how to fix it.
    pub message: String,
    /// Structured extras, e.g. the current owner for `wrong_owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None, retry_after_secs: None }
    }

    /// A 400-class error.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        debug_assert_eq!(code.status(), 400);
        Self::new(code, message)
    }

    /// A generic invalid request (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// An id that breaks the id rule.
    pub fn invalid_id(kind: &str, value: &str, why: &str) -> Self {
        let shown: String = value.chars().take(40).collect();
        let ellipsis = if value.chars().count() > 40 { "…" } else { "" };
        Self::new(
            ErrorCode::InvalidId,
            format!(
                "{kind} {shown:?}{ellipsis} is not valid: {why} (ids are 1-128 chars of A-Z a-z 0-9 _ . -)"
            ),
        )
    }

    /// Not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// A failure on our side; the message goes to the log, not to the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Service unavailable, retry after `secs`.
    pub fn unavailable(message: impl Into<String>, secs: u32) -> Self {
        Self::new(ErrorCode::Unavailable, message).with_retry_after(secs)
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Attaches a `Retry-After` hint.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured details, if any.
    pub fn details(&self) -> Option<&serde_json::Value> {
        self.details.as_ref()
    }

    /// The `Retry-After` hint in seconds, if any.
    pub fn retry_after_secs(&self) -> Option<u32> {
        self.retry_after_secs
    }

    /// The JSON body a client sees. Internal errors hide their message (it is logged instead).
    pub fn to_body(&self) -> ErrorBody {
        let message = match self.code {
            ErrorCode::Internal => "internal error; it has been logged".to_owned(),
            _ => self.message.clone(),
        };
        ErrorBody {
            error: ErrorPayload { code: self.code, message, details: self.details.clone() },
        }
    }

    /// Rebuilds an error from a body another memring process sent.
    pub fn from_body(body: ErrorBody) -> Self {
        Self {
            code: body.error.code,
            message: body.error.message,
            details: body.error.details,
            retry_after_secs: None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [ErrorCode::InvalidId, ErrorCode::DimensionMismatch, ErrorCode::WrongOwner] {
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn internal_messages_do_not_leak() {
        let body = ApiError::internal("rocksdb: corruption at /secret/path").to_body();
        assert!(!body.error.message.contains("secret"));
    }

    #[test]
    fn client_mistakes_are_4xx() {
        for code in [
            ErrorCode::InvalidId,
            ErrorCode::InvalidJson,
            ErrorCode::PayloadTooLarge,
            ErrorCode::NotFound,
            ErrorCode::DimensionMismatch,
        ] {
            assert!((400..500).contains(&code.status()));
        }
    }
}
