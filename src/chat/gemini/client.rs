//! The [`Gemini`] client: `generateContent` and `streamGenerateContent` with the key header,
//! timeouts and retries described in the module documentation.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::HeaderValue;

use super::config::{API_KEY_HEADER, GeminiConfig};
use super::error::{GeminiError, error_answer};
use super::retry::{Failure, retryable_status, with_retries};
use super::stream::{ResponseStream, SseBody};
use super::wire::{GenerateContentRequest, GenerateContentResponse};

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
        with_retries(&self.config, || async {
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
    /// yields that chunk and the following ones. Merge them with
    /// [`StreamMerger`](super::StreamMerger).
    pub async fn stream_generate(
        &self,
        model: &str,
        req: &GenerateContentRequest,
    ) -> Result<ResponseStream, GeminiError> {
        let key = self.key_header()?;
        let url = format!("{}?alt=sse", self.endpoint(model, "streamGenerateContent")?);
        tracing::debug!(%url, "gemini streamGenerateContent");
        with_retries(&self.config, || async {
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
            let mut body = SseBody::new(
                resp.bytes_stream(),
                self.config.stream_idle_timeout,
                self.config.base_url.clone(),
            );
            match body.next().await {
                Some(Ok(first)) => Ok(body.into_stream(first)),
                None => Ok(ResponseStream::empty()),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
