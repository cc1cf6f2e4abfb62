//! The client-side semaphores' promises against a real Postgres: a store
//! never hands one slot to two acquisitions, a release really frees, and a
//! slot try stays within its bound whatever holds the slot's row.

mod common;

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use weir_core::{Millis, ProcessId, SemaphoreName, WaitConfig, WorldConfig};
use weir_postgres::harness::TestDatabase;
use weir_postgres::semaphore::{acquire, AcquireError, AdvisorySemaphore, SlotStore};
use weir_postgres::PgBackend;

fn wait(wait_max: u64) -> WaitConfig {
    WaitConfig {
        retry_min: Millis(5),
        retry_max: Millis(20),
        wait_max: Millis(wait_max),
    }
}

async fn advisory(
    db: &TestDatabase,
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

/// Advisory locks held by any session of the test's database, as the
/// server sees them.
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

/// Session advisory locks are re-entrant on one connection, so a store
/// that asks the server alone would take a slot it already holds. One
/// `AdvisorySemaphore` is one session: its second acquisition must get
/// another slot (or none), and releasing a grant must free the slot for
/// everyone else, with no lock left behind.
#[tokio::test]
async fn one_advisory_store_never_grants_a_slot_it_holds_and_a_release_frees_it() {
    let (db, backend) = common::backend(WorldConfig::default()).await;

    // One slot: the store's second acquisition must wait, not be granted.
    let mut one = advisory(&db, &backend, "single", 1, 1).await;
    let mut other = advisory(&db, &backend, "single", 1, 2).await;
    let first = acquire(&mut one, wait(1_000)).await.unwrap();
    let again = acquire(&mut one, wait(100)).await;
    assert!(
        matches!(again, Err(AcquireError::TimedOut { .. })),
        "the store handed slot {} to a second acquisition while holding it: {again:?}",
        first.slot.0
    );
    assert!(
        one.is_connected(),
        "a timed-out acquisition of a holder kept its session"
    );
    assert!(
        one.release(&first).await.unwrap(),
        "the release freed the slot"
    );
    let taken = acquire(&mut other, wait(1_000))
        .await
        .expect("after the release another store gets the slot");
    assert_eq!(taken.slot, first.slot);
    assert!(other.release(&taken).await.unwrap());

    // Two slots: two acquisitions of one store hold both, each release
    // frees its own, a stale grant frees nothing.
    let mut one = advisory(&db, &backend, "double", 2, 3).await;
    let mut other = advisory(&db, &backend, "double", 2, 4).await;
    let a = acquire(&mut one, wait(1_000)).await.unwrap();
    let b = acquire(&mut one, wait(1_000)).await.unwrap();
    assert_ne!(a.slot, b.slot, "one store granted slot {} twice", a.slot.0);
    assert!(
        acquire(&mut other, wait(50)).await.is_err(),
        "both are held"
    );
    assert!(one.release(&a).await.unwrap());
    assert!(!one.release(&a).await.unwrap(), "release is idempotent");
    let c = acquire(&mut other, wait(1_000)).await.unwrap();
    assert_eq!(c.slot, a.slot);
    assert!(one.release(&b).await.unwrap());
    assert!(other.release(&c).await.unwrap());
    assert_eq!(
        advisory_locks(&db).await,
        0,
        "a released slot's lock stayed"
    );
}
