//! Model 6: real dispatchers over one world, shut down at any moment,
//! with lost answers and attempts taken away under them.

use weir_core::DispatcherMutation;
use weir_model_check::dispatcher::{
    DispatcherModel, Shape, ALL_SHUT_DOWN, BATCHES_WITHIN_LIMITS, NOTHING_LEFT_RUNNING,
    NO_ATTEMPT_WASTED, RESULTS_FLUSHED,
};
use weir_model_check::run::{check_all, hunt};

#[test]
fn one_dispatcher_shuts_down_clean_through_lost_answers_and_fencing() {
    check_all(
        "dispatcher, one (2 jobs, 2 workers, batch 2, 1 lost, 1 taken away, t <= 2)",
        DispatcherModel::new(Shape::ONE),
    );
}

#[test]
fn two_dispatchers_over_one_world_shut_down_clean() {
    check_all(
        "dispatcher, two (2 jobs, 1 worker each, 1 taken away, t <= 1)",
        DispatcherModel::new(Shape::TWO),
    );
}

#[test]
fn without_faults_every_shutdown_completes() {
    check_all(
        "dispatcher, clean (2 jobs, 2 workers, batch 2, t <= 2)",
        DispatcherModel::new(Shape::CLEAN),
    );
}

/// The liveness property can fail: with a lost report, its retry waits
/// for a tick the bounded clock may not give.
#[test]
fn with_faults_a_shutdown_can_be_left_waiting() {
    let model = DispatcherModel::new(Shape::ONE).with_liveness();
    assert!(hunt("liveness with faults", model, ALL_SHUT_DOWN).is_some());
}

fn assert_caught(mutation: DispatcherMutation, property: &'static str) {
    let model = DispatcherModel::with_mutation(mutation);
    let path = hunt(&format!("{mutation:?}"), model, property);
    assert!(
        path.is_some(),
        "{mutation:?}: no counterexample to {property:?}"
    );
}

#[test]
fn dropping_jobs_claimed_while_stopping_is_caught() {
    assert_caught(
        DispatcherMutation::DropClaimedWhileStopping,
        NOTHING_LEFT_RUNNING,
    );
    assert_caught(
        DispatcherMutation::DropClaimedWhileStopping,
        NO_ATTEMPT_WASTED,
    );
}

#[test]
fn handing_back_before_the_handler_ends_is_caught() {
    assert_caught(
        DispatcherMutation::HandBackBeforeHandlerEnds,
        NOTHING_LEFT_RUNNING,
    );
}

#[test]
fn shutting_down_before_the_results_are_flushed_is_caught() {
    assert_caught(DispatcherMutation::ShutdownBeforeFlush, RESULTS_FLUSHED);
}

#[test]
fn claiming_for_every_worker_rather_than_the_free_ones_is_caught() {
    assert_caught(
        DispatcherMutation::ClaimForAllWorkers,
        BATCHES_WITHIN_LIMITS,
    );
}
