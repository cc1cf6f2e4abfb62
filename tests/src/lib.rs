//! # weir-tests: suites that run against every backend
//!
//! [`scenarios`] is the conformance suite: scenario tests written once
//! against [`weir::Backend`] (commands in, outcomes out, the backend's own
//! clock) and instantiated, unchanged, for each backend in
//! `tests/conformance.rs`:
//!
//! * the in-memory backend (`weir_memory::MemoryBackend`: the reference
//!   world behind a lock, on the system clock), and
//! * Postgres (`weir_postgres::PgBackend` on a fresh database per test from
//!   the harness, migrated, as the non-superuser role).
//!
//! The scenarios run on real clocks, so their times are generous: each
//! waits well past the thresholds it needs and asserts nothing that a slow
//! machine could break.
//!
//! [`recording`] is how the suite proves it exercises every command: a
//! [`recording::Recording`] backend notes the variant of each command it
//! executes, and `every_command_is_exercised_by_the_suite` (in
//! `tests/conformance.rs`) fails, naming the variants, if the scenarios
//! together leave one out.
//!
//! [`chaos`] is what the chaos suite's processes share: the settings, the
//! jobs, the ledger and audit tables, and the checks (`tests/chaos.rs`
//! drives worker processes of `src/bin/chaos_worker.rs` through faults,
//! then runs them; see `docs/reliability.md`).
//!
//! [`history`] judges concurrent histories: what several clients did to
//! one backend at once is linearizable with the world as its sequential
//! specification, or it is shrunk and printed (`tests/histories.rs`
//! records them against Postgres and the memory backend, with the
//! clients of [`history_client`], in its own process or in
//! `src/bin/history_client.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chaos;
pub mod clocks;
pub mod history;
pub mod history_client;
pub mod recording;
pub mod scenarios;

use weir_core::{Backoff, ClaimerConfig, Millis, WorldConfig};

/// The settings every scenario runs with: thresholds short enough for a
/// test, long enough that a slow machine does not cross them by accident.
pub fn suite_config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(10_000),
            idle_threshold: Millis(1_500),
        },
        heartbeat_stale_after: Millis(300),
        backoff: Backoff::constant(Millis(1_000)),
        leader_ttl: Millis(5_000),
        batch_max: 16,
        ..WorldConfig::default()
    }
}
