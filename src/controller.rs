//! The controller: turns triggers into reconciles and reconciles into Docker calls and status.
//!
//! Triggers — store changes (Redis stream), Docker events for managed containers, and a
//! periodic resync — all become keys in one [`WorkQueue`]. A single scheduler task owns the
//! queue and hands keys to at most `concurrency` reconcile tasks. A reconcile reads the
//! desired session from the local cache (fed by the store watch), lists the session's
//! containers, asks [`crate::domain::plan::plan`] what to do, executes that, and writes status back
//! with a compare-and-swap.
//!
//! ## Supervision
//! Nothing here is fire-and-forget. Reconciles run in a `JoinSet` under a timeout and
//! `catch_unwind`: a panic or a hang becomes a failed reconcile (counted, recorded as an event,
//! retried with the key's backoff), never a lost concurrency slot. The resync, the store
//! watcher, the Docker event watcher and the scheduler itself are restarted after a panic
//! ([`crate::supervise`]). On shutdown, running reconciles get [`Config::shutdown_grace`] to finish
//! and are then aborted, so `serve` always stops. [`Handle::health`] turns `/readyz` unready
//! when the scheduler stops or makes no progress while work waits.
//!
//! ## Ownership
//! Only containers of this instance *and* this store ([`crate::domain::plan::ownership`]) are planned
//! over. Others — another Redis behind the same instance name, or this store before a reset —
//! are counted, logged and left alone.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::domain::expect::Expectations;
use crate::domain::plan::{
    self, Action, CrashState, Input, Observed, Ownership, PoolView, Settings,
};
use crate::domain::pool::{PoolInput, WarmPool, plan_pool};
use crate::domain::queue::{Outcome, WorkQueue};
use crate::domain::reason::Reason;
use crate::domain::resource::{Phase, Session};
use crate::domain::resync;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeError, short_id};
use crate::store::{Claim, SessionEvent, Store, StoreError};
use crate::supervise::{panic_message, supervise};

/// Controller failures (of one reconcile).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Docker failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// This replica no longer leads (its term ended): it changes nothing any more.
    #[error("no longer the leader (term {0} ended)")]
    NotLeader(u64),
}

/// The leader term a controller acts for, and the elector's view of who leads now: every
/// Docker mutation first checks that the term is still this replica's. (Store writes are
/// fenced by Redis itself: the controller's store is [`Store::fenced`].)
#[derive(Clone)]
pub struct Term {
    /// The term (fencing token).
    pub term: u64,
    /// The elector's current view: `Some(term)` while this replica leads.
    pub leader: tokio::sync::watch::Receiver<Option<u64>>,
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
    /// A reconcile running longer than this is abandoned and counted as failed.
    pub reconcile_timeout: Duration,
    /// On shutdown, how long running reconciles may finish before they are aborted.
    pub shutdown_grace: Duration,
    /// `/readyz` is unready when work waits and no reconcile finished for this long.
    pub stall_after: Duration,
    /// Where to write the store identity whenever it is learnt or changes (the image's stop
    /// hook removes only containers of that store).
    pub store_id_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            concurrency: 8,
            resync_every: Duration::from_secs(30),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            reconcile_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            stall_after: Duration::from_secs(90),
            store_id_file: None,
        }
    }
}

/// How long the store watcher blocks per read; also the longest a store reset without any
/// later write goes unnoticed.
const WATCH_BLOCK: Duration = Duration::from_secs(2);

pub use crate::domain::pool::POOL_KEY;

/// Members a pool reconcile creates at most before it lets other work run (the engine
/// starts about 7 a second whatever we ask); the next pass follows at once.
const POOL_CREATES_PER_PASS: usize = 4;

use crate::domain::pool::REMOVING;

enum Trigger {
    /// Something happened to this session's containers (or a resync found drift).
    Key(String),
    /// The session's desired state changed: a fresh attempt, backoff forgotten.
    Changed(String),
    /// A relist: every key, backoff forgotten.
    Keys(Vec<String>),
    Resync,
}

/// What `/readyz` needs to know about the scheduler.
#[derive(Debug)]
struct Progress {
    /// The scheduler loop is running.
    alive: bool,
    /// Keys ready or running at the last look.
    busy: usize,
    /// The last time a reconcile finished, or the queue was seen idle.
    last: std::time::Instant,
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
    /// Docker events the reconciles caused themselves (see [`crate::domain::expect`]).
    expect: Mutex<Expectations>,
    /// The identity of the store, as of the last list (labels new containers, decides which
    /// containers are ours).
    store_id: RwLock<String>,
    /// Stored objects that cannot be decoded (name → why): never planned, their containers
    /// never touched.
    unreadable: RwLock<HashMap<String, String>>,
    /// Containers of this instance that belong to another store, as of the last resync.
    foreign: RwLock<Vec<Observed>>,
    /// Set after a store rollback (the revision went back under the same identity): this
    /// store's containers without a session are held, not removed, until an operator
    /// confirms (`mcp-orchestrator foreign --remove` clears it in Redis).
    hold: RwLock<Option<String>>,
    progress: Mutex<Progress>,
    /// The term this controller acts for (None: a single replica without election).
    term: Option<Term>,
    /// Warm pools, as of the pool watch (fed like `cache`).
    pools: RwLock<HashMap<String, WarmPool>>,
    /// Set once `pools` holds a full list.
    pools_listed: AtomicBool,
    /// Warm-pool claims (container id → claim), loaded with every store list and kept in
    /// step by this controller's own claims and releases (only the leader makes them).
    claims: RwLock<HashMap<String, Claim>>,
    /// Each pool's claimable members, oldest first, as of its last reconcile.
    ready: RwLock<HashMap<String, Vec<String>>>,
    /// Unclaimed members a Docker event said may have stopped: never offered again, and
    /// inspected by their pool's next reconcile (a bulk list can still show them running).
    suspect: Mutex<HashSet<String>>,
    /// The scheduler's trigger channel, for reconciles that cause work elsewhere (a claim
    /// makes its pool refill).
    retrigger: Mutex<Option<mpsc::UnboundedSender<Trigger>>>,
}

impl Shared {
    /// Fail when this replica no longer leads: called before every Docker mutation.
    fn still_leading(&self) -> Result<(), ControllerError> {
        match &self.term {
            Some(t) if *t.leader.borrow() != Some(t.term) => {
                Err(ControllerError::NotLeader(t.term))
            }
            _ => Ok(()),
        }
    }

    fn trigger(&self, key: String) {
        if let Ok(tx) = self.retrigger.lock()
            && let Some(tx) = tx.as_ref()
        {
            let _ = tx.send(Trigger::Key(key));
        }
    }

    /// The session a container belongs to: its claim's for a claimed pool member.
    fn claimed_by(&self, id: &str) -> Option<Claim> {
        self.claims.read().ok().and_then(|c| c.get(id).cloned())
    }

    /// Forget the claim on a removed container, in the store and here (always in the
    /// store: idempotent, and right even when this replica's copy missed the claim).
    async fn release(&self, id: &str) -> Result<(), ControllerError> {
        self.store.release_claim(id).await?;
        if let Ok(mut c) = self.claims.write() {
            c.remove(id);
        }
        Ok(())
    }
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

    /// `Ok` while the controller makes progress; otherwise why not (for `/readyz`): the
    /// scheduler is not running, or work waits and nothing finished for `stall_after`.
    pub fn health(&self) -> Result<(), String> {
        let p = self
            .shared
            .progress
            .lock()
            .map_err(|_| "controller state is poisoned".to_string())?;
        if !p.alive {
            return Err("the controller's scheduler is not running".into());
        }
        let idle_for = p.last.elapsed();
        if p.busy > 0 && idle_for > self.shared.config.stall_after {
            return Err(format!(
                "no reconcile finished for {}s while {} wait",
                idle_for.as_secs(),
                p.busy
            ));
        }
        Ok(())
    }

    /// The store identity as of the controller's last list.
    pub fn store_identity(&self) -> String {
        self.shared
            .store_id
            .read()
            .map(|x| x.clone())
            .unwrap_or_default()
    }

    /// Count cached sessions by phase into the `mcpo_sessions` gauge.
    pub fn refresh_phase_gauge(&self) {
        let mut counts: HashMap<Phase, i64> = HashMap::new();
        if let Ok(c) = self.shared.cache.read() {
            for s in c.values() {
                *counts.entry(s.phase()).or_default() += 1;
            }
        }
        for phase in Phase::ALL {
            self.shared
                .metrics
                .sessions
                .with_label_values(&[&phase.to_string()])
                .set(counts.get(&phase).copied().unwrap_or(0));
        }
    }
}

impl Controller {
    /// A controller over this store and engine, reporting into `metrics`. With a `term` it
    /// acts for that leader term only: Docker mutations stop as soon as the elector says the
    /// term ended (pair it with a store fenced by the same term); `None` is a controller
    /// without leader election.
    pub fn new(
        store: Store,
        runtime: Runtime,
        config: Config,
        metrics: Metrics,
        term: Option<Term>,
    ) -> Controller {
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
                store_id: RwLock::new(String::new()),
                unreadable: RwLock::new(HashMap::new()),
                foreign: RwLock::new(Vec::new()),
                hold: RwLock::new(None),
                progress: Mutex::new(Progress {
                    alive: false,
                    busy: 0,
                    last: std::time::Instant::now(),
                }),
                term,
                pools: RwLock::new(HashMap::new()),
                pools_listed: AtomicBool::new(false),
                claims: RwLock::new(HashMap::new()),
                ready: RwLock::new(HashMap::new()),
                suspect: Mutex::new(HashSet::new()),
                retrigger: Mutex::new(None),
            }),
        }
    }

    /// The store identity this replica knew before (from an earlier term, or read at start),
    /// so that a store reset between two terms is noticed like one during a term.
    pub fn knowing_store(self, identity: &str) -> Controller {
        if let Ok(mut id) = self.shared.store_id.write() {
            *id = identity.to_string();
        }
        self
    }

    /// A handle for health checks.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Run until `shutdown` is cancelled; running reconciles then get
    /// [`Config::shutdown_grace`] to finish before they are aborted.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = self.shared.clone();
        if let Ok(mut r) = s.retrigger.lock() {
            *r = Some(tx.clone());
        }
        let pools = tokio::spawn(supervise(
            s.metrics.clone(),
            "pool-watch",
            shutdown.clone(),
            {
                let (s, tx, shutdown) = (s.clone(), tx.clone(), shutdown.clone());
                move || watch_pools(s.clone(), tx.clone(), shutdown.clone())
            },
        ));
        let watch = tokio::spawn(supervise(
            s.metrics.clone(),
            "store-watch",
            shutdown.clone(),
            {
                let (s, tx, shutdown) = (s.clone(), tx.clone(), shutdown.clone());
                move || watch_store(s.clone(), tx.clone(), shutdown.clone())
            },
        ));
        let events = tokio::spawn(supervise(
            s.metrics.clone(),
            "docker-events",
            shutdown.clone(),
            {
                let (s, tx, shutdown) = (s.clone(), tx.clone(), shutdown.clone());
                move || watch_docker(s.clone(), tx.clone(), shutdown.clone())
            },
        ));
        let timer = tokio::spawn(supervise(
            s.metrics.clone(),
            "resync-timer",
            shutdown.clone(),
            {
                let (tx, shutdown) = (tx.clone(), shutdown.clone());
                let every = s.config.resync_every;
                move || {
                    let (tx, shutdown) = (tx.clone(), shutdown.clone());
                    async move {
                        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tick.tick() => { let _ = tx.send(Trigger::Resync); }
                            }
                        }
                    }
                }
            },
        ));
        // The scheduler is supervised in place: after a panic it starts again with a fresh
        // queue, every known key and a resync, so nothing waits forever.
        let mut delay = Duration::from_millis(100);
        loop {
            let result =
                AssertUnwindSafe(schedule(s.clone(), &mut rx, tx.clone(), shutdown.clone()))
                    .catch_unwind()
                    .await;
            match result {
                Ok(()) => break,
                Err(panic) => {
                    task_panicked(&s, "scheduler", &panic);
                    if shutdown.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    let keys: Vec<String> = s
                        .cache
                        .read()
                        .map(|c| c.keys().cloned().collect())
                        .unwrap_or_default();
                    let _ = tx.send(Trigger::Keys(keys));
                    let _ = tx.send(Trigger::Resync);
                }
            }
        }
        if let Ok(mut p) = s.progress.lock() {
            p.alive = false;
        }
        if let Ok(mut r) = s.retrigger.lock() {
            *r = None;
        }
        let _ = tokio::join!(watch, events, timer, pools);
        info!("controller stopped");
    }
}

fn task_panicked(s: &Shared, task: &str, panic: &(dyn std::any::Any + Send)) {
    crate::supervise::panicked(&s.metrics, task, panic);
}

/// One reconcile, supervised: a timeout or a panic is a failure like any other, counted by
/// result and recorded as an event on the session.
async fn reconcile_supervised(s: Arc<Shared>, key: String) -> (String, Outcome) {
    let started = Instant::now();
    let work = async {
        match key.strip_prefix(POOL_KEY) {
            Some(pool) => reconcile_pool(&s, pool).await,
            None => reconcile(&s, &key).await,
        }
    };
    let run = tokio::time::timeout(s.config.reconcile_timeout, work);
    let (label, outcome) = match AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(Ok(after))) => ("success", Outcome::Done(after)),
        Ok(Ok(Err(e))) => {
            match &e {
                ControllerError::Runtime(_) => s.metrics.docker_errors.inc(),
                ControllerError::Store(_) => s.metrics.redis_errors.inc(),
                ControllerError::NotLeader(_) => {}
            }
            warn!(error = %e, "reconcile failed");
            ("error", Outcome::Failed)
        }
        Ok(Err(_)) => {
            let message = format!(
                "reconcile did not finish within {}s; abandoned and retried",
                s.config.reconcile_timeout.as_secs()
            );
            warn!("{message}");
            event(&s, &key, "Warning", Reason::ReconcileTimeout, message).await;
            ("timeout", Outcome::Failed)
        }
        Err(panic) => {
            task_panicked(&s, "reconcile", &panic);
            let message = format!(
                "reconcile panicked ({}); retried with backoff",
                panic_message(&panic)
            );
            event(&s, &key, "Warning", Reason::ReconcilePanic, message).await;
            ("panic", Outcome::Failed)
        }
    };
    s.metrics.reconciles.with_label_values(&[label]).inc();
    s.metrics
        .reconcile_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    (key, outcome)
}

/// The scheduler: owns the queue, runs up to `concurrency` reconciles.
async fn schedule(
    s: Arc<Shared>,
    rx: &mut mpsc::UnboundedReceiver<Trigger>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut queue = WorkQueue::new(s.config.retry_base, s.config.retry_max);
    let mut running: JoinSet<(String, Outcome)> = JoinSet::new();
    let mut running_keys: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut resyncing = false;
    let mut resync_again = false;
    let mut stop_by: Option<Instant> = None;
    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel::<Result<Resynced, String>>();
    if let Ok(mut p) = s.progress.lock() {
        p.alive = true;
        p.last = std::time::Instant::now();
    }
    loop {
        queue.promote(Instant::now());
        while queue.active_len() < s.config.concurrency.max(1)
            && !shutdown.is_cancelled()
            && s.listed.load(Ordering::Acquire)
            && s.pools_listed.load(Ordering::Acquire)
        {
            let Some(key) = queue.pop() else { break };
            let span = info_span!("reconcile", session = %key);
            let handle =
                running.spawn(reconcile_supervised(s.clone(), key.clone()).instrument(span));
            running_keys.insert(handle.id(), key);
        }
        let busy = queue.ready_len() + queue.active_len();
        s.metrics
            .queue_depth
            .set((queue.ready_len() + queue.delayed_len()) as i64);
        if let Ok(mut p) = s.progress.lock() {
            // Idle, or work just arrived after idling: the stall clock starts now.
            if busy == 0 || p.busy == 0 {
                p.last = std::time::Instant::now();
            }
            p.busy = busy;
        }
        if shutdown.is_cancelled() {
            let by = *stop_by.get_or_insert_with(|| Instant::now() + s.config.shutdown_grace);
            if running.is_empty() {
                break;
            }
            if Instant::now() >= by {
                warn!(
                    running = running.len(),
                    "shutdown grace passed; aborting the reconciles still running"
                );
                running.abort_all();
                while running.join_next().await.is_some() {}
                break;
            }
        }
        let sleep_until = match (queue.next_deadline(), stop_by) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a
                .or(b)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                let (key, outcome) = match joined {
                    Ok((id, (key, outcome))) => {
                        running_keys.remove(&id);
                        (key, outcome)
                    }
                    // Only an abort gets here (panics are caught inside); still a failure.
                    Err(e) => match running_keys.remove(&e.id()) {
                        Some(key) => (key, Outcome::Failed),
                        None => continue,
                    },
                };
                if let Ok(mut p) = s.progress.lock() {
                    p.last = std::time::Instant::now();
                }
                queue.done(&key, outcome, Instant::now());
            }
            Some(t) = rx.recv() => match t {
                Trigger::Key(k) => queue.add(&k),
                Trigger::Changed(k) => queue.reset(&k),
                Trigger::Keys(ks) => ks.iter().for_each(|k| queue.reset(k)),
                Trigger::Resync if resyncing => resync_again = true,
                Trigger::Resync => {
                    resyncing = true;
                    let s = s.clone();
                    let resync_tx = resync_tx.clone();
                    tokio::spawn(async move {
                        let result = match AssertUnwindSafe(resync(&s)).catch_unwind().await {
                            Ok(r) => r,
                            Err(panic) => {
                                task_panicked(&s, "resync", &panic);
                                Err(format!("resync panicked: {}", panic_message(&panic)))
                            }
                        };
                        let _ = resync_tx.send(result);
                    });
                }
            },
            Some(r) = resync_rx.recv() => {
                resyncing = false;
                match r {
                    Ok(r) => {
                        r.now.iter().for_each(|k| queue.add(k));
                        // From memory, no Docker call: the earliest deadline wins, and a key
                        // queued, running or backing off keeps its own (`WorkQueue::add_at`).
                        for (k, after) in &r.timers {
                            queue.add_at(k, r.planned_at + *after);
                        }
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

/// A container as its session sees it (see [`Claim::apply`]).
fn claimed(mut c: Observed, claims: &HashMap<String, Claim>) -> Observed {
    if let Some(cl) = claims.get(&c.id) {
        cl.apply(&mut c);
    }
    c
}

/// What a resync asks of the scheduler.
struct Resynced {
    /// Keys to reconcile now.
    now: Vec<String>,
    /// Keys to look at again at `planned_at + after`, from memory (their plans only wait).
    timers: Vec<(String, Duration)>,
    /// When the pass planned (the timers count from here).
    planned_at: Instant,
}

/// One full pass: list every managed container once, plan every session against it in
/// memory ([`resync::plan_all`]), and return the keys to reconcile now (their plan has actions
/// or a status to write) and the keys that only wait (a ttl, a crash-loop wait), whose timers
/// the scheduler arms without any Docker call. No per-session Docker calls.
async fn resync(s: &Shared) -> Result<Resynced, String> {
    let started = Instant::now();
    let containers = s
        .runtime
        .list(None, false)
        .await
        .map_err(|e| e.to_string())?;
    let sessions = s.cache.read().map(|c| c.clone()).unwrap_or_default();
    let store = s.store_id.read().map(|x| x.clone()).unwrap_or_default();
    let unreadable = s.unreadable.read().map(|u| u.clone()).unwrap_or_default();
    // An operator may have cleared (or set) the orphan hold since the last pass.
    if let Ok(h) = s.store.orphan_hold().await
        && let Ok(mut hold) = s.hold.write()
    {
        *hold = h;
    }
    let held = s.hold.read().map(|h| h.is_some()).unwrap_or(false);
    let crash = s.crash.lock().map(|c| c.clone()).unwrap_or_default();
    let claims = s.claims.read().map(|c| c.clone()).unwrap_or_default();
    let pools = s.pools.read().map(|p| p.clone()).unwrap_or_default();
    let ready = s.ready.read().map(|r| r.clone()).unwrap_or_default();
    let planned_at = Instant::now();
    let settings = s.config.settings.clone();
    let count = sessions.len();
    // Pure but not short at scale (BENCHMARKS.md): off the async workers.
    let pass = tokio::task::spawn_blocking(move || {
        resync::plan_all(
            containers,
            &resync::View {
                sessions: &sessions,
                unreadable: &unreadable,
                crash: &crash,
                store: &store,
                held,
                now: Utc::now(),
                claims: &claims,
                pools: &pools,
                ready: &ready,
            },
            &settings,
        )
    })
    .await
    .map_err(|e| format!("the resync pass failed: {e}"))?;
    report_foreign(s, pass.foreign);
    debug!(
        sessions = count,
        enqueued = pass.now.len(),
        timers = pass.timers.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "resync"
    );
    Ok(Resynced {
        now: pass.now,
        timers: pass.timers,
        planned_at,
    })
}

/// Publish the containers of another store: gauge, and a log line when the set changes.
fn report_foreign(s: &Shared, foreign: Vec<Observed>) {
    s.metrics.foreign_containers.set(foreign.len() as i64);
    if let Ok(mut f) = s.foreign.write() {
        let ids = |v: &[Observed]| v.iter().map(|c| c.id.clone()).collect::<HashSet<_>>();
        if ids(&f) != ids(&foreign) && !foreign.is_empty() {
            warn!(
                count = foreign.len(),
                containers = ?foreign.iter().map(|c| format!("{} ({})", short_id(&c.id), c.session)).collect::<Vec<_>>(),
                "containers of this instance belong to another store (another Redis with the same \
                 instance name, or this store before a reset); they are left alone: see \
                 `mcp-orchestrator foreign`"
            );
        }
        *f = foreign;
    }
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

async fn event(s: &Shared, name: &str, type_: &str, reason: Reason, message: String) {
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
    // The cache first, then the set-aside names: the watcher writes them in the opposite
    // order, so a name that just became unreadable is never seen as "no session".
    let session = s.cache.read().ok().and_then(|c| c.get(name).cloned());
    if s.unreadable.read().is_ok_and(|u| u.contains_key(name)) {
        // Its desired state is unknown: leave its containers exactly as they are.
        debug!("stored object is unreadable; not reconciled");
        return Ok(None);
    }
    if session.is_none() && s.hold.read().is_ok_and(|h| h.is_some()) {
        // After a rollback, a missing session may be the rollback's doing: hold.
        debug!("no session, and orphans are held after a store rollback; not reconciled");
        return Ok(None);
    }
    let store = s.store_id.read().map(|x| x.clone()).unwrap_or_default();
    let mut containers: Vec<Observed> = s.runtime.list(Some(name), true).await?;
    // The pool members this session claimed: their labels name the pool, the store names
    // the session.
    let bound: Vec<String> = s
        .claims
        .read()
        .map(|c| {
            c.iter()
                .filter(|(_, cl)| cl.session == name)
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    if !bound.is_empty() {
        let seen = s.runtime.observe(&bound).await?;
        for id in &bound {
            if !seen.iter().any(|o| &o.id == id) {
                // Gone for good (the engine says no such container): so is the claim.
                s.release(id).await?;
            }
        }
        let claims = s.claims.read().map(|c| c.clone()).unwrap_or_default();
        containers.extend(seen.into_iter().map(|c| claimed(c, &claims)));
    }
    let containers: Vec<Observed> = containers
        .into_iter()
        .filter(|c| plan::ownership(c, &store, session.as_ref()) == Ownership::Ours)
        .collect();
    debug!(containers = containers.len(), "observed");
    let crash = s
        .crash
        .lock()
        .ok()
        .and_then(|c| c.get(name).cloned())
        .unwrap_or_default();
    let pool_name = session.as_ref().and_then(|x| x.spec.pool.clone());
    let pool = pool_name
        .as_ref()
        .and_then(|p| s.pools.read().ok().and_then(|m| m.get(p).cloned()));
    let ready: Vec<String> = match &pool_name {
        Some(p) => {
            let ids = s
                .ready
                .read()
                .ok()
                .and_then(|r| r.get(p).cloned())
                .unwrap_or_default();
            let claims = s.claims.read().map(|c| c.clone()).unwrap_or_default();
            let suspect = s.suspect.lock().map(|x| x.clone()).unwrap_or_default();
            ids.into_iter()
                .filter(|id| !claims.contains_key(id) && !suspect.contains(id))
                .collect()
        }
        None => Vec::new(),
    };
    let p = plan::plan(
        &Input {
            name,
            session: session.as_ref(),
            containers: &containers,
            crash: &crash,
            now: Utc::now(),
            store: &store,
            pool: pool_name.as_ref().map(|_| PoolView {
                pool: pool.as_ref(),
                ready: &ready,
            }),
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
    if p.crash != crash {
        // Kept in the store too, so that the next leader goes on with the same back-off.
        let keep = (p.crash != CrashState::default()).then_some(&p.crash);
        if let Err(e) = s.store.set_crash_state(name, keep).await {
            debug!(error = %e, "could not record the crash-loop state");
        }
    }
    let mut created = None;
    let mut claimed_id: Option<String> = None;
    let mut cold: Option<(Reason, String)> = None;
    let mut failure = None;
    for action in &p.actions {
        let result: Result<(), ControllerError> = async {
            match action {
                Action::Remove { id, reason } => {
                    s.still_leading()?;
                    s.runtime.remove(id).await?;
                    s.release(id).await?;
                    info!(container_id = %short_id(id), ?reason, "removed container");
                    if session.is_some() {
                        event(
                            s,
                            name,
                            "Normal",
                            Reason::Removed,
                            format!("removed container {} ({reason:?})", short_id(id)),
                        )
                        .await;
                    }
                }
                Action::Claim {
                    pool,
                    candidates,
                    fallback,
                } => {
                    s.still_leading()?;
                    let uid = session
                        .as_ref()
                        .and_then(|x| x.metadata.uid.clone())
                        .unwrap_or_default();
                    let claim = Claim {
                        session: name.to_string(),
                        uid,
                        pool: pool.clone(),
                    };
                    match s.store.claim(candidates, &claim).await? {
                        Some(id) => {
                            if let Ok(mut c) = s.claims.write() {
                                c.insert(id.clone(), claim);
                            }
                            if let Ok(mut r) = s.ready.write()
                                && let Some(ids) = r.get_mut(pool)
                            {
                                ids.retain(|x| x != &id);
                            }
                            s.metrics.pool_claims.with_label_values(&[pool]).inc();
                            s.metrics.pool_claim_duration.observe(
                                crate::domain::pool::claim_latency(
                                    session.as_ref().and_then(|x| x.metadata.creation_timestamp),
                                    Utc::now(),
                                )
                                .as_secs_f64(),
                            );
                            info!(container_id = %short_id(&id), %pool, "claimed a warm sandbox");
                            event(
                                s,
                                name,
                                "Normal",
                                Reason::Claimed,
                                format!(
                                    "claimed started container {} from warm pool {pool}",
                                    short_id(&id)
                                ),
                            )
                            .await;
                            s.trigger(format!("{POOL_KEY}{pool}"));
                            created = Some(id.clone());
                            claimed_id = Some(id);
                        }
                        None => {
                            // Every ready member was taken meanwhile: cold, and say so.
                            let Action::Create { name: cname, body } = fallback.as_ref() else {
                                return Ok(());
                            };
                            created = Some(create_sandbox(s, name, cname, body).await?);
                            cold = Some((
                                Reason::PoolEmpty,
                                format!(
                                    "warm pool {pool:?} had no ready sandbox left; the sandbox \
                                     was created cold"
                                ),
                            ));
                        }
                    }
                }
                Action::Create { name: cname, body } => {
                    let id = create_sandbox(s, name, cname, body).await?;
                    let before = session
                        .as_ref()
                        .and_then(|x| x.status.as_ref())
                        .map(|x| x.restart_count);
                    let after = p.status.as_ref().map(|x| x.restart_count);
                    if before.is_some() && after > before {
                        s.metrics.restarts.inc();
                    }
                    created = Some(id);
                }
                Action::Start { id } => {
                    s.still_leading()?;
                    expect(s, name, &["start"]);
                    let started = s.runtime.start(id).await.inspect_err(|_| forget(s, name))?;
                    if !started {
                        // Running already: no `start` event will come to meet the expectation.
                        forget(s, name);
                    }
                    s.metrics.restarts.inc();
                    info!(container_id = %short_id(id), "restarted container");
                    event(
                        s,
                        name,
                        "Normal",
                        Reason::Restarted,
                        format!("restarted container {}", short_id(id)),
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
    if let Some(ControllerError::NotLeader(term)) = failure {
        // A deposed leader writes no status (it would be fenced anyway).
        return Err(ControllerError::NotLeader(term));
    }
    let mut status = p.status.clone();
    if let Some(st) = status.as_mut() {
        if let Some(id) = created.clone() {
            st.container_id = Some(id);
        }
        if let Some((reason, message)) = cold.take() {
            st.reason = Some(reason.into());
            st.message = Some(message.clone());
            for c in &mut st.conditions {
                c.reason = Some(reason.into());
                c.message = Some(message.clone());
            }
        }
        if created.is_some()
            && claimed_id.is_none()
            && let Some(r) = st.reason.as_deref()
            && matches!(
                r.parse::<Reason>(),
                Ok(Reason::PoolNotFound | Reason::PoolMismatch | Reason::PoolEmpty)
            )
        {
            s.metrics.pool_cold_starts.with_label_values(&[r]).inc();
        }
        if let Some(e) = &failure {
            let reason = match e {
                ControllerError::Runtime(r) => r.reason(),
                ControllerError::Store(_) => Reason::StoreError,
                ControllerError::NotLeader(_) => Reason::StoreError,
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
                Reason::BackOff,
                st.message.clone().unwrap_or_default(),
            )
            .await;
        }
    }
    // A claimed member takes the session's container name, after the status is written
    // (the session is Running as soon as the claim is recorded); also one a restart left
    // under its pool name.
    let want = crate::domain::contract::container_name(&s.config.settings.instance, name);
    let rename = claimed_id.clone().or_else(|| {
        let id = status.as_ref().and_then(|st| st.container_id.as_ref())?;
        containers
            .iter()
            .find(|c| &c.id == id && c.pool.is_some() && c.name != want)
            .map(|c| c.id.clone())
    });
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
    if let Some(id) = rename
        && failure.is_none()
    {
        s.still_leading()?;
        match s.runtime.rename(&id, &want).await {
            Ok(true) => debug!(container_id = %short_id(&id), %want, "renamed the claimed sandbox"),
            Ok(false) => debug!(%want, "the session's container name is taken; the claim stays"),
            Err(e) => warn!(error = %e, "could not rename the claimed sandbox"),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(p.requeue_after),
    }
}

/// Create and start a session's sandbox, with the expectations of its own events and the
/// `Provisioned` event.
async fn create_sandbox(
    s: &Shared,
    name: &str,
    cname: &str,
    body: &bollard::models::ContainerCreateBody,
) -> Result<String, ControllerError> {
    s.still_leading()?;
    expect(s, name, &["create", "start"]);
    let id = s
        .runtime
        .create_and_start(cname, body)
        .await
        .inspect_err(|_| forget(s, name))?;
    info!(session = %name, container_id = %id, "Session provisioned");
    event(
        s,
        name,
        "Normal",
        Reason::Provisioned,
        format!("created and started container {}", short_id(&id)),
    )
    .await;
    Ok(id)
}

/// Reconcile one warm pool: replace dead or outdated members, fill it to `replicas` (a few
/// per pass), publish its claimable members and write its status.
async fn reconcile_pool(s: &Shared, name: &str) -> Result<Option<Duration>, ControllerError> {
    debug!(pool = %name, "pool reconcile start");
    let pool = s.pools.read().ok().and_then(|p| p.get(name).cloned());
    let store = s.store_id.read().map(|x| x.clone()).unwrap_or_default();
    let claims = s.claims.read().map(|c| c.clone()).unwrap_or_default();
    let mut members: Vec<Observed> = s
        .runtime
        .list_pool(name)
        .await?
        .into_iter()
        .filter(|c| c.store.as_deref() == Some(store.as_str()) && !claims.contains_key(&c.id))
        .collect();
    // Members an event said may have stopped: their authoritative state, by inspect.
    let suspects: Vec<String> = s
        .suspect
        .lock()
        .map(|sus| {
            members
                .iter()
                .filter(|c| sus.contains(&c.id))
                .map(|c| c.id.clone())
                .collect()
        })
        .unwrap_or_default();
    if !suspects.is_empty() {
        let seen = s.runtime.observe(&suspects).await?;
        members.retain(|c| !suspects.contains(&c.id) || seen.iter().any(|o| o.id == c.id));
        for c in &mut members {
            if let Some(o) = seen.iter().find(|o| o.id == c.id) {
                c.state = o.state;
            }
        }
        if let Ok(mut sus) = s.suspect.lock() {
            for id in &suspects {
                sus.remove(id);
            }
        }
    }
    let claimed = claims
        .values()
        .filter(|c| c.pool == name && c.session != REMOVING)
        .count() as u32;
    let p = plan_pool(
        &PoolInput {
            name,
            pool: pool.as_ref(),
            members: &members,
            claimed,
            store: &store,
            nonce: uuid::Uuid::new_v4().as_u64_pair().0,
        },
        &s.config.settings,
    );
    let publish = |ids: &[String]| {
        if let Ok(mut r) = s.ready.write() {
            if pool.is_some() {
                r.insert(name.to_string(), ids.to_vec());
            } else {
                r.remove(name);
            }
        }
        s.metrics
            .pool_ready
            .with_label_values(&[name])
            .set(ids.len() as i64);
    };
    let mut ready = p.ready.clone();
    publish(&ready);
    let mut creates = 0;
    let mut more = false;
    for action in &p.actions {
        s.still_leading()?;
        match action {
            Action::Remove { id, reason } => {
                // Reserve it first, so that no session claims it while it goes.
                let hold = Claim {
                    session: REMOVING.into(),
                    uid: String::new(),
                    pool: name.to_string(),
                };
                if s.store
                    .claim(std::slice::from_ref(id), &hold)
                    .await?
                    .is_none()
                {
                    continue; // claimed by a session meanwhile: it is the session's now
                }
                if let Ok(mut c) = s.claims.write() {
                    c.insert(id.clone(), hold);
                }
                s.runtime.remove(id).await?;
                s.release(id).await?;
                info!(pool = %name, container_id = %short_id(id), ?reason, "removed pool member");
            }
            Action::Start { id } => {
                s.runtime.start(id).await?;
            }
            Action::Create { name: cname, body } => {
                if creates == POOL_CREATES_PER_PASS {
                    more = true;
                    continue;
                }
                creates += 1;
                let id = s.runtime.create_and_start(cname, body).await?;
                debug!(pool = %name, container_id = %short_id(&id), "pool member started");
                ready.push(id);
                publish(&ready);
            }
            Action::Claim { .. } | Action::DeleteSession { .. } => {}
        }
    }
    if pool.is_none() {
        let _ = s.metrics.pool_ready.remove_label_values(&[name]);
        let _ = s.metrics.pool_claims.remove_label_values(&[name]);
    }
    if let (Some(pool), Some(mut st)) = (pool, p.status) {
        st.ready = ready.len() as u32;
        st.starting = st.starting.saturating_sub(creates as u32);
        if pool.status.as_ref() != Some(&st) {
            let rv = pool.metadata.resource_version.clone().unwrap_or_default();
            match s.store.pools().update_status(name, &rv, &st).await {
                Ok(updated) => {
                    if let Ok(mut c) = s.pools.write() {
                        let newer = |x: &WarmPool| {
                            x.metadata
                                .resource_version
                                .as_deref()
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(0)
                        };
                        if c.get(name).is_none_or(|x| newer(&updated) > newer(x)) {
                            c.insert(name.to_string(), updated);
                        }
                    }
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(more.then_some(Duration::ZERO))
}

/// Keep the pool cache in step with the store's pools, like [`watch_store`] for sessions.
async fn watch_pools(
    s: Arc<Shared>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let pools = s.store.pools();
    while !shutdown.is_cancelled() {
        let result: Result<(), StoreError> = async {
            let snap = pools.list().await?;
            let mut watch = pools.watch_from(snap.revision, &snap.identity).await?;
            let mut keys: HashSet<String> =
                snap.items.iter().map(|x| x.name().to_string()).collect();
            if let Ok(mut c) = s.pools.write() {
                keys.extend(c.keys().cloned());
                *c = snap
                    .items
                    .into_iter()
                    .map(|x| (x.name().to_string(), x))
                    .collect();
            }
            s.pools_listed.store(true, Ordering::Release);
            let _ = tx.send(Trigger::Keys(
                keys.into_iter().map(|k| format!("{POOL_KEY}{k}")).collect(),
            ));
            delay = Duration::from_millis(100);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = watch.next_batch(WATCH_BLOCK) => b?,
                };
                for ev in batch {
                    if !ev.status_only
                        && let Ok(mut r) = s.ready.write()
                    {
                        // Its members may be of another template now: none is offered
                        // until the pool's next reconcile says which are.
                        r.remove(&ev.name);
                    }
                    if let Ok(mut c) = s.pools.write() {
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
                        let _ = tx.send(Trigger::Changed(format!("{POOL_KEY}{}", ev.name)));
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            s.metrics.redis_errors.inc();
            warn!(error = %e, "pool watch interrupted; relisting");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Keep the cache in step with the store: list, then follow the change stream; relist after
/// any error (Redis restart, trimmed stream, a reset store).
async fn watch_store(
    s: Arc<Shared>,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result: Result<(), StoreError> = async {
            let snap = s.store.list().await?;
            let mut watch = s.store.watch_from(snap.revision, &snap.identity).await?;
            let mut keys: HashSet<String> = snap
                .items
                .iter()
                .map(|x| x.metadata.name.clone())
                .collect();
            if let Ok(mut id) = s.store_id.write() {
                if !id.is_empty() && *id != snap.identity {
                    s.metrics.store_resets.inc();
                    warn!(
                        old = %id,
                        new = %snap.identity,
                        "the store was reset (its identity changed): the sandboxes of the old \
                         store are left alone and reported as foreign; remove them with \
                         `mcp-orchestrator foreign --remove` once you are sure"
                    );
                }
                if *id != snap.identity
                    && let Some(path) = &s.config.store_id_file
                    && let Err(e) = std::fs::write(path, format!("{}\n", snap.identity))
                {
                    warn!(path = %path.display(), error = %e, "cannot write the store identity");
                }
                *id = snap.identity.clone();
            }
            // The crash-loop memory of the previous leader, for sessions this one has not
            // seen crash yet.
            let recorded = s.store.crash_states().await?;
            if let Ok(mut c) = s.crash.lock() {
                for (name, state) in recorded {
                    c.entry(name).or_insert(state);
                }
            }
            let mut claims = s.store.claims().await?;
            if let Ok(mut c) = s.claims.write() {
                // Claims this controller made while the list was read stay known.
                for (id, claim) in c.drain() {
                    claims.entry(id).or_insert(claim);
                }
                *c = claims;
            }
            let hold = s.store.orphan_hold().await?;
            if let Some(why) = &hold {
                warn!(reason = %why, "orphans are held after a store rollback: this store's containers without a session are left alone until `mcp-orchestrator foreign --remove`");
            }
            if let Ok(mut h) = s.hold.write() {
                *h = hold;
            }
            if let Ok(mut u) = s.unreadable.write() {
                keys.extend(u.keys().cloned());
                *u = snap
                    .unreadable
                    .iter()
                    .map(|x| (x.name.clone(), x.reason.clone()))
                    .collect();
                for x in &snap.unreadable {
                    warn!(session = %x.name, reason = %x.reason, "stored session is unreadable; set aside");
                }
                s.metrics.unreadable_sessions.set(u.len() as i64);
            }
            if let Ok(mut c) = s.cache.write() {
                keys.extend(c.keys().cloned());
                *c = snap
                    .items
                    .into_iter()
                    .map(|x| (x.metadata.name.clone(), x))
                    .collect();
            }
            s.listed.store(true, Ordering::Release);
            info!(
                sessions = keys.len(),
                revision = snap.revision,
                store = %snap.identity,
                "store listed"
            );
            let _ = tx.send(Trigger::Keys(keys.into_iter().collect()));
            let _ = tx.send(Trigger::Resync);
            delay = Duration::from_millis(100);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = watch.next_batch(WATCH_BLOCK) => b?,
                };
                for ev in batch {
                    if let Ok(mut u) = s.unreadable.write() {
                        match &ev.unreadable {
                            Some(reason) if ev.kind != crate::store::EventType::Deleted => {
                                warn!(session = %ev.name, %reason, "stored session is unreadable; set aside");
                                u.insert(ev.name.clone(), reason.clone());
                            }
                            _ => {
                                u.remove(&ev.name);
                            }
                        }
                        s.metrics.unreadable_sessions.set(u.len() as i64);
                    }
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
                        let _ = tx.send(Trigger::Changed(ev.name));
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            if let StoreError::Reset {
                old,
                new,
                seen,
                now,
            } = &e
                && old == new
            {
                // Rolled back under the same identity (an older backup, a lagging replica):
                // sessions written after that point are gone, and their sandboxes would look
                // like orphans. Hold them until an operator confirms.
                s.metrics.store_resets.inc();
                let why = format!("revision went back from {seen} to {now} (store {old})");
                if let Err(e) = s.store.set_orphan_hold(Some(&why)).await {
                    warn!(error = %e, "cannot record the orphan hold");
                }
                if let Ok(mut h) = s.hold.write() {
                    *h = Some(why);
                }
            }
            s.metrics.redis_errors.inc();
            warn!(error = %e, "store watch interrupted; relisting");
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
                    // A pool member's events go to the session that claimed it, else to
                    // its pool.
                    let key = match (&ev.pool, s.claimed_by(&ev.id)) {
                        (Some(_), Some(claim)) => claim.session,
                        (Some(pool), None) => {
                            if ev.action != "start" && ev.action != "create" {
                                // It may be stopping: never offer it again unless its
                                // pool's next reconcile finds it running.
                                if let Ok(mut sus) = s.suspect.lock() {
                                    if ev.action == "destroy" {
                                        sus.remove(&ev.id);
                                    } else {
                                        sus.insert(ev.id.clone());
                                    }
                                }
                                if let Ok(mut r) = s.ready.write()
                                    && let Some(ids) = r.get_mut(pool)
                                {
                                    ids.retain(|x| x != &ev.id);
                                }
                            }
                            format!("{POOL_KEY}{pool}")
                        }
                        (None, _) => ev.session.clone(),
                    };
                    let own = s
                        .expect
                        .lock()
                        .is_ok_and(|mut e| e.observe(&key, &ev.action, std::time::Instant::now()));
                    debug!(session = %key, action = %ev.action, own, "docker event");
                    if !key.is_empty() && !own {
                        let _ = tx.send(Trigger::Key(key));
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
