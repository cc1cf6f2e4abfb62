//! What the simulated world is asked to do: the jobs a client enqueues, how
//! long each handler runs and what it decides, and how each simulated
//! process is configured. All of it is drawn from the seeded RNG.

use std::collections::BTreeSet;

use rand::seq::IndexedRandom;
use rand::Rng;
use weir_core::{
    Backoff, ClaimedJob, ClaimerConfig, DispatcherConfig, FailError, HandlerResult, JobLimits,
    Kind, Limit, LimitConfig, Millis, NewJob, Payload, Priority, ProcessId, QueueConfig, QueueName,
    Retry, SemaphoreName, Timestamp, UniqueKey, WaitConfig, WorldConfig,
};

/// The world's timings. Short, so that a few virtual seconds see leases
/// lapse, heartbeats go stale and leaders change; in the ratios a
/// production configuration keeps (heartbeats well inside the staleness
/// limit, maintenance well inside the leader lease).
pub(crate) const HEARTBEAT_STALE_AFTER: Millis = Millis(1_000);
pub(crate) const IDLE_THRESHOLD: Millis = Millis(1_500);
pub(crate) const CLAIMER_LEASE_TTL: Millis = Millis(3_000);
pub(crate) const LEADER_TTL: Millis = Millis(1_000);

/// The most items one command may carry, in every run.
pub(crate) const BATCH_MAX: usize = 1_000;

/// The world configuration for a run: everything fixed but K, the claimer
/// slots per queue, which is drawn so that some runs have fewer slots than
/// processes (claimers queue up and take idle slots over) and some do not.
pub(crate) fn world_config(rng: &mut impl Rng) -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: rng.random_range(1..=3),
            lease_ttl: CLAIMER_LEASE_TTL,
            idle_threshold: IDLE_THRESHOLD,
        },
        heartbeat_stale_after: HEARTBEAT_STALE_AFTER,
        backoff: Backoff::new(Millis(50), 2, Millis(2_000), 200).expect("a valid policy"),
        leader_ttl: LEADER_TTL,
        limits: JobLimits::default(),
        batch_max: BATCH_MAX,
    }
}

/// The names every run uses.
pub(crate) struct Names {
    pub queues: Vec<QueueName>,
    pub kinds: Vec<Kind>,
    pub semaphore: SemaphoreName,
}

impl Names {
    pub(crate) fn new() -> Names {
        let queue = |s: &str| QueueName::new(s).expect("a valid queue name");
        let kind = |s: &str| Kind::new(s).expect("a valid kind");
        Names {
            queues: vec![queue("default"), queue("bulk")],
            kinds: vec![
                kind("email.send"),
                kind("report.build"),
                kind("image.thumb"),
            ],
            semaphore: SemaphoreName::new("sim.warmup").expect("a valid semaphore name"),
        }
    }
}

/// One process slot's configuration (each incarnation gets a new id).
pub(crate) fn dispatcher_config(
    rng: &mut impl Rng,
    index: usize,
    names: &Names,
    queue_limit: Option<u16>,
) -> DispatcherConfig {
    let queues = names
        .queues
        .iter()
        .map(|queue| QueueConfig {
            queue: queue.clone(),
            max_workers: rng.random_range(1..=12),
        })
        .collect();
    // Process 0 runs every kind, so no kind can starve in the liveness phase.
    let kinds = if index == 0 || rng.random_ratio(2, 3) {
        None
    } else {
        let mut some: BTreeSet<Kind> = BTreeSet::new();
        while some.is_empty() {
            some = names
                .kinds
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect();
        }
        Some(some)
    };
    DispatcherConfig {
        process: ProcessId(0),
        queues,
        kinds,
        claim_batch_max: rng.random_range(1..=16),
        claim_batch_min: rng.random_range(1..=8),
        claim_delay: Millis(rng.random_range(0..=40)),
        poll_interval: Millis(rng.random_range(20..=200)),
        flush_max: rng.random_range(1..=32),
        flush_delay: Millis(rng.random_range(0..=20)),
        heartbeat_interval: Millis(rng.random_range(100..=250)),
        lead: true,
        maintenance_interval: Millis(rng.random_range(100..=250)),
        retention: Millis(rng.random_range(500..=2_000)),
        shutdown_timeout: Millis(rng.random_range(1_000..=3_000)),
        stop_grace: Millis(rng.random_range(20..=400)),
        retry_after: Millis(rng.random_range(20..=200)),
        batch_max: BATCH_MAX,
        queue_limits: queue_limit
            .map(|permits| (names.queues[1].clone(), permits))
            .into_iter()
            .collect(),
        limits: LimitConfig {
            lease_ttl: Millis(rng.random_range(300..=1_500)),
            retry_min: Millis(rng.random_range(10..=50)),
            retry_max: Millis(rng.random_range(50..=300)),
        },
    }
}

/// The bulk queue's cluster-wide limit, the same in every process: in most
/// runs a small one, so limit slots are taken, renewed, lost and missed.
pub(crate) fn queue_limit(rng: &mut impl Rng) -> Option<u16> {
    rng.random_ratio(2, 3).then(|| rng.random_range(1..=3))
}

/// The limits a job names itself (its handler's `concurrency`): reports
/// share a key limit of one per tenant, drawn from the payload.
pub(crate) fn job_limits(names: &Names, job: &ClaimedJob) -> Vec<Limit> {
    if job.kind != names.kinds[1] {
        return Vec::new();
    }
    let tenant = job.payload.0.first().copied().unwrap_or(0) % 3;
    vec![Limit::new(format!("sim.tenant:{tenant}"), 1).expect("a valid limit")]
}

/// How the processes use the shared semaphore.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SemaphoreSetup {
    pub permits: u16,
    pub wait: WaitConfig,
}

pub(crate) fn semaphore_setup(rng: &mut impl Rng) -> SemaphoreSetup {
    let retry_min = rng.random_range(10..=50);
    SemaphoreSetup {
        permits: rng.random_range(1..=3),
        wait: WaitConfig {
            retry_min: Millis(retry_min),
            retry_max: Millis(retry_min + rng.random_range(0..=100)),
            wait_max: Millis(rng.random_range(100..=1_500)),
        },
    }
}

/// How long one semaphore holding lasts, and whether it is a lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HoldPlan {
    pub hold_for: Millis,
    pub lease_ttl: Option<Millis>,
}

pub(crate) fn hold_plan(rng: &mut impl Rng) -> HoldPlan {
    // Some holdings outlast their lease many times over, so they renew,
    // and a pause in the middle lets the lease lapse.
    HoldPlan {
        hold_for: Millis(rng.random_range(10..=3_000)),
        lease_ttl: rng
            .random_bool(0.5)
            .then(|| Millis(rng.random_range(200..=1_000))),
    }
}

/// A job as a client enqueues it: either queue, any kind, a few
/// priorities, 1–5 attempts, mostly due now, some unique (so duplicates
/// happen), a few with a timeout short enough to be rescued by deadline.
pub(crate) fn new_job(rng: &mut impl Rng, names: &Names, now: Timestamp) -> NewJob {
    let queue = names.queues.choose(rng).expect("queues").clone();
    let kind = names.kinds.choose(rng).expect("kinds").clone();
    let n: u32 = rng.random();
    NewJob {
        priority: Priority(rng.random_range(0..3)),
        max_attempts: rng.random_range(1..=5),
        timeout: if rng.random_ratio(1, 10) {
            Millis(1_500)
        } else {
            Millis::from_secs(30)
        },
        run_at: rng
            .random_ratio(1, 5)
            .then(|| now.plus(Millis(rng.random_range(1..=3_000)))),
        unique_key: rng.random_ratio(1, 10).then(|| {
            UniqueKey::new(format!("key-{}", rng.random_range(0..20))).expect("a valid unique key")
        }),
        ..NewJob::new(queue, kind, Payload(n.to_le_bytes().to_vec()))
    }
}

/// How long a handler runs and what it decides. With faults on, handlers
/// fail, snooze, park for callbacks and cancel themselves, and a few run
/// for seconds (past a short job timeout); in the liveness phase they only
/// complete or fail, so every job can finish.
pub(crate) fn handler_plan(rng: &mut impl Rng, faults: bool) -> (Millis, HandlerResult) {
    let duration = match rng.random_range(0..100) {
        0..70 => rng.random_range(1..50),
        70..95 => rng.random_range(50..400),
        _ if faults => rng.random_range(400..3_000),
        _ => rng.random_range(50..400),
    };
    let fail = |retry| {
        HandlerResult::Fail(FailError {
            retry,
            message: "simulated failure".into(),
        })
    };
    let roll = rng.random_range(0..100);
    let result = match roll {
        _ if !faults && roll < 90 => HandlerResult::Complete,
        _ if !faults => fail(Retry::Backoff),
        0..72 => HandlerResult::Complete,
        72..82 => fail(Retry::Backoff),
        82..84 => fail(Retry::Never),
        84..87 => fail(Retry::After(Millis(rng.random_range(0..500)))),
        87..93 => HandlerResult::Snooze(Millis(rng.random_range(0..500))),
        93..97 => HandlerResult::WaitExternal(Millis(rng.random_range(200..3_000))),
        _ => HandlerResult::Cancel,
    };
    (Millis(duration), result)
}
