//! Updates on the router (API.md part 2, "Updates"): `PATCH …/memories/{id}`, the conditional
//! headers of writes and deletes, and the `ETag` of every single-memory answer.
//!
//! The router only parses and validates (`memring_common::api::update`) and, when a patch sets
//! new content without a vector, embeds that content; the owner applies the patch and checks the
//! conditions under the partition's write lock (`shard-node/src/storage/write.rs`).

use http::{HeaderMap, Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    Conditions, EmbeddedContent, IDEMPOTENCY_KEY_HEADER, MemoryPatch, ReadToken, ShardPatch,
    ShardPatchResponse, etag,
};
use memring_common::http::json;
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey, TenantId};

use super::{Response, RouterService, with_token};

impl RouterService {
    /// `PATCH /v1/tenants/{tenant}/memories/{id}?scope=S`: a JSON Merge Patch of the memory,
    /// answered with the whole memory after it (`200`) and its `ETag`.
    pub(super) async fn patch(
        &self,
        tenant: TenantId,
        id: String,
        req: Request<Incoming>,
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response, ApiError> {
        let id = MemoryId::parse(&id)?;
        let (scope, _) = Self::scope_param(query)?;
        let conditions = Conditions::from_headers(req.headers())?;
        if conditions.if_none_match {
            return Err(ApiError::invalid(
                "If-None-Match: * creates a memory; a PATCH changes one that exists (use POST …/memories with an id to create)",
            ));
        }
        let body = self.body(req).await?;
        self.limits.check_write(&tenant, body.len())?;
        let patch = MemoryPatch::parse(&body)?;
        let mut truncated = None;
        let embedded = match (&self.embedder, &patch.content) {
            (Some(embedder), Some(content)) if patch.wants_embedding() => {
                let made = embedder
                    .embed(vec![content.clone()], self.embed_deadline())
                    .await?
                    .pop()
                    .ok_or_else(|| ApiError::internal("the embedder answered no vector"))?;
                truncated = Some(made.truncated);
                Some(EmbeddedContent { embedding: made.vector, model: embedder.model().to_owned() })
            }
            _ => None,
        };
        let partition = PartitionKey::of(&tenant, &scope, id.as_str());
        let body = serde_json::to_vec(&ShardPatch { patch, embedded, conditions })
            .map_err(|e| ApiError::internal(format!("patch does not serialize: {e}")))?;
        let suffix = format!("memories/{}", memring_common::http::percent_encode(id.as_str()));
        let reply = self
            .forward
            .to_partition(
                &partition,
                Method::PATCH,
                &suffix,
                Some(body.into()),
                request_id,
                self.forward_timeout(),
            )
            .await?
            .into_result()?;
        let done: ShardPatchResponse = serde_json::from_slice(&reply)
            .map_err(|e| ApiError::internal(format!("shard patch answer does not parse: {e}")))?;
        let mut token = ReadToken::default();
        token.note(scope, done.seq);
        let version = done.memory.version;
        let mut answer = serde_json::to_value(&done.memory)
            .map_err(|e| ApiError::internal(format!("memory does not serialize: {e}")))?;
        // Whether the router's vector of the new content is the one stored: the memory says so.
        if truncated == Some(true) && done.memory.embedded_by.is_some() {
            answer["embedded_truncated"] = serde_json::Value::Bool(true);
        }
        Ok(with_etag(with_token(json(200, &answer), &token), version))
    }
}

/// The conditions of a single write by id; a condition without an id in the body is a `400`.
pub(super) fn write_conditions(headers: &HeaderMap, has_id: bool) -> Result<Conditions, ApiError> {
    let conditions = Conditions::from_headers(headers)?;
    if !has_id && !conditions.is_empty() {
        return Err(ApiError::invalid(
            "If-Match, If-None-Match and Idempotency-Key are about one memory: send its \"id\" in the body",
        ));
    }
    Ok(conditions)
}

/// A batch takes no conditions: its items are idempotent by their ids, and one header cannot
/// speak for a thousand memories.
pub(super) fn refuse_batch_conditions(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in ["if-match", "if-none-match", IDEMPOTENCY_KEY_HEADER] {
        if headers.contains_key(name) {
            return Err(ApiError::invalid(format!(
                "a batch write takes no {name} header: conditions apply to single writes (POST …/memories with an id, PATCH, DELETE); batch items are idempotent by their ids"
            )));
        }
    }
    Ok(())
}

/// The `If-Match` of a `DELETE`, as the internal delete's query (`if_match=…`), if any.
pub(super) fn delete_condition(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let conditions = Conditions::from_headers(headers)?;
    if conditions.if_none_match {
        return Err(ApiError::invalid("If-None-Match does not apply to DELETE; send If-Match"));
    }
    Ok(conditions.if_match.map(|m| m.to_query()))
}

/// Adds `ETag: "<version>"`.
pub(super) fn with_etag(mut response: Response, version: u64) -> Response {
    if let Ok(v) = http::HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(http::header::ETAG, v);
    }
    response
}

/// The version of a memory answer (the body a shard node sent), for its `ETag`.
pub(super) fn version_of(body: &[u8]) -> Result<u64, ApiError> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    serde_json::from_slice::<Versioned>(body).map(|v| v.version).map_err(|e| {
        ApiError::new(ErrorCode::Internal, format!("a memory answer has no version: {e}"))
    })
}
