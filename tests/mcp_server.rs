//! Tests of the sandbox MCP server (`src/bin/mcp-server.rs`).
//!
//! The container tests drive the image built by `scripts/build-mcp-image`
//! (`mcp-server:latest`, or `$MCP_IMAGE`) with the rmcp client, under the same
//! restrictions the orchestrator applies. They fail, never skip, when docker
//! or the image is missing. Every container they start carries a unique
//! `orchestrator.mcp.dev/test` label and is removed by label on drop, even
//! when a test fails.
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
    RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    },
    service::RunningService,
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

/// `docker run -i` of the image with the sandbox restrictions.
fn docker_run(image: &str, guard: &ContainerGuard, name: &str) -> Child {
    Command::new(docker())
        .args([
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "65534:65534",
            "--label",
        ])
        .arg(guard.label())
        .args(["--name", name, image])
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

/// Call a tool; panics on a JSON-RPC error or a timeout.
async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
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
async fn call_ok(client: &Client, tool: &str, args: Value) -> String {
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
async fn call_err(client: &Client, tool: &str, args: Value) -> String {
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
            "save_note"
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
        Some(6),
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
