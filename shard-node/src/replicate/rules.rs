//! The replication protocol's decisions, as pure functions: what a node may commit, whose log a
//! node taking over adopts, when a follower may take entries from (or truncate to) a primary, how
//! far back a diverging log is cut, and which acknowledgements count.
//!
//! The live code (`replicate.rs`, `storage.rs`) and the model checker (`model.rs`) both decide
//! by these functions, so the rules the model explores exhaustively are the rules that run.
//!
//! **Terms.** Every log entry carries the layout epoch at which its writer had taken the
//! partition's writes over (its *term*). An owner takes over once per epoch, so at most one node
//! writes under a given term, and terms never decrease along a log. Two copies holding an entry
//! with the same (term, position) therefore hold the same entries up to it (Raft's log matching),
//! and logs are compared by `(last term, last position)`, never by length alone.

/// A position in a partition's log: the last entry's term and sequence number (`(0, 0)`: empty).
/// Ordered by term first, as logs are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Term of the entry at `seq` (0 for the empty log, and for entries written before terms).
    pub term: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl LogPos {
    /// The position `(term, seq)`.
    pub fn new(term: u64, seq: u64) -> Self {
        Self { term, seq }
    }
}

/// Why an owner may not append now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has not taken the partition's writes over at the epoch it is at.
    NotTakenOver,
    /// Its log holds entries of a newer term than its layout: some node has led the partition
    /// under a layout this one has not seen yet.
    StaleLayout,
}

/// The term of an entry an owner appends at layout epoch `view`, if it may: with replication it
/// must have taken over at `view` (`taken`), and its log must hold nothing of a later term.
pub fn commit_term(
    replicated: bool,
    view: u64,
    taken: Option<u64>,
    last_term: u64,
) -> Result<u64, Refusal> {
    if replicated && taken != Some(view) {
        return Err(Refusal::NotTakenOver);
    }
    if last_term > view {
        return Err(Refusal::StaleLayout);
    }
    Ok(view)
}

/// Of the positions the copies asked by a node taking over answered (and its own, `mine`), the
/// one whose log it must adopt: the greatest `(term, seq)`. `None` when its own log is that one
/// (ties keep its own: an equal position means an equal log).
pub fn adopt_from<K>(
    mine: LogPos,
    answers: impl IntoIterator<Item = (K, LogPos)>,
) -> Option<(K, LogPos)> {
    answers.into_iter().filter(|(_, pos)| *pos > mine).max_by_key(|(_, pos)| *pos)
}

/// Whether a node taking over at `view` can adopt a log ending at `best`: a term newer than its
/// own layout means it is behind on layouts (it must catch up and take over again).
pub fn may_adopt(view: u64, best: LogPos) -> bool {
    best.term <= view
}

/// Whether a follower at layout epoch `view` may apply entries from (or cut its log back to) a
/// primary that has taken the partition over at `lead` (`None`: not at its current epoch). Only
/// a primary that took over at the follower's own epoch has every acknowledged write; an older
/// one may be missing writes acknowledged since, and one that has not taken over yet may still
/// have to pull them — from this very copy.
pub fn may_follow(view: u64, lead: Option<u64>) -> bool {
    lead == Some(view)
}

/// Whether a follower's entry at some position (of term `mine`) is the primary's entry there
/// (of term `theirs`, `None` if the primary's log is shorter): by log matching, equal terms at a
/// position mean equal logs up to it.
pub fn entries_match(mine: u64, theirs: Option<u64>) -> bool {
    theirs == Some(mine)
}

/// After a mismatch at position `at`, where this log's entry has term `t`, the next position to
/// compare: the primary's last position of a term ≤ `t` (`primary_end_of_term`), and always below
/// `at`. Every position skipped holds a primary entry of a term > `t` and one of this log's of a
/// term ≤ `t`, so none of them can match; position 0 (the empty prefix) always matches.
pub fn next_probe(at: u64, primary_end_of_term: u64) -> u64 {
    primary_end_of_term.min(at.saturating_sub(1))
}

/// Whether a follower's acknowledgement (`acked` position under the primary's lead term
/// `ack_term`) covers a write at `seq` of term `term`: only an acknowledgement made while the
/// primary led at that same term says the follower holds the primary's entries up to there.
pub fn ack_covers(acked: u64, ack_term: u64, seq: u64, term: u64) -> bool {
    ack_term == term && acked >= seq
}

/// What a write waiting for its quorum at `at` waits for once its primary has taken the writes
/// over again at term `base.term`, its log then ending at `base.seq` (`held`: the term of that
/// log's entry at `at.seq`). Acknowledgements under the old term no longer come, and one under
/// the new term does not cover an older entry by its position alone: an entry of an older term
/// held by W copies can still be cut by a primary whose log ends in a newer term (Raft's
/// "figure 8"; the model finds that loss). A write still in the log waits instead for the
/// first entry of the new term, `base.seq + 1` (a client write or a mark): copies holding that
/// entry hold every entry before it, and any later primary's log does. `None`: the take-over
/// cut the write from this log, and it has failed.
pub fn rebase(at: LogPos, held: Option<u64>, base: LogPos) -> Option<LogPos> {
    if held != Some(at.term) {
        return None;
    }
    if at.term >= base.term {
        return Some(at);
    }
    Some(LogPos::new(base.term, base.seq + 1))
}

/// How many copies a node taking over must hear from besides itself: any write acknowledged by
/// `write_quorum` of the `copies` copies is then on one of them (`copies - W + 1` and `W` copies
/// always share one).
pub fn take_over_peers(copies: usize, write_quorum: usize) -> usize {
    copies.saturating_sub(write_quorum)
}

/// The position up to which a primary leading at term `lead` knows its log to be held by
/// `write_quorum` copies: the `write_quorum`-th highest of its own last position `own` and the
/// positions its followers acknowledged under `lead` (an acknowledgement of another term says
/// nothing about this log).
pub fn committed(
    own: u64,
    acks: impl IntoIterator<Item = (u64, u64)>,
    lead: u64,
    write_quorum: usize,
) -> u64 {
    let mut held: Vec<u64> = std::iter::once(own)
        .chain(acks.into_iter().filter(|(_, term)| *term == lead).map(|(seq, _)| seq.min(own)))
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(write_quorum.max(1) - 1).copied().unwrap_or(0)
}

/// **Trimming** (`storage/trim.rs`): a copy drops the entries of its log up to a position,
/// keeping only that position's term. A primary trims no further than what a quorum holds
/// (`committed`), so a copy that later re-seeds from it (dropping its own data) never held an
/// entry fewer than W other copies hold; `keep_floor` is the window kept for copies that return.
pub fn primary_trim(committed: u64, keep_floor: u64) -> u64 {
    committed.min(keep_floor)
}

/// A follower trims no further than the position its primary told it a quorum holds
/// (`committed`), within what it has checked against that primary's log (`checked`) and the
/// kept window. Every later primary's log holds those entries, so this copy never has to cut
/// back past them: trimming its own log further could make it re-seed, dropping entries it may be
/// one of only W copies of (the model finds that loss).
pub fn follower_trim(checked: u64, committed: u64, keep_floor: u64) -> u64 {
    checked.min(committed).min(keep_floor)
}

/// What a follower knows a quorum holds of its primary's log: with a write quorum of at most 2,
/// the position it has checked itself (the primary and this copy hold it); otherwise what the
/// primary `told` it (which lags: it counts acknowledgements received before the answer).
pub fn follower_committed(checked: u64, told: u64, write_quorum: usize) -> u64 {
    if write_quorum <= 2 { checked } else { told.min(checked) }
}

/// The last position of a log ending at `last` that the window keeps no longer: entries within
/// `keep_entries` of the end stay, and so do those after `aged` (the last position older than
/// the window's time).
pub fn keep_floor(last: u64, keep_entries: u64, aged: u64) -> u64 {
    last.saturating_sub(keep_entries).min(aged)
}

/// Whether a copy can compare or continue a log trimmed through position `start` at position
/// `at` (a copy's log can cut back to, and be pulled after, only positions it still holds the
/// term of). Otherwise the copy behind is **re-seeded**: its data replaced by a snapshot of the
/// copy it follows, at that copy's position.
pub fn can_pull(at: u64, start: u64) -> bool {
    at >= start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_compare_by_term_then_position() {
        assert!(LogPos::new(2, 1) > LogPos::new(1, 500));
        assert!(LogPos::new(2, 3) > LogPos::new(2, 2));
        let answers = [("a", LogPos::new(1, 551)), ("b", LogPos::new(2, 549))];
        assert_eq!(adopt_from(LogPos::new(1, 548), answers).map(|a| a.0), Some("b"));
        // Its own log wins ties and a longer log of an older term.
        assert_eq!(adopt_from(LogPos::new(2, 549), answers), None);
        assert_eq!(adopt_from(LogPos::new(3, 1), answers), None);
    }

    #[test]
    fn an_owner_commits_only_at_the_epoch_it_took_over_and_never_behind_its_log() {
        assert_eq!(commit_term(true, 5, Some(5), 4), Ok(5));
        assert_eq!(commit_term(true, 5, Some(4), 4), Err(Refusal::NotTakenOver));
        assert_eq!(commit_term(true, 5, Some(5), 6), Err(Refusal::StaleLayout));
        assert_eq!(commit_term(false, 5, None, 3), Ok(5));
    }

    #[test]
    fn probing_back_skips_only_positions_that_cannot_match() {
        // Follower terms [1, 1, 3] at 1..=3; primary terms [1, 2, 2, 4].
        let follower = [1u64, 1, 3];
        let primary = [1u64, 2, 2, 4];
        let end_of_term =
            |t: u64| primary.iter().rposition(|x| *x <= t).map_or(0, |i| i as u64 + 1);
        let term_at =
            |log: &[u64], s: u64| (s > 0).then(|| log.get(s as usize - 1).copied()).flatten();
        let mut at = follower.len() as u64;
        let mut steps = 0;
        while at > 0 {
            let mine = term_at(&follower, at).expect("in the follower's log");
            if entries_match(mine, term_at(&primary, at)) {
                break;
            }
            at = next_probe(at, end_of_term(mine));
            steps += 1;
        }
        assert_eq!((at, steps), (1, 2));
    }

    #[test]
    fn acknowledgements_count_only_under_the_term_they_were_made_in() {
        assert!(ack_covers(10, 7, 9, 7));
        assert!(!ack_covers(10, 6, 9, 7));
        assert!(!ack_covers(8, 7, 9, 7));
        assert!(may_follow(7, Some(7)));
        assert!(!may_follow(7, Some(6)));
        assert!(!may_follow(7, None));
        assert_eq!(take_over_peers(3, 2), 1);
    }

    #[test]
    fn a_waiting_write_waits_for_the_first_entry_of_the_new_term() {
        let base = LogPos::new(9, 12);
        assert_eq!(rebase(LogPos::new(7, 10), Some(7), base), Some(LogPos::new(9, 13)));
        assert_eq!(rebase(LogPos::new(7, 10), Some(8), base), None, "cut and replaced");
        assert_eq!(rebase(LogPos::new(7, 10), None, base), None, "cut");
        assert_eq!(rebase(LogPos::new(9, 13), Some(9), base), Some(LogPos::new(9, 13)));
    }

    #[test]
    fn a_primary_trims_only_what_a_quorum_holds_and_the_window_lets_go() {
        // Own 50; followers acked 40 under term 7 and 45 under an older term.
        assert_eq!(committed(50, [(40, 7), (45, 6)], 7, 2), 40);
        assert_eq!(committed(50, [(40, 7), (45, 7)], 7, 2), 45);
        assert_eq!(committed(50, [(40, 7), (45, 7)], 7, 3), 40);
        assert_eq!(committed(50, [], 7, 1), 50);
        assert_eq!(committed(50, [(60, 7)], 7, 2), 50, "an ack never counts past the own log");
        assert_eq!(primary_trim(40, keep_floor(50, 20, 45)), 30);
        assert_eq!(primary_trim(40, keep_floor(50, 0, 45)), 40);
        assert_eq!(keep_floor(5, 20, 5), 0);
        assert_eq!(follower_trim(12, 30, 40), 12);
        assert_eq!(follower_trim(12, 8, 40), 8);
        assert_eq!(follower_committed(12, 8, 2), 12);
        assert_eq!(follower_committed(12, 8, 3), 8);
        assert_eq!(follower_committed(12, 20, 3), 12);
        assert!(can_pull(30, 30) && can_pull(31, 30) && !can_pull(29, 30));
    }
}
