//! API errors: every failure is a JSON body `{kind, apiVersion, status, code, reason, message,
//! details}` shaped like a Kubernetes Status, with a fitting 4xx/5xx code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::admission::AdmissionError;
use crate::domain::parse::ParseError;
use crate::domain::reason::Reason;
use crate::ops::OpsError;
use crate::store::StoreError;

/// The error body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// Always `Status`.
    pub kind: &'static str,
    /// Always `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    /// Always `Failure`.
    pub status: &'static str,
    /// The HTTP status code.
    pub code: u16,
    /// Machine-readable reason, e.g. `Conflict`, `Invalid`, `NotFound`.
    pub reason: String,
    /// One-line human-readable message.
    pub message: String,
    /// Structured detail: `causes` with field paths, the current `resourceVersion`, ...
    #[schema(value_type = Object)]
    pub details: Value,
}

/// An API failure.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: StatusCode,
    reason: String,
    message: String,
    details: Value,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A failure with this code, reason and message, no details.
    pub fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    /// A failure with this code, a reason derived from it, and this message (for errors
    /// that did not come from our own handlers: extractor rejections, layers).
    pub fn from_status(code: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::new(code, reason_for(code), message)
    }

    /// Ask the client to retry after this many seconds (`Retry-After`).
    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// Attach details.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    /// The status code.
    pub fn code(&self) -> StatusCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Status {
            kind: "Status",
            api_version: "v1",
            status: "Failure",
            code: self.code.as_u16(),
            reason: self.reason,
            message: self.message,
            details: self.details,
        };
        let mut r = (self.code, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

/// The Status `reason` for a code when no handler chose one.
pub fn reason_for(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        408 => "Timeout",
        409 => "Conflict",
        410 => "Expired",
        411 => "LengthRequired",
        413 => "RequestEntityTooLarge",
        414 => "RequestURITooLong",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        431 => "RequestHeaderFieldsTooLarge",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        c if c >= 500 => "InternalError",
        _ => "BadRequest",
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::NotFound(o) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", msg)
                .with_details(json!({"name": o.name, "kind": o.kind})),
            StoreError::AlreadyExists(o) => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", msg)
                    .with_details(json!({"name": o.name, "kind": o.kind}))
            }
            StoreError::Conflict { name, current, .. } => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", msg).with_details(
                    json!({"name": name.name, "kind": name.kind, "resourceVersion": current}),
                )
            }
            StoreError::Gone(rv) => ApiError::new(StatusCode::GONE, "Expired", msg)
                .with_details(json!({"resourceVersion": rv.to_string()})),
            StoreError::Reset { now, .. } => ApiError::new(StatusCode::GONE, "Expired", msg)
                .with_details(json!({"resourceVersion": now.to_string()})),
            StoreError::Redis(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", msg)
            }
            StoreError::NotReplicated {
                wanted,
                acknowledged,
                ..
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotReplicated", msg).with_details(
                json!({"replicasWanted": wanted, "replicasAcknowledged": acknowledged}),
            ),
            StoreError::Corrupt { name, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Unreadable", msg)
                    .with_details(json!({"name": name.name, "kind": name.kind}))
            }
            StoreError::BadPolicy(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Unreadable", msg)
            }
            // The API's own writes are never fenced; a deposed leader's are, and they
            // end in a 503 like any other loss of the store.
            StoreError::Fenced { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotLeader", msg).with_retry_after(1)
            }
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        let causes: Vec<Value> = e
            .violations()
            .iter()
            .map(|v| json!({"field": v.path, "reason": v.reason, "message": v.message}))
            .collect();
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
            .with_details(json!({ "causes": causes }))
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        let msg = e.to_string();
        let field = match &e {
            ParseError::Invalid { location, .. } => {
                location.split(": ").nth(2).unwrap_or_default().to_string()
            }
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg)
            .with_details(json!({"causes": [{"field": field, "reason": Reason::Invalid}]}))
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        let msg = e.to_string();
        match e {
            OpsError::Invalid(a) => a.into(),
            OpsError::Parse(p) => p.into(),
            OpsError::Store(s) => s.into(),
            OpsError::Patch(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "BadPatch", msg),
            OpsError::TestFailed(_) => ApiError::new(StatusCode::CONFLICT, "TestFailed", msg),
            OpsError::Immutable(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "FieldImmutable", msg)
            }
            OpsError::Owned {
                name,
                owner,
                writer,
            } => ApiError::new(StatusCode::CONFLICT, "OwnedByAnotherSource", msg).with_details(
                json!({"name": name.name, "kind": name.kind, "owner": owner, "writer": writer}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_the_replicas_did_not_acknowledge_is_503_and_says_it_may_be_applied() {
        let e = ApiError::from(StoreError::NotReplicated {
            wanted: 2,
            acknowledged: 1,
            timeout: std::time::Duration::from_millis(500),
        });
        assert_eq!(e.code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.reason, "NotReplicated");
        assert!(
            e.message.contains("may still have been applied"),
            "{}",
            e.message
        );
        assert_eq!(
            e.details,
            json!({"replicasWanted": 2, "replicasAcknowledged": 1})
        );
    }
}
