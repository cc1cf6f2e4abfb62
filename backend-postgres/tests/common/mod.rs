//! Shared by the Postgres test binaries: a migrated backend on a fresh
//! database, connected as the non-superuser role.

#![allow(dead_code)]

use sqlx::postgres::PgPoolOptions;
use weir_core::WorldConfig;
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SchemaName};

/// A fresh database, migrated, and a backend on it as `weir_app`.
pub async fn backend(world: WorldConfig) -> (TestDatabase, PgBackend) {
    backend_with(world, 8).await
}

pub async fn backend_with(world: WorldConfig, connections: u32) -> (TestDatabase, PgBackend) {
    let db = test_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(db.url_as_app_user())
        .await
        .expect("connect as weir_app");
    let config = PgConfig {
        schema: SchemaName::new("weir").unwrap(),
        world,
        notify: std::env::var("WEIR_NOTIFY").map_or(true, |v| v != "0"),
        ..PgConfig::default()
    };
    let backend = PgBackend::new(pool, config).expect("valid config");
    backend.migrate().await.expect("migrate");
    (db, backend)
}

/// Empties every table and restarts the id sequence, so a new case sees
/// ids 1, 2, 3... like a new `World`.
pub async fn reset(backend: &PgBackend) {
    sqlx::raw_sql(
        "TRUNCATE weir.jobs, weir.paused_queues, weir.claimer_leases,
                  weir.semaphore_slots, weir.semaphores RESTART IDENTITY;
         UPDATE weir.leader SET term = 0, holder = NULL, expires_at = 0;",
    )
    .execute(backend.pool())
    .await
    .expect("reset");
}
