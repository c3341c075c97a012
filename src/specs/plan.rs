//! The pure part of the specs directory: the files (their text, or that they are gone) and
//! the stored objects (sessions and warm pools) in, per file what to apply, what to delete
//! and what to report out. No IO here; [`super::watch`] reads the files and executes the
//! plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::domain::admission;
use crate::domain::contract::Policy;
use crate::domain::parse::{self, Resource};
use crate::domain::resource::{Object, ObjectRef};

/// What a spec file holds now, as read from disk.
#[derive(Debug, Clone, PartialEq)]
pub enum FileContent {
    /// Its text.
    Text(String),
    /// It exists but cannot be read; the message says why.
    Unreadable(String),
    /// It no longer exists (or is no longer a regular file).
    Gone,
}

/// Which part of the directory a sync covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every file: the files given are all there is, so a stored object whose file is not
    /// among them is deleted.
    Full,
    /// Only the files given; objects of other files are not looked at.
    Files,
}

/// A stored object as the plan sees it: which one, and where it came from (its source
/// annotation).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Kind and name.
    pub object: ObjectRef,
    /// Its source annotation, if any.
    pub source: Option<String>,
}

impl Stored {
    /// The plan's view of a stored object.
    pub fn of<T: Object>(obj: &T) -> Stored {
        Stored {
            object: ObjectRef::of::<T>(obj.meta().name.clone()),
            source: obj.meta().source().map(str::to_string),
        }
    }
}

/// What to do about one file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileAction {
    /// The file is valid: apply its objects (warm pools first, then sessions, each in file
    /// order) and delete the objects it declared before but no longer does.
    Apply {
        /// The objects, admitted, without `resourceVersion`.
        objects: Vec<Resource>,
        /// What it no longer declares (sessions before pools).
        delete: Vec<ObjectRef>,
    },
    /// The file is gone: delete every object it declared.
    Remove {
        /// What it declared.
        delete: Vec<ObjectRef>,
    },
    /// The file is invalid: write nothing, report `message` (one line naming file, document
    /// and field) on the objects it declared before.
    Invalid {
        /// Every error, `; `-separated.
        message: String,
        /// What it declared before (left untouched).
        declared: Vec<ObjectRef>,
    },
}

/// The plan for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    /// `file:<absolute path>`.
    pub source: String,
    /// What to do.
    pub action: FileAction,
}

/// The source of a file in the specs directory.
pub fn source_of(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Is `source` a file directly in the directory whose sources start with `prefix`
/// (`file:<dir>/`)?
pub(super) fn in_dir<'a>(prefix: &str, source: &'a str) -> Option<&'a str> {
    source
        .strip_prefix(prefix)
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// Parse and admit every document of a file (see [`admission::validate_documents`]); all
/// of them, warm pools first (a session of the file may name one), or the list of errors.
pub fn validate_file(file: &str, text: &str, policy: &Policy) -> Result<Vec<Resource>, String> {
    let docs = parse::parse_str(file, text).map_err(|e| e.to_string())?;
    admission::validate_documents(&docs, policy).map_err(|e| e.to_string())?;
    let (mut objects, sessions): (Vec<Resource>, Vec<Resource>) = docs
        .into_iter()
        .map(|d| {
            let mut r = d.resource;
            // A file is declarative: a resourceVersion in it would be a stale precondition
            // forever.
            r.meta_mut().resource_version = None;
            r
        })
        .partition(|r| matches!(r, Resource::WarmPool(_)));
    objects.extend(sessions);
    Ok(objects)
}

/// Decide what to do. `prefix` is `file:<dir>/`; `files` maps the source of each file looked
/// at to its content; `stored` is every stored session and pool (only those whose source is
/// a file directly in the directory matter). With [`Scope::Full`], files that declared
/// objects but are not in `files` are gone. No IO; the result is sorted by source.
pub fn plan(
    prefix: &str,
    files: &BTreeMap<String, FileContent>,
    stored: &[Stored],
    scope: Scope,
    policy: &Policy,
) -> Vec<FilePlan> {
    let mut declared: BTreeMap<&str, Vec<ObjectRef>> = BTreeMap::new();
    for s in stored {
        if let Some(src) = s.source.as_deref()
            && in_dir(prefix, src).is_some()
        {
            declared.entry(src).or_default().push(s.object.clone());
        }
    }
    let mut sources: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    if scope == Scope::Full {
        sources.extend(declared.keys().copied());
    }
    sources
        .into_iter()
        .map(|source| {
            let mut before = declared.get(source).cloned().unwrap_or_default();
            before.sort();
            let file = source.strip_prefix("file:").unwrap_or(source);
            let action = match files.get(source).unwrap_or(&FileContent::Gone) {
                FileContent::Gone => FileAction::Remove { delete: before },
                FileContent::Unreadable(why) => FileAction::Invalid {
                    message: format!("{file}: cannot read: {why}"),
                    declared: before,
                },
                FileContent::Text(text) => match validate_file(file, text, policy) {
                    Ok(objects) => {
                        let now: BTreeSet<ObjectRef> =
                            objects.iter().map(Resource::object_ref).collect();
                        let delete = before.into_iter().filter(|n| !now.contains(n)).collect();
                        FileAction::Apply { objects, delete }
                    }
                    Err(message) => FileAction::Invalid {
                        message,
                        declared: before,
                    },
                },
            };
            FilePlan {
                source: source.to_string(),
                action,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pool::WarmPool;
    use crate::domain::resource::{SOURCE_ANNOTATION, Session};

    const PREFIX: &str = "file:/specs/";

    fn policy() -> Policy {
        Policy::default()
    }

    fn yaml(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: orchestrator.mcp.dev/v1\nkind: Session\nmetadata: {{name: {name}}}\nspec:\n  image: mcp-server:latest\n{extra}"
        )
    }

    fn stored(name: &str, source: &str) -> Stored {
        let mut s = Session::new(name, "mcp-server:latest");
        s.metadata
            .annotations
            .insert(SOURCE_ANNOTATION.into(), source.into());
        s.metadata.resource_version = Some("7".into());
        Stored::of(&s)
    }

    fn stored_pool(name: &str, source: &str) -> Stored {
        let mut p = WarmPool::new(name, "mcp-server:latest", 1);
        p.metadata
            .annotations
            .insert(SOURCE_ANNOTATION.into(), source.into());
        Stored::of(&p)
    }

    fn pool_yaml(name: &str, replicas: u32) -> String {
        format!(
            "apiVersion: orchestrator.mcp.dev/v1\nkind: WarmPool\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template: {{image: mcp-server:latest}}\n"
        )
    }

    fn sr(name: &str) -> ObjectRef {
        ObjectRef::session(name)
    }

    fn pr(name: &str) -> ObjectRef {
        ObjectRef::of::<WarmPool>(name)
    }

    fn files(entries: &[(&str, FileContent)]) -> BTreeMap<String, FileContent> {
        entries
            .iter()
            .map(|(n, c)| (format!("{PREFIX}{n}"), c.clone()))
            .collect()
    }

    fn text(s: String) -> FileContent {
        FileContent::Text(s)
    }

    fn names(objects: &[Resource]) -> Vec<&str> {
        objects.iter().map(Resource::name).collect()
    }

    #[test]
    fn a_new_file_applies_every_session() {
        let f = files(&[(
            "a.yaml",
            text(format!("{}---\n{}", yaml("x", ""), yaml("y", ""))),
        )]);
        let p = plan(PREFIX, &f, &[], Scope::Files, &policy());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].source, "file:/specs/a.yaml");
        let FileAction::Apply { objects, delete } = &p[0].action else {
            panic!("{p:?}")
        };
        assert_eq!(names(objects), ["x", "y"]);
        assert!(delete.is_empty());
    }

    #[test]
    fn a_changed_file_deletes_what_it_no_longer_declares() {
        let f = files(&[("a.yaml", text(yaml("y", "  env: {A: '1'}\n")))]);
        let s = [
            stored("x", "file:/specs/a.yaml"),
            stored("y", "file:/specs/a.yaml"),
        ];
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        let FileAction::Apply { objects, delete } = &p[0].action else {
            panic!("{p:?}")
        };
        assert_eq!(names(objects), ["y"]);
        let Resource::Session(y) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(y.spec.env["A"], "1");
        assert_eq!(delete, &[sr("x")]);
    }

    #[test]
    fn a_removed_file_deletes_its_sessions_only() {
        let f = files(&[("a.yaml", FileContent::Gone)]);
        let s = [
            stored("x", "file:/specs/a.yaml"),
            stored("y", "file:/specs/b.yaml"),
            stored("z", "cli"),
        ];
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        assert_eq!(
            p,
            [FilePlan {
                source: "file:/specs/a.yaml".into(),
                action: FileAction::Remove {
                    delete: vec![sr("x")]
                }
            }]
        );
    }

    #[test]
    fn full_scope_removes_files_that_are_gone_and_keeps_everything_else() {
        let f = files(&[("b.yaml", text(yaml("y", "")))]);
        let s = [
            stored("x", "file:/specs/a.yaml"),
            stored("y", "file:/specs/b.yaml"),
            stored("z", "cli"),
            stored("w", "api"),
            stored("o", "file:/elsewhere/o.yaml"),
            stored("n", "file:/specs/sub/n.yaml"),
            stored("u", "file:/specs-other/u.yaml"),
        ];
        let p = plan(PREFIX, &f, &s, Scope::Full, &policy());
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0].action,
            FileAction::Remove {
                delete: vec![sr("x")]
            }
        );
        assert!(matches!(&p[1].action, FileAction::Apply { delete, .. } if delete.is_empty()));
        // Only the listed file in Files scope: a.yaml is not looked at.
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn an_invalid_file_changes_nothing_and_names_file_document_and_field() {
        let bad = format!(
            "{}---\n{}",
            yaml("x", ""),
            yaml("y", "  privileged: true\n")
        );
        let f = files(&[("a.yaml", text(bad))]);
        let s = [
            stored("x", "file:/specs/a.yaml"),
            stored("old", "file:/specs/a.yaml"),
        ];
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        let FileAction::Invalid { message, declared } = &p[0].action else {
            panic!("{p:?}")
        };
        assert!(
            message.starts_with("/specs/a.yaml: document 1: spec.privileged:"),
            "{message}"
        );
        assert_eq!(declared, &[sr("old"), sr("x")]);
    }

    #[test]
    fn a_parse_error_is_invalid_too() {
        let f = files(&[("a.yaml", text(yaml("x", "  resources: {memroy: 1Gi}\n")))]);
        let p = plan(PREFIX, &f, &[], Scope::Files, &policy());
        let FileAction::Invalid { message, declared } = &p[0].action else {
            panic!("{p:?}")
        };
        assert!(
            message.starts_with("/specs/a.yaml: document 0: spec.resources"),
            "{message}"
        );
        assert!(declared.is_empty());
        let f = files(&[("a.json", text("{not json".into()))]);
        let p = plan(PREFIX, &f, &[], Scope::Files, &policy());
        assert!(matches!(&p[0].action, FileAction::Invalid { .. }));
    }

    #[test]
    fn an_unreadable_file_is_invalid_not_gone() {
        let f = files(&[(
            "a.yaml",
            FileContent::Unreadable("permission denied".into()),
        )]);
        let s = [stored("x", "file:/specs/a.yaml")];
        let p = plan(PREFIX, &f, &s, Scope::Full, &policy());
        assert_eq!(
            p[0].action,
            FileAction::Invalid {
                message: "/specs/a.yaml: cannot read: permission denied".into(),
                declared: vec![sr("x")]
            }
        );
    }

    #[test]
    fn a_name_declared_twice_in_one_file_is_invalid() {
        let f = files(&[(
            "a.yaml",
            text(format!("{}---\n{}", yaml("x", ""), yaml("x", ""))),
        )]);
        let p = plan(PREFIX, &f, &[], Scope::Files, &policy());
        let FileAction::Invalid { message, .. } = &p[0].action else {
            panic!("{p:?}")
        };
        assert!(message.contains("also declared"), "{message}");
    }

    #[test]
    fn an_empty_file_declares_nothing() {
        let f = files(&[("a.yaml", text("# nothing yet\n".into()))]);
        let s = [stored("x", "file:/specs/a.yaml")];
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        assert_eq!(
            p[0].action,
            FileAction::Apply {
                objects: vec![],
                delete: vec![sr("x")]
            }
        );
    }

    #[test]
    fn a_resource_version_in_a_file_is_dropped() {
        let f = files(&[(
            "a.yaml",
            text(yaml("x", "").replace("{name: x}", "{name: x, resourceVersion: '3'}")),
        )]);
        let p = plan(PREFIX, &f, &[], Scope::Files, &policy());
        let FileAction::Apply { objects, .. } = &p[0].action else {
            panic!("{p:?}")
        };
        assert_eq!(objects[0].meta().resource_version, None);
    }

    #[test]
    fn a_session_moving_between_files_is_deleted_then_applied() {
        let f = files(&[("a.yaml", text("".into())), ("b.yaml", text(yaml("x", "")))]);
        let s = [stored("x", "file:/specs/a.yaml")];
        let p = plan(PREFIX, &f, &s, Scope::Files, &policy());
        assert_eq!(
            p[0].action,
            FileAction::Apply {
                objects: vec![],
                delete: vec![sr("x")]
            }
        );
        assert!(
            matches!(&p[1].action, FileAction::Apply { objects, .. } if names(objects) == ["x"])
        );
    }

    #[test]
    fn files_declare_pools_too_applied_first_and_deleted_with_the_file() {
        let both = format!("{}---\n{}", yaml("x", "  pool: wp\n"), pool_yaml("wp", 2));
        let f = files(&[("a.yaml", text(both))]);
        let stored = [
            stored("old", "file:/specs/a.yaml"),
            stored_pool("gone", "file:/specs/a.yaml"),
            stored_pool("wp", "file:/specs/a.yaml"),
            stored_pool("x", "cli"),
        ];
        let plan_ = plan(PREFIX, &f, &stored, Scope::Files, &policy());
        let FileAction::Apply { objects, delete } = &plan_[0].action else {
            panic!("{plan_:?}")
        };
        assert_eq!(names(objects), ["wp", "x"], "the pool first");
        assert_eq!(
            objects.iter().map(Resource::kind).collect::<Vec<_>>(),
            ["WarmPool", "Session"]
        );
        assert_eq!(delete, &[sr("old"), pr("gone")], "sessions before pools");
        // A session and a pool of one name are two objects.
        let f = files(&[(
            "a.yaml",
            text(format!("{}---\n{}", yaml("x", ""), pool_yaml("x", 1))),
        )]);
        let plan_ = plan(PREFIX, &f, &[], Scope::Files, &policy());
        assert!(
            matches!(&plan_[0].action, FileAction::Apply { objects, .. } if objects.len() == 2)
        );
        // The file goes: both kinds go with it.
        let f = files(&[("a.yaml", FileContent::Gone)]);
        let plan_ = plan(PREFIX, &f, &stored, Scope::Files, &policy());
        assert_eq!(
            plan_[0].action,
            FileAction::Remove {
                delete: vec![sr("old"), pr("gone"), pr("wp")]
            }
        );
    }

    #[test]
    fn an_invalid_pool_names_its_template_field_and_keeps_what_the_file_declared() {
        let bad = format!(
            "{}---\n{}",
            yaml("x", ""),
            pool_yaml("wp", 2).replace("mcp-server:latest", "alpine")
        );
        let f = files(&[("a.yaml", text(bad))]);
        let stored = [stored_pool("wp", "file:/specs/a.yaml")];
        let plan_ = plan(PREFIX, &f, &stored, Scope::Files, &policy());
        let FileAction::Invalid { message, declared } = &plan_[0].action else {
            panic!("{plan_:?}")
        };
        assert!(
            message.starts_with("/specs/a.yaml: document 1: spec.template.image:"),
            "{message}"
        );
        assert_eq!(declared, &[pr("wp")]);
        let over = pool_yaml("wp", crate::domain::limits::MAX_POOL_REPLICAS + 1);
        let f = files(&[("a.yaml", text(over))]);
        let plan_ = plan(PREFIX, &f, &[], Scope::Files, &policy());
        assert!(
            matches!(&plan_[0].action, FileAction::Invalid { message, .. } if message.contains("document 0: spec.replicas")),
            "{plan_:?}"
        );
    }

    #[test]
    fn sources_are_scoped_to_direct_children() {
        assert_eq!(in_dir(PREFIX, "file:/specs/a.yaml"), Some("a.yaml"));
        assert_eq!(in_dir(PREFIX, "file:/specs/sub/a.yaml"), None);
        assert_eq!(in_dir(PREFIX, "file:/specs/"), None);
        assert_eq!(in_dir(PREFIX, "file:/specsx/a.yaml"), None);
        assert_eq!(in_dir(PREFIX, "cli"), None);
    }
}
