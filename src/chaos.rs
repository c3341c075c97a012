//! `mcp-orchestrator chaos`: inject faults into a live orchestrator's sandboxes and measure
//! the recovery, checking invariants the whole time.
//!
//! Each interval it picks a random running session (optionally by label selector), applies
//! one fault to its container — `docker kill`, `docker rm -f`, `docker stop`, or SIGKILL of
//! the container's main process from the host — and measures the time from the fault until
//! a container for the session runs again (a new one, or the same one started after the
//! fault) and the session's status says Running with that container. Recovery is observed,
//! never assumed.
//!
//! Invariants: never two live containers for one session; every fault recovered within the
//! recovery timeout; after a quiet period, no orphan containers and every selected session
//! Running with exactly one container.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::backend::Backend;
use crate::client::ClientError;
use crate::domain::plan::ContainerState;
use crate::domain::resource::Phase;
use crate::domain::selector::Selector;
use crate::runtime::{Runtime, RuntimeError};

/// Chaos failures (of the tool itself, not of the system under test).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Reading sessions failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Docker failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A fault name is unknown.
    #[error("unknown fault {0:?} (use kill, rm, stop, sigkill)")]
    UnknownFault(String),
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// `docker kill`.
    Kill,
    /// `docker rm -f`.
    Rm,
    /// `docker stop`.
    Stop,
    /// SIGKILL of the container's main process (from the host).
    Sigkill,
}

impl std::str::FromStr for Fault {
    type Err = ChaosError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "kill" => Ok(Fault::Kill),
            "rm" => Ok(Fault::Rm),
            "stop" => Ok(Fault::Stop),
            "sigkill" => Ok(Fault::Sigkill),
            other => Err(ChaosError::UnknownFault(other.to_string())),
        }
    }
}

/// What to do.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// How long to inject faults.
    pub duration: Duration,
    /// Time between faults.
    pub interval: Duration,
    /// Which sessions may be hit (by their labels).
    pub selector: Selector,
    /// Fault kinds to draw from.
    pub faults: Vec<Fault>,
    /// A fault not recovered within this is a failure.
    pub recovery_timeout: Duration,
    /// Quiet period before the final checks.
    pub quiet: Duration,
}

/// One injected fault and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Session hit.
    pub session: String,
    /// Fault kind.
    pub fault: Fault,
    /// Time to recovery, if it recovered.
    pub recovered_ms: Option<u64>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Faults injected.
    pub injected: usize,
    /// Faults recovered.
    pub recovered: usize,
    /// Invariant violations, one line each.
    pub violations: Vec<String>,
    /// Recovery percentiles and maximum, in milliseconds.
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Maximum.
    pub max_ms: u64,
    /// Every fault.
    pub faults: Vec<FaultRecord>,
}

impl Report {
    /// Did everything recover with no violation?
    pub fn ok(&self) -> bool {
        self.injected == self.recovered && self.violations.is_empty()
    }
}

/// The q-quantile (nearest rank) of sorted values.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn live(state: ContainerState) -> bool {
    matches!(
        state,
        ContainerState::Running | ContainerState::Created | ContainerState::Restarting
    )
}

/// Sessions with more than one live container, as violation lines.
async fn duplicates(runtime: &Runtime) -> Result<Vec<String>, ChaosError> {
    let mut by: HashMap<String, usize> = HashMap::new();
    for c in runtime.list(None, false).await? {
        // Unclaimed warm-pool members belong to no session.
        if live(c.state) && !c.session.is_empty() {
            *by.entry(c.session).or_default() += 1;
        }
    }
    Ok(by
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(s, n)| format!("session {s:?} had {n} live containers at once"))
        .collect())
}

async fn inject(runtime: &Runtime, fault: Fault, id: &str) -> Result<(), ChaosError> {
    match fault {
        Fault::Kill => runtime.kill(id, "KILL").await?,
        Fault::Rm => runtime.remove(id).await?,
        Fault::Stop => runtime.stop(id).await?,
        Fault::Sigkill => {
            let pid = runtime
                .inspect(id)
                .await?
                .state
                .and_then(|s| s.pid)
                .unwrap_or(0);
            let killed = pid > 0
                && std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
            if !killed {
                // Not on the engine's host (no access to its pids): the engine sends it.
                runtime.kill(id, "KILL").await?;
            }
        }
    }
    Ok(())
}

/// Has `session` recovered from a fault on `old` injected at `at`?
async fn recovered(
    backend: &Backend,
    runtime: &Runtime,
    session: &str,
    old: &str,
    at: DateTime<Utc>,
) -> Result<bool, ChaosError> {
    let Some(s) = backend.get(session).await? else {
        return Ok(false);
    };
    let st = s.status.unwrap_or_default();
    let mut containers = runtime.list(Some(session), false).await?;
    // A claimed warm-pool member carries its pool's labels: the status names it.
    if let Some(id) = &st.container_id
        && !containers.iter().any(|c| &c.id == id)
    {
        containers.extend(runtime.observe(std::slice::from_ref(id)).await?);
    }
    let running: Vec<_> = containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .collect();
    if running.len() != 1 {
        return Ok(false);
    }
    let c = running[0];
    if st.phase != Phase::Running || st.container_id.as_deref() != Some(c.id.as_str()) {
        return Ok(false);
    }
    if c.id != old {
        return Ok(true);
    }
    let started = runtime
        .inspect(&c.id)
        .await?
        .state
        .and_then(|s| s.started_at)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(started.is_some_and(|t| t > at))
}

/// Run the chaos loop and the final checks. `progress` gets one line per fault.
pub async fn run(
    backend: &Backend,
    runtime: &Runtime,
    cfg: &ChaosConfig,
    mut progress: impl FnMut(&FaultRecord),
) -> Result<Report, ChaosError> {
    let mut rng = Rng::new();
    let mut records = Vec::new();
    let mut violations = Vec::new();
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        let tick = Instant::now();
        let (sessions, _, _) = backend.list("").await?;
        let candidates: Vec<_> = sessions
            .iter()
            .filter(|s| cfg.selector.matches(&s.metadata.labels) && s.is_ready())
            .filter_map(|s| {
                let id = s.status.as_ref()?.container_id.clone()?;
                Some((s.metadata.name.clone(), id))
            })
            .collect();
        if !candidates.is_empty() && !cfg.faults.is_empty() {
            let (session, id) = candidates[rng.below(candidates.len())].clone();
            let fault = cfg.faults[rng.below(cfg.faults.len())];
            let at = Utc::now();
            let t0 = Instant::now();
            inject(runtime, fault, &id).await?;
            let mut took = None;
            while t0.elapsed() < cfg.recovery_timeout {
                for v in duplicates(runtime).await? {
                    if !violations.contains(&v) {
                        violations.push(v);
                    }
                }
                if recovered(backend, runtime, &session, &id, at).await? {
                    took = Some(t0.elapsed().as_millis() as u64);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if took.is_none() {
                violations.push(format!(
                    "session {session:?} did not recover from {fault:?} within {}s",
                    cfg.recovery_timeout.as_secs()
                ));
            }
            let rec = FaultRecord {
                session,
                fault,
                recovered_ms: took,
            };
            progress(&rec);
            records.push(rec);
        }
        let next = tick + cfg.interval;
        if next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
    // Quiet period, then: no orphans, no duplicates, every selected session Running.
    tokio::time::sleep(cfg.quiet).await;
    let (sessions, _, _) = backend.list("").await?;
    let names: HashMap<&str, &crate::domain::resource::Session> =
        sessions.iter().map(|s| (s.name(), s)).collect();
    let containers = runtime.list(None, false).await?;
    for c in &containers {
        // Warm-pool members are their pool's (a claimed one is checked with its session).
        if c.pool.is_none() && !names.contains_key(c.session.as_str()) {
            violations.push(format!(
                "orphan container {} (session {:?}) after the quiet period",
                crate::runtime::short_id(&c.id),
                c.session
            ));
        }
    }
    violations.extend(duplicates(runtime).await?);
    for s in sessions
        .iter()
        .filter(|s| cfg.selector.matches(&s.metadata.labels))
    {
        let claimed = s.status.as_ref().and_then(|st| st.container_id.as_deref());
        let running = containers
            .iter()
            .filter(|c| {
                let its =
                    c.session == s.name() || (c.pool.is_some() && Some(c.id.as_str()) == claimed);
                its && c.state == ContainerState::Running
            })
            .count();
        if !s.is_ready() || running != 1 {
            violations.push(format!(
                "session {:?} is {} with {running} running containers after the quiet period",
                s.name(),
                s.phase()
            ));
        }
    }
    let mut times: Vec<u64> = records.iter().filter_map(|r| r.recovered_ms).collect();
    times.sort_unstable();
    Ok(Report {
        injected: records.len(),
        recovered: times.len(),
        violations,
        p50_ms: percentile(&times, 0.50),
        p95_ms: percentile(&times, 0.95),
        p99_ms: percentile(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(0),
        faults: records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn faults_parse() {
        assert_eq!("rm".parse::<Fault>().unwrap(), Fault::Rm);
        assert!("nuke".parse::<Fault>().is_err());
    }
}
