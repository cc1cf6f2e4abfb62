//! The life of one attempt held by this process: prepared, its limits'
//! slots taken, its handler started, renewed, stopped, ended, reported or
//! handed back. See the module docs of [`super`] for the whole story.

use std::collections::VecDeque;

use crate::cmd;
use crate::ids::{Receipt, SlotIndex};
use crate::job::{FailError, Retry};
use crate::protocol::{ClaimedJob, Command};
use crate::reject::Reject;
use crate::semaphore::{AcquireStep, Acquisition, SlotGrant, TryResult, WaitConfig};
use crate::time::{Millis, Timestamp};

use super::{Abandoned, Dispatcher, Effect, HandlerResult, Limit, Phase, StopReason, Unrunnable};

/// The longest an attempt's handler is stopped ahead of storage's deadline
/// (a tenth of the budget when that is less): the local timer fires, and
/// the abort lands, before storage can rescue the job and hand it out
/// again, even across a timer's rounding.
const DEADLINE_MARGIN_MAX: Millis = Millis(100);

/// Where a storage command's answer goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Lane {
    Acquire(usize),
    Claim {
        queue: usize,
        max: u32,
        /// When the claim was sent: an attempt's budget is run from here.
        sent_at: Timestamp,
    },
    Heartbeat(Vec<Receipt>),
    /// One attempt's heartbeat, checking a cancel notification.
    Probe(Receipt),
    Report(Vec<Receipt>),
    SlotTry {
        receipt: Receipt,
        slot: SlotIndex,
        sent_at: Timestamp,
    },
    SlotRenew {
        receipt: Receipt,
        index: usize,
        sent_at: Timestamp,
    },
    SlotRelease,
    Leader,
    Maintenance,
    Release,
}

impl Lane {
    /// Lanes that are one lane for "at most one in flight": a queue's
    /// acquisition and claims share one, all reports another, all
    /// maintenance commands a third, heartbeat chunks a fourth. Slot
    /// commands are kept one per attempt by the attempt itself.
    pub(super) fn same_lane(&self, other: &Lane) -> bool {
        use Lane::*;
        match (self, other) {
            (Acquire(a), Acquire(b)) => a == b,
            (Claim { queue: a, .. }, Claim { queue: b, .. }) => a == b,
            (Acquire(a), Claim { queue: b, .. }) | (Claim { queue: b, .. }, Acquire(a)) => a == b,
            (Probe(a), Probe(b)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }

    /// Heartbeats (of the pool, or a probe) decide nothing shutdown waits for.
    pub(super) fn is_heartbeat(&self) -> bool {
        matches!(self, Lane::Heartbeat(_) | Lane::Probe(_))
    }

    /// How many items the command carries, against the backend's limit.
    pub(super) fn items(&self) -> usize {
        match self {
            Lane::Heartbeat(receipts) | Lane::Report(receipts) => receipts.len(),
            Lane::Claim { max, .. } => *max as usize,
            _ => 1,
        }
    }
}

/// What a handler that was told to stop leaves behind once it ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum AfterStop {
    /// Nothing: the attempt is no longer ours.
    Discard,
    /// This result, instead of the handler's.
    Report(HandlerResult),
}

/// Where an attempt is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum AttemptPhase {
    /// [`Effect::Prepare`] went out; waiting for [`super::Input::Prepared`].
    Preparing,
    /// Taking one slot of each limit in `needs`, front first.
    Acquiring {
        needs: VecDeque<Limit>,
        scan: Acquisition,
        /// A slot try is in flight.
        trying: bool,
        /// When the latest try was sent: a slot it won is leased from here.
        sent_at: Timestamp,
        /// Stop as soon as the try in flight returns, leaving this.
        then: Option<AfterStop>,
    },
    Running,
    /// Told to stop; waiting for the handler's end.
    Stopping {
        then: AfterStop,
        /// When to abort it, if it has not been aborted yet.
        abort_at: Option<Timestamp>,
    },
}

/// A limit slot the attempt holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct HeldSlot {
    pub(super) limit: Limit,
    pub(super) grant: SlotGrant,
    /// The lease is proven until here on this clock: the send time of the
    /// latest accepted try or renewal, plus the lease's length (storage
    /// applied it later, so its lease lasts at least this long).
    pub(super) lease_until: Timestamp,
    pub(super) renewing: bool,
}

/// One attempt held by this process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AttemptState {
    pub(super) queue: usize,
    /// The claimed job, until its handler starts.
    job: Option<ClaimedJob>,
    /// When the handler must have stopped, on this clock.
    deadline: Timestamp,
    pub(super) phase: AttemptPhase,
    pub(super) slots: Vec<HeldSlot>,
    /// When the slots are next renewed (while the handler runs).
    renew_at: Option<Timestamp>,
    /// A cancel notification is being checked.
    pub(super) probing: bool,
    /// The timer armed for it in [`Dispatcher::timers`].
    pub(super) timer: Option<Timestamp>,
}

impl AttemptState {
    /// Whether a handler was started and has not ended.
    pub(super) fn has_handler(&self) -> bool {
        matches!(
            self.phase,
            AttemptPhase::Running | AttemptPhase::Stopping { .. }
        )
    }

    /// Whether shutdown's deadline would still stop something: a handler
    /// running, or an attempt not yet started and not already told to go.
    pub(super) fn is_stoppable(&self) -> bool {
        matches!(
            self.phase,
            AttemptPhase::Preparing
                | AttemptPhase::Running
                | AttemptPhase::Acquiring { then: None, .. }
        )
    }

    /// Whether the attempt is still this process's to heartbeat: not one
    /// storage already fenced.
    pub(super) fn is_ours(&self) -> bool {
        !matches!(
            self.phase,
            AttemptPhase::Stopping {
                then: AfterStop::Discard,
                ..
            } | AttemptPhase::Acquiring {
                then: Some(AfterStop::Discard),
                ..
            }
        )
    }

    /// When the handler must be gone because a slot's lease could lapse:
    /// the earliest proven lease end, less a margin.
    pub(super) fn lease_deadline(&self, ttl: Millis) -> Option<Timestamp> {
        let margin = DEADLINE_MARGIN_MAX.min(Millis(ttl.0 / 10));
        let until = self.slots.iter().map(|s| s.lease_until).min()?;
        Some(until.minus(margin))
    }

    /// The earliest moment something is due for this attempt: its
    /// deadline; while its handler runs, a renewal, and the moment it must
    /// be stopped so that it is gone before a slot's lease could lapse;
    /// while it stops, its abort.
    pub(super) fn next_timer(&self, ttl: Millis, grace: Millis) -> Option<Timestamp> {
        let renew = self
            .renew_at
            .filter(|_| self.has_handler() && self.slots.iter().any(|s| !s.renewing));
        let lease = self.lease_deadline(ttl);
        let own = match &self.phase {
            // Told to go while a slot try is out: the try's answer ends it.
            AttemptPhase::Acquiring { then: Some(_), .. } => None,
            AttemptPhase::Preparing | AttemptPhase::Acquiring { .. } => Some(self.deadline),
            AttemptPhase::Running => {
                let stop_by = lease.map(|l| l.minus(stop_ahead(ttl, grace)));
                Some(stop_by.map_or(self.deadline, |l| l.min(self.deadline)))
            }
            AttemptPhase::Stopping { abort_at, .. } => {
                abort_at.map(|at| lease.map_or(at, |l| l.min(at)))
            }
        };
        [own, renew].into_iter().flatten().min()
    }
}

/// A slot try's answer, as the attempt takes it.
pub(super) enum TryAnswer {
    Acquired {
        grant: SlotGrant,
        sent_at: Timestamp,
    },
    Busy,
    /// The limit itself is refused (its size disagrees with its first use).
    Refused(Reject),
    /// The try failed (lost, refused for its data): skip the slot.
    Error,
}

impl TryAnswer {
    pub(super) fn from_outcome(result: Result<SlotGrant, Reject>, sent_at: Timestamp) -> TryAnswer {
        match result {
            Ok(grant) => TryAnswer::Acquired { grant, sent_at },
            Err(Reject::SlotBusy { .. }) => TryAnswer::Busy,
            Err(reject) => TryAnswer::Refused(reject),
        }
    }
}

/// How long before a slot's lease could lapse a running handler is told
/// to stop: its stop grace, but no more than a sixth of the lease. Renewals
/// go out every third of it, so after one lost renewal the next one still
/// has a sixth of the lease (less the margin) for its answer before the
/// handler is stopped: one lost renewal alone never stops a handler. The
/// abort comes at the lease deadline at the latest.
fn stop_ahead(ttl: Millis, grace: Millis) -> Millis {
    grace.min(Millis(ttl.0 / 6))
}

fn timed_out() -> HandlerResult {
    HandlerResult::Fail(FailError {
        retry: Retry::Backoff,
        message: "handler ran past its deadline".to_string(),
    })
}

/// A scan of every slot once, with no waiting: a miss hands the job back
/// rather than holding a worker.
fn one_scan(limit: &Limit, now: Timestamp) -> Acquisition {
    let wait = WaitConfig {
        retry_min: Millis::ZERO,
        retry_max: Millis::ZERO,
        wait_max: Millis::ZERO,
    };
    Acquisition::new(Some(limit.permits), now, wait)
}

impl Dispatcher {
    /// When an attempt held here must have ended, on this clock: storage's
    /// budget run from when its claim was sent, less a margin.
    pub fn deadline_of(&self, receipt: Receipt) -> Option<Timestamp> {
        self.attempts.get(&receipt).map(|a| a.deadline)
    }

    /// A job this process just claimed becomes an attempt (the caller is
    /// asked which limits it runs under, with the rest of its claim). Its
    /// budget is storage's `deadline - claimed_at`, run on this clock from
    /// when the claim was sent (so never longer than storage's), less a
    /// margin. Returns the job, for the question.
    pub(super) fn admit(
        &mut self,
        queue: usize,
        job: ClaimedJob,
        sent_at: Timestamp,
    ) -> ClaimedJob {
        let budget = job.deadline.since(job.claimed_at);
        let margin = DEADLINE_MARGIN_MAX.min(Millis(budget.0 / 10));
        let receipt = job.receipt;
        // The payload goes with the question (the caller decodes it once,
        // there); the attempt keeps the rest for the handler's start.
        let mut kept = job;
        let payload = std::mem::take(&mut kept.payload);
        let asked = ClaimedJob {
            payload,
            ..kept.clone()
        };
        let attempt = AttemptState {
            queue,
            job: Some(kept),
            deadline: sent_at.plus(Millis(budget.0 - margin.0)),
            phase: AttemptPhase::Preparing,
            slots: Vec::new(),
            renew_at: None,
            probing: false,
            timer: None,
        };
        self.attempts.insert(receipt, attempt);
        self.queues[queue].running += 1;
        self.rearm(receipt);
        asked
    }

    pub(super) fn on_prepared(
        &mut self,
        now: Timestamp,
        draw: u64,
        receipt: Receipt,
        limits: Result<Vec<Limit>, Unrunnable>,
    ) {
        let Some(attempt) = self.attempts.get(&receipt) else {
            return;
        };
        if attempt.phase != AttemptPhase::Preparing {
            return;
        }
        let mut needs: VecDeque<Limit> = self.queue_limits[attempt.queue].iter().cloned().collect();
        match limits {
            Err(Unrunnable::NoHandler) => {
                let later = HandlerResult::Snooze(self.config.poll_interval);
                return self.abandon(now, receipt, Some(later), Abandoned::Unrunnable);
            }
            Err(Unrunnable::Invalid(message)) => {
                let fail = HandlerResult::Fail(FailError {
                    retry: Retry::Never,
                    message,
                });
                return self.abandon(now, receipt, Some(fail), Abandoned::Unrunnable);
            }
            Ok(mut own) => {
                own.sort();
                own.dedup_by(|a, b| a.semaphore == b.semaphore);
                let zero = own.iter().find(|l| l.permits == 0).cloned();
                if let Some(limit) = zero {
                    let message = format!(
                        "invalid concurrency limit: {} has 0 permits",
                        limit.semaphore
                    );
                    let fail = HandlerResult::Fail(FailError {
                        retry: Retry::Never,
                        message,
                    });
                    return self.abandon(now, receipt, Some(fail), Abandoned::Unrunnable);
                }
                let queue_limit = needs.front().map(|l| l.semaphore.clone());
                needs.extend(
                    own.into_iter()
                        .filter(|l| Some(&l.semaphore) != queue_limit.as_ref()),
                );
            }
        }
        match needs.front() {
            None => self.start(now, receipt),
            Some(first) => {
                let scan = one_scan(first, now);
                let attempt = self.attempts.get_mut(&receipt).expect("checked above");
                attempt.phase = AttemptPhase::Acquiring {
                    needs,
                    scan,
                    trying: false,
                    sent_at: now,
                    then: None,
                };
                self.continue_acquiring(now, draw, receipt);
            }
        }
        self.rearm(receipt);
    }

    /// Drives the attempt's slot scan until a try goes out, every slot is
    /// held (the handler starts) or a limit is full (the job goes back).
    fn continue_acquiring(&mut self, now: Timestamp, draw: u64, receipt: Receipt) {
        loop {
            let process = self.config.process;
            let lease_ttl = self.config.limits.lease_ttl;
            let attempt = self.attempts.get_mut(&receipt).expect("acquiring");
            let AttemptPhase::Acquiring {
                needs,
                scan,
                trying,
                sent_at,
                ..
            } = &mut attempt.phase
            else {
                unreachable!("continue_acquiring runs only while acquiring")
            };
            match scan.poll(now, draw) {
                AcquireStep::Try(slot) => {
                    *trying = true;
                    *sent_at = now;
                    let limit = needs.front().expect("a scan has its limit");
                    let command = Command::SlotTry(cmd::SlotTry {
                        semaphore: limit.semaphore.clone(),
                        permits: limit.permits,
                        slot,
                        holder: process,
                        lease_ttl: Some(lease_ttl),
                    });
                    let lane = Lane::SlotTry {
                        receipt,
                        slot,
                        sent_at: now,
                    };
                    self.execute(lane, command);
                    return;
                }
                AcquireStep::Acquired(grant) => {
                    let limit = needs.pop_front().expect("a scan has its limit");
                    let next = needs.front().map(|l| one_scan(l, now));
                    let lease_until = sent_at.plus(lease_ttl);
                    attempt.slots.push(HeldSlot {
                        limit,
                        grant,
                        lease_until,
                        renewing: false,
                    });
                    match next {
                        Some(next) => *scan = next,
                        None => return self.start(now, receipt),
                    }
                }
                AcquireStep::TimedOut { .. } | AcquireStep::SleepUntil(_) => {
                    self.stats.limited += 1;
                    let (lo, hi) = (self.config.limits.retry_min, self.config.limits.retry_max);
                    let span = hi.0.saturating_sub(lo.0).saturating_add(1);
                    let pause = Millis(lo.0 + super::mix(draw, &receipt) % span.max(1));
                    let back = HandlerResult::Snooze(pause);
                    return self.abandon(now, receipt, Some(back), Abandoned::Limited);
                }
                AcquireStep::Disabled => unreachable!("a limit has at least one permit"),
            }
        }
    }

    pub(super) fn on_slot_try(
        &mut self,
        now: Timestamp,
        draw: u64,
        receipt: Receipt,
        slot: SlotIndex,
        answer: TryAnswer,
    ) {
        let lease_ttl = self.config.limits.lease_ttl;
        let attempt = self
            .attempts
            .get_mut(&receipt)
            .expect("an attempt with a slot try in flight stays until the try returns");
        let AttemptPhase::Acquiring {
            needs,
            scan,
            trying,
            then,
            ..
        } = &mut attempt.phase
        else {
            unreachable!("a slot try is in flight only while acquiring")
        };
        *trying = false;
        if let Some(then) = then.take() {
            // Stopped while the try was out: keep what it got, so that it
            // is released with the rest.
            if let TryAnswer::Acquired { grant, sent_at } = answer {
                let limit = needs.front().cloned().expect("a scan has its limit");
                attempt.slots.push(HeldSlot {
                    limit,
                    grant,
                    lease_until: sent_at.plus(lease_ttl),
                    renewing: false,
                });
            }
            let (report, why) = match then {
                AfterStop::Discard => (None, Abandoned::Fenced),
                AfterStop::Report(result) => (Some(result), Abandoned::HandedBack),
            };
            return self.abandon(now, receipt, report, why);
        }
        let result = match answer {
            TryAnswer::Acquired { grant, .. } => TryResult::Acquired(grant),
            TryAnswer::Busy => TryResult::Busy,
            TryAnswer::Error => TryResult::Error,
            TryAnswer::Refused(reject) => {
                let semaphore = &needs.front().expect("a scan has its limit").semaphore;
                let fail = HandlerResult::Fail(FailError {
                    retry: Retry::Never,
                    message: format!("limit {semaphore} refused: {reject}"),
                });
                return self.abandon(now, receipt, Some(fail), Abandoned::LimitRefused);
            }
        };
        scan.handle_try(slot, result);
        self.continue_acquiring(now, draw, receipt);
        self.rearm(receipt);
    }

    /// Every slot is held: start the handler (unless shutdown began, then
    /// the job goes back).
    fn start(&mut self, now: Timestamp, receipt: Receipt) {
        if self.phase != Phase::Running {
            let back = HandlerResult::Snooze(Millis::ZERO);
            return self.abandon(now, receipt, Some(back), Abandoned::HandedBack);
        }
        let renew_every = Millis(self.config.limits.lease_ttl.0 / 3);
        let attempt = self.attempts.get_mut(&receipt).expect("starting");
        attempt.phase = AttemptPhase::Running;
        attempt.renew_at = (!attempt.slots.is_empty()).then(|| now.plus(renew_every));
        let job = attempt.job.take().expect("a job starts once");
        self.effects.push_back(Effect::StartHandler(job));
        self.rearm(receipt);
    }

    /// The attempt will not start here: release what it holds, report
    /// `report` if any, and tell the caller to forget it.
    fn abandon(
        &mut self,
        now: Timestamp,
        receipt: Receipt,
        report: Option<HandlerResult>,
        why: Abandoned,
    ) {
        self.effects.push_back(Effect::Abandon(receipt, why));
        self.end_attempt(now, receipt, report);
    }

    /// Stops the attempt for `reason`, however far it got.
    pub(super) fn stop(&mut self, now: Timestamp, receipt: Receipt, reason: StopReason) {
        let (grace, ttl) = (self.config.stop_grace, self.config.limits.lease_ttl);
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        let lease = attempt.lease_deadline(ttl);
        let leave = match reason {
            StopReason::Fenced => AfterStop::Discard,
            StopReason::Shutdown | StopReason::SlotLost => {
                AfterStop::Report(HandlerResult::Snooze(Millis::ZERO))
            }
            StopReason::Timeout => AfterStop::Report(timed_out()),
        };
        match &mut attempt.phase {
            AttemptPhase::Running => {
                self.effects.push_back(Effect::StopHandler(receipt, reason));
                let abort_at = if reason == StopReason::Timeout {
                    // Past its deadline there is no grace: storage rescues
                    // it now.
                    self.effects.push_back(Effect::AbortHandler(receipt));
                    self.stats.timeouts += 1;
                    None
                } else {
                    // Gone before a slot's lease could lapse, whatever the
                    // grace says.
                    let at = now.plus(grace);
                    Some(lease.map_or(at, |l| l.min(at)))
                };
                if reason == StopReason::SlotLost {
                    self.stats.slots_lost += 1;
                }
                attempt.phase = AttemptPhase::Stopping {
                    then: leave,
                    abort_at,
                };
            }
            // Already stopping: only the news that it is not ours changes
            // what it leaves.
            AttemptPhase::Stopping { then, .. } => {
                if reason == StopReason::Fenced {
                    *then = AfterStop::Discard;
                }
            }
            AttemptPhase::Acquiring {
                trying: true, then, ..
            } => {
                if then.is_none() || reason == StopReason::Fenced {
                    *then = Some(leave);
                }
            }
            AttemptPhase::Preparing | AttemptPhase::Acquiring { .. } => {
                let (report, why) = match leave {
                    AfterStop::Discard => (None, Abandoned::Fenced),
                    AfterStop::Report(result) if reason == StopReason::Timeout => {
                        (Some(result), Abandoned::TimedOut)
                    }
                    AfterStop::Report(result) => (Some(result), Abandoned::HandedBack),
                };
                return self.abandon(now, receipt, report, why);
            }
        }
        self.rearm(receipt);
    }

    /// Storage says the attempt is no longer ours.
    pub(super) fn fence(&mut self, now: Timestamp, receipt: Receipt) {
        match self.attempts.get(&receipt) {
            Some(attempt) if attempt.is_ours() => {
                self.stats.fenced += 1;
                self.stop(now, receipt, StopReason::Fenced);
            }
            _ => {}
        }
    }

    /// The handler's task ended, with its result or aborted.
    pub(super) fn on_handler_end(
        &mut self,
        now: Timestamp,
        receipt: Receipt,
        result: Option<HandlerResult>,
    ) {
        let Some(attempt) = self.attempts.get(&receipt) else {
            return;
        };
        let report = match &attempt.phase {
            AttemptPhase::Running => Some(result.unwrap_or_else(|| {
                HandlerResult::Fail(FailError {
                    retry: Retry::Backoff,
                    message: "handler task ended without a result".to_string(),
                })
            })),
            AttemptPhase::Stopping { then, .. } => {
                if result.is_some() {
                    self.stats.stopped += 1;
                }
                match then {
                    AfterStop::Discard => None,
                    AfterStop::Report(result) => Some(result.clone()),
                }
            }
            // No handler was started: the caller reports something it did
            // not run. Ignore it; the attempt goes on.
            AttemptPhase::Preparing | AttemptPhase::Acquiring { .. } => return,
        };
        self.end_attempt(now, receipt, report);
    }

    /// The attempt is over here: release its slots and buffer its result.
    pub(super) fn end_attempt(
        &mut self,
        now: Timestamp,
        receipt: Receipt,
        report: Option<HandlerResult>,
    ) {
        let attempt = self.attempts.remove(&receipt).expect("ending an attempt");
        if let Some(at) = attempt.timer {
            self.timers.remove(&(at, receipt));
        }
        self.queues[attempt.queue].running -= 1;
        for slot in attempt.slots {
            let command = Command::SlotRelease(cmd::SlotRelease {
                semaphore: slot.limit.semaphore,
                grant: slot.grant,
            });
            self.execute(Lane::SlotRelease, command);
        }
        if let Some(result) = report {
            self.buffered.push_back((now, receipt, result));
        }
    }

    /// Re-arms the attempt's timer after its state changed.
    pub(super) fn rearm(&mut self, receipt: Receipt) {
        let (ttl, grace) = (self.config.limits.lease_ttl, self.config.stop_grace);
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        let next = attempt.next_timer(ttl, grace);
        if next == attempt.timer {
            return;
        }
        if let Some(at) = attempt.timer {
            self.timers.remove(&(at, receipt));
        }
        if let Some(at) = next {
            self.timers.insert((at, receipt));
        }
        attempt.timer = next;
    }

    /// Every attempt timer that is due: deadlines, aborts, renewals, and
    /// leases that lapsed without an accepted renewal.
    pub(super) fn attempt_timers(&mut self, now: Timestamp, _draw: u64) {
        let due: Vec<Receipt> = self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, r)| *r)
            .collect();
        for receipt in due {
            self.on_attempt_timer(now, receipt);
            self.rearm(receipt);
        }
    }

    fn on_attempt_timer(&mut self, now: Timestamp, receipt: Receipt) {
        let (ttl, grace) = (self.config.limits.lease_ttl, self.config.stop_grace);
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        let lease = attempt.lease_deadline(ttl);
        match &mut attempt.phase {
            AttemptPhase::Stopping {
                abort_at: abort_at @ Some(_),
                ..
            } if abort_at.is_some_and(|at| now >= at) || lease.is_some_and(|l| now >= l) => {
                *abort_at = None;
                self.effects.push_back(Effect::AbortHandler(receipt));
            }
            AttemptPhase::Stopping { .. } => {}
            _ if now >= attempt.deadline => return self.stop(now, receipt, StopReason::Timeout),
            AttemptPhase::Running
                if lease.is_some_and(|l| now >= l.minus(stop_ahead(ttl, grace))) =>
            {
                return self.stop(now, receipt, StopReason::SlotLost)
            }
            _ => {}
        }
        self.renew_if_due(now, receipt);
    }

    /// Renews the slots of a handler that is running (or stopping: it may
    /// still work until it ends) every third of the lease.
    fn renew_if_due(&mut self, now: Timestamp, receipt: Receipt) {
        let (ttl, every) = (
            self.config.limits.lease_ttl,
            self.config.limits.lease_ttl.0 / 3,
        );
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        let due = attempt.has_handler() && attempt.renew_at.is_some_and(|at| at <= now);
        if !due {
            return;
        }
        attempt.renew_at = Some(now.plus(Millis(every)));
        let mut commands = Vec::new();
        for (index, slot) in attempt.slots.iter_mut().enumerate() {
            if slot.renewing {
                continue;
            }
            slot.renewing = true;
            let command = Command::SlotRenew(cmd::SlotRenew {
                semaphore: slot.limit.semaphore.clone(),
                grant: slot.grant,
                lease_ttl: ttl,
            });
            commands.push((
                Lane::SlotRenew {
                    receipt,
                    index,
                    sent_at: now,
                },
                command,
            ));
        }
        for (lane, command) in commands {
            self.execute(lane, command);
        }
    }

    pub(super) fn on_renewed(
        &mut self,
        now: Timestamp,
        receipt: Receipt,
        index: usize,
        sent_at: Timestamp,
        result: Result<(), Reject>,
    ) {
        let ttl = self.config.limits.lease_ttl;
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        let slot = &mut attempt.slots[index];
        slot.renewing = false;
        match result {
            Ok(()) => slot.lease_until = slot.lease_until.max(sent_at.plus(ttl)),
            // The lease lapsed and the slot may be someone else's.
            Err(_) => {
                if attempt.phase == AttemptPhase::Running {
                    return self.stop(now, receipt, StopReason::SlotLost);
                }
            }
        }
        self.rearm(receipt);
    }

    /// A renewal came back without an answer: the next one will tell, and
    /// the lease's own expiry stops the handler if none is accepted in time.
    pub(super) fn on_renew_unknown(&mut self, receipt: Receipt, index: usize) {
        if let Some(attempt) = self.attempts.get_mut(&receipt) {
            attempt.slots[index].renewing = false;
        }
        self.rearm(receipt);
    }
}
