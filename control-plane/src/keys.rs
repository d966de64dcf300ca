//! The credentials an operator makes before a cluster runs: the first admin key (straight in
//! the ring store, with the store's own credentials, so there is no chicken and egg) and the
//! cluster token file every process of the cluster shares (`common/src/internal.rs`).

use std::io::Write;
use std::path::Path;

use memring_common::auth::{Principal, create_key, list_keys};
use memring_common::store::RingStore;

/// Makes an admin key labelled `label` and returns its id and the key (shown once). Refused
/// when an admin key exists already, unless `force`.
pub async fn bootstrap(
    store: &dyn RingStore,
    label: &str,
    force: bool,
) -> anyhow::Result<(String, String)> {
    let admins: Vec<String> = list_keys(store)
        .await?
        .into_iter()
        .filter(|k| k.principal == Principal::Admin)
        .map(|k| k.id)
        .collect();
    anyhow::ensure!(
        admins.is_empty() || force,
        "an admin key exists already ({}); make more with it (`shardctl keys create --admin`), \
         or pass --force to make one here anyway",
        admins.join(", ")
    );
    let (record, key) = create_key(store, Principal::Admin, label).await?;
    tracing::info!(target: "audit", action = "key.bootstrap", key_id = %record.id, label, forced = force && !admins.is_empty(), "admin key made from the ring store");
    Ok((record.id, key))
}

/// Writes a new cluster token to `file`, readable by its owner only; refused if it exists,
/// unless `force`.
pub fn write_token_file(file: &Path, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(file).map_err(|e| {
        anyhow::anyhow!(
            "cannot write {}: {e} (an existing file is kept unless --force)",
            file.display()
        )
    })?;
    writeln!(out, "{}", memring_common::internal::generate_token())?;
    Ok(())
}
