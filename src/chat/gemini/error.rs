//! [`GeminiError`], the one error type of the module, and the reading of Google's error
//! answers: which ones are final, the key errors, and the wait a server asks for
//! (`Retry-After`, `google.rpc.RetryInfo`).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;

use super::retry::{Failure, retryable_status};

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

    /// Record how many requests were made (retries included) in an error that counts them.
    pub(super) fn set_attempts(&mut self, n: u32) {
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

/// Google's `error` object.
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

/// Classify an error answer (status, headers, body) into a [`Failure`].
pub(super) fn error_answer(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Failure {
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

/// The error object Google sends inside a stream (the `error` of the envelope, as a value)
/// → [`GeminiError::Api`], with its `error.code` as the status (500 when it has none).
pub(super) fn stream_error(error: &Value) -> GeminiError {
    let body: ErrorBody = serde_json::from_value(error.clone()).unwrap_or_default();
    GeminiError::Api {
        status: body.code.unwrap_or(500),
        status_text: body.status,
        message: body
            .message
            .unwrap_or_else(|| "error inside the stream".into()),
        retry_after: retry_info_delay(&body.details),
        attempts: 1,
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

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
}
