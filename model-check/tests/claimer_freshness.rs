//! Model 2: claimer leases, over the core's real `World::apply`.

use weir_model_check::claimer::{ClaimerFreshness, Timing};
use weir_model_check::run::check_all;

#[test]
fn a_claimer_that_keeps_claiming_keeps_its_slot_and_writes_little() {
    check_all("claimer freshness", ClaimerFreshness::new());
}

#[test]
fn the_keep_window_holds_with_odd_unequal_timings() {
    let model = ClaimerFreshness::new().with_timing(Timing::ODD);
    check_all("claimer freshness (ttl 5, idle 3)", model);
}

#[test]
fn a_claimer_whose_lease_lapsed_claims_again_and_a_live_lease_is_reused() {
    check_all(
        "claimer lapse (2 processes, reuse)",
        ClaimerFreshness::lapse(),
    );
}
