//! The child side of `--processes`: what one worker process runs (see
//! `child.rs` for the protocol).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir::core::cmd;
use weir::core::{DispatcherConfig, NewJob, Timestamp};
use weir::{
    Backend, BackendExt, Client, InsertOptions, JobArgs, JobOutcome, PoolConfig, PoolMetrics,
    PoolReport, Registry, WorkerPool,
};

use super::child::{send, Message, Orders, WorkerSpec};
use super::db::backend_at;

/// The benchmark's queue.
pub const QUEUE: &str = "bench";
/// Connections per worker process: claims, results, heartbeats,
/// maintenance and presence each use at most one at a time.
const POOL_CONNECTIONS: u32 = 8;

/// The no-op job every shape runs.
#[derive(Serialize, Deserialize)]
pub struct Noop {
    /// A sequence number, so payloads are not all alike.
    pub n: u64,
}

impl JobArgs for Noop {
    const KIND: &'static str = "bench.noop";
    const QUEUE: &'static str = QUEUE;
}

/// `n` no-op jobs numbered from `from`.
pub fn noop_jobs(from: u64, n: u64) -> Vec<NewJob> {
    (from..from + n)
        .map(|n| {
            weir::new_job(&Noop { n }, &InsertOptions::default(), Timestamp::ZERO)
                .expect("a no-op job is valid")
        })
        .collect()
}

/// `weir bench worker --spec JSON`.
pub fn run(spec: &str) -> Result<(), String> {
    let spec: WorkerSpec =
        serde_json::from_str(spec).map_err(|e| format!("--spec is not a worker spec: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(async {
        let mut orders = Orders::listen();
        match spec {
            WorkerSpec::Pool {
                url,
                workers,
                overrides,
            } => pool(&url, workers, overrides.as_ref(), &mut orders).await,
            WorkerSpec::Enqueue {
                url,
                mode,
                seconds,
                jobs,
            } => enqueue(&url, &mode, seconds, jobs, &mut orders).await,
            WorkerSpec::Herd { url, herd } => super::herd::contend(&url, &herd, &mut orders).await,
        }
    });
    match result {
        Ok(figures) => {
            send(&Message::Done(figures));
            Ok(())
        }
        Err(why) => {
            send(&Message::Failed(why.clone()));
            Err(why)
        }
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(|_job: Noop, _ctx| async move { Ok(JobOutcome::Complete) })
        .expect("a valid kind");
    registry
}

/// A worker pool with the default settings, run from `go` until stopped.
async fn pool(
    url: &str,
    workers: u32,
    overrides: Option<&Value>,
    orders: &mut Orders,
) -> Result<Value, String> {
    let backend = Arc::new(backend_at(url, POOL_CONNECTIONS).await?);
    let mut config = PoolConfig::new(QUEUE, workers).map_err(|e| e.to_string())?;
    if let Some(overrides) = overrides {
        config.dispatcher = with_overrides(&config.dispatcher, overrides)?;
    }
    let process = config.dispatcher.process;
    let pool = WorkerPool::with_config(backend, registry(), config).map_err(|e| e.to_string())?;
    let metrics = pool.metrics();
    send(&Message::Ready);
    if !orders.go().await {
        return Err("stopped before the start".into());
    }
    let go = Instant::now();
    let run = tokio::spawn(pool.run(orders.stopped()));
    let (mut completed, mut last_change) = (0, go);
    let mut sent = Instant::now();
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = metrics.snapshot();
        if now.completed != completed {
            (completed, last_change) = (now.completed, Instant::now());
        }
        if sent.elapsed() >= Duration::from_millis(100) {
            send(&Message::Progress {
                completed: now.completed,
                started: now.started,
            });
            sent = Instant::now();
        }
    }
    let report = run
        .await
        .map_err(|e| format!("the pool panicked: {e}"))?
        .map_err(|e| format!("the pool failed: {e}"))?;
    let busy = last_change.duration_since(go).as_secs_f64();
    let record = PoolProcessRecord::new(process.0, workers, busy, &report, &metrics);
    Ok(serde_json::to_value(&record).expect("a process's record serialises"))
}

/// `config` with the fields named in `overrides` replaced.
pub fn with_overrides(
    config: &DispatcherConfig,
    overrides: &Value,
) -> Result<DispatcherConfig, String> {
    let mut value = serde_json::to_value(config).expect("a config serialises");
    let (Value::Object(fields), Value::Object(changes)) = (&mut value, overrides) else {
        return Err("--dispatcher must be a JSON object".into());
    };
    for (name, changed) in changes {
        if !fields.contains_key(name) {
            return Err(format!(
                "--dispatcher: DispatcherConfig has no field {name:?}"
            ));
        }
        fields.insert(name.clone(), changed.clone());
    }
    serde_json::from_value(value).map_err(|e| format!("--dispatcher: {e}"))
}

/// One producer: single inserts, 128-job batches, or one bulk COPY.
async fn enqueue(
    url: &str,
    mode: &str,
    seconds: f64,
    jobs: u64,
    orders: &mut Orders,
) -> Result<Value, String> {
    let backend = Arc::new(backend_at(url, 2).await?);
    let client = Client::new(Arc::clone(&backend));
    let bulk = if mode == "bulk" {
        noop_jobs(0, jobs)
    } else {
        Vec::new()
    };
    send(&Message::Ready);
    if !orders.go().await {
        return Err("stopped before the start".into());
    }
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut inserted = 0u64;
    match mode {
        "single" => {
            while Instant::now() < stop {
                client
                    .insert(&Noop { n: inserted })
                    .await
                    .map_err(|e| e.to_string())?;
                inserted += 1;
            }
        }
        "batch" => {
            while Instant::now() < stop {
                let jobs = noop_jobs(inserted, 128);
                match backend.run(cmd::Enqueue { jobs }).await {
                    Ok(Ok(done)) => inserted += done.len() as u64,
                    other => return Err(format!("a batch enqueue answered {other:?}")),
                }
            }
        }
        "bulk" => {
            let done = backend
                .enqueue_bulk(bulk)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            inserted = done.len() as u64;
        }
        other => return Err(format!("unknown enqueue mode {other:?}")),
    }
    let elapsed = started.elapsed().as_secs_f64();
    backend.pool().close().await;
    let record = EnqueueProcessRecord {
        pid: std::process::id(),
        mode: mode.to_string(),
        jobs: inserted,
        seconds: elapsed,
        jobs_per_s: inserted as f64 / elapsed.max(1e-9),
    };
    Ok(serde_json::to_value(&record).expect("a process's record serialises"))
}

/// What one worker-pool process reports (an entry of a burn-down's or an
/// offered load's `per_process`).
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct PoolProcessRecord {
    process: u64,
    pid: u32,
    workers: u32,
    completed: u64,
    started: u64,
    busy_seconds: f64,
    jobs_per_s: f64,
    claims: u64,
    claimed: u64,
    jobs_per_claim: f64,
    reported: u64,
    lease_refreshes: u64,
    lease_acquisitions: u64,
    fenced: u64,
    lost: u64,
    maintained: u64,
    pickup_p50_ms: u64,
    pickup_p99_ms: u64,
    pickup_max_ms: u64,
    /// `(value, count)` of every recorded value of the pickup histogram.
    pickup_histogram: Vec<(u64, u64)>,
}

impl PoolProcessRecord {
    fn new(
        process: u64,
        workers: u32,
        busy: f64,
        report: &PoolReport,
        metrics: &PoolMetrics,
    ) -> PoolProcessRecord {
        let pickup = metrics.pickup_histogram();
        let recorded: Vec<(u64, u64)> = pickup
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let (m, stats) = (&report.metrics, &report.stats);
        PoolProcessRecord {
            process,
            pid: std::process::id(),
            workers,
            completed: m.completed,
            started: m.started,
            busy_seconds: busy,
            jobs_per_s: m.completed as f64 / busy.max(1e-9),
            claims: stats.claims,
            claimed: stats.claimed,
            jobs_per_claim: stats.claimed as f64 / stats.claims.max(1) as f64,
            reported: stats.reported,
            lease_refreshes: stats.lease_refreshes,
            lease_acquisitions: stats.lease_acquisitions,
            fenced: stats.fenced,
            lost: stats.lost,
            maintained: stats.maintained,
            pickup_p50_ms: pickup.value_at_quantile(0.5),
            pickup_p99_ms: pickup.value_at_quantile(0.99),
            pickup_max_ms: pickup.max(),
            pickup_histogram: recorded,
        }
    }
}

/// What one enqueuing process reports (an entry of an enqueue mode's
/// `per_process`).
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct EnqueueProcessRecord {
    pid: u32,
    mode: String,
    jobs: u64,
    seconds: f64,
    jobs_per_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    /// The keys a pool process's `json!` wrote before it was typed.
    #[test]
    fn pool_process_record_keeps_its_keys() {
        let keys = [
            "process",
            "pid",
            "workers",
            "completed",
            "started",
            "busy_seconds",
            "jobs_per_s",
            "claims",
            "claimed",
            "jobs_per_claim",
            "reported",
            "lease_refreshes",
            "lease_acquisitions",
            "fenced",
            "lost",
            "maintained",
            "pickup_p50_ms",
            "pickup_p99_ms",
            "pickup_max_ms",
            "pickup_histogram",
        ];
        assert_eq!(key_paths(&PoolProcessRecord::default()), sorted(&keys));
    }

    /// The keys an enqueuing process's `json!` wrote before it was typed.
    #[test]
    fn enqueue_process_record_keeps_its_keys() {
        let keys = ["pid", "mode", "jobs", "seconds", "jobs_per_s"];
        assert_eq!(key_paths(&EnqueueProcessRecord::default()), sorted(&keys));
    }
}
