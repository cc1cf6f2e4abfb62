//! Model 6: real [`Dispatcher`]s over one [`World`], with shutdown at any
//! moment, lost answers and attempts taken away under them.
//!
//! Each process runs the core's own sans-IO [`Dispatcher`]: the model feeds
//! it [`Input`]s and carries out every [`Effect`] it asks for, as the
//! runtime's worker pool and the simulator do. A storage command
//! ([`Effect::Execute`]) is put in flight and later reaches the world
//! through [`crate::check::apply`] (the core's `World::apply` plus both
//! invariant layers), or never does. The model is the environment: when a command
//! arrives and whether its answer comes back, when a handler ends and with
//! what, when a maintenance leader (not one of the processes) rescues or an
//! operator cancels a job, when shutdown is asked for, and a discrete clock.
//!
//! | action | what runs |
//! |---|---|
//! | `Deliver { p, id, lost: false }` | command `id` of process `p` reaches storage; its outcome is fed back (`Input::Outcome`) |
//! | `Deliver { p, id, lost: true }` | it reaches storage, but the answer is lost (`Input::Lost`) |
//! | `Drop { p, id }` | it never reaches storage (`Input::Lost`) |
//! | `End { p, receipt, fail }` | a handler returns `Complete` or `Fail` (`Input::HandlerDone`) |
//! | `Aborted { p, receipt }` | an aborted handler's task ends (`Input::HandlerAborted`) |
//! | `HandlerFenced { p, receipt }` | a handler's own heartbeat is refused, its job taken away (`Input::Fenced`) |
//! | `Shutdown(p)` | shutdown is asked for, once per process (`Input::Shutdown`) |
//! | `Rescue` | the leader rescues every stale running job (`Command::Rescue`) |
//! | `Cancel(job)` | an operator cancels a running job (`Command::Cancel`) |
//! | `Tick` | the clock advances by one unit; every dispatcher gets `Input::Tick` |
//!
//! [`Effect::Prepare`] is answered at once, inside the step that asked
//! (every job runs under no limit of its own): it is local, touches
//! nothing another process sees, and answering later would only add
//! interleavings of a pure function. A handler may end at any moment after
//! it started, or never by itself (a long one): only shutdown's deadline
//! and its abort end it then.
//!
//! ## Bounds
//!
//! One unit of the clock is one millisecond of the dispatcher's
//! configuration: polls every unit, flushes at once, shutdown's patience
//! one unit and a stop's grace one more, retries after a lost answer one
//! unit later. Heartbeats are due only after the clock stops, and the
//! world finds a heartbeat stale after one unit, so a rescue can take any
//! job that has run for a unit: that is what "fenced at any moment" needs.
//! Each [`Shape`] bounds the dispatchers, jobs, `max_workers`, the
//! backend's batch limit, lost answers, take-aways and the clock. The
//! dispatchers carry their process ids in private fields, so the
//! fingerprint is the state itself (no symmetry reduction).
//!
//! ## Properties
//!
//! A receipt is **received** by a process when a claim's answer naming it
//! reached its dispatcher. A claim whose answer was lost claims jobs the
//! dispatcher never hears of: by design, the leader rescues those once
//! their heartbeats go stale, so the properties are about received
//! receipts. A receipt is **taken away** when a rescue or a cancel moved
//! its job off that attempt. A **hand-back** is the dispatcher's
//! `Snooze(0)` (storage gives the attempt back); it **landed** when storage
//! applied it and took it.

use std::collections::{BTreeMap, BTreeSet};

use stateright::{Model, Property};
use weir_core::cmd;
use weir_core::{
    Backoff, ClaimerConfig, Command, CommandId, Dispatcher, DispatcherConfig, DispatcherMutation,
    Effect, FailError, HandlerResult, Input, JobId, JobLimits, JobState, Kind, LeaderGrant, Millis,
    NewJob, Outcome, Payload, ProcessId, Receipt, Retry, StopReason, Timestamp, World, WorldConfig,
};

use crate::check::{apply, guard, run, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use weir_test_kit::{pid, queue};

/// The dispatcher's own bookkeeping holds after every input
/// (`Dispatcher::check_invariants`), and no input makes it panic.
pub const DISPATCHER_INVARIANTS: &str = "dispatcher invariants hold (check_invariants, no panic)";
/// (a) Once a dispatcher's shutdown completed, nothing it claimed still
/// runs: no handler it started is still running, it holds no attempt, and
/// no job it received is still running in storage under that receipt.
pub const NOTHING_LEFT_RUNNING: &str = "after shutdown, nothing this process claimed still runs";
/// (b) No attempt is spent for nothing: every received receipt that is
/// over (its job left that attempt in storage, or its dispatcher shut
/// down) had its handler started, or was handed back to storage (the
/// hand-back landed), or was taken away by a rescue or a cancel.
pub const NO_ATTEMPT_WASTED: &str = "every claimed attempt starts a handler or is handed back";
/// (c) No command carries more items than the backend takes, and no claim
/// asks for more jobs than the dispatcher has free workers (or gets more
/// than it asked for).
pub const BATCHES_WITHIN_LIMITS: &str = "no batch exceeds the backend's limit or free workers";
/// (d) Once a dispatcher's shutdown completed, every result a handler
/// returned to it (a handler not told to stop) reached storage (storage
/// applied a report carrying it, and decided), unless the attempt was
/// taken away.
pub const RESULTS_FLUSHED: &str = "results are flushed before shutdown completes";
/// Liveness (faults off): every dispatcher's shutdown completes.
pub const ALL_SHUT_DOWN: &str = "every dispatcher's shutdown completes";
/// Example: a claim's answer arrived after shutdown began, with jobs, and
/// the dispatcher then completed its shutdown.
pub const CLAIMED_WHILE_STOPPING: &str =
    "a claim answered during shutdown, then shutdown completes";
/// Example: a report's answer was lost (or the report never arrived), and
/// the dispatcher later completed its shutdown.
pub const RESULT_LOST: &str = "a report is lost, then shutdown completes";
/// Example: storage refused a result because its attempt was taken away.
pub const FENCED_RESULT_REFUSED: &str = "a result of an attempt taken away is refused";
/// Example: shutdown's patience ran out and a running handler was told to
/// stop, and its job was handed back.
pub const STOPPED_AT_DEADLINE: &str = "shutdown's deadline stops a handler and hands it back";
/// Example: a handler was stopped because its attempt was taken away.
pub const HANDLER_FENCED: &str = "a handler whose attempt was taken away is stopped";

/// The maintenance leader and operator: not one of the dispatchers.
const MAINTAINER: ProcessId = ProcessId(100);

/// The size of one run of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Dispatchers (processes), one queue each, the same queue.
    pub dispatchers: usize,
    /// Jobs, enqueued at `t = 0`.
    pub jobs: usize,
    /// Each dispatcher's `max_workers` (and `claim_batch_max`).
    pub max_workers: u32,
    /// The backend's batch limit (`WorldConfig::batch_max`, and the
    /// dispatchers' `batch_max`).
    pub batch_max: usize,
    /// Answers that may be lost, in all (a command that never arrives, or
    /// one whose answer is lost).
    pub losses: u8,
    /// Attempts that may be taken away, in all (a rescue or a cancel).
    pub takeaways: u8,
    /// The clock stops here.
    pub time_max: i64,
    /// Handlers may fail (else they only complete, or are stopped).
    pub fail: bool,
}

impl Shape {
    /// One dispatcher with two workers over two jobs, claims and reports
    /// of at most two, handlers that complete or fail; one lost answer,
    /// one take-away, two units of time.
    pub const ONE: Shape = Shape {
        dispatchers: 1,
        jobs: 2,
        max_workers: 2,
        batch_max: 2,
        losses: 1,
        takeaways: 1,
        time_max: 2,
        fail: true,
    };
    /// Two dispatchers with one worker each over two jobs, handlers that
    /// complete (or are stopped); one take-away, no lost answer (one costs
    /// five times the states), one unit of time.
    pub const TWO: Shape = Shape {
        dispatchers: 2,
        jobs: 2,
        max_workers: 1,
        batch_max: 1,
        losses: 0,
        takeaways: 1,
        time_max: 1,
        fail: false,
    };
    /// [`Shape::ONE`] without faults: liveness.
    pub const CLEAN: Shape = Shape {
        losses: 0,
        takeaways: 0,
        ..Shape::ONE
    };

    fn faulty(&self) -> bool {
        self.losses > 0 || self.takeaways > 0
    }
}

/// The dispatcher model.
#[derive(Clone, Debug)]
pub struct DispatcherModel {
    shape: Shape,
    liveness: bool,
    mutation: Option<DispatcherMutation>,
}

impl DispatcherModel {
    /// The model of `shape` over the correct core.
    pub fn new(shape: Shape) -> DispatcherModel {
        assert!((1..=2).contains(&shape.dispatchers) && shape.jobs >= 1);
        DispatcherModel {
            shape,
            liveness: !shape.faulty(),
            mutation: None,
        }
    }

    /// The model with every dispatcher making the deliberate mistake `m`,
    /// in [`Shape::ONE`] (a lost answer and a take-away: every mutation
    /// shows there).
    pub fn with_mutation(m: DispatcherMutation) -> DispatcherModel {
        DispatcherModel {
            mutation: Some(m),
            ..DispatcherModel::new(Shape::ONE)
        }
    }

    /// Checks [`ALL_SHUT_DOWN`] whatever the faults (with faults on it
    /// fails: a lost report's retry waits for a tick the bounded clock
    /// may not give, which shows the property is not vacuous).
    pub fn with_liveness(self) -> DispatcherModel {
        DispatcherModel {
            liveness: true,
            ..self
        }
    }

    fn world_config(&self) -> WorldConfig {
        WorldConfig {
            claimer: ClaimerConfig {
                slots_per_queue: self.shape.dispatchers as u16,
                lease_ttl: Millis(1_000),
                idle_threshold: Millis(1_000),
            },
            heartbeat_stale_after: Millis(1),
            backoff: Backoff::constant(Millis(0)),
            leader_ttl: Millis(1_000),
            limits: JobLimits::default(),
            batch_max: self.shape.batch_max,
        }
    }

    fn config(&self, p: usize) -> DispatcherConfig {
        let workers = self.shape.max_workers;
        DispatcherConfig {
            claim_batch_max: workers,
            claim_batch_min: 1,
            claim_delay: Millis(0),
            poll_interval: Millis(1),
            flush_max: self.shape.batch_max,
            flush_delay: Millis(0),
            heartbeat_interval: Millis(1_000),
            lead: false,
            shutdown_timeout: Millis(1),
            stop_grace: Millis(1),
            retry_after: Millis(1),
            batch_max: self.shape.batch_max,
            ..DispatcherConfig::new(pid(p), queue(), workers)
        }
    }
}

/// Where a started handler is, as its task sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handler {
    /// Running, not told anything.
    Running,
    /// Told to stop (`Effect::StopHandler`); it may still return a result.
    Told,
    /// Aborted (`Effect::AbortHandler`); its task ends without a result.
    Aborting,
}

/// Ghost bookkeeping of one process, for the properties.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Receipts a claim's answer brought to the dispatcher.
    pub received: BTreeSet<Receipt>,
    /// Receipts whose handler was started.
    pub started: BTreeSet<Receipt>,
    /// Receipts whose hand-back storage applied and took.
    pub handed_back: BTreeSet<Receipt>,
    /// Receipts whose handler returned a result it was not told to drop.
    pub results: BTreeSet<Receipt>,
    /// Receipts a report that storage applied carried (taken or refused:
    /// storage decided).
    pub landed: BTreeSet<Receipt>,
}

/// One process: its dispatcher, its commands in flight, its handlers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    /// The core's dispatcher.
    pub dispatcher: Dispatcher,
    /// Commands on their way to storage.
    pub net: BTreeMap<CommandId, Command>,
    /// Handlers started whose task has not ended.
    pub handlers: BTreeMap<Receipt, Handler>,
    /// Shutdown was asked for.
    pub shutdown_sent: bool,
    /// Ghosts.
    pub ghost: Ghost,
}

/// Ghosts for the `sometimes` properties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seen {
    /// A claim answered with jobs reached a dispatcher shutting down.
    pub claimed_while_stopping: bool,
    /// A report's answer was lost, or the report never arrived.
    pub report_lost: bool,
    /// Storage refused a result whose attempt was taken away.
    pub fenced_result_refused: bool,
    /// Shutdown's deadline told a handler to stop.
    pub stopped_at_deadline: bool,
    /// A handler was told to stop because its attempt was taken away.
    pub handler_fenced: bool,
}

/// A state of the dispatcher model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DispatcherState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The maintainer's leader grant (elected at `t = 0`, never lapses).
    pub leader: LeaderGrant,
    /// The processes.
    pub procs: Vec<Proc>,
    /// Answers that may still be lost.
    pub losses: u8,
    /// Attempts that may still be taken away.
    pub takeaways: u8,
    /// Receipts a rescue or a cancel moved their job off.
    pub taken_away: BTreeSet<Receipt>,
    /// Ghosts.
    pub seen: Seen,
    /// Broken properties.
    pub faults: Faults,
}

/// A step of the dispatcher model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DispatcherAction {
    /// A command reaches storage; `lost`: its answer does not come back.
    Deliver {
        /// The process.
        p: usize,
        /// The command.
        id: CommandId,
        /// The answer is lost.
        lost: bool,
    },
    /// A command never reaches storage.
    Drop {
        /// The process.
        p: usize,
        /// The command.
        id: CommandId,
    },
    /// A handler returns a result: `Fail` (retryable) or `Complete`.
    End {
        /// The process.
        p: usize,
        /// The attempt.
        receipt: Receipt,
        /// Fail rather than complete.
        fail: bool,
    },
    /// An aborted handler's task ends.
    Aborted {
        /// The process.
        p: usize,
        /// The attempt.
        receipt: Receipt,
    },
    /// A handler's own heartbeat is refused: its attempt was taken away.
    HandlerFenced {
        /// The process.
        p: usize,
        /// The attempt.
        receipt: Receipt,
    },
    /// Shutdown is asked for.
    Shutdown(usize),
    /// The leader rescues stale running jobs.
    Rescue,
    /// An operator cancels a running job.
    Cancel(JobId),
    /// Time passes.
    Tick,
}

fn new_job() -> NewJob {
    NewJob {
        timeout: Millis(1_000),
        ..NewJob::new(
            queue(),
            Kind::new("work").expect("a valid kind"),
            Payload::default(),
        )
    }
}

/// Whether storage shows the job of `receipt` running that attempt.
fn running_at(world: &World, receipt: Receipt) -> bool {
    world.job(receipt.job).is_some_and(|job| {
        job.epoch == receipt.epoch && matches!(job.state, JobState::Running { .. })
    })
}

/// The attempts storage shows running.
fn running_receipts(world: &World) -> BTreeSet<Receipt> {
    world
        .jobs()
        .filter(|job| matches!(job.state, JobState::Running { .. }))
        .map(|job| Receipt {
            job: job.id,
            epoch: job.epoch,
        })
        .collect()
}

/// The receipts a report command carries, in order.
fn reported(command: &Command) -> Option<Vec<Receipt>> {
    match command {
        Command::Complete(cmd::Complete { receipts })
        | Command::CancelAttempts(cmd::CancelAttempts { receipts }) => Some(receipts.clone()),
        Command::Fail(cmd::Fail { failures }) => Some(failures.iter().map(|f| f.receipt).collect()),
        Command::Snooze(cmd::Snooze { snoozes }) => Some(snoozes.iter().map(|s| s.0).collect()),
        Command::WaitExternal(cmd::WaitExternal { waits }) => {
            Some(waits.iter().map(|w| w.0).collect())
        }
        _ => None,
    }
}

/// Each item of a report's outcome: whether storage took it.
fn report_items(outcome: &Outcome) -> Vec<bool> {
    match outcome {
        Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::Waiting(r)
        | Outcome::AttemptsCancelled(r) => r
            .as_ref()
            .map(|items| items.iter().map(Result::is_ok).collect())
            .unwrap_or_default(),
        Outcome::Failed(r) => r
            .as_ref()
            .map(|items| items.iter().map(Result::is_ok).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// How many items a command carries, against the backend's limit.
fn items(command: &Command) -> usize {
    match command {
        Command::Claim(cmd::Claim { max, .. }) => *max as usize,
        Command::Heartbeat(cmd::Heartbeat { receipts }) => receipts.len(),
        other => reported(other).map_or(1, |r| r.len()),
    }
}

impl DispatcherState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    /// Feeds `input` to process `p`'s dispatcher and carries out every
    /// effect it asks for, as a caller would.
    fn feed(&mut self, p: usize, input: Input) {
        if !self.faults.is_empty() {
            return;
        }
        let now = self.now();
        if let Input::HandlerDone(receipt, _) = &input {
            if self.procs[p].handlers.get(receipt) == Some(&Handler::Running) {
                self.procs[p].ghost.results.insert(*receipt);
            }
        }
        let dispatcher = &mut self.procs[p].dispatcher;
        let mut caught = Faults::default();
        guard(&mut caught, "Dispatcher::handle", || {
            dispatcher.handle(now, 0, input)
        });
        if let Some(fault) = caught.iter().next() {
            let detail = fault.detail.clone();
            self.faults.push(DISPATCHER_INVARIANTS, detail);
            return;
        }
        if let Err(broken) = self.procs[p].dispatcher.check_invariants() {
            self.faults.push(DISPATCHER_INVARIANTS, broken);
            return;
        }
        let held = self.procs[p].dispatcher.running().count() as u32;
        let mut effects = Vec::new();
        while let Some(effect) = self.procs[p].dispatcher.poll_effect() {
            effects.push(effect);
        }
        for effect in effects {
            self.on_effect(p, held, effect);
        }
    }

    fn on_effect(&mut self, p: usize, held: u32, effect: Effect) {
        let max_workers = self.procs[p].dispatcher.config().queues[0].max_workers;
        let batch_max = self.world.config().batch_max;
        let proc = &mut self.procs[p];
        match effect {
            Effect::Execute(id, command) => {
                let n = items(&command);
                if n > batch_max {
                    let detail = format!("{command:?} carries {n} items, above {batch_max}");
                    self.faults.push(BATCHES_WITHIN_LIMITS, detail);
                }
                if let Command::Claim(cmd::Claim { max, .. }) = &command {
                    if held + max > max_workers {
                        let detail =
                            format!("a claim of {max} with {held} of {max_workers} workers busy");
                        self.faults.push(BATCHES_WITHIN_LIMITS, detail);
                    }
                }
                proc.net.insert(id, command);
            }
            Effect::Prepare(jobs) => {
                let answers = jobs.iter().map(|j| (j.receipt, Ok(Vec::new()))).collect();
                self.feed(p, Input::Prepared(answers));
            }
            Effect::StartHandler(job) => {
                proc.handlers.insert(job.receipt, Handler::Running);
                proc.ghost.started.insert(job.receipt);
            }
            Effect::StopHandler(receipt, reason) => {
                match reason {
                    StopReason::Shutdown => self.seen.stopped_at_deadline = true,
                    StopReason::Fenced => self.seen.handler_fenced = true,
                    StopReason::Timeout | StopReason::SlotLost => {}
                }
                if let Some(h @ Handler::Running) = proc.handlers.get_mut(&receipt) {
                    *h = Handler::Told;
                }
            }
            Effect::AbortHandler(receipt) => {
                if let Some(h) = proc.handlers.get_mut(&receipt) {
                    *h = Handler::Aborting;
                }
            }
            Effect::Abandon(..) | Effect::ShutdownComplete => {}
        }
    }

    /// Command `id` of process `p` reaches storage.
    fn deliver(&mut self, p: usize, id: CommandId, lost: bool) {
        let now = self.now();
        let Some(command) = self.procs[p].net.remove(&id) else {
            return;
        };
        let receipts = reported(&command);
        let max = match &command {
            Command::Claim(cmd::Claim { max, .. }) => Some(*max),
            _ => None,
        };
        let Some(outcome) = apply(&mut self.world, now, command, &mut self.faults) else {
            return;
        };
        if let Some(receipts) = receipts {
            let snooze = matches!(outcome, Outcome::Snoozed(_));
            let taken = report_items(&outcome);
            let ghost = &mut self.procs[p].ghost;
            for (receipt, took) in receipts.iter().zip(taken) {
                ghost.landed.insert(*receipt);
                if snooze && took {
                    ghost.handed_back.insert(*receipt);
                }
                if !took && self.taken_away.contains(receipt) {
                    self.seen.fenced_result_refused = true;
                }
            }
            if lost {
                self.seen.report_lost = true;
            }
        }
        if lost {
            self.losses -= 1;
            return self.feed(p, Input::Lost(id));
        }
        if let Outcome::Claimed(Ok(claimed)) = &outcome {
            let max = max.expect("a claim's answer");
            if claimed.jobs.len() > max as usize {
                let detail = format!("a claim of {max} brought {}", claimed.jobs.len());
                self.faults.push(BATCHES_WITHIN_LIMITS, detail);
            }
            let proc = &mut self.procs[p];
            proc.ghost
                .received
                .extend(claimed.jobs.iter().map(|j| j.receipt));
            if !claimed.jobs.is_empty() && proc.dispatcher.is_shutting_down() {
                self.seen.claimed_while_stopping = true;
            }
        }
        self.feed(p, Input::Outcome(id, outcome));
    }

    fn drop_command(&mut self, p: usize, id: CommandId) {
        let Some(command) = self.procs[p].net.remove(&id) else {
            return;
        };
        if reported(&command).is_some() {
            self.seen.report_lost = true;
        }
        self.losses -= 1;
        self.feed(p, Input::Lost(id));
    }

    /// The maintainer takes attempts away with `command`.
    fn take_away(&mut self, command: Command) {
        let now = self.now();
        let before = running_receipts(&self.world);
        if apply(&mut self.world, now, command, &mut self.faults).is_none() {
            return;
        }
        let gone: Vec<Receipt> = before
            .into_iter()
            .filter(|r| !running_at(&self.world, *r))
            .collect();
        if !gone.is_empty() {
            self.takeaways -= 1;
        }
        self.taken_away.extend(gone);
    }

    fn advance(&mut self) {
        let now = self.now().plus(Millis(1));
        tick(&mut self.world, now, &mut self.faults);
        for p in 0..self.procs.len() {
            if !self.procs[p].dispatcher.is_shut_down() {
                self.feed(p, Input::Tick);
            }
        }
    }
}

fn nothing_left_running(s: &DispatcherState) -> bool {
    s.procs.iter().all(|proc| {
        !proc.dispatcher.is_shut_down()
            || (proc.handlers.is_empty()
                && proc.dispatcher.running().next().is_none()
                && proc
                    .ghost
                    .received
                    .iter()
                    .all(|r| !running_at(&s.world, *r)))
    })
}

fn no_attempt_wasted(s: &DispatcherState) -> bool {
    s.procs.iter().all(|proc| {
        let g = &proc.ghost;
        let done = proc.dispatcher.is_shut_down();
        g.received.iter().all(|r| {
            let over = done || !running_at(&s.world, *r);
            !over || g.started.contains(r) || g.handed_back.contains(r) || s.taken_away.contains(r)
        })
    })
}

fn results_flushed(s: &DispatcherState) -> bool {
    s.procs.iter().all(|proc| {
        let g = &proc.ghost;
        !proc.dispatcher.is_shut_down()
            || g.results
                .iter()
                .all(|r| g.landed.contains(r) || s.taken_away.contains(r))
    })
}

fn all_shut_down(s: &DispatcherState) -> bool {
    s.procs.iter().all(|p| p.dispatcher.is_shut_down())
}

impl Model for DispatcherModel {
    type State = DispatcherState;
    type Action = DispatcherAction;

    fn init_states(&self) -> Vec<DispatcherState> {
        let mut faults = Faults::default();
        let mut world = World::new(self.world_config());
        for _ in 0..self.shape.jobs {
            let jobs = vec![new_job()];
            let enqueued = apply(
                &mut world,
                Timestamp::ZERO,
                Command::Enqueue(cmd::Enqueue { jobs }),
                &mut faults,
            );
            assert!(
                matches!(enqueued, Some(Outcome::Enqueued(Ok(_)))),
                "{enqueued:?}"
            );
        }
        let elect = cmd::LeaderElect {
            process: MAINTAINER,
        };
        let Some(Ok(leader)) = run(&mut world, Timestamp::ZERO, elect, &mut faults) else {
            panic!("the maintainer is elected in an empty world");
        };
        let procs = (0..self.shape.dispatchers)
            .map(|p| {
                let config = self.config(p);
                config
                    .validate()
                    .expect("the model's configuration is valid");
                Proc {
                    dispatcher: Dispatcher::new(config, Timestamp::ZERO)
                        .with_mutation(self.mutation),
                    net: BTreeMap::new(),
                    handlers: BTreeMap::new(),
                    shutdown_sent: false,
                    ghost: Ghost::default(),
                }
            })
            .collect();
        let mut state = DispatcherState {
            world,
            leader,
            procs,
            losses: self.shape.losses,
            takeaways: self.shape.takeaways,
            taken_away: BTreeSet::new(),
            seen: Seen::default(),
            faults,
        };
        // Each process starts with its claimer lease: its first command
        // (the lease's acquisition) is answered at once.
        for p in 0..self.shape.dispatchers {
            state.feed(p, Input::Tick);
            let first = *state.procs[p].net.keys().next().expect("an acquisition");
            state.deliver(p, first, false);
        }
        vec![state]
    }

    fn actions(&self, state: &DispatcherState, actions: &mut Vec<DispatcherAction>) {
        use DispatcherAction::*;
        if !state.faults.is_empty() {
            return;
        }
        for (p, proc) in state.procs.iter().enumerate() {
            for &id in proc.net.keys() {
                actions.push(Deliver { p, id, lost: false });
                if state.losses > 0 {
                    actions.push(Deliver { p, id, lost: true });
                    actions.push(Drop { p, id });
                }
            }
            for (&receipt, &handler) in &proc.handlers {
                if handler != Handler::Aborting {
                    actions.push(End {
                        p,
                        receipt,
                        fail: false,
                    });
                    if self.shape.fail {
                        actions.push(End {
                            p,
                            receipt,
                            fail: true,
                        });
                    }
                } else {
                    actions.push(Aborted { p, receipt });
                }
                if handler == Handler::Running && !running_at(&state.world, receipt) {
                    actions.push(HandlerFenced { p, receipt });
                }
            }
            if !proc.shutdown_sent {
                actions.push(Shutdown(p));
            }
        }
        let running = running_receipts(&state.world);
        if state.takeaways > 0 && !running.is_empty() {
            actions.push(Rescue);
            for r in &running {
                actions.push(Cancel(r.job));
            }
        }
        if state.now().0 < self.shape.time_max {
            actions.push(Tick);
        }
    }

    fn next_state(
        &self,
        last: &DispatcherState,
        action: DispatcherAction,
    ) -> Option<DispatcherState> {
        use DispatcherAction::*;
        let mut next = last.clone();
        match action {
            Deliver { p, id, lost } => next.deliver(p, id, lost),
            Drop { p, id } => next.drop_command(p, id),
            End { p, receipt, fail } => {
                let result = if fail {
                    HandlerResult::Fail(FailError {
                        retry: Retry::Backoff,
                        message: "failed".to_string(),
                    })
                } else {
                    HandlerResult::Complete
                };
                // Fed while the handler is still listed: `feed` reads
                // whether it was told to stop.
                next.feed(p, Input::HandlerDone(receipt, result));
                next.procs[p].handlers.remove(&receipt);
            }
            Aborted { p, receipt } => {
                next.procs[p].handlers.remove(&receipt);
                next.feed(p, Input::HandlerAborted(receipt));
            }
            HandlerFenced { p, receipt } => next.feed(p, Input::Fenced(receipt)),
            Shutdown(p) => {
                next.procs[p].shutdown_sent = true;
                next.feed(p, Input::Shutdown);
            }
            Rescue => {
                let leader = next.leader;
                let max = self.shape.batch_max as u32;
                next.take_away(Command::Rescue(cmd::Rescue {
                    leader,
                    draw: 0,
                    max,
                }));
            }
            Cancel(job) => next.take_away(Command::Cancel(cmd::Cancel { job })),
            Tick => next.advance(),
        }
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(WORLD_INVARIANTS, |_, s: &DispatcherState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &DispatcherState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(DISPATCHER_INVARIANTS, |_, s: &DispatcherState| {
                s.faults.holds(DISPATCHER_INVARIANTS)
            }),
            Property::always(BATCHES_WITHIN_LIMITS, |_, s: &DispatcherState| {
                s.faults.holds(BATCHES_WITHIN_LIMITS)
            }),
            Property::always(NOTHING_LEFT_RUNNING, |_, s: &DispatcherState| {
                nothing_left_running(s)
            }),
            Property::always(NO_ATTEMPT_WASTED, |_, s: &DispatcherState| {
                no_attempt_wasted(s)
            }),
            Property::always(RESULTS_FLUSHED, |_, s: &DispatcherState| results_flushed(s)),
            Property::sometimes(CLAIMED_WHILE_STOPPING, |_, s: &DispatcherState| {
                s.seen.claimed_while_stopping && all_shut_down(s)
            }),
            Property::sometimes(STOPPED_AT_DEADLINE, |_, s: &DispatcherState| {
                s.seen.stopped_at_deadline
                    && s.procs.iter().any(|p| !p.ghost.handed_back.is_empty())
            }),
        ];
        if self.shape.losses > 0 {
            properties.push(Property::sometimes(
                RESULT_LOST,
                |_, s: &DispatcherState| s.seen.report_lost && all_shut_down(s),
            ));
        }
        if self.shape.takeaways > 0 {
            properties.push(Property::sometimes(
                FENCED_RESULT_REFUSED,
                |_, s: &DispatcherState| s.seen.fenced_result_refused,
            ));
            properties.push(Property::sometimes(
                HANDLER_FENCED,
                |_, s: &DispatcherState| s.seen.handler_fenced,
            ));
        }
        if self.liveness {
            properties.push(Property::eventually(
                ALL_SHUT_DOWN,
                |_, s: &DispatcherState| all_shut_down(s),
            ));
        }
        properties
    }
}
