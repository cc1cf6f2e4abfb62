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

use serde_json::json;
use sqlx::Row;

use super::child::{Children, Message, WorkerSpec};
use super::db::{sql_err, Cost, StatsConn, SCHEMA};
use super::report::{thousands, Shape, Verdict};
use super::worker::noop_jobs;
use super::{best, ceiling_json, Ctx, REFERENCE_CLIENTS};

/// The burn-down's and the cost's shapes, from one run.
pub async fn run(
    ctx: &mut Ctx,
    jobs: u64,
    workers: u32,
    processes: u32,
) -> Result<(Shape, Shape), String> {
    let db = ctx.server.fresh().await?;
    ctx.ceilings(&db, workers).await?;

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

    let mut stats = StatsConn::new(&db).await?;
    sqlx::query(&format!("VACUUM ANALYZE {SCHEMA}.jobs"))
        .execute(stats.conn())
        .await
        .map_err(sql_err)?;
    let before = stats.settled_snapshot().await?;
    let per_process = split(workers, processes);
    let specs: Vec<WorkerSpec> = per_process
        .iter()
        .map(|&w| WorkerSpec::Pool {
            url: db.app_url.clone(),
            workers: w,
            overrides: ctx.overrides.clone(),
        })
        .collect();
    let mut children = Children::spawn(&specs)?;
    children.ready().await?;
    let t0 = db_now(&mut stats).await?;
    children.go()?;
    let bar = ctx.bar(
        jobs,
        format!("burn-down: {processes} x {} workers", per_process[0]),
    );
    let mut completed = vec![0u64; specs.len()];
    while completed.iter().sum::<u64>() < jobs {
        if let (i, Message::Progress { completed: n, .. }) = children.next().await? {
            completed[i] = n;
            bar.set_position(completed.iter().sum());
        }
    }
    bar.finish_and_clear();
    let end = wait_completed(&mut stats, jobs).await?;
    let done = children.finish().await?;
    let after = stats.settled_snapshot().await?;
    let cost = Cost::between(&before, &after);
    // The machine is shared: measure the reference ceiling again right
    // after the drain, and judge against the highest of the run.
    let label = format!("right after the {processes}-process burn-down");
    ctx.measure_ceiling(&db, REFERENCE_CLIENTS, &label).await?;
    let ceilings = ctx.ceilings.clone();
    let ceiling = best(&ceilings);

    let drain_s = (end - t0).max(1) as f64 / 1000.0;
    let rate = jobs as f64 / drain_s;
    let ratio = rate / ceiling;
    let lease_writes = cost.claimer_leases.ins + cost.claimer_leases.upd;
    let refreshes: u64 = done
        .iter()
        .filter_map(|d| d["lease_refreshes"].as_u64())
        .sum();
    let acquisitions: u64 = done
        .iter()
        .filter_map(|d| d["lease_acquisitions"].as_u64())
        .sum();
    let lease_per_s = cost.lease_refresh_writes_per_s(acquisitions, processes, drain_s);
    let rates: Vec<String> = done
        .iter()
        .map(|d| thousands(d["jobs_per_s"].as_f64().unwrap_or(0.0)))
        .collect();
    let claims: u64 = done.iter().filter_map(|d| d["claims"].as_u64()).sum();
    let params = json!({
        "jobs": jobs, "workers": workers, "processes": processes,
        "workers_per_process": per_process, "pool": "PoolConfig::new defaults", "dispatcher_overrides": ctx.overrides,
    });
    let burn = json!({
        "params": params,
        "ceiling": ceiling_json(&ceilings),
        "bulk_insert_seconds": insert_s,
        "bulk_insert_jobs_per_s": jobs as f64 / insert_s,
        "drain_seconds": drain_s,
        "total": {
            "jobs_per_s": rate,
            "ceiling_ratio": ratio,
            "claims": claims,
            "jobs_per_claim": jobs as f64 / claims.max(1) as f64,
        },
        "per_process": done,
    });
    let per = |x: i64| x as f64 / jobs as f64;
    let cost_record = json!({
        "params": params,
        "ceiling": ceiling_json(&ceilings),
        "drain_seconds": drain_s,
        "database": if db.own_database { "the shape's own" } else { "shared: other traffic counted" },
        "per_job": cost.per_job(jobs),
        "claimer_lease_writes": lease_writes,
        "claimer_lease_acquisitions": acquisitions,
        "claimer_lease_refresh_writes_per_s_per_claimer": lease_per_s,
        "pool_lease_refreshes": refreshes,
        "active_claimers": processes,
    });
    let burn_rows = vec![Verdict::new(
        format!(
            "burn-down, {} no-op jobs, {workers} workers ({processes} process{})",
            thousands(jobs as f64),
            if processes == 1 { "" } else { "es" }
        ),
        ">= 40% of the ceiling",
        format!(
            "{} jobs/s = {:.0}% of {} (per process: {})",
            thousands(rate),
            ratio * 100.0,
            thousands(ceiling),
            rates.join(", ")
        ),
        Some(ratio >= 0.40),
    )];
    let cost_rows = vec![
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
    ];
    Ok((
        Shape::new(
            &format!("burn-down {processes} x {}", per_process[0]),
            burn,
            burn_rows,
        ),
        Shape::new("cost", cost_record, cost_rows),
    ))
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

    #[test]
    fn workers_split_evenly() {
        assert_eq!(split(64, 1), vec![64]);
        assert_eq!(split(64, 2), vec![32, 32]);
        assert_eq!(split(65, 2), vec![33, 32]);
        assert_eq!(split(1, 2), vec![1, 1]);
    }
}
