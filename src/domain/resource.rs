//! The `Session` resource: a Kubernetes-style object (`apiVersion`, `kind`, `metadata`, `spec`,
//! `status`) describing one sandboxed MCP tool server.
//!
//! These types are pure data. Parsing files lives in [`crate::domain::parse`], validation and the
//! sandbox contract in [`crate::domain::contract`] and [`crate::domain::admission`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "orchestrator.mcp.dev/v1";
/// The only `kind` this build understands.
pub const KIND: &str = "Session";
/// Annotation recording where a session came from (`cli`, `api`, or `file:<path>`).
pub const SOURCE_ANNOTATION: &str = "orchestrator.mcp.dev/source";
/// Annotation that `restart` sets to the time of the request: the sandbox's spec hash
/// covers it, so a new value recreates the sandbox (a rollout restart), and it moves the
/// generation like a spec change.
pub const RESTARTED_AT_ANNOTATION: &str = "orchestrator.mcp.dev/restartedAt";

/// A desired MCP sandbox, one per chat session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    /// Always `orchestrator.mcp.dev/v1`.
    pub api_version: String,
    /// Always `Session`.
    pub kind: String,
    /// Name, labels and store-managed bookkeeping.
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: SessionSpec,
    /// What the orchestrator observed; written by the orchestrator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SessionStatus>,
}

/// Kubernetes-style object metadata.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters.
    pub name: String,
    /// Free-form labels, usable with label selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations; `orchestrator.mcp.dev/source` is set by the orchestrator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Unique id assigned at creation (store-managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bumped on every spec change, not on status writes (store-managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Changes on every write; used as the compare-and-swap precondition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the session was first stored (store-managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
}

/// The desired sandbox.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    /// Container image; must match the image allowlist (default `mcp-server:*`).
    pub image: String,
    /// Arguments that replace the image's default command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables for the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resource limits; defaults apply where unset and maxima cap them.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// What to do when the sandbox exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// The session expires and is removed this many seconds after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Never allowed: present only so that asking for it is a clear contract error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Only `none` is allowed: sandboxes have no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Numeric non-root `uid` or `uid:gid`; defaults to the contract's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Chat settings: model, system instruction, which tools the model may use. They do
    /// not touch the sandbox, so changing them never recreates the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatSpec>,
    /// MCP gateway settings: which tools any MCP client (and the chat) may see and call.
    /// They do not touch the sandbox either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpSpec>,
    /// A warm pool (`WarmPool` name) to claim a started sandbox from instead of creating
    /// one. Used when the sandbox settings equal the pool's template; otherwise (or when
    /// the pool has none ready) the sandbox is created cold and the status says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Per-session MCP gateway settings.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpSpec {
    /// Which tools MCP clients see in `tools/list` and may call; the chat's own
    /// `spec.chat.tools` narrows this further for the model.
    #[serde(default, skip_serializing_if = "ToolFilter::is_empty")]
    pub tools: ToolFilter,
}

impl SessionSpec {
    /// The tool policy every MCP client of the session gets (`spec.mcp.tools`).
    pub fn mcp_tools(&self) -> ToolFilter {
        self.mcp
            .as_ref()
            .map(|m| m.tools.clone())
            .unwrap_or_default()
    }
}

/// Per-session chat settings.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatSpec {
    /// Gemini model, e.g. `gemini-2.5-flash`; defaults to GEMINI_MODEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System instruction sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<String>,
    /// Which MCP tools the model sees.
    #[serde(default, skip_serializing_if = "ToolFilter::is_empty")]
    pub tools: ToolFilter,
}

/// Tool allow/deny lists (`*` wildcards). Empty `allow` allows every tool; `deny` wins.
/// The one tool filter: the chat (`spec.chat.tools`) and the MCP gateway
/// (`spec.mcp.tools`) both use it.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolFilter {
    /// Tools the model may use; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Tools the model may not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl ToolFilter {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// May the model use `tool`?
    pub fn allows(&self, tool: &str) -> bool {
        let m = |p: &String| crate::domain::contract::glob_match(p, tool);
        (self.allow.is_empty() || self.allow.iter().any(m)) && !self.deny.iter().any(m)
    }
}

/// Resource limits, Kubernetes quantity syntax.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory limit, e.g. `256Mi`, `1Gi`, `512M` or a byte count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPU limit in cores, e.g. `"0.5"`, `0.5` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Quantity>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Resources {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

/// A quantity written either as a string (`"256Mi"`, `"0.5"`) or as a bare number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Quantity {
    /// A bare number, e.g. `0.5`.
    Number(f64),
    /// A string, e.g. `"256Mi"`.
    Text(String),
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantity::Number(n) => write!(f, "{n}"),
            Quantity::Text(s) => f.write_str(s),
        }
    }
}

/// When an exited sandbox is started again.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum RestartPolicy {
    /// Restart whatever the exit code.
    #[default]
    Always,
    /// Restart only on a non-zero exit code.
    OnFailure,
    /// Never restart; the exited container is kept for inspection.
    Never,
}

/// The lifecycle phase of a session.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
pub enum Phase {
    /// Stored, not yet acted on.
    #[default]
    Pending,
    /// A sandbox is being created.
    Creating,
    /// The sandbox runs.
    Running,
    /// The sandbox exited and waits for its crash-loop backoff to pass.
    BackOff,
    /// The sandbox exited with code 0 and will not be restarted.
    Succeeded,
    /// The session cannot run (see `reason`), or exited and will not be restarted.
    Failed,
    /// The session is being removed.
    Terminating,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Creating,
        Phase::Running,
        Phase::BackOff,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Terminating,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&format!("{self:?}"))
    }
}

/// Observed state, written by the orchestrator only.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionStatus {
    /// Lifecycle phase.
    pub phase: Phase,
    /// The id of the sandbox container, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The generation the current sandbox was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many times the sandbox was restarted or replaced after it died.
    #[serde(default)]
    pub restart_count: u32,
    /// Machine-readable reason for the phase, e.g. `ImageNotAllowed`, `CrashLoopBackOff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Conditions; at least `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Session {
    /// A new session with the given name and image, everything else defaulted.
    pub fn new(name: &str, image: &str) -> Session {
        Session {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                ..ObjectMeta::default()
            },
            spec: SessionSpec {
                image: image.to_string(),
                ..SessionSpec::default()
            },
            status: None,
        }
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The generation, 0 when never stored.
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }

    /// The phase, `Pending` when no status was written yet.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// The restart marker ([`RESTARTED_AT_ANNOTATION`]), if a restart was requested.
    pub fn restarted_at(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(RESTARTED_AT_ANNOTATION)
            .map(String::as_str)
    }

    /// True when `other` asks for a different sandbox than `self`: another spec, or another
    /// restart marker. Such a write moves the generation.
    pub fn template_differs(&self, other: &Session) -> bool {
        self.spec != other.spec || self.restarted_at() != other.restarted_at()
    }

    /// True when the status describes the current spec (observed at this generation).
    pub fn is_current(&self) -> bool {
        self.status.as_ref().and_then(|st| st.observed_generation) >= self.metadata.generation
    }

    /// Ready: Running at the current generation. The one readiness test (CLI, API, chaos).
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running && self.is_current()
    }

    /// Finished for good at the current generation (Failed or Succeeded): waiting for
    /// Running is pointless until the spec changes.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase(), Phase::Failed | Phase::Succeeded) && self.is_current()
    }

    /// When the session expires, if it has a ttl and a creation time. Never panics: a ttl
    /// whose expiry a date cannot hold (admission allows at most ten years, but a stored
    /// object may predate that bound) gives `None`, i.e. it never expires.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        let ttl = self.spec.ttl_seconds?;
        let created = self.metadata.creation_timestamp?;
        i64::try_from(ttl)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|d| created.checked_add_signed(d))
    }

    /// Where the session came from, per its source annotation.
    pub fn source(&self) -> Option<&str> {
        self.metadata.source()
    }
}

impl ObjectMeta {
    /// Where the object came from, per its source annotation ([`SOURCE_ANNOTATION`]).
    pub fn source(&self) -> Option<&str> {
        self.annotations.get(SOURCE_ANNOTATION).map(String::as_str)
    }
}

/// Which object a message or an error is about: its kind and name, shown as `session "a"`
/// or `warm pool "a"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The `kind` (`Session`, `WarmPool`).
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// The object of kind `T` named `name`.
    pub fn of<T: Object>(name: impl Into<String>) -> ObjectRef {
        ObjectRef {
            kind: T::KIND,
            name: name.into(),
        }
    }

    /// The session named `name`.
    pub fn session(name: impl Into<String>) -> ObjectRef {
        ObjectRef::of::<Session>(name)
    }

    /// The kind in prose: `session`, `warm pool`.
    pub fn noun(&self) -> &'static str {
        noun(self.kind)
    }
}

/// A `kind` in prose, for messages: `session`, `warm pool` (the kind itself otherwise).
pub fn noun(kind: &'static str) -> &'static str {
    match kind {
        KIND => "session",
        crate::domain::pool::POOL_KIND => "warm pool",
        other => other,
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.noun(), self.name)
    }
}

/// What every stored kind (`Session`, `WarmPool`) shares: Kubernetes-style metadata, a
/// status written by the orchestrator only, and a generation that moves when what the
/// object asks for changes. The store, its change stream and the API are generic over it.
pub trait Object:
    Clone + PartialEq + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// The observed state.
    type Status: Clone + PartialEq + Serialize + Send + Sync;
    /// The `kind` field (`Session`, `WarmPool`).
    const KIND: &'static str;
    /// The metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The metadata, mutable.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// The status slot.
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
    /// True when `other` asks for something else than `self` (the generation moves).
    fn differs(&self, other: &Self) -> bool;
}

impl Object for Session {
    type Status = SessionStatus;
    const KIND: &'static str = KIND;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn status_mut(&mut self) -> &mut Option<SessionStatus> {
        &mut self.status
    }
    fn differs(&self, other: &Self) -> bool {
        self.template_differs(other)
    }
}

/// The JSON Schema of a Session document, generated from the types.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Session)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_never_overflows() {
        let mut s = Session::new("a", "mcp-server:1");
        s.metadata.creation_timestamp = Some(Utc::now());
        s.spec.ttl_seconds = Some(60);
        assert!(s.expires_at().unwrap() > Utc::now());
        for ttl in [9_000_000_000_000, u64::MAX, i64::MAX as u64] {
            s.spec.ttl_seconds = Some(ttl);
            assert_eq!(s.expires_at(), None);
        }
        s.metadata.creation_timestamp = None;
        assert_eq!(s.expires_at(), None);
    }
}
