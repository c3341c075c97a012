//! The HTTP API over real HTTP against a real `serve`, with real Redis and Docker.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn session(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "orchestrator.mcp.dev/v1",
        "kind": "Session",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"image": image}
    })
}

async fn err_body(r: reqwest::Response, code: u16) -> Value {
    assert_eq!(r.status().as_u16(), code, "unexpected status");
    let v: Value = r.json().await.expect("error bodies are JSON");
    assert_eq!(v["code"], code);
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["details"].is_object(), "{v}");
    v
}

/// Server-Sent Events as (event, id, data) triples.
struct Sse {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Sse {
    async fn open(c: &Client, url: &str) -> Sse {
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            stream: r.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> (String, String, Value) {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().into()
                    }
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().into()
                    }
                    if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim())
                    }
                }
                if ev.is_empty() && data.is_empty() {
                    continue; // keep-alive comment
                }
                return (ev, id, serde_json::from_str(&data).unwrap_or(Value::Null));
            }
            let chunk = tokio::time::timeout(T, self.stream.next())
                .await
                .expect("an SSE event in time")
                .expect("stream open")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event about `name` that is not a status-only change.
    async fn next_for(
        &mut self,
        name: &str,
        skip_status: &mut Option<Value>,
    ) -> (String, String, Value) {
        loop {
            let (ev, id, obj) = self.next().await;
            if obj["metadata"]["name"] != name {
                continue;
            }
            // The controller's status writes are MODIFIED events too; skip those that only
            // changed status.
            let mut spec_view = obj.clone();
            spec_view.as_object_mut().unwrap().remove("status");
            spec_view["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
            if ev == "MODIFIED" && skip_status.as_ref() == Some(&spec_view) {
                continue;
            }
            *skip_status = Some(spec_view);
            return (ev, id, obj);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_patches_and_errors() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let c = Client::new();
    let api = format!("{}/api/v1/sessions", env.api());

    let r = c
        .post(&api)
        .json(&session("web", &env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        created["metadata"]["annotations"]["orchestrator.mcp.dev/source"],
        "api"
    );
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    err_body(
        c.post(&api)
            .json(&session("web", &env.image))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;

    let got: Value = c
        .get(format!("{api}/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    let list: Value = c.get(&api).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let none: Value = c
        .get(format!("{api}?labelSelector=team%3Db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
    err_body(
        c.get(format!("{api}?labelSelector=a%20in%20b"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    // PUT replaces (and creates when absent); the header says what happened.
    let mut body = session("web", &env.image);
    body["spec"]["env"] = json!({"MODE": "x"});
    let r = c
        .put(format!("{api}/web"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-apply-result"], "configured");
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["metadata"]["generation"], 2);
    let r = c
        .put(format!("{api}/other"))
        .json(&session("other", &env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Stale precondition in the body and in If-Match → 409 with the current version.
    let mut stale = body.clone();
    stale["metadata"]["resourceVersion"] = json!(rv1);
    stale["spec"]["env"] = json!({"MODE": "stale"});
    let v = err_body(
        c.put(format!("{api}/web"))
            .json(&stale)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(
        v["details"]["resourceVersion"],
        put["metadata"]["resourceVersion"]
    );
    let v = err_body(
        c.patch(format!("{api}/web"))
            .header("content-type", "application/merge-patch+json")
            .header("if-match", format!("\"{rv1}\""))
            .body(r#"{"spec":{"env":{"MODE":"late"}}}"#)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(
        v["details"]["resourceVersion"],
        put["metadata"]["resourceVersion"]
    );

    // Merge patch and JSON patch (with a passing test op).
    let r = c
        .patch(format!("{api}/web"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"env":{"MODE":null,"LEVEL":"2"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["spec"]["env"], json!({"LEVEL": "2"}));
    let r = c.patch(format!("{api}/web"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"test","path":"/spec/env/LEVEL","value":"2"},{"op":"replace","path":"/spec/env/LEVEL","value":"3"}]"#)
        .send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A failing test op → 409, nothing changed.
    let v = err_body(
        c.patch(format!("{api}/web"))
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"test","path":"/spec/env/LEVEL","value":"2"},{"op":"replace","path":"/spec/env/LEVEL","value":"9"}]"#)
            .send().await.unwrap(),
        409,
    ).await;
    assert_eq!(v["reason"], "TestFailed");
    let now: Value = c
        .get(format!("{api}/web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["spec"]["env"]["LEVEL"], "3");

    // 415, 422 with field paths, 413, 404.
    err_body(
        c.patch(format!("{api}/web"))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    err_body(
        c.post(&api)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    let mut bad = session("evil", &env.image);
    bad["spec"]["privileged"] = json!(true);
    bad["spec"]["networkMode"] = json!("host");
    let v = err_body(c.post(&api).json(&bad).send().await.unwrap(), 422).await;
    let fields: Vec<&str> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["spec.privileged", "spec.networkMode"]);
    let mut unknown = session("odd", &env.image);
    unknown["spec"]["volumes"] = json!(["/:/host"]);
    let v = err_body(c.post(&api).json(&unknown).send().await.unwrap(), 422).await;
    assert!(
        v["message"].as_str().unwrap().contains("spec.volumes"),
        "{v}"
    );
    let v = err_body(
        c.patch(format!("{api}/web"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"spec":{"image":"alpine:3"}}"#)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "spec.image");
    assert_eq!(v["details"]["causes"][0]["reason"], "ImageNotAllowed");
    let mut huge = session("huge", &env.image);
    huge["spec"]["env"] = json!({"BIG": "x".repeat(1_100_000)});
    err_body(c.post(&api).json(&huge).send().await.unwrap(), 413).await;
    err_body(c.get(format!("{api}/nope")).send().await.unwrap(), 404).await;
    err_body(
        c.get(format!("{}/api/v1/nothing-here", env.api()))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(
        c.get(format!("{api}/evil")).send().await.unwrap().status() == 404,
        "nothing written"
    );

    // Status subresource and delete.
    let st: Value = c
        .get(format!("{api}/web/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(st["phase"].is_string());
    let r = c.delete(format!("{api}/web")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    err_body(c.delete(format!("{api}/web")).send().await.unwrap(), 404).await;
    err_body(c.get(format!("{api}/web")).send().await.unwrap(), 404).await;
}

fn pool(name: &str, image: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "orchestrator.mcp.dev/v1",
        "kind": "WarmPool",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"replicas": replicas, "template": {"image": image}}
    })
}

/// `/api/v1/warmpools`: the same CRUD, patches, selectors, watch, status codes and Status
/// bodies as sessions; the real controller fills the pool, and deleting it removes its
/// sandboxes.
#[tokio::test(flavor = "multi_thread")]
async fn warm_pool_crud_errors_and_real_sandboxes() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let c = Client::new();
    let api = format!("{}/api/v1/warmpools", env.api());

    // Create; a second create of the name conflicts.
    let r = c
        .post(&api)
        .json(&pool("wp", &env.image, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().contains_key("etag"));
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["kind"], "WarmPool");
    assert_eq!(
        created["metadata"]["annotations"]["orchestrator.mcp.dev/source"],
        "api"
    );
    assert_eq!(created["metadata"]["generation"], 1);
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let v = err_body(
        c.post(&api)
            .json(&pool("wp", &env.image, 2))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(v["reason"], "AlreadyExists");
    assert_eq!(v["details"]["kind"], "WarmPool");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("warm pool \"wp\" already exists"),
        "{v}"
    );
    // A session of the same name is another object.
    let r = c
        .post(format!("{}/api/v1/sessions", env.api()))
        .json(&session("wp", &env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The controller fills it with real, contract-bound sandboxes.
    let mut got = Value::Null;
    let start = std::time::Instant::now();
    while start.elapsed() < T {
        got = c
            .get(format!("{api}/wp"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if got["status"]["ready"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got["status"]["ready"], 2, "{got}");
    assert_eq!(got["status"]["replicas"], 2, "{got}");
    let members = env.pool_containers("wp");
    assert_eq!(members.len(), 2, "{members:?}");
    for id in &members {
        let net = env.docker(&["inspect", "--format", "{{.HostConfig.NetworkMode}}", id]);
        assert_eq!(net, "none");
    }

    // List (WarmPoolList), selectors, a bad selector.
    let list: Value = c.get(&api).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["kind"], "WarmPoolList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let none: Value = c
        .get(format!("{api}?labelSelector=team%3Db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
    err_body(
        c.get(format!("{api}?labelSelector=a%20in%20b"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    // A watch sees the current pool, then a change.
    let mut sse = Sse::open(&c, &format!("{api}?watch=true")).await;
    let (ev, _, obj) = sse.next().await;
    assert_eq!(
        (ev.as_str(), &obj["metadata"]["name"]),
        ("ADDED", &json!("wp"))
    );

    // PUT replaces (generation moves with the spec); the header says what happened.
    let mut body = pool("wp", &env.image, 1);
    body["spec"]["template"]["env"] = json!({"MODE": "x"});
    let r = c.put(format!("{api}/wp")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-apply-result"], "configured");
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["metadata"]["generation"], 2);
    let mut skip = None;
    loop {
        let (ev, _, obj) = sse.next_for("wp", &mut skip).await;
        if ev == "MODIFIED" && obj["spec"]["replicas"] == 1 {
            break;
        }
    }

    // Stale preconditions conflict, in the body and in If-Match, and change nothing.
    let mut stale = body.clone();
    stale["metadata"]["resourceVersion"] = json!(rv1);
    stale["spec"]["replicas"] = json!(3);
    let v = err_body(
        c.put(format!("{api}/wp"))
            .json(&stale)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(v["reason"], "Conflict");
    assert_eq!(v["details"]["kind"], "WarmPool");
    assert!(v["details"]["resourceVersion"].is_string(), "{v}");
    let v = err_body(
        c.patch(format!("{api}/wp"))
            .header("content-type", "application/merge-patch+json")
            .header("if-match", format!("\"{rv1}\""))
            .body(r#"{"spec":{"replicas":3}}"#)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(v["reason"], "Conflict");
    err_body(
        c.delete(format!("{api}/wp"))
            .header("if-match", format!("\"{rv1}\""))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    let now: Value = c
        .get(format!("{api}/wp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        now["spec"]["replicas"], 1,
        "the stale writes changed nothing"
    );

    // Patches: merge and JSON (a failed test is a conflict); the result is admitted.
    let r = c
        .patch(format!("{api}/wp"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"replicas":2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["spec"]["replicas"], 2);
    let v = err_body(
        c.patch(format!("{api}/wp"))
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"test","path":"/spec/replicas","value":7}]"#)
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(v["reason"], "TestFailed");
    let v = err_body(
        c.patch(format!("{api}/wp"))
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"replace","path":"/spec/replicas","value":1001}]"#)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "spec.replicas");
    assert_eq!(v["details"]["causes"][0]["reason"], "OutOfRange");
    err_body(
        c.patch(format!("{api}/wp"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;

    // Refused bodies: replicas over the limit, a template outside the contract, the wrong
    // kind (a Session, or no known kind), a name that is not the URL's.
    let v = err_body(
        c.post(&api)
            .json(&pool("big", &env.image, 1001))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(v["details"]["causes"][0]["field"], "spec.replicas");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit of 1000"),
        "{v}"
    );
    let v = err_body(
        c.post(&api)
            .json(&pool("alp", "alpine:3", 1))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "spec.template.image");
    assert_eq!(v["details"]["causes"][0]["reason"], "ImageNotAllowed");
    let v = err_body(
        c.post(&api)
            .json(&session("sess", &env.image))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "kind");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("must be \"WarmPool\""),
        "{v}"
    );
    let v = err_body(
        c.post(format!("{}/api/v1/sessions", env.api()))
            .json(&pool("p2", &env.image, 1))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "kind");
    let mut pod = pool("pod", &env.image, 1);
    pod["kind"] = json!("Pod");
    let v = err_body(c.post(&api).json(&pod).send().await.unwrap(), 422).await;
    assert_eq!(v["details"]["causes"][0]["field"], "kind");
    let v = err_body(
        c.put(format!("{api}/other"))
            .json(&pool("wp", &env.image, 1))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    err_body(
        c.post(&api)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    let v = err_body(c.get(format!("{api}/nope")).send().await.unwrap(), 404).await;
    assert_eq!(v["reason"], "NotFound");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("warm pool \"nope\" not found"),
        "{v}"
    );
    for name in ["big", "alp", "sess", "p2", "pod", "other"] {
        assert_eq!(
            c.get(format!("{api}/{name}"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{name}: nothing written"
        );
    }

    // Events of a pool (none yet), and delete: the sandboxes go with it.
    let ev: Value = c
        .get(format!("{api}/wp/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ev["items"].is_array(), "{ev}");
    let r = c.delete(format!("{api}/wp")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let last: Value = r.json().await.unwrap();
    assert_eq!(last["kind"], "WarmPool");
    wait_until(T, "the pool's sandboxes to be removed", || {
        env.pool_containers("wp").is_empty()
    });
    err_body(c.delete(format!("{api}/wp")).send().await.unwrap(), 404).await;
    assert_eq!(
        c.get(format!("{}/api/v1/sessions/wp", env.api()))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the session of the same name is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conflicting_patches_lose_nothing() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let c = Client::new();
    let api = format!("{}/api/v1/sessions", env.api());
    let mut s = session("busy", &env.image);
    s["metadata"]["labels"]["n"] = json!("0");
    assert_eq!(c.post(&api).json(&s).send().await.unwrap().status(), 201);

    // 100 compare-and-increment patches at once: each succeeds or gets 409.
    let tasks = (0..100).map(|_| {
        let c = c.clone();
        let url = format!("{api}/busy");
        tokio::spawn(async move {
            let cur: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            let n: u64 = cur["metadata"]["labels"]["n"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let patch = json!([
                {"op": "test", "path": "/metadata/labels/n", "value": n.to_string()},
                {"op": "replace", "path": "/metadata/labels/n", "value": (n + 1).to_string()}
            ]);
            c.patch(&url)
                .header("content-type", "application/json-patch+json")
                .body(patch.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let codes: Vec<u16> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 409), "{codes:?}");
    let ok = codes.iter().filter(|c| **c == 200).count();
    let cur: Value = c
        .get(format!("{api}/busy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cur["metadata"]["labels"]["n"],
        ok.to_string(),
        "every applied increment is there"
    );
    assert!(ok >= 1);

    // 100 merge patches without preconditions, each adding its own key: all land.
    let tasks = (0..100).map(|i| {
        let c = c.clone();
        let url = format!("{api}/busy");
        tokio::spawn(async move {
            c.patch(&url)
                .header("content-type", "application/merge-patch+json")
                .body(json!({"spec": {"env": {format!("K{i}"): "v"}}}).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let codes: Vec<u16> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 409), "{codes:?}");
    let applied = codes.iter().filter(|c| **c == 200).count();
    let cur: Value = c
        .get(format!("{api}/busy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cur["spec"]["env"].as_object().unwrap().len(),
        applied,
        "no applied update was lost"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_in_order_resumes_and_wait_returns_running() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let c = Client::new();
    let api = format!("{}/api/v1/sessions", env.api());

    // Acquire: create and get it back once its sandbox runs.
    let r = c
        .post(format!("{api}?wait=Running&timeout=30s"))
        .json(&session("w1", &env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"]["phase"], "Running", "{v}");
    let cid = v["status"]["containerId"].as_str().unwrap().to_string();
    assert_eq!(env.containers("w1")[0].0, cid);

    let mut sse = Sse::open(&c, &format!("{api}?watch=true&labelSelector=team%3Da")).await;
    let mut seen = None;
    let (ev, _, obj) = sse.next_for("w1", &mut seen).await;
    assert_eq!(
        (ev.as_str(), obj["metadata"]["name"].as_str()),
        ("ADDED", Some("w1"))
    );

    let created: Value = c
        .post(&api)
        .json(&session("w2", &env.image))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv_created: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    c.patch(format!("{api}/w2"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"env":{"A":"1"}}}"#)
        .send()
        .await
        .unwrap();
    c.delete(format!("{api}/w2")).send().await.unwrap();
    let mut seen = None;
    let mut got = Vec::new();
    let mut last_id = 0u64;
    while got.len() < 3 {
        let (ev, id, obj) = sse.next_for("w2", &mut seen).await;
        let id: u64 = id.parse().unwrap();
        assert!(id > last_id, "events arrive in resourceVersion order");
        last_id = id;
        got.push((ev, obj["spec"]["env"]["A"].clone()));
    }
    assert_eq!(got[0].0, "ADDED");
    assert_eq!(got[1], ("MODIFIED".to_string(), json!("1")));
    assert_eq!(got[2].0, "DELETED");

    // Resume after the create: the patch and the delete are replayed, nothing before.
    let mut resumed = Sse::open(
        &c,
        &format!("{api}/w2?watch=true&resourceVersion={rv_created}"),
    )
    .await;
    let mut seen = Some({
        let mut v = created.clone();
        v.as_object_mut().unwrap().remove("status");
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        v
    });
    let (ev, id, _) = resumed.next_for("w2", &mut seen).await;
    assert_eq!(ev, "MODIFIED");
    assert!(id.parse::<u64>().unwrap() > rv_created);
    let (ev, _, _) = resumed.next_for("w2", &mut seen).await;
    assert_eq!(ev, "DELETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_operations_endpoints_and_listen_rules() {
    let mut env = Env::new();
    env.extra_env
        .push(("ORCHESTRATOR_TOKEN".into(), "s3cret-token".into()));
    env.start_orchestrator(&["--listen", &format!("127.0.0.1:{}", env.port)]);
    let c = Client::new();
    let api = format!("{}/api/v1/sessions", env.api());
    let v = err_body(c.get(&api).send().await.unwrap(), 401).await;
    assert_eq!(v["reason"], "Unauthorized");
    err_body(c.get(&api).bearer_auth("wrong").send().await.unwrap(), 401).await;
    err_body(
        c.get(format!("{}/metrics", env.api()))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(
        c.get(&api)
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        !env.log_text().contains("s3cret-token"),
        "the token must never be logged"
    );

    assert_eq!(
        c.get(format!("{}/healthz", env.api()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_until(T, "readyz", || {
        std::process::Command::new("curl")
            .args(["-sf", &format!("{}/readyz", env.api())])
            .status()
            .is_ok_and(|s| s.success())
    });

    // Metrics parse as Prometheus text and carry what operators need.
    let r = c
        .post(&api)
        .bearer_auth("s3cret-token")
        .json(&session("m1", &env.image))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    env.wait_running("m1", T);
    let text = c
        .get(format!("{}/metrics", env.api()))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Result<String, std::io::Error>> =
        text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid Prometheus text");
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for m in [
        "mcpo_reconciles_total",
        "mcpo_queue_depth",
        "mcpo_reconcile_duration_seconds",
        "mcpo_sessions",
        "mcpo_container_restarts_total",
        "mcpo_docker_errors_total",
        "mcpo_redis_errors_total",
    ] {
        assert!(names.contains(m), "metrics lack {m}:\n{text}");
    }
    let running = scrape
        .samples
        .iter()
        .find(|s| s.metric == "mcpo_sessions" && s.labels.get("phase") == Some("Running"))
        .unwrap();
    assert!(
        matches!(running.value, prometheus_parse::Value::Gauge(v) if v >= 1.0),
        "{text}"
    );

    // The OpenAPI document is generated, includes the Session schema, and validates.
    let doc = c
        .get(format!("{}/openapi.json", env.api()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&doc).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    assert!(v["components"]["schemas"]["Session"].is_object());
    assert!(v["paths"]["/api/v1/sessions/{name}"]["patch"].is_object());
    assert!(v["paths"]["/api/v1/warmpools/{name}"]["patch"].is_object());
    assert!(v["paths"]["/api/v1/warmpools"]["post"].is_object());
    assert!(v["components"]["schemas"]["WarmPoolList"].is_object());
    assert!(v["components"]["schemas"]["SandboxTemplate"].is_object());
    let path = env.dir.path().join("openapi.json");
    std::fs::write(&path, &doc).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", path.to_str().unwrap()])
        .output()
        .expect("python3 is required");
    assert!(
        out.status.success(),
        "openapi-spec-validator (pip install openapi-spec-validator) rejected the document: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    env.stop_orchestrator();

    // Without a token: loopback only, said in the log; anything else needs --insecure.
    env.extra_env.clear();
    let out = env.cli(
        &["serve", "--listen", &format!("0.0.0.0:{}", free_port())],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without ORCHESTRATOR_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.start_orchestrator(&[]);
    assert!(env.log_text().contains("listens on loopback only"));
}

#[test]
fn the_cli_talks_to_the_api_with_server() {
    let mut env = Env::new();
    env.extra_env
        .push(("ORCHESTRATOR_TOKEN".into(), "cli-token".into()));
    env.start_orchestrator(&[]);
    let server = env.api();
    // The CLI must not need Redis in this mode: point REDIS_URL at nothing.
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let run = |args: &[&str], token: &str, stdin: Option<&str>| {
        let mut c = std::process::Command::new(BIN);
        c.args(["--server", &server])
            .args(args)
            .env("REDIS_URL", &dead_redis)
            .env("ORCHESTRATOR_TOKEN", token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let ok = |args: &[&str], stdin: Option<&str>| {
        let out = run(args, "cli-token", stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let yaml = session_yaml("remote", &env.image, "");
    let out = ok(
        &["apply", "-f", "-", "--wait", "--timeout", "30s"],
        Some(&yaml),
    );
    assert!(
        out.contains("session/remote created") && out.contains("session/remote Running"),
        "{out}"
    );
    assert!(ok(&["apply", "-f", "-"], Some(&yaml)).contains("session/remote unchanged"));
    let table = ok(&["get"], None);
    assert!(
        table.contains("remote") && table.contains("Running"),
        "{table}"
    );
    let out = ok(
        &["patch", "remote", "-p", r#"{"spec":{"env":{"A":"1"}}}"#],
        None,
    );
    assert_eq!(out.trim(), "session/remote patched");
    // The patch recreates the sandbox; describe shows the new one once it runs.
    let mut d = String::new();
    wait_until(T, "describe to show the recreated container", || {
        d = ok(&["describe", "remote"], None);
        d.contains("Network:     none") && d.contains("Observed Generation: 2")
    });
    assert!(d.contains("Provisioned") && d.contains("Removed"), "{d}");
    let out = ok(&["delete", "remote"], None);
    assert_eq!(out.trim(), "session/remote deleted");

    let bad = run(&["get"], "wrong", None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("401"), "{err}");
    let invalid = run(
        &["apply", "-f", "-"],
        "cli-token",
        Some(&session_yaml("x", "alpine:3", "")),
    );
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("spec.image"),
        "client-side admission"
    );
}

#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let mut env = Env::new();
    env.extra_env.push(("LOG_FORMAT".into(), "json".into()));
    env.extra_env
        .push(("ORCHESTRATOR_TOKEN".into(), "do-not-log-me".into()));
    env.start_orchestrator_waiting_for(&[], "store listed");
    env.apply_yaml(&session_yaml("logged", &env.image, ""));
    env.wait_running("logged", T);
    wait_until(T, "the provisioned log line", || {
        env.log_text().contains("Session provisioned")
    });
    let text = env.log_text();
    let mut provisioned = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "Session provisioned" {
            provisioned = Some(v);
        }
    }
    let p = provisioned.expect("a Session provisioned line");
    assert_eq!(p["session"], "logged");
    assert!(p["container_id"].as_str().unwrap().len() == 64);
    assert!(!text.contains("do-not-log-me"));
}

/// Send raw bytes, then read until the server answers or closes; returns (what came back,
/// how long it took). Gives up after `limit`.
fn raw_exchange(port: u16, request: &[u8], limit: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let t0 = std::time::Instant::now();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&buf).contains("\"kind\":\"Status\"") {
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), t0.elapsed())
}

/// Issue 9, items 7 and 9: stream caps (429 + Retry-After), bounded timeouts, read timeouts,
/// JSON Status for every error, route-labelled metrics, parsing off the async workers, and a
/// SIGTERM that stops `serve` with a watch open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_resources_are_bounded() {
    let mut env = Env::new();
    env.start_orchestrator(&[
        "--max-watches",
        "1",
        "--max-waits",
        "1",
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
    ]);
    let c = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let api = format!("{}/api/v1/sessions", env.api());

    // 1. One watch at most: the second gets 429 with Retry-After; a closed one frees its slot.
    let mut first = Sse::open(&c, &format!("{api}?watch=true")).await;
    let r = c.get(format!("{api}?watch=true")).send().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let v = err_body(r, 429).await;
    assert_eq!(v["reason"], "TooManyRequests");
    let r = c.get(format!("{api}/x?watch=true")).send().await.unwrap();
    err_body(r, 429).await;
    // It still streams.
    c.post(&api)
        .json(&session("seen", "mcp-server:does-not-exist"))
        .send()
        .await
        .unwrap();
    let (ev, _, obj) = first.next().await;
    assert_eq!(
        (ev.as_str(), &obj["metadata"]["name"]),
        ("ADDED", &json!("seen"))
    );
    drop(first);
    let t0 = std::time::Instant::now();
    let mut freed = false;
    while t0.elapsed() < Duration::from_secs(10) {
        let r = c.get(format!("{api}?watch=true")).send().await.unwrap();
        if r.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a closed watch gives its slot back");

    // 2. One wait at most, and timeouts are bounded (400 before anything is written).
    for t in ["11m", "99999999999999999999s", "500000000years"] {
        let r = c
            .put(format!("{api}/bounded?wait=Running&timeout={t}"))
            .json(&session("bounded", &env.image))
            .send()
            .await
            .unwrap();
        err_body(r, 400).await;
    }
    let r = c.get(format!("{api}/bounded")).send().await.unwrap();
    err_body(r, 404).await;
    let waiting = {
        let (c, api) = (c.clone(), api.clone());
        tokio::spawn(async move {
            c.put(format!("{api}/stuck?wait=Running&timeout=3s"))
                .json(&session("stuck", "mcp-server:does-not-exist"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c
        .put(format!("{api}/other?wait=Running&timeout=3s"))
        .json(&session("other", &env.image))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    err_body(r, 429).await;
    let r = c.get(format!("{api}/other")).send().await.unwrap();
    err_body(r, 404).await; // a refused wait wrote nothing
    assert_eq!(waiting.await.unwrap(), 504);

    // 3. Every error body is a JSON Status.
    let r = c
        .put(format!("{api}/%FF"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    err_body(r, 400).await;
    let r = c.get(format!("{api}?watch=maybe")).send().await.unwrap();
    err_body(r, 400).await;
    let r = c.delete(&api).send().await.unwrap();
    err_body(r, 405).await;
    let r = c
        .get(format!("{}/nothing/here", env.api()))
        .send()
        .await
        .unwrap();
    err_body(r, 404).await;
    let r = c
        .post(&api)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    assert!(code == 400 || code == 422, "{code}");
    err_body(r, code).await;
    let r = c
        .request(reqwest::Method::from_bytes(b"BREW").unwrap(), &api)
        .send()
        .await
        .unwrap();
    err_body(r, 405).await;

    // 4. Read timeouts: a body shorter than its Content-Length gets 408 (JSON) after the body
    // timeout; headers that never end close the connection after the header timeout.
    let (answer, took) = raw_exchange(
        env.port,
        b"POST /api/v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"reason\":\"Timeout\""), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (answer, took) = raw_exchange(
        env.port,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(10),
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "closed after the header timeout: {took:?}"
    );

    // 5. Parsing runs off the async workers: /healthz answers fast while two large nested
    // bodies are parsed.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let parses: Vec<_> = (0..2)
        .map(|_| {
            let (c, api, deep) = (c.clone(), api.clone(), deep.clone());
            tokio::spawn(async move {
                c.post(&api)
                    .header("content-type", "application/yaml")
                    .body(deep)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let r = c
            .get(format!("{}/healthz", env.api()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "healthz took {slowest:?}"
    );
    for p in parses {
        let code = tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("the deep bodies are answered")
            .unwrap()
            .unwrap();
        assert!((400..500).contains(&code), "{code}");
    }

    // 6. Metrics: labelled by route template, unknown methods and routes lumped together.
    let text = c
        .get(format!("{}/metrics", env.api()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("route=\"/api/v1/sessions/{name}\""), "{text}");
    assert!(text.contains("method=\"OTHER\""), "{text}");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(!text.contains("/nothing/here"), "{text}");
    assert!(!text.contains("BREW"), "{text}");
    assert!(
        text.contains("mcpo_http_open_streams{kind=\"watch\"}"),
        "{text}"
    );

    // 7. SIGTERM stops serve with a watch stream open (stop_orchestrator allows 10 s).
    let t0 = std::time::Instant::now();
    let mut open = loop {
        let r = c.get(format!("{api}?watch=true")).send().await.unwrap();
        if r.status() == 200 {
            break Sse {
                stream: r.bytes_stream().boxed(),
                buf: String::new(),
            };
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a watch slot is free again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ev, _, _) = open.next().await;
    assert_eq!(ev, "ADDED");
    let t0 = std::time::Instant::now();
    env.stop_orchestrator();
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}
