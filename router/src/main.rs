//! `memring-router`: parses flags and runs the router until SIGINT/SIGTERM.

use clap::Parser;
use memring_router::RouterArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memring_common::telemetry::init_logging();
    memring_common::telemetry::init_metrics();
    let config = RouterArgs::parse().resolve()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    memring_router::run(listener, config, memring_common::telemetry::shutdown_signal()).await
}
