//! Placement by size (the layout's `size_policy`), the autopilot's second duty: each
//! tick it refreshes every tenant's size from what changed on each node since its last look
//! (`common/src/usage.rs`, the routers' quota engine), then takes at most one action, in this
//! order:
//! 1. a dedicated tenant now below the release sizes (`release_below_memories`, and
//!    `release_below_bytes` where the policy has a byte threshold) goes back to the ring (each of
//!    its partitions migrated to its ring owner, its policy pins released);
//! 2. a partition of a dedicated tenant that is not on its node yet (a scope written since) is
//!    moved there;
//! 3. the largest tenant (by memories, then bytes) at or above `dedicate_at_memories` or
//!    `dedicate_at_bytes` without a node gets a free one (a
//!    dedicated node in the layout, not down, that no override names), all its partitions moved
//!    there with a policy pin (`Flip::Policy`).
//!
//! Every move is the online migration `shardctl migrate` runs (copy, catch up, fence, verify,
//! flip; journaled; cancellable), one partition after another, holding the job slot.

use super::*;
use memring_common::layout::PinKind;

/// The tenants' sizes, and which of them are big enough for a node of their own under the
/// policy's thresholds: kept up to date from the tenants that changed, so a tick costs what
/// changed, not how many tenants exist.
#[derive(Default)]
pub(super) struct Sizes {
    usage: Usage,
    /// The policy `over` was decided under.
    policy: Option<SizePolicy>,
    over: BTreeSet<String>,
    /// Tenants whose partitions changed since the last step was decided (`all_dirty`: every
    /// tenant, after a recount): only their copies are looked up for a placed tenant's new scopes.
    dirty: BTreeSet<String>,
    all_dirty: bool,
}

impl Sizes {
    /// Takes `node`'s list of changed partitions into account.
    fn apply(&mut self, ring: &Ring, node: &NodeId, list: PartitionList, policy: &SizePolicy) {
        let changed: BTreeSet<String> = list
            .partitions
            .iter()
            .filter_map(|p| p.partition.tenant())
            .map(|t| t.to_string())
            .collect();
        let recounted = self.usage.apply(ring, node, list);
        self.note(recounted, policy, changed);
    }

    /// Forgets nodes no longer in `ring`'s layout.
    fn retain_nodes(&mut self, ring: &Ring, policy: &SizePolicy) {
        let recounted = self.usage.retain_nodes(ring);
        self.note(recounted, policy, BTreeSet::new());
    }

    fn note(&mut self, recounted: bool, policy: &SizePolicy, changed: BTreeSet<String>) {
        let sums = self.usage.sums();
        if recounted {
            self.all_dirty = true;
        }
        self.dirty.extend(changed.iter().cloned());
        let big = |s: &(u64, u64)| policy.wants_own_node(s.0, s.1);
        if recounted || self.policy.as_ref() != Some(policy) {
            // Every sum moved (a layout change, a full list, new thresholds): a walk over the
            // tenants, as often as the sums are counted again.
            self.policy = Some(policy.clone());
            self.over = sums.iter().filter(|(_, s)| big(s)).map(|(t, _)| t.clone()).collect();
            return;
        }
        for tenant in changed {
            if sums.get(&tenant).is_some_and(big) {
                self.over.insert(tenant);
            } else {
                self.over.remove(&tenant);
            }
        }
    }
}

/// What the size policy does next (see the module documentation), decided from the layout and
/// the tenants' sizes alone.
#[derive(Debug, PartialEq)]
enum PolicyStep {
    /// Back to the ring: each partition to its ring owner.
    Release { tenant: String, partitions: Vec<(PartitionKey, NodeId)> },
    /// Onto the tenant's dedicated node.
    Dedicate { tenant: String, node: NodeId, partitions: Vec<PartitionKey> },
}

/// Each dedicated node of `layout` and the tenant its policy pins hold (if any).
pub fn dedicated(layout: &ClusterLayout) -> BTreeMap<NodeId, Option<String>> {
    let Some(policy) = &layout.size_policy else { return BTreeMap::new() };
    let mut out: BTreeMap<NodeId, Option<String>> =
        policy.dedicated_nodes.iter().map(|n| (n.clone(), None)).collect();
    for (p, node) in layout.pins.of(PinKind::Policy) {
        if let Some(tenant) = p.tenant() {
            out.insert(node.clone(), Some(tenant.to_string()));
        }
    }
    out
}

/// The distinct partitions of a list of (node, partition) copies, sorted.
fn distinct(copies: impl IntoIterator<Item = PartitionKey>) -> Vec<PartitionKey> {
    copies.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// The size policy's next step: `sizes` is every tenant's (memories, bytes), `over` the tenants
/// big enough for a node of their own, `dirty` whether a tenant's partitions changed since the last look,
/// `copies_of` where a tenant's partitions are (node, partition). It looks at the placed tenants
/// and at `over` only, never at every tenant.
fn next_step(
    layout: &ClusterLayout,
    policy: &SizePolicy,
    sizes: &HashMap<String, (u64, u64)>,
    over: &BTreeSet<String>,
    dirty: &dyn Fn(&str) -> bool,
    copies_of: &dyn Fn(&str) -> Vec<(NodeId, PartitionKey)>,
) -> Option<PolicyStep> {
    let placed: BTreeMap<String, NodeId> = dedicated(layout)
        .into_iter()
        .filter_map(|(node, tenant)| tenant.map(|t| (t, node)))
        .collect();
    let size = |t: &str| sizes.get(t).copied().unwrap_or((0, 0));
    for (tenant, node) in &placed {
        let (memories, bytes) = size(tenant);
        let pinned: Vec<&PartitionKey> = layout
            .pins
            .of(PinKind::Policy)
            .map(|(p, _)| p)
            .filter(|p| p.tenant().is_some_and(|t| t.as_str() == tenant))
            .collect();
        if policy.may_return(memories, bytes) {
            // Home is where the ring alone puts each partition: its owner without the pins.
            let ring = Ring::new(layout.unpinned(pinned.iter().copied()));
            let partitions = pinned
                .iter()
                .filter_map(|p| Some(((*p).clone(), ring.owner(p)?.id.clone())))
                .collect();
            return Some(PolicyStep::Release { tenant: tenant.clone(), partitions });
        }
        if !dirty(tenant) {
            continue;
        }
        // A partition is in place once the policy pinned it on the node (with replication its
        // other copies stay on shared nodes); one written since is not.
        let elsewhere = distinct(
            copies_of(tenant)
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| !(pinned.contains(&p) && layout.pins.node(p) == Some(node))),
        );
        if !elsewhere.is_empty() {
            return Some(PolicyStep::Dedicate {
                tenant: tenant.clone(),
                node: node.clone(),
                partitions: elsewhere,
            });
        }
    }
    // A tenant an operator pinned (`shardctl migrate`) stays where the operator put it.
    let operator_pinned: BTreeSet<String> = layout
        .pins
        .of(PinKind::Operator)
        .filter_map(|(p, _)| p.tenant().map(|t| t.to_string()))
        .collect();
    let taken: BTreeSet<&NodeId> = layout.pins.values().map(|pin| &pin.node).collect();
    let free = policy.dedicated_nodes.iter().find(|n| {
        layout.node(n).is_some()
            && !layout.is_down(n)
            && !layout.states.get(n).is_draining()
            && !taken.contains(n)
    })?;
    let tenant = over
        .iter()
        .filter(|t| {
            let (memories, bytes) = size(t);
            policy.wants_own_node(memories, bytes) && !placed.contains_key(*t)
        })
        .filter(|t| !operator_pinned.contains(*t))
        .max_by_key(|t| (size(t), std::cmp::Reverse((*t).clone())))?;
    let partitions = distinct(copies_of(tenant).into_iter().map(|(_, p)| p));
    Some(PolicyStep::Dedicate { tenant: tenant.clone(), node: free.clone(), partitions })
}

/// The layout's size policy now (the one a cancelled move was made under), if it can be read.
pub(super) async fn jobs_policy(jobs: &Jobs) -> Option<SizePolicy> {
    jobs.store.load().await.ok().and_then(|v| v.layout.size_policy)
}

impl std::fmt::Display for PolicyStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |ps: &mut dyn Iterator<Item = String>| ps.collect::<Vec<_>>().join(", ");
        match self {
            PolicyStep::Release { tenant, partitions } => write!(
                f,
                "return {tenant} to the ring: {}",
                keys(&mut partitions.iter().map(|(p, home)| format!("{p} -> {home}")))
            ),
            PolicyStep::Dedicate { tenant, node, partitions } => write!(
                f,
                "move {tenant} onto dedicated node {node}: {}",
                keys(&mut partitions.iter().map(|p| p.to_string()))
            ),
        }
    }
}

impl Autopilot {
    /// What the size policy would do next under `layout`, from the sizes last read (the active
    /// control plane keeps them; `None` with nothing to do, no policy, or before its first tick).
    pub fn policy_next(&self, layout: &ClusterLayout) -> Option<String> {
        let policy = layout.size_policy.as_ref()?;
        let sizes = self.usage();
        let copies_of = |t: &str| -> Vec<(NodeId, PartitionKey)> {
            let copies = sizes.usage.copies_of(t).into_iter();
            copies.filter(|c| c.2 > 0).map(|(n, p, _)| (n, p)).collect()
        };
        let step =
            next_step(layout, policy, sizes.usage.sums(), &sizes.over, &|_| true, &copies_of);
        step.map(|s| s.to_string())
    }

    /// Refreshes the tenants' sizes from what changed and takes the size policy's next step,
    /// if any (see the module documentation).
    pub(super) async fn place_by_size(&self, jobs: &Jobs) -> anyhow::Result<()> {
        let layout = jobs.store.load().await?.layout;
        let Some(policy) = layout.size_policy.clone() else {
            *self.usage() = Sizes::default();
            return Ok(());
        };
        let ring = Ring::new(layout.clone());
        for node in &layout.nodes {
            let query = self.usage().usage.query(&node.id);
            let list = shard::partitions_changed(&jobs.client, &node.addr, &query).await?;
            self.usage().apply(&ring, &node.id, list, &policy);
        }
        self.usage().retain_nodes(&ring, &policy);
        let step = {
            let sizes = self.usage();
            let copies_of = |t: &str| -> Vec<(NodeId, PartitionKey)> {
                let copies = sizes.usage.copies_of(t).into_iter();
                copies.filter(|c| c.2 > 0).map(|(n, p, _)| (n, p)).collect()
            };
            let dirty = |t: &str| sizes.all_dirty || sizes.dirty.contains(t);
            next_step(&layout, &policy, sizes.usage.sums(), &sizes.over, &dirty, &copies_of)
        };
        let Some(step) = step else {
            // Nothing to do for what changed: it need not be looked at again.
            let mut sizes = self.usage();
            sizes.dirty.clear();
            sizes.all_dirty = false;
            return Ok(());
        };
        {
            let mut state = self.state();
            if state.policy_held.as_ref().is_some_and(|held| *held != policy) {
                state.policy_held = None;
            }
            let backing_off = state.policy_backoff.waiting(Instant::now());
            if backing_off || state.policy_held.is_some() {
                return Ok(());
            }
        }
        if crate::placement::settling(&layout).is_some() {
            // A move would skew the retiring copies of a join or drain still settling.
            return Ok(());
        }
        let Ok(_slot) = jobs.slot.try_lock() else { return Ok(()) };
        jobs.cancel.clear();
        let (store, client, throttle, cancel) =
            (jobs.store.as_ref(), &jobs.client, jobs.throttle, &jobs.cancel);
        let done = match &step {
            PolicyStep::Release { tenant, partitions } => {
                tracing::info!(%tenant, partitions = partitions.len(), "size policy: tenant shrank; back to the ring");
                for (p, home) in partitions {
                    migrate_partition(store, client, p, home, Flip::Natural, throttle, cancel)
                        .await?;
                }
                format!("{tenant} back to the ring ({} partitions)", partitions.len())
            }
            PolicyStep::Dedicate { tenant, node, partitions } => {
                tracing::info!(%tenant, %node, partitions = partitions.len(), "size policy: tenant onto its dedicated node");
                for p in partitions {
                    migrate_partition(store, client, p, node, Flip::Policy, throttle, cancel)
                        .await?;
                }
                format!("{tenant} onto {node} ({} partitions)", partitions.len())
            }
        };
        let mut state = self.state();
        state.last_policy_action = Some(done);
        state.policy_backoff.succeeded();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memring_common::layout::LayoutNode;

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).expect("a node id")
    }

    fn key(s: &str) -> PartitionKey {
        s.parse().expect("a partition key")
    }

    fn layout() -> ClusterLayout {
        let mut l = ClusterLayout::default();
        for i in 1..=4 {
            l = l.with_node(LayoutNode { id: node(&format!("n{i}")), addr: format!("h:{i}") });
        }
        l.size_policy = Some(SizePolicy {
            dedicate_at_memories: 1000,
            release_below_memories: 500,
            dedicated_nodes: [node("n4")].into(),
            dedicate_at_bytes: None,
            release_below_bytes: None,
        });
        l
    }

    fn sizes(of: &[(&str, u64)]) -> HashMap<String, (u64, u64)> {
        of.iter().map(|(t, n)| (t.to_string(), (*n, 0))).collect()
    }

    fn over(sizes: &HashMap<String, (u64, u64)>, policy: &SizePolicy) -> BTreeSet<String> {
        sizes
            .iter()
            .filter(|(_, s)| policy.wants_own_node(s.0, s.1))
            .map(|(t, _)| t.clone())
            .collect()
    }

    #[test]
    fn the_largest_tenant_gets_the_free_node_its_new_scopes_follow_and_it_leaves_below_release() {
        let mut l = layout();
        let policy = l.size_policy.clone().expect("a policy");
        let (n1, n4) = (node("n1"), node("n4"));
        assert!(
            Ring::new(l.clone()).shares().iter().all(|(id, share)| *id != n4 || *share == 0.0),
            "no ring share"
        );
        let big = sizes(&[("a", 1200), ("b", 3000), ("c", 10)]);
        let on_n1 = |t: &str| vec![(n1.clone(), key(&format!("{t}/shared")))];
        assert_eq!(
            next_step(&l, &policy, &big, &over(&big, &policy), &|_| true, &on_n1),
            Some(PolicyStep::Dedicate {
                tenant: "b".into(),
                node: n4.clone(),
                partitions: vec![key("b/shared")]
            })
        );
        // An operator's pin wins: with b pinned by `shardctl migrate`, a is the one to move.
        let mut pinned = l.clone();
        pinned.pins.set(key("b/shared"), node("n2"), PinKind::Operator);
        assert_eq!(
            next_step(&pinned, &policy, &big, &over(&big, &policy), &|_| true, &on_n1),
            Some(PolicyStep::Dedicate {
                tenant: "a".into(),
                node: n4.clone(),
                partitions: vec![key("a/shared")]
            })
        );
        // b is on n4 now: the node is taken (nothing for a); a scope b wrote since follows it.
        l.pins.set(key("b/shared"), n4.clone(), PinKind::Policy);
        let new_scope = |t: &str| {
            let mut v = vec![(n4.clone(), key(&format!("{t}/shared")))];
            if t == "b" {
                v.push((n1.clone(), key("b/agent:x")));
            }
            v
        };
        assert_eq!(
            next_step(&l, &policy, &big, &over(&big, &policy), &|_| true, &new_scope),
            Some(PolicyStep::Dedicate {
                tenant: "b".into(),
                node: n4.clone(),
                partitions: vec![key("b/agent:x")]
            })
        );
        let settled = |t: &str| vec![(n4.clone(), key(&format!("{t}/shared")))];
        assert_eq!(next_step(&l, &policy, &big, &over(&big, &policy), &|_| true, &settled), None);
        // Below the threshold but above the release size it stays; below that it goes home.
        assert_eq!(
            next_step(&l, &policy, &sizes(&[("b", 700)]), &BTreeSet::new(), &|_| true, &settled),
            None
        );
        let home = Ring::new(l.clone())
            .owner_of_bytes(&key("b/shared").encode())
            .map(|n| n.id.clone())
            .expect("a ring owner");
        assert_ne!(home, n4);
        assert_eq!(
            next_step(&l, &policy, &sizes(&[("b", 499)]), &BTreeSet::new(), &|_| true, &settled),
            Some(PolicyStep::Release {
                tenant: "b".into(),
                partitions: vec![(key("b/shared"), home)]
            })
        );
    }

    /// A policy with a byte threshold dedicates a tenant with few but large memories, and lets
    /// it return only once it is below both release sizes.
    #[test]
    fn a_byte_threshold_dedicates_a_tenant_of_few_large_memories() {
        let mut l = layout();
        let policy = SizePolicy {
            dedicate_at_bytes: Some(1 << 30),
            release_below_bytes: Some(1 << 29),
            ..l.size_policy.clone().expect("a policy")
        };
        policy.validate().expect("a valid policy");
        l.size_policy = Some(policy.clone());
        let n4 = node("n4");
        // "a" has more memories, "b" more bytes than the threshold: both qualify, the larger by
        // memories first.
        let big: HashMap<String, (u64, u64)> = [
            ("a".to_string(), (1500, 10 << 20)),
            ("b".to_string(), (40, 2 << 30)),
            ("c".to_string(), (900, 900 << 20)),
        ]
        .into();
        assert_eq!(over(&big, &policy), ["a".to_string(), "b".to_string()].into());
        let on_n1 = |t: &str| vec![(node("n1"), key(&format!("{t}/shared")))];
        let only_b: HashMap<String, (u64, u64)> = [("b".to_string(), (40, 2 << 30))].into();
        assert_eq!(
            next_step(&l, &policy, &only_b, &over(&only_b, &policy), &|_| true, &on_n1),
            Some(PolicyStep::Dedicate {
                tenant: "b".into(),
                node: n4.clone(),
                partitions: vec![key("b/shared")]
            })
        );
        l.pins.set(key("b/shared"), n4.clone(), PinKind::Policy);
        let settled = |t: &str| vec![(n4.clone(), key(&format!("{t}/shared")))];
        // Under the memory release size but not under the byte one: it stays.
        let mid: HashMap<String, (u64, u64)> = [("b".to_string(), (40, 700 << 20))].into();
        assert_eq!(next_step(&l, &policy, &mid, &BTreeSet::new(), &|_| true, &settled), None);
        let small: HashMap<String, (u64, u64)> = [("b".to_string(), (40, 100 << 20))].into();
        assert!(matches!(
            next_step(&l, &policy, &small, &BTreeSet::new(), &|_| true, &settled),
            Some(PolicyStep::Release { .. })
        ));
        // Thresholds that cannot work are refused.
        let bytes_only = SizePolicy {
            dedicate_at_memories: 0,
            release_below_memories: 0,
            dedicate_at_bytes: Some(100),
            release_below_bytes: None,
            dedicated_nodes: [n4.clone()].into(),
        };
        bytes_only.validate().expect("bytes alone");
        assert!(bytes_only.wants_own_node(0, 100) && !bytes_only.wants_own_node(u64::MAX, 99));
        assert!(bytes_only.may_return(u64::MAX, 99) && !bytes_only.may_return(0, 100));
        for bad in [
            SizePolicy { dedicate_at_bytes: None, ..bytes_only.clone() },
            SizePolicy { dedicate_at_bytes: Some(0), ..bytes_only.clone() },
            SizePolicy { release_below_bytes: Some(101), ..bytes_only.clone() },
            SizePolicy {
                dedicate_at_bytes: None,
                release_below_bytes: Some(1),
                dedicate_at_memories: 5,
                ..bytes_only.clone()
            },
            SizePolicy { release_below_memories: 1, ..bytes_only.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// With replication a dedicated tenant's partitions are led from its node and copied on
    /// shared nodes: those copies are where they belong; going home means to the ring's owner.
    #[test]
    fn with_replication_a_placed_tenant_keeps_its_shared_copies() {
        let mut l = layout();
        l.replication_factor = 3;
        l.validate().expect("a policy with replication");
        let policy = l.size_policy.clone().expect("a policy");
        let n4 = node("n4");
        let shared = key("b/shared");
        l.pins.set(shared.clone(), n4.clone(), PinKind::Policy);
        let ring = Ring::new(l.clone());
        let set: Vec<NodeId> = ring.replica_set(&shared).iter().map(|n| n.id.clone()).collect();
        assert_eq!(set.len(), 3);
        assert_eq!(set[0], n4, "led from its node");
        let copies = |_: &str| set.iter().map(|n| (n.clone(), shared.clone())).collect();
        let big = sizes(&[("b", 3000)]);
        assert_eq!(next_step(&l, &policy, &big, &over(&big, &policy), &|_| true, &copies), None);
        // A scope written since, led from a shared node, follows it.
        let with_new = |t: &str| {
            let mut v = copies(t);
            v.push((node("n1"), key("b/agent:x")));
            v
        };
        assert_eq!(
            next_step(&l, &policy, &big, &over(&big, &policy), &|_| true, &with_new),
            Some(PolicyStep::Dedicate {
                tenant: "b".into(),
                node: n4.clone(),
                partitions: vec![key("b/agent:x")]
            })
        );
        let mut bare = l.clone();
        bare.pins.clear();
        let home = Ring::new(bare).owner(&shared).map(|n| n.id.clone()).expect("an owner");
        assert_eq!(
            next_step(&l, &policy, &sizes(&[("b", 10)]), &BTreeSet::new(), &|_| true, &copies),
            Some(PolicyStep::Release { tenant: "b".into(), partitions: vec![(shared, home)] })
        );
    }

    fn stats(p: &str, count: u64) -> memring_common::api::PartitionStats {
        memring_common::api::PartitionStats {
            partition: key(p),
            count,
            dimensions: None,
            last_seq: 1,
            last_term: 0,
            bytes: count * 100,
        }
    }

    fn list(
        node: &NodeId,
        partitions: Vec<memring_common::api::PartitionStats>,
        cursor: u64,
    ) -> PartitionList {
        PartitionList {
            node: node.clone(),
            epoch: 1,
            partitions,
            feed: 7,
            cursor,
            full: cursor == 1,
        }
    }

    /// What a placement-by-size tick costs once the first full list is in: 20 tenants' partitions
    /// changed since the cursor (one crossing the threshold) and the placed tenant's, at 1,000
    /// and at 100,000 tenants on the node (docs/benchmarks.md; printed, not asserted: `cargo test --release -p
    /// memring-control --lib policy_tick_cost -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement"]
    fn policy_tick_cost_follows_what_changed() {
        // n4 holds the placed tenant t0 (so no node is free and t0's new scopes are watched).
        let mut l = layout();
        l.epoch = 1;
        let (n1, n4) = (node("n1"), node("n4"));
        l.nodes.retain(|n| n.id == n1 || n.id == n4);
        l.pins.set(key("t0/shared"), n4.clone(), PinKind::Policy);
        let policy = l.size_policy.clone().expect("a policy");
        let ring = Ring::new(l.clone());
        for tenants in [1_000usize, 100_000] {
            let mut sizes = Sizes::default();
            let all =
                list(&n1, (1..tenants).map(|t| stats(&format!("t{t}/shared"), 10)).collect(), 1);
            // For scale: the first full list is one walk over every copy (a recount).
            let walk = Instant::now();
            sizes.apply(&ring, &n1, all, &policy);
            let walk = walk.elapsed();
            let placed = vec![stats("t0/shared", 5000)];
            sizes.apply(&ring, &n4, list(&n4, placed, 1), &policy);
            let rounds = 200u32;
            // Only the tick is timed: the lists it reads are made before.
            let mut spent = Duration::ZERO;
            for round in 0..rounds {
                let changed = (0..20)
                    .map(|i| {
                        let t = 1 + (round as usize * 20 + i) % (tenants - 1);
                        stats(&format!("t{t}/shared"), if i == 0 { 2000 } else { 11 })
                    })
                    .collect();
                let changed = list(&n1, changed, 2 + u64::from(round));
                // The placed tenant writes all the time: its copies are looked up every tick.
                let busy = list(&n4, vec![stats("t0/shared", 5000 + u64::from(round))], 2);
                let started = Instant::now();
                sizes.apply(&ring, &n1, changed, &policy);
                sizes.apply(&ring, &n4, busy, &policy);
                let copies_of = |t: &str| -> Vec<(NodeId, PartitionKey)> {
                    let copies = sizes.usage.copies_of(t).into_iter();
                    copies.map(|(n, p, _)| (n, p)).collect()
                };
                let dirty = |t: &str| sizes.all_dirty || sizes.dirty.contains(t);
                let step =
                    next_step(&l, &policy, sizes.usage.sums(), &sizes.over, &dirty, &copies_of);
                sizes.dirty.clear();
                sizes.all_dirty = false;
                spent += started.elapsed();
                assert_eq!(step, None, "{step:?}");
            }
            println!(
                "{tenants} tenants: {:.1} µs per tick (20 changed; {} over the threshold); the first \
                 full list, one walk: {:.1} µs",
                spent.as_secs_f64() * 1e6 / f64::from(rounds),
                sizes.over.len(),
                walk.as_secs_f64() * 1e6
            );
        }
    }
}
