//! Chat: bridges a session to Gemini with the tools of the MCP server in its sandbox.
//!
//! Separate from the reconciler: it never creates, starts or removes containers; it only
//! uses running sessions. [`crate::mcp::upstream`] reaches the sandbox over the Docker attach API,
//! [`gemini`] talks to the Generative Language REST API, [`schema`] turns MCP tool schemas
//! into function declarations Gemini accepts, [`history`] keeps the conversation in Redis,
//! and [`service`] runs the function-calling loop.

pub mod gemini;
pub mod history;
pub mod schema;
pub mod service;
