//! `weir demo`: the runtime's worker pools burning down a queue.
//!
//! By default on the embedded in-memory backend (no set-up); with
//! `--database-url` against Postgres. It bulk-enqueues `--jobs` no-op jobs
//! (a few percent fail once and are retried with backoff), starts
//! `--processes` worker pools of `--workers` each, sharing the backend the
//! way separate processes share a database, and shows a progress bar.
//!
//! A quarter of the way through, one pool's storage traffic stalls, right
//! after a claim of its was applied, for longer than the heartbeat
//! staleness limit (as if its process were paused or cut off): storage sees
//! those jobs running and never heartbeated, the maintenance leader rescues
//! them, another pool runs them, and when the stalled pool comes back it
//! runs them too and its late completions are refused by epoch — the
//! "fenced late writes" of the summary. Every job
//! must end completed exactly once in storage; the demo fails otherwise.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use weir::core::{
    Backoff, ClaimerConfig, Command, DispatcherConfig, Enqueued, Job, JobId, JobLimits, Millis,
    NewJob, Outcome, ProcessId, Reject, StateName, Timestamp, WorldConfig,
};
use weir::{
    Backend, BackendError, Client, InsertOptions, JobArgs, JobFilter, JobOutcome, PoolConfig,
    PoolMetrics, PoolReport, Presence, QueueInfo, Registry, Subscription, WorkerInfo, WorkerPool,
};

/// Options of `weir demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Jobs to enqueue (at least 100).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(100..))]
    jobs: u32,
    /// Worker pools, each standing for one process (at least 2: one of
    /// them stalls).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=32))]
    processes: u8,
    /// Handlers per pool.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// Percent of jobs whose first attempt fails (and is retried).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    fail_percent: u32,
    /// Skip the stalled process (and so the fenced writes).
    #[arg(long)]
    no_stall: bool,
    /// Run against this Postgres instead of the in-memory backend (the
    /// schema is created or upgraded first).
    #[cfg(feature = "postgres")]
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// With --database-url: the schema Weir's tables live in.
    #[cfg(feature = "postgres")]
    #[arg(long, default_value = "weir")]
    schema: String,
}

const QUEUE: &str = "demo";
/// Heartbeats older than this are rescued: short, so the stall shows.
const STALE_AFTER: Millis = Millis(2_000);
const STALL_FOR: Duration = Duration::from_millis(3_500);

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u32,
    /// This job's first attempt fails.
    flaky: bool,
}

impl JobArgs for Noop {
    const KIND: &'static str = "demo.noop";
    const QUEUE: &'static str = QUEUE;
    const MAX_ATTEMPTS: u32 = 5;
    const TIMEOUT: Duration = Duration::from_secs(60);
}

fn world_config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 8,
            ..ClaimerConfig::default()
        },
        heartbeat_stale_after: STALE_AFTER,
        backoff: Backoff::new(Millis(100), 2, Millis(2_000), 200).expect("a valid policy"),
        leader_ttl: Millis(5_000),
        limits: JobLimits::default(),
        batch_max: 10_000,
    }
}

/// Runs the demo and prints what happened.
pub fn run(args: &DemoArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        #[cfg(feature = "postgres")]
        if let Some(url) = &args.database_url {
            let backend = connect_postgres(url, &args.schema, args.processes).await?;
            println!(
                "weir demo on Postgres (schema {}, queue {QUEUE:?})",
                args.schema
            );
            return demo(Arc::new(backend), args).await;
        }
        println!("weir demo on the in-memory backend (use --database-url for Postgres)");
        demo(
            Arc::new(weir_memory::MemoryBackend::new(world_config())),
            args,
        )
        .await
    })
}

#[cfg(feature = "postgres")]
async fn connect_postgres(
    url: &str,
    schema: &str,
    processes: u8,
) -> Result<weir_postgres::PgBackend, String> {
    let schema =
        weir_postgres::SchemaName::new(schema.to_string()).map_err(|e| format!("--schema: {e}"))?;
    let config = weir_postgres::PgConfig {
        schema,
        world: world_config(),
        notify: true,
        ..weir_postgres::PgConfig::default()
    };
    let backend = crate::pg::connect(url, 4 + 4 * u32::from(processes), config).await?;
    let report = backend.migrate().await.map_err(|e| e.to_string())?;
    if !report.applied.is_empty() {
        println!("schema migrated to version {}", report.to);
    }
    let leftover = backend
        .queues()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|q| q.queue.as_str() == QUEUE)
        .map(|q| q.unfinished_by_kind.iter().map(|(_, n)| n).sum::<u64>())
        .unwrap_or(0);
    if leftover > 0 {
        return Err(format!(
            "queue {QUEUE:?} has {leftover} unfinished jobs from an earlier run; \
             let them finish (or use another --schema)"
        ));
    }
    Ok(backend)
}

async fn demo<B: Backend>(backend: Arc<B>, args: &DemoArgs) -> Result<(), String> {
    let client = Client::new(Arc::clone(&backend));
    let before = completed_in_queue(&client).await?;
    let started = Instant::now();
    let jobs: Vec<Noop> = (0..args.jobs)
        .map(|n| Noop {
            n,
            flaky: n % 100 < args.fail_percent,
        })
        .collect();
    let inserted = client
        .insert_bulk(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await
        .map_err(|e| format!("enqueue: {e}"))?;
    println!(
        "enqueued {} jobs with the bulk path in {:.2} s",
        inserted.len(),
        started.elapsed().as_secs_f64()
    );
    let stall = Arc::new(Stall::default());
    let mut runs = Vec::new();
    let mut metrics = Vec::new();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    for p in 0..args.processes {
        // The last pool's storage traffic is the one that stalls.
        let stalling = p + 1 == args.processes && !args.no_stall;
        let mut config = pool_config(args.workers)?;
        let (m, run) = if stalling {
            // A stalled leader would stall maintenance too; the rescue is
            // the other pools' to make.
            config.dispatcher.lead = false;
            let wrapped = Arc::new(Stalling {
                inner: Arc::clone(&backend),
                stall: Arc::clone(&stall),
            });
            spawn_pool(wrapped, config, stop.subscribe())?
        } else {
            spawn_pool(Arc::clone(&backend), config, stop.subscribe())?
        };
        metrics.push(m);
        runs.push(run);
    }
    let pools_started = Instant::now();
    let total = u64::from(args.jobs);
    let most_done = watch(&client, &metrics, &stall, total, before, args.no_stall).await?;
    let elapsed = pools_started.elapsed();
    stop.send(()).map_err(|_| "the pools stopped early")?;
    let mut reports = Vec::new();
    for run in runs {
        let report = run.await.map_err(|e| format!("a pool panicked: {e}"))?;
        reports.push(report.map_err(|e| format!("a pool failed: {e}"))?);
    }
    let times = Times {
        all: elapsed,
        most: most_done.saturating_duration_since(pools_started),
    };
    summary(&client, &metrics, &reports, total, before, times).await
}

type PoolRun = tokio::task::JoinHandle<Result<PoolReport, weir::PoolError>>;

fn spawn_pool<B: Backend>(
    backend: Arc<B>,
    config: PoolConfig,
    mut stopped: tokio::sync::broadcast::Receiver<()>,
) -> Result<(Arc<PoolMetrics>, PoolRun), String> {
    let pool = WorkerPool::with_config(backend, registry(), config).map_err(|e| e.to_string())?;
    let metrics = pool.metrics();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.recv().await;
    }));
    Ok((metrics, run))
}

fn pool_config(workers: u32) -> Result<PoolConfig, String> {
    let mut config = PoolConfig::new(QUEUE, workers).map_err(|e| e.to_string())?;
    config.dispatcher = DispatcherConfig {
        poll_interval: Millis(200),
        heartbeat_interval: Millis(500),
        maintenance_interval: Millis(250),
        flush_delay: Millis(5),
        shutdown_timeout: Millis(5_000),
        ..config.dispatcher
    };
    Ok(config)
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(|job: Noop, ctx| async move {
            if job.flaky && ctx.attempt() == 1 {
                return Err(format!("job {} fails its first attempt", job.n).into());
            }
            Ok(JobOutcome::Complete)
        })
        .expect("a valid kind");
    registry
}

async fn completed_in_queue<B: Backend>(client: &Client<B>) -> Result<u64, String> {
    let queues = client.queues().await.map_err(|e| e.to_string())?;
    Ok(queues
        .iter()
        .find(|q| q.queue.as_str() == QUEUE)
        .map_or(0, |q| q.depth(StateName::Completed)))
}

/// How long the burn-down took: to the last job, and to 99% of them (the
/// last ones may be the stalled pool's, which wait for their rescue).
struct Times {
    all: Duration,
    most: Duration,
}

/// Shows progress until every job completed; stalls the last pool once a
/// quarter of the jobs are done. Returns when 99% had completed.
async fn watch<B: Backend>(
    client: &Client<B>,
    metrics: &[Arc<PoolMetrics>],
    stall: &Stall,
    total: u64,
    before: u64,
    no_stall: bool,
) -> Result<Instant, String> {
    let bar = ProgressBar::new(total);
    let mut most_done = None;
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} completed ({per_sec}) {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut armed = no_stall;
    let mut told = no_stall;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = completed_in_queue(client).await? - before;
        bar.set_position(done);
        let fenced: u64 = metrics.iter().map(|m| m.snapshot().fenced).sum();
        bar.set_message(format!("fenced {fenced}"));
        if done * 100 >= total * 99 {
            most_done.get_or_insert_with(Instant::now);
        }
        if done >= total {
            bar.finish();
            return Ok(most_done.expect("set when 99% were done"));
        }
        if !armed && done >= total / 4 {
            armed = true;
            stall.arm();
        }
        if !told && stall.began() {
            told = true;
            bar.println(format!(
                "pool {} stalls for {:.1} s holding the jobs it just claimed (heartbeat \
                 staleness limit {STALE_AFTER}): they will be rescued and its late writes fenced",
                metrics.len(),
                STALL_FOR.as_secs_f64()
            ));
        }
        if Instant::now() > deadline {
            bar.abandon();
            return Err(format!(
                "only {done} of {total} jobs completed in 10 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every pool's pickup latencies merged: p50, p99 and max, in ms.
fn pickup_quantiles(metrics: &[Arc<PoolMetrics>]) -> Result<[u64; 3], String> {
    let mut pickup = metrics[0].pickup_histogram();
    for m in &metrics[1..] {
        pickup
            .add(m.pickup_histogram())
            .map_err(|e| format!("merging histograms: {e}"))?;
    }
    Ok([
        pickup.value_at_quantile(0.5),
        pickup.value_at_quantile(0.99),
        pickup.max(),
    ])
}

async fn summary<B: Backend>(
    client: &Client<B>,
    metrics: &[Arc<PoolMetrics>],
    reports: &[PoolReport],
    total: u64,
    before: u64,
    times: Times,
) -> Result<(), String> {
    let [p50, p99, max] = pickup_quantiles(metrics)?;
    let sum = |f: fn(&PoolReport) -> u64| reports.iter().map(f).sum::<u64>();
    let queue = client
        .queues()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|q| q.queue.as_str() == QUEUE)
        .ok_or("the demo queue vanished")?;
    let completed = queue.depth(StateName::Completed) - before;
    let executions = sum(|r| r.metrics.finished());
    println!();
    println!("summary");
    let rate = |jobs: f64, d: Duration| jobs / d.as_secs_f64().max(0.001);
    println!(
        "  completed        {completed} of {total} jobs in {:.2} s: {:.0} jobs/s",
        times.all.as_secs_f64(),
        rate(completed as f64, times.all)
    );
    println!(
        "                   99% of them in {:.2} s: {:.0} jobs/s (the last may be the \
         stalled pool's, waiting for their rescue)",
        times.most.as_secs_f64(),
        rate(completed as f64 * 0.99, times.most)
    );
    println!(
        "  pickup latency   p50 {p50} ms, p99 {p99} ms, max {max} ms (due -> handler start; \
         the backlog is the wait)"
    );
    println!(
        "  retries          {} (first attempts that failed on purpose)",
        sum(|r| r.metrics.retried)
    );
    println!(
        "  fenced writes    {} (late results and heartbeats refused by epoch)",
        sum(|r| r.stats.fenced)
    );
    println!(
        "  rescued          {} jobs re-run after the stall; {} handler executions in all",
        executions.saturating_sub(total + sum(|r| r.metrics.retried)),
        executions
    );
    println!(
        "  claims           {} batches, {} claimer-lease writes, {} lease acquisitions",
        sum(|r| r.stats.claims),
        sum(|r| r.stats.lease_refreshes),
        sum(|r| r.stats.lease_acquisitions)
    );
    let unfinished: u64 = queue.unfinished_by_kind.iter().map(|(_, n)| n).sum();
    if completed != total || unfinished != 0 {
        return Err(format!(
            "{completed} of {total} completed and {unfinished} unfinished: a job was lost"
        ));
    }
    println!("  every job completed exactly once in storage; none lost");
    Ok(())
}

/// A stall of one pool's storage traffic: armed by the demo, it begins
/// when the pool's next claim that got jobs answers — so the pool holds
/// claimed jobs that storage sees as running and that nobody heartbeats —
/// and lasts `for_`. Its end is in wall-clock milliseconds (0: not begun).
#[derive(Default)]
struct Stall {
    armed: AtomicBool,
    until_ms: AtomicI64,
}

impl Stall {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Begins the stall if it is armed; true if this call began it.
    fn begin_if_armed(&self, for_: Duration) -> bool {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return false;
        }
        let until = weir::wall_clock().0 + for_.as_millis() as i64;
        self.until_ms.store(until, Ordering::SeqCst);
        true
    }

    fn began(&self) -> bool {
        self.until_ms.load(Ordering::SeqCst) > 0
    }

    async fn wait(&self) {
        let until = self.until_ms.load(Ordering::SeqCst);
        let now = weir::wall_clock().0;
        if until > now {
            tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
        }
    }
}

/// A backend whose commands hang while a stall lasts: the pool above it
/// looks, to everyone else, like a process that stopped.
struct Stalling<B> {
    inner: Arc<B>,
    stall: Arc<Stall>,
}

#[async_trait]
impl<B: Backend> Backend for Stalling<B> {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        self.stall.wait().await;
        let outcome = self.inner.execute(command).await?;
        let claimed = matches!(&outcome, Outcome::Claimed(Ok(c)) if !c.jobs.is_empty());
        if claimed && self.stall.begin_if_armed(STALL_FOR) {
            // The claim was applied; its answer arrives after the stall.
            self.stall.wait().await;
        }
        Ok(outcome)
    }

    async fn now(&self) -> Result<Timestamp, BackendError> {
        self.inner.now().await
    }

    fn batch_max(&self) -> usize {
        self.inner.batch_max()
    }

    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        self.inner.enqueue_bulk(jobs).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        self.inner.job(id).await
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        self.inner.jobs(filter).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        self.inner.queues().await
    }

    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        self.inner.announce(presence, ttl).await
    }

    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.inner.retire(process).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        self.inner.workers().await
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, BackendError> {
        self.inner.subscribe().await
    }
}
