//! Online migration of a tenant under load, with real etcd, shard nodes, router and control plane.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memring_common::layout::{LayoutNode, PinKind};
use memring_common::store::RingStore;
use memring_common::{NodeId, PartitionKey, Ring, Scope, TenantId};
use memring_tests::etcd::EtcdCluster;
use memring_tests::{binary, client, send_allowing_5xx, vector, write_batch};
use serde_json::json;

const TENANT: &str = "big";

type Acked = Vec<(String, String)>;

/// A bounded client load: paced writes with unique ids (and a search with every fifth).
#[derive(Clone)]
struct Load {
    /// Writes started per second (each on its own task, so a slow one does not slow the pace).
    per_sec: u64,
    /// Every n-th write goes to a tenant never written before (0: never), so partitions keep
    /// being created while the layout changes.
    fresh_every: usize,
    /// Counts acknowledged writes as they happen.
    written: Arc<AtomicUsize>,
    /// Times a write answered `503 unavailable` is sent again (same id: writes by id are
    /// idempotent), as a client with retries does; 0: a 503 is a failure.
    retries: u32,
}

impl Default for Load {
    fn default() -> Self {
        Self { per_sec: 200, fresh_every: 0, written: Default::default(), retries: 0 }
    }
}

/// One write (and maybe one search) of the load: the acknowledged (tenant, id), failures, latency.
async fn one_write(
    http: reqwest::Client,
    router: String,
    tenant: String,
    i: usize,
    retries: u32,
) -> anyhow::Result<(Option<(String, String)>, Vec<String>, Duration)> {
    let id = format!("live{i}");
    let body = json!({"id": id, "scope": "shared", "content": id, "embedding": vector(8, i, 0.1)});
    let url = format!("{router}/v1/tenants/{tenant}/memories");
    let t = Instant::now();
    let mut attempt = 0;
    let (status, resp) = loop {
        let body = Some(body.to_string().into_bytes());
        let (status, resp) = send_allowing_5xx(&http, reqwest::Method::POST, &url, body).await?;
        if status != 503 || attempt == retries {
            break (status, resp);
        }
        attempt += 1;
        println!("write {tenant}/{id} sent again after {resp}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Sent again after a 503: the first try may have created it (then 200 unchanged).
    let status = if attempt > 0 && status == 200 { 201 } else { status };
    let took = t.elapsed();
    let mut failures = Vec::new();
    let acked = if status == 201 {
        Some((tenant.clone(), id))
    } else {
        failures.push(format!("write {tenant}/{id}: {status} {resp}"));
        None
    };
    if i.is_multiple_of(5) {
        let q = json!({"scopes": ["shared"], "embedding": vector(8, i, 0.0), "k": 5});
        let url = format!("{router}/v1/tenants/{tenant}/memories/search");
        let (status, resp) =
            send_allowing_5xx(&http, reqwest::Method::POST, &url, Some(q.to_string().into_bytes()))
                .await?;
        if status != 200 {
            failures.push(format!("search {tenant}: {status} {resp}"));
        }
    }
    Ok((acked, failures, took))
}

/// Runs `load` round-robin over `tenants` until `stop` (at most 60 s). Returns the acknowledged
/// (tenant, id)s, every failure, and the slowest write.
fn spawn_writer(
    router: String,
    tenants: Vec<String>,
    stop: Arc<AtomicBool>,
    load: Load,
) -> tokio::task::JoinHandle<anyhow::Result<(Acked, Vec<String>, Duration)>> {
    tokio::spawn(async move {
        let http = client();
        let started = Instant::now();
        let mut tick =
            tokio::time::interval(Duration::from_micros(1_000_000 / load.per_sec.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60) {
            tick.tick().await;
            let tenant = if load.fresh_every > 0 && i.is_multiple_of(load.fresh_every) {
                format!("fresh{i}")
            } else {
                tenants[i % tenants.len()].clone()
            };
            let (http, router, written) = (http.clone(), router.clone(), load.written.clone());
            let retries = load.retries;
            tasks.push(tokio::spawn(async move {
                let r = one_write(http, router, tenant, i, retries).await;
                if let Ok((Some(_), _, _)) = &r {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                r
            }));
            i += 1;
        }
        let (mut acked, mut failures, mut slowest) = (Vec::new(), Vec::new(), Duration::ZERO);
        for task in tasks {
            let (ack, failed, took) = task.await??;
            acked.extend(ack);
            failures.extend(failed);
            slowest = slowest.max(took);
        }
        Ok((acked, failures, slowest))
    })
}

/// Every id in `tenant`'s shared scope, through the router's paginated list.
async fn list_all(router: &str, tenant: &str) -> anyhow::Result<Vec<String>> {
    let http = client();
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{router}/v1/tenants/{tenant}/memories?scope=shared&limit=1000");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let page: serde_json::Value = http.get(url).send().await?.json().await?;
        listed.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(listed),
        }
    }
}

/// Asserts every (tenant, id) in `expected` is listed exactly once and nothing else is.
async fn assert_exactly(router: &str, expected: &BTreeSet<(String, String)>) -> anyhow::Result<()> {
    let tenants: BTreeSet<&String> = expected.iter().map(|(t, _)| t).collect();
    let mut got = BTreeSet::new();
    for tenant in tenants {
        let listed = list_all(router, tenant).await?;
        let n = listed.len();
        got.extend(listed.into_iter().map(|id| (tenant.clone(), id)));
        assert_eq!(
            got.iter().filter(|(t, _)| t == tenant).count(),
            n,
            "{tenant}: a memory listed twice"
        );
    }
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "acknowledged writes missing: {missing:?}");
    assert_eq!(got.len(), expected.len(), "unexpected extra memories");
    Ok(())
}

async fn shardctl(control: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(binary("shardctl")?)
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Seeds `per` memories into each tenant's shared scope; returns them.
async fn seed(
    router: &str,
    tenants: &[String],
    per: usize,
) -> anyhow::Result<BTreeSet<(String, String)>> {
    let http = client();
    let mut all = BTreeSet::new();
    for tenant in tenants {
        // Batches of at most 1,000 items (the API's limit).
        for start in (0..per).step_by(1000) {
            let items: Vec<_> = (start..per.min(start + 1000))
                .map(|n| json!({"id": format!("pre{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.3)}))
                .collect();
            write_batch(&http, router, tenant, items).await?;
        }
        all.extend((0..per).map(|n| (tenant.clone(), format!("pre{n}"))));
    }
    Ok(all)
}

#[tokio::test]
async fn a_tenant_moves_under_write_load_without_losing_a_write() -> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 10).await?;
    let control = c.start_control().await?;
    let router = c.router(0);
    let http = client();

    // 3,000 memories to move.
    for chunk in 0..6 {
        let items: Vec<_> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                json!({"id": format!("pre{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": vector(8, n, 0.3)})
            })
            .collect();
        write_batch(&http, &router, TENANT, items).await?;
    }
    let store = c.etcd.store().await?;
    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse(TENANT)?, &Scope::Shared);
    let source = ring.owner(&partition).expect("owner").clone();
    let target =
        ring.layout().nodes.iter().find(|n| n.id != source.id).expect("another node").clone();

    // A steady write + search load, each write with a unique id, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let load = spawn_writer(
        router.clone(),
        vec![TENANT.to_owned()],
        stop.clone(),
        Load { written: written.clone(), ..Default::default() },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = tokio::process::Command::new(binary("shardctl")?)
        .args([
            "--control",
            &control.url(),
            "--json",
            "migrate",
            "--tenant",
            TENANT,
            "--scope",
            "shared",
            "--to",
            target.id.as_str(),
        ])
        .output()
        .await?;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("migration report: {reports}");
    assert_eq!(reports[0]["from"], source.id.as_str());
    assert_eq!(reports[0]["to"], target.id.as_str());

    // Keep writing after the flip until the load has done its share, however slow the machine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while written.load(Ordering::Relaxed) <= 100 && !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    let (acked, failures, slowest) = load.await??;
    let acked: Vec<String> = acked.into_iter().map(|(_, id)| id).collect();
    println!("{} writes acknowledged during the test; slowest write {slowest:?}", acked.len());
    assert!(acked.len() > 100, "the load ran");
    assert!(failures.is_empty(), "clients saw errors: {:?}", &failures[..failures.len().min(5)]);

    // Every acknowledged write is readable, exactly once, from the new owner only.
    let listed = list_all(&router, TENANT).await?;
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a memory listed twice");
    let expected: BTreeSet<String> =
        (0..3000).map(|n| format!("pre{n}")).chain(acked.iter().cloned()).collect();
    let got: BTreeSet<String> = listed.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "acknowledged writes missing: {missing:?}");
    assert_eq!(got.len(), expected.len());

    let name = partition.to_string();
    let src = c.shards.iter().find(|s| s.addr == source.addr).expect("source");
    let dst = c.shards.iter().find(|s| s.addr == target.addr).expect("target");
    assert!(!c.partitions_on(src).await?.contains(&name), "the source still holds the partition");
    assert!(c.partitions_on(dst).await?.contains(&name));
    let verify = tokio::process::Command::new(binary("shardctl")?)
        .args(["--control", &control.url(), "verify"])
        .output()
        .await?;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // The placement override keeps the tenant on its node across a later rebalance.
    let fourth = c.start_shard("shard-4").await?;
    c.shards.push(fourth);
    let (ok, out, err) = shardctl(&control.url(), &["--json", "rebalance"]).await?;
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["plan"]["joining"], json!(["shard-4"]));
    let pinned = partition.to_string();
    let moves = report["plan"]["moves"].as_array().expect("moves");
    assert!(moves.iter().all(|m| m["partition"] != pinned.as_str()), "the pinned tenant moved");
    let ring = Ring::new(store.load().await?.layout);
    assert!(ring.layout().node(&NodeId::parse("shard-4")?).is_some(), "shard-4 joined");
    assert_eq!(ring.owner(&partition).expect("owner").id, target.id);
    assert!(c.partitions_on(&c.shards[3]).await?.iter().all(|p| *p != pinned));
    c.wait_router_epoch(0, ring.epoch(), Duration::from_secs(5)).await?;
    let (status, _) = send_allowing_5xx(
        &http,
        reqwest::Method::GET,
        &format!("{router}/v1/tenants/{TENANT}/memories/pre7?scope=shared"),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}

/// The acceptance run: 200 writes/s (a search with every fifth) for 30 s over 40
/// tenants, with a new tenant every 20th write so partitions keep being created; a 4th node joins
/// and the cluster rebalances in the middle of it. Afterwards every acknowledged write is readable
/// exactly once, no partition has data on two nodes, nothing failed, and verify passes. Then a
/// node is drained.
#[tokio::test]
async fn a_rebalance_under_30_s_of_load_loses_nothing_and_a_drained_node_ends_empty()
-> anyhow::Result<()> {
    let mut c = EtcdCluster::start(3, 1, 10).await?;
    let control = c.start_control().await?;
    let router = c.router(0);
    let tenants: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let mut expected = seed(&router, &tenants, 50).await?;

    // shard-4 starts and is live, but not in the ring: the plan moves only what the new ring needs.
    let fourth = c.start_shard("shard-4").await?;
    c.shards.push(fourth);
    let (ok, out, err) = shardctl(&control.url(), &["--json", "rebalance", "--dry-run"]).await?;
    assert!(ok, "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(dry["plan"]["joining"], json!(["shard-4"]));
    let moves = dry["plan"]["moves"].as_array().expect("moves").clone();
    assert!(!moves.is_empty());
    assert!(moves.iter().all(|m| m["to"] == "shard-4"), "keys only move onto the new node");
    let (moved, ideal) = (
        dry["plan"]["moved_fraction"].as_f64().unwrap_or(0.0),
        dry["plan"]["ideal_fraction"].as_f64().unwrap_or(0.0),
    );
    println!(
        "rebalance plan: {} of 40 partitions move, {:.1}% of memories (ideal {:.1}%)",
        moves.len(),
        moved * 100.0,
        ideal * 100.0
    );
    assert_eq!(c.etcd.store().await?.load().await?.layout.epoch, 3, "a dry run changes nothing");

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = spawn_writer(
        router.clone(),
        tenants.clone(),
        stop.clone(),
        Load { per_sec: 200, fresh_every: 20, ..Default::default() },
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t = Instant::now();
    let (ok, out, err) = shardctl(&control.url(), &["rebalance"]).await?;
    let rebalance_took = t.elapsed();
    assert!(ok, "{err}\n{}", c.logs());
    println!("{out}");
    if let Some(rest) = Duration::from_secs(30).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Release);
    let (acked, failures, slowest) = load.await??;
    let fresh = acked.iter().filter(|(t, _)| t.starts_with("fresh")).count();
    println!(
        "30 s load: {} writes acknowledged ({:.0}/s, {fresh} of them first writes of new tenants), \
         slowest {slowest:?}; the rebalance took {rebalance_took:?}",
        acked.len(),
        acked.len() as f64 / started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "clients saw errors: {:?}", &failures[..failures.len().min(5)]);
    assert!(acked.len() >= 4_000, "the load did not run: {} writes in 30 s", acked.len());
    expected.extend(acked);
    assert_exactly(&router, &expected).await?;
    let mut holders: std::collections::BTreeMap<String, usize> = Default::default();
    for shard in &c.shards {
        for p in c.partitions_on(shard).await? {
            *holders.entry(p).or_default() += 1;
        }
    }
    let doubled: Vec<_> = holders.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "partitions on two nodes: {doubled:?}");
    assert!(!c.partitions_on(&c.shards[3]).await?.is_empty(), "the new node holds partitions");
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    let layout = c.etcd.store().await?.load().await?.layout;
    assert!(layout.pins.is_empty(), "no pins left behind: {:?}", layout.pins);
    assert!(!layout.creation_frozen, "the creation freeze was lifted");
    assert!(layout.pins.of(PinKind::Staging).next().is_none(), "{:?}", layout.pins);

    // Drain shard-2: it ends owning nothing, everything stays readable.
    let (ok, out, err) = shardctl(&control.url(), &["drain", "shard-2"]).await?;
    assert!(ok, "{err}");
    println!("{out}");
    let layout = c.etcd.store().await?.load().await?.layout;
    assert!(layout.node(&c.shard_id(1)).is_none(), "shard-2 left the ring");
    assert!(layout.states.draining().next().is_none() && layout.pins.is_empty());
    let on_drained: Vec<String> = c.partitions_on(&c.shards[1]).await?;
    assert!(on_drained.is_empty(), "shard-2 still holds {on_drained:?}");
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    assert_exactly(&router, &expected).await?;
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}

/// A partition first written while a rebalance is staged is not left behind on a node the new
/// ring no longer routes it to: its old owner creates it at once (the write does not wait), the
/// new node follows it, and once the change flips it lives on its new owner, readable, on no
/// other node.
#[tokio::test]
async fn a_partition_created_while_a_rebalance_is_staged_is_not_left_behind() -> anyhow::Result<()>
{
    let c = EtcdCluster::start(3, 1, 10).await?;
    let control = c.start_control().await?;
    let router = c.router(0);
    let mut expected = seed(&router, &["old".to_owned()], 5).await?;
    let fourth = c.start_shard("shard-4").await?;
    let store = c.etcd.store().await?;
    let next = store
        .load()
        .await?
        .layout
        .with_node(LayoutNode { id: NodeId::parse("shard-4")?, addr: fourth.addr.clone() });
    // A tenant the 4-node ring gives to the new node: created on an old node while the change
    // is staged, it must move with the change.
    let tenant = (0..1000)
        .map(|i| format!("new{i}"))
        .find(|t| {
            let p = PartitionKey::new(&TenantId::parse(t).expect("tenant"), &Scope::Shared);
            Ring::new(next.clone()).owner(&p).is_some_and(|o| o.id.as_str() == "shard-4")
        })
        .expect("some tenant maps to shard-4");

    let http = client();
    let failpoint = format!("{}/debug/v1/failpoints/reconcile.flip", control.url());
    let resp = http.post(&failpoint).body("pause").send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    let url = control.url();
    let rebalance = tokio::spawn(async move { shardctl(&url, &["rebalance"]).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flipping = memring_control::resize::pending(&store)
            .await?
            .is_some_and(|j| j.phase.name() == "flipping");
        if flipping {
            break;
        }
        assert!(Instant::now() < deadline, "the rebalance never staged its change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let staged = store.load().await?.layout;
    assert!(staged.transition.is_some(), "the change is staged: {staged:?}");
    c.wait_router_epoch(0, staged.epoch, Duration::from_secs(5)).await?;
    let (acked, failures, took) = one_write(client(), router.clone(), tenant.clone(), 1, 0).await?;
    assert!(failures.is_empty(), "{failures:?}");
    println!("the first write of {tenant}, while the change is staged, took {took:?}");
    let resp = http.post(&failpoint).body("off").send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    let (ok, out, err) = rebalance.await??;
    assert!(ok, "{out}{err}");
    expected.extend(acked);
    let layout = store.load().await?.layout;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(5)).await?;
    assert_exactly(&router, &expected).await?;
    let key = format!("{tenant}/shared");
    assert!(c.partitions_on(&fourth).await?.contains(&key), "{key} is not on its new owner");
    for shard in &c.shards {
        assert!(
            !c.partitions_on(shard).await?.contains(&key),
            "{key} left behind on {}",
            shard.addr
        );
    }
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}

#[tokio::test]
async fn a_control_plane_killed_at_any_step_finishes_the_migration_after_a_restart()
-> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 1, 10).await?;
    let mut control = c.start_control().await?;
    let router = c.router(0);
    let store = c.etcd.store().await?;
    let http = client();
    // The steps of the one engine (`reconcile.rs`) at R = 1, each with its journal phase.
    for (point, phase) in [("stage", "join"), ("flip", "lead"), ("end", "settle")] {
        let tenant = format!("fp-{phase}");
        let mut expected = seed(&router, std::slice::from_ref(&tenant), 400).await?;
        let partition = PartitionKey::new(&TenantId::parse(&tenant)?, &Scope::Shared);
        let ring = Ring::new(store.load().await?.layout);
        let source = ring.owner(&partition).expect("owner").clone();
        let target =
            ring.layout().nodes.iter().find(|n| n.id != source.id).expect("another").clone();

        let resp = http
            .post(format!("{}/debug/v1/failpoints/reconcile.{point}", control.url()))
            .body("pause")
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200, "control plane built without the testing feature?");
        let stop = Arc::new(AtomicBool::new(false));
        let load =
            spawn_writer(router.clone(), vec![tenant.clone()], stop.clone(), Load::default());
        let migrate = tokio::process::Command::new(binary("shardctl")?)
            .args([
                "--control",
                &control.url(),
                "migrate",
                "--tenant",
                &tenant,
                "--scope",
                "shared",
                "--to",
                target.id.as_str(),
            ])
            .output();
        let migrate = tokio::spawn(migrate);

        // Wait until the migration stands at the failpoint, then kill the control plane there.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let at: Vec<String> = memring_control::journal::pending(&store)
                .await?
                .into_iter()
                .map(|j| j.phase.to_string())
                .collect();
            if at.iter().any(|p| p == phase) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never reached {phase}: {at:?}\n{}",
                control.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        control.kill();
        let killed_cli = migrate.await??;
        assert!(!killed_cli.status.success(), "shardctl reports the lost control plane");
        control.start_again()?;
        control.wait_ready(Duration::from_secs(20)).await?;

        // The restarted control plane finishes the journaled migration by itself.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !memring_control::journal::pending(&store).await?.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{phase}: journal never emptied\n{}",
                control.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Release);
        let (acked, failures, slowest) = load.await??;
        println!(
            "killed at {phase}: {} writes acknowledged, {} refused, slowest {slowest:?}",
            acked.len(),
            failures.len()
        );
        assert!(
            failures.iter().all(|f| f.starts_with("write 503") || f.starts_with("search 503")),
            "{failures:?}"
        );
        expected.extend(acked);
        assert_exactly(&router, &expected).await?;
        let owner =
            Ring::new(store.load().await?.layout).owner(&partition).expect("owner").id.clone();
        assert_eq!(owner, target.id, "{phase}: the partition ends on the target");
        let src = c.shards.iter().find(|s| s.addr == source.addr).expect("source");
        assert!(
            !c.partitions_on(src).await?.contains(&partition.to_string()),
            "{phase}: the source copy is gone"
        );
        let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
        assert!(ok, "{phase}: {out}");
    }
    Ok(())
}

#[tokio::test]
async fn one_control_plane_is_active_and_a_standby_takes_over() -> anyhow::Result<()> {
    let c = EtcdCluster::start(3, 1, 10).await?;
    let mut active = c.start_control().await?;
    let addr = format!("127.0.0.1:{}", memring_tests::free_port());
    let mut standby = c.spawn_control("control-2", &addr)?;
    let http = client();
    // The standby serves health and reads, but is not ready and refuses changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{}/health", standby.url())).send().await.is_err() {
        assert!(Instant::now() < deadline, "standby never came up\n{}", standby.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http.get(format!("{}/ready", standby.url())).send().await?.status().as_u16(), 503);
    assert_eq!(
        http.get(format!("{}/v1/cluster", standby.url())).send().await?.status().as_u16(),
        200
    );
    let (ok, _, err) = shardctl(&standby.url(), &["rebalance"]).await?;
    assert!(!ok && err.contains("standby"), "{err}");

    active.kill();
    let killed = Instant::now();
    standby.wait_ready(Duration::from_secs(15)).await?;
    println!(
        "standby took over {:?} after the active control plane was killed (lease 2 s)",
        killed.elapsed()
    );
    let (ok, out, err) = shardctl(&standby.url(), &["rebalance", "--dry-run"]).await?;
    assert!(ok, "{out}{err}");
    Ok(())
}

#[tokio::test]
async fn the_copy_rate_limit_holds() -> anyhow::Result<()> {
    // Embedded ring store this time: the control plane works the same on one machine.
    let c = memring_tests::Cluster::start(3).await?;
    let control = c.start_control_with(&["--migration-rate", "2000"]).await?;
    let tenants = vec!["paced".to_owned()];
    seed(&c.url(), &tenants, 3000).await?;
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse("paced")?, &Scope::Shared);
    let owner = ring.owner(&partition).expect("owner").id.clone();
    let target = ring.layout().nodes.iter().find(|n| n.id != owner).expect("another").id.clone();
    let started = Instant::now();
    let (ok, out, err) = shardctl(
        &control.url(),
        &["--json", "migrate", "--tenant", "paced", "--to", target.as_str()],
    )
    .await?;
    assert!(ok, "{err}");
    let took = started.elapsed();
    let reports: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(reports[0]["count"], 3000);
    // 3,000 memories at 2,000/s: the new copy's last snapshot page is due at 1.5 s (pages of
    // 500 land every 0.25 s).
    assert!(took >= Duration::from_millis(1450), "copied faster than the limit: {took:?}");
    println!("3,000 memories at --migration-rate 2000 took {took:?}");
    assert!(memring_control::journal::pending(&store).await?.is_empty());
    Ok(())
}

/// A moved partition's new owner takes the old owner's HNSW graph with its copy
/// (`shard-node/src/replicate/sync.rs`, `take_graph`): it has a graph loaded as soon as the move
/// ends, without building one, and the same query gets the same answer from it.
#[tokio::test]
async fn a_moved_partition_takes_its_graph_with_it() -> anyhow::Result<()> {
    // An exact scan up to 100 vectors: 1,500 need a graph.
    let c = memring_tests::Cluster::start_with(2, &["--flat-limit", "100"]).await?;
    let control = c.start_control().await?;
    let http = client();
    let dims = 16;
    let point = |n: usize| -> Vec<f32> {
        (0..dims).map(|i| ((n * 31 + i * 17) as f32 * 0.37).sin()).collect()
    };
    for start in (0..1500).step_by(500) {
        let items: Vec<_> = (start..start + 500)
            .map(|n| json!({"id": format!("g{n}"), "scope": "shared", "content": format!("c{n}"), "embedding": point(n)}))
            .collect();
        write_batch(&http, &c.url(), "graph", items).await?;
    }
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse("graph")?, &Scope::Shared);
    let owner = ring.owner(&partition).expect("owner").clone();
    let target = ring.layout().nodes.iter().find(|n| n.id != owner.id).expect("another").clone();
    let graph_on = |addr: &str| {
        format!(
            "http://{addr}/internal/v1/migrate/{}/index",
            memring_common::api::partition_path(&partition)
        )
    };
    let query = json!({"embedding": point(7), "k": 10, "scopes": ["shared"]});
    let search = || async {
        let url = format!("{}/v1/tenants/graph/memories/search", c.url());
        let (status, v) = memring_tests::send(
            &http,
            reqwest::Method::POST,
            &url,
            Some(serde_json::to_vec(&query)?),
        )
        .await?;
        anyhow::ensure!(status == 200, "search answered {status}: {v}");
        let ids: Vec<String> = v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        anyhow::Ok(ids)
    };
    // The first search builds the old owner's graph in the background.
    memring_tests::load::wait_for("the old owner's graph", Duration::from_secs(60), || async {
        search().await?;
        let resp = http.get(graph_on(&owner.addr)).send().await?;
        Ok((resp.status().as_u16() == 200).then_some(()))
    })
    .await?;
    let before = search().await?;
    assert_eq!(before.len(), 10, "{before:?}");
    let target_proc = c.shards.iter().find(|s| s.addr == target.addr).expect("its process");
    let taken = || memring_tests::metric(target_proc, "memring_replication_graphs_taken_total");
    assert_eq!(taken().await?, 0.0);

    let (ok, out, err) =
        shardctl(&control.url(), &["migrate", "--tenant", "graph", "--to", target.id.as_str()])
            .await?;
    assert!(ok, "{out}{err}");
    assert_eq!(taken().await?, 1.0, "the new owner took the old owner's graph");
    let bytes = memring_tests::metric(target_proc, "memring_replication_graph_bytes_total").await?;
    assert!(bytes > 1500.0 * dims as f64 * 4.0, "a graph of 1,500 vectors: {bytes} bytes");
    // Loaded at once: the new owner exports its graph without having searched.
    let resp = http.get(graph_on(&target.addr)).send().await?;
    assert_eq!(resp.status().as_u16(), 200, "the new owner has no graph loaded");
    let after = search().await?;
    assert_eq!(after, before, "the same graph gives the same answer");
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}

/// `shardctl cancel` stops a migration mid-copy: the target's partial copy is dropped, the
/// source keeps owning every memory, the journal is empty and verify passes.
#[tokio::test]
async fn a_cancelled_migration_leaves_the_source_owning_everything() -> anyhow::Result<()> {
    let c = memring_tests::Cluster::start(3).await?;
    let control = c.start_control_with(&["--migration-rate", "1000"]).await?;
    let (ok, _, err) = shardctl(&control.url(), &["cancel"]).await?;
    assert!(!ok && err.contains("no migration is running"), "{err}");
    let tenants = vec!["slow".to_owned()];
    let expected = seed(&c.url(), &tenants, 4000).await?;
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let epoch = store.load().await?.layout.epoch;
    let ring = Ring::new(store.load().await?.layout);
    let partition = PartitionKey::new(&TenantId::parse("slow")?, &Scope::Shared);
    let owner = ring.owner(&partition).expect("owner").id.clone();
    let target = ring.layout().nodes.iter().find(|n| n.id != owner).expect("another").clone();
    let url = control.url();
    let to = target.id.to_string();
    // 4,000 memories at 1,000/s: the copy takes ~4 s, time enough to cancel it.
    let migrate =
        tokio::spawn(
            async move { shardctl(&url, &["migrate", "--tenant", "slow", "--to", &to]).await },
        );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !memring_control::journal::pending(&store).await?.iter().any(|j| j.phase.name() == "join")
    {
        assert!(Instant::now() < deadline, "the migration never started copying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (ok, out, err) = shardctl(&control.url(), &["cancel"]).await?;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = migrate.await??;
    assert!(!ok, "a cancelled migration must exit non-zero");
    assert!(err.contains("cancelled"), "{err}");
    let layout = store.load().await?.layout;
    // Staged, then undone: the layout is the one before the move, two epochs on.
    assert_eq!(layout.epoch, epoch + 2, "staged and undone, nothing flipped");
    assert!(layout.transition.is_none() && layout.pins.is_empty(), "{layout:?}");
    let owner_now = Ring::new(layout).owner(&partition).expect("owner").id.clone();
    assert_eq!(owner_now, owner, "the source still owns the partition");
    assert!(memring_control::journal::pending(&store).await?.is_empty(), "journal cleared");
    let held = memring_tests::partitions_at(&target.addr).await?;
    assert!(!held.iter().any(|p| p == "slow/shared"), "the target kept a partial copy: {held:?}");
    assert_exactly(&c.url(), &expected).await?;
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}

/// A rebalance cancelled while its new node fills is undone (the new node leaves the layout
/// again, the old sets never stopped leading): every partition is readable where its data is,
/// verify passes, and running the rebalance again finishes it.
#[tokio::test]
async fn a_cancelled_rebalance_is_finished_by_running_it_again() -> anyhow::Result<()> {
    let c = memring_tests::Cluster::start(3).await?;
    let control = c.start_control_with(&["--migration-rate", "400"]).await?;
    let tenants: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    let expected = seed(&c.url(), &tenants, 200).await?;
    let _fourth = c.start_shard("shard-4", &["--join-ring", "false"]).await?;
    let store = memring_common::store::embedded::EmbeddedStore::open(c.ring_dir())?;
    let url = control.url();
    let rebalance = tokio::spawn(async move { shardctl(&url, &["rebalance"]).await });
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = store.load().await?.layout;
    while memring_control::resize::pending(&store)
        .await?
        .is_none_or(|j| j.phase.name() != "flipping")
    {
        assert!(Instant::now() < deadline, "the rebalance never started filling");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out, err) = shardctl(&control.url(), &["cancel"]).await?;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = rebalance.await??;
    assert!(!ok && err.contains("cancelled"), "{err}");
    // Cancelled before its flip: undone, the old sets never stopped leading.
    let layout = store.load().await?.layout;
    assert!(layout.transition.is_none(), "{:?}", layout.transition);
    assert_eq!(layout.nodes, before.nodes, "shard-4 was taken out again");
    assert!(memring_control::resize::pending(&store).await?.is_none());
    assert_exactly(&c.url(), &expected).await?;
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");

    let (ok, out, err) = shardctl(&control.url(), &["rebalance"]).await?;
    assert!(ok, "{out}{err}");
    let layout = store.load().await?.layout;
    assert!(layout.pins.is_empty(), "{layout:?}");
    assert_exactly(&c.url(), &expected).await?;
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    Ok(())
}

/// Rebalancing without an operator (`control-plane/src/autopilot.rs`): with auto-rebalance on
/// and R = 3, a fourth node started under write load is admitted and given its copies with no
/// command; the copies moved are within 1.1× of the new node's ring share (2,040 partitions, so
/// the sample is tight); every acknowledged write is readable exactly once and verify is clean.
/// Switched off, a fifth node that registers stays out of the ring.
#[tokio::test]
async fn a_node_that_registers_is_admitted_without_an_operator() -> anyhow::Result<()> {
    use memring_tests::load::{set_replication, wait_for, wait_verified};
    let mut c = EtcdCluster::start(3, 1, 10).await?;
    set_replication(&c.etcd.url, 3).await?;
    let flags = ["--auto-rebalance", "true", "--auto-rebalance-settle-secs", "1"];
    let control = c.start_control_with(&flags).await?;
    let store = c.etcd.store().await?;
    wait_for("the layout's auto_rebalance on", Duration::from_secs(20), || async {
        Ok(store.load().await?.layout.auto_rebalance.then_some(()))
    })
    .await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    let router = c.router(0);
    let small: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
    let loaded: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let mut expected = seed(&router, &small, 1).await?;
    expected.extend(seed(&router, &loaded, 20).await?);

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_writer(
        router.clone(),
        loaded.clone(),
        stop.clone(),
        // A write may meet a quorum timeout (503) while the new node pulls every log it joins;
        // the load sends it again as clients do, and every acknowledged write is checked below.
        Load { per_sec: 100, fresh_every: 20, retries: 5, ..Default::default() },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fourth = c.start_shard("shard-4").await?;
    c.shards.push(fourth);
    let cluster = format!("{}/v1/cluster", control.url());
    let run = wait_for("the autopilot's run admitting shard-4", Duration::from_secs(120), || {
        let cluster = cluster.clone();
        async move {
            let view: serde_json::Value = client().get(&cluster).send().await?.json().await?;
            let last = view["autopilot"]["history"].as_array().and_then(|h| h.last()).cloned();
            Ok(last.filter(|_| view["autopilot"]["running"] == false))
        }
    })
    .await?;
    stop.store(true, Ordering::Release);
    let (acked, failures, slowest) = load.await??;
    println!(
        "autopilot run: {run}\nload: {} writes acknowledged, slowest {slowest:?}",
        acked.len()
    );
    assert_eq!(run["error"], serde_json::Value::Null, "{run}\n{}", c.logs());
    assert_eq!(run["joining"], json!(["shard-4"]), "{run}");
    let (moved, ideal) = (
        run["moved_fraction"].as_f64().unwrap_or(0.0),
        run["ideal_fraction"].as_f64().unwrap_or(0.0),
    );
    assert!(ideal > 0.1 && moved > 0.0, "{run}");
    assert!(moved <= 1.1 * ideal, "moved {moved:.3} of the copies, ideal {ideal:.3}: {run}");
    assert!(failures.is_empty(), "clients saw errors: {:?}", &failures[..failures.len().min(5)]);
    assert!(acked.len() >= 200, "the load did not run: {} writes", acked.len());
    let layout = store.load().await?.layout;
    assert!(layout.node(&c.shard_id(3)).is_some(), "shard-4 is in the layout");
    wait_verified(&control, Duration::from_secs(60)).await?;
    let layout = store.load().await?.layout;
    let joining: Vec<_> = layout.states.joining().collect();
    assert!(joining.is_empty(), "shard-4 leads its share: {joining:?}");
    assert!(!c.partitions_on(&c.shards[3]).await?.is_empty(), "the new node holds copies");
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(10)).await?;
    expected.extend(acked);
    assert_exactly(&router, &expected).await?;

    // Off: a node that registers now waits for an operator.
    let (ok, out, err) = shardctl(&control.url(), &["auto-rebalance", "off"]).await?;
    assert!(ok, "{out}{err}");
    assert!(!store.load().await?.layout.auto_rebalance);
    let fifth = c.start_shard("shard-5").await?;
    c.shards.push(fifth);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(store.load().await?.layout.node(&c.shard_id(4)).is_none(), "admitted while off");
    // The plan shows it waiting, the rebalance that would admit it, and that nothing happens
    // until an operator runs it.
    let (ok, out, err) = shardctl(&control.url(), &["--json", "plan"]).await?;
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(plan["waiting"], json!(["shard-5"]), "{plan}");
    assert_eq!(plan["join"]["joining"], json!(["shard-5"]), "{plan}");
    assert!(plan["join"]["moves"].as_array().is_some_and(|m| !m.is_empty()), "{plan}");
    assert!(plan["next"].as_str().is_some_and(|n| n.contains("shardctl rebalance")), "{plan}");
    let (ok, status, err) = shardctl(&control.url(), &["status"]).await?;
    assert!(ok, "{err}");
    assert!(status.contains("auto-rebalance off"), "{status}");
    Ok(())
}

/// Placement by size (`control-plane/src/autopilot.rs`, R = 1): with a policy of 1,500 memories
/// and one dedicated node, a tenant that grows past it under write load moves, both its scopes,
/// onto the dedicated node with no failed write; the node holds nothing else; when the tenant
/// shrinks below 500 it returns to the ring. Every acknowledged write stays readable exactly once.
#[tokio::test]
async fn a_tenant_that_grows_past_the_size_policy_gets_its_own_node_and_returns_when_it_shrinks()
-> anyhow::Result<()> {
    use memring_tests::load::wait_for;
    let mut c = EtcdCluster::start(3, 1, 10).await?;
    let flags = ["--auto-rebalance", "true", "--auto-rebalance-settle-secs", "1"];
    let control = c.start_control_with(&flags).await?;
    let store = c.etcd.store().await?;
    // A node in the layout cannot become dedicated (its ring share holds data): 409.
    let (ok, _, err) = shardctl(
        &control.url(),
        &["policy", "set", "--dedicate-at", "1500", "--release-below", "500", "--node", "shard-1"],
    )
    .await?;
    assert!(!ok && err.contains("in the layout"), "{err}");
    // Named before it starts, the fourth node joins with no ring share.
    let (ok, out, err) = shardctl(
        &control.url(),
        &["policy", "set", "--dedicate-at", "1500", "--release-below", "500", "--node", "shard-4"],
    )
    .await?;
    assert!(ok, "{out}{err}");
    let fourth = c.start_shard("shard-4").await?;
    c.shards.push(fourth);
    let four = c.shard_id(3);
    wait_for("shard-4 admitted", Duration::from_secs(60), || async {
        Ok(store.load().await?.layout.node(&four).is_some().then_some(()))
    })
    .await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(10)).await?;
    assert!(c.partitions_on(&c.shards[3]).await?.is_empty(), "a dedicated node gets no share");

    let router = c.router(0);
    let http = client();
    let mut tenants: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let mut expected = seed(&router, &tenants, 30).await?;
    expected.extend(seed(&router, &["whale".to_owned()], 200).await?);
    let agent: Vec<_> = (0..50)
        .map(|n| json!({"id": format!("a{n}"), "scope": "agent:w", "content": "x", "embedding": vector(8, n, 0.2)}))
        .collect();
    write_batch(&http, &router, "whale", agent).await?;
    tenants.push("whale".to_owned());
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_writer(
        router.clone(),
        tenants.clone(),
        stop.clone(),
        Load { per_sec: 100, ..Default::default() },
    );
    // The whale grows past the policy.
    for chunk in 0..2 {
        let items: Vec<_> = (chunk * 700..(chunk + 1) * 700)
            .map(|n| json!({"id": format!("grow{n}"), "scope": "shared", "content": "g", "embedding": vector(8, n, 0.4)}))
            .collect();
        write_batch(&http, &router, "whale", items).await?;
    }
    let (shared, agent) = ("whale/shared".parse()?, "whale/agent:w".parse()?);
    let on_four = |l: &memring_common::ClusterLayout, p: &PartitionKey| {
        l.pins.node(p) == Some(&c.shard_id(3)) && l.pins.is(p, PinKind::Policy)
    };
    wait_for("the whale on its dedicated node", Duration::from_secs(90), || async {
        let l = store.load().await?.layout;
        let both_there = c.partitions_on(&c.shards[3]).await?.len() == 2;
        Ok((on_four(&l, &shared) && on_four(&l, &agent) && both_there).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    let mut held = c.partitions_on(&c.shards[3]).await?;
    held.sort();
    assert_eq!(held, ["whale/agent:w", "whale/shared"], "the dedicated node holds only the whale");
    let (ok, status, _) = shardctl(&control.url(), &["status"]).await?;
    assert!(ok && status.contains("shard-4 (whale)"), "{status}");

    // It shrinks below the release size: back to the ring.
    for n in 0..1400 {
        let url = format!("{router}/v1/tenants/whale/memories/grow{n}?scope=shared");
        let status = http.delete(url).send().await?.status().as_u16();
        assert_eq!(status, 204, "delete grow{n}");
    }
    wait_for("the whale back in the ring", Duration::from_secs(90), || async {
        let l = store.load().await?.layout;
        // The source's copy is dropped just after each flip.
        let left = c.partitions_on(&c.shards[3]).await?.is_empty();
        Ok((l.pins.is_empty() && left).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    stop.store(true, Ordering::Release);
    let (acked, failures, slowest) = load.await??;
    println!("load: {} writes acknowledged, slowest {slowest:?}", acked.len());
    assert!(failures.is_empty(), "clients saw errors: {:?}", &failures[..failures.len().min(5)]);
    expected.extend(acked);
    let layout = store.load().await?.layout;
    c.wait_router_epoch(0, layout.epoch, Duration::from_secs(10)).await?;
    assert_exactly(&router, &expected).await?;
    let url = format!("{router}/v1/tenants/whale/memories?scope=agent:w&limit=1000");
    let page: serde_json::Value = http.get(url).send().await?.json().await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(50), "the whale's second scope");
    let (ok, out, _) = shardctl(&control.url(), &["verify"]).await?;
    assert!(ok, "{out}");
    let (ok, out, err) = shardctl(&control.url(), &["--json", "plan"]).await?;
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(plan["next"], serde_json::Value::Null, "nothing left to do: {plan}");
    assert_eq!(plan["size_policy"]["dedicate_at_memories"], 1500, "{plan}");
    assert_eq!(plan["size_policy"].get("dedicate_at_bytes"), None, "{plan}");

    // A threshold in bytes: refused when it cannot work, kept and shown when it can.
    let bytes = ["policy", "set", "--dedicate-at-bytes", "1000", "--node", "shard-4"];
    let (ok, _, err) =
        shardctl(&control.url(), &[&bytes[..], &["--release-below-bytes", "2000"]].concat())
            .await?;
    assert!(!ok && err.contains("release_below_bytes"), "{err}");
    let big = ["policy", "set", "--dedicate-at-bytes", "1000000000000", "--node", "shard-4"];
    let (ok, out, err) = shardctl(&control.url(), &big).await?;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = shardctl(&control.url(), &["--json", "plan"]).await?;
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(plan["size_policy"]["dedicate_at_bytes"], 1_000_000_000_000u64, "{plan}");
    assert_eq!(plan["size_policy"]["release_below_bytes"], 500_000_000_000u64, "{plan}");
    assert_eq!(plan["size_policy"]["dedicate_at_memories"], 0, "{plan}");
    let (ok, out, _) = shardctl(&control.url(), &["plan"]).await?;
    assert!(ok && out.contains("1000000000000 bytes and up on shard-4"), "{out}");
    Ok(())
}
