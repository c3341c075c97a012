//! The watched specs directory (`serve --specs-dir`), end to end: real files, the real
//! binary, real Redis and Docker. Every change must show in the store (`get -o json`)
//! within [`REFLECTED`] of the filesystem write.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The promised bound from a filesystem change to the store showing it.
const REFLECTED: Duration = Duration::from_secs(1);
/// Containers (and orchestrator start-up) may take longer.
const T: Duration = Duration::from_secs(30);

/// A directory of spec files for one test, and its canonical path (as used in sources).
struct Specs {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Specs {
    fn new() -> Specs {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap().join("specs");
        std::fs::create_dir(&dir).unwrap();
        Specs { _tmp: tmp, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn source(&self, name: &str) -> String {
        format!("file:{}", self.path(name).display())
    }

    fn write(&self, name: &str, text: &str) -> Instant {
        let t0 = Instant::now();
        std::fs::write(self.path(name), text).unwrap();
        t0
    }

    fn flag(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

fn session(name: &str, image: &str, env: &str) -> String {
    session_yaml(name, image, &format!("  env: {{V: \"{env}\"}}\n"))
}

fn env_v(s: &Value) -> &str {
    s["spec"]["env"]["V"].as_str().unwrap_or_default()
}

/// The desired part of a session (what a front end writes): uid, generation, labels,
/// annotations and spec. Status writes by the controller move the resourceVersion, not this.
fn desired(s: &Value) -> Value {
    let m = &s["metadata"];
    serde_json::json!([
        m["uid"],
        m["generation"],
        m["labels"],
        m["annotations"],
        s["spec"]
    ])
}

/// Wait until `f` holds, at most [`REFLECTED`] after `t0`; report and return the latency.
fn reflected(what: &str, t0: Instant, mut f: impl FnMut() -> bool) -> Duration {
    wait_until(REFLECTED.saturating_sub(t0.elapsed()), what, &mut f);
    let took = t0.elapsed();
    assert!(took < REFLECTED, "{what} took {took:?}");
    eprintln!("latency: {what}: {} ms", took.as_millis());
    took
}

/// Is `name` stored, and does `f` hold for it? Read straight from Redis (one `redis-cli`,
/// a few ms): the latency measured is the watcher's, not a CLI process start per poll.
fn present(env: &Env, name: &str, f: impl Fn(&Value) -> bool) -> bool {
    let json = env.redis_cli(&["HGET", &format!("mcpo:{}:objects", env.instance), name]);
    serde_json::from_str::<Value>(&json).is_ok_and(|s| f(&s))
}

fn wait_log(env: &Env, what: &str, t0: Instant, needles: &[&str]) -> Duration {
    reflected(what, t0, || {
        env.log_text()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    })
}

fn gone(env: &Env, session: &str) -> bool {
    env.redis_cli(&[
        "HEXISTS",
        &format!("mcpo:{}:objects", env.instance),
        session,
    ]) == "0"
}

fn no_containers(env: &Env, session: &str) {
    wait_until(T, &format!("{session}'s container to go"), || {
        env.containers(session).is_empty()
    });
}

/// Poll `read` until `ok` holds on what it returns: the events and the per-file problem
/// records are written just after the sessions and the log line, not atomically with them.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut read: impl FnMut() -> F,
    ok: impl Fn(&T) -> bool,
) -> T {
    let t0 = Instant::now();
    loop {
        let v = read().await;
        if ok(&v) {
            return v;
        }
        assert!(t0.elapsed() < REFLECTED, "{what}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events(env: &Env, name: &str) -> Vec<(String, String, String)> {
    env.store()
        .await
        .events(name)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.type_, e.reason, e.message))
        .collect()
}

async fn problems(env: &Env) -> std::collections::BTreeMap<String, (String, String)> {
    env.store()
        .await
        .spec_file_problems()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, (e.reason, e.message)))
        .collect()
}

fn rename(from: &Path, to: &Path) -> Instant {
    let t0 = Instant::now();
    std::fs::rename(from, to).unwrap();
    t0
}

#[tokio::test]
async fn files_are_applied_changed_renamed_and_deleted_within_a_second() {
    let mut env = Env::new();
    let specs = Specs::new();
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    let image = env.image.clone();

    // A file appears.
    let t0 = specs.write("a.yaml", &session("alpha", &image, "1"));
    reflected("create", t0, || present(&env, "alpha", |_| true));
    let alpha = env.get_json("alpha").unwrap();
    assert_eq!(
        alpha["metadata"]["annotations"]["orchestrator.mcp.dev/source"],
        specs.source("a.yaml").as_str()
    );
    let uid = alpha["metadata"]["uid"].as_str().unwrap().to_string();
    env.wait_running("alpha", T);

    // It changes in place.
    let t0 = specs.write("a.yaml", &session("alpha", &image, "2"));
    reflected("modify", t0, || present(&env, "alpha", |s| env_v(s) == "2"));

    // An atomic save: write a temporary file, rename it over the original.
    let tmp = specs.path(".a.yaml.tmp");
    std::fs::write(&tmp, session("alpha", &image, "3")).unwrap();
    let t0 = rename(&tmp, &specs.path("a.yaml"));
    reflected("atomic rename-save", t0, || {
        present(&env, "alpha", |s| env_v(s) == "3")
    });

    // A vim-style save: move the original to a backup, write a new file, drop the backup.
    let t0 = rename(&specs.path("a.yaml"), &specs.path("a.yaml~"));
    std::fs::write(specs.path("a.yaml"), session("alpha", &image, "4")).unwrap();
    std::fs::remove_file(specs.path("a.yaml~")).unwrap();
    reflected("vim-style save", t0, || {
        present(&env, "alpha", |s| env_v(s) == "4")
    });
    let alpha = env.get_json("alpha").unwrap();
    assert_eq!(
        alpha["metadata"]["uid"],
        uid.as_str(),
        "updated, not re-created"
    );
    assert_eq!(alpha["metadata"]["generation"], 4);

    // Files that do not count are ignored.
    std::fs::write(specs.path("notes.txt"), session("ignored", &image, "1")).unwrap();
    std::fs::write(specs.path(".hidden.yaml"), session("ignored", &image, "1")).unwrap();
    std::fs::write(specs.path("b.yaml~"), session("ignored", &image, "1")).unwrap();
    // A second file, in JSON.
    let beta = serde_json::json!({
        "apiVersion": "orchestrator.mcp.dev/v1", "kind": "Session",
        "metadata": {"name": "beta"}, "spec": {"image": image}
    });
    let t0 = specs.write("b.json", &beta.to_string());
    reflected("create (json)", t0, || present(&env, "beta", |_| true));
    let beta_desired = desired(&env.get_json("beta").unwrap());
    assert!(gone(&env, "ignored"));

    // A file is removed: its sessions go, the other file's stay.
    let t0 = Instant::now();
    std::fs::remove_file(specs.path("a.yaml")).unwrap();
    reflected("delete", t0, || gone(&env, "alpha"));
    no_containers(&env, "alpha");
    assert_eq!(
        desired(&env.get_json("beta").unwrap()),
        beta_desired,
        "beta untouched"
    );
    assert!(gone(&env, "ignored"));
}

#[tokio::test]
async fn an_invalid_file_is_reported_and_changes_nothing() {
    let mut env = Env::new();
    let specs = Specs::new();
    let image = env.image.clone();
    specs.write("a.yaml", &session("alpha", &image, "1"));
    specs.write("b.yaml", &session("beta", &image, "1"));
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    wait_until(T, "alpha and beta", || {
        present(&env, "alpha", |_| true) && present(&env, "beta", |_| true)
    });
    let alpha_desired = desired(&env.get_json("alpha").unwrap());
    let beta_desired = desired(&env.get_json("beta").unwrap());

    // The first document alone is fine, the second breaks the contract: nothing is applied.
    let bad = format!(
        "{}---\n{}",
        session("alpha", &image, "2"),
        session_yaml("alpha-two", &image, "  privileged: true\n")
    );
    let t0 = specs.write("a.yaml", &bad);
    let file = specs.path("a.yaml").display().to_string();
    wait_log(
        &env,
        "the invalid file in the log",
        t0,
        &[
            "WARN",
            "invalid specs file",
            &format!("{file}: document 1: spec.privileged"),
        ],
    );
    let alpha = env.get_json("alpha").unwrap();
    assert_eq!(desired(&alpha), alpha_desired, "alpha untouched");
    assert_eq!(env_v(&alpha), "1");
    assert!(gone(&env, "alpha-two"));
    assert_eq!(
        desired(&env.get_json("beta").unwrap()),
        beta_desired,
        "beta untouched"
    );
    eventually(
        "the InvalidSpecFile event",
        || events(&env, "alpha"),
        |ev| {
            ev.iter().any(|(t, r, m)| {
                t == "Warning"
                    && r == "InvalidSpecFile"
                    && m.contains("document 1: spec.privileged")
            })
        },
    )
    .await;
    let a = specs.source("a.yaml");
    eventually(
        "a.yaml's problem",
        || problems(&env),
        |p| p.get(&a).is_some_and(|(r, _)| r == "InvalidSpecFile"),
    )
    .await;
    let describe = env.ok(&["describe", "alpha"]);
    assert!(describe.contains("InvalidSpecFile"), "{describe}");

    // A new file that does not even parse: reported, nothing created.
    let t0 = specs.write(
        "c.yaml",
        &session_yaml("gamma", &image, "  resources: {memroy: 1Gi}\n"),
    );
    let cfile = specs.path("c.yaml").display().to_string();
    wait_log(
        &env,
        "the unparsable file in the log",
        t0,
        &[
            "invalid specs file",
            &format!("{cfile}: document 0: spec.resources"),
        ],
    );
    assert!(gone(&env, "gamma"));
    let c = specs.source("c.yaml");
    eventually(
        "c.yaml's problem",
        || problems(&env),
        |p| p.get(&c).is_some_and(|(r, _)| r == "InvalidSpecFile"),
    )
    .await;

    // Fixing the file applies it and clears the problem.
    let fixed = format!(
        "{}---\n{}",
        session("alpha", &image, "2"),
        session("alpha-two", &image, "1")
    );
    let t0 = specs.write("a.yaml", &fixed);
    reflected("the fixed file", t0, || {
        present(&env, "alpha", |s| env_v(s) == "2") && present(&env, "alpha-two", |_| true)
    });
    let p = eventually(
        "a.yaml's problem to clear",
        || problems(&env),
        |p| !p.contains_key(&a),
    )
    .await;
    assert!(p.contains_key(&c), "{p:?}");
    assert_eq!(
        desired(&env.get_json("beta").unwrap()),
        beta_desired,
        "beta untouched"
    );

    // Removing the broken file clears its problem too.
    std::fs::remove_file(specs.path("c.yaml")).unwrap();
    eventually(
        "c.yaml's problem to clear",
        || problems(&env),
        |p| p.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn a_deleted_directory_deletes_its_sessions_and_is_watched_again_when_it_returns() {
    let mut env = Env::new();
    let specs = Specs::new();
    let image = env.image.clone();
    specs.write("a.yaml", &session("alpha", &image, "1"));
    specs.write("b.yml", &session("beta", &image, "1"));
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    wait_until(T, "alpha and beta", || {
        present(&env, "alpha", |_| true) && present(&env, "beta", |_| true)
    });
    env.wait_running("alpha", T);

    let t0 = Instant::now();
    std::fs::remove_dir_all(&specs.dir).unwrap();
    reflected("the whole directory deleted", t0, || {
        gone(&env, "alpha") && gone(&env, "beta")
    });
    no_containers(&env, "alpha");

    // It comes back, with a file already in it...
    let t0 = Instant::now();
    std::fs::create_dir(&specs.dir).unwrap();
    std::fs::write(specs.path("c.yaml"), session("gamma", &image, "1")).unwrap();
    reflected("the re-created directory", t0, || {
        present(&env, "gamma", |_| true)
    });
    // ...and later changes are seen: the directory is watched again.
    let t0 = specs.write("d.yaml", &session("delta", &image, "1"));
    reflected("a file in the re-created directory", t0, || {
        present(&env, "delta", |_| true)
    });
    let t0 = specs.write("c.yaml", &session("gamma", &image, "2"));
    reflected("a change in the re-created directory", t0, || {
        present(&env, "gamma", |s| env_v(s) == "2")
    });

    // Missing at start-up: its sessions go, and it is picked up once it exists.
    assert!(env.stop_orchestrator().success());
    std::fs::remove_dir_all(&specs.dir).unwrap();
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    wait_until(Duration::from_secs(5), "the startup sync", || {
        gone(&env, "gamma") && gone(&env, "delta")
    });
    let t0 = Instant::now();
    std::fs::create_dir(&specs.dir).unwrap();
    std::fs::write(specs.path("e.yaml"), session("epsilon", &image, "1")).unwrap();
    reflected("a directory created after start-up", t0, || {
        present(&env, "epsilon", |_| true)
    });
}

#[tokio::test]
async fn startup_sync_removes_sessions_of_files_that_vanished_while_down() {
    let mut env = Env::new();
    let specs = Specs::new();
    let image = env.image.clone();
    specs.write("a.yaml", &session("alpha", &image, "1"));
    specs.write("b.yaml", &session("beta", &image, "1"));
    env.apply_yaml(&session("cli-made", &image, "1"));
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    wait_until(T, "alpha and beta", || {
        present(&env, "alpha", |_| true) && present(&env, "beta", |_| true)
    });
    assert!(env.stop_orchestrator().success());
    let cli_desired = desired(&env.get_json("cli-made").unwrap());

    // While nobody watches: one file goes, one changes, one appears.
    std::fs::remove_file(specs.path("b.yaml")).unwrap();
    specs.write("a.yaml", &session("alpha", &image, "2"));
    specs.write("c.yaml", &session("gamma", &image, "1"));

    let t0 = Instant::now();
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    wait_until(Duration::from_secs(5), "the startup sync", || {
        gone(&env, "beta")
            && present(&env, "alpha", |s| env_v(s) == "2")
            && present(&env, "gamma", |_| true)
    });
    eprintln!(
        "latency: start-up sync, from process start: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        desired(&env.get_json("cli-made").unwrap()),
        cli_desired,
        "a CLI session is not the directory's business"
    );
    no_containers(&env, "beta");
}

#[tokio::test]
async fn a_file_never_takes_over_a_cli_session_nor_the_reverse() {
    let mut env = Env::new();
    let specs = Specs::new();
    let image = env.image.clone();
    env.apply_yaml(&session("shared", &image, "cli"));
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    let shared_desired = desired(&env.get_json("shared").unwrap());

    // A file declares the CLI's session (and one of its own).
    let text = format!(
        "{}---\n{}",
        session("shared", &image, "file"),
        session("own", &image, "1")
    );
    let t0 = specs.write("a.yaml", &text);
    reflected("the file's own session", t0, || {
        present(&env, "own", |_| true)
    });
    wait_log(
        &env,
        "the conflict in the log",
        t0,
        &["WARN", "conflict", "session=shared", "managed by cli"],
    );
    let shared = env.get_json("shared").unwrap();
    assert_eq!(
        desired(&shared),
        shared_desired,
        "the CLI session is untouched"
    );
    assert_eq!(env_v(&shared), "cli");
    assert_eq!(
        shared["metadata"]["annotations"]["orchestrator.mcp.dev/source"],
        "cli"
    );
    eventually(
        "the SourceConflict event",
        || events(&env, "shared"),
        |ev| {
            ev.iter()
                .any(|(t, r, m)| t == "Warning" && r == "SourceConflict" && m.contains("a.yaml"))
        },
    )
    .await;
    let a = specs.source("a.yaml");
    eventually(
        "a.yaml's problem",
        || problems(&env),
        |p| p.get(&a).is_some_and(|(r, _)| r == "SourceConflict"),
    )
    .await;
    // Not retried in a loop: one report.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.log_text()
            .lines()
            .filter(|l| l.contains("another source owns") && l.contains("session=shared"))
            .count(),
        1
    );

    // The reverse: the CLI may not change or delete what the file owns.
    let out = env.cli(&["apply", "-f", "-"], Some(&session("own", &image, "cli")));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("managed by file:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.cli(&["delete", "own"], None).status.success());
    assert_eq!(env_v(&env.get_json("own").unwrap()), "1");

    // Two files declaring one name: the second is a conflict.
    let t0 = specs.write("b.yaml", &session("own", &image, "b"));
    wait_log(
        &env,
        "the file-vs-file conflict in the log",
        t0,
        &["conflict", "session=own", "b.yaml"],
    );
    assert_eq!(env_v(&env.get_json("own").unwrap()), "1");

    // Once the CLI session is gone, touching the file applies it.
    env.ok(&["delete", "shared"]);
    let t0 = specs.write("a.yaml", &text);
    reflected("the file taking a free name", t0, || {
        present(&env, "shared", |s| env_v(s) == "file")
    });

    // Removing a.yaml frees "own": b.yaml's conflict is looked at again, once.
    let t0 = Instant::now();
    std::fs::remove_file(specs.path("a.yaml")).unwrap();
    reflected("b.yaml taking over the freed name", t0, || {
        gone(&env, "shared")
            && present(&env, "own", |s| {
                env_v(s) == "b"
                    && s["metadata"]["annotations"]["orchestrator.mcp.dev/source"]
                        == specs.source("b.yaml").as_str()
            })
    });
    eventually("the problems to clear", || problems(&env), |p| p.is_empty()).await;
}

/// Is the warm pool `name` stored, and does `f` hold for it? (One `redis-cli`, like
/// [`present`].)
fn pool_present(env: &Env, name: &str, f: impl Fn(&Value) -> bool) -> bool {
    let json = env.redis_cli(&["HGET", &format!("mcpo:{}:pool-objects", env.instance), name]);
    serde_json::from_str::<Value>(&json).is_ok_and(|p| f(&p))
}

#[tokio::test]
async fn a_pool_file_appears_fills_changes_and_disappears_with_its_sandboxes() {
    let mut env = Env::new();
    let specs = Specs::new();
    env.start_orchestrator(&["--specs-dir", specs.flag()]);
    let image = env.image.clone();

    // One file: a session naming the pool, then the pool (applied first all the same).
    let text = |replicas: u32| {
        format!(
            "{}---\n{}",
            session_yaml("pool-user", &image, "  pool: spool\n"),
            pool_yaml("spool", &image, replicas)
        )
    };
    let t0 = specs.write("pool.yaml", &text(2));
    reflected("the pool and its session", t0, || {
        pool_present(&env, "spool", |_| true) && present(&env, "pool-user", |_| true)
    });
    let source = specs.source("pool.yaml");
    assert!(pool_present(&env, "spool", |p| {
        p["metadata"]["annotations"]["orchestrator.mcp.dev/source"] == source.as_str()
    }));
    env.wait_status("pool-user", T, |st| st["phase"] == "Running");
    wait_until(T, "the file's pool to fill", || {
        pool_present(&env, "spool", |p| p["status"]["ready"] == 2)
    });
    eventually(
        "the SpecFileApplied event on the pool",
        || async { env.store().await.pools().events("spool").await.unwrap() },
        |ev| ev.iter().any(|e| e.reason == "SpecFileApplied"),
    )
    .await;

    // The file changes: the pool follows.
    let t0 = specs.write("pool.yaml", &text(1));
    reflected("the pool's new size", t0, || {
        pool_present(&env, "spool", |p| p["spec"]["replicas"] == 1)
    });

    // The CLI may not change what the file owns.
    let out = env.cli(
        &["patch", "wp/spool", "-p", r#"{"spec":{"replicas":3}}"#],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warm pool \"spool\" is managed by file:"),
        "{err}"
    );

    // An invalid version (replicas over the limit) is reported and changes nothing.
    let t0 = specs.write("pool.yaml", &text(1001));
    let file = specs.path("pool.yaml").display().to_string();
    wait_log(
        &env,
        "the invalid pool file in the log",
        t0,
        &[
            "invalid specs file",
            &format!("{file}: document 1: spec.replicas"),
        ],
    );
    assert!(pool_present(&env, "spool", |p| p["spec"]["replicas"] == 1));
    eventually(
        "the pool file's problem",
        || problems(&env),
        |p| {
            p.get(&source)
                .is_some_and(|(r, m)| r == "InvalidSpecFile" && m.contains("spec.replicas"))
        },
    )
    .await;
    eventually(
        "the InvalidSpecFile event on the pool",
        || async { env.store().await.pools().events("spool").await.unwrap() },
        |ev| {
            ev.iter()
                .any(|e| e.reason == "InvalidSpecFile" && e.message.contains("warm pool"))
        },
    )
    .await;

    // Fixed, then the file goes: the pool and the session go with it, and so do all
    // their sandboxes.
    specs.write("pool.yaml", &text(1));
    eventually("the problem to clear", || problems(&env), |p| p.is_empty()).await;
    let t0 = Instant::now();
    std::fs::remove_file(specs.path("pool.yaml")).unwrap();
    reflected("the pool and the session deleted", t0, || {
        !pool_present(&env, "spool", |_| true) && gone(&env, "pool-user")
    });
    wait_until(T, "every sandbox of the file to be removed", || {
        env.instance_containers().is_empty()
    });
    assert!(env.pool_containers("spool").is_empty());
}
