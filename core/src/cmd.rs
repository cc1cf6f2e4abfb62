//! One type per storage command: what it carries.
//!
//! Each type is a [`Request`](crate::protocol::Request) whose `Output` is
//! the answer to that command alone, so a caller writes
//! `world.run(now, cmd::Claim { .. })` and gets a `Result<Claimed, Reject>`
//! back, with no outcome to unpack. [`Command`](crate::Command) is the sum
//! of these types, for code that stores, sends or replays commands.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::claimer::ClaimerGrant;
use crate::ids::{JobId, Kind, ProcessId, QueueName, Receipt, SemaphoreName, SlotIndex};
use crate::job::NewJob;
use crate::leader::LeaderGrant;
use crate::protocol::Failure;
use crate::semaphore::SlotGrant;
use crate::time::Millis;

/// Insert jobs, all or none.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Enqueue {
    /// The jobs, in order.
    pub jobs: Vec<NewJob>,
}

/// Claim up to `max` available jobs of `queue` under a claimer lease,
/// in priority, then `run_at`, then id order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The queue.
    pub queue: QueueName,
    /// The caller's claimer lease.
    pub claimer: ClaimerGrant,
    /// At most this many.
    pub max: u32,
    /// Only these kinds (`None`: any kind).
    pub kinds: Option<BTreeSet<Kind>>,
}

/// Heartbeat running attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The attempts.
    pub receipts: Vec<Receipt>,
}

/// Complete running attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Complete {
    /// The attempts.
    pub receipts: Vec<Receipt>,
}

/// Fail running attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fail {
    /// The failures.
    pub failures: Vec<Failure>,
}

/// Snooze running attempts for a delay each (no attempt is used).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snooze {
    /// The attempts and their delays.
    pub snoozes: Vec<(Receipt, Millis)>,
}

/// Cancel running attempts at their handlers' request (receipt-guarded,
/// unlike the operator's [`Cancel`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CancelAttempts {
    /// The attempts.
    pub receipts: Vec<Receipt>,
}

/// Park running attempts until an external callback, for at most a
/// timeout each.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WaitExternal {
    /// The attempts and their callback timeouts.
    pub waits: Vec<(Receipt, Millis)>,
}

/// The external callback arrived: make the job available again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumeExternal {
    /// The receipt of the attempt that started waiting.
    pub receipt: Receipt,
}

/// Cancel a job in any unfinished state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cancel {
    /// The job.
    pub job: JobId,
}

/// Admin retry of a failed or cancelled job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Retry {
    /// The job.
    pub job: JobId,
}

/// Stop claims from a queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PauseQueue {
    /// The queue.
    pub queue: QueueName,
}

/// Allow claims from a queue again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumeQueue {
    /// The queue.
    pub queue: QueueName,
}

/// Get (or reuse) a claimer lease on a queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimerAcquire {
    /// The queue.
    pub queue: QueueName,
    /// The caller.
    pub process: ProcessId,
}

/// Give a claimer lease up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimerRelease {
    /// The queue.
    pub queue: QueueName,
    /// The lease.
    pub claimer: ClaimerGrant,
}

/// Try one semaphore slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotTry {
    /// The semaphore.
    pub semaphore: SemaphoreName,
    /// Its size, as the caller configured it.
    pub permits: u16,
    /// The slot.
    pub slot: SlotIndex,
    /// The caller.
    pub holder: ProcessId,
    /// `None`: hold for the session; `Some(ttl)`: a lease of `ttl`.
    pub lease_ttl: Option<Millis>,
}

/// Extend a lease hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotRenew {
    /// The semaphore.
    pub semaphore: SemaphoreName,
    /// The hold.
    pub grant: SlotGrant,
    /// New lease length from now.
    pub lease_ttl: Millis,
}

/// Release a slot (idempotent).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotRelease {
    /// The semaphore.
    pub semaphore: SemaphoreName,
    /// The hold.
    pub grant: SlotGrant,
}

/// A process's session ended: its session-held slots are freed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessCrashed {
    /// The process.
    pub process: ProcessId,
}

/// Become or stay maintenance leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderElect {
    /// The candidate.
    pub process: ProcessId,
}

/// Step down.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderResign {
    /// The lease.
    pub leader: LeaderGrant,
}

/// Leader only: make due scheduled and retryable jobs available.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Promote {
    /// The leader's lease.
    pub leader: LeaderGrant,
    /// At most this many.
    pub max: u32,
}

/// Leader only: rescue overdue running jobs and time out callback waits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rescue {
    /// The leader's lease.
    pub leader: LeaderGrant,
    /// A uniform draw for the backoff jitter.
    pub draw: u64,
    /// At most this many.
    pub max: u32,
}

/// Leader only: delete jobs that finished more than `older_than` ago
/// (by storage's clock: the caller's clock never enters storage).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prune {
    /// The leader's lease.
    pub leader: LeaderGrant,
    /// Delete jobs that finished before `now - older_than`.
    pub older_than: Millis,
    /// At most this many.
    pub max: u32,
}
