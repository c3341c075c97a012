//! The hub of one session: who is connected to its sandbox, and where the upstream
//! server's notifications go.
//!
//! A sandbox runs one stdio MCP server: one upstream conversation that every client of the
//! session shares (the chat bridge and any number of gateway clients). The hub outlives the
//! upstream connections (a replaced container gets a new one, the clients stay) and routes:
//! - `notifications/progress` to the client whose request carries the token (the upstream
//!   sees a token rmcp made unique per upstream request; [`Hub::track_progress`] maps it
//!   back to the client's own token; the route is recorded right after the request is queued
//!   upstream: a progress notification that beat it — a round trip through the engine
//!   faster than one statement — would be dropped, not misrouted);
//! - list changes (`tools`, `prompts`, `resources`) to every client: sessions of the
//!   initialize era get them on their stream, clients of the 2026-07-28 era on their
//!   `subscriptions/listen` stream;
//!
//! Logging (`notifications/message`) is not relayed: SEP-2577 deprecates it, and a stdio
//! server gives no way to tell which client a log line is for.
//!
//! It also bounds the requests in flight on the session ([`Hub::admit`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rmcp::model::{
    ErrorCode, ErrorData, ProgressNotificationParam, ProgressToken, ServerCapabilities,
    ServerNotification,
};
use rmcp::service::{Peer, RoleServer};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::codes;

/// Most notifications queued for one listen stream; beyond, the oldest news is dropped
/// (list changes are idempotent: one pending is as good as many).
const STREAM_QUEUE: usize = 16;

/// A connected client that receives broadcasts.
enum Listener {
    /// An initialize-era session: notifications go through its peer.
    Session(Peer<RoleServer>),
    /// A 2026-07-28 `subscriptions/listen` stream.
    Stream(mpsc::Sender<ServerNotification>),
}

/// Where an upstream progress token goes back to.
struct ProgressRoute {
    peer: Peer<RoleServer>,
    token: ProgressToken,
}

/// The hub of one session (see the module docs).
pub struct Hub {
    session: String,
    next: AtomicU64,
    listeners: Mutex<HashMap<u64, Listener>>,
    progress: Mutex<HashMap<ProgressToken, ProgressRoute>>,
    in_flight: Arc<Semaphore>,
    limit: usize,
    capabilities: Mutex<Option<ServerCapabilities>>,
    on_clients: Option<prometheus::IntGauge>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a listener when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if lock(&self.hub.listeners).remove(&self.id).is_some()
            && let Some(g) = &self.hub.on_clients
        {
            g.dec();
        }
    }
}

/// Removes a progress route when dropped (the request ended).
pub struct ProgressGuard {
    hub: Arc<Hub>,
    token: ProgressToken,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        lock(&self.hub.progress).remove(&self.token);
    }
}

impl Hub {
    /// The hub of `session`, admitting at most `limit` requests in flight; `clients` counts
    /// connected clients (a gauge shared by every hub).
    pub fn new(session: &str, limit: usize, clients: Option<prometheus::IntGauge>) -> Arc<Hub> {
        let limit = limit.max(1);
        Arc::new(Hub {
            session: session.to_string(),
            next: AtomicU64::new(1),
            listeners: Mutex::default(),
            progress: Mutex::default(),
            in_flight: Arc::new(Semaphore::new(limit)),
            limit,
            capabilities: Mutex::default(),
            on_clients: clients,
        })
    }

    /// The session's name.
    pub fn session(&self) -> &str {
        &self.session
    }

    fn register(self: &Arc<Self>, l: Listener) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.listeners).insert(id, l);
        if let Some(g) = &self.on_clients {
            g.inc();
        }
        Registration {
            hub: self.clone(),
            id,
        }
    }

    /// Register an initialize-era client session (until the registration is dropped).
    pub fn register_session(self: &Arc<Self>, peer: Peer<RoleServer>) -> Registration {
        self.register(Listener::Session(peer))
    }

    /// Register a `subscriptions/listen` stream: broadcasts arrive on the receiver.
    pub fn register_stream(self: &Arc<Self>) -> (Registration, mpsc::Receiver<ServerNotification>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        (self.register(Listener::Stream(tx)), rx)
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        lock(&self.listeners).len()
    }

    /// Send `n` to every client. Never waits: each session's send runs on its own small
    /// task, and a listen stream whose queue is full drops it (list changes are
    /// idempotent).
    pub fn broadcast(&self, n: ServerNotification) {
        let listeners = lock(&self.listeners);
        for l in listeners.values() {
            match l {
                Listener::Session(peer) => {
                    let (peer, n) = (peer.clone(), n.clone());
                    tokio::spawn(async move {
                        let _ = peer.send_notification(n).await;
                    });
                }
                Listener::Stream(tx) => {
                    let _ = tx.try_send(n.clone());
                }
            }
        }
    }

    /// Route `upstream_token`'s progress back to `peer` under the client's `token`, until
    /// the guard is dropped.
    pub fn track_progress(
        self: &Arc<Self>,
        upstream_token: ProgressToken,
        peer: Peer<RoleServer>,
        token: ProgressToken,
    ) -> ProgressGuard {
        lock(&self.progress).insert(upstream_token.clone(), ProgressRoute { peer, token });
        ProgressGuard {
            hub: self.clone(),
            token: upstream_token,
        }
    }

    /// Deliver an upstream progress notification to the client that owns its token
    /// (dropped when none does: the request already ended).
    pub fn route_progress(&self, mut p: ProgressNotificationParam) {
        let route = lock(&self.progress)
            .get(&p.progress_token)
            .map(|r| (r.peer.clone(), r.token.clone()));
        if let Some((peer, token)) = route {
            p.progress_token = token;
            tokio::spawn(async move {
                let _ = peer.notify_progress(p).await;
            });
        }
    }

    /// A slot for one request in flight, or the JSON-RPC error that says the session is
    /// at its limit.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ErrorData> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            ErrorData::new(
                ErrorCode(codes::BUSY),
                format!(
                    "too many requests in flight on session {} (at most {}); retry when one ends",
                    self.session, self.limit
                ),
                Some(json!({"reason": "TooManyRequests", "session": self.session, "limit": self.limit})),
            )
        })
    }

    /// The upstream server's capabilities, as last seen.
    pub fn capabilities(&self) -> Option<ServerCapabilities> {
        lock(&self.capabilities).clone()
    }

    /// Remember the upstream server's capabilities.
    pub fn set_capabilities(&self, c: ServerCapabilities) {
        *lock(&self.capabilities) = Some(c);
    }
}
