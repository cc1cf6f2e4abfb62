//! The burn-down: N no-op jobs bulk-inserted, then W workers (in P
//! processes, the pool's default settings) drain them. Its rate is set
//! against the raw-SQL ceiling; its cost (commits, WAL, row writes and
//! claimer-lease writes per completed job) is the `cost` shape.
//!
//! The drain is timed from the database's clock: from just before `go`
//! to the last job's `finished_at`. The cost is the difference of two
//! settled snapshots around the drain only (after the insert, which is
//! measured by `enqueue`, and a `VACUUM ANALYZE` of it; after every worker
//! process has exited, so all their statistics are in).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::child::{Children, Message, WorkerSpec};
use super::db::{sql_err, BenchDb, Cost, PerJob, StatsConn, SCHEMA};
use super::report::{thousands, Shape, Verdict};
use super::worker::noop_jobs;
use super::{CeilingRecord, Ctx, REFERENCE_CLIENTS};

/// The burn-down's and the cost's shapes, from one run.
pub async fn run(
    ctx: &mut Ctx,
    jobs: u64,
    workers: u32,
    processes: u32,
) -> Result<(Shape, Shape), String> {
    let db = ctx.server.fresh().await?;
    ctx.ceilings(&db, workers).await?;
    let insert_s = bulk_insert(ctx, &db, jobs).await?;

    let mut stats = StatsConn::new(&db).await?;
    sqlx::query(&format!("VACUUM ANALYZE {SCHEMA}.jobs"))
        .execute(stats.conn())
        .await
        .map_err(sql_err)?;
    let before = stats.settled_snapshot().await?;
    let per_process = split(workers, processes);
    let mut children = spawn_pools(&db, &ctx.overrides, &per_process).await?;
    let drain_s = drain(ctx, &mut stats, &mut children, jobs, &per_process).await?;
    let done = children.finish().await?;
    let after = stats.settled_snapshot().await?;
    let cost = Cost::between(&before, &after);
    // The machine is shared: measure the reference ceiling again right
    // after the drain, and judge against the highest of the run.
    let label = format!("right after the {processes}-process burn-down");
    ctx.measure_ceiling(&db, REFERENCE_CLIENTS, &label).await?;
    let ceiling = CeilingRecord::new(&ctx.ceilings);

    let params = BurnParams {
        jobs,
        workers,
        processes,
        workers_per_process: per_process.clone(),
        pool: "PoolConfig::new defaults",
        dispatcher_overrides: ctx.overrides.clone(),
    };
    let database = if db.own_database {
        "the shape's own"
    } else {
        "shared: other traffic counted"
    };
    let cost_record = CostRecord::new(
        params.clone(),
        ceiling.clone(),
        drain_s,
        database,
        &cost,
        &done,
    );
    let burn = BurnRecord::new(params, ceiling, insert_s, drain_s, done);
    Ok((
        Shape::new(
            &format!("burn-down {processes} x {}", per_process[0]),
            &burn,
            burn_verdicts(&burn),
        ),
        Shape::new("cost", &cost_record, cost_verdicts(&cost_record)),
    ))
}

/// Bulk-inserts the `jobs` no-op jobs; the seconds it took.
async fn bulk_insert(ctx: &Ctx, db: &BenchDb, jobs: u64) -> Result<f64, String> {
    let bar = ctx.spinner(format!(
        "burn-down: bulk-inserting {} jobs",
        thousands(jobs as f64)
    ));
    let backend = db.backend(4).await?;
    let started = Instant::now();
    let inserted = weir::Backend::enqueue_bulk(&backend, noop_jobs(0, jobs))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let insert_s = started.elapsed().as_secs_f64();
    backend.pool().close().await;
    bar.finish_and_clear();
    if inserted.len() as u64 != jobs {
        return Err(format!("inserted {} of {jobs} jobs", inserted.len()));
    }
    Ok(insert_s)
}

/// One worker-pool process per entry of `per_process` (its workers),
/// started and ready.
pub async fn spawn_pools(
    db: &BenchDb,
    overrides: &Option<Value>,
    per_process: &[u32],
) -> Result<Children, String> {
    let specs: Vec<WorkerSpec> = per_process
        .iter()
        .map(|&w| WorkerSpec::Pool {
            url: db.app_url.clone(),
            workers: w,
            overrides: overrides.clone(),
        })
        .collect();
    let mut children = Children::spawn(&specs)?;
    children.ready().await?;
    Ok(children)
}

/// Lets the ready `children` drain the `jobs`; the drain's seconds by
/// the database clock, from just before `go` to the last `finished_at`.
async fn drain(
    ctx: &Ctx,
    stats: &mut StatsConn,
    children: &mut Children,
    jobs: u64,
    per_process: &[u32],
) -> Result<f64, String> {
    let t0 = db_now(stats).await?;
    children.go()?;
    let bar = ctx.bar(
        jobs,
        format!(
            "burn-down: {} x {} workers",
            per_process.len(),
            per_process[0]
        ),
    );
    let mut completed = vec![0u64; per_process.len()];
    while completed.iter().sum::<u64>() < jobs {
        if let (i, Message::Progress { completed: n, .. }) = children.next().await? {
            completed[i] = n;
            bar.set_position(completed.iter().sum());
        }
    }
    bar.finish_and_clear();
    let end = wait_completed(stats, jobs).await?;
    Ok((end - t0).max(1) as f64 / 1000.0)
}

/// The pools' own counts, summed over the processes' records: lease
/// refreshes and lease acquisitions.
pub fn lease_counts(done: &[Value]) -> (u64, u64) {
    let sum = |key: &str| -> u64 { done.iter().filter_map(|d| d[key].as_u64()).sum() };
    (sum("lease_refreshes"), sum("lease_acquisitions"))
}

/// What the burn-down and the cost shapes were run with.
#[derive(Clone, Serialize)]
#[cfg_attr(test, derive(Default))]
struct BurnParams {
    jobs: u64,
    workers: u32,
    processes: u32,
    workers_per_process: Vec<u32>,
    pool: &'static str,
    dispatcher_overrides: Option<Value>,
}

/// The `burn-down` shape's record.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct BurnRecord {
    params: BurnParams,
    ceiling: CeilingRecord,
    bulk_insert_seconds: f64,
    bulk_insert_jobs_per_s: f64,
    drain_seconds: f64,
    total: BurnTotal,
    /// The worker processes' own records.
    per_process: Vec<Value>,
}

/// The burn-down over every process.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct BurnTotal {
    jobs_per_s: f64,
    ceiling_ratio: f64,
    claims: u64,
    jobs_per_claim: f64,
}

impl BurnRecord {
    fn new(
        params: BurnParams,
        ceiling: CeilingRecord,
        insert_s: f64,
        drain_s: f64,
        done: Vec<Value>,
    ) -> BurnRecord {
        let jobs = params.jobs;
        let rate = jobs as f64 / drain_s;
        let claims: u64 = done.iter().filter_map(|d| d["claims"].as_u64()).sum();
        BurnRecord {
            total: BurnTotal {
                jobs_per_s: rate,
                ceiling_ratio: rate / ceiling.judged_against_jobs_per_s,
                claims,
                jobs_per_claim: jobs as f64 / claims.max(1) as f64,
            },
            params,
            ceiling,
            bulk_insert_seconds: insert_s,
            bulk_insert_jobs_per_s: jobs as f64 / insert_s,
            drain_seconds: drain_s,
            per_process: done,
        }
    }
}

/// The `cost` shape's record.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct CostRecord {
    params: BurnParams,
    ceiling: CeilingRecord,
    drain_seconds: f64,
    database: &'static str,
    per_job: PerJob,
    claimer_lease_writes: i64,
    claimer_lease_acquisitions: u64,
    claimer_lease_refresh_writes_per_s_per_claimer: f64,
    pool_lease_refreshes: u64,
    active_claimers: u32,
}

impl CostRecord {
    fn new(
        params: BurnParams,
        ceiling: CeilingRecord,
        drain_s: f64,
        database: &'static str,
        cost: &Cost,
        done: &[Value],
    ) -> CostRecord {
        let (refreshes, acquisitions) = lease_counts(done);
        let processes = params.processes;
        CostRecord {
            per_job: cost.per_job(params.jobs),
            claimer_lease_writes: cost.claimer_leases.ins + cost.claimer_leases.upd,
            claimer_lease_acquisitions: acquisitions,
            claimer_lease_refresh_writes_per_s_per_claimer: cost.lease_refresh_writes_per_s(
                acquisitions,
                processes,
                drain_s,
            ),
            pool_lease_refreshes: refreshes,
            active_claimers: processes,
            params,
            ceiling,
            drain_seconds: drain_s,
            database,
        }
    }
}

fn burn_verdicts(burn: &BurnRecord) -> Vec<Verdict> {
    let BurnParams {
        jobs,
        workers,
        processes,
        ..
    } = burn.params;
    let rates: Vec<String> = burn
        .per_process
        .iter()
        .map(|d| thousands(d["jobs_per_s"].as_f64().unwrap_or(0.0)))
        .collect();
    let ratio = burn.total.ceiling_ratio;
    vec![Verdict::new(
        format!(
            "burn-down, {} no-op jobs, {workers} workers ({processes} process{})",
            thousands(jobs as f64),
            if processes == 1 { "" } else { "es" }
        ),
        ">= 40% of the ceiling",
        format!(
            "{} jobs/s = {:.0}% of {} (per process: {})",
            thousands(burn.total.jobs_per_s),
            ratio * 100.0,
            thousands(burn.ceiling.judged_against_jobs_per_s),
            rates.join(", ")
        ),
        Some(ratio >= 0.40),
    )]
}

fn cost_verdicts(record: &CostRecord) -> Vec<Verdict> {
    let cost = &record.per_job.raw;
    let jobs = record.params.jobs;
    let per = |x: i64| x as f64 / jobs as f64;
    let lease_per_s = record.claimer_lease_refresh_writes_per_s_per_claimer;
    let (lease_writes, acquisitions) = (
        record.claimer_lease_writes,
        record.claimer_lease_acquisitions,
    );
    let (processes, refreshes) = (record.active_claimers, record.pool_lease_refreshes);
    let drain_s = record.drain_seconds;
    vec![
        Verdict::new(
            "WAL per completed job (burn-down)",
            "<= 500 bytes",
            format!("{:.0} bytes", per(cost.wal_bytes)),
            Some(per(cost.wal_bytes) <= 500.0),
        ),
        Verdict::new(
            "commits per completed job (burn-down)",
            "<= 0.05",
            format!("{:.4} ({} commits)", per(cost.commits), cost.commits),
            Some(per(cost.commits) <= 0.05),
        ),
        Verdict::new(
            "row writes per completed job (burn-down)",
            "reported",
            format!(
                "{:.2} ({} of jobs' {} updates HOT)",
                per(cost.row_writes),
                cost.jobs.hot_upd,
                cost.jobs.upd
            ),
            None,
        ),
        Verdict::new(
            "claimer-lease row writes (burn-down)",
            "<= 4 /s per active claimer",
            format!(
                "{lease_per_s:.2} /s refreshing ({lease_writes} writes in {drain_s:.1} s: \
                 {acquisitions} acquisitions, {processes} releases, the rest refreshes; \
                 the pools counted {refreshes} refreshes)"
            ),
            Some(lease_per_s <= 4.0),
        ),
    ]
}

/// `workers` split over `processes`, as evenly as can be.
pub fn split(workers: u32, processes: u32) -> Vec<u32> {
    let p = processes.max(1);
    (0..p)
        .map(|i| (workers / p + u32::from(i < workers % p)).max(1))
        .collect()
}

/// The database clock, in milliseconds.
pub async fn db_now(stats: &mut StatsConn) -> Result<i64, String> {
    sqlx::query_scalar(&format!("SELECT {SCHEMA}.now_ms()"))
        .fetch_one(stats.conn())
        .await
        .map_err(sql_err)
}

/// Waits until `jobs` jobs are completed in storage; the last one's
/// `finished_at`.
pub async fn wait_completed(stats: &mut StatsConn, jobs: u64) -> Result<i64, String> {
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let row = sqlx::query(&format!(
            "SELECT count(*) AS n, max(finished_at) AS last FROM {SCHEMA}.jobs \
             WHERE state = 'completed'"
        ))
        .fetch_one(stats.conn())
        .await
        .map_err(sql_err)?;
        let n: i64 = row.get("n");
        if n as u64 >= jobs {
            return Ok(row.get::<Option<i64>, _>("last").unwrap_or(0));
        }
        if Instant::now() > limit {
            return Err(format!("only {n} of {jobs} jobs completed in storage"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    #[test]
    fn workers_split_evenly() {
        assert_eq!(split(64, 1), vec![64]);
        assert_eq!(split(64, 2), vec![32, 32]);
        assert_eq!(split(65, 2), vec![33, 32]);
        assert_eq!(split(1, 2), vec![1, 1]);
    }

    const PARAMS: [&str; 7] = [
        "params",
        "params.jobs",
        "params.workers",
        "params.processes",
        "params.workers_per_process",
        "params.pool",
        "params.dispatcher_overrides",
    ];
    const CEILING: [&str; 3] = [
        "ceiling",
        "ceiling.measured",
        "ceiling.judged_against_jobs_per_s",
    ];

    /// The keys the burn-down's `json!` wrote before it was typed.
    #[test]
    fn burn_record_keeps_its_keys() {
        let mut keys = vec![
            "bulk_insert_seconds",
            "bulk_insert_jobs_per_s",
            "drain_seconds",
            "total",
            "total.jobs_per_s",
            "total.ceiling_ratio",
            "total.claims",
            "total.jobs_per_claim",
            "per_process",
        ];
        keys.extend(PARAMS);
        keys.extend(CEILING);
        assert_eq!(key_paths(&BurnRecord::default()), sorted(&keys));
    }

    /// The keys the cost's `json!` wrote before it was typed (`per_job`'s
    /// own are `db::PerJob`'s test).
    #[test]
    fn cost_record_keeps_its_keys() {
        let mut keys = vec![
            "drain_seconds",
            "database",
            "per_job",
            "claimer_lease_writes",
            "claimer_lease_acquisitions",
            "claimer_lease_refresh_writes_per_s_per_claimer",
            "pool_lease_refreshes",
            "active_claimers",
        ];
        keys.extend(PARAMS);
        keys.extend(CEILING);
        let paths: Vec<String> = key_paths(&CostRecord::default())
            .into_iter()
            .filter(|k| !k.starts_with("per_job."))
            .collect();
        assert_eq!(paths, sorted(&keys));
    }
}
