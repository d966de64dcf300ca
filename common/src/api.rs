//! Wire types: the public API v1 (API.md) and the internal router → shard API.
//!
//! Requests arrive as `Raw*` structs (plain strings and numbers, unknown fields refused) and are
//! turned into validated forms by `validate()`, so every check, and every error message, lives in
//! one place that the router and the shard node share. Responses are the exact JSON shapes of
//! API.md; the shard node answers in those shapes too, so the router can pass bodies through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock;
use crate::error::{ApiError, ErrorCode};
use crate::ids::MemoryId;
use crate::scope::Scope;

/// The largest `k` a search may ask for.
pub const MAX_K: usize = 1000;
/// The default `k`.
pub const DEFAULT_K: usize = 10;
/// The most items in one batch write.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// The longest embedding accepted.
pub const MAX_DIMENSIONS: usize = 4096;
/// The largest `content`, in bytes.
pub const MAX_CONTENT_BYTES: usize = 1 << 20;
/// The largest `metadata` object, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 64 << 10;
/// The most memories one list page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// The default list page size.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The longest TTL: ten years.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Header carrying the request id from router to shard (and back to the client).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Public read-your-writes token: a write's answer carries it (`scope=seq,...`, the log
/// positions its changes reached); a read that sends it back sees those changes, whichever
/// copy answers. See [`ReadToken`].
pub const READ_TOKEN_HEADER: &str = "x-memring-read-token";

/// A read-your-writes token: per scope of one tenant, the log position a read must reflect.
/// Opaque to clients; written as `scope=seq` pairs joined by commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadToken(pub BTreeMap<Scope, u64>);

impl ReadToken {
    /// Parses the header value; a malformed token is the client's mistake (400).
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::invalid(format!(
                "header {READ_TOKEN_HEADER} must be the value a write returned (scope=seq,...), got {text:?}"
            ))
        };
        if text.len() > 16 * 1024 {
            return Err(bad());
        }
        let mut token = ReadToken::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (scope, seq) = pair.rsplit_once('=').ok_or_else(bad)?;
            let scope = Scope::parse(scope).map_err(|_| bad())?;
            let seq = seq.parse::<u64>().map_err(|_| bad())?;
            token.note(scope, seq);
        }
        Ok(token)
    }

    /// Records that `scope` reached `seq` (keeps the higher position). `global` is spread over
    /// many partitions with positions of their own, so it takes no token.
    pub fn note(&mut self, scope: Scope, seq: u64) {
        if scope == Scope::Global {
            return;
        }
        let slot = self.0.entry(scope).or_insert(0);
        *slot = (*slot).max(seq);
    }

    /// The position a read of `scope` must reflect (0: none asked).
    pub fn min_seq(&self, scope: &Scope) -> u64 {
        self.0.get(scope).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for ReadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (scope, seq)) in self.0.iter().enumerate() {
            write!(f, "{}{scope}={seq}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Writes

/// A memory as a client sends it, before validation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    /// `agent:<id>`, `shared` or `global`.
    pub scope: Option<String>,
    /// The text of the memory.
    pub content: Option<String>,
    /// The embedding vector; absent: the router embeds `content` when it has an embedder.
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    /// The model that made `embedding` (the partition remembers it; default `"client"`).
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// Free-form metadata: a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Client-chosen id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Seconds until the memory expires.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// `false`: store the memory without a vector even when the router has an embedder (it is
    /// then found by keyword search and listings only; for data that is not prose, such as
    /// serialized state). Default `true`.
    #[serde(default)]
    pub embed: Option<bool>,
}

/// A validated write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteItem {
    /// The memory's id (client-chosen or generated by the router).
    pub id: MemoryId,
    /// Its scope.
    pub scope: Scope,
    /// Its text.
    pub content: String,
    /// Its embedding, sent by the client or made by the router.
    pub embedding: Option<Vec<f32>>,
    /// Who made `embedding`: the router's model name when the router embedded `content`, the
    /// client's `embedding_model`, or `None` (a client vector of an unnamed model: `"client"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// The router made `embedding` from `content` (so a changed content is re-embedded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embedded_by_router: bool,
    /// Its metadata object (empty when none was sent).
    pub metadata: Map<String, Value>,
    /// Seconds until it expires.
    pub ttl_seconds: Option<u64>,
    /// `If-Match`, `If-None-Match` and `Idempotency-Key` of a single write by id
    /// (`update.rs`), checked on the owner under the partition's write lock.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// The client asked the router not to embed `content` (`"embed": false`). The router's
    /// concern only: never sent to a shard node.
    #[serde(skip)]
    pub no_embedding: bool,
}

impl RawWrite {
    /// Checks every field and fills in a generated id when the client sent none.
    pub fn validate(self) -> Result<WriteItem, ApiError> {
        let scope = Scope::parse(self.scope.as_deref().ok_or_else(|| {
            ApiError::invalid(
                "\"scope\" is required: \"agent:<agent_id>\", \"shared\" or \"global\"",
            )
        })?)?;
        let content = self.content.ok_or_else(|| ApiError::invalid("\"content\" is required"))?;
        if content.len() > MAX_CONTENT_BYTES {
            return Err(ApiError::invalid(format!(
                "\"content\" is {} bytes; the limit is {MAX_CONTENT_BYTES}",
                content.len()
            )));
        }
        if let Some(embedding) = &self.embedding {
            validate_embedding(embedding)?;
        }
        if self.embed == Some(false) && self.embedding.is_some() {
            return Err(ApiError::invalid(
                "\"embed\": false stores a memory without a vector; leave \"embedding\" out, or leave \"embed\" out to store the vector sent",
            ));
        }
        if let Some(model) = &self.embedding_model {
            validate_model_name("embedding_model", model)?;
            if self.embedding.is_none() {
                return Err(ApiError::invalid(
                    "\"embedding_model\" names the model of a sent \"embedding\"; send both, or neither to let the router embed",
                ));
            }
        }
        let metadata = validate_metadata(self.metadata)?;
        let id = match self.id {
            Some(id) => MemoryId::parse(&id)?,
            None => MemoryId::generate(),
        };
        if let Some(ttl) = self.ttl_seconds
            && (ttl == 0 || ttl > MAX_TTL_SECONDS)
        {
            return Err(ApiError::invalid(format!(
                "\"ttl_seconds\" must be between 1 and {MAX_TTL_SECONDS}, got {ttl}"
            )));
        }
        Ok(WriteItem {
            id,
            scope,
            content,
            embedding: self.embedding,
            embedding_model: self.embedding_model,
            embedded_by_router: false,
            metadata,
            ttl_seconds: self.ttl_seconds,
            conditions: Conditions::default(),
            no_embedding: self.embed == Some(false),
        })
    }
}

/// The longest model name accepted.
pub const MAX_MODEL_NAME_BYTES: usize = 128;

/// The model name a client-sent vector of an unnamed model is recorded under.
pub const CLIENT_MODEL: &str = "client";

/// Checks a model name: 1..=128 bytes of printable ASCII (names such as
/// `text-embedding-3-small`, `nomic-embed-text:latest`, `BAAI/bge-small-en-v1.5`).
pub fn validate_model_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME_BYTES {
        return Err(ApiError::invalid(format!(
            "\"{field}\" must be 1 to {MAX_MODEL_NAME_BYTES} characters, got {}",
            name.len()
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "\"{field}\" must be printable ASCII without spaces, got {name:?}"
        )));
    }
    Ok(())
}

/// Checks an embedding: 1..=MAX_DIMENSIONS finite numbers, not all zero (cosine needs a length).
pub fn validate_embedding(embedding: &[f32]) -> Result<(), ApiError> {
    if embedding.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidEmbedding, "\"embedding\" is empty"));
    }
    if embedding.len() > MAX_DIMENSIONS {
        return Err(ApiError::new(
            ErrorCode::InvalidEmbedding,
            format!(
                "\"embedding\" has {} dimensions; the limit is {MAX_DIMENSIONS}",
                embedding.len()
            ),
        ));
    }
    if let Some(pos) = embedding.iter().position(|x| !x.is_finite()) {
        return Err(ApiError::new(
            ErrorCode::InvalidEmbedding,
            format!(
                "\"embedding\"[{pos}] is not a finite 32-bit float ({}); values must fit in ±3.4e38",
                embedding[pos]
            ),
        ));
    }
    if embedding.iter().all(|x| *x == 0.0) {
        return Err(ApiError::new(
            ErrorCode::InvalidEmbedding,
            "\"embedding\" is all zeros; cosine similarity needs a non-zero vector",
        ));
    }
    Ok(())
}

fn validate_metadata(metadata: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    match metadata {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => {
            let size = serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(ApiError::invalid(format!(
                    "\"metadata\" is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
                )));
            }
            Ok(map)
        }
        Some(other) => Err(ApiError::invalid(format!(
            "\"metadata\" must be a JSON object, got {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `POST …/memories:batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// The items, each parsed on its own so one bad item fails alone.
    #[schema(value_type = Vec<RawWrite>)]
    pub items: Vec<Box<serde_json::value::RawValue>>,
}

/// The answer to one write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteResult {
    /// The memory's id.
    #[schema(value_type = String)]
    pub id: MemoryId,
    /// Its scope.
    #[schema(value_type = String)]
    pub scope: Scope,
    /// When it was first written (RFC 3339).
    pub created_at: String,
    /// Its version: 1 on creation, +1 on each change.
    pub version: u64,
    /// The model the router embedded `content` with, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_by: Option<String>,
    /// `content` was longer than the model's window: only its first window was embedded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_truncated: Option<bool>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteOutcome {
    /// A new memory (HTTP 201).
    Created,
    /// The same id with a different body replaced the memory (HTTP 200, version + 1).
    Updated,
    /// The same id with the same body: nothing changed (HTTP 200, same result).
    Unchanged,
}

impl WriteOutcome {
    /// The status a single write answers with.
    pub fn status(self) -> u16 {
        match self {
            WriteOutcome::Created => 201,
            WriteOutcome::Updated | WriteOutcome::Unchanged => 200,
        }
    }
}

/// One item of a batch answer: `{"id", "status", ...}` or `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchItemResult {
    /// The item was stored (or was already there).
    Ok {
        /// The memory's id.
        #[schema(value_type = String)]
        id: MemoryId,
        /// 201 created, 200 unchanged or updated.
        status: u16,
        /// What happened.
        outcome: WriteOutcome,
        /// Its scope.
        #[schema(value_type = String)]
        scope: Scope,
        /// When it was created.
        created_at: String,
        /// Its version.
        version: u64,
        /// The model the router embedded `content` with, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        embedded_by: Option<String>,
        /// Only the first window of `content` was embedded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        embedded_truncated: Option<bool>,
    },
    /// The item was refused; nothing of it was stored.
    Err {
        /// The id, when the item had a valid one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Why.
        error: crate::error::ErrorPayload,
    },
}

/// `POST …/memories:batch` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// One result per item, in the order sent.
    pub results: Vec<BatchItemResult>,
}

// ---------------------------------------------------------------------------------------------
// Reads

/// A whole memory, as `GET …/memories/{id}` and list answer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryView {
    /// Its id.
    #[schema(value_type = String)]
    pub id: MemoryId,
    /// Its scope.
    #[schema(value_type = String)]
    pub scope: Scope,
    /// Its text.
    pub content: String,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Its embedding (`null` when written without one).
    pub embedding: Option<Vec<f32>>,
    /// First written (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
    /// Version, +1 per change.
    pub version: u64,
    /// When it expires (RFC 3339), if it has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The model the router embedded `content` with, when the vector is the router's (a
    /// patch that changes `content` then embeds the new content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_by: Option<String>,
}

/// A page of a list.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListResponse {
    /// The memories, in id order.
    pub items: Vec<MemoryView>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Parses a list `limit` (1..=MAX_LIST_LIMIT); router and shard node share the rule.
pub fn parse_list_limit(v: &str) -> Result<usize, ApiError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "\"limit\" must be an integer from 1 to {MAX_LIST_LIMIT}, got {v:?}"
        ))),
    }
}

/// Encodes a list cursor: the last id returned, hex-encoded with a version tag, so that a cursor
/// is opaque to clients and a hand-edited one is caught.
pub fn encode_cursor(last: &MemoryId) -> String {
    let mut out = String::from("c1");
    for b in last.as_str().bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<MemoryId, ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidCursor,
            "\"cursor\" is not one this server issued; pass next_cursor from the previous page unchanged",
        )
    };
    let hex = cursor.strip_prefix("c1").ok_or_else(bad)?.as_bytes();
    if hex.len() % 2 != 0 || hex.is_empty() {
        return Err(bad());
    }
    // Byte pairs, not string slices: a multi-byte character must be refused, not split.
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes: Option<Vec<u8>> =
        hex.chunks(2).map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    MemoryId::parse(&text).map_err(|_| bad())
}

// ---------------------------------------------------------------------------------------------
// Search

mod filter;
pub use filter::{
    Bound, FieldOp, MAX_FILTER_CLAUSES, MAX_FILTER_DEPTH, MetadataFilter, compare_numbers, lookup,
    same,
};
mod update;
pub use update::{
    BaseVector, Change, Conditions, EmbeddedContent, Expiry, IDEMPOTENCY_KEY_HEADER, IfMatch,
    KEPT_CHANGE_KEYS, MAX_CHANGE_KEY_BYTES, MemoryPatch, PatchBase, PatchBody, Patched,
    PatchedVector, ShardPatch, ShardPatchResponse, etag, merge_patch, validate_change_key,
};
mod text;
pub use text::{
    EmbeddingDatum, EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage, Fusion,
    MAX_EMBED_INPUTS, MAX_QUERY_BYTES, RawEmbeddingsRequest, SearchMode, validate_offset,
    validate_query_text,
};

/// `POST …/memories/search` body, before validation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// Scopes to search; results are merged best first.
    pub scopes: Option<Vec<String>>,
    /// The query vector.
    pub embedding: Option<Vec<f32>>,
    /// The words of the question (embedded by the router for vector and hybrid modes).
    #[serde(default)]
    pub query: Option<String>,
    /// `vector`, `keyword` or `hybrid` (default: from what is given, see API.md).
    #[serde(default)]
    pub mode: Option<String>,
    /// How hybrid mode fuses its lists: `{"method": "rrf", "k": 60}` or `{"method": "weighted", "alpha": 0.7}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub fusion: Option<Value>,
    /// Results to skip (paging); `offset + k <= 1000`.
    #[serde(default)]
    pub offset: Option<usize>,
    /// Router to shard node only: the router embedded the query with this model (the shard
    /// checks the partition's). A client may not send it.
    #[serde(default)]
    #[schema(ignore)]
    pub embedded_by: Option<String>,
    /// How many results (default 10, at most 1000).
    #[serde(default)]
    pub k: Option<usize>,
    /// Restrictions applied inside the search.
    #[serde(default)]
    pub filter: Option<RawFilter>,
}

/// A search filter, before validation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    /// Conditions on metadata: `{"key": value}` is equality; operators `$eq $ne $gt $gte $lt
    /// $lte $in $nin $contains $exists` go inside a field's object (`{"n": {"$gt": 2}}`),
    /// `$and` / `$or` take arrays of such objects, `$not` one; keys may be dotted paths
    /// (`"user.country"`). At most 64 clauses, nested at most 8 deep.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Only memories created after this instant (RFC 3339).
    #[serde(default)]
    pub created_after: Option<String>,
    /// Only memories created before this instant (RFC 3339).
    #[serde(default)]
    pub created_before: Option<String>,
}

/// A validated filter; the form the shard node evaluates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// The condition on the metadata (`filter.rs`), if any.
    pub metadata: Option<MetadataFilter>,
    /// Exclusive lower bound on `created_at`, unix ms.
    pub created_after_ms: Option<i64>,
    /// Exclusive upper bound on `created_at`, unix ms.
    pub created_before_ms: Option<i64>,
}

impl Filter {
    /// True when the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none()
            && self.created_after_ms.is_none()
            && self.created_before_ms.is_none()
    }

    /// Does a memory with this metadata and creation time pass?
    pub fn matches(&self, metadata: &Map<String, Value>, created_at_ms: i64) -> bool {
        self.created_passes(created_at_ms)
            && self.metadata.as_ref().is_none_or(|m| m.matches(metadata))
    }

    /// Does a memory created at this instant pass the time bounds?
    pub fn created_passes(&self, created_at_ms: i64) -> bool {
        self.created_after_ms.is_none_or(|after| created_at_ms > after)
            && self.created_before_ms.is_none_or(|before| created_at_ms < before)
    }
}

/// What a shard node ranks by.
#[derive(Debug, Clone)]
pub enum ShardQuery {
    /// Nearest vectors to this one.
    Vector(Vec<f32>),
    /// BM25 of these words.
    Keyword(String),
    /// Neither: the filtered memories, newest `updated_at` first, ties by id.
    List,
}

/// A validated search of one partition: what a shard node executes (one mode; the router
/// fuses a hybrid search from the two lists).
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The vector or the words.
    pub by: ShardQuery,
    /// How many results.
    pub k: usize,
    /// The filter.
    pub filter: Filter,
    /// The model the router embedded the query with, if it did.
    pub embedded_by: Option<String>,
}

/// A validated search (the router's view).
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Distinct scopes, in the order given.
    pub scopes: Vec<Scope>,
    /// The query vector, if the client sent one.
    pub embedding: Option<Vec<f32>>,
    /// The words of the question, if sent.
    pub text: Option<String>,
    /// The mode the client asked for (`None`: decided from what was sent and the embedder).
    pub mode: Option<SearchMode>,
    /// How hybrid mode fuses.
    pub fusion: Fusion,
    /// How many results.
    pub k: usize,
    /// Results skipped before those `k`.
    pub offset: usize,
    /// The filter.
    pub filter: Filter,
}

impl RawSearch {
    /// Checks every field, scopes included (the router's view).
    pub fn validate(mut self) -> Result<SearchRequest, ApiError> {
        let raw_scopes = self.scopes.take().ok_or_else(|| {
            ApiError::invalid(
                "\"scopes\" is required: a list such as [\"agent:planner\", \"shared\"]",
            )
        })?;
        if raw_scopes.is_empty() {
            return Err(ApiError::invalid("\"scopes\" is empty; name at least one scope"));
        }
        if raw_scopes.len() > 64 {
            return Err(ApiError::invalid("\"scopes\" lists more than 64 scopes"));
        }
        let mut scopes: Vec<Scope> = Vec::with_capacity(raw_scopes.len());
        for raw in &raw_scopes {
            let scope = Scope::parse(raw)?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if self.embedded_by.is_some() {
            return Err(ApiError::invalid(
                "unknown field \"embedded_by\"; a search takes scopes, query, embedding, mode, fusion, k, offset and filter",
            ));
        }
        if let Some(embedding) = &self.embedding {
            validate_embedding(embedding)?;
        }
        if let Some(text) = &self.query {
            validate_query_text(text)?;
        }
        let mode = self.mode.as_deref().map(SearchMode::parse).transpose()?;
        let fusion = self.fusion.as_ref().map(Fusion::parse).transpose()?.unwrap_or_default();
        let k = validate_k(self.k)?;
        let offset = self.offset.unwrap_or(0);
        validate_offset(offset, k)?;
        match mode {
            Some(SearchMode::Keyword) if self.query.is_none() => {
                return Err(ApiError::invalid("\"mode\": \"keyword\" needs a \"query\""));
            }
            Some(SearchMode::Hybrid) if self.query.is_none() => {
                return Err(ApiError::invalid("\"mode\": \"hybrid\" needs a \"query\""));
            }
            Some(SearchMode::Vector) if self.query.is_none() && self.embedding.is_none() => {
                return Err(ApiError::invalid(
                    "\"mode\": \"vector\" needs an \"embedding\" or a \"query\"",
                ));
            }
            _ => {}
        }
        let filter = self.filter.map(RawFilter::validate).transpose()?.unwrap_or_default();
        Ok(SearchRequest {
            scopes,
            embedding: self.embedding,
            text: self.query,
            mode,
            fusion,
            k,
            offset,
            filter,
        })
    }

    /// Checks the vector, `k` and the filter (the shard node's view: the partition comes from
    /// the path, so `scopes` is not looked at). The router forwards the client's body unchanged,
    /// so both sides parse the same bytes with the same rules.
    pub fn validate_query(self) -> Result<SearchQuery, ApiError> {
        let k = validate_k(self.k)?;
        let filter = self.filter.map(RawFilter::validate).transpose()?.unwrap_or_default();
        let by = match self.mode.as_deref().map(SearchMode::parse).transpose()? {
            Some(SearchMode::Keyword) => {
                let text = self
                    .query
                    .ok_or_else(|| ApiError::invalid("\"mode\": \"keyword\" needs a \"query\""))?;
                validate_query_text(&text)?;
                ShardQuery::Keyword(text)
            }
            Some(SearchMode::Hybrid) => {
                return Err(ApiError::invalid(
                    "a shard node searches one mode at a time (the router fuses hybrid searches)",
                ));
            }
            None if self.embedding.is_none() && self.query.is_none() => ShardQuery::List,
            Some(SearchMode::Vector) | None => {
                let embedding = self
                    .embedding
                    .ok_or_else(|| ApiError::invalid("\"embedding\" is required for search"))?;
                validate_embedding(&embedding)?;
                ShardQuery::Vector(embedding)
            }
        };
        Ok(SearchQuery { by, k, filter, embedded_by: self.embedded_by })
    }
}

/// `k`: default 10, from 1 to 1000.
fn validate_k(k: Option<usize>) -> Result<usize, ApiError> {
    let k = k.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid(format!("\"k\" must be between 1 and {MAX_K}, got {k}")));
    }
    Ok(k)
}

impl RawFilter {
    /// Checks the metadata condition and the timestamps and builds a [`Filter`].
    pub fn validate(self) -> Result<Filter, ApiError> {
        let created_after_ms = self
            .created_after
            .as_deref()
            .map(|t| clock::parse_rfc3339("filter.created_after", t))
            .transpose()?;
        let created_before_ms = self
            .created_before
            .as_deref()
            .map(|t| clock::parse_rfc3339("filter.created_before", t))
            .transpose()?;
        let metadata = match &self.metadata {
            Some(map) => MetadataFilter::parse(map)?,
            None => None,
        };
        Ok(Filter { metadata, created_after_ms, created_before_ms })
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// The memory's id.
    #[schema(value_type = String)]
    pub id: MemoryId,
    /// Its scope.
    #[schema(value_type = String)]
    pub scope: Scope,
    /// Cosine similarity with the query (vector mode), BM25 (keyword mode) or the fused score
    /// (hybrid); higher is better. `null` in a listing (neither `query` nor `embedding`).
    pub score: Option<f32>,
    /// The parts that produced `score`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// Its text.
    pub content: String,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339): a listing's order, newest first.
    #[serde(default)]
    pub updated_at: String,
}

/// The parts of a search hit's score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scores {
    /// Cosine similarity with the query vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<f32>,
    /// BM25 of the query's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<f32>,
}

impl Scores {
    /// A vector score alone.
    pub fn vector(score: f32) -> Self {
        Scores { vector: Some(score), keyword: None }
    }

    /// A keyword score alone.
    pub fn keyword(score: f32) -> Self {
        Scores { vector: None, keyword: Some(score) }
    }
}

/// A search answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    /// Best first across all scopes.
    pub results: Vec<SearchHit>,
    /// True when a scope's node did not answer and its results are missing.
    pub partial: bool,
}

// ---------------------------------------------------------------------------------------------
// By audience: internal router → shard, shard node state, the control plane

mod internal;
pub use internal::*;
mod node;
pub use node::*;
mod control;
pub use control::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_with_multibyte_characters_is_refused_not_a_panic() {
        // Found by tests/hostile_input.rs: slicing the hex by byte index split a character.
        for bad in ["c1\u{fffd}\u{1138e}*d", "c1é0", "c1€€", "c1zz"] {
            assert_eq!(decode_cursor(bad).expect_err(bad).code(), ErrorCode::InvalidCursor);
        }
        let id = MemoryId::parse("m-1").expect("id");
        assert_eq!(decode_cursor(&encode_cursor(&id)).expect("round trip"), id);
    }

    #[test]
    fn read_tokens_round_trip_keep_the_highest_position_and_refuse_garbage() {
        let mut t = ReadToken::default();
        t.note(Scope::parse("shared").expect("scope"), 7);
        t.note(Scope::parse("agent:a1").expect("scope"), 3);
        t.note(Scope::parse("shared").expect("scope"), 5);
        let text = t.to_string();
        assert_eq!(text, "agent:a1=3,shared=7");
        let back = ReadToken::parse(&text).expect("parses");
        assert_eq!(back, t);
        assert_eq!(back.min_seq(&Scope::parse("shared").expect("scope")), 7);
        assert_eq!(back.min_seq(&Scope::parse("agent:zz").expect("scope")), 0);
        assert_eq!(ReadToken::parse("").expect("empty"), ReadToken::default());
        for bad in ["shared", "shared=x", "bad scope=1", "shared=-1", "=3"] {
            assert!(ReadToken::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn raw(json: &str) -> RawWrite {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn a_good_write_validates() {
        let item = raw(r#"{"scope":"shared","content":"hi","embedding":[1,0],"metadata":{"a":1}}"#)
            .validate()
            .expect("valid");
        assert_eq!(item.scope, Scope::Shared);
        assert_eq!(item.metadata["a"], 1);
    }

    #[test]
    fn write_mistakes_say_what_is_wrong() {
        for (json, needle) in [
            (r#"{"content":"x"}"#, "scope"),
            (r#"{"scope":"shared"}"#, "content"),
            (r#"{"scope":"bogus","content":"x"}"#, "unknown scope"),
            (r#"{"scope":"shared","content":"x","embedding":[]}"#, "empty"),
            (r#"{"scope":"shared","content":"x","embedding":[0,0]}"#, "zeros"),
            (r#"{"scope":"shared","content":"x","embedding":[1e39]}"#, "finite"),
            (r#"{"scope":"shared","content":"x","metadata":[1]}"#, "object"),
            (r#"{"scope":"shared","content":"x","id":"a/b"}"#, "memory id"),
            (r#"{"scope":"shared","content":"x","ttl_seconds":0}"#, "ttl_seconds"),
        ] {
            let err = raw(json).validate().expect_err(json);
            assert_eq!(err.status(), 400, "{json}");
            assert!(err.message().contains(needle), "{json}: {}", err.message());
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_str::<RawWrite>(r#"{"scope":"shared","content":"x","scopes":[]}"#)
                .is_err()
        );
    }

    #[test]
    fn search_validation() {
        let ok: RawSearch =
            serde_json::from_str(r#"{"scopes":["shared","shared","agent:a"],"embedding":[1]}"#)
                .expect("parses");
        let req = ok.validate().expect("valid");
        assert_eq!(req.scopes.len(), 2, "duplicates collapse");
        assert_eq!(req.k, DEFAULT_K);
        // Neither query nor embedding: a filtered listing (API.md part 2), valid.
        let listing: RawSearch = serde_json::from_str(r#"{"scopes":["shared"]}"#).expect("parses");
        let listing = listing.validate().expect("a listing");
        assert!(listing.embedding.is_none() && listing.text.is_none() && listing.mode.is_none());
        for json in [
            r#"{"embedding":[1]}"#,
            r#"{"scopes":[],"embedding":[1]}"#,
            r#"{"scopes":["shared"],"mode":"vector"}"#,
            r#"{"scopes":["shared"],"query":"x","mode":"fuzzy"}"#,
            r#"{"scopes":["shared"],"query":"x","offset":999,"k":2}"#,
            r#"{"scopes":["shared"],"embedding":[1],"k":1001}"#,
            r#"{"scopes":["shared"],"embedding":[1],"k":0}"#,
            r#"{"scopes":["shared"],"embedding":[1],"filter":{"created_after":"soon"}}"#,
        ] {
            let raw: RawSearch = serde_json::from_str(json).expect(json);
            assert_eq!(raw.validate().expect_err(json).status(), 400, "{json}");
        }
    }

    #[test]
    fn filter_semantics() {
        let metadata: Map<String, Value> = serde_json::from_str(r#"{"kind":"note"}"#).expect("map");
        let filter = Filter {
            metadata: MetadataFilter::parse(&metadata).expect("valid"),
            created_after_ms: Some(100),
            created_before_ms: Some(200),
        };
        let note: Map<String, Value> =
            serde_json::from_str(r#"{"kind":"note","x":1}"#).expect("map");
        let other: Map<String, Value> = serde_json::from_str(r#"{"kind":"plan"}"#).expect("map");
        assert!(filter.matches(&note, 150));
        assert!(!filter.matches(&note, 100), "bounds are exclusive");
        assert!(!filter.matches(&note, 200));
        assert!(!filter.matches(&other, 150));
    }

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let id = MemoryId::parse("abc-1.2_3").expect("id");
        assert_eq!(decode_cursor(&encode_cursor(&id)).expect("decodes"), id);
        for bad in ["", "c1", "c1zz", "c12", "x16162", "c12f"] {
            assert_eq!(decode_cursor(bad).expect_err(bad).status(), 400, "{bad}");
        }
    }
}
