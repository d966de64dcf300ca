//! The record formats older binaries wrote, each read and upgraded to today's (see the format
//! history in `record.rs`): kept so that a node reads any data directory or migration frame of
//! an earlier release.

use serde::{Deserialize, Serialize};

use super::{LogEntry, LogOp, PartitionMeta, StoredEpisode, bincode_body};
use memring_common::ApiError;

/// A [`PartitionMeta`] of a format before 6, upgraded (its `version` byte and bincode body).
pub(super) fn meta_before_6(version: u8, body: &[u8]) -> Result<PartitionMeta, ApiError> {
    if version == 5 {
        return bincode_body::<PartitionMetaV5>(body).map(PartitionMeta::from);
    }
    let v4 = match version {
        4 => bincode_body::<PartitionMetaV4>(body)?,
        3 => {
            let v3: PartitionMetaV3 = bincode_body(body)?;
            PartitionMetaV4 {
                dimensions: v3.dimensions,
                last_seq: v3.last_seq,
                count: v3.count,
                next_label: v3.next_label,
                checksum: v3.checksum,
                bytes: v3.bytes,
                last_term: 0,
            }
        }
        2 => {
            let v2: PartitionMetaV2 = bincode_body(body)?;
            PartitionMetaV4 {
                dimensions: v2.dimensions,
                last_seq: v2.last_seq,
                count: v2.count,
                next_label: v2.next_label,
                checksum: v2.checksum,
                bytes: None,
                last_term: 0,
            }
        }
        _ => {
            let v1: PartitionMetaV1 = bincode_body(body)?;
            PartitionMetaV4 {
                dimensions: v1.dimensions,
                last_seq: v1.last_seq,
                count: v1.count,
                next_label: v1.next_label,
                checksum: None,
                bytes: None,
                last_term: 0,
            }
        }
    };
    Ok(PartitionMeta {
        dimensions: v4.dimensions,
        last_seq: v4.last_seq,
        count: v4.count,
        next_label: v4.next_label,
        checksum: v4.checksum,
        bytes: v4.bytes,
        last_term: v4.last_term,
        trimmed_seq: 0,
        trimmed_term: 0,
        embedding_model: None,
    })
}

/// [`StoredEpisode`] as format 6 wrote it.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEpisodeV6 {
    pub(super) id: String,
    pub(super) content: String,
    pub(super) metadata_json: String,
    pub(super) embedding: Option<Vec<f32>>,
    pub(super) created_at_ms: i64,
    pub(super) updated_at_ms: i64,
    pub(super) version: u64,
    pub(super) expires_at_ms: Option<i64>,
    pub(super) label: u64,
    pub(super) embedding_model: Option<String>,
    pub(super) embedded_by_router: bool,
}

impl From<StoredEpisodeV6> for StoredEpisode {
    fn from(old: StoredEpisodeV6) -> Self {
        StoredEpisode {
            id: old.id,
            content: old.content,
            metadata_json: old.metadata_json,
            embedding: old.embedding,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            version: old.version,
            expires_at_ms: old.expires_at_ms,
            label: old.label,
            embedding_model: old.embedding_model,
            embedded_by_router: old.embedded_by_router,
            change_keys: Vec::new(),
        }
    }
}

/// [`StoredEpisode`] as formats 1 to 5 wrote it.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEpisodeV5 {
    pub(super) id: String,
    pub(super) content: String,
    pub(super) metadata_json: String,
    pub(super) embedding: Option<Vec<f32>>,
    pub(super) created_at_ms: i64,
    pub(super) updated_at_ms: i64,
    pub(super) version: u64,
    pub(super) expires_at_ms: Option<i64>,
    pub(super) label: u64,
}

impl From<StoredEpisodeV5> for StoredEpisode {
    fn from(old: StoredEpisodeV5) -> Self {
        StoredEpisode {
            id: old.id,
            content: old.content,
            metadata_json: old.metadata_json,
            embedding: old.embedding,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            version: old.version,
            expires_at_ms: old.expires_at_ms,
            label: old.label,
            embedding_model: None,
            embedded_by_router: false,
            change_keys: Vec::new(),
        }
    }
}

/// [`LogEntry`] as formats 4 to 6 wrote it, with their episode type `E`.
#[derive(Serialize, Deserialize)]
pub(crate) struct OldLogEntry<E> {
    pub(super) seq: u64,
    pub(super) at_ms: i64,
    pub(super) op: OldLogOp<E>,
    pub(super) term: u64,
}

impl<E: Into<StoredEpisode>> From<OldLogEntry<E>> for LogEntry {
    fn from(old: OldLogEntry<E>) -> Self {
        LogEntry { seq: old.seq, at_ms: old.at_ms, op: old.op.into(), term: old.term }
    }
}

/// [`LogEntry`] as formats 1 to 3 wrote it.
#[derive(Serialize, Deserialize)]
pub(super) struct LogEntryV3 {
    pub(super) seq: u64,
    pub(super) at_ms: i64,
    pub(super) op: OldLogOp<StoredEpisodeV5>,
}

impl From<LogEntryV3> for LogEntry {
    fn from(old: LogEntryV3) -> Self {
        LogEntry { seq: old.seq, at_ms: old.at_ms, op: old.op.into(), term: 0 }
    }
}

/// [`LogOp`] as formats 1 to 6 wrote it, with their episode type `E`.
#[derive(Serialize, Deserialize)]
pub(crate) enum OldLogOp<E> {
    Put(E),
    Delete { id: String, version: u64 },
}

impl<E: Into<StoredEpisode>> From<OldLogOp<E>> for LogOp {
    fn from(old: OldLogOp<E>) -> Self {
        match old {
            OldLogOp::Put(e) => LogOp::Put(e.into()),
            OldLogOp::Delete { id, version } => LogOp::Delete { id, version },
        }
    }
}

/// [`PartitionMeta`] as format 5 wrote it.
#[derive(Serialize, Deserialize)]
pub(super) struct PartitionMetaV5 {
    pub(super) dimensions: Option<u32>,
    pub(super) last_seq: u64,
    pub(super) count: u64,
    pub(super) next_label: u64,
    pub(super) checksum: Option<u64>,
    pub(super) bytes: Option<u64>,
    pub(super) last_term: u64,
    pub(super) trimmed_seq: u64,
    pub(super) trimmed_term: u64,
}

impl From<PartitionMetaV5> for PartitionMeta {
    fn from(old: PartitionMetaV5) -> Self {
        PartitionMeta {
            dimensions: old.dimensions,
            last_seq: old.last_seq,
            count: old.count,
            next_label: old.next_label,
            checksum: old.checksum,
            bytes: old.bytes,
            last_term: old.last_term,
            trimmed_seq: old.trimmed_seq,
            trimmed_term: old.trimmed_term,
            embedding_model: None,
        }
    }
}

/// [`PartitionMeta`] as format 4 wrote it.
#[derive(Deserialize)]
pub(super) struct PartitionMetaV4 {
    pub(super) dimensions: Option<u32>,
    pub(super) last_seq: u64,
    pub(super) count: u64,
    pub(super) next_label: u64,
    pub(super) checksum: Option<u64>,
    pub(super) bytes: Option<u64>,
    pub(super) last_term: u64,
}

/// [`PartitionMeta`] as format 3 wrote it.
#[derive(Deserialize)]
pub(super) struct PartitionMetaV3 {
    pub(super) dimensions: Option<u32>,
    pub(super) last_seq: u64,
    pub(super) count: u64,
    pub(super) next_label: u64,
    pub(super) checksum: Option<u64>,
    pub(super) bytes: Option<u64>,
}

/// [`PartitionMeta`] as format 2 wrote it.
#[derive(Deserialize)]
pub(super) struct PartitionMetaV2 {
    pub(super) dimensions: Option<u32>,
    pub(super) last_seq: u64,
    pub(super) count: u64,
    pub(super) next_label: u64,
    pub(super) checksum: Option<u64>,
}

/// [`PartitionMeta`] as format 1 wrote it.
#[derive(Deserialize)]
pub(super) struct PartitionMetaV1 {
    pub(super) dimensions: Option<u32>,
    pub(super) last_seq: u64,
    pub(super) count: u64,
    pub(super) next_label: u64,
}
