//! The client: insert jobs, and the operator's actions on them.

use std::sync::Arc;
use std::time::Duration;

use weir_core::cmd;
use weir_core::{
    Enqueued, InvalidJob, InvalidName, Job, JobId, Kind, Millis, NewJob, Payload, Priority,
    QueueName, Receipt, Reject, Request, StateName, Timestamp, UniqueKey,
};

use crate::backend::{Backend, BackendError, BackendExt, JobFilter, QueueInfo, WorkerInfo};
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
    /// The arguments do not serialise as JSON, or a raw payload is not
    /// valid JSON.
    #[error("job arguments are not valid JSON: {0}")]
    Payload(#[from] serde_json::Error),
    /// The options contradict each other (`delay` and `run_at` both set).
    #[error("invalid insert options: {0}")]
    Options(&'static str),
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
    /// Run no earlier than this time (milliseconds since the Unix epoch);
    /// not together with `delay`.
    pub run_at: Option<Timestamp>,
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

/// Builds the core's [`NewJob`] for `args` with `options` over the type's
/// defaults, at `now`.
pub fn new_job<J: JobArgs>(
    args: &J,
    options: &InsertOptions,
    now: Timestamp,
) -> Result<NewJob, ClientError> {
    let defaults = Defaults {
        kind: J::KIND,
        queue: J::QUEUE,
        priority: J::PRIORITY,
        max_attempts: J::MAX_ATTEMPTS,
        timeout: J::TIMEOUT,
        backoff: J::backoff(),
    };
    build(&defaults, Payload(serde_json::to_vec(args)?), options, now)
}

/// A job type's defaults, for jobs built without the type.
struct Defaults<'a> {
    kind: &'a str,
    queue: &'a str,
    priority: i16,
    max_attempts: u32,
    timeout: Duration,
    backoff: Option<weir_core::Backoff>,
}

fn build(
    defaults: &Defaults<'_>,
    payload: Payload,
    options: &InsertOptions,
    now: Timestamp,
) -> Result<NewJob, ClientError> {
    let queue = QueueName::new(options.queue.as_deref().unwrap_or(defaults.queue))?;
    let kind = Kind::new(defaults.kind)?;
    let run_at = match (options.delay, options.run_at) {
        (Some(_), Some(_)) => return Err(ClientError::Options("set delay or run_at, not both")),
        (Some(delay), None) => Some(now.plus(Millis::from_duration(delay))),
        (None, run_at) => run_at,
    };
    Ok(NewJob {
        priority: Priority(options.priority.unwrap_or(defaults.priority)),
        max_attempts: options.max_attempts.unwrap_or(defaults.max_attempts),
        timeout: Millis::from_duration(options.timeout.unwrap_or(defaults.timeout)),
        run_at,
        unique_key: options.unique_key.clone().map(UniqueKey::new).transpose()?,
        backoff: defaults.backoff,
        ..NewJob::new(queue, kind, payload)
    })
}

/// Builds the core's [`NewJob`] of `kind` from raw JSON bytes (checked to
/// be valid JSON), with the core's defaults under `options`. For callers
/// without the job's Rust type: other languages' payloads, the command line.
pub fn new_raw_job(
    kind: &str,
    json: &[u8],
    options: &InsertOptions,
    now: Timestamp,
) -> Result<NewJob, ClientError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(json)?;
    let defaults = Defaults {
        kind,
        queue: "default",
        priority: 0,
        max_attempts: 25,
        timeout: Duration::from_secs(30 * 60),
        backoff: None,
    };
    build(&defaults, Payload(json.to_vec()), options, now)
}

/// Jobs of a kind that no live worker of their queue can run: they wait,
/// visible, until a process that runs the kind starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stranded {
    /// The queue.
    pub queue: QueueName,
    /// The kind no live worker on the queue has a handler for.
    pub kind: Kind,
    /// How many unfinished jobs of it wait there.
    pub jobs: u64,
}

/// The kinds, per queue, with unfinished jobs that no live worker working
/// that queue can run.
pub fn stranded(queues: &[QueueInfo], workers: &[WorkerInfo]) -> Vec<Stranded> {
    let mut out = Vec::new();
    for info in queues {
        for (kind, jobs) in &info.unfinished_by_kind {
            let runnable = workers.iter().any(|w| {
                w.presence.queues.contains(&info.queue) && w.presence.kinds.contains(kind)
            });
            if !runnable {
                out.push(Stranded {
                    queue: info.queue.clone(),
                    kind: kind.clone(),
                    jobs: *jobs,
                });
            }
        }
    }
    out
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

    async fn run<R: Request + Send>(&self, request: R) -> Result<R::Output, ClientError> {
        Ok(self.backend.run(request).await?)
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
        let jobs = self.typed_jobs(jobs).await?;
        self.enqueue(jobs).await
    }

    /// Builds every job at the backend's clock; the first invalid one
    /// stops the whole batch.
    async fn typed_jobs<'a, J: JobArgs>(
        &self,
        jobs: impl IntoIterator<Item = (&'a J, InsertOptions)>,
    ) -> Result<Vec<NewJob>, ClientError> {
        let now = self.backend.now().await?;
        jobs.into_iter()
            .map(|(args, options)| new_job(args, &options, now))
            .collect()
    }

    /// Inserts a job of `kind` whose arguments are raw JSON bytes (checked).
    pub async fn insert_json(
        &self,
        kind: &str,
        json: &[u8],
        options: InsertOptions,
    ) -> Result<Inserted, ClientError> {
        let now = self.backend.now().await?;
        let job = new_raw_job(kind, json, &options, now)?;
        let mut inserted = self.enqueue(vec![job]).await?;
        Ok(inserted.remove(0))
    }

    /// Inserts many jobs by the backend's bulk path (`COPY` on Postgres):
    /// all or none, with no per-batch limit. Returns them in input order.
    pub async fn insert_bulk<'a, J: JobArgs>(
        &self,
        jobs: impl IntoIterator<Item = (&'a J, InsertOptions)>,
    ) -> Result<Vec<Inserted>, ClientError> {
        let jobs = self.typed_jobs(jobs).await?;
        match self.backend.enqueue_bulk(jobs).await? {
            Ok(inserted) => Ok(inserted),
            Err(reject) => Err(rejected(reject)),
        }
    }

    /// Inserts already built jobs ([`new_job`], [`new_raw_job`]) in one
    /// command, all or none.
    pub async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, ClientError> {
        self.run(cmd::Enqueue { jobs }).await?.map_err(rejected)
    }

    /// One job, as stored now; `None` if it never existed or was pruned.
    pub async fn job(&self, id: JobId) -> Result<Option<Job>, ClientError> {
        Ok(self.backend.job(id).await?)
    }

    /// Jobs passing `filter`, in id order.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, ClientError> {
        Ok(self.backend.jobs(filter).await?)
    }

    /// Every queue with jobs or paused: depth per state, paused or not.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        Ok(self.backend.queues().await?)
    }

    /// The live worker processes.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClientError> {
        Ok(self.backend.workers().await?)
    }

    /// Unfinished jobs whose kind no live worker on their queue can run.
    pub async fn stranded(&self) -> Result<Vec<Stranded>, ClientError> {
        let queues = self.backend.queues().await?;
        let workers = self.backend.workers().await?;
        Ok(stranded(&queues, &workers))
    }

    /// Cancels a job in any unfinished state; a running one's handler is
    /// fenced. Returns the state it was cancelled from.
    pub async fn cancel(&self, job: JobId) -> Result<StateName, ClientError> {
        self.run(cmd::Cancel { job })
            .await?
            .map_err(ClientError::Rejected)
    }

    /// Retries a failed or cancelled job with fresh attempts.
    pub async fn retry(&self, job: JobId) -> Result<(), ClientError> {
        self.run(cmd::Retry { job })
            .await?
            .map_err(ClientError::Rejected)
    }

    /// Resumes a job parked by [`crate::JobOutcome::WaitExternal`]: the
    /// external system presents the receipt its handler handed out.
    pub async fn resume_external(&self, receipt: Receipt) -> Result<(), ClientError> {
        self.run(cmd::ResumeExternal { receipt })
            .await?
            .map_err(ClientError::Rejected)
    }

    /// Stops claims from a queue (jobs stay where they are). Returns whether
    /// this call changed anything.
    pub async fn pause(&self, queue: &str) -> Result<bool, ClientError> {
        let queue = QueueName::new(queue)?;
        self.run(cmd::PauseQueue { queue }).await
    }

    /// Allows claims from a queue again.
    pub async fn resume(&self, queue: &str) -> Result<bool, ClientError> {
        let queue = QueueName::new(queue)?;
        self.run(cmd::ResumeQueue { queue }).await
    }
}

fn rejected(reject: Reject) -> ClientError {
    match reject {
        Reject::InvalidJob { index, error } => ClientError::InvalidJob { index, error },
        reject => ClientError::Rejected(reject),
    }
}
