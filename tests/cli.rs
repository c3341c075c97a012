//! The kubectl-style CLI against a real Redis (and, where a sandbox must run, real Docker).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn every_invalid_example_gives_its_error_and_writes_nothing() {
    let env = Env::new();
    let dir = root().join("examples/invalid");
    let mut checked = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = match text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
        {
            Some(e) => e.to_string(),
            None => std::fs::read_to_string(file.with_extension("json.expect"))
                .unwrap_or_else(|_| panic!("{} has no expected error", file.display()))
                .trim()
                .to_string(),
        };
        let path = file.to_str().unwrap();
        for args in [
            vec!["apply", "-f", path],
            vec!["apply", "--dry-run", "-f", path],
            vec!["diff", "-f", path],
        ] {
            let out = env.cli(&args, None);
            let err = stderr(&out);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{args:?}: one line on stderr, got:\n{err}"
            );
            assert!(err.starts_with("error: "), "{err}");
            assert!(
                err.contains(&expect),
                "{args:?}:\n  want: {expect}\n  got:  {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} invalid examples");
    // Nothing was written: the store's revision counter never moved.
    let snap = env.store().await.list().await.unwrap();
    assert_eq!(snap.revision, 0);
    assert!(snap.items.is_empty());
}

#[tokio::test]
async fn bad_input_is_one_clear_line() {
    let env = Env::new();
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["apply", "-f", "/no/such/file.yaml"],
            None,
            "/no/such/file.yaml: cannot read",
        ),
        (
            vec!["apply", "-f", "-"],
            Some("kind: [unclosed"),
            "-: document 0: invalid YAML",
        ),
        (
            vec!["apply", "-f", "-"],
            Some("{\"kind\": "),
            "-: document 0: invalid JSON",
        ),
        (
            vec!["apply", "-f", "-"],
            Some("just a string\n"),
            "-: document 0: a Session or WarmPool document must be a mapping",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(""),
            "no Session or WarmPool documents found",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(
                "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:1'}\n---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:1'}\n",
            ),
            "-: document 1: metadata.name: session \"a\" is also declared at -: document 0",
        ),
        (
            vec!["patch", "nope", "-p", "{}"],
            None,
            "session \"nope\" not found",
        ),
        (
            vec!["patch", "nope", "-p", "{not json"],
            None,
            "--patch is not valid JSON",
        ),
        (vec!["get", "nope"], None, "session \"nope\" not found"),
        (vec!["describe", "nope"], None, "session \"nope\" not found"),
    ];
    for (args, input, want) in cases {
        let out = env.cli(&args, input);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?}:\n  want: {want}\n  got:  {err}"
        );
    }
    // Redis unreachable: a clear error naming it, not a hang or a panic.
    let out = Command::new(BIN)
        .args(["get"])
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to Redis"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.store().await.list().await.unwrap().revision, 0);
}

#[test]
fn examples_apply_and_every_verb_works() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let examples = root().join("examples");
    let ex = examples.to_str().unwrap();

    // Dry run first: reports, writes nothing.
    let dry = env.ok(&["apply", "--dry-run", "-f", ex]);
    assert!(dry.contains("session/minimal created (dry run)"), "{dry}");
    assert!(dry.starts_with("warmpool/warm created (dry run)"), "{dry}");
    assert!(env.get_json("minimal").is_none());

    // examples/ holds four sessions and a warm pool (examples/warm-pool.yaml), which is
    // applied first.
    let out = env.ok(&["apply", "-f", ex, "--wait", "--timeout", "30s"]);
    assert!(out.starts_with("warmpool/warm created"), "{out}");
    for name in ["minimal", "research", "ephemeral", "from-pool"] {
        assert!(out.contains(&format!("session/{name} created")), "{out}");
        assert!(out.contains(&format!("session/{name} Running")), "{out}");
    }
    let again = env.ok(&["apply", "-f", ex]);
    assert_eq!(again.matches("unchanged").count(), 5, "{again}");

    // get: table, json list, yaml, single object.
    let table = env.ok(&["get"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("Running")).count(),
        4,
        "{table}"
    );
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["get", "-o", "json"])).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    let yaml = env.ok(&["get", "research", "-o", "yaml"]);
    assert!(
        yaml.contains("name: research") && yaml.contains("phase: Running"),
        "{yaml}"
    );
    // The JSON list round-trips through apply.
    let out = env.cli(&["apply", "-f", "-"], Some(&env.ok(&["get", "-o", "json"])));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).matches("unchanged").count(), 4);
    let pools = env.ok(&["get", "wp", "-o", "json"]);
    let out = env.cli(&["apply", "-f", "-"], Some(&pools));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "warmpool/warm unchanged");

    // describe: spec, status, container state and events.
    let d = env.ok(&["describe", "research"]);
    for want in [
        "Name:              research",
        "team=research",
        "Phase:               Running",
        "Network:     none",
        "Read-only:   true",
        "Provisioned",
    ] {
        assert!(d.contains(want), "describe lacks {want:?}:\n{d}");
    }

    // diff: a spec change recreates, a label change does not.
    let changed = env.dir.path().join("changed.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(examples.join("resources-and-env.yaml"))
            .unwrap()
            .replace("LOG_LEVEL: debug", "LOG_LEVEL: trace"),
    )
    .unwrap();
    let diff = env.ok(&["diff", "-f", changed.to_str().unwrap()]);
    assert!(
        diff.contains("--- a/session/research") && diff.contains("+++ b/session/research"),
        "{diff}"
    );
    assert!(
        diff.contains("-    LOG_LEVEL: debug") && diff.contains("+    LOG_LEVEL: trace"),
        "{diff}"
    );
    assert!(
        diff.contains("# session/research: will recreate its container"),
        "{diff}"
    );
    let relabel = env.dir.path().join("relabel.yaml");
    std::fs::write(
        &relabel,
        std::fs::read_to_string(examples.join("resources-and-env.yaml"))
            .unwrap()
            .replace("team: research", "team: lab"),
    )
    .unwrap();
    let diff = env.ok(&["diff", "-f", relabel.to_str().unwrap()]);
    assert!(diff.contains("container kept"), "{diff}");
    let new = env.dir.path().join("new.yaml");
    std::fs::write(&new, session_yaml("fresh", &env.image, "")).unwrap();
    let diff = env.ok(&["diff", "-f", new.to_str().unwrap()]);
    assert!(
        diff.contains("--- /dev/null") && diff.contains("will create a container"),
        "{diff}"
    );
    assert!(
        env.ok(&["diff", "-f", ex]).is_empty(),
        "no diff against what is applied"
    );
    assert!(env.get_json("fresh").is_none(), "diff writes nothing");

    // get -w follows changes.
    let mut watch = Command::new(BIN)
        .args(["get", "minimal", "-w", "-o", "json"])
        .env("REDIS_URL", env.redis_url())
        .env("ORCHESTRATOR_INSTANCE", &env.instance)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The first document is the current object (pretty JSON); skip until its closing brace.
    for l in lines.by_ref() {
        if l.unwrap() == "}" {
            break;
        }
    }
    env.ok(&[
        "patch",
        "minimal",
        "-p",
        r#"{"metadata":{"labels":{"watched":"yes"}}}"#,
    ]);
    let ev: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["metadata"]["labels"]["watched"], "yes");
    let _ = watch.kill();
    let _ = watch.wait();

    // delete -f removes what the files declare (sessions first, then the pool), and their
    // containers, the pool's warm ones included.
    let out = env.ok(&["delete", "-f", ex]);
    assert_eq!(out.matches("deleted").count(), 5, "{out}");
    assert!(out.trim_end().ends_with("warmpool/warm deleted"), "{out}");
    wait_until(T, "every example container to be removed", || {
        env.instance_containers().is_empty()
    });
}

/// A file with a warm pool and two sessions naming it: `apply -f`, the sessions claim
/// started sandboxes and the pool refills to `replicas`; `get wp`, `get warmpool/NAME -o
/// yaml`, `describe`, `patch`, `diff` and `delete warmpool/NAME` in both modes (Redis and
/// `--server`); deleting the pool removes its warm sandboxes and leaves the claimed ones to
/// their sessions.
#[test]
fn warm_pools_through_the_cli_in_both_modes() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let api = env.api();
    let file = env.dir.path().join("pool.yaml");
    let session = |name: &str| {
        session_yaml(name, &env.image, "  pool: warm-a\n")
            .replace("metadata:\n", "metadata:\n  labels: {app: pooled}\n")
    };
    std::fs::write(
        &file,
        format!(
            "{}---\n{}---\n{}",
            session("claim-1"),
            pool_yaml("warm-a", &env.image, 2),
            session("claim-2")
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = env.ok(&["apply", "-f", f]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "warmpool/warm-a created",
            "session/claim-1 created",
            "session/claim-2 created"
        ],
        "the pool first"
    );

    // Both sessions run (from the pool, or cold while it was still filling), and the pool
    // is back at two ready sandboxes of its own.
    let mut session_containers = Vec::new();
    for name in ["claim-1", "claim-2"] {
        let s = env.wait_status(name, T, |st| st["phase"] == "Running");
        session_containers.push(s["status"]["containerId"].as_str().unwrap().to_string());
    }
    let mut pool = serde_json::Value::Null;
    wait_until(T, "the pool to report 2 ready sandboxes", || {
        let out = env.cli(&["get", "warmpool/warm-a", "-o", "json"], None);
        pool = serde_json::from_slice(&out.stdout).unwrap_or_default();
        pool["status"]["ready"] == 2 && pool["status"]["starting"] == 0
    });
    assert_eq!(pool["kind"], "WarmPool");
    assert_eq!(pool["spec"]["replicas"], 2);
    let members: Vec<String> = env
        .pool_containers("warm-a")
        .into_iter()
        .filter(|id| !session_containers.contains(id))
        .collect();
    assert_eq!(
        members.len(),
        2,
        "two warm sandboxes besides the sessions': {members:?}"
    );
    let claimed = pool["status"]["claimed"].as_u64().unwrap();
    eprintln!("sessions that claimed a warm sandbox: {claimed}");

    // get, in both modes: the same table, yaml, name and json.
    for server in [None, Some(api.as_str())] {
        let mode = |args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = server
                .map(|s| vec!["--server".to_string(), s.to_string()])
                .unwrap_or_default();
            v.extend(args.iter().map(|a| a.to_string()));
            v
        };
        let run = |args: &[&str]| {
            let v = mode(args);
            env.ok(&v.iter().map(String::as_str).collect::<Vec<_>>())
        };
        for list in [
            &["get", "wp"][..],
            &["get", "warmpools"],
            &["get", "warmpool"],
        ] {
            let table = run(list);
            let mut lines = table.lines();
            let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(
                head,
                [
                    "NAME", "READY", "STARTING", "CLAIMED", "REPLICAS", "IMAGE", "AGE"
                ],
                "{server:?}"
            );
            let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            assert_eq!(&row[..2], ["warm-a", "2"], "{table}");
            assert_eq!(row[4], "2", "{table}");
        }
        let yaml = run(&["get", "warmpool/warm-a", "-o", "yaml"]);
        for want in ["kind: WarmPool", "name: warm-a", "replicas: 2", "ready: 2"] {
            assert!(yaml.contains(want), "{server:?} lacks {want}:\n{yaml}");
        }
        assert_eq!(
            run(&["get", "wp/warm-a", "-o", "name"]),
            "warmpool/warm-a\n"
        );
        assert_eq!(
            run(&["get", "wp", "warm-a", "-o", "name"]),
            "warmpool/warm-a\n"
        );
        let list: serde_json::Value =
            serde_json::from_str(&run(&["get", "wp", "-o", "json"])).unwrap();
        assert_eq!(list["kind"], "WarmPoolList");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        // Plain names and -l stay sessions; `session/NAME` is explicit.
        let sessions = run(&["get", "-l", "app=pooled", "-o", "name"]);
        assert_eq!(sessions, "session/claim-1\nsession/claim-2\n");
        assert_eq!(
            run(&["get", "session/claim-1", "-o", "name"]),
            "session/claim-1\n"
        );
        let d = run(&["describe", "wp/warm-a"]);
        assert!(
            d.contains("Name:              warm-a") && d.contains("Ready:               2"),
            "{d}"
        );
        let missing = env.cli(
            &mode(&["get", "wp/nope"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            None,
        );
        assert!(!missing.status.success());
        assert!(
            stderr(&missing).contains("warm pool \"nope\" not found"),
            "{}",
            stderr(&missing)
        );
    }

    // A pool a session really named `wp` would hide stays reachable as session/wp.
    env.apply_yaml(&session_yaml("wp", &env.image, ""));
    assert_eq!(env.ok(&["get", "session/wp", "-o", "name"]), "session/wp\n");
    env.ok(&["delete", "session/wp"]);

    // patch (Redis), then diff sees nothing left to apply but the replicas.
    let out = env.ok(&[
        "patch",
        "wp/warm-a",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    assert_eq!(out.trim(), "warmpool/warm-a patched");
    let diff = env.ok(&["diff", "-f", f]);
    assert!(
        diff.contains("--- a/warmpool/warm-a") && diff.contains("-    tier: gold"),
        "{diff}"
    );
    assert!(
        diff.contains("# warmpool/warm-a: warm sandboxes kept"),
        "{diff}"
    );
    let bad = env.cli(
        &["patch", "wp/warm-a", "-p", r#"{"spec":{"replicas":1001}}"#],
        None,
    );
    assert!(
        stderr(&bad).contains("spec.replicas: 1001 is more than the limit of 1000"),
        "{}",
        stderr(&bad)
    );
    let bad = env.cli(&["wait", "wp/warm-a", "--for=phase=Running"], None);
    assert!(
        stderr(&bad).contains("wait is for sessions only"),
        "{}",
        stderr(&bad)
    );

    // delete warmpool/NAME through the API: its warm sandboxes go, the claimed ones stay
    // their sessions'.
    let out = env.ok(&["--server", &api, "delete", "warmpool/warm-a"]);
    assert_eq!(out.trim(), "warmpool/warm-a deleted");
    wait_until(T, "the pool's warm sandboxes to be removed", || {
        env.pool_containers("warm-a")
            .iter()
            .all(|id| session_containers.contains(id))
    });
    for name in ["claim-1", "claim-2"] {
        let s = env.get_json(name).unwrap();
        assert_eq!(s["status"]["phase"], "Running", "{s}");
    }
    let out = env.cli(&["delete", "warmpool/warm-a"], None);
    assert!(
        stderr(&out).contains("warm pool \"warm-a\" not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.ok(&["get", "wp"]).lines().count() == 1,
        "only the header"
    );
    let out = env.ok(&["delete", "-f", f, "--ignore-not-found"]);
    assert_eq!(out.matches("deleted").count(), 2, "{out}");
    wait_until(T, "every container of the test to be removed", || {
        env.instance_containers().is_empty()
    });
}

#[test]
fn schema_comes_from_the_types() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Session");
    let pool = Command::new(BIN)
        .args(["schema", "--kind", "WarmPool"])
        .output()
        .unwrap();
    assert!(pool.status.success());
    let pool: serde_json::Value = serde_json::from_slice(&pool.stdout).unwrap();
    assert_eq!(pool["title"], "WarmPool");
    assert!(pool["$defs"]["SandboxTemplate"].is_object(), "{pool}");
    assert!(schema["properties"]["spec"].is_object());
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown fields are rejected"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "restartPolicy",
        "ttlSeconds",
        "observedGeneration",
        "resourceVersion",
    ] {
        assert!(text.contains(field), "schema lacks {field}");
    }
}
