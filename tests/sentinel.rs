//! Redis Sentinel and `WAIT`, against the real thing: Debian's redis-server as a primary and
//! a replica (`--replicaof`) and three sentinels (`redis-server <conf> --sentinel`), each on a
//! free loopback port with its own directory, all killed on drop. Missing binaries fail the
//! tests; nothing is skipped.
//!
//! - `a_forced_failover…` / `a_killed_primary…`: a running orchestrator (through the
//!   sentinels) loses its primary to `SENTINEL FAILOVER` or a SIGKILL; right after the fault a
//!   sandbox is killed and a new session applied with the CLI (also through the sentinels).
//!   Both must run within 10 s of the fault (printed), nothing may be duplicated, and the
//!   untouched sessions keep their containers and restart counts.
//! - `the_store_follows…`: the library alone: writes go to the new primary only (none lands
//!   on the old one, which still answers as a master for seconds), and a watch goes on from
//!   its position on the new primary.
//! - `a_failover_that_loses…`: a write the watch saw never reached the replica that is
//!   promoted: the watch reports a rollback of the same store.
//! - `tls_and_passwords…`: TLS (a test CA) and passwords to Redis and to a sentinel.
//! - `writes_wait_for_replicas…`: `--redis-wait-replicas` with one replica: one replica
//!   acknowledges; two cannot, and the write fails with `NotReplicated` within the timeout;
//!   a waiting write does not stall the other commands.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mcp_orchestrator::redis_conn::RedisTarget;
use mcp_orchestrator::store::{Store, StoreError};

const MASTER: &str = "orchestrator";

/// `redis-cli -p PORT ARGS`, trimmed stdout (empty when it could not connect).
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Does a replica acknowledge a write to `port` within 100 ms?
fn acknowledged(port: u16) -> bool {
    let mut c = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
    if let Some(mut stdin) = c.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"SET sentinel-test-sync 1\nWAIT 1 100\n");
    }
    let out = c.wait_with_output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).lines().last() == Some("1")
}

fn spawn_server(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (apt-get install redis-server)")
        })
}

/// One redis-server (data node or sentinel), killed on drop.
struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, a replica and (optionally) three sentinels monitoring them as [`MASTER`].
struct Topology {
    primary: Option<Proc>,
    replica: Proc,
    sentinels: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Topology {
    fn start(with_sentinels: bool) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let primary = data_node(dir.path(), None);
        let replica = data_node(dir.path(), Some(primary.port));
        // In sync, and acknowledging writes: right after a sync the first WAIT can take
        // about a second (the replica's periodic ack), which would skew the WAIT figures.
        wait_until(Duration::from_secs(10), "the replica to sync", || {
            cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
                && acknowledged(primary.port)
        });
        let mut t = Topology {
            primary: Some(primary),
            replica,
            sentinels: Vec::new(),
            dir,
        };
        if with_sentinels {
            let primary_port = t.primary_port();
            for _ in 0..3 {
                let s = sentinel(t.dir.path(), primary_port);
                t.sentinels.push(s);
            }
            // The failover needs the replica known to the sentinels, and a quorum needs them
            // to know each other (hello messages every 2 s).
            wait_until(
                Duration::from_secs(20),
                "the sentinels to know the replica and each other",
                || {
                    t.sentinels.iter().all(|s| {
                        let m = sentinel_master(s.port);
                        m.get("num-slaves").map(String::as_str) == Some("1")
                            && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                    })
                },
            );
        }
        t
    }

    fn primary_port(&self) -> u16 {
        self.primary.as_ref().expect("primary running").port
    }

    /// `host:port,...` of the sentinels, for REDIS_SENTINELS.
    fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port once every sentinel names the same one (a sentinel that did not
    /// run the failover hears of it within about 2 s); `None` if they still disagree after
    /// 10 s.
    fn master_port(&self) -> Option<u16> {
        let named = |port: u16| -> Option<u16> {
            let out = cli(port, &["SENTINEL", "get-master-addr-by-name", MASTER]);
            out.lines().nth(1).and_then(|p| p.trim().parse().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all: Vec<Option<u16>> = self.sentinels.iter().map(|s| named(s.port)).collect();
            if all.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
                return all[0];
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_primary(&mut self) {
        // Proc's drop is SIGKILL.
        drop(self.primary.take());
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in &self.sentinels {
                let log = self.dir.path().join(format!("sentinel-{}.log", s.port));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!("--- sentinel {} ---\n{text}", s.port);
            }
        }
    }
}

fn data_node(dir: &Path, replica_of: Option<u16>) -> Proc {
    let port = free_port();
    let data = dir.join(format!("node-{port}"));
    std::fs::create_dir_all(&data).unwrap();
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        // Replicas sync at once (the default waits 5 s for more replicas).
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
    }
    let p = Proc {
        child: spawn_server(&args),
        port,
    };
    wait_until(
        Duration::from_secs(5),
        "redis-server to accept connections",
        || cli(port, &["PING"]) == "PONG",
    );
    p
}

fn sentinel(dir: &Path, primary: u16) -> Proc {
    let port = free_port();
    let data = dir.join(format!("sentinel-{port}"));
    std::fs::create_dir_all(&data).unwrap();
    let conf = data.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 5000\n",
            dir = data.display(),
            log = dir.join(format!("sentinel-{port}.log")).display(),
        ),
    )
    .unwrap();
    let p = Proc {
        child: spawn_server(&[conf.to_str().unwrap().to_string(), "--sentinel".into()]),
        port,
    };
    wait_until(Duration::from_secs(5), "a sentinel to answer", || {
        cli(port, &["PING"]) == "PONG"
    });
    p
}

/// `SENTINEL MASTER` as a map.
fn sentinel_master(port: u16) -> HashMap<String, String> {
    let out = cli(port, &["SENTINEL", "MASTER", MASTER]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

enum Fault {
    /// `SENTINEL FAILOVER`: the old primary keeps running (and answering as a master for
    /// seconds) until Sentinel demotes it.
    Forced,
    /// SIGKILL of the primary: Sentinel notices after down-after-milliseconds (1 s).
    Kill,
}

fn container_state(env: &Env, session: &str) -> Vec<(String, String)> {
    env.containers(session)
}

fn one_running(env: &Env, session: &str) -> Option<String> {
    let c = container_state(env, session);
    (c.len() == 1 && c[0].1 == "running").then(|| c[0].0.clone())
}

fn failover_under_the_orchestrator(case: &str, fault: Fault) {
    let mut topo = Topology::start(true);
    let mut env = Env::new();
    // Applied after REDIS_URL: they win (REDIS_URL points at Env's own Redis, unused here).
    env.extra_env
        .push(("REDIS_SENTINELS".into(), topo.sentinel_list()));
    env.extra_env
        .push(("REDIS_SENTINEL_MASTER".into(), MASTER.into()));
    // No periodic resync: recovery must come from the events and the relist.
    env.start_orchestrator(&["--resync-interval", "1h"]);
    let names = ["a", "b", "c"];
    for n in names {
        env.apply_yaml(&session_yaml(n, &env.image, ""));
    }
    let mut before = HashMap::new();
    for n in names {
        let id = env.wait_running(n, Duration::from_secs(30));
        let st = env.wait_status(n, Duration::from_secs(30), |s| s["phase"] == "Running");
        before.insert(n, (id, st["status"]["restartCount"].clone()));
    }
    let old_primary = topo.primary_port();

    let t0 = Instant::now();
    match fault {
        Fault::Forced => {
            let ok = cli(topo.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]);
            assert_eq!(ok, "OK", "SENTINEL FAILOVER refused");
        }
        Fault::Kill => topo.kill_primary(),
    }
    let killed = before["a"].0.clone();
    env.docker(&["kill", &killed]);
    let deadline = t0 + Duration::from_secs(10);
    let yaml = session_yaml("d", &env.image, "");
    // The CLI through the sentinels (in its own thread, so the watch below measures the
    // sandboxes, not the CLI): refused while no primary can take the write, then accepted by
    // the new one.
    let (applied, refusals, a_back, d_up) = std::thread::scope(|scope| {
        let apply = scope.spawn(|| {
            let mut refusals = 0;
            loop {
                let out = env.cli(&["apply", "-f", "-"], Some(&yaml));
                if out.status.success() {
                    return (t0.elapsed(), refusals);
                }
                refusals += 1;
                assert!(
                    Instant::now() < deadline,
                    "the CLI could not apply through the sentinels within 10 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (mut a_back, mut d_up) = (None, None);
        while a_back.is_none() || d_up.is_none() {
            if a_back.is_none() && one_running(&env, "a").is_some() {
                a_back = Some(t0.elapsed());
            }
            if d_up.is_none() && one_running(&env, "d").is_some() {
                d_up = Some(t0.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "not reconciling 10 s after the fault: a = {:?}, d = {:?}",
                container_state(&env, "a"),
                container_state(&env, "d")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (applied, refusals) = apply.join().expect("the apply thread");
        (applied, refusals, a_back, d_up)
    });
    let recovered = a_back.max(d_up).unwrap_or_default();
    let new_primary = topo.master_port();
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
    eprintln!(
        "sentinel failover ({case}): reconciling again after {} ms (killed sandbox running \
         again after {} ms, the new session's sandbox after {} ms); the CLI's apply was \
         accepted after {} ms ({refusals} refused while no primary could take it); primary \
         {old_primary} → {:?}",
        recovered.as_millis(),
        ms(a_back),
        ms(d_up),
        applied.as_millis(),
        new_primary,
    );
    assert_eq!(
        new_primary,
        Some(topo.replica.port),
        "the sentinels promoted the replica"
    );

    // Every session converges on exactly one container and status Running, read through the
    // sentinels by the CLI.
    let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_converged(&env, &all);
    for n in ["b", "c"] {
        let (id, restarts) = &before[n];
        assert_eq!(
            one_running(&env, n).as_ref(),
            Some(id),
            "{n} was not touched: same container"
        );
        let st = env.get_json(n).expect("readable through the sentinels");
        assert_eq!(
            &st["status"]["restartCount"], restarts,
            "{n} was not touched: same restart count"
        );
    }
    // The new session is on the new primary.
    let key = format!("mcpo:{}:objects", env.instance);
    assert_eq!(cli(topo.replica.port, &["HEXISTS", &key, "d"]), "1");
    let log = env.log_text();
    assert!(
        log.contains("the Redis primary changed"),
        "the orchestrator followed the failover: {log}"
    );
    let leadership: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("became the leader") || l.contains("stepping down"))
        .collect();
    for l in &leadership {
        eprintln!("sentinel failover ({case}): leadership: {l}");
    }
    let hold = cli(
        topo.replica.port,
        &["GET", &format!("mcpo:{}:orphan-hold", env.instance)],
    );
    eprintln!(
        "sentinel failover ({case}): orphan hold after the failover: {}",
        if hold.is_empty() { "none" } else { &hold }
    );
    env.kill_orchestrator();
}

#[test]
fn a_forced_failover_under_the_orchestrator() {
    failover_under_the_orchestrator("SENTINEL FAILOVER", Fault::Forced);
}

#[test]
fn a_killed_primary_under_the_orchestrator() {
    failover_under_the_orchestrator("SIGKILL of the primary", Fault::Kill);
}

fn session(name: &str) -> mcp_orchestrator::domain::resource::Session {
    let yaml = session_yaml(name, "mcp-server:latest", "");
    match mcp_orchestrator::domain::parse::parse_str("test", &yaml)
        .expect("a session")
        .remove(0)
        .resource
    {
        mcp_orchestrator::domain::parse::Resource::Session(s) => *s,
        other => panic!("not a session: {other:?}"),
    }
}

#[tokio::test]
async fn the_store_follows_a_forced_failover_and_never_writes_to_the_old_primary() {
    let topo = Topology::start(true);
    let target = RedisTarget::sentinel(&topo.sentinel_list(), MASTER).unwrap();
    let store = Store::connect(target, "follow").await.unwrap();
    store.create(&session("before")).await.unwrap();
    let mut watch = store.watch(store.revision().await.unwrap()).await.unwrap();
    let old = topo.primary_port();

    let t0 = Instant::now();
    assert_eq!(
        cli(topo.sentinels[1].port, &["SENTINEL", "FAILOVER", MASTER]),
        "OK"
    );
    // Keep writing: each write either fails (no primary to take it) or lands on the new
    // primary; none may land on the old one, which still says it is a master.
    let mut n = 0;
    let mut refused = 0;
    let mut resumed = None;
    while t0.elapsed() < Duration::from_secs(10) && n < 20 {
        match store.create(&session(&format!("s{n}"))).await {
            Ok(_) => {
                if refused > 0 {
                    resumed.get_or_insert(t0.elapsed());
                }
                n += 1;
            }
            Err(StoreError::Redis(_)) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 20, "writes resumed on the new primary within 10 s");
    let key = "mcpo:follow:objects";
    let on_new = cli(topo.replica.port, &["HLEN", key]);
    assert_eq!(
        on_new, "21",
        "every acknowledged write is on the new primary"
    );
    // The old primary is a master until Sentinel demotes it (about 10 s): nothing may be on
    // it that the new one does not have (a write that went there after the promotion).
    let role = cli(old, &["ROLE"]);
    let on_new_keys: Vec<String> = cli(topo.replica.port, &["HKEYS", key])
        .lines()
        .map(str::to_string)
        .collect();
    for k in cli(old, &["HKEYS", key]).lines() {
        assert!(
            on_new_keys.iter().any(|n| n == k),
            "{k} was written to the old primary after the promotion (lost)"
        );
    }
    eprintln!(
        "sentinel failover (store): writes refused {refused} times during the failover, \
         accepted by the new primary {} ms after SENTINEL FAILOVER; the old primary still \
         says {:?}",
        resumed.map_or(0, |d| d.as_millis()),
        role.lines().next().unwrap_or_default()
    );
    // The watch (a dedicated connection, to the old primary at first) goes on from its
    // position on the new primary: every write, in order, no error.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 20 {
        for ev in watch.next_batch(Duration::from_millis(200)).await.unwrap() {
            seen.push(ev.name);
        }
        assert!(Instant::now() < deadline, "the watch saw only {seen:?}");
    }
    let want: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_eq!(seen, want);
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill {sig} failed");
}

/// Asynchronous replication loses a write the watch saw: the promoted replica is behind the
/// watch's position, which the watch reports as a rollback of the same store (the controller
/// then holds orphans).
#[tokio::test]
async fn a_failover_that_loses_a_seen_write_is_a_rollback_for_the_watch() {
    let mut topo = Topology::start(true);
    let target = RedisTarget::sentinel(&topo.sentinel_list(), MASTER).unwrap();
    let store = Store::connect(target, "rollback").await.unwrap();
    store.create(&session("kept")).await.unwrap();
    let mut watch = store.watch(store.revision().await.unwrap()).await.unwrap();
    // Cut replication, then write: the write is acknowledged by the primary only.
    signal(&topo.replica, "-STOP");
    cli(topo.primary_port(), &["CLIENT", "KILL", "TYPE", "replica"]);
    store.create(&session("lost")).await.unwrap();
    let batch = watch.next_batch(Duration::from_secs(2)).await.unwrap();
    assert_eq!(batch.len(), 1, "the watch saw the write");
    let seen = watch.revision();
    topo.kill_primary();
    signal(&topo.replica, "-CONT");
    let t0 = Instant::now();
    let err = loop {
        match watch.next_batch(Duration::from_millis(500)).await {
            Ok(b) => assert!(b.is_empty(), "nothing new: {b:?}"),
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the failover did not end the watch"
        );
    };
    match err {
        StoreError::Reset {
            old,
            new,
            seen: s,
            now,
        } => {
            assert_eq!(old, new, "the same store");
            assert_eq!(s, seen);
            assert_eq!(now, seen - 1, "the lost write");
        }
        other => panic!("expected a rollback, got {other}"),
    }
    eprintln!(
        "sentinel failover (lost write): the watch reported the rollback {} ms after the \
         primary was killed",
        t0.elapsed().as_millis()
    );
    assert!(store.get("lost").await.unwrap().is_none());
    assert!(store.get("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn writes_wait_for_replicas_and_fail_when_too_few_acknowledge() {
    let topo = Topology::start(false);
    let url = format!("redis://127.0.0.1:{}", topo.primary_port());
    let one = RedisTarget::url(url.as_str())
        .with_wait(1, Duration::from_secs(2))
        .unwrap();
    let store = Store::connect(one, "wait").await.unwrap();
    let t = Instant::now();
    for i in 0..50 {
        store.create(&session(&format!("ok{i}"))).await.unwrap();
    }
    let waited = t.elapsed();
    assert_eq!(cli(topo.replica.port, &["HLEN", "mcpo:wait:objects"]), "50");
    // The same without WAIT, for the cost.
    let plain = Store::connect(url.as_str(), "nowait").await.unwrap();
    let t = Instant::now();
    for i in 0..50 {
        plain.create(&session(&format!("ok{i}"))).await.unwrap();
    }
    eprintln!(
        "WAIT 1: 50 creates in {} ms, acknowledged by the replica (without WAIT: {} ms)",
        waited.as_millis(),
        t.elapsed().as_millis()
    );

    let timeout = Duration::from_millis(400);
    let two = RedisTarget::url(url.as_str())
        .with_wait(2, timeout)
        .unwrap();
    let store = Store::connect(two, "wait").await.unwrap();
    let t = Instant::now();
    // While the write waits, other commands on the store's connection go on.
    let lonely = session("lonely");
    let (write, others) = tokio::join!(store.create(&lonely), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        for _ in 0..5 {
            store.ping().await.unwrap();
        }
        t.elapsed()
    });
    let took = t.elapsed();
    match write {
        Err(StoreError::NotReplicated {
            wanted: 2,
            acknowledged: 1,
            ..
        }) => {}
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "failed after the timeout: {took:?}"
    );
    assert!(
        others < Duration::from_millis(200),
        "a waiting write stalled other commands for {others:?}"
    );
    // It was applied (and replicated to the one replica there is): the message says it may be.
    assert!(store.get("lonely").await.unwrap().is_some());
    let msg = StoreError::NotReplicated {
        wanted: 2,
        acknowledged: 1,
        timeout,
    }
    .to_string();
    assert!(msg.contains("may still have been applied"), "{msg}");
    eprintln!(
        "WAIT 2 with one replica: failed after {} ms (timeout {} ms); 5 pings meanwhile took {} ms",
        took.as_millis(),
        timeout.as_millis(),
        others.as_millis()
    );
    // The lease's acquire waits too.
    let lease = mcp_orchestrator::lease::Lease::new(&store, "holder");
    match lease.try_acquire(Duration::from_secs(5)).await {
        Err(mcp_orchestrator::lease::LeaseError::NotReplicated(_)) => {}
        other => panic!("expected NotReplicated, got {other:?}"),
    }
}

/// `openssl ARGS` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key).
fn certificates(dir: &Path) -> (String, String, String) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

#[tokio::test]
async fn tls_and_passwords_to_redis_and_to_the_sentinels() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let tls = |port: u16| -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let tls_cli = |port: u16, password: &str, args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &ca,
                "-p",
                &port.to_string(),
                "-a",
                password,
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let port = free_port();
    let mut args = tls(port);
    args.extend(["--save", "", "--requirepass", "node-secret", "--dir"].map(String::from));
    args.push(dir.path().to_str().unwrap().to_string());
    let _primary = Proc {
        child: spawn_server(&args),
        port,
    };
    wait_until(Duration::from_secs(5), "a TLS redis-server", || {
        tls_cli(port, "node-secret", &["PING"]) == "PONG"
    });
    let sport = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {sport}\nbind 127.0.0.1\ndir {d}\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients no\ntls-replication yes\nrequirepass sentinel-secret\n\
             sentinel monitor {MASTER} 127.0.0.1 {port} 1\n\
             sentinel auth-pass {MASTER} node-secret\n",
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let _sentinel = Proc {
        child: spawn_server(&[conf.to_str().unwrap().to_string(), "--sentinel".into()]),
        port: sport,
    };
    wait_until(
        Duration::from_secs(10),
        "the TLS sentinel to see its master",
        || {
            let out = tls_cli(sport, "sentinel-secret", &["SENTINEL", "MASTER", MASTER]);
            out.lines()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "flags" && w[1] == "master")
        },
    );
    let pem = std::fs::read(&ca).unwrap();

    // Sentinel mode: TLS and a password to the sentinel and to the node.
    let target = RedisTarget::sentinel(&format!("127.0.0.1:{sport}"), MASTER)
        .unwrap()
        .with_passwords(
            Some("node-secret".parse().unwrap()),
            Some("sentinel-secret".parse().unwrap()),
        )
        .unwrap()
        .with_tls(true, Some(pem.clone()))
        .unwrap();
    let shown = format!("{target} {target:?}");
    assert!(!shown.contains("secret"), "{shown}");
    let store = Store::connect(target, "tls").await.unwrap();
    store.create(&session("over-tls")).await.unwrap();
    assert!(store.get("over-tls").await.unwrap().is_some());
    // Without the CA the certificate is refused.
    let untrusted = RedisTarget::sentinel(&format!("127.0.0.1:{sport}"), MASTER)
        .unwrap()
        .with_passwords(
            Some("node-secret".parse().unwrap()),
            Some("sentinel-secret".parse().unwrap()),
        )
        .unwrap()
        .with_tls(true, None)
        .unwrap();
    assert!(Store::connect(untrusted, "tls").await.is_err());

    // One Redis at a rediss:// URL, the password and the CA from flags; and the CLI with the
    // same settings from its environment, through the sentinel.
    let url = format!("rediss://127.0.0.1:{port}");
    let target = RedisTarget::url(url.as_str())
        .with_passwords(Some("node-secret".parse().unwrap()), None)
        .unwrap()
        .with_tls(false, Some(pem))
        .unwrap();
    let store = Store::connect(target, "tls").await.unwrap();
    assert!(store.get("over-tls").await.unwrap().is_some());
    let run = |envs: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(["get", "-o", "name"])
            .env("ORCHESTRATOR_INSTANCE", "tls")
            .env_remove("ORCHESTRATOR_URL")
            .env_remove("REDIS_URL");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().expect("the CLI runs")
    };
    let sentinels = format!("127.0.0.1:{sport}");
    let out = run(&[
        ("REDIS_SENTINELS", &sentinels),
        ("REDIS_SENTINEL_MASTER", MASTER),
        ("REDIS_PASSWORD", "node-secret"),
        ("REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ("REDIS_TLS", "true"),
        ("REDIS_TLS_CA", &ca),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "session/over-tls"
    );
    let out = run(&[
        ("REDIS_URL", &url),
        ("REDIS_PASSWORD", "node-secret"),
        ("REDIS_TLS_CA", &ca),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A failure (a wrong password) names the target, never the password.
    let out = run(&[
        (
            "REDIS_URL",
            &format!("rediss://:url-secret@127.0.0.1:{port}"),
        ),
        ("REDIS_TLS_CA", &ca),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rediss://***@127.0.0.1") && !err.contains("url-secret"),
        "{err}"
    );
}
