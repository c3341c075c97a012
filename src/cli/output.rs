//! How the CLI prints sessions and warm pools: kubectl's output formats
//! (`-o table|wide|name|json|yaml`), watch events, and `describe`. Pure text building; the
//! verbs write it out. [`Show`] is what a kind adds (its table, its `-o name` type); the
//! formats themselves are shared ([`objects`], [`watch_event`]).

use std::fmt::Write as _;

use crate::domain::admission::Admit;
use crate::domain::pool::WarmPool;
use crate::domain::resource::{API_VERSION, ObjectMeta, Session};
use crate::runtime::short_id;
use crate::store::{EventType, SessionEvent};

/// An output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Columns: name, phase, restarts, container, age, reason (pools: name, ready,
    /// starting, claimed, replicas, image, age).
    Table,
    /// The table plus image, generation and the container's name (pools: generation and
    /// reason).
    Wide,
    /// `session/NAME` (`warmpool/NAME`), one per line.
    Name,
    /// YAML documents.
    Yaml,
    /// JSON (one object, or a `SessionList` / `WarmPoolList`).
    Json,
}

/// What a kind adds to the shared output formats.
pub trait Show: Admit {
    /// The type in `-o name` and messages: `session`, `warmpool`.
    const TYPE: &'static str;
    /// The header line of a table format.
    fn header(out: Output) -> Option<&'static str>;
    /// One object in a table format (`instance` names containers in `wide`).
    fn row(&self, out: Output, instance: &str) -> String;
}

impl Show for Session {
    const TYPE: &'static str = "session";
    fn header(out: Output) -> Option<&'static str> {
        header(out)
    }
    fn row(&self, out: Output, instance: &str) -> String {
        row(out, self, instance)
    }
}

impl Show for WarmPool {
    const TYPE: &'static str = "warmpool";
    fn header(out: Output) -> Option<&'static str> {
        match out {
            Output::Table => Some(
                "NAME                     READY  STARTING  CLAIMED  REPLICAS  IMAGE                          AGE",
            ),
            Output::Wide => Some(
                "NAME                     READY  STARTING  CLAIMED  REPLICAS  IMAGE                          AGE    GEN  REASON",
            ),
            _ => None,
        }
    }
    fn row(&self, out: Output, _instance: &str) -> String {
        let st = self.status.clone().unwrap_or_default();
        let base = format!(
            "{:<24} {:<6} {:<9} {:<8} {:<9} {:<30} {:<6}",
            self.name(),
            st.ready,
            st.starting,
            st.claimed,
            self.spec.replicas,
            self.spec.template.image,
            age(&self.metadata),
        );
        match out {
            Output::Wide => format!(
                "{base} {:<4} {}",
                self.generation(),
                st.reason.unwrap_or_default()
            ),
            _ => base.trim_end().to_string(),
        }
    }
}

/// Age as kubectl prints it: `42s`, `5m`, `3h`, `2d`.
pub fn age(m: &ObjectMeta) -> String {
    let Some(t) = m.creation_timestamp else {
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
        age(&s.metadata),
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
    objects(out, sessions, single, instance)
}

/// Objects of one kind in a format: a table, names, one JSON object (`single`) or a
/// `<Kind>List`, or YAML documents.
pub fn objects<T: Show>(out: Output, items: &[T], single: bool, instance: &str) -> String {
    let mut o = String::new();
    match out {
        Output::Table | Output::Wide => {
            if let Some(h) = T::header(out) {
                let _ = writeln!(o, "{h}");
            }
            for s in items {
                let _ = writeln!(o, "{}", s.row(out, instance));
            }
        }
        Output::Name => {
            for s in items {
                let _ = writeln!(o, "{}/{}", T::TYPE, s.meta().name);
            }
        }
        Output::Json if single && items.len() == 1 => {
            let _ = writeln!(o, "{}", pretty(&items[0]));
        }
        Output::Json => {
            let list = serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": format!("{}List", T::KIND),
                "items": items,
            });
            let _ = writeln!(o, "{}", pretty(&list));
        }
        Output::Yaml => {
            for (i, s) in items.iter().enumerate() {
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
pub fn watch_event<T: Show>(
    out: Output,
    kind: EventType,
    name: &str,
    obj: &T,
    instance: &str,
) -> String {
    match out {
        Output::Table | Output::Wide if kind == EventType::Deleted => {
            format!("{name:<24} Deleted\n")
        }
        Output::Table | Output::Wide => format!("{}\n", obj.row(out, instance)),
        Output::Name => format!("{}/{name}\n", T::TYPE),
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
    let dash = || "-".to_string();
    describe_meta(&mut o, &s.metadata);
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
    describe_events(&mut o, events);
    o
}

/// `describe`'s metadata lines, the same for every kind.
fn describe_meta(o: &mut String, meta: &ObjectMeta) {
    let _ = writeln!(o, "Name:              {}", meta.name);
    let _ = writeln!(o, "Labels:            {}", kv(&meta.labels));
    let _ = writeln!(o, "Annotations:       {}", kv(&meta.annotations));
    let _ = writeln!(
        o,
        "UID:               {}",
        meta.uid.clone().unwrap_or_default()
    );
    let created = meta.creation_timestamp.map(|t| t.to_rfc3339());
    let _ = writeln!(o, "Created:           {}", created.unwrap_or_default());
    let _ = writeln!(o, "Generation:        {}", meta.generation.unwrap_or(0));
    let rv = meta.resource_version.clone().unwrap_or_default();
    let _ = writeln!(o, "Resource Version:  {rv}");
}

/// `describe`'s events section.
fn describe_events(o: &mut String, events: &[SessionEvent]) {
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
}

/// `describe warmpool/NAME`: metadata, spec, status and recent events.
pub fn describe_pool(p: &WarmPool, events: &[SessionEvent]) -> String {
    let st = p.status.clone().unwrap_or_default();
    let mut o = String::new();
    describe_meta(&mut o, &p.metadata);
    let _ = writeln!(o, "Spec:");
    for line in serde_yaml::to_string(&p.spec).unwrap_or_default().lines() {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, "  Replicas:            {}", st.replicas);
    let _ = writeln!(o, "  Ready:               {}", st.ready);
    let _ = writeln!(o, "  Starting:            {}", st.starting);
    let _ = writeln!(o, "  Claimed:             {}", st.claimed);
    let observed = st.observed_generation.map(|g| g.to_string());
    let _ = writeln!(
        o,
        "  Observed Generation: {}",
        observed.unwrap_or_else(|| "-".into())
    );
    if let Some(r) = &st.reason {
        let _ = writeln!(o, "  Reason:              {r}");
    }
    if let Some(m) = &st.message {
        let _ = writeln!(o, "  Message:             {m}");
    }
    describe_events(&mut o, events);
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

    #[test]
    fn pools_have_their_own_columns_name_type_and_list_kind() {
        let mut p = WarmPool::new("warm", "mcp-server:latest", 3);
        p.status = Some(crate::domain::pool::WarmPoolStatus {
            replicas: 3,
            ready: 2,
            starting: 1,
            claimed: 4,
            ..Default::default()
        });
        let table = objects(Output::Table, std::slice::from_ref(&p), false, "default");
        let mut lines = table.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            [
                "NAME", "READY", "STARTING", "CLAIMED", "REPLICAS", "IMAGE", "AGE"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row, ["warm", "2", "1", "4", "3", "mcp-server:latest", "-"]);
        assert_eq!(
            objects(Output::Name, std::slice::from_ref(&p), false, "default"),
            "warmpool/warm\n"
        );
        let list: serde_json::Value = serde_json::from_str(&objects(
            Output::Json,
            std::slice::from_ref(&p),
            false,
            "default",
        ))
        .unwrap();
        assert_eq!(list["kind"], "WarmPoolList");
        assert_eq!(list["items"][0]["spec"]["replicas"], 3);
        let d = describe_pool(&p, &[]);
        assert!(d.contains("Claimed:             4"), "{d}");
    }
}
