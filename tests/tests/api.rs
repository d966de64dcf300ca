//! API v1 end to end: a router and three shard nodes, real RocksDB, driven over HTTP.

use std::collections::BTreeSet;

use memring_tests::{Cluster, assert_client_error, vector};
use serde_json::{Value, json};

const DIMS: usize = 8;

/// Writes one memory with a chosen id and expects 201.
async fn write_one(
    c: &Cluster,
    tenant: &str,
    scope: &str,
    id: impl Into<String>,
    content: &str,
    axis: usize,
    tilt: f32,
) -> anyhow::Result<()> {
    let mut m = memory(scope, content, axis, tilt);
    m["id"] = json!(id.into());
    let (status, body) = c.post(&format!("/v1/tenants/{tenant}/memories"), &m).await?;
    anyhow::ensure!(status == 201, "write answered {status}: {body}");
    Ok(())
}

fn memory(scope: &str, content: &str, axis: usize, tilt: f32) -> Value {
    json!({"scope": scope, "content": content, "embedding": vector(DIMS, axis, tilt)})
}

#[tokio::test]
async fn write_get_list_delete_and_idempotent_repost() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let body = json!({"id": "m-1", "scope": "agent:planner", "content": "book the flight",
        "embedding": vector(DIMS, 0, 0.1), "metadata": {"kind": "task", "prio": 2}});
    let (status, first) = c.post("/v1/tenants/acme/memories", &body).await?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["id"], "m-1");
    assert_eq!(first["scope"], "agent:planner");
    assert_eq!(first["version"], 1);
    assert!(first["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));

    // The same body again: 200 and the very same result, no new version.
    let (status, again) = c.post("/v1/tenants/acme/memories", &body).await?;
    assert_eq!(status, 200);
    assert_eq!(again, first);

    let (status, got) = c.get("/v1/tenants/acme/memories/m-1?scope=agent:planner").await?;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["content"], "book the flight");
    assert_eq!(got["metadata"], json!({"kind": "task", "prio": 2}));
    assert_eq!(got["embedding"].as_array().map(Vec::len), Some(DIMS));
    assert_eq!(got["version"], 1);
    for key in ["id", "scope", "created_at", "updated_at"] {
        assert!(got.get(key).is_some(), "missing {key} in {got}");
    }

    // The change log recorded exactly one put for the two posts.
    let owner = owner_of(&c, "acme", "agent:planner").await?;
    let log: Value = memring_tests::client()
        .get(format!("http://{owner}/internal/v1/p/acme/agent%3Aplanner/log"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(log["entries"].as_array().map(Vec::len), Some(1), "{log}");
    let unknown = memring_tests::client()
        .get(format!("http://{owner}/internal/v1/p/acme/agent%3Aplanner/log?from=0"))
        .send()
        .await?;
    assert_eq!(unknown.status(), 400, "an unknown parameter of the log is refused");

    // A changed body under the same id is an update: version 2, same created_at.
    let mut changed = body.clone();
    changed["content"] = json!("book the train");
    let (status, updated) = c.post("/v1/tenants/acme/memories", &changed).await?;
    assert_eq!(status, 200);
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["created_at"], first["created_at"]);

    let (status, list) = c.get("/v1/tenants/acme/memories?scope=agent:planner").await?;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, _) = c.delete("/v1/tenants/acme/memories/m-1?scope=agent:planner").await?;
    assert_eq!(status, 204);
    let (status, gone) = c.get("/v1/tenants/acme/memories/m-1?scope=agent:planner").await?;
    assert_eq!(assert_client_error(status, &gone), "not_found");
    assert_eq!(status, 404);
    let (status, gone) = c.delete("/v1/tenants/acme/memories/m-1?scope=agent:planner").await?;
    assert_eq!((status, assert_client_error(status, &gone)), (404, "not_found".into()));
    Ok(())
}

async fn owner_of(c: &Cluster, tenant: &str, scope: &str) -> anyhow::Result<String> {
    // Ask every shard; exactly the owner answers something other than 421.
    // Send the router's epoch, as the router does, so a shard whose watch lags catches up first.
    let client = memring_tests::client();
    let (_, ring) = c.get("/v1/ring").await?;
    let epoch = ring["epoch"].as_u64().unwrap_or(0);
    let mut owners = Vec::new();
    for shard in &c.shards {
        let url = format!(
            "{}/internal/v1/p/{tenant}/{}/memories",
            shard.url(),
            scope.replace(':', "%3A")
        );
        let status =
            client.get(url).header("x-memring-epoch", epoch).send().await?.status().as_u16();
        if status != 421 {
            owners.push(shard.addr.clone());
        }
    }
    anyhow::ensure!(owners.len() == 1, "expected exactly one owner, got {owners:?}");
    Ok(owners.remove(0))
}

#[tokio::test]
async fn a_non_owner_answers_421_with_the_owner() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let owner = owner_of(&c, "acme", "shared").await?;
    let client = memring_tests::client();
    let other = c.shards.iter().find(|s| s.addr != owner).expect("three shards");
    let resp = client
        .post(format!("{}/internal/v1/p/acme/shared/memories", other.url()))
        .header("content-type", "application/json")
        .body(json!({"items": [{"id": "x", "scope": "shared", "content": "c", "embedding": [1.0], "metadata": {}, "ttl_seconds": null}]}).to_string())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 421);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "wrong_owner");
    assert_eq!(body["error"]["details"]["owner"]["addr"], owner.as_str());
    // Nothing was stored on the non-owner.
    let parts: Value =
        client.get(format!("{}/internal/v1/partitions", other.url())).send().await?.json().await?;
    assert_eq!(parts["partitions"], json!([]), "{parts}");
    Ok(())
}

#[tokio::test]
async fn batch_with_one_bad_item_stores_the_rest() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let items = json!({"items": [
        {"id": "b1", "scope": "shared", "content": "one", "embedding": vector(DIMS, 1, 0.0)},
        {"id": "b2", "scope": "not-a-scope", "content": "two", "embedding": vector(DIMS, 2, 0.0)},
        {"id": "b3", "scope": "agent:a", "content": "three", "embedding": vector(DIMS, 3, 0.0)},
        {"id": "b4", "scope": "shared", "content": "four", "embedding": vector(DIMS + 1, 3, 0.0)},
        {"scope": "shared", "content": 5},
    ]});
    let (status, resp) = c.post("/v1/tenants/acme/memories:batch", &items).await?;
    assert_eq!(status, 200, "{resp}");
    let results = resp["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["id"], "b1");
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[1]["error"]["code"], "invalid_scope");
    assert_eq!(results[1]["id"], "b2");
    assert_eq!(results[2]["status"], 201);
    assert_eq!(results[3]["error"]["code"], "dimension_mismatch", "{}", results[3]);
    assert_eq!(results[4]["error"]["code"], "invalid_json");
    assert_eq!(c.get("/v1/tenants/acme/memories/b1?scope=shared").await?.0, 200);
    assert_eq!(c.get("/v1/tenants/acme/memories/b3?scope=agent:a").await?.0, 200);
    assert_eq!(c.get("/v1/tenants/acme/memories/b4?scope=shared").await?.0, 404);
    // A retried batch is idempotent: the good items answer 200 unchanged.
    let (_, again) = c.post("/v1/tenants/acme/memories:batch", &items).await?;
    assert_eq!(again["results"][0]["status"], 200);
    assert_eq!(again["results"][0]["outcome"], "unchanged");
    Ok(())
}

#[tokio::test]
async fn search_merges_scopes_best_first_and_filters_inside() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    // Scores against the query (axis 0): higher tilt toward axis 1 means lower cosine.
    let writes = [
        ("p1", "agent:planner", 0, 0.1, "plan"),
        ("p2", "agent:planner", 0, 0.5, "plan"),
        ("s1", "shared", 0, 0.2, "fact"),
        ("s2", "shared", 0, 0.0, "fact"),
        ("s3", "shared", 0, 0.8, "note"),
        ("o1", "agent:other", 0, 0.0, "plan"),
    ];
    for (id, scope, axis, tilt, kind) in writes {
        let mut m = memory(scope, id, axis, tilt);
        m["id"] = json!(id);
        m["metadata"] = json!({"kind": kind});
        assert_eq!(c.post("/v1/tenants/acme/memories", &m).await?.0, 201);
    }
    let query =
        json!({"scopes": ["agent:planner", "shared"], "embedding": vector(DIMS, 0, 0.0), "k": 10});
    let (status, resp) = c.post("/v1/tenants/acme/memories/search", &query).await?;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["partial"], false);
    let ids: Vec<&str> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["s2", "p1", "s1", "p2", "s3"],
        "merged best first; o1 (another agent) never appears"
    );
    let scores: Vec<f64> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["score"].as_f64())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!((scores[0] - 1.0).abs() < 1e-5, "identical direction scores 1: {scores:?}");
    let first = &resp["results"][0];
    for key in ["id", "scope", "score", "content", "metadata", "created_at"] {
        assert!(first.get(key).is_some(), "missing {key}");
    }

    // k cuts the merged list.
    let mut k2 = query.clone();
    k2["k"] = json!(2);
    let (_, resp) = c.post("/v1/tenants/acme/memories/search", &k2).await?;
    assert_eq!(resp["results"].as_array().map(Vec::len), Some(2));

    // Metadata filter is applied inside the search: still the best matching ones, k of them.
    let mut filtered = query.clone();
    filtered["filter"] = json!({"metadata": {"kind": "plan"}});
    let (_, resp) = c.post("/v1/tenants/acme/memories/search", &filtered).await?;
    let ids: Vec<&str> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);

    // created_after in the future filters everything; in the past filters nothing.
    let mut future = query.clone();
    future["filter"] = json!({"created_after": "2999-01-01T00:00:00Z"});
    let (_, resp) = c.post("/v1/tenants/acme/memories/search", &future).await?;
    assert_eq!(resp["results"], json!([]));
    let mut past = query.clone();
    past["filter"] =
        json!({"created_after": "2000-01-01T00:00:00Z", "created_before": "2999-01-01T00:00:00Z"});
    let (_, resp) = c.post("/v1/tenants/acme/memories/search", &past).await?;
    assert_eq!(resp["results"].as_array().map(Vec::len), Some(5));
    Ok(())
}

#[tokio::test]
async fn other_agents_and_other_tenants_see_nothing() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    write_one(&c, "acme", "agent:alice", "secret", "alice's secret", 0, 0.0).await?;
    write_one(&c, "acme", "shared", "shared-1", "acme shared", 0, 0.0).await?;

    // Another agent of the same tenant.
    let q = json!({"scopes": ["agent:bob"], "embedding": vector(DIMS, 0, 0.0)});
    let (status, resp) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    assert_eq!((status, resp["results"].clone()), (200, json!([])));
    assert_eq!(c.get("/v1/tenants/acme/memories/secret?scope=agent:bob").await?.0, 404);

    // Another tenant, with every guess at the ids and scopes.
    for scope in ["agent:alice", "shared"] {
        let q = json!({"scopes": [scope], "embedding": vector(DIMS, 0, 0.0)});
        let (_, resp) = c.post("/v1/tenants/evil/memories/search", &q).await?;
        assert_eq!(resp["results"], json!([]), "{scope}");
        for id in ["secret", "shared-1"] {
            let (status, _) =
                c.get(&format!("/v1/tenants/evil/memories/{id}?scope={scope}")).await?;
            assert_eq!(status, 404);
            let (status, _) =
                c.delete(&format!("/v1/tenants/evil/memories/{id}?scope={scope}")).await?;
            assert_eq!(status, 404);
        }
        let (_, list) = c.get(&format!("/v1/tenants/evil/memories?scope={scope}")).await?;
        assert_eq!(list["items"], json!([]));
    }
    // Deleting the other tenant leaves acme intact.
    assert_eq!(c.delete("/v1/tenants/evil").await?.0, 202);
    assert_eq!(c.get("/v1/tenants/acme/memories/secret?scope=agent:alice").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn list_pagination_covers_every_memory_exactly_once() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let items: Vec<Value> = (0..237)
        .map(|i| json!({"id": format!("n{i:04}"), "scope": "shared", "content": format!("memory {i}"), "embedding": vector(DIMS, i % DIMS, 0.3)}))
        .collect();
    let (status, _) = c.post("/v1/tenants/acme/memories:batch", &json!({"items": items})).await?;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/tenants/acme/memories?scope=shared&limit=50&cursor={cur}"),
            None => "/v1/tenants/acme/memories?scope=shared&limit=50".to_owned(),
        };
        let (status, page) = c.get(&path).await?;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 20, "pagination does not end");
    }
    assert_eq!(pages, 5);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 237, "every memory once");
    assert_eq!(unique.len(), 237, "no duplicates");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "stable id order");

    // A tampered cursor is a 400, not a silent restart.
    let (status, body) = c.get("/v1/tenants/acme/memories?scope=shared&cursor=garbage").await?;
    assert_eq!(assert_client_error(status, &body), "invalid_cursor");
    Ok(())
}

#[tokio::test]
async fn delete_then_search_and_delete_tenant() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    for (i, scope) in ["shared", "agent:a", "agent:b", "shared"].iter().enumerate() {
        write_one(&c, "acme", scope, format!("d{i}"), "x", 0, i as f32 * 0.1).await?;
    }
    let q = json!({"scopes": ["shared", "agent:a", "agent:b"], "embedding": vector(DIMS, 0, 0.0)});
    let (_, before) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    assert_eq!(before["results"].as_array().map(Vec::len), Some(4));

    assert_eq!(c.delete("/v1/tenants/acme/memories/d0?scope=shared").await?.0, 204);
    let (_, after) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    let ids: Vec<&str> = after["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&"d0"));

    // Keep another tenant to prove deletion is scoped.
    write_one(&c, "other", "shared", "k", "keep", 0, 0.0).await?;

    let (status, resp) = c.delete("/v1/tenants/acme").await?;
    assert_eq!(status, 202, "{resp}");
    let (_, gone) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    assert_eq!(gone["results"], json!([]));
    for (id, scope) in [("d1", "agent:a"), ("d2", "agent:b"), ("d3", "shared")] {
        assert_eq!(c.get(&format!("/v1/tenants/acme/memories/{id}?scope={scope}")).await?.0, 404);
    }
    assert_eq!(c.get("/v1/tenants/other/memories/k?scope=shared").await?.0, 200);
    // The tenant can start over, with a new dimension even.
    let fresh = json!({"scope": "shared", "content": "new", "embedding": [1.0, 0.0, 0.0]});
    assert_eq!(c.post("/v1/tenants/acme/memories", &fresh).await?.0, 201);
    Ok(())
}

#[tokio::test]
async fn restart_then_read_back() -> anyhow::Result<()> {
    let mut c = Cluster::start(3).await?;
    let items: Vec<Value> = (0..60)
        .map(|i| json!({"id": format!("r{i}"), "scope": if i % 2 == 0 { "shared" } else { "agent:z" }, "content": format!("c{i}"), "embedding": vector(DIMS, i % DIMS, 0.2)}))
        .collect();
    let (_, resp) = c.post("/v1/tenants/acme/memories:batch", &json!({"items": items})).await?;
    assert!(
        resp["results"].as_array().expect("results").iter().all(|r| r["status"] == 201),
        "{resp}"
    );
    let q = json!({"scopes": ["shared", "agent:z"], "embedding": vector(DIMS, 3, 0.2), "k": 5});
    let (_, before) = c.post("/v1/tenants/acme/memories/search", &q).await?;

    for shard in &mut c.shards {
        shard.restart()?;
    }
    for shard in &mut c.shards {
        shard.wait_ready(std::time::Duration::from_secs(30)).await?;
    }
    c.router.restart()?;
    c.router.wait_ready(std::time::Duration::from_secs(30)).await?;
    c.wait_ring_size(3).await?;

    for i in 0..60 {
        let scope = if i % 2 == 0 { "shared" } else { "agent:z" };
        let (status, got) = c.get(&format!("/v1/tenants/acme/memories/r{i}?scope={scope}")).await?;
        assert_eq!(status, 200, "r{i}: {got}\n{}", c.logs());
        assert_eq!(got["content"], format!("c{i}"));
    }
    let (_, after) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    assert_eq!(before["results"], after["results"], "the rebuilt index answers the same");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let ok = memory("shared", "x", 0, 0.0);
    assert_eq!(c.post("/v1/tenants/acme/memories", &ok).await?.0, 201);

    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "bad tenant id",
            "/v1/tenants/bad%20id/memories".into(),
            ok.to_string().into_bytes(),
            400,
            "invalid_id",
        ),
        (
            "tenant id too long",
            format!("/v1/tenants/{}/memories", "t".repeat(129)),
            ok.to_string().into_bytes(),
            400,
            "invalid_id",
        ),
        (
            "bad memory id",
            "/v1/tenants/acme/memories".into(),
            json!({"id": "a/b", "scope": "shared", "content": "x"}).to_string().into_bytes(),
            400,
            "invalid_id",
        ),
        (
            "unknown scope",
            "/v1/tenants/acme/memories".into(),
            json!({"scope": "team", "content": "x"}).to_string().into_bytes(),
            400,
            "invalid_scope",
        ),
        (
            "missing scope",
            "/v1/tenants/acme/memories".into(),
            json!({"content": "x"}).to_string().into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "wrong dimension",
            "/v1/tenants/acme/memories".into(),
            json!({"scope": "shared", "content": "x", "embedding": [1.0, 2.0]})
                .to_string()
                .into_bytes(),
            400,
            "dimension_mismatch",
        ),
        (
            "NaN literal",
            "/v1/tenants/acme/memories".into(),
            br#"{"scope":"shared","content":"x","embedding":[NaN,1]}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "overflowing float",
            "/v1/tenants/acme/memories".into(),
            br#"{"scope":"shared","content":"x","embedding":[1e39,1,1,1,1,1,1,1]}"#.to_vec(),
            400,
            "invalid_embedding",
        ),
        (
            "non-JSON",
            "/v1/tenants/acme/memories".into(),
            b"this is not json".to_vec(),
            400,
            "invalid_json",
        ),
        ("empty body", "/v1/tenants/acme/memories".into(), Vec::new(), 400, "invalid_json"),
        (
            "unknown field",
            "/v1/tenants/acme/memories".into(),
            json!({"scope": "shared", "content": "x", "colour": 1}).to_string().into_bytes(),
            400,
            "invalid_json",
        ),
        (
            "k too large",
            "/v1/tenants/acme/memories/search".into(),
            json!({"scopes": ["shared"], "embedding": vector(DIMS, 0, 0.0), "k": 1001})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "search without scopes",
            "/v1/tenants/acme/memories/search".into(),
            json!({"embedding": vector(DIMS, 0, 0.0)}).to_string().into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "search wrong dimension",
            "/v1/tenants/acme/memories/search".into(),
            json!({"scopes": ["shared"], "embedding": [1.0]}).to_string().into_bytes(),
            400,
            "dimension_mismatch",
        ),
        (
            "batch too big",
            "/v1/tenants/acme/memories:batch".into(),
            json!({"items": vec![json!({"scope": "shared", "content": "x"}); 1001]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
    ];
    for (what, path, body, status, code) in cases {
        let (got_status, resp) = c.post_raw(&path, body).await?;
        assert_eq!(got_status, status, "{what}: {resp}");
        assert_eq!(assert_client_error(got_status, &resp), code, "{what}: {resp}");
    }
    // A 64 MiB body is refused from its Content-Length, before it is read.
    let (status, body) = memring_tests::post_announcing_length(
        &c.router.addr,
        "/v1/tenants/acme/memories:batch",
        64 << 20,
    )
    .await?;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    // Query-parameter mistakes.
    for (what, path, code) in [
        ("get without scope", "/v1/tenants/acme/memories/abc", "invalid_request"),
        ("list without scope", "/v1/tenants/acme/memories", "invalid_request"),
        ("list limit 0", "/v1/tenants/acme/memories?scope=shared&limit=0", "invalid_request"),
        (
            "list limit huge",
            "/v1/tenants/acme/memories?scope=shared&limit=99999",
            "invalid_request",
        ),
        ("bad escape", "/v1/tenants/acme/memories?scope=%zz", "invalid_request"),
        ("unknown route", "/v1/nothing", "route_not_found"),
    ] {
        let (status, resp) = c.get(path).await?;
        assert_eq!(assert_client_error(status, &resp), code, "{what}: {resp}");
    }
    // The cluster is unharmed: the one good memory is still the only one.
    let (_, list) = c.get("/v1/tenants/acme/memories?scope=shared").await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    Ok(())
}

#[tokio::test]
async fn health_ready_and_metrics_on_every_binary() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    c.post("/v1/tenants/acme/memories", &memory("shared", "x", 0, 0.0)).await?;
    let client = memring_tests::client();
    for p in c.shards.iter().chain(std::iter::once(&c.router)) {
        for path in ["/health", "/ready"] {
            assert_eq!(
                client.get(format!("{}{path}", p.url())).send().await?.status().as_u16(),
                200,
                "{path}"
            );
        }
        let text = client.get(format!("{}/metrics", p.url())).send().await?.text().await?;
        assert!(text.contains("http_requests_total"), "{}: {text}", p.addr);
        assert!(text.contains("http_request_duration_seconds_bucket"), "{}: {text}", p.addr);
    }
    let text = client.get(format!("{}/metrics", c.url())).send().await?.text().await?;
    assert!(text.contains(r#"route="memories.write""#), "{text}");
    // The request id travels back to the client.
    let resp =
        client.get(format!("{}/health", c.url())).header("x-request-id", "abc123").send().await?;
    assert_eq!(resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("abc123"));
    Ok(())
}

#[tokio::test]
async fn search_is_partial_when_a_scope_node_is_down() -> anyhow::Result<()> {
    let mut c = Cluster::start(3).await?;
    // Find two agent scopes owned by different nodes.
    let first = owner_of(&c, "acme", "agent:a0").await?;
    let mut second = None;
    for i in 1..50 {
        let scope = format!("agent:a{i}");
        let owner = owner_of(&c, "acme", &scope).await?;
        if owner != first {
            second = Some((scope, owner));
            break;
        }
    }
    let (scope_b, _) = second.expect("some scope lands on another node");
    for (scope, id) in [("agent:a0", "x0"), (scope_b.as_str(), "xb")] {
        write_one(&c, "acme", scope, id, id, 0, 0.0).await?;
    }
    // Kill the node that owns agent:a0.
    let victim = c.shards.iter().position(|s| s.addr == first).expect("owner is a shard");
    c.shards[victim].kill();
    let q = json!({"scopes": ["agent:a0", scope_b], "embedding": vector(DIMS, 0, 0.0)});
    let (status, resp) = c.post("/v1/tenants/acme/memories/search", &q).await?;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["partial"], true);
    let ids: Vec<&str> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids, ["xb"]);
    // A write to the dead node's partition is a 503 with Retry-After, not a 500.
    let client = memring_tests::client();
    let resp = client
        .post(format!("{}/v1/tenants/acme/memories", c.url()))
        .header("content-type", "application/json")
        .body(memory("agent:a0", "y", 0, 0.0).to_string())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    Ok(())
}

#[tokio::test]
async fn global_memories_are_readable_by_every_tenant() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let mut g = memory("global", "the office closes at 6", 0, 0.0);
    g["id"] = json!("g1");
    // Auth is off in this setup, so any tenant may write global memories.
    assert_eq!(c.post("/v1/tenants/admin/memories", &g).await?.0, 201);
    write_one(&c, "bob", "shared", "own", "bob's own", 0, 0.1).await?;

    let q = json!({"scopes": ["shared", "global"], "embedding": vector(DIMS, 0, 0.0)});
    let (_, resp) = c.post("/v1/tenants/bob/memories/search", &q).await?;
    let ids: Vec<&str> = resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids, ["g1", "own"]);
    assert_eq!(resp["results"][0]["scope"], "global");
    assert_eq!(c.get("/v1/tenants/carol/memories/g1?scope=global").await?.0, 200);
    // Deleting a tenant never deletes global memories.
    assert_eq!(c.delete("/v1/tenants/admin").await?.0, 202);
    assert_eq!(c.get("/v1/tenants/carol/memories/g1?scope=global").await?.0, 200);
    Ok(())
}

/// `ttl_seconds: 1`: the memory answers at first, is gone from get, list and search within 2 s,
/// and after the purge interval (1 s here) no shard node's change log holds its content any
/// more, while a memory without a TTL stays.
#[tokio::test]
async fn an_expired_memory_vanishes_from_reads_then_from_disk() -> anyhow::Result<()> {
    let c = Cluster::start_with(2, &["--purge-interval-secs", "1"]).await?;
    let secret = "ttl-secret-5f3a9c";
    let short = json!({"id": "brief", "scope": "shared", "content": secret, "embedding": [1.0, 0.0, 0.0], "ttl_seconds": 1});
    let long = json!({"id": "lasting", "scope": "shared", "content": "stays", "embedding": [0.9, 0.1, 0.0]});
    for m in [&short, &long] {
        let (status, body) = c.post("/v1/tenants/ttl/memories", m).await?;
        assert_eq!(status, 201, "{body}");
    }
    let q = json!({"scopes": ["shared"], "embedding": [1.0, 0.0, 0.0], "k": 10});
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, found) = c.post("/v1/tenants/ttl/memories/search", &q).await?;
    assert!(ids(&found, "results").contains(&"brief".to_owned()), "{found}");
    // Every shard's log of the partition, raw: the content is there before the purge.
    let log_bytes = || async {
        let mut all = Vec::new();
        for shard in &c.shards {
            let url = format!(
                "{}/internal/v1/replicate/log/ttl/shared?after=0&term=0&limit=1000",
                shard.url()
            );
            all.extend(memring_tests::client().get(url).send().await?.bytes().await?);
        }
        Ok::<_, anyhow::Error>(all)
    };
    let holds = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
    assert!(holds(&log_bytes().await?), "the check must see the content before the purge");

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, found) = c.post("/v1/tenants/ttl/memories/search", &q).await?;
    assert_eq!(ids(&found, "results"), ["lasting"], "{found}");
    let (status, _) = c.get("/v1/tenants/ttl/memories/brief?scope=shared").await?;
    assert_eq!(status, 404);
    let (_, listed) = c.get("/v1/tenants/ttl/memories?scope=shared").await?;
    assert_eq!(ids(&listed, "items"), ["lasting"], "{listed}");

    let started = std::time::Instant::now();
    while holds(&log_bytes().await?) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still on disk after 10 s\n{}",
            c.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = c.get("/v1/tenants/ttl/memories/lasting?scope=shared").await?;
    assert_eq!((status, body["content"].as_str()), (200, Some("stays")));
    Ok(())
}

/// `global` memories spread over the ring by a hash of their id (16 partitions): they land on
/// every node, any tenant's search over `global` finds them all (fan-out and merge), a list
/// pages through every one exactly once, and get and delete find a memory's partition by its id.
#[tokio::test]
async fn global_memories_spread_over_the_nodes_and_every_read_reaches_them() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let items: Vec<Value> = (0..48)
        .map(|n| json!({"id": format!("g{n}"), "scope": "global", "content": format!("fact {n}"), "embedding": vector(4, n % 4, 0.1)}))
        .collect();
    memring_tests::write_batch(&memring_tests::client(), &c.url(), "admin", items).await?;
    let mut holders = 0;
    for shard in &c.shards {
        let parts = memring_tests::partitions_at(&shard.addr).await?;
        if parts.iter().any(|p| p.starts_with("*/global")) {
            holders += 1;
        }
    }
    assert_eq!(holders, 3, "global memories are not on every node");
    let q = json!({"scopes": ["global", "shared"], "embedding": vector(4, 0, 0.1), "k": 100});
    let (status, found) = c.post("/v1/tenants/someone/memories/search", &q).await?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"].as_array().map(Vec::len), Some(48), "{found}");
    assert_eq!(found["partial"], false);
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let mut path = "/v1/tenants/someone/memories?scope=global&limit=7".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = c.get(&path).await?;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().into_iter().flatten() {
            let id = item["id"].as_str().unwrap_or("").to_owned();
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 48);
    let (status, got) = c.get("/v1/tenants/other/memories/g17?scope=global").await?;
    assert_eq!((status, got["content"].as_str()), (200, Some("fact 17")));
    let (status, _) = c.delete("/v1/tenants/other/memories/g17?scope=global").await?;
    assert_eq!(status, 204);
    let (status, _) = c.get("/v1/tenants/other/memories/g17?scope=global").await?;
    assert_eq!(status, 404);
    Ok(())
}

/// A slow-loris client — headers trickling in a byte at a time — is cut off by the header
/// timeout (10 s) instead of holding its connection open; the router keeps serving others.
#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::start(1).await?;
    let mut stream = tokio::net::TcpStream::connect(&c.router.addr).await?;
    let request = b"GET /v1/tenants/slow/memories?scope=shared HTTP/1.1\r\nhost: x\r\nx-pad: ";
    let started = std::time::Instant::now();
    let mut closed_after = None;
    'outer: for byte in request.iter().chain(std::iter::repeat(&b'a')) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // Between bytes, see whether the server has hung up (EOF or an error answer).
        let mut buf = [0u8; 512];
        match tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break 'outer;
            }
            Ok(Ok(_)) => {} // an error answer (408) comes before the close
            Err(_) => {}
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "never cut off");
    }
    let after = closed_after.expect("closed");
    println!("slow-loris connection closed after {after:?}");
    assert!(after >= std::time::Duration::from_secs(5), "closed too early: {after:?}");
    let (status, _) = c.get("/v1/tenants/slow/memories?scope=shared").await?;
    assert_eq!(status, 200);
    Ok(())
}
