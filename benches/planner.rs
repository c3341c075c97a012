//! The pure core at scale, with criterion: no Docker, no Redis. `cargo bench --bench planner`
//! (BENCHMARKS.md, "Planner and queue at 10 000 and 100 000 sessions"). Not a test: `cargo
//! test --all-targets` builds and runs it, and it returns at once unless cargo bench passed
//! `--bench`.
//!
//! - `resync_pass/N`: what the controller's periodic resync does in memory after its one bulk
//!   list — [`resync::plan_all`], the very function the controller calls: group N sessions'
//!   containers by session, `plan::plan` every name, decide now / timer / nothing.
//! - `queue/N`: the work queue with N keys: add every key, then pop and finish them all.
//! - `queue_timers/N`: arm the timers of a pass (half the sessions have a ttl) twice, the
//!   second time coalescing with the first, then promote them all when due.
//! - `cache_clone/N`: the copy of the session cache the controller takes before each pass
//!   (outside `plan_all`, measured for scale).
//!
//! The synthetic sessions are realistic: every one converged (status written, its container
//! running), half with `ttlSeconds` (so the pass arms their timers), and a few percent need
//! work: 2 % drifted (an old spec hash), 1 % exited, 1 % without a container, plus orphans
//! (0.5 % of N) whose session is gone.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use mcp_orchestrator::domain::plan::{self, ContainerState, CrashState, Input, Observed, Settings};
use mcp_orchestrator::domain::queue::{Outcome, WorkQueue};
use mcp_orchestrator::domain::resource::Session;
use mcp_orchestrator::domain::resync::{self, View};
use tokio::time::Instant;

const STORE: &str = "bench-store";
const SIZES: &[usize] = &[10_000, 100_000];

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

/// N sessions and the containers a bulk list would return for them.
struct World {
    sessions: HashMap<String, Session>,
    containers: Vec<Observed>,
    settings: Settings,
}

impl World {
    fn new(n: usize) -> World {
        let settings = Settings::default();
        let template = Session::new("s0", "mcp-server:latest");
        let hash = settings
            .policy
            .session_sandbox(&template)
            .map(|s| s.spec_hash())
            .unwrap_or_default();
        let container = |name: &str, uid: &str, state| Observed {
            id: format!("{name}-{:0>56}", 0),
            name: format!("mcp-{name}"),
            pool: None,
            session: name.to_string(),
            state,
            spec_hash: Some(hash.clone()),
            generation: Some(1),
            uid: Some(uid.to_string()),
            store: Some(STORE.to_string()),
            created: 1_767_268_800,
            exit: None,
        };
        let mut sessions = HashMap::with_capacity(n);
        let mut containers = Vec::with_capacity(n + n / 200);
        for i in 0..n {
            let name = format!("session-{i:06}");
            let uid = format!("uid-{i:06}");
            let mut s = Session::new(&name, "mcp-server:latest");
            s.metadata.uid = Some(uid.clone());
            s.metadata.generation = Some(1);
            s.metadata.resource_version = Some((i + 1).to_string());
            s.metadata.creation_timestamp = Some(now() - chrono::Duration::seconds(600));
            if i % 2 == 0 {
                s.spec.ttl_seconds = Some(3600);
            }
            // The status its last reconcile wrote: Running on its container.
            let running = container(&name, &uid, ContainerState::Running);
            s.status = plan::plan(
                &Input {
                    name: &name,
                    session: Some(&s),
                    containers: std::slice::from_ref(&running),
                    crash: &CrashState::default(),
                    now: now() - chrono::Duration::seconds(590),
                    store: STORE,
                    pool: None,
                },
                &settings,
            )
            .status;
            match i % 100 {
                // Drifted: built from an older spec.
                0 | 1 => containers.push(Observed {
                    spec_hash: Some("0123456789abcdef".into()),
                    ..running
                }),
                // Exited (a bulk list has no exit details: the pass plans a start).
                2 => containers.push(Observed {
                    state: ContainerState::Exited,
                    ..running
                }),
                // Missing: removed behind the orchestrator's back.
                3 => {}
                _ => containers.push(running),
            }
            sessions.insert(name, s);
        }
        for i in 0..n / 200 {
            containers.push(container(
                &format!("gone-{i:06}"),
                "uid-gone",
                ContainerState::Running,
            ));
        }
        World {
            sessions,
            containers,
            settings,
        }
    }

    fn pass(&self, containers: Vec<Observed>, crash: &HashMap<String, CrashState>) -> resync::Pass {
        let unreadable = HashMap::new();
        resync::plan_all(
            containers,
            &View {
                sessions: &self.sessions,
                unreadable: &unreadable,
                crash,
                store: STORE,
                held: false,
                now: now(),
                claims: &HashMap::new(),
                pools: &HashMap::new(),
                ready: &HashMap::new(),
            },
            &self.settings,
        )
    }
}

fn benches(c: &mut Criterion) {
    for &n in SIZES {
        let world = World::new(n);
        let crash = HashMap::new();
        let pass = world.pass(world.containers.clone(), &crash);
        println!(
            "{n} sessions, {} containers: {} planned, {} to reconcile now, {} timers, {} foreign",
            world.containers.len(),
            pass.planned,
            pass.now.len(),
            pass.timers.len(),
            pass.foreign.len()
        );
        let keys: Vec<String> = world.sessions.keys().cloned().collect();

        let mut g = c.benchmark_group("resync_pass");
        g.throughput(Throughput::Elements(n as u64));
        // A pass takes about half a second per 10 000 sessions here: few, long samples.
        if n >= 100_000 {
            g.sample_size(10).measurement_time(Duration::from_secs(60));
        } else {
            g.sample_size(20).measurement_time(Duration::from_secs(15));
        }
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || world.containers.clone(),
                |containers| black_box(world.pass(containers, &crash)),
                BatchSize::LargeInput,
            )
        });
        g.finish();

        // Not in the pass: the controller copies its session cache before each pass (so the
        // lock is not held while planning); measured on its own for scale.
        let mut g = c.benchmark_group("cache_clone");
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(world.sessions.clone()))
        });
        g.finish();

        let mut g = c.benchmark_group("queue");
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(20);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let mut q = WorkQueue::new(Duration::from_millis(200), Duration::from_secs(30));
                for k in &keys {
                    q.add(k);
                }
                let t = Instant::now();
                while let Some(k) = q.pop() {
                    q.done(&k, Outcome::Done(None), t);
                }
                black_box(q.delayed_len())
            })
        });
        g.finish();

        let mut g = c.benchmark_group("queue_timers");
        g.throughput(Throughput::Elements(pass.timers.len() as u64));
        g.sample_size(20);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let mut q = WorkQueue::new(Duration::from_millis(200), Duration::from_secs(30));
                let t = Instant::now();
                for round in 0..2u32 {
                    let at = t + Duration::from_secs(u64::from(round));
                    for (k, after) in &pass.timers {
                        q.add_at(k, at + *after);
                    }
                }
                q.promote(t + Duration::from_secs(7200));
                let mut ran = 0usize;
                while let Some(k) = q.pop() {
                    q.done(&k, Outcome::Done(None), t);
                    ran += 1;
                }
                black_box(ran)
            })
        });
        g.finish();
    }
}

fn main() {
    // `cargo test --all-targets` builds and runs this target; only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the benchmark runs under `cargo bench --bench planner`");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
