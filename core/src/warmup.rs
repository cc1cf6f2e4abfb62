//! Herd mitigation for start-up and warm-up work.
//!
//! When a rolling deploy starts P processes that each want to warm a cache,
//! they must not all hit the backing store at once. Each process:
//!
//! 1. starts at `delay + uniform(0, jitter)` after boot ([`Warmup::start_at`]);
//! 2. works in batches of `batch_size`, pausing `batch_pause` *between*
//!    batches only (no pause before the first or after the last) — see
//!    [`Pacer`];
//! 3. around the whole warm-up, holds one slot of a cluster-wide N-slot
//!    semaphore, waiting on a miss (see [`crate::semaphore::Acquisition`]).
//!
//! With each warm-up taking `work`, the last of P processes finishes by
//! [`herd_bound`]: `delay + ceil(P/N) * work + retry_jitter` (where
//! `retry_jitter` bounds the start jitter plus the time lost between a slot
//! freeing and a waiter's next scan).

use serde::{Deserialize, Serialize};

use crate::time::{Millis, Timestamp};

/// Warm-up pacing for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Warmup {
    /// Fixed delay after boot.
    pub delay: Millis,
    /// Extra uniform random delay in `[0, jitter]`.
    pub jitter: Millis,
    /// Items per batch (at least 1).
    pub batch_size: u32,
    /// Pause between two batches.
    pub batch_pause: Millis,
}

impl Warmup {
    /// When to start, given boot time and a uniform draw.
    pub fn start_at(&self, booted_at: Timestamp, draw: u64) -> Timestamp {
        let jitter = if self.jitter.0 == u64::MAX {
            draw
        } else {
            draw % (self.jitter.0 + 1)
        };
        booted_at.plus(self.delay).plus(Millis(jitter))
    }

    /// A pacer over `items` items starting at `start`.
    pub fn pacer(&self, items: u64, start: Timestamp) -> Pacer {
        Pacer {
            batch_size: u64::from(self.batch_size.max(1)),
            batch_pause: self.batch_pause,
            items,
            done: 0,
            next_at: start,
            running: false,
        }
    }
}

/// What to do next in a paced warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaceStep {
    /// Nothing yet: poll again at this time.
    WaitUntil(Timestamp),
    /// Run items `[from, to)` and call [`Pacer::handle_batch_done`].
    Run {
        /// First item index.
        from: u64,
        /// One past the last item index.
        to: u64,
    },
    /// A batch is out; waiting for [`Pacer::handle_batch_done`].
    Busy,
    /// Every item is done.
    Done,
}

/// The sans-IO pacing loop for one warm-up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pacer {
    batch_size: u64,
    batch_pause: Millis,
    items: u64,
    done: u64,
    next_at: Timestamp,
    running: bool,
}

impl Pacer {
    /// The next step at `now`.
    pub fn poll(&mut self, now: Timestamp) -> PaceStep {
        if self.running {
            return PaceStep::Busy;
        }
        if self.done >= self.items {
            return PaceStep::Done;
        }
        if now < self.next_at {
            return PaceStep::WaitUntil(self.next_at);
        }
        self.running = true;
        PaceStep::Run {
            from: self.done,
            to: (self.done + self.batch_size).min(self.items),
        }
    }

    /// The batch handed out by the last [`PaceStep::Run`] finished at `now`.
    pub fn handle_batch_done(&mut self, now: Timestamp) {
        assert!(self.running, "handle_batch_done without a batch out");
        self.running = false;
        self.done = (self.done + self.batch_size).min(self.items);
        // Pause only between batches: none after the last.
        self.next_at = if self.done >= self.items {
            now
        } else {
            now.plus(self.batch_pause)
        };
    }
}

/// The documented bound on when the last of `processes` finishes a warm-up
/// of `work` each behind a `permits`-slot semaphore:
/// `delay + ceil(P/N) * work + retry_jitter`.
pub fn herd_bound(
    delay: Millis,
    processes: u32,
    permits: u16,
    work: Millis,
    retry_jitter: Millis,
) -> Millis {
    let permits = u64::from(permits.max(1));
    let rounds = u64::from(processes).div_ceil(permits);
    Millis(
        delay
            .0
            .saturating_add(rounds.saturating_mul(work.0))
            .saturating_add(retry_jitter.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_delay_plus_bounded_jitter() {
        let w = Warmup {
            delay: Millis(1000),
            jitter: Millis(500),
            batch_size: 10,
            batch_pause: Millis(50),
        };
        assert_eq!(w.start_at(Timestamp(0), 0), Timestamp(1000));
        assert_eq!(w.start_at(Timestamp(0), 500), Timestamp(1500));
        assert_eq!(w.start_at(Timestamp(0), 501), Timestamp(1000));
        for draw in [1, 99, 12345, u64::MAX] {
            let t = w.start_at(Timestamp(0), draw);
            assert!(t >= Timestamp(1000) && t <= Timestamp(1500));
        }
    }

    #[test]
    fn batches_pause_between_but_not_before_or_after() {
        let w = Warmup {
            delay: Millis(0),
            jitter: Millis(0),
            batch_size: 4,
            batch_pause: Millis(100),
        };
        let mut p = w.pacer(10, Timestamp(0));
        let mut now = Timestamp(0);
        let mut runs = Vec::new();
        loop {
            match p.poll(now) {
                PaceStep::Run { from, to } => {
                    runs.push((now.0, from, to));
                    now = now.plus(Millis(10));
                    p.handle_batch_done(now);
                }
                PaceStep::WaitUntil(t) => now = t,
                PaceStep::Done => break,
                PaceStep::Busy => unreachable!("handle_batch_done is called before polling again"),
            }
        }
        assert_eq!(runs, vec![(0, 0, 4), (110, 4, 8), (220, 8, 10)]);
        assert_eq!(now, Timestamp(230), "no pause after the last batch");
    }

    #[test]
    fn herd_bound_rounds_up_processes_per_permit() {
        assert_eq!(
            herd_bound(Millis(100), 8, 2, Millis(50), Millis(20)),
            Millis(100 + 4 * 50 + 20)
        );
        assert_eq!(
            herd_bound(Millis(0), 7, 2, Millis(10), Millis(0)),
            Millis(40)
        );
        assert_eq!(
            herd_bound(Millis(0), 0, 2, Millis(10), Millis(0)),
            Millis(0)
        );
    }
}
