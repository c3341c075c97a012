//! An rmcp server handler that forwards a client's requests to a shared upstream.
//!
//! Each client (an MCP session of the gateway, a stdio client of `mcp-orchestrator mcp`)
//! gets its own [`ProxyHandler`]; all of a session's handlers share its [`Hub`] and its
//! upstream. rmcp does the protocol work on both sides (initialize or `server/discover`,
//! version negotiation, `subscriptions/listen`); the handler only forwards:
//! - requests go upstream through the upstream peer, which gives each one its own JSON-RPC
//!   id and progress token; the client's progress token is mapped back by the hub;
//! - a client's cancel (or its request dropped: a disconnect) sends
//!   `notifications/cancelled` upstream for exactly that request;
//! - an upstream that dies mid-request fails the request at once with a JSON-RPC error
//!   that says so; the next request re-links (the gateway attaches and initializes again);
//! - `tools/list` is filtered and a filtered `tools/call` refused with the session's tool
//!   policy ([`ToolFilter`], the same filter the chat uses);
//! - at most the hub's limit of requests is in flight per session.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, ClientRequest, CompleteRequest,
    CompleteRequestParams, CompleteResult, DiscoverResult, ErrorCode, ErrorData, GetPromptRequest,
    GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
    InitializeResult, ListPromptsRequest, ListPromptsResult, ListResourceTemplatesRequest,
    ListResourceTemplatesResult, ListResourcesRequest, ListResourcesResult, ListToolsRequest,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequest, ReadResourceRequestParams,
    ReadResourceResponse, ResultType, ServerCapabilities, ServerConfig, ServerResult,
    SubscriptionFilter,
};
use rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleClient, RoleServer,
    SubscriptionContext,
};
use rmcp::{ServerHandler, ServiceError};
use serde_json::json;

use super::codes;
use super::hub::{Hub, Registration};
use crate::domain::resource::ToolFilter;
use crate::metrics::Metrics;

/// The upstream of one request: its peer, the tool policy in force, the call timeout.
pub struct Link {
    /// The upstream server's peer.
    pub peer: Peer<RoleClient>,
    /// Which tools clients may see and call.
    pub filter: ToolFilter,
    /// How long a request may take upstream.
    pub timeout: Duration,
    /// The upstream connection's number in the hub ([`super::upstream::Relay::generation`]).
    pub generation: u64,
}

/// Where a [`ProxyHandler`] forwards to.
pub trait Upstream: Send + Sync + 'static {
    /// The upstream to use for the request of `ctx`, attaching and initializing when there
    /// is none (or the last one died), or the JSON-RPC error that says why there can be none.
    fn link<'a>(
        &'a self,
        ctx: &'a RequestContext<RoleServer>,
    ) -> BoxFuture<'a, Result<Link, ErrorData>>;
}

/// Sends `notifications/cancelled` upstream when dropped while armed: the client cancelled
/// or went away before the answer came.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<rmcp::model::RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let peer = self.peer.clone();
            tokio::spawn(async move {
                let _ = peer
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(id),
                        Some("the client cancelled the request or went away".into()),
                    ))
                    .await;
            });
        }
    }
}

/// One client's handler (see the module docs).
pub struct ProxyHandler {
    hub: Arc<Hub>,
    upstream: Arc<dyn Upstream>,
    metrics: Option<Metrics>,
    registration: Mutex<Option<Registration>>,
}

/// The result label of a failed request: from the reason the gateway put in its errors;
/// the upstream server's own errors are `error`.
fn result_label(e: &ErrorData) -> &'static str {
    let reason = e
        .data
        .as_ref()
        .and_then(|d| d.get("reason"))
        .and_then(|r| r.as_str());
    match reason {
        Some("TooManyRequests") => "busy",
        Some("SandboxUnavailable" | "NotFound" | "NotRunning" | "NotLeader") => "gone",
        Some("Timeout") => "timeout",
        Some("ToolNotAllowed") => "denied",
        Some("Cancelled") => "cancelled",
        _ => "error",
    }
}

fn unavailable(session: &str, message: String) -> ErrorData {
    ErrorData::new(
        ErrorCode(codes::SANDBOX_UNAVAILABLE),
        message,
        Some(json!({"reason": "SandboxUnavailable", "session": session})),
    )
}

fn unexpected(method: &str) -> ErrorData {
    ErrorData::internal_error(
        format!("the sandbox's MCP server answered {method} with a result of another kind"),
        None,
    )
}

impl ProxyHandler {
    /// A handler for one client of `hub`'s session, forwarding to `upstream`.
    pub fn new(hub: Arc<Hub>, upstream: Arc<dyn Upstream>, metrics: Option<Metrics>) -> Self {
        ProxyHandler {
            hub,
            upstream,
            metrics,
            registration: Mutex::new(None),
        }
    }

    fn observe(&self, method: &'static str, result: &'static str, started: Instant) {
        if let Some(m) = &self.metrics {
            m.mcp_requests.with_label_values(&[method, result]).inc();
            m.mcp_duration
                .with_label_values(&[method])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Forward `request` upstream for the client of `ctx` (see the module docs).
    async fn forward(
        &self,
        method: &'static str,
        request: ClientRequest,
        link: &Link,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let session = self.hub.session();
        let _permit = self.hub.admit()?;
        let options = PeerRequestOptions::with_timeout(link.timeout);
        let handle = link
            .peer
            .send_cancellable_request(request, options)
            .await
            .map_err(|e| {
                unavailable(
                    session,
                    format!("session {session}: the sandbox's MCP server cannot be reached: {e}"),
                )
            })?;
        let _progress = ctx.meta.get_progress_token().map(|t| {
            self.hub.track_progress(
                link.generation,
                handle.progress_token.clone(),
                ctx.peer.clone(),
                t,
            )
        });
        let mut cancel = CancelOnDrop {
            peer: link.peer.clone(),
            id: Some(handle.id.clone()),
        };
        let answer = tokio::select! {
            a = handle.await_response() => a,
            _ = ctx.ct.cancelled() => {
                // `cancel` is still armed: dropping it tells the upstream.
                return Err(ErrorData::new(
                    ErrorCode::INTERNAL_ERROR,
                    format!("{method} was cancelled by the client"),
                    Some(json!({"reason": "Cancelled", "session": session})),
                ));
            }
        };
        cancel.id = None;
        match answer {
            Ok(r) => Ok(r),
            Err(ServiceError::McpError(e)) => Err(e),
            Err(ServiceError::Timeout { timeout }) => Err(ErrorData::new(
                ErrorCode(codes::TIMEOUT),
                format!(
                    "session {session}: the sandbox did not answer {method} within {}s (the request was cancelled upstream)",
                    timeout.as_secs()
                ),
                Some(json!({"reason": "Timeout", "session": session})),
            )),
            Err(e) => Err(unavailable(
                session,
                format!(
                    "session {session}: the sandbox stopped or was replaced while {method} ran ({e}); the request may or may not have taken effect. The next request reconnects."
                ),
            )),
        }
    }

    /// Link, forward and count one request: `make` builds the upstream request (or refuses
    /// it under the link's policy), `take` unpacks the answer.
    async fn run<T>(
        &self,
        method: &'static str,
        ctx: &RequestContext<RoleServer>,
        make: impl FnOnce(&Link) -> Result<ClientRequest, ErrorData>,
        take: impl FnOnce(ServerResult, &Link) -> Option<T>,
    ) -> Result<T, ErrorData> {
        let started = Instant::now();
        let r = async {
            let link = self.upstream.link(ctx).await?;
            let request = make(&link)?;
            let mut answer = self.forward(method, request, &link, ctx).await?;
            mark_complete(&mut answer);
            take(answer, &link).ok_or_else(|| unexpected(method))
        }
        .await;
        let label = match &r {
            Ok(_) => "ok",
            Err(e) => result_label(e),
        };
        self.observe(method, label, started);
        r
    }
}

/// Mark an upstream result `resultType: "complete"` where it has none: an initialize-era
/// server omits it, a 2026-07-28 client needs it (rmcp strips it again for older clients).
fn mark_complete(r: &mut ServerResult) {
    let t = match r {
        ServerResult::ListToolsResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        ServerResult::ListPromptsResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ListResourcesResult(r) => &mut r.result_type,
        ServerResult::ListResourceTemplatesResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::CompleteResult(r) => &mut r.result_type,
        _ => return,
    };
    if t.is_none() {
        *t = Some(ResultType::COMPLETE);
    }
}

/// A tool the session's policy hides.
fn not_allowed(session: &str, tool: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::INVALID_PARAMS,
        format!("tool {tool:?} is not allowed on session {session} (spec.mcp.tools)"),
        Some(json!({"reason": "ToolNotAllowed", "session": session, "tool": tool})),
    )
}

/// A paginated list request's params, without the client's `_meta` (the upstream peer
/// sets its own).
fn paginated(p: Option<PaginatedRequestParams>) -> Option<PaginatedRequestParams> {
    p.map(|mut p| {
        p.meta = None;
        p
    })
}

impl ServerHandler for ProxyHandler {
    fn get_info(&self) -> ServerConfig {
        let mut caps = self
            .hub
            .capabilities()
            .unwrap_or_else(|| ServerCapabilities::builder().enable_tools().build());
        // The gateway itself announces tool list changes (a recreated sandbox), so clients
        // may rely on them whatever the server declares.
        let mut tools = caps.tools.take().unwrap_or_default();
        tools.list_changed = Some(true);
        caps.tools = Some(tools);
        // Only what this proxy forwards: no logging (deprecated, not relayed), no resource
        // subscriptions (would need per-client upstream subscriptions), no extensions (tasks,
        // skills) or experimental features.
        caps.logging = None;
        if let Some(r) = caps.resources.as_mut() {
            r.subscribe = None;
        }
        caps.extensions = None;
        caps.experimental = None;
        ServerConfig::new(caps)
            .with_server_info(Implementation::new(
                "mcp-orchestrator-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(format!(
                "The tools of the sandbox of session {} (mcp-orchestrator).",
                self.hub.session()
            ))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let started = Instant::now();
        // Link first: a session that cannot be reached fails its initialize, and the
        // capabilities offered are the sandbox server's.
        let r = match self.hub.admit_client() {
            Ok(()) => self.upstream.link(&context).await,
            Err(e) => Err(e),
        };
        self.observe(
            "initialize",
            r.as_ref().map(|_| "ok").unwrap_or_else(result_label),
            started,
        );
        r?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let reg = self.hub.register_session(context.peer);
        *self.registration.lock().unwrap_or_else(|e| e.into_inner()) = Some(reg);
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        let started = Instant::now();
        let r = self.upstream.link(&context).await;
        self.observe(
            "server/discover",
            r.as_ref().map(|_| "ok").unwrap_or_else(result_label),
            started,
        );
        r?;
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // List changes only: resource update subscriptions would need per-client upstream
        // subscriptions.
        let mut accepted = requested.clone();
        accepted.resource_subscriptions = None;
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.hub.admit_client()?;
        // The sandbox must be reachable, and its capabilities known to the hub.
        self.upstream.link(context.request_context()).await?;
        let (_registration, mut rx) = self.hub.register_stream();
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                n = rx.recv() => match n {
                    None => return Ok(()),
                    Some(n) => {
                        use rmcp::service::SubscriptionSendError as E;
                        match context.sink().send(n).await {
                            Ok(()) | Err(E::NotificationNotAccepted(_)) => {}
                            Err(_) => return Ok(()),
                        }
                    }
                },
            }
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.run(
            "tools/list",
            &context,
            |_| {
                Ok(ClientRequest::ListToolsRequest(ListToolsRequest {
                    params: paginated(request),
                    ..Default::default()
                }))
            },
            |r, link| match r {
                ServerResult::ListToolsResult(mut r) => {
                    r.tools.retain(|t| link.filter.allows(&t.name));
                    Some(r)
                }
                _ => None,
            },
        )
        .await
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let session = self.hub.session().to_string();
        self.run(
            "tools/call",
            &context,
            move |link| {
                if !link.filter.allows(&request.name) {
                    return Err(not_allowed(&session, &request.name));
                }
                request.meta = None;
                Ok(ClientRequest::CallToolRequest(CallToolRequest::new(
                    request,
                )))
            },
            |r, _| match r {
                ServerResult::CallToolResult(r) => Some(CallToolResponse::Complete(r)),
                _ => None,
            },
        )
        .await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.run(
            "prompts/list",
            &context,
            |_| {
                Ok(ClientRequest::ListPromptsRequest(ListPromptsRequest {
                    params: paginated(request),
                    ..Default::default()
                }))
            },
            |r, _| match r {
                ServerResult::ListPromptsResult(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.run(
            "prompts/get",
            &context,
            |_| {
                request.meta = None;
                Ok(ClientRequest::GetPromptRequest(GetPromptRequest::new(
                    request,
                )))
            },
            |r, _| match r {
                ServerResult::GetPromptResult(r) => Some(r.into()),
                _ => None,
            },
        )
        .await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.run(
            "resources/list",
            &context,
            |_| {
                Ok(ClientRequest::ListResourcesRequest(ListResourcesRequest {
                    params: paginated(request),
                    ..Default::default()
                }))
            },
            |r, _| match r {
                ServerResult::ListResourcesResult(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.run(
            "resources/templates/list",
            &context,
            |_| {
                Ok(ClientRequest::ListResourceTemplatesRequest(
                    ListResourceTemplatesRequest {
                        params: paginated(request),
                        ..Default::default()
                    },
                ))
            },
            |r, _| match r {
                ServerResult::ListResourceTemplatesResult(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn read_resource(
        &self,
        mut request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.run(
            "resources/read",
            &context,
            |_| {
                request.meta = None;
                Ok(ClientRequest::ReadResourceRequest(
                    ReadResourceRequest::new(request),
                ))
            },
            |r, _| match r {
                ServerResult::ReadResourceResult(r) => Some(r.into()),
                _ => None,
            },
        )
        .await
    }

    async fn complete(
        &self,
        mut request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.run(
            "completion/complete",
            &context,
            |_| {
                request.meta = None;
                Ok(ClientRequest::CompleteRequest(CompleteRequest::new(
                    request,
                )))
            },
            |r, _| match r {
                ServerResult::CompleteResult(r) => Some(r),
                _ => None,
            },
        )
        .await
    }
}
