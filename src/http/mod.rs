//! The HTTP API (axum): sessions and warm pools CRUD, patches, watch (SSE), acquire-and-wait, and the
//! operations endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
//!
//! Every write goes through [`crate::ops`] — the same admission path as the CLI and the
//! specs directory. Auth: a bearer token from `ORCHESTRATOR_TOKEN`, compared in constant
//! time; without one the server refuses to listen beyond loopback unless `--insecure`.

mod chat;
mod error;
mod forward;
mod limits;
mod mcp;
mod objects;
mod openapi;
mod sessions;
mod warmpools;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{debug, warn};

pub use error::{ApiError, Status};
pub use limits::{Limits, MAX_REQUEST_TIMEOUT};
pub use openapi::openapi_json;

use crate::domain::contract::{Policy, PublishedPolicy};
use crate::metrics::Metrics;
use crate::replica::Leadership;
use crate::runtime::Runtime;
use crate::store::Store;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    runtime: Runtime,
    policy: Policy,
    token: Option<String>,
    metrics: Metrics,
    leadership: Option<Leadership>,
    shutdown: CancellationToken,
    /// Forwards what must run on the leader (see [`forward`]).
    forwarder: reqwest::Client,
    chat: std::sync::OnceLock<Arc<crate::chat::service::ChatService>>,
    gateway: std::sync::OnceLock<Arc<crate::mcp::gateway::Gateway>>,
    published: std::sync::OnceLock<PublishedPolicy>,
    streams: limits::Streams,
}

impl AppState {
    /// Serve this publication of the policy at `GET /api/v1/policy` (by default: the
    /// state's policy, published by "this server" when the state was made).
    pub fn with_published_policy(self, p: PublishedPolicy) -> AppState {
        let _ = self.inner.published.set(p);
        self
    }

    /// Enable the chat routes with this service.
    pub fn with_chat(self, chat: Arc<crate::chat::service::ChatService>) -> AppState {
        let _ = self.inner.chat.set(chat);
        self
    }

    /// Enable the MCP gateway (`/api/v1/sessions/{name}/mcp`) with this gateway.
    pub fn with_gateway(self, gateway: Arc<crate::mcp::gateway::Gateway>) -> AppState {
        let _ = self.inner.gateway.set(gateway);
        self
    }

    /// State for a server over this store and engine. `token` enables bearer auth;
    /// `leadership` says whether this replica leads (readiness, forwarding; `None`: no
    /// controller at all); `limits` caps streams and bounds timeouts; `shutdown` ends every
    /// stream.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        runtime: Runtime,
        policy: Policy,
        token: Option<String>,
        metrics: Metrics,
        leadership: Option<Leadership>,
        shutdown: CancellationToken,
        limits: Limits,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                runtime,
                policy,
                token: token.filter(|t| !t.is_empty()),
                streams: limits::Streams::new(limits, metrics.clone()),
                metrics,
                leadership,
                shutdown,
                forwarder: forward::client(),
                chat: std::sync::OnceLock::new(),
                gateway: std::sync::OnceLock::new(),
                published: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// HTTP server failures.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Refusing to expose an unauthenticated API beyond loopback.
    #[error(
        "refusing to listen on {0} without ORCHESTRATOR_TOKEN: set a token, listen on loopback, or pass --insecure"
    )]
    Unauthenticated(SocketAddr),
    /// The socket could not be bound or served.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Decide where to listen: an explicit address, else all interfaces with a token and
/// loopback without one. An unauthenticated non-loopback address needs `insecure`.
pub fn listen_addr(
    explicit: Option<SocketAddr>,
    port: u16,
    has_token: bool,
    insecure: bool,
) -> Result<SocketAddr, HttpError> {
    let addr = explicit.unwrap_or_else(|| {
        if has_token {
            SocketAddr::from(([0, 0, 0, 0], port))
        } else {
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    });
    if !has_token && !addr.ip().is_loopback() && !insecure {
        return Err(HttpError::Unauthenticated(addr));
    }
    Ok(addr)
}

/// The router with every route and middleware.
///
/// Layers, outermost first: the body read timeout (408), every error body turned into a
/// JSON Status, request counting (labelled by route template, after auth), the body size
/// limit (413), then per route the bearer auth of `/api` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let body_timeout = state.inner.streams.limits().body_read_timeout;
    let api = sessions::routes()
        .merge(warmpools::routes())
        .merge(chat::routes())
        .merge(mcp::routes())
        .route("/metrics", get(metrics))
        .route("/api/v1/policy", get(policy))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(middleware::from_fn(json_errors))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(state)
}

/// `GET /api/v1/policy`: the contract policy this server admits with, so that a CLI talking
/// to it (`--server`) validates files with the same one before sending them.
#[utoipa::path(get, path = "/api/v1/policy", tag = "sessions",
    responses((status = 200, description = "The policy, its publisher and when it was published")))]
pub(super) async fn policy(State(st): State<AppState>) -> Json<PublishedPolicy> {
    Json(
        st.inner
            .published
            .get_or_init(|| PublishedPolicy {
                policy: st.inner.policy.clone(),
                publisher: "this server".into(),
                instance: st.inner.runtime.instance().to_string(),
                published_at: chrono::Utc::now(),
            })
            .clone(),
    )
}

/// Serve `router(state)` on `listener` until `shutdown`, then wait at most the grace period
/// of [`Limits`] for open connections (streams end on `shutdown` by themselves).
///
/// The accept loop is hyper-util's, so that a request's headers must arrive within the
/// header read timeout (the connection is closed otherwise); bodies are bounded by the
/// router's body read timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let limits = state.inner.streams.limits().clone();
    let app = router(state);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection errors (reset before accept) and EMFILE alike: back off a
                // little instead of spinning or giving up.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace = %humantime::format_duration(limits.shutdown_grace),
            "connections still open after the shutdown grace period; closing them"
        );
    }
    Ok(())
}

/// Marks a response the auth layer refused, so that it is not counted by route.
#[derive(Clone, Copy)]
struct Unauthenticated;

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.inner.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong bearer token",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r.extensions_mut().insert(Unauthenticated);
            return r;
        }
    }
    next.run(req).await
}

/// The method as a metric label: the standard ones by name, anything else `OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Count requests by method, route template (`unmatched` when no route matched) and code.
/// Requests the auth layer refused only count in `mcpo_http_unauthorized_total`, so junk
/// from unauthenticated clients creates no series.
async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    if resp.extensions().get::<Unauthenticated>().is_some() {
        st.inner.metrics.http_unauthorized.inc();
    } else {
        st.inner
            .metrics
            .http_requests
            .with_label_values(&[method, &route, resp.status().as_str()])
            .inc();
    }
    resp
}

/// Every 4xx/5xx body is a JSON Status: an error response that is not JSON (an extractor
/// rejection such as a bad percent-encoding in the path, a layer's answer) is rewritten,
/// its text kept as the message and its headers (Allow, Retry-After...) kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let code = resp.status();
    if !(code.is_client_error() || code.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let message = if text.is_empty() {
        code.canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut r = ApiError::from_status(code, message).into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            r.headers_mut().insert(k.clone(), v.clone());
        }
    }
    r
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method not allowed on this route",
    )
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis and Docker answer and the controller finished its first sync.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "not ready", body = Status)))]
async fn readyz(State(st): State<AppState>) -> Result<&'static str, ApiError> {
    let unavailable =
        |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotReady", what);
    st.inner
        .store
        .ping()
        .await
        .map_err(|e| unavailable(format!("redis: {e}")))?;
    st.inner
        .runtime
        .ping()
        .await
        .map_err(|e| unavailable(format!("docker: {e}")))?;
    // A standby is ready: it serves the API. The leader is ready once its controller
    // synced and while it makes progress.
    if let Some(c) = st.inner.leadership.as_ref().and_then(|l| l.controller()) {
        if !c.synced() {
            return Err(unavailable("the first sync is not done yet".into()));
        }
        c.health().map_err(unavailable)?;
    }
    Ok("ok")
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(st): State<AppState>) -> Response {
    if let Some(c) = st.inner.leadership.as_ref().and_then(|l| l.controller()) {
        c.refresh_phase_gauge();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.inner.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI document, generated from the types.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rules() {
        let lo = listen_addr(None, 3000, false, false).unwrap();
        assert!(lo.ip().is_loopback());
        let any = listen_addr(None, 3000, true, false).unwrap();
        assert!(any.ip().is_unspecified());
        let public: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(listen_addr(Some(public), 3000, false, false).is_err());
        assert!(listen_addr(Some(public), 3000, false, true).is_ok());
    }
}
