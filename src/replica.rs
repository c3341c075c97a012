//! One replica among several (issue 11): every replica serves the API; the one holding the
//! lease ([`crate::lease`]) is the leader and alone reconciles, syncs the specs directory
//! and talks to sandboxes.
//!
//! - [`lead`] turns the elector's view into work: when this replica's term starts it runs
//!   the leader's work (given by the caller) with a token that is cancelled the moment the
//!   term ends, waits for that work to stop, and only then looks at the next term. The
//!   log says when a replica becomes or stops being the leader; `/metrics` has
//!   `mcpo_leader`, `mcpo_leader_term` and `mcpo_leader_transitions_total`.
//! - The leader publishes where it serves HTTP ([`Leadership::publish_address`], fenced),
//!   so a standby forwards what must run on the leader (a chat turn) to it.
//! - [`Registry`] keeps a heartbeat per live replica in Redis, so that a replica that stops
//!   knows whether it is the last one (the container entrypoint removes sandboxes only
//!   then).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::controller::Handle;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The key suffix of the leader's published address (`<term> <url>`).
const ADDRESS_KEY: &str = "leader-address";

/// What the HTTP layer knows about leadership. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    store: Store,
    leader: watch::Receiver<Option<u64>>,
    controller: RwLock<Option<Handle>>,
}

impl Leadership {
    /// The leadership of replica `id` over `store`'s instance, as the elector publishes it on
    /// `leader`.
    pub fn new(id: &str, store: Store, leader: watch::Receiver<Option<u64>>) -> Leadership {
        Leadership {
            inner: Arc::new(Inner {
                id: id.to_string(),
                store,
                leader,
                controller: RwLock::new(None),
            }),
        }
    }

    /// This replica's id (unique per process).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The term this replica leads in, if it leads now.
    pub fn term(&self) -> Option<u64> {
        *self.inner.leader.borrow()
    }

    /// Does this replica lead now?
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// Resolves when the term this replica leads in now ends (at once when it leads in none).
    pub async fn term_ends(&self) {
        let mut rx = self.inner.leader.clone();
        let now = *rx.borrow_and_update();
        if now.is_none() {
            return;
        }
        let _ = rx.wait_for(|t| *t != now).await;
    }

    /// The elector's view (for [`crate::controller::Term`]).
    pub fn watch(&self) -> watch::Receiver<Option<u64>> {
        self.inner.leader.clone()
    }

    /// The running controller's handle while this replica leads.
    pub fn controller(&self) -> Option<Handle> {
        self.inner.controller.read().ok().and_then(|c| c.clone())
    }

    /// Set (or clear) the running controller's handle.
    pub fn set_controller(&self, handle: Option<Handle>) {
        if let Ok(mut c) = self.inner.controller.write() {
            *c = handle;
        }
    }

    /// Publish `url` as the leader's address for `term` (fenced: a deposed leader cannot
    /// overwrite its successor's), or withdraw it with `None`.
    pub async fn publish_address(&self, term: u64, url: Option<&str>) -> Result<(), StoreError> {
        let value = url.map(|u| format!("{term} {u}"));
        self.inner
            .store
            .fenced(term)
            .set_value(ADDRESS_KEY, value.as_deref())
            .await
    }

    /// The current leader's address, as it published it: `None` when no leader has one
    /// (none elected yet, or between terms).
    pub async fn leader_address(&self) -> Result<Option<String>, StoreError> {
        let raw = self.inner.store.value(ADDRESS_KEY).await?;
        Ok(raw.and_then(|v| v.split_once(' ').map(|(_, url)| url.to_string())))
    }
}

/// Run the leader's work for every term this replica holds, until `shutdown`.
///
/// `work(term, stop)` is started when a term begins and must return soon after `stop` is
/// cancelled, which happens as soon as the elector says the term ended (or on shutdown).
/// The next term's work starts only after the previous one returned, so two terms' work
/// never overlap in one process.
pub async fn lead<F, Fut>(
    leadership: Leadership,
    metrics: Metrics,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(u64, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut rx = leadership.inner.leader.clone();
    loop {
        let term = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = rx.wait_for(|t| t.is_some()) => match t {
                Ok(t) => t.unwrap_or_default(),
                // The elector is gone: nothing will lead here again.
                Err(_) => return,
            },
        };
        metrics.leader.set(1);
        metrics
            .leader_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        metrics.leader_transitions.inc();
        info!(term, replica = %leadership.id(), "this replica is now the leader");
        let stop = shutdown.child_token();
        let mut task = Some(tokio::spawn(work(term, stop.clone())));
        while let Some(running) = task.as_mut() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = rx.wait_for(|t| *t != Some(term)) => break,
                ended = running => {
                    task = None;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    // The work must run as long as the term: start it again (after a pause,
                    // so a work that keeps failing cannot spin).
                    match ended {
                        Err(e) => tracing::error!(error = %e, "the leader's work failed; starting it again"),
                        Ok(()) => tracing::error!("the leader's work ended early; starting it again"),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                    task = Some(tokio::spawn(work(term, stop.clone())));
                }
            }
        }
        stop.cancel();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the leader's work failed");
        }
        metrics.leader.set(0);
        metrics.leader_transitions.inc();
        info!(term, replica = %leadership.id(), "this replica is no longer the leader");
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Heartbeat, leave and count in one script, on Redis's clock. KEYS: the replica set.
/// ARGV: member, ttl ms, op (`beat`, `leave`, `count`). Returns the number of live replicas
/// after the op.
const REGISTRY_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'beat' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
elseif ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"#;

/// The live replicas of an instance: each beats every [`Registry::EVERY`] and counts as
/// live for [`Registry::TTL`] after its last beat.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    id: String,
    script: Script,
}

impl Registry {
    /// How often a replica beats.
    pub const EVERY: Duration = Duration::from_secs(1);
    /// How long a beat counts (a killed replica stops counting this long after).
    pub const TTL: Duration = Duration::from_secs(5);

    /// The registry of `store`'s instance, for replica `id`.
    pub fn new(store: &Store, id: &str) -> Registry {
        Registry {
            store: store.clone(),
            id: id.to_string(),
            script: Script::new(REGISTRY_LUA),
        }
    }

    async fn op(&self, op: &str) -> Result<u64, StoreError> {
        let mut con = self.store.connection();
        Ok(self
            .script
            .key(self.store.key("replicas"))
            .arg(&self.id)
            .arg(Self::TTL.as_millis() as u64)
            .arg(op)
            .invoke_async(&mut con)
            .await?)
    }

    /// Beat until `shutdown` (errors are retried at the next beat).
    pub async fn beat(&self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.op("beat").await {
                tracing::debug!(error = %e, "replica heartbeat failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Self::EVERY) => {}
            }
        }
    }

    /// Leave the set; returns how many other replicas are still live.
    pub async fn leave(&self) -> Result<u64, StoreError> {
        self.op("leave").await
    }

    /// How many replicas are live now (this one included, if it beats).
    pub async fn live(&self) -> Result<u64, StoreError> {
        self.op("count").await
    }
}

/// A replica id unique per process: `<host>/<pid>/<random>`.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &tag[..8])
}
