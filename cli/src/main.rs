//! The `weir` command.

#![forbid(unsafe_code)]

#[cfg(feature = "postgres")]
mod admin;
mod demo;
#[cfg(feature = "postgres")]
mod migrate;
#[cfg(feature = "postgres")]
mod pg;
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
    /// Burn down a queue with worker pools: bulk-enqueue jobs, run pools
    /// with a progress bar (one of them stalls and is fenced), and print
    /// jobs/s, pickup latency, retries and fenced late writes. In memory
    /// by default; --database-url runs it on Postgres.
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
    /// List, show, retry and cancel jobs.
    #[cfg(feature = "postgres")]
    Jobs(admin::JobsArgs),
    /// Queue depths per state and whether each is paused (or pause and
    /// resume one); warns about kinds no live worker runs.
    #[cfg(feature = "postgres")]
    Queues(admin::QueuesArgs),
    /// The live worker processes, their queues and kinds.
    #[cfg(feature = "postgres")]
    Workers(admin::WorkersArgs),
    /// Measure throughput, latency and cost per job, each beside the
    /// raw-SQL ceiling measured on the same Postgres in the same run;
    /// writes docs/benchmarks/results.jsonl and latest.md. Without
    /// --database-url a throwaway Postgres is started.
    #[cfg(feature = "bench")]
    Bench(weir_bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        #[cfg(feature = "postgres")]
        Command::Migrate(args) => migrate::run(&args),
        #[cfg(feature = "postgres")]
        Command::Jobs(args) => admin::jobs(&args),
        #[cfg(feature = "postgres")]
        Command::Queues(args) => admin::queues(&args),
        #[cfg(feature = "postgres")]
        Command::Workers(args) => admin::workers(&args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => weir_bench::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("weir: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
