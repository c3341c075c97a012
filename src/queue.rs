//! The work queue behind the controller: a pure state machine, driven with explicit times.
//!
//! Guarantees (the same as kube-runtime's scheduler):
//! - one pending slot per key: triggers for a queued key coalesce;
//! - a key is never handed out twice at once: a trigger while it is active marks it dirty,
//!   and it is queued again when the active reconcile finishes;
//! - failures are retried after a per-key exponential backoff that resets on success;
//! - delayed requeues keep the earliest deadline.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success; look again after this long if set.
    Done(Option<Duration>),
    /// Failure; retry after the key's backoff.
    Failed,
}

/// The queue.
#[derive(Debug)]
pub struct WorkQueue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    dirty: HashSet<String>,
    delayed: BTreeSet<(Instant, String)>,
    deadline: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
    base: Duration,
    max: Duration,
}

impl WorkQueue {
    /// A queue whose failure backoff starts at `base` and doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> WorkQueue {
        WorkQueue {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            active: HashSet::new(),
            dirty: HashSet::new(),
            delayed: BTreeSet::new(),
            deadline: HashMap::new(),
            failures: HashMap::new(),
            base,
            max,
        }
    }

    /// Trigger `key` now.
    pub fn add(&mut self, key: &str) {
        if self.active.contains(key) {
            self.dirty.insert(key.to_string());
            return;
        }
        if let Some(at) = self.deadline.remove(key) {
            self.delayed.remove(&(at, key.to_string()));
        }
        if self.queued.insert(key.to_string()) {
            self.ready.push_back(key.to_string());
        }
    }

    /// Trigger `key` at `at`, unless it is due earlier anyway.
    pub fn add_at(&mut self, key: &str, at: Instant) {
        if self.queued.contains(key) || self.dirty.contains(key) {
            return;
        }
        if let Some(&cur) = self.deadline.get(key) {
            if cur <= at {
                return;
            }
            self.delayed.remove(&(cur, key.to_string()));
        }
        self.deadline.insert(key.to_string(), at);
        self.delayed.insert((at, key.to_string()));
    }

    /// Move every delayed key that is due by `now` to the ready queue.
    pub fn promote(&mut self, now: Instant) {
        while let Some((at, key)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.deadline.remove(&key);
            self.add(&key);
        }
    }

    /// The earliest delayed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }

    /// Hand out the next ready key that is not active; it becomes active.
    pub fn pop(&mut self) -> Option<String> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.active.insert(key.clone());
        Some(key)
    }

    /// Finish an active key at `now`.
    pub fn done(&mut self, key: &str, outcome: Outcome, now: Instant) {
        self.active.remove(key);
        let retry = match outcome {
            Outcome::Done(after) => {
                self.failures.remove(key);
                after
            }
            Outcome::Failed => {
                let n = self.failures.entry(key.to_string()).or_insert(0);
                *n += 1;
                let n = *n;
                Some(self.backoff(n))
            }
        };
        if self.dirty.remove(key) {
            self.add(key);
        } else if let Some(after) = retry {
            self.add_at(key, now + after);
        }
    }

    /// The backoff after `n` consecutive failures.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Keys waiting to run now.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Keys being reconciled.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Keys waiting for a deadline.
    pub fn delayed_len(&self) -> usize {
        self.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> WorkQueue {
        WorkQueue::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[test]
    fn triggers_coalesce() {
        let mut q = q();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn never_twice_at_once_and_dirty_requeues() {
        let mut q = q();
        let now = Instant::now();
        q.add("a");
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.add("a");
        q.add("a");
        assert_eq!(q.pop(), None, "a is active");
        q.done("a", Outcome::Done(None), now);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.done("a", Outcome::Done(None), now);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn failures_back_off_exponentially_and_reset() {
        let mut q = q();
        let t0 = Instant::now();
        q.add("a");
        for (n, want) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000)] {
            assert_eq!(q.pop().as_deref(), Some("a"), "round {n}");
            q.done("a", Outcome::Failed, t0);
            assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(want)));
            q.promote(t0 + Duration::from_millis(want - 1));
            assert_eq!(q.ready_len(), 0);
            q.promote(t0 + Duration::from_millis(want));
        }
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.done("a", Outcome::Done(None), t0);
        assert_eq!(q.next_deadline(), None);
        q.add("a");
        q.pop();
        q.done("a", Outcome::Failed, t0);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn earliest_deadline_wins_and_add_cancels_delay() {
        let mut q = q();
        let t0 = Instant::now();
        q.add_at("a", t0 + Duration::from_secs(5));
        q.add_at("a", t0 + Duration::from_secs(2));
        q.add_at("a", t0 + Duration::from_secs(9));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(q.delayed_len(), 1);
        q.add("a");
        assert_eq!(q.delayed_len(), 0);
        assert_eq!(q.pop().as_deref(), Some("a"));
    }
}
