//! Every deliberate bug of the core is caught: the model named in
//! `weir_model_check::mutants::CAUGHT` finds a counterexample to the named
//! property when run over a world (or acquisition) built with
//! `with_mutation`.

use weir_core::Mutation;
use weir_model_check::mutants::{caught_by, hunt_mutant};
use weir_model_check::run::discoveries;
use weir_model_check::semaphore::{SemaphoreHerd, PAST_ERROR, SCAN_COMPLETE};
use weir_model_check::warmup::{
    WarmupHerd, AT_MOST_N_WORKING, ONE_WORKER_PER_SLOT, WORKING_HOLDS_IN_STORAGE,
};

fn assert_caught(mutation: Mutation) {
    let row = caught_by(mutation).expect("every mutation has a row");
    let path = hunt_mutant(mutation);
    assert!(
        path.is_some(),
        "{mutation:?}: no counterexample to {:?} in {:?}",
        row.property,
        row.model
    );
}

#[test]
fn every_mutation_has_a_model_that_catches_it() {
    for mutation in Mutation::every() {
        assert!(caught_by(mutation).is_some(), "{mutation:?} has no row");
    }
}

#[test]
fn claim_without_epoch_bump_is_caught() {
    assert_caught(Mutation::ClaimWithoutEpochBump);
}

#[test]
fn complete_without_epoch_check_is_caught() {
    assert_caught(Mutation::CompleteWithoutEpochCheck);
}

#[test]
fn rescue_without_epoch_bump_is_caught() {
    assert_caught(Mutation::RescueWithoutEpochBump);
}

#[test]
fn cancel_without_epoch_bump_is_caught() {
    assert_caught(Mutation::CancelWithoutEpochBump);
}

#[test]
fn snooze_consuming_an_attempt_is_caught() {
    assert_caught(Mutation::SnoozeConsumesAttempt);
}

#[test]
fn a_too_lax_refresh_predicate_is_caught() {
    assert_caught(Mutation::RefreshPredicateTooLax);
}

#[test]
fn a_claimer_that_never_refreshes_is_caught() {
    assert_caught(Mutation::ClaimerNeverRefreshes);
}

#[test]
fn acquire_ignoring_the_holder_is_caught() {
    assert_caught(Mutation::AcquireIgnoresHolder);
}

#[test]
fn a_slot_release_ignoring_the_epoch_is_caught() {
    assert_caught(Mutation::SlotReleaseIgnoresEpoch);
}

#[test]
fn a_rescue_of_a_fresh_job_is_caught() {
    assert_caught(Mutation::RescueOfFreshJob);
}

#[test]
fn a_receipt_check_ignoring_the_state_is_caught() {
    assert_caught(Mutation::ReceiptIgnoresState);
}

#[test]
fn a_retry_past_the_last_attempt_is_caught() {
    assert_caught(Mutation::RetryPastMaxAttempts);
}

#[test]
fn a_claimer_slot_past_the_limit_is_caught() {
    assert_caught(Mutation::ClaimerOpensPastLimit);
}

#[test]
fn a_scan_that_stops_at_an_error_is_caught() {
    assert_caught(Mutation::ScanStopsAtError);
}

/// The same bug, seen from the outside: over the whole state space, no
/// waiter ever gets a slot past one whose try errored (the correct model
/// has an example of that).
#[test]
fn a_scan_that_stops_at_an_error_never_acquires_past_the_error() {
    let found = discoveries(
        "ScanStopsAtError, full run",
        SemaphoreHerd::with_mutation(Mutation::ScanStopsAtError),
    );
    assert!(found.contains(SCAN_COMPLETE));
    assert!(!found.contains(PAST_ERROR));
}

#[test]
fn no_term_check_is_caught() {
    assert_caught(Mutation::NoTermCheck);
}

#[test]
fn elect_without_term_bump_is_caught() {
    assert_caught(Mutation::ElectWithoutTermBump);
}

#[test]
fn a_warmup_that_renews_only_between_batches_is_caught() {
    assert_caught(Mutation::WarmupRenewsBetweenBatches);
}

#[test]
fn a_warmup_that_proves_its_lease_from_the_answer_is_caught() {
    assert_caught(Mutation::WarmupProvesLeaseFromAnswer);
}

/// The same bug, over the whole state space: besides two warmers at
/// once, a working process's slot is no longer its own in storage.
#[test]
fn a_warmup_that_renews_only_between_batches_works_on_a_lapsed_lease() {
    let found = discoveries(
        "WarmupRenewsBetweenBatches, full run",
        WarmupHerd::with_mutation(Mutation::WarmupRenewsBetweenBatches),
    );
    assert!(found.contains(AT_MOST_N_WORKING), "{found:?}");
    assert!(found.contains(WORKING_HOLDS_IN_STORAGE), "{found:?}");
    assert!(found.contains(ONE_WORKER_PER_SLOT), "{found:?}");
}

#[test]
fn an_acquire_that_never_reuses_the_callers_lease_is_caught() {
    assert_caught(Mutation::AcquireIgnoresOwnLease);
}

/// A liveness counterexample: a path that ends with the returning process
/// refused although its own lapsed slot was there to take.
#[test]
fn an_acquire_that_skips_the_callers_lapsed_lease_is_caught() {
    assert_caught(Mutation::AcquireSkipsOwnLapsedLease);
}

/// Only a batch of two can show it: the classic shape's batches have one
/// item each.
#[test]
fn a_batch_that_stops_at_its_first_refusal_is_caught() {
    assert_caught(Mutation::BatchStopsAtFirstRefusal);
}
