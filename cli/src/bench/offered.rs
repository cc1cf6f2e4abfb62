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
use weir::core::{Command, Outcome};
use weir::Backend;

use super::burn::{split, wait_completed};
use super::child::{Children, Message, WorkerSpec};
use super::db::{jobs_reloptions, Cost, StatsConn};
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
            match backend.execute(Command::Enqueue { jobs }).await {
                Ok(Outcome::Enqueued(Ok(done))) => {
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

    // Per-second rates from consecutive samples.
    let mut completion = Vec::new();
    let mut enqueue = Vec::new();
    let mut backlog = Vec::new();
    let mut prev = (0.0, 0u64, 0u64);
    for &(t, offered, finished, _) in &samples {
        if t > seconds + 0.5 {
            break;
        }
        let dt = (t - prev.0).max(1e-9);
        enqueue.push((offered - prev.1) as f64 / dt);
        completion.push((finished.saturating_sub(prev.2)) as f64 / dt);
        backlog.push(offered.saturating_sub(finished) as f64);
        prev = (t, offered, finished);
    }
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
        "samples": samples.iter().map(|s| json!({"t": s.0, "enqueued": s.1, "completed": s.2, "dead_tuples": s.3})).collect::<Vec<_>>(),
        "cost": cost.per_job(total),
        "claimer_lease_writes": lease_writes,
        "claimer_lease_acquisitions": acquisitions,
        "claimer_lease_refresh_writes_per_s_per_claimer": lease_per_s,
        "pool_lease_refreshes": refreshes,
        "retention": "finished jobs kept 24 h (DispatcherConfig::new), so none pruned during the run",
        "jobs_reloptions": reloptions,
        "per_process": done,
    });
    let autovacuum = format!(
        "jobs table: {}; server: autovacuum_naptime={}",
        reloptions.join(", "),
        ctx_setting(&mut stats, "autovacuum_naptime").await
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
