//! The worker pool: the core's [`Dispatcher`] driven by tokio.
//!
//! All decisions — when to claim and how much, when to flush results, when
//! to heartbeat, when to lead maintenance, how to shut down — are the
//! dispatcher's. This loop only executes its effects (storage commands on
//! the backend, handlers on tasks) and feeds the results back, so the same
//! logic runs in the simulator.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use weir_core::{
    ClaimedJob, Dispatcher, DispatcherConfig, Effect, FailError, HandlerResult, Input, Millis,
    Receipt, Retry, Stats, Timestamp,
};

use crate::backend::{Backend, BackendError};
use crate::job::{JobContext, JobOutcome};
use crate::registry::Registry;

/// The wall clock, in the core's milliseconds.
pub fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// Why a pool stopped without finishing its shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Storage is not usable as configured; retrying will not help.
    #[error(transparent)]
    Backend(BackendError),
    /// The pool's configuration cannot work.
    #[error("invalid worker pool configuration: {0}")]
    Config(String),
}

/// What a pool did, once it has shut down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// The dispatcher's counters.
    pub stats: Stats,
    /// Handlers that panicked (their attempts were failed and retried).
    pub panics: u64,
    /// Handlers that ran past their deadline (failed and retried).
    pub timeouts: u64,
}

/// Runs handlers for claimed jobs until shut down.
#[derive(Debug)]
pub struct WorkerPool<B> {
    backend: Arc<B>,
    registry: Registry,
    config: DispatcherConfig,
}

enum Event {
    Input(Input),
    Panicked,
    TimedOut,
    Fatal(BackendError),
}

impl<B: Backend> WorkerPool<B> {
    /// A pool over `backend` running `registry`'s handlers, configured by
    /// `config` (its `kinds` are set to the registry's, so the pool never
    /// claims a job it cannot run).
    pub fn new(
        backend: Arc<B>,
        registry: Registry,
        mut config: DispatcherConfig,
    ) -> Result<WorkerPool<B>, PoolError> {
        if config.queues.is_empty() {
            return Err(PoolError::Config("no queues to work".into()));
        }
        if config.queues.iter().any(|q| q.max_workers == 0) {
            return Err(PoolError::Config("a queue has max_workers = 0".into()));
        }
        if config.claim_batch_max == 0 || config.flush_max == 0 {
            return Err(PoolError::Config(
                "claim_batch_max and flush_max must be at least 1".into(),
            ));
        }
        let kinds: std::collections::BTreeSet<_> = registry.kinds().cloned().collect();
        if kinds.is_empty() {
            return Err(PoolError::Config("no handlers registered".into()));
        }
        config.kinds = Some(kinds);
        Ok(WorkerPool {
            backend,
            registry,
            config,
        })
    }

    /// Runs until `shutdown` completes, then shuts down gracefully: stops
    /// claiming, lets running handlers finish until the shutdown timeout,
    /// stops the rest and hands their jobs back, flushes results, and
    /// releases claimer leases and leadership.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PoolReport, PoolError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let mut dispatcher = Dispatcher::new(self.config.clone(), wall_clock());
        let mut tokens: BTreeMap<Receipt, CancellationToken> = BTreeMap::new();
        let mut report = PoolReport::default();
        let mut shutting_down = false;
        tokio::pin!(shutdown);
        info!(process = %self.config.process, queues = self.config.queues.len(), "worker pool starting");
        dispatcher.handle(wall_clock(), rand::rng().random(), Input::Tick);
        loop {
            while let Some(effect) = dispatcher.poll_effect() {
                match effect {
                    Effect::Execute(id, command) => {
                        let backend = Arc::clone(&self.backend);
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let event = match backend.execute(command).await {
                                Ok(outcome) => Event::Input(Input::Outcome(id, outcome)),
                                Err(BackendError::Misconfigured(m)) => {
                                    Event::Fatal(BackendError::Misconfigured(m))
                                }
                                Err(e) => {
                                    warn!(error = %e, "storage command lost; the dispatcher retries");
                                    Event::Input(Input::Lost(id))
                                }
                            };
                            let _ = tx.send(event);
                        });
                    }
                    Effect::StartHandler(job) => {
                        let token = CancellationToken::new();
                        tokens.insert(job.receipt, token.clone());
                        self.start_handler(job, token, tx.clone());
                    }
                    Effect::StopHandler(receipt, reason) => {
                        debug!(%receipt, ?reason, "stopping handler");
                        if let Some(token) = tokens.remove(&receipt) {
                            token.cancel();
                        }
                    }
                    Effect::ShutdownComplete => {
                        report.stats = dispatcher.stats();
                        info!(?report, "worker pool stopped");
                        return Ok(report);
                    }
                }
            }
            let timeout = dispatcher.poll_timeout().map(|(at, _)| at);
            let sleep = async {
                match timeout {
                    Some(at) => tokio::time::sleep(duration_until(at)).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                event = rx.recv() => match event.expect("the loop holds a sender") {
                    Event::Input(input) => input,
                    Event::Panicked => { report.panics += 1; continue; }
                    Event::TimedOut => { report.timeouts += 1; continue; }
                    Event::Fatal(e) => return Err(PoolError::Backend(e)),
                },
                () = &mut shutdown, if !shutting_down => {
                    shutting_down = true;
                    info!("worker pool shutting down");
                    Input::Shutdown
                }
                () = sleep => Input::Tick,
            };
            if let Input::HandlerDone(receipt, _) = &input {
                tokens.remove(receipt);
            }
            dispatcher.handle(wall_clock(), rand::rng().random(), input);
        }
    }

    fn start_handler(
        &self,
        job: ClaimedJob,
        token: CancellationToken,
        tx: mpsc::UnboundedSender<Event>,
    ) {
        let receipt = job.receipt;
        let Some(handler) = self.registry.get(&job.kind) else {
            // Cannot happen: the pool claims only registered kinds. Hand
            // the job back rather than lose it.
            warn!(%receipt, kind = %job.kind, "claimed a kind with no handler; handing it back");
            let _ = tx.send(Event::Input(Input::HandlerDone(
                receipt,
                HandlerResult::Snooze(Millis(1_000)),
            )));
            return;
        };
        let ctx = JobContext {
            receipt,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            deadline: job.deadline,
            cancelled: token,
        };
        let span = tracing::info_span!("weir.job", kind = %job.kind, job = %receipt.job, epoch = %receipt.epoch, attempt = job.attempt.0);
        let deadline = duration_until(job.deadline);
        tokio::spawn(
            async move {
                let task = tokio::spawn(handler(job.payload, ctx));
                let abort = task.abort_handle();
                let result = match tokio::time::timeout(deadline, task).await {
                    Ok(Ok(Ok(outcome))) => to_result(outcome),
                    Ok(Ok(Err(error))) => retry(error.to_string()),
                    Ok(Err(join)) => {
                        let _ = tx.send(Event::Panicked);
                        retry(format!("handler panicked: {join}"))
                    }
                    Err(_) => {
                        abort.abort();
                        let _ = tx.send(Event::TimedOut);
                        retry("handler ran past its deadline".to_string())
                    }
                };
                debug!(?result, "handler finished");
                let _ = tx.send(Event::Input(Input::HandlerDone(receipt, result)));
            }
            .instrument(span),
        );
    }
}

fn retry(message: String) -> HandlerResult {
    HandlerResult::Fail(FailError {
        retry: Retry::Backoff,
        message,
    })
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
