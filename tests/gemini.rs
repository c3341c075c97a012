//! The Gemini client against `FakeGemini`, a real HTTP server on 127.0.0.1 speaking the REST
//! shapes of the Generative Language API: plain and streamed answers, parallel function calls
//! replayed verbatim, retries (429 with Retry-After, 5xx, before the first stream chunk),
//! timeouts, key errors, and the exact field names and casing of request bodies.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use mcp_orchestrator::chat::gemini::{
    API_KEY_HEADER, ApiKey, Content, FunctionCallingConfig, FunctionResponse, Gemini, GeminiConfig,
    GeminiError, GenerateContentRequest, GenerationConfig, Part, StreamMerger, ToolConfig,
};
use mcp_orchestrator::chat::schema::{self, ToolSpec};
use serde_json::{Map, Value, json};

use common::gemini::{FakeGemini, Step, chunk, error_body, model_content};

const KEY: &str = "test-key-AIzaFAKE";
const MODEL: &str = "gemini-test";

fn config(fake: &FakeGemini) -> GeminiConfig {
    GeminiConfig {
        api_key: ApiKey::new(fake.key()),
        base_url: fake.base_url(),
        default_model: MODEL.into(),
        request_timeout: Duration::from_secs(10),
        stream_idle_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..GeminiConfig::default()
    }
}

fn client(fake: &FakeGemini) -> Gemini {
    Gemini::new(config(fake))
}

fn ask(text: &str) -> GenerateContentRequest {
    GenerateContentRequest {
        contents: vec![Content::user_text(text)],
        ..Default::default()
    }
}

#[tokio::test]
async fn plain_answer() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("Hello from Gemini."));
    let g = client(&fake);

    let r = g.generate("", &ask("Say hello")).await.unwrap();

    assert_eq!(r.text(), "Hello from Gemini.");
    assert_eq!(r.finish_reason(), Some("STOP"));
    assert_eq!(r.content().unwrap().role, "model");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].url(),
        format!("/v1beta/models/{MODEL}:generateContent")
    );
    assert_eq!(reqs[0].header(API_KEY_HEADER), Some(KEY));
    assert!(
        reqs[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    assert_eq!(
        reqs[0].body,
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]})
    );
    fake.assert_consumed();
}

#[tokio::test]
async fn streamed_answer() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::stream_text(&["Hel", "lo, ", "world"]));
    let g = client(&fake);

    let mut stream = g
        .stream_generate("gemini-2.5-flash", &ask("hi"))
        .await
        .unwrap();
    let mut deltas = Vec::new();
    let mut merger = StreamMerger::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        deltas.push(chunk.text());
        merger.push(&chunk);
    }
    assert_eq!(deltas, ["Hel", "lo, ", "world", ""]);
    let merged = merger.finish();
    assert_eq!(merged.text(), "Hello, world");
    assert_eq!(merged.finish_reason(), Some("STOP"));
    assert_eq!(
        serde_json::to_value(merged.content().unwrap()).unwrap(),
        json!({"role": "model", "parts": [
            {"text": "Hello, world"},
            {"text": "", "thoughtSignature": "ZW5kLXNpZw=="}
        ]}),
        "text concatenated; the signature part kept exactly"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].url(),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert!(reqs[0].is_stream());
}

#[tokio::test]
async fn parallel_function_calls_are_replayed_verbatim() {
    let fake = FakeGemini::start(KEY).await;
    let model_turn = model_content(vec![
        json!({"text": "Let me check both.", "thought": true, "thoughtSignature": "VEhPVUdIVA=="}),
        json!({"functionCall": {"id": "fc-1", "name": "get_weather", "args": {"city": "Paris"}},
               "thoughtSignature": "U0lHLTE="}),
        // `partMetadata` is an API field our types do not name: it must survive the replay.
        json!({"functionCall": {"id": "fc-2", "name": "get_weather", "args": {"city": "London"}},
               "partMetadata": {"kept": true}}),
    ]);
    fake.push(Step::model_turn(model_turn.clone()));
    fake.push(Step::text("Paris is sunny, London is rainy."));
    let g = client(&fake);

    let mut req = ask("Weather in Paris and London?");
    let first = g.generate(MODEL, &req).await.unwrap();
    let calls = first.function_calls();
    assert_eq!(calls.len(), 2, "two calls in one turn");
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[1].args.as_ref().unwrap()["city"], "London");
    assert_eq!(first.text(), "", "the thought is not the answer");

    let responses = calls
        .iter()
        .map(|c| {
            let city = c.args.as_ref().unwrap()["city"].as_str().unwrap();
            let mut out = Map::new();
            out.insert("output".into(), json!(format!("{city}: weather")));
            FunctionResponse::to_call(c, out)
        })
        .collect();
    req.contents.push(first.content().unwrap().clone());
    req.contents.push(Content::function_responses(responses));
    let second = g.generate(MODEL, &req).await.unwrap();
    assert_eq!(second.text(), "Paris is sunny, London is rainy.");

    let sent = &fake.requests()[1].body;
    assert_eq!(
        sent["contents"][1], model_turn,
        "the model turn goes back exactly as received, signatures and unknown fields included"
    );
    assert_eq!(
        sent["contents"][2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"id": "fc-1", "name": "get_weather", "response": {"output": "Paris: weather"}}},
            {"functionResponse": {"id": "fc-2", "name": "get_weather", "response": {"output": "London: weather"}}}
        ]})
    );
    fake.assert_consumed();
}

#[tokio::test]
async fn rate_limited_then_success_waits_for_retry_after() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::rate_limited("1"));
    fake.push(Step::text("finally"));
    let g = client(&fake);

    let t = Instant::now();
    let r = g.generate(MODEL, &ask("hi")).await.unwrap();
    let waited = t.elapsed();

    assert_eq!(r.text(), "finally");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].status, 429);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "the retry came {gap:?} after the 429, Retry-After said 1s (backoff alone is 20ms)"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn rate_limited_honours_retry_info_in_the_body() {
    let fake = FakeGemini::start(KEY).await;
    let mut body = error_body(429, "You exceeded your current quota.");
    body["error"]["details"] = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
    ]);
    fake.push(Step::Error {
        status: 429,
        body,
        retry_after: None,
    });
    fake.push(Step::text("ok"));

    client(&fake).generate(MODEL, &ask("hi")).await.unwrap();

    let reqs = fake.requests();
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?}, RetryInfo said 1s"
    );
}

#[tokio::test]
async fn too_long_retry_after_is_not_waited_for() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::rate_limited("3600"));
    let g = Gemini::new(GeminiConfig {
        max_retry_after: Duration::from_secs(5),
        ..config(&fake)
    });

    let t = Instant::now();
    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();

    assert!(t.elapsed() < Duration::from_secs(2));
    match &err {
        GeminiError::Api {
            status: 429,
            retry_after,
            status_text,
            ..
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(3600)));
            assert_eq!(status_text.as_deref(), Some("RESOURCE_EXHAUSTED"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let fake = FakeGemini::start(KEY).await;
    fake.push_all([
        Step::overloaded(),
        Step::error(500, "An internal error has occurred."),
        Step::text("recovered"),
    ]);
    let r = client(&fake).generate(MODEL, &ask("hi")).await.unwrap();
    assert_eq!(r.text(), "recovered");
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
    let reqs = fake.requests();
    assert!(
        reqs[2].at.duration_since(reqs[1].at) >= Duration::from_millis(35),
        "backoff doubles"
    );
}

#[tokio::test]
async fn retries_give_up_with_googles_message() {
    let fake = FakeGemini::start(KEY).await;
    fake.push_all([Step::overloaded(), Step::overloaded(), Step::overloaded()]);
    let g = Gemini::new(GeminiConfig {
        max_retries: 2,
        ..config(&fake)
    });

    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();

    assert!(
        matches!(
            err,
            GeminiError::Api {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Gemini API error (HTTP 503 UNAVAILABLE): The model is overloaded. Please try again later. (after 3 attempts)"
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::error(
        404,
        "models/nope is not found for API version v1beta.",
    ));
    let err = client(&fake)
        .generate("nope", &ask("hi"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GeminiError::Api { status: 404, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("models/nope is not found"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn rejected_key() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("never served"));
    let g = Gemini::new(GeminiConfig {
        api_key: ApiKey::new("AIza-wrong-key"),
        ..config(&fake)
    });

    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(
        matches!(err, GeminiError::KeyRejected { status: 400, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("GOOGLE_API_KEY was rejected"), "{msg}");
    assert!(msg.contains("API key not valid"), "{msg}");
    assert!(!msg.contains("AIza-wrong-key") && !format!("{err:?}").contains("AIza-wrong-key"));

    let err = g.stream_generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(err.is_key_error(), "{err:?}");

    assert_eq!(fake.requests().len(), 2, "a rejected key is not retried");
    assert_eq!(
        fake.remaining(),
        1,
        "rejections do not consume a scripted step"
    );

    // The fake rejects like Google: no key at all is 403 PERMISSION_DENIED.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{MODEL}:generateContent",
            fake.base_url()
        ))
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn missing_key_fails_before_any_request() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("never served"));
    let g = Gemini::new(GeminiConfig {
        api_key: None,
        ..config(&fake)
    });
    assert!(!g.has_api_key());

    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, GeminiError::MissingApiKey), "{err:?}");
    assert!(
        err.to_string().contains("GOOGLE_API_KEY is not set"),
        "{err}"
    );
    let err = g.stream_generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, GeminiError::MissingApiKey), "{err:?}");

    assert!(fake.requests().is_empty());
}

/// Every object key in `v` except inside user data (schemas' property maps, call args,
/// function responses).
fn api_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                if !matches!(
                    k.as_str(),
                    "parametersJsonSchema" | "args" | "response" | "properties"
                ) {
                    api_keys(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| api_keys(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn request_bodies_use_the_rest_field_names() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("ok"));
    fake.push(Step::stream_text(&["ok"]));
    let g = client(&fake);

    let tools = vec![ToolSpec {
        name: "read file".into(),
        description: Some("Read a file from the sandbox".into()),
        input_schema: json!({
            "type": "object",
            "properties": {"path": {"$ref": "#/$defs/Path"}, "tags": {"type": "array"}},
            "required": ["path", "encoding"],
            "$defs": {"Path": {"type": "string", "description": "absolute path"}}
        }),
    }];
    let decls = schema::declarations(&tools);
    let req = GenerateContentRequest {
        contents: vec![
            Content::user_text("Read /etc/hostname"),
            Content::new("model", vec![Part::text("Sure.")]),
            Content::user_text("Now."),
        ],
        tools: decls.tool().into_iter().collect(),
        tool_config: Some(ToolConfig {
            function_calling_config: Some(FunctionCallingConfig {
                mode: Some("AUTO".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        system_instruction: Some(Content::system("You are terse.")),
        generation_config: Some(GenerationConfig {
            temperature: Some(0.2),
            max_output_tokens: Some(256),
            ..Default::default()
        }),
        ..Default::default()
    };

    g.generate(MODEL, &req).await.unwrap();
    let mut s = g.stream_generate(MODEL, &req).await.unwrap();
    while s.next().await.is_some() {}

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.status, 200, "the fake validated the body: {}", r.raw_body);
        let b = &r.body;
        assert_eq!(b["contents"][0]["role"], "user");
        assert_eq!(b["contents"][0]["parts"][0]["text"], "Read /etc/hostname");
        assert_eq!(b["contents"][1]["role"], "model");
        let decl = &b["tools"][0]["functionDeclarations"][0];
        assert_eq!(decl["name"], "read_file");
        assert_eq!(decl["description"], "Read a file from the sandbox");
        assert_eq!(
            decl["parametersJsonSchema"],
            json!({"type": "object",
                   "properties": {"path": {"type": "string", "description": "absolute path"},
                                  "tags": {"type": "array", "items": {}}},
                   "required": ["path"]})
        );
        assert!(decl.get("parameters").is_none());
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "You are terse."}]})
        );
        assert_eq!(b["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 256);
        assert_eq!(b["generationConfig"]["temperature"], 0.2);
        let mut keys = Vec::new();
        api_keys(b, &mut keys);
        assert!(
            keys.iter().all(|k| !k.contains('_')),
            "only lowerCamelCase field names: {keys:?}"
        );

        assert_eq!(r.header(API_KEY_HEADER), Some(KEY));
        assert!(
            !r.url().contains(KEY),
            "the key is never in the URL: {}",
            r.url()
        );
        assert!(!r.url().contains("key="), "{}", r.url());
        assert!(r.header("authorization").is_none());
    }
    assert_eq!(decls.names.mcp_name("read_file"), Some("read file"));
}

#[tokio::test]
async fn a_schema_gemini_rejects_is_refused_raw_and_accepted_normalised() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("ok"));
    let g = client(&fake);
    let raw = json!({
        "type": "object",
        "properties": {"items": {"type": "array"}, "choice": {"anyOf": []},
                       "node": {"$ref": "#/definitions/Node"}},
        "required": ["items", "ghost"],
        "definitions": {"Node": {"type": "object",
                                 "properties": {"next": {"$ref": "#/definitions/Node"}}}}
    });
    let tool = ToolSpec {
        name: "weird tool/v2".into(),
        description: Some("d".into()),
        input_schema: raw.clone(),
    };
    let mut req = ask("hi");
    let mut unnormalised = schema::declarations(std::slice::from_ref(&tool));
    unnormalised.declarations[0].parameters_json_schema = Some(raw);
    req.tools = unnormalised.tool().into_iter().collect();
    let err = g.generate(MODEL, &req).await.unwrap_err();
    assert!(
        matches!(err, GeminiError::Api { status: 400, .. }),
        "the fake refuses what Gemini refuses: {err:?}"
    );

    req.tools = schema::declarations(&[tool]).tool().into_iter().collect();
    let r = g.generate(MODEL, &req).await.unwrap();
    assert_eq!(r.text(), "ok");
    let sent = &fake.requests()[1].body["tools"][0]["functionDeclarations"][0];
    assert_eq!(sent["name"], "weird_tool_v2");
    assert_eq!(
        sent["parametersJsonSchema"]["properties"]["node"],
        json!({"type": "object", "properties": {"next": {"type": "object"}}})
    );
}

#[tokio::test]
async fn stream_is_retried_before_its_first_chunk() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::overloaded());
    fake.push(Step::StreamRaw(format!(
        "data: {}\r\n\r\n",
        error_body(503, "The model is overloaded. Please try again later.")
    )));
    fake.push(Step::stream_text(&["fine"]));
    let g = client(&fake);

    let chunks: Vec<_> = g
        .stream_generate(MODEL, &ask("hi"))
        .await
        .unwrap()
        .collect()
        .await;

    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].as_ref().unwrap().text(), "fine");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn stream_is_not_retried_after_its_first_chunk() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::stream(vec![
        chunk(vec![json!({"text": "partial"})]),
        error_body(500, "An internal error has occurred."),
        chunk(vec![json!({"text": "never seen"})]),
    ]));
    fake.push(Step::text("not requested"));
    let g = client(&fake);

    let items: Vec<_> = g
        .stream_generate(MODEL, &ask("hi"))
        .await
        .unwrap()
        .collect()
        .await;

    assert_eq!(items.len(), 2, "the stream ends after its error");
    assert_eq!(items[0].as_ref().unwrap().text(), "partial");
    let err = items[1].as_ref().unwrap_err();
    assert!(
        matches!(err, GeminiError::Api { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("An internal error has occurred."));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn stalled_stream_hits_the_idle_timeout() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(
        Step::stream(vec![
            chunk(vec![json!({"text": "first"})]),
            chunk(vec![json!({"text": "too late"})]),
        ])
        .with_pause(Duration::from_secs(3)),
    );
    let g = Gemini::new(GeminiConfig {
        stream_idle_timeout: Duration::from_millis(300),
        ..config(&fake)
    });

    let t = Instant::now();
    let mut s = g.stream_generate(MODEL, &ask("hi")).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().text(), "first");
    let err = s.next().await.unwrap().unwrap_err();
    assert!(matches!(err, GeminiError::StreamStalled { .. }), "{err:?}");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert!(s.next().await.is_none());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn slow_answer_hits_the_request_timeout() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Step::text("late").delayed(Duration::from_secs(3)));
    let g = Gemini::new(GeminiConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&fake)
    });
    let t = Instant::now();
    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, GeminiError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn unreachable_api_is_retried_then_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let g = Gemini::new(GeminiConfig {
        api_key: ApiKey::new(KEY),
        base_url: format!("http://127.0.0.1:{port}"),
        max_retries: 2,
        initial_backoff: Duration::from_millis(10),
        ..GeminiConfig::default()
    });
    let err = g.generate(MODEL, &ask("hi")).await.unwrap_err();
    assert!(
        matches!(err, GeminiError::Transport { attempts: 3, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("cannot reach the Gemini API"), "{msg}");
    assert!(!msg.contains(KEY), "{msg}");
}
