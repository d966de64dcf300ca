//! Named failpoints at each migration step, for tests that kill the control plane there.
//!
//! Built only with the `testing` feature (never in a production build); without it
//! [`hit`] is a no-op. Tests switch a point over `POST /debug/v1/failpoints/{name}` with the body
//! `pause` (the step waits until the point is switched off, so a test can SIGKILL the process
//! exactly there), `error` (the step fails), or `off`.

/// Passes failpoint `name`: waits while it is paused, fails if it is set to `error`.
pub async fn hit(name: &str) -> anyhow::Result<()> {
    #[cfg(feature = "testing")]
    loop {
        match imp::get(name).as_deref() {
            Some("pause") => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Some("error") => anyhow::bail!("failpoint {name} fired"),
            _ => break,
        }
    }
    let _ = name;
    Ok(())
}

#[cfg(feature = "testing")]
pub use imp::set;

#[cfg(feature = "testing")]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    fn points() -> &'static Mutex<HashMap<String, String>> {
        static POINTS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
        POINTS.get_or_init(Default::default)
    }

    pub(super) fn get(name: &str) -> Option<String> {
        points().lock().ok()?.get(name).cloned()
    }

    /// Sets failpoint `name` to `action` (`pause`, `error`), or clears it (`off`).
    pub fn set(name: &str, action: &str) {
        if let Ok(mut map) = points().lock() {
            if action == "off" {
                map.remove(name);
            } else {
                map.insert(name.to_owned(), action.to_owned());
            }
        }
        tracing::warn!(failpoint = name, action, "failpoint set");
    }
}
