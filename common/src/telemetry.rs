//! Logs and metrics setup shared by every binary.
//!
//! Logs are `tracing` events, human-readable by default or JSON lines with `MEMRING_LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`). Metrics go through the `metrics` facade into one
//! Prometheus recorder per process, rendered by `GET /metrics`. Route labels are fixed names
//! chosen by the handlers, so label cardinality stays bounded whatever paths clients send.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the process-wide tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("MEMRING_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Logging for a one-shot command whose standard output is its answer (a key, a table): log
/// lines go to standard error, warnings and worse only unless `RUST_LOG` says otherwise.
pub fn init_command_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn init_metrics() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already installed (a test harness, say): keep a private one so
            // /metrics still renders something well-formed.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
}

/// The Prometheus text of every metric recorded so far.
pub fn render_metrics() -> String {
    match HANDLE.get() {
        Some(handle) => handle.render(),
        None => String::new(),
    }
}

/// Counts one HTTP request and records its latency.
pub fn record_request(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let status = status.to_string();
    metrics::counter!("http_requests_total", "route" => route, "method" => method.to_owned(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route, "status" => status)
        .record(elapsed.as_secs_f64());
}

/// Resolves on SIGINT or SIGTERM, for graceful shutdown in `main`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
