//! The Docker edge, through bollard. Thin: list, inspect, create, start, remove, events.
//!
//! Every query is scoped by the managed-by and instance labels, so one orchestrator never
//! sees (or removes) another instance's containers. The client negotiates the API version
//! with the engine, which matters on engines older than bollard's default (API 1.41 here).
//!
//! Every engine call made here is counted by operation when the runtime was given a counter
//! ([`Runtime::counting`]; `serve` gives it `mcpo_docker_calls_total{op}`).

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use prometheus::IntCounterVec;

use crate::domain::contract::{
    LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_SESSION, LABEL_STORE, MANAGED_BY,
};
use crate::domain::plan::{ContainerState, ExitInfo, Observed};
use crate::domain::reason::Reason;

/// Which part of a sandbox's stderr to read ([`Runtime::session_stderr`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Keep streaming new lines until the container stops (or the reader goes away).
    pub follow: bool,
    /// Only the last this many lines.
    pub tail: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// Docker failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached or answered with an error.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The image is not present locally (and this engine cannot pull).
    #[error("image {0:?} not found on the engine")]
    ImageNotFound(String),
    /// The container name is held by a container that is not this store's.
    #[error(
        "container name {name:?} is held by container {holder} of another store ({store}); \
         it is never removed automatically: give each Redis its own ORCHESTRATOR_INSTANCE, \
         or remove it with `mcp-orchestrator foreign --remove`"
    )]
    NameConflict {
        /// The container name.
        name: String,
        /// Short id of the container holding it.
        holder: String,
        /// The holder's store label (`none` when it has none).
        store: String,
    },
}

/// The first 12 characters of a container id, as Docker shows them.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl RuntimeError {
    /// A machine-readable reason for status and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            RuntimeError::ImageNotFound(_) => Reason::ImageNotFound,
            RuntimeError::NameConflict { .. } => Reason::NameConflict,
            RuntimeError::Docker(_) => Reason::DockerError,
        }
    }
}

fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A container lifecycle event for a managed container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    /// Session label of the container (empty for a warm-pool member).
    pub session: String,
    /// Pool label of the container, for a warm-pool member.
    pub pool: Option<String>,
    /// Docker's action (`die`, `destroy`, `oom`, `stop`, `kill`, `start`, `create`).
    pub action: String,
    /// Container id.
    pub id: String,
}

/// The operations [`Runtime`] counts, one label value each of `mcpo_docker_calls_total`.
pub const DOCKER_OPS: &[&str] = &[
    "ping", "list", "inspect", "create", "start", "remove", "kill", "stop", "events", "logs",
    "attach", "rename",
];

/// The Docker engine, scoped to one orchestrator instance.
#[derive(Clone)]
pub struct Runtime {
    docker: Docker,
    instance: String,
    /// Engine calls by operation (a shared handle; `None`: not counted).
    calls: Option<IntCounterVec>,
}

impl Runtime {
    /// Connect with the local defaults (DOCKER_HOST or the unix socket) and negotiate the API
    /// version with the engine.
    pub async fn connect(instance: &str) -> Result<Runtime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        Ok(Runtime {
            docker,
            instance: instance.to_string(),
            calls: None,
        })
    }

    /// Count every engine call this runtime (and every clone made from it afterwards) makes
    /// in `calls`, labelled by operation (one of [`DOCKER_OPS`]).
    pub fn counting(mut self, calls: IntCounterVec) -> Runtime {
        self.calls = Some(calls);
        self
    }

    /// One engine call of `op` is about to be made.
    fn count(&self, op: &'static str) {
        if let Some(c) = &self.calls {
            c.with_label_values(&[op]).inc();
        }
    }

    /// The underlying client (for tests). Calls made through it are not counted.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The instance this runtime is scoped to.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Is the engine answering?
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.count("ping");
        self.docker.ping().await?;
        Ok(())
    }

    fn filters(&self, session: Option<&str>) -> HashMap<String, Vec<String>> {
        self.filters_by(session.map(|s| (LABEL_SESSION, s)))
    }

    fn filters_by(&self, label: Option<(&str, &str)>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
            format!("{LABEL_INSTANCE}={}", self.instance),
        ];
        if let Some((k, v)) = label {
            labels.push(format!("{k}={v}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// The members of one warm pool (claimed or not; the claims are in the store), as a
    /// bulk list shows them (no inspect).
    pub async fn list_pool(&self, pool: &str) -> Result<Vec<Observed>, RuntimeError> {
        self.list_filtered(
            self.filters_by(Some((crate::domain::contract::LABEL_POOL, pool))),
            false,
        )
        .await
    }

    /// Managed containers of this instance (of one session when given), in any state. When
    /// `inspect` is set, each container is inspected for its authoritative state and exit
    /// details (one more call per container; the per-session reconcile does this, the bulk
    /// resync does not).
    pub async fn list(
        &self,
        session: Option<&str>,
        inspect: bool,
    ) -> Result<Vec<Observed>, RuntimeError> {
        self.list_filtered(self.filters(session), inspect).await
    }

    async fn list_filtered(
        &self,
        filters: HashMap<String, Vec<String>>,
        inspect: bool,
    ) -> Result<Vec<Observed>, RuntimeError> {
        self.count("list");
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::with_capacity(summaries.len());
        for c in summaries {
            let labels = c.labels.unwrap_or_default();
            let Some(id) = c.id else { continue };
            let state = match c.state {
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
                Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
                Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerSummaryStateEnum::REMOVING) => ContainerState::Removing,
                Some(ContainerSummaryStateEnum::DEAD) => ContainerState::Dead,
                _ => ContainerState::Exited,
            };
            let mut o = Observed {
                name: c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                session: labels.get(LABEL_SESSION).cloned().unwrap_or_default(),
                pool: labels.get(crate::domain::contract::LABEL_POOL).cloned(),
                spec_hash: labels
                    .get(crate::domain::contract::LABEL_SPEC_HASH)
                    .cloned(),
                generation: labels
                    .get(crate::domain::contract::LABEL_GENERATION)
                    .and_then(|g| g.parse().ok()),
                uid: labels.get(crate::domain::contract::LABEL_UID).cloned(),
                store: labels.get(crate::domain::contract::LABEL_STORE).cloned(),
                created: c.created.unwrap_or(0),
                state,
                exit: None,
                id,
            };
            if inspect {
                // Inspect takes the container's lock in the engine, so it never shows the
                // stale "running" a list can show right after a `die` event.
                match self.inspect(&o.id).await {
                    Ok(info) => {
                        if let Some(st) = info.state.as_ref().and_then(|s| s.status) {
                            o.state = match st {
                                ContainerStateStatusEnum::RUNNING => ContainerState::Running,
                                ContainerStateStatusEnum::CREATED => ContainerState::Created,
                                ContainerStateStatusEnum::PAUSED => ContainerState::Paused,
                                ContainerStateStatusEnum::RESTARTING => ContainerState::Restarting,
                                ContainerStateStatusEnum::REMOVING => ContainerState::Removing,
                                ContainerStateStatusEnum::DEAD => ContainerState::Dead,
                                _ => ContainerState::Exited,
                            };
                        }
                        if o.state == ContainerState::Exited {
                            o.exit = exit_info(&info);
                        }
                    }
                    Err(RuntimeError::Docker(e)) if status_code(&e) == Some(404) => continue,
                    Err(e) => return Err(e),
                }
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Container names (without the leading `/`) of this instance's managed containers, by id.
    pub async fn names(&self) -> Result<HashMap<String, String>, RuntimeError> {
        self.count("list");
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.filters(None)),
                ..Default::default()
            }))
            .await?;
        Ok(summaries
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.into_iter().next()?;
                Some((c.id?, name.trim_start_matches('/').to_string()))
            })
            .collect())
    }

    /// The stderr of the session's sandbox (its stdout is the MCP protocol stream and is
    /// never read here). Only containers of this store (`store`, the identity) made for this
    /// very session (its uid) count — never another store's, never an earlier session's of
    /// the same name: the one the status names if it is among them, else the newest. `None`
    /// when there is none. Stdout frames are dropped even if an engine sent them. `claimed`
    /// are the warm-pool members the store's claims give this session
    /// ([`crate::store::Store::claimed_by`]).
    pub async fn session_stderr(
        &self,
        session: &crate::domain::resource::Session,
        store: &str,
        claimed: &[String],
        query: &LogQuery,
    ) -> Result<
        Option<impl Stream<Item = Result<bytes::Bytes, RuntimeError>> + Send + use<>>,
        RuntimeError,
    > {
        let preferred = session.status.as_ref().and_then(|s| s.container_id.clone());
        let uid = session.metadata.uid.as_deref();
        let mut candidates = self.list(Some(session.name()), false).await?;
        // Warm-pool members it claimed carry their pool's labels: the claims vouch for them.
        for mut c in self.observe(claimed).await? {
            c.uid = uid.map(str::to_string);
            candidates.push(c);
        }
        let mut mine: Vec<Observed> = candidates
            .into_iter()
            .filter(|c| {
                crate::domain::plan::ownership(c, store, Some(session))
                    == crate::domain::plan::Ownership::Ours
                    && c.uid.as_deref() == uid
            })
            .collect();
        mine.sort_by_key(|c| std::cmp::Reverse(c.created));
        let preferred = preferred.as_deref();
        let Some(id) = preferred
            .and_then(|p| mine.iter().find(|c| c.id == p))
            .or(mine.first())
            .map(|c| c.id.clone())
        else {
            return Ok(None);
        };
        let mut options = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(false)
            .stderr(true)
            .follow(query.follow)
            .tail(&query.tail.map_or("all".to_string(), |n| n.to_string()));
        if let Some(since) = query.since {
            // The engine's API takes an i32 UNIX time: clamp, never wrap.
            let secs = since.timestamp().clamp(0, i64::from(i32::MAX));
            options = options.since(i32::try_from(secs).unwrap_or(i32::MAX));
        }
        self.count("logs");
        let stream = self
            .docker
            .logs(&id, Some(options.build()))
            .filter_map(|item| async move {
                match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => Some(Ok(message)),
                    Ok(_) => None,
                    Err(e) => Some(Err(RuntimeError::Docker(e))),
                }
            });
        Ok(Some(stream))
    }

    /// Full inspect of one container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        self.count("inspect");
        Ok(self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?)
    }

    /// Create a container under `name` and start it; returns its id. A leftover container of
    /// this instance holding the name (e.g. from a crash between remove and create) is
    /// removed first.
    pub async fn create_and_start(
        &self,
        name: &str,
        body: &ContainerCreateBody,
    ) -> Result<String, RuntimeError> {
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            })
        };
        self.count("create");
        let created = match self.docker.create_container(options(), body.clone()).await {
            Ok(c) => c,
            Err(e) if status_code(&e) == Some(409) => {
                // Name in use: if it is ours — this instance *and* this store, the identity
                // the body carries — it is stale (the planner saw no live match). Anything
                // else is never removed here: it may be another store's live sandbox.
                let info = self.inspect(name).await?;
                let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
                let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
                let store = body.labels.as_ref().and_then(|l| l.get(LABEL_STORE));
                // A warm-pool member (claimed ones take their session's name) is never
                // removed here: only its pool or its session's claim may.
                let ours = label(LABEL_INSTANCE) == Some(self.instance.as_str())
                    && label(LABEL_MANAGED_BY) == Some(MANAGED_BY)
                    && label(crate::domain::contract::LABEL_POOL).is_none()
                    && store.is_some()
                    && label(LABEL_STORE) == store.map(String::as_str);
                if !ours {
                    return Err(RuntimeError::NameConflict {
                        name: name.to_string(),
                        holder: info
                            .id
                            .as_deref()
                            .map(short_id)
                            .unwrap_or_default()
                            .to_string(),
                        store: label(LABEL_STORE).unwrap_or("none").to_string(),
                    });
                }
                self.remove(info.id.as_deref().unwrap_or(name)).await?;
                self.count("create");
                self.docker
                    .create_container(options(), body.clone())
                    .await?
            }
            Err(e) if status_code(&e) == Some(404) => {
                return Err(RuntimeError::ImageNotFound(
                    body.image.clone().unwrap_or_default(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.start(&created.id).await?;
        Ok(created.id)
    }

    /// Start a stopped container. Starting a running one is not an error.
    /// Returns whether this call started it (false: it was running already, and the engine
    /// sends no `start` event).
    pub async fn start(&self, id: &str) -> Result<bool, RuntimeError> {
        self.count("start");
        match self
            .docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status_code(&e) == Some(304) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Rename a container (a claimed warm-pool member takes its session's name). Returns
    /// false, changing nothing, when the name is taken.
    pub async fn rename(&self, id: &str, name: &str) -> Result<bool, RuntimeError> {
        self.count("rename");
        match self
            .docker
            .rename_container(
                id,
                bollard::query_parameters::RenameContainerOptions {
                    name: name.to_string(),
                },
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Inspect the given containers of this instance as [`Observed`] (gone ones are left
    /// out): how the controller sees the warm-pool members its sessions claimed.
    pub async fn observe(&self, ids: &[String]) -> Result<Vec<Observed>, RuntimeError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let info = match self.inspect(id).await {
                Ok(i) => i,
                Err(RuntimeError::Docker(e)) if status_code(&e) == Some(404) => continue,
                Err(e) => return Err(e),
            };
            let labels = info
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            if labels.get(LABEL_INSTANCE) != Some(&self.instance)
                || labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY)
            {
                continue;
            }
            let state = match info.state.as_ref().and_then(|s| s.status) {
                Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
                Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
                Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
                Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
                Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
                _ => ContainerState::Exited,
            };
            out.push(Observed {
                id: info.id.clone().unwrap_or_else(|| id.clone()),
                name: info
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                session: labels.get(LABEL_SESSION).cloned().unwrap_or_default(),
                pool: labels.get(crate::domain::contract::LABEL_POOL).cloned(),
                state,
                spec_hash: labels
                    .get(crate::domain::contract::LABEL_SPEC_HASH)
                    .cloned(),
                generation: labels
                    .get(crate::domain::contract::LABEL_GENERATION)
                    .and_then(|g| g.parse().ok()),
                uid: labels.get(crate::domain::contract::LABEL_UID).cloned(),
                store: labels.get(LABEL_STORE).cloned(),
                created: info
                    .created
                    .as_deref()
                    .and_then(|c| parse_time(Some(&c.to_string())))
                    .map(|t| t.timestamp())
                    .unwrap_or(0),
                exit: (state == ContainerState::Exited)
                    .then(|| exit_info(&info))
                    .flatten(),
            });
        }
        Ok(out)
    }

    /// Force-remove a container; one already gone is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.count("remove");
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            // 409: removal already in progress.
            Err(e) if status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Send a signal to a container's main process (chaos and tests).
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.count("kill");
        self.docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: signal.to_string(),
                }),
            )
            .await?;
        Ok(())
    }

    /// Stop a container (chaos and tests).
    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.count("stop");
        self.docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(1),
                    ..Default::default()
                }),
            )
            .await?;
        Ok(())
    }

    /// Attach to a container's stdin, stdout and stderr as a stream (no logs replayed): the
    /// MCP connection to a sandbox ([`crate::mcp::upstream`]).
    pub async fn attach(&self, id: &str) -> Result<AttachContainerResults, bollard::errors::Error> {
        self.count("attach");
        self.docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: false,
                    ..Default::default()
                }),
            )
            .await
    }

    /// Lifecycle events of this instance's managed containers. The stream ends or errors when
    /// the engine goes away; the caller reconnects and resyncs.
    pub fn events(&self) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + use<> {
        let mut filters = self.filters(None);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            [
                "die", "destroy", "oom", "stop", "kill", "start", "create", "pause",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        self.count("events");
        self.docker
            .events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .map(|r| {
                let m = r?;
                let actor = m.actor.unwrap_or_default();
                let attrs = actor.attributes.unwrap_or_default();
                Ok(ContainerEvent {
                    session: attrs.get(LABEL_SESSION).cloned().unwrap_or_default(),
                    pool: attrs.get(crate::domain::contract::LABEL_POOL).cloned(),
                    action: m.action.unwrap_or_default(),
                    id: actor.id.unwrap_or_default(),
                })
            })
    }
}

fn parse_time(s: Option<&String>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    // Docker reports "0001-01-01T00:00:00Z" for never.
    (t.timestamp() > 0).then_some(t)
}

/// Exit details of a stopped container, from inspect.
pub fn exit_info(info: &ContainerInspectResponse) -> Option<ExitInfo> {
    let state = info.state.as_ref()?;
    if state.running == Some(true) {
        return None;
    }
    let finished_at = parse_time(state.finished_at.as_ref())?;
    Some(ExitInfo {
        code: state.exit_code.unwrap_or(-1),
        started_at: parse_time(state.started_at.as_ref()).unwrap_or(finished_at),
        finished_at,
        oom_killed: state.oom_killed.unwrap_or(false),
    })
}

/// A short JSON summary of a container for `describe` and the API: name, image, state,
/// times, exit code and the contract-relevant settings.
pub fn summary(info: &ContainerInspectResponse) -> serde_json::Value {
    let state = info.state.clone().unwrap_or_default();
    let host = info.host_config.clone().unwrap_or_default();
    let cfg = info.config.clone().unwrap_or_default();
    serde_json::json!({
        "id": info.id,
        "name": info.name.clone().unwrap_or_default().trim_start_matches('/'),
        "image": cfg.image,
        "state": state.status.map(|s| s.to_string()),
        "running": state.running,
        "startedAt": state.started_at,
        "finishedAt": state.finished_at,
        "exitCode": state.exit_code,
        "oomKilled": state.oom_killed,
        "user": cfg.user,
        "networkMode": host.network_mode,
        "readonlyRootfs": host.readonly_rootfs,
        "capDrop": host.cap_drop,
        "securityOpt": host.security_opt,
        "memory": host.memory,
        "nanoCpus": host.nano_cpus,
        "pidsLimit": host.pids_limit,
    })
}
