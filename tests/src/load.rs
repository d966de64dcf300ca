//! Helpers of the replication and failover tests: layout commands, waiting, verify, and a
//! bounded writer that reads every acknowledged write back with its read token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memring_common::api::READ_TOKEN_HEADER;
use serde_json::{Value, json};

use crate::etcd::EtcdCluster;
use crate::{Proc, binary, client, vector};

/// `memring-control --etcd URL layout set-replication R`.
pub async fn set_replication(etcd: &str, copies: u32) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(binary("memring-control")?)
        .args(["--etcd", etcd, "layout", "set-replication", &copies.to_string()])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A cluster on a private etcd: `nodes` shard nodes with 5 s leases, one router, `copies` copies
/// of every partition, and a control plane that never replaces a down node; the router has seen
/// the replicated layout.
pub async fn replicated_cluster(
    nodes: usize,
    copies: u32,
) -> anyhow::Result<(EtcdCluster, memring_common::store::etcd::EtcdStore, Proc)> {
    use memring_common::store::RingStore;
    let c = EtcdCluster::start(nodes, 1, 5).await?;
    let store = c.etcd.store().await?;
    set_replication(&c.etcd.url, copies).await?;
    let control = c.start_control_with(&["--replace-after-secs", "0"]).await?;
    let epoch = store.load().await?.layout.epoch;
    c.wait_router_epoch(0, epoch, Duration::from_secs(15)).await?;
    Ok((c, store, control))
}

/// Polls `check` every 200 ms until it gives a value, failing after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the control plane's verify finds no problem, no copy catching up and no
/// partition under-replicated; returns the report.
pub async fn wait_verified(control: &Proc, timeout: Duration) -> anyhow::Result<Value> {
    let url = format!("{}/v1/verify", control.url());
    let started = Instant::now();
    loop {
        let report: Value = client().get(&url).send().await?.json().await?;
        let clean = ["problems", "in_flight", "under_replicated"]
            .iter()
            .all(|k| report[k].as_array().is_some_and(|a| a.is_empty()));
        if clean {
            return Ok(report);
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "verify not clean within {timeout:?}: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What one writer saw.
#[derive(Default)]
pub struct Seen {
    /// Acknowledged writes: (tenant, id, content).
    pub acked: Vec<(String, String, String)>,
    /// When each acknowledged write returned, from the start of the load.
    pub acked_at: Vec<Duration>,
    /// Requests that failed with a 5xx or a transport error.
    pub failed: usize,
    /// The first few of those failures, each with when it happened and what was answered.
    pub failures: Vec<String>,
    /// Anything that is not an acknowledgement or a retryable failure: a wrong answer.
    pub wrong: Vec<String>,
}

impl Seen {
    /// Counts a failed request, keeping the first few for the test's message.
    fn fail(&mut self, t0: Instant, tenant: &str, id: &str, what: String) {
        self.failed += 1;
        if self.failures.len() < 10 {
            self.failures.push(format!("at {:?}, {tenant}/{id}: {what}", t0.elapsed()));
        }
    }
}

/// Writes to `tenant` until `stop`, reading each acknowledged write back at once with its
/// read token (a follower may answer it; it must have the write).
pub async fn writer(router: String, tenant: String, stop: Arc<AtomicBool>, t0: Instant) -> Seen {
    let http = client();
    let mut seen = Seen::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (id, content) = (format!("w{n}"), format!("content {n} of {tenant}"));
        let body = json!({"id": id, "scope": "shared", "content": content, "embedding": vector(8, n % 8, 0.3)});
        let sent = http
            .post(format!("{router}/v1/tenants/{tenant}/memories"))
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().as_u16() == 201 => {
                let token = resp
                    .headers()
                    .get(READ_TOKEN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.acked_at.push(t0.elapsed());
                seen.acked.push((tenant.clone(), id.clone(), content.clone()));
                let read = http
                    .get(format!("{router}/v1/tenants/{tenant}/memories/{id}?scope=shared"))
                    .header(READ_TOKEN_HEADER, &token)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                match read {
                    Ok(r) if r.status().as_u16() == 200 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v["content"] != content.as_str() {
                            seen.wrong.push(format!("read of {tenant}/{id} gave {v}"));
                        }
                    }
                    Ok(r) if r.status().is_server_error() => {
                        let what =
                            format!("read {}: {}", r.status(), r.text().await.unwrap_or_default());
                        seen.fail(t0, &tenant, &id, what);
                    }
                    Ok(r) => seen.wrong.push(format!(
                        "read of acknowledged {tenant}/{id} with token {token:?}: {}",
                        r.status()
                    )),
                    Err(e) => seen.fail(t0, &tenant, &id, format!("read: {e}")),
                }
            }
            Ok(resp) if resp.status().is_server_error() => {
                let what =
                    format!("write {}: {}", resp.status(), resp.text().await.unwrap_or_default());
                seen.fail(t0, &tenant, &id, what);
            }
            Ok(resp) => seen.wrong.push(format!("write {tenant}/{id}: {}", resp.status())),
            Err(e) => seen.fail(t0, &tenant, &id, format!("write: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// Starts a [`writer`] through `router` for each tenant; they run until the flag is set (see
/// [`stop_writers`]). Also answers the instant they started from.
pub fn start_writers(
    router: &str,
    tenants: impl IntoIterator<Item = String>,
) -> (Arc<AtomicBool>, Instant, Vec<tokio::task::JoinHandle<Seen>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let writers = tenants
        .into_iter()
        .map(|t| tokio::spawn(writer(router.to_owned(), t, stop.clone(), t0)))
        .collect();
    (stop, t0, writers)
}

/// Stops the writers that watch `stop` and gathers what they saw; fails if any of them got a
/// wrong answer (`logs` goes into the message).
pub async fn stop_writers(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Seen>>,
    logs: impl FnOnce() -> String,
) -> anyhow::Result<Vec<Seen>> {
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in writers {
        seen.push(w.await?);
    }
    let wrong: Vec<&String> = seen.iter().flat_map(|s| &s.wrong).collect();
    anyhow::ensure!(wrong.is_empty(), "wrong answers: {wrong:?}\n{}", logs());
    Ok(seen)
}

/// Reads each acknowledged `(tenant, id, content)` back through `router` (scope `shared`) and
/// fails, naming `when`, on the first one that is missing or different.
pub async fn assert_readable<'a>(
    router: &str,
    acked: impl IntoIterator<Item = &'a (String, String, String)>,
    when: &str,
) -> anyhow::Result<()> {
    let http = client();
    for (tenant, id, content) in acked {
        let url = format!("{router}/v1/tenants/{tenant}/memories/{id}?scope=shared");
        let v: Value = http.get(url).send().await?.json().await?;
        anyhow::ensure!(
            v["content"] == content.as_str(),
            "{when}: acknowledged {tenant}/{id} reads {v}"
        );
    }
    Ok(())
}
