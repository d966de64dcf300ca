//! `shardctl`: the operator's CLI, talking to the control plane's HTTP API.
//! Exit status is 0 only on success.

use clap::{Parser, Subcommand};
use memring_common::api::ClusterView;

#[derive(Parser)]
#[command(name = "shardctl", version, about = "operate a memring cluster")]
struct Args {
    /// Control plane address.
    #[arg(long, env = "MEMRING_CONTROL", default_value = "http://127.0.0.1:7800", global = true)]
    control: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Epoch, nodes, ring shares, partitions and memories per node.
    Status,
    /// The nodes only.
    Nodes,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let url = format!("{}/v1/cluster", args.control.trim_end_matches('/'));
    let resp =
        reqwest::Client::builder().no_proxy().build()?.get(&url).send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the control plane at {}: {e}; is memring-control serve running?",
                args.control
            )
        })?;
    anyhow::ensure!(
        resp.status().is_success(),
        "control plane answered {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let view: ClusterView = resp.json().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    match args.command {
        Command::Status => print!("{}", memring_control::view::render(&view)),
        Command::Nodes => {
            for n in &view.nodes {
                println!("{}\t{}\tin_ring={}\tlive={}", n.id, n.addr, n.in_ring, n.live);
            }
        }
    }
    Ok(())
}
