//! Model 4: leader terms, over the core's real `World::apply`.

use weir_model_check::leader::LeaderTerms;
use weir_model_check::run::check_all;

#[test]
fn one_leader_per_term_and_deposed_leaders_are_refused() {
    check_all("leader terms", LeaderTerms::new());
}
