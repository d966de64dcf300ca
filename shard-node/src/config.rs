//! The shard node's configuration: defaults → TOML (`--config`) → `MEMRING_*` env → flags.

use std::path::PathBuf;

use clap::Parser;
use memring_common::config::{check_addr, load_file, overlay};
use memring_common::store::{StoreArgs, StoreConfig};
use serde::Deserialize;

/// Settings of one shard node.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// Stable node name (its identity in the ring).
    pub node_id: String,
    /// Address to listen on.
    pub listen: String,
    /// Address others reach this node at; defaults to the bound listen address.
    pub advertise: Option<String>,
    /// Where RocksDB keeps this node's data.
    pub data_dir: PathBuf,
    /// Where the ring store is (`ring_dir`, or `etcd` + `etcd_prefix`), at the top level of the file.
    #[serde(flatten)]
    pub store: StoreConfig,
    /// The cluster token it checks on its internal routes and sends to other nodes, at the
    /// top level of the file (`cluster_token_file`, `internal_auth`).
    #[serde(flatten)]
    pub internal: memring_common::internal::InternalAuthConfig,
    /// Add this node to the ring layout at start-up if it is not in it. Default: yes on the
    /// embedded store (one machine), no on etcd, where membership changes only by an explicit
    /// layout change.
    pub join_ring: Option<bool>,
    /// fsync every write.
    pub sync_writes: bool,
    /// Largest request body, bytes.
    pub body_limit_bytes: usize,
    /// Partitions up to this many vectors are searched exactly; larger ones use HNSW.
    pub flat_limit: usize,
    /// A loaded partition with this many memories indexes their metadata values for filters.
    pub metadata_index_min: usize,
    /// HNSW beam width while searching.
    pub expansion_search: usize,
    /// Concurrent storage operations.
    pub concurrency: usize,
    /// Node lease TTL in seconds.
    pub lease_ttl_secs: u64,
    /// Threads that serve migration export, import and log reads.
    pub migration_threads: usize,
    /// Their nice value (0 normal … 19 lowest): migration work yields the CPU to searches and
    /// writes.
    pub migration_nice: i32,
    /// With replication: how long a write waits for its quorum of copies before answering 503.
    pub quorum_timeout_ms: u64,
    /// With replication: a follower answers reads that carry no read token while it was caught
    /// up with its primary within this many milliseconds (else the router asks the primary).
    pub replica_staleness_ms: u64,
    /// How often expired memories are purged from disk, seconds (they vanish from reads at
    /// once regardless).
    pub purge_interval_secs: u64,
    /// Log entries younger than this many seconds are kept when a partition's log is trimmed (a
    /// copy back within it catches up from the log; later, it is re-seeded from a snapshot).
    pub log_keep_secs: u64,
    /// The last this many entries of each partition's log are kept as well, whatever their age.
    pub log_keep_entries: u64,
    /// A migration or a re-seed reading a log keeps it from being trimmed after where it reads
    /// for this many seconds after its last read (`storage/trim.rs`'s pins). Pins matter only
    /// beyond `log_keep_secs`: with the defaults, the pin of a reader done within five minutes
    /// (a re-seed, most migrations) never holds back a trim after it.
    pub log_pin_secs: u64,
    /// Followers' polls may come over an upgraded connection (`replicate/stream.rs`); off, the
    /// stream route answers 404 as binaries before it did, and followers poll over HTTP (for
    /// testing a rolling upgrade).
    pub replication_stream: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            node_id: "shard-1".into(),
            listen: "127.0.0.1:7711".into(),
            advertise: None,
            data_dir: PathBuf::from("data/shard-1"),
            store: StoreConfig::default(),
            internal: Default::default(),
            join_ring: None,
            sync_writes: false,
            body_limit_bytes: 64 << 20,
            flat_limit: 1024,
            metadata_index_min: 2_048,
            expansion_search: 64,
            concurrency: 16,
            lease_ttl_secs: 10,
            migration_threads: 1,
            migration_nice: 10,
            quorum_timeout_ms: 2000,
            replica_staleness_ms: 2000,
            purge_interval_secs: 60,
            log_keep_secs: 600,
            log_keep_entries: 0,
            log_pin_secs: 300,
            replication_stream: true,
        }
    }
}

/// Command-line flags (each also readable from its `MEMRING_*` variable).
#[derive(Debug, Parser)]
#[command(name = "memring-shard", version, about = "memring shard node")]
pub struct ShardArgs {
    /// TOML config file.
    #[arg(long, env = "MEMRING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Stable node name.
    #[arg(long, env = "MEMRING_NODE_ID")]
    pub node_id: Option<String>,
    /// Listen address, host:port.
    #[arg(long, env = "MEMRING_LISTEN")]
    pub listen: Option<String>,
    /// Advertised address, host:port.
    #[arg(long, env = "MEMRING_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory.
    #[arg(long, env = "MEMRING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Ring store flags.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The cluster token flags.
    #[command(flatten)]
    pub internal: memring_common::internal::InternalAuthArgs,
    /// Join the ring layout at start-up.
    #[arg(long, env = "MEMRING_JOIN_RING")]
    pub join_ring: Option<bool>,
    /// fsync every write.
    #[arg(long, env = "MEMRING_SYNC_WRITES")]
    pub sync_writes: Option<bool>,
    /// Largest request body in bytes.
    #[arg(long, env = "MEMRING_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Exact-search limit in vectors.
    #[arg(long, env = "MEMRING_FLAT_LIMIT")]
    pub flat_limit: Option<usize>,
    /// Memories from which a partition indexes its metadata values (a huge number: never).
    #[arg(long, env = "MEMRING_METADATA_INDEX_MIN")]
    pub metadata_index_min: Option<usize>,
    /// HNSW search beam width.
    #[arg(long, env = "MEMRING_EXPANSION_SEARCH")]
    pub expansion_search: Option<usize>,
    /// Node lease TTL in seconds.
    #[arg(long, env = "MEMRING_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<u64>,
    /// Threads for migration work.
    #[arg(long, env = "MEMRING_MIGRATION_THREADS")]
    pub migration_threads: Option<usize>,
    /// Nice value of the migration threads (0-19).
    #[arg(long, env = "MEMRING_MIGRATION_NICE")]
    pub migration_nice: Option<i32>,
    /// Write quorum timeout in milliseconds (replication).
    #[arg(long, env = "MEMRING_QUORUM_TIMEOUT_MS")]
    pub quorum_timeout_ms: Option<u64>,
    /// Staleness bound of replica reads in milliseconds (replication).
    #[arg(long, env = "MEMRING_REPLICA_STALENESS_MS")]
    pub replica_staleness_ms: Option<u64>,
    /// TTL purge interval in seconds.
    #[arg(long, env = "MEMRING_PURGE_INTERVAL_SECS")]
    pub purge_interval_secs: Option<u64>,
    /// Seconds of log kept when trimming.
    #[arg(long, env = "MEMRING_LOG_KEEP_SECS")]
    pub log_keep_secs: Option<u64>,
    /// Entries of each partition's log kept when trimming.
    #[arg(long, env = "MEMRING_LOG_KEEP_ENTRIES")]
    pub log_keep_entries: Option<u64>,
    /// Seconds a migration's or a re-seed's pin of a log holds after its last read.
    #[arg(long, env = "MEMRING_LOG_PIN_SECS")]
    pub log_pin_secs: Option<u64>,
    /// Serve followers' polls over upgraded connections (false: only over HTTP, as binaries
    /// before 2026-12-05; for rolling-upgrade tests).
    #[arg(long, env = "MEMRING_REPLICATION_STREAM", action = clap::ArgAction::Set)]
    pub replication_stream: Option<bool>,
}

impl ShardArgs {
    /// Resolves the layers into a validated config.
    pub fn resolve(self) -> anyhow::Result<ShardConfig> {
        let mut c: ShardConfig = load_file(self.config.as_deref())?;
        overlay(&mut c.node_id, self.node_id);
        overlay(&mut c.listen, self.listen);
        overlay(&mut c.advertise, self.advertise.map(Some));
        overlay(&mut c.data_dir, self.data_dir);
        self.store.overlay(&mut c.store);
        self.internal.overlay(&mut c.internal);
        overlay(&mut c.join_ring, self.join_ring.map(Some));
        overlay(&mut c.sync_writes, self.sync_writes);
        overlay(&mut c.body_limit_bytes, self.body_limit_bytes);
        overlay(&mut c.flat_limit, self.flat_limit);
        overlay(&mut c.metadata_index_min, self.metadata_index_min);
        overlay(&mut c.expansion_search, self.expansion_search);
        overlay(&mut c.lease_ttl_secs, self.lease_ttl_secs);
        overlay(&mut c.migration_threads, self.migration_threads);
        overlay(&mut c.migration_nice, self.migration_nice);
        overlay(&mut c.quorum_timeout_ms, self.quorum_timeout_ms);
        overlay(&mut c.replica_staleness_ms, self.replica_staleness_ms);
        overlay(&mut c.purge_interval_secs, self.purge_interval_secs);
        overlay(&mut c.log_keep_secs, self.log_keep_secs);
        overlay(&mut c.log_keep_entries, self.log_keep_entries);
        overlay(&mut c.log_pin_secs, self.log_pin_secs);
        overlay(&mut c.replication_stream, self.replication_stream);
        c.validate()?;
        Ok(c)
    }
}

impl ShardConfig {
    /// Whether to add this node to the layout at start-up (see `join_ring`).
    pub fn joins_ring(&self) -> bool {
        self.join_ring.unwrap_or(!self.store.is_etcd())
    }

    /// Checks every setting, naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        memring_common::NodeId::parse(&self.node_id)
            .map_err(|e| anyhow::anyhow!("setting `node_id`: {}", e.message()))?;
        check_addr("listen", &self.listen)?;
        if let Some(a) = &self.advertise {
            check_addr("advertise", a)?;
        }
        anyhow::ensure!(
            self.body_limit_bytes >= 1024,
            "setting `body_limit_bytes` must be at least 1024"
        );
        anyhow::ensure!(
            self.expansion_search >= 1,
            "setting `expansion_search` must be at least 1"
        );
        anyhow::ensure!(self.concurrency >= 1, "setting `concurrency` must be at least 1");
        anyhow::ensure!(self.lease_ttl_secs >= 1, "setting `lease_ttl_secs` must be at least 1");
        anyhow::ensure!(
            (1..=64).contains(&self.migration_threads),
            "setting `migration_threads` must be between 1 and 64"
        );
        anyhow::ensure!(
            (10..=600_000).contains(&self.quorum_timeout_ms),
            "setting `quorum_timeout_ms` must be between 10 and 600000"
        );
        anyhow::ensure!(
            (10..=3_600_000).contains(&self.replica_staleness_ms),
            "setting `replica_staleness_ms` must be between 10 and 3600000"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.purge_interval_secs),
            "setting `purge_interval_secs` must be between 1 and 86400"
        );
        anyhow::ensure!(
            (0..=19).contains(&self.migration_nice),
            "setting `migration_nice` must be between 0 and 19"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_loads_and_validates() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/shard.toml");
        let file: ShardConfig = load_file(Some(&path)).expect("deploy/config/shard.toml loads");
        file.validate().expect("and validates");
        let defaults = ShardConfig::default();
        assert_eq!(
            (file.flat_limit, file.listen.as_str()),
            (defaults.flat_limit, defaults.listen.as_str())
        );
    }

    #[test]
    fn store_settings_sit_at_the_top_level_and_typos_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "etcd = [\"http://127.0.0.1:2379\"]\nnode_id = \"n\"\n")
            .expect("write");
        let c: ShardConfig = load_file(Some(&path)).expect("loads");
        assert!(c.store.is_etcd());
        assert!(!c.joins_ring(), "cluster mode never joins by itself");
        std::fs::write(&path, "lissen = \"127.0.0.1:1\"\n").expect("write");
        let err = load_file::<ShardConfig>(Some(&path)).expect_err("typo");
        assert!(format!("{err:#}").contains("lissen"), "{err:#}");
    }

    #[test]
    fn flags_override_the_file_and_bad_settings_are_named() {
        let args =
            ShardArgs::parse_from(["memring-shard", "--node-id", "n7", "--flat-limit", "10"]);
        let c = args.resolve().expect("valid");
        assert_eq!((c.node_id.as_str(), c.flat_limit), ("n7", 10));
        let err = ShardArgs::parse_from(["memring-shard", "--listen", "nowhere"])
            .resolve()
            .expect_err("bad");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = ShardArgs::parse_from(["memring-shard", "--node-id", "a b"])
            .resolve()
            .expect_err("bad");
        assert!(err.to_string().contains("node_id"), "{err}");
    }
}
