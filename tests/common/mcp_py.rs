//! Runs `tests/mcp/client.py`, the MCP client driver on the official MCP Python SDK, for
//! the integration tests.
//!
//! The driver runs with the venv that `scripts/test` makes (`ensure_mcp_sdk` in
//! scripts/lib.sh): `$MCP_VENV/bin/python`, default `<repo>/target/mcp-venv/bin/python`. A
//! missing venv, python or script is a loud panic naming `scripts/test`, never a skip.
//!
//! Every driver result is one JSON object per line on stdout; [`Output`] holds them parsed.
//! The exit code is 0 when the operation completed (a JSON-RPC error or an `isError` result
//! from `call` counts: it is printed), 1 on failure (the reason is on stderr), 2 on bad usage.
//!
//! ```ignore
//! let py = mcp_py::require();
//! let conn = mcp_py::Connection::http(&url, &token).mode(mcp_py::Mode::Legacy);
//! let out = py.run(&conn, "call", &["echo", r#"{"text":"hi"}"#], Duration::from_secs(60));
//! assert_eq!(out.success().last()["result"]["texts"][0], "hi");
//! ```
//!
//! Standalone (no `super::`), so a test file may also include it alone with
//! `#[path = "common/mcp_py.rs"] mod mcp_py;`.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// How the driver negotiates the protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The SDK's default: `server/discover` (2026-07-28), falling back to `initialize`.
    Auto,
    /// The `initialize` handshake (2025-11-25).
    Legacy,
}

impl Mode {
    fn as_arg(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Legacy => "legacy",
        }
    }
}

/// Where the driver connects: Streamable HTTP with a bearer token, or a spawned stdio server.
#[derive(Debug, Clone)]
pub struct Connection {
    url: Option<(String, String)>,
    stdio: Vec<String>,
    mode: Mode,
    timeout: Option<Duration>,
}

impl Connection {
    /// Streamable HTTP at `url`, with `Authorization: Bearer <token>`.
    pub fn http(url: &str, token: &str) -> Self {
        Connection {
            url: Some((url.to_owned(), token.to_owned())),
            stdio: Vec::new(),
            mode: Mode::Auto,
            timeout: None,
        }
    }

    /// The stdio transport, spawning `command` (program and arguments).
    pub fn stdio<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stdio: Vec<String> = command.into_iter().map(Into::into).collect();
        assert!(!stdio.is_empty(), "Connection::stdio needs a command");
        Connection {
            url: None,
            stdio,
            mode: Mode::Auto,
            timeout: None,
        }
    }

    /// The negotiation mode (default [`Mode::Auto`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The driver's per-request timeout (`--timeout`, default 30 s in the driver).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The driver's argument list for `subcommand args`.
    fn argv(&self, subcommand: &str, args: &[&str]) -> Vec<String> {
        let mut argv = Vec::new();
        match &self.url {
            Some((url, token)) => {
                argv.extend(["--url".to_owned(), url.clone()]);
                argv.extend(["--token".to_owned(), token.clone()]);
            }
            None => argv.push("--stdio".to_owned()),
        }
        argv.extend(["--mode".to_owned(), self.mode.as_arg().to_owned()]);
        if let Some(t) = self.timeout {
            argv.extend(["--timeout".to_owned(), format!("{}", t.as_secs_f64())]);
        }
        argv.push(subcommand.to_owned());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        if self.url.is_none() {
            argv.push("--".to_owned());
            argv.extend(self.stdio.iter().cloned());
        }
        argv
    }
}

/// What one driver run printed.
#[derive(Debug)]
pub struct Output {
    /// The driver's exit status.
    pub status: ExitStatus,
    /// Its stdout, one parsed JSON object per line.
    pub lines: Vec<Value>,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// The command line, for messages.
    pub command: String,
}

impl Output {
    /// Panics unless the driver exited 0; returns self for chaining.
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.status.success(),
            "{} failed ({}) after {:?}\nstdout: {:?}\nstderr: {}",
            self.command,
            self.status,
            self.elapsed,
            self.lines,
            self.stderr
        );
        self
    }

    /// The last JSON line (most subcommands print exactly one); panics when there is none.
    #[track_caller]
    pub fn last(&self) -> &Value {
        self.lines.last().unwrap_or_else(|| {
            panic!(
                "{} printed no JSON line ({}); stderr: {}",
                self.command, self.status, self.stderr
            )
        })
    }
}

/// The located interpreter and driver script.
#[derive(Debug, Clone)]
pub struct McpPy {
    /// The venv's python.
    pub python: PathBuf,
    /// `tests/mcp/client.py`.
    pub script: PathBuf,
}

/// The repository root.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python and the driver; panics loudly when either is missing.
pub fn require() -> McpPy {
    let venv = std::env::var_os("MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/mcp-venv"));
    let python = venv.join("bin/python");
    let script = repo_root().join("tests/mcp/client.py");
    assert!(
        python.exists(),
        "the MCP Python SDK venv is required but {} is missing: run scripts/test \
         (or `source scripts/lib.sh && ensure_mcp_sdk`) to create it, or set MCP_VENV",
        python.display()
    );
    assert!(
        script.exists(),
        "the MCP client driver {} is missing",
        script.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import mcp, httpx2, anyio"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/test", python.display()));
    assert!(
        probe.status.success(),
        "{} cannot import the MCP SDK; re-create the venv with scripts/test: {}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    McpPy { python, script }
}

fn parse_lines(command: &str, stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{command} printed a non-JSON line {l:?}: {e}"))
        })
        .collect()
}

impl McpPy {
    fn describe(&self, argv: &[String]) -> String {
        format!("client.py {}", argv.join(" "))
    }

    /// Run `subcommand args` to completion, killing it and panicking after `timeout`.
    /// Blocks the calling thread.
    #[track_caller]
    pub fn run(
        &self,
        conn: &Connection,
        subcommand: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Output {
        let argv = conn.argv(subcommand, args);
        let command = self.describe(&argv);
        let started = Instant::now();
        let mut child = Command::new(&self.python)
            .arg(&self.script)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        // Drain both pipes on threads so a chatty child cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = err_reader.join().unwrap_or_default();
                    panic!("{command} did not finish within {timeout:?}; stderr: {stderr}");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {command}: {e}"),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Output {
            status,
            lines: parse_lines(&command, &stdout),
            stderr,
            elapsed: started.elapsed(),
            command,
        }
    }

    /// Start `subcommand args` (e.g. `call-during-kill`) with stdout piped, for reading
    /// its JSON lines as they come. The child is killed when the handle is dropped.
    pub fn spawn(&self, conn: &Connection, subcommand: &str, args: &[&str]) -> Spawned {
        let argv = conn.argv(subcommand, args);
        let command = self.describe(&argv);
        let mut child = tokio::process::Command::new(&self.python)
            .arg(&self.script)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // Drained all along, so that the child never blocks on a full stderr pipe.
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Spawned {
            child,
            stdout,
            stderr: Some(stderr),
            command,
            started: Instant::now(),
            seen: Vec::new(),
        }
    }
}

/// A running driver (see [`McpPy::spawn`]).
pub struct Spawned {
    /// The driver process (its stdout is read through [`Spawned::next_json`]).
    pub child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<tokio::task::JoinHandle<String>>,
    command: String,
    started: Instant,
    seen: Vec<Value>,
}

impl Spawned {
    /// The next JSON line, or `None` at EOF; panics after `timeout` or on a non-JSON line.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no output within {timeout:?}", self.command))
            .unwrap_or_else(|e| panic!("{}: reading stdout: {e}", self.command))?;
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed a non-JSON line {line:?}: {e}", self.command));
        self.seen.push(value.clone());
        Some(value)
    }

    /// Wait for the line `{"started": true}` (what `call-during-kill` prints once its
    /// request is on its way); panics if another line or EOF comes first.
    pub async fn wait_started(&mut self, timeout: Duration) {
        let line = self.next_json(timeout).await;
        let stderr = if line.is_none() {
            self.stderr_now().await
        } else {
            String::new()
        };
        assert_eq!(
            line.as_ref().and_then(|v| v.get("started")),
            Some(&Value::Bool(true)),
            "{}: expected {{\"started\": true}}, got {line:?}; stderr: {stderr}",
            self.command
        );
    }

    /// Everything the child wrote on stderr (waits up to 5 s for it to close stderr).
    async fn stderr_now(&mut self) -> String {
        match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Read the remaining lines and wait for the exit; panics after `timeout`.
    pub async fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next_json(left).await.is_none() {
                break;
            }
        }
        let stderr = self.stderr_now().await;
        let left = deadline.saturating_duration_since(Instant::now());
        let status = tokio::time::timeout(left, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.command))
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.command));
        Output {
            status,
            lines: self.seen,
            stderr,
            elapsed: self.started.elapsed(),
            command: self.command,
        }
    }
}

/// The repository path of the driver script (for messages and docs).
pub fn script_path() -> &'static Path {
    Path::new("tests/mcp/client.py")
}
