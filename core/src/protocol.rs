//! The storage protocol: what every backend implements.
//!
//! A [`Command`] goes in, its [`Outcome`] comes out. Each command is a
//! type of [`cmd`], and each is a [`Request`] whose `Output`
//! is its answer alone: [`Request::answer`] is the one place an outcome is
//! matched to the command it answers, so callers never unpack one by hand.
//!
//! The protocol is closed: `Command` and [`Outcome`] are not
//! `#[non_exhaustive]`, and no code that executes commands has a wildcard
//! arm, so a new command that a backend does not implement fails to
//! compile instead of failing at run time. The table in `protocol!` ties
//! each command to its outcome variant; adding a command is a row there, a
//! type in `cmd`, an arm in `World::dispatch` and in each backend
//! (docs/HACKING.md has the checklist).
//!
//! [`World`](crate::World) gives each command its meaning; this module
//! only names the messages.

use serde::{Deserialize, Serialize};

use crate::claimer::{Acquired, ClaimerGrant};
use crate::cmd;
use crate::ids::{Attempt, JobId, Kind, Receipt, SemaphoreName, SlotIndex};
use crate::job::{FailError, FailOutcome, Payload};
use crate::leader::LeaderGrant;
use crate::reject::{Reject, StateName};
use crate::semaphore::SlotGrant;
use crate::time::Timestamp;

/// One failed attempt, as a worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failure {
    /// The attempt.
    pub receipt: Receipt,
    /// What went wrong.
    pub error: FailError,
    /// A uniform draw for the backoff jitter.
    pub draw: u64,
}

/// What enqueueing one job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job (the existing one for a duplicate).
    pub id: JobId,
    /// True when a job with the same kind and unique key already existed.
    pub duplicate: bool,
}

/// A job handed to a worker by a claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimedJob {
    /// The attempt's receipt.
    pub receipt: Receipt,
    /// Which handler runs it.
    pub kind: Kind,
    /// Its argument bytes.
    pub payload: Payload,
    /// This attempt's number (1 for the first).
    pub attempt: Attempt,
    /// Attempts allowed.
    pub max_attempts: Attempt,
    /// When the attempt times out, by storage's clock.
    pub deadline: Timestamp,
    /// When it was claimed, by storage's clock: `deadline - claimed_at` is
    /// the attempt's time budget, which a worker measures on its own
    /// monotonic clock (never by comparing its wall clock with storage's).
    pub claimed_at: Timestamp,
    /// When the job became due (its `run_at` while available): the claim
    /// time minus this is the job's pickup latency.
    pub run_at: Timestamp,
}

/// The answer to a claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claimed {
    /// The claimed jobs, in claim order.
    pub jobs: Vec<ClaimedJob>,
    /// Whether the claimer lease row was rewritten.
    pub lease_refreshed: bool,
}

/// Per-item answers of a batch, or a refusal of the whole batch.
pub type BatchResult<T> = Result<Vec<Result<T, Reject>>, Reject>;

/// The answer to a [`Command`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// For [`Command::Enqueue`].
    Enqueued(Result<Vec<Enqueued>, Reject>),
    /// For [`Command::Claim`].
    Claimed(Result<Claimed, Reject>),
    /// For [`Command::Heartbeat`].
    Heartbeats(BatchResult<()>),
    /// For [`Command::Complete`].
    Completed(BatchResult<()>),
    /// For [`Command::Fail`].
    Failed(BatchResult<FailOutcome>),
    /// For [`Command::Snooze`].
    Snoozed(BatchResult<()>),
    /// For [`Command::CancelAttempts`].
    AttemptsCancelled(BatchResult<()>),
    /// For [`Command::WaitExternal`].
    Waiting(BatchResult<()>),
    /// For [`Command::ResumeExternal`].
    Resumed(Result<(), Reject>),
    /// For [`Command::Cancel`]: the state the job was cancelled from.
    Cancelled(Result<StateName, Reject>),
    /// For [`Command::Retry`].
    Retried(Result<(), Reject>),
    /// For [`Command::PauseQueue`] and [`Command::ResumeQueue`]: whether
    /// the paused flag changed.
    QueuePauseChanged(bool),
    /// For [`Command::ClaimerAcquire`].
    ClaimerAcquired(Result<(ClaimerGrant, Acquired), Reject>),
    /// For [`Command::ClaimerRelease`]: whether this call released it.
    ClaimerReleased(bool),
    /// For [`Command::SlotTry`].
    SlotTried(Result<SlotGrant, Reject>),
    /// For [`Command::SlotRenew`].
    SlotRenewed(Result<(), Reject>),
    /// For [`Command::SlotRelease`]: whether this call freed the slot.
    SlotReleased(bool),
    /// For [`Command::ProcessCrashed`]: the slots freed.
    SessionEnded(Vec<(SemaphoreName, SlotIndex)>),
    /// For [`Command::LeaderElect`].
    LeaderElected(Result<LeaderGrant, Reject>),
    /// For [`Command::LeaderResign`]: whether this call ended the lease.
    LeaderResigned(bool),
    /// For [`Command::Promote`].
    Promoted(Result<Vec<JobId>, Reject>),
    /// For [`Command::Rescue`]: each rescued job or timed-out wait.
    Rescued(Result<Vec<(JobId, FailOutcome)>, Reject>),
    /// For [`Command::Prune`].
    Pruned(Result<Vec<JobId>, Reject>),
}

/// A command whose answer has a type of its own: each type of
/// [`cmd`] is one.
pub trait Request: Into<Command> {
    /// The answer to this command.
    type Output;
    /// The command's name, for messages.
    const NAME: &'static str;
    /// This command's answer out of `outcome`, or `outcome` back when it
    /// answers another command.
    fn answer(outcome: Outcome) -> Result<Self::Output, Outcome>;
}

/// The answer to request `R` out of `outcome`, which whoever executed `R`
/// gave. Panics when it answers another command: the executor broke the
/// protocol, which is a bug (like a broken invariant), not an answer.
pub fn answer_of<R: Request>(outcome: Outcome) -> R::Output {
    R::answer(outcome).unwrap_or_else(|other| {
        panic!(
            "protocol broken: {} answered with {}",
            R::NAME,
            crate::variants::of(&other)
        )
    })
}

/// Generates, from one row per command (its type in [`cmd`], the
/// [`Outcome`] variant that answers it, the answer's type, its name):
/// the [`Command`] enum, `From<cmd::X> for Command`, each [`Request`]
/// impl and [`command_name`].
macro_rules! protocol {
    ($($name:ident => $outcome:ident($output:ty), $text:literal;)*) => {
        /// A storage command: the unit every backend implements. Each
        /// variant carries its type of [`cmd`].
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Command {
            $(
                #[doc = concat!("[`cmd::", stringify!($name), "`].")]
                $name(cmd::$name),
            )*
        }

        $(
            impl From<cmd::$name> for Command {
                fn from(request: cmd::$name) -> Command {
                    Command::$name(request)
                }
            }

            impl Request for cmd::$name {
                type Output = $output;
                const NAME: &'static str = $text;
                fn answer(outcome: Outcome) -> Result<$output, Outcome> {
                    match outcome {
                        Outcome::$outcome(answer) => Ok(answer),
                        other => Err(other),
                    }
                }
            }
        )*

        /// A command's name, for messages.
        pub fn command_name(command: &Command) -> &'static str {
            match command {
                $(Command::$name(_) => $text,)*
            }
        }
    };
}

protocol! {
    Enqueue => Enqueued(Result<Vec<Enqueued>, Reject>), "enqueue";
    Claim => Claimed(Result<Claimed, Reject>), "claim";
    Heartbeat => Heartbeats(BatchResult<()>), "heartbeat";
    Complete => Completed(BatchResult<()>), "complete";
    Fail => Failed(BatchResult<FailOutcome>), "fail";
    Snooze => Snoozed(BatchResult<()>), "snooze";
    CancelAttempts => AttemptsCancelled(BatchResult<()>), "cancel_attempts";
    WaitExternal => Waiting(BatchResult<()>), "wait_external";
    ResumeExternal => Resumed(Result<(), Reject>), "resume_external";
    Cancel => Cancelled(Result<StateName, Reject>), "cancel";
    Retry => Retried(Result<(), Reject>), "retry";
    PauseQueue => QueuePauseChanged(bool), "pause_queue";
    ResumeQueue => QueuePauseChanged(bool), "resume_queue";
    ClaimerAcquire => ClaimerAcquired(Result<(ClaimerGrant, Acquired), Reject>), "claimer_acquire";
    ClaimerRelease => ClaimerReleased(bool), "claimer_release";
    SlotTry => SlotTried(Result<SlotGrant, Reject>), "slot_try";
    SlotRenew => SlotRenewed(Result<(), Reject>), "slot_renew";
    SlotRelease => SlotReleased(bool), "slot_release";
    ProcessCrashed => SessionEnded(Vec<(SemaphoreName, SlotIndex)>), "process_crashed";
    LeaderElect => LeaderElected(Result<LeaderGrant, Reject>), "leader_elect";
    LeaderResign => LeaderResigned(bool), "leader_resign";
    Promote => Promoted(Result<Vec<JobId>, Reject>), "promote";
    Rescue => Rescued(Result<Vec<(JobId, FailOutcome)>, Reject>), "rescue";
    Prune => Pruned(Result<Vec<JobId>, Reject>), "prune";
}
