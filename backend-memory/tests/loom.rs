//! loom explores every interleaving of the backend's shared state: the lock
//! around the world, and the virtual clock's atomic.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p weir-memory --no-default-features --release --test loom
//! ```

#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::Arc;
use loom::thread;
use weir_core::cmd;
use weir_core::{
    answer_of, ClaimerConfig, ClaimerGrant, Command, Kind, NewJob, Outcome, Payload, ProcessId,
    QueueName, Receipt, Request, SemaphoreName, SlotGrant, SlotIndex, Timestamp, WorldConfig,
};
use weir_memory::{Clock, MemoryBackend, VirtualClock};

type Backend = Arc<MemoryBackend<VirtualClock>>;

fn queue() -> QueueName {
    QueueName::new("q").unwrap()
}

fn semaphore() -> SemaphoreName {
    SemaphoreName::new("s").unwrap()
}

fn backend(jobs: usize) -> Backend {
    let config = WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 3,
            ..ClaimerConfig::default()
        },
        ..WorldConfig::default()
    };
    let backend = MemoryBackend::with_clock(config, VirtualClock::new(Timestamp(1_000)));
    let job = NewJob::new(queue(), Kind::new("k").unwrap(), Payload::default());
    backend.apply(Command::Enqueue(cmd::Enqueue {
        jobs: vec![job; jobs],
    }));
    Arc::new(backend)
}

/// `backend.apply` of one request, answered with its own type.
fn run<R: Request>(backend: &Backend, request: R) -> R::Output {
    answer_of::<R>(backend.apply(request.into()))
}

fn acquire_claimer(backend: &Backend, process: u64) -> ClaimerGrant {
    let acquired = run(
        backend,
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        },
    );
    let (grant, _) = acquired.expect("three slots for three processes");
    grant
}

/// Claims at most one job and completes it; returns the receipt.
fn claim_and_complete(backend: &Backend, process: u64) -> Option<Receipt> {
    let claimer = acquire_claimer(backend, process);
    let claimed = run(
        backend,
        cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        },
    )
    .expect("a live claimer lease claims");
    let receipt = claimed.jobs.first()?.receipt;
    let done = backend.apply(Command::Complete(cmd::Complete {
        receipts: vec![receipt],
    }));
    assert_eq!(
        done,
        Outcome::Completed(Ok(vec![Ok(())])),
        "the only holder of a receipt completes its job"
    );
    Some(receipt)
}

#[test]
fn three_threads_claiming_and_completing_never_claim_a_job_twice() {
    loom::model(|| {
        let backend = backend(2);
        let workers: Vec<_> = (1..=3)
            .map(|process| {
                let backend = backend.clone();
                thread::spawn(move || claim_and_complete(&backend, process))
            })
            .collect();
        let receipts: Vec<Receipt> = workers
            .into_iter()
            .filter_map(|w| w.join().unwrap())
            .collect();
        let jobs: BTreeSet<_> = receipts.iter().map(|r| r.job).collect();
        assert_eq!(jobs.len(), receipts.len(), "no job was claimed twice");
        assert_eq!(receipts.len(), 2, "both jobs were claimed");
        backend.inspect(|w| {
            w.check_invariants().unwrap();
            assert!(w.jobs().all(|j| j.state_name().is_terminal()));
        });
    });
}

fn try_slot(backend: &Backend, process: u64, slot: u16) -> Option<SlotGrant> {
    let tried = run(
        backend,
        cmd::SlotTry {
            semaphore: semaphore(),
            permits: 2,
            slot: SlotIndex(slot),
            holder: ProcessId(process),
            lease_ttl: None,
        },
    );
    tried.ok()
}

fn holders(backend: &Backend) -> usize {
    backend.inspect(|w| w.semaphore(&semaphore()).map_or(0, |s| s.holders(w.now())))
}

#[test]
fn concurrent_acquire_and_release_never_exceed_n_holders() {
    loom::model(|| {
        let backend = backend(0);
        let users: Vec<_> = (1..=3)
            .map(|process| {
                let backend = backend.clone();
                thread::spawn(move || {
                    let grant = (0..2).find_map(|slot| try_slot(&backend, process, slot));
                    let Some(grant) = grant else { return false };
                    assert!(holders(&backend) <= 2, "at most N = 2 holders");
                    let release = Command::SlotRelease(cmd::SlotRelease {
                        semaphore: semaphore(),
                        grant,
                    });
                    assert_eq!(backend.apply(release), Outcome::SlotReleased(true));
                    true
                })
            })
            .collect();
        let acquired = users
            .into_iter()
            .filter_map(|u| u.join().unwrap().then_some(()))
            .count();
        assert!(acquired >= 2, "with two slots, at least two users got one");
        assert_eq!(holders(&backend), 0);
    });
}

#[test]
fn a_crash_release_racing_a_normal_release_frees_the_slot_exactly_once() {
    loom::model(|| {
        let backend = backend(0);
        let grant = try_slot(&backend, 1, 0).expect("an empty semaphore");
        let releaser = {
            let backend = backend.clone();
            thread::spawn(move || {
                let release = Command::SlotRelease(cmd::SlotRelease {
                    semaphore: semaphore(),
                    grant,
                });
                backend.apply(release) == Outcome::SlotReleased(true)
            })
        };
        let session_end = {
            let backend = backend.clone();
            thread::spawn(move || {
                let crashed = cmd::ProcessCrashed {
                    process: ProcessId(1),
                };
                run(&backend, crashed).len()
            })
        };
        let newcomer = {
            let backend = backend.clone();
            thread::spawn(move || try_slot(&backend, 2, 0))
        };
        let released = usize::from(releaser.join().unwrap());
        let freed = session_end.join().unwrap();
        let taken = newcomer.join().unwrap();
        assert_eq!(released + freed, 1, "freed exactly once");
        // Neither the stale release nor the session end touches the
        // newcomer's holding.
        assert_eq!(holders(&backend), usize::from(taken.is_some()));
    });
}

#[test]
fn the_virtual_clock_never_goes_backwards_under_concurrent_advances() {
    loom::model(|| {
        let clock = VirtualClock::new(Timestamp(0));
        let forward = {
            let clock = clock.clone();
            thread::spawn(move || clock.advance_to(Timestamp(10)))
        };
        let behind = {
            let clock = clock.clone();
            thread::spawn(move || clock.advance_to(Timestamp(7)))
        };
        let first = clock.now();
        let second = clock.now();
        assert!(first <= second, "a reader never sees time go back");
        assert!(forward.join().unwrap() == Timestamp(10));
        assert!(behind.join().unwrap() >= Timestamp(7));
        assert_eq!(clock.now(), Timestamp(10));
    });
}
