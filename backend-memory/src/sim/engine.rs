//! The simulator's engine: one seeded RNG, one virtual clock, one memory
//! backend, and an event queue that the clock jumps through.
//!
//! Everything that will happen is an [`Event`] at a virtual time: a command
//! arriving at storage, its outcome arriving back, a handler finishing, a
//! process's timer, a pause ending, a crashed process restarting, the
//! client's next action, a fault. The engine pops the earliest, moves the
//! clock there, and handles it. Events at the same time are ordered by a
//! random draw, so the RNG chooses the interleaving; nothing depends on
//! thread scheduling or wall-clock time, and a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weir_core::cmd;
use weir_core::{
    Acquired, ClaimerSlot, Command, CommandId, Dispatcher, DispatcherConfig, HandlerResult, Input,
    JobId, LeaderTerm, Millis, Outcome, ProcessId, QueueName, Receipt, Reject, SlotIndex,
    StateName, Timestamp, World,
};

use super::coverage::Coverage;
use super::process::Proc;
use super::workload::{self, Names, SemaphoreSetup};
use super::{SimOptions, Summary};
use crate::backend::MemoryBackend;
use crate::clock::{Clock, VirtualClock};
use crate::fault::{FaultKind, FaultPlan};
use crate::trace::TraceHash;

/// Virtual time starts at a realistic wall-clock value (November 2023), so
/// a process whose clock runs behind never sees a negative time.
pub(crate) const START: Timestamp = Timestamp(1_700_000_000_000);

/// The most events one run may handle per requested operation before it
/// counts as a runaway (a livelock in the code under test, or here).
const EVENTS_PER_OP_MAX: u64 = 200;

/// The client stops enqueueing while this many jobs are unfinished.
const UNFINISHED_MAX: usize = 200;

/// One incarnation of a process slot (each has its own process id):
/// events for an earlier incarnation, one that crashed, are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ProcRef {
    pub index: usize,
    pub id: ProcessId,
}

/// Which semaphore request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SemOp {
    Try(SlotIndex),
    Renew,
    Release,
}

/// Who sent a command, and so where its outcome goes.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    Dispatcher(ProcRef, CommandId),
    Semaphore(ProcRef, SemOp),
    /// A second delivery of a completion: its outcome goes nowhere.
    Duplicate(ProcRef),
}

impl Route {
    pub(crate) fn from(&self) -> ProcRef {
        match self {
            Route::Dispatcher(p, _) | Route::Semaphore(p, _) | Route::Duplicate(p) => *p,
        }
    }
}

/// Something arriving at a process.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Input(Input),
    /// A semaphore request's outcome; `None` when it failed or was lost.
    Semaphore(SemOp, Option<Outcome>),
}

pub(crate) enum Event {
    Arrive {
        route: Route,
        command: Command,
        /// When it left its process.
        sent: Timestamp,
    },
    Deliver {
        to: ProcRef,
        reply: Reply,
    },
    /// A handler's task ends, with its result or (`None`) aborted.
    HandlerDone {
        to: ProcRef,
        receipt: Receipt,
        result: Option<HandlerResult>,
    },
    Timer {
        to: ProcRef,
        generation: u64,
    },
    SemaphoreWake {
        to: ProcRef,
        generation: u64,
    },
    Resume {
        to: ProcRef,
    },
    Restart {
        index: usize,
    },
    /// Shutdown is asked for (in the fault phase).
    Stop {
        to: ProcRef,
    },
    /// A process whose shutdown completed exits.
    Exit {
        to: ProcRef,
    },
    Client,
    ResumeQueue(QueueName),
    Callback(Receipt),
    Fault,
}

/// The run's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Faults on, the client enqueueing, until `ops` commands were applied.
    Faults,
    /// Faults off: every job must finish by the deadline.
    Liveness {
        deadline: Timestamp,
    },
    /// Every process shuts down gracefully.
    Shutdown {
        deadline: Timestamp,
    },
    Done,
}

/// The sender of a command, for the trace: a process id, the client, or
/// storage itself (a session ending).
const CLIENT: u64 = 0;
const STORAGE: u64 = u64::MAX;

/// A claimer that just claimed a non-empty batch: its slot may not be taken
/// over before `until` (the core's freshness argument, `claimer.rs`).
struct Protection {
    process: ProcessId,
    until: Timestamp,
}

pub(crate) struct Engine {
    pub opts: SimOptions,
    pub plan: FaultPlan,
    pub rng: ChaCha8Rng,
    pub clock: VirtualClock,
    pub backend: MemoryBackend<VirtualClock>,
    events: BTreeMap<(Timestamp, u64, u64), Event>,
    next_seq: u64,
    pub procs: Vec<Proc>,
    pub next_pid: u64,
    /// When each process ended (crashed, or finished shutting down).
    pub ended: BTreeMap<ProcessId, Timestamp>,
    pub phase: Phase,
    pub coverage: Coverage,
    pub trace: TraceHash,
    /// Every applied command, when the caller asked for the trace.
    pub recorded: Option<Vec<super::TraceStep>>,
    pub names: Names,
    pub semaphore: SemaphoreSetup,
    pub latency_max: u64,
    protected: BTreeMap<(QueueName, ClaimerSlot), Protection>,
    paused_queues: BTreeSet<QueueName>,
    last_term: LeaderTerm,
    max_job_id: i64,
    pub commands: u64,
    pub fault_commands: u64,
    pub events_handled: u64,
    pub liveness_started: Timestamp,
    pub max_holders: usize,
    /// How each incarnation builds its dispatcher (the core's own, or one
    /// making a deliberate mistake).
    pub make_dispatcher: MakeDispatcher,
}

/// Builds a process's dispatcher from its configuration, at its clock's
/// time.
pub type MakeDispatcher = Box<dyn Fn(DispatcherConfig, Timestamp) -> Dispatcher>;

impl Engine {
    pub(crate) fn new(opts: SimOptions, world: World) -> Engine {
        let mut setup_rng = ChaCha8Rng::seed_from_u64(opts.seed);
        setup_rng.set_stream(1);
        let plan = FaultPlan::draw(opts.faults, &mut setup_rng);
        let names = Names::new();
        let semaphore = workload::semaphore_setup(&mut setup_rng);
        let latency_max = [0, 1, 5, 20][setup_rng.random_range(0..4)];
        let queue_limit = workload::queue_limit(&mut setup_rng);
        let procs = (0..usize::from(opts.processes.max(1)))
            .map(|index| {
                let config =
                    workload::dispatcher_config(&mut setup_rng, index, &names, queue_limit);
                Proc::new(index, config)
            })
            .collect();
        let clock = VirtualClock::new(START);
        Engine {
            backend: MemoryBackend::from_world(world, clock.clone()),
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            opts,
            plan,
            clock,
            events: BTreeMap::new(),
            next_seq: 0,
            procs,
            next_pid: 1,
            ended: BTreeMap::new(),
            phase: Phase::Faults,
            coverage: Coverage::default(),
            trace: TraceHash::default(),
            recorded: None,
            names,
            semaphore,
            latency_max,
            protected: BTreeMap::new(),
            paused_queues: BTreeSet::new(),
            last_term: LeaderTerm(0),
            max_job_id: 0,
            commands: 0,
            fault_commands: 0,
            events_handled: 0,
            liveness_started: START,
            max_holders: 0,
            make_dispatcher: Box::new(Dispatcher::new),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Whether faults may be injected now.
    pub(crate) fn faults_on(&self) -> bool {
        self.phase == Phase::Faults
    }

    pub(crate) fn schedule(&mut self, at: Timestamp, event: Event) {
        let at = at.max(self.now());
        let tie = self.rng.next_u64();
        self.next_seq += 1;
        self.events.insert((at, tie, self.next_seq), event);
    }

    pub(crate) fn latency(&mut self) -> Millis {
        Millis(self.rng.random_range(0..=self.latency_max))
    }

    /// Runs to the end: fault phase, liveness phase, shutdown, final checks.
    pub(crate) fn run(&mut self) -> Result<(), String> {
        for index in 0..self.procs.len() {
            self.spawn(index)?;
        }
        self.schedule(self.now(), Event::Client);
        if self.plan.has_process_faults() {
            let first = self.plan.crash_every;
            self.schedule(self.now().plus(first), Event::Fault);
        }
        let events_max = self.opts.ops.saturating_mul(EVENTS_PER_OP_MAX) + 1_000_000;
        while self.phase != Phase::Done {
            let Some(((at, _, _), event)) = self.events.pop_first() else {
                return Err("nothing is left to happen, but the run has not finished".into());
            };
            self.clock.advance_to(at);
            self.events_handled += 1;
            if self.events_handled > events_max {
                return Err(format!("runaway: more than {events_max} events"));
            }
            self.handle(event)?;
            self.advance_phase()?;
        }
        self.final_checks()
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Arrive {
                route,
                command,
                sent,
            } => self.arrive(route, command, sent),
            Event::Deliver { to, reply } => self.deliver(to, reply),
            Event::HandlerDone {
                to,
                receipt,
                result,
            } => self.handler_done(to, receipt, result),
            Event::Timer { to, generation } => self.timer(to, generation),
            Event::SemaphoreWake { to, generation } => self.semaphore_wake(to, generation),
            Event::Resume { to } => self.resume(to),
            Event::Restart { index } => self.restart(index),
            Event::Stop { to } => self.stop(to),
            Event::Exit { to } => self.exit(to),
            Event::Client => self.client(),
            Event::ResumeQueue(queue) => self.resume_queue(queue),
            Event::Callback(receipt) => self.callback(receipt),
            Event::Fault => self.process_fault(),
        }
    }

    /// Applies one command at the virtual time, checks every invariant of
    /// the state and the step, and records it in the trace and the counts.
    /// Its sender sent it now and has the outcome now (the client, a
    /// callback, storage itself).
    pub(crate) fn apply(&mut self, sender: u64, command: Command) -> Result<Outcome, String> {
        let now = self.now();
        self.apply_sent(sender, command, now)
    }

    /// [`Engine::apply`] of a command its sender sent at `sent`; the trace
    /// step says the outcome reached it now, until [`Engine::answered`]
    /// says otherwise.
    fn apply_sent(
        &mut self,
        sender: u64,
        command: Command,
        sent: Timestamp,
    ) -> Result<Outcome, String> {
        let seen = command.clone();
        let outcome = self
            .backend
            .apply_checked(command)
            .map_err(|broken| broken.to_string())?;
        self.commands += 1;
        if self.phase == Phase::Faults {
            self.fault_commands += 1;
        }
        self.trace.add(&(self.now().0, sender, &seen, &outcome));
        let at = self.now();
        if let Some(recorded) = &mut self.recorded {
            recorded.push(super::TraceStep {
                at,
                sender,
                command: seen.clone(),
                outcome: outcome.clone(),
                sent,
                answered: Some(at),
                settled: at,
            });
        }
        self.coverage.outcome(&outcome);
        self.observe(&seen, &outcome)?;
        Ok(outcome)
    }

    /// What the sender of the command applied last learns of it, and
    /// when: its outcome (`answered`), or that it was lost, at `settled`;
    /// `None` at the time it was applied when the sender never hears (a
    /// duplicate's, a crashed sender's).
    fn answered(&mut self, answered: Option<Timestamp>, settled: Timestamp) {
        if let Some(step) = self.recorded.as_mut().and_then(|r| r.last_mut()) {
            step.answered = answered;
            step.settled = settled;
        }
    }

    /// A command arrives at storage from a process.
    fn arrive(&mut self, route: Route, command: Command, sent: Timestamp) -> Result<(), String> {
        let from = route.from();
        let sender = from.id.0;
        let duplicate = matches!(command, Command::Complete(_))
            && matches!(route, Route::Dispatcher(..))
            && self.faults_on()
            && self
                .plan
                .roll(FaultKind::DuplicateCompletion, &mut self.rng);
        if duplicate {
            let later = self.now().plus(Millis(self.rng.random_range(0..300)));
            let again = Event::Arrive {
                route: Route::Duplicate(from),
                command: command.clone(),
                sent,
            };
            self.schedule(later, again);
        }
        let report = is_report(&command);
        let lossable = !matches!(
            command,
            Command::SlotTry(cmd::SlotTry {
                lease_ttl: None,
                ..
            })
        );
        let outcome = self.apply_sent(sender, command, sent)?;
        if matches!(route, Route::Duplicate(_)) {
            let now = self.now();
            self.answered(None, now);
            self.duplicate_applied(&outcome);
            return Ok(());
        }
        let lost =
            lossable && self.faults_on() && self.plan.roll(FaultKind::LostResult, &mut self.rng);
        if lost {
            self.coverage.fault(FaultKind::LostResult);
        }
        let reply = match route {
            Route::Duplicate(_) => unreachable!("handled above"),
            Route::Dispatcher(_, id) if lost => {
                if report {
                    self.coverage.path("lost_result_retried");
                }
                Reply::Input(Input::Lost(id))
            }
            Route::Dispatcher(_, id) => Reply::Input(Input::Outcome(id, outcome)),
            Route::Semaphore(_, op) => Reply::Semaphore(op, (!lost).then_some(outcome)),
        };
        let at = self.now().plus(self.latency());
        self.answered((!lost).then_some(at), at);
        self.schedule(at, Event::Deliver { to: from, reply });
        Ok(())
    }

    fn duplicate_applied(&mut self, outcome: &Outcome) {
        self.coverage.fault(FaultKind::DuplicateCompletion);
        if let Outcome::Completed(Ok(items)) = outcome {
            let refused = items.iter().filter(|i| i.is_err()).count() as u64;
            self.coverage
                .paths_add("duplicate_completion_refused", refused);
        }
    }

    /// Notes what a command did: the paths it took, and the properties the
    /// world's own checks cannot see (a busy claimer keeps its slot).
    fn observe(&mut self, command: &Command, outcome: &Outcome) -> Result<(), String> {
        let now = self.now();
        match (command, outcome) {
            (Command::Claim(cmd::Claim { queue, claimer, .. }), Outcome::Claimed(Ok(claimed)))
                if !claimed.jobs.is_empty() =>
            {
                let config = self.backend.inspect(|w| w.config().claimer);
                let margin = config.idle_threshold.min(config.lease_ttl).half();
                let protection = Protection {
                    process: claimer.process,
                    until: now.plus(margin),
                };
                self.protected
                    .insert((queue.clone(), claimer.slot), protection);
            }
            (
                Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, .. }),
                Outcome::ClaimerAcquired(Ok((grant, how))),
            ) => {
                if *how == Acquired::TakenOver {
                    self.coverage.path("claimer_taken_over");
                    self.check_takeover(queue, grant.slot, grant.process)?;
                }
            }
            (
                Command::ClaimerRelease(cmd::ClaimerRelease { queue, claimer }),
                Outcome::ClaimerReleased(true),
            ) => {
                self.protected.remove(&(queue.clone(), claimer.slot));
            }
            (Command::WaitExternal(cmd::WaitExternal { waits }), Outcome::Waiting(Ok(items))) => {
                self.schedule_callbacks(waits, items);
            }
            (Command::Enqueue(_), Outcome::Enqueued(Ok(enqueued))) => {
                let duplicates = enqueued.iter().filter(|e| e.duplicate).count() as u64;
                self.coverage.paths_add("duplicate_enqueue", duplicates);
                let top = enqueued.iter().map(|e| e.id.0).max().unwrap_or(0);
                self.max_job_id = self.max_job_id.max(top);
            }
            _ => self.observe_paths(outcome),
        }
        if is_report(command) {
            let mut fenced = 0;
            super::coverage::for_each_reject(outcome, |r| {
                fenced += u64::from(matches!(r, Reject::StaleEpoch { .. }));
            });
            self.coverage.paths_add("late_result_fenced", fenced);
        }
        Ok(())
    }

    fn observe_paths(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Rescued(Ok(ids)) => self.coverage.paths_add("rescued", ids.len() as u64),
            Outcome::Pruned(Ok(ids)) => self.coverage.paths_add("pruned", ids.len() as u64),
            Outcome::Cancelled(Ok(StateName::Running)) => self.coverage.path("cancel_running"),
            Outcome::Retried(Ok(())) => self.coverage.path("admin_retry"),
            Outcome::Resumed(Ok(())) => self.coverage.path("external_resumed"),
            Outcome::SlotReleased(false) => self.coverage.path("slot_release_noop"),
            Outcome::SlotRenewed(Err(Reject::SlotNotHeld { .. })) => {
                self.coverage.path("semaphore_lease_lapsed")
            }
            Outcome::SessionEnded(freed) => self
                .coverage
                .paths_add("crashed_holder_slot_freed", freed.len() as u64),
            Outcome::LeaderElected(Ok(grant)) => {
                if grant.term != self.last_term && self.last_term != LeaderTerm(0) {
                    self.coverage.path("leader_term_changed");
                }
                self.last_term = self.last_term.max(grant.term);
            }
            Outcome::SlotTried(Ok(_)) => {
                let name = &self.names.semaphore;
                let holders = self
                    .backend
                    .inspect(|w| w.semaphore(name).map_or(0, |s| s.holders(w.now())));
                self.max_holders = self.max_holders.max(holders);
            }
            _ => {}
        }
    }

    fn check_takeover(
        &self,
        queue: &QueueName,
        slot: ClaimerSlot,
        by: ProcessId,
    ) -> Result<(), String> {
        match self.protected.get(&(queue.clone(), slot)) {
            Some(p) if p.process != by && self.now() <= p.until => Err(format!(
                "claimer slot {slot} of {queue} was taken over by process {by} at {}, \
                 but process {} claimed a non-empty batch recently enough to keep it until {}",
                self.now(),
                p.process,
                p.until
            )),
            _ => Ok(()),
        }
    }

    /// The external system calls back for each job that started waiting;
    /// some callbacks come after the wait timed out, and some come twice.
    fn schedule_callbacks(&mut self, waits: &[(Receipt, Millis)], items: &[Result<(), Reject>]) {
        for ((receipt, timeout), item) in waits.iter().zip(items) {
            if item.is_err() {
                continue;
            }
            let after = self.rng.random_range(0..=timeout.0.saturating_mul(3) / 2);
            self.schedule(self.now().plus(Millis(after)), Event::Callback(*receipt));
            if self.rng.random_ratio(1, 5) {
                let again = after + self.rng.random_range(0..500);
                self.schedule(self.now().plus(Millis(again)), Event::Callback(*receipt));
            }
        }
    }

    fn callback(&mut self, receipt: Receipt) -> Result<(), String> {
        self.apply(
            CLIENT,
            Command::ResumeExternal(cmd::ResumeExternal { receipt }),
        )?;
        Ok(())
    }

    /// The client's next action: mostly enqueueing, sometimes an operator
    /// cancelling, retrying, or pausing a queue. Only in the fault phase.
    fn client(&mut self) -> Result<(), String> {
        if !self.faults_on() {
            return Ok(());
        }
        match self.rng.random_range(0..100) {
            0..75 => self.enqueue_batch()?,
            75..85 => self.cancel_one()?,
            85..88 => self.forge_cancel_hint()?,
            88..97 => self.retry_one()?,
            _ => self.pause_queue()?,
        }
        let next = self.now().plus(Millis(self.rng.random_range(5..80)));
        self.schedule(next, Event::Client);
        Ok(())
    }

    fn enqueue_batch(&mut self) -> Result<(), String> {
        // Back-pressure: a slow configuration (one claimer slot, few
        // workers) must not grow the world without bound, or every check
        // over it would slow down with it.
        let unfinished = self
            .backend
            .inspect(|w| w.jobs().filter(|j| !j.state_name().is_terminal()).count());
        if unfinished >= UNFINISHED_MAX {
            return Ok(());
        }
        let n = self.rng.random_range(1..=8);
        let now = self.now();
        let jobs: Vec<_> = (0..n)
            .map(|_| workload::new_job(&mut self.rng, &self.names, now))
            .collect();
        let queues: BTreeSet<QueueName> = jobs.iter().map(|j| j.queue.clone()).collect();
        let outcome = self.apply(CLIENT, Command::Enqueue(cmd::Enqueue { jobs }))?;
        if !matches!(outcome, Outcome::Enqueued(Ok(_))) {
            return Err(format!("a valid enqueue was refused: {outcome:?}"));
        }
        // LISTEN/NOTIFY is best effort: some notifications never arrive,
        // and polling must cover for them.
        for index in 0..self.procs.len() {
            for queue in &queues {
                if self.procs[index].alive && self.rng.random_ratio(9, 10) {
                    let to = self.procs[index].me;
                    let at = now.plus(self.latency());
                    let reply = Reply::Input(Input::Notified(queue.clone()));
                    self.schedule(at, Event::Deliver { to, reply });
                }
            }
        }
        Ok(())
    }

    /// Picks a job: half the time one in `wanted` states, else any id ever
    /// handed out (so pruned ones too).
    fn pick_job(&mut self, wanted: &[StateName]) -> JobId {
        if self.rng.random_bool(0.5) {
            let candidates: Vec<JobId> = self.backend.inspect(|w| {
                w.jobs()
                    .filter(|j| wanted.contains(&j.state_name()))
                    .map(|j| j.id)
                    .collect()
            });
            if !candidates.is_empty() {
                return candidates[self.rng.random_range(0..candidates.len())];
            }
        }
        JobId(self.rng.random_range(1..=self.max_job_id.max(1)))
    }

    fn cancel_one(&mut self) -> Result<(), String> {
        let job = self.pick_job(&[StateName::Running]);
        let held = self.backend.inspect(|w| {
            w.job(job).and_then(|j| match j.state {
                weir_core::JobState::Running { holder, .. } => j.receipt().map(|r| (r, holder)),
                _ => None,
            })
        });
        let outcome = self.apply(CLIENT, Command::Cancel(cmd::Cancel { job }))?;
        // The cancel notification to the holder (NOTIFY `c:...`), best
        // effort like every notification: the epoch bump fences the
        // attempt whether or not it arrives.
        if let (Some((receipt, holder)), Outcome::Cancelled(Ok(StateName::Running))) =
            (held, outcome)
        {
            let to = self
                .procs
                .iter()
                .find(|p| p.alive && p.me.id == holder)
                .map(|p| p.me);
            if let Some(to) = to.filter(|_| self.rng.random_ratio(9, 10)) {
                let at = self.now().plus(self.latency());
                let reply = Reply::Input(Input::CancelHint(receipt));
                self.schedule(at, Event::Deliver { to, reply });
            }
        }
        Ok(())
    }

    /// Anyone who can connect can send a cancel notification: one for an
    /// attempt nobody cancelled must not stop its handler.
    fn forge_cancel_hint(&mut self) -> Result<(), String> {
        let job = self.pick_job(&[StateName::Running]);
        let held = self.backend.inspect(|w| {
            w.job(job).and_then(|j| match j.state {
                weir_core::JobState::Running { holder, .. } => j.receipt().map(|r| (r, holder)),
                _ => None,
            })
        });
        let Some((receipt, holder)) = held else {
            return Ok(());
        };
        let to = self
            .procs
            .iter()
            .find(|p| p.alive && p.me.id == holder)
            .map(|p| p.me);
        if let Some(to) = to {
            let at = self.now().plus(self.latency());
            let reply = Reply::Input(Input::CancelHint(receipt));
            self.schedule(at, Event::Deliver { to, reply });
        }
        Ok(())
    }

    fn retry_one(&mut self) -> Result<(), String> {
        let job = self.pick_job(&[StateName::Failed, StateName::Cancelled]);
        self.apply(CLIENT, Command::Retry(cmd::Retry { job }))?;
        Ok(())
    }

    fn pause_queue(&mut self) -> Result<(), String> {
        let queue = self.names.queues[self.rng.random_range(0..self.names.queues.len())].clone();
        self.apply(
            CLIENT,
            Command::PauseQueue(cmd::PauseQueue {
                queue: queue.clone(),
            }),
        )?;
        self.paused_queues.insert(queue.clone());
        let until = self.now().plus(Millis(self.rng.random_range(100..1_500)));
        self.schedule(until, Event::ResumeQueue(queue));
        Ok(())
    }

    fn resume_queue(&mut self, queue: QueueName) -> Result<(), String> {
        if self.paused_queues.remove(&queue) {
            self.apply(CLIENT, Command::ResumeQueue(cmd::ResumeQueue { queue }))?;
        }
        Ok(())
    }

    /// A process-level fault: a crash mid-job, of a semaphore holder, or of
    /// the leader. Never the last live process, so work can go on.
    fn process_fault(&mut self) -> Result<(), String> {
        if !self.faults_on() {
            return Ok(());
        }
        let every = self.plan.crash_every.0;
        let next = self
            .now()
            .plus(Millis(self.rng.random_range(every / 2..=every * 3 / 2)));
        self.schedule(next, Event::Fault);
        let Some(kind) = self.plan.pick_process_fault(&mut self.rng) else {
            return Ok(());
        };
        if self.procs.iter().filter(|p| p.alive).count() < 2 {
            return Ok(());
        }
        let candidates: Vec<usize> = (0..self.procs.len())
            .filter(|&i| {
                let p = &self.procs[i];
                p.alive
                    && match kind {
                        FaultKind::Crash => !p.handlers.is_empty(),
                        FaultKind::HolderCrash => p.holds_slot(),
                        _ => p.dispatcher.leader().is_some(),
                    }
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let index = candidates[self.rng.random_range(0..candidates.len())];
        self.crash(index, kind)
    }

    /// Storage's side of a crash: the in-flight requests of the dead
    /// process land or do not (each a coin flip), then its session ends.
    /// Nothing it sent arrives after that: its connections are gone.
    pub(crate) fn resolve_in_flight(&mut self, of: ProcRef) -> Result<(), String> {
        let keys: Vec<(Timestamp, u64, u64)> = self
            .events
            .iter()
            .filter(|(_, e)| {
                matches!(e, Event::Arrive { route, .. }
                    if route.from() == of && !matches!(route, Route::Duplicate(_)))
            })
            .map(|(k, _)| *k)
            .collect();
        let id = of.id.0;
        for key in keys {
            let Some(Event::Arrive { command, sent, .. }) = self.events.remove(&key) else {
                unreachable!("the key was just found as an arrival")
            };
            if self.rng.random_bool(0.5) {
                self.apply_sent(id, command, sent)?;
                let now = self.now();
                self.answered(None, now);
            }
        }
        self.apply(
            STORAGE,
            Command::ProcessCrashed(cmd::ProcessCrashed { process: of.id }),
        )?;
        Ok(())
    }

    /// Moves the run on from one phase to the next when its work is done.
    fn advance_phase(&mut self) -> Result<(), String> {
        let now = self.now();
        match self.phase {
            Phase::Faults if self.fault_commands >= self.opts.ops => self.enter_liveness(),
            Phase::Faults => Ok(()),
            Phase::Liveness { deadline } | Phase::Shutdown { deadline } if now > deadline => {
                Err(self.liveness_failure())
            }
            Phase::Liveness { .. } => {
                if self.events_handled.is_multiple_of(16) && self.settled() {
                    self.enter_shutdown()?;
                }
                Ok(())
            }
            Phase::Shutdown { .. } => {
                if self
                    .procs
                    .iter()
                    .all(|p| !p.alive || p.dispatcher.is_shut_down())
                {
                    for p in self.procs.iter().filter(|p| p.alive) {
                        self.ended.insert(p.me.id, now);
                    }
                    self.phase = Phase::Done;
                }
                Ok(())
            }
            Phase::Done => Ok(()),
        }
    }

    fn enter_liveness(&mut self) -> Result<(), String> {
        let now = self.now();
        self.phase = Phase::Liveness {
            deadline: now.plus(self.opts.liveness_limit),
        };
        self.liveness_started = now;
        for queue in std::mem::take(&mut self.paused_queues) {
            self.apply(CLIENT, Command::ResumeQueue(cmd::ResumeQueue { queue }))?;
        }
        for p in &mut self.procs {
            p.semaphore.cycles_left = 2;
        }
        Ok(())
    }

    /// Every job finished and no process is still using the semaphore.
    fn settled(&self) -> bool {
        let idle = self.procs.iter().all(|p| !p.alive || p.semaphore.is_done());
        idle && self
            .backend
            .inspect(|w| w.jobs().all(|j| j.state_name().is_terminal()))
    }

    fn enter_shutdown(&mut self) -> Result<(), String> {
        self.phase = Phase::Shutdown {
            deadline: self.now().plus(Millis::from_secs(60)),
        };
        for index in 0..self.procs.len() {
            if self.procs[index].alive {
                let to = self.procs[index].me;
                self.deliver(to, Reply::Input(Input::Shutdown))?;
            }
        }
        Ok(())
    }

    fn liveness_failure(&self) -> String {
        let stuck: Vec<String> = self.backend.inspect(|w| {
            w.jobs()
                .filter(|j| !j.state_name().is_terminal())
                .take(10)
                .map(|j| format!("job {} {} epoch {}", j.id, j.state_name(), j.epoch))
                .collect()
        });
        format!(
            "liveness: not settled {} after faults stopped ({:?}); unfinished jobs (first 10): {stuck:?}",
            self.now().since(self.liveness_started),
            self.phase
        )
    }

    /// After a graceful shutdown: every job finished, every semaphore slot
    /// free once the lapsed leases of dead holders run out, no claimer
    /// lease or leadership held past its TTL by a process that ended.
    fn final_checks(&self) -> Result<(), String> {
        let world = self.backend.snapshot();
        let now = self.now();
        if let Some(job) = world.jobs().find(|j| !j.state_name().is_terminal()) {
            return Err(format!("job {} is {} at the end", job.id, job.state_name()));
        }
        let ttl = world.config().claimer.lease_ttl;
        for (queue, table) in world.all_claimers() {
            for (slot, lease) in table.slots() {
                let Some(owner) = lease.owner else { continue };
                let end = self.ended.get(&owner).copied();
                if end.is_none_or(|end| lease.expires_at > end.plus(ttl)) {
                    return Err(format!(
                        "claimer slot {slot} of {queue} is held by process {owner} \
                         (ended {end:?}) until {}",
                        lease.expires_at
                    ));
                }
            }
        }
        let leader = world.leadership();
        if let (Some(holder), true) = (leader.holder, leader.expires_at > now) {
            let end = self.ended.get(&holder).copied();
            if end.is_none_or(|end| leader.expires_at > end.plus(world.config().leader_ttl)) {
                return Err(format!("process {holder} still leads at the end"));
            }
        }
        for (name, sem) in world.semaphores() {
            let lapse = sem
                .slots()
                .filter_map(|(_, s)| match s.held.map(|h| h.hold) {
                    Some(weir_core::Hold::Lease { expires_at }) => Some(expires_at),
                    _ => None,
                })
                .max()
                .unwrap_or(now)
                .max(now);
            if sem.holders(lapse) > 0 {
                return Err(format!("semaphore {name} still has holders at the end"));
            }
        }
        Ok(())
    }

    pub(crate) fn summary(&self) -> Summary {
        let (jobs, enqueued, pruned) = self.backend.inspect(|w| {
            let mut states: BTreeMap<StateName, u64> = BTreeMap::new();
            for job in w.jobs() {
                *states.entry(job.state_name()).or_default() += 1;
            }
            (states, w.enqueued_total(), w.pruned_total())
        });
        Summary {
            options: self.opts.clone(),
            trace_hash: self.trace.value(),
            commands: self.commands,
            fault_phase_commands: self.fault_commands,
            events: self.events_handled,
            fault_phase: self.liveness_started.since(START),
            liveness_phase: self.now().since(self.liveness_started),
            jobs,
            enqueued,
            pruned,
            permits: self.semaphore.permits,
            max_holders: self.max_holders,
            processes_started: self.next_pid - 1,
            faults_enabled: self.plan.kinds().collect(),
            coverage: self.coverage.clone(),
        }
    }
}

/// Commands that carry a worker's result for a running attempt. Every
/// command is named, so a new one must say whether it is a result.
fn is_report(command: &Command) -> bool {
    match command {
        Command::Complete(_)
        | Command::Fail(_)
        | Command::Snooze(_)
        | Command::WaitExternal(_)
        | Command::CancelAttempts(_) => true,
        Command::Enqueue(_)
        | Command::Claim(_)
        | Command::Heartbeat(_)
        | Command::ResumeExternal(_)
        | Command::Cancel(_)
        | Command::Retry(_)
        | Command::PauseQueue(_)
        | Command::ResumeQueue(_)
        | Command::ClaimerAcquire(_)
        | Command::ClaimerRelease(_)
        | Command::SlotTry(_)
        | Command::SlotRenew(_)
        | Command::SlotRelease(_)
        | Command::ProcessCrashed(_)
        | Command::LeaderElect(_)
        | Command::LeaderResign(_)
        | Command::Promote(_)
        | Command::Rescue(_)
        | Command::Prune(_) => false,
    }
}
