//! Supervision of background tasks: a panic is counted and logged, and the task is started
//! again after a back-off, so no watcher, timer or loop is lost to one bad input.
//!
//! No IO beyond the tokio timer; the metric is `mcpo_task_panics_total{task}`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::metrics::Metrics;

/// The panic payload as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Count and log a panic of `task`.
pub fn panicked(metrics: &Metrics, task: &str, panic: &(dyn std::any::Any + Send)) {
    metrics.task_panics.with_label_values(&[task]).inc();
    error!(task, panic = %panic_message(panic), "task panicked");
}

/// Run the task `make()` until it returns or `shutdown` is cancelled. A panic is counted
/// and the task is started again after a back-off (100 ms doubling to 5 s).
pub async fn supervise<F, Fut>(
    metrics: Metrics,
    task: &'static str,
    shutdown: CancellationToken,
    make: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match AssertUnwindSafe(make()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                panicked(&metrics, task, &panic);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        // Real time: three back-offs of 100, 200 and 400 ms.
        let metrics = Metrics::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        supervise(
            metrics.clone(),
            "test",
            CancellationToken::new(),
            move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("boom");
                    }
                }
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(metrics.task_panics.with_label_values(&["test"]).get(), 3);
    }

    #[tokio::test]
    async fn shutdown_ends_supervision_of_a_crashing_task() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        supervise(Metrics::new(), "test", shutdown, || async {
            panic!("always")
        })
        .await;
    }
}
