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
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use weir::core::cmd;

use weir::BackendExt;

use super::burn::{db_now, lease_counts, spawn_pools, split, wait_completed};
use super::ceiling::Ceiling;
use super::child::{Children, Message};
use super::db::{jobs_reloptions, sql_err, BenchDb, Cost, PerJob, StatsConn, SCHEMA};
use super::report::{thousands, Shape, Verdict};
use super::worker::noop_jobs;
use super::{best, CeilingRecord, Ctx};

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
    let mut children = spawn_pools(&db, &ctx.overrides, &per_process).await?;
    let load = offer(
        ctx,
        &db,
        &mut stats,
        &mut children,
        rate,
        seconds,
        &per_process,
    )
    .await?;
    let done = children.finish().await?;
    let after = stats.settled_snapshot().await?;
    let cost = Cost::between(&before, &after);
    let autovacuum = Autovacuum::read_and_reset(&mut stats, naptime_set).await?;
    let (enqueued, completed, backlog) = per_second(&mut stats, load.t0, seconds).await?;
    let params = OfferedParams {
        rate,
        seconds,
        workers,
        processes,
        workers_per_process: per_process,
        producer: "batches of what is due every 25 ms, at most 128 per statement",
        pool: "PoolConfig::new defaults",
        dispatcher_overrides: ctx.overrides.clone(),
    };
    let record = OfferedRecord::new(
        params,
        &ceilings,
        load,
        PerSecond {
            enqueued,
            completed,
            backlog,
        },
        &cost,
        autovacuum,
        done,
    );
    let label = format!("{processes} x {}", record.params.workers_per_process[0]);
    let rows = verdicts(&record, &label);
    Ok(Shape::new(&format!("offered {label}"), &record, rows))
}

/// What the offered load itself saw.
struct Load {
    /// The database clock just before `go`, milliseconds.
    t0: i64,
    /// Jobs the producer enqueued.
    total: u64,
    samples: Vec<Sample>,
}

/// Offers `rate` jobs/s for `seconds` to the ready `children`, sampling
/// once a second, then lets the backlog drain until storage has every
/// job completed.
async fn offer(
    ctx: &Ctx,
    db: &BenchDb,
    stats: &mut StatsConn,
    children: &mut Children,
    rate: u64,
    seconds: f64,
    per_process: &[u32],
) -> Result<Load, String> {
    let producer_backend = Arc::new(db.backend(2).await?);
    let enqueued = Arc::new(AtomicU64::new(0));
    let t0 = db_now(stats).await?;
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
            "offered {} jobs/s to {} x {} workers",
            thousands(rate as f64),
            per_process.len(),
            per_process[0]
        ),
    );
    let mut completed = vec![0u64; per_process.len()];
    let sampling = Sampling {
        started,
        stop,
        rate,
        enqueued: &enqueued,
        bar: &bar,
    };
    let samples = sample(&sampling, stats, children, &mut completed).await?;
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
    wait_completed(stats, total).await?;
    Ok(Load { t0, total, samples })
}

/// What the once-a-second sampling reads and shows.
struct Sampling<'a> {
    started: Instant,
    stop: Instant,
    rate: u64,
    enqueued: &'a AtomicU64,
    bar: &'a ProgressBar,
}

/// Until just after the load's end: the processes' progress into
/// `completed`, and once a second a sample.
async fn sample(
    s: &Sampling<'_>,
    stats: &mut StatsConn,
    children: &mut Children,
    completed: &mut [u64],
) -> Result<Vec<Sample>, String> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval_at(
        (s.started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    while Instant::now() < s.stop + Duration::from_millis(100) {
        tokio::select! {
            message = children.next() => {
                if let (i, Message::Progress { completed: n, .. }) = message? {
                    completed[i] = n;
                }
            }
            _ = tick.tick() => {
                let done: u64 = completed.iter().sum();
                let offered = s.enqueued.load(Ordering::Relaxed);
                let dead = stats.dead_jobs().await?;
                samples.push(Sample {
                    t: s.started.elapsed().as_secs_f64(),
                    enqueued: offered,
                    completed: done,
                    dead_tuples: dead,
                });
                s.bar.set_position(samples.len() as u64);
                s.bar.set_message(format!(
                    "offered {} jobs/s: {} enqueued, {} completed, backlog {}, dead tuples {}",
                    thousands(s.rate as f64), offered, done, offered.saturating_sub(done), dead
                ));
            }
        }
    }
    Ok(samples)
}

/// The processes' pickup latencies, their histograms merged: p50, p99
/// and max, milliseconds.
fn pickup(done: &[Value]) -> (u64, u64, u64) {
    let mut pickup =
        Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000, 3).expect("static bounds are valid");
    for child in done {
        for pair in child["pickup_histogram"].as_array().into_iter().flatten() {
            let (v, n) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            pickup.saturating_record_n(v.max(1), n);
        }
    }
    (
        pickup.value_at_quantile(0.5),
        pickup.value_at_quantile(0.99),
        pickup.max(),
    )
}

/// The `offered` shape's record.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct OfferedRecord {
    params: OfferedParams,
    ceiling: CeilingRecord,
    ceiling_ratio_of_offered: f64,
    total: OfferedTotal,
    per_second: PerSecond,
    samples: Vec<Sample>,
    cost: PerJob,
    claimer_lease_writes: i64,
    claimer_lease_acquisitions: u64,
    claimer_lease_refresh_writes_per_s_per_claimer: f64,
    pool_lease_refreshes: u64,
    retention: &'static str,
    #[serde(flatten)]
    autovacuum: Autovacuum,
    jobs_vacuums: i64,
    /// The worker processes' own records.
    per_process: Vec<Value>,
}

#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct OfferedParams {
    rate: u64,
    seconds: f64,
    workers: u32,
    processes: u32,
    workers_per_process: Vec<u32>,
    producer: &'static str,
    pool: &'static str,
    dispatcher_overrides: Option<Value>,
}

/// The offered load over every process.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct OfferedTotal {
    enqueued: u64,
    completion_rate_median: f64,
    enqueue_rate_median: f64,
    backlog_median: f64,
    pickup_p50_ms: u64,
    pickup_p99_ms: u64,
    pickup_max_ms: u64,
    dead_tuples_max_sampled: i64,
    dead_tuples_end: i64,
}

/// Each whole second's counts, from the jobs' own timestamps.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct PerSecond {
    enqueued: Vec<f64>,
    completed: Vec<f64>,
    backlog: Vec<f64>,
}

/// One once-a-second sample.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct Sample {
    /// Seconds since `go`.
    t: f64,
    enqueued: u64,
    completed: u64,
    dead_tuples: i64,
}

/// The vacuum settings the load ran with (top-level keys of the record).
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct Autovacuum {
    jobs_reloptions: Vec<String>,
    autovacuum_naptime: String,
    autovacuum_naptime_set_by_bench: bool,
}

impl Autovacuum {
    /// The settings in force, read at the end of the load; then the
    /// server's naptime reset if the bench set it.
    async fn read_and_reset(
        stats: &mut StatsConn,
        naptime_set: bool,
    ) -> Result<Autovacuum, String> {
        let jobs_reloptions = jobs_reloptions(stats.conn()).await?;
        let autovacuum_naptime = ctx_setting(stats, "autovacuum_naptime").await;
        if naptime_set {
            set_naptime(stats, None).await?;
        }
        Ok(Autovacuum {
            jobs_reloptions,
            autovacuum_naptime,
            autovacuum_naptime_set_by_bench: naptime_set,
        })
    }
}

impl OfferedRecord {
    fn new(
        params: OfferedParams,
        ceilings: &[Ceiling],
        load: Load,
        per_second: PerSecond,
        cost: &Cost,
        autovacuum: Autovacuum,
        done: Vec<Value>,
    ) -> OfferedRecord {
        let (p50, p99, max) = pickup(&done);
        let (refreshes, acquisitions) = lease_counts(&done);
        let (processes, seconds) = (params.processes, params.seconds);
        OfferedRecord {
            ceiling: CeilingRecord::new(ceilings),
            ceiling_ratio_of_offered: params.rate as f64 / best(ceilings),
            total: OfferedTotal {
                enqueued: load.total,
                completion_rate_median: median(&per_second.completed),
                enqueue_rate_median: median(&per_second.enqueued),
                backlog_median: median(&per_second.backlog),
                pickup_p50_ms: p50,
                pickup_p99_ms: p99,
                pickup_max_ms: max,
                dead_tuples_max_sampled: load
                    .samples
                    .iter()
                    .map(|s| s.dead_tuples)
                    .max()
                    .unwrap_or(0),
                dead_tuples_end: cost.dead_tuples_end,
            },
            per_second,
            samples: load.samples,
            cost: cost.per_job(load.total),
            claimer_lease_writes: cost.claimer_leases.ins + cost.claimer_leases.upd,
            claimer_lease_acquisitions: acquisitions,
            claimer_lease_refresh_writes_per_s_per_claimer: cost.lease_refresh_writes_per_s(
                acquisitions,
                processes,
                seconds,
            ),
            pool_lease_refreshes: refreshes,
            retention:
                "finished jobs kept 24 h (DispatcherConfig::new), so none pruned during the run",
            autovacuum,
            jobs_vacuums: cost.jobs.vacuums,
            per_process: done,
            params,
        }
    }
}

fn verdicts(r: &OfferedRecord, label: &str) -> Vec<Verdict> {
    let (rate, seconds, processes) = (r.params.rate as f64, r.params.seconds, r.params.processes);
    let t = &r.total;
    let completion_median = t.completion_rate_median;
    let (p50, p99, max) = (t.pickup_p50_ms, t.pickup_p99_ms, t.pickup_max_ms);
    let lease_per_s = r.claimer_lease_refresh_writes_per_s_per_claimer;
    let (lease_writes, acquisitions) = (r.claimer_lease_writes, r.claimer_lease_acquisitions);
    let refreshes = r.pool_lease_refreshes;
    let per_process_p99: Vec<String> = r
        .per_process
        .iter()
        .map(|d| format!("{} ms", d["pickup_p99_ms"]))
        .collect();
    let autovacuum = format!(
        "jobs table: {}; server: autovacuum_naptime={}",
        r.autovacuum.jobs_reloptions.join(", "),
        r.autovacuum.autovacuum_naptime
    );
    vec![
        Verdict::new(
            format!(
                "offered {} jobs/s for {seconds:.0} s, {label}: completion rate median",
                thousands(rate)
            ),
            format!(">= 99% of offered ({})", thousands(rate * 0.99)),
            format!(
                "{} jobs/s ({:.1}%); enqueue median {}, backlog median {}",
                thousands(completion_median),
                completion_median / rate * 100.0,
                thousands(t.enqueue_rate_median),
                thousands(t.backlog_median)
            ),
            Some(completion_median >= 0.99 * rate),
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
                thousands(t.dead_tuples_end as f64),
                thousands(t.dead_tuples_max_sampled as f64)
            ),
            None,
        ),
    ]
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
    use crate::report::{key_paths, sorted};

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    /// The keys the offered load's `json!` wrote before it was typed
    /// (`cost`'s own are `db::PerJob`'s test).
    #[test]
    fn offered_record_keeps_its_keys() {
        let record = OfferedRecord {
            samples: vec![Sample::default()],
            ..OfferedRecord::default()
        };
        let keys = [
            "params",
            "params.rate",
            "params.seconds",
            "params.workers",
            "params.processes",
            "params.workers_per_process",
            "params.producer",
            "params.pool",
            "params.dispatcher_overrides",
            "ceiling",
            "ceiling.measured",
            "ceiling.judged_against_jobs_per_s",
            "ceiling_ratio_of_offered",
            "total",
            "total.enqueued",
            "total.completion_rate_median",
            "total.enqueue_rate_median",
            "total.backlog_median",
            "total.pickup_p50_ms",
            "total.pickup_p99_ms",
            "total.pickup_max_ms",
            "total.dead_tuples_max_sampled",
            "total.dead_tuples_end",
            "per_second",
            "per_second.enqueued",
            "per_second.completed",
            "per_second.backlog",
            "samples",
            "samples[].t",
            "samples[].enqueued",
            "samples[].completed",
            "samples[].dead_tuples",
            "cost",
            "claimer_lease_writes",
            "claimer_lease_acquisitions",
            "claimer_lease_refresh_writes_per_s_per_claimer",
            "pool_lease_refreshes",
            "retention",
            "jobs_reloptions",
            "autovacuum_naptime",
            "autovacuum_naptime_set_by_bench",
            "jobs_vacuums",
            "per_process",
        ];
        let paths: Vec<String> = key_paths(&record)
            .into_iter()
            .filter(|k| !k.starts_with("cost."))
            .collect();
        assert_eq!(paths, sorted(&keys));
    }
}
