//! Prometheus metrics of the controller and the API, in one registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric we export. Cheap to clone (the collectors are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`success`, `error`, `timeout`, `panic`).
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds.
    pub reconcile_duration: HistogramVec,
    /// Keys waiting in the work queue (ready plus delayed).
    pub queue_depth: IntGauge,
    /// Sessions by phase (refreshed on scrape).
    pub sessions: IntGaugeVec,
    /// Sandboxes restarted or replaced after they died.
    pub restarts: IntCounter,
    /// Docker API errors.
    pub docker_errors: IntCounter,
    /// Docker API calls made by the runtime, by operation (`list`, `inspect`, `create`,
    /// `start`, … see [`crate::runtime::DOCKER_OPS`]).
    pub docker_calls: IntCounterVec,
    /// Redis errors.
    pub redis_errors: IntCounter,
    /// HTTP requests that passed auth, by method (unknown ones as `OTHER`), matched route
    /// template (`unmatched` when none) and status code.
    pub http_requests: IntCounterVec,
    /// Background tasks that panicked (and were restarted or counted as failed), by task.
    pub task_panics: IntCounterVec,
    /// Containers of this instance that belong to another store (left alone).
    pub foreign_containers: IntGauge,
    /// Stored sessions this build cannot decode (set aside).
    pub unreadable_sessions: IntGauge,
    /// Store resets noticed (the store's identity changed under the controller).
    pub store_resets: IntCounter,
    /// HTTP requests refused for a missing or wrong bearer token (no labels: junk cannot
    /// create series).
    pub http_unauthorized: IntCounter,
    /// Long-lived HTTP streams open now, by kind (`watch`, `wait`, `chat`, `mcp`).
    pub open_streams: IntGaugeVec,
    /// 1 while this replica leads (reconciles), 0 on a standby.
    pub leader: IntGauge,
    /// The leader term this replica last held (the fencing token; 0 before it ever led).
    pub leader_term: IntGauge,
    /// Times this replica became or stopped being the leader.
    pub leader_transitions: IntCounter,
    /// Chat requests a standby forwarded to the leader.
    pub forwarded: IntCounter,
    /// MCP requests through the gateway and the chat bridge, by method (the MCP method
    /// name; anything unknown as `other`) and result (`ok`, `error`, `denied`, `busy`,
    /// `gone`, `timeout`, `cancelled`).
    pub mcp_requests: IntCounterVec,
    /// Duration of MCP requests through the gateway, by method.
    pub mcp_duration: HistogramVec,
    /// MCP clients connected to a session's gateway now (sessions plus open listen streams).
    pub mcp_clients: IntGauge,
    /// Gateway requests in flight to sandboxes now (all sessions).
    pub mcp_in_flight: IntGauge,
    /// Ready (started, unclaimed) members of each warm pool, as of its last reconcile.
    pub pool_ready: IntGaugeVec,
    /// Warm-pool members claimed by sessions, by pool.
    pub pool_claims: IntCounterVec,
    /// Sessions naming a pool whose sandbox was created cold, by reason (`PoolNotFound`,
    /// `PoolMismatch`, `PoolEmpty`).
    pub pool_cold_starts: IntCounterVec,
    /// From a session's creation to its claim recorded, in seconds.
    pub pool_claim_duration: prometheus::Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("mcpo_reconciles_total", "Reconciles by result."),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "mcpo_reconcile_duration_seconds",
                "Duration of one reconcile.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("mcpo_queue_depth", "Keys waiting in the work queue.").expect("valid");
        let sessions =
            IntGaugeVec::new(Opts::new("mcpo_sessions", "Sessions by phase."), &["phase"])
                .expect("valid metric");
        let restarts = IntCounter::new(
            "mcpo_container_restarts_total",
            "Sandboxes restarted or replaced after they died.",
        )
        .expect("valid");
        let docker_errors =
            IntCounter::new("mcpo_docker_errors_total", "Docker API errors.").expect("valid");
        let docker_calls = IntCounterVec::new(
            Opts::new(
                "mcpo_docker_calls_total",
                "Docker API calls made by the orchestrator, by operation.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let redis_errors =
            IntCounter::new("mcpo_redis_errors_total", "Redis errors.").expect("valid");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "mcpo_http_requests_total",
                "HTTP requests by method, route template and code.",
            ),
            &["method", "route", "code"],
        )
        .expect("valid metric");
        let http_unauthorized = IntCounter::new(
            "mcpo_http_unauthorized_total",
            "HTTP requests refused for a missing or wrong bearer token.",
        )
        .expect("valid");
        let open_streams = IntGaugeVec::new(
            Opts::new(
                "mcpo_http_open_streams",
                "Long-lived HTTP streams open now, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let task_panics = IntCounterVec::new(
            Opts::new(
                "mcpo_task_panics_total",
                "Supervised background tasks that panicked, by task.",
            ),
            &["task"],
        )
        .expect("valid metric");
        let foreign_containers = IntGauge::new(
            "mcpo_foreign_containers",
            "Containers of this instance that belong to another store (left alone).",
        )
        .expect("valid");
        let unreadable_sessions = IntGauge::new(
            "mcpo_unreadable_sessions",
            "Stored sessions this build cannot decode (set aside).",
        )
        .expect("valid");
        let store_resets = IntCounter::new(
            "mcpo_store_resets_total",
            "Store resets noticed (the store's identity changed).",
        )
        .expect("valid");
        let leader = IntGauge::new(
            "mcpo_leader",
            "1 while this replica is the leader (reconciles), 0 on a standby.",
        )
        .expect("valid");
        let leader_term = IntGauge::new(
            "mcpo_leader_term",
            "The leader term (fencing token) this replica last held; 0 if it never led.",
        )
        .expect("valid");
        let leader_transitions = IntCounter::new(
            "mcpo_leader_transitions_total",
            "Times this replica became or stopped being the leader.",
        )
        .expect("valid");
        let forwarded = IntCounter::new(
            "mcpo_forwarded_requests_total",
            "Requests a standby forwarded to the leader (chat turns, MCP).",
        )
        .expect("valid");
        let mcp_requests = IntCounterVec::new(
            Opts::new(
                "mcpo_mcp_requests_total",
                "MCP requests through the gateway, by method and result.",
            ),
            &["method", "result"],
        )
        .expect("valid metric");
        let mcp_duration = HistogramVec::new(
            HistogramOpts::new(
                "mcpo_mcp_request_duration_seconds",
                "Duration of MCP requests through the gateway.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let mcp_clients = IntGauge::new(
            "mcpo_mcp_clients",
            "MCP clients connected to the gateway now.",
        )
        .expect("valid");
        let mcp_in_flight = IntGauge::new(
            "mcpo_mcp_in_flight",
            "Gateway requests in flight to sandboxes now.",
        )
        .expect("valid");
        let pool_ready = IntGaugeVec::new(
            Opts::new("mcpo_pool_ready", "Ready members of each warm pool."),
            &["pool"],
        )
        .expect("valid metric");
        let pool_claims = IntCounterVec::new(
            Opts::new(
                "mcpo_pool_claims_total",
                "Warm-pool members claimed, by pool.",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let pool_cold_starts = IntCounterVec::new(
            Opts::new(
                "mcpo_pool_cold_starts_total",
                "Sessions naming a warm pool whose sandbox was created cold, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let pool_claim_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "mcpo_pool_claim_duration_seconds",
                "From a session's creation to its warm-pool claim recorded.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        for c in [
            Box::new(task_panics.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pool_ready.clone()),
            Box::new(pool_claims.clone()),
            Box::new(pool_cold_starts.clone()),
            Box::new(pool_claim_duration.clone()),
            Box::new(mcp_in_flight.clone()),
            Box::new(mcp_requests.clone()),
            Box::new(mcp_duration.clone()),
            Box::new(mcp_clients.clone()),
            Box::new(leader.clone()),
            Box::new(leader_term.clone()),
            Box::new(leader_transitions.clone()),
            Box::new(forwarded.clone()),
            Box::new(foreign_containers.clone()),
            Box::new(unreadable_sessions.clone()),
            Box::new(store_resets.clone()),
            Box::new(reconciles.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(sessions.clone()),
            Box::new(restarts.clone()),
            Box::new(docker_errors.clone()),
            Box::new(docker_calls.clone()),
            Box::new(redis_errors.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_unauthorized.clone()),
            Box::new(open_streams.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for r in ["success", "error", "timeout", "panic"] {
            reconciles.with_label_values(&[r]);
        }
        for k in ["watch", "wait", "chat", "mcp"] {
            open_streams.with_label_values(&[k]);
        }
        for op in crate::runtime::DOCKER_OPS {
            docker_calls.with_label_values(&[op]);
        }
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            queue_depth,
            sessions,
            restarts,
            docker_errors,
            docker_calls,
            redis_errors,
            http_requests,
            task_panics,
            foreign_containers,
            unreadable_sessions,
            store_resets,
            http_unauthorized,
            open_streams,
            leader,
            leader_term,
            leader_transitions,
            forwarded,
            mcp_requests,
            mcp_duration,
            mcp_clients,
            mcp_in_flight,
            pool_ready,
            pool_claims,
            pool_cold_starts,
            pool_claim_duration,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
