//! Storage against a real RocksDB in a temporary directory.

use super::*;
use crate::record::{LogEntry, LogOp};
use crate::replicate::rules::LogPos;
use memring_common::api::{Filter, SearchHit, WriteItem, WriteOutcome};
use memring_common::{MemoryId, Scope, TenantId};

fn open(dir: &Path) -> Storage {
    open_as(dir, "n1")
}

/// A second node's storage (a migration target, a follower).
fn open_as(dir: &Path, node: &str) -> Storage {
    Storage::open(dir, &NodeId::parse(node).expect("id"), StorageConfig::default()).expect("open")
}

fn key(tenant: &str, scope: &str) -> PartitionKey {
    PartitionKey::new(
        &TenantId::parse(tenant).expect("tenant"),
        &Scope::parse(scope).expect("scope"),
    )
}

fn item(id: &str, content: &str, v: Vec<f32>) -> WriteItem {
    WriteItem {
        id: MemoryId::parse(id).expect("id"),
        scope: Scope::Shared,
        content: content.into(),
        embedding: Some(v),
        embedding_model: None,
        embedded_by_router: false,
        metadata: Map::new(),
        ttl_seconds: None,
        conditions: Default::default(),
        no_embedding: false,
    }
}

/// Waits until the partition's graph has taken over from the exact index it was loaded with.
fn wait_quick(s: &Storage, k: &PartitionKey) {
    let started = std::time::Instant::now();
    while !s.is_search_quick(k) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the graph never took over"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn outcomes(
    r: Vec<Result<(WriteOutcome, WriteResult), ApiError>>,
) -> Vec<Result<WriteOutcome, ErrorCode>> {
    r.into_iter().map(|x| x.map(|(o, _)| o).map_err(|e| e.code())).collect()
}

#[test]
fn writes_are_idempotent_and_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let first = s.write(&k, vec![item("a", "x", vec![1.0, 0.0])], 10).expect("write");
    assert_eq!(outcomes(first), vec![Ok(WriteOutcome::Created)]);
    let again = s.write(&k, vec![item("a", "x", vec![1.0, 0.0])], 20).expect("write");
    assert_eq!(outcomes(again), vec![Ok(WriteOutcome::Unchanged)]);
    assert_eq!(s.log_after(&k, 0, 100).expect("log").len(), 1);
    let changed = s.write(&k, vec![item("a", "y", vec![1.0, 0.0])], 30).expect("write");
    assert_eq!(outcomes(changed), vec![Ok(WriteOutcome::Updated)]);
    let log = s.log_after(&k, 0, 100).expect("log");
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    let view = s.get(&k, &MemoryId::parse("a").expect("id"), 40).expect("get");
    assert_eq!((view.version, view.content.as_str()), (2, "y"));
    assert_eq!(s.partitions().expect("partitions")[0].count, 1);
}

#[test]
fn the_first_dimension_sticks_and_bad_items_fail_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let r = s
        .write(
            &k,
            vec![
                item("a", "x", vec![1.0, 0.0]),
                item("b", "x", vec![1.0, 0.0, 0.0]),
                item("c", "x", vec![0.0, 1.0]),
            ],
            1,
        )
        .expect("write");
    assert_eq!(
        outcomes(r),
        vec![
            Ok(WriteOutcome::Created),
            Err(ErrorCode::DimensionMismatch),
            Ok(WriteOutcome::Created)
        ]
    );
    assert!(s.get(&k, &MemoryId::parse("b").expect("id"), 1).is_err());
    // Duplicates inside one batch see each other.
    let r = s
        .write(&k, vec![item("d", "x", vec![1.0, 1.0]), item("d", "x", vec![1.0, 1.0])], 2)
        .expect("write");
    assert_eq!(outcomes(r), vec![Ok(WriteOutcome::Created), Ok(WriteOutcome::Unchanged)]);
}

#[test]
fn search_list_delete_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = key("t", "shared");
    {
        let s = open(dir.path());
        let items =
            (0..50).map(|i| item(&format!("m{i:02}"), "x", vec![1.0, i as f32 / 10.0])).collect();
        s.write(&k, items, 5).expect("write");
        let hits = s.search(&k, &[1.0, 0.0], 3, &Filter::default(), 6).expect("search");
        assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["m00", "m01", "m02"]);
        s.delete(&k, &MemoryId::parse("m00").expect("id"), 7).expect("delete");
        let hits = s.search(&k, &[1.0, 0.0], 1, &Filter::default(), 8).expect("search");
        assert_eq!(hits[0].id.as_str(), "m01");
        let (page, more) = s.list(&k, None, 20, 8).expect("list");
        assert!(more);
        assert_eq!(page.first().map(|m| m.id.as_str()), Some("m01"));
        let (rest, more) = s.list(&k, Some(&page[19].id), 100, 8).expect("list");
        assert!(!more);
        assert_eq!(page.len() + rest.len(), 49);
    }
    // Reopen: the index is rebuilt from RocksDB and answers the same.
    let s = open(dir.path());
    let hits = s.search(&k, &[1.0, 0.0], 1, &Filter::default(), 9).expect("search");
    assert_eq!(hits[0].id.as_str(), "m01");
    assert_eq!(s.partitions().expect("partitions")[0].count, 49);
    assert_eq!(s.log_after(&k, 0, 1000).expect("log").len(), 51);
}

#[test]
fn tenant_deletion_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    // "ab" and "abc" share a text prefix but not a key prefix.
    for (t, scope) in [("ab", "shared"), ("ab", "agent:x"), ("abc", "shared"), ("b", "shared")] {
        let mut it = item("m", "x", vec![1.0]);
        it.scope = Scope::parse(scope).expect("scope");
        s.write(&key(t, scope), vec![it], 1).expect("write");
    }
    assert_eq!(s.delete_tenant(&TenantId::parse("ab").expect("id")).expect("delete"), 2);
    let mut left: Vec<String> =
        s.partitions().expect("partitions").iter().map(|p| p.partition.to_string()).collect();
    left.sort();
    assert_eq!(left, ["abc/shared", "b/shared"]);
    assert!(
        s.search(&key("ab", "shared"), &[1.0], 5, &Filter::default(), 2)
            .expect("search")
            .is_empty()
    );
}

#[test]
fn a_data_dir_belongs_to_one_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let err =
        Storage::open(dir.path(), &NodeId::parse("n2").expect("id"), StorageConfig::default());
    assert!(err.is_err());
}

#[test]
fn expired_memories_vanish_from_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let mut it = item("ttl", "x", vec![1.0, 0.0]);
    it.ttl_seconds = Some(1);
    s.write(&k, vec![it, item("keep", "x", vec![0.9, 0.1])], 1_000).expect("write");
    let id = MemoryId::parse("ttl").expect("id");
    assert!(s.get(&k, &id, 1_500).is_ok());
    assert!(s.get(&k, &id, 2_000).is_err());
    let hits = s.search(&k, &[1.0, 0.0], 5, &Filter::default(), 2_500).expect("search");
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["keep"]);
    assert_eq!(s.list(&k, None, 10, 2_500).expect("list").0.len(), 1);
}

/// A migration's target, filled as a re-seed (snapshot pages, then the source's log after the
/// first page's position) while the source keeps changing, ends with the source's memories, log
/// and position; a fenced source refuses writes.
#[test]
fn export_import_replay_gives_the_same_partition_and_fence_refuses_writes() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let src = open(a.path());
    let dst = open_as(b.path(), "n2");
    let k = key("t", "shared");
    let items = (0..120).map(|i| item(&format!("e{i:03}"), "x", vec![1.0, i as f32])).collect();
    src.write(&k, items, 1).expect("write");
    // Copy in pages of 50, then change the source (update, delete, create) and replay its log.
    dst.begin_reseed(&k, &|| Ok(())).expect("reseed");
    let first = src.export_page(&k, None, 50).expect("export");
    let start = LogPos::new(first.last_term, first.last_seq);
    let mut after = first.next_after.clone();
    dst.import_snapshot(&k, first.ops, &|| Ok(())).expect("import");
    src.write(
        &k,
        vec![item("e005", "changed", vec![1.0, 5.0]), item("new", "x", vec![0.0, 1.0])],
        3,
    )
    .expect("write");
    src.delete(&k, &MemoryId::parse("e100").expect("id"), 3).expect("delete");
    while let Some(a) = after {
        let page = src.export_page(&k, Some(&a), 50).expect("export");
        after = page.next_after.clone();
        dst.import_snapshot(&k, page.ops, &|| Ok(())).expect("import");
    }
    dst.place_snapshot(&k, start, &|| Ok(())).expect("place");
    dst.end_reseed(&k).expect("end");
    let entries = src.log_after(&k, start.seq, 1000).expect("log");
    assert_eq!(entries.len(), 3);
    dst.import_replicated(&k, entries.clone(), &|| Ok(())).expect("replay");
    assert_eq!(dst.last_pos(&k).expect("pos"), src.last_pos(&k).expect("pos"));
    assert_eq!(dst.log_after(&k, start.seq, 1000).expect("log"), entries);
    let (x, y) = (src.checksum(&k, false).expect("sum"), dst.checksum(&k, false).expect("sum"));
    assert_eq!((x.count, &x.checksum, x.last_seq), (y.count, &y.checksum, y.last_seq));
    assert_eq!(x.count, 120);
    assert_eq!(
        dst.get(&k, &MemoryId::parse("e005").expect("id"), 6).expect("get").content,
        "changed"
    );
    let hits = dst.search(&k, &[0.0, 1.0], 1, &Filter::default(), 6).expect("search");
    assert_eq!(hits[0].id.as_str(), "new");
    // The same entries again do not continue the log: refused, nothing applied.
    let again = dst.import_replicated(&k, entries, &|| Ok(())).expect_err("replayed twice");
    assert_eq!(again.code(), ErrorCode::Conflict);
    assert_eq!(dst.checksum(&k, false).expect("sum"), y);
    // A fenced source refuses writes with a retryable code, and keeps refusing after a restart.
    src.set_fence(&k, true).expect("fence");
    let err = src.write(&k, vec![item("late", "x", vec![1.0, 1.0])], 7).expect_err("fenced");
    assert_eq!(err.code(), ErrorCode::PartitionMoving);
    drop(src);
    let src = open(a.path());
    assert!(src.write(&k, vec![item("late", "x", vec![1.0, 1.0])], 8).is_err());
    assert!(src.checksum(&k, false).expect("sum").fenced);
    src.drop_partition(&k).expect("drop");
    assert!(src.partitions().expect("partitions").is_empty());
    assert_eq!(src.checksum(&k, false).expect("sum").count, 0);
}

/// The checksum kept in the meta must equal a full scan after any mix of creates, updates,
/// idempotent rewrites, deletes, expired rewrites and imports (with put and delete of one id in a
/// single batch), and it must survive a restart.
#[test]
fn incremental_checksum_matches_a_full_scan() {
    use rand::{Rng, SeedableRng};
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let s = open(a.path());
    let other = open_as(b.path(), "n2");
    let k = key("t", "shared");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for round in 0..300i64 {
        let id = format!("m{}", rng.random_range(0..40));
        let now = 1_000 + round * 10;
        match rng.random_range(0..4) {
            0 | 1 => {
                let mut it = item(&id, &format!("v{}", rng.random_range(0..3)), vec![1.0, 2.0]);
                if rng.random_bool(0.2) {
                    it.ttl_seconds = Some(0);
                }
                s.write(&k, vec![it.clone(), it], now).expect("write");
            }
            2 => {
                let _ = s.delete(&k, &MemoryId::parse(&id).expect("id"), now);
            }
            _ => {
                let page = s.export_page(&k, None, 10).expect("export");
                let mut ops = page.ops;
                if let Some(LogOp::Put(e)) = ops.first().cloned() {
                    ops.push(LogOp::Delete { id: e.id.clone(), version: e.version });
                    ops.push(LogOp::Put(e));
                }
                // Appended to the other copy's log (a put and a delete of one id in one batch).
                let at = other.last_pos(&k).expect("pos");
                let entries = (at.seq + 1..)
                    .zip(ops)
                    .map(|(seq, op)| LogEntry { seq, at_ms: now, op, term: at.term })
                    .collect();
                other.import_replicated(&k, entries, &|| Ok(())).expect("import");
            }
        }
    }
    for node in [&s, &other] {
        let (fast, deep) =
            (node.checksum(&k, false).expect("sum"), node.checksum(&k, true).expect("deep"));
        assert_eq!((fast.count, &fast.checksum), (deep.count, &deep.checksum));
        assert!(fast.count > 0);
    }
    let before = s.checksum(&k, false).expect("sum");
    drop(s);
    let s = open(a.path());
    assert_eq!(s.checksum(&k, false).expect("sum"), before);
}

/// A partition whose meta was written by format 1 (no checksum) gets count and checksum from a
/// scan when it is first opened, and keeps them incrementally from there.
#[test]
fn format_1_meta_is_upgraded_by_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let items = (0..5).map(|i| item(&format!("e{i}"), "x", vec![1.0, i as f32])).collect();
    s.write(&k, items, 1).expect("write");
    let expected = s.checksum(&k, true).expect("deep");
    let meta = s.partition(&k, false).expect("p").expect("exists").meta.lock().clone();
    #[derive(serde::Serialize)]
    struct V1 {
        dimensions: Option<u32>,
        last_seq: u64,
        count: u64,
        next_label: u64,
    }
    let v1 = V1 {
        dimensions: meta.dimensions,
        last_seq: meta.last_seq,
        // A wrong count too: the scan must replace it.
        count: 99,
        next_label: meta.next_label,
    };
    let mut bytes = vec![1u8];
    bytes.extend(bincode::serde::encode_to_vec(&v1, bincode::config::standard()).expect("enc"));
    s.db.put_cf(&s.cf(CF_META).expect("cf"), k.encode(), bytes).expect("put");
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.checksum(&k, false).expect("sum"), expected);
    s.delete(&k, &MemoryId::parse("e0").expect("id"), 2).expect("delete");
    let (fast, deep) = (s.checksum(&k, false).expect("sum"), s.checksum(&k, true).expect("deep"));
    assert_eq!(fast, deep);
    assert_eq!(fast.count, 4);
}

/// A clean shutdown keeps loaded HNSW graphs: the next open has them loaded before any search,
/// answering exactly as before; a damaged file is ignored (the graph is rebuilt) and every file
/// is gone after the open.
#[test]
fn graphs_survive_a_clean_restart_and_bad_files_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = key("t", "shared");
    let vectors: Vec<Vec<f32>> = (0..3000)
        .map(|i| (0..8).map(|d| ((i * 7 + d * 13) % 97) as f32 / 97.0 + 0.01).collect())
        .collect();
    let s = open(dir.path());
    for (chunk_no, chunk) in vectors.chunks(1000).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| item(&format!("e{}", chunk_no * 1000 + i), "x", v.clone()))
            .collect();
        s.write(&k, items, 1).expect("write");
    }
    let q = &vectors[1234];
    // The first search loads an exact index; the graph is built beside it and takes over.
    s.search(&k, q, 5, &Filter::default(), 2).expect("search");
    wait_quick(&s, &k);
    let before = s.search(&k, q, 5, &Filter::default(), 2).expect("search");
    // Changes after the graph was loaded are in the saved graph too.
    s.delete(&k, &MemoryId::parse("e5").expect("id"), 2).expect("delete");
    s.write(&k, vec![item("e1", "changed", vectors[1].clone())], 2).expect("update");
    let before = if before.iter().any(|h| h.id.as_str() == "e5") {
        s.search(&k, q, 5, &Filter::default(), 2).expect("search")
    } else {
        before
    };
    assert_eq!(s.save_graphs().expect("save"), 1);
    drop(s);
    let s = open(dir.path());
    assert!(s.is_search_loaded(&k), "the graph is loaded at open, before any search");
    let after = s.search(&k, q, 5, &Filter::default(), 2).expect("search");
    let ids =
        |hits: &[SearchHit]| hits.iter().map(|h| h.id.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    assert!(
        std::fs::read_dir(dir.path().join("graphs")).expect("dir").next().is_none(),
        "consumed"
    );

    // A damaged file: not used, removed, and the graph is built after the first search as usual.
    assert_eq!(s.save_graphs().expect("save"), 1);
    drop(s);
    let file = std::fs::read_dir(dir.path().join("graphs")).expect("dir").next().expect("file");
    let path = file.expect("entry").path();
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    let s = open(dir.path());
    assert!(!s.is_search_loaded(&k));
    assert!(!path.exists());
    s.search(&k, q, 5, &Filter::default(), 2).expect("search");
    wait_quick(&s, &k);
    // A graph built afresh: the same neighbours, up to the order of exact ties (these vectors
    // repeat every 97), so the scores are compared.
    let scores = |hits: &[SearchHit]| hits.iter().map(|h| h.score).collect::<Vec<_>>();
    assert_eq!(
        scores(&s.search(&k, q, 5, &Filter::default(), 2).expect("search")),
        scores(&before)
    );
}

/// One batch writing the same id three times, the middle item refused (wrong dimension): the
/// refused item changes nothing, so the count and checksum stay those of one memory.
#[test]
fn a_refused_item_in_a_batch_does_not_disturb_the_bookkeeping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let results = s
        .write(
            &k,
            vec![
                item("x", "a", vec![1.0, 0.0]),
                item("x", "b", vec![1.0, 0.0, 0.0]),
                item("x", "c", vec![0.0, 1.0]),
            ],
            1,
        )
        .expect("write");
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    let (fast, deep) = (s.checksum(&k, false).expect("sum"), s.checksum(&k, true).expect("deep"));
    assert_eq!(fast, deep);
    assert_eq!(fast.count, 1);
}

#[test]
fn a_replica_keeps_the_primary_log_and_refuses_gaps() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open(a.path());
    let replica = open_as(b.path(), "n2");
    let k = key("t", "shared");
    let items = (0..5).map(|i| item(&format!("e{i}"), "x", vec![1.0, i as f32])).collect();
    primary.write(&k, items, 1).expect("write");
    primary.delete(&k, &MemoryId::parse("e1").expect("id"), 2).expect("delete");
    primary.write(&k, vec![item("e2", "changed", vec![0.0, 1.0])], 3).expect("write");
    let log = primary.log_after(&k, 0, 100).expect("log");
    assert_eq!(log.len(), 7);
    // Applied in two parts, the replica's log is the primary's: same seqs, same times, same ops.
    replica.import_replicated(&k, log[..3].to_vec(), &|| Ok(())).expect("apply");
    // A gap (entry 5 after 3) and a refused primary leave the replica as it was.
    let gap = replica.import_replicated(&k, log[4..].to_vec(), &|| Ok(())).expect_err("gap");
    assert_eq!(gap.code(), ErrorCode::Conflict);
    let stale = || Err(ApiError::new(ErrorCode::WrongOwner, "not my primary any more"));
    let refused = replica.import_replicated(&k, log[3..].to_vec(), &stale).expect_err("refused");
    assert_eq!(refused.code(), ErrorCode::WrongOwner);
    assert_eq!(replica.last_seq(&k).expect("position"), 3);
    replica.import_replicated(&k, log[3..].to_vec(), &|| Ok(())).expect("apply");
    assert_eq!(replica.log_after(&k, 0, 100).expect("log"), log);
    assert_eq!(replica.entry_at(&k, 7).expect("entry"), Some(log[6].clone()));
    assert_eq!(replica.entry_at(&k, 8).expect("entry"), None);
    let (x, y) =
        (primary.checksum(&k, true).expect("sum"), replica.checksum(&k, true).expect("sum"));
    assert_eq!((x.count, &x.checksum, x.last_seq), (y.count, &y.checksum, y.last_seq));
    // A delete of a memory the replica does not hold still takes its place in the log.
    let other = key("t", "agent:x");
    let orphan = LogEntry {
        seq: 1,
        at_ms: 9,
        op: LogOp::Delete { id: "ghost".into(), version: 1 },
        term: 0,
    };
    replica.import_replicated(&other, vec![orphan], &|| Ok(())).expect("apply");
    assert_eq!(replica.last_seq(&other).expect("seq"), 1);
}

#[test]
fn purge_removes_expired_memories_and_their_logged_bytes_and_replicas_agree() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open(a.path());
    let replica = open_as(b.path(), "n2");
    let k = key("t", "shared");
    let mut short = item("short", "secret-short-lived", vec![1.0, 0.0]);
    short.ttl_seconds = Some(1);
    let keep = item("keep", "stays", vec![0.0, 1.0]);
    primary.write(&k, vec![short, keep], 1_000).expect("write");
    replica
        .import_replicated(&k, primary.log_after(&k, 0, 100).expect("log"), &|| Ok(()))
        .expect("apply");
    // Before expiry nothing happens; after it the owner deletes through its log.
    assert_eq!(
        primary.purge_expired(&k, 1_500, Some(&same_term)).expect("purge"),
        purge::Purged::default()
    );
    let done = primary.purge_expired(&k, 2_500, Some(&same_term)).expect("purge");
    assert_eq!(done, purge::Purged { deleted: 1, redacted: 1, unfinished: false });
    let contains = |s: &Storage, needle: &str| {
        s.log_after(&k, 0, 100).expect("log").iter().any(|e| match &e.op {
            LogOp::Put(ep) => ep.content.contains(needle),
            LogOp::Delete { .. } | LogOp::TermStart => false,
        })
    };
    assert!(!contains(&primary, "secret-short-lived"));
    assert!(contains(&primary, "stays"));
    assert_eq!(primary.checksum(&k, true).expect("sum").count, 1);
    // A follower only redacts its own log; the owner's delete reaches it through the log, and
    // both logs still match entry by entry (fingerprints), so it keeps following.
    assert_eq!(
        replica.purge_expired(&k, 2_500, None).expect("purge"),
        purge::Purged { deleted: 0, redacted: 1, unfinished: false }
    );
    assert!(!contains(&replica, "secret-short-lived"));
    replica
        .import_replicated(&k, primary.log_after(&k, 2, 100).expect("log"), &|| Ok(()))
        .expect("apply the delete");
    let (x, y) =
        (primary.checksum(&k, true).expect("sum"), replica.checksum(&k, true).expect("sum"));
    assert_eq!((x.count, &x.checksum, x.last_seq), (y.count, &y.checksum, y.last_seq));
    let fingerprints = |s: &Storage| {
        s.log_after(&k, 0, 100)
            .expect("log")
            .iter()
            .map(|e| (e.seq, format!("{:?}", e.fingerprint())))
            .collect::<Vec<_>>()
    };
    assert_eq!(fingerprints(&primary), fingerprints(&replica));
    // A second pass finds nothing more to do.
    assert_eq!(
        primary.purge_expired(&k, 3_000, Some(&same_term)).expect("purge"),
        purge::Purged::default()
    );
}

#[test]
fn byte_totals_follow_every_change_and_format_2_metas_are_upgraded() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let s = open(a.path());
    let k = key("t", "shared");
    let bytes = |s: &Storage| s.partitions().expect("list")[0].bytes;
    s.write(&k, vec![item("a", "xxxxxxxxxx", vec![1.0, 0.0]), item("b", "y", vec![0.0, 1.0])], 1)
        .expect("write");
    // id + content + metadata "{}" + 2 dims × 4 + 48 each.
    assert_eq!(bytes(&s), (1 + 10 + 2 + 8 + 48) + (1 + 1 + 2 + 8 + 48));
    s.write(&k, vec![item("a", "x", vec![1.0, 0.0])], 2).expect("update");
    assert_eq!(bytes(&s), (1 + 1 + 2 + 8 + 48) * 2);
    s.delete(&k, &MemoryId::parse("b").expect("id"), 3).expect("delete");
    assert_eq!(bytes(&s), 1 + 1 + 2 + 8 + 48);
    // A replica applying the same log keeps the same total.
    let r = open_as(b.path(), "n2");
    r.import_replicated(&k, s.log_after(&k, 0, 100).expect("log"), &|| Ok(())).expect("apply");
    assert_eq!(bytes(&r), bytes(&s));
    // A format-2 meta (no byte total) is upgraded by a scan when listed.
    let meta = s.partition(&k, false).expect("p").expect("exists").meta.lock().clone();
    #[derive(serde::Serialize)]
    struct V2 {
        dimensions: Option<u32>,
        last_seq: u64,
        count: u64,
        next_label: u64,
        checksum: Option<u64>,
    }
    let v2 = V2 {
        dimensions: meta.dimensions,
        last_seq: meta.last_seq,
        count: meta.count,
        next_label: meta.next_label,
        checksum: meta.checksum,
    };
    let mut raw = vec![2u8];
    raw.extend(bincode::serde::encode_to_vec(&v2, bincode::config::standard()).expect("enc"));
    s.db.put_cf(&s.cf(CF_META).expect("cf"), k.encode(), raw).expect("put");
    let expected = bytes(&s);
    drop(s);
    let s = open(a.path());
    assert_eq!(bytes(&s), expected);
    assert!(s.checksum(&k, true).expect("deep").consistent);
}

/// A big partition loaded from RocksDB answers its first search at once, exactly, while its
/// graph is built on a background thread; a write and a delete made meanwhile are in the graph
/// when it takes the exact index's place, which it does by itself.
#[test]
fn a_big_partition_searches_exactly_while_its_graph_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig {
        index: IndexConfig { flat_limit: 64, ..IndexConfig::default() },
        ..StorageConfig::default()
    };
    let node = NodeId::parse("n1").expect("id");
    let k = key("t", "shared");
    // Distinct pseudo-random vectors (no ties in score).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let vectors: Vec<Vec<f32>> = (0..3000)
        .map(|_| {
            (0..8)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect();
    let s = Storage::open(dir.path(), &node, config.clone()).expect("open");
    for (n, chunk) in vectors.chunks(500).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| item(&format!("e{}", n * 500 + i), "x", v.clone()));
        s.write(&k, items.collect(), 1).expect("write");
    }
    drop(s);
    let s = Storage::open(dir.path(), &node, config).expect("reopen");
    assert!(!s.is_search_loaded(&k));

    let q = &vectors[1234];
    let first = s.search(&k, q, 5, &Filter::default(), 2).expect("first search");
    let qn = crate::index::normalized(q);
    let mut exact: Vec<(f32, usize)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (crate::index::dot(&qn, &crate::index::normalized(v)), i))
        .collect();
    exact.sort_by(|a, b| b.0.total_cmp(&a.0));
    let expected: Vec<String> = exact[..5].iter().map(|(_, i)| format!("e{i}")).collect();
    let ids =
        |hits: &[SearchHit]| hits.iter().map(|h| h.id.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&first), expected, "the first search is an exact scan");

    // While the graph is (most likely) still being built: a new memory and a delete.
    let fresh: Vec<f32> = vec![0.9, -0.4, 0.3, 0.2, -0.1, 0.5, 0.05, -0.3];
    s.write(&k, vec![item("fresh", "new", fresh.clone())], 3).expect("write");
    s.delete(&k, &MemoryId::parse(&expected[0]).expect("id"), 3).expect("delete");
    wait_quick(&s, &k);
    let found = s.search(&k, &fresh, 1, &Filter::default(), 4).expect("search");
    assert_eq!(ids(&found), ["fresh"], "a write during the build is in the graph");
    let again = s.search(&k, q, 5, &Filter::default(), 4).expect("search");
    assert!(!ids(&again).contains(&expected[0]), "a delete during the build is in the graph");
    assert_eq!(ids(&again)[..4], expected[1..5], "the graph finds the same neighbours");
}

#[test]
fn entries_carry_the_term_their_commit_check_gives_and_where_a_term_ends_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    for (n, term) in [1u64, 1, 2, 2, 4].into_iter().enumerate() {
        let one = vec![item(&format!("e{n}"), "x", vec![1.0, n as f32])];
        s.write_checked(&k, one, 1, &|| Ok(()), &|_| Ok(term)).expect("write");
    }
    let terms: Vec<u64> = s.log_after(&k, 0, 100).expect("log").iter().map(|e| e.term).collect();
    assert_eq!(terms, [1, 1, 2, 2, 4]);
    assert_eq!(s.last_pos(&k).expect("pos"), LogPos::new(4, 5));
    let ends: Vec<u64> = (0..6).map(|t| s.end_of_term(&k, t).expect("end")).collect();
    assert_eq!(ends, [0, 2, 4, 4, 5, 5]);
    assert_eq!(s.term_at(&k, 0).expect("term"), Some(0));
    assert_eq!(s.term_at(&k, 3).expect("term"), Some(2));
    assert_eq!(s.term_at(&k, 6).expect("term"), None);
    // A refused check writes nothing.
    let refused =
        s.write_checked(&k, vec![item("late", "x", vec![0.0, 1.0])], 1, &|| Ok(()), &|_| {
            Err(ApiError::new(ErrorCode::PartitionMoving, "not taken over"))
        });
    assert!(refused.is_err());
    assert_eq!(s.last_pos(&k).expect("pos"), LogPos::new(4, 5));
}

/// The start of a term (appended for writes waiting from an older term) is one entry of the
/// new term that changes no memory: appended once, copied to another copy's log as is, and cut
/// back like any other entry.
#[test]
fn a_term_start_is_logged_once_replicated_and_changes_no_memory() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (primary, replica) = (open(a.path()), open_as(b.path(), "n2"));
    let k = key("t", "shared");
    let term = |t: u64| move |_: u64| Ok(t);
    primary
        .write_checked(&k, vec![item("a", "x", vec![1.0, 0.0])], 1, &|| Ok(()), &term(3))
        .expect("write");
    assert_eq!(primary.start_term(&k, 2, &term(3)).expect("start"), None, "already in term 3");
    assert_eq!(primary.start_term(&k, 2, &term(5)).expect("start"), Some(2));
    assert_eq!(primary.start_term(&k, 2, &term(5)).expect("start"), None, "once per term");
    let refused = |_: u64| Err(ApiError::new(ErrorCode::PartitionMoving, "not taken over"));
    assert!(primary.start_term(&k, 2, &refused).is_err());
    assert_eq!(primary.start_term(&key("u", "shared"), 2, &term(5)).expect("start"), None);
    assert_eq!(primary.last_pos(&k).expect("pos"), LogPos::new(5, 2));
    let log = primary.log_after(&k, 0, 100).expect("log");
    assert_eq!(log[1].op, LogOp::TermStart);
    assert_eq!(log[1].id(), None);
    replica.import_replicated(&k, log.clone(), &|| Ok(())).expect("apply");
    assert_eq!(replica.log_after(&k, 0, 100).expect("log"), log);
    assert_eq!(replica.last_pos(&k).expect("pos"), LogPos::new(5, 2));
    let (x, y) =
        (primary.checksum(&k, true).expect("sum"), replica.checksum(&k, true).expect("sum"));
    assert_eq!((x.count, &x.checksum), (1, &y.checksum));
    assert_eq!(y.count, 1);
    // Entries after it apply on top; a cut back to before it keeps the memory.
    primary
        .write_checked(&k, vec![item("b", "y", vec![0.0, 1.0])], 3, &|| Ok(()), &term(5))
        .expect("write");
    replica
        .import_replicated(&k, primary.log_after(&k, 2, 100).expect("log"), &|| Ok(()))
        .expect("apply");
    assert_eq!(replica.truncate_log(&k, 1, &|| Ok(())).expect("cut"), 2);
    assert_eq!(replica.last_pos(&k).expect("pos"), LogPos::new(3, 1));
    assert_eq!(replica.checksum(&k, true).expect("sum").count, 1);
    assert!(replica.get(&k, &MemoryId::parse("a").expect("id"), 3).is_ok());
}

/// A copy that wrote entries nobody acknowledged (an old primary) is cut back to where its log
/// agrees with its new owner's: every memory those entries touched is as it was at the cut —
/// created ones gone, updated ones at their old version, deleted ones back — with count,
/// checksum and search to match, and the owner's entries then apply on top.
#[test]
fn a_diverging_suffix_is_cut_back_to_the_state_at_the_cut() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let owner = open(a.path());
    let old = open_as(b.path(), "n2");
    let k = key("t", "shared");
    let term = |t: u64| move |_: u64| Ok(t);
    let v = |x: f32| vec![1.0, x];
    let common = vec![item("a", "a1", v(0.0)), item("b", "b1", v(1.0)), item("d", "d1", v(2.0))];
    owner.write_checked(&k, common, 1, &|| Ok(()), &term(1)).expect("write");
    old.import_replicated(&k, owner.log_after(&k, 0, 100).expect("log"), &|| Ok(()))
        .expect("apply");
    let at_cut = owner.checksum(&k, true).expect("sum");
    // The old primary goes on alone in term 1: creates c, updates b, deletes d.
    old.write_checked(
        &k,
        vec![item("c", "c1", v(3.0)), item("b", "b2", v(4.0))],
        2,
        &|| Ok(()),
        &term(1),
    )
    .expect("write");
    old.delete_checked(&k, &MemoryId::parse("d").expect("id"), None, 2, &term(1)).expect("delete");
    let query = [1.0f32, 3.0];
    assert!(
        old.search(&k, &query, 10, &Filter::default(), 3)
            .expect("search")
            .iter()
            .any(|h| h.id.as_str() == "c")
    );
    // The new owner writes in term 2 at the same positions.
    owner.write_checked(&k, vec![item("e", "e2", v(5.0))], 3, &|| Ok(()), &term(2)).expect("write");
    assert_eq!(old.end_of_term(&k, 1).expect("end"), 6);
    assert_eq!(owner.end_of_term(&k, 1).expect("end"), 3);
    let cut = old.truncate_log(&k, 3, &|| Ok(())).expect("cut");
    assert_eq!(cut, 3);
    let now = old.checksum(&k, true).expect("sum");
    assert_eq!(
        (now.count, &now.checksum, now.last_seq, now.consistent),
        (at_cut.count, &at_cut.checksum, 3, true)
    );
    assert_eq!(old.get(&k, &MemoryId::parse("b").expect("id"), 3).expect("b").content, "b1");
    assert_eq!(old.get(&k, &MemoryId::parse("d").expect("id"), 3).expect("d").content, "d1");
    assert!(old.get(&k, &MemoryId::parse("c").expect("id"), 3).is_err());
    let hits = old.search(&k, &query, 10, &Filter::default(), 3).expect("search");
    let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b", "d"]);
    assert_eq!(old.last_pos(&k).expect("pos"), LogPos::new(1, 3));
    // The owner's entries continue the cut log; both copies end equal.
    old.import_replicated(&k, owner.log_after(&k, 3, 100).expect("log"), &|| Ok(()))
        .expect("apply");
    let (x, y) = (owner.checksum(&k, true).expect("sum"), old.checksum(&k, true).expect("sum"));
    assert_eq!((x.count, &x.checksum, x.last_seq), (y.count, &y.checksum, y.last_seq));
    assert_eq!(owner.log_after(&k, 0, 100).expect("log"), old.log_after(&k, 0, 100).expect("log"));
    // Cutting to 0 empties the copy.
    assert_eq!(old.truncate_log(&k, 0, &|| Ok(())).expect("cut"), 4);
    assert_eq!(old.checksum(&k, true).expect("sum").count, 0);
    // Entries of a lower term than the log's last do not apply.
    old.import_replicated(&k, owner.log_after(&k, 0, 3).expect("log"), &|| Ok(())).expect("apply");
    let mut lower = owner.log_after(&k, 3, 1).expect("log");
    lower[0].term = 0;
    assert_eq!(
        old.import_replicated(&k, lower, &|| Ok(())).expect_err("lower").code(),
        ErrorCode::Conflict
    );
}

#[test]
fn the_running_totals_match_a_count_of_every_partition_through_any_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let same = |s: &Storage, what: &str| {
        let (running, counted) =
            (s.node_stats().expect("stats"), s.counted_stats().expect("count"));
        assert_eq!(
            (running.partitions, running.memories, running.bytes, running.loaded_indexes),
            (counted.partitions, counted.memories, counted.bytes, counted.loaded_indexes),
            "after {what}"
        );
    };
    {
        let s = open(dir.path());
        same(&s, "opening an empty node");
        for t in ["a", "b", "c"] {
            let items =
                (0..5).map(|i| item(&format!("m{i}"), "some text", vec![1.0, i as f32])).collect();
            s.write(&key(t, "shared"), items, 1).expect("write");
        }
        same(&s, "writes to three partitions");
        // A rewrite with other content changes the bytes, not the count.
        s.write(
            &key("a", "shared"),
            vec![item("m0", "longer text than before", vec![1.0, 0.0])],
            2,
        )
        .expect("rewrite");
        s.delete(&key("b", "shared"), &MemoryId::parse("m1").expect("id"), 3).expect("delete");
        same(&s, "a rewrite and a delete");
        s.search(&key("a", "shared"), &[1.0, 0.0], 2, &Filter::default(), 4).expect("search");
        s.search(&key("c", "shared"), &[1.0, 0.0], 2, &Filter::default(), 4).expect("search");
        same(&s, "two indexes loaded");
        assert_eq!(s.node_stats().expect("stats").loaded_indexes, 2);
        assert_eq!(s.delete_tenant(&TenantId::parse("a").expect("id")).expect("delete"), 1);
        same(&s, "a tenant deleted");
        s.drop_partition(&key("c", "shared")).expect("drop");
        same(&s, "a partition dropped");
        let stats = s.node_stats().expect("stats");
        assert_eq!((stats.partitions, stats.memories, stats.loaded_indexes), (1, 4, 0));
    }
    let s = open(dir.path());
    same(&s, "reopening");
    assert_eq!(s.node_stats().expect("stats").memories, 4);
}

#[test]
fn the_expiry_index_names_only_partitions_with_memories_due_on_every_copy() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open(a.path());
    let replica = open_as(b.path(), "n2");
    let (soon, later, never) =
        (key("soon", "shared"), key("later", "shared"), key("never", "shared"));
    let mut it = item("m", "x", vec![1.0]);
    it.ttl_seconds = Some(2);
    primary.write(&soon, vec![it.clone()], 10_000).expect("write");
    it.ttl_seconds = Some(100);
    primary.write(&later, vec![it], 10_000).expect("write");
    primary.write(&never, vec![item("m", "x", vec![1.0])], 10_000).expect("write");
    for k in [&soon, &later, &never] {
        replica
            .import_replicated(k, primary.log_after(k, 0, 100).expect("log"), &|| Ok(()))
            .expect("apply");
    }
    let due = |s: &Storage, now: i64| -> Vec<String> {
        s.due_for_purge(now).expect("due").iter().map(|(p, _)| p.to_string()).collect()
    };
    for s in [&primary, &replica] {
        assert!(due(s, 11_000).is_empty(), "nothing is due before the first expiry");
        // Kept to the second after the expiry (12,000 ms here).
        assert_eq!(due(s, 13_000), ["soon/shared"]);
        let mut late = due(s, 111_000);
        late.sort();
        assert_eq!(late, ["later/shared", "soon/shared"], "the partition without a TTL never is");
    }
    // Purged (the owner deletes, the copy redacts), a partition is no longer due.
    let (_, keys) = primary.due_for_purge(13_000).expect("due").remove(0);
    let done = primary.purge_expired(&soon, 13_000, Some(&same_term)).expect("purge");
    assert_eq!((done.deleted, done.unfinished), (1, false));
    primary.clear_due(&keys).expect("clear");
    assert!(due(&primary, 13_000).is_empty());
    assert_eq!(due(&primary, 111_000), ["later/shared"]);
}

#[test]
fn data_from_before_the_expiry_index_is_checked_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = key("old", "shared");
    {
        let s = open(dir.path());
        let mut it = item("m", "x", vec![1.0]);
        it.ttl_seconds = Some(1);
        s.write(&k, vec![it], 1_000).expect("write");
        // As a data directory written before the index: no keys, no marker.
        let meta = s.cf(CF_META).expect("cf");
        let end = purge_keys_end();
        s.db.delete_range_cf(&meta, b"\xffexpiry".as_slice(), end.as_slice()).expect("wipe");
        assert!(s.due_for_purge(i64::MAX / 2).expect("due").is_empty());
    }
    let s = open(dir.path());
    let due = s.due_for_purge(0).expect("due");
    assert_eq!(due.len(), 1, "every old partition is due once, at once");
    assert_eq!(due[0].0, k);
}

/// Past every expiry-index key and its marker.
fn purge_keys_end() -> Vec<u8> {
    b"\xffexpiry\xff".to_vec()
}

#[test]
fn a_deleted_tenant_gives_its_disk_space_back_once_its_range_is_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("big", "shared");
    for chunk in 0..6 {
        let items = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                item(
                    &format!("m{n}"),
                    &"words ".repeat(40),
                    (0..64).map(|d| (n * d) as f32).collect(),
                )
            })
            .collect();
        s.write(&k, items, 1).expect("write");
    }
    s.write(&key("small", "shared"), vec![item("m", "kept", vec![1.0; 64])], 1).expect("write");
    let flush = |s: &Storage| {
        for name in [CF_EPISODES, CF_LOG, CF_META] {
            s.db.flush_cf(&s.cf(name).expect("cf")).expect("flush");
        }
    };
    flush(&s);
    let on_disk = |s: &Storage| s.node_stats().expect("stats").sst_bytes;
    let before = on_disk(&s);
    assert!(before > 1_000_000, "the data must be on disk first: {before} bytes");
    s.delete_tenant(&TenantId::parse("big").expect("id")).expect("delete");
    flush(&s);
    assert_eq!(s.reclaim_pending(), 1);
    assert!(on_disk(&s) > before / 2, "tombstones alone free nothing");
    assert_eq!(s.reclaim_queued().expect("reclaim"), 1);
    assert_eq!(s.reclaim_pending(), 0);
    let after = on_disk(&s);
    assert!(after < before / 10, "{after} bytes left of {before}");
    let kept = s.get(&key("small", "shared"), &MemoryId::parse("m").expect("id"), 2);
    assert!(kept.is_ok(), "other tenants keep their data");
}

/// A trimmed log keeps its start's term for the divergence check, answers `log_trimmed` before
/// it (never a gap), keeps the data and the bookkeeping, and stays trimmed after a restart.
#[test]
fn a_trimmed_log_starts_where_it_was_trimmed_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = key("t", "shared");
    let term = |t: u64| move |_: u64| Ok(t);
    {
        let s = open(dir.path());
        for (n, t) in [1u64, 1, 2, 2, 2, 3, 3, 3].into_iter().enumerate() {
            let one = vec![item(&format!("e{}", n % 5), &format!("v{n}"), vec![1.0, n as f32])];
            s.write_checked(&k, one, 1, &|| Ok(()), &term(t)).expect("write");
        }
        let before = s.checksum(&k, true).expect("sum");
        assert_eq!(s.trim_log(&k, 4).expect("trim"), 4);
        assert_eq!(s.trim_log(&k, 3).expect("trim"), 0, "a trim never goes back");
        assert_eq!(s.log_start(&k).expect("start"), LogPos::new(2, 4));
        let trimmed = |r: Result<Vec<LogEntry>, ApiError>| r.expect_err("trimmed").code();
        assert_eq!(trimmed(s.log_after(&k, 3, 10)), ErrorCode::LogTrimmed);
        assert_eq!(trimmed(s.log_after(&k, 0, 10)), ErrorCode::LogTrimmed);
        let seqs: Vec<u64> = s.log_after(&k, 4, 10).expect("log").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6, 7, 8]);
        // Read by key (a round's newest entries), the log says the same, trimmed or not.
        assert_eq!(s.log_upto(&k, 4, 8, 10).expect("log"), s.log_after(&k, 4, 10).expect("log"));
        assert_eq!(s.log_upto(&k, 5, 7, 10).expect("log"), s.log_after(&k, 5, 2).expect("log"));
        assert_eq!(s.log_upto(&k, 6, 8, 1).expect("log"), s.log_after(&k, 6, 1).expect("log"));
        assert_eq!(trimmed(s.log_upto(&k, 3, 8, 10)), ErrorCode::LogTrimmed);
        assert_eq!(trimmed(s.log_upto(&k, 0, 8, 10)), ErrorCode::LogTrimmed);
        assert_eq!(s.term_at(&k, 4).expect("term"), Some(2));
        assert_eq!(s.term_at(&k, 3).expect_err("trimmed").code(), ErrorCode::LogTrimmed);
        assert_eq!(s.end_of_term(&k, 2).expect("end"), 5);
        assert_eq!(s.end_of_term(&k, 1).expect_err("trimmed").code(), ErrorCode::LogTrimmed);
        let after = s.checksum(&k, true).expect("sum");
        assert_eq!(
            (after.count, &after.checksum, after.consistent),
            (before.count, &before.checksum, true)
        );
        // Readers of the log pin it where they read from (a migration's export and catch-up);
        // the lowest pin holds.
        let ttl = std::time::Duration::from_secs(300);
        s.pin_log(&k, 2);
        assert_eq!(s.pinned(&k, ttl), Some(2));
        s.pin_log(&k, 6);
        assert_eq!(s.pinned(&k, ttl), Some(2));
        assert_eq!(s.pinned(&key("t", "agent:a"), ttl), None);
        // A pin not used within the time given no longer holds, and is forgotten.
        assert_eq!(s.pinned(&k, std::time::Duration::ZERO), None);
        assert_eq!(s.pinned(&k, ttl), None);
        // Trimmed through its last entry, the log is empty and still knows its position.
        assert_eq!(s.trim_log(&k, 100).expect("trim"), 4);
        assert_eq!(s.log_start(&k).expect("start"), LogPos::new(3, 8));
        assert_eq!(s.log_after(&k, 8, 10).expect("log"), vec![]);
    }
    let s = open(dir.path());
    assert_eq!(s.log_start(&k).expect("start"), LogPos::new(3, 8));
    assert_eq!(s.last_pos(&k).expect("pos"), LogPos::new(3, 8));
    s.write_checked(&k, vec![item("new", "x", vec![0.0, 1.0])], 2, &|| Ok(()), &term(3))
        .expect("write");
    assert_eq!(s.log_after(&k, 8, 10).expect("log")[0].seq, 9);
}

/// Cutting a log back needs each touched memory's state at the cut: when that state is in the
/// trimmed part, the cut refuses (`log_trimmed`, nothing changed) and the copy must re-seed.
#[test]
fn a_cut_back_past_what_the_log_still_holds_refuses_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let k = key("t", "shared");
    let term = |t: u64| move |_: u64| Ok(t);
    // a@1, b@2, c@3, b@4 (term 1); then a@5 (term 1) is the suffix to cut.
    for (id, content) in [("a", "a1"), ("b", "b1"), ("c", "c1"), ("b", "b2"), ("a", "a2")] {
        s.write_checked(&k, vec![item(id, content, vec![1.0, 0.5])], 1, &|| Ok(()), &term(1))
            .expect("write");
    }
    s.trim_log(&k, 2).expect("trim");
    let before = s.checksum(&k, true).expect("sum");
    // a's state at 4 is its entry 1, trimmed away.
    let refused = s.truncate_log(&k, 4, &|| Ok(())).expect_err("ambiguous");
    assert_eq!(refused.code(), ErrorCode::LogTrimmed);
    assert_eq!(
        s.truncate_log(&k, 1, &|| Ok(())).expect_err("before start").code(),
        ErrorCode::LogTrimmed
    );
    let same = s.checksum(&k, true).expect("sum");
    assert_eq!((same.count, &same.checksum, same.last_seq), (before.count, &before.checksum, 5));
    // b's state at 4 is in the log (entry 4): cutting a later b back works.
    s.write_checked(&k, vec![item("b", "b3", vec![1.0, 0.5])], 1, &|| Ok(()), &term(1))
        .expect("write");
    assert_eq!(s.truncate_log(&k, 5, &|| Ok(())).expect("cut"), 1);
    assert_eq!(s.get(&k, &MemoryId::parse("b").expect("id"), 2).expect("b").content, "b2");
}

/// A re-seed drops the copy, takes snapshot pages without log entries, starts its log at the
/// snapshot's position and continues with the source's entries; the mark survives a restart
/// (a crash mid-way re-seeds again), and without it snapshot pages and positions are refused.
#[test]
fn a_reseeded_copy_equals_its_source_and_a_restart_keeps_the_mark() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let source = open(a.path());
    let k = key("t", "shared");
    let term = |t: u64| move |_: u64| Ok(t);
    let items = (0..7).map(|i| item(&format!("m{i}"), "x", vec![1.0, i as f32])).collect();
    source.write_checked(&k, items, 1, &|| Ok(()), &term(2)).expect("write");
    source
        .delete_checked(&k, &MemoryId::parse("m3").expect("id"), None, 2, &term(2))
        .expect("delete");
    source.trim_log(&k, 6).expect("trim");
    {
        let copy = open_as(b.path(), "n2");
        // The copy held an old, diverging state.
        copy.write_checked(&k, vec![item("stale", "x", vec![0.0, 1.0])], 1, &|| Ok(()), &term(1))
            .expect("write");
        let refused = copy.import_snapshot(&k, vec![], &|| Ok(())).expect_err("not marked");
        assert_eq!(refused.code(), ErrorCode::Conflict);
        copy.begin_reseed(&k, &|| Ok(())).expect("begin");
        assert!(copy.is_reseeding(&k).expect("mark"));
        assert_eq!(copy.last_pos(&k).expect("pos"), LogPos::default());
        let first = source.export_page(&k, None, 4).expect("page");
        assert_eq!((first.last_seq, first.last_term), (8, 2));
        copy.import_snapshot(&k, first.ops, &|| Ok(())).expect("page");
    }
    // Killed mid-way: the mark is still there; the re-seed starts over.
    let copy = open_as(b.path(), "n2");
    assert!(copy.is_reseeding(&k).expect("mark"));
    assert_eq!(copy.last_pos(&k).expect("pos"), LogPos::default());
    copy.begin_reseed(&k, &|| Ok(())).expect("begin");
    let first = source.export_page(&k, None, 4).expect("page");
    let at = LogPos::new(first.last_term, first.last_seq);
    let mut next = first.next_after.clone();
    copy.import_snapshot(&k, first.ops, &|| Ok(())).expect("page");
    // The source changes between pages: later pages show it, the log replays it.
    source
        .write_checked(&k, vec![item("m9", "y", vec![1.0, 9.0])], 3, &|| Ok(()), &term(2))
        .expect("write");
    source
        .delete_checked(&k, &MemoryId::parse("m0").expect("id"), None, 3, &term(2))
        .expect("delete");
    while let Some(after) = next {
        let page = source.export_page(&k, Some(&after), 4).expect("page");
        next = page.next_after.clone();
        copy.import_snapshot(&k, page.ops, &|| Ok(())).expect("page");
    }
    copy.place_snapshot(&k, at, &|| Ok(())).expect("place");
    copy.import_replicated(&k, source.log_after(&k, at.seq, 10).expect("log"), &|| Ok(()))
        .expect("replay");
    copy.end_reseed(&k).expect("end");
    assert!(!copy.is_reseeding(&k).expect("mark"));
    let refused = copy.place_snapshot(&k, at, &|| Ok(())).expect_err("not marked");
    assert_eq!(refused.code(), ErrorCode::Conflict);
    assert_eq!(copy.log_start(&k).expect("start"), at);
    assert_eq!(copy.last_pos(&k).expect("pos"), source.last_pos(&k).expect("pos"));
    let (x, y) = (source.checksum(&k, true).expect("sum"), copy.checksum(&k, true).expect("sum"));
    assert_eq!((x.count, &x.checksum, x.last_seq), (y.count, &y.checksum, y.last_seq));
    assert!(y.consistent);
    assert!(copy.get(&k, &MemoryId::parse("stale").expect("id"), 3).is_err());
    assert_eq!(
        copy.log_after(&k, at.seq, 10).expect("log"),
        source.log_after(&k, at.seq, 10).expect("log")
    );
}
