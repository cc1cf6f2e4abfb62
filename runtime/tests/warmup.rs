//! `weir::warmup` end to end over the memory backend.
//!
//! Most tests run on tokio's paused clock, with the backend reading the
//! same clock, so a lease lapses exactly when the virtual time says and a
//! second of work takes no real time. The regression test of issue 12 runs
//! on real time instead: the code before the fix measured its pauses on
//! the wall clock, which a paused runtime does not move, so only real time
//! shows that code failing the way it failed in production.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::core::{Millis, ProcessId, SemaphoreName, Timestamp, WaitConfig, Warmup, WorldConfig};
use weir::{warmup, MonotonicClock, WarmupConfig, WarmupReport};
use weir_memory::{Clock, MemoryBackend};

/// The memory backend's clock, read from tokio's (paused) time.
struct TokioClock(MonotonicClock);

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        // Far from 0, as a real clock is: nothing may read 0 as "unset".
        Timestamp(1_000_000).plus(Millis(self.0.now().0 as u64))
    }
}

fn backend() -> Arc<MemoryBackend<TokioClock>> {
    let clock = TokioClock(MonotonicClock::new());
    Arc::new(MemoryBackend::with_clock(WorldConfig::default(), clock))
}

/// One slot, a lease of 300 ms, and a start delay of `delay_ms`.
fn config(process: u64, delay_ms: u64) -> WarmupConfig {
    WarmupConfig {
        process: ProcessId(process),
        pacing: Warmup {
            delay: Millis(delay_ms),
            jitter: Millis(0),
            batch_size: 1,
            batch_pause: Millis(10),
        },
        semaphore: Some((SemaphoreName::new("warm:cache").unwrap(), 1)),
        wait: WaitConfig {
            retry_min: Millis(10),
            retry_max: Millis(20),
            wait_max: Millis(60_000),
        },
        lease_ttl: Some(Millis(300)),
    }
}

/// Counts the warmers working at once, and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    most: AtomicU32,
}

impl Gauge {
    /// A batch that works for `ms` while counted.
    fn batch(self: &Arc<Self>, ms: u64) -> impl Future<Output = ()> + Send + 'static {
        let gauge = Arc::clone(self);
        async move {
            let working = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.most.fetch_max(working, Ordering::SeqCst);
            // Dropped mid-sleep when the slot is lost: count it out then too.
            let _out = Leave(&gauge.now);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn most(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }
}

struct Leave<'a>(&'a AtomicU32);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Issue 12: batches of 500 ms under a 300 ms lease. The first warmer's lease
/// must be renewed while its batch runs; before the fix it was renewed
/// only between batches, so it lapsed at 300 ms, the second warmer (which
/// was waiting for the slot) took it, and two warmed at once with N = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_outlasts_the_lease_keeps_its_slot() {
    let backend = Arc::new(MemoryBackend::new(WorldConfig::default()));
    let gauge = Arc::new(Gauge::default());
    let (one, two) = (config(1, 0), config(2, 50));
    let first = warmup(&*backend, &one, 2, |_| gauge.batch(500));
    let second = warmup(&*backend, &two, 2, |_| gauge.batch(500));
    let (first, second) = tokio::join!(first, second);
    let (first, second): (WarmupReport, WarmupReport) = (first.unwrap(), second.unwrap());
    assert_eq!(
        gauge.most(),
        1,
        "two warmers worked at once behind a 1-slot semaphore"
    );
    assert_eq!((first.batches, second.batches), (2, 2));
    // The second waited for the whole of the first warm-up.
    assert!(second.acquired_at >= first.finished_at, "{first:?} {second:?}");
}
