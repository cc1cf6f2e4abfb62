//! Model 6: real dispatchers over one world, shut down at any moment,
//! with lost answers and attempts taken away under them.

use weir_core::DispatcherMutation;
use weir_model_check::dispatcher::{
    DispatcherModel, Shape, NOTHING_LEFT_RUNNING, NO_ATTEMPT_WASTED,
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

#[test]
fn dropping_jobs_claimed_while_stopping_is_caught() {
    let model = DispatcherModel::with_mutation(DispatcherMutation::DropClaimedWhileStopping);
    let path = hunt("DropClaimedWhileStopping", model, NOTHING_LEFT_RUNNING);
    assert!(
        path.is_some(),
        "no counterexample to {NOTHING_LEFT_RUNNING:?}"
    );
    let model = DispatcherModel::with_mutation(DispatcherMutation::DropClaimedWhileStopping);
    let path = hunt("DropClaimedWhileStopping", model, NO_ATTEMPT_WASTED);
    assert!(path.is_some(), "no counterexample to {NO_ATTEMPT_WASTED:?}");
}
