//! Desired-state operations shared by every front end (the CLI, the HTTP API and the specs
//! directory): apply, patch, delete, and waiting for a condition. Each runs admission first and writes through the
//! store's compare-and-swap, so there is one path for validation and the sandbox contract.
//! Create, apply, patch and delete are generic over the written kinds ([`Admit`]: sessions
//! and warm pools); restart and wait are about sessions.

use serde_json::Value;

use crate::domain::admission::{AdmissionError, Admit};
use crate::domain::contract::Policy;
use crate::domain::limits::{self, human_bytes};
use crate::domain::parse::{self, Origin, ParseError};
use crate::domain::resource::{
    Object, ObjectRef, RESTARTED_AT_ANNOTATION, SOURCE_ANNOTATION, Session,
};
use crate::store::{Store, StoreError};

/// Operation failures.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The object does not pass admission.
    #[error(transparent)]
    Invalid(#[from] AdmissionError),
    /// The patched document does not fit the schema.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The patch itself is malformed.
    #[error("patch: {0}")]
    Patch(String),
    /// A JSON patch `test` operation failed.
    #[error("patch: {0}")]
    TestFailed(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write would change an immutable field.
    #[error("{0}")]
    Immutable(String),
    /// The object belongs to another source (a specs file vs the API/CLI).
    #[error("{name} is managed by {owner}; {writer} may not change it")]
    Owned {
        /// The object.
        name: ObjectRef,
        /// Who owns it (`file:<path>`, `api`, `cli`).
        owner: String,
        /// Who tried to write.
        writer: String,
    },
}

/// Ownership rule between sources: a specs file owns what it declared, and nobody else may
/// change it; a file may not take over an object created through the API or CLI. API and
/// CLI writes are both imperative and may change each other's objects.
pub fn check_owner<T: Object>(current: &T, writer: &str) -> Result<(), OpsError> {
    let owner = current.meta().source().unwrap_or("cli");
    let conflict = if writer.starts_with("file:") || owner.starts_with("file:") {
        owner != writer
    } else {
        false
    };
    if conflict {
        Err(OpsError::Owned {
            name: ObjectRef::of::<T>(current.meta().name.clone()),
            owner: owner.to_string(),
            writer: writer.to_string(),
        })
    } else {
        Ok(())
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The object did not exist.
    Created,
    /// The object existed and changed.
    Configured,
    /// Nothing changed.
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// Patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// RFC 6902 JSON patch.
    Json,
}

/// The object as `apply` would store it on top of `current`: the user's metadata labels,
/// annotations and spec; the store's bookkeeping and status.
pub fn merged<T: Object>(current: Option<&T>, desired: &T, source: &str) -> T {
    let mut next = desired.clone();
    *next.status_mut() = None;
    match current {
        Some(cur) => {
            let c = cur.meta();
            let n = next.meta_mut();
            n.uid = c.uid.clone();
            n.generation = c.generation;
            n.creation_timestamp = c.creation_timestamp;
            if desired.meta().resource_version.is_none() {
                n.resource_version = c.resource_version.clone();
            }
            // The restart marker stays unless the write sets one (as `kubectl apply` keeps
            // a rollout's restartedAt): re-applying a file does not undo a restart.
            if let (Some(m), None) = (
                c.annotations.get(RESTARTED_AT_ANNOTATION),
                desired.meta().annotations.get(RESTARTED_AT_ANNOTATION),
            ) {
                n.annotations
                    .insert(RESTARTED_AT_ANNOTATION.to_string(), m.to_string());
            }
            // The source is bookkeeping: it cannot be changed by a write.
            keep_source(n, c.source());
            *next.status_mut() = cur.clone().status_mut().take();
        }
        None => {
            let n = next.meta_mut();
            n.uid = None;
            n.generation = None;
            n.creation_timestamp = None;
            n.annotations
                .insert(SOURCE_ANNOTATION.to_string(), source.to_string());
        }
    }
    next
}

/// Set the source annotation to the stored object's (`None`: it has none).
fn keep_source(meta: &mut crate::domain::resource::ObjectMeta, source: Option<&str>) {
    match source {
        Some(src) => {
            meta.annotations
                .insert(SOURCE_ANNOTATION.to_string(), src.to_string());
        }
        None => {
            meta.annotations.remove(SOURCE_ANNOTATION);
        }
    }
}

/// True when writing `next` over `current` would change nothing a front end controls
/// (labels, annotations, what the object asks for).
fn unchanged<T: Object>(current: &T, next: &T) -> bool {
    current.meta().labels == next.meta().labels
        && current.meta().annotations == next.meta().annotations
        && !current.differs(next)
}

/// A stale-write failure after five lost races.
fn too_fast<T: Object>(name: &str) -> OpsError {
    OpsError::Store(StoreError::Conflict {
        name: ObjectRef::of::<T>(name),
        expected: "latest".into(),
        current: "changing too fast".into(),
    })
}

/// Create an object that must not exist yet (HTTP POST).
pub async fn create<T: Admit>(
    store: &Store<T>,
    policy: &Policy,
    desired: &T,
    source: &str,
    dry_run: bool,
) -> Result<T, OpsError> {
    desired.validate(policy)?;
    let next = merged(None, desired, source);
    if dry_run {
        let name = &desired.meta().name;
        if store.get(name).await?.is_some() {
            return Err(StoreError::AlreadyExists(ObjectRef::of::<T>(name.as_str())).into());
        }
        return Ok(next);
    }
    Ok(store.create(&next).await?)
}

/// Create or update one object (already parsed). With `dry_run`, only report what would
/// happen. Retries a lost race when the caller gave no resourceVersion.
pub async fn apply<T: Admit>(
    store: &Store<T>,
    policy: &Policy,
    desired: &T,
    source: &str,
    dry_run: bool,
) -> Result<(Applied, T), OpsError> {
    desired.validate(policy)?;
    let name = desired.meta().name.as_str();
    let precondition = desired.meta().resource_version.as_deref();
    for _ in 0..5 {
        let current = store.get(name).await?;
        if let Some(cur) = &current {
            check_owner(cur, source)?;
        }
        let next = merged(current.as_ref(), desired, source);
        let result = match &current {
            // A precondition names a version of an object that no longer exists.
            None if precondition.is_some() => {
                return Err(StoreError::NotFound(ObjectRef::of::<T>(name)).into());
            }
            None if dry_run => return Ok((Applied::Created, next)),
            None => store.create(&next).await.map(|s| (Applied::Created, s)),
            Some(cur) => {
                // The precondition holds for every write, a no-op one included.
                let stored = cur.meta().resource_version.as_deref();
                if let Some(want) = precondition
                    && Some(want) != stored
                {
                    return Err(OpsError::Store(StoreError::Conflict {
                        name: ObjectRef::of::<T>(name),
                        expected: want.to_string(),
                        current: stored.unwrap_or_default().to_string(),
                    }));
                }
                if unchanged(cur, &next) {
                    return Ok((Applied::Unchanged, cur.clone()));
                }
                if dry_run {
                    return Ok((Applied::Configured, next));
                }
                store.update(&next).await.map(|s| (Applied::Configured, s))
            }
        };
        match result {
            Err(
                StoreError::Conflict { .. }
                | StoreError::AlreadyExists(_)
                | StoreError::NotFound(_),
            ) if precondition.is_none() => {
                continue;
            }
            other => return Ok(other?),
        }
    }
    Err(too_fast::<T>(name))
}

/// A patch request.
#[derive(Debug, Clone, Copy)]
pub struct PatchRequest<'a> {
    /// Object name.
    pub name: &'a str,
    /// Patch flavour.
    pub kind: PatchType,
    /// The patch document.
    pub doc: &'a Value,
    /// Required current resourceVersion (e.g. from `If-Match`).
    pub precondition: Option<&'a str>,
    /// Validate and report, write nothing.
    pub dry_run: bool,
}

/// Apply a patch to the stored object (status excluded) and write the result. A
/// precondition, or a `metadata.resourceVersion` the patch sets, must match the stored
/// version; without either, a lost race is retried against the fresh object.
pub async fn patch<T: Admit>(
    store: &Store<T>,
    policy: &Policy,
    source: &str,
    req: &PatchRequest<'_>,
) -> Result<(Applied, T), OpsError> {
    let name = req.name;
    let what = ObjectRef::of::<T>(name);
    if limits::json_size(req.doc, limits::MAX_PATCH_BYTES).is_none() {
        return Err(OpsError::Patch(format!(
            "the patch is larger than {}",
            human_bytes(limits::MAX_PATCH_BYTES)
        )));
    }
    let ops: Option<json_patch::Patch> = match req.kind {
        PatchType::Json => {
            if let Some(list) = req.doc.as_array()
                && list.len() > limits::MAX_PATCH_OPS
            {
                return Err(OpsError::Patch(format!(
                    "{} operations, more than the limit of {}",
                    list.len(),
                    limits::MAX_PATCH_OPS
                )));
            }
            Some(serde_json::from_value(req.doc.clone()).map_err(|e| {
                OpsError::Patch(limits::escape(&format!("not an RFC 6902 JSON patch: {e}")))
            })?)
        }
        PatchType::Merge => {
            if !req.doc.is_object() {
                return Err(OpsError::Patch(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            None
        }
    };
    for _ in 0..5 {
        let current = store
            .get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(what.clone()))?;
        let current_rv = current.meta().resource_version.clone().unwrap_or_default();
        if let Some(want) = req.precondition
            && want != current_rv
        {
            return Err(OpsError::Store(StoreError::Conflict {
                name: what.clone(),
                expected: want.to_string(),
                current: current_rv,
            }));
        }
        check_owner(&current, source)?;
        let mut doc = current.clone();
        *doc.status_mut() = None;
        let mut value = serde_json::to_value(&doc).map_err(|e| OpsError::Patch(e.to_string()))?;
        match &ops {
            Some(p) => apply_bounded(&mut value, &p.0, what.noun())?,
            None => {
                json_patch::merge(&mut value, req.doc);
                if limits::json_size(&value, limits::MAX_OBJECT_BYTES).is_none() {
                    return Err(too_large(None, what.noun()));
                }
            }
        }
        if let Some(obj) = value.as_object_mut() {
            obj.remove("status");
        }
        let origin = Origin {
            file: "patch".into(),
            document: 0,
            prefix: String::new(),
        };
        let mut patched: T = parse::from_value(&origin, value)?;
        keep_source(patched.meta_mut(), current.meta().source());
        if patched.meta().name != name {
            return Err(OpsError::Immutable(format!(
                "metadata.name: cannot change the name of {what}"
            )));
        }
        let explicit_rv = req.precondition.is_some()
            || patched.meta().resource_version != current.meta().resource_version;
        patched.validate(policy)?;
        if unchanged(&current, &patched) && !explicit_rv {
            return Ok((Applied::Unchanged, current));
        }
        if req.dry_run {
            return Ok((Applied::Configured, patched));
        }
        match store.update(&patched).await {
            Err(StoreError::Conflict { .. }) if !explicit_rv => continue,
            other => return Ok((Applied::Configured, other?)),
        }
    }
    Err(too_fast::<T>(name))
}

fn too_large(op: Option<usize>, noun: &str) -> OpsError {
    let when = op.map_or(String::new(), |i| format!("after operation {i}, "));
    OpsError::Patch(format!(
        "{when}the patched {noun} is larger than {}",
        human_bytes(limits::MAX_OBJECT_BYTES)
    ))
}

/// How much one operation can grow the serialized document at most: the size of the value
/// it adds (or copies) plus its key. `None` when that alone is over the object limit.
fn growth(doc: &Value, op: &json_patch::PatchOperation) -> Option<usize> {
    use json_patch::PatchOperation as Op;
    let limit = limits::MAX_OBJECT_BYTES;
    let key = |p: &json_patch::jsonptr::PointerBuf| p.as_str().len() + 4;
    match op {
        Op::Add(o) => Some(key(&o.path) + limits::json_size(&o.value, limit)?),
        Op::Replace(o) => Some(key(&o.path) + limits::json_size(&o.value, limit)?),
        Op::Copy(o) => {
            let copied = doc.pointer(o.from.as_str()).unwrap_or(&Value::Null);
            Some(key(&o.path) + limits::json_size(copied, limit)?)
        }
        Op::Move(o) => Some(key(&o.path)),
        Op::Remove(_) | Op::Test(_) => Some(0),
    }
}

/// Apply RFC 6902 operations one at a time, keeping an upper bound of the document's
/// serialized size, and measure it again whenever the bound passes
/// [`limits::MAX_OBJECT_BYTES`]: a patch that keeps copying a map into itself stops at the
/// first operation that makes the document too large, long before memory is at risk.
fn apply_bounded(
    value: &mut Value,
    ops: &[json_patch::PatchOperation],
    noun: &str,
) -> Result<(), OpsError> {
    let limit = limits::MAX_OBJECT_BYTES;
    let mut bound = limits::json_size(&*value, limit).ok_or_else(|| too_large(None, noun))?;
    for (i, op) in ops.iter().enumerate() {
        let grow = growth(value, op).ok_or_else(|| too_large(Some(i), noun))?;
        json_patch::patch(value, std::slice::from_ref(op)).map_err(|e| match e.kind {
            json_patch::PatchErrorKind::TestFailed => {
                OpsError::TestFailed(limits::escape(&format!(
                    "operation {i} (test of {}) failed: the value did not match",
                    e.path
                )))
            }
            _ => OpsError::Patch(limits::escape(&format!("operation {i}: {}", e.kind))),
        })?;
        bound = bound.saturating_add(grow);
        if bound > limit {
            bound = limits::json_size(&*value, limit).ok_or_else(|| too_large(Some(i), noun))?;
        }
    }
    Ok(())
}

/// Delete an object on behalf of `source`, honouring ownership and, when given, the
/// resourceVersion precondition.
pub async fn delete<T: Admit>(
    store: &Store<T>,
    name: &str,
    resource_version: Option<&str>,
    source: &str,
) -> Result<T, OpsError> {
    // Without a precondition, a write that lands between our read and our delete (the
    // controller's status write, say) is not the caller's concern: read again and retry.
    for _ in 0..5 {
        let current = match store.get(name).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(StoreError::NotFound(ObjectRef::of::<T>(name)).into()),
            // An object this build cannot read (newer schema, corrupt) can still be deleted:
            // that is how an operator clears it.
            Err(StoreError::Corrupt { .. }) => {
                store.delete_unreadable(name, resource_version).await?;
                let mut gone = T::stub(name);
                gone.meta_mut().resource_version = resource_version.map(str::to_string);
                return Ok(gone);
            }
            Err(e) => return Err(e.into()),
        };
        check_owner(&current, source)?;
        let rv = resource_version
            .map(str::to_string)
            .or_else(|| current.meta().resource_version.clone());
        match store.delete(name, rv.as_deref()).await {
            Err(StoreError::Conflict { .. }) if resource_version.is_none() => continue,
            other => return Ok(other?),
        }
    }
    Err(too_fast::<T>(name))
}

/// A rollout restart (`restart NAME`, `POST .../restart`): set the session's restart marker
/// ([`RESTARTED_AT_ANNOTATION`]) to now, which moves its generation and changes its
/// sandbox's hash, so the controller replaces the sandbox; recorded as a `RestartRequested` event.
/// Allowed whoever owns the session (it changes no desired setting), retried on a lost race.
pub async fn restart(store: &Store, name: &str, writer: &str) -> Result<Session, OpsError> {
    for _ in 0..5 {
        let Some(mut s) = store.get(name).await? else {
            return Err(StoreError::NotFound(ObjectRef::session(name)).into());
        };
        let now = chrono::Utc::now();
        let fresh = !s.metadata.annotations.contains_key(RESTARTED_AT_ANNOTATION);
        if fresh && s.metadata.annotations.len() >= limits::MAX_ANNOTATIONS {
            return Err(OpsError::Patch(format!(
                "session {name:?} has {} annotations already, the most allowed",
                limits::MAX_ANNOTATIONS
            )));
        }
        s.metadata.annotations.insert(
            RESTARTED_AT_ANNOTATION.to_string(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        );
        match store.update(&s).await {
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
            Ok(updated) => {
                let event = crate::store::SessionEvent {
                    time: now,
                    type_: "Normal".into(),
                    reason: crate::domain::reason::Reason::RestartRequested.to_string(),
                    message: format!(
                        "restart requested by {writer} (generation {})",
                        updated.generation()
                    ),
                };
                // The restart happened; an event that cannot be written is only logged.
                if let Err(e) = store.record_event(name, &event).await {
                    tracing::warn!(session = name, error = %e, "cannot record the restart event");
                }
                return Ok(updated);
            }
        }
    }
    Err(too_fast::<Session>(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(src: &str) -> Session {
        let mut s = Session::new("a", "mcp-server:1");
        s.metadata
            .annotations
            .insert(SOURCE_ANNOTATION.into(), src.into());
        s
    }

    #[test]
    fn ownership() {
        assert!(check_owner(&owned_by("cli"), "api").is_ok());
        assert!(check_owner(&owned_by("api"), "cli").is_ok());
        assert!(check_owner(&owned_by("api"), "file:/s/a.yaml").is_err());
        assert!(check_owner(&owned_by("file:/s/a.yaml"), "api").is_err());
        assert!(check_owner(&owned_by("file:/s/a.yaml"), "file:/s/b.yaml").is_err());
        assert!(check_owner(&owned_by("file:/s/a.yaml"), "file:/s/a.yaml").is_ok());
    }

    #[test]
    fn self_copy_patches_stop_at_the_object_limit() {
        let mut s = Session::new("a", "mcp-server:1");
        s.metadata.labels.insert("k".into(), "v".repeat(60));
        let mut value = serde_json::to_value(&s).unwrap();
        let ops: Vec<json_patch::PatchOperation> = (0..limits::MAX_PATCH_OPS)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "op": "copy", "from": "/metadata/labels", "path": format!("/metadata/labels/c{i}")
                }))
                .unwrap()
            })
            .collect();
        let start = std::time::Instant::now();
        let err = apply_bounded(&mut value, &ops, "session")
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than 256 KiB"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(limits::json_size(&value, 2 * limits::MAX_OBJECT_BYTES).is_some());
    }

    #[test]
    fn many_small_operations_are_fine_and_errors_name_the_operation() {
        let s = Session::new("a", "mcp-server:1");
        let mut value = serde_json::to_value(&s).unwrap();
        let mut ops: Vec<json_patch::PatchOperation> = (0..500)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "op": "add", "path": format!("/metadata/annotations/a{i}"), "value": "x"
                }))
                .unwrap()
            })
            .collect();
        ops.insert(
            0,
            serde_json::from_value(
                serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
            )
            .unwrap(),
        );
        apply_bounded(&mut value, &ops, "session").unwrap();
        let bad: Vec<json_patch::PatchOperation> = vec![
            serde_json::from_value(serde_json::json!({"op": "remove", "path": "/metadata/x"}))
                .unwrap(),
        ];
        let e = apply_bounded(&mut value, &bad, "session")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("patch: operation 0:"), "{e}");
    }

    #[test]
    fn the_source_cannot_be_forged() {
        let cur = owned_by("file:/s/a.yaml");
        let mut desired = owned_by("api");
        desired.spec.env.insert("X".into(), "1".into());
        let next = merged(Some(&cur), &desired, "file:/s/a.yaml");
        assert_eq!(next.source(), Some("file:/s/a.yaml"));
        let fresh = merged(None, &owned_by("file:/etc/x"), "cli");
        assert_eq!(fresh.source(), Some("cli"));
    }
}

/// A stream of store changes to wait on: the store's own watch ([`crate::store::Watch`]),
/// or the API's SSE watch ([`crate::client::HttpWatch`]).
pub trait Changes {
    /// The source's error.
    type Error;
    /// The changes that arrive within `block` (maybe none).
    fn next_batch(
        &mut self,
        block: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Vec<crate::store::WatchEvent>, Self::Error>> + Send;
}

impl Changes for crate::store::Watch {
    type Error = StoreError;
    async fn next_batch(
        &mut self,
        block: std::time::Duration,
    ) -> Result<Vec<crate::store::WatchEvent>, StoreError> {
        crate::store::Watch::next_batch(self, block).await
    }
}

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// Nothing is pending any more.
    Done,
    /// The deadline passed first.
    TimedOut,
    /// The cancellation token fired first.
    Cancelled,
}

/// The one wait loop (CLI `apply --wait` and `wait`, API `?wait=`): feed every change of a
/// waited-for session to the pure [`Waiter`](crate::domain::wait::Waiter) until nothing is
/// pending, the deadline passes or `cancel` fires. `on` sees each step of progress. The
/// caller observes the current objects first (the watch must start at the revision of the
/// list it observed, so nothing between falls through).
pub async fn wait<C: Changes>(
    changes: &mut C,
    waiter: &mut crate::domain::wait::Waiter,
    deadline: tokio::time::Instant,
    cancel: &tokio_util::sync::CancellationToken,
    mut on: impl FnMut(&str, &crate::domain::wait::Progress),
) -> Result<WaitEnd, C::Error> {
    use crate::store::EventType;
    while !waiter.done() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(WaitEnd::TimedOut);
        }
        let batch = tokio::select! {
            _ = cancel.cancelled() => return Ok(WaitEnd::Cancelled),
            b = changes.next_batch(left.min(std::time::Duration::from_secs(5))) => b?,
        };
        for ev in batch {
            let current = match ev.kind {
                EventType::Deleted => None,
                // An unreadable object cannot reach a phase (the API's `?wait=` answers 404,
                // as before), and says nothing about a deletion.
                _ if ev.object.is_none() => match waiter.condition() {
                    crate::domain::wait::Condition::Deleted => continue,
                    crate::domain::wait::Condition::Phase(_) => None,
                },
                _ => ev.object.as_ref(),
            };
            if let Some(p) = waiter.observe(&ev.name, current) {
                on(&ev.name, &p);
            }
        }
    }
    Ok(WaitEnd::Done)
}
