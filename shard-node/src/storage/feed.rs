//! The node's change feed: which partitions changed, in the order they last did. Every commit
//! that touches a partition's log (a write, a delete, a purge, an import, a cut back) and every
//! tenant deletion notes the partition here, under a node-wide counter. A follower asks its
//! primary for the partitions changed after its cursor (`replicate/feed.rs`) and gets only
//! those, so a replication round costs what changed, not what the node holds.
//!
//! The feed lives in memory: a cursor means something only to the process that gave it, which
//! its `instance` names. A follower whose cursor names another instance (the primary
//! restarted) starts over from a full listing, once. Its readers (followers, the trimmer, the
//! routers' and the control plane's listings) keep cursor 0 for "no cursor yet: list in full",
//! so the counter starts at [`START`]: a node that has changed nothing since it started hands
//! out a cursor that is not 0, and a reader asks it for changes next time, not for everything.
//!
//! Cost: one map entry per partition changed since the process started (a partition changed
//! again moves to the end, it is not listed twice), one ordered-map move per commit, and a
//! range read per ask proportional to the partitions it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use memring_common::PartitionKey;
use parking_lot::Mutex;

/// The counter of a feed with no change yet: the cursor a listing taken then hands out. Never
/// 0, which readers send to ask for a full listing.
pub const START: u64 = 1;

/// The partitions changed on this node, by the counter value of their last change.
pub struct Feed {
    instance: u64,
    inner: Mutex<Inner>,
    counter: tokio::sync::watch::Sender<u64>,
}

struct Inner {
    /// The counter of the latest change ([`START`]: none yet).
    last: u64,
    at: HashMap<PartitionKey, u64>,
    order: BTreeMap<u64, PartitionKey>,
}

/// Whether noting a change wakes the feed's waiters (followers' polls held on this node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Wake them: a change a follower may have to copy from this node.
    Waiters,
    /// Leave them waiting: a change no follower copies from this node at the epoch it was made
    /// at (this node's own copy of another primary's entries). Each would otherwise wake every
    /// poll held here, only to find nothing it follows.
    Nobody,
}

/// What [`Feed::since`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Changed {
    /// Partitions changed after the cursor, oldest change first.
    pub partitions: Vec<PartitionKey>,
    /// The cursor to ask from next.
    pub cursor: u64,
    /// More changes wait beyond `cursor` (the answer was cut at its limit).
    pub more: bool,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    /// An empty feed with a fresh instance id.
    pub fn new() -> Self {
        // Any value another process is unlikely to have picked: time and process id mixed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let instance = (nanos ^ (u64::from(std::process::id()) << 40)).max(1);
        Self {
            instance,
            inner: Mutex::new(Inner { last: START, at: HashMap::new(), order: BTreeMap::new() }),
            counter: tokio::sync::watch::channel(START).0,
        }
    }

    /// Names this process's feed; cursors of another instance mean nothing here.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The counter of the latest change ([`START`]: none yet).
    pub fn now(&self) -> u64 {
        *self.counter.borrow()
    }

    /// Notes that `partition` changed, and wakes whoever waits for a change.
    pub fn note(&self, partition: &PartitionKey) {
        self.note_as(partition, Wake::Waiters);
    }

    /// Notes that `partition` changed, waking whoever waits only with [`Wake::Waiters`]. A
    /// waiter that looks later (or wakes for another change) still finds this one.
    pub fn note_as(&self, partition: &PartitionKey, wake: Wake) {
        let mut inner = self.inner.lock();
        inner.last += 1;
        let now = inner.last;
        match inner.at.get_mut(partition) {
            Some(at) => {
                let before = std::mem::replace(at, now);
                inner.order.remove(&before);
            }
            None => {
                inner.at.insert(partition.clone(), now);
            }
        }
        inner.order.insert(now, partition.clone());
        // Sent under the lock, so the counter never runs ahead of what `since` can see.
        self.counter.send_if_modified(|counter| {
            *counter = now;
            wake == Wake::Waiters
        });
    }

    /// The partitions changed after `cursor`, at most `limit` of them.
    pub fn since(&self, cursor: u64, limit: usize) -> Changed {
        let inner = self.inner.lock();
        let mut partitions = Vec::new();
        let mut reached = cursor;
        for (at, partition) in inner.order.range(cursor.saturating_add(1)..) {
            if partitions.len() >= limit.max(1) {
                return Changed { partitions, cursor: reached, more: true };
            }
            partitions.push(partition.clone());
            reached = *at;
        }
        Changed { partitions, cursor: inner.last.max(cursor), more: false }
    }

    /// Waits until the counter passes `seen` or `max` passes; returns the counter.
    pub async fn wait(&self, seen: u64, max: Duration) -> u64 {
        let mut rx = self.counter.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|c| *c > seen)).await;
        *rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str) -> PartitionKey {
        PartitionKey::new(
            &memring_common::TenantId::parse(tenant).expect("tenant"),
            &memring_common::Scope::parse("shared").expect("scope"),
        )
    }

    #[test]
    fn lists_each_changed_partition_once_in_the_order_of_its_last_change() {
        let feed = Feed::new();
        assert_eq!(
            feed.since(START, 10),
            Changed { partitions: vec![], cursor: START, more: false }
        );
        for t in ["a", "b", "c", "a"] {
            feed.note(&key(t));
        }
        let all = feed.since(START, 10);
        assert_eq!(all.partitions, vec![key("b"), key("c"), key("a")]);
        assert_eq!((all.cursor, all.more), (START + 4, false));
        // Nothing after the latest change; a change after it is all there is next time.
        assert_eq!(feed.since(START + 4, 10).partitions, vec![]);
        feed.note(&key("b"));
        assert_eq!(feed.since(START + 4, 10).partitions, vec![key("b")]);
        assert_eq!(feed.now(), START + 5);
    }

    #[test]
    fn a_cut_answer_resumes_where_it_stopped_and_misses_nothing() {
        let feed = Feed::new();
        let tenants: Vec<String> = (0..25).map(|n| format!("t{n}")).collect();
        for t in &tenants {
            feed.note(&key(t));
        }
        let mut seen = Vec::new();
        let mut cursor = START;
        loop {
            let page = feed.since(cursor, 10);
            seen.extend(page.partitions);
            cursor = page.cursor;
            if !page.more {
                break;
            }
            // A change between pages lands after the cursor, so the next page has it.
            feed.note(&key("t0"));
        }
        let expected: std::collections::HashSet<PartitionKey> =
            tenants.iter().map(|t| key(t)).collect();
        let got: std::collections::HashSet<PartitionKey> = seen.iter().cloned().collect();
        assert_eq!(got, expected);
        assert_eq!(cursor, feed.now());
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_a_change_and_not_before() {
        let feed = std::sync::Arc::new(Feed::new());
        let idle = feed.wait(START, Duration::from_millis(50)).await;
        assert_eq!(idle, START);
        let waiter = tokio::spawn({
            let feed = feed.clone();
            async move { feed.wait(START, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        feed.note(&key("x"));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .expect("task");
        assert_eq!(woke, START + 1);
        assert_ne!(Feed::new().instance(), 0);
    }

    #[tokio::test]
    async fn a_quiet_change_wakes_nobody_but_is_found_by_the_next_look() {
        let feed = std::sync::Arc::new(Feed::new());
        let waiter = tokio::spawn({
            let feed = feed.clone();
            async move { feed.wait(START, Duration::from_millis(300)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        feed.note_as(&key("x"), Wake::Nobody);
        assert_eq!(
            waiter.await.expect("task"),
            START + 1,
            "the waiter reads the counter when it times out"
        );
        assert!(started.elapsed() >= Duration::from_millis(200), "woken early");
        // A later look sees it at once, and lists it.
        assert_eq!(feed.wait(START, Duration::from_secs(30)).await, START + 1);
        assert_eq!(feed.since(START, 10).partitions, vec![key("x")]);
        assert_eq!(feed.now(), START + 1);
    }

    #[test]
    fn a_feed_with_no_change_yet_hands_out_a_cursor_that_asks_for_changes() {
        // Readers send cursor 0 to ask for everything: a listing taken before any change must
        // not hand 0 back, or every later ask of an idle node would be a full listing again.
        let feed = Feed::new();
        assert_ne!(feed.now(), 0);
        assert_eq!(feed.since(feed.now(), 10).partitions, vec![]);
    }
}
