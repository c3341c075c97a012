//! Admission: the one path every write of a desired Session goes through (CLI, HTTP API,
//! specs directory). It checks the envelope (`apiVersion`, `kind`, `metadata`) and asks
//! [`crate::contract`] whether the spec fits the sandbox contract.
//!
//! No IO happens here.

use crate::contract::{Policy, Violation};
use crate::resource::{API_VERSION, KIND, Session};

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
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Is `name` a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an
/// alphanumeric, at most 63 characters)?
pub fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
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
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Validate a session for storage: envelope, metadata and the sandbox contract. Returns every
/// violation, each with its field path.
pub fn validate(session: &Session, policy: &Policy) -> Result<(), AdmissionError> {
    let mut v = Vec::new();
    if session.api_version != API_VERSION {
        v.push(Violation {
            path: "apiVersion".into(),
            reason: "Invalid",
            message: format!("must be {API_VERSION:?}, got {:?}", session.api_version),
        });
    }
    if session.kind != KIND {
        v.push(Violation {
            path: "kind".into(),
            reason: "Invalid",
            message: format!("must be {KIND:?}, got {:?}", session.kind),
        });
    }
    if !is_dns1123_label(&session.metadata.name) {
        v.push(Violation {
            path: "metadata.name".into(),
            reason: "Invalid",
            message: format!(
                "{:?} is not a DNS-1123 label (lowercase alphanumerics and '-', at most 63 characters)",
                session.metadata.name
            ),
        });
    }
    for (k, val) in &session.metadata.labels {
        if !is_label_key(k) {
            v.push(Violation {
                path: format!("metadata.labels.{k}"),
                reason: "Invalid",
                message: format!("{k:?} is not a valid label key"),
            });
        } else if !is_label_value(val) {
            v.push(Violation {
                path: format!("metadata.labels.{k}"),
                reason: "Invalid",
                message: format!("{val:?} is not a valid label value"),
            });
        }
    }
    if let Err(contract) = policy.sandbox(&session.spec) {
        v.extend(contract);
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(AdmissionError::Invalid(v))
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
}
