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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::core::cmd;
use weir::core::{
    Command, Enqueued, Job, JobId, Millis, NewJob, Outcome, ProcessId, Reject, SemaphoreName,
    SlotIndex, SlotLoss, Timestamp, WaitConfig, Warmup, WorldConfig,
};
use weir::{
    warmup, Backend, BackendError, JobFilter, MonotonicClock, Presence, QueueInfo, WarmupConfig,
    WarmupError, WarmupReport, WorkerInfo,
};
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
    assert!(
        second.acquired_at >= first.finished_at,
        "{first:?} {second:?}"
    );
}

/// The same as the regression test above, on virtual time, where the
/// timings are exact: the first warmer renews every 100 ms through both
/// batches, and the second gets the slot only when the first releases it.
#[tokio::test(start_paused = true)]
async fn on_virtual_time_the_second_warmer_gets_the_slot_at_the_release() {
    let backend = backend();
    let gauge = Arc::new(Gauge::default());
    let (one, two) = (config(1, 0), config(2, 50));
    let first = warmup(&*backend, &one, 2, |_| gauge.batch(1_000));
    let second = warmup(&*backend, &two, 2, |_| gauge.batch(1_000));
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(gauge.most(), 1);
    assert_eq!((first.batches, first.held), (2, Millis(2_010)));
    assert_eq!(first.renewals, 20, "every 100 ms of 2,010 ms");
    // The second scans every 10-20 ms from 50 ms: it gets the slot within
    // one pause of the release.
    assert!(
        second.waited >= Millis(1_960) && second.waited <= Millis(1_980),
        "{second:?}"
    );
    assert!(
        second.acquired_at >= first.finished_at,
        "{first:?} {second:?}"
    );
}

/// What [`Faulty`] does to renewals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenewFault {
    /// Every renewal is lost before it reaches storage.
    Lose,
    /// Every renewal is refused, as when the slot was given away.
    Refuse,
    /// Storage is misconfigured for renewals.
    Misconfigured,
}

/// The memory backend, except that renewals of `process` fail as told.
struct Faulty {
    inner: Arc<MemoryBackend<TokioClock>>,
    process: ProcessId,
    fault: RenewFault,
    /// When each renewal of `process` was sent.
    renewals: Mutex<Vec<Timestamp>>,
}

#[async_trait::async_trait]
impl Backend for Faulty {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        match &command {
            Command::SlotRenew(cmd::SlotRenew { grant, .. }) if grant.holder == self.process => {
                self.renewals.lock().unwrap().push(self.inner.clock().now());
                match self.fault {
                    RenewFault::Lose => Err(BackendError::Lost("connection reset".into())),
                    RenewFault::Refuse => Ok(Outcome::SlotRenewed(Err(Reject::SlotNotHeld {
                        slot: grant.slot,
                    }))),
                    RenewFault::Misconfigured => {
                        Err(BackendError::Misconfigured("no semaphore table".into()))
                    }
                }
            }
            _ => self.inner.execute(command).await,
        }
    }
    async fn now(&self) -> Result<Timestamp, BackendError> {
        self.inner.now().await
    }
    fn batch_max(&self) -> usize {
        self.inner.batch_max()
    }
    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        self.inner.enqueue_bulk(jobs).await
    }
    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        self.inner.job(id).await
    }
    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        self.inner.jobs(filter).await
    }
    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        self.inner.queues().await
    }
    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        self.inner.announce(presence, ttl).await
    }
    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.inner.retire(process).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        self.inner.workers().await
    }
}

fn faulty(fault: RenewFault) -> Faulty {
    Faulty {
        inner: backend(),
        process: ProcessId(1),
        fault,
        renewals: Mutex::new(Vec::new()),
    }
}

/// Every renewal of the first warmer is lost: it cannot prove its lease
/// past 300 ms, so it stops its batch there, before storage can give the
/// slot to the second warmer.
#[tokio::test(start_paused = true)]
async fn lost_renewals_stop_the_batch_before_the_lease_lapses() {
    let backend = faulty(RenewFault::Lose);
    let gauge = Arc::new(Gauge::default());
    let (one, mut two) = (config(1, 0), config(2, 50));
    // Scans at 50, 57, ..., 302: never at 300 itself, where the first
    // warmer's stop and the lapse in storage fall on the same instant and
    // the order of two timers would decide what the gauge sees.
    two.wait.retry_min = Millis(7);
    two.wait.retry_max = Millis(7);
    let clock = MonotonicClock::new();
    let first = async {
        let result = warmup(&backend, &one, 2, |_| gauge.batch(1_000)).await;
        (result, clock.now())
    };
    let second = warmup(&backend, &two, 2, |_| gauge.batch(1_000));
    let ((first, stopped_at), second) = tokio::join!(first, second);
    assert!(
        matches!(
            first,
            Err(WarmupError::SlotLost {
                cause: SlotLoss::Unproven,
                batches: 0,
                ..
            })
        ),
        "{first:?}"
    );
    assert_eq!(stopped_at, Timestamp(300), "stopped when the proof ran out");
    let sent = backend.renewals.lock().unwrap().clone();
    let sent: Vec<_> = sent.iter().map(|t| t.0 - 1_000_000).collect();
    assert_eq!(sent, vec![100, 200], "renewed twice before giving up");
    let second = second.unwrap();
    assert_eq!(gauge.most(), 1, "never two at once");
    assert_eq!(second.waited, Millis(252), "{second:?}");
}

/// A refused renewal stops the batch at once.
#[tokio::test(start_paused = true)]
async fn a_refused_renewal_stops_the_batch() {
    let backend = faulty(RenewFault::Refuse);
    let gauge = Arc::new(Gauge::default());
    let clock = MonotonicClock::new();
    let result = warmup(&backend, &config(1, 0), 2, |_| gauge.batch(1_000)).await;
    assert!(
        matches!(
            result,
            Err(WarmupError::SlotLost {
                cause: SlotLoss::Refused,
                batches: 0,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(clock.now(), Timestamp(100));
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0, "the batch was dropped");
    let m = result.unwrap_err().to_string();
    assert!(m.contains("lost semaphore slot 0"), "{m}");
}

/// Storage that turns out to be misconfigured mid-warm-up ends it with
/// the backend's own error.
#[tokio::test(start_paused = true)]
async fn a_misconfigured_backend_ends_the_warmup_with_its_error() {
    let backend = faulty(RenewFault::Misconfigured);
    let gauge = Arc::new(Gauge::default());
    let result = warmup(&backend, &config(1, 0), 2, |_| gauge.batch(1_000)).await;
    match result {
        Err(WarmupError::Backend(BackendError::Misconfigured(m))) => {
            assert_eq!(m, "no semaphore table")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
}

/// A slot the semaphore never had: the second warmer's try of slot 0 on a
/// 2-slot view of a 1-slot semaphore is refused, not retried.
#[tokio::test(start_paused = true)]
async fn a_semaphore_size_that_disagrees_is_refused() {
    let backend = backend();
    backend.apply(Command::SlotTry(cmd::SlotTry {
        semaphore: SemaphoreName::new("warm:cache").unwrap(),
        permits: 2,
        slot: SlotIndex(0),
        holder: ProcessId(9),
        lease_ttl: None,
    }));
    let result = warmup(&*backend, &config(1, 0), 1, |_| async {}).await;
    assert!(
        matches!(
            result,
            Err(WarmupError::Rejected(Reject::PermitsMismatch { .. }))
        ),
        "{result:?}"
    );
}

/// A warm-up future can be spawned onto a multi-threaded runtime.
#[test]
fn a_warmup_is_send() {
    fn send<T: Send>(_: &T) {}
    let backend = MemoryBackend::new(WorldConfig::default());
    let config = config(1, 0);
    let future = warmup(&backend, &config, 1, |_| async {});
    send(&future);
}
