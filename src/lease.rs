//! Leader election through a Redis lease with a fencing token (the first part of running
//! several replicas; `serve` runs it, and [`crate::replica`] turns its view into work).
//!
//! The lease is one key, `mcpo:<instance>:leader`, holding `<term> <holder>` with a TTL
//! (`SET NX PX`). Acquiring a free lease increments `mcpo:<instance>:leader-term` and takes
//! the new value as the **term**: a fencing token that grows with every new leader, so a
//! write that carries an old term can be refused ([`Lease::check_fence`]). Renew and release
//! are compare-and-set scripts: they act only while the key still holds the caller's term
//! and holder, so a deposed leader can neither extend nor delete its successor's lease.
//!
//! [`run`] is client-go's elector: it tries to acquire every `retry_every`, renews every
//! `renew_every` while leading, and steps down (publishes `None`) as soon as it has not
//! renewed for `renew_deadline`, which must be shorter than the TTL, so a leader that
//! cannot reach Redis stops acting *before* anyone else may take over. On shutdown it
//! releases the lease, so a standby takes over at its next retry.

use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::redis_conn::{Conn, ConnError};
use crate::store::Store;

/// Lease failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis could not be reached or refused the command.
    #[error("lease: {0}")]
    Redis(#[from] redis::RedisError),
    /// The timings cannot keep the guarantee (renew deadline ≥ TTL, and so on).
    #[error("lease timings: {0}")]
    Config(String),
    /// The acquire was made but fewer replicas than required (`--redis-wait-replicas`)
    /// acknowledged it in time; the lease is not taken as held.
    #[error("lease: {0}")]
    NotReplicated(ConnError),
}

impl From<ConnError> for LeaseError {
    fn from(e: ConnError) -> LeaseError {
        match e {
            ConnError::Redis(e) => LeaseError::Redis(e),
            other => LeaseError::NotReplicated(other),
        }
    }
}

/// Take the lease if it is free (a new term) or already ours (same term, TTL refreshed).
/// KEYS: lease, term counter. ARGV: holder, ttl ms. Returns the term, or 0 when another
/// holder has it.
const ACQUIRE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  if not redis.call('GET', KEYS[2]) then
    -- No counter (a new store, or one flushed or restarted without its data): start above
    -- any term handed out before, from Redis's clock in ms, so no term is ever reused.
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  local term = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], term .. ' ' .. ARGV[1], 'PX', ARGV[2])
  return term
end
local sp = string.find(cur, ' ', 1, true)
if sp and string.sub(cur, sp + 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(cur, 1, sp - 1))
end
return 0
"#;

/// Extend the lease if it still holds exactly `<term> <holder>` and the term is still the
/// newest (a lost counter ends the term too). KEYS: lease, term counter. ARGV: value, ttl ms,
/// term. Returns 1 when renewed.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Delete the lease if it still holds exactly `<term> <holder>`. KEYS: lease. ARGV: value.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// The lease of one orchestrator instance, as seen by one replica (`holder`).
#[derive(Clone)]
pub struct Lease {
    con: Conn,
    key: String,
    term_key: String,
    holder: String,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Lease {
    /// The lease of `store`'s instance, for the replica named `holder` (unique per process,
    /// e.g. `host pid`; no spaces needed, any text works).
    pub fn new(store: &Store, holder: &str) -> Lease {
        Lease {
            con: store.connection(),
            key: store.key("leader"),
            term_key: store.term_key(),
            holder: holder.to_string(),
            acquire: Script::new(ACQUIRE_LUA),
            renew: Script::new(RENEW_LUA),
            release: Script::new(RELEASE_LUA),
        }
    }

    fn value(&self, term: u64) -> String {
        format!("{term} {}", self.holder)
    }

    /// Take the lease for `ttl`: `Some(term)` when this replica holds it now. With
    /// `--redis-wait-replicas`, a taken lease must also be acknowledged by the replicas (or
    /// this fails with [`LeaseError::NotReplicated`]): a term lost in a failover could be
    /// handed out twice.
    pub async fn try_acquire(&self, ttl: Duration) -> Result<Option<u64>, LeaseError> {
        let mut con = self.con.for_write().await?;
        let term: u64 = self
            .acquire
            .key(&self.key)
            .key(&self.term_key)
            .arg(&self.holder)
            .arg(millis(ttl))
            .invoke_async(&mut con)
            .await?;
        if term > 0 {
            con.acknowledge().await?;
        }
        Ok((term > 0).then_some(term))
    }

    /// Extend the lease of `term` by `ttl`; false when it is no longer ours.
    pub async fn renew(&self, term: u64, ttl: Duration) -> Result<bool, LeaseError> {
        let mut con = self.con.clone();
        let done: i64 = self
            .renew
            .key(&self.key)
            .key(&self.term_key)
            .arg(self.value(term))
            .arg(millis(ttl))
            .arg(term)
            .invoke_async(&mut con)
            .await?;
        Ok(done == 1)
    }

    /// Give the lease of `term` up; false when it was no longer ours.
    pub async fn release(&self, term: u64) -> Result<bool, LeaseError> {
        let mut con = self.con.clone();
        let done: i64 = self
            .release
            .key(&self.key)
            .arg(self.value(term))
            .invoke_async(&mut con)
            .await?;
        Ok(done == 1)
    }

    /// Who holds the lease now: `(term, holder)`, `None` when it is free.
    pub async fn holder(&self) -> Result<Option<(u64, String)>, LeaseError> {
        let mut con = self.con.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut con)
            .await?;
        Ok(v.and_then(|v| {
            let (term, holder) = v.split_once(' ')?;
            Some((term.parse().ok()?, holder.to_string()))
        }))
    }

    /// The fence: true when `term` is the newest term ever granted, i.e. no later leader
    /// exists. A write guarded by a fence runs this check in the same script as the write.
    pub async fn check_fence(&self, term: u64) -> Result<bool, LeaseError> {
        let mut con = self.con.clone();
        let newest: Option<u64> = redis::cmd("GET")
            .arg(&self.term_key)
            .query_async(&mut con)
            .await?;
        Ok(newest == Some(term))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Timings of [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease lives without a renew (a dead leader's successor waits this long).
    pub ttl: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// A leader that has not renewed for this long steps down; must be below `ttl`.
    pub renew_deadline: Duration,
    /// How often a standby tries to acquire.
    pub retry_every: Duration,
}

impl Default for Timings {
    /// Takeover after a crash within ~3.3 s (TTL 3 s + one retry of 250 ms).
    fn default() -> Timings {
        Timings {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
            renew_deadline: Duration::from_millis(2000),
            retry_every: Duration::from_millis(250),
        }
    }
}

impl Timings {
    /// The timings for a lease TTL: renew every TTL/6, step down after 2/3 TTL without a
    /// renew, standbys try every TTL/12 (so a released lease is taken within that).
    pub fn from_ttl(ttl: Duration) -> Result<Timings, LeaseError> {
        let t = Timings {
            ttl,
            renew_every: ttl / 6,
            renew_deadline: ttl * 2 / 3,
            retry_every: ttl / 12,
        };
        t.check()?;
        Ok(t)
    }

    /// Check that the timings keep the guarantee: renew often enough, step down before the
    /// lease can expire.
    pub fn check(&self) -> Result<(), LeaseError> {
        if self.renew_deadline >= self.ttl {
            return Err(LeaseError::Config(format!(
                "the renew deadline ({:?}) must be shorter than the lease TTL ({:?})",
                self.renew_deadline, self.ttl
            )));
        }
        if self.renew_every >= self.renew_deadline || self.renew_every.is_zero() {
            return Err(LeaseError::Config(format!(
                "renew every ({:?}) must be above 0 and below the renew deadline ({:?})",
                self.renew_every, self.renew_deadline
            )));
        }
        if self.retry_every.is_zero() {
            return Err(LeaseError::Config("retry every must be above 0".into()));
        }
        Ok(())
    }
}

/// Elect: publish `Some(term)` on `leader` while this replica leads and `None` otherwise,
/// until `shutdown`; then release the lease if held. Errors talking to Redis count as
/// failed renews (a leader steps down at its renew deadline) or failed tries.
pub async fn run(
    lease: Lease,
    t: Timings,
    leader: watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) -> Result<(), LeaseError> {
    t.check()?;
    let mut term: Option<u64> = None;
    let mut renewed = Instant::now();
    loop {
        let wait = if term.is_some() {
            t.renew_every
        } else {
            t.retry_every
        };
        match term {
            Some(held) => {
                // Bounded, so a hung Redis still lets the deadline below decide.
                let left = t.renew_deadline.saturating_sub(renewed.elapsed());
                // The TTL starts when Redis runs the renew, at the latest when the reply
                // comes back: count the deadline from the send, the safe side.
                let sent = Instant::now();
                let ok = tokio::time::timeout(left, lease.renew(held, t.ttl)).await;
                match ok {
                    Ok(Ok(true)) => renewed = sent,
                    Ok(Ok(false)) => {
                        tracing::warn!(term = held, "lost the lease: stepping down");
                        term = None;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease failed"),
                    Err(_) => {}
                }
                if term.is_some() && renewed.elapsed() >= t.renew_deadline {
                    tracing::warn!(term = held, "no renew within the deadline: stepping down");
                    term = None;
                }
            }
            None => {
                let sent = Instant::now();
                match lease.try_acquire(t.ttl).await {
                    Ok(Some(new)) => {
                        tracing::info!(term = new, "became the leader");
                        renewed = sent;
                        term = Some(new);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "acquiring the lease failed"),
                }
            }
        }
        leader.send_if_modified(|cur| {
            let changed = *cur != term;
            *cur = term;
            changed
        });
        // While leading, never sleep past the renew deadline: step down on time.
        let wait = if term.is_some() {
            wait.min(t.renew_deadline.saturating_sub(renewed.elapsed()))
        } else {
            wait
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    leader.send_replace(None);
    if let Some(held) = term {
        let _ = lease.release(held).await;
        tracing::info!(term = held, "released the lease");
    }
    Ok(())
}
