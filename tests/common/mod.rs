//! Shared harness for the integration tests: a real redis-server per test, the real Docker
//! engine (the machine's, or a private one a test starts: `engine::PrivateEngine`), the real
//! `mcp-orchestrator` binary. Nothing is mocked. Missing Redis or Docker fails the test
//! loudly; everything a test starts is labelled and removed on drop.
#![allow(dead_code)]

pub mod engine;
pub mod gemini;
pub mod mcp_py;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mcp_orchestrator::runtime::Runtime;
use mcp_orchestrator::store::Store;

/// The orchestrator binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-orchestrator");
/// Label put on every container a test creates by hand.
pub const TEST_LABEL: &str = "orchestrator.mcp.dev/test-run";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The docker client: Debian's `/usr/bin/docker` (it matches the engine's API) when present.
pub fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Run `docker ARGS` against the machine's engine, panicking with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    docker_on(None, args)
}

/// Run `docker ARGS` against `host` (`unix://…`; None: the machine's engine), panicking with
/// its stderr on failure.
pub fn docker_on(host: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new(docker_bin());
    if let Some(h) = host {
        c.args(["-H", h]);
    }
    let out = c
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}. Docker is required for these tests."));
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The sandbox image, built once per test process by `scripts/build-mcp-image` (idempotent).
pub fn sandbox_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let info = Command::new(docker_bin()).arg("info").output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "the Docker engine is not answering; these tests need it: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("docker is not installed; these tests need it: {e}"),
        }
        let image = std::env::var("MCP_IMAGE").unwrap_or_else(|_| "mcp-server:latest".into());
        let out = Command::new(root().join("scripts/build-mcp-image"))
            .env("MCP_IMAGE", &image)
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run scripts/build-mcp-image");
        assert!(out.status.success(), "scripts/build-mcp-image failed");
        image
    })
}

/// A redis-server on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Start one (AOF on, so a restart keeps acknowledged writes).
    pub fn start() -> Redis {
        let port = free_port();
        Self::start_on(port, tempfile::tempdir().unwrap())
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (apt-get install redis-server)")
            });
        let r = Redis { child, port, dir };
        wait_until(
            Duration::from_secs(5),
            "redis-server to accept connections",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill it and start it again on the same port and data directory.
    pub fn restart(self) -> Redis {
        let mut me = std::mem::ManuallyDrop::new(self);
        let _ = me.child.kill();
        let _ = me.child.wait();
        let port = me.port;
        // SAFETY-free move out of ManuallyDrop: take the dir by replacing it.
        let dir = std::mem::replace(&mut me.dir, tempfile::tempdir().unwrap());
        Self::start_on(port, dir)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it is true, or panic after `limit` naming what was awaited.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One isolated environment: its own Redis, its own orchestrator instance (key prefix and
/// container labels), and the real binary.
pub struct Env {
    pub redis: Option<Redis>,
    pub instance: String,
    pub image: String,
    pub orchestrator: Option<Child>,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
    /// The engine `serve`, the CLI and this harness's docker calls use (`DOCKER_HOST`, e.g. a
    /// [`engine::PrivateEngine`]'s); None: the machine's engine.
    pub docker_host: Option<String>,
    /// The HTTP port `serve` listens on (loopback, unless a test changes LISTEN_ADDR).
    pub port: u16,
}

impl Env {
    /// A fresh environment; the orchestrator is not started yet.
    pub fn new() -> Env {
        let image = sandbox_image().to_string();
        let redis = Redis::start();
        let instance = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = tempfile::tempdir().unwrap();
        Env {
            log: dir.path().join("orchestrator.log"),
            redis: Some(redis),
            instance,
            image,
            orchestrator: None,
            dir,
            extra_env: Vec::new(),
            docker_host: None,
            port: free_port(),
        }
    }

    /// Base URL of the HTTP API.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Redis URL.
    pub fn redis_url(&self) -> String {
        self.redis.as_ref().unwrap().url()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("REDIS_URL", self.redis_url())
            .env("ORCHESTRATOR_INSTANCE", &self.instance)
            .env("PORT", self.port.to_string())
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("ORCHESTRATOR_URL")
            .env("ALLOWED_IMAGES", "mcp-server:*")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        if let Some(h) = &self.docker_host {
            c.env("DOCKER_HOST", h);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Start `serve` with extra flags; its log goes to `self.log` (appended).
    pub fn start_orchestrator(&mut self, flags: &[&str]) {
        self.start_orchestrator_waiting_for(flags, "resync sessions")
    }

    /// Start `serve` and wait until its log shows `marker` once more than before.
    pub fn start_orchestrator_waiting_for(&mut self, flags: &[&str], marker: &str) {
        assert!(self.orchestrator.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .arg("serve")
            .args(flags)
            .env("RUST_LOG", "mcp_orchestrator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start the orchestrator");
        self.orchestrator = Some(child);
        let before = self.log_text().matches(marker).count();
        wait_until(
            Duration::from_secs(15),
            "the orchestrator's first resync",
            || self.log_text().matches(marker).count() > before,
        );
    }

    /// Is the orchestrator started by this environment still running?
    pub fn orchestrator_alive(&mut self) -> bool {
        self.orchestrator
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL the orchestrator.
    pub fn kill_orchestrator(&mut self) {
        if let Some(mut c) = self.orchestrator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the orchestrator and wait for it to exit; returns its exit status.
    pub fn stop_orchestrator(&mut self) -> std::process::ExitStatus {
        let mut c = self.orchestrator.take().expect("not running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "orchestrator did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The orchestrator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The CLI's command with this environment's variables, for a test that spawns it.
    pub fn command_for_test(&self) -> Command {
        self.command()
    }

    /// Ids of every container of this instance, via the docker CLI.
    pub fn instance_containers(&self) -> Vec<String> {
        self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=orchestrator.mcp.dev/instance={}", self.instance),
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    /// Run the CLI with `args` (and optional stdin).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("cannot run the CLI");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// Run the CLI and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args, None);
        assert!(
            out.status.success(),
            "mcp-orchestrator {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Apply YAML text through stdin.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        let out = self.cli(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The store's identity (created if it has none yet), as sandboxes carry it.
    pub fn store_id(&self) -> String {
        self.redis_cli(&[
            "EVAL",
            "redis.call('SET', KEYS[1], ARGV[1], 'NX') return redis.call('GET', KEYS[1])",
            "1",
            &format!("mcpo:{}:id", self.instance),
            &uuid::Uuid::new_v4().simple().to_string(),
        ])
    }

    /// Run `redis-cli` against this environment's Redis; returns its trimmed stdout.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let port = self.redis.as_ref().expect("redis running").port.to_string();
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A store client for this environment.
    pub async fn store(&self) -> Store {
        Store::connect(&self.redis_url(), &self.instance)
            .await
            .expect("connect to the test redis")
    }

    /// `docker ARGS` against this environment's engine.
    pub fn docker(&self, args: &[&str]) -> String {
        docker_on(self.docker_host.as_deref(), args)
    }

    /// A Docker client scoped to this environment's instance (the machine's engine, or
    /// whatever this process's DOCKER_HOST says; not `docker_host`).
    pub async fn runtime(&self) -> Runtime {
        Runtime::connect(&self.instance)
            .await
            .expect("the Docker engine is required for these tests")
    }

    /// Ids of this instance's containers for `session` as `(id, state)`, via the docker CLI.
    pub fn containers(&self, session: &str) -> Vec<(String, String)> {
        let out = self.docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=orchestrator.mcp.dev/instance={}", self.instance),
            "--filter",
            &format!("label=orchestrator.mcp.dev/session={session}"),
            "--format",
            "{{.ID}} {{.State}}",
        ]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Wait until exactly one running container serves `session`; returns its id.
    pub fn wait_running(&self, session: &str, limit: Duration) -> String {
        let mut id = String::new();
        wait_until(
            limit,
            &format!("one running container for {session}"),
            || {
                let c = self.containers(session);
                if c.len() == 1 && c[0].1 == "running" {
                    id = c[0].0.clone();
                    true
                } else {
                    false
                }
            },
        );
        id
    }

    /// The session as JSON (`get NAME -o json`), or None when absent.
    pub fn get_json(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["get", name, "-o", "json"], None);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("get -o json prints JSON"))
    }

    /// Wait until the session's status says Running with `container` as its container.
    pub fn wait_status(
        &self,
        name: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_until(limit, &format!("status of {name}"), || {
            if let Some(v) = self.get_json(name) {
                last = v;
                f(&last["status"])
            } else {
                false
            }
        });
        last
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_orchestrator();
        // Twice: a create the killed orchestrator had in flight can land after the first pass.
        for pass in 0..2 {
            if pass == 1 {
                std::thread::sleep(Duration::from_millis(500));
            }
            self.remove_containers();
        }
        if std::thread::panicking() {
            eprintln!("--- orchestrator log ---\n{}", self.log_text());
        }
    }
}

impl Env {
    fn remove_containers(&self) {
        for label in [
            format!("label=orchestrator.mcp.dev/instance={}", self.instance),
            format!("label={TEST_LABEL}={}", self.instance),
        ] {
            let host: &[&str] = match &self.docker_host {
                Some(h) => &["-H", h],
                None => &[],
            };
            let ids = Command::new(docker_bin())
                .args(host)
                .args(["ps", "-aq", "--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new(docker_bin())
                    .args(host)
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

impl Env {
    /// `serve`'s Docker API calls so far, by operation (`mcpo_docker_calls_total{op}` on its
    /// `/metrics`). Panics when the endpoint does not answer or has no such counter.
    pub fn docker_calls(&self) -> std::collections::HashMap<String, u64> {
        let (code, body) = http_get(&format!("{}/metrics", self.api()));
        assert_eq!(code, 200, "GET /metrics: {body}");
        let calls: std::collections::HashMap<String, u64> = body
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("mcpo_docker_calls_total{op=\"")?;
                let (op, value) = rest.split_once("\"} ")?;
                Some((op.to_string(), value.trim().parse().ok()?))
            })
            .collect();
        assert!(
            calls.contains_key("list"),
            "no mcpo_docker_calls_total{{op=\"list\"}} on /metrics:\n{body}"
        );
        calls
    }
}

/// One running container per session, no orphans, every status Running.
pub fn assert_converged(env: &Env, names: &[String]) {
    for n in names {
        env.wait_running(n, Duration::from_secs(60));
        env.wait_status(n, Duration::from_secs(60), |s| s["phase"] == "Running");
    }
    let all = env.docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=orchestrator.mcp.dev/instance={}", env.instance),
        "--format",
        "{{.Label \"orchestrator.mcp.dev/session\"}}",
    ]);
    let mut seen: Vec<&str> = all.lines().collect();
    seen.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(
        seen, want,
        "exactly one container per session and no orphans"
    );
}

/// A minimal session manifest.
pub fn session_yaml(name: &str, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n{extra_spec}"
    )
}

/// A minimal warm pool manifest.
pub fn pool_yaml(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: orchestrator.mcp.dev/v1\nkind: WarmPool\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  template:\n    image: {image}\n"
    )
}

impl Env {
    /// Ids of every container of this instance labelled as a member of warm pool `pool`
    /// (claimed members keep the label), via `docker ps -a`.
    pub fn pool_containers(&self, pool: &str) -> Vec<String> {
        self.docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=orchestrator.mcp.dev/instance={}", self.instance),
            "--filter",
            &format!("label=orchestrator.mcp.dev/pool={pool}"),
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }
}

/// Wait for a spawned child to exit within `limit` (killed and failed otherwise) and
/// collect its output.
pub fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the process did not exit within {limit:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One more `serve` of an [`Env`]'s instance, Redis and engine (a replica), with its own port
/// and log; SIGKILLed on drop.
pub struct Replica {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub pid: u32,
}

impl Env {
    /// Start another replica of this environment's `serve` with `flags`, and wait until its
    /// API listens.
    pub fn spawn_replica(&self, tag: &str, flags: &[&str]) -> Replica {
        let port = free_port();
        let log = self.dir.path().join(format!("replica-{tag}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .command()
            .env("PORT", port.to_string())
            .arg("serve")
            .args(flags)
            .env("RUST_LOG", "mcp_orchestrator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("cannot start a replica");
        let pid = child.id();
        let r = Replica {
            child: Some(child),
            port,
            log,
            pid,
        };
        wait_until(Duration::from_secs(15), "the replica's API", || {
            r.log_text().contains("HTTP API listening")
        });
        r
    }

    /// The pid in the holder of the leader lease now (`None` when nobody leads).
    pub fn leader_pid(&self) -> Option<u32> {
        let v = self.redis_cli(&["GET", &format!("mcpo:{}:leader", self.instance)]);
        // "<term> <host>/<pid>/<tag>"
        v.split_whitespace().nth(1)?.split('/').nth(1)?.parse().ok()
    }
}

impl Replica {
    /// Base URL of its API.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM (does not wait).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }

    /// Wait for it to exit within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("not running");
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < limit, "replica did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One sample of a metric on its `/metrics` (no labels), if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.api()));
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- replica {} log ---\n{}", self.pid, self.log_text());
        }
    }
}

/// A plain HTTP/1.0 GET: (status, body). Panics when nothing answers.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::Read;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Send one chat message to `api` (with `token`, if any) and collect every event until
/// `done` or `error` (each within 60 s).
pub async fn chat_turn(
    api: &str,
    token: Option<&str>,
    name: &str,
    msg: &str,
) -> Vec<serde_json::Value> {
    let client = mcp_orchestrator::client::ApiClient::new(api, token.map(str::to_string));
    let mut stream = client.chat(name, msg).await.expect("chat accepted");
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), stream.next_event())
        .await
        .expect("an event in time")
        .unwrap()
    {
        let end = e["type"] == "done" || e["type"] == "error";
        events.push(e);
        if end {
            break;
        }
    }
    events
}
