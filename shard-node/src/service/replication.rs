//! The shard node's replication routes: a follower's poll of this node's change feed, over HTTP
//! or an upgraded stream, the checked log read behind it, and a partition's log for inspection.

use super::*;

impl ShardService {
    /// A follower's long-poll on this node's change feed (`replicate/feed.rs`).
    pub(super) async fn replica_poll(
        &self,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let body = read_body(req, self.body_limit).await?;
        let ask: ReplicaPoll = memring_common::http::parse_json(&body)?;
        let answer = self.repl.serve_poll(ask).await?;
        Ok(binary(crate::record::encode(&answer)?, &[]))
    }

    /// One replication step for many partitions (`replicate/batch.rs`).
    pub(super) async fn replica_batch(
        &self,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let body = read_body(req, self.body_limit).await?;
        let ask: api::ReplicaBatch = memring_common::http::parse_json(&body)?;
        if ask.partitions.len() > api::MAX_REPLICA_BATCH {
            return Err(ApiError::invalid(format!(
                "a batch names at most {} partitions, not {}",
                api::MAX_REPLICA_BATCH,
                ask.partitions.len()
            )));
        }
        let results = self.repl.batch(ask.step, ask.epoch, ask.partitions).await?;
        Ok(json(200, &api::ReplicaBatchAnswer { results }))
    }

    /// `POST /internal/v1/replicate/stream` with `Upgrade: memring-feed/1`: answers 101 and
    /// serves the follower's polls over the upgraded connection (`replicate/stream.rs`).
    pub(super) fn replica_stream(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let protocol = crate::replicate::STREAM_PROTOCOL;
        let asks_for_it = req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(protocol));
        if !asks_for_it {
            return Err(ApiError::invalid(format!(
                "this route upgrades the connection: send Connection: upgrade and Upgrade: {protocol}"
            )));
        }
        let upgrade = hyper::upgrade::on(&mut req);
        let repl = self.repl.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(io) => repl.serve_stream(io).await,
                Err(e) => tracing::debug!(error = %e, "replication stream not upgraded"),
            }
        });
        let mut response = http::Response::new(memring_common::http::Body::default());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        headers.insert(http::header::UPGRADE, http::HeaderValue::from_static(protocol));
        Ok(response)
    }

    /// `GET /internal/v1/replicate/log/{tenant}/{scope}?after=SEQ&term=TERM&limit=N[&epoch=E]
    /// [&pin=true]`: the log after a position whose term the asker names (see
    /// `Replication::serve_log`), with the position it reaches in its headers. `epoch` names the
    /// partition's term the owner must lead at (the layout epoch in a layout without terms, the
    /// name older followers send).
    pub(super) async fn replica_log(
        &self,
        tenant: &str,
        scope: &str,
        query: Option<&str>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let partition = parse_partition(tenant, scope)?;
        let (mut after, mut term, mut limit, mut lead, mut pin) =
            (0u64, 0u64, 1000usize, None, false);
        for (k, v) in query_pairs(query)? {
            let number = |what: &str| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::invalid(format!("\"{k}\" must be {what}, got {v:?}")))
            };
            match k.as_str() {
                "after" => after = number("a log position")?,
                "term" => term = number("a term")?,
                "epoch" => lead = Some(number("the partition's term")?),
                "limit" => limit = api::parse_list_limit(&v)?,
                "pin" => {
                    pin = v.parse().map_err(|_| {
                        ApiError::invalid(format!("\"pin\" must be true or false, got {v:?}"))
                    })?
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown parameter {other:?}; the log takes after, term, limit, epoch, pin"
                    )));
                }
            }
        }
        let at = crate::replicate::rules::LogPos::new(term, after);
        let entries = self.repl.serve_log(&partition, at, limit, lead, pin).await?;
        // Where the answer ends, for a reader that pipes it on undecoded (a migration).
        let end =
            entries.last().map_or(at, |e| crate::replicate::rules::LogPos::new(e.term, e.seq));
        let headers = [
            (api::LAST_SEQ_HEADER, end.seq.to_string()),
            (api::LAST_TERM_HEADER, end.term.to_string()),
        ];
        Ok(binary(crate::record::encode(&entries)?, &headers))
    }

    /// `GET /internal/v1/p/{tenant}/{scope}/log?after=SEQ&limit=N`: the partition's log entries
    /// after a position, summarized (sequence, operation, id, version), for inspection.
    pub(super) async fn log(
        &self,
        partition: PartitionKey,
        query: Option<&str>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let mut after = 0u64;
        let mut limit = 1000usize;
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "after" => {
                    after = v.parse().map_err(|_| {
                        ApiError::invalid(format!("\"after\" must be a sequence number, got {v:?}"))
                    })?
                }
                "limit" => limit = api::parse_list_limit(&v)?,
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown parameter {other:?}; the log takes after, limit"
                    )));
                }
            }
        }
        let entries = self.blocking(move |s| s.log_after(&partition, after, limit)).await?;
        let summary: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| match &e.op {
                crate::record::LogOp::Put(ep) => serde_json::json!({"seq": e.seq, "op": "put", "id": ep.id, "version": ep.version}),
                crate::record::LogOp::Delete { id, version } => serde_json::json!({"seq": e.seq, "op": "delete", "id": id, "version": version}),
                crate::record::LogOp::TermStart => serde_json::json!({"seq": e.seq, "op": "term_start"}),
            })
            .collect();
        Ok(json(200, &serde_json::json!({ "entries": summary })))
    }
}
