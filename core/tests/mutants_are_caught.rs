//! The property run can fail: with each deliberate bug of the reference
//! world switched on (the `mutants` feature), the same random sequences must
//! find a broken invariant or property. Kept in its own test binary because
//! it silences the panic hook while proptest shrinks the failures.

mod common;

use weir_core::*;

use common::{config, op, Run};

/// The run above can fail: with each deliberate bug switched on, the same
/// random sequences find a broken invariant or property.
#[test]
fn every_world_mutation_is_caught_by_the_random_sequences() {
    use proptest::test_runner::{Config, TestRunner};

    // Each failing case panics (that is the point); keep the output readable.
    std::panic::set_hook(Box::new(|_| {}));
    let mut caught = Vec::new();
    for mutation in Mutation::ALL {
        if mutation == Mutation::ScanStopsAtError {
            continue; // An `Acquisition` bug, not a world bug: see below.
        }
        let mut runner = TestRunner::new(Config {
            cases: 4096,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::collection::vec(op(), 1..300), |ops| {
            let mut run = Run::with_world(World::new(config()).with_mutation(mutation));
            for op in ops {
                run.step(op);
            }
            Ok(())
        });
        let Err(failure) = result else {
            let _ = std::panic::take_hook();
            panic!("{mutation:?} was not caught by 4096 random sequences");
        };
        let first_line = failure
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        caught.push(format!("{mutation:?}: {first_line}"));
    }
    let _ = std::panic::take_hook();
    for line in &caught {
        println!("caught {line}");
    }
    assert_eq!(caught.len(), Mutation::ALL.len() - 1);
}
