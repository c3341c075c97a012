//! `/api/v1/sessions/{name}/chat` and `/messages`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::limits::{StreamKind, supervised};
use super::{ApiError, AppState, Status};
use crate::chat::service::{ChatError, ChatEvent, ChatService};
use crate::domain::reason::Reason;
use crate::store::StoreError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions/{name}/chat", post(chat))
        .route(
            "/api/v1/sessions/{name}/messages",
            get(messages).delete(clear),
        )
}

/// A chat request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The user's message.
    pub message: String,
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let msg = e.to_string();
        match e {
            ChatError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", msg),
            ChatError::NotRunning { name, phase } => {
                ApiError::new(StatusCode::CONFLICT, "NotRunning", msg)
                    .with_details(json!({"name": name, "phase": phase}))
            }
            ChatError::Busy(name) => ApiError::new(StatusCode::CONFLICT, "TurnInProgress", msg)
                .with_details(json!({"name": name}))
                .with_retry_after(1),
            ChatError::NoApiKey => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "GeminiNotConfigured", msg)
            }
            ChatError::Mcp(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SandboxUnavailable", msg)
            }
            ChatError::Store(s) => s.into(),
        }
    }
}

fn service(st: &AppState) -> Result<std::sync::Arc<ChatService>, ApiError> {
    st.inner.chat.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ChatDisabled",
            "the chat module is not enabled on this server",
        )
    })
}

/// Send a message; the answer streams back as Server-Sent Events `text`, `tool_call`,
/// `tool_result`, `done` and `error`. A missing or not-running session is answered at once;
/// a second turn while one runs on the same session gets 409 `TurnInProgress`; beyond the
/// chat stream cap, 429. The turn is cancelled when the client disconnects.
#[utoipa::path(post, path = "/api/v1/sessions/{name}/chat", tag = "chat",
    params(("name" = String, Path, description = "Session name")),
    request_body(content = ChatRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "SSE stream of text, tool_call, tool_result, done, error"),
        (status = 404, description = "No such session", body = Status),
        (status = 409, description = "The session is not running, or a turn is in progress on it", body = Status),
        (status = 415, description = "Not JSON", body = Status),
        (status = 422, description = "No message", body = Status),
        (status = 429, description = "Too many chat streams open", body = Status),
        (status = 503, description = "Gemini key missing or sandbox unreachable", body = Status)))]
pub(super) async fn chat(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = super::sessions::body(b)?;
    // Only the leader talks to sandboxes: a standby passes the turn on, streaming.
    let path = ["api", "v1", "sessions", &name, "chat"];
    let hop = super::forward::Hop {
        method: axum::http::Method::POST,
        segments: &path,
        headers: &headers,
        pass: &super::forward::CHAT_PASS,
        back: &super::forward::CHAT_BACK,
        body: bytes.clone(),
        kind: StreamKind::Chat,
    };
    if let Some(answer) = super::forward::to_leader(&st, hop).await? {
        return Ok(answer);
    }
    let ct = super::sessions::content_type(&headers);
    if ct != "application/json" {
        return Err(super::sessions::unsupported(&ct, "application/json"));
    }
    let req: ChatRequest = super::sessions::off_workers(move || {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("body: {e}"),
            )
        })
    })
    .await?;
    if req.message.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "message: must not be empty",
        ));
    }
    let svc = service(&st)?;
    let turn = svc.begin_turn(&name)?;
    let permit = st.inner.streams.acquire(StreamKind::Chat)?;
    let prepared = svc.prepare(&name).await?;
    let (tx, rx) = mpsc::channel(256);
    // Cancelled when the response body is dropped (the client went away) or on shutdown.
    let cancel = st.inner.shutdown.child_token();
    if let Some(leadership) = &st.inner.leadership {
        // A turn talks to the sandbox: it ends with this replica's term.
        let (leadership, cancel) = (leadership.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = leadership.term_ends() => cancel.cancel(),
            }
        });
    }
    let on_drop = cancel.clone().drop_guard();
    let metrics = st.inner.metrics.clone();
    tokio::spawn(async move {
        let (_permit, _turn) = (permit, turn);
        let run = svc.run(prepared, req.message, tx.clone(), cancel);
        if !supervised(&metrics, "chat_turn", run).await {
            let _ = tx
                .send(ChatEvent::Error {
                    reason: Reason::InternalError,
                    message: "the chat turn failed unexpectedly".into(),
                })
                .await;
        }
    });
    let events = ReceiverStream::new(rx).map(move |e| {
        let _alive = &on_drop;
        Ok::<_, Infallible>(
            Event::default()
                .event(e.name())
                .data(serde_json::to_string(&e).unwrap_or_default()),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The conversation so far (Gemini `Content` turns, oldest first).
#[utoipa::path(get, path = "/api/v1/sessions/{name}/messages", tag = "chat",
    params(("name" = String, Path, description = "Session name")),
    responses((status = 200, description = "The history"), (status = 404, description = "No such session", body = Status)))]
pub(super) async fn messages(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    exists(&st, &name).await?;
    let items = svc.history().load_all(&name).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// Forget the conversation.
#[utoipa::path(delete, path = "/api/v1/sessions/{name}/messages", tag = "chat",
    params(("name" = String, Path, description = "Session name")),
    responses((status = 200, description = "Cleared"), (status = 404, description = "No such session", body = Status)))]
pub(super) async fn clear(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let svc = service(&st)?;
    exists(&st, &name).await?;
    let n = svc.history().clear(&name).await?;
    Ok(Json(json!({ "deleted": n })).into_response())
}

async fn exists(st: &AppState, name: &str) -> Result<(), ApiError> {
    match st.inner.store.get(name).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(crate::domain::resource::ObjectRef::session(name)).into()),
    }
}
