//! The MCP gateway: every session's sandbox as an MCP server over Streamable HTTP, at
//! `/api/v1/sessions/{name}/mcp`.
//!
//! rmcp's server transport ([`StreamableHttpService`]) does the protocol: the 2026-07-28
//! revision (stateless requests, `server/discover`, `subscriptions/listen`) and the
//! initialize-era revisions before it (`Mcp-Session-Id`, the GET stream), version
//! negotiation and the `MCP-Protocol-Version` check, `Origin` and `Host` validation and the
//! request size limit. Each session has its own service (made on first use), whose
//! handlers ([`ProxyHandler`]) forward to the session's one upstream connection in the
//! shared [`McpPool`] — the chat bridge's too.
//!
//! [`resolve`] is the one place that says whether a session can be reached (it exists and
//! its sandbox runs); the HTTP layer answers 404/409/503 with it before a request reaches
//! rmcp, and every forwarded request checks again (a sandbox can stop mid-session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rmcp::model::{ErrorCode, ErrorData};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::codes;
use super::proxy::{Link, ProxyHandler, Upstream};
use super::upstream::McpPool;
use crate::domain::resource::{Phase, Session};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The largest MCP request body accepted by default (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Why a session's MCP server cannot be reached now.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// No such session.
    #[error("session {0} not found")]
    NotFound(String),
    /// The session exists but its sandbox does not run.
    #[error("session {name} is {phase:?}: its sandbox does not run (MCP needs a Running session)")]
    NotRunning {
        /// The session.
        name: String,
        /// Its phase.
        phase: Phase,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Unreachable {
    /// True when waiting may help (the sandbox is on its way, or the store hiccuped).
    pub fn is_transient(&self) -> bool {
        match self {
            Unreachable::NotFound(_) => false,
            Unreachable::NotRunning { phase, .. } => {
                matches!(phase, Phase::Pending | Phase::Creating | Phase::BackOff)
            }
            Unreachable::Store(_) => true,
        }
    }

    /// The JSON-RPC error for this.
    pub fn to_jsonrpc(&self) -> ErrorData {
        let (code, data) = match self {
            Unreachable::NotFound(name) => (
                codes::NOT_FOUND,
                json!({"reason": "NotFound", "session": name}),
            ),
            Unreachable::NotRunning { name, phase } => (
                codes::SANDBOX_UNAVAILABLE,
                json!({"reason": "NotRunning", "session": name, "phase": phase}),
            ),
            Unreachable::Store(_) => (
                codes::SANDBOX_UNAVAILABLE,
                json!({"reason": "StoreUnavailable"}),
            ),
        };
        ErrorData::new(ErrorCode(code), self.to_string(), Some(data))
    }
}

/// The session `name` and its running container, or why there is none.
pub async fn resolve(store: &Store, name: &str) -> Result<(Session, String), Unreachable> {
    let session = store
        .get(name)
        .await?
        .ok_or_else(|| Unreachable::NotFound(name.to_string()))?;
    let container = match (&session.status, session.phase()) {
        (Some(st), Phase::Running) => st.container_id.clone(),
        _ => None,
    };
    match container {
        Some(c) => Ok((session, c)),
        None => Err(Unreachable::NotRunning {
            name: name.to_string(),
            phase: session.phase(),
        }),
    }
}

/// What the HTTP layer resolved for one request (put in the request's extensions, which
/// rmcp hands to the handler with the request's HTTP parts): the upstream then need not
/// ask the store again.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The session, as read for this request.
    pub session: Session,
    /// Its running container.
    pub container: String,
}

/// The session and container the HTTP layer resolved for the request of `ctx`, if any.
fn resolved(ctx: &RequestContext<RoleServer>) -> Option<Resolved> {
    ctx.extensions
        .get::<axum::http::request::Parts>()?
        .extensions
        .get::<Resolved>()
        .cloned()
}

/// A session's sandbox as an upstream.
struct SandboxUpstream {
    store: Store,
    pool: Arc<McpPool>,
    session: String,
}

impl Upstream for SandboxUpstream {
    fn link<'a>(
        &'a self,
        ctx: &'a RequestContext<RoleServer>,
    ) -> BoxFuture<'a, Result<Link, ErrorData>> {
        Box::pin(async move {
            // Checked on every request: by the HTTP layer for this very request, or here.
            let (session, container) = match resolved(ctx) {
                Some(r) if r.session.metadata.name == self.session => (r.session, r.container),
                _ => resolve(&self.store, &self.session)
                    .await
                    .map_err(|e| e.to_jsonrpc())?,
            };
            let conn = self
                .pool
                .get(&self.session, &container)
                .await
                .map_err(|e| e.to_jsonrpc(&self.session))?;
            Ok(Link {
                peer: conn.peer().clone(),
                filter: session.spec.mcp_tools(),
                timeout: conn.timeout(),
                generation: conn.generation(),
            })
        })
    }
}

/// Gateway settings (`serve` flags).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Browser origins allowed to call the gateway (`scheme://host[:port]`); a request with
    /// any other `Origin` header is refused with 403. Clients that send no `Origin` (every
    /// non-browser client) are not affected.
    pub allowed_origins: Vec<String>,
    /// Check the `Host` header against loopback names (DNS rebinding protection for an
    /// unauthenticated server on loopback); off when a bearer token is required.
    pub loopback_hosts_only: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            allowed_origins: Vec::new(),
            loopback_hosts_only: true,
        }
    }
}

/// A session's Streamable HTTP service.
pub type SessionService = StreamableHttpService<ProxyHandler, LocalSessionManager>;

/// The gateway: one Streamable HTTP service per session, over the shared pool.
pub struct Gateway {
    store: Store,
    pool: Arc<McpPool>,
    metrics: Metrics,
    config: GatewayConfig,
    shutdown: CancellationToken,
    services: Mutex<HashMap<String, SessionService>>,
}

impl Gateway {
    /// A gateway over `pool` (shared with the chat), ending every stream on `shutdown`.
    pub fn new(
        store: Store,
        pool: Arc<McpPool>,
        metrics: Metrics,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Gateway {
        Gateway {
            store,
            pool,
            metrics,
            config,
            shutdown,
            services: Mutex::default(),
        }
    }

    /// The largest request body.
    pub fn max_request_bytes(&self) -> usize {
        self.config.max_request_bytes
    }

    /// The store sessions are resolved in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The service of `session` (made on first use).
    pub fn service(&self, session: &str) -> SessionService {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .entry(session.to_string())
            .or_insert_with(|| self.make_service(session))
            .clone()
    }

    /// Forget `session` (it was not found): its service, its MCP sessions and its upstream
    /// go.
    pub fn forget(&self, session: &str) {
        let gone = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
        drop(gone);
        self.pool.drop_session(session);
    }

    fn make_service(&self, session: &str) -> SessionService {
        let hub = self.pool.hub(session);
        let upstream: Arc<dyn Upstream> = Arc::new(SandboxUpstream {
            store: self.store.clone(),
            pool: self.pool.clone(),
            session: session.to_string(),
        });
        let metrics = self.metrics.clone();
        let mut config = StreamableHttpServerConfig::default()
            .with_max_request_body_bytes(self.config.max_request_bytes)
            .with_cancellation_token(self.shutdown.child_token())
            .with_allowed_origins(self.config.allowed_origins.clone())
            .enforce_origin_validation();
        if !self.config.loopback_hosts_only {
            config = config.disable_allowed_hosts();
        }
        StreamableHttpService::new(
            move || {
                Ok(ProxyHandler::new(
                    hub.clone(),
                    upstream.clone(),
                    Some(metrics.clone()),
                ))
            },
            Arc::new(LocalSessionManager::default()),
            config,
        )
    }
}
