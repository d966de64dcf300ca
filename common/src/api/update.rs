//! Updates (API.md part 2, "Updates"): a JSON Merge Patch of a memory (RFC 7396), and the
//! conditions a change can carry — `If-Match`, `If-None-Match: *` — with the idempotency key
//! that lets a client retry a conditional change whose answer it lost.
//!
//! The router parses and validates all of it here; the shard node applies a patch to the stored
//! memory and checks the conditions under the partition's write lock (`shard-node/src/storage.rs`),
//! so condition, merge and write are one step on the owner and replicate as one log entry.
//!
//! **Why a key.** A conditional change that timed out may or may not have been applied (the
//! owner died after a quorum held it, say). Sent again, it would find the version it expected
//! gone — moved on by its own first try — and answer `412`; a client doing read-modify-write
//! would then apply its change a second time. A memory remembers the keys of its last
//! [`KEPT_CHANGE_KEYS`] keyed changes, and a change whose key it remembers is answered as
//! applied, not applied again.

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    MAX_CONTENT_BYTES, MAX_METADATA_BYTES, MAX_TTL_SECONDS, MemoryView, WriteOutcome,
    validate_embedding, validate_model_name,
};
use crate::error::{ApiError, ErrorCode};

/// Header naming a change so that sending it again is recognised (IETF draft
/// `Idempotency-Key`).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The longest idempotency key.
pub const MAX_CHANGE_KEY_BYTES: usize = 64;
/// How many of its latest keyed changes a memory remembers.
pub const KEPT_CHANGE_KEYS: usize = 256;

/// The `ETag` of a memory at `version`: the version, quoted.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// What `If-Match` asks of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfMatch {
    /// `*`: that it exists.
    Any,
    /// `"N"`: that it is at version N.
    Version(u64),
}

impl IfMatch {
    /// The form of the internal delete's `if_match` query parameter: `*` or the version.
    pub fn to_query(self) -> String {
        match self {
            IfMatch::Any => "*".to_owned(),
            IfMatch::Version(v) => v.to_string(),
        }
    }

    /// Reads [`IfMatch::to_query`]'s form.
    pub fn parse_query(text: &str) -> Result<Self, ApiError> {
        match text {
            "*" => Ok(IfMatch::Any),
            v => v.parse().map(IfMatch::Version).map_err(|_| {
                ApiError::invalid(format!("\"if_match\" must be * or a version, got {v:?}"))
            }),
        }
    }
}

/// The conditions of one change, from its request's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    /// `If-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<IfMatch>,
    /// `If-None-Match: *`: create only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_none_match: bool,
    /// `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Conditions {
    /// No condition and no key.
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }

    /// Reads `If-Match`, `If-None-Match` and `Idempotency-Key`. Anything but one quoted
    /// version or `*` in `If-Match`, and anything but `*` in `If-None-Match`, is a `400`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            match headers.get_all(name).iter().count() {
                0 => Ok(None),
                1 => headers
                    .get(name)
                    .map(|v| {
                        v.to_str().map(str::trim).map_err(|_| {
                            ApiError::invalid(format!("header {name} must be visible ASCII"))
                        })
                    })
                    .transpose(),
                _ => Err(ApiError::invalid(format!("send header {name} once"))),
            }
        };
        let if_match = text("if-match")?.map(parse_if_match).transpose()?;
        let if_none_match = match text("if-none-match")? {
            None => false,
            Some("*") => true,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "If-None-Match takes only * (create the memory only if it does not exist), got {other:?}"
                )));
            }
        };
        if if_match.is_some() && if_none_match {
            return Err(ApiError::invalid(
                "send If-Match (change an existing version) or If-None-Match: * (create only), not both",
            ));
        }
        let key = text(IDEMPOTENCY_KEY_HEADER)?.map(validate_change_key).transpose()?;
        Ok(Conditions { if_match, if_none_match, key })
    }

    /// Checks `If-Match` and `If-None-Match` against the memory as it is (`current`: its version,
    /// `None` when it does not exist). `same_body`: the change would leave it as it is, which
    /// `If-None-Match: *` accepts (a retried create is the idempotent `200`).
    pub fn check(&self, id: &str, current: Option<u64>, same_body: bool) -> Result<(), ApiError> {
        let failed = |message: String| {
            Err(ApiError::new(ErrorCode::PreconditionFailed, message)
                .with_details(serde_json::json!({ "current_version": current })))
        };
        match (self.if_match, current) {
            (None, _) | (Some(IfMatch::Any), Some(_)) => {}
            (Some(IfMatch::Version(want)), Some(now)) if want == now => {}
            (Some(IfMatch::Version(want)), Some(now)) => {
                return failed(format!(
                    "memory {id} is at version {now}, not {want} (If-Match); read it again and redo the change against version {now}"
                ));
            }
            (Some(_), None) => {
                return failed(format!("memory {id} does not exist (If-Match)"));
            }
        }
        if self.if_none_match
            && let Some(now) = current
            && !same_body
        {
            return failed(format!(
                "memory {id} already exists at version {now} with another body (If-None-Match: *)"
            ));
        }
        Ok(())
    }

    /// The keys a memory remembers after this change: `before`'s, plus this change's key,
    /// keeping the latest [`KEPT_CHANGE_KEYS`].
    pub fn keys_after(&self, before: &[String]) -> Vec<String> {
        let mut keys = before.to_vec();
        if let Some(key) = &self.key
            && !keys.contains(key)
        {
            keys.push(key.clone());
        }
        let excess = keys.len().saturating_sub(KEPT_CHANGE_KEYS);
        keys.drain(..excess);
        keys
    }

    /// This change was applied already: the memory remembers its key.
    pub fn replayed(&self, remembered: &[String]) -> bool {
        self.key.as_ref().is_some_and(|k| remembered.contains(k))
    }
}

fn parse_if_match(text: &str) -> Result<IfMatch, ApiError> {
    if text == "*" {
        return Ok(IfMatch::Any);
    }
    let version = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok().filter(|_| t.bytes().all(|b| b.is_ascii_digit())));
    match version {
        Some(v) => Ok(IfMatch::Version(v)),
        None if text.starts_with("W/") => Err(ApiError::invalid(format!(
            "If-Match compares strong ETags; send the memory's ETag as it was answered (a quoted version like \"3\"), got {text:?}"
        ))),
        None => Err(ApiError::invalid(format!(
            "If-Match must be one quoted version as the ETag header gave it (like \"3\") or *, got {text:?}"
        ))),
    }
}

/// Checks an idempotency key: 1..=64 characters of `A-Z a-z 0-9 _ . : -` (a UUID fits).
pub fn validate_change_key(key: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_CHANGE_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        let shown: String = key.chars().take(40).collect();
        return Err(ApiError::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_CHANGE_KEY_BYTES} characters of A-Z a-z 0-9 _ . : - (a UUID, say), got {shown:?}"
        )));
    }
    Ok(key.to_owned())
}

/// One field of a patch: left as it is (absent), removed (`null`), or set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change<T> {
    /// Absent from the patch.
    #[default]
    Keep,
    /// `null` in the patch.
    Clear,
    /// A value in the patch.
    Set(T),
}

impl<T> Change<T> {
    fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }
}

/// The body of `PATCH …/memories/{id}` as the OpenAPI document shows it: a JSON Merge Patch
/// (RFC 7396) of these fields, where `null` removes one (parsed by [`MemoryPatch::parse`]).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PatchBody {
    /// New text. When the memory's vector was made by the router's embedder, the new text is
    /// embedded again; when the client sent the vector, send the new one with it.
    content: Option<String>,
    /// Merged into the memory's metadata member by member, recursively; `null` removes a key,
    /// `"metadata": null` removes all of it.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// A new vector (of the partition's dimension), or `null` for none.
    embedding: Option<Vec<f32>>,
    /// The model that made `embedding`.
    embedding_model: Option<String>,
    /// A new TTL counted from now, or `null` to keep the memory for ever; absent keeps its expiry.
    ttl_seconds: Option<u64>,
}

/// A validated `PATCH …/memories/{id}` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryPatch {
    /// New content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The merge patch of the metadata: `Clear` empties it, `Set` (an object) merges into it.
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub metadata: Change<Map<String, Value>>,
    /// A new vector, or none.
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub embedding: Change<Vec<f32>>,
    /// The model of a new `embedding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// A new TTL counted from now, or none.
    #[serde(default, skip_serializing_if = "Change::is_keep")]
    pub ttl_seconds: Change<u64>,
}

impl MemoryPatch {
    /// Parses and checks a PATCH body: a JSON object of `content`, `metadata`, `embedding`,
    /// `embedding_model` and `ttl_seconds`, where `null` removes a field (only those a memory
    /// may lack).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let fields: Map<String, Value> = match crate::http::parse_json::<Value>(body)? {
            Value::Object(fields) => fields,
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidJson,
                    format!(
                        "a PATCH body is a JSON Merge Patch object of the memory's fields, got {}",
                        super::json_kind(&other)
                    ),
                ));
            }
        };
        let mut patch = MemoryPatch::default();
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("content", Value::String(text)) => {
                    if text.len() > MAX_CONTENT_BYTES {
                        return Err(ApiError::invalid(format!(
                            "\"content\" is {} bytes; the limit is {MAX_CONTENT_BYTES}",
                            text.len()
                        )));
                    }
                    patch.content = Some(text);
                }
                ("content", other) => {
                    return Err(ApiError::invalid(format!(
                        "\"content\" must be a string (every memory has content), got {}",
                        super::json_kind(&other)
                    )));
                }
                ("metadata", Value::Null) => patch.metadata = Change::Clear,
                ("metadata", Value::Object(m)) => patch.metadata = Change::Set(m),
                ("metadata", other) => {
                    return Err(ApiError::invalid(format!(
                        "\"metadata\" in a patch must be an object (merged into the memory's) or null (removes all of it), got {}",
                        super::json_kind(&other)
                    )));
                }
                ("embedding", Value::Null) => patch.embedding = Change::Clear,
                ("embedding", value) => {
                    let vector: Vec<f32> = serde_json::from_value(value).map_err(|_| {
                        ApiError::new(
                            ErrorCode::InvalidEmbedding,
                            "\"embedding\" must be an array of numbers, or null to remove the vector",
                        )
                    })?;
                    validate_embedding(&vector)?;
                    patch.embedding = Change::Set(vector);
                }
                ("embedding_model", Value::String(model)) => {
                    validate_model_name("embedding_model", &model)?;
                    patch.embedding_model = Some(model);
                }
                ("embedding_model", other) => {
                    return Err(ApiError::invalid(format!(
                        "\"embedding_model\" must be a string, got {}",
                        super::json_kind(&other)
                    )));
                }
                ("ttl_seconds", Value::Null) => patch.ttl_seconds = Change::Clear,
                ("ttl_seconds", value) => match value.as_u64() {
                    Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => {
                        patch.ttl_seconds = Change::Set(ttl)
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "\"ttl_seconds\" must be between 1 and {MAX_TTL_SECONDS} (counted from now), or null to keep the memory for ever, got {value}"
                        )));
                    }
                },
                ("id" | "scope", _) => {
                    return Err(ApiError::invalid(format!(
                        "a memory's \"{name}\" cannot change; write a new memory and delete this one"
                    )));
                }
                (other, _) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidJson,
                        format!(
                            "unknown field {other:?} in the patch; a patch may hold content, metadata, embedding, embedding_model and ttl_seconds"
                        ),
                    ));
                }
            }
        }
        if patch.embedding_model.is_some() && !matches!(patch.embedding, Change::Set(_)) {
            return Err(ApiError::invalid(
                "\"embedding_model\" names the model of a sent \"embedding\"; send both",
            ));
        }
        Ok(patch)
    }

    /// The router should embed the patch's content: it sets new content and says nothing of the
    /// vector (the owner uses that vector only if the memory's vector came from the router).
    pub fn wants_embedding(&self) -> bool {
        self.content.is_some() && self.embedding.is_keep()
    }

    /// Applies the patch to `base`, the memory as stored. See [`PatchedVector`] for which vector
    /// the result has; `embedded` is the router's vector of the patch's content, if it made one.
    pub fn apply(
        &self,
        base: &PatchBase,
        embedded: Option<&EmbeddedContent>,
    ) -> Result<Patched, ApiError> {
        let content = self.content.clone().unwrap_or_else(|| base.content.clone());
        let content_changed = content != base.content;
        let metadata = match &self.metadata {
            Change::Keep => base.metadata.clone(),
            Change::Clear => Map::new(),
            Change::Set(patch) => {
                let mut merged = Value::Object(base.metadata.clone());
                merge_patch(&mut merged, &Value::Object(patch.clone()));
                match merged {
                    Value::Object(m) => m,
                    _ => Map::new(),
                }
            }
        };
        let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(ApiError::invalid(format!(
                "the patched \"metadata\" would be {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
            )));
        }
        let vector = match &self.embedding {
            Change::Set(v) => PatchedVector::Client(v.clone(), self.embedding_model.clone()),
            Change::Clear => PatchedVector::None,
            Change::Keep if !content_changed => PatchedVector::Kept,
            Change::Keep => match (&base.vector, embedded) {
                (BaseVector::Router(_), Some(e)) => PatchedVector::Router(e.clone()),
                // Stored without a vector (no embedder then, or `"embed": false`): it stays so.
                (BaseVector::None, _) => PatchedVector::None,
                (BaseVector::Router(model), None) => {
                    return Err(ApiError::new(
                        ErrorCode::NoEmbedder,
                        format!(
                            "this memory's vector was made by the router's model {model:?} from its content, and this router has no embedder to embed the new content; send \"embedding\" with the patch, or patch through a router with {model:?}"
                        ),
                    ));
                }
                (BaseVector::Client, _) => {
                    return Err(ApiError::invalid(
                        "the patch changes \"content\" of a memory whose vector the client sent; send the new content's \"embedding\" with it (or \"embedding\": null to keep the memory without a vector)",
                    ));
                }
            },
        };
        let expiry = match self.ttl_seconds {
            Change::Keep => Expiry::Keep,
            Change::Clear => Expiry::Never,
            Change::Set(ttl) => Expiry::After(ttl),
        };
        Ok(Patched { content, metadata, vector, expiry })
    }
}

/// RFC 7396: `patch` merged into `target` (objects member by member, `null` removes a member,
/// anything else replaces).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in members {
            if value.is_null() {
                target.remove(name);
            } else {
                merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Where a stored memory's vector came from, as far as a patch cares.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseVector {
    /// It has none.
    None,
    /// The router embedded its content with this model.
    Router(String),
    /// The client sent it.
    Client,
}

/// What a patch is applied to.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchBase {
    /// Its content.
    pub content: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
    /// Its vector's origin.
    pub vector: BaseVector,
}

/// The router's vector of a patch's new content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedContent {
    /// The vector.
    pub embedding: Vec<f32>,
    /// The model that made it.
    pub model: String,
}

/// The vector of a patched memory.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchedVector {
    /// The stored one, unchanged (content unchanged, no `embedding` in the patch).
    Kept,
    /// None (`"embedding": null`, or the memory had none).
    None,
    /// The patch's own vector and its model.
    Client(Vec<f32>, Option<String>),
    /// The router's vector of the new content.
    Router(EmbeddedContent),
}

/// The expiry of a patched memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// As it was.
    Keep,
    /// None.
    Never,
    /// This many seconds from now.
    After(u64),
}

/// A memory with a patch applied, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Patched {
    /// Its content.
    pub content: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
    /// Its vector.
    pub vector: PatchedVector,
    /// Its expiry.
    pub expiry: Expiry,
}

/// Router → owner: `PATCH /internal/v1/p/{partition}/memories/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPatch {
    /// The patch.
    pub patch: MemoryPatch,
    /// The router's vector of the patch's content, when it has an embedder and the patch sets
    /// content without a vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedContent>,
    /// Its conditions.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
}

/// The owner's answer to a [`ShardPatch`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardPatchResponse {
    /// The memory after the patch.
    pub memory: MemoryView,
    /// `updated`, or `unchanged` (the patch changed nothing, or its key was seen before).
    pub outcome: WriteOutcome,
    /// The partition's log position after it (the read token).
    pub seq: u64,
}

#[cfg(test)]
mod tests;
