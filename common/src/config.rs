//! Layered configuration: defaults → TOML file → `MEMRING_*` environment → command-line flags.
//!
//! Each binary defines a `serde` config struct whose `Default` is the built-in defaults and a
//! clap `Args` struct whose fields are `Option`s with `env = "MEMRING_…"` (so clap itself gives flags
//! precedence over the environment). [`load_file`] reads the TOML layer; the binary then applies
//! every `Some` flag on top with [`overlay`] and validates the result at start-up, naming the
//! setting that is wrong.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads `path` as TOML into `T`, or returns `T::default()` when no file is given.
/// Unknown keys are an error when `T` says `deny_unknown_fields` (all memring configs do).
pub fn load_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// Replaces `slot` with `value` when the flag or environment variable was given.
pub fn overlay<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Checks that `addr` is a `host:port` a socket can bind or connect to, naming `setting`.
pub fn check_addr(setting: &str, addr: &str) -> anyhow::Result<()> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    anyhow::ensure!(ok, "setting `{setting}` = {addr:?} is not host:port (e.g. 127.0.0.1:7700)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: String,
        limit: u32,
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlimit = 5\n").expect("write");
        let mut cfg: Demo = load_file(Some(&path)).expect("loads");
        assert_eq!(cfg.limit, 5);
        overlay(&mut cfg.limit, Some(9));
        overlay(&mut cfg.listen, None);
        assert_eq!(cfg, Demo { listen: "127.0.0.1:1".into(), limit: 9 });
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lissen = \"x\"\n").expect("write");
        let err = load_file::<Demo>(Some(&path)).expect_err("unknown key");
        assert!(format!("{err:#}").contains("lissen"));
        assert!(check_addr("listen", "nope").is_err());
        assert!(check_addr("listen", "127.0.0.1:7700").is_ok());
    }
}
