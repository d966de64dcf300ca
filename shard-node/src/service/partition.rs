//! The shard node's routes on one partition's memories (`/internal/v1/p/{tenant}/{scope}/…`,
//! what routers forward): writes, patches, reads, listings and searches, each checked against
//! the node's ownership of the partition at the caller's epoch.

use super::*;

impl ShardService {
    /// One request on `partition` (`rest`: the path after it), once the caller may reach it here.
    pub(super) async fn partition_route(
        self: Arc<Self>,
        method: Method,
        rest: Vec<String>,
        partition: PartitionKey,
        req: Request<Incoming>,
    ) -> (&'static str, Result<http::Response<memring_common::http::Body>, ApiError>) {
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (&method, rest.as_slice()) {
            (&Method::POST, ["memories"]) => ("internal.write", self.write(partition, req).await),
            (&Method::GET, ["memories"]) => {
                ("internal.list", self.list(partition, req.uri().query()).await)
            }
            (&Method::GET, ["memories", id]) => {
                let r = async {
                    let id = MemoryId::parse(&percent_decode(id)?)?;
                    let view = self.blocking(move |s| s.get(&partition, &id, now_millis())).await?;
                    Ok(json(200, &view))
                }
                .await;
                ("internal.get", r)
            }
            (&Method::PATCH, ["memories", id]) => {
                let r = async {
                    let id = MemoryId::parse(&percent_decode(id)?)?;
                    self.patch(partition, id, req).await
                }
                .await;
                ("internal.patch", r)
            }
            (&Method::DELETE, ["memories", id]) => {
                let r = async {
                    let id = MemoryId::parse(&percent_decode(id)?)?;
                    let mut if_match = None;
                    for (k, v) in query_pairs(req.uri().query())? {
                        if k == "if_match" {
                            if_match = Some(api::IfMatch::parse_query(&v)?);
                        }
                    }
                    self.repl.take_over(&partition).await?;
                    let (p, repl) = (partition.clone(), self.repl.clone());
                    let at = self
                        .blocking(move |s| {
                            s.delete_checked(&p, &id, if_match, now_millis(), &|last| {
                                repl.may_commit(&p, last)
                            })?;
                            s.last_pos(&p)
                        })
                        .await?;
                    self.repl.replicated(&partition, at).await?;
                    let mut reply = memring_common::http::empty(204);
                    reply.headers_mut().insert(api::LAST_SEQ_HEADER, at.seq.into());
                    Ok(reply)
                }
                .await;
                ("internal.delete", r)
            }
            (&Method::POST, ["search"]) => ("internal.search", self.search(partition, req).await),
            (&Method::GET, ["log"]) => {
                ("internal.log", self.log(partition, req.uri().query()).await)
            }
            _ => (
                "unknown",
                Err(ApiError::new(
                    ErrorCode::RouteNotFound,
                    format!("no internal endpoint {method} .../{}", rest.join("/")),
                )),
            ),
        }
    }

    async fn write(
        &self,
        partition: PartitionKey,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let body: Bytes = read_body(req, self.body_limit).await?;
        let write: ShardWrite = memring_common::http::parse_json(&body)?;
        for item in &write.items {
            if item.scope != *partition.scope() {
                return Err(ApiError::invalid(format!(
                    "item {} has scope {}, not {}",
                    item.id,
                    item.scope,
                    partition.scope()
                )));
            }
            if let Some(e) = &item.embedding {
                api::validate_embedding(e)?;
            }
        }
        self.repl.take_over(&partition).await?;
        let (ring, node, p) = (self.ring.clone(), self.node.clone(), partition.clone());
        let repl = self.repl.clone();
        let (results, at) = self
            .blocking(move |s| {
                let results = s.write_checked(
                    &p,
                    write.items,
                    now_millis(),
                    &|| may_create(&ring, &node, &p),
                    &|last| repl.may_commit(&p, last),
                )?;
                Ok((results, s.last_pos(&p)?))
            })
            .await?;
        self.repl.replicated(&partition, at).await?;
        let seq = at.seq;
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok((outcome, result)) => ShardItemResult::Ok { outcome, result },
                Err(e) => ShardItemResult::Err { error: e.to_body().error },
            })
            .collect();
        Ok(json(200, &ShardWriteResponse { results, seq }))
    }

    /// `PATCH …/memories/{id}`: the patch applied on this owner under the partition's write
    /// lock and replicated like a write; answers the whole memory.
    async fn patch(
        &self,
        partition: PartitionKey,
        id: MemoryId,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let body: Bytes = read_body(req, self.body_limit).await?;
        let patch: api::ShardPatch = memring_common::http::parse_json(&body)?;
        if let Some(e) = &patch.embedded {
            api::validate_embedding(&e.embedding)?;
        }
        self.repl.take_over(&partition).await?;
        let (p, repl) = (partition.clone(), self.repl.clone());
        let ((outcome, memory), at) = self
            .blocking(move |s| {
                let done = s.patch_checked(&p, id, patch, now_millis(), &|last| {
                    repl.may_commit(&p, last)
                })?;
                Ok((done, s.last_pos(&p)?))
            })
            .await?;
        self.repl.replicated(&partition, at).await?;
        Ok(json(200, &api::ShardPatchResponse { memory, outcome, seq: at.seq }))
    }

    async fn list(
        &self,
        partition: PartitionKey,
        query: Option<&str>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let mut limit = api::DEFAULT_LIST_LIMIT;
        let mut after = None;
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "limit" => limit = api::parse_list_limit(&v)?,
                "cursor" => after = Some(api::decode_cursor(&v)?),
                _ => {}
            }
        }
        let (items, more) =
            self.blocking(move |s| s.list(&partition, after.as_ref(), limit, now_millis())).await?;
        let next_cursor = if more { items.last().map(|m| api::encode_cursor(&m.id)) } else { None };
        Ok(json(200, &ListResponse { items, next_cursor }))
    }

    async fn search(
        &self,
        partition: PartitionKey,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let body = read_body(req, self.body_limit).await?;
        let search = memring_common::http::parse_json::<api::RawSearch>(&body)?.validate_query()?;
        if let Some(model) = &search.embedded_by {
            self.storage.check_query_model(&partition, model)?;
        }
        let quick_key = partition.clone();
        let run = move |s: &Storage| match &search.by {
            api::ShardQuery::Vector(v) => {
                s.search(&partition, v, search.k, &search.filter, now_millis())
            }
            api::ShardQuery::Keyword(words) => {
                s.keyword_search(&partition, words, search.k, &search.filter, now_millis())
            }
            api::ShardQuery::List => {
                s.list_filtered(&partition, search.k, &search.filter, now_millis())
            }
        };
        let results = if self.storage.is_search_quick(&quick_key) {
            // A loaded index answers in tens to hundreds of microseconds: run it here rather than
            // pay two thread hand-offs. Building an index (seconds) goes to a blocking thread.
            let _permit = self
                .slots
                .acquire()
                .await
                .map_err(|_| ApiError::unavailable("shutting down", 1))?;
            run(&self.storage)?
        } else {
            self.blocking(move |s| run(s)).await?
        };
        Ok(json(200, &SearchResponse { results, partial: false }))
    }
}
