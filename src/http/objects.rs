//! What the routes of every stored kind share (`/api/v1/sessions`, `/api/v1/warmpools`):
//! list with a label selector, the SSE watch, reading one object, the body of a create or
//! replace, patches, deletes, ETags. Generic over [`Admit`]; the per-kind files add their
//! OpenAPI annotations and what only their kind has (a session's `?wait=`, restart, log).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::limits::{StreamKind, supervised};
use super::sessions::{content_type, off_workers, unsupported};
use super::{ApiError, AppState};
use crate::domain::admission::Admit;
use crate::domain::parse;
use crate::domain::reason::Reason;
use crate::domain::resource::{API_VERSION, ObjectRef};
use crate::domain::selector::Selector;
use crate::ops::{self, Applied, PatchRequest, PatchType};
use crate::store::{EventType, Store, StoreError};

/// Who the API writes as (`source` annotation, ownership).
pub(super) const SOURCE: &str = "api";

/// Query of list and read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ReadQuery {
    /// Stream changes as Server-Sent Events (ADDED, MODIFIED, DELETED).
    pub watch: Option<bool>,
    /// Only objects whose labels match, e.g. `team=research,tier in (gold)`.
    pub label_selector: Option<String>,
    /// With `watch`: resume after this resourceVersion instead of listing first.
    pub resource_version: Option<String>,
    /// At most this many objects per list response (or per page of a watch's initial
    /// listing), in name order; more follow with `continue`. Capped at 5000.
    pub limit: Option<usize>,
    /// The `metadata.continue` token of the previous page.
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
}

/// A position in a paged list: the revision of its first page and the last name served.
#[derive(Debug, Clone, PartialEq)]
struct Continue {
    revision: u64,
    after: String,
}

impl Continue {
    fn token(&self) -> String {
        format!("{}.{}", self.revision, self.after)
    }

    fn parse(token: &str) -> Result<Continue, ApiError> {
        let bad = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "continue token {} is not one this server gave",
                    crate::domain::limits::echo(token)
                ),
            )
        };
        let (rv, after) = token.split_once('.').ok_or_else(bad)?;
        let revision = rv.parse().map_err(|_| bad())?;
        if !crate::domain::admission::is_dns1123_label(after) {
            return Err(bad());
        }
        Ok(Continue {
            revision,
            after: after.to_string(),
        })
    }
}

/// The page size asked for, if the request pages (`limit` or `continue`), capped.
fn page_size(q: &ReadQuery) -> Option<usize> {
    let max = crate::domain::limits::MAX_LIST_LIMIT;
    match (q.limit, &q.continue_) {
        (Some(n), _) => Some(n.clamp(1, max)),
        (None, Some(_)) => Some(max),
        (None, None) => None,
    }
}

/// The store of kind `T`.
pub(super) fn store<T: Admit>(st: &AppState) -> Store<T> {
    st.inner.store.of::<T>()
}

/// Parse a POST/PUT body (JSON or YAML) holding exactly one object of kind `T`, on the
/// blocking pool. A document of another kind is a 422 naming the field `kind`.
pub(super) async fn body_of<T: Admit>(headers: &HeaderMap, bytes: Bytes) -> Result<T, ApiError> {
    let ct = content_type(headers);
    if !matches!(
        ct.as_str(),
        "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
    ) {
        return Err(unsupported(&ct, "application/json or application/yaml"));
    }
    off_workers(move || parse_one::<T>(&bytes)).await
}

fn parse_one<T: Admit>(bytes: &Bytes) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not UTF-8",
        )
    })?;
    let mut docs = parse::parse_str("body", text)?;
    if docs.len() != 1 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("body: expected one {}, got {}", T::KIND, docs.len()),
        ));
    }
    T::from_resource(docs.remove(0).resource).map_err(|other| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "body: document 0: kind: must be {:?} at /api/v1/{}, got {:?}",
                T::KIND,
                T::PLURAL,
                other.kind()
            ),
        )
        .with_details(json!({"causes": [{"field": "kind", "reason": Reason::Invalid}]}))
    })
}

/// The `If-Match` precondition, without quotes or a weak marker.
pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    Some(v.trim_matches('"').to_string())
}

/// The query's label selector (400 when it does not parse).
pub(super) fn selector(q: &ReadQuery) -> Result<Selector, ApiError> {
    Selector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))
}

/// `r` with the object's resourceVersion as its ETag.
pub(super) fn with_rv<T: Admit>(mut r: Response, obj: &T) -> Response {
    if let Some(rv) = &obj.meta().resource_version
        && let Ok(v) = header::HeaderValue::from_str(&format!("\"{rv}\""))
    {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// One object, or a 404 Status naming its kind.
pub(super) async fn get<T: Admit>(st: &AppState, name: &str) -> Result<T, ApiError> {
    store::<T>(st)
        .get(name)
        .await?
        .ok_or_else(|| StoreError::NotFound(ObjectRef::of::<T>(name)).into())
}

/// List (`<Kind>List`, filtered by the label selector), or watch with `?watch=true`.
pub(super) async fn list<T: Admit>(
    st: AppState,
    headers: &HeaderMap,
    q: ReadQuery,
) -> Result<Response, ApiError> {
    let sel = selector(&q)?;
    let from = q.continue_.as_deref().map(Continue::parse).transpose()?;
    if q.watch.unwrap_or(false) {
        let paged = page_size(&q).map(|n| (n, from));
        return watch::<T>(st, None, sel, resume_from(&q, headers)?, paged).await;
    }
    if let Some(limit) = page_size(&q) {
        let page = store::<T>(&st)
            .list_page(limit, from.as_ref().map(|c| c.after.as_str()))
            .await?;
        // Every page carries the first page's revision: watch from it after the last
        // page to see every change made while paging.
        let revision = from.map_or(page.revision, |c| c.revision);
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(after) = &page.next_after {
            metadata["continue"] = json!(
                Continue {
                    revision,
                    after: after.clone()
                }
                .token()
            );
            metadata["remainingItemCount"] = json!(page.remaining);
        }
        if !page.unreadable.is_empty() {
            metadata["unreadable"] = json!(page.unreadable);
        }
        let items: Vec<T> = page
            .items
            .into_iter()
            .filter(|s| sel.matches(&s.meta().labels))
            .collect();
        return Ok(Json(json!({
            "apiVersion": API_VERSION,
            "kind": format!("{}List", T::KIND),
            "metadata": metadata,
            "items": items,
        }))
        .into_response());
    }
    let snap = store::<T>(&st).list().await?;
    let items: Vec<T> = snap
        .items
        .into_iter()
        .filter(|s| sel.matches(&s.meta().labels))
        .collect();
    let metadata = if snap.unreadable.is_empty() {
        json!({"resourceVersion": snap.revision.to_string()})
    } else {
        json!({"resourceVersion": snap.revision.to_string(), "unreadable": snap.unreadable})
    };
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": format!("{}List", T::KIND),
        "metadata": metadata,
        "items": items,
    }))
    .into_response())
}

/// Read one object, or watch it with `?watch=true`.
pub(super) async fn read<T: Admit>(
    st: AppState,
    name: String,
    headers: &HeaderMap,
    q: ReadQuery,
) -> Result<Response, ApiError> {
    if q.watch.unwrap_or(false) {
        let sel = selector(&q)?;
        return watch::<T>(st, Some(name), sel, resume_from(&q, headers)?, None).await;
    }
    let obj = get::<T>(&st, &name).await?;
    Ok(with_rv(Json(&obj).into_response(), &obj))
}

fn resume_from(q: &ReadQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = q.resource_version.clone().or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    match raw.as_deref() {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("resourceVersion {v:?} is not a number"),
            )
        }),
    }
}

fn sse_event<T: serde::Serialize>(kind: EventType, rv: u64, obj: &T) -> Event {
    let kind = match kind {
        EventType::Added => "ADDED",
        EventType::Modified => "MODIFIED",
        EventType::Deleted => "DELETED",
    };
    Event::default()
        .event(kind)
        .id(rv.to_string())
        .data(serde_json::to_string(obj).unwrap_or_default())
}

fn error_event(code: u16, message: &str) -> Event {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": message, "details": {}});
    Event::default().event("ERROR").data(body.to_string())
}

/// Stream changes of kind `T` as SSE. Without a resume point the current objects come first
/// as ADDED. Each watch holds a slot of the watch cap (and its own Redis connection) until
/// the client goes away or the server shuts down; the task behind it is supervised: a panic
/// ends the stream with an `ERROR` event and is counted
/// (`mcpo_task_panics_total{task="http_watch"}`). With `paged` (page size, and where an
/// earlier watch's listing stopped) the initial objects are read and sent a page at a time,
/// and the changes follow from the first page's revision.
async fn watch<T: Admit>(
    st: AppState,
    name: Option<String>,
    sel: Selector,
    from: Option<u64>,
    paged: Option<(usize, Option<Continue>)>,
) -> Result<Response, ApiError> {
    let permit = st.inner.streams.acquire(StreamKind::Watch)?;
    let store = store::<T>(&st);
    let mut pages: Option<(usize, Option<String>)> = None;
    let (initial, mut watch) = match (from, paged) {
        (Some(rv), _) => (Vec::new(), store.watch(rv).await?),
        (None, Some((limit, start))) => {
            let page = store
                .list_page(limit, start.as_ref().map(|c| c.after.as_str()))
                .await?;
            let revision = start.as_ref().map_or(page.revision, |c| c.revision);
            let watch = store.watch_from(revision, &page.identity).await?;
            pages = page.next_after.clone().map(|a| (limit, Some(a)));
            (page.items, watch)
        }
        (None, None) => {
            let snap = store.list().await?;
            let watch = store.watch_from(snap.revision, &snap.identity).await?;
            (snap.items, watch)
        }
    };
    let page_store = store.clone();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    let shutdown = st.inner.shutdown.clone();
    let wanted = move |n: &str, s: &T| {
        name.as_deref().is_none_or(|x| x == n) && sel.matches(&s.meta().labels)
    };
    let metrics = st.inner.metrics.clone();
    let on_panic = tx.clone();
    let task = async move {
        let mut initial = initial;
        loop {
            for s in &initial {
                let rv = s
                    .meta()
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if wanted(&s.meta().name, s)
                    && tx
                        .send(Ok(sse_event(EventType::Added, rv, s)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            // The next page of the initial listing, if the watch pages it.
            let Some((limit, Some(after))) = pages.take() else {
                break;
            };
            match page_store.list_page(limit, Some(&after)).await {
                Ok(page) => {
                    pages = page.next_after.map(|a| (limit, Some(a)));
                    initial = page.items;
                }
                Err(e) => {
                    let _ = tx.send(Ok(error_event(503, &e.to_string()))).await;
                    return;
                }
            }
        }
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                b = watch.next_batch(Duration::from_secs(5)) => b,
            };
            match batch {
                Ok(events) => {
                    for ev in events {
                        let Some(obj) = &ev.object else { continue };
                        if wanted(&ev.name, obj)
                            && tx
                                .send(Ok(sse_event(ev.kind, ev.revision, obj)))
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let code = if matches!(e, StoreError::Gone(_) | StoreError::Reset { .. }) {
                        410
                    } else {
                        503
                    };
                    let _ = tx.send(Ok(error_event(code, &e.to_string()))).await;
                    return;
                }
            }
        }
    };
    tokio::spawn(async move {
        let _permit = permit;
        if !supervised(&metrics, "http_watch", task).await {
            let _ = on_panic
                .send(Ok(error_event(500, "the watch failed unexpectedly")))
                .await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Create an object of kind `T` from a request body (POST).
pub(super) async fn create<T: Admit>(
    st: &AppState,
    headers: &HeaderMap,
    bytes: Bytes,
    dry_run: bool,
) -> Result<T, ApiError> {
    let desired = body_of::<T>(headers, bytes).await?;
    Ok(ops::create(&store::<T>(st), &st.inner.policy, &desired, SOURCE, dry_run).await?)
}

/// Create or replace the object `name` from a request body (PUT); the body's name must be
/// the URL's, `If-Match` is the precondition when given.
pub(super) async fn replace<T: Admit>(
    st: &AppState,
    name: &str,
    headers: &HeaderMap,
    bytes: Bytes,
    dry_run: bool,
) -> Result<(Applied, T), ApiError> {
    let mut desired = body_of::<T>(headers, bytes).await?;
    if desired.meta().name != name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "metadata.name: {:?} does not match the URL's {name:?}",
                desired.meta().name
            ),
        )
        .with_details(json!({"causes": [{"field": "metadata.name", "reason": Reason::Invalid}]})));
    }
    if let Some(rv) = if_match(headers) {
        desired.meta_mut().resource_version = Some(rv);
    }
    Ok(ops::apply(&store::<T>(st), &st.inner.policy, &desired, SOURCE, dry_run).await?)
}

/// The answer to a PUT: 201 or 200, the ETag, and `X-Apply-Result`.
pub(super) fn applied<T: Admit>(what: Applied, obj: &T) -> Response {
    let code = if what == Applied::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = with_rv((code, Json(obj)).into_response(), obj);
    r.headers_mut().insert(
        "x-apply-result",
        header::HeaderValue::from_static(match what {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }),
    );
    r
}

/// Patch the object `name` (PATCH): `application/merge-patch+json` (RFC 7386) or
/// `application/json-patch+json` (RFC 6902); `If-Match` is the precondition when given.
pub(super) async fn patch<T: Admit>(
    st: &AppState,
    name: &str,
    headers: &HeaderMap,
    bytes: Bytes,
    dry_run: bool,
) -> Result<T, ApiError> {
    let ct = content_type(headers);
    let kind = match ct.as_str() {
        "application/merge-patch+json" => PatchType::Merge,
        "application/json-patch+json" => PatchType::Json,
        _ => {
            return Err(unsupported(
                &ct,
                "application/merge-patch+json or application/json-patch+json",
            ));
        }
    };
    let doc: Value = off_workers(move || {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the patch is not JSON: {e}"),
            )
        })
    })
    .await?;
    let precondition = if_match(headers);
    let req = PatchRequest {
        name,
        kind,
        doc: &doc,
        precondition: precondition.as_deref(),
        dry_run,
    };
    let (_, obj) = ops::patch(&store::<T>(st), &st.inner.policy, SOURCE, &req).await?;
    Ok(obj)
}

/// Delete the object `name` (DELETE); `If-Match` is the precondition when given. Answers
/// the object's last state.
pub(super) async fn remove<T: Admit>(
    st: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let rv = if_match(headers);
    let obj = ops::delete(&store::<T>(st), name, rv.as_deref(), SOURCE).await?;
    Ok(Json(&obj).into_response())
}

/// The object's recent events, oldest first.
pub(super) async fn events<T: Admit>(st: &AppState, name: &str) -> Result<Response, ApiError> {
    get::<T>(st, name).await?;
    let events = store::<T>(st).events(name).await?;
    Ok(Json(json!({ "items": events })).into_response())
}
