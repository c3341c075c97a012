//! The retry policy: which failures are worth another attempt, the exponential backoff, and
//! the loop that waits (the server's requested delay, else the backoff) and tries again.

use std::future::Future;
use std::time::Duration;

use super::config::GeminiConfig;
use super::error::GeminiError;

/// What one attempt's failure means for the retry loop.
pub(super) enum Failure {
    /// Worth another attempt, after the server's requested delay or our backoff.
    Retry {
        /// The error, returned if no attempt is left.
        error: GeminiError,
        /// The wait the server asked for (`Retry-After`, `RetryInfo`), if any.
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

/// Whether an HTTP status is worth a retry: 429 and 5xx except 501.
pub(super) fn retryable_status(status: u16) -> bool {
    status == 429 || (status >= 500 && status != 501)
}

/// The backoff before retry number `retry` (0-based).
pub(super) fn backoff(config: &GeminiConfig, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.min(30));
    config
        .initial_backoff
        .saturating_mul(factor)
        .min(config.max_backoff)
}

/// Run `attempt` until it succeeds, fails for good, or `config.max_retries` retries are spent.
/// A server-requested wait longer than `config.max_retry_after` is not waited for: the error
/// is returned at once. The returned error counts the requests made.
pub(super) async fn with_retries<T, F, Fut>(
    config: &GeminiConfig,
    mut attempt: F,
) -> Result<T, GeminiError>
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
        if made > config.max_retries {
            return Err(error);
        }
        let delay = match server_delay {
            Some(d) if d > config.max_retry_after => {
                tracing::warn!(
                    wait = %humantime::format_duration(d),
                    %error,
                    "Gemini asked for a longer wait than allowed; not retrying"
                );
                return Err(error);
            }
            Some(d) => d,
            None => backoff(config, made - 1),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = GeminiConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..GeminiConfig::default()
        };
        let got: Vec<u128> = (0..4).map(|i| backoff(&config, i).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        assert_eq!(backoff(&config, u32::MAX), Duration::from_millis(350));
    }
}
