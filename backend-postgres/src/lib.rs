//! Weir's Postgres backend.
//!
//! The backend itself is still to come. With the `harness` feature (off by
//! default) the crate also provides [`harness`]: throwaway Postgres clusters
//! and isolated per-test databases for tests, examples and benchmarks.

#![warn(missing_docs)]
// The only unsafe code is the `atexit` registration in `harness`, allowed
// locally on that one function.
#![deny(unsafe_code)]

#[cfg(feature = "harness")]
pub mod harness;
