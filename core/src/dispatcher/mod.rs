//! The per-process worker logic, sans IO: when and how much to claim, the
//! life of every attempt this process holds (its limits, its deadline, how
//! it is stopped and handed back), when to flush batched results, when to
//! heartbeat, when to lead maintenance, and how to shut down.
//!
//! The dispatcher never talks to storage or runs a handler. The caller (the
//! runtime's worker pool, or the simulator) drives it:
//!
//! 1. feed an [`Input`] with [`Dispatcher::handle`] (a timer fired, a command
//!    returned, a handler ended, a notification arrived, shutdown);
//! 2. drain [`Dispatcher::poll_effect`] and do what each [`Effect`] says
//!    (execute a storage command and feed its outcome back, prepare or
//!    start a handler, stop or abort one);
//! 3. sleep until [`Dispatcher::poll_timeout`] and feed [`Input::Tick`].
//!
//! Time is the caller's *monotonic* clock and must not go backwards
//! between calls. It never reaches storage: every time a command carries
//! is a duration (a snooze, a retention), and storage applies it on its own
//! clock. A time budget that storage sets (an attempt's deadline) arrives
//! as storage's `deadline - claimed_at` and is run on this clock from the
//! moment the claim was sent, so a clock that is ahead, behind or stepped
//! changes nothing. Each call takes a uniform random `draw`, used only for
//! jitter, so a seeded caller replays exactly.
//!
//! # An attempt's life
//!
//! A claimed job is an *attempt* of this process until it is reported or
//! handed back. [`Effect::Prepare`] asks the caller which cluster-wide
//! [`Limit`]s the job runs under (its key limit; the queue's limit comes
//! from the configuration); the dispatcher then takes one slot of each (a
//! scan with no waiting: a full limit hands the job back, without using an
//! attempt, for a jittered pause), and only then starts the handler. While
//! it runs, the slots are renewed on a timer, and a slot that cannot be
//! renewed before its lease would lapse stops the handler. A handler is
//! stopped when storage fences its attempt, when it runs past its deadline,
//! when it loses a slot, and at the end of shutdown's patience: first told
//! ([`Effect::StopHandler`]), then, after `stop_grace`, aborted
//! ([`Effect::AbortHandler`]). Its slots are released, and its job handed
//! back, only when the caller reports that the handler really ended
//! ([`Input::HandlerDone`] or [`Input::HandlerAborted`]).
//!
//! # Lanes
//!
//! Storage commands run in *lanes*: at most one claim per queue, one
//! claimer acquisition per queue, one heartbeat chunk, one report flush,
//! one maintenance step, and one slot command per attempt are in flight at
//! a time. Lanes keep the logic simple and bound the load a process puts
//! on the database.
//!
//! # Hints and facts
//!
//! A cancel notification is a hint: anyone who can connect can send one.
//! [`Input::CancelHint`] makes the dispatcher heartbeat that attempt, and
//! only storage's refusal stops the handler. [`Input::Fenced`] is a fact
//! (a refused heartbeat the handler sent itself).

mod attempt;
mod config;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::claimer::ClaimerGrant;
use crate::cmd;
use crate::ids::{Attempt, QueueName, Receipt};
use crate::job::{FailError, Retry};
use crate::leader::LeaderGrant;
use crate::protocol::{answer_of, ClaimedJob, Command, Failure, Outcome};
use crate::reject::{Reject, StateName};
use crate::time::{Millis, Timestamp};

use attempt::{AttemptState, Lane};
pub use config::{
    DispatcherConfig, InvalidDispatcherConfig, InvalidLimit, Limit, LimitConfig, QueueConfig,
    MAINTENANCE_BATCH_MAX,
};

/// What a handler decided about its job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HandlerResult {
    /// Done.
    Complete,
    /// Failed; retry per `retry` if attempts remain.
    Fail(FailError),
    /// Not now: run again after this delay, without using an attempt.
    Snooze(Millis),
    /// Parked until an external callback, for at most this long.
    WaitExternal(Millis),
    /// The job should not run at all: cancel it (receipt-guarded).
    Cancel,
}

/// Where a handler's result leaves its job, as storage will decide it
/// (for counting; storage's answer is the word that counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Settled {
    /// Completed.
    Completed,
    /// Failed, with attempts left: retried later.
    Retry,
    /// Failed for good (a terminal error, or the last attempt).
    Failed,
    /// Snoozed.
    Snoozed,
    /// Waiting for an external callback.
    Waiting,
    /// Cancelled.
    Cancelled,
}

impl HandlerResult {
    /// Where this result leaves attempt `attempt` of `max_attempts`: the
    /// same rule as [`crate::Job::fail`] (a terminal error, or a failure of
    /// the last attempt, fails the job for good).
    pub fn settles(&self, attempt: Attempt, max_attempts: Attempt) -> Settled {
        match self {
            HandlerResult::Complete => Settled::Completed,
            HandlerResult::Fail(FailError {
                retry: Retry::Never,
                ..
            }) => Settled::Failed,
            HandlerResult::Fail(_) if attempt >= max_attempts => Settled::Failed,
            HandlerResult::Fail(_) => Settled::Retry,
            HandlerResult::Snooze(_) => Settled::Snoozed,
            HandlerResult::WaitExternal(_) => Settled::Waiting,
            HandlerResult::Cancel => Settled::Cancelled,
        }
    }
}

/// Identifies an executed command, so its outcome can be routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId(pub u64);

/// Why storage refused a command outright (it was certainly not applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// Storage refused the data the command carries; the same command
    /// would be refused again, but other commands work.
    Data,
    /// Storage is not usable as configured (a missing schema, a command it
    /// does not implement): the process shuts down, flushing what it can.
    Misconfigured,
}

/// Why a claimed job cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unrunnable {
    /// No handler for its kind in this process (the claim asks only for
    /// the kinds it has, so this is a configuration race): hand it back.
    NoHandler,
    /// Its payload cannot run at all (it does not decode, or names an
    /// invalid limit): fail it for good with this reason.
    Invalid(String),
}

/// Something that happened to the process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// A timer from [`Dispatcher::poll_timeout`] is due (extra ticks are harmless).
    Tick,
    /// New jobs were enqueued on this queue (LISTEN/NOTIFY).
    Notified(QueueName),
    /// A command from [`Effect::Execute`] returned.
    Outcome(CommandId, Outcome),
    /// A command from [`Effect::Execute`] failed without a known result
    /// (connection lost mid-flight): it may or may not have been applied.
    Lost(CommandId),
    /// A command from [`Effect::Execute`] was refused by storage and
    /// certainly not applied.
    Refused(CommandId, Refusal),
    /// The answer to [`Effect::Prepare`], job for job: each job's own
    /// limits (beside its queue's), or why it cannot run.
    Prepared(Vec<(Receipt, Result<Vec<Limit>, Unrunnable>)>),
    /// A handler started by [`Effect::StartHandler`] returned this result
    /// (its task has ended).
    HandlerDone(Receipt, HandlerResult),
    /// A handler's task panicked, with this message: its attempt fails
    /// (and is retried with backoff while attempts remain).
    HandlerPanicked(Receipt, String),
    /// A handler's task ended without a result: it was aborted after
    /// [`Effect::AbortHandler`] (or ended some other way the caller could
    /// not read a result from).
    HandlerAborted(Receipt),
    /// Storage says this attempt was taken away (a handler's own heartbeat
    /// was refused): stop its handler now. A receipt that is not an attempt
    /// here is ignored.
    Fenced(Receipt),
    /// A notification claims this attempt was taken away. Notifications
    /// can be forged, so the dispatcher asks storage (a heartbeat of that
    /// attempt) and stops the handler only if storage refuses it.
    CancelHint(Receipt),
    /// Stop: finish or stop running handlers, flush, release, resign.
    Shutdown,
}

/// Why a handler should stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopReason {
    /// The job was cancelled, rescued or otherwise fenced: the receipt is
    /// stale and the handler's result will be discarded.
    Fenced,
    /// Shutdown ran out of patience: the job is handed back once the
    /// handler ended.
    Shutdown,
    /// The attempt ran past its deadline: it is failed (and retried if
    /// attempts remain) once the handler ended. Aborted at once.
    Timeout,
    /// A slot of one of its limits could not be kept: the job is handed
    /// back once the handler ended.
    SlotLost,
}

/// Why a prepared attempt will not start here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Abandoned {
    /// A limit was full: handed back for a jittered pause.
    Limited,
    /// A limit was refused (its size disagrees with its first use): failed.
    LimitRefused,
    /// It cannot run here ([`Unrunnable`]).
    Unrunnable,
    /// Shutdown began before it started: handed back.
    HandedBack,
    /// Storage fenced it before it started.
    Fenced,
    /// Its deadline passed before it started: failed.
    TimedOut,
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// Apply this storage command and feed back [`Input::Outcome`] (or
    /// [`Input::Lost`], [`Input::Refused`]) with the same id.
    Execute(CommandId, Command),
    /// Say which limits these claimed jobs (one claim's) run under — for
    /// the runtime, each one's `JobArgs::concurrency` — with one
    /// [`Input::Prepared`]. Decide nothing: the dispatcher takes the slots
    /// and starts the handlers.
    Prepare(Vec<ClaimedJob>),
    /// Run this job's handler and feed back [`Input::HandlerDone`] (or
    /// [`Input::HandlerAborted`]) once its task has ended. Its payload is
    /// empty: it went with [`Effect::Prepare`].
    StartHandler(ClaimedJob),
    /// Tell this handler to stop (fire its cancellation token). Keep its
    /// task: its end is still to be reported.
    StopHandler(Receipt, StopReason),
    /// Abort this handler's task now, and report [`Input::HandlerAborted`]
    /// once it has really ended.
    AbortHandler(Receipt),
    /// This prepared attempt will not start here: forget what was prepared.
    Abandon(Receipt, Abandoned),
    /// Shutdown finished: nothing runs, everything was flushed and released.
    ShutdownComplete,
}

/// Why the dispatcher wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Poll queue `n` (index into the configured queues) for work.
    Claim(usize),
    /// Flush buffered results.
    Flush,
    /// Heartbeat running jobs.
    Heartbeat,
    /// Maintenance (and leader renewal) is due.
    Maintenance,
    /// Shutdown's patience runs out.
    ShutdownDeadline,
    /// An attempt's timer: its deadline, its abort after a stop, or its
    /// slots' renewal or expiry.
    Attempt,
}

/// Deliberate bugs in the dispatcher (feature `mutants`), each one a
/// defect it once had or a bug an audit injected: the pool simulation
/// (`tests/tests/pool_simulation.rs`, which shuts pools down at drawn
/// moments) must catch every one, and the dispatcher model
/// (`model-check/tests/dispatcher_shutdown.rs`) every one it can reach
/// (all but `TrustCancelHints`: it sends no cancel notifications).
#[cfg(feature = "mutants")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DispatcherMutation {
    /// At shutdown's deadline, hand the jobs back and release their slots
    /// at once, while their handlers may still run.
    HandBackBeforeHandlerEnds,
    /// Take a cancel notification as storage's word: stop the handler and
    /// drop its attempt without asking storage.
    TrustCancelHints,
    /// Jobs a claim brings in while the dispatcher is shutting down are
    /// dropped instead of handed back: they stay running in the name of a
    /// process that is gone until a rescue finds them, their attempt spent
    /// with no handler started (one of the bugs the audit of issue 14 found
    /// slipping past every checker).
    DropClaimedWhileStopping,
    /// Shutdown completes while results are still buffered (a report's
    /// retry waiting out its pause after a lost answer): they are never
    /// flushed, and their jobs stay running until a rescue fails them.
    ShutdownBeforeFlush,
    /// A claim asks for as many jobs as the queue has workers rather than
    /// as many as are free: the extra jobs run above `max_workers`.
    ClaimForAllWorkers,
}

#[cfg(feature = "mutants")]
impl DispatcherMutation {
    /// Every dispatcher mutation, in a fixed order.
    pub const ALL: [DispatcherMutation; 5] = [
        DispatcherMutation::HandBackBeforeHandlerEnds,
        DispatcherMutation::TrustCancelHints,
        DispatcherMutation::DropClaimedWhileStopping,
        DispatcherMutation::ShutdownBeforeFlush,
        DispatcherMutation::ClaimForAllWorkers,
    ];
}

/// Counters a caller can export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stats {
    /// Jobs claimed.
    pub claimed: u64,
    /// Non-empty claims.
    pub claims: u64,
    /// Claimer lease rows rewritten.
    pub lease_refreshes: u64,
    /// Claimer leases acquired (taken over or opened).
    pub lease_acquisitions: u64,
    /// Results accepted by storage.
    pub reported: u64,
    /// Attempts fenced by storage, and results refused because of it.
    pub fenced: u64,
    /// Commands whose result was lost.
    pub lost: u64,
    /// Commands storage refused outright.
    pub refused: u64,
    /// Results given up on because storage refused them even alone; the
    /// job is rescued in time.
    pub dropped: u64,
    /// Jobs promoted, rescued and pruned while leading.
    pub maintained: u64,
    /// Attempts handed back because a limit was full.
    pub limited: u64,
    /// Handlers' results discarded because they were stopped.
    pub stopped: u64,
    /// Handlers stopped at their deadline.
    pub timeouts: u64,
    /// Handlers stopped because a limit's slot could not be kept.
    pub slots_lost: u64,
    /// Cancel notifications checked with storage.
    pub hints: u64,
    /// Cancel notifications storage contradicted (forged, or stale).
    pub hints_refuted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueueState {
    grant: Option<ClaimerGrant>,
    /// Attempts of this queue held here, in any phase.
    running: u32,
    next_poll: Timestamp,
    /// When a worker first became free since the last claim was sent.
    freed_at: Option<Timestamp>,
    /// A wake-up arrived while a claim was in flight.
    notified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Running,
    Draining { deadline: Timestamp },
    Releasing,
    Done,
}

/// One process's worker logic. See the module docs for the call order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dispatcher {
    config: DispatcherConfig,
    phase: Phase,
    queues: Vec<QueueState>,
    /// Each queue's cluster-wide limit, if it has one (by queue index).
    queue_limits: Vec<Option<Limit>>,
    attempts: BTreeMap<Receipt, AttemptState>,
    /// Each attempt's next timer, earliest first.
    timers: BTreeSet<(Timestamp, Receipt)>,
    buffered: VecDeque<(Timestamp, Receipt, HandlerResult)>,
    /// Results to flush alone: their batch was refused for its data.
    solo: BTreeSet<Receipt>,
    reporting: BTreeMap<Receipt, HandlerResult>,
    flush_hold_until: Timestamp,
    next_heartbeat: Timestamp,
    /// The chunks of the current heartbeat round still to send.
    heartbeat_chunks: VecDeque<Vec<Receipt>>,
    next_maintenance: Timestamp,
    leader: Option<LeaderGrant>,
    maintenance_due: bool,
    in_flight: BTreeMap<CommandId, Lane>,
    next_id: u64,
    effects: VecDeque<Effect>,
    stats: Stats,
    #[cfg(feature = "mutants")]
    mutation: Option<DispatcherMutation>,
}

impl Dispatcher {
    /// The same dispatcher, but making one deliberate mistake (tests only).
    #[cfg(feature = "mutants")]
    pub fn with_mutation(mut self, mutation: Option<DispatcherMutation>) -> Dispatcher {
        self.mutation = mutation;
        self
    }

    /// Whether this dispatcher makes the deliberate mistake `m`.
    #[cfg(feature = "mutants")]
    fn mutant(&self, m: DispatcherMutation) -> bool {
        self.mutation == Some(m)
    }

    /// A dispatcher starting at `now`.
    pub fn new(config: DispatcherConfig, now: Timestamp) -> Dispatcher {
        let queues = config
            .queues
            .iter()
            .map(|_| QueueState {
                grant: None,
                running: 0,
                next_poll: now,
                freed_at: None,
                notified: false,
            })
            .collect();
        let queue_limits = config
            .queues
            .iter()
            .map(|q| config.queue_limit(&q.queue))
            .collect();
        Dispatcher {
            queue_limits,
            next_heartbeat: now.plus(config.heartbeat_interval),
            next_maintenance: now,
            config,
            phase: Phase::Running,
            queues,
            attempts: BTreeMap::new(),
            timers: BTreeSet::new(),
            buffered: VecDeque::new(),
            solo: BTreeSet::new(),
            reporting: BTreeMap::new(),
            flush_hold_until: now,
            heartbeat_chunks: VecDeque::new(),
            leader: None,
            maintenance_due: false,
            in_flight: BTreeMap::new(),
            next_id: 0,
            effects: VecDeque::new(),
            stats: Stats::default(),
            #[cfg(feature = "mutants")]
            mutation: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DispatcherConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The receipts of the attempts held here (preparing, taking slots,
    /// running, or stopping).
    pub fn running(&self) -> impl Iterator<Item = Receipt> + '_ {
        self.attempts.keys().copied()
    }

    /// The receipts of the handlers started and not yet ended.
    pub fn handlers(&self) -> impl Iterator<Item = Receipt> + '_ {
        self.attempts
            .iter()
            .filter(|(_, a)| a.has_handler())
            .map(|(r, _)| *r)
    }

    /// The queue an attempt's job was claimed from.
    pub fn queue_of(&self, receipt: Receipt) -> Option<&QueueName> {
        self.attempts
            .get(&receipt)
            .map(|a| &self.config.queues[a.queue].queue)
    }

    /// The leader lease this process believes it holds.
    pub fn leader(&self) -> Option<LeaderGrant> {
        self.leader
    }

    /// The claimer leases this process believes it holds, by queue.
    pub fn claimers(&self) -> impl Iterator<Item = (&QueueName, ClaimerGrant)> + '_ {
        self.config
            .queues
            .iter()
            .zip(&self.queues)
            .filter_map(|(c, q)| q.grant.map(|g| (&c.queue, g)))
    }

    /// The limit slots this process believes it holds, by attempt.
    pub fn slots(&self) -> impl Iterator<Item = (Receipt, &Limit, crate::SlotGrant)> + '_ {
        self.attempts
            .iter()
            .flat_map(|(r, a)| a.slots.iter().map(move |s| (*r, &s.limit, s.grant)))
    }

    /// Whether shutdown finished.
    pub fn is_shut_down(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Feeds one input at `now`; then drain [`Dispatcher::poll_effect`].
    /// `draw` is a uniform random number, used only for jitter.
    pub fn handle(&mut self, now: Timestamp, draw: u64, input: Input) {
        match input {
            Input::Tick => {}
            Input::Notified(queue) => self.on_notified(now, &queue),
            Input::Outcome(id, outcome) => self.on_outcome(now, draw, id, outcome),
            Input::Lost(id) => self.on_lost(now, draw, id),
            Input::Refused(id, refusal) => self.on_refused(now, draw, id, refusal),
            Input::Prepared(answers) => {
                for (receipt, limits) in answers {
                    self.on_prepared(now, draw, receipt, limits);
                }
            }
            Input::HandlerDone(receipt, result) => self.on_handler_end(now, receipt, Some(result)),
            Input::HandlerPanicked(receipt, message) => {
                let failed = HandlerResult::Fail(FailError {
                    retry: Retry::Backoff,
                    message: format!("handler panicked: {message}"),
                });
                self.on_handler_end(now, receipt, Some(failed))
            }
            Input::HandlerAborted(receipt) => self.on_handler_end(now, receipt, None),
            Input::Fenced(receipt) => self.fence(now, receipt),
            Input::CancelHint(receipt) => self.on_cancel_hint(now, receipt),
            Input::Shutdown => self.begin_shutdown(now),
        }
        self.step(now, draw);
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("dispatcher invariant broken at {now}: {broken}");
        }
    }

    /// Checks the dispatcher's own bookkeeping: per-queue attempt counts
    /// match the attempts and stay within `max_workers`; a result is never
    /// both buffered and being reported; a receipt is never both held and
    /// reported; every attempt's timer is armed; no heartbeat chunk is
    /// larger than the backend takes.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            let counted = self.attempts.values().filter(|a| a.queue == i).count();
            if counted != q.running as usize {
                return Err(format!(
                    "queue {i}: running count {} but {counted} attempts",
                    q.running
                ));
            }
            if q.running > self.config.queues[i].max_workers {
                return Err(format!(
                    "queue {i}: {} running above max_workers",
                    q.running
                ));
            }
        }
        for (_, receipt, _) in &self.buffered {
            if self.reporting.contains_key(receipt) || self.attempts.contains_key(receipt) {
                return Err(format!(
                    "{receipt} is buffered and also running or being reported"
                ));
            }
        }
        if let Some(receipt) = self
            .reporting
            .keys()
            .find(|r| self.attempts.contains_key(r))
        {
            return Err(format!("{receipt} is being reported while still running"));
        }
        let reported: usize = self
            .in_flight
            .values()
            .map(|lane| match lane {
                Lane::Report(rs) => rs.len(),
                _ => 0,
            })
            .sum();
        if reported != self.reporting.len() {
            return Err(format!(
                "{reported} results in flight but {} remembered",
                self.reporting.len()
            ));
        }
        self.check_attempt_timers()?;
        let biggest = self.in_flight.values().map(Lane::items).max().unwrap_or(0);
        if biggest > self.config.batch_max {
            return Err(format!(
                "a command of {biggest} items in flight, above the backend's {}",
                self.config.batch_max
            ));
        }
        Ok(())
    }

    fn check_attempt_timers(&self) -> Result<(), String> {
        let (ttl, grace) = (self.config.limits.lease_ttl, self.config.stop_grace);
        for (receipt, attempt) in &self.attempts {
            let armed = attempt
                .timer
                .is_none_or(|at| self.timers.contains(&(at, *receipt)));
            if !armed || attempt.timer != attempt.next_timer(ttl, grace) {
                return Err(format!(
                    "{receipt}: its timer is not armed as its state says"
                ));
            }
        }
        if self.timers.len() != self.attempts.values().filter(|a| a.timer.is_some()).count() {
            return Err("a timer is armed for an attempt that is gone".into());
        }
        Ok(())
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When to feed the next [`Input::Tick`], and why. `None` when only an
    /// outcome, a handler or a notification can move things on.
    ///
    /// A timer whose work waits for a command in flight (a flush while the
    /// last one is out, a heartbeat round still answering, maintenance in
    /// progress) is left out: its time may have passed, and a tick could
    /// not act on it, so the caller would spin. After a tick, the time
    /// returned is later than the tick's, unless the tick produced effects.
    pub fn poll_timeout(&self) -> Option<(Timestamp, Reason)> {
        let mut timers: Vec<(Timestamp, Reason)> = Vec::new();
        match self.phase {
            Phase::Done => return None,
            Phase::Releasing => {}
            Phase::Running => {
                for (i, q) in self.queues.iter().enumerate() {
                    if !self.lane_busy(&Lane::Acquire(i)) && q.running < self.capacity(i) {
                        let at = q.next_poll.max(self.claim_ready_at(i));
                        timers.push((at, Reason::Claim(i)));
                    }
                }
                let maintaining =
                    self.lane_busy(&Lane::Leader) || self.lane_busy(&Lane::Maintenance);
                if self.config.lead && !maintaining {
                    timers.push((self.next_maintenance, Reason::Maintenance));
                }
            }
            Phase::Draining { deadline } => {
                if self.attempts.values().any(AttemptState::is_stoppable) {
                    timers.push((deadline, Reason::ShutdownDeadline));
                }
            }
        }
        let flushing = self.lane_busy(&Lane::Report(Vec::new()));
        if let (Some((at, _, _)), false) = (self.buffered.front(), flushing) {
            let due = at.plus(self.config.flush_delay).max(self.flush_hold_until);
            timers.push((due, Reason::Flush));
        }
        let beating =
            !self.heartbeat_chunks.is_empty() || self.lane_busy(&Lane::Heartbeat(Vec::new()));
        if !self.attempts.is_empty() && self.phase != Phase::Releasing && !beating {
            timers.push((self.next_heartbeat, Reason::Heartbeat));
        }
        if let Some(&(at, _)) = self.timers.first() {
            timers.push((at, Reason::Attempt));
        }
        timers.into_iter().min()
    }

    fn execute(&mut self, lane: Lane, command: Command) -> CommandId {
        let id = CommandId(self.next_id);
        self.next_id += 1;
        self.in_flight.insert(id, lane);
        self.effects.push_back(Effect::Execute(id, command));
        id
    }

    fn lane_busy(&self, lane: &Lane) -> bool {
        self.in_flight.values().any(|l| l.same_lane(lane))
    }

    /// Everything that is due at `now`, in a fixed order.
    fn step(&mut self, now: Timestamp, draw: u64) {
        self.attempt_timers(now, draw);
        self.flush_if_due(now, draw);
        self.heartbeat_if_due(now);
        match self.phase {
            Phase::Running => {
                self.maintain(now, draw);
                for i in 0..self.queues.len() {
                    self.claim_if_due(now, i);
                }
            }
            Phase::Draining { deadline } => self.drain(now, deadline),
            Phase::Releasing | Phase::Done => {}
        }
    }

    fn on_notified(&mut self, now: Timestamp, queue: &QueueName) {
        let Some(i) = self.config.queues.iter().position(|q| q.queue == *queue) else {
            return;
        };
        self.queues[i].next_poll = self.queues[i].next_poll.min(now);
        // A claim in flight may have looked before the new jobs landed.
        if self.lane_busy(&Lane::Acquire(i)) {
            self.queues[i].notified = true;
        }
    }

    fn begin_shutdown(&mut self, now: Timestamp) {
        if self.phase == Phase::Running {
            self.phase = Phase::Draining {
                deadline: now.plus(self.config.shutdown_timeout),
            };
        }
    }

    /// Heartbeats every attempt still ours, in chunks the backend takes,
    /// one chunk in flight at a time.
    fn heartbeat_if_due(&mut self, now: Timestamp) {
        let round_over =
            self.heartbeat_chunks.is_empty() && !self.lane_busy(&Lane::Heartbeat(Vec::new()));
        if round_over && now >= self.next_heartbeat && self.phase != Phase::Releasing {
            self.next_heartbeat = now.plus(self.config.heartbeat_interval);
            let receipts: Vec<Receipt> = self
                .attempts
                .iter()
                .filter(|(_, a)| a.is_ours())
                .map(|(r, _)| *r)
                .collect();
            self.heartbeat_chunks = receipts
                .chunks(self.config.batch_max.max(1))
                .map(<[Receipt]>::to_vec)
                .collect();
        }
        if self.lane_busy(&Lane::Heartbeat(Vec::new())) {
            return;
        }
        if let Some(receipts) = self.heartbeat_chunks.pop_front() {
            self.execute(
                Lane::Heartbeat(receipts.clone()),
                Command::Heartbeat(cmd::Heartbeat { receipts }),
            );
        }
    }

    /// When queue `i`'s next claim may go out as far as gathering free
    /// workers goes: at once when enough are free (or none is busy), else
    /// `claim_delay` after the first one freed.
    /// How many of queue `i`'s jobs may be held here at once: its
    /// `max_workers`, and no more than its cluster-wide limit has slots
    /// (a job claimed beyond those could only be handed back).
    fn capacity(&self, i: usize) -> u32 {
        let max_workers = self.config.queues[i].max_workers;
        self.queue_limits[i].as_ref().map_or(max_workers, |limit| {
            max_workers.min(u32::from(limit.permits).max(1))
        })
    }

    fn claim_ready_at(&self, i: usize) -> Timestamp {
        let q = &self.queues[i];
        let max_workers = self.capacity(i);
        let want = self
            .config
            .claim_batch_min
            .min(max_workers)
            .min(self.config.claim_batch_max)
            .max(1);
        if q.grant.is_none() || q.running == 0 || max_workers - q.running >= want {
            return Timestamp::ZERO;
        }
        // `freed_at` is set by `claim_if_due` for every queue with a free worker.
        q.freed_at
            .map_or(Timestamp::ZERO, |at| at.plus(self.config.claim_delay))
    }

    fn claim_if_due(&mut self, now: Timestamp, i: usize) {
        let max_workers = self.capacity(i);
        let q = &mut self.queues[i];
        if q.running < max_workers && q.freed_at.is_none() {
            q.freed_at = Some(now);
        }
        let q = &self.queues[i];
        if self.lane_busy(&Lane::Acquire(i))
            || q.running >= max_workers
            || now < q.next_poll
            || now < self.claim_ready_at(i)
        {
            return;
        }
        let queue = self.config.queues[i].queue.clone();
        match q.grant {
            None => {
                let process = self.config.process;
                self.execute(
                    Lane::Acquire(i),
                    Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, process }),
                );
            }
            Some(claimer) => {
                let batch_max = u32::try_from(self.config.batch_max).unwrap_or(u32::MAX);
                let free = max_workers - q.running;
                #[cfg(feature = "mutants")]
                let free = if self.mutant(DispatcherMutation::ClaimForAllWorkers) {
                    max_workers
                } else {
                    free
                };
                let max = free.min(self.config.claim_batch_max).min(batch_max);
                let kinds = self.config.kinds.clone();
                self.queues[i].freed_at = None;
                self.queues[i].notified = false;
                self.execute(
                    Lane::Claim {
                        queue: i,
                        max,
                        sent_at: now,
                    },
                    Command::Claim(cmd::Claim {
                        queue,
                        claimer,
                        max,
                        kinds,
                    }),
                );
            }
        }
    }

    fn maintain(&mut self, now: Timestamp, draw: u64) {
        if !self.config.lead || self.lane_busy(&Lane::Leader) || self.lane_busy(&Lane::Maintenance)
        {
            return;
        }
        if let (true, Some(leader)) = (self.maintenance_due, self.leader) {
            self.maintenance_due = false;
            let max = self.config.maintenance_batch();
            self.execute(
                Lane::Maintenance,
                Command::Promote(cmd::Promote { leader, max }),
            );
            self.execute(
                Lane::Maintenance,
                Command::Rescue(cmd::Rescue { leader, draw, max }),
            );
            self.execute(
                Lane::Maintenance,
                Command::Prune(cmd::Prune {
                    leader,
                    older_than: self.config.retention,
                    max,
                }),
            );
            return;
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now.plus(self.config.maintenance_interval);
            let process = self.config.process;
            self.execute(
                Lane::Leader,
                Command::LeaderElect(cmd::LeaderElect { process }),
            );
        }
    }

    /// The next batch of buffered results: those at the front up to
    /// `flush_max`, or a result that must go alone.
    fn next_batch(&mut self) -> Vec<(Timestamp, Receipt, HandlerResult)> {
        let front_alone = self
            .buffered
            .front()
            .is_some_and(|(_, r, _)| self.solo.contains(r));
        let take = if front_alone {
            1
        } else {
            self.buffered
                .iter()
                .take(self.config.flush_max.min(self.config.batch_max))
                .take_while(|(_, r, _)| !self.solo.contains(r))
                .count()
        };
        self.buffered.drain(..take).collect()
    }

    fn flush_if_due(&mut self, now: Timestamp, draw: u64) {
        let Some(&(oldest, _, _)) = self.buffered.front() else {
            return;
        };
        let full = self.buffered.len() >= self.config.flush_max;
        let due = now >= oldest.plus(self.config.flush_delay) || self.phase != Phase::Running;
        let held = now < self.flush_hold_until;
        if !(full || due) || held || self.lane_busy(&Lane::Report(Vec::new())) {
            return;
        }
        let batch = self.next_batch();
        let (mut completes, mut failures, mut snoozes, mut waits, mut cancels) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (_, receipt, result) in &batch {
            match result {
                HandlerResult::Complete => completes.push(*receipt),
                HandlerResult::Fail(error) => failures.push(Failure {
                    receipt: *receipt,
                    error: error.clone(),
                    draw: mix(draw, receipt),
                }),
                HandlerResult::Snooze(delay) => snoozes.push((*receipt, *delay)),
                HandlerResult::WaitExternal(timeout) => waits.push((*receipt, *timeout)),
                HandlerResult::Cancel => cancels.push(*receipt),
            }
        }
        if !cancels.is_empty() {
            let command = Command::CancelAttempts(cmd::CancelAttempts {
                receipts: cancels.clone(),
            });
            self.execute(Lane::Report(cancels), command);
        }
        if !completes.is_empty() {
            let command = Command::Complete(cmd::Complete {
                receipts: completes.clone(),
            });
            self.execute(Lane::Report(completes), command);
        }
        if !failures.is_empty() {
            let receipts = failures.iter().map(|f| f.receipt).collect();
            self.execute(
                Lane::Report(receipts),
                Command::Fail(cmd::Fail { failures }),
            );
        }
        if !snoozes.is_empty() {
            let receipts = snoozes.iter().map(|s| s.0).collect();
            self.execute(
                Lane::Report(receipts),
                Command::Snooze(cmd::Snooze { snoozes }),
            );
        }
        if !waits.is_empty() {
            let receipts = waits.iter().map(|w| w.0).collect();
            self.execute(
                Lane::Report(receipts),
                Command::WaitExternal(cmd::WaitExternal { waits }),
            );
        }
        self.reporting.extend(
            batch
                .into_iter()
                .map(|(_, receipt, result)| (receipt, result)),
        );
    }

    /// Shutdown: no new claims and no new handlers; wait for handlers until
    /// the deadline, then stop them; once every handler has ended and every
    /// job is handed back or reported, release leases and resign.
    fn drain(&mut self, now: Timestamp, deadline: Timestamp) {
        if now >= deadline {
            let receipts: Vec<Receipt> = self.attempts.keys().copied().collect();
            for receipt in receipts {
                #[cfg(feature = "mutants")]
                if self.mutant(DispatcherMutation::HandBackBeforeHandlerEnds)
                    && self.attempts[&receipt].has_handler()
                {
                    self.effects
                        .push_back(Effect::StopHandler(receipt, StopReason::Shutdown));
                    self.end_attempt(now, receipt, Some(HandlerResult::Snooze(Millis::ZERO)));
                    continue;
                }
                self.stop(now, receipt, StopReason::Shutdown);
            }
        }
        let flushed = self.buffered.is_empty();
        #[cfg(feature = "mutants")]
        let flushed = flushed || self.mutant(DispatcherMutation::ShutdownBeforeFlush);
        let settled =
            self.attempts.is_empty() && flushed && self.in_flight.values().all(Lane::is_heartbeat);
        if !settled {
            return;
        }
        self.phase = Phase::Releasing;
        self.heartbeat_chunks.clear();
        for i in 0..self.queues.len() {
            if let Some(claimer) = self.queues[i].grant.take() {
                let queue = self.config.queues[i].queue.clone();
                self.execute(
                    Lane::Release,
                    Command::ClaimerRelease(cmd::ClaimerRelease { queue, claimer }),
                );
            }
        }
        if let Some(leader) = self.leader.take() {
            self.execute(
                Lane::Release,
                Command::LeaderResign(cmd::LeaderResign { leader }),
            );
        }
        self.finish_release();
    }

    fn finish_release(&mut self) {
        if self.phase == Phase::Releasing && self.in_flight.is_empty() {
            self.phase = Phase::Done;
            self.effects.push_back(Effect::ShutdownComplete);
        }
    }

    fn on_lost(&mut self, now: Timestamp, draw: u64, id: CommandId) {
        let lane = self
            .in_flight
            .remove(&id)
            .expect("Lost for a command that is not in flight");
        self.stats.lost += 1;
        self.on_unanswered(now, draw, lane, false);
        self.finish_release();
    }

    fn on_refused(&mut self, now: Timestamp, draw: u64, id: CommandId, refusal: Refusal) {
        let lane = self
            .in_flight
            .remove(&id)
            .expect("Refused for a command that is not in flight");
        self.stats.refused += 1;
        match refusal {
            Refusal::Data => self.on_unanswered(now, draw, lane, true),
            Refusal::Misconfigured => {
                // Retrying will not help anywhere: shut down, saving what
                // can be saved. Results refused here are given up.
                self.begin_shutdown(now);
                if let Lane::Report(receipts) = &lane {
                    for receipt in receipts {
                        self.reporting.remove(receipt);
                        self.stats.dropped += 1;
                    }
                } else {
                    self.on_unanswered(now, draw, lane, true);
                }
            }
        }
        self.finish_release();
    }

    /// A command came back without an outcome: lost (it may have been
    /// applied) or refused (it certainly was not).
    fn on_unanswered(&mut self, now: Timestamp, draw: u64, lane: Lane, refused: bool) {
        let retry_at = now.plus(self.config.retry_after);
        match lane {
            // A lost claim may have claimed jobs we will never hear of: the
            // leader rescues them once their heartbeats go stale.
            Lane::Acquire(i) | Lane::Claim { queue: i, .. } => self.queues[i].next_poll = retry_at,
            Lane::Report(receipts) if refused => self.split_refused(now, receipts),
            Lane::Report(receipts) => {
                // Retry the same results: a result that did land is refused
                // as NotRunning the second time, which counts as done.
                for receipt in receipts.into_iter().rev() {
                    if let Some(result) = self.reporting.remove(&receipt) {
                        self.buffered.push_front((now, receipt, result));
                    }
                }
                self.flush_hold_until = retry_at;
            }
            Lane::Leader | Lane::Maintenance => self.next_maintenance = retry_at,
            Lane::SlotTry { receipt, slot, .. } => {
                self.on_slot_try(now, draw, receipt, slot, attempt::TryAnswer::Error)
            }
            Lane::SlotRenew { receipt, index, .. } => self.on_renew_unknown(receipt, index),
            Lane::Probe(receipt) => self.on_probe_unknown(receipt),
            Lane::Heartbeat(_) | Lane::SlotRelease | Lane::Release => {}
        }
    }

    /// Storage refused a batch of results for its data: flush each alone,
    /// so only the offending one is held back; one refused alone is given
    /// up (its attempt is rescued in time, which fails it).
    fn split_refused(&mut self, now: Timestamp, receipts: Vec<Receipt>) {
        let alone = receipts.len() == 1;
        for receipt in receipts.into_iter().rev() {
            let Some(result) = self.reporting.remove(&receipt) else {
                continue;
            };
            if alone {
                self.solo.remove(&receipt);
                self.stats.dropped += 1;
            } else {
                self.solo.insert(receipt);
                self.buffered.push_front((now, receipt, result));
            }
        }
    }

    fn on_outcome(&mut self, now: Timestamp, draw: u64, id: CommandId, outcome: Outcome) {
        let lane = self
            .in_flight
            .remove(&id)
            .expect("Outcome for a command that is not in flight");
        // Each lane but three carries one command: its answer is that
        // command's alone (`answer_of` panics if storage broke the
        // protocol). Reports, maintenance and releases carry several.
        match lane {
            Lane::Acquire(i) => {
                let result = answer_of::<cmd::ClaimerAcquire>(outcome);
                self.on_acquired(now, i, result)
            }
            Lane::Claim {
                queue,
                max,
                sent_at,
            } => {
                let result = answer_of::<cmd::Claim>(outcome);
                self.on_claimed(now, queue, max, sent_at, result)
            }
            Lane::Heartbeat(receipts) => {
                let result = answer_of::<cmd::Heartbeat>(outcome);
                for (receipt, result) in receipts.into_iter().zip(result.unwrap_or_default()) {
                    if result.is_err() {
                        self.fence(now, receipt);
                    }
                }
            }
            Lane::Probe(receipt) => {
                let result = answer_of::<cmd::Heartbeat>(outcome);
                self.on_probed(now, receipt, result)
            }
            Lane::Report(receipts) => self.on_reported(now, receipts, outcome),
            Lane::SlotTry {
                receipt,
                slot,
                sent_at,
            } => {
                let result = answer_of::<cmd::SlotTry>(outcome);
                let answer = attempt::TryAnswer::from_outcome(result, sent_at);
                self.on_slot_try(now, draw, receipt, slot, answer)
            }
            Lane::SlotRenew {
                receipt,
                index,
                sent_at,
            } => {
                let result = answer_of::<cmd::SlotRenew>(outcome);
                self.on_renewed(now, receipt, index, sent_at, result)
            }
            Lane::SlotRelease => {
                answer_of::<cmd::SlotRelease>(outcome);
            }
            Lane::Leader => {
                let result = answer_of::<cmd::LeaderElect>(outcome);
                self.leader = result.ok();
                self.maintenance_due = self.leader.is_some();
            }
            Lane::Maintenance => self.on_maintained(outcome),
            Lane::Release => match outcome {
                Outcome::ClaimerReleased(_) | Outcome::LeaderResigned(_) => {}
                other => panic!("outcome {other:?} does not answer a release"),
            },
        }
        self.finish_release();
    }

    fn on_maintained(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Promoted(Ok(ids)) | Outcome::Pruned(Ok(ids)) => {
                self.stats.maintained += ids.len() as u64
            }
            Outcome::Rescued(Ok(ids)) => self.stats.maintained += ids.len() as u64,
            // Refused by term (deposed) or as a whole: stand again later.
            Outcome::Promoted(Err(_)) | Outcome::Pruned(Err(_)) | Outcome::Rescued(Err(_)) => {
                self.leader = None
            }
            other => panic!("outcome {other:?} does not answer a maintenance command"),
        }
    }

    fn on_acquired(
        &mut self,
        now: Timestamp,
        i: usize,
        result: Result<(ClaimerGrant, crate::claimer::Acquired), Reject>,
    ) {
        match result {
            Ok((grant, how)) => {
                self.queues[i].grant = Some(grant);
                self.queues[i].next_poll = now;
                if how != crate::claimer::Acquired::Reused {
                    self.stats.lease_acquisitions += 1;
                }
            }
            // All K slots are busy: another process claims from this queue.
            Err(_) => self.queues[i].next_poll = now.plus(self.config.poll_interval),
        }
    }

    fn on_claimed(
        &mut self,
        now: Timestamp,
        i: usize,
        max: u32,
        sent_at: Timestamp,
        result: Result<crate::protocol::Claimed, Reject>,
    ) {
        let notified = std::mem::take(&mut self.queues[i].notified);
        let claimed = match result {
            Ok(claimed) => claimed,
            Err(Reject::ClaimerLeaseLost { .. }) => {
                self.queues[i].grant = None;
                self.queues[i].next_poll = now;
                return;
            }
            Err(_) => {
                self.queues[i].next_poll = now.plus(self.config.poll_interval);
                return;
            }
        };
        let full = claimed.jobs.len() as u64 >= u64::from(max);
        self.stats.lease_refreshes += u64::from(claimed.lease_refreshed);
        if !claimed.jobs.is_empty() {
            self.stats.claims += 1;
        }
        let mut admitted = Vec::with_capacity(claimed.jobs.len());
        for job in claimed.jobs {
            self.stats.claimed += 1;
            if self.phase != Phase::Running {
                #[cfg(feature = "mutants")]
                if self.mutant(DispatcherMutation::DropClaimedWhileStopping) {
                    continue;
                }
                // Claimed while shutting down: give it straight back.
                self.buffered
                    .push_back((now, job.receipt, HandlerResult::Snooze(Millis::ZERO)));
                continue;
            }
            admitted.push(self.admit(i, job, sent_at));
        }
        if !admitted.is_empty() {
            self.effects.push_back(Effect::Prepare(admitted));
        }
        // A full batch means more is probably waiting, and a wake-up during
        // the claim means more may have come: claim again at once.
        self.queues[i].next_poll = if full || notified {
            now
        } else {
            now.plus(self.config.poll_interval)
        };
    }

    fn on_reported(&mut self, now: Timestamp, receipts: Vec<Receipt>, outcome: Outcome) {
        let results: Vec<Result<(), Reject>> = match outcome {
            Outcome::Completed(r)
            | Outcome::Snoozed(r)
            | Outcome::Waiting(r)
            | Outcome::AttemptsCancelled(r) => match r {
                Ok(items) => items,
                Err(_) => return self.split_refused(now, receipts),
            },
            Outcome::Failed(r) => match r {
                Ok(items) => items.into_iter().map(|x| x.map(|_| ())).collect(),
                Err(_) => return self.split_refused(now, receipts),
            },
            other => panic!("outcome {other:?} does not answer a report"),
        };
        for (receipt, result) in receipts.into_iter().zip(results) {
            self.reporting.remove(&receipt);
            self.solo.remove(&receipt);
            match result {
                Ok(()) => self.stats.reported += 1,
                // The same result landed before its answer was lost.
                Err(Reject::NotRunning { state }) if state != StateName::Running => {
                    self.stats.reported += 1
                }
                Err(_) => self.stats.fenced += 1,
            }
        }
    }

    fn on_cancel_hint(&mut self, now: Timestamp, receipt: Receipt) {
        #[cfg(feature = "mutants")]
        if self.mutant(DispatcherMutation::TrustCancelHints) {
            return self.fence(now, receipt);
        }
        let _ = now;
        let Some(attempt) = self.attempts.get_mut(&receipt) else {
            return;
        };
        if attempt.probing || !attempt.is_ours() {
            return;
        }
        attempt.probing = true;
        self.stats.hints += 1;
        let receipts = vec![receipt];
        self.execute(
            Lane::Probe(receipt),
            Command::Heartbeat(cmd::Heartbeat { receipts }),
        );
    }

    fn on_probed(&mut self, now: Timestamp, receipt: Receipt, result: crate::BatchResult<()>) {
        self.on_probe_unknown(receipt);
        match result.ok().and_then(|mut items| items.pop()) {
            Some(Err(_)) => self.fence(now, receipt),
            Some(Ok(())) => self.stats.hints_refuted += 1,
            None => {}
        }
    }

    fn on_probe_unknown(&mut self, receipt: Receipt) {
        if let Some(attempt) = self.attempts.get_mut(&receipt) {
            attempt.probing = false;
        }
    }
}

/// A per-receipt draw from one shared draw: deterministic, and different
/// for each job so their jitters differ (splitmix64's finaliser).
fn mix(draw: u64, receipt: &Receipt) -> u64 {
    let mut z = draw ^ (receipt.job.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ receipt.epoch.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
