//! # weir-postgres: Weir's Postgres backend
//!
//! [`PgBackend`] applies every storage [`Command`](weir_core::Command) of the
//! core in Postgres and answers with the [`Outcome`](weir_core::Outcome)
//! that `World::apply` gives for the same command: differential tests hold
//! it to that, command by command and state by state.
//!
//! * [`migrate()`] brings a schema (its name a validated [`SchemaName`],
//!   always quoted) to the version this code needs; re-running it is a
//!   no-op and a newer database is refused.
//! * [`PgBackend`] implements [`weir::Backend`]: the commands, the bulk
//!   path (`COPY`, or chunked batches in one transaction when jobs have
//!   unique keys), the operator reads, worker presence (the `workers`
//!   table) and wake-ups ([`notify::Listener`]). [`PgBackend::enqueue`]
//!   enqueues inside the caller's own transaction and
//!   [`PgBackend::enqueue_copy`] bulk-loads with `COPY`.
//! * [`semaphore`] holds the two client-side semaphores: session advisory
//!   locks on a dedicated connection, and a lease table for deployments
//!   behind a transaction-pooling PgBouncer.
//! * [`PgConfig::pooler`] says what the connections go through:
//!   [`Pooler::Direct`] (Postgres, or PgBouncer in session pooling) or
//!   [`Pooler::Transaction`] (PgBouncer in transaction pooling, where every
//!   statement is sent unnamed inside a transaction and session features
//!   are refused).
//! * [`notify`] turns LISTEN/NOTIFY into wake-ups, with a polling fallback.
//!
//! The tables, their indexes and why each exists, the grants the role
//! needs, and the round trips of each command are in the crate's README.
//!
//! The throwaway Postgres clusters and per-test databases that its tests,
//! the examples and the benchmark run on are not here: they are the
//! unpublished `weir-pg-harness` crate.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod bulk;
mod claim;
mod config;
mod enqueue;
mod error;
mod leases;
mod locked;
mod maintenance;
pub mod migrate;
#[cfg(feature = "mutants")]
pub mod mutants;
pub mod notify;
mod pooler;
mod presence;
mod reads;
mod receipts;
mod rows;
mod schema;
pub mod semaphore;
mod snapshot;

pub use backend::PgBackend;
pub use bulk::CopyError;
pub use config::{ConfigError, PgConfig, Pooler};
pub use migrate::{migrate, MigrateError, MigrateReport, LATEST_VERSION};
#[cfg(feature = "mutants")]
pub use mutants::SqlMutation;
pub use schema::{InvalidSchemaName, SchemaName};
pub use snapshot::Snapshot;
