//! `mcp-orchestrator mcp NAME`: a stdio MCP server for desktop clients configured with a
//! command, proxying to the session's gateway over Streamable HTTP.
//!
//! The same [`ProxyHandler`] as the gateway serves the stdio side; its upstream is an rmcp
//! Streamable HTTP client of `/api/v1/sessions/{name}/mcp` (any replica: a standby forwards
//! to the leader). The gateway's notifications (list changes, progress) come back through
//! the same [`Relay`] into this process's hub. When the gateway connection ends (a leader
//! change, the server restarting), the next request connects again: the stdio client
//! never has to restart.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rmcp::ServiceExt;
use rmcp::model::{ErrorCode, ErrorData};
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use tokio::sync::Mutex;

use super::codes;
use super::hub::Hub;
use super::proxy::{Link, ProxyHandler, Upstream};
use super::upstream::Relay;
use crate::domain::resource::ToolFilter;

/// How long one request through the gateway may take (the gateway bounds its own calls
/// to the sandbox; this only covers a gateway that stopped answering).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// How long connecting to the gateway (and ending the session there) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures of the stdio proxy.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The stdio side could not start.
    #[error("cannot serve MCP on stdio: {0}")]
    Serve(String),
    /// The stdio side ended abnormally.
    #[error("the stdio MCP session ended abnormally: {0}")]
    Ended(String),
}

/// The gateway of one session, connected on demand.
struct GatewayUpstream {
    url: String,
    token: Option<String>,
    hub: Arc<Hub>,
    conn: Mutex<Option<RunningService<RoleClient, Relay>>>,
}

impl GatewayUpstream {
    async fn connect(&self) -> Result<RunningService<RoleClient, Relay>, ErrorData> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url.clone())
            .max_concurrent_requests(64);
        if let Some(t) = &self.token {
            config = config.auth_header(t.clone());
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        let unreachable = |why: String| {
            ErrorData::new(
                ErrorCode(codes::SANDBOX_UNAVAILABLE),
                format!(
                    "cannot reach the session's MCP gateway at {}: {why}",
                    self.url
                ),
                Some(json!({"reason": "GatewayUnreachable", "url": self.url})),
            )
        };
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Relay::new(self.hub.clone()).serve(transport),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
        // Offer the stdio client what the gateway offers (prompts, resources...).
        if let Some(info) = client.peer().peer_info() {
            self.hub.set_capabilities(info.capabilities.clone());
        }
        Ok(client)
    }
}

impl Upstream for GatewayUpstream {
    fn link<'a>(
        &'a self,
        _: &'a RequestContext<RoleServer>,
    ) -> BoxFuture<'a, Result<Link, ErrorData>> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                *conn = Some(self.connect().await?);
            }
            let (peer, generation) = conn
                .as_ref()
                .map(|c| (c.peer().clone(), c.service().generation()))
                .ok_or_else(|| ErrorData::internal_error("no gateway connection", None))?;
            Ok(Link {
                peer,
                // The gateway applies the session's policy.
                filter: ToolFilter::default(),
                timeout: REQUEST_TIMEOUT,
                generation,
            })
        })
    }
}

/// Serve MCP on this process's stdin/stdout for `session`, proxying to the gateway at `url`
/// (`…/api/v1/sessions/{name}/mcp`) with the bearer `token`, until stdin closes.
pub async fn serve(session: &str, url: String, token: Option<String>) -> Result<(), StdioError> {
    let hub = Hub::new(session, usize::MAX >> 4, None, None);
    let upstream = Arc::new(GatewayUpstream {
        url,
        token,
        hub: hub.clone(),
        conn: Mutex::new(None),
    });
    let handler = ProxyHandler::new(hub, upstream.clone(), None);
    let running = handler
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(|e| StdioError::Serve(e.to_string()))?;
    let r = running.waiting().await;
    if let Some(c) = upstream.conn.lock().await.take() {
        // Ends the gateway session (DELETE), unless the gateway does not answer.
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, c.cancel()).await;
    }
    r.map(|_| ()).map_err(|e| StdioError::Ended(e.to_string()))
}
