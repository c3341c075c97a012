//! The composition root of `serve`: connect to Redis and Docker, publish the policy, and run
//! the controller, the specs-directory watcher, the chat service and the HTTP API until a
//! signal. [`ServeArgs`] is the one configuration struct, built once from flags and
//! environment variables (clap), and nothing below reads the environment again except the
//! Gemini client's own settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use crate::controller::{self, Controller};
use crate::domain::contract::{self, Policy, PublishedPolicy};
use crate::domain::limits::{self, flag_duration};
use crate::domain::plan::Settings;
use crate::lease::{self, Lease};
use crate::redis_conn::RedisTarget;
use crate::replica::{Leadership, Registry};
use crate::runtime::Runtime;
use crate::store::Store;

/// `serve` failures: all of them happen at start; once running, failures are handled (and
/// retried) where they happen.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A flag or variable is invalid.
    #[error("{0}")]
    Config(String),
    /// Redis could not be reached or refused a start-up command.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store error.
        #[source]
        source: crate::store::StoreError,
    },
    /// The Docker engine could not be reached.
    #[error("{what}: {source}")]
    Docker {
        /// What was being done.
        what: String,
        /// The runtime error.
        #[source]
        source: crate::runtime::RuntimeError,
    },
    /// A local file or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listen rules refused the address.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

/// The contract policy flags: they belong to `serve`, which publishes the policy they make
/// (in the store and at `GET /api/v1/policy`) so that every CLI admits with the same one.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Image allowlist, comma-separated patterns (`*` wildcard).
    #[arg(
        long,
        env = "ALLOWED_IMAGES",
        default_value = "mcp-server:*",
        value_delimiter = ','
    )]
    pub allowed_images: Vec<String>,
    /// Largest memory limit a session may ask for.
    #[arg(long, env = "MAX_MEMORY", default_value = "2Gi")]
    pub max_memory: String,
    /// Largest CPU limit a session may ask for.
    #[arg(long, env = "MAX_CPUS", default_value = "2")]
    pub max_cpus: String,
    /// Largest pids limit a session may ask for.
    #[arg(long, env = "MAX_PIDS", default_value_t = 1024)]
    pub max_pids: i64,
}

impl PolicyArgs {
    /// The contract policy these options describe; the error names the flag.
    pub fn policy(&self) -> Result<Policy, ServerError> {
        let bad = |flag: &str, e: String| ServerError::Config(format!("--{flag}: {e}"));
        let max_memory = contract::parse_memory(&crate::domain::resource::Quantity::Text(
            self.max_memory.clone(),
        ))
        .map_err(|e| bad("max-memory", e.to_string()))?;
        let max_nano_cpus = contract::parse_cpus(&crate::domain::resource::Quantity::Text(
            self.max_cpus.clone(),
        ))
        .map_err(|e| bad("max-cpus", e.to_string()))?;
        if !(limits::MIN_PIDS..=1 << 22).contains(&self.max_pids) {
            return Err(bad(
                "max-pids",
                format!("{} is outside 1..={}", self.max_pids, 1 << 22),
            ));
        }
        if max_memory < limits::MIN_MEMORY_BYTES {
            return Err(bad(
                "max-memory",
                format!("{} is below the 6Mi minimum", self.max_memory),
            ));
        }
        let allowed_images: Vec<String> = self
            .allowed_images
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if allowed_images.len() > limits::MAX_ALLOWED_IMAGES {
            return Err(bad(
                "allowed-images",
                format!("at most {} patterns", limits::MAX_ALLOWED_IMAGES),
            ));
        }
        let d = Policy::default();
        let policy = Policy {
            allowed_images,
            max_memory,
            max_nano_cpus,
            max_pids: self.max_pids,
            default_memory: d.default_memory.min(max_memory),
            default_nano_cpus: d.default_nano_cpus.min(max_nano_cpus),
            default_pids: d.default_pids.min(self.max_pids),
            ..d
        };
        policy
            .check_patterns()
            .map_err(|e| bad("allowed-images", e))?;
        Ok(policy)
    }
}

/// Everything `serve` is configured with, besides where Redis is and the instance name.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The contract policy.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Reconciles running at once, across sessions.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Period of the full resync (catches missed events and engine restarts).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "30s", value_parser = flag_duration)]
    pub resync_interval: Duration,
    /// A sandbox run at least this long resets its crash-loop backoff.
    #[arg(long, env = "STABLE_AFTER", default_value = "10s", value_parser = flag_duration)]
    pub stable_after: Duration,
    /// Largest crash-loop backoff.
    #[arg(long, env = "MAX_BACKOFF", default_value = "60s", value_parser = flag_duration)]
    pub max_backoff: Duration,
    /// Watch this directory of Session files (`*.yaml`, `*.yml`, `*.json`).
    #[arg(long, env = "SPECS_DIR")]
    pub specs_dir: Option<PathBuf>,
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// HTTP listen address (default: 0.0.0.0:PORT with a token, 127.0.0.1:PORT without).
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow listening beyond loopback without ORCHESTRATOR_TOKEN.
    #[arg(long, env = "ORCHESTRATOR_INSECURE")]
    pub insecure: bool,
    /// Most model calls in one chat turn (the function-calling loop's step limit).
    #[arg(long, env = "CHAT_MAX_STEPS", default_value_t = 8)]
    pub chat_max_steps: usize,
    /// Most turns kept in a session's chat history.
    #[arg(long, env = "CHAT_HISTORY_MAX_TURNS", default_value_t = 200)]
    pub history_max_turns: usize,
    /// Most bytes kept in a session's chat history.
    #[arg(long, env = "CHAT_HISTORY_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub history_max_bytes: usize,
    /// Timeout of one MCP request to a sandbox.
    #[arg(long, env = "MCP_CALL_TIMEOUT", default_value = "30s", value_parser = flag_duration)]
    pub mcp_call_timeout: Duration,
    /// A reconcile running longer is abandoned, counted as failed and retried.
    #[arg(long, env = "RECONCILE_TIMEOUT", default_value = "60s", value_parser = flag_duration)]
    pub reconcile_timeout: Duration,
    /// On SIGTERM, how long running reconciles and open HTTP connections may finish.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = flag_duration)]
    pub shutdown_grace: Duration,
    /// `/readyz` turns unready when work waits and no reconcile finished for this long.
    #[arg(long, env = "STALL_AFTER", default_value = "90s", value_parser = flag_duration)]
    pub stall_after: Duration,
    /// Write the store's identity to this file at start (the container entrypoint uses it
    /// to remove only this store's sandboxes on stop).
    #[arg(long, env = "STORE_ID_FILE")]
    pub store_id_file: Option<PathBuf>,
    /// Most `?watch=true` streams open at once (429 beyond).
    #[arg(long, env = "MAX_WATCHES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_watches: u32,
    /// Most `?wait=` requests waiting at once (429 beyond).
    #[arg(long, env = "MAX_WAITS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_waits: u32,
    /// Most chat turns streaming at once (429 beyond).
    #[arg(long, env = "MAX_CHATS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_chats: u32,
    /// Most MCP gateway streams open at once: clients' GET streams and requests forwarded
    /// to the leader (429 beyond).
    #[arg(long, env = "MAX_MCP_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_mcp_streams: u32,
    /// Most MCP requests in flight per session from gateway clients (a JSON-RPC error
    /// beyond; the chat's tool calls are bounded by its one turn per session).
    #[arg(long, env = "MCP_MAX_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mcp_max_in_flight: u32,
    /// Largest MCP request body through the gateway, in bytes (413 beyond).
    #[arg(long, env = "MCP_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub mcp_max_request_bytes: u32,
    /// Browser origins allowed to use the MCP gateway (`scheme://host:port`, `:*` for any
    /// port; comma-separated). A request with another `Origin` header gets 403; clients
    /// that send none (every non-browser client) are not affected.
    #[arg(long, env = "MCP_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub mcp_allowed_origins: Vec<String>,
    /// A request's headers must arrive within this, or the connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = http_timeout)]
    pub header_timeout: Duration,
    /// Each piece of a request body must arrive within this, or 408.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = http_timeout)]
    pub body_timeout: Duration,
    /// Leader lease TTL: a crashed leader is replaced about this long after its last
    /// renew (replicas renew every TTL/6 and step down after 2/3 TTL without a renew).
    #[arg(long, env = "LEASE_TTL", default_value = "3s", value_parser = lease_ttl)]
    pub lease_ttl: Duration,
    /// The URL other replicas reach this one's API at, published while it leads (standbys
    /// forward chat turns there). Default: `http://<hostname>:<port>` when listening on all
    /// interfaces, else the listen address.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
}

/// A lease TTL flag: 300 ms to 5 min.
fn lease_ttl(s: &str) -> Result<Duration, String> {
    let d = flag_duration(s)?;
    if !(Duration::from_millis(300)..=Duration::from_secs(300)).contains(&d) {
        return Err(format!("{}: must be 300ms to 5m", limits::echo(s)));
    }
    Ok(d)
}

/// Where other replicas reach this one: the explicit URL, else the host name (all
/// interfaces) or the bound address.
fn advertise(explicit: Option<&str>, bound: std::net::SocketAddr) -> Result<String, ServerError> {
    if let Some(u) = explicit {
        let url = reqwest::Url::parse(u)
            .map_err(|e| ServerError::Config(format!("--advertise-url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ServerError::Config(
                "--advertise-url: must be an http(s) URL with a host".into(),
            ));
        }
        return Ok(u.trim_end_matches('/').to_string());
    }
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if !host.is_empty() {
            return Ok(format!("http://{host}:{}", bound.port()));
        }
    }
    Ok(format!("http://{bound}"))
}

/// An HTTP timeout flag: a duration flag of at most a day.
fn http_timeout(s: &str) -> Result<Duration, String> {
    let d = flag_duration(s)?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{}: must be at most 24h", limits::echo(s)));
    }
    Ok(d)
}

/// Hide a password in a Redis URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Who is publishing: `serve@<host> pid <pid>`.
fn publisher() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("serve@{host} pid {}", std::process::id())
}

/// Run `serve` until SIGINT/SIGTERM.
pub async fn run(redis: &RedisTarget, instance: &str, a: ServeArgs) -> Result<(), ServerError> {
    let policy = a.policy.policy()?;
    if a.stall_after <= a.reconcile_timeout {
        return Err(ServerError::Config(format!(
            "--stall-after ({}) must be longer than --reconcile-timeout ({}): a reconcile \
             may legitimately run that long",
            humantime::format_duration(a.stall_after),
            humantime::format_duration(a.reconcile_timeout)
        )));
    }
    let store_err = |what: &str| {
        let what = what.to_string();
        move |source| ServerError::Store { what, source }
    };
    let docker_err = |what: &str| {
        let what = what.to_string();
        move |source| ServerError::Docker { what, source }
    };
    let store = Store::connect(redis.clone(), instance)
        .await
        .map_err(store_err(&format!("cannot connect to Redis at {redis}")))?;
    store
        .ping()
        .await
        .map_err(store_err("Redis is not answering"))?;
    info!(redis = %redis, instance = %instance, "connected to Redis");
    let metrics = crate::metrics::Metrics::new();
    let runtime = Runtime::connect(instance)
        .await
        .map_err(docker_err("cannot connect to the Docker engine"))?
        .counting(metrics.docker_calls.clone());
    runtime
        .ping()
        .await
        .map_err(docker_err("the Docker engine is not answering"))?;
    info!("connected to Docker");
    let identity = store
        .identity()
        .await
        .map_err(store_err("cannot read the store's identity"))?;
    info!(store = %identity, "store identity");
    if let Some(path) = &a.store_id_file {
        std::fs::write(path, format!("{identity}\n")).map_err(|source| ServerError::Io {
            what: format!("{}: cannot write the store identity", path.display()),
            source,
        })?;
    }
    let published = PublishedPolicy {
        policy: policy.clone(),
        publisher: publisher(),
        instance: instance.to_string(),
        published_at: chrono::Utc::now(),
    };
    let config = controller::Config {
        settings: Settings {
            instance: instance.to_string(),
            policy: policy.clone(),
            stable_after: a.stable_after,
            backoff_max: a.max_backoff,
            ..Settings::default()
        },
        concurrency: a.concurrency,
        resync_every: a.resync_interval,
        reconcile_timeout: a.reconcile_timeout,
        // A term ends (step-down or SIGTERM) with the lease still held until the running
        // reconciles are done: give them at most HANDOVER_DRAIN, so a standby takes over
        // within about a second. An aborted reconcile is planned again by the next leader.
        shutdown_grace: a.shutdown_grace.min(HANDOVER_DRAIN),
        stall_after: a.stall_after,
        store_id_file: a.store_id_file.clone(),
        ..controller::Config::default()
    };
    let token = std::env::var("ORCHESTRATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let addr = crate::http::listen_addr(a.listen, a.port, token.is_some(), a.insecure)?;
    let io_err = |what: String| move |source| ServerError::Io { what, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io_err(format!("cannot listen on {addr}")))?;
    let bound = listener
        .local_addr()
        .map_err(io_err("the listening socket".into()))?;
    if token.is_none() {
        if bound.ip().is_loopback() {
            tracing::warn!(addr = %bound, "no ORCHESTRATOR_TOKEN: the API is unauthenticated and listens on loopback only");
        } else {
            tracing::warn!(addr = %bound, "no ORCHESTRATOR_TOKEN and --insecure: the API is unauthenticated on a non-loopback address");
        }
    }
    info!(addr = %bound, "HTTP API listening");
    let advertise = advertise(a.advertise_url.as_deref(), bound)?;
    let timings = crate::lease::Timings::from_ttl(a.lease_ttl)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let replica = crate::replica::replica_id();
    info!(replica = %replica, advertise = %advertise, "replica");
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
    let leadership = Leadership::new(&replica, store.clone(), leader_rx.clone());
    // The elector runs until the leader's work has stopped, then releases the lease.
    let release = CancellationToken::new();
    let elector = tokio::spawn(crate::supervise::supervise(
        metrics.clone(),
        "elector",
        release.clone(),
        {
            let (lease, tx, release) = (Lease::new(&store, &replica), leader_tx, release.clone());
            move || {
                let (lease, tx, release) = (lease.clone(), tx.clone(), release.clone());
                async move {
                    let run = AssertUnwindSafe(lease::run(lease, timings, tx.clone(), release))
                        .catch_unwind()
                        .await;
                    // Whatever happened, this replica does not lead until the elector says so again.
                    tx.send_replace(None);
                    match run {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "the elector stopped"),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            }
        },
    ));
    let registry = Registry::new(&store, &replica);
    let beats = CancellationToken::new();
    let beating = tokio::spawn({
        let (registry, beats) = (registry.clone(), beats.clone());
        async move { registry.beat(beats).await }
    });
    let gemini = crate::chat::gemini::Gemini::new(crate::chat::gemini::GeminiConfig::from_env());
    if !gemini.has_api_key() {
        tracing::warn!("GOOGLE_API_KEY is not set: chat requests will be refused");
    }
    let pool = Arc::new(
        crate::mcp::upstream::McpPool::new(runtime.clone(), a.mcp_call_timeout)
            .with_max_in_flight(a.mcp_max_in_flight as usize)
            .with_gauges(metrics.mcp_clients.clone(), metrics.mcp_in_flight.clone())
            .with_gate({
                let leadership = leadership.clone();
                move || leadership.is_leader()
            }),
    );
    let gateway = Arc::new(crate::mcp::gateway::Gateway::new(
        store.clone(),
        pool.clone(),
        metrics.clone(),
        crate::mcp::gateway::GatewayConfig {
            max_request_bytes: a.mcp_max_request_bytes as usize,
            allowed_origins: a.mcp_allowed_origins.clone(),
            loopback_hosts_only: token.is_none() && addr.ip().is_loopback(),
        },
        shutdown.clone(),
    ));
    let chat = Arc::new(crate::chat::service::ChatService::new(
        store.clone(),
        pool,
        gemini,
        crate::chat::history::History::new(
            store.clone(),
            crate::chat::history::Limits {
                max_turns: a.history_max_turns.max(1),
                max_bytes: a.history_max_bytes.max(1),
            },
        ),
        crate::chat::service::ChatConfig {
            max_steps: a.chat_max_steps.max(1),
        },
    ));
    let state = crate::http::AppState::new(
        store.clone(),
        runtime.clone(),
        policy.clone(),
        token,
        metrics.clone(),
        Some(leadership.clone()),
        shutdown.clone(),
        crate::http::Limits {
            max_watches: a.max_watches as usize,
            max_waits: a.max_waits as usize,
            max_chats: a.max_chats as usize,
            max_mcp_streams: a.max_mcp_streams as usize,
            header_read_timeout: a.header_timeout,
            body_read_timeout: a.body_timeout,
            shutdown_grace: a.shutdown_grace,
        },
    )
    .with_published_policy(published.clone())
    .with_chat(chat.clone())
    .with_gateway(gateway);
    let http = tokio::spawn(crate::http::serve(listener, state, shutdown.clone()));
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down");
            shutdown.cancel();
        })
    };
    let leader = LeaderWork {
        store: store.clone(),
        runtime,
        config,
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        chat,
        policy,
        published,
        specs_dir: a.specs_dir.clone(),
        advertise,
        identity: Arc::new(std::sync::Mutex::new(identity)),
    };
    crate::replica::lead(leadership, metrics, shutdown.clone(), move |term, stop| {
        leader.clone().run(term, stop)
    })
    .await;
    release.cancel();
    if let Err(e) = elector.await {
        tracing::error!(error = %e, "the elector task failed");
    }
    beats.cancel();
    let _ = beating.await;
    // The image's stop hook removes the sandboxes of this identity: the current one, which
    // may have changed while another replica led.
    if let (Some(path), Ok(id)) = (&a.store_id_file, store.identity().await)
        && let Err(e) = std::fs::write(path, format!("{id}\n"))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the store identity");
    }
    match registry.leave().await {
        Ok(others) => {
            info!(others, "left the replica set");
            if let Some(path) = &a.store_id_file {
                let file = replicas_file(path);
                if let Err(e) = std::fs::write(&file, format!("{others}\n")) {
                    tracing::warn!(path = %file.display(), error = %e, "cannot write the replica count");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot leave the replica set"),
    }
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    signals.abort();
    Ok(())
}

/// How long a leader whose term ends lets running reconciles finish before it aborts them
/// and releases the lease.
const HANDOVER_DRAIN: Duration = Duration::from_millis(500);

/// Where `serve` writes, on a clean stop, how many other replicas are still live (next to
/// the store identity file): the container entrypoint removes the instance's sandboxes
/// only when that is 0, so a restarting replica never takes its peers' sandboxes away.
pub fn replicas_file(store_id_file: &std::path::Path) -> PathBuf {
    let mut name = store_id_file.as_os_str().to_os_string();
    name.push(".replicas");
    PathBuf::from(name)
}

/// Everything the leader's work needs; cloned for every term.
#[derive(Clone)]
struct LeaderWork {
    store: Store,
    runtime: Runtime,
    config: controller::Config,
    metrics: crate::metrics::Metrics,
    leadership: Leadership,
    chat: Arc<crate::chat::service::ChatService>,
    policy: Policy,
    published: PublishedPolicy,
    specs_dir: Option<PathBuf>,
    advertise: String,
    /// The store identity as last known (read at start, then kept across terms).
    identity: Arc<std::sync::Mutex<String>>,
}

impl LeaderWork {
    /// Lead in `term` until `stop`: publish the address and the policy, run the controller
    /// and the specs directory with the store fenced by the term, then let go of every
    /// sandbox connection.
    async fn run(self, term: u64, stop: CancellationToken) {
        let fenced = self.store.fenced(term);
        // The moment the term ends, let go of every sandbox connection (the next leader
        // attaches); the pool refuses new attaches from then on (its gate).
        let closer = tokio::spawn({
            let (chat, stop) = (self.chat.clone(), stop.clone());
            async move {
                stop.cancelled().await;
                chat.close_connections();
            }
        });
        // Published now and again every few seconds while leading (a Redis failover may
        // lose it); fenced, so a deposed leader cannot overwrite its successor's.
        let publisher = tokio::spawn({
            let (leadership, url, fenced, published, stop) = (
                self.leadership.clone(),
                self.advertise.clone(),
                fenced.clone(),
                self.published.clone(),
                stop.clone(),
            );
            async move {
                let mut policy_done = false;
                loop {
                    if let Err(e) = leadership.publish_address(term, Some(&url)).await {
                        tracing::warn!(error = %e, "cannot publish the leader's address");
                    }
                    if !policy_done {
                        match fenced.publish_policy(&published).await {
                            Ok(()) => {
                                info!(images = ?published.policy.allowed_images, "policy published for CLIs");
                                policy_done = true;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot publish the policy"),
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        });
        let ctrl = Controller::new(
            fenced.clone(),
            self.runtime.clone(),
            self.config.clone(),
            self.metrics.clone(),
            Some(controller::Term {
                term,
                leader: self.leadership.watch(),
            }),
        );
        let known = self.identity.lock().map(|i| i.clone()).unwrap_or_default();
        let ctrl = ctrl.knowing_store(&known);
        let handle = ctrl.handle();
        self.leadership.set_controller(Some(handle.clone()));
        let specs = self.specs_dir.clone().map(|dir| {
            info!(dir = %dir.display(), "watching the specs directory");
            let (store, policy, stop) = (fenced.clone(), self.policy.clone(), stop.clone());
            tokio::spawn(crate::supervise::supervise(
                self.metrics.clone(),
                "specs-dir",
                stop.clone(),
                move || crate::specs::run(dir.clone(), store.clone(), policy.clone(), stop.clone()),
            ))
        });
        ctrl.run(stop.clone()).await;
        if let Ok(mut i) = self.identity.lock() {
            *i = handle.store_identity();
        }
        if let Some(specs) = specs {
            let _ = specs.await;
        }
        let _ = publisher.await;
        let _ = closer.await;
        self.leadership.set_controller(None);
        let _ = self.leadership.publish_address(term, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@host:6379"), "redis://***@host:6379");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
