//! Model 3: N-slot semaphore and its waiters, over the core's real
//! `World::apply` and `Acquisition`.

use weir_model_check::run::check_all;
use weir_model_check::semaphore::SemaphoreHerd;

#[test]
fn semaphore_herd_never_overbooks_and_every_waiter_finishes_by_its_deadline() {
    check_all("semaphore herd", SemaphoreHerd::new());
}
