//! Admission: the one path every write of a desired Session goes through (CLI, HTTP API,
//! specs directory). It checks the envelope (`apiVersion`, `kind`, `metadata`) and asks
//! [`crate::domain::contract`] whether the spec fits the sandbox contract.
//! [`validate_documents`] does the same for every document of a file (or of one CLI
//! command) at once, and refuses a session name declared twice among them.
//!
//! No IO happens here.

use std::collections::HashMap;

use crate::domain::contract::{Policy, Violation};
use crate::domain::limits::{self, echo, escape, human_bytes};
use crate::domain::parse::Document;
use crate::domain::reason::Reason;
use crate::domain::resource::{API_VERSION, KIND, Session};

/// Why a session was refused.
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

/// Sizes, counts and ranges of every field (see [`crate::domain::limits`]) and of the whole object.
fn bounds(session: &Session, r: &mut Report) {
    let m = &session.metadata;
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
    let spec = &session.spec;
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
    if limits::json_size(session, limits::MAX_OBJECT_BYTES).is_none() {
        r.bad(
            "",
            Reason::TooLarge,
            format!(
                "the session is larger than {} as JSON",
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

/// Validate a session for storage: envelope, metadata, the bounds of [`crate::domain::limits`] and
/// the sandbox contract. Returns every violation, each with its field path.
pub fn validate(session: &Session, policy: &Policy) -> Result<(), AdmissionError> {
    let mut r = Report(Vec::new());
    if session.api_version != API_VERSION {
        r.bad(
            "apiVersion",
            Reason::Invalid,
            format!(
                "must be {API_VERSION:?}, got {}",
                echo(&session.api_version)
            ),
        );
    }
    if session.kind != KIND {
        r.bad(
            "kind",
            Reason::Invalid,
            format!("must be {KIND:?}, got {}", echo(&session.kind)),
        );
    }
    if !is_dns1123_label(&session.metadata.name) {
        r.bad(
            "metadata.name",
            Reason::Invalid,
            format!(
                "{} is not a DNS-1123 label (lowercase alphanumerics and '-', at most {} characters)",
                echo(&session.metadata.name),
                limits::MAX_NAME_BYTES
            ),
        );
    }
    for (k, val) in &session.metadata.labels {
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
    bounds(session, &mut r);
    let mut v = r.0;
    if let Err(contract) = policy.sandbox(&session.spec) {
        v.extend(contract.into_iter().map(|mut c| {
            c.path = escape(&c.path);
            c
        }));
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(AdmissionError::Invalid(v))
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
/// command): each must pass [`validate`], and no session name may be declared twice among
/// them. All of them pass, or every problem is returned, in document order (a document's
/// violations, then its duplicate name).
pub fn validate_documents(docs: &[Document], policy: &Policy) -> Result<(), InvalidDocuments> {
    let mut errors = Vec::new();
    let mut seen: HashMap<&str, String> = HashMap::new();
    for d in docs {
        if let Err(e) = validate(&d.session, policy) {
            for v in e.violations() {
                errors.push(DocumentViolation {
                    location: d.origin.at(&v.path),
                    message: v.message.clone(),
                });
            }
        }
        if let Some(prev) = seen.insert(d.session.name(), d.origin.at("")) {
            errors.push(DocumentViolation {
                location: d.origin.at("metadata.name"),
                message: format!("session {:?} is also declared at {prev}", d.session.name()),
            });
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
