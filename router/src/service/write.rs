//! Writes on the router (API.md, "Memories"): one memory or a batch, split by partition and
//! forwarded to each owner, the content embedded first where a write brings text without a
//! vector (micro-batched with other requests' texts), and `POST /v1/embeddings`.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::future::join_all;
use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::api::{
    self, BatchItemResult, BatchResponse, EmbeddingDatum, EmbeddingsResponse, EmbeddingsUsage,
    RawBatch, RawEmbeddingsRequest, RawWrite, ReadToken, ShardItemResult, ShardWrite,
    ShardWriteResponse, WriteItem,
};
use memring_common::auth::Principal;
use memring_common::http::{json, parse_json};
use memring_common::{ApiError, ErrorCode, PartitionKey, Scope, TenantId};

use super::{Response, RouterService, item_error, raw_id, update, with_token};
use crate::embed::no_embedder;

impl RouterService {
    /// Sends validated items of one partition to its owner; returns their results and the
    /// partition's log position after them (for the read token).
    pub(super) async fn write_partition(
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

    /// `POST /v1/tenants/{tenant}/memories`: one memory, embedded first if it brings text
    /// only, to its partition's owner; answered with its `ETag` and a read token.
    pub(super) async fn write(
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

    /// `POST /v1/tenants/{tenant}/memories:batch`: the items grouped by partition, each group
    /// forwarded at once; one result per item, in the order sent.
    pub(super) async fn batch(
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
    pub(super) fn embed_deadline(&self) -> Instant {
        Instant::now() + self.forward_timeout()
    }

    /// Embeds the `content` of every item that came without a vector, in one request to the
    /// embedder. Per item: `Some(truncated)` when the router embedded it, `None` otherwise (it
    /// brought its own vector, or there is no embedder: it is stored without one).
    pub(super) async fn embed_missing(
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
    pub(super) fn note_embedded(
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
    pub(super) async fn embeddings(&self, req: Request<Incoming>) -> Result<Response, ApiError> {
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
}
