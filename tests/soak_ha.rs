//! Soak with three replicas: for `SOAK_HA_SECONDS` (default 120) the current leader is
//! SIGKILLed every ~10 s and a new replica replaces it, while `chaos` kills sandboxes. An
//! independent sampler (`docker ps` every 100 ms) checks that no session ever has two
//! running containers; at the end every fault is recovered, every session is Running and
//! nothing is orphaned. Takeover and recovery times are reported.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn soak_seconds() -> u64 {
    std::env::var("SOAK_HA_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn three_replicas_survive_leader_kills_while_chaos_kills_sandboxes() {
    let secs = soak_seconds();
    let env = Env::new();
    let flags = ["--stable-after", "2s"];
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| env.spawn_replica(&format!("r{i}"), &flags))
        .collect();
    wait_until(Duration::from_secs(10), "a leader", || {
        env.leader_pid().is_some()
    });
    let names: Vec<String> = (0..12).map(|i| format!("ha{i}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|n| session_yaml(n, &env.image, ""))
        .collect();
    let out = env.cli(
        &["apply", "-f", "-", "--wait", "--timeout", "90s"],
        Some(&manifests.join("---\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The independent sampler: running containers per session, straight from the engine.
    let stop = Arc::new(AtomicBool::new(false));
    let doubles = Arc::new(Mutex::new(Vec::<String>::new()));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, doubles, samples) = (stop.clone(), doubles.clone(), samples.clone());
        let (instance, started) = (env.instance.clone(), Instant::now());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(docker_bin())
                    .args([
                        "ps",
                        "--filter",
                        &format!("label=orchestrator.mcp.dev/instance={instance}"),
                        "--filter",
                        "status=running",
                        "--format",
                        "{{.Label \"orchestrator.mcp.dev/session\"}}",
                    ])
                    .output()
                    .expect("docker ps");
                let mut per: HashMap<String, usize> = HashMap::new();
                for s in String::from_utf8_lossy(&out.stdout).lines() {
                    *per.entry(s.to_string()).or_default() += 1;
                }
                for (s, n) in per {
                    if n > 1 {
                        doubles.lock().unwrap().push(format!(
                            "{s}: {n} running containers at {:?}",
                            started.elapsed()
                        ));
                    }
                }
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let chaos_log = env.dir.path().join("chaos.log");
    let chaos = env
        .command_for_test()
        .args([
            "chaos",
            "--duration",
            &format!("{secs}s"),
            "--interval",
            "1s",
            "--faults",
            "kill,rm,stop,sigkill",
            "--recovery-timeout",
            "30s",
            "--quiet",
            "5s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&chaos_log).unwrap())
        .spawn()
        .expect("chaos");

    // Kill the leader every 10 s; a new replica replaces it.
    let started = Instant::now();
    let mut takeovers = Vec::new();
    let mut n = 3;
    let mut next = started + Duration::from_secs(10);
    while next < started + Duration::from_secs(secs) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_secs(10);
        let Some(pid) = env.leader_pid() else {
            continue;
        };
        let Some(i) = replicas.iter().position(|r| r.pid == pid) else {
            continue;
        };
        replicas[i].kill();
        let killed = Instant::now();
        let taken = loop {
            if let Some(p) = env.leader_pid()
                && p != pid
            {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "no takeover within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        takeovers.push(taken);
        replicas[i] = env.spawn_replica(&format!("r{n}"), &flags);
        n += 1;
    }

    let out = wait_output(chaos, Duration::from_secs(secs + 120));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chaos --json printed no report ({e}): {}",
            std::fs::read_to_string(&chaos_log).unwrap_or_default()
        )
    });
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    takeovers.sort();
    eprintln!(
        "soak with 3 replicas over {secs} s: {} leader kills, takeover p50 {} ms, max {} ms; \
         chaos {report}; {} sampler passes",
        takeovers.len(),
        percentile(&takeovers, 0.5).as_millis(),
        takeovers.last().copied().unwrap_or_default().as_millis(),
        samples.load(Ordering::Relaxed)
    );
    assert!(
        takeovers.len() as u64 >= (secs / 10).saturating_sub(2),
        "too few leader kills: {takeovers:?}"
    );
    assert!(
        takeovers.iter().all(|t| *t <= Duration::from_secs(5)),
        "every takeover within 5 s: {takeovers:?}"
    );
    let doubles = doubles.lock().unwrap().clone();
    assert!(
        doubles.is_empty(),
        "a session had two running containers: {doubles:?}"
    );
    assert!(out.status.success(), "chaos failed: {report}");
    assert!(report["injected"].as_u64().unwrap() >= secs / 3, "{report}");
    assert_eq!(report["recovered"], report["injected"], "{report}");
    assert!(
        report["violations"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_converged(&env, &names);
    for n in &names {
        let s = env.get_json(n).unwrap();
        assert_eq!(s["status"]["phase"], "Running", "{n}: {s}");
    }
}
