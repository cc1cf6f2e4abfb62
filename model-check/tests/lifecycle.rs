//! Model 1: job lifecycle and fencing, over the core's real `World::apply`.

use weir_core::Mutation;
use weir_model_check::lifecycle::{Lifecycle, ALL_TERMINAL, DEPOSED_WRITE_REFUSED};
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

#[test]
fn a_deposed_rescuer_is_refused_and_its_successor_rescues() {
    check_all(
        "lifecycle (leaders: a lapsing rescuer)",
        Lifecycle::leaders(),
    );
}

#[test]
fn batches_of_two_in_two_queues_with_a_pause_keep_every_invariant() {
    check_all(
        "lifecycle (batches, two queues, pause)",
        Lifecycle::batches(),
    );
}

#[test]
fn external_waits_admin_retry_and_prune_keep_every_invariant() {
    check_all("lifecycle (waits, retry, prune)", Lifecycle::steps());
}

/// The leaders shape can fail: with the term check gone, a deposed
/// rescuer's rescue is accepted (the classic shape's leader never lapses,
/// so there this mutation changes nothing).
#[test]
fn a_rescue_without_a_term_check_is_caught_in_the_leaders_shape() {
    let model = Lifecycle::leaders().with_mutation(Mutation::NoTermCheck);
    let path = hunt(
        "lifecycle (leaders, NoTermCheck)",
        model,
        DEPOSED_WRITE_REFUSED,
    );
    assert!(
        path.is_some(),
        "a deposed rescuer's write must be found accepted"
    );
}
