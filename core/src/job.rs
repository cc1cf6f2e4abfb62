//! One job's lifecycle: its states, and every transition between them.
//!
//! ```text
//!             enqueue (run_at > now)        enqueue (run_at <= now)
//!                  │                              │
//!                  ▼          promote             ▼
//!             Scheduled ───────────────────▶ Available ◀──────────────┐
//!                  ▲                              │ claim (epoch+1,   │
//!                  │ snooze (attempt refunded)    │  attempt+1)       │ resume
//!                  │                              ▼                   │ (attempt refunded)
//!                  └──────────────────────────  Running ──wait──▶ WaitingExternal
//!   Retryable ◀── fail (attempts left) ─────────  │  │                  │
//!     │   ▲         rescue (epoch+1) ─────────────┘  │ complete        │ callback timeout
//!     │   └──────── callback timeout (epoch+1) ──────┼─────────────────┘ (epoch+1)
//!     │ promote                                      ▼
//!     ▼                                          Completed
//!   Available        fail (exhausted/terminal) ─▶ Failed ──┐
//!                    cancel (any non-terminal, epoch+1) ─▶ Cancelled ─┤ admin retry
//!                                                          ▼            (epoch+1, attempt=0)
//!                                                       Available
//! ```
//!
//! Every method either applies its transition and returns `Ok`, or returns a
//! [`Reject`] and leaves the job exactly as it was. Writes from a worker carry
//! a [`Receipt`]; they are accepted only when its epoch is the job's current
//! epoch *and* the job is in the state the write expects.

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::ids::{Attempt, Epoch, JobId, Kind, Priority, ProcessId, QueueName, Receipt, UniqueKey};
use crate::mutation::Mutation;
use crate::reject::{Reject, StateName};
use crate::time::{Millis, Timestamp};

/// A job's opaque argument bytes (the runtime puts JSON here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Payload(pub Vec<u8>);

/// Where a job is in its life, holding only the data valid there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waits until `run_at`, then a promote makes it available.
    Scheduled {
        /// When it becomes due.
        run_at: Timestamp,
    },
    /// Ready to be claimed. `run_at` orders it among equal priorities.
    Available {
        /// When it became due.
        run_at: Timestamp,
    },
    /// Claimed by `holder`; the job's current epoch is its receipt's epoch.
    Running {
        /// The process running the attempt.
        holder: ProcessId,
        /// When the attempt started.
        claimed_at: Timestamp,
        /// The holder's latest heartbeat (at first, the claim).
        heartbeat_at: Timestamp,
        /// When the attempt times out, whatever the heartbeats say.
        deadline: Timestamp,
    },
    /// Parked by its handler until an external callback resumes it.
    WaitingExternal {
        /// When it started waiting.
        since: Timestamp,
        /// When the wait times out and counts as a failed attempt.
        deadline: Timestamp,
    },
    /// Failed an attempt; due again at `run_at`.
    Retryable {
        /// When it becomes due.
        run_at: Timestamp,
    },
    /// Finished successfully.
    Completed {
        /// When.
        at: Timestamp,
    },
    /// Finished unsuccessfully.
    Failed {
        /// When.
        at: Timestamp,
        /// Why no further attempt will be made.
        reason: FailReason,
    },
    /// Cancelled.
    Cancelled {
        /// When.
        at: Timestamp,
    },
}

/// Why a job ended in [`JobState::Failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailReason {
    /// Its last allowed attempt failed with a retryable error.
    AttemptsExhausted,
    /// Its handler reported an error that no retry can fix.
    Terminal,
}

/// What a failing handler reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FailError {
    /// Whether another attempt may help.
    pub retry: Retry,
    /// A human-readable message, kept on the job.
    pub message: String,
}

/// Whether, and when, a failed attempt should be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Retry {
    /// Retry after the backoff policy's delay (if attempts remain).
    Backoff,
    /// Retry after exactly this delay (if attempts remain).
    After(Millis),
    /// Do not retry: the job fails now.
    Never,
}

/// Where a failure (or a rescue, or a callback timeout) left the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailOutcome {
    /// It will be retried at `run_at`.
    Retrying {
        /// When it becomes due again.
        run_at: Timestamp,
    },
    /// It failed for good.
    Failed(FailReason),
}

/// An error a job's attempt recorded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The attempt that failed.
    pub attempt: Attempt,
    /// When.
    pub at: Timestamp,
    /// What happened.
    pub message: String,
}

impl ErrorRecord {
    /// The longest message kept, in bytes; a longer one is cut at a
    /// character boundary and ends in `…`.
    pub const MESSAGE_MAX_BYTES: usize = 16 * 1024;

    /// How many errors a job keeps: the newest, oldest first. With
    /// [`Self::MESSAGE_MAX_BYTES`] it bounds a job's history at 320 KiB.
    pub const KEPT: usize = 20;

    /// `message` as storage keeps it: every NUL (which Postgres text cannot
    /// hold) replaced by U+FFFD, and cut to [`Self::MESSAGE_MAX_BYTES`].
    /// Every backend stores this, so a handler's error can never make its
    /// result unstorable.
    pub fn clean(message: &str) -> String {
        let mut clean = message.replace('\0', "\u{FFFD}");
        if clean.len() > Self::MESSAGE_MAX_BYTES {
            let ellipsis = '…';
            let mut cut = Self::MESSAGE_MAX_BYTES - ellipsis.len_utf8();
            while !clean.is_char_boundary(cut) {
                cut -= 1;
            }
            clean.truncate(cut);
            clean.push(ellipsis);
        }
        clean
    }
}

/// Bounds on what a job may ask for; anything outside is an [`InvalidJob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobLimits {
    /// Largest payload, in bytes.
    pub payload_bytes_max: usize,
    /// Largest `max_attempts`.
    pub max_attempts_max: u32,
    /// Longest per-attempt timeout.
    pub timeout_max: Millis,
    /// Furthest a job may be scheduled into the future.
    pub delay_max: Millis,
}

impl Default for JobLimits {
    fn default() -> JobLimits {
        JobLimits {
            payload_bytes_max: 1 << 20,
            max_attempts_max: 1000,
            timeout_max: Millis::from_secs(7 * 24 * 3600),
            delay_max: Millis::from_secs(366 * 24 * 3600),
        }
    }
}

/// A job that cannot be enqueued, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InvalidJob {
    /// `max_attempts` of 0 would make a job that can never run.
    #[error("max_attempts must be at least 1")]
    MaxAttemptsZero,
    /// `max_attempts` above the configured limit.
    #[error("max_attempts {requested} exceeds the limit of {max}")]
    MaxAttemptsTooLarge {
        /// Asked for.
        requested: u32,
        /// Allowed.
        max: u32,
    },
    /// A per-attempt timeout of zero would time out every attempt at once
    /// (a timeout under a millisecond rounds down to zero).
    #[error("timeout must be at least 1 ms")]
    TimeoutZero,
    /// A per-attempt timeout above the configured limit.
    #[error("timeout {requested} exceeds the limit of {max}")]
    TimeoutTooLong {
        /// Asked for.
        requested: Millis,
        /// Allowed.
        max: Millis,
    },
    /// A payload above the configured limit.
    #[error("payload is {len} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// Its size.
        len: usize,
        /// Allowed.
        max: usize,
    },
    /// `run_at` further in the future than the configured limit.
    #[error("run_at {run_at} is more than {max} in the future")]
    RunAtTooFar {
        /// Asked for.
        run_at: Timestamp,
        /// Allowed distance from now.
        max: Millis,
    },
    /// A backoff whose cap is further than the configured limit on
    /// scheduling (`JobLimits::delay_max`): a retry no job could be
    /// scheduled for.
    #[error("backoff cap {cap} exceeds the limit of {max}")]
    BackoffCapTooLong {
        /// The policy's cap.
        cap: Millis,
        /// Allowed.
        max: Millis,
    },
    /// `run_at` before the Unix epoch: a time no job can mean (a sign or
    /// unit mistake), which would otherwise sort it ahead of every job of
    /// its priority. A `run_at` in the past but after the epoch is fine: the
    /// job is due at once.
    #[error("run_at {run_at} is before the Unix epoch (t=0ms); use a time at or after it, or none to run now")]
    RunAtBeforeEpoch {
        /// Asked for.
        run_at: Timestamp,
    },
}

/// A job as a caller submits it. Checked by [`NewJob::validate`] on enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewJob {
    /// The queue it goes to.
    pub queue: QueueName,
    /// Which handler runs it.
    pub kind: Kind,
    /// Its argument bytes.
    pub payload: Payload,
    /// Lower is claimed first.
    pub priority: Priority,
    /// How many attempts it may use (at least 1).
    pub max_attempts: u32,
    /// How long one attempt may run before it is rescued.
    pub timeout: Millis,
    /// Not before this time; `None` means now.
    pub run_at: Option<Timestamp>,
    /// With a key, a second job of the same kind and key is not created:
    /// the enqueue returns the existing one until that job is pruned.
    pub unique_key: Option<UniqueKey>,
    /// Its own retry backoff (its kind's, from `JobArgs::backoff`); `None`
    /// means the backend's configured one. Kept with the job, so every
    /// process — and a rescue by the leader — retries it the same way.
    #[serde(default)]
    pub backoff: Option<Backoff>,
}

impl NewJob {
    /// A job with the defaults: priority 0, 25 attempts, 30 minute timeout,
    /// due now, not unique.
    pub fn new(queue: QueueName, kind: Kind, payload: Payload) -> NewJob {
        NewJob {
            queue,
            kind,
            payload,
            priority: Priority::default(),
            max_attempts: 25,
            timeout: Millis::from_secs(30 * 60),
            run_at: None,
            unique_key: None,
            backoff: None,
        }
    }

    /// For each job of a batch, the earlier job of the same batch with the
    /// same kind and unique key, if any: that job's answer is this one's
    /// too (an enqueue inserts the first of each key at most once). The
    /// one home of the in-batch rule, for the world and for the backends
    /// that plan a batch before they send it.
    pub fn batch_duplicates(jobs: &[NewJob]) -> Vec<Option<usize>> {
        let mut first: std::collections::BTreeMap<(&Kind, &UniqueKey), usize> =
            std::collections::BTreeMap::new();
        jobs.iter()
            .enumerate()
            .map(|(i, job)| {
                let key = job.unique_key.as_ref()?;
                let earlier = *first.entry((&job.kind, key)).or_insert(i);
                (earlier != i).then_some(earlier)
            })
            .collect()
    }

    /// Checks the job against `limits` at time `now`.
    pub fn validate(&self, now: Timestamp, limits: &JobLimits) -> Result<(), InvalidJob> {
        if self.max_attempts == 0 {
            return Err(InvalidJob::MaxAttemptsZero);
        }
        if self.max_attempts > limits.max_attempts_max {
            return Err(InvalidJob::MaxAttemptsTooLarge {
                requested: self.max_attempts,
                max: limits.max_attempts_max,
            });
        }
        if self.timeout == Millis::ZERO {
            return Err(InvalidJob::TimeoutZero);
        }
        if self.timeout > limits.timeout_max {
            return Err(InvalidJob::TimeoutTooLong {
                requested: self.timeout,
                max: limits.timeout_max,
            });
        }
        if self.payload.0.len() > limits.payload_bytes_max {
            return Err(InvalidJob::PayloadTooLarge {
                len: self.payload.0.len(),
                max: limits.payload_bytes_max,
            });
        }
        if let Some(backoff) = &self.backoff {
            if backoff.cap() > limits.delay_max {
                return Err(InvalidJob::BackoffCapTooLong {
                    cap: backoff.cap(),
                    max: limits.delay_max,
                });
            }
        }
        match self.run_at {
            Some(run_at) if run_at < Timestamp::ZERO => {
                Err(InvalidJob::RunAtBeforeEpoch { run_at })
            }
            Some(run_at) if run_at > now.plus(limits.delay_max) => Err(InvalidJob::RunAtTooFar {
                run_at,
                max: limits.delay_max,
            }),
            _ => Ok(()),
        }
    }
}

/// A job: what it is, how far it got, and where it is now.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Job {
    /// Its identity.
    pub id: JobId,
    /// Its queue.
    pub queue: QueueName,
    /// Which handler runs it.
    pub kind: Kind,
    /// Its argument bytes.
    pub payload: Payload,
    /// Lower is claimed first.
    pub priority: Priority,
    /// Attempts used so far; never above `max_attempts`.
    pub attempt: Attempt,
    /// Attempts allowed.
    pub max_attempts: Attempt,
    /// The fencing counter: only a receipt with this epoch may write.
    pub epoch: Epoch,
    /// How long one attempt may run.
    pub timeout: Millis,
    /// Its uniqueness key, if any.
    pub unique_key: Option<UniqueKey>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Its own retry backoff, if it has one (see [`NewJob::backoff`]).
    pub backoff: Option<Backoff>,
    /// The errors its attempts recorded, oldest first: the last
    /// [`ErrorRecord::KEPT`] of them.
    pub errors: Vec<ErrorRecord>,
    /// Where it is now.
    pub state: JobState,
}

impl JobState {
    /// The state's name, without its data.
    pub fn name(&self) -> StateName {
        match self {
            JobState::Scheduled { .. } => StateName::Scheduled,
            JobState::Available { .. } => StateName::Available,
            JobState::Running { .. } => StateName::Running,
            JobState::WaitingExternal { .. } => StateName::WaitingExternal,
            JobState::Retryable { .. } => StateName::Retryable,
            JobState::Completed { .. } => StateName::Completed,
            JobState::Failed { .. } => StateName::Failed,
            JobState::Cancelled { .. } => StateName::Cancelled,
        }
    }

    /// When a finished job finished.
    pub fn finished_at(&self) -> Option<Timestamp> {
        match *self {
            JobState::Completed { at }
            | JobState::Failed { at, .. }
            | JobState::Cancelled { at } => Some(at),
            _ => None,
        }
    }

    /// When a scheduled or retryable job becomes due.
    pub fn due_at(&self) -> Option<Timestamp> {
        match *self {
            JobState::Scheduled { run_at } | JobState::Retryable { run_at } => Some(run_at),
            _ => None,
        }
    }
}

impl Job {
    /// A new job from a validated [`NewJob`]: available now, or scheduled
    /// when its `run_at` is in the future.
    pub fn enqueue(id: JobId, new: NewJob, now: Timestamp) -> Job {
        let run_at = new.run_at.unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled { run_at }
        } else {
            JobState::Available { run_at }
        };
        Job {
            id,
            queue: new.queue,
            kind: new.kind,
            payload: new.payload,
            priority: new.priority,
            attempt: Attempt(0),
            max_attempts: Attempt(new.max_attempts),
            epoch: Epoch(0),
            timeout: new.timeout,
            unique_key: new.unique_key,
            created_at: now,
            backoff: new.backoff,
            errors: Vec::new(),
            state,
        }
    }

    /// The state's name.
    pub fn state_name(&self) -> StateName {
        self.state.name()
    }

    /// The newest error recorded, if any.
    pub fn last_error(&self) -> Option<&ErrorRecord> {
        self.errors.last()
    }

    /// The backoff its retries follow: its own, else `configured`.
    pub fn backoff_or(&self, configured: &Backoff) -> Backoff {
        self.backoff.unwrap_or(*configured)
    }

    /// The receipt of the running attempt, if the job is running.
    pub fn receipt(&self) -> Option<Receipt> {
        matches!(self.state, JobState::Running { .. }).then_some(Receipt {
            job: self.id,
            epoch: self.epoch,
        })
    }

    /// Scheduled or retryable → available, once `run_at <= now`.
    pub fn promote(&mut self, now: Timestamp) -> Result<(), Reject> {
        match self.state.due_at() {
            Some(run_at) if run_at <= now => {
                self.state = JobState::Available { run_at };
                Ok(())
            }
            run_at => Err(Reject::NotDue {
                state: self.state_name(),
                run_at,
            }),
        }
    }

    /// Available → running under `holder`: bumps the epoch and the attempt
    /// and returns the receipt that every later write must carry.
    pub fn claim(&mut self, holder: ProcessId, now: Timestamp) -> Result<Receipt, Reject> {
        if !matches!(self.state, JobState::Available { .. }) {
            return Err(Reject::NotAvailable {
                state: self.state_name(),
            });
        }
        // Available jobs always have an attempt left: fail, rescue and
        // callback timeout only requeue while attempt < max_attempts.
        assert!(
            self.attempt < self.max_attempts,
            "available job {} has no attempt left",
            self.id
        );
        self.epoch = self.epoch.next();
        self.attempt = self.attempt.next();
        self.state = JobState::Running {
            holder,
            claimed_at: now,
            heartbeat_at: now,
            deadline: now.plus(self.timeout),
        };
        Ok(Receipt {
            job: self.id,
            epoch: self.epoch,
        })
    }

    /// The fence: the receipt must carry the current epoch, and the job must
    /// be in the state the write expects.
    fn check_receipt(&self, receipt: Receipt, expected: StateName) -> Result<(), Reject> {
        assert_eq!(receipt.job, self.id, "receipt routed to the wrong job");
        if receipt.epoch != self.epoch {
            return Err(Reject::StaleEpoch {
                current: self.epoch,
                presented: receipt.epoch,
            });
        }
        let state = self.state_name();
        let state_unchecked = crate::mutation::active(Mutation::ReceiptIgnoresState);
        match (state == expected || state_unchecked, expected) {
            (true, _) => Ok(()),
            (false, StateName::WaitingExternal) => Err(Reject::NotWaiting { state }),
            (false, _) => Err(Reject::NotRunning { state }),
        }
    }

    /// Records that the holder is alive.
    pub fn heartbeat(&mut self, receipt: Receipt, now: Timestamp) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        if let JobState::Running { heartbeat_at, .. } = &mut self.state {
            *heartbeat_at = (*heartbeat_at).max(now);
        }
        Ok(())
    }

    /// Running → completed.
    pub fn complete(&mut self, receipt: Receipt, now: Timestamp) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        self.state = JobState::Completed { at: now };
        Ok(())
    }

    /// Running → retryable (attempts left and a retry allowed) or failed.
    pub fn fail(
        &mut self,
        receipt: Receipt,
        error: &FailError,
        now: Timestamp,
        backoff: &Backoff,
        draw: u64,
    ) -> Result<FailOutcome, Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        self.record_error(now, ErrorRecord::clean(&error.message));
        let outcome = self.requeue_or_fail(error.retry, now, backoff, draw);
        Ok(outcome)
    }

    /// Running → scheduled at `run_at` (available at once if it is not in
    /// the future). The attempt is refunded: a snooze is not a failure.
    pub fn snooze(
        &mut self,
        receipt: Receipt,
        run_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        self.refund_attempt();
        self.state = if run_at > now {
            JobState::Scheduled { run_at }
        } else {
            JobState::Available { run_at: now }
        };
        Ok(())
    }

    /// Running → waiting for an external callback until `deadline`. The
    /// receipt stays valid: the callback presents it to resume the job.
    pub fn wait_external(
        &mut self,
        receipt: Receipt,
        deadline: Timestamp,
        now: Timestamp,
    ) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        self.state = JobState::WaitingExternal {
            since: now,
            deadline: deadline.max(now),
        };
        Ok(())
    }

    /// Waiting → available, for the attempt that continues the work. The
    /// attempt that handed off is refunded: waiting is not failing.
    pub fn resume_external(&mut self, receipt: Receipt, now: Timestamp) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::WaitingExternal)?;
        self.refund_attempt();
        self.state = JobState::Available { run_at: now };
        Ok(())
    }

    /// A callback wait whose deadline passed counts as a failed attempt:
    /// retryable or failed, with the epoch bumped so a late callback is fenced.
    pub fn expire_external(
        &mut self,
        now: Timestamp,
        backoff: &Backoff,
        draw: u64,
    ) -> Result<FailOutcome, Reject> {
        match self.state {
            JobState::WaitingExternal { deadline, .. } if deadline <= now => {}
            _ => {
                return Err(Reject::NotOverdue {
                    state: self.state_name(),
                })
            }
        }
        self.epoch = self.epoch.next();
        self.record_error(now, "external callback timed out".to_string());
        Ok(self.requeue_or_fail(Retry::Backoff, now, backoff, draw))
    }

    /// Whether a running job is overdue: its heartbeat is at least
    /// `stale_after` old, or its deadline passed.
    pub fn is_overdue(&self, now: Timestamp, stale_after: Millis) -> bool {
        match self.state {
            JobState::Running {
                heartbeat_at,
                deadline,
                ..
            } => {
                let stale_after = if crate::mutation::active(Mutation::RescueOfFreshJob) {
                    Millis(stale_after.0 / 2)
                } else {
                    stale_after
                };
                heartbeat_at.plus(stale_after) <= now || deadline <= now
            }
            _ => false,
        }
    }

    /// An overdue running job → retryable or failed, bumping the epoch so
    /// the holder, if it is only late and not dead, is fenced out.
    pub fn rescue(
        &mut self,
        now: Timestamp,
        stale_after: Millis,
        backoff: &Backoff,
        draw: u64,
    ) -> Result<FailOutcome, Reject> {
        if !self.is_overdue(now, stale_after) {
            return Err(Reject::NotOverdue {
                state: self.state_name(),
            });
        }
        self.epoch = self.epoch.next();
        self.record_error(
            now,
            "rescued: heartbeat stale or deadline passed".to_string(),
        );
        Ok(self.requeue_or_fail(Retry::Backoff, now, backoff, draw))
    }

    /// Any unfinished job → cancelled. Bumps the epoch, so a running
    /// holder's later writes are fenced.
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), Reject> {
        let state = self.state_name();
        if state.is_terminal() {
            return Err(Reject::AlreadyFinished { state });
        }
        self.epoch = self.epoch.next();
        self.state = JobState::Cancelled { at: now };
        Ok(())
    }

    /// Running → cancelled, by the attempt's own handler (it decided the job
    /// should not run at all). Guarded by the receipt like every holder
    /// write, so a late worker cannot cancel a job someone else now runs.
    pub fn cancel_attempt(&mut self, receipt: Receipt, now: Timestamp) -> Result<(), Reject> {
        self.check_receipt(receipt, StateName::Running)?;
        self.cancel(now)
    }

    /// Failed or cancelled → available under a new epoch, with its attempts
    /// reset: an operator decided it deserves a fresh run.
    pub fn admin_retry(&mut self, now: Timestamp) -> Result<(), Reject> {
        let state = self.state_name();
        if !matches!(state, StateName::Failed | StateName::Cancelled) {
            return Err(Reject::NotRetryable { state });
        }
        self.epoch = self.epoch.next();
        self.attempt = Attempt(0);
        self.state = JobState::Available { run_at: now };
        Ok(())
    }

    fn refund_attempt(&mut self) {
        // A running or waiting job was claimed, so attempt >= 1.
        self.attempt = Attempt(
            self.attempt
                .0
                .checked_sub(1)
                .expect("claimed job has an attempt"),
        );
    }

    fn record_error(&mut self, now: Timestamp, message: String) {
        if self.errors.len() >= ErrorRecord::KEPT {
            let drop = self.errors.len() + 1 - ErrorRecord::KEPT;
            self.errors.drain(..drop);
        }
        self.errors.push(ErrorRecord {
            attempt: self.attempt,
            at: now,
            message,
        });
    }

    fn requeue_or_fail(
        &mut self,
        retry: Retry,
        now: Timestamp,
        backoff: &Backoff,
        draw: u64,
    ) -> FailOutcome {
        let delay = match retry {
            Retry::Never => {
                self.state = JobState::Failed {
                    at: now,
                    reason: FailReason::Terminal,
                };
                return FailOutcome::Failed(FailReason::Terminal);
            }
            Retry::Backoff => self.backoff_or(backoff).delay(self.attempt, draw),
            Retry::After(delay) => delay,
        };
        let exhausted = if crate::mutation::active(Mutation::RetryPastMaxAttempts) {
            self.attempt > self.max_attempts
        } else {
            self.attempt >= self.max_attempts
        };
        if exhausted {
            self.state = JobState::Failed {
                at: now,
                reason: FailReason::AttemptsExhausted,
            };
            return FailOutcome::Failed(FailReason::AttemptsExhausted);
        }
        let run_at = now.plus(delay);
        self.state = JobState::Retryable { run_at };
        FailOutcome::Retrying { run_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_capped_past_delay_max_is_refused() {
        let limits = JobLimits::default();
        let mut job = NewJob::new(
            QueueName::new("q").unwrap(),
            Kind::new("k").unwrap(),
            Payload::default(),
        );
        job.backoff = Some(Backoff::constant(limits.delay_max));
        assert_eq!(job.validate(Timestamp(0), &limits), Ok(()));
        let past = Millis(limits.delay_max.0 + 1);
        job.backoff = Some(Backoff::constant(past));
        assert_eq!(
            job.validate(Timestamp(0), &limits),
            Err(InvalidJob::BackoffCapTooLong {
                cap: past,
                max: limits.delay_max
            })
        );
    }

    #[test]
    fn a_stored_message_holds_no_nul_and_is_bounded() {
        assert_eq!(ErrorRecord::clean("bad\0byte"), "bad\u{FFFD}byte");
        assert_eq!(ErrorRecord::clean("fine"), "fine");
        // Multi-byte characters straddling the cut are not split.
        let long = "é".repeat(ErrorRecord::MESSAGE_MAX_BYTES);
        let clean = ErrorRecord::clean(&long);
        assert!(clean.len() <= ErrorRecord::MESSAGE_MAX_BYTES);
        assert!(clean.ends_with('…'));
        assert!(clean.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
