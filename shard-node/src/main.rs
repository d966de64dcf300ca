//! `memring-shard`: parses flags and runs the shard node until SIGINT/SIGTERM.

use clap::Parser;
use memring_shard::ShardArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memring_common::telemetry::init_logging();
    memring_common::telemetry::init_metrics();
    let config = ShardArgs::parse().resolve()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    memring_shard::run(listener, config, memring_common::telemetry::shutdown_signal()).await
}
