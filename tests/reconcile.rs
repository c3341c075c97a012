//! The reconciler end to end: real Redis, real Docker, the real binary.

mod common;

use std::time::Duration;

use common::*;
use mcp_orchestrator::domain::resource::Session;
use mcp_orchestrator::store::StoreError;

const T: Duration = Duration::from_secs(20);
/// The bound we promise for repairing a killed or removed sandbox (measured ≈ 0.1–0.3 s).
const REPAIR: Duration = Duration::from_secs(3);

#[test]
fn apply_runs_the_sandbox_with_the_whole_contract() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let out = env.apply_yaml(&session_yaml(
        "demo",
        &env.image,
        "  env: {LOG_LEVEL: debug}\n  resources: {memory: 128Mi, cpus: \"0.25\", pids: 64}\n",
    ));
    assert_eq!(out.trim(), "session/demo created");
    let id = env.wait_running("demo", T);
    let st = env.wait_status("demo", T, |s| {
        s["phase"] == "Running" && s["containerId"].is_string()
    });
    assert_eq!(st["status"]["containerId"], id.as_str());
    assert_eq!(st["status"]["observedGeneration"], 1);
    assert_eq!(st["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(st["status"]["conditions"][0]["status"], "True");
    assert!(st["status"]["conditions"][0]["lastTransitionTime"].is_string());

    let inspect: serde_json::Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    let c = &inspect[0];
    let h = &c["HostConfig"];
    assert_eq!(h["NetworkMode"], "none");
    assert_eq!(h["CapDrop"], serde_json::json!(["ALL"]));
    assert!(h["CapAdd"].is_null());
    assert_eq!(
        h["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(h["ReadonlyRootfs"], true);
    assert_eq!(h["Privileged"], false);
    assert!(h["Tmpfs"]["/tmp"].as_str().unwrap().contains("size="));
    assert_eq!(h["Memory"], 128 * 1024 * 1024);
    assert_eq!(h["NanoCpus"], 250_000_000);
    assert_eq!(h["PidsLimit"], 64);
    assert!(h["Binds"].is_null());
    assert!(h["Devices"].as_array().is_none_or(|d| d.is_empty()));
    assert_eq!(h["PidMode"], "");
    assert_eq!(h["IpcMode"], "private");
    assert!(
        c["Mounts"].as_array().unwrap().is_empty(),
        "no volumes or binds"
    );
    let user = c["Config"]["User"].as_str().unwrap();
    assert!(
        !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
        "user {user}"
    );
    assert_eq!(c["Config"]["OpenStdin"], true);
    assert_eq!(c["Config"]["Tty"], false);
    assert_eq!(c["Name"], format!("/mcp-{}.demo", env.instance));
    assert_eq!(c["HostConfig"]["LogConfig"]["Type"], "json-file");
    assert_eq!(c["HostConfig"]["LogConfig"]["Config"]["max-size"], "10m");
    assert_eq!(c["HostConfig"]["Ulimits"][0]["Name"], "nofile");
    assert_eq!(
        c["Config"]["Labels"]["orchestrator.mcp.dev/store"],
        env.store_id().as_str()
    );
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["orchestrator.mcp.dev/session"], "demo");
    assert_eq!(
        labels["orchestrator.mcp.dev/managed-by"],
        "mcp-orchestrator"
    );
    assert_eq!(labels["orchestrator.mcp.dev/generation"], "1");
    assert!(
        labels["orchestrator.mcp.dev/spec-hash"]
            .as_str()
            .unwrap()
            .len()
            >= 16
    );
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&"LOG_LEVEL=debug".into())
    );
    assert_eq!(c["Config"]["NetworkDisabled"], true);

    let log = env.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("Session provisioned") && l.contains("demo") && l.contains(&id)),
        "no 'Session provisioned' log with name and container id:\n{log}"
    );
    // Re-applying the same file is a no-op.
    let again = env.apply_yaml(&session_yaml(
        "demo",
        &env.image,
        "  env: {LOG_LEVEL: debug}\n  resources: {memory: 128Mi, cpus: \"0.25\", pids: 64}\n",
    ));
    assert_eq!(again.trim(), "session/demo unchanged");
    // SIGTERM shuts down gracefully and leaves the sandbox running.
    assert!(env.stop_orchestrator().success());
    assert_eq!(env.containers("demo"), vec![(id, "running".to_string())]);
}

#[test]
fn a_spec_change_recreates_and_delete_removes() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("demo", &env.image, ""));
    let first = env.wait_running("demo", T);
    let hash = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"orchestrator.mcp.dev/spec-hash\"}}",
        &first,
    ]);

    // A label change alone does not touch the container.
    env.ok(&[
        "patch",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"team":"x"}}}"#,
    ]);
    let v = env.get_json("demo").unwrap();
    assert_eq!(
        v["metadata"]["generation"], 1,
        "labels do not bump generation"
    );

    let out = env.ok(&[
        "patch",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"env":{"A":"1"}}}"#,
    ]);
    assert_eq!(out.trim(), "session/demo patched");
    let mut second = String::new();
    wait_until(T, "the container to be recreated", || {
        let c = env.containers("demo");
        if c.len() == 1 && c[0].1 == "running" && c[0].0 != first {
            second = c[0].0.clone();
            true
        } else {
            false
        }
    });
    let hash2 = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"orchestrator.mcp.dev/spec-hash\"}}",
        &second,
    ]);
    assert_ne!(hash, hash2);
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"orchestrator.mcp.dev/generation\"}}",
            &second
        ]),
        "2"
    );
    let st = env.wait_status("demo", T, |s| {
        s["observedGeneration"] == 2 && s["phase"] == "Running"
    });
    assert_eq!(st["status"]["containerId"], second.as_str());
    assert_eq!(
        st["status"]["restartCount"], 0,
        "a spec change is not a restart"
    );

    // JSON patch with a failing test op changes nothing.
    let bad = env.cli(&["patch", "demo", "--type", "json", "-p", r#"[{"op":"test","path":"/spec/image","value":"nope"},{"op":"replace","path":"/spec/env/A","value":"2"}]"#], None);
    assert!(!bad.status.success());
    assert_eq!(env.get_json("demo").unwrap()["spec"]["env"]["A"], "1");

    let out = env.ok(&["delete", "demo"]);
    assert_eq!(out.trim(), "session/demo deleted");
    wait_until(T, "the container to be removed", || {
        env.containers("demo").is_empty()
    });
    let missing = env.cli(&["delete", "demo"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn killed_removed_and_stopped_sandboxes_are_repaired_by_events() {
    let mut env = Env::new();
    // A resync period far longer than the test: repairs must come from Docker events.
    env.start_orchestrator(&["--resync-interval", "1h", "--stable-after", "1s"]);
    env.apply_yaml(&session_yaml("demo", &env.image, ""));
    let id = env.wait_running("demo", T);
    std::thread::sleep(Duration::from_millis(1100)); // a stable run: no crash-loop delay

    docker(&["kill", &id]);
    let took = wait_until(REPAIR, "the killed sandbox to run again", || {
        let c = env.containers("demo");
        c.len() == 1 && c[0].1 == "running"
    });
    eprintln!("docker kill → running: {took:?}");
    env.wait_status("demo", T, |s| {
        s["restartCount"] == 1 && s["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_millis(1100));

    docker(&["rm", "-f", &id]);
    let mut replacement = String::new();
    let took = wait_until(REPAIR, "a replacement for the removed sandbox", || {
        let c = env.containers("demo");
        if c.len() == 1 && c[0].1 == "running" && c[0].0 != id {
            replacement = c[0].0.clone();
            true
        } else {
            false
        }
    });
    eprintln!("docker rm -f → running: {took:?}");
    let st = env.wait_status("demo", T, |s| {
        s["restartCount"] == 2 && s["containerId"].is_string()
    });
    assert_eq!(st["status"]["containerId"], replacement.as_str());
    std::thread::sleep(Duration::from_millis(1100));

    docker(&["stop", "-t", "1", &replacement]);
    let took = wait_until(REPAIR, "the stopped sandbox to run again", || {
        let c = env.containers("demo");
        c.len() == 1 && c[0].1 == "running"
    });
    eprintln!("docker stop → running: {took:?}");
    let log = env.log_text();
    assert!(
        !log.contains("enqueued=1"),
        "the repairs must not come from a resync:\n{log}"
    );
}

#[test]
fn a_restarted_orchestrator_adopts_without_duplicates() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    env.apply_yaml(&format!(
        "{}---\n{}",
        session_yaml("a", &env.image, ""),
        session_yaml("b", &env.image, "")
    ));
    let a = env.wait_running("a", T);
    let b = env.wait_running("b", T);
    env.wait_status("b", T, |s| s["phase"] == "Running");
    env.kill_orchestrator(); // SIGKILL

    // While it is down: an orphan appears and a session is deleted.
    let orphan = docker(&[
        "run",
        "-d",
        "-i",
        "--network",
        "none",
        "--label",
        "orchestrator.mcp.dev/managed-by=mcp-orchestrator",
        "--label",
        &format!("orchestrator.mcp.dev/instance={}", env.instance),
        "--label",
        &format!("orchestrator.mcp.dev/store={}", env.store_id()),
        "--label",
        "orchestrator.mcp.dev/session=ghost",
        "--label",
        &format!("{TEST_LABEL}={}", env.instance),
        &env.image,
    ]);
    env.ok(&["delete", "b"]);

    env.start_orchestrator(&[]);
    wait_until(
        T,
        "the orphan and the deleted session's container to be removed",
        || env.containers("ghost").is_empty() && env.containers("b").is_empty(),
    );
    assert!(!orphan.is_empty());
    // `a` was adopted: the same container, no duplicate, no recreate.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.containers("a"),
        vec![(a.clone(), "running".to_string())]
    );
    assert_ne!(a, b);
    let st = env.get_json("a").unwrap();
    assert_eq!(st["status"]["containerId"], a.as_str());
    assert_eq!(st["status"]["restartCount"], 0);
}

#[test]
fn an_orphan_is_removed_while_running() {
    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1h"]);
    let stray = std::process::Command::new(docker_bin())
        .args([
            "run",
            "-d",
            "-i",
            "--network",
            "none",
            "--label",
            "orchestrator.mcp.dev/managed-by=mcp-orchestrator",
            "--label",
            &format!("orchestrator.mcp.dev/instance={}", env.instance),
            "--label",
            &format!("orchestrator.mcp.dev/store={}", env.store_id()),
            "--label",
            "orchestrator.mcp.dev/session=stray",
            "--label",
            &format!("{TEST_LABEL}={}", env.instance),
            &env.image,
        ])
        .output()
        .expect("docker runs");
    // The reconciler may remove the orphan between its create and its start, so that
    // `docker run` itself fails: that is the orphan removed too.
    let err = String::from_utf8_lossy(&stray.stderr);
    assert!(
        stray.status.success()
            || err.contains("marked for removal")
            || err.contains("No such container"),
        "docker run of the orphan failed: {err}"
    );
    // Its `create` or `start` event triggers a reconcile of a session that does not exist.
    wait_until(T, "the orphan to be removed", || {
        env.containers("stray").is_empty()
    });
    // A container of another instance is none of our business.
    let other = docker(&[
        "run",
        "-d",
        "-i",
        "--network",
        "none",
        "--label",
        "orchestrator.mcp.dev/managed-by=mcp-orchestrator",
        "--label",
        "orchestrator.mcp.dev/instance=someone-else",
        "--label",
        "orchestrator.mcp.dev/session=stray",
        "--label",
        &format!("{TEST_LABEL}={}", env.instance),
        &env.image,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &other]),
        "true"
    );
    docker(&["rm", "-f", &other]);
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict_and_loses_nothing() {
    let env = Env::new();
    let store = env.store().await;
    let created = store
        .create(&Session::new("demo", &env.image))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();

    let mut a = created.clone();
    a.spec.env.insert("WHO".into(), "a".into());
    let a = store.update(&a).await.unwrap();
    assert_eq!(a.metadata.generation, Some(2));

    let mut b = created.clone();
    b.spec.env.insert("WHO".into(), "b".into());
    match store.update(&b).await {
        Err(StoreError::Conflict {
            current, expected, ..
        }) => {
            assert_eq!(expected, rv1);
            assert_eq!(Some(current), a.metadata.resource_version);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = store.get("demo").await.unwrap().unwrap();
    assert_eq!(now.spec.env["WHO"], "a", "the stale write changed nothing");

    // Status writes are CAS too, and do not bump generation.
    let st = mcp_orchestrator::domain::resource::SessionStatus::default();
    assert!(matches!(
        store.update_status("demo", &rv1, &st).await,
        Err(StoreError::Conflict { .. })
    ));
    let s2 = store
        .update_status(
            "demo",
            now.metadata.resource_version.as_deref().unwrap(),
            &st,
        )
        .await
        .unwrap();
    assert_eq!(s2.metadata.generation, Some(2));
    assert_ne!(s2.metadata.resource_version, now.metadata.resource_version);

    // Creating an existing name fails; the CLI reports a stale resourceVersion as a conflict.
    assert!(matches!(
        store.create(&Session::new("demo", &env.image)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let out = env.cli(
        &[
            "patch",
            "demo",
            "--type",
            "merge",
            "-p",
            &format!(
                r#"{{"metadata":{{"resourceVersion":"{rv1}"}},"spec":{{"env":{{"WHO":"c"}}}}}}"#
            ),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        store.get("demo").await.unwrap().unwrap().spec.env["WHO"],
        "a"
    );
}

#[test]
fn expired_sessions_are_removed() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("brief", &env.image, "  ttlSeconds: 2\n"));
    env.wait_running("brief", T);
    wait_until(
        Duration::from_secs(10),
        "the expired session to be deleted",
        || env.get_json("brief").is_none(),
    );
    wait_until(T, "its container to be removed", || {
        env.containers("brief").is_empty()
    });
}

#[tokio::test]
async fn redis_restart_is_survived() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    env.apply_yaml(&session_yaml("one", &env.image, ""));
    env.wait_running("one", T);
    let redis = env.redis.take().unwrap().restart();
    env.redis = Some(redis);
    // The acknowledged write survived (AOF) and the watch reconnects: a new apply is acted on.
    assert!(env.get_json("one").is_some());
    wait_until(T, "the CLI to reach the restarted redis", || {
        env.cli(&["get"], None).status.success()
    });
    env.apply_yaml(&session_yaml("two", &env.image, ""));
    env.wait_running("two", T);
}

#[test]
fn a_new_session_is_reconciled_once_its_own_events_trigger_nothing() {
    let mut env = Env::new();
    // No periodic resync during the test: every reconcile comes from a trigger.
    env.start_orchestrator(&["--resync-interval", "1h"]);
    env.apply_yaml(&session_yaml("once", &env.image, ""));
    let id = env.wait_running("once", T);
    env.wait_status("once", T, |s| s["phase"] == "Running");
    std::thread::sleep(Duration::from_millis(500));
    let log = env.log_text();
    let reconciles = log
        .lines()
        .filter(|l| l.contains("reconcile{session=once}") && l.contains("reconcile start"))
        .count();
    let own: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("docker event") && l.contains("session=once"))
        .collect();
    assert_eq!(
        reconciles, 1,
        "the create and start events the reconcile caused must not wake it again:\n{log}"
    );
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own.iter().all(|l| l.contains("own=true")), "{own:?}");

    // An event nobody expected still wakes it: a kill is repaired at once (the first crash
    // has no backoff).
    docker(&["kill", &id]);
    wait_until(REPAIR, "the killed sandbox to run again", || {
        let c = env.containers("once");
        c.len() == 1 && c[0].1 == "running"
    });
    env.wait_status("once", T, |s| {
        s["restartCount"] == 1 && s["phase"] == "Running"
    });
}

/// Lines of `log` that are resync passes.
fn resyncs(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("resync sessions="))
        .collect()
}

/// Reconciles of `session` started so far, per `log`.
fn reconcile_starts(log: &str, session: &str) -> usize {
    let span = format!("reconcile{{session={session}}}");
    log.lines()
        .filter(|l| l.contains(&span) && l.contains("reconcile start"))
        .count()
}

/// `after[op] - before[op]`, an op missing from either counting as 0.
fn grew(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
    op: &str,
) -> u64 {
    after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0)
}

#[test]
fn a_resync_costs_one_docker_list_and_ttl_timers_come_from_memory() {
    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1s"]);
    let mut names = Vec::new();
    let mut yaml = Vec::new();
    for i in 0..5 {
        let (ttl, plain) = (format!("ttl-{i}"), format!("plain-{i}"));
        yaml.push(session_yaml(&ttl, &env.image, "  ttlSeconds: 3600\n"));
        yaml.push(session_yaml(&plain, &env.image, ""));
        names.extend([ttl, plain]);
    }
    env.apply_yaml(&yaml.join("---\n"));
    assert_converged(&env, &names);
    // One pass after convergence that wants nothing done now and arms the 5 ttl timers.
    let quiet = "resync sessions=10 enqueued=0 timers=5 ";
    let seen = env.log_text().matches(quiet).count();
    wait_until(T, "a resync with nothing to do", || {
        env.log_text().matches(quiet).count() > seen
    });

    let before = env.docker_calls();
    let log = env.log_text();
    let (passes0, reconciles0) = (resyncs(&log).len(), log.matches("reconcile start").count());
    std::thread::sleep(Duration::from_millis(3500));
    let after = env.docker_calls();
    let log = env.log_text();
    let window = &resyncs(&log)[passes0..];
    let passes = window.len() as u64;
    assert!(passes >= 3, "at least 3 resyncs in 3.5 s: {window:#?}");
    for line in window {
        assert!(line.contains(quiet), "every pass in the window: {line}");
    }
    assert_eq!(
        log.matches("reconcile start").count(),
        reconciles0,
        "no session is reconciled by the resyncs (the ttl ones wait on timers):\n{log}"
    );
    // One bulk list per pass (±1: a pass may straddle a reading of the metrics and the log).
    let lists = grew(&before, &after, "list");
    assert!(
        (passes.saturating_sub(1)..=passes + 1).contains(&lists),
        "{lists} list calls for {passes} resyncs: {before:?} → {after:?}"
    );
    for op in [
        "inspect", "create", "start", "remove", "kill", "stop", "logs", "attach",
    ] {
        assert_eq!(
            grew(&before, &after, op),
            0,
            "no {op} call while nothing changes: {before:?} → {after:?}"
        );
    }

    // A short ttl still expires on time, from the in-memory timer: while the session lives,
    // the 1 s resyncs arm its timer without reconciling it or inspecting anything.
    let applied = std::time::Instant::now();
    env.apply_yaml(&session_yaml("brief", &env.image, "  ttlSeconds: 3\n"));
    env.wait_running("brief", T);
    env.wait_status("brief", T, |s| s["phase"] == "Running");
    let before = env.docker_calls();
    let starts = reconcile_starts(&env.log_text(), "brief");
    let passes0 = resyncs(&env.log_text()).len();
    let quiet = "resync sessions=11 enqueued=0 timers=6 ";
    if let Some(rest) = Duration::from_millis(2400).checked_sub(applied.elapsed()) {
        std::thread::sleep(rest);
    }
    let after = env.docker_calls();
    let log = env.log_text();
    assert_eq!(
        reconcile_starts(&log, "brief"),
        starts,
        "brief is not reconciled before it expires:\n{log}"
    );
    assert_eq!(
        grew(&before, &after, "inspect"),
        0,
        "{before:?} → {after:?}"
    );
    assert!(
        resyncs(&log)[passes0..].iter().any(|l| l.contains(quiet)),
        "a pass armed brief's timer ({quiet}):\n{log}"
    );
    wait_until(
        Duration::from_secs(6),
        "the expired session to be deleted",
        || env.get_json("brief").is_none(),
    );
    let took = applied.elapsed();
    eprintln!("ttlSeconds 3: deleted {took:?} after the apply");
    assert!(
        took >= Duration::from_millis(2900) && took <= Duration::from_secs(5),
        "deleted {took:?} after the apply, expected 3–5 s"
    );
    wait_until(T, "its container to be removed", || {
        env.containers("brief").is_empty()
    });
}
