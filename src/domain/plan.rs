//! The planning core: desired session + observed containers → actions and status.
//!
//! [`plan`] is a pure function. It does no IO, reads no clock (the caller passes `now`) and
//! cannot fail: every situation maps to a list of [`Action`]s, the status the session should
//! show once they are done, and when to look again. The controller executes the plan; table
//! tests below cover the behaviour.

use std::time::Duration;

use bollard::models::ContainerCreateBody;
use chrono::{DateTime, Utc};

use crate::domain::contract::{Identity, Policy, container_name};
use crate::domain::pool::{Offer, WarmPool, offer};
use crate::domain::reason::Reason;
use crate::domain::resource::{Condition, Phase, RestartPolicy, Session, SessionStatus};

/// Docker's view of a container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by the engine.
    Restarting,
    /// Exited.
    Exited,
    /// Dead (a failed removal).
    Dead,
    /// Being removed.
    Removing,
}

/// How an exited container ended (from inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code.
    pub code: i64,
    /// When the last run started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
}

/// One managed container as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Container id.
    pub id: String,
    /// Container name, without the leading `/`.
    pub name: String,
    /// Session label; for a claimed warm-pool member, the session that claimed it (from the
    /// store's claim record); empty for an unclaimed member.
    pub session: String,
    /// Pool label: the warm pool the container was made for, if any.
    pub pool: Option<String>,
    /// State.
    pub state: ContainerState,
    /// Spec-hash label.
    pub spec_hash: Option<String>,
    /// Generation label.
    pub generation: Option<i64>,
    /// Session uid label.
    pub uid: Option<String>,
    /// Store identity label (`None` on containers made before stores had identities).
    pub store: Option<String>,
    /// Creation time, unix seconds.
    pub created: i64,
    /// Exit details, when the container is not running and was inspected.
    pub exit: Option<ExitInfo>,
}

/// Per-session crash-loop memory, kept by the controller between reconciles (and in the
/// store, so that a new leader goes on with the same back-off).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrashState {
    /// Consecutive short runs (a run shorter than `stable_after` counts as a crash).
    pub streak: u32,
    /// `finished_at` of the last exit already counted, so one exit counts once.
    pub last_finished: Option<DateTime<Utc>>,
}

/// Knobs of the planner.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Orchestrator instance (goes into names and labels).
    pub instance: String,
    /// The sandbox contract.
    pub policy: Policy,
    /// A run at least this long resets the crash-loop backoff.
    pub stable_after: Duration,
    /// First crash-loop delay (doubles per crash).
    pub backoff_base: Duration,
    /// Largest crash-loop delay.
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            instance: "default".into(),
            policy: Policy::default(),
            stable_after: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Why a container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// No session wants it.
    Orphan,
    /// Its configuration no longer matches the spec (or it is paused/dead).
    Drift,
    /// Another container already serves the session.
    Duplicate,
    /// The session's ttl passed.
    Expired,
    /// The spec no longer fits the sandbox contract.
    ContractViolation,
}

/// One step for the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Force-remove a container.
    Remove {
        /// Container id.
        id: String,
        /// Why.
        reason: RemoveReason,
    },
    /// Create a container with this name and body, then start it.
    Create {
        /// Container name.
        name: String,
        /// Full create body, contract applied.
        body: Box<ContainerCreateBody>,
    },
    /// Start an existing, stopped container.
    Start {
        /// Container id.
        id: String,
    },
    /// Claim a ready warm-pool member for the session (the first of `candidates` nobody
    /// claimed yet, atomically in the store); when every candidate is taken meanwhile,
    /// `fallback` (a [`Action::Create`]) runs instead.
    Claim {
        /// The pool.
        pool: String,
        /// Ready members, oldest first.
        candidates: Vec<String>,
        /// The cold create, if no candidate can be claimed.
        fallback: Box<Action>,
    },
    /// Delete the session from the store (it expired), if still at this resourceVersion.
    DeleteSession {
        /// The precondition.
        resource_version: String,
    },
}

/// What to do for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps, in order.
    pub actions: Vec<Action>,
    /// The status the session should show once the actions succeeded. When a `Create` is
    /// planned its `container_id` is `None` and the executor fills it in.
    pub status: Option<SessionStatus>,
    /// Look again after this long even without a trigger (backoff, ttl).
    pub requeue_after: Option<Duration>,
    /// Crash-loop memory to keep.
    pub crash: CrashState,
}

/// Everything the planner looks at for one session name.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The session name (the reconcile key).
    pub name: &'a str,
    /// The desired session, `None` when it does not exist (its containers are orphans).
    pub session: Option<&'a Session>,
    /// The managed containers labelled with this session name.
    pub containers: &'a [Observed],
    /// Crash-loop memory.
    pub crash: &'a CrashState,
    /// The current time.
    pub now: DateTime<Utc>,
    /// Identity of the store the session lives in; new containers carry it.
    pub store: &'a str,
    /// The warm pool the session names (`spec.pool`), as the controller knows it: `None`
    /// when the session names none.
    pub pool: Option<PoolView<'a>>,
}

/// A warm pool as the session planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// The stored pool, `None` when there is no pool of that name.
    pub pool: Option<&'a WarmPool>,
    /// Its members that can be claimed now, oldest first.
    pub ready: &'a [String],
}

/// Whether a container of this instance is ours to adopt, replace or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// It carries this store's identity, or it predates store identities and its uid is the
    /// uid of this store's session of that name (taken over once, see the README).
    Ours,
    /// It belongs to another store (another Redis, or this one before a reset), or it
    /// predates identities and no session of this store claims it. Never touched
    /// automatically: reported, and removed only by an operator.
    Foreign,
}

/// Whose is `container`, for the store `store` whose session of that name is `session`?
pub fn ownership(container: &Observed, store: &str, session: Option<&Session>) -> Ownership {
    match container.store.as_deref() {
        Some(s) if s == store => Ownership::Ours,
        Some(_) => Ownership::Foreign,
        None => match (
            session.and_then(|s| s.metadata.uid.as_deref()),
            &container.uid,
        ) {
            (Some(uid), Some(label)) if uid == label => Ownership::Ours,
            _ => Ownership::Foreign,
        },
    }
}

/// Crash-loop delay for the n-th consecutive crash: the first restart is immediate, then
/// base, 2·base, 4·base … capped at max.
pub fn crash_delay(streak: u32, s: &Settings) -> Duration {
    if streak <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u64.checked_shl(streak - 2).unwrap_or(u64::MAX);
    let ms = (s.backoff_base.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(ms).min(s.backoff_max)
}

fn rank(state: ContainerState) -> u8 {
    match state {
        ContainerState::Running => 0,
        ContainerState::Restarting => 1,
        ContainerState::Created => 2,
        ContainerState::Exited => 3,
        ContainerState::Paused => 4,
        ContainerState::Dead => 5,
        ContainerState::Removing => 6,
    }
}

/// What every status of one plan shares.
struct StatusCtx<'a> {
    prev: Option<&'a SessionStatus>,
    generation: Option<i64>,
    now: DateTime<Utc>,
}

impl StatusCtx<'_> {
    /// Build the status for `phase`, keeping the Ready condition's transition time when
    /// readiness did not change.
    fn status(
        &self,
        phase: Phase,
        container_id: Option<String>,
        restart_count: u32,
        reason: Option<Reason>,
        message: Option<String>,
    ) -> SessionStatus {
        let ready = if phase == Phase::Running {
            "True"
        } else {
            "False"
        };
        let prev_ready = self
            .prev
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready"));
        let last_transition_time = match prev_ready {
            Some(c) if c.status == ready => c.last_transition_time,
            _ => self.now,
        };
        SessionStatus {
            phase,
            container_id,
            observed_generation: self.generation,
            restart_count,
            reason: reason.map(String::from),
            message: message.clone(),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                last_transition_time,
                reason: reason.map(String::from),
                message,
            }],
        }
    }
}

/// Decide what to do for one session. Pure: same input, same plan.
pub fn plan(input: &Input<'_>, s: &Settings) -> Plan {
    let mut out = Plan {
        actions: Vec::new(),
        status: None,
        requeue_after: None,
        crash: input.crash.clone(),
    };
    let live: Vec<&Observed> = input
        .containers
        .iter()
        .filter(|c| c.state != ContainerState::Removing)
        .collect();
    let removing = live.len() < input.containers.len();
    let remove_all = |out: &mut Plan, reason| {
        for c in &live {
            out.actions.push(Action::Remove {
                id: c.id.clone(),
                reason,
            });
        }
    };

    let Some(session) = input.session else {
        remove_all(&mut out, RemoveReason::Orphan);
        out.crash = CrashState::default();
        return out;
    };
    let prev = session.status.as_ref();
    let restarts = prev.map(|p| p.restart_count).unwrap_or(0);
    let generation = session.metadata.generation;
    let ctx = StatusCtx {
        prev,
        generation,
        now: input.now,
    };

    if let Some(expiry) = session.expires_at() {
        if input.now >= expiry {
            remove_all(&mut out, RemoveReason::Expired);
            out.actions.push(Action::DeleteSession {
                resource_version: session
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default(),
            });
            return out;
        }
        out.requeue_after = (expiry - input.now).to_std().ok();
    }

    let sandbox = match s.policy.session_sandbox(session) {
        Ok(sb) => sb,
        Err(violations) => {
            remove_all(&mut out, RemoveReason::ContractViolation);
            let message = violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            out.status = Some(ctx.status(
                Phase::Failed,
                None,
                restarts,
                Some(violations[0].reason),
                Some(message),
            ));
            return out;
        }
    };
    let uid = session.metadata.uid.clone().unwrap_or_default();
    let hash = sandbox.spec_hash();
    let create = Action::Create {
        name: container_name(&s.instance, input.name),
        body: Box::new(sandbox.container_body(&Identity {
            instance: &s.instance,
            session: input.name,
            uid: &uid,
            store: input.store,
            generation: generation.unwrap_or(0),
        })),
    };
    // A cold start's pool reason stays as long as the sandbox it explains.
    let cold = prev.filter(|p| {
        p.reason
            .as_deref()
            .and_then(|r| r.parse::<Reason>().ok())
            .is_some_and(|r| {
                matches!(
                    r,
                    Reason::PoolNotFound | Reason::PoolMismatch | Reason::PoolEmpty
                )
            })
    });
    let running = |restart_count: u32, id: Option<String>| match cold {
        Some(p) if id.is_some() && p.container_id == id => ctx.status(
            Phase::Running,
            id,
            restart_count,
            p.reason.as_deref().and_then(|r| r.parse().ok()),
            p.message.clone(),
        ),
        _ => ctx.status(Phase::Running, id, restart_count, None, None),
    };

    // Pick the one container to keep: matching hash and uid, best state, newest.
    let mut matching: Vec<&Observed> = live
        .iter()
        .copied()
        .filter(|c| {
            c.spec_hash.as_deref() == Some(hash.as_str()) && c.uid.as_deref() == Some(uid.as_str())
        })
        .collect();
    matching.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(b.created.cmp(&a.created))
    });
    let keeper = matching.first().copied();
    for c in &live {
        if keeper.is_some_and(|k| k.id == c.id) {
            continue;
        }
        let reason = if matching.iter().any(|m| m.id == c.id) {
            RemoveReason::Duplicate
        } else {
            RemoveReason::Drift
        };
        out.actions.push(Action::Remove {
            id: c.id.clone(),
            reason,
        });
    }

    let Some(keeper) = keeper else {
        if removing {
            // Wait for the engine to finish removing before reusing the name.
            out.requeue_after = Some(Duration::from_millis(200));
            out.status = prev.cloned();
            return out;
        }
        // A container existed before and vanished without drift: that is a restart.
        let vanished = live.is_empty() && prev.is_some_and(|p| p.container_id.is_some());
        let restarts = restarts + u32::from(vanished);
        match (session.spec.pool.as_deref(), input.pool) {
            (Some(name), Some(view)) => match offer(name, view.pool, view.ready, &sandbox, s) {
                Offer::Claim(candidates) => {
                    out.actions.push(Action::Claim {
                        pool: name.to_string(),
                        candidates,
                        fallback: Box::new(create),
                    });
                    out.status = Some(running(restarts, None));
                }
                Offer::Cold(reason, message) => {
                    out.actions.push(create);
                    out.status = Some(ctx.status(
                        Phase::Running,
                        None,
                        restarts,
                        Some(reason),
                        Some(message),
                    ));
                }
            },
            _ => {
                out.actions.push(create);
                out.status = Some(running(restarts, None));
            }
        }
        return out;
    };

    match keeper.state {
        ContainerState::Running | ContainerState::Restarting => {
            out.status = Some(running(restarts, Some(keeper.id.clone())));
        }
        ContainerState::Created => {
            out.actions.push(Action::Start {
                id: keeper.id.clone(),
            });
            out.status = Some(running(restarts, Some(keeper.id.clone())));
        }
        ContainerState::Paused | ContainerState::Dead | ContainerState::Removing => {
            out.actions.push(Action::Remove {
                id: keeper.id.clone(),
                reason: RemoveReason::Drift,
            });
            out.actions.push(create);
            out.status = Some(running(restarts + 1, None));
        }
        ContainerState::Exited => {
            let exit = keeper.exit.clone();
            let code = exit.as_ref().map(|e| e.code).unwrap_or(-1);
            let restart = match session.spec.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
            if !restart {
                let (phase, reason) = if code == 0 {
                    (Phase::Succeeded, Reason::Completed)
                } else {
                    (Phase::Failed, Reason::Error)
                };
                out.status = Some(ctx.status(
                    phase,
                    Some(keeper.id.clone()),
                    restarts,
                    Some(reason),
                    Some(format!("sandbox exited with code {code}")),
                ));
                return out;
            }
            let Some(exit) = exit else {
                // Not inspected (a bulk resync): restart now, the next reconcile has details.
                out.actions.push(Action::Start {
                    id: keeper.id.clone(),
                });
                out.status = Some(running(restarts + 1, Some(keeper.id.clone())));
                return out;
            };
            if out.crash.last_finished != Some(exit.finished_at) {
                let ran = (exit.finished_at - exit.started_at)
                    .to_std()
                    .unwrap_or_default();
                out.crash.streak = if ran >= s.stable_after {
                    1
                } else {
                    out.crash.streak + 1
                };
                out.crash.last_finished = Some(exit.finished_at);
            }
            let delay = crash_delay(out.crash.streak, s);
            let ready_at = exit.finished_at
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
            if input.now >= ready_at {
                out.actions.push(Action::Start {
                    id: keeper.id.clone(),
                });
                out.status = Some(running(restarts + 1, Some(keeper.id.clone())));
            } else {
                let wait = (ready_at - input.now).to_std().unwrap_or_default();
                let why = if exit.oom_killed { " (OOM killed)" } else { "" };
                out.status = Some(ctx.status(
                    Phase::BackOff,
                    Some(keeper.id.clone()),
                    restarts,
                    Some(Reason::CrashLoopBackOff),
                    Some(format!(
                        "back-off {:.1}s restarting sandbox that exited with code {code}{why}",
                        delay.as_secs_f64()
                    )),
                ));
                out.requeue_after = Some(out.requeue_after.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    out
}

/// Does the stored status differ from the planned one (ignoring nothing: transition times are
/// preserved by the planner, so equal states compare equal)?
pub fn status_changed(current: Option<&SessionStatus>, planned: Option<&SessionStatus>) -> bool {
    match planned {
        None => false,
        Some(p) => current != Some(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::Policy;
    use crate::domain::resource::Session;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn session(name: &str) -> Session {
        let mut s = Session::new(name, "mcp-server:latest");
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(1);
        s.metadata.resource_version = Some("7".into());
        s.metadata.creation_timestamp = Some(now() - chrono::Duration::seconds(100));
        s
    }

    fn container(s: &Session, id: &str, state: ContainerState) -> Observed {
        let sb = Policy::default().sandbox(&s.spec).unwrap();
        Observed {
            id: id.into(),
            name: format!("mcp-{}", s.metadata.name),
            session: s.metadata.name.clone(),
            pool: None,
            state,
            spec_hash: Some(sb.spec_hash()),
            generation: s.metadata.generation,
            uid: s.metadata.uid.clone(),
            store: Some("s".into()),
            created: 1,
            exit: None,
        }
    }

    fn exited(mut c: Observed, code: i64, ran_secs: i64, ago_secs: i64) -> Observed {
        let finished = now() - chrono::Duration::seconds(ago_secs);
        c.state = ContainerState::Exited;
        c.exit = Some(ExitInfo {
            code,
            started_at: finished - chrono::Duration::seconds(ran_secs),
            finished_at: finished,
            oom_killed: false,
        });
        c
    }

    fn run(session: Option<&Session>, containers: &[Observed], crash: &CrashState) -> Plan {
        run_at(now(), session, containers, crash)
    }

    fn run_at(
        now: DateTime<Utc>,
        session: Option<&Session>,
        containers: &[Observed],
        crash: &CrashState,
    ) -> Plan {
        plan(
            &Input {
                name: "demo",
                session,
                containers,
                crash,
                now,
                store: "s",
                pool: None,
            },
            &Settings::default(),
        )
    }

    fn run_with_pool(session: &Session, view: PoolView<'_>) -> Plan {
        plan(
            &Input {
                name: "demo",
                session: Some(session),
                containers: &[],
                crash: &CrashState::default(),
                now: now(),
                store: "s",
                pool: Some(view),
            },
            &Settings::default(),
        )
    }

    #[test]
    fn a_session_naming_a_pool_claims_or_says_why_it_started_cold() {
        let mut s = session("demo");
        s.spec.pool = Some("p".into());
        let mut pool = WarmPool::new("p", "mcp-server:latest", 2);
        pool.metadata.uid = Some("pu".into());
        let ready = vec!["m1".to_string(), "m2".to_string()];
        let p = run_with_pool(
            &s,
            PoolView {
                pool: Some(&pool),
                ready: &ready,
            },
        );
        match &p.actions[..] {
            [
                Action::Claim {
                    pool, candidates, ..
                },
            ] => {
                assert_eq!(pool, "p");
                assert_eq!(candidates, &ready);
            }
            a => panic!("{a:?}"),
        }
        let st = p.status.unwrap();
        assert_eq!((st.phase, st.reason), (Phase::Running, None));

        // Different env: cold, and the status names the field.
        s.spec.env.insert("A".into(), "b".into());
        let p = run_with_pool(
            &s,
            PoolView {
                pool: Some(&pool),
                ready: &ready,
            },
        );
        assert_eq!(kinds(&p), vec!["create mcp-demo"]);
        let st = p.status.unwrap();
        assert_eq!(st.reason.as_deref(), Some("PoolMismatch"));
        assert!(st.message.unwrap().contains("spec.env"));

        // The reason stays while the cold sandbox runs, and goes with it.
        let mut c = container(&s, "cold", ContainerState::Running);
        c.created = 2;
        let mut running = s.clone();
        running.status = Some(SessionStatus {
            container_id: Some("cold".into()),
            reason: Some("PoolMismatch".into()),
            message: Some("m".into()),
            ..run(Some(&s), std::slice::from_ref(&c), &CrashState::default())
                .status
                .unwrap()
        });
        let p = run(
            Some(&running),
            std::slice::from_ref(&c),
            &CrashState::default(),
        );
        assert_eq!(p.status.unwrap().reason.as_deref(), Some("PoolMismatch"));
        let c2 = container(&s, "new", ContainerState::Running);
        let p = run(Some(&running), &[c2], &CrashState::default());
        assert_eq!(p.status.unwrap().reason, None);
    }

    fn kinds(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::Remove { id, reason } => format!("remove {id} {reason:?}"),
                Action::Create { name, .. } => format!("create {name}"),
                Action::Start { id } => format!("start {id}"),
                Action::Claim { pool, .. } => format!("claim {pool}"),
                Action::DeleteSession { resource_version } => format!("delete {resource_version}"),
            })
            .collect()
    }

    #[test]
    fn table() {
        let s = session("demo");
        let mut drifted = s.clone();
        drifted.spec.env.insert("A".into(), "b".into());
        let mut other_uid = container(&s, "c-old", ContainerState::Running);
        other_uid.uid = Some("uid-0".into());
        let mut expired = s.clone();
        expired.spec.ttl_seconds = Some(10);
        let mut never = s.clone();
        never.spec.restart_policy = RestartPolicy::Never;
        let mut on_failure = s.clone();
        on_failure.spec.restart_policy = RestartPolicy::OnFailure;
        let mut banned = s.clone();
        banned.spec.image = "alpine:3".into();
        let fresh = CrashState::default();

        type Case<'a> = (
            &'a str,
            Option<&'a Session>,
            Vec<Observed>,
            Vec<&'a str>,
            Option<Phase>,
        );
        let cases: Vec<Case> = vec![
            (
                "missing → create",
                Some(&s),
                vec![],
                vec!["create mcp-demo"],
                Some(Phase::Running),
            ),
            (
                "running and matching → nothing",
                Some(&s),
                vec![container(&s, "c1", ContainerState::Running)],
                vec![],
                Some(Phase::Running),
            ),
            (
                "orphan → remove",
                None,
                vec![container(&s, "c1", ContainerState::Running)],
                vec!["remove c1 Orphan"],
                None,
            ),
            (
                "drift → remove and create",
                Some(&drifted),
                vec![container(&s, "c1", ContainerState::Running)],
                vec!["remove c1 Drift", "create mcp-demo"],
                Some(Phase::Running),
            ),
            (
                "re-created session (new uid) → replace",
                Some(&s),
                vec![other_uid],
                vec!["remove c-old Drift", "create mcp-demo"],
                Some(Phase::Running),
            ),
            (
                "duplicates → keep the running one",
                Some(&s),
                vec![
                    container(&s, "c1", ContainerState::Created),
                    container(&s, "c2", ContainerState::Running),
                ],
                vec!["remove c1 Duplicate"],
                Some(Phase::Running),
            ),
            (
                "created, never started → start",
                Some(&s),
                vec![container(&s, "c1", ContainerState::Created)],
                vec!["start c1"],
                Some(Phase::Running),
            ),
            (
                "killed after a stable run → restart now",
                Some(&s),
                vec![exited(
                    container(&s, "c1", ContainerState::Exited),
                    137,
                    60,
                    0,
                )],
                vec!["start c1"],
                Some(Phase::Running),
            ),
            (
                "Never → keep exited, Failed",
                Some(&never),
                vec![exited(
                    container(&never, "c1", ContainerState::Exited),
                    1,
                    60,
                    0,
                )],
                vec![],
                Some(Phase::Failed),
            ),
            (
                "OnFailure with exit 0 → Succeeded",
                Some(&on_failure),
                vec![exited(
                    container(&on_failure, "c1", ContainerState::Exited),
                    0,
                    60,
                    0,
                )],
                vec![],
                Some(Phase::Succeeded),
            ),
            (
                "OnFailure with exit 1 → restart",
                Some(&on_failure),
                vec![exited(
                    container(&on_failure, "c1", ContainerState::Exited),
                    1,
                    60,
                    0,
                )],
                vec!["start c1"],
                Some(Phase::Running),
            ),
            (
                "expired → remove and delete",
                Some(&expired),
                vec![container(&s, "c1", ContainerState::Running)],
                vec!["remove c1 Expired", "delete 7"],
                None,
            ),
            (
                "contract breach after a policy change → remove, Failed",
                Some(&banned),
                vec![container(&s, "c1", ContainerState::Running)],
                vec!["remove c1 ContractViolation"],
                Some(Phase::Failed),
            ),
            (
                "dead → replace",
                Some(&s),
                vec![container(&s, "c1", ContainerState::Dead)],
                vec!["remove c1 Drift", "create mcp-demo"],
                Some(Phase::Running),
            ),
        ];
        for (what, session, containers, want, phase) in cases {
            let p = run(session, &containers, &fresh);
            assert_eq!(kinds(&p), want, "{what}");
            assert_eq!(p.status.as_ref().map(|s| s.phase), phase, "{what}");
        }
    }

    #[test]
    fn crash_loop_backs_off_and_resets() {
        let s = session("demo");
        let c = container(&s, "c1", ContainerState::Exited);
        // Third short run in a row: 2 s back-off, finished 1 s ago → wait 1 s.
        let crash = CrashState {
            streak: 2,
            last_finished: None,
        };
        let p = run(Some(&s), &[exited(c.clone(), 1, 1, 1)], &crash);
        assert!(p.actions.is_empty());
        let st = p.status.unwrap();
        assert_eq!(st.phase, Phase::BackOff);
        assert_eq!(st.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(p.crash.streak, 3);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
        // The same exit seen again does not count twice; once the delay passed, start.
        let later = now() + chrono::Duration::seconds(1);
        let p2 = run_at(later, Some(&s), &[exited(c.clone(), 1, 1, 1)], &p.crash);
        assert_eq!(p2.crash.streak, 3);
        assert_eq!(kinds(&p2), ["start c1"]);
        // A stable run resets the streak: immediate restart.
        let p3 = run(Some(&s), &[exited(c, 1, 30, 0)], &p.crash);
        assert_eq!(kinds(&p3), ["start c1"]);
        assert_eq!(p3.crash.streak, 1);
        assert_eq!(p3.status.unwrap().restart_count, 1);
    }

    #[test]
    fn delays_double_and_cap() {
        let s = Settings::default();
        let d: Vec<u64> = (1..10).map(|n| crash_delay(n, &s).as_secs()).collect();
        assert_eq!(d, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(crash_delay(200, &s), Duration::from_secs(60));
    }

    #[test]
    fn vanished_container_counts_as_restart_and_ready_time_is_kept() {
        let mut s = session("demo");
        let first = run(
            Some(&s),
            &[container(&s, "c1", ContainerState::Running)],
            &CrashState::default(),
        );
        let mut st = first.status.unwrap();
        st.last_transition_time_for_test(now() - chrono::Duration::seconds(50));
        s.status = Some(st.clone());
        let again = run(
            Some(&s),
            &[container(&s, "c1", ContainerState::Running)],
            &CrashState::default(),
        );
        assert!(!status_changed(s.status.as_ref(), again.status.as_ref()));
        let gone = run(Some(&s), &[], &CrashState::default());
        assert_eq!(gone.status.unwrap().restart_count, 1);
    }

    impl SessionStatus {
        fn last_transition_time_for_test(&mut self, t: DateTime<Utc>) {
            for c in &mut self.conditions {
                c.last_transition_time = t;
            }
        }
    }

    #[test]
    fn only_this_stores_containers_are_ours() {
        let s = session("demo");
        let mine = container(&s, "c1", ContainerState::Running);
        assert_eq!(ownership(&mine, "s", Some(&s)), Ownership::Ours);
        assert_eq!(ownership(&mine, "other", Some(&s)), Ownership::Foreign);
        assert_eq!(ownership(&mine, "other", None), Ownership::Foreign);
        let mut legacy = mine.clone();
        legacy.store = None;
        assert_eq!(
            ownership(&legacy, "s", Some(&s)),
            Ownership::Ours,
            "same uid"
        );
        assert_eq!(
            ownership(&legacy, "s", None),
            Ownership::Foreign,
            "nobody claims it"
        );
        let mut other = s.clone();
        other.metadata.uid = Some("another-uid".into());
        assert_eq!(ownership(&legacy, "s", Some(&other)), Ownership::Foreign);
    }
}
