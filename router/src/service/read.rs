//! Reads on the router (API.md, "Search" and "Memories"): a search over one or many scopes fans
//! out to their owners (or followers, with replica reads) in parallel and merges by score;
//! listing pages through partitions, the global scope's buckets included; a get by id.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    self, RawSearch, ReadToken, SearchHit, SearchMode, SearchRequest, SearchResponse,
};
use memring_common::http::{empty, json, json_bytes, parse_json, percent_encode, query_pairs};
use memring_common::scope::{GLOBAL_BUCKETS, global_bucket_of};
use memring_common::{ApiError, ErrorCode, MemoryId, PartitionKey, Scope, TenantId};
use serde_json::Value;

use super::{
    ListPage, Response, RouterService, partitions_of, shard_search_body, sort_hits, update,
    with_token,
};
use crate::embed::no_embedder;

impl RouterService {
    /// The mode a search runs in: the one asked for, else from what was sent (API.md).
    pub(super) fn search_mode(&self, search: &SearchRequest) -> Option<SearchMode> {
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

    pub(super) async fn search(
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
    pub(super) async fn listing(
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
    pub(super) async fn search_partitions(
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

    pub(super) fn scope_param(
        query: Option<&str>,
    ) -> Result<(Scope, Vec<(String, String)>), ApiError> {
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
    pub(super) async fn get(
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
    pub(super) async fn delete(
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

    pub(super) async fn list(
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
    pub(super) async fn list_global(
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
}
