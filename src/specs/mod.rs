//! The specs directory: a watched folder of Session files (GitOps, like the kubelet's
//! static pods).
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory (not in
//! subdirectories; dotfiles and editor temp files are ignored, see
//! [`crate::domain::parse::is_spec_file`]) declares sessions. Each session it declares is applied
//! with the source `file:<absolute path>` (the directory is canonicalised once, at start),
//! which [`crate::ops`] uses to keep files and the API/CLI from overwriting each other.
//!
//! ## How it works
//! - IO is thin (`watch.rs`): [`run`] watches the directory (and its parent, to notice the
//!   directory itself being removed, renamed or re-created) through `notify` with a
//!   debouncer, reads the files an event names, lists the store, and executes a plan.
//! - The decision is pure (`plan.rs`, no IO): [`plan()`] gets the files (their text, or that
//!   they are gone) and the stored sessions, and says per file what to apply, what to delete
//!   and what to report. Validation is [`crate::domain::admission::validate_documents`], the
//!   same as the CLI's.
//! - A file is applied all-or-nothing at the validation stage: if any document fails to parse
//!   or to pass admission, nothing of it is written and the sessions it declared earlier stay
//!   as they are.
//! - At start, after a directory event (removed, re-created, renamed) and when the watcher
//!   lost events, the whole directory is synced: sessions of files that are gone are deleted.
//!   Otherwise only the files an event names are looked at.
//!
//! ## Reporting
//! An invalid file, or a file declaring a session that another source owns (a conflict),
//! is reported
//! - in the log: one `warn` line naming the file, the document and the field;
//! - as a `Warning` event (`InvalidSpecFile` / `SourceConflict`) on each session concerned
//!   (`describe` shows it);
//! - in the store's hash `mcpo:<instance>:specfiles` (source → event), see
//!   [`crate::store::Store::spec_file_problems`], until the file is fixed or removed.
//!
//! A conflicted file is not retried in a loop: it is looked at again when it changes, when
//! the orchestrator starts, and once after this directory deletes a session (which may have
//! been the session it conflicted with).

use crate::domain::reason::Reason;
use std::time::Duration;

use crate::store::StoreError;

mod plan;
mod watch;

pub use plan::{FileAction, FileContent, FilePlan, Scope, plan, source_of, validate_file};
pub use watch::run;

/// Quiet time the debouncer waits for after the last event on a path.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Largest spec file read; bigger files are reported as invalid.
pub const MAX_FILE_SIZE: u64 = crate::domain::limits::MAX_INPUT_BYTES as u64;
/// Event reason for an invalid file.
pub const REASON_INVALID: Reason = Reason::InvalidSpecFile;
/// Event reason for a file declaring a session another source owns.
pub const REASON_CONFLICT: Reason = Reason::SourceConflict;

/// Specs-directory failures.
#[derive(Debug, thiserror::Error)]
pub enum SpecsError {
    /// The directory exists but cannot be listed.
    #[error("cannot list the specs directory {path}: {source}")]
    List {
        /// The directory.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed; the sync is retried with backoff.
    #[error(transparent)]
    Store(#[from] StoreError),
}
