//! One process's warm-up, sans IO: every decision `weir::warmup` makes.
//!
//! [`WarmupDriver`] owns the whole warm-up of one process: the start delay
//! and its jitter, taking one slot of the cluster-wide semaphore (it drives
//! the core's [`Acquisition`]), the paced batches ([`Pacer`]), renewing the
//! slot's lease on a timer *while a batch runs*, what a renewal's answer
//! means, and the release at the end. The caller only executes: it sleeps,
//! sends storage commands and feeds their answers back, and starts and
//! stops the user's batches.
//!
//! ## Call order
//!
//! 1. [`WarmupDriver::new`] validates the configuration (a typed
//!    [`InvalidWarmup`]) before anything waits, and draws the start time.
//! 2. Call [`WarmupDriver::poll`]`(now, draw)` and do what the
//!    [`WarmupStep`] says, then poll again:
//!    - [`WarmupStep::Execute`]: send the command; report its answer with
//!      [`WarmupDriver::handle_answer`]. At most one command is out at a time.
//!    - [`WarmupStep::RunBatch`]: start the batch; report its end with
//!      [`WarmupDriver::handle_batch_done`]. At most one batch is out.
//!    - [`WarmupStep::StopBatch`]: the slot is lost. Stop the batch at once
//!      (drop it): it must do no more work, and it is not reported.
//!    - [`WarmupStep::Wait`]: nothing to start. Wait until `until`, or
//!      until the command or batch that is out finishes, then poll again.
//!    - [`WarmupStep::Done`]: finished. Drop whatever is still out (a
//!      renewal in flight); no further call is needed.
//!
//! Time must not go backwards between calls, and it must be a monotonic
//! clock of this process: every deadline here is measured on it.
//!
//! ## The lease
//!
//! A slot held as a lease lapses in storage `lease_ttl` after storage
//! applied the last try or renewal. The driver cannot see storage's clock,
//! so it counts from what it knows: the moment it *sent* the last command
//! that storage accepted. Storage applied it no earlier, so by the
//! driver's own clock the lease is **proven until** `sent + lease_ttl`,
//! and storage's lease lapses no earlier than that (the two clocks run at
//! the same rate; a pause is another matter, see below).
//!
//! - Renewals go out every `lease_ttl / 3` from the last one sent, whether
//!   or not a batch is out, so a process that keeps up renews twice before
//!   its proof runs out, and a renewal has two thirds of the lease to come
//!   back.
//! - An accepted renewal extends the proof to `sent + lease_ttl`.
//! - A refused renewal means storage gave the slot away (or let it lapse):
//!   the slot is lost ([`SlotLoss::Refused`]).
//! - A lost or unknown answer proves nothing: the driver keeps going and
//!   tries again at the next interval, but once the proof runs out without
//!   an accepted renewal the slot counts as lost ([`SlotLoss::Unproven`]):
//!   a lease you cannot prove is a lease you do not hold.
//!
//! On a loss a batch that is out is stopped ([`WarmupStep::StopBatch`]), no
//! further batch starts, and the warm-up ends with
//! [`WarmupFailure::SlotLost`]. There is no release after a loss: a refused
//! slot is someone else's, and an unproven one lapses in storage within a
//! lease TTL; a release would only wait for a lane the lost renewal may
//! still hold. A finished warm-up releases its slot; an answer to the
//! release is not needed, since a lost release lapses as a lease (or ends
//! with the session).
//!
//! ## Session holds
//!
//! `lease_ttl: None` holds the slot for the holder's session: no renewals,
//! and the slot is held until released or until the session ends. The
//! driver keeps that possible, but a session hold gives the holder no way
//! to notice a loss: on Postgres a session hold ends when the backend's
//! session-hold connection ends, which also happens while the holder still
//! works (the connection breaks, `pg_terminate_backend`, a restart), and
//! only a renewal would tell, which a session hold never sends. A lease
//! bounds that: the holder stops once it cannot prove its lease. So a lease
//! is the default ([`WarmupConfig::new`],
//! [`WarmupConfig::DEFAULT_LEASE_TTL`]); it also frees a crashed warmer's
//! slot on every backend, in at most a lease TTL.
//!
//! ## What a lease cannot do
//!
//! A holder paused for longer than its lease (a stop-the-world pause,
//! `SIGSTOP`, a VM migration) resumes with a clock that jumped past its
//! proof, and stops at its next poll; but between the lapse in storage
//! and that poll another warmer may already hold the slot. No lease can
//! prevent that. Where it matters, the protected resource must check a
//! fencing token: the slot's [`SlotGrant::epoch`] only grows, so a
//! resource that remembers the highest epoch it has seen per slot can
//! refuse a paused holder's late write, exactly as job epochs fence late
//! workers (`weir::limit` says the same of concurrency limits).

use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::ids::{ProcessId, SemaphoreName, SlotIndex};
use crate::protocol::{Command, Outcome};
use crate::reject::Reject;
use crate::semaphore::{
    AcquireStep, Acquisition, InvalidWaitConfig, SlotGrant, TryResult, WaitConfig,
};
use crate::time::{Millis, Timestamp};
use crate::warmup::{PaceStep, Pacer, Warmup};

/// How one process warms up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarmupConfig {
    /// This process: the slot is held in its name.
    pub process: ProcessId,
    /// Start delay, jitter, batch size and pause.
    pub pacing: Warmup,
    /// The cluster-wide semaphore and its size (at least 1); `None`
    /// disables the limit (reported as such, never silently).
    pub semaphore: Option<(SemaphoreName, u16)>,
    /// How to wait for a slot.
    pub wait: WaitConfig,
    /// Hold the slot as a lease of this length, renewed every third of it
    /// while the warm-up runs (at least [`WarmupConfig::LEASE_TTL_MIN`]);
    /// `None` holds it for the session (see the module docs for why a
    /// lease is the default).
    pub lease_ttl: Option<Millis>,
}

impl WarmupConfig {
    /// The lease [`WarmupConfig::new`] chooses: a crashed warmer's slot is
    /// free again within 30 s, for 3 renewals a minute.
    pub const DEFAULT_LEASE_TTL: Millis = Millis::from_secs(30);

    /// The shortest lease accepted: renewals go out every `lease_ttl / 3`
    /// in whole milliseconds, and below 3 ms that is no interval at all.
    pub const LEASE_TTL_MIN: Millis = Millis(3);

    /// A warm-up limited by `permits` slots of `semaphore`, held as a lease
    /// of [`WarmupConfig::DEFAULT_LEASE_TTL`].
    pub fn new(
        process: ProcessId,
        pacing: Warmup,
        semaphore: SemaphoreName,
        permits: u16,
        wait: WaitConfig,
    ) -> WarmupConfig {
        WarmupConfig {
            process,
            pacing,
            semaphore: Some((semaphore, permits)),
            wait,
            lease_ttl: Some(WarmupConfig::DEFAULT_LEASE_TTL),
        }
    }

    /// Checks everything that could never work, so a warm-up is refused
    /// before it sleeps through its start delay.
    pub fn validate(&self) -> Result<(), InvalidWarmup> {
        if let Some((semaphore, 0)) = &self.semaphore {
            return Err(InvalidWarmup::ZeroPermits {
                semaphore: semaphore.clone(),
            });
        }
        if self.pacing.batch_size == 0 {
            return Err(InvalidWarmup::ZeroBatchSize);
        }
        if let Some(lease_ttl) = self.lease_ttl {
            if lease_ttl < WarmupConfig::LEASE_TTL_MIN {
                return Err(InvalidWarmup::LeaseTooShort {
                    lease_ttl,
                    min: WarmupConfig::LEASE_TTL_MIN,
                });
            }
        }
        self.wait.validate()?;
        Ok(())
    }

    /// How often a lease is renewed: a third of it.
    pub fn renew_every(&self) -> Option<Millis> {
        self.lease_ttl.map(|ttl| Millis(ttl.0 / 3))
    }
}

/// A warm-up configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidWarmup {
    /// A semaphore of 0 slots: no warmer could ever start.
    #[error("warm-up semaphore {semaphore} has 0 permits; a semaphore needs at least 1 slot")]
    ZeroPermits {
        /// The semaphore.
        semaphore: SemaphoreName,
    },
    /// Batches of 0 items: the warm-up would never get anywhere.
    #[error("warm-up batch_size is 0; a batch needs at least 1 item")]
    ZeroBatchSize,
    /// A lease too short to renew before it lapses.
    #[error(
        "warm-up lease_ttl {lease_ttl} is too short: it is renewed every third of it, \
         so it must be at least {min}"
    )]
    LeaseTooShort {
        /// The lease asked for.
        lease_ttl: Millis,
        /// The shortest accepted.
        min: Millis,
    },
    /// The wait for a slot cannot work.
    #[error("warm-up wait: {0}")]
    Wait(#[from] InvalidWaitConfig),
}

/// How a slot was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SlotLoss {
    /// Storage refused a renewal: the lease had lapsed there, and the slot
    /// may already be someone else's.
    Refused,
    /// The lease ran out by the driver's own clock without an accepted
    /// renewal (their answers were lost or late).
    Unproven,
}

/// A warm-up that ran to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarmupSummary {
    /// The slot it held (`None`: no semaphore limited it).
    pub slot: Option<SlotGrant>,
    /// When it started, after delay and jitter.
    pub started_at: Timestamp,
    /// When it got its slot.
    pub acquired_at: Timestamp,
    /// When it finished: every batch ran and the release answered.
    pub finished_at: Timestamp,
    /// Batches run.
    pub batches: u64,
    /// Renewals storage accepted.
    pub renewals: u64,
}

/// Why a warm-up did not run to its end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WarmupFailure {
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
    /// The slot was lost while warming: the batch out was stopped and no
    /// further batch started.
    #[error("lost semaphore slot {} ({cause:?}) after {batches} batches", .grant.slot.0)]
    SlotLost {
        /// The slot that was held.
        grant: SlotGrant,
        /// How it was lost.
        cause: SlotLoss,
        /// Batches that ran to their end.
        batches: u64,
        /// When the driver knew.
        at: Timestamp,
    },
    /// Storage is unusable as configured; the caller has the details.
    #[error("storage is unusable as configured")]
    StorageUnusable,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WarmupStep {
    /// Nothing to start: wait until `until` (`None`: no timer), or until
    /// the command or batch out finishes; then poll again.
    Wait {
        /// The next deadline.
        until: Option<Timestamp>,
    },
    /// Send this storage command; report with [`WarmupDriver::handle_answer`].
    Execute(Command),
    /// Run items `[from, to)`; report with [`WarmupDriver::handle_batch_done`].
    RunBatch {
        /// First item index.
        from: u64,
        /// One past the last item index.
        to: u64,
    },
    /// The slot is lost: stop the batch out now; it is not reported.
    StopBatch,
    /// Finished (the same answer on every later poll).
    Done(Result<WarmupSummary, WarmupFailure>),
}

/// What became of a command from [`WarmupStep::Execute`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageAnswer {
    /// Storage answered.
    Outcome(Outcome),
    /// No answer: the command may or may not have been applied.
    Lost,
    /// Storage is unusable as configured; no retry will help.
    Unusable,
}

/// The lease of a held slot, on the driver's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Lease {
    ttl: Millis,
    /// The lease is held for certain before this time.
    proven_until: Timestamp,
    /// When the next renewal goes out.
    renew_at: Timestamp,
}

/// The working phase: a slot (or no limit), the pacer, the lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Holding {
    grant: Option<SlotGrant>,
    acquired_at: Timestamp,
    pacer: Pacer,
    batch_out: bool,
    lease: Option<Lease>,
    /// A renewal is out, sent at this time.
    renewing: Option<Timestamp>,
    /// The warm-up must end this way at the next poll (a refused renewal,
    /// unusable storage).
    ending: Option<WarmupFailure>,
    /// The `WarmupRenewsBetweenBatches` mutation: a renewal is due because
    /// a batch just ended.
    renew_after_batch: bool,
}

/// Where the release stands: one command is out at a time, so it waits
/// for a renewal still out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum ReleaseLane {
    AfterRenewal,
    Ready,
    Sent,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Phase {
    /// Sleeping through the start delay.
    Delaying,
    /// Taking a slot; a try is out when `trying` is set.
    Acquiring {
        acquisition: Acquisition,
        trying: Option<(SlotIndex, Timestamp)>,
    },
    Working(Holding),
    /// Every batch ran: release the slot (after the renewal out, if any,
    /// has answered).
    Releasing {
        summary: WarmupSummary,
        grant: SlotGrant,
        lane: ReleaseLane,
    },
    Done(Result<WarmupSummary, WarmupFailure>),
}

/// One process's warm-up; see the module docs for the call order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WarmupDriver {
    config: WarmupConfig,
    items: u64,
    started_at: Timestamp,
    phase: Phase,
    batches: u64,
    renewals: u64,
    #[cfg(feature = "mutants")]
    mutation: Option<crate::mutation::Mutation>,
}

impl WarmupDriver {
    /// A warm-up of `items` items booting at `now`; `draw` (uniform) picks
    /// the start jitter. Refuses a configuration that could never work,
    /// before anything waits.
    pub fn new(
        config: WarmupConfig,
        items: u64,
        now: Timestamp,
        draw: u64,
    ) -> Result<WarmupDriver, InvalidWarmup> {
        config.validate()?;
        Ok(WarmupDriver {
            started_at: config.pacing.start_at(now, draw),
            config,
            items,
            phase: Phase::Delaying,
            batches: 0,
            renewals: 0,
            #[cfg(feature = "mutants")]
            mutation: None,
        })
    }

    /// The same driver, but making one deliberate mistake (tests only).
    #[cfg(feature = "mutants")]
    pub fn with_mutation(mut self, mutation: crate::mutation::Mutation) -> WarmupDriver {
        self.mutation = Some(mutation);
        self
    }

    /// The `WarmupRenewsBetweenBatches` mutation: renew only after a batch,
    /// ignore the answer, and never count the lease out by the clock.
    fn renews_between_batches(&self) -> bool {
        #[cfg(feature = "mutants")]
        return self.mutation == Some(crate::mutation::Mutation::WarmupRenewsBetweenBatches);
        #[cfg(not(feature = "mutants"))]
        false
    }

    /// The `WarmupProvesLeaseFromAnswer` mutation: the proof of a lease
    /// runs from when the answer came, not from when the command was sent.
    fn proves_from_answer(&self) -> bool {
        #[cfg(feature = "mutants")]
        return self.mutation == Some(crate::mutation::Mutation::WarmupProvesLeaseFromAnswer);
        #[cfg(not(feature = "mutants"))]
        false
    }

    /// The configuration.
    pub fn config(&self) -> &WarmupConfig {
        &self.config
    }

    /// When the warm-up starts (after delay and jitter).
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// Whether a batch is out.
    pub fn batch_out(&self) -> bool {
        matches!(&self.phase, Phase::Working(h) if h.batch_out)
    }

    /// The slot this driver believes it holds at `now`: granted, not lost,
    /// and (for a lease) proven at `now`. `None` with no semaphore too.
    pub fn holds(&self, now: Timestamp) -> Option<SlotGrant> {
        match &self.phase {
            Phase::Working(h) if h.ending.is_none() => {
                let proven = self.renews_between_batches()
                    || h.lease.is_none_or(|lease| now < lease.proven_until);
                h.grant.filter(|_| proven)
            }
            _ => None,
        }
    }

    /// The result, once finished.
    pub fn result(&self) -> Option<&Result<WarmupSummary, WarmupFailure>> {
        match &self.phase {
            Phase::Done(result) => Some(result),
            _ => None,
        }
    }

    /// The next step at `now`. `draw` is a uniform random number, used
    /// only when the acquisition chooses a pause.
    pub fn poll(&mut self, now: Timestamp, draw: u64) -> WarmupStep {
        match &mut self.phase {
            Phase::Delaying if now < self.started_at => WarmupStep::Wait {
                until: Some(self.started_at),
            },
            Phase::Delaying => {
                let permits = self.config.semaphore.as_ref().map(|(_, n)| *n);
                let acquisition = Acquisition::new(permits, now, self.config.wait);
                self.phase = Phase::Acquiring {
                    acquisition,
                    trying: None,
                };
                self.poll(now, draw)
            }
            Phase::Acquiring { .. } => self.poll_acquiring(now, draw),
            Phase::Working(_) => self.poll_working(now, draw),
            Phase::Releasing { .. } => self.poll_releasing(),
            Phase::Done(result) => WarmupStep::Done(result.clone()),
        }
    }

    fn poll_acquiring(&mut self, now: Timestamp, draw: u64) -> WarmupStep {
        let Phase::Acquiring {
            acquisition,
            trying,
        } = &mut self.phase
        else {
            unreachable!("poll_acquiring outside Acquiring");
        };
        if trying.is_some() {
            return WarmupStep::Wait { until: None };
        }
        match acquisition.poll(now, draw) {
            AcquireStep::Try(slot) => {
                *trying = Some((slot, now));
                let (semaphore, permits) = self
                    .config
                    .semaphore
                    .clone()
                    .expect("a scan only runs with a semaphore");
                WarmupStep::Execute(Command::SlotTry(cmd::SlotTry {
                    semaphore,
                    permits,
                    slot,
                    holder: self.config.process,
                    lease_ttl: self.config.lease_ttl,
                }))
            }
            AcquireStep::SleepUntil(until) => WarmupStep::Wait { until: Some(until) },
            AcquireStep::TimedOut { scans, errors } => {
                self.finish(now, Err(WarmupFailure::TimedOut { scans, errors }))
            }
            AcquireStep::Disabled => {
                self.start_working(now, None, now);
                self.poll(now, draw)
            }
            AcquireStep::Acquired(grant) => {
                unreachable!("an acquired try moves on in handle_answer: {grant:?}")
            }
        }
    }

    fn start_working(&mut self, now: Timestamp, grant: Option<SlotGrant>, sent_at: Timestamp) {
        let lease = match (grant, self.config.lease_ttl) {
            (Some(_), Some(ttl)) => Some(Lease {
                ttl,
                proven_until: sent_at.plus(ttl),
                renew_at: sent_at.plus(Millis(ttl.0 / 3)),
            }),
            _ => None,
        };
        self.phase = Phase::Working(Holding {
            grant,
            acquired_at: now,
            pacer: self.config.pacing.pacer(self.items, now),
            batch_out: false,
            lease,
            renewing: None,
            ending: None,
            renew_after_batch: false,
        });
    }

    fn poll_working(&mut self, now: Timestamp, draw: u64) -> WarmupStep {
        let mutant = self.renews_between_batches();
        let Phase::Working(h) = &mut self.phase else {
            unreachable!("poll_working outside Working");
        };
        if let Some(failure) = lost(h, now, mutant, self.batches) {
            return self.lose(now, failure);
        }
        let pace = h.pacer.poll(now);
        let next_batch = match pace {
            PaceStep::Run { from, to } => {
                h.batch_out = true;
                return WarmupStep::RunBatch { from, to };
            }
            PaceStep::Done => {
                self.release(now);
                return self.poll(now, draw);
            }
            PaceStep::WaitUntil(at) => Some(at),
            PaceStep::Busy => None,
        };
        // The mutant keeps no clock on its lease.
        let proof = h.lease.map(|l| l.proven_until).filter(|_| !mutant);
        let (Some(lease), Some(grant), None) = (h.lease, h.grant, h.renewing) else {
            return WarmupStep::Wait {
                until: next_batch.into_iter().chain(proof).min(),
            };
        };
        let due = if mutant {
            h.renew_after_batch
        } else {
            now >= lease.renew_at
        };
        if !due {
            let renewal = Some(lease.renew_at).filter(|_| !mutant);
            return WarmupStep::Wait {
                until: next_batch.into_iter().chain(proof).chain(renewal).min(),
            };
        }
        h.renewing = Some(now);
        h.renew_after_batch = false;
        let (semaphore, _) = self
            .config
            .semaphore
            .clone()
            .expect("a lease is only held with a semaphore");
        WarmupStep::Execute(Command::SlotRenew(cmd::SlotRenew {
            semaphore,
            grant,
            lease_ttl: lease.ttl,
        }))
    }

    /// The slot is gone: stop the batch out, if any, and end.
    fn lose(&mut self, now: Timestamp, failure: WarmupFailure) -> WarmupStep {
        let Phase::Working(h) = &self.phase else {
            unreachable!("lose outside Working");
        };
        let batch_out = h.batch_out;
        let step = self.finish(now, Err(failure));
        if batch_out {
            WarmupStep::StopBatch
        } else {
            step
        }
    }

    /// Every batch ran: on to the release (or straight to the end).
    fn release(&mut self, now: Timestamp) {
        let Phase::Working(h) = &self.phase else {
            unreachable!("release outside Working");
        };
        let summary = WarmupSummary {
            slot: h.grant,
            started_at: self.started_at,
            acquired_at: h.acquired_at,
            // Set again when the release answers.
            finished_at: now,
            batches: self.batches,
            renewals: self.renewals,
        };
        self.phase = match h.grant {
            Some(grant) => Phase::Releasing {
                summary,
                grant,
                lane: if h.renewing.is_some() {
                    ReleaseLane::AfterRenewal
                } else {
                    ReleaseLane::Ready
                },
            },
            None => Phase::Done(Ok(summary)),
        };
    }

    fn poll_releasing(&mut self) -> WarmupStep {
        let Phase::Releasing { grant, lane, .. } = &mut self.phase else {
            unreachable!("poll_releasing outside Releasing");
        };
        if *lane != ReleaseLane::Ready {
            return WarmupStep::Wait { until: None };
        }
        *lane = ReleaseLane::Sent;
        let (semaphore, _) = self
            .config
            .semaphore
            .clone()
            .expect("a slot is only held with a semaphore");
        WarmupStep::Execute(Command::SlotRelease(cmd::SlotRelease {
            semaphore,
            grant: *grant,
        }))
    }

    fn finish(
        &mut self,
        now: Timestamp,
        result: Result<WarmupSummary, WarmupFailure>,
    ) -> WarmupStep {
        let result = result.map(|summary| WarmupSummary {
            finished_at: now,
            ..summary
        });
        self.phase = Phase::Done(result.clone());
        WarmupStep::Done(result)
    }

    /// The batch from the last [`WarmupStep::RunBatch`] ended at `now`.
    pub fn handle_batch_done(&mut self, now: Timestamp) {
        let mutant = self.renews_between_batches();
        let Phase::Working(h) = &mut self.phase else {
            panic!("handle_batch_done without a batch out");
        };
        assert!(h.batch_out, "handle_batch_done without a batch out");
        h.batch_out = false;
        h.pacer.handle_batch_done(now);
        h.renew_after_batch = mutant;
        self.batches += 1;
    }

    /// The command from the last [`WarmupStep::Execute`] answered at `now`.
    pub fn handle_answer(&mut self, now: Timestamp, answer: StorageAnswer) {
        match &mut self.phase {
            Phase::Acquiring { .. } => self.on_try_answer(now, answer),
            Phase::Working(_) => self.on_renew_answer(now, answer),
            // The renewal's answer no longer matters; the release's ends
            // the warm-up, whatever it says (a lost release lapses).
            Phase::Releasing { summary, lane, .. } => match *lane {
                ReleaseLane::AfterRenewal => *lane = ReleaseLane::Ready,
                ReleaseLane::Sent => {
                    let summary = *summary;
                    self.finish(now, Ok(summary));
                }
                ReleaseLane::Ready => panic!("an answer in Releasing with nothing out"),
            },
            // A late answer after the end: nothing depends on it.
            Phase::Done(_) => {}
            Phase::Delaying => panic!("an answer before anything was sent"),
        }
    }

    fn on_try_answer(&mut self, now: Timestamp, answer: StorageAnswer) {
        let Phase::Acquiring {
            acquisition,
            trying,
        } = &mut self.phase
        else {
            unreachable!("on_try_answer outside Acquiring");
        };
        let (slot, sent_at) = trying.take().expect("an answer to a try that is out");
        let result = match answer {
            StorageAnswer::Outcome(Outcome::SlotTried(Ok(grant))) => {
                let from = if self.proves_from_answer() {
                    now
                } else {
                    sent_at
                };
                self.start_working(now, Some(grant), from);
                return;
            }
            StorageAnswer::Outcome(Outcome::SlotTried(Err(Reject::SlotBusy { .. }))) => {
                TryResult::Busy
            }
            StorageAnswer::Outcome(Outcome::SlotTried(Err(reject))) => {
                self.finish(now, Err(WarmupFailure::Rejected(reject)));
                return;
            }
            StorageAnswer::Outcome(other) => panic!("a slot try answered {other:?}"),
            // One slot's try failed: skip the slot, the scan goes on.
            StorageAnswer::Lost => TryResult::Error,
            StorageAnswer::Unusable => {
                self.finish(now, Err(WarmupFailure::StorageUnusable));
                return;
            }
        };
        acquisition.handle_try(slot, result);
    }

    fn on_renew_answer(&mut self, now: Timestamp, answer: StorageAnswer) {
        let mutant = self.renews_between_batches();
        let from_answer = self.proves_from_answer();
        let Phase::Working(h) = &mut self.phase else {
            unreachable!("on_renew_answer outside Working");
        };
        let sent_at = h
            .renewing
            .take()
            .expect("an answer to a renewal that is out");
        let lease = h.lease.as_mut().expect("a renewal only of a lease");
        let grant = h.grant.expect("a renewal only of a held slot");
        match answer {
            // Before the fix the answer was discarded.
            _ if mutant => {}
            StorageAnswer::Outcome(Outcome::SlotRenewed(Ok(()))) => {
                // Storage applied it no earlier than it was sent.
                let from = if from_answer { now } else { sent_at };
                lease.proven_until = lease.proven_until.max(from.plus(lease.ttl));
                lease.renew_at = sent_at.plus(Millis(lease.ttl.0 / 3));
                self.renewals += 1;
            }
            StorageAnswer::Outcome(Outcome::SlotRenewed(Err(_))) => {
                h.ending = Some(WarmupFailure::SlotLost {
                    grant,
                    cause: SlotLoss::Refused,
                    batches: self.batches,
                    at: now,
                });
            }
            StorageAnswer::Outcome(other) => panic!("a slot renewal answered {other:?}"),
            // Unknown: try again at the next interval; the proof stands
            // as it was and runs out on its own.
            StorageAnswer::Lost => lease.renew_at = sent_at.plus(Millis(lease.ttl.0 / 3)),
            StorageAnswer::Unusable => h.ending = Some(WarmupFailure::StorageUnusable),
        }
    }
}

/// Whether the slot is gone at `now`: a refused renewal or unusable
/// storage said so, or the lease's proof ran out.
fn lost(h: &mut Holding, now: Timestamp, mutant: bool, batches: u64) -> Option<WarmupFailure> {
    if let Some(failure) = h.ending.take() {
        return Some(failure);
    }
    let lease = h.lease?;
    let grant = h.grant?;
    (!mutant && now >= lease.proven_until).then_some(WarmupFailure::SlotLost {
        grant,
        cause: SlotLoss::Unproven,
        batches,
        at: lease.proven_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SlotEpoch;
    use crate::world::{World, WorldConfig};

    const TTL: Millis = Millis(300);

    fn name() -> SemaphoreName {
        SemaphoreName::new("warm:cache").unwrap()
    }

    fn config(process: u64) -> WarmupConfig {
        WarmupConfig {
            process: ProcessId(process),
            pacing: Warmup {
                delay: Millis(0),
                jitter: Millis(0),
                batch_size: 1,
                batch_pause: Millis(10),
            },
            semaphore: Some((name(), 1)),
            wait: WaitConfig {
                retry_min: Millis(10),
                retry_max: Millis(10),
                wait_max: Millis(5_000),
            },
            lease_ttl: Some(TTL),
        }
    }

    /// What happened, for assertions.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Event {
        Try(i64),
        Renew(i64),
        Release(i64),
        Batch(i64, u64),
        BatchDone(i64),
        Stop(i64),
    }

    /// What the harness's storage answers, given what the world said.
    type Rewrite = Box<dyn FnMut(&Command, Outcome) -> StorageAnswer>;

    /// A caller that executes the driver's steps against a real world on a
    /// discrete clock: each batch works `batch_ms`, each command's answer
    /// comes back `answer_ms` after it was sent, and `answer` may rewrite
    /// (or lose) what the world said.
    struct Harness {
        world: World,
        now: Timestamp,
        batch_ms: u64,
        answer_ms: u64,
        answer: Rewrite,
        events: Vec<Event>,
        batch_end: Option<Timestamp>,
        out: Option<(Timestamp, Command)>,
    }

    impl Harness {
        fn new(batch_ms: u64) -> Harness {
            Harness {
                world: World::new(WorldConfig::default()),
                now: Timestamp(1_000),
                batch_ms,
                answer_ms: 0,
                answer: Box::new(|_, outcome| StorageAnswer::Outcome(outcome)),
                events: Vec::new(),
                batch_end: None,
                out: None,
            }
        }

        fn at(&self) -> i64 {
            self.now.0 - 1_000
        }

        /// Runs `driver` to its end, or through everything that happens
        /// up to and at `until` (and returns a `Wait`); returns the last
        /// step. A batch or a command still out at `until` is forgotten.
        fn run(&mut self, driver: &mut WarmupDriver, until: Option<i64>) -> WarmupStep {
            loop {
                match driver.poll(self.now, 0) {
                    WarmupStep::Execute(command) => {
                        let event = match &command {
                            Command::SlotTry(_) => Event::Try(self.at()),
                            Command::SlotRenew(_) => Event::Renew(self.at()),
                            _ => Event::Release(self.at()),
                        };
                        self.events.push(event);
                        assert!(self.out.is_none(), "two commands out");
                        self.out = Some((self.now.plus(Millis(self.answer_ms)), command));
                    }
                    WarmupStep::RunBatch { from, .. } => {
                        self.events.push(Event::Batch(self.at(), from));
                        assert!(self.batch_end.is_none(), "two batches out");
                        self.batch_end = Some(self.now.plus(Millis(self.batch_ms)));
                    }
                    WarmupStep::StopBatch => {
                        self.events.push(Event::Stop(self.at()));
                        self.batch_end.take().expect("a stop with a batch out");
                    }
                    step @ WarmupStep::Done(_) => return step,
                    WarmupStep::Wait { until: timer } => {
                        let answered = self.out.as_ref().map(|(at, _)| *at);
                        let next = [timer, self.batch_end, answered]
                            .into_iter()
                            .flatten()
                            .min();
                        let next = next.expect("a wait with nothing to wait for");
                        if let Some(stop) = until.map(|u| Timestamp(1_000 + u)) {
                            if next > stop {
                                self.now = stop;
                                return WarmupStep::Wait { until: timer };
                            }
                        }
                        self.now = next;
                        if answered == Some(self.now) {
                            let (_, command) = self.out.take().unwrap();
                            // Storage applies it when the answer is due:
                            // the latest a real round trip could.
                            let outcome = self.world.apply(self.now, command.clone());
                            let answer = (self.answer)(&command, outcome);
                            driver.handle_answer(self.now, answer);
                        } else if self.batch_end == Some(self.now) {
                            self.batch_end = None;
                            self.events.push(Event::BatchDone(self.at()));
                            driver.handle_batch_done(self.now);
                        }
                    }
                }
            }
        }
    }

    fn driver(config: WarmupConfig, items: u64) -> WarmupDriver {
        WarmupDriver::new(config, items, Timestamp(1_000), 0).unwrap()
    }

    fn renewals(events: &[Event]) -> Vec<i64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Renew(at) => Some(*at),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_lease_is_renewed_every_third_of_it_while_a_batch_is_out() {
        let mut h = Harness::new(1_000);
        let mut d = driver(config(1), 2);
        let step = h.run(&mut d, None);
        let WarmupStep::Done(Ok(summary)) = step else {
            panic!("{step:?}")
        };
        // Two batches of 1 s with a pause of 10 ms: renewals every 100 ms
        // from the try at 0, through both batches and the pause.
        assert_eq!(
            renewals(&h.events),
            (1..=20).map(|i| i * 100).collect::<Vec<_>>()
        );
        assert_eq!(h.events.last(), Some(&Event::Release(2_010)));
        assert_eq!((summary.batches, summary.renewals), (2, 20));
        assert_eq!(summary.finished_at, Timestamp(3_010));
        // Nobody else could have had the slot meanwhile, and now it is free.
        assert_eq!(h.world.semaphore(&name()).unwrap().holders(h.now), 0);
    }

    #[test]
    fn the_lease_is_held_at_every_moment_of_the_batch() {
        let mut h = Harness::new(1_000);
        let mut d = driver(config(1), 1);
        for at in (0..1_000).step_by(50) {
            h.run(&mut d, Some(at));
            let grant = d.holds(h.now).expect("held throughout the batch");
            let sem = h.world.semaphore(&name()).unwrap();
            let (_, slot) = sem.slots().next().unwrap();
            assert_eq!(slot.holder_at(h.now), Some(ProcessId(1)), "at {at}");
            assert_eq!(slot.epoch, grant.epoch);
        }
    }

    #[test]
    fn a_refused_renewal_stops_the_batch_and_no_other_starts() {
        let mut h = Harness::new(1_000);
        // Storage lets the lease lapse and gives the slot away (as after a
        // pause): the second renewal is refused.
        let mut renewals = 0;
        h.answer = Box::new(move |command, outcome| match command {
            Command::SlotRenew(_) => {
                renewals += 1;
                if renewals == 2 {
                    StorageAnswer::Outcome(Outcome::SlotRenewed(Err(Reject::SlotNotHeld {
                        slot: SlotIndex(0),
                    })))
                } else {
                    StorageAnswer::Outcome(outcome)
                }
            }
            _ => StorageAnswer::Outcome(outcome),
        });
        let mut d = driver(config(1), 3);
        let step = h.run(&mut d, None);
        let grant = SlotGrant {
            slot: SlotIndex(0),
            epoch: SlotEpoch(1),
            holder: ProcessId(1),
        };
        assert_eq!(
            step,
            WarmupStep::Done(Err(WarmupFailure::SlotLost {
                grant,
                cause: SlotLoss::Refused,
                batches: 0,
                at: Timestamp(1_200),
            }))
        );
        assert_eq!(
            h.events,
            vec![
                Event::Try(0),
                Event::Batch(0, 0),
                Event::Renew(100),
                Event::Renew(200),
                Event::Stop(200),
            ]
        );
        assert_eq!(d.holds(h.now), None);
    }

    #[test]
    fn lost_renewals_until_the_lease_would_lapse_count_as_a_loss() {
        let mut h = Harness::new(1_000);
        h.answer = Box::new(|command, outcome| match command {
            Command::SlotRenew(_) => StorageAnswer::Lost,
            _ => StorageAnswer::Outcome(outcome),
        });
        let mut d = driver(config(1), 2);
        h.run(&mut d, Some(299));
        assert!(d.holds(h.now).is_some(), "proven until 300");
        assert!(d.holds(Timestamp(1_300)).is_none(), "not proven at 300");
        let step = h.run(&mut d, None);
        let WarmupStep::Done(Err(WarmupFailure::SlotLost { cause, at, .. })) = step else {
            panic!("{step:?}")
        };
        assert_eq!((cause, at), (SlotLoss::Unproven, Timestamp(1_300)));
        assert_eq!(
            h.events,
            vec![
                Event::Try(0),
                Event::Batch(0, 0),
                Event::Renew(100),
                Event::Renew(200),
                Event::Stop(300),
            ]
        );
    }

    #[test]
    fn a_lost_renewal_is_retried_and_a_later_one_keeps_the_slot() {
        let mut h = Harness::new(500);
        let mut lost = 0;
        h.answer = Box::new(move |command, outcome| match command {
            Command::SlotRenew(_) if lost < 1 => {
                lost += 1;
                StorageAnswer::Lost
            }
            _ => StorageAnswer::Outcome(outcome),
        });
        let mut d = driver(config(1), 1);
        let step = h.run(&mut d, None);
        let WarmupStep::Done(Ok(summary)) = step else {
            panic!("{step:?}")
        };
        // The batch ends at 500, before a renewal would be due.
        assert_eq!(renewals(&h.events), vec![100, 200, 300, 400]);
        assert_eq!(summary.renewals, 3);
    }

    #[test]
    fn a_slow_answer_proves_the_lease_from_when_it_was_sent() {
        let mut h = Harness::new(1_000);
        // Every answer takes 150 ms: the try sent at 0 proves the lease
        // until 300, not 450, and a renewal sent at 100 (answered at 250)
        // until 400.
        h.answer_ms = 150;
        let mut d = driver(config(1), 1);
        h.run(&mut d, Some(150));
        // The first renewal was due at 100: it goes out with the batch.
        assert_eq!(
            h.events,
            vec![Event::Try(0), Event::Batch(150, 0), Event::Renew(150)]
        );
        h.run(&mut d, Some(299));
        assert!(d.holds(h.now).is_some());
        assert!(
            d.holds(Timestamp(1_300)).is_none(),
            "the try proves 300, no more"
        );
        h.run(&mut d, Some(300));
        // Answered at 300: proven until 150 + 300.
        assert!(d.holds(Timestamp(1_449)).is_some());
        assert!(d.holds(Timestamp(1_450)).is_none());
        let step = h.run(&mut d, None);
        let WarmupStep::Done(Ok(summary)) = step else {
            panic!("{step:?}")
        };
        // One renewal out at a time, the next as soon as the last answers.
        assert_eq!(
            renewals(&h.events),
            vec![150, 300, 450, 600, 750, 900, 1_050]
        );
        // The last answered after the batch: the release waited for it,
        // and it no longer counts.
        assert_eq!(summary.renewals, 6);
        assert_eq!(h.events.last(), Some(&Event::Release(1_200)));
    }

    #[test]
    fn an_answer_later_than_the_lease_loses_the_slot() {
        let mut h = Harness::new(1_000);
        h.answer_ms = 300;
        let mut d = driver(config(1), 1);
        let step = h.run(&mut d, None);
        let WarmupStep::Done(Err(WarmupFailure::SlotLost { cause, batches, .. })) = step else {
            panic!("{step:?}")
        };
        // The try answered when its own proof ran out: no batch started.
        assert_eq!((cause, batches), (SlotLoss::Unproven, 0));
        assert_eq!(h.events, vec![Event::Try(0)]);
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_before_any_wait() {
        let slow = |mut c: WarmupConfig| {
            c.pacing.delay = Millis(60_000);
            c
        };
        let refused = |c: WarmupConfig| WarmupDriver::new(slow(c), 10, Timestamp(0), 0).err();
        let mut c = config(1);
        c.semaphore = Some((name(), 0));
        assert_eq!(
            refused(c),
            Some(InvalidWarmup::ZeroPermits { semaphore: name() })
        );
        let mut c = config(1);
        c.pacing.batch_size = 0;
        assert_eq!(refused(c), Some(InvalidWarmup::ZeroBatchSize));
        let mut c = config(1);
        c.lease_ttl = Some(Millis(2));
        let err = refused(c).unwrap();
        assert_eq!(
            err,
            InvalidWarmup::LeaseTooShort {
                lease_ttl: Millis(2),
                min: Millis(3)
            }
        );
        assert!(err.to_string().contains("at least 3ms"), "{err}");
        let mut c = config(1);
        c.wait.retry_min = Millis(50);
        assert!(matches!(refused(c), Some(InvalidWarmup::Wait(_))));
        assert!(refused(config(1)).is_none());
    }

    #[test]
    fn the_start_waits_out_delay_and_jitter_then_scans() {
        let mut c = config(1);
        c.pacing.delay = Millis(100);
        c.pacing.jitter = Millis(50);
        let mut d = WarmupDriver::new(c, 1, Timestamp(0), 20).unwrap();
        assert_eq!(d.started_at(), Timestamp(120));
        assert_eq!(
            d.poll(Timestamp(0), 0),
            WarmupStep::Wait {
                until: Some(Timestamp(120))
            }
        );
        assert!(matches!(
            d.poll(Timestamp(120), 0),
            WarmupStep::Execute(Command::SlotTry(_))
        ));
    }

    #[test]
    fn a_warmer_that_finds_the_slot_held_waits_and_times_out() {
        let mut h = Harness::new(1_000);
        h.world.apply(
            h.now,
            Command::SlotTry(cmd::SlotTry {
                semaphore: name(),
                permits: 1,
                slot: SlotIndex(0),
                holder: ProcessId(9),
                lease_ttl: None,
            }),
        );
        // Busy, a pause of 10 ms, busy, ... until its deadline of 200 ms.
        let mut c = config(2);
        c.wait.wait_max = Millis(200);
        let mut second = WarmupDriver::new(c, 1, h.now, 0).unwrap();
        let step = h.run(&mut second, None);
        assert!(
            matches!(
                step,
                WarmupStep::Done(Err(WarmupFailure::TimedOut { scans: 21, .. }))
            ),
            "{step:?}"
        );
    }

    #[test]
    fn a_refused_semaphore_ends_the_acquisition() {
        let mut h = Harness::new(10);
        h.world.apply(
            h.now,
            Command::SlotTry(cmd::SlotTry {
                semaphore: name(),
                permits: 3,
                slot: SlotIndex(0),
                holder: ProcessId(9),
                lease_ttl: None,
            }),
        );
        let mut d = driver(config(1), 1);
        let step = h.run(&mut d, None);
        assert!(
            matches!(
                step,
                WarmupStep::Done(Err(WarmupFailure::Rejected(Reject::PermitsMismatch { .. })))
            ),
            "{step:?}"
        );
    }

    #[test]
    fn unusable_storage_stops_the_batch_and_ends() {
        let mut h = Harness::new(1_000);
        h.answer = Box::new(|command, outcome| match command {
            Command::SlotRenew(_) => StorageAnswer::Unusable,
            _ => StorageAnswer::Outcome(outcome),
        });
        let mut d = driver(config(1), 1);
        let step = h.run(&mut d, None);
        assert_eq!(step, WarmupStep::Done(Err(WarmupFailure::StorageUnusable)));
        assert_eq!(h.events.last(), Some(&Event::Stop(100)));
    }

    #[test]
    fn without_a_semaphore_the_batches_run_with_no_command() {
        let mut h = Harness::new(100);
        let mut c = config(1);
        c.semaphore = None;
        let mut d = driver(c, 3);
        let WarmupStep::Done(Ok(summary)) = h.run(&mut d, None) else {
            panic!()
        };
        assert_eq!(summary.slot, None);
        assert_eq!(
            h.events,
            vec![
                Event::Batch(0, 0),
                Event::BatchDone(100),
                Event::Batch(110, 1),
                Event::BatchDone(210),
                Event::Batch(220, 2),
                Event::BatchDone(320),
            ]
        );
    }

    #[test]
    fn a_session_hold_is_never_renewed_and_is_released() {
        let mut h = Harness::new(1_000);
        let mut c = config(1);
        c.lease_ttl = None;
        let mut d = driver(c, 2);
        let WarmupStep::Done(Ok(summary)) = h.run(&mut d, None) else {
            panic!()
        };
        assert_eq!(summary.renewals, 0);
        assert_eq!(renewals(&h.events), Vec::<i64>::new());
        assert_eq!(h.events.last(), Some(&Event::Release(2_010)));
        assert_eq!(h.world.semaphore(&name()).unwrap().holders(h.now), 0);
    }

    #[test]
    fn the_default_configuration_holds_a_lease() {
        let pacing = config(1).pacing;
        let c = WarmupConfig::new(ProcessId(1), pacing, name(), 2, config(1).wait);
        assert_eq!(c.lease_ttl, Some(WarmupConfig::DEFAULT_LEASE_TTL));
        assert_eq!(c.renew_every(), Some(Millis(10_000)));
        assert!(c.validate().is_ok());
    }

    /// The mutation is today's code before the fix: it renews only after a
    /// batch, so a batch longer than the lease runs on a lapsed lease while
    /// the driver still believes it holds the slot.
    #[cfg(feature = "mutants")]
    #[test]
    fn the_mutant_renews_only_between_batches_and_keeps_believing() {
        let mut h = Harness::new(1_000);
        let mut d = driver(config(1), 2).with_mutation(crate::Mutation::WarmupRenewsBetweenBatches);
        h.run(&mut d, Some(500));
        assert!(d.holds(h.now).is_some(), "the mutant still believes");
        assert_eq!(h.world.semaphore(&name()).unwrap().holders(h.now), 0);
        let step = h.run(&mut d, None);
        assert!(matches!(step, WarmupStep::Done(Ok(_))), "{step:?}");
        // After the first batch only: the last ends in the release.
        assert_eq!(renewals(&h.events), vec![1_000]);
    }
}
