//! The sandbox contract, enforced here and nowhere else.
//!
//! [`Policy::sandbox`] turns a [`SessionSpec`] into a [`Sandbox`] — resolved limits, user,
//! command and env — or into the list of what the spec asked for that the contract forbids.
//! [`Sandbox::container_body`] then builds the Docker create body with every hardening setting
//! fixed: no spec field can reach `HostConfig` except through the resolved, capped values.
//! Both the admission path (CLI, API, specs directory) and the reconciler call this module, so
//! a policy change after a session was stored still stops it from running.
//!
//! No IO happens here.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy as DockerRestart};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::limits::{self, echo};
use crate::domain::reason::Reason;
use crate::domain::resource::{Quantity, SessionSpec};

/// Label carrying the session name.
pub const LABEL_SESSION: &str = "orchestrator.mcp.dev/session";
/// Label marking containers this program manages.
pub const LABEL_MANAGED_BY: &str = "orchestrator.mcp.dev/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "mcp-orchestrator";
/// Label carrying the hash of the resolved container configuration.
pub const LABEL_SPEC_HASH: &str = "orchestrator.mcp.dev/spec-hash";
/// Label carrying the session generation the container was built from.
pub const LABEL_GENERATION: &str = "orchestrator.mcp.dev/generation";
/// Label carrying the orchestrator instance, so several instances (or test runs) can share
/// one engine without touching each other's containers.
pub const LABEL_INSTANCE: &str = "orchestrator.mcp.dev/instance";
/// Label carrying the session uid, so a deleted and re-created session gets a new container.
pub const LABEL_UID: &str = "orchestrator.mcp.dev/uid";
/// Label carrying the identity of the store the session lives in (see
/// [`crate::store::Store::identity`]): only containers of the same instance *and* store are
/// ever adopted or removed automatically.
pub const LABEL_STORE: &str = "orchestrator.mcp.dev/store";
/// Label naming the warm pool a sandbox was made for (pool members carry it and no
/// [`LABEL_SESSION`]; a claimed member keeps it, its session is recorded in the store).
pub const LABEL_POOL: &str = "orchestrator.mcp.dev/pool";

/// Bumped whenever the fixed hardening below changes, so existing containers get recreated.
const CONTRACT_VERSION: &str = "2";

/// Log driver of every sandbox: set here, never left to the engine's default (which may
/// keep logs without bound).
pub const LOG_DRIVER: &str = "json-file";
/// Largest size of one sandbox log file.
pub const LOG_MAX_SIZE: &str = "10m";
/// Number of sandbox log files kept.
pub const LOG_MAX_FILES: &str = "3";
/// Open-files limit (soft and hard) inside every sandbox.
pub const NOFILE: i64 = 1024;

/// Configurable bounds of the contract. The hardening itself is not configurable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Image patterns (see [`ImagePattern`]), matched against the parsed, normalised image
    /// reference. Default `mcp-server:*`: repository `mcp-server` on the default registry,
    /// any tag, no digest.
    pub allowed_images: Vec<String>,
    /// Memory limit when the spec sets none, in bytes.
    pub default_memory: i64,
    /// Largest memory limit a spec may ask for, in bytes.
    pub max_memory: i64,
    /// CPU limit when the spec sets none, in nano-CPUs.
    pub default_nano_cpus: i64,
    /// Largest CPU limit a spec may ask for, in nano-CPUs.
    pub max_nano_cpus: i64,
    /// Pids limit when the spec sets none.
    pub default_pids: i64,
    /// Largest pids limit a spec may ask for.
    pub max_pids: i64,
    /// The non-root user sandboxes run as unless the spec names another non-root uid.
    pub default_user: String,
    /// Size of the tmpfs mounted on /tmp.
    pub tmp_size: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: vec!["mcp-server:*".into()],
            default_memory: 256 * 1024 * 1024,
            max_memory: 2 * 1024 * 1024 * 1024,
            default_nano_cpus: 500_000_000,
            max_nano_cpus: 2_000_000_000,
            default_pids: 128,
            max_pids: 1024,
            default_user: "65534:65534".into(),
            tmp_size: "64m".into(),
        }
    }
}

/// The policy a `serve` admits with, as it publishes it (in the store and at
/// `GET /api/v1/policy`) so that every CLI admits with the same one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPolicy {
    /// The policy.
    pub policy: Policy,
    /// Who published it (`serve` on which host, which process).
    pub publisher: String,
    /// The orchestrator instance of the publisher (names its containers).
    #[serde(default)]
    pub instance: String,
    /// When.
    pub published_at: chrono::DateTime<chrono::Utc>,
}

impl PublishedPolicy {
    /// Check a policy read from outside (the store, the API) before it is used: the
    /// allowlist patterns parse and the numbers are in range.
    pub fn checked(self) -> Result<PublishedPolicy, String> {
        let p = &self.policy;
        self.policy.check_patterns()?;
        let positive = [
            p.default_memory,
            p.max_memory,
            p.default_nano_cpus,
            p.max_nano_cpus,
            p.default_pids,
            p.max_pids,
        ];
        if positive.iter().any(|v| *v <= 0)
            || p.default_memory > p.max_memory
            || p.default_nano_cpus > p.max_nano_cpus
            || p.default_pids > p.max_pids
            || p.allowed_images.len() > crate::domain::limits::MAX_ALLOWED_IMAGES
        {
            return Err("the published policy is out of range".into());
        }
        Ok(self)
    }
}

/// One thing a spec asked for that is invalid or outside the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Field path, e.g. `spec.resources.memory`.
    pub path: String,
    /// Machine-readable reason, e.g. `ImageNotAllowed`.
    pub reason: Reason,
    /// What is wrong, in one line.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The resolved sandbox: what the container will be, after defaults and caps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sandbox {
    /// Image reference, normalised with a tag.
    pub image: String,
    /// Replacement command, empty for the image default.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Memory limit in bytes.
    pub memory: i64,
    /// CPU limit in nano-CPUs.
    pub nano_cpus: i64,
    /// Pids limit.
    pub pids: i64,
    /// `uid[:gid]`, never root.
    pub user: String,
    /// tmpfs size for /tmp.
    pub tmp_size: String,
    /// The session's restart marker: not part of the container, but of its hash, so a new
    /// marker recreates the sandbox. `None` leaves the hash as it always was.
    pub restart_marker: Option<String>,
}

/// Identity of the container to build: which session, which instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity<'a> {
    /// Orchestrator instance.
    pub instance: &'a str,
    /// Session name.
    pub session: &'a str,
    /// Session uid.
    pub uid: &'a str,
    /// Session generation.
    pub generation: i64,
    /// Identity of the store the session lives in.
    pub store: &'a str,
}

/// Identity of a warm-pool member to build: which pool, which instance.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolIdentity<'a> {
    /// Orchestrator instance.
    pub instance: &'a str,
    /// Pool name.
    pub pool: &'a str,
    /// Pool uid (carried in [`LABEL_UID`] until a session claims the member).
    pub uid: &'a str,
    /// Pool generation.
    pub generation: i64,
    /// Identity of the store the pool lives in.
    pub store: &'a str,
}

/// The name of a warm-pool member: `mcp-pool.<pool>.<suffix>` for the default instance,
/// `mcp-<instance>.pool.<pool>.<suffix>` otherwise. The dots keep it apart from every
/// session's [`container_name`] (session names have none).
pub fn pool_container_name(instance: &str, pool: &str, suffix: &str) -> String {
    if instance == "default" {
        format!("mcp-pool.{pool}.{suffix}")
    } else {
        format!("mcp-{instance}.pool.{pool}.{suffix}")
    }
}

/// The predictable container name of a session: `mcp-<session>` for the default instance,
/// `mcp-<instance>.<session>` otherwise. Instances and sessions are DNS-1123 labels (no
/// `.`), so two instances can never want the same name.
pub fn container_name(instance: &str, session: &str) -> String {
    if instance == "default" {
        format!("mcp-{session}")
    } else {
        format!("mcp-{instance}.{session}")
    }
}

/// Is `instance` a usable orchestrator instance name (a DNS-1123 label of at most 32
/// characters: it goes into Redis keys, labels and container names)?
pub fn validate_instance(instance: &str) -> Result<(), String> {
    if instance.len() <= 32 && crate::domain::admission::is_dns1123_label(instance) {
        Ok(())
    } else {
        Err(format!(
            "instance {:?} must be a DNS-1123 label of at most 32 characters (lowercase \
             alphanumerics and '-')",
            instance.escape_debug().to_string()
        ))
    }
}

impl Policy {
    /// Check a spec against the contract and resolve it. Returns every violation found.
    pub fn sandbox(&self, spec: &SessionSpec) -> Result<Sandbox, Vec<Violation>> {
        let mut v = Vec::new();
        let mut bad = |path: &str, reason: Reason, message: String| {
            v.push(Violation {
                path: path.to_string(),
                reason,
                message,
            })
        };

        let image = match ImageRef::parse(&spec.image) {
            Err(msg) => {
                bad("spec.image", Reason::Invalid, msg);
                String::new()
            }
            Ok(r) => {
                if !self
                    .allowed_images
                    .iter()
                    .filter_map(|p| ImagePattern::parse(p).ok())
                    .any(|p| p.matches(&r))
                {
                    bad(
                        "spec.image",
                        Reason::ImageNotAllowed,
                        format!(
                            "image {} is not in the allowlist ({}); it names {}",
                            echo(&spec.image),
                            self.allowed_images.join(", "),
                            r.normalised()
                        ),
                    );
                }
                r.engine_ref()
            }
        };
        if spec.privileged == Some(true) {
            bad(
                "spec.privileged",
                Reason::ContractViolation,
                "privileged sandboxes are not allowed by the sandbox contract".into(),
            );
        }
        if let Some(mode) = &spec.network_mode
            && mode != "none"
        {
            bad(
                "spec.networkMode",
                Reason::ContractViolation,
                format!(
                    "network mode {} is not allowed: sandboxes have no network (only \"none\")",
                    echo(mode)
                ),
            );
        }
        let user = match &spec.user {
            None => self.default_user.clone(),
            Some(u) => match parse_user(u) {
                Ok(()) => u.clone(),
                Err(msg) => {
                    bad("spec.user", Reason::ContractViolation, msg);
                    self.default_user.clone()
                }
            },
        };
        for (i, arg) in spec.command.iter().enumerate() {
            if arg.contains('\0') {
                bad(
                    &format!("spec.command[{i}]"),
                    Reason::Invalid,
                    "must not contain NUL".into(),
                );
            }
        }
        for (k, val) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || val.contains('\0') {
                bad(
                    &format!("spec.env.{k}"),
                    Reason::Invalid,
                    "environment names must be non-empty and contain no '=' or NUL".into(),
                );
            }
        }

        let memory = match &spec.resources.memory {
            None => self.default_memory,
            Some(q) => match parse_memory(q) {
                Ok(m) if m < limits::MIN_MEMORY_BYTES => {
                    bad(
                        "spec.resources.memory",
                        Reason::OutOfRange,
                        format!(
                            "{} is below the 6Mi minimum (the engine refuses less)",
                            shown(q)
                        ),
                    );
                    self.default_memory
                }
                Ok(m) if m > self.max_memory => {
                    bad(
                        "spec.resources.memory",
                        Reason::ContractViolation,
                        format!(
                            "{} exceeds the maximum of {} bytes",
                            shown(q),
                            self.max_memory
                        ),
                    );
                    self.default_memory
                }
                Ok(m) => m,
                Err(msg) => {
                    bad("spec.resources.memory", Reason::Invalid, msg);
                    self.default_memory
                }
            },
        };
        let nano_cpus = match &spec.resources.cpus {
            None => self.default_nano_cpus,
            Some(q) => match parse_cpus(q) {
                Ok(c) if c > self.max_nano_cpus => {
                    bad(
                        "spec.resources.cpus",
                        Reason::ContractViolation,
                        format!(
                            "{} exceeds the maximum of {} cpus",
                            shown(q),
                            self.max_nano_cpus as f64 / 1e9
                        ),
                    );
                    self.default_nano_cpus
                }
                Ok(c) => c,
                Err(msg) => {
                    bad("spec.resources.cpus", Reason::Invalid, msg);
                    self.default_nano_cpus
                }
            },
        };
        let pids = match spec.resources.pids {
            None => self.default_pids,
            Some(p) if p < limits::MIN_PIDS => {
                bad(
                    "spec.resources.pids",
                    Reason::OutOfRange,
                    format!("{p} must be at least {}", limits::MIN_PIDS),
                );
                self.default_pids
            }
            Some(p) if p > self.max_pids => {
                bad(
                    "spec.resources.pids",
                    Reason::ContractViolation,
                    format!("{p} exceeds the maximum of {}", self.max_pids),
                );
                self.default_pids
            }
            Some(p) => p,
        };
        if !v.is_empty() {
            return Err(v);
        }
        Ok(Sandbox {
            image,
            command: spec.command.clone(),
            env: spec.env.clone(),
            memory,
            nano_cpus,
            pids,
            user,
            tmp_size: self.tmp_size.clone(),
            restart_marker: None,
        })
    }

    /// [`Policy::sandbox`] for a whole session: its spec plus its restart marker (see
    /// [`crate::domain::resource::RESTARTED_AT_ANNOTATION`]). What the planner and `diff` use.
    pub fn session_sandbox(
        &self,
        session: &crate::domain::resource::Session,
    ) -> Result<Sandbox, Vec<Violation>> {
        let mut sb = self.sandbox(&session.spec)?;
        sb.restart_marker = session.restarted_at().map(str::to_string);
        Ok(sb)
    }
}

impl Sandbox {
    /// The Docker create body, with the whole hardening contract applied. Labels identify the
    /// session; the spec-hash label covers everything else in the body.
    pub fn container_body(&self, id: &Identity<'_>) -> ContainerCreateBody {
        self.labelled_body([
            (LABEL_SESSION, id.session.to_string()),
            (LABEL_INSTANCE, id.instance.to_string()),
            (LABEL_GENERATION, id.generation.to_string()),
            (LABEL_UID, id.uid.to_string()),
            (LABEL_STORE, id.store.to_string()),
        ])
    }

    /// The Docker create body of a warm-pool member: the same contract and spec hash as a
    /// session's sandbox of the same settings, labelled with the pool instead of a session.
    pub fn pool_body(&self, id: &PoolIdentity<'_>) -> ContainerCreateBody {
        self.labelled_body([
            (LABEL_POOL, id.pool.to_string()),
            (LABEL_INSTANCE, id.instance.to_string()),
            (LABEL_GENERATION, id.generation.to_string()),
            (LABEL_UID, id.uid.to_string()),
            (LABEL_STORE, id.store.to_string()),
        ])
    }

    fn labelled_body(&self, owner: [(&str, String); 5]) -> ContainerCreateBody {
        let mut body = self.unlabelled_body();
        let hash = hash_body(&body, self.restart_marker.as_deref());
        let mut labels: HashMap<String, String> =
            owner.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
        labels.insert(LABEL_SPEC_HASH.to_string(), hash);
        body.labels = Some(labels);
        body
    }

    /// The session-spec fields in which `other` differs from this sandbox (empty: the same
    /// container), for telling a user why a warm pool could not serve a session.
    pub fn differences(&self, other: &Sandbox) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.image != other.image {
            d.push("spec.image");
        }
        if self.command != other.command {
            d.push("spec.command");
        }
        if self.env != other.env {
            d.push("spec.env");
        }
        if self.memory != other.memory
            || self.nano_cpus != other.nano_cpus
            || self.pids != other.pids
        {
            d.push("spec.resources");
        }
        if self.user != other.user {
            d.push("spec.user");
        }
        if self.restart_marker != other.restart_marker {
            d.push("a restart (it needs a new sandbox)");
        }
        if d.is_empty() && self.spec_hash() != other.spec_hash() {
            d.push("the sandbox settings");
        }
        d
    }

    /// The hash that [`LABEL_SPEC_HASH`] carries for this sandbox.
    pub fn spec_hash(&self) -> String {
        hash_body(&self.unlabelled_body(), self.restart_marker.as_deref())
    }

    fn unlabelled_body(&self) -> ContainerCreateBody {
        // The tmpfs belongs to the sandbox user. Without uid/gid, an engine restarting the
        // same container (Docker 20.10) copies the root-owned 0755 mount point onto the new
        // tmpfs and /tmp becomes unwritable after the first restart.
        let mut ids = self.user.splitn(2, ':');
        let uid = ids.next().unwrap_or("65534");
        let gid = ids.next().unwrap_or(uid);
        let tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!(
                "rw,nosuid,nodev,noexec,mode=1777,uid={uid},gid={gid},size={}",
                self.tmp_size
            ),
        )]);
        let host = HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: None,
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            privileged: Some(false),
            memory: Some(self.memory),
            memory_swap: Some(self.memory),
            nano_cpus: Some(self.nano_cpus),
            pids_limit: Some(self.pids),
            binds: None,
            mounts: None,
            devices: None,
            ipc_mode: Some("private".into()),
            pid_mode: None,
            userns_mode: None,
            publish_all_ports: Some(false),
            restart_policy: Some(DockerRestart {
                name: Some(bollard::models::RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(false),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some(LOG_DRIVER.into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), LOG_MAX_FILES.to_string()),
                ])),
            }),
            ulimits: Some(vec![bollard::models::ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(NOFILE),
                hard: Some(NOFILE),
            }]),
            ..HostConfig::default()
        };
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            env: Some(env),
            user: Some(self.user.clone()),
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            network_disabled: Some(true),
            host_config: Some(host),
            ..ContainerCreateBody::default()
        }
    }
}

fn hash_body(body: &ContainerCreateBody, restart_marker: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(CONTRACT_VERSION.as_bytes());
    // The body holds hash maps (tmpfs, log options): hash a canonical form, keys sorted.
    let value = serde_json::to_value(body).unwrap_or_default();
    h.update(canonical_json(&value).as_bytes());
    if let Some(m) = restart_marker {
        h.update(b"\0restartedAt=");
        h.update(m.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// JSON text with every object's keys sorted, whatever map type produced it.
fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, canonical_json(v))).collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// A parsed image reference, normalised the way the Docker engine reads it: the default
/// registry `docker.io`, `library/` for single-component names on it, tag `latest` when
/// neither a tag nor a digest is given. Parsing is done by `oci-spec`'s distribution
/// reference parser (the grammar of distribution/reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (and port), e.g. `docker.io`, `registry.local:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/mcp-server`, `team/tool`.
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if any.
    pub digest: Option<String>,
}

/// The Docker Hub registry, where references without a registry host point.
const DEFAULT_REGISTRY: &str = "docker.io";
/// The Docker Hub namespace of single-component names.
const OFFICIAL_NAMESPACE: &str = "library/";

impl ImageRef {
    /// Parse and normalise a reference. The error is one line naming what is wrong.
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        if image.is_empty() {
            return Err("must not be empty".into());
        }
        if image.len() > limits::MAX_IMAGE_BYTES {
            return Err(format!("is longer than {} bytes", limits::MAX_IMAGE_BYTES));
        }
        let r = oci_spec::distribution::Reference::try_from(image).map_err(|e| {
            format!(
                "{} is not a valid image reference: {e} (expected [REGISTRY/]REPOSITORY[:TAG][@DIGEST])",
                echo(image)
            )
        })?;
        Ok(ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    fn with_suffix(&self, mut name: String) -> String {
        if let Some(t) = &self.tag {
            name.push(':');
            name.push_str(t);
        }
        if let Some(d) = &self.digest {
            name.push('@');
            name.push_str(d);
        }
        name
    }

    /// The fully qualified form, e.g. `docker.io/library/mcp-server:latest`.
    pub fn normalised(&self) -> String {
        self.with_suffix(format!("{}/{}", self.registry, self.repository))
    }

    /// The form handed to the engine: the familiar short form on the default registry
    /// (`mcp-server:latest`, `team/tool:1`), the full form elsewhere. It names the same image
    /// as [`ImageRef::normalised`].
    pub fn engine_ref(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix(OFFICIAL_NAMESPACE)
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        self.with_suffix(name)
    }
}

/// An allowlist pattern, parsed like a reference: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`
/// where `*` matches any run of characters within one part (a registry, one path segment, a
/// tag, a digest) and never a `/`. `mcp-server:*` is repository `library/mcp-server` on
/// `docker.io`, any tag; a reference with a digest matches only a pattern that has one
/// (`mcp-server@*`, `mcp-server@sha256:…`). A pattern with neither tag nor digest means tag
/// `latest`. `*` alone allows every image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    any: bool,
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImagePattern {
    /// Parse a pattern; the error is one line naming what is wrong.
    pub fn parse(pattern: &str) -> Result<ImagePattern, String> {
        let pattern = pattern.trim();
        if pattern == "*" {
            return Ok(ImagePattern {
                any: true,
                registry: String::new(),
                repository: String::new(),
                tag: None,
                digest: None,
            });
        }
        let (rest, digest) = match pattern.rsplit_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (pattern, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        // Check the syntax with the reference parser, every `*` standing for a valid part.
        let mut probe = name.replace('*', "x");
        if let Some(t) = &tag {
            probe.push(':');
            probe.push_str(&t.replace('*', "x"));
        }
        if let Some(d) = &digest {
            probe.push('@');
            probe.push_str(&match d.as_str() {
                "*" | "sha256:*" => format!("sha256:{}", "0".repeat(64)),
                "sha384:*" => format!("sha384:{}", "0".repeat(96)),
                "sha512:*" => format!("sha512:{}", "0".repeat(128)),
                d if d.contains('*') => {
                    return Err(format!(
                        "image pattern {}: a digest pattern is `*`, `ALGORITHM:*` or a whole digest",
                        echo(pattern)
                    ));
                }
                d => d.to_string(),
            });
        }
        oci_spec::distribution::Reference::try_from(probe.as_str())
            .map_err(|e| format!("image pattern {} is not valid: {e}", echo(pattern)))?;
        // The same registry split as the reference parser (distribution's splitDockerDomain).
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
        }
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("{OFFICIAL_NAMESPACE}{repository}");
        }
        Ok(ImagePattern {
            any: false,
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Does the parsed reference match?
    pub fn matches(&self, r: &ImageRef) -> bool {
        if self.any {
            return true;
        }
        let segments = |p: &str, t: &str| {
            let (p, t): (Vec<&str>, Vec<&str>) = (p.split('/').collect(), t.split('/').collect());
            p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| glob_match(p, t))
        };
        if !glob_match(&self.registry, &r.registry) || !segments(&self.repository, &r.repository) {
            return false;
        }
        match (&r.digest, &self.digest) {
            (Some(_), None) => return false,
            (Some(d), Some(p)) if !glob_match(p, d) => return false,
            _ => {}
        }
        match (&r.tag, &self.tag) {
            (Some(t), Some(p)) => glob_match(p, t),
            // A digest-only pattern pins by digest; the tag does not matter.
            (Some(_), None) => r.digest.is_some(),
            (None, _) => r.digest.is_some() && self.digest.is_some(),
        }
    }
}

impl Policy {
    /// Check every allowlist pattern (for configuration errors at start-up).
    pub fn check_patterns(&self) -> Result<(), String> {
        for p in &self.allowed_images {
            ImagePattern::parse(p)?;
        }
        Ok(())
    }
}

/// `*` matches any run of characters; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn parse_user(user: &str) -> Result<(), String> {
    let mut it = user.splitn(2, ':');
    let uid = it.next().unwrap_or_default();
    let gid = it.next();
    let uid: u32 = uid
        .parse()
        .map_err(|_| format!("{} must be a numeric uid or uid:gid", echo(user)))?;
    if uid == 0 {
        return Err("root (uid 0) is not allowed: sandboxes run as a non-root user".into());
    }
    if let Some(g) = gid {
        let g: u32 = g
            .parse()
            .map_err(|_| format!("{} must be a numeric uid or uid:gid", echo(user)))?;
        if g == 0 {
            return Err("gid 0 is not allowed: sandboxes run as a non-root group".into());
        }
    }
    Ok(())
}

/// A quantity as written, for messages: unquoted, control characters escaped, cut.
fn shown(q: &Quantity) -> String {
    limits::escape_max(&q.to_string(), limits::MAX_ECHO_CHARS)
}

/// Parse a Kubernetes memory quantity (`256Mi`, `1G`, `1048576`) into bytes.
pub fn parse_memory(q: &Quantity) -> Result<i64, String> {
    let text = match q {
        Quantity::Number(n) if !n.is_finite() => {
            return Err(format!("{n} is not a finite number"));
        }
        Quantity::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < i64::MAX as f64 => {
            return Ok(*n as i64);
        }
        Quantity::Number(n) if *n >= i64::MAX as f64 => return Err(format!("{n} is too large")),
        Quantity::Number(n) => return Err(format!("{n} is not a whole number of bytes")),
        Quantity::Text(s) => s.trim(),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{} is not a memory quantity (use e.g. 256Mi, 1Gi, 512M)",
                echo(text)
            ));
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        format!(
            "{} is not a memory quantity (use e.g. 256Mi, 1Gi, 512M)",
            echo(text)
        )
    })?;
    let bytes = n * mult;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(format!("{} is too large", echo(text)));
    }
    Ok(bytes as i64)
}

/// Parse a CPU quantity (`0.5`, `"0.5"`, `500m`) into nano-CPUs.
pub fn parse_cpus(q: &Quantity) -> Result<i64, String> {
    let not_cpus = |s: &str| format!("{} is not a CPU quantity (use e.g. 0.5 or 500m)", echo(s));
    let cores = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(s) => {
            let s = s.trim();
            // Only plain decimals: Rust would also read "inf", "NaN" and "1e400".
            let digits = s.strip_suffix('m').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(not_cpus(s));
            }
            if let Some(m) = s.strip_suffix('m') {
                m.parse::<f64>()
                    .map(|m| m / 1000.0)
                    .map_err(|_| not_cpus(s))?
            } else {
                s.parse::<f64>().map_err(|_| not_cpus(s))?
            }
        }
    };
    let shown = shown(q);
    if !cores.is_finite() {
        return Err(format!("{shown} is not a finite number"));
    }
    if cores < 0.01 {
        return Err(format!("{shown} must be at least 0.01 cpus"));
    }
    if cores > 1024.0 {
        return Err(format!("{shown} is too large"));
    }
    Ok((cores * 1e9).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::resource::Resources;

    fn spec(image: &str) -> SessionSpec {
        SessionSpec {
            image: image.into(),
            ..SessionSpec::default()
        }
    }

    #[test]
    fn defaults_and_hardening() {
        let p = Policy::default();
        let sb = p.sandbox(&spec("mcp-server")).unwrap();
        assert_eq!(sb.image, "mcp-server:latest");
        let body = sb.container_body(&Identity {
            instance: "default",
            session: "demo",
            uid: "u1",
            generation: 3,
            store: "s1",
        });
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.memory, Some(256 * 1024 * 1024));
        assert_eq!(host.pids_limit, Some(128));
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.open_stdin, Some(true));
        assert_eq!(body.tty, Some(false));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_SESSION], "demo");
        assert_eq!(labels[LABEL_GENERATION], "3");
        assert_eq!(labels[LABEL_SPEC_HASH], sb.spec_hash());
        assert_eq!(labels[LABEL_STORE], "s1");
        let log = host.log_config.as_ref().unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.as_ref().unwrap()["max-size"], "10m");
        let ulimits = host.ulimits.as_ref().unwrap();
        assert_eq!(ulimits[0].name.as_deref(), Some("nofile"));
        assert_eq!(ulimits[0].hard, Some(1024));
    }

    #[test]
    fn violations_are_all_reported_with_paths() {
        let p = Policy::default();
        let mut s = spec("alpine:3");
        s.privileged = Some(true);
        s.network_mode = Some("host".into());
        s.user = Some("0".into());
        s.resources = Resources {
            memory: Some(Quantity::Text("64Gi".into())),
            cpus: Some(Quantity::Text("lots".into())),
            pids: Some(100_000),
        };
        let v = p.sandbox(&s).unwrap_err();
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.image",
                "spec.privileged",
                "spec.networkMode",
                "spec.user",
                "spec.resources.memory",
                "spec.resources.cpus",
                "spec.resources.pids"
            ]
        );
        assert_eq!(v[0].reason, "ImageNotAllowed");
    }

    #[test]
    fn hash_changes_with_spec_only() {
        let p = Policy::default();
        let a = p.sandbox(&spec("mcp-server:1")).unwrap();
        let mut s = spec("mcp-server:1");
        s.env.insert("A".into(), "1".into());
        let b = p.sandbox(&s).unwrap();
        assert_ne!(a.spec_hash(), b.spec_hash());
        assert_eq!(
            a.spec_hash(),
            p.sandbox(&spec("mcp-server:1")).unwrap().spec_hash()
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(
            parse_memory(&Quantity::Text("256Mi".into())),
            Ok(268_435_456)
        );
        assert_eq!(
            parse_memory(&Quantity::Text("1G".into())),
            Ok(1_000_000_000)
        );
        assert_eq!(parse_memory(&Quantity::Number(1024.0)), Ok(1024));
        assert!(parse_memory(&Quantity::Text("1XB".into())).is_err());
        assert_eq!(parse_cpus(&Quantity::Text("0.5".into())), Ok(500_000_000));
        assert_eq!(parse_cpus(&Quantity::Text("250m".into())), Ok(250_000_000));
        assert_eq!(parse_cpus(&Quantity::Number(2.0)), Ok(2_000_000_000));
        assert!(parse_cpus(&Quantity::Number(0.0)).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("mcp-server:*", "mcp-server:latest"));
        assert!(!glob_match("mcp-server:*", "evil/mcp-server:latest"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("reg:5000/*/x:*", "reg:5000/a/b/x:1"));
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_references_are_parsed_and_normalised() {
        for (image, normalised, engine) in [
            (
                "mcp-server",
                "docker.io/library/mcp-server:latest",
                "mcp-server:latest",
            ),
            (
                "mcp-server:latest",
                "docker.io/library/mcp-server:latest",
                "mcp-server:latest",
            ),
            (
                "docker.io/library/mcp-server:1",
                "docker.io/library/mcp-server:1",
                "mcp-server:1",
            ),
            (
                "index.docker.io/library/mcp-server:1",
                "docker.io/library/mcp-server:1",
                "mcp-server:1",
            ),
            ("team/tool:2", "docker.io/team/tool:2", "team/tool:2"),
            ("reg:5000/img", "reg:5000/img:latest", "reg:5000/img:latest"),
            ("localhost/img:1", "localhost/img:1", "localhost/img:1"),
            (
                "mcp-server:5000/evil:latest",
                "mcp-server:5000/evil:latest",
                "mcp-server:5000/evil:latest",
            ),
        ] {
            let r = ImageRef::parse(image).unwrap();
            assert_eq!(r.normalised(), normalised, "{image}");
            assert_eq!(r.engine_ref(), engine, "{image}");
        }
        let pinned = format!("mcp-server@{DIGEST}");
        let r = ImageRef::parse(&pinned).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (None, Some(DIGEST))
        );
        assert_eq!(r.engine_ref(), pinned);
        for bad in [
            "",
            "mcp-server:*",
            "mcp-server:",
            "mcp-server:latest:latest",
            "mcp-server:../../x",
            "MCP-server:1",
            " mcp-server:1",
            "mcp-server:1\n",
            "mcp-server@sha256:ab",
            "mcp-server@md5:0123456789abcdef0123456789abcdef",
            "/mcp-server",
            "mcp-server//x",
            "mcp-server:1\u{0}",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(!e.chars().any(char::is_control), "{e:?}");
        }
        assert!(
            ImageRef::parse(&"a".repeat(600))
                .unwrap_err()
                .contains("longer than 512")
        );
    }

    #[test]
    fn allowlist_matches_parsed_references_not_strings() {
        let allowed = |pattern: &str, image: &str| {
            let p = ImagePattern::parse(pattern).unwrap();
            p.matches(&ImageRef::parse(image).unwrap())
        };
        let pinned = format!("mcp-server@{DIGEST}");
        let tagged_pinned = format!("mcp-server:1@{DIGEST}");
        let cases: Vec<(&str, &str, bool)> = vec![
            // The bypasses of issue 9: a registry host named `mcp-server`.
            ("mcp-server:*", "mcp-server:5000/evil:latest", false),
            (
                "mcp-server:*",
                "mcp-server:443/library/alpine:latest",
                false,
            ),
            ("mcp-server:*", "mcp-server:80/x", false),
            ("mcp-server:*", "mcp-server.evil.com/mcp-server:1", false),
            ("mcp-server:*", "evil/mcp-server:latest", false),
            ("mcp-server:*", "localhost/mcp-server:1", false),
            ("mcp-server:*", "mcp-server-evil:1", false),
            ("mcp-server:*", "mcp-server/evil:1", false),
            // Normal cases.
            ("mcp-server:*", "mcp-server", true),
            ("mcp-server:*", "mcp-server:latest", true),
            ("mcp-server:*", "mcp-server:1.2.3", true),
            ("mcp-server:*", "docker.io/library/mcp-server:1", true),
            ("mcp-server:*", "index.docker.io/library/mcp-server:1", true),
            // Digests only when the pattern says so.
            ("mcp-server:*", &pinned, false),
            ("mcp-server:*", &tagged_pinned, false),
            ("mcp-server@*", &pinned, true),
            ("mcp-server@*", &tagged_pinned, true),
            ("mcp-server@*", "mcp-server:1", false),
            ("mcp-server:*@*", &pinned, true),
            ("mcp-server:*@*", "mcp-server:1", true),
            ("mcp-server@sha256:*", &pinned, true),
            (&pinned, &pinned, true),
            // Without a tag a pattern means `latest`.
            ("mcp-server", "mcp-server", true),
            ("mcp-server", "mcp-server:1", false),
            // Wildcards stay within one part.
            (
                "registry.local:5000/team/*:*",
                "registry.local:5000/team/tool:1",
                true,
            ),
            (
                "registry.local:5000/team/*:*",
                "registry.local:5000/team/a/b:1",
                false,
            ),
            (
                "registry.local:5000/team/*:*",
                "registry.local:5001/team/tool:1",
                false,
            ),
            ("registry.local:5000/team/*:*", "team/tool:1", false),
            ("mcp-server:v1.*", "mcp-server:v1.2", true),
            ("mcp-server:v1.*", "mcp-server:v2.0", false),
            ("*", "anything.example.com/x/y:z", true),
        ];
        for (pattern, image, want) in cases {
            assert_eq!(allowed(pattern, image), want, "{pattern} vs {image}");
        }
        for bad in [
            "mcp-server:",
            "mcp-server@sha*",
            "MCP:*",
            "a:b:c",
            "mcp-server@",
        ] {
            assert!(ImagePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_and_bypass_images_are_refused_at_the_contract() {
        let p = Policy::default();
        for image in [
            "mcp-server:*",
            "mcp-server:",
            "mcp-server:latest:latest",
            "mcp-server:../../x",
            "mcp-server:5000/evil:latest",
            "mcp-server:443/library/alpine:latest",
            "mcp-server:80/x",
        ] {
            let v = p.sandbox(&spec(image)).unwrap_err();
            assert_eq!(v[0].path, "spec.image", "{image}");
        }
        assert_eq!(
            p.sandbox(&spec("mcp-server")).unwrap().image,
            "mcp-server:latest"
        );
        assert!(Policy::default().check_patterns().is_ok());
    }

    #[test]
    fn non_finite_and_tiny_resources_are_refused() {
        assert!(
            parse_memory(&Quantity::Number(f64::NAN))
                .unwrap_err()
                .contains("finite")
        );
        assert!(
            parse_memory(&Quantity::Number(f64::INFINITY))
                .unwrap_err()
                .contains("finite")
        );
        assert!(parse_memory(&Quantity::Number(1e300)).is_err());
        assert!(
            parse_cpus(&Quantity::Number(f64::NAN))
                .unwrap_err()
                .contains("finite")
        );
        assert!(
            parse_cpus(&Quantity::Number(f64::INFINITY))
                .unwrap_err()
                .contains("finite")
        );
        for t in ["NaN", "inf", "infinity", "1e400", "-1", ".nan"] {
            assert!(parse_cpus(&Quantity::Text(t.into())).is_err(), "{t}");
            assert!(parse_memory(&Quantity::Text(t.into())).is_err(), "{t}");
        }
        let p = Policy::default();
        let mut s = spec("mcp-server:1");
        s.resources.memory = Some(Quantity::Text("4Mi".into()));
        let v = p.sandbox(&s).unwrap_err();
        assert!(v[0].message.contains("6Mi minimum"), "{v:?}");
        s.resources.memory = Some(Quantity::Text("6Mi".into()));
        assert!(p.sandbox(&s).is_ok());
    }

    #[test]
    fn names() {
        assert_eq!(container_name("default", "demo"), "mcp-demo");
        assert_eq!(container_name("t1", "demo"), "mcp-t1.demo");
        assert_ne!(container_name("a-b", "c"), container_name("a", "b-c"));
        assert!(validate_instance("default").is_ok());
        assert!(validate_instance("team-1").is_ok());
        for bad in ["", "A", "a.b", "a_b", "-a", &"a".repeat(33), "a\nb"] {
            assert!(validate_instance(bad).is_err(), "{bad:?}");
        }
    }
}
