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

/// Most notifications queued for one listen stream; beyond, new ones are dropped (list
/// changes are idempotent: one pending is as good as many).
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
    /// (upstream connection generation, upstream token) → route: rmcp numbers tokens per
    /// connection, and a hub outlives its connections.
    progress: Mutex<HashMap<(u64, ProgressToken), ProgressRoute>>,
    generations: AtomicU64,
    in_flight: Arc<Semaphore>,
    limit: usize,
    capabilities: Mutex<Option<ServerCapabilities>>,
    on_clients: Option<prometheus::IntGauge>,
    on_in_flight: Option<prometheus::IntGauge>,
}

/// Most clients connected to one session at once (initialize-era sessions plus listen
/// streams); beyond, `initialize` and `subscriptions/listen` are refused.
pub const MAX_CLIENTS_PER_SESSION: usize = 256;

/// One admitted request in flight; gives its slot back when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
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
    key: (u64, ProgressToken),
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        lock(&self.hub.progress).remove(&self.key);
    }
}

impl Hub {
    /// The hub of `session`, admitting at most `limit` requests in flight; `clients` counts
    /// connected clients and `in_flight` admitted requests (gauges shared by every hub).
    pub fn new(
        session: &str,
        limit: usize,
        clients: Option<prometheus::IntGauge>,
        in_flight: Option<prometheus::IntGauge>,
    ) -> Arc<Hub> {
        let limit = limit.max(1);
        Arc::new(Hub {
            session: session.to_string(),
            next: AtomicU64::new(1),
            listeners: Mutex::default(),
            progress: Mutex::default(),
            generations: AtomicU64::new(1),
            in_flight: Arc::new(Semaphore::new(limit)),
            limit,
            capabilities: Mutex::default(),
            on_clients: clients,
            on_in_flight: in_flight,
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

    /// A new number for an upstream connection of this hub.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// Route the progress of `upstream_token` on upstream connection `generation` back to
    /// `peer` under the client's `token`, until the guard is dropped.
    pub fn track_progress(
        self: &Arc<Self>,
        generation: u64,
        upstream_token: ProgressToken,
        peer: Peer<RoleServer>,
        token: ProgressToken,
    ) -> ProgressGuard {
        let key = (generation, upstream_token);
        lock(&self.progress).insert(key.clone(), ProgressRoute { peer, token });
        ProgressGuard {
            hub: self.clone(),
            key,
        }
    }

    /// Deliver a progress notification of upstream connection `generation` to the client
    /// that owns its token (dropped when none does: the request already ended).
    pub fn route_progress(&self, generation: u64, mut p: ProgressNotificationParam) {
        let route = lock(&self.progress)
            .get(&(generation, p.progress_token.clone()))
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
    pub fn admit(&self) -> Result<Admitted, ErrorData> {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            ErrorData::new(
                ErrorCode(codes::BUSY),
                format!(
                    "too many requests in flight on session {} (at most {}); retry when one ends",
                    self.session, self.limit
                ),
                Some(json!({"reason": "TooManyRequests", "session": self.session, "limit": self.limit})),
            )
        })?;
        if let Some(g) = &self.on_in_flight {
            g.inc();
        }
        Ok(Admitted {
            _permit: permit,
            gauge: self.on_in_flight.clone(),
        })
    }

    /// May one more client connect, or the JSON-RPC error that says the session has
    /// [`MAX_CLIENTS_PER_SESSION`].
    pub fn admit_client(&self) -> Result<(), ErrorData> {
        if self.clients() < MAX_CLIENTS_PER_SESSION {
            return Ok(());
        }
        Err(ErrorData::new(
            ErrorCode(codes::BUSY),
            format!(
                "session {} has {MAX_CLIENTS_PER_SESSION} clients connected, the most it takes; retry when one leaves",
                self.session
            ),
            Some(
                json!({"reason": "TooManyClients", "session": self.session, "limit": MAX_CLIENTS_PER_SESSION}),
            ),
        ))
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
