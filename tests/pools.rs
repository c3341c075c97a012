//! Warm pools end to end: real Redis, real Docker, the real binary. A pool keeps started
//! sandboxes ready; a session naming it claims one (atomically, never twice), or starts
//! cold and says why; members that die are replaced; claims survive restarts.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use mcp_orchestrator::domain::pool::WarmPool;
use mcp_orchestrator::domain::resource::Session;
use mcp_orchestrator::store::{Claim, Store};

const T: Duration = Duration::from_secs(60);

async fn make_pool(store: &Store, env: &Env, name: &str, replicas: u32) -> WarmPool {
    store
        .pools()
        .create(&WarmPool::new(name, &env.image, replicas))
        .await
        .expect("create pool")
}

/// Poll the stored pool until `f` holds.
async fn wait_pool(store: &Store, name: &str, f: impl Fn(&WarmPool) -> bool) -> WarmPool {
    let start = Instant::now();
    loop {
        if let Some(p) = store.pools().get(name).await.unwrap()
            && f(&p)
        {
            return p;
        }
        assert!(
            start.elapsed() < T,
            "pool {name} never got there: {:?}",
            store
                .pools()
                .get(name)
                .await
                .unwrap()
                .and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_session(store: &Store, name: &str, f: impl Fn(&Session) -> bool) -> Session {
    let start = Instant::now();
    loop {
        if let Some(s) = store.get(name).await.unwrap()
            && f(&s)
        {
            return s;
        }
        assert!(
            start.elapsed() < T,
            "session {name} never got there: {:?}",
            store.get(name).await.unwrap().and_then(|s| s.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(p: &WarmPool, n: u32) -> bool {
    p.status.as_ref().is_some_and(|s| s.ready == n)
}

fn running(s: &Session) -> bool {
    s.is_ready()
        && s.status
            .as_ref()
            .is_some_and(|st| st.container_id.is_some())
}

fn container_of(s: &Session) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.container_id.clone())
        .expect("a container id")
}

/// The pool's containers (claimed or not) as id → (state, name), via the docker CLI.
fn members(env: &Env, pool: &str) -> HashMap<String, (String, String)> {
    env.docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=orchestrator.mcp.dev/instance={}", env.instance),
        "--filter",
        &format!("label=orchestrator.mcp.dev/pool={pool}"),
        "--format",
        "{{.ID}} {{.State}} {{.Names}}",
    ])
    .lines()
    .filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((
            it.next()?.to_string(),
            (it.next()?.to_string(), it.next()?.to_string()),
        ))
    })
    .collect()
}

fn with_pool(name: &str, env: &Env, pool: &str) -> Session {
    let mut s = Session::new(name, &env.image);
    s.spec.pool = Some(pool.to_string());
    s
}

fn metric(env: &Env, line_prefix: &str) -> f64 {
    let (_, body) = http_get(&format!("{}/metrics", env.api()));
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_claims_a_started_sandbox_and_the_pool_refills() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let store = env.store().await;
    make_pool(&store, &env, "warm", 2).await;
    let filled = wait_pool(&store, "warm", |p| ready(p, 2)).await;
    assert_eq!(filled.status.as_ref().unwrap().claimed, 0);
    let before = members(&env, "warm");
    assert_eq!(before.len(), 2, "{before:?}");
    for (id, (state, name)) in &before {
        assert_eq!(state, "running");
        assert!(name.starts_with("mcp-"), "{name}");
        let inspect: serde_json::Value =
            serde_json::from_str(&env.docker(&["inspect", id])).unwrap();
        let h = &inspect[0]["HostConfig"];
        assert_eq!(h["NetworkMode"], "none", "the same contract as any sandbox");
        assert_eq!(h["ReadonlyRootfs"], true);
        assert_eq!(h["CapDrop"], serde_json::json!(["ALL"]));
    }

    // A compatible session claims one: Running at once, with a member as its container.
    let started = Instant::now();
    store
        .create(&with_pool("chat-1", &env, "warm"))
        .await
        .unwrap();
    let s = wait_session(&store, "chat-1", running).await;
    let claimed_in = started.elapsed();
    let id = container_of(&s);
    assert!(
        before.contains_key(&id),
        "claimed {id}, not one of {before:?}"
    );
    assert_eq!(s.status.as_ref().unwrap().reason, None);
    assert!(
        claimed_in < Duration::from_secs(2),
        "a claim took {claimed_in:?}"
    );
    let events = store.events("chat-1").await.unwrap();
    assert!(events.iter().any(|e| e.reason == "Claimed"), "{events:?}");
    // It takes the session's container name, and the pool makes a new member.
    let want = format!("mcp-{}.chat-1", env.instance);
    wait_until(T, "the claimed sandbox renamed", || {
        members(&env, "warm")
            .get(&id)
            .is_some_and(|(_, name)| name == &want)
    });
    let refilled = wait_pool(&store, "warm", |p| {
        ready(p, 2) && p.status.as_ref().is_some_and(|s| s.claimed == 1)
    })
    .await;
    assert_eq!(refilled.status.unwrap().replicas, 2);
    assert_eq!(members(&env, "warm").len(), 3);
    assert_eq!(metric(&env, "mcpo_pool_claims_total{pool=\"warm\"}"), 1.0);
    assert_eq!(metric(&env, "mcpo_pool_ready{pool=\"warm\"}"), 2.0);

    // Other settings need another container: cold, and the status says which and why.
    let mut other = with_pool("chat-2", &env, "warm");
    other.spec.env.insert("MODE".into(), "strict".into());
    store.create(&other).await.unwrap();
    let s2 = wait_session(&store, "chat-2", running).await;
    let st = s2.status.clone().unwrap();
    assert_eq!(st.reason.as_deref(), Some("PoolMismatch"), "{st:?}");
    assert!(
        st.message.as_deref().unwrap().contains("spec.env"),
        "{st:?}"
    );
    assert!(!members(&env, "warm").contains_key(&container_of(&s2)));
    // A pool that does not exist: cold too.
    store
        .create(&with_pool("chat-3", &env, "nope"))
        .await
        .unwrap();
    let s3 = wait_session(&store, "chat-3", running).await;
    assert_eq!(s3.status.unwrap().reason.as_deref(), Some("PoolNotFound"));
    assert_eq!(
        metric(&env, "mcpo_pool_cold_starts_total{reason=\"PoolMismatch\"}"),
        1.0
    );

    // Deleting the pool removes its unclaimed members only.
    store.pools().delete("warm", None).await.unwrap();
    wait_until(T, "the unclaimed members removed", || {
        members(&env, "warm").keys().collect::<Vec<_>>() == vec![&id]
    });
    let still = store.get("chat-1").await.unwrap().unwrap();
    assert!(running(&still));
    assert_eq!(container_of(&still), id);

    // Deleting the session removes its sandbox and the claim.
    store.delete("chat-1", None).await.unwrap();
    wait_until(T, "the claimed sandbox removed", || {
        members(&env, "warm").is_empty()
    });
    wait_until(T, "the claim released", || store_claims(&env).is_empty());
}

/// The claims hash as the orchestrator keeps it in Redis.
fn store_claims(env: &Env) -> Vec<String> {
    env.redis_cli(&["HKEYS", &format!("mcpo:{}:claims", env.instance)])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_never_share_a_sandbox() {
    let env = Env::new();
    let store = env.store().await;
    // The store's claim itself, from many clients at once on the same candidates.
    let candidates: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = env.store().await;
        let candidates = candidates.clone();
        tasks.push(tokio::spawn(async move {
            let claim = Claim {
                session: format!("s{i}"),
                uid: format!("u{i}"),
                pool: "p".into(),
            };
            store.claim(&candidates, &claim).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            won.push(id);
        }
    }
    won.sort();
    assert_eq!(won, candidates, "each candidate claimed exactly once");
    let claims = store.claims().await.unwrap();
    assert_eq!(claims.len(), 5);
    for id in &candidates {
        env.redis_cli(&["HDEL", &format!("mcpo:{}:claims", env.instance), id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_sessions_from_several_clients_gets_distinct_sandboxes() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let store = env.store().await;
    make_pool(&store, &env, "burst", 4).await;
    wait_pool(&store, "burst", |p| ready(p, 4)).await;
    let warm: HashSet<String> = members(&env, "burst").into_keys().collect();
    // 10 sessions at once from 10 connections: 4 can be warm, the rest start cold.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = env.store().await;
        let s = with_pool(&format!("b{i}"), &env, "burst");
        tasks.push(tokio::spawn(async move { store.create(&s).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids = HashSet::new();
    let mut warm_claims = 0;
    for i in 0..10 {
        let s = wait_session(&store, &format!("b{i}"), running).await;
        let id = container_of(&s);
        assert!(ids.insert(id.clone()), "{id} serves two sessions");
        let reason = s.status.as_ref().unwrap().reason.clone();
        if warm.contains(&id) {
            warm_claims += 1;
            assert_eq!(reason, None);
        } else {
            assert!(
                matches!(reason.as_deref(), Some("PoolEmpty") | None),
                "{reason:?}"
            );
        }
    }
    assert!(
        warm_claims >= 4,
        "only {warm_claims} of 4 warm sandboxes were claimed"
    );
    // Every claim names one session, and no container is claimed twice.
    let claims = store.claims().await.unwrap();
    let sessions: HashSet<&str> = claims.values().map(|c| c.session.as_str()).collect();
    assert_eq!(sessions.len(), claims.len());
    wait_pool(&store, "burst", |p| ready(p, 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_before_a_claim_is_replaced_and_after_it_is_the_sessions() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let store = env.store().await;
    make_pool(&store, &env, "kp", 2).await;
    wait_pool(&store, "kp", |p| ready(p, 2)).await;
    let first: Vec<String> = members(&env, "kp").into_keys().collect();

    // Before a claim: the pool replaces it.
    env.docker(&["kill", &first[0]]);
    wait_until(T, "the killed member replaced", || {
        let m = members(&env, "kp");
        !m.contains_key(&first[0]) && m.len() == 2 && m.values().all(|(s, _)| s == "running")
    });
    wait_pool(&store, "kp", |p| ready(p, 2)).await;

    // After a claim: it is the session's; the session restarts it, the pool never offers it.
    store.create(&with_pool("owner", &env, "kp")).await.unwrap();
    let s = wait_session(&store, "owner", running).await;
    let id = container_of(&s);
    wait_pool(&store, "kp", |p| {
        ready(p, 2) && p.status.as_ref().is_some_and(|s| s.claimed == 1)
    })
    .await;
    env.docker(&["kill", &id]);
    let back = wait_session(&store, "owner", |s| {
        running(s) && s.status.as_ref().is_some_and(|st| st.restart_count >= 1)
    })
    .await;
    assert_eq!(container_of(&back), id, "the same sandbox, restarted");
    wait_until(T, "the claimed sandbox running again", || {
        members(&env, "kp")
            .get(&id)
            .is_some_and(|(state, _)| state == "running")
    });
    // A second session gets another sandbox.
    store
        .create(&with_pool("second", &env, "kp"))
        .await
        .unwrap();
    let s2 = wait_session(&store, "second", running).await;
    assert_ne!(container_of(&s2), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_between_the_claim_and_the_status_write_keeps_the_binding() {
    let mut env = Env::new();
    env.start_orchestrator(&[]);
    let store = env.store().await;
    make_pool(&store, &env, "rp", 2).await;
    wait_pool(&store, "rp", |p| ready(p, 2)).await;
    env.stop_orchestrator();

    // What a leader that died right after its claim leaves: the session without a status,
    // the claim in the store, the member under its pool name.
    let member = members(&env, "rp").into_keys().next().unwrap();
    let s = store.create(&with_pool("late", &env, "rp")).await.unwrap();
    let won = store
        .claim(
            std::slice::from_ref(&member),
            &Claim {
                session: "late".into(),
                uid: s.metadata.uid.clone().unwrap(),
                pool: "rp".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(won.as_deref(), Some(member.as_str()));

    env.start_orchestrator(&[]);
    let s = wait_session(&store, "late", running).await;
    assert_eq!(
        container_of(&s),
        member,
        "the claimed member, not a new sandbox"
    );
    let want = format!("mcp-{}.late", env.instance);
    wait_until(T, "renamed after the restart", || {
        members(&env, "rp")
            .get(&member)
            .is_some_and(|(_, name)| name == &want)
    });
    let p = wait_pool(&store, "rp", |p| {
        ready(p, 2) && p.status.as_ref().is_some_and(|s| s.claimed == 1)
    })
    .await;
    assert_eq!(p.status.unwrap().claimed, 1);
    assert_eq!(members(&env, "rp").len(), 3);
    // The only containers of the session's: the member.
    assert!(
        env.containers("late").is_empty(),
        "no cold sandbox was made"
    );
}
