//! The invariants of `../shared/DESIGN.md`, as checks over a world and over
//! one step of it.
//!
//! [`World::check_invariants`] looks at one state; [`World::check_step`]
//! looks at a state, the command applied to it, the outcome and the next
//! state (for what can only be seen across a step: epochs growing, stale
//! writes changing nothing, one leader per term). Debug builds run the first
//! after every [`World::apply`]; the property tests, the simulator and the
//! model checker run both. Each violation is named after the invariant it
//! breaks, with the same name in TLA+ and stateright (`correctness/MAPPING.md`).
//!
//! Some invariants hold partly by construction: a slot has one
//! `Option<SlotHolder>` and a job has one [`JobState`]. What can still go
//! wrong is checked: a slot granted while it had a live holder
//! ([`Violation::NoSlotWithTwoHolders`], per step), and the indexes
//! disagreeing with the jobs ([`Violation::NoJobLost`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::cmd;
use crate::ids::{
    Attempt, ClaimerSlot, Epoch, JobId, LeaderTerm, LeaseEpoch, ProcessId, QueueName, Receipt,
    SemaphoreName, SlotEpoch, SlotIndex,
};
use crate::job::{ErrorRecord, JobState};
use crate::leader::LeaderGrant;
use crate::protocol::{Command, Outcome};
use crate::reject::{Reject, StateName};
use crate::semaphore::Slot;
use crate::world::World;

/// A broken invariant: always a bug.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Violation {
    /// A job used more attempts than it is allowed.
    AttemptsBounded {
        /// The job.
        job: JobId,
        /// Attempts used.
        attempt: Attempt,
        /// Attempts allowed.
        max: Attempt,
    },
    /// A job waiting to run has no attempt left to run with.
    QueuedJobHasAttemptLeft {
        /// The job.
        job: JobId,
        /// Its state.
        state: StateName,
    },
    /// A running or waiting job whose epoch or attempt could not come from
    /// a claim: epoch or attempt 0, or fewer epochs than attempts (every
    /// claim opens an epoch of its own, so two attempts sharing one, which
    /// would be two live receipts for one job, leave the epoch behind).
    AtMostOneLiveAttempt {
        /// The job.
        job: JobId,
    },
    /// A job keeps more than [`ErrorRecord::KEPT`] errors, or an error
    /// message storage could not hold as it is (a NUL, or longer than
    /// [`ErrorRecord::MESSAGE_MAX_BYTES`]).
    ErrorHistoryBounded {
        /// The job.
        job: JobId,
        /// The errors it keeps.
        kept: usize,
    },
    /// A job is missing from, or misfiled in, the indexes, or the counts of
    /// inserted and pruned jobs do not add up.
    NoJobLost {
        /// The job, when one is to blame.
        job: Option<JobId>,
        /// What disagrees.
        what: &'static str,
    },
    /// More claimer slots, or active claimers, than K on a queue.
    AtMostKActiveClaimers {
        /// The queue.
        queue: QueueName,
        /// Slots counted.
        count: usize,
        /// K.
        k: u16,
    },
    /// A semaphore with more slots, or holders, than N.
    AtMostNHolders {
        /// The semaphore.
        semaphore: SemaphoreName,
        /// Slots or holders counted.
        count: usize,
        /// N.
        permits: u16,
    },
    /// A leader with no term.
    LeaderHasTerm,
    /// A job's epoch went down.
    EpochsOnlyGrow {
        /// The job.
        job: JobId,
        /// Before the step.
        before: Epoch,
        /// After the step.
        after: Epoch,
    },
    /// A claimer slot's lease epoch went down.
    LeaseEpochsOnlyGrow {
        /// The queue.
        queue: QueueName,
        /// The slot.
        slot: ClaimerSlot,
        /// Before the step.
        before: LeaseEpoch,
        /// After the step.
        after: LeaseEpoch,
    },
    /// A semaphore slot's epoch went down.
    SlotEpochsOnlyGrow {
        /// The semaphore.
        semaphore: SemaphoreName,
        /// The slot.
        slot: SlotIndex,
        /// Before the step.
        before: SlotEpoch,
        /// After the step.
        after: SlotEpoch,
    },
    /// The leader term went down.
    LeaderTermsOnlyGrow {
        /// Before the step.
        before: LeaderTerm,
        /// After the step.
        after: LeaderTerm,
    },
    /// Two different leaders held the same term.
    AtMostOneLeaderPerTerm {
        /// The term.
        term: LeaderTerm,
        /// Its first holder.
        first: ProcessId,
        /// Its second holder.
        second: ProcessId,
    },
    /// A write carrying an old epoch changed a job.
    StaleWriteNeverChangesJob {
        /// The job.
        job: JobId,
        /// The epoch the write carried.
        presented: Epoch,
    },
    /// A finished job changed without an admin retry opening a new epoch.
    AtMostOneTerminalPerEpoch {
        /// The job.
        job: JobId,
        /// The epoch it finished in.
        epoch: Epoch,
    },
    /// A claim handed out a receipt whose epoch is not newer than every
    /// epoch the job had before: two attempts could share a receipt.
    ReceiptIssuedOnce {
        /// The job.
        job: JobId,
        /// The epoch handed out.
        epoch: Epoch,
    },
    /// A running or waiting attempt was taken away from its holder (rescue,
    /// cancel, callback timeout) without bumping the epoch, so the holder's
    /// receipt would not be recognisably stale.
    TakeawayBumpsEpoch {
        /// The job.
        job: JobId,
        /// The epoch that should have been left behind.
        epoch: Epoch,
    },
    /// A slot was granted while it had a live holder: two processes would
    /// both believe they hold it.
    NoSlotWithTwoHolders {
        /// The semaphore.
        semaphore: SemaphoreName,
        /// The slot.
        slot: SlotIndex,
    },
    /// A slot's live hold ended in a step that was not its own release
    /// (the holder's grant, with the slot's current epoch) nor the end of
    /// its holder's session: the holder still believes it holds the slot.
    SlotFreedOnlyByItsHolder {
        /// The semaphore.
        semaphore: SemaphoreName,
        /// The slot.
        slot: SlotIndex,
        /// The hold's epoch.
        epoch: SlotEpoch,
    },
    /// A slot renewal was accepted for a grant that is not the slot's live
    /// hold (another epoch, another holder, or a lapsed lease).
    SlotRenewedOnlyByItsHolder {
        /// The semaphore.
        semaphore: SemaphoreName,
        /// The slot.
        slot: SlotIndex,
        /// The epoch the grant carried.
        presented: SlotEpoch,
    },
    /// A claimer lease was granted that the slot could not give: a reuse
    /// of a lease that was not the caller's unexpired one, a take-over of
    /// a lease that was neither released, expired nor idle, or an opening
    /// of a slot that existed.
    ClaimerGrantedOnlyWhenFree {
        /// The queue.
        queue: QueueName,
        /// The slot.
        slot: ClaimerSlot,
    },
    /// A claimer lease lost its owner in a step that was not that owner's
    /// release with the lease's current epoch.
    ClaimerReleasedOnlyByItsOwner {
        /// The queue.
        queue: QueueName,
        /// The slot.
        slot: ClaimerSlot,
    },
    /// A holder's write (heartbeat, complete, fail, snooze, wait, its own
    /// cancel; a callback's resume) was accepted for a job that was not in
    /// the state the write is for: `Job::check_receipt`'s state half,
    /// shared by both backends, stated here on its own.
    ReceiptWriteOnlyInItsState {
        /// The job.
        job: JobId,
        /// Its state before the step.
        state: StateName,
    },
    /// A rescue took a running job whose heartbeat was fresh and whose
    /// deadline had not passed. `Job::is_overdue` is shared by both
    /// backends' rescues; this states the rule apart from it.
    RescuedOnlyWhenOverdue {
        /// The job.
        job: JobId,
    },
    /// A maintenance write was accepted from a process that is not the live
    /// leader of the current term.
    DeposedLeaderWriteRejected {
        /// The term the write carried.
        presented: LeaderTerm,
        /// The current term.
        current: LeaderTerm,
    },
    /// A job disappeared in a step that did not prune it.
    JobVanished {
        /// The job.
        job: JobId,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Violation {}

impl World {
    /// Checks every invariant that one state can show.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        self.check_jobs()?;
        self.check_indexes()?;
        self.check_claimers()?;
        self.check_semaphores()?;
        if self.leader.holder.is_some() && self.leader.term == LeaderTerm(0) {
            return Err(Violation::LeaderHasTerm);
        }
        Ok(())
    }

    fn check_jobs(&self) -> Result<(), Violation> {
        for job in self.jobs.values() {
            if job.attempt > job.max_attempts {
                return Err(Violation::AttemptsBounded {
                    job: job.id,
                    attempt: job.attempt,
                    max: job.max_attempts,
                });
            }
            let state = job.state_name();
            let queued = matches!(
                state,
                StateName::Available | StateName::Scheduled | StateName::Retryable
            );
            if queued && job.attempt >= job.max_attempts {
                return Err(Violation::QueuedJobHasAttemptLeft { job: job.id, state });
            }
            // Each claim bumps both the epoch and the attempt; everything
            // else only bumps the epoch (rescue, cancel, expiry, admin
            // retry) or takes an attempt back (snooze, resume, admin retry).
            // So epoch >= attempt, and a live attempt has both above 0.
            let live = matches!(state, StateName::Running | StateName::WaitingExternal);
            let shared_epoch = job.epoch.0 < u64::from(job.attempt.0);
            if live && (job.epoch == Epoch(0) || job.attempt == Attempt(0) || shared_epoch) {
                return Err(Violation::AtMostOneLiveAttempt { job: job.id });
            }
            // What `ErrorRecord::clean` leaves unchanged, without allocating.
            let unclean = |e: &ErrorRecord| {
                e.message.len() > ErrorRecord::MESSAGE_MAX_BYTES || e.message.contains('\0')
            };
            if job.errors.len() > ErrorRecord::KEPT || job.errors.iter().any(unclean) {
                return Err(Violation::ErrorHistoryBounded {
                    job: job.id,
                    kept: job.errors.len(),
                });
            }
        }
        Ok(())
    }

    fn check_indexes(&self) -> Result<(), Violation> {
        let lost = |job, what| Err(Violation::NoJobLost { job, what });
        if self.jobs.len() as u64 + self.pruned_total != self.enqueued_total {
            return lost(None, "jobs + pruned != enqueued");
        }
        let indexed = self.available.values().map(BTreeSet::len).sum::<usize>()
            + self.due.len()
            + self.running.len()
            + self.waiting.len()
            + self.finished.len();
        if indexed != self.jobs.len() {
            return lost(None, "index sizes do not add up to the job count");
        }
        for job in self.jobs.values() {
            let id = job.id;
            let filed = match job.state {
                JobState::Available { run_at } => self
                    .available
                    .get(&job.queue)
                    .is_some_and(|q| q.contains(&(job.priority, run_at, id))),
                JobState::Scheduled { run_at } | JobState::Retryable { run_at } => {
                    self.due.contains(&(run_at, id))
                }
                JobState::Running { .. } => self.running.contains(&id),
                JobState::WaitingExternal { deadline, .. } => {
                    self.waiting.contains(&(deadline, id))
                }
                JobState::Completed { at }
                | JobState::Failed { at, .. }
                | JobState::Cancelled { at } => self.finished.contains(&(at, id)),
            };
            if !filed {
                return lost(Some(id), "job is not in the index of its state");
            }
            if let Some(key) = &job.unique_key {
                if self.unique.get(&(job.kind.clone(), key.clone())) != Some(&id) {
                    return lost(Some(id), "unique key does not point at its job");
                }
            }
        }
        for &id in self.unique.values() {
            if !self.jobs.contains_key(&id) {
                return lost(Some(id), "unique key points at a missing job");
            }
        }
        Ok(())
    }

    fn check_claimers(&self) -> Result<(), Violation> {
        let k = self.config.claimer.slots_per_queue;
        for (queue, table) in &self.claimers {
            let slots = table.slots().count();
            let out_of_range = table.slots().any(|(slot, _)| slot.0 >= k);
            let active = table.active(self.now);
            if slots > usize::from(k) || out_of_range || active > usize::from(k) {
                return Err(Violation::AtMostKActiveClaimers {
                    queue: queue.clone(),
                    count: slots.max(active),
                    k,
                });
            }
        }
        Ok(())
    }

    fn check_semaphores(&self) -> Result<(), Violation> {
        for (name, semaphore) in &self.semaphores {
            let permits = semaphore.permits();
            let slots = semaphore.slots().count();
            let holders = semaphore.holders(self.now);
            if slots != usize::from(permits) || holders > usize::from(permits) {
                return Err(Violation::AtMostNHolders {
                    semaphore: name.clone(),
                    count: slots.max(holders),
                    permits,
                });
            }
        }
        Ok(())
    }

    /// Checks what one step may not do: `before` became `after` by applying
    /// `command`, which answered `outcome`.
    pub fn check_step(
        before: &World,
        command: &Command,
        outcome: &Outcome,
        after: &World,
    ) -> Result<(), Violation> {
        let footprint = footprint(command);
        check_jobs_step(before, &footprint, outcome, after)?;
        check_fencing_step(before, &footprint, outcome, after)?;
        check_slot_step(before, &footprint, outcome, after)?;
        check_leader_step(before, &footprint, outcome, after)?;
        check_stale_writes(before, command, &footprint, outcome, after)?;
        check_counters_step(before, after)?;
        check_slot_holds_step(before, command, outcome, after)?;
        check_claimer_step(before, command, outcome, after)?;
        check_receipt_states_step(before, command, &footprint, outcome)?;
        check_rescue_step(before, command, outcome, after)
    }
}

/// What a command may do, as far as the step checks must know: which of
/// them apply to it.
struct Footprint<'c> {
    /// The receipts it writes with: a stale one must change nothing.
    receipts: Vec<Receipt>,
    /// It takes attempts away from their holders, so it must bump the
    /// epoch of every live job it ends.
    takes_away: bool,
    /// A leader-only write under this lease: accepted only from the leader.
    leader: Option<&'c LeaderGrant>,
    /// It may delete finished jobs; any other disappearance is a lost job.
    deletes_finished: bool,
    /// It may grant a slot of this semaphore, which must have been free.
    grants_slot_of: Option<&'c SemaphoreName>,
}

/// Classifies every command, with no wildcard: a new command does not
/// compile until it is said here which step checks apply to it.
fn footprint(command: &Command) -> Footprint<'_> {
    let mut footprint = Footprint {
        receipts: Vec::new(),
        takes_away: false,
        leader: None,
        deletes_finished: false,
        grants_slot_of: None,
    };
    match command {
        Command::Heartbeat(cmd::Heartbeat { receipts })
        | Command::Complete(cmd::Complete { receipts })
        | Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
            footprint.receipts = receipts.clone()
        }
        Command::Fail(cmd::Fail { failures }) => {
            footprint.receipts = failures.iter().map(|f| f.receipt).collect()
        }
        Command::Snooze(cmd::Snooze { snoozes: items })
        | Command::WaitExternal(cmd::WaitExternal { waits: items }) => {
            footprint.receipts = items.iter().map(|(r, _)| *r).collect()
        }
        Command::ResumeExternal(cmd::ResumeExternal { receipt }) => {
            footprint.receipts = vec![*receipt]
        }
        // An operator's cancel takes the attempt from whoever runs it.
        Command::Cancel(cmd::Cancel { .. }) => footprint.takes_away = true,
        Command::Rescue(cmd::Rescue { leader, .. }) => {
            footprint.takes_away = true;
            footprint.leader = Some(leader);
        }
        Command::Promote(cmd::Promote { leader, .. }) => footprint.leader = Some(leader),
        Command::Prune(cmd::Prune { leader, .. }) => {
            footprint.leader = Some(leader);
            footprint.deletes_finished = true;
        }
        Command::SlotTry(cmd::SlotTry { semaphore, .. }) => {
            footprint.grants_slot_of = Some(semaphore)
        }
        // Writes guarded by their own tokens (a claimer grant, a slot
        // grant, a leader grant) or by nothing at all; the state and
        // counter checks cover them.
        Command::Enqueue(cmd::Enqueue { .. })
        | Command::Claim(cmd::Claim { .. })
        | Command::Retry(cmd::Retry { .. })
        | Command::PauseQueue(cmd::PauseQueue { .. })
        | Command::ResumeQueue(cmd::ResumeQueue { .. })
        | Command::ClaimerAcquire(cmd::ClaimerAcquire { .. })
        | Command::ClaimerRelease(cmd::ClaimerRelease { .. })
        | Command::SlotRenew(cmd::SlotRenew { .. })
        | Command::SlotRelease(cmd::SlotRelease { .. })
        | Command::ProcessCrashed(cmd::ProcessCrashed { .. })
        | Command::LeaderElect(cmd::LeaderElect { .. })
        | Command::LeaderResign(cmd::LeaderResign { .. }) => {}
    }
    footprint
}

/// The refusal of a whole command, if it was refused (per-item rejections
/// of a batch are not one).
fn refusal(outcome: &Outcome) -> Option<&Reject> {
    match outcome {
        Outcome::Enqueued(r) => r.as_ref().err(),
        Outcome::Claimed(r) => r.as_ref().err(),
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => r.as_ref().err(),
        Outcome::Failed(r) => r.as_ref().err(),
        Outcome::Resumed(r) | Outcome::Retried(r) | Outcome::SlotRenewed(r) => r.as_ref().err(),
        Outcome::Cancelled(r) => r.as_ref().err(),
        Outcome::ClaimerAcquired(r) => r.as_ref().err(),
        Outcome::SlotTried(r) => r.as_ref().err(),
        Outcome::LeaderElected(r) => r.as_ref().err(),
        Outcome::Promoted(r) | Outcome::Pruned(r) => r.as_ref().err(),
        Outcome::Rescued(r) => r.as_ref().err(),
        Outcome::QueuePauseChanged(_)
        | Outcome::ClaimerReleased(_)
        | Outcome::SlotReleased(_)
        | Outcome::SessionEnded(_)
        | Outcome::LeaderResigned(_) => None,
    }
}

fn check_jobs_step(
    before: &World,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    // Only a prune names the jobs it deleted.
    let pruned: BTreeSet<JobId> = match outcome {
        Outcome::Pruned(Ok(ids)) if footprint.deletes_finished => ids.iter().copied().collect(),
        _ => BTreeSet::new(),
    };
    for (id, old) in &before.jobs {
        let Some(new) = after.jobs.get(id) else {
            if pruned.contains(id) && old.state_name().is_terminal() {
                continue;
            }
            return Err(Violation::JobVanished { job: *id });
        };
        if new.epoch < old.epoch {
            return Err(Violation::EpochsOnlyGrow {
                job: *id,
                before: old.epoch,
                after: new.epoch,
            });
        }
        if old.state_name().is_terminal() && new.epoch == old.epoch && new.state != old.state {
            return Err(Violation::AtMostOneTerminalPerEpoch {
                job: *id,
                epoch: old.epoch,
            });
        }
    }
    Ok(())
}

fn check_fencing_step(
    before: &World,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    if let Outcome::Claimed(Ok(claimed)) = outcome {
        for job in &claimed.jobs {
            let Receipt { job: id, epoch } = job.receipt;
            let old = before.jobs.get(&id).map(|j| j.epoch);
            let new = after.jobs.get(&id).map(|j| j.epoch);
            if old.is_none_or(|old| epoch <= old) || new != Some(epoch) {
                return Err(Violation::ReceiptIssuedOnce { job: id, epoch });
            }
        }
    }
    if !footprint.takes_away {
        return Ok(());
    }
    for (id, old) in &before.jobs {
        let live = |s: StateName| matches!(s, StateName::Running | StateName::WaitingExternal);
        let Some(new) = after.jobs.get(id) else {
            continue;
        };
        if live(old.state_name()) && !live(new.state_name()) && new.epoch <= old.epoch {
            return Err(Violation::TakeawayBumpsEpoch {
                job: *id,
                epoch: old.epoch,
            });
        }
    }
    Ok(())
}

fn check_slot_step(
    before: &World,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    let (Some(semaphore), Outcome::SlotTried(Ok(grant))) = (footprint.grants_slot_of, outcome)
    else {
        return Ok(());
    };
    let held = slot_of(before, semaphore, grant.slot).and_then(|slot| slot.holder_at(after.now));
    match held {
        Some(_) => Err(Violation::NoSlotWithTwoHolders {
            semaphore: semaphore.clone(),
            slot: grant.slot,
        }),
        None => Ok(()),
    }
}

/// A live hold ends only by its own release or its holder's session
/// ending, and a renewal is accepted only for the live hold. The shared
/// code (`Semaphore::release`, `Semaphore::renew`) runs on both sides of
/// the differential test, so a bug there shows up identically on both;
/// this check sees it on either.
fn check_slot_holds_step(
    before: &World,
    command: &Command,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    let now = after.now;
    if let (
        Command::SlotRenew(cmd::SlotRenew {
            semaphore, grant, ..
        }),
        Outcome::SlotRenewed(Ok(())),
    ) = (command, outcome)
    {
        let live = slot_of(before, semaphore, grant.slot).is_some_and(|slot| {
            slot.epoch == grant.epoch && slot.holder_at(now) == Some(grant.holder)
        });
        if !live {
            return Err(Violation::SlotRenewedOnlyByItsHolder {
                semaphore: semaphore.clone(),
                slot: grant.slot,
                presented: grant.epoch,
            });
        }
    }
    for (name, sem) in &before.semaphores {
        for (index, old) in sem.slots() {
            let Some(holder) = old.holder_at(now) else {
                continue;
            };
            let kept = slot_of(after, name, index)
                .is_some_and(|new| new.epoch == old.epoch && new.holder_at(now) == Some(holder));
            if kept {
                continue;
            }
            let explained = match command {
                Command::SlotRelease(cmd::SlotRelease { semaphore, grant }) => {
                    semaphore == name
                        && grant.slot == index
                        && grant.epoch == old.epoch
                        && grant.holder == holder
                }
                Command::ProcessCrashed(cmd::ProcessCrashed { process }) => *process == holder,
                _ => false,
            };
            if !explained {
                return Err(Violation::SlotFreedOnlyByItsHolder {
                    semaphore: name.clone(),
                    slot: index,
                    epoch: old.epoch,
                });
            }
        }
    }
    Ok(())
}

/// A claimer grant is given only when the slot could give it, and a lease
/// loses its owner only by that owner's release. `ClaimerTable::acquire`
/// and `release` are shared by both backends, like the semaphore's.
fn check_claimer_step(
    before: &World,
    command: &Command,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    use crate::claimer::Acquired;
    let now = after.now;
    if let (
        Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, process }),
        Outcome::ClaimerAcquired(Ok((grant, how))),
    ) = (command, outcome)
    {
        let old = before.claimers.get(queue).and_then(|t| t.lease(grant.slot));
        let config = &before.config.claimer;
        let possible = grant.process == *process
            && match (how, old) {
                (Acquired::Reused, Some(old)) => {
                    old.is_held_by(*process, now) && old.lease_epoch == grant.lease_epoch
                }
                (Acquired::TakenOver, Some(old)) => {
                    old.is_takeable(now, config.idle_threshold)
                        && grant.lease_epoch > old.lease_epoch
                }
                (Acquired::Opened, None) => grant.slot.0 < config.slots_per_queue,
                _ => false,
            };
        if !possible {
            return Err(Violation::ClaimerGrantedOnlyWhenFree {
                queue: queue.clone(),
                slot: grant.slot,
            });
        }
    }
    for (queue, table) in &before.claimers {
        for (slot, old) in table.slots() {
            let Some(owner) = old.owner else {
                continue;
            };
            let new = after.claimers.get(queue).and_then(|t| t.lease(slot));
            if new.is_some_and(|new| new.owner.is_some()) {
                continue; // kept, or taken over (checked above)
            }
            let explained = matches!(
                command,
                Command::ClaimerRelease(cmd::ClaimerRelease { queue: q, claimer })
                    if q == queue
                        && claimer.slot == slot
                        && claimer.process == owner
                        && claimer.lease_epoch == old.lease_epoch
            );
            if !explained {
                return Err(Violation::ClaimerReleasedOnlyByItsOwner {
                    queue: queue.clone(),
                    slot,
                });
            }
        }
    }
    Ok(())
}

/// Every accepted item of a receipt write found its job in the state that
/// write is for. A job becomes running only by a claim and waiting only
/// from running, so within one batch the state before the batch is the
/// state each accepted item met.
fn check_receipt_states_step(
    before: &World,
    command: &Command,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
) -> Result<(), Violation> {
    let expected = match command {
        Command::ResumeExternal(cmd::ResumeExternal { .. }) => StateName::WaitingExternal,
        _ => StateName::Running,
    };
    let accepted = accepted_items(outcome);
    for (receipt, ok) in footprint.receipts.iter().zip(accepted) {
        let Some(job) = before.jobs.get(&receipt.job) else {
            continue;
        };
        if ok && job.state_name() != expected {
            return Err(Violation::ReceiptWriteOnlyInItsState {
                job: receipt.job,
                state: job.state_name(),
            });
        }
    }
    Ok(())
}

/// Whether each item of a receipt write was accepted (empty for other
/// outcomes and for a batch refused whole).
fn accepted_items(outcome: &Outcome) -> Vec<bool> {
    fn each<T>(items: &crate::protocol::BatchResult<T>) -> Vec<bool> {
        items
            .as_ref()
            .map(|items| items.iter().map(Result::is_ok).collect())
            .unwrap_or_default()
    }
    match outcome {
        Outcome::Heartbeats(items)
        | Outcome::Completed(items)
        | Outcome::Snoozed(items)
        | Outcome::Waiting(items)
        | Outcome::AttemptsCancelled(items) => each(items),
        Outcome::Failed(items) => each(items),
        Outcome::Resumed(result) => vec![result.is_ok()],
        _ => Vec::new(),
    }
}

/// A rescue ends only running jobs that were overdue at its time: the
/// heartbeat at least the configured staleness old, or the deadline
/// passed (waiting jobs past their callback deadline are the other half).
fn check_rescue_step(
    before: &World,
    command: &Command,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    let (Command::Rescue(cmd::Rescue { .. }), Outcome::Rescued(Ok(rescued))) = (command, outcome)
    else {
        return Ok(());
    };
    let stale_after = before.config.heartbeat_stale_after;
    for (id, _) in rescued {
        let Some(job) = before.jobs.get(id) else {
            continue;
        };
        if let JobState::Running {
            heartbeat_at,
            deadline,
            ..
        } = job.state
        {
            let age = i128::from(after.now.0) - i128::from(heartbeat_at.0);
            let stale = age >= i128::from(stale_after.0);
            if !stale && deadline > after.now {
                return Err(Violation::RescuedOnlyWhenOverdue { job: *id });
            }
        }
    }
    Ok(())
}

/// Slot `index` of semaphore `name` in `world`, if both exist.
fn slot_of<'w>(world: &'w World, name: &SemaphoreName, index: SlotIndex) -> Option<&'w Slot> {
    world
        .semaphores
        .get(name)
        .and_then(|sem| sem.slots().nth(usize::from(index.0)))
        .map(|(_, slot)| slot)
}

fn check_leader_step(
    before: &World,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    let Some(grant) = footprint.leader else {
        return Ok(());
    };
    if refusal(outcome).is_some() {
        return Ok(());
    }
    if before.leader.leader_at(after.now) != Some(*grant) {
        return Err(Violation::DeposedLeaderWriteRejected {
            presented: grant.term,
            current: before.leader.term,
        });
    }
    Ok(())
}

fn check_stale_writes(
    before: &World,
    command: &Command,
    footprint: &Footprint<'_>,
    outcome: &Outcome,
    after: &World,
) -> Result<(), Violation> {
    let receipts = &footprint.receipts;
    let mut fresh_only: Option<(World, bool)> = None;
    for receipt in receipts {
        let Some(old) = before.jobs.get(&receipt.job) else {
            continue;
        };
        let new = after.jobs.get(&receipt.job);
        if receipt.epoch == old.epoch || new == Some(old) {
            continue;
        }
        // The job changed although this receipt is stale. That is right
        // only when the same batch also carried the current receipt (a late
        // result flushed beside a fresh one) and the current items alone
        // make exactly this change, answering exactly as they were answered:
        // replay the batch without its stale items.
        let current_write = receipts
            .iter()
            .any(|r| r.job == receipt.job && r.epoch == old.epoch);
        if current_write && fresh_only.is_none() {
            let mut replay = before.clone();
            let replayed = replay.apply(after.now, without_stale_items(before, command));
            let kept: Vec<String> = item_answers(outcome)
                .into_iter()
                .zip(receipts)
                .filter(|(_, r)| is_fresh(before, r))
                .map(|(answer, _)| answer)
                .collect();
            fresh_only = Some((replay, kept == item_answers(&replayed)));
        }
        let explained = current_write
            && fresh_only
                .as_ref()
                .is_some_and(|(replay, same)| *same && replay.jobs.get(&receipt.job) == new);
        if !explained {
            return Err(Violation::StaleWriteNeverChangesJob {
                job: receipt.job,
                presented: receipt.epoch,
            });
        }
    }
    Ok(())
}

fn is_fresh(before: &World, receipt: &Receipt) -> bool {
    before
        .jobs
        .get(&receipt.job)
        .is_some_and(|j| j.epoch == receipt.epoch)
}

/// Each item's answer in a batch outcome, rendered for comparison.
fn item_answers(outcome: &Outcome) -> Vec<String> {
    fn render<T: fmt::Debug>(items: &crate::protocol::BatchResult<T>) -> Vec<String> {
        match items {
            Ok(items) => items.iter().map(|item| format!("{item:?}")).collect(),
            Err(reject) => vec![format!("{reject:?}")],
        }
    }
    match outcome {
        Outcome::Heartbeats(items)
        | Outcome::Completed(items)
        | Outcome::Snoozed(items)
        | Outcome::Waiting(items)
        | Outcome::AttemptsCancelled(items) => render(items),
        Outcome::Failed(items) => render(items),
        // Not a batch: the whole answer is its one item.
        Outcome::Enqueued(_)
        | Outcome::Claimed(_)
        | Outcome::Resumed(_)
        | Outcome::Cancelled(_)
        | Outcome::Retried(_)
        | Outcome::QueuePauseChanged(_)
        | Outcome::ClaimerAcquired(_)
        | Outcome::ClaimerReleased(_)
        | Outcome::SlotTried(_)
        | Outcome::SlotRenewed(_)
        | Outcome::SlotReleased(_)
        | Outcome::SessionEnded(_)
        | Outcome::LeaderElected(_)
        | Outcome::LeaderResigned(_)
        | Outcome::Promoted(_)
        | Outcome::Rescued(_)
        | Outcome::Pruned(_) => vec![format!("{outcome:?}")],
    }
}

/// `command` without the items whose receipt is stale in `before`.
fn without_stale_items(before: &World, command: &Command) -> Command {
    let fresh = |r: &Receipt| is_fresh(before, r);
    let mut command = command.clone();
    match &mut command {
        Command::Heartbeat(cmd::Heartbeat { receipts })
        | Command::Complete(cmd::Complete { receipts })
        | Command::CancelAttempts(cmd::CancelAttempts { receipts }) => receipts.retain(fresh),
        Command::Fail(cmd::Fail { failures }) => failures.retain(|f| fresh(&f.receipt)),
        Command::Snooze(cmd::Snooze { snoozes: items })
        | Command::WaitExternal(cmd::WaitExternal { waits: items }) => {
            items.retain(|(r, _)| fresh(r))
        }
        // One receipt: stale alone, never beside a current one.
        Command::ResumeExternal(cmd::ResumeExternal { .. }) => {}
        Command::Enqueue(cmd::Enqueue { .. })
        | Command::Claim(cmd::Claim { .. })
        | Command::Cancel(cmd::Cancel { .. })
        | Command::Retry(cmd::Retry { .. })
        | Command::PauseQueue(cmd::PauseQueue { .. })
        | Command::ResumeQueue(cmd::ResumeQueue { .. })
        | Command::ClaimerAcquire(cmd::ClaimerAcquire { .. })
        | Command::ClaimerRelease(cmd::ClaimerRelease { .. })
        | Command::SlotTry(cmd::SlotTry { .. })
        | Command::SlotRenew(cmd::SlotRenew { .. })
        | Command::SlotRelease(cmd::SlotRelease { .. })
        | Command::ProcessCrashed(cmd::ProcessCrashed { .. })
        | Command::LeaderElect(cmd::LeaderElect { .. })
        | Command::LeaderResign(cmd::LeaderResign { .. })
        | Command::Promote(cmd::Promote { .. })
        | Command::Rescue(cmd::Rescue { .. })
        | Command::Prune(cmd::Prune { .. }) => {}
    }
    command
}

fn check_counters_step(before: &World, after: &World) -> Result<(), Violation> {
    for (queue, table) in &before.claimers {
        for (slot, old) in table.slots() {
            let new = after.claimers.get(queue).and_then(|t| t.lease(slot));
            match new {
                Some(new) if new.lease_epoch >= old.lease_epoch => {}
                _ => {
                    return Err(Violation::LeaseEpochsOnlyGrow {
                        queue: queue.clone(),
                        slot,
                        before: old.lease_epoch,
                        after: new.map_or(LeaseEpoch(0), |n| n.lease_epoch),
                    })
                }
            }
        }
    }
    for (name, sem) in &before.semaphores {
        for (slot, old) in sem.slots() {
            let new = slot_of(after, name, slot).map(|s| s.epoch);
            if new.is_none_or(|new| new < old.epoch) {
                return Err(Violation::SlotEpochsOnlyGrow {
                    semaphore: name.clone(),
                    slot,
                    before: old.epoch,
                    after: new.unwrap_or_default(),
                });
            }
        }
    }
    let (old, new) = (&before.leader, &after.leader);
    if new.term < old.term {
        return Err(Violation::LeaderTermsOnlyGrow {
            before: old.term,
            after: new.term,
        });
    }
    if let (true, Some(first), Some(second)) = (new.term == old.term, old.holder, new.holder) {
        if first != second {
            return Err(Violation::AtMostOneLeaderPerTerm {
                term: new.term,
                first,
                second,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! For each invariant: build a state (or step) that breaks it, and show
    //! the check names it.

    use super::*;
    use crate::claimer::{Acquired, ClaimerGrant, ClaimerLease};
    use crate::ids::{Kind, UniqueKey};
    use crate::job::{FailOutcome, NewJob, Payload};
    use crate::leader::LeaderGrant;
    use crate::reject::Reject;
    use crate::semaphore::{Hold, Slot, SlotGrant, SlotHolder};
    use crate::time::{Millis, Timestamp};
    use crate::world::WorldConfig;

    fn queue() -> QueueName {
        QueueName::new("q").unwrap()
    }

    /// A world with one job per interesting state: available, running,
    /// completed; a claimer lease; a semaphore; a leader.
    fn world() -> (World, Receipt) {
        let mut w = World::new(WorldConfig::default());
        let now = Timestamp(1_000);
        let new = |key: Option<&str>| NewJob {
            max_attempts: 3,
            unique_key: key.map(|k| UniqueKey::new(k).unwrap()),
            ..NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default())
        };
        w.apply(
            now,
            Command::Enqueue(cmd::Enqueue {
                jobs: vec![new(Some("u")), new(None), new(None)],
            }),
        );
        let (claimer, _) = w
            .run(
                now,
                cmd::ClaimerAcquire {
                    queue: queue(),
                    process: ProcessId(1),
                },
            )
            .unwrap();
        let claimed = w
            .run(
                now,
                cmd::Claim {
                    queue: queue(),
                    claimer,
                    max: 2,
                    kinds: None,
                },
            )
            .unwrap();
        w.apply(
            now,
            Command::Complete(cmd::Complete {
                receipts: vec![claimed.jobs[1].receipt],
            }),
        );
        w.apply(
            now,
            Command::SlotTry(cmd::SlotTry {
                semaphore: SemaphoreName::new("s").unwrap(),
                permits: 2,
                slot: SlotIndex(0),
                holder: ProcessId(1),
                lease_ttl: None,
            }),
        );
        w.apply(
            now,
            Command::LeaderElect(cmd::LeaderElect {
                process: ProcessId(1),
            }),
        );
        assert_eq!(w.check_invariants(), Ok(()));
        (w, claimed.jobs[0].receipt)
    }

    fn job_mut(w: &mut World, id: i64) -> &mut crate::job::Job {
        w.jobs.get_mut(&JobId(id)).unwrap()
    }

    fn violation(w: &World) -> Violation {
        w.check_invariants()
            .expect_err("the state was built to break an invariant")
    }

    #[test]
    fn attempts_bounded() {
        let (mut w, _) = world();
        job_mut(&mut w, 1).attempt = Attempt(4);
        assert!(matches!(
            violation(&w),
            Violation::AttemptsBounded { job: JobId(1), .. }
        ));
    }

    #[test]
    fn error_history_bounded() {
        let record = |message: &str| ErrorRecord {
            attempt: Attempt(1),
            at: Timestamp(1_000),
            message: message.to_string(),
        };
        let (mut w, _) = world();
        job_mut(&mut w, 2).errors = vec![record("boom"); ErrorRecord::KEPT];
        assert_eq!(w.check_invariants(), Ok(()), "KEPT errors are allowed");
        job_mut(&mut w, 2).errors.push(record("one too many"));
        assert_eq!(
            violation(&w),
            Violation::ErrorHistoryBounded {
                job: JobId(2),
                kept: ErrorRecord::KEPT + 1
            }
        );
        let (mut w, _) = world();
        job_mut(&mut w, 2).errors = vec![record("a \0 byte")];
        assert_eq!(
            violation(&w),
            Violation::ErrorHistoryBounded {
                job: JobId(2),
                kept: 1
            }
        );
    }

    #[test]
    fn queued_job_has_attempt_left() {
        let (mut w, _) = world();
        job_mut(&mut w, 3).attempt = Attempt(3);
        assert!(matches!(
            violation(&w),
            Violation::QueuedJobHasAttemptLeft { job: JobId(3), .. }
        ));
    }

    #[test]
    fn at_most_one_live_attempt_two_attempts_in_one_epoch() {
        // What a claim that keeps the epoch leaves behind: the second
        // attempt runs under the first one's epoch.
        let (mut w, _) = world();
        let job = job_mut(&mut w, 1);
        assert!(job.epoch.0 >= 1, "the fixture's job 1 is running");
        job.attempt = Attempt(job.epoch.0 as u32 + 1);
        job.max_attempts = Attempt(job.attempt.0 + 1);
        assert_eq!(
            violation(&w),
            Violation::AtMostOneLiveAttempt { job: JobId(1) }
        );
    }

    #[test]
    fn at_most_one_live_attempt() {
        let (mut w, _) = world();
        job_mut(&mut w, 1).epoch = Epoch(0);
        assert_eq!(
            violation(&w),
            Violation::AtMostOneLiveAttempt { job: JobId(1) }
        );
    }

    #[test]
    fn no_job_lost_when_a_job_leaves_its_index() {
        let (mut w, _) = world();
        w.running.clear();
        assert!(matches!(violation(&w), Violation::NoJobLost { .. }));
    }

    #[test]
    fn no_job_lost_when_a_job_is_filed_under_the_wrong_state() {
        let (mut w, _) = world();
        job_mut(&mut w, 3).state = JobState::Scheduled {
            run_at: Timestamp(5_000),
        };
        assert!(matches!(
            violation(&w),
            Violation::NoJobLost {
                job: Some(JobId(3)),
                ..
            }
        ));
    }

    #[test]
    fn no_job_lost_when_a_job_disappears() {
        let (mut w, _) = world();
        let job = w.jobs.remove(&JobId(3)).unwrap();
        w.unindex(&job);
        assert!(matches!(
            violation(&w),
            Violation::NoJobLost { job: None, .. }
        ));
    }

    #[test]
    fn no_job_lost_when_a_unique_key_dangles() {
        let (mut w, _) = world();
        w.unique.clear();
        assert!(matches!(
            violation(&w),
            Violation::NoJobLost {
                job: Some(JobId(1)),
                ..
            }
        ));
    }

    #[test]
    fn at_most_k_active_claimers() {
        let (mut w, _) = world();
        let k = w.config.claimer.slots_per_queue;
        let table = w.claimers.get_mut(&queue()).unwrap();
        let lease = ClaimerLease {
            owner: Some(ProcessId(9)),
            lease_epoch: LeaseEpoch(1),
            last_claimed_at: Timestamp(1_000),
            expires_at: Timestamp(99_000),
        };
        for slot in 0..=k {
            table.slots_mut().insert(ClaimerSlot(slot), lease);
        }
        assert!(matches!(
            violation(&w),
            Violation::AtMostKActiveClaimers { .. }
        ));
    }

    #[test]
    fn at_most_n_holders() {
        let (mut w, _) = world();
        let sem = w.semaphores.values_mut().next().unwrap();
        let held = Slot {
            epoch: SlotEpoch(1),
            held: Some(SlotHolder {
                holder: ProcessId(7),
                hold: Hold::Session,
            }),
        };
        sem.slots_mut().push(held);
        assert!(matches!(
            violation(&w),
            Violation::AtMostNHolders {
                permits: 2,
                count: 3,
                ..
            }
        ));
    }

    #[test]
    fn leader_has_term() {
        let (mut w, _) = world();
        w.leader.term = LeaderTerm(0);
        assert_eq!(violation(&w), Violation::LeaderHasTerm);
    }

    /// Applies `command` to `before` for real, then lets `corrupt` break the
    /// result, and returns what `check_step` says.
    fn step(
        before: &World,
        command: Command,
        corrupt: impl FnOnce(&mut World),
    ) -> Result<(), Violation> {
        let mut after = before.clone();
        let outcome = after.apply(Timestamp(2_000), command.clone());
        assert_eq!(
            World::check_step(before, &command, &outcome, &after),
            Ok(())
        );
        corrupt(&mut after);
        World::check_step(before, &command, &outcome, &after)
    }

    fn noop() -> Command {
        Command::PauseQueue(cmd::PauseQueue {
            queue: QueueName::new("other").unwrap(),
        })
    }

    #[test]
    fn a_stale_receipt_beside_the_current_one_is_not_a_violation() {
        let (w, receipt) = world();
        let stale = Receipt {
            epoch: Epoch(0),
            ..receipt
        };
        let command = Command::Complete(cmd::Complete {
            receipts: vec![stale, receipt],
        });
        let r = step(&w, command.clone(), |_| {});
        assert_eq!(r, Ok(()));
        // But a world where the stale item made a *different* change is caught.
        let r = step(&w, command, |a| {
            job_mut(a, 1).state = JobState::Cancelled {
                at: Timestamp(2_000),
            };
        });
        assert!(matches!(
            r,
            Err(Violation::StaleWriteNeverChangesJob { job: JobId(1), .. })
        ));
    }

    #[test]
    fn epochs_only_grow() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| job_mut(a, 1).epoch = Epoch(0));
        assert!(matches!(
            r,
            Err(Violation::EpochsOnlyGrow { job: JobId(1), .. })
        ));
    }

    #[test]
    fn stale_write_never_changes_job() {
        let (w, receipt) = world();
        let stale = Receipt {
            epoch: Epoch(0),
            ..receipt
        };
        let r = step(
            &w,
            Command::Heartbeat(cmd::Heartbeat {
                receipts: vec![stale],
            }),
            |a| {
                if let JobState::Running { heartbeat_at, .. } = &mut job_mut(a, 1).state {
                    *heartbeat_at = Timestamp(2_000);
                }
            },
        );
        assert_eq!(
            r,
            Err(Violation::StaleWriteNeverChangesJob {
                job: JobId(1),
                presented: Epoch(0)
            })
        );
    }

    #[test]
    fn at_most_one_terminal_outcome_per_epoch() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| {
            let job = job_mut(a, 2);
            job.state = JobState::Cancelled {
                at: Timestamp(2_000),
            };
        });
        assert_eq!(
            r,
            Err(Violation::AtMostOneTerminalPerEpoch {
                job: JobId(2),
                epoch: Epoch(1)
            })
        );
    }

    #[test]
    fn a_claim_issues_each_receipt_once() {
        let (mut w, _) = world();
        let before = w.clone();
        let (claimer, _) = w
            .run(
                Timestamp(2_000),
                cmd::ClaimerAcquire {
                    queue: queue(),
                    process: ProcessId(1),
                },
            )
            .unwrap();
        let command = Command::Claim(cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        });
        let mut after = w.clone();
        let outcome = after.apply(Timestamp(2_000), command.clone());
        assert_eq!(World::check_step(&w, &command, &outcome, &after), Ok(()));
        // The same claim answering with the job's old epoch.
        let mut claimed = crate::answer_of::<cmd::Claim>(outcome).unwrap();
        let id = claimed.jobs[0].receipt.job;
        claimed.jobs[0].receipt.epoch = before.jobs[&id].epoch;
        let outcome = Outcome::Claimed(Ok(claimed));
        assert!(matches!(
            World::check_step(&w, &command, &outcome, &after),
            Err(Violation::ReceiptIssuedOnce { .. })
        ));
    }

    #[test]
    fn taking_an_attempt_away_bumps_the_epoch() {
        let (w, receipt) = world();
        let r = step(&w, Command::Cancel(cmd::Cancel { job: receipt.job }), |a| {
            job_mut(a, 1).epoch = receipt.epoch;
        });
        assert_eq!(
            r,
            Err(Violation::TakeawayBumpsEpoch {
                job: JobId(1),
                epoch: receipt.epoch
            })
        );
    }

    #[test]
    fn a_held_slot_is_never_granted_again() {
        let (w, _) = world();
        let command = Command::SlotTry(cmd::SlotTry {
            semaphore: SemaphoreName::new("s").unwrap(),
            permits: 2,
            slot: SlotIndex(0),
            holder: ProcessId(2),
            lease_ttl: None,
        });
        let mut after = w.clone();
        let refused = after.apply(Timestamp(2_000), command.clone());
        assert!(matches!(
            refused,
            Outcome::SlotTried(Err(Reject::SlotBusy { .. }))
        ));
        // A world that granted it anyway.
        let grant = SlotGrant {
            slot: SlotIndex(0),
            epoch: SlotEpoch(2),
            holder: ProcessId(2),
        };
        let granted = Outcome::SlotTried(Ok(grant));
        assert_eq!(
            World::check_step(&w, &command, &granted, &after),
            Err(Violation::NoSlotWithTwoHolders {
                semaphore: SemaphoreName::new("s").unwrap(),
                slot: SlotIndex(0)
            })
        );
    }

    fn sem() -> SemaphoreName {
        SemaphoreName::new("s").unwrap()
    }

    /// The hold `world()` gives process 1 on slot 0 of `s`.
    fn held_grant() -> SlotGrant {
        SlotGrant {
            slot: SlotIndex(0),
            epoch: SlotEpoch(1),
            holder: ProcessId(1),
        }
    }

    fn free_slot(w: &mut World) {
        w.semaphores.get_mut(&sem()).unwrap().slots_mut()[0].held = None;
    }

    #[test]
    fn a_slot_is_freed_only_by_its_holders_current_grant() {
        let (w, _) = world();
        // A grant of an earlier holding by the same holder: the slot's
        // epoch has moved on since, so this release must free nothing.
        let stale = SlotGrant {
            epoch: SlotEpoch(0),
            ..held_grant()
        };
        let release = |grant| {
            Command::SlotRelease(cmd::SlotRelease {
                semaphore: sem(),
                grant,
            })
        };
        assert_eq!(
            step(&w, release(stale), free_slot),
            Err(Violation::SlotFreedOnlyByItsHolder {
                semaphore: sem(),
                slot: SlotIndex(0),
                epoch: SlotEpoch(1),
            })
        );
        // Nor does any other command free it.
        assert!(matches!(
            step(&w, noop(), free_slot),
            Err(Violation::SlotFreedOnlyByItsHolder { .. })
        ));
        // Its own release, and its holder's session ending, may.
        assert_eq!(step(&w, release(held_grant()), |_| {}), Ok(()));
        let crashed = Command::ProcessCrashed(cmd::ProcessCrashed {
            process: ProcessId(1),
        });
        assert_eq!(step(&w, crashed, |_| {}), Ok(()));
    }

    #[test]
    fn a_slot_is_renewed_only_for_its_live_hold() {
        let (w, _) = world();
        let renew = |grant| {
            Command::SlotRenew(cmd::SlotRenew {
                semaphore: sem(),
                grant,
                lease_ttl: Millis(1_000),
            })
        };
        let stale = SlotGrant {
            epoch: SlotEpoch(0),
            ..held_grant()
        };
        let mut after = w.clone();
        let refused = after.apply(Timestamp(2_000), renew(stale));
        assert!(matches!(
            refused,
            Outcome::SlotRenewed(Err(Reject::SlotNotHeld { .. }))
        ));
        // A world that accepted it anyway.
        assert_eq!(
            World::check_step(&w, &renew(stale), &Outcome::SlotRenewed(Ok(())), &after),
            Err(Violation::SlotRenewedOnlyByItsHolder {
                semaphore: sem(),
                slot: SlotIndex(0),
                presented: SlotEpoch(0),
            })
        );
        let renewed = after.apply(Timestamp(2_000), renew(held_grant()));
        assert_eq!(
            World::check_step(&w, &renew(held_grant()), &renewed, &after),
            Ok(())
        );
    }

    #[test]
    fn a_claimer_lease_is_granted_only_when_the_slot_can_give_it() {
        let (w, _) = world();
        let acquire = |process| {
            Command::ClaimerAcquire(cmd::ClaimerAcquire {
                queue: queue(),
                process: ProcessId(process),
            })
        };
        let mut after = w.clone();
        let answer = after.apply(Timestamp(2_000), acquire(2));
        let (grant, how) = crate::answer_of::<cmd::ClaimerAcquire>(answer.clone()).unwrap();
        assert_eq!(how, Acquired::Opened, "{answer:?}");
        assert_eq!(World::check_step(&w, &acquire(2), &answer, &after), Ok(()));
        // Process 1's slot 0 is fresh: a take-over of it is two claimers
        // believing they own one slot.
        let taken = ClaimerGrant {
            slot: ClaimerSlot(0),
            lease_epoch: LeaseEpoch(2),
            ..grant
        };
        let taken_over = Outcome::ClaimerAcquired(Ok((taken, Acquired::TakenOver)));
        assert_eq!(
            World::check_step(&w, &acquire(2), &taken_over, &after),
            Err(Violation::ClaimerGrantedOnlyWhenFree {
                queue: queue(),
                slot: ClaimerSlot(0),
            })
        );
        // Nor may process 2 "reuse" process 1's lease.
        let reused = Outcome::ClaimerAcquired(Ok((
            ClaimerGrant {
                lease_epoch: LeaseEpoch(1),
                ..taken
            },
            Acquired::Reused,
        )));
        assert!(matches!(
            World::check_step(&w, &acquire(2), &reused, &after),
            Err(Violation::ClaimerGrantedOnlyWhenFree { .. })
        ));
    }

    #[test]
    fn a_claimer_lease_loses_its_owner_only_by_its_release() {
        let (w, _) = world();
        let owned = ClaimerGrant {
            process: ProcessId(1),
            slot: ClaimerSlot(0),
            lease_epoch: LeaseEpoch(1),
        };
        let release = |claimer| {
            Command::ClaimerRelease(cmd::ClaimerRelease {
                queue: queue(),
                claimer,
            })
        };
        let disown = |w: &mut World| {
            let table = w.claimers.get_mut(&queue()).unwrap();
            table.slots_mut().get_mut(&ClaimerSlot(0)).unwrap().owner = None;
        };
        let stale = ClaimerGrant {
            lease_epoch: LeaseEpoch(0),
            ..owned
        };
        assert_eq!(
            step(&w, release(stale), disown),
            Err(Violation::ClaimerReleasedOnlyByItsOwner {
                queue: queue(),
                slot: ClaimerSlot(0),
            })
        );
        assert_eq!(step(&w, release(owned), |_| {}), Ok(()));
    }

    #[test]
    fn a_receipt_write_is_accepted_only_in_its_state() {
        let (w, running) = world();
        // Job 2 was completed under this receipt's epoch: a second
        // completion with it is refused for its state, not its epoch.
        let done = Receipt {
            job: JobId(2),
            epoch: Epoch(1),
        };
        let command = Command::Complete(cmd::Complete {
            receipts: vec![running, done],
        });
        let mut after = w.clone();
        let outcome = after.apply(Timestamp(2_000), command.clone());
        assert!(matches!(
            &outcome,
            Outcome::Completed(Ok(items))
                if items[0].is_ok() && matches!(items[1], Err(Reject::NotRunning { .. }))
        ));
        assert_eq!(World::check_step(&w, &command, &outcome, &after), Ok(()));
        // A world that accepted the second item anyway.
        let forged = Outcome::Completed(Ok(vec![Ok(()), Ok(())]));
        assert_eq!(
            World::check_step(&w, &command, &forged, &after),
            Err(Violation::ReceiptWriteOnlyInItsState {
                job: JobId(2),
                state: StateName::Completed,
            })
        );
        // A resume is for a waiting job: of a running one it is refused.
        let resume = Command::ResumeExternal(cmd::ResumeExternal { receipt: running });
        let mut after = w.clone();
        let outcome = after.apply(Timestamp(2_000), resume.clone());
        assert!(matches!(outcome, Outcome::Resumed(Err(_))));
        assert_eq!(
            World::check_step(&w, &resume, &Outcome::Resumed(Ok(())), &after),
            Err(Violation::ReceiptWriteOnlyInItsState {
                job: JobId(1),
                state: StateName::Running,
            })
        );
    }

    #[test]
    fn a_rescue_takes_only_overdue_jobs() {
        let (w, _) = world();
        let leader = w.leader.leader_at(Timestamp(2_000)).unwrap();
        let rescue = Command::Rescue(cmd::Rescue {
            leader,
            draw: 0,
            max: 10,
        });
        // At 2 s job 1's heartbeat (at 1 s) is fresh: nothing to rescue.
        let mut after = w.clone();
        let outcome = after.apply(Timestamp(2_000), rescue.clone());
        assert!(matches!(&outcome, Outcome::Rescued(Ok(v)) if v.is_empty()));
        assert_eq!(World::check_step(&w, &rescue, &outcome, &after), Ok(()));
        // A world that rescued it anyway.
        let forged = Outcome::Rescued(Ok(vec![(
            JobId(1),
            FailOutcome::Retrying {
                run_at: Timestamp(2_000),
            },
        )]));
        assert_eq!(
            World::check_step(&w, &rescue, &forged, &after),
            Err(Violation::RescuedOnlyWhenOverdue { job: JobId(1) })
        );
        // Once its heartbeat is as old as the threshold, it may be.
        let mut stale = w.clone();
        if let JobState::Running { heartbeat_at, .. } = &mut job_mut(&mut stale, 1).state {
            *heartbeat_at = Timestamp(2_000 - 60_000);
        }
        let mut after = stale.clone();
        let outcome = after.apply(Timestamp(2_000), rescue.clone());
        assert!(matches!(&outcome, Outcome::Rescued(Ok(v)) if v.len() == 1));
        assert_eq!(World::check_step(&stale, &rescue, &outcome, &after), Ok(()));
    }

    #[test]
    fn a_deposed_leaders_write_is_refused() {
        let (w, _) = world();
        let deposed = LeaderGrant {
            process: ProcessId(2),
            term: LeaderTerm(1),
        };
        let command = Command::Promote(cmd::Promote {
            leader: deposed,
            max: 1,
        });
        let mut after = w.clone();
        let outcome = after.apply(Timestamp(2_000), command.clone());
        assert!(matches!(
            outcome,
            Outcome::Promoted(Err(Reject::NotLeader { .. }))
        ));
        let accepted = Outcome::Promoted(Ok(Vec::new()));
        assert_eq!(
            World::check_step(&w, &command, &accepted, &after),
            Err(Violation::DeposedLeaderWriteRejected {
                presented: LeaderTerm(1),
                current: LeaderTerm(1)
            })
        );
    }

    #[test]
    fn no_job_vanishes_without_a_prune() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| {
            a.jobs.remove(&JobId(3));
        });
        assert_eq!(r, Err(Violation::JobVanished { job: JobId(3) }));
    }

    #[test]
    fn lease_epochs_only_grow() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| {
            let table = a.claimers.get_mut(&queue()).unwrap();
            table.slots_mut().values_mut().next().unwrap().lease_epoch = LeaseEpoch(0);
        });
        assert!(matches!(r, Err(Violation::LeaseEpochsOnlyGrow { .. })));
    }

    #[test]
    fn slot_epochs_only_grow() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| {
            a.semaphores.values_mut().next().unwrap().slots_mut()[0].epoch = SlotEpoch(0);
        });
        assert!(matches!(r, Err(Violation::SlotEpochsOnlyGrow { .. })));
    }

    #[test]
    fn leader_terms_only_grow() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| a.leader.term = LeaderTerm(0));
        assert!(matches!(r, Err(Violation::LeaderTermsOnlyGrow { .. })));
    }

    #[test]
    fn at_most_one_leader_per_term() {
        let (w, _) = world();
        let r = step(&w, noop(), |a| a.leader.holder = Some(ProcessId(2)));
        assert_eq!(
            r,
            Err(Violation::AtMostOneLeaderPerTerm {
                term: LeaderTerm(1),
                first: ProcessId(1),
                second: ProcessId(2)
            })
        );
    }

    #[test]
    fn a_real_deposition_is_not_a_violation() {
        let (w, _) = world();
        let grant = LeaderGrant {
            process: ProcessId(1),
            term: LeaderTerm(1),
        };
        let mut after = w.clone();
        after.apply(
            Timestamp(2_000),
            Command::LeaderResign(cmd::LeaderResign { leader: grant }),
        );
        let command = Command::LeaderElect(cmd::LeaderElect {
            process: ProcessId(2),
        });
        let before = after.clone();
        let outcome = after.apply(Timestamp(2_001), command.clone());
        assert_eq!(
            World::check_step(&before, &command, &outcome, &after),
            Ok(())
        );
        assert_eq!(after.leader.term, LeaderTerm(2));
    }
}
