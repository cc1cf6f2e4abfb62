//! The `weir` command.

#![forbid(unsafe_code)]

mod demo;
#[cfg(feature = "postgres")]
mod migrate;
mod simulate;

use clap::{Parser, Subcommand};

/// Weir: a Postgres-backed job queue whose every decision is made by one
/// pure, checked state machine.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a short deterministic demo of the core's reference world: several
    /// worker processes claim, complete, fail and retry jobs under virtual
    /// time, one of them stalls and is fenced, and a summary is printed.
    Demo(demo::DemoArgs),
    /// Run the deterministic simulator: worker processes running the core's
    /// real logic against the in-memory backend under seeded faults, every
    /// invariant checked after every step. A failure prints the command that
    /// replays it.
    Simulate(simulate::SimulateArgs),
    /// Create or upgrade Weir's schema in a Postgres database (idempotent;
    /// a schema newer than this binary is refused).
    #[cfg(feature = "postgres")]
    Migrate(migrate::MigrateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        #[cfg(feature = "postgres")]
        Command::Migrate(args) => migrate::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("weir: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
