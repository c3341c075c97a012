//! A client of Google's Generative Language REST API (Gemini), `v1beta`, on reqwest.
//!
//! Two calls: [`Gemini::generate`] (`POST {base}/v1beta/models/{model}:generateContent`) and
//! [`Gemini::stream_generate`] (`POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`,
//! one `GenerateContentResponse` per Server-Sent Event `data:` line). [`StreamMerger`] folds
//! streamed chunks into the one model turn that is stored and replayed.
//!
//! ## Behaviour
//! - **The key** ([`ApiKey`], read by the caller from `GOOGLE_API_KEY`) travels only in the
//!   `x-goog-api-key` header (marked sensitive), never in the URL; no `Debug` output shows it.
//!   Without a key every call fails with [`GeminiError::MissingApiKey`] before any request.
//! - **Timeouts**: a connect timeout; for `generate` an overall per-request timeout; for
//!   streams the same timeout up to the response headers, then an idle timeout between chunks.
//! - **Retries**: 429 and 5xx (not 501) and connection failures are retried with exponential
//!   backoff (`initial_backoff` doubling up to `max_backoff`), at most `max_retries` times.
//!   A server-requested wait — the `Retry-After` header (seconds or an HTTP date), else the
//!   `google.rpc.RetryInfo.retryDelay` in the error body — replaces the backoff; a wait longer
//!   than `max_retry_after` is not waited for and the error is returned. A stream is retried
//!   only until its first chunk has arrived; after that a failure ends the stream.
//! - **Errors**: a rejected key (400 with `API_KEY_INVALID`, 401, 403) is
//!   [`GeminiError::KeyRejected`] ("GOOGLE_API_KEY was rejected"); any other error answer is
//!   [`GeminiError::Api`] carrying Google's own `error.message` and `error.status`.
//! - **Exact replay**: every wire type keeps the fields it does not name in a flattened
//!   `extra` map, so a model turn (including `thoughtSignature`) deserialised from a response
//!   serialises back to the same JSON.
//!
//! ## REST reference relied on
//! - Endpoints, request body (`contents`, `tools`, `toolConfig`, `safetySettings`,
//!   `systemInstruction`, `generationConfig`, `cachedContent`):
//!   <https://ai.google.dev/api/rest/v1beta/models/generateContent> and
//!   <https://ai.google.dev/api/generate-content>; `alt=sse` for streaming: the Gemini
//!   cookbook's "Streaming Quickstart with REST" (`quickstarts/rest/Streaming_REST.ipynb`).
//! - `Content {role, parts}`, `Part {text | inlineData | functionCall | functionResponse |
//!   fileData | executableCode | codeExecutionResult, thought}`, `FunctionCall {id, name,
//!   args}`, `FunctionResponse {id, name, response}`, `Tool {functionDeclarations, ...}`,
//!   `ToolConfig {functionCallingConfig {mode AUTO|ANY|NONE|VALIDATED,
//!   allowedFunctionNames}}`: `google/ai/generativelanguage/v1beta/content.proto` in
//!   googleapis/googleapis (proto field names; REST JSON uses their lowerCamelCase form).
//! - `Part.thoughtSignature` ("an opaque signature for the thought so it can be reused in
//!   subsequent requests", base64 bytes) and the rule to pass signatures back exactly as
//!   received: <https://ai.google.dev/gemini-api/docs/thought-signatures>; in a stream the
//!   signature can arrive on a final part with empty `text` (observed in captured streams),
//!   which is why [`StreamMerger`] never merges a part that carries one.
//! - `FunctionDeclaration.parametersJsonSchema` (JSON Schema; mutually exclusive with
//!   `parameters`): the google-genai SDK reference for `FunctionDeclaration`.
//! - `GenerateContentResponse {candidates[{content, finishReason, ...}], promptFeedback,
//!   usageMetadata, modelVersion, responseId}`: the `GenerateContentResponse` reference.
//! - Error bodies `{"error": {"code", "message", "status", "details": [...]}}`, with
//!   `details[].reason = "API_KEY_INVALID"` (`google.rpc.ErrorInfo`) for a bad key and
//!   `google.rpc.RetryInfo.retryDelay` (e.g. `"22s"`) on 429: as returned by the API (quoted in
//!   google-gemini/gemini-cli issues #4690 and #25198) and Google's "Handling 429/503 errors"
//!   guidance (retry both with backoff).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Google's endpoint, used when `GEMINI_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The model used when neither the caller nor `GEMINI_MODEL` names one.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash";
/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-goog-api-key";
/// Environment variable holding the API key.
pub const ENV_API_KEY: &str = "GOOGLE_API_KEY";
/// Environment variable overriding the base URL.
pub const ENV_BASE_URL: &str = "GEMINI_BASE_URL";
/// Environment variable overriding the default model.
pub const ENV_MODEL: &str = "GEMINI_MODEL";

/// Unknown JSON fields, kept so that a value round-trips unchanged.
pub type Extra = Map<String, Value>;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The Gemini API key. It has no `Display`, and its `Debug` is redacted: the only way to read
/// it is [`ApiKey::expose`], used once to build the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key, or `None` when `key` is empty or only whitespace.
    pub fn new(key: impl Into<String>) -> Option<ApiKey> {
        let key = key.into().trim().to_string();
        (!key.is_empty()).then_some(ApiKey(key))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How to reach Gemini. Built once (from flags or the environment) and handed to
/// [`Gemini::new`]. `Debug` never shows the key.
#[derive(Clone, Debug)]
pub struct GeminiConfig {
    /// The API key (`GOOGLE_API_KEY`); `None` makes every call fail with
    /// [`GeminiError::MissingApiKey`].
    pub api_key: Option<ApiKey>,
    /// Scheme, host and optional port, without `/v1beta` (`GEMINI_BASE_URL`).
    pub base_url: String,
    /// The model used when a call names none (`GEMINI_MODEL`).
    pub default_model: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for `generate`; time to response headers for streams.
    pub request_timeout: Duration,
    /// Longest silence between two chunks of a stream (and before the first).
    pub stream_idle_timeout: Duration,
    /// Retries after the first attempt (so at most `max_retries + 1` requests).
    pub max_retries: u32,
    /// First backoff; doubles on each retry.
    pub initial_backoff: Duration,
    /// Largest computed backoff.
    pub max_backoff: Duration,
    /// Largest server-requested wait (Retry-After, RetryInfo) we accept; longer ones fail at once.
    pub max_retry_after: Duration,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        GeminiConfig {
            api_key: None,
            base_url: DEFAULT_BASE_URL.to_string(),
            default_model: DEFAULT_MODEL.to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            stream_idle_timeout: Duration::from_secs(60),
            max_retries: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl GeminiConfig {
    /// Defaults with this key (empty means none).
    pub fn new(api_key: Option<String>) -> GeminiConfig {
        GeminiConfig {
            api_key: api_key.and_then(ApiKey::new),
            ..GeminiConfig::default()
        }
    }

    /// Defaults overridden by `GOOGLE_API_KEY`, `GEMINI_BASE_URL` and `GEMINI_MODEL`.
    pub fn from_env() -> GeminiConfig {
        GeminiConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`GeminiConfig::from_env`] with variables from `lookup` (empty values are unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> GeminiConfig {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = GeminiConfig::new(get(ENV_API_KEY));
        if let Some(base) = get(ENV_BASE_URL) {
            config.base_url = base.trim().to_string();
        }
        if let Some(model) = get(ENV_MODEL) {
            config.default_model = model.trim().to_string();
        }
        config
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything a Gemini call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GeminiError {
    /// No API key is configured; no request was sent.
    #[error("GOOGLE_API_KEY is not set: the Gemini API needs a key (no request was sent)")]
    MissingApiKey,
    /// The key cannot be sent as an HTTP header (control characters); no request was sent.
    #[error("GOOGLE_API_KEY is not a valid HTTP header value (no request was sent)")]
    InvalidApiKey,
    /// Google refused the key: 400 with reason `API_KEY_INVALID`, 401 or 403. Not retried.
    #[error("GOOGLE_API_KEY was rejected by the Gemini API (HTTP {status}): {message}")]
    KeyRejected {
        /// HTTP status.
        status: u16,
        /// Google's `error.message`.
        message: String,
    },
    /// The model name cannot be put in a URL path; no request was sent.
    #[error("invalid Gemini model name {0:?}")]
    InvalidModel(String),
    /// Any other error answer (after retries, for 429 and 5xx).
    #[error(
        "Gemini API error (HTTP {status}{}): {message}{}",
        .status_text.as_deref().map(|s| format!(" {s}")).unwrap_or_default(),
        attempts_suffix(*.attempts)
    )]
    Api {
        /// HTTP status (for an error inside a stream, the `error.code` it carried).
        status: u16,
        /// Google's `error.status`, e.g. `RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`.
        status_text: Option<String>,
        /// Google's `error.message` (or the start of the body when it is not Google's JSON).
        message: String,
        /// The wait the server asked for, if any.
        retry_after: Option<Duration>,
        /// Requests made, retries included.
        attempts: u32,
    },
    /// The API could not be reached or the connection broke.
    #[error("cannot reach the Gemini API at {base_url}: {source}{}", attempts_suffix(*.attempts))]
    Transport {
        /// The configured base URL.
        base_url: String,
        /// Requests made, retries included.
        attempts: u32,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No (complete) answer within the request timeout.
    #[error("the Gemini API did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// A stream went silent for longer than the idle timeout.
    #[error("the Gemini stream stalled: no data for {}", humantime::format_duration(*.idle))]
    StreamStalled {
        /// The idle timeout that expired.
        idle: Duration,
    },
    /// The answer was not the JSON the API documents.
    #[error("unexpected answer from the Gemini API: {0}")]
    Decode(String),
}

fn attempts_suffix(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl GeminiError {
    /// Whether the key was missing or refused (the user must fix configuration).
    pub fn is_key_error(&self) -> bool {
        matches!(
            self,
            GeminiError::MissingApiKey
                | GeminiError::InvalidApiKey
                | GeminiError::KeyRejected { .. }
        )
    }

    fn set_attempts(&mut self, n: u32) {
        if let GeminiError::Api { attempts, .. } | GeminiError::Transport { attempts, .. } = self {
            *attempts = n;
        }
    }
}

/// Google's error envelope.
#[derive(Debug, Default, Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

/// What one attempt's failure means for the retry loop.
enum Failure {
    /// Worth another attempt, after the server's requested delay or our backoff.
    Retry {
        error: GeminiError,
        server_delay: Option<Duration>,
    },
    /// Final.
    Fatal(GeminiError),
}

impl From<GeminiError> for Failure {
    fn from(e: GeminiError) -> Self {
        Failure::Fatal(e)
    }
}

fn retryable_status(status: u16) -> bool {
    status == 429 || (status >= 500 && status != 501)
}

/// Classify an error answer (status, headers, body) into a [`Failure`].
fn error_answer(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Failure {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let google = envelope.error.unwrap_or_default();
    let message = google.message.clone().unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no message")
                .to_string()
        } else {
            text.chars().take(500).collect()
        }
    });
    let api_key_invalid = google
        .details
        .iter()
        .any(|d| d["reason"] == "API_KEY_INVALID")
        || message.contains("API key not valid")
        || message.contains("API Key not found");
    if status == 401 || status == 403 || (status == 400 && api_key_invalid) {
        return Failure::Fatal(GeminiError::KeyRejected { status, message });
    }
    let server_delay = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| retry_info_delay(&google.details));
    let error = GeminiError::Api {
        status,
        status_text: google.status,
        message,
        retry_after: server_delay,
        attempts: 1,
    };
    if retryable_status(status) {
        Failure::Retry {
            error,
            server_delay,
        }
    } else {
        Failure::Fatal(error)
    }
}

/// Parse a `Retry-After` value: delta-seconds (`"120"`, leniently `"1.5"`) or an HTTP date
/// (IMF-fixdate, `"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past
/// means no wait. `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let when = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `retryDelay` of a `google.rpc.RetryInfo` detail (a protobuf Duration: `"22s"`, `"1.5s"`).
fn retry_info_delay(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| parse_proto_duration(d["retryDelay"].as_str()?))
}

fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// The body of `generateContent` and `streamGenerateContent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation so far, oldest first, ending with the newest user turn.
    pub contents: Vec<Content>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// How the model may call them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// System instruction (text parts; its role is ignored by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Sampling and output options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    /// Other request fields (`safetySettings`, `cachedContent`, ...), sent as given.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One turn: a role and its ordered parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `user` or `model` (empty when the API left it out; then it is not sent back).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The parts, in order.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The role of user turns (and of function responses).
pub const ROLE_USER: &str = "user";
/// The role of model turns.
pub const ROLE_MODEL: &str = "model";

impl Content {
    /// A user turn with one text part.
    pub fn user_text(text: impl Into<String>) -> Content {
        Content {
            role: ROLE_USER.into(),
            parts: vec![Part::text(text)],
            extra: Extra::new(),
        }
    }

    /// A content with this role and these parts.
    pub fn new(role: impl Into<String>, parts: Vec<Part>) -> Content {
        Content {
            role: role.into(),
            parts,
            extra: Extra::new(),
        }
    }

    /// The user turn answering function calls: one `functionResponse` part per response, in
    /// the order of the calls (the REST function-calling guide sends them with role `user`).
    pub fn function_responses(responses: Vec<FunctionResponse>) -> Content {
        Content::new(
            ROLE_USER,
            responses.into_iter().map(Part::function_response).collect(),
        )
    }

    /// A system instruction made of one text part.
    pub fn system(text: impl Into<String>) -> Content {
        Content::new("", vec![Part::text(text)])
    }

    /// The visible text: every non-thought text part, concatenated.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| !p.is_thought())
            .filter_map(|p| p.text.as_deref())
            .collect()
    }

    /// The function calls, in order.
    pub fn function_calls(&self) -> Vec<&FunctionCall> {
        self.parts
            .iter()
            .filter_map(|p| p.function_call.as_ref())
            .collect()
    }
}

/// One part of a turn. Exactly one data field is normally set (`text`, `functionCall`,
/// `functionResponse`, or another kind kept in `extra`), plus optional `thought` and
/// `thoughtSignature`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A call the model asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    /// The result of a call, sent by us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
    /// Whether this part is the model's thinking (not part of the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque signature of the model's reasoning; must be sent back exactly as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
    /// Fields this type does not name (`inlineData`, `executableCode`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Part {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Part {
        Part {
            text: Some(text.into()),
            ..Part::default()
        }
    }

    /// A function-call part.
    pub fn function_call(call: FunctionCall) -> Part {
        Part {
            function_call: Some(call),
            ..Part::default()
        }
    }

    /// A function-response part.
    pub fn function_response(response: FunctionResponse) -> Part {
        Part {
            function_response: Some(response),
            ..Part::default()
        }
    }

    /// Whether the part is marked as thought.
    pub fn is_thought(&self) -> bool {
        self.thought == Some(true)
    }
}

/// A call the model asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCall {
    /// The call's id, when the API gives one; echo it in the matching response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The declared function name (a Gemini-side name; see `schema::NameMap`).
    pub name: String,
    /// The arguments, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The result of a call, sent back in a user turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionResponse {
    /// The id of the call this answers (copy [`FunctionCall::id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function name, as in the call.
    pub name: String,
    /// The result, a JSON object; by convention `{"output": ...}` or `{"error": ...}`.
    pub response: Map<String, Value>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

impl FunctionResponse {
    /// The response to `call` carrying `response`, with the call's id and name.
    pub fn to_call(call: &FunctionCall, response: Map<String, Value>) -> FunctionResponse {
        FunctionResponse {
            id: call.id.clone(),
            name: call.name.clone(),
            response,
            extra: Extra::new(),
        }
    }
}

/// A tool: here, function declarations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// The functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub function_declarations: Vec<FunctionDeclaration>,
    /// Other tool kinds (`googleSearch`, `codeExecution`, ...), sent as given.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function the model may call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    /// Name: letters, digits, `_ . : -`, starting with a letter or `_`, at most 64 characters.
    pub name: String,
    /// What the function does; the model uses it to decide when to call it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The parameters as a JSON Schema describing an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Value>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    /// Function-calling behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_calling_config: Option<FunctionCallingConfig>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `toolConfig.functionCallingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    /// `AUTO` (default), `ANY`, `NONE` or `VALIDATED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// With `ANY`: the functions the model may choose from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `generationConfig` (the common fields; others go in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Fields this type does not name (`thinkingConfig`, `responseMimeType`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `generateContent` answer, or one chunk of a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// Candidate answers (one unless `candidateCount` was raised; none if the prompt was blocked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// Why the prompt was blocked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The response id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

impl GenerateContentResponse {
    /// The first candidate's content.
    pub fn content(&self) -> Option<&Content> {
        self.candidates.first().and_then(|c| c.content.as_ref())
    }

    /// The first candidate's visible text (thought parts excluded).
    pub fn text(&self) -> String {
        self.content().map(Content::text).unwrap_or_default()
    }

    /// The first candidate's function calls, in order.
    pub fn function_calls(&self) -> Vec<&FunctionCall> {
        self.content()
            .map(Content::function_calls)
            .unwrap_or_default()
    }

    /// The first candidate's finish reason (`STOP`, `MAX_TOKENS`, `SAFETY`, ...).
    pub fn finish_reason(&self) -> Option<&str> {
        self.candidates
            .first()
            .and_then(|c| c.finish_reason.as_deref())
    }

    /// `promptFeedback.blockReason`, when the prompt was blocked.
    pub fn block_reason(&self) -> Option<&str> {
        self.prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
    }
}

/// One candidate answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The model turn (absent when nothing was generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Why generation stopped; absent on intermediate stream chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The candidate's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Fields this type does not name (`safetyRatings`, `finishMessage`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `promptFeedback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// Why the prompt was blocked (`SAFETY`, `OTHER`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason: Option<String>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usageMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_count: Option<u64>,
    /// Generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_token_count: Option<u64>,
    /// Thinking tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts_token_count: Option<u64>,
    /// All tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_token_count: Option<u64>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: Extra,
}

// ---------------------------------------------------------------------------------------------
// Merging a stream
// ---------------------------------------------------------------------------------------------

/// Folds the chunks of a stream into one response with one candidate whose content is the
/// whole model turn, ready to be stored and replayed.
///
/// Adjacent plain text parts (same `thought` flag, no signature, nothing else) are
/// concatenated; every other part — function calls, parts carrying a `thoughtSignature`
/// (including the empty-text part a stream may end with), other kinds — is kept exactly as
/// received and in order. Only the first candidate is followed. The finish reason, usage,
/// model version and response id are the last ones seen; the prompt feedback the first one.
#[derive(Debug, Clone, Default)]
pub struct StreamMerger {
    content: Content,
    candidate: Candidate,
    response: GenerateContentResponse,
    chunks: usize,
}

impl StreamMerger {
    /// An empty merger.
    pub fn new() -> StreamMerger {
        StreamMerger::default()
    }

    /// Add one chunk.
    pub fn push(&mut self, chunk: &GenerateContentResponse) {
        self.chunks += 1;
        if let Some(c) = chunk.candidates.first() {
            if let Some(content) = &c.content {
                if self.content.role.is_empty() {
                    self.content.role = content.role.clone();
                }
                self.content
                    .extra
                    .extend(content.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                for part in &content.parts {
                    push_part(&mut self.content.parts, part.clone());
                }
            }
            if c.finish_reason.is_some() {
                self.candidate.finish_reason = c.finish_reason.clone();
            }
            if c.index.is_some() {
                self.candidate.index = c.index;
            }
            self.candidate
                .extra
                .extend(c.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let r = &mut self.response;
        if r.prompt_feedback.is_none() {
            r.prompt_feedback = chunk.prompt_feedback.clone();
        }
        if chunk.usage_metadata.is_some() {
            r.usage_metadata = chunk.usage_metadata.clone();
        }
        if chunk.model_version.is_some() {
            r.model_version = chunk.model_version.clone();
        }
        if chunk.response_id.is_some() {
            r.response_id = chunk.response_id.clone();
        }
        r.extra
            .extend(chunk.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// How many chunks were pushed.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The model turn merged so far (role defaults to `model`).
    pub fn content(&self) -> Content {
        let mut content = self.content.clone();
        if content.role.is_empty() {
            content.role = ROLE_MODEL.into();
        }
        content
    }

    /// The merged response: one candidate holding [`StreamMerger::content`].
    pub fn finish(self) -> GenerateContentResponse {
        let content = self.content();
        let mut response = self.response;
        let mut candidate = self.candidate;
        if !content.parts.is_empty() || candidate.finish_reason.is_some() || self.chunks > 0 {
            candidate.content = Some(content);
            response.candidates = vec![candidate];
        }
        response
    }
}

/// Merge a whole list of chunks (see [`StreamMerger`]).
pub fn merge_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a GenerateContentResponse>,
) -> GenerateContentResponse {
    let mut merger = StreamMerger::new();
    for chunk in chunks {
        merger.push(chunk);
    }
    merger.finish()
}

fn plain_text(p: &Part) -> bool {
    p.text.is_some()
        && p.function_call.is_none()
        && p.function_response.is_none()
        && p.thought_signature.is_none()
        && p.extra.is_empty()
}

fn push_part(parts: &mut Vec<Part>, part: Part) {
    if let Some(last) = parts.last_mut()
        && plain_text(last)
        && plain_text(&part)
        && last.is_thought() == part.is_thought()
    {
        if let (Some(text), Some(more)) = (last.text.as_mut(), part.text.as_deref()) {
            text.push_str(more);
        }
        return;
    }
    parts.push(part);
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// An incremental SSE parser: bytes in, the `data` of each complete event out (several `data:`
/// lines joined with `\n`). Handles `\n`, `\r\n` and `\r` line ends and chunks split anywhere;
/// ignores comments and the `event`, `id` and `retry` fields.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feed bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            match self.buf[i] {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                    self.line(&line, &mut out);
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    if i + 1 == self.buf.len() {
                        break; // a '\n' may follow in the next chunk
                    }
                    let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                    self.line(&line, &mut out);
                    i += if self.buf[i + 1] == b'\n' { 2 } else { 1 };
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.buf.drain(..start);
        out
    }

    /// End of input: the last line and event, even without their terminators.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        let rest = String::from_utf8_lossy(&rest);
        let rest = rest.trim_end_matches(['\r', '\n']);
        if !rest.is_empty() {
            self.line(rest, &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(data);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

/// One SSE `data` payload → a chunk, or the error object Google sends inside a stream.
/// `None` for payloads that carry nothing (empty, `[DONE]`).
fn parse_chunk(data: &str) -> Option<Result<GenerateContentResponse, GeminiError>> {
    let data = data.trim();
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => return Some(Err(GeminiError::Decode(format!("stream chunk: {e}")))),
    };
    if let Some(error) = value.get("error") {
        let body: ErrorBody = serde_json::from_value(error.clone()).unwrap_or_default();
        return Some(Err(GeminiError::Api {
            status: body.code.unwrap_or(500),
            status_text: body.status,
            message: body
                .message
                .unwrap_or_else(|| "error inside the stream".into()),
            retry_after: retry_info_delay(&body.details),
            attempts: 1,
        }));
    }
    Some(
        serde_json::from_value(value)
            .map_err(|e| GeminiError::Decode(format!("stream chunk: {e}"))),
    )
}

/// The chunks of one streamed answer. Ends after the last chunk or after the first error.
pub struct ResponseStream {
    inner: BoxStream<'static, Result<GenerateContentResponse, GeminiError>>,
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseStream")
    }
}

impl Stream for ResponseStream {
    type Item = Result<GenerateContentResponse, GeminiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Reads SSE events off a response body with an idle timeout.
struct SseBody {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    pending: VecDeque<String>,
    idle: Duration,
    base_url: String,
    done: bool,
}

impl SseBody {
    /// The next chunk, `None` at the end. After an error the body yields nothing more.
    async fn next(&mut self) -> Option<Result<GenerateContentResponse, GeminiError>> {
        loop {
            while let Some(data) = self.pending.pop_front() {
                match parse_chunk(&data) {
                    None => continue,
                    Some(Ok(chunk)) => return Some(Ok(chunk)),
                    Some(Err(e)) => {
                        self.fail();
                        return Some(Err(e));
                    }
                }
            }
            if self.done {
                return None;
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    self.fail();
                    return Some(Err(GeminiError::StreamStalled { idle: self.idle }));
                }
                Ok(None) => {
                    self.done = true;
                    self.pending.extend(self.parser.finish());
                }
                Ok(Some(Err(source))) => {
                    self.fail();
                    return Some(Err(GeminiError::Transport {
                        base_url: self.base_url.clone(),
                        attempts: 1,
                        source,
                    }));
                }
                Ok(Some(Ok(bytes))) => self.pending.extend(self.parser.push(&bytes)),
            }
        }
    }

    fn fail(&mut self) {
        self.done = true;
        self.pending.clear();
    }

    fn into_stream(
        self,
        first: GenerateContentResponse,
    ) -> BoxStream<'static, Result<GenerateContentResponse, GeminiError>> {
        let rest = futures::stream::unfold(self, |mut body| async move {
            body.next().await.map(|item| (item, body))
        });
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// A Gemini client. Cheap to clone (shares one connection pool).
#[derive(Clone)]
pub struct Gemini {
    http: reqwest::Client,
    config: Arc<GeminiConfig>,
}

impl fmt::Debug for Gemini {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gemini")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Gemini {
    /// A client for `config`. Never fails: a missing key is reported by each call.
    pub fn new(config: GeminiConfig) -> Gemini {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .unwrap_or_default();
        Gemini {
            http,
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GeminiConfig {
        &self.config
    }

    /// The model used when a call passes an empty model name.
    pub fn default_model(&self) -> &str {
        &self.config.default_model
    }

    /// Whether a key is configured (it may still be rejected).
    pub fn has_api_key(&self) -> bool {
        self.config.api_key.is_some()
    }

    /// `models/{model}:generateContent`: the whole answer at once. `model` may be empty (the
    /// default model) and may carry the `models/` prefix. Retries as described in the module
    /// documentation.
    pub async fn generate(
        &self,
        model: &str,
        req: &GenerateContentRequest,
    ) -> Result<GenerateContentResponse, GeminiError> {
        let key = self.key_header()?;
        let url = self.endpoint(model, "generateContent")?;
        tracing::debug!(%url, "gemini generateContent");
        self.with_retries(|| async {
            let resp = self
                .http
                .post(&url)
                .header(API_KEY_HEADER, key.clone())
                .timeout(self.config.request_timeout)
                .json(req)
                .send()
                .await
                .map_err(|e| self.transport_failure(e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| self.transport_failure(e))?;
            if !status.is_success() {
                return Err(error_answer(
                    status.as_u16(),
                    &headers,
                    &body,
                    SystemTime::now(),
                ));
            }
            serde_json::from_slice(&body).map_err(|e| {
                Failure::Fatal(GeminiError::Decode(format!("generateContent answer: {e}")))
            })
        })
        .await
    }

    /// `models/{model}:streamGenerateContent?alt=sse`: returns once the first chunk has
    /// arrived (retrying until then as described in the module documentation); the stream then
    /// yields that chunk and the following ones. Merge them with [`StreamMerger`].
    pub async fn stream_generate(
        &self,
        model: &str,
        req: &GenerateContentRequest,
    ) -> Result<ResponseStream, GeminiError> {
        let key = self.key_header()?;
        let url = format!("{}?alt=sse", self.endpoint(model, "streamGenerateContent")?);
        tracing::debug!(%url, "gemini streamGenerateContent");
        self.with_retries(|| async {
            let send = self
                .http
                .post(&url)
                .header(API_KEY_HEADER, key.clone())
                .json(req)
                .send();
            let resp = match tokio::time::timeout(self.config.request_timeout, send).await {
                Err(_) => {
                    return Err(Failure::Fatal(GeminiError::Timeout {
                        after: self.config.request_timeout,
                    }));
                }
                Ok(r) => r.map_err(|e| self.transport_failure(e))?,
            };
            let status = resp.status();
            if !status.is_success() {
                let headers = resp.headers().clone();
                let body =
                    match tokio::time::timeout(self.config.request_timeout, resp.bytes()).await {
                        Ok(Ok(b)) => b,
                        _ => Bytes::new(),
                    };
                return Err(error_answer(
                    status.as_u16(),
                    &headers,
                    &body,
                    SystemTime::now(),
                ));
            }
            let mut body = SseBody {
                body: resp.bytes_stream().boxed(),
                parser: SseParser::new(),
                pending: VecDeque::new(),
                idle: self.config.stream_idle_timeout,
                base_url: self.config.base_url.clone(),
                done: false,
            };
            match body.next().await {
                Some(Ok(first)) => Ok(ResponseStream {
                    inner: body.into_stream(first),
                }),
                None => Ok(ResponseStream {
                    inner: futures::stream::empty().boxed(),
                }),
                Some(Err(e)) => Err(match &e {
                    GeminiError::Api {
                        status,
                        retry_after,
                        ..
                    } if retryable_status(*status) => Failure::Retry {
                        server_delay: *retry_after,
                        error: e,
                    },
                    GeminiError::StreamStalled { .. } | GeminiError::Transport { .. } => {
                        Failure::Retry {
                            error: e,
                            server_delay: None,
                        }
                    }
                    _ => Failure::Fatal(e),
                }),
            }
        })
        .await
    }

    fn key_header(&self) -> Result<HeaderValue, GeminiError> {
        let key = self
            .config
            .api_key
            .as_ref()
            .ok_or(GeminiError::MissingApiKey)?;
        let mut value =
            HeaderValue::from_str(key.expose()).map_err(|_| GeminiError::InvalidApiKey)?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn endpoint(&self, model: &str, method: &str) -> Result<String, GeminiError> {
        let model = model.trim();
        let model = if model.is_empty() {
            self.config.default_model.trim()
        } else {
            model
        };
        let model = model.strip_prefix("models/").unwrap_or(model);
        let valid = !model.is_empty()
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(GeminiError::InvalidModel(model.to_string()));
        }
        Ok(format!(
            "{}/v1beta/models/{model}:{method}",
            self.config.base_url.trim_end_matches('/')
        ))
    }

    fn transport_failure(&self, source: reqwest::Error) -> Failure {
        if source.is_timeout() {
            return Failure::Fatal(GeminiError::Timeout {
                after: self.config.request_timeout,
            });
        }
        let connect = source.is_connect();
        let error = GeminiError::Transport {
            base_url: self.config.base_url.clone(),
            attempts: 1,
            source,
        };
        if connect {
            Failure::Retry {
                error,
                server_delay: None,
            }
        } else {
            Failure::Fatal(error)
        }
    }

    /// The backoff before retry number `retry` (0-based).
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(30));
        self.config
            .initial_backoff
            .saturating_mul(factor)
            .min(self.config.max_backoff)
    }

    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, GeminiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut made = 0u32;
        loop {
            made += 1;
            let (mut error, server_delay) = match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(mut e)) => {
                    e.set_attempts(made);
                    return Err(e);
                }
                Err(Failure::Retry {
                    error,
                    server_delay,
                }) => (error, server_delay),
            };
            error.set_attempts(made);
            if made > self.config.max_retries {
                return Err(error);
            }
            let delay = match server_delay {
                Some(d) if d > self.config.max_retry_after => {
                    tracing::warn!(
                        wait = %humantime::format_duration(d),
                        %error,
                        "Gemini asked for a longer wait than allowed; not retrying"
                    );
                    return Err(error);
                }
                Some(d) => d,
                None => self.backoff(made - 1),
            };
            tracing::warn!(
                attempt = made,
                wait = %humantime::format_duration(delay),
                %error,
                "Gemini request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(v: Value) -> GenerateContentResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sse_parser_handles_crlf_split_chunks_multiline_and_comments() {
        let mut p = SseParser::new();
        let mut out = p.push(b": keep-alive\r\ndata: {\"a\"");
        assert!(out.is_empty());
        out.extend(p.push(b":1}\r"));
        assert!(out.is_empty(), "\\r at the end may be followed by \\n");
        out.extend(p.push(b"\n\r\ndata: x\ndata: y\n\nevent: e\nid: 3\ndata:z\r\r"));
        assert_eq!(
            out,
            vec!["{\"a\":1}", "x\ny"],
            "a final \\r waits for the next byte"
        );
        assert_eq!(p.push(b"data: tail"), vec!["z"]);
        assert_eq!(p.finish(), vec!["tail"]);
    }

    #[test]
    fn sse_parser_keeps_utf8_split_across_chunks() {
        let bytes = "data: héllo\n\n".as_bytes();
        let mut p = SseParser::new();
        let (a, b) = bytes.split_at(8); // inside 'é'
        let mut out = p.push(a);
        out.extend(p.push(b));
        assert_eq!(out, vec!["héllo"]);
    }

    #[test]
    fn stream_error_object_becomes_api_error() {
        let e =
            parse_chunk(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#)
                .unwrap()
                .unwrap_err();
        assert!(matches!(e, GeminiError::Api { status: 503, .. }), "{e:?}");
        assert!(e.to_string().contains("overloaded"));
        assert!(parse_chunk("[DONE]").is_none());
        assert!(matches!(
            parse_chunk("{nope").unwrap(),
            Err(GeminiError::Decode(_))
        ));
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means no wait"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_info_in_the_body_is_a_server_delay() {
        let body = json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "22s"}]}});
        let f = error_answer(
            429,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            SystemTime::now(),
        );
        let Failure::Retry {
            server_delay,
            error,
        } = f
        else {
            panic!("429 is retryable")
        };
        assert_eq!(server_delay, Some(Duration::from_secs(22)));
        assert!(error.to_string().contains("RESOURCE_EXHAUSTED"), "{error}");
        assert_eq!(
            parse_proto_duration("1.500s"),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_header_wins_over_retry_info() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let body = json!({"error": {"code": 503, "message": "m",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"}]}});
        let Failure::Retry { server_delay, .. } =
            error_answer(503, &h, body.to_string().as_bytes(), SystemTime::now())
        else {
            panic!("503 is retryable")
        };
        assert_eq!(server_delay, Some(Duration::from_secs(2)));
    }

    #[test]
    fn error_classification() {
        let now = SystemTime::now();
        let invalid_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}});
        for (status, body) in [
            (400, invalid_key.to_string()),
            (401, String::new()),
            (
                403,
                r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#.into(),
            ),
        ] {
            let Failure::Fatal(e) = error_answer(status, &HeaderMap::new(), body.as_bytes(), now)
            else {
                panic!("{status} is final")
            };
            assert!(e.is_key_error(), "{status}: {e:?}");
            assert!(
                e.to_string().starts_with("GOOGLE_API_KEY was rejected"),
                "{e}"
            );
        }
        let bad = json!({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}});
        let Failure::Fatal(e) =
            error_answer(400, &HeaderMap::new(), bad.to_string().as_bytes(), now)
        else {
            panic!("400 is final")
        };
        assert_eq!(
            e.to_string(),
            "Gemini API error (HTTP 400 INVALID_ARGUMENT): Invalid JSON payload received."
        );
        assert!(matches!(
            error_answer(500, &HeaderMap::new(), b"oops", now),
            Failure::Retry { .. }
        ));
        assert!(matches!(
            error_answer(501, &HeaderMap::new(), b"", now),
            Failure::Fatal(_)
        ));
        let Failure::Retry { error, .. } = error_answer(502, &HeaderMap::new(), b"", now) else {
            panic!("502 is retryable")
        };
        assert!(error.to_string().contains("Bad Gateway"), "{error}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let g = Gemini::new(GeminiConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..GeminiConfig::default()
        });
        let got: Vec<u128> = (0..4).map(|i| g.backoff(i).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        assert_eq!(g.backoff(u32::MAX), Duration::from_millis(350));
    }

    #[test]
    fn endpoints_and_models() {
        let g = Gemini::new(GeminiConfig {
            base_url: "http://h:1/".into(),
            default_model: "m-1".into(),
            ..GeminiConfig::default()
        });
        assert_eq!(
            g.endpoint("", "generateContent").unwrap(),
            "http://h:1/v1beta/models/m-1:generateContent"
        );
        assert_eq!(
            g.endpoint("models/gemini-2.5-pro", "x").unwrap(),
            "http://h:1/v1beta/models/gemini-2.5-pro:x"
        );
        for bad in ["a/b", "a?key=1", "a b", "models/"] {
            assert!(
                matches!(g.endpoint(bad, "x"), Err(GeminiError::InvalidModel(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let config = GeminiConfig::new(Some("AIzaSECRET".into()));
        let g = Gemini::new(config.clone());
        for s in [
            format!("{config:?}"),
            format!("{g:?}"),
            format!("{:?}", config.api_key),
        ] {
            assert!(!s.contains("AIzaSECRET"), "{s}");
            assert!(s.contains("redacted"), "{s}");
        }
        assert_eq!(ApiKey::new("  "), None);
        assert!(GeminiConfig::new(Some(String::new())).api_key.is_none());
    }

    #[test]
    fn config_from_lookup() {
        let c = GeminiConfig::from_lookup(|k| match k {
            ENV_API_KEY => Some("k".into()),
            ENV_BASE_URL => Some("http://127.0.0.1:9".into()),
            ENV_MODEL => Some(" ".into()),
            _ => None,
        });
        assert_eq!(c.api_key.as_ref().map(ApiKey::expose), Some("k"));
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert_eq!(c.default_model, DEFAULT_MODEL);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let turn = json!({
            "role": "model",
            "parts": [
                {"text": "thinking...", "thought": true, "thoughtSignature": "c2lnMQ=="},
                {"functionCall": {"id": "fc1", "name": "get", "args": {"q": 1}, "future": [1]},
                 "thoughtSignature": "c2lnMg==", "partMetadata": {"x": 1}},
                {"inlineData": {"mimeType": "image/png", "data": "AAA="}},
                {"executableCode": {"language": "PYTHON", "code": "print(1)"}}
            ],
            "newContentField": true
        });
        let content: Content = serde_json::from_value(turn.clone()).unwrap();
        assert_eq!(serde_json::to_value(&content).unwrap(), turn);
        let response = json!({
            "candidates": [{"content": turn, "finishReason": "STOP", "index": 0,
                            "safetyRatings": [], "avgLogprobs": -0.1}],
            "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 9, "trafficType": "ON_DEMAND"},
            "modelVersion": "gemini-x", "responseId": "r1", "createTime": "2026-01-01T00:00:00Z"
        });
        let parsed = chunk(response.clone());
        assert_eq!(serde_json::to_value(&parsed).unwrap(), response);
        assert_eq!(parsed.function_calls().len(), 1);
        assert_eq!(parsed.text(), "", "thought text is not answer text");
    }

    #[test]
    fn request_uses_camel_case() {
        let req = GenerateContentRequest {
            contents: vec![Content::user_text("hi")],
            tools: vec![Tool {
                function_declarations: vec![FunctionDeclaration {
                    name: "f".into(),
                    description: "d".into(),
                    parameters_json_schema: Some(json!({"type": "object"})),
                    extra: Extra::new(),
                }],
                extra: Extra::new(),
            }],
            tool_config: Some(ToolConfig {
                function_calling_config: Some(FunctionCallingConfig {
                    mode: Some("AUTO".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            system_instruction: Some(Content::system("be brief")),
            generation_config: Some(GenerationConfig {
                max_output_tokens: Some(10),
                ..Default::default()
            }),
            extra: Extra::new(),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "tools": [{"functionDeclarations": [{"name": "f", "description": "d",
                            "parametersJsonSchema": {"type": "object"}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {"maxOutputTokens": 10}
            })
        );
    }

    #[test]
    fn merge_concatenates_text_and_keeps_signatures_and_calls() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "I think", "thought": true}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " hard", "thought": true}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
                   "modelVersion": "m1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}, {"text": " world"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "S1"},
                {"functionCall": {"name": "b", "args": {"x": 1}}}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "after"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "", "thoughtSignature": "S2"}]},
                   "finishReason": "STOP"}],
                   "usageMetadata": {"totalTokenCount": 5}}),
        ]
        .map(chunk);
        let merged = merge_chunks(&chunks);
        let content = serde_json::to_value(merged.content().unwrap()).unwrap();
        assert_eq!(
            content,
            json!({"role": "model", "parts": [
                {"text": "I think hard", "thought": true},
                {"text": "Hello world"},
                {"functionCall": {"name": "a", "args": {}}, "thoughtSignature": "S1"},
                {"functionCall": {"name": "b", "args": {"x": 1}}},
                {"text": "after"},
                {"text": "", "thoughtSignature": "S2"}
            ]})
        );
        assert_eq!(merged.finish_reason(), Some("STOP"));
        assert_eq!(merged.model_version.as_deref(), Some("m1"));
        assert_eq!(
            merged.usage_metadata.and_then(|u| u.total_token_count),
            Some(5)
        );
        assert_eq!(merged.candidates.len(), 1);
    }

    #[test]
    fn merge_never_folds_text_into_a_signed_part() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "a", "thoughtSignature": "S"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "b"}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "c", "thought": true}]}}]}),
        ]
        .map(chunk);
        let merged = merge_chunks(&chunks);
        let parts = &merged.content().unwrap().parts;
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].thought_signature.as_deref(), Some("S"));
        assert_eq!(parts[0].text.as_deref(), Some("a"));
        assert_eq!(merged.text(), "ab");
        assert_eq!(merge_chunks([]).candidates.len(), 0);
    }
}
