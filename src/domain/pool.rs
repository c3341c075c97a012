//! The `WarmPool` resource and its planner: keep `replicas` started sandboxes of a template
//! ready, so that a session naming the pool (`spec.pool`) claims one instead of waiting for
//! the engine's create and start.
//!
//! A pool's sandboxes carry the pool's labels (never a session's) until a session claims
//! one; the claim is a record in the store (container id → session), and from then on the
//! container is that session's (see the controller). [`plan_pool`] is pure, like
//! [`crate::domain::plan::plan`]: the unclaimed members as observed → removes, creates and
//! the pool's status. [`offer`] decides, for one session without a sandbox, whether the pool
//! can serve it and if not, why (the session's status says so).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::contract::{PoolIdentity, Sandbox, pool_container_name};
use crate::domain::plan::{Action, ContainerState, Observed, RemoveReason, Settings};
use crate::domain::reason::Reason;
use crate::domain::resource::{API_VERSION, ObjectMeta, Resources, SessionSpec};

/// The `kind` of a warm pool.
pub const POOL_KIND: &str = "WarmPool";

/// The session name a pool member is reserved under while its pool removes it, so that no
/// session can claim it meanwhile (not a DNS-1123 label: never a real session).
pub const REMOVING: &str = "(pool-removal)";

/// Work-queue keys of warm pools: `warmpool/<name>` (session names have no `/`).
pub const POOL_KEY: &str = "warmpool/";

/// A warm-pool member's claim: the session that holds it. The store keeps it (container id
/// → claim) from the claim until the container is gone, so the binding survives restarts
/// and a new leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The session's name.
    pub session: String,
    /// The session's uid (a later session of the same name does not inherit the sandbox).
    pub uid: String,
    /// The pool the member came from.
    pub pool: String,
}

impl Claim {
    /// A container as its session sees it: a claimed member is its claim's session's,
    /// with that session's uid.
    pub fn apply(&self, c: &mut Observed) {
        c.session = self.session.clone();
        c.uid = Some(self.uid.clone());
    }
}

/// A warm pool: `replicas` started sandboxes of one template, ready to be claimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPool {
    /// Always `orchestrator.mcp.dev/v1`.
    pub api_version: String,
    /// Always `WarmPool`.
    pub kind: String,
    /// Name, labels and store-managed bookkeeping.
    pub metadata: ObjectMeta,
    /// What the pool keeps ready.
    pub spec: WarmPoolSpec,
    /// What the orchestrator observed; written by the orchestrator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WarmPoolStatus>,
}

/// The desired pool.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPoolSpec {
    /// The sandbox every member is made from (the same fields, defaults and contract as a
    /// session's).
    pub template: SandboxTemplate,
    /// How many started, unclaimed sandboxes to keep ready.
    pub replicas: u32,
}

/// The sandbox part of a session spec: what a pool member is made from. A session whose
/// resolved sandbox equals the template's (same image, command, env, resources, user) can
/// claim a member.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxTemplate {
    /// Container image; must match the image allowlist.
    pub image: String,
    /// Arguments that replace the image's default command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resource limits; defaults apply where unset and maxima cap them.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Numeric non-root `uid` or `uid:gid`; defaults to the contract's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl SandboxTemplate {
    /// The template as a session spec (everything else defaulted): what the contract and
    /// admission check, and what the members are built from.
    pub fn as_spec(&self) -> SessionSpec {
        SessionSpec {
            image: self.image.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            resources: self.resources.clone(),
            user: self.user.clone(),
            ..SessionSpec::default()
        }
    }
}

/// Observed state of a pool.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPoolStatus {
    /// The desired number of ready members.
    pub replicas: u32,
    /// Started, unclaimed members of the current template.
    pub ready: u32,
    /// Members being created or started.
    pub starting: u32,
    /// Sandboxes of this pool claimed by sessions (still running for them).
    pub claimed: u32,
    /// The generation the members are built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the pool cannot be filled, e.g. `ImageNotAllowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl WarmPool {
    /// A new pool with the given name, image and size, everything else defaulted.
    pub fn new(name: &str, image: &str, replicas: u32) -> WarmPool {
        WarmPool {
            api_version: API_VERSION.to_string(),
            kind: POOL_KIND.to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                ..ObjectMeta::default()
            },
            spec: WarmPoolSpec {
                template: SandboxTemplate {
                    image: image.to_string(),
                    ..SandboxTemplate::default()
                },
                replicas,
            },
            status: None,
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The generation, 0 when never stored.
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
}

impl crate::domain::resource::Object for WarmPool {
    type Status = WarmPoolStatus;
    const KIND: &'static str = POOL_KIND;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn status_mut(&mut self) -> &mut Option<WarmPoolStatus> {
        &mut self.status
    }
    fn differs(&self, other: &Self) -> bool {
        self.spec != other.spec
    }
}

/// The JSON Schema of a WarmPool document, generated from the types.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(WarmPool)).unwrap_or_default()
}

/// Everything [`plan_pool`] looks at for one pool name.
#[derive(Debug, Clone)]
pub struct PoolInput<'a> {
    /// The pool name (the reconcile key is `warmpool/<name>`).
    pub name: &'a str,
    /// The desired pool, `None` when it does not exist (its unclaimed members go).
    pub pool: Option<&'a WarmPool>,
    /// The pool's unclaimed members (claimed ones are their sessions' and never here).
    pub members: &'a [Observed],
    /// How many of the pool's sandboxes sessions hold.
    pub claimed: u32,
    /// Identity of the store; new members carry it.
    pub store: &'a str,
    /// Makes new members' names unique (the caller passes something fresh each time).
    pub nonce: u64,
}

/// What to do for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    /// Removes (dead, drifted or surplus members), then creates.
    pub actions: Vec<Action>,
    /// The status to show once the actions are done; `None` when the pool is gone.
    pub status: Option<WarmPoolStatus>,
    /// The members that can be claimed now (running, current template), oldest first.
    pub ready: Vec<String>,
}

/// A session-spec field path (`spec.image`) as the template's (`spec.template.image`): how
/// the checks a template shares with a session spec name their field in a pool.
pub fn template_path(path: &str) -> String {
    match path.strip_prefix("spec") {
        Some("") => "spec.template".to_string(),
        Some(rest) if rest.starts_with('.') || rest.starts_with('[') => {
            format!("spec.template{rest}")
        }
        _ => path.to_string(),
    }
}

/// The pool's template as a sandbox, or why it cannot be one.
pub fn template_sandbox(pool: &WarmPool, s: &Settings) -> Result<Sandbox, (Reason, String)> {
    s.policy
        .sandbox(&pool.spec.template.as_spec())
        .map_err(|v| {
            let message = v
                .iter()
                .map(|v| format!("{}: {}", template_path(&v.path), v.message))
                .collect::<Vec<_>>()
                .join("; ");
            (v[0].reason, message)
        })
}

/// Decide what to do for one pool. Pure: same input, same plan.
///
/// A member is kept while it runs the current template (its spec-hash and pool-uid labels);
/// anything else — exited, dead, paused, of an older template or of an earlier pool of the
/// same name — is removed and replaced. Surplus members (after `replicas` went down) go,
/// newest first. Members in the engine's removal are left to finish.
pub fn plan_pool(input: &PoolInput<'_>, s: &Settings) -> PoolPlan {
    let mut out = PoolPlan {
        actions: Vec::new(),
        status: None,
        ready: Vec::new(),
    };
    let live: Vec<&Observed> = input
        .members
        .iter()
        .filter(|c| c.state != ContainerState::Removing)
        .collect();
    let remove = |out: &mut PoolPlan, c: &Observed, reason| {
        out.actions.push(Action::Remove {
            id: c.id.clone(),
            reason,
        })
    };
    let Some(pool) = input.pool else {
        for c in &live {
            remove(&mut out, c, RemoveReason::Orphan);
        }
        return out;
    };
    let mut status = WarmPoolStatus {
        replicas: pool.spec.replicas,
        claimed: input.claimed,
        observed_generation: pool.metadata.generation,
        ..WarmPoolStatus::default()
    };
    let sandbox = match template_sandbox(pool, s) {
        Ok(sb) => sb,
        Err((reason, message)) => {
            for c in &live {
                remove(&mut out, c, RemoveReason::ContractViolation);
            }
            status.reason = Some(reason.into());
            status.message = Some(message);
            out.status = Some(status);
            return out;
        }
    };
    let hash = sandbox.spec_hash();
    let uid = pool.metadata.uid.clone().unwrap_or_default();
    let mut keep: Vec<&Observed> = Vec::new();
    for c in &live {
        let current =
            c.spec_hash.as_deref() == Some(hash.as_str()) && c.uid.as_deref() == Some(uid.as_str());
        let alive = matches!(
            c.state,
            ContainerState::Running | ContainerState::Restarting | ContainerState::Created
        );
        if current && alive {
            keep.push(c);
        } else {
            remove(&mut out, c, RemoveReason::Drift);
        }
    }
    keep.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    let want = pool.spec.replicas as usize;
    while keep.len() > want {
        if let Some(c) = keep.pop() {
            remove(&mut out, c, RemoveReason::Duplicate);
        }
    }
    for c in &keep {
        if c.state == ContainerState::Running {
            out.ready.push(c.id.clone());
        } else if c.state == ContainerState::Created {
            out.actions.push(Action::Start { id: c.id.clone() });
        }
    }
    let missing = want - keep.len();
    for i in 0..missing {
        let suffix = format!("{:x}{i}", input.nonce);
        out.actions.push(Action::Create {
            name: pool_container_name(&s.instance, input.name, &suffix),
            body: Box::new(sandbox.pool_body(&PoolIdentity {
                instance: &s.instance,
                pool: input.name,
                uid: &uid,
                store: input.store,
                generation: pool.generation(),
            })),
        });
    }
    status.ready = out.ready.len() as u32;
    status.starting = (keep.len() - out.ready.len() + missing) as u32;
    out.status = Some(status);
    out
}

/// Can the pool serve a session whose sandbox is `wanted`, and if not, why not?
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Claim one of these members (ready, oldest first).
    Claim(Vec<String>),
    /// Create the session's sandbox cold, for this reason.
    Cold(Reason, String),
}

/// What the pool named by a session offers it. `pool` is the stored pool (`None`: no such
/// pool), `ready` its claimable members.
pub fn offer(
    name: &str,
    pool: Option<&WarmPool>,
    ready: &[String],
    wanted: &Sandbox,
    s: &Settings,
) -> Offer {
    let Some(pool) = pool else {
        return Offer::Cold(
            Reason::PoolNotFound,
            format!("warm pool {name:?} does not exist; the sandbox was created cold"),
        );
    };
    let template = match template_sandbox(pool, s) {
        Ok(t) => t,
        Err((_, message)) => {
            return Offer::Cold(
                Reason::PoolNotFound,
                format!(
                    "warm pool {name:?} cannot make sandboxes ({message}); the sandbox was \
                     created cold"
                ),
            );
        }
    };
    let differs = template.differences(wanted);
    if !differs.is_empty() {
        return Offer::Cold(
            Reason::PoolMismatch,
            format!(
                "{} differ from warm pool {name:?}'s template; the sandbox was created cold",
                differs.join(", ")
            ),
        );
    }
    if ready.is_empty() {
        return Offer::Cold(
            Reason::PoolEmpty,
            format!("warm pool {name:?} had no ready sandbox; the sandbox was created cold"),
        );
    }
    Offer::Claim(ready.to_vec())
}

/// How long after `created` a claim took, for the claim-latency histogram (zero when the
/// clocks disagree).
pub fn claim_latency(created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    created
        .and_then(|c| (now - c).to_std().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::Policy;

    fn pool(replicas: u32) -> WarmPool {
        let mut p = WarmPool::new("p", "mcp-server:latest", replicas);
        p.metadata.uid = Some("pu".into());
        p.metadata.generation = Some(1);
        p
    }

    fn member(p: &WarmPool, id: &str, state: ContainerState, created: i64) -> Observed {
        let sb = template_sandbox(p, &Settings::default()).unwrap();
        Observed {
            id: id.into(),
            name: format!("mcp-pool.p.{id}"),
            session: String::new(),
            pool: Some("p".into()),
            state,
            spec_hash: Some(sb.spec_hash()),
            generation: Some(1),
            uid: p.metadata.uid.clone(),
            store: Some("s".into()),
            created,
            exit: None,
        }
    }

    fn input<'a>(p: Option<&'a WarmPool>, members: &'a [Observed]) -> PoolInput<'a> {
        PoolInput {
            name: "p",
            pool: p,
            members,
            claimed: 0,
            store: "s",
            nonce: 7,
        }
    }

    fn creates(plan: &PoolPlan) -> usize {
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }

    fn removed(plan: &PoolPlan) -> Vec<(&str, RemoveReason)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, reason } => Some((id.as_str(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_empty_pool_is_filled_with_unique_names_under_the_contract() {
        let p = pool(3);
        let plan = plan_pool(&input(Some(&p), &[]), &Settings::default());
        assert_eq!(creates(&plan), 3);
        let names: std::collections::HashSet<_> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { name, body } => {
                    let labels = body.labels.as_ref().unwrap();
                    assert_eq!(labels[crate::domain::contract::LABEL_POOL], "p");
                    assert!(!labels.contains_key(crate::domain::contract::LABEL_SESSION));
                    let host = body.host_config.as_ref().unwrap();
                    assert_eq!(host.network_mode.as_deref(), Some("none"));
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(names.len(), 3);
        let st = plan.status.unwrap();
        assert_eq!((st.ready, st.starting, st.replicas), (0, 3, 3));
    }

    #[test]
    fn dead_and_drifted_members_are_replaced_and_surplus_goes_newest_first() {
        let p = pool(2);
        let mut old = member(&p, "old", ContainerState::Running, 1);
        old.spec_hash = Some("other".into());
        let members = vec![
            member(&p, "a", ContainerState::Running, 2),
            member(&p, "dead", ContainerState::Exited, 3),
            old,
            member(&p, "b", ContainerState::Running, 4),
            member(&p, "c", ContainerState::Running, 5),
        ];
        let plan = plan_pool(&input(Some(&p), &members), &Settings::default());
        assert_eq!(
            removed(&plan),
            vec![
                ("dead", RemoveReason::Drift),
                ("old", RemoveReason::Drift),
                ("c", RemoveReason::Duplicate)
            ]
        );
        assert_eq!(creates(&plan), 0);
        assert_eq!(plan.ready, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_deleted_pool_removes_its_unclaimed_members_only() {
        let p = pool(2);
        let members = vec![member(&p, "a", ContainerState::Running, 1)];
        let plan = plan_pool(&input(None, &members), &Settings::default());
        assert_eq!(removed(&plan), vec![("a", RemoveReason::Orphan)]);
        assert!(plan.status.is_none());
    }

    #[test]
    fn a_template_outside_the_contract_fills_nothing_and_says_why() {
        let mut p = pool(2);
        p.spec.template.image = "nginx:latest".into();
        let plan = plan_pool(&input(Some(&p), &[]), &Settings::default());
        assert_eq!(creates(&plan), 0);
        let st = plan.status.unwrap();
        assert_eq!(st.reason.as_deref(), Some("ImageNotAllowed"));
        assert!(st.message.unwrap().contains("spec.template.image"));
    }

    #[test]
    fn offers_name_the_reason_for_a_cold_start() {
        let s = Settings::default();
        let p = pool(1);
        let same = Policy::default()
            .sandbox(&p.spec.template.as_spec())
            .unwrap();
        assert_eq!(
            offer("p", Some(&p), &["a".into()], &same, &s),
            Offer::Claim(vec!["a".into()])
        );
        assert!(matches!(
            offer("p", Some(&p), &[], &same, &s),
            Offer::Cold(Reason::PoolEmpty, _)
        ));
        assert!(matches!(
            offer("p", None, &["a".into()], &same, &s),
            Offer::Cold(Reason::PoolNotFound, _)
        ));
        let mut spec = p.spec.template.as_spec();
        spec.env.insert("K".into(), "v".into());
        let other = Policy::default().sandbox(&spec).unwrap();
        match offer("p", Some(&p), &["a".into()], &other, &s) {
            Offer::Cold(Reason::PoolMismatch, m) => assert!(m.contains("spec.env"), "{m}"),
            o => panic!("{o:?}"),
        }
    }
}
