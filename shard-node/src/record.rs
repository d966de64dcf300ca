//! The records the shard node writes to RocksDB, and their byte encoding.
//!
//! Every value starts with a format-version byte, followed by a bincode (v2, standard config) body.
//! A binary refuses to read a version newer than it knows instead of misreading it; when a format
//! changes, the old version keeps its decoder here and is upgraded on read.
//!
//! Format history:
//! - 1: the first format.
//! - 2: [`PartitionMeta`] gained `checksum` (kept incrementally, so verifying a partition before a
//!   migration's flip needs no scan). Episodes, log entries and migration frames did not change.
//!   A format-1 meta decodes with `checksum: None`, and storage recomputes it once by a scan.
//! - 3: [`PartitionMeta`] gained `bytes` (the stored memories' size, for byte quotas). A format-2
//!   meta decodes with `bytes: None`, recomputed once by a scan the same way.
//! - 4: [`LogEntry`] gained `term` (the layout epoch its writer led the partition at, see
//!   `replicate/rules.rs`) and [`PartitionMeta`] `last_term` (the last entry's term). Entries and
//!   metas of earlier formats decode with term 0: every entry written before terms counts as one
//!   older than any written after.
//! - 5: [`PartitionMeta`] gained `trimmed_seq` and `trimmed_term` (where the log starts once
//!   trimmed, `storage/trim.rs`). Earlier metas decode with 0: nothing trimmed.
//! - 6: [`StoredEpisode`] gained `embedding_model` and `embedded_by_router` (whose vector it is,
//!   and whether the router made it from the content) and [`PartitionMeta`] `embedding_model`
//!   (the model of the partition's vectors, fixed with its dimension). Episodes, log entries (whose puts hold episodes), operation lists and metas of
//!   earlier formats decode with `None`: vectors of no known model.
//! - 7: [`StoredEpisode`] gained `change_keys` (the idempotency keys of its latest keyed changes,
//!   `memring_common::api::Conditions`). Episodes, log entries, operation lists and feed answers
//!   of earlier formats decode with none.
//! - 8: [`LogOp`] gained `TermStart` (the first entry of a primary's term, appended for writes
//!   still waiting from an older term, `replicate/rules.rs`). Bodies of format 7 decode
//!   unchanged; a binary of format 7 refuses such entries instead of misreading them.
//!
//! Keys (see `storage.rs` for the column families):
//! - episodes: `partition ‖ memory id` (ids sort the list order),
//! - log: `partition ‖ seq (u64 big-endian)`,
//! - meta: `partition`.

use memring_common::{ApiError, MemoryId, PartitionKey, Scope};
use serde::{Deserialize, Serialize};

use old::LogEntryV3;
pub(crate) use old::{OldLogEntry, OldLogOp, StoredEpisodeV5, StoredEpisodeV6};

/// Format of episode, log and meta values written by this binary.
pub const RECORD_FORMAT_VERSION: u8 = 8;

/// A value stored in RocksDB or sent in a migration frame, readable in every format version this
/// binary knows.
pub trait Record: Serialize + serde::de::DeserializeOwned {
    /// Decodes a body written in format `version` (1..=[`RECORD_FORMAT_VERSION`]). The default
    /// is for records whose body has not changed since format 1.
    fn decode_body(_version: u8, body: &[u8]) -> Result<Self, ApiError> {
        bincode_body(body)
    }
}

impl Record for StoredEpisode {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        match version {
            7.. => bincode_body(body),
            6 => bincode_body::<StoredEpisodeV6>(body).map(StoredEpisode::from),
            _ => bincode_body::<StoredEpisodeV5>(body).map(StoredEpisode::from),
        }
    }
}

impl Record for Vec<LogOp> {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        match version {
            7.. => bincode_body(body),
            6 => upgrade_all(bincode_body::<Vec<OldLogOp<StoredEpisodeV6>>>(body)?),
            _ => upgrade_all(bincode_body::<Vec<OldLogOp<StoredEpisodeV5>>>(body)?),
        }
    }
}

impl Record for LogEntry {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        match version {
            7.. => bincode_body(body),
            6 => bincode_body::<OldLogEntry<StoredEpisodeV6>>(body).map(LogEntry::from),
            4 | 5 => bincode_body::<OldLogEntry<StoredEpisodeV5>>(body).map(LogEntry::from),
            _ => bincode_body::<LogEntryV3>(body).map(LogEntry::from),
        }
    }
}

impl Record for Vec<LogEntry> {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        match version {
            7.. => bincode_body(body),
            6 => upgrade_all(bincode_body::<Vec<OldLogEntry<StoredEpisodeV6>>>(body)?),
            4 | 5 => upgrade_all(bincode_body::<Vec<OldLogEntry<StoredEpisodeV5>>>(body)?),
            _ => upgrade_all(bincode_body::<Vec<LogEntryV3>>(body)?),
        }
    }
}

/// Old records of a list, each upgraded.
pub(crate) fn upgrade_all<Old, New: From<Old>>(old: Vec<Old>) -> Result<Vec<New>, ApiError> {
    Ok(old.into_iter().map(New::from).collect())
}

impl Record for PartitionMeta {
    fn decode_body(version: u8, body: &[u8]) -> Result<Self, ApiError> {
        if version >= 6 {
            return bincode_body(body);
        }
        old::meta_before_6(version, body)
    }
}

pub(crate) fn bincode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| ApiError::internal(format!("record is corrupt: {e}")))
}

/// One memory as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEpisode {
    /// Its id.
    pub id: String,
    /// Its text.
    pub content: String,
    /// Metadata as compact JSON (bincode cannot carry arbitrary JSON values).
    pub metadata_json: String,
    /// Embedding, if any.
    pub embedding: Option<Vec<f32>>,
    /// First written, unix ms.
    pub created_at_ms: i64,
    /// Last changed, unix ms.
    pub updated_at_ms: i64,
    /// +1 per change.
    pub version: u64,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<i64>,
    /// The key of its vector in the partition's index (unique within the partition).
    pub label: u64,
    /// The model of `embedding`: the partition's model when it was written (`None`: no vector,
    /// or written before format 6). Imports fix a new copy's partition model from it.
    pub embedding_model: Option<String>,
    /// The router made `embedding` from `content` (so a changed content is embedded again).
    pub embedded_by_router: bool,
    /// The idempotency keys of its latest keyed changes, oldest first (at most
    /// `memring_common::api::KEPT_CHANGE_KEYS`): a change sent again with one of them is
    /// answered as applied instead of being applied twice.
    pub change_keys: Vec<String>,
}

impl StoredEpisode {
    /// What the memory counts against a byte quota: its id, content, metadata and embedding
    /// (4 bytes a dimension) plus a fixed 48 for the numbers.
    pub fn size(&self) -> u64 {
        let vector = self.embedding.as_ref().map_or(0, |v| v.len() * 4);
        (self.id.len() + self.content.len() + self.metadata_json.len() + vector + 48) as u64
    }

    /// The `(id, version, size)` a partition meta keeps account of.
    pub fn term(&self) -> (&str, u64, u64) {
        (self.id.as_str(), self.version, self.size())
    }

    /// True when the TTL has run out at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether a write carries the same body as this record (the idempotency test).
    /// `embedded_by` is the model the router embedded the write's content with, if it did.
    pub fn same_body(
        &self,
        content: &str,
        metadata_json: &str,
        embedding: &Option<Vec<f32>>,
        embedded_by: Option<&str>,
        expiry: &NewExpiry,
    ) -> bool {
        // Two vectors the same model made from the same content are the same vector, whatever
        // float rounding a different batch gave the second one: a retried text-only write is
        // unchanged. A client's vector is compared number for number.
        let same_vector = match (self.embedded_by_router, embedded_by) {
            (true, Some(now)) => self.embedding_model.as_deref() == Some(now),
            (false, None) => self.embedding == *embedding,
            _ => false,
        };
        let same_expiry = match expiry {
            // A write's TTL counts only in whether one was set: a retried write with the same
            // TTL must not extend the expiry.
            NewExpiry::FromTtl(ttl) => self.expires_at_ms.is_some() == ttl.is_some(),
            NewExpiry::At(at) => self.expires_at_ms == *at,
        };
        self.content == content && self.metadata_json == metadata_json && same_vector && same_expiry
    }

    /// The public form.
    pub fn to_view(&self, scope: &Scope) -> Result<memring_common::api::MemoryView, ApiError> {
        use memring_common::clock::format_millis;
        Ok(memring_common::api::MemoryView {
            id: MemoryId::parse(&self.id)?,
            scope: scope.clone(),
            content: self.content.clone(),
            metadata: parse_metadata(&self.metadata_json)?,
            embedding: self.embedding.clone(),
            created_at: format_millis(self.created_at_ms),
            updated_at: format_millis(self.updated_at_ms),
            version: self.version,
            expires_at: self.expires_at_ms.map(format_millis),
            embedded_by: if self.embedded_by_router { self.embedding_model.clone() } else { None },
        })
    }
}

/// The expiry a write gives a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewExpiry {
    /// A write's `ttl_seconds`, counted from when it is applied.
    FromTtl(Option<u64>),
    /// A patch's: exactly this deadline (unix ms), or none.
    At(Option<i64>),
}

impl NewExpiry {
    /// The deadline of a change applied at `now_ms`.
    pub fn at(&self, now_ms: i64) -> Option<i64> {
        match *self {
            NewExpiry::FromTtl(ttl) => {
                ttl.map(|t| now_ms.saturating_add((t as i64).saturating_mul(1000)))
            }
            NewExpiry::At(at) => at,
        }
    }
}

/// Parses stored metadata JSON.
pub fn parse_metadata(json: &str) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::internal(format!("stored metadata is corrupt: {e}")))
}

/// One change-log entry: what happened to which memory, in the partition's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Sequence number within the partition, from 1.
    pub seq: u64,
    /// When, unix ms.
    pub at_ms: i64,
    /// What.
    pub op: LogOp,
    /// The layout epoch at which the node that wrote it had taken the partition's writes over
    /// (0 for entries written before terms). Never decreases along a log.
    pub term: u64,
}

impl LogEntry {
    /// What identifies this entry across copies of a log: position, term, operation, memory
    /// and version. TTL redaction (`storage/purge.rs`) empties a put's content but keeps these.
    pub fn fingerprint(&self) -> (u64, u64, bool, &str, u64) {
        match &self.op {
            LogOp::Put(e) => (self.seq, self.term, true, e.id.as_str(), e.version),
            LogOp::Delete { id, version } => (self.seq, self.term, false, id.as_str(), *version),
            LogOp::TermStart => (self.seq, self.term, false, "", 0),
        }
    }

    /// The memory the entry is about (none for the start of a term).
    pub fn id(&self) -> Option<&str> {
        self.op.id()
    }
}

/// The operation a log entry records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogOp {
    /// The memory now has this content (creation or update).
    Put(StoredEpisode),
    /// The memory was deleted at this version.
    Delete {
        /// Its id.
        id: String,
        /// The version it had.
        version: u64,
    },
    /// The first entry of a primary's term, changing no memory: appended when writes of an
    /// older term still wait for their quorum (`rules::rebase`), which complete once the copies
    /// hold it.
    TermStart,
}

impl LogOp {
    /// The memory the operation is about (none for the start of a term).
    pub fn id(&self) -> Option<&str> {
        match self {
            LogOp::Put(e) => Some(&e.id),
            LogOp::Delete { id, .. } => Some(id),
            LogOp::TermStart => None,
        }
    }
}

/// Per-partition bookkeeping, written in the same batch as every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Embedding dimension, fixed by the first write with an embedding.
    pub dimensions: Option<u32>,
    /// Last log sequence number written.
    pub last_seq: u64,
    /// Live memories.
    pub count: u64,
    /// Next index label to hand out.
    pub next_label: u64,
    /// Wrapping sum of [`checksum_term`] over the stored memories, the same value a full scan
    /// computes; `None` only in a format-1 record not yet upgraded.
    pub checksum: Option<u64>,
    /// Sum of [`StoredEpisode::size`] over the stored memories; `None` only in a format-1 or 2
    /// record not yet upgraded.
    pub bytes: Option<u64>,
    /// Term of the entry at `last_seq` (0 when the log is empty or older than terms).
    pub last_term: u64,
    /// The log holds no entry at or before this position any more (trimmed, or the position of
    /// the snapshot this copy was seeded from; 0: it holds every entry).
    pub trimmed_seq: u64,
    /// The term of the entry at `trimmed_seq`.
    pub trimmed_term: u64,
    /// The model of the partition's vectors, fixed with `dimensions` by the first vector: the
    /// router's model when it embedded it, the client's `embedding_model`, else `"client"`
    /// (`None`: no vector yet, or fixed before format 6).
    pub embedding_model: Option<String>,
}

impl PartitionMeta {
    /// Keeps the checksum and the byte total in step with one memory changing from `old` to
    /// `new` (each an `(id, version, size)`, `None` for absent).
    pub fn replace_memory(&mut self, old: Option<(&str, u64, u64)>, new: Option<(&str, u64, u64)>) {
        let (mut sum, mut bytes) = (self.checksum.unwrap_or(0), self.bytes.unwrap_or(0));
        if let Some((id, version, size)) = old {
            sum = sum.wrapping_sub(checksum_term(id, version));
            bytes = bytes.saturating_sub(size);
        }
        if let Some((id, version, size)) = new {
            sum = sum.wrapping_add(checksum_term(id, version));
            bytes = bytes.saturating_add(size);
        }
        self.checksum = Some(sum);
        self.bytes = Some(bytes);
    }
}

/// One memory's share of a partition checksum: XXH3(id ‖ 0 ‖ version big-endian). Summed with
/// wrapping addition the checksum does not depend on order, so both sides of a migration can
/// keep it incrementally and still compare equal.
pub fn checksum_term(id: &str, version: u64) -> u64 {
    let mut bytes = Vec::with_capacity(id.len() + 9);
    bytes.extend_from_slice(id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&version.to_be_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Encodes a record: version byte ‖ bincode body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    // Straight after the version byte, into a buffer sized for a typical memory, so that
    // encoding one does not grow it from nothing a dozen times and copy it once more.
    let mut out = Vec::with_capacity(1024);
    out.push(RECORD_FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| ApiError::internal(format!("record does not encode: {e}")))?;
    Ok(out)
}

/// Decodes a record written by [`encode`] of this or an earlier format.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.split_first() {
        Some((&version, body)) if (1..=RECORD_FORMAT_VERSION).contains(&version) => {
            T::decode_body(version, body)
        }
        Some((other, _)) => Err(ApiError::internal(format!(
            "record format {other} is not readable by this binary (it knows {RECORD_FORMAT_VERSION}); upgrade memring"
        ))),
        None => Err(ApiError::internal("empty record")),
    }
}

/// `partition ‖ id`.
pub fn episode_key(partition: &[u8], id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(partition.len() + id.len());
    key.extend_from_slice(partition);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `partition ‖ seq`.
pub fn log_key(partition: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(partition.len() + 8);
    key.extend_from_slice(partition);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xFF prefix gets here, which partition encodings never are.
    vec![u8::MAX; prefix.len() + 1]
}

/// The partition of an encoded meta key.
pub fn partition_of_meta_key(key: &[u8]) -> Option<PartitionKey> {
    PartitionKey::decode(key).filter(|(_, used)| *used == key.len()).map(|(p, _)| p)
}

mod old;
#[cfg(test)]
mod tests;
