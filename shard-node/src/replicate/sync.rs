//! Bringing one copy of a partition to another node's log, the one loop of a follower's round
//! and of a take-over ([`Replication::sync_from`]): probe back from this copy's last position to
//! where the two logs agree, cut this copy's entries after it, pull the other's page by page —
//! or, where a trimmed log leaves no place to meet or the copy holds nothing yet, fill it from a
//! snapshot (the fill of a copy a move makes: paced by the layout's `fill_rate`, and handed
//! the other node's HNSW graph at the end).

use std::time::{Duration, Instant};

use memring_common::api::{self, partition_path};
use memring_common::layout::LayoutNode;
use memring_common::{ApiError, ErrorCode, PartitionKey, Ring};

use super::rules::{self, LogPos};
use super::{PAGE, Replication, SNAPSHOT_PAGE};
use crate::record::{LogEntry, decode};

/// A copy that holds nothing is filled from a snapshot rather than from the log once the node
/// it copies is more than this many entries ahead: a snapshot writes each memory once and skips
/// what was overwritten or deleted, a log replay writes each entry and its memory.
const FILL_FROM_SNAPSHOT: u64 = PAGE as u64;

/// Where a pull of `node`'s log stops.
#[derive(Clone, Copy)]
enum Stop {
    /// At the first page that reaches this position (a page may end past it).
    Reaching(u64),
    /// Exactly at this position.
    At(u64),
}

impl Stop {
    fn seq(self) -> u64 {
        match self {
            Stop::Reaching(seq) | Stop::At(seq) => seq,
        }
    }

    /// How many entries to ask for after `after`.
    fn limit(self, after: u64) -> u64 {
        match self {
            Stop::Reaching(_) => PAGE as u64,
            Stop::At(seq) => seq.saturating_sub(after).clamp(1, PAGE as u64),
        }
    }
}

/// A header of an internal answer, as text, if sent.
fn header_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

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
    /// re-seeded, that holds nothing while `node` is more than [`FILL_FROM_SNAPSHOT`] entries
    /// ahead or the change in flight moves it here ([`Ring::filling`]: paced), or that cannot
    /// continue `node`'s log because one of the two is trimmed past where they would meet
    /// (`log_trimmed`), is re-seeded from `node` instead ([`Replication::reseed`]). Returns the
    /// position reached.
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
        // An empty copy takes a snapshot when the log is long, or when a move's pin brings the
        // partition here (it then takes the owner's graph too). A join's small copies replay
        // the log: a snapshot and a graph cost more round trips than a few entries.
        let pinned_here = self.ring.ring().layout().change_pins(p);
        let fill_whole = at.seq == 0 && (to > FILL_FROM_SNAPSHOT || pinned_here);
        if reseeding || fill_whole {
            return self.reseed(node, p, lead, to, allowed).await;
        }
        match self.sync_log(node, p, lead, at, Stop::Reaching(to), allowed.clone()).await {
            Err(e) if e.code() == ErrorCode::LogTrimmed => {
                tracing::info!(partition = %p, from = %node.id, reason = %e, "re-seeding this copy");
                self.reseed(node, p, lead, to, allowed).await
            }
            reached => reached,
        }
    }

    /// Replaces this copy of `p` by a snapshot of `node`'s (its export pages,
    /// `storage/trim.rs`), then pulls `node`'s entries after the snapshot's position up to `to`.
    /// The copy stays marked until then, so a crash anywhere re-seeds it again. A copy the
    /// change in flight moves here ([`Ring::filling`]) is paced at the layout's `fill_rate` and
    /// is then handed `node`'s HNSW graph ([`Replication::take_graph`]).
    async fn reseed(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        to: u64,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        metrics::counter!("memring_replication_reseeds_total").increment(1);
        let moving = self.ring.ring().filling(p);
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.begin_reseed(&key, &|| a(&ring.ring()))).await?;
        let page_url = |after: Option<&str>| {
            let mut url = format!(
                "http://{}/internal/v1/migrate/{}/export?limit={SNAPSHOT_PAGE}",
                node.addr,
                partition_path(p)
            );
            if let Some(a) = after {
                url.push_str(&format!("&after={a}"));
            }
            url
        };
        let mut start: Option<LogPos> = None;
        let mut copied = 0usize;
        let started = Instant::now();
        let first = page_url(None);
        let mut page = Some((self.get_bytes(&first).await?, first));
        while let Some(((body, headers), url)) = page.take() {
            let header = |name: &str| {
                header_text(&headers, name)
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
            // The next page is fetched while this one is written.
            let next = header(api::NEXT_AFTER_HEADER).ok().map(|after| page_url(Some(&after)));
            let fetch = async {
                match next {
                    Some(url) => Ok(Some((self.get_bytes(&url).await?, url))),
                    None => Ok(None),
                }
            };
            // Written on the node's low-priority threads, as the copy routes' work is.
            let (storage, ring, key, a) =
                (self.storage.clone(), self.ring.clone(), p.clone(), allowed.clone());
            let import = self
                .background
                .run(move || storage.import_snapshot(&key, ops, &|| a(&ring.ring())));
            let (imported, fetched) = tokio::join!(import, fetch);
            imported?;
            page = fetched?;
            if let Some(rate) = moving.filter(|rate| *rate > 0) {
                // At or under the rate: wait until the copied count is due.
                let due = Duration::from_secs_f64(copied as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let start = start.unwrap_or_default();
        let (ring, key, a) = (self.ring.clone(), p.clone(), allowed.clone());
        self.blocking(move |s| s.place_snapshot(&key, start, &|| a(&ring.ring()))).await?;
        let reached = self
            .sync_log(node, p, lead, start, Stop::Reaching(to.max(start.seq)), allowed.clone())
            .await?;
        let key = p.clone();
        self.blocking(move |s| s.end_reseed(&key)).await?;
        tracing::info!(partition = %p, from = %node.id, memories = copied, snapshot = start.seq, reached = reached.seq, "copy re-seeded from a snapshot");
        if moving.is_none() {
            return Ok(reached);
        }
        Ok(self.take_graph(node, p, lead, reached, allowed).await.unwrap_or_else(|e| {
            // The copy builds its own graph on its first search.
            tracing::info!(partition = %p, from = %node.id, error = %e, "graph not handed over");
            reached
        }))
    }

    /// Hands `node`'s HNSW graph of `p` to this copy, which is at `at`: a copy a move fills
    /// answers the partition's searches after the flip, and building its graph would take both
    /// cores for seconds then. Pulls `node`'s entries up to the graph's log position, then
    /// installs it if this copy is exactly there (`Storage::import_index`). Nothing if `node`
    /// has no graph loaded (it would build one lazily too). Returns the position reached.
    async fn take_graph(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        at: LogPos,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        let url = format!("http://{}/internal/v1/migrate/{}/index", node.addr, partition_path(p));
        let (graph, headers) = self.get_bytes(&url).await?;
        let seq = header_text(&headers, api::LAST_SEQ_HEADER).and_then(|v| v.parse::<u64>().ok());
        let Some(seq) = seq.filter(|seq| !graph.is_empty() && *seq >= at.seq) else {
            return Ok(at);
        };
        let at = match seq > at.seq {
            true => self.sync_log(node, p, lead, at, Stop::At(seq), allowed).await?,
            false => at,
        };
        if at.seq != seq {
            return Ok(at);
        }
        let (key, bytes) = (p.clone(), graph.len());
        let vectors = self.blocking(move |s| s.import_index(&key, &graph, Some(seq))).await?;
        metrics::counter!("memring_replication_graphs_taken_total").increment(1);
        metrics::counter!("memring_replication_graph_bytes_total").increment(bytes as u64);
        tracing::info!(partition = %p, from = %node.id, vectors, bytes, "HNSW graph handed over with the copy");
        Ok(at)
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

    /// The loop of [`Replication::sync_from`] from this copy's position `at`, until `stop`.
    async fn sync_log(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        lead: Option<u64>,
        mut at: LogPos,
        stop: Stop,
        allowed: impl Fn(&Ring) -> Result<(), ApiError> + Clone + Send + 'static,
    ) -> Result<LogPos, ApiError> {
        loop {
            match self.pull(node, p, at, stop.limit(at.seq), lead).await? {
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
                        Some(last) if last.seq < stop.seq() => at = last,
                        Some(last) => return Ok(last),
                        None => return Ok(at),
                    }
                }
            }
        }
    }

    /// `node`'s log entries of `p` after position `after` (`limit` at most), if its entry there
    /// has `after`'s term; with `lead`, answered by `node` only as the owner leading at that
    /// term of the partition (sent as `epoch`, the name every version reads).
    async fn pull(
        &self,
        node: &LayoutNode,
        p: &PartitionKey,
        after: LogPos,
        limit: u64,
        lead: Option<u64>,
    ) -> Result<Pulled, ApiError> {
        let mut url = format!(
            "http://{}/internal/v1/replicate/log/{}?after={}&term={}&limit={limit}",
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
