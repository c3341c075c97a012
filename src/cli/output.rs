//! How the CLI prints sessions: kubectl's output formats (`-o table|wide|name|json|yaml`),
//! watch events, and `describe`. Pure text building; the verbs write it out.

use std::fmt::Write as _;

use crate::domain::resource::{API_VERSION, Session};
use crate::runtime::short_id;
use crate::store::{EventType, SessionEvent};

/// An output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Columns: name, phase, restarts, container, age, reason.
    Table,
    /// The table plus image, generation and the container's name.
    Wide,
    /// `session/NAME`, one per line.
    Name,
    /// YAML documents.
    Yaml,
    /// JSON (one object, or a `SessionList`).
    Json,
}

/// Age as kubectl prints it: `42s`, `5m`, `3h`, `2d`.
pub fn age(s: &Session) -> String {
    let Some(t) = s.metadata.creation_timestamp else {
        return "-".into();
    };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The header line of a table format.
pub fn header(out: Output) -> Option<&'static str> {
    match out {
        Output::Table => {
            Some("NAME                     PHASE       RESTARTS  CONTAINER    AGE    REASON")
        }
        Output::Wide => Some(
            "NAME                     PHASE       RESTARTS  CONTAINER    AGE    GEN  IMAGE                          CONTAINER-NAME                 REASON",
        ),
        _ => None,
    }
}

/// One session in a table format (`instance` names the container in `wide`).
pub fn row(out: Output, s: &Session, instance: &str) -> String {
    let st = s.status.clone().unwrap_or_default();
    let container = st.container_id.as_deref().map(short_id).unwrap_or("-");
    let base = format!(
        "{:<24} {:<11} {:<9} {:<12} {:<6}",
        s.name(),
        s.phase(),
        st.restart_count,
        container,
        age(s),
    );
    let reason = st.reason.unwrap_or_default();
    match out {
        Output::Wide => format!(
            "{base} {:<4} {:<30} {:<30} {reason}",
            s.generation(),
            s.spec.image,
            crate::domain::contract::container_name(instance, s.name()),
        ),
        _ => format!("{base} {reason}"),
    }
}

/// Sessions in a format: a table, names, one JSON object (`single`) or a `SessionList`,
/// or YAML documents.
pub fn sessions(out: Output, sessions: &[Session], single: bool, instance: &str) -> String {
    let mut o = String::new();
    match out {
        Output::Table | Output::Wide => {
            if let Some(h) = header(out) {
                let _ = writeln!(o, "{h}");
            }
            for s in sessions {
                let _ = writeln!(o, "{}", row(out, s, instance));
            }
        }
        Output::Name => {
            for s in sessions {
                let _ = writeln!(o, "session/{}", s.name());
            }
        }
        Output::Json if single && sessions.len() == 1 => {
            let _ = writeln!(o, "{}", pretty(&sessions[0]));
        }
        Output::Json => {
            let list = serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "SessionList",
                "items": sessions,
            });
            let _ = writeln!(o, "{}", pretty(&list));
        }
        Output::Yaml => {
            for (i, s) in sessions.iter().enumerate() {
                if i > 0 {
                    o.push_str("---\n");
                }
                o.push_str(&serde_yaml::to_string(s).unwrap_or_default());
            }
        }
    }
    o
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// One watch event in a format (`get -w`).
pub fn watch_event(
    out: Output,
    kind: EventType,
    name: &str,
    obj: &Session,
    instance: &str,
) -> String {
    match out {
        Output::Table | Output::Wide if kind == EventType::Deleted => {
            format!("{name:<24} Deleted\n")
        }
        Output::Table | Output::Wide => format!("{}\n", row(out, obj, instance)),
        Output::Name => format!("session/{name}\n"),
        Output::Json => format!("{}\n", serde_json::json!({"type": kind, "object": obj})),
        Output::Yaml => format!(
            "---\n{}",
            serde_yaml::to_string(&serde_json::json!({"type": kind, "object": obj}))
                .unwrap_or_default()
        ),
    }
}

fn kv(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `describe`: metadata, spec, status, the container (its summary, `None` when there is
/// none, or why it is unavailable) and recent events.
pub fn describe(
    s: &Session,
    container: Result<Option<serde_json::Value>, String>,
    events: &[SessionEvent],
) -> String {
    let st = s.status.clone().unwrap_or_default();
    let mut o = String::new();
    let meta = &s.metadata;
    let dash = || "-".to_string();
    let _ = writeln!(o, "Name:              {}", s.name());
    let _ = writeln!(o, "Labels:            {}", kv(&meta.labels));
    let _ = writeln!(o, "Annotations:       {}", kv(&meta.annotations));
    let _ = writeln!(
        o,
        "UID:               {}",
        meta.uid.clone().unwrap_or_default()
    );
    let created = meta.creation_timestamp.map(|t| t.to_rfc3339());
    let _ = writeln!(o, "Created:           {}", created.unwrap_or_default());
    let _ = writeln!(o, "Generation:        {}", s.generation());
    let rv = meta.resource_version.clone().unwrap_or_default();
    let _ = writeln!(o, "Resource Version:  {rv}");
    if let Some(exp) = s.expires_at() {
        let _ = writeln!(o, "Expires:           {}", exp.to_rfc3339());
    }
    let _ = writeln!(o, "Spec:");
    for line in serde_yaml::to_string(&s.spec).unwrap_or_default().lines() {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, "  Phase:               {}", st.phase);
    let _ = writeln!(
        o,
        "  Container:           {}",
        st.container_id.clone().unwrap_or_else(dash)
    );
    let observed = st.observed_generation.map(|g| g.to_string());
    let _ = writeln!(
        o,
        "  Observed Generation: {}",
        observed.unwrap_or_else(dash)
    );
    let _ = writeln!(o, "  Restart Count:       {}", st.restart_count);
    if let Some(r) = &st.reason {
        let _ = writeln!(o, "  Reason:              {r}");
    }
    if let Some(m) = &st.message {
        let _ = writeln!(o, "  Message:             {m}");
    }
    let _ = writeln!(o, "  Conditions:");
    for c in &st.conditions {
        let _ = writeln!(
            o,
            "    {:<8} {:<6} {}  {}",
            c.type_,
            c.status,
            c.last_transition_time.to_rfc3339(),
            c.reason.clone().unwrap_or_default()
        );
    }
    let _ = writeln!(o, "Container:");
    match container {
        Ok(None) => {
            let _ = writeln!(o, "  <none>");
        }
        Err(e) => {
            let _ = writeln!(o, "  <unavailable: {e}>");
        }
        Ok(Some(c)) => {
            let text = |k: &str| match &c[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                v => v.to_string(),
            };
            let mut rows = vec![
                ("Name", "name"),
                ("Image", "image"),
                ("State", "state"),
                ("Started", "startedAt"),
            ];
            if c["running"] != serde_json::Value::Bool(true) {
                rows.extend([("Finished", "finishedAt"), ("Exit Code", "exitCode")]);
            }
            rows.extend([
                ("User", "user"),
                ("Network", "networkMode"),
                ("Read-only", "readonlyRootfs"),
                ("Cap drop", "capDrop"),
                ("Memory", "memory"),
                ("NanoCPUs", "nanoCpus"),
                ("Pids limit", "pidsLimit"),
            ]);
            for (label, key) in rows {
                let _ = writeln!(o, "  {:<12} {}", format!("{label}:"), text(key));
            }
        }
    }
    let _ = writeln!(o, "Events:");
    if events.is_empty() {
        let _ = writeln!(o, "  <none>");
    }
    for e in events {
        let _ = writeln!(
            o,
            "  {}  {:<7} {:<12} {}",
            e.time.format("%Y-%m-%dT%H:%M:%SZ"),
            e.type_,
            e.reason,
            e.message
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_name_and_wide() {
        let mut s = Session::new("web", "mcp-server:latest");
        s.metadata.generation = Some(3);
        let names = sessions(Output::Name, &[s.clone()], false, "default");
        assert_eq!(names, "session/web\n");
        let wide = sessions(Output::Wide, &[s.clone()], false, "blue");
        assert!(wide.starts_with("NAME"), "{wide}");
        assert!(wide.contains("mcp-server:latest"), "{wide}");
        assert!(wide.contains("mcp-blue.web"), "{wide}");
        let table = sessions(Output::Table, &[s], false, "default");
        assert!(!table.contains("mcp-server:latest"), "{table}");
    }
}
