//! The conformance suite: each scenario drives one backend through
//! [`Backend::execute`] only and checks the outcomes the core defines.
//! Every backend must pass every scenario unchanged.

use std::time::Duration;

use weir::Backend;
use weir_core::{
    Acquired, Claimed, ClaimerGrant, Command, Enqueued, Epoch, FailError, FailOutcome, FailReason,
    Failure, JobId, Kind, LeaderGrant, Millis, NewJob, Outcome, Payload, Priority, ProcessId,
    QueueName, Receipt, Reject, Retry, SemaphoreName, SlotIndex, StateName, UniqueKey,
};

/// Every scenario, by name, for the instantiating macro.
pub const ALL: &[&str] = &[
    "claims_follow_priority_then_run_at_then_id",
    "a_completion_is_accepted_once",
    "late_worker_is_fenced_after_rescue",
    "duplicate_unique_key_returns_the_existing_job",
    "paused_queue_claims_nothing_until_resumed",
    "idle_claimer_slot_is_taken_over",
    "failure_retries_after_backoff_then_exhausts",
    "snooze_does_not_use_an_attempt",
    "cancel_fences_a_running_holder",
    "external_wait_resumes_with_the_same_receipt",
    "semaphore_slots_are_exclusive_and_a_crashed_session_frees_them",
    "a_deposed_leaders_writes_are_refused",
    "oversized_batches_are_refused",
    "unknown_jobs_are_rejected_per_item",
];

async fn exec(b: &dyn Backend, command: Command) -> Outcome {
    b.execute(command).await.expect("the backend is available")
}

fn queue() -> QueueName {
    QueueName::new("default").expect("valid")
}

fn job(kind: &str) -> NewJob {
    NewJob::new(
        queue(),
        Kind::new(kind).expect("valid"),
        Payload(b"{}".to_vec()),
    )
}

async fn enqueue(b: &dyn Backend, jobs: Vec<NewJob>) -> Vec<Enqueued> {
    match exec(b, Command::Enqueue { jobs }).await {
        Outcome::Enqueued(Ok(done)) => done,
        other => panic!("enqueue: {other:?}"),
    }
}

async fn acquire(b: &dyn Backend, process: u64) -> Result<(ClaimerGrant, Acquired), Reject> {
    match exec(
        b,
        Command::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        },
    )
    .await
    {
        Outcome::ClaimerAcquired(result) => result,
        other => panic!("acquire: {other:?}"),
    }
}

async fn claim_with(b: &dyn Backend, claimer: ClaimerGrant, max: u32) -> Result<Claimed, Reject> {
    match exec(
        b,
        Command::Claim {
            queue: queue(),
            claimer,
            max,
            kinds: None,
        },
    )
    .await
    {
        Outcome::Claimed(result) => result,
        other => panic!("claim: {other:?}"),
    }
}

/// Acquires a lease for `process` and claims up to `max` jobs.
async fn claim(b: &dyn Backend, process: u64, max: u32) -> Claimed {
    let (grant, _) = acquire(b, process).await.expect("a claimer slot");
    claim_with(b, grant, max).await.expect("the lease is live")
}

async fn complete(b: &dyn Backend, receipts: Vec<Receipt>) -> Vec<Result<(), Reject>> {
    match exec(b, Command::Complete { receipts }).await {
        Outcome::Completed(Ok(items)) => items,
        other => panic!("complete: {other:?}"),
    }
}

async fn elect(b: &dyn Backend, process: u64) -> Result<LeaderGrant, Reject> {
    match exec(
        b,
        Command::LeaderElect {
            process: ProcessId(process),
        },
    )
    .await
    {
        Outcome::LeaderElected(result) => result,
        other => panic!("elect: {other:?}"),
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Lower priority first; equal priorities by `run_at`, then id.
pub async fn claims_follow_priority_then_run_at_then_id(b: &dyn Backend) {
    let mut jobs: Vec<NewJob> = (0..4).map(|_| job("k")).collect();
    for (job, priority) in jobs.iter_mut().zip([1, 0, 0, -1]) {
        job.priority = Priority(priority);
    }
    let ids: Vec<JobId> = enqueue(b, jobs).await.iter().map(|e| e.id).collect();
    let claimed = claim(b, 1, 10).await;
    let order: Vec<JobId> = claimed.jobs.iter().map(|j| j.receipt.job).collect();
    assert_eq!(order, vec![ids[3], ids[1], ids[2], ids[0]]);
    for j in &claimed.jobs {
        assert_eq!(j.receipt.epoch, Epoch(1));
        assert_eq!(j.attempt.0, 1);
    }
}

/// A second completion of the same attempt is refused and changes nothing.
pub async fn a_completion_is_accepted_once(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    let receipt = claim(b, 1, 1).await.jobs[0].receipt;
    assert_eq!(complete(b, vec![receipt]).await, vec![Ok(())]);
    assert_eq!(
        complete(b, vec![receipt, receipt]).await,
        vec![
            Err(Reject::NotRunning {
                state: StateName::Completed
            });
            2
        ]
    );
}

/// A worker that stalls past the heartbeat staleness is rescued; its late
/// completion and heartbeat are refused with the newer epoch.
pub async fn late_worker_is_fenced_after_rescue(b: &dyn Backend) {
    let [e] = enqueue(b, vec![job("k")]).await[..] else {
        unreachable!()
    };
    let late = claim(b, 1, 1).await.jobs[0].receipt;
    sleep_ms(600).await;
    let leader = elect(b, 9).await.expect("no other leader");
    let rescued = exec(
        b,
        Command::Rescue {
            leader,
            draw: 0,
            max: 10,
        },
    )
    .await;
    assert!(
        matches!(&rescued, Outcome::Rescued(Ok(r)) if r.len() == 1 && r[0].0 == e.id
            && matches!(r[0].1, FailOutcome::Retrying { .. })),
        "{rescued:?}"
    );
    let stale = Err(Reject::StaleEpoch {
        current: Epoch(2),
        presented: Epoch(1),
    });
    assert_eq!(complete(b, vec![late]).await, vec![stale.clone()]);
    assert_eq!(
        exec(
            b,
            Command::Heartbeat {
                receipts: vec![late]
            }
        )
        .await,
        Outcome::Heartbeats(Ok(vec![stale]))
    );
}

/// The same kind and unique key twice: one job, the second answer a
/// duplicate of it; another kind with the same key is a new job.
pub async fn duplicate_unique_key_returns_the_existing_job(b: &dyn Backend) {
    let keyed = |kind: &str| {
        let mut j = job(kind);
        j.unique_key = Some(UniqueKey::new("order-7").expect("valid"));
        j
    };
    let first = enqueue(b, vec![keyed("a")]).await[0];
    assert!(!first.duplicate);
    let again = enqueue(b, vec![keyed("a"), keyed("b"), keyed("b")]).await;
    assert_eq!(again[0].id, first.id);
    assert!(again[0].duplicate);
    assert_ne!(again[1].id, first.id);
    assert!(!again[1].duplicate);
    assert_eq!((again[2].id, again[2].duplicate), (again[1].id, true));
}

/// Pausing stops claims (without losing the lease); resuming restarts them.
pub async fn paused_queue_claims_nothing_until_resumed(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    assert_eq!(
        exec(b, Command::PauseQueue { queue: queue() }).await,
        Outcome::QueuePauseChanged(true)
    );
    assert_eq!(
        exec(b, Command::PauseQueue { queue: queue() }).await,
        Outcome::QueuePauseChanged(false)
    );
    let (grant, _) = acquire(b, 1).await.expect("a slot");
    assert!(claim_with(b, grant, 5).await.expect("live").jobs.is_empty());
    assert_eq!(
        exec(b, Command::ResumeQueue { queue: queue() }).await,
        Outcome::QueuePauseChanged(true)
    );
    assert_eq!(claim_with(b, grant, 5).await.expect("live").jobs.len(), 1);
}

/// K claimers at most; a slot whose owner stopped claiming is taken over
/// with a lease-epoch bump, and the old owner's claims are refused.
pub async fn idle_claimer_slot_is_taken_over(b: &dyn Backend) {
    let (g1, how1) = acquire(b, 1).await.expect("slot 1");
    let (_, how2) = acquire(b, 2).await.expect("slot 2");
    assert_eq!((how1, how2), (Acquired::Opened, Acquired::Opened));
    assert_eq!(acquire(b, 3).await, Err(Reject::NoClaimerSlot { slots: 2 }));
    assert_eq!(acquire(b, 1).await, Ok((g1, Acquired::Reused)));
    sleep_ms(1_700).await;
    let (g3, how3) = acquire(b, 3).await.expect("an idle slot");
    assert_eq!(how3, Acquired::TakenOver);
    assert_eq!(g3.slot, g1.slot);
    assert!(g3.lease_epoch > g1.lease_epoch);
    assert_eq!(
        claim_with(b, g1, 1).await,
        Err(Reject::ClaimerLeaseLost {
            slot: g1.slot,
            presented: g1.lease_epoch
        })
    );
}

/// A retryable failure waits its backoff, is promoted, runs again, and
/// fails for good when its attempts run out; an admin retry revives it.
pub async fn failure_retries_after_backoff_then_exhausts(b: &dyn Backend) {
    let mut j = job("k");
    j.max_attempts = 2;
    let id = enqueue(b, vec![j]).await[0].id;
    let fail = |receipt| Command::Fail {
        failures: vec![Failure {
            receipt,
            error: FailError {
                retry: Retry::Backoff,
                message: "nope".to_string(),
            },
            draw: 0,
        }],
    };
    let first = claim(b, 1, 1).await.jobs[0].receipt;
    let answer = exec(b, fail(first)).await;
    assert!(
        matches!(&answer, Outcome::Failed(Ok(r)) if matches!(r[0], Ok(FailOutcome::Retrying { .. }))),
        "{answer:?}"
    );
    let leader = elect(b, 9).await.expect("leader");
    assert_eq!(
        exec(b, Command::Promote { leader, max: 10 }).await,
        Outcome::Promoted(Ok(vec![])),
        "not due before its backoff"
    );
    sleep_ms(1_200).await;
    assert_eq!(
        exec(b, Command::Promote { leader, max: 10 }).await,
        Outcome::Promoted(Ok(vec![id]))
    );
    let second = claim(b, 1, 1).await.jobs[0].clone();
    assert_eq!((second.attempt.0, second.receipt.epoch), (2, Epoch(2)));
    assert_eq!(
        exec(b, fail(second.receipt)).await,
        Outcome::Failed(Ok(vec![Ok(FailOutcome::Failed(
            FailReason::AttemptsExhausted
        ))]))
    );
    assert_eq!(
        exec(b, Command::Retry { job: id }).await,
        Outcome::Retried(Ok(()))
    );
    let third = claim(b, 1, 1).await.jobs[0].clone();
    assert_eq!((third.attempt.0, third.receipt.epoch), (1, Epoch(4)));
}

/// Snoozing hands the attempt back: a one-attempt job runs again.
pub async fn snooze_does_not_use_an_attempt(b: &dyn Backend) {
    let mut j = job("k");
    j.max_attempts = 1;
    enqueue(b, vec![j]).await;
    let first = claim(b, 1, 1).await.jobs[0].receipt;
    assert_eq!(
        exec(
            b,
            Command::Snooze {
                snoozes: vec![(first, Millis(0))]
            }
        )
        .await,
        Outcome::Snoozed(Ok(vec![Ok(())]))
    );
    let again = claim(b, 1, 1).await.jobs[0].clone();
    assert_eq!((again.attempt.0, again.max_attempts.0), (1, 1));
    assert_eq!(again.receipt.epoch, Epoch(2));
}

/// Cancelling a running job bumps its epoch: the holder is fenced.
pub async fn cancel_fences_a_running_holder(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    let receipt = claim(b, 1, 1).await.jobs[0].receipt;
    assert_eq!(
        exec(b, Command::Cancel { job: receipt.job }).await,
        Outcome::Cancelled(Ok(StateName::Running))
    );
    assert_eq!(
        complete(b, vec![receipt]).await,
        vec![Err(Reject::StaleEpoch {
            current: Epoch(2),
            presented: Epoch(1)
        })]
    );
    assert_eq!(
        exec(b, Command::Cancel { job: receipt.job }).await,
        Outcome::Cancelled(Err(Reject::AlreadyFinished {
            state: StateName::Cancelled
        }))
    );
}

/// A parked job resumes with the receipt that parked it and runs again
/// without having used an attempt.
pub async fn external_wait_resumes_with_the_same_receipt(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    let receipt = claim(b, 1, 1).await.jobs[0].receipt;
    assert_eq!(
        exec(
            b,
            Command::WaitExternal {
                waits: vec![(receipt, Millis(60_000))]
            }
        )
        .await,
        Outcome::Waiting(Ok(vec![Ok(())]))
    );
    assert_eq!(
        complete(b, vec![receipt]).await,
        vec![Err(Reject::NotRunning {
            state: StateName::WaitingExternal
        })]
    );
    assert_eq!(
        exec(b, Command::ResumeExternal { receipt }).await,
        Outcome::Resumed(Ok(()))
    );
    assert_eq!(
        exec(b, Command::ResumeExternal { receipt }).await,
        Outcome::Resumed(Err(Reject::NotWaiting {
            state: StateName::Available
        }))
    );
    let again = claim(b, 1, 1).await.jobs[0].clone();
    assert_eq!((again.attempt.0, again.receipt.epoch), (1, Epoch(2)));
}

/// Slots are exclusive, the size is fixed by the first try, a crashed
/// session frees its slots, and a stale grant frees nothing.
pub async fn semaphore_slots_are_exclusive_and_a_crashed_session_frees_them(b: &dyn Backend) {
    let name = SemaphoreName::new("reports").expect("valid");
    let try_slot = |slot: u16, holder: u64, permits: u16, lease: Option<Millis>| Command::SlotTry {
        semaphore: name.clone(),
        permits,
        slot: SlotIndex(slot),
        holder: ProcessId(holder),
        lease_ttl: lease,
    };
    let Outcome::SlotTried(Ok(g1)) = exec(b, try_slot(0, 1, 2, None)).await else {
        panic!("slot 0 is free")
    };
    assert_eq!(
        exec(b, try_slot(0, 2, 2, None)).await,
        Outcome::SlotTried(Err(Reject::SlotBusy {
            slot: SlotIndex(0),
            holder: ProcessId(1)
        }))
    );
    assert!(matches!(
        exec(b, try_slot(1, 2, 2, Some(Millis(60_000)))).await,
        Outcome::SlotTried(Ok(_))
    ));
    assert_eq!(
        exec(b, try_slot(1, 3, 3, None)).await,
        Outcome::SlotTried(Err(Reject::PermitsMismatch {
            name: name.clone(),
            configured: 2,
            presented: 3
        }))
    );
    assert_eq!(
        exec(b, try_slot(2, 3, 2, None)).await,
        Outcome::SlotTried(Err(Reject::SlotOutOfRange {
            slot: SlotIndex(2),
            permits: 2
        }))
    );
    assert_eq!(
        exec(
            b,
            Command::ProcessCrashed {
                process: ProcessId(1)
            }
        )
        .await,
        Outcome::SessionEnded(vec![(name.clone(), SlotIndex(0))])
    );
    let Outcome::SlotTried(Ok(g3)) = exec(b, try_slot(0, 3, 2, None)).await else {
        panic!("the crashed holder's slot is free")
    };
    assert!(g3.epoch > g1.epoch);
    let stale = Command::SlotRelease {
        semaphore: name.clone(),
        grant: g1,
    };
    assert_eq!(exec(b, stale).await, Outcome::SlotReleased(false));
    let mine = Command::SlotRelease {
        semaphore: name,
        grant: g3,
    };
    assert_eq!(exec(b, mine.clone()).await, Outcome::SlotReleased(true));
    assert_eq!(exec(b, mine).await, Outcome::SlotReleased(false));
}

/// One leader per term; after a change of leader the old one's
/// maintenance writes are refused by term.
pub async fn a_deposed_leaders_writes_are_refused(b: &dyn Backend) {
    let g1 = elect(b, 1).await.expect("first leader");
    assert!(matches!(
        elect(b, 2).await,
        Err(Reject::LeaderHeld {
            holder: ProcessId(1),
            ..
        })
    ));
    assert_eq!(elect(b, 1).await, Ok(g1), "renewal keeps the term");
    assert_eq!(
        exec(b, Command::LeaderResign { leader: g1 }).await,
        Outcome::LeaderResigned(true)
    );
    let g2 = elect(b, 2).await.expect("second leader");
    assert!(g2.term > g1.term);
    assert_eq!(
        exec(
            b,
            Command::Promote {
                leader: g1,
                max: 10
            }
        )
        .await,
        Outcome::Promoted(Err(Reject::NotLeader {
            current: g2.term,
            presented: g1.term
        }))
    );
}

/// A batch above the limit is refused whole, and writes nothing.
pub async fn oversized_batches_are_refused(b: &dyn Backend) {
    let jobs: Vec<NewJob> = (0..17).map(|_| job("k")).collect();
    assert_eq!(
        exec(b, Command::Enqueue { jobs }).await,
        Outcome::Enqueued(Err(Reject::BatchTooLarge { len: 17, max: 16 }))
    );
    let (grant, _) = acquire(b, 1).await.expect("a slot");
    assert_eq!(
        claim_with(b, grant, 17).await,
        Err(Reject::BatchTooLarge { len: 17, max: 16 })
    );
    assert!(claim_with(b, grant, 16)
        .await
        .expect("live")
        .jobs
        .is_empty());
}

/// One bad receipt does not spoil its neighbours.
pub async fn unknown_jobs_are_rejected_per_item(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    let receipt = claim(b, 1, 1).await.jobs[0].receipt;
    let bogus = Receipt {
        job: JobId(424_242),
        epoch: Epoch(1),
    };
    assert_eq!(
        complete(b, vec![bogus, receipt]).await,
        vec![Err(Reject::UnknownJob { job: bogus.job }), Ok(())]
    );
}
