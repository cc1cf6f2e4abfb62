//! The in-memory backend: the core's reference [`World`] behind a lock.
//!
//! Every command is applied under the lock at the clock's time, read inside
//! the lock, so the order commands take the lock is the order the world sees
//! them and their times never go backwards. The outcome is
//! [`World::apply`]'s outcome by construction: there is no second
//! implementation to drift from the reference.
//!
//! Two ways in: the synchronous [`MemoryBackend::apply`] (tests, the
//! simulator) and, with the default `runtime` feature, the async
//! `weir::Backend` trait (the runtime), which calls the same path. Nothing
//! here depends on an async runtime.

use std::fmt;

use weir_core::{command_name, Command, Outcome, Timestamp, Violation, World, WorldConfig};

use crate::clock::{Clock, SystemClock};
use crate::sync::{Mutex, MutexGuard};

/// A command that broke an invariant: always a bug, in the world or in a
/// deliberate mutation of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenStep {
    /// When the world applied it.
    pub at: Timestamp,
    /// The command.
    pub command: Command,
    /// What the world answered.
    pub outcome: Outcome,
    /// The invariant it broke.
    pub violation: Violation,
}

impl fmt::Display for BrokenStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} broke {}\n  command: {:?}\n  outcome: {:?}",
            command_name(&self.command),
            self.at,
            self.violation,
            self.command,
            self.outcome
        )
    }
}

impl std::error::Error for BrokenStep {}

struct State {
    world: World,
    /// With step checking on: the world as it was before the latest
    /// command, kept in lockstep by applying every command to it too.
    shadow: Option<World>,
    check_steps: bool,
    applied: u64,
}

impl State {
    /// Applies `command` to the world and checks the state and the step;
    /// then brings the shadow level with the world.
    ///
    /// Checking a step needs the world from before it. Copying the world
    /// for every command costs time in its size; applying the command a
    /// second time, to a shadow, costs only what the command touches. The
    /// world is a pure function of its commands and times, so the shadow
    /// must answer the same: a different answer is reported as a broken
    /// step too.
    fn apply_checked(
        &mut self,
        now: Timestamp,
        command: Command,
    ) -> Result<Outcome, Box<BrokenStep>> {
        let shadow = self.shadow.get_or_insert_with(|| self.world.clone());
        let outcome = self.world.apply(now, command.clone());
        let checked = World::check_step(shadow, &command, &outcome, &self.world)
            .and_then(|()| self.world.check_invariants());
        let replayed = shadow.apply(now, command.clone());
        let broken = |violation| {
            Err(Box::new(BrokenStep {
                at: self.world.now(),
                command: command.clone(),
                outcome: outcome.clone(),
                violation,
            }))
        };
        if let Err(violation) = checked {
            return broken(violation);
        }
        assert_eq!(
            replayed, outcome,
            "the world answered one command two ways: it is not deterministic"
        );
        Ok(outcome)
    }
}

/// The core's [`World`] behind a lock, with a [`Clock`].
///
/// ```
/// use weir_core::{cmd, Command, Outcome, Timestamp, WorldConfig};
/// use weir_memory::{MemoryBackend, VirtualClock};
///
/// let clock = VirtualClock::new(Timestamp(1_000));
/// let backend = MemoryBackend::with_clock(WorldConfig::default(), clock.clone());
/// let outcome = backend.apply(Command::Enqueue(cmd::Enqueue { jobs: vec![] }));
/// assert_eq!(outcome, Outcome::Enqueued(Ok(vec![])));
/// assert_eq!(backend.inspect(|world| world.now()), Timestamp(1_000));
/// ```
pub struct MemoryBackend<C = SystemClock> {
    state: Mutex<State>,
    clock: C,
    /// Presence and wake-ups for the runtime's `Backend` trait.
    #[cfg(feature = "runtime")]
    pub(crate) extras: crate::extras::Extras,
}

impl MemoryBackend<SystemClock> {
    /// An empty world on the system clock.
    pub fn new(config: WorldConfig) -> MemoryBackend<SystemClock> {
        MemoryBackend::with_clock(config, SystemClock)
    }
}

impl<C: Clock> MemoryBackend<C> {
    /// An empty world on `clock`.
    pub fn with_clock(config: WorldConfig, clock: C) -> MemoryBackend<C> {
        MemoryBackend::from_world(World::new(config), clock)
    }

    /// An existing world (for example one built with a deliberate
    /// mutation) on `clock`.
    pub fn from_world(world: World, clock: C) -> MemoryBackend<C> {
        MemoryBackend {
            state: Mutex::new(State {
                world,
                shadow: None,
                check_steps: false,
                applied: 0,
            }),
            clock,
            #[cfg(feature = "runtime")]
            extras: crate::extras::Extras::default(),
        }
    }

    /// Checks every invariant, of the state and of the step, after every
    /// command, and panics on a violation. It costs a copy of the world per
    /// command, so it is for tests. (Debug builds of the core already check
    /// the state invariants after every apply.)
    pub fn check_every_step(self, on: bool) -> MemoryBackend<C> {
        self.lock().check_steps = on;
        self
    }

    /// The clock commands are applied at.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a command panicked half-way through the
        // world: an invariant broke, which is a bug, and the world can no
        // longer be trusted.
        self.state
            .lock()
            .expect("the world panicked on an earlier command")
    }

    /// Applies `command` at the clock's time and returns its outcome.
    ///
    /// Panics if step checking is on ([`MemoryBackend::check_every_step`])
    /// and the command broke an invariant.
    pub fn apply(&self, command: Command) -> Outcome {
        self.locked().apply(command)
    }

    /// The world under the lock, to apply several commands back to back or
    /// to look at it before and after one, with nothing in between.
    pub(crate) fn locked(&self) -> Locked<'_, C> {
        Locked {
            state: self.lock(),
            clock: &self.clock,
        }
    }

    /// Applies `command` at the clock's time, then checks every state
    /// invariant and every step invariant; a violation comes back as a
    /// value (the command stays applied). The simulator's path.
    pub fn apply_checked(&self, command: Command) -> Result<Outcome, Box<BrokenStep>> {
        let mut state = self.lock();
        let now = self.clock.now();
        state.applied += 1;
        state.apply_checked(now, command)
    }

    /// How many commands were applied.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Looks at the world under the lock.
    pub fn inspect<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.lock().world)
    }

    /// A copy of the world.
    pub fn snapshot(&self) -> World {
        self.inspect(World::clone)
    }
}

/// The backend's world, locked.
pub(crate) struct Locked<'a, C> {
    state: MutexGuard<'a, State>,
    clock: &'a C,
}

impl<C: Clock> Locked<'_, C> {
    /// The world as it is now.
    pub(crate) fn world(&self) -> &World {
        &self.state.world
    }

    /// The clock's time (the world applies it clamped to its own latest).
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Applies `command`, checking every invariant of the state and the
    /// step whether or not step checking is on; a violation is a value.
    pub(crate) fn apply_checked(&mut self, command: Command) -> Result<Outcome, Box<BrokenStep>> {
        let now = self.clock.now();
        let state = &mut *self.state;
        state.applied += 1;
        state.apply_checked(now, command)
    }

    /// [`MemoryBackend::apply`], under this lock.
    pub(crate) fn apply(&mut self, command: Command) -> Outcome {
        let now = self.clock.now();
        let state = &mut *self.state;
        state.applied += 1;
        if !state.check_steps {
            // The shadow would fall behind: the next checked apply starts
            // a new one.
            state.shadow = None;
            return state.world.apply(now, command);
        }
        match state.apply_checked(now, command) {
            Ok(outcome) => outcome,
            Err(broken) => panic!("{broken}"),
        }
    }
}

impl<C: Clock + fmt::Debug> fmt::Debug for MemoryBackend<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("clock", &self.clock)
            .field("applied", &self.applied())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom), feature = "runtime"))]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use weir_core::{
        answer_of, ClaimerGrant, Kind, NewJob, Payload, ProcessId, Receipt, Reject, StateName,
    };

    use weir::{Backend, BackendExt};
    use weir_test_kit::queue;

    use super::*;
    use crate::clock::VirtualClock;
    use weir_core::cmd;

    /// The backend's futures never wait on anything, so one poll finishes
    /// them: no async runtime is needed to test the trait.
    fn ready<T>(future: impl Future<Output = T>) -> T {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the memory backend never waits"),
        }
    }

    fn claimer(backend: &dyn Backend, process: u64) -> ClaimerGrant {
        let acquire = cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        };
        let (grant, _) = ready(backend.run(acquire))
            .unwrap()
            .expect("a fresh queue has a free claimer slot");
        grant
    }

    #[test]
    fn the_async_trait_gives_the_worlds_outcomes_at_the_clocks_time() {
        let clock = VirtualClock::new(Timestamp(5_000));
        let backend =
            MemoryBackend::with_clock(WorldConfig::default(), clock.clone()).check_every_step(true);
        let job = NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default());
        let mut reference = World::new(WorldConfig::default());
        let enqueue = Command::Enqueue(cmd::Enqueue { jobs: vec![job] });
        let expected = reference.apply(Timestamp(5_000), enqueue.clone());
        assert_eq!(ready(backend.execute(enqueue)).unwrap(), expected);

        let grant = claimer(&backend, 1);
        clock.advance_to(Timestamp(6_000));
        assert_eq!(ready(backend.now()).unwrap(), Timestamp(6_000));
        let claim = cmd::Claim {
            queue: queue(),
            claimer: grant,
            max: 1,
            kinds: None,
        };
        let claimed = ready(backend.run(claim))
            .unwrap()
            .expect("the job is available");
        let receipt = claimed.jobs[0].receipt;
        let complete = Command::Complete(cmd::Complete {
            receipts: vec![receipt],
        });
        backend.apply(complete.clone());
        assert_eq!(
            backend.apply(complete),
            Outcome::Completed(Ok(vec![Err(Reject::NotRunning {
                state: StateName::Completed
            })]))
        );
        assert_eq!(backend.applied(), 5);
        let job = backend.inspect(|w| w.job(receipt.job).cloned()).unwrap();
        assert_eq!(
            job.state,
            weir_core::JobState::Completed {
                at: Timestamp(6_000)
            }
        );
    }

    /// Claims job 1, takes it away (cancel, then admin retry), and claims
    /// it again: returns the old and the current receipt.
    fn two_receipts_of_one_job(backend: &MemoryBackend<VirtualClock>) -> (Receipt, Receipt) {
        let job = NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default());
        backend.apply(Command::Enqueue(cmd::Enqueue { jobs: vec![job] }));
        let grant = claimer(backend, 1);
        let claim = || {
            let outcome = backend.apply_checked(Command::Claim(cmd::Claim {
                queue: queue(),
                claimer: grant,
                max: 1,
                kinds: None,
            }));
            let outcome = outcome.expect("the job is available");
            let claimed = answer_of::<cmd::Claim>(outcome).expect("the job is available");
            claimed.jobs[0].receipt
        };
        let old = claim();
        backend.apply(Command::Cancel(cmd::Cancel { job: old.job }));
        backend.apply(Command::Retry(cmd::Retry { job: old.job }));
        (old, claim())
    }

    #[test]
    fn a_batch_with_a_late_and_a_current_receipt_of_one_job_passes_the_step_check() {
        let backend =
            MemoryBackend::with_clock(WorldConfig::default(), VirtualClock::new(Timestamp(1)));
        let (old, current) = two_receipts_of_one_job(&backend);
        let outcome = backend
            .apply_checked(Command::Complete(cmd::Complete {
                receipts: vec![old, current],
            }))
            .expect("the late item changed nothing; the current one completed the job");
        assert!(matches!(
            outcome,
            Outcome::Completed(Ok(ref items))
                if matches!(items[..], [Err(Reject::StaleEpoch { .. }), Ok(())])
        ));
    }

    #[test]
    fn the_same_batch_on_a_world_that_ignores_epochs_is_caught() {
        use weir_core::Mutation;
        let world =
            World::new(WorldConfig::default()).with_mutation(Mutation::CompleteWithoutEpochCheck);
        let backend = MemoryBackend::from_world(world, VirtualClock::new(Timestamp(1)));
        let (old, current) = two_receipts_of_one_job(&backend);
        let broken = backend
            .apply_checked(Command::Complete(cmd::Complete {
                receipts: vec![old, current],
            }))
            .expect_err("the late item completed the job");
        assert!(matches!(
            broken.violation,
            Violation::StaleWriteNeverChangesJob { .. }
        ));
    }

    #[test]
    fn a_checked_apply_reports_a_broken_step_as_a_value() {
        use weir_core::Mutation;
        let world =
            World::new(WorldConfig::default()).with_mutation(Mutation::CancelWithoutEpochBump);
        let backend = MemoryBackend::from_world(world, VirtualClock::new(Timestamp(1)));
        let job = NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default());
        backend.apply(Command::Enqueue(cmd::Enqueue { jobs: vec![job] }));
        let grant = claimer(&backend, 1);
        backend.apply(Command::Claim(cmd::Claim {
            queue: queue(),
            claimer: grant,
            max: 1,
            kinds: None,
        }));
        let broken = backend
            .apply_checked(Command::Cancel(cmd::Cancel {
                job: weir_core::JobId(1),
            }))
            .expect_err("cancelling a running job without an epoch bump is caught");
        assert!(matches!(
            broken.violation,
            Violation::TakeawayBumpsEpoch { .. }
        ));
        assert!(broken.to_string().contains("cancel at t=1ms broke"));
    }
}
