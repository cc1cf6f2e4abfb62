//! Maintenance leadership: one leader at a time, as a lease with a term.
//!
//! A new lease (no leader, or the old lease lapsed) starts a new term; the
//! holder renewing its unexpired lease keeps its term. Every maintenance write
//! carries the writer's term and is accepted only from the holder of the
//! current, unexpired term, so a deposed leader that wakes up late is refused.

use serde::{Deserialize, Serialize};

use crate::ids::{LeaderTerm, ProcessId};
use crate::reject::Reject;
use crate::time::{Millis, Timestamp};

/// The leader lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Leadership {
    /// The current term (0 before the first election).
    pub term: LeaderTerm,
    /// The leader, if any.
    pub holder: Option<ProcessId>,
    /// When its lease lapses unless renewed.
    pub expires_at: Timestamp,
}

/// What a leader presents with each maintenance write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaderGrant {
    /// The leader.
    pub process: ProcessId,
    /// Its term.
    pub term: LeaderTerm,
}

impl Leadership {
    /// The leader at `now`, if its lease is live.
    pub fn leader_at(&self, now: Timestamp) -> Option<LeaderGrant> {
        match self.holder {
            Some(process) if self.expires_at > now => Some(LeaderGrant {
                process,
                term: self.term,
            }),
            _ => None,
        }
    }

    /// Become (or stay) leader until `now + ttl`.
    pub fn elect(
        &mut self,
        process: ProcessId,
        now: Timestamp,
        ttl: Millis,
    ) -> Result<LeaderGrant, Reject> {
        match self.leader_at(now) {
            Some(current) if current.process != process => Err(Reject::LeaderHeld {
                holder: current.process,
                term: current.term,
                expires_at: self.expires_at,
            }),
            Some(current) => {
                self.expires_at = now.plus(ttl);
                Ok(current)
            }
            None => {
                self.term = self.term.next();
                self.holder = Some(process);
                self.expires_at = now.plus(ttl);
                Ok(LeaderGrant {
                    process,
                    term: self.term,
                })
            }
        }
    }

    /// Step down. Idempotent: returns whether this call ended the lease.
    pub fn resign(&mut self, grant: &LeaderGrant, now: Timestamp) -> bool {
        if self.holder == Some(grant.process) && self.term == grant.term {
            self.holder = None;
            self.expires_at = self.expires_at.min(now);
            return true;
        }
        false
    }

    /// Accepts a maintenance write only from the live leader of its term.
    pub fn check_term(&self, grant: &LeaderGrant, now: Timestamp) -> Result<(), Reject> {
        match self.leader_at(now) {
            Some(current) if current == *grant => Ok(()),
            _ => Err(Reject::NotLeader {
                current: self.term,
                presented: grant.term,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: ProcessId = ProcessId(1);
    const P2: ProcessId = ProcessId(2);

    #[test]
    fn one_leader_at_a_time_and_renewal_keeps_the_term() {
        let mut l = Leadership::default();
        let g1 = l.elect(P1, Timestamp(0), Millis(100)).unwrap();
        assert_eq!(g1.term, LeaderTerm(1));
        assert!(matches!(
            l.elect(P2, Timestamp(50), Millis(100)),
            Err(Reject::LeaderHeld { holder: P1, .. })
        ));
        assert_eq!(l.elect(P1, Timestamp(90), Millis(100)), Ok(g1));
        assert_eq!(l.expires_at, Timestamp(190));
    }

    #[test]
    fn a_deposed_leaders_write_is_rejected_by_term() {
        let mut l = Leadership::default();
        let g1 = l.elect(P1, Timestamp(0), Millis(100)).unwrap();
        assert_eq!(l.check_term(&g1, Timestamp(99)), Ok(()));
        // P1 pauses past its lease; P2 takes over.
        let g2 = l.elect(P2, Timestamp(100), Millis(100)).unwrap();
        assert_eq!(g2.term, LeaderTerm(2));
        assert_eq!(
            l.check_term(&g1, Timestamp(101)),
            Err(Reject::NotLeader {
                current: LeaderTerm(2),
                presented: LeaderTerm(1)
            })
        );
        // Even an expired lease of the current term writes nothing.
        assert!(l.check_term(&g2, Timestamp(200)).is_err());
    }

    #[test]
    fn resign_is_idempotent_and_lets_another_in() {
        let mut l = Leadership::default();
        let g1 = l.elect(P1, Timestamp(0), Millis(100)).unwrap();
        assert!(l.resign(&g1, Timestamp(10)));
        assert!(!l.resign(&g1, Timestamp(11)));
        assert_eq!(
            l.elect(P2, Timestamp(12), Millis(100)).unwrap().term,
            LeaderTerm(2)
        );
    }
}
