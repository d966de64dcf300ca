//! `memring-control`: the control plane. `serve` runs its HTTP API; `status` prints the cluster
//! view straight from the ring store; `layout` shows and changes the ring layout (stage → show →
//! apply: every change names the epoch it expects and is a compare-and-swap); `keys bootstrap`
//! makes the first admin key and `token generate` a cluster token file, both straight on the
//! ring store or the file system (no running control plane needed).

use clap::{Parser, Subcommand};
use memring_common::api::ReplicaSetsShown;
use memring_common::internal::{InternalAuthArgs, InternalAuthConfig};
use memring_common::store::{StoreArgs, StoreConfig};

#[derive(Parser)]
#[command(name = "memring-control", version, about = "memring control plane")]
struct Args {
    /// Ring store flags.
    #[command(flatten)]
    store: StoreArgs,
    /// The cluster token (for `serve` and `status`, which talk to shard nodes).
    #[command(flatten)]
    internal: InternalAuthArgs,
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
        /// Leadership lease TTL in seconds (how soon a standby takes over).
        #[arg(long, env = "MEMRING_LEASE_TTL_SECS", default_value_t = 10)]
        lease_ttl_secs: u64,
        /// Memories per second a migration may copy (0: unlimited). The default keeps search p99
        /// on the two nodes of a migration within 2x of idle on a 2-core machine shared by the
        /// whole cluster (docs/benchmarks.md); raise it where nodes have cores to spare.
        #[arg(long, env = "MEMRING_MIGRATION_RATE", default_value_t = 3000)]
        migration_rate: u64,
        /// With replication: remove a node that has been down this many seconds from the
        /// layout, so its partitions get their copies back on other nodes (0: never).
        #[arg(long, env = "MEMRING_REPLACE_AFTER_SECS", default_value_t = 300)]
        replace_after_secs: u64,
        /// Require API keys on the admin API (true/false); default true with etcd.
        #[arg(long, env = "MEMRING_AUTH")]
        auth: Option<bool>,
        /// Set the layout's `auto_rebalance` to this (true/false) on taking leadership: with it
        /// on, shard nodes that register are admitted without `shardctl rebalance`. Unset: the
        /// layout keeps what `shardctl auto-rebalance` last set (off in a new layout).
        #[arg(long, env = "MEMRING_AUTO_REBALANCE")]
        auto_rebalance: Option<bool>,
        /// How long a new node must stay live before the autopilot admits it (nodes started
        /// together join in one rebalance).
        #[arg(long, env = "MEMRING_AUTO_REBALANCE_SETTLE_SECS", default_value_t = 10)]
        auto_rebalance_settle_secs: u64,
    },
    /// API keys straight in the ring store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The cluster token of internal traffic.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print epoch, nodes and ring shares read from the ring store.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show or change the ring layout.
    #[command(subcommand)]
    Layout(LayoutCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make the first admin key (printed once) with the ring store's own credentials; refused
    /// when an admin key exists already, unless --force.
    Bootstrap {
        /// A note stored with the key.
        #[arg(long, default_value = "bootstrap")]
        label: String,
        /// Make one even though an admin key exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Write a new random cluster token to FILE (mode 0600); refused if FILE exists, unless
    /// --force. Give every process of the cluster the same file (`--cluster-token-file`).
    Generate {
        /// The file to write.
        file: std::path::PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum LayoutCommand {
    /// Print the layout document.
    Show,
    /// Put a node into the ring (or change its address).
    AddNode {
        /// Node id.
        id: String,
        /// Its address, host:port.
        addr: String,
        /// Apply only if the layout is still at this epoch (default: the epoch just read).
        #[arg(long)]
        expect_epoch: Option<u64>,
    },
    /// Take a node out of the ring without moving its data (one copy only; `shardctl drain`
    /// moves it first, and is the only way out of a replicated layout).
    RemoveNode {
        /// Node id.
        id: String,
        /// Apply only if the layout is still at this epoch (default: the epoch just read).
        #[arg(long)]
        expect_epoch: Option<u64>,
    },
    /// Admit shard nodes that register without an operator (on) or only by `shardctl
    /// rebalance` (off).
    SetAutoRebalance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Apply only if the layout is still at this epoch (default: the epoch just read).
        #[arg(long)]
        expect_epoch: Option<u64>,
    },
    /// Keep this many copies of every partition (1 to 7): followers tail their primary's log.
    SetReplication {
        /// Copies per partition.
        copies: u32,
        /// Apply only if the layout is still at this epoch (default: the epoch just read).
        #[arg(long)]
        expect_epoch: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve { .. } => memring_common::telemetry::init_logging(),
        _ => memring_common::telemetry::init_command_logging(),
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memring-control: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut store_config = StoreConfig::default();
    args.store.overlay(&mut store_config);
    let mut internal = InternalAuthConfig::default();
    args.internal.overlay(&mut internal);
    match args.command {
        Command::Serve {
            listen,
            lease_ttl_secs,
            migration_rate,
            replace_after_secs,
            auth,
            auto_rebalance,
            auto_rebalance_settle_secs,
        } => {
            memring_common::telemetry::init_metrics();
            memring_common::config::check_addr("listen", &listen)?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            let config = memring_control::ControlConfig {
                store: store_config,
                lease_ttl_secs,
                migration_rate,
                replace_after_secs,
                internal,
                auth,
                auto_rebalance,
                auto_rebalance_settle: std::time::Duration::from_secs(auto_rebalance_settle_secs),
            };
            memring_control::run(listener, config, memring_common::telemetry::shutdown_signal())
                .await
        }
        Command::Status { json } => {
            let store = memring_common::store::open(&store_config).await?;
            let credential = internal.credential(store_config.is_etcd(), "memring-control")?;
            let view = memring_control::view::cluster_view(
                store.as_ref(),
                &memring_control::view::http_client(credential)?,
                &memring_control::listings::Listings::default(),
                if json { ReplicaSetsShown::All } else { ReplicaSetsShown::Short },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", memring_control::view::render(&view));
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Bootstrap { label, force }) => {
            let store = memring_common::store::open(&store_config).await?;
            let (id, key) = memring_control::keys::bootstrap(store.as_ref(), &label, force).await?;
            eprintln!("admin key {id} made; it is shown once, keep it safe:");
            println!("{key}");
            Ok(())
        }
        Command::Token(TokenCommand::Generate { file, force }) => {
            memring_control::keys::write_token_file(&file, force)?;
            eprintln!("cluster token written to {}", file.display());
            Ok(())
        }
        Command::Layout(cmd) => {
            let store = memring_common::store::open(&store_config).await?;
            let out = match cmd {
                LayoutCommand::Show => memring_control::layout::show(store.as_ref()).await?,
                LayoutCommand::AddNode { id, addr, expect_epoch } => {
                    memring_control::layout::add_node(store.as_ref(), &id, &addr, expect_epoch)
                        .await?
                }
                LayoutCommand::RemoveNode { id, expect_epoch } => {
                    memring_control::layout::remove_node(store.as_ref(), &id, expect_epoch).await?
                }
                LayoutCommand::SetAutoRebalance { state, expect_epoch } => {
                    let on = state == "on";
                    memring_control::layout::set_auto_rebalance(store.as_ref(), on, expect_epoch)
                        .await?
                }
                LayoutCommand::SetReplication { copies, expect_epoch } => {
                    memring_control::layout::set_replication(store.as_ref(), copies, expect_epoch)
                        .await?
                }
            };
            println!("{out}");
            Ok(())
        }
    }
}
