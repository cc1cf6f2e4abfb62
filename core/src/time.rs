//! Time as plain numbers: the core never reads a clock.
//!
//! Every `now` the core sees is an argument. [`Timestamp`] is milliseconds
//! since the Unix epoch (what Postgres stores as a `bigint`), and [`Millis`]
//! is a span. Arithmetic saturates instead of wrapping, so an absurd delay
//! cannot turn a deadline into the past.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

/// A span of time in milliseconds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Timestamp {
    /// The Unix epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + span`, saturating at the largest representable time.
    pub fn plus(self, span: Millis) -> Timestamp {
        let span = i64::try_from(span.0).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(span))
    }

    /// `self - span`, saturating at the smallest representable time.
    pub fn minus(self, span: Millis) -> Timestamp {
        let span = i64::try_from(span.0).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(span))
    }

    /// How long after `earlier` this is; zero when `earlier` is not earlier.
    pub fn since(self, earlier: Timestamp) -> Millis {
        Millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl Millis {
    /// No time at all.
    pub const ZERO: Millis = Millis(0);

    /// A span of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Millis {
        Millis(secs.saturating_mul(1000))
    }

    /// The span in milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// A [`Duration`](std::time::Duration) in whole milliseconds
    /// (truncated; saturating at `u64::MAX`): the one conversion every
    /// crate uses at the boundary between configuration and the core.
    pub fn from_duration(d: std::time::Duration) -> Millis {
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The span as a [`Duration`](std::time::Duration).
    pub fn to_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Half the span, rounded down: the freshness margins are half a TTL.
    pub fn half(self) -> Millis {
        Millis(self.0 / 2)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}ms", self.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(
            Timestamp(i64::MAX - 1).plus(Millis(10)),
            Timestamp(i64::MAX)
        );
        assert_eq!(Timestamp(5).plus(Millis(u64::MAX)), Timestamp(i64::MAX));
        assert_eq!(
            Timestamp(i64::MIN + 1).minus(Millis(10)),
            Timestamp(i64::MIN)
        );
        assert_eq!(Timestamp(10).since(Timestamp(20)), Millis(0));
        assert_eq!(Timestamp(20).since(Timestamp(10)), Millis(10));
        assert_eq!(Millis(7).half(), Millis(3));
    }
}
