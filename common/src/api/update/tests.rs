//! Tests of `update.rs`.

use serde_json::json;

use super::*;

fn patch(v: Value) -> Result<MemoryPatch, ApiError> {
    MemoryPatch::parse(&serde_json::to_vec(&v).expect("json"))
}

fn base(metadata: Value, vector: BaseVector) -> PatchBase {
    PatchBase {
        content: "old".into(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        vector,
    }
}

/// The examples of RFC 7396's appendix A.
#[test]
fn merge_patch_follows_rfc_7396() {
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
        (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        (json!({"a": "foo"}), json!(null), json!(null)),
        (json!({"a": "foo"}), json!("bar"), json!("bar")),
        (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
        (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
        (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
    ];
    for (target, p, want) in cases {
        let mut got = target.clone();
        merge_patch(&mut got, &p);
        assert_eq!(got, want, "{target} + {p}");
    }
}

#[test]
fn patches_parse_and_refuse_what_is_not_a_memory_field() {
    let p = patch(json!({"content": "new", "metadata": {"a": null}, "ttl_seconds": null}))
        .expect("valid");
    assert_eq!(p.content.as_deref(), Some("new"));
    assert_eq!(p.ttl_seconds, Change::Clear);
    assert!(p.wants_embedding());
    assert_eq!(patch(json!({})).expect("empty"), MemoryPatch::default());
    for (bad, says) in [
        (json!({"content": null}), "every memory has content"),
        (json!({"content": 3}), "must be a string"),
        (json!({"metadata": [1]}), "must be an object"),
        (json!({"embedding": "x"}), "array of numbers"),
        (json!({"embedding": []}), "empty"),
        (json!({"embedding_model": "m"}), "send both"),
        (json!({"ttl_seconds": 0}), "between 1"),
        (json!({"ttl_seconds": -1}), "between 1"),
        (json!({"ttl_seconds": "60"}), "between 1"),
        (json!({"scope": "shared"}), "cannot change"),
        (json!({"id": "x"}), "cannot change"),
        (json!({"contents": "x"}), "unknown field \"contents\""),
        (json!(["content"]), "Merge Patch object"),
    ] {
        let err = patch(bad.clone()).expect_err(&bad.to_string());
        assert!(err.message().contains(says), "{bad}: {}", err.message());
        assert_eq!(err.status(), 400, "{bad}");
    }
}

#[test]
fn a_patch_merges_metadata_and_decides_the_vector() {
    let router = BaseVector::Router("m".into());
    let b = base(json!({"n": 1, "user": {"a": 1, "b": 2}, "gone": true}), router.clone());
    let p = patch(json!({"metadata": {"n": 2, "user": {"b": null}, "gone": null}})).expect("valid");
    let out = p.apply(&b, None).expect("applies");
    assert_eq!(Value::Object(out.metadata), json!({"n": 2, "user": {"a": 1}}));
    assert_eq!(out.vector, PatchedVector::Kept);
    assert_eq!(out.expiry, Expiry::Keep);

    let e = EmbeddedContent { embedding: vec![1.0, 0.0], model: "m".into() };
    let p = patch(json!({"content": "new"})).expect("valid");
    // A router-made vector follows the content; the same content keeps it.
    assert_eq!(p.apply(&b, Some(&e)).expect("ok").vector, PatchedVector::Router(e.clone()));
    assert_eq!(p.apply(&b, None).expect_err("no embedder").code(), ErrorCode::NoEmbedder);
    let same = patch(json!({"content": "old"})).expect("valid");
    assert_eq!(same.apply(&b, None).expect("ok").vector, PatchedVector::Kept);
    // A client's vector does not follow new content by itself.
    let client = base(json!({}), BaseVector::Client);
    let err = p.apply(&client, Some(&e)).expect_err("client vector");
    assert!(err.message().contains("\"embedding\""), "{}", err.message());
    let with_vector = patch(json!({"content": "new", "embedding": [0.5, 0.5]})).expect("ok");
    assert_eq!(
        with_vector.apply(&client, None).expect("ok").vector,
        PatchedVector::Client(vec![0.5, 0.5], None)
    );
    // No vector before: still none, whatever the router could embed.
    let none = base(json!({}), BaseVector::None);
    assert_eq!(p.apply(&none, None).expect("ok").vector, PatchedVector::None);
    assert_eq!(p.apply(&none, Some(&e)).expect("ok").vector, PatchedVector::None);
    // Metadata cleared, TTL set.
    let p = patch(json!({"metadata": null, "ttl_seconds": 60})).expect("valid");
    let out = p.apply(&b, None).expect("ok");
    assert!(out.metadata.is_empty());
    assert_eq!(out.expiry, Expiry::After(60));
    // Metadata that would outgrow the limit.
    let big = "x".repeat(MAX_METADATA_BYTES);
    let err = patch(json!({"metadata": {"big": big}})).expect("parses").apply(&b, None);
    assert!(err.expect_err("too big").message().contains("limit"));
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[test]
fn conditions_come_from_headers_and_bad_ones_are_refused() {
    let c =
        Conditions::from_headers(&headers(&[("If-Match", "\"7\""), ("Idempotency-Key", "k-1")]))
            .expect("valid");
    assert_eq!(c.if_match, Some(IfMatch::Version(7)));
    assert_eq!(c.key.as_deref(), Some("k-1"));
    let c = Conditions::from_headers(&headers(&[("If-None-Match", "*")])).expect("valid");
    assert!(c.if_none_match);
    assert!(Conditions::from_headers(&headers(&[])).expect("none").is_empty());
    for bad in [
        vec![("If-Match", "7")],
        vec![("If-Match", "W/\"7\"")],
        vec![("If-Match", "\"7\", \"8\"")],
        vec![("If-Match", "\"-1\"")],
        vec![("If-Match", "\"+1\"")],
        vec![("If-Match", "\"\"")],
        vec![("If-Match", "\"1\""), ("If-Match", "\"2\"")],
        vec![("If-None-Match", "\"7\"")],
        vec![("If-Match", "*"), ("If-None-Match", "*")],
        vec![("Idempotency-Key", "has space")],
        vec![("Idempotency-Key", &"k".repeat(65))],
    ] {
        let err = Conditions::from_headers(&headers(&bad)).expect_err(&format!("{bad:?}"));
        assert_eq!(err.status(), 400, "{bad:?}");
    }
}

#[test]
fn conditions_hold_or_fail_with_the_current_version() {
    let at = |v| Conditions { if_match: Some(IfMatch::Version(v)), ..Default::default() };
    assert!(at(3).check("m", Some(3), false).is_ok());
    let err = at(3).check("m", Some(4), false).expect_err("moved on");
    assert_eq!(err.status(), 412);
    assert!(err.message().contains("version 4"), "{}", err.message());
    assert_eq!(at(3).check("m", None, false).expect_err("gone").status(), 412);
    let any = Conditions { if_match: Some(IfMatch::Any), ..Default::default() };
    assert!(any.check("m", Some(9), false).is_ok());
    assert!(any.check("m", None, false).is_err());
    let create = Conditions { if_none_match: true, ..Default::default() };
    assert!(create.check("m", None, false).is_ok());
    assert!(create.check("m", Some(1), true).is_ok(), "the same body again");
    assert_eq!(create.check("m", Some(1), false).expect_err("exists").status(), 412);
    assert!(Conditions::default().check("m", Some(1), false).is_ok());
}

#[test]
fn a_memory_remembers_its_latest_keys() {
    let keyed = |k: &str| Conditions { key: Some(k.into()), ..Default::default() };
    let mut keys = Vec::new();
    for i in 0..(KEPT_CHANGE_KEYS + 5) {
        keys = keyed(&format!("k{i}")).keys_after(&keys);
    }
    assert_eq!(keys.len(), KEPT_CHANGE_KEYS);
    assert_eq!(keys.first().map(String::as_str), Some("k5"));
    assert!(keyed(&format!("k{}", KEPT_CHANGE_KEYS + 4)).replayed(&keys));
    assert!(keyed("k5").replayed(&keys));
    assert!(!keyed("k4").replayed(&keys));
    assert!(!Conditions::default().replayed(&keys));
    assert_eq!(Conditions::default().keys_after(&keys), keys, "no key: nothing to add");
}
