//! The verbs kubectl users reach for, through the real CLI against a real Redis, a real
//! Docker engine and a running `serve`, in both modes: Redis directly and `--server`.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn labelled(name: &str, team: &str, image: &str) -> String {
    format!(
        "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\nspec:\n  image: {image}\n---\n"
    )
}

/// Run the CLI in a mode: Redis directly (`None`) or through the API.
fn cli(env: &Env, server: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = Vec::new();
    if let Some(s) = server {
        all.extend(["--server", s]);
    }
    all.extend(args);
    env.cli(&all, None)
}

fn ok(env: &Env, server: Option<&str>, args: &[&str]) -> String {
    let out = cli(env, server, args);
    assert!(
        out.status.success(),
        "{args:?} (server {server:?}) failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort();
    v
}

fn container_id(env: &Env, server: Option<&str>, name: &str) -> String {
    let json = ok(env, server, &["get", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["status"]["containerId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn selectors_wide_names_wait_restart_logs_prune_in_both_modes() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let api = env.api();
    for (mode, server) in [("r", None), ("h", Some(api.as_str()))] {
        let (a1, a2, b1) = (
            format!("{mode}-a1"),
            format!("{mode}-a2"),
            format!("{mode}-b1"),
        );
        let team_a = format!("{mode}a");
        let team_b = format!("{mode}b");
        let file = env.dir.path().join(format!("{mode}.yaml"));
        std::fs::write(
            &file,
            [
                labelled(&a1, &team_a, &env.image),
                labelled(&a2, &team_a, &env.image),
                labelled(&b1, &team_b, &env.image),
            ]
            .concat(),
        )
        .unwrap();
        let f = file.to_str().unwrap();
        ok(
            &env,
            server,
            &["apply", "-f", f, "--wait", "--timeout", "30s"],
        );

        // get -l, get NAME..., -o name, -o wide.
        let sel_a = format!("team={team_a}");
        let names = ok(&env, server, &["get", "-l", &sel_a, "-o", "name"]);
        assert_eq!(
            lines(&names),
            vec![format!("session/{a1}"), format!("session/{a2}")],
            "{mode}"
        );
        let not_b = format!("team!={team_b},team in ({team_a},{team_b})");
        let names = ok(&env, server, &["get", "-l", &not_b, "-o", "name"]);
        assert_eq!(lines(&names).len(), 2, "{mode}: {names}");
        let two = ok(&env, server, &["get", &a1, &b1, "-o", "name"]);
        assert_eq!(
            lines(&two),
            vec![format!("session/{a1}"), format!("session/{b1}")]
        );
        let missing = cli(&env, server, &["get", &a1, "nope", "-o", "name"]);
        assert!(!missing.status.success());
        assert!(stdout(&missing).contains(&format!("session/{a1}")));
        assert!(stderr(&missing).contains("nope"), "{}", stderr(&missing));
        let wide = ok(&env, server, &["get", &a1, "-o", "wide"]);
        assert!(wide.contains("IMAGE"), "{wide}");
        assert!(wide.contains(&env.image), "{wide}");
        let cname = format!("mcp-{}.{a1}", env.instance);
        assert!(wide.contains(&cname), "{wide}");
        let bad = cli(&env, server, &["get", "-l", "a in (b"]);
        assert!(!bad.status.success());
        assert!(stderr(&bad).starts_with("error: "), "{}", stderr(&bad));

        // wait: already met, by selector, and a timeout that names what is pending.
        let out = ok(&env, server, &["wait", &a1, "--for=phase=Running"]);
        assert_eq!(out.trim(), format!("session/{a1} condition met"));
        let out = ok(
            &env,
            server,
            &["wait", "-l", &sel_a, "--for", "phase=Running"],
        );
        assert_eq!(out.lines().count(), 2, "{out}");
        let late = cli(
            &env,
            server,
            &["wait", &a1, "--for=phase=Succeeded", "--timeout", "300ms"],
        );
        assert!(!late.status.success());
        assert!(stderr(&late).contains("timed out"), "{}", stderr(&late));
        assert!(stderr(&late).contains(&a1), "{}", stderr(&late));
        let unknown = cli(&env, server, &["wait", "ghost", "--for=phase=Running"]);
        assert!(
            stderr(&unknown).contains("not found"),
            "{}",
            stderr(&unknown)
        );

        // logs: the sandbox's stderr (its start-up line), never the MCP stdout.
        let logs = ok(&env, server, &["logs", &a1]);
        assert!(logs.contains("mcp-server starting"), "{mode}: {logs:?}");
        assert!(!logs.contains("jsonrpc"), "{logs}");
        let tail = ok(&env, server, &["logs", &a1, "--tail", "0"]);
        assert!(tail.is_empty(), "{tail:?}");
        let since = ok(&env, server, &["logs", &a1, "--since", "1h"]);
        assert!(since.contains("mcp-server starting"), "{since:?}");

        // restart: a new sandbox, the generation moves, an event says so.
        let before = container_id(&env, server, &a1);
        let gen_before = ok(&env, server, &["get", &a1, "-o", "json"]);
        let gen_before: serde_json::Value = serde_json::from_str(&gen_before).unwrap();
        let out = ok(&env, server, &["restart", &a1]);
        assert_eq!(out.trim(), format!("session/{a1} restarted"));
        ok(
            &env,
            server,
            &["wait", &a1, "--for=phase=Running", "--timeout", "30s"],
        );
        let after = container_id(&env, server, &a1);
        assert_ne!(before, after, "{mode}: restart kept the container");
        assert!(!after.is_empty());
        let now: serde_json::Value =
            serde_json::from_str(&ok(&env, server, &["get", &a1, "-o", "json"])).unwrap();
        assert_eq!(
            now["metadata"]["generation"].as_i64(),
            gen_before["metadata"]["generation"].as_i64().map(|g| g + 1)
        );
        let described = ok(&env, server, &["describe", &a1]);
        assert!(described.contains("RestartRequested"), "{described}");
        // Re-applying the file does not undo the restart (no second recreate).
        ok(&env, server, &["apply", "-f", f]);
        ok(
            &env,
            server,
            &["wait", &a1, "--for=phase=Running", "--timeout", "30s"],
        );
        assert_eq!(container_id(&env, server, &a1), after);
        assert!(!cli(&env, server, &["restart", "ghost"]).status.success());

        // apply --prune: the dry run names what would go and deletes nothing.
        let only_a1 = env.dir.path().join(format!("{mode}-a1.yaml"));
        std::fs::write(&only_a1, labelled(&a1, &team_a, &env.image)).unwrap();
        let p = only_a1.to_str().unwrap();
        let out = ok(
            &env,
            server,
            &["apply", "-f", p, "--prune", "-l", &sel_a, "--dry-run"],
        );
        assert!(
            out.contains(&format!("session/{a2} pruned (dry run)")),
            "{out}"
        );
        assert!(!out.contains(&b1), "{out}");
        ok(&env, server, &["get", &a2]);
        let out = ok(&env, server, &["apply", "-f", p, "--prune", "-l", &sel_a]);
        assert!(out.contains(&format!("session/{a2} pruned")), "{out}");
        assert!(!cli(&env, server, &["get", &a2]).status.success());
        ok(
            &env,
            server,
            &["wait", &a2, "--for=delete", "--timeout", "10s"],
        );
        let no_sel = cli(&env, server, &["apply", "-f", p, "--prune"]);
        assert!(!no_sel.status.success(), "--prune needs -l");

        // delete -l and --dry-run.
        let sel_b = format!("team={team_b}");
        let out = ok(&env, server, &["delete", "-l", &sel_b, "--dry-run"]);
        assert_eq!(out.trim(), format!("session/{b1} deleted (dry run)"));
        ok(&env, server, &["get", &b1]);
        let out = ok(&env, server, &["delete", "-l", &sel_b]);
        assert_eq!(out.trim(), format!("session/{b1} deleted"));
        let out = ok(&env, server, &["delete", "-l", &sel_b]);
        assert!(out.is_empty(), "{out}");
    }
    // delete --all takes what is left (both modes' a1).
    let out = ok(&env, Some(api.as_str()), &["delete", "--all"]);
    assert_eq!(
        lines(&out),
        vec!["session/h-a1 deleted", "session/r-a1 deleted"]
    );
    ok(&env, None, &["wait", "r-a1", "h-a1", "--for=delete"]);
    wait_until(T, "every sandbox removed", || {
        env.instance_containers().is_empty()
    });
    assert!(ok(&env, None, &["get", "-o", "name"]).is_empty());
}

#[tokio::test]
async fn logs_follow_ends_with_the_sandbox() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let api = env.api();
    env.apply_yaml(&labelled("follow", "x", &env.image));
    env.ok(&["wait", "follow", "--for=phase=Running", "--timeout", "30s"]);
    // The log endpoint bounds its query and answers errors as Status.
    let http = reqwest::Client::new();
    for (query, code) in [
        ("sinceSeconds=10000000000000", 400),
        ("tailLines=2000000", 400),
        ("sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z", 400),
        ("sinceTime=1800-01-01T00:00:00Z&tailLines=5", 200),
    ] {
        let r = http
            .get(format!("{api}/api/v1/sessions/follow/log?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{query}");
        let text = r.text().await.unwrap();
        if code == 200 {
            assert!(text.contains("mcp-server starting"), "{query}: {text}");
        } else {
            assert!(text.contains("\"kind\":\"Status\""), "{query}: {text}");
        }
    }
    let r = http
        .get(format!("{api}/api/v1/sessions/ghost/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    for server in [None, Some(api.as_str())] {
        let id = container_id(&env, server, "follow");
        let mut args = vec!["logs", "follow", "-f"];
        if let Some(s) = server {
            args.extend(["--server", s]);
        }
        let mut child = env
            .command_for_test()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "logs -f returned at once"
        );
        // Stopping the sandbox ends the follow.
        env.docker(&["kill", &id]);
        let out = wait_output(child, Duration::from_secs(10));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("mcp-server starting"),
            "{out:?}"
        );
        env.ok(&["wait", "follow", "--for=phase=Running", "--timeout", "30s"]);
        wait_until(T, "the sandbox running again", || {
            env.docker(&["inspect", "-f", "{{.State.Running}}", &id])
                .trim()
                == "true"
                || container_id(&env, server, "follow") != id
        });
    }
}

#[tokio::test]
async fn the_cli_admits_with_the_servers_policy_and_says_so() {
    let mut env = Env::new();
    // Before any serve published a policy: the built-in default, said so.
    let out = env.ok(&["policy"]);
    assert!(out.contains("built-in default"), "{out}");
    env.start_orchestrator(&["--allowed-images", "other-registry.example/tools/*"]);
    let api = env.api();
    for server in [None, Some(api.as_str())] {
        let out = ok(&env, server, &["policy"]);
        assert!(out.contains("serve@"), "{out}");
        assert!(out.contains("other-registry.example/tools/*"), "{out}");
        let file = env.dir.path().join("p.yaml");
        std::fs::write(&file, labelled("p", "x", &env.image)).unwrap();
        for verb in ["apply", "diff"] {
            let out = cli(&env, server, &[verb, "-f", file.to_str().unwrap()]);
            assert!(
                !out.status.success(),
                "{verb} accepted an image the server refuses"
            );
            let err = stderr(&out);
            assert!(err.contains("spec.image"), "{err}");
            assert!(err.contains("the policy of serve@"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
    // The policy flags belong to serve.
    let out = env.cli(&["apply", "--allowed-images", "x:*", "-f", "-"], Some(""));
    assert!(!out.status.success());
    assert!(env.ok(&["get", "-o", "name"]).is_empty());
}

#[tokio::test]
async fn completion_scripts_for_each_shell() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.ok(&["completion", shell]);
        assert!(out.contains("mcp-orchestrator"), "{shell}");
        assert!(out.contains("restart"), "{shell}: the verbs are completed");
    }
    assert!(!env.cli(&["completion", "tcsh"], None).status.success());
}
