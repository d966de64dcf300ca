//! The filter language (API.md part 2, "Filters") end to end: three shard nodes, a router, real
//! RocksDB; two scopes of one tenant, searched together. Every operator with a matching and a
//! non-matching case, dotted paths and type mismatches, in the listing and in vector search, on
//! shard nodes that read each memory's metadata and on shard nodes that answer from their metadata
//! index (`--metadata-index-min 1`): both must give the same answers. Bad filters are
//! `400 invalid_filter` naming the operator and the path.

use std::collections::BTreeSet;

use memring_tests::{Cluster, assert_client_error, vector};
use serde_json::{Value, json};

const DIMS: usize = 8;

/// The memories: `(id, scope, metadata)`.
fn memories() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "m1",
            "shared",
            json!({"kind": "fact", "n": 3, "tags": ["a", "b"], "user": {"country": "PT"},
                   "when": "2026-01-02T00:00:00Z"}),
        ),
        (
            "m2",
            "shared",
            json!({"kind": "plan", "n": 3.5, "tags": ["b"], "user": {"country": "ES"}}),
        ),
        ("m3", "shared", json!({"kind": "fact", "n": "3"})),
        ("m4", "agent:x", json!({"user.country": "PT", "n": 10})),
        ("m5", "agent:x", json!({})),
    ]
}

/// `(filter.metadata, the ids it lets through)`.
fn cases() -> Vec<(Value, &'static [&'static str])> {
    vec![
        (json!({"kind": "fact"}), &["m1", "m3"]),
        (json!({"kind": "memo"}), &[]),
        (json!({"kind": {"$eq": "plan"}}), &["m2"]),
        (json!({"kind": {"$ne": "fact"}}), &["m2", "m4", "m5"]),
        (json!({"n": {"$gt": 3}}), &["m2", "m4"]),
        (json!({"n": {"$gt": 10}}), &[]),
        (json!({"n": {"$gte": 3}}), &["m1", "m2", "m4"]),
        (json!({"n": {"$lt": 3.5}}), &["m1"]),
        (json!({"n": {"$lt": 3}}), &[]),
        (json!({"n": {"$lte": 3.5}}), &["m1", "m2"]),
        (json!({"n": {"$eq": 3.0}}), &["m1"]),
        (json!({"n": {"$gt": 1, "$lt": 5}}), &["m1", "m2"]),
        (json!({"n": {"$in": [3, 10]}}), &["m1", "m4"]),
        (json!({"n": {"$in": [7]}}), &[]),
        (json!({"n": {"$nin": [3, 10]}}), &["m2", "m3", "m5"]),
        (json!({"tags": {"$contains": "b"}}), &["m1", "m2"]),
        (json!({"tags": {"$contains": "z"}}), &[]),
        (json!({"user": {"$exists": true}}), &["m1", "m2"]),
        (json!({"user": {"$exists": false}}), &["m3", "m4", "m5"]),
        (json!({"user.country": "PT"}), &["m1", "m4"]),
        (json!({"user.country": {"$in": ["ES"]}}), &["m2"]),
        (json!({"user.country": "FR"}), &[]),
        (json!({"$or": [{"kind": "plan"}, {"n": 10}]}), &["m2", "m4"]),
        (json!({"$or": [{"kind": "memo"}, {"n": 11}]}), &[]),
        (json!({"$and": [{"kind": "fact"}, {"n": {"$gt": 1}}]}), &["m1"]),
        (json!({"$and": [{"kind": "plan"}, {"n": {"$gt": 5}}]}), &[]),
        (json!({"$not": {"kind": "fact"}}), &["m2", "m4", "m5"]),
        (json!({"$not": {"n": {"$exists": true}}}), &["m5"]),
        (json!({"when": {"$gte": "2026-01-01T00:00:00Z"}}), &["m1"]),
        (json!({"when": {"$lt": "2026-01-01T00:00:00Z"}}), &[]),
        // Type mismatches: a string never compares with a number, nor a number with a string.
        (json!({"kind": {"$gt": 1}}), &[]),
        (json!({"n": {"$lt": "9"}}), &["m3"]),
        (json!({"n": "3"}), &["m3"]),
    ]
}

async fn load(c: &Cluster) -> anyhow::Result<()> {
    for (i, (id, scope, metadata)) in memories().into_iter().enumerate() {
        let body = json!({"id": id, "scope": scope, "content": format!("memory {id}"),
                          "embedding": vector(DIMS, i % DIMS, 0.1), "metadata": metadata});
        let (status, answer) = c.post("/v1/tenants/acme/memories", &body).await?;
        anyhow::ensure!(status == 201, "write {id}: {status} {answer}");
    }
    Ok(())
}

fn ids(answer: &Value) -> BTreeSet<String> {
    answer["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Every case, in the listing and in vector search; returns the answers seen.
async fn check_cases(c: &Cluster) -> anyhow::Result<Vec<BTreeSet<String>>> {
    let mut seen = Vec::new();
    for (filter, want) in cases() {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        for by_vector in [false, true] {
            let mut search =
                json!({"scopes": ["shared", "agent:x"], "k": 50, "filter": {"metadata": filter}});
            if by_vector {
                search["embedding"] = json!(vector(DIMS, 0, 0.3));
            }
            let (status, answer) = c.post("/v1/tenants/acme/memories/search", &search).await?;
            assert_eq!(status, 200, "{filter}: {answer}");
            assert_eq!(ids(&answer), want, "{filter} (vector: {by_vector})");
            seen.push(ids(&answer));
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn every_operator_matches_and_refuses_the_same_with_and_without_the_metadata_index()
-> anyhow::Result<()> {
    let scanning = Cluster::start(3).await?;
    load(&scanning).await?;
    let by_scan = check_cases(&scanning).await?;
    drop(scanning);
    let indexed = Cluster::start_with(3, &["--metadata-index-min", "1"]).await?;
    load(&indexed).await?;
    let by_index = check_cases(&indexed).await?;
    assert_eq!(by_scan, by_index);
    // The index follows replacements and deletes.
    let body = json!({"id": "m3", "scope": "shared", "content": "memory m3",
                      "embedding": vector(DIMS, 2, 0.1), "metadata": {"kind": "plan", "n": 4}});
    assert_eq!(indexed.post("/v1/tenants/acme/memories", &body).await?.0, 200);
    let (status, _) = indexed.delete("/v1/tenants/acme/memories/m2?scope=shared").await?;
    assert_eq!(status, 204);
    let search =
        json!({"scopes": ["shared", "agent:x"], "filter": {"metadata": {"n": {"$gt": 3}}}});
    let (_, answer) = indexed.post("/v1/tenants/acme/memories/search", &search).await?;
    assert_eq!(ids(&answer), ["m3", "m4"].map(String::from).into());
    Ok(())
}

#[tokio::test]
async fn bad_filters_are_400_invalid_filter_naming_the_operator_and_path() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    load(&c).await?;
    let mut deep = json!({"kind": "fact"});
    for _ in 0..9 {
        deep = json!({"$not": deep});
    }
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let cases = [
        (json!({"kind": {"$regex": "f.*"}}), "$regex"),
        (json!({"$where": "true"}), "$where"),
        (json!({"kind": {"$in": "fact"}}), "filter.metadata.kind.$in"),
        (json!({"n": {"$gt": {"a": 1}}}), "filter.metadata.n.$gt"),
        (json!({"n": {"$exists": "yes"}}), "filter.metadata.n.$exists"),
        (json!({"$or": []}), "filter.metadata.$or"),
        (deep, "deeper than 8"),
        (Value::Object(many), "more than 64"),
    ];
    for (filter, names) in cases {
        let search = json!({"scopes": ["shared"], "filter": {"metadata": filter}});
        let (status, answer) = c.post("/v1/tenants/acme/memories/search", &search).await?;
        assert_eq!(assert_client_error(status, &answer), "invalid_filter", "{filter}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{filter}: {message}");
    }
    // Nesting 10,000 deep is refused without harm (the JSON parser stops at its depth limit).
    let deep = format!(
        r#"{{"scopes":["shared"],"filter":{{"metadata":{}{{"a":1}}{}}}}}"#,
        r#"{"$not":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    let (status, answer) =
        c.post_raw("/v1/tenants/acme/memories/search", deep.into_bytes()).await?;
    assert_client_error(status, &answer);
    assert_eq!(c.get("/health").await?.0, 200);
    Ok(())
}
