//! The Redis store of desired sessions and their status.
//!
//! ## Key layout (prefix `mcpo:<instance>`)
//! | key | type | holds |
//! |---|---|---|
//! | `<p>:objects` | hash | session name → Session JSON (without `resourceVersion`) |
//! | `<p>:versions` | hash | session name → resourceVersion |
//! | `<p>:rv` | string | the last resourceVersion handed out (a counter) |
//! | `<p>:stream` | stream | one entry per write, id `<rv>-0`: `type`, `name`, `status`, `object`; at most [`STREAM_MAXLEN`] entries and [`STREAM_MAX_BYTES`] of content, oldest first out |
//! | `<p>:stream-bytes` | string | the content bytes of the stream's entries (kept by the write script) |
//! | `<p>:log:<name>` | list | the session's recent events (JSON), newest first, capped |
//! | `<p>:chat:<name>` | list | the chat history (Gemini `Content` JSON), oldest first, bounded |
//! | `<p>:chat-bytes:<name>` | string | the byte size of that list |
//! | `<p>:specfiles` | hash | specs-directory file (`file:<path>`) → its current problem (JSON event) |
//! | `<p>:id` | string | the store's identity: a random id made once, carried by every sandbox |
//! | `<p>:orphan-hold` | string | set after a rollback (revision went back, same identity): why orphans are held |
//! | `<p>:claims` | hash | warm-pool member container id → its claim (session, uid, pool), until the container is gone |
//! | `<p>:pool-objects`, `<p>:pool-versions`, `<p>:pool-rv`, `<p>:pool-stream`, `<p>:pool-log:<name>` | | the same for `WarmPool` objects ([`Store::pools`]): their own revision counter and change stream |
//!
//! ## Identity and resets
//! The identity is created by the first write or list (`SET NX`) and never changes while the
//! data lives. Sandboxes carry it in a label, so the controller only ever adopts or removes
//! containers of *this* store. A reset (`FLUSHALL`, a failover to an empty replica) loses the
//! key: the next write or list makes a new one, and a watcher notices the change (or a
//! revision lower than the one it saw) and reports [`StoreError::Reset`].
//!
//! ## Schema version
//! Stored objects carry `schemaVersion` ([`SCHEMA_VERSION`]). An object that cannot be
//! decoded (written by a newer version, or corrupted) is set aside and reported
//! ([`Snapshot::unreadable`], [`WatchEvent::unreadable`]); it never stops a list or a watch.
//!
//! Every write is one Lua script: compare the stored resourceVersion with the caller's,
//! increment the counter, write the object and append the change to the stream, atomically.
//! A stale write fails with [`StoreError::Conflict`] and changes nothing. Because every write
//! takes the next counter value and appends exactly one stream entry with that id, a watcher
//! can resume from any resourceVersion with `XREAD` and detect a gap (trimmed stream, Redis
//! restarted without persistence) by a jump in ids.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Script, Value};
use serde::{Deserialize, Serialize};

use crate::domain::plan::CrashState;
pub use crate::domain::pool::Claim;
use crate::domain::resource::{Object, ObjectRef, Session};
use crate::redis_conn::{Conn, ConnError, PrimaryChanges, RedisTarget};

/// Most change entries kept in a kind's stream.
const STREAM_MAXLEN: usize = 100_000;
/// Most bytes of entry content (the sum of every field value's length) kept in a kind's
/// stream: the oldest entries go first, so a watcher that falls further behind relists.
/// With objects of at most [`crate::domain::limits::MAX_OBJECT_BYTES`] this keeps at least
/// the last 256 writes, typically tens of thousands.
pub const STREAM_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Number of events kept per session.
const LOG_LEN: isize = 50;
/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The write was made but fewer replicas than required (`--redis-wait-replicas`)
    /// acknowledged it in time: it may still have been applied, and a failover may lose it.
    #[error(
        "the write was acknowledged by {acknowledged} of the {wanted} replicas required within \
         {}: it may still have been applied, and a failover may lose it",
        humantime::format_duration(*timeout)
    )]
    NotReplicated {
        /// Replicas required.
        wanted: u32,
        /// Replicas that acknowledged.
        acknowledged: u32,
        /// How long the write waited.
        timeout: Duration,
    },
    /// No object of this kind has this name.
    #[error("{0} not found")]
    NotFound(ObjectRef),
    /// An object of this kind with this name exists already.
    #[error("{0} already exists")]
    AlreadyExists(ObjectRef),
    /// The caller's resourceVersion is stale.
    #[error(
        "conflict: {name} was modified (resourceVersion is now {current}, the write expected {expected})"
    )]
    Conflict {
        /// The object.
        name: ObjectRef,
        /// The caller's precondition.
        expected: String,
        /// The stored version.
        current: String,
    },
    /// A stored value is not a valid object of its kind.
    #[error("stored {name} is unreadable: {source}")]
    Corrupt {
        /// The object.
        name: ObjectRef,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The published policy cannot be used (oversize, undecodable, out of range).
    #[error("the policy published in the store is unusable: {0}")]
    BadPolicy(String),
    /// The watch fell behind the stream (trimmed): relist.
    #[error("watch position {0} is no longer available; relist")]
    Gone(u64),
    /// The write carried a leader's fencing term that is no longer the newest: a later
    /// leader exists, and this (deposed) one must not change anything.
    #[error("fenced: term {term} is no longer the leader's (the newest term is {newest})")]
    Fenced {
        /// The term the write carried.
        term: u64,
        /// The newest term granted (empty when none).
        newest: String,
    },
    /// The store was reset under the watch (identity changed or revision went back): relist.
    #[error("the store was reset (identity {old:?} is now {new:?}, revision {seen} is now {now})")]
    Reset {
        /// The identity the watch started with.
        old: String,
        /// The identity now (empty when none is set yet).
        new: String,
        /// The last revision the watch saw.
        seen: u64,
        /// The store's revision now.
        now: u64,
    },
}

impl From<ConnError> for StoreError {
    fn from(e: ConnError) -> StoreError {
        match e {
            ConnError::Redis(e) => StoreError::Redis(e),
            ConnError::NotAcknowledged {
                wanted,
                acknowledged,
                timeout,
            } => StoreError::NotReplicated {
                wanted,
                acknowledged,
                timeout,
            },
            ConnError::Config(msg) => StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Redis settings",
                msg,
            ))),
        }
    }
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// Created.
    Added,
    /// Updated (spec, metadata or status).
    Modified,
    /// Deleted.
    Deleted,
}

/// One change from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent<T = Session> {
    /// The resourceVersion of the write.
    pub revision: u64,
    /// Kind of change.
    pub kind: EventType,
    /// Session name.
    pub name: String,
    /// True when only the status changed.
    pub status_only: bool,
    /// The object after the write (before it, for deletes), with its resourceVersion set.
    /// `None` for a delete without a stored copy, or when the object is unreadable.
    pub object: Option<T>,
    /// Why the object could not be decoded (newer schema, corrupt), when it could not.
    pub unreadable: Option<String>,
}

/// A stored object this build cannot decode, set aside instead of failing a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    /// Session name (the hash field).
    pub name: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// A consistent list of every object of a kind and the revision it was taken at.
#[derive(Debug, Clone)]
pub struct Snapshot<T = Session> {
    /// The objects, sorted by name.
    pub items: Vec<T>,
    /// The store revision; watch from here to see every later change.
    pub revision: u64,
    /// The store's identity at the time of the list.
    pub identity: String,
    /// Objects that could not be decoded, set aside (they are not in `sessions`).
    pub unreadable: Vec<Unreadable>,
}

/// One page of a list (see [`Store::list_page`]).
#[derive(Debug, Clone)]
pub struct Page<T = Session> {
    /// The objects of this page, sorted by name.
    pub items: Vec<T>,
    /// The store revision when the page was read.
    pub revision: u64,
    /// The store's identity when the page was read.
    pub identity: String,
    /// The last name of this page when more follow (`None`: this is the last page).
    pub next_after: Option<String>,
    /// How many objects follow this page.
    pub remaining: u64,
    /// Objects of this page that could not be decoded, set aside.
    pub unreadable: Vec<Unreadable>,
}

/// A recorded event about a session, shown by `describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// When.
    pub time: chrono::DateTime<Utc>,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Machine-readable reason.
    pub reason: String,
    /// Detail.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Keys {
    objects: String,
    versions: String,
    rv: String,
    stream: String,
    /// The byte count of the stream's entries (see [`STREAM_MAX_BYTES`]).
    stream_bytes: String,
    id: String,
    prefix: String,
    /// What the kind's own keys start with after the prefix: `""` for sessions (the
    /// layout above), `pool-` for warm pools (`<p>:pool-objects`, `<p>:pool-rv`, ...).
    kind: &'static str,
}

impl Keys {
    fn of(prefix: &str, kind: &'static str) -> Keys {
        Keys {
            objects: format!("{prefix}:{kind}objects"),
            versions: format!("{prefix}:{kind}versions"),
            rv: format!("{prefix}:{kind}rv"),
            stream: format!("{prefix}:{kind}stream"),
            stream_bytes: format!("{prefix}:{kind}stream-bytes"),
            id: format!("{prefix}:id"),
            prefix: prefix.to_string(),
            kind,
        }
    }
}

/// The key infix of a kind's own keys (see [`Keys::kind`]).
fn kind_infix<T: Object>() -> &'static str {
    if T::KIND == crate::domain::pool::POOL_KIND {
        "pool-"
    } else {
        ""
    }
}

/// The Redis store of one kind of object (sessions by default; [`Store::pools`] for warm
/// pools: the same connection, identity and fencing, the kind's own keys, revision counter
/// and change stream). Cheap to clone; reconnects by itself (and follows a Sentinel
/// failover).
pub struct Store<T = Session> {
    con: Conn,
    keys: Keys,
    write: Script,
    record: Script,
    set: Script,
    claim: Script,
    /// A leader's term: every write of this handle checks it against the newest term in
    /// the same script (see [`Store::fenced`]).
    fence: Option<u64>,
    /// The change stream's bounds: entries, bytes of content.
    stream_limits: (usize, usize),
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            con: self.con.clone(),
            keys: self.keys.clone(),
            write: self.write.clone(),
            record: self.record.clone(),
            set: self.set.clone(),
            claim: self.claim.clone(),
            fence: self.fence,
            stream_limits: self.stream_limits,
            kind: std::marker::PhantomData,
        }
    }
}

/// The fencing check every write script starts with: ARGV[f] is the writer's term ('' when
/// the write is not fenced), KEYS[k] the term counter of [`crate::lease`].
macro_rules! fence_check {
    ($k:literal, $f:literal) => {
        concat!(
            "if ARGV[",
            $f,
            "] ~= '' then\n",
            "  local newest = redis.call('GET', KEYS[",
            $k,
            "])\n",
            "  if newest ~= ARGV[",
            $f,
            "] then return {'fenced', newest or ''} end\n",
            "end\n"
        )
    };
}

/// Set (or, with an empty value, delete) one key, or one field of a hash when ARGV[3] names
/// one, fenced. KEYS: key, term counter. ARGV: fence, value, field.
const SET_LUA: &str = concat!(
    fence_check!(2, 1),
    r#"
if ARGV[3] ~= '' then
  if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[3])
  else redis.call('HSET', KEYS[1], ARGV[3], ARGV[2]) end
elseif ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2]) end
return {'ok', ''}
"#
);

const RECORD_LUA: &str = concat!(
    fence_check!(3, 4),
    r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'ok', '0'} end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return {'ok', '1'}
"#
);

const WRITE_LUA: &str = concat!(
    fence_check!(9, 8),
    r#"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local mode = ARGV[2]
if mode == 'create' then
  if cur then return {'exists', cur} end
elseif mode == '*' then
  if not cur and ARGV[3] == 'delete' then return {'notfound', ''} end
else
  if not cur then return {'notfound', ''} end
  if cur ~= mode then return {'conflict', cur} end
end
redis.call('SET', KEYS[8], ARGV[7], 'NX')
local rv = redis.call('INCR', KEYS[3])
local id = rv .. '-0'
local added = 0
if ARGV[3] == 'delete' then
  local obj = redis.call('HGET', KEYS[1], ARGV[1]) or ''
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[5])
  redis.call('DEL', KEYS[6])
  redis.call('DEL', KEYS[7])
  redis.call('HDEL', KEYS[10], ARGV[1])
  redis.call('XADD', KEYS[4], id, 'type', 'DELETED', 'name', ARGV[1], 'status', '0', 'object', obj)
  added = 7 + #ARGV[1] + 1 + #obj
else
  local t = 'ADDED'
  if cur then t = 'MODIFIED' end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[1], rv)
  redis.call('XADD', KEYS[4], id, 'type', t, 'name', ARGV[1], 'status', ARGV[5], 'object', ARGV[4])
  added = #t + #ARGV[1] + 1 + #ARGV[4]
end
-- Keep the stream within ARGV[6] entries and ARGV[9] bytes of content (KEYS[11] counts
-- them): the oldest entries go, never the one just added.
local total = redis.call('INCRBY', KEYS[11], added)
local max_entries = tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[9])
while total > max_bytes or redis.call('XLEN', KEYS[4]) > max_entries do
  local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
  if #first == 0 or first[1][1] == id then
    -- Only the new entry is left: the count is exactly its size (heals any drift).
    redis.call('SET', KEYS[11], added)
    break
  end
  local size = 0
  local fields = first[1][2]
  for i = 2, #fields, 2 do size = size + #fields[i] end
  redis.call('XDEL', KEYS[4], first[1][1])
  total = redis.call('DECRBY', KEYS[11], size)
  if total < 0 then
    -- Entries from before the count existed: start counting afresh.
    redis.call('SET', KEYS[11], added)
    total = added
  end
end
return {'ok', tostring(rv)}
"#
);

/// Claim the first of several warm-pool members nobody claimed yet, fenced. KEYS: the
/// claims hash, the term counter. ARGV: fence, the claim (JSON), candidate container ids.
/// Returns the claimed id, or '' when every candidate is taken.
const CLAIM_LUA: &str = concat!(
    fence_check!(2, 1),
    r#"
-- A retry of a claim that landed (its answer was lost) wins the same container again.
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[2] then return {'ok', ARGV[i]} end
end
for i = 3, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[2]) == 1 then return {'ok', ARGV[i]} end
end
return {'ok', ''}
"#
);

/// The precondition of a write.
enum Mode<'a> {
    /// The object must not exist.
    Create,
    /// The object must be at this resourceVersion.
    Expect(&'a str),
    /// Any version (the object must exist unless creating).
    Any,
}

/// What a write does to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind<'a> {
    /// Store this encoded object; a spec or metadata change (watchers see
    /// `status_only: false`).
    Upsert(&'a str),
    /// Store this encoded object whose only change is its status (watchers see
    /// `status_only: true`).
    UpsertStatusOnly(&'a str),
    /// Delete the object (and its event log and chat history).
    Delete,
}

impl<'a> WriteKind<'a> {
    /// The write script's `op`, `json` and `status` arguments.
    fn args(self) -> (&'static str, &'a str, &'static str) {
        match self {
            WriteKind::Upsert(json) => ("put", json, "0"),
            WriteKind::UpsertStatusOnly(json) => ("put", json, "1"),
            WriteKind::Delete => ("delete", "", "0"),
        }
    }
}

impl Store<Session> {
    /// Connect to `target` (a URL, or Redis Sentinel; see [`crate::redis_conn`]) and use the
    /// key prefix `mcpo:<instance>`.
    pub async fn connect(
        target: impl Into<RedisTarget>,
        instance: &str,
    ) -> Result<Store, StoreError> {
        let con = Conn::connect(&target.into()).await?;
        let prefix = format!("mcpo:{instance}");
        Ok(Store {
            con,
            keys: Keys::of(&prefix, ""),
            write: Script::new(WRITE_LUA),
            record: Script::new(RECORD_LUA),
            set: Script::new(SET_LUA),
            claim: Script::new(CLAIM_LUA),
            fence: None,
            stream_limits: (STREAM_MAXLEN, STREAM_MAX_BYTES),
            kind: std::marker::PhantomData,
        })
    }
}

impl<T: Object> Store<T> {
    /// The same store (connection, identity, fencing) for another kind of object.
    pub fn of<U: Object>(&self) -> Store<U> {
        Store {
            con: self.con.clone(),
            keys: Keys::of(&self.keys.prefix, kind_infix::<U>()),
            write: self.write.clone(),
            record: self.record.clone(),
            set: self.set.clone(),
            claim: self.claim.clone(),
            fence: self.fence,
            stream_limits: self.stream_limits,
            kind: std::marker::PhantomData,
        }
    }

    /// This store with other change-stream bounds (entries, bytes of content) than
    /// [`STREAM_MAXLEN`] and [`STREAM_MAX_BYTES`], for tests and benchmarks of trimming.
    pub fn with_stream_limits(mut self, entries: usize, bytes: usize) -> Store<T> {
        self.stream_limits = (entries, bytes);
        self
    }

    /// The warm pools of this store.
    pub fn pools(&self) -> Store<crate::domain::pool::WarmPool> {
        self.of()
    }

    /// Is Redis answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        Ok(())
    }

    /// The current store revision (the last resourceVersion handed out).
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let rv: Option<u64> = con.get(&self.keys.rv).await?;
        Ok(rv.unwrap_or(0))
    }

    /// The chat history keys of a session: the list of turns and its byte counter.
    pub fn chat_keys(&self, name: &str) -> (String, String) {
        let (p, k) = (&self.keys.prefix, self.keys.kind);
        (
            format!("{p}:{k}chat:{name}"),
            format!("{p}:{k}chat-bytes:{name}"),
        )
    }

    /// A command connection (reconnecting, following the primary) for modules that keep
    /// their own keys here.
    pub fn connection(&self) -> Conn {
        self.con.clone()
    }

    /// The Redis key `mcpo:<instance>:<suffix>` of this store's instance (for modules that
    /// keep their own keys beside the store's, e.g. [`crate::lease`]).
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.keys.prefix)
    }

    fn log_key(&self, name: &str) -> String {
        format!("{}:{}log:{name}", self.keys.prefix, self.keys.kind)
    }

    fn claims_key(&self) -> String {
        self.key("claims")
    }

    /// Every warm-pool claim, by container id (undecodable entries are skipped).
    pub async fn claims(&self) -> Result<HashMap<String, Claim>, StoreError> {
        let mut con = self.con.clone();
        let raw: HashMap<String, String> = con.hgetall(self.claims_key()).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|c| (k, c)))
            .collect())
    }

    /// Claim the first of `candidates` (container ids) that no one claimed yet for
    /// `claim`, atomically (two claims never get the same container, whoever makes them)
    /// and fenced. `None` when every candidate is taken.
    pub async fn claim(
        &self,
        candidates: &[String],
        claim: &Claim,
    ) -> Result<Option<String>, StoreError> {
        let mut con = self.con.for_write().await?;
        let json = serde_json::to_string(claim).unwrap_or_default();
        let mut script = self.claim.key(self.claims_key());
        script.key(self.term_key()).arg(self.fence_arg()).arg(json);
        for c in candidates {
            script.arg(c);
        }
        let (outcome, value): (String, String) = script.invoke_async(&mut con).await?;
        self.fenced_outcome(&outcome, value.clone())?;
        con.acknowledge().await?;
        Ok((!value.is_empty()).then_some(value))
    }

    /// The warm-pool members claimed by this very session (its name and uid).
    pub async fn claimed_by(&self, session: &Session) -> Result<Vec<String>, StoreError> {
        let uid = session.metadata.uid.as_deref().unwrap_or_default();
        Ok(self
            .claims()
            .await?
            .into_iter()
            .filter(|(_, c)| c.session == session.metadata.name && c.uid == uid)
            .map(|(id, _)| id)
            .collect())
    }

    /// Forget the claim on a container that is gone (fenced).
    pub async fn release_claim(&self, container: &str) -> Result<(), StoreError> {
        self.set_field(&self.claims_key(), container, None).await
    }

    fn crash_key(&self) -> String {
        self.key(&format!("{}crash", self.keys.kind))
    }

    fn decode(name: &str, json: &str, rv: &str) -> Result<T, StoreError> {
        let corrupt = |source| StoreError::Corrupt {
            name: ObjectRef::of::<T>(name),
            source,
        };
        let mut value: serde_json::Value = serde_json::from_str(json).map_err(corrupt)?;
        let version = match value.as_object_mut() {
            Some(o) => o.remove("schemaVersion").map(|v| v.as_u64()),
            None => None,
        };
        match version {
            // Written before schema versions existed: version 1.
            None | Some(Some(1..=SCHEMA_VERSION)) => {}
            Some(v) => {
                return Err(corrupt(serde::de::Error::custom(format!(
                    "schemaVersion {} is newer than this build reads ({SCHEMA_VERSION}); \
                     it was written by a newer mcp-orchestrator",
                    v.map(|v| v.to_string())
                        .unwrap_or_else(|| "(not a number)".into())
                ))));
            }
        }
        let mut s: T = serde_json::from_value(value).map_err(corrupt)?;
        s.meta_mut().resource_version = Some(rv.to_string());
        Ok(s)
    }

    fn encode(object: &T) -> String {
        let mut s = object.clone();
        s.meta_mut().resource_version = None;
        let mut value = serde_json::to_value(&s).unwrap_or_default();
        if let Some(o) = value.as_object_mut() {
            o.insert("schemaVersion".into(), SCHEMA_VERSION.into());
        }
        serde_json::to_string(&value).unwrap_or_default()
    }

    /// Why orphans are held (not removed) after a store rollback, if they are: set by the
    /// controller when the revision went back under an unchanged identity, cleared by an
    /// operator (`mcp-orchestrator foreign --remove`).
    pub async fn orphan_hold(&self) -> Result<Option<String>, StoreError> {
        let mut con = self.con.clone();
        Ok(con.get(self.hold_key()).await?)
    }

    /// Set (`Some`) or clear (`None`) the orphan hold (see [`Store::orphan_hold`]).
    pub async fn set_orphan_hold(&self, reason: Option<&str>) -> Result<(), StoreError> {
        self.set_key(&self.hold_key(), reason).await
    }

    /// Publish the policy this `serve` admits with, so that CLIs admit with the same.
    pub async fn publish_policy(
        &self,
        p: &crate::domain::contract::PublishedPolicy,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(p).map_err(|e| StoreError::BadPolicy(e.to_string()))?;
        self.set_key(&self.policy_key(), Some(&json)).await
    }

    /// Set (`Some`) or delete (`None`) the key `mcpo:<instance>:<suffix>`, fenced when this
    /// handle is (for modules that keep a small value beside the store's, e.g. the leader's
    /// address).
    pub async fn set_value(&self, suffix: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.set_key(&self.key(suffix), value).await
    }

    /// The value of `mcpo:<instance>:<suffix>` (see [`Store::set_value`]).
    pub async fn value(&self, suffix: &str) -> Result<Option<String>, StoreError> {
        let mut con = self.con.clone();
        Ok(con.get(self.key(suffix)).await?)
    }

    /// Every session's crash-loop memory the leader recorded (see
    /// [`Store::set_crash_state`]); undecodable entries are skipped.
    pub async fn crash_states(&self) -> Result<HashMap<String, CrashState>, StoreError> {
        let mut con = self.con.clone();
        let raw: HashMap<String, String> = con.hgetall(self.crash_key()).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|c| (k, c)))
            .collect())
    }

    /// Record (`Some`) or forget (`None`) a session's crash-loop memory, so that the next
    /// leader goes on with the same back-off. Fenced like every leader write.
    pub async fn set_crash_state(
        &self,
        name: &str,
        crash: Option<&CrashState>,
    ) -> Result<(), StoreError> {
        let json = crash.map(|c| serde_json::to_string(c).unwrap_or_default());
        self.set_field(&self.crash_key(), name, json.as_deref())
            .await
    }

    async fn set_key(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.set_field(key, "", value).await
    }

    async fn set_field(
        &self,
        key: &str,
        field: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let (outcome, newest): (String, String) = self
            .set
            .key(key)
            .key(self.term_key())
            .arg(self.fence_arg())
            .arg(value.unwrap_or(""))
            .arg(field)
            .invoke_async(&mut con)
            .await?;
        self.fenced_outcome(&outcome, newest)
    }

    /// This store, with every write fenced by the leader term `term`: a write whose term is
    /// no longer the newest ([`crate::lease`] increments it for every new leader) changes
    /// nothing and fails with [`StoreError::Fenced`]. The check runs in the write's own
    /// script, so it is atomic with the write.
    pub fn fenced(&self, term: u64) -> Store<T> {
        Store {
            fence: Some(term),
            ..self.clone()
        }
    }

    /// The counter of leader terms (the fencing token; see [`crate::lease`]).
    pub fn term_key(&self) -> String {
        self.key("leader-term")
    }

    fn fence_arg(&self) -> String {
        self.fence.map(|t| t.to_string()).unwrap_or_default()
    }

    fn fenced_outcome(&self, outcome: &str, newest: String) -> Result<(), StoreError> {
        match (outcome, self.fence) {
            ("fenced", Some(term)) => Err(StoreError::Fenced { term, newest }),
            _ => Ok(()),
        }
    }

    /// The policy a `serve` published, `None` when none did. Bounded and checked: an
    /// oversize, undecodable or out-of-range value is [`StoreError::BadPolicy`].
    pub async fn published_policy(
        &self,
    ) -> Result<Option<crate::domain::contract::PublishedPolicy>, StoreError> {
        let mut con = self.con.clone();
        let corrupt = StoreError::BadPolicy;
        // One bounded read: at most one byte more than allowed, to tell "too large".
        let max = crate::domain::limits::MAX_POLICY_BYTES;
        let json: String = con
            .getrange(
                self.policy_key(),
                0,
                isize::try_from(max).unwrap_or(isize::MAX),
            )
            .await?;
        if json.is_empty() {
            return Ok(None);
        }
        if json.len() > max {
            return Err(corrupt(format!("more than {max} bytes")));
        }
        let p: crate::domain::contract::PublishedPolicy =
            serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
        p.checked().map(Some).map_err(corrupt)
    }

    fn policy_key(&self) -> String {
        format!("{}:policy", self.keys.prefix)
    }

    fn hold_key(&self) -> String {
        format!("{}:orphan-hold", self.keys.prefix)
    }

    /// The store's identity, created now if it has none (an empty or reset store).
    pub async fn identity(&self) -> Result<String, StoreError> {
        let mut con = self.con.clone();
        let (id,): (String,) = self
            .with_identity()
            .get(&self.keys.id)
            .query_async(&mut con)
            .await?;
        Ok(id)
    }

    /// An atomic pipeline that first makes the store's identity if it has none.
    fn with_identity(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&self.keys.id)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg("NX")
            .ignore();
        pipe
    }

    /// One object by name.
    pub async fn get(&self, name: &str) -> Result<Option<T>, StoreError> {
        let mut con = self.con.clone();
        let (json, rv): (Option<String>, Option<String>) = redis::pipe()
            .atomic()
            .hget(&self.keys.objects, name)
            .hget(&self.keys.versions, name)
            .query_async(&mut con)
            .await?;
        match (json, rv) {
            (Some(json), Some(rv)) => Ok(Some(Self::decode(name, &json, &rv)?)),
            _ => Ok(None),
        }
    }

    /// Every session, and the revision and identity the list was taken at (the identity is
    /// created if the store has none). Objects that cannot be decoded are set aside in
    /// [`Snapshot::unreadable`]; they never fail the list.
    pub async fn list(&self) -> Result<Snapshot<T>, StoreError> {
        let mut con = self.con.clone();
        let (objects, versions, rv, identity): (
            HashMap<String, String>,
            HashMap<String, String>,
            Option<u64>,
            String,
        ) = self
            .with_identity()
            .hgetall(&self.keys.objects)
            .hgetall(&self.keys.versions)
            .get(&self.keys.rv)
            .get(&self.keys.id)
            .query_async(&mut con)
            .await?;
        let mut sessions = Vec::with_capacity(objects.len());
        let mut unreadable = Vec::new();
        for (name, json) in &objects {
            if let Some(v) = versions.get(name) {
                match Self::decode(name, json, v) {
                    Ok(s) => sessions.push(s),
                    Err(e) => unreadable.push(Unreadable {
                        name: name.clone(),
                        reason: e.to_string(),
                    }),
                }
            }
        }
        sessions.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        unreadable.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Snapshot {
            items: sessions,
            revision: rv.unwrap_or(0),
            identity,
            unreadable,
        })
    }

    /// At most `limit` objects whose names sort after `after` (all names when `None`), in
    /// name order: a page of a list that never holds more than `limit` objects in memory
    /// or on the wire. Pages are not one snapshot: each object is as it is when its page is
    /// read; a client that lists page by page and then watches from the first page's
    /// revision sees every later change.
    pub async fn list_page(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<T>, StoreError> {
        let mut con = self.con.clone();
        let mut names: Vec<String> = con.hkeys(&self.keys.versions).await?;
        names.sort_unstable();
        let start = match after {
            Some(a) => names.partition_point(|n| n.as_str() <= a),
            None => 0,
        };
        let limit = limit.max(1);
        let page: Vec<String> = names.iter().skip(start).take(limit).cloned().collect();
        let remaining = names.len().saturating_sub(start + page.len()) as u64;
        type Fields = Vec<Option<String>>;
        let (objects, versions, rv, identity): (Fields, Fields, Option<u64>, String) =
            if page.is_empty() {
                let (rv, identity): (Option<u64>, String) = self
                    .with_identity()
                    .get(&self.keys.rv)
                    .get(&self.keys.id)
                    .query_async(&mut con)
                    .await?;
                (Vec::new(), Vec::new(), rv, identity)
            } else {
                self.with_identity()
                    .cmd("HMGET")
                    .arg(&self.keys.objects)
                    .arg(&page)
                    .cmd("HMGET")
                    .arg(&self.keys.versions)
                    .arg(&page)
                    .get(&self.keys.rv)
                    .get(&self.keys.id)
                    .query_async(&mut con)
                    .await?
            };
        let mut items = Vec::with_capacity(page.len());
        let mut unreadable = Vec::new();
        for ((name, json), v) in page.iter().zip(objects).zip(versions) {
            // Deleted since the names were read: not on this page.
            let (Some(json), Some(v)) = (json, v) else {
                continue;
            };
            match Self::decode(name, &json, &v) {
                Ok(o) => items.push(o),
                Err(e) => unreadable.push(Unreadable {
                    name: name.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(Page {
            items,
            revision: rv.unwrap_or(0),
            identity,
            next_after: (remaining > 0).then(|| page.last().cloned()).flatten(),
            remaining,
            unreadable,
        })
    }

    async fn write(
        &self,
        name: &str,
        mode: Mode<'_>,
        kind: WriteKind<'_>,
    ) -> Result<String, StoreError> {
        // With --redis-wait-replicas, a connection of its own: the WAIT below must run on
        // the connection the script ran on.
        let mut con = self.con.for_write().await?;
        let (op, json, status_only) = kind.args();
        let mode_arg = match mode {
            Mode::Create => "create",
            Mode::Any => "*",
            Mode::Expect(rv) => rv,
        };
        let (outcome, value): (String, String) = self
            .write
            .key(&self.keys.objects)
            .key(&self.keys.versions)
            .key(&self.keys.rv)
            .key(&self.keys.stream)
            .key(self.log_key(name))
            .key(self.chat_keys(name).0)
            .key(self.chat_keys(name).1)
            .key(&self.keys.id)
            .key(self.term_key())
            .key(self.crash_key())
            .key(&self.keys.stream_bytes)
            .arg(name)
            .arg(mode_arg)
            .arg(op)
            .arg(json)
            .arg(status_only)
            .arg(self.stream_limits.0)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(self.fence_arg())
            .arg(self.stream_limits.1)
            .invoke_async(&mut con)
            .await?;
        match outcome.as_str() {
            "ok" => {
                con.acknowledge().await?;
                Ok(value)
            }
            "fenced" => Err(StoreError::Fenced {
                term: self.fence.unwrap_or(0),
                newest: value,
            }),
            "exists" => Err(StoreError::AlreadyExists(ObjectRef::of::<T>(name))),
            "notfound" => Err(StoreError::NotFound(ObjectRef::of::<T>(name))),
            _ => Err(StoreError::Conflict {
                name: ObjectRef::of::<T>(name),
                expected: mode_arg.to_string(),
                current: value,
            }),
        }
    }

    /// Store a new object. Sets uid, generation 1 and creationTimestamp; drops any status.
    pub async fn create(&self, object: &T) -> Result<T, StoreError> {
        let mut s = object.clone();
        let m = s.meta_mut();
        m.uid = Some(uuid::Uuid::new_v4().to_string());
        m.generation = Some(1);
        m.creation_timestamp = Some(Utc::now());
        *s.status_mut() = None;
        let name = s.meta().name.clone();
        let rv = self
            .write(&name, Mode::Create, WriteKind::Upsert(&Self::encode(&s)))
            .await?;
        s.meta_mut().resource_version = Some(rv);
        Ok(s)
    }

    /// The stored session and its version, which must equal `expected` when one is given.
    async fn current_at(
        &self,
        name: &str,
        expected: Option<&str>,
    ) -> Result<(T, String), StoreError> {
        let current = self
            .get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(ObjectRef::of::<T>(name)))?;
        let current_rv = current.meta().resource_version.clone().unwrap_or_default();
        match expected {
            Some(want) if want != current_rv => Err(StoreError::Conflict {
                name: ObjectRef::of::<T>(name),
                expected: want.to_string(),
                current: current_rv,
            }),
            _ => Ok((current, current_rv)),
        }
    }

    /// Replace a session's metadata (labels, annotations) and spec. The precondition is
    /// `session.metadata.resourceVersion`, or the current version when it is unset
    /// (last write wins, still atomic). uid, creationTimestamp and status are kept;
    /// generation is bumped when the spec changed. A no-op update writes nothing.
    pub async fn update(&self, object: &T) -> Result<T, StoreError> {
        let name = object.meta().name.as_str();
        let (mut current, current_rv) = self
            .current_at(name, object.meta().resource_version.as_deref())
            .await?;
        let expected = current_rv.clone();
        let mut next = object.clone();
        let generation = current.meta().generation.unwrap_or(0);
        let moved = i64::from(next.differs(&current));
        {
            let (c, n) = (current.meta(), next.meta_mut());
            n.uid = c.uid.clone();
            n.creation_timestamp = c.creation_timestamp;
            n.resource_version = Some(current_rv.clone());
            n.generation = Some(generation + moved);
        }
        *next.status_mut() = current.status_mut().clone();
        if next == current {
            return Ok(current);
        }
        let rv = self
            .write(
                name,
                Mode::Expect(&expected),
                WriteKind::Upsert(&Self::encode(&next)),
            )
            .await?;
        next.meta_mut().resource_version = Some(rv);
        Ok(next)
    }

    /// Replace a session's status, if it is still at `resource_version`.
    pub async fn update_status(
        &self,
        name: &str,
        resource_version: &str,
        status: &T::Status,
    ) -> Result<T, StoreError> {
        let (mut current, _) = self.current_at(name, Some(resource_version)).await?;
        *current.status_mut() = Some(status.clone());
        let rv = self
            .write(
                name,
                Mode::Expect(resource_version),
                WriteKind::UpsertStatusOnly(&Self::encode(&current)),
            )
            .await?;
        current.meta_mut().resource_version = Some(rv);
        Ok(current)
    }

    /// Delete an object, if it is at `resource_version` (any version when `None`). Returns the
    /// deleted object.
    pub async fn delete(
        &self,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<T, StoreError> {
        let current = self
            .get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(ObjectRef::of::<T>(name)))?;
        let mode = match resource_version {
            Some(rv) => Mode::Expect(rv),
            None => Mode::Any,
        };
        self.write(name, mode, WriteKind::Delete).await?;
        Ok(current)
    }

    /// Delete a stored object without decoding it (one this build cannot read), if it is at
    /// `resource_version` (any version when `None`).
    pub async fn delete_unreadable(
        &self,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let mode = match resource_version {
            Some(rv) => Mode::Expect(rv),
            None => Mode::Any,
        };
        self.write(name, mode, WriteKind::Delete).await?;
        Ok(())
    }

    /// Append an event to the session's log (kept for `describe`) — only while the session
    /// exists, atomically, so a reconcile that races a delete never leaves a log behind.
    pub async fn record_event(&self, name: &str, event: &SessionEvent) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let json = serde_json::to_string(event).unwrap_or_default();
        let (outcome, newest): (String, String) = self
            .record
            .key(&self.keys.objects)
            .key(self.log_key(name))
            .key(self.term_key())
            .arg(name)
            .arg(json)
            .arg(LOG_LEN)
            .arg(self.fence_arg())
            .invoke_async(&mut con)
            .await?;
        self.fenced_outcome(&outcome, newest)
    }

    fn spec_files_key(&self) -> String {
        format!("{}:specfiles", self.keys.prefix)
    }

    /// Record the current problem of a specs-directory file (an invalid file, a conflict
    /// with a session of another source), keyed by its source (`file:<path>`), or clear it
    /// with `None`. Kept in the hash `<p>:specfiles` until the file is fixed or removed.
    pub async fn set_spec_file_problem(
        &self,
        source: &str,
        problem: Option<&SessionEvent>,
    ) -> Result<(), StoreError> {
        let json = problem.map(|p| serde_json::to_string(p).unwrap_or_default());
        self.set_field(&self.spec_files_key(), source, json.as_deref())
            .await
    }

    /// Every specs-directory file with a current problem, by source (`file:<path>`).
    pub async fn spec_file_problems(
        &self,
    ) -> Result<std::collections::BTreeMap<String, SessionEvent>, StoreError> {
        let mut con = self.con.clone();
        let raw: HashMap<String, String> = con.hgetall(self.spec_files_key()).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|e| (k, e)))
            .collect())
    }

    /// The session's recent events, oldest first.
    pub async fn events(&self, name: &str) -> Result<Vec<SessionEvent>, StoreError> {
        let mut con = self.con.clone();
        let raw: Vec<String> = con.lrange(self.log_key(name), 0, LOG_LEN - 1).await?;
        let mut out: Vec<SessionEvent> = raw
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Start watching changes after `revision` (as returned by [`Store::list`] or carried in a
    /// resourceVersion) of the store as it is now. See [`Store::watch_from`].
    pub async fn watch(&self, revision: u64) -> Result<Watch<T>, StoreError> {
        let identity = self.identity().await?;
        self.watch_from(revision, &identity).await
    }

    /// Start watching changes after `revision` of the store whose identity is `identity` (both
    /// as returned by [`Store::list`]). The watch fails with [`StoreError::Reset`] as soon as
    /// the store's identity changes or its revision goes below `revision`.
    pub async fn watch_from(&self, revision: u64, identity: &str) -> Result<Watch<T>, StoreError> {
        let (client, primary) = self.con.primary_client();
        let con = client
            .get_multiplexed_async_connection_with_config(&watch_config())
            .await?;
        let mut w = Watch {
            con,
            primary,
            follow: self.con.follows_failovers().then(|| {
                Box::new(Following {
                    conn: self.con.clone(),
                    stale: None,
                    tip: None,
                })
            }),
            stream: self.keys.stream.clone(),
            id_key: self.keys.id.clone(),
            rv_key: self.keys.rv.clone(),
            identity: identity.to_string(),
            last: revision,
            kind: std::marker::PhantomData,
        };
        if w.follow.is_some() && revision > 0 {
            let (tip, _, _) = w.at_position().await?;
            if let Some(f) = w.follow.as_mut() {
                f.tip = tip;
            }
        }
        Ok(w)
    }
}

/// The dedicated connection of a watch: no response timeout (it blocks in `XREAD`).
fn watch_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
}

/// How long a watch that follows Sentinel failovers waits for a primary to read from again
/// before it gives up (and its caller relists). Longer than Sentinel's default failover
/// timeout (3 min).
const FOLLOW_WAIT: Duration = Duration::from_secs(300);

/// A broken or stale connection (not a refusal by Redis).
fn connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// What identifies a stream entry's content: another store's entry under the same id
/// (history that diverged in a failover) differs.
fn fingerprint(map: &HashMap<String, Value>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for k in ["type", "name", "status", "object"] {
        match map.get(k) {
            Some(Value::BulkString(b)) => b.hash(&mut h),
            Some(Value::SimpleString(s)) => s.as_bytes().hash(&mut h),
            _ => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

/// A position in the change stream. [`Watch::next_batch`] blocks until changes arrive.
///
/// With Sentinel ([`Conn::follows_failovers`]) a watch survives a failover: when its
/// connection breaks or the primary changes, it reconnects to the (new) primary — waiting up
/// to five minutes for one — and goes on from its position, after checking that the store there
/// is the same one, not behind the position, with the same entry at the position. A new
/// primary that lacks writes the watch has seen (asynchronous replication) is a
/// [`StoreError::Reset`] under the same identity: the controller's rollback hold.
pub struct Watch<T = Session> {
    con: MultiplexedConnection,
    /// Fires when a Sentinel failover moved the primary: `con` is then stale.
    primary: PrimaryChanges,
    /// Set when the watch follows failovers (Sentinel) instead of failing.
    follow: Option<Box<Following>>,
    stream: String,
    id_key: String,
    rv_key: String,
    identity: String,
    last: u64,
    kind: std::marker::PhantomData<fn() -> T>,
}

/// The state of a watch that follows failovers.
struct Following {
    /// The store's connection: where the primary is now.
    conn: Conn,
    /// Since when the watch's connection is broken or on an old primary.
    stale: Option<Instant>,
    /// The fingerprint of the entry at the position, when known.
    tip: Option<u64>,
}

impl<T: Object> Watch<T> {
    /// The revision of the last event returned.
    pub fn revision(&self) -> u64 {
        self.last
    }

    /// The fingerprint of the entry at the position (if the stream still has it), the
    /// identity and the revision, in one round trip.
    async fn at_position(&mut self) -> Result<(Option<u64>, String, u64), StoreError> {
        let id = format!("{}-0", self.last);
        let (range, identity, rv): (StreamRangeReply, Option<String>, Option<u64>) = redis::pipe()
            .xrange(&self.stream, &id, &id)
            .get(&self.id_key)
            .get(&self.rv_key)
            .query_async(&mut self.con)
            .await?;
        Ok((
            range.ids.first().map(|e| fingerprint(&e.map)),
            identity.unwrap_or_default(),
            rv.unwrap_or(0),
        ))
    }

    /// Reconnect to the primary (waiting for one until `since` + [`FOLLOW_WAIT`]) and check
    /// that the stream there continues the one this watch read.
    async fn reopen(&mut self, since: Instant) -> Result<(), StoreError> {
        let Some(conn) = self.follow.as_ref().map(|f| f.conn.clone()) else {
            return Ok(());
        };
        // Never a tight loop, whatever fails below.
        tokio::time::sleep(Duration::from_millis(20)).await;
        loop {
            let (client, mut changes) = conn.primary_client();
            match client
                .get_multiplexed_async_connection_with_config(&watch_config())
                .await
            {
                Ok(con) => {
                    self.con = con;
                    self.primary = changes;
                    break;
                }
                Err(e) if since.elapsed() >= FOLLOW_WAIT => return Err(e.into()),
                Err(_) => tokio::select! {
                    () = changes.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                },
            }
        }
        let (tip, identity, rv) = self.at_position().await?;
        // An entry at the position with other content: the histories diverged at or before
        // it, so the store agrees with what this watch saw only below it.
        let seen_tip = self.follow.as_ref().and_then(|f| f.tip);
        let diverged = matches!((tip, seen_tip), (Some(now), Some(seen)) if now != seen);
        if identity != self.identity || rv < self.last || diverged {
            return Err(StoreError::Reset {
                old: self.identity.clone(),
                new: identity,
                seen: self.last,
                now: if diverged {
                    rv.min(self.last.saturating_sub(1))
                } else {
                    rv
                },
            });
        }
        Ok(())
    }

    /// Wait up to `block` for changes after the current position. Returns an empty batch on
    /// timeout, [`StoreError::Gone`] when changes were lost (trimmed or reset store).
    pub async fn next_batch(&mut self, block: Duration) -> Result<Vec<WatchEvent<T>>, StoreError> {
        if let Some(since) = self.follow.as_ref().and_then(|f| f.stale) {
            match self.reopen(since).await {
                Ok(()) => {
                    if let Some(f) = self.follow.as_mut() {
                        f.stale = None;
                    }
                }
                Err(StoreError::Redis(e))
                    if connection_error(&e) && since.elapsed() < FOLLOW_WAIT =>
                {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            }
        }
        let opts = StreamReadOptions::default()
            .block(block.as_millis().max(1) as usize)
            .count(1000);
        let id = format!("{}-0", self.last);
        // The identity and revision are read right after the entries, in one round trip: a
        // reset between the two shows as a changed identity, so entries of a new store are
        // never taken for the continuation of the old one.
        // The connection has no response timeout (XREAD blocks); this bound keeps a Redis
        // that stops answering without closing the connection from wedging the watcher.
        let mut pipe = redis::pipe();
        pipe.xread_options(&[&self.stream], &[&id], &opts)
            .get(&self.id_key)
            .get(&self.rv_key);
        let query = pipe.query_async(&mut self.con);
        let moved = self.primary.changed();
        let result: Result<(Option<StreamReadReply>, Option<String>, Option<u64>), _> = tokio::select! {
            r = tokio::time::timeout(block + Duration::from_secs(5), query) => r.unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the watch read did not answer in time",
                )))
            }),
            () = moved => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the Redis primary changed (Sentinel failover)",
            ))),
        };
        let (reply, identity, rv) = match result {
            Ok(r) => r,
            Err(e) if connection_error(&e) && self.follow.is_some() => {
                if let Some(f) = self.follow.as_mut() {
                    f.stale = Some(Instant::now());
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let identity = identity.unwrap_or_default();
        let rv = rv.unwrap_or(0);
        if identity != self.identity || rv < self.last {
            return Err(StoreError::Reset {
                old: self.identity.clone(),
                new: identity,
                seen: self.last,
                now: rv,
            });
        }
        let mut out = Vec::new();
        let Some(reply) = reply else {
            return Ok(out);
        };
        for key in reply.keys {
            for entry in key.ids {
                let revision: u64 = entry
                    .id
                    .split('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if revision != self.last + 1 {
                    return Err(StoreError::Gone(self.last));
                }
                self.last = revision;
                if let Some(f) = self.follow.as_mut() {
                    f.tip = Some(fingerprint(&entry.map));
                }
                let field = |k: &str| match entry.map.get(k) {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => String::new(),
                };
                let name = field("name");
                let kind = match field("type").as_str() {
                    "ADDED" => EventType::Added,
                    "DELETED" => EventType::Deleted,
                    _ => EventType::Modified,
                };
                let json = field("object");
                let (object, unreadable) = if json.is_empty() {
                    (None, None)
                } else {
                    match Store::<T>::decode(&name, &json, &revision.to_string()) {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e.to_string())),
                    }
                };
                out.push(WatchEvent {
                    revision,
                    kind,
                    name,
                    status_only: field("status") == "1",
                    object,
                    unreadable,
                });
            }
        }
        Ok(out)
    }
}
