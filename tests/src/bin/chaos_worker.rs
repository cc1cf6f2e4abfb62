//! `chaos_worker`: one worker process of the chaos suite.
//!
//! A real [`WorkerPool`] over [`PgBackend`], with the suite's short
//! timings ([`weir_tests::chaos::world_config`], [`pool_config`]), running
//! the suite's two kinds: [`Work`] (sleep) and [`Hold`] (sleep while
//! holding a slot of an N-slot semaphore). Every handler records itself in
//! the execution ledger through connections of its own, so a handler that
//! goes on after it was fenced is recorded too.
//!
//! Configured by the environment (`WEIR_CHAOS_URL`, `WEIR_CHAOS_PROCESS`,
//! `WEIR_CHAOS_WORKERS`, `WEIR_CHAOS_LIFETIME_S`, `WEIR_CHAOS_BROKEN`; see
//! [`weir_tests::chaos`]). Prints `ready {...}` once the pool starts, and
//! `report {...}` (the pool's counters, as JSON) after a graceful shutdown,
//! which SIGTERM, the end of standard input (its driver is gone) or the
//! end of its lifetime starts. Logs (`RUST_LOG`, default `warn`) go to
//! standard error.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::signal::unix::{signal, SignalKind};
use weir::core::ProcessId;
use weir::{wall_clock, HandlerError, JobArgs, JobContext, JobOutcome, Registry, WorkerPool};
use weir_postgres::{PgBackend, PgConfig};
use weir_tests::chaos::{
    pool_config, world_config, Hold, Work, APP_NAME_LEDGER, APP_NAME_POOL, ENV_BROKEN,
    ENV_LIFETIME, ENV_PROCESS, ENV_URL, ENV_WORKERS,
};

/// How long a ledger write keeps retrying (through a restart of the
/// server, say) before the handler gives up.
const LEDGER_PATIENCE: Duration = Duration::from_secs(30);

struct Settings {
    url: String,
    process: ProcessId,
    workers: u32,
    lifetime: Duration,
    ignore_fencing: bool,
    no_wakeups: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}")),
            }
        };
        let process = var(ENV_PROCESS)?;
        let process = process
            .parse::<u64>()
            .map_err(|e| format!("{ENV_PROCESS}={process:?}: {e}"))?;
        let broken = std::env::var(ENV_BROKEN).unwrap_or_default();
        let bugs: Vec<&str> = broken.split(',').filter(|b| !b.is_empty()).collect();
        let known = ["ignore-fencing", "no-wakeups"];
        if let Some(bug) = bugs.iter().find(|b| !known.contains(b)) {
            return Err(format!("{ENV_BROKEN}: no bug {bug:?} (only {known:?})"));
        }
        Ok(Settings {
            url: var(ENV_URL)?,
            process: ProcessId(process),
            workers: u32::try_from(number(ENV_WORKERS, 8)?).map_err(|e| e.to_string())?,
            lifetime: Duration::from_secs(number(ENV_LIFETIME, 900)?),
            ignore_fencing: bugs.contains(&"ignore-fencing"),
            no_wakeups: bugs.contains(&"no-wakeups"),
        })
    }
}

/// The execution ledger, on connections of its own.
struct Ledger {
    pool: PgPool,
    process: i64,
    os_pid: i32,
    next: AtomicI64,
}

impl Ledger {
    /// Retries `write` until it succeeds or [`LEDGER_PATIENCE`] ran out.
    async fn write<F, Fut>(&self, what: &str, mut write: F) -> Result<(), HandlerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
    {
        let started = Instant::now();
        loop {
            match write().await {
                Ok(()) => return Ok(()),
                Err(error) if started.elapsed() < LEDGER_PATIENCE => {
                    tracing::debug!(%error, what, "ledger write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(format!("ledger {what}: {error}").into()),
            }
        }
    }

    /// Records that this attempt's handler started; its sequence number.
    async fn start(&self, ctx: &JobContext, kind: &str) -> Result<i64, HandlerError> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let receipt = ctx.receipt();
        // Stamped once, before the first try: the handler runs from here.
        let at = wall_clock().0;
        // `ON CONFLICT DO NOTHING`: a try whose answer was lost may have
        // landed; the retry must not fail on it.
        let sql = "INSERT INTO chaos.executions \
                   (process, seq, job, epoch, attempt, kind, os_pid, started_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
        let epoch = i64::try_from(receipt.epoch.0).unwrap_or(i64::MAX);
        let attempt = i32::try_from(ctx.attempt()).unwrap_or(i32::MAX);
        self.write("start", || async {
            sqlx::query(sql)
                .bind(self.process)
                .bind(seq)
                .bind(receipt.job.0)
                .bind(epoch)
                .bind(attempt)
                .bind(kind)
                .bind(self.os_pid)
                .bind(at)
                .execute(&self.pool)
                .await
                .map(drop)
        })
        .await?;
        Ok(seq)
    }

    /// Records that the handler finished (`stopped`: its token had fired).
    async fn finish(&self, seq: i64, stopped: bool) {
        let at = wall_clock().0;
        let sql = "UPDATE chaos.executions SET finished_at = $3, stopped = $4 \
                   WHERE process = $1 AND seq = $2";
        let written = self
            .write("finish", || async {
                sqlx::query(sql)
                    .bind(self.process)
                    .bind(seq)
                    .bind(at)
                    .bind(stopped)
                    .execute(&self.pool)
                    .await
                    .map(drop)
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "the ledger lost a finish");
        }
    }

    /// The deliberate bug: completes the job with raw SQL, ignoring its
    /// epoch and state, the way a worker that ignores fencing would.
    async fn complete_ignoring_fencing(&self, job: i64) {
        let sql = "UPDATE weir.jobs SET state = 'completed', finished_at = weir.now_ms(), \
                   run_at = NULL, holder = NULL, claimed_at = NULL, heartbeat_at = NULL, \
                   deadline = NULL, waiting_since = NULL, fail_reason = NULL WHERE id = $1";
        let written = self
            .write("raw completion", || async {
                sqlx::query(sql)
                    .bind(job)
                    .execute(&self.pool)
                    .await
                    .map(drop)
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "the raw completion failed");
        }
    }
}

fn registry(ledger: Arc<Ledger>, ignore_fencing: bool) -> Registry {
    let mut registry = Registry::new();
    let work_ledger = Arc::clone(&ledger);
    registry
        .register(move |job: Work, ctx: JobContext| {
            let ledger = Arc::clone(&work_ledger);
            async move {
                let seq = ledger.start(&ctx, Work::KIND).await?;
                tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
                if ignore_fencing {
                    ledger.complete_ignoring_fencing(ctx.receipt().job.0).await;
                }
                ledger.finish(seq, ctx.is_cancelled()).await;
                Ok(JobOutcome::Complete)
            }
        })
        .expect("a valid kind");
    registry
        .register(move |job: Hold, ctx: JobContext| {
            let ledger = Arc::clone(&ledger);
            async move {
                let seq = ledger.start(&ctx, Hold::KIND).await?;
                // Stops when told: a holder that lost its slot (or its
                // attempt) must not go on as if it held it.
                let stopped = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(job.hold_ms)) => false,
                    () = ctx.cancelled().cancelled() => true,
                };
                ledger.finish(seq, stopped).await;
                if stopped {
                    return Err("stopped before the hold was over".into());
                }
                Ok(JobOutcome::Complete)
            }
        })
        .expect("a valid kind");
    registry
}

/// SIGTERM, the end of standard input, or the end of the lifetime.
async fn shutdown(lifetime: Duration) {
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = eof_rx => tracing::warn!("standard input closed: the driver is gone"),
        () = tokio::time::sleep(lifetime) => tracing::warn!("lifetime over"),
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let options = PgConnectOptions::from_str(&settings.url)
        .map_err(|e| format!("{ENV_URL}: {e}"))?
        // A paused worker must not hold row locks for the whole pause:
        // the server ends a session idle inside a transaction.
        .options([("idle_in_transaction_session_timeout", "1000")]);
    // Lazy: a worker (re)started while the server is down still starts,
    // and its commands fail and are retried until the server is back.
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.clone().application_name(APP_NAME_POOL));
    let ledger = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name(APP_NAME_LEDGER));
    let config = PgConfig {
        world: world_config(),
        // The deliberate bug `no-wakeups`: never listen (a stand-in for a
        // listener that does not come back).
        notify: !settings.no_wakeups,
        ..PgConfig::default()
    };
    let backend = PgBackend::new(pool, config).map_err(|e| e.to_string())?;
    let ledger = Arc::new(Ledger {
        pool: ledger,
        process: i64::try_from(settings.process.0).map_err(|e| e.to_string())?,
        os_pid: i32::try_from(std::process::id()).map_err(|e| e.to_string())?,
        next: AtomicI64::new(0),
    });
    let registry = registry(ledger, settings.ignore_fencing);
    let config = pool_config(settings.process, settings.workers);
    let pool =
        WorkerPool::with_config(Arc::new(backend), registry, config).map_err(|e| e.to_string())?;
    println!(
        "ready {}",
        serde_json::json!({"process": settings.process.0, "pid": std::process::id()})
    );
    let report = pool
        .run(shutdown(settings.lifetime))
        .await
        .map_err(|e| format!("the pool stopped: {e}"))?;
    let (s, m) = (report.stats, report.metrics);
    println!(
        "report {}",
        serde_json::json!({
            "process": settings.process.0,
            "claimed": s.claimed,
            "reported": s.reported,
            "fenced": s.fenced,
            "lost": s.lost,
            "lease_acquisitions": s.lease_acquisitions,
            "maintained": s.maintained,
            "started": m.started,
            "completed": m.completed,
            "retried": m.retried,
            "limited": m.limited,
            "stopped": m.stopped,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("chaos_worker: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chaos_worker: {error}");
            ExitCode::FAILURE
        }
    }
}
