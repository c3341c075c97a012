//! Chaos soak: a Docker daemon is restarted under a running orchestrator.
//!
//! The daemon is a private one this test starts (`common::engine::PrivateEngine`: its own
//! socket, data root, exec root and pidfile, in its own network namespace) and stops
//! afterwards; `serve` and every docker call here reach it through `DOCKER_HOST`. The
//! machine's engine and its containers are never stopped or restarted: it is only read from,
//! to copy the sandbox image in. Its own test binary, holding one test, so the private
//! engine's start-up (about a second) is paid once. It never skips: an engine that cannot be
//! started fails the test with its log.

mod common;

use std::time::{Duration, Instant};

use common::engine::PrivateEngine;
use common::*;

const SESSIONS: usize = 5;

/// Every session's containers as (session, running?) — for the "never two live" invariant.
fn live_per_session(env: &Env) -> std::collections::HashMap<String, usize> {
    let mut c = std::process::Command::new(docker_bin());
    if let Some(h) = &env.docker_host {
        c.args(["-H", h]);
    }
    // Not `env.docker`: while the engine comes back a failed listing is just "nothing yet".
    let out = c
        .args([
            "ps",
            "--filter",
            &format!("label=orchestrator.mcp.dev/instance={}", env.instance),
            "--format",
            "{{.Label \"orchestrator.mcp.dev/session\"}}",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut m = std::collections::HashMap::new();
    for l in out.lines().filter(|l| !l.is_empty()) {
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn the_docker_daemon_restarted_under_the_orchestrator() {
    let machine_pid = machine_dockerd_pids();
    // Declared before `env`, so dropped after it: the orchestrator is stopped and its
    // containers removed while the engine still answers.
    let mut engine = PrivateEngine::start(&[sandbox_image()]);
    let live_restore = engine.docker(&["info", "--format", "{{.LiveRestoreEnabled}}"]);
    assert_eq!(
        live_restore, "false",
        "with live-restore the engine keeps containers running across its restart, and this \
         test would prove nothing"
    );
    let mut env = Env::new();
    env.docker_host = Some(engine.docker_host());
    // No periodic resync: recovery must come from the re-opened event stream and the resync
    // it requests.
    env.start_orchestrator(&["--resync-interval", "1h"]);
    let names: Vec<String> = (0..SESSIONS).map(|i| format!("d{i}")).collect();
    let yaml = names
        .iter()
        .map(|n| session_yaml(n, &env.image, ""))
        .collect::<Vec<_>>()
        .join("---\n");
    let out = env.cli(
        &["apply", "-f", "-", "--wait", "--timeout", "60s"],
        Some(&yaml),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_converged(&env, &names);
    let before: Vec<String> = names
        .iter()
        .map(|n| env.wait_running(n, Duration::from_secs(5)))
        .collect();

    let engine_pid = engine.pid();
    let r = engine.restart();
    assert_ne!(engine.pid(), engine_pid, "a new daemon runs");
    eprintln!(
        "private engine ({}) stopped {} ms after SIGTERM, unavailable for {} ms",
        engine.storage_driver(),
        r.stopped.as_millis(),
        r.down.as_millis()
    );

    // Back to one running container per session, status Running, never two live at once.
    let t0 = Instant::now();
    let mut worst = 0;
    wait_until(
        Duration::from_secs(20),
        "every session running again",
        || {
            let live = live_per_session(&env);
            worst = worst.max(live.values().copied().max().unwrap_or(0));
            names.iter().all(|n| live.get(n) == Some(&1))
        },
    );
    assert!(worst <= 1, "a session had {worst} live containers at once");
    assert_converged(&env, &names);
    eprintln!(
        "recovered {SESSIONS} sessions {} ms after the engine answered",
        t0.elapsed().as_millis()
    );
    let after: Vec<String> = names
        .iter()
        .map(|n| env.wait_running(n, Duration::from_secs(5)))
        .collect();
    assert!(
        env.orchestrator_alive(),
        "the orchestrator survived the engine restart"
    );
    let log = env.log_text();
    assert!(
        log.contains("docker event stream"),
        "the lost event stream was noticed and re-opened:\n{log}"
    );
    // The engine stopped every container; each was put back (restarted or replaced).
    for (n, (b, a)) in names.iter().zip(before.iter().zip(&after)) {
        let st = env.get_json(n).unwrap();
        let restarts = st["status"]["restartCount"].as_u64().unwrap_or(0);
        eprintln!("{n}: {} -> {}, restartCount {restarts}", &b[..12], &a[..12]);
        assert!(
            a != b || restarts >= 1,
            "{n} was neither restarted nor replaced: {st}"
        );
    }

    // The machine's engine was not restarted: the same daemon process. (Its containers are
    // not compared: other tests create, kill and remove theirs at the same time.)
    assert_eq!(
        machine_dockerd_pids(),
        machine_pid,
        "the machine's dockerd changed"
    );
}

/// Pids of the dockerd processes other than private ones (whose command line names
/// `--exec-root`): the machine's engine.
fn machine_dockerd_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let exe = cmd.split(' ').next()?;
            (exe.ends_with("dockerd") && !cmd.contains("--exec-root")).then_some(pid)
        })
        .collect();
    pids.sort();
    pids
}
