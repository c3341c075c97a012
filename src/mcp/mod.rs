//! MCP: reaching the MCP server in a session's sandbox, for the chat bridge and for any MCP
//! client.
//!
//! - [`upstream`]: one rmcp client per container, over the Docker attach API (one upstream
//!   conversation per sandbox, shared by everyone);
//! - [`hub`]: per session, who is connected and where the upstream's notifications go;
//! - [`proxy`]: an rmcp server handler that forwards a client's requests to an upstream
//!   (ids and progress tokens rewritten, cancellation passed on, the tool policy applied);
//! - [`gateway`]: the Streamable HTTP endpoint of each session
//!   (`/api/v1/sessions/{name}/mcp`), built on rmcp's server transport;
//! - [`stdio`]: `mcp-orchestrator mcp NAME`, a stdio MCP server proxying to a gateway.

pub mod gateway;
pub mod hub;
pub mod proxy;
pub mod stdio;
pub mod upstream;

/// JSON-RPC error codes of the gateway (the implementation-defined server range).
pub mod codes {
    /// The sandbox is not running, or went away while the request ran.
    pub const SANDBOX_UNAVAILABLE: i32 = -32001;
    /// Too many requests in flight on the session.
    pub const BUSY: i32 = -32002;
    /// The sandbox did not answer in time.
    pub const TIMEOUT: i32 = -32003;
    /// This replica no longer leads.
    pub const NOT_LEADER: i32 = -32004;
    /// The session does not exist.
    pub const NOT_FOUND: i32 = -32005;
}

/// Failures reaching a sandbox's MCP server.
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
    #[error("this replica no longer leads; retry (the leader serves chat turns and MCP clients)")]
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

impl McpError {
    /// The JSON-RPC error a gateway client gets for this failure in `session`.
    pub fn to_jsonrpc(&self, session: &str) -> rmcp::model::ErrorData {
        use rmcp::model::{ErrorCode, ErrorData};
        let (code, reason) = match self {
            McpError::Attach { .. } | McpError::Handshake(_) | McpError::Gone(_) => {
                (codes::SANDBOX_UNAVAILABLE, "SandboxUnavailable")
            }
            McpError::Timeout { .. } => (codes::TIMEOUT, "Timeout"),
            McpError::NotLeader => (codes::NOT_LEADER, "NotLeader"),
            McpError::Refused { .. } => (rmcp::model::ErrorCode::INTERNAL_ERROR.0, "Refused"),
        };
        ErrorData::new(
            ErrorCode(code),
            format!("session {session}: {self}"),
            Some(serde_json::json!({"reason": reason, "session": session})),
        )
    }
}
