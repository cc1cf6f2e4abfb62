//! Weir through a real PgBouncer (Debian's 1.18 in CI), started by the
//! harness in front of the test's database: what works in which pool mode,
//! and what is refused.

mod common;

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use weir_core::{Millis, ProcessId, SemaphoreName, WaitConfig, WorldConfig};
use weir_postgres::harness::{pgbouncer, test_database, PoolMode, TestDatabase};
use weir_postgres::semaphore::{acquire, AdvisorySemaphore, SlotStore};

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
/// leaves: the advisory-lock semaphore works through it unchanged. One
/// server connection more than the stores hold: opening a store checks,
/// with a short-lived second connection, that it does not land on the
/// store's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_semaphore_works_through_session_pooling() {
    let (db, backend) = common::backend(WorldConfig::default()).await;
    let bouncer = pgbouncer(&db, PoolMode::Session, 3).await;
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
