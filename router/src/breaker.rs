//! One circuit breaker per shard node, so a dead or unreachable node costs its callers a fast 503
//! instead of a connect timeout each.
//!
//! - **closed**: requests go through; consecutive transport failures (refused, reset, timed out)
//!   are counted, and any answer from the node, whatever its status, resets the count;
//! - **open** after `failures_to_open` of them: requests fail at once with 503 and `Retry-After`
//!   for `open_for`;
//! - **half-open** when that has passed: one request goes through as a probe; its success closes
//!   the breaker, its failure opens it again. A probe that never reports back (its caller gave up)
//!   is replaced by a new one after `open_for`.
//!
//! Pure state over an injected clock; `forward.rs` calls [`Breakers::admit`] before and
//! [`Breakers::record`] after every request to a node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use memring_common::NodeId;
use parking_lot::Mutex;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive transport failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures_to_open: 5, open_for: Duration::from_secs(2) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The breakers of every node this router talks to.
pub struct Breakers {
    config: BreakerConfig,
    nodes: Mutex<HashMap<NodeId, State>>,
}

/// A breaker's state for metrics: 0 closed, 1 half-open, 2 open.
pub type StateCode = u8;

impl Breakers {
    /// All closed.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, nodes: Mutex::new(HashMap::new()) }
    }

    /// May a request go to `node` now? `Err(wait)` when its breaker is open (or a probe is out).
    pub fn admit(&self, node: &NodeId, now: Instant) -> Result<(), Duration> {
        let mut nodes = self.nodes.lock();
        let state = nodes.entry(node.clone()).or_insert(State::Closed { failures: 0 });
        if let Some(wait) = self.refusal(state, now) {
            return Err(wait);
        }
        if !matches!(state, State::Closed { .. }) {
            // Open long enough, or the last probe never reported: this request probes.
            *state = State::HalfOpen { probe_since: now };
        }
        Ok(())
    }

    /// How much longer `state` refuses requests at `now`; `None` when one may go.
    fn refusal(&self, state: &State, now: Instant) -> Option<Duration> {
        let until = match *state {
            State::Closed { .. } => return None,
            State::Open { until } => until,
            State::HalfOpen { probe_since } => probe_since + self.config.open_for,
        };
        (now < until).then(|| until - now)
    }

    /// Whether `node`'s breaker would refuse a request now (no side effect, unlike `admit`).
    pub fn holds(&self, node: &NodeId, now: Instant) -> bool {
        self.nodes.lock().get(node).and_then(|state| self.refusal(state, now)).is_some()
    }

    /// Records how a request to `node` went: `reached` is true when the node answered at all.
    /// Returns the new state code when it changed.
    pub fn record(&self, node: &NodeId, reached: bool, now: Instant) -> Option<StateCode> {
        let mut nodes = self.nodes.lock();
        let state = nodes.entry(node.clone()).or_insert(State::Closed { failures: 0 });
        let before = code(state);
        *state = match (*state, reached) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.config.failures_to_open => {
                State::Closed { failures: failures + 1 }
            }
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open { until: now + self.config.open_for },
        };
        let after = code(state);
        (after != before).then_some(after)
    }
}

fn code(state: &State) -> StateCode {
    match state {
        State::Closed { .. } => 0,
        State::HalfOpen { .. } => 1,
        State::Open { .. } => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::parse("shard-1").expect("id")
    }

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig { failures_to_open: 3, open_for: Duration::from_secs(2) })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (b, n, t) = (breakers(), node(), Instant::now());
        for _ in 0..2 {
            assert!(b.admit(&n, t).is_ok());
            assert_eq!(b.record(&n, false, t), None);
        }
        // An answer in between resets the count.
        assert_eq!(b.record(&n, true, t), None);
        for _ in 0..2 {
            b.record(&n, false, t);
        }
        assert!(b.admit(&n, t).is_ok(), "two failures after a success keep it closed");
        assert_eq!(b.record(&n, false, t), Some(2), "the third opens it");
        let wait = b.admit(&n, t + Duration::from_millis(500)).expect_err("open");
        assert_eq!(wait, Duration::from_millis(1500));
        assert!(b.holds(&n, t + Duration::from_millis(500)));
        assert!(!b.holds(&n, t + Duration::from_secs(2)), "a probe may go");
    }

    #[test]
    fn one_probe_after_the_open_time_decides() {
        let (b, n, t) = (breakers(), node(), Instant::now());
        for _ in 0..3 {
            b.record(&n, false, t);
        }
        let later = t + Duration::from_secs(2);
        assert!(b.admit(&n, later).is_ok(), "the probe goes through");
        assert!(b.admit(&n, later).is_err(), "one probe at a time");
        // The probe fails: open again for the full time.
        assert_eq!(b.record(&n, false, later), Some(2));
        assert!(b.admit(&n, later + Duration::from_secs(1)).is_err());
        let again = later + Duration::from_secs(2);
        assert!(b.admit(&n, again).is_ok());
        assert_eq!(b.record(&n, true, again), Some(0), "a good probe closes it");
        assert!(b.admit(&n, again).is_ok());
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let (b, n, t) = (breakers(), node(), Instant::now());
        for _ in 0..3 {
            b.record(&n, false, t);
        }
        let probe = t + Duration::from_secs(2);
        assert!(b.admit(&n, probe).is_ok());
        // Its caller went away without recording anything.
        assert!(b.admit(&n, probe + Duration::from_secs(1)).is_err());
        assert!(b.admit(&n, probe + Duration::from_secs(2)).is_ok(), "a new probe");
    }

    #[test]
    fn nodes_have_their_own_breakers() {
        let (b, t) = (breakers(), Instant::now());
        let other = NodeId::parse("shard-2").expect("id");
        for _ in 0..3 {
            b.record(&node(), false, t);
        }
        assert!(b.admit(&node(), t).is_err());
        assert!(b.admit(&other, t).is_ok());
    }
}
