//! `GET /openapi.json` on a running router covers every public route of the contract: each
//! `METHOD /v1/...` row of ../shared/API.md must be an operation of the document, with the
//! schemas it references defined. The test fails when a route is missing.

use memring_tests::Cluster;
use serde_json::Value;

/// `(method, path)` of every route row in API.md, e.g. `("post", "/v1/tenants/{tenant}/memories")`:
/// read from ../shared/API.md when it is beside the checkout (and then it must equal the copy in
/// tests/api-routes.txt), else from that copy.
fn contract_routes() -> anyhow::Result<Vec<(String, String)>> {
    let copy: Vec<(String, String)> =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api-routes.txt"))?
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' ').map(|(m, p)| (m.to_lowercase(), p.to_owned())))
            .collect();
    let Ok(api) =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/API.md"))
    else {
        return Ok(copy);
    };
    let from_contract: Vec<(String, String)> = api
        .lines()
        .filter_map(|l| {
            let cell = l.strip_prefix("| `")?.split('`').next()?;
            let (method, path) = cell.split_once(' ')?;
            let path = path.split('?').next()?.to_owned();
            path.starts_with("/v1/").then(|| (method.to_lowercase(), path))
        })
        .collect();
    assert_eq!(
        from_contract, copy,
        "tests/api-routes.txt differs from ../shared/API.md: update the copy"
    );
    Ok(from_contract)
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_of_the_contract() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let (status, doc) = c.get("/openapi.json").await?;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let routes = contract_routes()?;
    assert!(routes.len() >= 7, "API.md routes not found: {routes:?}");
    let mut missing = Vec::new();
    for (method, path) in &routes {
        if doc["paths"][path][method].is_null() {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(missing.is_empty(), "routes of API.md missing from /openapi.json: {missing:?}");
    // Every schema an operation references is defined.
    let text = doc.to_string();
    let schemas = &doc["components"]["schemas"];
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or("");
        assert!(!schemas[name].is_null(), "schema {name} referenced but not defined");
    }
    // The write body is the handlers' own type: its fields are there.
    let write: &Value = &schemas["RawWrite"]["properties"];
    for field in ["scope", "content", "embedding", "metadata", "id", "ttl_seconds"] {
        assert!(!write[field].is_null(), "RawWrite has no {field}: {write}");
    }
    Ok(())
}
