//! The desired-state verbs: `apply`, `get`, `describe`, `delete`, `patch`, `diff`, `wait`,
//! `restart`, `logs` and `policy`. Each reads and writes through [`Backend`], so Redis mode
//! and `--server` mode behave the same; validation, waiting and readiness are the shared
//! ones of [`crate::domain`] and [`crate::ops`].

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, PolicyInUse};
use super::output;
use super::{ApplyArgs, DeleteArgs, GetArgs, Global, LogsArgs, PatchArgs, PatchKind, WaitArgs};
use crate::domain::parse;
use crate::domain::resource::{Phase, Session};
use crate::domain::wait::{Condition, Progress, Waiter};
use crate::ops::{self, Applied, PatchType, WaitEnd};
use crate::runtime::LogQuery;

/// Parse and admit every document first; refuse everything when anything is wrong. Errors
/// name the file, the document and the field, and the policy used.
fn load_valid(files: &[PathBuf], policy: &PolicyInUse) -> anyhow::Result<Vec<parse::Document>> {
    let docs = crate::files::load_paths(files)?;
    if docs.is_empty() {
        bail!(
            "no Session documents found in {}",
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

/// `apply`: admit every document, then create or update each; `--prune` deletes what the
/// selector matches and the files no longer declare; `--wait` waits for Running.
pub async fn apply(g: &Global, a: ApplyArgs) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let policy = backend.policy().await?;
    let docs = load_valid(&a.files, policy)?;
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    let mut applied = Vec::new();
    for d in &docs {
        let (what, s) = backend
            .apply(&d.session, a.dry_run)
            .await
            .with_context(|| d.origin.at(""))?;
        println!("session/{} {what}{suffix}", s.name());
        applied.push(s);
    }
    if a.prune {
        if a.selector.as_deref().is_none_or(|s| s.trim().is_empty()) {
            bail!("--prune needs a non-empty -l SELECTOR");
        }
        let declared: BTreeSet<&str> = docs.iter().map(|d| d.session.name()).collect();
        let selector = a.selector.as_deref().unwrap_or_default();
        let (matching, _, _) = backend.list(selector).await?;
        for s in matching {
            if declared.contains(s.name()) {
                continue;
            }
            if s.source().is_some_and(|src| src.starts_with("file:")) {
                eprintln!(
                    "session/{} not pruned: it belongs to the specs directory ({})",
                    s.name(),
                    s.source().unwrap_or_default()
                );
                continue;
            }
            if backend.delete(s.name(), a.dry_run).await?.is_some() {
                println!("session/{} pruned{suffix}", s.name());
            }
        }
    }
    if a.wait && !a.dry_run {
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

/// `session "a" not found; session "b" not found` (the message of a missing session, as
/// before there were several).
fn not_found<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("session {:?} not found", n.as_ref()))
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
    let backend = g.backend().await?;
    let mut names: BTreeSet<String> = a.names.iter().cloned().collect();
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
            bail!("{}", not_found(&missing));
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

/// `get`: the named sessions (one read each), or the list matching `-l`; `-w` follows.
pub async fn get(g: &Global, a: GetArgs) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let instance = server_instance(g, &backend).await;
    let single = a.names.len() == 1;
    // A named watch follows from the revision read before the gets, so no change made
    // between a get and the watch's start is missed.
    let before = if a.watch && !a.names.is_empty() {
        backend.list("").await?.1
    } else {
        0
    };
    let (sessions, revision) = if a.names.is_empty() {
        let (all, revision, unreadable) = backend.list(&a.selector).await?;
        for u in &unreadable {
            eprintln!(
                "warning: stored session {:?} is unreadable and set aside: {}",
                u.name,
                u.reason.escape_debug()
            );
        }
        (all, revision)
    } else {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let selector = crate::domain::selector::Selector::parse(&a.selector)?;
        for n in &a.names {
            match backend.get(n).await? {
                Some(s) if selector.matches(&s.metadata.labels) => found.push(s),
                Some(_) => {}
                None => missing.push(n.as_str()),
            }
        }
        if !missing.is_empty() && !a.watch {
            // kubectl prints what it found, then fails for the rest.
            print!("{}", output::sessions(a.output, &found, single, &instance));
            bail!("{}", not_found(&missing));
        }
        (found, before)
    };
    if !(a.watch && sessions.is_empty()) {
        print!(
            "{}",
            output::sessions(a.output, &sessions, single, &instance)
        );
    } else if let Some(h) = output::header(a.output) {
        println!("{h}");
    }
    if !a.watch {
        return Ok(());
    }
    let selector = crate::domain::selector::Selector::parse(&a.selector)?;
    let mut watch = backend.watch(revision).await?;
    loop {
        let batch = tokio::select! {
            _ = crate::server::wait_for_signal() => return Ok(()),
            b = watch.next_batch(Duration::from_secs(10)) => b?,
        };
        let mut out = std::io::stdout().lock();
        for ev in batch {
            if !a.names.is_empty() && !a.names.contains(&ev.name) {
                continue;
            }
            let Some(obj) = ev.object else { continue };
            if !selector.matches(&obj.metadata.labels) {
                continue;
            }
            let text = output::watch_event(a.output, ev.kind, &ev.name, &obj, &instance);
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

/// `describe`: one session in full, with its container and events.
pub async fn describe(g: &Global, name: &str) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let s = backend
        .get(name)
        .await?
        .ok_or_else(|| anyhow!("session {name:?} not found"))?;
    let container = match s.status.as_ref().and_then(|st| st.container_id.clone()) {
        None => Ok(None),
        Some(id) => backend.container(name, &id).await,
    };
    let events = backend.events(name).await?;
    print!("{}", output::describe(&s, container, &events));
    Ok(())
}

/// `delete`: by name, by file, by selector, or `--all`.
pub async fn delete(g: &Global, a: DeleteArgs) -> anyhow::Result<()> {
    let mut names = a.names.clone();
    if !a.files.is_empty() {
        names.extend(
            crate::files::load_paths(&a.files)?
                .into_iter()
                .map(|d| d.session.metadata.name),
        );
    }
    let backend = g.backend().await?;
    let by_query = a.all || a.selector.is_some();
    if by_query {
        let (matching, _, _) = backend.list(a.selector.as_deref().unwrap_or("")).await?;
        names.extend(matching.into_iter().map(|s| s.metadata.name));
    }
    if names.is_empty() {
        if by_query {
            eprintln!("no sessions to delete");
            return Ok(());
        }
        bail!("nothing to delete: give session names, -f FILE, -l SELECTOR or --all");
    }
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let mut seen = BTreeSet::new();
    // Like kubectl: go on after a failure, report every one at the end.
    for n in names.iter().filter(|n| seen.insert(n.as_str())) {
        match backend.delete(n, a.dry_run).await {
            Ok(Some(_)) => println!("session/{n} deleted{suffix}"),
            // A session listed a moment ago and gone now was deleted by someone else.
            Ok(None) if a.ignore_not_found || by_query => {}
            Ok(None) => missing.push(n.clone()),
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    if !missing.is_empty() {
        failed.push(not_found(&missing));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// `patch`: a merge or JSON patch, admitted like any write.
pub async fn patch(g: &Global, a: PatchArgs) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_str(&a.patch).map_err(|e| anyhow!("--patch is not valid JSON: {e}"))?;
    let kind = match a.kind {
        PatchKind::Merge => PatchType::Merge,
        PatchKind::Json => PatchType::Json,
    };
    let backend = g.backend().await?;
    let req = ops::PatchRequest {
        name: &a.name,
        kind,
        doc: &doc,
        precondition: None,
        dry_run: a.dry_run,
    };
    let (what, s) = backend.patch(&req).await?;
    let what = match what {
        Applied::Unchanged => "patched (no change)".to_string(),
        _ if a.dry_run => "patched (dry run)".to_string(),
        _ => "patched".to_string(),
    };
    println!("session/{} {what}", s.name());
    Ok(())
}

/// `restart`: a rollout restart of each named session.
pub async fn restart(g: &Global, names: &[String]) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let mut missing = Vec::new();
    for n in names {
        match backend.restart(n).await? {
            Some(_) => println!("session/{n} restarted"),
            None => missing.push(n.as_str()),
        }
    }
    if !missing.is_empty() {
        bail!("{}", not_found(&missing));
    }
    Ok(())
}

/// `logs`: the sandbox's stderr, copied to our stdout as it arrives.
pub async fn logs(g: &Global, a: LogsArgs) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let s = backend
        .get(&a.name)
        .await?
        .ok_or_else(|| anyhow!("session {:?} not found", a.name))?;
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
        bail!("session {:?} has no sandbox yet", a.name);
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
fn diff_view(s: &Session) -> String {
    let mut v = s.clone();
    v.status = None;
    v.metadata.resource_version = None;
    v.metadata.uid = None;
    v.metadata.generation = None;
    v.metadata.creation_timestamp = None;
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// `diff`: what `apply` would change, and which sandboxes it recreates.
pub async fn diff(g: &Global, files: &[PathBuf]) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let policy = backend.policy().await?;
    let docs = load_valid(files, policy)?;
    let mut out = String::new();
    for d in &docs {
        let current = backend.get(d.session.name()).await?;
        let next = ops::merged(current.as_ref(), &d.session, super::backend::WRITER);
        let old = current.as_ref().map(diff_view).unwrap_or_default();
        let new = diff_view(&next);
        let name = d.session.name();
        if old == new {
            continue;
        }
        let text = similar::TextDiff::from_lines(&old, &new);
        let old_label = if current.is_some() {
            format!("a/session/{name}")
        } else {
            "/dev/null".into()
        };
        out.push_str(
            &text
                .unified_diff()
                .context_radius(3)
                .header(&old_label, &format!("b/session/{name}"))
                .to_string(),
        );
        let note = match &current {
            None => "will create a container".to_string(),
            Some(cur) => {
                let hash =
                    |s: &Session| policy.policy.session_sandbox(s).map(|s| s.spec_hash()).ok();
                if hash(cur) == hash(&next) {
                    "container kept (no change to the sandbox)".to_string()
                } else {
                    "will recreate its container".to_string()
                }
            }
        };
        out.push_str(&format!("# session/{name}: {note}\n"));
    }
    print!("{out}");
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
