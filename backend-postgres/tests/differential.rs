//! The differential test: random command sequences applied to the core's
//! reference `World` and to Postgres, at the same explicit times, must give
//! the same outcome for every command and the same state at the end.
//!
//! `WEIR_DIFF_CASES` sets the number of cases (default 60, each of
//! `WEIR_DIFF_STEPS` commands, default 150); `WEIR_DIFF_SEED` replays one
//! case. A failure prints the seed, the step and both outcomes.
//!
//! A command the generator never sends is a command this test never
//! checks: `the_generator_produces_every_command` fails, naming it, if the
//! default cases leave any `Command` variant out (the list comes from serde,
//! `weir_core::variants`, not from a hand-kept copy).
//!
//! The same comparison runs in pooler mode through a transaction-pooling
//! PgBouncer (`WEIR_DIFF_POOLER_CASES`, default 8).

mod common;

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weir_core::cmd;
use weir_core::variants::Tally;
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, FailError, Failure, JobId, JobLimits, Kind,
    LeaderGrant, LeaseEpoch, Millis, NewJob, Outcome, Payload, Priority, ProcessId, QueueName,
    Receipt, Retry, SemaphoreName, SlotEpoch, SlotGrant, SlotIndex, Timestamp, UniqueKey, World,
    WorldConfig,
};
use weir_pg_harness::{pgbouncer, PoolMode};
use weir_postgres::{PgBackend, PgConfig, Pooler, Snapshot};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small numbers everywhere, so leases lapse, jobs go overdue, attempts
/// run out and batches overflow within a short run.
fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(1000),
            idle_threshold: Millis(400),
        },
        heartbeat_stale_after: Millis(300),
        backoff: Backoff::new(Millis(20), 2, Millis(500), 300).unwrap(),
        leader_ttl: Millis(700),
        limits: JobLimits {
            payload_bytes_max: 8,
            max_attempts_max: 4,
            timeout_max: Millis(2000),
            delay_max: Millis(5000),
        },
        batch_max: 4,
    }
}

const QUEUES: [&str; 2] = ["q0", "q1"];
const KINDS: [&str; 2] = ["k0", "k1"];
const SEMAPHORES: [&str; 2] = ["s0", "s1"];

/// What the generator has seen so far, to aim commands at real (and stale)
/// receipts, leases and grants.
#[derive(Default)]
struct Known {
    jobs: Vec<JobId>,
    receipts: Vec<Receipt>,
    claimers: Vec<(QueueName, ClaimerGrant)>,
    slots: Vec<(SemaphoreName, SlotGrant)>,
    leaders: Vec<LeaderGrant>,
    /// Aimed from the world's current state: receipts of running jobs,
    /// claimer grants that are live now, the live leader.
    live: Vec<Receipt>,
    live_claimers: Vec<(QueueName, ClaimerGrant)>,
    live_leader: Option<LeaderGrant>,
}

impl Known {
    fn aim(&mut self, world: &World, now: Timestamp) {
        self.live = world.jobs().filter_map(|job| job.receipt()).collect();
        self.live_claimers = world
            .all_claimers()
            .flat_map(|(queue, table)| {
                table.slots().filter_map(move |(slot, lease)| {
                    let process = lease.owner?;
                    (lease.expires_at > now).then(|| {
                        (
                            queue.clone(),
                            ClaimerGrant {
                                process,
                                slot,
                                lease_epoch: lease.lease_epoch,
                            },
                        )
                    })
                })
            })
            .collect();
        self.live_leader = world.leadership().leader_at(now);
    }

    fn learn(&mut self, command: &Command, outcome: &Outcome) {
        match outcome {
            Outcome::Enqueued(Ok(done)) => {
                for e in done {
                    if !self.jobs.contains(&e.id) {
                        self.jobs.push(e.id);
                    }
                }
            }
            Outcome::Claimed(Ok(claimed)) => {
                self.receipts
                    .extend(claimed.jobs.iter().map(|job| job.receipt));
            }
            Outcome::ClaimerAcquired(Ok((grant, _))) => {
                if let Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, .. }) = command {
                    self.claimers.push((queue.clone(), *grant));
                }
            }
            Outcome::SlotTried(Ok(grant)) => {
                if let Command::SlotTry(cmd::SlotTry { semaphore, .. }) = command {
                    self.slots.push((semaphore.clone(), *grant));
                }
            }
            Outcome::LeaderElected(Ok(grant)) => self.leaders.push(*grant),
            // Every answer is named, so a new one that hands out a
            // receipt, lease or grant must say how the generator learns it.
            Outcome::Enqueued(Err(_))
            | Outcome::Claimed(Err(_))
            | Outcome::ClaimerAcquired(Err(_))
            | Outcome::SlotTried(Err(_))
            | Outcome::LeaderElected(Err(_))
            | Outcome::Heartbeats(_)
            | Outcome::Completed(_)
            | Outcome::Failed(_)
            | Outcome::Snoozed(_)
            | Outcome::AttemptsCancelled(_)
            | Outcome::Waiting(_)
            | Outcome::Resumed(_)
            | Outcome::Cancelled(_)
            | Outcome::Retried(_)
            | Outcome::QueuePauseChanged(_)
            | Outcome::ClaimerReleased(_)
            | Outcome::SlotRenewed(_)
            | Outcome::SlotReleased(_)
            | Outcome::SessionEnded(_)
            | Outcome::LeaderResigned(_)
            | Outcome::Promoted(_)
            | Outcome::Rescued(_)
            | Outcome::Pruned(_) => {}
        }
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        Some(&items[rng.random_range(0..items.len())])
    }
}

/// Mostly one of the last few (live leases, current receipts), sometimes
/// any (stale ones).
fn pick_recent<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> Option<&'a T> {
    if rng.random_bool(0.8) {
        pick(rng, &items[items.len().saturating_sub(3)..])
    } else {
        pick(rng, items)
    }
}

fn queue(rng: &mut ChaCha8Rng) -> QueueName {
    QueueName::new(QUEUES[rng.random_range(0..QUEUES.len())]).unwrap()
}

fn process(rng: &mut ChaCha8Rng) -> ProcessId {
    ProcessId(rng.random_range(1..=3))
}

fn receipt(rng: &mut ChaCha8Rng, known: &Known) -> Receipt {
    // Now and then a late worker: an older receipt of a job that runs
    // again (rescued, or cancelled and retried, and claimed anew), whose
    // write must change nothing.
    if rng.random_bool(0.25) {
        let late: Vec<&Receipt> = known
            .receipts
            .iter()
            .filter(|r| {
                known
                    .live
                    .iter()
                    .any(|l| l.job == r.job && l.epoch > r.epoch)
            })
            .collect();
        if let Some(r) = pick(rng, &late) {
            return **r;
        }
    }
    if rng.random_bool(0.5) {
        if let Some(r) = pick(rng, &known.live) {
            return *r;
        }
    }
    match pick_recent(rng, &known.receipts) {
        Some(r) if rng.random_bool(0.9) => *r,
        _ => Receipt {
            job: JobId(rng.random_range(1..=40)),
            epoch: weir_core::Epoch(rng.random_range(0..=3)),
        },
    }
}

fn batch_len(rng: &mut ChaCha8Rng) -> usize {
    // batch_max is 4: one batch in twenty is too large.
    if rng.random_bool(0.05) {
        5
    } else {
        rng.random_range(0..=4)
    }
}

fn new_job(rng: &mut ChaCha8Rng, now: Timestamp) -> NewJob {
    let mut job = NewJob::new(
        queue(rng),
        Kind::new(KINDS[rng.random_range(0..KINDS.len())]).unwrap(),
        Payload(vec![7; rng.random_range(0..=8)]),
    );
    job.priority = Priority(rng.random_range(-1..=1));
    job.max_attempts = *pick(rng, &[1, 1, 2, 2, 3, 3, 4]).unwrap();
    job.timeout = Millis(*pick(rng, &[100, 250, 500, 1500]).unwrap());
    job.run_at = match rng.random_range(0..10) {
        0..=5 => None,
        6..=8 => Some(Timestamp(now.0 + rng.random_range(-50..400))),
        _ => Some(Timestamp(now.0 + 4000)),
    };
    if rng.random_bool(0.35) {
        job.unique_key = Some(UniqueKey::new(format!("u{}", rng.random_range(0..3))).unwrap());
    }
    // A third of the jobs retry on a backoff of their own, so the fail
    // batch's `backoff_delay` is compared with the core's here too. Drawn
    // from a generator seeded by what was drawn already, not from `rng`:
    // the cases every seed gave before (which the SQL mutants' tests rely
    // on) stay as they were.
    let seed = (now.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((job.priority.0 as u64) << 48)
        ^ (u64::from(job.max_attempts) << 40)
        ^ (job.timeout.0 << 16)
        ^ job.payload.0.len() as u64
        ^ job.run_at.map_or(0, |t| t.0 as u64).rotate_left(29);
    let mut own = ChaCha8Rng::seed_from_u64(seed);
    if own.random_bool(0.3) {
        let base = own.random_range(0..=60);
        let cap = base + own.random_range(0..=600);
        let factor = own.random_range(1..=4);
        let jitter = *pick(&mut own, &[0, 0, 250, 1000]).unwrap();
        job.backoff = Some(Backoff::new(Millis(base), factor, Millis(cap), jitter).unwrap());
        if own.random_bool(0.05) {
            // A cap past `delay_max`: refused.
            job.backoff = Some(Backoff::constant(Millis(5001)));
        }
    }
    // Now and then, something invalid.
    match rng.random_range(0..60) {
        0 => job.max_attempts = 0,
        1 => job.max_attempts = 9,
        2 => job.timeout = Millis(0),
        3 => job.timeout = Millis(9000),
        4 => job.payload = Payload(vec![1; 9]),
        5 => job.run_at = Some(Timestamp(now.0 + 5001)),
        _ => {}
    }
    job
}

fn leader(rng: &mut ChaCha8Rng, known: &Known) -> LeaderGrant {
    if let Some(g) = known.live_leader.filter(|_| rng.random_bool(0.7)) {
        return g;
    }
    match pick_recent(rng, &known.leaders) {
        Some(g) if rng.random_bool(0.9) => *g,
        _ => LeaderGrant {
            process: process(rng),
            term: weir_core::LeaderTerm(rng.random_range(0..=3)),
        },
    }
}

fn slot_grant(rng: &mut ChaCha8Rng, known: &Known) -> (SemaphoreName, SlotGrant) {
    match pick(rng, &known.slots) {
        Some(g) if rng.random_bool(0.85) => g.clone(),
        _ => (
            SemaphoreName::new(SEMAPHORES[rng.random_range(0..2)]).unwrap(),
            SlotGrant {
                slot: SlotIndex(rng.random_range(0..3)),
                epoch: SlotEpoch(rng.random_range(0..3)),
                holder: process(rng),
            },
        ),
    }
}

/// One random command, aimed by what `known` has seen. Every `Command`
/// variant has its range (`the_generator_produces_every_command` checks).
fn command(rng: &mut ChaCha8Rng, known: &Known, now: Timestamp) -> Command {
    match rng.random_range(0..103) {
        0..=13 => Command::Enqueue(cmd::Enqueue {
            jobs: (0..batch_len(rng)).map(|_| new_job(rng, now)).collect(),
        }),
        14..=21 => Command::ClaimerAcquire(cmd::ClaimerAcquire {
            queue: queue(rng),
            process: process(rng),
        }),
        22..=35 => {
            if known.live_claimers.is_empty() && rng.random_bool(0.7) {
                return Command::ClaimerAcquire(cmd::ClaimerAcquire {
                    queue: queue(rng),
                    process: process(rng),
                });
            }
            let live = if rng.random_bool(0.8) {
                pick(rng, &known.live_claimers)
            } else {
                None
            };
            let (queue, claimer) = match live.or_else(|| pick_recent(rng, &known.claimers)) {
                Some(c) if rng.random_bool(0.9) => c.clone(),
                _ => (
                    queue(rng),
                    ClaimerGrant {
                        process: process(rng),
                        slot: weir_core::ClaimerSlot(rng.random_range(0..2)),
                        lease_epoch: LeaseEpoch(rng.random_range(1..3)),
                    },
                ),
            };
            let kinds = rng
                .random_bool(0.2)
                .then(|| BTreeSet::from([Kind::new(KINDS[rng.random_range(0..2)]).unwrap()]));
            Command::Claim(cmd::Claim {
                queue,
                claimer,
                max: if rng.random_bool(0.9) {
                    rng.random_range(1..=4)
                } else {
                    batch_len(rng) as u32
                },
                kinds,
            })
        }
        36..=41 => Command::Heartbeat(cmd::Heartbeat {
            receipts: (0..batch_len(rng)).map(|_| receipt(rng, known)).collect(),
        }),
        42..=51 => Command::Complete(cmd::Complete {
            receipts: (0..batch_len(rng)).map(|_| receipt(rng, known)).collect(),
        }),
        52..=58 => Command::Fail(cmd::Fail {
            failures: (0..batch_len(rng))
                .map(|_| Failure {
                    receipt: receipt(rng, known),
                    error: FailError {
                        retry: match rng.random_range(0..4) {
                            0 => Retry::Never,
                            1 => Retry::After(Millis(rng.random_range(0..300))),
                            _ => Retry::Backoff,
                        },
                        message: "boom".to_string(),
                    },
                    draw: rng.random(),
                })
                .collect(),
        }),
        59..=61 => Command::Snooze(cmd::Snooze {
            snoozes: (0..batch_len(rng))
                .map(|_| (receipt(rng, known), Millis(rng.random_range(0..300))))
                .collect(),
        }),
        100..=102 => Command::CancelAttempts(cmd::CancelAttempts {
            receipts: (0..batch_len(rng)).map(|_| receipt(rng, known)).collect(),
        }),
        62..=64 => Command::WaitExternal(cmd::WaitExternal {
            waits: (0..batch_len(rng))
                .map(|_| (receipt(rng, known), Millis(rng.random_range(0..600))))
                .collect(),
        }),
        65..=67 => Command::ResumeExternal(cmd::ResumeExternal {
            receipt: receipt(rng, known),
        }),
        68..=70 => Command::Cancel(cmd::Cancel {
            job: pick(rng, &known.jobs).copied().unwrap_or(JobId(1)),
        }),
        71..=72 => Command::Retry(cmd::Retry {
            job: pick(rng, &known.jobs).copied().unwrap_or(JobId(1)),
        }),
        73 => Command::PauseQueue(cmd::PauseQueue { queue: queue(rng) }),
        74..=75 => Command::ResumeQueue(cmd::ResumeQueue { queue: queue(rng) }),
        76 => match pick(rng, &known.claimers) {
            Some((queue, claimer)) => Command::ClaimerRelease(cmd::ClaimerRelease {
                queue: queue.clone(),
                claimer: *claimer,
            }),
            None => Command::PauseQueue(cmd::PauseQueue { queue: queue(rng) }),
        },
        77..=81 => Command::SlotTry(cmd::SlotTry {
            semaphore: SemaphoreName::new(SEMAPHORES[rng.random_range(0..2)]).unwrap(),
            permits: *pick(rng, &[2, 2, 2, 2, 2, 2, 1, 0]).unwrap(),
            slot: SlotIndex(rng.random_range(0..3)),
            holder: process(rng),
            lease_ttl: rng
                .random_bool(0.6)
                .then(|| Millis(rng.random_range(1..500))),
        }),
        82..=83 => {
            let (semaphore, grant) = slot_grant(rng, known);
            Command::SlotRenew(cmd::SlotRenew {
                semaphore,
                grant,
                lease_ttl: Millis(rng.random_range(0..500)),
            })
        }
        84..=85 => {
            let (semaphore, grant) = slot_grant(rng, known);
            Command::SlotRelease(cmd::SlotRelease { semaphore, grant })
        }
        86 => Command::ProcessCrashed(cmd::ProcessCrashed {
            process: process(rng),
        }),
        87..=89 => Command::LeaderElect(cmd::LeaderElect {
            process: process(rng),
        }),
        90 => Command::LeaderResign(cmd::LeaderResign {
            leader: leader(rng, known),
        }),
        91..=93 => Command::Promote(cmd::Promote {
            leader: leader(rng, known),
            max: batch_len(rng) as u32,
        }),
        94..=96 => Command::Rescue(cmd::Rescue {
            leader: leader(rng, known),
            draw: rng.random(),
            max: batch_len(rng) as u32,
        }),
        97..=99 => Command::Prune(cmd::Prune {
            leader: leader(rng, known),
            older_than: Millis(rng.random_range(0..1500)),
            max: batch_len(rng) as u32,
        }),
        other => unreachable!("drawn from 0..103, got {other}"),
    }
}

/// The generator's whole state: its seeded draws, what it has seen, and
/// the clock it sends commands at.
struct Generator {
    rng: ChaCha8Rng,
    known: Known,
    now: Timestamp,
    /// Variants never sent (redrawn instead): only to show that the
    /// coverage guard notices a missing one.
    skip: Vec<&'static str>,
    /// Every slot try a lease (through a transaction pooler, a session
    /// hold is refused: it would record a borrowed server connection).
    leases_only: bool,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            known: Known::default(),
            now: Timestamp(1_000_000),
            skip: Vec::new(),
            leases_only: false,
        }
    }

    /// Moves the clock on and draws the next command, aimed at `world`'s
    /// current state.
    fn next(&mut self, world: &World) -> (Timestamp, Command) {
        let rng = &mut self.rng;
        let step_ms = *pick(rng, &[0, 1, 5, 10, 20, 20, 30, 50, 80, 120, 300, 700]).unwrap();
        self.now = Timestamp(self.now.0 + step_ms);
        self.known.aim(world, self.now);
        loop {
            let mut command = command(&mut self.rng, &self.known, self.now);
            if let (true, Command::SlotTry(cmd::SlotTry { lease_ttl, .. })) =
                (self.leases_only, &mut command)
            {
                lease_ttl.get_or_insert(Millis(250));
            }
            if !self.skip.contains(&weir_core::variants::of(&command)) {
                return (self.now, command);
            }
        }
    }

    /// Remembers what `outcome` handed out, to aim later commands.
    fn learn(&mut self, command: &Command, outcome: &Outcome) {
        self.known.learn(command, outcome);
    }
}

/// The world's state, abstracted like [`Snapshot`].
fn world_snapshot(world: &World) -> Snapshot {
    Snapshot {
        jobs: world.jobs().cloned().collect(),
        claimers: world
            .all_claimers()
            .filter(|(_, table)| table.slots().next().is_some())
            .map(|(queue, table)| {
                (
                    queue.clone(),
                    table.slots().map(|(slot, lease)| (slot, *lease)).collect(),
                )
            })
            .collect(),
        semaphores: world
            .semaphores()
            .map(|(name, sem)| {
                (
                    name.clone(),
                    (sem.permits(), sem.slots().map(|(_, slot)| *slot).collect()),
                )
            })
            .collect(),
        leadership: *world.leadership(),
        paused: QUEUES
            .iter()
            .map(|q| QueueName::new(*q).unwrap())
            .filter(|q| world.is_paused(q))
            .collect(),
    }
}

async fn compare_states(
    seed: u64,
    step: usize,
    world: &World,
    backend: &PgBackend,
) -> Result<(), String> {
    let expected = world_snapshot(world);
    let actual = backend.snapshot().await.expect("snapshot");
    if expected == actual {
        return Ok(());
    }
    let diff_jobs: Vec<_> = expected
        .jobs
        .iter()
        .zip(&actual.jobs)
        .filter(|(a, b)| a != b)
        .collect();
    Err(format!(
        "state differs after step {step} of seed {seed} (replay: WEIR_DIFF_SEED={seed}):\n\
         jobs differing: {diff_jobs:#?}\njob counts {} vs {}\n\
         claimers: {:?}\n     vs  {:?}\nsemaphores: {:?}\n       vs  {:?}\n\
         leader: {:?} vs {:?}\npaused: {:?} vs {:?}",
        expected.jobs.len(),
        actual.jobs.len(),
        expected.claimers,
        actual.claimers,
        expected.semaphores,
        actual.semaphores,
        expected.leadership,
        actual.leadership,
        expected.paused,
        actual.paused
    ))
}

/// A coarse label of what an outcome did, for the coverage table: a
/// generator that never reaches a success would prove little.
fn label(outcome: &Outcome) -> String {
    fn items<T>(r: &weir_core::BatchResult<T>) -> &'static str {
        match r {
            Err(_) => "refused",
            Ok(v) if v.iter().any(|i| i.is_ok()) => "some-ok",
            Ok(v) if v.is_empty() => "empty",
            Ok(_) => "all-rejected",
        }
    }
    fn one<T>(r: &Result<T, weir_core::Reject>) -> &'static str {
        if r.is_ok() {
            "ok"
        } else {
            "rejected"
        }
    }
    fn some<T>(r: &Result<Vec<T>, weir_core::Reject>) -> &'static str {
        match r {
            Err(_) => "rejected",
            Ok(v) if v.is_empty() => "none",
            Ok(_) => "some",
        }
    }
    fn changed(changed: bool) -> &'static str {
        if changed {
            "changed"
        } else {
            "no-op"
        }
    }
    let what = match outcome {
        Outcome::Enqueued(r) => one(r),
        Outcome::Claimed(Ok(c)) if c.jobs.is_empty() => "empty",
        Outcome::Claimed(Ok(c)) if c.lease_refreshed => "jobs+refresh",
        Outcome::Claimed(r) => one(r),
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => items(r),
        Outcome::Failed(r) => items(r),
        Outcome::Resumed(r) | Outcome::Retried(r) | Outcome::SlotRenewed(r) => one(r),
        Outcome::Cancelled(r) => one(r),
        Outcome::ClaimerAcquired(Ok((_, how))) => match how {
            weir_core::Acquired::Reused => "reused",
            weir_core::Acquired::TakenOver => "taken-over",
            weir_core::Acquired::Opened => "opened",
        },
        Outcome::ClaimerAcquired(Err(_)) => "rejected",
        Outcome::SlotTried(r) => one(r),
        Outcome::LeaderElected(r) => one(r),
        Outcome::QueuePauseChanged(b)
        | Outcome::ClaimerReleased(b)
        | Outcome::SlotReleased(b)
        | Outcome::LeaderResigned(b) => changed(*b),
        Outcome::SessionEnded(freed) => changed(!freed.is_empty()),
        Outcome::Promoted(r) | Outcome::Pruned(r) => some(r),
        Outcome::Rescued(r) => some(r),
    };
    format!("{}:{what}", weir_core::variants::of(outcome))
}

/// Whether a command changed something (at least one item accepted, at
/// least one job moved, a flag flipped): a command the generator only
/// ever sends to be refused tests only the refusal.
fn did_something(outcome: &Outcome) -> bool {
    fn any_ok<T>(r: &weir_core::BatchResult<T>) -> bool {
        r.as_ref()
            .is_ok_and(|items| items.iter().any(Result::is_ok))
    }
    fn non_empty<T>(r: &Result<Vec<T>, weir_core::Reject>) -> bool {
        r.as_ref().is_ok_and(|v| !v.is_empty())
    }
    match outcome {
        Outcome::Enqueued(r) => non_empty(r),
        Outcome::Claimed(r) => r.as_ref().is_ok_and(|c| !c.jobs.is_empty()),
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => any_ok(r),
        Outcome::Failed(r) => any_ok(r),
        Outcome::Resumed(r) | Outcome::Retried(r) | Outcome::SlotRenewed(r) => r.is_ok(),
        Outcome::Cancelled(r) => r.is_ok(),
        Outcome::ClaimerAcquired(r) => r.is_ok(),
        Outcome::SlotTried(r) => r.is_ok(),
        Outcome::LeaderElected(r) => r.is_ok(),
        Outcome::QueuePauseChanged(b)
        | Outcome::ClaimerReleased(b)
        | Outcome::SlotReleased(b)
        | Outcome::LeaderResigned(b) => *b,
        Outcome::SessionEnded(freed) => !freed.is_empty(),
        Outcome::Promoted(r) | Outcome::Pruned(r) => non_empty(r),
        Outcome::Rescued(r) => non_empty(r),
    }
}

/// What a run sent: outcome labels, and the commands (all of them, and
/// those that changed something), by variant.
struct Coverage {
    labels: std::collections::BTreeMap<String, usize>,
    sent: Tally,
    effective: Tally,
}

impl Coverage {
    fn new() -> Coverage {
        Coverage {
            labels: std::collections::BTreeMap::new(),
            sent: Tally::of::<Command>(),
            effective: Tally::of::<Command>(),
        }
    }

    fn record(&mut self, command: &Command, outcome: &Outcome) {
        *self.labels.entry(label(outcome)).or_default() += 1;
        self.sent.record(command);
        if did_something(outcome) {
            self.effective.record(command);
        }
    }

    /// `Ok` when every variant was sent, and every one changed something
    /// at least once; otherwise what was not, by name.
    fn complete(&self) -> Result<(), String> {
        self.sent
            .complete("the differential generator never produced")?;
        self.effective
            .complete("the differential generator never produced an effective")
    }
}

/// Why a case stopped early.
enum CaseError {
    /// The world and Postgres disagreed.
    Differs(String),
    /// The world itself panicked (a mutated world breaking its own checks).
    WorldPanicked,
}

/// The jobs a worker's batch names, one per item, in item order, and
/// whether the world refused each item (a refusal of the whole batch
/// refuses every item). `None` for commands that are not such a batch.
fn refused_items(command: &Command, outcome: &Outcome) -> Option<Vec<(JobId, bool)>> {
    fn refused<T>(items: &weir_core::BatchResult<T>, n: usize) -> Vec<bool> {
        match items {
            Ok(items) => items.iter().map(Result::is_err).collect(),
            Err(_) => vec![true; n],
        }
    }
    let jobs: Vec<JobId> = match command {
        Command::Heartbeat(cmd::Heartbeat { receipts })
        | Command::Complete(cmd::Complete { receipts })
        | Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
            receipts.iter().map(|r| r.job).collect()
        }
        Command::Fail(cmd::Fail { failures }) => failures.iter().map(|f| f.receipt.job).collect(),
        Command::Snooze(cmd::Snooze { snoozes: items })
        | Command::WaitExternal(cmd::WaitExternal { waits: items }) => {
            items.iter().map(|(r, _)| r.job).collect()
        }
        Command::ResumeExternal(cmd::ResumeExternal { receipt }) => vec![receipt.job],
        _ => return None,
    };
    let n = jobs.len();
    let flags = match outcome {
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => refused(r, n),
        Outcome::Failed(r) => refused(r, n),
        Outcome::Resumed(r) => vec![r.is_err()],
        _ => return None,
    };
    assert_eq!(flags.len(), n, "{command:?} answered {outcome:?}");
    Some(jobs.into_iter().zip(flags).collect())
}

/// Every column of the rows of `ids`, as JSON text, by id. One unnamed
/// statement in a transaction of its own, so it also runs through a
/// transaction-pooling PgBouncer (pooler mode).
async fn rows(backend: &PgBackend, ids: &[i64]) -> std::collections::BTreeMap<i64, String> {
    let mut tx = backend.pool().begin().await.expect("begin");
    let rows = sqlx::query_as::<_, (i64, String)>(
        "SELECT j.id, row_to_json(j)::text FROM weir.jobs j WHERE j.id = ANY ($1)",
    )
    .bind(ids)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await
    .expect("read the batch's rows");
    tx.commit().await.expect("commit");
    rows.into_iter().collect()
}

/// Runs one case against `world`; returns the number of commands applied.
/// After every worker batch, each job whose every item the world refused
/// must have kept its Postgres row exactly (a refused write that still
/// wrote would otherwise heal before the next full comparison).
async fn run_case(
    backend: &PgBackend,
    seed: u64,
    steps: usize,
    coverage: &mut Coverage,
    mut world: World,
) -> Result<usize, CaseError> {
    run_case_with(backend, None, seed, steps, coverage, &mut world).await
}

/// [`run_case`] against a backend whose SQL makes one deliberate mistake.
async fn run_case_with(
    backend: &PgBackend,
    mutation: Option<weir_postgres::SqlMutation>,
    seed: u64,
    steps: usize,
    coverage: &mut Coverage,
    world: &mut World,
) -> Result<usize, CaseError> {
    common::reset(backend).await;
    // A new backend value, so its explicit-time clamp starts afresh.
    let (pool, pg_config) = (backend.pool().clone(), backend.config().clone());
    let backend = match mutation {
        None => PgBackend::new(pool, pg_config),
        Some(mutation) => PgBackend::mutated(pool, pg_config, mutation),
    }
    .unwrap();
    let mut generator = Generator::new(seed);
    generator.leases_only = backend.config().pooler == Pooler::Transaction;
    let mut history = Vec::new();
    for step in 0..steps {
        let (now, command) = generator.next(world);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            world.apply(now, command.clone())
        }));
        let Ok(expected) = applied else {
            return Err(CaseError::WorldPanicked);
        };
        let items = refused_items(&command, &expected);
        let named: Vec<i64> = items.iter().flatten().map(|(job, _)| job.0).collect();
        let before = match &items {
            Some(_) => rows(&backend, &named).await,
            None => Default::default(),
        };
        let actual = backend
            .execute_at(now, command.clone())
            .await
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: {command:?} failed: {e}"));
        history.push(format!("{step} @{}: {command:?}", now.0));
        if expected != actual {
            let tail = history[history.len().saturating_sub(12)..].join("\n");
            return Err(CaseError::Differs(format!(
                "outcome differs at step {step} of seed {seed} (replay: WEIR_DIFF_SEED={seed})\n\
                 last commands:\n{tail}\nworld:    {expected:?}\npostgres: {actual:?}"
            )));
        }
        if let Some(items) = &items {
            let after = rows(&backend, &named).await;
            for (job, _) in items {
                let all_refused = items.iter().all(|(j, refused)| j != job || *refused);
                if all_refused && before.get(&job.0) != after.get(&job.0) {
                    let tail = history[history.len().saturating_sub(12)..].join("\n");
                    return Err(CaseError::Differs(format!(
                        "a refused item changed its row at step {step} of seed {seed} \
                         (replay: WEIR_DIFF_SEED={seed})\nlast commands:\n{tail}\n\
                         answer: {expected:?}\njob {}: {:?}\n   now: {:?}",
                        job.0,
                        before.get(&job.0),
                        after.get(&job.0)
                    )));
                }
            }
        }
        coverage.record(&command, &expected);
        generator.learn(&command, &expected);
        if step % 40 == 39 {
            compare_states(seed, step, world, &backend)
                .await
                .map_err(CaseError::Differs)?;
        }
    }
    compare_states(seed, steps, world, &backend)
        .await
        .map_err(CaseError::Differs)?;
    Ok(steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gives_the_worlds_outcomes_and_state() {
    let (_db, backend) = common::backend(config()).await;
    let steps = env_usize("WEIR_DIFF_STEPS", STEPS);
    let seeds: Vec<u64> = match std::env::var("WEIR_DIFF_SEED") {
        Ok(seed) => vec![seed.parse().expect("WEIR_DIFF_SEED is a number")],
        Err(_) => (0..env_usize("WEIR_DIFF_CASES", CASES) as u64).collect(),
    };
    let started = std::time::Instant::now();
    let mut commands = 0;
    let mut coverage = Coverage::new();
    for &seed in &seeds {
        match run_case(&backend, seed, steps, &mut coverage, World::new(config())).await {
            Ok(applied) => commands += applied,
            Err(CaseError::Differs(why)) => panic!("{why}"),
            Err(CaseError::WorldPanicked) => panic!("the world panicked on seed {seed}"),
        }
    }
    eprintln!("coverage (outcome: count): {:#?}", coverage.labels);
    eprintln!("commands sent: {}", coverage.sent);
    eprintln!(
        "differential: {} cases, {commands} commands, outcomes and states identical ({:.1?})",
        seeds.len(),
        started.elapsed()
    );
    // Longer runs extend the default ones (same seeds, same prefixes), so
    // they cover at least as much; a single replayed seed need not.
    if seeds.len() >= CASES && steps >= STEPS {
        coverage
            .complete()
            .unwrap_or_else(|missing| panic!("{missing}"));
    }
}

/// The cases and steps the differential test runs by default.
const CASES: usize = 60;
const STEPS: usize = 150;

/// What the generator sends in the default cases, against the world
/// alone, never sending the variants in `skip`.
///
/// These are the very sequences `postgres_gives_the_worlds_outcomes_and_state`
/// sends Postgres by default: the generator is steered only by its seed
/// and by the outcomes it sees, and that test fails unless Postgres gives
/// the world's outcomes. So this needs no database, and is cheap enough to
/// run on every `cargo test`.
fn generated(skip: &[&'static str]) -> Coverage {
    let mut coverage = Coverage::new();
    for seed in 0..CASES as u64 {
        let mut world = World::new(config());
        let mut generator = Generator::new(seed);
        generator.skip = skip.to_vec();
        for _ in 0..STEPS {
            let (now, command) = generator.next(&world);
            let outcome = world.apply(now, command.clone());
            coverage.record(&command, &outcome);
            generator.learn(&command, &outcome);
        }
    }
    coverage
}

/// The guard: every `Command` variant (as serde lists them) is produced by
/// the generator in the default cases, and changes something at least
/// once, so a command no backend is ever sent cannot go unnoticed here.
#[test]
fn the_generator_produces_every_command() {
    let coverage = generated(&[]);
    eprintln!("commands sent: {}", coverage.sent);
    eprintln!("commands that changed something: {}", coverage.effective);
    coverage
        .complete()
        .unwrap_or_else(|missing| panic!("{missing}"));
}

/// The guard can fail: with any one variant held back from the generator,
/// it fails and names that variant (beside any that only follow from it:
/// without `ClaimerAcquire` there is no lease to release).
#[test]
fn the_generator_guard_names_a_command_it_never_produced() {
    for &variant in weir_core::variants::all::<Command>() {
        let coverage = generated(&[variant]);
        assert!(
            coverage.sent.missing().contains(&variant),
            "{variant} was held back: {}",
            coverage.sent
        );
        let message = coverage.complete().expect_err("a variant is missing");
        let first = message.lines().next().expect("a message");
        assert!(
            first.starts_with("the differential generator never produced: ")
                && first.contains(variant),
            "{message}"
        );
    }
}

/// The differential test can fail: against a world that makes one
/// deliberate mistake (the core's `mutants`), some seed shows a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_with_a_deliberate_bug_is_told_apart() {
    let (_db, backend) = common::backend(config()).await;
    let mut coverage = Coverage::new();
    let mut report = Vec::new();
    use weir_core::Mutation;
    // Mutations whose first wrong step breaks a state invariant the
    // world checks after every command in debug builds: the world panics
    // at that very step, before any comparison, on every seed that
    // reaches it. For these the test requires that panic (the mutant
    // was reached and caught), not a difference.
    let caught_by_the_world_first = [
        Mutation::RetryPastMaxAttempts,
        Mutation::ClaimerOpensPastLimit,
    ];
    // Mutations of code the Postgres backend shares (it calls these core
    // functions itself): the mutated backend would make the same mistake,
    // so a difference here comes only from this test's backend running the
    // real code, and none is required. The step invariants are what see
    // these (`model-check/README.md`, "Mutants and the checkers that
    // catch them").
    let shared = [
        Mutation::SlotReleaseIgnoresEpoch,
        Mutation::RescueOfFreshJob,
        Mutation::ClaimerOpensPastLimit,
    ];
    for mutation in Mutation::ALL {
        if mutation == Mutation::ScanStopsAtError {
            continue; // a mutation of `Acquisition`, not of the world
        }
        let first_by_world = caught_by_the_world_first.contains(&mutation);
        let mut verdict = None;
        for seed in 0..40 {
            let world = World::new(config()).with_mutation(mutation);
            match run_case(&backend, seed, 150, &mut coverage, world).await {
                Ok(_) => {}
                Err(CaseError::Differs(_)) if !first_by_world => {
                    verdict = Some(format!("{mutation:?}: told apart by seed {seed}"));
                    break;
                }
                Err(CaseError::Differs(why)) => {
                    panic!("{mutation:?} differed before the world's checks saw it: {why}")
                }
                Err(CaseError::WorldPanicked) if first_by_world => {
                    verdict = Some(format!(
                        "{mutation:?}: the world's own checks caught it at seed {seed}"
                    ));
                    break;
                }
                // The world's own invariant checks caught it first; try
                // another seed for a difference the comparison finds.
                Err(CaseError::WorldPanicked) => {}
            }
        }
        let verdict = match (verdict, shared.contains(&mutation)) {
            (Some(v), false) => v,
            (Some(v), true) => format!("{v} (shared code: not a finding of this test)"),
            (None, true) => format!("{mutation:?}: not told apart (shared code, not required)"),
            (None, false) => panic!("{mutation:?} was never told apart"),
        };
        report.push(verdict);
    }
    eprintln!("{}", report.join("\n"));
}

/// The differential test can fail on the SQL side: each SQL mutation one
/// serial client can see (`SqlMutation::SERIAL`) is told apart from the
/// world within 40 seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serial_sql_mutation_is_told_apart() {
    let (_db, backend) = common::backend(config()).await;
    let mut coverage = Coverage::new();
    let mut report = Vec::new();
    for mutation in weir_postgres::SqlMutation::SERIAL {
        let mut verdict = None;
        for seed in 0..40 {
            let mut world = World::new(config());
            let case = run_case_with(
                &backend,
                Some(mutation),
                seed,
                150,
                &mut coverage,
                &mut world,
            )
            .await;
            match case {
                Ok(_) => {}
                Err(CaseError::Differs(why)) => {
                    let first = why.lines().next().unwrap_or("").to_string();
                    verdict = Some(format!("{mutation:?}: seed {seed}: {first}"));
                    break;
                }
                Err(CaseError::WorldPanicked) => panic!("the real world panicked on seed {seed}"),
            }
        }
        report.push(verdict.unwrap_or_else(|| panic!("{mutation:?} went unnoticed in 40 seeds")));
    }
    eprintln!("{}", report.join("\n"));
}

/// Pooler mode gives the same outcomes and states: the backend through
/// Debian's PgBouncer 1.18 in transaction pooling (2 server connections for
/// the pool's 4), every statement unnamed inside a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_a_transaction_pooler_gives_the_worlds_outcomes_and_state() {
    let (db, direct) = common::backend(config()).await;
    let bouncer = pgbouncer(&db, PoolMode::Transaction, 2).await;
    let pooled = PgConfig {
        pooler: Pooler::Transaction,
        ..direct.config().clone()
    };
    let backend = PgBackend::connect(bouncer.app_url(), 4, pooled)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (mut commands, mut coverage) = (0, Coverage::new());
    let cases = env_usize("WEIR_DIFF_POOLER_CASES", 8) as u64;
    for seed in 0..cases {
        match run_case(&backend, seed, 150, &mut coverage, World::new(config())).await {
            Ok(applied) => commands += applied,
            Err(CaseError::Differs(why)) => panic!("in pooler mode: {why}"),
            Err(CaseError::WorldPanicked) => panic!("the world panicked on seed {seed}"),
        }
    }
    eprintln!(
        "differential in pooler mode: {cases} cases, {commands} commands, identical ({:.1?})",
        started.elapsed()
    );
}

/// The per-step row check can fail: a heartbeat whose SQL writes every
/// running job it names (a stale receipt refused in the answer, but its
/// job's newer attempt's `heartbeat_at` moved anyway) is caught at the
/// step it happens, naming the job and both rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_heartbeat_that_still_writes_its_row_is_caught_at_once() {
    let (_db, backend) = common::backend(config()).await;
    let mut coverage = Coverage::new();
    let mutation = weir_postgres::SqlMutation::HeartbeatWritesStale;
    for seed in 0..40 {
        let mut world = World::new(config());
        match run_case_with(
            &backend,
            Some(mutation),
            seed,
            150,
            &mut coverage,
            &mut world,
        )
        .await
        {
            Ok(_) => {}
            Err(CaseError::Differs(why)) => {
                assert!(
                    why.starts_with("a refused item changed its row") && why.contains("Heartbeat"),
                    "{mutation:?} was told apart, but not by the row check: {why}"
                );
                eprintln!(
                    "{mutation:?}: caught by seed {seed}: {}",
                    why.lines().next().unwrap_or("")
                );
                return;
            }
            Err(CaseError::WorldPanicked) => panic!("the world panicked on seed {seed}"),
        }
    }
    panic!("{mutation:?} went unnoticed in 40 seeds");
}
