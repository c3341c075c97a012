//! Waiting for sessions, decided purely: what `apply --wait`, `wait --for=...` and the API's
//! `?wait=Running` wait for, fed with the current objects and then with each change, and
//! saying when a session is done, cannot get there, or changed phase. The loop that feeds
//! it from a watch lives in [`crate::ops::wait`]; this module only decides.

use std::collections::BTreeMap;

use crate::domain::resource::{Phase, Session};

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The session is in this phase at its current generation (`Running` = ready).
    Phase(Phase),
    /// The session no longer exists.
    Deleted,
}

impl std::str::FromStr for Condition {
    type Err = String;

    /// kubectl's `--for` syntax: `phase=Running` (any phase, case-insensitive), `delete`.
    fn from_str(s: &str) -> Result<Condition, String> {
        if s.eq_ignore_ascii_case("delete") {
            return Ok(Condition::Deleted);
        }
        // `phase=X`, or kubectl's spelling of the same, `jsonpath={.status.phase}=X`.
        let value = s
            .strip_prefix("jsonpath={.status.phase}=")
            .or_else(|| {
                let (key, value) = s.split_once('=')?;
                key.eq_ignore_ascii_case("phase").then_some(value)
            })
            .ok_or_else(|| {
                format!(
                    "{}: expected phase=PHASE or delete",
                    crate::domain::limits::echo(s)
                )
            })?;
        Phase::ALL
            .iter()
            .find(|p| p.to_string().eq_ignore_ascii_case(value))
            .map(|p| Condition::Phase(*p))
            .ok_or_else(|| {
                format!(
                    "{}: unknown phase (one of {})",
                    crate::domain::limits::echo(value),
                    Phase::ALL.map(|p| p.to_string()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Phase(p) => write!(f, "phase={p}"),
            Condition::Deleted => f.write_str("delete"),
        }
    }
}

/// What one observation of a session means for the wait.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The condition holds; the session (absent when waiting for deletion) is final.
    Met(Option<Box<Session>>),
    /// The session can no longer meet the condition: deleted while waiting for a phase, or
    /// finished for good (Failed/Succeeded at its generation) while waiting for another
    /// phase. The text says which.
    Unreachable(String, Option<Box<Session>>),
    /// Still waiting; the phase changed to this (with the status reason, if any).
    Changed(Phase, Option<String>),
}

/// The state of a wait over several sessions.
#[derive(Debug, Clone)]
pub struct Waiter {
    condition: Condition,
    /// Name → last phase seen (`None` before any observation).
    pending: BTreeMap<String, Option<Phase>>,
}

impl Waiter {
    /// Wait for `condition` on every session in `names`.
    pub fn new(condition: Condition, names: impl IntoIterator<Item = String>) -> Waiter {
        Waiter {
            condition,
            pending: names.into_iter().map(|n| (n, None)).collect(),
        }
    }

    /// What is waited for.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// True when nothing is left to wait for.
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// The sessions still waited for, with the last phase seen.
    pub fn pending(&self) -> impl Iterator<Item = (&str, Option<Phase>)> {
        self.pending.iter().map(|(n, p)| (n.as_str(), *p))
    }

    /// Observe `name` as it is now (`None`: it does not exist). Returns what changed for
    /// the wait, or `None` when nothing did (or the name is not waited for). A met or
    /// unreachable session is no longer pending.
    pub fn observe(&mut self, name: &str, current: Option<&Session>) -> Option<Progress> {
        let last = *self.pending.get(name)?;
        let progress = match (self.condition, current) {
            (Condition::Deleted, None) => Progress::Met(None),
            (Condition::Deleted, Some(s)) => changed(last, s)?,
            (Condition::Phase(_), None) => {
                Progress::Unreachable(format!("session {name:?} was deleted"), None)
            }
            (Condition::Phase(Phase::Running), Some(s)) if s.is_ready() => {
                Progress::Met(Some(Box::new(s.clone())))
            }
            (Condition::Phase(want), Some(s)) if s.phase() == want && s.is_current() => {
                Progress::Met(Some(Box::new(s.clone())))
            }
            (Condition::Phase(want), Some(s)) if s.is_terminal() && s.phase() != want => {
                let st = s.status.clone().unwrap_or_default();
                Progress::Unreachable(
                    format!(
                        "session {name:?} is {}{}",
                        s.phase(),
                        st.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ),
                    Some(Box::new(s.clone())),
                )
            }
            (Condition::Phase(_), Some(s)) => changed(last, s)?,
        };
        match &progress {
            Progress::Changed(p, _) => {
                self.pending.insert(name.to_string(), Some(*p));
            }
            _ => {
                self.pending.remove(name);
            }
        }
        Some(progress)
    }
}

/// A phase change (or the first observation), `None` when the phase is the one last seen.
fn changed(last: Option<Phase>, s: &Session) -> Option<Progress> {
    if last == Some(s.phase()) {
        return None;
    }
    let reason = s.status.as_ref().and_then(|st| st.reason.clone());
    Some(Progress::Changed(s.phase(), reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::resource::SessionStatus;

    fn session(phase: Phase, generation: i64, observed: i64) -> Session {
        let mut s = Session::new("a", "mcp-server:latest");
        s.metadata.generation = Some(generation);
        s.status = Some(SessionStatus {
            phase,
            observed_generation: Some(observed),
            ..Default::default()
        });
        s
    }

    #[test]
    fn conditions_parse_like_kubectl() {
        assert_eq!(
            "phase=Running".parse(),
            Ok(Condition::Phase(Phase::Running))
        );
        assert_eq!("PHASE=failed".parse(), Ok(Condition::Phase(Phase::Failed)));
        assert_eq!(
            "jsonpath={.status.phase}=Running".parse(),
            Ok(Condition::Phase(Phase::Running))
        );
        assert_eq!("delete".parse(), Ok(Condition::Deleted));
        assert!("phase=Bogus".parse::<Condition>().is_err());
        assert!("condition=Ready".parse::<Condition>().is_err());
        assert_eq!(
            Condition::Phase(Phase::Running).to_string(),
            "phase=Running"
        );
    }

    #[test]
    fn running_must_be_at_the_current_generation() {
        let mut w = Waiter::new(Condition::Phase(Phase::Running), ["a".to_string()]);
        // Running, but for the previous spec: still waiting.
        assert_eq!(
            w.observe("a", Some(&session(Phase::Running, 2, 1))),
            Some(Progress::Changed(Phase::Running, None))
        );
        // The same phase again says nothing.
        assert_eq!(w.observe("a", Some(&session(Phase::Running, 2, 1))), None);
        assert!(matches!(
            w.observe("a", Some(&session(Phase::Running, 2, 2))),
            Some(Progress::Met(Some(_)))
        ));
        assert!(w.done());
        // Not waited for any more.
        assert_eq!(w.observe("a", None), None);
    }

    #[test]
    fn terminal_and_deleted_sessions_end_a_phase_wait() {
        let mut w = Waiter::new(Condition::Phase(Phase::Running), ["a".into(), "b".into()]);
        assert!(matches!(
            w.observe("a", Some(&session(Phase::Failed, 1, 1))),
            Some(Progress::Unreachable(m, _)) if m.contains("Failed")
        ));
        // A failure of an older generation is not final.
        assert!(matches!(
            w.observe("b", Some(&session(Phase::Failed, 2, 1))),
            Some(Progress::Changed(Phase::Failed, _))
        ));
        assert!(matches!(
            w.observe("b", None),
            Some(Progress::Unreachable(m, None)) if m.contains("deleted")
        ));
        assert!(w.done());
        // Waiting for Failed itself is met by it.
        let mut w = Waiter::new(Condition::Phase(Phase::Failed), ["a".into()]);
        assert!(matches!(
            w.observe("a", Some(&session(Phase::Failed, 1, 1))),
            Some(Progress::Met(_))
        ));
    }

    #[test]
    fn delete_waits_until_absent() {
        let mut w = Waiter::new(Condition::Deleted, ["a".to_string()]);
        assert!(matches!(
            w.observe("a", Some(&session(Phase::Terminating, 1, 1))),
            Some(Progress::Changed(Phase::Terminating, _))
        ));
        assert!(!w.done());
        assert_eq!(w.observe("a", None), Some(Progress::Met(None)));
        assert!(w.done());
        assert_eq!(w.pending().count(), 0);
    }
}
