//! Bringing one copy of a partition to another node's log, the one loop of a follower's round
//! and of a take-over ([`Replication::sync_from`]): probe back from this copy's last position to
//! where the two logs agree, cut this copy's entries after it, pull the other's page by page —
//! or, where a trimmed log leaves no place to meet, re-seed this copy from a snapshot.

use memring_common::api::{self, partition_path};
use memring_common::layout::LayoutNode;
use memring_common::{ApiError, ErrorCode, PartitionKey, Ring};

use super::rules::{self, LogPos};
use super::{PAGE, Replication, SNAPSHOT_PAGE};
use crate::record::{LogEntry, decode};

/// What a log pull answered.
enum Pulled {
    /// The node's entry at the asked position has the asked term: its entries after it.
    Entries(Vec<LogEntry>),
    /// It does not: the node's last position holding an entry of a term ≤ the asked one.
    Diverges { end_of_term: u64 },
}

impl Replication {
    /// Makes this copy of `p` continue `node`'s log and pulls it up to position `to` (or its
    /// end): probes back from this copy's last position to where the two logs agree, cuts this
    /// copy's entries after that, then applies `node`'s page by page. `allowed` is checked
    /// against the current ring under the partition's write lock before each change lands; with
    /// `lead`, `node` must be leading the partition at that term of it (a follower asking its
    /// owner). The one loop of a follower's round and of a take-over. A copy marked as being
    /// re-seeded, or that cannot continue `node`'s log because one of the two is trimmed past
    /// where they would meet (`log_trimmed`), is re-seeded from `node` instead
    /// ([`Replication::reseed`]). Returns the position reached.
    pub(super) async fn sync_from(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        let key = p.clone();
        let (reseeding, at) =
            self.blocking(move |s| Ok((s.is_reseeding(&key)?, s.last_pos(&key)?))).await?;
        if reseeding {
            return self.reseed(node, p, lead, to, allowed).await;
        }
        match self.sync_log(node, p, lead, at, to, allowed.clone()).await {
            Err(e) if e.code() == ErrorCode::LogTrimmed => {
                tracing::info!(partition = %p, from = %node.id, reason = %e, "re-seeding this copy");
                self.reseed(node, p, lead, to, allowed).await
            }
            reached => reached,
        }
    }

    /// Replaces this copy of `p` by a snapshot of `node`'s (the migration copy path: its export
    /// pages, `storage/trim.rs`), then pulls `node`'s entries after the snapshot's position up to
    /// `to`. The copy stays marked until then, so a crash anywhere re-seeds it again.
    async fn reseed(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        metrics::counter!("memring_replication_reseeds_total").increment(1);
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.begin_reseed(&key, &|| a(&ring.ring()))).await?;
        let mut after: Option<String> = None;
        let mut start: Option<LogPos> = None;
        let mut copied = 0usize;
        loop {
            let mut url = format!(
                "http://{}/internal/v1/migrate/{}/export?limit={SNAPSHOT_PAGE}",
                node.addr,
                partition_path(p)
            );
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let (body, headers) = self.get_bytes(&url).await?;
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::internal(format!("{url} answered without {name}")))
            };
            let number = |name: &str| {
                header(name)?
                    .parse::<u64>()
                    .map_err(|_| ApiError::internal(format!("{url}: {name} is not a number")))
            };
            if start.is_none() {
                start = Some(LogPos::new(
                    number(api::LAST_TERM_HEADER)?,
                    number(api::LAST_SEQ_HEADER)?,
                ));
            }
            let ops: Vec<crate::record::LogOp> = decode(&body)?;
            copied += ops.len();
            let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
            self.blocking(move |s| s.import_snapshot(&key, ops, &|| a(&ring.ring()))).await?;
            match header(api::NEXT_AFTER_HEADER) {
                Ok(next) => after = Some(next),
                Err(_) => break,
            }
        }
        let start = start.unwrap_or_default();
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.place_snapshot(&key, start, &|| a(&ring.ring()))).await?;
        let reached = self.sync_log(node, p, lead, start, to.max(start.seq), allowed).await?;
        let key = p.clone();
        self.blocking(move |s| s.end_reseed(&key)).await?;
        tracing::info!(partition = %p, from = %node.id, memories = copied, snapshot = start.seq, reached = reached.seq, "copy re-seeded from a snapshot");
        Ok(reached)
    }

    /// A GET of an internal binary answer: its body and headers, or the error it carried.
    async fn get_bytes(&self, url: &str) -> Result<(bytes::Bytes, http::HeaderMap), ApiError> {
        let unreachable = |e: reqwest::Error| ApiError::unavailable(format!("{url}: {e}"), 1);
        let resp = self.client().get(url).send().await.map_err(unreachable)?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok((body, headers));
        }
        Err(match serde_json::from_slice::<memring_common::error::ErrorBody>(&body) {
            Ok(parsed) => ApiError::from_body(parsed),
            Err(_) => ApiError::unavailable(
                format!("{url} answered {status}: {}", String::from_utf8_lossy(&body)),
                1,
            ),
        })
    }

    /// The loop of [`Replication::sync_from`] from this copy's position `at`.
    async fn sync_log(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        mut at: LogPos,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        loop {
            match self.pull(node, p, at, lead).await? {
                Pulled::Diverges { end_of_term } => {
                    let probe = rules::next_probe(at.seq, end_of_term);
                    let key = p.clone();
                    let term = self.blocking(move |s| s.term_at(&key, probe)).await?;
                    let term = term.ok_or_else(|| {
                        ApiError::unavailable(format!("{p} changed while its log was compared"), 1)
                    })?;
                    at = LogPos::new(term, probe);
                }
                Pulled::Entries(entries) => {
                    let last = entries.last().map(|e| LogPos::new(e.term, e.seq));
                    let (ring, key, allowed) = (self.ring.clone(), p.clone(), allowed.clone());
                    let cut_to = at.seq;
                    self.blocking(move |s| {
                        let check = || allowed(&ring.ring());
                        let cut = s.truncate_log(&key, cut_to, &check)?;
                        if cut > 0 {
                            metrics::counter!("memring_replication_resyncs_total").increment(1);
                        }
                        match lead {
                            _ if entries.is_empty() => 0,
                            // Following `node` as it leads at that term.
                            Some(_) => s.import_followed(&key, entries, &check)?,
                            None => s.import_replicated(&key, entries, &check)?,
                        };
                        Ok(())
                    })
                    .await?;
                    match last {
                        Some(last) if last.seq < to => at = last,
                        Some(last) => return Ok(last),
                        None => return Ok(at),
                    }
                }
            }
        }
    }

    /// `node`'s log entries of `p` after position `after` (one page), if its entry there has
    /// `after`'s term; with `lead`, answered by `node` only as the owner leading at that term
    /// of the partition (sent as `epoch`, the name every version reads).
    async fn pull(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        after: LogPos,
        lead: Option<u64>,
    ) -> Result<Pulled, ApiError> {
        let mut url = format!(
            "http://{}/internal/v1/replicate/log/{}?after={}&term={}&limit={PAGE}",
            node.addr,
            partition_path(p),
            after.seq,
            after.term
        );
        if let Some(term) = lead {
            url.push_str(&format!("&epoch={term}"));
        }
        let error = match self.get_bytes(&url).await {
            Ok((body, _)) => return decode(&body).map(Pulled::Entries),
            Err(error) => error,
        };
        let end_of_term =
            error.details().and_then(|d| d.get("end_of_term")).and_then(serde_json::Value::as_u64);
        match end_of_term {
            Some(end_of_term) if error.code() == ErrorCode::Conflict => {
                Ok(Pulled::Diverges { end_of_term })
            }
            _ => Err(error),
        }
    }
}
