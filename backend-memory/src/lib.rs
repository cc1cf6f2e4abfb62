//! # weir-memory: the in-memory backend, a virtual clock, and the simulator
//!
//! - [`MemoryBackend`]: the core's reference [`weir_core::World`] behind a
//!   lock. Commands in, outcomes out: its outcome for a command is
//!   `World::apply`'s by construction. With the default `runtime` feature
//!   it implements the runtime's async `weir::Backend` trait, so tests of
//!   the worker pool and of user code need no database.
//! - [`Clock`], [`SystemClock`], [`VirtualClock`]: where the backend's time
//!   comes from. Virtual time moves only when the test or the simulator
//!   moves it, so simulated minutes take milliseconds.
//! - [`sim`]: the deterministic simulator. Several processes run the core's
//!   real per-process logic against one backend under seeded faults; every
//!   invariant is checked after every step; a failure prints the command
//!   that replays it. `weir simulate --seed N` is its command line.
//! - [`FaultKind`], [`FaultProfile`], [`FaultPlan`]: the faults and the
//!   per-seed mix of them (swarm testing).
//!
//! Every piece of shared state (the lock, the virtual clock's atomic) comes
//! from a `cfg(loom)` shim, and `tests/loom.rs` explores its interleavings
//! under `RUSTFLAGS="--cfg loom"`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod clock;
#[cfg(feature = "runtime")]
mod extras;
mod fault;
#[cfg(feature = "runtime")]
mod runtime;
pub mod sim;
mod sync;
mod trace;

pub use backend::{BrokenStep, MemoryBackend};
pub use clock::{Clock, SystemClock, VirtualClock};
pub use fault::{FaultKind, FaultPlan, FaultProfile};
pub use trace::{Fnv, TraceHash};
