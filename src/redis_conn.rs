//! Redis connections that follow the primary: one Redis at a URL, or Redis Sentinel.
//!
//! [`RedisTarget`] says where Redis is (a URL, or sentinels and the name of the master they
//! monitor) and how writes are made durable ([`WaitReplicas`]). [`Conn`] is the command
//! connection every module uses: it implements [`redis::aio::ConnectionLike`], so
//! `query_async`, `invoke_async` and `AsyncCommands` work on it as on a `ConnectionManager`.
//!
//! ## A URL
//! A `ConnectionManager` (connect 2 s, response 5 s, reconnect delay at most 2 s).
//!
//! ## Sentinel
//! **Finding the primary.** Every sentinel is asked `SENTINEL MASTER <name>` at once and only
//! the answers with the highest config epoch (the newest failover) count: if one of them is
//! failing the master over right now there is no primary to use yet; otherwise the node
//! they name (unless they flag it down) must say `ROLE` master. Not redis-rs' resolver: it
//! takes the *first* sentinel in list order whose master passes the role check, and after a
//! `SENTINEL FAILOVER` the old primary goes on answering `master` — and accepting writes,
//! which the new primary never sees — for about ten seconds until Sentinel demotes it, while
//! a sentinel that has not heard of the switch yet still names it.
//!
//! **Following it.** A task per sentinel subscribes to its `+switch-master`, `+try-failover`
//! and `-failover-abort-*` events (pinged every 5 s, resubscribed with backoff); a command
//! that fails with a connection error, a timeout, `READONLY` or `MASTERDOWN` counts as
//! well. Both only *request* a refresh: one refresher task asks the sentinels again, one
//! refresh at a time, requests coalesced, at most one every 250 ms. While a failover is in
//! progress commands fail at once (a write sent then could land on the primary being
//! replaced after its replica was promoted, and be lost); when the primary moved, later
//! commands go to the new one (a new `ConnectionManager`), a command still in flight on the
//! old one fails (rather than wait out the old manager's reconnects to a dead node), and
//! [`PrimaryChanges`] fires, so a dedicated connection (the store's blocking `XREAD`) is
//! reopened. A failed command's error goes back to its caller: callers retry (reconciles
//! with backoff, the store watch reconnects, the lease elector on its next round).
//!
//! ## Acknowledged writes (`WAIT`)
//! With [`WaitReplicas`] set, a writer takes [`Conn::for_write`] — a connection of its own
//! that never reconnects by itself, so the `WAIT` sent after the write by
//! [`Conn::acknowledge`] runs on the very connection the write did — and gets
//! [`ConnError::NotAcknowledged`] when fewer replicas acknowledged it in time. Redis blocks a
//! connection during `WAIT`; on the shared command connection that would stall every other
//! command of the process (lease renewals included), hence the separate connections (a few
//! are kept for reuse).

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsCertificates, Value,
};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

/// Connecting to a Redis node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An answer from a Redis node.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between reconnect attempts of a `ConnectionManager`.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Connecting to a sentinel, and its answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time between two refreshes of the primary.
const REFRESH_COOLDOWN: Duration = Duration::from_millis(250);
/// How often a `+switch-master` subscription is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Resubscribing to a sentinel waits this long at first, doubling to [`MAX_RESUBSCRIBE_DELAY`].
const MIN_RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);
/// See [`MIN_RESUBSCRIBE_DELAY`].
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);
/// Sentinel's own default port, used when an address leaves the port out.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// Write connections kept for reuse when [`WaitReplicas`] is on.
const SPARE_WRITERS: usize = 8;
/// The longest `WAIT` timeout accepted.
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest CA bundle accepted (`--redis-tls-ca`).
pub const MAX_CA_BYTES: usize = 1 << 20;

/// Connection failures.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The settings do not describe a usable target (a bad address, a flag that does not
    /// apply).
    #[error("{0}")]
    Config(String),
    /// Redis or a sentinel could not be reached, or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Fewer replicas than required acknowledged a write within the timeout.
    #[error(
        "the write was acknowledged by {acknowledged} of the {wanted} replicas required within \
         {}: it may still have been applied, and a failover may lose it",
        humantime::format_duration(*timeout)
    )]
    NotAcknowledged {
        /// Replicas required.
        wanted: u32,
        /// Replicas that acknowledged.
        acknowledged: u32,
        /// How long the write waited.
        timeout: Duration,
    },
}

/// A password: never printed (`Debug` and `Display` show `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a password.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Secret, Infallible> {
        Ok(Secret(s.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How many replicas must acknowledge each store write (Redis `WAIT`), and for how long a
/// write waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// Replicas that must acknowledge (at least 1).
    pub replicas: u32,
    /// How long to wait for them (1 ms to [`MAX_WAIT_TIMEOUT`]).
    pub timeout: Duration,
}

/// Where Redis is, how to authenticate, and whether writes wait for replicas. `Display`
/// never shows a password.
#[derive(Clone)]
pub struct RedisTarget {
    endpoint: Endpoint,
    /// The data nodes' password (overrides a URL's).
    password: Option<Secret>,
    /// The database (overrides a URL's).
    db: Option<i64>,
    /// A PEM CA bundle to verify TLS certificates with, instead of the system's roots.
    tls_ca: Option<Arc<Vec<u8>>>,
    wait: Option<WaitReplicas>,
}

#[derive(Clone)]
enum Endpoint {
    Url(String),
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        password: Option<Secret>,
        tls: bool,
    },
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> RedisTarget {
        RedisTarget::url(url)
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> RedisTarget {
        RedisTarget::url(url)
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> RedisTarget {
        RedisTarget::url(url.as_str())
    }
}

impl RedisTarget {
    /// One Redis at `url` (`redis://`, `rediss://`, `unix://`; see redis-rs for the form).
    pub fn url(url: impl Into<String>) -> RedisTarget {
        RedisTarget {
            endpoint: Endpoint::Url(url.into()),
            password: None,
            db: None,
            tls_ca: None,
            wait: None,
        }
    }

    /// Redis Sentinel: `sentinels` is `host:port,host:port,...` (the port defaults to
    /// 26379; IPv6 as `[::1]:26379`), `master` the name the sentinels monitor the primary
    /// under.
    pub fn sentinel(sentinels: &str, master: &str) -> Result<RedisTarget, ConnError> {
        let master = master.trim();
        if master.is_empty() || master.len() > 256 || master.chars().any(char::is_whitespace) {
            return Err(ConnError::Config(format!(
                "the master name {} must be 1 to 256 characters without spaces",
                crate::domain::limits::echo(master)
            )));
        }
        Ok(RedisTarget {
            endpoint: Endpoint::Sentinel {
                sentinels: parse_sentinels(sentinels)?,
                master: master.to_string(),
                password: None,
                tls: false,
            },
            password: None,
            db: None,
            tls_ca: None,
            wait: None,
        })
    }

    /// Passwords: of the Redis nodes (overrides one in a URL), and of the sentinels
    /// (Sentinel mode only).
    pub fn with_passwords(
        mut self,
        password: Option<Secret>,
        sentinel_password: Option<Secret>,
    ) -> Result<RedisTarget, ConnError> {
        self.password = password;
        match (&mut self.endpoint, sentinel_password) {
            (_, None) => {}
            (Endpoint::Sentinel { password, .. }, Some(p)) => *password = Some(p),
            (Endpoint::Url(_), Some(_)) => {
                return Err(ConnError::Config(
                    "a sentinel password needs sentinels (--redis-sentinels)".into(),
                ));
            }
        }
        Ok(self)
    }

    /// The database number (overrides one in a URL).
    pub fn with_db(mut self, db: Option<i64>) -> Result<RedisTarget, ConnError> {
        if let Some(n) = db
            && !(0..=1_000_000).contains(&n)
        {
            return Err(ConnError::Config(format!(
                "the database number {n} is out of range"
            )));
        }
        self.db = db;
        Ok(self)
    }

    /// TLS: `tls` turns it on for the sentinels and the Redis nodes (Sentinel mode; a URL
    /// says `rediss://` instead); `ca_pem` is a PEM bundle of the CA(s) to trust instead of
    /// the system's roots.
    pub fn with_tls(
        mut self,
        tls: bool,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<RedisTarget, ConnError> {
        let on = match &mut self.endpoint {
            Endpoint::Sentinel { tls: t, .. } => {
                *t = tls;
                tls
            }
            Endpoint::Url(url) => {
                let secure = url.starts_with("rediss://") || url.starts_with("valkeys://");
                if tls && !secure {
                    return Err(ConnError::Config(
                        "TLS to one Redis is asked for with a rediss:// URL".into(),
                    ));
                }
                secure
            }
        };
        if let Some(pem) = ca_pem {
            if !on {
                return Err(ConnError::Config(
                    "a CA bundle needs TLS (a rediss:// URL, or --redis-tls with sentinels)".into(),
                ));
            }
            if pem.len() > MAX_CA_BYTES {
                return Err(ConnError::Config(format!(
                    "the CA bundle is larger than {MAX_CA_BYTES} bytes"
                )));
            }
            self.tls_ca = Some(Arc::new(pem));
        }
        Ok(self)
    }

    /// Make every store write wait for `replicas` acknowledgements (0: do not wait).
    pub fn with_wait(mut self, replicas: u32, timeout: Duration) -> Result<RedisTarget, ConnError> {
        if replicas == 0 {
            self.wait = None;
            return Ok(self);
        }
        if timeout.is_zero() || timeout > MAX_WAIT_TIMEOUT {
            return Err(ConnError::Config(format!(
                "the wait timeout must be between 1ms and {}",
                humantime::format_duration(MAX_WAIT_TIMEOUT)
            )));
        }
        self.wait = Some(WaitReplicas { replicas, timeout });
        Ok(self)
    }

    /// The acknowledgements every store write waits for, if any.
    pub fn wait(&self) -> Option<WaitReplicas> {
        self.wait
    }

    /// TLS certificates to build clients with, when a CA bundle was given.
    fn certificates(&self) -> Option<TlsCertificates> {
        self.tls_ca.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.as_ref().clone()),
        })
    }

    /// A client for one Redis data node (`host:port` from a sentinel).
    fn node_client(&self, host: &str, port: u16) -> Result<Client, RedisError> {
        let tls = matches!(self.endpoint, Endpoint::Sentinel { tls: true, .. });
        let mut redis = redis::RedisConnectionInfo::default().set_db(self.db.unwrap_or(0));
        if let Some(p) = &self.password {
            redis = redis.set_password(p.expose());
        }
        let info = addr(host, port, tls)
            .into_connection_info()?
            .set_redis_settings(redis);
        self.client(info, tls)
    }

    /// A client for one sentinel.
    fn sentinel_client(&self, host: &str, port: u16) -> Result<Client, RedisError> {
        let (tls, password) = match &self.endpoint {
            Endpoint::Sentinel { tls, password, .. } => (*tls, password.as_ref()),
            Endpoint::Url(_) => (false, None),
        };
        let mut redis = redis::RedisConnectionInfo::default();
        if let Some(p) = password {
            redis = redis.set_password(p.expose());
        }
        let info = addr(host, port, tls)
            .into_connection_info()?
            .set_redis_settings(redis);
        self.client(info, tls)
    }

    /// The client of a URL target.
    fn url_client(&self, url: &str) -> Result<Client, RedisError> {
        let info = url.into_connection_info()?;
        let mut redis = info.redis_settings().clone();
        if let Some(p) = &self.password {
            redis = redis.set_password(p.expose());
        }
        if let Some(db) = self.db {
            redis = redis.set_db(db);
        }
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        self.client(info.set_redis_settings(redis), tls)
    }

    fn client(&self, info: ConnectionInfo, tls: bool) -> Result<Client, RedisError> {
        match (tls, self.certificates()) {
            (true, Some(certs)) => Client::build_with_tls(info, certs),
            _ => Client::open(info),
        }
    }
}

fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    }
}

/// `host:port,host:port` → addresses; the port defaults to 26379, IPv6 is `[addr]:port`.
fn parse_sentinels(s: &str) -> Result<Vec<(String, u16)>, ConnError> {
    let bad = |item: &str, why: &str| {
        ConnError::Config(format!(
            "bad sentinel address {}: {why} (expected host:port,host:port)",
            crate::domain::limits::echo(item)
        ))
    };
    let mut out: Vec<(String, u16)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| bad(item, "an unclosed '['"))?;
            match tail.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if tail.is_empty() => (h, None),
                None => return Err(bad(item, "text after ']'")),
            }
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(bad(item, "an IPv6 address needs brackets")),
                None => (item, None),
            }
        };
        if host.is_empty() || host.len() > 253 || host.chars().any(char::is_whitespace) {
            return Err(bad(item, "no host"));
        }
        let port = match port {
            None => DEFAULT_SENTINEL_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(item, "the port is not a number from 1 to 65535")),
            },
        };
        if !out.iter().any(|(h, p)| h == host && *p == port) {
            out.push((host.to_string(), port));
        }
    }
    if out.is_empty() {
        return Err(ConnError::Config("no sentinel addresses given".into()));
    }
    if out.len() > 64 {
        return Err(ConnError::Config("more than 64 sentinel addresses".into()));
    }
    Ok(out)
}

/// Hide the password of a Redis URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Url(url) => write!(f, "{}", redact_url(url))?,
            Endpoint::Sentinel {
                sentinels,
                master,
                tls,
                ..
            } => {
                let list: Vec<String> = sentinels
                    .iter()
                    .map(|(h, p)| {
                        if h.contains(':') {
                            format!("[{h}]:{p}")
                        } else {
                            format!("{h}:{p}")
                        }
                    })
                    .collect();
                write!(f, "sentinel master {master:?} via {}", list.join(","))?;
                if *tls {
                    f.write_str(" (TLS)")?;
                }
            }
        }
        if let Some(db) = self.db {
            write!(f, " db {db}")?;
        }
        if let Some(w) = self.wait {
            write!(
                f,
                " (writes wait for {} replica(s), {})",
                w.replicas,
                humantime::format_duration(w.timeout)
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_max_delay(MAX_RECONNECT_DELAY)
}

/// The Redis command connection: cheap to clone (clones share it), reconnects by itself,
/// and with Sentinel follows the primary (see the module documentation).
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
    lane: Lane,
}

#[derive(Clone)]
enum Lane {
    /// The shared, reconnecting command connection.
    Shared,
    /// A connection of its own to the primary of `epoch`, never reconnected (for a write
    /// followed by `WAIT`).
    Pinned {
        con: MultiplexedConnection,
        epoch: u64,
    },
}

struct Shared {
    target: RedisTarget,
    primary: RwLock<Primary>,
    changes: watch::Sender<u64>,
    spare: Mutex<Vec<(u64, MultiplexedConnection)>>,
    /// Wakes the refresher (Sentinel only).
    wake: Option<Arc<Notify>>,
    /// The refresher and the subscribers, aborted when the last `Conn` goes.
    tasks: Vec<AbortHandle>,
}

#[derive(Clone)]
struct Primary {
    /// Grows by one each time the primary changes.
    epoch: u64,
    /// A sentinel reports a failover of this primary in progress: commands fail at once
    /// (writes sent now could land on a primary about to be replaced, and be lost).
    paused: bool,
    /// `host:port` of the primary (Sentinel), or the redacted URL.
    addr: String,
    client: Client,
    manager: ConnectionManager,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves when the primary changes (a Sentinel failover that [`Conn`] followed). Never
/// resolves for a URL target.
pub struct PrimaryChanges(watch::Receiver<u64>);

impl PrimaryChanges {
    /// Wait until the primary changed since this was made (or since the last call returned).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // Every Conn is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

impl Conn {
    /// Connect to `target`: for Sentinel, find the primary (an error when no sentinel names
    /// a reachable one) and start following it.
    pub async fn connect(target: &RedisTarget) -> Result<Conn, ConnError> {
        let (addr, client, sentinels) = match &target.endpoint {
            Endpoint::Url(url) => (redact_url(url), target.url_client(url)?, None),
            Endpoint::Sentinel { sentinels, .. } => {
                let (addr, client) = resolve(target).await?.ok_or_else(failing_over)?;
                (addr, client, Some(sentinels.clone()))
            }
        };
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
        let (changes, _) = watch::channel(0);
        let primary = RwLock::new(Primary {
            epoch: 0,
            paused: false,
            addr,
            client,
            manager,
        });
        let spare = Mutex::new(Vec::new());
        let Some(sentinels) = sentinels else {
            return Ok(Conn {
                shared: Arc::new(Shared {
                    target: target.clone(),
                    primary,
                    changes,
                    spare,
                    wake: None,
                    tasks: Vec::new(),
                }),
                lane: Lane::Shared,
            });
        };
        let clients = sentinels
            .iter()
            .map(|(host, port)| target.sentinel_client(host, *port))
            .collect::<Result<Vec<_>, _>>()?;
        let wake = Arc::new(Notify::new());
        let subscribers: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(subscribe(c, master_name(target), wake.clone())))
            .collect();
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let refresher = tokio::spawn(refresher(weak.clone(), wake.clone()));
            let mut tasks: Vec<AbortHandle> =
                subscribers.iter().map(|t| t.abort_handle()).collect();
            tasks.push(refresher.abort_handle());
            Shared {
                target: target.clone(),
                primary,
                changes,
                spare,
                wake: Some(wake.clone()),
                tasks,
            }
        });
        Ok(Conn {
            shared,
            lane: Lane::Shared,
        })
    }

    /// Does this connection follow Sentinel failovers (and [`PrimaryChanges`] ever fire)?
    pub fn follows_failovers(&self) -> bool {
        self.shared.wake.is_some()
    }

    /// A client for the current primary, for a dedicated connection (a blocking `XREAD`),
    /// and what tells its user that the primary changed and the connection should be
    /// reopened.
    pub fn primary_client(&self) -> (Client, PrimaryChanges) {
        // Subscribe first: a change between the two is then seen by the receiver.
        let changes = PrimaryChanges(self.shared.changes.subscribe());
        (self.shared.current().client, changes)
    }

    /// The connection for one write that [`Conn::acknowledge`] will confirm: this one when
    /// writes do not wait for replicas; otherwise a connection of its own to the primary
    /// that never reconnects by itself (reused from a small pool, or opened now).
    pub async fn for_write(&self) -> Result<Conn, ConnError> {
        if self.shared.target.wait.is_none() || matches!(self.lane, Lane::Pinned { .. }) {
            return Ok(self.clone());
        }
        let p = self.shared.current();
        let reused = {
            let mut spare = lock(&self.shared.spare);
            spare.retain(|(e, _)| *e == p.epoch);
            spare.pop()
        };
        let con = match reused {
            Some((_, con)) => con,
            None => {
                let timeout = self
                    .shared
                    .target
                    .wait
                    .map_or(Duration::ZERO, |w| w.timeout);
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT + timeout));
                match p
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(con) => con,
                    Err(e) => {
                        self.shared.inspect_error(p.epoch, &e);
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Conn {
            shared: self.shared.clone(),
            lane: Lane::Pinned {
                con,
                epoch: p.epoch,
            },
        })
    }

    /// After a write made on a [`Conn::for_write`] connection: wait until the configured
    /// number of replicas acknowledged it (`WAIT`), [`ConnError::NotAcknowledged`] when
    /// fewer did in time. Returns at once when writes do not wait for replicas.
    pub async fn acknowledge(&mut self) -> Result<(), ConnError> {
        let Some(w) = self.shared.target.wait else {
            return Ok(());
        };
        let millis = u64::try_from(w.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let n: i64 = redis::cmd("WAIT")
            .arg(w.replicas)
            .arg(millis)
            .query_async(self)
            .await?;
        if let Lane::Pinned { con, epoch } = &self.lane {
            let mut spare = lock(&self.shared.spare);
            if spare.len() < SPARE_WRITERS {
                spare.push((*epoch, con.clone()));
            }
        }
        let acknowledged = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        if acknowledged < w.replicas {
            return Err(ConnError::NotAcknowledged {
                wanted: w.replicas,
                acknowledged,
                timeout: w.timeout,
            });
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn master_name(target: &RedisTarget) -> String {
    match &target.endpoint {
        Endpoint::Sentinel { master, .. } => master.clone(),
        Endpoint::Url(_) => String::new(),
    }
}

impl Shared {
    fn current(&self) -> Primary {
        self.primary
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ask the refresher to look for the primary again when `moved` (a command sent to the
    /// primary of `epoch` failed in a way that says it may have moved) and that primary is
    /// still the current one.
    fn inspect(&self, epoch: u64, moved: bool) {
        let Some(wake) = &self.wake else { return };
        if moved && self.changes.borrow().eq(&epoch) {
            wake.notify_one();
        }
    }

    /// The primary to send a command to now and, with Sentinel, what tells that it changed
    /// while the command was in flight. Fails at once while a failover is in progress.
    fn begin(&self) -> Result<(Primary, Option<watch::Receiver<u64>>), RedisError> {
        let mut p = self.current();
        let moved = self.wake.as_ref().map(|_| self.changes.subscribe());
        if moved.as_ref().is_some_and(|rx| *rx.borrow() != p.epoch) {
            p = self.current();
        }
        if p.paused {
            self.inspect(p.epoch, true);
            return Err(failing_over());
        }
        Ok((p, moved))
    }

    fn set_paused(&self, paused: bool) {
        self.primary
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .paused = paused;
    }

    fn inspect_error(&self, epoch: u64, e: &RedisError) {
        self.inspect(epoch, error_says_moved(e));
    }

    /// Find the primary; switch to it when it is not the one in use; pause while a
    /// failover is in progress.
    async fn refresh(&self) -> Result<(), RedisError> {
        let found = resolve(&self.target).await?;
        let old = self.current();
        let Some((addr, client)) = found else {
            if !old.paused {
                tracing::warn!(primary = %old.addr, "a Sentinel failover is in progress: Redis commands fail until it ends");
                self.set_paused(true);
            }
            return Ok(());
        };
        if addr == old.addr {
            if old.paused {
                tracing::info!(primary = %addr, "the Sentinel failover ended without a switch: using the primary again");
                self.set_paused(false);
            }
            return Ok(());
        }
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
        let epoch = {
            let mut p = self
                .primary
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *p = Primary {
                epoch: p.epoch + 1,
                paused: false,
                addr: addr.clone(),
                client,
                manager,
            };
            p.epoch
        };
        lock(&self.spare).clear();
        self.changes.send_replace(epoch);
        tracing::warn!(from = %old.addr, to = %addr, "the Redis primary changed (Sentinel): following it");
        Ok(())
    }
}

/// The error of a command refused while a failover is in progress.
fn failing_over() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "a Sentinel failover is in progress; try again when it is over",
    ))
}

/// The error of a command whose primary was replaced while it was in flight (it may or
/// may not have been applied by the old one).
fn primary_changed() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "the Redis primary changed (Sentinel failover) while the command was in flight",
    ))
}

/// Run `fut`, or give up with [`primary_changed`] as soon as `moved` says the primary
/// changed: a command stuck on the old primary (reconnecting to a dead node, blocked in
/// `XREAD`) is released at the switch, and its caller retries on the new one.
async fn until_moved<T>(
    moved: Option<watch::Receiver<u64>>,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    let Some(mut rx) = moved else {
        return fut.await;
    };
    tokio::select! {
        r = fut => r,
        _ = rx.changed() => Err(primary_changed()),
    }
}

/// Does this error say that the primary may have moved (or gone)?
fn error_says_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code().is_some_and(code_says_moved)
        // A transaction aborted by a READONLY command carries it in its message.
        || e.to_string().contains("READONLY")
}

fn code_says_moved(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN")
}

fn value_says_moved(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => code_says_moved(e.code()),
        Value::Array(items) => items
            .iter()
            .any(|i| matches!(i, Value::ServerError(e) if code_says_moved(e.code()))),
        _ => false,
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (p, moved) = self.shared.begin()?;
            let (epoch, result) = match &mut self.lane {
                Lane::Shared => {
                    let mut manager = p.manager;
                    (
                        p.epoch,
                        until_moved(moved, manager.req_packed_command(cmd)).await,
                    )
                }
                Lane::Pinned { con, epoch } => {
                    if *epoch != p.epoch {
                        return Err(primary_changed());
                    }
                    (
                        *epoch,
                        until_moved(moved, con.req_packed_command(cmd)).await,
                    )
                }
            };
            let moved = match &result {
                Ok(v) => value_says_moved(v),
                Err(e) => error_says_moved(e),
            };
            self.shared.inspect(epoch, moved);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (p, moved) = self.shared.begin()?;
            let (epoch, result) = match &mut self.lane {
                Lane::Shared => {
                    let mut manager = p.manager;
                    (
                        p.epoch,
                        until_moved(moved, manager.req_packed_commands(cmd, offset, count)).await,
                    )
                }
                Lane::Pinned { con, epoch } => {
                    if *epoch != p.epoch {
                        return Err(primary_changed());
                    }
                    (
                        *epoch,
                        until_moved(moved, con.req_packed_commands(cmd, offset, count)).await,
                    )
                }
            };
            let moved = match &result {
                Ok(values) => values.iter().any(value_says_moved),
                Err(e) => error_says_moved(e),
            };
            self.shared.inspect(epoch, moved);
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.lane {
            Lane::Shared => self.shared.current().manager.get_db(),
            Lane::Pinned { con, .. } => con.get_db(),
        }
    }
}

/// One master as a sentinel sees it.
struct Seen {
    /// The sentinel flags the master neither subjectively nor objectively down.
    up: bool,
    config_epoch: u64,
    /// The sentinel is failing this master over right now.
    failing_over: bool,
    host: String,
    port: u16,
}

/// Ask one sentinel for the master.
async fn ask(target: &RedisTarget, host: &str, port: u16) -> Result<Seen, RedisError> {
    let client = target.sentinel_client(host, port)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let fields: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master_name(target))
        .query_async(&mut con)
        .await?;
    let flags = fields.get("flags").map(String::as_str).unwrap_or_default();
    let up = flags.split(',').any(|f| f == "master")
        && !flags.split(',').any(|f| f == "s_down" || f == "o_down");
    let (Some(host), Some(port)) = (
        fields.get("ip"),
        fields.get("port").and_then(|p| p.parse::<u16>().ok()),
    ) else {
        return Err(RedisError::from((
            ErrorKind::Parse,
            "a sentinel's answer has no address",
        )));
    };
    Ok(Seen {
        up,
        failing_over: flags.split(',').any(|f| f == "failover_in_progress"),
        config_epoch: fields
            .get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        host: host.clone(),
        port,
    })
}

/// Ask a node for its role (`master`, `slave`, `sentinel`).
async fn role(client: &Client) -> Result<String, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let v: Value = redis::cmd("ROLE").query_async(&mut con).await?;
    let first = match v {
        Value::Array(items) => items.into_iter().next(),
        _ => None,
    };
    Ok(match first {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Some(Value::SimpleString(s)) => s,
        _ => String::new(),
    })
}

/// Find the primary: every sentinel is asked, and only the answers with the highest config
/// epoch (the newest failover) count. `None` when one of them is failing the master over;
/// otherwise those that do not flag it down name the primary, which must say it is a
/// master.
async fn resolve(target: &RedisTarget) -> Result<Option<(String, Client)>, RedisError> {
    let Endpoint::Sentinel {
        sentinels, master, ..
    } = &target.endpoint
    else {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "not a Sentinel target",
        )));
    };
    let answers =
        futures::future::join_all(sentinels.iter().map(|(h, p)| ask(target, h, *p))).await;
    let mut last_err: Option<RedisError> = None;
    let mut seen = Vec::new();
    for a in answers {
        match a {
            Ok(s) => seen.push(s),
            Err(e) => last_err = Some(e),
        }
    }
    let newest = seen.iter().map(|s| s.config_epoch).max();
    seen.retain(|s| Some(s.config_epoch) == newest);
    if seen.iter().any(|s| s.failing_over) {
        return Ok(None);
    }
    let mut tried = HashSet::new();
    for s in seen.iter().filter(|s| s.up) {
        if !tried.insert((s.host.clone(), s.port)) {
            continue;
        }
        let client = target.node_client(&s.host, s.port)?;
        match role(&client).await {
            Ok(r) if r == "master" => {
                return Ok(Some((format!("{}:{}", s.host, s.port), client)));
            }
            Ok(r) => {
                last_err = Some(RedisError::from((
                    ErrorKind::Io,
                    "the node the sentinels name is not a primary (yet)",
                    format!("{}:{} says {r:?}", s.host, s.port),
                )));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        RedisError::from((
            ErrorKind::Io,
            "no sentinel names a primary that is up",
            master.clone(),
        ))
    }))
}

/// Refresh when woken: one at a time, wake-ups coalesced, at most one per cool-down.
async fn refresher(shared: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(s) = shared.upgrade() else { return };
        let result = tokio::time::timeout(4 * SENTINEL_TIMEOUT, s.refresh()).await;
        drop(s);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "finding the Redis primary failed"),
            Err(_) => tracing::debug!("finding the Redis primary timed out"),
        }
        tokio::time::sleep(REFRESH_COOLDOWN).await;
    }
}

/// Follow one sentinel's failover events for the master, resubscribing with backoff.
async fn subscribe(sentinel: Client, master: String, wake: Arc<Notify>) {
    let mut delay = MIN_RESUBSCRIBE_DELAY;
    let mut subscribed_before = false;
    loop {
        let e = listen(
            &sentinel,
            &master,
            &wake,
            &mut subscribed_before,
            &mut delay,
        )
        .await;
        tracing::debug!(error = %e, "sentinel subscription interrupted");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
    }
}

async fn listen(
    sentinel: &Client,
    master: &str,
    wake: &Notify,
    subscribed_before: &mut bool,
    delay: &mut Duration,
) -> RedisError {
    let timed_out = || RedisError::from((ErrorKind::Io, "the sentinel did not answer in time"));
    let pubsub = match tokio::time::timeout(SENTINEL_TIMEOUT, sentinel.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e,
        Err(_) => return timed_out(),
    };
    let (mut sink, mut stream) = pubsub.split();
    let subscribed = async {
        sink.subscribe(&["+switch-master", "+try-failover"]).await?;
        sink.psubscribe("-failover-abort-*").await
    };
    match tokio::time::timeout(SENTINEL_TIMEOUT, subscribed).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e,
        Err(_) => return timed_out(),
    }
    if *subscribed_before {
        // A switch may have happened while this subscription was down.
        wake.notify_one();
    }
    *subscribed_before = true;
    *delay = MIN_RESUBSCRIBE_DELAY;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return RedisError::from((ErrorKind::Io, "the sentinel closed the subscription"));
                };
                // `+switch-master`: `<name> <old ip> <old port> <new ip> <new port>`;
                // the others: `master <name> <ip> <port>`.
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split(' ').take(2).any(|w| w == master) {
                    tracing::info!(event = %msg.get_channel_name(), %payload, "Sentinel event");
                    wake.notify_one();
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(SENTINEL_TIMEOUT, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e,
                    Err(_) => return timed_out(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_parse_with_default_ports_and_brackets() {
        let got = parse_sentinels(" a:1, b ,[::1]:26380,[fe80::1], a:1,").unwrap();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 26379),
                ("::1".to_string(), 26380),
                ("fe80::1".to_string(), 26379),
            ]
        );
        for bad in [
            "", " , ", "a:0", "a:x", "a:70000", "::1:5", "[::1", "[::1]x", ":5",
        ] {
            let e = parse_sentinels(bad).unwrap_err().to_string();
            assert!(
                e.contains("sentinel address") || e.contains("no sentinel"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn targets_never_print_passwords() {
        let t = RedisTarget::url("redis://:hunter2@h:6379/0")
            .with_passwords(Some(Secret::new("pw")), None)
            .unwrap();
        let s = format!("{t} {t:?}");
        assert!(!s.contains("hunter2") && !s.contains("pw@"), "{s}");
        assert!(s.contains("redis://***@h:6379/0"), "{s}");
        let t = RedisTarget::sentinel("h1:1,h2:2", "mymaster")
            .unwrap()
            .with_passwords(Some(Secret::new("nodepw")), Some(Secret::new("sentpw")))
            .unwrap()
            .with_wait(1, Duration::from_millis(500))
            .unwrap();
        let s = format!("{t} {t:?}");
        assert!(!s.contains("nodepw") && !s.contains("sentpw"), "{s}");
        assert!(
            s.contains("sentinel master \"mymaster\" via h1:1,h2:2"),
            "{s}"
        );
        assert!(s.contains("1 replica(s), 500ms"), "{s}");
        assert_eq!(format!("{:?}", Secret::new("x")), "***");
    }

    #[test]
    fn options_that_do_not_apply_are_errors() {
        let url = || RedisTarget::url("redis://h");
        assert!(url().with_passwords(None, Some(Secret::new("x"))).is_err());
        assert!(url().with_tls(true, None).is_err());
        assert!(url().with_tls(false, Some(b"pem".to_vec())).is_err());
        assert!(
            RedisTarget::url("rediss://h")
                .with_tls(true, Some(b"pem".to_vec()))
                .is_ok()
        );
        assert!(url().with_db(Some(-1)).is_err());
        assert!(url().with_wait(1, Duration::ZERO).is_err());
        assert!(url().with_wait(1, Duration::from_secs(61)).is_err());
        assert_eq!(url().with_wait(0, Duration::ZERO).unwrap().wait(), None);
        assert!(RedisTarget::sentinel("h:1", "").is_err());
        assert!(RedisTarget::sentinel("h:1", "a b").is_err());
    }

    #[test]
    fn failover_signs_are_recognised() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(error_says_moved(&io));
        let readonly = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY",
        ));
        assert!(error_says_moved(&readonly));
        let other = RedisError::from((ErrorKind::Server(redis::ServerErrorKind::NoScript), "x"));
        assert!(!error_says_moved(&other));
        assert!(!value_says_moved(&Value::Okay));
    }
}
