//! The storage backend: commands in, outcomes out.
//!
//! A backend gives, for every [`Command`], the [`Outcome`] that
//! [`weir_core::World::apply`] gives at the backend's own clock. The memory
//! backend *is* a `World` behind a lock; the Postgres backend is held to it
//! by differential tests. Nothing else about storage leaks into the worker
//! logic, which lives in the core's sans-IO [`weir_core::Dispatcher`].
//!
//! Beside the commands a backend offers four things that decide nothing:
//!
//! * **reads** for operators ([`Backend::job`], [`Backend::jobs`],
//!   [`Backend::queues`]): what `weir jobs` and `weir queues` show;
//! * **a bulk path** ([`Backend::enqueue_bulk`]): the same all-or-none
//!   insert as [`Command::Enqueue`], by the backend's fastest route and
//!   without the per-command batch limit;
//! * **presence** ([`Backend::announce`], [`Backend::retire`],
//!   [`Backend::workers`]): which worker processes are alive and which
//!   kinds they can run, so a job no live process can run is shown as such
//!   instead of silently waiting;
//! * **wake-ups** ([`Backend::subscribe`]): hints that work arrived or an
//!   attempt was taken away. Optional: without them workers poll.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use weir_core::{
    answer_of, Command, Enqueued, Epoch, Job, JobId, Kind, NewJob, Outcome, ProcessId, QueueName,
    Reject, Request, Timestamp,
};

/// Why a command has no outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The command may or may not have been applied: the connection broke
    /// after it was sent, or the answer timed out. Callers treat this as a
    /// lost result (the dispatcher's [`weir_core::Input::Lost`]).
    #[error("result unknown: {0}")]
    Lost(String),
    /// The command was certainly not applied (no connection could be had,
    /// the transaction was rolled back). Safe to retry.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The storage is not usable as configured (missing schema, a schema
    /// version newer than this code, missing privileges). Retrying will not help.
    #[error("backend misconfigured: {0}")]
    Misconfigured(String),
    /// The command was certainly not applied, and the same command would be
    /// refused again: storage refused the data it carries (for Postgres, a
    /// data exception, such as text holding a byte Postgres cannot store).
    /// Retrying it unchanged will not help; the rest of the storage works.
    #[error("refused by storage: {0}")]
    Refused(String),
}

// The operator reads' filter and answer belong to the core, beside the
// reference answers over a `World` (`weir_core::reads`); the runtime names
// them here and at its root as before.
pub use weir_core::reads::{JobFilter, QueueInfo};

/// What a worker process says about itself when it announces its presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Its process id (the one its claims and leases carry).
    pub process: ProcessId,
    /// A human-readable label: host name and OS process id, say.
    pub label: String,
    /// The queues it works.
    pub queues: Vec<QueueName>,
    /// The kinds it can run.
    pub kinds: Vec<Kind>,
    /// When it started.
    pub started_at: Timestamp,
}

/// A live worker process, as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// What it announced.
    pub presence: Presence,
    /// When it last announced itself (the backend's clock).
    pub seen_at: Timestamp,
    /// It counts as gone after this, unless it announces itself again.
    pub expires_at: Timestamp,
}

/// A hint from storage. Hints can be lost; workers poll as well.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// Jobs of this queue became available.
    Jobs(QueueName),
    /// A running attempt was taken from its holder (cancelled or rescued).
    /// A hint like every wake-up (it may be forged): the pool asks storage
    /// before it stops the handler.
    Cancelled {
        /// The job.
        job: JobId,
        /// The epoch of the attempt that was fenced.
        epoch: Epoch,
        /// The holder of that attempt.
        holder: ProcessId,
    },
    /// Hints may have been missed (the listening connection was lost and
    /// re-established): look for work anyway.
    Missed,
}

/// A stream of [`Wakeup`]s from [`Backend::subscribe`].
#[async_trait]
pub trait Subscription: Send {
    /// The next wake-up, or `Ok(None)` when `within` passed without one.
    /// An error means the subscription is broken: subscribe again.
    async fn next(&mut self, within: Duration) -> Result<Option<Wakeup>, BackendError>;
}

/// A place jobs, leases, semaphores and the leader are stored.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Applies one command at the backend's clock and returns its outcome.
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError>;

    /// The backend's clock: every command is applied at this time.
    async fn now(&self) -> Result<Timestamp, BackendError>;

    /// The most items one batch command may carry
    /// ([`weir_core::WorldConfig::batch_max`] of the world the backend
    /// stands for); a longer batch is refused whole with
    /// [`Reject::BatchTooLarge`]. A worker pool checks its batch sizes
    /// against it before it starts, and cuts heartbeats to fit.
    fn batch_max(&self) -> usize;

    /// Inserts `jobs` all or none, like [`Command::Enqueue`] but by the
    /// fastest route the backend has and without
    /// [`weir_core::WorldConfig::batch_max`]: an invalid job refuses the
    /// whole call with [`Reject::InvalidJob`] and writes nothing. Unique
    /// keys are honoured.
    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError>;

    /// One job, if it exists (a pruned job does not).
    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError>;

    /// Jobs passing `filter`, in id order, at most
    /// `min(filter.limit, JobFilter::LIMIT_MAX)` of them.
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError>;

    /// Every queue that has jobs or is paused, in name order.
    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError>;

    /// Records (or refreshes) a live worker process; it counts as alive
    /// for `ttl` from the backend's clock.
    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError>;

    /// Removes a worker process's presence (on graceful shutdown).
    async fn retire(&self, process: ProcessId) -> Result<(), BackendError>;

    /// The worker processes whose presence has not expired, by process id.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError>;

    /// Wake-ups, if this backend sends any (`Ok(None)`: it does not, so
    /// workers find work by polling alone).
    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, BackendError> {
        Ok(None)
    }

    /// Checks that the storage is usable as configured, before work starts:
    /// [`BackendError::Misconfigured`] when it is not and retrying will not
    /// help (for Postgres: the schema is missing, or at a version older or
    /// newer than this code). [`crate::WorkerPool::run`] calls it once and
    /// refuses to start on `Misconfigured`. The default has nothing to
    /// check.
    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Typed requests on any [`Backend`]: `backend.run(cmd::Claim { .. })`
/// answers with the claim's own `Result<Claimed, Reject>`, so no caller
/// unpacks an [`Outcome`] by hand. Implemented for every backend.
pub trait BackendExt: Backend {
    /// [`Backend::execute`] of one request of [`weir_core::cmd`].
    ///
    /// # Panics
    ///
    /// When the backend answers with the outcome of another command: it
    /// broke the protocol, which is a bug in the backend.
    fn run<R>(&self, request: R) -> impl Future<Output = Result<R::Output, BackendError>> + Send
    where
        R: Request + Send,
    {
        async move { Ok(answer_of::<R>(self.execute(request.into()).await?)) }
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
