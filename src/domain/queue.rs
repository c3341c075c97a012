//! The work queue behind the controller: a pure state machine, driven with explicit times.
//!
//! Guarantees (the same as kube-runtime's scheduler):
//! - one pending slot per key: triggers for a queued key coalesce;
//! - a key is never handed out twice at once: a trigger while it is active marks it dirty,
//!   and it is queued again when the active reconcile finishes;
//! - failures are retried after a per-key exponential backoff that resets on success, and
//!   that backoff **holds**: while a key waits out a failure, triggers (Docker events, the
//!   resync) do not run it early — client-go's `AddRateLimited` versus `Add`. Only
//!   [`WorkQueue::reset`] (a new desired state, e.g. a spec write) drops the wait;
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
    /// Keys waiting out a failure backoff, with the time they may run again.
    backing_off: HashMap<String, Instant>,
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
            backing_off: HashMap::new(),
            base,
            max,
        }
    }

    /// Trigger `key` now — or, while it waits out a failure backoff, when that ends (the
    /// trigger is kept, not lost, and cannot shorten the wait).
    pub fn add(&mut self, key: &str) {
        if self.active.contains(key) {
            self.dirty.insert(key.to_string());
            return;
        }
        if self.backing_off.contains_key(key) {
            // Already scheduled at the end of its backoff (see `done`): nothing to do.
            return;
        }
        if let Some(at) = self.deadline.remove(key) {
            self.delayed.remove(&(at, key.to_string()));
        }
        if self.queued.insert(key.to_string()) {
            self.ready.push_back(key.to_string());
        }
    }

    /// Trigger `key` at `at`, unless it is due earlier anyway: a key that is queued, waits
    /// out a failure backoff, or already has an earlier deadline keeps it (the earliest
    /// deadline wins; an existing earlier timer is never pushed later). A key being
    /// reconciled is left alone too: its reconcile ends with its own, fresher, requeue.
    pub fn add_at(&mut self, key: &str, at: Instant) {
        if self.queued.contains(key)
            || self.active.contains(key)
            || self.dirty.contains(key)
            || self.backing_off.contains_key(key)
        {
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

    /// Forget `key`'s failures and any backoff it waits out, then trigger it now: for a new
    /// desired state, which deserves a fresh attempt.
    pub fn reset(&mut self, key: &str) {
        self.failures.remove(key);
        self.backing_off.remove(key);
        self.add(key);
    }

    /// Move every delayed key that is due by `now` to the ready queue.
    pub fn promote(&mut self, now: Instant) {
        while let Some((at, key)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.deadline.remove(&key);
            self.backing_off.remove(&key);
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
                *n = n.saturating_add(1);
                let n = *n;
                let at = now + self.backoff(n);
                // Triggers that arrived meanwhile wait for the backoff too.
                self.dirty.remove(key);
                // The backoff replaces any timer the key had: one deadline per key.
                if let Some(old) = self.deadline.remove(key) {
                    self.delayed.remove(&(old, key.to_string()));
                }
                self.backing_off.insert(key.to_string(), at);
                self.deadline.insert(key.to_string(), at);
                self.delayed.insert((at, key.to_string()));
                return;
            }
        };
        if self.dirty.remove(key) {
            self.add(key);
        } else if let Some(after) = retry {
            self.add_at(key, now + after);
        }
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
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
    fn backoff_holds_against_triggers_until_reset() {
        let mut q = q();
        let t0 = Instant::now();
        q.add("a");
        q.pop();
        q.add("a"); // a trigger during the failing reconcile
        q.done("a", Outcome::Failed, t0);
        assert_eq!(q.pop(), None, "the dirty trigger waits for the backoff");
        for _ in 0..100 {
            q.add("a");
        }
        assert_eq!(q.pop(), None, "triggers do not shorten the backoff");
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(100)));
        q.promote(t0 + Duration::from_millis(100));
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.done("a", Outcome::Failed, t0);
        q.add("a");
        assert_eq!(q.pop(), None);
        assert_eq!(q.failures("a"), 2);
        q.reset("a");
        assert_eq!(
            q.pop().as_deref(),
            Some("a"),
            "a new desired state runs at once"
        );
        assert_eq!(q.failures("a"), 0);
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

    /// The resync arms timers for keys in every state: a timer never runs a key early, never
    /// pushes an earlier deadline later, and never shortens a failure backoff.
    #[test]
    fn timers_from_a_resync_coalesce_with_every_state() {
        let mut q = q();
        let t0 = Instant::now();
        let s = Duration::from_secs;

        // Delayed already (a reconcile's own requeue): the earlier deadline stays.
        q.add_at("delayed", t0 + s(3));
        q.add_at("delayed", t0 + s(4));
        assert_eq!(q.next_deadline(), Some(t0 + s(3)));
        q.add_at("delayed", t0 + s(1));
        assert_eq!(q.next_deadline(), Some(t0 + s(1)));
        assert_eq!(q.delayed_len(), 1);

        // Queued to run now: a timer changes nothing.
        q.add("now");
        q.add_at("now", t0 + s(10));
        assert_eq!(q.delayed_len(), 1);

        // Active: its reconcile's outcome decides; the resync's timer is not kept.
        assert_eq!(q.pop().as_deref(), Some("now"));
        q.add_at("now", t0 + s(2));
        assert_eq!(q.delayed_len(), 1);
        q.done("now", Outcome::Done(Some(s(5))), t0);
        assert_eq!(q.delayed_len(), 2);
        q.add_at("now", t0 + s(7));
        q.promote(t0 + s(4));
        assert_eq!(q.pop().as_deref(), Some("delayed"));
        assert_eq!(q.pop(), None, "'now' is due at 5 s, not earlier");
        q.promote(t0 + s(5));
        assert_eq!(q.pop().as_deref(), Some("now"));

        // Waiting out a failure backoff: a timer neither shortens nor duplicates it.
        q.done("now", Outcome::Failed, t0);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(100)));
        q.add_at("now", t0 + Duration::from_millis(10));
        q.promote(t0 + Duration::from_millis(50));
        assert_eq!(q.pop(), None, "the backoff holds");
        q.promote(t0 + Duration::from_millis(100));
        assert_eq!(q.pop().as_deref(), Some("now"));
        q.done("now", Outcome::Done(None), t0);
        q.done("delayed", Outcome::Done(None), t0);
        assert_eq!(q.delayed_len(), 0);
        assert_eq!(q.next_deadline(), None);
    }
}
