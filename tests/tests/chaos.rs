//! A randomized fault test: real etcd, four real shard nodes with R = 3, W = 2 and 3 s leases, a
//! router and a control plane, writers on eight tenants whose every acknowledged write is read
//! back at the end — and, in a seeded random order, the faults a replicated cluster meets:
//!
//! - a primary SIGKILLed, or SIGSTOPped past its lease, then back;
//! - both followers of a busy partition paused while its primary commits writes nobody can
//!   acknowledge, then the primary killed or paused (the lost write of the terms issue);
//! - etcd killed for a few seconds;
//! - the control plane SIGKILLed in the middle of a replicated drain or rebalance, and started
//!   again (the journal finishes the job);
//! - two nodes killed at once.
//!
//! It prints its seed; `MEMRING_CHAOS_SEED=<seed>` replays the same order and choices, and
//! `MEMRING_CHAOS_SECS` sets how long faults keep coming (default: each kind twice, about a
//! minute and a half; `make chaos` runs it for longer).

use std::time::{Duration, Instant};

use memring_common::store::RingStore;
use memring_common::{ClusterLayout, NodeId, PartitionKey, Ring};
use memring_tests::etcd::EtcdCluster;
use memring_tests::load::{set_replication, start_writers, stop_writers, wait_for};
use memring_tests::{Proc, binary, client};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillPrimary,
    PausePrimary,
    FollowersPausedWhilePrimaryCommits,
    KillEtcd,
    KillControlMidJob,
    TwoNodesAtOnce,
}

const ALL: [Fault; 6] = [
    Fault::KillPrimary,
    Fault::PausePrimary,
    Fault::FollowersPausedWhilePrimaryCommits,
    Fault::KillEtcd,
    Fault::KillControlMidJob,
    Fault::TwoNodesAtOnce,
];

const LEASE: Duration = Duration::from_secs(3);

struct Chaos {
    c: EtcdCluster,
    store: memring_common::store::etcd::EtcdStore,
    control: Proc,
    rng: StdRng,
    tenants: Vec<String>,
    /// The node a drain last took out (the next control-plane fault rebalances it back in).
    drained: Option<usize>,
}

impl Chaos {
    async fn layout(&self) -> anyhow::Result<ClusterLayout> {
        Ok(self.store.load().await?.layout)
    }

    fn index(&self, id: &NodeId) -> usize {
        (0..self.c.shards.len()).find(|i| self.c.shard_id(*i) == *id).unwrap_or(0)
    }

    /// A random writer's partition and its replica set (shard indexes, owner first).
    async fn busy_set(&mut self) -> anyhow::Result<(PartitionKey, Vec<usize>)> {
        let tenant = self.tenants[self.rng.random_range(0..self.tenants.len())].clone();
        let p: PartitionKey = format!("{tenant}/shared").parse()?;
        let ring = Ring::new(self.layout().await?);
        let set = ring.replicas(&p).iter().map(|n| self.index(&n.id)).collect();
        Ok((p, set))
    }

    /// Waits until no node is down, joining or draining and no job is journaled: the cluster
    /// has healed. Meanwhile it supervises the control plane: one that lost its leadership lease
    /// (etcd was away) exits to be started again as a standby, and is.
    async fn healed(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.control.has_exited() {
                self.control.start_again()?;
                self.control.wait_ready(Duration::from_secs(30)).await?;
            }
            if let (Ok(l), Ok(jobs)) = (self.layout().await, self.store.jobs().await)
                && l.states.all_active()
                && jobs.is_empty()
            {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(90),
                "the cluster did not heal within 90 s\n{}",
                self.c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn marked_down(&self, i: usize) -> anyhow::Result<()> {
        let id = self.c.shard_id(i);
        wait_for("the node marked down", Duration::from_secs(30), || async {
            Ok(self.layout().await?.states.get(&id).is_marked_down().then_some(()))
        })
        .await
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if !self.c.shards[i].is_running() {
            self.c.shards[i].start_again()?;
        }
        self.c.shards[i].wait_ready(Duration::from_secs(30)).await
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<String> {
        Ok(match fault {
            Fault::KillPrimary | Fault::PausePrimary => {
                let (p, set) = self.busy_set().await?;
                let primary = set[0];
                if fault == Fault::KillPrimary {
                    self.c.shards[primary].kill();
                } else {
                    self.c.shards[primary].pause()?;
                }
                self.marked_down(primary).await?;
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..2000))).await;
                if fault == Fault::PausePrimary {
                    self.c.shards[primary].resume()?;
                }
                self.restart(primary).await?;
                format!("{fault:?} shard-{} (primary of {p})", primary + 1)
            }
            Fault::FollowersPausedWhilePrimaryCommits => {
                let (p, set) = self.busy_set().await?;
                let (primary, followers) = (set[0], [set[1], set[2]]);
                for f in followers {
                    self.c.shards[f].pause()?;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let kill = self.rng.random_bool(0.5);
                if kill {
                    self.c.shards[primary].kill();
                } else {
                    self.c.shards[primary].pause()?;
                }
                for f in followers {
                    self.c.shards[f].resume()?;
                }
                self.marked_down(primary).await?;
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(500..2500))).await;
                if !kill {
                    self.c.shards[primary].resume()?;
                }
                self.restart(primary).await?;
                let how = if kill { "killed" } else { "paused" };
                format!(
                    "followers of {p} paused 1 s while shard-{} committed, then {how}",
                    primary + 1
                )
            }
            Fault::KillEtcd => {
                let down = Duration::from_millis(self.rng.random_range(1000..4000));
                self.c.etcd.proc.kill();
                tokio::time::sleep(down).await;
                self.c.etcd.proc.start_again()?;
                self.c.etcd.proc.wait_ready(Duration::from_secs(30)).await?;
                format!("etcd killed for {} ms", down.as_millis())
            }
            Fault::KillControlMidJob => {
                let (what, node) = match self.drained.take() {
                    Some(i) => ("rebalance".to_owned(), i),
                    None => {
                        let i = self.rng.random_range(0..self.c.shards.len());
                        (format!("drain shard-{}", i + 1), i)
                    }
                };
                let mut job = tokio::process::Command::new(binary("shardctl")?);
                job.arg("--control").arg(self.control.url());
                job.args(what.split(' '));
                job.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                let mut running = job.spawn()?;
                let after = Duration::from_millis(self.rng.random_range(100..2500));
                tokio::time::sleep(after).await;
                self.control.kill();
                let _ = running.kill().await;
                self.control.start_again()?;
                self.control.wait_ready(Duration::from_secs(30)).await?;
                let id = self.c.shard_id(node);
                let draining = what.starts_with("drain");
                let done = |l: &ClusterLayout| {
                    (l.node(&id).is_some() != draining)
                        && l.states.joining().next().is_none()
                        && l.states.draining().next().is_none()
                };
                let finished =
                    wait_for("the journaled job to finish", Duration::from_secs(90), || async {
                        let jobs = self.store.jobs().await?;
                        Ok(jobs.is_empty().then_some(self.layout().await?))
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{what}: {e}\n{}", self.c.logs()))?;
                if !done(&finished) {
                    // Killed before it staged anything: nothing happened; run it again.
                    let args: Vec<&str> = what.split(' ').collect();
                    memring_tests::shardctl(&self.control, &args).await?;
                }
                wait_for("the job's layout change to settle", Duration::from_secs(90), || async {
                    Ok(done(&self.layout().await?).then_some(()))
                })
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}\n{}", self.c.logs()))?;
                if draining {
                    self.drained = Some(node);
                }
                format!("control plane SIGKILLed {} ms into `shardctl {what}`", after.as_millis())
            }
            Fault::TwoNodesAtOnce => {
                let layout = self.layout().await?;
                let mut members: Vec<usize> =
                    layout.nodes.iter().map(|n| self.index(&n.id)).collect();
                members.shuffle(&mut self.rng);
                let (a, b) = (members[0], members[1]);
                self.c.shards[a].kill();
                self.c.shards[b].kill();
                self.marked_down(a).await?;
                self.marked_down(b).await?;
                self.restart(a).await?;
                self.restart(b).await?;
                format!("shard-{} and shard-{} killed at once", a + 1, b + 1)
            }
        })
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_random_faults() -> anyhow::Result<()> {
    let seed = std::env::var("MEMRING_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>() % 1_000_000);
    let budget = std::env::var("MEMRING_CHAOS_SECS").ok().and_then(|s| s.parse().ok());
    println!("chaos seed {seed} (MEMRING_CHAOS_SEED={seed} replays it)");
    let c = EtcdCluster::start(4, 1, LEASE.as_secs()).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, 3).await?;
    let control = c.start_control_with(&["--replace-after-secs", "0"]).await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(5)).await?;
    let tenants: Vec<String> = (0..8).map(|t| format!("chaos{t}")).collect();
    let mut chaos =
        Chaos { c, store, control, rng: StdRng::seed_from_u64(seed), tenants, drained: None };
    let (stop, t0, writers) = start_writers(&chaos.c.router(0), chaos.tenants.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every kind twice (a drain, then a rebalance back), in a seeded order; then, with a budget,
    // random ones until it is spent.
    let mut order: Vec<Fault> = ALL.iter().chain(ALL.iter()).copied().collect();
    order.shuffle(&mut chaos.rng);
    let started = Instant::now();
    let mut done = Vec::new();
    let mut i = 0;
    loop {
        let fault = match (order.get(i), budget) {
            (Some(f), _) => *f,
            (None, Some(secs)) if started.elapsed() < Duration::from_secs(secs) => {
                ALL[chaos.rng.random_range(0..ALL.len())]
            }
            _ => break,
        };
        i += 1;
        let at = t0.elapsed();
        let what = chaos.inject(fault).await.map_err(|e| {
            anyhow::anyhow!("seed {seed}, fault {i} {fault:?}: {e:#}\n{}", chaos.c.logs())
        })?;
        chaos.healed().await.map_err(|e| anyhow::anyhow!("seed {seed}, after {what}: {e:#}"))?;
        println!("  {:>6.1} s  {what}", at.as_secs_f64());
        done.push(what);
    }
    if let Some(node) = chaos.drained.take() {
        // Bring the drained node back so every node ends in the layout (and verify sees it).
        let out = memring_tests::shardctl(&chaos.control, &["rebalance"]).await;
        anyhow::ensure!(out.is_ok(), "rebalancing shard-{} back in: {out:?}", node + 1);
        chaos.healed().await?;
    }
    let seen = stop_writers(&stop, writers, || chaos.c.logs()).await?;
    let acked: Vec<&(String, String, String)> = seen.iter().flat_map(|s| &s.acked).collect();
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    memring_tests::load::wait_verified(&chaos.control, Duration::from_secs(90)).await?;
    let http = client();
    let mut lost = Vec::new();
    for (tenant, id, content) in &acked {
        let url = format!("{}/v1/tenants/{tenant}/memories/{id}?scope=shared", chaos.c.router(0));
        let v: Value = http.get(url).send().await?.json().await?;
        if v["content"] != content.as_str() {
            lost.push(format!("{tenant}/{id}: {v}"));
        }
    }
    println!(
        "chaos seed {seed}: {} faults in {:.0} s, {} writes acknowledged, {failed} failed \
         (503/timeout), lost {}",
        done.len(),
        t0.elapsed().as_secs_f64(),
        acked.len(),
        lost.len()
    );
    anyhow::ensure!(
        lost.is_empty(),
        "seed {seed}: acknowledged writes lost: {lost:?}\n{}",
        chaos.c.logs()
    );
    Ok(())
}
