//! Admission: the one path every write of a desired Session or WarmPool goes through (CLI,
//! HTTP API, specs directory). It checks the envelope (`apiVersion`, `kind`, `metadata`) and
//! asks [`crate::domain::contract`] whether the spec fits the sandbox contract ([`validate`]
//! for a session, [`validate_pool`] for a pool, whose template gets the very same checks as a
//! session spec). [`validate_documents`] does the same for every document of a file (or of
//! one CLI command) at once, and refuses a name declared twice among them (per kind).
//!
//! No IO happens here.

use std::collections::HashMap;

use crate::domain::contract::{Policy, Violation};
use crate::domain::limits::{self, echo, escape, human_bytes};
use crate::domain::parse::{Document, Resource};
use crate::domain::pool::{POOL_KIND, WarmPool, template_path};
use crate::domain::reason::Reason;
use crate::domain::resource::{
    API_VERSION, KIND, Object, ObjectMeta, ObjectRef, Session, SessionSpec, noun,
};

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    /// One or more fields are invalid or outside the sandbox contract.
    #[error("{}", join(.0))]
    Invalid(Vec<Violation>),
}

impl AdmissionError {
    /// The individual violations.
    pub fn violations(&self) -> &[Violation] {
        match self {
            AdmissionError::Invalid(v) => v,
        }
    }
}

fn join(v: &[Violation]) -> String {
    v.iter()
        .map(|v| escape(&v.to_string()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Is `name` a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an
/// alphanumeric, at most 63 characters)?
pub fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_label_value(v: &str) -> bool {
    v.len() <= limits::MAX_LABEL_VALUE_BYTES
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (v.is_empty()
            || (v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix
        .is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns1123_label));
    k.len() <= limits::MAX_LABEL_KEY_BYTES && prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Collects violations with their paths; input echoed in paths is escaped.
struct Report(Vec<Violation>);

impl Report {
    fn bad(&mut self, path: &str, reason: Reason, message: String) {
        self.0.push(Violation {
            path: escape(path),
            reason,
            message,
        });
    }

    /// A string field no longer than `max` bytes.
    fn len(&mut self, path: &str, value: &str, max: usize) {
        if value.len() > max {
            self.bad(
                path,
                Reason::TooLong,
                format!("is {} bytes, more than the {max}-byte limit", value.len()),
            );
        }
    }

    /// A list or map with at most `max` entries.
    fn count(&mut self, path: &str, n: usize, max: usize) {
        if n > max {
            self.bad(
                path,
                Reason::TooMany,
                format!("has {n} entries, more than the limit of {max}"),
            );
        }
    }
}

/// The envelope of any kind: `apiVersion`, `kind` (`want`), the name and the labels'
/// syntax.
fn envelope(r: &mut Report, api_version: &str, kind: &str, want: &str, m: &ObjectMeta) {
    if api_version != API_VERSION {
        r.bad(
            "apiVersion",
            Reason::Invalid,
            format!("must be {API_VERSION:?}, got {}", echo(api_version)),
        );
    }
    if kind != want {
        r.bad(
            "kind",
            Reason::Invalid,
            format!("must be {want:?}, got {}", echo(kind)),
        );
    }
    if !is_dns1123_label(&m.name) {
        r.bad(
            "metadata.name",
            Reason::Invalid,
            format!(
                "{} is not a DNS-1123 label (lowercase alphanumerics and '-', at most {} characters)",
                echo(&m.name),
                limits::MAX_NAME_BYTES
            ),
        );
    }
    for (k, val) in &m.labels {
        let path = format!("metadata.labels.{}", escape_key(k));
        if !is_label_key(k) {
            r.bad(
                &path,
                Reason::Invalid,
                format!("{} is not a valid label key", echo(k)),
            );
        } else if !is_label_value(val) {
            r.bad(
                &path,
                Reason::Invalid,
                format!("{} is not a valid label value", echo(val)),
            );
        }
    }
}

/// Counts and sizes of labels and annotations.
fn meta_bounds(m: &ObjectMeta, r: &mut Report) {
    r.count("metadata.labels", m.labels.len(), limits::MAX_LABELS);
    r.count(
        "metadata.annotations",
        m.annotations.len(),
        limits::MAX_ANNOTATIONS,
    );
    let mut annotations = 0usize;
    for (k, v) in &m.annotations {
        r.len(
            &format!("metadata.annotations.{}", escape_key(k)),
            k,
            limits::MAX_ANNOTATION_KEY_BYTES,
        );
        annotations = annotations.saturating_add(k.len()).saturating_add(v.len());
    }
    if annotations > limits::MAX_ANNOTATIONS_TOTAL_BYTES {
        r.bad(
            "metadata.annotations",
            Reason::TooLong,
            format!(
                "keys and values are {annotations} bytes, more than the {} limit",
                human_bytes(limits::MAX_ANNOTATIONS_TOTAL_BYTES)
            ),
        );
    }
}

/// Sizes, counts and ranges of every field of a session spec (see
/// [`crate::domain::limits`]); a pool's template is checked as one (`as_spec`).
fn spec_bounds(spec: &SessionSpec, r: &mut Report) {
    r.len("spec.image", &spec.image, limits::MAX_IMAGE_BYTES);
    r.count("spec.command", spec.command.len(), limits::MAX_COMMAND_ARGS);
    for (i, arg) in spec.command.iter().enumerate() {
        r.len(
            &format!("spec.command[{i}]"),
            arg,
            limits::MAX_COMMAND_ARG_BYTES,
        );
    }
    r.count("spec.env", spec.env.len(), limits::MAX_ENV);
    for (k, v) in &spec.env {
        let path = format!("spec.env.{}", escape_key(k));
        r.len(&path, k, limits::MAX_ENV_KEY_BYTES);
        r.len(&path, v, limits::MAX_ENV_VALUE_BYTES);
    }
    if let Some(u) = &spec.user {
        r.len("spec.user", u, limits::MAX_USER_BYTES);
    }
    if let Some(n) = &spec.network_mode {
        r.len("spec.networkMode", n, limits::MAX_NETWORK_MODE_BYTES);
    }
    if let Some(ttl) = spec.ttl_seconds
        && !(limits::MIN_TTL_SECONDS..=limits::MAX_TTL_SECONDS).contains(&ttl)
    {
        r.bad(
            "spec.ttlSeconds",
            Reason::OutOfRange,
            format!(
                "{ttl} is outside {}..={} (ten years)",
                limits::MIN_TTL_SECONDS,
                limits::MAX_TTL_SECONDS
            ),
        );
    }
    if let Some(chat) = &spec.chat {
        if let Some(model) = &chat.model {
            r.len("spec.chat.model", model, limits::MAX_MODEL_BYTES);
        }
        if let Some(si) = &chat.system_instruction {
            r.len(
                "spec.chat.systemInstruction",
                si,
                limits::MAX_SYSTEM_INSTRUCTION_BYTES,
            );
        }
        tool_filter(r, "spec.chat.tools", &chat.tools);
    }
    if let Some(mcp) = &spec.mcp {
        tool_filter(r, "spec.mcp.tools", &mcp.tools);
    }
    if let Some(pool) = &spec.pool
        && !is_dns1123_label(pool)
    {
        r.bad(
            "spec.pool",
            Reason::Invalid,
            format!(
                "{} is not a warm pool name (a DNS-1123 label: lowercase alphanumerics and \
                 '-', at most {} characters)",
                echo(pool),
                limits::MAX_NAME_BYTES
            ),
        );
    }
}

/// The whole object's size as JSON.
fn size<T: serde::Serialize>(object: &T, kind: &'static str, r: &mut Report) {
    if limits::json_size(object, limits::MAX_OBJECT_BYTES).is_none() {
        r.bad(
            "",
            Reason::TooLarge,
            format!(
                "the {} is larger than {} as JSON",
                noun(kind),
                human_bytes(limits::MAX_OBJECT_BYTES)
            ),
        );
    }
}

/// A map key as it appears in a field path: escaped and cut.
/// Bounds of one tool filter (`spec.chat.tools`, `spec.mcp.tools`).
fn tool_filter(r: &mut Report, at: &str, f: &crate::domain::resource::ToolFilter) {
    for (name, list) in [("allow", &f.allow), ("deny", &f.deny)] {
        let path = format!("{at}.{name}");
        r.count(&path, list.len(), limits::MAX_TOOL_PATTERNS);
        for (i, p) in list.iter().enumerate() {
            r.len(&format!("{path}[{i}]"), p, limits::MAX_TOOL_PATTERN_BYTES);
        }
    }
}

fn escape_key(k: &str) -> String {
    limits::escape_max(k, limits::MAX_ECHO_CHARS)
}

/// The contract's violations of a spec, their paths escaped and passed through `path`.
fn contract(r: &mut Report, policy: &Policy, spec: &SessionSpec, path: fn(&str) -> String) {
    if let Err(contract) = policy.sandbox(spec) {
        r.0.extend(contract.into_iter().map(|mut c| {
            c.path = escape(&path(&c.path));
            c
        }));
    }
}

impl Report {
    fn done(self) -> Result<(), AdmissionError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AdmissionError::Invalid(self.0))
        }
    }
}

/// Validate a session for storage: envelope, metadata, the bounds of [`crate::domain::limits`] and
/// the sandbox contract. Returns every violation, each with its field path.
pub fn validate(session: &Session, policy: &Policy) -> Result<(), AdmissionError> {
    let mut r = Report(Vec::new());
    let m = &session.metadata;
    envelope(&mut r, &session.api_version, &session.kind, KIND, m);
    meta_bounds(m, &mut r);
    spec_bounds(&session.spec, &mut r);
    size(session, KIND, &mut r);
    contract(&mut r, policy, &session.spec, str::to_string);
    r.done()
}

/// Validate a warm pool for storage: the same envelope and metadata checks as a session,
/// `spec.replicas` within [`limits::MAX_POOL_REPLICAS`], and the template with exactly the
/// bounds and the contract of a session spec (its fields named `spec.template.…`). Returns
/// every violation, each with its field path.
pub fn validate_pool(pool: &WarmPool, policy: &Policy) -> Result<(), AdmissionError> {
    let mut r = Report(Vec::new());
    let m = &pool.metadata;
    envelope(&mut r, &pool.api_version, &pool.kind, POOL_KIND, m);
    meta_bounds(m, &mut r);
    if pool.spec.replicas > limits::MAX_POOL_REPLICAS {
        r.bad(
            "spec.replicas",
            Reason::OutOfRange,
            format!(
                "{} is more than the limit of {}",
                pool.spec.replicas,
                limits::MAX_POOL_REPLICAS
            ),
        );
    }
    let spec = pool.spec.template.as_spec();
    let mut template = Report(Vec::new());
    spec_bounds(&spec, &mut template);
    r.0.extend(template.0.into_iter().map(|mut v| {
        v.path = template_path(&v.path);
        v
    }));
    size(pool, POOL_KIND, &mut r);
    contract(&mut r, policy, &spec, template_path);
    r.done()
}

/// Validate a parsed object of either kind ([`validate`], [`validate_pool`]).
pub fn validate_resource(resource: &Resource, policy: &Policy) -> Result<(), AdmissionError> {
    match resource {
        Resource::Session(s) => validate(s, policy),
        Resource::WarmPool(p) => validate_pool(p, policy),
    }
}

/// A kind the front ends write: a stored [`Object`] with its admission, and how a parsed
/// [`Resource`] holds it. What lets [`crate::ops`], the API and the CLI treat sessions and
/// warm pools with one implementation.
pub trait Admit: Object + Into<Resource> {
    /// The plural the API's paths and the CLI's typed names use (`sessions`, `warmpools`).
    const PLURAL: &'static str;
    /// Validate for storage ([`validate`], [`validate_pool`]).
    fn validate(&self, policy: &Policy) -> Result<(), AdmissionError>;
    /// This kind's object in a parsed document, or the document back when it is another
    /// kind.
    fn from_resource(r: Resource) -> Result<Self, Resource>;
    /// An object with only a name (what deleting an unreadable object answers).
    fn stub(name: &str) -> Self;
    /// Kind and name.
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::of::<Self>(self.meta().name.clone())
    }
}

impl Admit for Session {
    const PLURAL: &'static str = "sessions";
    fn validate(&self, policy: &Policy) -> Result<(), AdmissionError> {
        validate(self, policy)
    }
    fn from_resource(r: Resource) -> Result<Self, Resource> {
        match r {
            Resource::Session(s) => Ok(*s),
            other => Err(other),
        }
    }
    fn stub(name: &str) -> Self {
        Session::new(name, "")
    }
}

impl Admit for WarmPool {
    const PLURAL: &'static str = "warmpools";
    fn validate(&self, policy: &Policy) -> Result<(), AdmissionError> {
        validate_pool(self, policy)
    }
    fn from_resource(r: Resource) -> Result<Self, Resource> {
        match r {
            Resource::WarmPool(p) => Ok(*p),
            other => Err(other),
        }
    }
    fn stub(name: &str) -> Self {
        WarmPool::new(name, "", 0)
    }
}

/// One problem [`validate_documents`] found, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentViolation {
    /// `file: document N: field.path`, see [`crate::domain::parse::Origin::at`].
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for DocumentViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a set of documents was refused: every problem, in document order, `; `-separated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_documents(.0))]
pub struct InvalidDocuments(pub Vec<DocumentViolation>);

fn join_documents(v: &[DocumentViolation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Admit a set of parsed documents as one unit (a spec file, or every file of one CLI
/// command): each must pass [`validate_resource`], and no name may be declared twice among
/// them for one kind (a session and a warm pool may share a name). All of them pass, or
/// every problem is returned, in document order (a document's violations, then its
/// duplicate name).
pub fn validate_documents(docs: &[Document], policy: &Policy) -> Result<(), InvalidDocuments> {
    let mut errors = Vec::new();
    let mut seen: HashMap<ObjectRef, String> = HashMap::new();
    for d in docs {
        if let Err(e) = validate_resource(&d.resource, policy) {
            for v in e.violations() {
                errors.push(DocumentViolation {
                    location: d.origin.at(&v.path),
                    message: v.message.clone(),
                });
            }
        }
        let key = d.resource.object_ref();
        if let Some(prev) = seen.get(&key) {
            errors.push(DocumentViolation {
                location: d.origin.at("metadata.name"),
                message: format!("{key} is also declared at {prev}"),
            });
        } else {
            seen.insert(key, d.origin.at(""));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidDocuments(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("demo-1"));
        assert!(!is_dns1123_label("Demo"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a_b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label(&"a".repeat(63)));
    }

    #[test]
    fn labels() {
        assert!(is_label_key("team"));
        assert!(is_label_key("example.com/team"));
        assert!(!is_label_key("bad key"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }

    #[test]
    fn envelope_and_contract_together() {
        let mut s = Session::new("Bad_Name", "alpine");
        s.kind = "Pod".into();
        let err = validate(&s, &Policy::default()).unwrap_err();
        let paths: Vec<_> = err.violations().iter().map(|v| v.path.clone()).collect();
        assert_eq!(paths, ["kind", "metadata.name", "spec.image"]);
        assert!(validate(&Session::new("ok", "mcp-server:latest"), &Policy::default()).is_ok());
    }

    #[test]
    fn documents_are_admitted_together_and_names_are_unique() {
        let text = "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:latest'}\n---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: alpine}\n";
        let docs = crate::domain::parse::parse_str("f.yaml", text).unwrap();
        let err = validate_documents(&docs, &Policy::default()).unwrap_err();
        let locations: Vec<_> = err.0.iter().map(|v| v.location.as_str()).collect();
        assert_eq!(
            locations,
            [
                "f.yaml: document 1: spec.image",
                "f.yaml: document 1: metadata.name"
            ]
        );
        assert!(
            err.to_string().ends_with(
                "; f.yaml: document 1: metadata.name: session \"a\" is also declared at f.yaml: document 0"
            ),
            "{err}"
        );
        assert!(validate_documents(&docs[..1], &Policy::default()).is_ok());
        assert!(validate_documents(&[], &Policy::default()).is_ok());
    }

    fn reasons(s: &Session) -> Vec<(String, &'static str)> {
        match validate(s, &Policy::default()) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .violations()
                .iter()
                .map(|v| (v.path.clone(), v.reason.as_str()))
                .collect(),
        }
    }

    #[test]
    fn every_field_is_bounded() {
        let ok = Session::new("ok", "mcp-server:1");
        type Change = Box<dyn Fn(&mut Session)>;
        let cases: Vec<(&str, &str, Change)> = vec![
            (
                "spec.env.K",
                "TooLong",
                Box::new(|s| {
                    s.spec
                        .env
                        .insert("K".into(), "v".repeat(limits::MAX_ENV_VALUE_BYTES + 1));
                }),
            ),
            (
                "spec.env",
                "TooMany",
                Box::new(|s| {
                    for i in 0..=limits::MAX_ENV {
                        s.spec.env.insert(format!("K{i}"), String::new());
                    }
                }),
            ),
            (
                "spec.command",
                "TooMany",
                Box::new(|s| {
                    s.spec.command = vec!["a".into(); limits::MAX_COMMAND_ARGS + 1];
                }),
            ),
            (
                "spec.command[0]",
                "TooLong",
                Box::new(|s| {
                    s.spec.command = vec!["a".repeat(limits::MAX_COMMAND_ARG_BYTES + 1)];
                }),
            ),
            (
                "metadata.labels",
                "TooMany",
                Box::new(|s| {
                    for i in 0..=limits::MAX_LABELS {
                        s.metadata.labels.insert(format!("k{i}"), "v".into());
                    }
                }),
            ),
            (
                "metadata.annotations",
                "TooLong",
                Box::new(|s| {
                    s.metadata
                        .annotations
                        .insert("a".into(), "v".repeat(limits::MAX_ANNOTATIONS_TOTAL_BYTES));
                }),
            ),
            (
                "spec.chat.systemInstruction",
                "TooLong",
                Box::new(|s| {
                    s.spec.chat = Some(crate::domain::resource::ChatSpec {
                        system_instruction: Some(
                            "x".repeat(limits::MAX_SYSTEM_INSTRUCTION_BYTES + 1),
                        ),
                        ..Default::default()
                    });
                }),
            ),
            (
                "spec.chat.model",
                "TooLong",
                Box::new(|s| {
                    s.spec.chat = Some(crate::domain::resource::ChatSpec {
                        model: Some("m".repeat(limits::MAX_MODEL_BYTES + 1)),
                        ..Default::default()
                    });
                }),
            ),
            (
                "spec.chat.tools.deny",
                "TooMany",
                Box::new(|s| {
                    let mut c = crate::domain::resource::ChatSpec::default();
                    c.tools.deny = vec!["t".into(); limits::MAX_TOOL_PATTERNS + 1];
                    s.spec.chat = Some(c);
                }),
            ),
            (
                "spec.ttlSeconds",
                "OutOfRange",
                Box::new(|s| s.spec.ttl_seconds = Some(9_000_000_000_000)),
            ),
            (
                "spec.ttlSeconds",
                "OutOfRange",
                Box::new(|s| s.spec.ttl_seconds = Some(0)),
            ),
            (
                "",
                "TooLarge",
                Box::new(|s| {
                    for i in 0..40 {
                        s.spec.env.insert(format!("K{i}"), "v".repeat(8000));
                    }
                }),
            ),
        ];
        for (path, reason, change) in cases {
            let mut s = ok.clone();
            change(&mut s);
            let got = reasons(&s);
            assert!(
                got.iter().any(|(p, r)| p == path && *r == reason),
                "{path} {reason}: {got:?}"
            );
        }
        let mut s = ok.clone();
        s.spec.ttl_seconds = Some(limits::MAX_TTL_SECONDS);
        assert!(reasons(&s).is_empty());
        assert!(reasons(&ok).is_empty());
    }

    fn pool_reasons(p: &WarmPool) -> Vec<(String, &'static str)> {
        match validate_pool(p, &Policy::default()) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .violations()
                .iter()
                .map(|v| (v.path.clone(), v.reason.as_str()))
                .collect(),
        }
    }

    #[test]
    fn pools_get_the_session_checks_under_spec_template() {
        let ok = WarmPool::new("pool-1", "mcp-server:1", 2);
        assert!(pool_reasons(&ok).is_empty());
        type Change = Box<dyn Fn(&mut WarmPool)>;
        let cases: Vec<(&str, &str, Change)> = vec![
            ("kind", "Invalid", Box::new(|p| p.kind = "Session".into())),
            (
                "apiVersion",
                "Invalid",
                Box::new(|p| p.api_version = "v1".into()),
            ),
            (
                "metadata.name",
                "Invalid",
                Box::new(|p| p.metadata.name = "Bad_Name".into()),
            ),
            (
                "metadata.labels.bad key",
                "Invalid",
                Box::new(|p| {
                    p.metadata.labels.insert("bad key".into(), "v".into());
                }),
            ),
            (
                "metadata.labels",
                "TooMany",
                Box::new(|p| {
                    for i in 0..=limits::MAX_LABELS {
                        p.metadata.labels.insert(format!("k{i}"), "v".into());
                    }
                }),
            ),
            (
                "spec.replicas",
                "OutOfRange",
                Box::new(|p| p.spec.replicas = limits::MAX_POOL_REPLICAS + 1),
            ),
            (
                "spec.template.image",
                "ImageNotAllowed",
                Box::new(|p| p.spec.template.image = "alpine:3".into()),
            ),
            (
                "spec.template.image",
                "TooLong",
                Box::new(|p| p.spec.template.image = "m".repeat(limits::MAX_IMAGE_BYTES + 1)),
            ),
            (
                "spec.template.env.K",
                "TooLong",
                Box::new(|p| {
                    p.spec
                        .template
                        .env
                        .insert("K".into(), "v".repeat(limits::MAX_ENV_VALUE_BYTES + 1));
                }),
            ),
            (
                "spec.template.command",
                "TooMany",
                Box::new(|p| {
                    p.spec.template.command = vec!["a".into(); limits::MAX_COMMAND_ARGS + 1];
                }),
            ),
            (
                "spec.template.command[0]",
                "TooLong",
                Box::new(|p| {
                    p.spec.template.command = vec!["a".repeat(limits::MAX_COMMAND_ARG_BYTES + 1)];
                }),
            ),
            (
                "spec.template.user",
                "ContractViolation",
                Box::new(|p| p.spec.template.user = Some("0".into())),
            ),
            (
                "",
                "TooLarge",
                Box::new(|p| {
                    for i in 0..40 {
                        p.spec
                            .template
                            .env
                            .insert(format!("K{i}"), "v".repeat(8000));
                    }
                }),
            ),
        ];
        for (path, reason, change) in cases {
            let mut p = ok.clone();
            change(&mut p);
            let got = pool_reasons(&p);
            assert!(
                got.iter().any(|(p, r)| p == path && *r == reason),
                "{path} {reason}: {got:?}"
            );
            assert!(
                got.iter().all(|(p, _)| !p.starts_with("spec.")
                    || p == "spec.replicas"
                    || p.starts_with("spec.template")),
                "{got:?}"
            );
        }
        let mut p = ok.clone();
        p.spec.replicas = limits::MAX_POOL_REPLICAS;
        assert!(pool_reasons(&p).is_empty());
        p.spec.replicas = 0;
        assert!(pool_reasons(&p).is_empty(), "a pool may be scaled to zero");
        let e = validate_pool(&WarmPool::new("p", "nginx", 1), &Policy::default()).unwrap_err();
        assert!(e.to_string().starts_with("spec.template.image: "), "{e}");
    }

    #[test]
    fn a_session_names_a_pool_by_a_dns_label() {
        let mut s = Session::new("a", "mcp-server:1");
        s.spec.pool = Some("warm-1".into());
        assert!(reasons(&s).is_empty());
        for bad in ["Warm", "a_b", "", "-a", &"p".repeat(64)] {
            s.spec.pool = Some(bad.to_string());
            assert_eq!(
                reasons(&s),
                [("spec.pool".to_string(), "Invalid")],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn documents_of_both_kinds_are_admitted_together_names_unique_per_kind() {
        let pool = "apiVersion: orchestrator.mcp.dev/v1\nkind: WarmPool\nmetadata: {name: a}\nspec: {replicas: 1, template: {image: 'mcp-server:latest'}}\n";
        let session = "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:latest', pool: a}\n";
        let text = format!("{pool}---\n{session}");
        let docs = crate::domain::parse::parse_str("f.yaml", &text).unwrap();
        assert!(validate_documents(&docs, &Policy::default()).is_ok());
        let bad = format!(
            "{session}---\n{pool}---\n{}",
            pool.replace("'mcp-server:latest'", "alpine")
        );
        let docs = crate::domain::parse::parse_str("f.yaml", &bad).unwrap();
        let err = validate_documents(&docs, &Policy::default()).unwrap_err();
        let locations: Vec<_> = err.0.iter().map(|v| v.location.as_str()).collect();
        assert_eq!(
            locations,
            [
                "f.yaml: document 2: spec.template.image",
                "f.yaml: document 2: metadata.name"
            ]
        );
        assert!(
            err.to_string().ends_with(
                "f.yaml: document 2: metadata.name: warm pool \"a\" is also declared at f.yaml: document 1"
            ),
            "{err}"
        );
    }

    #[test]
    fn messages_and_paths_escape_input() {
        let mut s = Session::new("a\r\nb", "mcp-server:1\u{1b}");
        s.metadata.labels.insert("k\0".into(), "v".into());
        s.spec.env.insert("A=\n".into(), "x".into());
        let e = validate(&s, &Policy::default()).unwrap_err();
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        for v in e.violations() {
            assert!(!v.path.chars().any(char::is_control), "{v:?}");
            assert!(!v.message.chars().any(char::is_control), "{v:?}");
        }
    }
}
