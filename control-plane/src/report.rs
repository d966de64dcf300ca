//! How `shardctl` prints what the control plane answers about its jobs: a rebalance's or
//! drain's plan and migrations ([`ChangeReport`]), and desired against observed placement
//! ([`PlanReport`]) (wire types in `common/src/api/jobs.rs`).

use std::fmt::Write as _;

use memring_common::api::{ChangeReport, Move, PlanReport};

/// How many partitions `moves` touch (with replication a partition can get a copy on each of
/// several nodes).
fn moving(moves: &[Move]) -> usize {
    moves.iter().map(|m| m.partition.as_str()).collect::<std::collections::BTreeSet<_>>().len()
}

/// The text `shardctl rebalance` and `shardctl drain` print.
pub fn change(report: &ChangeReport) -> String {
    let (plan, mut out) = (&report.plan, String::new());
    let ratio =
        if plan.ideal_fraction > 0.0 { plan.moved_fraction / plan.ideal_fraction } else { 0.0 };
    let _ = writeln!(
        out,
        "plan at epoch {}: joining {:?}, leaving {:?}; {} of {} partitions move ({} new copies), \
         {:.1}% of the copies of {} memories (ideal {:.1}%, ratio {ratio:.2})",
        plan.epoch,
        plan.joining,
        plan.leaving,
        moving(&plan.moves),
        plan.partitions,
        plan.moves.len(),
        plan.moved_fraction * 100.0,
        plan.memories,
        plan.ideal_fraction * 100.0,
    );
    if !plan.later.is_empty() {
        // A dry run plans the first step only; a run has admitted these too.
        let _ = writeln!(out, "then, one at a time: {:?}", plan.later);
    }
    for m in &plan.moves {
        let _ = writeln!(
            out,
            "  {:<40} {} -> {}  ({} memories)",
            m.partition, m.from, m.to, m.memories
        );
    }
    for r in &report.migrations {
        let _ = writeln!(
            out,
            "moved {} {} -> {}: {} memories, fenced {} ms",
            r.partition, r.from, r.to, r.count, r.fenced_ms
        );
    }
    out
}

/// The text `shardctl plan` prints.
pub fn plan(report: &PlanReport) -> String {
    let mut out = String::new();
    let policy = report.size_policy.as_ref().map(memring_common::layout::SizePolicy::describe);
    let _ = writeln!(
        out,
        "epoch {}: auto-rebalance {}; size policy {}",
        report.epoch,
        if report.auto_rebalance { "on" } else { "off" },
        policy.as_deref().unwrap_or("none")
    );
    if let Some(join) = &report.join {
        let _ = writeln!(
            out,
            "waiting to join: {}; admitting {} moves {} of {} partitions ({} new copies), \
             {:.1}% of the copies (ideal {:.1}%)",
            report.waiting.join(", "),
            join.joining.join(", "),
            moving(&join.moves),
            join.partitions,
            join.moves.len(),
            join.moved_fraction * 100.0,
            join.ideal_fraction * 100.0
        );
    }
    if let Some(step) = &report.policy_next {
        let _ = writeln!(out, "size policy, next: {step}");
    }
    for m in &report.migrations {
        let _ = writeln!(out, "in flight: {} {} -> {} ({})", m.partition, m.from, m.to, m.phase);
    }
    let next = report.next.as_deref().unwrap_or("nothing; placement is as the layout wants");
    let _ = writeln!(out, "next: {next}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_report_names_the_moves_and_the_nodes_still_to_join() -> anyhow::Result<()> {
        let report: ChangeReport = serde_json::from_value(serde_json::json!({
            "plan": {
                "epoch": 7, "joining": ["shard-4"], "later": ["shard-5"], "leaving": null,
                "moves": [
                    {"partition": "t1/shared", "from": "shard-1", "to": "shard-4", "memories": 30},
                    {"partition": "t1/shared", "from": "shard-1", "to": "shard-5", "memories": 30},
                    {"partition": "t2/shared", "from": "shard-2", "to": "shard-4", "memories": 20}
                ],
                "partitions": 4, "memories": 120, "moved_fraction": 0.25, "ideal_fraction": 0.2
            },
            "migrations": []
        }))?;
        let text = change(&report);
        assert!(text.starts_with("plan at epoch 7: joining [\"shard-4\"]"), "{text}");
        assert!(text.contains("2 of 4 partitions move (3 new copies)"), "{text}");
        assert!(text.contains("25.0% of the copies of 120 memories (ideal 20.0%, ratio 1.25)"));
        assert!(text.contains("then, one at a time: [\"shard-5\"]"), "{text}");
        assert!(text.contains("t1/shared") && text.contains("shard-1 -> shard-4  (30 memories)"));
        Ok(())
    }

    #[test]
    fn a_plan_report_says_who_is_admitted_and_what_comes_next() -> anyhow::Result<()> {
        let report: PlanReport = serde_json::from_value(serde_json::json!({
            "epoch": 9, "auto_rebalance": false, "size_policy": null,
            "waiting": ["shard-4", "shard-5"],
            "join": {
                "epoch": 9, "joining": ["shard-4"], "later": ["shard-5"], "leaving": null,
                "moves": [
                    {"partition": "t1/shared", "from": "shard-1", "to": "shard-4", "memories": 30},
                    {"partition": "t2/shared", "from": "shard-2", "to": "shard-4", "memories": 20}
                ],
                "partitions": 4, "memories": 120, "moved_fraction": 0.14, "ideal_fraction": 0.12
            },
            "policy_next": null, "migrations": [], "next": "nothing until `shardctl rebalance`"
        }))?;
        let text = plan(&report);
        assert!(text.contains("auto-rebalance off; size policy none"), "{text}");
        assert!(
            text.contains("admitting shard-4 moves 2 of 4 partitions (2 new copies), 14.0%"),
            "{text}"
        );
        assert!(text.ends_with("next: nothing until `shardctl rebalance`\n"), "{text}");
        Ok(())
    }
}
