//! The public API v1 (API.md): parse, validate, route, forward, merge.
//!
//! Validation happens here, before anything is forwarded, with the shared checks of
//! `memring_common::api`, so a bad request never reaches a shard node and every client mistake is
//! a 4xx that says how to fix it. Each handler maps the request to partitions with the ring and
//! forwards through [`Forwarder`]; a search over several scopes fans out in parallel and merges by
//! score.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    self, BatchItemResult, BatchResponse, EmbeddingDatum, EmbeddingsResponse, EmbeddingsUsage,
    READ_TOKEN_HEADER, REQUEST_ID_HEADER, RawBatch, RawEmbeddingsRequest, RawSearch, RawWrite,
    ReadToken, SearchHit, SearchMode, SearchRequest, SearchResponse, ShardItemResult, ShardWrite,
    ShardWriteResponse, TenantDeleted, WriteItem,
};
use memring_common::auth::{KeyCache, Principal};
use memring_common::http::{
    Body, BoxFuture, Reply, Service, empty, error_response, json, json_bytes, parse_json,
    percent_decode, percent_encode, query_pairs, read_body,
};
use memring_common::scope::{GLOBAL_BUCKETS, global_bucket_of};
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey, Scope, TenantId};
use serde_json::Value;

use crate::config::RouterConfig;
use crate::embed::{Embedder, no_embedder};
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

    /// Sends validated items of one partition to its owner; returns their results and the
    /// partition's log position after them (for the read token).
    async fn write_partition(
        &self,
        partition: &PartitionKey,
        items: Vec<WriteItem>,
        request_id: &str,
    ) -> Result<(Vec<ShardItemResult>, u64), ApiError> {
        let n = items.len();
        let body = serde_json::to_vec(&ShardWrite { items })
            .map_err(|e| ApiError::internal(format!("write does not serialize: {e}")))?;
        let reply = self
            .forward
            .to_partition(
                partition,
                Method::POST,
                "memories",
                Some(body.into()),
                request_id,
                self.forward_timeout(),
            )
            .await?
            .into_result()?;
        let parsed: ShardWriteResponse = serde_json::from_slice(&reply)
            .map_err(|e| ApiError::internal(format!("shard write answer does not parse: {e}")))?;
        if parsed.results.len() != n {
            return Err(ApiError::internal(format!(
                "shard answered {} results for {n} items",
                parsed.results.len()
            )));
        }
        Ok((parsed.results, parsed.seq))
    }

    async fn write(
        &self,
        tenant: TenantId,
        req: Request<Incoming>,
        request_id: &str,
        principal: &Principal,
    ) -> Result<Response, ApiError> {
        let headers = req.headers().clone();
        let body = self.body(req).await?;
        self.limits.check_write(&tenant, body.len())?;
        let raw = parse_json::<RawWrite>(&body)?;
        let conditions = update::write_conditions(&headers, raw.id.is_some())?;
        let mut item = raw.validate()?;
        item.conditions = conditions;
        if item.scope == Scope::Global {
            principal.allow_global_write()?;
        }
        let embedded = self.embed_missing(&mut [&mut item]).await?.pop().flatten();
        let partition = PartitionKey::of(&tenant, &item.scope, item.id.as_str());
        let scope = item.scope.clone();
        let (mut results, seq) = self.write_partition(&partition, vec![item], request_id).await?;
        match results.pop() {
            Some(ShardItemResult::Ok { outcome, mut result }) => {
                let mut token = ReadToken::default();
                token.note(scope, seq);
                self.note_embedded(
                    &mut result.embedded_by,
                    &mut result.embedded_truncated,
                    embedded,
                );
                let version = result.version;
                Ok(update::with_etag(with_token(json(outcome.status(), &result), &token), version))
            }
            Some(ShardItemResult::Err { error }) => {
                Err(ApiError::from_body(memring_common::error::ErrorBody { error }))
            }
            None => Err(ApiError::internal("shard answered no result")),
        }
    }

    async fn batch(
        &self,
        tenant: TenantId,
        req: Request<Incoming>,
        request_id: &str,
        principal: &Principal,
    ) -> Result<Response, ApiError> {
        update::refuse_batch_conditions(req.headers())?;
        let body = self.body(req).await?;
        self.limits.check_write(&tenant, body.len())?;
        let batch: RawBatch = parse_json(&body)?;
        if batch.items.len() > api::MAX_BATCH_ITEMS {
            return Err(ApiError::invalid(format!(
                "a batch holds at most {} items, this one has {}; split it",
                api::MAX_BATCH_ITEMS,
                batch.items.len()
            )));
        }
        let mut results: Vec<Option<BatchItemResult>> = vec![None; batch.items.len()];
        let mut valid: Vec<(usize, WriteItem)> = Vec::with_capacity(batch.items.len());
        for (i, raw) in batch.items.iter().enumerate() {
            let parsed = serde_json::from_str::<RawWrite>(raw.get())
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::InvalidJson,
                        format!("item {i} is not a valid memory: {e}"),
                    )
                })
                .and_then(RawWrite::validate)
                .and_then(|item| {
                    if item.scope == Scope::Global {
                        principal.allow_global_write()?;
                    }
                    Ok(item)
                });
            match parsed {
                Ok(item) => valid.push((i, item)),
                Err(e) => results[i] = Some(item_error(raw_id(raw.get()), &e)),
            }
        }
        // Text-only items are embedded together, in one request to the embedder. If it cannot
        // (busy, down), they fail alone and the items that brought their vectors are still stored.
        let mut embedded: Vec<Option<bool>> = vec![None; batch.items.len()];
        if self.embedder.is_some() {
            let (indexes, mut missing): (Vec<usize>, Vec<&mut WriteItem>) = valid
                .iter_mut()
                .filter(|(_, item)| item.embedding.is_none() && !item.no_embedding)
                .map(|(i, item)| (*i, item))
                .unzip();
            if !missing.is_empty() {
                match self.embed_missing(&mut missing).await {
                    Ok(flags) => {
                        for (i, flag) in indexes.iter().zip(flags) {
                            embedded[*i] = flag;
                        }
                    }
                    Err(e) => {
                        for (i, item) in indexes.iter().zip(missing) {
                            results[*i] = Some(item_error(Some(item.id.to_string()), &e));
                        }
                    }
                }
            }
            valid.retain(|(i, _)| results[*i].is_none());
        }
        let mut groups: BTreeMap<PartitionKey, Vec<(usize, WriteItem)>> = BTreeMap::new();
        for (i, item) in valid {
            groups
                .entry(PartitionKey::of(&tenant, &item.scope, item.id.as_str()))
                .or_default()
                .push((i, item));
        }
        let mut token = ReadToken::default();
        let sends = groups.into_iter().map(|(partition, items)| async move {
            let (indexes, items): (Vec<usize>, Vec<WriteItem>) = items.into_iter().unzip();
            let ids: Vec<String> = items.iter().map(|i| i.id.to_string()).collect();
            let outcome = self.write_partition(&partition, items, request_id).await;
            (indexes, ids, outcome)
        });
        for (indexes, ids, outcome) in join_all(sends).await {
            match outcome {
                Ok((shard_results, seq)) => {
                    if let Some(scope) = shard_results.iter().find_map(|r| match r {
                        ShardItemResult::Ok { result, .. } => Some(result.scope.clone()),
                        ShardItemResult::Err { .. } => None,
                    }) {
                        token.note(scope, seq);
                    }
                    for ((i, id), r) in indexes.into_iter().zip(ids).zip(shard_results) {
                        results[i] = Some(match r {
                            ShardItemResult::Ok { outcome, mut result } => {
                                self.note_embedded(
                                    &mut result.embedded_by,
                                    &mut result.embedded_truncated,
                                    embedded[i],
                                );
                                BatchItemResult::Ok {
                                    id: result.id,
                                    status: outcome.status(),
                                    outcome,
                                    scope: result.scope,
                                    created_at: result.created_at,
                                    version: result.version,
                                    embedded_by: result.embedded_by,
                                    embedded_truncated: result.embedded_truncated,
                                }
                            }
                            ShardItemResult::Err { error } => {
                                BatchItemResult::Err { id: Some(id), error }
                            }
                        });
                    }
                }
                Err(e) => {
                    for (i, id) in indexes.into_iter().zip(ids) {
                        results[i] = Some(item_error(Some(id), &e));
                    }
                }
            }
        }
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| item_error(None, &ApiError::internal("item was not processed")))
            })
            .collect();
        Ok(with_token(json(200, &BatchResponse { results }), &token))
    }

    /// The time an embedding may take: the request's forward timeout.
    fn embed_deadline(&self) -> Instant {
        Instant::now() + self.forward_timeout()
    }

    /// Embeds the `content` of every item that came without a vector, in one request to the
    /// embedder. Per item: `Some(truncated)` when the router embedded it, `None` otherwise (it
    /// brought its own vector, or there is no embedder: it is stored without one).
    async fn embed_missing(
        &self,
        items: &mut [&mut WriteItem],
    ) -> Result<Vec<Option<bool>>, ApiError> {
        let mut flags = vec![None; items.len()];
        let Some(embedder) = &self.embedder else { return Ok(flags) };
        let wants = |i: &WriteItem| i.embedding.is_none() && !i.no_embedding;
        let texts: Vec<String> =
            items.iter().filter(|i| wants(i)).map(|i| i.content.clone()).collect();
        if texts.is_empty() {
            return Ok(flags);
        }
        let mut vectors = embedder.embed(texts, self.embed_deadline()).await?.into_iter();
        for (item, flag) in items.iter_mut().zip(&mut flags) {
            if !wants(item) {
                continue;
            }
            let made = vectors
                .next()
                .ok_or_else(|| ApiError::internal("the embedder answered too few vectors"))?;
            item.embedding = Some(made.vector);
            item.embedding_model = Some(embedder.model().to_owned());
            item.embedded_by_router = true;
            *flag = Some(made.truncated);
        }
        Ok(flags)
    }

    /// Puts what the router's embedding did into a write's answer.
    fn note_embedded(
        &self,
        embedded_by: &mut Option<String>,
        embedded_truncated: &mut Option<bool>,
        truncated: Option<bool>,
    ) {
        if let (Some(truncated), Some(embedder)) = (truncated, &self.embedder) {
            *embedded_by = Some(embedder.model().to_owned());
            *embedded_truncated = truncated.then_some(true);
        }
    }

    /// `POST /v1/embeddings`: the router's embedder as a service, in OpenAI's shape.
    async fn embeddings(&self, req: Request<Incoming>) -> Result<Response, ApiError> {
        let body = self.body(req).await?;
        let request = parse_json::<RawEmbeddingsRequest>(&body)?.validate()?;
        let Some(embedder) = &self.embedder else { return Err(no_embedder("POST /v1/embeddings")) };
        if let Some(model) = &request.model
            && model != embedder.model()
        {
            return Err(ApiError::new(
                ErrorCode::UnknownModel,
                format!(
                    "model {model:?} is not served here; this router embeds with {:?}",
                    embedder.model()
                ),
            ));
        }
        if let Some(d) = request.dimensions
            && d != embedder.dimensions()
        {
            return Err(ApiError::invalid(format!(
                "\"dimensions\" {d} is not served; {} makes {}-dimensional vectors",
                embedder.model(),
                embedder.dimensions()
            )));
        }
        let vectors = embedder.embed(request.input, self.embed_deadline()).await?;
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, e)| EmbeddingDatum {
                object: "embedding".into(),
                index,
                embedding: e.vector,
                truncated: e.truncated,
            })
            .collect();
        Ok(json(
            200,
            &EmbeddingsResponse {
                object: "list".into(),
                model: embedder.model().to_owned(),
                dimensions: embedder.dimensions(),
                data,
                usage: EmbeddingsUsage::default(),
            },
        ))
    }

    /// The mode a search runs in: the one asked for, else from what was sent (API.md).
    fn search_mode(&self, search: &SearchRequest) -> Option<SearchMode> {
        if let Some(mode) = search.mode {
            return Some(mode);
        }
        match (&search.text, &search.embedding) {
            (Some(_), Some(_)) => Some(SearchMode::Hybrid),
            (Some(_), None) if self.embedder.is_some() => Some(SearchMode::Hybrid),
            (Some(_), None) => Some(SearchMode::Keyword),
            (None, Some(_)) => Some(SearchMode::Vector),
            (None, None) => None,
        }
    }

    async fn search(
        &self,
        tenant: TenantId,
        req: Request<Incoming>,
        request_id: &str,
        token: &ReadToken,
    ) -> Result<Response, ApiError> {
        let body = self.body(req).await?;
        let mut search = parse_json::<RawSearch>(&body)?.validate()?;
        let Some(mode) = self.search_mode(&search) else {
            return self.listing(&tenant, &body, &search, request_id, token).await;
        };
        let mut embedded_by = None;
        if mode != SearchMode::Keyword && search.embedding.is_none() {
            let what = if mode == SearchMode::Hybrid { "hybrid mode" } else { "vector mode" };
            let embedder = self
                .embedder
                .as_ref()
                .ok_or_else(|| no_embedder(&format!("a \"query\" in {what}")))?;
            let text = search.text.clone().unwrap_or_default();
            let made = embedder.embed(vec![text], self.embed_deadline()).await?;
            search.embedding = made.into_iter().next().map(|e| e.vector);
            embedded_by = Some(embedder.model().to_owned());
        }
        // Each shard node runs one mode over one partition; the router merges across scopes
        // and, in hybrid mode, fuses the two merged lists (fusion.rs).
        let by = |m: SearchMode| shard_search_body(&body, &search, Some(m), embedded_by.as_deref());
        let timeout = Duration::from_millis(self.config.search_timeout_ms);
        let (partitions, scopes) = partitions_of(&tenant, &search.scopes);
        if partitions.len() == 1 && search.offset == 0 && mode != SearchMode::Hybrid {
            // One scope, first page, one list: the shard's answer is already the final shape.
            let reply = self
                .forward
                .read_partition(
                    &partitions[0],
                    "search",
                    Some(by(mode)?),
                    request_id,
                    timeout,
                    token.min_seq(&search.scopes[0]),
                )
                .await?
                .into_result()?;
            return Ok(json_bytes(200, reply));
        }
        let depth = search.offset + search.k;
        let fan =
            |body: Bytes| self.search_partitions(&partitions, &scopes, body, request_id, token);
        let (mut hits, failed) = match mode {
            SearchMode::Hybrid => {
                let (vector, keyword) =
                    tokio::join!(fan(by(SearchMode::Vector)?), fan(by(SearchMode::Keyword)?));
                let ((vector, v_failed), (keyword, k_failed)) = (vector?, keyword?);
                (crate::fusion::fuse(vector, keyword, search.fusion, depth), v_failed.max(k_failed))
            }
            one => {
                let (mut hits, failed) = fan(by(one)?).await?;
                sort_hits(&mut hits);
                (hits, failed)
            }
        };
        hits.drain(..search.offset.min(hits.len()));
        hits.truncate(search.k);
        Ok(json(200, &SearchResponse { results: hits, partial: failed > 0 }))
    }

    /// A search with neither `query` nor `embedding`: the filtered memories of the scopes,
    /// newest `updated_at` first, ties by id (then scope), each with `"score": null`.
    async fn listing(
        &self,
        tenant: &TenantId,
        body: &[u8],
        search: &SearchRequest,
        request_id: &str,
        token: &ReadToken,
    ) -> Result<Response, ApiError> {
        let shard_body = shard_search_body(body, search, None, None)?;
        let (partitions, scopes) = partitions_of(tenant, &search.scopes);
        let (mut hits, failed) =
            self.search_partitions(&partitions, &scopes, shard_body, request_id, token).await?;
        hits.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.scope.cmp(&b.scope))
        });
        hits.drain(..search.offset.min(hits.len()));
        hits.truncate(search.k);
        Ok(json(200, &SearchResponse { results: hits, partial: failed > 0 }))
    }

    /// Sends one shard search body to every partition at once; their hits (unordered) and how
    /// many partitions did not answer. A client mistake any partition reports is the answer;
    /// `503` when none answered.
    async fn search_partitions(
        &self,
        partitions: &[PartitionKey],
        scopes: &[&Scope],
        body: Bytes,
        request_id: &str,
        token: &ReadToken,
    ) -> Result<(Vec<SearchHit>, usize), ApiError> {
        let timeout = Duration::from_millis(self.config.search_timeout_ms);
        let calls = partitions.iter().zip(scopes).map(|(p, scope)| {
            let body = body.clone();
            async move {
                let min_seq = token.min_seq(scope);
                let reply = self
                    .forward
                    .read_partition(p, "search", Some(body), request_id, timeout, min_seq)
                    .await?;
                let bytes = reply.into_result()?;
                serde_json::from_slice::<SearchResponse>(&bytes).map_err(|e| {
                    ApiError::internal(format!("shard search answer does not parse: {e}"))
                })
            }
        });
        let mut hits: Vec<SearchHit> = Vec::new();
        let mut failed = 0usize;
        for (partition, outcome) in partitions.iter().zip(join_all(calls).await) {
            match outcome {
                Ok(resp) => hits.extend(resp.results),
                // A client mistake (e.g. a dimension that does not match a scope) is the answer.
                Err(e) if (400..500).contains(&e.status()) && e.code() != ErrorCode::WrongOwner => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(%partition, error = %e, "scope left out of search");
                    failed += 1;
                }
            }
        }
        if failed == partitions.len() {
            return Err(ApiError::unavailable(
                "no scope of the search could be reached; retry shortly",
                1,
            ));
        }
        Ok((hits, failed))
    }

    fn scope_param(query: Option<&str>) -> Result<(Scope, Vec<(String, String)>), ApiError> {
        let pairs = query_pairs(query)?;
        let scope = pairs
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| Scope::parse(v))
            .transpose()?
            .ok_or_else(|| {
                ApiError::invalid("query parameter \"scope\" is required, e.g. ?scope=shared")
            })?;
        Ok((scope, pairs))
    }

    /// `GET …/memories/{id}`: from a copy that reflects the read token, with the memory's `ETag`.
    async fn get(
        &self,
        tenant: TenantId,
        id: String,
        query: Option<&str>,
        request_id: &str,
        token: &ReadToken,
    ) -> Result<Response, ApiError> {
        let id = MemoryId::parse(&id)?;
        let (scope, _) = Self::scope_param(query)?;
        let partition = PartitionKey::of(&tenant, &scope, id.as_str());
        let suffix = format!("memories/{}", percent_encode(id.as_str()));
        let min_seq = token.min_seq(&scope);
        let reply = self
            .forward
            .read_partition(&partition, &suffix, None, request_id, self.forward_timeout(), min_seq)
            .await?
            .into_result()?;
        let version = update::version_of(&reply)?;
        Ok(update::with_etag(json_bytes(200, reply), version))
    }

    /// `DELETE …/memories/{id}`, on the owner; `if_match` is the `If-Match` condition.
    async fn delete(
        &self,
        tenant: TenantId,
        id: String,
        if_match: Option<String>,
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response, ApiError> {
        let id = MemoryId::parse(&id)?;
        let (scope, _) = Self::scope_param(query)?;
        let partition = PartitionKey::of(&tenant, &scope, id.as_str());
        let mut suffix = format!("memories/{}", percent_encode(id.as_str()));
        if let Some(if_match) = if_match {
            suffix = format!("{suffix}?if_match={}", percent_encode(&if_match));
        }
        let reply = self
            .forward
            .to_partition(
                &partition,
                Method::DELETE,
                &suffix,
                None,
                request_id,
                self.forward_timeout(),
            )
            .await?;
        let mut token = ReadToken::default();
        if let Some(seq) = reply.last_seq {
            token.note(scope, seq);
        }
        reply.into_result()?;
        Ok(with_token(empty(204), &token))
    }

    async fn list(
        &self,
        tenant: TenantId,
        query: Option<&str>,
        request_id: &str,
        token: &ReadToken,
    ) -> Result<Response, ApiError> {
        let (scope, pairs) = Self::scope_param(query)?;
        let (mut limit, mut cursor) = (api::DEFAULT_LIST_LIMIT, None);
        for (k, v) in &pairs {
            match k.as_str() {
                "scope" => {}
                "limit" => limit = api::parse_list_limit(v)?,
                "cursor" => cursor = Some((api::decode_cursor(v)?, v.clone())),
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter {other:?}; list takes scope, limit and cursor"
                    )));
                }
            }
        }
        if scope == Scope::Global {
            return self.list_global(limit, cursor.map(|c| c.0), request_id).await;
        }
        let mut forwarded = vec![format!("limit={limit}")];
        if let Some((_, raw)) = &cursor {
            forwarded.push(format!("cursor={}", percent_encode(raw)));
        }
        let partition = PartitionKey::new(&tenant, &scope);
        let suffix = format!("memories?{}", forwarded.join("&"));
        let reply = self
            .forward
            .read_partition(
                &partition,
                &suffix,
                None,
                request_id,
                self.forward_timeout(),
                token.min_seq(&scope),
            )
            .await?
            .into_result()?;
        Ok(json_bytes(200, reply))
    }

    /// Lists `global` memories: its partitions one after another in bucket order, each in id
    /// order. A cursor names the last id, whose bucket says where to go on.
    async fn list_global(
        &self,
        limit: usize,
        after: Option<MemoryId>,
        request_id: &str,
    ) -> Result<Response, ApiError> {
        let mut bucket = after.as_ref().map(|id| global_bucket_of(id.as_str())).unwrap_or(0);
        let mut cursor = after.map(|id| api::encode_cursor(&id));
        let mut items: Vec<Value> = Vec::new();
        let mut more = false;
        while bucket < GLOBAL_BUCKETS {
            let partition = PartitionKey::global_bucket(bucket);
            let mut suffix = format!("memories?limit={}", limit - items.len());
            if let Some(c) = &cursor {
                suffix.push_str(&format!("&cursor={}", percent_encode(c)));
            }
            let timeout = self.forward_timeout();
            let reply = self
                .forward
                .read_partition(&partition, &suffix, None, request_id, timeout, 0)
                .await?
                .into_result()?;
            let page: ListPage = serde_json::from_slice(&reply).map_err(|e| {
                ApiError::internal(format!("shard list answer does not parse: {e}"))
            })?;
            items.extend(page.items);
            if items.len() >= limit {
                // Full: more if this bucket said so or any bucket follows.
                more = page.next_cursor.is_some() || bucket + 1 < GLOBAL_BUCKETS;
                break;
            }
            bucket += 1;
            cursor = None;
        }
        let next_cursor = if more {
            items
                .last()
                .and_then(|m| m["id"].as_str())
                .and_then(|id| MemoryId::parse(id).ok())
                .map(|id| api::encode_cursor(&id))
        } else {
            None
        };
        Ok(json(200, &serde_json::json!({ "items": items, "next_cursor": next_cursor })))
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
mod update;

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
