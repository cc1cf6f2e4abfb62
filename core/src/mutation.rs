//! Deliberate bugs, for proving that the checkers can fail.
//!
//! Compiled only with the `mutants` feature. A world (or an acquisition)
//! built with `with_mutation` behaves exactly like the real code except at
//! one point, where it makes a realistic mistake. The model checker and the
//! simulator switch each mutation on in turn and must find a counterexample;
//! a checker that cannot fail proves nothing.

use serde::{Deserialize, Serialize};

/// One realistic bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Mutation {
    /// Claim hands out a receipt without bumping the epoch, so two attempts
    /// share one epoch and a late worker is not fenced.
    ClaimWithoutEpochBump,
    /// Complete ignores a stale epoch and completes anyway.
    CompleteWithoutEpochCheck,
    /// Rescue requeues without bumping the epoch.
    RescueWithoutEpochBump,
    /// Cancel of a running job without bumping the epoch.
    CancelWithoutEpochBump,
    /// The claimer refresh waits for a full idle threshold (and for the
    /// lease to lapse) instead of half of each, so a busy claimer's slot can
    /// be taken over.
    RefreshPredicateTooLax,
    /// The claimer lease is never refreshed after a claim.
    ClaimerNeverRefreshes,
    /// A slot try does not check for a live holder.
    AcquireIgnoresHolder,
    /// The semaphore scan gives up (and sleeps) at the first slot whose try
    /// errored instead of going on to the next slot.
    ScanStopsAtError,
    /// Maintenance writes are accepted without checking the leader term.
    NoTermCheck,
    /// A new leader is elected without bumping the term.
    ElectWithoutTermBump,
    /// Snooze forgets to refund the attempt.
    SnoozeConsumesAttempt,
}

impl Mutation {
    /// Every mutation, in a fixed order.
    pub const ALL: [Mutation; 11] = [
        Mutation::ClaimWithoutEpochBump,
        Mutation::CompleteWithoutEpochCheck,
        Mutation::RescueWithoutEpochBump,
        Mutation::CancelWithoutEpochBump,
        Mutation::RefreshPredicateTooLax,
        Mutation::ClaimerNeverRefreshes,
        Mutation::AcquireIgnoresHolder,
        Mutation::ScanStopsAtError,
        Mutation::NoTermCheck,
        Mutation::ElectWithoutTermBump,
        Mutation::SnoozeConsumesAttempt,
    ];
}
