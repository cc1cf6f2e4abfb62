//! Regression tests for defects that lived outside the checked core: in the
//! runtime's async shell, the glue between dispatcher and backend, and the
//! pool's use of clocks. Each test is named after the behaviour it pins
//! down; each failed on the code before its fix (the failing lines are in
//! the CHANGELOG's notes for issue 12).
//!
//! Executions are counted by a [`Ledger`]: a handler registers itself for
//! as long as its future lives (a guard that drops with the future, so an
//! aborted handler leaves the ledger too), which tells how many executions
//! of one job were live at once and whether any handler outlived the pool
//! that ran it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir::core::cmd;
use weir::core::{
    Backoff, Command, DispatcherConfig, InvalidDispatcherConfig, JobId, JobState, Millis, Outcome,
    ProcessId, QueueName, StateName, Timestamp, WorldConfig,
};
use weir::{
    Backend, BackendError, BackendExt, Client, InsertOptions, InvalidPoolConfig, JobArgs,
    JobFilter, JobOutcome, PoolConfig, PoolError, Registry, WorkerPool,
};
use weir_memory::{Clock, MemoryBackend, SystemClock};
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig};

// ---------------------------------------------------------------- helpers

/// Live executions per job, the most ever live at once, and how many
/// handlers are live in all.
#[derive(Default)]
struct Ledger {
    live: Mutex<BTreeMap<u32, u32>>,
    most: AtomicU32,
    handlers: AtomicU32,
    runs: AtomicU32,
}

struct Entered {
    ledger: Arc<Ledger>,
    tag: u32,
}

impl Ledger {
    fn enter(self: &Arc<Ledger>, tag: u32) -> Entered {
        let mut live = self.live.lock().unwrap();
        let n = live.entry(tag).or_default();
        *n += 1;
        self.most.fetch_max(*n, Ordering::SeqCst);
        self.handlers.fetch_add(1, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
        Entered {
            ledger: Arc::clone(self),
            tag,
        }
    }

    fn most_live_at_once(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }

    fn live_handlers(&self) -> u32 {
        self.handlers.load(Ordering::SeqCst)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        *self.ledger.live.lock().unwrap().get_mut(&self.tag).unwrap() -= 1;
        self.ledger.handlers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job that runs for `ms` and then does what `then` says, registering
/// itself in the ledger while it lives. It ignores its cancellation token:
/// it is the uncooperative handler a pool must still contain.
#[derive(Clone, Serialize, Deserialize)]
struct Work {
    tag: u32,
    ms: u64,
    then: Then,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Then {
    Complete,
    Cancel,
    /// Fail the first attempt with an error message holding a NUL.
    FailWithNulOnce,
}

impl JobArgs for Work {
    const KIND: &'static str = "outside.work";
    const MAX_ATTEMPTS: u32 = 3;
}

fn registry(ledger: &Arc<Ledger>) -> Registry {
    let ledger = Arc::clone(ledger);
    let mut registry = Registry::new();
    registry
        .register(move |job: Work, ctx| {
            let ledger = Arc::clone(&ledger);
            async move {
                let _entered = ledger.enter(job.tag);
                tokio::time::sleep(Duration::from_millis(job.ms)).await;
                match job.then {
                    Then::Complete => Ok(JobOutcome::Complete),
                    Then::Cancel => Ok(JobOutcome::Cancel),
                    Then::FailWithNulOnce if ctx.attempt() == 1 => {
                        Err("the upstream said \0 and hung up".into())
                    }
                    Then::FailWithNulOnce => Ok(JobOutcome::Complete),
                }
            }
        })
        .unwrap();
    registry
}

fn work(tag: u32, ms: u64, then: Then) -> Work {
    Work { tag, ms, then }
}

fn dispatcher(process: u64, workers: u32) -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Millis(20),
        flush_delay: Millis(5),
        maintenance_interval: Millis(25),
        heartbeat_interval: Millis(100),
        shutdown_timeout: Millis(2_000),
        retry_after: Millis(20),
        ..DispatcherConfig::new(
            ProcessId(process),
            QueueName::new("default").unwrap(),
            workers,
        )
    }
}

fn pool_config(dispatcher: DispatcherConfig) -> PoolConfig {
    PoolConfig::from_dispatcher(DispatcherConfig {
        stop_grace: Millis(300),
        ..dispatcher
    })
}

fn world(batch_max: usize) -> WorldConfig {
    WorldConfig {
        backoff: Backoff::constant(Millis(10)),
        batch_max,
        ..WorldConfig::default()
    }
}

type Stop = tokio::sync::oneshot::Sender<()>;
type Run = tokio::task::JoinHandle<Result<weir::PoolReport, PoolError>>;

fn start<B: Backend>(backend: &Arc<B>, registry: Registry, config: PoolConfig) -> (Stop, Run) {
    let pool = WorkerPool::with_config(Arc::clone(backend), registry, config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

async fn all_jobs<B: Backend>(client: &Client<B>) -> Vec<weir::core::Job> {
    let filter = JobFilter {
        limit: JobFilter::LIMIT_MAX,
        ..JobFilter::default()
    };
    client.jobs(&filter).await.unwrap()
}

/// Waits until every job is in one of `states`, or fails after `within`.
async fn settle<B: Backend>(client: &Client<B>, within: Duration, states: &[StateName]) {
    let deadline = Instant::now() + within;
    loop {
        let jobs = all_jobs(client).await;
        if !jobs.is_empty() && jobs.iter().all(|j| states.contains(&j.state_name())) {
            return;
        }
        let now: Vec<_> = jobs.iter().map(|j| (j.id.0, j.state_name())).collect();
        assert!(
            Instant::now() < deadline,
            "jobs did not settle into {states:?} within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn postgres(world: WorldConfig) -> (TestDatabase, Arc<PgBackend>) {
    let db = test_database().await;
    let config = PgConfig {
        world,
        ..PgConfig::default()
    };
    let backend = PgBackend::connect(db.url_as_app_user(), 12, config)
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    (db, Arc::new(backend))
}

/// A storage clock `offset_ms` away from this machine's wall clock.
struct Skewed {
    offset_ms: i64,
}

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().0 + self.offset_ms)
    }
}

// ------------------------------------------------- 1: Cancel on Postgres

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_cancels_its_job_leaves_the_pool_running_on_postgres() {
    let (_db, backend) = postgres(world(10_000)).await;
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let cancelling = client.insert(&work(0, 10, Then::Cancel)).await.unwrap().id;
    for tag in 1..=20 {
        client.insert(&work(tag, 50, Then::Complete)).await.unwrap();
    }
    let (stop, run) = start(&backend, registry(&ledger), pool_config(dispatcher(1, 8)));
    settle(
        &client,
        Duration::from_secs(10),
        &[StateName::Completed, StateName::Cancelled],
    )
    .await;
    assert!(!run.is_finished(), "the pool is still running");
    let job = client.job(cancelling).await.unwrap().unwrap();
    assert_eq!(job.state_name(), StateName::Cancelled);
    assert_eq!(job.attempt.0, 1, "cancelled by its first attempt");
    stop.send(()).unwrap();
    run.await.unwrap().expect("a clean shutdown");
}

// -------------- 1: a fatal command ends the pool only after it cleaned up

/// The memory backend, but one kind of command answers `Misconfigured`,
/// as `PgBackend` answered a command it had no arm for.
struct Refusing {
    inner: MemoryBackend,
    refuse: &'static str,
}

#[async_trait::async_trait]
impl Backend for Refusing {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        if weir::core::command_name(&command) == self.refuse {
            return Err(BackendError::Misconfigured(format!(
                "command {} is not supported",
                self.refuse
            )));
        }
        self.inner.execute(command).await
    }
    async fn now(&self) -> Result<Timestamp, BackendError> {
        self.inner.now().await
    }
    fn batch_max(&self) -> usize {
        self.inner.batch_max()
    }
    async fn enqueue_bulk(
        &self,
        jobs: Vec<weir::core::NewJob>,
    ) -> Result<Result<Vec<weir::core::Enqueued>, weir::core::Reject>, BackendError> {
        self.inner.enqueue_bulk(jobs).await
    }
    async fn job(&self, id: JobId) -> Result<Option<weir::core::Job>, BackendError> {
        self.inner.job(id).await
    }
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<weir::core::Job>, BackendError> {
        self.inner.jobs(filter).await
    }
    async fn queues(&self) -> Result<Vec<weir::QueueInfo>, BackendError> {
        self.inner.queues().await
    }
    async fn announce(&self, p: &weir::Presence, ttl: Duration) -> Result<(), BackendError> {
        self.inner.announce(p, ttl).await
    }
    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.inner.retire(process).await
    }
    async fn workers(&self) -> Result<Vec<weir::WorkerInfo>, BackendError> {
        self.inner.workers().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_command_ends_the_pool_only_after_it_flushed_and_resigned() {
    let backend = Arc::new(Refusing {
        inner: MemoryBackend::new(world(10_000)),
        refuse: "cancel_attempts",
    });
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let mut slow = Vec::new();
    for tag in 1..=6 {
        slow.push(
            client
                .insert(&work(tag, 400, Then::Complete))
                .await
                .unwrap()
                .id,
        );
    }
    let poison = client.insert(&work(0, 50, Then::Cancel)).await.unwrap().id;
    let (_stop, run) = start(&backend, registry(&ledger), pool_config(dispatcher(7, 8)));
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the pool ends")
        .unwrap();
    assert!(
        matches!(
            ended,
            Err(PoolError::Backend(BackendError::Misconfigured(_)))
        ),
        "the run ends with the misconfiguration: {ended:?}"
    );
    assert_eq!(ledger.live_handlers(), 0, "no handler outlives the run");
    for id in slow {
        let job = client.job(id).await.unwrap().unwrap();
        assert_eq!(
            job.state_name(),
            StateName::Completed,
            "job {id}: a result finished in the same process is flushed, not dropped"
        );
    }
    let job = client.job(poison).await.unwrap().unwrap();
    assert_eq!(
        job.state_name(),
        StateName::Running,
        "its answer never came"
    );
    let (leader, claimers) = backend.inner.inspect(|w| {
        let now = w.now();
        let claimers: usize = w.all_claimers().map(|(_, t)| t.active(now)).sum();
        (w.leadership().leader_at(now), claimers)
    });
    assert_eq!(leader, None, "the dead pool resigned its leadership");
    assert_eq!(claimers, 0, "and released its claimer lease");
}

// ------------------------------------------------------- 2: shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_a_job_back_only_after_its_handler_really_ended() {
    let backend = Arc::new(MemoryBackend::new(world(10_000)));
    let client = Client::new(Arc::clone(&backend));
    let (ledger_a, ledger_b) = (Arc::new(Ledger::default()), Arc::new(Ledger::default()));
    // One shared per-job count across both pools.
    let shared = Arc::new(Ledger::default());
    let both = |own: &Arc<Ledger>| {
        let (own, shared) = (Arc::clone(own), Arc::clone(&shared));
        let mut registry = Registry::new();
        registry
            .register(move |job: Work, _ctx| {
                let (own, shared) = (Arc::clone(&own), Arc::clone(&shared));
                async move {
                    let _a = own.enter(job.tag);
                    let _b = shared.enter(job.tag);
                    tokio::time::sleep(Duration::from_millis(job.ms)).await;
                    Ok(JobOutcome::Complete)
                }
            })
            .unwrap();
        registry
    };
    let limited = |process| {
        let mut d = dispatcher(process, 4);
        d.shutdown_timeout = Millis(100);
        pool_config(d).queue_limit("default", 1).unwrap()
    };
    client
        .insert(&work(0, 1_500, Then::Complete))
        .await
        .unwrap();
    let (stop_a, run_a) = start(&backend, both(&ledger_a), limited(1));
    wait_until("pool A runs the job", Duration::from_secs(5), || {
        ledger_a.live_handlers() == 1
    })
    .await;
    let (stop_b, run_b) = start(&backend, both(&ledger_b), limited(2));
    stop_a.send(()).unwrap();
    run_a.await.unwrap().expect("pool A shuts down");
    assert_eq!(
        ledger_a.live_handlers(),
        0,
        "no handler of pool A still runs after its run() returned"
    );
    settle(&client, Duration::from_secs(10), &[StateName::Completed]).await;
    stop_b.send(()).unwrap();
    run_b.await.unwrap().expect("pool B shuts down");
    assert_eq!(
        shared.most_live_at_once(),
        1,
        "never two live executions of the job under a limit of 1"
    );
}

// ------------------------------------------------ 3: deadlines and clocks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_clock_ahead_of_storage_does_not_time_out_every_attempt() {
    // Storage's clock is 10 s behind this worker's wall clock.
    let backend = Arc::new(MemoryBackend::with_clock(
        world(10_000),
        Skewed { offset_ms: -10_000 },
    ));
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let options = InsertOptions {
        timeout: Some(Duration::from_secs(5)),
        ..InsertOptions::default()
    };
    let id = client
        .insert_with(&work(0, 100, Then::Complete), options)
        .await
        .unwrap()
        .id;
    let (stop, run) = start(&backend, registry(&ledger), pool_config(dispatcher(1, 4)));
    settle(
        &client,
        Duration::from_secs(10),
        &[StateName::Completed, StateName::Failed],
    )
    .await;
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(
        job.state_name(),
        StateName::Completed,
        "{:?}",
        job.last_error()
    );
    assert_eq!(
        job.attempt.0, 1,
        "its 100 ms fit its 5 s budget the first time"
    );
    assert_eq!(report.timeouts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_clock_behind_storage_stops_its_handler_by_storages_deadline() {
    // Storage's clock is 6 s ahead of this worker's wall clock.
    let backend = Arc::new(MemoryBackend::with_clock(
        world(10_000),
        Skewed { offset_ms: 6_000 },
    ));
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let options = InsertOptions {
        timeout: Some(Duration::from_millis(500)),
        ..InsertOptions::default()
    };
    client
        .insert_with(&work(0, 2_000, Then::Complete), options)
        .await
        .unwrap();
    let runs: Vec<_> = (1..=2)
        .map(|p| start(&backend, registry(&ledger), pool_config(dispatcher(p, 4))))
        .collect();
    // Every attempt times out: after three the job has failed for good.
    settle(&client, Duration::from_secs(15), &[StateName::Failed]).await;
    for (stop, run) in runs {
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
    }
    assert_eq!(
        ledger.most_live_at_once(),
        1,
        "a timed-out attempt is stopped before storage hands the job out again"
    );
}

// ------------------------------------------------------------- 5: NUL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_an_error_message_fails_only_that_attempt_on_postgres() {
    let (_db, backend) = postgres(world(10_000)).await;
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let nul = client
        .insert(&work(0, 100, Then::FailWithNulOnce))
        .await
        .unwrap()
        .id;
    for tag in 1..=9 {
        client
            .insert(&work(tag, 100, Then::Complete))
            .await
            .unwrap();
    }
    let (stop, run) = start(&backend, registry(&ledger), pool_config(dispatcher(1, 16)));
    settle(&client, Duration::from_secs(10), &[StateName::Completed]).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
    let job = client.job(nul).await.unwrap().unwrap();
    assert_eq!(job.attempt.0, 2, "its first attempt failed, its second ran");
    let error = job.last_error().cloned().expect("the failure was recorded");
    assert_eq!(error.message, "the upstream said \u{FFFD} and hung up");
}

// -------------------------------------------- 6: forged cancel wake-ups

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cancel_notification_does_not_stop_a_live_handler_on_postgres() {
    let (db, backend) = postgres(world(10_000)).await;
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let id = client
        .insert(&work(0, 800, Then::Complete))
        .await
        .unwrap()
        .id;
    let mut config = dispatcher(1, 4);
    // Long, so that only a notification could stop the handler early.
    config.heartbeat_interval = Millis(30_000);
    let (stop, run) = start(&backend, registry(&ledger), pool_config(config));
    wait_until("the job runs", Duration::from_secs(5), || {
        ledger.live_handlers() == 1
    })
    .await;
    let job = client.job(id).await.unwrap().unwrap();
    let JobState::Running { holder, .. } = job.state else {
        panic!("running: {:?}", job.state)
    };
    // Any role that can connect can send this; it is not storage's word.
    let forged = format!("c:{}:{}:{}", id.0, job.epoch.0, holder.0);
    let pool = db.pool().await;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(format!("weir_{}", backend.schema().as_str()))
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();
    settle(&client, Duration::from_secs(5), &[StateName::Completed]).await;
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    let job = client.job(id).await.unwrap().unwrap();
    assert_eq!(job.attempt.0, 1, "the first attempt's result was accepted");
    assert_eq!(report.metrics.stopped, 0, "no handler was stopped");
}

// ------------------------------------------ 8: the backend's batch limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_cut_to_the_backends_batch_limit() {
    let world = WorldConfig {
        heartbeat_stale_after: Millis(500),
        ..world(4)
    };
    let backend = Arc::new(MemoryBackend::new(world));
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    for tag in 0..8 {
        client
            .insert(&work(tag, 1_200, Then::Complete))
            .await
            .unwrap();
    }
    let mut config = dispatcher(1, 8);
    config.claim_batch_max = 4;
    config.flush_max = 4;
    // Maintenance is this test's, in batches the backend takes, so a
    // stale job is rescued whatever the pool does.
    config.lead = false;
    let (stop, run) = start(&backend, registry(&ledger), pool_config(config));
    let maintenance = tokio::spawn({
        let backend = Arc::clone(&backend);
        async move {
            loop {
                let process = ProcessId(99);
                if let Ok(Ok(leader)) = backend.run(cmd::LeaderElect { process }).await {
                    let rescue = Command::Rescue(cmd::Rescue {
                        leader,
                        draw: 0,
                        max: 4,
                    });
                    backend.execute(rescue).await.unwrap();
                    let promote = Command::Promote(cmd::Promote { leader, max: 4 });
                    backend.execute(promote).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });
    settle(&client, Duration::from_secs(10), &[StateName::Completed]).await;
    maintenance.abort();
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    for job in all_jobs(&client).await {
        assert_eq!(
            job.attempt.0, 1,
            "job {}: heartbeated, never rescued as stale",
            job.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_fits_a_backend_batch_limit_below_a_thousand() {
    let backend = Arc::new(MemoryBackend::new(world(100)));
    let client = Client::new(Arc::clone(&backend));
    let ledger = Arc::new(Ledger::default());
    let options = InsertOptions {
        delay: Some(Duration::from_millis(200)),
        ..InsertOptions::default()
    };
    client
        .insert_with(&work(0, 10, Then::Complete), options)
        .await
        .unwrap();
    let mut config = dispatcher(1, 8);
    config.claim_batch_max = 64;
    config.flush_max = 64;
    let (stop, run) = start(&backend, registry(&ledger), pool_config(config));
    settle(&client, Duration::from_secs(5), &[StateName::Completed]).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_pool_whose_batches_exceed_the_backends_limit_is_refused_before_it_starts() {
    let backend = Arc::new(MemoryBackend::new(world(4)));
    let ledger = Arc::new(Ledger::default());
    for (claim, flush) in [(128, 4), (4, 128)] {
        let mut config = dispatcher(1, 8);
        config.claim_batch_max = claim;
        config.flush_max = flush;
        match WorkerPool::with_config(Arc::clone(&backend), registry(&ledger), pool_config(config))
        {
            Err(PoolError::Config(InvalidPoolConfig::Dispatcher(
                e @ InvalidDispatcherConfig::BatchOverBackendLimit {
                    setting,
                    value,
                    max: 4,
                },
            ))) => {
                assert_eq!(value, claim.max(flush as u32) as usize);
                let message = e.to_string();
                assert!(
                    message.contains(setting) && message.contains('4'),
                    "{message}"
                );
            }
            Err(other) => panic!("claim {claim}, flush {flush}: expected a typed refusal: {other}"),
            Ok(_) => panic!("claim {claim}, flush {flush}: the pool was built"),
        }
    }
}
