//! The black-box harness: starts the real memring binaries on free loopback ports, each with its
//! own data directory and log file, waits for `/ready`, and drives them over HTTP.
//!
//! Binaries are found next to the test executable's parent (`target/<profile>/`), or in
//! `MEMRING_BIN_DIR`; `make test` builds them before running the tests. Every HTTP helper fails
//! the test on a 5xx other than the 503s a test asks for, so "no test ever sees a 500" is checked
//! on every request, not only in the tests about bad input.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Where the memring binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MEMRING_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one binary, checked to exist.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found; build the binaries first (`cargo build --release --bins`, which `make test` does)",
        path.display()
    );
    Ok(path)
}

/// A self-signed certificate for `127.0.0.1` (EC P-256, two days) and its key, made by the
/// `openssl` command in `dir`: `(cert.pem, key.pem)`.
pub async fn self_signed_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = tokio::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: rustls (webpki) refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .await?;
    anyhow::ensure!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    Ok((cert, key))
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One running memring process; killed when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
    /// `host:port` it serves on.
    pub addr: String,
    bin: PathBuf,
    args: Vec<String>,
    ready_path: &'static str,
}

impl Proc {
    /// Starts `bin` with `args`, logging to `<log_dir>/<name>.log`.
    pub fn start(
        name: &str,
        bin: &Path,
        args: Vec<String>,
        addr: String,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            child: None,
            log: log_dir.join(format!("{name}.log")),
            addr,
            bin: bin.to_path_buf(),
            args,
            ready_path: "/ready",
        };
        p.spawn()?;
        Ok(p)
    }

    /// Uses `path` instead of `/ready` to tell when the process is up (etcd has `/health`).
    pub fn with_ready_path(mut self, path: &'static str) -> Self {
        self.ready_path = path;
        self
    }

    /// Starts it again after [`Proc::stop`] or [`Proc::kill`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is still running", self.name);
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("MEMRING_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it with SIGTERM and waits for it to exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills it with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses it (SIGSTOP): it keeps its memory, its stale view of the cluster and its open
    /// connections, and does nothing until [`Proc::resume`] — a long GC pause or a stalled VM, as
    /// the rest of the cluster sees it.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has been started and not killed or stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it exited by itself (it is reaped, so [`Proc::start_again`] can follow, as a
    /// supervisor would).
    pub fn has_exited(&mut self) -> bool {
        let exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            self.child = None;
        }
        exited
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(child) = &self.child else { bail!("{} is not running", self.name) };
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed", self.name);
        Ok(())
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Its whole log (every start's).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Waits until `GET /ready` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("{} exited with {status}\n{}", self.name, self.log_tail());
            }
            if let Ok(resp) = client.get(format!("{}{}", self.url(), self.ready_path)).send().await
                && resp.status().as_u16() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `shardctl --control <control> <args>`: its standard output, trimmed; an error (with its
/// standard error) on a non-zero exit.
pub async fn shardctl(control: &Proc, args: &[&str]) -> anyhow::Result<String> {
    shardctl_as(control, None, args).await
}

/// [`shardctl`] with an API key (`MEMRING_API_KEY`), for a control plane that wants one.
pub async fn shardctl_as(
    control: &Proc,
    key: Option<&str>,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(binary("shardctl")?);
    cmd.args(["--control", &control.url()]).args(args);
    if let Some(key) = key {
        cmd.env("MEMRING_API_KEY", key);
    }
    let out = cmd.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "shardctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub mod data;
pub mod etcd;
pub mod load;
pub mod proxy;

/// A plain HTTP client for tests.
pub fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        memring_common::internal::CLUSTER_TOKEN_HEADER,
        reqwest::header::HeaderValue::from_static(TEST_CLUSTER_TOKEN),
    );
    memring_common::tls::http_client_builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(memring_common::http::CLIENT_POOL_IDLE)
        .build()
        .unwrap_or_default()
}

/// [`client`] without the cluster token: what a stranger on the network sends.
pub fn stranger() -> reqwest::Client {
    memring_common::tls::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// The cluster token of every test cluster on etcd ([`client`] sends it, so tests that call
/// shard nodes' internal routes directly keep working with internal authentication on).
pub const TEST_CLUSTER_TOKEN: &str = "memring-test-cluster-token-5f1e3a9c0b7d2e4f6a8c1d3e5f7a9b0c";

/// Writes the test cluster token file into `dir`; returns its path.
pub fn write_cluster_token(dir: &Path) -> anyhow::Result<PathBuf> {
    let file = dir.join("cluster-token");
    std::fs::write(&file, format!("{TEST_CLUSTER_TOKEN}\n"))?;
    Ok(file)
}

/// A local cluster: `n` shard nodes and one router on the embedded ring store.
pub struct Cluster {
    /// Its temporary directory (data, ring store, logs).
    pub dir: tempfile::TempDir,
    /// The shard nodes.
    pub shards: Vec<Proc>,
    /// The router.
    pub router: Proc,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `n` shards and a router and waits until the router routes over all of them.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], with extra flags for every shard node.
    pub async fn start_with(n: usize, shard_flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(n, shard_flags, &[]).await
    }

    /// Like [`Cluster::start`], with extra flags for the router (e.g. `--embedder builtin`).
    pub async fn start_with_router(n: usize, router_flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(n, &[], router_flags).await
    }

    async fn start_full(
        n: usize,
        shard_flags: &[&str],
        router_flags: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut shards = Vec::new();
        for i in 1..=n {
            shards.push(start_shard(dir.path(), &format!("shard-{i}"), shard_flags).await?);
        }
        let router = start_router(dir.path(), "router", router_flags).await?;
        let cluster = Self { dir, shards, router, http: client() };
        cluster.wait_ring_size(n).await?;
        Ok(cluster)
    }

    /// Starts one more router named `name` on this cluster's ring store, with `flags`.
    pub async fn start_router(&self, name: &str, flags: &[&str]) -> anyhow::Result<Proc> {
        start_router(self.dir.path(), name, flags).await
    }

    /// Starts one more shard node on this cluster's ring store (`--join-ring false` keeps it
    /// out of the ring: live, known, but not a member).
    pub async fn start_shard(&self, id: &str, flags: &[&str]) -> anyhow::Result<Proc> {
        start_shard(self.dir.path(), id, flags).await
    }

    /// Starts the control plane on this cluster's ring store.
    pub async fn start_control(&self) -> anyhow::Result<Proc> {
        self.start_control_with(&[]).await
    }

    /// Starts the control plane with extra `serve` flags.
    pub async fn start_control_with(&self, flags: &[&str]) -> anyhow::Result<Proc> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--ring-dir".into(),
            self.ring_dir().display().to_string(),
            "serve".into(),
            "--listen".into(),
            addr.clone(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut p =
            Proc::start("control", &binary("memring-control")?, args, addr, self.dir.path())?;
        p.wait_ready(Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Waits until the router's ring has `n` nodes.
    pub async fn wait_ring_size(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, ring) = self.get("/v1/ring").await?;
            if ring["nodes"].as_array().map(|a| a.len()) == Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("router ring never reached {n} nodes: {ring}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The embedded ring store directory.
    pub fn ring_dir(&self) -> PathBuf {
        self.dir.path().join("ring")
    }

    /// Router base URL.
    pub fn url(&self) -> String {
        self.router.url()
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> = self.shards.iter().map(Proc::log_tail).collect();
        out.push(self.router.log_tail());
        out.join("\n")
    }

    /// `GET path` on the router.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        send(&self.http, reqwest::Method::GET, &format!("{}{path}", self.url()), None).await
    }

    /// `POST path` with a JSON body on the router.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.url()),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `POST path` with raw bytes on the router.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        send(&self.http, reqwest::Method::POST, &format!("{}{path}", self.url()), Some(body)).await
    }

    /// `DELETE path` on the router.
    pub async fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        send(&self.http, reqwest::Method::DELETE, &format!("{}{path}", self.url()), None).await
    }
}

/// Starts a router named `name` on the embedded ring store in `dir/ring`, with `flags`.
async fn start_router(dir: &Path, name: &str, flags: &[&str]) -> anyhow::Result<Proc> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--listen".into(),
        addr.clone(),
        "--ring-dir".into(),
        dir.join("ring").display().to_string(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    let mut router = Proc::start(name, &binary("memring-router")?, args, addr, dir)?;
    router.wait_ready(Duration::from_secs(30)).await?;
    Ok(router)
}

/// Starts shard node `id` with its data in `dir/<id>` on the embedded ring store in `dir/ring`.
async fn start_shard(dir: &Path, id: &str, flags: &[&str]) -> anyhow::Result<Proc> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--node-id".into(),
        id.to_owned(),
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        dir.join(id).display().to_string(),
        "--ring-dir".into(),
        dir.join("ring").display().to_string(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    let mut p = Proc::start(id, &binary("memring-shard")?, args, addr, dir)?;
    p.wait_ready(Duration::from_secs(30)).await?;
    Ok(p)
}

/// Sends a request and returns status and JSON body (`null` when empty, the raw text as a JSON
/// string when it is not JSON). Fails on any 5xx: no test may see one unless it asks for it
/// with [`send_allowing_5xx`].
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let (status, value) = send_allowing_5xx(client, method.clone(), url, body).await?;
    anyhow::ensure!(status < 500, "{method} {url} answered {status}: {value}");
    Ok((status, value))
}

/// Like [`send`] but returns 5xx answers instead of failing.
pub async fn send_allowing_5xx(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.with_context(|| format!("sending to {url}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, value))
}

/// Writes `items` to `tenant` in one `POST .../memories:batch`; an error unless it answered 200.
pub async fn write_batch(
    http: &reqwest::Client,
    router: &str,
    tenant: &str,
    items: Vec<Value>,
) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{router}/v1/tenants/{tenant}/memories:batch"))
        .json(&serde_json::json!({ "items": items }))
        .send()
        .await?;
    let status = resp.status();
    anyhow::ensure!(
        status.as_u16() == 200,
        "batch to {tenant} answered {status}: {}",
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The value of counter or gauge `name` on the shard node `shard`, summed over its labels (0
/// if not exported yet).
pub async fn metric(shard: &Proc, name: &str) -> anyhow::Result<f64> {
    let text = client().get(format!("{}/metrics", shard.url())).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The shard node at `addr`'s `GET /internal/v1/partitions` answer (its epoch, feed cursor and
/// partitions).
pub async fn partition_listing(addr: &str) -> anyhow::Result<Value> {
    let url = format!("http://{addr}/internal/v1/partitions");
    Ok(send(&client(), reqwest::Method::GET, &url, None).await?.1)
}

/// `(term, seq)` of the last log entry of `partition` on the node at `addr` (`(0, 0)`: it holds
/// none).
pub async fn last_pos_at(
    addr: &str,
    partition: &memring_common::PartitionKey,
) -> anyhow::Result<(u64, u64)> {
    let v = partition_listing(addr).await?;
    let name = partition.to_string();
    let mut listed = v["partitions"].as_array().into_iter().flatten();
    Ok(listed.find(|h| h["partition"].as_str() == Some(name.as_str())).map_or((0, 0), |h| {
        (h["last_term"].as_u64().unwrap_or(0), h["last_seq"].as_u64().unwrap_or(0))
    }))
}

/// The partitions the shard node at `addr` holds, as `tenant/scope` strings.
pub async fn partitions_at(addr: &str) -> anyhow::Result<Vec<String>> {
    let v = partition_listing(addr).await?;
    Ok(v["partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["partition"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

/// Asserts an error answer has the documented shape and a 4xx status; returns its code.
pub fn assert_client_error(status: u16, body: &Value) -> String {
    assert!((400..500).contains(&status), "expected a 4xx, got {status}: {body}");
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}"));
    let message =
        body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {body}"));
    assert!(!message.is_empty(), "empty message in {body}");
    code.to_owned()
}

/// A deterministic unit-ish vector for tests: mostly along axis `axis`, with a little of `axis+1`.
pub fn vector(dims: usize, axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0.0; dims];
    v[axis % dims] = 1.0;
    v[(axis + 1) % dims] = tilt;
    v
}

/// Sends a POST whose head announces `length` body bytes but sends only a few, as a client with
/// a huge body would before the server answers; returns the status and the raw response text.
pub async fn post_announcing_length(
    addr: &str,
    path: &str,
    length: usize,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{{\"items\": ["
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    anyhow::ensure!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}
