//! The desired-state verbs: `apply`, `get`, `describe`, `delete`, `patch`, `diff`, `wait`,
//! `restart`, `logs` and `policy`. Each reads and writes through [`Backend`], so Redis mode
//! and `--server` mode behave the same; validation, waiting and readiness are the shared
//! ones of [`crate::domain`] and [`crate::ops`]. Sessions and warm pools go through the same
//! generic steps ([`Show`]); names are typed kubectl-style ([`super::targets`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, PolicyInUse};
use super::output::{self, Output, Show};
use super::targets::{sessions_only, targets};
use super::{ApplyArgs, DeleteArgs, GetArgs, Global, LogsArgs, PatchArgs, PatchKind, WaitArgs};
use crate::domain::parse::{self, Resource};
use crate::domain::pool::WarmPool;
use crate::domain::resource::{ObjectRef, Phase, Session};
use crate::domain::wait::{Condition, Progress, Waiter};
use crate::ops::{self, Applied, PatchType, WaitEnd};
use crate::runtime::LogQuery;

/// Why `wait` refuses a pool.
const NO_POOL_WAIT: &str = "wait is for sessions only: a warm pool has no phase (follow one \
                            with `get warmpool/NAME -w`)";

/// Parse and admit every document first; refuse everything when anything is wrong. Errors
/// name the file, the document and the field, and the policy used.
fn load_valid(files: &[PathBuf], policy: &PolicyInUse) -> anyhow::Result<Vec<parse::Document>> {
    let docs = crate::files::load_paths(files)?;
    if docs.is_empty() {
        bail!(
            "no Session or WarmPool documents found in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    crate::domain::admission::validate_documents(&docs, &policy.policy)
        .map_err(|e| anyhow!("{e} (checked with {})", policy.source))?;
    Ok(docs)
}

/// The documents' warm pools first (a session of the same files may name one), then the
/// sessions, each in file order.
fn pools_first(docs: &[parse::Document]) -> Vec<&parse::Document> {
    let (mut out, sessions): (Vec<_>, Vec<_>) = docs
        .iter()
        .partition(|d| matches!(d.resource, Resource::WarmPool(_)));
    out.extend(sessions);
    out
}

/// `apply`: admit every document, then create or update each (warm pools first);
/// `--prune` deletes what the selector matches and the files no longer declare; `--wait`
/// waits for the sessions to run.
pub async fn apply(g: &Global, a: ApplyArgs) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let policy = backend.policy().await?;
    let docs = load_valid(&a.files, policy)?;
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    let mut applied = Vec::new();
    for d in pools_first(&docs) {
        let at = || d.origin.at("");
        match &d.resource {
            Resource::Session(s) => {
                let (what, s) = backend.apply_as(&**s, a.dry_run).await.with_context(at)?;
                println!("session/{} {what}{suffix}", s.name());
                applied.push(s);
            }
            Resource::WarmPool(p) => {
                let (what, p) = backend.apply_as(&**p, a.dry_run).await.with_context(at)?;
                println!("warmpool/{} {what}{suffix}", p.name());
            }
        }
    }
    if a.prune {
        let selector = a.selector.as_deref().unwrap_or_default();
        if selector.trim().is_empty() {
            bail!("--prune needs a non-empty -l SELECTOR");
        }
        prune::<Session>(&backend, &docs, selector, a.dry_run).await?;
        prune::<WarmPool>(&backend, &docs, selector, a.dry_run).await?;
    }
    if a.wait && !a.dry_run && !applied.is_empty() {
        let names = applied.iter().map(|s| s.name().to_string());
        let waiter = Waiter::new(Condition::Phase(Phase::Running), names);
        let deadline = tokio::time::Instant::now() + a.timeout;
        wait_for(&backend, waiter, deadline, a.timeout, |name, p| match p {
            Progress::Met(_) => println!("session/{name} Running"),
            Progress::Changed(phase, reason) => println!(
                "session/{name} {phase}{}",
                reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            Progress::Unreachable(..) => {}
        })
        .await?;
    }
    Ok(())
}

/// `apply --prune` for one kind: delete what matches `selector` and the documents do not
/// declare (never what belongs to the specs directory).
async fn prune<T: Show>(
    backend: &Backend,
    docs: &[parse::Document],
    selector: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let suffix = if dry_run { " (dry run)" } else { "" };
    let declared: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.resource.kind() == T::KIND)
        .map(|d| d.resource.name())
        .collect();
    let (matching, _, _) = backend.list_as::<T>(selector).await?;
    for obj in matching {
        let (name, source) = (obj.meta().name.as_str(), obj.meta().source());
        if declared.contains(name) {
            continue;
        }
        if let Some(src) = source.filter(|src| src.starts_with("file:")) {
            eprintln!(
                "{}/{name} not pruned: it belongs to the specs directory ({src})",
                T::TYPE
            );
            continue;
        }
        if backend.delete_as::<T>(name, dry_run).await?.is_some() {
            println!("{}/{name} pruned{suffix}", T::TYPE);
        }
    }
    Ok(())
}

/// Observe the current objects, then follow the change stream until the waiter is done:
/// the one wait of the CLI (`apply --wait`, `wait`). Fails on the first session that
/// cannot reach the condition, on timeout (naming what is still pending) and on Ctrl-C.
async fn wait_for(
    backend: &Backend,
    mut waiter: Waiter,
    deadline: tokio::time::Instant,
    timeout: Duration,
    mut on: impl FnMut(&str, &Progress),
) -> anyhow::Result<()> {
    let what = waiter_text(&waiter);
    let timed_out = || {
        anyhow!(
            "timed out after {} waiting for {what}",
            humantime::format_duration(timeout),
        )
    };
    let (current, revision, _) = tokio::time::timeout_at(deadline, backend.list(""))
        .await
        .map_err(|_| timed_out())??;
    let names: Vec<String> = waiter.pending().map(|(n, _)| n.to_string()).collect();
    let mut failure: Option<String> = None;
    let mut step = |name: &str, p: &Progress, failure: &mut Option<String>| {
        if let Progress::Unreachable(why, _) = p {
            failure.get_or_insert_with(|| why.clone());
        }
        on(name, p);
    };
    for n in &names {
        let s = current.iter().find(|s| s.name() == n);
        if let Some(p) = waiter.observe(n, s) {
            step(n, &p, &mut failure);
        }
    }
    if failure.is_none() && !waiter.done() {
        let mut watch = tokio::time::timeout_at(deadline, backend.watch(revision))
            .await
            .map_err(|_| timed_out())??;
        let cancel = CancellationToken::new();
        let signal = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                crate::server::wait_for_signal().await;
                cancel.cancel();
            })
        };
        let end = ops::wait(&mut watch, &mut waiter, deadline, &cancel, |n, p| {
            step(n, p, &mut failure);
            if matches!(p, Progress::Unreachable(..)) {
                // The first failure decides; stop waiting for the others.
                cancel.cancel();
            }
        })
        .await;
        signal.abort();
        match end? {
            WaitEnd::Done => {}
            WaitEnd::Cancelled if failure.is_some() => {}
            WaitEnd::Cancelled => bail!("interrupted"),
            WaitEnd::TimedOut => {
                let pending: Vec<String> = waiter
                    .pending()
                    .map(|(n, p)| match p {
                        Some(p) => format!("{n} ({p})"),
                        None => n.to_string(),
                    })
                    .collect();
                bail!(
                    "timed out after {} waiting for {} on: {}",
                    humantime::format_duration(timeout),
                    waiter.condition(),
                    pending.join(", ")
                );
            }
        }
    }
    match failure {
        Some(why) => bail!("{why}; it cannot reach {}", waiter.condition()),
        None => Ok(()),
    }
}

/// `session "a" not found; session "b" not found` (the message of a missing object, as
/// before there were several), for objects of kind `T`.
fn not_found<T: Show, S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("{} not found", ObjectRef::of::<T>(n.as_ref())))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a waiter waits for, for messages: `phase=Running on: a, b`.
fn waiter_text(w: &Waiter) -> String {
    let names: Vec<&str> = w.pending().map(|(n, _)| n).collect();
    format!("{} on: {}", w.condition(), names.join(", "))
}

/// `wait`: the named sessions and those matching `-l`, until the condition holds.
pub async fn wait(g: &Global, a: WaitArgs) -> anyhow::Result<()> {
    // The timeout covers everything, the first reads included.
    let deadline = tokio::time::Instant::now() + a.timeout;
    let named = sessions_only(&a.names, NO_POOL_WAIT)?;
    let backend = g.backend().await?;
    let mut names: BTreeSet<String> = named.into_iter().collect();
    if let Some(sel) = &a.selector {
        let (matching, _, _) = backend.list(sel).await?;
        names.extend(matching.into_iter().map(|s| s.metadata.name));
    }
    if names.is_empty() {
        match &a.selector {
            // kubectl: a selector that matches nothing is an error for a phase, done for
            // a deletion.
            Some(_) if a.condition == Condition::Deleted => return Ok(()),
            Some(sel) => bail!("no sessions match {sel:?}"),
            None => bail!("nothing to wait for: give session names or -l SELECTOR"),
        }
    }
    if let Condition::Phase(_) = a.condition {
        let (current, _, _) = backend.list("").await?;
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !current.iter().any(|s| s.name() == n.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!("{}", not_found::<Session, _>(&missing));
        }
    }
    let waiter = Waiter::new(a.condition, names);
    wait_for(&backend, waiter, deadline, a.timeout, |name, p| {
        if let Progress::Met(_) = p {
            println!("session/{name} condition met");
        }
    })
    .await
}

/// `get`: the named sessions and pools (one read each), or the list of one kind matching
/// `-l`; `-w` follows (one kind at a time).
pub async fn get(g: &Global, a: GetArgs) -> anyhow::Result<()> {
    let t = targets(&a.names)?;
    let (sessions, pools) = (t.wants_sessions(), t.wants_pools());
    if a.watch && sessions && pools {
        bail!("get -w follows one kind at a time: name sessions or warm pools, not both");
    }
    let backend = g.backend().await?;
    let instance = server_instance(g, &backend).await;
    let mut missing = Vec::new();
    if sessions {
        missing.extend(get_kind::<Session>(&backend, &t.sessions, &a, &instance).await?);
    }
    if pools {
        if sessions && matches!(a.output, Output::Table | Output::Wide) {
            println!();
        }
        missing.extend(get_kind::<WarmPool>(&backend, &t.pools, &a, &instance).await?);
    }
    if !missing.is_empty() {
        bail!("{}", missing.join("; "));
    }
    Ok(())
}

/// `get` for one kind: `names` (one read each), or every object matching `-l` when there
/// are none; prints them, then follows changes with `-w`. Returns what was not found
/// (printed after what was found, as kubectl does).
async fn get_kind<T: Show>(
    backend: &Backend,
    names: &[String],
    a: &GetArgs,
    instance: &str,
) -> anyhow::Result<Vec<String>> {
    let single = names.len() == 1;
    // A named watch follows from the revision read before the gets, so no change made
    // between a get and the watch's start is missed.
    let before = if a.watch && !names.is_empty() {
        backend.list_as::<T>("").await?.1
    } else {
        0
    };
    let selector = crate::domain::selector::Selector::parse(&a.selector)?;
    let (items, revision) = if names.is_empty() {
        let (all, revision, unreadable) = backend.list_as::<T>(&a.selector).await?;
        for u in &unreadable {
            eprintln!(
                "warning: stored {} {:?} is unreadable and set aside: {}",
                ObjectRef::of::<T>("").noun(),
                u.name,
                u.reason.escape_debug()
            );
        }
        (all, revision)
    } else {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match backend.get_as::<T>(n).await? {
                Some(s) if selector.matches(&s.meta().labels) => found.push(s),
                Some(_) => {}
                None => missing.push(n.as_str()),
            }
        }
        if !missing.is_empty() && !a.watch {
            // kubectl prints what it found, then fails for the rest.
            print!("{}", output::objects(a.output, &found, single, instance));
            return Ok(vec![not_found::<T, _>(&missing)]);
        }
        (found, before)
    };
    if !(a.watch && items.is_empty()) {
        print!("{}", output::objects(a.output, &items, single, instance));
    } else if let Some(h) = T::header(a.output) {
        println!("{h}");
    }
    if !a.watch {
        return Ok(Vec::new());
    }
    let mut watch = backend.watch_as::<T>(revision).await?;
    loop {
        let batch = tokio::select! {
            _ = crate::server::wait_for_signal() => return Ok(Vec::new()),
            b = watch.next_batch(Duration::from_secs(10)) => b?,
        };
        let mut out = std::io::stdout().lock();
        for ev in batch {
            if !names.is_empty() && !names.contains(&ev.name) {
                continue;
            }
            let Some(obj) = ev.object else { continue };
            if !selector.matches(&obj.meta().labels) {
                continue;
            }
            let text = output::watch_event(a.output, ev.kind, &ev.name, &obj, instance);
            write!(out, "{text}")?;
        }
        out.flush()?;
    }
}

/// The instance whose container names `-o wide` shows: the server's in `--server` mode.
async fn server_instance(g: &Global, backend: &Backend) -> String {
    if backend.is_remote()
        && let Ok(p) = backend.policy().await
        && !p.instance.is_empty()
    {
        return p.instance.clone();
    }
    g.instance.clone()
}

/// `describe`: sessions in full, with their container and events; warm pools with their
/// status and events (`wp` alone: every pool).
pub async fn describe(g: &Global, names: &[String]) -> anyhow::Result<()> {
    let t = targets(names)?;
    let backend = g.backend().await?;
    let mut first = true;
    let mut sep = || {
        if !std::mem::take(&mut first) {
            println!();
        }
    };
    for name in &t.sessions {
        let s = backend
            .get(name)
            .await?
            .ok_or_else(|| anyhow!("{}", not_found::<Session, _>(&[name])))?;
        let container = match s.status.as_ref().and_then(|st| st.container_id.clone()) {
            None => Ok(None),
            Some(id) => backend.container(name, &id).await,
        };
        let events = backend.events(name).await?;
        sep();
        print!("{}", output::describe(&s, container, &events));
    }
    let pools: Vec<WarmPool> = if t.all_pools {
        backend.list_as::<WarmPool>("").await?.0
    } else {
        let mut found = Vec::new();
        for name in &t.pools {
            found.push(
                backend
                    .get_as::<WarmPool>(name)
                    .await?
                    .ok_or_else(|| anyhow!("{}", not_found::<WarmPool, _>(&[name])))?,
            );
        }
        found
    };
    for p in &pools {
        let events = backend.events_as::<WarmPool>(p.name()).await?;
        sep();
        print!("{}", output::describe_pool(p, &events));
    }
    Ok(())
}

/// `delete`: by name, by file, by selector, or `--all` (sessions, or pools after
/// `warmpools`); sessions before pools.
pub async fn delete(g: &Global, a: DeleteArgs) -> anyhow::Result<()> {
    let mut t = targets(&a.names)?;
    if a.all && (!t.sessions.is_empty() || !t.pools.is_empty()) {
        bail!("--all takes no names (only a type: `delete warmpools --all`)");
    }
    if !a.files.is_empty() {
        for d in crate::files::load_paths(&a.files)? {
            match d.resource {
                Resource::Session(s) => t.sessions.push(s.metadata.name),
                Resource::WarmPool(p) => t.pools.push(p.metadata.name),
            }
        }
    }
    let backend = g.backend().await?;
    let by_query = a.all || a.selector.is_some();
    if by_query {
        let sel = a.selector.as_deref().unwrap_or("");
        if t.all_pools {
            let (matching, _, _) = backend.list_as::<WarmPool>(sel).await?;
            t.pools
                .extend(matching.into_iter().map(|p| p.metadata.name));
        } else {
            let (matching, _, _) = backend.list(sel).await?;
            t.sessions
                .extend(matching.into_iter().map(|s| s.metadata.name));
        }
    } else if t.all_pools {
        bail!("nothing to delete: give pool names (`delete wp NAME`), -l SELECTOR or --all");
    }
    if t.sessions.is_empty() && t.pools.is_empty() {
        if by_query {
            eprintln!(
                "no {} to delete",
                if t.all_pools {
                    "warm pools"
                } else {
                    "sessions"
                }
            );
            return Ok(());
        }
        bail!(
            "nothing to delete: give session names (or warmpool/NAME), -f FILE, -l SELECTOR \
             or --all"
        );
    }
    let mut failed = Vec::new();
    delete_kind::<Session>(&backend, &t.sessions, &a, by_query, &mut failed).await;
    delete_kind::<WarmPool>(&backend, &t.pools, &a, by_query, &mut failed).await;
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// Delete `names` of kind `T`, going on after a failure (like kubectl) and collecting every
/// failure, the missing names last.
async fn delete_kind<T: Show>(
    backend: &Backend,
    names: &[String],
    a: &DeleteArgs,
    by_query: bool,
    failed: &mut Vec<String>,
) {
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for n in names.iter().filter(|n| seen.insert(n.as_str())) {
        match backend.delete_as::<T>(n, a.dry_run).await {
            Ok(Some(_)) => println!("{}/{n} deleted{suffix}", T::TYPE),
            // An object listed a moment ago and gone now was deleted by someone else.
            Ok(None) if a.ignore_not_found || by_query => {}
            Ok(None) => missing.push(n.clone()),
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    if !missing.is_empty() {
        failed.push(not_found::<T, _>(&missing));
    }
}

/// `patch`: a merge or JSON patch of a session or a warm pool, admitted like any write.
pub async fn patch(g: &Global, a: PatchArgs) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_str(&a.patch).map_err(|e| anyhow!("--patch is not valid JSON: {e}"))?;
    let kind = match a.kind {
        PatchKind::Merge => PatchType::Merge,
        PatchKind::Json => PatchType::Json,
    };
    let t = targets(&a.target)?;
    let backend = g.backend().await?;
    match (t.sessions.as_slice(), t.pools.as_slice()) {
        ([name], []) => patch_kind::<Session>(&backend, name, kind, &doc, a.dry_run).await,
        ([], [name]) => patch_kind::<WarmPool>(&backend, name, kind, &doc, a.dry_run).await,
        _ => bail!(
            "patch takes one object: NAME, session/NAME, warmpool/NAME or `wp NAME`, got {}",
            a.target.join(" ")
        ),
    }
}

async fn patch_kind<T: Show>(
    backend: &Backend,
    name: &str,
    kind: PatchType,
    doc: &serde_json::Value,
    dry_run: bool,
) -> anyhow::Result<()> {
    let req = ops::PatchRequest {
        name,
        kind,
        doc,
        precondition: None,
        dry_run,
    };
    let (what, obj) = backend.patch_as::<T>(&req).await?;
    let what = match what {
        Applied::Unchanged => "patched (no change)",
        _ if dry_run => "patched (dry run)",
        _ => "patched",
    };
    println!("{}/{} {what}", T::TYPE, obj.meta().name);
    Ok(())
}

/// `restart`: a rollout restart of each named session.
pub async fn restart(g: &Global, names: &[String]) -> anyhow::Result<()> {
    let names = sessions_only(
        names,
        "restart is for sessions only: a warm pool replaces its sandboxes when its template \
         changes",
    )?;
    let backend = g.backend().await?;
    let mut missing = Vec::new();
    for n in &names {
        match backend.restart(n).await? {
            Some(_) => println!("session/{n} restarted"),
            None => missing.push(n.as_str()),
        }
    }
    if !missing.is_empty() {
        bail!("{}", not_found::<Session, _>(&missing));
    }
    Ok(())
}

/// `logs`: the sandbox's stderr, copied to our stdout as it arrives.
pub async fn logs(g: &Global, a: LogsArgs) -> anyhow::Result<()> {
    let name = match sessions_only(
        std::slice::from_ref(&a.name),
        "logs is for sessions only: name a session",
    )?
    .pop()
    {
        Some(n) => n,
        None => bail!("logs is for sessions only: name a session"),
    };
    let backend = g.backend().await?;
    let s = backend
        .get(&name)
        .await?
        .ok_or_else(|| anyhow!("{}", not_found::<Session, _>(&[&name])))?;
    let since = match a.since {
        None => None,
        Some(d) => Some(
            chrono::Utc::now()
                - chrono::Duration::from_std(d).map_err(|_| anyhow!("--since is too large"))?,
        ),
    };
    let q = LogQuery {
        follow: a.follow,
        tail: a.tail,
        since,
    };
    let Some(mut stream) = backend.logs(&s, &q).await? else {
        bail!("session {name:?} has no sandbox yet");
    };
    let mut out = std::io::stdout();
    loop {
        let chunk = tokio::select! {
            _ = crate::server::wait_for_signal() => return Ok(()),
            c = stream.next() => c,
        };
        match chunk {
            None => return Ok(()),
            Some(c) => {
                out.write_all(&c?)?;
                out.flush()?;
            }
        }
    }
}

/// `policy`: the policy this CLI admits with, and whose it is.
pub async fn policy(g: &Global) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let p = backend.policy().await?;
    println!("# {}", p.source);
    print!("{}", serde_yaml::to_string(&p.policy)?);
    Ok(())
}

/// The YAML `diff` compares: what the user controls, without store bookkeeping.
fn diff_view<T: Show>(obj: &T) -> String {
    let mut v = obj.clone();
    *v.status_mut() = None;
    let m = v.meta_mut();
    m.resource_version = None;
    m.uid = None;
    m.generation = None;
    m.creation_timestamp = None;
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// `diff`: what `apply` would change (pools first, as `apply` writes them), and which
/// sandboxes it creates, recreates or keeps.
pub async fn diff(g: &Global, files: &[PathBuf]) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let policy = backend.policy().await?;
    let docs = load_valid(files, policy)?;
    let mut out = String::new();
    for d in pools_first(&docs) {
        match &d.resource {
            Resource::Session(s) => {
                let hash =
                    |s: &Session| policy.policy.session_sandbox(s).map(|s| s.spec_hash()).ok();
                diff_one(&backend, &**s, &mut out, |cur, next| match cur {
                    None => "will create a container".to_string(),
                    Some(cur) if hash(cur) == hash(next) => {
                        "container kept (no change to the sandbox)".to_string()
                    }
                    Some(_) => "will recreate its container".to_string(),
                })
                .await?;
            }
            Resource::WarmPool(p) => {
                let hash = |p: &WarmPool| {
                    policy
                        .policy
                        .sandbox(&p.spec.template.as_spec())
                        .map(|s| s.spec_hash())
                        .ok()
                };
                diff_one(&backend, &**p, &mut out, |cur, next| {
                    let want = next.spec.replicas;
                    match cur {
                        None => format!("will start {want} warm sandboxes"),
                        Some(cur) if hash(cur) == hash(next) => format!(
                            "warm sandboxes kept (no change to the template); replicas {} → {want}",
                            cur.spec.replicas
                        ),
                        Some(_) => {
                            format!("will replace its warm sandboxes ({want} of the new template)")
                        }
                    }
                })
                .await?;
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// The unified diff of one object against what is stored, and `note`'s word on its
/// sandboxes (given the stored object, if any, and the one `apply` would store).
async fn diff_one<T: Show>(
    backend: &Backend,
    desired: &T,
    out: &mut String,
    note: impl Fn(Option<&T>, &T) -> String,
) -> anyhow::Result<()> {
    let name = desired.meta().name.as_str();
    let current = backend.get_as::<T>(name).await?;
    let next = ops::merged(current.as_ref(), desired, super::backend::WRITER);
    let old = current.as_ref().map(diff_view).unwrap_or_default();
    let new = diff_view(&next);
    if old == new {
        return Ok(());
    }
    let text = similar::TextDiff::from_lines(&old, &new);
    let ty = T::TYPE;
    let old_label = if current.is_some() {
        format!("a/{ty}/{name}")
    } else {
        "/dev/null".into()
    };
    out.push_str(
        &text
            .unified_diff()
            .context_radius(3)
            .header(&old_label, &format!("b/{ty}/{name}"))
            .to_string(),
    );
    out.push_str(&format!(
        "# {ty}/{name}: {}\n",
        note(current.as_ref(), &next)
    ));
    Ok(())
}

/// A pure check of `--for` parsing through clap, and of `load_valid`'s message.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_files_name_the_policy_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.yaml");
        std::fs::write(
            &f,
            "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'evil:1'}\n",
        )
        .unwrap();
        let p = PolicyInUse {
            policy: crate::domain::contract::Policy::default(),
            source: "the test policy".into(),
            fallback: false,
            instance: String::new(),
        };
        let e = load_valid(&[f], &p).unwrap_err().to_string();
        assert!(e.contains("spec.image"), "{e}");
        assert!(e.contains("the test policy"), "{e}");
    }
}
