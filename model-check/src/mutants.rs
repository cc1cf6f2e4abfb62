//! Which model catches which deliberate bug, and by which property.
//!
//! Every [`Mutation`] of the core ([`Mutation::every`]) has one row here; the tests run the model
//! of each row over the mutated core and assert that the checker finds a
//! counterexample to the row's property (and `tests/mutants.rs` fails if a
//! mutation has no row).

use stateright::Model;
use weir_core::Mutation;

use crate::check::{STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::claimer::{self, ClaimerFreshness};
use crate::leader::{self, LeaderTerms};
use crate::lifecycle::{self, Lifecycle};
use crate::run::hunt;
use crate::semaphore::{self, SemaphoreHerd};
use crate::warmup::{self, WarmupHerd};

/// One of the five models (or a second shape of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// [`crate::lifecycle`], faults on.
    Lifecycle,
    /// [`crate::lifecycle`], one completion's answer lost and resent.
    LifecycleLostAnswer,
    /// [`crate::lifecycle`], the batches shape ([`Lifecycle::batches`]).
    LifecycleBatches,
    /// [`crate::claimer`].
    Claimer,
    /// [`crate::claimer`], the lapse shape ([`ClaimerFreshness::lapse`]).
    ClaimerLapse,
    /// [`crate::semaphore`].
    Semaphore,
    /// [`crate::leader`].
    Leader,
    /// [`crate::warmup`].
    Warmup,
}

/// A mutation, the model that must catch it, and the property that breaks.
#[derive(Clone, Copy, Debug)]
pub struct Caught {
    /// The deliberate bug.
    pub mutation: Mutation,
    /// The model run over the mutated core.
    pub model: Target,
    /// The property the checker must find a counterexample to.
    pub property: &'static str,
}

const fn row(mutation: Mutation, model: Target, property: &'static str) -> Caught {
    Caught {
        mutation,
        model,
        property,
    }
}

/// Every mutation and what catches it.
pub const CAUGHT: [Caught; 21] = [
    row(
        Mutation::ClaimWithoutEpochBump,
        Target::Lifecycle,
        lifecycle::OWN_EPOCH,
    ),
    row(
        Mutation::CompleteWithoutEpochCheck,
        Target::Lifecycle,
        STEP_INVARIANTS,
    ),
    row(
        Mutation::RescueWithoutEpochBump,
        Target::Lifecycle,
        lifecycle::TAKEN_IS_FENCED,
    ),
    row(
        Mutation::CancelWithoutEpochBump,
        Target::Lifecycle,
        lifecycle::TAKEN_IS_FENCED,
    ),
    row(
        Mutation::SnoozeConsumesAttempt,
        Target::Lifecycle,
        lifecycle::ATTEMPTS_BOUNDED,
    ),
    row(
        Mutation::RefreshPredicateTooLax,
        Target::Claimer,
        claimer::BUSY_KEEPS_SLOT,
    ),
    row(
        Mutation::ClaimerNeverRefreshes,
        Target::Claimer,
        claimer::BUSY_KEEPS_SLOT,
    ),
    row(
        Mutation::AcquireIgnoresHolder,
        Target::Semaphore,
        semaphore::ONE_HOLDER_PER_SLOT,
    ),
    row(
        Mutation::SlotReleaseIgnoresEpoch,
        Target::Semaphore,
        semaphore::HOLDS_IN_STORAGE,
    ),
    row(
        Mutation::ScanStopsAtError,
        Target::Semaphore,
        semaphore::SCAN_COMPLETE,
    ),
    row(
        Mutation::NoTermCheck,
        Target::Leader,
        leader::DEPOSED_REJECTED,
    ),
    row(
        Mutation::ElectWithoutTermBump,
        Target::Leader,
        leader::ONE_LEADER_PER_TERM,
    ),
    row(
        Mutation::RescueOfFreshJob,
        Target::Lifecycle,
        STEP_INVARIANTS,
    ),
    row(
        Mutation::ReceiptIgnoresState,
        Target::LifecycleLostAnswer,
        STEP_INVARIANTS,
    ),
    row(
        Mutation::RetryPastMaxAttempts,
        Target::Lifecycle,
        WORLD_INVARIANTS,
    ),
    row(
        Mutation::ClaimerOpensPastLimit,
        Target::Claimer,
        WORLD_INVARIANTS,
    ),
    row(
        Mutation::WarmupRenewsBetweenBatches,
        Target::Warmup,
        warmup::AT_MOST_N_WORKING,
    ),
    row(
        Mutation::WarmupProvesLeaseFromAnswer,
        Target::Warmup,
        warmup::AT_MOST_N_WORKING,
    ),
    row(
        Mutation::AcquireIgnoresOwnLease,
        Target::ClaimerLapse,
        claimer::REUSES_LIVE_LEASE,
    ),
    row(
        Mutation::AcquireSkipsOwnLapsedLease,
        Target::ClaimerLapse,
        claimer::LAPSED_CLAIMS_AGAIN,
    ),
    row(
        Mutation::BatchStopsAtFirstRefusal,
        Target::LifecycleBatches,
        lifecycle::BATCH_PER_ITEM,
    ),
];

/// The row of `mutation`, if it has one.
pub fn caught_by(mutation: Mutation) -> Option<Caught> {
    CAUGHT.into_iter().find(|row| row.mutation == mutation)
}

/// Runs the row's model over the mutated core until the row's property is
/// discovered; returns the discovered path's actions (`None`: not found).
pub fn hunt_mutant(mutation: Mutation) -> Option<Vec<String>> {
    let row = caught_by(mutation)?;
    let label = format!("{mutation:?} in {:?}", row.model);
    fn actions<M: Model>(path: stateright::Path<M::State, M::Action>) -> Vec<String>
    where
        M::Action: std::fmt::Debug,
    {
        path.into_actions()
            .iter()
            .map(|a| format!("{a:?}"))
            .collect()
    }
    match row.model {
        Target::Lifecycle => {
            let model = Lifecycle::new().with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<Lifecycle>)
        }
        Target::LifecycleLostAnswer => {
            let model = Lifecycle::with_lost_answer().with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<Lifecycle>)
        }
        Target::LifecycleBatches => {
            let model = Lifecycle::batches().with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<Lifecycle>)
        }
        Target::Claimer => {
            let model = ClaimerFreshness::with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<ClaimerFreshness>)
        }
        Target::ClaimerLapse => {
            let model = ClaimerFreshness::lapse().mutated(mutation);
            hunt(&label, model, row.property).map(actions::<ClaimerFreshness>)
        }
        Target::Semaphore => {
            let model = SemaphoreHerd::with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<SemaphoreHerd>)
        }
        Target::Leader => {
            let model = LeaderTerms::with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<LeaderTerms>)
        }
        Target::Warmup => {
            let model = WarmupHerd::with_mutation(mutation);
            hunt(&label, model, row.property).map(actions::<WarmupHerd>)
        }
    }
}
