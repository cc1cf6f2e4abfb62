//! Cluster-wide concurrency limits, on the core's N-slot semaphores.
//!
//! A limit is a named semaphore of N slots shared by every process. Before
//! a limited job's handler runs, the pool takes one slot as a *lease*
//! (`Command::SlotTry` with a TTL), renews it while the handler runs, and
//! releases it when the handler returns. A process that dies mid-job frees
//! its slots when their leases lapse, so a crash never shrinks a limit for
//! longer than the lease TTL.
//!
//! On a miss (all N slots held) the job is handed back without using an
//! attempt (a snooze of a jittered pause): that is the wait-on-miss, with
//! the waiting done in storage rather than by a task holding a worker.
//! The scan itself is the core's [`Acquisition`] with no waiting, so a slot
//! whose try errors is skipped rather than failing the job.
//!
//! Two kinds of limit: per queue ([`crate::PoolConfig::queue_limits`],
//! semaphore `queue:<name>`), and per key ([`crate::JobArgs::concurrency`],
//! any semaphore name the job chooses, such as `tenant:42`).
//!
//! Cost: a start costs up to N slot tries while the limit is full, and a
//! miss costs the claim and the snooze writes. Limits are for scarce
//! external resources, not for a hot path.
//!
//! What a lease cannot do: a process paused for longer than the lease TTL
//! (a stop-the-world pause, `SIGSTOP`, a VM migration) resumes believing it
//! still holds its slot, while storage has already given the slot to
//! someone else; it learns otherwise only at its next renewal (and then
//! its handler's token fires). The chaos suite shows this overlap on
//! demand (`cargo test -p weir-tests --test chaos -- --ignored`). Where
//! that matters, the protected resource must check a fencing token: the
//! slot's [`weir_core::SlotGrant::epoch`] only grows, so a resource that
//! remembers the highest epoch it has seen per slot can refuse a paused
//! holder's late write, exactly as job epochs fence late workers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::{
    AcquireStep, Acquisition, Command, InvalidName, Millis, Outcome, ProcessId, Receipt, Reject,
    SemaphoreName, SlotGrant, TryResult, WaitConfig,
};

use crate::backend::{Backend, BackendError};
use crate::worker::wall_clock;

/// A cluster-wide limit: at most `permits` holders of `semaphore` at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The semaphore.
    pub semaphore: SemaphoreName,
    /// Its size, the same in every process (the first use fixes it).
    pub permits: u16,
}

impl Limit {
    /// A limit of `permits` (at least 1) on the semaphore `name`
    /// (validated).
    pub fn new(name: impl Into<String>, permits: u16) -> Result<Limit, InvalidLimit> {
        let semaphore = SemaphoreName::new(name)?;
        if permits == 0 {
            return Err(InvalidLimit::ZeroPermits { semaphore });
        }
        Ok(Limit { semaphore, permits })
    }
}

/// A [`Limit`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidLimit {
    /// The semaphore's name is malformed.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// A limit of 0 slots: no job under it could ever run.
    #[error("limit {semaphore} has 0 permits; a semaphore needs at least 1 slot")]
    ZeroPermits {
        /// The semaphore.
        semaphore: SemaphoreName,
    },
}

/// How the pool takes and keeps limit slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    /// A slot is held as a lease of this length, renewed at a third of it
    /// while the handler runs.
    pub lease_ttl: Duration,
    /// On a miss the job is handed back for a pause drawn uniformly from
    /// `[retry_min, retry_max]`.
    pub retry_min: Duration,
    /// See `retry_min`.
    pub retry_max: Duration,
}

impl Default for LimitConfig {
    fn default() -> LimitConfig {
        LimitConfig {
            lease_ttl: Duration::from_secs(30),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_millis(1_000),
        }
    }
}

/// Why a slot could not be taken.
#[derive(Debug)]
pub(crate) enum Miss {
    /// Every slot is held: hand the job back for this long.
    Full(Duration),
    /// The limit itself is refused (its size disagrees with the first
    /// use, or is 0): the job cannot run under it.
    Refused(Reject),
    /// Storage is misconfigured.
    Backend(BackendError),
}

pub(crate) struct Limiter {
    backend: Arc<dyn Backend>,
    process: ProcessId,
    config: LimitConfig,
    /// The slots each attempt holds, released when its handler ends
    /// however it ends (returned, panicked, timed out, stopped).
    held: Mutex<BTreeMap<Receipt, Vec<(SemaphoreName, SlotGrant)>>>,
}

fn millis(d: Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Limiter {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        process: ProcessId,
        config: LimitConfig,
    ) -> Limiter {
        Limiter {
            backend,
            process,
            config,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<Receipt, Vec<(SemaphoreName, SlotGrant)>>> {
        // Only inserts and removes happen under this lock; neither panics.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retry_pause(&self) -> Duration {
        let (lo, hi) = (
            self.config.retry_min,
            self.config.retry_max.max(self.config.retry_min),
        );
        rand::rng().random_range(lo..=hi)
    }

    /// One scan of the limit's slots for `receipt`'s attempt (no waiting:
    /// a miss hands the job back). The slot is released by
    /// [`Limiter::release_attempt`].
    pub(crate) async fn acquire(&self, receipt: Receipt, limit: &Limit) -> Result<SlotGrant, Miss> {
        let wait = WaitConfig {
            retry_min: Millis::ZERO,
            retry_max: Millis::ZERO,
            wait_max: Millis::ZERO,
        };
        // `Limit`'s fields are public, so 0 can get past `Limit::new`; the
        // scan would take it for "no semaphore", so refuse it here.
        if limit.permits == 0 {
            return Err(Miss::Refused(Reject::ZeroPermits));
        }
        let mut acquisition = Acquisition::new(Some(limit.permits), wall_clock(), wait);
        loop {
            match acquisition.poll(wall_clock(), 0) {
                AcquireStep::Acquired(grant) => {
                    self.held()
                        .entry(receipt)
                        .or_default()
                        .push((limit.semaphore.clone(), grant));
                    return Ok(grant);
                }
                AcquireStep::TimedOut { .. } | AcquireStep::SleepUntil(_) => {
                    return Err(Miss::Full(self.retry_pause()))
                }
                AcquireStep::Disabled => unreachable!("a limit always has a size"),
                AcquireStep::Try(slot) => {
                    let command = Command::SlotTry {
                        semaphore: limit.semaphore.clone(),
                        permits: limit.permits,
                        slot,
                        holder: self.process,
                        lease_ttl: Some(millis(self.config.lease_ttl)),
                    };
                    let result = match self.backend.execute(command).await {
                        Ok(Outcome::SlotTried(Ok(grant))) => TryResult::Acquired(grant),
                        Ok(Outcome::SlotTried(Err(Reject::SlotBusy { .. }))) => TryResult::Busy,
                        Ok(Outcome::SlotTried(Err(reject))) => return Err(Miss::Refused(reject)),
                        Ok(other) => unreachable!("a slot try answered {other:?}"),
                        Err(BackendError::Misconfigured(m)) => {
                            return Err(Miss::Backend(BackendError::Misconfigured(m)))
                        }
                        // One slot's try failed: skip it; the scan goes on.
                        Err(error) => {
                            debug!(%error, %slot, "slot try failed; skipping the slot");
                            TryResult::Error
                        }
                    };
                    acquisition.on_try(slot, result);
                }
            }
        }
    }

    /// Runs `work` while renewing the leases of every slot `receipt`'s
    /// attempt holds; if a renewal is refused (the lease lapsed and the slot
    /// was taken), fires `token` so the handler stops.
    pub(crate) async fn renew_while<T>(
        &self,
        receipt: Receipt,
        token: &CancellationToken,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let every = self.config.lease_ttl / 3;
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(every) => {
                    let held = self.held().get(&receipt).cloned().unwrap_or_default();
                    for (semaphore, grant) in held {
                        if !self.renew(&semaphore, grant).await {
                            warn!(%semaphore, slot = %grant.slot.0, "concurrency slot lost; stopping the handler");
                            token.cancel();
                        }
                    }
                }
            }
        }
    }

    async fn renew(&self, semaphore: &SemaphoreName, grant: SlotGrant) -> bool {
        let command = Command::SlotRenew {
            semaphore: semaphore.clone(),
            grant,
            lease_ttl: millis(self.config.lease_ttl),
        };
        match self.backend.execute(command).await {
            Ok(Outcome::SlotRenewed(result)) => result.is_ok(),
            // Unknown: keep going; the next renewal will tell.
            _ => true,
        }
    }

    /// Whether `receipt`'s attempt holds any slot.
    pub(crate) fn holds(&self, receipt: Receipt) -> bool {
        self.held().contains_key(&receipt)
    }

    /// Releases every slot `receipt`'s attempt holds.
    pub(crate) async fn release_attempt(&self, receipt: Receipt) {
        let held = self.held().remove(&receipt).unwrap_or_default();
        for (semaphore, grant) in held {
            self.release(&semaphore, grant).await;
        }
    }

    async fn release(&self, semaphore: &SemaphoreName, grant: SlotGrant) {
        let command = Command::SlotRelease {
            semaphore: semaphore.clone(),
            grant,
        };
        // A lost release is harmless: the lease lapses.
        if let Err(error) = self.backend.execute(command).await {
            debug!(%error, %semaphore, "slot release lost; the lease will lapse");
        }
    }

    /// Releases every slot still held (at the end of shutdown, for
    /// handlers that did not return in time).
    pub(crate) async fn release_all(&self) {
        let held: Vec<_> = std::mem::take(&mut *self.held()).into_values().collect();
        for (semaphore, grant) in held.into_iter().flatten() {
            self.release(&semaphore, grant).await;
        }
    }
}
