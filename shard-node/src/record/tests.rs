//! Tests of `record.rs`.

use super::old::PartitionMetaV5;
use super::*;

fn episode() -> StoredEpisode {
    StoredEpisode {
        id: "m1".into(),
        content: "hello".into(),
        metadata_json: r#"{"k":1}"#.into(),
        embedding: Some(vec![1.0, 2.0]),
        created_at_ms: 5,
        updated_at_ms: 6,
        version: 2,
        expires_at_ms: None,
        label: 9,
        embedding_model: None,
        embedded_by_router: false,
        change_keys: Vec::new(),
    }
}

/// [`episode`] as format 5 wrote it.
fn episode_v5() -> StoredEpisodeV5 {
    let e = episode();
    StoredEpisodeV5 {
        id: e.id,
        content: e.content,
        metadata_json: e.metadata_json,
        embedding: e.embedding,
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
        version: e.version,
        expires_at_ms: e.expires_at_ms,
        label: e.label,
    }
}

fn old_record<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![version];
    bytes.extend(bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("enc"));
    bytes
}

#[test]
fn format_5_records_read_with_no_model() {
    assert_eq!(decode::<StoredEpisode>(&old_record(5, &episode_v5())).expect("dec"), episode());
    let ops = vec![OldLogOp::Put(episode_v5()), OldLogOp::Delete { id: "x".into(), version: 3 }];
    assert_eq!(
        decode::<Vec<LogOp>>(&old_record(5, &ops)).expect("dec"),
        vec![LogOp::Put(episode()), LogOp::Delete { id: "x".into(), version: 3 }]
    );
    let entry = OldLogEntry { seq: 4, at_ms: 8, op: OldLogOp::Put(episode_v5()), term: 2 };
    let want = LogEntry { seq: 4, at_ms: 8, op: LogOp::Put(episode()), term: 2 };
    assert_eq!(decode::<LogEntry>(&old_record(5, &entry)).expect("dec"), want);
    assert_eq!(decode::<Vec<LogEntry>>(&old_record(4, &vec![entry])).expect("dec"), vec![want]);
    let meta = PartitionMetaV5 {
        dimensions: Some(384),
        last_seq: 9,
        count: 2,
        next_label: 3,
        checksum: Some(1),
        bytes: Some(2),
        last_term: 4,
        trimmed_seq: 5,
        trimmed_term: 3,
    };
    let read: PartitionMeta = decode(&old_record(5, &meta)).expect("dec");
    assert_eq!((read.dimensions, read.trimmed_seq, read.embedding_model), (Some(384), 5, None));
    // And the current format keeps the model.
    let now = PartitionMeta { embedding_model: Some("all-MiniLM-L6-v2".into()), ..read };
    assert_eq!(decode::<PartitionMeta>(&encode(&now).expect("enc")).expect("dec"), now);
    let made =
        StoredEpisode { embedding_model: Some("m".into()), embedded_by_router: true, ..episode() };
    assert_eq!(decode::<StoredEpisode>(&encode(&made).expect("enc")).expect("dec"), made);
}

/// [`episode`] as format 6 wrote it.
fn episode_v6() -> StoredEpisodeV6 {
    let e = episode();
    StoredEpisodeV6 {
        id: e.id,
        content: e.content,
        metadata_json: e.metadata_json,
        embedding: e.embedding,
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
        version: e.version,
        expires_at_ms: e.expires_at_ms,
        label: e.label,
        embedding_model: Some("m".into()),
        embedded_by_router: true,
    }
}

#[test]
fn format_6_records_read_with_no_change_keys() {
    let want =
        StoredEpisode { embedding_model: Some("m".into()), embedded_by_router: true, ..episode() };
    assert_eq!(decode::<StoredEpisode>(&old_record(6, &episode_v6())).expect("dec"), want);
    let ops = vec![OldLogOp::Put(episode_v6())];
    assert_eq!(
        decode::<Vec<LogOp>>(&old_record(6, &ops)).expect("dec"),
        vec![LogOp::Put(want.clone())]
    );
    let entry = OldLogEntry { seq: 4, at_ms: 8, op: OldLogOp::Put(episode_v6()), term: 2 };
    let read = LogEntry { seq: 4, at_ms: 8, op: LogOp::Put(want.clone()), term: 2 };
    assert_eq!(decode::<LogEntry>(&old_record(6, &entry)).expect("dec"), read);
    assert_eq!(decode::<Vec<LogEntry>>(&old_record(6, &vec![entry])).expect("dec"), vec![read]);
    // The current format keeps the keys.
    let keyed = StoredEpisode { change_keys: vec!["k1".into(), "k2".into()], ..want };
    assert_eq!(decode::<StoredEpisode>(&encode(&keyed).expect("enc")).expect("dec"), keyed);
}

#[test]
fn records_round_trip() {
    let e = episode();
    assert_eq!(decode::<StoredEpisode>(&encode(&e).expect("enc")).expect("dec"), e);
    let log =
        LogEntry { seq: 3, at_ms: 1, op: LogOp::Delete { id: "x".into(), version: 4 }, term: 7 };
    assert_eq!(decode::<LogEntry>(&encode(&log).expect("enc")).expect("dec"), log);
}

#[test]
fn format_3_log_entries_read_with_term_0() {
    #[derive(Serialize)]
    struct V3 {
        seq: u64,
        at_ms: i64,
        op: OldLogOp<StoredEpisodeV5>,
    }
    let old = V3 { seq: 9, at_ms: 2, op: OldLogOp::Put(episode_v5()) };
    let mut bytes = vec![3u8];
    bytes.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).expect("enc"));
    let entry: LogEntry = decode(&bytes).expect("dec");
    assert_eq!(entry, LogEntry { seq: 9, at_ms: 2, op: LogOp::Put(episode()), term: 0 });
    let mut batch = vec![3u8];
    batch.extend(
        bincode::serde::encode_to_vec(vec![old], bincode::config::standard()).expect("enc"),
    );
    assert_eq!(decode::<Vec<LogEntry>>(&batch).expect("dec"), vec![entry]);
}

#[test]
fn unknown_versions_and_garbage_are_errors_not_panics() {
    let mut bytes = encode(&episode()).expect("enc");
    bytes[0] = 99;
    assert!(decode::<StoredEpisode>(&bytes).is_err());
    assert!(decode::<StoredEpisode>(&[]).is_err());
    assert!(decode::<StoredEpisode>(&[RECORD_FORMAT_VERSION, 0xff, 0xff]).is_err());
}

#[test]
fn format_1_meta_is_upgraded_with_an_unknown_checksum() {
    #[derive(Serialize)]
    struct V1 {
        dimensions: Option<u32>,
        last_seq: u64,
        count: u64,
        next_label: u64,
    }
    let old = V1 { dimensions: Some(3), last_seq: 7, count: 5, next_label: 6 };
    let mut bytes = vec![1u8];
    bytes.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).expect("enc"));
    let meta: PartitionMeta = decode(&bytes).expect("dec");
    assert_eq!(
        meta,
        PartitionMeta {
            dimensions: Some(3),
            last_seq: 7,
            count: 5,
            next_label: 6,
            checksum: None,
            bytes: None,
            last_term: 0,
            trimmed_seq: 0,
            trimmed_term: 0,
            embedding_model: None,
        }
    );
    // A format-4 meta reads with nothing trimmed.
    #[derive(Serialize)]
    struct V4 {
        dimensions: Option<u32>,
        last_seq: u64,
        count: u64,
        next_label: u64,
        checksum: Option<u64>,
        bytes: Option<u64>,
        last_term: u64,
    }
    let v4 = V4 {
        dimensions: None,
        last_seq: 9,
        count: 2,
        next_label: 3,
        checksum: Some(1),
        bytes: Some(2),
        last_term: 4,
    };
    let mut bytes = vec![4u8];
    bytes.extend(bincode::serde::encode_to_vec(&v4, bincode::config::standard()).expect("enc"));
    let read: PartitionMeta = decode(&bytes).expect("dec");
    assert_eq!((read.last_seq, read.last_term, read.trimmed_seq, read.trimmed_term), (9, 4, 0, 0));
    // Format-1 episodes read unchanged.
    assert_eq!(decode::<StoredEpisode>(&old_record(1, &episode_v5())).expect("dec"), episode());
    let now = PartitionMeta { checksum: Some(42), bytes: Some(7), ..meta };
    assert_eq!(decode::<PartitionMeta>(&encode(&now).expect("enc")).expect("dec"), now);
}

#[test]
fn checksum_terms_depend_on_id_and_version() {
    assert_ne!(checksum_term("a", 1), checksum_term("a", 2));
    assert_ne!(checksum_term("a", 1), checksum_term("b", 1));
    // The separator keeps ("a1", v) and ("a", …) apart.
    assert_ne!(checksum_term("a1", 1), checksum_term("a", 1));
}

#[test]
fn log_keys_sort_by_sequence() {
    let p = b"\x01t\x06shared";
    assert!(log_key(p, 2) < log_key(p, 10));
    assert!(log_key(p, u64::MAX) < prefix_end(p));
}

#[test]
fn idempotency_compares_bodies() {
    let e = episode();
    let v = Some(vec![1.0, 2.0]);
    assert!(e.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::FromTtl(None)));
    assert!(!e.same_body("hello!", r#"{"k":1}"#, &v, None, &NewExpiry::FromTtl(None)));
    assert!(!e.same_body("hello", r#"{"k":2}"#, &v, None, &NewExpiry::FromTtl(None)));
    assert!(!e.same_body("hello", r#"{"k":1}"#, &None, None, &NewExpiry::FromTtl(None)));
    assert!(!e.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::FromTtl(Some(5))));
    // The router's model made both vectors from the same content: the same body, even when
    // the numbers differ in their last bits.
    let made =
        StoredEpisode { embedding_model: Some("m".into()), embedded_by_router: true, ..episode() };
    let nearly = Some(vec![1.0, 2.000_000_2]);
    assert!(made.same_body("hello", r#"{"k":1}"#, &nearly, Some("m"), &NewExpiry::FromTtl(None)));
    assert!(!made.same_body(
        "hello",
        r#"{"k":1}"#,
        &nearly,
        Some("other"),
        &NewExpiry::FromTtl(None)
    ));
    assert!(!made.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::FromTtl(None)));
    assert!(!e.same_body("hello", r#"{"k":1}"#, &v, Some("m"), &NewExpiry::FromTtl(None)));
    // A patch's expiry is compared exactly.
    let timed = StoredEpisode { expires_at_ms: Some(100), ..episode() };
    assert!(timed.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::At(Some(100))));
    assert!(!timed.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::At(Some(200))));
    assert!(!timed.same_body("hello", r#"{"k":1}"#, &v, None, &NewExpiry::At(None)));
}
