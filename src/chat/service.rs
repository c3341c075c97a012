//! The chat loop: one user message in, streamed events out.
//!
//! 1. Pre-flight (answered at once, never a hang): the session exists and runs, a Gemini key
//!    is configured, the sandbox's MCP server answers `tools/list`.
//! 2. Loop, at most `max_steps` model calls: stream `streamGenerateContent` (text deltas go
//!    out as they arrive), append the model turn verbatim, run every function call it asked
//!    for in parallel on the sandbox, append the function responses, repeat until the model
//!    answers without calls.
//!
//! Every turn is appended to the history as it happens (each append atomic). When the history
//! is sent back to Gemini, a trailing unfinished exchange (a model turn whose calls were not
//! answered, or responses without the model's reply) is left out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::gemini::{
    Content, FunctionCall, FunctionResponse, Gemini, GeminiError, GenerateContentRequest,
    StreamMerger,
};
use super::history::History;
use super::schema::{self, Declarations, ToolSpec};
use crate::domain::reason::Reason;
use crate::domain::resource::{Phase, Session};
use crate::mcp::McpError;
use crate::mcp::upstream::{McpConn, McpPool};
use crate::store::{Store, StoreError};

/// Why a chat could not start.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No such session.
    #[error("session {0:?} not found")]
    NotFound(String),
    /// The session has no running sandbox.
    #[error("session {name:?} is not running (phase {phase})")]
    NotRunning {
        /// Session name.
        name: String,
        /// Its phase.
        phase: Phase,
    },
    /// Another turn of this session is still running (turns never interleave).
    #[error("session {0:?} already has a chat turn in progress; retry when it is done")]
    Busy(String),
    /// GOOGLE_API_KEY is not set.
    #[error("GOOGLE_API_KEY is not set: the chat module cannot call Gemini")]
    NoApiKey,
    /// The sandbox's MCP server cannot be reached.
    #[error(transparent)]
    Mcp(#[from] McpError),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One event of a chat turn, as streamed to the caller.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// A piece of the model's answer.
    Text {
        /// The new text.
        text: String,
    },
    /// The model asked for a tool.
    ToolCall {
        /// Call id (Gemini's, or a generated one).
        id: String,
        /// The MCP tool name.
        name: String,
        /// Its arguments.
        args: Value,
    },
    /// A tool finished.
    ToolResult {
        /// Call id.
        id: String,
        /// The MCP tool name.
        name: String,
        /// True when the tool reported an error.
        #[serde(rename = "isError")]
        is_error: bool,
        /// Its text output.
        output: String,
    },
    /// The turn is complete.
    Done {
        /// The model's final answer.
        text: String,
        /// How many model calls it took.
        steps: usize,
    },
    /// The turn failed.
    Error {
        /// Machine-readable reason (serialized as its string).
        reason: Reason,
        /// What went wrong.
        message: String,
    },
}

impl ChatEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            ChatEvent::Text { .. } => "text",
            ChatEvent::ToolCall { .. } => "tool_call",
            ChatEvent::ToolResult { .. } => "tool_result",
            ChatEvent::Done { .. } => "done",
            ChatEvent::Error { .. } => "error",
        }
    }
}

/// Chat settings that are not per session.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Most model calls in one turn.
    pub max_steps: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig { max_steps: 8 }
    }
}

/// Everything a turn needs once pre-flight passed.
pub struct Prepared {
    session: Session,
    conn: Arc<McpConn>,
    tools: Declarations,
}

/// The chat service: shared by every request.
pub struct ChatService {
    store: Store,
    pool: Arc<McpPool>,
    gemini: Gemini,
    history: History,
    config: ChatConfig,
    busy: Arc<Mutex<HashSet<String>>>,
}

/// The right to run the one chat turn of a session; released when dropped.
pub struct TurnGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

impl ChatService {
    /// A service over these parts.
    pub fn new(
        store: Store,
        pool: Arc<McpPool>,
        gemini: Gemini,
        history: History,
        config: ChatConfig,
    ) -> ChatService {
        ChatService {
            store,
            pool,
            gemini,
            history,
            config,
            busy: Arc::default(),
        }
    }

    /// Claim the session's turn: one turn per session at a time, so two turns never
    /// interleave its history. `Busy` while another turn holds it.
    pub fn begin_turn(&self, name: &str) -> Result<TurnGuard, ChatError> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(name.to_string()) {
            return Err(ChatError::Busy(name.to_string()));
        }
        Ok(TurnGuard {
            busy: self.busy.clone(),
            name: name.to_string(),
        })
    }

    /// Close every connection to a sandbox: this replica stopped leading, and only the
    /// leader talks to sandboxes (never two attaches to one container's stdio).
    pub fn close_connections(&self) {
        self.pool.close_all();
    }

    /// The history repository.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Pre-flight: fail fast with a clear error, or return what the turn needs.
    pub async fn prepare(&self, name: &str) -> Result<Prepared, ChatError> {
        use crate::mcp::gateway::{Unreachable, resolve};
        let (session, container) = resolve(&self.store, name).await.map_err(|e| match e {
            Unreachable::NotFound(name) => ChatError::NotFound(name),
            Unreachable::NotRunning { name, phase } => ChatError::NotRunning { name, phase },
            Unreachable::Store(e) => ChatError::Store(e),
        })?;
        if !self.gemini.has_api_key() {
            return Err(ChatError::NoApiKey);
        }
        let conn = self.pool.get(name, &container).await?;
        let listed = conn.list_tools().await?;
        // The session's MCP policy (what any client may use), narrowed by the chat's own.
        let policy = session.spec.mcp_tools();
        let filter = session
            .spec
            .chat
            .as_ref()
            .map(|c| c.tools.clone())
            .unwrap_or_default();
        let specs: Vec<ToolSpec> = listed
            .iter()
            .filter(|t| policy.allows(&t.name) && filter.allows(&t.name))
            .map(ToolSpec::from)
            .collect();
        let tools = schema::declarations(&specs);
        Ok(Prepared {
            session,
            conn,
            tools,
        })
    }

    /// Run one turn, sending events to `tx`. Ends with `Done` or `Error`, or silently when
    /// `cancel` fires (the client went away or the server is stopping): the model call or
    /// tool calls in flight are dropped and no further step starts.
    pub async fn run(
        &self,
        p: Prepared,
        message: String,
        tx: mpsc::Sender<ChatEvent>,
        cancel: CancellationToken,
    ) {
        let name = p.session.metadata.name.clone();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                info!(session = %name, "chat turn cancelled: the client went away or the server is stopping");
                return;
            }
            r = self.turn(&p, message, &tx) => r,
        };
        if let Err(e) = outcome {
            let (reason, message) = match &e {
                TurnError::Gemini(g) if g.is_key_error() => {
                    (Reason::GeminiKeyRejected, e.to_string())
                }
                TurnError::Gemini(_) => (Reason::GeminiError, e.to_string()),
                TurnError::Store(_) => (Reason::StoreError, e.to_string()),
                TurnError::StepLimit(_) => (Reason::StepLimit, e.to_string()),
            };
            warn!(session = %name, error = %e, "chat turn failed");
            let _ = tx.send(ChatEvent::Error { reason, message }).await;
        }
    }

    async fn turn(
        &self,
        p: &Prepared,
        message: String,
        tx: &mpsc::Sender<ChatEvent>,
    ) -> Result<(), TurnError> {
        let name = p.session.metadata.name.as_str();
        let chat = p.session.spec.chat.clone().unwrap_or_default();
        let model = chat.model.clone().unwrap_or_default();
        let mut contents: Vec<Content> = sendable(self.history.load(name).await?);
        let user = Content::user_text(message);
        self.history.append(name, &[to_value(&user)]).await?;
        contents.push(user);
        for step in 1..=self.config.max_steps {
            let req = GenerateContentRequest {
                contents: contents.clone(),
                tools: p.tools.tool().into_iter().collect(),
                system_instruction: chat.system_instruction.clone().map(Content::system),
                ..Default::default()
            };
            let mut stream = self.gemini.stream_generate(&model, &req).await?;
            let mut merger = StreamMerger::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                for c in chunk.candidates.iter().take(1) {
                    for part in c.content.iter().flat_map(|c| c.parts.iter()) {
                        if let Some(t) = &part.text
                            && !part.is_thought()
                            && !t.is_empty()
                        {
                            let _ = tx.send(ChatEvent::Text { text: t.clone() }).await;
                        }
                    }
                }
                merger.push(&chunk);
            }
            let reply = merger.content();
            self.history.append(name, &[to_value(&reply)]).await?;
            let calls: Vec<FunctionCall> = reply.function_calls().into_iter().cloned().collect();
            contents.push(reply.clone());
            if calls.is_empty() {
                let text = reply
                    .parts
                    .iter()
                    .filter(|p| !p.is_thought())
                    .filter_map(|p| p.text.clone())
                    .collect::<String>();
                let _ = tx.send(ChatEvent::Done { text, steps: step }).await;
                return Ok(());
            }
            let responses = futures::future::join_all(
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, call)| self.call(p, call, step, i, tx)),
            )
            .await;
            let tool_turn = Content::function_responses(responses);
            self.history.append(name, &[to_value(&tool_turn)]).await?;
            contents.push(tool_turn);
        }
        Err(TurnError::StepLimit(self.config.max_steps))
    }

    /// Run one function call on the sandbox; failures become an `error` response the model
    /// can read.
    async fn call(
        &self,
        p: &Prepared,
        call: &FunctionCall,
        step: usize,
        index: usize,
        tx: &mpsc::Sender<ChatEvent>,
    ) -> FunctionResponse {
        let id = call
            .id
            .clone()
            .unwrap_or_else(|| format!("call-{step}-{index}"));
        let tool = p.tools.names.mcp_name(&call.name).map(str::to_string);
        let args = call.args.clone().unwrap_or_default();
        let shown = tool.clone().unwrap_or_else(|| call.name.clone());
        let _ = tx
            .send(ChatEvent::ToolCall {
                id: id.clone(),
                name: shown.clone(),
                args: Value::Object(args.clone()),
            })
            .await;
        let (is_error, output, structured) = match &tool {
            None => (true, format!("unknown tool {:?}", call.name), None),
            Some(t) => match p.conn.call_tool(t, args).await {
                Ok(r) => {
                    let text = r
                        .content
                        .iter()
                        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                        .collect::<Vec<_>>()
                        .join("\n");
                    (
                        r.is_error.unwrap_or(false),
                        text,
                        r.structured_content.clone(),
                    )
                }
                // The upstream is shared with the gateway's clients: a timed-out call is
                // cancelled upstream (McpConn::call_tool), a dead connection is replaced on
                // next use; never closed here.
                Err(e) => (true, e.to_string(), None),
            },
        };
        info!(session = %p.session.metadata.name, tool = %shown, is_error, "tool called");
        let _ = tx
            .send(ChatEvent::ToolResult {
                id,
                name: shown,
                is_error,
                output: output.clone(),
            })
            .await;
        let mut response = Map::new();
        if is_error {
            response.insert("error".into(), Value::String(output));
        } else {
            response.insert("output".into(), Value::String(output));
            if let Some(s) = structured {
                response.insert("structuredContent".into(), s);
            }
        }
        FunctionResponse::to_call(call, response)
    }
}

#[derive(Debug, thiserror::Error)]
enum TurnError {
    #[error(transparent)]
    Gemini(#[from] GeminiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the model still wanted tools after {0} steps (CHAT_MAX_STEPS)")]
    StepLimit(usize),
}

fn to_value(c: &Content) -> Value {
    serde_json::to_value(c).unwrap_or_else(|_| json!({}))
}

/// The stored turns Gemini may see: a trailing unfinished exchange is dropped.
pub fn sendable(turns: Vec<Value>) -> Vec<Content> {
    let mut contents: Vec<Content> = turns
        .into_iter()
        .filter_map(|t| serde_json::from_value(t).ok())
        .collect();
    while let Some(last) = contents.last() {
        let pending_calls = last.role == "model" && !last.function_calls().is_empty();
        let responses = last.parts.iter().any(|p| p.function_response.is_some());
        let dangling_user = last.role == "user" && !responses;
        if pending_calls || responses || dangling_user {
            contents.pop();
        } else {
            break;
        }
    }
    contents
}

/// A per-call timeout for MCP requests, from the environment (`MCP_CALL_TIMEOUT`, default 30s).
pub fn call_timeout_from_env() -> Duration {
    std::env::var("MCP_CALL_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_exchanges_are_not_sent() {
        let user = json!({"role": "user", "parts": [{"text": "hi"}]});
        let answer = json!({"role": "model", "parts": [{"text": "hello"}]});
        let call =
            json!({"role": "model", "parts": [{"functionCall": {"name": "echo", "args": {}}}]});
        let resp = json!({"role": "user", "parts": [{"functionResponse": {"name": "echo", "response": {"output": "x"}}}]});
        assert_eq!(sendable(vec![user.clone(), answer.clone()]).len(), 2);
        assert_eq!(
            sendable(vec![
                user.clone(),
                answer.clone(),
                user.clone(),
                call.clone()
            ])
            .len(),
            2
        );
        assert_eq!(
            sendable(vec![
                user.clone(),
                answer.clone(),
                user.clone(),
                call.clone(),
                resp.clone()
            ])
            .len(),
            2
        );
        assert_eq!(
            sendable(vec![
                user.clone(),
                call.clone(),
                resp.clone(),
                answer.clone()
            ])
            .len(),
            4
        );
    }
}
