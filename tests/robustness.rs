//! A control loop that nothing can wedge or trick (issue 9): supervision, store identity,
//! store resets, version skew and back-off, against a real Redis and the real Docker engine.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(20);

/// `curl` a path of the orchestrator's HTTP API: (status code, body).
fn http_get(env: &Env, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("{}{path}", env.api()))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of one sample of the Prometheus text exposition, e.g.
/// `mcpo_reconciles_total{result="error"}`.
fn metric(env: &Env, sample: &str) -> f64 {
    let (_, text) = http_get(env, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Write an object straight into the store, as an older or newer version (or a bug) could
/// have: bypassing admission. Same atomic layout as the store's own writes.
fn raw_write(env: &Env, name: &str, json: &str) {
    let p = format!("mcpo:{}", env.instance);
    env.redis_cli(&[
        "EVAL",
        "local rv = redis.call('INCR', KEYS[3]) \
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
         redis.call('HSET', KEYS[2], ARGV[1], rv) \
         redis.call('XADD', KEYS[4], rv .. '-0', 'type', 'ADDED', 'name', ARGV[1], 'status', '0', 'object', ARGV[2]) \
         return rv",
        "4",
        &format!("{p}:objects"),
        &format!("{p}:versions"),
        &format!("{p}:rv"),
        &format!("{p}:stream"),
        name,
        json,
    ]);
}

fn container_ids(env: &Env) -> HashMap<String, String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=orchestrator.mcp.dev/instance={}", env.instance),
        "--format",
        "{{.ID}} {{.Label \"orchestrator.mcp.dev/session\"}} {{.Label \"orchestrator.mcp.dev/store\"}}",
    ]);
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let id = it.next()?;
            let session = it.next()?;
            let store = it.next().unwrap_or("");
            Some((format!("{session}@{store}"), id.to_string()))
        })
        .collect()
}

/// Sessions whose every reconcile used to panic (a ttl that overflows the clock) never cost
/// a concurrency slot: with `--concurrency 2` and two of them, other sessions still
/// converge, `describe` exits cleanly, `/readyz` answers, and SIGTERM stops `serve`.
#[test]
fn a_poisoned_session_never_wedges_the_queue() {
    let mut env = Env::new();
    let created = chrono::Utc::now().to_rfc3339();
    for name in ["huge-ttl-1", "huge-ttl-2"] {
        raw_write(
            &env,
            name,
            &format!(
                r#"{{"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{{"name":"{name}","uid":"u-{name}","generation":1,"creationTimestamp":"{created}"}},"spec":{{"image":"{}","ttlSeconds":9000000000000}}}}"#,
                env.image
            ),
        );
    }
    env.start_orchestrator(&["--concurrency", "2", "--resync-interval", "1s"]);
    env.apply_yaml(&session_yaml("fine", &env.image, ""));
    env.wait_status("fine", T, |s| s["phase"] == "Running");
    // Again, after several resyncs have queued the poisoned ones over and over.
    std::thread::sleep(Duration::from_secs(3));
    env.apply_yaml(&session_yaml("fine-2", &env.image, ""));
    env.wait_status("fine-2", T, |s| s["phase"] == "Running");

    let out = env.cli(&["describe", "huge-ttl-1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "describe failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, body) = http_get(&env, "/readyz");
    assert_eq!(code, 200, "{body}");

    let started = Instant::now();
    let status = env.stop_orchestrator();
    assert!(status.success(), "serve exited with {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !env.log_text().contains("task panicked"),
        "no reconcile may panic:\n{}",
        env.log_text()
    );
}

/// `FLUSHALL` under a running `serve`: new writes are reconciled within seconds, and the
/// sandboxes of the store that was wiped are left alone (foreign) until an operator
/// removes them with `foreign --remove`.
#[test]
fn a_store_reset_is_noticed_and_never_deletes_the_old_sandboxes() {
    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1s"]);
    env.apply_yaml(&session_yaml("before", &env.image, ""));
    let old = env.wait_running("before", T);
    let old_store = env.store_id();
    std::thread::sleep(Duration::from_millis(300));

    env.redis_cli(&["FLUSHALL"]);
    let t0 = Instant::now();
    env.apply_yaml(&session_yaml("after", &env.image, ""));
    env.wait_status("after", T, |s| s["phase"] == "Running");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("reset → new session Running in {took:?}");
    assert_ne!(
        env.store_id(),
        old_store,
        "a reset store has a new identity"
    );

    // Several resyncs later the old sandbox still runs: it is not this store's.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &old]),
        "true"
    );
    assert!(metric(&env, "mcpo_store_resets_total") >= 1.0);
    assert_eq!(metric(&env, "mcpo_foreign_containers"), 1.0);
    let listed = env.ok(&["foreign"]);
    assert!(
        listed.contains("before") && listed.contains(&old_store),
        "{listed}"
    );
    env.ok(&["foreign", "--remove"]);
    wait_until(T, "the foreign sandbox to be removed", || {
        env.containers("before").is_empty()
    });
    // The new store's sandbox was not touched by that.
    assert_eq!(env.containers("after").len(), 1);
}

/// Two `serve`s with one instance name on one engine, each with its own Redis (two Compose
/// projects): for 30 s with a 1 s resync, neither removes the other's sandboxes; a session
/// name both use is refused by the second with `NameConflict` instead of a fight.
#[test]
fn two_stores_with_one_instance_name_leave_each_other_alone() {
    let mut a = Env::new();
    let mut b = Env::new();
    b.instance = a.instance.clone();
    a.start_orchestrator(&["--resync-interval", "1s"]);
    b.start_orchestrator(&["--resync-interval", "1s"]);
    a.apply_yaml(&format!(
        "{}---\n{}",
        session_yaml("one", &a.image, ""),
        session_yaml("shared", &a.image, "")
    ));
    a.wait_running("one", T);
    a.wait_status("shared", T, |s| s["phase"] == "Running");
    b.apply_yaml(&format!(
        "{}---\n{}",
        session_yaml("two", &b.image, ""),
        session_yaml("shared", &b.image, "")
    ));
    b.wait_status("two", T, |s| s["phase"] == "Running");
    b.wait_status("shared", T, |s| s["reason"] == "NameConflict");
    let before = container_ids(&a);
    assert_eq!(before.len(), 3, "{before:?}");

    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(
        container_ids(&a),
        before,
        "no sandbox was removed or replaced"
    );
    for env in [&a, &b] {
        let st = env.get_json("shared").unwrap();
        if std::ptr::eq(env, &a) {
            assert_eq!(st["status"]["restartCount"], 0);
        }
        assert!(
            !env.log_text().contains("removed container"),
            "{}",
            env.log_text()
        );
    }
    drop(b);
}

/// An object written by a newer version (or corrupted) is set aside: lists and watches keep
/// going, other sessions keep converging, its containers are left alone, and it can be
/// deleted.
#[test]
fn an_unreadable_stored_object_is_set_aside() {
    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1s"]);
    env.apply_yaml(&session_yaml("ok", &env.image, ""));
    env.wait_running("ok", T);
    raw_write(
        &env,
        "future",
        r#"{"schemaVersion":99,"apiVersion":"orchestrator.mcp.dev/v2","kind":"Session","metadata":{"name":"future"},"spec":{"image":"mcp-server:latest","newField":1}}"#,
    );
    raw_write(&env, "garbage", "{not json");
    // The watcher took both in its stride: a new session still converges.
    env.apply_yaml(&session_yaml("later", &env.image, ""));
    env.wait_status("later", T, |s| s["phase"] == "Running");

    let out = env.cli(&["get"], None);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("ok") && stdout.contains("later"),
        "{stdout}"
    );
    assert!(
        stderr.contains("future") && stderr.contains("garbage"),
        "{stderr}"
    );
    let (code, body) = http_get(&env, "/api/v1/sessions");
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["metadata"]["unreadable"].as_array().unwrap().len(), 2);
    wait_until(T, "the unreadable gauge", || {
        metric(&env, "mcpo_unreadable_sessions") == 2.0
    });
    env.ok(&["delete", "future"]);
    env.ok(&["delete", "garbage"]);
    wait_until(T, "the unreadable gauge to drop", || {
        metric(&env, "mcpo_unreadable_sessions") == 0.0
    });
    // A deleted session's event log goes with it, even with reconciles racing the delete.
    env.ok(&["delete", "later"]);
    std::thread::sleep(Duration::from_secs(2));
    let log_key = format!("mcpo:{}:log:later", env.instance);
    assert_eq!(env.redis_cli(&["EXISTS", &log_key]), "0");
}

/// An image of ours whose entrypoint does not exist, removed on drop.
struct BrokenImage(String);

impl BrokenImage {
    fn build(env: &Env) -> BrokenImage {
        let tag = format!("mcp-server:broken-{}", env.instance);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {}\nENTRYPOINT [\"/no/such/binary\"]\n", env.image),
        )
        .unwrap();
        docker(&[
            "build",
            "-q",
            "--label",
            &format!("{TEST_LABEL}={}", env.instance),
            "-t",
            &tag,
            dir.path().to_str().unwrap(),
        ]);
        BrokenImage(tag)
    }
}

impl Drop for BrokenImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A sandbox whose command does not exist fails every start, and each failure causes Docker
/// events; the retry back-off holds anyway (200 ms doubling to 30 s: ≤ 10 attempts a minute).
#[test]
fn failure_backoff_holds_against_docker_events() {
    let mut env = Env::new();
    let image = BrokenImage::build(&env);
    env.start_orchestrator(&[]);
    let before = metric(&env, "mcpo_reconciles_total{result=\"error\"}");
    env.apply_yaml(&session_yaml("broken", &image.0, ""));
    std::thread::sleep(Duration::from_secs(60));
    let attempts = metric(&env, "mcpo_reconciles_total{result=\"error\"}") - before;
    eprintln!("failed attempts in 60 s: {attempts}");
    assert!(
        (5.0..=10.0).contains(&attempts),
        "{attempts} attempts in 60 s"
    );
    let st = env.get_json("broken").unwrap();
    assert_eq!(st["status"]["phase"], "BackOff", "{st}");
    let events = env
        .log_text()
        .matches("docker event session=broken")
        .count();
    eprintln!("docker events of the broken sandbox meanwhile: {events}");
    env.kill_orchestrator();
    drop(env);
    drop(image);
}

/// A store rolled back under the same identity (an older backup, a lagging replica): the
/// revision goes back and a session written after that point is gone. Its sandbox is held,
/// not removed as an orphan, until an operator confirms with `foreign --remove`.
#[test]
fn after_a_rollback_orphans_are_held_until_an_operator_confirms() {
    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1s"]);
    env.apply_yaml(&session_yaml("kept", &env.image, ""));
    env.wait_status("kept", T, |s| s["phase"] == "Running");
    env.apply_yaml(&session_yaml("lost", &env.image, ""));
    let lost = env.wait_running("lost", T);
    env.wait_status("lost", T, |s| s["phase"] == "Running");
    // The rollback: the object is gone and the revision counter is back below the watcher's.
    let p = format!("mcpo:{}", env.instance);
    env.redis_cli(&[
        "EVAL",
        "redis.call('HDEL', KEYS[1], 'lost') redis.call('HDEL', KEYS[2], 'lost') \
         redis.call('SET', KEYS[3], 1) redis.call('DEL', KEYS[4]) return 1",
        "4",
        &format!("{p}:objects"),
        &format!("{p}:versions"),
        &format!("{p}:rv"),
        &format!("{p}:stream"),
    ]);
    wait_until(T, "the rollback to be noticed", || {
        metric(&env, "mcpo_store_resets_total") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &lost]),
        "true",
        "held, not removed"
    );
    assert_eq!(env.containers("kept").len(), 1);
    let out = env.cli(&["foreign"], None);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("lost"), "{listed}");
    assert!(!listed.contains("kept"), "{listed}");
    env.ok(&["foreign", "--remove"]);
    wait_until(T, "the held orphan to be removed", || {
        env.containers("lost").is_empty()
    });
    assert_eq!(env.redis_cli(&["EXISTS", &format!("{p}:orphan-hold")]), "0");
    assert_eq!(env.containers("kept").len(), 1);
}
