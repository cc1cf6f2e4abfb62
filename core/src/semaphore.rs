//! N-slot semaphores, and the sans-IO acquisition loop with wait-on-miss.
//!
//! [`Semaphore`] is the shared state (one row, or one advisory lock, per
//! slot). [`Acquisition`] is one caller's attempt to get a slot: it scans the
//! slots in order, skips a slot whose try failed with an error (a transient
//! failure on one slot must not make the whole acquisition fail), and on a
//! miss sleeps a jittered pause in `[retry_min, retry_max]` that never runs
//! past its deadline. Every pause ends with a scan, the last one at the
//! deadline; when that misses too, the answer is a typed timeout.
//!
//! A holder dies in one of two ways, and both free its slot: its session
//! ends ([`Semaphore::release_holder`], like an advisory lock whose
//! connection closed), or its lease runs out (a [`Hold::Lease`] whose
//! `expires_at` passed counts as free, like a lease-table row).

use serde::{Deserialize, Serialize};

use crate::ids::{ProcessId, SlotEpoch, SlotIndex};
use crate::reject::Reject;
use crate::time::{Millis, Timestamp};

/// How a slot is held, which decides how a dead holder's slot is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Hold {
    /// Until released or the holder's session ends.
    Session,
    /// Until released, or `expires_at` passes without a renewal.
    Lease {
        /// When the hold lapses.
        expires_at: Timestamp,
    },
}

/// The holder of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotHolder {
    /// Who.
    pub holder: ProcessId,
    /// How.
    pub hold: Hold,
}

/// One slot: its fencing counter and its holder, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// Bumped on every acquisition.
    pub epoch: SlotEpoch,
    /// Who holds it (possibly with a lapsed lease; see [`Slot::holder_at`]).
    pub held: Option<SlotHolder>,
}

impl Slot {
    /// The live holder at `now`: a lapsed lease holds nothing.
    pub fn holder_at(&self, now: Timestamp) -> Option<ProcessId> {
        match self.held {
            Some(SlotHolder {
                holder,
                hold: Hold::Session,
            }) => Some(holder),
            Some(SlotHolder {
                holder,
                hold: Hold::Lease { expires_at },
            }) if expires_at > now => Some(holder),
            _ => None,
        }
    }
}

/// Proof of holding a slot; releasing needs it, so a release from an
/// earlier holding cannot free someone else's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotGrant {
    /// The slot.
    pub slot: SlotIndex,
    /// Its epoch at acquisition.
    pub epoch: SlotEpoch,
    /// The holder.
    pub holder: ProcessId,
}

/// A named semaphore of N slots.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Semaphore {
    permits: u16,
    slots: Vec<Slot>,
}

impl Semaphore {
    /// A semaphore of `permits` free slots.
    pub fn new(permits: u16) -> Result<Semaphore, Reject> {
        if permits == 0 {
            return Err(Reject::ZeroPermits);
        }
        Ok(Semaphore {
            permits,
            slots: vec![Slot::default(); usize::from(permits)],
        })
    }

    /// A semaphore with these slots (a backend rebuilding the core's view
    /// from storage). Missing slots are free; slots past `permits` are
    /// refused.
    pub fn from_slots(
        permits: u16,
        slots: impl IntoIterator<Item = (SlotIndex, Slot)>,
    ) -> Result<Semaphore, Reject> {
        let mut semaphore = Semaphore::new(permits)?;
        for (index, slot) in slots {
            *semaphore.slot_mut(index)? = slot;
        }
        Ok(semaphore)
    }

    /// N.
    pub fn permits(&self) -> u16 {
        self.permits
    }

    /// The slots, in order.
    pub fn slots(&self) -> impl Iterator<Item = (SlotIndex, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (SlotIndex(i as u16), slot))
    }

    /// How many slots have a live holder at `now`.
    pub fn holders(&self, now: Timestamp) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.holder_at(now).is_some())
            .count()
    }

    fn slot_mut(&mut self, slot: SlotIndex) -> Result<&mut Slot, Reject> {
        let permits = self.permits;
        if slot.0 >= permits {
            return Err(Reject::SlotOutOfRange { slot, permits });
        }
        Ok(&mut self.slots[usize::from(slot.0)])
    }

    /// Tries one slot: takes it when it has no live holder.
    pub fn try_slot(
        &mut self,
        slot: SlotIndex,
        holder: ProcessId,
        hold: Hold,
        now: Timestamp,
    ) -> Result<SlotGrant, Reject> {
        if let Some(current) = self.slot_mut(slot)?.holder_at(now) {
            return Err(Reject::SlotBusy {
                slot,
                holder: current,
            });
        }
        self.force_slot(slot, holder, hold)
    }

    /// Takes a slot without looking at its holder: the second half of
    /// [`Semaphore::try_slot`], and on its own the `AcquireIgnoresHolder`
    /// mutation.
    pub(crate) fn force_slot(
        &mut self,
        slot: SlotIndex,
        holder: ProcessId,
        hold: Hold,
    ) -> Result<SlotGrant, Reject> {
        let entry = self.slot_mut(slot)?;
        entry.epoch = entry.epoch.next();
        entry.held = Some(SlotHolder { holder, hold });
        Ok(SlotGrant {
            slot,
            epoch: entry.epoch,
            holder,
        })
    }

    /// Extends a lease hold to `expires_at`.
    pub fn renew(
        &mut self,
        grant: &SlotGrant,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), Reject> {
        let entry = self.slot_mut(grant.slot)?;
        let live = entry.epoch == grant.epoch && entry.holder_at(now) == Some(grant.holder);
        match &mut entry.held {
            Some(SlotHolder {
                hold: Hold::Lease { expires_at: at },
                ..
            }) if live => {
                *at = (*at).max(expires_at);
                Ok(())
            }
            Some(SlotHolder {
                hold: Hold::Session,
                ..
            }) if live => Ok(()),
            _ => Err(Reject::SlotNotHeld { slot: grant.slot }),
        }
    }

    /// Frees the slot if `grant` still holds it. Idempotent: returns whether
    /// this call freed it.
    pub fn release(&mut self, grant: &SlotGrant) -> bool {
        self.release_checking(grant, true)
    }

    /// [`Semaphore::release`], which checks the grant's epoch; with
    /// `check_epoch` false it checks only the holder: the
    /// `SlotReleaseIgnoresEpoch` mutation, under which a holder's grant
    /// from an earlier holding frees the slot it holds again now.
    pub(crate) fn release_checking(&mut self, grant: &SlotGrant, check_epoch: bool) -> bool {
        let Ok(entry) = self.slot_mut(grant.slot) else {
            return false;
        };
        let mine = (entry.epoch == grant.epoch || !check_epoch)
            && entry.held.map(|h| h.holder) == Some(grant.holder);
        if mine {
            entry.held = None;
        }
        mine
    }

    /// The holder's session ended: every slot it held is free. Returns the
    /// slots freed.
    pub fn release_holder(&mut self, holder: ProcessId) -> Vec<SlotIndex> {
        let mut freed = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.held.map(|h| h.holder) == Some(holder) {
                slot.held = None;
                freed.push(SlotIndex(i as u16));
            }
        }
        freed
    }

    /// Clears lease holds that lapsed by `now` (they already count as free;
    /// this only tidies the rows). Returns the slots cleared.
    pub fn expire(&mut self, now: Timestamp) -> Vec<SlotIndex> {
        let mut cleared = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.held.is_some() && slot.holder_at(now).is_none() {
                slot.held = None;
                cleared.push(SlotIndex(i as u16));
            }
        }
        cleared
    }

    #[cfg(test)]
    pub(crate) fn slots_mut(&mut self) -> &mut Vec<Slot> {
        &mut self.slots
    }
}

/// How a caller waits for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WaitConfig {
    /// Shortest pause after a full miss.
    pub retry_min: Millis,
    /// Longest pause after a full miss.
    pub retry_max: Millis,
    /// Give up this long after starting.
    pub wait_max: Millis,
}

impl WaitConfig {
    /// Checks `retry_min <= retry_max`.
    pub fn validate(&self) -> Result<(), InvalidWaitConfig> {
        if self.retry_min > self.retry_max {
            return Err(InvalidWaitConfig::RetryMinAboveMax {
                retry_min: self.retry_min,
                retry_max: self.retry_max,
            });
        }
        Ok(())
    }
}

/// A wait configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidWaitConfig {
    /// The pause range is empty.
    #[error("retry_min {retry_min} is above retry_max {retry_max}")]
    RetryMinAboveMax {
        /// Shortest pause.
        retry_min: Millis,
        /// Longest pause.
        retry_max: Millis,
    },
}

/// What one slot try returned, as the caller reports it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TryResult {
    /// The slot is ours.
    Acquired(SlotGrant),
    /// Someone holds it.
    Busy,
    /// The try itself failed (a connection error, a timeout): skip the slot.
    Error,
}

/// What the caller should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AcquireStep {
    /// Try this slot and report with [`Acquisition::handle_try`].
    Try(SlotIndex),
    /// Nothing free: poll again at this time (never past the deadline).
    SleepUntil(Timestamp),
    /// Done: the slot is held.
    Acquired(SlotGrant),
    /// Done: the deadline passed with no slot; nothing is held.
    TimedOut {
        /// Full scans made.
        scans: u32,
        /// Slot tries that failed with an error.
        errors: u32,
    },
    /// Done: the semaphore is disabled by configuration, so no limit
    /// applies. Distinct from an acquisition, so it is never silent.
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Phase {
    Scanning { next: u16 },
    AwaitingTry { slot: u16 },
    Sleeping { until: Timestamp },
    Done(AcquireStep),
}

/// One caller's acquisition of a slot: a sans-IO loop driven by [`poll`]
/// and [`handle_try`].
///
/// [`poll`]: Acquisition::poll
/// [`handle_try`]: Acquisition::handle_try
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Acquisition {
    permits: u16,
    deadline: Timestamp,
    config: WaitConfig,
    phase: Phase,
    scans: u32,
    errors: u32,
    #[cfg(feature = "mutants")]
    mutation: Option<crate::mutation::Mutation>,
}

impl Acquisition {
    /// Starts at `now`. `permits` of `None` means the semaphore is disabled.
    pub fn new(permits: Option<u16>, now: Timestamp, config: WaitConfig) -> Acquisition {
        let phase = match permits {
            None | Some(0) => Phase::Done(AcquireStep::Disabled),
            Some(_) => Phase::Scanning { next: 0 },
        };
        Acquisition {
            permits: permits.unwrap_or(0),
            deadline: now.plus(config.wait_max),
            config,
            phase,
            scans: 0,
            errors: 0,
            #[cfg(feature = "mutants")]
            mutation: None,
        }
    }

    /// The same acquisition, but making one deliberate mistake (tests only).
    #[cfg(feature = "mutants")]
    pub fn with_mutation(mut self, mutation: crate::mutation::Mutation) -> Acquisition {
        self.mutation = Some(mutation);
        self
    }

    fn stops_at_error(&self) -> bool {
        #[cfg(feature = "mutants")]
        return self.mutation == Some(crate::mutation::Mutation::ScanStopsAtError);
        #[cfg(not(feature = "mutants"))]
        false
    }

    /// When the acquisition gives up.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// The next step at `now`. `draw` is a uniform random number used only
    /// when a pause is chosen.
    pub fn poll(&mut self, now: Timestamp, draw: u64) -> AcquireStep {
        match self.phase {
            Phase::Done(step) => step,
            Phase::AwaitingTry { slot } => AcquireStep::Try(SlotIndex(slot)),
            Phase::Sleeping { until } if now < until => AcquireStep::SleepUntil(until),
            // Waking up (also at the deadline): scan once more, so a slot
            // freed during the last pause is not missed.
            Phase::Sleeping { .. } => {
                self.phase = Phase::AwaitingTry { slot: 0 };
                AcquireStep::Try(SlotIndex(0))
            }
            Phase::Scanning { next } if next < self.permits => {
                self.phase = Phase::AwaitingTry { slot: next };
                AcquireStep::Try(SlotIndex(next))
            }
            // A full scan missed: give up at the deadline, else pause.
            Phase::Scanning { .. } => {
                self.scans += 1;
                if now >= self.deadline {
                    return self.finish(AcquireStep::TimedOut {
                        scans: self.scans,
                        errors: self.errors,
                    });
                }
                let until = now.plus(self.pause(draw)).min(self.deadline);
                self.phase = Phase::Sleeping { until };
                AcquireStep::SleepUntil(until)
            }
        }
    }

    /// Reports the result of the last [`AcquireStep::Try`].
    pub fn handle_try(&mut self, slot: SlotIndex, result: TryResult) {
        assert_eq!(
            self.phase,
            Phase::AwaitingTry { slot: slot.0 },
            "handle_try without a matching Try"
        );
        self.phase = match result {
            TryResult::Acquired(grant) => Phase::Done(AcquireStep::Acquired(grant)),
            TryResult::Busy => Phase::Scanning { next: slot.0 + 1 },
            TryResult::Error => {
                self.errors += 1;
                let next = if self.stops_at_error() {
                    self.permits
                } else {
                    slot.0 + 1
                };
                Phase::Scanning { next }
            }
        };
    }

    fn finish(&mut self, step: AcquireStep) -> AcquireStep {
        self.phase = Phase::Done(step);
        step
    }

    fn pause(&self, draw: u64) -> Millis {
        let span = self
            .config
            .retry_max
            .0
            .saturating_sub(self.config.retry_min.0);
        let jitter = if span == u64::MAX {
            draw
        } else {
            draw % (span + 1)
        };
        Millis(self.config.retry_min.0.saturating_add(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: ProcessId = ProcessId(1);
    const P2: ProcessId = ProcessId(2);
    const P3: ProcessId = ProcessId(3);

    #[test]
    fn a_two_slot_semaphore_lets_two_in_and_the_third_waits() {
        let mut sem = Semaphore::new(2).unwrap();
        let now = Timestamp(0);
        let g1 = sem.try_slot(SlotIndex(0), P1, Hold::Session, now).unwrap();
        assert_eq!(
            sem.try_slot(SlotIndex(0), P2, Hold::Session, now),
            Err(Reject::SlotBusy {
                slot: SlotIndex(0),
                holder: P1
            })
        );
        sem.try_slot(SlotIndex(1), P2, Hold::Session, now).unwrap();
        assert!(sem.try_slot(SlotIndex(1), P3, Hold::Session, now).is_err());
        assert_eq!(sem.holders(now), 2);
        assert!(sem.release(&g1));
        assert!(!sem.release(&g1), "release is idempotent");
        assert!(sem.try_slot(SlotIndex(0), P3, Hold::Session, now).is_ok());
        assert_eq!(
            sem.try_slot(SlotIndex(2), P3, Hold::Session, now),
            Err(Reject::SlotOutOfRange {
                slot: SlotIndex(2),
                permits: 2
            })
        );
    }

    #[test]
    fn a_crashed_holder_frees_its_slot_by_session_end_or_lease_expiry() {
        let mut sem = Semaphore::new(2).unwrap();
        sem.try_slot(SlotIndex(0), P1, Hold::Session, Timestamp(0))
            .unwrap();
        sem.try_slot(
            SlotIndex(1),
            P2,
            Hold::Lease {
                expires_at: Timestamp(100),
            },
            Timestamp(0),
        )
        .unwrap();
        assert_eq!(sem.release_holder(P1), vec![SlotIndex(0)]);
        assert_eq!(sem.holders(Timestamp(99)), 1);
        assert_eq!(sem.holders(Timestamp(100)), 0);
        let g = sem
            .try_slot(SlotIndex(1), P3, Hold::Session, Timestamp(100))
            .unwrap();
        assert_eq!(g.epoch, SlotEpoch(2));
    }

    #[test]
    fn a_stale_release_does_not_free_the_next_holders_slot() {
        let mut sem = Semaphore::new(1).unwrap();
        let old = sem
            .try_slot(
                SlotIndex(0),
                P1,
                Hold::Lease {
                    expires_at: Timestamp(10),
                },
                Timestamp(0),
            )
            .unwrap();
        sem.try_slot(SlotIndex(0), P2, Hold::Session, Timestamp(10))
            .unwrap();
        assert!(!sem.release(&old));
        assert_eq!(sem.holders(Timestamp(11)), 1);
    }

    fn wait() -> WaitConfig {
        WaitConfig {
            retry_min: Millis(10),
            retry_max: Millis(20),
            wait_max: Millis(50),
        }
    }

    #[test]
    fn the_scan_continues_past_a_slot_whose_try_errors() {
        let mut acq = Acquisition::new(Some(3), Timestamp(0), wait());
        assert_eq!(acq.poll(Timestamp(0), 0), AcquireStep::Try(SlotIndex(0)));
        acq.handle_try(SlotIndex(0), TryResult::Error);
        assert_eq!(acq.poll(Timestamp(0), 0), AcquireStep::Try(SlotIndex(1)));
        acq.handle_try(SlotIndex(1), TryResult::Busy);
        assert_eq!(acq.poll(Timestamp(0), 0), AcquireStep::Try(SlotIndex(2)));
        let grant = SlotGrant {
            slot: SlotIndex(2),
            epoch: SlotEpoch(1),
            holder: P1,
        };
        acq.handle_try(SlotIndex(2), TryResult::Acquired(grant));
        assert_eq!(acq.poll(Timestamp(1), 0), AcquireStep::Acquired(grant));
    }

    #[test]
    fn a_miss_sleeps_jittered_and_never_past_the_deadline_then_times_out() {
        let mut acq = Acquisition::new(Some(1), Timestamp(0), wait());
        let mut now = Timestamp(0);
        let mut sleeps = Vec::new();
        loop {
            match acq.poll(now, 7) {
                AcquireStep::Try(slot) => acq.handle_try(slot, TryResult::Busy),
                AcquireStep::SleepUntil(until) => {
                    assert!(until <= acq.deadline());
                    sleeps.push(until.0 - now.0);
                    now = until;
                }
                AcquireStep::TimedOut { scans, errors } => {
                    assert_eq!(now, Timestamp(50));
                    assert_eq!(errors, 0);
                    // One more scan at the deadline than pauses taken.
                    assert_eq!(scans as usize, sleeps.len() + 1);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // 17, 17, 16 (clamped to the deadline).
        assert_eq!(sleeps, vec![17, 17, 16]);
    }

    #[test]
    fn a_slot_freed_during_the_last_pause_is_taken_at_the_deadline() {
        let mut acq = Acquisition::new(Some(1), Timestamp(0), wait());
        let mut now = Timestamp(0);
        loop {
            match acq.poll(now, 7) {
                AcquireStep::Try(slot) if now < Timestamp(50) => {
                    acq.handle_try(slot, TryResult::Busy)
                }
                AcquireStep::Try(slot) => {
                    let grant = SlotGrant {
                        slot,
                        epoch: SlotEpoch(2),
                        holder: P1,
                    };
                    acq.handle_try(slot, TryResult::Acquired(grant));
                }
                AcquireStep::SleepUntil(until) => now = until,
                AcquireStep::Acquired(grant) => {
                    assert_eq!((now, grant.slot), (Timestamp(50), SlotIndex(0)));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_semaphore_rebuilt_from_rows_keeps_its_holders_and_bounds() {
        let held = Slot {
            epoch: SlotEpoch(4),
            held: Some(SlotHolder {
                holder: P2,
                hold: Hold::Session,
            }),
        };
        let sem = Semaphore::from_slots(3, [(SlotIndex(1), held)]).unwrap();
        assert_eq!(sem.holders(Timestamp(0)), 1);
        assert_eq!(sem.slots().nth(1).unwrap().1, &held);
        assert_eq!(
            Semaphore::from_slots(2, [(SlotIndex(2), held)]),
            Err(Reject::SlotOutOfRange {
                slot: SlotIndex(2),
                permits: 2
            })
        );
    }

    #[test]
    fn disabled_is_its_own_outcome() {
        let mut acq = Acquisition::new(None, Timestamp(0), wait());
        assert_eq!(acq.poll(Timestamp(0), 0), AcquireStep::Disabled);
    }

    #[test]
    fn zero_permits_and_bad_wait_configs_are_refused() {
        assert_eq!(Semaphore::new(0), Err(Reject::ZeroPermits));
        let bad = WaitConfig {
            retry_min: Millis(5),
            retry_max: Millis(1),
            wait_max: Millis(1),
        };
        assert!(bad.validate().is_err());
        assert!(wait().validate().is_ok());
    }
}
