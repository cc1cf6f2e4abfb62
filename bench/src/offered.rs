//! Offered load: a producer enqueues R jobs/s (a batch of what is due
//! every 25 ms, at most 128 jobs per statement) for T seconds while W
//! workers in P processes run them.
//!
//! Sampled once a second: jobs enqueued (the producer's count), jobs
//! completed (the handlers' counts, reported by every process), the
//! backlog (enqueued and not yet completed) and the jobs table's dead
//! tuples. Reported: the medians of the per-second completion and enqueue
//! rates and of the backlog; pickup latency (enqueue → handler start,
//! from every process's histogram, merged) p50/p99/max; the cost of the
//! whole run (producer included); dead tuples at the end, with the
//! retention and autovacuum settings in force.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::Row;
use weir::core::cmd;

use weir::BackendExt;

use super::burn::{db_now, split, wait_completed};
use super::child::{Children, Message, WorkerSpec};
use super::db::{jobs_reloptions, sql_err, Cost, StatsConn, SCHEMA};
use super::report::{thousands, Shape, Verdict};
use super::worker::noop_jobs;
use super::{best, ceiling_json, Ctx};

/// The producer's tick and its largest statement.
const TICK: Duration = Duration::from_millis(25);
const BATCH_MAX: u64 = 128;

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Enqueues `rate` jobs/s until `stop`, counting into `enqueued`.
async fn produce(
    backend: Arc<weir_postgres::PgBackend>,
    rate: u64,
    stop: Instant,
    enqueued: Arc<AtomicU64>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut next = started;
    let mut sent = 0u64;
    while Instant::now() < stop {
        let due = (rate as f64 * started.elapsed().as_secs_f64()) as u64;
        while sent < due {
            let n = (due - sent).min(BATCH_MAX);
            let jobs = noop_jobs(sent, n);
            match backend.run(cmd::Enqueue { jobs }).await {
                Ok(Ok(done)) => {
                    sent += done.len() as u64;
                    enqueued.store(sent, Ordering::Relaxed);
                }
                other => return Err(format!("the producer's enqueue answered {other:?}")),
            }
        }
        next += TICK;
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(())
}

/// Jobs enqueued and completed in each whole second of the run, and the
/// backlog at the end of each, from the jobs' own `created_at` and
/// `finished_at` (the database clock; a job counts as completed when its
/// completion is stored). Exact, where the processes' progress reports
/// would be up to one report interval stale.
async fn per_second(
    stats: &mut StatsConn,
    t0: i64,
    seconds: f64,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>), String> {
    let whole = seconds.floor().max(1.0) as i64;
    let rows = sqlx::query(&format!(
        "SELECT s, sum(e)::bigint AS enqueued, sum(c)::bigint AS completed FROM ( \
           SELECT floor((created_at - $1) / 1000.0)::bigint AS s, 1 AS e, 0 AS c \
           FROM {SCHEMA}.jobs \
           UNION ALL \
           SELECT floor((finished_at - $1) / 1000.0)::bigint, 0, 1 \
           FROM {SCHEMA}.jobs WHERE finished_at IS NOT NULL \
         ) x WHERE s >= 0 AND s < $2 GROUP BY s ORDER BY s"
    ))
    .bind(t0)
    .bind(whole)
    .fetch_all(stats.conn())
    .await
    .map_err(sql_err)?;
    let mut enqueued = vec![0i64; whole as usize];
    let mut completed = vec![0i64; whole as usize];
    for row in rows {
        let s: i64 = row.get("s");
        enqueued[s as usize] = row.get("enqueued");
        completed[s as usize] = row.get("completed");
    }
    let (mut queued, mut backlog) = (0i64, Vec::new());
    for (e, c) in enqueued.iter().zip(&completed) {
        queued += e - c;
        backlog.push(queued as f64);
    }
    let as_f64 = |v: Vec<i64>| v.into_iter().map(|x| x as f64).collect::<Vec<_>>();
    Ok((as_f64(enqueued), as_f64(completed), backlog))
}

/// `weir bench offered`.
pub async fn run(
    ctx: &mut Ctx,
    rate: u64,
    seconds: f64,
    workers: u32,
    processes: u32,
) -> Result<Shape, String> {
    let db = ctx.server.fresh().await?;
    let ceilings = ctx.ceilings(&db, workers).await?;
    let mut stats = StatsConn::new(&db).await?;
    // On its own throwaway server the bench runs the offered load with
    // Weir's recommended autovacuum_naptime, 1 s (README: deployment
    // notes): the launcher then visits the database every second, so the
    // jobs table's thresholds, not the default one-minute nap, decide when
    // it is vacuumed. A server given by --database-url is left alone.
    let naptime_set = db.own_database && ctx.naptime.is_some();
    if naptime_set {
        set_naptime(&mut stats, ctx.naptime.as_deref()).await?;
    }
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
    let producer_backend = Arc::new(db.backend(2).await?);
    let enqueued = Arc::new(AtomicU64::new(0));
    let t0 = db_now(&mut stats).await?;
    children.go()?;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let producer = tokio::spawn(produce(
        Arc::clone(&producer_backend),
        rate,
        stop,
        Arc::clone(&enqueued),
    ));
    let bar = ctx.bar(
        (seconds.ceil()) as u64,
        format!(
            "offered {} jobs/s to {processes} x {} workers",
            thousands(rate as f64),
            per_process[0]
        ),
    );
    let mut completed = vec![0u64; specs.len()];
    let mut samples: Vec<(f64, u64, u64, i64)> = Vec::new();
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    while Instant::now() < stop + Duration::from_millis(100) {
        tokio::select! {
            message = children.next() => {
                if let (i, Message::Progress { completed: n, .. }) = message? {
                    completed[i] = n;
                }
            }
            _ = tick.tick() => {
                let done: u64 = completed.iter().sum();
                let offered = enqueued.load(Ordering::Relaxed);
                let dead = stats.dead_jobs().await?;
                samples.push((started.elapsed().as_secs_f64(), offered, done, dead));
                bar.set_position(samples.len() as u64);
                bar.set_message(format!(
                    "offered {} jobs/s: {} enqueued, {} completed, backlog {}, dead tuples {}",
                    thousands(rate as f64), offered, done, offered.saturating_sub(done), dead
                ));
            }
        }
    }
    producer
        .await
        .map_err(|e| format!("the producer panicked: {e}"))??;
    producer_backend.pool().close().await;
    let total = enqueued.load(Ordering::Relaxed);
    // Let the backlog drain, then check storage has every job completed.
    let drain_limit = Instant::now() + Duration::from_secs(60);
    while completed.iter().sum::<u64>() < total && Instant::now() < drain_limit {
        if let (i, Message::Progress { completed: n, .. }) = children.next().await? {
            completed[i] = n;
        }
    }
    bar.finish_and_clear();
    wait_completed(&mut stats, total).await?;
    let done = children.finish().await?;
    let after = stats.settled_snapshot().await?;
    let cost = Cost::between(&before, &after);
    let reloptions = jobs_reloptions(stats.conn()).await?;
    let naptime = ctx_setting(&mut stats, "autovacuum_naptime").await;
    if naptime_set {
        set_naptime(&mut stats, None).await?;
    }

    let (enqueue, completion, backlog) = per_second(&mut stats, t0, seconds).await?;
    let dead_max = samples.iter().map(|s| s.3).max().unwrap_or(0);
    let mut pickup =
        Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000, 3).expect("static bounds are valid");
    for child in &done {
        for pair in child["pickup_histogram"].as_array().into_iter().flatten() {
            let (v, n) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            pickup.saturating_record_n(v.max(1), n);
        }
    }
    let (p50, p99, max) = (
        pickup.value_at_quantile(0.5),
        pickup.value_at_quantile(0.99),
        pickup.max(),
    );
    let completion_median = median(&completion);
    let lease_writes = cost.claimer_leases.ins + cost.claimer_leases.upd;
    let refreshes: u64 = done
        .iter()
        .filter_map(|d| d["lease_refreshes"].as_u64())
        .sum();
    let acquisitions: u64 = done
        .iter()
        .filter_map(|d| d["lease_acquisitions"].as_u64())
        .sum();
    let lease_per_s = cost.lease_refresh_writes_per_s(acquisitions, processes, seconds);
    let label = format!("{processes} x {}", per_process[0]);
    let per_process_p99: Vec<String> = done
        .iter()
        .map(|d| format!("{} ms", d["pickup_p99_ms"]))
        .collect();
    let record = json!({
        "params": {
            "rate": rate, "seconds": seconds, "workers": workers, "processes": processes,
            "workers_per_process": per_process, "producer": "batches of what is due every 25 ms, at most 128 per statement",
            "pool": "PoolConfig::new defaults", "dispatcher_overrides": ctx.overrides,
        },
        "ceiling": ceiling_json(&ceilings),
        "ceiling_ratio_of_offered": rate as f64 / best(&ceilings),
        "total": {
            "enqueued": total,
            "completion_rate_median": completion_median,
            "enqueue_rate_median": median(&enqueue),
            "backlog_median": median(&backlog),
            "pickup_p50_ms": p50, "pickup_p99_ms": p99, "pickup_max_ms": max,
            "dead_tuples_max_sampled": dead_max,
            "dead_tuples_end": cost.dead_tuples_end,
        },
        "per_second": { "enqueued": enqueue, "completed": completion, "backlog": backlog },
        "samples": samples.iter().map(|s| json!({"t": s.0, "enqueued": s.1, "completed": s.2, "dead_tuples": s.3})).collect::<Vec<_>>(),
        "cost": cost.per_job(total),
        "claimer_lease_writes": lease_writes,
        "claimer_lease_acquisitions": acquisitions,
        "claimer_lease_refresh_writes_per_s_per_claimer": lease_per_s,
        "pool_lease_refreshes": refreshes,
        "retention": "finished jobs kept 24 h (DispatcherConfig::new), so none pruned during the run",
        "jobs_reloptions": reloptions,
        "autovacuum_naptime": naptime,
        "autovacuum_naptime_set_by_bench": naptime_set,
        "jobs_vacuums": cost.jobs.vacuums,
        "per_process": done,
    });
    let autovacuum = format!(
        "jobs table: {}; server: autovacuum_naptime={}",
        reloptions.join(", "),
        naptime
    );
    let rows = vec![
        Verdict::new(
            format!(
                "offered {} jobs/s for {seconds:.0} s, {label}: completion rate median",
                thousands(rate as f64)
            ),
            format!(">= 99% of offered ({})", thousands(rate as f64 * 0.99)),
            format!(
                "{} jobs/s ({:.1}%); enqueue median {}, backlog median {}",
                thousands(completion_median),
                completion_median / rate as f64 * 100.0,
                thousands(median(&enqueue)),
                thousands(median(&backlog))
            ),
            Some(completion_median >= 0.99 * rate as f64),
        ),
        Verdict::new(
            format!("offered, {label}: pickup latency p50 / p99 / max"),
            "p99 <= 25 ms",
            format!(
                "{p50} / {p99} / {max} ms (p99 per process: {})",
                per_process_p99.join(", ")
            ),
            Some(p99 <= 25),
        ),
        Verdict::new(
            format!("offered, {label}: claimer-lease row writes"),
            "<= 4 /s per active claimer",
            format!(
                "{lease_per_s:.2} /s refreshing ({lease_writes} writes: {acquisitions} \
                 acquisitions, {processes} releases, the rest refreshes; the pools counted \
                 {refreshes} refreshes)"
            ),
            Some(lease_per_s <= 4.0),
        ),
        Verdict::new(
            format!("offered, {label}: dead tuples in jobs"),
            "bounded (reported with the settings)",
            format!(
                "{} at the end, at most {} sampled; {autovacuum}; retention 24 h",
                thousands(cost.dead_tuples_end as f64),
                thousands(dead_max as f64)
            ),
            None,
        ),
    ];
    Ok(Shape::new(&format!("offered {label}"), record, rows))
}

/// Sets (or with `None` resets) the server's `autovacuum_naptime`.
async fn set_naptime(stats: &mut StatsConn, value: Option<&str>) -> Result<(), String> {
    let sql = match value {
        Some(v) => format!("ALTER SYSTEM SET autovacuum_naptime = '{v}'"),
        None => "ALTER SYSTEM RESET autovacuum_naptime".to_string(),
    };
    sqlx::query(&sql)
        .execute(stats.conn())
        .await
        .map_err(sql_err)?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(stats.conn())
        .await
        .map_err(sql_err)?;
    // The postmaster reloads asynchronously.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn ctx_setting(stats: &mut StatsConn, name: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
        .bind(name)
        .fetch_one(stats.conn())
        .await
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
