//! Trace conformance: every step the simulator takes is one of the models'
//! allowed transitions.
//!
//! The simulator (`weir_memory::sim`) runs worker processes under seeded
//! faults and records every command it applies, with its time and outcome.
//! Each step is replayed here through [`weir_model_check::check::apply`] —
//! the very function every model's `next_state` uses: the core's
//! `World::apply` followed by `check_invariants` and `check_step` — from a
//! fresh world. A step conforms when it raises no fault and the model's
//! answer is the one the simulator saw; the run conforms when every step
//! does.

use weir_core::cmd;
use weir_core::World;
use weir_memory::sim::{simulate_traced, SimOptions};
use weir_memory::FaultProfile;
use weir_model_check::check::{apply, Faults};

fn replay(options: &SimOptions) -> usize {
    let (summary, steps) = simulate_traced(options).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(
        steps.len() as u64,
        summary.commands,
        "every applied command is in the trace"
    );
    let mut world = World::new(options.world_config());
    for (i, step) in steps.iter().enumerate() {
        let mut faults = Faults::default();
        let outcome = apply(&mut world, step.at, step.command.clone(), &mut faults);
        assert!(
            faults.is_empty(),
            "step {i} of `{}` breaks the model: {faults:?}",
            options.replay_command()
        );
        assert_eq!(
            outcome.as_ref(),
            Some(&step.outcome),
            "step {i} of `{}`: the model answers differently to {:?}",
            options.replay_command(),
            step.command
        );
    }
    steps.len()
}

#[test]
fn simulator_traces_replay_through_the_models_step_function() {
    let mut steps = 0;
    for seed in 0..6 {
        let options = SimOptions {
            ops: 2_000,
            faults: FaultProfile::All,
            ..SimOptions::new(seed)
        };
        steps += replay(&options);
    }
    println!("replayed {steps} simulator steps through the model");
    assert!(
        steps > 10_000,
        "the traces are too short to mean much: {steps}"
    );
}

#[test]
fn a_tampered_trace_is_refused() {
    let options = SimOptions {
        ops: 300,
        ..SimOptions::new(7)
    };
    let (_, mut steps) = simulate_traced(&options).unwrap();
    // Claim the opposite outcome for the first completion: the model must
    // notice that its answer differs.
    let i = steps
        .iter()
        .position(|s| {
            matches!(
                s.command,
                weir_core::Command::Complete(cmd::Complete { .. })
            )
        })
        .expect("the run completes something");
    steps[i].outcome = weir_core::Outcome::Completed(Ok(Vec::new()));
    let mut world = World::new(options.world_config());
    let mut differs = false;
    for step in &steps {
        let mut faults = Faults::default();
        let outcome = apply(&mut world, step.at, step.command.clone(), &mut faults);
        differs |= outcome.as_ref() != Some(&step.outcome);
    }
    assert!(differs, "a tampered step went unnoticed");
}
