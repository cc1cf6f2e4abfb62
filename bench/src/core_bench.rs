//! The core's own speed, no database: `World::apply` single-job
//! transitions per second on one thread (as `core/examples/apply_rate.rs`
//! measures them), simulator commands per second on one thread, and the
//! model checker's unique states per second (its checker's threads: every
//! core).

use std::time::Instant;

use serde_json::json;
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
    let jobs = match (debug, quick) {
        (true, _) => 2_000,
        (false, true) => 50_000,
        (false, false) => 200_000,
    };
    let (transitions, apply_s) = tokio::task::spawn_blocking(move || apply_rate(jobs))
        .await
        .map_err(|e| e.to_string())?;
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
    bar.finish_and_clear();
    let apply_rate = transitions as f64 / apply_s;
    let sim_rate = sim.ops_per_second();
    let states_rate = stats.unique as f64 / stats.elapsed.as_secs_f64().max(1e-9);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let record = json!({
        "apply": { "transitions": transitions, "seconds": apply_s, "per_s": apply_rate, "threads": 1 },
        "simulator": {
            "seeds": seeds, "ops_per_seed": ops, "commands": sim.commands,
            "seconds": sim.elapsed.as_secs_f64(), "per_s": sim_rate, "threads": 1,
        },
        "model_checker": {
            "model": model, "unique_states": stats.unique, "generated": stats.generated,
            "seconds": stats.elapsed.as_secs_f64(), "unique_per_s": states_rate,
            "generated_per_s": stats.generated as f64 / stats.elapsed.as_secs_f64().max(1e-9),
            "threads": threads,
        },
    });
    let rows = vec![
        Verdict::new(
            "core World::apply, single-job transitions on one core",
            ">= 1,000,000 /s",
            format!("{} /s", thousands(apply_rate)),
            Some(apply_rate >= 1_000_000.0),
        ),
        Verdict::new(
            "simulator operations (commands), one thread",
            ">= 100,000 /s",
            format!("{} /s ({seeds} seeds x {ops} ops)", thousands(sim_rate)),
            Some(sim_rate >= 100_000.0),
        ),
        Verdict::new(
            format!("model checker ({model}), {threads} threads"),
            "reported",
            format!(
                "{} unique states/s ({} states in {:.2} s)",
                thousands(states_rate),
                thousands(stats.unique as f64),
                stats.elapsed.as_secs_f64()
            ),
            None,
        ),
    ];
    Ok(Shape::new("core", record, rows))
}
