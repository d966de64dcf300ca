//! Hostile requests against a running router and shard nodes: random methods, paths (every
//! byte, long segments, traversal), headers (content type, auth, read tokens) and bodies
//! (garbage bytes, mutated valid requests, invalid UTF-8). Every answer must be a 2xx or a 4xx
//! — never a 5xx — the processes must stay up, and afterwards every stored copy must match its
//! bookkeeping (nothing half-written). Seeded, so a failure replays.

use std::time::{Duration, Instant};

use memring_tests::{Cluster, client};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const REQUESTS: usize = 3_000;

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..max);
    (0..n).map(|_| rng.random()).collect()
}

fn segment(rng: &mut StdRng) -> String {
    let picks = [
        "acme".to_owned(),
        "memories".into(),
        "search".into(),
        "memories:batch".into(),
        "..".into(),
        "%2e%2e".into(),
        "%00".into(),
        "%ff%fe".into(),
        "a".repeat(rng.random_range(100..3000)),
        "t%2Fx".into(),
        "*".into(),
        "global".into(),
        String::new(),
    ];
    if rng.random_bool(0.3) {
        // Arbitrary bytes, percent-encoded so the request line stays valid.
        return random_bytes(rng, 40).iter().map(|b| format!("%{b:02X}")).collect();
    }
    picks[rng.random_range(0..picks.len())].clone()
}

fn path(rng: &mut StdRng) -> String {
    let base = [
        "/v1/tenants/acme/memories",
        "/v1/tenants/acme/memories:batch",
        "/v1/tenants/acme/memories/search",
        "/v1/tenants/acme/memories/m1",
        "/v1/tenants/acme",
        "/v1/ring",
    ];
    let mut p = if rng.random_bool(0.6) {
        base[rng.random_range(0..base.len())].to_owned()
    } else {
        let n = rng.random_range(1..7);
        (0..n).map(|_| format!("/{}", segment(rng))).collect()
    };
    if rng.random_bool(0.5) {
        let queries = [
            "scope=shared",
            "scope=agent:x",
            "scope=bad scope",
            "scope=global",
            "limit=0",
            "limit=99999999999999999999",
            "cursor=c1zz",
            "cursor=c1%C3%A9",
            "scope=shared&limit=-1",
            "%%%",
            "&&==",
        ];
        p.push('?');
        p.push_str(queries[rng.random_range(0..queries.len())]);
    }
    p
}

/// A metadata filter near or past the language's edges: nesting around the depth limit, fan-out
/// around the clause limit, unknown operators, arguments of the wrong kind.
fn hostile_filter(rng: &mut StdRng) -> Value {
    let leaf = [
        json!({"k": {"$in": 5}}),
        json!({"k": {"$gt": {}}}),
        json!({"k": {"$regex": ".*"}}),
        json!({"$where": "1"}),
        json!({"k": {"$exists": "yes"}}),
        json!({"k.": 1}),
        json!({"k": {"$nin": [1, [2], {"a": 3}]}}),
        json!({"k": {"$gte": 1e308, "$lt": -1e308}}),
        json!({"k": {"$contains": null}}),
        json!({"k": 1}),
    ];
    let mut f = leaf[rng.random_range(0..leaf.len())].clone();
    for _ in 0..rng.random_range(0..12) {
        f = match rng.random_range(0..3) {
            0 => json!({"$not": f}),
            1 => {
                let mut all = vec![json!({"x": 1}); rng.random_range(0..70)];
                all.push(f);
                json!({ "$and": all })
            }
            _ => json!({"$or": [f, {"x": {"$eq": 1}}]}),
        };
    }
    f
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    let valid = [
        json!({"scope": "shared", "content": "x", "embedding": [0.1, 0.2, 0.3]}),
        json!({"scopes": ["shared"], "embedding": [0.1, 0.2, 0.3], "k": 3}),
        json!({"items": [{"scope": "shared", "content": "y", "embedding": [0.3, 0.2, 0.1]}]}),
    ];
    match rng.random_range(0..7) {
        0 => random_bytes(rng, 2048),
        1 => Vec::new(),
        2 => {
            // A valid body with one field replaced by something of another shape.
            let mut v = valid[rng.random_range(0..valid.len())].clone();
            let fields = [
                "scope",
                "scopes",
                "content",
                "embedding",
                "k",
                "items",
                "ttl_seconds",
                "metadata",
                "id",
                "filter",
            ];
            let odd = [
                json!(null),
                json!(-1),
                json!(1e308),
                json!("x".repeat(5000)),
                json!([[[[[]]]]]),
                json!({"a": {"b": {"c": 1}}}),
                json!([f32::MAX, -0.0]),
                json!(true),
                json!(u64::MAX),
                json!("\u{0}"),
            ];
            v[fields[rng.random_range(0..fields.len())]] =
                odd[rng.random_range(0..odd.len())].clone();
            serde_json::to_vec(&v).unwrap_or_default()
        }
        3 => {
            // Valid JSON, then a cut or a stray byte.
            let mut b =
                serde_json::to_vec(&valid[rng.random_range(0..valid.len())]).unwrap_or_default();
            let cut = rng.random_range(0..b.len().max(1));
            b.truncate(cut);
            b.push(rng.random());
            b
        }
        4 => "[".repeat(rng.random_range(1..5000)).into_bytes(),
        5 => serde_json::to_vec(&json!({
            "scopes": ["shared"], "embedding": [0.1, 0.2, 0.3], "k": 3,
            "filter": {"metadata": hostile_filter(rng)},
        }))
        .unwrap_or_default(),
        _ => serde_json::to_vec(&valid[rng.random_range(0..valid.len())]).unwrap_or_default(),
    }
}

#[tokio::test]
async fn random_hostile_requests_get_2xx_or_4xx_and_nothing_is_half_written() -> anyhow::Result<()>
{
    let c = Cluster::start(2).await?;
    let control = c.start_control().await?;
    let http = client();
    let seed = 0x006d_656d_7269_6e67_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
    ];
    let mut statuses = std::collections::BTreeMap::new();
    let started = Instant::now();
    for i in 0..REQUESTS {
        if i % 10 == 0 {
            // Valid writes between the hostile ones, so there is data to be half-written.
            let m = json!({"id": format!("ok{i}"), "scope": "shared", "content": "fine", "embedding": [0.1, 0.2, 0.3]});
            let resp =
                http.post(format!("{}/v1/tenants/acme/memories", c.url())).json(&m).send().await?;
            assert_eq!(resp.status().as_u16(), 201);
        }
        let method = methods[rng.random_range(0..methods.len())].clone();
        let p = path(&mut rng);
        let mut req = http
            .request(method.clone(), format!("{}{p}", c.url()))
            .timeout(Duration::from_secs(30));
        if rng.random_bool(0.7) {
            let types = [
                "application/json",
                "text/plain",
                "application/json; charset=utf-16",
                "\u{7f}",
                "application/x+json",
            ];
            req = req.header("content-type", types[rng.random_range(0..types.len())]);
        }
        if rng.random_bool(0.2) {
            req = req.header("authorization", format!("Bearer {}", segment(&mut rng)));
        }
        if rng.random_bool(0.2) {
            let tokens =
                ["shared=1", "shared=x", "=", "shared=99999999999999999999", "agent:x=3,shared=2"];
            req = req.header("x-memring-read-token", tokens[rng.random_range(0..tokens.len())]);
        }
        if method != reqwest::Method::GET {
            req = req.body(body(&mut rng));
        }
        let status = match req.send().await {
            Ok(resp) => resp.status().as_u16(),
            // The server may close a connection on a malformed request; that is not a 5xx.
            // (A header the client library itself refuses to send is skipped.)
            Err(e) if e.is_builder() || e.is_request() || e.is_body() || e.is_connect() => 0,
            Err(e) => return Err(anyhow::anyhow!("request {i} ({method} {p}) failed: {e}")),
        };
        assert!(
            status < 500,
            "request {i}: {method} {p} answered {status} (seed {seed:#x})\n{}",
            c.logs()
        );
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    println!("{REQUESTS} hostile requests in {:?}: statuses {statuses:?}", started.elapsed());
    // Still up, and every copy matches its bookkeeping.
    let (status, _) = c.get("/v1/ring").await?;
    assert_eq!(status, 200);
    let report: Value =
        http.get(format!("{}/v1/verify", control.url())).send().await?.json().await?;
    assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{report}");
    Ok(())
}
