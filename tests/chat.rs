//! Chat end to end: a real `serve`, a real mcp-server sandbox reached over docker attach,
//! Redis history, and a real local HTTP server speaking Gemini's REST shapes (no internet).

mod common;

use std::time::Duration;

use common::gemini::{FakeGemini, Step};
use common::*;
use mcp_orchestrator::client::ApiClient;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const KEY: &str = "test-gemini-key-123";

async fn setup(fake: &FakeGemini) -> Env {
    let mut env = Env::new();
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    env.start_orchestrator(&["--stable-after", "1s"]);
    env
}

/// Send one message and collect every event until `done` or `error`.
async fn chat(env: &Env, name: &str, msg: &str) -> Vec<Value> {
    chat_turn(&env.api(), None, name, msg).await
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_answers_tools_parallel_calls_and_history() {
    let fake = FakeGemini::start(KEY).await;
    let env = setup(&fake).await;
    env.apply_yaml(&session_yaml(
        "talk",
        &env.image,
        "  chat:\n    systemInstruction: You are terse.\n    tools: {deny: [list_notes]}\n",
    ));
    env.wait_running("talk", T);
    env.wait_status("talk", T, |s| s["phase"] == "Running");

    // 1. A plain answer, streamed in pieces.
    fake.push(Step::stream_text(&["Hel", "lo ", "there"]));
    let events = chat(&env, "talk", "hi").await;
    let text: String = of_type(&events, "text")
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello there");
    assert!(
        of_type(&events, "text").len() >= 3,
        "delivered as deltas: {events:?}"
    );
    assert_eq!(of_type(&events, "done")[0]["text"], "Hello there");
    let req = &fake.requests()[0];
    assert!(
        req.is_stream()
            && req
                .url()
                .contains("models/gemini-test:streamGenerateContent")
    );
    assert!(req.query.as_deref().unwrap_or_default().contains("alt=sse"));
    assert_eq!(req.header("x-goog-api-key"), Some(KEY));
    assert!(!req.url().contains(KEY), "the key goes in the header only");
    assert_eq!(
        req.body["systemInstruction"]["parts"][0]["text"],
        "You are terse."
    );
    assert_eq!(req.body["contents"][0]["role"], "user");
    assert_eq!(req.body["contents"][0]["parts"][0]["text"], "hi");
    let decls = req.body["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = decls.iter().map(|d| d["name"].as_str().unwrap()).collect();
    for want in ["echo", "add", "sandbox_info", "save_note", "read_note"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(
        !names.contains(&"list_notes"),
        "the deny list applies: {names:?}"
    );
    let echo = decls.iter().find(|d| d["name"] == "echo").unwrap();
    assert!(
        echo["parametersJsonSchema"]["properties"]["text"].is_object(),
        "{echo}"
    );
    assert!(echo.get("parameters").is_none());

    // 2. A function call routed to the real sandbox, and two in parallel.
    fake.push(Step::function_calls(&[(
        "echo",
        json!({"text": "from the sandbox"}),
    )]));
    fake.push(Step::function_calls(&[
        ("add", json!({"a": 2, "b": 3.5})),
        ("sandbox_info", json!({})),
    ]));
    fake.push(Step::stream_text(&["All done."]));
    let events = chat(&env, "talk", "use your tools").await;
    let calls = of_type(&events, "tool_call");
    let results = of_type(&events, "tool_result");
    assert_eq!(calls.len(), 3, "{events:?}");
    assert_eq!(results.len(), 3, "{events:?}");
    let echo_result = results.iter().find(|r| r["name"] == "echo").unwrap();
    assert_eq!(echo_result["output"], "from the sandbox");
    assert_eq!(echo_result["isError"], false);
    assert!(
        results.iter().find(|r| r["name"] == "add").unwrap()["output"]
            .as_str()
            .unwrap()
            .contains("5.5")
    );
    let info: Value = serde_json::from_str(
        results
            .iter()
            .find(|r| r["name"] == "sandbox_info")
            .unwrap()["output"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["uid"], 65534);
    assert_eq!(of_type(&events, "done")[0]["text"], "All done.");

    let reqs = fake.requests();
    // The request after the echo call carries the model turn verbatim, then our response.
    let after_echo = &reqs[2].body["contents"];
    let n = after_echo.as_array().unwrap().len();
    let model_turn = &after_echo[n - 2];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(model_turn["parts"][0]["functionCall"]["name"], "echo");
    assert!(
        model_turn["parts"][0]["thoughtSignature"].is_string(),
        "thoughtSignature replayed: {model_turn}"
    );
    let resp = &after_echo[n - 1];
    assert_eq!(resp["role"], "user");
    assert_eq!(resp["parts"][0]["functionResponse"]["name"], "echo");
    assert_eq!(
        resp["parts"][0]["functionResponse"]["response"]["output"],
        "from the sandbox"
    );
    assert_eq!(
        resp["parts"][0]["functionResponse"]["id"],
        model_turn["parts"][0]["functionCall"]["id"]
    );
    // Both parallel responses went back in one turn.
    let after_parallel = reqs[3].body["contents"].as_array().unwrap();
    let last = after_parallel.last().unwrap();
    assert_eq!(last["parts"].as_array().unwrap().len(), 2, "{last}");

    // 3. The history holds every turn, survives a restart of the orchestrator, and is sent back.
    let history: Value = reqwest::get(format!("{}/api/v1/sessions/talk/messages", env.api()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = history["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        8,
        "user, model, user, (model calls, tool results)×2, model: {history}"
    );
    let mut env = env;
    env.kill_orchestrator();
    env.start_orchestrator(&["--stable-after", "1s"]);
    fake.push(Step::stream_text(&["Still here."]));
    let events = chat(&env, "talk", "remember me?").await;
    assert_eq!(of_type(&events, "done")[0]["text"], "Still here.");
    let last_req = fake.requests().last().unwrap().body.clone();
    let contents = last_req["contents"].as_array().unwrap();
    assert_eq!(
        contents.len(),
        items.len() + 1,
        "the whole history plus the new message"
    );
    assert_eq!(contents[0]["parts"][0]["text"], "hi");

    // Clearing it.
    let c = reqwest::Client::new();
    let r: Value = c
        .delete(format!("{}/api/v1/sessions/talk/messages", env.api()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["deleted"], items.len() + 2);
    fake.assert_consumed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_errors_and_a_sandbox_killed_mid_conversation() {
    let fake = FakeGemini::start(KEY).await;
    let env = setup(&fake).await;
    env.apply_yaml(&session_yaml("live", &env.image, ""));
    let id = env.wait_running("live", T);
    env.wait_status("live", T, |s| s["phase"] == "Running");

    // A 429 with Retry-After, then success.
    fake.push(Step::rate_limited("1"));
    fake.push(Step::stream_text(&["after the wait"]));
    let started = std::time::Instant::now();
    let events = chat(&env, "live", "hello").await;
    assert_eq!(
        of_type(&events, "done")[0]["text"],
        "after the wait",
        "{events:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    assert_eq!(fake.requests().len(), 2);

    // Missing and not-running sessions answer at once.
    let c = reqwest::Client::new();
    let t0 = std::time::Instant::now();
    let r = c
        .post(format!("{}/api/v1/sessions/nope/chat", env.api()))
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    env.apply_yaml(&session_yaml("broken", "mcp-server:does-not-exist", ""));
    env.wait_status("broken", T, |s| s["phase"] == "BackOff");
    let r = c
        .post(format!("{}/api/v1/sessions/broken/chat", env.api()))
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "NotRunning");
    assert!(t0.elapsed() < Duration::from_secs(10), "no hang");
    let r = c
        .post(format!("{}/api/v1/sessions/live/chat", env.api()))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // The sandbox is killed mid-conversation: the next turn works once it is replaced.
    std::thread::sleep(Duration::from_millis(1100));
    fake.push(Step::function_calls(&[("echo", json!({"text": "before"}))]));
    fake.push(Step::stream_text(&["ok"]));
    let events = chat(&env, "live", "one").await;
    assert_eq!(of_type(&events, "tool_result")[0]["output"], "before");
    docker(&["kill", &id]);
    env.wait_running("live", T);
    env.wait_status("live", T, |s| {
        s["phase"] == "Running" && s["restartCount"] == 1
    });
    fake.push(Step::function_calls(&[("echo", json!({"text": "after"}))]));
    fake.push(Step::stream_text(&["fine"]));
    let events = chat(&env, "live", "two").await;
    assert_eq!(
        of_type(&events, "tool_result")[0]["output"],
        "after",
        "{events:?}"
    );
    assert_eq!(of_type(&events, "done")[0]["text"], "fine");

    // The CLI shows the tool calls as they happen.
    fake.push(Step::function_calls(&[("echo", json!({"text": "cli"}))]));
    fake.push(Step::stream_text(&["from the cli"]));
    let out = env.cli(&["--server", &env.api(), "chat", "live", "go"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("→ echo(") && stdout.contains("← cli") && stdout.contains("from the cli"),
        "{stdout}"
    );
    assert!(
        !env.log_text().contains(KEY),
        "the key never reaches the log"
    );
    fake.assert_consumed();
}

/// Issue 9, item 7: one turn per session (409), the chat stream cap (429), a turn cancelled
/// when its client disconnects (no further model call), and SIGTERM with a chat stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_are_exclusive_capped_and_cancelled_with_their_client() {
    let fake = FakeGemini::start(KEY).await;
    let mut env = Env::new();
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    env.extra_env.push(("MAX_CHATS".into(), "1".into()));
    env.start_orchestrator(&["--stable-after", "1s"]);
    env.apply_yaml(&session_yaml("solo", &env.image, ""));
    env.wait_running("solo", T);
    env.wait_status("solo", T, |s| s["phase"] == "Running");
    let c = reqwest::Client::new();
    let url = |n: &str| format!("{}/api/v1/sessions/{n}/chat", env.api());

    // A turn whose first model answer (a tool call) takes 2 s; a second step is scripted but
    // must never be asked for once the client has gone.
    fake.push(
        Step::function_calls(&[("echo", json!({"text": "x"}))]).delayed(Duration::from_secs(2)),
    );
    fake.push(Step::stream_text(&["never"]));
    let first = c
        .post(url("solo"))
        .json(&json!({"message": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    fake.wait_for_requests(1, T).await;

    // Same session: 409 TurnInProgress. Another session beyond MAX_CHATS=1: 429.
    let r = c
        .post(url("solo"))
        .json(&json!({"message": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "TurnInProgress", "{v}");
    let r = c
        .post(url("elsewhere"))
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "TooManyRequests", "{v}");

    // The client goes away: the turn stops, the second model call never happens.
    drop(first);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        fake.requests().len(),
        1,
        "no model call after the client left"
    );
    assert_eq!(fake.remaining(), 1);
    assert!(
        env.log_text().contains("chat turn cancelled"),
        "the turn was cancelled"
    );
    // The session and the slot are free again: the next turn runs (and uses the step left).
    let events = chat(&env, "solo", "are you there?").await;
    assert_eq!(of_type(&events, "done")[0]["text"], "never", "{events:?}");

    // SIGTERM with a chat stream open: serve stops within its grace period.
    fake.push(Step::stream_text(&["late"]).delayed(Duration::from_secs(30)));
    let open = c
        .post(url("solo"))
        .json(&json!({"message": "slow again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    fake.wait_for_requests(3, T).await;
    let t0 = std::time::Instant::now();
    env.stop_orchestrator();
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let rest = tokio::time::timeout(Duration::from_secs(5), open.text()).await;
    assert!(rest.is_ok(), "the chat stream ends on shutdown");
}

/// One sandbox that never answers (its process is stopped: Docker still says running, so
/// nothing replaces it) does not hold up chat on another session: the MCP pool locks per
/// container, not globally, and the stuck attach ends at the MCP call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_sandbox_does_not_block_chat_on_another() {
    let fake = FakeGemini::start(KEY).await;
    let mut env = Env::new();
    env.extra_env.push(("GOOGLE_API_KEY".into(), KEY.into()));
    env.extra_env
        .push(("GEMINI_BASE_URL".into(), fake.base_url()));
    env.extra_env
        .push(("GEMINI_MODEL".into(), "gemini-test".into()));
    env.start_orchestrator(&["--mcp-call-timeout", "6s"]);
    env.apply_yaml(&format!(
        "{}---\n{}",
        session_yaml("stuck", &env.image, ""),
        session_yaml("fine", &env.image, "")
    ));
    let stuck = env.wait_running("stuck", T);
    env.wait_running("fine", T);
    env.wait_status("stuck", T, |s| s["phase"] == "Running");
    env.wait_status("fine", T, |s| s["phase"] == "Running");
    docker(&["kill", "--signal", "STOP", &stuck]);

    let api = env.api();
    let t0 = std::time::Instant::now();
    let blocked = tokio::spawn(async move {
        let client = ApiClient::new(&api, None);
        client.chat("stuck", "hello?").await.map(|_| ())
    });
    // Let the stuck turn take its sandbox's lock and hang in attach + initialize.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.push(Step::stream_text(&["unaffected"]));
    let started = std::time::Instant::now();
    let events = chat(&env, "fine", "hi").await;
    let took = started.elapsed();
    assert_eq!(
        of_type(&events, "done")[0]["text"],
        "unaffected",
        "{events:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the other session waited {took:?}"
    );

    let stuck_result = tokio::time::timeout(T, blocked)
        .await
        .expect("the stuck turn ends (MCP call timeout), it does not hang")
        .unwrap();
    assert!(stuck_result.is_err(), "a stopped sandbox cannot answer");
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    docker(&["kill", "--signal", "CONT", &stuck]);
}
