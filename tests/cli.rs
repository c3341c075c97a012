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
            "-: document 0: a Session document must be a mapping",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(""),
            "no Session documents found",
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
    assert!(env.get_json("minimal").is_none());

    let out = env.ok(&["apply", "-f", ex, "--wait", "--timeout", "30s"]);
    for name in ["minimal", "research", "ephemeral"] {
        assert!(out.contains(&format!("session/{name} created")), "{out}");
        assert!(out.contains(&format!("session/{name} Running")), "{out}");
    }
    let again = env.ok(&["apply", "-f", ex]);
    assert_eq!(again.matches("unchanged").count(), 3, "{again}");

    // get: table, json list, yaml, single object.
    let table = env.ok(&["get"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{table}"
    );
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["get", "-o", "json"])).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let yaml = env.ok(&["get", "research", "-o", "yaml"]);
    assert!(
        yaml.contains("name: research") && yaml.contains("phase: Running"),
        "{yaml}"
    );
    // The JSON list round-trips through apply.
    let out = env.cli(&["apply", "-f", "-"], Some(&env.ok(&["get", "-o", "json"])));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).matches("unchanged").count(), 3);

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

    // delete -f removes what the files declare, and their containers.
    let out = env.ok(&["delete", "-f", ex]);
    assert_eq!(out.matches("deleted").count(), 3, "{out}");
    wait_until(T, "every example container to be removed", || {
        ["minimal", "research", "ephemeral"]
            .iter()
            .all(|n| env.containers(n).is_empty())
    });
}

#[test]
fn schema_comes_from_the_types() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Session");
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
