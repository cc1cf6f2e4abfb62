//! Scenario tests of the reference world, each named after the behaviour it
//! pins down.

use std::collections::BTreeSet;

use weir_core::cmd;
use weir_core::*;
use weir_test_kit::{kind, queue};

const P1: ProcessId = ProcessId(1);
const P2: ProcessId = ProcessId(2);

fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(10_000),
            idle_threshold: Millis(4_000),
        },
        heartbeat_stale_after: Millis(1_000),
        backoff: Backoff::constant(Millis(500)),
        leader_ttl: Millis(5_000),
        limits: JobLimits::default(),
        batch_max: 100,
    }
}

/// A small harness that unwraps the outcomes these scenarios expect.
struct Harness {
    world: World,
    now: Timestamp,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            world: World::new(config()),
            now: Timestamp(1_000),
        }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        let before = self.world.clone();
        let outcome = self.world.apply(self.now, command.clone());
        World::check_step(&before, &command, &outcome, &self.world).expect("step invariants");
        self.world.check_invariants().expect("state invariants");
        outcome
    }

    /// [`Harness::apply`] of one request, answered with its own type.
    fn run<R: Request>(&mut self, request: R) -> R::Output {
        answer_of::<R>(self.apply(request.into()))
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus(Millis(ms));
    }

    fn enqueue(&mut self, jobs: Vec<NewJob>) -> Vec<Enqueued> {
        self.run(cmd::Enqueue { jobs }).expect("enqueue")
    }

    fn enqueue_one(&mut self) -> JobId {
        let job = NewJob::new(queue(), kind("noop"), Payload::default());
        self.enqueue(vec![job])[0].id
    }

    fn acquire(&mut self, process: ProcessId) -> ClaimerGrant {
        let (grant, _) = self
            .run(cmd::ClaimerAcquire {
                queue: queue(),
                process,
            })
            .expect("acquire");
        grant
    }

    fn claim(&mut self, process: ProcessId, max: u32) -> Vec<ClaimedJob> {
        let claimer = self.acquire(process);
        self.run(cmd::Claim {
            queue: queue(),
            claimer,
            max,
            kinds: None,
        })
        .expect("claim")
        .jobs
    }

    fn complete(&mut self, receipts: Vec<Receipt>) -> Vec<Result<(), Reject>> {
        self.run(cmd::Complete { receipts }).expect("complete")
    }

    fn lead(&mut self, process: ProcessId) -> LeaderGrant {
        self.run(cmd::LeaderElect { process }).expect("elect")
    }

    fn rescue(&mut self, leader: LeaderGrant) -> Vec<(JobId, FailOutcome)> {
        self.run(cmd::Rescue {
            leader,
            draw: 0,
            max: 100,
        })
        .expect("rescue")
    }

    fn promote(&mut self, leader: LeaderGrant) -> Vec<JobId> {
        self.run(cmd::Promote { leader, max: 100 })
            .expect("promote")
    }

    fn state(&self, id: JobId) -> StateName {
        self.world.job(id).unwrap().state_name()
    }
}

#[test]
fn late_worker_is_fenced_after_rescue() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let late = h.claim(P1, 1)[0].receipt;
    // P1 pauses past the staleness limit; the leader rescues the job.
    h.advance(1_000);
    let leader = h.lead(P2);
    let rescued = h.rescue(leader);
    assert_eq!(rescued.len(), 1);
    assert!(matches!(rescued[0].1, FailOutcome::Retrying { .. }));
    h.advance(500);
    assert_eq!(h.promote(leader), vec![id]);
    let fresh = h.claim(P2, 1)[0].receipt;
    assert!(fresh.epoch > late.epoch);
    // P1 wakes up and completes: refused, and the job does not move.
    let before = h.world.job(id).cloned();
    assert_eq!(
        h.complete(vec![late]),
        vec![Err(Reject::StaleEpoch {
            current: fresh.epoch,
            presented: late.epoch
        })]
    );
    assert_eq!(h.world.job(id).cloned(), before);
    assert_eq!(h.complete(vec![fresh]), vec![Ok(())]);
    assert_eq!(h.state(id), StateName::Completed);
}

#[test]
fn cancel_of_a_running_job_fences_its_holder() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let receipt = h.claim(P1, 1)[0].receipt;
    assert_eq!(
        h.apply(Command::Cancel(cmd::Cancel { job: id })),
        Outcome::Cancelled(Ok(StateName::Running))
    );
    let hb = h.apply(Command::Heartbeat(cmd::Heartbeat {
        receipts: vec![receipt],
    }));
    assert!(
        matches!(hb, Outcome::Heartbeats(Ok(ref r)) if matches!(r[0], Err(Reject::StaleEpoch { .. })))
    );
    assert!(matches!(
        h.complete(vec![receipt])[0],
        Err(Reject::StaleEpoch { .. })
    ));
    assert_eq!(h.state(id), StateName::Cancelled);
    assert_eq!(
        h.apply(Command::Cancel(cmd::Cancel { job: id })),
        Outcome::Cancelled(Err(Reject::AlreadyFinished {
            state: StateName::Cancelled
        }))
    );
}

#[test]
fn a_completion_delivered_twice_is_refused_the_second_time() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let receipt = h.claim(P1, 1)[0].receipt;
    assert_eq!(
        h.complete(vec![receipt, receipt]),
        vec![
            Ok(()),
            Err(Reject::NotRunning {
                state: StateName::Completed
            })
        ]
    );
    assert_eq!(h.state(id), StateName::Completed);
}

#[test]
fn claims_follow_priority_then_run_at_then_id() {
    let mut h = Harness::new();
    let job = |priority: i16, run_at: i64| NewJob {
        priority: Priority(priority),
        run_at: Some(Timestamp(run_at)),
        ..NewJob::new(queue(), kind("noop"), Payload::default())
    };
    let ids: Vec<JobId> = h
        .enqueue(vec![
            job(5, 0),
            job(1, 900),
            job(1, 100),
            job(1, 100),
            job(-3, 1_000),
        ])
        .iter()
        .map(|e| e.id)
        .collect();
    let claimed: Vec<JobId> = h.claim(P1, 10).iter().map(|c| c.receipt.job).collect();
    assert_eq!(claimed, vec![ids[4], ids[2], ids[3], ids[1], ids[0]]);
}

#[test]
fn paused_queues_are_skipped_and_resume_where_they_left_off() {
    let mut h = Harness::new();
    h.enqueue_one();
    assert_eq!(
        h.apply(Command::PauseQueue(cmd::PauseQueue { queue: queue() })),
        Outcome::QueuePauseChanged(true)
    );
    assert!(h.claim(P1, 10).is_empty());
    h.apply(Command::ResumeQueue(cmd::ResumeQueue { queue: queue() }));
    assert_eq!(h.claim(P1, 10).len(), 1);
}

#[test]
fn a_worker_claims_only_kinds_it_can_run() {
    let mut h = Harness::new();
    let a = NewJob::new(queue(), kind("a"), Payload::default());
    let b = NewJob::new(queue(), kind("b"), Payload::default());
    let ids = h.enqueue(vec![a, b]);
    let claimer = h.acquire(P1);
    let only_b = Some(BTreeSet::from([kind("b")]));
    let claimed = h
        .run(cmd::Claim {
            queue: queue(),
            claimer,
            max: 10,
            kinds: only_b,
        })
        .expect("claim failed");
    assert_eq!(claimed.jobs.len(), 1);
    assert_eq!(claimed.jobs[0].receipt.job, ids[1].id);
    assert_eq!(
        h.state(ids[0].id),
        StateName::Available,
        "unknown kinds stay visible"
    );
}

#[test]
fn a_duplicate_unique_key_returns_the_existing_job() {
    let mut h = Harness::new();
    let unique = |k: &str| NewJob {
        unique_key: Some(UniqueKey::new(k).unwrap()),
        ..NewJob::new(queue(), kind("report"), Payload::default())
    };
    let first = h.enqueue(vec![
        unique("2026-11-23"),
        unique("2026-11-23"),
        unique("other"),
    ]);
    assert!(!first[0].duplicate && first[1].duplicate && !first[2].duplicate);
    assert_eq!(first[0].id, first[1].id);
    let again = h.enqueue(vec![unique("2026-11-23")]);
    assert_eq!(
        again[0],
        Enqueued {
            id: first[0].id,
            duplicate: true
        }
    );
    assert_eq!(h.world.enqueued_total(), 2);
}

#[test]
fn an_invalid_job_rejects_the_whole_batch_and_writes_nothing() {
    let mut h = Harness::new();
    let good = NewJob::new(queue(), kind("noop"), Payload::default());
    let bad = NewJob {
        max_attempts: 0,
        ..good.clone()
    };
    let outcome = h.apply(Command::Enqueue(cmd::Enqueue {
        jobs: vec![good.clone(), bad],
    }));
    assert_eq!(
        outcome,
        Outcome::Enqueued(Err(Reject::InvalidJob {
            index: 1,
            error: InvalidJob::MaxAttemptsZero
        }))
    );
    assert_eq!(h.world.jobs().count(), 0);
    let too_many = vec![good; 101];
    assert_eq!(
        h.apply(Command::Enqueue(cmd::Enqueue { jobs: too_many })),
        Outcome::Enqueued(Err(Reject::BatchTooLarge { len: 101, max: 100 }))
    );
}

#[test]
fn absurd_job_options_are_typed_errors() {
    let now = Timestamp(0);
    let limits = JobLimits::default();
    let base = NewJob::new(queue(), kind("noop"), Payload::default());
    let cases = [
        (
            NewJob {
                max_attempts: 1_000_000,
                ..base.clone()
            },
            "MaxAttemptsTooLarge",
        ),
        (
            NewJob {
                timeout: Millis(0),
                ..base.clone()
            },
            "TimeoutZero",
        ),
        (
            NewJob {
                timeout: Millis(u64::MAX),
                ..base.clone()
            },
            "TimeoutTooLong",
        ),
        (
            NewJob {
                payload: Payload(vec![0; (1 << 20) + 1]),
                ..base.clone()
            },
            "PayloadTooLarge",
        ),
        (
            NewJob {
                run_at: Some(Timestamp(i64::MAX)),
                ..base.clone()
            },
            "RunAtTooFar",
        ),
        (
            NewJob {
                run_at: Some(Timestamp(-1)),
                ..base.clone()
            },
            "RunAtBeforeEpoch",
        ),
        (
            NewJob {
                run_at: Some(Timestamp(i64::MIN)),
                ..base.clone()
            },
            "RunAtBeforeEpoch",
        ),
    ];
    for (job, expected) in cases {
        let err = job.validate(now, &limits).unwrap_err();
        assert!(
            format!("{err:?}").starts_with(expected),
            "{err:?} vs {expected}"
        );
    }
    assert_eq!(base.validate(now, &limits), Ok(()));
    // The epoch itself, and any time in the past after it, is due at once.
    for run_at in [0, 1] {
        let past = NewJob {
            run_at: Some(Timestamp(run_at)),
            ..base.clone()
        };
        assert_eq!(past.validate(Timestamp(1_000), &limits), Ok(()));
    }
}

#[test]
fn a_run_at_before_the_epoch_is_refused_and_writes_nothing() {
    let mut h = Harness::new();
    let good = NewJob::new(queue(), kind("noop"), Payload::default());
    let early = NewJob {
        run_at: Some(Timestamp(-5)),
        ..good.clone()
    };
    assert_eq!(
        h.apply(Command::Enqueue(cmd::Enqueue {
            jobs: vec![good, early]
        })),
        Outcome::Enqueued(Err(Reject::InvalidJob {
            index: 1,
            error: InvalidJob::RunAtBeforeEpoch {
                run_at: Timestamp(-5)
            }
        }))
    );
    assert_eq!(h.world.jobs().count(), 0);
}

#[test]
fn snooze_refunds_the_attempt_and_schedules_the_job() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let receipt = h.claim(P1, 1)[0].receipt;
    assert_eq!(h.world.job(id).unwrap().attempt, Attempt(1));
    h.apply(Command::Snooze(cmd::Snooze {
        snoozes: vec![(receipt, Millis(300))],
    }));
    let job = h.world.job(id).unwrap();
    assert_eq!(job.attempt, Attempt(0));
    assert_eq!(
        job.state,
        JobState::Scheduled {
            run_at: h.now.plus(Millis(300))
        }
    );
}

#[test]
fn retryable_failures_back_off_until_attempts_are_exhausted() {
    let mut h = Harness::new();
    let id = h.enqueue(vec![NewJob {
        max_attempts: 2,
        ..NewJob::new(queue(), kind("flaky"), Payload::default())
    }])[0]
        .id;
    let leader = h.lead(P2);
    let fail = |receipt| {
        Command::Fail(cmd::Fail {
            failures: vec![Failure {
                receipt,
                error: FailError {
                    retry: Retry::Backoff,
                    message: "boom".into(),
                },
                draw: 0,
            }],
        })
    };
    let r1 = h.claim(P1, 1)[0].receipt;
    let run_at = h.now.plus(Millis(500));
    assert_eq!(
        h.apply(fail(r1)),
        Outcome::Failed(Ok(vec![Ok(FailOutcome::Retrying { run_at })]))
    );
    h.advance(499);
    assert!(h.promote(leader).is_empty());
    h.advance(1);
    assert_eq!(h.promote(leader), vec![id]);
    let r2 = h.claim(P1, 1)[0].receipt;
    assert_eq!(
        h.apply(fail(r2)),
        Outcome::Failed(Ok(vec![Ok(FailOutcome::Failed(
            FailReason::AttemptsExhausted
        ))]))
    );
    let job = h.world.job(id).unwrap();
    assert_eq!(job.attempt, Attempt(2));
    assert_eq!(job.last_error().unwrap().message, "boom");
}

#[test]
fn a_terminal_error_fails_at_once_and_admin_retry_reopens_it() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let receipt = h.claim(P1, 1)[0].receipt;
    h.apply(Command::Fail(cmd::Fail {
        failures: vec![Failure {
            receipt,
            error: FailError {
                retry: Retry::Never,
                message: "bad input".into(),
            },
            draw: 0,
        }],
    }));
    assert_eq!(h.state(id), StateName::Failed);
    assert_eq!(
        h.apply(Command::Retry(cmd::Retry { job: id })),
        Outcome::Retried(Ok(()))
    );
    let job = h.world.job(id).unwrap();
    assert_eq!(
        (job.state_name(), job.attempt),
        (StateName::Available, Attempt(0))
    );
    assert!(job.epoch > receipt.epoch);
    assert_eq!(
        h.apply(Command::Retry(cmd::Retry { job: id })),
        Outcome::Retried(Err(Reject::NotRetryable {
            state: StateName::Available
        }))
    );
}

#[test]
fn an_external_wait_resumes_or_times_out() {
    let mut h = Harness::new();
    let a = h.enqueue_one();
    let b = h.enqueue_one();
    let claimed = h.claim(P1, 2);
    let (ra, rb) = (claimed[0].receipt, claimed[1].receipt);
    h.apply(Command::WaitExternal(cmd::WaitExternal {
        waits: vec![(ra, Millis(2_000)), (rb, Millis(2_000))],
    }));
    assert_eq!(h.state(a), StateName::WaitingExternal);
    // A completion while waiting is refused: the job is not running.
    assert_eq!(
        h.complete(vec![ra]),
        vec![Err(Reject::NotRunning {
            state: StateName::WaitingExternal
        })]
    );
    assert_eq!(
        h.apply(Command::ResumeExternal(cmd::ResumeExternal { receipt: ra })),
        Outcome::Resumed(Ok(()))
    );
    assert_eq!(h.state(a), StateName::Available);
    assert_eq!(h.world.job(a).unwrap().attempt, Attempt(0));
    // b's callback never comes.
    h.advance(2_000);
    let leader = h.lead(P2);
    let rescued = h.rescue(leader);
    assert_eq!(rescued.iter().map(|r| r.0).collect::<Vec<_>>(), vec![b]);
    assert_eq!(h.state(b), StateName::Retryable);
    // The late callback is fenced.
    assert!(matches!(
        h.apply(Command::ResumeExternal(cmd::ResumeExternal { receipt: rb })),
        Outcome::Resumed(Err(Reject::StaleEpoch { .. }))
    ));
}

#[test]
fn maintenance_is_refused_to_a_deposed_leader() {
    let mut h = Harness::new();
    let old = h.lead(P1);
    h.advance(5_000);
    let new = h.lead(P2);
    assert!(new.term > old.term);
    assert_eq!(
        h.apply(Command::Promote(cmd::Promote {
            leader: old,
            max: 10
        })),
        Outcome::Promoted(Err(Reject::NotLeader {
            current: new.term,
            presented: old.term
        }))
    );
}

#[test]
fn prune_deletes_only_finished_jobs_past_retention() {
    let mut h = Harness::new();
    let done = h.enqueue_one();
    let waiting = h.enqueue_one();
    let r = h.claim(P1, 1)[0].receipt;
    h.complete(vec![r]);
    h.advance(10);
    let leader = h.lead(P1);
    // Finished 10 ms ago: older than 5 ms, so pruned.
    assert_eq!(
        h.apply(Command::Prune(cmd::Prune {
            leader,
            older_than: Millis(5),
            max: 10
        })),
        Outcome::Pruned(Ok(vec![done]))
    );
    assert!(h.world.job(done).is_none());
    assert_eq!(h.state(waiting), StateName::Available);
    assert_eq!(h.world.pruned_total(), 1);
}

#[test]
fn a_claim_under_a_lost_lease_is_refused() {
    let mut h = Harness::new();
    h.enqueue_one();
    let stale = h.acquire(P1);
    h.apply(Command::ClaimerRelease(cmd::ClaimerRelease {
        queue: queue(),
        claimer: stale,
    }));
    let outcome = h.apply(Command::Claim(cmd::Claim {
        queue: queue(),
        claimer: stale,
        max: 1,
        kinds: None,
    }));
    assert_eq!(
        outcome,
        Outcome::Claimed(Err(Reject::ClaimerLeaseLost {
            slot: stale.slot,
            presented: stale.lease_epoch
        }))
    );
}

#[test]
fn a_busy_claimer_refreshes_its_lease_only_when_half_stale() {
    let mut h = Harness::new();
    for _ in 0..100 {
        h.enqueue_one();
    }
    let claimer = h.acquire(P1);
    let mut refreshes = 0;
    // One claim every 100 ms for 10 s: idle/2 is 2 s, so about one refresh
    // every 2 s, never one per batch.
    for _ in 0..100 {
        h.advance(100);
        let c = h
            .run(cmd::Claim {
                queue: queue(),
                claimer,
                max: 1,
                kinds: None,
            })
            .expect("busy claimer lost its lease");
        refreshes += usize::from(c.lease_refreshed);
    }
    assert_eq!(refreshes, 5);
    // And nobody could take the slot over meanwhile.
    let lease = h
        .world
        .claimers(&queue())
        .unwrap()
        .lease(claimer.slot)
        .unwrap();
    assert_eq!(lease.owner, Some(P1));
    assert_eq!(lease.lease_epoch, claimer.lease_epoch);
}

#[test]
fn a_crashed_session_frees_its_semaphore_slots() {
    let mut h = Harness::new();
    let name = SemaphoreName::new("warm").unwrap();
    let try_slot = |holder, slot| {
        Command::SlotTry(cmd::SlotTry {
            semaphore: name.clone(),
            permits: 1,
            slot: SlotIndex(slot),
            holder,
            lease_ttl: None,
        })
    };
    assert!(matches!(
        h.apply(try_slot(P1, 0)),
        Outcome::SlotTried(Ok(_))
    ));
    assert!(matches!(
        h.apply(try_slot(P2, 0)),
        Outcome::SlotTried(Err(Reject::SlotBusy { .. }))
    ));
    assert_eq!(
        h.apply(Command::ProcessCrashed(cmd::ProcessCrashed { process: P1 })),
        Outcome::SessionEnded(vec![(name.clone(), SlotIndex(0))])
    );
    assert!(matches!(
        h.apply(try_slot(P2, 0)),
        Outcome::SlotTried(Ok(_))
    ));
    let wrong_size = Command::SlotTry(cmd::SlotTry {
        semaphore: name.clone(),
        permits: 3,
        slot: SlotIndex(0),
        holder: P1,
        lease_ttl: None,
    });
    assert!(matches!(
        h.apply(wrong_size),
        Outcome::SlotTried(Err(Reject::PermitsMismatch { .. }))
    ));
}

#[test]
fn time_never_goes_backwards() {
    let mut world = World::new(config());
    world.apply(
        Timestamp(100),
        Command::PauseQueue(cmd::PauseQueue { queue: queue() }),
    );
    world.apply(
        Timestamp(50),
        Command::ResumeQueue(cmd::ResumeQueue { queue: queue() }),
    );
    assert_eq!(world.now(), Timestamp(100));
}

#[test]
fn unknown_jobs_are_typed_rejections() {
    let mut h = Harness::new();
    let ghost = Receipt {
        job: JobId(99),
        epoch: Epoch(1),
    };
    assert_eq!(
        h.complete(vec![ghost]),
        vec![Err(Reject::UnknownJob { job: JobId(99) })]
    );
    assert_eq!(
        h.apply(Command::Cancel(cmd::Cancel { job: JobId(99) })),
        Outcome::Cancelled(Err(Reject::UnknownJob { job: JobId(99) }))
    );
}

#[test]
fn a_handler_cancels_its_own_job_but_a_late_worker_cannot() {
    let mut h = Harness::new();
    let id = h.enqueue_one();
    let receipt = h.claim(P1, 1)[0].receipt;
    let cancel = |receipt| cmd::CancelAttempts {
        receipts: vec![receipt],
    };
    assert_eq!(
        h.apply(cancel(receipt).into()),
        Outcome::AttemptsCancelled(Ok(vec![Ok(())]))
    );
    assert_eq!(h.state(id), StateName::Cancelled);
    // An operator retries it; the old holder's cancel is now stale.
    h.apply(Command::Retry(cmd::Retry { job: id }));
    let fresh = h.claim(P2, 1)[0].receipt;
    let results = h.run(cancel(receipt)).expect("batch refused");
    assert!(matches!(results[0], Err(Reject::StaleEpoch { .. })));
    assert_eq!(h.world.job(id).unwrap().receipt(), Some(fresh));
}

#[test]
fn an_enqueue_named_as_storage_named_it_takes_those_ids_and_no_taken_one() {
    let mut world = World::new(config());
    let job = || NewJob::new(queue(), kind("noop"), Payload::default());
    let ids = |outcome: Outcome| {
        let enqueued = answer_of::<cmd::Enqueue>(outcome).expect("not enqueued");
        enqueued.iter().map(|e| e.id.0).collect::<Vec<_>>()
    };
    // Storage's sequence gave 7 and 3 (another insert drew 4..=6 between
    // them); the job with no id named takes the next after the highest.
    let named = world.enqueue_as(
        Timestamp(0),
        vec![job(), job(), job()],
        &[Some(JobId(7)), Some(JobId(3)), None],
    );
    assert_eq!(ids(named), vec![7, 3, 8]);
    // An id a job holds already is not given twice.
    let taken = world.enqueue_as(Timestamp(0), vec![job()], &[Some(JobId(3))]);
    assert_eq!(ids(taken), vec![9]);
    assert_eq!(
        ids(world.apply(
            Timestamp(0),
            Command::Enqueue(cmd::Enqueue { jobs: vec![job()] })
        )),
        vec![10]
    );
}
