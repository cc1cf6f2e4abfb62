//! A real Postgres for tests, examples and benchmarks.
//!
//! An unpublished crate of its own (`weir-pg-harness`), so that no product
//! crate carries it: tests, examples and the benchmark depend on it.
//! [`test_database`] hands every test its own fresh database
//! (`weir_test_<pid>_<n>`), so tests run in parallel without seeing each
//! other's tables; [`cluster`] gives the server those databases live in,
//! shared by the whole process.
//!
//! ```no_run
//! # async fn example() {
//! let db = weir_pg_harness::test_database().await;
//! let pool = db.pool().await; // superuser `postgres`
//! let app = db.app_pool().await; // the non-superuser role `weir_app`
//! # let _ = (pool, app);
//! # }
//! ```
//!
//! # Which server
//!
//! 1. If `DATABASE_URL` is set (and not empty), that server is used as is.
//!    The harness then creates, in it, the role `weir_app` (if missing) and
//!    one database `weir_test_<pid>_<n>` per test, and drops each database
//!    when its [`TestDatabase`] is dropped. The URL's user therefore needs to
//!    be a superuser (or have `CREATEDB` and `CREATEROLE` and be able to
//!    `SET ROLE weir_app`). Nothing else in that server is touched; the role
//!    is left in place for the next run.
//! 2. Otherwise the harness starts a throwaway cluster, once per process.
//!    It looks for the server binaries (`initdb`, `pg_ctl`, `postgres`) in
//!    this order:
//!    1. the directory in `PG_BIN`, if set (an error if they are not there);
//!    2. `pg_config --bindir`;
//!    3. `/usr/lib/postgresql/<version>/bin`, highest version first (Debian
//!       and Ubuntu);
//!    4. the directory of `initdb` on `PATH`.
//!
//!    If none has them, [`cluster`] panics with a message saying how to
//!    install them (for example `apt-get install postgresql-15`) or how to
//!    point the harness at a server instead. Tests are never silently
//!    skipped.
//!
//! The throwaway cluster lives in a fresh directory `weir-pg-<pid>-<n>` under
//! the temporary directory (always `/tmp` when running as root). It is
//! created by `initdb -A trust -U postgres --no-sync -E UTF8 --locale=C`,
//! tuned for tests (`fsync`, `synchronous_commit` and `full_page_writes`
//! off, `max_connections = 200`, small `shared_buffers`, `jit` off,
//! `TimeZone = UTC`), and started by `pg_ctl -w` listening only on
//! `127.0.0.1` at a free port and on a unix socket in that directory. A port
//! taken between choosing and binding is retried with another port; a stale
//! lock file left by a dead server is removed. If start-up still fails, the
//! panic message carries the tail of the server log.
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `DATABASE_URL` | use this server instead of a throwaway cluster |
//! | `PG_BIN` | directory of `initdb`, `pg_ctl` and `postgres` |
//! | `WEIR_PG_USER` | OS user that runs the server (and PgBouncer) when we are root (default `postgres`) |
//! | `PGBOUNCER` | path of the `pgbouncer` binary (default: `PATH`, then `/usr/sbin`) |
//!
//! [`cluster`] panics when no server can be had; [`try_cluster`] returns the
//! error instead (for examples and benchmarks that want to report it).
//!
//! A cluster starts in about a second or two. `cargo test` shares one per
//! test binary; cargo-nextest runs every test in its own process, so each
//! starts its own unless `DATABASE_URL` points them at a shared server.
//!
//! # Running as root
//!
//! Postgres refuses to run as root, and CI runs as root. When the effective
//! uid is 0, the harness runs `initdb` and `pg_ctl` as an unprivileged user,
//! `postgres` by default (Debian's package creates it) or the one named in
//! `WEIR_PG_USER`, through `runuser -u <user> --`, falling back to
//! `su -s /bin/sh <user> -c ...`. The cluster directory is then owned by
//! that user. When not root, everything runs as the current user.
//!
//! # Cleanup
//!
//! A `Drop` on a static never runs, so cleanup does not rely on one. Right
//! after creating the cluster directory the harness spawns a small watchdog
//! (`/bin/sh`, in its own process group so a Ctrl-C to the terminal does not
//! reach it) whose standard input is a pipe only this process writes to. When
//! this process ends, however it ends (normal exit, panic, abort, `SIGKILL`),
//! the pipe closes and the watchdog runs `pg_ctl stop -m immediate` and
//! removes the directory. On a normal exit an `atexit` hook also closes the
//! pipe and waits for the watchdog, so the server is gone before the test
//! binary's exit status is reported. Directories of earlier processes whose
//! cleanup never ran (both killed at once, machine reset) are swept, and
//! their servers stopped, when the next cluster starts: a directory is stale
//! when no process holds the `flock` on its `harness.lock` any more.
//!
//! # Restarting the server
//!
//! Tests that must survive a database outage stop and start a throwaway
//! cluster's server with [`Cluster::stop_server`], [`Cluster::start_server`]
//! or [`Cluster::restart`] (`pg_ctl stop -m fast|smart|immediate`, then
//! `pg_ctl start` on the same port, as the server's user when root). The
//! data stays. A server named by `DATABASE_URL` belongs to someone else:
//! those calls return an error saying so, so such a test fails with the
//! reason instead of passing without its outage.
//!
//! # The non-superuser role
//!
//! Weir must run as a role that is not a superuser. Every server the harness
//! uses gets the role [`APP_ROLE`] (`weir_app`, `LOGIN`, no `SUPERUSER`,
//! `CREATEDB`, `CREATEROLE`, `REPLICATION` or `BYPASSRLS`, password
//! [`APP_PASSWORD`]), and it owns every test database, so it may create
//! schemas and tables there. [`TestDatabase::url_as_app_user`] and
//! [`TestDatabase::app_pool`] connect as that role.
//!
//! # PgBouncer
//!
//! Tests that must go through a real connection pooler start a throwaway
//! PgBouncer in front of their database's server with [`pgbouncer`] (in
//! session or transaction pooling, with the server-side pool size they
//! need); see [`PgBouncer`] for how it is set up. Without a `pgbouncer`
//! binary those tests fail with install instructions (`apt-get install
//! pgbouncer`); they are never skipped.

#![warn(missing_docs)]
// The only unsafe code is the `atexit` registration, allowed locally on that
// one function.
#![deny(unsafe_code)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use url::Url;

mod pgbouncer;

pub use pgbouncer::{pgbouncer, PgBouncer, PoolMode};

/// The non-superuser role every test database is owned by.
pub const APP_ROLE: &str = "weir_app";
/// The password of [`APP_ROLE`]. A throwaway cluster trusts local
/// connections and ignores it; a server named by `DATABASE_URL` may not.
pub const APP_PASSWORD: &str = "weir_app";
/// The superuser of a throwaway cluster.
pub const SUPERUSER: &str = "postgres";

/// Default unprivileged OS user that runs the server when we are root.
const DEFAULT_OS_USER: &str = "postgres";
/// Prefix of throwaway cluster directories.
const DIR_PREFIX: &str = "weir-pg-";
/// Lock file marking a live cluster directory (held with `flock`).
const LOCK_FILE: &str = "harness.lock";
/// How many ports to try before giving up.
const START_ATTEMPTS: usize = 5;

static CLUSTER: OnceLock<Result<Cluster, HarnessError>> = OnceLock::new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// Why the harness could not provide a server.
#[derive(Debug, Clone)]
pub struct HarnessError {
    message: String,
}

impl HarnessError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HarnessError {}

/// The process-wide server: a throwaway cluster, or the one in `DATABASE_URL`.
///
/// Started on first use; panics (with instructions) if no server can be had.
/// Blocks while the cluster starts, so from async code prefer
/// [`test_database`], which does that on a blocking thread.
#[track_caller]
pub fn cluster() -> &'static Cluster {
    match try_cluster() {
        Ok(cluster) => cluster,
        Err(error) => panic!("{error}"),
    }
}

/// Like [`cluster`], but returns the error instead of panicking. A failure is
/// remembered: later calls return the same error without trying again.
pub fn try_cluster() -> Result<&'static Cluster, HarnessError> {
    CLUSTER
        .get_or_init(Cluster::from_env)
        .as_ref()
        .map_err(Clone::clone)
}

/// A fresh, empty database of its own for one test, owned by [`APP_ROLE`].
///
/// Needs a tokio runtime. Panics if no server can be had or the database
/// cannot be created. The database is dropped when the returned value is.
pub async fn test_database() -> TestDatabase {
    let started = match CLUSTER.get() {
        Some(Ok(cluster)) => Ok(cluster),
        // Starting a cluster blocks for a second or so.
        _ => match tokio::task::spawn_blocking(try_cluster).await {
            Ok(started) => started,
            Err(error) => match error.try_into_panic() {
                Ok(payload) => panic::resume_unwind(payload),
                Err(error) => panic!("weir harness: starting the cluster failed: {error}"),
            },
        },
    };
    let cluster = match started {
        Ok(cluster) => cluster,
        Err(error) => panic!("{error}"),
    };
    match cluster.create_database().await {
        Ok(database) => database,
        Err(error) => panic!("{error}"),
    }
}

/// A Postgres server for tests; see the [module docs](self).
pub struct Cluster {
    /// Superuser URL of the maintenance database.
    url: String,
    server_version_num: i32,
    throwaway: Option<Throwaway>,
}

/// What a throwaway cluster owns.
struct Throwaway {
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    /// Runs the server binaries as the server's user.
    pg: Pg,
    /// Held while the server is being stopped or started, so two restarts
    /// never interleave.
    server: Mutex<()>,
    /// The watchdog; closing its stdin makes it stop the server.
    watchdog: Watchdog,
    /// Held (with `flock`) for the life of the process: marks `dir` as live.
    _lock: File,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &redact(&self.url))
            .field("server_version_num", &self.server_version_num)
            .field("dir", &self.throwaway.as_ref().map(|t| &t.dir))
            .finish()
    }
}

impl Cluster {
    fn from_env() -> Result<Cluster, HarnessError> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Cluster::external(url.trim().to_owned()),
            _ => Cluster::throwaway(),
        }
    }

    fn external(url: String) -> Result<Cluster, HarnessError> {
        Url::parse(&url).map_err(|e| {
            HarnessError::new(format!(
                "weir harness: DATABASE_URL ({}) is not a URL: {e}",
                redact(&url)
            ))
        })?;
        let server_version_num = block_on(prepare_server(&url))?;
        Ok(Cluster {
            url,
            server_version_num,
            throwaway: None,
        })
    }

    fn throwaway() -> Result<Cluster, HarnessError> {
        let started_at = Instant::now();
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::detect()?;
        let base = base_dir(run_as.is_some());
        sweep_stale_dirs(&base, &bin_dir, run_as.as_ref());

        let (dir, lock) = create_cluster_dir(&base, run_as.as_ref())?;
        let data_dir = dir.join("data");
        let log_file = dir.join("postgres.log");
        let pg_ctl = Pg::new(&bin_dir, run_as.as_ref());
        // From here on the watchdog removes `dir` whatever happens to us.
        let watchdog = Watchdog::spawn(&dir, &data_dir, &pg_ctl)?;

        let started = (|| {
            initdb(&pg_ctl, &dir, &data_dir)?;
            let port = start(&pg_ctl, &dir, &data_dir, &log_file)?;
            let url = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres");
            let server_version_num = block_on(prepare_server(&url))?;
            Ok((port, url, server_version_num))
        })();
        let (port, url, server_version_num) = match started {
            Ok(started) => started,
            Err(error) => {
                // Stop whatever did start and remove the directory now.
                watchdog.finish();
                return Err(error);
            }
        };
        register_atexit_cleanup();
        eprintln!(
            "weir harness: throwaway Postgres {} started in {:.2?} at {url} (directory {})",
            server_version_num,
            started_at.elapsed(),
            dir.display()
        );
        Ok(Cluster {
            url,
            server_version_num,
            throwaway: Some(Throwaway {
                dir,
                data_dir,
                log_file,
                port,
                bin_dir,
                pg: pg_ctl,
                server: Mutex::new(()),
                watchdog,
                _lock: lock,
            }),
        })
    }

    /// Superuser URL of the server's maintenance database (for a throwaway
    /// cluster `postgres://postgres@127.0.0.1:<port>/postgres`; otherwise
    /// `DATABASE_URL` as given).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Superuser URL of `database` on this server.
    pub fn database_url(&self, database: &str) -> String {
        with_database(&self.url, database)
    }

    /// URL of `database` on this server as the non-superuser [`APP_ROLE`].
    pub fn app_database_url(&self, database: &str) -> String {
        with_user(&with_database(&self.url, database), APP_ROLE, APP_PASSWORD)
    }

    /// Whether this is a throwaway cluster started by the harness (rather
    /// than the server named by `DATABASE_URL`).
    pub fn is_throwaway(&self) -> bool {
        self.throwaway.is_some()
    }

    /// The server version, as in `SHOW server_version_num` (e.g. `150018`).
    pub fn server_version_num(&self) -> i32 {
        self.server_version_num
    }

    /// TCP port of a throwaway cluster (on `127.0.0.1`).
    pub fn port(&self) -> Option<u16> {
        self.throwaway.as_ref().map(|t| t.port)
    }

    /// Directory of a throwaway cluster's unix socket (usable as
    /// `?host=<dir>` in a URL or `PGHOST` for `psql`).
    pub fn socket_dir(&self) -> Option<&Path> {
        self.throwaway.as_ref().map(|t| t.dir.as_path())
    }

    /// Data directory of a throwaway cluster.
    pub fn data_dir(&self) -> Option<&Path> {
        self.throwaway.as_ref().map(|t| t.data_dir.as_path())
    }

    /// Server log of a throwaway cluster.
    pub fn log_file(&self) -> Option<&Path> {
        self.throwaway.as_ref().map(|t| t.log_file.as_path())
    }

    /// Directory holding the server binaries of a throwaway cluster.
    pub fn bin_dir(&self) -> Option<&Path> {
        self.throwaway.as_ref().map(|t| t.bin_dir.as_path())
    }

    /// Creates a fresh database owned by [`APP_ROLE`]; see [`test_database`].
    pub async fn create_database(&'static self) -> Result<TestDatabase, HarnessError> {
        let mut conn = connect(&self.url).await?;
        let mut busy_retries = 0;
        let name = loop {
            let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
            let name = format!("weir_test_{}_{n}", std::process::id());
            let sql = format!(r#"CREATE DATABASE "{name}" OWNER "{APP_ROLE}""#);
            match conn.execute(sql.as_str()).await {
                Ok(_) => break name,
                // duplicate_database: another process with our pid (another
                // machine) got there first.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                // object_in_use: someone is connected to the template.
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("55006") && busy_retries < 50 =>
                {
                    busy_retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(HarnessError::new(format!(
                        "weir harness: cannot create a test database on {}: {e}",
                        redact(&self.url)
                    )))
                }
            }
        };
        let _ = conn.close().await;
        Ok(TestDatabase {
            cluster: self,
            url: self.database_url(&name),
            app_url: self.app_database_url(&name),
            name,
        })
    }

    async fn drop_database(&self, name: &str) -> Result<(), HarnessError> {
        let mut conn = connect(&self.url).await?;
        let result = if self.server_version_num >= 130000 {
            conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                .await
        } else {
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            );
            match conn.execute(terminate.as_str()).await {
                Ok(_) => {
                    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}""#).as_str())
                        .await
                }
                Err(e) => Err(e),
            }
        };
        let _ = conn.close().await;
        result
            .map(drop)
            .map_err(|e| HarnessError::new(format!("DROP DATABASE {name}: {e}")))
    }

    /// Stops the server of a throwaway cluster with `pg_ctl stop -m <mode>
    /// -w`, keeping its data; [`Cluster::start_server`] starts it again on
    /// the same port. Clients see their connections closed, as in a real
    /// outage. A server named by `DATABASE_URL` is not the harness's to
    /// stop: that is an error saying so.
    pub fn stop_server(&self, mode: StopMode) -> Result<(), HarnessError> {
        let throwaway = self.owned("stop")?;
        let _serial = throwaway.server.lock().unwrap_or_else(|p| p.into_inner());
        let mut command = throwaway.pg.command("pg_ctl", &throwaway.dir);
        command
            .arg("stop")
            .arg("-D")
            .arg(&throwaway.data_dir)
            .args(["-m", mode.as_str(), "-w", "-t", "60"]);
        run(command, "pg_ctl stop").map(drop)
    }

    /// Starts a throwaway cluster's server again (after
    /// [`Cluster::stop_server`]) on its port, waiting until it accepts
    /// connections. Retries a few times if the port is briefly taken.
    pub fn start_server(&self) -> Result<(), HarnessError> {
        let throwaway = self.owned("start")?;
        let _serial = throwaway.server.lock().unwrap_or_else(|p| p.into_inner());
        let t = throwaway;
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            match start_on(&t.pg, &t.dir, &t.data_dir, &t.log_file, t.port)? {
                Ok(()) => return Ok(()),
                Err(message) => failures.push(message),
            }
        }
        Err(HarnessError::new(format!(
            "weir harness: could not restart Postgres on port {}:\n{}",
            t.port,
            failures.join("\n")
        )))
    }

    /// [`Cluster::stop_server`] then [`Cluster::start_server`]: a restart
    /// of the throwaway cluster's server, for tests that must survive one.
    pub fn restart(&self, mode: StopMode) -> Result<(), HarnessError> {
        self.stop_server(mode)?;
        self.start_server()
    }

    fn owned(&self, what: &str) -> Result<&Throwaway, HarnessError> {
        self.throwaway.as_ref().ok_or_else(|| {
            HarnessError::new(format!(
                "weir harness: cannot {what} the server named by DATABASE_URL ({}): only a \
                 throwaway cluster started by the harness can be stopped and started. Unset \
                 DATABASE_URL to run this test.",
                redact(&self.url)
            ))
        })
    }

    /// Stops a throwaway cluster and removes its directory (at exit).
    fn shutdown(&self) {
        if let Some(throwaway) = &self.throwaway {
            throwaway.watchdog.finish();
        }
    }
}

/// How [`Cluster::stop_server`] shuts the server down (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopMode {
    /// Wait for every client to disconnect.
    Smart,
    /// Roll back open transactions, close every connection, checkpoint.
    Fast,
    /// Abort at once, without a checkpoint (crash recovery at the next
    /// start).
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One test's own database; dropped (with `DROP DATABASE ... WITH (FORCE)`)
/// when this value is dropped.
pub struct TestDatabase {
    cluster: &'static Cluster,
    name: String,
    url: String,
    app_url: String,
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .finish()
    }
}

impl TestDatabase {
    /// The database's name (`weir_test_<pid>_<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of this database as the superuser (the throwaway cluster's
    /// `postgres`, or `DATABASE_URL`'s user).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// URL of this database as [`APP_ROLE`]: logs in, owns the database, is
    /// not a superuser. Run the code under test with this one.
    pub fn url_as_app_user(&self) -> &str {
        &self.app_url
    }

    /// A pool (up to 8 connections) on [`url`](Self::url). Panics if it
    /// cannot connect.
    pub async fn pool(&self) -> PgPool {
        pool(&self.url).await
    }

    /// A pool (up to 8 connections) on
    /// [`url_as_app_user`](Self::url_as_app_user). Panics if it cannot
    /// connect.
    pub async fn app_pool(&self) -> PgPool {
        pool(&self.app_url).await
    }

    /// The server this database lives in.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let cluster = self.cluster;
        let name = self.name.clone();
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            block_on(async move { cluster.drop_database(&name).await })
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("weir harness: could not drop test database: {error}"),
            Err(_) => eprintln!("weir harness: could not drop test database {}", self.name),
        }
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("weir harness: cannot connect to {}: {e}", redact(url)))
}

async fn connect(url: &str) -> Result<PgConnection, HarnessError> {
    PgConnection::connect(url).await.map_err(|e| {
        HarnessError::new(format!(
            "weir harness: cannot connect to {}: {e}",
            redact(url)
        ))
    })
}

/// Reads the server version and makes sure [`APP_ROLE`] exists.
async fn prepare_server(url: &str) -> Result<i32, HarnessError> {
    let mut conn = connect(url).await?;
    let fail = |what: &str, e: sqlx::Error| {
        HarnessError::new(format!(
            "weir harness: {what} on {} failed: {e}",
            redact(url)
        ))
    };
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| fail("SHOW server_version_num", e))?;
    // Concurrent processes may race to create the role: both outcomes of the
    // race are fine.
    let ensure_role = format!(
        r#"DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE "{APP_ROLE}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
            NOREPLICATION NOBYPASSRLS PASSWORD '{APP_PASSWORD}';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$"#
    );
    conn.execute(ensure_role.as_str())
        .await
        .map_err(|e| fail(&format!("creating role {APP_ROLE}"), e))?;
    let _ = conn.close().await;
    version.trim().parse().map_err(|e| {
        HarnessError::new(format!(
            "weir harness: unexpected server_version_num {version:?}: {e}"
        ))
    })
}

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped
/// thread, so it works from sync code and from inside another runtime alike.
fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("weir harness: cannot build a tokio runtime")
                    .block_on(fut)
            })
            .join()
            .unwrap_or_else(|payload| panic::resume_unwind(payload))
    })
}

// ---------------------------------------------------------------------------
// URLs

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let mut parsed = Url::parse(url).expect("weir harness: cluster URL was validated");
    parsed.set_path(&format!("/{database}"));
    remove_query_keys(&mut parsed, &["dbname"]);
    parsed.into()
}

/// `url` with its user and password replaced.
fn with_user(url: &str, user: &str, password: &str) -> String {
    let mut parsed = Url::parse(url).expect("weir harness: cluster URL was validated");
    remove_query_keys(&mut parsed, &["user", "password"]);
    let in_authority =
        parsed.set_username(user).is_ok() && parsed.set_password(Some(password)).is_ok();
    if !in_authority {
        // e.g. `postgres:///db?host=/run/postgresql` has no authority.
        parsed
            .query_pairs_mut()
            .append_pair("user", user)
            .append_pair("password", password);
    }
    parsed.into()
}

fn remove_query_keys(url: &mut Url, keys: &[&str]) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| !keys.contains(&key.as_ref()))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
}

/// `url` with its password hidden, for messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(key, _)| key == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if key == "password" {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.into()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Finding the binaries

fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    let mut tried = Vec::new();

    if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        return Err(HarnessError::new(format!(
            "weir harness: PG_BIN is {} but it lacks initdb, pg_ctl or postgres. Point PG_BIN at the \
             directory holding the Postgres server binaries (e.g. /usr/lib/postgresql/15/bin), \
             or unset it.",
            dir.display()
        )));
    }
    tried.push("PG_BIN: not set".to_owned());

    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            tried.push(format!(
                "pg_config --bindir: {} (no initdb/pg_ctl there)",
                dir.display()
            ));
        }
        Ok(out) => tried.push(format!("pg_config --bindir: failed ({})", out.status)),
        Err(e) => tried.push(format!("pg_config: {e}")),
    }

    let debian = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    tried.push(format!("{}/*/bin: none", debian.display()));

    if let Some(initdb) = which("initdb") {
        let real = fs::canonicalize(&initdb).unwrap_or_else(|_| initdb.clone());
        for dir in [real.parent(), initdb.parent()].into_iter().flatten() {
            if has_server_binaries(dir) {
                return Ok(dir.to_owned());
            }
        }
        tried.push(format!(
            "initdb on PATH: {} (no pg_ctl beside it)",
            initdb.display()
        ));
    } else {
        tried.push("initdb on PATH: not found".to_owned());
    }

    Err(HarnessError::new(format!(
        "weir harness: no Postgres server binaries (initdb, pg_ctl) found.\n\
         Looked at:\n  - {}\n\
         Install a Postgres server, for example:\n  \
         - Debian/Ubuntu: apt-get install postgresql-15 (or any other supported version)\n  \
         - Fedora/RHEL: dnf install postgresql-server\n  \
         - macOS: brew install postgresql@15\n\
         or set PG_BIN to the directory holding initdb and pg_ctl,\n\
         or set DATABASE_URL to a server where the tests may create databases and a role.",
        tried.join("\n  - ")
    )))
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|name| dir.join(name).is_file())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

// ---------------------------------------------------------------------------
// Running as an unprivileged user when root

/// How to run a command as the unprivileged user, when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
    /// Program and arguments that run the rest of the command line as `user`.
    prefix: Vec<String>,
}

impl RunAs {
    /// `None` when not root; otherwise how to switch to the server's user.
    fn detect() -> Result<Option<RunAs>, HarnessError> {
        if !rustix::process::geteuid().is_root() {
            return Ok(None);
        }
        let user = std::env::var("WEIR_PG_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_OS_USER.to_owned());
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").arg(flag).arg(&user).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
            return Err(HarnessError::new(format!(
                "weir harness: running as root, and Postgres refuses to run as root, but there \
                 is no user `{user}` to run it as. Create one (Debian's postgresql package does; \
                 otherwise e.g. `useradd --system --create-home {user}`), or set WEIR_PG_USER to \
                 an existing unprivileged user, or set DATABASE_URL."
            )));
        };
        if uid == 0 {
            return Err(HarnessError::new(format!(
                "weir harness: WEIR_PG_USER `{user}` is root; Postgres needs an unprivileged user"
            )));
        }
        let candidates = [
            vec![
                "runuser".to_owned(),
                "-u".to_owned(),
                user.clone(),
                "--".to_owned(),
            ],
            vec![
                "su".to_owned(),
                "-s".to_owned(),
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                r#"exec "$0" "$@""#.to_owned(),
                user.clone(),
            ],
        ];
        let mut errors = Vec::new();
        for prefix in candidates {
            match Command::new(&prefix[0])
                .args(&prefix[1..])
                .arg("true")
                .current_dir("/")
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {
                    return Ok(Some(RunAs {
                        user,
                        uid,
                        gid,
                        prefix,
                    }))
                }
                Ok(out) => errors.push(format!(
                    "{}: {} {}",
                    prefix[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => errors.push(format!("{}: {e}", prefix[0])),
            }
        }
        Err(HarnessError::new(format!(
            "weir harness: running as root, and neither runuser nor su can run commands as `{}`: {}",
            user,
            errors.join("; ")
        )))
    }
}

/// Builds commands for the server binaries, as the right user.
struct Pg {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
}

impl Pg {
    fn new(bin_dir: &Path, run_as: Option<&RunAs>) -> Pg {
        Pg {
            bin_dir: bin_dir.to_owned(),
            run_as: run_as.cloned(),
        }
    }

    /// The command line prefix running `program` (e.g. `pg_ctl`).
    fn argv(&self, program: &str) -> Vec<String> {
        let mut argv = self
            .run_as
            .as_ref()
            .map(|r| r.prefix.clone())
            .unwrap_or_default();
        argv.push(self.bin_dir.join(program).to_string_lossy().into_owned());
        argv
    }

    fn command(&self, program: &str, cwd: &Path) -> Command {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        command
    }
}

/// Runs `command`, turning failure into an error with its output.
fn run(mut command: Command, what: &str) -> Result<Output, HarnessError> {
    let out = command
        .output()
        .map_err(|e| HarnessError::new(format!("weir harness: cannot run {what}: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HarnessError::new(format!(
            "weir harness: {what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

// ---------------------------------------------------------------------------
// The cluster directory

/// Where cluster directories go. As root they must be reachable by the
/// server's user, so always `/tmp`; otherwise the temp dir, unless its path
/// is too long for a unix socket path.
fn base_dir(root: bool) -> PathBuf {
    let temp = std::env::temp_dir();
    if root || temp.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        temp
    }
}

/// Creates `weir-pg-<pid>-<n>`, locks it as live, and hands it to the
/// server's user.
fn create_cluster_dir(
    base: &Path,
    run_as: Option<&RunAs>,
) -> Result<(PathBuf, File), HarnessError> {
    let io_error = |what: &str, path: &Path, e: io::Error| {
        HarnessError::new(format!("weir harness: {what} {}: {e}", path.display()))
    };
    let pid = std::process::id();
    let mut n = 0u32;
    let dir = loop {
        let dir = base.join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(io_error("cannot create", &dir, e)),
        }
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error("cannot chmod", &dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&lock_path)
        .map_err(|e| io_error("cannot create", &lock_path, e))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| io_error("cannot lock", &lock_path, e.into()))?;
    // Written after locking: an empty lock file means "being created".
    writeln!(lock, "{pid}").map_err(|e| io_error("cannot write", &lock_path, e))?;
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(&dir, Some(run_as.uid), Some(run_as.gid))
            .map_err(|e| io_error(&format!("cannot chown to {}", run_as.user), &dir, e))?;
    }
    Ok((dir, lock))
}

/// Stops the servers of, and removes, cluster directories whose owning
/// process is gone (nobody holds their lock) but whose cleanup never ran.
fn sweep_stale_dirs(base: &Path, bin_dir: &Path, run_as: Option<&RunAs>) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        // Only directories whose server we can stop: a server of another
        // user would outlive the removal of its directory.
        let owner = run_as
            .map(|r| r.uid)
            .unwrap_or_else(|| rustix::process::geteuid().as_raw());
        if !fs::metadata(&dir).is_ok_and(|m| m.uid() == owner) {
            continue;
        }
        let Ok(mut lock) = File::open(dir.join(LOCK_FILE)) else {
            continue;
        };
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // its process is alive
        }
        let mut pid = String::new();
        let _ = lock.read_to_string(&mut pid);
        let young = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(600));
        if pid.trim().is_empty() && young {
            continue; // being created right now
        }
        let data_dir = dir.join("data");
        if data_dir.join("postmaster.pid").exists() {
            let mut stop = Pg::new(bin_dir, run_as).command("pg_ctl", Path::new("/"));
            stop.arg("stop")
                .arg("-D")
                .arg(&data_dir)
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
        if fs::remove_dir_all(&dir).is_ok() {
            eprintln!(
                "weir harness: removed stale throwaway cluster {} (pid {})",
                dir.display(),
                pid.trim()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The watchdog

/// Waits for its stdin to close (this process ended, or [`Watchdog::finish`]),
/// then stops the server and removes the cluster directory. `$1` is the
/// directory, `$2` the data directory, the rest runs `pg_ctl`.
const WATCHDOG_SCRIPT: &str = r#"trap '' HUP INT
dir=$1; data=$2; shift 2
cat >/dev/null 2>&1
if [ -f "$data/postmaster.pid" ]; then
    if ! "$@" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1; then
        pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    fi
fi
rm -rf -- "$dir"
"#;

struct Watchdog {
    child: Mutex<Option<Child>>,
}

impl Watchdog {
    fn spawn(dir: &Path, data_dir: &Path, pg: &Pg) -> Result<Watchdog, HarnessError> {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("weir-pg-watchdog")
            .arg(dir)
            .arg(data_dir)
            .args(pg.argv("pg_ctl"))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for the tests must not
            // kill the one process that cleans up after them.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                HarnessError::new(format!("weir harness: cannot spawn the watchdog: {e}"))
            })?;
        Ok(Watchdog {
            child: Mutex::new(Some(child)),
        })
    }

    /// Closes the watchdog's stdin and waits until it has stopped the server
    /// and removed the directory. Idempotent.
    fn finish(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// Registers the `atexit` hook that stops the throwaway cluster. The crate's
/// only unsafe code.
#[allow(unsafe_code)]
fn register_atexit_cleanup() {
    extern "C" fn stop_cluster_at_exit() {
        // Never unwind out of an `extern "C"` function.
        let _ = panic::catch_unwind(|| {
            if let Some(Ok(cluster)) = CLUSTER.get() {
                cluster.shutdown();
            }
        });
    }
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: `atexit` has no preconditions; the handler is a plain
        // `extern "C" fn()` that takes no arguments, touches only statics
        // that live for the whole process, and catches every panic. If
        // registration fails (it only can when out of memory), the watchdog
        // still stops the server, just asynchronously.
        let rc = unsafe { libc::atexit(stop_cluster_at_exit) };
        if rc != 0 {
            eprintln!("weir harness: atexit failed; the watchdog will clean up instead");
        }
    });
}

// ---------------------------------------------------------------------------
// initdb and start

fn initdb(pg: &Pg, dir: &Path, data_dir: &Path) -> Result<(), HarnessError> {
    let mut command = pg.command("initdb", dir);
    command
        .arg("-D")
        .arg(data_dir)
        .args(["-A", "trust", "-U", SUPERUSER, "--no-sync"])
        .args(["-E", "UTF8", "--locale=C"]);
    run(command, "initdb")?;

    let socket_dir = dir.to_string_lossy().replace('\'', "''");
    let settings = format!(
        "\n# Added by weir_pg_harness: a throwaway cluster for tests.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket_dir}'\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         max_connections = 200\n\
         shared_buffers = 32MB\n\
         jit = off\n\
         timezone = 'UTC'\n\
         log_timezone = 'UTC'\n"
    );
    let conf = data_dir.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut file| file.write_all(settings.as_bytes()))
        .map_err(|e| {
            HarnessError::new(format!(
                "weir harness: cannot write {}: {e}",
                conf.display()
            ))
        })
}

/// Starts the server on a free port; returns the port.
fn start(pg: &Pg, dir: &Path, data_dir: &Path, log_file: &Path) -> Result<u16, HarnessError> {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port()?;
        match start_on(pg, dir, data_dir, log_file, port)? {
            Ok(()) => return Ok(port),
            Err(message) => {
                eprintln!(
                    "weir harness: Postgres could not start on port {port}; trying another port"
                );
                failures.push(message);
            }
        }
    }
    Err(HarnessError::new(format!(
        "weir harness: could not start Postgres after {START_ATTEMPTS} attempts:\n{}",
        failures.join("\n")
    )))
}

/// One `pg_ctl start` on `port`. `Ok(Err(message))`: it failed in a way
/// another attempt may fix (the port was taken, a stale lock file).
fn start_on(
    pg: &Pg,
    dir: &Path,
    data_dir: &Path,
    log_file: &Path,
    port: u16,
) -> Result<Result<(), String>, HarnessError> {
    remove_stale_pid_file(data_dir);
    let log_start = fs::metadata(log_file).map(|m| m.len()).unwrap_or(0);
    let mut command = pg.command("pg_ctl", dir);
    command
        .arg("start")
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(log_file)
        .args(["-w", "-t", "60", "-o"])
        .arg(format!("-p {port}"));
    let out = command
        .output()
        .map_err(|e| HarnessError::new(format!("weir harness: cannot run pg_ctl start: {e}")))?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let log = read_from(log_file, log_start);
    let retry = log.contains("Address already in use")
        || log.contains("could not create any TCP/IP sockets")
        || remove_stale_lock_file(&log);
    let message = format!(
        "pg_ctl start on port {port} failed ({}):\n{}{}\n--- tail of the server log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&log, 30)
    );
    if retry {
        Ok(Err(message))
    } else {
        Err(HarnessError::new(format!("weir harness: {message}")))
    }
}

fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| HarnessError::new(format!("weir harness: cannot find a free port: {e}")))
}

/// Removes `postmaster.pid` if the process it names is gone.
fn remove_stale_pid_file(data_dir: &Path) {
    let pid_file = data_dir.join("postmaster.pid");
    if pid_file.exists() && !pid_file_owner_alive(&pid_file) {
        let _ = fs::remove_file(&pid_file);
    }
}

/// If the log says `lock file "X" already exists` and X's process is gone,
/// removes X and returns true (worth another attempt).
fn remove_stale_lock_file(log: &str) -> bool {
    let Some(rest) = log.split("lock file \"").nth(1) else {
        return false;
    };
    let Some((path, after)) = rest.split_once('"') else {
        return false;
    };
    if !after.trim_start().starts_with("already exists") {
        return false;
    }
    let path = Path::new(path);
    if pid_file_owner_alive(path) {
        return false;
    }
    fs::remove_file(path).is_ok()
}

/// Whether the process whose pid is on the first line of `path` is alive.
fn pid_file_owner_alive(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string(path) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_and_user() {
        let url = "postgres://admin:secret@db.example:5433/main?sslmode=disable";
        assert_eq!(
            with_database(url, "weir_test_1_0"),
            "postgres://admin:secret@db.example:5433/weir_test_1_0?sslmode=disable"
        );
        assert_eq!(
            with_user(&with_database(url, "x"), APP_ROLE, APP_PASSWORD),
            "postgres://weir_app:weir_app@db.example:5433/x?sslmode=disable"
        );
    }

    #[test]
    fn user_goes_to_query_without_authority() {
        let url = "postgres:///main?host=/run/postgresql&user=admin&dbname=main";
        let app = with_user(&with_database(url, "x"), APP_ROLE, APP_PASSWORD);
        assert_eq!(
            app,
            "postgres:///x?host=%2Frun%2Fpostgresql&user=weir_app&password=weir_app"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:pw@h/d"), "postgres://u:***@h/d");
        assert_eq!(
            redact("postgres:///d?password=pw&user=u"),
            "postgres:///d?password=***&user=u"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn stale_lock_file_detection_ignores_other_messages() {
        assert!(!remove_stale_lock_file("FATAL: could not bind"));
        assert!(!remove_stale_lock_file(
            "FATAL:  lock file \"/nonexistent/weir/.s.PGSQL.1.lock\" is empty"
        ));
    }
}
