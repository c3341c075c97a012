//! Leader election through the Redis lease, against a real Redis.

mod common;

use std::time::Duration;

use common::*;
use mcp_orchestrator::lease::{self, Lease, Timings};
use mcp_orchestrator::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

async fn store(redis: &Redis) -> Store {
    Store::connect(&redis.url(), "lease").await.unwrap()
}

#[tokio::test]
async fn one_holder_at_a_time_and_terms_only_grow() {
    let redis = Redis::start();
    let s = store(&redis).await;
    let (a, b) = (Lease::new(&s, "a"), Lease::new(&s, "b"));
    let ttl = Duration::from_millis(400);
    let t1 = a
        .try_acquire(ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(b.try_acquire(ttl).await.unwrap(), None, "held by a");
    // Acquiring again as the holder keeps the term.
    assert_eq!(a.try_acquire(ttl).await.unwrap(), Some(t1));
    assert_eq!(a.holder().await.unwrap(), Some((t1, "a".to_string())));
    assert!(a.renew(t1, ttl).await.unwrap());
    assert!(a.check_fence(t1).await.unwrap());
    // b cannot renew or release a's lease.
    assert!(!b.renew(t1, ttl).await.unwrap());
    assert!(!b.release(t1).await.unwrap());
    // After expiry b takes over with a higher term; a's renew and release do nothing now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t2 = b
        .try_acquire(ttl)
        .await
        .unwrap()
        .expect("an expired lease is free");
    assert!(t2 > t1);
    assert!(
        !a.renew(t1, ttl).await.unwrap(),
        "a deposed leader cannot renew"
    );
    assert!(
        !a.release(t1).await.unwrap(),
        "nor delete its successor's lease"
    );
    assert!(
        !a.check_fence(t1).await.unwrap(),
        "the old term is fenced off"
    );
    assert!(b.check_fence(t2).await.unwrap());
    assert!(b.release(t2).await.unwrap());
    assert_eq!(b.holder().await.unwrap(), None);
}

#[tokio::test]
async fn electors_hand_over_on_release_and_on_death() {
    let redis = Redis::start();
    let s = store(&redis).await;
    let t = Timings {
        ttl: Duration::from_millis(1500),
        renew_every: Duration::from_millis(200),
        renew_deadline: Duration::from_millis(1000),
        retry_every: Duration::from_millis(100),
    };
    let start = |name: &str| {
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(lease::run(Lease::new(&s, name), t, tx, stop.clone()));
        (rx, stop, task)
    };
    let (mut ra, stop_a, task_a) = start("a");
    let first = ra.wait_for(|l| l.is_some()).await.unwrap().unwrap();
    let (mut rb, stop_b, task_b) = start("b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*rb.borrow(), None, "one leader at a time");
    assert_eq!(
        *ra.borrow(),
        Some(first),
        "the leader keeps its term while renewing"
    );
    // A clean stop releases: b leads within one retry.
    let at = std::time::Instant::now();
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    let second = rb.wait_for(|l| l.is_some()).await.unwrap().unwrap();
    let handover = at.elapsed();
    assert!(second > first);
    assert!(
        handover < Duration::from_secs(1),
        "handover took {handover:?}"
    );
    // A dead leader (its task aborted, nothing released): c takes over after the TTL.
    let (mut rc, stop_c, task_c) = start("c");
    let at = std::time::Instant::now();
    task_b.abort();
    let third = tokio::time::timeout(Duration::from_secs(5), rc.wait_for(|l| l.is_some()))
        .await
        .expect("takeover within 5 s")
        .unwrap()
        .unwrap();
    let takeover = at.elapsed();
    assert!(third > second);
    assert!(
        takeover < Duration::from_secs(3),
        "takeover took {takeover:?}"
    );
    eprintln!("handover {handover:?}, takeover after a dead leader {takeover:?}");
    drop(stop_b);
    stop_c.cancel();
    task_c.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_leader_that_loses_redis_steps_down_before_its_lease_expires() {
    let mut redis = Some(Redis::start());
    let s = store(redis.as_ref().unwrap()).await;
    let t = Timings {
        ttl: Duration::from_millis(3000),
        renew_every: Duration::from_millis(200),
        renew_deadline: Duration::from_millis(1000),
        retry_every: Duration::from_millis(100),
    };
    let (tx, mut rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(lease::run(Lease::new(&s, "a"), t, tx, stop.clone()));
    rx.wait_for(|l| l.is_some()).await.unwrap();
    // Redis goes away: the leader must stop acting within the renew deadline, well
    // before the 3 s lease could expire.
    let at = std::time::Instant::now();
    drop(redis.take());
    tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|l| l.is_none()))
        .await
        .expect("stepped down")
        .unwrap();
    let stepped = at.elapsed();
    assert!(
        stepped < Duration::from_millis(1800),
        "stepped down after {stepped:?}"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[test]
fn timings_that_break_the_guarantee_are_refused() {
    let bad = Timings {
        ttl: Duration::from_secs(1),
        renew_deadline: Duration::from_secs(2),
        ..Timings::default()
    };
    assert!(bad.check().is_err());
    assert!(Timings::default().check().is_ok());
}

#[tokio::test]
async fn a_deposed_leaders_writes_change_nothing() {
    use mcp_orchestrator::domain::plan::CrashState;
    use mcp_orchestrator::domain::resource::{Phase, Session, SessionStatus};
    use mcp_orchestrator::store::{SessionEvent, StoreError};

    let redis = Redis::start();
    let s = store(&redis).await;
    let (a, b) = (Lease::new(&s, "a"), Lease::new(&s, "b"));
    let ttl = Duration::from_millis(300);
    let t1 = a.try_acquire(ttl).await.unwrap().expect("a leads");
    let created = s
        .create(&Session::new("fence", "mcp-server:latest"))
        .await
        .unwrap();
    let status = |phase| SessionStatus {
        phase,
        ..SessionStatus::default()
    };
    // While t1 is the newest term, a's fenced writes go through.
    let old = s.fenced(t1);
    let written = old
        .update_status(
            "fence",
            created.metadata.resource_version.as_deref().unwrap(),
            &status(Phase::Pending),
        )
        .await
        .expect("the leader's status write");
    let rv = written.metadata.resource_version.clone().unwrap();

    // b takes over after the TTL: every write of a is refused, atomically.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t2 = b.try_acquire(ttl).await.unwrap().expect("b leads");
    assert!(t2 > t1);
    let fenced = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Fenced { term, newest }) => {
            assert_eq!(term, t1, "{what}");
            assert_eq!(newest, t2.to_string(), "{what}");
        }
        other => panic!("{what}: a deposed leader's write must be fenced, got {other:?}"),
    };
    fenced(
        old.update_status("fence", &rv, &status(Phase::Running))
            .await
            .map(|_| ()),
        "status",
    );
    let event = SessionEvent {
        time: chrono::Utc::now(),
        type_: "Normal".into(),
        reason: "Test".into(),
        message: "late".into(),
    };
    fenced(old.record_event("fence", &event).await, "event");
    fenced(old.delete("fence", Some(&rv)).await.map(|_| ()), "delete");
    fenced(old.set_orphan_hold(Some("late")).await, "orphan hold");
    fenced(
        old.set_crash_state("fence", Some(&CrashState::default()))
            .await,
        "crash state",
    );
    fenced(old.set_value("leader-address", Some("x")).await, "value");
    // Nothing changed.
    let now = s.get("fence").await.unwrap().unwrap();
    assert_eq!(now.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(now.status.unwrap().phase, Phase::Pending);
    assert!(s.events("fence").await.unwrap().is_empty());
    assert_eq!(s.orphan_hold().await.unwrap(), None);
    assert!(s.crash_states().await.unwrap().is_empty());
    assert_eq!(s.value("leader-address").await.unwrap(), None);
    // The new leader's writes and the API's (unfenced) writes go through.
    let by_b = s
        .fenced(t2)
        .update_status("fence", &rv, &status(Phase::Running))
        .await
        .expect("the new leader writes");
    s.delete("fence", by_b.metadata.resource_version.as_deref())
        .await
        .expect("an API write is not fenced");
}
