//! The control plane's operator page at `/`, opened in headless Chromium (Debian `chromium`,
//! installed by `make test`'s setup) while a migration runs: the page shows the ring, the nodes
//! and the migration's progress. A screenshot is saved in the test's temporary directory.

use std::time::{Duration, Instant};

use memring_tests::{Cluster, client, partitions_at, vector};
use serde_json::{Value, json};

/// Chromium's DOM of `url` after its scripts ran for `budget_ms` of virtual time.
async fn dump_dom(url: &str, budget_ms: u64) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(["--dump-dom", url])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn the_dashboard_shows_a_running_migration() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    let control = c.start_control_with(&["--migration-rate", "300"]).await?;
    let http = client();
    for chunk in 0..4 {
        let items: Vec<Value> = (0..500)
            .map(|n| json!({"id": format!("m{chunk}-{n}"), "scope": "shared", "content": "x", "embedding": vector(8, n % 8, 0.2)}))
            .collect();
        memring_tests::write_batch(&http, &c.url(), "big", items).await?;
    }
    // Move the tenant to the node that does not hold it; at 300 memories/s that takes ~7 s.
    let mut target = None;
    for (i, shard) in c.shards.iter().enumerate() {
        if !partitions_at(&shard.addr).await?.iter().any(|p| p == "big/shared") {
            target = Some(format!("shard-{}", i + 1));
        }
    }
    let target = target.expect("one node does not hold the tenant");
    let migrate = tokio::process::Command::new(memring_tests::binary("shardctl")?)
        .args(["--control", &control.url(), "migrate", "--tenant", "big", "--to", &target])
        .output();
    let migrate = tokio::spawn(migrate);
    let started = Instant::now();
    loop {
        let view: Value =
            http.get(format!("{}/v1/cluster", control.url())).send().await?.json().await?;
        if view["migrations"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the migration never showed in /v1/cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dom = dump_dom(&format!("{}/", control.url()), 3000).await?;
    assert!(dom.contains("class=\"migration\""), "no migration row on the page:\n{dom}");
    assert!(dom.contains("big/shared") && dom.contains("copied"), "no progress shown:\n{dom}");
    assert!(dom.contains(&target) && dom.contains("shard-1") && dom.contains("shard-2"), "{dom}");
    assert!(dom.contains("<path"), "the ring is not drawn:\n{dom}");
    // The migration's flip will bump the epoch; the history lists what the control plane saw.
    assert!(dom.contains("class=\"epoch\""), "no epoch history:\n{dom}");
    let shot = c.dir.path().join("dashboard.png");
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1200,900",
        ])
        .args(["--virtual-time-budget=3000", &format!("--screenshot={}", shot.display())])
        .arg(format!("{}/", control.url()))
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size = std::fs::metadata(&shot)?.len();
    assert!(size > 10_000, "screenshot {} is only {size} bytes", shot.display());
    println!("dashboard screenshot: {} ({size} bytes)", shot.display());
    let done = migrate.await??;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    Ok(())
}
