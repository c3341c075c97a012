//! `/api/v1/sessions/{name}/mcp`: the MCP gateway's Streamable HTTP endpoint.
//!
//! Before rmcp's transport sees a request, this layer (behind the same bearer auth as the
//! rest of `/api`): passes it on to the leader when this replica is a standby (only the
//! leader attaches to sandboxes); answers a missing session with 404, a session whose
//! sandbox does not run with 503 + `Retry-After` (on its way: Pending, Creating, BackOff)
//! or 409 (Succeeded, Failed, Terminating) — each with a JSON-RPC error body; caps open
//! answers (`MAX_MCP_STREAMS`). Errors rmcp answers in plain text (a bad `MCP-Protocol-Version`, a refused
//! `Origin`, a body over the limit) get a JSON-RPC error body too.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::AppState;
use super::forward::{Hop, to_leader};
use super::limits::StreamKind;
use crate::mcp::gateway::{Resolved, Unreachable, resolve};

const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The headers an MCP request passes on to the leader, besides every `Mcp-*` header
/// (`Mcp-Session-Id`, and 2026-07-28's `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`).
const PASS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ORIGIN,
    SESSION_ID,
    PROTOCOL_VERSION,
    LAST_EVENT_ID,
];
/// The headers of the leader's answer passed back.
const BACK: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    header::ALLOW,
    SESSION_ID,
    PROTOCOL_VERSION,
];

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions/{name}/mcp", any(mcp))
}

/// An HTTP error with a JSON-RPC error body (`id` null: it answers no particular request).
fn jsonrpc_error(status: StatusCode, code: i32, message: String, data: Value) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message, "data": data},
    });
    (status, axum::Json(body)).into_response()
}

fn unreachable(e: Unreachable) -> Response {
    let status = match &e {
        Unreachable::NotFound(_) => StatusCode::NOT_FOUND,
        Unreachable::NotRunning { .. } if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        Unreachable::NotRunning { .. } => StatusCode::CONFLICT,
        Unreachable::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let err = e.to_jsonrpc();
    let mut r = jsonrpc_error(
        status,
        err.code.0,
        err.message.to_string(),
        err.data.unwrap_or(Value::Null),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The JSON-RPC code of an API refusal, by its Status reason.
fn code_of(reason: &str) -> i32 {
    match reason {
        "NotLeader" | "NoLeader" | "LeaderUnreachable" => crate::mcp::codes::NOT_LEADER,
        "TooManyRequests" => crate::mcp::codes::BUSY,
        // The request as a whole was refused (JSON-RPC "invalid request").
        _ => -32600,
    }
}

/// Give an error answer without a JSON-RPC body (rmcp's plain-text refusals, the API's
/// Status bodies: forwarding failures, stream caps) a JSON-RPC error body, keeping its
/// status and headers.
async fn as_jsonrpc(r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    if parsed.as_ref().is_some_and(|v| v.get("jsonrpc").is_some()) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let (code, message, data) = match parsed.filter(|v| v["kind"] == "Status") {
        Some(st) => {
            let reason = st["reason"].as_str().unwrap_or("Failure").to_string();
            (
                code_of(&reason),
                st["message"].as_str().unwrap_or("refused").to_string(),
                json!({"reason": reason, "httpStatus": status.as_u16(), "details": st["details"]}),
            )
        }
        None => {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("refused").to_string()
            } else {
                text
            };
            (-32600, message, json!({"httpStatus": status.as_u16()}))
        }
    };
    let mut out = jsonrpc_error(status, code, message, data);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The session's sandbox as an MCP server, over MCP's Streamable HTTP transport: `POST` a
/// JSON-RPC message (answered as JSON or an SSE stream), `GET` the server's stream of an
/// initialize-era session, `DELETE` to end that session. Errors carry a JSON-RPC error body.
#[utoipa::path(post, path = "/api/v1/sessions/{name}/mcp", tag = "mcp",
    params(("name" = String, Path, description = "Session name")),
    request_body(content = Object, description = "A JSON-RPC message (MCP)", content_type = "application/json"),
    responses(
        (status = 200, description = "The JSON-RPC answer, as application/json or text/event-stream"),
        (status = 202, description = "A notification or response was accepted"),
        (status = 400, description = "Bad request or unsupported MCP-Protocol-Version (JSON-RPC error body)"),
        (status = 403, description = "Origin not allowed (JSON-RPC error body)"),
        (status = 404, description = "No such session, or an unknown Mcp-Session-Id (JSON-RPC error body)"),
        (status = 409, description = "The session's sandbox has stopped for good (JSON-RPC error body)"),
        (status = 413, description = "Body over MCP_MAX_REQUEST_BYTES (JSON-RPC error body)"),
        (status = 503, description = "The sandbox is on its way, or no leader (JSON-RPC error body, Retry-After)")))]
pub(super) async fn mcp(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let Some(gateway) = st.inner.gateway.get().cloned() else {
        return jsonrpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::mcp::codes::SANDBOX_UNAVAILABLE,
            "the MCP gateway is not enabled on this server".into(),
            json!({"reason": "GatewayDisabled"}),
        );
    };
    let method = req.method().clone();
    if !matches!(method, Method::GET | Method::POST | Method::DELETE) {
        let mut r = jsonrpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            -32600,
            format!("{method} is not allowed here (GET, POST or DELETE)"),
            json!({"httpStatus": 405}),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return r;
    }
    let (parts, body) = req.into_parts();
    // Bounded here too: a standby buffers what it forwards.
    let limit = gateway.max_request_bytes();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                format!("the request body is larger than {limit} bytes, or could not be read: {e}"),
                json!({"httpStatus": 413, "limit": limit}),
            );
        }
    };
    let path = ["api", "v1", "sessions", name.as_str(), "mcp"];
    let mut pass: Vec<HeaderName> = PASS.to_vec();
    pass.extend(
        parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("mcp-") && !PASS.contains(k))
            .cloned(),
    );
    pass.dedup();
    let hop = Hop {
        method: method.clone(),
        segments: &path,
        headers: &parts.headers,
        pass: &pass,
        back: &BACK,
        body: bytes.clone(),
        kind: StreamKind::Mcp,
    };
    match to_leader(&st, hop).await {
        Ok(Some(answer)) => return as_jsonrpc(answer).await,
        Ok(None) => {}
        Err(e) => return as_jsonrpc(e.into_response()).await,
    }
    let mut resolved = None;
    match resolve(gateway.store(), &name).await {
        Ok((session, container)) => resolved = Some(Resolved { session, container }),
        Err(Unreachable::NotRunning { .. }) if method == Method::DELETE => {}
        Err(e) => {
            if matches!(e, Unreachable::NotFound(_)) {
                gateway.forget(&name);
            }
            return unreachable(e);
        }
    }
    // Every answer counts against the MCP stream cap while it streams: GET streams and
    // 2026-07-28 `subscriptions/listen` answers live long.
    let permit = match st.inner.streams.acquire(StreamKind::Mcp) {
        Ok(p) => p,
        Err(e) => return as_jsonrpc(e.into_response()).await,
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    if let Some(r) = resolved {
        req.extensions_mut().insert(r);
    }
    let answer = match gateway.service(&name).oneshot(req).await {
        Ok(a) => a.map(Body::new),
        Err(never) => match never {},
    };
    let answer = as_jsonrpc(answer).await;
    let (parts, body) = answer.into_parts();
    let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
