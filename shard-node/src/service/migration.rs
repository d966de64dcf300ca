//! The shard node's migration routes (`/internal/v1/p/{tenant}/{scope}/migrate/...`): the steps
//! the control plane drives to copy a partition to another node and hand it over.

use super::*;

impl ShardService {
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
        // `changes` and `entries`: the log after this sequence number.
        let after = match param("after").filter(|_| matches!(action, "changes" | "entries")) {
            Some(v) => v.parse::<u64>().map_err(|_| {
                ApiError::invalid(format!("\"after\" must be a sequence number, got {v:?}"))
            })?,
            None => 0,
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
            (&Method::GET, "changes") => {
                let (ops, last) =
                    self.blocking(move |s| s.changes(&partition, after, limit)).await?;
                Ok(binary(
                    crate::record::encode(&ops)?,
                    &[(api::LAST_SEQ_HEADER, last.to_string())],
                ))
            }
            (&Method::GET, "entries") => {
                // The log itself, sequence numbers and times included: what followers apply.
                let entries = self.blocking(move |s| s.log_after(&partition, after, limit)).await?;
                Ok(binary(crate::record::encode(&entries)?, &[]))
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
                    self.in_background(move |s| s.import_index(&partition, &body)).await?;
                Ok(json(200, &serde_json::json!({ "vectors": vectors })))
            }
            (&Method::POST, "import") => {
                let body = read_body(req, self.body_limit).await?;
                let ops: Vec<crate::record::LogOp> = crate::record::decode(&body).map_err(|e| {
                    ApiError::invalid(format!(
                        "import body is not a memring record batch: {}",
                        e.message()
                    ))
                })?;
                // The bulk copy yields to the node's own traffic; catch-up (`urgent`) must keep
                // pace with the source's writes, so it runs at normal priority.
                let urgent = param("urgent").as_deref() == Some("true");
                let work = move |s: &Storage| s.import(&partition, ops, now_millis());
                let applied = if urgent {
                    self.blocking(work).await?
                } else {
                    self.in_background(work).await?
                };
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
