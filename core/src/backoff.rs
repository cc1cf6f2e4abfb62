//! Retry backoff: exponential, capped, and jittered by a draw passed in.
//!
//! The core owns no RNG. A caller that wants jitter passes a uniform `u64`
//! draw; the same draw always gives the same delay, so a simulation replays
//! and the Postgres backend can compute exactly what the reference world
//! computes.

use serde::{Deserialize, Serialize};

use crate::ids::Attempt;
use crate::time::Millis;

/// How long to wait before the next attempt after a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backoff {
    base: Millis,
    factor: u32,
    cap: Millis,
    jitter_permille: u16,
}

/// A backoff policy that makes no sense.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The growth factor must be at least 1 (1 is a constant delay).
    #[error("backoff factor must be at least 1")]
    FactorZero,
    /// The cap must not be below the base.
    #[error("backoff cap {cap} is below its base {base}")]
    CapBelowBase {
        /// The base delay.
        base: Millis,
        /// The cap.
        cap: Millis,
    },
    /// Jitter is a fraction of the delay, in thousandths: at most 1000.
    #[error("backoff jitter of {permille}‰ exceeds 1000‰")]
    JitterTooLarge {
        /// The jitter asked for.
        permille: u16,
    },
}

impl Backoff {
    /// `base * factor^(attempt-1)`, capped at `cap`, then reduced by up to
    /// `jitter_permille`/1000 of itself according to the draw.
    pub fn new(
        base: Millis,
        factor: u32,
        cap: Millis,
        jitter_permille: u16,
    ) -> Result<Backoff, InvalidBackoff> {
        if factor == 0 {
            return Err(InvalidBackoff::FactorZero);
        }
        if cap < base {
            return Err(InvalidBackoff::CapBelowBase { base, cap });
        }
        if jitter_permille > 1000 {
            return Err(InvalidBackoff::JitterTooLarge {
                permille: jitter_permille,
            });
        }
        Ok(Backoff {
            base,
            factor,
            cap,
            jitter_permille,
        })
    }

    /// The default: 1 s doubling to at most 1 h, with up to 20% jitter.
    pub fn standard() -> Backoff {
        Backoff {
            base: Millis::from_secs(1),
            factor: 2,
            cap: Millis::from_secs(3600),
            jitter_permille: 200,
        }
    }

    /// A fixed delay with no jitter: handy in tests and simulations.
    pub fn constant(delay: Millis) -> Backoff {
        Backoff {
            base: delay,
            factor: 1,
            cap: delay,
            jitter_permille: 0,
        }
    }

    /// The delay before the attempt after `attempt` (the one that just
    /// failed; attempt 1 gets `base`). Deterministic in `(attempt, draw)`.
    pub fn delay(&self, attempt: Attempt, draw: u64) -> Millis {
        let exponent = attempt.0.saturating_sub(1);
        let mut raw = u128::from(self.base.0);
        let cap = u128::from(self.cap.0);
        // Bounded loop: stops as soon as the cap is reached, so at most ~64 rounds.
        for _ in 0..exponent {
            if raw >= cap || self.factor == 1 {
                break;
            }
            raw = raw.saturating_mul(u128::from(self.factor));
        }
        let capped = raw.min(cap);
        let max_cut = capped * u128::from(self.jitter_permille) / 1000;
        let cut = if max_cut == 0 {
            0
        } else {
            u128::from(draw) % (max_cut + 1)
        };
        // capped <= cap, which came from a u64.
        Millis(u64::try_from(capped - cut).expect("capped delay fits the cap's u64"))
    }

    /// The largest delay [`Backoff::delay`] can return.
    pub fn cap(&self) -> Millis {
        self.cap
    }

    /// The delay for the first attempt, before growth and jitter.
    pub fn base(&self) -> Millis {
        self.base
    }

    /// The growth factor per attempt.
    pub fn factor(&self) -> u32 {
        self.factor
    }

    /// The largest share of a delay that jitter removes, in thousandths.
    pub fn jitter_permille(&self) -> u16 {
        self.jitter_permille
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::standard()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff::new(Millis(100), 3, Millis(1000), 0).unwrap();
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(Attempt(a), 0).0).collect();
        assert_eq!(delays, [100, 300, 900, 1000, 1000, 1000]);
        assert_eq!(b.delay(Attempt(u32::MAX), 0), Millis(1000));
        assert_eq!(b.delay(Attempt(0), 0), Millis(100));
    }

    #[test]
    fn jitter_is_bounded_and_deterministic_in_the_draw() {
        let b = Backoff::new(Millis(1000), 2, Millis(60_000), 250).unwrap();
        for draw in [0, 1, 7, 249, 250, 251, u64::MAX] {
            let d = b.delay(Attempt(1), draw);
            assert!(d >= Millis(750) && d <= Millis(1000), "{d:?}");
            assert_eq!(d, b.delay(Attempt(1), draw));
        }
        assert_eq!(b.delay(Attempt(1), 0), Millis(1000));
        assert_eq!(b.delay(Attempt(1), 250), Millis(750));
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert_eq!(
            Backoff::new(Millis(1), 0, Millis(2), 0),
            Err(InvalidBackoff::FactorZero)
        );
        assert!(matches!(
            Backoff::new(Millis(5), 2, Millis(2), 0),
            Err(InvalidBackoff::CapBelowBase { .. })
        ));
        assert!(matches!(
            Backoff::new(Millis(1), 2, Millis(2), 1001),
            Err(InvalidBackoff::JitterTooLarge { permille: 1001 })
        ));
    }
}
