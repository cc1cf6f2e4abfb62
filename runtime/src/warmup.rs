//! Herd mitigation for start-up work: the cache-warmer case.
//!
//! When a rolling deploy starts many processes that each want to warm a
//! cache, [`warmup`] keeps them from stampeding the backing store: each
//! process waits `delay + uniform(0, jitter)`, then takes one slot of a
//! cluster-wide N-slot semaphore (waiting on a miss with jittered pauses,
//! never past `wait_max`), then does its work in paced batches, and releases
//! the slot. The decisions (start time, scan, pauses, batches) are the
//! core's [`Warmup`], [`Pacer`] and [`Acquisition`]; this module only
//! sleeps and talks to the backend. With P processes, N slots and each
//! warm-up taking `work`, the last one finishes by
//! [`weir_core::herd_bound`].

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use rand::Rng;
use weir_core::{
    AcquireStep, Acquisition, Command, Millis, Outcome, PaceStep, Pacer, ProcessId, Reject,
    SemaphoreName, SlotGrant, Timestamp, TryResult, WaitConfig, Warmup,
};

use crate::backend::{Backend, BackendError};
use crate::worker::wall_clock;

/// How one process warms up.
#[derive(Clone, Debug)]
pub struct WarmupConfig {
    /// This process.
    pub process: ProcessId,
    /// Start delay, jitter, batch size and pause.
    pub pacing: Warmup,
    /// The cluster-wide semaphore and its size (at least 1); `None`
    /// disables the limit (reported as [`WarmupReport::limited`] = false,
    /// never silently).
    pub semaphore: Option<(SemaphoreName, u16)>,
    /// How to wait for a slot.
    pub wait: WaitConfig,
    /// Hold the slot as a lease of this length (renewed between batches)
    /// instead of for the session.
    pub lease_ttl: Option<Millis>,
}

/// What a warm-up did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupReport {
    /// Whether a semaphore limited it.
    pub limited: bool,
    /// The slot it held, if any.
    pub slot: Option<SlotGrant>,
    /// When it started (after delay and jitter).
    pub started_at: Timestamp,
    /// When it got its slot.
    pub acquired_at: Timestamp,
    /// When it finished.
    pub finished_at: Timestamp,
    /// Batches run.
    pub batches: u64,
}

/// Why a warm-up did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmupError {
    /// No slot came free before `wait_max`; nothing was held.
    #[error("no semaphore slot within wait_max ({scans} scans, {errors} slot errors)")]
    TimedOut {
        /// Full scans made.
        scans: u32,
        /// Slot tries that failed with an error.
        errors: u32,
    },
    /// The semaphore refused the request itself: a size of 0 (refused
    /// before the start delay, so it never waits) or a size that disagrees
    /// with the semaphore's first use.
    #[error(transparent)]
    Rejected(Reject),
    /// Storage failed in a way that retrying will not fix.
    #[error(transparent)]
    Backend(BackendError),
}

async fn sleep_until(at: Timestamp) {
    tokio::time::sleep(Duration::from_millis(at.since(wall_clock()).0)).await;
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
    // The core's scan reads 0 permits as "no semaphore"; here it is a
    // mistake, and one to report before sleeping through the start delay.
    if matches!(config.semaphore, Some((_, 0))) {
        return Err(WarmupError::Rejected(Reject::ZeroPermits));
    }
    let draw: u64 = rand::rng().random();
    let started_at = config.pacing.start_at(wall_clock(), draw);
    sleep_until(started_at).await;
    let slot = acquire(backend, config).await?;
    let acquired_at = wall_clock();
    let mut pacer: Pacer = config.pacing.pacer(items, acquired_at);
    let mut batches = 0;
    loop {
        match pacer.poll(wall_clock()) {
            PaceStep::Run { from, to } => {
                work(from..to).await;
                batches += 1;
                pacer.batch_done(wall_clock());
                renew(backend, config, slot.as_ref()).await;
            }
            PaceStep::WaitUntil(at) => sleep_until(at).await,
            PaceStep::Busy => unreachable!("batch_done follows every Run"),
            PaceStep::Done => break,
        }
    }
    if let (Some(grant), Some((name, _))) = (slot, &config.semaphore) {
        let release = Command::SlotRelease {
            semaphore: name.clone(),
            grant,
        };
        // A lost release is harmless: a session hold ends with the session
        // and a lease hold lapses.
        let _ = backend.execute(release).await;
    }
    Ok(WarmupReport {
        limited: config.semaphore.is_some(),
        slot,
        started_at,
        acquired_at,
        finished_at: wall_clock(),
        batches,
    })
}

async fn acquire<B: Backend>(
    backend: &B,
    config: &WarmupConfig,
) -> Result<Option<SlotGrant>, WarmupError> {
    let permits = config.semaphore.as_ref().map(|(_, n)| *n);
    let mut acquisition = Acquisition::new(permits, wall_clock(), config.wait);
    loop {
        let draw: u64 = rand::rng().random();
        match acquisition.poll(wall_clock(), draw) {
            AcquireStep::Disabled => return Ok(None),
            AcquireStep::Acquired(grant) => return Ok(Some(grant)),
            AcquireStep::TimedOut { scans, errors } => {
                return Err(WarmupError::TimedOut { scans, errors })
            }
            AcquireStep::SleepUntil(at) => sleep_until(at).await,
            AcquireStep::Try(slot) => {
                let (name, permits) = config.semaphore.clone().expect("a scan means a semaphore");
                let command = Command::SlotTry {
                    semaphore: name,
                    permits,
                    slot,
                    holder: config.process,
                    lease_ttl: config.lease_ttl,
                };
                let result = match backend.execute(command).await {
                    Ok(Outcome::SlotTried(Ok(grant))) => TryResult::Acquired(grant),
                    Ok(Outcome::SlotTried(Err(Reject::SlotBusy { .. }))) => TryResult::Busy,
                    Ok(Outcome::SlotTried(Err(reject))) => {
                        return Err(WarmupError::Rejected(reject))
                    }
                    Ok(other) => unreachable!("slot try answered {other:?}"),
                    Err(BackendError::Misconfigured(m)) => {
                        return Err(WarmupError::Backend(BackendError::Misconfigured(m)))
                    }
                    // One slot's try failed: skip it, the scan goes on.
                    Err(_) => TryResult::Error,
                };
                acquisition.on_try(slot, result);
            }
        }
    }
}

async fn renew<B: Backend>(backend: &B, config: &WarmupConfig, slot: Option<&SlotGrant>) {
    if let (Some(grant), Some((name, _)), Some(ttl)) = (slot, &config.semaphore, config.lease_ttl) {
        let command = Command::SlotRenew {
            semaphore: name.clone(),
            grant: *grant,
            lease_ttl: ttl,
        };
        let _ = backend.execute(command).await;
    }
}
