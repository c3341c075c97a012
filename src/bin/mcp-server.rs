//! `mcp-server`: the MCP server that runs inside each sandbox container.
//!
//! It speaks MCP over stdio (newline-delimited JSON-RPC on stdin/stdout; the
//! protocol version is negotiated by rmcp) and offers the tools `echo`, `add`,
//! `sandbox_info`, `save_note`, `read_note`, `list_notes`, `sleep` (progress
//! notifications, cancellable) and `toggle_extra_tool` (shows or hides the tool
//! `extra`, with `notifications/tools/list_changed`). Notes are files
//! under `/tmp/notes` (override with `MCP_NOTES_DIR`), because the sandbox's
//! root filesystem is read-only and `/tmp` is a tmpfs. Logs go to stderr only
//! (filter with `RUST_LOG`, default `info,rmcp=warn`); stdout carries JSON-RPC only.
//!
//! # Re-attaching clients and a second `initialize`
//!
//! The orchestrator keeps the container's stdin open across client
//! connections, so a new client may send `initialize` on a stream that already
//! carried a whole session. rmcp 3.11 does not refuse a second `initialize`
//! inside a running session (it calls the handler's `initialize` again), but
//! the old session's state would live on: in-flight requests of the departed
//! client could still answer, with request ids that collide with the new
//! client's. And if a session dies in its handshake (rmcp ends the service
//! when the first message is not `initialize`, a ping or a request carrying
//! 2026-07-28 inline metadata), a plain `serve(stdio())` would end the process.
//!
//! So this binary reads stdin itself and runs each MCP session over an
//! in-memory pipe (see the `session` module): every `initialize` request
//! cancels the current session and starts a fresh one, and a session that
//! ended on its own is replaced by a new one for the next line. Only stdin EOF
//! (after the last session flushed its replies), SIGTERM or SIGINT end the
//! process, always with exit code 0. Signal handlers are installed first
//! thing, which also matters because the server is PID 1 in its container,
//! where the kernel ignores signals that have no handler.

#[path = "mcp-server/sandbox.rs"]
mod sandbox;
#[path = "mcp-server/session.rs"]
mod session;
#[path = "mcp-server/tools.rs"]
mod tools;

use std::{io::Write, path::PathBuf};

use tokio::signal::unix::{SignalKind, signal};

/// Default notes directory inside the sandbox.
const DEFAULT_NOTES_DIR: &str = "/tmp/notes";

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn")),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(serve());
    // A blocking stdin read (when stdin is not a pipe) cannot be cancelled;
    // do not wait for it.
    runtime.shutdown_background();
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Serve until stdin ends or a termination signal arrives; the exit code.
async fn serve() -> i32 {
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let notes_dir = std::env::var_os("MCP_NOTES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NOTES_DIR));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        notes_dir = %notes_dir.display(),
        "mcp-server starting"
    );
    let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
    // The `extra` tool's switch outlives sessions: it belongs to the process.
    let extra_enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let make_server = move || tools::SandboxServer::new(notes_dir.clone(), extra_enabled.clone());
    tokio::select! {
        result = session::run(stdin, stdout, make_server) => match result {
            Ok(()) => {
                tracing::info!("stdin closed, exiting");
                0
            }
            Err(e) => {
                tracing::error!("stdio failed: {e}");
                1
            }
        },
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received, exiting");
            0
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT received, exiting");
            0
        }
    }
}
