//! Time in the runtime: every decision runs on a monotonic clock.
//!
//! The core's state machines take time as an argument and require that it
//! never goes backwards. A wall clock can step (NTP, a VM resumed, an
//! operator's `date -s`), and two machines' wall clocks disagree, so the
//! runtime never feeds one to a decision: it feeds [`MonotonicClock::now`],
//! the milliseconds since the clock was made, which only grows. Time
//! budgets that storage sets (an attempt's deadline) arrive as durations
//! measured on storage's own clock and are run on this one; storage's
//! timestamps and this clock's are never compared.
//!
//! The clock is tokio's: under a paused test runtime
//! (`#[tokio::test(start_paused = true)]`) it moves only when the test
//! advances it, which is what lets a whole worker pool run on virtual time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use weir_core::Timestamp;

/// A monotonic clock in the core's milliseconds since its origin.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl MonotonicClock {
    /// A clock that reads 0 now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the origin.
    pub fn now(&self) -> Timestamp {
        Timestamp(i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// The instant this clock shows `at` (the origin for times before it).
    pub fn instant(&self, at: Timestamp) -> Instant {
        self.origin + Duration::from_millis(u64::try_from(at.0).unwrap_or(0))
    }

    /// Sleeps until the clock shows `at` (at once if it already has).
    pub async fn sleep_until(&self, at: Timestamp) {
        tokio::time::sleep_until(self.instant(at)).await;
    }
}

/// The wall clock, in the core's milliseconds. For labels and reports
/// only: no decision of Weir's reads it.
pub fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_with_tokio_time_only() {
        let clock = MonotonicClock::new();
        assert_eq!(clock.now(), Timestamp(0));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), Timestamp(1_500));
        clock.sleep_until(Timestamp(4_000)).await;
        assert_eq!(clock.now(), Timestamp(4_000));
        // A time already passed does not sleep.
        clock.sleep_until(Timestamp(10)).await;
        assert_eq!(clock.now(), Timestamp(4_000));
    }
}
