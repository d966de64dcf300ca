//! The migration journal: every migration is recorded in the ring store before it acts, and its
//! phase is updated as it goes, so a control plane killed at any point resumes on restart
//! (`migrate::resume`).
//!
//! Resuming needs little state because ownership itself lives in the layout: if the layout says
//! the target owns the partition, the flip happened and only dropping the source copy is left;
//! otherwise nothing was handed over, and the migration starts again from a clean target
//! (the source is unfenced first, so clients are not held up meanwhile).

use memring_common::PartitionKey;
use memring_common::api::{Flip, MigrationJob, MovePhase};
use memring_common::store::RingStore;
use xxhash_rust::xxh3::xxh3_64;

const JOB_FORMAT_VERSION: u32 = 1;

/// One migration in the journal (the wire type of the cluster view too).
pub type Job = MigrationJob;

/// The journal id of a partition's migration (ids must be short and path-safe).
pub fn job_id(partition: &PartitionKey) -> String {
    format!("migrate-{:016x}", xxh3_64(&partition.encode()))
}

/// Records `job` (replacing the partition's previous record).
pub async fn record(
    store: &dyn RingStore,
    partition: &PartitionKey,
    from: &str,
    to: &str,
    flip: Flip,
    phase: MovePhase,
    (copied, total): (u64, u64),
) -> anyhow::Result<()> {
    let job = Job {
        format_version: JOB_FORMAT_VERSION,
        partition: partition.to_string(),
        from: from.to_owned(),
        to: to.to_owned(),
        flip,
        phase,
        copied,
        total,
        at_ms: memring_common::clock::now_millis(),
    };
    store.put_job(&job_id(partition), &serde_json::to_vec(&job)?).await?;
    // The running migration's progress (one runs at a time per control plane).
    metrics::gauge!("memring_migration_copied").set(copied as f64);
    metrics::gauge!("memring_migration_total").set(total as f64);
    Ok(())
}

/// Every migration job in the journal.
pub async fn pending(store: &dyn RingStore) -> anyhow::Result<Vec<Job>> {
    let mut out = Vec::new();
    for (id, bytes) in store.jobs().await? {
        if !id.starts_with("migrate-") {
            continue;
        }
        match serde_json::from_slice::<Job>(&bytes) {
            Ok(job) if job.format_version <= JOB_FORMAT_VERSION => out.push(job),
            Ok(job) => anyhow::bail!(
                "journal record {id} has format {}; upgrade memring",
                job.format_version
            ),
            Err(e) => anyhow::bail!("journal record {id} is unreadable: {e}"),
        }
    }
    Ok(out)
}
