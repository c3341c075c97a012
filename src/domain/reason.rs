//! The one vocabulary of machine-readable reasons: a session's status `reason` (and its Ready
//! condition's), the reasons of recorded session events, of contract and admission
//! violations, and of chat-turn errors.
//!
//! Each [`Reason`] has a stable string form ([`Reason::as_str`], `Display`, `FromStr`,
//! serde): the strings are part of the API (stored statuses and events, HTTP bodies, the
//! CLI), so a variant's string never changes. Stored objects keep the reason as a plain
//! string, so objects written by another build with a reason this build does not know still
//! read; convert with [`Reason::as_str`] when producing one and [`str::parse`] when a typed
//! reason is wanted.
//!
//! The Kubernetes `Status` reasons of HTTP error bodies (`NotFound`, `Conflict`,
//! `AlreadyExists`, ...) are a separate vocabulary, kept in [`crate::http`].

use serde::{Deserialize, Serialize};

/// A machine-readable reason. The string form is the variant's name (strum for the
/// string conversions and the list of variants, serde for JSON: the same names).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
pub enum Reason {
    // --- Status reasons set by the planner (`domain::plan`).
    /// The sandbox exited with code 0 and its restart policy does not restart it; the
    /// session is `Succeeded`.
    Completed,
    /// The sandbox exited with a non-zero code and its restart policy does not restart it;
    /// the session is `Failed`.
    Error,
    /// The sandbox keeps exiting soon after it starts; the next start waits for the
    /// crash-loop back-off. The session is `BackOff`.
    CrashLoopBackOff,
    /// The session names a warm pool that does not exist (or cannot make sandboxes); its
    /// sandbox was created cold. Stays while that sandbox runs.
    PoolNotFound,
    /// The session's sandbox settings differ from its warm pool's template (the message
    /// names the fields); its sandbox was created cold.
    PoolMismatch,
    /// The session's warm pool had no ready sandbox; its sandbox was created cold.
    PoolEmpty,

    // --- Violation reasons (`domain::contract`, `domain::admission`). Refused writes
    // report them per field; a stored session that no longer fits the contract (after a
    // policy change) is `Failed` with the first one as its status reason.
    /// A field's value is malformed: wrong `apiVersion`/`kind`, a bad name, label,
    /// image reference, quantity, environment name, or a NUL in a string.
    Invalid,
    /// The image is not in the image allowlist.
    ImageNotAllowed,
    /// The spec asks for something the sandbox contract forbids: privileged, a network,
    /// a root or malformed user, limits above the maxima.
    ContractViolation,
    /// A number is outside its allowed range (ttl, memory below the engine's minimum,
    /// pids below the minimum).
    OutOfRange,
    /// A string is longer than its byte limit.
    TooLong,
    /// A list or map has more entries than its limit.
    TooMany,
    /// The whole object is larger than the object size limit.
    TooLarge,

    // --- Reconcile failures (`controller`): the status reason of a session whose
    // reconcile failed (phase `BackOff`), and the reason of the Warning event recorded.
    /// The image is not present on the engine (and this engine does not pull).
    ImageNotFound,
    /// The container name is held by a container of another store.
    NameConflict,
    /// Any other Docker engine error.
    DockerError,
    /// The store (Redis) failed during a reconcile or a chat turn.
    StoreError,

    // --- Session events recorded by the controller.
    /// Normal: a container was created and started for the session.
    Provisioned,
    /// A started sandbox was claimed from the session's warm pool.
    Claimed,
    /// Normal: the session's stopped container was started again.
    Restarted,
    /// Normal: a rollout restart was asked for (`restart`, `POST .../restart`); the
    /// sandbox is replaced.
    RestartRequested,
    /// Normal: one of the session's containers was removed (drift, duplicate, expiry,
    /// contract violation); the message says which.
    Removed,
    /// Warning: the session entered `BackOff` (crash-loop back-off).
    BackOff,
    /// Warning: a reconcile did not finish within the reconcile timeout; it was abandoned
    /// and is retried.
    ReconcileTimeout,
    /// Warning: a reconcile panicked; it is retried with back-off.
    ReconcilePanic,

    // --- Session events recorded by the specs directory watcher (`specs`).
    /// Normal: a spec file's session was created or changed in the store.
    SpecFileApplied,
    /// Warning: a spec file cannot be read, parsed or admitted.
    InvalidSpecFile,
    /// Warning: a spec file declares a session another source (CLI, API, another file)
    /// owns.
    SourceConflict,

    // --- Chat-turn errors (`chat`, the `error` event of a chat stream).
    /// Gemini rejected the API key.
    GeminiKeyRejected,
    /// Any other Gemini failure.
    GeminiError,
    /// The turn took more model calls than the step limit allows.
    StepLimit,
    /// The chat turn failed unexpectedly (it panicked).
    InternalError,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [Reason] = <Reason as strum::VariantArray>::VARIANTS;

    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn strings_round_trip_and_are_unique() {
        let mut seen = HashSet::new();
        for &r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r), "{r:?}");
            assert_eq!(r.to_string(), r.as_str());
            assert_eq!(
                format!("{r:?}"),
                r.as_str(),
                "the string is the variant name"
            );
            assert!(seen.insert(r.as_str()), "{r} twice");
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert!("NoSuchReason".parse::<Reason>().is_err());
        assert!(serde_json::from_str::<Reason>("\"NoSuchReason\"").is_err());
    }

    #[test]
    fn strings_are_the_published_ones() {
        // These strings are stored and shown; they must not change.
        assert_eq!(Reason::CrashLoopBackOff.as_str(), "CrashLoopBackOff");
        assert_eq!(Reason::ImageNotAllowed.as_str(), "ImageNotAllowed");
        assert_eq!(Reason::InvalidSpecFile.as_str(), "InvalidSpecFile");
        assert_eq!(Reason::SourceConflict.as_str(), "SourceConflict");
        assert_eq!(Reason::PoolMismatch.as_str(), "PoolMismatch");
        assert_eq!(Reason::ALL.len(), 32);
    }
}
