//! Applying a command through the real core, and recording what broke.
//!
//! Every model's `next_state` goes through [`apply`]: it calls the core's
//! own [`World::apply`], then [`World::check_invariants`] and
//! [`World::check_step`], and writes any failure into the state's
//! [`Faults`] instead of panicking. A state with a fault has no successors,
//! so the checker reports the shortest path to the first broken invariant.
//!
//! ## Panics inside `apply`
//!
//! Debug builds of the core check every invariant at the end of
//! `World::apply` and panic when one breaks (and some transitions assert
//! their own preconditions). The models must see those as violations, not
//! die with them, so `apply` runs inside [`std::panic::catch_unwind`] and a
//! panic becomes a [`WORLD_INVARIANTS`] fault carrying the panic message.
//! Release builds skip the core's own check; [`apply`] then runs
//! `check_invariants` itself, so the same property fails in both profiles
//! (only the fault's text differs). While a guarded call runs, a process-wide
//! panic hook stays silent on that thread, so a mutant run does not print a
//! backtrace per counterexample; every other panic is reported as usual.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use weir_core::cmd;
use weir_core::{answer_of, command_name, Command, Outcome, Request, Timestamp, World};

/// `World::check_invariants` holds after every step, and no step panics.
pub const WORLD_INVARIANTS: &str = "world invariants hold (check_invariants, no panic)";

/// `World::check_step` holds for every step: no stale write changes a job,
/// epochs/lease epochs/slot epochs/terms only grow, at most one terminal
/// outcome per (job, epoch), no job vanishes, one leader per term.
pub const STEP_INVARIANTS: &str = "no stale write changes a job; step invariants hold (check_step)";

/// One broken property, found while taking a step.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fault {
    /// The name of the property it breaks (one of the models' constants).
    pub property: &'static str,
    /// What happened, for the counterexample report.
    pub detail: String,
}

/// The faults found on the way to a state; empty in every correct state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults(Vec<Fault>);

impl Faults {
    /// Records that `property` broke.
    pub fn push(&mut self, property: &'static str, detail: impl Into<String>) {
        self.0.push(Fault {
            property,
            detail: detail.into(),
        });
    }

    /// True when nothing broke.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True unless `property` broke.
    pub fn holds(&self, property: &'static str) -> bool {
        self.0.iter().all(|fault| fault.property != property)
    }

    /// Every fault, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Fault> {
        self.0.iter()
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`, turning a panic into `Err(message)`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let loud = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                loud(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|quiet| quiet.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// Runs a pure helper of the core (for example [`weir_core::Acquisition`]'s
/// `poll`/`handle_try`) and turns its panic, if any, into a
/// [`WORLD_INVARIANTS`] fault. Returns `None` after a panic.
pub fn guard<T>(faults: &mut Faults, what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match guarded(f) {
        Ok(value) => Some(value),
        Err(message) => {
            faults.push(WORLD_INVARIANTS, format!("{what} panicked: {message}"));
            None
        }
    }
}

/// Applies `command` at `now` with the core's real [`World::apply`], then
/// checks both invariant layers. Returns the outcome, or `None` when the
/// apply panicked; the world is then put back as it was before the command
/// (a panic can leave it half-updated), so the other properties, judged on
/// the same state, see a consistent world.
pub fn apply(
    world: &mut World,
    now: Timestamp,
    command: Command,
    faults: &mut Faults,
) -> Option<Outcome> {
    let before = world.clone();
    let name = command_name(&command);
    let sent = command.clone();
    let Some(outcome) = guard(faults, name, || world.apply(now, command)) else {
        *world = before;
        return None;
    };
    if let Err(violation) = world.check_invariants() {
        faults.push(WORLD_INVARIANTS, format!("after {name}: {violation}"));
    }
    if let Err(violation) = World::check_step(&before, &sent, &outcome, world) {
        faults.push(STEP_INVARIANTS, format!("{name}: {violation}"));
    }
    Some(outcome)
}

/// [`apply`] of one request, answered with its own type; `None` when the
/// apply panicked.
pub fn run<R: Request>(
    world: &mut World,
    now: Timestamp,
    request: R,
    faults: &mut Faults,
) -> Option<R::Output> {
    apply(world, now, request.into(), faults).map(answer_of::<R>)
}

/// Advances the storage clock to `now` by applying a command that changes
/// nothing else (resuming a queue that is not paused), so that
/// [`World::now`] is the model's only clock and two states never differ in
/// a clock nobody reads.
pub fn tick(world: &mut World, now: Timestamp, faults: &mut Faults) {
    let queue = weir_core::QueueName::new("clock").expect("a valid queue name");
    let outcome = apply(
        world,
        now,
        Command::ResumeQueue(cmd::ResumeQueue { queue }),
        faults,
    );
    debug_assert!(matches!(
        outcome,
        None | Some(Outcome::QueuePauseChanged(false))
    ));
}
