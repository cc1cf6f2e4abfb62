//! The worker pool: the core's [`Dispatcher`] driven by tokio.
//!
//! All decisions — when to claim and how much, when to flush results, when
//! to heartbeat, when to lead maintenance, how to shut down — are the
//! dispatcher's. This loop only executes its effects (storage commands on
//! the backend, handlers on tasks) and feeds the results back, so the same
//! logic runs in the simulator. Beside it run two helpers that decide
//! nothing: a listener that turns the backend's wake-ups into
//! [`Input::Notified`] and [`Input::Fenced`], and a presence task that
//! tells the backend this process is alive and which kinds it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use weir_core::{
    command_name, ClaimedJob, Dispatcher, DispatcherConfig, Effect, FailError, HandlerResult,
    Input, InvalidName, Millis, ProcessId, QueueConfig, QueueName, Receipt, Retry, Stats,
    Timestamp,
};

use crate::backend::{Backend, BackendError, Presence, Wakeup};
use crate::job::{JobContext, JobOutcome};
use crate::limit::{Limit, LimitConfig, Limiter, Miss};
use crate::metrics::{PoolMetrics, PoolSnapshot, ResultKind, RunningJob};
use crate::registry::{Ran, Registry};

/// The wall clock, in the core's milliseconds.
pub fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// A fresh, random process id. Every running pool needs its own: claims,
/// claimer leases and semaphore slots are held in its name.
pub fn new_process_id() -> ProcessId {
    // 63 bits, so the id is the same number in Postgres's signed bigint.
    ProcessId(rand::rng().random::<u64>() >> 1)
}

/// Why a pool stopped without finishing its shutdown, or never started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Storage is not usable as configured (checked before the pool starts,
    /// and on every command); retrying will not help.
    #[error(transparent)]
    Backend(BackendError),
    /// The pool's configuration cannot work; nothing was sent to storage.
    #[error("invalid worker pool configuration: {0}")]
    Config(#[from] InvalidPoolConfig),
}

/// A [`PoolConfig`] that cannot work, and which setting is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPoolConfig {
    /// No queue to work.
    #[error("no queues to work")]
    NoQueues,
    /// A queue allows no handler at all in this process.
    #[error("queue {queue} has max_workers = 0; give it at least 1 or leave it out")]
    MaxWorkersZero {
        /// The queue.
        queue: QueueName,
    },
    /// A queue is listed twice.
    #[error("queue {queue} is listed twice")]
    QueueListedTwice {
        /// The queue.
        queue: QueueName,
    },
    /// A batch size of 0 (`claim_batch_max` or `flush_max`).
    #[error("{setting} is 0; it must be at least 1")]
    ZeroBatch {
        /// The setting.
        setting: &'static str,
    },
    /// An interval of 0 would spin: a poll, heartbeat, maintenance round
    /// or retry without pause.
    #[error("{setting} is 0 ms; it must be at least 1 ms")]
    ZeroInterval {
        /// The setting.
        setting: &'static str,
    },
    /// A cluster-wide queue limit of 0 slots: no job of the queue could
    /// ever run.
    #[error("queue limit of queue {queue} is 0; a semaphore needs at least 1 slot")]
    QueueLimitZero {
        /// The queue.
        queue: QueueName,
    },
    /// A queue limit for a queue this pool does not work.
    #[error("queue limit names queue {queue}, which this pool does not work")]
    QueueLimitUnknownQueue {
        /// The queue.
        queue: QueueName,
    },
    /// A lease shorter than the pool can renew in time.
    #[error("{setting} is {got:?}; it must be at least {min:?}")]
    TtlTooShort {
        /// The setting.
        setting: &'static str,
        /// Its value.
        got: Duration,
        /// The least allowed.
        min: Duration,
    },
    /// The registry has no handler, so the pool could claim nothing.
    #[error("no handlers registered")]
    NoHandlers,
}

/// What a pool did, once it has shut down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// The dispatcher's counters.
    pub stats: Stats,
    /// The pool's counters and latencies ([`PoolMetrics::snapshot`]).
    pub metrics: PoolSnapshot,
    /// Handlers that panicked (their attempts were failed and retried).
    pub panics: u64,
    /// Handlers that ran past their deadline (failed and retried).
    pub timeouts: u64,
}

/// How a pool runs: the dispatcher's settings and the pool's own.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The core dispatcher's settings: process id, queues and per-process
    /// worker limits, batch sizes, intervals, shutdown timeout.
    pub dispatcher: DispatcherConfig,
    /// Cluster-wide limits per queue: at most N of the queue's jobs run at
    /// once across every process (semaphore `queue:<name>`).
    pub queue_limits: Vec<(QueueName, u16)>,
    /// How limit slots are held and how long a miss waits.
    pub limits: LimitConfig,
    /// The presence announcement lasts this long; it is renewed at a third.
    pub presence_ttl: Duration,
    /// How this process is labelled in `weir workers` and logs.
    pub label: String,
    /// After shutdown completes, how long to wait for handler tasks that
    /// were told to stop before abandoning them.
    pub stop_grace: Duration,
}

impl PoolConfig {
    /// One queue with `max_workers` handlers at most in this process, a new
    /// random process id and the defaults for everything else.
    pub fn new(queue: &str, max_workers: u32) -> Result<PoolConfig, InvalidName> {
        let queue = QueueName::new(queue)?;
        Ok(PoolConfig::from_dispatcher(DispatcherConfig::new(
            new_process_id(),
            queue,
            max_workers,
        )))
    }

    /// The pool's defaults around a dispatcher configuration.
    pub fn from_dispatcher(dispatcher: DispatcherConfig) -> PoolConfig {
        PoolConfig {
            label: format!("pid {} process {}", std::process::id(), dispatcher.process),
            dispatcher,
            queue_limits: Vec::new(),
            limits: LimitConfig::default(),
            presence_ttl: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
        }
    }

    /// Also works `queue`, with `max_workers` handlers at most here.
    pub fn queue(mut self, queue: &str, max_workers: u32) -> Result<PoolConfig, InvalidName> {
        let queue = QueueName::new(queue)?;
        self.dispatcher
            .queues
            .push(QueueConfig { queue, max_workers });
        Ok(self)
    }

    /// At most `permits` of `queue`'s jobs run at once across the cluster.
    pub fn queue_limit(mut self, queue: &str, permits: u16) -> Result<PoolConfig, InvalidName> {
        let queue = QueueName::new(queue)?;
        self.queue_limits.push((queue, permits));
        Ok(self)
    }

    fn validate(&self) -> Result<(), InvalidPoolConfig> {
        use InvalidPoolConfig as Bad;
        let d = &self.dispatcher;
        if d.queues.is_empty() {
            return Err(Bad::NoQueues);
        }
        let mut names = BTreeSet::new();
        for q in &d.queues {
            if q.max_workers == 0 {
                let queue = q.queue.clone();
                return Err(Bad::MaxWorkersZero { queue });
            }
            if !names.insert(&q.queue) {
                let queue = q.queue.clone();
                return Err(Bad::QueueListedTwice { queue });
            }
        }
        let batches = [
            ("claim_batch_max", d.claim_batch_max as usize),
            ("flush_max", d.flush_max),
        ];
        if let Some((setting, _)) = batches.into_iter().find(|(_, n)| *n == 0) {
            return Err(Bad::ZeroBatch { setting });
        }
        let intervals = [
            ("poll_interval", d.poll_interval, true),
            ("heartbeat_interval", d.heartbeat_interval, true),
            ("maintenance_interval", d.maintenance_interval, d.lead),
            ("retry_after", d.retry_after, true),
        ];
        let zero = intervals
            .into_iter()
            .find(|(_, ms, used)| *used && *ms == Millis::ZERO);
        if let Some((setting, _, _)) = zero {
            return Err(Bad::ZeroInterval { setting });
        }
        for (queue, permits) in &self.queue_limits {
            if *permits == 0 {
                let queue = queue.clone();
                return Err(Bad::QueueLimitZero { queue });
            }
            if !names.contains(queue) {
                let queue = queue.clone();
                return Err(Bad::QueueLimitUnknownQueue { queue });
            }
        }
        let min = Duration::from_millis(30);
        let ttls = [
            ("limits.lease_ttl", self.limits.lease_ttl),
            ("presence_ttl", self.presence_ttl),
        ];
        if let Some((setting, got)) = ttls.into_iter().find(|(_, ttl)| *ttl < min) {
            return Err(Bad::TtlTooShort { setting, got, min });
        }
        Ok(())
    }
}

/// Runs handlers for claimed jobs until shut down.
#[derive(Debug)]
pub struct WorkerPool<B> {
    backend: Arc<B>,
    registry: Registry,
    config: PoolConfig,
    metrics: Arc<PoolMetrics>,
}

enum Event {
    Input(Input),
    Fatal(BackendError),
}

type Tx = mpsc::UnboundedSender<Event>;

impl<B: Backend> WorkerPool<B> {
    /// A pool over `backend` running `registry`'s handlers, configured by
    /// `config` and the pool defaults ([`PoolConfig::from_dispatcher`]).
    pub fn new(
        backend: Arc<B>,
        registry: Registry,
        config: DispatcherConfig,
    ) -> Result<WorkerPool<B>, PoolError> {
        WorkerPool::with_config(backend, registry, PoolConfig::from_dispatcher(config))
    }

    /// A pool over `backend` running `registry`'s handlers. The
    /// dispatcher's `kinds` are set to the registry's, so the pool never
    /// claims a job it cannot run: a job of another kind stays where it is,
    /// visible to `weir queues` as a kind no live worker runs.
    pub fn with_config(
        backend: Arc<B>,
        registry: Registry,
        mut config: PoolConfig,
    ) -> Result<WorkerPool<B>, PoolError> {
        config.validate()?;
        let kinds: BTreeSet<_> = registry.kinds().cloned().collect();
        if kinds.is_empty() {
            return Err(PoolError::Config(InvalidPoolConfig::NoHandlers));
        }
        config.dispatcher.kinds = Some(kinds);
        Ok(WorkerPool {
            backend,
            registry,
            config,
            metrics: Arc::new(PoolMetrics::default()),
        })
    }

    /// This pool's process id.
    pub fn process(&self) -> ProcessId {
        self.config.dispatcher.process
    }

    /// The live counters and latencies; readable while the pool runs.
    pub fn metrics(&self) -> Arc<PoolMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` completes, then shuts down gracefully: stops
    /// claiming, lets running handlers finish until the shutdown timeout,
    /// stops the rest and hands their jobs back, flushes results, releases
    /// claimer leases, leadership and concurrency slots, and retires its
    /// presence.
    ///
    /// Before anything else it calls [`Backend::check`]: storage that is
    /// misconfigured (for Postgres, a schema that is missing or at another
    /// version than this code) is [`PoolError::Backend`] at once, without
    /// a claim. So is a misconfiguration first seen by a command later.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PoolReport, PoolError> {
        // A schema that is missing or at another version is refused before
        // anything is claimed. Storage that does not answer yet is not:
        // the dispatcher retries its commands until it does.
        match self.backend.check().await {
            Ok(()) => {}
            Err(BackendError::Misconfigured(m)) => {
                return Err(PoolError::Backend(BackendError::Misconfigured(m)))
            }
            Err(error) => warn!(%error, "cannot check storage at start; starting anyway"),
        }
        let (tx, rx) = mpsc::unbounded_channel::<Event>();
        let dynamic: Arc<dyn Backend> = self.backend.clone();
        let process = self.process();
        let mut run = Run {
            dispatcher: Dispatcher::new(self.config.dispatcher.clone(), wall_clock()),
            limiter: Arc::new(Limiter::new(
                Arc::clone(&dynamic),
                process,
                self.config.limits,
            )),
            backend: dynamic,
            tokens: BTreeMap::new(),
            handlers: JoinSet::new(),
            background: JoinSet::new(),
            tx,
            pool: &self,
        };
        info!(%process, queues = self.config.dispatcher.queues.len(), "worker pool starting");
        run.start_background();
        let result = run.drive(rx, shutdown).await;
        run.finish().await;
        let stats = run.dispatcher.stats();
        let metrics = self.metrics.snapshot();
        let report = PoolReport {
            stats,
            metrics,
            panics: metrics.panics,
            timeouts: metrics.timeouts,
        };
        match result {
            Ok(()) => {
                info!(?report, "worker pool stopped");
                Ok(report)
            }
            Err(error) => Err(error),
        }
    }
}

/// One run of a pool: the dispatcher and the tasks executing its effects.
struct Run<'p, B> {
    pool: &'p WorkerPool<B>,
    dispatcher: Dispatcher,
    backend: Arc<dyn Backend>,
    limiter: Arc<Limiter>,
    /// Each running handler's cancellation token, and whether the
    /// dispatcher stopped it (its result is then discarded).
    tokens: BTreeMap<Receipt, (CancellationToken, Arc<AtomicBool>)>,
    handlers: JoinSet<()>,
    background: JoinSet<()>,
    tx: Tx,
}

impl<B: Backend> Run<'_, B> {
    fn queues(&self) -> Vec<QueueName> {
        let queues = &self.pool.config.dispatcher.queues;
        queues.iter().map(|q| q.queue.clone()).collect()
    }

    fn start_background(&mut self) {
        let config = &self.pool.config;
        let presence = Presence {
            process: config.dispatcher.process,
            label: config.label.clone(),
            queues: self.queues(),
            kinds: self.pool.registry.kinds().cloned().collect(),
            started_at: wall_clock(),
        };
        let backend = Arc::clone(&self.backend);
        let ttl = config.presence_ttl;
        self.background.spawn(async move {
            loop {
                if let Err(error) = backend.announce(&presence, ttl).await {
                    warn!(%error, "presence announcement failed; retrying");
                }
                tokio::time::sleep(ttl / 3).await;
            }
        });
        let listen = listen(
            Arc::clone(&self.backend),
            self.tx.clone(),
            config.dispatcher.process,
            self.queues(),
            Duration::from_millis(config.dispatcher.poll_interval.0),
            Duration::from_millis(config.dispatcher.retry_after.0.max(100)),
        );
        self.background.spawn(listen);
    }

    async fn drive(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), PoolError> {
        tokio::pin!(shutdown);
        let mut shutting_down = false;
        self.handle(Input::Tick);
        loop {
            while let Some(effect) = self.dispatcher.poll_effect() {
                if self.execute(effect) {
                    return Ok(());
                }
            }
            let timeout = self.dispatcher.poll_timeout().map(|(at, _)| at);
            let sleep = async {
                match timeout {
                    Some(at) => tokio::time::sleep(duration_until(at)).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                event = rx.recv() => match event.expect("the run holds a sender") {
                    Event::Input(input) => input,
                    Event::Fatal(e) => return Err(PoolError::Backend(e)),
                },
                () = &mut shutdown, if !shutting_down => {
                    shutting_down = true;
                    info!("worker pool shutting down");
                    Input::Shutdown
                }
                Some(_) = self.handlers.join_next(), if !self.handlers.is_empty() => continue,
                () = sleep => Input::Tick,
            };
            if let Input::HandlerDone(receipt, _) = &input {
                self.tokens.remove(receipt);
            }
            self.handle(input);
        }
    }

    /// Feeds one input and reports what changed.
    fn handle(&mut self, input: Input) {
        let (before, leader) = (self.dispatcher.stats(), self.dispatcher.leader());
        self.dispatcher
            .handle(wall_clock(), rand::rng().random(), input);
        let after = self.dispatcher.stats();
        let metrics = &self.pool.metrics;
        let claimed = after.claimed - before.claimed;
        let fenced = after.fenced - before.fenced;
        metrics.claimed(claimed);
        metrics.fenced(fenced);
        if claimed > 0 {
            debug!(jobs = claimed, "claimed");
        }
        if after.reported > before.reported {
            debug!(
                results = after.reported - before.reported,
                "results accepted"
            );
        }
        if fenced > 0 {
            info!(
                attempts = fenced,
                "attempts fenced: taken away, or late results refused by epoch"
            );
        }
        if after.lease_refreshes > before.lease_refreshes {
            debug!("claimer lease refreshed");
        }
        if after.lease_acquisitions > before.lease_acquisitions {
            debug!("claimer lease acquired");
        }
        if after.maintained > before.maintained {
            debug!(
                jobs = after.maintained - before.maintained,
                "maintenance promoted, rescued or pruned"
            );
        }
        match (leader, self.dispatcher.leader()) {
            (None, Some(grant)) => info!(term = %grant.term, "became maintenance leader"),
            (Some(old), None) => info!(term = %old.term, "no longer maintenance leader"),
            _ => {}
        }
    }

    /// Does what one effect says; true once shutdown completed.
    fn execute(&mut self, effect: Effect) -> bool {
        match effect {
            Effect::Execute(id, command) => {
                let backend = Arc::clone(&self.backend);
                let metrics = Arc::clone(&self.pool.metrics);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let name = command_name(&command);
                    let started = Instant::now();
                    let event = match backend.execute(command).await {
                        Ok(outcome) => Event::Input(Input::Outcome(id, outcome)),
                        Err(BackendError::Misconfigured(m)) => {
                            Event::Fatal(BackendError::Misconfigured(m))
                        }
                        Err(error) => {
                            warn!(%error, command = name, "storage command lost; the dispatcher retries");
                            metrics.lost(name);
                            Event::Input(Input::Lost(id))
                        }
                    };
                    metrics.command(name, started.elapsed());
                    let _ = tx.send(event);
                });
            }
            Effect::StartHandler(job) => self.start_handler(job),
            Effect::StopHandler(receipt, reason) => {
                debug!(%receipt, ?reason, "stopping handler");
                if let Some((token, stopped)) = self.tokens.remove(&receipt) {
                    stopped.store(true, Ordering::SeqCst);
                    token.cancel();
                }
            }
            Effect::ShutdownComplete => return true,
        }
        false
    }

    fn start_handler(&mut self, job: ClaimedJob) {
        let receipt = job.receipt;
        let queue = self
            .dispatcher
            .queue_of(receipt)
            .expect("a started handler's job is running here")
            .clone();
        let Some(handler) = self.pool.registry.get(&job.kind) else {
            // Cannot happen: the pool claims only registered kinds. Hand
            // the job back rather than lose it.
            warn!(%receipt, kind = %job.kind, "claimed a kind with no handler; handing it back");
            let done = Input::HandlerDone(receipt, HandlerResult::Snooze(Millis(1_000)));
            let _ = self.tx.send(Event::Input(done));
            return;
        };
        let token = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        self.tokens
            .insert(receipt, (token.clone(), Arc::clone(&stopped)));
        let tx = self.tx.clone();
        let on_fenced: crate::job::OnFenced = Arc::new(move |receipt| {
            let _ = tx.send(Event::Input(Input::Fenced(receipt)));
        });
        let ctx = JobContext {
            receipt,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            deadline: job.deadline,
            cancelled: token,
            backend: Arc::clone(&self.backend),
            metrics: Arc::clone(&self.pool.metrics),
            on_fenced,
            limiter: Arc::clone(&self.limiter),
        };
        let limit = self
            .pool
            .config
            .queue_limits
            .iter()
            .find(|(q, _)| *q == queue)
            .map(|(q, n)| Limit {
                semaphore: weir_core::SemaphoreName::new(format!("queue:{q}"))
                    .expect("a queue name is a valid semaphore name after the prefix"),
                permits: *n,
            });
        let attempt = Attempt {
            job,
            queue,
            limit,
            handler,
            ctx,
            metrics: Arc::clone(&self.pool.metrics),
            limiter: Arc::clone(&self.limiter),
            tx: self.tx.clone(),
            stopped,
        };
        let span = tracing::info_span!("weir.job", kind = %attempt.job.kind, job = %receipt.job, epoch = %receipt.epoch, attempt = attempt.job.attempt.0);
        self.handlers.spawn(attempt.run().instrument(span));
    }

    /// After shutdown (or a fatal error): wait a little for handler tasks
    /// told to stop, then abandon them; release what is still held.
    async fn finish(&mut self) {
        for (token, _) in self.tokens.values() {
            token.cancel();
        }
        let grace = self.pool.config.stop_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.handlers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = self.handlers.len(),
                "handlers still running after the stop grace; abandoning them"
            );
            self.handlers.abort_all();
        }
        self.limiter.release_all().await;
        self.background.abort_all();
        if let Err(error) = self.backend.retire(self.pool.process()).await {
            debug!(%error, "retiring presence failed; it expires on its own");
        }
    }
}

/// One attempt's handler, on its own task.
struct Attempt {
    job: ClaimedJob,
    queue: QueueName,
    limit: Option<Limit>,
    handler:
        Arc<dyn Fn(weir_core::Payload, JobContext) -> crate::registry::HandlerFuture + Send + Sync>,
    ctx: JobContext,
    metrics: Arc<PoolMetrics>,
    limiter: Arc<Limiter>,
    tx: Tx,
    stopped: Arc<AtomicBool>,
}

impl Attempt {
    async fn run(self) {
        let Attempt {
            job,
            queue,
            limit,
            handler,
            ctx,
            metrics,
            limiter,
            tx,
            stopped,
        } = self;
        let receipt = job.receipt;
        let started = wall_clock();
        let running = RunningJob {
            receipt,
            kind: job.kind.clone(),
            started_at: started,
            progress: None,
        };
        let pickup = Duration::from_millis(started.since(job.run_at).0);
        metrics.started(running, queue.as_str(), pickup);
        let clock = Instant::now();
        let (result, kind) = match acquire_queue_slot(&limiter, receipt, limit.as_ref()).await {
            Err(result) => result,
            Ok(()) => {
                let deadline = duration_until(job.deadline);
                let task = tokio::spawn(handler(job.payload.clone(), ctx));
                let abort = task.abort_handle();
                match tokio::time::timeout(deadline, task).await {
                    Ok(Ok(Ok(Ran::Decided(outcome)))) => classify(to_result(outcome), &job),
                    Ok(Ok(Ok(Ran::Limited(pause)))) => {
                        (HandlerResult::Snooze(to_millis(pause)), ResultKind::Limited)
                    }
                    Ok(Ok(Err(error))) => classify(retry(error.to_string()), &job),
                    Ok(Err(join)) => {
                        metrics.panicked(&job.kind);
                        classify(retry(format!("handler panicked: {join}")), &job)
                    }
                    Err(_) => {
                        abort.abort();
                        metrics.timed_out(&job.kind);
                        let message = "handler ran past its deadline".to_string();
                        classify(retry(message), &job)
                    }
                }
            }
        };
        limiter.release_attempt(receipt).await;
        // Stopped by the dispatcher (fenced, or shut down): whatever the
        // handler returned is discarded, and counted as such.
        let kind = if stopped.load(Ordering::SeqCst) {
            ResultKind::Stopped
        } else {
            kind
        };
        metrics.finished(receipt, queue.as_str(), &job.kind, kind, clock.elapsed());
        debug!(?result, "handler finished");
        let _ = tx.send(Event::Input(Input::HandlerDone(receipt, result)));
    }
}

/// Takes the queue's limit slot, if it has a limit; on a miss, the result
/// to report instead of running the handler.
async fn acquire_queue_slot(
    limiter: &Limiter,
    receipt: Receipt,
    limit: Option<&Limit>,
) -> Result<(), (HandlerResult, ResultKind)> {
    let Some(limit) = limit else { return Ok(()) };
    match limiter.acquire(receipt, limit).await {
        Ok(_) => Ok(()),
        Err(Miss::Full(pause)) => {
            Err((HandlerResult::Snooze(to_millis(pause)), ResultKind::Limited))
        }
        Err(Miss::Refused(reject)) => Err((
            HandlerResult::Fail(FailError {
                retry: Retry::Never,
                message: format!("queue limit {} refused: {reject}", limit.semaphore),
            }),
            ResultKind::Failed,
        )),
        // Storage trouble: try the attempt again later, with backoff.
        Err(Miss::Backend(error)) => Err((retry(error.to_string()), ResultKind::Retry)),
    }
}

/// Listens for the backend's wake-ups and feeds them to the dispatcher;
/// resubscribes after a failure, telling the dispatcher to poll since
/// hints may have been missed. Returns at once if the backend has none.
async fn listen(
    backend: Arc<dyn Backend>,
    tx: Tx,
    process: ProcessId,
    queues: Vec<QueueName>,
    poll: Duration,
    pause: Duration,
) {
    let send = |input: Input| tx.send(Event::Input(input)).is_ok();
    loop {
        match backend.subscribe().await {
            Ok(None) => return,
            Ok(Some(mut subscription)) => loop {
                let inputs = match subscription.next(poll).await {
                    Ok(None) => continue,
                    Ok(Some(Wakeup::Jobs(queue))) if queues.contains(&queue) => {
                        vec![Input::Notified(queue)]
                    }
                    Ok(Some(Wakeup::Cancelled { job, epoch, holder })) if holder == process => {
                        vec![Input::Fenced(Receipt { job, epoch })]
                    }
                    Ok(Some(Wakeup::Missed)) => {
                        queues.iter().cloned().map(Input::Notified).collect()
                    }
                    Ok(Some(_)) => continue,
                    Err(error) => {
                        warn!(%error, "wake-up subscription lost; polling until it is back");
                        break;
                    }
                };
                if !inputs.into_iter().all(send) {
                    return;
                }
            },
            Err(error) => warn!(%error, "cannot subscribe to wake-ups; polling"),
        }
        if !queues.iter().cloned().map(Input::Notified).all(send) {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

fn retry(message: String) -> HandlerResult {
    HandlerResult::Fail(FailError {
        retry: Retry::Backoff,
        message,
    })
}

/// The result, and how the pool counts it.
fn classify(result: HandlerResult, job: &ClaimedJob) -> (HandlerResult, ResultKind) {
    let kind = match &result {
        HandlerResult::Complete => ResultKind::Completed,
        HandlerResult::Fail(FailError {
            retry: Retry::Never,
            ..
        }) => ResultKind::Failed,
        HandlerResult::Fail(_) if job.attempt >= job.max_attempts => ResultKind::Failed,
        HandlerResult::Fail(_) => ResultKind::Retry,
        HandlerResult::Snooze(_) => ResultKind::Snoozed,
        HandlerResult::WaitExternal(_) => ResultKind::Waiting,
        HandlerResult::Cancel => ResultKind::Cancelled,
    };
    (result, kind)
}

fn to_millis(d: Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_result(outcome: JobOutcome) -> HandlerResult {
    match outcome {
        JobOutcome::Complete => HandlerResult::Complete,
        JobOutcome::Retry { after, error } => HandlerResult::Fail(FailError {
            retry: after.map_or(Retry::Backoff, |d| Retry::After(to_millis(d))),
            message: error,
        }),
        JobOutcome::Fail(message) => HandlerResult::Fail(FailError {
            retry: Retry::Never,
            message,
        }),
        JobOutcome::Snooze(d) => HandlerResult::Snooze(to_millis(d)),
        JobOutcome::WaitExternal(d) => HandlerResult::WaitExternal(to_millis(d)),
        JobOutcome::Cancel => HandlerResult::Cancel,
    }
}

fn duration_until(at: Timestamp) -> Duration {
    Duration::from_millis(at.since(wall_clock()).0)
}
