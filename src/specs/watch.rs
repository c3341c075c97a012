//! The IO part of the specs directory: the `notify` watcher with its debouncer, reading the
//! files an event names (or the whole directory), and the [`Syncer`] that executes
//! [`plan()`]s through [`crate::ops`] and reports problems in the store.

use crate::domain::reason::Reason;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::{FileAction, FileContent, Scope, Stored, in_dir, plan, source_of};
use super::{DEBOUNCE, MAX_FILE_SIZE, REASON_CONFLICT, REASON_INVALID, SpecsError};
use crate::domain::admission::Admit;
use crate::domain::contract::Policy;
use crate::domain::parse::{self, Resource};
use crate::domain::pool::{POOL_KIND, WarmPool};
use crate::domain::resource::{ObjectRef, Session};
use crate::ops::{self, Applied, OpsError};
use crate::store::{SessionEvent, Store, StoreError};

/// Log at `level` with the object as its kind's field (`session=NAME`, `warmpool=NAME`).
macro_rules! log_object {
    ($level:ident, $obj:expr, $($rest:tt)*) => {
        if $obj.kind == POOL_KIND {
            $level!(warmpool = %$obj.name, $($rest)*)
        } else {
            $level!(session = %$obj.name, $($rest)*)
        }
    };
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a sync must look at.
#[derive(Debug, Default, Clone, PartialEq)]
struct Work {
    /// The whole directory.
    full: bool,
    /// File names (in the directory) an event named.
    names: BTreeSet<String>,
}

impl Work {
    fn is_empty(&self) -> bool {
        !self.full && self.names.is_empty()
    }

    fn merge(&mut self, other: Work) {
        self.full |= other.full;
        self.names.extend(other.names);
    }
}

/// What the debouncer tells the loop.
#[derive(Debug)]
enum Signal {
    /// These paths changed.
    Paths(Vec<PathBuf>),
    /// Events were lost (or the watcher failed): look at everything again.
    Rescan(String),
}

/// The directory as used in sources: canonical if it exists, else its canonical parent
/// joined with its name, else absolute.
fn resolve_dir(dir: &Path) -> PathBuf {
    if let Ok(p) = dir.canonicalize() {
        return p;
    }
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// Read one file; missing or not a regular file is [`FileContent::Gone`].
fn read_file(path: &Path) -> FileContent {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileContent::Gone,
        Err(e) => FileContent::Unreadable(e.to_string()),
        Ok(m) if !m.is_file() => FileContent::Gone,
        Ok(m) if m.len() > MAX_FILE_SIZE => {
            FileContent::Unreadable(format!("larger than {MAX_FILE_SIZE} bytes"))
        }
        Ok(_) => match std::fs::read_to_string(path) {
            Ok(text) => FileContent::Text(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileContent::Gone,
            Err(e) => FileContent::Unreadable(e.to_string()),
        },
    }
}

/// Read the files a sync covers, keyed by source. A missing directory has no files.
fn read_files(dir: &Path, work: &Work) -> Result<BTreeMap<String, FileContent>, SpecsError> {
    let mut out = BTreeMap::new();
    if work.full {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(SpecsError::List {
                    path: dir.display().to_string(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if parse::is_spec_file(&path) {
                let content = read_file(&path);
                if content != FileContent::Gone {
                    out.insert(source_of(&path), content);
                }
            }
        }
    } else {
        for name in &work.names {
            let path = dir.join(name);
            out.insert(source_of(&path), read_file(&path));
        }
    }
    Ok(out)
}

fn warning(reason: Reason, message: String) -> SessionEvent {
    SessionEvent {
        time: Utc::now(),
        type_: "Warning".into(),
        reason: reason.into(),
        message,
    }
}

/// Is a store failure worth retrying (Redis down, a lost race)?
fn transient(e: &OpsError) -> bool {
    matches!(
        e,
        OpsError::Store(
            StoreError::Redis(_)
                | StoreError::NotReplicated { .. }
                | StoreError::Conflict { .. }
                | StoreError::AlreadyExists(_)
                | StoreError::NotFound(_)
        )
    )
}

/// Executes plans against the store and remembers what needs another look.
struct Syncer {
    dir: PathBuf,
    prefix: String,
    store: Store,
    policy: Policy,
    /// Sources whose last apply hit a session owned by another source.
    conflicted: BTreeSet<String>,
}

/// How one file's execution went.
#[derive(Default)]
struct Outcome {
    problems: Vec<String>,
    reason: Option<Reason>,
    retry: bool,
}

impl Syncer {
    fn name_of<'a>(&self, source: &'a str) -> Option<&'a str> {
        in_dir(&self.prefix, source)
    }

    /// One sync. Returns the work to do right away (conflicted files worth another look),
    /// or, on a store failure, the work to retry later.
    async fn sync(&mut self, work: &Work) -> Result<Work, Work> {
        let started = std::time::Instant::now();
        let dir = self.dir.clone();
        let w = work.clone();
        let files = match tokio::task::spawn_blocking(move || read_files(&dir, &w)).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                warn!(error = %e, "specs directory sync failed; retrying");
                return Err(work.clone());
            }
            Err(e) => {
                warn!(error = %e, "specs directory read panicked; retrying");
                return Err(work.clone());
            }
        };
        let stored = match self.stored().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "specs directory sync: cannot list the store; retrying");
                return Err(work.clone());
            }
        };
        let scope = if work.full { Scope::Full } else { Scope::Files };
        let plans = plan(&self.prefix, &files, &stored, scope, &self.policy);
        let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        let mut deleted_any = false;

        // Deletes first, so that an object moving from one file to another in one change
        // is not refused as a conflict.
        for p in &plans {
            let (FileAction::Apply { delete, .. } | FileAction::Remove { delete }) = &p.action
            else {
                continue;
            };
            for obj in delete {
                let out = outcomes.entry(p.source.clone()).or_default();
                let file = file_of(&p.source);
                match self.delete(obj, &p.source).await {
                    Ok(()) => {
                        deleted_any = true;
                        log_object!(info, obj, file = %file, "{} deleted: its specs file no longer declares it", obj.noun());
                    }
                    Err(OpsError::Store(StoreError::NotFound(_))) => {}
                    Err(e) if transient(&e) => {
                        log_object!(warn, obj, file = %file, error = %e, "cannot delete the {}; retrying", obj.noun());
                        out.retry = true;
                    }
                    Err(e) => {
                        log_object!(warn, obj, file = %file, error = %e, "cannot delete the {}", obj.noun());
                        out.problems.push(e.to_string());
                        out.reason = Some(REASON_CONFLICT);
                    }
                }
            }
        }

        for p in &plans {
            let out = outcomes.entry(p.source.clone()).or_default();
            let file = file_of(&p.source);
            match &p.action {
                FileAction::Apply { objects, .. } => {
                    for obj in objects {
                        match obj {
                            Resource::Session(s) => {
                                self.apply_one(&self.store, &p.source, s, out).await
                            }
                            Resource::WarmPool(wp) => {
                                self.apply_one(&self.store.pools(), &p.source, wp, out)
                                    .await
                            }
                        }
                    }
                }
                FileAction::Remove { .. } => {}
                FileAction::Invalid { message, declared } => {
                    warn!(file = %file, error = %message, "invalid specs file; nothing of it is applied and what it declared is left unchanged");
                    out.problems.push(message.clone());
                    out.reason = Some(REASON_INVALID);
                    for obj in declared {
                        let event = warning(
                            REASON_INVALID,
                            format!("{message} (the {} is left unchanged)", obj.noun()),
                        );
                        self.record(obj, &event).await;
                    }
                }
            }
        }

        let mut retry = Work::default();
        for (source, out) in &outcomes {
            if out.reason == Some(REASON_CONFLICT) && !out.problems.is_empty() {
                self.conflicted.insert(source.clone());
            } else {
                self.conflicted.remove(source);
            }
            let problem = (!out.problems.is_empty()).then(|| {
                warning(
                    out.reason.unwrap_or(REASON_INVALID),
                    out.problems.join("; "),
                )
            });
            let recorded = self
                .store
                .set_spec_file_problem(source, problem.as_ref())
                .await;
            if (out.retry || recorded.is_err())
                && let Some(name) = self.name_of(source)
            {
                retry.names.insert(name.to_string());
            }
        }
        if work.full {
            // Problems of files that vanished while nobody watched.
            match self.store.spec_file_problems().await {
                Ok(problems) => {
                    for source in problems.keys() {
                        if self.name_of(source).is_some() && !outcomes.contains_key(source) {
                            let _ = self.store.set_spec_file_problem(source, None).await;
                        }
                    }
                }
                Err(_) => retry.full = true,
            }
            self.conflicted
                .retain(|s| files.contains_key(s) || outcomes.contains_key(s));
        }
        debug!(
            files = plans.len(),
            full = work.full,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "specs directory synced"
        );
        if !retry.is_empty() {
            return Err(retry);
        }
        let mut again = Work::default();
        if deleted_any {
            for source in &self.conflicted {
                if !outcomes.contains_key(source)
                    && let Some(name) = self.name_of(source)
                {
                    again.names.insert(name.to_string());
                }
            }
        }
        Ok(again)
    }

    /// Every stored session and warm pool, as the plan sees them.
    async fn stored(&self) -> Result<Vec<Stored>, StoreError> {
        let sessions = self.store.list().await?;
        let pools = self.store.pools().list().await?;
        Ok(sessions
            .items
            .iter()
            .map(Stored::of)
            .chain(pools.items.iter().map(Stored::of))
            .collect())
    }

    /// Delete one object on behalf of the file `source`.
    async fn delete(&self, obj: &ObjectRef, source: &str) -> Result<(), OpsError> {
        if obj.kind == POOL_KIND {
            ops::delete::<WarmPool>(&self.store.pools(), &obj.name, None, source).await?;
        } else {
            ops::delete::<Session>(&self.store, &obj.name, None, source).await?;
        }
        Ok(())
    }

    /// Record an event on one object (logged when it cannot be).
    async fn record(&self, obj: &ObjectRef, event: &SessionEvent) {
        let recorded = if obj.kind == POOL_KIND {
            self.store.pools().record_event(&obj.name, event).await
        } else {
            self.store.record_event(&obj.name, event).await
        };
        if let Err(e) = recorded {
            log_object!(warn, obj, error = %e, "cannot record an event");
        }
    }

    async fn apply_one<T: Admit>(
        &self,
        store: &Store<T>,
        source: &str,
        desired: &T,
        out: &mut Outcome,
    ) {
        let file = file_of(source);
        let obj = desired.object_ref();
        match ops::apply(store, &self.policy, desired, source, false).await {
            Ok((Applied::Unchanged, _)) => {
                log_object!(debug, obj, file = %file, "{} unchanged", obj.noun());
            }
            Ok((what, _)) => {
                log_object!(info, obj, file = %file, "{} {what} from the specs directory", obj.noun());
                let event = SessionEvent {
                    time: Utc::now(),
                    type_: "Normal".into(),
                    reason: Reason::SpecFileApplied.to_string(),
                    message: format!("{what} from {file}"),
                };
                self.record(&obj, &event).await;
            }
            Err(e @ OpsError::Owned { .. }) => {
                let message = format!("{file}: {e}; the file's version is not applied");
                log_object!(warn, obj, file = %file, error = %e, "conflict: a specs file declares {} that another source owns; not applied", obj);
                self.record(&obj, &warning(REASON_CONFLICT, message.clone()))
                    .await;
                out.problems.push(message);
                out.reason = Some(REASON_CONFLICT);
            }
            Err(e) if transient(&e) => {
                log_object!(warn, obj, file = %file, error = %e, "cannot apply the {}; retrying", obj.noun());
                out.retry = true;
            }
            Err(e) => {
                log_object!(warn, obj, file = %file, error = %e, "cannot apply the {}", obj.noun());
                out.problems.push(format!("{file}: {e}"));
                if out.reason.is_none() {
                    out.reason = Some(REASON_INVALID);
                }
            }
        }
    }
}

fn file_of(source: &str) -> &str {
    source.strip_prefix("file:").unwrap_or(source)
}

type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// (Re-)establish the watch on the directory itself. Returns whether it is watched.
fn rewatch(debouncer: &mut Watcher, dir: &Path) -> bool {
    let _ = debouncer.unwatch(dir);
    if !dir.is_dir() {
        warn!(dir = %dir.display(), "the specs directory does not exist; waiting for it to appear");
        return false;
    }
    match debouncer.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => true,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the specs directory");
            false
        }
    }
}

/// Turn debounced events into paths, dropping access events (our own reads open files).
fn signal(result: DebounceEventResult) -> Option<Signal> {
    match result {
        Err(errors) => Some(Signal::Rescan(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Ok(events) => {
            if events.iter().any(|e| e.need_rescan()) {
                return Some(Signal::Rescan("the watcher lost events".into()));
            }
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !matches!(e.kind, EventKind::Access(_) | EventKind::Other))
                .flat_map(|e| e.event.paths)
                .collect();
            (!paths.is_empty()).then_some(Signal::Paths(paths))
        }
    }
}

/// Watch `dir` until `shutdown`, applying what appears or changes and deleting what
/// disappears. Syncs the whole directory once at start. Never returns an error: problems
/// are logged and retried.
pub async fn run(dir: PathBuf, store: Store, policy: Policy, shutdown: CancellationToken) {
    let dir = resolve_dir(&dir);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let debouncer = new_debouncer(DEBOUNCE, None, move |r: DebounceEventResult| {
        if let Some(s) = signal(r) {
            let _ = tx.send(s);
        }
    });
    let mut debouncer = match debouncer {
        Ok(d) => Some(d),
        Err(e) => {
            warn!(error = %e, "cannot start the file watcher; the specs directory is synced once only");
            None
        }
    };
    if let Some(d) = debouncer.as_mut() {
        // The parent tells us when the directory itself is removed, renamed or re-created.
        if let Some(parent) = dir.parent()
            && let Err(e) = d.watch(parent, RecursiveMode::NonRecursive)
        {
            warn!(dir = %parent.display(), error = %e, "cannot watch the specs directory's parent; a removed directory will not be noticed when it comes back");
        }
        rewatch(d, &dir);
    }
    info!(dir = %dir.display(), "specs directory watched");
    let mut syncer = Syncer {
        prefix: format!("file:{}/", dir.display()),
        dir: dir.clone(),
        store,
        policy,
        conflicted: BTreeSet::new(),
    };
    let mut work = Work {
        full: true,
        names: BTreeSet::new(),
    };
    let mut backoff = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    loop {
        // Batch whatever else is already waiting.
        while let Ok(s) = rx.try_recv() {
            absorb(s, &dir, debouncer.as_mut(), &mut work);
        }
        if !work.is_empty() && retry_at.is_none() {
            let todo = std::mem::take(&mut work);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = syncer.sync(&todo) => match r {
                    Ok(again) => {
                        backoff = RETRY_MIN;
                        work.merge(again);
                    }
                    Err(failed) => {
                        work.merge(failed);
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            s = rx.recv() => match s {
                Some(s) => absorb(s, &dir, debouncer.as_mut(), &mut work),
                None => {
                    // No watcher: nothing will ever arrive.
                    shutdown.cancelled().await;
                    break;
                }
            },
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
        }
    }
    if let Some(d) = debouncer {
        d.stop_nonblocking();
    }
    debug!("specs directory watcher stopped");
}

/// Fold one signal into the pending work. An event on the directory itself re-establishes
/// its watch and asks for a full sync.
fn absorb(s: Signal, dir: &Path, debouncer: Option<&mut Watcher>, work: &mut Work) {
    let mut dir_changed = false;
    match s {
        Signal::Rescan(why) => {
            warn!(error = %why, "file watcher problem; syncing the whole specs directory");
            dir_changed = true;
        }
        Signal::Paths(paths) => {
            for p in paths {
                if p == dir {
                    dir_changed = true;
                } else if p.parent() == Some(dir)
                    && parse::is_spec_file(&p)
                    && let Some(name) = p.file_name().and_then(|n| n.to_str())
                {
                    work.names.insert(name.to_string());
                }
            }
        }
    }
    if dir_changed {
        if let Some(d) = debouncer {
            rewatch(d, dir);
        }
        work.full = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_on_the_directory_ask_for_a_full_sync_and_others_name_files() {
        let dir = Path::new("/specs");
        let mut work = Work::default();
        absorb(
            Signal::Paths(vec![
                "/specs/a.yaml".into(),
                "/specs/.a.yaml.swp".into(),
                "/specs/a.yaml~".into(),
                "/specs/README.md".into(),
                "/specs/sub/b.yaml".into(),
                "/sibling.yaml".into(),
            ]),
            dir,
            None,
            &mut work,
        );
        assert_eq!(
            work,
            Work {
                full: false,
                names: ["a.yaml".to_string()].into()
            }
        );
        absorb(Signal::Paths(vec!["/specs".into()]), dir, None, &mut work);
        assert!(work.full);
    }

    #[test]
    fn missing_directories_resolve_through_their_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let canon = tmp.path().canonicalize().unwrap();
        let rel = tmp.path().join("x/../missing");
        assert_eq!(
            resolve_dir(&tmp.path().join("missing")),
            canon.join("missing")
        );
        assert!(resolve_dir(&rel).is_absolute());
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        assert_eq!(resolve_dir(&tmp.path().join("d/.")), canon.join("d"));
    }

    #[test]
    fn reading_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "x").unwrap();
        std::fs::create_dir(dir.join("d.yaml")).unwrap();
        let full = read_files(
            dir,
            &Work {
                full: true,
                ..Work::default()
            },
        )
        .unwrap();
        assert_eq!(full.len(), 1);
        assert_eq!(
            full[&source_of(&dir.join("a.yaml"))],
            FileContent::Text("x".into())
        );
        let some = read_files(
            dir,
            &Work {
                full: false,
                names: ["gone.yaml".into(), "d.yaml".into()].into(),
            },
        )
        .unwrap();
        assert!(some.values().all(|c| *c == FileContent::Gone));
        let missing = read_files(
            &dir.join("nope"),
            &Work {
                full: true,
                ..Work::default()
            },
        )
        .unwrap();
        assert!(missing.is_empty());
    }
}
