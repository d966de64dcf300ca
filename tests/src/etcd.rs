//! Cluster mode in tests: a real etcd (Debian's `etcd-server`) on free loopback ports with a
//! temporary data directory, shard nodes and routers pointed at it, and the layout changed
//! through the same `RingStore` API the control plane uses.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use memring_common::NodeId;
use memring_common::layout::LayoutNode;
use memring_common::store::etcd::EtcdStore;
use memring_common::store::{RingStore, update_layout};

use crate::{Proc, binary, client, free_port, send};

/// A private etcd.
pub struct Etcd {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// With etcd's authentication on: memring's user, its password and the password's file.
    pub user: Option<(String, String, std::path::PathBuf)>,
}

impl Etcd {
    /// Starts etcd with its data under `dir/etcd` and waits until it is healthy.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let etcd = which("etcd")
            .context("etcd is not installed; `make test` installs Debian's etcd-server")?;
        let (client_port, peer_port) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name".into(),
            "t".into(),
            "--data-dir".into(),
            dir.join("etcd").display().to_string(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("t={peer}"),
            "--initial-cluster-state".into(),
            "new".into(),
        ];
        let mut proc = Proc::start("etcd", &etcd, args, format!("127.0.0.1:{client_port}"), dir)?
            .with_ready_path("/health");
        proc.wait_ready(Duration::from_secs(30)).await?;
        Ok(Self { proc, url, user: None })
    }

    /// A store client on this etcd (as memring's user once authentication is on).
    pub async fn store(&self) -> anyhow::Result<EtcdStore> {
        let user = self.user.as_ref().map(|(name, password, _)| (name.clone(), password.clone()));
        Ok(EtcdStore::connect_as(std::slice::from_ref(&self.url), "/memring/", user).await?)
    }

    /// The flags that point a memring process at this etcd, with its user if authentication
    /// is on.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--etcd".to_owned(), self.url.clone()];
        if let Some((name, _, file)) = &self.user {
            flags.extend(["--etcd-user".to_owned(), name.clone()]);
            flags.extend(["--etcd-password-file".to_owned(), file.display().to_string()]);
        }
        flags
    }

    /// Switches etcd's authentication on: a `root` user, and a `memring` user whose role may
    /// read and write only keys under `/memring/`; its password goes to a file in `dir`.
    pub async fn enable_auth(&mut self, dir: &Path) -> anyhow::Result<()> {
        use etcd_client::{Client, Permission};
        let mut client = Client::connect([self.url.as_str()], None).await?;
        let (root, mine) = (format!("root-{}", rand_suffix()), format!("mr-{}", rand_suffix()));
        client.user_add("root", root.as_str(), None).await?;
        let _ = client.role_add("root").await;
        client.user_grant_role("root", "root").await?;
        client.role_add("memring").await?;
        client
            .role_grant_permission("memring", Permission::read_write("/memring/").with_prefix())
            .await?;
        client.user_add("memring", mine.as_str(), None).await?;
        client.user_grant_role("memring", "memring").await?;
        client.auth_enable().await?;
        let file = dir.join("etcd-password");
        std::fs::write(&file, format!("{mine}\n"))?;
        self.user = Some(("memring".to_owned(), mine, file));
        Ok(())
    }
}

fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// What shard nodes of a test cluster get by default: they trim their logs after one second (so
/// every replication, failover and migration test runs with logs trimmed under it, and copies
/// re-seeded where they fall behind), where production keeps ten minutes; and a migration's or a
/// re-seed's pin of a log holds 10 s after its last read, not five minutes (in production the
/// kept window outlasts a re-seed's pin; here it would hold every log it touched untrimmed for
/// the rest of a test).
pub const TEST_SHARD_FLAGS: &[&str] = &["--log-keep-secs", "1", "--log-pin-secs", "10"];

/// etcd, `n` shard nodes in the layout, and `routers` routers, all on loopback.
pub struct EtcdCluster {
    /// Temporary directory with every data dir and log.
    pub dir: tempfile::TempDir,
    /// The etcd.
    pub etcd: Etcd,
    /// Shard nodes, `shard-1`…
    pub shards: Vec<Proc>,
    /// Routers.
    pub routers: Vec<Proc>,
    lease_ttl_secs: u64,
    /// The cluster token file every process gets (internal authentication is on, as in
    /// production; [`crate::client`] sends the token).
    pub token_file: std::path::PathBuf,
    /// Whether processes check and send the cluster token (off only to measure what it costs).
    internal_auth: bool,
    /// Flags every shard node started here gets ([`TEST_SHARD_FLAGS`] unless given others).
    shard_flags: Vec<String>,
}

impl EtcdCluster {
    /// Starts everything and puts the shards into the layout (epoch = `n`).
    pub async fn start(n: usize, routers: usize, lease_ttl_secs: u64) -> anyhow::Result<Self> {
        Self::start_on(n, routers, lease_ttl_secs, false, true, &[]).await
    }

    /// [`EtcdCluster::start`] with flags for every shard node (also those started later).
    pub async fn start_with_shard_flags(
        n: usize,
        routers: usize,
        lease_ttl_secs: u64,
        shard_flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_on(n, routers, lease_ttl_secs, false, true, shard_flags).await
    }

    /// [`EtcdCluster::start_with_shard_flags`] with internal authentication off everywhere (to
    /// measure its cost).
    pub async fn start_without_internal_auth(
        n: usize,
        routers: usize,
        lease_ttl_secs: u64,
        shard_flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_on(n, routers, lease_ttl_secs, false, false, shard_flags).await
    }

    /// [`EtcdCluster::start`] with etcd's authentication on (every process as memring's user).
    pub async fn start_authenticated(
        n: usize,
        routers: usize,
        lease_ttl_secs: u64,
    ) -> anyhow::Result<Self> {
        Self::start_on(n, routers, lease_ttl_secs, true, true, &[]).await
    }

    async fn start_on(
        n: usize,
        routers: usize,
        lease_ttl_secs: u64,
        etcd_auth: bool,
        internal_auth: bool,
        shard_flags: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut etcd = Etcd::start(dir.path()).await?;
        if etcd_auth {
            etcd.enable_auth(dir.path()).await?;
        }
        let token_file = crate::write_cluster_token(dir.path())?;
        let mut cluster = Self {
            dir,
            etcd,
            shards: Vec::new(),
            routers: Vec::new(),
            lease_ttl_secs,
            token_file,
            internal_auth,
            shard_flags: if shard_flags.is_empty() { TEST_SHARD_FLAGS } else { shard_flags }
                .iter()
                .map(|f| f.to_string())
                .collect(),
        };
        for i in 1..=n {
            let shard = cluster.start_shard(&format!("shard-{i}")).await?;
            cluster.shards.push(shard);
        }
        let store = cluster.etcd.store().await?;
        for shard in &cluster.shards {
            add_to_layout(&store, shard).await?;
        }
        for _ in 0..routers {
            cluster.add_router(&[]).await?;
        }
        for r in 0..routers {
            cluster.wait_router_epoch(r, n as u64, Duration::from_secs(10)).await?;
        }
        Ok(cluster)
    }

    /// The flags that give a process the cluster token (or switch internal auth off).
    pub fn token_flags(&self) -> Vec<String> {
        if self.internal_auth {
            vec!["--cluster-token-file".into(), self.token_file.display().to_string()]
        } else {
            vec!["--internal-auth".into(), "false".into()]
        }
    }

    /// Starts one more router with extra flags; returns its index.
    pub async fn add_router(&mut self, flags: &[&str]) -> anyhow::Result<usize> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--listen".into(), addr.clone()];
        args.extend(self.etcd.flags());
        args.extend(self.token_flags());
        // Cluster mode requires API keys by default; these tests are about other things.
        if !flags.contains(&"--auth") {
            args.extend(["--auth".into(), "false".into()]);
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        let name = format!("router-{}", self.routers.len() + 1);
        let mut router =
            Proc::start(&name, &binary("memring-router")?, args, addr, self.dir.path())?;
        router.wait_ready(Duration::from_secs(30)).await?;
        self.routers.push(router);
        Ok(self.routers.len() - 1)
    }

    /// Starts a shard node on etcd (not yet in the layout).
    pub async fn start_shard(&self, id: &str) -> anyhow::Result<Proc> {
        self.start_shard_with(id, &self.etcd.url, &[]).await
    }

    /// [`EtcdCluster::start_shard`] reaching etcd at `etcd_url`, with extra flags.
    pub async fn start_shard_with(
        &self,
        id: &str,
        etcd_url: &str,
        flags: &[String],
    ) -> anyhow::Result<Proc> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--node-id".into(),
            id.into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            self.dir.path().join(id).display().to_string(),
            "--etcd".into(),
            etcd_url.to_owned(),
            "--lease-ttl-secs".into(),
            self.lease_ttl_secs.to_string(),
        ];
        args.extend(self.token_flags());
        // This etcd's user, if any (the endpoint may be a proxy in front of it).
        args.extend(self.etcd.flags().into_iter().skip(2));
        args.extend(self.shard_flags.iter().cloned());
        args.extend(flags.iter().cloned());
        let mut p = Proc::start(id, &binary("memring-shard")?, args, addr, self.dir.path())?;
        p.wait_ready(Duration::from_secs(30)).await?;
        Ok(p)
    }

    /// The node id of shard `i` (0-based).
    pub fn shard_id(&self, i: usize) -> NodeId {
        NodeId::parse(&format!("shard-{}", i + 1)).unwrap_or_else(|e| panic!("{}", e.message()))
    }

    /// Starts the control plane on this cluster's etcd and waits until it is the active one.
    pub async fn start_control(&self) -> anyhow::Result<Proc> {
        self.start_control_with(&[]).await
    }

    /// [`EtcdCluster::start_control`] with extra `serve` flags.
    pub async fn start_control_with(&self, flags: &[&str]) -> anyhow::Result<Proc> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut p = self.spawn_control_with("control", &addr, flags)?;
        p.wait_ready(Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Starts a control plane (leadership lease 2 s) without waiting for it to become active.
    pub fn spawn_control(&self, name: &str, addr: &str) -> anyhow::Result<Proc> {
        self.spawn_control_with(name, addr, &[])
    }

    fn spawn_control_with(&self, name: &str, addr: &str, flags: &[&str]) -> anyhow::Result<Proc> {
        let mut args = self.etcd.flags();
        args.extend(self.token_flags());
        args.extend([
            "serve".into(),
            "--listen".into(),
            addr.to_owned(),
            "--lease-ttl-secs".into(),
            "2".into(),
        ]);
        // API keys on the admin API, like the routers' keys, are off unless a test asks for
        // them (`--auth true`); internal authentication stays on.
        if !flags.contains(&"--auth") {
            args.extend(["--auth".into(), "false".into()]);
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        Proc::start(name, &binary("memring-control")?, args, addr.to_owned(), self.dir.path())
    }

    /// Router `i`'s base URL.
    pub fn router(&self, i: usize) -> String {
        self.routers[i].url()
    }

    /// The epoch router `i` routes with.
    pub async fn router_epoch(&self, i: usize) -> anyhow::Result<u64> {
        let (_, ring) =
            send(&client(), reqwest::Method::GET, &format!("{}/v1/ring", self.router(i)), None)
                .await?;
        Ok(ring["epoch"].as_u64().unwrap_or(0))
    }

    /// Waits until router `i` routes with `epoch` (or newer); returns how long it took.
    pub async fn wait_router_epoch(
        &self,
        i: usize,
        epoch: u64,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.router_epoch(i).await? >= epoch {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("router {i} did not reach epoch {epoch} within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running shard node is at `epoch`.
    pub async fn wait_shards_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for shard in &self.shards {
            loop {
                let v = crate::partition_listing(&shard.addr).await?;
                if v["epoch"].as_u64().unwrap_or(0) >= epoch {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not reach epoch {epoch}: {v}", shard.addr);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Whether every running shard node says each copy it follows has caught up.
    pub async fn all_caught_up(&self) -> anyhow::Result<bool> {
        for shard in &self.shards {
            let url = format!("http://{}/internal/v1/replicate/status", shard.addr);
            let status: serde_json::Value = client().get(&url).send().await?.json().await?;
            if status["caught_up"] != true {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits (up to `timeout`) until the cluster has settled: every node active in the layout
    /// (failover has re-admitted a returning node and handed its leadership back), the epoch
    /// unchanged for `still`, and every copy caught up.
    pub async fn wait_settled(&self, still: Duration, timeout: Duration) -> anyhow::Result<()> {
        let store = self.etcd.store().await?;
        let started = Instant::now();
        let (mut epoch, mut since) = (0, Instant::now());
        loop {
            let layout = store.load().await?.layout;
            if layout.epoch != epoch {
                (epoch, since) = (layout.epoch, Instant::now());
            }
            let active = memring_control::placement::unsettled(&layout, None).is_none();
            if active && since.elapsed() >= still && self.all_caught_up().await? {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                bail!("the cluster did not settle within {timeout:?} (epoch {epoch})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads answered so far by primaries and by followers (replica reads), summed over every
    /// shard node's `memring_shard_reads_total`.
    pub async fn reads_by_role(&self) -> anyhow::Result<(f64, f64)> {
        let (mut primary, mut replica) = (0.0, 0.0);
        for shard in &self.shards {
            let url = format!("{}/metrics", shard.url());
            let text = client().get(url).send().await?.text().await?;
            for line in text.lines().filter(|l| l.starts_with("memring_shard_reads_total")) {
                let value: f64 =
                    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                if line.contains("role=\"replica\"") {
                    replica += value;
                } else {
                    primary += value;
                }
            }
        }
        Ok((primary, replica))
    }

    /// The partitions a shard node holds, as `tenant/scope` strings.
    pub async fn partitions_on(&self, shard: &Proc) -> anyhow::Result<Vec<String>> {
        crate::partitions_at(&shard.addr).await
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> =
            self.shards.iter().chain(&self.routers).map(Proc::log_tail).collect();
        out.push(self.etcd.proc.log_tail());
        out.join("\n")
    }
}

/// Adds `shard` to the layout through the store (compare-and-swap with retries).
pub async fn add_to_layout(store: &EtcdStore, shard: &Proc) -> anyhow::Result<u64> {
    let id = shard.log.file_stem().and_then(|s| s.to_str()).context("shard log name")?.to_owned();
    let node = LayoutNode { id: NodeId::parse(&id)?, addr: shard.addr.clone() };
    let stored = update_layout(store, 20, |l| Some(l.with_node(node.clone()))).await?;
    Ok(stored.layout.epoch)
}

/// The store's live node ids.
pub async fn live_node_ids(store: &EtcdStore) -> anyhow::Result<Vec<String>> {
    Ok(store.live_nodes().await?.into_iter().map(|r| r.id.to_string()).collect())
}
