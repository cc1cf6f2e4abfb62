//! Herd mitigation for start-up work: the cache-warmer case.
//!
//! When a rolling deploy starts many processes that each want to warm a
//! cache, [`warmup`] keeps them from stampeding the backing store: each
//! process waits `delay + uniform(0, jitter)`, then takes one slot of a
//! cluster-wide N-slot semaphore (waiting on a miss with jittered pauses,
//! never past `wait_max`), then does its work in paced batches while it
//! renews the slot's lease, and releases the slot. With P processes, N
//! slots and each warm-up taking `work`, the last one finishes by
//! [`weir_core::herd_bound`].
//!
//! Every decision (start time, scan, pauses, batches, when to renew, what a
//! renewal's answer means, when the slot counts as lost, the release) is
//! the core's [`WarmupDriver`]; this module only executes its steps: it
//! sleeps on a [`MonotonicClock`], sends the storage commands and feeds
//! their answers back, runs the user's batch future, and drops that future
//! when the driver says the slot is lost. The wall clock appears only in
//! the [`WarmupReport`]'s labels.
//!
//! A batch is stopped by dropping its future, so a batch must be written
//! to be cancelled at any `.await` (as a `tokio::select!` branch must).

use std::future::Future;
use std::ops::Range;

use rand::Rng;
use tracing::warn;
use weir_core::{
    InvalidWarmup, Millis, Outcome, Reject, SlotGrant, SlotLoss, StorageAnswer, Timestamp,
    WarmupDriver, WarmupFailure, WarmupStep, WarmupSummary,
};

use crate::backend::{Backend, BackendError};
use crate::clock::{wall_clock, MonotonicClock};

pub use weir_core::WarmupConfig;

/// What a warm-up did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupReport {
    /// Whether a semaphore limited it.
    pub limited: bool,
    /// The slot it held, if any.
    pub slot: Option<SlotGrant>,
    /// When it started (after delay and jitter), on the wall clock: a label
    /// to compare processes by, never used for a decision.
    pub started_at: Timestamp,
    /// When it got its slot (wall clock, a label).
    pub acquired_at: Timestamp,
    /// When it finished (wall clock, a label).
    pub finished_at: Timestamp,
    /// How long it waited for its slot, on the monotonic clock.
    pub waited: Millis,
    /// How long it held the slot, on the monotonic clock.
    pub held: Millis,
    /// Batches run.
    pub batches: u64,
    /// Lease renewals storage accepted.
    pub renewals: u64,
}

/// Why a warm-up did not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmupError {
    /// The configuration could never work (0 permits, batches of 0, a lease
    /// too short to renew in time, a wait range that is empty): refused
    /// before the start delay, so it never waits.
    #[error(transparent)]
    Invalid(InvalidWarmup),
    /// No slot came free before `wait_max`; nothing was held.
    #[error("no semaphore slot within wait_max ({scans} scans, {errors} slot errors)")]
    TimedOut {
        /// Full scans made.
        scans: u32,
        /// Slot tries that failed with an error.
        errors: u32,
    },
    /// Storage refused the semaphore itself (a size that disagrees with the
    /// semaphore's first use).
    #[error(transparent)]
    Rejected(Reject),
    /// The slot was lost while warming (a renewal was refused, or none was
    /// accepted before the lease would have lapsed): the batch that was
    /// running was stopped and no further batch started.
    #[error("lost semaphore slot {} ({cause:?}) after {batches} batches", .grant.slot.0)]
    SlotLost {
        /// The slot that was held.
        grant: SlotGrant,
        /// How it was lost.
        cause: SlotLoss,
        /// Batches that ran to their end.
        batches: u64,
    },
    /// Storage failed in a way that retrying will not fix.
    #[error(transparent)]
    Backend(BackendError),
}

/// Maps a command's result to what the driver needs to know; keeps a
/// misconfiguration's details for the error.
fn answer(
    result: Result<Outcome, BackendError>,
    unusable: &mut Option<BackendError>,
) -> StorageAnswer {
    match result {
        Ok(outcome) => StorageAnswer::Outcome(outcome),
        Err(BackendError::Misconfigured(m)) => {
            *unusable = Some(BackendError::Misconfigured(m));
            StorageAnswer::Unusable
        }
        // Lost, unavailable or refused: nothing proves it was applied.
        Err(_) => StorageAnswer::Lost,
    }
}

/// Awaits the future in `slot`, or never when there is none.
async fn next<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at` on `clock`, or forever without a deadline.
async fn sleep(clock: &MonotonicClock, at: Option<Timestamp>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What woke the executor.
enum Woke {
    Answer(Result<Outcome, BackendError>),
    BatchDone,
    Timer,
}

/// Warms up `items` items with `work(range)` per batch, under `config`.
pub async fn warmup<B, F, Fut>(
    backend: &B,
    config: &WarmupConfig,
    items: u64,
    mut work: F,
) -> Result<WarmupReport, WarmupError>
where
    B: Backend,
    F: FnMut(Range<u64>) -> Fut,
    Fut: Future<Output = ()>,
{
    let clock = MonotonicClock::new();
    // Labels only: the wall clock at the monotonic clock's origin.
    let wall_origin = wall_clock();
    let draw: u64 = rand::rng().random();
    let mut driver = WarmupDriver::new(config.clone(), items, clock.now(), draw)
        .map_err(WarmupError::Invalid)?;
    let mut batch = None;
    let mut command = None;
    let mut unusable = None;
    loop {
        // Drawn apart from the `match`: a `ThreadRng` held across an await
        // would make the future `!Send`.
        let draw: u64 = rand::rng().random();
        match driver.poll(clock.now(), draw) {
            WarmupStep::Execute(c) => command = Some(backend.execute(c)),
            WarmupStep::RunBatch { from, to } => batch = Some(Box::pin(work(from..to))),
            WarmupStep::StopBatch => {
                warn!(process = %config.process, "warm-up slot lost; stopping the batch");
                batch = None;
            }
            WarmupStep::Done(result) => {
                let limited = config.semaphore.is_some();
                return finish(result, limited, wall_origin, unusable);
            }
            WarmupStep::Wait { until } => {
                let woke = tokio::select! {
                    result = next(&mut command) => Woke::Answer(result),
                    () = next(&mut batch) => Woke::BatchDone,
                    () = sleep(&clock, until) => Woke::Timer,
                };
                match woke {
                    Woke::Answer(result) => {
                        command = None;
                        driver.handle_answer(clock.now(), answer(result, &mut unusable));
                    }
                    Woke::BatchDone => {
                        batch = None;
                        driver.handle_batch_done(clock.now());
                    }
                    Woke::Timer => {}
                }
            }
        }
    }
}

fn finish(
    result: Result<WarmupSummary, WarmupFailure>,
    limited: bool,
    wall_origin: Timestamp,
    unusable: Option<BackendError>,
) -> Result<WarmupReport, WarmupError> {
    // A monotonic reading (milliseconds since the origin) as a wall label.
    let label = |at: Timestamp| wall_origin.plus(at.since(Timestamp::ZERO));
    match result {
        Ok(summary) => Ok(WarmupReport {
            limited,
            slot: summary.slot,
            started_at: label(summary.started_at),
            acquired_at: label(summary.acquired_at),
            finished_at: label(summary.finished_at),
            waited: summary.acquired_at.since(summary.started_at),
            held: summary.finished_at.since(summary.acquired_at),
            batches: summary.batches,
            renewals: summary.renewals,
        }),
        Err(WarmupFailure::TimedOut { scans, errors }) => {
            Err(WarmupError::TimedOut { scans, errors })
        }
        Err(WarmupFailure::Rejected(reject)) => Err(WarmupError::Rejected(reject)),
        Err(WarmupFailure::SlotLost {
            grant,
            cause,
            batches,
            ..
        }) => Err(WarmupError::SlotLost {
            grant,
            cause,
            batches,
        }),
        Err(WarmupFailure::StorageUnusable) => {
            Err(WarmupError::Backend(unusable.unwrap_or_else(|| {
                BackendError::Misconfigured("storage unusable".into())
            })))
        }
        Err(other) => unreachable!("a warm-up failure this runtime does not know: {other:?}"),
    }
}
