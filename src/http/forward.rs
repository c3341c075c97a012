//! Forwarding to the leader: only the leader talks to sandboxes (one attach per container's
//! stdio), so a standby that receives a chat turn or an MCP gateway request passes it on to
//! the address the
//! leader published ([`crate::replica::Leadership::leader_address`]) and streams the answer
//! back as it comes. A forwarded request carries [`FORWARDED`]; a replica that gets one
//! while not leading answers 503 instead of forwarding again, so a request never loops
//! between replicas during a hand-over.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::Response;

use super::limits::StreamKind;
use super::{ApiError, AppState};

/// The header a forwarded request carries (the forwarding replica's id).
pub const FORWARDED: &str = "x-mcpo-forwarded-by";

/// The client standbys forward with: connect quickly or give up; no overall timeout (the
/// answer is a stream as long as the turn), but a leader silent for longer than three SSE
/// keep-alives (15 s each) is given up; no proxy, no redirects (the leader is a peer).
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(45))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

fn unavailable(reason: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason, message).with_retry_after(1)
}

/// One request to pass on to the leader.
pub(super) struct Hop<'a> {
    /// Its method.
    pub method: Method,
    /// The path, as segments (each percent-encoded here).
    pub segments: &'a [&'a str],
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// Which of them go on (besides `Authorization`).
    pub pass: &'a [HeaderName],
    /// Which headers of the leader's answer come back.
    pub back: &'a [HeaderName],
    /// The body.
    pub body: Bytes,
    /// The stream cap it counts against while its answer streams.
    pub kind: StreamKind,
}

/// The headers a chat turn passes on and gets back.
pub(super) const CHAT_PASS: [HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];
/// The headers of a chat turn's answer passed back.
pub(super) const CHAT_BACK: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

/// On a standby, pass `hop` on to the leader and return its answer; `None` on the leader
/// itself (or without leader election), where the caller handles the request.
pub(super) async fn to_leader(st: &AppState, hop: Hop<'_>) -> Result<Option<Response>, ApiError> {
    let Hop {
        method,
        segments,
        headers,
        pass,
        back,
        body,
        kind,
    } = hop;
    let Some(leadership) = &st.inner.leadership else {
        return Ok(None);
    };
    if leadership.is_leader() {
        return Ok(None);
    }
    if headers.contains_key(FORWARDED) {
        return Err(unavailable(
            "NotLeader",
            "this replica received a forwarded request but is not the leader (a hand-over is \
             under way); retry"
                .into(),
        ));
    }
    let Some(base) = leadership.leader_address().await? else {
        return Err(unavailable(
            "NoLeader",
            "no replica leads right now (an election is under way); retry".into(),
        ));
    };
    let mut url = reqwest::Url::parse(&base).map_err(|e| {
        unavailable(
            "LeaderUnreachable",
            format!("the leader published an unusable address {base:?}: {e}"),
        )
    })?;
    match url.path_segments_mut() {
        Ok(mut p) => {
            p.pop_if_empty().extend(segments);
        }
        Err(()) => {
            return Err(unavailable(
                "LeaderUnreachable",
                format!("the leader published an unusable address {base:?}"),
            ));
        }
    }
    let permit = st.inner.streams.acquire(kind)?;
    let mut req = st
        .inner
        .forwarder
        .request(method, url)
        .header(FORWARDED, leadership.id())
        .body(body);
    for name in std::iter::once(&header::AUTHORIZATION).chain(pass) {
        for v in headers.get_all(name) {
            req = req.header(name, v);
        }
    }
    let answer = req.send().await.map_err(|e| {
        unavailable(
            "LeaderUnreachable",
            format!("the leader at {base} cannot be reached: {e}"),
        )
    })?;
    st.inner.metrics.forwarded.inc();
    // Only 401: a 403 is the leader's own answer (an `Origin` it refuses), passed on.
    if answer.status().as_u16() == 401 {
        // The caller's token was good here: the replicas do not share one.
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "LeaderRejected",
            format!(
                "the leader at {base} refused this replica's forwarded credentials ({}); give every replica the same ORCHESTRATOR_TOKEN",
                answer.status()
            ),
        ));
    }
    let mut out = Response::builder().status(answer.status().as_u16());
    for name in back {
        if let Some(v) = answer.headers().get(name) {
            out = out.header(name, v);
        }
    }
    // The permit lives as long as the streamed body.
    let stream = futures::StreamExt::map(answer.bytes_stream(), move |chunk| {
        let _held = &permit;
        chunk
    });
    out.body(Body::from_stream(stream))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("forwarded answer: {e}"),
            )
        })
        .map(Some)
}
