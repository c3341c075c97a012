//! The MCP tools of the sandbox server: `echo`, `add`, `sandbox_info`,
//! `save_note`, `read_note`, `list_notes`, `sleep`, `toggle_extra_tool` and,
//! while toggled on, `extra`.
//!
//! `sleep` and `toggle_extra_tool` exist for gateway tests:
//!
//! * `sleep {seconds, steps?}` sleeps in `steps` equal steps, sends
//!   `notifications/progress` (progress = step 1..=steps, total = steps) after
//!   each step when the request carries a progress token, and stops early when
//!   the request is cancelled (rmcp then drops the response).
//! * `toggle_extra_tool {enabled}` shows or hides the tool `extra` and sends
//!   `notifications/tools/list_changed` (the capabilities advertise
//!   `tools.listChanged`). On a 2026-07-28 connection the notification goes to
//!   the client's `subscriptions/listen` streams that asked for
//!   `toolsListChanged`; on a handshake-era connection it is sent unscoped. The
//!   switch is per process (shared by the successive sessions of one stdin),
//!   so a client that re-attaches sees the state the previous one left.
//!
//! Schema-level argument errors (a missing field, a string where a number is
//! expected) are turned into a JSON-RPC `invalid params` error by rmcp's
//! [`Parameters`] extractor. Semantic errors (a bad note name, a missing note)
//! are returned as a tool result with `isError: true`, so the model can see
//! and correct them. Nothing in here panics on client input.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        Implementation, ProgressNotificationParam, ProtocolVersion, ServerCapabilities,
        ServerConfig, ServerNotification, SubscriptionFilter, ToolListChangedNotification,
    },
    schemars,
    service::{RequestContext, SubscriptionContext, SubscriptionSink},
    tool, tool_handler, tool_router,
};
use serde::Deserialize;

use crate::sandbox;

/// Longest accepted note name, in bytes.
pub(crate) const MAX_NOTE_NAME_LEN: usize = 64;
/// Largest accepted note body, in bytes (the notes live on a small tmpfs).
pub(crate) const MAX_NOTE_LEN: usize = 1024 * 1024;

/// Arguments of the `echo` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct EchoArgs {
    /// The text to send back.
    pub text: String,
}

/// Arguments of the `add` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct AddArgs {
    /// The left operand.
    pub a: f64,
    /// The right operand.
    pub b: f64,
}

/// Longest accepted `sleep`, in seconds.
pub(crate) const MAX_SLEEP_SECONDS: f64 = 60.0;
/// Most accepted `sleep` steps.
pub(crate) const MAX_SLEEP_STEPS: u32 = 100;
/// Name of the tool that `toggle_extra_tool` shows and hides.
pub(crate) const EXTRA_TOOL: &str = "extra";

/// Arguments of the `sleep` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SleepArgs {
    /// How long to sleep, in seconds: 0 to 60.
    pub seconds: f64,
    /// In how many equal steps (1 to 100, default 1); a progress notification
    /// follows each step when the request carries a progress token.
    #[serde(default)]
    pub steps: Option<u32>,
}

/// Arguments of the `toggle_extra_tool` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ToggleArgs {
    /// Whether the tool `extra` is listed and callable.
    pub enabled: bool,
}

/// Arguments of the `save_note` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SaveNoteArgs {
    /// Note name: 1 to 64 bytes, no `/`, not only dots, no control characters.
    pub name: String,
    /// The note's content.
    pub text: String,
}

/// Arguments of the `read_note` tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ReadNoteArgs {
    /// Name of a note previously stored with `save_note`.
    pub name: String,
}

/// The MCP server handler: one instance per MCP session.
#[derive(Debug, Clone)]
pub(crate) struct SandboxServer {
    notes_dir: PathBuf,
    /// Whether `extra` is visible: shared by every session of the process.
    extra_enabled: Arc<AtomicBool>,
    /// This session's open `subscriptions/listen` streams (2026-07-28).
    listeners: Arc<Mutex<Vec<SubscriptionSink>>>,
    tool_router: ToolRouter<Self>,
}

impl SandboxServer {
    /// A handler that stores notes under `notes_dir` (created on first save)
    /// and shows the tool `extra` while `extra_enabled` is set.
    pub(crate) fn new(notes_dir: PathBuf, extra_enabled: Arc<AtomicBool>) -> Self {
        Self {
            notes_dir,
            extra_enabled,
            listeners: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The tools as the client may see them now: `extra` is disabled (not
    /// listed, and a call fails with "tool not found") unless toggled on.
    fn visible_tools(&self) -> ToolRouter<Self> {
        let mut router = self.tool_router.clone();
        if !self.extra_enabled.load(Ordering::SeqCst) {
            router.disable_route(EXTRA_TOOL);
        }
        router
    }

    /// Tell the client that the tool list changed: on the listen streams of a
    /// 2026-07-28 connection, else as an unscoped notification.
    async fn notify_tool_list_changed(&self, context: &RequestContext<RoleServer>) {
        let modern = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        if !modern {
            if let Err(e) = context.peer.notify_tool_list_changed().await {
                tracing::warn!("cannot send tools/list_changed: {e}");
            }
            return;
        }
        let sinks: Vec<SubscriptionSink> =
            self.listeners.lock().map(|l| l.clone()).unwrap_or_default();
        for sink in sinks {
            let notification =
                ServerNotification::ToolListChangedNotification(ToolListChangedNotification {
                    method: Default::default(),
                    extensions: Default::default(),
                });
            if let Err(e) = sink.send(notification).await {
                tracing::debug!(id = %sink.id(), "listen stream not notified: {e}");
            }
        }
    }

    fn note_path(&self, name: &str) -> Result<PathBuf, String> {
        validate_note_name(name)?;
        Ok(self.notes_dir.join(name))
    }
}

#[tool_router]
impl SandboxServer {
    /// Return the given text unchanged.
    #[tool(description = "Return the given text unchanged.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    /// Add two numbers.
    #[tool(description = "Add two numbers and return the sum as text.")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> Result<String, String> {
        let sum = a + b;
        if sum.is_finite() {
            Ok(sum.to_string())
        } else {
            Err(format!("the sum of {a} and {b} is not a finite number"))
        }
    }

    /// Describe the sandbox this server runs in.
    #[tool(
        description = "Describe the sandbox: hostname, uid, gid, pid, network interfaces and whether / and /tmp are writable. Returns JSON text."
    )]
    fn sandbox_info(&self) -> Result<String, String> {
        serde_json::to_string_pretty(&sandbox::SandboxInfo::collect()).map_err(|e| e.to_string())
    }

    /// Store a note under the notes directory.
    #[tool(
        description = "Store a note (overwriting any note of the same name). The name is 1-64 bytes, without '/', not only dots."
    )]
    async fn save_note(
        &self,
        Parameters(SaveNoteArgs { name, text }): Parameters<SaveNoteArgs>,
    ) -> Result<String, String> {
        let path = self.note_path(&name)?;
        if text.len() > MAX_NOTE_LEN {
            return Err(format!(
                "note too large: {} bytes (at most {MAX_NOTE_LEN})",
                text.len()
            ));
        }
        create_notes_dir(&self.notes_dir).await?;
        tokio::fs::write(&path, text.as_bytes())
            .await
            .map_err(|e| format!("cannot write note {name:?}: {e}"))?;
        tracing::info!(name, bytes = text.len(), "note saved");
        Ok(format!("saved note {name:?} ({} bytes)", text.len()))
    }

    /// Read a note stored with `save_note`.
    #[tool(description = "Return the text of a note stored with save_note.")]
    async fn read_note(
        &self,
        Parameters(ReadNoteArgs { name }): Parameters<ReadNoteArgs>,
    ) -> Result<String, String> {
        let path = self.note_path(&name)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                String::from_utf8(bytes).map_err(|_| format!("note {name:?} is not UTF-8"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("no note named {name:?}"))
            }
            Err(e) => Err(format!("cannot read note {name:?}: {e}")),
        }
    }

    /// Sleep, with progress notifications, until done or cancelled.
    #[tool(
        description = "Sleep for `seconds` (0-60) in `steps` equal steps (1-100, default 1). Sends notifications/progress (progress = step, total = steps) after each step when the request has a progress token; stops early when the request is cancelled. Returns 'slept <seconds>'."
    )]
    async fn sleep(
        &self,
        Parameters(SleepArgs { seconds, steps }): Parameters<SleepArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        if !(0.0..=MAX_SLEEP_SECONDS).contains(&seconds) {
            return Err(format!(
                "seconds must be between 0 and {MAX_SLEEP_SECONDS}, not {seconds}"
            ));
        }
        let steps = steps.unwrap_or(1);
        if !(1..=MAX_SLEEP_STEPS).contains(&steps) {
            return Err(format!(
                "steps must be between 1 and {MAX_SLEEP_STEPS}, not {steps}"
            ));
        }
        let step = Duration::from_secs_f64(seconds / f64::from(steps));
        let token = context.meta.get_progress_token();
        for done in 1..=steps {
            tokio::select! {
                () = context.ct.cancelled() => {
                    tracing::info!(done = done - 1, steps, "sleep cancelled");
                    return Err("cancelled".to_owned());
                }
                () = tokio::time::sleep(step) => {}
            }
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(done))
                    .with_total(f64::from(steps));
                if let Err(e) = context.peer.notify_progress(progress).await {
                    tracing::warn!("cannot send a progress notification: {e}");
                }
            }
        }
        Ok(format!("slept {seconds}"))
    }

    /// Show or hide the tool `extra`, then notify the client.
    #[tool(
        description = "Show (enabled: true) or hide (enabled: false) the tool 'extra', then send notifications/tools/list_changed. Returns the new state."
    )]
    async fn toggle_extra_tool(
        &self,
        Parameters(ToggleArgs { enabled }): Parameters<ToggleArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        let was = self.extra_enabled.swap(enabled, Ordering::SeqCst);
        tracing::info!(enabled, was, "extra tool toggled");
        self.notify_tool_list_changed(&context).await;
        format!(
            "extra tool {}",
            if enabled { "enabled" } else { "disabled" }
        )
    }

    /// The tool that `toggle_extra_tool` shows and hides.
    #[tool(description = "Return 'extra'. Listed only while toggle_extra_tool enabled it.")]
    fn extra(&self) -> String {
        EXTRA_TOOL.to_owned()
    }

    /// List the names of the stored notes.
    #[tool(description = "List the names of the stored notes as a JSON array, sorted.")]
    async fn list_notes(&self) -> Result<String, String> {
        let mut names = Vec::new();
        match tokio::fs::read_dir(&self.notes_dir).await {
            Ok(mut dir) => {
                while let Some(entry) = dir
                    .next_entry()
                    .await
                    .map_err(|e| format!("cannot list notes: {e}"))?
                {
                    let is_file = entry.file_type().await.is_ok_and(|t| t.is_file());
                    if let (true, Some(name)) = (is_file, entry.file_name().to_str())
                        && validate_note_name(name).is_ok()
                    {
                        names.push(name.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot list notes: {e}")),
        }
        names.sort();
        serde_json::to_string(&names).map_err(|e| e.to_string())
    }
}

#[tool_handler(router = self.visible_tools())]
impl ServerHandler for SandboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("mcp-server", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Sandbox MCP server: echo, add, sandbox_info, notes kept on the sandbox's tmpfs \
             (save_note, read_note, list_notes), sleep (progress notifications, cancellable) \
             and toggle_extra_tool (shows or hides the tool 'extra' and sends \
             notifications/tools/list_changed).",
        )
    }

    /// Accept `toolsListChanged` on a 2026-07-28 `subscriptions/listen`.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        Some(accepted)
    }

    /// Keep the stream's sink until the client ends the subscription.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let id = context.sink().id().clone();
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.push(context.sink().clone());
        }
        context.cancelled().await;
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.retain(|sink| *sink.id() != id);
        }
        Ok(())
    }
}

/// Check a note name: 1 to [`MAX_NOTE_NAME_LEN`] bytes, no `/` or `\`, not
/// made only of dots, no control characters.
pub(crate) fn validate_note_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("invalid note name: it is empty".to_owned());
    }
    if name.len() > MAX_NOTE_NAME_LEN {
        return Err(format!(
            "invalid note name: {} bytes long (at most {MAX_NOTE_NAME_LEN})",
            name.len()
        ));
    }
    if name.contains(['/', '\\']) {
        return Err(format!("invalid note name {name:?}: it contains a slash"));
    }
    if name.chars().all(|c| c == '.') {
        return Err(format!("invalid note name {name:?}: it is only dots"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "invalid note name {name:?}: it contains a control character"
        ));
    }
    Ok(())
}

async fn create_notes_dir(dir: &Path) -> Result<(), String> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(dir)
        .await
        .map_err(|e| format!("cannot create the notes directory {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::validate_note_name;

    #[test]
    fn note_names() {
        for good in ["a", "note-1", ".hidden", "a.b", "..a", &"x".repeat(64), "é"] {
            assert!(validate_note_name(good).is_ok(), "{good:?} should be valid");
        }
        for bad in [
            "",
            ".",
            "..",
            "....",
            "a/b",
            "/",
            "a\\b",
            "a\0b",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(
                validate_note_name(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
    }
}
