//! The benchmark harness. Not a test: `scripts/bench` (which is `cargo bench --bench
//! orchestrator` after making sure Redis, Docker and the sandbox image are there) runs it and
//! writes BENCHMARKS.md. Everything is measured side by side in one run, on the same image,
//! the same engine and the same concurrency:
//!
//! - convergence of N sessions (apply → every status Running) against a raw bollard
//!   create+start of N containers with the very same create body, and against
//!   `docker-compose up -d` of N equivalent services;
//! - recovery (SIGKILL of the sandbox's main process → Running) against the engine's own
//!   restart policy restarting the same container after the same SIGKILL, plus what
//!   each does after a plain `docker kill`;
//! - warm pools: a session's acquire (`PUT …?wait=Running` → the answer) claiming a pool
//!   member, against a cold one and the raw engine's create+start of the same body; a burst
//!   of simultaneous acquires from a full pool against the same burst cold;
//! - idle cost at 2000 converged sessions, half with a `ttlSeconds` (CPU, RSS, Docker API
//!   calls through a counting proxy by kind, resync passes) and their Redis memory;
//! - docker-compose against the orchestrator on one changed service of 100 and on a pass
//!   with nothing to do;
//! - change latency: a Redis write → the start of the reconcile it causes;
//! - several replicas: SIGKILL of the leader → a standby leads and a new session is Running,
//!   against the same single replica restarted at once by a supervisor; SIGTERM hand-over.
//! - the MCP gateway: an `echo` tool call's round trip through `serve`'s gateway against the
//!   same client over stdio to its own `docker run -i` of the same image under the same
//!   sandbox settings (the official Python SDK's client, `tests/mcp/client.py bench`, in both
//!   protocol eras, and rmcp's client), interleaved in rounds; 50 clients at once on one
//!   session, and for reference 50 clients with a `docker run -i` each.
//!
//! Settings (environment): BENCH_SIZES (10,100,500), BENCH_CONCURRENCY (8), BENCH_REPEATS (3, convergence at N ≤ 100), BENCH_KILLS (100),
//! BENCH_RECOVERY_POOL (15), BENCH_KILL_GAP_MS (800), BENCH_IDLE_N (2000), BENCH_IDLE_SECS
//! (90), BENCH_IDLE_TTL (86400: the ttlSeconds of every other idle session), BENCH_WRITES
//! (300), BENCH_TAKEOVERS (10), BENCH_OUT (BENCHMARKS.md, `-` for stdout), MCP_IMAGE;
//! warm pools and many sessions: BENCH_WARM_ACQUIRES (200), BENCH_COLD_ACQUIRES (50),
//! BENCH_RAW_ACQUIRES (50), BENCH_POOL_REPLICAS (20), BENCH_ACQUIRE_GAP_MS (250),
//! BENCH_BURST (50 simultaneous acquires, from a pool of as many), BENCH_BURST_REPEATS (3),
//! BENCH_COMPOSE_N (100 services / sessions), BENCH_COMPOSE_REPEATS (5);
//! BENCH_SCALE_ONLY=1 runs only those (the acquires, the bursts, the compose comparison and
//! the idle cost; about 15 minutes here, most of it making and removing the 2000 idle
//! sandboxes) and writes them between their own markers in BENCHMARKS.md, like
//! BENCH_MCP_ONLY. A quick trial: BENCH_SCALE_ONLY=1 BENCH_IDLE_N=50 BENCH_IDLE_SECS=35
//! BENCH_WARM_ACQUIRES=20 BENCH_COLD_ACQUIRES=5 BENCH_RAW_ACQUIRES=5 BENCH_POOL_REPLICAS=5
//! BENCH_BURST=10 BENCH_BURST_REPEATS=1 BENCH_COMPOSE_N=10 BENCH_COMPOSE_REPEATS=2
//! BENCH_OUT=- scripts/bench;
//! BENCH_CONVERGENCE_ONLY=1 stops after the convergence runs (for quick comparisons);
//! BENCH_TAKEOVER_ONLY=1 runs only the replica takeover rounds;
//! BENCH_MCP_ONLY=1 runs only the MCP gateway section and writes it between its own markers
//! in BENCHMARKS.md, outside the full run's results. MCP settings: BENCH_MCP_CALLS (2000
//! timed calls per client, protocol and path), BENCH_MCP_ROUNDS (4), BENCH_MCP_CLIENTS (50),
//! BENCH_MCP_TPUT_CALLS (5000), BENCH_MCP_DIRECT_CLIENTS (1; 0 skips the 50-sandbox
//! reference), MCP_VENV (the SDK venv, default target/mcp-venv), DOCKER (the docker client
//! of the direct path, default /usr/bin/docker).
//!
//! Everything it creates carries its run's labels and is removed one container at a time at
//! the end (Docker 20.10 can deadlock when hundreds are removed at once, moby/moby#42545).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use mcp_orchestrator::chaos::percentile;
use mcp_orchestrator::domain::contract::{Identity, Policy, container_name};
use mcp_orchestrator::domain::pool::WarmPool;
use mcp_orchestrator::domain::resource::{Phase, Session, SessionSpec};
use mcp_orchestrator::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-orchestrator");
/// Put on every container the harness creates itself.
const RUN_LABEL: &str = "orchestrator.mcp.dev/test-run";
/// Which pool member an engine-restarted container is.
const MEMBER_LABEL: &str = "orchestrator.mcp.dev/bench-member";

/// Where the generated results start and end in BENCHMARKS.md.
const BEGIN: &str = "<!-- results: generated by scripts/bench, do not edit -->";
const END: &str = "<!-- end of results -->";
/// Where a `BENCH_MCP_ONLY=1` run's results start and end: in a section of their own,
/// outside the full run's results, whose prose around the markers is kept.
const MCP_BEGIN: &str =
    "<!-- mcp results: generated by BENCH_MCP_ONLY=1 scripts/bench, do not edit -->";
const MCP_END: &str = "<!-- end of mcp results -->";
/// That section's heading, when the file has none yet.
const MCP_HEADING: &str = "## MCP gateway: tool-call round trip and throughput";
/// Where a `BENCH_SCALE_ONLY=1` run's results start and end (like the MCP section's).
const SCALE_BEGIN: &str =
    "<!-- scale results: generated by BENCH_SCALE_ONLY=1 scripts/bench, do not edit -->";
const SCALE_END: &str = "<!-- end of scale results -->";
const SCALE_HEADING: &str = "## Warm pools and the cost of many sessions";
/// A new BENCHMARKS.md starts with this.
const HEADER: &str = "# Benchmarks\n\nReproduce with `scripts/bench` (about 25 minutes here; it installs and starts Redis and the\nengine if needed, builds the sandbox image and runs `cargo bench --bench orchestrator`).\n";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `BENCH_MCP_ONLY=1`: only the MCP gateway's figures, into their own section.
fn mcp_only() -> bool {
    std::env::var_os("BENCH_MCP_ONLY").is_some()
}

/// `BENCH_SCALE_ONLY=1`: only the warm-pool and many-sessions figures, into their own section.
fn scale_only() -> bool {
    std::env::var_os("BENCH_SCALE_ONLY").is_some()
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Config {
    sizes: Vec<usize>,
    concurrency: usize,
    kills: usize,
    repeats: usize,
    pool: usize,
    kill_gap: Duration,
    idle_n: usize,
    idle_secs: u64,
    writes: usize,
    takeovers: usize,
    mcp_calls: usize,
    mcp_rounds: usize,
    mcp_clients: usize,
    mcp_tput_calls: usize,
    mcp_direct_clients: bool,
    idle_ttl: u64,
    warm_acquires: usize,
    cold_acquires: usize,
    raw_acquires: usize,
    pool_replicas: u32,
    acquire_gap: Duration,
    burst: usize,
    burst_repeats: usize,
    compose_n: usize,
    compose_repeats: usize,
    out: String,
    image: String,
}

impl Config {
    fn from_env() -> Config {
        Config {
            sizes: std::env::var("BENCH_SIZES")
                .unwrap_or_else(|_| "10,100,500".into())
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect(),
            concurrency: env_or("BENCH_CONCURRENCY", 8),
            kills: env_or("BENCH_KILLS", 100),
            repeats: env_or("BENCH_REPEATS", 3),
            pool: env_or("BENCH_RECOVERY_POOL", 15),
            kill_gap: Duration::from_millis(env_or("BENCH_KILL_GAP_MS", 800)),
            idle_n: env_or("BENCH_IDLE_N", 2000),
            idle_secs: env_or("BENCH_IDLE_SECS", 90),
            writes: env_or("BENCH_WRITES", 300),
            takeovers: env_or("BENCH_TAKEOVERS", 10),
            mcp_calls: env_or("BENCH_MCP_CALLS", 2000),
            mcp_rounds: env_or::<usize>("BENCH_MCP_ROUNDS", 4).max(1),
            mcp_clients: env_or::<usize>("BENCH_MCP_CLIENTS", 50).max(1),
            mcp_tput_calls: env_or("BENCH_MCP_TPUT_CALLS", 5000),
            mcp_direct_clients: env_or("BENCH_MCP_DIRECT_CLIENTS", 1) != 0,
            idle_ttl: env_or("BENCH_IDLE_TTL", 86_400),
            warm_acquires: env_or("BENCH_WARM_ACQUIRES", 200),
            cold_acquires: env_or("BENCH_COLD_ACQUIRES", 50),
            raw_acquires: env_or("BENCH_RAW_ACQUIRES", 50),
            pool_replicas: env_or::<u32>("BENCH_POOL_REPLICAS", 20).max(1),
            acquire_gap: Duration::from_millis(env_or("BENCH_ACQUIRE_GAP_MS", 250)),
            burst: env_or::<usize>("BENCH_BURST", 50).max(1),
            burst_repeats: env_or::<usize>("BENCH_BURST_REPEATS", 3).max(1),
            compose_n: env_or::<usize>("BENCH_COMPOSE_N", 100).max(2),
            compose_repeats: env_or::<usize>("BENCH_COMPOSE_REPEATS", 5).max(1),
            out: std::env::var("BENCH_OUT").unwrap_or_else(|_| "BENCHMARKS.md".into()),
            image: std::env::var("MCP_IMAGE").unwrap_or_else(|_| "mcp-server:latest".into()),
        }
    }
}

/// `base` with a counter appended, so that repeated runs never share names or Redis keys.
fn unique(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{base}x{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The median of a few durations, and their spread.
fn median(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort_unstable();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Milliseconds, with one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Percentiles of durations, nearest rank, in microseconds.
struct Dist {
    sorted_us: Vec<u64>,
}

impl Dist {
    fn new(v: &[Duration]) -> Dist {
        let mut sorted_us: Vec<u64> = v.iter().map(|d| d.as_micros() as u64).collect();
        sorted_us.sort_unstable();
        Dist { sorted_us }
    }
    fn p(&self, q: f64) -> Duration {
        Duration::from_micros(percentile(&self.sorted_us, q))
    }
    fn max(&self) -> Duration {
        Duration::from_micros(self.sorted_us.last().copied().unwrap_or(0))
    }
}

// ---------------------------------------------------------------------------------------
// Processes: Redis and the orchestrator.

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Res<Redis> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Redis {
            child,
            port,
            _dir: dir,
        })
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `mcp-orchestrator serve`, JSON logs to a file.
struct Orchestrator {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Orchestrator {
    async fn start(
        redis: &Redis,
        instance: &str,
        dir: &Path,
        cfg: &Config,
        rust_log: &str,
        extra: &[(&str, String)],
    ) -> Res<Orchestrator> {
        let port = free_port();
        let log = dir.join(format!("{instance}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let mut c = Command::new(BIN);
        c.arg("serve")
            .env("REDIS_URL", redis.url())
            .env("ORCHESTRATOR_INSTANCE", instance)
            .env("PORT", port.to_string())
            .env("ALLOWED_IMAGES", "mcp-server:*")
            .env("RECONCILE_CONCURRENCY", cfg.concurrency.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("GOOGLE_API_KEY")
            .env_remove("SPECS_DIR")
            // Loopback, which is also the default without a token.
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
        // The contract's defaults, as in the raw and compose runs, whatever the caller set.
        for k in [
            "MAX_MEMORY",
            "MAX_CPUS",
            "MAX_PIDS",
            "STABLE_AFTER",
            "MAX_BACKOFF",
            "RESYNC_INTERVAL",
        ] {
            c.env_remove(k);
        }
        c.stdout(Stdio::null()).stderr(file);
        for (k, v) in extra {
            c.env(k, v);
        }
        let child = c.spawn()?;
        let o = Orchestrator { child, log, port };
        // Ready: Redis and Docker reached, first sync done.
        let t0 = Instant::now();
        let url = format!("http://127.0.0.1:{port}/readyz");
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("orchestrator did not become ready: {}", o.log_text()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(o)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP API's base URL.
    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The MCP gateway endpoint of `session`.
    fn mcp_url(&self, session: &str) -> String {
        format!(
            "http://127.0.0.1:{}/api/v1/sessions/{session}/mcp",
            self.port
        )
    }

    /// SIGTERM and wait.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime+stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

// ---------------------------------------------------------------------------------------
// Docker: the same create body as the orchestrator's, cleanup, events, a counting proxy.

fn body(cfg: &Config, instance: &str, session: &str, run: &str) -> ContainerCreateBody {
    let spec = SessionSpec {
        image: cfg.image.clone(),
        ..SessionSpec::default()
    };
    let sandbox = Policy::default()
        .sandbox(&spec)
        .expect("the default spec passes the contract");
    let mut b = sandbox.container_body(&Identity {
        instance,
        session,
        uid: "bench",
        generation: 1,
        store: "bench",
    });
    b.labels
        .get_or_insert_default()
        .insert(RUN_LABEL.into(), run.into());
    b
}

/// Create a container under `name` and start it; returns its id.
async fn create_start(docker: &Docker, name: &str, body: ContainerCreateBody) -> Res<String> {
    let c = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            body,
        )
        .await?;
    docker
        .start_container(&c.id, None::<StartContainerOptions>)
        .await?;
    Ok(c.id)
}

/// Every container, in any state, carrying the label filter `label=value`.
async fn list_labelled(
    docker: &Docker,
    filter: &str,
) -> Res<Vec<bollard::models::ContainerSummary>> {
    Ok(docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".into(), vec![filter.to_string()])])),
            ..Default::default()
        }))
        .await?)
}

/// Remove every container carrying `label=value`, one at a time.
async fn remove_all(docker: &Docker, filter: &str) -> Res<usize> {
    let list = list_labelled(docker, filter).await?;
    let n = list.len();
    for c in list {
        let id = c.id.unwrap_or_default();
        let _ = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    Ok(n)
}

/// Container `start` events, tagged with the session (or pool member) label.
fn start_events(
    docker: &Docker,
    filter: &str,
) -> mpsc::UnboundedReceiver<(String, String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([
            ("type".into(), vec!["container".into()]),
            ("event".into(), vec!["start".into()]),
            ("label".into(), vec![filter.to_string()]),
        ])),
        ..Default::default()
    }));
    tokio::spawn(async move {
        while let Some(Ok(ev)) = stream.next().await {
            let at = Instant::now();
            let actor = ev.actor.unwrap_or_default();
            let attrs = actor.attributes.unwrap_or_default();
            let who = attrs
                .get(MEMBER_LABEL)
                .or_else(|| attrs.get("orchestrator.mcp.dev/session"))
                .cloned()
                .unwrap_or_default();
            if tx.send((who, actor.id.unwrap_or_default(), at)).is_err() {
                break;
            }
        }
    });
    rx
}

async fn main_pid(docker: &Docker, id: &str) -> Res<i64> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    Ok(info.state.and_then(|s| s.pid).unwrap_or(0))
}

/// SIGKILL a process from the host, as an OOM killer or a crash would.
fn sigkill(pid: i64) -> Res<()> {
    if pid <= 0 {
        return Err("container has no main process".into());
    }
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !st.success() {
        return Err(format!("kill -KILL {pid} failed (the harness must run as root)").into());
    }
    Ok(())
}

/// The requests a [`counting_proxy`] passed on: how many, and their request lines
/// (`GET /v1.41/containers/json?… `), in order.
#[derive(Default)]
struct CallLog {
    count: AtomicU64,
    lines: std::sync::Mutex<Vec<String>>,
}

impl CallLog {
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// The request lines from the `from`-th on.
    fn lines_from(&self, from: u64) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().skip(from as usize).cloned().collect())
            .unwrap_or_default()
    }
}

/// A unix-socket proxy in front of the engine that counts HTTP requests and keeps their
/// request lines.
async fn counting_proxy(path: &Path, upstream: &str, calls: Arc<CallLog>) -> Res<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let upstream = upstream.to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::UnixStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // The bytes since the last newline. Every request line ends in
                    // " HTTP/1.1\r\n"; bodies are JSON without newlines, so a request line
                    // may follow the previous body on the same "line".
                    let mut line: Vec<u8> = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        for &b in &buf[..n] {
                            if b != b'\n' {
                                if line.len() >= 32 * 1024 {
                                    line.drain(..16 * 1024);
                                }
                                line.push(b);
                                continue;
                            }
                            if let Some(head) = line.strip_suffix(b" HTTP/1.1\r") {
                                let text = String::from_utf8_lossy(head);
                                let start = ["GET ", "POST ", "PUT ", "DELETE ", "HEAD "]
                                    .iter()
                                    .filter_map(|m| text.rfind(m))
                                    .max()
                                    .unwrap_or(0);
                                if let Ok(mut l) = calls.lines.lock() {
                                    l.push(text[start..].to_string());
                                }
                                calls.count.fetch_add(1, Ordering::Relaxed);
                            }
                            line.clear();
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(())
}

/// Docker API requests by kind, from a [`CallLog`]'s request lines.
#[derive(Debug, Default, Clone, Copy)]
struct CallKinds {
    /// Lists of every managed container of the instance: the resync's.
    bulk_lists: u64,
    /// Lists of one session's containers (a reconcile).
    session_lists: u64,
    /// Lists of one pool's members.
    pool_lists: u64,
    /// `GET /containers/{id}/json`.
    inspects: u64,
    other: u64,
}

impl CallKinds {
    fn of(lines: &[String]) -> CallKinds {
        let mut k = CallKinds::default();
        for l in lines {
            let path = l.split_whitespace().nth(1).unwrap_or("");
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            if l.starts_with("GET ") && path.ends_with("/containers/json") {
                // The label filters, percent-encoded JSON: a session's or pool's label
                // narrows the list.
                let q = query.to_ascii_lowercase();
                if q.contains("session") {
                    k.session_lists += 1;
                } else if q.contains("pool") {
                    k.pool_lists += 1;
                } else {
                    k.bulk_lists += 1;
                }
            } else if l.starts_with("GET ")
                && path.contains("/containers/")
                && path.ends_with("/json")
            {
                k.inspects += 1;
            } else {
                k.other += 1;
            }
        }
        k
    }
}

// ---------------------------------------------------------------------------------------
// The orchestrator's side.

fn sessions_yaml(cfg: &Config, n: usize, prefix: &str) -> String {
    sessions_yaml_with(cfg, n, prefix, |_| String::new())
}

/// N session documents; `extra(i)` adds lines to the i-th one's spec (indented two spaces).
fn sessions_yaml_with(
    cfg: &Config,
    n: usize,
    prefix: &str,
    extra: impl Fn(usize) -> String,
) -> String {
    sessions_yaml_range(cfg, 0..n, prefix, &extra)
}

/// The session documents numbered `range`.
fn sessions_yaml_range(
    cfg: &Config,
    range: std::ops::Range<usize>,
    prefix: &str,
    extra: &dyn Fn(usize) -> String,
) -> String {
    range
        .map(|i| {
            format!(
                "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata:\n  name: {prefix}{i}\nspec:\n  image: {}\n{}",
                cfg.image,
                extra(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `mcp-orchestrator apply -f FILE` against the store.
fn apply(redis: &Redis, instance: &str, file: &Path) -> Res<()> {
    let out = Command::new(BIN)
        .args(["apply", "-f", file.to_str().unwrap()])
        .env("REDIS_URL", redis.url())
        .env("ORCHESTRATOR_INSTANCE", instance)
        .env("ALLOWED_IMAGES", "mcp-server:*")
        .env_remove("ORCHESTRATOR_URL")
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!("apply failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Wait, through the store's change stream (no polling), until `n` sessions are Running.
async fn wait_all_running(store: &Store, revision: u64, n: usize, limit: Duration) -> Res<Instant> {
    let mut watch = store.watch(revision).await?;
    let mut phase: HashMap<String, bool> = HashMap::new();
    let t0 = Instant::now();
    loop {
        for ev in watch.next_batch(Duration::from_millis(500)).await? {
            let running = ev.object.as_ref().is_some_and(|s| {
                s.phase() == Phase::Running
                    && ev.kind != mcp_orchestrator::store::EventType::Deleted
            });
            phase.insert(ev.name, running);
        }
        if phase.values().filter(|r| **r).count() >= n {
            return Ok(Instant::now());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "only {} of {n} sessions Running after {limit:?}",
                phase.values().filter(|r| **r).count()
            )
            .into());
        }
    }
}

/// Write `n` sessions named `{prefix}0..` to a file, `apply` it, and wait until every status
/// says Running. Returns the store client and the time from the apply to the last Running.
async fn apply_and_wait(
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    instance: &str,
    n: usize,
    prefix: &str,
    limit: Duration,
) -> Res<(Store, Duration)> {
    let store = Store::connect(&redis.url(), instance).await?;
    let file = dir.join(format!("{instance}.yaml"));
    std::fs::write(&file, sessions_yaml(cfg, n, prefix))?;
    let revision = store.list().await?.revision;
    let t0 = Instant::now();
    let done = tokio::spawn({
        let store = store.clone();
        async move { wait_all_running(&store, revision, n, limit).await }
    });
    apply(redis, instance, &file)?;
    let end = done.await.map_err(|e| e.to_string())??;
    Ok((store, end - t0))
}

/// Apply N sessions and time until every status is Running.
async fn converge_orchestrator(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    n: usize,
    run: &str,
) -> Res<Duration> {
    let instance = unique(&format!("{run}o{n}"));
    let o = Orchestrator::start(redis, &instance, dir, cfg, "mcp_orchestrator=info", &[]).await?;
    let (_, took) = apply_and_wait(
        redis,
        dir,
        cfg,
        &instance,
        n,
        "s",
        Duration::from_secs(1200),
    )
    .await?;
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok(took)
}

/// The same N containers, straight through bollard: create+start at the same concurrency.
async fn converge_raw(docker: &Docker, cfg: &Config, n: usize, run: &str) -> Res<Duration> {
    let instance = unique(&format!("{run}r{n}"));
    let t0 = Instant::now();
    let results: Vec<Res<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let instance = instance.clone();
            async move {
                let session = format!("s{i}");
                let b = body(cfg, &instance, &session, run);
                create_start(docker, &container_name(&instance, &session), b).await?;
                Ok(())
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    let took = t0.elapsed();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    for r in results {
        r?;
    }
    Ok(took)
}

/// The compose file of N services equivalent to the sandbox contract's create body.
fn compose_file(cfg: &Config, n: usize, run: &str) -> String {
    compose_file_env(cfg, n, run, None)
}

/// The same, each service `s{i}` with the environment `BENCH_REV=revs[i]` when given.
fn compose_file_env(cfg: &Config, n: usize, run: &str, revs: Option<&[u32]>) -> String {
    let mut s = String::from("version: \"2.4\"\nservices:\n");
    for i in 0..n {
        if let Some(rev) = revs.and_then(|r| r.get(i)) {
            let _ = write!(s, "  s{i}:\n    environment: {{{REV_VAR}: \"{rev}\"}}\n");
        } else {
            let _ = writeln!(s, "  s{i}:");
        }
        let _ = write!(
            s,
            "    image: {image}
    network_mode: none
    read_only: true
    cap_drop: [ALL]
    security_opt: [\"no-new-privileges:true\"]
    user: \"65534:65534\"
    tmpfs: [\"/tmp:rw,nosuid,nodev,noexec,mode=1777,uid=65534,gid=65534,size=64m\"]
    mem_limit: 268435456
    memswap_limit: 268435456
    cpus: 0.5
    pids_limit: 128
    ipc: private
    stdin_open: true
    restart: \"no\"
    labels: {{\"{RUN_LABEL}\": \"{run}\"}}
",
            image = cfg.image
        );
    }
    s
}

/// `docker-compose -p PROJECT ARGS` in `pdir` with `COMPOSE_PARALLEL_LIMIT=limit` (see
/// [`converge_compose`]), stopped after 15 minutes; stderr captured.
fn compose_run(
    project: &str,
    pdir: &Path,
    limit: usize,
    args: &[&str],
) -> std::io::Result<std::process::Output> {
    Command::new("timeout")
        .args(["900", "docker-compose", "-p", project])
        .args(args)
        .current_dir(pdir)
        .env("COMPOSE_PARALLEL_LIMIT", limit.to_string())
        .env("COMPOSE_HTTP_TIMEOUT", "600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
}

/// `docker-compose up -d` of N equivalent services, at the same parallelism.
async fn converge_compose(
    docker: &Docker,
    dir: &Path,
    cfg: &Config,
    n: usize,
    run: &str,
) -> Res<Duration> {
    let project = unique(&format!("{run}c{n}"));
    let pdir = dir.join(&project);
    std::fs::create_dir_all(&pdir)?;
    std::fs::write(pdir.join("docker-compose.yml"), compose_file(cfg, n, run))?;
    // Compose 1.29 holds its global COMPOSE_PARALLEL_LIMIT semaphore across its two nested
    // parallel steps (services, then each service's containers), so a limit below the number
    // of services deadlocks: at 8 it hung for minutes after 7 of 100 containers. With N + P
    // permits the inner step (the create+start calls) starts with P and gains one for every
    // service that finishes: at least P in flight, more towards the end, never fewer than the
    // others get. (Unbounded, 2N + P, 500 services time out against the engine.) A hung run
    // is stopped after 15 minutes.
    let limit = n + cfg.concurrency;
    let compose = |args: &[&str]| compose_run(&project, &pdir, limit, args);
    let t0 = Instant::now();
    let out = compose(&["up", "-d", "--no-build"])?;
    let took = t0.elapsed();
    // Our containers one at a time, then compose for what is left (its network).
    remove_all(docker, &format!("com.docker.compose.project={project}")).await?;
    let _ = compose(&["down", "--remove-orphans"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        return Err(format!("docker-compose up failed ({}): {tail}", out.status).into());
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// Recovery.

struct Recovery {
    /// Kill → the replacement (or restarted) container started.
    container: Vec<Duration>,
    /// Kill → the session's status Running on that container (orchestrator only).
    status: Vec<Duration>,
}

/// Wait for a `start` event of `who` after `t0`.
async fn next_start(
    rx: &mut mpsc::UnboundedReceiver<(String, String, Instant)>,
    who: &str,
    t0: Instant,
) -> Res<(String, Instant)> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .map_err(|_| format!("{who} did not start again within 60 s"))?
            .ok_or("event stream ended")?;
        if ev.0 == who && ev.2 >= t0 {
            return Ok((ev.1, ev.2));
        }
    }
}

/// SIGKILL the main process of pool members round robin; time the orchestrator's recovery.
async fn recovery_orchestrator(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
    plain_kills: usize,
) -> Res<(Recovery, Vec<Duration>)> {
    let instance = format!("{run}k");
    let o = Orchestrator::start(redis, &instance, dir, cfg, "mcp_orchestrator=info", &[]).await?;
    let (store, _) = apply_and_wait(
        redis,
        dir,
        cfg,
        &instance,
        cfg.pool,
        "k",
        Duration::from_secs(120),
    )
    .await?;
    // Every sandbox has run long enough to count as stable (no crash-loop backoff).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut rx = start_events(docker, &format!("orchestrator.mcp.dev/instance={instance}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rec = Recovery {
        container: Vec::new(),
        status: Vec::new(),
    };
    let mut plain = Vec::new();
    for k in 0..cfg.kills + plain_kills {
        let name = format!("k{}", k % cfg.pool);
        let s = store.get(&name).await?.ok_or("session vanished")?;
        let before = s.status.clone().unwrap_or_default();
        let id = before
            .container_id
            .clone()
            .ok_or("no container id in status")?;
        let pid = main_pid(docker, &id).await?;
        let revision = store.revision().await?;
        let t0 = Instant::now();
        if k < cfg.kills {
            sigkill(pid)?;
        } else {
            docker
                .kill_container(&id, None::<KillContainerOptions>)
                .await?;
        }
        let (new_id, started) = next_start(&mut rx, &name, t0).await?;
        // Status Running on the started container, from the change stream.
        let mut watch = store.watch(revision).await?;
        let status_at = loop {
            let cur = store.get(&name).await?.and_then(|s| s.status);
            // The sandbox is restarted in place (same id), so Running on that id is not
            // enough: the status must have counted this restart.
            if cur.as_ref().is_some_and(|st| {
                st.phase == Phase::Running
                    && st.container_id.as_deref() == Some(new_id.as_str())
                    && (st.restart_count > before.restart_count
                        || before.container_id.as_deref() != Some(new_id.as_str()))
            }) {
                break Instant::now();
            }
            watch.next_batch(Duration::from_millis(200)).await?;
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} not Running again within 60 s").into());
            }
        };
        if k < cfg.kills {
            rec.container.push(started - t0);
            rec.status.push(status_at.max(started) - t0);
        } else {
            plain.push(status_at.max(started) - t0);
        }
        tokio::time::sleep(cfg.kill_gap).await;
    }
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok((rec, plain))
}

/// The same pool with the engine's restart policy `always`, the same kills.
async fn recovery_engine(docker: &Docker, cfg: &Config, run: &str) -> Res<(Vec<Duration>, String)> {
    let instance = format!("{run}e");
    let mut ids = Vec::new();
    for i in 0..cfg.pool {
        let member = format!("e{i}");
        let mut b = body(cfg, &instance, &member, run);
        b.labels
            .get_or_insert_default()
            .insert(MEMBER_LABEL.into(), member.clone());
        if let Some(h) = b.host_config.as_mut() {
            h.restart_policy = Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            });
        }
        ids.push(create_start(docker, &container_name(&instance, &member), b).await?);
    }
    // Past the engine's 10 s window, so its restart backoff starts from the bottom.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut rx = start_events(docker, &format!("{RUN_LABEL}={run}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut times = Vec::new();
    for k in 0..cfg.kills {
        let i = k % cfg.pool;
        let pid = main_pid(docker, &ids[i]).await?;
        let t0 = Instant::now();
        sigkill(pid)?;
        let (_, started) = next_start(&mut rx, &format!("e{i}"), t0).await?;
        times.push(started - t0);
        tokio::time::sleep(cfg.kill_gap).await;
    }
    // A plain `docker kill`: the engine counts it as a manual stop and does not restart.
    docker
        .kill_container(&ids[0], None::<KillContainerOptions>)
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let running = docker
        .inspect_container(&ids[0], None::<InspectContainerOptions>)
        .await?
        .state
        .and_then(|s| s.running)
        .unwrap_or(false);
    let plain = if running {
        "restarted it".to_string()
    } else {
        "left it exited (checked 5 s later)".to_string()
    };
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok((times, plain))
}

// ---------------------------------------------------------------------------------------
// Idle cost and change latency.

struct Idle {
    n: usize,
    /// How many of them carry `ttlSeconds`.
    with_ttl: usize,
    ttl_secs: u64,
    /// `serve` started with the N sessions stored → every status Running.
    converge: Duration,
    cpu_pct: f64,
    rss_mib: f64,
    calls_per_s: f64,
    /// Every Docker API call in the window.
    calls: u64,
    /// Those calls by kind.
    kinds: CallKinds,
    secs: u64,
    /// Every resync pass `serve` logged after its restart.
    resyncs: Vec<Resync>,
    /// The window, on the log's clock.
    window: (DateTime<Utc>, DateTime<Utc>),
    mem: RedisMemory,
}

/// One resync pass, from the controller's debug log.
#[derive(Debug, Clone, Copy)]
struct Resync {
    took_ms: u64,
    /// Sessions (and pools) the pass queued for a reconcile.
    enqueued: u64,
    at: DateTime<Utc>,
}

/// Redis memory (`INFO memory` used_memory, `MEMORY USAGE … SAMPLES 0`) around the idle
/// set-up.
#[derive(Debug, Default, Clone)]
struct RedisMemory {
    /// Before the sessions were stored.
    before: u64,
    /// After `apply` stored them, before any `serve` ran (no status yet).
    stored: u64,
    /// Once every status said Running (status writes, their stream entries, events).
    running: u64,
    /// The change stream's `MEMORY USAGE` and length: stored, running.
    stream: (u64, u64),
    stream_len: (u64, u64),
    /// The objects hash's `MEMORY USAGE`: stored, running.
    objects: (u64, u64),
    /// The versions hash, once Running.
    versions: u64,
    /// The sessions' event lists (`log:<name>`), summed, once Running.
    logs: u64,
}

/// What the replica benchmark measured.
struct Takeover {
    /// SIGKILL of the leader → a new session's status Running (a standby took over).
    standby: Vec<Duration>,
    /// SIGKILL of the only replica, restarted at once → a new session Running.
    restarted: Vec<Duration>,
    /// SIGTERM of the leader → a standby holds the lease.
    handover: Vec<Duration>,
}

/// The pid in the lease's holder (`<term> <host>/<pid>/<tag>`), if anyone holds it.
async fn leader_pid(store: &Store) -> Option<u32> {
    let v = store.value("leader").await.ok()??;
    v.split_whitespace().nth(1)?.split('/').nth(1)?.parse().ok()
}

/// Poll every 5 ms until `f` holds; the time it took.
async fn until<F, Fut>(limit: Duration, what: &str, mut f: F) -> Res<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        if t0.elapsed() > limit {
            return Err(format!("{what} did not happen within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t0.elapsed())
}

/// Create `name` and time (from `t0`) until its status is Running.
async fn created_running(store: &Store, cfg: &Config, name: &str, t0: Instant) -> Res<Duration> {
    store.create(&Session::new(name, &cfg.image)).await?;
    until(Duration::from_secs(30), name, || async {
        store
            .get(name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.status)
            .is_some_and(|st| st.phase == Phase::Running)
    })
    .await?;
    Ok(t0.elapsed())
}

/// SIGKILL the leader of two replicas, write a session, time until it is Running; against
/// one replica SIGKILLed and started again at once. Then SIGTERM hand-overs.
async fn takeover(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<Takeover> {
    let instance = unique(&format!("{run}ha"));
    let store = Store::connect(&redis.url(), &instance).await?;
    let start = || Orchestrator::start(redis, &instance, dir, cfg, "mcp_orchestrator=info", &[]);
    let lim = Duration::from_secs(20);
    let mut out = Takeover {
        standby: Vec::new(),
        restarted: Vec::new(),
        handover: Vec::new(),
    };
    let mut leader = start().await?;
    let pid = leader.pid();
    until(lim, "the first leader", || async {
        leader_pid(&store).await == Some(pid)
    })
    .await?;
    let mut standby = start().await?;
    for k in 0..cfg.takeovers {
        let t0 = Instant::now();
        sigkill(i64::from(leader.pid()))?;
        out.standby
            .push(created_running(&store, cfg, &format!("standby{k}"), t0).await?);
        leader = std::mem::replace(&mut standby, start().await?);
        // A quiet moment, so that every round starts from the same state.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..cfg.takeovers {
        let (old, next) = (leader.pid(), standby.pid());
        let t0 = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &old.to_string()])
            .status();
        until(lim, "the hand-over", || async {
            leader_pid(&store).await == Some(next)
        })
        .await?;
        out.handover.push(t0.elapsed());
        leader.stop();
        leader = std::mem::replace(&mut standby, start().await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    standby.stop();
    for k in 0..cfg.takeovers {
        let t0 = Instant::now();
        sigkill(i64::from(leader.pid()))?;
        leader = start().await?;
        out.restarted
            .push(created_running(&store, cfg, &format!("restart{k}"), t0).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    leader.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok(out)
}

/// Every resync pass in a JSON log.
fn resync_passes(log: &str) -> Vec<Resync> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "resync")
        .filter_map(|v| {
            Some(Resync {
                took_ms: v["took_ms"].as_u64()?,
                enqueued: v["enqueued"].as_u64().unwrap_or(0),
                at: log_time(&v)?,
            })
        })
        .collect()
}

/// The timestamp of a JSON log line.
fn log_time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v["timestamp"].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

type RedisCon = redis::aio::MultiplexedConnection;

/// A plain Redis connection of the harness's own (INFO, MEMORY USAGE).
async fn redis_con(redis: &Redis) -> Res<RedisCon> {
    Ok(redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?)
}

async fn used_memory(con: &mut RedisCon) -> Res<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no used_memory".into())
}

/// `MEMORY USAGE key SAMPLES 0` (every element counted), 0 when the key does not exist.
async fn key_memory(con: &mut RedisCon, key: &str) -> Res<u64> {
    let v: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(con)
        .await?;
    Ok(v.unwrap_or(0))
}

/// The summed `MEMORY USAGE` of every key matching `pattern`.
async fn keys_memory(con: &mut RedisCon, pattern: &str) -> Res<u64> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut sum = 0;
    for k in keys {
        sum += key_memory(con, &k).await?;
    }
    Ok(sum)
}

async fn stream_len(con: &mut RedisCon, key: &str) -> Res<u64> {
    Ok(redis::cmd("XLEN").arg(key).query_async(con).await?)
}

/// Idle cost at N converged sessions (half of them with a long `ttlSeconds`), and what they
/// cost Redis. The sessions are stored by `apply` before any `serve` runs (Redis memory with
/// the objects alone), then `serve` starts and makes them Running (memory again), then it is
/// restarted behind a counting proxy and watched for a quiet window.
async fn idle_cost(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<Idle> {
    let n = cfg.idle_n;
    let instance = format!("{run}i");
    let prefix = format!("mcpo:{instance}");
    let store = Store::connect(&redis.url(), &instance).await?;
    let mut con = redis_con(redis).await?;
    let mut mem = RedisMemory {
        before: used_memory(&mut con).await?,
        ..RedisMemory::default()
    };
    // Every other session expires, long after the run: a timer each, never an expiry.
    let ttl = cfg.idle_ttl;
    let extra = |i: usize| {
        if i.is_multiple_of(2) {
            format!("  ttlSeconds: {ttl}\n")
        } else {
            String::new()
        }
    };
    // A file holds at most 1000 documents (limits::MAX_DOCUMENTS): a directory of files.
    let files = dir.join(format!("{instance}.d"));
    std::fs::create_dir_all(&files)?;
    for (k, from) in (0..n).step_by(1000).enumerate() {
        let range = from..(from + 1000).min(n);
        std::fs::write(
            files.join(format!("part{k}.yaml")),
            sessions_yaml_range(cfg, range, "i", &extra),
        )?;
    }
    apply(redis, &instance, &files)?;
    let stream_key = format!("{prefix}:stream");
    let objects_key = format!("{prefix}:objects");
    mem.stored = used_memory(&mut con).await?;
    mem.stream.0 = key_memory(&mut con, &stream_key).await?;
    mem.stream_len.0 = stream_len(&mut con, &stream_key).await?;
    mem.objects.0 = key_memory(&mut con, &objects_key).await?;

    let revision = store.list().await?.revision;
    let t0 = Instant::now();
    let done = tokio::spawn({
        let store = store.clone();
        async move { wait_all_running(&store, revision, n, Duration::from_secs(1800)).await }
    });
    let o = Orchestrator::start(redis, &instance, dir, cfg, "mcp_orchestrator=info", &[]).await?;
    let converge = done.await.map_err(|e| e.to_string())?? - t0;
    // The last status writes and events land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    mem.running = used_memory(&mut con).await?;
    mem.stream.1 = key_memory(&mut con, &stream_key).await?;
    mem.stream_len.1 = stream_len(&mut con, &stream_key).await?;
    mem.objects.1 = key_memory(&mut con, &objects_key).await?;
    mem.versions = key_memory(&mut con, &format!("{prefix}:versions")).await?;
    mem.logs = keys_memory(&mut con, &format!("{prefix}:log:*")).await?;
    o.stop();

    // Restart it behind the counting proxy, with the controller's debug log (resync passes).
    let calls = Arc::new(CallLog::default());
    let sock = dir.join("docker-proxy.sock");
    let upstream = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    counting_proxy(&sock, &upstream, calls.clone()).await?;
    let o = Orchestrator::start(
        redis,
        &instance,
        dir,
        cfg,
        "mcp_orchestrator=info,mcp_orchestrator::controller=debug",
        &[("DOCKER_HOST", format!("unix://{}", sock.display()))],
    )
    .await?;
    // Let the start-up settle (its first resync and any reconciles it queued) until no
    // Docker call has been made for 3 s, then measure a quiet window.
    let mut last = calls.count();
    let mut quiet = 0;
    while quiet < 3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = calls.count();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    let (c0, n0, w0, from) = (
        cpu_seconds(o.pid()),
        calls.count(),
        Instant::now(),
        Utc::now(),
    );
    tokio::time::sleep(Duration::from_secs(cfg.idle_secs)).await;
    let (c1, n1, secs, to) = (
        cpu_seconds(o.pid()),
        calls.count(),
        w0.elapsed().as_secs_f64(),
        Utc::now(),
    );
    let mut window_lines = calls.lines_from(n0);
    window_lines.truncate((n1 - n0) as usize);
    let kinds = CallKinds::of(&window_lines);
    let rss = rss_mib(o.pid());
    if rss == 0.0 {
        return Err("the orchestrator exited during the idle window".into());
    }
    let resyncs = resync_passes(&o.log_text());
    let still = store
        .list()
        .await?
        .items
        .iter()
        .filter(|s| s.phase() == Phase::Running)
        .count();
    o.stop();
    let _ = std::fs::remove_file(&sock);
    if still != n {
        return Err(
            format!("{still} of {n} sessions Running at the end of the idle window").into(),
        );
    }
    eprintln!("bench:   removing {n} containers, one at a time");
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok(Idle {
        n,
        with_ttl: n.div_ceil(2),
        ttl_secs: ttl,
        converge,
        cpu_pct: (c1 - c0) / secs * 100.0,
        rss_mib: rss,
        calls_per_s: (n1 - n0) as f64 / secs,
        calls: n1 - n0,
        kinds,
        secs: secs.round() as u64,
        resyncs,
        window: (from, to),
        mem,
    })
}

/// The first "reconcile start" of `session` in the JSON log after byte `from`.
fn reconcile_start(log: &str, session: &str) -> Option<DateTime<Utc>> {
    log.lines().find_map(|l| {
        if !l.contains("reconcile start") {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v["message"] != "reconcile start" || v["span"]["session"] != session {
            return None;
        }
        DateTime::parse_from_rfc3339(v["timestamp"].as_str()?)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

async fn change_latency(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<Vec<Duration>> {
    let instance = format!("{run}w");
    let o = Orchestrator::start(
        redis,
        &instance,
        dir,
        cfg,
        "mcp_orchestrator=info,mcp_orchestrator::controller=debug",
        &[],
    )
    .await?;
    let m = 10;
    let (store, _) =
        apply_and_wait(redis, dir, cfg, &instance, m, "w", Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut out = Vec::new();
    for k in 0..cfg.writes {
        let name = format!("w{}", k % m);
        let mut s = store.get(&name).await?.ok_or("session vanished")?;
        s.metadata
            .labels
            .insert("bench-write".into(), k.to_string());
        s.status = None;
        let from = std::fs::metadata(&o.log)?.len() as usize;
        let written_at: DateTime<Utc> = SystemTime::now().into();
        store.update(&s).await?;
        let t0 = Instant::now();
        let started = loop {
            let log = o.log_text();
            if let Some(t) = reconcile_start(log.get(from..).unwrap_or(""), &name) {
                break t;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("no reconcile of {name} after write {k}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // A reconcile logged before the write would mean the line matched the wrong write.
        let latency = (started - written_at)
            .to_std()
            .map_err(|_| format!("reconcile of {name} logged before write {k}"))?;
        out.push(latency);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Warm pools and the cost of many sessions (`BENCH_SCALE_ONLY=1`, and in the full run):
// acquire latency warm / cold / raw engine, a burst of simultaneous acquires, idle cost at
// 2000 sessions with Redis memory, and docker-compose on one changed service and a no-op.

/// The pool name of the acquire and burst runs.
const WARM_POOL: &str = "warm";
/// The env var that the compose comparison changes, one service (session) at a time.
const REV_VAR: &str = "BENCH_REV";

/// One `PUT …?wait=Running`, timed.
struct Acquire {
    name: String,
    took: Duration,
    /// Served by a pool member (the status names no cold-start reason).
    warm: bool,
    /// The status's reason (`PoolEmpty` … for a pool session created cold).
    reason: Option<String>,
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
    done: Instant,
}

/// `PUT /api/v1/sessions/{name}?wait=Running` (JSON body): the answer must be the session
/// Running; timed from sending to the whole answer read.
async fn put_running(http: &reqwest::Client, base: &str, s: &Session) -> Res<Acquire> {
    let url = format!(
        "{base}/api/v1/sessions/{}?wait=Running&timeout=120s",
        s.name()
    );
    let sent = Utc::now();
    let t0 = Instant::now();
    let resp = http.put(&url).json(s).send().await?;
    let code = resp.status();
    let bytes = resp.bytes().await?;
    let (took, done, answered) = (t0.elapsed(), Instant::now(), Utc::now());
    if !code.is_success() {
        return Err(format!(
            "PUT {}: {code}: {}",
            s.name(),
            String::from_utf8_lossy(&bytes)
        )
        .into());
    }
    let got: Session = serde_json::from_slice(&bytes)?;
    if !got.is_ready() {
        return Err(format!(
            "PUT {} answered a session not Running: {:?}",
            s.name(),
            got.status
        )
        .into());
    }
    let reason = got.status.as_ref().and_then(|st| st.reason.clone());
    Ok(Acquire {
        name: s.name().to_string(),
        took,
        warm: s.spec.pool.is_some() && reason.is_none(),
        reason,
        sent,
        answered,
        done,
    })
}

fn pool_session(cfg: &Config, name: &str) -> Session {
    let mut s = Session::new(name, &cfg.image);
    s.spec.pool = Some(WARM_POOL.to_string());
    s
}

/// Until the pool's status says `n` ready, none starting and at least `claimed` claimed
/// (so that a status from before the claims does not count).
async fn wait_pool_ready(
    store: &Store,
    name: &str,
    n: u32,
    claimed: u32,
    limit: Duration,
) -> Res<Duration> {
    let pools = store.pools();
    let t0 = Instant::now();
    loop {
        let st = pools.get(name).await?.and_then(|p| p.status);
        if st
            .as_ref()
            .is_some_and(|st| st.ready >= n && st.starting == 0 && st.claimed >= claimed)
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(format!("warm pool {name} not {n} ready after {limit:?}: {st:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An order of `counts[k]` items of each kind k, spread evenly (each next item is of the
/// kind furthest behind its share).
fn interleave(counts: &[usize]) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let mut done = vec![0usize; counts.len()];
    let mut out = Vec::with_capacity(total);
    for _ in 0..total {
        let share = |k: usize| (done[k] as f64 + 0.5) / counts[k] as f64;
        let Some(k) = (0..counts.len())
            .filter(|&k| done[k] < counts[k])
            .min_by(|&a, &b| share(a).total_cmp(&share(b)))
        else {
            break;
        };
        done[k] += 1;
        out.push(k);
    }
    out
}

/// Where operations' time went, from `serve`'s JSON log (controller debug lines, the same
/// clock as the harness): per step, the durations over the operations that logged it.
type Steps = Vec<(&'static str, Vec<Duration>)>;

/// One timed operation on a session, for [`log_steps`].
struct Timed<'a> {
    name: &'a str,
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
}

/// For each operation: sent, then the first log line of each of `marks` for its session
/// (in order, each after the one before), then answered; the steps between them, labelled
/// by `labels` (one more than `marks`). Operations missing a mark are left out.
fn log_steps(log: &str, ops: &[Timed<'_>], marks: &[&str], labels: &[&'static str]) -> Steps {
    let mut seen: HashMap<&str, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    let names: std::collections::HashSet<&str> = ops.iter().map(|o| o.name).collect();
    for l in log.lines() {
        if !marks.iter().any(|m| l.contains(m)) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(msg) = v["message"].as_str().filter(|m| marks.contains(m)) else {
            continue;
        };
        let Some(session) = v["span"]["session"].as_str().or(v["session"].as_str()) else {
            continue;
        };
        let (Some(&name), Some(t)) = (names.get(session), log_time(&v)) else {
            continue;
        };
        seen.entry(name).or_default().push((msg.to_string(), t));
    }
    let mut out: Steps = labels.iter().map(|l| (*l, Vec::new())).collect();
    for op in ops {
        let Some(lines) = seen.get(op.name) else {
            continue;
        };
        let mut points = vec![op.sent];
        for m in marks {
            let after = points[points.len() - 1];
            match lines.iter().find(|(msg, t)| msg == m && *t >= after) {
                Some((_, t)) => points.push(*t),
                None => break,
            }
        }
        if points.len() != marks.len() + 1 {
            continue;
        }
        points.push(op.answered);
        for (i, w) in points.windows(2).enumerate() {
            if let (Ok(d), Some(step)) = ((w[1] - w[0]).to_std(), out.get_mut(i)) {
                step.1.push(d);
            }
        }
    }
    out
}

/// A change to a session: its name, when it was sent, when its status said Running.
type Change = (String, DateTime<Utc>, DateTime<Utc>);

fn as_timed(v: &[Change]) -> Vec<Timed<'_>> {
    v.iter()
        .map(|(name, sent, answered)| Timed {
            name,
            sent: *sent,
            answered: *answered,
        })
        .collect()
}

fn timed(acquires: &[Acquire]) -> Vec<Timed<'_>> {
    acquires
        .iter()
        .map(|a| Timed {
            name: &a.name,
            sent: a.sent,
            answered: a.answered,
        })
        .collect()
}

struct AcquireResults {
    replicas: u32,
    gap: Duration,
    warm: Vec<Acquire>,
    cold: Vec<Acquire>,
    raw: Vec<Duration>,
    warm_steps: Steps,
    cold_steps: Steps,
    load: (String, String),
}

/// Warm acquires (a session naming a pool of `replicas`, spaced so that the pool refills),
/// cold ones (no pool) and raw create+starts of the same body, interleaved in one run.
async fn acquire_latency(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<AcquireResults> {
    let instance = unique(&format!("{run}aq"));
    let raw_instance = unique(&format!("{run}ar"));
    let o = Orchestrator::start(
        redis,
        &instance,
        dir,
        cfg,
        "mcp_orchestrator=info,mcp_orchestrator::controller=debug",
        &[],
    )
    .await?;
    let result = async {
        let store = Store::connect(&redis.url(), &instance).await?;
        store
            .pools()
            .create(&WarmPool::new(WARM_POOL, &cfg.image, cfg.pool_replicas))
            .await?;
        wait_pool_ready(
            &store,
            WARM_POOL,
            cfg.pool_replicas,
            0,
            Duration::from_secs(300),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let http = reqwest::Client::new();
        let base = o.api();
        let load0 = loadavg();
        let (mut warm, mut cold, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        let order = interleave(&[cfg.warm_acquires, cfg.cold_acquires, cfg.raw_acquires]);
        let total = order.len();
        for (k, kind) in order.into_iter().enumerate() {
            if k % 50 == 0 {
                eprintln!("bench:   acquire {}/{total}", k + 1);
            }
            match kind {
                0 => warm
                    .push(put_running(&http, &base, &pool_session(cfg, &format!("w{k}"))).await?),
                1 => cold.push(
                    put_running(&http, &base, &Session::new(&format!("c{k}"), &cfg.image)).await?,
                ),
                _ => {
                    let name = format!("r{k}");
                    let b = body(cfg, &raw_instance, &name, run);
                    let t0 = Instant::now();
                    create_start(docker, &container_name(&raw_instance, &name), b).await?;
                    raw.push(t0.elapsed());
                }
            }
            tokio::time::sleep(cfg.acquire_gap).await;
        }
        let load1 = loadavg();
        let log = o.log_text();
        let warm_steps = log_steps(
            &log,
            &timed(&warm),
            &["reconcile start", "observed", "claimed a warm sandbox"],
            &[
                "PUT sent → reconcile start (admission, store write, change stream, queue)",
                "reconcile start → the session's containers listed (Docker list + inspect)",
                "listed → claimed (plan, claim script in Redis)",
                "claimed → answer (Claimed event, status write, the wait's watch, HTTP)",
            ],
        );
        let cold_steps = log_steps(
            &log,
            &timed(&cold),
            &["reconcile start", "observed", "Session provisioned"],
            &[
                "PUT sent → reconcile start",
                "reconcile start → the session's containers listed",
                "listed → created and started (Docker create + start)",
                "started → answer (Provisioned event, status write, the wait's watch, HTTP)",
            ],
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(AcquireResults {
            replicas: cfg.pool_replicas,
            gap: cfg.acquire_gap,
            warm,
            cold,
            raw,
            warm_steps,
            cold_steps,
            load: (load0, load1),
        })
    }
    .await;
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    remove_all(
        docker,
        &format!("orchestrator.mcp.dev/instance={raw_instance}"),
    )
    .await?;
    result
}

/// One burst: N `PUT …?wait=Running` at once.
struct BurstRound {
    /// From the first request sent to the last answer.
    all: Duration,
    each: Vec<Duration>,
    warm: usize,
    reasons: Vec<String>,
}

async fn burst_once(http: &reqwest::Client, base: &str, sessions: Vec<Session>) -> Res<BurstRound> {
    let t0 = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let (http, base) = (http.clone(), base.to_string());
            tokio::spawn(async move { put_running(&http, &base, &s).await })
        })
        .collect();
    let mut round = BurstRound {
        all: Duration::ZERO,
        each: Vec::new(),
        warm: 0,
        reasons: Vec::new(),
    };
    for t in tasks {
        let a = t.await.map_err(|e| e.to_string())??;
        round.all = round.all.max(a.done - t0);
        round.each.push(a.took);
        round.warm += usize::from(a.warm);
        if let Some(r) = a.reason
            && !round.reasons.contains(&r)
        {
            round.reasons.push(r);
        }
    }
    Ok(round)
}

struct BurstResults {
    size: usize,
    warm: Vec<BurstRound>,
    cold: Vec<BurstRound>,
    /// Claimed pool members replaced: how long the pool took to be full again.
    refill: Vec<Duration>,
    load: (String, String),
}

/// N simultaneous acquires from a pool of N ready, then N simultaneous cold ones, repeated.
async fn burst(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<BurstResults> {
    let n = cfg.burst;
    let instance = unique(&format!("{run}bu"));
    let o = Orchestrator::start(redis, &instance, dir, cfg, "mcp_orchestrator=info", &[]).await?;
    let result = async {
        let store = Store::connect(&redis.url(), &instance).await?;
        store
            .pools()
            .create(&WarmPool::new(WARM_POOL, &cfg.image, n as u32))
            .await?;
        let http = reqwest::Client::new();
        let base = o.api();
        let mut out = BurstResults {
            size: n,
            warm: Vec::new(),
            cold: Vec::new(),
            refill: Vec::new(),
            load: (String::new(), String::new()),
        };
        wait_pool_ready(&store, WARM_POOL, n as u32, 0, Duration::from_secs(600)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        out.load.0 = loadavg();
        let mut claimed = 0;
        for rep in 0..cfg.burst_repeats {
            eprintln!("bench:   burst {}/{}: {n} warm", rep + 1, cfg.burst_repeats);
            let sessions = (0..n)
                .map(|i| pool_session(cfg, &format!("bw{rep}x{i}")))
                .collect();
            let round = burst_once(&http, &base, sessions).await?;
            claimed += round.warm as u32;
            out.warm.push(round);
            // Full again: every claim seen by the pool and replaced.
            out.refill.push(
                wait_pool_ready(
                    &store,
                    WARM_POOL,
                    n as u32,
                    claimed,
                    Duration::from_secs(600),
                )
                .await?,
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!("bench:   burst {}/{}: {n} cold", rep + 1, cfg.burst_repeats);
            let sessions = (0..n)
                .map(|i| Session::new(&format!("bc{rep}x{i}"), &cfg.image))
                .collect();
            out.cold.push(burst_once(&http, &base, sessions).await?);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        out.load.1 = loadavg();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
    }
    .await;
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    result
}

/// Until `name` is Running at generation ≥ `generation`, from the change stream after
/// `revision`.
async fn wait_ready_at(
    store: &Store,
    name: &str,
    generation: i64,
    revision: u64,
    limit: Duration,
) -> Res<(Instant, DateTime<Utc>)> {
    let mut watch = store.watch(revision).await?;
    let t0 = Instant::now();
    loop {
        for ev in watch.next_batch(Duration::from_millis(200)).await? {
            if ev.name == name
                && ev
                    .object
                    .as_ref()
                    .is_some_and(|s| s.generation() >= generation && s.is_ready())
            {
                return Ok((Instant::now(), Utc::now()));
            }
        }
        if t0.elapsed() > limit {
            return Err(
                format!("{name} not Running at generation {generation} after {limit:?}").into(),
            );
        }
    }
}

struct ComposeResults {
    n: usize,
    repeats: usize,
    /// `docker-compose up -d` after one service's environment changed.
    compose_change: Vec<Duration>,
    /// Containers compose recreated each time (should be 1).
    recreated: Vec<usize>,
    /// `apply -f` of the changed file → that session Running at its new generation.
    orch_change: Vec<Duration>,
    /// The `apply -f` command alone.
    orch_change_cli: Vec<Duration>,
    /// A store write of one session's changed spec (what the API does) → Running.
    orch_write: Vec<Duration>,
    /// `docker-compose up -d` with nothing changed.
    compose_noop: Vec<Duration>,
    /// `apply -f` of the unchanged file (the command's wall time).
    orch_noop: Vec<Duration>,
    /// Store writes the no-change applies made (should be 0).
    noop_writes: u64,
    compose_up: Duration,
    orch_up: Duration,
    resyncs: Vec<Resync>,
    /// Where the changes' time went (`apply -f`, store write), from `serve`'s log.
    change_steps: Steps,
    write_steps: Steps,
    load: (String, String),
}

/// docker-compose against the orchestrator on the same N services / sessions: one changed
/// service → its new container running, and a pass with nothing to do.
async fn versus_compose(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<ComposeResults> {
    let n = cfg.compose_n;
    let project = unique(&format!("{run}cv"));
    let pdir = dir.join(&project);
    std::fs::create_dir_all(&pdir)?;
    let limit = n + cfg.concurrency;
    let compose = |args: &[&str]| -> Res<std::process::Output> {
        let out = compose_run(&project, &pdir, limit, args)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            return Err(format!("docker-compose {args:?} failed ({}): {tail}", out.status).into());
        }
        Ok(out)
    };
    let cfile = pdir.join("docker-compose.yml");
    let instance = unique(&format!("{run}co"));
    let sfile = dir.join(format!("{instance}.yaml"));
    let write_sessions = |revs: &[u32]| {
        std::fs::write(
            &sfile,
            sessions_yaml_with(cfg, n, "s", |i| {
                format!("  env:\n    {REV_VAR}: \"{}\"\n", revs[i])
            }),
        )
    };
    let o = Orchestrator::start(
        redis,
        &instance,
        dir,
        cfg,
        "mcp_orchestrator=info,mcp_orchestrator::controller=debug",
        &[],
    )
    .await?;
    let result = async {
        let store = Store::connect(&redis.url(), &instance).await?;
        // Compose's services and the orchestrator's sessions carry their own revisions: a
        // store write changes a session that compose has no counterpart of.
        let mut compose_revs = vec![0u32; n];
        let mut session_revs = vec![0u32; n];
        std::fs::write(&cfile, compose_file_env(cfg, n, run, Some(&compose_revs)))?;
        let t0 = Instant::now();
        compose(&["up", "-d", "--no-build"])?;
        let compose_up = t0.elapsed();
        write_sessions(&session_revs)?;
        let revision = store.list().await?.revision;
        let t0 = Instant::now();
        let done = tokio::spawn({
            let store = store.clone();
            async move { wait_all_running(&store, revision, n, Duration::from_secs(600)).await }
        });
        apply(redis, &instance, &sfile)?;
        let orch_up = done.await.map_err(|e| e.to_string())?? - t0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let load0 = loadavg();
        let mut r = ComposeResults {
            n,
            repeats: cfg.compose_repeats,
            compose_change: Vec::new(),
            recreated: Vec::new(),
            orch_change: Vec::new(),
            orch_change_cli: Vec::new(),
            orch_write: Vec::new(),
            compose_noop: Vec::new(),
            orch_noop: Vec::new(),
            noop_writes: 0,
            compose_up,
            orch_up,
            resyncs: Vec::new(),
            change_steps: Vec::new(),
            write_steps: Vec::new(),
            load: (load0, String::new()),
        };
        // (session, sent, answered) of each change, for the log's breakdown.
        let mut changes: Vec<Change> = Vec::new();
        let mut writes: Vec<Change> = Vec::new();
        for rep in 0..cfg.compose_repeats {
            eprintln!(
                "bench:   compose comparison {}/{}",
                rep + 1,
                cfg.compose_repeats
            );
            let idx = (7 + rep * 13) % n;
            compose_revs[idx] += 1;
            session_revs[idx] += 1;
            // The order alternates, so that drift of the machine hits both alike.
            for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    std::fs::write(&cfile, compose_file_env(cfg, n, run, Some(&compose_revs)))?;
                    let t0 = Instant::now();
                    let out = compose(&["up", "-d", "--no-build"])?;
                    r.compose_change.push(t0.elapsed());
                    // "Recreating NAME ..." and later "Recreating NAME ... done".
                    let names: std::collections::HashSet<String> =
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .filter_map(|l| l.split("Recreating ").nth(1))
                            .filter_map(|rest| rest.split_whitespace().next())
                            .map(str::to_string)
                            .collect();
                    r.recreated.push(names.len());
                } else {
                    write_sessions(&session_revs)?;
                    let name = format!("s{idx}");
                    let generation = store
                        .get(&name)
                        .await?
                        .ok_or("session vanished")?
                        .generation();
                    let revision = store.revision().await?;
                    let waiting = tokio::spawn({
                        let (store, name) = (store.clone(), name.clone());
                        async move {
                            wait_ready_at(
                                &store,
                                &name,
                                generation + 1,
                                revision,
                                Duration::from_secs(60),
                            )
                            .await
                        }
                    });
                    let (t0, sent) = (Instant::now(), Utc::now());
                    apply(redis, &instance, &sfile)?;
                    r.orch_change_cli.push(t0.elapsed());
                    let (end, answered) = waiting.await.map_err(|e| e.to_string())??;
                    r.orch_change.push(end - t0);
                    changes.push((name, sent, answered));
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The API's way: one store write (compare-and-swap) of another session.
            let widx = (idx + n / 2) % n;
            let name = format!("s{widx}");
            let mut s = store.get(&name).await?.ok_or("session vanished")?;
            session_revs[widx] += 1;
            s.spec
                .env
                .insert(REV_VAR.into(), session_revs[widx].to_string());
            s.status = None;
            let revision = store.revision().await?;
            let waiting = tokio::spawn({
                let (store, name, generation) = (store.clone(), name.clone(), s.generation() + 1);
                async move {
                    wait_ready_at(&store, &name, generation, revision, Duration::from_secs(60))
                        .await
                }
            });
            let (t0, sent) = (Instant::now(), Utc::now());
            store.update(&s).await?;
            let (end, answered) = waiting.await.map_err(|e| e.to_string())??;
            r.orch_write.push(end - t0);
            writes.push((name, sent, answered));
            write_sessions(&session_revs)?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Nothing changed: each tool's pass over its unchanged file.
            for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    let t0 = Instant::now();
                    compose(&["up", "-d", "--no-build"])?;
                    r.compose_noop.push(t0.elapsed());
                } else {
                    let before = store.revision().await?;
                    let t0 = Instant::now();
                    apply(redis, &instance, &sfile)?;
                    r.orch_noop.push(t0.elapsed());
                    r.noop_writes += store.revision().await? - before;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        r.load.1 = loadavg();
        let log = o.log_text();
        r.resyncs = resync_passes(&log);
        let marks = [
            "reconcile start",
            "observed",
            "removed container",
            "Session provisioned",
        ];
        r.change_steps = log_steps(
            &log,
            &as_timed(&changes),
            &marks,
            &[
                "`apply -f` started → reconcile start (the CLI's start-up, parsing, admission, reads and write; the change stream; the queue)",
                "reconcile start → the session's containers listed (Docker list + inspect)",
                "listed → the old container removed (Docker remove, forced)",
                "removed → the new one created and started (Docker create + start)",
                "started → status Running seen on the change stream (event, status write)",
            ],
        );
        r.write_steps = log_steps(
            &log,
            &as_timed(&writes),
            &marks,
            &[
                "store write → reconcile start",
                "reconcile start → containers listed",
                "listed → old container removed",
                "removed → new one created and started",
                "started → status Running seen",
            ],
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(r)
    }
    .await;
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    remove_all(docker, &format!("com.docker.compose.project={project}")).await?;
    let _ = compose_run(&project, &pdir, limit, &["down", "--remove-orphans"]);
    result
}

struct ScaleResults {
    acquire: AcquireResults,
    burst: BurstResults,
    compose: ComposeResults,
    idle: Idle,
    load_start: String,
    load_end: String,
}

async fn scale(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<ScaleResults> {
    let load_start = loadavg();
    eprintln!(
        "bench: warm pool acquires ({} warm, {} cold, {} raw)",
        cfg.warm_acquires, cfg.cold_acquires, cfg.raw_acquires
    );
    let acquire = acquire_latency(docker, redis, dir, cfg, run).await?;
    eprintln!("bench: bursts of {} acquires", cfg.burst);
    let burst = burst(docker, redis, dir, cfg, run).await?;
    eprintln!("bench: docker-compose comparison at {}", cfg.compose_n);
    let compose = versus_compose(docker, redis, dir, cfg, run).await?;
    eprintln!("bench: idle cost at {} sessions", cfg.idle_n);
    let idle = idle_cost(docker, redis, dir, cfg, run).await?;
    Ok(ScaleResults {
        acquire,
        burst,
        compose,
        idle,
        load_start,
        load_end: loadavg(),
    })
}

/// p50 / p99 / max of some durations, in ms.
fn pcts(v: &[Duration]) -> (String, String, String) {
    let d = Dist::new(v);
    (ms(d.p(0.5)), ms(d.p(0.99)), ms(d.max()))
}

/// "met" or "not met" against a target.
fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

/// The write-up of [`scale`].
fn write_scale(r: &mut String, cfg: &Config, s: &ScaleResults, heading: bool) {
    if heading {
        let _ = writeln!(r, "{SCALE_HEADING}\n");
    }
    let _ = writeln!(
        r,
        "One run, release build, `serve` with its defaults (`RECONCILE_CONCURRENCY={}`, resync every 30 s), its own Redis, the image `{}`. Percentiles nearest-rank. Load average (1, 5, 15 min; the machine's, this run's own processes included): {} at the start, {} at the end.\n",
        cfg.concurrency, cfg.image, s.load_start, s.load_end
    );

    // 1. Acquire latency.
    let a = &s.acquire;
    let warm: Vec<Duration> = a.warm.iter().map(|x| x.took).collect();
    let cold: Vec<Duration> = a.cold.iter().map(|x| x.took).collect();
    let served = a.warm.iter().filter(|x| x.warm).count();
    let mut fallbacks: Vec<String> = a.warm.iter().filter_map(|x| x.reason.clone()).collect();
    fallbacks.sort();
    fallbacks.dedup();
    let _ = writeln!(
        r,
        "### Acquire latency: `PUT /api/v1/sessions/{{name}}?wait=Running` → the answer\n"
    );
    let _ = writeln!(
        r,
        "{} acquires from a warm pool (`spec.pool`, a pool of {} kept ready), {} cold ones (no pool) and {} create+starts of the same create body straight through bollard (the engine alone, for reference), interleaved in one sequence, {} ms apart (so that the pool refills between claims). Timed from sending the request to the whole answer (one HTTP client, connections reused); the answer is the session Running. Load average {} before, {} after.\n",
        a.warm.len(),
        a.replicas,
        a.cold.len(),
        a.raw.len(),
        a.gap.as_millis(),
        a.load.0,
        a.load.1,
    );
    let (w50, w99, wmax) = pcts(&warm);
    let (c50, c99, cmax) = pcts(&cold);
    let (r50, r99, rmax) = pcts(&a.raw);
    let wd = Dist::new(&warm);
    let _ = writeln!(
        r,
        "| | acquires | p50 (target ≤ 25 ms) | p99 (target ≤ 100 ms) | max |\n|---|---|---|---|---|\n| warm pool | {} ({served} served warm) | {w50} ms ({}) | {w99} ms ({}) | {wmax} ms |\n| cold (no pool) | {} | {c50} ms | {c99} ms | {cmax} ms |\n| raw engine create+start (bollard, same body) | {} | {r50} ms | {r99} ms | {rmax} ms |\n| warm ÷ cold | | {} | {} | |\n",
        a.warm.len(),
        verdict(wd.p(0.5) <= Duration::from_millis(25)),
        verdict(wd.p(0.99) <= Duration::from_millis(100)),
        a.cold.len(),
        a.raw.len(),
        ratio(wd.p(0.5), Dist::new(&cold).p(0.5)),
        ratio(wd.p(0.99), Dist::new(&cold).p(0.99)),
    );
    if served < a.warm.len() {
        let _ = writeln!(
            r,
            "{} of the pool's acquires were created cold ({}): they are in the warm row.\n",
            a.warm.len() - served,
            fallbacks.join(", ")
        );
    }
    let _ = writeln!(
        r,
        "Where the time goes, from `serve`'s log (`mcp_orchestrator::controller=debug`, JSON, the harness's clock): per step p50 / p99 / max.\n\n| step | warm p50 / p99 / max | | step | cold p50 / p99 / max |\n|---|---|---|---|---|"
    );
    for (w, c) in a.warm_steps.iter().zip(&a.cold_steps) {
        let (w50, w99, wmax) = pcts(&w.1);
        let (c50, c99, cmax) = pcts(&c.1);
        let _ = writeln!(
            r,
            "| {} | {w50} / {w99} / {wmax} ms | | {} | {c50} / {c99} / {cmax} ms |",
            w.0, c.0
        );
    }
    let _ = writeln!(r);

    // 2. Bursts.
    let b = &s.burst;
    let _ = writeln!(r, "### A burst of {} simultaneous acquires\n", b.size);
    let _ = writeln!(
        r,
        "{} `PUT …?wait=Running` sent at once (one task each), timed from the first request to the last answer; warm: from a pool of {} ready, cold: no pool. {} rounds, each warm burst then, once the pool is full again, a cold one. Load average {} before, {} after.\n",
        b.size,
        b.size,
        b.warm.len(),
        b.load.0,
        b.load.1
    );
    let round_cell = |rounds: &[BurstRound]| {
        let mut all: Vec<Duration> = rounds.iter().map(|x| x.all).collect();
        let each: Vec<Duration> = rounds.iter().flat_map(|x| x.each.clone()).collect();
        let list = all.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
        let (m, _, _) = median(&mut all);
        let (e50, _, emax) = pcts(&each);
        (m, list, e50, emax)
    };
    let (wm, wl, we50, wemax) = round_cell(&b.warm);
    let (cm, cl, ce50, cemax) = round_cell(&b.cold);
    let warm_served: Vec<String> = b.warm.iter().map(|x| x.warm.to_string()).collect();
    let _ = writeln!(
        r,
        "| burst of {} | all Running, median (target ≤ 1 s) | each round | one request p50 / max | served warm |\n|---|---|---|---|---|\n| warm pool of {} | {} ms ({}) | {wl} ms | {we50} / {wemax} ms | {} of {} |\n| cold | {} ms | {cl} ms | {ce50} / {cemax} ms | - |\n| warm ÷ cold | {} | | | |\n",
        b.size,
        b.size,
        ms(wm),
        verdict(wm <= Duration::from_secs(1)),
        warm_served.join(", "),
        b.size,
        ms(cm),
        ratio(wm, cm),
    );
    let mut fell: Vec<String> = b.warm.iter().flat_map(|x| x.reasons.clone()).collect();
    fell.sort();
    fell.dedup();
    if !fell.is_empty() {
        let _ = writeln!(
            r,
            "Some acquires of the warm bursts were created cold (status reason {}).\n",
            fell.join(", ")
        );
    }
    let mut refill = b.refill.clone();
    if !refill.is_empty() {
        let _ = writeln!(
            r,
            "After each warm burst the pool was full again ({} ready, the claims replaced) {} ms after the burst's last answer (median).\n",
            b.size,
            ms(median(&mut refill).0)
        );
    }

    // 3. Idle cost and Redis memory.
    let i = &s.idle;
    let k = i.kinds;
    let in_window: Vec<&Resync> = i
        .resyncs
        .iter()
        .filter(|x| x.at >= i.window.0 && x.at <= i.window.1)
        .collect();
    let passes = |v: &[&Resync]| {
        v.iter()
            .map(|x| format!("{} ms ({} queued)", x.took_ms, x.enqueued))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all_passes: Vec<&Resync> = i.resyncs.iter().collect();
    let worst = in_window.iter().map(|x| x.took_ms).max().unwrap_or(0);
    let between = i.calls - k.bulk_lists;
    let _ = writeln!(r, "### Idle cost at {} sessions\n", i.n);
    let _ = writeln!(
        r,
        "{} real sessions, {} of them with `ttlSeconds: {}` (a timer each; none expires during the run). Stored with `apply -f` before any `serve` ran; `serve` then started and made them all Running in {} s (start → every status Running). Measured over {} s with nothing changing, after a restart of `serve` behind a unix-socket proxy that counts the Docker API requests (the window starts once no call was made for 3 s).\n",
        i.n,
        i.with_ttl,
        i.ttl_secs,
        format_args!("{:.1}", i.converge.as_secs_f64()),
        i.secs,
    );
    let _ = writeln!(
        r,
        "| CPU (of one core, target ≤ 0.5 %) | RSS (target ≤ 64 MiB) | Docker API calls between resyncs (target 0) | all calls in the window | resync pass (target ≤ 300 ms) |\n|---|---|---|---|---|\n| {:.2} % ({}) | {:.1} MiB ({}) | {between} ({}) | {} ({:.2}/s): {} bulk lists (the resyncs'), {} per-session lists, {} inspects, {} pool lists, {} other | {worst} ms worst in the window ({}) |\n",
        i.cpu_pct,
        verdict(i.cpu_pct <= 0.5),
        i.rss_mib,
        verdict(i.rss_mib <= 64.0),
        verdict(between == 0),
        i.calls,
        i.calls_per_s,
        k.bulk_lists,
        k.session_lists,
        k.inspects,
        k.pool_lists,
        k.other,
        verdict(!in_window.is_empty() && worst <= 300),
    );
    let _ = writeln!(
        r,
        "Resync passes in the window: {}. Every pass `serve` logged since its restart (the first right after start-up): {}.\n",
        if in_window.is_empty() {
            "none".to_string()
        } else {
            passes(&in_window)
        },
        passes(&all_passes),
    );
    let m = &i.mem;
    let n = i.n.max(1) as f64;
    let per = |bytes: u64| format!("{:.0} B", bytes as f64 / n);
    let stored = m.stored.saturating_sub(m.before);
    let running = m.running.saturating_sub(m.before);
    let _ = writeln!(
        r,
        "Redis memory (`INFO memory` used_memory; keys by `MEMORY USAGE … SAMPLES 0`), per session = ÷ {}:\n\n| | total | per session |\n|---|---|---|\n| used_memory before the sessions | {} | |\n| + the sessions stored (no status yet) | {} | {} |\n| + every status Running (status writes, change stream, events) | {} | {} |\n| change stream `mcpo:<instance>:stream`, stored → Running | {} ({} entries) → {} ({} entries) | {} → {} |\n| objects hash, stored → Running | {} → {} | {} → {} |\n| versions hash (Running) | {} | {} |\n| event lists `log:<name>`, summed (Running) | {} | {} |\n",
        i.n,
        mib(m.before),
        mib(stored),
        per(stored),
        mib(running),
        per(running),
        mib(m.stream.0),
        m.stream_len.0,
        mib(m.stream.1),
        m.stream_len.1,
        per(m.stream.0),
        per(m.stream.1),
        mib(m.objects.0),
        mib(m.objects.1),
        per(m.objects.0),
        per(m.objects.1),
        mib(m.versions),
        per(m.versions),
        mib(m.logs),
        per(m.logs),
    );

    // 4. docker-compose.
    let c = &s.compose;
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        if v.is_empty() {
            return (Duration::ZERO, String::new());
        }
        let list = v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
        (median(&mut v).0, list)
    };
    let (cc, ccl) = med(&c.compose_change);
    let (oc, ocl) = med(&c.orch_change);
    let (occ, _) = med(&c.orch_change_cli);
    let (ow, owl) = med(&c.orch_write);
    let (cn, cnl) = med(&c.compose_noop);
    let (on, onl) = med(&c.orch_noop);
    let ratio_of = |a: Duration, b: Duration| {
        if b.is_zero() {
            0.0
        } else {
            a.as_secs_f64() / b.as_secs_f64()
        }
    };
    let _ = writeln!(r, "### Against docker-compose at {} services\n", c.n);
    let _ = writeln!(
        r,
        "The same {} services (compose 1.29, the convergence section's service definition plus `environment: {{{REV_VAR}: …}}`, `COMPOSE_PARALLEL_LIMIT` {}) and sessions (`spec.env`), both up and idle; {} rounds, the two sides' order alternating. *Changed*: one service's / session's `{REV_VAR}` value changes in the file, then `docker-compose up -d` (returns once the new container started; it recreated {} container(s) per round) against `mcp-orchestrator apply -f` of the changed file (release binary) → that session's status Running at its new generation (from the change stream). *No change*: `docker-compose up -d` against `apply -f` of the unchanged file (the command's wall time; it wrote nothing: {} store writes in all). Start-up for reference: compose `up -d` of all {} took {} ms, apply → all Running {} ms. Load average {} before the rounds, {} after.\n",
        c.n,
        c.n + cfg.concurrency,
        c.repeats,
        c.recreated
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        c.noop_writes,
        c.n,
        ms(c.compose_up),
        ms(c.orch_up),
        c.load.0,
        c.load.1,
    );
    let rc = ratio_of(oc, cc);
    let rn = ratio_of(on, cn);
    let _ = writeln!(
        r,
        "| | orchestrator, median | docker-compose up -d, median | orchestrator ÷ compose | target |\n|---|---|---|---|---|\n| one service changed → its new container running | {} ms (`apply -f` → Running; the command alone {} ms) | {} ms | {:.3}× | ≤ 0.15× ({}) |\n| no change | {} ms (`apply -f`) | {} ms | {:.3}× | ≤ 0.02× ({}) |\n| one session changed by a store write (the API's way) → Running | {} ms | - | {:.3}× | |\n",
        ms(oc),
        ms(occ),
        ms(cc),
        rc,
        verdict(rc <= 0.15),
        ms(on),
        ms(cn),
        rn,
        verdict(rn <= 0.02),
        ms(ow),
        ratio_of(ow, cc),
    );
    let _ = writeln!(
        r,
        "Where a change's time goes, from `serve`'s log (p50 / p99 / max over the rounds):\n\n| step | `apply -f` of the changed file | | step | store write |\n|---|---|---|---|---|"
    );
    for (a, w) in c.change_steps.iter().zip(&c.write_steps) {
        let (a50, a99, amax) = pcts(&a.1);
        let (w50, w99, wmax) = pcts(&w.1);
        let _ = writeln!(
            r,
            "| {} | {a50} / {a99} / {amax} ms | | {} | {w50} / {w99} / {wmax} ms |",
            a.0, w.0
        );
    }
    let _ = writeln!(r);
    let resync100: Vec<&Resync> = c.resyncs.iter().collect();
    let _ = writeln!(
        r,
        "Each round: changed: compose {ccl} ms; orchestrator {ocl} ms; store write {owl} ms. No change: compose {cnl} ms; orchestrator {onl} ms. The orchestrator's own no-change pass over the {} sessions, its resync (one Docker list, every session planned in memory): {}.\n",
        c.n,
        if resync100.is_empty() {
            "none logged during the rounds".to_string()
        } else {
            passes(&resync100)
        },
    );
}

// ---------------------------------------------------------------------------------------
// The MCP gateway: an `echo` tool call through `serve`'s gateway against the same client
// over stdio to `docker run -i` of the same image under the same sandbox settings.

/// The bearer token of the MCP run's `serve`.
const MCP_TOKEN: &str = "bench-mcp-token";
/// Untimed calls per client before the timed ones (the first attaches upstream).
const MCP_WARMUP: usize = 20;
/// Put on the containers the direct path starts (besides the run's label).
const MCP_TEST_LABEL: &str = "orchestrator.mcp.dev/test=mcp-bench";

/// How a client negotiates: the 2026-07-28 revision (`server/discover`, stateless requests)
/// or the 2025-11-25 `initialize` handshake (a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum McpMode {
    Auto,
    Legacy,
}

impl McpMode {
    fn arg(self) -> &'static str {
        match self {
            McpMode::Auto => "auto",
            McpMode::Legacy => "legacy",
        }
    }
    fn label(self) -> &'static str {
        match self {
            McpMode::Auto => "2026-07-28 (stateless)",
            McpMode::Legacy => "2025-11-25 (session)",
        }
    }
}

/// Which way a client reaches the sandbox's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum McpPath {
    /// `serve`'s gateway (Streamable HTTP), which reaches the sandbox through the attach API.
    Gateway,
    /// The client's own `docker run -i`, MCP on its stdin/stdout.
    Direct,
}

/// Both ends: the gateway URL and the direct path's docker command line.
#[derive(Clone)]
struct McpEnds {
    url: String,
    docker: String,
    run_args: Vec<String>,
}

/// The docker client for the direct path: `$DOCKER`, else Debian's (which matches the
/// engine's API), else whatever `docker` is on the PATH.
fn docker_cli() -> String {
    std::env::var("DOCKER").unwrap_or_else(|_| {
        if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker".into()
        } else {
            "docker".into()
        }
    })
}

/// `docker run -i --rm` of the sandbox image with the settings of the very create body the
/// orchestrator sends ([`body`]): no network, read-only root, all capabilities dropped,
/// no-new-privileges, the user, the /tmp tmpfs, memory, CPU, pids, IPC, ulimit and log
/// settings. Only the orchestrator's own labels are left out.
fn sandbox_run_args(cfg: &Config, run: &str) -> Vec<String> {
    let b = body(cfg, "bench-mcp", "direct", run);
    let h = b.host_config.clone().unwrap_or_default();
    let mut a: Vec<String> = vec!["run".into(), "-i".into(), "--rm".into()];
    let mut flag = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    if let Some(n) = h.network_mode {
        flag("--network", n);
    }
    for c in h.cap_drop.unwrap_or_default() {
        flag("--cap-drop", c);
    }
    for o in h.security_opt.unwrap_or_default() {
        flag("--security-opt", o);
    }
    let mut tmpfs: Vec<_> = h.tmpfs.unwrap_or_default().into_iter().collect();
    tmpfs.sort();
    for (path, opts) in tmpfs {
        flag("--tmpfs", format!("{path}:{opts}"));
    }
    if let Some(m) = h.memory {
        flag("--memory", m.to_string());
    }
    if let Some(m) = h.memory_swap {
        flag("--memory-swap", m.to_string());
    }
    if let Some(n) = h.nano_cpus {
        flag("--cpus", format!("{}", n as f64 / 1e9));
    }
    if let Some(p) = h.pids_limit {
        flag("--pids-limit", p.to_string());
    }
    if let Some(i) = h.ipc_mode {
        flag("--ipc", i);
    }
    for u in h.ulimits.unwrap_or_default() {
        let (n, s, hd) = (u.name.unwrap_or_default(), u.soft, u.hard);
        flag(
            "--ulimit",
            format!("{n}={}:{}", s.unwrap_or(0), hd.unwrap_or(0)),
        );
    }
    if let Some(l) = h.log_config {
        if let Some(t) = l.typ {
            flag("--log-driver", t);
        }
        let mut opts: Vec<_> = l.config.unwrap_or_default().into_iter().collect();
        opts.sort();
        for (k, v) in opts {
            flag("--log-opt", format!("{k}={v}"));
        }
    }
    if let Some(u) = b.user {
        flag("--user", u);
    }
    for e in b.env.unwrap_or_default() {
        flag("--env", e);
    }
    flag("--label", format!("{RUN_LABEL}={run}"));
    flag("--label", MCP_TEST_LABEL.to_string());
    if h.readonly_rootfs == Some(true) {
        a.push("--read-only".into());
    }
    a.push(b.image.unwrap_or_else(|| cfg.image.clone()));
    a.extend(b.cmd.unwrap_or_default());
    a
}

/// What one `client.py bench` printed.
struct PyRun {
    latencies: Vec<Duration>,
    calls_per_s: f64,
    setup_s: f64,
    versions: Vec<String>,
}

/// The MCP client driver on the official Python SDK (`tests/mcp/client.py`) in the venv
/// `ensure_mcp_sdk` makes (`$MCP_VENV`, default `target/mcp-venv`).
struct Py {
    python: PathBuf,
    script: PathBuf,
}

impl Py {
    fn locate() -> Res<Py> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = std::env::var_os("MCP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/mcp-venv"));
        let py = Py {
            python: venv.join("bin/python"),
            script: root.join("tests/mcp/client.py"),
        };
        if !py.python.exists() {
            return Err(format!(
                "the MCP Python SDK venv is missing ({}): scripts/bench makes it \
                 (`source scripts/lib.sh && ensure_mcp_sdk`)",
                py.python.display()
            )
            .into());
        }
        Ok(py)
    }

    /// `client.py bench` over `path` in `mode`: `calls` timed calls over `clients` clients
    /// (each with its own connection; over stdio each spawns its own `docker run -i`).
    async fn bench(
        &self,
        ends: &McpEnds,
        path: McpPath,
        mode: McpMode,
        calls: usize,
        clients: usize,
    ) -> Res<PyRun> {
        let mut c = tokio::process::Command::new(&self.python);
        c.arg(&self.script);
        match path {
            McpPath::Gateway => c.args(["--url", &ends.url, "--token", MCP_TOKEN]),
            McpPath::Direct => c.arg("--stdio"),
        };
        c.args(["--mode", mode.arg(), "bench", "--raw"])
            .args(["--calls", &calls.to_string()])
            .args(["--clients", &clients.to_string()])
            .args(["--warmup", &MCP_WARMUP.to_string()]);
        if path == McpPath::Direct {
            c.arg("--").arg(&ends.docker).args(&ends.run_args);
        }
        c.stdin(Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(900), c.output())
            .await
            .map_err(|_| format!("client.py bench ({path:?}, {mode:?}) took over 15 min"))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = |s: &str| {
            s.chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        };
        if !out.status.success() {
            return Err(format!(
                "client.py bench ({path:?}, {mode:?}) failed ({}): {}",
                out.status,
                tail(&stderr)
            )
            .into());
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("client.py bench printed {line:?}: {e}"))?;
        let latencies = v["latencies_ms"]
            .as_array()
            .ok_or("client.py bench printed no latencies_ms")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .collect();
        Ok(PyRun {
            latencies,
            calls_per_s: v["calls_per_s"].as_f64().unwrap_or(0.0),
            setup_s: v["setup_s"].as_f64().unwrap_or(0.0),
            versions: v["protocol_versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
        })
    }
}

type RustClient = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// rmcp's client over `transport`, negotiating as `mode` says.
async fn rust_connect<T, E, A>(transport: T, mode: McpMode) -> Res<RustClient>
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::ServiceExt;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let client = match mode {
        McpMode::Legacy => ().serve(transport).await?,
        McpMode::Auto => {
            let lifecycle = ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            };
            ().serve_with_lifecycle(transport, lifecycle).await?
        }
    };
    Ok(client)
}

/// rmcp's Streamable HTTP client on the gateway.
async fn rust_gateway(ends: &McpEnds, mode: McpMode) -> Res<RustClient> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config =
        StreamableHttpClientTransportConfig::with_uri(ends.url.clone()).auth_header(MCP_TOKEN);
    rust_connect(StreamableHttpClientTransport::from_config(config), mode).await
}

/// rmcp's client on the stdin/stdout of a `docker run -i` of its own (as the orchestrator's
/// upstream serves rmcp over the attach stream's reader and writer).
async fn rust_direct(ends: &McpEnds, mode: McpMode) -> Res<(RustClient, tokio::process::Child)> {
    let mut child = tokio::process::Command::new(&ends.docker)
        .args(&ends.run_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let client = rust_connect((stdout, stdin), mode).await?;
    Ok((client, child))
}

/// `warmup` untimed then `n` timed `echo` calls, each answer checked; the timed latencies.
async fn rust_echo(client: &RustClient, tag: &str, warmup: usize, n: usize) -> Res<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let text = format!("{tag}-{i}");
        let args = serde_json::json!({ "text": text });
        let params = rmcp::model::CallToolRequestParams::new("echo")
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        let t0 = Instant::now();
        let r = client.peer().call_tool(params).await?;
        let took = t0.elapsed();
        let got = serde_json::to_value(&r)?;
        if got["content"][0]["text"] != text.as_str() {
            return Err(format!("echo {text:?} answered {got}").into());
        }
        if i >= warmup {
            out.push(took);
        }
    }
    Ok(out)
}

/// One Rust run of `n` timed calls over `path`, on a new connection.
async fn rust_bench(ends: &McpEnds, path: McpPath, mode: McpMode, n: usize) -> Res<Vec<Duration>> {
    match path {
        McpPath::Gateway => {
            let c = rust_gateway(ends, mode).await?;
            let r = rust_echo(&c, "g", MCP_WARMUP, n).await;
            let _ = c.cancel().await;
            r
        }
        McpPath::Direct => {
            let (c, mut child) = rust_direct(ends, mode).await?;
            let r = rust_echo(&c, "d", MCP_WARMUP, n).await;
            // Closing stdin ends the server, and `--rm` the container.
            let _ = c.cancel().await;
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            r
        }
    }
}

/// `clients` rmcp clients on the gateway at once, `calls` timed calls split evenly: the
/// latencies, and calls/s from the moment every client is connected and warmed up.
async fn rust_throughput(
    ends: &McpEnds,
    clients: usize,
    calls: usize,
) -> Res<(Vec<Duration>, f64, f64)> {
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(tokio::spawn({
            let ends = ends.clone();
            async move {
                let c = rust_gateway(&ends, McpMode::Auto).await?;
                rust_echo(&c, "w", MCP_WARMUP, 0).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
            }
        }));
    }
    let mut ready = Vec::new();
    for c in conns {
        ready.push(Arc::new(c.await??));
    }
    let setup = t0.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in ready.iter().enumerate() {
        let n = calls / clients + usize::from(i < calls % clients);
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            rust_echo(&c, &format!("t{i}"), 0, n).await
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for c in ready {
        if let Ok(c) = Arc::try_unwrap(c) {
            let _ = c.cancel().await;
        }
    }
    let calls_per_s = all.len() as f64 / elapsed;
    Ok((all, calls_per_s, setup))
}

/// Round-trip latencies of one client kind in one mode, both paths.
struct RoundTrip {
    client: &'static str,
    mode: McpMode,
    gateway: Vec<Duration>,
    direct: Vec<Duration>,
    versions: Vec<String>,
}

/// One throughput line.
struct Throughput {
    what: String,
    clients: usize,
    latencies: Vec<Duration>,
    calls_per_s: f64,
    setup_s: f64,
    /// Through the gateway: CPU per call of `serve` and of the sandbox.
    cpu: Option<String>,
}

/// CPU time (seconds) of a container's cgroup and its CFS throttled periods so far
/// (cgroup v1, else v2).
fn cgroup_cpu(id: &str) -> Option<(f64, u64)> {
    let field = |stat: &str, key: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    if let Ok(ns) =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"))
    {
        let stat = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/docker/{id}/cpu.stat"))
            .unwrap_or_default();
        let used = ns.trim().parse::<f64>().ok()? / 1e9;
        return Some((used, field(&stat, "nr_throttled ")));
    }
    let stat = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"
    ))
    .ok()?;
    Some((
        field(&stat, "usage_usec ") as f64 / 1e6,
        field(&stat, "nr_throttled "),
    ))
}

/// CPU of `serve` (pid) and of the sandbox (container id) at one moment.
type CpuProbe = (f64, Option<(f64, u64)>);

fn cpu_probe(serve: u32, sandbox: Option<&str>) -> CpuProbe {
    (cpu_seconds(serve), sandbox.and_then(cgroup_cpu))
}

/// What `serve` and the sandbox used per call between two probes.
fn cpu_note(a: &CpuProbe, b: &CpuProbe, calls: usize) -> String {
    let per = |s: f64| s * 1e6 / calls.max(1) as f64;
    let mut note = format!("serve {:.0} µs", per(b.0 - a.0));
    if let (Some((u0, t0)), Some((u1, t1))) = (a.1, b.1) {
        let _ = write!(
            note,
            ", sandbox {:.0} µs ({} CFS periods throttled)",
            per(u1 - u0),
            t1.saturating_sub(t0)
        );
    }
    note
}

struct McpResults {
    round_trips: Vec<RoundTrip>,
    throughput: Vec<Throughput>,
    skipped: Option<String>,
    per_round: usize,
    rounds: usize,
    in_flight: usize,
    run_args: Vec<String>,
    /// `serve`'s CPU time per gateway call (timed and warm-up) during the round trips.
    serve_cpu_us_per_call: f64,
    load_before: String,
    /// After the round trips, before the throughput runs (which load the machine themselves).
    load_mid: String,
    load_after: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The MCP gateway against direct stdio (see the module docs and [`write_mcp`]).
async fn mcp_gateway(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<McpResults> {
    let py = Py::locate()?;
    let instance = unique(&format!("{run}mcp"));
    // Every one of the throughput clients may have a call in flight at once.
    let in_flight = cfg.mcp_clients.max(64);
    let o = Orchestrator::start(
        redis,
        &instance,
        dir,
        cfg,
        "info",
        &[
            ("ORCHESTRATOR_TOKEN", MCP_TOKEN.to_string()),
            ("MCP_MAX_IN_FLIGHT", in_flight.to_string()),
        ],
    )
    .await?;
    let store = Store::connect(&redis.url(), &instance).await?;
    created_running(&store, cfg, "mcp", Instant::now()).await?;
    let ends = McpEnds {
        url: o.mcp_url("mcp"),
        docker: docker_cli(),
        run_args: sandbox_run_args(cfg, run),
    };
    let rounds = cfg.mcp_rounds;
    let per_round = cfg.mcp_calls.div_ceil(rounds);
    let load_before = loadavg();
    let mut rts: Vec<RoundTrip> = Vec::new();
    for client in ["Python SDK", "Rust rmcp"] {
        for mode in [McpMode::Auto, McpMode::Legacy] {
            rts.push(RoundTrip {
                client,
                mode,
                gateway: Vec::new(),
                direct: Vec::new(),
                versions: Vec::new(),
            });
        }
    }
    let cpu0 = cpu_seconds(o.pid());
    let mut gateway_calls = 0;
    // Interleaved: every round runs every client, mode and path, the paths' order
    // alternating, so that drift of the machine hits both paths alike.
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [McpPath::Gateway, McpPath::Direct]
        } else {
            [McpPath::Direct, McpPath::Gateway]
        };
        eprintln!(
            "bench: MCP round trip, round {}/{rounds} ({per_round} calls per path)",
            round + 1
        );
        for rt in rts.iter_mut() {
            for path in order {
                let lat = if rt.client == "Python SDK" {
                    let r = py.bench(&ends, path, rt.mode, per_round, 1).await?;
                    for v in r.versions {
                        if !rt.versions.contains(&v) {
                            rt.versions.push(v);
                        }
                    }
                    r.latencies
                } else {
                    rust_bench(&ends, path, rt.mode, per_round).await?
                };
                if path == McpPath::Gateway {
                    gateway_calls += lat.len() + MCP_WARMUP;
                    rt.gateway.extend(lat);
                } else {
                    rt.direct.extend(lat);
                }
            }
        }
    }
    let serve_cpu_us_per_call = (cpu_seconds(o.pid()) - cpu0) * 1e6 / gateway_calls.max(1) as f64;

    let load_mid = loadavg();

    let (clients, calls) = (cfg.mcp_clients, cfg.mcp_tput_calls);
    // Every call through the gateway, warm-up included, for CPU per call.
    let served = calls + clients * MCP_WARMUP;
    let sandbox = list_labelled(docker, &format!("orchestrator.mcp.dev/instance={instance}"))
        .await?
        .into_iter()
        .find_map(|c| c.id);
    let probe = || cpu_probe(o.pid(), sandbox.as_deref());
    let mut throughput = Vec::new();
    eprintln!("bench: MCP throughput, {clients} Python clients on the gateway");
    let p0 = probe();
    let r = py
        .bench(&ends, McpPath::Gateway, McpMode::Auto, calls, clients)
        .await?;
    throughput.push(Throughput {
        what: "Python SDK → gateway, one session (one shared sandbox)".into(),
        clients,
        latencies: r.latencies,
        calls_per_s: r.calls_per_s,
        setup_s: r.setup_s,
        cpu: Some(cpu_note(&p0, &probe(), served)),
    });
    eprintln!("bench: MCP throughput, {clients} Rust clients on the gateway");
    let p0 = probe();
    let (lat, cps, setup) = rust_throughput(&ends, clients, calls).await?;
    throughput.push(Throughput {
        what: "Rust rmcp → gateway, one session (one shared sandbox)".into(),
        clients,
        latencies: lat,
        calls_per_s: cps,
        setup_s: setup,
        cpu: Some(cpu_note(&p0, &probe(), served)),
    });
    let mut skipped = None;
    if cfg.mcp_direct_clients {
        eprintln!("bench: MCP throughput, {clients} Python clients with a docker run -i each");
        let r = py
            .bench(&ends, McpPath::Direct, McpMode::Auto, calls, clients)
            .await?;
        throughput.push(Throughput {
            what: format!("Python SDK → {clients} × `docker run -i` ({clients} sandboxes: not apples to apples)"),
            clients,
            latencies: r.latencies,
            calls_per_s: r.calls_per_s,
            setup_s: r.setup_s,
            cpu: None,
        });
    } else {
        skipped = Some("BENCH_MCP_DIRECT_CLIENTS=0: the 50-sandbox reference was not run".into());
    }
    let load_after = loadavg();
    o.stop();
    remove_all(docker, &format!("orchestrator.mcp.dev/instance={instance}")).await?;
    remove_all(docker, &format!("{RUN_LABEL}={run}")).await?;
    Ok(McpResults {
        round_trips: rts,
        throughput,
        skipped,
        per_round,
        rounds,
        in_flight,
        run_args: ends.run_args,
        serve_cpu_us_per_call,
        load_before,
        load_mid,
        load_after,
    })
}

/// The mean of some durations.
fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

/// Milliseconds with two decimals (sub-millisecond figures).
fn ms2(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The write-up of [`mcp_gateway`].
fn write_mcp(r: &mut String, cfg: &Config, m: &McpResults, heading: bool) {
    if heading {
        let _ = writeln!(r, "## MCP gateway: tool-call round trip and throughput\n");
    }
    let calls = m.per_round * m.rounds;
    let _ = writeln!(
        r,
        "One `echo` tool call's round trip (`{{\"text\": \"…\"}}`), one client, {calls} timed calls per path after {MCP_WARMUP} warm-up calls per connection, in {} interleaved rounds of {} (each round: every client, protocol and path, a new connection each, the paths' order alternating). Same image `{}`. *Gateway*: `serve` (release build, its own Redis and instance, bearer token, `MCP_MAX_IN_FLIGHT={}`, `RUST_LOG=info`, JSON logs to a file) → `/api/v1/sessions/{{name}}/mcp` → the Docker attach stream of the session's sandbox. *Direct*: the same client over stdio to its own `docker {}`, with the sandbox contract's settings taken from the orchestrator's create body. *Python SDK*: `tests/mcp/client.py bench` (official MCP Python SDK); *Rust rmcp*: rmcp's `StreamableHttpClientTransport` and rmcp over the `docker run -i` child's stdout/stdin, in the harness. Percentiles nearest-rank. Load average (1, 5, 15 min; the machine's, this run's own processes included): {} at the start, {} after the round trips, {} at the end (after the throughput runs, which load the machine themselves).\n",
        m.rounds,
        m.per_round,
        cfg.image,
        m.in_flight,
        m.run_args.join(" "),
        m.load_before,
        m.load_mid,
        m.load_after,
    );
    let _ = writeln!(
        r,
        "| client | protocol | gateway p50 / p99 / mean | direct stdio p50 / p99 / mean | p50 ratio gateway ÷ direct | p50 overhead (target ≤ 1 ms) |\n|---|---|---|---|---|---|"
    );
    for rt in &m.round_trips {
        let (g, d) = (Dist::new(&rt.gateway), Dist::new(&rt.direct));
        let over = g.p(0.5).as_secs_f64() - d.p(0.5).as_secs_f64();
        let met = if over <= 0.001 { "met" } else { "not met" };
        let proto = if rt.versions.is_empty() {
            rt.mode.label().to_string()
        } else {
            format!("{} (`--mode {}`)", rt.mode.label(), rt.mode.arg())
        };
        let _ = writeln!(
            r,
            "| {} | {proto} | {} / {} / {} ms | {} / {} / {} ms | {} | {:+.2} ms ({met}) |",
            rt.client,
            ms2(g.p(0.5)),
            ms2(g.p(0.99)),
            ms2(mean(&rt.gateway)),
            ms2(d.p(0.5)),
            ms2(d.p(0.99)),
            ms2(mean(&rt.direct)),
            ratio(g.p(0.5), d.p(0.5)),
            over * 1000.0,
        );
    }
    let _ = writeln!(
        r,
        "\n`serve` used {:.0} µs of CPU per gateway call during the round trips (its utime+stime over the calls it served, warm-up included).\n",
        m.serve_cpu_us_per_call
    );
    let _ = writeln!(
        r,
        "Throughput: {} clients at once, {} timed calls split evenly, each client on its own connection after {MCP_WARMUP} warm-up calls; calls/s from the moment all are connected and warmed up (connecting is *setup*). Protocol 2026-07-28.\n\n| clients and path | clients | calls/s | p50 | p99 | setup | CPU per call (warm-up included) |\n|---|---|---|---|---|---|---|",
        cfg.mcp_clients, cfg.mcp_tput_calls,
    );
    for t in &m.throughput {
        let d = Dist::new(&t.latencies);
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} | {} ms | {} ms | {:.1} s | {} |",
            t.what,
            t.clients,
            t.calls_per_s,
            ms2(d.p(0.5)),
            ms2(d.p(0.99)),
            t.setup_s,
            t.cpu.as_deref().unwrap_or("-"),
        );
    }
    if let Some(s) = &m.skipped {
        let _ = writeln!(r, "\n{s}.");
    }
    let _ = writeln!(r);
}

// ---------------------------------------------------------------------------------------
// The report.

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "- CPU: {} × {cpu}\n- Memory: {mem}\n- Kernel: {}\n- Docker engine: {} ({} storage driver)\n- Compose: {}\n- Redis: {}\n- rustc: {}\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        sh("uname", &["-r"]),
        sh(
            "docker",
            &[
                "version",
                "--format",
                "{{.Server.Version}}, API {{.Server.APIVersion}}"
            ]
        ),
        sh("docker", &["info", "--format", "{{.Driver}}"]),
        sh("docker-compose", &["version", "--short"]),
        sh("redis-server", &["--version"])
            .split_whitespace()
            .nth(2)
            .unwrap_or(""),
        sh("rustc", &["--version"]),
    )
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    // `cargo test --all-targets` builds and may run this target; only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the benchmark runs under `cargo bench --bench orchestrator` (scripts/bench)");
        return Ok(());
    }
    let cfg = Config::from_env();
    let run = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let dir = tempfile::tempdir()?;
    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    docker
        .ping()
        .await
        .map_err(|e| format!("the Docker engine is required: {e}"))?;
    let redis = Redis::start()?;
    let started = Utc::now();
    let result = run_all(&docker, &redis, dir.path(), &cfg, &run).await;
    // Whatever happened: nothing of this run is left behind.
    for filter in [
        format!("{RUN_LABEL}={run}"),
        "orchestrator.mcp.dev/managed-by=mcp-orchestrator".to_string(),
    ] {
        for c in list_labelled(&docker, &filter).await? {
            let ours = c.labels.as_ref().is_some_and(|l| {
                l.get(RUN_LABEL).map(String::as_str) == Some(run.as_str())
                    || l.get("orchestrator.mcp.dev/instance")
                        .is_some_and(|i| i.starts_with(&run))
            });
            if ours {
                let _ = docker
                    .remove_container(
                        c.id.as_deref().unwrap_or_default(),
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
    }
    let report = result?;
    let text = format!(
        "{report}\n---\nRun {run}, started {}, took {} min.\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        (Utc::now() - started).num_minutes()
    );
    if cfg.out == "-" {
        println!("{text}");
    } else {
        // The numbers go between the markers; the prose around them (what the figures mean,
        // why one misses its target) is kept.
        let old = std::fs::read_to_string(&cfg.out).unwrap_or_default();
        let own = if scale_only() {
            Some((SCALE_BEGIN, SCALE_END, SCALE_HEADING))
        } else if mcp_only() {
            Some((MCP_BEGIN, MCP_END, MCP_HEADING))
        } else {
            None
        };
        let new = if let Some((begin, end, heading)) = own {
            // Its own section, outside the full run's results.
            match (old.find(begin), old.find(end)) {
                (Some(b), Some(e)) if b < e => {
                    format!("{}{begin}\n{text}{}", &old[..b], &old[e..])
                }
                _ => {
                    let old = if old.is_empty() {
                        HEADER
                    } else {
                        old.trim_end()
                    };
                    format!("{old}\n\n{heading}\n\n{begin}\n{text}{end}\n")
                }
            }
        } else {
            match (old.find(BEGIN), old.find(END)) {
                (Some(b), Some(e)) if b < e => {
                    format!("{}{BEGIN}\n{text}{}", &old[..b], &old[e..])
                }
                _ => format!("{HEADER}\n{BEGIN}\n{text}{END}\n"),
            }
        };
        std::fs::write(&cfg.out, new)?;
        eprintln!("bench: wrote {}", cfg.out);
    }
    Ok(())
}

/// The write-up of [`takeover`].
fn write_takeover(r: &mut String, cfg: &Config, ha: &Takeover) {
    let (sb, rs, ho) = (
        Dist::new(&ha.standby),
        Dist::new(&ha.restarted),
        Dist::new(&ha.handover),
    );
    let _ = writeln!(r, "## Several replicas: takeover\n");
    let _ = writeln!(
        r,
        "{} rounds each, default lease TTL 3 s. *Standby*: two replicas; SIGKILL of the leader, a session written at once, timed until its status is Running (the standby waits out the lease, relists, adopts, creates). *Restarted*: one replica, SIGKILLed and started again at once (what a supervisor does), same measure. *Hand-over*: SIGTERM of the leader → a standby holds the lease.\n\n| | p50 | max |\n|---|---|---|\n| standby takes over → new session Running (target ≤ 5 s) | {} ms | {} ms |\n| single replica restarted → new session Running | {} ms | {} ms |\n| ratio standby ÷ restarted | {} | {} |\n| SIGTERM hand-over → standby leads (target ≤ 1 s) | {} ms | {} ms |\n",
        cfg.takeovers,
        ms(sb.p(0.5)),
        ms(sb.max()),
        ms(rs.p(0.5)),
        ms(rs.max()),
        ratio(sb.p(0.5), rs.p(0.5)),
        ratio(sb.max(), rs.max()),
        ms(ho.p(0.5)),
        ms(ho.max()),
    );
}

async fn run_all(
    docker: &Docker,
    redis: &Redis,
    dir: &Path,
    cfg: &Config,
    run: &str,
) -> Res<String> {
    let p = cfg.concurrency;
    let mut r = String::new();

    if std::env::var_os("BENCH_TAKEOVER_ONLY").is_some() {
        eprintln!("bench: several replicas ({} takeovers)", cfg.takeovers);
        let ha = takeover(docker, redis, dir, cfg, run).await?;
        write_takeover(&mut r, cfg, &ha);
        let _ = writeln!(r, "## Machine\n\n{}", machine());
        return Ok(r);
    }

    if scale_only() {
        let sc = scale(docker, redis, dir, cfg, run).await?;
        write_scale(&mut r, cfg, &sc, false);
        let _ = writeln!(r, "Machine:\n\n{}", machine());
        return Ok(r);
    }

    if mcp_only() {
        eprintln!("bench: MCP gateway");
        let m = mcp_gateway(docker, redis, dir, cfg, run).await?;
        write_mcp(&mut r, cfg, &m, false);
        let _ = writeln!(r, "Machine:\n\n{}", machine());
        return Ok(r);
    }

    // Convergence, three ways, interleaved per N so that drift of the machine hits all three.
    let mut rows = Vec::new();
    let mut spreads = Vec::new();
    for &n in &cfg.sizes {
        // Small N are short and noisy: the median of several interleaved runs.
        let reps = if n <= 100 { cfg.repeats.max(1) } else { 1 };
        let (mut raws, mut orchs, mut composes) = (Vec::new(), Vec::new(), Vec::new());
        let mut compose_err = None;
        for k in 0..reps {
            eprintln!("bench: convergence N={n} ({}/{reps})", k + 1);
            raws.push(converge_raw(docker, cfg, n, run).await?);
            eprintln!("bench:   raw bollard {}", ms(raws[k]));
            orchs.push(converge_orchestrator(docker, redis, dir, cfg, n, run).await?);
            eprintln!("bench:   orchestrator {}", ms(orchs[k]));
            // Compose failing is a result too; it does not stop the run.
            match converge_compose(docker, dir, cfg, n, run).await {
                Ok(c) => composes.push(c),
                Err(e) => compose_err = Some(e.to_string()),
            }
            eprintln!("bench:   docker-compose {:?}", composes.last());
        }
        let (raw, raw_lo, raw_hi) = median(&mut raws);
        let (orch, orch_lo, orch_hi) = median(&mut orchs);
        let compose = match compose_err {
            Some(e) => Err(e),
            None => Ok(median(&mut composes).0),
        };
        spreads.push((n, reps, orch_lo, orch_hi, raw_lo, raw_hi));
        rows.push((n, orch, raw, compose));
    }

    if std::env::var_os("BENCH_CONVERGENCE_ONLY").is_some() {
        for (n, orch, raw, compose) in &rows {
            let _ = writeln!(
                r,
                "N={n}: orchestrator {} ms, raw {} ms ({}), compose {compose:?}",
                ms(*orch),
                ms(*raw),
                ratio(*orch, *raw),
            );
        }
        return Ok(r);
    }
    eprintln!("bench: recovery (orchestrator)");
    let plain_kills = 10;
    let (rec, plain) = recovery_orchestrator(docker, redis, dir, cfg, run, plain_kills).await?;
    eprintln!("bench: recovery (engine restart policy)");
    let (engine, engine_plain) = recovery_engine(docker, cfg, run).await?;

    eprintln!("bench: change latency");
    let writes = change_latency(docker, redis, dir, cfg, run).await?;

    // Warm pools, bursts, compose on one change, and idle cost at many sessions.
    let sc = scale(docker, redis, dir, cfg, run).await?;
    let idle = &sc.idle;

    eprintln!("bench: several replicas ({} takeovers)", cfg.takeovers);
    let ha = takeover(docker, redis, dir, cfg, run).await?;

    eprintln!("bench: MCP gateway");
    let mcp = mcp_gateway(docker, redis, dir, cfg, run).await?;

    // ---- write up
    let _ = writeln!(
        r,
        "## Convergence: apply N sessions → every status Running\n"
    );
    let _ = writeln!(
        r,
        "Concurrency {p}: the orchestrator's `RECONCILE_CONCURRENCY`, and {p} bollard create+start in flight. Compose cannot be held to {p}: version 1.29 keeps its global `COMPOSE_PARALLEL_LIMIT` semaphore across nested steps and deadlocks when the limit is below the number of services, so it runs with N+{p} permits: N for its service level, {p} for the containers' create+start to start with, one more for every service done. Compose therefore has at least as many calls in flight as the others, more towards the end. The same image and the same create body (the sandbox contract's; the compose services spell the same settings).\n"
    );
    let _ = writeln!(
        r,
        "| N | orchestrator | raw bollard | ratio (target ≤ 1.10×) | docker-compose up -d | compose ÷ orchestrator |\n|---|---|---|---|---|---|"
    );
    for (n, orch, raw, compose) in &rows {
        let (c, cr) = match compose {
            Ok(c) => (format!("{} ms", ms(*c)), ratio(*c, *orch)),
            Err(e) => (format!("failed: {e}"), "-".into()),
        };
        let _ = writeln!(
            r,
            "| {n} | {} ms | {} ms | {} | {c} | {cr} |",
            ms(*orch),
            ms(*raw),
            ratio(*orch, *raw),
        );
    }
    for (n, reps, olo, ohi, rlo, rhi) in &spreads {
        if *reps > 1 {
            let _ = writeln!(
                r,
                "\nN = {n}: medians of {reps} interleaved runs; orchestrator {}–{} ms, raw {}–{} ms.",
                ms(*olo),
                ms(*ohi),
                ms(*rlo),
                ms(*rhi)
            );
        }
    }
    let _ = writeln!(
        r,
        "\nAt {} sessions (the idle-cost set-up, stored first): `serve` started → every status Running in {} ms.\n",
        idle.n,
        ms(idle.converge)
    );

    let (c, s, e) = (
        Dist::new(&rec.container),
        Dist::new(&rec.status),
        Dist::new(&engine),
    );
    let _ = writeln!(
        r,
        "## Recovery: SIGKILL of the sandbox's main process → running again\n"
    );
    let _ = writeln!(
        r,
        "{} kills each, round robin over a pool of {} (each member up > 10 s before it is killed, so neither side's crash backoff grows), {} ms apart. Timed from the kill to the container's `start` event; for the orchestrator also to the session's status saying Running on that container with the restart counted. Percentiles are nearest-rank: with 100 kills p99 is the second-largest.\n",
        cfg.kills,
        cfg.pool,
        cfg.kill_gap.as_millis()
    );
    let _ = writeln!(
        r,
        "| | p50 | p99 | max |\n|---|---|---|---|\n| orchestrator, container started | {} ms | {} ms | {} ms |\n| orchestrator, status Running | {} ms | {} ms | {} ms |\n| engine restart policy `always` | {} ms | {} ms | {} ms |\n| ratio, container started (target p99 ≤ 1.2×) | {} | {} | |\n",
        ms(c.p(0.5)),
        ms(c.p(0.99)),
        ms(c.max()),
        ms(s.p(0.5)),
        ms(s.p(0.99)),
        ms(s.max()),
        ms(e.p(0.5)),
        ms(e.p(0.99)),
        ms(e.max()),
        ratio(c.p(0.5), e.p(0.5)),
        ratio(c.p(0.99), e.p(0.99)),
    );
    let pd = Dist::new(&plain);
    let _ = writeln!(
        r,
        "A plain `docker kill` is a manual stop to the engine: its restart policy {engine_plain}. The orchestrator brought the session back after {plain_kills} such kills at p50 {} ms, max {} ms.\n",
        ms(pd.p(0.5)),
        ms(pd.max())
    );

    let w = Dist::new(&writes);
    let _ = writeln!(r, "## Change latency: Redis write → reconcile start\n");
    let _ = writeln!(
        r,
        "{} label writes (a compare-and-swap through the store, as the API and CLI do) over 10 sessions; timed from just before the write to the `reconcile start` log line of that session (the same clock).\n\n| p50 | p99 (target ≤ 5 ms) | max |\n|---|---|---|\n| {} ms | {} ms | {} ms |\n",
        writes.len(),
        ms(w.p(0.5)),
        ms(w.p(0.99)),
        ms(w.max())
    );

    write_scale(&mut r, cfg, &sc, true);

    write_takeover(&mut r, cfg, &ha);
    write_mcp(&mut r, cfg, &mcp, true);

    let _ = writeln!(r, "## Machine\n\n{}", machine());
    Ok(r)
}
