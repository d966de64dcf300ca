//! The transport of a follower's polls: one long-lived connection per follower and primary,
//! upgraded from `POST /internal/v1/replicate/stream` (`Upgrade: memring-feed/1`), over which
//! the follower sends each [`ReplicaPoll`] and the primary answers it with its [`FeedAnswer`],
//! one frame each way per round, in order.
//!
//! It carries exactly what `POST /internal/v1/replicate/poll` carries, answered by the same
//! [`Replication::serve_poll`]: the protocol (cursors, acknowledgements, inlined entries, the
//! divergence check) does not depend on which transport a round took. What it saves is the cost
//! of an HTTP exchange per round — request parsing, routing, the cluster-token check, request
//! ids and latency histograms, and the HTTP client's hand-offs to its connection task — which
//! on a node with writes in flight is most of a round's CPU (docs/benchmarks.md,
//! "Replication"). The token is checked once, on the upgrade request.
//!
//! A frame is a little-endian `u32` length and that many bytes: the poll as JSON (the same body
//! as the HTTP route's), the answer in the record encoding (`record.rs`). Any failure — a frame
//! that does not decode, a timeout, the primary's error — closes the connection; the follower
//! counts it as a failed poll and opens a new one. A primary that does not know the route (an
//! earlier binary during a rolling upgrade) answers 404, and the follower polls it over HTTP.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{CONNECTION, UPGRADE};
use memring_common::api::ReplicaPoll;
use memring_common::internal::InternalClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::Replication;
use super::feed::FeedAnswer;
use crate::record;

/// The `Upgrade` protocol name of the stream.
pub const PROTOCOL: &str = "memring-feed/1";
/// Largest poll a primary reads (after a full listing a poll acknowledges every copy).
const MAX_ASK: usize = 64 << 20;
/// Largest answer a follower reads.
const MAX_ANSWER: usize = 1 << 30;
/// A primary closes a stream that sent no poll for this long (a follower polls at least once
/// per `POLL_WAIT`).
const IDLE: Duration = Duration::from_secs(30);
/// How much longer than the time a poll lets the primary hold it a follower waits for the
/// answer.
const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// A follower's open stream to one primary.
pub(super) struct FeedStream {
    io: BufReader<reqwest::Upgraded>,
}

impl FeedStream {
    /// Opens a stream to the primary at `addr`; `None` if it does not serve streams (an
    /// earlier binary: poll it over HTTP).
    pub(super) async fn open(client: &InternalClient, addr: &str) -> anyhow::Result<Option<Self>> {
        let resp = client
            .post(format!("http://{addr}/internal/v1/replicate/stream"))
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, PROTOCOL)
            .send()
            .await?;
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {
                Ok(Some(Self { io: BufReader::new(resp.upgrade().await?) }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            other => anyhow::bail!("{addr} refused the replication stream: {other}"),
        }
    }

    /// One round: sends `ask`, and reads the primary's answer. After an error the stream is
    /// in an unknown state: drop it.
    pub(super) async fn poll(&mut self, ask: &ReplicaPoll) -> anyhow::Result<FeedAnswer> {
        write_frame(&mut self.io, serde_json::to_vec(ask)?).await?;
        let wait = Duration::from_millis(ask.wait_ms) + ANSWER_SLACK;
        let body = tokio::time::timeout(wait, read_frame(&mut self.io, MAX_ANSWER))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} ms", wait.as_millis()))??;
        Ok(record::decode::<FeedAnswer>(&body)?)
    }
}

impl Replication {
    /// Serves one follower's stream (upgraded by the service) until it closes, sends nothing
    /// for [`IDLE`], fails, or this node stops.
    pub async fn serve_stream(self: Arc<Self>, io: hyper::upgrade::Upgraded) {
        let mut io = BufReader::new(hyper_util::rt::TokioIo::new(io));
        let mut stop = self.stop.clone();
        loop {
            let round = tokio::select! {
                _ = async { drop(stop.wait_for(|s| *s).await) } => return,
                round = self.stream_round(&mut io) => round,
            };
            if let Err(e) = round {
                tracing::debug!(error = %e, "replication stream closed");
                return;
            }
        }
    }

    /// One round of a stream: reads a poll (waiting at most [`IDLE`]), answers it.
    async fn stream_round<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut IO,
    ) -> anyhow::Result<()> {
        let frame = tokio::time::timeout(IDLE, read_frame(io, MAX_ASK))
            .await
            .map_err(|_| anyhow::anyhow!("no poll for {} s", IDLE.as_secs()))??;
        let ask = serde_json::from_slice::<ReplicaPoll>(&frame)
            .map_err(|e| anyhow::anyhow!("a poll that does not parse: {e}"))?;
        let answer = self.serve_poll(ask).await?;
        write_frame(io, record::encode(&answer)?).await
    }
}

/// Writes one frame (its length, then `body`) in one write.
async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, body: Vec<u8>) -> anyhow::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| anyhow::anyhow!("a frame of {} bytes is too long", body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes; an error at a clean end of the stream too.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    anyhow::ensure!(len <= limit, "a frame of {len} bytes is over the limit of {limit}");
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_frame_over_the_limit_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello".to_vec()).await.expect("write");
        write_frame(&mut a, Vec::new()).await.expect("write");
        write_frame(&mut a, vec![7u8; 100]).await.expect("write");
        assert_eq!(read_frame(&mut b, 10).await.expect("read"), b"hello");
        assert_eq!(read_frame(&mut b, 10).await.expect("read"), b"");
        let over = read_frame(&mut b, 10).await.expect_err("over");
        assert!(over.to_string().contains("over the limit"), "{over}");
        drop(a);
        // A stream that ends between frames is an error, not an empty frame.
        let (a, mut b) = tokio::io::duplex(16);
        drop(a);
        assert!(read_frame(&mut b, 10).await.is_err());
    }
}
