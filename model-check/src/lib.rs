//! # weir-model-check: exhaustive models over weir-core's real code
//!
//! Each model is a [`stateright::Model`] whose `next_state` drives the
//! core's own [`weir_core::World::apply`] (and, for semaphores and
//! warm-ups, the core's sans-IO [`weir_core::Acquisition`] and
//! [`weir_core::WarmupDriver`]); nothing here re-implements a rule.
//! What the models add is the *environment*: which process does what and
//! when, faults (crashes, pauses, errors, lapsed leases), a small discrete
//! clock, and ghost variables that remember just enough history to state
//! the invariants of `DESIGN.md` as properties.
//!
//! | model | module | what it explores |
//! |---|---|---|
//! | 1 | [`lifecycle`] | claims, worker writes, rescue, cancel, crash, pause: the epoch fence |
//! | 2 | [`claimer`] | claimer leases: K slots, freshness refresh, takeover of idle slots |
//! | 3 | [`semaphore`] | N-slot semaphore, the scan/wait loop, errors, holder crashes |
//! | 4 | [`leader`] | leader terms, renewal, resignation, deposed leaders' writes |
//! | 5 | [`warmup`] | warm-ups behind N slots: batches that outlast the lease, renewals while they run, lost answers |
//! | 6 | [`dispatcher`] | real dispatchers over one world: shutdown at any moment, lost answers, attempts taken away |
//!
//! Beside the models, [`tla_trace`] writes the core's answers to a recorded
//! run as a behaviour of `correctness/Lifecycle.tla`, for TLC to validate
//! (trace validation).
//!
//! Every step goes through [`check::apply`], which also runs
//! `World::check_invariants` and `World::check_step` and turns a broken
//! invariant or a panic inside the core into a recorded fault (see
//! [`check`] for why panics are caught rather than avoided).
//!
//! Every model also runs over a world (or acquisition) built with
//! `with_mutation`, one deliberate bug at a time, and the tests assert that
//! the checker finds a counterexample for the property that bug breaks; a
//! checker that cannot fail proves nothing. `README.md` lists the bounds,
//! properties, mutants and the latest state counts.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod claimer;
pub mod dispatcher;
pub mod leader;
pub mod lifecycle;
pub mod mutants;
pub mod run;
pub mod semaphore;
pub mod symmetry;
pub mod tla_trace;
pub mod warmup;
