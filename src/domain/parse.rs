//! Parsing Session and WarmPool documents from text: pure, no IO.
//!
//! A file may hold one JSON object, several YAML documents, or a list (`{"items": [...]}`);
//! each document's `kind` decides its type ([`Resource`]), and one file may mix both kinds.
//! Every error names the file, the document index (0-based) and the field path. Parsing does
//! not validate the sandbox contract; that is [`crate::domain::admission`]'s job. Reading
//! files, directories and stdin is [`crate::files`]'s job; it hands the bytes to
//! [`parse_bytes`].
//!
//! Parsing is bounded before it builds anything (see [`crate::domain::limits`]): the input size, then
//! a streaming pass over the YAML events (or the JSON text) that stops at the first nesting
//! level, node, alias or byte over budget — so neither a deeply nested input nor an alias
//! bomb costs more than the budget. Numbers must be finite, and every struct-typed field must
//! be a mapping. [`parse_str`] and [`parse_bytes`] are pure functions of their input (no IO),
//! safe to run on a blocking thread.

use std::path::Path;

use std::collections::HashMap;

use serde_json::Value;

use crate::domain::limits::{self, echo, escape, human_bytes};
use crate::domain::pool::{POOL_KIND, WarmPool};
use crate::domain::resource::{KIND, ObjectMeta, ObjectRef, Session};

/// Where a parsed document came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The file name as the user gave it, or `-` for stdin.
    pub file: String,
    /// 0-based index of the document within the file.
    pub document: usize,
    /// Field path prefix inside the document (`items[2]` for lists, empty otherwise).
    pub prefix: String,
}

impl Origin {
    /// `file: document N` plus the field path, joined for one-line messages.
    pub fn at(&self, path: &str) -> String {
        let path = match (self.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{}", self.prefix, path),
        };
        if path.is_empty() {
            format!("{}: document {}", self.file, self.document)
        } else {
            format!("{}: document {}: {}", self.file, self.document, path)
        }
    }
}

/// One parsed object: the document's `kind` decides which.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// `kind: Session`.
    Session(Box<Session>),
    /// `kind: WarmPool`.
    WarmPool(Box<WarmPool>),
}

impl Resource {
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.meta().name
    }

    /// Its `kind` (`Session`, `WarmPool`).
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Session(_) => KIND,
            Resource::WarmPool(_) => POOL_KIND,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::Session(s) => &s.metadata,
            Resource::WarmPool(p) => &p.metadata,
        }
    }

    /// Its metadata, mutable.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Session(s) => &mut s.metadata,
            Resource::WarmPool(p) => &mut p.metadata,
        }
    }

    /// Kind and name, for messages and keys.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            name: self.name().to_string(),
        }
    }
}

impl From<Session> for Resource {
    fn from(s: Session) -> Resource {
        Resource::Session(Box::new(s))
    }
}

impl From<WarmPool> for Resource {
    fn from(p: WarmPool) -> Resource {
        Resource::WarmPool(Box::new(p))
    }
}

/// One parsed document with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from.
    pub origin: Origin,
    /// The parsed object (not yet admitted).
    pub resource: Resource,
}

/// Why a text could not be turned into objects.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A document is not valid YAML/JSON or does not fit the schema of its kind.
    #[error("{location}: {message}")]
    Invalid {
        /// `file: document N: field.path`.
        location: String,
        /// What is wrong.
        message: String,
    },
}

impl ParseError {
    /// An [`ParseError::Invalid`] with control characters escaped and long text cut, so the
    /// message stays one printable line whatever the input held.
    pub fn invalid(location: impl AsRef<str>, message: impl AsRef<str>) -> ParseError {
        ParseError::Invalid {
            location: escape(location.as_ref()),
            message: escape(message.as_ref()),
        }
    }
}

/// Does this file name count as a spec file (`*.yaml`, `*.yml`, `*.json`, not hidden, not an
/// editor temp file)? Looks at the name only, never at the file system.
pub fn is_spec_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Parse the raw bytes of one file or body: refused when larger than
/// [`limits::MAX_INPUT_BYTES`] or not UTF-8, otherwise [`parse_str`].
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Vec<Document>, ParseError> {
    check_size(file, bytes.len())?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ParseError::invalid(
            format!("{file}: document 0"),
            format!(
                "the input is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    parse_str(file, text)
}

fn check_size(file: &str, len: usize) -> Result<(), ParseError> {
    if len > limits::MAX_INPUT_BYTES {
        return Err(ParseError::invalid(
            format!("{file}: document 0"),
            format!(
                "the input is larger than the {} limit",
                human_bytes(limits::MAX_INPUT_BYTES)
            ),
        ));
    }
    Ok(())
}

/// Parse the text of one file. JSON is detected by a leading `{` or `[`; everything else is
/// read as (possibly multi-document) YAML. The input is refused, before any value is built,
/// when it is larger than [`limits::MAX_INPUT_BYTES`] or goes over the nesting, node, alias
/// or document budget of [`crate::domain::limits`].
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Document>, ParseError> {
    check_size(file, text.len())?;
    let mut values = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        json_budget(text).map_err(|m| ParseError::invalid(format!("{file}: document 0"), m))?;
        let v: Value = serde_json::from_str(text).map_err(|e| {
            ParseError::invalid(format!("{file}: document 0"), format!("invalid JSON: {e}"))
        })?;
        values.push(v);
    } else {
        yaml_budget(text)
            .map_err(|(index, m)| ParseError::invalid(format!("{file}: document {index}"), m))?;
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let location = || format!("{file}: document {index}");
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| ParseError::invalid(location(), format!("invalid YAML: {e}")))?;
            if let Some(path) = non_finite(&v) {
                let at = if path.is_empty() {
                    location()
                } else {
                    format!("{}: {path}", location())
                };
                return Err(ParseError::invalid(
                    at,
                    "not a finite number (.nan and .inf are not allowed)",
                ));
            }
            let v = serde_json::to_value(v)
                .map_err(|e| ParseError::invalid(location(), format!("unsupported YAML: {e}")))?;
            values.push(v);
        }
    }
    let mut docs = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_string(),
            document: index,
            prefix: String::new(),
        };
        match value {
            Value::Null => continue,
            Value::Array(items) => expand_items(&origin, items, &mut docs)?,
            Value::Object(ref map) if map.contains_key("items") && !map.contains_key("spec") => {
                let Some(Value::Array(items)) = map.get("items").cloned() else {
                    return Err(ParseError::invalid(
                        origin.at("items"),
                        "must be a list of Session or WarmPool objects",
                    ));
                };
                expand_items(&origin, items, &mut docs)?;
            }
            other => docs.push(Document {
                resource: resource_from_value(&origin, other)?,
                origin,
            }),
        }
    }
    Ok(docs)
}

fn expand_items(
    origin: &Origin,
    items: Vec<Value>,
    docs: &mut Vec<Document>,
) -> Result<(), ParseError> {
    for (i, item) in items.into_iter().enumerate() {
        let origin = Origin {
            prefix: format!("items[{i}]"),
            ..origin.clone()
        };
        docs.push(Document {
            resource: resource_from_value(&origin, item)?,
            origin,
        });
    }
    Ok(())
}

/// The kinds a document may have, for messages.
const KINDS: &str = "\"Session\" or \"WarmPool\"";

/// Deserialize one document as the type its `kind` names (see [`from_value`]); any other
/// `kind` is an error on the field `kind`.
pub fn resource_from_value(origin: &Origin, value: Value) -> Result<Resource, ParseError> {
    let Some(map) = value.as_object() else {
        return Err(ParseError::invalid(
            origin.at(""),
            "a Session or WarmPool document must be a mapping",
        ));
    };
    match map.get("kind") {
        Some(Value::String(k)) if k == KIND => {
            Ok(Resource::from(from_value::<Session>(origin, value)?))
        }
        Some(Value::String(k)) if k == POOL_KIND => {
            Ok(Resource::from(from_value::<WarmPool>(origin, value)?))
        }
        Some(Value::String(k)) => Err(ParseError::invalid(
            origin.at("kind"),
            format!("must be {KINDS}, got {}", echo(k)),
        )),
        Some(other) => Err(ParseError::invalid(
            origin.at("kind"),
            format!("must be {KINDS}, got {}", type_name(other)),
        )),
        None => Err(ParseError::invalid(
            origin.at(""),
            format!("missing field `kind` ({KINDS})"),
        )),
    }
}

/// Deserialize one document as a `T`, keeping the field path of the first error. Every
/// struct-typed field must be a mapping (serde would also build a struct from a list).
pub fn from_value<T: serde::de::DeserializeOwned>(
    origin: &Origin,
    value: Value,
) -> Result<T, ParseError> {
    if !value.is_object() {
        return Err(ParseError::invalid(
            origin.at(""),
            "the document must be a mapping",
        ));
    }
    if let Some((path, got)) = struct_not_object(&value) {
        return Err(ParseError::invalid(
            origin.at(&path),
            format!("must be a mapping, got {got}"),
        ));
    }
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ParseError::invalid(origin.at(&path), e.into_inner().to_string())
    })
}

/// The fields of [`Session`] and [`WarmPool`] whose type is a struct (or an optional struct),
/// as paths from the document root; `[]` stands for every element of a list.
const STRUCT_FIELDS: &[&[&str]] = &[
    &["metadata"],
    &["spec"],
    &["spec", "resources"],
    &["spec", "chat"],
    &["spec", "chat", "tools"],
    &["spec", "mcp"],
    &["spec", "mcp", "tools"],
    &["spec", "template"],
    &["spec", "template", "resources"],
    &["status"],
    &["status", "conditions", "[]"],
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The first struct-typed field (see [`STRUCT_FIELDS`]) that holds something other than a
/// mapping (or null, which means "unset"), with what it holds.
fn struct_not_object(root: &Value) -> Option<(String, &'static str)> {
    fn walk(v: &Value, rest: &[&str], path: String) -> Option<(String, &'static str)> {
        let Some((first, rest)) = rest.split_first() else {
            return match v {
                Value::Object(_) | Value::Null => None,
                other => Some((path, type_name(other))),
            };
        };
        if *first == "[]" {
            let items = v.as_array()?;
            return items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, rest, format!("{path}[{i}]")));
        }
        let next = v.as_object()?.get(*first)?;
        let path = if path.is_empty() {
            (*first).to_string()
        } else {
            format!("{path}.{first}")
        };
        walk(next, rest, path)
    }
    STRUCT_FIELDS
        .iter()
        .find_map(|fields| walk(root, fields, String::new()))
}

/// The path of the first non-finite number (`.nan`, `.inf`) in a YAML value, if any.
/// (Converted to JSON they would silently become `null`.)
fn non_finite(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::Number(n) => {
            n.as_f64().filter(|f| !f.is_finite()).map(|_| String::new())
        }
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| non_finite(item).map(|p| join_path(&format!("[{i}]"), &p))),
        serde_yaml::Value::Mapping(map) => map.iter().find_map(|(k, item)| {
            non_finite(item).map(|p| {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                join_path(&key, &p)
            })
        }),
        serde_yaml::Value::Tagged(t) => non_finite(&t.value),
        _ => None,
    }
}

fn join_path(head: &str, tail: &str) -> String {
    if tail.is_empty() {
        head.to_string()
    } else if tail.starts_with('[') {
        format!("{head}{tail}")
    } else {
        format!("{head}.{tail}")
    }
}

/// Weight of a YAML node for the budget: nodes and scalar bytes, aliases expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Weight {
    nodes: usize,
    bytes: usize,
}

impl Weight {
    fn add(&mut self, w: Weight) {
        self.nodes = self.nodes.saturating_add(w.nodes);
        self.bytes = self.bytes.saturating_add(w.bytes);
    }
}

/// Walk the YAML event stream once and stop at the first thing over budget: nesting deeper
/// than [`limits::MAX_DEPTH`], more than [`limits::MAX_ALIASES`] aliases, more than
/// [`limits::MAX_DOCUMENTS`] documents, or — counting every alias as a full copy of its
/// anchor — more than [`limits::MAX_NODES`] nodes or [`limits::MAX_EXPANDED_BYTES`] of
/// scalars. Errors carry the document index. Linear in the input up to where it stops.
fn yaml_budget(text: &str) -> Result<(), (usize, String)> {
    use saphyr_parser::{Event, Parser};

    let mut stack: Vec<(usize, Weight)> = Vec::new();
    let mut anchors: HashMap<usize, Weight> = HashMap::new();
    let mut total = Weight::default();
    let mut documents = 0usize;
    let mut aliases = 0usize;
    for item in Parser::new_from_str(text) {
        let doc = documents.saturating_sub(1);
        let (event, _) = item.map_err(|e| {
            if e.info() == "recursion limit exceeded" {
                // The scanner's own flow-nesting limit (deeper than ours), met while it looks
                // ahead for a key.
                (
                    doc,
                    format!("nested deeper than {} levels", limits::MAX_DEPTH),
                )
            } else {
                (doc, format!("invalid YAML: {e}"))
            }
        })?;
        let mut own = None;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > limits::MAX_DOCUMENTS {
                    return Err((
                        doc + 1,
                        format!("more than {} documents", limits::MAX_DOCUMENTS),
                    ));
                }
                own = Some(Weight { nodes: 1, bytes: 0 });
            }
            Event::Scalar(value, _, anchor, _) => {
                let w = Weight {
                    nodes: 1,
                    bytes: value.len(),
                };
                if anchor > 0 {
                    anchors.insert(anchor, w);
                }
                own = Some(w);
            }
            Event::Alias(id) => {
                aliases += 1;
                if aliases > limits::MAX_ALIASES {
                    return Err((doc, format!("more than {} aliases", limits::MAX_ALIASES)));
                }
                own = Some(
                    anchors
                        .get(&id)
                        .copied()
                        .unwrap_or(Weight { nodes: 1, bytes: 0 }),
                );
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits::MAX_DEPTH {
                    return Err((
                        doc,
                        format!("nested deeper than {} levels", limits::MAX_DEPTH),
                    ));
                }
                total.add(Weight { nodes: 1, bytes: 0 });
                stack.push((anchor, Weight { nodes: 1, bytes: 0 }));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, w)) = stack.pop() {
                    if anchor > 0 {
                        anchors.insert(anchor, w);
                    }
                    if let Some((_, parent)) = stack.last_mut() {
                        parent.add(w);
                    }
                }
            }
            _ => {}
        }
        if let Some(w) = own {
            total.add(w);
            if let Some((_, parent)) = stack.last_mut() {
                parent.add(w);
            }
        }
        if total.nodes > limits::MAX_NODES {
            return Err((
                doc,
                format!(
                    "more than {} nodes (aliases counted expanded)",
                    limits::MAX_NODES
                ),
            ));
        }
        if total.bytes > limits::MAX_EXPANDED_BYTES {
            return Err((
                doc,
                format!(
                    "more than {} of text (aliases counted expanded)",
                    human_bytes(limits::MAX_EXPANDED_BYTES)
                ),
            ));
        }
    }
    Ok(())
}

/// The JSON counterpart of [`yaml_budget`]: one pass over the text, outside strings, that
/// stops when lists and objects nest deeper than [`limits::MAX_DEPTH`] or the text holds more
/// than [`limits::MAX_NODES`] values. Syntax is left to serde_json.
fn json_budget(text: &str) -> Result<(), String> {
    let (mut depth, mut nodes) = (0usize, 1usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                nodes += 1;
                if depth > limits::MAX_DEPTH {
                    return Err(format!("nested deeper than {} levels", limits::MAX_DEPTH));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => nodes += 1,
            _ => {}
        }
        if nodes > limits::MAX_NODES {
            return Err(format!("more than {} values", limits::MAX_NODES));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_empty_documents() {
        let text = "---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:latest'}\n---\n---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: b}\nspec: {image: 'mcp-server:latest'}\n";
        let docs = parse_str("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].resource.name(), "b");
        assert_eq!(docs[1].resource.kind(), "Session");
        assert_eq!(docs[1].origin.document, 2);
    }

    #[test]
    fn unknown_field_names_file_document_and_path() {
        let text = "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: x, resources: {memroy: 1Gi}}\n";
        let err = parse_str("f.yaml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("f.yaml: document 0: spec.resources"),
            "{err}"
        );
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn json_list_round_trip() {
        let text = r#"{"items":[{"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{"name":"a"},"spec":{"image":"mcp-server:1","resources":{"cpus":0.5}}}]}"#;
        let docs = parse_str("l.json", text).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].origin.prefix, "items[0]");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = r#"{"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{"name":"a"},"spec":{"image":"x","resources":{"pids":"many"}}}"#;
        let err = parse_str("s.json", text).unwrap_err().to_string();
        assert!(
            err.starts_with("s.json: document 0: spec.resources.pids:"),
            "{err}"
        );
    }

    const HEAD: &str = "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\n";

    fn err(text: &str) -> String {
        parse_str("f", text).unwrap_err().to_string()
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        for n in [65usize, 100_000] {
            let start = std::time::Instant::now();
            let flow = format!("{HEAD}spec: {}{}", "[".repeat(n), "]".repeat(n));
            assert!(
                err(&flow).contains("nested deeper than 64"),
                "{}",
                err(&flow)
            );
            let block = format!("{HEAD}spec:\n  x:\n  {}1\n", "- ".repeat(n));
            assert!(
                err(&block).contains("nested deeper than 64"),
                "{}",
                err(&block)
            );
            let json = format!("{}{}", "[".repeat(n), "]".repeat(n));
            assert!(
                err(&json).contains("nested deeper than 64"),
                "{}",
                err(&json)
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(1));
        }
        // 64 levels (root, spec, 62 lists) are fine for the budget, then fail on the schema.
        let ok = format!(
            "{HEAD}spec: {{image: x, command: {}{}}}",
            "[".repeat(62),
            "]".repeat(62)
        );
        assert!(!err(&ok).contains("nested"), "{}", err(&ok));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(
            err(&text).contains("aliases counted expanded"),
            "{}",
            err(&text)
        );
        let big = "y".repeat(100_000);
        let mut text = format!("a: &big {big}\nb: [");
        for _ in 0..30 {
            text.push_str("*big, ");
        }
        text.push_str("]\n");
        assert!(err(&text).contains("of text"), "{}", err(&text));
        let many = format!("a: &s x\nb: [{}]\n", "*s, ".repeat(1001));
        assert!(
            err(&many).contains("more than 1000 aliases"),
            "{}",
            err(&many)
        );
        // A few aliases are fine.
        let fine = format!("{HEAD}spec: {{image: &i 'mcp-server:1', command: [*i]}}\n");
        assert!(parse_str("f", &fine).is_ok());
    }

    #[test]
    fn size_documents_and_utf8() {
        let huge = format!(
            "{HEAD}spec: {{image: '{}'}}",
            "x".repeat(limits::MAX_INPUT_BYTES)
        );
        assert!(err(&huge).contains("larger than the 1 MiB limit"));
        let docs = "---\n".repeat(1001);
        assert!(
            err(&docs).contains("more than 1000 documents"),
            "{}",
            err(&docs)
        );
        let e = parse_bytes("f", b"kind: \xff\xfe").unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        for (v, path) in [(".nan", "memory"), (".inf", "cpus"), ("-.inf", "cpus")] {
            let text = format!("{HEAD}spec: {{image: x, resources: {{{path}: {v}}}}}");
            let e = err(&text);
            assert!(
                e.contains(&format!("spec.resources.{path}: not a finite number")),
                "{e}"
            );
        }
    }

    #[test]
    fn structs_only_from_mappings() {
        for (field, text) in [
            ("spec.resources", "spec: {image: x, resources: []}"),
            ("spec.chat", "spec: {image: x, chat: []}"),
            ("spec.chat.tools", "spec: {image: x, chat: {tools: [a]}}"),
            ("spec", "spec: [image, x]"),
            (
                "status.conditions[0]",
                "spec: {image: x}\nstatus: {phase: Pending, conditions: [[]]}",
            ),
        ] {
            let e = err(&format!("{HEAD}{text}"));
            assert!(
                e.contains(&format!("document 0: {field}: must be a mapping")),
                "{e}"
            );
        }
        assert!(
            err("apiVersion: x\nkind: Session\nmetadata: [a]\nspec: {image: x}")
                .contains("metadata: must be a mapping, got a list")
        );
        assert!(parse_str("f", &format!("{HEAD}spec: {{image: x, chat: null}}")).is_ok());
    }

    #[test]
    fn messages_escape_control_characters() {
        let e = err(&format!("{HEAD}spec: {{image: x, \"bad\\r\\n\\0\\e\": 1}}"));
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("bad\\r\\n\\0\\u{1b}"), "{e}");
    }

    const POOL: &str = "apiVersion: orchestrator.mcp.dev/v1\nkind: WarmPool\nmetadata: {name: p}\nspec:\n  replicas: 2\n  template: {image: 'mcp-server:latest', env: {A: '1'}}\n";

    #[test]
    fn the_kind_decides_the_type_and_files_may_mix_kinds() {
        let text = format!("{POOL}---\n{HEAD}spec: {{image: 'mcp-server:latest', pool: p}}\n");
        let docs = parse_str("f.yaml", &text).unwrap();
        let Resource::WarmPool(p) = &docs[0].resource else {
            panic!("{docs:?}")
        };
        assert_eq!(
            (p.spec.replicas, p.spec.template.env["A"].as_str()),
            (2, "1")
        );
        let Resource::Session(s) = &docs[1].resource else {
            panic!("{docs:?}")
        };
        assert_eq!(s.spec.pool.as_deref(), Some("p"));
        assert_eq!(
            (docs[1].resource.kind(), docs[1].resource.name()),
            ("Session", "a")
        );
        assert_eq!(docs[0].resource.object_ref().to_string(), "warm pool \"p\"");
        let list = r#"{"items":[
            {"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{"name":"a"},"spec":{"image":"mcp-server:1"}},
            {"apiVersion":"orchestrator.mcp.dev/v1","kind":"WarmPool","metadata":{"name":"p"},"spec":{"replicas":1,"template":{"image":"mcp-server:1"}}}]}"#;
        let docs = parse_str("l.json", list).unwrap();
        let kinds: Vec<_> = docs.iter().map(|d| d.resource.kind()).collect();
        assert_eq!(kinds, ["Session", "WarmPool"]);
        assert_eq!(docs[1].origin.prefix, "items[1]");
    }

    #[test]
    fn any_other_kind_names_file_document_and_field() {
        for (kind, want) in [
            (
                "Pod",
                "f: document 0: kind: must be \"Session\" or \"WarmPool\", got \"Pod\"",
            ),
            (
                "7",
                "f: document 0: kind: must be \"Session\" or \"WarmPool\", got a number",
            ),
            (
                "[a]",
                "f: document 0: kind: must be \"Session\" or \"WarmPool\", got a list",
            ),
        ] {
            let e = err(&format!(
                "apiVersion: orchestrator.mcp.dev/v1\nkind: {kind}\nmetadata: {{name: a}}\nspec: {{}}\n"
            ));
            assert_eq!(e, want);
        }
        let e = err("apiVersion: orchestrator.mcp.dev/v1\nmetadata: {name: a}\nspec: {}\n");
        assert!(e.starts_with("f: document 0: missing field `kind`"), "{e}");
        let e = err(&format!(
            "{HEAD}spec: {{image: x}}\n---\nkind: \"Pod\\r\\n\"\n"
        ));
        assert!(e.starts_with("f: document 1: kind:"), "{e}");
        assert!(!e.chars().any(char::is_control), "{e:?}");
        let e = err(r#"{"items": [{"kind": "Session"}, {"kind": "Nope"}]}"#);
        assert!(e.starts_with("f: document 0: items[0]"), "{e}");
        let e = err(
            r#"{"items": [{"apiVersion":"orchestrator.mcp.dev/v1","kind":"Session","metadata":{"name":"a"},"spec":{"image":"x"}}, {"kind": "Nope"}]}"#,
        );
        assert!(
            e.starts_with("f: document 0: items[1].kind: must be"),
            "{e}"
        );
    }

    #[test]
    fn pool_errors_name_the_template_field() {
        let e = err(&POOL.replace("env: {A: '1'}", "memroy: 1Gi"));
        assert!(e.starts_with("f: document 0: spec.template"), "{e}");
        assert!(e.contains("memroy"), "{e}");
        let e = err(&POOL.replace("{image: 'mcp-server:latest', env: {A: '1'}}", "[x]"));
        assert!(
            e.contains("document 0: spec.template: must be a mapping, got a list"),
            "{e}"
        );
        let e = err(&POOL.replace("replicas: 2", "replicas: -1"));
        assert!(e.starts_with("f: document 0: spec.replicas:"), "{e}");
        let e = err(&POOL.replace("replicas: 2", "replicas: 2\n  chat: {}"));
        assert!(e.contains("unknown field `chat`"), "{e}");
    }

    #[test]
    fn spec_file_filter() {
        assert!(is_spec_file(Path::new("a/b.yaml")));
        assert!(is_spec_file(Path::new("b.json")));
        assert!(!is_spec_file(Path::new(".b.yaml")));
        assert!(!is_spec_file(Path::new("b.yaml~")));
        assert!(!is_spec_file(Path::new("b.yaml.swp")));
        assert!(!is_spec_file(Path::new("README.md")));
    }
}
