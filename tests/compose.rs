//! End-to-end test of the packaging (Dockerfile, Dockerfile.mcp, docker-compose.yml) on the
//! real Docker engine: the seed's verification plan.
//!
//! 1. `compose build`: the orchestrator is compiled inside the Dockerfile's builder stage
//!    (the binary in the image must print the same JSON Schema as the one cargo built for
//!    this test run) and the sandbox image comes from Dockerfile.mcp.
//! 2. The Dockerfile.mcp image speaks MCP over stdio to the rmcp client under the sandbox
//!    restrictions: initialize, tools/list, tools/call of every tool; `sandbox_info` sees
//!    no network interface but loopback.
//! 3. `compose up -d`: the app becomes healthy (its HEALTHCHECK is the binary itself) and
//!    logs its connection to redis:6379; Redis runs with AOF.
//! 4. Applying a session (through the CLI inside the app container) makes a new mcp-server
//!    container appear in `docker ps`, with NetworkMode none and the session label, and the
//!    app logs `Session provisioned`.
//! 5. No process of the app container runs as uid 0, and the server holds the Docker
//!    socket's group.
//! 6. `compose down -v` leaves no sandbox, container or volume behind.
//!
//! Base images: the public ones when the engine has or can pull them, else the local
//! stand-ins of `scripts/offline-images` (via `compose_base_images` in scripts/lib.sh), so
//! the real Dockerfiles run with only their base images substituted. Each run has its own
//! Compose project, orchestrator instance, host port and image tags (removed at the end;
//! the build cache stays, so a warm run takes about a minute). Everything is removed on
//! drop, also when the test fails. Without Docker or Compose the test fails; it never skips.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TEST_LABEL, free_port, root, wait_until};
use rmcp::{
    ServiceExt,
    model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation},
};
use serde_json::{Value, json};

fn docker_bin() -> &'static str {
    if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// `docker ARGS`, panicking with stderr on failure; stdout trimmed.
fn docker(args: &[&str]) -> String {
    common::docker(args)
}

/// `docker ARGS`, errors ignored (cleanup).
fn docker_quiet(args: &[&str]) -> String {
    Command::new(docker_bin())
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The Compose command: `$COMPOSE` (e.g. "docker compose"), else docker-compose, else the
/// v2 plugin. Panics when there is none: this test needs Compose.
fn compose_cli() -> Vec<String> {
    if let Ok(c) = std::env::var("COMPOSE")
        && !c.trim().is_empty()
    {
        return c.split_whitespace().map(str::to_string).collect();
    }
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker-compose", "version"]) {
        vec!["docker-compose".into()]
    } else if works(&[docker_bin(), "compose", "version"]) {
        vec![docker_bin().into(), "compose".into()]
    } else {
        panic!(
            "neither docker-compose nor the docker compose plugin works; this test needs Compose \
             (apt-get install docker-compose)"
        )
    }
}

/// RUST_IMAGE, RUNTIME_IMAGE and REDIS_IMAGE as scripts/up chooses them.
fn base_images() -> Vec<(String, String)> {
    let out = Command::new("bash")
        .args(["-c", "source scripts/lib.sh && compose_base_images"])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run bash");
    assert!(
        out.status.success(),
        "choosing or making the base images failed (scripts/lib.sh compose_base_images)"
    );
    let vars: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for key in ["RUST_IMAGE", "RUNTIME_IMAGE", "REDIS_IMAGE"] {
        assert!(
            vars.iter().any(|(k, _)| k == key),
            "compose_base_images printed no {key}: {vars:?}"
        );
    }
    vars
}

/// One Compose project of docker-compose.yml, torn down on drop.
struct Stack {
    compose: Vec<String>,
    file: PathBuf,
    project: String,
    instance: String,
    app_image: String,
    mcp_image: String,
    env: Vec<(String, String)>,
}

impl Stack {
    fn new() -> Stack {
        match Command::new(docker_bin()).arg("info").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "the Docker engine is not answering; this test needs it: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("docker is not installed; this test needs it: {e}"),
        }
        let compose = compose_cli();
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let project = format!("mcpotest{id}");
        let instance = format!("c{id}");
        let app_image = format!("mcp-orchestrator:test-{id}");
        let mcp_image = format!("mcp-server:test-{id}");
        let mut env = base_images();
        env.extend(
            [
                ("APP_IMAGE", app_image.clone()),
                ("MCP_IMAGE", mcp_image.clone()),
                ("ORCHESTRATOR_INSTANCE", instance.clone()),
                ("ALLOWED_IMAGES", "mcp-server:*".to_string()),
                ("HOST_PORT", free_port().to_string()),
                ("RUST_LOG", "info".to_string()),
                ("LOG_FORMAT", "text".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        Stack {
            compose,
            file: root().join("docker-compose.yml"),
            project,
            instance,
            app_image,
            mcp_image,
            env,
        }
    }

    /// `compose -p PROJECT -f docker-compose.yml ARGS` with this stack's variables.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["--ansi", "never", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .current_dir(root());
        // Nothing from the caller's shell reaches the stack but what is set here.
        for var in [
            "GOOGLE_API_KEY",
            "GEMINI_BASE_URL",
            "GEMINI_MODEL",
            "ORCHESTRATOR_TOKEN",
            "PORT",
            "COMPOSE_FILE",
            "COMPOSE_PROJECT_NAME",
        ] {
            c.env_remove(var);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Run compose; returns its output whatever the status.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.compose));
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// Run compose and require success; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "compose {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            tail(&stderr, 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id of the service's container.
    fn container(&self, service: &str) -> String {
        let id = self.ok(&["ps", "-q", service], None).trim().to_string();
        assert!(!id.is_empty(), "no container for the {service} service");
        id
    }

    /// The service's log so far.
    fn logs(&self, service: &str) -> String {
        let out = self.run(&["logs", "--no-color", service], None);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Containers of this stack's orchestrator instance (the sandboxes), `docker ps -a`.
    fn sandboxes(&self) -> Vec<String> {
        let out = docker_quiet(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=orchestrator.mcp.dev/instance={}", self.instance),
        ]);
        out.split_whitespace().map(str::to_string).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- app log ---\n{}", tail(&self.logs("app"), 80));
        }
        let _ = self.run(&["down", "-v", "--remove-orphans", "--timeout", "20"], None);
        for label in [
            format!("label=orchestrator.mcp.dev/instance={}", self.instance),
            format!("label={TEST_LABEL}={}", self.instance),
            format!("label=com.docker.compose.project={}", self.project),
        ] {
            let ids = docker_quiet(&["ps", "-aq", "--filter", &label]);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                docker_quiet(&args);
            }
        }
        let volumes = docker_quiet(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]);
        for v in volumes.split_whitespace() {
            docker_quiet(&["volume", "rm", "-f", v]);
        }
        docker_quiet(&["network", "rm", &format!("{}_default", self.project)]);
        // The test's tags only; the build cache (the untagged builder stages) stays.
        docker_quiet(&["image", "rm", &self.app_image, &self.mcp_image]);
    }
}

/// `P-Q`: two consecutive free loopback ports, for a host port range.
fn two_free_ports() -> String {
    loop {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return format!("{p}-{}", p + 1);
        }
    }
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `docker inspect --format FORMAT ID`.
fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, id])
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_stack_passes_the_seed_verification_plan() {
    let stack = Stack::new();

    // 1. compose build: the orchestrator compiles inside the builder stage.
    let started = Instant::now();
    let build = stack.ok(&["build"], None);
    eprintln!("compose build: {:?}", started.elapsed());
    assert!(
        build.contains("cargo build --release --locked --bins"),
        "the build did not run the Dockerfile's cargo build step:\n{}",
        tail(&build, 40)
    );
    let in_image = docker(&[
        "run",
        "--rm",
        "--label",
        &format!("{TEST_LABEL}={}", stack.instance),
        "--entrypoint",
        "/usr/local/libexec/mcp-orchestrator",
        &stack.app_image,
        "schema",
    ]);
    let on_host = Command::new(common::BIN).arg("schema").output().unwrap();
    assert_eq!(
        in_image,
        String::from_utf8_lossy(&on_host.stdout).trim(),
        "the image's binary was not built from this source"
    );
    let healthcheck = inspect(&stack.app_image, "{{json .Config.Healthcheck.Test}}");
    assert!(
        healthcheck.contains("mcp-orchestrator") && healthcheck.contains("healthcheck"),
        "HEALTHCHECK runs the binary itself: {healthcheck}"
    );
    assert!(
        inspect(&stack.app_image, "{{json .Config.ExposedPorts}}").contains("3000/tcp"),
        "the image exposes PORT 3000"
    );

    // 2. The Dockerfile.mcp image over stdio.
    mcp_over_stdio(&stack).await;

    // 3. compose up -d; healthy; connected to redis:6379; Redis with AOF.
    let started = Instant::now();
    stack.ok(&["up", "-d"], None);
    let app = stack.container("app");
    let mut health = String::new();
    wait_until(Duration::from_secs(120), "the app to be healthy", || {
        health = inspect(&app, "{{if .State.Health}}{{.State.Health.Status}}{{end}}");
        health == "healthy"
    });
    eprintln!("compose up -d to healthy: {:?}", started.elapsed());
    let log = stack.logs("app");
    assert!(
        log.lines()
            .any(|l| l.contains("connected to Redis") && l.contains("redis://redis:6379")),
        "the app log shows no connection to redis:6379:\n{}",
        tail(&log, 30)
    );
    let aof = stack.ok(
        &[
            "exec",
            "-T",
            "redis",
            "redis-cli",
            "config",
            "get",
            "appendonly",
        ],
        None,
    );
    assert!(aof.contains("yes"), "Redis runs with AOF: {aof}");

    // 4. Applying a session makes a sandbox appear; the app logs `Session provisioned`.
    let before = docker(&["ps", "-q"]);
    let session = "compose-e2e";
    let manifest = common::session_yaml(session, &stack.mcp_image, "");
    let applied = stack.ok(
        &["exec", "-T", "app", "mcp-orchestrator", "apply", "-f", "-"],
        Some(&manifest),
    );
    eprintln!("apply: {}", applied.trim());
    let mut sandbox = String::new();
    wait_until(
        Duration::from_secs(60),
        "the session's container in docker ps",
        || {
            sandbox = docker(&[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=orchestrator.mcp.dev/instance={}", stack.instance),
                "--filter",
                &format!("label=orchestrator.mcp.dev/session={session}"),
            ]);
            !sandbox.is_empty() && !sandbox.contains('\n')
        },
    );
    assert!(
        !before.lines().any(|id| sandbox.starts_with(id)),
        "the sandbox is a new container"
    );
    assert_eq!(inspect(&sandbox, "{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(inspect(&sandbox, "{{.Config.Image}}"), stack.mcp_image);
    assert_eq!(
        inspect(
            &sandbox,
            "{{index .Config.Labels \"orchestrator.mcp.dev/session\"}}"
        ),
        session
    );
    wait_until(
        Duration::from_secs(30),
        "`Session provisioned` in the app log",
        || {
            stack.logs("app").lines().any(|l| {
                l.contains("Session provisioned")
                    && l.contains(session)
                    && l.contains(&sandbox[..12])
            })
        },
    );
    let listed = stack.ok(&["exec", "-T", "app", "mcp-orchestrator", "get"], None);
    assert!(listed.contains(session), "get lists the session: {listed}");

    // 5. Nothing in the app container runs as root; the server has the socket's group.
    let top = docker(&["top", &app, "-eo", "pid,uid,args"]);
    eprintln!("app processes:\n{top}");
    let mut serve_pid = None;
    for line in top.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (pid, uid) = (cols.next().unwrap(), cols.next().unwrap());
        assert_ne!(
            uid, "0",
            "a process of the app container runs as root: {line}"
        );
        if line.contains("libexec/mcp-orchestrator serve") {
            serve_pid = Some(pid.to_string());
        }
    }
    let serve_pid = serve_pid.expect("`mcp-orchestrator serve` runs in the app container");
    let status = std::fs::read_to_string(format!("/proc/{serve_pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        field("Uid:").iter().all(|u| u == "10001"),
        "serve runs as uid 10001: {:?}",
        field("Uid:")
    );
    let socket_gid = std::os::unix::fs::MetadataExt::gid(
        &std::fs::metadata("/var/run/docker.sock").expect("the Docker socket"),
    )
    .to_string();
    assert!(
        field("Groups:").contains(&socket_gid),
        "serve holds the socket's group {socket_gid}: {:?}",
        field("Groups:")
    );
    assert_eq!(field("CapEff:"), ["0000000000000000"], "no capabilities");

    // 5b. Two replicas (`--scale app=2`): one leads, the other stands by. Stopping the
    //     leader hands over and removes no sandbox (another replica is live); only the
    //     last replica's stop removes them (step 6).
    let range = two_free_ports();
    let out = stack
        .command(&["up", "-d", "--no-recreate", "--scale", "app=2"])
        .env("HOST_PORT", &range)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scale app=2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let apps = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={}", stack.project),
        "--filter",
        "label=com.docker.compose.service=app",
    ]);
    let second = apps
        .lines()
        .find(|id| !id.starts_with(&app) && !app.starts_with(*id))
        .unwrap_or_else(|| panic!("a second app replica: {apps}"))
        .to_string();
    let logs_of = |id: &str| {
        let out = Command::new(docker_bin())
            .args(["logs", id])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    wait_until(Duration::from_secs(60), "the second replica's API", || {
        logs_of(&second).contains("HTTP API listening")
    });
    assert!(logs_of(&app).contains("this replica is now the leader"));
    assert!(!logs_of(&second).contains("this replica is now the leader"));
    docker(&["stop", "--time", "20", &app]);
    wait_until(
        Duration::from_secs(15),
        "the second replica to lead",
        || logs_of(&second).contains("this replica is now the leader"),
    );
    let app_log = logs_of(&app);
    assert!(
        app_log.contains("the sandboxes stay"),
        "a replica that is not the last keeps the sandboxes:\n{}",
        tail(&app_log, 20)
    );
    assert_eq!(
        inspect(&sandbox, "{{.State.Running}}"),
        "true",
        "the sandbox survives the stop of one replica"
    );

    // 6. compose down -v leaves nothing behind.
    let started = Instant::now();
    stack.ok(&["down", "-v"], None);
    eprintln!("compose down -v: {:?}", started.elapsed());
    assert_eq!(
        stack.sandboxes(),
        Vec::<String>::new(),
        "compose down -v left sandboxes behind"
    );
    assert_eq!(
        docker_quiet(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", stack.project)
        ]),
        "",
        "compose down -v left containers behind"
    );
    assert_eq!(
        docker_quiet(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", stack.project)
        ]),
        "",
        "compose down -v left the Redis volume behind"
    );
}

/// Drive the Dockerfile.mcp image with the rmcp client over `docker run -i`, under the
/// sandbox restrictions: every tool is called once; `sandbox_info` sees only loopback.
async fn mcp_over_stdio(stack: &Stack) {
    let image = &stack.mcp_image;
    let user = inspect(image, "{{.Config.User}}");
    assert_eq!(user, "65534:65534", "the sandbox image runs as nobody");
    let layers = inspect(image, "{{len .RootFS.Layers}}");
    assert_eq!(layers, "1", "FROM scratch plus the binary: one layer");

    let step = Duration::from_secs(30);
    let mut child = tokio::process::Command::new(docker_bin())
        .args([
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--label",
            &format!("{TEST_LABEL}={}", stack.instance),
            image,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("docker run of the sandbox image");
    let started = Instant::now();
    let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = tokio::time::timeout(
        step,
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("compose-test", "0.1.0"),
        )
        .serve(io),
    )
    .await
    .expect("initialize timed out")
    .expect("initialize failed");
    eprintln!(
        "sandbox image: docker run to initialized in {:?}",
        started.elapsed()
    );
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("mcp-server")
    );

    let tools = tokio::time::timeout(step, client.list_all_tools())
        .await
        .expect("tools/list timed out")
        .expect("tools/list failed");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    let calls: [(&str, Value); 8] = [
        ("echo", json!({"text": "hello from compose"})),
        ("add", json!({"a": 40, "b": 2})),
        ("sandbox_info", json!({})),
        ("save_note", json!({"name": "n1", "text": "kept in tmpfs"})),
        ("read_note", json!({"name": "n1"})),
        ("list_notes", json!({})),
        ("sleep", json!({"seconds": 0.1, "steps": 1})),
        ("toggle_extra_tool", json!({"enabled": false})),
    ];
    let mut unknown: Vec<&String> = names
        .iter()
        .filter(|n| !calls.iter().any(|(c, _)| c == n))
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "tools this test does not call yet: {unknown:?}"
    );
    let mut results = std::collections::HashMap::new();
    for (tool, args) in calls {
        assert!(
            names.iter().any(|n| n == tool),
            "tools/list lacks {tool}: {names:?}"
        );
        let Value::Object(args) = args else {
            unreachable!()
        };
        let result = tokio::time::timeout(
            step,
            client.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args)),
        )
        .await
        .unwrap_or_else(|_| panic!("tools/call {tool} timed out"))
        .unwrap_or_else(|e| panic!("tools/call {tool} failed: {e}"));
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text())
            .map(|t| t.text.as_str())
            .collect();
        assert_ne!(result.is_error, Some(true), "{tool} failed: {text}");
        results.insert(tool, text);
    }
    assert_eq!(results["echo"], "hello from compose");
    assert_eq!(results["add"], "42");
    assert!(
        results["sleep"].starts_with("slept"),
        "{}",
        results["sleep"]
    );
    assert_eq!(results["read_note"], "kept in tmpfs");
    let sandbox: Value = serde_json::from_str(&results["sandbox_info"]).unwrap();
    assert_eq!(
        sandbox["network_interfaces"],
        json!(["lo"]),
        "no network interface but loopback: {sandbox}"
    );
    assert_eq!(sandbox["uid"], json!(65534), "{sandbox}");
    assert_eq!(sandbox["root_writable"], json!(false), "{sandbox}");
    let notes: Value = serde_json::from_str(&results["list_notes"]).unwrap();
    assert_eq!(notes, json!(["n1"]));

    client.cancel().await.expect("client shutdown");
    let status = tokio::time::timeout(step, child.wait())
        .await
        .expect("the sandbox did not exit on stdin EOF")
        .unwrap();
    assert_eq!(status.code(), Some(0), "exit status after stdin EOF");
}

/// The builder stage (from `FROM ${RUST_IMAGE} AS builder` to the first blank line) of
/// `path`.
fn builder_stage(path: &str) -> String {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let start = text
        .find("FROM ${RUST_IMAGE} AS builder")
        .unwrap_or_else(|| panic!("{path} has no builder stage"));
    let stage = &text[start..];
    stage[..stage.find("\n\n").unwrap_or(stage.len())].to_string()
}

/// Dockerfile and Dockerfile.mcp share their builder stage byte for byte, so that the
/// second image of `compose build` comes from the layer cache instead of compiling every
/// dependency again (≈ 10 minutes on two cores).
#[test]
fn dockerfiles_share_the_builder_stage() {
    let app = builder_stage("Dockerfile");
    assert!(
        app.contains("cargo build --release --locked --bins"),
        "{app}"
    );
    assert_eq!(
        app,
        builder_stage("Dockerfile.mcp"),
        "the builder stages of Dockerfile and Dockerfile.mcp differ"
    );
}
