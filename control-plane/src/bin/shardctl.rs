//! `shardctl`: the operator's CLI, talking to the control plane's HTTP API with the wire types of
//! `memring_common` and `memring_control`, so client and server cannot drift.
//! Exit status is 0 only on success.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use memring_common::api::{
    ChangeReport, ClusterView, CopyPhase, MigrateRequest, MigrationReport, MovePhase, PlanReport,
    ReplicaSetsShown, VerifyReport,
};
use memring_control::report as render;

#[derive(Parser)]
#[command(name = "shardctl", version, about = "operate a memring cluster")]
struct Args {
    /// Control plane address.
    #[arg(long, env = "MEMRING_CONTROL", default_value = "http://127.0.0.1:7800", global = true)]
    control: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// API key for the control plane (an admin key; an operator key for `status` and
    /// `nodes`). Prefer the environment variable: a flag shows in the process list.
    #[arg(long, env = "MEMRING_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Epoch, nodes, ring shares, partitions and memories per node.
    Status,
    /// The nodes only.
    Nodes,
    /// Move a tenant's partitions (or one scope's) to a node, online, and pin them there.
    Migrate {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// The target node id.
        #[arg(long)]
        to: String,
    },
    /// Put every live node that is not in the ring into it and move what the new ring requires.
    Rebalance {
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Desired placement against observed, and what the control plane does next: nodes waiting
    /// to join (with the rebalance that would admit them), the size policy's next move,
    /// migrations in flight.
    Plan,
    /// Admit shard nodes that register without an operator (on: the active control plane runs
    /// the rebalance above once a new node has been live for its settle time) or not (off).
    AutoRebalance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Placement by size: tenants this large get a node of their own.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Move everything off a node and take it out of the ring.
    Drain {
        /// The node id.
        node: String,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop the running migration, rebalance or drain. A partition being copied is dropped from
    /// its target and stays with its source; one already fenced finishes (milliseconds).
    /// Partitions a rebalance had not reached stay where they are; run it again to finish.
    Cancel,
    /// Check that every partition is stored on exactly its owner.
    Verify {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// API keys: create (the key is printed once), list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Tenant rate limits and quotas: show, set, clear.
    #[command(subcommand)]
    Limits(LimitsCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Tenants with at least --dedicate-at memories or --dedicate-at-bytes stored bytes move,
    /// online, to a free node of --node (name nodes that are live but not in the ring yet);
    /// below --release-below (and --release-below-bytes) they return to the ring. With
    /// replication the dedicated node leads the tenant's partitions; their other copies stay on
    /// shared nodes.
    Set {
        /// Memories at which a tenant gets a dedicated node.
        #[arg(long, required_unless_present = "dedicate_at_bytes")]
        dedicate_at: Option<u64>,
        /// Memories below which it returns to the ring (default: half of --dedicate-at).
        #[arg(long, requires = "dedicate_at")]
        release_below: Option<u64>,
        /// Stored bytes (contents, metadata, vectors) at which a tenant gets a dedicated node.
        #[arg(long)]
        dedicate_at_bytes: Option<u64>,
        /// Bytes below which it returns (default: half of --dedicate-at-bytes).
        #[arg(long, requires = "dedicate_at_bytes")]
        release_below_bytes: Option<u64>,
        /// A dedicated node (repeat for more).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
    /// Remove the policy (drain its dedicated nodes first).
    Clear,
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// The defaults and every tenant's overrides.
    Show,
    /// Set the defaults (no --tenant) or one tenant's overrides; unnamed fields stay unlimited
    /// (defaults) or inherit the defaults (a tenant).
    Set {
        /// The tenant (default: the defaults every tenant gets).
        #[arg(long)]
        tenant: Option<String>,
        /// Requests per second.
        #[arg(long)]
        requests_per_sec: Option<f64>,
        /// Written request-body bytes per second.
        #[arg(long)]
        write_bytes_per_sec: Option<f64>,
        /// Memories the tenant may store.
        #[arg(long)]
        max_memories: Option<u64>,
        /// Bytes of memories (id, content, metadata, 4 per dimension) the tenant may store.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Remove a tenant's overrides (it gets the defaults again).
    Clear {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new key for one tenant (`--tenant T`), an admin key (`--admin`) or a read-only
    /// operator key (`--operator`: the cluster's state, no tenant's data).
    Create {
        /// The tenant the key belongs to.
        #[arg(long, conflicts_with_all = ["admin", "operator"], required_unless_present_any = ["admin", "operator"])]
        tenant: Option<String>,
        /// An admin key: every tenant, global writes, the control plane.
        #[arg(long, conflicts_with = "operator")]
        admin: bool,
        /// An operator key: reads `shardctl status` and the operator page, nothing else.
        #[arg(long)]
        operator: bool,
        /// A note to tell keys apart.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Every key's id, tenant and label (secrets are not stored).
    List,
    /// Revoke a key by id; routers refuse it within about a second.
    Revoke {
        /// The key's id (the part after `mrk_`, before the next `_`).
        id: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("no message");
    anyhow::bail!("control plane answered {status}: {message}")
}

/// Awaits `work`, printing the control plane's migrations in flight (copied / total, rate, ETA)
/// to stderr every second meanwhile.
async fn with_progress<T>(
    client: &reqwest::Client,
    base: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::select! {
            done = &mut work => {
                eprintln!();
                return done;
            }
            _ = tick.tick() => {
                let url = format!("{base}/v1/cluster?replica_sets=none");
                let Ok(resp) = client.get(url).send().await else { continue };
                let Ok(view) = resp.json::<ClusterView>().await else { continue };
                // A rebalance journals every move up front: one runs, the rest wait.
                let pending = MovePhase::Copy(CopyPhase::Pending);
                let waiting = view.migrations.iter().filter(|m| m.phase == pending).count();
                let queue = if waiting > 0 { format!(" ({waiting} more waiting)") } else { String::new() };
                if let Some(m) = view.migrations.iter().find(|m| m.phase != pending) {
                    let (copied, total) = (m.copied, m.total);
                    let rate = last.map(|(c, t)| copied.saturating_sub(c) as f64 / t.elapsed().as_secs_f64()).unwrap_or(0.0);
                    let eta = if rate > 0.0 { format!("{:.0} s", total.saturating_sub(copied) as f64 / rate) } else { "?".into() };
                    eprint!("\r{} {}: {copied}/{total} copied, {rate:.0}/s, ETA {eta}{queue}     ", m.partition, m.phase);
                    last = Some((copied, std::time::Instant::now()));
                } else if let Some(change) = &view.layout_change {
                    // A join or drain: the new copies follow their old owners; show how far.
                    let lag: u64 = view.nodes.iter().filter_map(|n| n.lag).sum();
                    let sets = view.replica_summary.unwrap_or_default();
                    let (under, missing) = (sets.under_replicated, sets.missing_copies);
                    eprint!("\rstep {}: followers behind by {lag} entries; {under} partitions under-replicated, {missing} missing a copy     ", change.phase);
                }
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let base = args.control.trim_end_matches('/').to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .context("the API key holds characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = memring_common::tls::http_client_builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(3600))
        .build()?;
    let unreachable = |e: reqwest::Error| {
        anyhow::anyhow!(
            "cannot reach the control plane at {base}: {e}; is `memring-control serve` running?"
        )
    };
    match args.command {
        Command::Status | Command::Nodes => {
            // The text lists only the sets short of a copy (with the counts of all); --json all.
            let shown = if args.json { ReplicaSetsShown::All } else { ReplicaSetsShown::Short };
            let url = format!("{base}/v1/cluster?replica_sets={}", shown.as_str());
            let resp = client.get(url).send().await.map_err(unreachable)?;
            let view: ClusterView = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else if matches!(args.command, Command::Status) {
                print!("{}", memring_control::view::render(&view));
            } else {
                for n in &view.nodes {
                    println!("{}\t{}\tin_ring={}\tlive={}", n.id, n.addr, n.in_ring, n.live);
                }
            }
        }
        Command::Migrate { tenant, scope, to } => {
            eprintln!(
                "migrating tenant {tenant}{} to {to}…",
                scope.as_deref().map(|s| format!(" scope {s}")).unwrap_or_default()
            );
            let ask = MigrateRequest { tenant, scope, to };
            let post = client.post(format!("{base}/v1/migrations")).json(&ask).send();
            let resp = with_progress(&client, &base, post).await.map_err(unreachable)?;
            let reports: Vec<MigrationReport> =
                answer(resp).await?.json().await.context("migration answer")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    println!(
                        "{}: {} -> {}  {} memories ({} copied, {} replayed), writes fenced {} ms, epoch {}, took {} ms",
                        r.partition,
                        r.from,
                        r.to,
                        r.count,
                        r.copied,
                        r.replayed,
                        r.fenced_ms,
                        r.epoch,
                        r.took_ms
                    );
                }
            }
        }
        Command::Rebalance { dry_run } | Command::Drain { dry_run, .. } => {
            let path = match &args.command {
                Command::Drain { node, .. } => {
                    format!("/v1/drain/{}", memring_common::http::percent_encode(node))
                }
                _ => "/v1/rebalance".to_owned(),
            };
            let resp = if dry_run {
                client.get(format!("{base}{path}")).send().await
            } else {
                let post = client.post(format!("{base}{path}")).send();
                with_progress(&client, &base, post).await
            }
            .map_err(unreachable)?;
            let report: ChangeReport = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            print!("{}", render::change(&report));
        }
        Command::Keys(KeysCommand::Create { tenant, admin, operator, label }) => {
            let body = serde_json::json!({ "tenant": tenant, "admin": admin, "operator": operator, "label": label });
            let resp = client
                .post(format!("{base}/v1/keys"))
                .json(&body)
                .send()
                .await
                .map_err(unreachable)?;
            let created: serde_json::Value = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created["key"].as_str().unwrap_or(""));
                eprintln!(
                    "key {} for {}: shown once, keep it; revoke with `shardctl keys revoke {}`",
                    created["id"].as_str().unwrap_or(""),
                    created["principal"],
                    created["id"].as_str().unwrap_or("")
                );
            }
        }
        Command::Keys(KeysCommand::List) => {
            let resp = client.get(format!("{base}/v1/keys")).send().await.map_err(unreachable)?;
            let list: serde_json::Value = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<18} {:<24} LABEL", "ID", "FOR");
                for k in list["keys"].as_array().into_iter().flatten() {
                    let who = match &k["principal"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other["tenant"]
                            .as_str()
                            .map(|t| format!("tenant {t}"))
                            .unwrap_or_default(),
                    };
                    println!(
                        "{:<18} {:<24} {}",
                        k["id"].as_str().unwrap_or(""),
                        who,
                        k["label"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Keys(KeysCommand::Revoke { id }) => {
            let resp = client
                .delete(format!("{base}/v1/keys/{}", memring_common::http::percent_encode(&id)))
                .send()
                .await
                .map_err(unreachable)?;
            answer(resp).await?;
            println!("key {id} revoked");
        }
        Command::Limits(LimitsCommand::Show) => {
            let resp = client.get(format!("{base}/v1/limits")).send().await.map_err(unreachable)?;
            let limits: serde_json::Value = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&limits)?);
            } else {
                let show = |v: &serde_json::Value, k: &str| match &v[k] {
                    serde_json::Value::Null => "-".to_owned(),
                    other => other.to_string(),
                };
                println!(
                    "{:<24} {:>14} {:>20} {:>14} {:>14}",
                    "TENANT", "REQUESTS/S", "WRITE BYTES/S", "MEMORIES", "BYTES"
                );
                let rows = std::iter::once(("(defaults)".to_owned(), &limits["defaults"])).chain(
                    limits["tenants"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(t, v)| (t.clone(), v)),
                );
                for (tenant, v) in rows {
                    println!(
                        "{:<24} {:>14} {:>20} {:>14} {:>14}",
                        tenant,
                        show(v, "requests_per_sec"),
                        show(v, "write_bytes_per_sec"),
                        show(v, "max_memories"),
                        show(v, "max_bytes")
                    );
                }
            }
        }
        Command::Limits(LimitsCommand::Set {
            tenant,
            requests_per_sec,
            write_bytes_per_sec,
            max_memories,
            max_bytes,
        }) => {
            let name = tenant.unwrap_or_else(|| memring_common::limits::DEFAULTS.to_owned());
            let limits = memring_common::limits::TenantLimits {
                requests_per_sec,
                write_bytes_per_sec,
                max_memories,
                max_bytes,
            };
            let resp = client
                .put(format!("{base}/v1/limits/{}", memring_common::http::percent_encode(&name)))
                .json(&limits)
                .send()
                .await
                .map_err(unreachable)?;
            answer(resp).await?;
            println!("limits of {name} set: {}", serde_json::to_string(&limits)?);
        }
        Command::Limits(LimitsCommand::Clear { tenant }) => {
            let resp = client
                .delete(format!(
                    "{base}/v1/limits/{}",
                    memring_common::http::percent_encode(&tenant)
                ))
                .send()
                .await
                .map_err(unreachable)?;
            answer(resp).await?;
            println!("limits of {tenant} cleared; it gets the defaults");
        }
        Command::Plan => {
            let resp = client.get(format!("{base}/v1/plan")).send().await.map_err(unreachable)?;
            let plan: PlanReport = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
                return Ok(());
            }
            print!("{}", render::plan(&plan));
        }
        Command::AutoRebalance { state } => {
            let ask = serde_json::json!({ "rebalance": state == "on" });
            let resp = client
                .put(format!("{base}/v1/autopilot"))
                .json(&ask)
                .send()
                .await
                .map_err(unreachable)?;
            let view: memring_common::api::AutopilotView = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("auto-rebalance {state}");
            }
        }
        Command::Policy(cmd) => {
            let body = match cmd {
                PolicyCommand::Set {
                    dedicate_at,
                    release_below,
                    dedicate_at_bytes,
                    release_below_bytes,
                    nodes,
                } => {
                    let dedicated_nodes = nodes
                        .iter()
                        .map(|n| memring_common::NodeId::parse(n))
                        .collect::<Result<_, _>>()
                        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
                    serde_json::to_value(memring_common::layout::SizePolicy {
                        dedicate_at_memories: dedicate_at.unwrap_or(0),
                        release_below_memories: release_below
                            .unwrap_or(dedicate_at.unwrap_or(0) / 2),
                        dedicated_nodes,
                        dedicate_at_bytes,
                        release_below_bytes: release_below_bytes
                            .or(dedicate_at_bytes.map(|b| b / 2)),
                    })?
                }
                PolicyCommand::Clear => serde_json::Value::Null,
            };
            let resp = client
                .put(format!("{base}/v1/policy"))
                .json(&body)
                .send()
                .await
                .map_err(unreachable)?;
            let done: serde_json::Value = answer(resp).await?.json().await?;
            println!(
                "size policy {}; layout epoch {}",
                if body.is_null() { "cleared" } else { "set" },
                done["epoch"]
            );
        }
        Command::Cancel => {
            let resp = client
                .post(format!("{base}/v1/migrations/cancel"))
                .send()
                .await
                .map_err(unreachable)?;
            answer(resp).await?;
            println!("cancel requested; the running job stops at its next step");
        }
        Command::Verify { tenant } => {
            let mut url = format!("{base}/v1/verify");
            if let Some(t) = &tenant {
                url.push_str(&format!("?tenant={}", memring_common::http::percent_encode(t)));
            }
            let resp = client.get(url).send().await.map_err(unreachable)?;
            let report: VerifyReport = answer(resp).await?.json().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "epoch {}: {} partitions, {} memories checked, {} problems",
                    report.epoch,
                    report.partitions_checked,
                    report.memories,
                    report.problems.len()
                );
                for p in &report.problems {
                    println!("  {p}");
                }
                for m in &report.in_flight {
                    println!("  in flight (copies expected to differ for now): {m}");
                }
                for u in &report.under_replicated {
                    println!("  under-replicated: {u}");
                }
            }
            anyhow::ensure!(
                report.problems.is_empty(),
                "verify found {} problems",
                report.problems.len()
            );
        }
    }
    Ok(())
}
