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

use crate::resource::{Quantity, SessionSpec};

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
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Image patterns; `*` matches any run of characters. Default `mcp-server:*`.
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

/// One thing a spec asked for that is invalid or outside the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Field path, e.g. `spec.resources.memory`.
    pub path: String,
    /// Machine-readable reason, e.g. `ImageNotAllowed`.
    pub reason: &'static str,
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
    if instance.len() <= 32 && crate::admission::is_dns1123_label(instance) {
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
        let mut bad = |path: &str, reason: &'static str, message: String| {
            v.push(Violation {
                path: path.to_string(),
                reason,
                message,
            })
        };

        let image = normalise_image(&spec.image);
        if spec.image.trim().is_empty() {
            bad("spec.image", "Invalid", "must not be empty".into());
        } else if !self.allowed_images.iter().any(|p| glob_match(p, &image)) {
            bad(
                "spec.image",
                "ImageNotAllowed",
                format!(
                    "image {:?} is not in the allowlist ({})",
                    spec.image,
                    self.allowed_images.join(", ")
                ),
            );
        }
        if spec.privileged == Some(true) {
            bad(
                "spec.privileged",
                "ContractViolation",
                "privileged sandboxes are not allowed by the sandbox contract".into(),
            );
        }
        if let Some(mode) = &spec.network_mode
            && mode != "none"
        {
            bad(
                "spec.networkMode",
                "ContractViolation",
                format!(
                    "network mode {mode:?} is not allowed: sandboxes have no network (only \"none\")"
                ),
            );
        }
        let user = match &spec.user {
            None => self.default_user.clone(),
            Some(u) => match parse_user(u) {
                Ok(()) => u.clone(),
                Err(msg) => {
                    bad("spec.user", "ContractViolation", msg);
                    self.default_user.clone()
                }
            },
        };
        for (i, arg) in spec.command.iter().enumerate() {
            if arg.contains('\0') {
                bad(
                    &format!("spec.command[{i}]"),
                    "Invalid",
                    "must not contain NUL".into(),
                );
            }
        }
        for (k, val) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || val.contains('\0') {
                bad(
                    &format!("spec.env.{k}"),
                    "Invalid",
                    "environment names must be non-empty and contain no '=' or NUL".into(),
                );
            }
        }

        let memory = match &spec.resources.memory {
            None => self.default_memory,
            Some(q) => match parse_memory(q) {
                Ok(m) if m < 4 * 1024 * 1024 => {
                    bad(
                        "spec.resources.memory",
                        "Invalid",
                        format!("{q} is below the 4Mi minimum"),
                    );
                    self.default_memory
                }
                Ok(m) if m > self.max_memory => {
                    bad(
                        "spec.resources.memory",
                        "ContractViolation",
                        format!("{q} exceeds the maximum of {} bytes", self.max_memory),
                    );
                    self.default_memory
                }
                Ok(m) => m,
                Err(msg) => {
                    bad("spec.resources.memory", "Invalid", msg);
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
                        "ContractViolation",
                        format!(
                            "{q} exceeds the maximum of {} cpus",
                            self.max_nano_cpus as f64 / 1e9
                        ),
                    );
                    self.default_nano_cpus
                }
                Ok(c) => c,
                Err(msg) => {
                    bad("spec.resources.cpus", "Invalid", msg);
                    self.default_nano_cpus
                }
            },
        };
        let pids = match spec.resources.pids {
            None => self.default_pids,
            Some(p) if p < 1 => {
                bad(
                    "spec.resources.pids",
                    "Invalid",
                    format!("{p} must be at least 1"),
                );
                self.default_pids
            }
            Some(p) if p > self.max_pids => {
                bad(
                    "spec.resources.pids",
                    "ContractViolation",
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
        })
    }
}

impl Sandbox {
    /// The Docker create body, with the whole hardening contract applied. Labels identify the
    /// session; the spec-hash label covers everything else in the body.
    pub fn container_body(&self, id: &Identity<'_>) -> ContainerCreateBody {
        let mut body = self.unlabelled_body();
        let hash = hash_body(&body);
        let labels = HashMap::from([
            (LABEL_SESSION.to_string(), id.session.to_string()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_INSTANCE.to_string(), id.instance.to_string()),
            (LABEL_SPEC_HASH.to_string(), hash),
            (LABEL_GENERATION.to_string(), id.generation.to_string()),
            (LABEL_UID.to_string(), id.uid.to_string()),
            (LABEL_STORE.to_string(), id.store.to_string()),
        ]);
        body.labels = Some(labels);
        body
    }

    /// The hash that [`LABEL_SPEC_HASH`] carries for this sandbox.
    pub fn spec_hash(&self) -> String {
        hash_body(&self.unlabelled_body())
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

fn hash_body(body: &ContainerCreateBody) -> String {
    let mut h = Sha256::new();
    h.update(CONTRACT_VERSION.as_bytes());
    // The body holds hash maps (tmpfs, log options): hash a canonical form, keys sorted.
    let value = serde_json::to_value(body).unwrap_or_default();
    h.update(canonical_json(&value).as_bytes());
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

/// Add `:latest` to an image reference without a tag or digest.
pub fn normalise_image(image: &str) -> String {
    let image = image.trim();
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') || image.is_empty() {
        image.to_string()
    } else {
        format!("{image}:latest")
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
        .map_err(|_| format!("{user:?} must be a numeric uid or uid:gid"))?;
    if uid == 0 {
        return Err("root (uid 0) is not allowed: sandboxes run as a non-root user".into());
    }
    if let Some(g) = gid {
        let g: u32 = g
            .parse()
            .map_err(|_| format!("{user:?} must be a numeric uid or uid:gid"))?;
        if g == 0 {
            return Err("gid 0 is not allowed: sandboxes run as a non-root group".into());
        }
    }
    Ok(())
}

/// Parse a Kubernetes memory quantity (`256Mi`, `1G`, `1048576`) into bytes.
pub fn parse_memory(q: &Quantity) -> Result<i64, String> {
    let text = match q {
        Quantity::Number(n) if *n >= 0.0 && n.fract() == 0.0 => return Ok(*n as i64),
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
                "{text:?} is not a memory quantity (use e.g. 256Mi, 1Gi, 512M)"
            ));
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a memory quantity (use e.g. 256Mi, 1Gi, 512M)"))?;
    let bytes = n * mult;
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as i64)
}

/// Parse a CPU quantity (`0.5`, `"0.5"`, `500m`) into nano-CPUs.
pub fn parse_cpus(q: &Quantity) -> Result<i64, String> {
    let cores = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(s) => {
            let s = s.trim();
            if let Some(m) = s.strip_suffix('m') {
                m.parse::<f64>()
                    .map(|m| m / 1000.0)
                    .map_err(|_| format!("{s:?} is not a CPU quantity (use e.g. 0.5 or 500m)"))?
            } else {
                s.parse::<f64>()
                    .map_err(|_| format!("{s:?} is not a CPU quantity (use e.g. 0.5 or 500m)"))?
            }
        }
    };
    if !cores.is_finite() || cores < 0.01 {
        return Err(format!("{q} must be at least 0.01 cpus"));
    }
    if cores > 1024.0 {
        return Err(format!("{q} is too large"));
    }
    Ok((cores * 1e9).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resources;

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
    fn globs_and_images() {
        assert!(glob_match("mcp-server:*", "mcp-server:latest"));
        assert!(!glob_match("mcp-server:*", "evil/mcp-server:latest"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("reg:5000/*/x:*", "reg:5000/a/b/x:1"));
        assert_eq!(normalise_image("reg:5000/img"), "reg:5000/img:latest");
        assert_eq!(normalise_image("img@sha256:ab"), "img@sha256:ab");
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
