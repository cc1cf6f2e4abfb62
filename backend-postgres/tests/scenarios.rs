//! Scenario tests with real connections and concurrent tasks, named after
//! the behaviour they pin down.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::Row;
use weir::{Backend, BackendError, BackendExt, Presence};
use weir_core::cmd;
use weir_core::{
    answer_of, Acquired, ClaimerConfig, Command, Enqueued, InvalidJob, JobLimits, Kind, Millis,
    NewJob, Outcome, Payload, ProcessId, Reject, Request, SemaphoreName, StateName, Timestamp,
    UniqueKey, WaitConfig, WorldConfig,
};
use weir_postgres::migrate::migrate_to;
use weir_postgres::notify::Wakeup;
use weir_postgres::semaphore::{
    acquire, AcquireError, AdvisorySemaphore, LeaseSemaphore, SlotStore,
};
use weir_postgres::{migrate, MigrateError, PgBackend, PgConfig, SchemaName, LATEST_VERSION};
use weir_test_kit::{job, queue};

/// One request at storage time `now`, answered with its own type.
async fn run<R: Request>(backend: &PgBackend, now: i64, request: R) -> R::Output {
    let outcome = backend.execute_at(Timestamp(now), request.into());
    answer_of::<R>(outcome.await.unwrap())
}

fn wait(wait_max: u64) -> WaitConfig {
    WaitConfig {
        retry_min: Millis(5),
        retry_max: Millis(20),
        wait_max: Millis(wait_max),
    }
}

async fn advisory(
    db: &weir_pg_harness::TestDatabase,
    backend: &PgBackend,
    name: &str,
    permits: u16,
    holder: u64,
) -> AdvisorySemaphore {
    let options: PgConnectOptions = db.url_as_app_user().parse().unwrap();
    AdvisorySemaphore::open(
        backend,
        options,
        SemaphoreName::new(name).unwrap(),
        permits,
        ProcessId(holder),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn migrations_rerun_as_a_no_op_and_a_newer_schema_is_refused() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let again = backend.migrate().await.unwrap();
    assert_eq!((again.from, again.to), (LATEST_VERSION, LATEST_VERSION));
    assert!(again.applied.is_empty());
    backend.check_schema().await.unwrap();
    sqlx::query("INSERT INTO weir.schema_migrations (version, name) VALUES ($1, 'future')")
        .bind(LATEST_VERSION + 1)
        .execute(backend.pool())
        .await
        .unwrap();
    let refused = backend.migrate().await.unwrap_err();
    assert!(
        matches!(refused, MigrateError::NewerThanCode { found, .. } if found == LATEST_VERSION + 1),
        "{refused}"
    );
    assert!(backend.check_schema().await.is_err());
    // A second schema in the same database is independent.
    let other = SchemaName::new("weir_other").unwrap();
    let report = migrate(backend.pool(), &other).await.unwrap();
    assert_eq!(report.applied, (1..=LATEST_VERSION).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_role_is_not_a_superuser() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let row =
        sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(backend.pool())
            .await
            .unwrap();
    assert!(!row.get::<bool, _>(0) && !row.get::<bool, _>(1));
}

#[tokio::test]
async fn late_worker_completion_after_rescue_is_rejected_and_changes_nothing() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    run(
        &backend,
        1_000,
        cmd::Enqueue {
            jobs: vec![job("k")],
        },
    )
    .await
    .unwrap();
    let (claimer, _) = run(
        &backend,
        1_000,
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(1),
        },
    )
    .await
    .expect("no claimer lease");
    let claimed = run(
        &backend,
        1_000,
        cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        },
    )
    .await
    .expect("no claim");
    let late = claimed.jobs[0].receipt;
    // The worker stalls past the heartbeat staleness; the leader rescues.
    let leader = run(
        &backend,
        70_000,
        cmd::LeaderElect {
            process: ProcessId(9),
        },
    )
    .await
    .expect("no leader");
    let rescued = run(
        &backend,
        70_000,
        cmd::Rescue {
            leader,
            draw: 0,
            max: 10,
        },
    )
    .await;
    assert!(matches!(rescued, Ok(ref r) if r.len() == 1), "{rescued:?}");
    let before = backend.snapshot().await.unwrap();
    let xmin_before: String = sqlx::query_scalar("SELECT xmin::text FROM weir.jobs")
        .fetch_one(backend.pool())
        .await
        .unwrap();
    let answer = run(
        &backend,
        70_001,
        cmd::Complete {
            receipts: vec![late],
        },
    )
    .await;
    assert_eq!(
        answer,
        Ok(vec![Err(Reject::StaleEpoch {
            current: weir_core::Epoch(2),
            presented: late.epoch,
        })])
    );
    assert_eq!(backend.snapshot().await.unwrap(), before);
    let xmin_after: String = sqlx::query_scalar("SELECT xmin::text FROM weir.jobs")
        .fetch_one(backend.pool())
        .await
        .unwrap();
    assert_eq!(xmin_before, xmin_after, "the row was not even rewritten");
}

#[tokio::test]
async fn fresh_claimer_claims_without_a_lease_write_and_a_half_stale_one_refreshes_in_time() {
    let world = WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 1,
            lease_ttl: Millis(1_000),
            idle_threshold: Millis(400),
        },
        ..WorldConfig::default()
    };
    let (_db, backend) = common::backend(world).await;
    let jobs = (0..4).map(|_| job("k")).collect();
    run(&backend, 0, cmd::Enqueue { jobs }).await.unwrap();
    let acquire = |process| cmd::ClaimerAcquire {
        queue: queue(),
        process: ProcessId(process),
    };
    let (claimer, how) = run(&backend, 0, acquire(1)).await.expect("no lease");
    assert_eq!(how, Acquired::Opened, "no lease");
    let lease_xmin = || async {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM weir.claimer_leases")
            .fetch_one(backend.pool())
            .await
            .unwrap()
    };
    let claim = cmd::Claim {
        queue: queue(),
        claimer,
        max: 1,
        kinds: None,
    };
    let opened = lease_xmin().await;
    // Fresh: claimed without touching the lease row.
    let fresh = run(&backend, 100, claim.clone()).await.unwrap();
    assert_eq!((fresh.jobs.len(), fresh.lease_refreshed), (1, false));
    assert_eq!(lease_xmin().await, opened);
    // Half-stale (last claim recorded at 0, idle 400/2 passed): refreshed.
    let stale = run(&backend, 200, claim.clone()).await.unwrap();
    assert_eq!((stale.jobs.len(), stale.lease_refreshed), (1, true));
    assert_ne!(lease_xmin().await, opened);
    // At 400 the slot would have been idle without the refresh; it is not.
    assert_eq!(
        run(&backend, 400, acquire(2)).await,
        Err(Reject::NoClaimerSlot { slots: 1 })
    );
    // Idle past the threshold since the refresh: taken over, epoch bumped.
    let (taken, how) = run(&backend, 600, acquire(2))
        .await
        .expect("not taken over");
    assert_eq!(how, Acquired::TakenOver, "not taken over");
    assert!(taken.lease_epoch > claimer.lease_epoch);
    assert_eq!(
        run(&backend, 601, claim).await,
        Err(Reject::ClaimerLeaseLost {
            slot: claimer.slot,
            presented: claimer.lease_epoch
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unique_inserts_give_one_job() {
    let (_db, backend) = common::backend_with(WorldConfig::default(), 16).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let mut j = job("k");
            j.unique_key = Some(UniqueKey::new("order-42").unwrap());
            let mut other = job("k");
            other.unique_key = Some(UniqueKey::new("order-43").unwrap());
            backend
                .run(cmd::Enqueue {
                    jobs: vec![j, other],
                })
                .await
                .unwrap()
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    for key in 0..2 {
        let ids: std::collections::BTreeSet<_> = results.iter().map(|r| r[key].id).collect();
        assert_eq!(ids.len(), 1, "one job per key: {results:?}");
        let fresh = results.iter().filter(|r| !r[key].duplicate).count();
        assert_eq!(fresh, 1, "exactly one insert per key: {results:?}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM weir.jobs")
        .fetch_one(backend.pool())
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn enqueue_in_the_callers_transaction_commits_or_rolls_back_with_it() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    sqlx::query("CREATE TABLE orders (id int PRIMARY KEY)")
        .execute(backend.pool())
        .await
        .unwrap();
    let mut tx = backend.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    backend
        .enqueue(&mut *tx, vec![job("k")])
        .await
        .unwrap()
        .unwrap();
    tx.rollback().await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM weir.jobs) + (SELECT count(*) FROM orders)",
        )
        .fetch_one(backend.pool())
        .await
        .unwrap()
    };
    assert_eq!(count().await, 0);
    let mut tx = backend.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let done = backend
        .enqueue(&mut *tx, vec![job("k"), job("k")])
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(count().await, 3);
}

#[tokio::test]
async fn bulk_copy_inserts_every_job_in_order() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let jobs: Vec<NewJob> = (0..5000u32)
        .map(|i| {
            let mut j = job("k");
            j.payload = Payload(i.to_be_bytes().to_vec());
            j
        })
        .collect();
    assert_eq!(backend.enqueue_copy(&jobs).await.unwrap(), 5000);
    let snapshot = backend.snapshot().await.unwrap();
    assert_eq!(snapshot.jobs.len(), 5000);
    for (i, stored) in snapshot.jobs.iter().enumerate() {
        assert_eq!(stored.id.0, i as i64 + 1);
        assert_eq!(stored.payload, jobs[i].payload);
        assert_eq!(stored.state_name(), StateName::Available);
    }
    let mut unique = job("k");
    unique.unique_key = Some(UniqueKey::new("x").unwrap());
    assert!(backend.enqueue_copy(&[unique]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_share_a_job() {
    let (_db, backend) = common::backend_with(WorldConfig::default(), 8).await;
    let jobs: Vec<NewJob> = (0..400).map(|_| job("k")).collect();
    backend.enqueue_copy(&jobs).await.unwrap();
    let mut tasks = Vec::new();
    for process in 1..=4u64 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let (claimer, _) = backend
                .run(cmd::ClaimerAcquire {
                    queue: queue(),
                    process: ProcessId(process),
                })
                .await
                .unwrap()
                .expect("no lease");
            let mut mine = Vec::new();
            loop {
                let claimed = backend
                    .run(cmd::Claim {
                        queue: queue(),
                        claimer,
                        max: 16,
                        kinds: None,
                    })
                    .await
                    .unwrap()
                    .expect("claim refused");
                if claimed.jobs.is_empty() {
                    return mine;
                }
                let receipts: Vec<_> = claimed.jobs.iter().map(|j| j.receipt).collect();
                let done = backend
                    .run(cmd::Complete {
                        receipts: receipts.clone(),
                    })
                    .await
                    .unwrap()
                    .unwrap();
                assert!(done.iter().all(Result::is_ok));
                mine.extend(receipts.into_iter().map(|r| r.job));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (400, 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_slot_advisory_semaphore_serializes_two_holders() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for holder in 1..=2u64 {
        let mut sem = advisory(&db, &backend, "one", 1, holder).await;
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let grant = acquire(&mut sem, wait(10_000)).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(sem.release(&grant).await.unwrap());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

async fn two_in_third_waits(mut stores: Vec<Box<dyn SlotStore>>) {
    let mut third = stores.pop().unwrap();
    let g1 = acquire(&mut *stores[0], wait(1_000)).await.unwrap();
    let g2 = acquire(&mut *stores[1], wait(1_000)).await.unwrap();
    assert_ne!(g1.slot, g2.slot);
    let started = std::time::Instant::now();
    let refused = acquire(&mut *third, wait(150)).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(refused, AcquireError::TimedOut { scans, .. } if scans >= 1));
    // Not before wait_max (to the clock's millisecond), and past it by at
    // most one scan (two tries: milliseconds; the bound is generous for a
    // loaded machine).
    assert!(
        waited >= Duration::from_millis(148) && waited < Duration::from_millis(5_150),
        "{waited:?}"
    );
    assert!(stores[0].release(&g1).await.unwrap());
    assert!(
        !stores[0].release(&g1).await.unwrap(),
        "release is idempotent"
    );
    let g3 = acquire(&mut *third, wait(1_000)).await.unwrap();
    assert_eq!(g3.slot, g1.slot);
}

#[tokio::test]
async fn a_two_slot_advisory_semaphore_lets_two_in_and_the_third_waits() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let mut stores: Vec<Box<dyn SlotStore>> = Vec::new();
    for holder in 1..=3 {
        stores.push(Box::new(advisory(&db, &backend, "two", 2, holder).await));
    }
    two_in_third_waits(stores).await;
}

#[tokio::test]
async fn a_two_slot_lease_semaphore_lets_two_in_and_the_third_waits() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let mut stores: Vec<Box<dyn SlotStore>> = Vec::new();
    for holder in 1..=3 {
        stores.push(Box::new(LeaseSemaphore::new(
            backend.clone(),
            SemaphoreName::new("two").unwrap(),
            2,
            ProcessId(holder),
            Millis(60_000),
        )));
    }
    two_in_third_waits(stores).await;
}

#[tokio::test]
async fn an_advisory_slot_is_freed_when_its_holders_connection_closes() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let mut a = advisory(&db, &backend, "crash", 1, 1).await;
    let mut b = advisory(&db, &backend, "crash", 1, 2).await;
    acquire(&mut a, wait(1_000)).await.unwrap();
    assert!(acquire(&mut b, wait(50)).await.is_err());
    // The holder dies without releasing: its connection closes.
    drop(a);
    acquire(&mut b, wait(5_000)).await.unwrap();
    // A timed-out acquisition closed its connection; the next reopens it.
    let mut c = advisory(&db, &backend, "crash", 1, 3).await;
    assert!(acquire(&mut c, wait(30)).await.is_err());
    assert!(!c.is_connected());
    c.close().await;
    b.close().await;
    acquire(&mut c, wait(5_000)).await.unwrap();
    assert!(c.is_connected());
}

#[tokio::test]
async fn a_lease_slot_is_freed_when_its_lease_lapses() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let name = SemaphoreName::new("lapse").unwrap();
    let mut a = LeaseSemaphore::new(backend.clone(), name.clone(), 1, ProcessId(1), Millis(800));
    let mut b = LeaseSemaphore::new(backend.clone(), name, 1, ProcessId(2), Millis(800));
    let held = acquire(&mut a, wait(1_000)).await.unwrap();
    assert_eq!(a.renew(&held).await.unwrap(), Ok(()));
    // `a` crashes (never renews): within the lease length `b` gets in.
    acquire(&mut b, wait(10_000)).await.unwrap();
    assert!(a.renew(&held).await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_dropped_says_so_and_listens_again() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let mut listener = backend.listener().await.unwrap();
    let superuser = db.pool().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE usename = 'weir_app' AND datname = current_database()
           AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    assert_eq!(
        listener.wait(Duration::from_secs(5)).await.unwrap(),
        Some(Wakeup::Missed)
    );
    // Reconnected and listening again: the next enqueue wakes it.
    let woke = loop {
        backend
            .execute(Command::Enqueue(cmd::Enqueue {
                jobs: vec![job("k")],
            }))
            .await
            .unwrap();
        match listener.wait(Duration::from_millis(500)).await.unwrap() {
            Some(Wakeup::Missed) | None => continue,
            other => break other,
        }
    };
    assert_eq!(woke, Some(Wakeup::Jobs(queue())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_and_cancellations_wake_listeners_within_milliseconds() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let mut listener = backend.listener().await.unwrap();
    assert_eq!(
        listener.wait(Duration::from_millis(50)).await.unwrap(),
        None
    );
    let started = std::time::Instant::now();
    backend
        .execute(Command::Enqueue(cmd::Enqueue {
            jobs: vec![job("k")],
        }))
        .await
        .unwrap();
    let woke = listener.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(woke, Some(Wakeup::Jobs(queue())));
    // Milliseconds in practice; the bound only says "not the poll interval
    // of a sleeping worker", and is generous for a loaded machine.
    let latency = started.elapsed();
    eprintln!("wake-up latency after enqueue: {latency:?}");
    assert!(latency < Duration::from_secs(4), "{latency:?}");
    let (claimer, _) = backend
        .run(cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(5),
        })
        .await
        .unwrap()
        .unwrap();
    let claimed = backend
        .run(cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        })
        .await
        .unwrap()
        .unwrap();
    let receipt = claimed.jobs[0].receipt;
    let cancelled = backend
        .execute(Command::Cancel(cmd::Cancel { job: receipt.job }))
        .await
        .unwrap();
    assert_eq!(cancelled, Outcome::Cancelled(Ok(StateName::Running)));
    let woke = listener.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        woke,
        Some(Wakeup::Cancelled {
            job: receipt.job,
            epoch: receipt.epoch,
            holder: ProcessId(5)
        })
    );
    // The fenced holder's completion is refused.
    let late = backend
        .execute(Command::Complete(cmd::Complete {
            receipts: vec![receipt],
        }))
        .await
        .unwrap();
    assert!(matches!(
        late,
        Outcome::Completed(Ok(ref r)) if matches!(r[0], Err(Reject::StaleEpoch { .. }))
    ));
}

#[tokio::test]
async fn the_database_clock_drives_production_commands() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let now = backend.now().await.unwrap();
    assert!((now.0 - before).abs() < 60_000, "{now:?} vs {before}");
    let done = backend
        .run(cmd::Enqueue {
            jobs: vec![job("k")],
        })
        .await
        .unwrap()
        .unwrap();
    let stored = backend.snapshot().await.unwrap().jobs;
    assert_eq!(stored[0].id, done[0].id);
    assert!((stored[0].created_at.0 - now.0).abs() < 60_000);
}

#[tokio::test]
async fn the_scan_skips_a_slot_whose_try_errors_and_reopens_a_dead_connection() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let mut sem = advisory(&db, &backend, "flaky", 2, 1).await;
    let grant = acquire(&mut sem, wait(1_000)).await.unwrap();
    assert_eq!(grant.slot.0, 0);
    assert!(sem.release(&grant).await.unwrap());
    // Kill the dedicated connection behind the semaphore's back.
    let superuser = db.pool().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE usename = 'weir_app' AND datname = current_database()
           AND query LIKE '%pg_advisory_unlock%'",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Slot 0's try fails on the dead connection; the scan goes on to slot
    // 1 on a reopened one instead of failing the acquisition.
    let grant = acquire(&mut sem, wait(1_000)).await.unwrap();
    assert_eq!(grant.slot.0, 1);
    assert!(sem.is_connected());
}

/// Row writes of one claimed-and-completed batch, from the server's own
/// counters (read after the pool closed, which flushes them).
#[tokio::test]
async fn a_busy_claimer_writes_each_job_once_per_command_and_its_lease_not_at_all() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    const BATCHES: usize = 20;
    const BATCH: usize = 128;
    let jobs: Vec<NewJob> = (0..BATCHES * BATCH).map(|_| job("k")).collect();
    backend.enqueue_copy(&jobs).await.unwrap();
    let (claimer, _) = backend
        .run(cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(1),
        })
        .await
        .unwrap()
        .unwrap();
    let mut refreshes = 0;
    let mut heartbeats = 0;
    for _ in 0..BATCHES {
        let claimed = backend
            .run(cmd::Claim {
                queue: queue(),
                claimer,
                max: BATCH as u32,
                kinds: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.jobs.len(), BATCH);
        refreshes += usize::from(claimed.lease_refreshed);
        let receipts: Vec<_> = claimed.jobs.iter().map(|j| j.receipt).collect();
        backend
            .execute(Command::Heartbeat(cmd::Heartbeat {
                receipts: receipts.clone(),
            }))
            .await
            .unwrap();
        heartbeats += receipts.len();
        backend
            .execute(Command::Complete(cmd::Complete { receipts }))
            .await
            .unwrap();
    }
    backend.pool().close().await;
    // A backend flushes its counters as it exits, which happens a moment
    // after the client hung up: poll until the counts settle.
    let stats = db.pool().await;
    let n = (BATCHES * BATCH) as i64;
    let mut row = Vec::new();
    for _ in 0..100 {
        let mut conn = stats.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .unwrap();
        row = sqlx::query(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup
             FROM pg_stat_user_tables
             WHERE schemaname = 'weir' AND relname IN ('jobs', 'claimer_leases')
             ORDER BY relname",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        if row.len() == 2 && row[1].get::<i64, _>("n_tup_upd") >= 3 * n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = |i: usize, c: &str| row[i].get::<i64, _>(c);
    let (lease_upd, jobs_upd, jobs_hot) = (
        get(0, "n_tup_upd"),
        get(1, "n_tup_upd"),
        get(1, "n_tup_hot_upd"),
    );
    eprintln!(
        "cost: {BATCHES} batches of {BATCH}: jobs updated {jobs_upd} times ({} per job, {jobs_hot} HOT; \
         heartbeats {heartbeats}), claimer lease rows updated {lease_upd} times ({refreshes} refreshes \
         reported); round trips per batch: claim 1 + complete 1 (+ heartbeat 1)",
        jobs_upd as f64 / n as f64
    );
    // Claim, heartbeat and complete: three row versions per job, the
    // heartbeat's HOT (heartbeat_at is in no index).
    assert_eq!(jobs_upd, 3 * n);
    assert!(jobs_hot > 0, "heartbeats can be HOT: {jobs_hot}");
    assert_eq!(lease_upd as usize, refreshes);
    assert!(
        refreshes <= 1,
        "a busy claimer's lease is not rewritten per batch"
    );
}

/// Completions and a rescue sweep racing over the same running jobs: every
/// attempt ends exactly once, either completed by its worker or rescued by
/// the leader, never both and never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_completions_and_rescues_end_each_attempt_exactly_once() {
    let (_db, backend) = common::backend_with(WorldConfig::default(), 8).await;
    let jobs: Vec<NewJob> = (0..256).map(|_| job("k")).collect();
    run(&backend, 1_000, cmd::Enqueue { jobs }).await.unwrap();
    let (claimer, _) = run(
        &backend,
        1_000,
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(1),
        },
    )
    .await
    .unwrap();
    let claimed = run(
        &backend,
        1_000,
        cmd::Claim {
            queue: queue(),
            claimer,
            max: 256,
            kinds: None,
        },
    )
    .await
    .unwrap();
    let receipts: Vec<_> = claimed.jobs.iter().map(|j| j.receipt).collect();
    let late = 10_000_000;
    let leader = run(
        &backend,
        late,
        cmd::LeaderElect {
            process: ProcessId(9),
        },
    )
    .await
    .unwrap();
    let worker = {
        let backend = backend.clone();
        let receipts = receipts.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for chunk in receipts.chunks(16) {
                let items = run(
                    &backend,
                    late,
                    cmd::Complete {
                        receipts: chunk.to_vec(),
                    },
                )
                .await
                .unwrap();
                for (receipt, item) in chunk.iter().zip(items) {
                    match item {
                        Ok(()) => done.push(receipt.job),
                        Err(Reject::StaleEpoch { .. }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }
            done
        })
    };
    let sweeper = {
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut rescued = Vec::new();
            loop {
                let batch = run(
                    &backend,
                    late,
                    cmd::Rescue {
                        leader,
                        draw: 0,
                        max: 16,
                    },
                )
                .await
                .unwrap();
                if batch.is_empty() {
                    return rescued;
                }
                rescued.extend(batch.into_iter().map(|(id, _)| id));
            }
        })
    };
    let completed = worker.await.unwrap();
    let mut rescued = sweeper.await.unwrap();
    // The sweep may have stopped while a batch of completions held rows it
    // skipped; one more sweep picks up whatever is still running.
    if let Ok(rest) = run(
        &backend,
        late,
        cmd::Rescue {
            leader,
            draw: 0,
            max: 256,
        },
    )
    .await
    {
        rescued.extend(rest.into_iter().map(|(id, _)| id));
    }
    let completed: std::collections::BTreeSet<_> = completed.into_iter().collect();
    let rescued: std::collections::BTreeSet<_> = rescued.into_iter().collect();
    assert!(completed.is_disjoint(&rescued));
    assert_eq!(completed.len() + rescued.len(), 256);
    let snapshot = backend.snapshot().await.unwrap();
    for job in &snapshot.jobs {
        let expected = if completed.contains(&job.id) {
            StateName::Completed
        } else {
            StateName::Retryable
        };
        assert_eq!(job.state_name(), expected, "job {}", job.id);
    }
    eprintln!(
        "race: {} completed, {} rescued",
        completed.len(),
        rescued.len()
    );
}

#[tokio::test]
async fn a_v1_schema_is_upgraded_to_v2_in_place_and_keeps_its_jobs() {
    let db = weir_pg_harness::test_database().await;
    let pool = db.app_pool().await;
    let schema = SchemaName::new("weir").unwrap();
    let v1 = migrate_to(&pool, &schema, 1).await.unwrap();
    assert_eq!((v1.from, v1.to, v1.applied), (0, 1, vec![1]));
    let backend = PgBackend::new(pool.clone(), PgConfig::default()).unwrap();
    // What a v1 release did: enqueue (written as it wrote, since today's
    // statements name later versions' columns); it has no presence table.
    sqlx::raw_sql(
        "INSERT INTO weir.jobs (queue, kind, payload, priority, attempt, max_attempts, epoch,
                                timeout_ms, created_at, state, run_at)
         SELECT 'default', 'k', '\\x', 0, 0, 25, 0, 1800000, 5, 'available', 5
         FROM generate_series(1, 2)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows = "SELECT id, queue, kind, payload, attempt, epoch, state, run_at
                FROM weir.jobs ORDER BY id";
    type Row = (i64, String, String, Vec<u8>, i32, i64, String, Option<i64>);
    let before: Vec<Row> = sqlx::query_as(rows).fetch_all(&pool).await.unwrap();
    assert_eq!(before.len(), 2);
    let behind = backend.check_schema().await.unwrap_err();
    assert!(
        behind.to_string().contains("version 1") && behind.to_string().contains("weir migrate"),
        "{behind}"
    );
    let presence = Presence {
        process: ProcessId(1),
        label: "host:1".into(),
        queues: vec![queue()],
        kinds: vec![Kind::new("k").unwrap()],
        started_at: Timestamp(0),
    };
    assert!(matches!(
        backend.announce(&presence, Duration::from_secs(60)).await,
        Err(BackendError::Misconfigured(_))
    ));
    let report = backend.migrate().await.unwrap();
    assert_eq!(
        (report.from, report.to, report.applied),
        (1, LATEST_VERSION, (2..=LATEST_VERSION).collect::<Vec<_>>())
    );
    backend.check_schema().await.unwrap();
    let after: Vec<Row> = sqlx::query_as(rows).fetch_all(&pool).await.unwrap();
    assert_eq!(after, before);
    let jobs = backend.snapshot().await.unwrap().jobs;
    assert_eq!(jobs.len(), 2, "today's reads see them");
    backend
        .announce(&presence, Duration::from_secs(60))
        .await
        .unwrap();
    let workers = backend.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].presence, presence);
    // The upgraded schema goes on where v1 left off.
    let more = backend.enqueue_bulk(vec![job("k")]).await.unwrap().unwrap();
    assert!(more[0].id.0 > before[1].0);
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM weir.schema_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, (1..=LATEST_VERSION).collect::<Vec<_>>());
}

/// Version 6 keeps each job's history in `errors`: a v5 job's one stored
/// error becomes its first entry, a job without one has none, and neither
/// has a backoff of its own.
#[tokio::test]
async fn a_v5_jobs_last_error_becomes_the_first_of_its_errors() {
    let db = weir_pg_harness::test_database().await;
    let pool = db.app_pool().await;
    let schema = SchemaName::new("weir").unwrap();
    migrate_to(&pool, &schema, 5).await.unwrap();
    // What a v5 release left: a job retried after a failure, and a fresh one.
    sqlx::raw_sql(
        "INSERT INTO weir.jobs (queue, kind, payload, priority, attempt, max_attempts, epoch,
                                timeout_ms, created_at, state, run_at,
                                error_attempt, error_at, error_message)
         VALUES ('q', 'k', '\\x7b7d', 0, 1, 3, 1, 1000, 5, 'retryable', 70, 1, 7, 'boom'),
                ('q', 'k', '\\x7b7d', 0, 0, 3, 0, 1000, 5, 'available', 5, NULL, NULL, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let backend = PgBackend::new(pool.clone(), PgConfig::default()).unwrap();
    let report = backend.migrate().await.unwrap();
    assert_eq!((report.from, report.applied), (5, vec![6]));
    let failed = backend.job(weir_core::JobId(1)).await.unwrap().unwrap();
    assert_eq!(
        failed.errors,
        vec![weir_core::ErrorRecord {
            attempt: weir_core::Attempt(1),
            at: Timestamp(7),
            message: "boom".to_string(),
        }]
    );
    let fresh = backend.job(weir_core::JobId(2)).await.unwrap().unwrap();
    assert_eq!(fresh.errors, vec![]);
    assert_eq!((failed.backoff, fresh.backoff), (None, None));
}

async fn last_id(backend: &PgBackend) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM weir.jobs_id_seq")
        .fetch_one(backend.pool())
        .await
        .unwrap()
}

fn keyed(key: &str) -> NewJob {
    let mut j = job("k");
    j.unique_key = Some(UniqueKey::new(key).unwrap());
    j
}

/// Chunks of `batch_max` (4 here) before the refused one are written and
/// rolled back with it: nothing stays, no wake-up is sent, and the same
/// bulk, corrected, then goes in with its duplicates resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_with_unique_keys_is_all_or_none_when_a_later_chunk_is_invalid() {
    let world = WorldConfig {
        batch_max: 4,
        ..WorldConfig::default()
    };
    let (_db, backend) = common::backend(world).await;
    let existing = backend
        .enqueue_bulk(vec![keyed("held")])
        .await
        .unwrap()
        .unwrap()[0];
    let before = backend.snapshot().await.unwrap();
    let seq_before = last_id(&backend).await;
    let mut listener = backend.listener().await.unwrap();
    let too_far = backend
        .now()
        .await
        .unwrap()
        .plus(JobLimits::default().delay_max)
        .plus(Millis(3_600_000));
    // 0 plain, 1 "a", 2 "held" (stored), 3 plain, 4 "b", 5 "a" again, ...,
    // and job 17, in the fifth chunk, due too far in the future.
    let bulk = |run_at| -> Vec<NewJob> {
        (0..20)
            .map(|i| {
                let mut j = match i % 6 {
                    1 | 5 => keyed("a"),
                    2 => keyed("held"),
                    4 => keyed(&format!("b{i}")),
                    _ => job("k"),
                };
                if i == 17 {
                    j.run_at = run_at;
                }
                j
            })
            .collect()
    };
    assert_eq!(
        backend.enqueue_bulk(bulk(Some(too_far))).await.unwrap(),
        Err(Reject::InvalidJob {
            index: 17,
            error: InvalidJob::RunAtTooFar {
                run_at: too_far,
                max: JobLimits::default().delay_max
            }
        })
    );
    assert_eq!(backend.snapshot().await.unwrap(), before);
    assert!(
        last_id(&backend).await > seq_before,
        "the earlier chunks did reach the table before the rollback"
    );
    assert_eq!(
        listener.wait(Duration::from_millis(300)).await.unwrap(),
        None,
        "a rolled-back bulk wakes nobody"
    );
    let done = backend.enqueue_bulk(bulk(None)).await.unwrap().unwrap();
    let first_a = done[1];
    assert!(!first_a.duplicate);
    for (i, e) in done.iter().enumerate() {
        match i % 6 {
            1 if i == 1 => {}
            1 | 5 => assert_eq!(
                *e,
                Enqueued {
                    id: first_a.id,
                    duplicate: true
                },
                "{i}"
            ),
            2 => assert_eq!(
                *e,
                Enqueued {
                    id: existing.id,
                    duplicate: true
                },
                "{i}"
            ),
            _ => assert!(!e.duplicate, "{i}"),
        }
    }
    let stored = backend.snapshot().await.unwrap().jobs;
    assert_eq!(
        stored.len(),
        1 + done.iter().filter(|e| !e.duplicate).count()
    );
    assert_eq!(
        listener.wait(Duration::from_secs(5)).await.unwrap(),
        Some(Wakeup::Jobs(queue()))
    );
}

/// The `COPY` path refuses a `run_at` too far in the statement that would
/// reserve the ids, so a refusal takes none.
#[tokio::test]
async fn a_refused_copy_bulk_writes_nothing_and_reserves_no_ids() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    backend.enqueue_copy(&[job("k")]).await.unwrap();
    let seq_before = last_id(&backend).await;
    let mut jobs: Vec<NewJob> = (0..1000).map(|_| job("k")).collect();
    jobs[700].run_at = Some(Timestamp(i64::MAX - 1));
    let refused = backend.enqueue_bulk(jobs.clone()).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(Reject::InvalidJob {
                index: 700,
                error: InvalidJob::RunAtTooFar { .. }
            })
        ),
        "{refused:?}"
    );
    assert!(matches!(
        backend.enqueue_copy(&jobs).await,
        Err(weir_postgres::CopyError::Rejected(Reject::InvalidJob {
            index: 700,
            ..
        }))
    ));
    assert_eq!(backend.snapshot().await.unwrap().jobs.len(), 1);
    assert_eq!(last_id(&backend).await, seq_before);
    jobs[700].run_at = None;
    let done = backend.enqueue_bulk(jobs).await.unwrap().unwrap();
    assert_eq!(done[0].id.0, seq_before + 1, "no gap after a refusal");
}

/// The server dies under a `COPY` that it has half consumed (a trigger
/// stalls it on one row; the backend is then terminated): the caller gets
/// an error, the rows it had taken are gone, nobody is woken, and the
/// backend's pool goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_copy_leaves_nothing() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let superuser = db.pool().await;
    sqlx::raw_sql(
        r"CREATE FUNCTION weir.stall() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF NEW.priority = 77 THEN PERFORM pg_sleep(60); END IF;
              RETURN NEW;
          END $$;
          CREATE TRIGGER stall BEFORE INSERT ON weir.jobs
              FOR EACH ROW EXECUTE FUNCTION weir.stall();",
    )
    .execute(&superuser)
    .await
    .unwrap();
    let mut listener = backend.listener().await.unwrap();
    let mut jobs: Vec<NewJob> = (0..20_000).map(|_| job("k")).collect();
    jobs[10_000].priority = weir_core::Priority(77);
    let bulk = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.enqueue_bulk(jobs).await })
    };
    let mut killed = 0i64;
    for _ in 0..500 {
        killed = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE usename = 'weir_app' AND datname = current_database()
               AND wait_event = 'PgSleep' AND query LIKE 'COPY%'",
        )
        .fetch_one(&superuser)
        .await
        .unwrap();
        if killed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(killed, 1, "the COPY stalled on its marked row");
    let answer = bulk.await.unwrap();
    eprintln!("the bulk's answer: {answer:?}");
    assert!(
        matches!(answer, Err(BackendError::Unavailable(_))),
        "{answer:?}"
    );
    sqlx::raw_sql("DROP TRIGGER stall ON weir.jobs; DROP FUNCTION weir.stall();")
        .execute(&superuser)
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM weir.jobs")
        .fetch_one(&superuser)
        .await
        .unwrap();
    assert_eq!(count, 0);
    assert_eq!(
        listener.wait(Duration::from_millis(300)).await.unwrap(),
        None
    );
    let done = backend
        .enqueue_bulk(vec![job("k"), job("k")])
        .await
        .unwrap();
    assert_eq!(done.map(|d| d.len()), Ok(2));
}

/// An expired process's row stays until another process announces (it is
/// not listed meanwhile); then it is deleted, so crashed processes do not
/// pile up in the table.
#[tokio::test]
async fn an_announce_deletes_the_rows_of_processes_that_expired() {
    let (_db, backend) = common::backend(WorldConfig::default()).await;
    let presence = |process| Presence {
        process: ProcessId(process),
        label: format!("host:{process}"),
        queues: vec![queue()],
        kinds: vec![Kind::new("k").unwrap()],
        started_at: Timestamp(0),
    };
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT process FROM weir.workers ORDER BY process")
            .fetch_all(backend.pool())
            .await
            .unwrap()
    };
    let short = Duration::from_millis(100);
    backend.announce(&presence(1), short).await.unwrap();
    backend.announce(&presence(2), short).await.unwrap();
    backend
        .announce(&presence(3), Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let live: Vec<_> = backend.workers().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(rows().await, vec![1, 2, 3], "reading deletes nothing");
    // Process 2 comes back: its own row is refreshed, not deleted, and the
    // row of process 1, which expired, is.
    backend
        .announce(&presence(2), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rows().await, vec![2, 3]);
    assert_eq!(backend.workers().await.unwrap().len(), 2);
}
