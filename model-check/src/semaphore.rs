//! Model 3: an N-slot semaphore, the herd that waits for it, and holders
//! that die.
//!
//! Four processes want one of N = 2 slots. Each runs the core's own sans-IO
//! [`Acquisition`]: the model calls `poll`, does what the returned step
//! says, and reports back with `handle_try`. A `Try` is executed against the
//! world with `Command::SlotTry`; it may instead fail with
//! `TryResult::Error` (a connection error) without reaching the world.
//!
//! | action | what runs |
//! |---|---|
//! | `Arrive(p)` | `Acquisition::new` at the current time (at `t = 0` or `1`: the herd) |
//! | `Try { p, error: false }` | `poll` → `Try(slot)`, `SlotTry`, `handle_try(Acquired/Busy)` |
//! | `Try { p, error: true }` | `poll` → `Try(slot)`, `handle_try(Error)` (at most one error in a run) |
//! | `Sleep { p, draw }` | `poll(now, draw)` → a new `SleepUntil`; every draw of the jitter range is a branch |
//! | `GiveUp(p)` | `poll` → `TimedOut` |
//! | `Renew(p)`, `Release(p)` | `SlotRenew`, `SlotRelease` |
//! | `ReleaseAndReturn(p)` | `SlotRelease`, at once `SlotTry` of the same slot under the same process id, then the first `SlotRelease` delivered again, late (at most once in a run) |
//! | `Crash(p)` | a holder dies (at most once): a session holder's session ends (`ProcessCrashed`); a lease holder just vanishes, and its lease lapses |
//! | `Tick` | the storage clock advances by one unit |
//!
//! Processes 0 and 1 hold slots for their session; processes 2 and 3 hold
//! leases of 2 units that they may renew. Processes of one kind are
//! interchangeable, and the fingerprint is taken up to relabelling them
//! ([`crate::symmetry`]).
//!
//! ## Time and timers
//!
//! `WaitConfig { retry_min: 1, retry_max: 2, wait_max: 4 }`, processes
//! arrive at `t = 0` or `1`, and the clock stops at `5`, when every
//! acquisition has reached its deadline. `Tick` is enabled only when no
//! process has a step due: a process whose timer fired (or that is in the
//! middle of a scan, or has not arrived by `t = 1`) acts before time moves
//! on — the simulator's rule of jumping to the earliest wake-up. Under that
//! rule "a waiter acquires or times out by its deadline" is an `always`
//! property: no acquisition is still waiting once the clock is past its
//! deadline. A sleep past the deadline would break it.
//!
//! ## Liveness
//!
//! `eventually` every process is past waiting (holding, released, timed
//! out or crashed). The property is stable (those phases never go back to
//! waiting) and every path ends (bounded clock, bounded errors, each scan
//! ends in a sleep of at least one unit, and a step that changes nothing is
//! not a step), so checking it on the ends of paths is exact for this
//! model. It shows that no acquisition can get stuck; the deadline itself
//! is the `always` property above.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use stateright::{Model, Property};
use weir_core::cmd;
use weir_core::{
    AcquireStep, Acquisition, Hold, Millis, Mutation, ProcessId, Reject, Request, SemaphoreName,
    SlotGrant, SlotHolder, SlotIndex, Timestamp, TryResult, WaitConfig, World, WorldConfig,
};

use crate::check::{guard, run, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::symmetry::{least_hash, permute};
use weir_test_kit::{index, pid};

/// Processes (0 and 1 hold for their session, 2 and 3 hold leases).
pub const PROCESSES: usize = 4;
/// N: the semaphore's slots.
pub const PERMITS: u16 = 2;
/// How each process waits.
pub const WAIT: WaitConfig = WaitConfig {
    retry_min: Millis(1),
    retry_max: Millis(2),
    wait_max: Millis(4),
};
/// A lease holder's lease, from acquisition or renewal.
pub const LEASE_TTL: Millis = Millis(2);
/// Processes arrive at or before this time.
pub const ARRIVE_MAX: Timestamp = Timestamp(1);
/// The clock stops here: the last arrival's deadline.
pub const TIME_MAX: Timestamp = Timestamp(ARRIVE_MAX.0 + WAIT.wait_max.0 as i64);
/// Slot tries that may fail with an error, in all.
pub const ERRORS: u8 = 1;
/// Holders that may crash, in all.
pub const CRASHES: u8 = 1;
/// Holders that may release and at once take the same slot again, in all
/// (the runtime's limiter does this under one process id); session
/// holders only.
pub const AGAIN: u8 = 1;

/// At most N processes believe they hold a slot.
pub const AT_MOST_N: &str = "at most N holders";
/// No two processes believe they hold the same slot.
pub const ONE_HOLDER_PER_SLOT: &str = "no slot has two holders";
/// A crashed holder holds no slot once its session ended or its lease ran
/// out.
pub const CRASHED_FREED: &str = "a crashed holder's slot becomes free";
/// No acquisition is still waiting after its deadline.
pub const BY_DEADLINE: &str = "a waiter acquires or times out by its deadline";
/// A scan tries every slot (an erroring slot is skipped, not fatal) before
/// it sleeps.
pub const SCAN_COMPLETE: &str = "a scan tries every slot before it sleeps";
/// Example: a waiter got a later slot in a scan where an earlier slot's
/// try errored.
pub const PAST_ERROR: &str = "a waiter acquires a slot past one whose try errored";
/// Example: a waiter timed out.
pub const TIMED_OUT: &str = "a waiter times out";
/// Example: a waiter got the slot of a holder that crashed.
pub const CRASHED_REUSED: &str = "a crashed holder's slot goes to another waiter";
/// Example: a waiter got a slot whose lease had lapsed (its holder crashed
/// or was too slow to renew).
pub const LAPSED_REUSED: &str = "a lapsed lease's slot goes to another waiter";
/// A process that believes it holds a slot holds it in storage: the
/// slot's live holder is that process, with its grant's epoch.
pub const HOLDS_IN_STORAGE: &str = "a holder's slot is held by it in storage";
/// Example: a holder that released and took the same slot again got its
/// first release a second time (a late duplicate) while holding it.
pub const LATE_RELEASE_REHELD: &str =
    "a late release of an earlier grant meets its holder holding the slot again";
/// Liveness: every process ends up past waiting.
pub const ALL_DONE: &str = "every waiter acquires or times out";

/// The semaphore model.
#[derive(Clone, Debug, Default)]
pub struct SemaphoreHerd {
    mutation: Option<Mutation>,
}

impl SemaphoreHerd {
    /// The model over the correct core.
    pub fn new() -> SemaphoreHerd {
        SemaphoreHerd::default()
    }

    /// The same model with the world and every acquisition making the
    /// deliberate mistake `m`.
    pub fn with_mutation(m: Mutation) -> SemaphoreHerd {
        SemaphoreHerd { mutation: Some(m) }
    }
}

/// Where one process is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not arrived yet.
    Idle,
    /// Running an acquisition.
    Waiting {
        /// The core's acquisition loop.
        acq: Acquisition,
        /// Ghost: slots tried in the current scan (a bit per slot).
        tried: u8,
        /// Ghost: slots whose try errored in the current scan.
        errored: u8,
    },
    /// Holds a slot.
    Holding {
        /// The grant.
        grant: SlotGrant,
        /// For a lease hold: when it lapses unless renewed.
        until: Option<Timestamp>,
    },
    /// Released (or found its lease gone).
    Released,
    /// Gave up at its deadline.
    TimedOut,
    /// Died while holding.
    Crashed {
        /// The slot it held.
        slot: SlotIndex,
        /// For a lease hold: when the lease lapses.
        until: Option<Timestamp>,
    },
}

/// A state of the semaphore model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The processes.
    pub procs: [Phase; PROCESSES],
    /// Errors left.
    pub errors: u8,
    /// Crashes left.
    pub crashes: u8,
    /// Returns (release, take the slot again, the release again) left.
    pub again: u8,
    /// Ghost: see [`PAST_ERROR`].
    pub past_error: bool,
    /// Ghost: see [`TIMED_OUT`].
    pub timed_out: bool,
    /// Ghost: see [`CRASHED_REUSED`] and [`LAPSED_REUSED`].
    pub reused: (bool, bool),
    /// Ghost: see [`LATE_RELEASE_REHELD`].
    pub late_reheld: bool,
    /// Broken properties.
    pub faults: Faults,
}

/// A step of the semaphore model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SemaphoreAction {
    /// The process starts acquiring.
    Arrive(usize),
    /// The process tries the slot its acquisition asks for.
    Try {
        /// The process.
        p: usize,
        /// Whether the try fails with an error.
        error: bool,
    },
    /// The process starts a pause, with this jitter draw.
    Sleep {
        /// The process.
        p: usize,
        /// The draw.
        draw: u64,
    },
    /// The process's acquisition times out.
    GiveUp(usize),
    /// A lease holder renews.
    Renew(usize),
    /// A holder releases.
    Release(usize),
    /// A holder releases, at once takes the same slot again, and then its
    /// release is delivered a second time (see
    /// `SemaphoreState::release_and_return`).
    ReleaseAndReturn(usize),
    /// A holder dies.
    Crash(usize),
    /// Time passes.
    Tick,
}

fn name() -> SemaphoreName {
    SemaphoreName::new("sem").expect("a valid semaphore name")
}

fn lease(p: usize) -> Option<Millis> {
    (p >= 2).then_some(LEASE_TTL)
}

const ALL_SLOTS: u8 = (1 << PERMITS) - 1;

/// What the next `poll` would do, and whether it would change anything.
fn peek(acq: &Acquisition, now: Timestamp) -> (AcquireStep, bool) {
    let mut probe = acq.clone();
    let step = probe.poll(now, 0);
    (step, probe != *acq)
}

impl SemaphoreState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    fn run<R: Request>(&mut self, request: R) -> Option<R::Output> {
        let now = self.now();
        run(&mut self.world, now, request, &mut self.faults)
    }

    /// Whether `p` has a step that must happen before time moves on.
    fn due(&self, p: usize) -> bool {
        match &self.procs[p] {
            Phase::Idle => self.now() >= ARRIVE_MAX,
            Phase::Waiting { acq, .. } => {
                let (step, changed) = peek(acq, self.now());
                changed || !matches!(step, AcquireStep::SleepUntil(_))
            }
            _ => false,
        }
    }

    fn believes_it_holds(&self, p: usize) -> Option<SlotIndex> {
        match self.procs[p] {
            Phase::Holding { grant, until } if until.is_none_or(|u| self.now() < u) => {
                Some(grant.slot)
            }
            _ => None,
        }
    }

    fn try_slot(&mut self, p: usize, error: bool) {
        let now = self.now();
        let Phase::Waiting {
            mut acq,
            mut tried,
            mut errored,
        } = self.procs[p].clone()
        else {
            return;
        };
        let Some(AcquireStep::Try(slot)) = guard(&mut self.faults, "poll", || acq.poll(now, 0))
        else {
            return;
        };
        let bit = 1u8 << slot.0;
        tried |= bit;
        let result = if error {
            self.errors -= 1;
            errored |= bit;
            TryResult::Error
        } else {
            let previous = self
                .world
                .semaphore(&name())
                .and_then(|sem| sem.slots().nth(usize::from(slot.0)))
                .and_then(|(_, s)| s.held);
            let command = cmd::SlotTry {
                semaphore: name(),
                permits: PERMITS,
                slot,
                holder: pid(p),
                lease_ttl: lease(p),
            };
            match self.run(command) {
                None => return,
                Some(Ok(grant)) => {
                    self.reused.0 |= self
                        .procs
                        .iter()
                        .any(|phase| matches!(phase, Phase::Crashed { slot: s, .. } if *s == slot));
                    self.reused.1 |= previous.is_some_and(|h| matches!(h.hold, Hold::Lease { .. }));
                    TryResult::Acquired(grant)
                }
                Some(Err(Reject::SlotBusy { .. })) => TryResult::Busy,
                Some(Err(other)) => panic!("slot try answered {other:?}"),
            }
        };
        if guard(&mut self.faults, "handle_try", || {
            acq.handle_try(slot, result)
        })
        .is_none()
        {
            return;
        }
        self.procs[p] = match result {
            TryResult::Acquired(grant) => {
                if errored & (bit - 1) != 0 {
                    self.past_error = true;
                }
                let done = guard(&mut self.faults, "poll", || acq.poll(now, 0));
                assert_eq!(done, Some(AcquireStep::Acquired(grant)));
                Phase::Holding {
                    grant,
                    until: lease(p).map(|ttl| now.plus(ttl)),
                }
            }
            _ => Phase::Waiting {
                acq,
                tried,
                errored,
            },
        };
    }

    fn sleep(&mut self, p: usize, draw: u64) {
        let now = self.now();
        let Phase::Waiting { mut acq, tried, .. } = self.procs[p].clone() else {
            return;
        };
        let Some(step) = guard(&mut self.faults, "poll", || acq.poll(now, draw)) else {
            return;
        };
        assert!(matches!(step, AcquireStep::SleepUntil(_)), "{step:?}");
        if tried != ALL_SLOTS {
            self.faults.push(
                SCAN_COMPLETE,
                format!("process {p} slept after trying slots {tried:#b} of {ALL_SLOTS:#b}"),
            );
        }
        self.procs[p] = Phase::Waiting {
            acq,
            tried: 0,
            errored: 0,
        };
    }

    fn give_up(&mut self, p: usize) {
        let now = self.now();
        let Phase::Waiting { mut acq, .. } = self.procs[p].clone() else {
            return;
        };
        let step = guard(&mut self.faults, "poll", || acq.poll(now, 0));
        assert!(
            matches!(step, Some(AcquireStep::TimedOut { .. })),
            "{step:?}"
        );
        self.timed_out = true;
        self.procs[p] = Phase::TimedOut;
    }

    fn renew(&mut self, p: usize) {
        let (Phase::Holding { grant, .. }, Some(ttl)) = (self.procs[p].clone(), lease(p)) else {
            return;
        };
        let command = cmd::SlotRenew {
            semaphore: name(),
            grant,
            lease_ttl: ttl,
        };
        let until = self.now().plus(ttl);
        self.procs[p] = match self.run(command) {
            None => return,
            Some(Ok(())) => Phase::Holding {
                grant,
                until: Some(until),
            },
            // Someone else has the slot: the holder learns it lost it.
            Some(Err(_)) => Phase::Released,
        };
    }

    fn release(&mut self, p: usize) {
        let Phase::Holding { grant, .. } = self.procs[p] else {
            return;
        };
        self.procs[p] = Phase::Released;
        self.run(cmd::SlotRelease {
            semaphore: name(),
            grant,
        });
    }

    /// Releases `p`'s slot, at once tries the same slot again, as the
    /// runtime's limiter does when one process gives a permit back and
    /// takes one for its next job (a new holding, with a new epoch, under
    /// the same process id), and then gets its release delivered a second
    /// time, as a retried release whose first answer was lost is: the
    /// late copy carries the first grant.
    fn release_and_return(&mut self, p: usize) {
        let Phase::Holding { grant, .. } = self.procs[p] else {
            return;
        };
        self.again -= 1;
        self.procs[p] = Phase::Released;
        let release = cmd::SlotRelease {
            semaphore: name(),
            grant,
        };
        if self.run(release.clone()).is_none() {
            return;
        }
        let command = cmd::SlotTry {
            semaphore: name(),
            permits: PERMITS,
            slot: grant.slot,
            holder: pid(p),
            lease_ttl: lease(p),
        };
        let now = self.now();
        match self.run(command) {
            Some(Ok(again)) => {
                self.late_reheld = true;
                self.procs[p] = Phase::Holding {
                    grant: again,
                    until: lease(p).map(|ttl| now.plus(ttl)),
                }
            }
            None => return,
            Some(Err(Reject::SlotBusy { .. })) => {}
            Some(Err(other)) => panic!("slot try answered {other:?}"),
        }
        self.run(release);
    }

    fn crash(&mut self, p: usize) {
        let Phase::Holding { grant, until } = self.procs[p] else {
            return;
        };
        self.crashes -= 1;
        self.procs[p] = Phase::Crashed {
            slot: grant.slot,
            until,
        };
        if until.is_none() {
            self.run(cmd::ProcessCrashed { process: pid(p) });
        }
    }

    /// The fingerprint key with processes relabelled by `perm`.
    fn relabelled(&self, perm: &[usize]) -> impl Hash + '_ {
        let relabel = |id: ProcessId| pid(perm[index(id)]);
        let slots: Vec<_> = self
            .world
            .semaphore(&name())
            .into_iter()
            .flat_map(|sem| sem.slots())
            .map(|(_, slot)| {
                let held = slot.held.map(|h| SlotHolder {
                    holder: relabel(h.holder),
                    ..h
                });
                (slot.epoch, held)
            })
            .collect();
        let procs = permute(&self.procs, perm).map(|phase| match phase {
            Phase::Holding { grant, until } => Phase::Holding {
                grant: SlotGrant {
                    holder: relabel(grant.holder),
                    ..grant
                },
                until,
            },
            other => other,
        });
        (
            self.now(),
            slots,
            procs,
            (self.errors, self.crashes, self.past_error, self.timed_out),
            (self.again, self.late_reheld),
            self.reused,
            &self.faults,
        )
    }
}

/// Relabellings that keep each process's kind (session or lease).
fn perms() -> &'static [Vec<usize>] {
    static PERMS: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
    PERMS.get_or_init(|| {
        vec![
            vec![0, 1, 2, 3],
            vec![1, 0, 2, 3],
            vec![0, 1, 3, 2],
            vec![1, 0, 3, 2],
        ]
    })
}

impl Hash for SemaphoreState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(least_hash(perms(), |perm| self.relabelled(perm)));
    }
}

fn at_most_n(state: &SemaphoreState) -> bool {
    let holders = (0..PROCESSES)
        .filter_map(|p| state.believes_it_holds(p))
        .count();
    holders <= usize::from(PERMITS)
}

fn one_holder_per_slot(state: &SemaphoreState) -> bool {
    let mut seen = 0u8;
    (0..PROCESSES)
        .filter_map(|p| state.believes_it_holds(p))
        .all(|slot| {
            let bit = 1u8 << slot.0;
            let fresh = seen & bit == 0;
            seen |= bit;
            fresh
        })
}

fn crashed_freed(state: &SemaphoreState) -> bool {
    let now = state.now();
    let Some(sem) = state.world.semaphore(&name()) else {
        return true;
    };
    (0..PROCESSES).all(|p| match state.procs[p] {
        Phase::Crashed { until, .. } if until.is_none_or(|u| now >= u) => sem
            .slots()
            .all(|(_, slot)| slot.holder_at(now) != Some(pid(p))),
        _ => true,
    })
}

fn holds_in_storage(state: &SemaphoreState) -> bool {
    let now = state.now();
    let sem = state.world.semaphore(&name());
    (0..PROCESSES).all(|p| match state.procs[p] {
        Phase::Holding { grant, .. } if state.believes_it_holds(p).is_some() => sem
            .and_then(|sem| sem.slots().nth(usize::from(grant.slot.0)))
            .is_some_and(|(_, slot)| {
                slot.epoch == grant.epoch && slot.holder_at(now) == Some(pid(p))
            }),
        _ => true,
    })
}

fn by_deadline(state: &SemaphoreState) -> bool {
    state.procs.iter().all(|phase| match phase {
        Phase::Waiting { acq, .. } => state.now() <= acq.deadline(),
        _ => true,
    })
}

fn all_done(state: &SemaphoreState) -> bool {
    state
        .procs
        .iter()
        .all(|phase| !matches!(phase, Phase::Idle | Phase::Waiting { .. }))
}

impl Model for SemaphoreHerd {
    type State = SemaphoreState;
    type Action = SemaphoreAction;

    fn init_states(&self) -> Vec<SemaphoreState> {
        let mut world = World::new(WorldConfig::default());
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        vec![SemaphoreState {
            world,
            procs: std::array::from_fn(|_| Phase::Idle),
            errors: ERRORS,
            crashes: CRASHES,
            again: AGAIN,
            late_reheld: false,
            past_error: false,
            timed_out: false,
            reused: (false, false),
            faults: Faults::default(),
        }]
    }

    fn actions(&self, state: &SemaphoreState, actions: &mut Vec<SemaphoreAction>) {
        use SemaphoreAction::*;
        if !state.faults.is_empty() {
            return;
        }
        let now = state.now();
        for (p, phase) in state.procs.iter().enumerate() {
            match phase {
                Phase::Idle if now <= ARRIVE_MAX => actions.push(Arrive(p)),
                Phase::Waiting { acq, .. } => match peek(acq, now) {
                    (AcquireStep::Try(_), _) => {
                        actions.push(Try { p, error: false });
                        if state.errors > 0 {
                            actions.push(Try { p, error: true });
                        }
                    }
                    (AcquireStep::SleepUntil(_), true) => {
                        let span = WAIT.retry_max.0 - WAIT.retry_min.0;
                        actions.extend((0..=span).map(|draw| Sleep { p, draw }));
                    }
                    (AcquireStep::TimedOut { .. }, _) => actions.push(GiveUp(p)),
                    _ => {}
                },
                Phase::Holding { until, .. } => {
                    actions.push(Release(p));
                    // Session holders only: a lease holder's return runs
                    // the same release and try, and would double the space.
                    if state.again > 0 && lease(p).is_none() {
                        actions.push(ReleaseAndReturn(p));
                    }
                    if until.is_some_and(|u| now < u) {
                        actions.push(Renew(p));
                    }
                    if state.crashes > 0 {
                        actions.push(Crash(p));
                    }
                }
                _ => {}
            }
        }
        if now < TIME_MAX && !(0..PROCESSES).any(|p| state.due(p)) {
            actions.push(Tick);
        }
    }

    fn next_state(&self, last: &SemaphoreState, action: SemaphoreAction) -> Option<SemaphoreState> {
        use SemaphoreAction::*;
        let mut next = last.clone();
        match action {
            Arrive(p) => {
                let mut acq = Acquisition::new(Some(PERMITS), next.now(), WAIT);
                if let Some(m) = self.mutation {
                    acq = acq.with_mutation(m);
                }
                next.procs[p] = Phase::Waiting {
                    acq,
                    tried: 0,
                    errored: 0,
                };
            }
            Try { p, error } => next.try_slot(p, error),
            Sleep { p, draw } => next.sleep(p, draw),
            GiveUp(p) => next.give_up(p),
            Renew(p) => next.renew(p),
            Release(p) => next.release(p),
            ReleaseAndReturn(p) => next.release_and_return(p),
            Crash(p) => next.crash(p),
            Tick => {
                let now = next.now().plus(Millis(1));
                tick(&mut next.world, now, &mut next.faults);
            }
        }
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(WORLD_INVARIANTS, |_, s: &SemaphoreState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &SemaphoreState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(AT_MOST_N, |_, s: &SemaphoreState| at_most_n(s)),
            Property::always(ONE_HOLDER_PER_SLOT, |_, s: &SemaphoreState| {
                one_holder_per_slot(s)
            }),
            Property::always(CRASHED_FREED, |_, s: &SemaphoreState| crashed_freed(s)),
            Property::always(HOLDS_IN_STORAGE, |_, s: &SemaphoreState| {
                holds_in_storage(s)
            }),
            Property::always(BY_DEADLINE, |_, s: &SemaphoreState| by_deadline(s)),
            Property::always(SCAN_COMPLETE, |_, s: &SemaphoreState| {
                s.faults.holds(SCAN_COMPLETE)
            }),
            Property::sometimes(PAST_ERROR, |_, s: &SemaphoreState| s.past_error),
            Property::sometimes(TIMED_OUT, |_, s: &SemaphoreState| s.timed_out),
            Property::sometimes(CRASHED_REUSED, |_, s: &SemaphoreState| s.reused.0),
            Property::sometimes(LAPSED_REUSED, |_, s: &SemaphoreState| s.reused.1),
            Property::sometimes(LATE_RELEASE_REHELD, |_, s: &SemaphoreState| s.late_reheld),
            Property::eventually(ALL_DONE, |_, s: &SemaphoreState| all_done(s)),
        ]
    }
}
