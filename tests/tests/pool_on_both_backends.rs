//! The same worker pools, unchanged, over the in-memory backend and over
//! Postgres: a burn-down with retries and snoozes across two pools, work
//! picked up through wake-ups rather than polling, and a cancel that stops
//! a running handler through its notification rather than a heartbeat.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir::core::{DispatcherConfig, Millis, StateName};
use weir::{
    Backend, Client, InsertOptions, JobArgs, JobFilter, JobOutcome, PoolConfig, PoolReport,
    Registry, WorkerPool,
};
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig};

#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
}

impl JobArgs for Work {
    const KIND: &'static str = "both.work";
    const MAX_ATTEMPTS: u32 = 3;
}

#[derive(Serialize, Deserialize)]
struct Endless;

impl JobArgs for Endless {
    const KIND: &'static str = "both.endless";
}

/// Jobs snoozed once already (a snooze gives the attempt back, so the
/// attempt number cannot tell).
type Snoozed = Arc<Mutex<BTreeSet<u32>>>;

fn registry(stopped: Arc<AtomicBool>, snoozed: Snoozed) -> Registry {
    let mut registry = Registry::new();
    registry
        .register(move |job: Work, ctx| {
            let first_snooze = job.n % 10 == 1 && snoozed.lock().unwrap().insert(job.n);
            async move {
                if first_snooze {
                    return Ok(JobOutcome::Snooze(Duration::from_millis(20)));
                }
                match (job.n % 10, ctx.attempt()) {
                    (0, 1) => Err("fails its first attempt".into()),
                    _ => Ok(JobOutcome::Complete),
                }
            }
        })
        .unwrap();
    registry
        .register(move |_: Endless, ctx| {
            let stopped = Arc::clone(&stopped);
            async move {
                ctx.cancelled().cancelled().await;
                stopped.store(true, Ordering::SeqCst);
                Ok(JobOutcome::Complete)
            }
        })
        .unwrap();
    registry
}

fn config(process: u64) -> PoolConfig {
    PoolConfig::from_dispatcher(DispatcherConfig {
        // Long: only a wake-up can explain a quick pickup, and only a
        // cancel notification a quick stop.
        poll_interval: Millis(10_000),
        heartbeat_interval: Millis(30_000),
        maintenance_interval: Millis(50),
        flush_delay: Millis(5),
        shutdown_timeout: Millis(2_000),
        stop_grace: Millis(2_000),
        ..DispatcherConfig::new(
            weir::core::ProcessId(process),
            weir::core::QueueName::new("default").unwrap(),
            16,
        )
    })
}

async fn wait_for<B: Backend>(client: &Client<B>, what: &str, done: impl Fn(&[StateName]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = client
            .jobs(&JobFilter {
                limit: JobFilter::LIMIT_MAX,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let states: Vec<StateName> = jobs.iter().map(|j| j.state_name()).collect();
        if done(&states) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: timed out with {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn the_same_pools_work_the_same<B: Backend>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    // Let the pools start and go idle first, so the burn-down below is
    // found through a wake-up, not the first poll.
    let stopped = Arc::new(AtomicBool::new(false));
    let snoozed = Snoozed::default();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut runs = Vec::new();
    for p in 1..=2 {
        let pool = registry(Arc::clone(&stopped), Arc::clone(&snoozed));
        let pool = WorkerPool::with_config(Arc::clone(&backend), pool, config(p)).unwrap();
        let mut s = stop.subscribe();
        runs.push(tokio::spawn(pool.run(async move {
            let _ = s.recv().await;
        })));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let work: Vec<Work> = (0..1_000).map(|n| Work { n }).collect();
    let inserted = client
        .insert_bulk(work.iter().map(|w| (w, InsertOptions::default())))
        .await
        .unwrap();
    assert_eq!(inserted.len(), 1_000);
    wait_for(&client, "burn-down", |s| {
        s.len() == 1_000 && s.iter().all(|s| *s == StateName::Completed)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "picked up by wake-ups, not the 10 s poll: {:?}",
        started.elapsed()
    );

    let endless = client.insert(&Endless).await.unwrap().id;
    wait_for(&client, "endless running", |s| {
        s.last() == Some(&StateName::Running)
    })
    .await;
    let cancelled_at = Instant::now();
    client.cancel(endless).await.unwrap();
    while !stopped.load(Ordering::SeqCst) {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(8),
            "the cancel notification stops the handler well before a 30 s heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stop.send(()).unwrap();
    let mut reports: Vec<PoolReport> = Vec::new();
    for run in runs {
        reports.push(run.await.unwrap().unwrap());
    }
    let sum = |f: fn(&PoolReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(|r| r.metrics.completed),
        1_000,
        "each job completed once"
    );
    assert_eq!(sum(|r| r.metrics.retried), 100);
    assert_eq!(sum(|r| r.metrics.snoozed), 100);
    assert_eq!(sum(|r| r.stats.fenced), 1, "the cancelled handler");
    assert_eq!(sum(|r| r.metrics.stopped), 1, "its result discarded");
    assert!(
        reports.iter().all(|r| r.metrics.started > 0),
        "both pools worked"
    );
    let jobs = client
        .jobs(&JobFilter {
            limit: JobFilter::LIMIT_MAX,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    for job in &jobs[..1_000] {
        let expected = if job.payload.0.ends_with(b"0}") { 2 } else { 1 };
        assert_eq!(job.attempt.0, expected, "job {}: {:?}", job.id, job.payload);
    }
    assert_eq!(jobs[1_000].state_name(), StateName::Cancelled);
    assert!(client.workers().await.unwrap().is_empty(), "both retired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_pools_work_the_same_in_memory() {
    let backend = weir_memory::MemoryBackend::new(weir::core::WorldConfig::default());
    the_same_pools_work_the_same(Arc::new(backend)).await;
}

async fn postgres() -> (TestDatabase, PgBackend) {
    let db = test_database().await;
    let backend = PgBackend::connect(db.url_as_app_user(), 12, PgConfig::default())
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    (db, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_pools_work_the_same_on_postgres() {
    let (_db, backend) = postgres().await;
    the_same_pools_work_the_same(Arc::new(backend)).await;
}
