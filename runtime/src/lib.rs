//! # weir: the job queue a Rust service embeds
//!
//! - [`JobArgs`]: a job is a serde type with a kind and defaults.
//! - [`Registry`]: the async handlers a process can run, by kind.
//! - [`Client`]: insert jobs (one, or many atomically), cancel, retry,
//!   pause and resume queues, resume jobs waiting for an external callback.
//! - [`WorkerPool`]: claims, runs and reports jobs by driving the core's
//!   sans-IO [`weir_core::Dispatcher`], with graceful shutdown.
//! - [`warmup()`]: herd mitigation for start-up work (delay + jitter, a
//!   cluster-wide N-slot semaphore with wait-on-miss, paced batches under a
//!   lease renewed while they run), executing the core's
//!   [`weir_core::WarmupDriver`].
//! - [`Backend`]: the storage interface; `weir-memory` and `weir-postgres`
//!   implement it.
//!
//! Every decision is made by `weir-core`; this crate executes them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod client;
pub mod clock;
pub mod job;
pub mod limit;
pub mod metrics;
pub mod registry;
pub mod warmup;
pub mod worker;

pub use backend::{
    Backend, BackendError, BackendExt, JobFilter, Presence, QueueInfo, Subscription, Wakeup,
    WorkerInfo,
};
pub use client::{
    new_job, new_raw_job, stranded, Client, ClientError, InsertOptions, Inserted, Stranded,
};
pub use clock::{wall_clock, MonotonicClock};
pub use job::{HandlerError, HeartbeatError, JobArgs, JobContext, JobOutcome};
pub use limit::{InvalidLimit, Limit, LimitConfig};
pub use metrics::{PoolMetrics, PoolSnapshot, ResultKind, RunningJob};
pub use registry::Registry;
pub use warmup::{warmup, WarmupConfig, WarmupError, WarmupReport};
pub use weir_core as core;
#[cfg(feature = "mutants")]
pub use worker::PoolMutation;
pub use worker::{
    new_process_id, InvalidPoolConfig, PoolConfig, PoolError, PoolReport, WorkerPool,
};
