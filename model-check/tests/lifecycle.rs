//! Model 1: job lifecycle and fencing, over the core's real `World::apply`.

use weir_model_check::lifecycle::{Lifecycle, ALL_TERMINAL};
use weir_model_check::run::{check_all, hunt};

#[test]
fn lifecycle_with_crash_and_cancel_keeps_every_fencing_invariant() {
    check_all("lifecycle (faults on)", Lifecycle::new());
}

/// A worker that lost a completion's answer sends it again: the resend
/// is refused and changes nothing (`ReceiptIgnoresState` breaks this).
#[test]
fn lifecycle_with_a_lost_answer_refuses_the_resent_completion() {
    check_all("lifecycle (a lost answer)", Lifecycle::with_lost_answer());
}

#[test]
fn lifecycle_without_faults_finishes_every_job() {
    check_all(
        "lifecycle (faults off, with liveness)",
        Lifecycle::without_faults(),
    );
}

/// The liveness check can fail: with crashes on, a holder that dies just
/// before the clock stops leaves a running job nobody can finish in time.
#[test]
fn liveness_check_is_not_vacuous_a_late_crash_strands_a_job() {
    let model = Lifecycle::new().with_liveness();
    let path = hunt("lifecycle (faults on, with liveness)", model, ALL_TERMINAL);
    let path = path.expect("a crash near the time bound must strand a job");
    let last = path.last_state();
    assert!(
        last.faults.is_empty(),
        "a liveness failure, not a safety one"
    );
    assert!(last.world.jobs().any(|job| !job.state_name().is_terminal()));
}
