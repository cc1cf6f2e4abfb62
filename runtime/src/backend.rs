//! The storage backend: commands in, outcomes out.
//!
//! A backend gives, for every [`Command`], the [`Outcome`] that
//! [`weir_core::World::apply`] gives at the backend's own clock. The memory
//! backend *is* a `World` behind a lock; the Postgres backend is held to it
//! by differential tests. Nothing else about storage leaks into the worker
//! logic, which lives in the core's sans-IO [`weir_core::Dispatcher`].

use async_trait::async_trait;
use weir_core::{Command, Outcome, Timestamp};

/// Why a command has no outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The command may or may not have been applied: the connection broke
    /// after it was sent, or the answer timed out. Callers treat this as a
    /// lost result (the dispatcher's [`weir_core::Input::Lost`]).
    #[error("result unknown: {0}")]
    Lost(String),
    /// The command was certainly not applied (no connection could be had,
    /// the transaction was rolled back). Safe to retry.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The storage is not usable as configured (missing schema, a schema
    /// version newer than this code, missing privileges). Retrying will not help.
    #[error("backend misconfigured: {0}")]
    Misconfigured(String),
}

/// A place jobs, leases, semaphores and the leader are stored.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Applies one command at the backend's clock and returns its outcome.
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError>;

    /// The backend's clock: every command is applied at this time.
    async fn now(&self) -> Result<Timestamp, BackendError>;
}
