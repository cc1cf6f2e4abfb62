//! # weir-core: every decision of a Postgres job queue, as pure state machines
//!
//! This crate contains no networking, no database driver, no async runtime,
//! no clock and no random number generator. Time comes in as a
//! [`Timestamp`] argument and randomness as a `u64` draw, so every decision
//! is a function of its inputs and any run replays exactly.
//!
//! ## What goes in, what comes out
//!
//! There are three layers: backends implement the second, workers drive the third.
//!
//! 1. **Entity transitions.** [`Job`] methods (`claim`, `complete`, `fail`,
//!    `snooze`, `cancel`, `rescue`, …), [`ClaimerTable`] (`acquire`,
//!    `check`, `refresh_after_claim`, `release`), [`Semaphore`] (`try_slot`,
//!    `release`, `release_holder`), [`Leadership`] (`elect`, `check_term`),
//!    [`Backoff::delay`] and [`Warmup`]. Each takes the current state plus
//!    its inputs and either moves to the next state or returns a [`Reject`]
//!    and changes nothing.
//! 2. **The reference world.** [`World::apply`]`(now, command) -> outcome` is
//!    the meaning of every storage [`Command`]: an enqueue batch, a claim
//!    batch, completions, a rescue sweep, a slot try, an election. The
//!    in-memory backend is this world behind a lock; the model checker
//!    explores it; the Postgres backend is tested to give the same
//!    [`Outcome`] for the same commands.
//!
//! 3. **The dispatcher.** [`Dispatcher`] is one process's worker logic:
//!    `handle(now, draw, input)`, then drain `poll_effect()` (storage commands
//!    to execute, handlers to start or stop), then sleep until
//!    `poll_timeout()`. It decides when and how much to claim, when to flush
//!    batched results, when to heartbeat and when to lead maintenance. The
//!    runtime and the simulator both drive it.
//!
//! Three small sans-IO loops run *inside one process* instead of in shared
//! storage: [`Acquisition`] (scan a semaphore's slots, skip a slot whose try
//! errored, wait a jittered pause on a miss, time out at a deadline),
//! [`Pacer`] (warm-up work in paced batches), and [`WarmupDriver`], which
//! drives both for a whole warm-up and renews the slot's lease while a
//! batch runs. Every sans-IO loop here has the dispatcher's shape (quinn's
//! vocabulary): what happened goes in through `handle*`, what to do next
//! comes out of `poll*`. The caller calls `poll(now, …)`, does what the
//! returned step says (try a slot, send a command, sleep until a time, run
//! or stop a batch), and reports the result back (`handle_try`,
//! `handle_batch_done`, `handle_answer`), until a final step.
//!
//! ## Order and time
//!
//! Commands are applied one at a time, in the order the backend serialises
//! them. Time never goes backwards: `World::apply` clamps a `now` older than
//! the latest it has seen, as a database clock would. Iteration is always in
//! a fixed order (`BTreeMap`/`BTreeSet`, slots by index), so outcomes never
//! depend on hashing.
//!
//! ## Fencing
//!
//! Every claim bumps the job's [`Epoch`] and hands out a [`Receipt`]
//! `(job, epoch)`. Heartbeat, complete, fail, snooze and wait-external are
//! accepted only with the current epoch of a running job. Rescue, cancel,
//! callback timeout and admin retry bump the epoch, so a worker that was
//! paused, partitioned or simply slow is told [`Reject::StaleEpoch`] and can
//! change nothing. Claimer leases ([`LeaseEpoch`]), semaphore slots
//! ([`SlotEpoch`]) and the leader ([`LeaderTerm`]) are fenced the same way.
//!
//! ## Rejections and bugs
//!
//! A rejection is an expected answer (a late worker, a full semaphore) and
//! is a value of a `#[non_exhaustive]` enum. A broken invariant is a bug and
//! panics; debug builds run [`World::check_invariants`] after every apply.
//!
//! ```
//! use weir_core::*;
//!
//! let mut world = World::new(WorldConfig::default());
//! let queue = QueueName::new("default").unwrap();
//! let kind = Kind::new("email.send").unwrap();
//! let now = Timestamp(1_000);
//!
//! let job = NewJob::new(queue.clone(), kind, Payload(b"{}".to_vec()));
//! world.run(now, cmd::Enqueue { jobs: vec![job] }).unwrap();
//!
//! // Each command is a type of `cmd`, answered with its own type.
//! let (claimer, _) = world
//!     .run(now, cmd::ClaimerAcquire { queue: queue.clone(), process: ProcessId(1) })
//!     .unwrap();
//! let claimed = world
//!     .run(now, cmd::Claim { queue, claimer, max: 10, kinds: None })
//!     .unwrap();
//! let receipt = claimed.jobs[0].receipt;
//!
//! let done = world.run(now, cmd::Complete { receipts: vec![receipt] });
//! assert_eq!(done, Ok(vec![Ok(())]));
//!
//! // The same receipt again is refused, and changes nothing.
//! let again = world.run(now, cmd::Complete { receipts: vec![receipt] });
//! assert_eq!(again, Ok(vec![Err(Reject::NotRunning { state: StateName::Completed })]));
//!
//! // `World::apply` takes the sum type, `Command`, for code that stores,
//! // sends or replays commands; its `Outcome` says which command it answers.
//! let outcome = world.apply(now, Command::Complete(cmd::Complete { receipts: vec![receipt] }));
//! assert!(matches!(outcome, Outcome::Completed(Ok(_))));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod claimer;
pub mod cmd;
pub mod dispatcher;
pub mod ids;
pub mod invariants;
pub mod job;
pub mod leader;
pub mod mutation;
pub mod protocol;
pub mod reads;
pub mod reject;
pub mod semaphore;
pub mod time;
#[doc(hidden)]
pub mod variants;
pub mod warmup;
pub mod warmup_driver;
pub mod world;

pub use backoff::{Backoff, InvalidBackoff};
pub use claimer::{
    Acquired, ClaimerConfig, ClaimerGrant, ClaimerLease, ClaimerTable, InvalidClaimerConfig,
};
#[cfg(feature = "mutants")]
pub use dispatcher::DispatcherMutation;
pub use dispatcher::{
    Abandoned, CommandId, Dispatcher, DispatcherConfig, Effect, HandlerResult, Input,
    InvalidDispatcherConfig, InvalidLimit, Limit, LimitConfig, QueueConfig, Reason, Refusal,
    Settled, Stats, StopReason, Unrunnable, MAINTENANCE_BATCH_MAX,
};
pub use ids::{
    Attempt, ClaimerSlot, Epoch, InvalidName, JobId, Kind, LeaderTerm, LeaseEpoch, NameKind,
    Priority, ProcessId, QueueName, Receipt, SemaphoreName, SlotEpoch, SlotIndex, UniqueKey,
};
pub use invariants::Violation;
pub use job::{
    ErrorRecord, FailError, FailOutcome, FailReason, InvalidJob, Job, JobLimits, JobState, NewJob,
    Payload, Retry,
};
pub use leader::{LeaderGrant, Leadership};
pub use mutation::Mutation;
pub use protocol::{
    answer_of, command_name, BatchResult, Claimed, ClaimedJob, Command, Enqueued, Failure, Outcome,
    Request,
};
pub use reject::{Reject, StateName};
pub use semaphore::{
    AcquireStep, Acquisition, Hold, InvalidWaitConfig, Semaphore, Slot, SlotGrant, SlotHolder,
    TryResult, WaitConfig,
};
pub use time::{Millis, Timestamp};
pub use warmup::{herd_bound, PaceStep, Pacer, Warmup};
pub use warmup_driver::{
    InvalidWarmup, SlotLoss, StorageAnswer, WarmupConfig, WarmupDriver, WarmupFailure, WarmupStep,
    WarmupSummary,
};
pub use world::{World, WorldConfig};
