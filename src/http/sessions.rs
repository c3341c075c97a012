//! `/api/v1/sessions` handlers.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::limits::{StreamKind, StreamPermit, request_duration};
use super::objects::{self, ReadQuery, SOURCE, with_rv};
use super::{ApiError, AppState, Status};
use crate::domain::resource::{ObjectRef, Phase, Session, SessionStatus};
use crate::domain::wait::{Condition, Progress, Waiter};
use crate::ops::{self, WaitEnd};
use crate::store::StoreError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", get(list).post(create))
        .route(
            "/api/v1/sessions/{name}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .route("/api/v1/sessions/{name}/status", get(status))
        .route("/api/v1/sessions/{name}/events", get(events))
        .route("/api/v1/sessions/{name}/container", get(container))
        .route(
            "/api/v1/sessions/{name}/restart",
            axum::routing::post(restart),
        )
        .route("/api/v1/sessions/{name}/log", get(log))
}

/// A list of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// `orchestrator.mcp.dev/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `SessionList`.
    pub kind: String,
    /// `resourceVersion`: the store revision of the list; watch from it.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The sessions.
    pub items: Vec<Session>,
}

/// Query of writes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct WriteQuery {
    /// `Running`: answer once the session's sandbox runs (or it failed for good).
    pub wait: Option<String>,
    /// How long `wait` waits, e.g. `30s` (default 60s, at most 10m).
    pub timeout: Option<String>,
    /// `All`: validate and report, write nothing.
    pub dry_run: Option<String>,
}

pub(super) fn query<T: Default>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.body_text()))
}

pub(super) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if is_body_timeout(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                "the request body did not arrive in time",
            )
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("the body exceeds {} bytes", super::MAX_BODY),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.body_text())
        }
    })
}

/// Did reading the body fail because the body read timeout fired?
fn is_body_timeout(e: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Run a CPU-bound parse on the blocking pool, off the async workers; a failed (panicked)
/// parse is a 500 Status, never a crash.
pub(super) async fn off_workers<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "parsing a request body failed unexpectedly");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "parsing the body failed unexpectedly",
        )
    })?
}

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn unsupported(got: &str, want: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!("content type {got:?} is not supported here; use {want}"),
    )
}

/// List sessions, or watch them with `?watch=true`.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(ReadQuery),
    responses(
        (status = 200, description = "The sessions, or an SSE stream with watch=true", body = SessionList),
        (status = 400, description = "Bad selector", body = Status),
        (status = 401, description = "Missing or wrong token", body = Status)))]
pub(super) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    objects::list::<Session>(st, &headers, query(q)?).await
}

/// Create a session. `?wait=Running` answers once its sandbox runs.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", params(WriteQuery),
    request_body(content = Session, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Session),
        (status = 409, description = "A session with this name exists", body = Status),
        (status = 413, description = "Body over 1 MiB", body = Status),
        (status = 415, description = "Not JSON or YAML", body = Status),
        (status = 422, description = "Invalid spec or contract breach, with field paths", body = Status),
        (status = 504, description = "wait timed out", body = Status)))]
pub(super) async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<WriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let dry_run = q.dry_run.is_some();
    let wait = wait_plan(&st, &q, dry_run)?;
    let created = objects::create::<Session>(&st, &headers, bytes, dry_run).await?;
    let created = maybe_wait(&st, wait, created).await?;
    Ok(with_rv(
        (StatusCode::CREATED, Json(&created)).into_response(),
        &created,
    ))
}

/// Read one session, or watch it with `?watch=true`.
#[utoipa::path(get, path = "/api/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name"), ReadQuery),
    responses((status = 200, description = "The session", body = Session), (status = 404, description = "No such session", body = Status)))]
pub(super) async fn read(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    objects::read::<Session>(st, name, &headers, query(q)?).await
}

async fn get_session(st: &AppState, name: &str) -> Result<Session, ApiError> {
    objects::get::<Session>(st, name).await
}

/// Create or replace a session (idempotent acquire). Precondition: `metadata.resourceVersion`
/// in the body or `If-Match`.
#[utoipa::path(put, path = "/api/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name"), WriteQuery),
    request_body(content = Session, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced (or unchanged); header X-Apply-Result", body = Session),
        (status = 201, description = "Created", body = Session),
        (status = 409, description = "Stale resourceVersion (details.resourceVersion is the current one) or owned by a specs file", body = Status),
        (status = 422, description = "Invalid spec or contract breach", body = Status)))]
pub(super) async fn replace(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<WriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let dry_run = q.dry_run.is_some();
    let wait = wait_plan(&st, &q, dry_run)?;
    let (what, s) = objects::replace::<Session>(&st, &name, &headers, bytes, dry_run).await?;
    let s = maybe_wait(&st, wait, s).await?;
    Ok(objects::applied(what, &s))
}

/// Patch a session: `application/merge-patch+json` (RFC 7386) or
/// `application/json-patch+json` (RFC 6902, including `test`).
#[utoipa::path(patch, path = "/api/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name"), WriteQuery),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Patched", body = Session),
        (status = 404, description = "No such session", body = Status),
        (status = 409, description = "Stale resourceVersion, failed test op, or owned by a specs file", body = Status),
        (status = 415, description = "Not a patch content type", body = Status),
        (status = 422, description = "The result is invalid or breaks the contract", body = Status)))]
pub(super) async fn patch(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<WriteQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = body(b)?;
    let dry_run = q.dry_run.is_some();
    let wait = wait_plan(&st, &q, dry_run)?;
    let s = objects::patch::<Session>(&st, &name, &headers, bytes, dry_run).await?;
    let s = maybe_wait(&st, wait, s).await?;
    Ok(with_rv(Json(&s).into_response(), &s))
}

/// Delete a session (its sandbox goes with it). Precondition: `If-Match`.
#[utoipa::path(delete, path = "/api/v1/sessions/{name}", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Deleted; the last state", body = Session),
        (status = 404, description = "No such session", body = Status),
        (status = 409, description = "Stale resourceVersion or owned by a specs file", body = Status)))]
pub(super) async fn remove(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    objects::remove::<Session>(&st, &name, &headers).await
}

/// A rollout restart: the sandbox is recreated (its restart marker moves the generation and
/// the spec hash); recorded as a `RestartRequested` event.
#[utoipa::path(post, path = "/api/v1/sessions/{name}/restart", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Restart requested; the session as stored", body = Session),
        (status = 404, description = "No such session", body = Status)))]
pub(super) async fn restart(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let s = ops::restart(&st.inner.store, &name, SOURCE).await?;
    Ok(Json(&s).into_response())
}

/// The longest a log follow streams before the server ends it.
pub(super) const LOG_FOLLOW_MAX: Duration = Duration::from_secs(3600);

/// Query of `log` (Kubernetes' names).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(super) struct LogParams {
    /// Keep the stream open for new lines until the sandbox stops.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines (at most 1 000 000).
    tail_lines: Option<u64>,
    /// Only lines of the last N seconds.
    since_seconds: Option<u64>,
    /// Only lines at or after this RFC 3339 time.
    since_time: Option<String>,
}

/// The sandbox's stderr as plain text (its stdout is the MCP protocol stream and is never
/// shown). A follow holds a watch slot (429 when none is left) and ends on shutdown.
#[utoipa::path(get, path = "/api/v1/sessions/{name}/log", tag = "sessions", params(("name" = String, Path, description = "Session name"), LogParams),
    responses(
        (status = 200, description = "The sandbox's stderr", content_type = "text/plain"),
        (status = 404, description = "No session (NotFound) or no sandbox yet (NoContainer)", body = Status)))]
pub(super) async fn log(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<LogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", m);
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    if q.tail_lines.is_some_and(|n| n > 1_000_000) {
        return Err(bad("tailLines: at most 1000000".into()));
    }
    let since = match (q.since_seconds, q.since_time.as_deref()) {
        (Some(_), Some(_)) => return Err(bad("give sinceSeconds or sinceTime, not both".into())),
        (Some(secs), None) => Some(
            chrono::Duration::try_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
                .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                .ok_or_else(|| bad("sinceSeconds is too large".into()))?,
        ),
        (None, Some(t)) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| bad(format!("sinceTime: {e}")))?
                .with_timezone(&chrono::Utc),
        ),
        (None, None) => None,
    };
    let s = get_session(&st, &name).await?;
    // Every log stream (a read of up to the whole log, or a follow) holds a watch slot.
    let permit = st.inner.streams.acquire(StreamKind::Watch)?;
    let query = crate::runtime::LogQuery {
        follow: q.follow,
        tail: q.tail_lines,
        since,
    };
    let identity = st.inner.store.identity().await?;
    let claimed = st.inner.store.claimed_by(&s).await?;
    let stream = st
        .inner
        .runtime
        .session_stderr(&s, &identity, &claimed, &query)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DockerUnavailable",
                e.to_string(),
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NoContainer",
                format!("session {name:?} has no sandbox yet"),
            )
        })?;
    use futures::StreamExt;
    let body = stream
        .map(move |chunk| {
            // The slot is held as long as the body streams.
            let _ = &permit;
            chunk.map_err(std::io::Error::other)
        })
        .take_until(st.inner.shutdown.clone().cancelled_owned())
        // A plain-text stream cannot carry keep-alives, so a client gone during a quiet
        // follow is only noticed at the next write: a follow ends after LOG_FOLLOW_MAX
        // (the client resumes with `sinceTime`), so a slot is never held forever.
        .take_until(tokio::time::sleep(LOG_FOLLOW_MAX));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The session's status (phase `Pending` before the first reconcile).
#[utoipa::path(get, path = "/api/v1/sessions/{name}/status", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses((status = 200, description = "Status", body = SessionStatus), (status = 404, description = "No such session", body = Status)))]
pub(super) async fn status(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_session(&st, &name).await?;
    Ok(Json(s.status.unwrap_or_default()).into_response())
}

/// The session's recent events, oldest first.
#[utoipa::path(get, path = "/api/v1/sessions/{name}/events", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses((status = 200, description = "Events"), (status = 404, description = "No such session", body = Status)))]
pub(super) async fn events(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    objects::events::<Session>(&st, &name).await
}

/// A summary of the session's container as the engine reports it.
#[utoipa::path(get, path = "/api/v1/sessions/{name}/container", tag = "sessions", params(("name" = String, Path, description = "Session name")),
    responses((status = 200, description = "Container summary"), (status = 404, description = "No session or no container", body = Status)))]
pub(super) async fn container(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_session(&st, &name).await?;
    let Some(id) = s.status.and_then(|x| x.container_id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("session {name:?} has no container"),
        ));
    };
    let info = st.inner.runtime.inspect(&id).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DockerUnavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(crate::runtime::summary(&info)).into_response())
}

/// What `?wait=` asked for, checked before anything is written: the timeout (bounded) and
/// a slot of the wait cap.
pub(super) struct WaitPlan {
    timeout: Duration,
    _permit: StreamPermit,
}

/// Validate `?wait=` and `?timeout=` and take a wait slot (429 when the cap is reached),
/// before the write, so that a refused wait writes nothing.
fn wait_plan(st: &AppState, q: &WriteQuery, dry_run: bool) -> Result<Option<WaitPlan>, ApiError> {
    let timeout = match q.timeout.as_deref() {
        None => Duration::from_secs(60),
        Some(t) => request_duration("timeout", t)?,
    };
    let Some(want) = q.wait.as_deref() else {
        return Ok(None);
    };
    if !want.eq_ignore_ascii_case("running") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("wait={want:?}: only wait=Running is supported"),
        ));
    }
    if dry_run {
        return Ok(None);
    }
    let permit = st.inner.streams.acquire(StreamKind::Wait)?;
    Ok(Some(WaitPlan {
        timeout,
        _permit: permit,
    }))
}

/// With `?wait=Running`, wait (event-driven) until the session runs at its generation or
/// failed for good; 504 after the timeout, 503 when the server shuts down.
async fn maybe_wait(
    st: &AppState,
    plan: Option<WaitPlan>,
    s: Session,
) -> Result<Session, ApiError> {
    let Some(plan) = plan else {
        return Ok(s);
    };
    let timeout = plan.timeout;
    let store = &st.inner.store;
    let name = s.name().to_string();
    let revision = store.revision().await?;
    let current = get_session(st, &name).await?;
    let mut waiter = Waiter::new(Condition::Phase(Phase::Running), [name.clone()]);
    let mut last = match waiter.observe(&name, Some(&current)) {
        Some(Progress::Met(_) | Progress::Unreachable(..)) => return Ok(current),
        _ => current,
    };
    let mut watch = store.watch(revision).await?;
    // `request_duration` bounds the timeout; checked anyway, never an Instant overflow.
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "timeout is too large",
            )
        })?;
    let mut end = None;
    let outcome = ops::wait(
        &mut watch,
        &mut waiter,
        deadline,
        &st.inner.shutdown,
        |_, p| match p {
            Progress::Met(s) | Progress::Unreachable(_, s) => end = Some(s.clone()),
            Progress::Changed(..) => {}
        },
    )
    .await?;
    match (outcome, end) {
        (WaitEnd::Done, Some(Some(s))) => Ok(*s),
        (WaitEnd::Done, _) => Err(StoreError::NotFound(ObjectRef::session(name)).into()),
        (WaitEnd::Cancelled, _) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "the server is shutting down",
        )
        .with_retry_after(1)),
        (WaitEnd::TimedOut, _) => {
            if let Ok(now) = get_session(st, &name).await {
                last = now;
            }
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!(
                    "session {name:?} is not Running after {} (phase {})",
                    humantime::format_duration(timeout),
                    last.phase()
                ),
            )
            .with_details(json!({"name": name, "object": last})))
        }
    }
}
