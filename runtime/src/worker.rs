//! The worker pool: the core's [`Dispatcher`] driven by tokio.
//!
//! Every decision — when to claim and how much, which limits a job's slots
//! come from and what a miss does, when a handler is stopped, aborted or
//! timed out, when results are flushed and heartbeats sent, when to lead
//! maintenance, how to shut down, what a refused command means — is the
//! dispatcher's. This loop only executes its effects (storage commands on
//! the backend, handlers on tasks) and feeds the results back, on a
//! monotonic clock ([`MonotonicClock`]), so the same logic runs in the
//! simulator and no wall clock enters a decision. Beside it run two
//! helpers that decide nothing: a listener that turns the backend's
//! wake-ups into [`Input::Notified`] and [`Input::CancelHint`], and a
//! presence task that tells the backend this process is alive and which
//! kinds it runs.
//!
//! A handler runs on a task of its own. The loop keeps every handler task
//! it started until the task has ended, and tells the dispatcher only
//! then, so a job is handed back, and its limit slots released, only once
//! its handler is really gone. A handler that blocks its thread forever
//! cannot be aborted; shutdown then waits for it (and says so in the log).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use weir_core::{
    command_name, Abandoned, ClaimedJob, CommandId, Dispatcher, DispatcherConfig, Effect,
    FailError, HandlerResult, Input, InvalidDispatcherConfig, InvalidName, Kind, Millis, ProcessId,
    QueueConfig, QueueName, Receipt, Refusal, Retry, Settled, Stats, StopReason, Unrunnable,
};

use crate::backend::{Backend, BackendError, Presence, Wakeup};
use crate::clock::{wall_clock, MonotonicClock};
use crate::job::{JobContext, JobOutcome};
use crate::metrics::{PoolMetrics, PoolSnapshot, ResultKind, RunningJob};
use crate::registry::{Args, Registry};

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
    /// and on every command); retrying will not help. A pool that finds
    /// this out while it runs first shuts down as gracefully as storage
    /// lets it: it stops claiming, lets its handlers finish (until the
    /// shutdown timeout), flushes their results, releases its leases and
    /// resigns, and then returns this.
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
    /// A dispatcher setting (queues, batches against the backend's limit,
    /// intervals, limits).
    #[error(transparent)]
    Dispatcher(#[from] InvalidDispatcherConfig),
    /// The presence announcement expires too soon to be renewed.
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
    /// worker limits, batch sizes, intervals, shutdown timeout and stop
    /// grace, cluster-wide queue limits and how their slots are held.
    /// `batch_max` is set from the backend when the pool is built.
    pub dispatcher: DispatcherConfig,
    /// The presence announcement lasts this long; it is renewed at a third.
    pub presence_ttl: Duration,
    /// How this process is labelled in `weir workers` and logs.
    pub label: String,
    /// Seeds the pool's random draws (jitter), so a test can replay a run;
    /// `None` draws a seed from the system.
    pub seed: Option<u64>,
    /// One deliberate mistake, for the checkers to catch (tests only).
    #[cfg(feature = "mutants")]
    #[doc(hidden)]
    pub mutation: Option<PoolMutation>,
}

/// Deliberate bugs of a pool (feature `mutants`): the pool simulation
/// must catch each one.
#[cfg(feature = "mutants")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMutation {
    /// The dispatcher's own.
    Dispatcher(weir_core::DispatcherMutation),
    /// On an abort, report the handler ended at once instead of when its
    /// task has: the task runs on, detached.
    ReportAbortBeforeTaskEnds,
}

#[cfg(feature = "mutants")]
impl PoolMutation {
    /// Every pool mutation, in a fixed order.
    pub fn all() -> Vec<PoolMutation> {
        let mut all: Vec<PoolMutation> = weir_core::DispatcherMutation::ALL
            .into_iter()
            .map(PoolMutation::Dispatcher)
            .collect();
        all.push(PoolMutation::ReportAbortBeforeTaskEnds);
        all
    }
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
            presence_ttl: Duration::from_secs(30),
            seed: None,
            #[cfg(feature = "mutants")]
            mutation: None,
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
        self.dispatcher.queue_limits.push((queue, permits));
        Ok(self)
    }

    fn validate(&self) -> Result<(), InvalidPoolConfig> {
        self.dispatcher.validate()?;
        let min = Duration::from_millis(30);
        if self.presence_ttl < min {
            return Err(InvalidPoolConfig::TtlTooShort {
                setting: "presence_ttl",
                got: self.presence_ttl,
                min,
            });
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
    /// A command found storage misconfigured: the run ends with this.
    Misconfigured(CommandId, BackendError),
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
    /// visible to `weir queues` as a kind no live worker runs. Its
    /// `batch_max` is set to the backend's, and a batch setting above it is
    /// refused here, before anything is sent.
    pub fn with_config(
        backend: Arc<B>,
        registry: Registry,
        mut config: PoolConfig,
    ) -> Result<WorkerPool<B>, PoolError> {
        config.dispatcher.batch_max = backend.batch_max();
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
    /// stops the rest (aborting those that do not end within the stop
    /// grace) and hands their jobs back once they have ended, flushes
    /// results, releases claimer leases, leadership and concurrency slots,
    /// and retires its presence. When it returns, none of its handlers
    /// runs any more.
    ///
    /// Before anything else it calls [`Backend::check`]: storage that is
    /// misconfigured (for Postgres, a schema that is missing or at another
    /// version than this code) is [`PoolError::Backend`] at once, without
    /// a claim. A misconfiguration first seen by a command later ends the
    /// run with the same error, after the graceful shutdown above.
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
        let process = self.process();
        let clock = MonotonicClock::new();
        let rng = match self.config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let dispatcher = Dispatcher::new(self.config.dispatcher.clone(), clock.now());
        #[cfg(feature = "mutants")]
        let dispatcher = dispatcher.with_mutation(match self.config.mutation {
            Some(PoolMutation::Dispatcher(m)) => Some(m),
            _ => None,
        });
        let mut run = Run {
            dispatcher,
            clock,
            rng,
            backend: self.backend.clone(),
            prepared: BTreeMap::new(),
            tasks: BTreeMap::new(),
            ids: BTreeMap::new(),
            handlers: JoinSet::new(),
            background: JoinSet::new(),
            tx,
            fatal: None,
            pool: &self,
        };
        info!(%process, queues = self.config.dispatcher.queues.len(), "worker pool starting");
        run.start_background();
        run.drive(rx, shutdown).await;
        run.finish().await;
        let stats = run.dispatcher.stats();
        let metrics = self.metrics.snapshot();
        let report = PoolReport {
            stats,
            metrics,
            panics: metrics.panics,
            timeouts: metrics.timeouts,
        };
        match run.fatal {
            None => {
                info!(?report, "worker pool stopped");
                Ok(report)
            }
            Some(error) => Err(PoolError::Backend(error)),
        }
    }
}

/// What a handler's future came to.
type HandlerEnd = Result<JobOutcome, crate::job::HandlerError>;

/// A handler task's end, as its `JoinSet` reports it.
type Joined = Result<(tokio::task::Id, (Receipt, HandlerEnd)), JoinError>;

/// A prepared job: its decoded arguments, until its handler starts.
struct Prepared {
    args: Args,
    kind: Kind,
    queue: QueueName,
}

/// A running handler's task, as the loop keeps it.
struct Task {
    token: CancellationToken,
    abort: tokio::task::AbortHandle,
    /// Why the dispatcher stopped it, if it did: its result is then
    /// counted as stopped (or timed out).
    stopped: Option<StopReason>,
    job: ClaimedJob,
    queue: QueueName,
    started: tokio::time::Instant,
}

/// One run of a pool: the dispatcher and the tasks executing its effects.
struct Run<'p, B> {
    pool: &'p WorkerPool<B>,
    dispatcher: Dispatcher,
    clock: MonotonicClock,
    rng: StdRng,
    backend: Arc<dyn Backend>,
    prepared: BTreeMap<Receipt, Prepared>,
    tasks: BTreeMap<Receipt, Task>,
    ids: BTreeMap<tokio::task::Id, Receipt>,
    handlers: JoinSet<(Receipt, HandlerEnd)>,
    background: JoinSet<()>,
    tx: Tx,
    /// The first misconfiguration a command found: the run's error.
    fatal: Option<BackendError>,
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
            config.dispatcher.poll_interval.to_duration(),
            config.dispatcher.retry_after.max(Millis(100)).to_duration(),
        );
        self.background.spawn(listen);
    }

    /// Executes effects and feeds inputs until shutdown completed. Inputs
    /// that are already waiting are taken in a fixed order — shutdown,
    /// then one event, then one ended handler, round after round — and
    /// the loop waits only when none is: no random choice between ready
    /// sources, so a pool on a paused clock replays exactly, and no source
    /// starves another.
    async fn drive(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut shutting_down = false;
        self.handle(Input::Tick);
        loop {
            while let Some(effect) = self.dispatcher.poll_effect() {
                if self.execute(effect) {
                    return;
                }
            }
            if !shutting_down && is_ready(shutdown.as_mut()).await {
                shutting_down = true;
                info!("worker pool shutting down");
                self.handle(Input::Shutdown);
                continue;
            }
            let mut ready = false;
            if let Ok(event) = rx.try_recv() {
                let input = self.on_event(event);
                self.handle(input);
                ready = true;
            }
            if let Some(joined) = self.handlers.try_join_next_with_id() {
                if let Some(input) = self.on_joined(joined) {
                    self.handle(input);
                }
                ready = true;
            }
            if ready {
                continue;
            }
            let timeout = self.dispatcher.poll_timeout().map(|(at, _)| at);
            let clock = self.clock;
            let sleep = async move {
                match timeout {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                biased;
                () = &mut shutdown, if !shutting_down => {
                    shutting_down = true;
                    info!("worker pool shutting down");
                    Input::Shutdown
                }
                event = rx.recv() => self.on_event(event.expect("the run holds a sender")),
                Some(joined) = self.handlers.join_next_with_id(), if !self.handlers.is_empty() => {
                    match self.on_joined(joined) {
                        Some(input) => input,
                        None => continue,
                    }
                }
                () = sleep => Input::Tick,
            };
            self.handle(input);
        }
    }

    fn on_event(&mut self, event: Event) -> Input {
        match event {
            Event::Input(input) => input,
            Event::Misconfigured(id, error) => {
                warn!(%error, "storage is misconfigured; shutting down");
                self.fatal.get_or_insert(error);
                Input::Refused(id, Refusal::Misconfigured)
            }
        }
    }

    /// Feeds one input and reports what changed.
    fn handle(&mut self, input: Input) {
        let (before, leader) = (self.dispatcher.stats(), self.dispatcher.leader());
        let draw = self.rng.random();
        self.dispatcher.handle(self.clock.now(), draw, input);
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
            let results = after.reported - before.reported;
            debug!(results, "results accepted");
        }
        if fenced > 0 {
            info!(
                attempts = fenced,
                "attempts fenced: taken away, or late results refused by epoch"
            );
        }
        if after.dropped > before.dropped {
            let results = after.dropped - before.dropped;
            warn!(
                results,
                "results storage refused even alone were given up; their jobs will be rescued"
            );
        }
        if after.hints_refuted > before.hints_refuted {
            warn!("a cancel notification was contradicted by storage (forged or stale); ignored");
        }
        if after.maintained > before.maintained {
            let jobs = after.maintained - before.maintained;
            debug!(jobs, "maintenance promoted, rescued or pruned");
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
            Effect::Execute(id, command) => self.send(id, command),
            Effect::Prepare(jobs) => self.prepare(jobs),
            Effect::StartHandler(job) => self.start_handler(job),
            Effect::StopHandler(receipt, reason) => {
                debug!(%receipt, ?reason, "stopping handler");
                if let Some(task) = self.tasks.get_mut(&receipt) {
                    task.stopped = Some(reason);
                    task.token.cancel();
                    if reason == StopReason::Timeout {
                        self.pool.metrics.timed_out(&task.job.kind);
                    }
                }
            }
            Effect::AbortHandler(receipt) => {
                #[cfg(feature = "mutants")]
                if self.pool.config.mutation == Some(PoolMutation::ReportAbortBeforeTaskEnds) {
                    // The task runs on, forgotten: its end is ignored.
                    if let Some(task) = self.tasks.remove(&receipt) {
                        self.ids.remove(&task.abort.id());
                        self.handle(Input::HandlerAborted(receipt));
                    }
                    return false;
                }
                if let Some(task) = self.tasks.get(&receipt) {
                    debug!(%receipt, "aborting handler");
                    task.abort.abort();
                }
            }
            Effect::Abandon(receipt, why) => self.abandon(receipt, why),
            Effect::ShutdownComplete => return true,
        }
        false
    }

    fn send(&mut self, id: CommandId, command: weir_core::Command) {
        let backend = Arc::clone(&self.backend);
        let metrics = Arc::clone(&self.pool.metrics);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let name = command_name(&command);
            let started = tokio::time::Instant::now();
            let event = match backend.execute(command).await {
                Ok(outcome) => Event::Input(Input::Outcome(id, outcome)),
                Err(BackendError::Misconfigured(m)) => {
                    Event::Misconfigured(id, BackendError::Misconfigured(m))
                }
                Err(BackendError::Refused(m)) => {
                    warn!(error = %m, command = name, "storage refused a command's data");
                    Event::Input(Input::Refused(id, Refusal::Data))
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

    /// Answers the dispatcher's question: which limits does this job run
    /// under? Decoding the payload is the registry's; nothing is decided.
    fn prepare(&mut self, jobs: Vec<ClaimedJob>) {
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let receipt = job.receipt;
            let queue = self
                .dispatcher
                .queue_of(receipt)
                .expect("a prepared job's attempt is held here")
                .clone();
            let answer = match self.pool.registry.get(&job.kind) {
                None => Err(Unrunnable::NoHandler),
                Some(handler) => (handler.prepare)(&job.payload).map(|(args, limits)| {
                    let kind = job.kind;
                    self.prepared
                        .insert(receipt, Prepared { args, kind, queue });
                    limits
                }),
            };
            answers.push((receipt, answer));
        }
        self.handle(Input::Prepared(answers));
    }

    fn abandon(&mut self, receipt: Receipt, why: Abandoned) {
        let prepared = self.prepared.remove(&receipt);
        debug!(%receipt, ?why, "attempt not started here");
        if let (Abandoned::Limited, Some(p)) = (why, prepared) {
            let queue = p.queue.as_str();
            let metrics = &self.pool.metrics;
            metrics.finished(receipt, queue, &p.kind, ResultKind::Limited, Duration::ZERO);
        }
    }

    fn start_handler(&mut self, job: ClaimedJob) {
        let receipt = job.receipt;
        let Some(prepared) = self.prepared.remove(&receipt) else {
            unreachable!("the dispatcher starts only a job it had prepared")
        };
        let handler = self
            .pool
            .registry
            .get(&job.kind)
            .expect("prepared, so registered")
            .clone();
        let deadline = self
            .dispatcher
            .deadline_of(receipt)
            .expect("a started job's attempt is held here");
        let token = CancellationToken::new();
        let tx = self.tx.clone();
        let on_fenced: crate::job::OnFenced = Arc::new(move |receipt| {
            let _ = tx.send(Event::Input(Input::Fenced(receipt)));
        });
        let ctx = JobContext {
            receipt,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            deadline: self.clock.instant(deadline),
            cancelled: token.clone(),
            backend: Arc::clone(&self.backend),
            metrics: Arc::clone(&self.pool.metrics),
            on_fenced,
        };
        let running = RunningJob {
            receipt,
            kind: job.kind.clone(),
            started_at: wall_clock(),
            progress: None,
        };
        // Due → claimed, on storage's clock: the wait the queue caused.
        let pickup = job.claimed_at.since(job.run_at).to_duration();
        let metrics = &self.pool.metrics;
        metrics.started(running, prepared.queue.as_str(), pickup);
        let span = tracing::info_span!("weir.job", kind = %job.kind, job = %receipt.job, epoch = %receipt.epoch, attempt = job.attempt.0);
        let future = (handler.run)(prepared.args, ctx);
        let abort = self
            .handlers
            .spawn(async move { (receipt, future.await) }.instrument(span));
        self.ids.insert(abort.id(), receipt);
        let task = Task {
            token,
            abort,
            stopped: None,
            job,
            queue: prepared.queue,
            started: tokio::time::Instant::now(),
        };
        self.tasks.insert(receipt, task);
    }

    /// A handler's task ended: what it came to, counted, as the input that
    /// tells the dispatcher.
    fn on_joined(&mut self, joined: Joined) -> Option<Input> {
        let (id, ended) = match joined {
            Ok((id, (_, result))) => (id, Ok(result)),
            Err(error) => (error.id(), Err(error)),
        };
        // Unknown only to a deliberately broken pool (mutants) that forgot it.
        let receipt = self.ids.remove(&id)?;
        let task = self
            .tasks
            .remove(&receipt)
            .expect("every handler task is kept");
        let metrics = &self.pool.metrics;
        let mut panicked = None;
        let result = match ended {
            Ok(Ok(outcome)) => Some(to_result(outcome)),
            Ok(Err(error)) => Some(retry(error.to_string())),
            Err(error) if error.is_panic() => {
                metrics.panicked(&task.job.kind);
                let message = panic_message(error);
                panicked = Some(message.clone());
                Some(retry(message))
            }
            // Aborted, as the dispatcher asked.
            Err(_) => None,
        };
        let (attempt, max) = (task.job.attempt, task.job.max_attempts);
        let kind = match (task.stopped, &result) {
            // The dispatcher fails a timed-out attempt in the handler's stead.
            (Some(StopReason::Timeout), _) => settled(retry(String::new()).settles(attempt, max)),
            (Some(_), _) | (None, None) => ResultKind::Stopped,
            (None, Some(result)) => settled(result.settles(attempt, max)),
        };
        let elapsed = task.started.elapsed();
        metrics.finished(receipt, task.queue.as_str(), &task.job.kind, kind, elapsed);
        debug!(?result, "handler ended");
        Some(match (panicked, result) {
            (Some(message), _) => Input::HandlerPanicked(receipt, message),
            (None, Some(result)) => Input::HandlerDone(receipt, result),
            (None, None) => Input::HandlerAborted(receipt),
        })
    }

    /// After shutdown completed: every handler has ended (the dispatcher
    /// saw each one end), so only the helpers are left to stop.
    async fn finish(&mut self) {
        if !self.tasks.is_empty() {
            warn!(
                left = self.tasks.len(),
                "handlers outlived the shutdown: a bug"
            );
        }
        self.background.abort_all();
        while self.background.join_next().await.is_some() {}
        if let Err(error) = self.backend.retire(self.pool.process()).await {
            debug!(%error, "retiring presence failed; it expires on its own");
        }
    }
}

/// Whether `future` is done, polled once without waiting.
async fn is_ready(mut future: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready())).await
}

fn panic_message(error: JoinError) -> String {
    let panic = error.into_panic();
    if let Some(s) = panic.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    if let Some(s) = panic.downcast_ref::<String>() {
        return s.clone();
    }
    "a panic without a message".to_string()
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
                    // A hint, not a fact: the dispatcher asks storage.
                    Ok(Some(Wakeup::Cancelled { job, epoch, holder })) if holder == process => {
                        vec![Input::CancelHint(Receipt { job, epoch })]
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

fn settled(settled: Settled) -> ResultKind {
    match settled {
        Settled::Completed => ResultKind::Completed,
        Settled::Retry => ResultKind::Retry,
        Settled::Failed => ResultKind::Failed,
        Settled::Snoozed => ResultKind::Snoozed,
        Settled::Waiting => ResultKind::Waiting,
        Settled::Cancelled => ResultKind::Cancelled,
    }
}

fn to_result(outcome: JobOutcome) -> HandlerResult {
    match outcome {
        JobOutcome::Complete => HandlerResult::Complete,
        JobOutcome::Retry { after, error } => HandlerResult::Fail(FailError {
            retry: after.map_or(Retry::Backoff, |d| Retry::After(Millis::from_duration(d))),
            message: error,
        }),
        JobOutcome::Fail(message) => HandlerResult::Fail(FailError {
            retry: Retry::Never,
            message,
        }),
        JobOutcome::Snooze(d) => HandlerResult::Snooze(Millis::from_duration(d)),
        JobOutcome::WaitExternal(d) => HandlerResult::WaitExternal(Millis::from_duration(d)),
        JobOutcome::Cancel => HandlerResult::Cancel,
    }
}
