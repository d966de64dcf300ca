//! Searches of the public API (API.md, "Search"): the request as sent and its validation
//! (scopes, vector or text query, mode, `k`, filters), what a shard node is asked, and the hits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    DEFAULT_K, Fusion, MAX_K, MetadataFilter, SearchMode, validate_embedding, validate_offset,
    validate_query_text,
};
use crate::clock;
use crate::error::ApiError;
use crate::ids::MemoryId;
use crate::scope::Scope;

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
