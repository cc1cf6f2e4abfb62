//! Model 5: warm-ups behind an N-slot semaphore, where a batch's work can
//! outlast the slot's lease.
//!
//! P processes each run the core's own [`WarmupDriver`] (start jitter, the
//! slot acquisition, paced batches, renewals while a batch is out, what an
//! answer means, the release) over the core's real [`World`]: every
//! command the driver asks for (`SlotTry`, `SlotRenew`, `SlotRelease`) goes
//! through `World::apply`. The model is the environment: when a command
//! reaches storage (or never does), whether its answer comes back, how long
//! a batch works, and a discrete clock.
//!
//! | action | what runs |
//! |---|---|
//! | `Deliver { p, reply: Now }` | the command in flight reaches storage (`World::apply` now) and `handle_answer(Outcome)` comes back at once |
//! | `Deliver { p, reply: Later }` | it reaches storage now; the answer comes back after the next tick (`Return(p)`) |
//! | `Deliver { p, reply: Lost }` | it reaches storage, but the answer is lost: `handle_answer(Lost)` |
//! | `Drop(p)` | it never reaches storage: `handle_answer(Lost)` |
//! | `FinishBatch(p)` | the batch's work ends: `handle_batch_done` |
//! | `Tick` | the clock advances by one unit |
//!
//! After every action the affected drivers are polled until they wait
//! (`WarmupDriver::poll`; an `Execute` puts the command in flight,
//! `RunBatch` starts a batch, `StopBatch` drops it), as the runtime polls
//! right after every answer, batch end and timer. A poll touches nothing
//! another process can see, and a driver that has yet to poll counts as
//! working only if it already was (an answer that ends the slot, or a
//! proof that ran out, makes `holds` false before any poll), so a state
//! with polls pending never has more workers than the settled one after
//! it: folding the polls into the event hides no counterexample, and
//! keeps the space small.
//!
//! ## Bounds
//!
//! Lease TTL 3 (renewals every unit), batches of 1 with a pause of 1,
//! waits of 2 between scans up to `wait_max` 14. A batch works from 1 to 4
//! units, so it can outlast the lease. A command is in flight until it is
//! delivered or dropped; it may cross one tick on the way there, or its
//! answer one tick on the way back, within the shape's budget of late
//! commands, and within its budget of lost answers. A finished driver's
//! command still in flight (the runtime dropped the future, but the
//! request may already be out) reaches storage or not, at once, answered
//! to nobody. Three [`Shape`]s: [`Shape::PACED`], [`Shape::LOSSY`],
//! [`Shape::CROWD`]. All processes are interchangeable, but the drivers
//! carry their process ids in private fields, so the fingerprint is the
//! state itself (no symmetry reduction).
//!
//! `Tick` waits until no process has a step due: a command in flight for a
//! whole tick, a late answer whose tick passed, a batch at its longest, or
//! a finished driver's orphaned command. The clock then stops by itself
//! once every driver is done.
//!
//! ## Properties
//!
//! A process is **working** while it has a batch out and its driver
//! believes it holds its slot ([`WarmupDriver::holds`]: granted, not lost,
//! and its lease proven at `now`). The properties are those of `warmup`
//! seen from the holders' side, plus the storage ones every model checks.
//!
//! ## What is not modelled: pauses
//!
//! The driver's clock and storage's run at one rate here. A real holder
//! paused longer than its lease (`SIGSTOP`, a VM migration) resumes with
//! its batch still out and learns of the lapse only at its next poll;
//! meanwhile storage may have given the slot to another warmer. No lease
//! can prevent that, so it is not a counterexample the driver must
//! survive: the slot's epoch ([`weir_core::SlotGrant::epoch`], which only
//! grows) is the fencing token a protected resource checks for that case,
//! as `runtime/src/limit.rs` documents for concurrency limits.

use stateright::{Model, Property};
use weir_core::cmd;
use weir_core::{
    Command, Hold, Millis, Mutation, Outcome, SemaphoreName, SlotLoss, StorageAnswer, Timestamp,
    WaitConfig, Warmup, WarmupConfig, WarmupDriver, WarmupFailure, WarmupStep, World, WorldConfig,
};

use crate::check::{apply, guard, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use weir_test_kit::pid;

/// Each holder's lease.
pub const LEASE_TTL: Millis = Millis(3);
/// The longest a batch works (longer than the lease).
pub const WORK_MAX: Millis = Millis(4);
/// How each process waits for a slot.
pub const WAIT: WaitConfig = WaitConfig {
    retry_min: Millis(2),
    retry_max: Millis(2),
    wait_max: Millis(14),
};
/// Start delay, batch size and pause (the jitter is the shape's).
pub const PACING: Warmup = Warmup {
    delay: Millis(0),
    jitter: Millis(0),
    batch_size: 1,
    batch_pause: Millis(1),
};

/// At most N processes are working at once.
pub const AT_MOST_N_WORKING: &str = "at most N processes work at once";
/// No two working processes believe they hold the same slot.
pub const ONE_WORKER_PER_SLOT: &str = "no slot has two working holders";
/// A working process's slot is its own in storage, live at `now`.
pub const WORKING_HOLDS_IN_STORAGE: &str = "a working process holds its slot in storage";
/// Liveness: every driver ends (warmed, lost its slot, or timed out).
pub const ALL_DONE: &str = "every warm-up ends";
/// Example: every process warmed all its items.
pub const ALL_WARMED: &str = "every process warms all its items";
/// Example: a batch ran for longer than the lease, and its process still
/// held the slot when it ended.
pub const OUTLASTED: &str = "a batch outlasts the lease and keeps its slot";
/// Example: a renewal was accepted while a batch was out.
pub const RENEWED_WHILE_WORKING: &str = "a renewal is accepted while a batch is out";
/// Example: a holder's proof of its lease ran out (lost answers) and it
/// stopped.
pub const LOST_UNPROVEN: &str = "a holder that cannot prove its lease stops";
/// Example: a slot whose lease lapsed unreleased went to another process.
pub const LAPSED_TAKEN: &str = "a lapsed lease's slot goes to another warmer";

/// The size of one run of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// P: the warmers.
    pub processes: usize,
    /// N: the semaphore's slots.
    pub permits: u16,
    /// Items each warms, in batches of 1.
    pub items: u64,
    /// Answers that may be lost, in all (a command dropped on the way to
    /// storage, or applied with its answer lost).
    pub losses: u8,
    /// Commands that may stay in flight across a tick, in all: they reach
    /// storage one unit after they were sent, or their answer comes back
    /// one unit after storage applied them.
    pub late: u8,
    /// Start jitter: each process starts at 0 or 1 (every draw an initial
    /// state), or all at 0.
    pub jitter: bool,
}

impl Shape {
    /// Two warmers, one slot, two batches each (a pause between, where the
    /// lease is renewed too); no lost or late answers.
    pub const PACED: Shape = Shape {
        processes: 2,
        permits: 1,
        items: 2,
        losses: 0,
        late: 0,
        jitter: true,
    };
    /// Two warmers, one slot, one batch each, both starting at 0; two
    /// answers lost and one late in all: enough for a holder to run out of
    /// proof of its lease, and for a proof counted from an answer's arrival
    /// instead of its command's sending to outlive the lease in storage.
    pub const LOSSY: Shape = Shape {
        processes: 2,
        permits: 1,
        items: 1,
        losses: 2,
        late: 1,
        jitter: false,
    };
    /// Three warmers on two slots, one batch each; no lost or late answers.
    pub const CROWD: Shape = Shape {
        processes: 3,
        permits: 2,
        items: 1,
        losses: 0,
        late: 0,
        jitter: true,
    };

    fn faulty(&self) -> bool {
        self.losses > 0 || self.late > 0
    }
}

/// The warm-up model.
#[derive(Clone, Debug)]
pub struct WarmupHerd {
    shape: Shape,
    mutation: Option<Mutation>,
}

impl WarmupHerd {
    /// The model of `shape` over the correct core.
    pub fn new(shape: Shape) -> WarmupHerd {
        assert!((1..=3).contains(&shape.processes) && (1..=8).contains(&shape.permits));
        WarmupHerd {
            shape,
            mutation: None,
        }
    }

    /// The model with every driver (and the world) making the deliberate
    /// mistake `m`, in the smallest shape that shows it: a proof counted
    /// from an answer needs lost and late answers ([`Shape::LOSSY`]);
    /// renewing only between batches needs none ([`Shape::PACED`]).
    pub fn with_mutation(m: Mutation) -> WarmupHerd {
        let shape = match m {
            Mutation::WarmupProvesLeaseFromAnswer => Shape::LOSSY,
            _ => Shape::PACED,
        };
        WarmupHerd {
            mutation: Some(m),
            ..WarmupHerd::new(shape)
        }
    }

    fn config(&self, p: usize) -> WarmupConfig {
        let jitter = Millis(u64::from(self.shape.jitter));
        WarmupConfig {
            process: pid(p),
            pacing: Warmup { jitter, ..PACING },
            semaphore: Some((name(), self.shape.permits)),
            wait: WAIT,
            lease_ttl: Some(LEASE_TTL),
        }
    }
}

/// A command between a process and storage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Flight {
    /// On its way to storage, sent at `at`.
    Out {
        /// The command.
        command: Command,
        /// When it was sent.
        at: Timestamp,
    },
    /// Applied at `at`; the answer is on its way back.
    Back {
        /// Storage's answer.
        outcome: Outcome,
        /// When storage applied it.
        at: Timestamp,
    },
}

impl Flight {
    fn since(&self) -> Timestamp {
        match self {
            Flight::Out { at, .. } | Flight::Back { at, .. } => *at,
        }
    }
}

/// One process: its driver, and what it has out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Warmer {
    /// The core's driver.
    pub driver: WarmupDriver,
    /// Its command between it and storage.
    pub in_flight: Option<Flight>,
    /// The batch out, and when it started.
    pub batch_since: Option<Timestamp>,
}

/// Ghosts for the `sometimes` properties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seen {
    /// See [`OUTLASTED`].
    pub outlasted: bool,
    /// See [`RENEWED_WHILE_WORKING`].
    pub renewed_while_working: bool,
    /// See [`LAPSED_TAKEN`].
    pub lapsed_taken: bool,
}

/// A state of the warm-up model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The processes.
    pub procs: Vec<Warmer>,
    /// Answers that may still be lost.
    pub losses: u8,
    /// Commands that may still be late.
    pub late: u8,
    /// Ghosts.
    pub seen: Seen,
    /// Broken properties.
    pub faults: Faults,
}

impl std::hash::Hash for WarmupState {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The rest of the world never changes here.
        self.world.now().hash(state);
        if let Some(sem) = self.world.semaphore(&name()) {
            for (_, slot) in sem.slots() {
                slot.hash(state);
            }
        }
        self.procs.hash(state);
        (self.losses, self.late, self.seen, &self.faults).hash(state);
    }
}

/// How an applied command's answer travels back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// It arrives at once.
    Now,
    /// It arrives after the next tick (a late answer).
    Later,
    /// It never arrives (the process sees `Lost`).
    Lost,
}

/// A step of the warm-up model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WarmupAction {
    /// The process's command reaches storage (`World::apply`).
    Deliver {
        /// The process.
        p: usize,
        /// What happens to the answer.
        reply: Reply,
    },
    /// The process's command never reaches storage.
    Drop(usize),
    /// A late answer reaches the process.
    Return(usize),
    /// The process's batch ends.
    FinishBatch(usize),
    /// Time passes.
    Tick,
}

fn name() -> SemaphoreName {
    SemaphoreName::new("warm").expect("a valid semaphore name")
}

/// What the next poll would return, and whether it would change anything.
fn peek(driver: &WarmupDriver, now: Timestamp) -> (WarmupStep, bool) {
    let mut probe = driver.clone();
    let step = probe.poll(now, 0);
    (step, probe != *driver)
}

impl Warmer {
    fn done(&self) -> bool {
        self.driver.result().is_some()
    }

    fn pollable(&self, now: Timestamp) -> bool {
        let (step, changed) = peek(&self.driver, now);
        changed
            || matches!(
                step,
                WarmupStep::Execute(_) | WarmupStep::RunBatch { .. } | WarmupStep::StopBatch
            )
    }

    /// Whether it works at `now`: a batch out under a slot it believes in.
    fn working(&self, now: Timestamp) -> Option<weir_core::SlotGrant> {
        self.batch_since?;
        self.driver.holds(now)
    }
}

impl WarmupState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    /// Whether `p` has a step that must happen before time moves on.
    fn due(&self, p: usize) -> bool {
        let w = &self.procs[p];
        let now = self.now();
        let flight_over = w
            .in_flight
            .as_ref()
            .is_some_and(|flight| w.done() || now > flight.since());
        let batch_over = w.batch_since.is_some_and(|at| now >= at.plus(WORK_MAX));
        flight_over || batch_over
    }

    /// Polls `p`'s driver until it waits: the runtime polls right after
    /// every answer, batch end and timer, and a poll touches nothing
    /// another process can see.
    fn settle(&mut self, p: usize) {
        while self.faults.is_empty() && self.procs[p].pollable(self.now()) {
            self.poll(p);
        }
    }

    fn settle_all(&mut self) {
        for p in 0..self.procs.len() {
            self.settle(p);
        }
    }

    fn poll(&mut self, p: usize) {
        let now = self.now();
        let w = &mut self.procs[p];
        let Some(step) = guard(&mut self.faults, "poll", || w.driver.poll(now, 0)) else {
            return;
        };
        match step {
            WarmupStep::Execute(command) => {
                assert!(w.in_flight.is_none(), "two commands out");
                w.in_flight = Some(Flight::Out { command, at: now });
            }
            WarmupStep::RunBatch { .. } => {
                assert!(w.batch_since.is_none(), "two batches out");
                w.batch_since = Some(now);
            }
            WarmupStep::StopBatch => {
                w.batch_since.take().expect("a stop with a batch out");
            }
            WarmupStep::Wait { .. } | WarmupStep::Done(_) => {}
        }
    }

    fn deliver(&mut self, p: usize, reply: Reply) {
        let now = self.now();
        let Some(Flight::Out { command, .. }) = self.procs[p].in_flight.take() else {
            return;
        };
        let previous = match &command {
            Command::SlotTry(cmd::SlotTry { slot, .. }) => self
                .world
                .semaphore(&name())
                .and_then(|sem| sem.slots().nth(usize::from(slot.0)))
                .and_then(|(_, s)| s.held),
            _ => None,
        };
        let Some(outcome) = apply(&mut self.world, now, command, &mut self.faults) else {
            return;
        };
        if let Outcome::SlotTried(Ok(_)) = &outcome {
            self.seen.lapsed_taken |=
                previous.is_some_and(|h| matches!(h.hold, Hold::Lease { .. }));
        }
        match reply {
            Reply::Now => self.answer(p, StorageAnswer::Outcome(outcome)),
            Reply::Later => self.procs[p].in_flight = Some(Flight::Back { outcome, at: now }),
            Reply::Lost => {
                self.losses -= 1;
                self.answer(p, StorageAnswer::Lost);
            }
        }
    }

    /// A late answer arrives.
    fn give_back(&mut self, p: usize) {
        if let Some(Flight::Back { outcome, .. }) = self.procs[p].in_flight.take() {
            self.answer(p, StorageAnswer::Outcome(outcome));
        }
    }

    fn answer(&mut self, p: usize, answer: StorageAnswer) {
        let now = self.now();
        let w = &mut self.procs[p];
        if w.done() {
            return; // Nobody waits for this answer.
        }
        let renewed = matches!(answer, StorageAnswer::Outcome(Outcome::SlotRenewed(Ok(()))));
        self.seen.renewed_while_working |= renewed && w.batch_since.is_some();
        guard(&mut self.faults, "handle_answer", || {
            w.driver.handle_answer(now, answer)
        });
    }

    fn drop_command(&mut self, p: usize) {
        if self.procs[p].in_flight.take().is_none() || self.procs[p].done() {
            return;
        }
        self.losses -= 1;
        self.answer(p, StorageAnswer::Lost);
    }

    /// Late answers that must cross the next tick.
    fn late_now(&self) -> usize {
        let now = self.now();
        let late = |w: &&Warmer| matches!(w.in_flight, Some(Flight::Back { at, .. }) if at == now);
        self.procs.iter().filter(late).count()
    }

    fn finish_batch(&mut self, p: usize) {
        let now = self.now();
        let w = &mut self.procs[p];
        let Some(since) = w.batch_since.take() else {
            return;
        };
        if now.since(since) > LEASE_TTL && w.driver.holds(now).is_some() {
            self.seen.outlasted = true;
        }
        guard(&mut self.faults, "handle_batch_done", || {
            w.driver.handle_batch_done(now)
        });
    }
}

fn at_most_n_working(s: &WarmupState, permits: u16) -> bool {
    let now = s.now();
    let working = s.procs.iter().filter(|w| w.working(now).is_some()).count();
    working <= usize::from(permits)
}

fn one_worker_per_slot(s: &WarmupState) -> bool {
    let now = s.now();
    let mut seen = 0u8;
    s.procs.iter().filter_map(|w| w.working(now)).all(|grant| {
        let bit = 1u8 << grant.slot.0;
        let fresh = seen & bit == 0;
        seen |= bit;
        fresh
    })
}

fn working_holds_in_storage(s: &WarmupState) -> bool {
    let now = s.now();
    let sem = s.world.semaphore(&name());
    s.procs.iter().filter_map(|w| w.working(now)).all(|grant| {
        sem.and_then(|sem| sem.slots().nth(usize::from(grant.slot.0)))
            .is_some_and(|(_, slot)| {
                slot.epoch == grant.epoch && slot.holder_at(now) == Some(grant.holder)
            })
    })
}

fn all_done(s: &WarmupState) -> bool {
    s.procs.iter().all(Warmer::done)
}

fn all_warmed(s: &WarmupState, items: u64) -> bool {
    s.procs
        .iter()
        .all(|w| matches!(w.driver.result(), Some(Ok(summary)) if summary.batches == items))
}

fn lost_unproven(s: &WarmupState) -> bool {
    s.procs.iter().any(|w| {
        matches!(
            w.driver.result(),
            Some(Err(WarmupFailure::SlotLost {
                cause: SlotLoss::Unproven,
                ..
            }))
        )
    })
}

impl Model for WarmupHerd {
    type State = WarmupState;
    type Action = WarmupAction;

    fn init_states(&self) -> Vec<WarmupState> {
        let mut world = World::new(WorldConfig::default());
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        // Every combination of start jitters: process p's draw is bit p.
        let shape = self.shape;
        let combos = if shape.jitter {
            1usize << shape.processes
        } else {
            1
        };
        (0..combos)
            .map(|bits| {
                let procs = (0..shape.processes)
                    .map(|p| {
                        let draw = ((bits >> p) & 1) as u64;
                        let mut driver =
                            WarmupDriver::new(self.config(p), shape.items, world.now(), draw)
                                .expect("the model's configuration is valid");
                        if let Some(m) = self.mutation {
                            driver = driver.with_mutation(m);
                        }
                        Warmer {
                            driver,
                            in_flight: None,
                            batch_since: None,
                        }
                    })
                    .collect();
                let mut state = WarmupState {
                    world: world.clone(),
                    procs,
                    losses: shape.losses,
                    late: shape.late,
                    seen: Seen::default(),
                    faults: Faults::default(),
                };
                state.settle_all();
                state
            })
            .collect()
    }

    fn actions(&self, state: &WarmupState, actions: &mut Vec<WarmupAction>) {
        use WarmupAction::*;
        if !state.faults.is_empty() {
            return;
        }
        let now = state.now();
        for (p, w) in state.procs.iter().enumerate() {
            match &w.in_flight {
                Some(Flight::Out { .. }) => {
                    actions.push(Deliver {
                        p,
                        reply: Reply::Now,
                    });
                    // An orphaned command's answer goes nowhere: a lost or
                    // late one is the same as one at once.
                    if !w.done() && state.losses > 0 {
                        actions.push(Deliver {
                            p,
                            reply: Reply::Lost,
                        });
                    }
                    if !w.done() && usize::from(state.late) > state.late_now() {
                        actions.push(Deliver {
                            p,
                            reply: Reply::Later,
                        });
                    }
                    if state.losses > 0 || w.done() {
                        actions.push(Drop(p));
                    }
                }
                Some(Flight::Back { at, .. }) if now > *at || w.done() => actions.push(Return(p)),
                _ => {}
            }
            if w.batch_since.is_some_and(|at| now > at) {
                actions.push(FinishBatch(p));
            }
        }
        let busy = state
            .procs
            .iter()
            .any(|w| !w.done() || w.in_flight.is_some());
        let crossing = state.procs.iter().filter(|w| w.in_flight.is_some()).count();
        let due = (0..state.procs.len()).any(|p| state.due(p));
        if busy && !due && crossing <= usize::from(state.late) {
            actions.push(Tick);
        }
    }

    fn next_state(&self, last: &WarmupState, action: WarmupAction) -> Option<WarmupState> {
        use WarmupAction::*;
        let mut next = last.clone();
        match action {
            Deliver { p, reply } => {
                next.deliver(p, reply);
                next.settle(p);
            }
            Drop(p) => {
                next.drop_command(p);
                next.settle(p);
            }
            Return(p) => {
                next.give_back(p);
                next.settle(p);
            }
            FinishBatch(p) => {
                next.finish_batch(p);
                next.settle(p);
            }
            Tick => {
                let crossing = next.procs.iter().filter(|w| w.in_flight.is_some()).count();
                next.late -= crossing as u8;
                let now = next.now().plus(Millis(1));
                tick(&mut next.world, now, &mut next.faults);
                next.settle_all();
            }
        }
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(WORLD_INVARIANTS, |_, s: &WarmupState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &WarmupState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(AT_MOST_N_WORKING, |m: &WarmupHerd, s: &WarmupState| {
                at_most_n_working(s, m.shape.permits)
            }),
            Property::always(ONE_WORKER_PER_SLOT, |_, s: &WarmupState| {
                one_worker_per_slot(s)
            }),
            Property::always(WORKING_HOLDS_IN_STORAGE, |_, s: &WarmupState| {
                working_holds_in_storage(s)
            }),
            Property::sometimes(ALL_WARMED, |m: &WarmupHerd, s: &WarmupState| {
                all_warmed(s, m.shape.items)
            }),
            Property::sometimes(OUTLASTED, |_, s: &WarmupState| s.seen.outlasted),
            Property::sometimes(RENEWED_WHILE_WORKING, |_, s: &WarmupState| {
                s.seen.renewed_while_working
            }),
            Property::eventually(ALL_DONE, |_, s: &WarmupState| all_done(s)),
        ];
        // Without lost or late answers every holder keeps its slot to the
        // end and releases it, so these have examples only with faults.
        if self.shape.faulty() {
            properties.push(Property::sometimes(LOST_UNPROVEN, |_, s: &WarmupState| {
                lost_unproven(s)
            }));
            properties.push(Property::sometimes(LAPSED_TAKEN, |_, s: &WarmupState| {
                s.seen.lapsed_taken
            }));
        }
        properties
    }
}
