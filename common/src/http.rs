//! The HTTP server shell every memring binary shares.
//!
//! [`serve`] accepts connections on a listener and hands each request to a [`Service`], around
//! which it does what every endpoint needs the same way: `GET /health` and `GET /metrics`, a
//! request id (taken from `x-request-id` or made up) on a tracing span and on the response,
//! request counts and latency histograms by route and status, header and idle timeouts against
//! slow clients, a panic net (a bug answers 500 and is logged; the process lives on), and graceful
//! shutdown that lets requests in flight finish. It knows nothing of memories or rings.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::api::REQUEST_ID_HEADER;
use crate::error::{ApiError, ErrorCode};
use crate::telemetry;

/// The response body type of every memring server.
pub type Body = Full<Bytes>;

/// A response together with the route name it is counted under.
pub struct Reply {
    /// A bounded label for metrics, e.g. `memories.search`; never the raw path.
    pub route: &'static str,
    /// The response.
    pub response: Response<Body>,
}

/// A boxed future, for object-safe services.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One binary's request handling.
pub trait Service: Send + Sync + 'static {
    /// Handles one request (the shell has already answered `/health` and `/metrics`).
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<Reply>;
    /// Whether `/ready` should answer 200: the process can do its job now.
    fn ready(&self) -> Result<(), String>;
}

/// Server-side limits and timeouts, and TLS.
#[derive(Clone)]
pub struct ServerOptions {
    /// How long a client may take to send the request head (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Serve HTTPS with this acceptor (`tls.rs`); plain HTTP when `None`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), tls: None }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then waits (up to 10 s) for
/// requests in flight.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = Graceful::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (service, watcher, timeout) =
            (service.clone(), graceful.watcher(), options.header_read_timeout);
        match options.tls.clone() {
            None => {
                tokio::spawn(serve_connection(stream, service, peer, timeout, watcher));
            }
            Some(tls) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, peer, timeout, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("requests still in flight after 10 s; closing anyway");
        }
    }
    Ok(())
}

/// The connections a server has open and the signal that asks them to finish (its graceful
/// shutdown). Connections may be upgraded (a shard node's replication stream), which hyper-util's
/// graceful shutdown does not watch.
struct Graceful {
    stop: tokio::sync::watch::Sender<bool>,
    /// Cloned into every connection; once all clones are dropped, `closed` yields `None`.
    open: tokio::sync::mpsc::Sender<()>,
    closed: tokio::sync::mpsc::Receiver<()>,
}

/// What one connection holds while open: the stop signal, and a handle whose drop counts it out.
struct Watcher {
    stop: tokio::sync::watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl Graceful {
    fn new() -> Self {
        let (stop, _) = tokio::sync::watch::channel(false);
        let (open, closed) = tokio::sync::mpsc::channel(1);
        Self { stop, open, closed }
    }

    fn watcher(&self) -> Watcher {
        Watcher { stop: self.stop.subscribe(), _open: self.open.clone() }
    }

    /// Asks every connection to finish its requests and close, and waits until all have.
    async fn shutdown(self) {
        let Self { stop, open, mut closed } = self;
        drop(open);
        let _ = stop.send(true);
        // `None` once every connection's handle is dropped.
        let _ = closed.recv().await;
    }
}

/// Serves one connection (plain or TLS) until it closes or a graceful shutdown ends it. A
/// request may upgrade it (`Service::handle` answers 101 and takes the connection over with
/// `hyper::upgrade::on`); the upgraded connection then lives on outside this function.
async fn serve_connection<S, IO>(
    io: IO,
    service: Arc<S>,
    peer: SocketAddr,
    header_read_timeout: Duration,
    mut watcher: Watcher,
) where
    S: Service,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(dispatch(service, req, peer).await) }
            }),
        )
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = async { drop(watcher.stop.wait_for(|stop| *stop).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

async fn dispatch<S: Service>(
    service: Arc<S>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %req.uri().path(), %peer);
    let reply = async {
        match (req.method(), req.uri().path()) {
            (&http::Method::GET, "/health") => {
                Reply { route: "health", response: text(200, "ok\n") }
            }
            (&http::Method::GET, "/metrics") => {
                Reply { route: "metrics", response: text(200, &telemetry::render_metrics()) }
            }
            (&http::Method::GET, "/ready") => match service.ready() {
                Ok(()) => Reply { route: "ready", response: text(200, "ready\n") },
                Err(why) => Reply {
                    route: "ready",
                    response: error_response(&ApiError::unavailable(why, 1)),
                },
            },
            _ => match AssertUnwindSafe(service.handle(req)).catch_unwind().await {
                Ok(reply) => reply,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "handler panicked; this is a bug");
                    Reply { route: "panic", response: error_response(&ApiError::internal(what)) }
                }
            },
        }
    }
    .instrument(span.clone())
    .await;
    let status = reply.response.status().as_u16();
    let elapsed = started.elapsed();
    telemetry::record_request(reply.route, method.as_str(), status, elapsed);
    if status >= 500 {
        span.in_scope(|| tracing::warn!(status, route = reply.route, "request failed"));
    } else {
        span.in_scope(|| {
            tracing::debug!(
                status,
                route = reply.route,
                micros = elapsed.as_micros() as u64,
                "request done"
            )
        });
    }
    let mut response = reply.response;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// A plain-text response.
pub fn text(status: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON response of `value`.
pub fn json<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, Bytes::from(bytes)),
        Err(e) => error_response(&ApiError::internal(format!("response does not serialize: {e}"))),
    }
}

/// A response whose body is already JSON.
pub fn json_bytes(status: u16, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An empty response with `status` (204, 202).
pub fn empty(status: u16) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT);
    r
}

/// The response for an error, with `Retry-After` when it has one. Internal errors are logged here.
pub fn error_response(err: &ApiError) -> Response<Body> {
    if err.code() == ErrorCode::Internal {
        tracing::error!(error = %err.message(), "internal error");
    }
    let mut r = json(err.status(), &err.to_body());
    if let Some(secs) = err.retry_after_secs() {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// How long clients of memring servers keep an idle pooled connection: less than the servers'
/// header timeout (10 s), which also closes idle keep-alive connections, so a client never
/// sends on a connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// How long a request body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a whole request body, refusing more than `limit` bytes with 413 (early, from
/// `Content-Length`, when the client announced the size), and a body that trickles in for
/// longer than [`BODY_READ_TIMEOUT`] with 408.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = |size: Option<u64>| {
        let size = size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request body{size} is over the limit of {limit} bytes; split it into smaller requests"
            ),
        )
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced
        && len > limit as u64
    {
        return Err(too_large(Some(len)));
    }
    // A client that trickles its body (slow loris) is cut off; 60 s admits a full 20 MiB batch
    // at 350 KB/s.
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s; send it faster or in smaller requests",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(too_large(None))
        }
        Err(e) => Err(ApiError::invalid(format!("could not read the request body: {e}"))),
    }
}

/// Parses a JSON body into `T`, turning serde's complaint into a 400 that says where it failed.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON for this endpoint: {e}"),
        )
    })
}

/// Splits a query string into decoded `(key, value)` pairs.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(query) = query else { return Ok(Vec::new()) };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space) in a URL component.
pub fn percent_decode(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3).ok_or_else(|| bad_escape(raw))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad_escape(raw))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad_escape(raw))
}

fn bad_escape(raw: &str) -> ApiError {
    let shown: String = raw.chars().take(60).collect();
    ApiError::invalid(format!("{shown:?} has a malformed %-escape or is not UTF-8"))
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for s in ["agent:planner", "a b", "ü/%?&=", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).expect("decodes"), s);
        }
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn query_pairs_decode() {
        let pairs = query_pairs(Some("scope=agent%3Aa&limit=5&flag")).expect("parses");
        assert_eq!(pairs[0], ("scope".into(), "agent:a".into()));
        assert_eq!(pairs[2], ("flag".into(), "".into()));
    }

    #[test]
    fn json_errors_are_400() {
        assert_eq!(parse_json::<serde_json::Value>(b"{").expect_err("bad").status(), 400);
        assert_eq!(parse_json::<serde_json::Value>(b"").expect_err("empty").status(), 400);
    }
}
