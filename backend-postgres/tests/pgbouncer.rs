//! Weir through a real PgBouncer (Debian's 1.18 in CI), started by the
//! harness in front of the test's database: what works in which pool mode,
//! and what is refused.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use weir::{Backend, BackendError, BackendExt, JobFilter, Presence, Wakeup};
use weir_core::cmd;
use weir_core::{
    Command, FailError, Failure, JobState, Kind, Millis, NewJob, Payload, ProcessId, QueueName,
    Receipt, Request, Retry, SemaphoreName, SlotIndex, UniqueKey, WaitConfig, WorldConfig,
};
use weir_pg_harness::{pgbouncer, test_database, PoolMode, TestDatabase};
use weir_postgres::semaphore::{
    acquire, AdvisoryError, AdvisorySemaphore, LeaseSemaphore, SessionNotPinned, SlotStore,
};
use weir_postgres::{PgBackend, PgConfig, Pooler};

fn wait(wait_max: u64) -> WaitConfig {
    WaitConfig {
        retry_min: Millis(5),
        retry_max: Millis(20),
        wait_max: Millis(wait_max),
    }
}

/// Advisory locks held by any session of the test's database, as the
/// server sees them (through a direct superuser connection).
async fn advisory_locks(db: &TestDatabase) -> i64 {
    let superuser = db.pool().await;
    let held = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    superuser.close().await;
    held
}

/// The server backend a statement ran on, through the simple query
/// protocol (no prepared statement to collide on a shared server).
async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap();
    sqlx::Row::get(&row, 0)
}

/// The harness's PgBouncer pools as asked: in transaction mode with one
/// server connection, two clients run on the same server backend; in
/// session mode each client keeps its own.
#[tokio::test]
async fn a_throwaway_pgbouncer_pools_in_the_mode_asked_for() {
    let db = test_database().await;
    for (mode, shared) in [(PoolMode::Transaction, true), (PoolMode::Session, false)] {
        let bouncer = pgbouncer(&db, mode, 2).await;
        assert!(bouncer.version().starts_with("PgBouncer "), "{bouncer:?}");
        let options: PgConnectOptions = bouncer.app_url().parse().unwrap();
        let mut a = options.connect().await.unwrap();
        let mut b = options.connect().await.unwrap();
        let pid_a = backend_pid(&mut a).await;
        let pid_b = backend_pid(&mut b).await;
        assert_eq!(pid_a == pid_b, shared, "{mode:?}: {pid_a} and {pid_b}");
        a.close().await.unwrap();
        b.close().await.unwrap();
    }
    // Stopped on drop: the port is closed.
    let bouncer = pgbouncer(&db, PoolMode::Transaction, 1).await;
    let port = bouncer.port();
    drop(bouncer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Through a transaction-pooling PgBouncer an advisory-lock store's
/// "dedicated" connection runs each statement on whichever server
/// connection is free: its session lock lands on a server session that
/// other clients then use (where the re-entrant lock is theirs too), and it
/// stays there when the store closes. Two stores of a 1-slot semaphore
/// through PgBouncer (one server connection, so they share it) must never
/// both hold the slot, no lock may be left on the server after both
/// closed, and each must be refused with an error that says to use the
/// lease-table semaphore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_semaphore_behind_transaction_pooling_is_refused_and_leaves_no_lock() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let bouncer = pgbouncer(&db, PoolMode::Transaction, 1).await;
    let options: PgConnectOptions = bouncer.app_url().parse().unwrap();
    let name = SemaphoreName::new("pooled").unwrap();
    let (mut stores, mut holders, mut refusals) = (Vec::new(), 0, Vec::new());
    for holder in 1..=2 {
        let opened = AdvisorySemaphore::open(
            &backend,
            options.clone(),
            name.clone(),
            1,
            ProcessId(holder),
            Duration::from_secs(5),
        )
        .await;
        let mut store = match opened {
            Ok(Ok(store)) => store,
            Ok(Err(reject)) => panic!("{reject:?}"),
            Err(error) => {
                refusals.push(error.to_string());
                continue;
            }
        };
        match acquire(&mut store, wait(300)).await {
            Ok(_) => holders += 1,
            Err(error) => refusals.push(error.to_string()),
        }
        stores.push(store);
    }
    eprintln!("holders: {holders}, refusals: {refusals:?}");
    assert!(holders <= 1, "{holders} stores held the one slot at once");
    for mut store in stores {
        store.close().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        advisory_locks(&db).await,
        0,
        "a session advisory lock stayed on a server connection after both stores closed"
    );
    assert_eq!(refusals.len(), 2, "both stores refused: {refusals:?}");
    for refusal in &refusals {
        assert!(refusal.contains("LeaseSemaphore"), "{refusal}");
    }
}

/// Session pooling keeps a server session per client, and its reset
/// (`DISCARD ALL`) clears the locks and the store's mark when the client
/// leaves: the advisory-lock semaphore works through it unchanged, and so
/// does LISTEN. One server connection more than the stores hold: opening a
/// store checks, with a short-lived second connection, that it does not
/// land on the store's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_semaphore_works_through_session_pooling() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let bouncer = pgbouncer(&db, PoolMode::Session, 5).await;
    let through = client(bouncer.app_url(), true, &PgConfig::default()).await;
    let mut wakeups = through.subscribe().await.unwrap().expect("notify is on");
    let enqueue = cmd::Enqueue { jobs: vec![job(1)] };
    run(&through, enqueue).await.expect("enqueue refused");
    let woke = wakeups.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        woke,
        Some(Wakeup::Jobs(queue())),
        "LISTEN through session pooling"
    );
    drop(wakeups);
    through.pool().close().await;
    let options: PgConnectOptions = bouncer.app_url().parse().unwrap();
    let name = SemaphoreName::new("session").unwrap();
    let open = |holder| {
        AdvisorySemaphore::open(
            &backend,
            options.clone(),
            name.clone(),
            1,
            ProcessId(holder),
            Duration::from_secs(5),
        )
    };
    let mut a = open(1).await.unwrap().unwrap();
    let mut b = open(2).await.unwrap().unwrap();
    acquire(&mut a, wait(1_000)).await.unwrap();
    let busy = acquire(&mut b, wait(100)).await;
    assert!(
        matches!(
            busy,
            Err(weir_postgres::semaphore::AcquireError::TimedOut { .. })
        ),
        "{busy:?}"
    );
    // The holder leaves without releasing: PgBouncer's reset frees it.
    a.close().await;
    let grant = acquire(&mut b, wait(5_000)).await.unwrap();
    assert!(b.release(&grant).await.unwrap());
    b.close().await;
    // A store on a server session another store left is not refused.
    let mut c = open(3).await.unwrap().unwrap();
    acquire(&mut c, wait(1_000)).await.unwrap();
    c.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(advisory_locks(&db).await, 0);
}

fn queue() -> QueueName {
    QueueName::new("pooled").unwrap()
}

fn job(i: usize) -> NewJob {
    let mut job = NewJob::new(
        queue(),
        Kind::new("k").unwrap(),
        Payload(i.to_string().into_bytes()),
    );
    if i.is_multiple_of(5) {
        job.unique_key = Some(UniqueKey::new(format!("u{i}")).unwrap());
    }
    job
}

/// A backend through `url` (PgBouncer) on a pool of 3, its statement cache
/// on or off: neither matters in pooler mode.
async fn client(url: &str, cache: bool, config: &PgConfig) -> PgBackend {
    let options: PgConnectOptions = url.parse().unwrap();
    let options = options.statement_cache_capacity(if cache { 100 } else { 0 });
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap();
    PgBackend::new(pool, config.clone()).unwrap()
}

/// One request, answered with its own type.
async fn run<R: Request + Send>(backend: &PgBackend, request: R) -> R::Output {
    backend.run(request).await.unwrap()
}

/// One worker process: claims batches, heartbeats them, and ends each job
/// by completing it, or first failing it (retried 1 ms later) or snoozing
/// it once; every few batches it passes a 1-slot lease semaphore.
async fn work(
    backend: PgBackend,
    process: u64,
    done: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<i64>>>,
) {
    let process = ProcessId(process);
    let acquire_lease = || cmd::ClaimerAcquire {
        queue: queue(),
        process,
    };
    let (mut claimer, _) = run(&backend, acquire_lease())
        .await
        .expect("no claimer lease");
    let mut gate = LeaseSemaphore::new(
        backend.clone(),
        SemaphoreName::new("gate").unwrap(),
        1,
        process,
        Millis(10_000),
    );
    let mut batches = 0u32;
    while !done.load(Ordering::SeqCst) {
        let claim = cmd::Claim {
            queue: queue(),
            claimer,
            max: 8,
            kinds: None,
        };
        let jobs = match run(&backend, claim).await {
            Ok(claimed) => claimed.jobs,
            Err(_lost) => {
                let (again, _) = run(&backend, acquire_lease())
                    .await
                    .expect("no claimer lease");
                claimer = again;
                continue;
            }
        };
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        batches += 1;
        let receipts: Vec<Receipt> = jobs.iter().map(|j| j.receipt).collect();
        let beats = run(&backend, cmd::Heartbeat { receipts })
            .await
            .expect("heartbeat refused");
        assert!(beats.iter().all(Result::is_ok), "{beats:?}");
        if batches.is_multiple_of(4) {
            let grant = acquire(
                &mut gate,
                WaitConfig {
                    retry_min: Millis(1),
                    retry_max: Millis(5),
                    wait_max: Millis(10_000),
                },
            )
            .await
            .unwrap();
            assert_eq!(gate.renew(&grant).await.unwrap(), Ok(()));
            assert!(gate.release(&grant).await.unwrap());
        }
        let (mut complete, mut fail, mut snooze) = (Vec::new(), Vec::new(), Vec::new());
        for job in &jobs {
            let id = job.receipt.job.0;
            let first = seen.lock().unwrap().insert(id);
            match id % 3 {
                1 if first => fail.push(Failure {
                    receipt: job.receipt,
                    error: FailError {
                        retry: Retry::After(Millis(1)),
                        message: "once".into(),
                    },
                    draw: 0,
                }),
                2 if first => snooze.push((job.receipt, Millis(1))),
                _ => complete.push(job.receipt),
            }
        }
        let done_items = run(&backend, cmd::Complete { receipts: complete })
            .await
            .expect("complete refused");
        assert!(done_items.iter().all(Result::is_ok), "{done_items:?}");
        let failed = run(&backend, cmd::Fail { failures: fail })
            .await
            .expect("fail refused");
        assert!(failed.iter().all(Result::is_ok), "{failed:?}");
        let snoozed = run(&backend, cmd::Snooze { snoozes: snooze })
            .await
            .expect("snooze refused");
        assert!(snoozed.iter().all(Result::is_ok), "{snoozed:?}");
    }
}

/// The maintenance leader and an operator: promotes the failed and snoozed
/// jobs back, rescues, prunes, reads and announces, until done.
async fn maintain(backend: PgBackend, done: Arc<AtomicBool>) {
    let process = ProcessId(9);
    let leader = run(&backend, cmd::LeaderElect { process })
        .await
        .expect("no leadership");
    let presence = Presence {
        process,
        label: "maintainer".into(),
        queues: vec![queue()],
        kinds: vec![Kind::new("k").unwrap()],
        started_at: weir_core::Timestamp(0),
    };
    while !done.load(Ordering::SeqCst) {
        run(&backend, cmd::Promote { leader, max: 100 })
            .await
            .expect("promote refused");
        let rescue = cmd::Rescue {
            leader,
            draw: 0,
            max: 100,
        };
        assert!(run(&backend, rescue).await.is_ok());
        let prune = cmd::Prune {
            leader,
            older_than: Millis::from_secs(3_600),
            max: 100,
        };
        assert!(run(&backend, prune).await.is_ok());
        backend
            .announce(&presence, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!backend.workers().await.unwrap().is_empty());
        assert!(!backend.queues().await.unwrap().is_empty());
        let some = backend
            .jobs(&JobFilter {
                limit: 5,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        if let Some(first) = some.first() {
            assert!(backend.job(first.id).await.unwrap().is_some());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Weir through Debian's PgBouncer 1.18 in transaction pooling, in pooler
/// mode, under real concurrency: four worker backends and a maintainer
/// (each its own pool, 14 client connections in all, half with sqlx's
/// statement cache on and half off) over two server connections, so
/// statements of different clients run on the same server connections all
/// the time. Every command the runtime uses goes through it — migrate,
/// enqueue (batch, unique keys, COPY, a caller's transaction), claimer
/// leases, claim, heartbeat, complete, fail, snooze, promote, rescue,
/// prune, presence, the reads, a lease semaphore — and every answer must
/// be a success; every job ends completed. LISTEN goes to the server
/// itself (`listen_url`); without it, and for the advisory-lock semaphore,
/// the configuration is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_works_through_a_transaction_pooling_pgbouncer_in_pooler_mode() {
    let started = Instant::now();
    let db = test_database().await;
    let bouncer = pgbouncer(&db, PoolMode::Transaction, 2).await;
    let config = PgConfig {
        pooler: Pooler::Transaction,
        listen_url: Some(db.url_as_app_user().to_owned()),
        ..PgConfig::default()
    };
    let admin = PgBackend::connect(bouncer.app_url(), 2, config.clone())
        .await
        .unwrap();
    admin.migrate().await.unwrap();
    admin.check_schema().await.unwrap();
    // `weir migrate`'s way: `migrate` on a plain pool with sqlx's defaults.
    let plain = PgPoolOptions::new()
        .max_connections(2)
        .connect(bouncer.app_url())
        .await
        .unwrap();
    let other = weir_postgres::SchemaName::new("weir_cli").unwrap();
    let report = weir_postgres::migrate(&plain, &other).await.unwrap();
    assert_eq!(report.to, weir_postgres::LATEST_VERSION);
    let version = weir_postgres::migrate::schema_version(&plain, &other)
        .await
        .unwrap();
    assert_eq!(version, weir_postgres::LATEST_VERSION);
    plain.close().await;

    // What cannot work behind transaction pooling is refused.
    let options: PgConnectOptions = bouncer.app_url().parse().unwrap();
    let advisory = AdvisorySemaphore::open(
        &admin,
        options,
        SemaphoreName::new("session").unwrap(),
        1,
        ProcessId(1),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(
            advisory,
            Err(AdvisoryError::SessionNotPinned(
                SessionNotPinned::PoolerMode
            ))
        ),
        "{advisory:?}"
    );
    let deaf = PgConfig {
        listen_url: None,
        ..config.clone()
    };
    let deaf = client(bouncer.app_url(), true, &deaf).await;
    match deaf.subscribe().await {
        Err(BackendError::Misconfigured(message)) => {
            assert!(message.contains("listen_url"), "{message}")
        }
        other => panic!(
            "LISTEN through transaction pooling was not refused: {:?}",
            other.map(|s| s.is_some())
        ),
    }
    // A session hold would record a borrowed server connection.
    let session_hold = Command::SlotTry(cmd::SlotTry {
        semaphore: SemaphoreName::new("session.hold").unwrap(),
        permits: 1,
        slot: SlotIndex(0),
        holder: ProcessId(1),
        lease_ttl: None,
    });
    match admin.execute(session_hold).await {
        Err(BackendError::Misconfigured(message)) => {
            assert!(message.contains("lease"), "{message}")
        }
        other => panic!("a session hold through transaction pooling was not refused: {other:?}"),
    }
    let mut wakeups = admin.subscribe().await.unwrap().expect("notify is on");

    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for process in 1..=4u64 {
        let backend = client(bouncer.app_url(), process % 2 == 0, &config).await;
        tasks.push(tokio::spawn(work(
            backend,
            process,
            done.clone(),
            seen.clone(),
        )));
    }
    let maintainer = client(bouncer.app_url(), false, &config).await;
    tasks.push(tokio::spawn(maintain(maintainer, done.clone())));

    // The producer: batches with unique keys (one of them twice), COPY,
    // and a batch inside the caller's own transaction.
    let producer = client(bouncer.app_url(), true, &config).await;
    let total = AtomicUsize::new(0);
    for batch in 0..10 {
        let jobs: Vec<NewJob> = (batch * 10..batch * 10 + 10).map(job).collect();
        let enqueued = run(&producer, cmd::Enqueue { jobs })
            .await
            .expect("enqueue refused");
        assert!(enqueued.iter().all(|e| !e.duplicate));
        total.fetch_add(enqueued.len(), Ordering::SeqCst);
    }
    let again: Vec<NewJob> = (0..10).map(job).collect();
    let again = run(&producer, cmd::Enqueue { jobs: again })
        .await
        .expect("enqueue refused");
    assert_eq!(
        again.iter().filter(|e| e.duplicate).count(),
        2,
        "u0 and u5 exist"
    );
    total.fetch_add(8, Ordering::SeqCst);
    let bulk = producer
        .enqueue_bulk((200..260).map(|i| job(i * 7 + 1)).collect())
        .await
        .unwrap()
        .unwrap();
    total.fetch_add(bulk.len(), Ordering::SeqCst);
    let mut tx = producer.pool().begin().await.unwrap();
    let mine = producer
        .enqueue(&mut *tx, (300..340).map(|i| job(i * 7 + 2)).collect())
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    total.fetch_add(mine.len(), Ordering::SeqCst);
    let total = total.load(Ordering::SeqCst);
    assert_eq!(total, 100 + 8 + 60 + 40);

    let woke = wakeups.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        woke,
        Some(Wakeup::Jobs(queue())),
        "a wake-up through the direct listener"
    );

    // Until every job completed (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let completed = admin
            .queues()
            .await
            .unwrap()
            .iter()
            .find(|q| q.queue == queue())
            .map_or(0, |q| q.depth(weir_core::StateName::Completed));
        if completed == total as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} of {total} jobs completed in 30 s"
        );
        for task in &tasks {
            assert!(!task.is_finished(), "a client stopped early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let snapshot = admin.snapshot().await.unwrap();
    assert_eq!(snapshot.jobs.len(), total);
    for job in &snapshot.jobs {
        assert!(matches!(job.state, JobState::Completed { .. }), "{job:?}");
    }
    eprintln!(
        "pooler mode: {total} jobs through {bouncer:?} in {:?}",
        started.elapsed()
    );
}

/// Without pooler mode, behind transaction pooling sqlx's named statements
/// collide on the shared server connection. That is a configuration error,
/// not an outage: it must say so (`Misconfigured`, which the worker pool
/// stops on) and how to fix it, instead of an `Unavailable` the runtime
/// would retry for ever at a crawl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_behind_transaction_pooling_is_misconfigured_and_says_how_to_fix_it() {
    let (db, _direct) = common::backend(WorldConfig::default()).await;
    let bouncer = pgbouncer(&db, PoolMode::Transaction, 1).await;
    let config = PgConfig::default();
    let first = client(bouncer.app_url(), true, &config).await;
    let second = client(bouncer.app_url(), true, &config).await;
    first.now().await.unwrap();
    match second.now().await {
        Err(BackendError::Misconfigured(message)) => {
            assert!(message.contains("Pooler::Transaction"), "{message}")
        }
        other => panic!("a statement collision was not a configuration error: {other:?}"),
    }
}
