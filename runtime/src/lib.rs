//! # weir: the job queue a Rust service embeds
//!
//! So far this crate holds the [`Backend`] trait that every storage backend
//! implements (the in-memory one in `weir-memory`, the Postgres one in
//! `weir-postgres`); the typed job API, the client and the worker pool are
//! being built on top of it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;

pub use backend::{Backend, BackendError};
pub use weir_core as core;
