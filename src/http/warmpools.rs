//! `/api/v1/warmpools` handlers: the same CRUD, patches, label selectors, SSE watch, status
//! codes and Status bodies as sessions ([`super::objects`]), for `WarmPool` objects.
//! Pools have no phase, so there is no `?wait=`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::objects::{self, ReadQuery, with_rv};
use super::sessions::{body, query};
use super::{ApiError, AppState, Status};
use crate::domain::pool::WarmPool;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/warmpools", get(list).post(create))
        .route(
            "/api/v1/warmpools/{name}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .route("/api/v1/warmpools/{name}/events", get(events))
}

/// A list of warm pools.
#[derive(Debug, Serialize, ToSchema)]
pub struct WarmPoolList {
    /// `orchestrator.mcp.dev/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `WarmPoolList`.
    pub kind: String,
    /// `resourceVersion`: the pools' revision of the list; watch from it.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The pools.
    pub items: Vec<WarmPool>,
}

/// Query of pool writes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct PoolWriteQuery {
    /// `All`: validate and report, write nothing.
    pub dry_run: Option<String>,
}

/// List warm pools, or watch them with `?watch=true`.
#[utoipa::path(get, path = "/api/v1/warmpools", operation_id = "listWarmPools", tag = "warmpools", params(ReadQuery),
    responses(
        (status = 200, description = "The pools, or an SSE stream with watch=true", body = WarmPoolList),
        (status = 400, description = "Bad selector", body = Status),
        (status = 401, description = "Missing or wrong token", body = Status)))]
pub(super) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    objects::list::<WarmPool>(st, &headers, query(q)?).await
}

/// Create a warm pool.
#[utoipa::path(post, path = "/api/v1/warmpools", operation_id = "createWarmPool", tag = "warmpools", params(PoolWriteQuery),
    request_body(content = WarmPool, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = WarmPool),
        (status = 409, description = "A pool with this name exists", body = Status),
        (status = 413, description = "Body over 1 MiB", body = Status),
        (status = 415, description = "Not JSON or YAML", body = Status),
        (status = 422, description = "Invalid spec, replicas over the limit or a template outside the contract, with field paths", body = Status)))]
pub(super) async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<PoolWriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let created = objects::create::<WarmPool>(&st, &headers, bytes, q.dry_run.is_some()).await?;
    Ok(with_rv(
        (StatusCode::CREATED, Json(&created)).into_response(),
        &created,
    ))
}

/// Read one warm pool, or watch it with `?watch=true`.
#[utoipa::path(get, path = "/api/v1/warmpools/{name}", operation_id = "readWarmPool", tag = "warmpools", params(("name" = String, Path, description = "Pool name"), ReadQuery),
    responses((status = 200, description = "The pool", body = WarmPool), (status = 404, description = "No such pool", body = Status)))]
pub(super) async fn read(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    objects::read::<WarmPool>(st, name, &headers, query(q)?).await
}

/// Create or replace a warm pool. Precondition: `metadata.resourceVersion` in the body or
/// `If-Match`.
#[utoipa::path(put, path = "/api/v1/warmpools/{name}", operation_id = "replaceWarmPool", tag = "warmpools", params(("name" = String, Path, description = "Pool name"), PoolWriteQuery),
    request_body(content = WarmPool, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced (or unchanged); header X-Apply-Result", body = WarmPool),
        (status = 201, description = "Created", body = WarmPool),
        (status = 409, description = "Stale resourceVersion (details.resourceVersion is the current one) or owned by a specs file", body = Status),
        (status = 422, description = "Invalid spec or template outside the contract", body = Status)))]
pub(super) async fn replace(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<PoolWriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let (what, p) =
        objects::replace::<WarmPool>(&st, &name, &headers, bytes, q.dry_run.is_some()).await?;
    Ok(objects::applied(what, &p))
}

/// Patch a warm pool: `application/merge-patch+json` (RFC 7386) or
/// `application/json-patch+json` (RFC 6902, including `test`).
#[utoipa::path(patch, path = "/api/v1/warmpools/{name}", operation_id = "patchWarmPool", tag = "warmpools", params(("name" = String, Path, description = "Pool name"), PoolWriteQuery),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Patched", body = WarmPool),
        (status = 404, description = "No such pool", body = Status),
        (status = 409, description = "Stale resourceVersion, failed test op, or owned by a specs file", body = Status),
        (status = 415, description = "Not a patch content type", body = Status),
        (status = 422, description = "The result is invalid or breaks the contract", body = Status)))]
pub(super) async fn patch(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<PoolWriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let p = objects::patch::<WarmPool>(&st, &name, &headers, bytes, q.dry_run.is_some()).await?;
    Ok(with_rv(Json(&p).into_response(), &p))
}

/// Delete a warm pool: its unclaimed sandboxes are removed; sandboxes sessions claimed stay
/// theirs. Precondition: `If-Match`.
#[utoipa::path(delete, path = "/api/v1/warmpools/{name}", operation_id = "deleteWarmPool", tag = "warmpools", params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "Deleted; the last state", body = WarmPool),
        (status = 404, description = "No such pool", body = Status),
        (status = 409, description = "Stale resourceVersion or owned by a specs file", body = Status)))]
pub(super) async fn remove(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    objects::remove::<WarmPool>(&st, &name, &headers).await
}

/// The pool's recent events (e.g. a specs file's problems), oldest first.
#[utoipa::path(get, path = "/api/v1/warmpools/{name}/events", operation_id = "warmPoolEvents", tag = "warmpools", params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, description = "Events"), (status = 404, description = "No such pool", body = Status)))]
pub(super) async fn events(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    objects::events::<WarmPool>(&st, &name).await
}
