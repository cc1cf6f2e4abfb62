//! Trace validation against `correctness/Lifecycle.tla`: the simulator's
//! runs, replayed through the core and written out as behaviours of the
//! spec (`weir_model_check::tla_trace`), for TLC to check with
//! `correctness/LifecycleTrace.tla`.
//!
//! `correctness/trace-validate.sh` runs the ignored test
//! `export_lifecycle_traces` to write the traces (and two that must be
//! rejected), then TLC on each. The other tests here run with the
//! workspace's: they check that the export covers every lifecycle action
//! and that the broken traces really differ from the good ones.

use std::fs;
use std::path::Path;

use weir_core::{Mutation, World};
use weir_memory::sim::{simulate_traced, SimOptions};
use weir_memory::FaultProfile;
use weir_model_check::tla_trace::{EventKind, LifecycleTrace};

/// The runs the CI exports: short enough that TLC takes each in a few
/// seconds, long enough to see every action.
fn options(seed: u64) -> SimOptions {
    SimOptions {
        ops: 600,
        processes: 3,
        faults: FaultProfile::All,
        ..SimOptions::new(seed)
    }
}

/// The run of `options`, replayed through `world` (a fresh one when
/// `None`: then every answer must be the one the simulator recorded).
fn export(options: &SimOptions, world: Option<World>) -> LifecycleTrace {
    let (_, steps) = simulate_traced(options).unwrap_or_else(|failure| panic!("{failure}"));
    let checked = world.is_none();
    let world = world.unwrap_or_else(|| World::new(options.world_config()));
    let steps = steps
        .into_iter()
        .map(|s| (s.at, s.command, checked.then_some(s.outcome)));
    LifecycleTrace::replay(options.replay_command(), world, steps).unwrap_or_else(|m| {
        panic!(
            "step {} of `{}` does not replay: {}",
            m.step,
            options.replay_command(),
            m.detail
        )
    })
}

/// Every action of the spec that the simulator can take.
const EVENTS: [&str; 15] = [
    "claim",
    "write heartbeat",
    "write complete",
    "write fail_retryable",
    "write fail_terminal",
    "write snooze",
    "write wait_external",
    "write cancel_attempt",
    "resume",
    "promote",
    "rescue",
    "cancel",
    "retry",
    "crash",
    "prune",
];

#[test]
fn the_exported_traces_take_every_lifecycle_action() {
    let mut seen = std::collections::BTreeMap::new();
    for seed in 0..8 {
        let trace = export(&options(seed), None);
        for (name, n) in trace.counts() {
            *seen.entry(name).or_insert(0u64) += n;
        }
    }
    println!("events over seeds 0..8: {seen:?}");
    for name in EVENTS {
        assert!(
            seen.get(name).copied().unwrap_or(0) > 0,
            "no `{name}` event in seeds 0..8: {seen:?}"
        );
    }
}

/// A core with `CompleteWithoutEpochCheck` over the same runs: of seeds
/// 0..8, the one whose trace departs soonest from the correct core's (a
/// late completion lands on a newer attempt), with the trace and the first
/// event that differs.
fn mutant() -> (u64, LifecycleTrace, usize) {
    (0..8)
        .filter_map(|seed| {
            let options = options(seed);
            let good = export(&options, None);
            let world = World::new(options.world_config())
                .with_mutation(Mutation::CompleteWithoutEpochCheck);
            let bad = export(&options, Some(world));
            let first = good
                .events
                .iter()
                .zip(&bad.events)
                .position(|(g, b)| g != b)?;
            Some((seed, bad, first))
        })
        .min_by_key(|(_, _, first)| *first)
        .expect("in some run a late completion meets a newer attempt")
}

#[test]
fn a_mutated_core_gives_another_trace() {
    let (seed, _, first) = mutant();
    println!(
        "CompleteWithoutEpochCheck: seed {seed} departs at event {}",
        first + 1
    );
}

/// Makes the first claim's logged epoch one too high: no spec step gets
/// there, so TLC must reject the trace at that event.
fn tamper(trace: &mut LifecycleTrace) -> usize {
    let i = trace
        .events
        .iter()
        .position(|e| e.kind == EventKind::Claim)
        .expect("the run claims something");
    let post = trace.events[i].post.as_mut().expect("a claimed job exists");
    post.1 += 1;
    i
}

#[test]
fn a_tampered_trace_differs() {
    let mut trace = export(&options(0), None);
    let good = trace.to_tla();
    tamper(&mut trace);
    assert_ne!(good, trace.to_tla());
}

fn write(dir: &Path, name: &str, trace: &LifecycleTrace) {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).expect("create the trace directory");
    fs::write(dir.join("LifecycleTraceData.tla"), trace.to_tla()).expect("write the trace");
}

/// Writes `seed-N/LifecycleTraceData.tla` for each seed of
/// `WEIR_TLA_TRACE_SEEDS` (`A..B`, default `0..8`) under
/// `WEIR_TLA_TRACE_DIR`, two traces TLC must reject, and `manifest.tsv`:
/// directory, expected result, events, the command that replays the run.
#[test]
#[ignore = "run by correctness/trace-validate.sh"]
fn export_lifecycle_traces() {
    let dir = std::env::var("WEIR_TLA_TRACE_DIR").expect("set WEIR_TLA_TRACE_DIR");
    let dir = Path::new(&dir);
    let seeds = std::env::var("WEIR_TLA_TRACE_SEEDS").unwrap_or_else(|_| "0..8".into());
    let (a, b) = seeds.split_once("..").expect("seeds as A..B");
    let seeds = a.parse::<u64>().expect("a seed")..b.parse::<u64>().expect("a seed");
    let mut manifest = String::new();
    let mut row = |name: &str, expected: &str, trace: &LifecycleTrace, replay: String| {
        write(dir, name, trace);
        manifest.push_str(&format!(
            "{name}\t{expected}\t{}\t{replay}\n",
            trace.events.len()
        ));
    };
    for seed in seeds {
        let options = options(seed);
        let trace = export(&options, None);
        let replay = format!(
            "{} (traced by correctness/trace-validate.sh {seed}..{})",
            options.replay_command(),
            seed + 1
        );
        row(&format!("seed-{seed}"), "pass", &trace, replay);
    }
    let options = options(0);
    let mut tampered = export(&options, None);
    let i = tamper(&mut tampered);
    row(
        "broken-claim-epoch-off-by-one",
        "TraceAccepted",
        &tampered,
        format!("{} with event {} tampered", options.replay_command(), i + 1),
    );
    let (seed, mutant, first) = mutant();
    row(
        "broken-mutation-complete-without-epoch-check",
        "TraceAccepted",
        &mutant,
        format!(
            "{} replayed through a core with Mutation::CompleteWithoutEpochCheck (departs at event {})",
            self::options(seed).replay_command(),
            first + 1
        ),
    );
    fs::write(dir.join("manifest.tsv"), manifest).expect("write the manifest");
}
