//! Connecting to Postgres, with errors that say what to do.

use std::cmp::Ordering;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use weir_postgres::{PgBackend, PgConfig, SchemaName, LATEST_VERSION};

/// How long to wait for the server before saying it does not answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool of up to `max` connections to `url`, or a message naming the
/// problem: a malformed URL, a server that does not answer, a refused
/// login, a database that does not exist.
pub async fn pool(url: &str, max: u32, timeout: Duration) -> Result<PgPool, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "invalid database URL {:?}: expected postgres://user:password@host:port/database",
            url.split('@').next_back().unwrap_or(url)
        ));
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        format!("invalid database URL ({e}); expected postgres://user:password@host:port/database")
    })?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
                format!("database at {target} does not exist: {e}")
            }
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("28P01" | "28000")) =>
            {
                format!("the server at {target} refused the login: {e}")
            }
            sqlx::Error::Database(_) => format!("the server at {target} refused: {e}"),
            _ => format!(
                "cannot reach the database at {target} within {} s: {e}",
                timeout.as_secs()
            ),
        })
}

/// A backend on `url` with up to `max` connections (schema not checked).
pub async fn connect(url: &str, max: u32, config: PgConfig) -> Result<PgBackend, String> {
    let pool = pool(url, max, CONNECT_TIMEOUT).await?;
    PgBackend::new(pool, config).map_err(|e| e.to_string())
}

/// A backend on `url` whose schema is at this binary's version: a missing
/// schema says to run `weir migrate`, a newer one to upgrade Weir. The
/// schema name is checked before anything connects.
pub async fn connect_checked(
    url: &str,
    schema: &str,
    max: u32,
    timeout: Duration,
) -> Result<PgBackend, String> {
    let schema = SchemaName::new(schema.to_string()).map_err(|e| format!("--schema: {e}"))?;
    let config = PgConfig {
        schema,
        ..PgConfig::default()
    };
    let pool = pool(url, max, timeout).await?;
    let backend = PgBackend::new(pool, config).map_err(|e| e.to_string())?;
    let found = weir_postgres::migrate::schema_version(backend.pool(), backend.schema())
        .await
        .map_err(|e| format!("reading the schema version: {e}"))?;
    let schema = backend.schema().as_str();
    match found.cmp(&LATEST_VERSION) {
        Ordering::Equal => Ok(backend),
        Ordering::Less if found == 0 => Err(format!(
            "there is no Weir schema {schema:?} in this database: run `weir migrate`"
        )),
        Ordering::Less => Err(format!(
            "schema {schema:?} is at version {found}, this binary needs {LATEST_VERSION}: run `weir migrate`"
        )),
        Ordering::Greater => Err(format!(
            "schema {schema:?} is at version {found}, newer than this binary ({LATEST_VERSION}): upgrade weir"
        )),
    }
}
