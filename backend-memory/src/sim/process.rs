//! One simulated process: the core's [`Dispatcher`] (claim, run, heartbeat,
//! report in batches, claimer leases, maintenance leadership) plus a
//! semaphore user driving the core's [`Acquisition`], and the faults that
//! happen to a process: crashes, pauses, a skewed clock.
//!
//! A process sees its own clock: the world's time plus its skew. Storage
//! always uses the simulator's global time, as a database would.

use std::collections::BTreeSet;

use rand::{Rng, RngCore};
use weir_core::cmd;
use weir_core::{
    Abandoned, AcquireStep, Acquisition, Command, Dispatcher, DispatcherConfig, Effect,
    HandlerResult, Input, Millis, Outcome, ProcessId, Receipt, Reject, SlotGrant, StopReason,
    Timestamp, TryResult,
};

use super::engine::{Engine, Event, Phase, ProcRef, Reply, Route, SemOp, START};
use super::workload::{self, HoldPlan, HEARTBEAT_STALE_AFTER, IDLE_THRESHOLD};
use crate::fault::FaultKind;

/// Where a process's semaphore use is.
pub(crate) enum SemState {
    /// Not using the semaphore; starts again at `next_at`.
    Idle {
        next_at: Timestamp,
    },
    /// Scanning and waiting. `clean`: started with faults off, so it must
    /// end by its deadline.
    Acquiring {
        acquisition: Acquisition,
        plan: HoldPlan,
        clean: bool,
    },
    Holding {
        grant: SlotGrant,
        plan: HoldPlan,
        release_at: Timestamp,
        renew_at: Option<Timestamp>,
    },
    Releasing,
    /// Done for this run.
    Off,
}

pub(crate) struct SemUser {
    pub state: SemState,
    /// Wake-ups of an earlier generation are stale.
    pub generation: u64,
    pub in_flight: bool,
    /// Acquisitions still to make in the liveness phase.
    pub cycles_left: u32,
}

impl SemUser {
    /// Whether this user will never touch the semaphore again (in the
    /// liveness phase).
    pub(crate) fn is_done(&self) -> bool {
        match self.state {
            SemState::Off => true,
            SemState::Idle { .. } => self.cycles_left == 0 && !self.in_flight,
            _ => false,
        }
    }
}

pub(crate) struct Proc {
    pub me: ProcRef,
    pub alive: bool,
    pub skew_ms: i64,
    /// The slot's configuration; each incarnation gets its own id.
    pub config: DispatcherConfig,
    pub dispatcher: Dispatcher,
    pub paused_until: Option<Timestamp>,
    /// Commands built before a pause, sent when it ends.
    pub held_requests: Vec<(Route, Command)>,
    /// What arrived during a pause, fed when it ends.
    pub held_replies: Vec<Reply>,
    /// Handlers started and not stopped.
    pub handlers: BTreeSet<Receipt>,
    pub timer_generation: u64,
    pub semaphore: SemUser,
    /// Shutdown was asked for in the fault phase: once it completes, the
    /// process exits and comes back as a new one.
    pub stopping: bool,
    /// Receipts a claim's answer brought to this incarnation's
    /// dispatcher: once it shut down, none may still run in storage.
    pub received: BTreeSet<Receipt>,
}

impl Proc {
    pub(crate) fn new(index: usize, config: DispatcherConfig) -> Proc {
        Proc {
            me: ProcRef {
                index,
                id: ProcessId(0),
            },
            alive: false,
            skew_ms: 0,
            dispatcher: Dispatcher::new(config.clone(), START),
            config,
            paused_until: None,
            held_requests: Vec::new(),
            held_replies: Vec::new(),
            handlers: BTreeSet::new(),
            stopping: false,
            received: BTreeSet::new(),
            timer_generation: 0,
            semaphore: SemUser {
                state: SemState::Off,
                generation: 0,
                in_flight: false,
                cycles_left: 0,
            },
        }
    }

    /// The process's clock at global time `global`.
    pub(crate) fn local(&self, global: Timestamp) -> Timestamp {
        Timestamp(global.0 + self.skew_ms)
    }

    /// The global time at which the process's clock shows `local`.
    pub(crate) fn global(&self, local: Timestamp) -> Timestamp {
        Timestamp(local.0 - self.skew_ms)
    }

    pub(crate) fn holds_slot(&self) -> bool {
        matches!(self.semaphore.state, SemState::Holding { .. })
    }
}

impl Engine {
    fn is_current(&self, to: ProcRef) -> bool {
        let p = &self.procs[to.index];
        p.alive && p.me == to
    }

    fn is_paused(&self, index: usize) -> bool {
        self.procs[index].paused_until.is_some()
    }

    /// Starts a new incarnation of slot `index`.
    pub(crate) fn spawn(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let id = ProcessId(self.next_pid);
        self.next_pid += 1;
        let skew_ms = self.draw_skew();
        let next_at = now.plus(Millis(self.rng.random_range(0..1_000)));
        let cycles_left = if matches!(self.phase, Phase::Liveness { .. }) {
            2
        } else {
            0
        };
        let p = &mut self.procs[index];
        p.me = ProcRef { index, id };
        p.alive = true;
        p.skew_ms = skew_ms;
        p.paused_until = None;
        p.held_requests.clear();
        p.held_replies.clear();
        p.handlers.clear();
        p.stopping = false;
        p.received.clear();
        let config = DispatcherConfig {
            process: id,
            ..p.config.clone()
        };
        let local = p.local(now);
        self.procs[index].dispatcher = (self.make_dispatcher)(config, local);
        let p = &mut self.procs[index];
        p.semaphore = SemUser {
            state: SemState::Idle { next_at },
            generation: p.semaphore.generation,
            in_flight: false,
            cycles_left,
        };
        self.feed(index, Input::Tick)?;
        self.schedule_semaphore_wake(index, next_at);
        // Some incarnations are shut down while faults strike: shutdown
        // then meets claims, reports and attempts at every stage.
        if self.phase == Phase::Faults && self.rng.random_ratio(1, 4) {
            let at = now.plus(Millis(self.rng.random_range(200..4_000)));
            let to = self.procs[index].me;
            self.schedule(at, Event::Stop { to });
        }
        Ok(())
    }

    /// Shutdown is asked for in the fault phase (never of the last process
    /// still working, so work goes on).
    pub(crate) fn stop(&mut self, to: ProcRef) -> Result<(), String> {
        if !self.is_current(to) || !self.faults_on() || self.procs[to.index].stopping {
            return Ok(());
        }
        let working = self
            .procs
            .iter()
            .filter(|p| p.alive && !p.stopping && p.me != to)
            .count();
        if working == 0 {
            return Ok(());
        }
        self.procs[to.index].stopping = true;
        self.coverage.path("shutdown_under_faults");
        self.deliver(to, Reply::Input(Input::Shutdown))
    }

    /// A process whose shutdown completed exits (its session ends, as a
    /// crash's does) and comes back later as a new process, as a
    /// supervisor would restart it.
    pub(crate) fn exit(&mut self, to: ProcRef) -> Result<(), String> {
        if !self.is_current(to) {
            return Ok(());
        }
        self.resolve_in_flight(to)?;
        let now = self.now();
        let p = &mut self.procs[to.index];
        p.alive = false;
        p.paused_until = None;
        p.handlers.clear();
        p.held_requests.clear();
        p.held_replies.clear();
        self.ended.insert(to.id, now);
        let back = now.plus(Millis(self.rng.random_range(100..2_000)));
        self.schedule(back, Event::Restart { index: to.index });
        Ok(())
    }

    fn draw_skew(&mut self) -> i64 {
        if !self.plan.enabled(FaultKind::ClockSkew) || !self.rng.random_ratio(2, 3) {
            return 0;
        }
        self.coverage.fault(FaultKind::ClockSkew);
        let max = i64::try_from(self.plan.skew_max.0)
            .unwrap_or(i64::MAX)
            .max(1);
        let skew = self.rng.random_range(1..=max);
        if self.rng.random_bool(0.5) {
            -skew
        } else {
            skew
        }
    }

    pub(crate) fn restart(&mut self, index: usize) -> Result<(), String> {
        let running = matches!(self.phase, Phase::Faults | Phase::Liveness { .. });
        if !running || self.procs[index].alive {
            return Ok(());
        }
        self.coverage.path("process_restarted");
        self.spawn(index)
    }

    /// The process dies: no more inputs, no more commands. Storage sees its
    /// session end; it comes back later as a new process.
    pub(crate) fn crash(&mut self, index: usize, kind: FaultKind) -> Result<(), String> {
        let me = self.procs[index].me;
        self.resolve_in_flight(me)?;
        let p = &mut self.procs[index];
        p.alive = false;
        p.paused_until = None;
        p.handlers.clear();
        p.held_requests.clear();
        p.held_replies.clear();
        self.ended.insert(me.id, self.now());
        self.coverage.fault(kind);
        let back = self.now().plus(Millis(self.rng.random_range(100..2_000)));
        self.schedule(back, Event::Restart { index });
        Ok(())
    }

    fn pause(&mut self, index: usize, length: Millis, kind: FaultKind) {
        let until = self.now().plus(length);
        self.procs[index].paused_until = Some(until);
        self.coverage.fault(kind);
        let to = self.procs[index].me;
        self.schedule(until, Event::Resume { to });
    }

    /// A pause ends: what was built goes out, what arrived is fed in, in
    /// order, and the process looks at its timers again.
    pub(crate) fn resume(&mut self, to: ProcRef) -> Result<(), String> {
        if !self.is_current(to) {
            return Ok(());
        }
        let index = to.index;
        self.procs[index].paused_until = None;
        for (route, command) in std::mem::take(&mut self.procs[index].held_requests) {
            self.transmit(route, command);
        }
        let mut replies = std::mem::take(&mut self.procs[index].held_replies).into_iter();
        while let Some(reply) = replies.next() {
            if self.is_paused(index) {
                // Paused again while catching up: the rest waits once more.
                let p = &mut self.procs[index];
                p.held_replies.push(reply);
                p.held_replies.extend(replies);
                return Ok(());
            }
            self.deliver_now(index, reply)?;
        }
        if !self.is_paused(index) {
            self.feed(index, Input::Tick)?;
            self.semaphore_drive(index)?;
        }
        Ok(())
    }

    pub(crate) fn deliver(&mut self, to: ProcRef, reply: Reply) -> Result<(), String> {
        if !self.is_current(to) {
            return Ok(());
        }
        if self.is_paused(to.index) {
            self.procs[to.index].held_replies.push(reply);
            return Ok(());
        }
        self.deliver_now(to.index, reply)
    }

    fn deliver_now(&mut self, index: usize, reply: Reply) -> Result<(), String> {
        match reply {
            Reply::Input(input) => self.feed(index, input),
            Reply::Semaphore(op, outcome) => self.semaphore_reply(index, op, outcome),
        }
    }

    /// A handler's task ends: with its result, or (`None`) aborted. The
    /// first end of a handler counts; a later one (the planned end of a
    /// handler that was stopped early) is ignored.
    pub(crate) fn handler_done(
        &mut self,
        to: ProcRef,
        receipt: Receipt,
        result: Option<HandlerResult>,
    ) -> Result<(), String> {
        if !self.is_current(to) || !self.procs[to.index].handlers.remove(&receipt) {
            return Ok(());
        }
        let input = match result {
            Some(result) => Input::HandlerDone(receipt, result),
            None => {
                self.coverage.path("handler_aborted");
                Input::HandlerAborted(receipt)
            }
        };
        self.deliver(to, Reply::Input(input))
    }

    pub(crate) fn timer(&mut self, to: ProcRef, generation: u64) -> Result<(), String> {
        let current = self.is_current(to)
            && !self.is_paused(to.index)
            && self.procs[to.index].timer_generation == generation;
        if current {
            self.feed(to.index, Input::Tick)?;
        }
        Ok(())
    }

    /// Feeds one input to a process's dispatcher, checks its bookkeeping,
    /// carries out its effects, and sets its next timer.
    pub(crate) fn feed(&mut self, index: usize, input: Input) -> Result<(), String> {
        let now = self.now();
        let draw = self.rng.next_u64();
        let after_tick = matches!(input, Input::Tick);
        let p = &mut self.procs[index];
        if let Input::Outcome(_, Outcome::Claimed(Ok(claimed))) = &input {
            p.received
                .extend(claimed.jobs.iter().map(|job| job.receipt));
            if !claimed.jobs.is_empty() && p.dispatcher.is_shutting_down() {
                self.coverage.path("claimed_while_stopping");
            }
        }
        let local = p.local(now);
        let refuted = p.dispatcher.stats().hints_refuted;
        p.dispatcher.handle(local, draw, input);
        let refuted = p.dispatcher.stats().hints_refuted - refuted;
        self.coverage.paths_add("cancel_hint_refuted", refuted);
        let p = &mut self.procs[index];
        p.dispatcher
            .check_invariants()
            .map_err(|broken| format!("process {} dispatcher: {broken}", p.me.id))?;
        let mut acted = false;
        while let Some(effect) = self.procs[index].dispatcher.poll_effect() {
            acted = true;
            self.on_effect(index, effect)?;
        }
        self.rearm_timer(index, after_tick, acted)
    }

    /// Schedules the dispatcher's next wake-up. A timer still due right
    /// after a tick that did nothing would make a real caller spin (a
    /// process burning a core, a pool on a paused clock that never lets
    /// time move): that is a finding.
    fn rearm_timer(&mut self, index: usize, after_tick: bool, acted: bool) -> Result<(), String> {
        let now = self.now();
        let p = &mut self.procs[index];
        let Some((local, reason)) = p.dispatcher.poll_timeout() else {
            return Ok(());
        };
        let at = p.global(local).max(now);
        if after_tick && at <= now {
            if acted {
                // Its effects' answers move it on; tick again when they do.
                return Ok(());
            }
            return Err(format!(
                "process {}: right after a tick that did nothing, the dispatcher asks for \
                 another at {local} ({reason:?}): a caller would spin",
                p.me.id
            ));
        }
        p.timer_generation += 1;
        let (to, generation) = (p.me, p.timer_generation);
        self.schedule(at, Event::Timer { to, generation });
        Ok(())
    }

    fn on_effect(&mut self, index: usize, effect: Effect) -> Result<(), String> {
        let me = self.procs[index].me;
        match effect {
            Effect::Execute(id, command) => self.send(index, Route::Dispatcher(me, id), command),
            Effect::Prepare(jobs) => {
                // The jobs' own limits, as their handlers would name them: a
                // key limit for some kinds, drawn from the payload.
                let answers = jobs
                    .iter()
                    .map(|job| (job.receipt, Ok(workload::job_limits(&self.names, job))))
                    .collect();
                let reply = Reply::Input(Input::Prepared(answers));
                self.schedule(self.now(), Event::Deliver { to: me, reply });
                Ok(())
            }
            Effect::StartHandler(job) => {
                self.start_handler(index, job);
                Ok(())
            }
            Effect::StopHandler(receipt, reason) => {
                self.stop_handler(me, receipt, reason);
                Ok(())
            }
            Effect::AbortHandler(receipt) => {
                // An abort lands at the handler's next await.
                let at = self.now().plus(Millis(self.rng.random_range(0..5)));
                let event = Event::HandlerDone {
                    to: me,
                    receipt,
                    result: None,
                };
                self.schedule(at, event);
                Ok(())
            }
            Effect::Abandon(_, why) => {
                if why == Abandoned::Limited {
                    self.coverage.path("limit_full_handed_back");
                }
                Ok(())
            }
            Effect::ShutdownComplete => self.shutdown_complete(index),
        }
    }

    /// A handler starts: it ends after a drawn length with a drawn result.
    fn start_handler(&mut self, index: usize, job: weir_core::ClaimedJob) {
        let me = self.procs[index].me;
        let faults = self.faults_on();
        let (length, result) = workload::handler_plan(&mut self.rng, faults);
        if self.procs[index]
            .dispatcher
            .slots()
            .any(|(r, _, _)| r == job.receipt)
        {
            self.coverage.path("limit_slot_taken");
        }
        self.procs[index].handlers.insert(job.receipt);
        let receipt = job.receipt;
        let event = Event::HandlerDone {
            to: me,
            receipt,
            result: Some(result),
        };
        self.schedule(self.now().plus(length), event);
    }

    /// A handler is told to stop: most notice the token and end soon, with
    /// some result; the rest go on until aborted.
    fn stop_handler(&mut self, me: ProcRef, receipt: Receipt, reason: StopReason) {
        match reason {
            StopReason::Fenced => self.coverage.path("handler_stopped_fenced"),
            StopReason::Timeout => self.coverage.path("handler_timed_out"),
            StopReason::SlotLost => self.coverage.path("limit_slot_lost"),
            StopReason::Shutdown => self.coverage.path("handler_stopped_shutdown"),
        }
        if self.rng.random_ratio(2, 3) {
            let at = self.now().plus(Millis(self.rng.random_range(0..50)));
            let result = Some(HandlerResult::Complete);
            let event = Event::HandlerDone {
                to: me,
                receipt,
                result,
            };
            self.schedule(at, event);
        }
    }

    /// The dispatcher says shutdown is complete: nothing may still run.
    fn shutdown_complete(&mut self, index: usize) -> Result<(), String> {
        let me = self.procs[index].me;
        if let Some(receipt) = self.procs[index].handlers.first() {
            return Err(format!(
                "process {}: shutdown completed while the handler of {receipt} still runs",
                me.id
            ));
        }
        self.check_nothing_left_running(index)?;
        self.coverage.path("graceful_shutdown");
        if self.procs[index].stopping {
            self.coverage.path("shutdown_under_faults_completed");
            self.schedule(self.now(), Event::Exit { to: me });
        }
        Ok(())
    }

    /// After a shutdown completed: the dispatcher holds no attempt, and no
    /// job a claim brought it still runs in storage under that attempt
    /// (each was reported, handed back, or taken away). A claim whose
    /// answer was lost is not here: the dispatcher never heard of its
    /// jobs, and only a rescue finds them.
    fn check_nothing_left_running(&self, index: usize) -> Result<(), String> {
        let p = &self.procs[index];
        if let Some(receipt) = p.dispatcher.running().next() {
            return Err(format!(
                "process {}: shutdown completed still holding the attempt {receipt}",
                p.me.id
            ));
        }
        let still = self.backend.inspect(|w| {
            p.received.iter().copied().find(|r| {
                w.job(r.job).is_some_and(|job| {
                    job.epoch == r.epoch && matches!(job.state, weir_core::JobState::Running { .. })
                })
            })
        });
        match still {
            Some(receipt) => Err(format!(
                "process {}: shutdown completed, but {receipt}, which a claim brought it, \
                 still runs in storage (never handed back or reported)",
                p.me.id
            )),
            None => Ok(()),
        }
    }

    /// A process sends a command. This is where a process pauses (between
    /// building a command and sending it, so the command goes out late) and
    /// where a semaphore try fails before reaching storage.
    fn send(&mut self, index: usize, route: Route, command: Command) -> Result<(), String> {
        if self.is_paused(index) {
            self.procs[index].held_requests.push((route, command));
            return Ok(());
        }
        if self.faults_on() && matches!(route, Route::Dispatcher(..)) {
            if let Some((kind, length)) = self.roll_pause(&command) {
                self.pause(index, length, kind);
                self.procs[index].held_requests.push((route, command));
                return Ok(());
            }
        }
        let session_try = matches!(
            command,
            Command::SlotTry(cmd::SlotTry {
                lease_ttl: None,
                ..
            })
        );
        if let (Route::Semaphore(to, op), true) = (&route, session_try) {
            if self.faults_on() && self.plan.roll(FaultKind::SlotError, &mut self.rng) {
                self.coverage.fault(FaultKind::SlotError);
                let reply = Reply::Semaphore(*op, None);
                let at = self.now().plus(self.latency());
                self.schedule(at, Event::Deliver { to: *to, reply });
                return Ok(());
            }
        }
        self.transmit(route, command);
        Ok(())
    }

    /// Puts a request on the wire now: it arrives at storage after a
    /// drawn latency, remembering when it was sent.
    fn transmit(&mut self, route: Route, command: Command) {
        let sent = self.now();
        let at = sent.plus(self.latency());
        self.schedule(
            at,
            Event::Arrive {
                route,
                command,
                sent,
            },
        );
    }

    /// A pause past the claimer idle threshold, or one past the heartbeat
    /// staleness limit but short of the idle threshold. Pauses strike more
    /// often where they find the most: a leader's maintenance writes (sent
    /// late, under a lapsed term) and a worker's results (sent late, after
    /// the job was rescued and claimed again).
    fn roll_pause(&mut self, command: &Command) -> Option<(FaultKind, Millis)> {
        let factor = match command {
            Command::Promote(_) | Command::Rescue(_) | Command::Prune(_) => 10,
            Command::Complete(_) | Command::Fail(_) | Command::Snooze(_) => 3,
            _ => 1,
        };
        if self
            .plan
            .roll_scaled(FaultKind::ClaimerPause, factor, &mut self.rng)
        {
            let past = self.rng.random_range(100..2_500);
            return Some((FaultKind::ClaimerPause, Millis(IDLE_THRESHOLD.0 + past)));
        }
        if self
            .plan
            .roll_scaled(FaultKind::Pause, factor, &mut self.rng)
        {
            let room = IDLE_THRESHOLD.0 - HEARTBEAT_STALE_AFTER.0;
            let past = self.rng.random_range(100..room - 50);
            return Some((FaultKind::Pause, Millis(HEARTBEAT_STALE_AFTER.0 + past)));
        }
        None
    }

    fn schedule_semaphore_wake(&mut self, index: usize, at: Timestamp) {
        let p = &mut self.procs[index];
        p.semaphore.generation += 1;
        let (to, generation) = (p.me, p.semaphore.generation);
        self.schedule(at, Event::SemaphoreWake { to, generation });
    }

    pub(crate) fn semaphore_wake(&mut self, to: ProcRef, generation: u64) -> Result<(), String> {
        let current = self.is_current(to)
            && !self.is_paused(to.index)
            && self.procs[to.index].semaphore.generation == generation;
        if current {
            self.semaphore_drive(to.index)?;
        }
        Ok(())
    }

    fn semaphore_drive(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let p = &self.procs[index];
        if !p.alive || p.paused_until.is_some() || p.semaphore.in_flight {
            return Ok(());
        }
        match p.semaphore.state {
            SemState::Idle { next_at } if now < next_at => {
                self.schedule_semaphore_wake(index, next_at);
                Ok(())
            }
            SemState::Idle { .. } => self.semaphore_start(index),
            SemState::Acquiring { .. } => self.semaphore_poll(index),
            SemState::Holding { .. } => self.semaphore_hold(index),
            SemState::Releasing | SemState::Off => Ok(()),
        }
    }

    /// Starts an acquisition: always with faults on, a couple more times in
    /// the liveness phase (where each must end by its deadline), then never.
    fn semaphore_start(&mut self, index: usize) -> Result<(), String> {
        let liveness = matches!(self.phase, Phase::Liveness { .. });
        let user = &mut self.procs[index].semaphore;
        if !(self.phase == Phase::Faults || liveness && user.cycles_left > 0) {
            user.state = SemState::Off;
            return Ok(());
        }
        if liveness {
            user.cycles_left -= 1;
        }
        let plan = workload::hold_plan(&mut self.rng);
        let local = self.procs[index].local(self.now());
        let acquisition =
            Acquisition::new(Some(self.semaphore.permits), local, self.semaphore.wait);
        self.procs[index].semaphore.state = SemState::Acquiring {
            acquisition,
            plan,
            clean: liveness,
        };
        self.semaphore_poll(index)
    }

    fn semaphore_poll(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let draw = self.rng.next_u64();
        let p = &mut self.procs[index];
        let local = p.local(now);
        let SemState::Acquiring {
            acquisition,
            plan,
            clean,
        } = &mut p.semaphore.state
        else {
            unreachable!("polled only while acquiring")
        };
        let (plan, clean, deadline) = (*plan, *clean, acquisition.deadline());
        match acquisition.poll(local, draw) {
            AcquireStep::Try(slot) => {
                p.semaphore.in_flight = true;
                let command = Command::SlotTry(cmd::SlotTry {
                    semaphore: self.names.semaphore.clone(),
                    permits: self.semaphore.permits,
                    slot,
                    holder: p.me.id,
                    lease_ttl: plan.lease_ttl,
                });
                let route = Route::Semaphore(p.me, SemOp::Try(slot));
                self.send(index, route, command)
            }
            AcquireStep::SleepUntil(until) => {
                let at = p.global(until);
                self.schedule_semaphore_wake(index, at);
                Ok(())
            }
            AcquireStep::Acquired(grant) => {
                self.check_wait(index, clean, deadline)?;
                self.coverage.path("semaphore_acquired");
                let renew_at = plan
                    .lease_ttl
                    .filter(|ttl| plan.hold_for > ttl.half())
                    .map(|ttl| now.plus(ttl.half()));
                self.procs[index].semaphore.state = SemState::Holding {
                    grant,
                    plan,
                    release_at: now.plus(plan.hold_for),
                    renew_at,
                };
                self.semaphore_hold(index)
            }
            AcquireStep::TimedOut { .. } => {
                self.check_wait(index, clean, deadline)?;
                self.coverage.path("semaphore_wait_timed_out");
                self.semaphore_idle(index);
                Ok(())
            }
            AcquireStep::Disabled => Err("a semaphore with permits is never disabled".into()),
        }
    }

    /// Liveness: with faults off, a waiter acquires or times out by its
    /// deadline, plus the one scan it may start at the deadline (a try's
    /// round trip per slot): it never sleeps past the deadline.
    fn check_wait(&self, index: usize, clean: bool, deadline: Timestamp) -> Result<(), String> {
        let p = &self.procs[index];
        let local = p.local(self.now());
        let slack = Millis(2 * self.latency_max * u64::from(self.semaphore.permits));
        if clean && local > deadline.plus(slack) {
            return Err(format!(
                "process {}'s semaphore wait ended at {local}, past its deadline {deadline} \
                 (and the {slack} a try's round trip may take)",
                p.me.id
            ));
        }
        Ok(())
    }

    fn semaphore_idle(&mut self, index: usize) {
        let next_at = self.now().plus(Millis(self.rng.random_range(50..1_500)));
        self.procs[index].semaphore.state = SemState::Idle { next_at };
        self.schedule_semaphore_wake(index, next_at);
    }

    fn semaphore_hold(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let p = &mut self.procs[index];
        let SemState::Holding {
            grant,
            plan,
            release_at,
            renew_at,
        } = p.semaphore.state
        else {
            unreachable!("called only while holding")
        };
        let semaphore = self.names.semaphore.clone();
        let me = p.me;
        if now >= release_at {
            p.semaphore.state = SemState::Releasing;
            p.semaphore.in_flight = true;
            let command = Command::SlotRelease(cmd::SlotRelease { semaphore, grant });
            return self.send(index, Route::Semaphore(me, SemOp::Release), command);
        }
        match (renew_at, plan.lease_ttl) {
            (Some(at), Some(lease_ttl)) if at <= now => {
                p.semaphore.in_flight = true;
                let command = Command::SlotRenew(cmd::SlotRenew {
                    semaphore,
                    grant,
                    lease_ttl,
                });
                self.send(index, Route::Semaphore(me, SemOp::Renew), command)
            }
            _ => {
                let next = renew_at.map_or(release_at, |at| at.min(release_at));
                self.schedule_semaphore_wake(index, next);
                Ok(())
            }
        }
    }

    fn semaphore_reply(
        &mut self,
        index: usize,
        op: SemOp,
        outcome: Option<Outcome>,
    ) -> Result<(), String> {
        let now = self.now();
        let p = &mut self.procs[index];
        p.semaphore.in_flight = false;
        match (op, &mut p.semaphore.state) {
            (SemOp::Try(slot), SemState::Acquiring { acquisition, .. }) => {
                let result = match outcome {
                    Some(Outcome::SlotTried(Ok(grant))) => TryResult::Acquired(grant),
                    Some(Outcome::SlotTried(Err(Reject::SlotBusy { .. }))) => TryResult::Busy,
                    Some(_) => TryResult::Error,
                    None => {
                        self.coverage.path("semaphore_try_error_skipped");
                        TryResult::Error
                    }
                };
                acquisition.handle_try(slot, result);
                self.semaphore_poll(index)
            }
            (
                SemOp::Renew,
                SemState::Holding {
                    plan,
                    release_at,
                    renew_at,
                    ..
                },
            ) => {
                match outcome {
                    Some(Outcome::SlotRenewed(Ok(()))) => {
                        let ttl = plan.lease_ttl.expect("only leases are renewed");
                        let next = now.plus(ttl.half());
                        *renew_at = (next < *release_at).then_some(next);
                    }
                    // The lease lapsed (a pause, a lost renewal): let go
                    // now; the release is a no-op but costs nothing.
                    Some(_) => {
                        *release_at = now;
                        *renew_at = None;
                    }
                    None => *renew_at = Some(now.plus(Millis(20))),
                }
                self.semaphore_hold(index)
            }
            (SemOp::Release, SemState::Releasing) => {
                self.semaphore_idle(index);
                Ok(())
            }
            (op, _) => Err(format!("semaphore reply {op:?} in an unexpected state")),
        }
    }
}
