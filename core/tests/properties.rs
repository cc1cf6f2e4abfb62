//! Property tests: random command sequences against the reference world,
//! with every invariant checked after every step, plus targeted properties.
//!
//! `PROPTEST_CASES` scales the run; by default the sequence test runs 1,024
//! sequences of up to 300 operations (about 140,000 applied commands).

mod common;

use proptest::prelude::*;
use weir_core::cmd;
use weir_core::*;

use common::{op, Coverage, Run};

/// Every invariant holds after every step of any command sequence, and the
/// targeted properties hold at every step they apply to. Runs 1,024 sequences
/// of up to 300 operations (override with `PROPTEST_CASES`), then asserts
/// that every interesting path was reached and prints the step count.
#[test]
fn random_command_sequences_keep_every_invariant() {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::Mutex;

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1024);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = Mutex::new(Coverage::default());
    let result = runner.run(&proptest::collection::vec(op(), 1..300), |ops| {
        let mut run = Run::new();
        for op in ops {
            run.step(op);
        }
        let mut total = total.lock().unwrap();
        total.steps += run.coverage.steps;
        for (k, v) in run.coverage.outcomes {
            *total.outcomes.entry(k).or_default() += v;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let total = total.into_inner().unwrap();
    println!("property steps: {} over {cases} sequences", total.steps);
    for (k, v) in &total.outcomes {
        println!("  {k:<40} {v}");
    }
    let must_reach = [
        "Completed:ok",
        "AttemptsCancelled:ok",
        "reject:StaleEpoch",
        "reject:NotRunning",
        "reject:NotWaiting",
        "Failed:retrying",
        "Failed:failed",
        "Snoozed:ok",
        "Waiting:ok",
        "Resumed:ok",
        "Rescued:some",
        "Promoted:some",
        "Pruned:some",
        "Claimed:refreshed",
        "Cancelled:running",
        "Retried:ok",
        "Enqueued:duplicate",
        "reject:NoClaimerSlot",
        "reject:ClaimerLeaseLost",
        "reject:NotLeader",
        "reject:LeaderHeld",
        "reject:SlotBusy",
        "reject:SlotOutOfRange",
        "reject:AlreadyFinished",
        "reject:NotRetryable",
        "reject:BatchTooLarge",
        "SessionEnded:ok",
    ];
    let missing: Vec<_> = must_reach
        .iter()
        .filter(|k| !total.outcomes.contains_key(**k))
        .collect();
    assert!(missing.is_empty(), "paths never reached: {missing:?}");
    if std::env::var("PROPTEST_CASES").is_err() {
        assert!(total.steps >= 100_000, "too few steps: {}", total.steps);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

    /// A stale receipt never changes a job, whatever the write.
    #[test]
    fn a_stale_receipt_never_changes_a_job(ops in proptest::collection::vec(op(), 1..120), which in 0..5u8) {
        let mut run = Run::new();
        for op in ops {
            run.step(op);
        }
        for job in run.world.jobs().cloned().collect::<Vec<_>>() {
            if job.epoch == Epoch(0) {
                continue;
            }
            let stale = Receipt { job: job.id, epoch: Epoch(job.epoch.0 - 1) };
            let error = FailError { retry: Retry::Backoff, message: "late".into() };
            let command = match which {
                0 => Command::Complete(cmd::Complete { receipts: vec![stale] }),
                1 => Command::Heartbeat(cmd::Heartbeat { receipts: vec![stale] }),
                2 => Command::Fail(cmd::Fail { failures: vec![Failure { receipt: stale, error, draw: 1 }] }),
                3 => Command::Snooze(cmd::Snooze { snoozes: vec![(stale, Millis(5))] }),
                _ => Command::ResumeExternal(cmd::ResumeExternal { receipt: stale }),
            };
            let mut probe = run.world.clone();
            probe.apply(run.now, command);
            prop_assert_eq!(probe.job(job.id), Some(&job));
        }
    }

    /// When `needs_refresh` is false, no other process can take the slot
    /// over before the owner's next refresh point.
    #[test]
    fn no_takeover_while_a_lease_needs_no_refresh(
        last in 0..10_000i64,
        ttl in 2..5_000u64,
        idle in 2..5_000u64,
        expires_after_last in 0..5_000u64,
        now_after_last in 0..10_000u64,
    ) {
        let lease = ClaimerLease {
            owner: Some(ProcessId(1)),
            lease_epoch: LeaseEpoch(1),
            last_claimed_at: Timestamp(last),
            expires_at: Timestamp(last).plus(Millis(expires_after_last)),
        };
        let now = Timestamp(last).plus(Millis(now_after_last));
        if !lease.needs_refresh(now, Millis(ttl), Millis(idle)) {
            prop_assert!(!lease.is_takeable(now, Millis(idle)));
            // Nor at any time up to the point where a refresh would be due.
            let mut t = now;
            while !lease.needs_refresh(t, Millis(ttl), Millis(idle)) {
                prop_assert!(!lease.is_takeable(t, Millis(idle)));
                t = t.plus(Millis(1 + ttl.min(idle) / 16));
            }
        }
    }

    /// A semaphore never has more than N holders, however acquisitions,
    /// errors, releases, crashes and lease expiries interleave.
    #[test]
    fn a_semaphore_never_exceeds_n_holders(
        permits in 1..4u16,
        script in proptest::collection::vec((0..5u64, 0..4u8, any::<u64>()), 1..200),
    ) {
        let mut sem = Semaphore::new(permits).unwrap();
        let wait = WaitConfig { retry_min: Millis(5), retry_max: Millis(15), wait_max: Millis(60) };
        let mut acquisitions: Vec<Option<Acquisition>> = vec![None; 5];
        let mut held: Vec<Option<SlotGrant>> = vec![None; 5];
        let mut now = Timestamp(0);
        for (p, action, draw) in script {
            let i = p as usize;
            let holder = ProcessId(p);
            match action {
                0 => {
                    if acquisitions[i].is_none() && held[i].is_none() {
                        acquisitions[i] = Some(Acquisition::new(Some(permits), now, wait));
                    }
                    if let Some(acq) = acquisitions[i].as_mut() {
                        match acq.poll(now, draw) {
                            AcquireStep::Try(slot) => {
                                let result = if draw % 5 == 0 {
                                    TryResult::Error
                                } else {
                                    let hold = if draw % 2 == 0 { Hold::Session } else { Hold::Lease { expires_at: now.plus(Millis(40)) } };
                                    match sem.try_slot(slot, holder, hold, now) {
                                        Ok(g) => TryResult::Acquired(g),
                                        Err(_) => TryResult::Busy,
                                    }
                                };
                                acq.handle_try(slot, result);
                            }
                            AcquireStep::Acquired(g) => {
                                held[i] = Some(g);
                                acquisitions[i] = None;
                            }
                            AcquireStep::TimedOut { .. } => acquisitions[i] = None,
                            AcquireStep::SleepUntil(until) => prop_assert!(until <= acq.deadline()),
                            AcquireStep::Disabled => prop_assert!(false, "semaphore is enabled"),
                        }
                    }
                }
                1 => {
                    if let Some(g) = held[i].take() {
                        sem.release(&g);
                        prop_assert!(!sem.release(&g), "release is idempotent");
                    }
                }
                2 => {
                    sem.release_holder(holder);
                    held[i] = None;
                    acquisitions[i] = None;
                }
                _ => now = now.plus(Millis(draw % 20)),
            }
            prop_assert!(sem.holders(now) <= usize::from(permits));
            let live: Vec<_> = sem.slots().filter_map(|(_, s)| s.holder_at(now)).collect();
            prop_assert_eq!(live.len(), sem.holders(now));
        }
    }
}
