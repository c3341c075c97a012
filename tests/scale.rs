//! What keeps many sessions cheap, against a real Redis: the change stream is bounded in
//! bytes as well as entries.

mod common;

use common::*;
use mcp_orchestrator::domain::resource::Session;
use mcp_orchestrator::store::StoreError;

/// The sum of every field value's length over the stream's entries (what the write script
/// counts), and the number of entries.
fn stream_content(env: &Env) -> (usize, usize) {
    let out = env.redis_cli(&["XRANGE", &format!("mcpo:{}:stream", env.instance), "-", "+"]);
    // redis-cli prints ids and field names/values one per line; count the values.
    let lines: Vec<&str> = out.lines().collect();
    let mut entries = 0;
    let mut bytes = 0;
    let mut i = 0;
    while i < lines.len() {
        // An entry: its id, then field, value, field, value, ...
        if lines[i].contains("-0")
            && lines[i]
                .split('-')
                .next()
                .is_some_and(|n| n.parse::<u64>().is_ok())
        {
            entries += 1;
            i += 1;
            for _ in 0..4 {
                if i + 1 < lines.len() {
                    bytes += lines[i + 1].len();
                }
                i += 2;
            }
        } else {
            i += 1;
        }
    }
    (entries, bytes)
}

#[tokio::test]
async fn the_change_stream_is_bounded_in_bytes() {
    let env = Env::new();
    let budget = 100_000;
    let store = env.store().await.with_stream_limits(100_000, budget);
    let pad = "x".repeat(8 * 1024);
    for i in 0..60 {
        let mut s = Session::new(&format!("s{i}"), &env.image);
        s.spec.env.insert("PAD".into(), pad.clone());
        store.create(&s).await.unwrap();
    }
    let counted: usize = env
        .redis_cli(&["GET", &format!("mcpo:{}:stream-bytes", env.instance)])
        .parse()
        .unwrap();
    let (entries, bytes) = stream_content(&env);
    assert!(counted <= budget, "{counted} bytes kept, over {budget}");
    assert!((10..60).contains(&entries), "{entries} entries kept");
    // The counter is what the entries hold (redis-cli shows the values as they are).
    assert!(
        counted.abs_diff(bytes) <= entries * 8,
        "counter {counted}, content {bytes}"
    );
    // A watcher that fell behind the trimmed part is told so (and relists) ...
    let mut old = store.watch(1).await.unwrap();
    match old.next_batch(std::time::Duration::from_millis(200)).await {
        Err(StoreError::Gone(_)) => {}
        other => panic!("expected Gone, got {other:?}"),
    }
    // ... one that is in the kept part goes on.
    let rv = store.revision().await.unwrap();
    let mut w = store.watch(rv - 3).await.unwrap();
    let batch = w
        .next_batch(std::time::Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(batch.len(), 3);
    // Status writes count too, and deletes.
    for i in 0..60 {
        store.delete(&format!("s{i}"), None).await.unwrap();
    }
    let counted: usize = env
        .redis_cli(&["GET", &format!("mcpo:{}:stream-bytes", env.instance)])
        .parse()
        .unwrap();
    assert!(counted <= budget);
}

#[tokio::test]
async fn lists_come_in_pages_in_name_order() {
    let env = Env::new();
    let store = env.store().await;
    for i in 0..25 {
        store
            .create(&Session::new(&format!("p{i:02}"), &env.image))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = store.list_page(10, after.as_deref()).await.unwrap();
        pages.push((page.items.len(), page.remaining));
        seen.extend(page.items.iter().map(|s| s.metadata.name.clone()));
        if pages.len() == 1 {
            // Deleted while a client pages: simply not on a later page.
            store.delete("p15", None).await.unwrap();
        }
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(pages, vec![(10, 15), (10, 4), (4, 0)]);
    let mut want: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    want.retain(|n| n != "p15");
    assert_eq!(seen, want);
    let empty = store.list_page(10, Some("zzz")).await.unwrap();
    assert!(empty.items.is_empty() && empty.next_after.is_none());
}

#[test]
fn the_api_lists_and_watches_in_pages() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = env.store().await;
        for i in 0..25 {
            // Outside the allowlist: stored (straight to the store), never started.
            store
                .create(&Session::new(&format!("q{i:02}"), "nginx:latest"))
                .await
                .unwrap();
        }
    });
    let page = |q: &str| -> serde_json::Value {
        let (code, body) = http_get(&format!("{}/api/v1/sessions?{q}", env.api()));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let first = page("limit=10");
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["items"].as_array().unwrap().len(), 10);
    assert_eq!(first["items"][0]["metadata"]["name"], "q00");
    assert_eq!(first["metadata"]["remainingItemCount"], 15);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let second = page(&format!("limit=10&continue={token}"));
    assert_eq!(second["items"][0]["metadata"]["name"], "q10");
    assert_eq!(second["metadata"]["resourceVersion"], rv.as_str());
    let token = second["metadata"]["continue"].as_str().unwrap().to_string();
    let last = page(&format!("limit=10&continue={token}"));
    assert_eq!(last["items"].as_array().unwrap().len(), 5);
    assert!(last["metadata"]["continue"].is_null());
    // Without a limit, everything (as asked).
    assert_eq!(page("")["items"].as_array().unwrap().len(), 25);
    // A token this server did not give is a 400 with a Status.
    let (code, body) = http_get(&format!(
        "{}/api/v1/sessions?limit=5&continue=x.y.z",
        env.api()
    ));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    // A watch pages its initial listing too: every object arrives, then the changes.
    let out = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "3"])
        .arg(format!("{}/api/v1/sessions?watch=true&limit=7", env.api()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("event: ADDED").count(), 25, "{text}");
    // The CLI over HTTP pages through the whole list.
    let listed = env.ok(&["--server", &env.api(), "get", "-o", "name"]);
    assert_eq!(listed.lines().count(), 25, "{listed}");
}
