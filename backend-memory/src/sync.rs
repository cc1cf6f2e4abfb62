//! The `cfg(loom)` shim: every piece of shared state in this crate is built
//! from these types, so `RUSTFLAGS="--cfg loom"` swaps in loom's
//! model-checked versions and `tests/loom.rs` explores every interleaving of
//! the real code.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicI64, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc, Mutex, MutexGuard,
};
