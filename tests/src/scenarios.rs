//! The conformance suite: each scenario drives one backend through the
//! [`Backend`] trait only — commands through [`Backend::execute`], and the
//! bulk path, the operator reads, presence and wake-ups — and checks the
//! answers the core (and `weir_core::reads`) define. Every backend must
//! pass every scenario unchanged.

use std::time::Duration;

use weir::{Backend, BackendExt, JobFilter, Presence, QueueInfo, Wakeup};
use weir_core::cmd;
use weir_core::{
    Acquired, Attempt, Backoff, Claimed, ClaimerGrant, Command, Enqueued, Epoch, ErrorRecord,
    FailError, FailOutcome, FailReason, Failure, InvalidJob, Job, JobId, JobLimits, JobState, Kind,
    LeaderGrant, Millis, NewJob, Outcome, Payload, Priority, ProcessId, QueueName, Receipt, Reject,
    Request, Retry, SemaphoreName, SlotGrant, SlotIndex, StateName, Timestamp, UniqueKey,
};
use weir_test_kit::{job, queue};

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
    "bulk_enqueue_returns_ids_in_input_order_beyond_batch_max",
    "bulk_enqueue_with_an_invalid_job_writes_nothing",
    "bulk_enqueue_with_unique_keys_gives_the_existing_job",
    "jobs_are_read_by_id_and_listed_by_every_filter",
    "job_listings_are_capped_at_limit_max",
    "queues_show_depths_paused_state_and_unfinished_kinds",
    "presence_is_announced_refreshed_retired_and_expires",
    "enqueue_and_cancel_wake_subscribers",
    "a_cancelled_attempt_is_fenced_and_final",
    "a_released_claimer_slot_is_taken_over_at_once",
    "a_renewed_slot_lease_outlives_its_first_ttl",
    "prune_deletes_only_jobs_finished_long_enough_ago",
    "an_expired_external_wait_is_retried_and_its_late_callback_fenced",
    "a_snoozed_job_waits_out_its_delay",
    "a_jobs_own_backoff_sets_its_delay_and_its_newest_errors_are_kept",
];

async fn exec(b: &dyn Backend, command: Command) -> Outcome {
    b.execute(command).await.expect("the backend is available")
}

/// [`exec`] of one request, answered with its own type.
async fn run<R: Request + Send>(b: &dyn Backend, request: R) -> R::Output {
    b.run(request).await.expect("the backend is available")
}

async fn enqueue(b: &dyn Backend, jobs: Vec<NewJob>) -> Vec<Enqueued> {
    run(b, cmd::Enqueue { jobs }).await.expect("enqueue")
}

async fn acquire(b: &dyn Backend, process: u64) -> Result<(ClaimerGrant, Acquired), Reject> {
    run(
        b,
        cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        },
    )
    .await
}

async fn claim_with(b: &dyn Backend, claimer: ClaimerGrant, max: u32) -> Result<Claimed, Reject> {
    run(
        b,
        cmd::Claim {
            queue: queue(),
            claimer,
            max,
            kinds: None,
        },
    )
    .await
}

/// Acquires a lease for `process` and claims up to `max` jobs.
async fn claim(b: &dyn Backend, process: u64, max: u32) -> Claimed {
    let (grant, _) = acquire(b, process).await.expect("a claimer slot");
    claim_with(b, grant, max).await.expect("the lease is live")
}

async fn complete(b: &dyn Backend, receipts: Vec<Receipt>) -> Vec<Result<(), Reject>> {
    run(b, cmd::Complete { receipts }).await.expect("complete")
}

async fn elect(b: &dyn Backend, process: u64) -> Result<LeaderGrant, Reject> {
    run(
        b,
        cmd::LeaderElect {
            process: ProcessId(process),
        },
    )
    .await
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
        Command::Rescue(cmd::Rescue {
            leader,
            draw: 0,
            max: 10,
        }),
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
            Command::Heartbeat(cmd::Heartbeat {
                receipts: vec![late]
            })
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
        exec(b, Command::PauseQueue(cmd::PauseQueue { queue: queue() })).await,
        Outcome::QueuePauseChanged(true)
    );
    assert_eq!(
        exec(b, Command::PauseQueue(cmd::PauseQueue { queue: queue() })).await,
        Outcome::QueuePauseChanged(false)
    );
    let (grant, _) = acquire(b, 1).await.expect("a slot");
    assert!(claim_with(b, grant, 5).await.expect("live").jobs.is_empty());
    assert_eq!(
        exec(b, Command::ResumeQueue(cmd::ResumeQueue { queue: queue() })).await,
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
    let fail = |receipt| {
        Command::Fail(cmd::Fail {
            failures: vec![Failure {
                receipt,
                error: FailError {
                    retry: Retry::Backoff,
                    message: "nope".to_string(),
                },
                draw: 0,
            }],
        })
    };
    let first = claim(b, 1, 1).await.jobs[0].receipt;
    let answer = exec(b, fail(first)).await;
    assert!(
        matches!(&answer, Outcome::Failed(Ok(r)) if matches!(r[0], Ok(FailOutcome::Retrying { .. }))),
        "{answer:?}"
    );
    let leader = elect(b, 9).await.expect("leader");
    assert_eq!(
        exec(b, Command::Promote(cmd::Promote { leader, max: 10 })).await,
        Outcome::Promoted(Ok(vec![])),
        "not due before its backoff"
    );
    sleep_ms(1_200).await;
    assert_eq!(
        exec(b, Command::Promote(cmd::Promote { leader, max: 10 })).await,
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
        exec(b, Command::Retry(cmd::Retry { job: id })).await,
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
            Command::Snooze(cmd::Snooze {
                snoozes: vec![(first, Millis(0))]
            })
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
        exec(b, Command::Cancel(cmd::Cancel { job: receipt.job })).await,
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
        exec(b, Command::Cancel(cmd::Cancel { job: receipt.job })).await,
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
            Command::WaitExternal(cmd::WaitExternal {
                waits: vec![(receipt, Millis(60_000))]
            })
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
        exec(b, Command::ResumeExternal(cmd::ResumeExternal { receipt })).await,
        Outcome::Resumed(Ok(()))
    );
    assert_eq!(
        exec(b, Command::ResumeExternal(cmd::ResumeExternal { receipt })).await,
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
    let try_slot = |slot: u16, holder: u64, permits: u16, lease: Option<Millis>| cmd::SlotTry {
        semaphore: name.clone(),
        permits,
        slot: SlotIndex(slot),
        holder: ProcessId(holder),
        lease_ttl: lease,
    };
    let g1 = run(b, try_slot(0, 1, 2, None))
        .await
        .expect("slot 0 is free");
    assert_eq!(
        run(b, try_slot(0, 2, 2, None)).await,
        Err(Reject::SlotBusy {
            slot: SlotIndex(0),
            holder: ProcessId(1)
        })
    );
    assert!(run(b, try_slot(1, 2, 2, Some(Millis(60_000))))
        .await
        .is_ok());
    assert_eq!(
        run(b, try_slot(1, 3, 3, None)).await,
        Err(Reject::PermitsMismatch {
            name: name.clone(),
            configured: 2,
            presented: 3
        })
    );
    assert_eq!(
        run(b, try_slot(2, 3, 2, None)).await,
        Err(Reject::SlotOutOfRange {
            slot: SlotIndex(2),
            permits: 2
        })
    );
    assert_eq!(
        exec(
            b,
            Command::ProcessCrashed(cmd::ProcessCrashed {
                process: ProcessId(1)
            })
        )
        .await,
        Outcome::SessionEnded(vec![(name.clone(), SlotIndex(0))])
    );
    let g3 = run(b, try_slot(0, 3, 2, None))
        .await
        .expect("the crashed holder's slot is free");
    assert!(g3.epoch > g1.epoch);
    let stale = Command::SlotRelease(cmd::SlotRelease {
        semaphore: name.clone(),
        grant: g1,
    });
    assert_eq!(exec(b, stale).await, Outcome::SlotReleased(false));
    let mine = Command::SlotRelease(cmd::SlotRelease {
        semaphore: name,
        grant: g3,
    });
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
        exec(b, Command::LeaderResign(cmd::LeaderResign { leader: g1 })).await,
        Outcome::LeaderResigned(true)
    );
    let g2 = elect(b, 2).await.expect("second leader");
    assert!(g2.term > g1.term);
    assert_eq!(
        exec(
            b,
            Command::Promote(cmd::Promote {
                leader: g1,
                max: 10
            })
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
        exec(b, Command::Enqueue(cmd::Enqueue { jobs })).await,
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

fn queue_named(name: &str) -> QueueName {
    QueueName::new(name).expect("valid")
}

fn job_in(queue: &str, kind: &str) -> NewJob {
    NewJob::new(
        queue_named(queue),
        Kind::new(kind).expect("valid"),
        Payload(b"{}".to_vec()),
    )
}

fn keyed(kind: &str, key: &str) -> NewJob {
    let mut j = job(kind);
    j.unique_key = Some(UniqueKey::new(key).expect("valid"));
    j
}

async fn bulk(b: &dyn Backend, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, Reject> {
    b.enqueue_bulk(jobs)
        .await
        .expect("the backend is available")
}

async fn now(b: &dyn Backend) -> Timestamp {
    b.now().await.expect("the backend is available")
}

async fn list(b: &dyn Backend, filter: JobFilter) -> Vec<JobId> {
    b.jobs(&filter)
        .await
        .expect("the backend is available")
        .iter()
        .map(|j| j.id)
        .collect()
}

async fn read(b: &dyn Backend, id: JobId) -> Job {
    b.job(id)
        .await
        .expect("the backend is available")
        .expect("the job exists")
}

fn strictly_increasing(ids: &[JobId]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

/// A bulk of 40 (more than `batch_max`, 16): ids in input order, none a
/// duplicate, each job stored as given; a future `run_at` is scheduled.
pub async fn bulk_enqueue_returns_ids_in_input_order_beyond_batch_max(b: &dyn Backend) {
    let later = now(b).await.plus(Millis(60_000));
    let jobs: Vec<NewJob> = (0..40u8)
        .map(|i| {
            let mut j = job(if i % 3 == 0 { "a" } else { "b" });
            j.payload = Payload(vec![i]);
            j.priority = Priority(i16::from(i % 4));
            if i == 5 {
                j.run_at = Some(later);
            }
            j
        })
        .collect();
    let done = bulk(b, jobs.clone()).await.expect("valid jobs");
    assert_eq!(done.len(), 40);
    assert!(done.iter().all(|e| !e.duplicate), "{done:?}");
    let ids: Vec<JobId> = done.iter().map(|e| e.id).collect();
    assert!(strictly_increasing(&ids), "{ids:?}");
    for (new, id) in jobs.iter().zip(&ids) {
        let stored = read(b, *id).await;
        assert_eq!(
            (
                &stored.queue,
                &stored.kind,
                &stored.payload,
                stored.priority
            ),
            (&new.queue, &new.kind, &new.payload, new.priority)
        );
        assert_eq!((stored.max_attempts.0, stored.timeout), (25, new.timeout));
        let expected = if new.run_at.is_some() {
            StateName::Scheduled
        } else {
            StateName::Available
        };
        assert_eq!(stored.state_name(), expected, "job {id}");
    }
    let listed = list(
        b,
        JobFilter {
            limit: 100,
            ..JobFilter::default()
        },
    )
    .await;
    assert_eq!(listed, ids);
}

/// One invalid job refuses the whole bulk with its index and writes
/// nothing, with or without unique keys; a `run_at` too far is found
/// before a later job's clock-free fault, as the world validates in order.
pub async fn bulk_enqueue_with_an_invalid_job_writes_nothing(b: &dyn Backend) {
    let delay_max = JobLimits::default().delay_max;
    let too_far = now(b).await.plus(delay_max).plus(Millis(86_400_000));
    let spoiled = |keys: bool| -> Vec<NewJob> {
        (0..40)
            .map(|i| {
                let mut j = if keys {
                    keyed("k", &format!("key-{i}"))
                } else {
                    job("k")
                };
                if i == 30 {
                    j.run_at = Some(too_far);
                }
                if i == 35 {
                    j.max_attempts = 0;
                }
                j
            })
            .collect()
    };
    for keys in [false, true] {
        assert_eq!(
            bulk(b, spoiled(keys)).await,
            Err(Reject::InvalidJob {
                index: 30,
                error: InvalidJob::RunAtTooFar {
                    run_at: too_far,
                    max: delay_max
                }
            }),
            "keys: {keys}"
        );
        // Only the `run_at` is wrong: nothing but the clock finds it.
        let mut far_only = spoiled(keys);
        far_only[35].max_attempts = 1;
        assert_eq!(
            bulk(b, far_only).await,
            Err(Reject::InvalidJob {
                index: 30,
                error: InvalidJob::RunAtTooFar {
                    run_at: too_far,
                    max: delay_max
                }
            }),
            "keys: {keys}"
        );
        let mut clock_free = spoiled(keys);
        clock_free[30].run_at = None;
        assert_eq!(
            bulk(b, clock_free).await,
            Err(Reject::InvalidJob {
                index: 35,
                error: InvalidJob::MaxAttemptsZero
            }),
            "keys: {keys}"
        );
    }
    assert_eq!(list(b, JobFilter::default()).await, vec![]);
    assert_eq!(b.queues().await.expect("available"), vec![]);
    // Nothing was held back either: the same keys go in afterwards.
    let mut valid = spoiled(true);
    valid[30].run_at = None;
    valid[35].max_attempts = 1;
    let done = bulk(b, valid).await.expect("valid now");
    assert!(done.iter().all(|e| !e.duplicate));
    assert_eq!(list(b, JobFilter::default()).await.len(), 40);
}

/// Unique keys in a bulk: a key already stored answers with that job, a
/// key repeated in the bulk (across `batch_max` chunks) with its first
/// occurrence's job, and only new jobs take ids, in input order.
pub async fn bulk_enqueue_with_unique_keys_gives_the_existing_job(b: &dyn Backend) {
    let existing = enqueue(b, vec![keyed("a", "k4")]).await[0];
    // Even positions carry keys k0, k2, ..., k18, then the same again from
    // position 20; odd positions have no key.
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                keyed("a", &format!("k{}", i % 20))
            } else {
                job("a")
            }
        })
        .collect();
    let done = bulk(b, jobs).await.expect("valid jobs");
    assert_eq!(done.len(), 40);
    let mut fresh = Vec::new();
    for (i, e) in done.iter().enumerate() {
        match i {
            4 | 24 => assert_eq!(
                *e,
                Enqueued {
                    id: existing.id,
                    duplicate: true
                },
                "{i}"
            ),
            20.. if i % 2 == 0 => assert_eq!(
                *e,
                Enqueued {
                    id: done[i - 20].id,
                    duplicate: true
                },
                "{i}"
            ),
            _ => {
                assert!(!e.duplicate, "{i}: {e:?}");
                fresh.push(e.id);
            }
        }
    }
    assert_eq!(fresh.len(), 29);
    assert!(strictly_increasing(&fresh), "{fresh:?}");
    assert!(fresh[0] > existing.id);
    let mut stored = list(b, JobFilter::default()).await;
    assert_eq!(stored.remove(0), existing.id);
    assert_eq!(stored, fresh);
}

/// `job` reads one job (`None` for an unknown id); `jobs` lists in id
/// order and every filter field narrows it; `after` pages through.
pub async fn jobs_are_read_by_id_and_listed_by_every_filter(b: &dyn Backend) {
    let ids: Vec<JobId> = enqueue(
        b,
        vec![
            job_in("default", "a"),
            job_in("default", "b"),
            job_in("other", "a"),
            job_in("default", "a"),
            job_in("other", "b"),
            job_in("default", "a"),
        ],
    )
    .await
    .iter()
    .map(|e| e.id)
    .collect();
    let claimed = claim(b, 1, 2).await;
    let receipts: Vec<Receipt> = claimed.jobs.iter().map(|j| j.receipt).collect();
    assert_eq!(receipts.iter().map(|r| r.job).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(complete(b, vec![receipts[1]]).await, vec![Ok(())]);

    let running = read(b, ids[0]).await;
    assert_eq!(running.state_name(), StateName::Running);
    assert_eq!((running.attempt.0, running.epoch), (1, Epoch(1)));
    assert_eq!(
        (running.queue.as_str(), running.kind.as_str()),
        ("default", "a")
    );
    assert_eq!(read(b, ids[1]).await.state_name(), StateName::Completed);
    assert_eq!(b.job(JobId(999_999)).await.expect("available"), None);
    let all = b.jobs(&JobFilter::default()).await.expect("available");
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0], running, "a listing holds the same jobs as job()");

    let filter = JobFilter::default;
    let pick = |n: &[usize]| n.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    let cases = [
        (
            JobFilter {
                queue: Some(queue_named("other")),
                ..filter()
            },
            pick(&[2, 4]),
        ),
        (
            JobFilter {
                state: Some(StateName::Running),
                ..filter()
            },
            pick(&[0]),
        ),
        (
            JobFilter {
                state: Some(StateName::Completed),
                ..filter()
            },
            pick(&[1]),
        ),
        (
            JobFilter {
                state: Some(StateName::Available),
                ..filter()
            },
            pick(&[2, 3, 4, 5]),
        ),
        (
            JobFilter {
                state: Some(StateName::Failed),
                ..filter()
            },
            pick(&[]),
        ),
        (
            JobFilter {
                kind: Some(Kind::new("a").expect("valid")),
                ..filter()
            },
            pick(&[0, 2, 3, 5]),
        ),
        (
            JobFilter {
                after: Some(ids[2]),
                ..filter()
            },
            pick(&[3, 4, 5]),
        ),
        (
            JobFilter {
                limit: 2,
                ..filter()
            },
            pick(&[0, 1]),
        ),
        (
            JobFilter {
                limit: 0,
                ..filter()
            },
            pick(&[]),
        ),
        (
            JobFilter {
                queue: Some(queue()),
                state: Some(StateName::Available),
                kind: Some(Kind::new("a").expect("valid")),
                after: Some(ids[3]),
                limit: 10,
            },
            pick(&[5]),
        ),
    ];
    for (f, expected) in cases {
        assert_eq!(list(b, f.clone()).await, expected, "{f:?}");
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = list(
            b,
            JobFilter {
                after,
                limit: 4,
                ..filter()
            },
        )
        .await;
        let Some(&last) = page.last() else { break };
        assert!(page.len() <= 4);
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, ids);
}

/// However large `limit` is, a listing returns at most
/// `JobFilter::LIMIT_MAX` jobs; `after` reaches the rest.
pub async fn job_listings_are_capped_at_limit_max(b: &dyn Backend) {
    let n = JobFilter::LIMIT_MAX as usize + 1;
    let ids: Vec<JobId> = bulk(b, (0..n).map(|_| job("k")).collect())
        .await
        .expect("valid jobs")
        .iter()
        .map(|e| e.id)
        .collect();
    let first = list(
        b,
        JobFilter {
            limit: u32::MAX,
            ..JobFilter::default()
        },
    )
    .await;
    assert_eq!(first.len(), JobFilter::LIMIT_MAX as usize);
    assert_eq!(first[..], ids[..n - 1]);
    let rest = list(
        b,
        JobFilter {
            after: first.last().copied(),
            limit: u32::MAX,
            ..JobFilter::default()
        },
    )
    .await;
    assert_eq!(rest, vec![ids[n - 1]]);
}

fn depths(counts: &[(StateName, u64)]) -> Vec<(StateName, u64)> {
    StateName::ALL
        .iter()
        .map(|&s| {
            let n = counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
            (s, n)
        })
        .collect()
}

/// Every queue with jobs or paused, in name order (bytes, not a locale):
/// depths for every state (zeros included), unfinished jobs by kind,
/// whether it is paused.
pub async fn queues_show_depths_paused_state_and_unfinished_kinds(b: &dyn Backend) {
    assert_eq!(b.queues().await.expect("available"), vec![]);
    for name in ["za", "z_a", "z-a"] {
        let queue = queue_named(name);
        assert_eq!(
            exec(b, Command::PauseQueue(cmd::PauseQueue { queue })).await,
            Outcome::QueuePauseChanged(true)
        );
    }
    let mut scheduled = job("c");
    scheduled.run_at = Some(now(b).await.plus(Millis(60_000)));
    enqueue(
        b,
        vec![
            job("a"),
            job("a"),
            job("b"),
            scheduled,
            job_in("other", "a"),
        ],
    )
    .await;
    let claimed = claim(b, 1, 1).await;
    assert_eq!(claimed.jobs[0].kind.as_str(), "a");
    assert_eq!(
        complete(b, vec![claimed.jobs[0].receipt]).await,
        vec![Ok(())]
    );
    assert_eq!(
        exec(b, Command::PauseQueue(cmd::PauseQueue { queue: queue() })).await,
        Outcome::QueuePauseChanged(true)
    );
    let kind = |k: &str, n: u64| (Kind::new(k).expect("valid"), n);
    let paused_empty = |name: &str| QueueInfo {
        queue: queue_named(name),
        paused: true,
        depths: depths(&[]),
        unfinished_by_kind: vec![],
    };
    let expected = vec![
        QueueInfo {
            queue: queue(),
            paused: true,
            depths: depths(&[
                (StateName::Scheduled, 1),
                (StateName::Available, 2),
                (StateName::Completed, 1),
            ]),
            unfinished_by_kind: vec![kind("a", 1), kind("b", 1), kind("c", 1)],
        },
        QueueInfo {
            queue: queue_named("other"),
            paused: false,
            depths: depths(&[(StateName::Available, 1)]),
            unfinished_by_kind: vec![kind("a", 1)],
        },
        paused_empty("z-a"),
        paused_empty("z_a"),
        paused_empty("za"),
    ];
    assert_eq!(b.queues().await.expect("available"), expected);
    // A running job is unfinished; resuming clears the flag.
    let running = claim(b, 2, 1).await;
    assert!(running.jobs.is_empty(), "the queue is paused");
    exec(b, Command::ResumeQueue(cmd::ResumeQueue { queue: queue() })).await;
    let (grant, _) = acquire(b, 1).await.expect("a slot");
    let running = claim_with(b, grant, 1).await.expect("live");
    assert_eq!(running.jobs.len(), 1);
    let default = b.queues().await.expect("available").remove(0);
    assert!(!default.paused);
    assert_eq!(
        (
            default.depth(StateName::Available),
            default.depth(StateName::Running)
        ),
        (1, 1)
    );
    assert_eq!(
        default.unfinished_by_kind,
        vec![kind("a", 1), kind("b", 1), kind("c", 1)]
    );
}

fn presence(process: u64, label: &str, started_at: Timestamp) -> Presence {
    Presence {
        process: ProcessId(process),
        label: label.to_string(),
        queues: vec![queue(), queue_named("other")],
        kinds: vec![
            Kind::new("a").expect("valid"),
            Kind::new("b").expect("valid"),
        ],
        started_at,
    }
}

/// Announcing records a process until its ttl passes; announcing again
/// refreshes it (and what it says); retiring removes it. Listed by process
/// id as a `u64`, so the largest id comes last.
pub async fn presence_is_announced_refreshed_retired_and_expires(b: &dyn Backend) {
    let ttl = Duration::from_secs(60);
    let started = now(b).await;
    let one = presence(1, "host-a:41", started);
    let max = presence(u64::MAX, "host-b:7", started);
    assert_eq!(b.workers().await.expect("available"), vec![]);
    let before = now(b).await;
    b.announce(&max, ttl).await.expect("available");
    b.announce(&one, ttl).await.expect("available");
    let after = now(b).await;
    let workers = b.workers().await.expect("available");
    let listed: Vec<&Presence> = workers.iter().map(|w| &w.presence).collect();
    assert_eq!(listed, vec![&one, &max]);
    for w in &workers {
        assert!(before <= w.seen_at && w.seen_at <= after, "{w:?}");
        assert_eq!(w.expires_at, w.seen_at.plus(Millis(60_000)));
    }
    sleep_ms(20).await;
    let mut changed = presence(1, "host-a:42", started);
    changed.kinds = vec![Kind::new("c").expect("valid")];
    changed.queues = vec![];
    b.announce(&changed, ttl).await.expect("available");
    let refreshed = b.workers().await.expect("available");
    assert_eq!(refreshed.len(), 2);
    assert_eq!(refreshed[0].presence, changed);
    assert!(refreshed[0].seen_at > workers[0].seen_at);
    assert_eq!(refreshed[1], workers[1], "the other process is untouched");
    b.retire(ProcessId(u64::MAX)).await.expect("available");
    b.retire(ProcessId(99))
        .await
        .expect("retiring an unknown process is a no-op");
    let short = presence(2, "host-c:1", started);
    b.announce(&short, Duration::from_millis(150))
        .await
        .expect("available");
    let live: Vec<ProcessId> = b
        .workers()
        .await
        .expect("available")
        .iter()
        .map(|w| w.presence.process)
        .collect();
    assert_eq!(live, vec![ProcessId(1), ProcessId(2)]);
    sleep_ms(400).await;
    let live: Vec<Presence> = b
        .workers()
        .await
        .expect("available")
        .into_iter()
        .map(|w| w.presence)
        .collect();
    assert_eq!(live, vec![changed], "process 2's presence expired");
}

/// A subscriber hears `Jobs(queue)` for every queue that gained available
/// jobs (an enqueue, a bulk; not a queue whose jobs are all scheduled), and
/// `Cancelled` with the fenced attempt when a running job is cancelled.
pub async fn enqueue_and_cancel_wake_subscribers(b: &dyn Backend) {
    let mut sub = b
        .subscribe()
        .await
        .expect("available")
        .expect("this backend sends wake-ups");
    let within = Duration::from_secs(5);
    let quiet = Duration::from_millis(300);
    assert_eq!(sub.next(quiet).await.expect("subscribed"), None);
    enqueue(b, vec![job("k")]).await;
    assert_eq!(
        sub.next(within).await.expect("subscribed"),
        Some(Wakeup::Jobs(queue()))
    );
    let mut later = job_in("later", "k");
    later.run_at = Some(now(b).await.plus(Millis(60_000)));
    bulk(b, vec![job_in("other", "k"), later, job_in("other", "k")])
        .await
        .expect("valid jobs");
    assert_eq!(
        sub.next(within).await.expect("subscribed"),
        Some(Wakeup::Jobs(queue_named("other")))
    );
    assert_eq!(sub.next(quiet).await.expect("subscribed"), None);
    let receipt = claim(b, 7, 1).await.jobs[0].receipt;
    assert_eq!(
        exec(b, Command::Cancel(cmd::Cancel { job: receipt.job })).await,
        Outcome::Cancelled(Ok(StateName::Running))
    );
    assert_eq!(
        sub.next(within).await.expect("subscribed"),
        Some(Wakeup::Cancelled {
            job: receipt.job,
            epoch: receipt.epoch,
            holder: ProcessId(7)
        })
    );
    assert_eq!(sub.next(quiet).await.expect("subscribed"), None);
}

/// A handler that cancels its own attempt ends the job for good: cancelled,
/// with the epoch bumped, so the attempt's receipt is fenced; an operator's
/// cancel finds it finished; a stale or unknown receipt in the same batch
/// cancels nothing; an oversized batch is refused whole; and only an admin
/// retry opens a new attempt.
pub async fn a_cancelled_attempt_is_fenced_and_final(b: &dyn Backend) {
    let ids: Vec<JobId> = enqueue(b, vec![job("k"), job("k")])
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    let claimed = claim(b, 1, 2).await;
    let (mine, other) = (claimed.jobs[0].receipt, claimed.jobs[1].receipt);
    assert_eq!((mine.job, other.job), (ids[0], ids[1]));
    let cancel = |receipts| Command::CancelAttempts(cmd::CancelAttempts { receipts });
    assert_eq!(
        exec(b, cancel(vec![mine; 17])).await,
        Outcome::AttemptsCancelled(Err(Reject::BatchTooLarge { len: 17, max: 16 }))
    );
    let stale = Receipt {
        job: other.job,
        epoch: Epoch(0),
    };
    let bogus = Receipt {
        job: JobId(424_242),
        epoch: Epoch(1),
    };
    assert_eq!(
        exec(b, cancel(vec![mine, stale, bogus])).await,
        Outcome::AttemptsCancelled(Ok(vec![
            Ok(()),
            Err(Reject::StaleEpoch {
                current: Epoch(1),
                presented: Epoch(0)
            }),
            Err(Reject::UnknownJob { job: bogus.job }),
        ]))
    );
    let fenced = Err(Reject::StaleEpoch {
        current: Epoch(2),
        presented: Epoch(1),
    });
    assert_eq!(
        complete(b, vec![mine, other]).await,
        vec![fenced.clone(), Ok(())],
        "the cancelled attempt is fenced; its neighbour is not"
    );
    assert_eq!(
        exec(b, cancel(vec![mine])).await,
        Outcome::AttemptsCancelled(Ok(vec![fenced]))
    );
    let cancelled = read(b, mine.job).await;
    assert_eq!(
        (cancelled.state_name(), cancelled.epoch, cancelled.attempt.0),
        (StateName::Cancelled, Epoch(2), 1)
    );
    assert_eq!(
        exec(b, Command::Cancel(cmd::Cancel { job: mine.job })).await,
        Outcome::Cancelled(Err(Reject::AlreadyFinished {
            state: StateName::Cancelled
        }))
    );
    assert!(
        claim(b, 1, 2).await.jobs.is_empty(),
        "nothing is left to run"
    );
    assert_eq!(
        exec(b, Command::Retry(cmd::Retry { job: mine.job })).await,
        Outcome::Retried(Ok(()))
    );
    let again = claim(b, 1, 2).await.jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].receipt, again[0].attempt.0),
        (
            // The retry opened epoch 3, the claim took epoch 4.
            Receipt {
                job: mine.job,
                epoch: Epoch(4)
            },
            1
        )
    );
}

fn release_claimer(queue: QueueName, claimer: ClaimerGrant) -> Command {
    Command::ClaimerRelease(cmd::ClaimerRelease { queue, claimer })
}

/// Releasing a claimer lease frees its slot at once: another process takes
/// it over (lease epoch bumped) without waiting for it to go idle, and the
/// released grant claims nothing. A second release, or a release under
/// another queue, is a no-op.
pub async fn a_released_claimer_slot_is_taken_over_at_once(b: &dyn Backend) {
    enqueue(b, vec![job("k")]).await;
    let (g1, _) = acquire(b, 1).await.expect("slot 1");
    let (g2, _) = acquire(b, 2).await.expect("slot 2");
    assert_eq!(acquire(b, 3).await, Err(Reject::NoClaimerSlot { slots: 2 }));
    assert_eq!(
        exec(b, release_claimer(queue(), g1)).await,
        Outcome::ClaimerReleased(true)
    );
    assert_eq!(
        exec(b, release_claimer(queue(), g1)).await,
        Outcome::ClaimerReleased(false)
    );
    assert_eq!(
        claim_with(b, g1, 1).await,
        Err(Reject::ClaimerLeaseLost {
            slot: g1.slot,
            presented: g1.lease_epoch
        })
    );
    let (g3, how) = acquire(b, 3).await.expect("the released slot");
    assert_eq!(
        (g3.slot, g3.lease_epoch, how),
        (g1.slot, g1.lease_epoch.next(), Acquired::TakenOver)
    );
    assert_eq!(claim_with(b, g3, 1).await.expect("live").jobs.len(), 1);
    assert_eq!(
        exec(b, release_claimer(queue_named("other"), g2)).await,
        Outcome::ClaimerReleased(false)
    );
    assert_eq!(
        exec(b, release_claimer(queue(), g2)).await,
        Outcome::ClaimerReleased(true)
    );
}

/// A lease hold lapses at its ttl unless renewed; a renewal extends it
/// from now and never shortens it; a lapsed, taken or released grant
/// renews nothing, and neither does a grant of an unknown semaphore.
pub async fn a_renewed_slot_lease_outlives_its_first_ttl(b: &dyn Backend) {
    let name = SemaphoreName::new("exports").expect("valid");
    let try_slot = |slot: u16, holder: u64, ttl_ms: u64| cmd::SlotTry {
        semaphore: name.clone(),
        permits: 2,
        slot: SlotIndex(slot),
        holder: ProcessId(holder),
        lease_ttl: Some(Millis(ttl_ms)),
    };
    let renew = |grant: SlotGrant, ttl_ms: u64| {
        Command::SlotRenew(cmd::SlotRenew {
            semaphore: name.clone(),
            grant,
            lease_ttl: Millis(ttl_ms),
        })
    };
    let kept = run(b, try_slot(0, 1, 1_000)).await.expect("slot 0 is free");
    let lapsed = run(b, try_slot(1, 1, 1_000)).await.expect("slot 1 is free");
    assert_eq!(
        exec(b, renew(kept, 60_000)).await,
        Outcome::SlotRenewed(Ok(()))
    );
    assert_eq!(
        exec(b, renew(kept, 1)).await,
        Outcome::SlotRenewed(Ok(())),
        "a shorter renewal is accepted and shortens nothing"
    );
    sleep_ms(1_300).await;
    assert_eq!(
        run(b, try_slot(0, 2, 60_000)).await,
        Err(Reject::SlotBusy {
            slot: SlotIndex(0),
            holder: ProcessId(1)
        })
    );
    let not_held = |slot: u16| {
        Outcome::SlotRenewed(Err(Reject::SlotNotHeld {
            slot: SlotIndex(slot),
        }))
    };
    assert_eq!(exec(b, renew(lapsed, 60_000)).await, not_held(1));
    let taken = run(b, try_slot(1, 2, 60_000))
        .await
        .expect("the lapsed slot is free");
    assert!(taken.epoch > lapsed.epoch);
    assert_eq!(exec(b, renew(lapsed, 60_000)).await, not_held(1));
    assert_eq!(
        exec(
            b,
            Command::SlotRelease(cmd::SlotRelease {
                semaphore: name.clone(),
                grant: lapsed
            })
        )
        .await,
        Outcome::SlotReleased(false)
    );
    assert_eq!(
        exec(
            b,
            Command::SlotRelease(cmd::SlotRelease {
                semaphore: name.clone(),
                grant: kept
            })
        )
        .await,
        Outcome::SlotReleased(true)
    );
    assert_eq!(exec(b, renew(kept, 60_000)).await, not_held(0));
    let unknown = Command::SlotRenew(cmd::SlotRenew {
        semaphore: SemaphoreName::new("never-tried").expect("valid"),
        grant: taken,
        lease_ttl: Millis(60_000),
    });
    assert_eq!(exec(b, unknown).await, not_held(1));
}

async fn prune(b: &dyn Backend, leader: LeaderGrant, older_than_ms: u64, max: u32) -> Outcome {
    let command = Command::Prune(cmd::Prune {
        leader,
        older_than: Millis(older_than_ms),
        max,
    });
    exec(b, command).await
}

/// Prune deletes finished jobs (completed, failed, cancelled) that
/// finished more than `older_than` ago by storage's clock, oldest first,
/// at most `max` at a time; unfinished jobs stay; a pruned job's unique
/// key is free again; a leader that resigned prunes nothing.
pub async fn prune_deletes_only_jobs_finished_long_enough_ago(b: &dyn Backend) {
    let ids: Vec<JobId> = enqueue(b, vec![keyed("k", "once"), job("k"), job("k"), job("k")])
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    let claimed = claim(b, 1, 2).await;
    let (done, failing) = (claimed.jobs[0].receipt, claimed.jobs[1].receipt);
    assert_eq!((done.job, failing.job), (ids[0], ids[1]));
    assert_eq!(complete(b, vec![done]).await, vec![Ok(())]);
    let fail = Command::Fail(cmd::Fail {
        failures: vec![Failure {
            receipt: failing,
            error: FailError {
                retry: Retry::Never,
                message: "for good".to_string(),
            },
            draw: 0,
        }],
    });
    assert_eq!(
        exec(b, fail).await,
        Outcome::Failed(Ok(vec![Ok(FailOutcome::Failed(FailReason::Terminal))]))
    );
    assert_eq!(
        exec(b, Command::Cancel(cmd::Cancel { job: ids[2] })).await,
        Outcome::Cancelled(Ok(StateName::Available))
    );
    let leader = elect(b, 9).await.expect("no other leader");
    assert_eq!(
        prune(b, leader, 60_000, 10).await,
        Outcome::Pruned(Ok(vec![])),
        "none finished a minute ago"
    );
    sleep_ms(400).await;
    assert_eq!(
        prune(b, leader, 200, 2).await,
        Outcome::Pruned(Ok(vec![ids[0], ids[1]]))
    );
    assert_eq!(
        prune(b, leader, 200, 10).await,
        Outcome::Pruned(Ok(vec![ids[2]]))
    );
    assert_eq!(prune(b, leader, 0, 10).await, Outcome::Pruned(Ok(vec![])));
    for &id in &ids[..3] {
        assert_eq!(b.job(id).await.expect("available"), None, "job {id}");
    }
    assert_eq!(list(b, JobFilter::default()).await, vec![ids[3]]);
    let again = enqueue(b, vec![keyed("k", "once")]).await[0];
    assert!(!again.duplicate && again.id > ids[3], "{again:?}");
    assert_eq!(
        exec(b, Command::LeaderResign(cmd::LeaderResign { leader })).await,
        Outcome::LeaderResigned(true)
    );
    assert_eq!(
        exec(b, Command::LeaderResign(cmd::LeaderResign { leader })).await,
        Outcome::LeaderResigned(false)
    );
    assert_eq!(
        prune(b, leader, 0, 10).await,
        Outcome::Pruned(Err(Reject::NotLeader {
            current: leader.term,
            presented: leader.term
        }))
    );
}

/// A callback wait that outlives its timeout is rescued as a failed
/// attempt, with the epoch bumped: retried after the backoff, or failed
/// when its attempts are used up. The late callback is fenced.
pub async fn an_expired_external_wait_is_retried_and_its_late_callback_fenced(b: &dyn Backend) {
    let mut last = job("k");
    last.max_attempts = 1;
    let ids: Vec<JobId> = enqueue(b, vec![job("k"), last])
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    let receipts: Vec<Receipt> = claim(b, 1, 2)
        .await
        .jobs
        .iter()
        .map(|j| j.receipt)
        .collect();
    assert_eq!(receipts.iter().map(|r| r.job).collect::<Vec<_>>(), ids);
    let waits = receipts.iter().map(|&r| (r, Millis(1_000))).collect();
    assert_eq!(
        exec(b, Command::WaitExternal(cmd::WaitExternal { waits })).await,
        Outcome::Waiting(Ok(vec![Ok(()), Ok(())]))
    );
    let leader = elect(b, 9).await.expect("no other leader");
    let rescue = cmd::Rescue {
        leader,
        draw: 0,
        max: 10,
    };
    assert_eq!(
        run(b, rescue.clone()).await,
        Ok(vec![]),
        "not before the timeout"
    );
    sleep_ms(1_300).await;
    let before = now(b).await;
    let rescued = run(b, rescue).await;
    let after = now(b).await;
    let rescued = rescued.expect("rescue");
    let [(first, FailOutcome::Retrying { run_at }), second] = rescued[..] else {
        panic!("two expired waits, the first retried: {rescued:?}")
    };
    assert_eq!(first, ids[0]);
    let backoff = Millis(1_000);
    assert!(
        before.plus(backoff) <= run_at && run_at <= after.plus(backoff),
        "{before} {run_at} {after}"
    );
    assert_eq!(
        second,
        (ids[1], FailOutcome::Failed(FailReason::AttemptsExhausted))
    );
    assert_eq!(
        exec(
            b,
            Command::ResumeExternal(cmd::ResumeExternal {
                receipt: receipts[0]
            })
        )
        .await,
        Outcome::Resumed(Err(Reject::StaleEpoch {
            current: Epoch(2),
            presented: Epoch(1)
        }))
    );
    let retried = read(b, ids[0]).await;
    assert_eq!(
        (retried.state_name(), retried.epoch, retried.attempt.0),
        (StateName::Retryable, Epoch(2), 1)
    );
    let message = retried.last_error().map(|e| e.message.clone());
    assert_eq!(message.as_deref(), Some("external callback timed out"));
    assert_eq!(read(b, ids[1]).await.state_name(), StateName::Failed);
}

/// A snooze with a delay schedules the job: neither a claim nor a promote
/// takes it before the delay passes; then it is promoted and runs again
/// without having used an attempt.
pub async fn a_snoozed_job_waits_out_its_delay(b: &dyn Backend) {
    let mut once = job("k");
    once.max_attempts = 1;
    let id = enqueue(b, vec![once]).await[0].id;
    let first = claim(b, 1, 1).await.jobs[0].receipt;
    let delay = Millis(1_000);
    let before = now(b).await;
    assert_eq!(
        exec(
            b,
            Command::Snooze(cmd::Snooze {
                snoozes: vec![(first, delay)]
            })
        )
        .await,
        Outcome::Snoozed(Ok(vec![Ok(())]))
    );
    let after = now(b).await;
    let snoozed = read(b, id).await;
    let JobState::Scheduled { run_at } = snoozed.state else {
        panic!("a delayed snooze schedules the job: {snoozed:?}")
    };
    assert!(
        before.plus(delay) <= run_at && run_at <= after.plus(delay),
        "{before} {run_at} {after}"
    );
    assert_eq!(snoozed.attempt.0, 0, "the attempt was handed back");
    assert!(claim(b, 1, 1).await.jobs.is_empty());
    let leader = elect(b, 9).await.expect("no other leader");
    let promote = Command::Promote(cmd::Promote { leader, max: 10 });
    assert_eq!(
        exec(b, promote.clone()).await,
        Outcome::Promoted(Ok(vec![]))
    );
    sleep_ms(1_200).await;
    assert_eq!(exec(b, promote).await, Outcome::Promoted(Ok(vec![id])));
    let again = claim(b, 1, 1).await.jobs[0].clone();
    assert_eq!(
        (again.receipt, again.attempt.0),
        (
            Receipt {
                job: id,
                epoch: Epoch(2)
            },
            1
        )
    );
}

/// A job with a backoff of its own retries after that policy's delay, not
/// the backend's (the suite's is 1 s), jitter included; and it keeps its
/// newest [`ErrorRecord::KEPT`] errors, oldest first.
pub async fn a_jobs_own_backoff_sets_its_delay_and_its_newest_errors_are_kept(b: &dyn Backend) {
    let hour = Millis::from_secs(3_600);
    let own = Backoff::new(hour, 2, Millis(4 * hour.0), 500).expect("a valid policy");
    let mut j = job("k");
    j.max_attempts = 30;
    j.backoff = Some(own);
    let id = enqueue(b, vec![j]).await[0].id;
    assert_eq!(read(b, id).await.backoff, Some(own), "the policy is stored");
    let leader = elect(b, 9).await.expect("no other leader");
    let total = ErrorRecord::KEPT as u32 + 2;
    let draw = 7;
    for attempt in 1..=total {
        let receipt = claim(b, 1, 1).await.jobs[0].receipt;
        let last = attempt == total;
        let retry = if last {
            Retry::Backoff
        } else {
            Retry::After(Millis::ZERO)
        };
        let failure = Failure {
            receipt,
            error: FailError {
                retry,
                message: format!("attempt {attempt}"),
            },
            draw,
        };
        let before = now(b).await;
        let answer = run(
            b,
            cmd::Fail {
                failures: vec![failure],
            },
        )
        .await;
        let after = now(b).await;
        let answer = answer.expect("one failure is a valid batch");
        let [Ok(FailOutcome::Retrying { run_at })] = answer[..] else {
            panic!("attempt {attempt} of 30 is retried: {answer:?}")
        };
        if last {
            let delay = own.delay(Attempt(attempt), draw);
            assert_eq!(delay, Millis(4 * hour.0 - draw), "capped, less the draw");
            assert!(
                before.plus(delay) <= run_at && run_at <= after.plus(delay),
                "the job's own backoff: {before} + {delay} <= {run_at} <= {after} + {delay}"
            );
        } else {
            let promoted = run(b, cmd::Promote { leader, max: 10 }).await;
            assert_eq!(promoted, Ok(vec![id]), "attempt {attempt}");
        }
    }
    let kept = read(b, id).await.errors;
    let attempts: Vec<u32> = kept.iter().map(|e| e.attempt.0).collect();
    assert_eq!(
        attempts,
        (3..=total).collect::<Vec<u32>>(),
        "the newest, oldest first"
    );
    let messages: Vec<&str> = kept.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.first(), Some(&"attempt 3"));
    assert_eq!(messages.last(), Some(&format!("attempt {total}").as_str()));
    assert!(kept.windows(2).all(|w| w[0].at <= w[1].at));
}
