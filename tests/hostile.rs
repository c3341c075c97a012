//! A generated corpus of hostile inputs (issue 9), run through the CLI (`apply`, `apply
//! --dry-run`, Redis mode) and the HTTP API (POST, PUT, PATCH) of a running `serve`.
//!
//! For every input: no panic, a non-zero exit with one clear line on stderr (CLI) or a 4xx
//! JSON Status (API), at most 2 s, the server's RSS at most 100 MiB above its baseline, the
//! server alive, and the store revision unchanged (nothing written).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Client;
use serde_json::{Value, json};

/// Most time one input may take.
const PER_INPUT: Duration = Duration::from_secs(2);
/// Most growth of the server's RSS over its baseline.
const RSS_GROWTH: u64 = 100 * 1024 * 1024;

/// One hostile input: a Session document (or something posing as one).
#[derive(Clone)]
struct Input {
    what: String,
    body: Vec<u8>,
    json: bool,
}

fn input(what: impl Into<String>, body: impl Into<Vec<u8>>) -> Input {
    let body = body.into();
    let json = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    Input {
        what: what.into(),
        body,
        json,
    }
}

/// A patch input for PATCH.
struct PatchInput {
    what: String,
    content_type: &'static str,
    body: Vec<u8>,
}

/// A small deterministic generator (xorshift), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() & 0xff) as u8).collect()
    }
}

fn yaml_session(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn json_session(spec: Value) -> Value {
    json!({
        "apiVersion": "orchestrator.mcp.dev/v1",
        "kind": "Session",
        "metadata": {"name": "hostile"},
        "spec": spec,
    })
}

fn with(mut doc: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut doc
    } else {
        doc.pointer_mut(parent).unwrap()
    };
    target[key] = value;
    doc
}

fn js(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Every hostile Session document.
fn corpus() -> Vec<Input> {
    let mut out = Vec::new();
    let base = json_session(json!({"image": "mcp-server:latest"}));
    let img = "  image: mcp-server:latest\n";

    // Huge fields and too many entries.
    for (field, value) in [
        ("/spec/env", json!({"BIG": "x".repeat(40 * 1024)})),
        ("/spec/env", json!({"BIG": "x".repeat(300 * 1024)})),
        ("/spec/env", json!({"BIG": "x".repeat(900 * 1024)})),
        ("/spec/env", json!({"K".repeat(300): "v"})),
        (
            "/spec/env",
            Value::Object((0..300).map(|i| (format!("K{i}"), json!("v"))).collect()),
        ),
        ("/spec/command", json!(vec!["a"; 300])),
        ("/spec/command", json!(["x".repeat(40 * 1024)])),
        ("/spec/command", json!(vec!["y".repeat(2000); 200])),
        ("/metadata/labels", json!({"k": "v".repeat(64)})),
        ("/metadata/labels", json!({"k".repeat(400): "v"})),
        (
            "/metadata/labels",
            Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect()),
        ),
        ("/metadata/annotations", json!({"a": "v".repeat(70 * 1024)})),
        ("/metadata/annotations", json!({"a".repeat(400): "v"})),
        (
            "/metadata/annotations",
            Value::Object((0..65).map(|i| (format!("a{i}"), json!("v"))).collect()),
        ),
        ("/metadata/name", json!("a".repeat(64))),
        ("/metadata/name", json!("a".repeat(100_000))),
        (
            "/spec/image",
            json!(format!("mcp-server:{}", "a".repeat(600))),
        ),
        ("/spec/user", json!("1".repeat(100))),
        ("/spec/networkMode", json!("n".repeat(1000))),
        (
            "/spec/chat",
            json!({"systemInstruction": "s".repeat(70 * 1024)}),
        ),
        ("/spec/chat", json!({"model": "m".repeat(200)})),
        ("/spec/chat", json!({"tools": {"allow": vec!["t"; 300]}})),
        ("/spec/chat", json!({"tools": {"deny": ["t".repeat(200)]}})),
        (
            "/status",
            json!({"phase": "Running", "message": "m".repeat(300 * 1024)}),
        ),
    ] {
        out.push(input(
            format!("huge {field}"),
            js(&with(base.clone(), field, value)),
        ));
    }
    // 40 env values of 8 KiB: every field fits, the object does not.
    let env: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("K{i}"), json!("v".repeat(8000))))
        .collect();
    out.push(input(
        "object over 256 KiB",
        js(&with(base.clone(), "/spec/env", Value::Object(env))),
    ));
    out.push(input(
        "input over 1 MiB",
        yaml_session(
            "big",
            &format!("{img}  env:\n    A: {}\n", "x".repeat(1100 * 1024)),
        ),
    ));

    // Deep nesting, YAML flow, YAML block and JSON, in several places.
    for depth in [65usize, 100, 1000, 10_000, 100_000] {
        let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        out.push(input(
            format!("yaml flow depth {depth} in command"),
            yaml_session("deep", &format!("{img}  command: {flow}\n")),
        ));
        out.push(input(
            format!("yaml flow depth {depth} at the top"),
            flow.replace('[', "{a: ").replace(']', "}").into_bytes(),
        ));
        out.push(input(
            format!("yaml block depth {depth}"),
            yaml_session(
                "deep",
                &format!("{img}  command:\n  {}x\n", "- ".repeat(depth)),
            ),
        ));
        out.push(input(format!("json list depth {depth}"), flow.clone()));
        let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        out.push(input(format!("json object depth {depth}"), obj.clone()));
        out.push(input(
            format!("json depth {depth} in env"),
            format!(
                "{{\"apiVersion\":\"orchestrator.mcp.dev/v1\",\"kind\":\"Session\",\"metadata\":{{\"name\":\"d\"}},\"spec\":{{\"image\":\"mcp-server:1\",\"env\":{obj}}}}}"
            ),
        ));
    }

    // Alias bombs: exponential, wide, and many aliases.
    for levels in [3usize, 6, 9, 12] {
        let mut y = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            let p = format!("*a{}", i - 1);
            y.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 9].join(", ")));
        }
        out.push(input(format!("billion laughs, {levels} levels"), y.clone()));
        out.push(input(
            format!("billion laughs in a session, {levels} levels"),
            yaml_session(
                "bomb",
                &format!(
                    "{img}  env: {{}}\n  command: &c0 [x, x, x, x, x, x, x, x]\nx:\n{}",
                    {
                        let mut s = String::new();
                        for i in 1..levels {
                            s.push_str(&format!(
                                "  c{i}: &c{i} [{}]\n",
                                vec![format!("*c{}", i - 1); 8].join(", ")
                            ));
                        }
                        s
                    }
                ),
            ),
        ));
    }
    for (size, count) in [
        (500usize, 1000usize),
        (4096, 600),
        (100_000, 30),
        (1, 1001),
        (1, 5000),
    ] {
        let y = format!(
            "a: &big {}\nb: [{}]\n",
            "y".repeat(size),
            vec!["*big"; count].join(", ")
        );
        out.push(input(format!("{count} aliases of {size} bytes"), y));
    }
    out.push(input(
        "alias to an undefined anchor",
        yaml_session("a", &format!("{img}  command: [*nope]\n")),
    ));

    // Non-finite numbers in every numeric place.
    for field in ["memory", "cpus", "pids"] {
        for v in [
            ".nan", ".NaN", ".NAN", ".inf", ".Inf", "-.inf", "+.inf", "-.INF",
        ] {
            out.push(input(
                format!("{field}: {v}"),
                yaml_session("nf", &format!("{img}  resources:\n    {field}: {v}\n")),
            ));
        }
    }
    for v in [".nan", ".inf", "-.inf"] {
        out.push(input(
            format!("ttlSeconds: {v}"),
            yaml_session("nf", &format!("{img}  ttlSeconds: {v}\n")),
        ));
    }
    for v in [
        "\"NaN\"",
        "\"inf\"",
        "\"infinity\"",
        "\"1e400\"",
        "\"-inf\"",
    ] {
        out.push(input(
            format!("cpus text {v}"),
            yaml_session("nf", &format!("{img}  resources:\n    cpus: {v}\n")),
        ));
    }
    out.push(input("json 1e400", r#"{"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{"name":"n"},"spec":{"image":"mcp-server:1","resources":{"cpus":1e400}}}"#));

    // Wrong types, structs from lists in particular.
    let wrong = [
        json!([]),
        json!([1]),
        json!("x"),
        json!(1),
        json!(true),
        json!([[]]),
    ];
    for field in [
        "/metadata",
        "/spec",
        "/spec/resources",
        "/spec/chat",
        "/spec/env",
        "/spec/command",
        "/metadata/labels",
        "/metadata/annotations",
        "/spec/ttlSeconds",
        "/spec/restartPolicy",
    ] {
        for w in &wrong {
            // These two are valid values of those fields, not hostile ones.
            let valid = (field == "/spec/command" && *w == json!([]))
                || (field == "/spec/ttlSeconds" && *w == json!(1));
            if valid {
                continue;
            }
            out.push(input(
                format!("{field} = {w}"),
                js(&with(base.clone(), field, w.clone())),
            ));
        }
    }
    for field in ["resources", "chat"] {
        out.push(input(
            format!("yaml {field}: []"),
            yaml_session("w", &format!("{img}  {field}: []\n")),
        ));
    }
    out.push(input(
        "chat.tools: []",
        js(&with(base.clone(), "/spec/chat", json!({"tools": []}))),
    ));
    out.push(input(
        "status.conditions: [[]]",
        js(&with(
            base.clone(),
            "/status",
            json!({"phase": "Pending", "conditions": [[]]}),
        )),
    ));
    for top in [
        "[]",
        "\"x\"",
        "1",
        "null\n---\n5",
        "{\"items\": 5}",
        "{\"items\": [1, 2]}",
    ] {
        out.push(input(format!("document {top}"), top));
    }

    // Control characters wherever input is echoed.
    for c in ["\r", "\n", "\0", "\u{1b}[31m", "\u{7f}", "\u{85}", "\t"] {
        for field in [
            "/metadata/name",
            "/spec/image",
            "/spec/user",
            "/spec/networkMode",
            "/apiVersion",
            "/kind",
        ] {
            out.push(input(
                format!("{c:?} in {field}"),
                js(&with(base.clone(), field, json!(format!("bad{c}value")))),
            ));
        }
        out.push(input(
            format!("{c:?} in a label key"),
            js(&with(
                base.clone(),
                "/metadata/labels",
                json!({format!("k{c}"): "v"}),
            )),
        ));
        out.push(input(
            format!("{c:?} in an env name"),
            js(&with(
                base.clone(),
                "/spec/env",
                json!({format!("A={c}"): "v"}),
            )),
        ));
        out.push(input(
            format!("{c:?} in an unknown field"),
            js(&with(base.clone(), &format!("/spec/x{c}"), json!(1))),
        ));
        out.push(input(
            format!("{c:?} in a memory quantity"),
            js(&with(
                base.clone(),
                "/spec/resources",
                json!({"memory": format!("1{c}Gi")}),
            )),
        ));
    }

    // Image references: the allowlist bypasses and malformed references.
    for image in [
        "mcp-server:5000/evil:latest",
        "mcp-server:443/library/alpine:latest",
        "mcp-server:80/x",
        "mcp-server:1/mcp-server:latest",
        "mcp-server.evil.com/mcp-server:latest",
        "localhost/mcp-server:latest",
        "localhost:5000/mcp-server:latest",
        "evil/mcp-server:latest",
        "mcp-server-evil:latest",
        "mcp-server/evil:latest",
        "docker.io/evil/mcp-server:latest",
        "mcp-server:*",
        "mcp-server:",
        "mcp-server:latest:latest",
        "mcp-server:../../x",
        "mcp-server:latest/../../etc",
        "MCP-SERVER:latest",
        " mcp-server:latest",
        "mcp-server:latest ",
        "mcp-server@sha256:abc",
        "mcp-server@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "mcp-server:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "mcp-server@md5:0123456789abcdef0123456789abcdef",
        "",
        ":latest",
        "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "/mcp-server:latest",
        "mcp-server//x:latest",
        "alpine",
        "alpine:3.20",
        "https://mcp-server:latest",
        "mcp-server:latest\u{0}",
    ] {
        out.push(input(
            format!("image {image:?}"),
            js(&with(base.clone(), "/spec/image", json!(image))),
        ));
    }

    // ttl and other numbers out of range.
    for ttl in [
        json!(0),
        json!(-1),
        json!(315_360_001u64),
        json!(9_000_000_000_000u64),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1e30),
        json!(1.5),
        json!("60"),
    ] {
        out.push(input(
            format!("ttlSeconds {ttl}"),
            js(&with(base.clone(), "/spec/ttlSeconds", ttl)),
        ));
    }
    out.push(input(
        "ttlSeconds 2^64 in YAML",
        yaml_session("t", &format!("{img}  ttlSeconds: 18446744073709551616\n")),
    ));
    for (field, v) in [
        ("pids", json!(0)),
        ("pids", json!(-1)),
        ("pids", json!(i64::MIN)),
        ("pids", json!(i64::MAX)),
        ("pids", json!(1e20)),
        ("pids", json!(1.5)),
        ("pids", json!(1025)),
        ("memory", json!(-1)),
        ("memory", json!(1)),
        ("memory", json!("4Mi")),
        ("memory", json!("5Mi")),
        ("memory", json!("1Ki")),
        ("memory", json!(1e30)),
        ("memory", json!("99999999999999999999Gi")),
        ("memory", json!("-1Gi")),
        ("memory", json!("1.5.5Gi")),
        ("memory", json!("64Gi")),
        ("memory", json!("")),
        ("cpus", json!(0)),
        ("cpus", json!(-1)),
        ("cpus", json!(0.001)),
        ("cpus", json!(1e9)),
        ("cpus", json!("-1")),
        ("cpus", json!("0m")),
        ("cpus", json!("m")),
        ("cpus", json!(3)),
        ("cpus", json!("")),
    ] {
        out.push(input(
            format!("{field} = {v}"),
            js(&with(base.clone(), "/spec/resources", json!({field: v}))),
        ));
    }

    // Unknown fields at every level.
    for field in [
        "/x",
        "/metadata/x",
        "/spec/x",
        "/spec/volumes",
        "/spec/binds",
        "/spec/capAdd",
        "/spec/devices",
        "/spec/resources/swap",
        "/spec/chat/x",
        "/status/x",
    ] {
        let doc = if field.starts_with("/status") {
            with(base.clone(), "/status", json!({"phase": "Pending"}))
        } else if field.starts_with("/spec/chat") {
            with(base.clone(), "/spec/chat", json!({}))
        } else if field.starts_with("/spec/resources") {
            with(base.clone(), "/spec/resources", json!({}))
        } else {
            base.clone()
        };
        out.push(input(
            format!("unknown {field}"),
            js(&with(doc, field, json!(1))),
        ));
    }
    out.push(input(
        "privileged",
        js(&with(base.clone(), "/spec/privileged", json!(true))),
    ));
    out.push(input(
        "host network",
        js(&with(base.clone(), "/spec/networkMode", json!("host"))),
    ));
    out.push(input(
        "root user",
        js(&with(base.clone(), "/spec/user", json!("0"))),
    ));

    // Several documents, one of them bad; too many documents.
    let good = yaml_session("multi-a", img);
    out.push(input(
        "good then bad document",
        format!(
            "{good}---\n{}",
            yaml_session("multi-b", "  image: alpine\n")
        ),
    ));
    out.push(input(
        "bad then good document",
        format!(
            "{}---\n{good}",
            yaml_session("multi-b", "  image: mcp-server:*\n")
        ),
    ));
    out.push(input("1001 empty documents", "---\n".repeat(1001)));
    out.push(input(
        "the same session twice",
        format!("{good}---\n{good}"),
    ));

    // Binary garbage and invalid UTF-8.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..160 {
        let n = 1 + (rng.next() % 4096) as usize;
        let mut b = rng.bytes(n);
        if i % 3 == 0 {
            // Garbage after a plausible start.
            let mut s = yaml_session("g", img).into_bytes();
            s.append(&mut b);
            b = s;
        }
        out.push(input(format!("binary garbage #{i} ({n} bytes)"), b));
    }
    for (what, bytes) in [
        ("lone continuation byte", b"kind: \x80\n".to_vec()),
        ("overlong NUL", b"kind: \xc0\x80\n".to_vec()),
        ("surrogate", b"kind: \xed\xa0\x80\n".to_vec()),
        ("truncated sequence", b"kind: \xe2\x82\n".to_vec()),
        ("0xff", b"\xff\xfe\xfd".to_vec()),
        ("UTF-16 BOM", b"\xff\xfea\x00p\x00".to_vec()),
        ("NUL bytes", vec![0u8; 1000]),
        ("only a UTF-8 BOM", b"\xef\xbb\xbf".to_vec()),
        ("json with NUL", b"{\"apiVersion\x00\": 1}".to_vec()),
        (
            "invalid UTF-8 in a JSON string",
            b"{\"kind\": \"\xff\"}".to_vec(),
        ),
    ] {
        out.push(input(what, bytes));
    }
    out
}

/// Every hostile patch (against the stored seed session).
fn patches() -> Vec<PatchInput> {
    let jp = "application/json-patch+json";
    let mp = "application/merge-patch+json";
    let mut out = Vec::new();
    let p = |what: String, ct: &'static str, body: Value| PatchInput {
        what,
        content_type: ct,
        body: serde_json::to_vec(&body).unwrap(),
    };
    for n in [1001usize, 5000, 20_000] {
        let ops: Vec<Value> = (0..n)
            .map(|i| json!({"op": "add", "path": format!("/metadata/annotations/a{i}"), "value": "x"}))
            .collect();
        out.push(p(format!("{n} ops"), jp, Value::Array(ops)));
    }
    for n in [20usize, 100, 1000] {
        let ops: Vec<Value> = (0..n)
            .map(
                |_| json!({"op": "copy", "from": "/metadata/labels", "path": "/metadata/labels/x"}),
            )
            .collect();
        let mut all =
            vec![json!({"op": "add", "path": "/metadata/labels", "value": {"k": "v".repeat(60)}})];
        all.extend(ops);
        out.push(p(format!("self copy x{n}"), jp, Value::Array(all)));
        let ops: Vec<Value> = (0..n)
            .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/metadata/annotations/s{i}")}))
            .collect();
        out.push(p(format!("copy spec x{n}"), jp, Value::Array(ops)));
        let ops: Vec<Value> = (0..n)
            .map(|i| json!({"op": "copy", "from": "/metadata", "path": format!("/spec/env/E{i}")}))
            .collect();
        out.push(p(
            format!("copy metadata into env x{n}"),
            jp,
            Value::Array(ops),
        ));
    }
    for (what, doc) in [
        (
            "ttl overflow",
            json!({"spec": {"ttlSeconds": 9_000_000_000_000u64}}),
        ),
        (
            "bypass image",
            json!({"spec": {"image": "mcp-server:5000/evil:latest"}}),
        ),
        ("glob image", json!({"spec": {"image": "mcp-server:*"}})),
        ("resources list", json!({"spec": {"resources": []}})),
        ("chat list", json!({"spec": {"chat": []}})),
        (
            "huge env",
            json!({"spec": {"env": {"A": "x".repeat(300 * 1024)}}}),
        ),
        ("rename", json!({"metadata": {"name": "other"}})),
        (
            "memory 4Mi",
            json!({"spec": {"resources": {"memory": "4Mi"}}}),
        ),
        (
            "control chars",
            json!({"spec": {"user": "1\r\n\u{0}\u{1b}"}}),
        ),
        ("unknown field", json!({"spec": {"volumes": ["/:/host"]}})),
        ("privileged", json!({"spec": {"privileged": true}})),
        ("not an object", json!([1, 2])),
        ("string", json!("x")),
    ] {
        out.push(p(format!("merge {what}"), mp, doc));
    }
    for (what, doc) in [
        ("not a list", json!({"op": "add"})),
        ("unknown op", json!([{"op": "explode", "path": "/spec"}])),
        (
            "bad pointer",
            json!([{"op": "add", "path": "spec", "value": 1}]),
        ),
        (
            "missing from",
            json!([{"op": "copy", "from": "/nope", "path": "/spec/x"}]),
        ),
        ("remove spec", json!([{"op": "remove", "path": "/spec"}])),
        (
            "replace spec with list",
            json!([{"op": "replace", "path": "/spec", "value": []}]),
        ),
        (
            "set ttl overflow",
            json!([{"op": "add", "path": "/spec/ttlSeconds", "value": 9_000_000_000_000u64}]),
        ),
        (
            "set image bypass",
            json!([{"op": "replace", "path": "/spec/image", "value": "mcp-server:80/x"}]),
        ),
        (
            "huge value",
            json!([{"op": "add", "path": "/spec/env", "value": {"A": "x".repeat(300 * 1024)}}]),
        ),
        (
            "test fails",
            json!([{"op": "test", "path": "/spec/image", "value": "nope"}]),
        ),
        (
            "control chars in path",
            json!([{"op": "add", "path": "/spec/x\r\n\u{0}", "value": 1}]),
        ),
    ] {
        out.push(p(format!("json patch {what}"), jp, doc));
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    out.push(PatchInput {
        what: "deep json".into(),
        content_type: mp,
        body: deep.into_bytes(),
    });
    out.push(PatchInput {
        what: "not json".into(),
        content_type: mp,
        body: b"spec: {image: x}".to_vec(),
    });
    out.push(PatchInput {
        what: "binary".into(),
        content_type: jp,
        body: Rng(7).bytes(2000),
    });
    out.push(PatchInput {
        what: "2 MiB".into(),
        content_type: mp,
        body: format!("{{\"a\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)).into_bytes(),
    });
    out
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn one_line(s: &str) -> String {
    s.escape_debug().to_string()
}

/// Run every input through `apply` and `apply --dry-run` in a few threads; return failures.
fn run_cli(env: &Env, inputs: &[Input], dir: &std::path::Path) -> Vec<String> {
    let files: Vec<PathBuf> = inputs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = dir.join(format!("case-{i}.{}", if c.json { "json" } else { "yaml" }));
            std::fs::write(&f, &c.body).unwrap();
            f
        })
        .collect();
    let threads = 3;
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (files, failures) = (&files, &failures);
            s.spawn(move || {
                for (i, f) in files.iter().enumerate().skip(t).step_by(threads) {
                    let path = f.to_str().unwrap();
                    for args in [
                        vec!["apply", "-f", path],
                        vec!["apply", "--dry-run", "-f", path],
                    ] {
                        let start = Instant::now();
                        let out = env.cli(&args, None);
                        let took = start.elapsed();
                        let err = String::from_utf8_lossy(&out.stderr).into_owned();
                        let body = err.strip_suffix('\n').unwrap_or(&err);
                        let mut problems = Vec::new();
                        if out.status.success() {
                            problems.push("exit 0".to_string());
                        }
                        if err.contains("panicked") {
                            problems.push("panicked".into());
                        }
                        if body.is_empty() || body.contains('\n') || !body.starts_with("error: ") {
                            problems.push("not one error line".into());
                        }
                        if body.chars().any(char::is_control) {
                            problems.push("control characters in the message".into());
                        }
                        if took > PER_INPUT {
                            problems.push(format!("took {took:?}"));
                        }
                        if !problems.is_empty() {
                            failures.lock().unwrap().push(format!(
                                "cli {:?} on #{i} {}: {}: {}",
                                args[..args.len() - 1].join(" "),
                                inputs[i].what,
                                problems.join(", "),
                                one_line(&err.chars().take(300).collect::<String>())
                            ));
                        }
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// Check one API answer; returns the problems.
async fn check_answer(r: reqwest::Result<reqwest::Response>, took: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let r = match r {
        Ok(r) => r,
        Err(e) => return vec![format!("no answer: {e}")],
    };
    let code = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    if !(400..500).contains(&code) {
        problems.push(format!("status {code}"));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v["kind"] == "Status" && v["code"] == code => {
            let msg = v["message"].as_str().unwrap_or_default();
            if msg.chars().any(char::is_control) {
                problems.push("control characters in the message".into());
            }
        }
        _ => problems.push(format!(
            "not a JSON Status: {}",
            one_line(&text.chars().take(200).collect::<String>())
        )),
    }
    if took > PER_INPUT {
        problems.push(format!("took {took:?}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_cheaply_and_write_nothing() {
    let started = Instant::now();
    let inputs = corpus();
    let patch_inputs = patches();
    let total = inputs.len() + patch_inputs.len();
    eprintln!(
        "hostile corpus: {} documents + {} patches = {total} inputs",
        inputs.len(),
        patch_inputs.len()
    );
    assert!(total >= 500, "only {total} hostile inputs");

    let mut env = Env::new();
    env.start_orchestrator(&["--resync-interval", "1h"]);
    let pid = env.orchestrator.as_ref().unwrap().id();
    env.apply_yaml(&session_yaml("seed", &env.image, ""));
    env.wait_status("seed", Duration::from_secs(60), |s| s["phase"] == "Running");
    let store = env.store().await;
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let api = env.api();
    // Settle: let the controller's last status write land, then take the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revision = store.revision().await.unwrap();
    let baseline = rss(pid);
    assert!(baseline > 0, "cannot read the server's RSS");
    let mut failures = Vec::new();
    let mut peak = baseline;

    // The API: POST and PUT of every document, PATCH of every patch and JSON document.
    let api_start = Instant::now();
    let mut requests = 0usize;
    for (i, c) in inputs.iter().enumerate() {
        let ct = if c.json {
            "application/json"
        } else {
            "application/yaml"
        };
        let mut reqs = vec![
            (
                "POST",
                client
                    .post(format!("{api}/api/v1/sessions"))
                    .header("content-type", ct),
            ),
            (
                "PUT",
                client
                    .put(format!("{api}/api/v1/sessions/hostile"))
                    .header("content-type", ct),
            ),
        ];
        if c.json {
            reqs.push((
                "PATCH",
                client
                    .patch(format!("{api}/api/v1/sessions/seed"))
                    .header("content-type", "application/merge-patch+json"),
            ));
        }
        for (method, req) in reqs {
            let start = Instant::now();
            let r = req.body(c.body.clone()).send().await;
            let problems = check_answer(r, start.elapsed()).await;
            requests += 1;
            if !problems.is_empty() {
                failures.push(format!(
                    "api {method} #{i} {}: {}",
                    c.what,
                    problems.join(", ")
                ));
            }
        }
        let now = store.revision().await.unwrap();
        if now != revision {
            failures.push(format!(
                "api #{i} {}: the store revision moved to {now}",
                c.what
            ));
            break;
        }
        let r = rss(pid);
        peak = peak.max(r);
        if r > baseline + RSS_GROWTH {
            failures.push(format!("api #{i} {}: RSS {} MiB", c.what, r >> 20));
        }
    }
    for (i, c) in patch_inputs.iter().enumerate() {
        let start = Instant::now();
        let r = client
            .patch(format!("{api}/api/v1/sessions/seed"))
            .header("content-type", c.content_type)
            .body(c.body.clone())
            .send()
            .await;
        let problems = check_answer(r, start.elapsed()).await;
        requests += 1;
        if !problems.is_empty() {
            failures.push(format!(
                "api PATCH #{i} {}: {}",
                c.what,
                problems.join(", ")
            ));
        }
        let now = store.revision().await.unwrap();
        if now != revision {
            failures.push(format!(
                "api PATCH #{i} {}: the store revision moved to {now}",
                c.what
            ));
            break;
        }
        let r = rss(pid);
        peak = peak.max(r);
        if r > baseline + RSS_GROWTH {
            failures.push(format!("api PATCH {}: RSS {} MiB", c.what, r >> 20));
        }
    }
    let health = client.get(format!("{api}/healthz")).send().await;
    assert!(
        health.is_ok_and(|h| h.status().is_success()),
        "the server is not healthy after the corpus"
    );
    let api_took = api_start.elapsed();

    // The CLI, Redis mode: apply and apply --dry-run of every document.
    let cli_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cli_env = &env;
    let inputs_ref = &inputs;
    let cli_failures = tokio::task::block_in_place(|| run_cli(cli_env, inputs_ref, dir.path()));
    failures.extend(cli_failures);
    let cli_took = cli_start.elapsed();

    let now = store.revision().await.unwrap();
    if now != revision {
        failures.push(format!(
            "a rejected input was written to the store (revision {revision} -> {now})"
        ));
    }
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.metadata.name.clone())
        .collect();
    if names != ["seed"] {
        failures.push(format!(
            "only the seed session may be stored, found {names:?}"
        ));
    }
    assert!(env.orchestrator_alive(), "serve died");
    assert!(!env.log_text().contains("panicked"), "serve panicked");
    eprintln!(
        "hostile corpus: {requests} API requests in {api_took:?}, {} CLI runs in {cli_took:?}, RSS {} -> peak {} MiB, total {:?}",
        inputs.len() * 2,
        baseline >> 20,
        peak >> 20,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
