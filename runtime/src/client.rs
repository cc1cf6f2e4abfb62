//! The client: insert jobs, and the operator's actions on them.

use std::sync::Arc;
use std::time::Duration;

use weir_core::{
    Command, Enqueued, InvalidJob, InvalidName, JobId, Kind, Millis, NewJob, Outcome, Payload,
    Priority, QueueName, Receipt, Reject, StateName, Timestamp, UniqueKey,
};

use crate::backend::{Backend, BackendError};
use crate::job::JobArgs;

/// Everything that can go wrong with a client call, each with what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A queue name, kind or unique key is malformed: fix the input.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A job's options are out of bounds (attempts, timeout, payload size,
    /// delay); nothing of the batch was written.
    #[error("job {index} is invalid: {error}")]
    InvalidJob {
        /// Its position in the batch.
        index: usize,
        /// What is wrong.
        error: InvalidJob,
    },
    /// The arguments do not serialise as JSON.
    #[error("job arguments do not serialise: {0}")]
    Payload(#[from] serde_json::Error),
    /// The command was refused (the job is finished, not retryable, ...).
    #[error(transparent)]
    Rejected(Reject),
    /// Storage did not answer; see [`BackendError`] for whether it applied.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Per-insert choices that override the job type's defaults.
#[derive(Clone, Debug, Default)]
pub struct InsertOptions {
    /// Another queue.
    pub queue: Option<String>,
    /// Another priority (lower runs first).
    pub priority: Option<i16>,
    /// Another number of attempts.
    pub max_attempts: Option<u32>,
    /// Another per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Run no earlier than this long from now.
    pub delay: Option<Duration>,
    /// At most one job of this kind with this key exists until it is
    /// pruned; inserting another returns the existing one.
    pub unique_key: Option<String>,
}

/// A job that was inserted, or the existing one a unique key matched.
pub type Inserted = Enqueued;

/// Inserts jobs and administers them through a [`Backend`].
#[derive(Debug)]
pub struct Client<B> {
    backend: Arc<B>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client {
            backend: Arc::clone(&self.backend),
        }
    }
}

fn millis(d: Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Builds the core's [`NewJob`] for `args` with `options` over the type's
/// defaults, at `now`.
pub fn new_job<J: JobArgs>(
    args: &J,
    options: &InsertOptions,
    now: Timestamp,
) -> Result<NewJob, ClientError> {
    let queue = QueueName::new(options.queue.as_deref().unwrap_or(J::QUEUE))?;
    let kind = Kind::new(J::KIND)?;
    let payload = Payload(serde_json::to_vec(args)?);
    Ok(NewJob {
        priority: Priority(options.priority.unwrap_or(J::PRIORITY)),
        max_attempts: options.max_attempts.unwrap_or(J::MAX_ATTEMPTS),
        timeout: millis(options.timeout.unwrap_or(J::TIMEOUT)),
        run_at: options.delay.map(|d| now.plus(millis(d))),
        unique_key: options.unique_key.clone().map(UniqueKey::new).transpose()?,
        ..NewJob::new(queue, kind, payload)
    })
}

impl<B: Backend> Client<B> {
    /// A client over `backend`.
    pub fn new(backend: Arc<B>) -> Client<B> {
        Client { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    async fn execute(&self, command: Command) -> Result<Outcome, ClientError> {
        Ok(self.backend.execute(command).await?)
    }

    /// Inserts one job with the type's defaults.
    pub async fn insert<J: JobArgs>(&self, args: &J) -> Result<Inserted, ClientError> {
        self.insert_with(args, InsertOptions::default()).await
    }

    /// Inserts one job with options.
    pub async fn insert_with<J: JobArgs>(
        &self,
        args: &J,
        options: InsertOptions,
    ) -> Result<Inserted, ClientError> {
        let mut inserted = self.insert_many([(args, options)]).await?;
        Ok(inserted.remove(0))
    }

    /// Inserts many jobs in one command: all of them or none.
    pub async fn insert_many<'a, J: JobArgs>(
        &self,
        jobs: impl IntoIterator<Item = (&'a J, InsertOptions)>,
    ) -> Result<Vec<Inserted>, ClientError> {
        let now = self.backend.now().await?;
        let jobs = jobs
            .into_iter()
            .map(|(args, options)| new_job(args, &options, now))
            .collect::<Result<Vec<_>, _>>()?;
        match self.execute(Command::Enqueue { jobs }).await? {
            Outcome::Enqueued(Ok(inserted)) => Ok(inserted),
            Outcome::Enqueued(Err(Reject::InvalidJob { index, error })) => {
                Err(ClientError::InvalidJob { index, error })
            }
            Outcome::Enqueued(Err(reject)) => Err(ClientError::Rejected(reject)),
            other => unreachable!("enqueue answered {other:?}"),
        }
    }

    /// Cancels a job in any unfinished state; a running one's handler is
    /// fenced. Returns the state it was cancelled from.
    pub async fn cancel(&self, job: JobId) -> Result<StateName, ClientError> {
        match self.execute(Command::Cancel { job }).await? {
            Outcome::Cancelled(result) => result.map_err(ClientError::Rejected),
            other => unreachable!("cancel answered {other:?}"),
        }
    }

    /// Retries a failed or cancelled job with fresh attempts.
    pub async fn retry(&self, job: JobId) -> Result<(), ClientError> {
        match self.execute(Command::Retry { job }).await? {
            Outcome::Retried(result) => result.map_err(ClientError::Rejected),
            other => unreachable!("retry answered {other:?}"),
        }
    }

    /// Resumes a job parked by [`crate::JobOutcome::WaitExternal`]: the
    /// external system presents the receipt its handler handed out.
    pub async fn resume_external(&self, receipt: Receipt) -> Result<(), ClientError> {
        match self.execute(Command::ResumeExternal { receipt }).await? {
            Outcome::Resumed(result) => result.map_err(ClientError::Rejected),
            other => unreachable!("resume answered {other:?}"),
        }
    }

    /// Stops claims from a queue (jobs stay where they are). Returns whether
    /// this call changed anything.
    pub async fn pause(&self, queue: &str) -> Result<bool, ClientError> {
        let queue = QueueName::new(queue)?;
        match self.execute(Command::PauseQueue { queue }).await? {
            Outcome::QueuePauseChanged(changed) => Ok(changed),
            other => unreachable!("pause answered {other:?}"),
        }
    }

    /// Allows claims from a queue again.
    pub async fn resume(&self, queue: &str) -> Result<bool, ClientError> {
        let queue = QueueName::new(queue)?;
        match self.execute(Command::ResumeQueue { queue }).await? {
            Outcome::QueuePauseChanged(changed) => Ok(changed),
            other => unreachable!("resume answered {other:?}"),
        }
    }
}
