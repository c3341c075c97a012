//! The verbs that work on the engine and the running system rather than on desired state:
//! `healthcheck`, `chaos` and `foreign`.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::{ChaosArgs, Global};
use crate::runtime::Runtime;

/// `healthcheck`: exit 0 when Redis and the Docker engine answer within 5 s.
pub async fn healthcheck(g: &Global) -> anyhow::Result<()> {
    let check = async {
        g.store()
            .await?
            .ping()
            .await
            .context("Redis is not answering")?;
        Runtime::connect(&g.instance)
            .await
            .context("cannot connect to the Docker engine")?
            .ping()
            .await
            .context("the Docker engine is not answering")?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .map_err(|_| anyhow!("health check timed out after 5s"))??;
    println!("ok");
    Ok(())
}

/// `chaos`: inject faults against a live `serve` and report the measured recovery.
pub async fn chaos(g: &Global, a: ChaosArgs) -> anyhow::Result<()> {
    let faults = a
        .faults
        .iter()
        .map(|f| f.parse())
        .collect::<Result<Vec<crate::chaos::Fault>, _>>()?;
    let cfg = crate::chaos::ChaosConfig {
        duration: a.duration,
        interval: a.interval,
        selector: crate::domain::selector::Selector::parse(&a.selector)?,
        faults,
        recovery_timeout: a.recovery_timeout,
        quiet: a.quiet,
    };
    let backend = g.backend().await?;
    let runtime = Runtime::connect(&g.instance)
        .await
        .context("cannot connect to the Docker engine")?;
    let json = a.json;
    let report = crate::chaos::run(&backend, &runtime, &cfg, |r| {
        if !json {
            match r.recovered_ms {
                Some(ms) => eprintln!("{:?} {} → recovered in {ms} ms", r.fault, r.session),
                None => eprintln!("{:?} {} → NOT recovered", r.fault, r.session),
            }
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("faults injected:   {}", report.injected);
        println!("faults recovered:  {}", report.recovered);
        println!(
            "recovery (ms):     p50 {}  p95 {}  p99 {}  max {}",
            report.p50_ms, report.p95_ms, report.p99_ms, report.max_ms
        );
        println!("violations:        {}", report.violations.len());
        for v in &report.violations {
            println!("  - {v}");
        }
    }
    if !report.ok() {
        bail!(
            "{} of {} faults recovered, {} invariant violation(s)",
            report.recovered,
            report.injected,
            report.violations.len()
        );
    }
    Ok(())
}

/// `foreign`: list (and with `remove`, remove) the containers of this instance that are not
/// this store's.
pub async fn foreign(g: &Global, remove: bool, only: &[String]) -> anyhow::Result<()> {
    if g.server.is_some() {
        bail!(
            "foreign works on the Docker engine directly; run it without --server, beside the engine"
        );
    }
    let store = g.store().await?;
    let snap = store.list().await?;
    let runtime = Runtime::connect(&g.instance)
        .await
        .context("cannot connect to the Docker engine")?;
    let sessions: std::collections::HashMap<String, crate::domain::resource::Session> = snap
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone(), s))
        .collect();
    let names = runtime.names().await?;
    // After a rollback this store's own containers without a session are held too.
    let hold = store.orphan_hold().await?;
    if let Some(why) = &hold {
        eprintln!("orphans are held after a store rollback: {why}");
    }
    let chosen: Vec<_> = runtime
        .list(None, false)
        .await?
        .into_iter()
        .filter(|c| {
            let session = sessions.get(&c.session);
            crate::domain::plan::ownership(c, &snap.identity, session)
                == crate::domain::plan::Ownership::Foreign
                || (hold.is_some() && session.is_none())
        })
        .filter(|c| {
            let name = names.get(&c.id).map(String::as_str).unwrap_or("");
            only.is_empty()
                || only
                    .iter()
                    .any(|o| c.id.starts_with(o.as_str()) || name == o.trim_start_matches('/'))
        })
        .collect();
    if chosen.is_empty() {
        eprintln!("no foreign containers (store {})", snap.identity);
        if remove && hold.is_some() && only.is_empty() {
            store.set_orphan_hold(None).await?;
            eprintln!("orphan hold cleared");
        }
        return Ok(());
    }
    println!(
        "{:<14} {:<30} {:<20} {:<10} STORE",
        "CONTAINER", "NAME", "SESSION", "STATE"
    );
    for c in &chosen {
        println!(
            "{:<14} {:<30} {:<20} {:<10} {}",
            crate::runtime::short_id(&c.id),
            names.get(&c.id).map(String::as_str).unwrap_or(""),
            c.session,
            format!("{:?}", c.state).to_lowercase(),
            c.store.as_deref().unwrap_or("none")
        );
    }
    if remove {
        for c in &chosen {
            runtime.remove(&c.id).await?;
        }
        eprintln!("removed {} foreign container(s)", chosen.len());
        if hold.is_some() && only.is_empty() {
            store.set_orphan_hold(None).await?;
            eprintln!("orphan hold cleared: the controller removes orphans again");
        }
    } else {
        eprintln!(
            "{} container(s) of instance {:?} are not this store's ({}); `--remove` removes them",
            chosen.len(),
            g.instance,
            snap.identity
        );
    }
    Ok(())
}
