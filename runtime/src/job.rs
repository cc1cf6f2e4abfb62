//! Typed jobs: a serde type with a kind and defaults, and what its handler
//! can decide.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_core::cmd;
use weir_core::{Attempt, Receipt, Reject};

use crate::backend::{Backend, BackendError, BackendExt};
use crate::metrics::PoolMetrics;

/// A job's arguments, with the kind its handler is registered under and
/// the defaults every insert starts from.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl weir::JobArgs for SendEmail {
///     const KIND: &'static str = "email.send";
///     const QUEUE: &'static str = "mail";
///     const MAX_ATTEMPTS: u32 = 5;
/// }
/// ```
pub trait JobArgs: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind: `[A-Za-z0-9_.:-]`, 1–128 characters.
    const KIND: &'static str;
    /// The queue it goes to by default.
    const QUEUE: &'static str = "default";
    /// Its default priority (lower runs first).
    const PRIORITY: i16 = 0;
    /// How many attempts it gets by default.
    const MAX_ATTEMPTS: u32 = 25;
    /// How long one attempt may run by default.
    const TIMEOUT: Duration = Duration::from_secs(30 * 60);

    /// This kind's retry backoff, stored with each job at insert, so every
    /// process — and the leader's rescue of a crashed attempt — waits the
    /// same before its next attempt. `None` (the default): the backend's
    /// configured policy (`PgConfig.world.backoff`, the memory backend's
    /// world configuration). A handler overrides it for one attempt with
    /// [`JobOutcome::Retry`]'s `after`.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use weir::core::{Backoff, Millis};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct CallPartner;
    ///
    /// impl weir::JobArgs for CallPartner {
    ///     const KIND: &'static str = "partner.call";
    ///     const MAX_ATTEMPTS: u32 = 8;
    ///     // 10 s, 30 s, 90 s, … at most 15 min, up to 10% earlier.
    ///     fn backoff() -> Option<Backoff> {
    ///         Backoff::new(Millis::from_secs(10), 3, Millis::from_secs(900), 100).ok()
    ///     }
    /// }
    /// ```
    fn backoff() -> Option<weir_core::Backoff> {
        None
    }

    /// A cluster-wide concurrency limit for this job: at most `permits`
    /// jobs naming the same semaphore run at once, across every process
    /// (`Some(("tenant:42".into(), 2))`). The name follows
    /// [`weir_core::SemaphoreName`]'s rules and `permits` must be at least
    /// 1; an invalid limit fails the job for good with the reason (see
    /// [`crate::InvalidLimit`]). `None` (the default): no limit.
    fn concurrency(&self) -> Option<(String, u16)> {
        None
    }
}

/// What a handler decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobOutcome {
    /// Done.
    Complete,
    /// Failed; retry after the backoff policy's delay, or after `after`.
    Retry {
        /// A fixed delay instead of the backoff policy.
        after: Option<Duration>,
        /// Why, kept on the job.
        error: String,
    },
    /// Failed for good: no retry can help.
    Fail(String),
    /// Not now: run again after this delay, without using an attempt.
    Snooze(Duration),
    /// Parked until an external system calls back (resume with the
    /// receipt), for at most this long.
    WaitExternal(Duration),
    /// The job should not run at all: cancel it.
    Cancel,
}

/// A handler's error: the attempt is retried with backoff (while attempts
/// remain) and the message is kept on the job.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`JobContext::heartbeat`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatError {
    /// The attempt is no longer this handler's (cancelled, rescued after a
    /// stall, timed out): stop, and do not perform side effects that
    /// assume the job is still yours. The cancellation token has fired.
    #[error("the attempt was taken away: {0}")]
    Fenced(Reject),
    /// Storage did not answer; the attempt may still be yours.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Reports a fenced receipt back to the pool's loop.
pub(crate) type OnFenced = Arc<dyn Fn(Receipt) + Send + Sync>;

/// What a running handler can see and use.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) receipt: Receipt,
    pub(crate) attempt: Attempt,
    pub(crate) max_attempts: Attempt,
    /// When the attempt must have ended, on the pool's monotonic clock.
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) cancelled: CancellationToken,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) metrics: Arc<PoolMetrics>,
    pub(crate) on_fenced: OnFenced,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("receipt", &self.receipt)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("time_left", &self.time_left())
            .field("cancelled", &self.cancelled.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// This attempt's receipt: hand it to an external system that will
    /// resume the job after [`JobOutcome::WaitExternal`].
    pub fn receipt(&self) -> Receipt {
        self.receipt
    }

    /// This attempt's number (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt.0
    }

    /// Attempts allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.0
    }

    /// How long this attempt may still run before the pool stops it (its
    /// time budget, as storage set it, measured on this process's
    /// monotonic clock from the claim).
    pub fn time_left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Fires when the job was cancelled, its lease was lost (it was rescued
    /// elsewhere), or the worker pool is shutting down. A handler should
    /// stop soon after; whatever it returns then is discarded.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancelled
    }

    /// Whether [`JobContext::cancelled`] fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// Heartbeats this attempt now and says whether it is still this
    /// handler's. The pool already heartbeats every running job on its
    /// interval; call this before a side effect that must not happen twice
    /// (a payment, an email), so a handler that stalled and was rescued
    /// learns it before acting. When the attempt was taken away, the
    /// cancellation token fires and the pool stops tracking the attempt.
    pub async fn heartbeat(&self) -> Result<(), HeartbeatError> {
        let heartbeat = cmd::Heartbeat {
            receipts: vec![self.receipt],
        };
        let mut answers = self
            .backend
            .run(heartbeat)
            .await?
            .map_err(HeartbeatError::Fenced)?;
        let answer = answers.pop().expect("one receipt, one answer");
        answer.map_err(|reject| {
            self.cancelled.cancel();
            (self.on_fenced)(self.receipt);
            HeartbeatError::Fenced(reject)
        })
    }

    /// Records this attempt's progress (any JSON value, for example
    /// `{"done": 40, "of": 100}`). It is kept in the pool, shown by
    /// [`crate::PoolMetrics::running`] and in a tracing event; it is not
    /// written to storage, so it costs no database write.
    pub fn set_progress(&self, progress: impl Serialize) {
        match serde_json::to_value(progress) {
            Ok(value) => {
                tracing::debug!(receipt = %self.receipt, progress = %value, "job progress");
                self.metrics.progress(self.receipt, value);
            }
            Err(error) => tracing::warn!(%error, "job progress does not serialise; ignored"),
        }
    }
}
