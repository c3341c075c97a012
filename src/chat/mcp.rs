//! The MCP bridge: an rmcp client talking to the MCP server inside a session's sandbox over
//! the container's stdio, through the Docker attach API (the sandbox has no network).
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
//!   it is replaced — never two live attaches to one container.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptions;
use futures::StreamExt;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, Tool,
};
use rmcp::service::{RoleClient, RunningService};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

use crate::runtime::Runtime;

/// Bridge failures.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// Attaching to the container failed (it is gone or not running).
    #[error("cannot attach to the sandbox {container}: {source}")]
    Attach {
        /// Container id.
        container: String,
        /// The Docker error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The MCP handshake failed.
    #[error("the sandbox's MCP server did not complete initialize: {0}")]
    Handshake(String),
    /// A call took too long.
    #[error("the sandbox did not answer {what} within {secs}s")]
    Timeout {
        /// Which request.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// This replica no longer leads: the leader talks to sandboxes.
    #[error("this replica no longer leads; retry (the leader serves chat turns)")]
    NotLeader,
    /// The sandbox went away mid-conversation.
    #[error("the sandbox is gone (its container stopped or was replaced): {0}")]
    Gone(String),
    /// The server answered with a JSON-RPC error.
    #[error("the MCP server refused {what}: {message}")]
    Refused {
        /// Which request.
        what: String,
        /// Its error message.
        message: String,
    },
}

type Client = RunningService<RoleClient, ClientConfig>;

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

    /// Call one tool.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<CallToolResult, McpError> {
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let what = format!("tools/call {name}");
        match tokio::time::timeout(self.timeout, self.client.call_tool(params)).await {
            Err(_) => Err(McpError::Timeout {
                what,
                secs: self.timeout.as_secs(),
            }),
            Ok(r) => r.map_err(|e| classify(&what, e)),
        }
    }
}

/// Attach to `container_id` and run the MCP handshake.
pub async fn connect(
    runtime: &Runtime,
    container_id: &str,
    timeout: Duration,
) -> Result<McpConn, McpError> {
    let attached = runtime
        .docker()
        .attach_container(
            container_id,
            Some(AttachContainerOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                stream: true,
                logs: false,
                ..Default::default()
            }),
        )
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
    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-orchestrator", env!("CARGO_PKG_VERSION")),
    );
    let client = match tokio::time::timeout(timeout, config.serve((reader, attached.input))).await {
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
        }
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
        let fresh = tokio::time::timeout(
            self.timeout,
            connect(&self.runtime, container_id, self.timeout),
        )
        .await
        .map_err(|_| McpError::Timeout {
            what: "attach and initialize".into(),
            secs,
        })??;
        let fresh = Arc::new(fresh);
        *conn = Some(fresh.clone());
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
