//! The kubectl-style command line: the clap definitions (here), the verbs
//! ([`verbs`] for desired state, [`admin`] for the engine-side and operational ones,
//! [`chat`](mod@chat) for the chat client), where they read and write ([`backend`]), and how
//! they print ([`output`]). `serve` is only dispatched from here; its composition root is
//! [`crate::server`]. Every verb returns `Result`; [`main`] turns an error into one line on
//! stderr and a non-zero exit. `anyhow` lives only in this module.

pub mod admin;
pub mod backend;
pub mod chat;
pub mod output;
pub mod targets;
pub mod verbs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::ApiClient;
use crate::domain::contract;
use crate::domain::limits::flag_duration;
use crate::redis_conn::{RedisTarget, Secret};
use crate::server::ServeArgs;
use crate::store::Store;
use backend::Backend;
use output::Output;

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
    /// Redis holding the desired state (unused with --redis-sentinels).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        help_heading = "Redis",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Redis Sentinel addresses, `host:port,host:port` (port 26379 when left out): find the
    /// primary through them and follow its failovers. Needs --redis-sentinel-master.
    #[arg(
        long,
        env = "REDIS_SENTINELS",
        help_heading = "Redis",
        global = true,
        value_name = "HOST:PORT,..."
    )]
    pub redis_sentinels: Option<String>,
    /// The name the sentinels monitor the primary under (with --redis-sentinels).
    #[arg(
        long,
        env = "REDIS_SENTINEL_MASTER",
        help_heading = "Redis",
        global = true,
        value_name = "NAME"
    )]
    pub redis_sentinel_master: Option<String>,
    /// Password of the Redis nodes (replaces one in --redis-url; never logged).
    #[arg(
        long,
        env = "REDIS_PASSWORD",
        help_heading = "Redis",
        global = true,
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub redis_password: Option<Secret>,
    /// Password of the sentinels (their own `requirepass`; never logged).
    #[arg(
        long,
        env = "REDIS_SENTINEL_PASSWORD",
        help_heading = "Redis",
        global = true,
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub redis_sentinel_password: Option<Secret>,
    /// Redis database number (replaces one in --redis-url).
    #[arg(
        long,
        env = "REDIS_DB",
        help_heading = "Redis",
        global = true,
        value_name = "N"
    )]
    pub redis_db: Option<i64>,
    /// TLS to the sentinels and the Redis nodes (with --redis-sentinels; one Redis is
    /// reached over TLS with a `rediss://` URL).
    #[arg(long, env = "REDIS_TLS", help_heading = "Redis", global = true)]
    pub redis_tls: bool,
    /// A PEM file of the CA(s) to verify Redis (and sentinel) TLS certificates with,
    /// instead of the system's roots.
    #[arg(
        long,
        env = "REDIS_TLS_CA",
        help_heading = "Redis",
        global = true,
        value_name = "FILE"
    )]
    pub redis_tls_ca: Option<PathBuf>,
    /// Every store write waits until this many replicas acknowledged it (Redis `WAIT`) and
    /// fails otherwise; 0: writes do not wait.
    #[arg(
        long,
        env = "REDIS_WAIT_REPLICAS",
        help_heading = "Redis",
        default_value_t = 0,
        global = true,
        value_name = "N"
    )]
    pub redis_wait_replicas: u32,
    /// How long a write waits for --redis-wait-replicas (at most 1m).
    #[arg(
        long,
        env = "REDIS_WAIT_TIMEOUT", help_heading = "Redis",
        default_value = "1s",
        global = true,
        value_parser = flag_duration,
        value_name = "DURATION"
    )]
    pub redis_wait_timeout: Duration,
    /// Orchestrator instance: scopes Redis keys and container labels.
    #[arg(
        long,
        env = "ORCHESTRATOR_INSTANCE",
        default_value = "default",
        global = true,
        value_parser = instance_name
    )]
    pub instance: String,
    /// Talk to a running `serve` over HTTP instead of Redis (the token comes from
    /// ORCHESTRATOR_TOKEN).
    #[arg(long, env = "ORCHESTRATOR_URL", global = true)]
    pub server: Option<String>,
}

impl Global {
    /// Where the CLI reads and writes: the API when `--server` is given, else Redis.
    pub async fn backend(&self) -> anyhow::Result<Backend> {
        match &self.server {
            Some(url) => Ok(Backend::http(ApiClient::new(
                url,
                std::env::var("ORCHESTRATOR_TOKEN").ok(),
            ))),
            None => Ok(Backend::store(self.store().await?, &self.instance)),
        }
    }

    /// The Redis store of this instance.
    pub async fn store(&self) -> anyhow::Result<Store> {
        let target = self.redis_target()?;
        Store::connect(target.clone(), &self.instance)
            .await
            .with_context(|| format!("cannot connect to Redis at {target}"))
    }

    /// Where Redis is, from the Redis flags (and their environment variables); errors name
    /// the flag.
    pub fn redis_target(&self) -> anyhow::Result<RedisTarget> {
        let target = match (&self.redis_sentinels, &self.redis_sentinel_master) {
            (Some(list), Some(master)) => RedisTarget::sentinel(list, master)
                .context("--redis-sentinels/--redis-sentinel-master")?,
            (None, None) => RedisTarget::url(self.redis_url.as_str()),
            (Some(_), None) => anyhow::bail!(
                "--redis-sentinels (REDIS_SENTINELS) needs --redis-sentinel-master \
                 (REDIS_SENTINEL_MASTER)"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--redis-sentinel-master (REDIS_SENTINEL_MASTER) needs --redis-sentinels \
                 (REDIS_SENTINELS)"
            ),
        };
        let ca = match &self.redis_tls_ca {
            None => None,
            Some(path) => {
                Some(read_ca(path).with_context(|| format!("--redis-tls-ca {}", path.display()))?)
            }
        };
        target
            .with_passwords(
                self.redis_password.clone(),
                self.redis_sentinel_password.clone(),
            )
            .context("--redis-sentinel-password")?
            .with_db(self.redis_db)
            .context("--redis-db")?
            .with_tls(self.redis_tls, ca)
            .context("--redis-tls/--redis-tls-ca")?
            .with_wait(self.redis_wait_replicas, self.redis_wait_timeout)
            .context("--redis-wait-timeout")
    }
}

/// A CA bundle, at most [`crate::redis_conn::MAX_CA_BYTES`] (one byte more is read, to tell).
fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let max = crate::redis_conn::MAX_CA_BYTES;
    let mut pem = Vec::new();
    std::fs::File::open(path)?
        .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut pem)?;
    anyhow::ensure!(pem.len() <= max, "larger than {max} bytes");
    Ok(pem)
}

fn instance_name(s: &str) -> Result<String, String> {
    contract::validate_instance(s).map(|()| s.to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reconciler until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Create or update sessions and warm pools from files, directories or stdin (`-`).
    Apply(ApplyArgs),
    /// List sessions or warm pools (all, by label selector), or show the named ones.
    Get(GetArgs),
    /// Show a session's spec, status, container and recent events (or a warm pool's spec,
    /// status and events).
    Describe {
        /// Session names, `session/NAME`, `warmpool/NAME` (`wp/NAME`), or `wp` followed by
        /// pool names (`wp` alone: every pool).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete sessions or warm pools by name, by file, by label selector or all of them.
    Delete(DeleteArgs),
    /// Patch a session (or a warm pool: `warmpool/NAME`) with an RFC 7386 merge patch or an
    /// RFC 6902 JSON patch.
    Patch(PatchArgs),
    /// Show what `apply` would change, as a unified diff, and which containers it recreates.
    Diff {
        /// Files, directories or `-`.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Wait until sessions reach a phase (`--for=phase=Running`) or are gone
    /// (`--for=delete`). Sessions only: warm pools have no phase (follow one with
    /// `get warmpool/NAME -w`).
    Wait(WaitArgs),
    /// Recreate sessions' sandboxes on purpose (a rollout restart), recorded as an event (`RestartRequested`).
    Restart {
        /// Session names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print a session sandbox's stderr (never its stdout: that is the MCP stream).
    Logs(LogsArgs),
    /// Show the contract policy the CLI admits files with, and whose it is.
    Policy,
    /// Print the JSON Schema of a kind (Session by default).
    Schema {
        /// The kind: Session or WarmPool.
        #[arg(long, value_enum, ignore_case = true, default_value = "Session")]
        kind: SchemaKind,
    },
    /// Print a shell completion script (`source <(mcp-orchestrator completion bash)`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    /// Serve the session's sandbox tools as a stdio MCP server, for MCP clients configured
    /// with a command (proxies to the session's gateway of a running `serve`:
    /// `--server`/`ORCHESTRATOR_URL`, default `http://127.0.0.1:$PORT`, with
    /// `ORCHESTRATOR_TOKEN`). Logs go to stderr; stdout carries only MCP.
    Mcp {
        /// Session name.
        name: String,
    },
}

/// `chaos` options.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How long to inject faults.
    #[arg(long, default_value = "60s", value_parser = flag_duration)]
    duration: Duration,
    /// Time between faults.
    #[arg(long, default_value = "1s", value_parser = flag_duration)]
    interval: Duration,
    /// Only sessions whose labels match, e.g. `team=research`.
    #[arg(long, short = 'l', default_value = "")]
    selector: String,
    /// Fault kinds: kill, rm, stop, sigkill.
    #[arg(long, value_delimiter = ',', default_value = "kill,rm,stop,sigkill")]
    faults: Vec<String>,
    /// A fault not recovered within this counts as unrecovered.
    #[arg(long, default_value = "30s", value_parser = flag_duration)]
    recovery_timeout: Duration,
    /// Quiet period before the final orphan and duplicate checks.
    #[arg(long, default_value = "5s", value_parser = flag_duration)]
    quiet: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The kinds `schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// A Session document.
    #[value(name = "Session")]
    Session,
    /// A WarmPool document.
    #[value(name = "WarmPool")]
    WarmPool,
}

/// `apply` options.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files, directories (their *.yaml, *.yml, *.json) or `-` for stdin. Repeatable. Files
    /// may mix sessions and warm pools; pools are applied first.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Validate and report, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait until every applied session is Running (pools are not waited for).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = flag_duration)]
    timeout: Duration,
    /// Delete the sessions and warm pools that match `--selector` and that the files no
    /// longer declare (kubectl's prune; objects of the specs directory are never pruned).
    #[arg(long, requires = "selector")]
    prune: bool,
    /// The label selector `--prune` works within (e.g. `team=research`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

/// `get` options.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Session names, `session/NAME`, `warmpool/NAME` (`wp/NAME`), or `warmpools` (`wp`)
    /// followed by pool names; all sessions (matching `-l`) when omitted, all pools with
    /// `warmpools` alone.
    names: Vec<String>,
    /// Only objects whose labels match, e.g. `team=research,tier!=free`.
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// After the current state, follow changes.
    #[arg(short, long)]
    watch: bool,
}

/// `delete` options.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Session names, `session/NAME`, `warmpool/NAME` (`wp/NAME`), or `warmpools` (`wp`)
    /// followed by pool names (alone, with `-l` or `--all`: pools instead of sessions).
    names: Vec<String>,
    /// Delete the sessions and warm pools these files declare.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Delete the sessions (or, after `warmpools`, the pools) whose labels match.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete every session (or, after `warmpools`, every pool).
    #[arg(long, conflicts_with_all = ["files", "selector"])]
    all: bool,
    /// Do not fail on objects that do not exist.
    #[arg(long)]
    ignore_not_found: bool,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PatchKind {
    Merge,
    Json,
}

/// `patch` options.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// Session name, `session/NAME`, `warmpool/NAME` (`wp/NAME`), or `wp NAME`.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
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

/// `wait` options.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Session names (or `session/NAME`); warm pools cannot be waited for.
    names: Vec<String>,
    /// Also every session whose labels match (resolved when the wait starts).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// The condition: `phase=PHASE` (e.g. `phase=Running`, at the current generation) or
    /// `delete`.
    #[arg(long = "for", value_parser = parse_condition)]
    condition: crate::domain::wait::Condition,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = flag_duration)]
    timeout: Duration,
}

fn parse_condition(s: &str) -> Result<crate::domain::wait::Condition, String> {
    s.parse()
}

/// `logs` options.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Session name.
    name: String,
    /// Keep printing new lines until the sandbox stops or Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    tail: Option<u64>,
    /// Only lines newer than this (e.g. `5m`).
    #[arg(long, value_parser = flag_duration)]
    since: Option<Duration>,
}

/// Set up logging: `RUST_LOG` filters (default `info,rmcp=warn` for serve, `warn` otherwise),
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
        // rmcp logs every gateway request at info: three lines per tool call.
        "info,rmcp=warn"
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
        Command::Serve(a) => Ok(crate::server::run(&g.redis_target()?, &g.instance, *a).await?),
        Command::Apply(a) => verbs::apply(g, a).await,
        Command::Get(a) => verbs::get(g, a).await,
        Command::Describe { names } => verbs::describe(g, &names).await,
        Command::Delete(a) => verbs::delete(g, a).await,
        Command::Patch(a) => verbs::patch(g, a).await,
        Command::Diff { files } => verbs::diff(g, &files).await,
        Command::Wait(a) => verbs::wait(g, a).await,
        Command::Restart { names } => verbs::restart(g, &names).await,
        Command::Logs(a) => verbs::logs(g, a).await,
        Command::Policy => verbs::policy(g).await,
        Command::Healthcheck => admin::healthcheck(g).await,
        Command::Chaos(a) => admin::chaos(g, a).await,
        Command::Chat { name, message } => chat::chat(g, &name, message).await,
        Command::Mcp { name } => chat::mcp(g, &name).await,
        Command::Foreign { remove, containers } => admin::foreign(g, remove, &containers).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "mcp-orchestrator", &mut std::io::stdout());
            Ok(())
        }
        Command::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Session => crate::domain::resource::json_schema(),
                SchemaKind::WarmPool => crate::domain::pool::json_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}
