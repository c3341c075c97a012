//! MCP tool schemas → Gemini function declarations. Pure functions, no IO.
//!
//! An MCP `tools/list` gives each tool a name and a JSON Schema for its arguments
//! (`inputSchema`). Gemini takes them as `functionDeclarations[]` with the schema in
//! `parametersJsonSchema`, but refuses some of what MCP servers commonly send. [`declarations`]
//! turns a tool list into declarations Gemini accepts, and a [`NameMap`] to map the names the
//! model calls back to MCP tool names.
//!
//! What [`normalize_schema`] changes:
//! - `$ref` is inlined, from `$defs`, `definitions` or any `#/...` JSON pointer into the
//!   schema; keywords next to a `$ref` are kept (they win over the target's). A reference
//!   that points into its own expansion (a recursive type) is cut there with a permissive
//!   `{"type": "object"}` (or `{}` when the target is not an object); a reference that cannot
//!   be resolved (remote, anchors) becomes `{}`. `$defs`, `definitions`, `$schema`, `$id`,
//!   `$anchor` and `$comment` are removed.
//! - An array without `items` gets `items: {}`; a tuple-form `items: [...]` becomes
//!   `prefixItems` plus `items: {}`.
//! - `required` entries naming properties that do not exist are dropped (the properties of
//!   the schema itself, of its `allOf`/`anyOf`/`oneOf` members, and — inside such a member —
//!   of the parent); an emptied `required` is removed.
//! - Empty `anyOf`, `oneOf` and `allOf` are removed.
//! - `true` as a subschema becomes `{}`; the root always describes an object.
//!
//! Values (`default`, `enum`, `const`, `examples`) are never touched, and a property *named*
//! `$ref` stays a property.
//!
//! Function names: Gemini accepts letters, digits, `_`, `.`, `:` and `-`, starting with a
//! letter or `_`, at most 64 characters (`FunctionDeclaration.name` in the Generative
//! Language v1beta reference, as generated in Google's `google_cloud_ai_generativelanguage_v1beta`
//! client docs; "must start with a letter or an underscore" from the Vertex AI
//! `FunctionDeclaration` reference — we apply both). A valid name is kept; any other is
//! mapped to a valid, unique one (invalid characters → `_`, a `_` prefix when it starts
//! badly, truncated to 64, `_2`, `_3`… on collision), never taking a name another tool has.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::chat::gemini::{Extra, FunctionDeclaration, Tool};

/// Longest function name Gemini accepts.
pub const MAX_FUNCTION_NAME_LEN: usize = 64;

/// Deepest schema nesting followed; deeper subschemas become `{}`.
const MAX_DEPTH: usize = 64;
/// Most `$ref` expansions in one schema (guards against exponential inlining).
const MAX_EXPANSIONS: usize = 1000;

/// One MCP tool, as `tools/list` describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolSpec {
    /// The MCP tool name (what `tools/call` needs).
    pub name: String,
    /// What the tool does (the MCP description, else its title).
    pub description: Option<String>,
    /// The MCP `inputSchema`.
    pub input_schema: Value,
}

impl From<&rmcp::model::Tool> for ToolSpec {
    fn from(tool: &rmcp::model::Tool) -> Self {
        ToolSpec {
            name: tool.name.to_string(),
            description: tool
                .description
                .as_ref()
                .map(|d| d.to_string())
                .or_else(|| tool.title.clone()),
            input_schema: Value::Object((*tool.input_schema).clone()),
        }
    }
}

/// Gemini function names ↔ MCP tool names, one to one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameMap {
    to_mcp: BTreeMap<String, String>,
    to_gemini: BTreeMap<String, String>,
}

impl NameMap {
    /// The MCP tool behind a name the model called; `None` for a name we never declared.
    pub fn mcp_name(&self, gemini_name: &str) -> Option<&str> {
        self.to_mcp.get(gemini_name).map(String::as_str)
    }

    /// The name an MCP tool was declared under.
    pub fn gemini_name(&self, mcp_name: &str) -> Option<&str> {
        self.to_gemini.get(mcp_name).map(String::as_str)
    }

    /// How many tools are mapped.
    pub fn len(&self) -> usize {
        self.to_mcp.len()
    }

    /// Whether no tool is mapped.
    pub fn is_empty(&self) -> bool {
        self.to_mcp.is_empty()
    }

    /// `(gemini name, MCP name)` pairs, by Gemini name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.to_mcp.iter().map(|(g, m)| (g.as_str(), m.as_str()))
    }

    fn insert(&mut self, gemini: String, mcp: String) {
        self.to_gemini.insert(mcp.clone(), gemini.clone());
        self.to_mcp.insert(gemini, mcp);
    }
}

/// Declarations for a tool list, and how to map called names back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declarations {
    /// One declaration per distinct tool, in the order of the list.
    pub declarations: Vec<FunctionDeclaration>,
    /// Gemini names ↔ MCP names.
    pub names: NameMap,
}

impl Declarations {
    /// The `tools[]` entry carrying the declarations; `None` when there are none (an empty
    /// `functionDeclarations` should not be sent).
    pub fn tool(&self) -> Option<Tool> {
        (!self.declarations.is_empty()).then(|| Tool {
            function_declarations: self.declarations.clone(),
            extra: Extra::new(),
        })
    }
}

/// Declarations Gemini accepts for `tools`. A name listed twice is declared once (the first).
pub fn declarations<'a>(tools: impl IntoIterator<Item = &'a ToolSpec>) -> Declarations {
    let mut distinct: Vec<&ToolSpec> = Vec::new();
    let mut seen = BTreeSet::new();
    for tool in tools {
        if seen.insert(tool.name.as_str()) {
            distinct.push(tool);
        } else {
            tracing::warn!(tool = %tool.name, "MCP server lists a tool name twice; keeping the first");
        }
    }
    let names = map_names(distinct.iter().map(|t| t.name.as_str()));
    let declarations = distinct
        .iter()
        .map(|tool| {
            let name = names.gemini_name(&tool.name).unwrap_or(&tool.name);
            declaration(name, tool)
        })
        .collect();
    Declarations {
        declarations,
        names,
    }
}

/// The declaration of `tool` under `gemini_name`, its schema normalised. A tool without
/// parameters gets no `parametersJsonSchema` at all.
pub fn declaration(gemini_name: &str, tool: &ToolSpec) -> FunctionDeclaration {
    let schema = normalize_schema(&tool.input_schema);
    FunctionDeclaration {
        name: gemini_name.to_string(),
        description: tool.description.clone().unwrap_or_default(),
        parameters_json_schema: (!takes_no_arguments(&schema)).then_some(schema),
        extra: Extra::new(),
    }
}

/// A normalised schema that says only "an object with no properties".
fn takes_no_arguments(schema: &Value) -> bool {
    let Some(m) = schema.as_object() else {
        return false;
    };
    let no_props = m
        .get("properties")
        .is_none_or(|p| p.as_object().is_some_and(Map::is_empty));
    no_props
        && m.iter().all(|(k, v)| match k.as_str() {
            "type" => v == "object",
            "properties" | "title" | "description" => true,
            "additionalProperties" => v.is_boolean(),
            _ => false,
        })
}

/// Whether Gemini accepts `name` as a function name.
pub fn is_valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_FUNCTION_NAME_LEN
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// A valid name close to `name` (not necessarily unique).
fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("tool");
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out.truncate(MAX_FUNCTION_NAME_LEN);
    out
}

/// Map distinct MCP names to valid, unique Gemini names. Valid names are kept and reserved
/// first, so a mapped name never takes one.
fn map_names<'a>(names: impl IntoIterator<Item = &'a str>) -> NameMap {
    let names: Vec<&str> = names.into_iter().collect();
    let mut taken: BTreeSet<String> = names
        .iter()
        .filter(|n| is_valid_function_name(n))
        .map(|n| n.to_string())
        .collect();
    let mut map = NameMap::default();
    for name in names {
        if is_valid_function_name(name) {
            map.insert(name.to_string(), name.to_string());
            continue;
        }
        let base = sanitize_name(name);
        let mut candidate = base.clone();
        let mut n = 2u32;
        while taken.contains(&candidate) {
            let suffix = format!("_{n}");
            let mut stem = base.clone();
            stem.truncate(MAX_FUNCTION_NAME_LEN - suffix.len());
            candidate = stem + &suffix;
            n += 1;
        }
        taken.insert(candidate.clone());
        map.insert(candidate, name.to_string());
    }
    map
}

/// `schema` with everything Gemini rejects normalised (see the module documentation). The
/// result always describes an object.
pub fn normalize_schema(schema: &Value) -> Value {
    let mut n = Normalizer {
        root: schema,
        stack: vec![String::new()],
        expansions: 0,
    };
    let mut out = n.schema(schema, 0, None);
    match &mut out {
        Value::Object(m) => {
            if !m.contains_key("type") {
                m.insert("type".into(), json!("object"));
            }
        }
        _ => out = json!({"type": "object"}),
    }
    out
}

/// Keywords whose value is a schema.
const SCHEMA_KEYWORDS: &[&str] = &[
    "additionalProperties",
    "unevaluatedProperties",
    "additionalItems",
    "unevaluatedItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "contentSchema",
];
/// Keywords whose value maps names to schemas.
const SCHEMA_MAP_KEYWORDS: &[&str] = &["properties", "patternProperties", "dependentSchemas"];
/// Keywords whose value is a list of schemas.
const COMBINATORS: &[&str] = &["allOf", "anyOf", "oneOf"];
/// Keywords dropped everywhere.
const DROPPED: &[&str] = &[
    "$defs",
    "definitions",
    "$schema",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$comment",
    "$vocabulary",
];

struct Normalizer<'a> {
    root: &'a Value,
    /// JSON pointers being expanded (the root is "").
    stack: Vec<String>,
    expansions: usize,
}

impl Normalizer<'_> {
    /// Normalise one subschema. `parent_props` are the property names of the enclosing schema
    /// when this one is a member of `allOf`/`anyOf`/`oneOf`.
    fn schema(
        &mut self,
        v: &Value,
        depth: usize,
        parent_props: Option<&BTreeSet<String>>,
    ) -> Value {
        let m = match v {
            Value::Bool(true) => return json!({}),
            Value::Object(m) => m,
            other => return other.clone(),
        };
        if depth > MAX_DEPTH {
            return json!({});
        }
        match m.get("$ref").and_then(Value::as_str) {
            Some(r) => self.reference(r, m, depth, parent_props),
            None => self.object(m, depth, parent_props),
        }
    }

    fn reference(
        &mut self,
        r: &str,
        m: &Map<String, Value>,
        depth: usize,
        parent_props: Option<&BTreeSet<String>>,
    ) -> Value {
        let pointer = r.strip_prefix('#').map(percent_decode);
        let target = pointer.as_deref().and_then(|p| self.root.pointer(p));
        let mut out = match (pointer, target) {
            (Some(p), Some(target)) => {
                if self.stack.contains(&p) || self.expansions >= MAX_EXPANSIONS {
                    cut(target)
                } else {
                    self.expansions += 1;
                    self.stack.push(p);
                    let out = self.schema(target, depth + 1, parent_props);
                    self.stack.pop();
                    out
                }
            }
            _ => json!({}),
        };
        let mut siblings = m.clone();
        siblings.remove("$ref");
        if !siblings.is_empty() {
            let siblings = self.object(&siblings, depth, parent_props);
            match (&mut out, siblings) {
                (Value::Object(o), Value::Object(s)) => o.extend(s),
                (o, s) => *o = s,
            }
        }
        out
    }

    fn object(
        &mut self,
        m: &Map<String, Value>,
        depth: usize,
        parent_props: Option<&BTreeSet<String>>,
    ) -> Value {
        let own_props: Option<BTreeSet<String>> = m
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect());
        let member_parent = own_props.as_ref().or(parent_props);
        let mut out = Map::new();
        for (k, v) in m {
            let key = k.as_str();
            if DROPPED.contains(&key) {
                continue;
            }
            let value = if SCHEMA_MAP_KEYWORDS.contains(&key) {
                match v {
                    Value::Object(props) => Value::Object(
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), self.schema(s, depth + 1, None)))
                            .collect(),
                    ),
                    other => other.clone(),
                }
            } else if COMBINATORS.contains(&key) {
                match v {
                    Value::Array(members) => Value::Array(
                        members
                            .iter()
                            .map(|s| self.schema(s, depth + 1, member_parent))
                            .collect(),
                    ),
                    other => other.clone(),
                }
            } else if key == "prefixItems" {
                match v {
                    Value::Array(items) => Value::Array(
                        items
                            .iter()
                            .map(|s| self.schema(s, depth + 1, None))
                            .collect(),
                    ),
                    other => other.clone(),
                }
            } else if key == "items" {
                match v {
                    Value::Array(tuple) => {
                        if !m.contains_key("prefixItems") {
                            let tuple = tuple
                                .iter()
                                .map(|s| self.schema(s, depth + 1, None))
                                .collect();
                            out.insert("prefixItems".into(), Value::Array(tuple));
                        }
                        json!({})
                    }
                    s => self.schema(s, depth + 1, None),
                }
            } else if SCHEMA_KEYWORDS.contains(&key) && v.is_object() {
                self.schema(v, depth + 1, None)
            } else {
                v.clone()
            };
            out.insert(k.clone(), value);
        }

        for key in COMBINATORS {
            if out
                .get(*key)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                out.remove(*key);
            }
        }

        let is_array = match out.get("type") {
            Some(Value::String(t)) => t == "array",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
            _ => false,
        };
        if is_array && !out.contains_key("items") {
            out.insert("items".into(), json!({}));
        }

        if let Some(required) = out.get("required").and_then(Value::as_array) {
            let mut known: BTreeSet<String> = own_props.clone().unwrap_or_default();
            known.extend(parent_props.into_iter().flatten().cloned());
            for key in COMBINATORS {
                for member in out
                    .get(*key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = member.get("properties").and_then(Value::as_object) {
                        known.extend(p.keys().cloned());
                    }
                }
            }
            let mut kept = BTreeSet::new();
            let filtered: Vec<Value> = required
                .iter()
                .filter_map(Value::as_str)
                .filter(|name| known.contains(*name) && kept.insert(name.to_string()))
                .map(|name| json!(name))
                .collect();
            if filtered.is_empty() {
                out.remove("required");
            } else {
                out.insert("required".into(), Value::Array(filtered));
            }
        }
        Value::Object(out)
    }
}

/// What a recursive reference is replaced with.
fn cut(target: &Value) -> Value {
    if target.get("type").is_some_and(|t| t == "object") {
        json!({"type": "object"})
    } else {
        json!({})
    }
}

/// Decode `%XX` escapes in a URI fragment.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "$defs inlined and removed",
                json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}},
                       "$defs": {"P": {"type": "string", "minLength": 1}}}),
                json!({"type": "object", "properties": {"p": {"type": "string", "minLength": 1}}}),
            ),
            (
                "draft-07 definitions inlined, $schema dropped",
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                       "properties": {"p": {"$ref": "#/definitions/P"}},
                       "definitions": {"P": {"type": "integer"}}}),
                json!({"type": "object", "properties": {"p": {"type": "integer"}}}),
            ),
            (
                "nested refs resolved transitively",
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
                       "$defs": {"A": {"type": "array", "items": {"$ref": "#/$defs/B"}},
                                 "B": {"type": "boolean"}}}),
                json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "boolean"}}}}),
            ),
            (
                "keywords next to $ref are kept and win",
                json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/P", "description": "mine"}},
                       "$defs": {"P": {"type": "string", "description": "theirs"}}}),
                json!({"type": "object", "properties": {"p": {"type": "string", "description": "mine"}}}),
            ),
            (
                "recursive ref cut with a permissive object",
                json!({"type": "object", "properties": {"root": {"$ref": "#/$defs/Node"}},
                       "$defs": {"Node": {"type": "object", "properties": {
                           "name": {"type": "string"},
                           "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}}),
                json!({"type": "object", "properties": {"root": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"type": "object"}}}}}}),
            ),
            (
                "reference to the root is a cycle",
                json!({"type": "object", "properties": {"next": {"$ref": "#"}, "v": {"type": "number"}}}),
                json!({"type": "object", "properties": {"next": {"type": "object"}, "v": {"type": "number"}}}),
            ),
            (
                "mutual recursion through a non-object cut with {}",
                json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}},
                       "$defs": {"A": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/A"}]}}}),
                json!({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {}]}}}),
            ),
            (
                "unresolvable and remote refs become {}",
                json!({"type": "object", "properties": {
                    "a": {"$ref": "#/$defs/Missing"},
                    "b": {"$ref": "https://example.com/s.json"},
                    "c": {"$ref": "#anchor", "description": "d"}}}),
                json!({"type": "object", "properties": {"a": {}, "b": {}, "c": {"description": "d"}}}),
            ),
            (
                "percent-encoded and ~-escaped pointers",
                json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/a%20b~1c"}},
                       "$defs": {"a b/c": {"type": "string"}}}),
                json!({"type": "object", "properties": {"p": {"type": "string"}}}),
            ),
            (
                "array without items",
                json!({"type": "object", "properties": {
                    "a": {"type": "array"},
                    "b": {"type": ["array", "null"]},
                    "c": {"type": "array", "items": {"type": "string"}}}}),
                json!({"type": "object", "properties": {
                    "a": {"type": "array", "items": {}},
                    "b": {"type": ["array", "null"], "items": {}},
                    "c": {"type": "array", "items": {"type": "string"}}}}),
            ),
            (
                "tuple items become prefixItems",
                json!({"type": "object", "properties": {"t": {"type": "array",
                       "items": [{"type": "string"}, {"type": "number"}]}}}),
                json!({"type": "object", "properties": {"t": {"type": "array",
                       "prefixItems": [{"type": "string"}, {"type": "number"}], "items": {}}}}),
            ),
            (
                "required naming missing properties dropped",
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "required": ["a", "ghost", "a", 3]}),
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
            ),
            (
                "required emptied is removed, also without properties",
                json!({"type": "object", "properties": {"o": {"type": "object", "required": ["x"]}},
                       "required": ["ghost"]}),
                json!({"type": "object", "properties": {"o": {"type": "object"}}}),
            ),
            (
                "required may name properties of allOf members and, in members, of the parent",
                json!({"type": "object", "properties": {"a": {}, "b": {}},
                       "anyOf": [{"required": ["a"]}, {"required": ["b", "zz"]}],
                       "allOf": [{"properties": {"c": {"type": "string"}}}],
                       "required": ["c"]}),
                json!({"type": "object", "properties": {"a": {}, "b": {}},
                       "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
                       "allOf": [{"properties": {"c": {"type": "string"}}}],
                       "required": ["c"]}),
            ),
            (
                "empty anyOf/oneOf/allOf removed, also nested",
                json!({"type": "object", "anyOf": [], "properties": {
                    "p": {"type": "string", "oneOf": [], "allOf": []},
                    "q": {"anyOf": [{"type": "string"}]}}}),
                json!({"type": "object", "properties": {
                    "p": {"type": "string"},
                    "q": {"anyOf": [{"type": "string"}]}}}),
            ),
            (
                "true subschemas become {}, false and boolean keywords stay",
                json!({"type": "object", "properties": {"any": true, "never": false},
                       "additionalProperties": false}),
                json!({"type": "object", "properties": {"any": {}, "never": false},
                       "additionalProperties": false}),
            ),
            (
                "values are data: $ref in default/enum/const untouched; a property named $ref stays",
                json!({"type": "object", "properties": {
                    "$ref": {"type": "string", "default": "#/$defs/X"},
                    "o": {"type": "object", "default": {"$ref": "x"}, "const": {"$defs": 1},
                          "enum": [{"type": "array"}]}}}),
                json!({"type": "object", "properties": {
                    "$ref": {"type": "string", "default": "#/$defs/X"},
                    "o": {"type": "object", "default": {"$ref": "x"}, "const": {"$defs": 1},
                          "enum": [{"type": "array"}]}}}),
            ),
            (
                "schemas under other keywords are normalised too",
                json!({"type": "object", "additionalProperties": {"$ref": "#/$defs/V"},
                       "patternProperties": {"^x": {"type": "array"}},
                       "not": {"anyOf": []},
                       "$defs": {"V": {"type": "number"}}}),
                json!({"type": "object", "additionalProperties": {"type": "number"},
                       "patternProperties": {"^x": {"type": "array", "items": {}}},
                       "not": {}}),
            ),
            (
                "root without type becomes an object",
                json!({"properties": {"a": {"type": "string"}}}),
                json!({"type": "object", "properties": {"a": {"type": "string"}}}),
            ),
            (
                "root that is not a schema object",
                json!(true),
                json!({"type": "object"}),
            ),
            ("root null", Value::Null, json!({"type": "object"})),
        ];
        for (name, input, want) in cases {
            assert_eq!(normalize_schema(&input), want, "case: {name}");
        }
    }

    #[test]
    fn exponential_inlining_is_bounded() {
        // Each level references the next twice: 2^40 expansions without a budget.
        let mut defs = Map::new();
        for i in 0..40 {
            defs.insert(
                format!("D{i}"),
                json!({"type": "object", "properties": {
                    "l": {"$ref": format!("#/$defs/D{}", i + 1)},
                    "r": {"$ref": format!("#/$defs/D{}", i + 1)}}}),
            );
        }
        defs.insert("D40".into(), json!({"type": "string"}));
        let schema =
            json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/D0"}}, "$defs": defs});
        let out = normalize_schema(&schema);
        assert!(!out.to_string().contains("$ref"));
        assert!(out.to_string().len() < 1_000_000);
    }

    #[test]
    fn name_validity() {
        for ok in ["a", "_a", "get_weather", "ns.tool:v1-2", &"a".repeat(64)] {
            assert!(is_valid_function_name(ok), "{ok}");
        }
        for bad in ["", "1a", "-a", ".a", "a b", "a/b", "héllo", &"a".repeat(65)] {
            assert!(!is_valid_function_name(bad), "{bad}");
        }
    }

    #[test]
    fn name_mapping_table() {
        let long = "x".repeat(70);
        let long2 = format!("{}y", "x".repeat(69));
        let names = [
            "get_weather",
            "my tool",
            "1st",
            "héllo",
            "",
            "a/b",
            "a_b",
            "a b",
            long.as_str(),
            long2.as_str(),
            "-dash",
        ];
        let map = map_names(names);
        let want = [
            ("get_weather", "get_weather"),
            ("my tool", "my_tool"),
            ("1st", "_1st"),
            ("héllo", "h_llo"),
            ("", "tool"),
            ("a/b", "a_b_2"),
            ("a_b", "a_b"),
            ("a b", "a_b_3"),
            (long.as_str(), &"x".repeat(64)),
            (long2.as_str(), &format!("{}_2", "x".repeat(62))),
            ("-dash", "_-dash"),
        ];
        for (mcp, gemini) in want {
            assert_eq!(map.gemini_name(mcp), Some(gemini), "{mcp:?}");
            assert_eq!(map.mcp_name(gemini), Some(mcp), "{gemini:?}");
            assert!(is_valid_function_name(gemini), "{gemini:?}");
        }
        assert_eq!(map.len(), names.len());
        assert_eq!(map.mcp_name("unknown"), None);
    }

    #[test]
    fn declarations_from_tools() {
        let tools = vec![
            ToolSpec {
                name: "echo".into(),
                description: Some("Echo a message".into()),
                input_schema: json!({"type": "object", "properties": {"message": {"type": "string"}},
                                     "required": ["message", "nope"]}),
            },
            ToolSpec {
                name: "now".into(),
                description: None,
                input_schema: json!({"type": "object", "properties": {}}),
            },
            ToolSpec {
                name: "list files".into(),
                description: Some("ls".into()),
                input_schema: json!({"type": "object", "properties": {"paths": {"type": "array"}}}),
            },
            ToolSpec {
                name: "echo".into(),
                description: Some("duplicate".into()),
                input_schema: json!({}),
            },
        ];
        let d = declarations(&tools);
        let got = serde_json::to_value(d.tool().unwrap()).unwrap();
        assert_eq!(
            got,
            json!({"functionDeclarations": [
                {"name": "echo", "description": "Echo a message",
                 "parametersJsonSchema": {"type": "object", "properties": {"message": {"type": "string"}},
                                          "required": ["message"]}},
                {"name": "now"},
                {"name": "list_files", "description": "ls",
                 "parametersJsonSchema": {"type": "object",
                                          "properties": {"paths": {"type": "array", "items": {}}}}}
            ]})
        );
        assert_eq!(d.names.mcp_name("list_files"), Some("list files"));
        assert_eq!(d.names.len(), 3);
        assert!(declarations(&[]).tool().is_none());
    }

    #[test]
    fn from_rmcp_tool() {
        let schema = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        let mut tool = rmcp::model::Tool::new(
            "add",
            "Add numbers",
            std::sync::Arc::new(schema.as_object().unwrap().clone()),
        );
        let spec = ToolSpec::from(&tool);
        assert_eq!(spec.name, "add");
        assert_eq!(spec.description.as_deref(), Some("Add numbers"));
        assert_eq!(spec.input_schema, schema);
        tool.description = None;
        tool.title = Some("Adder".into());
        assert_eq!(ToolSpec::from(&tool).description.as_deref(), Some("Adder"));
    }
}
