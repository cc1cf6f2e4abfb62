//! Where the backend's time comes from: the system clock, or a virtual clock
//! that moves only when its owner moves it.
//!
//! The core never reads a clock; a backend applies every command at its
//! [`Clock::now`]. With [`SystemClock`] that is wall-clock time, as Postgres's
//! `now()` would be. With [`VirtualClock`] time stands still until a test or
//! the simulator advances it — usually straight to the earliest pending
//! deadline ([`VirtualClock::advance_to_earliest`]) — so simulated minutes
//! take milliseconds and every run replays exactly.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use weir_core::{Millis, Timestamp};

use crate::sync::{Arc, AtomicI64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The time now. Callers must not assume it is monotonic: the world
    /// clamps a `now` older than the latest it has seen.
    fn now(&self) -> Timestamp;
}

/// Wall-clock time: milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // A system clock set before 1970 reads as the epoch itself; the
        // world's clamp keeps time from going backwards either way.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Time that moves only when told to, and only forwards. Clones share one
/// time, so a test can hold a handle while the backend owns another.
#[derive(Clone)]
pub struct VirtualClock {
    millis: Arc<AtomicI64>,
}

impl VirtualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> VirtualClock {
        VirtualClock {
            millis: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock to `to`, unless it is already later: time never goes
    /// backwards, even when two threads advance it at once. Returns the time
    /// after the call.
    pub fn advance_to(&self, to: Timestamp) -> Timestamp {
        let before = self.millis.fetch_max(to.0, Ordering::SeqCst);
        Timestamp(before.max(to.0))
    }

    /// Moves the clock forward by `by` (saturating). Returns the new time.
    pub fn advance(&self, by: Millis) -> Timestamp {
        let step = |now: i64| Some(Timestamp(now).plus(by).0);
        let before = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
            .expect("the update closure always returns Some");
        Timestamp(before).plus(by)
    }

    /// Jumps to the earliest of `deadlines` (the next moment anything can
    /// happen), never backwards. Returns the new time, or `None` when there
    /// is no deadline and so nothing to wait for.
    pub fn advance_to_earliest(
        &self,
        deadlines: impl IntoIterator<Item = Timestamp>,
    ) -> Option<Timestamp> {
        let earliest = deadlines.into_iter().min()?;
        Some(self.advance_to(earliest))
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VirtualClock").field(&self.now()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_moves_only_forwards_and_only_when_told() {
        let clock = VirtualClock::new(Timestamp(100));
        let handle = clock.clone();
        assert_eq!(clock.now(), Timestamp(100));
        assert_eq!(handle.advance(Millis(50)), Timestamp(150));
        assert_eq!(clock.now(), Timestamp(150), "clones share one time");
        assert_eq!(clock.advance_to(Timestamp(120)), Timestamp(150));
        assert_eq!(
            clock.advance_to_earliest([Timestamp(900), Timestamp(400)]),
            Some(Timestamp(400))
        );
        assert_eq!(clock.advance_to_earliest([]), None);
        assert_eq!(clock.now(), Timestamp(400));
    }

    #[test]
    fn the_system_clock_reads_milliseconds_since_the_epoch() {
        // 2020-09-13 in milliseconds: any machine running this is later.
        assert!(SystemClock.now() > Timestamp(1_600_000_000_000));
    }
}
