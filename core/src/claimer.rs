//! Claimer leases: which processes may claim from a queue, and for how long.
//!
//! A queue has at most K claimer slots. A process claims only while it owns
//! an unexpired lease on one. The lease row records `last_claimed_at` and
//! `expires_at`, but a busy claimer does **not** rewrite it on every batch:
//! after a non-empty claim it refreshes only when the lease is no longer
//! safely fresh ([`ClaimerLease::needs_refresh`]). That bounds lease writes to
//! a few per second per claimer at any batch rate, and still guarantees that
//! a claimer which keeps claiming is never taken over:
//!
//! * takeover needs `last_claimed_at <= now - idle_threshold` or
//!   `expires_at <= now`;
//! * after every non-empty claim at `t` the row has
//!   `last_claimed_at > t - idle_threshold/2` and `expires_at > t + lease_ttl/2`;
//! * so a claimer that claims at least once every
//!   `min(idle_threshold, lease_ttl)/2` keeps its slot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ClaimerSlot, LeaseEpoch, ProcessId};
use crate::mutation::Mutation;
use crate::reject::Reject;
use crate::time::{Millis, Timestamp};

/// How claimer slots behave; one setting for every queue of a world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimerConfig {
    /// K: how many processes may claim from one queue at once.
    pub slots_per_queue: u16,
    /// How long a lease lasts without a refresh.
    pub lease_ttl: Millis,
    /// A slot whose owner has not claimed for this long may be taken over.
    pub idle_threshold: Millis,
}

impl Default for ClaimerConfig {
    fn default() -> ClaimerConfig {
        ClaimerConfig {
            slots_per_queue: 16,
            lease_ttl: Millis::from_secs(30),
            idle_threshold: Millis::from_secs(10),
        }
    }
}

/// A claimer configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidClaimerConfig {
    /// At least one process must be able to claim.
    #[error("a queue needs at least one claimer slot")]
    ZeroSlots,
    /// The freshness margins are halves; below 2 ms they vanish.
    #[error("lease_ttl and idle_threshold must be at least 2 ms")]
    TooShort,
}

impl ClaimerConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), InvalidClaimerConfig> {
        if self.slots_per_queue == 0 {
            return Err(InvalidClaimerConfig::ZeroSlots);
        }
        if self.lease_ttl < Millis(2) || self.idle_threshold < Millis(2) {
            return Err(InvalidClaimerConfig::TooShort);
        }
        Ok(())
    }
}

/// One claimer slot's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimerLease {
    /// Who owns it; `None` once released.
    pub owner: Option<ProcessId>,
    /// Bumped on every change of owner.
    pub lease_epoch: LeaseEpoch,
    /// The claim time recorded at the last refresh (not every claim).
    pub last_claimed_at: Timestamp,
    /// When the lease lapses unless refreshed.
    pub expires_at: Timestamp,
}

/// What a process presents to claim: its slot and the epoch it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClaimerGrant {
    /// The owner.
    pub process: ProcessId,
    /// The slot.
    pub slot: ClaimerSlot,
    /// The lease epoch at acquisition.
    pub lease_epoch: LeaseEpoch,
}

/// How an acquisition was satisfied (what it wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Acquired {
    /// The caller's own unexpired lease: nothing written.
    Reused,
    /// A released, expired or idle slot, taken over (epoch bumped).
    TakenOver,
    /// A slot opened because fewer than K existed.
    Opened,
}

impl ClaimerLease {
    /// True when the lease is no longer safely fresh: a refresh now keeps
    /// any other process from taking the slot before the owner's next
    /// refresh point.
    pub fn needs_refresh(&self, now: Timestamp, lease_ttl: Millis, idle_threshold: Millis) -> bool {
        self.last_claimed_at <= now.minus(idle_threshold.half())
            || self.expires_at <= now.plus(lease_ttl.half())
    }

    /// Whether another process may take this slot over at `now`.
    pub fn is_takeable(&self, now: Timestamp, idle_threshold: Millis) -> bool {
        self.owner.is_none()
            || self.expires_at <= now
            || self.last_claimed_at <= now.minus(idle_threshold)
    }

    /// Whether `process` owns the slot with an unexpired lease at `now`.
    pub fn is_held_by(&self, process: ProcessId, now: Timestamp) -> bool {
        self.owner == Some(process) && self.expires_at > now
    }
}

/// The claimer slots of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimerTable {
    slots: BTreeMap<ClaimerSlot, ClaimerLease>,
}

impl ClaimerTable {
    /// A table with these rows (a backend rebuilding the core's view from
    /// storage).
    pub fn from_slots(
        slots: impl IntoIterator<Item = (ClaimerSlot, ClaimerLease)>,
    ) -> ClaimerTable {
        ClaimerTable {
            slots: slots.into_iter().collect(),
        }
    }

    /// The slots, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = (ClaimerSlot, &ClaimerLease)> {
        self.slots.iter().map(|(slot, lease)| (*slot, lease))
    }

    /// One slot's row.
    pub fn lease(&self, slot: ClaimerSlot) -> Option<&ClaimerLease> {
        self.slots.get(&slot)
    }

    /// How many slots have an owner with an unexpired lease.
    pub fn active(&self, now: Timestamp) -> usize {
        self.slots
            .values()
            .filter(|lease| lease.owner.is_some() && lease.expires_at > now)
            .count()
    }

    /// Reuse my unexpired lease; else take over the first released, expired
    /// or idle slot (my own lapsed one included); else open a new slot while
    /// fewer than K exist.
    pub fn acquire(
        &mut self,
        process: ProcessId,
        now: Timestamp,
        config: &ClaimerConfig,
    ) -> Result<(ClaimerGrant, Acquired), Reject> {
        let reuse = !crate::mutation::active(Mutation::AcquireIgnoresOwnLease);
        let take_own_lapsed = !crate::mutation::active(Mutation::AcquireSkipsOwnLapsedLease);
        let mine = self
            .slots
            .iter()
            .filter(|_| reuse)
            .find(|(_, lease)| lease.is_held_by(process, now));
        if let Some((&slot, lease)) = mine {
            let grant = ClaimerGrant {
                process,
                slot,
                lease_epoch: lease.lease_epoch,
            };
            return Ok((grant, Acquired::Reused));
        }
        let fresh = |lease_epoch| ClaimerLease {
            owner: Some(process),
            lease_epoch,
            last_claimed_at: now,
            expires_at: now.plus(config.lease_ttl),
        };
        let takeable = self
            .slots
            .iter_mut()
            .filter(|(_, lease)| take_own_lapsed || lease.owner != Some(process))
            .find(|(_, lease)| lease.is_takeable(now, config.idle_threshold));
        if let Some((&slot, lease)) = takeable {
            *lease = fresh(lease.lease_epoch.next());
            let grant = ClaimerGrant {
                process,
                slot,
                lease_epoch: lease.lease_epoch,
            };
            return Ok((grant, Acquired::TakenOver));
        }
        let slots = if crate::mutation::active(Mutation::ClaimerOpensPastLimit) {
            config.slots_per_queue.saturating_add(1)
        } else {
            config.slots_per_queue
        };
        let open = (0..slots)
            .map(ClaimerSlot)
            .find(|slot| !self.slots.contains_key(slot));
        match open {
            Some(slot) => {
                let lease = fresh(LeaseEpoch(1));
                self.slots.insert(slot, lease);
                let grant = ClaimerGrant {
                    process,
                    slot,
                    lease_epoch: lease.lease_epoch,
                };
                Ok((grant, Acquired::Opened))
            }
            None => Err(Reject::NoClaimerSlot {
                slots: config.slots_per_queue,
            }),
        }
    }

    /// Checks that `grant` is still the unexpired lease of its slot.
    pub fn check(&self, grant: &ClaimerGrant, now: Timestamp) -> Result<&ClaimerLease, Reject> {
        match self.slots.get(&grant.slot) {
            Some(lease)
                if lease.lease_epoch == grant.lease_epoch
                    && lease.is_held_by(grant.process, now) =>
            {
                Ok(lease)
            }
            _ => Err(Reject::ClaimerLeaseLost {
                slot: grant.slot,
                presented: grant.lease_epoch,
            }),
        }
    }

    /// After a non-empty claim under a checked grant: refresh the row only
    /// when it needs it. Returns whether the row was written.
    pub fn refresh_after_claim(
        &mut self,
        grant: &ClaimerGrant,
        now: Timestamp,
        config: &ClaimerConfig,
    ) -> bool {
        self.refresh_if(grant, now, config, |lease| {
            lease.needs_refresh(now, config.lease_ttl, config.idle_threshold)
        })
    }

    pub(crate) fn refresh_if(
        &mut self,
        grant: &ClaimerGrant,
        now: Timestamp,
        config: &ClaimerConfig,
        needs_refresh: impl Fn(&ClaimerLease) -> bool,
    ) -> bool {
        let lease = self
            .slots
            .get_mut(&grant.slot)
            .expect("refresh follows a successful check of the same grant");
        if !needs_refresh(lease) {
            return false;
        }
        lease.last_claimed_at = now;
        lease.expires_at = now.plus(config.lease_ttl);
        true
    }

    /// Gives the slot up (on shutdown). Idempotent: releasing a lease that
    /// was lost or already released does nothing and returns false.
    pub fn release(&mut self, grant: &ClaimerGrant, now: Timestamp) -> bool {
        match self.slots.get_mut(&grant.slot) {
            Some(lease)
                if lease.lease_epoch == grant.lease_epoch && lease.owner == Some(grant.process) =>
            {
                lease.owner = None;
                lease.expires_at = lease.expires_at.min(now);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn slots_mut(&mut self) -> &mut BTreeMap<ClaimerSlot, ClaimerLease> {
        &mut self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClaimerConfig {
        ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(1000),
            idle_threshold: Millis(400),
        }
    }

    const P1: ProcessId = ProcessId(1);
    const P2: ProcessId = ProcessId(2);
    const P3: ProcessId = ProcessId(3);

    #[test]
    fn opens_up_to_k_slots_then_refuses() {
        let mut table = ClaimerTable::default();
        let c = config();
        let (g1, how1) = table.acquire(P1, Timestamp(0), &c).unwrap();
        let (g2, how2) = table.acquire(P2, Timestamp(0), &c).unwrap();
        assert_eq!((how1, how2), (Acquired::Opened, Acquired::Opened));
        assert_ne!(g1.slot, g2.slot);
        assert_eq!(
            table.acquire(P3, Timestamp(1), &c),
            Err(Reject::NoClaimerSlot { slots: 2 })
        );
        let (again, how) = table.acquire(P1, Timestamp(1), &c).unwrap();
        assert_eq!((again, how), (g1, Acquired::Reused));
    }

    #[test]
    fn idle_claimer_slot_is_taken_over_with_an_epoch_bump() {
        let mut table = ClaimerTable::default();
        let c = config();
        let (g1, _) = table.acquire(P1, Timestamp(0), &c).unwrap();
        table.acquire(P2, Timestamp(0), &c).unwrap();
        // P2 keeps claiming; P1 goes idle.
        let g2 = ClaimerGrant {
            process: P2,
            slot: ClaimerSlot(1),
            lease_epoch: LeaseEpoch(1),
        };
        assert!(table.refresh_after_claim(&g2, Timestamp(300), &c));
        assert_eq!(
            table.acquire(P3, Timestamp(399), &c),
            Err(Reject::NoClaimerSlot { slots: 2 })
        );
        let (g3, how) = table.acquire(P3, Timestamp(400), &c).unwrap();
        assert_eq!(how, Acquired::TakenOver);
        assert_eq!(g3.slot, g1.slot);
        assert_eq!(g3.lease_epoch, LeaseEpoch(2));
        assert!(matches!(
            table.check(&g1, Timestamp(401)),
            Err(Reject::ClaimerLeaseLost { .. })
        ));
    }

    #[test]
    fn fresh_lease_is_not_rewritten_and_half_stale_one_is() {
        let mut table = ClaimerTable::default();
        let c = config();
        let (g, _) = table.acquire(P1, Timestamp(0), &c).unwrap();
        assert!(!table.refresh_after_claim(&g, Timestamp(199), &c));
        assert!(table.refresh_after_claim(&g, Timestamp(200), &c));
        assert_eq!(table.lease(g.slot).unwrap().last_claimed_at, Timestamp(200));
        assert!(!table.refresh_after_claim(&g, Timestamp(201), &c));
    }

    #[test]
    fn release_is_idempotent_and_frees_the_slot() {
        let mut table = ClaimerTable::default();
        let c = ClaimerConfig {
            slots_per_queue: 1,
            ..config()
        };
        let (g, _) = table.acquire(P1, Timestamp(0), &c).unwrap();
        assert!(table.release(&g, Timestamp(5)));
        assert!(!table.release(&g, Timestamp(6)));
        let (g2, how) = table.acquire(P2, Timestamp(7), &c).unwrap();
        assert_eq!(how, Acquired::TakenOver);
        assert!(g2.lease_epoch > g.lease_epoch);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert_eq!(
            ClaimerConfig {
                slots_per_queue: 0,
                ..config()
            }
            .validate(),
            Err(InvalidClaimerConfig::ZeroSlots)
        );
        assert_eq!(
            ClaimerConfig {
                lease_ttl: Millis(1),
                ..config()
            }
            .validate(),
            Err(InvalidClaimerConfig::TooShort)
        );
        assert_eq!(config().validate(), Ok(()));
    }
}
