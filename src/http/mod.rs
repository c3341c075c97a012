//! The HTTP API (axum): sessions CRUD, patches, watch (SSE), acquire-and-wait, and the
//! operations endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
//!
//! Every write goes through [`crate::ops`] — the same admission path as the CLI and the
//! specs directory. Auth: a bearer token from `ORCHESTRATOR_TOKEN`, compared in constant
//! time; without one the server refuses to listen beyond loopback unless `--insecure`.

mod chat;
mod error;
mod openapi;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, Status};
pub use openapi::openapi_json;

use crate::contract::Policy;
use crate::controller::Handle;
use crate::metrics::Metrics;
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
    controller: Option<Handle>,
    shutdown: CancellationToken,
    chat: std::sync::OnceLock<Arc<crate::chat::service::ChatService>>,
}

impl AppState {
    /// Enable the chat routes with this service.
    pub fn with_chat(self, chat: Arc<crate::chat::service::ChatService>) -> AppState {
        let _ = self.inner.chat.set(chat);
        self
    }

    /// State for a server over this store and engine. `token` enables bearer auth.
    pub fn new(
        store: Store,
        runtime: Runtime,
        policy: Policy,
        token: Option<String>,
        metrics: Metrics,
        controller: Option<Handle>,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                runtime,
                policy,
                token: token.filter(|t| !t.is_empty()),
                metrics,
                controller,
                shutdown,
                chat: std::sync::OnceLock::new(),
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
pub fn router(state: AppState) -> Router {
    let api = sessions::routes()
        .merge(chat::routes())
        .route("/metrics", get(metrics))
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
        .with_state(state)
}

/// Serve `router(state)` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| HttpError::Io { addr, source })
}

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
            return r;
        }
    }
    next.run(req).await
}

async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    st.inner
        .metrics
        .http_requests
        .with_label_values(&[&method, resp.status().as_str()])
        .inc();
    resp
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
    if let Some(c) = &st.inner.controller {
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
    if let Some(c) = &st.inner.controller {
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
