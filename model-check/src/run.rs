//! Running a model to completion, and hunting a mutant's counterexample.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

/// What one exhaustive run covered.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Distinct states (by fingerprint).
    pub unique: usize,
    /// States generated, repeats included.
    pub generated: usize,
    /// The deepest path explored.
    pub depth: usize,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unique states, {} generated, depth {}, {:.2?}",
            self.unique, self.generated, self.depth, self.elapsed
        )
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Explores every reachable state of `model` (breadth first) and panics
/// unless every `always` and `eventually` property holds and every
/// `sometimes` property has an example. Returns what it covered.
pub fn check_all<M>(label: &str, model: M) -> Stats
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    let names: Vec<_> = model.properties().iter().map(|p| p.name).collect();
    let start = Instant::now();
    let checker = model.checker().threads(threads()).spawn_bfs().join();
    let stats = Stats {
        unique: checker.unique_state_count(),
        generated: checker.state_count(),
        depth: checker.max_depth(),
        elapsed: start.elapsed(),
    };
    println!("{label}: {stats}");
    for name in &names {
        println!("  checked: {name}");
    }
    checker.assert_properties();
    stats
}

/// Explores `model` breadth first until `property` is discovered, and
/// returns the path that breaks it (or, for a `sometimes` property, the
/// example). `None` means the whole reachable space was explored without a
/// discovery. The path is short but not always a shortest one: stateright
/// keeps the last discovery of the batch of states it was checking when it
/// stopped.
pub fn hunt<M>(label: &str, model: M, property: &'static str) -> Option<Path<M::State, M::Action>>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    let start = Instant::now();
    // One thread: the runs are small, and paths come out shorter.
    let checker = model
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let found = checker.discovery(property);
    let others: BTreeSet<_> = checker.discoveries().into_keys().collect();
    println!(
        "{label}: {} after {} unique states in {:.2?}; discoveries: {others:?}",
        if found.is_some() {
            "found"
        } else {
            "NOT found"
        },
        checker.unique_state_count(),
        start.elapsed(),
    );
    if let Some(path) = &found {
        print!("{path}");
    }
    found
}

/// Explores the whole reachable space of `model` and returns the names of
/// every property with a discovery (counterexamples for `always` and
/// `eventually`, examples for `sometimes`).
pub fn discoveries<M>(label: &str, model: M) -> BTreeSet<&'static str>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    let start = Instant::now();
    let checker = model.checker().threads(threads()).spawn_bfs().join();
    let found: BTreeSet<_> = checker.discoveries().into_keys().collect();
    println!(
        "{label}: {} unique states in {:.2?}; discoveries: {found:?}",
        checker.unique_state_count(),
        start.elapsed()
    );
    found
}
