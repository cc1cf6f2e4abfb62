//! What a worker pool counts, for its own reports and for export.
//!
//! Every count and latency goes two ways:
//!
//! * into [`PoolMetrics`], which a caller reads while the pool runs
//!   ([`PoolMetrics::snapshot`]: counters and latency percentiles) — the
//!   demo's progress bar and the benchmarks read it;
//! * into the [`metrics`] facade, so a service exports them with whichever
//!   recorder it installs (`metrics-exporter-prometheus`, or an
//!   OpenTelemetry bridge). Without a recorder the facade does nothing.
//!
//! | name (facade) | kind | labels |
//! |---|---|---|
//! | `weir_jobs_claimed_total` | counter | — |
//! | `weir_jobs_finished_total` | counter | `queue`, `kind`, `result` (`completed`, `retry`, `failed`, `snoozed`, `waiting`, `cancelled`, `limited`, `stopped`) |
//! | `weir_jobs_fenced_total` | counter | — (late results and heartbeats refused by epoch) |
//! | `weir_handler_panics_total`, `weir_handler_timeouts_total` | counter | `kind` |
//! | `weir_commands_lost_total` | counter | `command` |
//! | `weir_job_pickup_seconds` | histogram | `queue` (due → handler start) |
//! | `weir_job_run_seconds` | histogram | `kind` (handler start → result) |
//! | `weir_command_seconds` | histogram | `command` (one storage command's round trip) |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use weir_core::{Kind, Receipt, Timestamp};

/// How a handler's attempt ended, as the pool counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResultKind {
    /// Completed.
    Completed,
    /// Failed with attempts left (or a fixed retry delay).
    Retry,
    /// Failed for good.
    Failed,
    /// Snoozed by its handler.
    Snoozed,
    /// Parked for an external callback.
    Waiting,
    /// Cancelled by its handler.
    Cancelled,
    /// Handed back because a cluster-wide concurrency limit was full.
    Limited,
    /// Stopped by the pool (its job was taken away, or shutdown ran out of
    /// patience): whatever the handler returned was discarded.
    Stopped,
}

impl ResultKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Completed => "completed",
            ResultKind::Retry => "retry",
            ResultKind::Failed => "failed",
            ResultKind::Snoozed => "snoozed",
            ResultKind::Waiting => "waiting",
            ResultKind::Cancelled => "cancelled",
            ResultKind::Limited => "limited",
            ResultKind::Stopped => "stopped",
        }
    }
}

/// One running handler, as [`PoolMetrics::running`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningJob {
    /// The attempt.
    pub receipt: Receipt,
    /// Its kind.
    pub kind: Kind,
    /// When its handler started (this process's clock).
    pub started_at: Timestamp,
    /// What the handler last reported with `JobContext::set_progress`.
    pub progress: Option<serde_json::Value>,
}

/// Live counters and latencies of one pool. Shared: read it from any task.
#[derive(Debug)]
pub struct PoolMetrics {
    claimed: AtomicU64,
    started: AtomicU64,
    results: [AtomicU64; 8],
    panics: AtomicU64,
    timeouts: AtomicU64,
    fenced: AtomicU64,
    lost: AtomicU64,
    pickup_ms: Mutex<Histogram<u64>>,
    run_ms: Mutex<Histogram<u64>>,
    running: Mutex<BTreeMap<Receipt, RunningJob>>,
}

/// Counters and percentiles at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Jobs claimed.
    pub claimed: u64,
    /// Handlers started.
    pub started: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed and will be retried.
    pub retried: u64,
    /// Attempts that failed for good.
    pub failed: u64,
    /// Attempts snoozed by their handlers.
    pub snoozed: u64,
    /// Attempts parked for an external callback.
    pub waiting: u64,
    /// Attempts their handlers cancelled.
    pub cancelled: u64,
    /// Attempts handed back because a concurrency limit was full.
    pub limited: u64,
    /// Handlers stopped by the pool, their results discarded.
    pub stopped: u64,
    /// Handlers that panicked.
    pub panics: u64,
    /// Handlers that ran past their deadline.
    pub timeouts: u64,
    /// Results and heartbeats storage refused by epoch: late writes fenced.
    pub fenced: u64,
    /// Storage commands whose result was lost (retried by the dispatcher).
    pub lost: u64,
    /// Pickup latency (due → handler start), milliseconds: p50.
    pub pickup_p50_ms: u64,
    /// p99.
    pub pickup_p99_ms: u64,
    /// The largest.
    pub pickup_max_ms: u64,
    /// Handler run time, milliseconds: p50.
    pub run_p50_ms: u64,
    /// p99.
    pub run_p99_ms: u64,
}

impl PoolSnapshot {
    /// Attempts whose handlers finished, whatever they decided.
    pub fn finished(&self) -> u64 {
        self.completed
            + self.retried
            + self.failed
            + self.snoozed
            + self.waiting
            + self.cancelled
            + self.limited
            + self.stopped
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ms to one day at 3 significant figures: about 40 KB.
    Histogram::new_with_bounds(1, 24 * 3_600_000, 3).expect("static bounds are valid")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only recording and reading happen under these locks, neither of
    // which can panic half-way; a poisoned lock still holds good data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for PoolMetrics {
    fn default() -> PoolMetrics {
        PoolMetrics {
            claimed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            results: Default::default(),
            panics: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            pickup_ms: Mutex::new(histogram()),
            run_ms: Mutex::new(histogram()),
            running: Mutex::new(BTreeMap::new()),
        }
    }
}

fn result_index(kind: ResultKind) -> usize {
    match kind {
        ResultKind::Completed => 0,
        ResultKind::Retry => 1,
        ResultKind::Failed => 2,
        ResultKind::Snoozed => 3,
        ResultKind::Waiting => 4,
        ResultKind::Cancelled => 5,
        ResultKind::Limited => 6,
        ResultKind::Stopped => 7,
    }
}

impl PoolMetrics {
    /// The counters and percentiles now.
    pub fn snapshot(&self) -> PoolSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let result = |k| get(&self.results[result_index(k)]);
        let pickup = lock(&self.pickup_ms);
        let run = lock(&self.run_ms);
        PoolSnapshot {
            claimed: get(&self.claimed),
            started: get(&self.started),
            completed: result(ResultKind::Completed),
            retried: result(ResultKind::Retry),
            failed: result(ResultKind::Failed),
            snoozed: result(ResultKind::Snoozed),
            waiting: result(ResultKind::Waiting),
            cancelled: result(ResultKind::Cancelled),
            limited: result(ResultKind::Limited),
            stopped: result(ResultKind::Stopped),
            panics: get(&self.panics),
            timeouts: get(&self.timeouts),
            fenced: get(&self.fenced),
            lost: get(&self.lost),
            pickup_p50_ms: pickup.value_at_quantile(0.50),
            pickup_p99_ms: pickup.value_at_quantile(0.99),
            pickup_max_ms: pickup.max(),
            run_p50_ms: run.value_at_quantile(0.50),
            run_p99_ms: run.value_at_quantile(0.99),
        }
    }

    /// The pickup latencies recorded so far (due → handler start, in
    /// milliseconds), for merging several pools' figures.
    pub fn pickup_histogram(&self) -> Histogram<u64> {
        lock(&self.pickup_ms).clone()
    }

    /// The handlers running now, by receipt.
    pub fn running(&self) -> Vec<RunningJob> {
        lock(&self.running).values().cloned().collect()
    }

    pub(crate) fn claimed(&self, n: u64) {
        if n > 0 {
            self.claimed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("weir_jobs_claimed_total").increment(n);
        }
    }

    pub(crate) fn started(&self, job: RunningJob, queue: &str, pickup: Duration) {
        self.started.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(pickup.as_millis()).unwrap_or(u64::MAX);
        lock(&self.pickup_ms).saturating_record(ms.max(1));
        metrics::histogram!("weir_job_pickup_seconds", "queue" => queue.to_owned())
            .record(pickup.as_secs_f64());
        lock(&self.running).insert(job.receipt, job);
    }

    pub(crate) fn progress(&self, receipt: Receipt, value: serde_json::Value) {
        if let Some(job) = lock(&self.running).get_mut(&receipt) {
            job.progress = Some(value);
        }
    }

    pub(crate) fn finished(
        &self,
        receipt: Receipt,
        queue: &str,
        kind: &Kind,
        result: ResultKind,
        run: Duration,
    ) {
        self.results[result_index(result)].fetch_add(1, Ordering::Relaxed);
        lock(&self.running).remove(&receipt);
        if result != ResultKind::Limited {
            let ms = u64::try_from(run.as_millis()).unwrap_or(u64::MAX);
            lock(&self.run_ms).saturating_record(ms.max(1));
            metrics::histogram!("weir_job_run_seconds", "kind" => kind.as_str().to_owned())
                .record(run.as_secs_f64());
        }
        metrics::counter!(
            "weir_jobs_finished_total",
            "queue" => queue.to_owned(),
            "kind" => kind.as_str().to_owned(),
            "result" => result.as_str()
        )
        .increment(1);
    }

    pub(crate) fn panicked(&self, kind: &Kind) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_handler_panics_total", "kind" => kind.as_str().to_owned())
            .increment(1);
    }

    pub(crate) fn timed_out(&self, kind: &Kind) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_handler_timeouts_total", "kind" => kind.as_str().to_owned())
            .increment(1);
    }

    pub(crate) fn fenced(&self, n: u64) {
        if n > 0 {
            self.fenced.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("weir_jobs_fenced_total").increment(n);
        }
    }

    pub(crate) fn lost(&self, command: &'static str) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_commands_lost_total", "command" => command).increment(1);
    }

    pub(crate) fn command(&self, command: &'static str, took: Duration) {
        metrics::histogram!("weir_command_seconds", "command" => command)
            .record(took.as_secs_f64());
    }
}
