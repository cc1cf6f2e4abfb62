//! Weir through a real PgBouncer (Debian's 1.18 in CI), started by the
//! harness in front of the test's database: what works in which pool mode,
//! and what is refused.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use weir_postgres::harness::{pgbouncer, test_database, PoolMode};

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
