//! `weir simulate`: the deterministic simulator from `weir-memory`, on the
//! command line.
//!
//! One seed prints its summary (what fired, which rejection paths were
//! taken, the trace hash); a failure prints the exact command that replays
//! it. A seed range (`--seeds 0..200`) runs the seeds on every core and
//! prints the added-up coverage; with `--check-coverage` it fails if any
//! fault never fired or any required rejection path was never taken.

use std::ops::Range;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use weir_memory::sim::{simulate, simulate_range, SimOptions};
use weir_memory::FaultProfile;

/// Options of `weir simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The seed; without it (and without --seeds) one is picked and printed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded), run in parallel.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Commands applied in the fault phase of each run.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Simulated worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=32))]
    processes: u8,
    /// Faults: `swarm` (a mix drawn per seed), `all`, or `none`.
    #[arg(long, default_value = "swarm")]
    faults: FaultProfile,
    /// Threads for a seed range (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// With --seeds: fail unless every fault fired and every required
    /// rejection path was taken somewhere in the range.
    #[arg(long)]
    check_coverage: bool,
    /// With --seeds: print every seed's summary, not only the totals.
    #[arg(long)]
    verbose: bool,
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (from, to) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let from: u64 = from.parse().map_err(|e| format!("{from:?}: {e}"))?;
    let to: u64 = to.parse().map_err(|e| format!("{to:?}: {e}"))?;
    if from >= to {
        return Err(format!("the range {s} is empty"));
    }
    Ok(from..to)
}

/// Runs `weir simulate`.
pub fn run(args: &SimulateArgs) -> Result<(), String> {
    match &args.seeds {
        Some(seeds) => run_range(args, seeds.clone()),
        None => run_one(args),
    }
}

fn options(args: &SimulateArgs, seed: u64) -> SimOptions {
    SimOptions {
        seed,
        ops: args.ops,
        processes: args.processes,
        faults: args.faults,
        ..SimOptions::new(seed)
    }
}

fn run_one(args: &SimulateArgs) -> Result<(), String> {
    let seed = args.seed.unwrap_or_else(|| {
        let seed = random_seed();
        println!("no --seed given; picked seed {seed}");
        seed
    });
    let options = options(args, seed);
    println!("weir simulate: {}", options.replay_command());
    let started = Instant::now();
    let result = simulate(&options);
    let wall = started.elapsed().as_secs_f64();
    match result {
        Ok(summary) => {
            print!("{summary}");
            println!(
                "  wall time {wall:.2} s, {:.0} commands/s",
                summary.commands as f64 / wall.max(1e-9)
            );
            Ok(())
        }
        Err(failure) => {
            println!("{failure}");
            Err(format!("seed {seed} failed"))
        }
    }
}

fn run_range(args: &SimulateArgs, seeds: Range<u64>) -> Result<(), String> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let base = options(args, seeds.start);
    let count = seeds.end - seeds.start;
    println!(
        "weir simulate: seeds {}..{} × {} ops, {} processes, faults {}, {threads} threads",
        seeds.start, seeds.end, args.ops, args.processes, args.faults
    );
    let report = simulate_range(&base, seeds, threads);
    if args.verbose {
        for summary in &report.summaries {
            print!("{summary}");
        }
    }
    for failure in &report.failures {
        println!("{failure}");
    }
    println!(
        "{} of {count} seeds ok, {} failed; {} commands in {:.1} s ({:.0} commands/s)",
        report.summaries.len(),
        report.failures.len(),
        report.commands,
        report.elapsed.as_secs_f64(),
        report.ops_per_second()
    );
    print!("{}", report.coverage.render());
    if !report.failures.is_empty() {
        return Err(format!("{} seeds failed", report.failures.len()));
    }
    let missing = report.coverage.missing();
    if args.check_coverage && !missing.is_empty() {
        return Err(format!("never exercised: {}", missing.join(", ")));
    }
    Ok(())
}

/// A seed for a run nobody asked to replay: from the wall clock and the
/// process id. The simulation itself never reads the clock.
fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}
