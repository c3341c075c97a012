//! Server resources: caps on concurrent long-lived streams (watch, wait, chat, MCP), the upper
//! bound on durations taken from a request, and the supervision of the API's background
//! tasks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use futures::FutureExt;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::domain::reason::Reason;
use crate::metrics::Metrics;

/// The longest duration a request may ask for (`timeout=`): 10 minutes.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Limits of the HTTP server (`serve` flags and their environment fallbacks).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most `?watch=true` streams open at once (each holds a Redis connection).
    pub max_watches: usize,
    /// Most `?wait=` requests waiting at once (each holds a Redis connection).
    pub max_waits: usize,
    /// Most chat turns streaming at once.
    pub max_chats: usize,
    /// Most MCP gateway streams open at once (clients' GET streams, forwarded requests).
    pub max_mcp_streams: usize,
    /// A request's headers must arrive within this (the connection is closed otherwise).
    pub header_read_timeout: Duration,
    /// Each piece of a request body must arrive within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// How long a shutdown waits for open connections before closing them.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_watches: 256,
            max_waits: 256,
            max_chats: 64,
            max_mcp_streams: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A kind of long-lived stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// `?watch=true`.
    Watch,
    /// `?wait=Running`.
    Wait,
    /// A chat turn.
    Chat,
    /// An MCP gateway stream.
    Mcp,
}

impl StreamKind {
    fn label(self) -> &'static str {
        match self {
            StreamKind::Watch => "watch",
            StreamKind::Wait => "wait",
            StreamKind::Chat => "chat",
            StreamKind::Mcp => "mcp",
        }
    }
}

/// One semaphore per stream kind.
pub(crate) struct Streams {
    watch: Arc<Semaphore>,
    wait: Arc<Semaphore>,
    chat: Arc<Semaphore>,
    mcp: Arc<Semaphore>,
    limits: Limits,
    metrics: Metrics,
}

/// A slot of a stream cap, given back (and the gauge lowered) when dropped.
pub(crate) struct StreamPermit {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Streams {
    pub(crate) fn new(limits: Limits, metrics: Metrics) -> Streams {
        Streams {
            watch: Arc::new(Semaphore::new(limits.max_watches)),
            wait: Arc::new(Semaphore::new(limits.max_waits)),
            chat: Arc::new(Semaphore::new(limits.max_chats)),
            mcp: Arc::new(Semaphore::new(limits.max_mcp_streams)),
            limits,
            metrics,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A slot for one stream of `kind`, or 429 `TooManyRequests` with `Retry-After` when
    /// the cap is reached.
    pub(crate) fn acquire(&self, kind: StreamKind) -> Result<StreamPermit, ApiError> {
        let (sem, cap) = match kind {
            StreamKind::Watch => (&self.watch, self.limits.max_watches),
            StreamKind::Wait => (&self.wait, self.limits.max_waits),
            StreamKind::Chat => (&self.chat, self.limits.max_chats),
            StreamKind::Mcp => (&self.mcp, self.limits.max_mcp_streams),
        };
        let permit = sem.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "too many open {} streams (the limit is {cap}); retry later",
                    kind.label()
                ),
            )
            .with_details(serde_json::json!({"kind": kind.label(), "limit": cap}))
            .with_retry_after(1)
        })?;
        let gauge = self.metrics.open_streams.with_label_values(&[kind.label()]);
        gauge.inc();
        Ok(StreamPermit {
            _permit: permit,
            gauge,
        })
    }
}

/// A duration from a request (`30s`, `2m`), at most [`MAX_REQUEST_TIMEOUT`]; 400 otherwise.
pub(crate) fn request_duration(field: &str, raw: &str) -> Result<Duration, ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{field}={}: {why}", raw.escape_debug()),
        )
        .with_details(serde_json::json!({"causes": [{"field": field, "reason": Reason::Invalid}]}))
    };
    let d = humantime::parse_duration(raw).map_err(|e| bad(e.to_string()))?;
    if d > MAX_REQUEST_TIMEOUT {
        return Err(bad(format!(
            "at most {} is allowed",
            humantime::format_duration(MAX_REQUEST_TIMEOUT)
        )));
    }
    Ok(d)
}

/// Run `fut`, catching a panic: a panic is logged and counted in
/// `mcpo_task_panics_total{task}`. Returns false when it panicked.
pub(crate) async fn supervised<F>(metrics: &Metrics, task: &str, fut: F) -> bool
where
    F: Future<Output = ()>,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(()) => true,
        Err(payload) => {
            crate::supervise::panicked(metrics, task, &payload);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_give_429_and_free_on_drop() {
        let metrics = Metrics::new();
        let streams = Streams::new(
            Limits {
                max_watches: 1,
                ..Limits::default()
            },
            metrics.clone(),
        );
        let first = streams.acquire(StreamKind::Watch).unwrap();
        let again = streams.acquire(StreamKind::Watch).err().unwrap();
        assert_eq!(again.code(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            streams.acquire(StreamKind::Wait).is_ok(),
            "caps are per kind"
        );
        assert_eq!(metrics.open_streams.with_label_values(&["watch"]).get(), 1);
        drop(first);
        assert_eq!(metrics.open_streams.with_label_values(&["watch"]).get(), 0);
        assert!(streams.acquire(StreamKind::Watch).is_ok());
    }

    #[test]
    fn request_durations_are_bounded() {
        assert_eq!(
            request_duration("timeout", "30s").unwrap(),
            Duration::from_secs(30)
        );
        assert!(request_duration("timeout", "10m").is_ok());
        for bad in ["11m", "100000000000000000s", "9999999999years", "x", ""] {
            let e = request_duration("timeout", bad).err().unwrap();
            assert_eq!(e.code(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_panic_is_counted_not_propagated() {
        let metrics = Metrics::new();
        assert!(supervised(&metrics, "ok", async {}).await);
        let ok = supervised(&metrics, "boom", async { panic!("boom") }).await;
        assert!(!ok);
        assert_eq!(metrics.task_panics.with_label_values(&["boom"]).get(), 1);
    }
}
