//! The database a benchmark runs in, the server's settings, and the cost
//! counters (`pg_stat_database`, `pg_stat_user_tables`, the WAL position)
//! whose deltas become the cost-per-job figures.
//!
//! Without `--database-url` the server is a throwaway cluster started the
//! way the tests start theirs (`weir_pg_harness`), and every shape
//! gets a database of its own, so the deltas are the shape's alone. With
//! `--database-url` every shape gets a fresh schema in that database; the
//! commit count is then the database's and the WAL the server's, so other
//! traffic there is counted too (the JSON says which it was).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{Connection, Executor, Row};
use weir_pg_harness::{self as harness, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, Pooler, SchemaName};

use super::PoolerArg;

/// The schema Weir's tables live in during a benchmark.
pub const SCHEMA: &str = "weir_bench";

/// Where the benchmark's server is.
pub enum Server {
    /// A throwaway cluster (the harness's), a fresh database per shape.
    Throwaway(&'static harness::Cluster),
    /// `--database-url`: one database, a fresh schema per shape; Weir's
    /// processes connect to `worker` (`--worker-url`) when given.
    Url {
        /// `--database-url`.
        url: String,
        /// `--worker-url`.
        worker: Option<String>,
    },
}

/// `--pooler`, for every backend this process makes.
static POOLER: OnceLock<PoolerArg> = OnceLock::new();

/// Sets `--pooler` for this process (once, before any backend).
pub fn set_pooler(pooler: PoolerArg) {
    let _ = POOLER.set(pooler);
}

/// `--pooler` as given (`direct` by default); worker processes get it
/// through `WEIR_BENCH_POOLER`.
pub fn pooler() -> PoolerArg {
    POOLER.get().copied().unwrap_or(PoolerArg::Direct)
}

impl Server {
    /// The throwaway cluster, or the server at `url`.
    pub fn new(url: Option<&str>, worker: Option<&str>) -> Result<Server, String> {
        match url {
            Some(url) => Ok(Server::Url {
                url: url.to_string(),
                worker: worker.map(str::to_string),
            }),
            None => {
                eprintln!("no --database-url: starting a throwaway Postgres (as the tests do)");
                harness::try_cluster()
                    .map(Server::Throwaway)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// A clean place for one shape.
    pub async fn fresh(&self) -> Result<BenchDb, String> {
        match self {
            Server::Throwaway(cluster) => {
                let db = cluster.create_database().await.map_err(|e| e.to_string())?;
                let bench = BenchDb {
                    admin_url: db.url().to_string(),
                    app_url: db.url_as_app_user().to_string(),
                    own_database: true,
                    _db: Some(db),
                };
                bench.reset_schema().await?;
                Ok(bench)
            }
            Server::Url { url, worker } => {
                let bench = BenchDb {
                    admin_url: url.clone(),
                    app_url: worker.clone().unwrap_or_else(|| url.clone()),
                    own_database: false,
                    _db: None,
                };
                bench.reset_schema().await?;
                Ok(bench)
            }
        }
    }
}

/// One shape's database.
pub struct BenchDb {
    /// A URL with the rights to read statistics (the superuser of a
    /// throwaway cluster).
    pub admin_url: String,
    /// The URL Weir's processes use (the harness's non-superuser role).
    pub app_url: String,
    /// Whether the database is the shape's alone.
    pub own_database: bool,
    _db: Option<TestDatabase>,
}

impl BenchDb {
    async fn reset_schema(&self) -> Result<(), String> {
        let mut conn = self.admin().await?;
        let drop = format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE");
        conn.execute(drop.as_str()).await.map_err(sql_err)?;
        let _ = conn.close().await;
        let backend = self.backend(4).await?;
        backend.migrate().await.map_err(|e| e.to_string())?;
        backend.pool().close().await;
        Ok(())
    }

    /// A connection for statistics and bookkeeping.
    pub async fn admin(&self) -> Result<PgConnection, String> {
        PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| format!("connecting to the benchmark database: {e}"))
    }

    /// A backend on the benchmark schema with up to `max` connections.
    pub async fn backend(&self, max: u32) -> Result<PgBackend, String> {
        backend_at(&self.app_url, max).await
    }
}

/// A backend on `url`'s benchmark schema, with the default world settings.
pub async fn backend_at(url: &str, max: u32) -> Result<PgBackend, String> {
    let mut options: sqlx::postgres::PgConnectOptions =
        url.parse().map_err(|e| format!("--database-url: {e}"))?;
    let pooler = match pooler() {
        PoolerArg::Direct => Pooler::Direct,
        PoolerArg::Transaction => {
            // PgBouncer refuses this startup parameter unless told to
            // ignore it, as `PgBackend::connect` knows.
            options = options.extra_float_digits(None);
            Pooler::Transaction
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| format!("connecting to {}: {e}", redact(url)))?;
    let config = PgConfig {
        schema: SchemaName::new(SCHEMA.to_string()).expect("a valid schema name"),
        pooler,
        ..PgConfig::default()
    };
    PgBackend::new(pool, config).map_err(|e| e.to_string())
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn sql_err(e: sqlx::Error) -> String {
    format!("database: {e}")
}

/// The server's version and the settings that change the figures.
pub async fn server_info(conn: &mut PgConnection) -> Result<ServerInfo, String> {
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err)?;
    let names = [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "max_connections",
        "autovacuum",
        "autovacuum_naptime",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_threshold",
        "autovacuum_vacuum_cost_limit",
        "autovacuum_vacuum_cost_delay",
        "checkpoint_timeout",
        "max_wal_size",
    ];
    let rows = sqlx::query(
        "SELECT name, current_setting(name) AS value FROM pg_settings \
         WHERE name = ANY ($1) ORDER BY name",
    )
    .bind(&names[..])
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_err)?;
    let settings = rows
        .into_iter()
        .map(|row| (row.get("name"), row.get("value")))
        .collect();
    Ok(ServerInfo { version, settings })
}

/// The jobs table's own storage settings (fillfactor, autovacuum).
pub async fn jobs_reloptions(conn: &mut PgConnection) -> Result<Vec<String>, String> {
    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'jobs'",
    )
    .bind(SCHEMA)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql_err)?
    .flatten();
    Ok(options.unwrap_or_default())
}

/// Counters of one table.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableCounts {
    pub ins: i64,
    pub upd: i64,
    pub hot_upd: i64,
    pub del: i64,
    pub dead: i64,
    pub live: i64,
    pub vacuums: i64,
}

/// The counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub commits: i64,
    pub rollbacks: i64,
    pub wal_bytes: i64,
    pub wal_lsn: String,
    pub tables: Vec<(String, TableCounts)>,
    /// Statements this connection had issued when the snapshot was read.
    own_statements: u64,
}

impl Snapshot {
    pub fn table(&self, name: &str) -> TableCounts {
        self.tables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }
}

/// A connection that reads the counters and counts its own statements,
/// so its own commits are not charged to the shape.
pub struct StatsConn {
    conn: PgConnection,
    statements: u64,
    version_num: i32,
}

impl StatsConn {
    pub async fn new(db: &BenchDb) -> Result<StatsConn, String> {
        let mut conn = db.admin().await?;
        let version_num: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                .fetch_one(&mut conn)
                .await
                .map_err(sql_err)?;
        Ok(StatsConn {
            conn,
            statements: 1,
            version_num,
        })
    }

    /// The connection, for a statement that is counted.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.statements += 1;
        &mut self.conn
    }

    /// Waits until no other client of this database is connected (their
    /// statistics are flushed when they exit), then reads the counters.
    pub async fn settled_snapshot(&mut self) -> Result<Snapshot, String> {
        self.wait_for_other_clients(Duration::from_secs(20)).await?;
        if self.version_num >= 150_000 {
            sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(self.conn())
                .await
                .map_err(sql_err)?;
        } else {
            // Before 15 a statistics collector process gathers them.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        self.snapshot().await
    }

    async fn wait_for_other_clients(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            )
            .fetch_one(self.conn())
            .await
            .map_err(sql_err)?;
            if others == 0 {
                return Ok(());
            }
            if started.elapsed() > limit {
                // Another program on a shared database: read anyway.
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The counters now (statistics may lag by up to a second for
    /// backends still running).
    pub async fn snapshot(&mut self) -> Result<Snapshot, String> {
        let row = sqlx::query(
            "SELECT d.xact_commit AS commits, d.xact_rollback AS rollbacks, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal, \
             pg_current_wal_lsn()::text AS lsn \
             FROM pg_stat_database d WHERE d.datname = current_database()",
        )
        .fetch_one(self.conn())
        .await
        .map_err(sql_err)?;
        let own_statements = self.statements;
        let rows = sqlx::query(
            "SELECT relname::text AS name, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, \
             n_dead_tup, n_live_tup, vacuum_count + autovacuum_count AS vacuums \
             FROM pg_stat_user_tables WHERE schemaname = $1 ORDER BY relname",
        )
        .bind(SCHEMA)
        .fetch_all(self.conn())
        .await
        .map_err(sql_err)?;
        let tables = rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("name"),
                    TableCounts {
                        ins: r.get("n_tup_ins"),
                        upd: r.get("n_tup_upd"),
                        hot_upd: r.get("n_tup_hot_upd"),
                        del: r.get("n_tup_del"),
                        dead: r.get("n_dead_tup"),
                        live: r.get("n_live_tup"),
                        vacuums: r.get("vacuums"),
                    },
                )
            })
            .collect();
        Ok(Snapshot {
            commits: row.get("commits"),
            rollbacks: row.get("rollbacks"),
            wal_bytes: row.get("wal"),
            wal_lsn: row.get("lsn"),
            tables,
            own_statements,
        })
    }

    /// The dead tuples of the jobs table now.
    pub async fn dead_jobs(&mut self) -> Result<i64, String> {
        sqlx::query_scalar(
            "SELECT coalesce(max(n_dead_tup), 0) FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = 'jobs'",
        )
        .bind(SCHEMA)
        .fetch_one(self.conn())
        .await
        .map_err(sql_err)
    }
}

/// What a shape cost, from two settled snapshots.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(test, derive(Default))]
pub struct Cost {
    /// Commits of the shape's own clients (the stats connection's own
    /// statements taken out).
    pub commits: i64,
    pub rollbacks: i64,
    pub wal_bytes: i64,
    /// The WAL range, for `pg_waldump --stats=record -s START -e END`.
    pub wal_lsn_start: String,
    pub wal_lsn_end: String,
    /// Row writes (inserts + updates + deletes) over every Weir table.
    pub row_writes: i64,
    pub jobs: TableCounts,
    pub claimer_leases: TableCounts,
    /// Dead tuples in the jobs table at the end.
    pub dead_tuples_end: i64,
}

impl Cost {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Cost {
        let own = (after.own_statements - before.own_statements) as i64;
        let delta = |name: &str| {
            let (a, b) = (after.table(name), before.table(name));
            TableCounts {
                ins: a.ins - b.ins,
                upd: a.upd - b.upd,
                hot_upd: a.hot_upd - b.hot_upd,
                del: a.del - b.del,
                dead: a.dead,
                live: a.live,
                vacuums: a.vacuums - b.vacuums,
            }
        };
        let row_writes = after
            .tables
            .iter()
            .map(|(name, _)| {
                let d = delta(name);
                d.ins + d.upd + d.del
            })
            .sum();
        Cost {
            commits: (after.commits - before.commits - own).max(0),
            rollbacks: after.rollbacks - before.rollbacks,
            wal_bytes: after.wal_bytes - before.wal_bytes,
            wal_lsn_start: before.wal_lsn.clone(),
            wal_lsn_end: after.wal_lsn.clone(),
            row_writes,
            jobs: delta("jobs"),
            claimer_leases: delta("claimer_leases"),
            dead_tuples_end: after.table("jobs").dead,
        }
    }

    /// Claimer-lease row writes beyond the one-off ones: each pool's
    /// acquisition (`acquisitions`, as the pools counted them) and its
    /// release at shutdown (one per pool), so what is left is the
    /// refreshes made while claiming. Per second per claimer.
    pub fn lease_refresh_writes_per_s(&self, acquisitions: u64, pools: u32, seconds: f64) -> f64 {
        let writes = self.claimer_leases.ins + self.claimer_leases.upd;
        let one_off = acquisitions as i64 + i64::from(pools);
        (writes - one_off).max(0) as f64 / seconds.max(1e-9) / f64::from(pools.max(1))
    }

    /// The figures per job.
    pub fn per_job(&self, jobs: u64) -> PerJob {
        let per = |x: i64| x as f64 / jobs.max(1) as f64;
        PerJob {
            jobs,
            commits_per_job: per(self.commits),
            wal_bytes_per_job: per(self.wal_bytes),
            row_writes_per_job: per(self.row_writes),
            jobs_table_updates_per_job: per(self.jobs.upd),
            jobs_table_hot_updates_per_job: per(self.jobs.hot_upd),
            raw: self.clone(),
        }
    }
}

/// [`Cost`] per completed job, with the raw counts.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(test, derive(Default))]
pub struct PerJob {
    pub jobs: u64,
    pub commits_per_job: f64,
    pub wal_bytes_per_job: f64,
    pub row_writes_per_job: f64,
    pub jobs_table_updates_per_job: f64,
    pub jobs_table_hot_updates_per_job: f64,
    pub raw: Cost,
}

/// The server's version and the settings that change the figures.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(test, derive(Default))]
pub struct ServerInfo {
    pub version: String,
    /// By name (sorted, as the JSON always was).
    pub settings: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    /// The keys `Cost::per_job` wrote as a `json!` before it was typed.
    #[test]
    fn per_job_keeps_its_keys() {
        let raw = [
            "commits",
            "rollbacks",
            "wal_bytes",
            "wal_lsn_start",
            "wal_lsn_end",
            "row_writes",
            "dead_tuples_end",
        ];
        let table = ["ins", "upd", "hot_upd", "del", "dead", "live", "vacuums"];
        let mut keys: Vec<String> = [
            "jobs",
            "commits_per_job",
            "wal_bytes_per_job",
            "row_writes_per_job",
            "jobs_table_updates_per_job",
            "jobs_table_hot_updates_per_job",
            "raw",
            "raw.jobs",
            "raw.claimer_leases",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        keys.extend(raw.iter().map(|k| format!("raw.{k}")));
        for t in ["jobs", "claimer_leases"] {
            keys.extend(table.iter().map(|k| format!("raw.{t}.{k}")));
        }
        keys.sort();
        assert_eq!(key_paths(&Cost::default().per_job(1)), keys);
    }

    #[test]
    fn server_info_keeps_its_keys() {
        let info = ServerInfo::default();
        assert_eq!(key_paths(&info), sorted(&["version", "settings"]));
    }
}
