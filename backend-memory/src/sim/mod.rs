//! The deterministic simulator (VOPR-style): several worker processes, each
//! running the core's real per-process logic, against one memory backend,
//! under virtual time, with seeded faults.
//!
//! A run has three phases:
//!
//! 1. **Faults.** A client enqueues jobs and an operator cancels, retries
//!    and pauses; the processes claim, run, heartbeat and report in
//!    batches, hold claimer leases, compete for maintenance leadership and
//!    use a shared N-slot semaphore; and faults fire ([`FaultKind`]), in a
//!    mix drawn from the seed. The phase ends after `ops` commands.
//! 2. **Liveness.** Faults off, crashed processes back. Every job must
//!    reach a terminal state, and every semaphore waiter must acquire or
//!    time out by its deadline, within `liveness_limit` of virtual time.
//! 3. **Shutdown.** Every process shuts down gracefully. Then every
//!    semaphore slot must be free (once lapsed leases of dead holders run
//!    out) and no claimer lease or leadership may be held past its TTL by a
//!    process that ended.
//!
//! After every command the world's state and step invariants are checked
//! ([`weir_core::World::check_invariants`], [`weir_core::World::check_step`]),
//! and after every input each dispatcher's own bookkeeping. The simulator
//! adds one property the world cannot see by itself: a claimer that keeps
//! claiming is never taken over.
//!
//! A failure carries the command that replays it exactly
//! ([`SimOptions::replay_command`]); the same seed gives the same trace
//! hash. [`Coverage`] counts how often each fault fired and each rejection
//! path was taken.
//!
//! ```
//! use weir_memory::sim::{simulate, SimOptions};
//!
//! let options = SimOptions { ops: 500, ..SimOptions::new(7) };
//! let summary = simulate(&options).expect("the core keeps its invariants");
//! let again = simulate(&options).unwrap();
//! assert_eq!(summary.trace_hash, again.trace_hash);
//! ```

mod coverage;
mod engine;
mod process;
mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weir_core::{Dispatcher, DispatcherConfig, Millis, StateName, Timestamp, World, WorldConfig};

pub use coverage::{reject_name, Coverage, REQUIRED_PATHS, REQUIRED_REJECTIONS};

use crate::fault::{FaultKind, FaultProfile};
use engine::Engine;

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimOptions {
    /// Everything random in the run comes from this.
    pub seed: u64,
    /// Commands applied in the fault phase.
    pub ops: u64,
    /// Worker processes (process slots: a crashed one restarts as a new
    /// process in its slot).
    pub processes: u8,
    /// Which faults may fire.
    pub faults: FaultProfile,
    /// How much virtual time the liveness and shutdown phases may take.
    pub liveness_limit: Millis,
}

impl SimOptions {
    /// The defaults for `seed`: 10,000 operations, 4 processes, swarm faults.
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            ops: 10_000,
            processes: 4,
            faults: FaultProfile::Swarm,
            liveness_limit: Millis::from_secs(600),
        }
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        format!(
            "weir simulate --seed {} --ops {} --processes {} --faults {}",
            self.seed, self.ops, self.processes, self.faults
        )
    }

    /// The world configuration the run uses (drawn from the seed). Build a
    /// world from it to run [`simulate_world`], for example with a
    /// deliberate mutation.
    pub fn world_config(&self) -> WorldConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(2);
        workload::world_config(&mut rng)
    }
}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The run.
    pub options: SimOptions,
    /// FNV-1a over every applied command and outcome, with time and sender.
    pub trace_hash: u64,
    /// Commands applied in all phases.
    pub commands: u64,
    /// Commands applied in the fault phase.
    pub fault_phase_commands: u64,
    /// Events handled.
    pub events: u64,
    /// Virtual time of the fault phase.
    pub fault_phase: Millis,
    /// Virtual time of the liveness and shutdown phases.
    pub liveness_phase: Millis,
    /// Jobs left in the world by state (pruned ones are gone).
    pub jobs: BTreeMap<StateName, u64>,
    /// Jobs ever inserted.
    pub enqueued: u64,
    /// Jobs pruned by the leader.
    pub pruned: u64,
    /// N of the simulated semaphore.
    pub permits: u16,
    /// The most holders it ever had at once.
    pub max_holders: usize,
    /// Processes started, restarts included.
    pub processes_started: u64,
    /// The faults this seed switched on.
    pub faults_enabled: Vec<FaultKind>,
    /// What fired and which paths were taken.
    pub coverage: Coverage,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut jobs: Vec<String> = self
            .jobs
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        if jobs.is_empty() {
            jobs.push("none".into());
        }
        let faults: Vec<&str> = self.faults_enabled.iter().map(|k| k.as_str()).collect();
        writeln!(
            f,
            "seed {}: ok, trace {:016x}",
            self.options.seed, self.trace_hash
        )?;
        writeln!(
            f,
            "  {} commands ({} in the fault phase), {} events; virtual time {:.1} s with faults + {:.1} s to settle",
            self.commands,
            self.fault_phase_commands,
            self.events,
            self.fault_phase.0 as f64 / 1000.0,
            self.liveness_phase.0 as f64 / 1000.0
        )?;
        writeln!(
            f,
            "  {} jobs enqueued, {} pruned, left: {}; {} processes started; semaphore max holders {} of {}",
            self.enqueued,
            self.pruned,
            jobs.join(", "),
            self.processes_started,
            self.max_holders,
            self.permits
        )?;
        writeln!(f, "  faults on: {}", faults.join(", "))?;
        write!(f, "{}", self.coverage.render())
    }
}

/// A run that broke an invariant, missed a liveness deadline, or panicked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The run.
    pub options: SimOptions,
    /// What went wrong.
    pub message: String,
    /// The virtual time it went wrong at.
    pub at: Timestamp,
    /// Commands applied before it went wrong.
    pub commands: u64,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} FAILED at {} after {} commands: {}",
            self.options.seed, self.at, self.commands, self.message
        )?;
        write!(f, "  replay: {}", self.options.replay_command())
    }
}

impl std::error::Error for SimFailure {}

/// One applied command of a run: when, from whom (a process id, or the
/// client/operator), what, and what the world answered. A run's steps, fed
/// to a fresh `World::new(options.world_config())` in order at their times,
/// give the same answers (the model checker's trace-conformance test does
/// exactly that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceStep {
    /// The world's time when it was applied.
    pub at: Timestamp,
    /// Who sent it.
    pub sender: u64,
    /// The command.
    pub command: weir_core::Command,
    /// Its outcome.
    pub outcome: weir_core::Outcome,
    /// When its sender sent it (at most `at`: the request's latency).
    pub sent: Timestamp,
    /// When the outcome reached its sender, or `None` when it never did
    /// (lost on the way, a duplicate delivery's, a crashed sender's
    /// request that landed anyway): the sender cannot tell whether it
    /// took effect.
    pub answered: Option<Timestamp>,
    /// By when it had taken effect, as far as its sender can tell: when
    /// the outcome, or word that it was lost, reached the sender; when it
    /// was applied, for a duplicate delivery or a crashed sender's request.
    pub settled: Timestamp,
}

/// Runs one simulation on a fresh world and returns every applied command
/// with its outcome as well as the summary.
pub fn simulate_traced(options: &SimOptions) -> Result<(Summary, Vec<TraceStep>), SimFailure> {
    let mut engine = Engine::new(options.clone(), World::new(options.world_config()));
    engine.recorded = Some(Vec::new());
    run(engine).map(|(summary, steps)| (summary, steps.unwrap_or_default()))
}

/// Runs one simulation on a fresh world.
pub fn simulate(options: &SimOptions) -> Result<Summary, SimFailure> {
    simulate_world(options, World::new(options.world_config()))
}

/// Runs one simulation on `world` (normally `World::new(options.world_config())`,
/// perhaps with a deliberate mutation). A panic in the code under test is a
/// failure like any other.
pub fn simulate_world(options: &SimOptions, world: World) -> Result<Summary, SimFailure> {
    run(Engine::new(options.clone(), world)).map(|(summary, _)| summary)
}

/// Runs one simulation whose processes build their dispatchers with
/// `make` instead of [`Dispatcher::new`]: for the tests, a dispatcher
/// making one deliberate mistake, which the simulator must catch.
pub fn simulate_dispatchers(
    options: &SimOptions,
    make: impl Fn(DispatcherConfig, Timestamp) -> Dispatcher + 'static,
) -> Result<Summary, SimFailure> {
    let mut engine = Engine::new(options.clone(), World::new(options.world_config()));
    engine.make_dispatcher = Box::new(make);
    run(engine).map(|(summary, _)| summary)
}

fn run(mut engine: Engine) -> Result<(Summary, Option<Vec<TraceStep>>), SimFailure> {
    let result = panic::catch_unwind(AssertUnwindSafe(|| engine.run()));
    let message = match result {
        Ok(Ok(())) => {
            let steps = engine.recorded.take();
            return Ok((engine.summary(), steps));
        }
        Ok(Err(message)) => message,
        Err(panic) => panic_message(panic.as_ref()),
    };
    Err(SimFailure {
        options: engine.opts.clone(),
        message,
        at: engine.now(),
        commands: engine.commands,
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    format!("panicked: {text}")
}

/// The results of a seed range.
#[derive(Debug)]
pub struct RangeReport {
    /// Successful runs, in seed order.
    pub summaries: Vec<Summary>,
    /// Failed runs, in seed order.
    pub failures: Vec<SimFailure>,
    /// Everything the successful runs exercised, added up.
    pub coverage: Coverage,
    /// Commands applied by the successful runs.
    pub commands: u64,
    /// Wall-clock time of the whole range.
    pub elapsed: Duration,
}

impl RangeReport {
    /// Applied commands per wall-clock second, over all threads.
    pub fn ops_per_second(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `base` with every seed in `seeds`, on `threads` threads. Each seed
/// is independent and deterministic, so the results do not depend on the
/// number of threads or on how the seeds were spread over them.
pub fn simulate_range(base: &SimOptions, seeds: Range<u64>, threads: usize) -> RangeReport {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let mut results: Vec<(u64, Result<Summary, SimFailure>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= seeds.end {
                            return done;
                        }
                        let options = SimOptions {
                            seed,
                            ..base.clone()
                        };
                        done.push((seed, simulate(&options)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a simulation panic is caught inside"))
            .collect()
    });
    results.sort_by_key(|(seed, _)| *seed);
    let mut report = RangeReport {
        summaries: Vec::new(),
        failures: Vec::new(),
        coverage: Coverage::default(),
        commands: 0,
        elapsed: Duration::ZERO,
    };
    for (_, result) in results {
        match result {
            Ok(summary) => {
                report.coverage.merge(&summary.coverage);
                report.commands += summary.commands;
                report.summaries.push(summary);
            }
            Err(failure) => report.failures.push(failure),
        }
    }
    report.elapsed = started.elapsed();
    report
}
