//! The OpenAPI 3 document of the public API, served at `GET /openapi.json`.
//!
//! The schemas are derived (utoipa) from the very types the handlers parse and answer with
//! (`memring_common::api`, `memring_common::error`), so a field added to a request or answer
//! shows up here without anyone editing a spec. Each route is described once below, next to
//! the route table in `service.rs`; `tests/tests/openapi.rs` fails when a route of API.md is
//! missing.

use memring_common::api::{
    BatchItemResult, BatchResponse, ListResponse, MemoryView, PatchBody, RawBatch, RawFilter,
    RawSearch, RawWrite, SearchHit, SearchResponse, WriteOutcome, WriteResult,
};
use memring_common::error::{ErrorBody, ErrorCode, ErrorPayload};
use utoipa::OpenApi;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "memring",
        description = "A memory store for AI agents. Auth: `Authorization: Bearer <key>` when the router requires keys. Reads may send `x-memring-read-token` (from a write's answer) to read their own writes."
    ),
    paths(write, batch, get, patch, delete, list, search, delete_tenant),
    components(schemas(
        RawWrite,
        WriteResult,
        WriteOutcome,
        RawBatch,
        BatchResponse,
        BatchItemResult,
        MemoryView,
        PatchBody,
        ListResponse,
        RawSearch,
        RawFilter,
        SearchResponse,
        SearchHit,
        ErrorBody,
        ErrorPayload,
        ErrorCode
    ))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Write one memory (idempotent by id).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/memories", request_body = RawWrite,
    params(("tenant" = String, Path, description = "Tenant id"),
        ("If-Match" = Option<String>, Header, description = "With an id: replace only the memory at this version (its ETag, a quoted version), or * for any existing one"),
        ("If-None-Match" = Option<String>, Header, description = "With an id, *: create only (412 if it exists with another body; the same body again is 200)"),
        ("Idempotency-Key" = Option<String>, Header, description = "With an id: names the change, so that sending it again is answered as applied instead of 412")),
    responses(
        (status = 201, description = "Created; headers ETag and x-memring-read-token", body = WriteResult),
        (status = 200, description = "Same id: updated, or unchanged (same body); header ETag", body = WriteResult),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 412, description = "precondition_failed: the memory is at another version (the message and details.current_version say which)", body = ErrorBody),
        (status = 401, description = "No or bad key", body = ErrorBody),
        (status = 403, description = "Key not allowed here, or quota_exceeded", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 429, description = "Rate limited (Retry-After)", body = ErrorBody),
        (status = 503, description = "No replica or quorum reachable (Retry-After)", body = ErrorBody)))]
#[allow(dead_code)]
fn write() {}

/// Write up to 1,000 memories; each succeeds or fails on its own.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/memories:batch", request_body = RawBatch,
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "One result per item, in order", body = BatchResponse),
        (status = 400, description = "Not a batch, or over 1,000 items", body = ErrorBody),
        (status = 401, description = "No or bad key", body = ErrorBody),
        (status = 403, description = "Key not allowed here, or quota_exceeded", body = ErrorBody),
        (status = 429, description = "Rate limited (Retry-After)", body = ErrorBody)))]
#[allow(dead_code)]
fn batch() {}

/// Read one memory.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/memories/{id}",
    params(("tenant" = String, Path, description = "Tenant id"),
        ("id" = String, Path, description = "Memory id"),
        ("scope" = String, Query, description = "agent:<id>, shared or global")),
    responses(
        (status = 200, description = "The memory; header ETag (its version, quoted)", body = MemoryView),
        (status = 404, description = "No such memory (or expired)", body = ErrorBody)))]
#[allow(dead_code)]
fn get() {}

/// Change a memory with a JSON Merge Patch (RFC 7396) of content, metadata, embedding and
/// ttl_seconds; answers the whole memory. A changed content is embedded again when the router
/// made the memory's vector.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/memories/{id}", request_body = PatchBody,
    params(("tenant" = String, Path, description = "Tenant id"),
        ("id" = String, Path, description = "Memory id"),
        ("scope" = String, Query, description = "agent:<id>, shared or global"),
        ("If-Match" = Option<String>, Header, description = "Apply only to this version (the ETag), or * for any"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names the change, so that sending it again is answered as applied instead of 412")),
    responses(
        (status = 200, description = "The memory after the patch; headers ETag and x-memring-read-token", body = MemoryView),
        (status = 400, description = "Not a patch of these fields, or a content change the vector cannot follow", body = ErrorBody),
        (status = 404, description = "No such memory (or expired)", body = ErrorBody),
        (status = 412, description = "precondition_failed: the memory is at another version", body = ErrorBody),
        (status = 503, description = "No quorum reachable, or the embedder is busy (Retry-After)", body = ErrorBody)))]
#[allow(dead_code)]
fn patch() {}

/// Delete one memory.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/memories/{id}",
    params(("tenant" = String, Path, description = "Tenant id"),
        ("id" = String, Path, description = "Memory id"),
        ("scope" = String, Query, description = "agent:<id>, shared or global"),
        ("If-Match" = Option<String>, Header, description = "Delete only the memory at this version (its ETag), or * for any")),
    responses(
        (status = 204, description = "Deleted; header x-memring-read-token"),
        (status = 404, description = "No such memory", body = ErrorBody),
        (status = 412, description = "precondition_failed: the memory is at another version", body = ErrorBody)))]
#[allow(dead_code)]
fn delete() {}

/// One scope's memories, page by page, in a stable (id) order.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/memories",
    params(("tenant" = String, Path, description = "Tenant id"),
        ("scope" = String, Query, description = "agent:<id>, shared or global"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "A page", body = ListResponse),
        (status = 400, description = "Bad scope, limit or cursor", body = ErrorBody)))]
#[allow(dead_code)]
fn list() {}

/// Nearest memories across scopes, best first.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/memories/search", request_body = RawSearch,
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Results; partial = true when a scope's node did not answer", body = SearchResponse),
        (status = 400, description = "Invalid query (dimension, k, filter)", body = ErrorBody)))]
#[allow(dead_code)]
fn search() {}

/// Delete every memory of a tenant.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 202, description = "Every memory of the tenant is gone"),
        (status = 503, description = "A node could not delete; retry (idempotent)", body = ErrorBody)))]
#[allow(dead_code)]
fn delete_tenant() {}
