//! # mcp-orchestrator
//!
//! A Kubernetes-style declarative reconciler for Docker that runs one sandboxed MCP tool
//! server per chat session.
//!
//! ## Layout
//! - [`resource`]: the `Session` resource types (pure data, JSON Schema via schemars).
//! - [`parse`]: text → sessions, errors naming file, document and field.
//! - [`files`]: `-f` files, directories and stdin → [`domain::parse`] (the IO edge of parsing).
//! - [`contract`]: the sandbox contract — the one place hardening is decided.
//! - [`admission`]: the one validation path for every write of desired state.
//! - [`limits`]: every input bound (sizes, counts, ranges, parse budget), in one place.
//! - [`plan`]: the pure planning core, desired + observed → actions.
//! - [`store`]: Redis — desired state, status, compare-and-swap, change stream.
//! - [`runtime`]: Docker through bollard — list, create, start, remove, events.
//! - [`specs`]: the watched specs directory.
//! - [`queue`]: the work queue — coalescing, one reconcile per session, backoff.
//! - [`controller`]: triggers → queue → plan → execute → status.
//! - [`supervise`]: background tasks restarted after a panic, panics counted.
//! - [`expect`]: Docker events the controller caused itself, so they trigger nothing.
//! - [`ops`]: apply, patch and delete through admission and the store.
//! - [`selector`]: Kubernetes label selectors.
//! - [`metrics`]: the Prometheus registry.
//! - [`http`]: the HTTP API and operations endpoints (axum).
//! - [`client`]: the HTTP API client and the CLI's backend (Redis or HTTP).
//! - [`sse`]: the one Server-Sent Events parser, for the API client and Gemini's streams.
//! - [`chat`]: the Gemini bridge — MCP over docker attach, history, the tool loop.
//! - [`chaos`]: fault injection against a live orchestrator, with measured recovery.
//! - [`cli`]: the kubectl-style command line.

pub mod chaos;
pub mod chat;
pub mod cli;
pub mod client;
pub mod controller;
pub mod domain;
pub mod files;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod runtime;
pub mod server;
pub mod specs;
pub mod sse;
pub mod store;
pub mod supervise;
