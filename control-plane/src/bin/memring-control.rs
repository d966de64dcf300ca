//! `memring-control`: the control plane. `serve` runs its HTTP API; `status` prints the cluster
//! view straight from the ring store (no running control plane needed).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use memring_common::store::embedded::EmbeddedStore;

#[derive(Parser)]
#[command(name = "memring-control", version, about = "memring control plane")]
struct Args {
    /// Embedded ring store directory.
    #[arg(long, env = "MEMRING_RING_DIR", default_value = "data/ring", global = true)]
    ring_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the control plane API (GET /v1/cluster).
    Serve {
        /// Listen address.
        #[arg(long, env = "MEMRING_LISTEN", default_value = "127.0.0.1:7800")]
        listen: String,
    },
    /// Print epoch, nodes and ring shares read from the ring store.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memring_common::telemetry::init_logging();
    let args = Args::parse();
    match args.command {
        Command::Serve { listen } => {
            memring_common::telemetry::init_metrics();
            memring_common::config::check_addr("listen", &listen)?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let config = memring_control::ControlConfig { ring_dir: args.ring_dir };
            memring_control::run(listener, config, memring_common::telemetry::shutdown_signal())
                .await
        }
        Command::Status { json } => {
            let store = EmbeddedStore::open(&args.ring_dir)?;
            let view =
                memring_control::view::cluster_view(&store, &memring_control::view::http_client()?)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", memring_control::view::render(&view));
            }
            Ok(())
        }
    }
}
