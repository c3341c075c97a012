//! Expectations: the Docker events the controller caused itself.
//!
//! When a reconcile creates and starts a container, the engine answers with `create` and
//! `start` events for that session. Reconciling again because of them would only re-list and
//! re-inspect what the reconcile just did (two more API calls per new sandbox, while a burst
//! of creates is what the engine is busiest with). Like the expectations of Kubernetes'
//! ReplicaSet controller, the reconcile records which events it is about to cause; the event
//! watcher consumes matching ones instead of enqueueing the session. Anything else (a `die`,
//! a `destroy`, a start nobody expected) still triggers a reconcile, and an expectation that
//! is never met lapses after its TTL, so a lost event can delay nothing beyond the next
//! resync. Pure: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Pending expected events, per session.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: HashMap<String, Vec<(&'static str, Instant)>>,
    ttl: Duration,
}

impl Expectations {
    /// Expectations that lapse `ttl` after they were recorded.
    pub fn new(ttl: Duration) -> Expectations {
        Expectations {
            pending: HashMap::new(),
            ttl,
        }
    }

    /// Record that `actions` (Docker event actions, e.g. `create`, `start`) are about to
    /// happen to `session`'s container because of the controller.
    pub fn expect(&mut self, session: &str, actions: &[&'static str], now: Instant) {
        // Lapsed entries of sessions that never saw their event go here (cheap: one pass
        // over the sessions with something pending, usually a handful).
        let ttl = self.ttl;
        self.pending.retain(|_, v| {
            v.retain(|(_, at)| now.duration_since(*at) < ttl);
            !v.is_empty()
        });
        let v = self.pending.entry(session.to_string()).or_default();
        v.extend(actions.iter().map(|a| (*a, now)));
    }

    /// Drop what `session` expected (the action failed, so its events may never come).
    pub fn forget(&mut self, session: &str) {
        self.pending.remove(session);
    }

    /// Drop everything (the event stream was lost, and with it any expected event).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Is this event one the controller caused? If so it is consumed and need not trigger
    /// a reconcile.
    pub fn observe(&mut self, session: &str, action: &str, now: Instant) -> bool {
        let Some(v) = self.pending.get_mut(session) else {
            return false;
        };
        v.retain(|(_, at)| now.duration_since(*at) < self.ttl);
        let hit = v.iter().position(|(a, _)| *a == action);
        if let Some(i) = hit {
            v.remove(i);
        }
        if v.is_empty() {
            self.pending.remove(session);
        }
        hit.is_some()
    }

    /// Sessions with pending expectations (for tests and metrics).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is expected.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_events_are_consumed_once_each() {
        let t = Instant::now();
        let mut e = Expectations::new(Duration::from_secs(10));
        e.expect("a", &["create", "start"], t);
        assert!(e.observe("a", "create", t));
        assert!(!e.observe("a", "create", t), "only one create was expected");
        assert!(!e.observe("a", "die", t), "a die is never ours");
        assert!(!e.observe("b", "start", t), "another session's event");
        assert!(e.observe("a", "start", t));
        assert!(e.is_empty());
    }

    #[test]
    fn unmet_expectations_lapse_and_can_be_forgotten() {
        let t = Instant::now();
        let mut e = Expectations::new(Duration::from_secs(10));
        e.expect("a", &["start"], t);
        assert!(!e.observe("a", "start", t + Duration::from_secs(11)));
        assert!(e.is_empty());
        e.expect("a", &["create", "start"], t);
        e.forget("a");
        assert!(!e.observe("a", "create", t));
        e.expect("gone", &["start"], t);
        e.expect("b", &["start"], t + Duration::from_secs(11));
        assert_eq!(e.len(), 1, "the lapsed expectation of \"gone\" was pruned");
        e.clear();
        assert_eq!(e.len(), 0);
    }
}
