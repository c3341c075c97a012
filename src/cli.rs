//! The kubectl-style command line. Config comes from flags with environment fallbacks and is
//! built once; every verb returns `Result` and `main` turns an error into one line on stderr
//! and a non-zero exit.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::client::{ApiClient, Backend};
use crate::controller::{self, Controller};
use crate::domain::contract::{self, Policy};
use crate::domain::limits;
use crate::domain::parse;
use crate::domain::plan::Settings;
use crate::domain::resource::{Phase, Session};
use crate::ops::{self, Applied, PatchType};
use crate::runtime::Runtime;
use crate::store::{EventType, Store};

/// A declarative reconciler for sandboxed MCP tool servers on Docker.
#[derive(Debug, Parser)]
#[command(name = "mcp-orchestrator", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every verb shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Redis holding the desired state.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Orchestrator instance: scopes Redis keys and container labels.
    #[arg(
        long,
        env = "ORCHESTRATOR_INSTANCE",
        default_value = "default",
        global = true,
        value_parser = instance_name
    )]
    pub instance: String,
    /// Image allowlist, comma-separated patterns (`*` wildcard).
    #[arg(
        long,
        env = "ALLOWED_IMAGES",
        default_value = "mcp-server:*",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_images: Vec<String>,
    /// Largest memory limit a session may ask for.
    #[arg(long, env = "MAX_MEMORY", default_value = "2Gi", global = true)]
    pub max_memory: String,
    /// Largest CPU limit a session may ask for.
    #[arg(long, env = "MAX_CPUS", default_value = "2", global = true)]
    pub max_cpus: String,
    /// Largest pids limit a session may ask for.
    #[arg(long, env = "MAX_PIDS", default_value_t = 1024, global = true)]
    pub max_pids: i64,
    /// Talk to a running `serve` over HTTP instead of Redis (the token comes from
    /// ORCHESTRATOR_TOKEN).
    #[arg(long, env = "ORCHESTRATOR_URL", global = true)]
    pub server: Option<String>,
}

impl Global {
    /// The contract policy these options describe.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let max_memory = contract::parse_memory(&crate::domain::resource::Quantity::Text(
            self.max_memory.clone(),
        ))
        .map_err(|e| anyhow!("--max-memory: {e}"))?;
        let max_nano_cpus = contract::parse_cpus(&crate::domain::resource::Quantity::Text(
            self.max_cpus.clone(),
        ))
        .map_err(|e| anyhow!("--max-cpus: {e}"))?;
        if !(limits::MIN_PIDS..=1 << 22).contains(&self.max_pids) {
            bail!("--max-pids: {} is outside 1..={}", self.max_pids, 1 << 22);
        }
        if max_memory < limits::MIN_MEMORY_BYTES {
            bail!("--max-memory: {} is below the 6Mi minimum", self.max_memory);
        }
        let d = Policy::default();
        let policy = Policy {
            allowed_images: self
                .allowed_images
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
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
            .map_err(|e| anyhow!("--allowed-images: {e}"))?;
        Ok(policy)
    }

    /// Where the CLI reads and writes: the API when `--server` is given, else Redis.
    async fn backend(&self) -> anyhow::Result<Backend> {
        match &self.server {
            Some(url) => Ok(Backend::Http(ApiClient::new(
                url,
                std::env::var("ORCHESTRATOR_TOKEN").ok(),
            ))),
            None => Ok(Backend::Store(self.store().await?, self.policy()?)),
        }
    }

    async fn store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.redis_url, &self.instance)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", redact(&self.redis_url)))
    }
}

/// Hide a password in a Redis URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn instance_name(s: &str) -> Result<String, String> {
    contract::validate_instance(s).map(|()| s.to_string())
}

/// A duration flag or variable: humantime syntax (`30s`, `1h`), within
/// [`limits::MIN_FLAG_DURATION`]..=[`limits::MAX_FLAG_DURATION`] (so `0s` is a config error).
fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{}: {e}", limits::echo(s)))?;
    if d < limits::MIN_FLAG_DURATION || d > limits::MAX_FLAG_DURATION {
        return Err(format!(
            "{} is outside {}..={}",
            limits::echo(s),
            humantime::format_duration(limits::MIN_FLAG_DURATION),
            humantime::format_duration(limits::MAX_FLAG_DURATION)
        ));
    }
    Ok(d)
}

/// A duration above zero and at most a day (HTTP timeouts).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: must be above 0 and at most 24h"));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reconciler until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Create or update sessions from files, directories or stdin (`-`).
    Apply(ApplyArgs),
    /// List sessions, or show one.
    Get(GetArgs),
    /// Show a session's spec, status, container and recent events.
    Describe {
        /// Session name.
        name: String,
    },
    /// Delete sessions by name or by file.
    Delete(DeleteArgs),
    /// Patch a session with an RFC 7386 merge patch or an RFC 6902 JSON patch.
    Patch(PatchArgs),
    /// Show what `apply` would change, as a unified diff, and which containers it recreates.
    Diff {
        /// Files, directories or `-`.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the Session JSON Schema.
    Schema,
    /// Exit 0 when Redis and the Docker engine answer (for container health checks).
    Healthcheck,
    /// Inject faults into managed sandboxes and measure recovery (against a live `serve`).
    Chaos(ChaosArgs),
    /// List the containers of this instance that belong to another store (another Redis with
    /// the same instance name, or this store before a reset), and remove them with
    /// `--remove`. The controller never removes them by itself.
    Foreign {
        /// Remove them (all of them, or only the given container ids or names).
        #[arg(long)]
        remove: bool,
        /// Only these containers (ids, id prefixes or names).
        containers: Vec<String>,
    },
    /// Chat with Gemini using the session's sandbox tools (through a running `serve`). With
    /// no MESSAGE it is interactive: one line, one turn.
    Chat {
        /// Session name.
        name: String,
        /// The message; read lines from stdin when omitted.
        message: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Reconciles running at once, across sessions.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Period of the full resync (catches missed events and engine restarts).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "30s", value_parser = duration)]
    resync_interval: Duration,
    /// A sandbox run at least this long resets its crash-loop backoff.
    #[arg(long, env = "STABLE_AFTER", default_value = "10s", value_parser = duration)]
    stable_after: Duration,
    /// Largest crash-loop backoff.
    #[arg(long, env = "MAX_BACKOFF", default_value = "60s", value_parser = duration)]
    max_backoff: Duration,
    /// Watch this directory of Session files (`*.yaml`, `*.yml`, `*.json`).
    #[arg(long, env = "SPECS_DIR")]
    specs_dir: Option<PathBuf>,
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// HTTP listen address (default: 0.0.0.0:PORT with a token, 127.0.0.1:PORT without).
    #[arg(long, env = "LISTEN_ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Allow listening beyond loopback without ORCHESTRATOR_TOKEN.
    #[arg(long, env = "ORCHESTRATOR_INSECURE")]
    insecure: bool,
    /// Most model calls in one chat turn (the function-calling loop's step limit).
    #[arg(long, env = "CHAT_MAX_STEPS", default_value_t = 8)]
    chat_max_steps: usize,
    /// Most turns kept in a session's chat history.
    #[arg(long, env = "CHAT_HISTORY_MAX_TURNS", default_value_t = 200)]
    history_max_turns: usize,
    /// Most bytes kept in a session's chat history.
    #[arg(long, env = "CHAT_HISTORY_MAX_BYTES", default_value_t = 1024 * 1024)]
    history_max_bytes: usize,
    /// Timeout of one MCP request to a sandbox.
    #[arg(long, env = "MCP_CALL_TIMEOUT", default_value = "30s", value_parser = duration)]
    mcp_call_timeout: Duration,
    /// A reconcile running longer is abandoned, counted as failed and retried.
    #[arg(long, env = "RECONCILE_TIMEOUT", default_value = "60s", value_parser = duration)]
    reconcile_timeout: Duration,
    /// On SIGTERM, how long running reconciles and open HTTP connections may finish.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    shutdown_grace: Duration,
    /// `/readyz` turns unready when work waits and no reconcile finished for this long.
    #[arg(long, env = "STALL_AFTER", default_value = "90s", value_parser = duration)]
    stall_after: Duration,
    /// Write the store's identity to this file at start (the container entrypoint uses it
    /// to remove only this store's sandboxes on stop).
    #[arg(long, env = "STORE_ID_FILE")]
    store_id_file: Option<PathBuf>,
    /// Most `?watch=true` streams open at once (429 beyond).
    #[arg(long, env = "MAX_WATCHES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_watches: u32,
    /// Most `?wait=` requests waiting at once (429 beyond).
    #[arg(long, env = "MAX_WAITS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_waits: u32,
    /// Most chat turns streaming at once (429 beyond).
    #[arg(long, env = "MAX_CHATS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_chats: u32,
    /// A request's headers must arrive within this, or the connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// Each piece of a request body must arrive within this, or 408.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    body_timeout: Duration,
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// How long to inject faults.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Time between faults.
    #[arg(long, default_value = "1s", value_parser = duration)]
    interval: Duration,
    /// Only sessions whose labels match, e.g. `team=research`.
    #[arg(long, default_value = "")]
    selector: String,
    /// Fault kinds: kill, rm, stop, sigkill.
    #[arg(long, value_delimiter = ',', default_value = "kill,rm,stop,sigkill")]
    faults: Vec<String>,
    /// A fault not recovered within this counts as unrecovered.
    #[arg(long, default_value = "30s", value_parser = duration)]
    recovery_timeout: Duration,
    /// Quiet period before the final orphan and duplicate checks.
    #[arg(long, default_value = "5s", value_parser = duration)]
    quiet: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Files, directories (their *.yaml, *.yml, *.json) or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Validate and report, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait until every applied session is Running.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// Session name; all sessions when omitted.
    name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// After the current state, follow changes.
    #[arg(short, long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Session names.
    names: Vec<String>,
    /// Delete the sessions these files declare.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Do not fail on sessions that do not exist.
    #[arg(long)]
    ignore_not_found: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PatchKind {
    Merge,
    Json,
}

#[derive(Debug, Args)]
struct PatchArgs {
    /// Session name.
    name: String,
    /// Patch type.
    #[arg(long = "type", value_enum, default_value = "merge")]
    kind: PatchKind,
    /// The patch, as JSON.
    #[arg(short, long)]
    patch: String,
    /// Validate and report, write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Set up logging: `RUST_LOG` filters (default `info` for serve, `warn` otherwise),
/// `LOG_FORMAT=json` gives one JSON object per line. Logs go to stderr.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // Do not wait for blocking work still running (a body being parsed at shutdown).
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": ").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Serve(a) => serve(g, a).await,
        Command::Apply(a) => apply(g, a).await,
        Command::Get(a) => get(g, a).await,
        Command::Describe { name } => describe(g, &name).await,
        Command::Delete(a) => delete(g, a).await,
        Command::Patch(a) => patch(g, a).await,
        Command::Diff { files } => diff(g, &files).await,
        Command::Healthcheck => healthcheck(g).await,
        Command::Chaos(a) => chaos(g, a).await,
        Command::Chat { name, message } => chat(g, &name, message).await,
        Command::Foreign { remove, containers } => foreign(g, remove, &containers).await,
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::domain::resource::json_schema())?
            );
            Ok(())
        }
    }
}

async fn chaos(g: &Global, a: ChaosArgs) -> anyhow::Result<()> {
    let faults = a
        .faults
        .iter()
        .map(|f| f.parse())
        .collect::<Result<Vec<crate::chaos::Fault>, _>>()?;
    let cfg = crate::chaos::ChaosConfig {
        duration: a.duration,
        interval: a.interval,
        selector: crate::domain::selector::Selector::parse(&a.selector)?,
        faults,
        recovery_timeout: a.recovery_timeout,
        quiet: a.quiet,
    };
    let backend = g.backend().await?;
    let runtime = Runtime::connect(&g.instance)
        .await
        .context("cannot connect to the Docker engine")?;
    let json = a.json;
    let report = crate::chaos::run(&backend, &runtime, &cfg, |r| {
        if !json {
            match r.recovered_ms {
                Some(ms) => eprintln!("{:?} {} → recovered in {ms} ms", r.fault, r.session),
                None => eprintln!("{:?} {} → NOT recovered", r.fault, r.session),
            }
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("faults injected:   {}", report.injected);
        println!("faults recovered:  {}", report.recovered);
        println!(
            "recovery (ms):     p50 {}  p95 {}  p99 {}  max {}",
            report.p50_ms, report.p95_ms, report.p99_ms, report.max_ms
        );
        println!("violations:        {}", report.violations.len());
        for v in &report.violations {
            println!("  - {v}");
        }
    }
    if !report.ok() {
        bail!(
            "{} of {} faults recovered, {} invariant violation(s)",
            report.recovered,
            report.injected,
            report.violations.len()
        );
    }
    Ok(())
}

async fn chat(g: &Global, name: &str, message: Option<String>) -> anyhow::Result<()> {
    let url = g.server.clone().unwrap_or_else(|| {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
        format!("http://127.0.0.1:{port}")
    });
    let client = ApiClient::new(&url, std::env::var("ORCHESTRATOR_TOKEN").ok());
    let show = |e: &serde_json::Value| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match e["type"].as_str().unwrap_or_default() {
            "text" => write!(out, "{}", e["text"].as_str().unwrap_or_default())?,
            "tool_call" => writeln!(
                out,
                "\n→ {}({})",
                e["name"].as_str().unwrap_or_default(),
                e["args"]
            )?,
            "tool_result" => {
                let text = e["output"].as_str().unwrap_or_default();
                let short: String = text.chars().take(200).collect();
                let mark = if e["isError"] == true { "✗" } else { "←" };
                writeln!(out, "{mark} {short}")?;
            }
            "done" => writeln!(out)?,
            _ => {}
        }
        out.flush()?;
        Ok(())
    };
    let turn = |msg: String| {
        let client = client.clone();
        async move {
            let mut stream = client.chat(name, &msg).await?;
            while let Some(e) = stream.next_event().await? {
                if e["type"] == "error" {
                    bail!("{}", e["message"].as_str().unwrap_or("the chat failed"));
                }
                show(&e)?;
                if e["type"] == "done" {
                    break;
                }
            }
            anyhow::Ok(())
        }
    };
    match message {
        Some(m) => turn(m).await,
        None => {
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let line = line.trim().to_string();
                if line.is_empty() {
                    continue;
                }
                if let Err(e) = turn(line).await {
                    eprintln!("error: {e}");
                }
            }
        }
    }
}

async fn healthcheck(g: &Global) -> anyhow::Result<()> {
    let check = async {
        g.store()
            .await?
            .ping()
            .await
            .context("Redis is not answering")?;
        Runtime::connect(&g.instance)
            .await
            .context("cannot connect to the Docker engine")?
            .ping()
            .await
            .context("the Docker engine is not answering")?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .map_err(|_| anyhow!("health check timed out after 5s"))??;
    println!("ok");
    Ok(())
}

async fn serve(g: &Global, a: ServeArgs) -> anyhow::Result<()> {
    let policy = g.policy()?;
    let store = g.store().await?;
    store.ping().await.context("Redis is not answering")?;
    info!(redis = %redact(&g.redis_url), instance = %g.instance, "connected to Redis");
    let runtime = Runtime::connect(&g.instance)
        .await
        .context("cannot connect to the Docker engine")?;
    runtime
        .ping()
        .await
        .context("the Docker engine is not answering")?;
    info!("connected to Docker");
    let config = controller::Config {
        settings: Settings {
            instance: g.instance.clone(),
            policy,
            stable_after: a.stable_after,
            backoff_max: a.max_backoff,
            ..Settings::default()
        },
        concurrency: a.concurrency,
        resync_every: a.resync_interval,
        reconcile_timeout: a.reconcile_timeout,
        shutdown_grace: a.shutdown_grace,
        stall_after: a.stall_after,
        store_id_file: a.store_id_file.clone(),
        ..controller::Config::default()
    };
    if a.stall_after <= a.reconcile_timeout {
        bail!(
            "--stall-after ({}) must be longer than --reconcile-timeout ({}): a reconcile \
             may legitimately run that long",
            humantime::format_duration(a.stall_after),
            humantime::format_duration(a.reconcile_timeout)
        );
    }
    let identity = store
        .identity()
        .await
        .context("cannot read the store's identity")?;
    info!(store = %identity, "store identity");
    if let Some(path) = &a.store_id_file {
        std::fs::write(path, format!("{identity}\n"))
            .with_context(|| format!("{}: cannot write the store identity", path.display()))?;
    }
    let token = std::env::var("ORCHESTRATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let addr = crate::http::listen_addr(a.listen, a.port, token.is_some(), a.insecure)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    if token.is_none() {
        if bound.ip().is_loopback() {
            tracing::warn!(addr = %bound, "no ORCHESTRATOR_TOKEN: the API is unauthenticated and listens on loopback only");
        } else {
            tracing::warn!(addr = %bound, "no ORCHESTRATOR_TOKEN and --insecure: the API is unauthenticated on a non-loopback address");
        }
    }
    info!(addr = %bound, "HTTP API listening");
    let shutdown = CancellationToken::new();
    let metrics = crate::metrics::Metrics::new();
    let specs = a.specs_dir.clone().map(|dir| {
        info!(dir = %dir.display(), "watching the specs directory");
        let (store, policy, shutdown) = (
            store.clone(),
            config.settings.policy.clone(),
            shutdown.clone(),
        );
        tokio::spawn(crate::supervise::supervise(
            metrics.clone(),
            "specs-dir",
            shutdown.clone(),
            move || crate::specs::run(dir.clone(), store.clone(), policy.clone(), shutdown.clone()),
        ))
    });
    let policy = config.settings.policy.clone();
    let (chat_store, history_store, chat_runtime) = (store.clone(), store.clone(), runtime.clone());
    let ctrl = Controller::new(store.clone(), runtime.clone(), config, metrics.clone());
    let state = crate::http::AppState::new(
        store,
        runtime,
        policy,
        token,
        metrics,
        Some(ctrl.handle()),
        shutdown.clone(),
        crate::http::Limits {
            max_watches: a.max_watches as usize,
            max_waits: a.max_waits as usize,
            max_chats: a.max_chats as usize,
            header_read_timeout: a.header_timeout,
            body_read_timeout: a.body_timeout,
            shutdown_grace: a.shutdown_grace,
        },
    );
    let gemini = crate::chat::gemini::Gemini::new(crate::chat::gemini::GeminiConfig::from_env());
    if !gemini.has_api_key() {
        tracing::warn!("GOOGLE_API_KEY is not set: chat requests will be refused");
    }
    let chat = crate::chat::service::ChatService::new(
        chat_store,
        crate::chat::mcp::McpPool::new(chat_runtime, a.mcp_call_timeout),
        gemini,
        crate::chat::history::History::new(
            history_store,
            crate::chat::history::Limits {
                max_turns: a.history_max_turns.max(1),
                max_bytes: a.history_max_bytes.max(1),
            },
        ),
        crate::chat::service::ChatConfig {
            max_steps: a.chat_max_steps.max(1),
        },
    );
    let state = state.with_chat(std::sync::Arc::new(chat));
    let http = tokio::spawn(crate::http::serve(listener, state, shutdown.clone()));
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down");
            shutdown.cancel();
        })
    };
    ctrl.run(shutdown.clone()).await;
    if let Some(specs) = specs {
        let _ = specs.await;
    }
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    signals.abort();
    Ok(())
}

/// `foreign`: list (and with `remove`, remove) the containers of this instance that are not
/// this store's.
async fn foreign(g: &Global, remove: bool, only: &[String]) -> anyhow::Result<()> {
    if g.server.is_some() {
        bail!(
            "foreign works on the Docker engine directly; run it without --server, beside the engine"
        );
    }
    let store = g.store().await?;
    let snap = store.list().await?;
    let runtime = Runtime::connect(&g.instance)
        .await
        .context("cannot connect to the Docker engine")?;
    let sessions: std::collections::HashMap<String, crate::domain::resource::Session> = snap
        .sessions
        .into_iter()
        .map(|s| (s.metadata.name.clone(), s))
        .collect();
    let names = runtime.names().await?;
    // After a rollback this store's own containers without a session are held too.
    let hold = store.orphan_hold().await?;
    if let Some(why) = &hold {
        eprintln!("orphans are held after a store rollback: {why}");
    }
    let chosen: Vec<_> = runtime
        .list(None, false)
        .await?
        .into_iter()
        .filter(|c| {
            let session = sessions.get(&c.session);
            crate::domain::plan::ownership(c, &snap.identity, session)
                == crate::domain::plan::Ownership::Foreign
                || (hold.is_some() && session.is_none())
        })
        .filter(|c| {
            let name = names.get(&c.id).map(String::as_str).unwrap_or("");
            only.is_empty()
                || only
                    .iter()
                    .any(|o| c.id.starts_with(o.as_str()) || name == o.trim_start_matches('/'))
        })
        .collect();
    if chosen.is_empty() {
        eprintln!("no foreign containers (store {})", snap.identity);
        if remove && hold.is_some() && only.is_empty() {
            store.set_orphan_hold(None).await?;
            eprintln!("orphan hold cleared");
        }
        return Ok(());
    }
    println!(
        "{:<14} {:<30} {:<20} {:<10} STORE",
        "CONTAINER", "NAME", "SESSION", "STATE"
    );
    for c in &chosen {
        println!(
            "{:<14} {:<30} {:<20} {:<10} {}",
            crate::runtime::short_id(&c.id),
            names.get(&c.id).map(String::as_str).unwrap_or(""),
            c.session,
            format!("{:?}", c.state).to_lowercase(),
            c.store.as_deref().unwrap_or("none")
        );
    }
    if remove {
        for c in &chosen {
            runtime.remove(&c.id).await?;
        }
        eprintln!("removed {} foreign container(s)", chosen.len());
        if hold.is_some() && only.is_empty() {
            store.set_orphan_hold(None).await?;
            eprintln!("orphan hold cleared: the controller removes orphans again");
        }
    } else {
        eprintln!(
            "{} container(s) of instance {:?} are not this store's ({}); `--remove` removes them",
            chosen.len(),
            g.instance,
            snap.identity
        );
    }
    Ok(())
}

async fn wait_for_signal() {
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

/// Parse and admit every document first; refuse everything when anything is wrong.
fn load_valid(files: &[PathBuf], policy: &Policy) -> anyhow::Result<Vec<parse::Document>> {
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
    crate::domain::admission::validate_documents(&docs, policy)?;
    Ok(docs)
}

async fn apply(g: &Global, a: ApplyArgs) -> anyhow::Result<()> {
    let policy = g.policy()?;
    let docs = load_valid(&a.files, &policy)?;
    let backend = g.backend().await?;
    let mut applied = Vec::new();
    for d in &docs {
        let (what, s) = backend
            .apply(&d.session, a.dry_run)
            .await
            .with_context(|| d.origin.at(""))?;
        let suffix = if a.dry_run { " (dry run)" } else { "" };
        println!("session/{} {what}{suffix}", s.name());
        applied.push(s);
    }
    if a.wait && !a.dry_run {
        wait_running(&backend, &applied, a.timeout).await?;
    }
    Ok(())
}

fn ready(s: &Session) -> bool {
    s.phase() == Phase::Running
        && s.status.as_ref().and_then(|st| st.observed_generation) >= s.metadata.generation
}

/// Wait (event-driven, on the change stream) until every session is Running at its current
/// generation, printing phase changes.
async fn wait_running(
    backend: &Backend,
    sessions: &[Session],
    timeout: Duration,
) -> anyhow::Result<()> {
    let (current, revision) = backend.list().await?;
    let mut watch = backend.watch(revision).await?;
    let mut pending: HashMap<String, Phase> = HashMap::new();
    for s in sessions {
        let cur = current.iter().find(|x| x.name() == s.name());
        match cur {
            Some(c) if ready(c) => println!("session/{} Running", c.name()),
            Some(c) => {
                pending.insert(c.name().to_string(), c.phase());
            }
            None => bail!("session {:?} was deleted while waiting", s.name()),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let mut names: Vec<_> = pending.iter().map(|(n, p)| format!("{n} ({p})")).collect();
            names.sort();
            bail!(
                "timed out after {} waiting for: {}",
                humantime::format_duration(timeout),
                names.join(", ")
            );
        }
        for ev in watch.next_batch(left.min(Duration::from_secs(1))).await? {
            let Some(last) = pending.get(&ev.name).copied() else {
                continue;
            };
            match (ev.kind, ev.object) {
                (EventType::Deleted, _) | (_, None) => {
                    bail!("session {:?} was deleted while waiting", ev.name)
                }
                (_, Some(obj)) => {
                    if ready(&obj) {
                        println!("session/{} Running", ev.name);
                        pending.remove(&ev.name);
                    } else if obj.phase() != last {
                        let st = obj.status.clone().unwrap_or_default();
                        println!(
                            "session/{} {}{}",
                            ev.name,
                            obj.phase(),
                            st.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                        );
                        pending.insert(ev.name.clone(), obj.phase());
                    }
                }
            }
        }
    }
    Ok(())
}

fn age(s: &Session) -> String {
    let Some(t) = s.metadata.creation_timestamp else {
        return "-".into();
    };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn table_row(s: &Session) -> String {
    let st = s.status.clone().unwrap_or_default();
    let container = st
        .container_id
        .as_deref()
        .map(|c| &c[..c.len().min(12)])
        .unwrap_or("-")
        .to_string();
    format!(
        "{:<24} {:<11} {:<9} {:<12} {:<6} {}",
        s.name(),
        s.phase(),
        st.restart_count,
        container,
        age(s),
        st.reason.unwrap_or_default()
    )
}

const TABLE_HEADER: &str =
    "NAME                     PHASE       RESTARTS  CONTAINER    AGE    REASON";

fn print_sessions(out: Output, sessions: &[Session], single: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match out {
        Output::Table => {
            writeln!(stdout, "{TABLE_HEADER}")?;
            for s in sessions {
                writeln!(stdout, "{}", table_row(s))?;
            }
        }
        Output::Json if single => {
            writeln!(stdout, "{}", serde_json::to_string_pretty(&sessions[0])?)?
        }
        Output::Json => writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "apiVersion": crate::domain::resource::API_VERSION,
                "kind": "SessionList",
                "items": sessions,
            }))?
        )?,
        Output::Yaml => {
            for (i, s) in sessions.iter().enumerate() {
                if i > 0 {
                    writeln!(stdout, "---")?;
                }
                write!(stdout, "{}", serde_yaml::to_string(s)?)?;
            }
        }
    }
    Ok(())
}

async fn get(g: &Global, a: GetArgs) -> anyhow::Result<()> {
    let backend = g.backend().await?;
    let (all, revision, unreadable) = backend.list_full().await?;
    for u in &unreadable {
        eprintln!(
            "warning: stored session {:?} is unreadable and set aside: {}",
            u.name,
            u.reason.escape_debug()
        );
    }
    let sessions: Vec<Session> = match &a.name {
        Some(n) => match all.iter().find(|s| s.name() == n).cloned() {
            Some(s) => vec![s],
            None if a.watch => vec![],
            None => bail!("session {n:?} not found"),
        },
        None => all,
    };
    if !(a.watch && sessions.is_empty()) {
        print_sessions(a.output, &sessions, a.name.is_some())?;
    } else if matches!(a.output, Output::Table) {
        println!("{TABLE_HEADER}");
    }
    if !a.watch {
        return Ok(());
    }
    let mut watch = backend.watch(revision).await?;
    loop {
        let batch = tokio::select! {
            _ = wait_for_signal() => return Ok(()),
            b = watch.next_batch(Duration::from_secs(10)) => b?,
        };
        for ev in batch {
            if a.name.as_deref().is_some_and(|n| n != ev.name) {
                continue;
            }
            let Some(obj) = ev.object else { continue };
            match a.output {
                Output::Table => {
                    if ev.kind == EventType::Deleted {
                        println!("{:<24} Deleted", ev.name);
                    } else {
                        println!("{}", table_row(&obj));
                    }
                }
                Output::Json => println!("{}", serde_json::json!({"type": ev.kind, "object": obj})),
                Output::Yaml => print!(
                    "---\n{}",
                    serde_yaml::to_string(&serde_json::json!({"type": ev.kind, "object": obj}))?
                ),
            }
        }
    }
}

async fn describe(g: &Global, name: &str) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let backend = g.backend().await?;
    let s = backend
        .get(name)
        .await?
        .ok_or_else(|| anyhow!("session {name:?} not found"))?;
    let st = s.status.clone().unwrap_or_default();
    let mut o = String::new();
    let meta = &s.metadata;
    let _ = writeln!(o, "Name:              {}", s.name());
    let _ = writeln!(o, "Labels:            {}", kv(&meta.labels));
    let _ = writeln!(o, "Annotations:       {}", kv(&meta.annotations));
    let _ = writeln!(
        o,
        "UID:               {}",
        meta.uid.clone().unwrap_or_default()
    );
    let created = meta.creation_timestamp.map(|t| t.to_rfc3339());
    let _ = writeln!(o, "Created:           {}", created.unwrap_or_default());
    let _ = writeln!(o, "Generation:        {}", s.generation());
    let rv = meta.resource_version.clone().unwrap_or_default();
    let _ = writeln!(o, "Resource Version:  {rv}");
    if let Some(exp) = s.expires_at() {
        let _ = writeln!(o, "Expires:           {}", exp.to_rfc3339());
    }
    let _ = writeln!(o, "Spec:");
    for line in serde_yaml::to_string(&s.spec)?.lines() {
        let _ = writeln!(o, "  {line}");
    }
    let dash = || "-".to_string();
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, "  Phase:               {}", st.phase);
    let _ = writeln!(
        o,
        "  Container:           {}",
        st.container_id.clone().unwrap_or_else(dash)
    );
    let observed = st.observed_generation.map(|g| g.to_string());
    let _ = writeln!(
        o,
        "  Observed Generation: {}",
        observed.unwrap_or_else(dash)
    );
    let _ = writeln!(o, "  Restart Count:       {}", st.restart_count);
    if let Some(r) = &st.reason {
        let _ = writeln!(o, "  Reason:              {r}");
    }
    if let Some(m) = &st.message {
        let _ = writeln!(o, "  Message:             {m}");
    }
    let _ = writeln!(o, "  Conditions:");
    for c in &st.conditions {
        let _ = writeln!(
            o,
            "    {:<8} {:<6} {}  {}",
            c.type_,
            c.status,
            c.last_transition_time.to_rfc3339(),
            c.reason.clone().unwrap_or_default()
        );
    }
    let _ = writeln!(o, "Container:");
    let summary: Result<Option<serde_json::Value>, String> = match (&st.container_id, &backend) {
        (None, _) => Ok(None),
        (Some(_), Backend::Http(c)) => c.container(name).await.map_err(|e| e.to_string()),
        (Some(id), Backend::Store(..)) => match Runtime::connect(&g.instance).await {
            Err(e) => Err(e.to_string()),
            Ok(rt) => rt
                .inspect(id)
                .await
                .map(|info| Some(crate::runtime::summary(&info)))
                .map_err(|e| e.to_string()),
        },
    };
    match summary {
        Ok(None) => {
            let _ = writeln!(o, "  <none>");
        }
        Err(e) => {
            let _ = writeln!(o, "  <unavailable: {e}>");
        }
        Ok(Some(c)) => {
            let text = |k: &str| match &c[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                v => v.to_string(),
            };
            let mut rows = vec![
                ("Name", "name"),
                ("Image", "image"),
                ("State", "state"),
                ("Started", "startedAt"),
            ];
            if c["running"] != serde_json::Value::Bool(true) {
                rows.extend([("Finished", "finishedAt"), ("Exit Code", "exitCode")]);
            }
            rows.extend([
                ("User", "user"),
                ("Network", "networkMode"),
                ("Read-only", "readonlyRootfs"),
                ("Cap drop", "capDrop"),
                ("Memory", "memory"),
                ("NanoCPUs", "nanoCpus"),
                ("Pids limit", "pidsLimit"),
            ]);
            for (label, key) in rows {
                let _ = writeln!(o, "  {:<12} {}", format!("{label}:"), text(key));
            }
        }
    }
    let _ = writeln!(o, "Events:");
    let events = backend.events(name).await?;
    if events.is_empty() {
        let _ = writeln!(o, "  <none>");
    }
    for e in events {
        let _ = writeln!(
            o,
            "  {}  {:<7} {:<12} {}",
            e.time.format("%Y-%m-%dT%H:%M:%SZ"),
            e.type_,
            e.reason,
            e.message
        );
    }
    print!("{o}");
    Ok(())
}

fn kv(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn delete(g: &Global, a: DeleteArgs) -> anyhow::Result<()> {
    let mut names = a.names.clone();
    if !a.files.is_empty() {
        names.extend(
            crate::files::load_paths(&a.files)?
                .into_iter()
                .map(|d| d.session.metadata.name),
        );
    }
    if names.is_empty() {
        bail!("nothing to delete: give session names or -f FILE");
    }
    let backend = g.backend().await?;
    let mut missing = Vec::new();
    for n in &names {
        match backend.delete(n).await? {
            Some(_) => println!("session/{n} deleted"),
            None if a.ignore_not_found => {}
            None => missing.push(n.clone()),
        }
    }
    if !missing.is_empty() {
        bail!("session(s) not found: {}", missing.join(", "));
    }
    Ok(())
}

async fn patch(g: &Global, a: PatchArgs) -> anyhow::Result<()> {
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

async fn diff(g: &Global, files: &[PathBuf]) -> anyhow::Result<()> {
    let policy = g.policy()?;
    let docs = load_valid(files, &policy)?;
    let backend = g.backend().await?;
    let mut out = String::new();
    for d in &docs {
        let current = backend.get(d.session.name()).await?;
        let next = ops::merged(current.as_ref(), &d.session, "cli");
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
                let old_hash = policy.sandbox(&cur.spec).map(|s| s.spec_hash()).ok();
                let new_hash = policy.sandbox(&next.spec).map(|s| s.spec_hash()).ok();
                if old_hash == new_hash {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_are_bounded() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert!(duration("0s").unwrap_err().contains("outside"));
        assert!(duration("8days").unwrap_err().contains("outside"));
        assert!(duration("1000000000000h").is_err());
        assert!(
            !duration("\u{1b}x")
                .unwrap_err()
                .chars()
                .any(char::is_control)
        );
    }
}
