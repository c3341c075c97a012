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
