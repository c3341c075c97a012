//! How to reach Gemini: [`GeminiConfig`] (flags or the environment) and the [`ApiKey`], which
//! no `Debug` output shows.

use std::fmt;
use std::time::Duration;

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
/// [`Gemini::new`](super::Gemini::new). `Debug` never shows the key.
#[derive(Clone, Debug)]
pub struct GeminiConfig {
    /// The API key (`GOOGLE_API_KEY`); `None` makes every call fail with
    /// [`GeminiError::MissingApiKey`](super::GeminiError::MissingApiKey).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::gemini::Gemini;

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
}
