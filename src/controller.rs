//! The controller: turns triggers into reconciles and reconciles into Docker calls and status.
//!
//! Triggers — store changes (Redis stream), Docker events for managed containers, and a
//! periodic resync — all become keys in one [`WorkQueue`]. A single scheduler task owns the
//! queue and hands keys to at most `concurrency` reconcile tasks. A reconcile reads the
//! desired session from the local cache (fed by the store watch), lists the session's
//! containers, asks [`crate::plan::plan`] what to do, executes that, and writes status back
//! with a compare-and-swap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::expect::Expectations;
use crate::metrics::Metrics;
use crate::plan::{self, Action, CrashState, Input, Settings};
use crate::queue::{Outcome, WorkQueue};
use crate::resource::{Phase, Session};
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{SessionEvent, Store, StoreError};

/// Controller failures (of one reconcile).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Docker failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Controller configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Planner settings (instance, contract policy, crash-loop backoff).
    pub settings: Settings,
    /// Reconciles running at once, across sessions.
    pub concurrency: usize,
    /// Period of the full resync.
    pub resync_every: Duration,
    /// First retry delay after a failed reconcile.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            concurrency: 8,
            resync_every: Duration::from_secs(30),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

enum Trigger {
    Key(String),
    Keys(Vec<String>),
    Resync,
}

struct Shared {
    store: Store,
    runtime: Runtime,
    config: Config,
    cache: RwLock<HashMap<String, Session>>,
    crash: Mutex<HashMap<String, CrashState>>,
    synced: AtomicBool,
    metrics: Metrics,
    /// Set once the cache holds a full list; no reconcile runs before that, or every
    /// container would look like an orphan.
    listed: AtomicBool,
    /// Docker events the reconciles caused themselves (see [`crate::expect`]).
    expect: Mutex<Expectations>,
}

/// The reconciler. Clone-free: build it, then [`Controller::run`] it.
pub struct Controller {
    shared: Arc<Shared>,
}

/// A read-only view of the controller for health checks.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// True once the first store list and Docker resync completed.
    pub fn synced(&self) -> bool {
        self.shared.synced.load(Ordering::Relaxed)
    }

    /// Count cached sessions by phase into the `mcpo_sessions` gauge.
    pub fn refresh_phase_gauge(&self) {
        let mut counts: HashMap<Phase, i64> = HashMap::new();
        if let Ok(c) = self.shared.cache.read() {
            for s in c.values() {
                *counts.entry(s.phase()).or_default() += 1;
            }
        }
        for phase in [
            Phase::Pending,
            Phase::Creating,
            Phase::Running,
            Phase::BackOff,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Terminating,
        ] {
            self.shared
                .metrics
                .sessions
                .with_label_values(&[&phase.to_string()])
                .set(counts.get(&phase).copied().unwrap_or(0));
        }
    }
}

impl Controller {
    /// A controller over this store and engine, reporting into `metrics`.
    pub fn new(store: Store, runtime: Runtime, config: Config, metrics: Metrics) -> Controller {
        Controller {
            shared: Arc::new(Shared {
                store,
                runtime,
                config,
                cache: RwLock::new(HashMap::new()),
                crash: Mutex::new(HashMap::new()),
                synced: AtomicBool::new(false),
                metrics,
                listed: AtomicBool::new(false),
                expect: Mutex::new(Expectations::new(EXPECTATION_TTL)),
            }),
        }
    }

    /// A handle for health checks.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Run until `shutdown` is cancelled, then let running reconciles finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = self.shared.clone();
        let watch = tokio::spawn(watch_store(s.clone(), tx.clone(), shutdown.clone()));
        let events = tokio::spawn(watch_docker(s.clone(), tx.clone(), shutdown.clone()));
        let timer = {
            let tx = tx.clone();
            let every = s.config.resync_every;
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => { let _ = tx.send(Trigger::Resync); }
                    }
                }
            })
        };
        schedule(s, rx, tx, shutdown).await;
        let _ = tokio::join!(watch, events, timer);
        info!("controller stopped");
    }
}

/// The scheduler: owns the queue, runs up to `concurrency` reconciles.
async fn schedule(
    s: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut queue = WorkQueue::new(s.config.retry_base, s.config.retry_max);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut resyncing = false;
    let mut resync_again = false;
    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel::<Result<Vec<String>, String>>();
    loop {
        queue.promote(Instant::now());
        while queue.active_len() < s.config.concurrency.max(1)
            && !shutdown.is_cancelled()
            && s.listed.load(Ordering::Acquire)
        {
            let Some(key) = queue.pop() else { break };
            let s = s.clone();
            let done_tx = done_tx.clone();
            let span = info_span!("reconcile", session = %key);
            tokio::spawn(
                async move {
                    let started = Instant::now();
                    let result = reconcile(&s, &key).await;
                    let label = if result.is_ok() { "success" } else { "error" };
                    s.metrics.reconciles.with_label_values(&[label]).inc();
                    s.metrics
                        .reconcile_duration
                        .with_label_values(&[label])
                        .observe(started.elapsed().as_secs_f64());
                    let outcome = match result {
                        Ok(after) => Outcome::Done(after),
                        Err(e) => {
                            match &e {
                                ControllerError::Runtime(_) => s.metrics.docker_errors.inc(),
                                ControllerError::Store(_) => s.metrics.redis_errors.inc(),
                            }
                            warn!(error = %e, "reconcile failed");
                            Outcome::Failed
                        }
                    };
                    let _ = done_tx.send((key, outcome));
                }
                .instrument(span),
            );
        }
        s.metrics
            .queue_depth
            .set((queue.ready_len() + queue.delayed_len()) as i64);
        if shutdown.is_cancelled() && queue.active_len() == 0 {
            break;
        }
        let sleep_until = queue
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            Some((key, outcome)) = done_rx.recv() => queue.done(&key, outcome, Instant::now()),
            Some(t) = rx.recv() => match t {
                Trigger::Key(k) => queue.add(&k),
                Trigger::Keys(ks) => ks.iter().for_each(|k| queue.add(k)),
                Trigger::Resync if resyncing => resync_again = true,
                Trigger::Resync => {
                    resyncing = true;
                    let s = s.clone();
                    let resync_tx = resync_tx.clone();
                    tokio::spawn(async move { let _ = resync_tx.send(resync(&s).await); });
                }
            },
            Some(r) = resync_rx.recv() => {
                resyncing = false;
                match r {
                    Ok(keys) => {
                        keys.iter().for_each(|k| queue.add(k));
                        s.synced.store(true, Ordering::Relaxed);
                    }
                    Err(e) => { warn!(error = %e, "resync failed"); resync_again = true; }
                }
                if resync_again {
                    resync_again = false;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = tx.send(Trigger::Resync);
                    });
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
}

/// One full pass: list every managed container once, plan every session against it, and
/// return the keys whose plan is not a no-op. No per-session Docker calls.
async fn resync(s: &Shared) -> Result<Vec<String>, String> {
    let started = Instant::now();
    let containers = s
        .runtime
        .list(None, false)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_session: HashMap<String, Vec<plan::Observed>> = HashMap::new();
    for c in containers {
        by_session.entry(c.session.clone()).or_default().push(c);
    }
    let sessions = s.cache.read().map(|c| c.clone()).unwrap_or_default();
    let crash = s.crash.lock().map(|c| c.clone()).unwrap_or_default();
    let now = Utc::now();
    let names: HashSet<&String> = sessions.keys().chain(by_session.keys()).collect();
    let empty = Vec::new();
    let mut keys = Vec::new();
    for name in names {
        let session = sessions.get(name);
        let p = plan::plan(
            &Input {
                name,
                session,
                containers: by_session.get(name).unwrap_or(&empty),
                crash: crash.get(name).unwrap_or(&CrashState::default()),
                now,
            },
            &s.config.settings,
        );
        if !p.actions.is_empty()
            || plan::status_changed(session.and_then(|s| s.status.as_ref()), p.status.as_ref())
            || p.requeue_after.is_some()
        {
            keys.push(name.clone());
        }
    }
    debug!(
        sessions = sessions.len(),
        enqueued = keys.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "resync"
    );
    Ok(keys)
}

/// How long an expected Docker event is waited for before it no longer swallows one.
const EXPECTATION_TTL: Duration = Duration::from_secs(10);

fn expect(s: &Shared, name: &str, actions: &[&'static str]) {
    if let Ok(mut e) = s.expect.lock() {
        e.expect(name, actions, std::time::Instant::now());
    }
}

fn forget(s: &Shared, name: &str) {
    if let Ok(mut e) = s.expect.lock() {
        e.forget(name);
    }
}

async fn event(s: &Shared, name: &str, type_: &str, reason: &str, message: String) {
    let e = SessionEvent {
        time: Utc::now(),
        type_: type_.into(),
        reason: reason.into(),
        message,
    };
    if let Err(err) = s.store.record_event(name, &e).await {
        debug!(error = %err, "could not record event");
    }
}

/// Reconcile one session. Returns when to look again.
async fn reconcile(s: &Shared, name: &str) -> Result<Option<Duration>, ControllerError> {
    // The benchmark's change latency (a store write → here) is read off this line.
    debug!("reconcile start");
    let session = s.cache.read().ok().and_then(|c| c.get(name).cloned());
    let containers = s.runtime.list(Some(name), true).await?;
    debug!(containers = containers.len(), "observed");
    let crash = s
        .crash
        .lock()
        .ok()
        .and_then(|c| c.get(name).cloned())
        .unwrap_or_default();
    let p = plan::plan(
        &Input {
            name,
            session: session.as_ref(),
            containers: &containers,
            crash: &crash,
            now: Utc::now(),
        },
        &s.config.settings,
    );
    debug!(actions = ?p.actions.len(), requeue = ?p.requeue_after, "planned");
    if let Ok(mut c) = s.crash.lock() {
        if p.crash == CrashState::default() {
            c.remove(name);
        } else {
            c.insert(name.to_string(), p.crash.clone());
        }
    }
    let mut created = None;
    let mut failure = None;
    for action in &p.actions {
        let result: Result<(), ControllerError> = async {
            match action {
                Action::Remove { id, reason } => {
                    s.runtime.remove(id).await?;
                    info!(container_id = %short(id), ?reason, "removed container");
                    if session.is_some() {
                        event(
                            s,
                            name,
                            "Normal",
                            "Removed",
                            format!("removed container {} ({reason:?})", short(id)),
                        )
                        .await;
                    }
                }
                Action::Create { name: cname, body } => {
                    expect(s, name, &["create", "start"]);
                    let id = s
                        .runtime
                        .create_and_start(cname, body)
                        .await
                        .inspect_err(|_| forget(s, name))?;
                    let before = session
                        .as_ref()
                        .and_then(|x| x.status.as_ref())
                        .map(|x| x.restart_count);
                    let after = p.status.as_ref().map(|x| x.restart_count);
                    if before.is_some() && after > before {
                        s.metrics.restarts.inc();
                    }
                    info!(session = %name, container_id = %id, "Session provisioned");
                    event(
                        s,
                        name,
                        "Normal",
                        "Provisioned",
                        format!("created and started container {}", short(&id)),
                    )
                    .await;
                    created = Some(id);
                }
                Action::Start { id } => {
                    expect(s, name, &["start"]);
                    let started = s.runtime.start(id).await.inspect_err(|_| forget(s, name))?;
                    if !started {
                        // Running already: no `start` event will come to meet the expectation.
                        forget(s, name);
                    }
                    s.metrics.restarts.inc();
                    info!(container_id = %short(id), "restarted container");
                    event(
                        s,
                        name,
                        "Normal",
                        "Restarted",
                        format!("restarted container {}", short(id)),
                    )
                    .await;
                }
                Action::DeleteSession { resource_version } => {
                    match s.store.delete(name, Some(resource_version)).await {
                        Ok(_) => info!("session expired and was deleted"),
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }

    let Some(session) = session else {
        return match failure {
            Some(e) => Err(e),
            None => Ok(None),
        };
    };
    let mut status = p.status.clone();
    if let Some(st) = status.as_mut() {
        if let Some(id) = created {
            st.container_id = Some(id);
        }
        if let Some(e) = &failure {
            let reason = match e {
                ControllerError::Runtime(r) => r.reason(),
                ControllerError::Store(_) => "StoreError",
            };
            st.phase = Phase::BackOff;
            st.reason = Some(reason.into());
            st.message = Some(e.to_string());
            for c in &mut st.conditions {
                c.status = "False".into();
                c.reason = Some(reason.into());
                c.message = Some(e.to_string());
            }
            event(s, name, "Warning", reason, e.to_string()).await;
        } else if st.phase == Phase::BackOff
            && session.status.as_ref().map(|x| x.phase) != Some(Phase::BackOff)
        {
            event(
                s,
                name,
                "Warning",
                "BackOff",
                st.message.clone().unwrap_or_default(),
            )
            .await;
        }
    }
    if let Some(st) = status
        && plan::status_changed(session.status.as_ref(), Some(&st))
    {
        let rv = session
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        match s.store.update_status(name, &rv, &st).await {
            Ok(updated) => {
                if let Ok(mut c) = s.cache.write() {
                    let newer = c
                        .get(name)
                        .and_then(|x| x.metadata.resource_version.as_deref())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let mine = updated
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    if mine > newer {
                        c.insert(name.to_string(), updated);
                    }
                }
            }
            // The session changed meanwhile: its change event triggers another reconcile.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(p.requeue_after),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Keep the cache in step with the store: list, then follow the change stream; relist after
/// any error (Redis restart, trimmed stream).
async fn watch_store(
    s: Arc<Shared>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result: Result<(), StoreError> = async {
            let snap = s.store.list().await?;
            let mut watch = s.store.watch(snap.revision).await?;
            let mut keys: HashSet<String> = snap
                .sessions
                .iter()
                .map(|x| x.metadata.name.clone())
                .collect();
            if let Ok(mut c) = s.cache.write() {
                keys.extend(c.keys().cloned());
                *c = snap
                    .sessions
                    .into_iter()
                    .map(|x| (x.metadata.name.clone(), x))
                    .collect();
            }
            s.listed.store(true, Ordering::Release);
            info!(
                sessions = keys.len(),
                revision = snap.revision,
                "store listed"
            );
            let _ = tx.send(Trigger::Keys(keys.into_iter().collect()));
            let _ = tx.send(Trigger::Resync);
            delay = Duration::from_millis(100);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = watch.next_batch(Duration::from_secs(10)) => b?,
                };
                for ev in batch {
                    if let Ok(mut c) = s.cache.write() {
                        match (&ev.kind, ev.object) {
                            (crate::store::EventType::Deleted, _) | (_, None) => {
                                c.remove(&ev.name);
                            }
                            (_, Some(obj)) => {
                                c.insert(ev.name.clone(), obj);
                            }
                        }
                    }
                    if !ev.status_only {
                        let _ = tx.send(Trigger::Key(ev.name));
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            s.metrics.redis_errors.inc();
            warn!(error = %e, "store watch interrupted; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Turn Docker events for managed containers into triggers; resync after reconnecting.
async fn watch_docker(
    s: Arc<Shared>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !first {
            let _ = tx.send(Trigger::Resync);
        }
        first = false;
        // Whatever was expected on the old stream may never be seen on the new one.
        if let Ok(mut e) = s.expect.lock() {
            e.clear();
        }
        let mut events = Box::pin(s.runtime.events());
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = events.next() => n,
            };
            match next {
                Some(Ok(ev)) => {
                    delay = Duration::from_millis(100);
                    let own = s.expect.lock().is_ok_and(|mut e| {
                        e.observe(&ev.session, &ev.action, std::time::Instant::now())
                    });
                    debug!(session = %ev.session, action = %ev.action, own, "docker event");
                    if !ev.session.is_empty() && !own {
                        let _ = tx.send(Trigger::Key(ev.session));
                    }
                }
                Some(Err(e)) => {
                    s.metrics.docker_errors.inc();
                    warn!(error = %e, "docker event stream failed; reconnecting");
                    break;
                }
                None => {
                    warn!("docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
