//! Refusals: every way a command can be turned down, as a value.
//!
//! A rejection is the *expected* answer to a late, duplicated or forbidden
//! request (a worker that was fenced, a claimer that lost its slot). It never
//! changes state. Broken invariants are not rejections: they are bugs and
//! panic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{
    ClaimerSlot, Epoch, JobId, LeaderTerm, LeaseEpoch, ProcessId, SemaphoreName, SlotIndex,
};
use crate::job::InvalidJob;
use crate::time::Timestamp;

/// The name of a job state, without its data: what a rejection reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StateName {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker.
    Running,
    /// Parked until an external callback resumes it.
    WaitingExternal,
    /// Failed an attempt, waiting for its backoff to pass.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl StateName {
    /// Every state, in a fixed order (for reports and queue depth tables).
    pub const ALL: [StateName; 8] = [
        StateName::Scheduled,
        StateName::Available,
        StateName::Running,
        StateName::WaitingExternal,
        StateName::Retryable,
        StateName::Completed,
        StateName::Failed,
        StateName::Cancelled,
    ];

    /// Completed, failed and cancelled jobs are finished: only an admin
    /// retry (a new epoch) moves them again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateName::Completed | StateName::Failed | StateName::Cancelled
        )
    }

    /// The lower-case name used in SQL and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Scheduled => "scheduled",
            StateName::Available => "available",
            StateName::Running => "running",
            StateName::WaitingExternal => "waiting_external",
            StateName::Retryable => "retryable",
            StateName::Completed => "completed",
            StateName::Failed => "failed",
            StateName::Cancelled => "cancelled",
        }
    }

    /// Parses [`StateName::as_str`]'s output.
    pub fn parse(s: &str) -> Option<StateName> {
        StateName::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command (or one item of a batch) was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reject {
    /// No job has this id (never enqueued, or pruned).
    #[error("job {job} does not exist")]
    UnknownJob {
        /// The id asked for.
        job: JobId,
    },
    /// The receipt is from an earlier attempt: the job was rescued,
    /// cancelled or claimed again since. The late worker is fenced.
    #[error("stale receipt: job is at epoch {current}, receipt has {presented}")]
    StaleEpoch {
        /// The job's epoch now.
        current: Epoch,
        /// The epoch on the receipt.
        presented: Epoch,
    },
    /// The receipt is current but the job is no longer running (for
    /// example, a completion delivered twice).
    #[error("job is {state}, not running")]
    NotRunning {
        /// The state the job is in.
        state: StateName,
    },
    /// A resume for a job that is not waiting for an external callback.
    #[error("job is {state}, not waiting for an external callback")]
    NotWaiting {
        /// The state the job is in.
        state: StateName,
    },
    /// The job is finished; it cannot be cancelled.
    #[error("job is already {state}")]
    AlreadyFinished {
        /// The terminal state.
        state: StateName,
    },
    /// Admin retry applies only to failed and cancelled jobs.
    #[error("job is {state}; only failed or cancelled jobs can be retried")]
    NotRetryable {
        /// The state the job is in.
        state: StateName,
    },
    /// Claim applies only to available jobs.
    #[error("job is {state}, not available")]
    NotAvailable {
        /// The state the job is in.
        state: StateName,
    },
    /// Promote applies only to scheduled or retryable jobs whose time came.
    #[error("job is {state} and not due until {run_at:?}")]
    NotDue {
        /// The state the job is in.
        state: StateName,
        /// When it becomes due, if it is waiting for a time at all.
        run_at: Option<Timestamp>,
    },
    /// Rescue applies only to a running job whose heartbeat is stale or
    /// whose deadline passed, or a callback wait whose deadline passed.
    #[error("job is {state} and not overdue")]
    NotOverdue {
        /// The state the job is in.
        state: StateName,
    },
    /// An enqueue batch held an invalid job; nothing of the batch was written.
    #[error("job {index} of the batch is invalid: {error}")]
    InvalidJob {
        /// Its position in the batch.
        index: usize,
        /// What was wrong.
        error: InvalidJob,
    },
    /// A batch larger than the configured maximum.
    #[error("batch of {len} exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Items in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Every claimer slot of the queue is held by an active claimer.
    #[error("all {slots} claimer slots of the queue are taken")]
    NoClaimerSlot {
        /// How many slots the queue has.
        slots: u16,
    },
    /// The caller no longer owns this claimer lease (expired, taken over or
    /// released); it must acquire again before claiming.
    #[error("claimer lease on slot {slot} (epoch {presented}) is lost")]
    ClaimerLeaseLost {
        /// The slot named.
        slot: ClaimerSlot,
        /// The lease epoch presented.
        presented: LeaseEpoch,
    },
    /// Another process leads maintenance.
    #[error("process {holder} leads term {term} until {expires_at}")]
    LeaderHeld {
        /// The leader.
        holder: ProcessId,
        /// Its term.
        term: LeaderTerm,
        /// When its lease runs out unless renewed.
        expires_at: Timestamp,
    },
    /// A maintenance write from a process that is not the leader of the
    /// current term (deposed, expired, or never elected).
    #[error("not the leader: current term is {current}, write carried {presented}")]
    NotLeader {
        /// The current term.
        current: LeaderTerm,
        /// The term the write carried.
        presented: LeaderTerm,
    },
    /// The semaphore slot is held.
    #[error("slot {slot} is held by process {holder}")]
    SlotBusy {
        /// The slot tried.
        slot: SlotIndex,
        /// Who holds it.
        holder: ProcessId,
    },
    /// A slot index at or past the semaphore's permits.
    #[error("slot {slot} is outside the semaphore's {permits} permits")]
    SlotOutOfRange {
        /// The slot tried.
        slot: SlotIndex,
        /// The semaphore's size.
        permits: u16,
    },
    /// The semaphore exists with another number of permits.
    #[error("semaphore {name} has {configured} permits, the caller assumed {presented}")]
    PermitsMismatch {
        /// The semaphore.
        name: SemaphoreName,
        /// Its size.
        configured: u16,
        /// The size the caller assumed.
        presented: u16,
    },
    /// A semaphore must have at least one permit.
    #[error("a semaphore needs at least one permit")]
    ZeroPermits,
    /// The caller does not hold this semaphore slot (any more).
    #[error("slot {slot} is not held by this holder")]
    SlotNotHeld {
        /// The slot named.
        slot: SlotIndex,
    },
}
