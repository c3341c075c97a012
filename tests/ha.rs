//! Several replicas of `serve` on one instance, Redis and engine: one leader reconciles,
//! standbys serve the API and forward chat turns and MCP gateway requests; takeover after SIGKILL and hand-over
//! after SIGTERM, measured. Real Redis, real Docker, real processes.

mod common;

use std::time::{Duration, Instant};

use common::gemini::{FakeGemini, Step};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Wait until the lease is held by a pid other than `old` (and not free); returns how long.
fn wait_new_leader(env: &Env, old: u32, limit: Duration) -> (u32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(pid) = env.leader_pid()
            && pid != old
        {
            return (pid, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "no new leader within {limit:?} (old leader pid {old})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn container_ids(env: &Env, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let cs = env.containers(n);
            assert_eq!(cs.len(), 1, "{n}: exactly one container: {cs:?}");
            cs[0].0.clone()
        })
        .collect()
}

#[test]
fn one_leader_reconciles_and_a_standby_takes_over_after_sigkill() {
    let env = Env::new();
    let mut a = env.spawn_replica("a", &["--stable-after", "1s"]);
    wait_until(Duration::from_secs(10), "a leads", || {
        env.leader_pid() == Some(a.pid)
    });
    let b = env.spawn_replica("b", &["--stable-after", "1s"]);
    let names = ["ha-1", "ha-2", "ha-3"];
    for n in names {
        env.apply_yaml(&session_yaml(n, &env.image, ""));
    }
    for n in names {
        env.wait_running(n, T);
        env.wait_status(n, T, |s| s["phase"] == "Running");
    }
    let before = container_ids(&env, &names);

    // One leader: only it reconciles; both serve the API and are ready.
    assert_eq!(a.metric("mcpo_leader"), Some(1.0));
    assert_eq!(b.metric("mcpo_leader"), Some(0.0));
    assert!(a.metric("mcpo_leader_term").unwrap_or(0.0) >= 1.0);
    assert_eq!(http_get(&format!("{}/readyz", a.api())).0, 200);
    assert_eq!(http_get(&format!("{}/readyz", b.api())).0, 200);
    assert!(a.log_text().contains("this replica is now the leader"));
    assert!(!b.log_text().contains("this replica is now the leader"));
    assert!(
        !b.log_text().contains("reconcile start"),
        "a standby never reconciles"
    );
    let (code, body) = http_get(&format!("{}/api/v1/sessions/ha-1", b.api()));
    assert_eq!(code, 200, "a standby serves reads: {body}");

    // SIGKILL the leader: the standby takes the lease and reconciles a new session.
    a.kill();
    let killed = Instant::now();
    env.apply_yaml(&session_yaml("ha-new", &env.image, ""));
    let (pid, takeover) = wait_new_leader(&env, a.pid, Duration::from_secs(10));
    assert_eq!(pid, b.pid);
    env.wait_status("ha-new", T, |s| s["phase"] == "Running");
    let reconciled = killed.elapsed();
    eprintln!(
        "takeover after SIGKILL: lease after {} ms, new session Running after {} ms",
        takeover.as_millis(),
        reconciled.as_millis()
    );
    assert!(
        reconciled <= Duration::from_secs(5),
        "reconciling again within 5 s of the SIGKILL: {reconciled:?}"
    );
    // Adopted, not restarted: the same containers, no restart counted.
    assert_eq!(container_ids(&env, &names), before);
    for n in names {
        let s = env.get_json(n).unwrap();
        assert_eq!(s["status"]["restartCount"], 0, "{n}: {s}");
    }
    assert_eq!(b.metric("mcpo_leader"), Some(1.0));
    assert!(b.log_text().contains("this replica is now the leader"));
    // And it repairs: a killed sandbox comes back under the new leader.
    env.docker(&["kill", &before[0]]);
    env.wait_status("ha-1", T, |s| {
        s["phase"] == "Running" && s["restartCount"] == 1
    });
    assert_converged(&env, &["ha-1", "ha-2", "ha-3", "ha-new"].map(String::from));
}

#[test]
fn sigterm_hands_over_within_a_second_and_only_the_last_replica_says_so() {
    let env = Env::new();
    let ids = env.dir.path().join("a.store-id");
    let ids_b = env.dir.path().join("b.store-id");
    let a = env.spawn_replica("a", &["--store-id-file", ids.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "a leads", || {
        env.leader_pid() == Some(a.pid)
    });
    let mut a = a;
    let mut b = env.spawn_replica("b", &["--store-id-file", ids_b.to_str().unwrap()]);
    env.apply_yaml(&session_yaml("hand", &env.image, ""));
    env.wait_status("hand", T, |s| s["phase"] == "Running");
    let before = container_ids(&env, &["hand"]);
    // Both beat: a stop of either is not the last.
    wait_until(Duration::from_secs(5), "two live replicas", || {
        env.redis_cli(&["ZCARD", &format!("mcpo:{}:replicas", env.instance)]) == "2"
    });

    a.terminate();
    let signalled = Instant::now();
    let (pid, handover) = wait_new_leader(&env, a.pid, Duration::from_secs(5));
    assert_eq!(pid, b.pid);
    eprintln!("hand-over after SIGTERM: {} ms", handover.as_millis());
    assert!(
        handover <= Duration::from_secs(1),
        "hand-over within 1 s: {handover:?}"
    );
    assert!(a.wait_exit(Duration::from_secs(15)).success());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(a.log_text().contains("released the lease"));
    let others = std::fs::read_to_string(format!("{}.replicas", ids.display())).unwrap();
    assert_eq!(others.trim(), "1", "b was still live when a stopped");
    // The new leader adopts the sandbox as it is.
    env.apply_yaml(&session_yaml("hand-2", &env.image, ""));
    env.wait_status("hand-2", T, |s| s["phase"] == "Running");
    assert_eq!(container_ids(&env, &["hand"]), before);

    b.terminate();
    assert!(b.wait_exit(Duration::from_secs(15)).success());
    let others = std::fs::read_to_string(format!("{}.replicas", ids_b.display())).unwrap();
    assert_eq!(others.trim(), "0", "b was the last replica");
    assert_eq!(env.leader_pid(), None, "the last leader released the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_forwards_a_chat_turn_to_the_leader_streaming() {
    const KEY: &str = "test-gemini-key-ha";
    let fake = FakeGemini::start(KEY).await;
    let mut env = Env::new();
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    let a = env.spawn_replica("a", &[]);
    wait_until(Duration::from_secs(10), "a leads", || {
        env.leader_pid() == Some(a.pid)
    });
    let b = env.spawn_replica("b", &[]);
    env.apply_yaml(&session_yaml("fwd", &env.image, ""));
    env.wait_status("fwd", T, |s| s["phase"] == "Running");

    // A tool call through the standby: it reaches the sandbox through the leader.
    fake.push(Step::function_calls(&[(
        "echo",
        serde_json::json!({"text": "via the leader"}),
    )]));
    fake.push(Step::stream_text(&["for", "ward", "ed"]));
    let events: Vec<Value> = chat_turn(&b.api(), None, "fwd", "hi").await;
    let texts: Vec<&Value> = events.iter().filter(|e| e["type"] == "text").collect();
    assert!(texts.len() >= 3, "streamed as deltas: {events:?}");
    let result = events
        .iter()
        .find(|e| e["type"] == "tool_result")
        .unwrap_or_else(|| panic!("a tool result: {events:?}"));
    assert!(result.to_string().contains("via the leader"), "{result}");
    assert_eq!(events.last().unwrap()["type"], "done", "{events:?}");
    assert_eq!(b.metric("mcpo_forwarded_requests_total"), Some(1.0));
    assert_eq!(a.metric("mcpo_forwarded_requests_total"), Some(0.0));
    // The history is in Redis: any replica reads it.
    let (code, body) = http_get(&format!("{}/api/v1/sessions/fwd/messages", b.api()));
    assert_eq!(code, 200);
    assert!(body.contains("forwarded"), "{body}");

    // The MCP gateway through the standby (rmcp's Streamable HTTP client): forwarded to the
    // leader, which shares its one upstream with the chat.
    use rmcp::ServiceExt;
    let url = format!("{}/api/v1/sessions/fwd/mcp", b.api());
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url);
    let mcp = tokio::time::timeout(T, ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize through the standby");
    let tools = mcp.peer().list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let args = serde_json::json!({"text": "mcp via the leader"});
    let r = mcp
        .peer()
        .call_tool(
            rmcp::model::CallToolRequestParams::new("echo")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .expect("tools/call");
    assert!(format!("{r:?}").contains("mcp via the leader"), "{r:?}");
    let _ = mcp.cancel().await;
    // The Python SDK in both eras through the standby (2026-07-28 needs its Mcp-Method and
    // Mcp-Name headers passed on).
    let py = common::mcp_py::require();
    let url = format!("{}/api/v1/sessions/fwd/mcp", b.api());
    for mode in [common::mcp_py::Mode::Auto, common::mcp_py::Mode::Legacy] {
        let (py, url) = (py.clone(), url.clone());
        let out = tokio::task::spawn_blocking(move || {
            py.run(
                &common::mcp_py::Connection::http(&url, "no-token-set").mode(mode),
                "call",
                &["echo", r#"{"text": "sdk via the standby"}"#],
                T,
            )
        })
        .await
        .unwrap()
        .success();
        assert_eq!(
            out.last()["result"]["texts"],
            serde_json::json!(["sdk via the standby"]),
            "{mode:?}: {:?}",
            out.lines
        );
    }
    assert!(b.metric("mcpo_forwarded_requests_total").unwrap() >= 3.0);
    assert_eq!(
        a.metric(r#"mcpo_mcp_requests_total{method="tools/call",result="ok"}"#),
        Some(3.0),
        "the leader served the calls"
    );
}

#[test]
fn a_new_leader_keeps_the_crash_loop_back_off() {
    let env = Env::new();
    // Every run shorter than a minute is a crash: back-off 0 s, 1 s, 2 s, 4 s, ...
    let flags = ["--stable-after", "60s"];
    let mut a = env.spawn_replica("a", &flags);
    wait_until(Duration::from_secs(10), "a leads", || {
        env.leader_pid() == Some(a.pid)
    });
    let b = env.spawn_replica("b", &flags);
    env.apply_yaml(&session_yaml("loop", &env.image, ""));
    for i in 1..=3 {
        let id = env.wait_running("loop", T);
        env.wait_status("loop", T, |s| s["phase"] == "Running");
        env.docker(&["kill", &id]);
        env.wait_status("loop", T, |s| {
            s["phase"] == "Running" && s["restartCount"] == i
        });
    }
    let recorded = env.redis_cli(&["HGET", &format!("mcpo:{}:crash", env.instance), "loop"]);
    assert!(recorded.contains("\"streak\":3"), "{recorded}");

    a.kill();
    let (pid, _) = wait_new_leader(&env, a.pid, Duration::from_secs(10));
    assert_eq!(pid, b.pid);
    let id = env.wait_running("loop", T);
    let killed = Instant::now();
    env.docker(&["kill", &id]);
    // The fourth crash in a row waits 4 s under the new leader too, instead of starting over.
    let s = env.wait_status("loop", T, |s| s["phase"] == "BackOff");
    assert_eq!(s["status"]["reason"], "CrashLoopBackOff", "{s}");
    env.wait_status("loop", T, |s| {
        s["phase"] == "Running" && s["restartCount"] == 4
    });
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "restarted after {:?}: the back-off was forgotten",
        killed.elapsed()
    );
}
