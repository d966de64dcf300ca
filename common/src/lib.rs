//! memring's shared vocabulary.
//!
//! Everything two processes must agree on lives here: identifiers and their validation, scopes and
//! partition keys, the stored episode record, the public and internal wire types, the ring (the
//! placement math), the `RingStore` trait with its backends, the error type and its HTTP mapping,
//! configuration loading, and telemetry. It depends on no other memring crate and must never grow
//! process-specific logic (no RocksDB, no index, no forwarding).

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod ids;
pub mod internal;
pub mod layout;
pub mod limits;
pub mod ring;
pub mod scope;
pub mod store;
pub mod telemetry;
pub mod threads;
pub mod tls;
pub mod usage;
pub mod watcher;

pub use error::{ApiError, ErrorCode};
pub use ids::{AgentId, MemoryId, NodeId, TenantId};
pub use layout::ClusterLayout;
pub use ring::Ring;
pub use scope::{PartitionKey, Scope};
