//! Tests of the sandbox MCP server (`src/bin/mcp-server.rs`).
//!
//! The container tests drive the image built by `scripts/build-mcp-image`
//! (`mcp-server:latest`, or `$MCP_IMAGE`) with the rmcp client, under the same
//! restrictions the orchestrator applies. They fail, never skip, when docker
//! or the image is missing. Every container they start carries a unique
//! `orchestrator.mcp.dev/test` label and is removed by label on drop, even
//! when a test fails.
//!
//! The progress, cancel and list-changed tests use an rmcp client whose handler records
//! `notifications/progress` and `notifications/tools/list_changed`. The `python_sdk_*`
//! tests drive the container (and the reference image `mcp-reference-time:latest` from
//! `scripts/build-reference-image`) over stdio with the official MCP Python SDK through
//! `tests/mcp/client.py` (see `tests/common/mcp_py.rs`; the venv comes from `scripts/test`).
//!
//! The re-initialize test runs the binary directly on the host
//! (`$MCP_SERVER_BIN`, default: the `mcp-server` built for this test run) and
//! writes raw JSON-RPC lines, because the point is what happens on one stdin
//! that outlives an MCP client.

use std::{
    path::Path,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        ClientRequest, Implementation, ProgressNotificationParam,
    },
    service::{NotificationContext, PeerRequestOptions, RunningService},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// Upper bound for any single step, so a broken server fails instead of hanging.
const STEP: Duration = Duration::from_secs(30);
/// Label put on every container these tests start.
const TEST_LABEL: &str = "orchestrator.mcp.dev/test";

#[path = "common/mcp_py.rs"]
mod mcp_py;

type Client = RunningService<RoleClient, ClientConfig>;

/// The docker client to use: Debian's `/usr/bin/docker` (it matches the
/// engine) when present, else `docker` from `PATH`.
fn docker() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// The image under test; panics when docker or the image is unavailable.
fn require_image() -> String {
    let image = std::env::var("MCP_IMAGE").unwrap_or_else(|_| "mcp-server:latest".to_owned());
    let output = std::process::Command::new(docker())
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "docker is required for the mcp-server container tests, \
                 but `{}` could not be run: {e}",
                docker()
            )
        });
    assert!(
        output.status.success(),
        "the image {image} is required for the mcp-server container tests but is absent \
         (or the docker daemon does not answer); build it with scripts/build-mcp-image. \
         docker said: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    image
}

/// Removes, on drop, every container carrying this guard's test label.
struct ContainerGuard {
    value: String,
}

impl ContainerGuard {
    fn new() -> Self {
        Self {
            value: format!("mcp-server-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn label(&self) -> String {
        format!("{TEST_LABEL}={}", self.value)
    }

    /// Ids of the containers (running or not) with this guard's label.
    fn containers(&self) -> Vec<String> {
        std::process::Command::new(docker())
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={}", self.label()))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = std::process::Command::new(docker())
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The arguments of `docker run -i` of `image` with the sandbox restrictions (those of
/// src/domain/contract.rs that matter to the server: no network, read-only root with a
/// tmpfs on /tmp, no capabilities, no new privileges, uid 65534) and the guard's label.
fn docker_run_args(image: &str, guard: &ContainerGuard) -> Vec<String> {
    [
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,noexec,mode=1777,uid=65534,gid=65534,size=64m",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "65534:65534",
        "--pids-limit",
        "128",
        "--memory",
        "256m",
        "--label",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([guard.label(), image.to_owned()])
    .collect()
}

/// `docker run -i` of the image with the sandbox restrictions.
fn docker_run(image: &str, guard: &ContainerGuard, name: &str) -> Child {
    let mut args = docker_run_args(image, guard);
    let image = args.pop().expect("the image is the last argument");
    Command::new(docker())
        .args(args)
        .args(["--name", name, &image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", docker()))
}

/// Run the MCP handshake over the child's stdio with the rmcp client.
async fn connect(child: &mut Child) -> Client {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let stdin = child.stdin.take().expect("child stdin is piped");
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-server-test", "0.1.0"),
    );
    tokio::time::timeout(STEP, info.serve((stdout, stdin)))
        .await
        .expect("initialize timed out")
        .expect("initialize failed")
}

/// What a [`Recorder`] client saw.
#[derive(Debug)]
enum Seen {
    Progress(ProgressNotificationParam),
    ToolListChanged,
}

/// A client handler that forwards progress and tools/list_changed notifications.
#[derive(Clone)]
struct Recorder {
    info: ClientConfig,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.seen.send(Seen::Progress(params));
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::ToolListChanged);
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

type RecordingClient = RunningService<RoleClient, Recorder>;

/// Run the MCP handshake with a [`Recorder`]; also returns what it records.
async fn connect_recording(
    child: &mut Child,
) -> (RecordingClient, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let stdin = child.stdin.take().expect("child stdin is piped");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder {
        info: ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-server-test", "0.1.0"),
        ),
        seen: tx,
    };
    let client = tokio::time::timeout(STEP, recorder.serve((stdout, stdin)))
        .await
        .expect("initialize timed out")
        .expect("initialize failed");
    (client, rx)
}

/// The next thing a [`Recorder`] saw, within `within`; None when nothing came.
async fn next_seen(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    within: Duration,
) -> Option<Seen> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Call a tool; panics on a JSON-RPC error or a timeout.
async fn call<H: rmcp::Service<RoleClient>>(
    client: &RunningService<RoleClient, H>,
    tool: &str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("tool arguments must be a JSON object")
    };
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
    tokio::time::timeout(STEP, client.call_tool(params))
        .await
        .unwrap_or_else(|_| panic!("tools/call {tool} timed out"))
        .unwrap_or_else(|e| panic!("tools/call {tool} failed: {e}"))
}

/// The concatenated text content of a tool result.
fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.as_str())
        .collect()
}

/// Call a tool that must succeed; its text.
async fn call_ok<H: rmcp::Service<RoleClient>>(
    client: &RunningService<RoleClient, H>,
    tool: &str,
    args: Value,
) -> String {
    let result = call(client, tool, args.clone()).await;
    assert_ne!(
        result.is_error,
        Some(true),
        "{tool} {args} returned an error: {}",
        text(&result)
    );
    text(&result)
}

/// Call a tool that must fail with an MCP error (an `isError` result or a
/// JSON-RPC error); the error text.
async fn call_err<H: rmcp::Service<RoleClient>>(
    client: &RunningService<RoleClient, H>,
    tool: &str,
    args: Value,
) -> String {
    let Value::Object(map) = args.clone() else {
        panic!("tool arguments must be a JSON object")
    };
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(map);
    match tokio::time::timeout(STEP, client.call_tool(params))
        .await
        .unwrap_or_else(|_| panic!("tools/call {tool} timed out"))
    {
        Ok(result) => {
            assert_eq!(
                result.is_error,
                Some(true),
                "{tool} {args} should fail but returned: {}",
                text(&result)
            );
            text(&result)
        }
        Err(e) => e.to_string(),
    }
}

async fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    tokio::time::timeout(STEP, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what}: the container did not exit"))
        .unwrap_or_else(|e| panic!("{what}: waiting for docker run failed: {e}"))
}

#[tokio::test]
async fn container_serves_every_tool_and_exits_zero_on_eof() {
    let image = require_image();
    let guard = ContainerGuard::new();
    let started = Instant::now();
    let mut child = docker_run(&image, &guard, &guard.value);
    let client = connect(&mut child).await;
    eprintln!("docker run to initialize response: {:?}", started.elapsed());

    let server = client.peer_info().expect("server info after initialize");
    assert_eq!(
        server.server_info.as_ref().map(|i| i.name.as_str()),
        Some("mcp-server")
    );
    assert!(server.capabilities.tools.is_some(), "tools capability");

    let tools = tokio::time::timeout(STEP, client.list_all_tools())
        .await
        .expect("tools/list timed out")
        .expect("tools/list failed");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "add",
            "echo",
            "list_notes",
            "read_note",
            "sandbox_info",
            "save_note",
            "sleep",
            "toggle_extra_tool"
        ]
    );

    let greeting = "héllo, sandbox ✓\nsecond line";
    assert_eq!(
        call_ok(&client, "echo", json!({ "text": greeting })).await,
        greeting
    );
    assert_eq!(
        call_ok(&client, "add", json!({ "a": 2, "b": 3.5 })).await,
        "5.5"
    );

    let info: Value =
        serde_json::from_str(&call_ok(&client, "sandbox_info", json!({})).await).unwrap();
    eprintln!("sandbox_info: {info}");
    assert_eq!(
        info["network_interfaces"],
        json!(["lo"]),
        "only the loopback interface"
    );
    assert_eq!(
        info["root_writable"],
        json!(false),
        "read-only root: {info}"
    );
    assert_eq!(info["tmp_writable"], json!(true), "writable /tmp: {info}");
    assert_eq!(info["uid"], json!(65534));
    assert_eq!(info["gid"], json!(65534));
    assert!(info["pid"].as_u64().is_some_and(|pid| pid > 0), "{info}");
    assert!(info["hostname"].is_string(), "{info}");

    let note = "remember:\nthe milk ✓";
    call_ok(
        &client,
        "save_note",
        json!({ "name": "todo", "text": note }),
    )
    .await;
    assert_eq!(
        call_ok(&client, "read_note", json!({ "name": "todo" })).await,
        note
    );
    let listed: Value =
        serde_json::from_str(&call_ok(&client, "list_notes", json!({})).await).unwrap();
    assert_eq!(listed, json!(["todo"]));

    for bad in ["../escape", "..", ".", "a/b", "", &"n".repeat(65)] {
        let error = call_err(&client, "save_note", json!({ "name": bad, "text": "x" })).await;
        assert!(
            error.contains("invalid note name"),
            "save_note {bad:?}: {error}"
        );
        call_err(&client, "read_note", json!({ "name": bad })).await;
    }
    call_err(&client, "read_note", json!({ "name": "missing" })).await;
    call_err(&client, "add", json!({ "a": "two", "b": 3 })).await;
    call_err(&client, "echo", json!({})).await;
    // The server is still alive and well after the errors.
    assert_eq!(
        call_ok(&client, "echo", json!({ "text": "still here" })).await,
        "still here"
    );
    assert_eq!(
        call_ok(&client, "read_note", json!({ "name": "todo" })).await,
        note
    );

    // Closing the client closes the container's stdin: the server must exit 0.
    client.cancel().await.expect("client shutdown");
    let status = wait_exit(&mut child, "after stdin EOF").await;
    assert_eq!(status.code(), Some(0), "exit status after stdin EOF");
    assert!(guard.containers().is_empty(), "--rm removed the container");
}

#[tokio::test]
async fn container_exits_zero_on_sigterm() {
    let image = require_image();
    let guard = ContainerGuard::new();
    let mut child = docker_run(&image, &guard, &guard.value);
    let client = connect(&mut child).await;
    assert_eq!(
        call_ok(&client, "echo", json!({ "text": "up" })).await,
        "up"
    );

    // stdin stays open (the client is alive): only the signal can end it.
    let sent = Instant::now();
    let kill = std::process::Command::new(docker())
        .args(["kill", "-s", "TERM", &guard.value])
        .output()
        .expect("docker kill");
    assert!(
        kill.status.success(),
        "docker kill -s TERM failed: {}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let status = wait_exit(&mut child, "after SIGTERM").await;
    eprintln!("SIGTERM to exit: {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    drop(client);
}

/// The host binary under test.
fn server_binary() -> String {
    std::env::var("MCP_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mcp-server").to_owned())
}

/// The host binary, speaking raw JSON-RPC lines.
struct RawServer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _notes: tempfile::TempDir,
}

impl RawServer {
    fn spawn() -> Self {
        let notes = tempfile::tempdir().expect("temporary notes directory");
        let bin = server_binary();
        let mut child = Command::new(&bin)
            .env("MCP_NOTES_DIR", notes.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            _notes: notes,
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.expect("write to server");
        self.stdin.flush().await.expect("flush to server");
    }

    async fn send_raw(&mut self, line: &str) {
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to server");
    }

    /// The next message from the server.
    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(STEP, self.stdout.next_line())
            .await
            .expect("no reply from the server in time")
            .expect("reading the server's stdout")
            .expect("the server closed its stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Send a request and return the reply with the same id.
    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await;
        loop {
            let reply = self.recv().await;
            if reply["id"] == json!(id) {
                return reply;
            }
            assert!(
                reply.get("id").is_none(),
                "reply to another request while waiting for {id}: {reply}"
            );
        }
    }

    /// `initialize` + `notifications/initialized`; the initialize result.
    async fn handshake(&mut self, client: &str) -> Value {
        let reply = self
            .request(
                1,
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": { "name": client, "version": "1.0.0" }
                }),
            )
            .await;
        let result = reply
            .get("result")
            .unwrap_or_else(|| panic!("{client}: initialize failed: {reply}"))
            .clone();
        assert_eq!(result["serverInfo"]["name"], "mcp-server", "{result}");
        assert_eq!(result["protocolVersion"], "2025-06-18", "{result}");
        self.send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .await;
        result
    }

    async fn echo(&mut self, id: u64, text: &str) -> Value {
        self.request(
            id,
            "tools/call",
            json!({ "name": "echo", "arguments": { "text": text } }),
        )
        .await
    }

    async fn close_and_wait(mut self) -> ExitStatus {
        self.stdin
            .shutdown()
            .await
            .expect("close the server's stdin");
        drop(self.stdin);
        tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("the server did not exit after stdin EOF")
            .expect("waiting for the server")
    }
}

#[tokio::test]
async fn binary_accepts_a_new_initialize_on_the_same_stdin() {
    let mut server = RawServer::spawn();

    // Leftovers on the stream before any session (a notification, a late
    // response, garbage) must not prevent the first handshake.
    server
        .send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
        .await;
    server
        .send(json!({ "jsonrpc": "2.0", "id": 9, "result": {} }))
        .await;
    server.send_raw("not json at all\n").await;

    // A first client starts a session, uses it, and goes away without
    // closing stdin.
    server.handshake("first-client").await;
    let reply = server.echo(2, "one").await;
    assert_eq!(reply["result"]["content"][0]["text"], "one", "{reply}");
    // A garbled line from a dying client is ignored.
    server
        .send_raw("{\"jsonrpc\": \"2.0\", \"id\": 4, \"meth\n")
        .await;

    // A second client re-attaches to the same stdin, reusing request ids.
    server.handshake("second-client").await;
    let reply = server.echo(2, "two").await;
    assert_eq!(reply["result"]["content"][0]["text"], "two", "{reply}");
    let reply = server.request(3, "tools/list", json!({})).await;
    assert_eq!(
        reply["result"]["tools"].as_array().map(Vec::len),
        Some(8),
        "{reply}"
    );

    // And a third one, straight after, without using the second session.
    server.handshake("third-client").await;
    let reply = server.echo(2, "three").await;
    assert_eq!(reply["result"]["content"][0]["text"], "three", "{reply}");

    let status = server.close_and_wait().await;
    assert_eq!(status.code(), Some(0), "exit status after stdin EOF");
}

#[tokio::test]
async fn binary_exits_zero_on_sigint_and_sigterm() {
    for signal in ["-INT", "-TERM"] {
        let mut server = RawServer::spawn();
        server.handshake("signal-client").await;
        let pid = server.child.id().expect("server pid").to_string();
        let kill = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill {signal} {pid}");
        let status = tokio::time::timeout(STEP, server.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server ignored {signal}"))
            .expect("waiting for the server");
        assert_eq!(status.code(), Some(0), "exit status after {signal}");
    }
}

#[tokio::test]
async fn container_sleep_reports_progress_and_stops_when_cancelled() {
    let image = require_image();
    let guard = ContainerGuard::new();
    let mut child = docker_run(&image, &guard, &guard.value);
    let (client, mut seen) = connect_recording(&mut child).await;

    // The rmcp client puts a progress token on every request.
    let started = Instant::now();
    assert_eq!(
        call_ok(&client, "sleep", json!({ "seconds": 1, "steps": 4 })).await,
        "slept 1"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "slept only {took:?}");
    let mut progress = Vec::new();
    while let Some(Seen::Progress(p)) = next_seen(&mut seen, Duration::from_millis(200)).await {
        progress.push((p.progress, p.total));
    }
    assert_eq!(
        progress,
        [
            (1.0, Some(4.0)),
            (2.0, Some(4.0)),
            (3.0, Some(4.0)),
            (4.0, Some(4.0))
        ]
    );
    assert_eq!(
        call_ok(&client, "sleep", json!({ "seconds": 0 })).await,
        "slept 0"
    );
    let _ = next_seen(&mut seen, Duration::from_millis(100)).await;

    // Bounded inputs: errors, no panic, no sleeping.
    for bad in [
        json!({ "seconds": 61 }),
        json!({ "seconds": -1 }),
        json!({ "seconds": 1e308 }),
        json!({ "seconds": 1, "steps": 0 }),
        json!({ "seconds": 1, "steps": 101 }),
        json!({ "seconds": 1, "steps": -1 }),
        json!({ "seconds": "1" }),
        json!({}),
    ] {
        let started = Instant::now();
        let error = call_err(&client, "sleep", bad.clone()).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "sleep {bad} slept"
        );
        eprintln!("sleep {bad}: {error}");
    }

    // A long sleep, cancelled after its first progress notification: no more progress
    // follows, no response either, and the server keeps serving.
    let params = CallToolRequestParams::new("sleep").with_arguments(
        json!({ "seconds": 30, "steps": 30 })
            .as_object()
            .cloned()
            .unwrap(),
    );
    let handle = client
        .peer()
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send the long sleep");
    match next_seen(&mut seen, Duration::from_secs(5)).await {
        Some(Seen::Progress(p)) => assert_eq!(p.progress, 1.0, "{p:?}"),
        other => panic!("expected the first progress of the long sleep, got {other:?}"),
    }
    handle
        .cancel(Some("test cancels".to_owned()))
        .await
        .expect("send notifications/cancelled");
    // At most one notification may have crossed the cancellation on the wire.
    let mut late = 0;
    while let Some(s) = next_seen(&mut seen, Duration::from_millis(2500)).await {
        assert!(matches!(s, Seen::Progress(_)), "{s:?}");
        late += 1;
    }
    assert!(late <= 1, "{late} progress notifications after the cancel");
    assert_eq!(
        call_ok(&client, "echo", json!({ "text": "after cancel" })).await,
        "after cancel"
    );

    client.cancel().await.expect("client shutdown");
    assert_eq!(
        wait_exit(&mut child, "after stdin EOF").await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn container_toggle_extra_tool_sends_tools_list_changed() {
    let image = require_image();
    let guard = ContainerGuard::new();
    let mut child = docker_run(&image, &guard, &guard.value);
    let (client, mut seen) = connect_recording(&mut child).await;

    let server = client.peer_info().expect("server info after initialize");
    let tools_capability = server
        .capabilities
        .tools
        .as_ref()
        .expect("tools capability");
    assert_eq!(
        tools_capability.list_changed,
        Some(true),
        "{tools_capability:?}"
    );

    async fn names(client: &RecordingClient) -> Vec<String> {
        let tools = tokio::time::timeout(STEP, client.list_all_tools())
            .await
            .expect("tools/list timed out")
            .expect("tools/list failed");
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort_unstable();
        names
    }

    assert!(!names(&client).await.contains(&"extra".to_owned()));
    let error = call_err(&client, "extra", json!({})).await;
    eprintln!("extra while disabled: {error}");

    for round in 0..2 {
        assert_eq!(
            call_ok(&client, "toggle_extra_tool", json!({ "enabled": true })).await,
            "extra tool enabled"
        );
        match next_seen(&mut seen, Duration::from_secs(5)).await {
            Some(Seen::ToolListChanged) => {}
            other => panic!("round {round}: expected tools/list_changed, got {other:?}"),
        }
        assert!(names(&client).await.contains(&"extra".to_owned()));
        assert_eq!(call_ok(&client, "extra", json!({})).await, "extra");

        assert_eq!(
            call_ok(&client, "toggle_extra_tool", json!({ "enabled": false })).await,
            "extra tool disabled"
        );
        match next_seen(&mut seen, Duration::from_secs(5)).await {
            Some(Seen::ToolListChanged) => {}
            other => panic!("round {round}: expected tools/list_changed, got {other:?}"),
        }
        assert!(!names(&client).await.contains(&"extra".to_owned()));
        call_err(&client, "extra", json!({})).await;
    }
    call_err(&client, "toggle_extra_tool", json!({ "enabled": "yes" })).await;
    call_err(&client, "toggle_extra_tool", json!({})).await;

    client.cancel().await.expect("client shutdown");
    assert_eq!(
        wait_exit(&mut child, "after stdin EOF").await.code(),
        Some(0)
    );
}

/// The Python driver's connection to a fresh `docker run -i` of `image`.
fn python_stdio(image: &str, guard: &ContainerGuard, mode: mcp_py::Mode) -> mcp_py::Connection {
    let mut command = vec![docker().to_owned()];
    command.extend(docker_run_args(image, guard));
    mcp_py::Connection::stdio(command).mode(mode)
}

/// `docker image inspect` succeeds for `image`, or a loud panic naming `how` to build it.
fn require_named_image(image: &str, how: &str) {
    let ok = std::process::Command::new(docker())
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the image {image} is required but absent (or docker does not answer): build it with {how}"
    );
}

const PY_STEP: Duration = Duration::from_secs(90);

#[tokio::test]
async fn python_sdk_drives_the_container_over_stdio() {
    let image = require_image();
    let py = mcp_py::require();
    let guard = ContainerGuard::new();
    for (mode, version) in [
        (mcp_py::Mode::Auto, "2026-07-28"),
        (mcp_py::Mode::Legacy, "2025-11-25"),
    ] {
        let conn = python_stdio(&image, &guard, mode);
        let info = py.run(&conn, "info", &[], PY_STEP).success();
        let info = info.last();
        eprintln!("{mode:?}: {info}");
        assert_eq!(info["protocol_version"], version, "{info}");
        assert_eq!(info["server_name"], "mcp-server", "{info}");
        assert_eq!(info["tools_list_changed"], true, "{info}");
        let tools: Vec<&str> = info["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            tools.contains(&"sleep") && tools.contains(&"toggle_extra_tool"),
            "{info}"
        );
        assert!(!tools.contains(&"extra"), "{info}");

        let out = py
            .run(&conn, "call", &["echo", r#"{"text":"héllo ✓"}"#], PY_STEP)
            .success();
        assert_eq!(
            out.last()["result"]["texts"],
            json!(["héllo ✓"]),
            "{:?}",
            out.lines
        );
        let out = py.run(&conn, "call", &["extra", "{}"], PY_STEP).success();
        let answer = out.last();
        assert!(
            answer.get("error").is_some() || answer["result"]["isError"] == true,
            "extra must fail while disabled: {answer}"
        );

        let out = py.run(&conn, "progress", &[], PY_STEP).success();
        let progress = out.last();
        assert_eq!(
            progress["progress"],
            json!([1.0, 2.0, 3.0, 4.0]),
            "{progress}"
        );
        assert_eq!(
            progress["totals"],
            json!([4.0, 4.0, 4.0, 4.0]),
            "{progress}"
        );
        assert_eq!(
            progress["result"]["texts"],
            json!(["slept 1"]),
            "{progress}"
        );

        // One stdio server: the listener toggles the tool on its own connection; at
        // 2026-07-28 the notification must come on its subscriptions/listen stream.
        let out = py
            .run(
                &conn,
                "listen-changed",
                &["--clients", "1", "--trigger-self", "--settle", "0.2"],
                PY_STEP,
            )
            .success();
        let listened = out.last();
        eprintln!("{mode:?}: {listened}");
        assert_eq!(listened["received"], 1, "{listened}");
        let expected_how = if mode == mcp_py::Mode::Auto {
            "listen"
        } else {
            "message_handler"
        };
        assert_eq!(listened["how"], json!([expected_how]), "{listened}");
        assert!(
            listened["tools_after"][0]
                .as_array()
                .is_some_and(|t| t.contains(&json!("extra"))),
            "{listened}"
        );

        let out = py
            .run(
                &conn,
                "concurrent",
                &["--clients", "2", "--calls", "5"],
                PY_STEP,
            )
            .success();
        let summary = out.last();
        assert_eq!(summary["ok"], 10, "{summary}");
        assert_eq!(summary["mismatches"], 0, "{summary}");
    }
    // Every `docker run --rm` ended with its client.
    assert!(guard.containers().is_empty(), "{:?}", guard.containers());
}

#[tokio::test]
async fn python_sdk_sees_a_transport_error_when_the_container_is_killed() {
    let image = require_image();
    let py = mcp_py::require();
    let guard = ContainerGuard::new();
    for mode in [mcp_py::Mode::Auto, mcp_py::Mode::Legacy] {
        let name = format!(
            "{}-{}",
            guard.value,
            if mode == mcp_py::Mode::Auto {
                "auto"
            } else {
                "legacy"
            }
        );
        let mut command = vec![docker().to_owned()];
        let mut args = docker_run_args(&image, &guard);
        let image_arg = args.pop().unwrap();
        command.extend(args);
        command.extend(["--name".to_owned(), name.clone(), image_arg]);
        let conn = mcp_py::Connection::stdio(command).mode(mode);
        let mut running = py.spawn(&conn, "call-during-kill", &["sleep", r#"{"seconds":20}"#]);
        running.wait_started(PY_STEP).await;
        let kill = std::process::Command::new(docker())
            .args(["kill", &name])
            .output()
            .expect("docker kill");
        assert!(
            kill.status.success(),
            "{}",
            String::from_utf8_lossy(&kill.stderr)
        );
        let out = running.finish(PY_STEP).await.success();
        let ended = out.last();
        eprintln!("{mode:?}: {ended}");
        assert_ne!(ended["outcome"], "result", "{ended}");
        assert!(
            ended["elapsed_ms"].as_f64().is_some_and(|ms| ms < 15_000.0),
            "the killed call must end long before the sleep would: {ended}"
        );
    }
}

#[tokio::test]
async fn python_sdk_drives_the_reference_time_server() {
    let image =
        std::env::var("REFERENCE_IMAGE").unwrap_or_else(|_| "mcp-reference-time:latest".to_owned());
    require_named_image(&image, "scripts/build-reference-image");
    let py = mcp_py::require();
    let guard = ContainerGuard::new();
    for mode in [mcp_py::Mode::Auto, mcp_py::Mode::Legacy] {
        let conn = python_stdio(&image, &guard, mode);
        let info = py.run(&conn, "info", &[], PY_STEP).success();
        let info = info.last();
        eprintln!("{mode:?}: {info}");
        assert_eq!(info["server_name"], "mcp-time", "{info}");
        assert!(
            info["tools"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("get_current_time"))),
            "{info}"
        );
        let out = py
            .run(
                &conn,
                "call",
                &["get_current_time", r#"{"timezone":"UTC"}"#],
                PY_STEP,
            )
            .success();
        let answer = out.last();
        assert_eq!(answer["result"]["isError"], false, "{answer}");
        let text = answer["result"]["texts"][0].as_str().unwrap_or_default();
        let time: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(time["timezone"], "UTC", "{time}");
        assert!(
            time["datetime"]
                .as_str()
                .is_some_and(|d| d.ends_with("+00:00")),
            "{time}"
        );
    }
    assert!(guard.containers().is_empty(), "{:?}", guard.containers());
}
