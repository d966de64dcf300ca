//! Nobody in who does not belong, in cluster mode with everything on: etcd with authentication
//! (memring's user may touch only `/memring/`), the cluster token on internal traffic, API keys
//! on the router and on the control plane. Every route of every binary is walked without a
//! credential, with a wrong one, with a tenant key, an operator key and an admin key.

use std::time::Duration;

use memring_common::internal::CLUSTER_TOKEN_HEADER;
use memring_common::store::RingStore;
use memring_tests::etcd::EtcdCluster;
use memring_tests::load::wait_for;
use memring_tests::{Proc, TEST_CLUSTER_TOKEN, binary, shardctl_as, stranger, vector};
use serde_json::{Value, json};

/// Who a request is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum As {
    Nobody,
    Wrong,
    Tenant,
    Operator,
    Admin,
    /// The cluster token (internal routes).
    Cluster,
}

const EVERYONE: [As; 5] = [As::Nobody, As::Wrong, As::Tenant, As::Operator, As::Admin];

struct Keys {
    tenant: String,
    operator: String,
    admin: String,
}

async fn send(
    who: As,
    keys: &Keys,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String, reqwest::header::HeaderMap)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = stranger().request(method, url);
    let bearer = |k: &str| format!("Bearer {k}");
    req = match who {
        As::Nobody => req,
        As::Wrong => req
            .header("authorization", bearer(&format!("mrk_{}_{}", "0".repeat(16), "0".repeat(64))))
            .header(CLUSTER_TOKEN_HEADER, "not-the-cluster-token-but-long-enough-0000"),
        As::Tenant => req.header("authorization", bearer(&keys.tenant)),
        As::Operator => req.header("authorization", bearer(&keys.operator)),
        As::Admin => req.header("authorization", bearer(&keys.admin)),
        As::Cluster => req.header(CLUSTER_TOKEN_HEADER, TEST_CLUSTER_TOKEN),
    };
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Ok((status, resp.text().await?, headers))
}

/// `memring-control <etcd flags> <args>`: its standard output (or the error with its stderr).
async fn control_cli(c: &EtcdCluster, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(binary("memring-control")?)
        .args(c.etcd.flags())
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn every_route_of_every_binary_wants_its_credential() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start_authenticated(2, 0, 10).await?;
    // etcd itself refuses a client without memring's user.
    let anonymous = memring_common::store::etcd::EtcdStore::connect(
        std::slice::from_ref(&c.etcd.url),
        "/memring/",
    )
    .await?;
    assert!(anonymous.load().await.is_err(), "etcd answered a client without credentials");
    c.add_router(&["--auth", "true"]).await?;
    let control = c.start_control_with(&["--auth", "true", "--replace-after-secs", "0"]).await?;

    // The first admin key comes from the ring store itself, once; more need --force.
    let admin = control_cli(&c, &["keys", "bootstrap", "--label", "first"]).await?;
    assert!(admin.starts_with("mrk_"), "{admin}");
    let again = tokio::process::Command::new(binary("memring-control")?)
        .args(c.etcd.flags())
        .args(["keys", "bootstrap"])
        .output()
        .await?;
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && refused.contains("exists already"), "{refused}");
    let forced = control_cli(&c, &["keys", "bootstrap", "--force"]).await?;
    assert!(forced.starts_with("mrk_") && forced != admin);
    wait_for("the control plane to know the admin key", Duration::from_secs(10), || async {
        Ok(shardctl_as(&control, Some(&admin), &["keys", "list"]).await.ok())
    })
    .await?;
    let keys = Keys {
        tenant: shardctl_as(&control, Some(&admin), &["keys", "create", "--tenant", "alpha"])
            .await?,
        operator: shardctl_as(&control, Some(&admin), &["keys", "create", "--operator"]).await?,
        admin: admin.clone(),
    };
    let status = shardctl_as(&control, Some(&keys.operator), &["status"]).await?;
    assert!(status.contains("shard-1"), "{status}");
    let router = c.router(0);
    let memory = json!({"id": "m1", "scope": "shared", "content": "the launch code is 1234", "embedding": vector(8, 1, 0.2)});
    let written =
        wait_for("the router to know the tenant key", Duration::from_secs(10), || async {
            let (status, _, _) = send(
                As::Tenant,
                &keys,
                "POST",
                &format!("{router}/v1/tenants/alpha/memories"),
                Some(&memory),
            )
            .await?;
            Ok((status == 201).then_some(()))
        })
        .await;
    written?;

    // Open on every binary: health, readiness, metrics.
    let bases = [router.clone(), c.shards[0].url(), control.url()];
    for base in &bases {
        for path in ["/health", "/ready", "/metrics"] {
            let (status, _, _) =
                send(As::Nobody, &keys, "GET", &format!("{base}{path}"), None).await?;
            assert_eq!(status, 200, "GET {base}{path} without a credential");
        }
    }

    // The router: tenant routes want alpha's key (or an admin's); the ring an operator's or
    // admin's; the OpenAPI document any key; unknown paths say 401 without one.
    let search = json!({"scopes": ["shared"], "embedding": vector(8, 1, 0.2), "k": 3});
    let batch = json!({"items": [{"id": "m2", "scope": "shared", "content": "x", "embedding": vector(8, 2, 0.2)}]});
    let public: Vec<(&str, String, Option<&Value>, [u16; 5])> = vec![
        (
            "POST",
            format!("{router}/v1/tenants/alpha/memories"),
            Some(&memory),
            [401, 401, 200, 403, 200],
        ),
        (
            "POST",
            format!("{router}/v1/tenants/alpha/memories:batch"),
            Some(&batch),
            [401, 401, 200, 403, 200],
        ),
        (
            "GET",
            format!("{router}/v1/tenants/alpha/memories/m1?scope=shared"),
            None,
            [401, 401, 200, 403, 200],
        ),
        (
            "GET",
            format!("{router}/v1/tenants/alpha/memories?scope=shared"),
            None,
            [401, 401, 200, 403, 200],
        ),
        (
            "POST",
            format!("{router}/v1/tenants/alpha/memories/search"),
            Some(&search),
            [401, 401, 200, 403, 200],
        ),
        (
            "DELETE",
            format!("{router}/v1/tenants/alpha/memories/m2?scope=shared"),
            None,
            [401, 401, 204, 403, 404],
        ),
        ("DELETE", format!("{router}/v1/tenants/beta"), None, [401, 401, 403, 403, 202]),
        ("GET", format!("{router}/v1/ring"), None, [401, 401, 403, 200, 200]),
        ("GET", format!("{router}/openapi.json"), None, [401, 401, 200, 200, 200]),
        ("GET", format!("{router}/v1/nothing/here"), None, [401, 401, 404, 404, 404]),
    ];
    for (method, url, body, expected) in &public {
        for (who, want) in EVERYONE.iter().zip(expected) {
            let (status, text, _) = send(*who, &keys, method, url, *body).await?;
            assert_eq!(status, *want, "{method} {url} as {who:?}: {text}");
            if *who != As::Tenant && *who != As::Admin {
                assert!(!text.contains("launch code"), "{method} {url} as {who:?} leaked: {text}");
            }
        }
    }

    // The shard nodes: every internal route wants the cluster token; API keys are not it, and a
    // node says nothing — not even who owns a partition — without it.
    let shard = c.shards[0].url();
    let internal: Vec<(&str, String)> = [
        ("GET", "/internal/v1/partitions"),
        ("DELETE", "/internal/v1/tenants/alpha"),
        ("POST", "/internal/v1/replicate/poll"),
        ("POST", "/internal/v1/replicate/stream"),
        ("POST", "/internal/v1/replicate/position/alpha/shared?epoch=1"),
        ("POST", "/internal/v1/replicate/take-over/alpha/shared"),
        ("POST", "/internal/v1/replicate/hand-over/alpha/shared?epoch=1"),
        ("POST", "/internal/v1/replicate/batch"),
        ("GET", "/internal/v1/replicate/status"),
        ("GET", "/internal/v1/replicate/log/alpha/shared?after=0&term=0"),
        ("GET", "/internal/v1/migrate/alpha/shared/export"),
        ("GET", "/internal/v1/migrate/alpha/shared/index"),
        ("PUT", "/internal/v1/migrate/alpha/shared/index"),
        ("POST", "/internal/v1/migrate/alpha/shared/reseed"),
        ("POST", "/internal/v1/migrate/alpha/shared/import"),
        ("POST", "/internal/v1/migrate/alpha/shared/place?term=0&seq=0"),
        ("POST", "/internal/v1/migrate/alpha/shared/log"),
        ("POST", "/internal/v1/migrate/alpha/shared/fence"),
        ("DELETE", "/internal/v1/migrate/alpha/shared/fence"),
        ("GET", "/internal/v1/migrate/alpha/shared/checksum"),
        ("DELETE", "/internal/v1/migrate/alpha/shared/partition"),
        ("POST", "/internal/v1/p/alpha/shared/memories"),
        ("GET", "/internal/v1/p/alpha/shared/memories"),
        ("GET", "/internal/v1/p/alpha/shared/memories/m1"),
        ("DELETE", "/internal/v1/p/alpha/shared/memories/m1"),
        ("POST", "/internal/v1/p/alpha/shared/search"),
        ("GET", "/internal/v1/p/alpha/shared/log"),
        ("GET", "/internal/v1/nothing"),
        ("GET", "/debug/v1/anything"),
    ]
    .into_iter()
    .map(|(m, p)| (m, format!("{shard}{p}")))
    .collect();
    for (method, url) in &internal {
        for who in EVERYONE {
            let (status, text, _) = send(who, &keys, method, url, Some(&search)).await?;
            assert_eq!(status, 401, "{method} {url} as {who:?}: {text}");
            assert!(
                !text.contains("launch code") && !text.contains("127.0.0.1"),
                "{method} {url} as {who:?} said: {text}"
            );
        }
    }
    // Asking to upgrade to the replication stream (`replicate/stream.rs`) with a wrong token
    // gets no stream either.
    let upgrade = stranger()
        .post(format!("{shard}/internal/v1/replicate/stream"))
        .header("connection", "upgrade")
        .header("upgrade", "memring-feed/1")
        .header(CLUSTER_TOKEN_HEADER, "not-the-cluster-token-but-long-enough-0000")
        .send()
        .await?;
    assert_eq!(upgrade.status().as_u16(), 401, "{}", upgrade.text().await?);
    for path in [
        "/internal/v1/partitions",
        "/internal/v1/replicate/status",
        "/internal/v1/migrate/alpha/shared/checksum",
    ] {
        for s in &c.shards {
            let (status, text, _) =
                send(As::Cluster, &keys, "GET", &format!("{}{path}", s.url()), None).await?;
            assert_eq!(status, 200, "GET {path} with the cluster token: {text}");
        }
    }

    // The batch of replication steps (`replicate/batch.rs`), with the cluster token: a step for
    // each partition named, in order; a batch it cannot read is a 400 and changes nothing.
    let batch = format!("{shard}/internal/v1/replicate/batch");
    let too_many: Vec<String> = (0..4097).map(|i| format!("t{i}/shared")).collect();
    for (bad, why) in [
        (json!({"step": "jump", "epoch": 1, "partitions": []}), "an unknown step"),
        (json!({"step": "position", "epoch": 1, "partitions": [], "also": 1}), "an unknown field"),
        (json!({"step": "position", "epoch": 1, "partitions": ["no-scope"]}), "a bad partition"),
        (json!({"step": "position", "partitions": []}), "no epoch"),
        (json!({"step": "position", "epoch": 1, "partitions": too_many}), "4,097 partitions"),
    ] {
        let (status, text, _) = send(As::Cluster, &keys, "POST", &batch, Some(&bad)).await?;
        assert_eq!(status, 400, "{why}: {text}");
    }
    let ask =
        json!({"step": "position", "epoch": 1, "partitions": ["alpha/shared", "beta/shared"]});
    let (status, text, _) = send(As::Cluster, &keys, "POST", &batch, Some(&ask)).await?;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text)?;
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 2, "one result per partition asked: {text}");
    assert!(results.iter().all(|r| r["position"]["last_seq"].is_u64()), "{text}");
    // A node takes over only what it owns: the others answer why, one by one.
    let owned_elsewhere: Vec<String> = (0..40).map(|i| format!("t{i}/shared")).collect();
    let ask = json!({"step": "take_over", "epoch": 1, "partitions": owned_elsewhere});
    let (status, text, _) = send(As::Cluster, &keys, "POST", &batch, Some(&ask)).await?;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text)?;
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 40, "{text}");
    let refused = results.iter().filter(|r| r["error"].is_string()).count();
    assert!(refused > 0 && refused < 40, "a node owns some of 40 partitions, not all: {text}");

    // The control plane: an admin key for everything; an operator key reads the cluster and
    // the operator page (a browser is asked for the key); a tenant key nothing.
    let cp = control.url();
    let limits = json!({"requests_per_sec": 100.0});
    let mint = json!({"admin": true, "label": "attacker"});
    let migrate = json!({"tenant": "nobody", "to": "shard-1"});
    let (autopilot_off, no_policy) = (json!({"rebalance": false}), Value::Null);
    let admin_routes: Vec<(&str, String, Option<&Value>, [u16; 5])> = vec![
        ("GET", format!("{cp}/"), None, [401, 401, 403, 200, 200]),
        ("GET", format!("{cp}/v1/cluster"), None, [401, 401, 403, 200, 200]),
        ("GET", format!("{cp}/v1/verify"), None, [401, 401, 403, 403, 200]),
        ("GET", format!("{cp}/v1/plan"), None, [401, 401, 403, 200, 200]),
        ("PUT", format!("{cp}/v1/autopilot"), Some(&autopilot_off), [401, 401, 403, 403, 200]),
        ("PUT", format!("{cp}/v1/policy"), Some(&no_policy), [401, 401, 403, 403, 200]),
        ("GET", format!("{cp}/v1/keys"), None, [401, 401, 403, 403, 200]),
        ("POST", format!("{cp}/v1/keys"), Some(&mint), [401, 401, 403, 403, 201]),
        ("DELETE", format!("{cp}/v1/keys/0000000000000000"), None, [401, 401, 403, 403, 404]),
        ("GET", format!("{cp}/v1/limits"), None, [401, 401, 403, 403, 200]),
        ("PUT", format!("{cp}/v1/limits/alpha"), Some(&limits), [401, 401, 403, 403, 204]),
        ("DELETE", format!("{cp}/v1/limits/alpha"), None, [401, 401, 403, 403, 204]),
        ("POST", format!("{cp}/v1/migrations"), Some(&migrate), [401, 401, 403, 403, 404]),
        ("POST", format!("{cp}/v1/migrations/cancel"), None, [401, 401, 403, 403, 409]),
        ("GET", format!("{cp}/v1/rebalance"), None, [401, 401, 403, 403, 200]),
        ("POST", format!("{cp}/v1/rebalance"), None, [401, 401, 403, 403, 200]),
        ("GET", format!("{cp}/v1/drain/shard-2"), None, [401, 401, 403, 403, 200]),
        ("POST", format!("{cp}/v1/drain/nobody"), None, [401, 401, 403, 403, 404]),
        ("POST", format!("{cp}/debug/v1/failpoints/none"), None, [401, 401, 403, 403, 200]),
        ("GET", format!("{cp}/v1/nothing"), None, [401, 401, 403, 403, 404]),
    ];
    for (method, url, body, expected) in &admin_routes {
        for (who, want) in EVERYONE.iter().zip(expected) {
            let (status, text, headers) = send(*who, &keys, method, url, *body).await?;
            assert_eq!(status, *want, "{method} {url} as {who:?}: {text}");
            if status == 401 && *url == format!("{cp}/") {
                assert!(headers.contains_key("www-authenticate"), "{url}: no Basic challenge");
            }
        }
    }
    let probes =
        9 + public.len() * 5 + internal.len() * 5 + 3 * c.shards.len() + admin_routes.len() * 5;
    println!(
        "{probes} requests: {} router routes, {} shard routes, {} control-plane routes, each \
         without a credential, with a wrong one, a tenant, an operator and an admin key",
        public.len(),
        internal.len(),
        admin_routes.len()
    );
    // A browser sends the key as the password of Basic credentials.
    let basic = stranger().get(format!("{cp}/v1/cluster")).basic_auth("ops", Some(&keys.operator));
    assert_eq!(basic.send().await?.status().as_u16(), 200);
    Ok(())
}

/// The cluster token rotates on a running replicated cluster (R = 3, W = 2) under writes, in the
/// three steps of docs/operations.md — both accepted, the new one sent, the old one dropped —
/// each once every process has had time to read the file again: no request fails, no
/// acknowledged write is lost, and at the end the old token is refused and the new accepted.
#[tokio::test]
async fn rotating_the_cluster_token_fails_no_request() -> anyhow::Result<()> {
    let (c, _store, control) = memring_tests::load::replicated_cluster(3, 3).await?;
    let tenants: Vec<String> = (0..3).map(|t| format!("rot{t}")).collect();
    let (stop, _, writers) = memring_tests::load::start_writers(&c.router(0), tenants);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new = memring_common::internal::generate_token();
    let settle = memring_common::internal::RELOAD_EVERY * 3;
    for step in [
        format!("{TEST_CLUSTER_TOKEN}\n{new}\n"),
        format!("{new}\n{TEST_CLUSTER_TOKEN}\n"),
        format!("{new}\n"),
    ] {
        std::fs::write(&c.token_file, step)?;
        tokio::time::sleep(settle).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = memring_tests::load::stop_writers(&stop, writers, || c.logs()).await?;
    let acked: Vec<&(String, String, String)> = seen.iter().flat_map(|s| &s.acked).collect();
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    println!("rotation: {} writes acknowledged, {failed} failed", acked.len());
    assert_eq!(failed, 0, "requests failed while the token rotated\n{}", c.logs());
    assert!(acked.len() > 100, "too few writes to show anything: {}", acked.len());
    memring_tests::load::wait_verified(&control, Duration::from_secs(30)).await?;
    memring_tests::load::assert_readable(&c.router(0), acked.iter().copied(), "after the rotation")
        .await?;
    let url = format!("{}/internal/v1/partitions", c.shards[0].url());
    let old = stranger().get(&url).header(CLUSTER_TOKEN_HEADER, TEST_CLUSTER_TOKEN).send().await?;
    assert_eq!(old.status().as_u16(), 401, "the old token still works");
    let fresh = stranger().get(&url).header(CLUSTER_TOKEN_HEADER, new.as_str()).send().await?;
    assert_eq!(fresh.status().as_u16(), 200);
    Ok(())
}

/// With a certificate and key the router serves its public API over HTTPS (TLS 1.2/1.3,
/// HTTP/1.1, keep-alive: two requests go over one connection), and plain HTTP to that port gets
/// no answer.
#[tokio::test]
async fn the_router_speaks_https_when_given_a_certificate() -> anyhow::Result<()> {
    let c = memring_tests::Cluster::start(1).await?;
    let dir = c.dir.path();
    let (cert, key) = memring_tests::self_signed_cert(dir).await?;
    let addr = format!("127.0.0.1:{}", memring_tests::free_port());
    let args = vec![
        "--listen".into(),
        addr.clone(),
        "--ring-dir".into(),
        c.ring_dir().display().to_string(),
        "--tls-cert-file".into(),
        cert.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
    ];
    let _router = Proc::start("router-tls", &binary("memring-router")?, args, addr.clone(), dir)?;
    let curl = |extra: Vec<String>| {
        let cert = cert.clone();
        async move {
            tokio::process::Command::new("curl")
                .args(["-sS", "-v", "--max-time", "5", "--cacert"])
                .arg(&cert)
                .args(extra)
                .output()
                .await
        }
    };
    let ready = format!("https://{addr}/ready");
    wait_for("the HTTPS router to be ready", Duration::from_secs(30), || async {
        let out = curl(vec!["-f".into(), ready.clone()]).await?;
        Ok(out.status.success().then_some(()))
    })
    .await?;
    let write = format!("https://{addr}/v1/tenants/tls/memories");
    let body = r#"{"id":"m1","scope":"shared","content":"over tls","embedding":[1,0,0]}"#;
    let out = curl(vec![
        "-f".into(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        body.into(),
        write.clone(),
        "--next".into(),
        "--cacert".into(),
        cert.display().to_string(),
        "-f".into(),
        format!("https://{addr}/v1/tenants/tls/memories/m1?scope=shared"),
    ])
    .await?;
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("over tls"), "{stdout}");
    assert!(stderr.contains("SSL connection using TLSv1."), "{stderr}");
    assert!(stderr.contains("Re-using existing connection"), "no keep-alive over TLS: {stderr}");
    let tls_line = stderr.lines().find(|l| l.contains("SSL connection")).unwrap_or_default();
    println!("https: {}", tls_line.trim_start_matches("* "));
    let plain = curl(vec!["-f".into(), format!("http://{addr}/health")]).await?;
    assert!(!plain.status.success(), "plain HTTP answered on the TLS port");
    Ok(())
}
