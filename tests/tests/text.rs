//! Memory in words (API.md part 2, "Text in, text out"), end to end: routers with the built-in
//! model (all-MiniLM-L6-v2 from `scripts/fetch-model.py`), an `openai` embedder that asks a second
//! router's own `/v1/embeddings`, real shard nodes and RocksDB.

use std::time::{Duration, Instant};

use memring_tests::{Cluster, assert_client_error, client, send, send_allowing_5xx};
use serde_json::{Value, json};

const MODEL: &str = "all-MiniLM-L6-v2";

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .unwrap_or_default()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn post(url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    send(&client(), reqwest::Method::POST, url, Some(body.to_string().into_bytes())).await
}

async fn embed_one(router: &str, text: &str) -> anyhow::Result<Vec<f32>> {
    let (status, answer) =
        post(&format!("{router}/v1/embeddings"), &json!({"input": text})).await?;
    anyhow::ensure!(status == 200, "embeddings answered {status}: {answer}");
    Ok(floats(&answer["data"][0]["embedding"]))
}

const NOTES: [(&str, &str); 5] = [
    ("flight", "The user's flight to Lisbon leaves on Friday at 9am from gate B12."),
    ("diet", "Maria is vegetarian and allergic to peanuts."),
    ("repo", "The deploy script lives in ops/deploy.sh and needs the PROD_TOKEN variable."),
    ("pet", "Their dog Biscuit is a three year old beagle."),
    ("meeting", "Weekly sync with the design team moved to Tuesdays at 3pm."),
];

#[tokio::test]
async fn text_only_writes_are_embedded_and_found_by_a_paraphrase() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    for (id, content) in NOTES {
        let body = json!({"id": id, "scope": "agent:assistant", "content": content});
        let (status, answer) = c.post("/v1/tenants/acme/memories", &body).await?;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["embedded_by"], MODEL, "{answer}");
        assert!(answer.get("embedded_truncated").is_none(), "{answer}");
    }
    // The stored vector is the model's: unit length, 384 numbers, what /v1/embeddings answers.
    let (status, got) = c.get("/v1/tenants/acme/memories/diet?scope=agent:assistant").await?;
    assert_eq!(status, 200, "{got}");
    let stored = floats(&got["embedding"]);
    assert_eq!(stored.len(), 384);
    assert!((cosine(&stored, &stored) - 1.0).abs() < 1e-4);
    let direct = embed_one(&c.url(), NOTES[1].1).await?;
    let gap = stored.iter().zip(&direct).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(gap < 1e-5, "stored and served vectors differ by {gap}");

    // A paraphrase sharing no content word finds the right memory first.
    let search = json!({"scopes": ["agent:assistant"], "query": "what food can't she eat?", "mode": "vector", "k": 3});
    let (status, found) = c.post("/v1/tenants/acme/memories/search", &search).await?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"][0]["id"], "diet", "{found}");
    let search = json!({"scopes": ["agent:assistant"], "query": "when is my plane departing", "mode": "vector", "k": 1});
    let (_, found) = c.post("/v1/tenants/acme/memories/search", &search).await?;
    assert_eq!(found["results"][0]["id"], "flight", "{found}");

    // The same text-only write again is the idempotent 200, version 1, though it was embedded
    // again (in another batch, so perhaps with other rounding).
    let again = json!({"id": "pet", "scope": "agent:assistant", "content": NOTES[3].1});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &again).await?;
    assert_eq!((status, answer["version"].clone()), (200, json!(1)), "{answer}");
    // A changed content is embedded anew.
    let changed = json!({"id": "pet", "scope": "agent:assistant", "content": "Their cat Mochi sleeps all day."});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &changed).await?;
    assert_eq!((status, answer["version"].clone()), (200, json!(2)), "{answer}");
    let (_, got) = c.get("/v1/tenants/acme/memories/pet?scope=agent:assistant").await?;
    assert!(cosine(&floats(&got["embedding"]), &stored) < 0.9);

    // Longer than the model's window: embedded from its first window, and said so.
    let long = "memory ".repeat(400);
    let body = json!({"scope": "agent:assistant", "content": long});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &body).await?;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["embedded_truncated"], true, "{answer}");

    // A batch embeds its text-only items (together) and keeps the vectors clients sent.
    let client_vector: Vec<f32> = direct.iter().map(|x| -x).collect();
    let items = json!({"items": [
        {"id": "b1", "scope": "shared", "content": "Quarterly report is due March 3."},
        {"id": "b2", "scope": "agent:assistant", "content": "Gym on Mondays and Thursdays."},
        {"id": "b3", "scope": "shared", "content": "client vector", "embedding": client_vector},
        {"id": "bad id!", "scope": "shared", "content": "refused"},
    ]});
    let (status, answer) = c.post("/v1/tenants/acme/memories:batch", &items).await?;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results[0]["embedded_by"], MODEL, "{answer}");
    assert_eq!(results[1]["embedded_by"], MODEL, "{answer}");
    assert!(results[2].get("embedded_by").is_none() && results[2]["status"] == 201, "{answer}");
    assert!(results[3].get("error").is_some(), "{answer}");
    let (_, got) = c.get("/v1/tenants/acme/memories/b3?scope=shared").await?;
    assert_eq!(floats(&got["embedding"]), client_vector);
    Ok(())
}

#[tokio::test]
async fn the_embeddings_endpoint_speaks_openai_and_refuses_what_it_cannot_serve()
-> anyhow::Result<()> {
    let c = Cluster::start_with_router(1, &["--embedder", "builtin"]).await?;
    let url = format!("{}/v1/embeddings", c.url());
    let (status, answer) = post(
        &url,
        &json!({"input": ["a red apple", "a crimson fruit", "tax law"], "model": MODEL}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["model"].clone(), answer["dimensions"].clone()), (json!(MODEL), json!(384)));
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        data.iter().map(|d| d["index"].as_u64()).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    let v: Vec<Vec<f32>> = data.iter().map(|d| floats(&d["embedding"])).collect();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2, "paraphrase is not closer");
    // One text alone gives the same vector as inside a batch (float rounding aside).
    let alone = embed_one(&c.url(), "a crimson fruit").await?;
    assert!(alone.iter().zip(&v[1]).all(|(a, b)| (a - b).abs() < 1e-5));

    let many: Vec<String> = (0..257).map(|i| format!("text {i}")).collect();
    for (body, code) in [
        (json!({"input": many}), "invalid_request"),
        (json!({"input": "x", "model": "text-embedding-3-small"}), "unknown_model"),
        (json!({"input": "x", "dimensions": 1536}), "invalid_request"),
        (json!({"input": []}), "invalid_request"),
        (json!({"input": [[1, 2, 3]]}), "invalid_request"),
        (json!({"text": "x"}), "invalid_json"),
    ] {
        let (status, answer) = post(&url, &body).await?;
        assert_eq!(assert_client_error(status, &answer), code, "{body} → {answer}");
    }
    // Without an embedder: 400 no_embedder here, and for a text query in vector mode.
    let bare = c.start_router("router-bare", &[]).await?;
    let (status, answer) =
        post(&format!("{}/v1/embeddings", bare.url()), &json!({"input": "x"})).await?;
    assert_eq!(assert_client_error(status, &answer), "no_embedder");
    let search = json!({"scopes": ["shared"], "query": "x", "mode": "vector"});
    let (status, answer) =
        post(&format!("{}/v1/tenants/t/memories/search", bare.url()), &search).await?;
    assert_eq!(assert_client_error(status, &answer), "no_embedder");
    // ... and a text-only write is stored without a vector, as before.
    let body = json!({"id": "plain", "scope": "shared", "content": "no vector"});
    let (status, answer) = post(&format!("{}/v1/tenants/t/memories", bare.url()), &body).await?;
    assert_eq!(status, 201, "{answer}");
    assert!(answer.get("embedded_by").is_none());
    Ok(())
}

#[tokio::test]
async fn partitions_remember_their_model() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    let vector: Vec<f32> = (0..384).map(|i| if i == 7 { 1.0 } else { 0.0 }).collect();
    // `shared` starts with a client's vector of an unnamed model: "client".
    let body =
        json!({"id": "c1", "scope": "shared", "content": "client made", "embedding": vector});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    let text_only = json!({"scope": "shared", "content": "needs the router's model"});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &text_only).await?;
    assert_eq!(assert_client_error(status, &answer), "embedding_model_mismatch");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("client") && message.contains(MODEL), "{message}");
    let search = json!({"scopes": ["shared"], "query": "anything", "mode": "vector"});
    let (status, answer) = c.post("/v1/tenants/acme/memories/search", &search).await?;
    assert_eq!(assert_client_error(status, &answer), "embedding_model_mismatch", "{answer}");
    // A client vector of the partition's dimension is always accepted, and searchable.
    let body = json!({"id": "c2", "scope": "shared", "content": "also client", "embedding": vector, "embedding_model": "my-model"});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    let search = json!({"scopes": ["shared"], "embedding": vector, "k": 5});
    let (status, answer) = c.post("/v1/tenants/acme/memories/search", &search).await?;
    assert_eq!((status, answer["results"].as_array().map(Vec::len)), (200, Some(2)), "{answer}");

    // A partition first written by a named model keeps that name.
    let body = json!({"scope": "agent:x", "content": "named", "embedding": vector, "embedding_model": "text-embedding-3-small"});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    let text_only = json!({"scope": "agent:x", "content": "router embeds"});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &text_only).await?;
    assert_eq!(assert_client_error(status, &answer), "embedding_model_mismatch");
    assert!(
        answer["error"]["message"].as_str().unwrap_or_default().contains("text-embedding-3-small")
    );

    // A partition the router embedded for takes more text, and client vectors of its size.
    let text_only = json!({"scope": "agent:y", "content": "first by the router"});
    assert_eq!(c.post("/v1/tenants/acme/memories", &text_only).await?.0, 201);
    let body = json!({"scope": "agent:y", "content": "client", "embedding": vector});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    let search = json!({"scopes": ["agent:y"], "query": "first", "mode": "vector"});
    assert_eq!(c.post("/v1/tenants/acme/memories/search", &search).await?.0, 200);
    // `embedding_model` without an `embedding` is a mistake, not a silent no-op.
    let body = json!({"scope": "agent:y", "content": "x", "embedding_model": "m"});
    let (status, answer) = c.post("/v1/tenants/acme/memories", &body).await?;
    assert_eq!(assert_client_error(status, &answer), "invalid_request");
    Ok(())
}

#[tokio::test]
async fn the_openai_embedder_uses_another_router_and_stores_nothing_when_it_is_down()
-> anyhow::Result<()> {
    let mut c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    let service = format!("{}/v1", c.url());
    let mut remote = c
        .start_router(
            "router-openai",
            &[
                "--embedder",
                "openai",
                "--openai-url",
                &service,
                "--openai-model",
                MODEL,
                "--openai-dimensions",
                "384",
                "--openai-timeout-ms",
                "1000",
                "--forward-timeout-ms",
                "3000",
            ],
        )
        .await?;
    let writes = format!("{}/v1/tenants/acme/memories", remote.url());
    let body =
        json!({"id": "o1", "scope": "shared", "content": "The wifi password is on the fridge."});
    let (status, answer) = post(&writes, &body).await?;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["embedded_by"], MODEL);
    let (_, got) = c.get("/v1/tenants/acme/memories/o1?scope=shared").await?;
    let direct = embed_one(&c.url(), "The wifi password is on the fridge.").await?;
    let gap = floats(&got["embedding"])
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap < 1e-5, "{gap}");
    // Its own /v1/embeddings answers through the service too.
    assert_eq!(embed_one(&remote.url(), "hello").await?.len(), 384);
    // Batches go through in calls of at most max_batch inputs.
    let items: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("ob{i}"), "scope": "shared", "content": format!("note number {i}")}))
        .collect();
    let (status, answer) = post(&format!("{writes}:batch"), &json!({"items": items})).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["results"].as_array().is_some_and(|r| r.iter().all(|x| x["embedded_by"] == MODEL))
    );

    // The service goes away: 503 with Retry-After within the request's time, nothing stored.
    c.router.stop();
    let started = Instant::now();
    let resp = client()
        .post(&writes)
        .json(&json!({"id": "o2", "scope": "shared", "content": "must not be stored without its vector"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    let (status, _) = send_allowing_5xx(
        &client(),
        reqwest::Method::GET,
        &format!("{writes}/o2?scope=shared"),
        None,
    )
    .await?;
    assert_eq!(status, 404, "a text-only write was stored without its vector");
    // Writes that bring their vector do not need the service.
    let body = json!({"id": "o3", "scope": "shared", "content": "own vector", "embedding": direct});
    assert_eq!(post(&writes, &body).await?.0, 201);
    remote.stop();
    Ok(())
}

/// The `openai` embedder speaks HTTPS: against a router with the built-in model that serves TLS
/// with a self-signed certificate, a router trusting that certificate (`--openai-ca-file`) embeds
/// through it; one that does not trust it refuses the service's certificate, answers 503 and
/// stores nothing.
#[tokio::test]
async fn the_openai_embedder_speaks_https_and_checks_the_certificate() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let dir = c.dir.path();
    let (cert, key) = memring_tests::self_signed_cert(dir).await?;
    let addr = format!("127.0.0.1:{}", memring_tests::free_port());
    let args: Vec<String> = [
        "--listen",
        &addr,
        "--ring-dir",
        &c.ring_dir().display().to_string(),
        "--embedder",
        "builtin",
        "--tls-cert-file",
        &cert.display().to_string(),
        "--tls-key-file",
        &key.display().to_string(),
    ]
    .map(String::from)
    .into();
    let binary = memring_tests::binary("memring-router")?;
    let _service = memring_tests::Proc::start("router-tls", &binary, args, addr.clone(), dir)?;
    let pem = std::fs::read(&cert)?;
    let https = memring_common::tls::http_client_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?)
        .build()?;
    let service = format!("https://{addr}/v1");
    memring_tests::load::wait_for("the HTTPS service", Duration::from_secs(60), || async {
        let ready = https.get(format!("https://{addr}/ready")).send().await;
        Ok(ready.ok().filter(|r| r.status().is_success()).map(|_| ()))
    })
    .await?;
    let openai = |ca: Option<String>| {
        let mut flags = vec![
            "--embedder".to_owned(),
            "openai".into(),
            "--openai-url".into(),
            service.clone(),
            "--openai-model".into(),
            MODEL.into(),
            "--openai-dimensions".into(),
            "384".into(),
            "--openai-timeout-ms".into(),
            "1000".into(),
            "--forward-timeout-ms".into(),
            "3000".into(),
        ];
        if let Some(ca) = ca {
            flags.extend(["--openai-ca-file".to_owned(), ca]);
        }
        flags
    };
    let trusting = openai(Some(cert.display().to_string()));
    let trusting: Vec<&str> = trusting.iter().map(String::as_str).collect();
    let mut trusting = c.start_router("router-trusting", &trusting).await?;
    let text = "The spare key is under the blue flower pot.";
    let writes = format!("{}/v1/tenants/acme/memories", trusting.url());
    let (status, answer) =
        post(&writes, &json!({"id": "t1", "scope": "shared", "content": text})).await?;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["embedded_by"], MODEL);
    let (_, got) =
        send(&client(), reqwest::Method::GET, &format!("{writes}/t1?scope=shared"), None).await?;
    let direct = https
        .post(format!("{service}/embeddings"))
        .json(&json!({"input": text}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let direct = floats(&direct["data"][0]["embedding"]);
    assert_eq!(direct.len(), 384);
    let gap = floats(&got["embedding"])
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap < 1e-5, "the stored vector is not the service's: {gap}");

    let doubting = openai(None);
    let doubting: Vec<&str> = doubting.iter().map(String::as_str).collect();
    let mut doubting = c.start_router("router-doubting", &doubting).await?;
    let writes = format!("{}/v1/tenants/acme/memories", doubting.url());
    let resp = client()
        .post(&writes)
        .json(&json!({"id": "t2", "scope": "shared", "content": text}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 503, "an untrusted certificate was accepted");
    assert!(resp.headers().get("retry-after").is_some());
    let (status, _) = send_allowing_5xx(
        &client(),
        reqwest::Method::GET,
        &format!("{writes}/t2?scope=shared"),
        None,
    )
    .await?;
    assert_eq!(status, 404);
    assert!(
        doubting.log_tail().contains("certificate"),
        "the log does not say why: {}",
        doubting.log_tail()
    );
    trusting.stop();
    doubting.stop();
    Ok(())
}

#[tokio::test]
async fn a_full_embedder_queue_is_503_with_retry_after_and_never_a_lost_request()
-> anyhow::Result<()> {
    let c = Cluster::start_with_router(
        1,
        &["--embedder", "builtin", "--embed-threads", "1", "--embed-queue-texts", "64"],
    )
    .await?;
    let url = format!("{}/v1/embeddings", c.url());
    let texts: Vec<String> =
        (0..64).map(|i| format!("a sentence about the number {i} and more words")).collect();
    let calls = (0..12).map(|_| {
        let (url, texts) = (url.clone(), texts.clone());
        async move {
            let resp = client().post(&url).json(&json!({"input": texts})).send().await?;
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").is_some();
            let body: Value = resp.json().await?;
            anyhow::Ok((status, retry, body))
        }
    });
    let answers = futures::future::join_all(calls).await;
    let (mut ok, mut refused) = (0, 0);
    for answer in answers {
        let (status, retry, body) = answer?;
        match status {
            200 => {
                assert_eq!(body["data"].as_array().map(Vec::len), Some(64));
                ok += 1;
            }
            503 => {
                assert!(retry, "503 without Retry-After: {body}");
                assert_eq!(body["error"]["code"], "unavailable");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");
    let metrics = reqwest::get(format!("{}/metrics", c.url())).await?.text().await?;
    assert!(metrics.contains("memring_embed_rejected_total"), "no rejection counted");
    Ok(())
}

#[tokio::test]
async fn search_fields_of_part_two_are_checked_by_name() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(1, &["--embedder", "builtin"]).await?;
    let path = "/v1/tenants/acme/memories/search";
    for (body, names) in [
        (json!({"scopes": ["shared"], "query": "x", "mode": "semantic"}), "mode"),
        (
            json!({"scopes": ["shared"], "query": "x", "mode": "vector", "fusion": {"method": "borda"}}),
            "fusion",
        ),
        (
            json!({"scopes": ["shared"], "query": "x", "mode": "vector", "fusion": {"method": "weighted", "alpha": 2}}),
            "alpha",
        ),
        (
            json!({"scopes": ["shared"], "query": "x", "mode": "vector", "k": 10, "offset": 995}),
            "offset",
        ),
        (json!({"scopes": ["shared"], "query": "q".repeat(8193), "mode": "vector"}), "query"),
        (json!({"scopes": ["shared"], "mode": "keyword"}), "query"),
        (json!({"scopes": ["shared"], "query": "x", "embedded_by": "m"}), "embedded_by"),
    ] {
        let (status, answer) = c.post(path, &body).await?;
        assert_client_error(status, &answer);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body} → {message}");
    }
    // `offset` pages through one ranking.
    for (id, content) in NOTES {
        let body = json!({"id": id, "scope": "shared", "content": content});
        assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    }
    let ids = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .map(|r| r.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let all = c
        .post(
            path,
            &json!({"scopes": ["shared"], "query": "travel plans", "mode": "vector", "k": 5}),
        )
        .await?
        .1;
    let page = c.post(path, &json!({"scopes": ["shared"], "query": "travel plans", "mode": "vector", "k": 2, "offset": 2})).await?.1;
    assert_eq!(ids(&page), ids(&all)[2..4].to_vec());
    Ok(())
}

async fn search(c: &Cluster, tenant: &str, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = c.post(&format!("/v1/tenants/{tenant}/memories/search"), &body).await?;
    anyhow::ensure!(status == 200, "search {body} answered {status}: {answer}");
    Ok(answer)
}

fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn keyword_search_finds_a_rare_word_at_once_and_follows_every_change() -> anyhow::Result<()> {
    let mut c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    for (id, content) in NOTES {
        let body =
            json!({"id": id, "scope": "shared", "content": content, "metadata": {"kind": id}});
        assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    }
    // Visible as soon as the write is acknowledged: the very next request finds it.
    let body = json!({"id": "err", "scope": "shared", "content": "Billing failed with error code ZX-4711 twice.", "metadata": {"kind": "incident"}});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    let found =
        search(&c, "acme", json!({"scopes": ["shared"], "query": "zx-4711", "mode": "keyword"}))
            .await?;
    assert_eq!(ids(&found), ["err"], "{found}");
    let hit = &found["results"][0];
    assert!(
        hit["scores"]["keyword"].as_f64().is_some_and(|s| s > 0.0)
            && hit["scores"].get("vector").is_none(),
        "{hit}"
    );
    assert_eq!(hit["score"], hit["scores"]["keyword"]);
    // Case-folded words; only memories sharing a word are results.
    let found = search(
        &c,
        "acme",
        json!({"scopes": ["shared"], "query": "PEANUTS", "mode": "keyword", "k": 10}),
    )
    .await?;
    assert_eq!(ids(&found), ["diet"]);
    // Filters apply inside the keyword search.
    let filtered = json!({"scopes": ["shared"], "query": "the", "mode": "keyword", "k": 10, "filter": {"metadata": {"kind": "flight"}}});
    assert_eq!(ids(&search(&c, "acme", filtered).await?), ["flight"]);
    // An update replaces the words; a delete removes them.
    let body = json!({"id": "err", "scope": "shared", "content": "Billing is healthy again."});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 200);
    let gone = json!({"scopes": ["shared"], "query": "ZX-4711", "mode": "keyword"});
    assert!(ids(&search(&c, "acme", gone.clone()).await?).is_empty());
    assert_eq!(c.delete("/v1/tenants/acme/memories/diet?scope=shared").await?.0, 204);
    let peanuts = json!({"scopes": ["shared"], "query": "peanuts", "mode": "keyword"});
    assert!(ids(&search(&c, "acme", peanuts).await?).is_empty());
    // Rebuilt from RocksDB after a restart of every shard node.
    for shard in &mut c.shards {
        shard.restart()?;
        shard.wait_ready(Duration::from_secs(30)).await?;
    }
    let healthy = json!({"scopes": ["shared"], "query": "healthy billing", "mode": "keyword"});
    assert_eq!(ids(&search(&c, "acme", healthy).await?), ["err"]);
    // Another tenant's words are never found.
    let other = json!({"scopes": ["shared"], "query": "healthy billing", "mode": "keyword"});
    assert!(ids(&search(&c, "intruder", other).await?).is_empty());
    Ok(())
}

#[tokio::test]
async fn hybrid_is_the_default_with_an_embedder_and_fuses_both_lists() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    for (id, content) in NOTES {
        let body = json!({"id": id, "scope": "agent:a", "content": content});
        assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    }
    let body =
        json!({"id": "token", "scope": "shared", "content": "Rotate PROD_TOKEN every 90 days."});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    // Default mode with query and an embedder: hybrid; both parts named where both found it.
    let query = json!({"scopes": ["agent:a", "shared"], "query": "which variable does the deploy script need", "k": 3});
    let found = search(&c, "acme", query).await?;
    assert_eq!(found["results"][0]["id"], "repo", "{found}");
    let scores = &found["results"][0]["scores"];
    assert!(scores["vector"].is_number() && scores["keyword"].is_number(), "{found}");
    // The rare word and a paraphrase, weighted towards words.
    let query = json!({"scopes": ["agent:a", "shared"], "query": "PROD_TOKEN", "fusion": {"method": "weighted", "alpha": 0.2}, "k": 2});
    let found = search(&c, "acme", query).await?;
    assert_eq!(ids(&found).len(), 2);
    assert!(
        ids(&found).contains(&"token".to_owned()) && ids(&found).contains(&"repo".to_owned()),
        "{found}"
    );
    // Without an embedder a query alone is keyword search.
    let bare = c.start_router("router-bare", &[]).await?;
    let (status, found) = post(
        &format!("{}/v1/tenants/acme/memories/search", bare.url()),
        &json!({"scopes": ["agent:a"], "query": "beagle"}),
    )
    .await?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(ids(&found), ["pet"]);
    assert!(found["results"][0]["scores"].get("vector").is_none());
    // ... and hybrid needs one.
    let (status, answer) = post(
        &format!("{}/v1/tenants/acme/memories/search", bare.url()),
        &json!({"scopes": ["agent:a"], "query": "beagle", "mode": "hybrid"}),
    )
    .await?;
    assert_eq!(assert_client_error(status, &answer), "no_embedder");
    Ok(())
}

#[tokio::test]
async fn answers_do_not_change_when_a_scope_migrates() -> anyhow::Result<()> {
    use memring_common::store::RingStore;
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    let control = c.start_control().await?;
    for (n, (id, content)) in NOTES.iter().enumerate() {
        let scope = if n % 2 == 0 { "shared" } else { "agent:a" };
        let body = json!({"id": id, "scope": scope, "content": content});
        assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
    }
    let queries = [
        json!({"scopes": ["shared", "agent:a"], "query": "gate B12 friday flight", "k": 5}),
        json!({"scopes": ["shared", "agent:a"], "query": "the team", "mode": "keyword", "k": 5}),
        json!({"scopes": ["shared", "agent:a"], "query": "pets", "mode": "vector", "k": 5}),
        json!({"scopes": ["shared", "agent:a"], "query": "deploy", "fusion": {"method": "weighted", "alpha": 0.5}, "k": 5}),
    ];
    let mut before = Vec::new();
    for q in &queries {
        before.push(search(&c, "acme", q.clone()).await?["results"].clone());
    }
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let ring = memring_common::Ring::new(store.load().await?.layout);
    let partition = memring_common::PartitionKey::new(
        &memring_common::TenantId::parse("acme")?,
        &memring_common::Scope::Shared,
    );
    let source = ring.owner(&partition).map(|n| n.id.clone()).expect("an owner");
    let target = ring
        .layout()
        .nodes
        .iter()
        .find(|n| n.id != source)
        .map(|n| n.id.clone())
        .expect("another node");
    memring_tests::shardctl(
        &control,
        &["migrate", "--tenant", "acme", "--scope", "shared", "--to", target.as_str()],
    )
    .await?;
    let ring = memring_common::Ring::new(store.load().await?.layout);
    assert_eq!(ring.owner(&partition).map(|n| n.id.clone()), Some(target));
    for (q, was) in queries.iter().zip(before) {
        let now = search(&c, "acme", q.clone()).await?["results"].clone();
        assert_eq!(now, was, "{q} answered differently after the migration");
    }
    Ok(())
}

#[tokio::test]
async fn keyword_and_vector_answers_are_the_same_on_every_copy_across_a_failover()
-> anyhow::Result<()> {
    use memring_common::store::RingStore;
    use memring_tests::load::{replicated_cluster, wait_for, wait_verified};
    let (mut c, store, control) = replicated_cluster(3, 3).await?;
    let r = c.add_router(&["--embedder", "builtin"]).await?;
    let router = c.router(r);
    let http = client();
    for (id, content) in NOTES {
        let body = json!({"id": id, "scope": "shared", "content": content});
        let resp = http.post(format!("{router}/v1/tenants/kf/memories")).json(&body).send().await?;
        assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await?);
    }
    let queries = [
        json!({"scopes": ["shared"], "query": "design team sync", "mode": "keyword", "k": 5}),
        json!({"scopes": ["shared"], "query": "what is the dog called", "mode": "vector", "k": 5}),
        json!({"scopes": ["shared"], "query": "allergy", "k": 5}),
    ];
    let url = format!("{router}/v1/tenants/kf/memories/search");
    // With replica reads on, repeated searches are answered by different copies. A follower
    // may answer from up to `replica_staleness_ms` (2 s) behind its primary, so the copies must
    // come to agree within a few seconds, not at once.
    let answers = |label: &'static str| {
        let (http, url, queries) = (http.clone(), url.clone(), queries.clone());
        async move {
            let mut all = Vec::new();
            for q in &queries {
                let started = std::time::Instant::now();
                let agreed = loop {
                    let mut seen: Vec<Value> = Vec::new();
                    for _ in 0..6 {
                        let answer: Value = http.post(&url).json(q).send().await?.json().await?;
                        anyhow::ensure!(answer["partial"] == false, "{label}: {answer}");
                        seen.push(answer["results"].clone());
                    }
                    if seen.windows(2).all(|w| w[0] == w[1]) {
                        break seen.remove(0);
                    }
                    anyhow::ensure!(
                        started.elapsed() < Duration::from_secs(15),
                        "{label}: copies still disagree on {q} after 15 s: {seen:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                all.push(agreed);
            }
            anyhow::Ok(all)
        }
    };
    let before = answers("before").await?;
    assert!(before.iter().all(|r| r.as_array().is_some_and(|a| !a.is_empty())));
    let ring = memring_common::Ring::new(store.load().await?.layout);
    let owner = ring.owner(&"kf/shared".parse()?).map(|n| n.addr.clone()).expect("owner");
    let victim = c.shards.iter().position(|s| s.addr == owner).expect("the owner's process");
    let victim_id = c.shard_id(victim);
    c.shards[victim].kill();
    wait_for("the killed primary marked down", Duration::from_secs(30), || async {
        Ok(store.load().await?.layout.states.get(&victim_id).is_marked_down().then_some(()))
    })
    .await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(r, epoch, Duration::from_secs(10)).await?;
    assert_eq!(answers("after the failover").await?, before);
    // The old primary returns, catches up and leads again: still the same answers.
    c.shards[victim].start_again()?;
    c.shards[victim].wait_ready(Duration::from_secs(30)).await?;
    wait_for("the restarted node re-admitted", Duration::from_secs(60), || async {
        Ok(store.load().await?.layout.states.down().next().is_none().then_some(()))
    })
    .await?;
    wait_verified(&control, Duration::from_secs(60)).await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(r, epoch, Duration::from_secs(10)).await?;
    assert_eq!(answers("after the return").await?, before);
    Ok(())
}

#[tokio::test]
async fn neither_query_nor_embedding_is_a_filtered_listing_newest_first() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    for (n, (id, content)) in NOTES.iter().enumerate() {
        let scope = if n % 2 == 0 { "shared" } else { "agent:a" };
        let body = json!({"id": id, "scope": scope, "content": content, "metadata": {"n": n}});
        assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 201);
        // Distinct updated_at milliseconds, so the order is by time, not by the id tie-break.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = search(&c, "acme", json!({"scopes": ["shared", "agent:a"], "k": 10})).await?;
    assert_eq!(ids(&all), ["meeting", "pet", "repo", "diet", "flight"], "{all}");
    assert!(all["results"].as_array().is_some_and(|r| r.iter().all(|h| h["score"].is_null())));
    // An update moves a memory to the front; filters and paging apply.
    let body = json!({"id": "diet", "scope": "agent:a", "content": "Ana eats fish now.", "metadata": {"n": 1}});
    assert_eq!(c.post("/v1/tenants/acme/memories", &body).await?.0, 200);
    let page =
        search(&c, "acme", json!({"scopes": ["shared", "agent:a"], "k": 2, "offset": 1})).await?;
    assert_eq!(ids(&page), ["meeting", "pet"]);
    let filtered = json!({"scopes": ["shared", "agent:a"], "filter": {"metadata": {"n": 2}}});
    assert_eq!(ids(&search(&c, "acme", filtered).await?), ["repo"]);
    // One scope answers the same shape.
    let one = search(&c, "acme", json!({"scopes": ["shared"]})).await?;
    assert_eq!(ids(&one), ["meeting", "repo", "flight"]);
    Ok(())
}

/// `"embed": false` stores a memory without a vector on a router with an embedder (single and
/// batch writes); keyword search and listings find it, a content patch leaves it without one,
/// and it fixes no model for its scope (a text write there later is embedded as usual).
#[tokio::test]
async fn embed_false_stores_text_without_a_vector() -> anyhow::Result<()> {
    let c = Cluster::start_with_router(2, &["--embedder", "builtin"]).await?;
    let base = "/v1/tenants/acme/memories";
    let plain = json!({"id": "state", "scope": "shared", "content": "checkpoint blob zq81 of thread t1", "embed": false});
    let (status, answer) = c.post(base, &plain).await?;
    assert_eq!(status, 201, "{answer}");
    assert!(answer.get("embedded_by").is_none(), "{answer}");
    let (_, got) = c.get(&format!("{base}/state?scope=shared")).await?;
    assert_eq!(got["embedding"], Value::Null, "{got}");
    let batch = json!({"items": [
        {"id": "b1", "scope": "shared", "content": "second blob zq82", "embed": false},
        {"id": "b2", "scope": "shared", "content": "a plain sentence about tea"}]});
    let (status, answer) = c.post(&format!("{base}:batch"), &batch).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["results"][0].get("embedded_by").is_none(), "{answer}");
    assert_eq!(answer["results"][1]["embedded_by"], MODEL, "{answer}");
    let (_, got) = c.get(&format!("{base}/b1?scope=shared")).await?;
    assert_eq!(got["embedding"], Value::Null, "{got}");
    // Found by its words; not by meaning (it has no vector).
    let found =
        search(&c, "acme", json!({"scopes": ["shared"], "query": "zq81", "mode": "keyword"}))
            .await?;
    assert_eq!(found["results"][0]["id"], "state", "{found}");
    let found = search(
        &c,
        "acme",
        json!({"scopes": ["shared"], "query": "blob of a thread", "mode": "vector", "k": 10}),
    )
    .await?;
    let ids: Vec<&str> = found["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|h| h["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["b2"], "{found}");
    // A patch of its content keeps it without a vector.
    let resp = client()
        .patch(format!("{}{base}/state?scope=shared", c.url()))
        .json(&json!({"content": "checkpoint blob zq99"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let patched: Value = resp.json().await?;
    assert_eq!((patched["embedding"].clone(), patched["version"].clone()), (Value::Null, json!(2)));
    // "embed": false with a vector says two things at once: 400.
    let both = json!({"id": "x", "scope": "shared", "content": "x", "embedding": [0.1, 0.2], "embed": false});
    let (status, answer) = c.post(base, &both).await?;
    assert_eq!(assert_client_error(status, &answer), "invalid_request");
    Ok(())
}
