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
//!
//! ## Layout
//! - `config`: [`GeminiConfig`], [`ApiKey`] and the environment variables.
//! - `error`: [`GeminiError`], the classification of error answers, `Retry-After` and
//!   `RetryInfo` parsing ([`parse_retry_after`]).
//! - `retry`: the retry and backoff policy.
//! - `wire`: the REST wire types ([`GenerateContentRequest`], [`Content`], [`Part`], ...).
//! - `merge`: [`StreamMerger`], streamed chunks → one model turn.
//! - `stream`: [`ResponseStream`], the chunks of `streamGenerateContent` read with the
//!   crate's one SSE parser ([`crate::sse`]) and the idle timeout.
//! - `client`: the [`Gemini`] client.

mod client;
mod config;
mod error;
mod merge;
mod retry;
mod stream;
mod wire;

pub use client::Gemini;
pub use config::{
    API_KEY_HEADER, ApiKey, DEFAULT_BASE_URL, DEFAULT_MODEL, ENV_API_KEY, ENV_BASE_URL, ENV_MODEL,
    GeminiConfig,
};
pub use error::{GeminiError, parse_retry_after};
pub use merge::{StreamMerger, merge_chunks};
pub use stream::ResponseStream;
pub use wire::{
    Candidate, Content, Extra, FunctionCall, FunctionCallingConfig, FunctionDeclaration,
    FunctionResponse, GenerateContentRequest, GenerateContentResponse, GenerationConfig, Part,
    PromptFeedback, ROLE_MODEL, ROLE_USER, Tool, ToolConfig, UsageMetadata,
};
