//! The public API v1 (API.md): parse, validate, route, forward, merge.
//!
//! Validation happens here, before anything is forwarded, with the shared checks of
//! `memring_common::api`, so a bad request never reaches a shard node and every client mistake is
//! a 4xx that says how to fix it. Each handler maps the request to partitions with the ring and
//! forwards through [`Forwarder`]; a search over several scopes fans out in parallel and merges by
//! score.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    BatchItemResult, READ_TOKEN_HEADER, REQUEST_ID_HEADER, ReadToken, SearchHit, SearchMode,
    SearchRequest, TenantDeleted,
};
use memring_common::auth::{KeyCache, Principal};
use memring_common::http::{
    Body, BoxFuture, Reply, Service, error_response, json, json_bytes, parse_json, percent_decode,
    percent_encode, query_pairs, read_body,
};
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey, Scope, TenantId};
use serde_json::Value;

use crate::config::RouterConfig;
use crate::embed::Embedder;
use crate::forward::Forwarder;
use crate::limits::Limiter;

type Response = http::Response<Body>;

/// The router's request handling.
pub struct RouterService {
    forward: Forwarder,
    config: RouterConfig,
    /// API keys; `None` when auth is off (every request acts as an admin).
    keys: Option<Arc<KeyCache>>,
    /// Tenant rate limits and quotas.
    limits: Arc<Limiter>,
    /// What turns text into vectors (`None`: embedder kind `none`).
    embedder: Option<Arc<Embedder>>,
}

/// The parsed route of a public request.
enum Route {
    Write(TenantId),
    Batch(TenantId),
    Search(TenantId),
    List(TenantId),
    Get(TenantId, String),
    Patch(TenantId, String),
    Delete(TenantId, String),
    DeleteTenant(TenantId),
    Embeddings,
    Ring,
    OpenApi,
    #[cfg(feature = "testing")]
    DebugPauseWatch(bool),
}

impl Route {
    /// The tenant a route acts on (`None` for cluster routes).
    fn tenant(&self) -> Option<&TenantId> {
        match self {
            Route::Write(t)
            | Route::Batch(t)
            | Route::Search(t)
            | Route::List(t)
            | Route::Get(t, _)
            | Route::Patch(t, _)
            | Route::Delete(t, _)
            | Route::DeleteTenant(t) => Some(t),
            Route::Ring | Route::OpenApi | Route::Embeddings => None,
            #[cfg(feature = "testing")]
            Route::DebugPauseWatch(_) => None,
        }
    }
}

impl RouterService {
    /// Builds the service.
    pub fn new(
        forward: Forwarder,
        config: RouterConfig,
        keys: Option<Arc<KeyCache>>,
        limits: Arc<Limiter>,
        embedder: Option<Arc<Embedder>>,
    ) -> Self {
        Self { forward, config, keys, limits, embedder }
    }

    /// Who the request acts as, and whether that may reach `tenant` (every tenant route) or the
    /// cluster's ring (admin only): 401 without a valid key, 403 outside its tenant.
    fn authorize(&self, req: &Request<Incoming>, route: &Route) -> Result<Principal, ApiError> {
        let Some(keys) = &self.keys else { return Ok(Principal::Admin) };
        let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = keys.authenticate(header)?;
        match route.tenant() {
            Some(tenant) => principal.allow_tenant(tenant)?,
            // Any valid key may embed text (it counts against its tenant's rate limit).
            None if matches!(route, Route::Embeddings) => {}
            None => principal.allow_operator("read the cluster's ring")?,
        }
        Ok(principal)
    }

    fn parse_route(method: &Method, path: &str) -> Result<(&'static str, Route), ApiError> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let tenant = |raw: &str| TenantId::parse(&percent_decode(raw)?);
        let wrong_method = |allowed: &str| {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not allowed on {path}; use {allowed}"),
            )
        };
        match segments.as_slice() {
            ["v1", "tenants", t, "memories"] => match *method {
                Method::POST => Ok(("memories.write", Route::Write(tenant(t)?))),
                Method::GET => Ok(("memories.list", Route::List(tenant(t)?))),
                _ => Err(wrong_method("POST or GET")),
            },
            ["v1", "tenants", t, "memories:batch"] => match *method {
                Method::POST => Ok(("memories.batch", Route::Batch(tenant(t)?))),
                _ => Err(wrong_method("POST")),
            },
            ["v1", "tenants", t, "memories", "search"] if *method == Method::POST => {
                Ok(("memories.search", Route::Search(tenant(t)?)))
            }
            ["v1", "tenants", t, "memories", id] => match *method {
                Method::GET => Ok(("memories.get", Route::Get(tenant(t)?, percent_decode(id)?))),
                Method::PATCH => {
                    Ok(("memories.patch", Route::Patch(tenant(t)?, percent_decode(id)?)))
                }
                Method::DELETE => {
                    Ok(("memories.delete", Route::Delete(tenant(t)?, percent_decode(id)?)))
                }
                _ => Err(wrong_method("GET, PATCH or DELETE (or POST on …/memories/search)")),
            },
            ["v1", "tenants", t] => match *method {
                Method::DELETE => Ok(("tenant.delete", Route::DeleteTenant(tenant(t)?))),
                _ => Err(wrong_method("DELETE")),
            },
            ["v1", "ring"] if *method == Method::GET => Ok(("ring", Route::Ring)),
            ["v1", "embeddings"] => match *method {
                Method::POST => Ok(("embeddings", Route::Embeddings)),
                _ => Err(wrong_method("POST")),
            },
            ["openapi.json"] if *method == Method::GET => Ok(("openapi", Route::OpenApi)),
            #[cfg(feature = "testing")]
            ["debug", "v1", "ring", "watch", action] if *method == Method::POST => {
                Ok(("debug", Route::DebugPauseWatch(*action == "pause")))
            }
            _ => Err(ApiError::new(
                ErrorCode::RouteNotFound,
                format!(
                    "no endpoint {method} {path}; see API.md for the routes under /v1/tenants/{{tenant}}/"
                ),
            )),
        }
    }

    async fn dispatch(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> (&'static str, Result<Response, ApiError>) {
        let (route_name, route) = match Self::parse_route(req.method(), req.uri().path()) {
            Ok(r) => r,
            Err(e) => {
                // Without a valid key, a wrong path says no more than a right one: 401.
                if let Some(keys) = &self.keys {
                    let header = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if let Err(unauthorized) = keys.authenticate(header) {
                        return ("unknown", Err(unauthorized));
                    }
                }
                return ("unknown", Err(e));
            }
        };
        let request_id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        if let Route::OpenApi = route {
            // The API's description, for any valid key (with auth on, nothing but health,
            // readiness and metrics answers without one).
            if let Some(keys) = &self.keys {
                let header =
                    req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                if let Err(e) = keys.authenticate(header) {
                    return (route_name, Err(e));
                }
            }
            return (route_name, Ok(json_bytes(200, Bytes::from(crate::openapi::document()))));
        }
        let principal = match self.authorize(&req, &route) {
            Ok(p) => p,
            Err(e) => return (route_name, Err(e)),
        };
        let limited = match (&route, &principal) {
            (Route::Embeddings, Principal::Tenant(t)) => Some(t),
            _ => route.tenant(),
        };
        if let Some(Err(e)) = limited.map(|t| self.limits.check_request(t)) {
            return (route_name, Err(e));
        }
        let query = req.uri().query().map(str::to_owned);
        let token = match req.headers().get(READ_TOKEN_HEADER) {
            None => ReadToken::default(),
            Some(v) => {
                match v.to_str().map_err(|_| ()).and_then(|v| ReadToken::parse(v).map_err(|_| ())) {
                    Ok(t) => t,
                    Err(()) => {
                        return (
                            route_name,
                            Err(ApiError::invalid(format!(
                                "header {READ_TOKEN_HEADER} must be the value a write returned"
                            ))),
                        );
                    }
                }
            }
        };
        let result = match route {
            Route::Write(t) => self.write(t, req, &request_id, &principal).await,
            Route::Batch(t) => self.batch(t, req, &request_id, &principal).await,
            Route::Search(t) => self.search(t, req, &request_id, &token).await,
            Route::List(t) => self.list(t, query.as_deref(), &request_id, &token).await,
            Route::Get(t, id) => self.get(t, id, query.as_deref(), &request_id, &token).await,
            Route::Patch(t, id) => match global_write_allowed(&principal, query.as_deref()) {
                Ok(()) => self.patch(t, id, req, query.as_deref(), &request_id).await,
                Err(e) => Err(e),
            },
            Route::Delete(t, id) => {
                match (
                    global_write_allowed(&principal, query.as_deref()),
                    update::delete_condition(req.headers()),
                ) {
                    (Ok(()), Ok(if_match)) => {
                        self.delete(t, id, if_match, query.as_deref(), &request_id).await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            Route::DeleteTenant(t) => self.delete_tenant(t, &request_id, &principal).await,
            Route::Embeddings => self.embeddings(req).await,
            Route::Ring => Ok(self.ring_view()),
            Route::OpenApi => Ok(json_bytes(200, Bytes::from(crate::openapi::document()))),
            #[cfg(feature = "testing")]
            Route::DebugPauseWatch(paused) => {
                self.forward.ring().set_watch_paused(paused);
                Ok(json(200, &serde_json::json!({ "watch_paused": paused })))
            }
        };
        (route_name, result)
    }

    fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.config.forward_timeout_ms)
    }

    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        if let Some(ct) = req.headers().get(http::header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            if !ct.is_empty() && !ct.starts_with("application/json") && !ct.contains("+json") {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("Content-Type {ct:?} is not JSON; send application/json"),
                ));
            }
        }
        read_body(req, self.config.body_limit_bytes).await
    }

    async fn delete_tenant(
        &self,
        tenant: TenantId,
        request_id: &str,
        principal: &Principal,
    ) -> Result<Response, ApiError> {
        let ring = self.forward.ring().ring();
        let nodes = ring.layout().nodes.clone();
        if nodes.is_empty() {
            return Err(ApiError::unavailable("no shard nodes are in the ring yet", 1));
        }
        let path = format!("/internal/v1/tenants/{}", percent_encode(tenant.as_str()));
        let epoch = ring.epoch();
        let calls = nodes.iter().map(|node| {
            let path = path.clone();
            async move {
                let reply = self
                    .forward
                    .send(
                        node,
                        Method::DELETE,
                        &path,
                        None,
                        request_id,
                        Some(epoch),
                        self.forward_timeout(),
                        None,
                    )
                    .await?
                    .into_result()?;
                serde_json::from_slice::<TenantDeleted>(&reply).map_err(|e| {
                    ApiError::internal(format!("tenant deletion answer does not parse: {e}"))
                })
            }
        });
        let mut removed = 0;
        for (node, outcome) in nodes.iter().zip(join_all(calls).await) {
            match outcome {
                Ok(done) => removed += done.partitions_removed,
                Err(e) => {
                    tracing::warn!(node = %node.id, error = %e, tenant = %tenant, "tenant deletion incomplete");
                    return Err(ApiError::unavailable(
                        format!(
                            "node {} could not delete the tenant's data; retry the DELETE (it is idempotent)",
                            node.id
                        ),
                        1,
                    ));
                }
            }
        }
        tracing::info!(target: "audit", action = "tenant.delete", tenant = %tenant, by = ?principal, partitions = removed, request_id, "tenant deleted");
        Ok(json(202, &serde_json::json!({ "tenant": tenant, "partitions_removed": removed })))
    }

    fn ring_view(&self) -> Response {
        let ring = self.forward.ring().ring();
        let shares: Vec<serde_json::Value> = ring
            .shares()
            .into_iter()
            .zip(&ring.layout().nodes)
            .map(|((id, share), node)| serde_json::json!({ "id": id, "addr": node.addr, "share": share }))
            .collect();
        json(
            200,
            &serde_json::json!({ "epoch": ring.epoch(), "nodes": shares, "stale": self.forward.ring().is_stale() }),
        )
    }
}

/// The partitions a search of `scopes` reads, each with its scope (`global` is spread over
/// several partitions: every one is searched).
mod read;
mod update;
mod write;

fn partitions_of<'a>(
    tenant: &TenantId,
    scopes: &'a [Scope],
) -> (Vec<PartitionKey>, Vec<&'a Scope>) {
    scopes
        .iter()
        .flat_map(|s| PartitionKey::all(tenant, s).into_iter().map(move |p| (p, s)))
        .unzip()
}

/// The body a shard node's search takes for one `mode` (vector or keyword; `None`: a
/// listing): the client's filter, the vector the router resolved (and the model it was embedded
/// with) or the words, and `offset + k` results.
fn shard_search_body(
    body: &[u8],
    search: &SearchRequest,
    mode: Option<SearchMode>,
    embedded_by: Option<&str>,
) -> Result<Bytes, ApiError> {
    let mut fields: serde_json::Map<String, Value> = parse_json(body)?;
    for router_only in ["query", "mode", "fusion", "offset", "scopes", "embedding"] {
        fields.remove(router_only);
    }
    match mode {
        None => {}
        Some(SearchMode::Keyword) => {
            fields.insert("mode".into(), "keyword".into());
            fields.insert("query".into(), search.text.clone().unwrap_or_default().into());
        }
        Some(SearchMode::Vector | SearchMode::Hybrid) => {
            fields.insert("embedding".into(), serde_json::json!(search.embedding));
            if let Some(model) = embedded_by {
                fields.insert("embedded_by".into(), model.into());
            }
        }
    }
    fields.insert("k".into(), (search.offset + search.k).into());
    serde_json::to_vec(&fields)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("search does not serialize: {e}")))
}

/// Orders hits best first, ties broken by scope and id so the order is stable.
pub fn sort_hits(hits: &mut [SearchHit]) {
    hits.sort_by(|a, b| {
        let score = |h: &SearchHit| h.score.unwrap_or(f32::NEG_INFINITY);
        score(b)
            .total_cmp(&score(a))
            .then_with(|| a.scope.cmp(&b.scope))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// 403 when a delete's `?scope=` is `global` and `principal` is not an admin.
/// A shard's list page, items kept as they came.
#[derive(serde::Deserialize)]
struct ListPage {
    items: Vec<Value>,
    next_cursor: Option<String>,
}

fn global_write_allowed(principal: &Principal, query: Option<&str>) -> Result<(), ApiError> {
    let global = query_pairs(query)?.iter().any(|(k, v)| k == "scope" && v == "global");
    if global { principal.allow_global_write() } else { Ok(()) }
}

/// Adds the read-your-writes token header to a write's answer (none if nothing was written).
fn with_token(mut response: Response, token: &ReadToken) -> Response {
    if !token.0.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&token.to_string())
    {
        response.headers_mut().insert(READ_TOKEN_HEADER, v);
    }
    response
}

fn item_error(id: Option<String>, e: &ApiError) -> BatchItemResult {
    BatchItemResult::Err { id, error: e.to_body().error }
}

/// The `id` a malformed batch item names, if it names a usable one, to help the client match errors.
fn raw_id(raw: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let id = v.get("id")?.as_str()?;
    MemoryId::parse(id).ok().map(|m| m.to_string())
}

impl Service for RouterService {
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<Reply> {
        Box::pin(async move {
            let (route, result) = self.dispatch(req).await;
            Reply { route, response: result.unwrap_or_else(|e| error_response(&e)) }
        })
    }

    fn ready(&self) -> Result<(), String> {
        let ring = self.forward.ring();
        if !ring.is_loaded() {
            return Err("ring not loaded yet".into());
        }
        if ring.ring().layout().nodes.is_empty() {
            return Err("the ring has no shard nodes yet".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let ok = [
            (Method::POST, "/v1/tenants/t/memories", "memories.write"),
            (Method::GET, "/v1/tenants/t/memories", "memories.list"),
            (Method::POST, "/v1/tenants/t/memories:batch", "memories.batch"),
            (Method::POST, "/v1/tenants/t/memories/search", "memories.search"),
            (Method::GET, "/v1/tenants/t/memories/search", "memories.get"),
            (Method::GET, "/v1/tenants/t/memories/abc", "memories.get"),
            (Method::DELETE, "/v1/tenants/t/memories/abc", "memories.delete"),
            (Method::PATCH, "/v1/tenants/t/memories/abc", "memories.patch"),
            (Method::DELETE, "/v1/tenants/t", "tenant.delete"),
        ];
        for (m, p, name) in ok {
            assert_eq!(RouterService::parse_route(&m, p).map(|r| r.0).ok(), Some(name), "{m} {p}");
        }
        let bad = [
            (Method::GET, "/v1/tenants/bad%20id/memories", 400),
            (Method::PUT, "/v1/tenants/t/memories", 405),
            (Method::PUT, "/v1/tenants/t/memories/abc", 405),
            (Method::GET, "/v2/whatever", 404),
            (Method::GET, "/v1/tenants/t", 405),
        ];
        for (m, p, status) in bad {
            assert_eq!(
                RouterService::parse_route(&m, p).err().map(|e| e.status()),
                Some(status),
                "{m} {p}"
            );
        }
    }

    #[test]
    fn merge_order_is_best_first_and_stable() {
        let hit = |id: &str, scope: &str, score: f32| SearchHit {
            id: MemoryId::parse(id).expect("id"),
            scope: Scope::parse(scope).expect("scope"),
            score: Some(score),
            scores: None,
            content: String::new(),
            metadata: Default::default(),
            created_at: String::new(),
            updated_at: String::new(),
        };
        let mut hits =
            vec![hit("a", "shared", 0.5), hit("b", "agent:x", 0.9), hit("c", "shared", 0.9)];
        sort_hits(&mut hits);
        let order: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(order, ["b", "c", "a"]);
    }
}
