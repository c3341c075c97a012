//! The MCP tools of the sandbox server: `echo`, `add`, `sandbox_info`,
//! `save_note`, `read_note` and `list_notes`.
//!
//! Schema-level argument errors (a missing field, a string where a number is
//! expected) are turned into a JSON-RPC `invalid params` error by rmcp's
//! [`Parameters`] extractor. Semantic errors (a bad note name, a missing note)
//! are returned as a tool result with `isError: true`, so the model can see
//! and correct them. Nothing in here panics on client input.

use std::path::{Path, PathBuf};

use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{Implementation, ServerCapabilities, ServerConfig},
    schemars, tool, tool_handler, tool_router,
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
    tool_router: ToolRouter<Self>,
}

impl SandboxServer {
    /// A handler that stores notes under `notes_dir` (created on first save).
    pub(crate) fn new(notes_dir: PathBuf) -> Self {
        Self {
            notes_dir,
            tool_router: Self::tool_router(),
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

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcp-server", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sandbox MCP server: echo, add, sandbox_info, and notes kept on the sandbox's tmpfs.",
            )
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
