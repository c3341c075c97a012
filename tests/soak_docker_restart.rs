//! Chaos soak: the Docker daemon itself is restarted under a running orchestrator.
//!
//! Its own test binary, holding one test, because restarting the engine would break every
//! test running beside it (cargo runs test binaries one at a time). It stops every container
//! on the engine, as any daemon restart does. The engine is restarted the way it was
//! started: `systemctl restart docker` where systemd runs it, otherwise a SIGTERM to
//! `dockerd` and the same command line started again, detached. A machine where neither is
//! possible fails this test loudly; it never skips.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SESSIONS: usize = 5;
/// Where the restarted daemon logs.
const DOCKERD_LOG: &str = "/tmp/dockerd-restarted-by-tests.log";

/// The pid of the running `dockerd`, if there is exactly one.
fn dockerd_pid() -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-x", "dockerd"])
        .output()
        .ok()?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() == 1).then(|| pids[0])
}

fn nul_split(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn systemd_runs_docker() -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Restart the engine; returns how long it was unavailable.
fn restart_engine() -> Duration {
    let t0 = Instant::now();
    if systemd_runs_docker() {
        let st = Command::new("systemctl")
            .args(["restart", "docker"])
            .status()
            .expect("systemctl restart docker");
        assert!(st.success(), "systemctl restart docker failed");
    } else {
        let pid = dockerd_pid().expect(
            "cannot restart the Docker daemon: no single dockerd process is visible here \
             (run the suite where the engine can be restarted)",
        );
        let cmdline = nul_split(
            &std::fs::read(format!("/proc/{pid}/cmdline"))
                .expect("cannot read dockerd's command line (not root?)"),
        );
        // Everything needed to start it again the same way is read before it is stopped.
        let environ = nul_split(
            &std::fs::read(format!("/proc/{pid}/environ"))
                .expect("cannot read dockerd's environment (not root?)"),
        );
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .expect("cannot read dockerd's working directory (not root?)");
        // A daemon started from a directory since deleted: start it from / instead.
        let cwd = if cwd.is_dir() { cwd } else { "/".into() };
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "cannot signal dockerd (pid {pid}); not root?");
        // Gone, or a zombie its parent has not reaped. Whatever happens, it is started again
        // below before anything may fail.
        let exited = (0..600).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
            false
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(DOCKERD_LOG)
            .unwrap();
        let mut c = Command::new("setsid");
        c.arg("--fork")
            .arg(&cmdline[0])
            .args(&cmdline[1..])
            .current_dir(&cwd)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for kv in &environ {
            if let Some((k, v)) = kv.split_once('=') {
                c.env(k, v);
            }
        }
        if !environ.iter().any(|kv| kv.starts_with("PATH=")) {
            c.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        // Detached (setsid forks and returns): the engine outlives this test, as it did.
        let st = c.status().expect("cannot start dockerd again");
        assert!(
            st.success(),
            "setsid --fork dockerd failed; see {DOCKERD_LOG}"
        );
        assert!(
            exited,
            "dockerd (pid {pid}) did not exit within 60 s of SIGTERM"
        );
    }
    wait_until(
        Duration::from_secs(60),
        &format!("the engine to answer again (its log: {DOCKERD_LOG})"),
        engine_answers,
    );
    t0.elapsed()
}

/// Every session's containers as (session, running?) — for the "never two live" invariant.
fn live_per_session(env: &Env) -> std::collections::HashMap<String, usize> {
    let out = Command::new("docker")
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
    let live_restore = docker(&["info", "--format", "{{.LiveRestoreEnabled}}"]);
    assert_eq!(
        live_restore, "false",
        "with live-restore the engine keeps containers running across its restart, and this \
         test would prove nothing"
    );
    let mut env = Env::new();
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

    let down = restart_engine();
    eprintln!("engine unavailable for {} ms", down.as_millis());

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
        env.orchestrator
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
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
}
