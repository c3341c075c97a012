//! Reading Session documents from files, directories and stdin.
//!
//! A file may hold one JSON object, several YAML documents, or a list (`{"items": [...]}`).
//! Every error names the file, the document index (0-based) and the field path. Parsing does
//! not validate the sandbox contract; that is [`crate::admission`]'s job.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::resource::Session;

/// Where a parsed session came from.
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

/// One parsed session with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from.
    pub origin: Origin,
    /// The parsed session (not yet admitted).
    pub session: Session,
}

/// Why a file could not be turned into sessions.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path.
        file: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML/JSON or does not fit the Session schema.
    #[error("{location}: {message}")]
    Invalid {
        /// `file: document N: field.path`.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// Does this file name count as a spec file (`*.yaml`, `*.yml`, `*.json`, not hidden, not an
/// editor temp file)?
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

/// Expand `-f` arguments: files as given, directories to their spec files (non-recursive,
/// sorted), `-` for stdin.
pub fn expand_paths(args: &[PathBuf]) -> Result<Vec<PathBuf>, ParseError> {
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            out.push(arg.clone());
            continue;
        }
        let meta = std::fs::metadata(arg).map_err(|source| ParseError::Read {
            file: arg.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(arg)
                .map_err(|source| ParseError::Read {
                    file: arg.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_spec_file(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(arg.clone());
        }
    }
    Ok(out)
}

/// Read and parse every document of the given paths (see [`expand_paths`]).
pub fn load_paths(args: &[PathBuf]) -> Result<Vec<Document>, ParseError> {
    let mut docs = Vec::new();
    for path in expand_paths(args)? {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
                ParseError::Read {
                    file: "-".into(),
                    source,
                }
            })?;
            ("-".to_string(), text)
        } else {
            let text = std::fs::read_to_string(&path).map_err(|source| ParseError::Read {
                file: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), text)
        };
        docs.extend(parse_str(&name, &text)?);
    }
    Ok(docs)
}

/// Parse the text of one file. JSON is detected by a leading `{` or `[`; everything else is
/// read as (possibly multi-document) YAML.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Document>, ParseError> {
    let mut values = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Invalid {
            location: format!("{file}: document 0"),
            message: format!("invalid JSON: {e}"),
        })?;
        values.push(v);
    } else {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v: serde_yaml::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| ParseError::Invalid {
                    location: format!("{file}: document {index}"),
                    message: format!("invalid YAML: {e}"),
                })?;
            let v = serde_json::to_value(v).map_err(|e| ParseError::Invalid {
                location: format!("{file}: document {index}"),
                message: format!("unsupported YAML: {e}"),
            })?;
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
                    return Err(ParseError::Invalid {
                        location: origin.at("items"),
                        message: "must be a list of Session objects".into(),
                    });
                };
                expand_items(&origin, items, &mut docs)?;
            }
            other => docs.push(Document {
                session: from_value(&origin, other)?,
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
            session: from_value(&origin, item)?,
            origin,
        });
    }
    Ok(())
}

/// Deserialize one document, keeping the field path of the first error.
pub fn from_value(origin: &Origin, value: Value) -> Result<Session, ParseError> {
    if !value.is_object() {
        return Err(ParseError::Invalid {
            location: origin.at(""),
            message: "a Session document must be a mapping".into(),
        });
    }
    serde_path_to_error::deserialize::<_, Session>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ParseError::Invalid {
            location: origin.at(&path),
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_empty_documents() {
        let text = "---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: a}\nspec: {image: 'mcp-server:latest'}\n---\n---\napiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {name: b}\nspec: {image: 'mcp-server:latest'}\n";
        let docs = parse_str("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].session.metadata.name, "b");
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
