//! The MCP gateway (`/api/v1/sessions/{name}/mcp`) and the `mcp` stdio verb, driven by the
//! official MCP Python SDK (tests/mcp/client.py in the venv scripts/test makes), against a
//! real `serve`, Redis and Docker engine.
//!
//! Both protocol eras of the SDK: `auto` (2026-07-28 via `server/discover`) and `legacy`
//! (the 2025-11-25 initialize handshake). Every answer is checked to belong to its request;
//! list changes must reach every client; a sandbox killed mid-call fails the call at once and
//! the same client's next call works after recovery. A reference MCP server we did not
//! write (`mcp-server-time` from PyPI, image made by scripts/build-reference-image) runs
//! behind the gateway and the chat bridge under the full sandbox contract.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::gemini::{FakeGemini, Step};
use common::mcp_py::{self, Connection, Mode};
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "gateway-test-token";

/// The reference server's image (scripts/build-reference-image).
const REFERENCE_IMAGE: &str = "mcp-reference-time:latest";

/// An environment whose `serve` requires [`TOKEN`] (still on loopback).
fn env_with_token() -> Env {
    let mut env = Env::new();
    env.extra_env
        .push(("ORCHESTRATOR_TOKEN".into(), TOKEN.into()));
    let addr = format!("127.0.0.1:{}", env.port);
    env.extra_env.push(("LISTEN_ADDR".into(), addr));
    env
}

/// Wait until `name` runs and its status says so (the gateway goes by the status); returns
/// the container id.
fn running(env: &Env, name: &str) -> String {
    let id = env.wait_running(name, T);
    env.wait_status(name, T, |s| {
        s["phase"] == "Running"
            && s["containerId"]
                .as_str()
                .is_some_and(|c| id.starts_with(c) || c.starts_with(&id))
    });
    id
}

/// The metrics page of a `serve` that requires [`TOKEN`].
fn metrics_text(env: &Env) -> String {
    let out = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("{}/metrics", env.api()))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One sample (`name` with its labels, as rendered) of [`metrics_text`].
fn metric(env: &Env, name: &str) -> f64 {
    metrics_text(env)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Does the `info` output list `tool`?
fn lists_tool(info: &mcp_py::Output, tool: &str) -> bool {
    info.last()["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t == tool))
}

fn mcp_url(env: &Env, name: &str) -> String {
    format!("{}/api/v1/sessions/{name}/mcp", env.api())
}

/// A raw POST to a session's endpoint: (status, headers, body as JSON or Null).
fn raw_post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "Accept: application/json, text/event-stream"]);
    for (k, v) in headers {
        c.args(["-H", &format!("{k}: {v}")]);
    }
    c.args(["--data-binary", "@-"]);
    let out = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(body.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn tools_list_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string()
}

#[test]
fn both_protocol_eras_list_and_call_and_the_policy_and_http_errors_apply() {
    let py = mcp_py::require();
    let mut env = env_with_token();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml(
        "gw",
        &env.image,
        "  mcp:\n    tools: {deny: [sandbox_info]}\n",
    ));
    running(&env, "gw");
    let url = mcp_url(&env, "gw");

    for (mode, version) in [(Mode::Auto, "2026-07-28"), (Mode::Legacy, "2025-11-25")] {
        let conn = Connection::http(&url, TOKEN).mode(mode);
        let info = py.run(&conn, "info", &[], T).success();
        let info = info.last();
        assert_eq!(info["protocol_version"], version, "{info}");
        let tools: Vec<&str> = info["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(tools.contains(&"echo") && tools.contains(&"add"), "{info}");
        assert!(
            !tools.contains(&"sandbox_info"),
            "the policy hides it: {info}"
        );
        assert_eq!(info["tools_list_changed"], true, "{info}");

        let call = py.run(&conn, "call", &["add", r#"{"a": 2, "b": 3.5}"#], T);
        let call = call.success();
        assert_eq!(
            call.last()["result"]["texts"],
            json!(["5.5"]),
            "{:?}",
            call.lines
        );

        let denied = py.run(&conn, "call", &["sandbox_info", "{}"], T).success();
        let err = &denied.last()["error"];
        assert_eq!(err["code"], -32602, "{err}");
        assert!(
            err["message"].as_str().unwrap().contains("spec.mcp.tools"),
            "{err}"
        );
    }

    // A wrong token: 401 before anything else.
    let bad = py.run(
        &Connection::http(&url, "wrong-token"),
        "info",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        !bad.status.success(),
        "a wrong token must fail: {:?}",
        bad.lines
    );

    // Unsupported protocol version (header): 400 with a JSON-RPC error body.
    let (code, body) = raw_post(
        &url,
        &[("MCP-Protocol-Version", "1999-01-01")],
        &tools_list_body(),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1999-01-01"),
        "{body}"
    );
    // A browser origin that is not allowed: 403.
    let (code, body) = raw_post(
        &url,
        &[("Origin", "http://evil.example")],
        &tools_list_body(),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
    // Over the request size limit (1 MiB by default): 413.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(2 << 20)}}});
    let (code, body) = raw_post(&url, &[], &big.to_string());
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
    // A missing session: 404 with a JSON-RPC error naming it.
    let (code, body) = raw_post(&mcp_url(&env, "nope"), &[], &tools_list_body());
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"]["code"], -32005, "{body}");
    assert_eq!(body["error"]["data"]["session"], "nope", "{body}");
    // A session whose sandbox does not run: 409 or 503 (on its way), JSON-RPC -32001.
    env.apply_yaml(&session_yaml(
        "down",
        "mcp-server:no-such-tag",
        "  restartPolicy: Never\n",
    ));
    env.wait_status("down", T, |s| s["phase"] != "Pending");
    let (code, body) = raw_post(&mcp_url(&env, "down"), &[], &tools_list_body());
    assert!(code == 409 || code == 503, "{code} {body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    assert_eq!(body["error"]["data"]["reason"], "NotRunning", "{body}");

    // Metrics by method and result.
    let metrics = metrics_text(&env);
    assert!(
        metrics.contains(r#"mcpo_mcp_requests_total{method="tools/call",result="denied"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mcpo_mcp_requests_total{method="tools/call",result="ok"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_clients_and_a_chat_turn_share_one_sandbox_and_list_changes_reach_everyone() {
    const KEY: &str = "test-gemini-key-gw";
    let py = mcp_py::require();
    let fake = FakeGemini::start(KEY).await;
    let mut env = env_with_token();
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("shared", &env.image, ""));
    running(&env, "shared");
    let url = mcp_url(&env, "shared");

    // 10 clients × 20 echo calls (each answer checked against its own request) while a
    // chat turn calls the same sandbox.
    fake.push(Step::function_calls(&[(
        "echo",
        json!({"text": "the chat's own text"}),
    )]));
    fake.push(Step::stream_text(&["done"]));
    let crowd = {
        let (py, url) = (py.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            py.run(
                &Connection::http(&url, TOKEN),
                "concurrent",
                &["--clients", "10", "--calls", "50"],
                Duration::from_secs(180),
            )
        })
    };
    // The chat starts once the crowd is calling, so they overlap.
    let ok = r#"mcpo_mcp_requests_total{method="tools/call",result="ok"}"#;
    wait_until(T, "the crowd is calling", || metric(&env, ok) >= 20.0);
    let events = chat_turn(&env.api(), Some(TOKEN), "shared", "echo something").await;
    let result = events
        .iter()
        .find(|e| e["type"] == "tool_result")
        .unwrap_or_else(|| panic!("a tool result: {events:?}"));
    assert_eq!(result["output"], "the chat's own text", "{result}");
    let crowd = crowd.await.unwrap().success();
    let summary = crowd.last();
    assert_eq!(summary["ok"], 500, "{summary}");
    assert_eq!(
        metric(&env, ok),
        500.0,
        "the chat's tool call goes to the shared upstream directly, not through the gateway"
    );
    assert_eq!(summary["mismatches"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");

    // One upstream for all of them: one attach, one initialize.
    let attaches = env.log_text().matches("MCP session attached").count();
    assert_eq!(attaches, 1, "one upstream per container");

    // tools/list_changed reaches every client, in both eras.
    for mode in [Mode::Legacy, Mode::Auto] {
        let conn = Connection::http(&url, TOKEN).mode(mode);
        let out = py
            .run(
                &conn,
                "listen-changed",
                &["--clients", "5", "--trigger", "--reset"],
                Duration::from_secs(90),
            )
            .success();
        let r = out.last();
        assert_eq!(r["received"], 5, "{mode:?}: {r}");
        for tools in r["tools_after"].as_array().unwrap() {
            assert!(
                tools.as_array().unwrap().iter().any(|t| t == "extra"),
                "{mode:?}: every client sees the new tool: {r}"
            );
        }
    }

    // Progress goes back to the client that asked, under its own token.
    let out = py
        .run(&Connection::http(&url, TOKEN), "progress", &[], T)
        .success();
    // Rising values of this request's 4 steps (the last one may lose the race with the
    // answer: progress after the answer has no route any more).
    let p = out.last();
    let values: Vec<f64> = p["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(values.len() >= 3, "{p}");
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{p}");
    assert!(values.iter().all(|v| (1.0..=4.0).contains(v)), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_killed_mid_call_fails_the_call_at_once_and_the_client_carries_on() {
    let py = mcp_py::require();
    let mut env = env_with_token();
    env.extra_env.push(("MCP_MAX_IN_FLIGHT".into(), "3".into()));
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("victim", &env.image, ""));
    let first = running(&env, "victim");
    let url = mcp_url(&env, "victim");

    // The per-session limit: 3 in flight, then a 4th and 5th are refused at once.
    let in_flight = "mcpo_mcp_in_flight";
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let (py, url) = (py.clone(), url.clone());
        sleepers.push(tokio::task::spawn_blocking(move || {
            py.run(
                &Connection::http(&url, TOKEN),
                "call",
                &["sleep", r#"{"seconds": 8}"#],
                T,
            )
        }));
    }
    wait_until(T, "3 calls in flight", || metric(&env, in_flight) == 3.0);
    for _ in 0..2 {
        let out = py
            .run(
                &Connection::http(&url, TOKEN),
                "call",
                &["echo", r#"{"text": "x"}"#],
                T,
            )
            .success();
        assert_eq!(out.last()["error"]["code"], -32002, "{:?}", out.lines);
    }
    for s in sleepers {
        let out = s.await.unwrap().success();
        let text = out.last()["result"]["texts"][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(text.starts_with("slept"), "{:?}", out.lines);
    }
    assert_eq!(metric(&env, in_flight), 0.0);

    let mut call = py.spawn(
        &Connection::http(&url, TOKEN),
        "call-during-kill",
        &["sleep", r#"{"seconds": 30}"#, "--retry-until-ok", "60"],
    );
    call.wait_started(T).await;
    wait_until(T, "the call in flight", || metric(&env, in_flight) == 1.0);
    env.docker(&["kill", &first]);
    let killed_at = Instant::now();
    let failed = call.next_json(T).await.expect("the call's outcome");
    assert_eq!(failed["outcome"], "jsonrpc_error", "{failed}");
    assert_eq!(failed["code"], -32001, "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("victim"),
        "the error names the session: {failed}"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the call failed at once, not at its timeout ({:?})",
        killed_at.elapsed()
    );
    // The reconciler puts the sandbox back; the same client's next call works.
    let recovered = call
        .next_json(Duration::from_secs(90))
        .await
        .expect("recovery");
    assert_eq!(recovered["recovered"], true, "{recovered}");
    running(&env, "victim");
    call.finish(T).await.success();
}

#[test]
fn a_client_cancel_or_disconnect_cancels_the_call_in_the_sandbox() {
    let py = mcp_py::require();
    let mut env = env_with_token();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("cancel", &env.image, ""));
    let id = running(&env, "cancel");
    let url = mcp_url(&env, "cancel");
    // Legacy: the SDK sends notifications/cancelled; 2026-07-28: it closes the request's
    // stream. Either way the sandbox's server must see its request cancelled (its `sleep`
    // logs "sleep cancelled" on stderr) long before the 20 s are up.
    for (i, mode) in [Mode::Legacy, Mode::Auto].into_iter().enumerate() {
        let conn = Connection::http(&url, TOKEN).mode(mode);
        let out = py
            .run(
                &conn,
                "call-cancel",
                &["sleep", r#"{"seconds": 20}"#, "--after", "1"],
                T,
            )
            .success();
        assert_eq!(out.last()["cancelled"], true, "{:?}", out.lines);
        wait_until(
            Duration::from_secs(5),
            &format!("{mode:?}: the sandbox's sleep cancelled"),
            || {
                let logs = Command::new(docker_bin())
                    .args(["logs", &id])
                    .output()
                    .expect("docker logs");
                String::from_utf8_lossy(&logs.stderr)
                    .matches("sleep cancelled")
                    .count()
                    > i
            },
        );
    }
}

#[test]
fn the_stdio_verb_serves_a_session_to_a_stdio_client() {
    let py = mcp_py::require();
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("desk", &env.image, ""));
    running(&env, "desk");
    let bin = env!("CARGO_BIN_EXE_mcp-orchestrator");
    let server = env.api();
    let conn = || Connection::stdio([bin, "--server", server.as_str(), "mcp", "desk"]);
    let info = py.run(&conn(), "info", &[], T).success();
    assert!(lists_tool(&info, "echo"), "{:?}", info.lines);
    let call = py
        .run(
            &conn(),
            "call",
            &["echo", r#"{"text": "through stdio"}"#],
            T,
        )
        .success();
    assert_eq!(call.last()["result"]["texts"], json!(["through stdio"]));
    // A list change travels gateway → stdio proxy → client.
    let out = py
        .run(
            &conn().mode(Mode::Legacy),
            "listen-changed",
            &["--clients", "1", "--trigger-self", "--reset"],
            Duration::from_secs(90),
        )
        .success();
    assert_eq!(out.last()["received"], 1, "{:?}", out.lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reference_server_from_pypi_works_behind_the_gateway_and_the_chat() {
    const KEY: &str = "test-gemini-key-ref";
    let py = mcp_py::require();
    let images = docker(&["images", "-q", REFERENCE_IMAGE]);
    assert!(
        !images.is_empty(),
        "{REFERENCE_IMAGE} is missing: scripts/test builds it (scripts/build-reference-image)"
    );
    let fake = FakeGemini::start(KEY).await;
    let mut env = env_with_token();
    env.extra_env.push((
        "ALLOWED_IMAGES".into(),
        "mcp-server:*,mcp-reference-time:*".into(),
    ));
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("clock", REFERENCE_IMAGE, ""));
    let id = running(&env, "clock");
    // Under the full contract: no network, read-only root, no capabilities.
    let inspect = env.docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}",
        &id,
    ]);
    assert!(inspect.starts_with("none true"), "{inspect}");
    assert!(inspect.contains("ALL"), "{inspect}");

    let url = mcp_url(&env, "clock");
    for mode in [Mode::Auto, Mode::Legacy] {
        let conn = Connection::http(&url, TOKEN).mode(mode);
        let info = py.run(&conn, "info", &[], T).success();
        assert!(lists_tool(&info, "get_current_time"), "{:?}", info.lines);
        let call = py
            .run(
                &conn,
                "call",
                &["get_current_time", r#"{"timezone": "UTC"}"#],
                T,
            )
            .success();
        let text = call.last()["result"]["texts"][0].as_str().unwrap_or("");
        assert!(text.contains("UTC"), "{:?}", call.lines);
    }

    fake.push(Step::function_calls(&[(
        "get_current_time",
        json!({"timezone": "UTC"}),
    )]));
    fake.push(Step::stream_text(&["It is now."]));
    let events = chat_turn(&env.api(), Some(TOKEN), "clock", "what time is it?").await;
    let result = events
        .iter()
        .find(|e| e["type"] == "tool_result")
        .unwrap_or_else(|| panic!("a tool result: {events:?}"));
    assert_eq!(result["isError"], false, "{result}");
    assert!(
        result["output"].as_str().unwrap().contains("UTC"),
        "{result}"
    );
    assert_eq!(events.last().unwrap()["type"], "done", "{events:?}");
}
