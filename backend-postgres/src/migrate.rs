//! Versioned migrations, embedded in the crate.
//!
//! [`migrate`] brings a schema to [`LATEST_VERSION`] in one transaction,
//! under a transaction-level advisory lock so that two processes migrating
//! at once apply each step once. Re-running it is a no-op; a schema at a
//! newer version than this code knows is refused with
//! [`MigrateError::NewerThanCode`] and left untouched.

use sqlx::postgres::PgPool;
use sqlx::{Connection, Row};

use crate::schema::SchemaName;

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version; versions are applied in increasing order.
    pub version: i32,
    /// A short name.
    pub name: &'static str,
    sql: &'static str,
}

impl Migration {
    /// The SQL for `schema` (the quoted name replaces `{schema}`).
    pub fn sql(&self, schema: &SchemaName) -> String {
        self.sql.replace("{schema}", &schema.quoted())
    }
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "workers",
        sql: include_str!("../migrations/0002_workers.sql"),
    },
    Migration {
        version: 3,
        name: "jobs fillfactor",
        sql: include_str!("../migrations/0003_jobs_fillfactor.sql"),
    },
    Migration {
        version: 4,
        name: "session holds",
        sql: include_str!("../migrations/0004_session_holds.sql"),
    },
    Migration {
        version: 5,
        name: "pause barrier",
        sql: include_str!("../migrations/0005_pause_barrier.sql"),
    },
    Migration {
        version: 6,
        name: "retry policy",
        sql: include_str!("../migrations/0006_retry_policy.sql"),
    },
];

/// The schema version this code reads and writes.
pub const LATEST_VERSION: i32 = 6;

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateReport {
    /// The version found (0 for a new schema).
    pub from: i32,
    /// The version now.
    pub to: i32,
    /// The versions applied by this call (empty when it was a no-op).
    pub applied: Vec<i32>,
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database was migrated by newer code; this code must not touch it.
    #[error(
        "schema {schema} is at version {found}, newer than this code's {latest}: upgrade Weir"
    )]
    NewerThanCode {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The newest version this code knows.
        latest: i32,
    },
    /// A statement failed (including missing privileges; see the README's
    /// list of grants).
    #[error("migrating schema {schema}: {source}")]
    Database {
        /// The schema.
        schema: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
}

/// Brings `schema` to [`LATEST_VERSION`], creating it if it does not exist.
pub async fn migrate(pool: &PgPool, schema: &SchemaName) -> Result<MigrateReport, MigrateError> {
    migrate_to(pool, schema, LATEST_VERSION).await
}

/// Brings `schema` to `target` (at most [`LATEST_VERSION`]), as [`migrate`]
/// does: for tests that need a schema as an older release left it, to
/// upgrade it. Production code calls [`migrate`].
#[doc(hidden)]
pub async fn migrate_to(
    pool: &PgPool,
    schema: &SchemaName,
    target: i32,
) -> Result<MigrateReport, MigrateError> {
    assert!(
        target <= LATEST_VERSION,
        "no migration to version {target} exists"
    );
    let db = |source| MigrateError::Database {
        schema: schema.to_string(),
        source,
    };
    let mut conn = pool.acquire().await.map_err(db)?;
    let mut tx = conn.begin().await.map_err(db)?;
    // Serialises concurrent migrators of this schema; released at commit.
    // Every statement here is unnamed (`persistent(false)`) and inside the
    // transaction, so migrating works through any pooler, a
    // transaction-pooling PgBouncer too; a handful of statements, so
    // preparing them by name would save nothing.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .persistent(false)
        .bind(format!("weir.migrate.{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let from = prepare(&mut tx, schema).await.map_err(db)?;
    let q = schema.quoted();
    if from > LATEST_VERSION {
        return Err(MigrateError::NewerThanCode {
            schema: schema.to_string(),
            found: from,
            latest: LATEST_VERSION,
        });
    }
    let mut applied = Vec::new();
    let steps = MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= target);
    for migration in steps {
        sqlx::raw_sql(&migration.sql(schema))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(&format!(
            "INSERT INTO {q}.schema_migrations (version, name) VALUES ($1, $2)"
        ))
        .persistent(false)
        .bind(migration.version)
        .bind(migration.name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        applied.push(migration.version);
    }
    tx.commit().await.map_err(db)?;
    Ok(MigrateReport {
        from,
        to: from.max(target),
        applied,
    })
}

/// Creates the schema (if missing) and its `schema_migrations` table, and
/// returns the schema's version (0 when it has never been migrated).
async fn prepare(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    schema: &SchemaName,
) -> Result<i32, sqlx::Error> {
    // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
    // schema exists, so look first: a DBA may have created it for us.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .persistent(false)
            .bind(schema.as_str())
            .fetch_one(&mut **tx)
            .await?;
    let q = schema.quoted();
    if !exists {
        sqlx::raw_sql(&format!("CREATE SCHEMA {q}"))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {q}.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    ))
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT coalesce(max(version), 0) AS v FROM {q}.schema_migrations"
    ))
    .persistent(false)
    .fetch_one(&mut **tx)
    .await?;
    row.try_get("v")
}

/// The schema's version (0 when it has never been migrated). One
/// simple-protocol statement (the validated schema name is spliced, quoted,
/// as everywhere), so it works through any pooler.
pub async fn schema_version(pool: &PgPool, schema: &SchemaName) -> Result<i32, sqlx::Error> {
    let q = schema.quoted();
    // The schema's alphabet has no single quote: inside a literal the
    // quoted name needs no escaping.
    let probe = format!("SELECT to_regclass('{q}.schema_migrations') IS NOT NULL");
    let row = sqlx::raw_sql(&probe).fetch_one(pool).await?;
    let present: bool = row.try_get(0)?;
    if !present {
        return Ok(0);
    }
    let sql = format!("SELECT coalesce(max(version), 0) FROM {q}.schema_migrations");
    let row = sqlx::raw_sql(&sql).fetch_one(pool).await?;
    row.try_get(0)
}
