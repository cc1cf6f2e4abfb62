//! Deliberate bugs, for proving that the checkers can fail.
//!
//! Compiled only with the `mutants` feature. A world (or an acquisition,
//! or a warm-up driver) built with `with_mutation` behaves exactly like the
//! real code except at one point, where it makes a realistic mistake. The
//! model checker and the simulator switch each mutation on in turn and must
//! find a counterexample; a checker that cannot fail proves nothing.
//!
//! [`Mutation::ALL`] lists the mutations of the world and of
//! [`crate::Acquisition`], the ones every world-level checker (the property
//! run, the simulator, the Postgres differential test) enumerates.
//! [`Mutation::DRIVERS`] lists those of a per-process driver, which only a
//! model that runs the driver can see; the model checker covers both.
//! [`Mutation::MODELS_ONLY`] lists world mutations only the model checker
//! is asked to find (see there why).
//!
//! **Where a mutation lives.** A mutation switches one guard off where the
//! guard is: in `World::apply`'s own code, or inside the shared
//! functions it calls (`Job`'s transitions, `ClaimerTable::acquire`,
//! `Semaphore::renew`, …), which the Postgres backend calls too. While a
//! mutated world applies a command, its mutation is *active* on that
//! thread, so a guard in `job.rs` asks `mutation::active(..)` without the
//! world passing a flag down. Without the `mutants` feature
//! `active` is a constant `false` and the guard compiles to the real code.

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
    /// A slot release checks the grant's holder but not its epoch
    /// (`Semaphore::release`, code both backends share), so a holder's
    /// grant from an earlier holding of the slot frees the slot it holds
    /// again now, while it still believes it holds it.
    SlotReleaseIgnoresEpoch,
    /// `Job::is_overdue` measures the heartbeat's age against the heartbeat
    /// interval (half the staleness threshold) instead of the threshold, so
    /// a rescue takes a job away from a holder whose heartbeat is fresh.
    /// Shared code: the Postgres backend's rescue calls it too.
    RescueOfFreshJob,
    /// `Job::check_receipt` checks the epoch but not the state: a worker's
    /// write with the current epoch is accepted while the job waits for its
    /// external callback, so a late heartbeat-and-complete of the handing
    /// off attempt finishes a job that waits for the callback.
    ReceiptIgnoresState,
    /// `Job::requeue_or_fail` retries while `attempt <= max_attempts`
    /// (`>` for `>=`): a job gets one attempt more than allowed.
    RetryPastMaxAttempts,
    /// `ClaimerTable::acquire` opens slots `0..=K` (an off-by-one), so a
    /// queue has K + 1 claimers at once.
    ClaimerOpensPastLimit,
    /// The warm-up driver renews its slot's lease only between batches,
    /// ignores the renewal's answer and never counts the lease out on its
    /// own clock (`weir::warmup` before issue 12): a batch that outlasts
    /// the lease keeps working after the slot went to another warmer.
    WarmupRenewsBetweenBatches,
    /// The warm-up driver counts its lease from when an answer arrived
    /// instead of when its command was sent: after a slow answer it
    /// believes in a lease that storage lets lapse sooner.
    WarmupProvesLeaseFromAnswer,
    /// A claimer acquisition never looks for the caller's own unexpired
    /// lease: a process that asks again (its claim loop restarting, say)
    /// takes a second slot instead of getting its lease back, and keeps
    /// the first one from everyone else until it lapses.
    AcquireIgnoresOwnLease,
    /// A claimer take-over passes over the caller's own rows (written as
    /// "owner is not me", as if the reuse step had handled them all): a
    /// process whose lease lapsed cannot take its own slot back, and with
    /// the other slots busy it never claims again.
    AcquireSkipsOwnLapsedLease,
    /// A receipt batch stops at its first refused item and answers every
    /// later item with the same refusal, unapplied (a loop that returns at
    /// the first error): a live receipt behind a stale one is neither
    /// completed nor told why.
    BatchStopsAtFirstRefusal,
}

impl Mutation {
    /// Every mutation of the world and of an acquisition, in a fixed order.
    pub const ALL: [Mutation; 16] = [
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
        Mutation::SlotReleaseIgnoresEpoch,
        Mutation::RescueOfFreshJob,
        Mutation::ReceiptIgnoresState,
        Mutation::RetryPastMaxAttempts,
        Mutation::ClaimerOpensPastLimit,
    ];

    /// Every mutation of a per-process driver (see the module docs).
    pub const DRIVERS: [Mutation; 2] = [
        Mutation::WarmupRenewsBetweenBatches,
        Mutation::WarmupProvesLeaseFromAnswer,
    ];

    /// Mutations of the world that only the model checker is asked to
    /// catch (added with the widened models of issue 14): one breaks a
    /// promise about what happens next (a claimer whose lease lapsed gets
    /// a slot again), which no check of a single history states; the
    /// others do harm (a process holding two slots, a batch answering an
    /// item it never applied) that no history check names. The property
    /// run, the simulator and the differential test do not enumerate them.
    pub const MODELS_ONLY: [Mutation; 3] = [
        Mutation::AcquireIgnoresOwnLease,
        Mutation::AcquireSkipsOwnLapsedLease,
        Mutation::BatchStopsAtFirstRefusal,
    ];

    /// Every mutation: [`Mutation::ALL`], [`Mutation::DRIVERS`], then
    /// [`Mutation::MODELS_ONLY`].
    pub fn every() -> impl Iterator<Item = Mutation> {
        Mutation::ALL
            .into_iter()
            .chain(Mutation::DRIVERS)
            .chain(Mutation::MODELS_ONLY)
    }
}

#[cfg(feature = "mutants")]
std::thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Whether the world applying a command on this thread makes the mistake
/// `m`; always false without the `mutants` feature.
#[inline]
pub(crate) fn active(m: Mutation) -> bool {
    #[cfg(feature = "mutants")]
    return ACTIVE.with(|a| a.get()) == Some(m);
    #[cfg(not(feature = "mutants"))]
    {
        let _ = m;
        false
    }
}

/// While it lives, [`active`] answers for `mutation`; dropped (also when
/// a guarded panic unwinds), it puts back what was active before.
#[cfg(feature = "mutants")]
#[must_use]
pub(crate) struct Scope {
    previous: Option<Mutation>,
}

/// Makes `mutation` the active one until the returned scope is dropped.
#[cfg(feature = "mutants")]
pub(crate) fn scope(mutation: Option<Mutation>) -> Scope {
    Scope {
        previous: ACTIVE.with(|a| a.replace(mutation)),
    }
}

#[cfg(feature = "mutants")]
impl Drop for Scope {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "mutants")]
    #[test]
    fn a_scope_is_active_only_while_it_lives_and_nests() {
        assert!(!active(Mutation::RescueOfFreshJob));
        {
            let _outer = scope(Some(Mutation::RescueOfFreshJob));
            assert!(active(Mutation::RescueOfFreshJob));
            {
                let _inner = scope(None);
                assert!(!active(Mutation::RescueOfFreshJob));
            }
            assert!(active(Mutation::RescueOfFreshJob));
        }
        assert!(!active(Mutation::RescueOfFreshJob));
        let unwound = std::panic::catch_unwind(|| {
            let _s = scope(Some(Mutation::RetryPastMaxAttempts));
            panic!("a guarded panic");
        });
        assert!(unwound.is_err());
        assert!(!active(Mutation::RetryPastMaxAttempts));
    }

    /// A new variant must be listed: this match stops compiling until it
    /// is, and the count below stops passing until it is in a list.
    #[test]
    fn every_variant_is_in_exactly_one_list() {
        let listed = |m: Mutation| match m {
            Mutation::ClaimWithoutEpochBump
            | Mutation::CompleteWithoutEpochCheck
            | Mutation::RescueWithoutEpochBump
            | Mutation::CancelWithoutEpochBump
            | Mutation::RefreshPredicateTooLax
            | Mutation::ClaimerNeverRefreshes
            | Mutation::AcquireIgnoresHolder
            | Mutation::ScanStopsAtError
            | Mutation::NoTermCheck
            | Mutation::ElectWithoutTermBump
            | Mutation::SnoozeConsumesAttempt
            | Mutation::SlotReleaseIgnoresEpoch
            | Mutation::RescueOfFreshJob
            | Mutation::ReceiptIgnoresState
            | Mutation::RetryPastMaxAttempts
            | Mutation::ClaimerOpensPastLimit => Mutation::ALL.contains(&m),
            Mutation::WarmupRenewsBetweenBatches | Mutation::WarmupProvesLeaseFromAnswer => {
                Mutation::DRIVERS.contains(&m)
            }
            Mutation::AcquireIgnoresOwnLease
            | Mutation::AcquireSkipsOwnLapsedLease
            | Mutation::BatchStopsAtFirstRefusal => Mutation::MODELS_ONLY.contains(&m),
        };
        assert!(Mutation::every().all(listed));
        let mut all: Vec<_> = Mutation::every().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 21);
    }
}
