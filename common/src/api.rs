//! Wire types: the public API v1 (API.md) and the internal router → shard API.
//!
//! Requests arrive as `Raw*` structs (plain strings and numbers, unknown fields refused) and are
//! turned into validated forms by `validate()`, so every check, and every error message, lives in
//! one place that the router and the shard node share. Responses are the exact JSON shapes of
//! API.md; the shard node answers in those shapes too, so the router can pass bodies through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

mod write;
pub use write::*;

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
mod search;
pub use search::*;

// ---------------------------------------------------------------------------------------------
// By audience: internal router → shard, shard node state, the control plane

mod internal;
pub use internal::*;
mod node;
pub use node::*;
mod control;
pub use control::*;
mod jobs;
pub use jobs::*;

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
