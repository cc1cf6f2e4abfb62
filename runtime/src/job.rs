//! Typed jobs: a serde type with a kind and defaults, and what its handler
//! can decide.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_core::{Attempt, Receipt, Timestamp};

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

/// What a running handler can see and use.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) receipt: Receipt,
    pub(crate) attempt: Attempt,
    pub(crate) max_attempts: Attempt,
    pub(crate) deadline: Timestamp,
    pub(crate) cancelled: CancellationToken,
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

    /// When this attempt times out (milliseconds since the Unix epoch).
    pub fn deadline(&self) -> Timestamp {
        self.deadline
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
}
