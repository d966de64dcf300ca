//! API keys against real binaries: a router with `--auth true` on the embedded ring store, keys
//! made and revoked with `shardctl keys`.

use std::time::{Duration, Instant};

use memring_tests::{Cluster, Proc, binary, client, free_port, shardctl, vector};
use serde_json::{Value, json};

/// One request with an optional bearer key: status and body text.
async fn call(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let mut req = client().request(method, url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// Every public endpoint of tenant `alpha`, probed with no key, a malformed key, an unknown key
/// and tenant `beta`'s key: 401, 401, 401, 403 — and no response carries a byte of alpha's
/// data. Beta guessing alpha's ids on its own path finds nothing. Tenant keys search `global`
/// but only an admin key writes or deletes it, or reads the ring. A revoked key stops working
/// within seconds, and the key list holds no secret.
#[tokio::test]
async fn every_endpoint_keeps_tenants_apart() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    let control = c.start_control().await?;
    let addr = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "--listen".into(),
        addr.clone(),
        "--ring-dir".into(),
        c.ring_dir().display().to_string(),
        "--auth".into(),
        "true".into(),
    ];
    let mut router =
        Proc::start("router-auth", &binary("memring-router")?, args, addr, c.dir.path())?;
    router.wait_ready(Duration::from_secs(30)).await?;
    let base = router.url();
    let key_a =
        shardctl(&control, &["keys", "create", "--tenant", "alpha", "--label", "a"]).await?;
    let key_b = shardctl(&control, &["keys", "create", "--tenant", "beta"]).await?;
    let admin = shardctl(&control, &["keys", "create", "--admin"]).await?;
    assert!(key_a.starts_with("mrk_") && key_a != key_b, "{key_a} {key_b}");
    // Routers reload keys every second.
    let started = Instant::now();
    while call(
        reqwest::Method::GET,
        &format!("{base}/v1/tenants/alpha/memories?scope=shared"),
        Some(&key_a),
        None,
    )
    .await?
    .0 != 200
    {
        assert!(started.elapsed() < Duration::from_secs(5), "a new key never worked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let secret_content = "alpha-private-content-7731";
    let mem = |id: &str, scope: &str, content: &str, axis: usize| json!({"id": id, "scope": scope, "content": content, "embedding": vector(4, axis, 0.1), "metadata": {"owner": content}});
    for (scope, id) in [("shared", "a1"), ("agent:x", "a2")] {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/tenants/alpha/memories"),
            Some(&key_a),
            Some(&mem(id, scope, secret_content, 0)),
        )
        .await?;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tenants/beta/memories"),
        Some(&key_b),
        Some(&mem("b1", "shared", "beta stuff", 1)),
    )
    .await?;
    assert_eq!(status, 201, "{body}");

    let search = json!({"scopes": ["shared", "agent:x"], "embedding": vector(4, 0, 0.1), "k": 10});
    let batch = json!({"items": [mem("a3", "shared", "x", 2)]});
    let endpoints: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            "/v1/tenants/alpha/memories".into(),
            Some(mem("a9", "shared", "x", 3)),
        ),
        (reqwest::Method::POST, "/v1/tenants/alpha/memories:batch".into(), Some(batch)),
        (reqwest::Method::GET, "/v1/tenants/alpha/memories/a1?scope=shared".into(), None),
        (reqwest::Method::GET, "/v1/tenants/alpha/memories/a2?scope=agent:x".into(), None),
        (reqwest::Method::GET, "/v1/tenants/alpha/memories?scope=shared".into(), None),
        (reqwest::Method::POST, "/v1/tenants/alpha/memories/search".into(), Some(search.clone())),
        (reqwest::Method::DELETE, "/v1/tenants/alpha/memories/a1?scope=shared".into(), None),
        (reqwest::Method::DELETE, "/v1/tenants/alpha".into(), None),
    ];
    let unknown = format!("mrk_{}_{}", "0".repeat(16), "0".repeat(64));
    for (method, path, body) in &endpoints {
        let url = format!("{base}{path}");
        for (who, key, want) in [
            ("no key", None, 401),
            ("a malformed key", Some("not-a-key"), 401),
            ("an unknown key", Some(unknown.as_str()), 401),
            ("beta's key", Some(key_b.as_str()), 403),
        ] {
            let (status, text) = call(method.clone(), &url, key, body.as_ref()).await?;
            assert_eq!(status, want, "{method} {path} with {who}: {text}");
            assert!(
                !text.contains(secret_content) && !text.contains("\"a1\""),
                "{method} {path} with {who} leaked: {text}"
            );
            let code = serde_json::from_str::<Value>(&text)?["error"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert_eq!(code, if want == 401 { "unauthorized" } else { "forbidden" }, "{text}");
        }
    }
    // Nothing above changed alpha's data.
    let (status, text) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/tenants/alpha/memories/a1?scope=shared"),
        Some(&key_a),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{text}");

    // Beta on its own path, guessing alpha's ids and scopes: nothing of alpha's.
    for path in
        ["/v1/tenants/beta/memories/a1?scope=shared", "/v1/tenants/beta/memories/a2?scope=agent:x"]
    {
        let (status, text) =
            call(reqwest::Method::GET, &format!("{base}{path}"), Some(&key_b), None).await?;
        assert_eq!(status, 404, "{path}: {text}");
    }
    let (_, listed) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/tenants/beta/memories?scope=shared"),
        Some(&key_b),
        None,
    )
    .await?;
    let (_, found) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tenants/beta/memories/search"),
        Some(&key_b),
        Some(&search),
    )
    .await?;
    for text in [&listed, &found] {
        assert!(!text.contains(secret_content) && text.contains("b1"), "{text}");
    }

    // Global: tenant keys may search it, only admins write or delete it (or read the ring).
    let g = mem("g1", "global", "a global fact", 0);
    let (status, text) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tenants/alpha/memories"),
        Some(&key_a),
        Some(&g),
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    let (status, text) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tenants/alpha/memories:batch"),
        Some(&key_a),
        Some(&json!({"items": [g.clone()]})),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text)?["results"][0]["error"]["code"],
        "forbidden",
        "{text}"
    );
    let (status, text) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/tenants/alpha/memories"),
        Some(&admin),
        Some(&g),
    )
    .await?;
    assert_eq!(status, 201, "{text}");
    for key in [&key_a, &key_b] {
        let tenant = if key == &key_a { "alpha" } else { "beta" };
        let q = json!({"scopes": ["global"], "embedding": vector(4, 0, 0.1)});
        let (status, text) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/tenants/{tenant}/memories/search"),
            Some(key),
            Some(&q),
        )
        .await?;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("g1"), "{tenant} does not see the global memory: {text}");
    }
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{base}/v1/tenants/alpha/memories/g1?scope=global"),
        Some(&key_a),
        None,
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _) =
        call(reqwest::Method::GET, &format!("{base}/v1/ring"), Some(&key_a), None).await?;
    assert_eq!(status, 403);
    let (status, _) =
        call(reqwest::Method::GET, &format!("{base}/v1/ring"), Some(&admin), None).await?;
    assert_eq!(status, 200);

    // The stored records hold no secret; a revoked key stops working.
    let listed = shardctl(&control, &["--json", "keys", "list"]).await?;
    let secret_b = key_b.rsplit('_').next().unwrap_or("");
    assert!(!listed.contains(secret_b) && listed.contains("beta"), "{listed}");
    let id_b = key_b.split('_').nth(1).unwrap_or("");
    shardctl(&control, &["keys", "revoke", id_b]).await?;
    let started = Instant::now();
    loop {
        let (status, _) = call(
            reqwest::Method::GET,
            &format!("{base}/v1/tenants/beta/memories?scope=shared"),
            Some(&key_b),
            None,
        )
        .await?;
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a revoked key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tenant's own key still deletes its own tenant (202), and it is gone.
    let (status, _) =
        call(reqwest::Method::DELETE, &format!("{base}/v1/tenants/alpha"), Some(&key_a), None)
            .await?;
    assert_eq!(status, 202);
    let (status, _) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/tenants/alpha/memories/a1?scope=shared"),
        Some(&key_a),
        None,
    )
    .await?;
    assert_eq!(status, 404);
    Ok(())
}
