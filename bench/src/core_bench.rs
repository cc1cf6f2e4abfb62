//! The core's own speed, no database: `World::apply` single-job
//! transitions per second on one thread (as `core/examples/apply_rate.rs`
//! measures them), simulator commands per second on one thread, and the
//! model checker's unique states per second (its checker's threads: every
//! core).

use std::time::Instant;

use serde::Serialize;
use weir::core::cmd;
use weir::core::{Kind, NewJob, Payload, ProcessId, QueueName, Timestamp, World, WorldConfig};
use weir_memory::sim::{simulate_range, SimOptions};

use super::report::{thousands, Shape, Verdict};
use super::Ctx;

/// Enqueues `jobs` one at a time, then claims and completes each alone.
fn apply_rate(jobs: u64) -> (u64, f64) {
    let queue = QueueName::new("default").expect("valid");
    let kind = Kind::new("noop").expect("valid");
    let mut world = World::new(WorldConfig::default());
    let now = Timestamp(1);
    let started = Instant::now();
    let mut transitions = 0u64;
    for _ in 0..jobs {
        let job = NewJob::new(queue.clone(), kind.clone(), Payload::default());
        let enqueued = world.run(now, cmd::Enqueue { jobs: vec![job] });
        enqueued.expect("a valid job is enqueued");
        transitions += 1;
    }
    let acquire = cmd::ClaimerAcquire {
        queue: queue.clone(),
        process: ProcessId(1),
    };
    let (claimer, _) = world
        .run(now, acquire)
        .expect("a fresh world has a free claimer slot");
    for _ in 0..jobs {
        let claim = cmd::Claim {
            queue: queue.clone(),
            claimer,
            max: 1,
            kinds: None,
        };
        let claimed = world
            .run(now, claim)
            .expect("an available job under a held lease is claimed");
        let receipts = vec![claimed.jobs[0].receipt];
        let done = world.run(now, cmd::Complete { receipts });
        done.expect("a claimed job's receipt completes");
        transitions += 2;
    }
    (transitions, started.elapsed().as_secs_f64())
}

/// `weir bench core`.
pub async fn run(ctx: &Ctx) -> Result<Shape, String> {
    let quick = ctx.quick;
    let bar = ctx.spinner("core: World::apply, the simulator, the model checker".into());
    // A debug build checks every invariant after every transition: only a
    // token run there (its figures mean nothing, and say so).
    let debug = cfg!(debug_assertions);
    let apply = measure_apply(debug, quick).await?;
    let simulator = measure_simulator(debug, quick).await?;
    let model_checker = measure_model_checker(debug, quick).await?;
    bar.finish_and_clear();
    let record = CoreRecord {
        apply,
        simulator,
        model_checker,
    };
    let rows = verdicts(&record);
    Ok(Shape::new("core", &record, rows))
}

/// The `core` shape's record.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct CoreRecord {
    apply: ApplyRecord,
    simulator: SimulatorRecord,
    model_checker: ModelCheckerRecord,
}

/// `World::apply`'s single-job transitions on one thread.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct ApplyRecord {
    transitions: u64,
    seconds: f64,
    per_s: f64,
    threads: u32,
}

/// Simulator commands on one thread.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct SimulatorRecord {
    seeds: u64,
    ops_per_seed: u64,
    commands: u64,
    seconds: f64,
    per_s: f64,
    threads: u32,
}

/// The model checker's states, on every core.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct ModelCheckerRecord {
    model: &'static str,
    unique_states: usize,
    generated: usize,
    seconds: f64,
    unique_per_s: f64,
    generated_per_s: f64,
    threads: usize,
}

async fn measure_apply(debug: bool, quick: bool) -> Result<ApplyRecord, String> {
    let jobs = match (debug, quick) {
        (true, _) => 2_000,
        (false, true) => 50_000,
        (false, false) => 200_000,
    };
    let (transitions, seconds) = tokio::task::spawn_blocking(move || apply_rate(jobs))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ApplyRecord {
        transitions,
        seconds,
        per_s: transitions as f64 / seconds,
        threads: 1,
    })
}

async fn measure_simulator(debug: bool, quick: bool) -> Result<SimulatorRecord, String> {
    let (seeds, ops) = match (debug, quick) {
        (true, _) => (1, 500),
        (false, true) => (2, 2_000),
        (false, false) => (6, 10_000),
    };
    let sim = tokio::task::spawn_blocking(move || {
        let base = SimOptions {
            ops,
            ..SimOptions::new(0)
        };
        simulate_range(&base, 0..seeds, 1)
    })
    .await
    .map_err(|e| e.to_string())?;
    if !sim.failures.is_empty() {
        return Err(format!("the simulator failed: {}", sim.failures[0]));
    }
    Ok(SimulatorRecord {
        seeds,
        ops_per_seed: ops,
        commands: sim.commands,
        seconds: sim.elapsed.as_secs_f64(),
        per_s: sim.ops_per_second(),
        threads: 1,
    })
}

async fn measure_model_checker(debug: bool, quick: bool) -> Result<ModelCheckerRecord, String> {
    let (model, stats) = tokio::task::spawn_blocking(move || {
        use weir_model_check::run::check_all;
        if quick || debug {
            let m = weir_model_check::leader::LeaderTerms::new();
            ("leader terms", check_all("leader terms", m))
        } else {
            let m = weir_model_check::lifecycle::Lifecycle::without_faults();
            (
                "lifecycle, faults off",
                check_all("lifecycle, faults off", m),
            )
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let seconds = stats.elapsed.as_secs_f64();
    Ok(ModelCheckerRecord {
        model,
        unique_states: stats.unique,
        generated: stats.generated,
        seconds,
        unique_per_s: stats.unique as f64 / seconds.max(1e-9),
        generated_per_s: stats.generated as f64 / seconds.max(1e-9),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

fn verdicts(record: &CoreRecord) -> Vec<Verdict> {
    let (apply, sim, model) = (&record.apply, &record.simulator, &record.model_checker);
    vec![
        Verdict::new(
            "core World::apply, single-job transitions on one core",
            ">= 1,000,000 /s",
            format!("{} /s", thousands(apply.per_s)),
            Some(apply.per_s >= 1_000_000.0),
        ),
        Verdict::new(
            "simulator operations (commands), one thread",
            ">= 100,000 /s",
            format!(
                "{} /s ({} seeds x {} ops)",
                thousands(sim.per_s),
                sim.seeds,
                sim.ops_per_seed
            ),
            Some(sim.per_s >= 100_000.0),
        ),
        Verdict::new(
            format!("model checker ({}), {} threads", model.model, model.threads),
            "reported",
            format!(
                "{} unique states/s ({} states in {:.2} s)",
                thousands(model.unique_per_s),
                thousands(model.unique_states as f64),
                model.seconds
            ),
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    /// The keys the `json!` of the core shape wrote before it was typed.
    #[test]
    fn core_record_keeps_its_keys() {
        let keys = [
            "apply",
            "apply.transitions",
            "apply.seconds",
            "apply.per_s",
            "apply.threads",
            "simulator",
            "simulator.seeds",
            "simulator.ops_per_seed",
            "simulator.commands",
            "simulator.seconds",
            "simulator.per_s",
            "simulator.threads",
            "model_checker",
            "model_checker.model",
            "model_checker.unique_states",
            "model_checker.generated",
            "model_checker.seconds",
            "model_checker.unique_per_s",
            "model_checker.generated_per_s",
            "model_checker.threads",
        ];
        assert_eq!(key_paths(&CoreRecord::default()), sorted(&keys));
    }
}
