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
pub mod queue;
pub mod reason;
pub mod resource;
pub mod selector;
pub mod wait;
