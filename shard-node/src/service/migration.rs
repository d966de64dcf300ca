//! The shard node's migration routes (`/internal/v1/migrate/{tenant}/{scope}/{action}`): the
//! steps the control plane drives to copy a partition to another node and hand it over. The
//! source's log after the snapshot is read from the replication log route
//! (`GET /internal/v1/replicate/log/…`), the one feed of a partition's log.

use super::*;

impl ShardService {
    /// The body of migration step `action`, which must be one of the nodes' record batches
    /// (`record.rs`): 400 if it is not.
    async fn record_batch<T: crate::record::Record>(
        &self,
        req: Request<Incoming>,
        action: &str,
    ) -> Result<T, ApiError> {
        let body = read_body(req, self.body_limit).await?;
        crate::record::decode(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the {action} body is not a memring record batch: {}",
                e.message()
            ))
        })
    }

    /// The migration steps (no ownership check: the target does not own the partition yet, and
    /// the source must still be read after the flip).
    pub(super) async fn migrate_route(
        &self,
        method: Method,
        action: &str,
        partition: PartitionKey,
        req: Request<Incoming>,
    ) -> Result<http::Response<memring_common::http::Body>, ApiError> {
        let query = query_pairs(req.uri().query())?;
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let limit = param("limit").map(|v| api::parse_list_limit(&v)).transpose()?.unwrap_or(500);
        let number = |name: &str| -> Result<u64, ApiError> {
            let v = param(name).ok_or_else(|| {
                ApiError::invalid(format!("{action} needs the parameter {name:?}"))
            })?;
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("{name:?} must be a number, got {v:?}")))
        };
        match (&method, action) {
            (&Method::GET, "export") => {
                let after = param("after");
                let page = self
                    .in_background(move |s| s.export_page(&partition, after.as_deref(), limit))
                    .await?;
                let mut headers = vec![
                    (api::LAST_SEQ_HEADER, page.last_seq.to_string()),
                    (api::LAST_TERM_HEADER, page.last_term.to_string()),
                    (api::PAGE_COUNT_HEADER, page.ops.len().to_string()),
                    (api::PAGE_TOTAL_HEADER, page.total.to_string()),
                ];
                if let Some(next) = page.next_after {
                    headers.push((api::NEXT_AFTER_HEADER, percent_encode(&next)));
                }
                Ok(binary(crate::record::encode(&page.ops)?, &headers))
            }
            (&Method::GET, "index") => {
                let shipped = self.in_background(move |s| s.export_index(&partition)).await?;
                Ok(match shipped {
                    Some((seq, bytes)) => binary(bytes, &[(api::LAST_SEQ_HEADER, seq.to_string())]),
                    None => memring_common::http::empty(204),
                })
            }
            (&Method::PUT, "index") => {
                // A graph is as big as the partition's vectors: this internal route alone takes
                // bodies past the request limit.
                let body = read_body(req, INDEX_BODY_LIMIT).await?;
                let vectors =
                    self.in_background(move |s| s.import_index(&partition, &body, None)).await?;
                Ok(json(200, &serde_json::json!({ "vectors": vectors })))
            }
            (&Method::POST, "reseed") => {
                // The target's copy starts over: dropped, and marked until it holds a snapshot.
                self.blocking(move |s| s.begin_reseed(&partition, &|| Ok(()))).await?;
                Ok(memring_common::http::empty(204))
            }
            (&Method::POST, "import") => {
                let ops: Vec<crate::record::LogOp> = self.record_batch(req, action).await?;
                // The bulk copy yields to the node's own traffic.
                let applied = self
                    .in_background(move |s| s.import_snapshot(&partition, ops, &|| Ok(())))
                    .await?;
                Ok(json(200, &serde_json::json!({ "applied": applied })))
            }
            (&Method::POST, "place") => {
                // The snapshot is in: its log continues the source's from the first page's
                // position.
                let at = crate::replicate::rules::LogPos::new(number("term")?, number("seq")?);
                self.blocking(move |s| {
                    s.place_snapshot(&partition, at, &|| Ok(()))?;
                    s.end_reseed(&partition)
                })
                .await?;
                Ok(memring_common::http::empty(204))
            }
            (&Method::POST, "log") => {
                let entries: Vec<crate::record::LogEntry> = self.record_batch(req, action).await?;
                // The catch-up must keep pace with the source's writes: normal priority.
                let applied = self
                    .blocking(move |s| s.import_replicated(&partition, entries, &|| Ok(())))
                    .await?;
                Ok(json(200, &serde_json::json!({ "applied": applied })))
            }
            (&Method::POST, "fence") | (&Method::DELETE, "fence") => {
                let on = method == Method::POST;
                self.blocking(move |s| s.set_fence(&partition, on)).await?;
                Ok(json(200, &serde_json::json!({ "fenced": on })))
            }
            (&Method::GET, "checksum") => {
                let deep = match param("deep").as_deref() {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(ApiError::invalid(format!(
                            "\"deep\" must be true or false, got {other:?}"
                        )));
                    }
                };
                Ok(json(200, &self.blocking(move |s| s.checksum(&partition, deep)).await?))
            }
            (&Method::DELETE, "partition") => {
                self.blocking(move |s| s.drop_partition(&partition)).await?;
                Ok(memring_common::http::empty(204))
            }
            _ => Err(ApiError::new(
                ErrorCode::RouteNotFound,
                format!("no migration step {method} {action}"),
            )),
        }
    }
}
