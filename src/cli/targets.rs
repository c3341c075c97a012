//! kubectl-style typed names on the command line: `session/NAME`, `warmpool/NAME` (also
//! `warmpools/NAME`, `wp/NAME`), plain names (sessions, as they always were), and a leading
//! pool type (`warmpools`, `warmpool`, `wp`) that makes the plain names after it pools —
//! alone it means every pool. A session really named `wp` stays reachable as `session/wp`.

use anyhow::bail;

/// The types a name may carry before a `/`, for messages.
const TYPES: &str = "session/NAME or warmpool/NAME (wp/NAME)";

/// What a command line names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Named sessions, in order.
    pub sessions: Vec<String>,
    /// Named warm pools, in order.
    pub pools: Vec<String>,
    /// A pool type was given without names: every pool (matching the selector).
    pub all_pools: bool,
}

impl Targets {
    /// Nothing named, no type given: the sessions (as before there were pools).
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.pools.is_empty() && !self.all_pools
    }

    /// Whether the command is about pools (named, or by type).
    pub fn wants_pools(&self) -> bool {
        self.all_pools || !self.pools.is_empty()
    }

    /// Whether the command is about sessions (named, or nothing named and no pool type).
    pub fn wants_sessions(&self) -> bool {
        !self.sessions.is_empty() || !self.wants_pools()
    }
}

fn is_pool_type(t: &str) -> bool {
    matches!(
        t.to_ascii_lowercase().as_str(),
        "warmpools" | "warmpool" | "wp"
    )
}

fn is_session_type(t: &str) -> bool {
    matches!(t.to_ascii_lowercase().as_str(), "sessions" | "session")
}

/// Sort command-line names into sessions and pools (see the module doc).
pub fn targets(args: &[String]) -> anyhow::Result<Targets> {
    let mut t = Targets::default();
    let mut rest = args;
    let mut plain_are_pools = false;
    if let Some((first, after)) = args.split_first()
        && is_pool_type(first)
    {
        plain_are_pools = true;
        t.all_pools = after.is_empty();
        rest = after;
    }
    for arg in rest {
        match arg.split_once('/') {
            None if plain_are_pools => t.pools.push(arg.clone()),
            None => t.sessions.push(arg.clone()),
            Some((ty, name)) => {
                if name.is_empty() || name.contains('/') {
                    bail!("{arg:?}: give {TYPES}");
                }
                if is_pool_type(ty) {
                    t.pools.push(name.to_string());
                } else if is_session_type(ty) {
                    t.sessions.push(name.to_string());
                } else {
                    bail!("{arg:?}: unknown resource type {ty:?}; give {TYPES}");
                }
            }
        }
    }
    Ok(t)
}

/// Names that must all be sessions (`restart`, `logs`, `wait`): plain or `session/NAME`; a
/// pool is refused with `why`.
pub fn sessions_only(args: &[String], why: &str) -> anyhow::Result<Vec<String>> {
    let t = targets(args)?;
    if t.wants_pools() {
        bail!("{why}");
    }
    Ok(t.sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> anyhow::Result<Targets> {
        targets(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_names_stay_sessions_and_types_pick_pools() {
        let x = t(&["a", "b"]).unwrap();
        assert_eq!(
            (x.sessions, x.pools, x.all_pools),
            (v(&["a", "b"]), v(&[]), false)
        );
        for ty in ["warmpools", "warmpool", "wp", "WarmPool"] {
            let x = t(&[ty]).unwrap();
            assert!(
                x.all_pools && x.wants_pools() && !x.wants_sessions(),
                "{ty}"
            );
            let x = t(&[ty, "p", "session/s"]).unwrap();
            assert_eq!(
                (x.pools, x.sessions, x.all_pools),
                (v(&["p"]), v(&["s"]), false)
            );
        }
        let x = t(&[
            "wp/p",
            "warmpool/q",
            "warmpools/r",
            "session/wp",
            "sessions/b",
            "c",
        ])
        .unwrap();
        assert_eq!(x.pools, v(&["p", "q", "r"]));
        assert_eq!(x.sessions, v(&["wp", "b", "c"]));
        assert!(t(&[]).unwrap().is_empty());
        assert!(t(&[]).unwrap().wants_sessions());
    }

    #[test]
    fn unknown_types_and_empty_names_are_errors() {
        let e = t(&["pod/a"]).unwrap_err().to_string();
        assert!(e.contains("unknown resource type \"pod\""), "{e}");
        assert!(t(&["wp/"]).is_err());
        assert!(t(&["wp/a/b"]).is_err());
        let e = sessions_only(&v(&["wp/a"]), "no pools here").unwrap_err();
        assert_eq!(e.to_string(), "no pools here");
        assert_eq!(
            sessions_only(&v(&["session/a", "b"]), "x").unwrap(),
            v(&["a", "b"])
        );
    }
}
