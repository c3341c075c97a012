//! A client of the HTTP API (reqwest): what the CLI's `--server` mode, `chat` and `chaos`
//! use to talk to a running `serve`.

use std::time::Duration;

use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::domain::admission::Admit;
use crate::domain::resource::Session;
use crate::ops::{Applied, OpsError, PatchRequest, PatchType};
use crate::sse;
use crate::store::{EventType, SessionEvent, StoreError, WatchEvent};

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the API at {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error Status.
    #[error("{message} (HTTP {code})")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The Status reason.
        reason: String,
        /// The Status message.
        message: String,
    },
    /// A store error (when the backend is Redis).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operation error (when the backend is Redis).
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// A label selector does not parse.
    #[error(transparent)]
    Selector(#[from] crate::domain::selector::SelectorError),
    /// The Docker engine failed (`logs` and `describe` in Redis mode read it directly).
    #[error(transparent)]
    Docker(#[from] crate::runtime::RuntimeError),
    /// The answer was not what the API promises.
    #[error("unexpected answer from the API: {0}")]
    Protocol(String),
}

/// A client of one `serve`.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:3000`), sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or_default();
        Err(ClientError::Api {
            code,
            reason: v["reason"].as_str().unwrap_or("").to_string(),
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {code}")),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        resp.json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A request whose 404 means "there is none": its JSON answer, or `None`.
    async fn optional<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<Option<T>, ClientError> {
        match self.send(method, path, None, None).await {
            Ok(r) => Ok(Some(Self::json(r).await?)),
            Err(ClientError::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One session, or `None`.
    pub async fn get(&self, name: &str) -> Result<Option<Session>, ClientError> {
        self.get_as(name).await
    }

    /// One object of kind `T`, or `None`.
    pub async fn get_as<T: Admit>(&self, name: &str) -> Result<Option<T>, ClientError> {
        self.optional(Method::GET, &format!("/api/v1/{}/{name}", T::PLURAL))
            .await
    }

    /// Every session and the list's revision.
    pub async fn list(&self) -> Result<(Vec<Session>, u64), ClientError> {
        let (items, rv, _) = self.list_full(None).await?;
        Ok((items, rv))
    }

    /// Every session (matching `selector`, a label selector the server evaluates), the
    /// list's revision, and the stored objects the server set aside.
    pub async fn list_full(
        &self,
        selector: Option<&str>,
    ) -> Result<(Vec<Session>, u64, Vec<crate::store::Unreadable>), ClientError> {
        self.list_as(selector).await
    }

    /// Every object of kind `T` (matching `selector`, evaluated by the server), the list's
    /// revision, and the stored objects the server set aside.
    pub async fn list_as<T: Admit>(
        &self,
        selector: Option<&str>,
    ) -> Result<(Vec<T>, u64, Vec<crate::store::Unreadable>), ClientError> {
        // In pages, as kubectl does (`--chunk-size` 500): a large list never travels in one
        // response. The first page's revision is the list's.
        let mut items: Vec<T> = Vec::new();
        let mut unreadable = Vec::new();
        let mut rv = None;
        let mut next: Option<String> = None;
        loop {
            let limit = LIST_PAGE.to_string();
            let mut q: Vec<(&str, &str)> = vec![("limit", &limit)];
            if let Some(sel) = selector.filter(|s| !s.trim().is_empty()) {
                q.push(("labelSelector", sel));
            }
            if let Some(c) = &next {
                q.push(("continue", c));
            }
            let path = format!("/api/v1/{}?{}", T::PLURAL, query(&q));
            let r = self.send(Method::GET, &path, None, None).await?;
            let v: Value = Self::json(r).await?;
            rv.get_or_insert(
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            );
            let page: Vec<T> = serde_json::from_value(v["items"].clone())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            items.extend(page);
            if let Some(a) = v["metadata"]["unreadable"].as_array() {
                unreadable.extend(a.iter().map(|u| crate::store::Unreadable {
                    name: u["name"].as_str().unwrap_or_default().to_string(),
                    reason: u["reason"].as_str().unwrap_or_default().to_string(),
                }));
            }
            match v["metadata"]["continue"].as_str() {
                // A server that repeats a token would page forever: stop.
                Some(c) if !c.is_empty() && next.as_deref() != Some(c) => {
                    next = Some(c.to_string())
                }
                _ => break,
            }
        }
        let rv = rv.unwrap_or(0);
        Ok((items, rv, unreadable))
    }

    /// Create or replace (PUT), reporting what happened.
    pub async fn apply(
        &self,
        s: &Session,
        dry_run: bool,
    ) -> Result<(Applied, Session), ClientError> {
        self.apply_as(s, dry_run).await
    }

    /// Create or replace an object of kind `T` (PUT), reporting what happened.
    pub async fn apply_as<T: Admit>(
        &self,
        obj: &T,
        dry_run: bool,
    ) -> Result<(Applied, T), ClientError> {
        let q = if dry_run { "?dryRun=All" } else { "" };
        let body = serde_json::to_string(obj).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let r = self
            .send(
                Method::PUT,
                &format!("/api/v1/{}/{}{q}", T::PLURAL, obj.meta().name),
                Some("application/json"),
                Some(body),
            )
            .await?;
        let what = match r
            .headers()
            .get("x-apply-result")
            .and_then(|v| v.to_str().ok())
        {
            Some("created") => Applied::Created,
            Some("unchanged") => Applied::Unchanged,
            _ => Applied::Configured,
        };
        Ok((what, Self::json(r).await?))
    }

    /// Patch a session.
    pub async fn patch(&self, req: &PatchRequest<'_>) -> Result<Session, ClientError> {
        self.patch_as(req).await
    }

    /// Patch an object of kind `T`.
    pub async fn patch_as<T: Admit>(&self, req: &PatchRequest<'_>) -> Result<T, ClientError> {
        let ct = match req.kind {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Json => "application/json-patch+json",
        };
        let q = if req.dry_run { "?dryRun=All" } else { "" };
        let r = self
            .send(
                Method::PATCH,
                &format!("/api/v1/{}/{}{q}", T::PLURAL, req.name),
                Some(ct),
                Some(req.doc.to_string()),
            )
            .await?;
        Self::json(r).await
    }

    /// Delete a session; `None` when it did not exist.
    pub async fn delete(&self, name: &str) -> Result<Option<Session>, ClientError> {
        self.delete_as(name).await
    }

    /// Delete an object of kind `T`; `None` when it did not exist.
    pub async fn delete_as<T: Admit>(&self, name: &str) -> Result<Option<T>, ClientError> {
        self.optional(Method::DELETE, &format!("/api/v1/{}/{name}", T::PLURAL))
            .await
    }

    /// The session's events.
    pub async fn events(&self, name: &str) -> Result<Vec<SessionEvent>, ClientError> {
        self.events_as::<Session>(name).await
    }

    /// The recent events of an object of kind `T`.
    pub async fn events_as<T: Admit>(&self, name: &str) -> Result<Vec<SessionEvent>, ClientError> {
        let r = self
            .send(
                Method::GET,
                &format!("/api/v1/{}/{name}/events", T::PLURAL),
                None,
                None,
            )
            .await?;
        let v: Value = Self::json(r).await?;
        serde_json::from_value(v["items"].clone()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The container summary, `None` when there is none.
    pub async fn container(&self, name: &str) -> Result<Option<Value>, ClientError> {
        self.optional(Method::GET, &format!("/api/v1/sessions/{name}/container"))
            .await
    }

    /// Ask for a rollout restart; `None` when the session does not exist.
    pub async fn restart(&self, name: &str) -> Result<Option<Session>, ClientError> {
        self.optional(Method::POST, &format!("/api/v1/sessions/{name}/restart"))
            .await
    }

    /// The contract policy the server admits with.
    pub async fn policy(&self) -> Result<crate::domain::contract::PublishedPolicy, ClientError> {
        let r = self.send(Method::GET, "/api/v1/policy", None, None).await?;
        let p: crate::domain::contract::PublishedPolicy = Self::json(r).await?;
        p.checked().map_err(ClientError::Protocol)
    }

    /// The stderr of the session's sandbox, as it arrives (`None`: no container).
    pub async fn logs(
        &self,
        name: &str,
        q: &crate::runtime::LogQuery,
    ) -> Result<
        Option<futures::stream::BoxStream<'static, Result<bytes::Bytes, ClientError>>>,
        ClientError,
    > {
        let (tail, since) = (
            q.tail.map(|n| n.to_string()),
            q.since.map(|t| t.to_rfc3339()),
        );
        let mut pairs = vec![("follow", if q.follow { "true" } else { "false" })];
        pairs.extend(tail.as_deref().map(|t| ("tailLines", t)));
        pairs.extend(since.as_deref().map(|t| ("sinceTime", t)));
        let path = format!("/api/v1/sessions/{name}/log?{}", query(&pairs));
        match self.send(Method::GET, &path, None, None).await {
            Ok(r) => Ok(Some(
                r.bytes_stream()
                    .map(|b| b.map_err(|e| ClientError::Protocol(e.to_string())))
                    .boxed(),
            )),
            Err(ClientError::Api {
                code: 404, reason, ..
            }) if reason == "NoContainer" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send a chat message; the answer's events stream back.
    pub async fn chat(&self, name: &str, message: &str) -> Result<ChatStream, ClientError> {
        let body = serde_json::json!({ "message": message }).to_string();
        let r = self
            .send(
                Method::POST,
                &format!("/api/v1/sessions/{name}/chat"),
                Some("application/json"),
                Some(body),
            )
            .await?;
        Ok(ChatStream {
            events: sse::events(r.bytes_stream()),
        })
    }

    /// Watch every session after `revision`, over SSE.
    pub async fn watch(&self, revision: u64) -> Result<HttpWatch, ClientError> {
        self.watch_as(revision).await
    }

    /// Watch every object of kind `T` after `revision`, over SSE.
    pub async fn watch_as<T: Admit>(&self, revision: u64) -> Result<HttpWatch<T>, ClientError> {
        let r = self
            .send(
                Method::GET,
                &format!(
                    "/api/v1/{}?watch=true&resourceVersion={revision}",
                    T::PLURAL
                ),
                None,
                None,
            )
            .await?;
        Ok(HttpWatch {
            events: sse::events(r.bytes_stream()),
            failed: None,
            kind: std::marker::PhantomData,
        })
    }
}

/// The SSE events of a response body ([`crate::sse`]).
type Events = BoxStream<'static, Result<sse::Event, sse::SseError<reqwest::Error>>>;

/// Objects per page when the client lists (the server caps pages at
/// [`crate::domain::limits::MAX_LIST_LIMIT`]).
pub const LIST_PAGE: usize = 500;

/// Most events one [`HttpWatch::next_batch`] returns.
const MAX_WATCH_BATCH: usize = 1024;

/// An SSE watch on the API, of one kind (sessions by default).
pub struct HttpWatch<T = Session> {
    events: Events,
    /// An error met after some events of a batch, returned by the next call.
    failed: Option<ClientError>,
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: Admit> HttpWatch<T> {
    /// Wait up to `block` for events.
    pub async fn next_batch(&mut self, block: Duration) -> Result<Vec<WatchEvent<T>>, ClientError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + block;
        let mut out = Vec::new();
        // Wait for one event, then take those already readable without waiting again.
        while out.len() < MAX_WATCH_BATCH {
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, self.events.next()).await {
                    Err(_) => break,
                    Ok(next) => next,
                }
            } else {
                match self.events.next().now_or_never() {
                    None => break,
                    Some(next) => next,
                }
            };
            let event = match next {
                None => Err(ClientError::Protocol("the watch stream ended".into())),
                Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
                Some(Ok(event)) => watch_event(&event),
            };
            match event {
                Ok(Some(event)) => out.push(event),
                Ok(None) => {}
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// One SSE event of a watch → a [`WatchEvent`]; `None` for an event of another type; the
/// server's Status for an `ERROR` event.
fn watch_event<T: Admit>(event: &sse::Event) -> Result<Option<WatchEvent<T>>, ClientError> {
    let kind = match event.event.trim() {
        "ADDED" => EventType::Added,
        "MODIFIED" => EventType::Modified,
        "DELETED" => EventType::Deleted,
        "ERROR" => {
            let v: Value = serde_json::from_str(&event.data).unwrap_or_default();
            return Err(ClientError::Api {
                code: v["code"].as_u64().unwrap_or(500) as u16,
                reason: "WatchError".into(),
                message: v["message"].as_str().unwrap_or("watch failed").into(),
            });
        }
        _ => return Ok(None),
    };
    let object: T = serde_json::from_str(&event.data)
        .map_err(|e| ClientError::Protocol(format!("watch event: {e}")))?;
    Ok(Some(WatchEvent {
        revision: event.id.trim().parse().unwrap_or(0),
        kind,
        name: object.meta().name.clone(),
        status_only: false,
        object: Some(object),
        unreadable: None,
    }))
}

/// The events of one chat turn (`text`, `tool_call`, `tool_result`, `done`, `error`), each
/// a JSON object with a `type` field.
pub struct ChatStream {
    events: Events,
}

impl ChatStream {
    /// The next event, `None` when the stream ended.
    pub async fn next_event(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            let event = match self.events.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
                Some(Ok(event)) => event,
            };
            if event.data.is_empty() {
                continue;
            }
            return serde_json::from_str(&event.data)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("chat event: {e}")));
        }
    }
}

impl crate::ops::Changes for HttpWatch<Session> {
    type Error = ClientError;
    async fn next_batch(&mut self, block: Duration) -> Result<Vec<WatchEvent>, ClientError> {
        HttpWatch::next_batch(self, block).await
    }
}

/// A URL query string from pairs, percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl ClientError {
    /// Is this "the server says the write conflicts"?
    pub fn is_conflict(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => *code == StatusCode::CONFLICT.as_u16(),
            ClientError::Store(StoreError::Conflict { .. }) => true,
            ClientError::Ops(OpsError::Store(StoreError::Conflict { .. })) => true,
            _ => false,
        }
    }
}
