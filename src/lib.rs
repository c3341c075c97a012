//! # mcp-orchestrator
//!
//! A Kubernetes-style declarative reconciler for Docker that runs one sandboxed MCP tool
//! server per chat session.
//!
//! ## Layout
//! The pure core, apart from the IO edges that feed it and carry out its decisions:
//!
//! - [`domain`] — **no IO**: the `Session` resource, every input bound, pure parsing,
//!   the sandbox contract, admission, selectors, reasons, the planner (desired + observed →
//!   actions), the work queue, expectations and what waiting means. Checked by a test.
//! - [`ops`]: the operations every front end shares — apply, patch, delete, restart
//!   through admission and the store, and the one wait loop.
//! - Edges to the outside, one each:
//!   - [`store`]: Redis — desired state, status, compare-and-swap, change stream, policy;
//!     over [`redis_conn`] (one URL, or Sentinel with failover following; `WAIT`).
//!   - [`runtime`]: Docker through bollard — list, create, start, remove, events, logs.
//!   - [`files`]: `-f` files, directories and stdin → [`domain::parse`].
//!   - [`sse`]: the one Server-Sent Events parser (the API client, Gemini's streams).
//! - The reconciler: [`controller`] (triggers → queue → plan → execute → status) and
//!   [`supervise`] (background tasks restarted after a panic, panics counted).
//! - Front ends, each a thin layer over [`ops`]:
//!   - [`http`]: the HTTP API and operations endpoints (axum).
//!   - [`specs`]: the watched specs directory (a pure plan and its watcher).
//!   - [`cli`]: the kubectl-style command line, over [`client`] (the HTTP API client) or Redis.
//! - [`lease`]: leader election through a Redis lease with a fencing token; [`replica`]:
//!   what one replica of several does with it (the leader acts, standbys serve the API).
//! - [`chat`]: the Gemini bridge — MCP over docker attach, history, the tool loop.
//! - [`chaos`]: fault injection against a live orchestrator, with measured recovery.
//! - [`metrics`]: the Prometheus registry.
//! - [`server`]: the composition root of `serve` — wires the pieces above together.

pub mod chaos;
pub mod chat;
pub mod cli;
pub mod client;
pub mod controller;
pub mod domain;
pub mod files;
pub mod http;
pub mod lease;
pub mod mcp;
pub mod metrics;
pub mod ops;
pub mod redis_conn;
pub mod replica;
pub mod runtime;
pub mod server;
pub mod specs;
pub mod sse;
pub mod store;
pub mod supervise;
