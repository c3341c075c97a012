//! `FakeGemini`: a real HTTP server on 127.0.0.1 that speaks the Gemini REST shapes
//! (Generative Language API `v1beta`), for tests. Point the client (or the orchestrator, via
//! `GEMINI_BASE_URL`) at [`FakeGemini::base_url`].
//!
//! ```ignore
//! let fake = FakeGemini::start("test-key").await;
//! fake.push(Step::text("Hello!"));
//! fake.push(Step::stream_text(&["Hel", "lo"]));
//! // ... run the code under test with GEMINI_BASE_URL = fake.base_url() ...
//! let reqs = fake.requests();
//! assert_eq!(reqs[0].body["contents"][0]["role"], "user");
//! ```
//!
//! What it does, per request:
//! 1. **Records** it ([`Recorded`]: method, path, query, headers, JSON body, the status it
//!    answered) — every request, rejected ones included.
//! 2. **Routes** `POST /v1beta/models/{model}:generateContent` and
//!    `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`; anything else is 404.
//! 3. **Checks the key like Google**: `x-goog-api-key` (or `?key=`) missing → 403
//!    `PERMISSION_DENIED`; wrong → 400 `INVALID_ARGUMENT` "API key not valid. Please pass a
//!    valid API key." with `details[].reason = "API_KEY_INVALID"`.
//! 4. **Checks the body** (unless [`FakeGemini::set_validation`] turned it off), answering
//!    400 `INVALID_ARGUMENT` with a Google-style message: unknown field names (only the
//!    REST API's lowerCamelCase names are known — a snake_case or misspelt field fails),
//!    empty `contents`, roles other than `user`/`model`, parts without data, invalid function
//!    names (`^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$`), `parameters` together with
//!    `parametersJsonSchema`, and in `parametersJsonSchema` what issue 5 says Gemini rejects:
//!    `$ref`, `$defs`/`definitions`, arrays without `items`, `required` naming a property that
//!    does not exist, empty `anyOf`. This approximates Google's validation; it is not a copy.
//! 5. **Answers with the next scripted [`Step`]** (one FIFO queue for both endpoints). A
//!    `Generate` step on the streaming endpoint is sent as a single SSE event; a `Stream` step
//!    on `generateContent` is a 400 (script mistake). An empty queue answers 400
//!    `FAILED_PRECONDITION` "FakeGemini: no scripted step left" — not retried by clients, so a
//!    missing step fails fast. Key and body rejections do not consume a step.
//!
//! SSE events are written as `data: <json>\r\n\r\n`, like Google's.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// 200 with this `GenerateContentResponse` JSON (one SSE event on the streaming endpoint).
    Generate(Value),
    /// 200 `text/event-stream`: one `data:` event per chunk, waiting `pause` before every
    /// chunk after the first (to test idle timeouts).
    Stream {
        /// The chunks (`GenerateContentResponse` JSON, or `{"error": ...}` objects).
        chunks: Vec<Value>,
        /// Wait before each chunk but the first.
        pause: Duration,
    },
    /// 200 `text/event-stream` with exactly this body.
    StreamRaw(String),
    /// An error answer with a Google error envelope and an optional `Retry-After` header.
    Error {
        /// HTTP status.
        status: u16,
        /// The body (normally `{"error": {"code", "message", "status"}}`).
        body: Value,
        /// The `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Wait this long, then answer with the inner step.
    Delay(Duration, Box<Step>),
}

impl Step {
    /// A plain text answer (`finishReason: STOP`).
    pub fn text(text: &str) -> Step {
        Step::Generate(response(model_content(vec![json!({"text": text})])))
    }

    /// An answer whose first candidate has exactly this `content` (e.g. function calls with
    /// `thoughtSignature`s), `finishReason: STOP`.
    pub fn model_turn(content: Value) -> Step {
        Step::Generate(response(content))
    }

    /// An answer calling these functions in parallel (one `functionCall` part each, ids
    /// `call-1`, `call-2`, ...; the first part carries a `thoughtSignature`).
    pub fn function_calls(calls: &[(&str, Value)]) -> Step {
        let parts = calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                let mut part = json!({"functionCall": {"id": format!("call-{}", i + 1), "name": name, "args": args}});
                if i == 0 {
                    part["thoughtSignature"] = json!("ZmFrZS1zaWduYXR1cmU=");
                }
                part
            })
            .collect();
        Step::Generate(response(model_content(parts)))
    }

    /// A streamed text answer: one chunk per piece, then a final chunk with an empty text part
    /// carrying a `thoughtSignature`, `finishReason: STOP` and `usageMetadata` (as Google ends
    /// streams of thinking models).
    pub fn stream_text(pieces: &[&str]) -> Step {
        let mut chunks: Vec<Value> = pieces
            .iter()
            .map(|p| chunk(vec![json!({"text": p})]))
            .collect();
        chunks.push(json!({
            "candidates": [{"content": model_content(vec![json!({"text": "", "thoughtSignature": "ZW5kLXNpZw=="})]),
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": pieces.len(), "totalTokenCount": 4 + pieces.len()},
            "modelVersion": "fake-gemini-001",
            "responseId": "fake-response"
        }));
        Step::Stream {
            chunks,
            pause: Duration::ZERO,
        }
    }

    /// A stream of these chunks, sent without pauses.
    pub fn stream(chunks: Vec<Value>) -> Step {
        Step::Stream {
            chunks,
            pause: Duration::ZERO,
        }
    }

    /// An error answer with Google's envelope and the canonical status name for `status`.
    pub fn error(status: u16, message: &str) -> Step {
        Step::Error {
            status,
            body: error_body(status, message),
            retry_after: None,
        }
    }

    /// 429 `RESOURCE_EXHAUSTED` with a `Retry-After` header.
    pub fn rate_limited(retry_after: &str) -> Step {
        Step::error(429, "Resource has been exhausted (e.g. check quota).")
            .with_retry_after(retry_after)
    }

    /// 503 `UNAVAILABLE` "The model is overloaded. Please try again later."
    pub fn overloaded() -> Step {
        Step::error(503, "The model is overloaded. Please try again later.")
    }

    /// The same error step with a `Retry-After` header (no effect on other steps).
    pub fn with_retry_after(self, value: &str) -> Step {
        match self {
            Step::Error { status, body, .. } => Step::Error {
                status,
                body,
                retry_after: Some(value.to_string()),
            },
            other => other,
        }
    }

    /// The same stream step, pausing `pause` before each chunk after the first.
    pub fn with_pause(self, pause: Duration) -> Step {
        match self {
            Step::Stream { chunks, .. } => Step::Stream { chunks, pause },
            other => other,
        }
    }

    /// This step, answered after `delay`.
    pub fn delayed(self, delay: Duration) -> Step {
        Step::Delay(delay, Box::new(self))
    }
}

/// `{"role": "model", "parts": parts}`.
pub fn model_content(parts: Vec<Value>) -> Value {
    json!({"role": "model", "parts": parts})
}

/// A complete `GenerateContentResponse` with one candidate holding `content`.
pub fn response(content: Value) -> Value {
    json!({
        "candidates": [{"content": content, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6},
        "modelVersion": "fake-gemini-001",
        "responseId": "fake-response"
    })
}

/// An intermediate stream chunk: a model content with these parts, no finish reason.
pub fn chunk(parts: Vec<Value>) -> Value {
    json!({"candidates": [{"content": model_content(parts), "index": 0}], "modelVersion": "fake-gemini-001"})
}

/// Google's error envelope.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// The `google.rpc.Code` name Google pairs with an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// The path, e.g. `/v1beta/models/gemini-test:generateContent`.
    pub path: String,
    /// The raw query string, e.g. `alt=sse`.
    pub query: Option<String>,
    /// Headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
    /// The body as received.
    pub raw_body: String,
    /// The status the fake answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Path and query, as sent.
    pub fn url(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The model named in the path (`gemini-test` in `/v1beta/models/gemini-test:generateContent`).
    pub fn model(&self) -> Option<&str> {
        route(&self.path).map(|(m, _)| m)
    }

    /// Whether this was a `streamGenerateContent` call.
    pub fn is_stream(&self) -> bool {
        route(&self.path).is_some_and(|(_, a)| a == "streamGenerateContent")
    }
}

struct Inner {
    steps: VecDeque<Step>,
    requests: Vec<Recorded>,
    validate: bool,
}

struct Shared {
    key: String,
    inner: Mutex<Inner>,
}

/// The fake server. Stops when dropped.
pub struct FakeGemini {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGemini {
    /// Start a server on 127.0.0.1 (a free port) that accepts only the API key `key`.
    pub async fn start(key: &str) -> FakeGemini {
        let shared = Arc::new(Shared {
            key: key.to_string(),
            inner: Mutex::new(Inner {
                steps: VecDeque::new(),
                requests: Vec::new(),
                validate: true,
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("FakeGemini: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("FakeGemini: local addr");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("FakeGemini: serve");
        });
        FakeGemini { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT` — the value for `GEMINI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key the fake accepts.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Queue one answer.
    pub fn push(&self, step: Step) -> &FakeGemini {
        self.inner().steps.push_back(step);
        self
    }

    /// Queue several answers, in order.
    pub fn push_all(&self, steps: impl IntoIterator<Item = Step>) -> &FakeGemini {
        self.inner().steps.extend(steps);
        self
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner().requests.clone()
    }

    /// Scripted steps not yet used.
    pub fn remaining(&self) -> usize {
        self.inner().steps.len()
    }

    /// Panic unless every scripted step was used.
    pub fn assert_consumed(&self) {
        let left = self.remaining();
        assert_eq!(
            left, 0,
            "FakeGemini: {left} scripted step(s) were never requested"
        );
    }

    /// Turn body validation on (default) or off.
    pub fn set_validation(&self, on: bool) {
        self.inner().validate = on;
    }

    /// Wait until at least `n` requests arrived (panics after `timeout`), and return them all.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if reqs.len() >= n {
                return reqs;
            }
            assert!(
                Instant::now() < deadline,
                "FakeGemini: {} request(s) after {timeout:?}, wanted {n}",
                reqs.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `/v1beta/models/{model}:{action}` → `(model, action)`.
fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, action) = rest.rsplit_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((model, action))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn json_response(status: u16, body: &Value, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=UTF-8");
    if let Some(r) = retry_after {
        b = b.header(header::RETRY_AFTER, r);
    }
    b.body(Body::from(body.to_string()))
        .expect("FakeGemini: response")
}

fn sse_response(chunks: Vec<String>, pause: Duration) -> Response {
    let stream = futures::stream::unfold(
        (chunks.into_iter(), true),
        move |(mut it, first)| async move {
            let data = it.next()?;
            if !first && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(data)), (it, false)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("FakeGemini: response")
}

fn sse_event(v: &Value) -> String {
    format!("data: {v}\r\n\r\n")
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let index = {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
            raw_body: raw_body.clone(),
            status: 0,
            at: Instant::now(),
        });
        inner.requests.len() - 1
    };
    let (status, response) = answer(&shared, &method, &uri, &headers, &raw_body).await;
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.requests[index].status = status;
    response
}

async fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    raw_body: &str,
) -> (u16, Response) {
    let fail = |status: u16, message: String| {
        (
            status,
            json_response(status, &error_body(status, &message), None),
        )
    };

    let Some((model, action)) = route(uri.path()).filter(|_| method == Method::POST) else {
        return fail(
            404,
            format!(
                "{} {} is not a method of this API (FakeGemini).",
                method,
                uri.path()
            ),
        );
    };
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" => true,
        other => {
            return fail(
                404,
                format!("Method {other} not found for models/{model} (FakeGemini)."),
            );
        }
    };

    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query_param(uri.query(), "key"));
    match key {
        None => {
            return fail(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). \
                 Please use API Key or other form of API consumer identity to call this API."
                    .into(),
            );
        }
        Some(k) if k != shared.key => {
            let body = json!({"error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}
                }]
            }});
            return (400, json_response(400, &body, None));
        }
        Some(_) => {}
    }

    if stream && query_param(uri.query(), "alt") != Some("sse") {
        return fail(
            400,
            "FakeGemini: streamGenerateContent is only faked with alt=sse.".into(),
        );
    }

    let validate = shared
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .validate;
    if validate {
        let body: Value = match serde_json::from_str(raw_body) {
            Ok(v) => v,
            Err(e) => return fail(400, format!("Invalid JSON payload received. {e}")),
        };
        if let Err(message) = validate_request(&body) {
            return fail(400, message);
        }
    }

    let step = shared
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .steps
        .pop_front();
    let Some(mut step) = step else {
        let body = error_body(
            400,
            &format!("FakeGemini: no scripted step left for {action}."),
        );
        let mut body = body;
        body["error"]["status"] = json!("FAILED_PRECONDITION");
        return (400, json_response(400, &body, None));
    };
    while let Step::Delay(d, inner) = step {
        tokio::time::sleep(d).await;
        step = *inner;
    }
    match step {
        Step::Generate(v) if stream => (200, sse_response(vec![sse_event(&v)], Duration::ZERO)),
        Step::Generate(v) => (200, json_response(200, &v, None)),
        Step::Stream { chunks, pause } if stream => (
            200,
            sse_response(chunks.iter().map(sse_event).collect(), pause),
        ),
        Step::StreamRaw(raw) if stream => (200, sse_response(vec![raw], Duration::ZERO)),
        Step::Stream { .. } | Step::StreamRaw(_) => fail(
            400,
            "FakeGemini: the next scripted step is a stream but the request was generateContent."
                .into(),
        ),
        Step::Error {
            status,
            body,
            retry_after,
        } => (status, json_response(status, &body, retry_after.as_deref())),
        Step::Delay(..) => unreachable!("delays were unwrapped"),
    }
}

// ------------------------------------------------------------------------------------------
// Request validation (an approximation of Google's)
// ------------------------------------------------------------------------------------------

const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];
const CONTENT_FIELDS: &[&str] = &["role", "parts"];
const PART_DATA_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
];
const PART_OTHER_FIELDS: &[&str] = &[
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
];
const FUNCTION_CALL_FIELDS: &[&str] = &["id", "name", "args"];
const FUNCTION_RESPONSE_FIELDS: &[&str] = &[
    "id",
    "name",
    "response",
    "willContinue",
    "scheduling",
    "parts",
];
const TOOL_FIELDS: &[&str] = &[
    "functionDeclarations",
    "googleSearchRetrieval",
    "codeExecution",
    "googleSearch",
    "urlContext",
    "computerUse",
    "fileSearch",
    "googleMaps",
];
const DECLARATION_FIELDS: &[&str] = &[
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
];
const TOOL_CONFIG_FIELDS: &[&str] = &["functionCallingConfig", "retrievalConfig"];
const FUNCTION_CALLING_CONFIG_FIELDS: &[&str] = &["mode", "allowedFunctionNames"];

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("Invalid JSON payload received. Expected an object at '{at}'."))
}

fn known_fields(m: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
        )),
        None => Ok(()),
    }
}

fn array<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a [Value], String> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!(
            "Invalid JSON payload received. Expected a list at '{at}'."
        )),
    }
}

fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Check a request body; `Err` is the 400 message.
pub fn validate_request(body: &Value) -> Result<(), String> {
    let req = object(body, "")?;
    known_fields(req, REQUEST_FIELDS, "")?;
    let contents = array(req.get("contents"), "contents")?;
    if contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    for (i, c) in contents.iter().enumerate() {
        validate_content(c, &format!("contents[{i}]"), true)?;
    }
    if let Some(si) = req.get("systemInstruction") {
        validate_content(si, "system_instruction", false)?;
    }
    for (i, t) in array(req.get("tools"), "tools")?.iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool = object(t, &at)?;
        known_fields(tool, TOOL_FIELDS, &at)?;
        for (j, d) in array(tool.get("functionDeclarations"), &at)?
            .iter()
            .enumerate()
        {
            let at = format!("tools[{i}].function_declarations[{j}]");
            let decl = object(d, &at)?;
            known_fields(decl, DECLARATION_FIELDS, &at)?;
            let name = decl.get("name").and_then(Value::as_str).unwrap_or("");
            if !valid_function_name(name) {
                return Err(format!(
                    "* GenerateContentRequest.{at}.name: Invalid function name. Must start with a letter or an \
                     underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or \
                     dashes (-), with a maximum length of 64."
                ));
            }
            if decl.contains_key("parameters") && decl.contains_key("parametersJsonSchema") {
                return Err(format!(
                    "* GenerateContentRequest.{at}: parameters and parameters_json_schema are mutually exclusive"
                ));
            }
            if let Some(schema) = decl.get("parametersJsonSchema") {
                validate_schema(schema, &format!("{at}.parameters_json_schema"), None)?;
            }
        }
    }
    if let Some(tc) = req.get("toolConfig") {
        let tc = object(tc, "tool_config")?;
        known_fields(tc, TOOL_CONFIG_FIELDS, "tool_config")?;
        if let Some(fcc) = tc.get("functionCallingConfig") {
            let at = "tool_config.function_calling_config";
            let fcc = object(fcc, at)?;
            known_fields(fcc, FUNCTION_CALLING_CONFIG_FIELDS, at)?;
            if let Some(mode) = fcc.get("mode")
                && !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"]
                    .iter()
                    .any(|m| mode == m)
            {
                return Err(format!(
                    "Invalid value at '{at}.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), {mode}"
                ));
            }
        }
    }
    if let Some(gc) = req.get("generationConfig") {
        object(gc, "generation_config")?;
    }
    Ok(())
}

fn validate_content(c: &Value, at: &str, needs_role: bool) -> Result<(), String> {
    let content = object(c, at)?;
    known_fields(content, CONTENT_FIELDS, at)?;
    if needs_role
        && let Some(role) = content.get("role")
        && role != "user"
        && role != "model"
    {
        return Err(format!(
            "Please use a valid role: user, model. (at '{at}.role')"
        ));
    }
    let parts = array(content.get("parts"), at)?;
    if parts.is_empty() {
        return Err(format!(
            "* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
        ));
    }
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}.parts[{j}]");
        let part = object(p, &at)?;
        let mut known: Vec<&str> = PART_DATA_FIELDS.to_vec();
        known.extend(PART_OTHER_FIELDS);
        known_fields(part, &known, &at)?;
        if !PART_DATA_FIELDS.iter().any(|f| part.contains_key(*f)) {
            return Err(format!(
                "* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field"
            ));
        }
        if let Some(fc) = part.get("functionCall") {
            let at = format!("{at}.function_call");
            known_fields(object(fc, &at)?, FUNCTION_CALL_FIELDS, &at)?;
        }
        if let Some(fr) = part.get("functionResponse") {
            let at = format!("{at}.function_response");
            let fr = object(fr, &at)?;
            known_fields(fr, FUNCTION_RESPONSE_FIELDS, &at)?;
            if !fr.get("response").is_some_and(Value::is_object) {
                return Err(format!(
                    "* GenerateContentRequest.{at}.response: must be a JSON object"
                ));
            }
        }
    }
    Ok(())
}

/// The parts of `parametersJsonSchema` Gemini rejects (issue 5's list).
fn validate_schema(
    s: &Value,
    at: &str,
    parent_props: Option<&BTreeSet<String>>,
) -> Result<(), String> {
    let Some(m) = s.as_object() else {
        return Ok(());
    };
    let bad = |what: &str| Err(format!("* GenerateContentRequest.{at}: {what}"));
    for k in ["$ref", "$defs", "definitions"] {
        if m.contains_key(k) {
            return bad(&format!(
                "{k} is not supported; inline the referenced schema"
            ));
        }
    }
    let is_array = match m.get("type") {
        Some(Value::String(t)) => t == "array",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
        _ => false,
    };
    if is_array && !m.contains_key("items") {
        return bad("array schema without items");
    }
    let own: Option<BTreeSet<String>> = m
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect());
    let mut known: BTreeSet<String> = own.clone().unwrap_or_default();
    known.extend(parent_props.into_iter().flatten().cloned());
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(members) = m.get(key).and_then(Value::as_array) {
            if members.is_empty() {
                return bad(&format!("{key} must not be empty"));
            }
            for member in members {
                if let Some(p) = member.get("properties").and_then(Value::as_object) {
                    known.extend(p.keys().cloned());
                }
            }
        }
    }
    if let Some(required) = m.get("required").and_then(Value::as_array) {
        for r in required {
            let name = r.as_str().unwrap_or("");
            if !known.contains(name) {
                return bad(&format!(
                    "required property \"{name}\" is not defined in properties"
                ));
            }
        }
    }
    let member_parent = own.as_ref().or(parent_props);
    for (k, v) in m {
        match k.as_str() {
            "properties" | "patternProperties" | "dependentSchemas" => {
                for (name, sub) in v.as_object().into_iter().flatten() {
                    validate_schema(sub, &format!("{at}.{k}[{name}]"), None)?;
                }
            }
            "anyOf" | "oneOf" | "allOf" => {
                for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                    validate_schema(sub, &format!("{at}.{k}[{i}]"), member_parent)?;
                }
            }
            "prefixItems" => {
                for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                    validate_schema(sub, &format!("{at}.{k}[{i}]"), None)?;
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames" => {
                validate_schema(v, &format!("{at}.{k}"), None)?;
            }
            _ => {}
        }
    }
    Ok(())
}
