//! One resync pass, in memory: every managed container from one bulk list, planned against
//! every session, decided into "reconcile now", "look again at a time" or nothing.
//!
//! [`plan_all`] is the pure part of the controller's periodic resync (the controller adds
//! the one Docker list before it and the queue after it), so that it can be tested and
//! benchmarked without Docker. A session whose plan only waits — no actions, no status to
//! write, but a `requeue_after` (a ttl, a crash-loop wait) — is *not* reconciled now: a
//! reconcile would list and inspect its containers only to find the same plan. It gets a
//! timer instead ([`Pass::timers`]), armed by the scheduler from memory.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::plan::{self, CrashState, Input, Observed, Ownership, Plan, PoolView, Settings};
use crate::domain::pool::{Claim, POOL_KEY, PoolInput, REMOVING, WarmPool, plan_pool};
use crate::domain::resource::Session;

/// The controller's memory a pass plans against (all borrowed; nothing is changed).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The desired sessions by name (the controller's cache of the store).
    pub sessions: &'a HashMap<String, Session>,
    /// Stored names whose objects cannot be decoded (name → why): never planned, their
    /// containers never touched.
    pub unreadable: &'a HashMap<String, String>,
    /// Crash-loop memory by session name.
    pub crash: &'a HashMap<String, CrashState>,
    /// The identity of this store (decides which containers are ours).
    pub store: &'a str,
    /// Orphans are held after a store rollback: this store's containers without a session
    /// are left alone (reported with the foreign ones) instead of being removed.
    pub held: bool,
    /// The current time.
    pub now: DateTime<Utc>,
    /// Warm-pool claims by container id: a claimed member is its session's.
    pub claims: &'a HashMap<String, Claim>,
    /// The warm pools by name.
    pub pools: &'a HashMap<String, WarmPool>,
    /// Each pool's claimable members.
    pub ready: &'a HashMap<String, Vec<String>>,
}

/// What one pass decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    /// Keys to reconcile now: sessions whose plan has actions or a status to write, and
    /// pools (`warmpool/<name>`) to fill, prune or report.
    pub now: Vec<String>,
    /// Sessions whose plan only waits: look again after this long (ttl expiry, crash-loop
    /// wait), without touching Docker before then.
    pub timers: Vec<(String, Duration)>,
    /// Containers left alone: another store's, and — while orphans are held — this store's
    /// containers without a session.
    pub foreign: Vec<Observed>,
    /// Names planned (sessions and container labels, less the unreadable ones).
    pub planned: usize,
}

/// What the resync does with one session's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Reconcile now: the plan has actions, or a status to write.
    Now,
    /// Nothing to do until then: arm a timer.
    After(Duration),
    /// Nothing to do.
    Idle,
}

/// Decide what a resync does with `plan`, made for a session whose stored status is
/// `current`.
pub fn decide(current: Option<&crate::domain::resource::SessionStatus>, plan: &Plan) -> Decision {
    if !plan.actions.is_empty() || plan::status_changed(current, plan.status.as_ref()) {
        Decision::Now
    } else if let Some(after) = plan.requeue_after {
        Decision::After(after)
    } else {
        Decision::Idle
    }
}

/// One pass over `containers` (every managed container of this instance, from one bulk
/// list, not inspected) and the controller's memory. Pure: same input, same pass (the order
/// of names in [`Pass::now`] and [`Pass::timers`] is unspecified).
pub fn plan_all(containers: Vec<Observed>, view: &View<'_>, settings: &Settings) -> Pass {
    let mut foreign = Vec::new();
    let mut by_session: HashMap<String, Vec<Observed>> = HashMap::new();
    let mut by_pool: HashMap<String, Vec<Observed>> = HashMap::new();
    // Claims whose container the list does not show: their session's reconcile inspects
    // it and releases the claim if the container is gone for good.
    let listed: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    let mut recheck: Vec<String> = view
        .claims
        .iter()
        .filter(|(id, _)| !listed.contains(id.as_str()))
        .map(|(_, c)| c.session.clone())
        .collect();
    recheck.sort();
    recheck.dedup();
    for mut c in containers {
        match (view.claims.get(&c.id), &c.pool) {
            (Some(claim), _) => claim.apply(&mut c),
            // An unclaimed pool member is its pool's, never a session's orphan.
            (None, Some(pool)) => {
                if c.store.as_deref() == Some(view.store) {
                    by_pool.entry(pool.clone()).or_default().push(c);
                } else {
                    foreign.push(c);
                }
                continue;
            }
            (None, None) => {}
        }
        let session = view.sessions.get(&c.session);
        let ours = plan::ownership(&c, view.store, session) == Ownership::Ours;
        if !ours || (view.held && session.is_none()) {
            foreign.push(c);
        } else {
            by_session.entry(c.session.clone()).or_default().push(c);
        }
    }
    let names: HashSet<&String> = view.sessions.keys().chain(by_session.keys()).collect();
    let empty = Vec::new();
    let idle = CrashState::default();
    let mut pass = Pass {
        foreign,
        ..Pass::default()
    };
    for name in names {
        if view.unreadable.contains_key(name) {
            continue;
        }
        pass.planned += 1;
        let session = view.sessions.get(name);
        let pool = session.and_then(|x| x.spec.pool.as_deref());
        let p = plan::plan(
            &Input {
                name,
                session,
                containers: by_session.get(name).unwrap_or(&empty),
                crash: view.crash.get(name).unwrap_or(&idle),
                now: view.now,
                store: view.store,
                pool: pool.map(|p| PoolView {
                    pool: view.pools.get(p),
                    ready: view.ready.get(p).map_or(&[], Vec::as_slice),
                }),
            },
            settings,
        );
        match decide(session.and_then(|s| s.status.as_ref()), &p) {
            Decision::Now => pass.now.push(name.clone()),
            Decision::After(after) => pass.timers.push((name.clone(), after)),
            Decision::Idle => {}
        }
    }
    let pools: HashSet<&String> = view.pools.keys().chain(by_pool.keys()).collect();
    for name in pools {
        let pool = view.pools.get(name);
        let p = plan_pool(
            &PoolInput {
                name,
                pool,
                members: by_pool.get(name).unwrap_or(&empty),
                claimed: view
                    .claims
                    .values()
                    .filter(|c| &c.pool == name && c.session != REMOVING)
                    .count() as u32,
                store: view.store,
                nonce: 0,
            },
            settings,
        );
        if !p.actions.is_empty() || pool.is_some_and(|x| x.status != p.status) {
            pass.now.push(format!("{POOL_KEY}{name}"));
        }
    }
    for name in recheck {
        if !pass.now.contains(&name) {
            pass.now.push(name);
        }
    }
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::ContainerState;
    use crate::domain::resource::Phase;
    use chrono::TimeZone;

    const STORE: &str = "store-1";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn session(name: &str, ttl: Option<u64>) -> Session {
        let mut s = Session::new(name, "mcp-server:latest");
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.generation = Some(1);
        s.metadata.resource_version = Some("7".into());
        s.metadata.creation_timestamp = Some(now() - chrono::Duration::seconds(60));
        s.spec.ttl_seconds = ttl;
        s
    }

    /// The container the planner wants for `s`, in `state`.
    fn container(s: &Session, state: ContainerState, settings: &Settings) -> Observed {
        let hash = settings.policy.session_sandbox(s).unwrap().spec_hash();
        Observed {
            name: String::new(),
            pool: None,
            id: format!("id-{}", s.metadata.name),
            session: s.metadata.name.clone(),
            state,
            spec_hash: Some(hash),
            generation: Some(1),
            uid: s.metadata.uid.clone(),
            store: Some(STORE.into()),
            created: 1,
            exit: None,
        }
    }

    /// `s` with the status a reconcile wrote for its running container.
    fn converged(mut s: Session, settings: &Settings) -> Session {
        let c = container(&s, ContainerState::Running, settings);
        let p = plan::plan(
            &Input {
                name: &s.metadata.name.clone(),
                session: Some(&s),
                containers: &[c],
                crash: &CrashState::default(),
                now: now() - chrono::Duration::seconds(45),
                store: STORE,
                pool: None,
            },
            settings,
        );
        s.status = p.status;
        assert_eq!(s.status.as_ref().map(|x| x.phase), Some(Phase::Running));
        s
    }

    fn run(sessions: &[Session], containers: Vec<Observed>, held: bool) -> Pass {
        let settings = Settings::default();
        let sessions: HashMap<String, Session> = sessions
            .iter()
            .map(|s| (s.metadata.name.clone(), s.clone()))
            .collect();
        let unreadable = HashMap::from([("broken".to_string(), "bad json".to_string())]);
        let mut pass = plan_all(
            containers,
            &View {
                sessions: &sessions,
                unreadable: &unreadable,
                crash: &HashMap::new(),
                store: STORE,
                held,
                now: now(),
                claims: &HashMap::new(),
                pools: &HashMap::new(),
                ready: &HashMap::new(),
            },
            &settings,
        );
        pass.now.sort();
        pass.timers.sort();
        pass
    }

    #[test]
    fn a_session_that_only_waits_gets_a_timer_not_a_reconcile() {
        let settings = Settings::default();
        let steady = converged(session("steady", None), &settings);
        let ttl = converged(session("ttl", Some(3600)), &settings);
        let expired = converged(session("expired", Some(30)), &settings);
        let fresh = session("fresh", Some(3600));
        let containers = vec![
            container(&steady, ContainerState::Running, &settings),
            container(&ttl, ContainerState::Running, &settings),
            container(&expired, ContainerState::Running, &settings),
        ];
        let pass = run(&[steady, ttl, expired, fresh], containers, false);
        // Created 60 s before `now` with a one-hour ttl: 3540 s left.
        assert_eq!(
            pass.timers,
            vec![("ttl".to_string(), Duration::from_secs(3540))]
        );
        // Expired: remove and delete. Fresh: no container yet, create (a ttl does not delay it).
        assert_eq!(pass.now, vec!["expired".to_string(), "fresh".to_string()]);
        assert_eq!(pass.planned, 4);
        assert!(pass.foreign.is_empty());
    }

    #[test]
    fn a_status_to_write_or_drift_is_reconciled_now() {
        let settings = Settings::default();
        // Running container, but the stored status does not say so yet.
        let unwritten = session("unwritten", Some(3600));
        let drifted = converged(session("drifted", Some(3600)), &settings);
        let mut drift = container(&drifted, ContainerState::Running, &settings);
        drift.spec_hash = Some("old".into());
        let exited = converged(session("exited", None), &settings);
        let containers = vec![
            container(&unwritten, ContainerState::Running, &settings),
            drift,
            container(&exited, ContainerState::Exited, &settings),
        ];
        let pass = run(&[unwritten, drifted, exited], containers, false);
        assert_eq!(pass.now, vec!["drifted", "exited", "unwritten"]);
        assert!(pass.timers.is_empty());
    }

    #[test]
    fn orphans_are_removed_unless_held_and_foreign_and_unreadable_are_left_alone() {
        let settings = Settings::default();
        let gone = session("gone", None);
        let orphan = container(&gone, ContainerState::Running, &settings);
        let mut other = container(&session("other", None), ContainerState::Running, &settings);
        other.store = Some("another-store".into());
        let broken = container(&session("broken", None), ContainerState::Running, &settings);

        let pass = run(
            &[],
            vec![orphan.clone(), other.clone(), broken.clone()],
            false,
        );
        assert_eq!(pass.now, vec!["gone"]);
        assert_eq!(pass.foreign, vec![other.clone()]);
        assert_eq!(pass.planned, 1, "the unreadable name is never planned");

        let pass = run(&[], vec![orphan.clone(), other.clone(), broken], true);
        assert!(pass.now.is_empty(), "held orphans are not removed");
        assert_eq!(pass.foreign.len(), 3);
    }
}
