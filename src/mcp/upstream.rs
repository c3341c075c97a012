//! The upstream side: an rmcp client talking to the MCP server inside a session's sandbox
//! over the container's stdio, through the Docker attach API (the sandbox has no network).
//! The chat bridge and the gateway share it: one upstream conversation per container.
//!
//! - attach with stdin, stdout and stderr, `stream` on and `logs` off, so output written
//!   before we attached is never replayed into the protocol stream;
//! - stdout frames feed the JSON-RPC reader through an in-memory pipe; stderr frames go to
//!   the log (target `sandbox`);
//! - the container was created with `OpenStdin` and without `StdinOnce`, so detaching leaves
//!   its stdin open and the server waits for the next client's `initialize`;
//! - one live connection per running session, keyed by container id: a replaced container or
//!   a dead transport gets a fresh connection on next use;
//! - each container has its own slot and lock: the pool's map lock is held only for the
//!   lookup, attach + initialize run under the container's lock with a timeout, so a stuck
//!   sandbox delays only its own session; a timed-out attempt is dropped (its attach stream
//!   closed, its pump aborted) before the lock is released, and a connection is closed before
//!   it is replaced — never two live attaches to one container;
//! - the upstream server's notifications go to the session's [`Hub`] (progress to the
//!   client that asked, list changes to every client); when a container is replaced, the
//!   new connection is initialized by the gateway itself and every client is told to
//!   re-list its tools.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use futures::StreamExt;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, Implementation, ProgressNotificationParam, PromptListChangedNotification,
    ResourceListChangedNotification, ServerNotification, ServerResult, Tool,
    ToolListChangedNotification,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

use super::McpError;
use super::hub::Hub;
use crate::runtime::Runtime;

/// The upstream connection's client handler: hands the server's notifications to the
/// session's hub. It declares no client capabilities (no sampling, roots or elicitation:
/// a shared upstream cannot tell which client would answer), so the server asks none.
pub struct Relay {
    hub: Arc<Hub>,
    generation: u64,
}

impl Relay {
    /// A relay into `hub`, for a new upstream connection (numbered by the hub).
    pub fn new(hub: Arc<Hub>) -> Relay {
        let generation = hub.next_generation();
        Relay { hub, generation }
    }

    /// The number of the connection this relay serves.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl ClientHandler for Relay {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-orchestrator", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.hub.route_progress(self.generation, params);
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        let n =
            ServerNotification::ToolListChangedNotification(ToolListChangedNotification::default());
        self.hub.broadcast(n);
    }

    async fn on_prompt_list_changed(&self, _: NotificationContext<RoleClient>) {
        let n = ServerNotification::PromptListChangedNotification(
            PromptListChangedNotification::default(),
        );
        self.hub.broadcast(n);
    }

    async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
        let n = ServerNotification::ResourceListChangedNotification(
            ResourceListChangedNotification::default(),
        );
        self.hub.broadcast(n);
    }
}

type Client = RunningService<RoleClient, Relay>;

/// One live MCP connection to one container.
pub struct McpConn {
    container_id: String,
    client: Client,
    pump: AbortOnDropHandle<()>,
    timeout: Duration,
}

fn classify(what: &str, e: rmcp::ServiceError) -> McpError {
    match e {
        rmcp::ServiceError::McpError(data) => McpError::Refused {
            what: what.to_string(),
            message: data.message.to_string(),
        },
        other => McpError::Gone(other.to_string()),
    }
}

impl McpConn {
    /// The container this connection talks to.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The number of this connection in its session's hub (progress routes are per
    /// connection).
    pub fn generation(&self) -> u64 {
        self.client.service().generation()
    }

    /// The upstream peer: send any client request to the sandbox's server.
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.client.peer()
    }

    /// The call timeout of this connection.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Is the transport still open?
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed() && !self.pump.is_finished()
    }

    /// Close the connection now, even while others still hold it: the MCP service is
    /// cancelled (its stdin half dropped) and the stdout pump aborted (the attach closed).
    pub fn close(&self) {
        self.client.cancellation_token().cancel();
        self.pump.abort();
    }

    /// Every tool the server offers.
    pub async fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        match tokio::time::timeout(self.timeout, self.client.list_all_tools()).await {
            Err(_) => Err(McpError::Timeout {
                what: "tools/list".into(),
                secs: self.timeout.as_secs(),
            }),
            Ok(r) => r.map_err(|e| classify("tools/list", e)),
        }
    }

    /// Call one tool. A call that outlives the timeout is cancelled upstream
    /// (`notifications/cancelled`, by rmcp), so the sandbox stops working on it.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<CallToolResult, McpError> {
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let what = format!("tools/call {name}");
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let answer = async {
            self.client
                .peer()
                .send_request_with_option(request, PeerRequestOptions::with_timeout(self.timeout))
                .await?
                .await_response()
                .await
        }
        .await;
        match answer {
            Ok(ServerResult::CallToolResult(r)) => Ok(r),
            Ok(_) => Err(McpError::Refused {
                what,
                message: "the answer is not a tool result".into(),
            }),
            Err(rmcp::ServiceError::Timeout { .. }) => Err(McpError::Timeout {
                what,
                secs: self.timeout.as_secs(),
            }),
            Err(e) => Err(classify(&what, e)),
        }
    }
}

/// Attach to `container_id` and run the MCP handshake; notifications go to `hub`.
pub async fn connect(
    runtime: &Runtime,
    container_id: &str,
    timeout: Duration,
    hub: Arc<Hub>,
) -> Result<McpConn, McpError> {
    let attached = runtime
        .attach(container_id)
        .await
        .map_err(|source| McpError::Attach {
            container: container_id.to_string(),
            source,
        })?;
    let mut output = attached.output;
    let (reader, mut feed) = tokio::io::duplex(256 * 1024);
    let short = container_id.chars().take(12).collect::<String>();
    // Aborted when dropped: if this future is dropped (a timeout), the pump goes with it.
    let pump = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    if feed.write_all(&message).await.is_err() {
                        break;
                    }
                }
                Ok(LogOutput::StdErr { message }) => {
                    let text = String::from_utf8_lossy(&message);
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        debug!(target: "sandbox", container = %short, "{line}");
                    }
                }
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    debug!(container = %short, error = %e, "attach stream ended");
                    break;
                }
            }
        }
        // Dropping `feed` gives the client EOF: the transport closes.
    }));
    let relay = Relay::new(hub);
    let client = match tokio::time::timeout(timeout, relay.serve((reader, attached.input))).await {
        Err(_) => {
            return Err(McpError::Timeout {
                what: "initialize".into(),
                secs: timeout.as_secs(),
            });
        }
        Ok(Err(e)) => return Err(McpError::Handshake(e.to_string())),
        Ok(Ok(c)) => c,
    };
    info!(container_id = %container_id, "MCP session attached");
    Ok(McpConn {
        container_id: container_id.to_string(),
        client,
        pump,
        timeout,
    })
}

/// Default most requests in flight per session.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// The connection slot of one container; its lock serialises attaches to that container.
type Slot = Arc<Mutex<Option<Arc<McpConn>>>>;

/// One live connection per running session.
pub struct McpPool {
    runtime: Runtime,
    timeout: Duration,
    /// When set, attaching is allowed only while it says yes (this replica leads).
    gate: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// session → (its container id, that container's slot). Locked only for lookups.
    slots: std::sync::Mutex<HashMap<String, (String, Slot)>>,
    /// session → its hub (clients and notification routes; outlives containers).
    hubs: std::sync::Mutex<HashMap<String, Arc<Hub>>>,
    /// Most requests in flight per session (the hubs' limit).
    max_in_flight: usize,
    /// Counts connected clients across hubs.
    clients: Option<prometheus::IntGauge>,
    /// Counts admitted gateway requests in flight across hubs.
    in_flight: Option<prometheus::IntGauge>,
}

/// Close whatever connection `slot` holds, without waiting for an attach in progress on it
/// (that one is bounded by the pool's timeout; it closes once it gets the lock).
fn close_slot(slot: Slot) {
    match slot.clone().try_lock_owned() {
        Ok(mut g) => {
            if let Some(c) = g.take() {
                c.close();
            }
        }
        Err(_) => {
            tokio::spawn(async move {
                if let Some(c) = slot.lock().await.take() {
                    c.close();
                }
            });
        }
    }
}

impl McpPool {
    /// A pool attaching through `runtime`, timing out calls after `timeout`.
    pub fn new(runtime: Runtime, timeout: Duration) -> McpPool {
        McpPool {
            runtime,
            timeout,
            gate: None,
            slots: std::sync::Mutex::new(HashMap::new()),
            hubs: std::sync::Mutex::new(HashMap::new()),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            clients: None,
            in_flight: None,
        }
    }

    /// Admit at most `n` gateway requests in flight per session (the hubs' limit).
    pub fn with_max_in_flight(mut self, n: usize) -> McpPool {
        self.max_in_flight = n.max(1);
        self
    }

    /// Count connected clients in `clients` and gateway requests in flight in `in_flight`.
    pub fn with_gauges(
        mut self,
        clients: prometheus::IntGauge,
        in_flight: prometheus::IntGauge,
    ) -> McpPool {
        self.clients = Some(clients);
        self.in_flight = Some(in_flight);
        self
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The hub of `session` (made on first use; kept until [`McpPool::drop_session`]).
    pub fn hub(&self, session: &str) -> Arc<Hub> {
        self.hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(session.to_string())
            .or_insert_with(|| {
                Hub::new(
                    session,
                    self.max_in_flight,
                    self.clients.clone(),
                    self.in_flight.clone(),
                )
            })
            .clone()
    }

    /// Forget everything about `session` (it was deleted): its connection is closed and its
    /// hub dropped once no client holds it.
    pub fn drop_session(&self, session: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
        if let Some((_, slot)) = slot {
            close_slot(slot);
        }
        self.hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    /// The slot of `session`'s `container_id`; a slot of a previous container of the
    /// session is closed.
    fn slot(&self, session: &str, container_id: &str) -> Slot {
        let (slot, stale) = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(session) {
                Some((c, s)) if c == container_id => (s.clone(), None),
                _ => {
                    let s = Slot::default();
                    let old =
                        slots.insert(session.to_string(), (container_id.to_string(), s.clone()));
                    (s, old.map(|(_, s)| s))
                }
            }
        };
        if let Some(old) = stale {
            close_slot(old);
        }
        slot
    }

    /// The live connection to `session`'s `container_id`, attaching when there is none, when
    /// the container changed, or when the old transport died. Only this container's lock is
    /// held while attaching, at most the pool's timeout.
    pub async fn get(&self, session: &str, container_id: &str) -> Result<Arc<McpConn>, McpError> {
        if self.gate.as_ref().is_some_and(|open| !open()) {
            return Err(McpError::NotLeader);
        }
        let slot = self.slot(session, container_id);
        let secs = self.timeout.as_secs();
        let mut conn = tokio::time::timeout(self.timeout, slot.lock())
            .await
            .map_err(|_| McpError::Timeout {
                what: "another attach to the same sandbox".into(),
                secs,
            })?;
        if let Some(c) = conn.as_ref() {
            if c.is_alive() {
                return Ok(c.clone());
            }
            c.close();
            *conn = None;
        }
        // On timeout the whole attempt is dropped here, under the lock: its attach stream
        // closes and its pump is aborted before anyone can retry.
        let hub = self.hub(session);
        let fresh = tokio::time::timeout(
            self.timeout,
            connect(&self.runtime, container_id, self.timeout, hub.clone()),
        )
        .await
        .map_err(|_| McpError::Timeout {
            what: "attach and initialize".into(),
            secs,
        })??;
        if self.gate.as_ref().is_some_and(|open| !open()) {
            // The term ended while attaching: the next leader attaches; never keep a
            // second attach here.
            fresh.close();
            return Err(McpError::NotLeader);
        }
        let fresh = Arc::new(fresh);
        *conn = Some(fresh.clone());
        if let Some(info) = fresh.peer().peer_info() {
            // A later upstream (the sandbox was recreated, or its server restarted): the
            // tools may differ, so every client is told to re-list.
            let reconnected = hub.capabilities().is_some();
            hub.set_capabilities(info.capabilities.clone());
            if reconnected {
                hub.broadcast(ServerNotification::ToolListChangedNotification(
                    ToolListChangedNotification::default(),
                ));
            }
        }
        Ok(fresh)
    }

    /// Attach only while `gate` says yes (only the leader talks to sandboxes: never two
    /// attaches to one container's stdio across replicas).
    pub fn with_gate(mut self, gate: impl Fn() -> bool + Send + Sync + 'static) -> McpPool {
        self.gate = Some(Arc::new(gate));
        self
    }

    /// Close every connection (this replica stopped leading: the next leader attaches).
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, (_, s))| s)
            .collect();
        slots.into_iter().for_each(close_slot);
    }

    /// Close the connection of `session` (after an error, or when it is deleted); the next
    /// use attaches again.
    pub async fn forget(&self, session: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session)
            .map(|(_, s)| s.clone());
        if let Some(slot) = slot {
            close_slot(slot);
        }
    }
}
