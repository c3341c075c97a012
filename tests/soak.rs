//! Chaos soak tests: every invariant must hold while things break. Short in CI (about a
//! minute over 20 sessions); `SOAK_SECONDS=600` runs longer.

mod common;

use std::time::Duration;

use common::*;
use mcp_orchestrator::domain::resource::Session;
use serde_json::Value;

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn many(env: &Env, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{}  # {i}\n",
                session_yaml(&format!("s{i}"), &env.image, "").trim_end()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn random_faults_over_twenty_sessions() {
    let mut env = Env::new();
    env.start_orchestrator(&["--stable-after", "2s"]);
    let out = env.cli(
        &["apply", "-f", "-", "--wait", "--timeout", "60s"],
        Some(&many(&env, 20)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs = soak_seconds();
    let out = env.cli(
        &[
            "chaos",
            "--duration",
            &format!("{secs}s"),
            "--interval",
            "1s",
            "--faults",
            "kill,rm,stop,sigkill",
            "--quiet",
            "3s",
            "--json",
        ],
        None,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chaos --json printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("chaos report: {report}");
    assert!(out.status.success(), "chaos failed: {report}");
    let injected = report["injected"].as_u64().unwrap();
    assert!(injected >= secs / 3, "too few faults: {report}");
    assert_eq!(report["recovered"], report["injected"]);
    assert!(
        report["violations"].as_array().unwrap().is_empty(),
        "{report}"
    );
    for key in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        assert!(
            report[key].as_u64().unwrap() > 0,
            "{key} measured: {report}"
        );
    }
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_converged(&env, &names);
}

#[test]
fn an_orchestrator_sigkilled_mid_reconcile_converges_after_restart() {
    let mut env = Env::new();
    let rounds = (soak_seconds() / 20).max(2);
    let mut names: Vec<String> = Vec::new();
    for round in 0..rounds {
        env.start_orchestrator(&[]);
        // Write a batch of changes and kill the orchestrator while it is acting on them.
        let batch: Vec<String> = (0..10).map(|i| format!("r{round}-{i}")).collect();
        let yaml = batch
            .iter()
            .map(|n| session_yaml(n, &env.image, ""))
            .collect::<Vec<_>>()
            .join("---\n");
        let out = env.cli(&["apply", "-f", "-"], Some(&yaml));
        assert!(out.status.success());
        if let Some(old) = names.first().cloned() {
            env.ok(&["delete", &old]);
            names.remove(0);
        }
        if let Some(changed) = names.first().cloned() {
            env.ok(&[
                "patch",
                &changed,
                "-p",
                &format!(r#"{{"spec":{{"env":{{"ROUND":"{round}"}}}}}}"#),
            ]);
        }
        wait_until(
            Duration::from_secs(20),
            "the first containers of the batch",
            || env.log_text().matches("Session provisioned").count() > round as usize * 10 + 2,
        );
        env.kill_orchestrator(); // SIGKILL, mid-reconcile
        names.extend(batch);
    }
    env.start_orchestrator(&[]);
    assert_converged(&env, &names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_writes_in_flight_loses_no_acknowledged_write() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let url = env.redis_url();
    let instance = env.instance.clone();
    let image = env.image.clone();
    // A writer creating sessions as fast as it can; it records what was acknowledged.
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut store = None;
        let start = std::time::Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(6) {
            if store.is_none() {
                store = mcp_orchestrator::store::Store::connect(&url, &instance)
                    .await
                    .ok();
            }
            if let Some(s) = &store {
                let name = format!("w{i}");
                if s.create(&Session::new(&name, &image)).await.is_ok() {
                    acked.push(name);
                    i += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis = env.redis.take().unwrap().restart(); // SIGKILL, then start on the same AOF
    env.redis = Some(redis);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 20,
        "the writer made progress: {}",
        acked.len()
    );
    let store = env.store().await;
    let snap = store.list().await.unwrap();
    let stored: std::collections::HashSet<&str> = snap.items.iter().map(|s| s.name()).collect();
    for name in &acked {
        assert!(
            stored.contains(name.as_str()),
            "acknowledged write {name} was lost"
        );
    }
    // The orchestrator reconnected and converged on everything that was written.
    let names: Vec<String> = snap.items.iter().map(|s| s.name().to_string()).collect();
    tokio::task::spawn_blocking(move || {
        assert_converged(&env, &names);
    })
    .await
    .unwrap();
}
