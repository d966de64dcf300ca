//! Hostile input against every parser a request goes through (bodies, path segments, query
//! strings, headers): whatever the bytes, the answer is a value or a 4xx error — never a panic,
//! never a 5xx. Structured inputs mutate valid requests (wrong types, edge numbers, odd strings,
//! deep nesting); unstructured ones are raw bytes.
//!
//! Cases per property: `MEMRING_FUZZ_CASES` (default 20,000, what `make test` runs; `make fuzz`
//! runs many more). Every property is seeded by proptest and shrinks failures.

use memring_common::api::{
    BaseVector, Conditions, EmbeddedContent, MemoryPatch, PatchBase, RawBatch,
    RawEmbeddingsRequest, RawSearch, RawWrite, ReadToken, decode_cursor, parse_list_limit,
};
use memring_common::http::{parse_json, percent_decode, query_pairs};
use memring_common::{ApiError, MemoryId, PartitionKey, Scope, TenantId};
use proptest::prelude::*;
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("MEMRING_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// A client's mistake must be a 4xx.
fn client_error<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!((400..500).contains(&e.status()), "{} -> {}", e.message(), e.status());
    }
    Ok(())
}

/// Odd strings: empty, huge, unicode, control characters, percent signs, path tricks.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".repeat(10_000)),
        Just("../../etc/passwd".to_owned()),
        Just("%00%ff%".to_owned()),
        Just("agent:".to_owned()),
        Just("global".to_owned()),
        Just("\u{0}\u{1f}\u{7f}".to_owned()),
        Just("😀".repeat(100)),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

/// JSON values of every kind, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(odd_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid write with one field replaced (or added) by anything.
fn mutated_write() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("scope"),
        Just("content"),
        Just("embedding"),
        Just("metadata"),
        Just("id"),
        Just("ttl_seconds"),
        Just("embedding_model"),
        Just("unknown_field"),
    ];
    (fields, any_json()).prop_map(|(field, value)| {
        let mut w = json!({"scope": "shared", "content": "x", "embedding": [0.1, 0.2], "id": "m1"});
        w[field] = value;
        w
    })
}

fn mutated_search() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("scopes"),
        Just("embedding"),
        Just("k"),
        Just("filter"),
        Just("query"),
        Just("mode"),
        Just("fusion"),
        Just("offset"),
        Just("embedded_by"),
        Just("extra"),
    ];
    (fields, any_json()).prop_map(|(field, value)| {
        let mut s = json!({"scopes": ["shared"], "embedding": [0.1, 0.2], "k": 5,
            "query": "what did she say", "mode": "hybrid", "fusion": {"method": "rrf", "k": 60},
            "offset": 0,
            "filter": {"metadata": {"a": 1}, "created_after": "2026-01-01T00:00:00Z"}});
        s[field] = value;
        s
    })
}

fn check_write_body(body: &[u8]) -> Result<(), TestCaseError> {
    client_error(parse_json::<RawWrite>(body).and_then(RawWrite::validate))
}

fn check_search_body(body: &[u8]) -> Result<(), TestCaseError> {
    client_error(parse_json::<RawSearch>(body).and_then(RawSearch::validate))?;
    client_error(parse_json::<RawSearch>(body).and_then(RawSearch::validate_query))
}

fn check_embeddings_body(body: &[u8]) -> Result<(), TestCaseError> {
    client_error(parse_json::<RawEmbeddingsRequest>(body).and_then(RawEmbeddingsRequest::validate))
}

/// A valid `POST /v1/embeddings` with one field replaced (or added) by anything.
fn mutated_embeddings() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("input"),
        Just("model"),
        Just("encoding_format"),
        Just("dimensions"),
        Just("user"),
        Just("extra")
    ];
    (fields, any_json()).prop_map(|(field, value)| {
        let mut e = json!({"input": ["a", "b"], "model": "all-MiniLM-L6-v2"});
        e[field] = value;
        e
    })
}

/// A PATCH body: parsed, then applied to memories of every vector origin (the owner's step),
/// with and without the router's vector of new content.
fn check_patch_body(body: &[u8]) -> Result<(), TestCaseError> {
    let patch = match MemoryPatch::parse(body) {
        Ok(patch) => patch,
        Err(e) => return client_error::<()>(Err(e)),
    };
    let made = EmbeddedContent { embedding: vec![0.5, 0.5], model: "m".into() };
    for vector in [BaseVector::None, BaseVector::Client, BaseVector::Router("m".into())] {
        let base = PatchBase {
            content: "old".into(),
            metadata: json!({"a": {"b": 1}, "n": 2}).as_object().cloned().unwrap_or_default(),
            vector,
        };
        client_error(patch.apply(&base, None))?;
        client_error(patch.apply(&base, Some(&made)))?;
    }
    Ok(())
}

/// A valid patch with one field replaced (or added) by anything.
fn mutated_patch() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("content"),
        Just("metadata"),
        Just("embedding"),
        Just("embedding_model"),
        Just("ttl_seconds"),
        Just("scope"),
        Just("id"),
        Just("extra"),
    ];
    (fields, any_json()).prop_map(|(field, value)| {
        let mut p = json!({"content": "new", "metadata": {"a": {"b": null}, "c": [1]}});
        p[field] = value;
        p
    })
}

fn check_batch_body(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_json::<RawBatch>(body) {
        Ok(batch) => {
            for item in batch.items {
                check_write_body(item.get().as_bytes())?;
            }
            Ok(())
        }
        Err(e) => client_error::<()>(Err(e)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes_never_panic_any_body_parser(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_write_body(&body)?;
        check_search_body(&body)?;
        check_batch_body(&body)?;
        check_embeddings_body(&body)?;
        check_patch_body(&body)?;
    }

    #[test]
    fn mutated_patches_are_values_or_client_errors(p in mutated_patch()) {
        let body = serde_json::to_vec(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_patch_body(&body)?;
    }

    #[test]
    fn mutated_embedding_requests_are_values_or_client_errors(e in mutated_embeddings()) {
        let body = serde_json::to_vec(&e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_embeddings_body(&body)?;
    }

    #[test]
    fn mutated_writes_are_values_or_client_errors(w in mutated_write()) {
        let body = serde_json::to_vec(&w).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_write_body(&body)?;
        let batch = serde_json::to_vec(&json!({"items": [w.clone(), w]})).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_batch_body(&batch)?;
    }

    #[test]
    fn mutated_searches_are_values_or_client_errors(s in mutated_search()) {
        let body = serde_json::to_vec(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_search_body(&body)?;
    }

    #[test]
    fn arbitrary_json_bodies_are_client_errors_at_worst(v in any_json()) {
        let body = serde_json::to_vec(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_write_body(&body)?;
        check_search_body(&body)?;
        check_batch_body(&body)?;
        check_patch_body(&body)?;
    }

    #[test]
    fn path_segments_query_strings_and_headers_never_panic(s in odd_string(), q in "\\PC{0,200}") {
        client_error(percent_decode(&s))?;
        client_error(query_pairs(Some(&q)))?;
        client_error(query_pairs(Some(&s)))?;
        client_error(TenantId::parse(&s))?;
        client_error(MemoryId::parse(&s))?;
        client_error(Scope::parse(&s))?;
        client_error(decode_cursor(&s))?;
        client_error(parse_list_limit(&s))?;
        client_error(ReadToken::parse(&s))?;
        client_error(ReadToken::parse(&q))?;
        for name in ["if-match", "if-none-match", "idempotency-key"] {
            for value in [s.as_str(), q.as_str()] {
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    let mut headers = http::HeaderMap::new();
                    headers.insert(name, v);
                    client_error(Conditions::from_headers(&headers))?;
                }
            }
        }
        let _ = s.parse::<PartitionKey>();
    }
}
