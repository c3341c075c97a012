//! The MCP bridge to a real sandbox over the Docker attach API.

mod common;

use std::time::Duration;

use common::*;
use mcp_orchestrator::mcp::McpError;
use mcp_orchestrator::mcp::upstream::McpPool;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("")
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_over_attach_survive_reattach_and_replacement() {
    let mut env = Env::new();
    env.start_orchestrator(&["--stable-after", "1s"]);
    env.apply_yaml(&session_yaml("talk", &env.image, ""));
    let id = env.wait_running("talk", T);
    let pool = McpPool::new(env.runtime().await, Duration::from_secs(10));

    let conn = pool.get("talk", &id).await.expect("attach and initialize");
    let tools: Vec<String> = conn
        .list_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    for want in ["echo", "add", "sandbox_info", "save_note", "read_note"] {
        assert!(tools.contains(&want.to_string()), "{tools:?}");
    }
    let r = conn
        .call_tool("echo", args(json!({"text": "over attach"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "over attach");
    let info = conn
        .call_tool("sandbox_info", args(json!({})))
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&text(&info)).unwrap();
    assert_eq!(info["uid"], 65534, "{info}");
    let ifaces = info["network_interfaces"]
        .as_array()
        .or(info["interfaces"].as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        ifaces.iter().all(|i| i == "lo" || i["name"] == "lo"),
        "only loopback: {info}"
    );
    // The same connection is reused.
    let again = pool.get("talk", &id).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&conn, &again));

    // A second client after the first goes away: the server accepts a fresh initialize.
    pool.forget("talk").await;
    drop(conn);
    drop(again);
    let fresh = pool
        .get("talk", &id)
        .await
        .expect("re-attach and initialize again");
    let r = fresh
        .call_tool("add", args(json!({"a": 2, "b": 3.5})))
        .await
        .unwrap();
    assert!(text(&r).contains("5.5"), "{}", text(&r));

    // The sandbox dies mid-conversation: a clear error, then a working connection once the
    // reconciler has put it back.
    std::thread::sleep(Duration::from_millis(1100));
    docker(&["kill", &id]);
    let err = fresh.call_tool("echo", args(json!({"text": "x"}))).await;
    assert!(
        matches!(err, Err(McpError::Gone(_)) | Err(McpError::Timeout { .. })),
        "{err:?}"
    );
    let id2 = env.wait_running("talk", T);
    let back = pool
        .get("talk", &id2)
        .await
        .expect("a new connection to the repaired sandbox");
    let r = back
        .call_tool("echo", args(json!({"text": "back"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "back");
    // Nothing from before the attach leaked into the protocol (the server logged to stderr).
    let r = back
        .call_tool(
            "save_note",
            args(json!({"name": "n1", "text": "kept in tmpfs"})),
        )
        .await
        .unwrap();
    assert!(!r.is_error.unwrap_or(false), "{}", text(&r));
    let r = back
        .call_tool("read_note", args(json!({"name": "n1"})))
        .await
        .unwrap();
    assert!(text(&r).contains("kept in tmpfs"));
}
