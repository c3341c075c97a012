//! The pure core: the resource types, their bounds and validation, the sandbox contract,
//! the planner and the scheduling state machines. Nothing here does IO — no network, no
//! files, no clock of its own (time is an argument) — so every module is tested with plain
//! values; `tests::no_io` checks that no IO crate is imported here.
//!
//! - [`resource`]: the `Session` resource types (pure data, JSON Schema via schemars).
//! - [`limits`]: every input bound (sizes, counts, ranges, parse budget), in one place.
//! - [`parse`]: text → sessions, errors naming file, document and field.
//! - [`contract`]: the sandbox contract — the one place hardening is decided.
//! - [`admission`]: the one validation path for every write of desired state.
//! - [`selector`]: Kubernetes label selectors.
//! - [`plan`]: the planning core, desired + observed → actions.
//! - [`resync`]: one resync pass in memory — every session planned against one bulk list,
//!   decided into reconcile now, a timer, or nothing.
//! - [`reason`]: the one vocabulary of machine-readable reasons (status, events, violations).
//! - [`queue`]: the work queue — coalescing, one reconcile per session, backoff.
//! - [`expect`]: Docker events the controller caused itself, so they trigger nothing.
//! - [`wait`]: what waiting for a phase or a deletion means, decided per observation.

pub mod admission;
pub mod contract;
pub mod expect;
pub mod limits;
pub mod parse;
pub mod plan;
pub mod pool;
pub mod queue;
pub mod reason;
pub mod resource;
pub mod resync;
pub mod selector;
pub mod wait;

#[cfg(test)]
mod tests {
    /// Every file of the pure core, as compiled.
    const SOURCES: &[(&str, &str)] = &[
        ("admission.rs", include_str!("admission.rs")),
        ("contract.rs", include_str!("contract.rs")),
        ("expect.rs", include_str!("expect.rs")),
        ("limits.rs", include_str!("limits.rs")),
        ("parse.rs", include_str!("parse.rs")),
        ("plan.rs", include_str!("plan.rs")),
        ("pool.rs", include_str!("pool.rs")),
        ("queue.rs", include_str!("queue.rs")),
        ("reason.rs", include_str!("reason.rs")),
        ("resource.rs", include_str!("resource.rs")),
        ("resync.rs", include_str!("resync.rs")),
        ("selector.rs", include_str!("selector.rs")),
        ("wait.rs", include_str!("wait.rs")),
    ];

    /// The architecture invariant "the core does no IO", checked: no file, network,
    /// process, Redis, Docker client, HTTP or file-watching API is named under `domain/`.
    /// (`tokio::time::Instant` is a value type the queue keeps; bollard's *models* are the
    /// Docker API's data types, which the contract builds.)
    #[test]
    fn no_io() {
        let forbidden = [
            "std::fs",
            "std::net",
            "std::process",
            "std::io::stdin",
            "tokio::net",
            "tokio::fs",
            "tokio::spawn",
            "tokio::process",
            "redis::",
            "reqwest",
            "notify",
            "bollard::Docker",
            "bollard::query_parameters",
            "crate::store",
            "crate::runtime",
            "crate::http",
        ];
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/domain"))
            .unwrap()
            .count();
        assert_eq!(
            files,
            SOURCES.len() + 1,
            "a domain file is missing from SOURCES"
        );
        for (name, text) in SOURCES {
            // Code only: doc comments may point at the edges.
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            for line in code {
                for f in forbidden {
                    assert!(!line.contains(f), "domain/{name} names {f}: {line}");
                }
            }
        }
    }
}
