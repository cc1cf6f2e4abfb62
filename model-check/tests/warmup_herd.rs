//! Model 5: warm-ups behind an N-slot semaphore, batches that outlast the
//! lease, over the core's real `World::apply` and `WarmupDriver`.

use weir_model_check::run::check_all;
use weir_model_check::warmup::{Shape, WarmupHerd};

#[test]
fn two_paced_warmers_on_one_slot_never_work_at_once_and_both_finish() {
    check_all(
        "warm-up, paced (P = 2, N = 1, 2 batches)",
        WarmupHerd::new(Shape::PACED),
    );
}

#[test]
fn lost_and_late_answers_never_let_two_warmers_work_at_once() {
    check_all(
        "warm-up, lossy (P = 2, N = 1, 2 lost, 1 late)",
        WarmupHerd::new(Shape::LOSSY),
    );
}

#[test]
fn three_warmers_on_two_slots_never_overbook_and_all_finish() {
    check_all(
        "warm-up, crowd (P = 3, N = 2)",
        WarmupHerd::new(Shape::CROWD),
    );
}
