//! The worker pool end to end over a backend that is the reference world
//! behind a lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::core::cmd;
use weir::core::{
    Command, DispatcherConfig, Enqueued, Job, JobId, Millis, NewJob, Outcome, ProcessId, QueueName,
    Reject, StateName, Timestamp, World, WorldConfig,
};
use weir::{
    Backend, BackendError, Client, InsertOptions, JobArgs, JobFilter, JobOutcome, Presence,
    QueueInfo, Registry, WorkerInfo, WorkerPool,
};

/// The reference world behind a lock on the wall clock, with the
/// runtime's reference reads; no presence and no wake-ups (workers poll).
struct WorldBackend {
    world: Mutex<World>,
    workers: Mutex<Vec<WorkerInfo>>,
}

#[async_trait::async_trait]
impl Backend for WorldBackend {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        let mut world = self.world.lock().unwrap();
        Ok(world.apply(weir::wall_clock(), command))
    }

    async fn now(&self) -> Result<Timestamp, BackendError> {
        Ok(weir::wall_clock())
    }

    fn batch_max(&self) -> usize {
        self.world.lock().unwrap().config().batch_max
    }

    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let mut world = self.world.lock().unwrap();
        let (now, config) = (weir::wall_clock(), world.config().clone());
        Ok(weir::core::reads::enqueue_bulk(
            now,
            config.batch_max,
            &config.limits,
            jobs,
            |command| world.apply(now, command),
        ))
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        Ok(weir::core::reads::job(&self.world.lock().unwrap(), id))
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        Ok(weir::core::reads::jobs(&self.world.lock().unwrap(), filter))
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        Ok(weir::core::reads::queues(&self.world.lock().unwrap()))
    }

    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        let now = weir::wall_clock();
        let mut workers = self.workers.lock().unwrap();
        workers.retain(|w| w.presence.process != presence.process);
        workers.push(WorkerInfo {
            presence: presence.clone(),
            seen_at: now,
            expires_at: now.plus(Millis(ttl.as_millis() as u64)),
        });
        Ok(())
    }

    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.workers
            .lock()
            .unwrap()
            .retain(|w| w.presence.process != process);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        Ok(self.workers.lock().unwrap().clone())
    }
}

fn backend() -> Arc<WorldBackend> {
    let config = WorldConfig {
        backoff: weir::core::Backoff::constant(Millis(10)),
        ..WorldConfig::default()
    };
    Arc::new(WorldBackend {
        world: Mutex::new(World::new(config)),
        workers: Mutex::new(Vec::new()),
    })
}

fn pool_config(process: u64) -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Millis(20),
        flush_delay: Millis(5),
        maintenance_interval: Millis(20),
        heartbeat_interval: Millis(200),
        shutdown_timeout: Millis(200),
        ..DispatcherConfig::new(ProcessId(process), QueueName::new("default").unwrap(), 32)
    }
}

#[derive(Serialize, Deserialize)]
struct Add {
    a: u32,
    b: u32,
}

impl JobArgs for Add {
    const KIND: &'static str = "test.add";
}

fn states(backend: &WorldBackend) -> Vec<StateName> {
    backend
        .world
        .lock()
        .unwrap()
        .jobs()
        .map(|j| j.state_name())
        .collect()
}

async fn wait_until(backend: &WorldBackend, done: impl Fn(&[StateName]) -> bool) {
    for _ in 0..500 {
        if done(&states(backend)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out; states: {:?}", states(backend));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_run_to_completion_and_the_pool_shuts_down_cleanly() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    let jobs: Vec<Add> = (0..200).map(|i| Add { a: i, b: 1 }).collect();
    let inserted = client
        .insert_many(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await
        .unwrap();
    assert_eq!(inserted.len(), 200);

    let sum = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let seen = Arc::clone(&sum);
    registry
        .register(move |job: Add, _ctx| {
            let seen = Arc::clone(&seen);
            async move {
                seen.fetch_add(job.a + job.b, Ordering::SeqCst);
                Ok(JobOutcome::Complete)
            }
        })
        .unwrap();
    let pool = WorkerPool::new(Arc::clone(&backend), registry, pool_config(1)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    wait_until(&backend, |s| s.iter().all(|s| *s == StateName::Completed)).await;
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.stats.reported, 200);
    assert_eq!(sum.load(Ordering::SeqCst), (0..200).sum::<u32>() + 200);
    let world = backend.world.lock().unwrap();
    let queue = QueueName::new("default").unwrap();
    assert!(
        world
            .claimers(&queue)
            .unwrap()
            .slots()
            .all(|(_, l)| l.owner.is_none()),
        "lease released"
    );
}

#[derive(Serialize, Deserialize)]
struct Flaky {
    id: u32,
}

impl JobArgs for Flaky {
    const KIND: &'static str = "test.flaky";
    const MAX_ATTEMPTS: u32 = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_retry_panics_are_contained_and_bad_payloads_fail_for_good() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    for id in 0..4 {
        client.insert(&Flaky { id }).await.unwrap();
    }
    // A payload that does not decode as Flaky.
    let bad = weir::core::NewJob::new(
        QueueName::new("default").unwrap(),
        weir::core::Kind::new("test.flaky").unwrap(),
        weir::core::Payload(b"{\"nope\":1}".to_vec()),
    );
    backend
        .execute(Command::Enqueue(cmd::Enqueue { jobs: vec![bad] }))
        .await
        .unwrap();

    let mut registry = Registry::new();
    registry
        .register(|job: Flaky, ctx| async move {
            match (job.id, ctx.attempt()) {
                (0, _) => Ok(JobOutcome::Complete),
                (1, 1) => Err("transient".into()),
                (2, 1) => panic!("handler bug"),
                (3, _) => Ok(JobOutcome::Cancel),
                _ => Ok(JobOutcome::Complete),
            }
        })
        .unwrap();
    let pool = WorkerPool::new(Arc::clone(&backend), registry, pool_config(1)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    wait_until(&backend, |s| {
        s.len() == 5 && s.iter().all(|s| s.is_terminal())
    })
    .await;
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.panics, 1);
    let world = backend.world.lock().unwrap();
    let by_id: Vec<(StateName, u32)> = world
        .jobs()
        .map(|j| (j.state_name(), j.attempt.0))
        .collect();
    assert_eq!(
        by_id,
        vec![
            (StateName::Completed, 1),
            (StateName::Completed, 2),
            (StateName::Completed, 2),
            (StateName::Cancelled, 1),
            (StateName::Failed, 1),
        ]
    );
    let bad = world.jobs().last().unwrap();
    assert!(
        bad.last_error()
            .as_ref()
            .unwrap()
            .message
            .contains("does not decode"),
        "{:?}",
        bad.last_error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_slow_handlers_and_hands_their_jobs_back() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    for a in 0..3 {
        client.insert(&Add { a, b: 0 }).await.unwrap();
    }
    let mut registry = Registry::new();
    registry
        .register(|_job: Add, ctx| async move {
            ctx.cancelled().cancelled().await;
            Ok(JobOutcome::Complete)
        })
        .unwrap();
    let pool = WorkerPool::new(Arc::clone(&backend), registry, pool_config(1)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    wait_until(&backend, |s| {
        s.iter().filter(|s| **s == StateName::Running).count() == 3
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let world = backend.world.lock().unwrap();
    for job in world.jobs() {
        assert_eq!(job.state_name(), StateName::Available);
        assert_eq!(job.attempt.0, 0);
    }
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_writes_nothing() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    let bad_queue = InsertOptions {
        queue: Some("Bad Queue".into()),
        ..InsertOptions::default()
    };
    let err = client
        .insert_with(&Add { a: 1, b: 2 }, bad_queue)
        .await
        .unwrap_err();
    assert!(matches!(err, weir::ClientError::InvalidName(_)), "{err}");
    let zero = InsertOptions {
        max_attempts: Some(0),
        ..InsertOptions::default()
    };
    let err = client
        .insert_with(&Add { a: 1, b: 2 }, zero)
        .await
        .unwrap_err();
    assert!(
        matches!(err, weir::ClientError::InvalidJob { index: 0, .. }),
        "{err}"
    );
    assert!(states(&backend).is_empty());
    let no_queues = DispatcherConfig {
        queues: vec![],
        ..pool_config(1)
    };
    assert!(WorkerPool::new(Arc::clone(&backend), Registry::new(), no_queues).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_eight_warmups_never_has_more_than_two_at_once() {
    use weir::core::{SemaphoreName, WaitConfig, Warmup};
    let backend = backend();
    let active = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let started = weir::wall_clock();
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let backend = Arc::clone(&backend);
        let (active, most) = (Arc::clone(&active), Arc::clone(&most));
        tasks.push(tokio::spawn(async move {
            let config = weir::WarmupConfig {
                process: ProcessId(p + 1),
                pacing: Warmup {
                    delay: Millis(0),
                    jitter: Millis(20),
                    batch_size: 10,
                    batch_pause: Millis(5),
                },
                semaphore: Some((SemaphoreName::new("cache-warm").unwrap(), 2)),
                wait: WaitConfig {
                    retry_min: Millis(5),
                    retry_max: Millis(15),
                    wait_max: Millis(10_000),
                },
                lease_ttl: None,
            };
            weir::warmup(backend.as_ref(), &config, 30, |_range| {
                let (active, most) = (Arc::clone(&active), Arc::clone(&most));
                async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
            .unwrap()
        }));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "at most N = 2 warm at once"
    );
    assert!(reports
        .iter()
        .all(|r| r.limited && r.slot.is_some() && r.batches == 3));
    // Bound: delay + ceil(8/2) * work + retry jitter, with generous slack
    // for a loaded machine (this is a sanity check, not a benchmark).
    let last = reports.iter().map(|r| r.finished_at).max().unwrap();
    let bound = weir::core::herd_bound(Millis(0), 8, 2, Millis(3 * 10 + 2 * 5), Millis(20 + 15));
    println!(
        "last finisher after {} (herd bound {bound})",
        last.since(started)
    );
    let world = backend.world.lock().unwrap();
    let sem = world
        .semaphore(&SemaphoreName::new("cache-warm").unwrap())
        .unwrap();
    assert_eq!(sem.holders(weir::wall_clock()), 0, "every slot released");
}

fn limited_config(process: u64, max_workers: u32) -> weir::PoolConfig {
    let mut config = weir::PoolConfig::from_dispatcher(DispatcherConfig {
        queues: vec![weir::core::QueueConfig {
            queue: QueueName::new("default").unwrap(),
            max_workers,
        }],
        ..pool_config(process)
    });
    config.dispatcher.limits = weir::LimitConfig {
        lease_ttl: Millis(300),
        retry_min: Millis(5),
        retry_max: Millis(20),
    };
    config
}

/// Counts handlers running at once and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    most: AtomicU32,
}

impl Gauge {
    async fn hold(&self, for_ms: u64) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(for_ms)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_pools<F>(
    backend: &Arc<WorldBackend>,
    configs: Vec<weir::PoolConfig>,
    registry: F,
    done: impl Fn(&[StateName]) -> bool,
) -> Vec<weir::PoolReport>
where
    F: Fn() -> Registry,
{
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut runs = Vec::new();
    for config in configs {
        let pool = WorkerPool::with_config(Arc::clone(backend), registry(), config).unwrap();
        let mut stopped = stop.subscribe();
        runs.push(tokio::spawn(pool.run(async move {
            let _ = stopped.recv().await;
        })));
    }
    wait_until(backend, done).await;
    stop.send(()).unwrap();
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.unwrap().unwrap());
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limit_holds_across_pools_and_every_job_still_runs() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    let jobs: Vec<Add> = (0..40).map(|a| Add { a, b: 0 }).collect();
    client
        .insert_many(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await
        .unwrap();
    let gauge = Arc::new(Gauge::default());
    let registry = || {
        let gauge = Arc::clone(&gauge);
        let mut registry = Registry::new();
        registry
            .register(move |_job: Add, _ctx| {
                let gauge = Arc::clone(&gauge);
                async move {
                    gauge.hold(10).await;
                    Ok(JobOutcome::Complete)
                }
            })
            .unwrap();
        registry
    };
    let configs = (1..=2)
        .map(|p| limited_config(p, 8).queue_limit("default", 3).unwrap())
        .collect();
    let reports = run_pools(&backend, configs, registry, |s| {
        s.iter().all(|s| *s == StateName::Completed)
    })
    .await;
    assert!(gauge.most.load(Ordering::SeqCst) <= 3, "at most 3 at once");
    let completed: u64 = reports.iter().map(|r| r.metrics.completed).sum();
    let limited: u64 = reports.iter().map(|r| r.metrics.limited).sum();
    assert_eq!(completed, 40);
    assert!(limited > 0, "16 workers on 3 slots must miss sometimes");
    let world = backend.world.lock().unwrap();
    for job in world.jobs() {
        assert_eq!(job.attempt.0, 1, "a limited miss does not use an attempt");
    }
    let sem = world
        .semaphore(&weir::core::SemaphoreName::new("queue:default").unwrap())
        .unwrap();
    assert_eq!(sem.holders(weir::wall_clock()), 0, "every slot released");
}

#[derive(Serialize, Deserialize)]
struct Tenant {
    tenant: u32,
}

impl JobArgs for Tenant {
    const KIND: &'static str = "test.tenant";
    fn concurrency(&self) -> Option<(String, u16)> {
        Some((format!("tenant:{}", self.tenant), 1))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_limit_runs_one_job_per_tenant_at_a_time() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    let jobs: Vec<Tenant> = (0..30).map(|i| Tenant { tenant: i % 3 }).collect();
    client
        .insert_many(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await
        .unwrap();
    let gauges: Arc<Vec<Gauge>> = Arc::new((0..3).map(|_| Gauge::default()).collect());
    let registry = || {
        let gauges = Arc::clone(&gauges);
        let mut registry = Registry::new();
        registry
            .register(move |job: Tenant, _ctx| {
                let gauges = Arc::clone(&gauges);
                async move {
                    gauges[job.tenant as usize].hold(5).await;
                    Ok(JobOutcome::Complete)
                }
            })
            .unwrap();
        registry
    };
    let configs = (1..=2).map(|p| limited_config(p, 6)).collect();
    let reports = run_pools(&backend, configs, registry, |s| {
        s.iter().all(|s| *s == StateName::Completed)
    })
    .await;
    for (tenant, gauge) in gauges.iter().enumerate() {
        assert_eq!(gauge.most.load(Ordering::SeqCst), 1, "tenant {tenant}");
    }
    assert_eq!(reports.iter().map(|r| r.metrics.completed).sum::<u64>(), 30);
}

#[derive(Serialize, Deserialize)]
struct BadKey;

impl JobArgs for BadKey {
    const KIND: &'static str = "test.bad_key";
    fn concurrency(&self) -> Option<(String, u16)> {
        Some(("no spaces allowed".into(), 1))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_concurrency_key_fails_the_job_with_the_reason() {
    let backend = backend();
    Client::new(Arc::clone(&backend))
        .insert(&BadKey)
        .await
        .unwrap();
    let registry = || {
        let mut registry = Registry::new();
        registry
            .register(|_: BadKey, _ctx| async { Ok(JobOutcome::Complete) })
            .unwrap();
        registry
    };
    run_pools(&backend, vec![limited_config(1, 2)], registry, |s| {
        s == [StateName::Failed]
    })
    .await;
    let world = backend.world.lock().unwrap();
    let error = world.jobs().next().unwrap().last_error().cloned().unwrap();
    assert!(
        error.message.contains("invalid concurrency limit"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_tells_a_handler_its_job_was_taken_and_progress_is_visible() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    let id = client.insert(&Add { a: 0, b: 0 }).await.unwrap().id;
    let (told, heard) = tokio::sync::oneshot::channel::<String>();
    let told = Arc::new(Mutex::new(Some(told)));
    let mut registry = Registry::new();
    registry
        .register(move |_: Add, ctx| {
            let told = Arc::clone(&told);
            async move {
                ctx.set_progress(serde_json::json!({"step": 1}));
                assert!(ctx.heartbeat().await.is_ok(), "still ours");
                // Wait until the test cancels the job, then heartbeat.
                while !ctx.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if let Err(e) = ctx.heartbeat().await {
                        let _ = told.lock().unwrap().take().unwrap().send(e.to_string());
                        assert!(ctx.is_cancelled(), "the token fired");
                    }
                }
                Ok(JobOutcome::Complete)
            }
        })
        .unwrap();
    let config = DispatcherConfig {
        // So the pool's own heartbeat cannot be what notices the cancel.
        heartbeat_interval: Millis(60_000),
        ..pool_config(1)
    };
    let pool = WorkerPool::new(Arc::clone(&backend), registry, config).unwrap();
    let metrics = pool.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    wait_until(&backend, |s| s == [StateName::Running]).await;
    for _ in 0..100 {
        if metrics
            .running()
            .first()
            .and_then(|j| j.progress.clone())
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        metrics.running()[0].progress,
        Some(serde_json::json!({"step": 1}))
    );
    client.cancel(id).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), heard)
        .await
        .unwrap()
        .unwrap();
    assert!(message.contains("taken away"), "{message}");
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.stats.fenced, 1, "stopped by the handler's heartbeat");
    assert!(metrics.running().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_shows_live_workers_and_a_kind_no_one_runs_is_stranded() {
    let backend = backend();
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Add { a: 1, b: 1 }).await.unwrap();
    client.insert(&Flaky { id: 0 }).await.unwrap();
    let mut registry = Registry::new();
    registry
        .register(|_: Add, _ctx| async { Ok(JobOutcome::Complete) })
        .unwrap();
    let pool = WorkerPool::new(Arc::clone(&backend), registry, pool_config(7)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async move {
        let _ = stopped.await;
    }));
    wait_until(&backend, |s| s[0] == StateName::Completed).await;
    let workers = client.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].presence.process, ProcessId(7));
    let stranded = client.stranded().await.unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(stranded[0].kind.as_str(), "test.flaky");
    assert_eq!(stranded[0].jobs, 1);
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.metrics.started, 1);
    assert_eq!(
        states(&backend)[1],
        StateName::Available,
        "never claimed, never lost"
    );
    assert!(
        client.workers().await.unwrap().is_empty(),
        "retired on shutdown"
    );
}
