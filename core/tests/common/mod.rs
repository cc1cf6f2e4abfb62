//! Shared by the property tests: a random-operation generator and a run
//! that applies operations to a world with every invariant checked.

#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::BTreeSet;

use proptest::prelude::*;
use weir_core::cmd;
use weir_core::*;

pub const PROCESSES: u64 = 3;
pub const QUEUES: [&str; 2] = ["a", "b"];
pub const KINDS: [&str; 2] = ["x", "y"];

pub fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(400),
            idle_threshold: Millis(200),
        },
        heartbeat_stale_after: Millis(300),
        backoff: Backoff::new(Millis(10), 2, Millis(200), 500).unwrap(),
        leader_ttl: Millis(500),
        limits: JobLimits::default(),
        batch_max: 8,
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Enqueue {
        n: u8,
        delay_ms: u16,
        unique: Option<u8>,
        max_attempts: u8,
        queue: u8,
        kind: u8,
    },
    Claim {
        p: u8,
        queue: u8,
        max: u8,
        only_kind: Option<u8>,
    },
    ClaimWithOldGrant {
        g: u16,
        queue: u8,
        max: u8,
    },
    Heartbeat {
        r: u16,
    },
    Complete {
        r: u16,
        twice: bool,
    },
    Fail {
        r: u16,
        retry: u8,
        draw: u64,
    },
    Snooze {
        r: u16,
        delay_ms: u16,
    },
    WaitExternal {
        r: u16,
        timeout_ms: u16,
    },
    CancelAttempt {
        r: u16,
    },
    Resume {
        r: u16,
    },
    Cancel {
        job: u16,
    },
    Retry {
        job: u16,
    },
    Pause {
        queue: u8,
        paused: bool,
    },
    ClaimerRelease {
        p: u8,
        queue: u8,
    },
    Elect {
        p: u8,
    },
    Resign {
        p: u8,
    },
    Promote {
        p: u8,
    },
    Rescue {
        p: u8,
        draw: u64,
    },
    Prune {
        p: u8,
    },
    SlotTry {
        p: u8,
        slot: u8,
        lease: bool,
    },
    SlotRelease {
        g: u16,
    },
    Crash {
        p: u8,
    },
    Advance {
        ms: u16,
    },
}

pub fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROCESSES as u8;
    prop_oneof![
        3 => (1..4u8, prop_oneof![Just(0u16), 0..300u16], proptest::option::of(0..3u8), 1..4u8, 0..2u8, 0..2u8)
            .prop_map(|(n, delay_ms, unique, max_attempts, queue, kind)| Op::Enqueue { n, delay_ms, unique, max_attempts, queue, kind }),
        4 => (p.clone(), 0..2u8, 0..4u8, proptest::option::of(0..2u8)).prop_map(|(p, queue, max, only_kind)| Op::Claim { p, queue, max, only_kind }),
        1 => (any::<u16>(), 0..2u8, 0..10u8)
            .prop_map(|(g, queue, max)| Op::ClaimWithOldGrant { g, queue, max }),
        1 => any::<u16>().prop_map(|r| Op::Heartbeat { r }),
        3 => (any::<u16>(), any::<bool>()).prop_map(|(r, twice)| Op::Complete { r, twice }),
        2 => (any::<u16>(), 0..3u8, any::<u64>()).prop_map(|(r, retry, draw)| Op::Fail { r, retry, draw }),
        1 => (any::<u16>(), 0..200u16).prop_map(|(r, delay_ms)| Op::Snooze { r, delay_ms }),
        1 => (any::<u16>(), 0..400u16).prop_map(|(r, timeout_ms)| Op::WaitExternal { r, timeout_ms }),
        1 => any::<u16>().prop_map(|r| Op::Resume { r }),
        1 => any::<u16>().prop_map(|r| Op::CancelAttempt { r }),
        1 => any::<u16>().prop_map(|job| Op::Cancel { job }),
        1 => any::<u16>().prop_map(|job| Op::Retry { job }),
        1 => (0..2u8, any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        1 => (p.clone(), 0..2u8).prop_map(|(p, queue)| Op::ClaimerRelease { p, queue }),
        1 => p.clone().prop_map(|p| Op::Elect { p }),
        1 => p.clone().prop_map(|p| Op::Resign { p }),
        2 => p.clone().prop_map(|p| Op::Promote { p }),
        2 => (p.clone(), any::<u64>()).prop_map(|(p, draw)| Op::Rescue { p, draw }),
        1 => p.clone().prop_map(|p| Op::Prune { p }),
        2 => (p.clone(), 0..3u8, any::<bool>()).prop_map(|(p, slot, lease)| Op::SlotTry { p, slot, lease }),
        1 => any::<u16>().prop_map(|g| Op::SlotRelease { g }),
        1 => p.prop_map(|p| Op::Crash { p }),
        3 => (1..150u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The world plus what the processes remember: every receipt, claimer
/// grant, leader grant and slot grant ever handed out (old ones included,
/// so stale writes are exercised constantly).
pub struct Run {
    pub world: World,
    pub now: Timestamp,
    receipts: Vec<Receipt>,
    claimers: Vec<ClaimerGrant>,
    leaders: Vec<LeaderGrant>,
    slots: Vec<SlotGrant>,
    pub coverage: Coverage,
}

/// How often each interesting path was taken, so a generator that stopped
/// reaching a path is noticed instead of silently proving less.
#[derive(Default, Debug)]
pub struct Coverage {
    pub steps: u64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

impl Coverage {
    fn record(&mut self, outcome: &Outcome) {
        self.steps += 1;
        let mut note = |key: String| *self.outcomes.entry(key).or_default() += 1;
        let rejects = |r: &Reject| {
            format!(
                "reject:{}",
                format!("{r:?}").split([' ', '{', '(']).next().unwrap_or("")
            )
        };
        let kind = format!("{outcome:?}")
            .split('(')
            .next()
            .unwrap_or("")
            .to_string();
        match outcome {
            Outcome::Heartbeats(Ok(items))
            | Outcome::Completed(Ok(items))
            | Outcome::Snoozed(Ok(items))
            | Outcome::Waiting(Ok(items))
            | Outcome::AttemptsCancelled(Ok(items)) => {
                for item in items {
                    match item {
                        Ok(()) => note(format!("{kind}:ok")),
                        Err(r) => note(rejects(r)),
                    }
                }
            }
            Outcome::Failed(Ok(items)) => {
                for item in items {
                    match item {
                        Ok(FailOutcome::Retrying { .. }) => note("Failed:retrying".into()),
                        Ok(FailOutcome::Failed(_)) => note("Failed:failed".into()),
                        Err(r) => note(rejects(r)),
                    }
                }
            }
            Outcome::Rescued(Ok(items)) if !items.is_empty() => note("Rescued:some".into()),
            Outcome::Promoted(Ok(items)) if !items.is_empty() => note("Promoted:some".into()),
            Outcome::Pruned(Ok(items)) if !items.is_empty() => note("Pruned:some".into()),
            Outcome::Claimed(Ok(c)) if c.lease_refreshed => note("Claimed:refreshed".into()),
            Outcome::Cancelled(Ok(StateName::Running)) => note("Cancelled:running".into()),
            Outcome::Enqueued(Ok(items)) if items.iter().any(|e| e.duplicate) => {
                note("Enqueued:duplicate".into())
            }
            _ => {}
        }
        let err = match outcome {
            Outcome::Claimed(Err(r))
            | Outcome::Resumed(Err(r))
            | Outcome::Cancelled(Err(r))
            | Outcome::Retried(Err(r))
            | Outcome::ClaimerAcquired(Err(r))
            | Outcome::SlotTried(Err(r))
            | Outcome::LeaderElected(Err(r))
            | Outcome::Promoted(Err(r))
            | Outcome::Rescued(Err(r))
            | Outcome::Pruned(Err(r)) => Some(r),
            _ => None,
        };
        match err {
            Some(r) => note(rejects(r)),
            None => note(format!("{kind}:ok")),
        }
    }
}

fn pick<T: Copy>(items: &[T], i: u16) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(i) % items.len()])
}

fn name(list: &[&str], i: u8) -> String {
    list[usize::from(i) % list.len()].to_string()
}

impl Run {
    pub fn new() -> Run {
        Run::with_world(World::new(config()))
    }

    pub fn with_world(world: World) -> Run {
        Run {
            world,
            now: Timestamp(10_000),
            receipts: Vec::new(),
            claimers: Vec::new(),
            leaders: Vec::new(),
            slots: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    fn job_ids(&self) -> Vec<JobId> {
        self.world.jobs().map(|j| j.id).collect()
    }

    fn leader_of(&self, p: u8) -> LeaderGrant {
        // The newest grant this process ever got, or a made-up one (which
        // must be refused).
        self.leaders
            .iter()
            .rev()
            .find(|g| g.process == ProcessId(u64::from(p)))
            .copied()
            .unwrap_or(LeaderGrant {
                process: ProcessId(u64::from(p)),
                term: LeaderTerm(0),
            })
    }

    /// Applies one command with every check, and remembers what it handed out.
    fn apply(&mut self, command: Command) -> Outcome {
        let before = self.world.clone();
        let outcome = self.world.apply(self.now, command.clone());
        self.coverage.record(&outcome);
        if let Err(v) = World::check_step(&before, &command, &outcome, &self.world) {
            panic!("step invariant broken by {command:?} -> {outcome:?}: {v}");
        }
        if let Err(v) = self.world.check_invariants() {
            panic!("state invariant broken by {command:?}: {v}");
        }
        self.check_targeted(&before, &command, &outcome);
        match &outcome {
            Outcome::Claimed(Ok(c)) => self.receipts.extend(c.jobs.iter().map(|j| j.receipt)),
            Outcome::ClaimerAcquired(Ok((g, _))) => self.claimers.push(*g),
            Outcome::LeaderElected(Ok(g)) => self.leaders.push(*g),
            Outcome::SlotTried(Ok(g)) => self.slots.push(*g),
            _ => {}
        }
        outcome
    }

    /// [`Self::apply`] of one request, answered with its own type.
    fn run<R: Request>(&mut self, request: R) -> R::Output {
        answer_of::<R>(self.apply(request.into()))
    }

    /// Properties of one step beyond the invariants.
    fn check_targeted(&self, before: &World, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            // Snooze never changes the attempt count: the attempt the claim
            // took is given back.
            (Command::Snooze(cmd::Snooze { snoozes }), Outcome::Snoozed(Ok(results))) => {
                for ((receipt, _), result) in snoozes.iter().zip(results) {
                    if result.is_ok() {
                        let was = before.job(receipt.job).unwrap().attempt.0;
                        let now = self.world.job(receipt.job).unwrap().attempt.0;
                        assert_eq!(
                            now + 1,
                            was,
                            "snooze must refund exactly the claimed attempt"
                        );
                    }
                }
            }
            // Cancel of a running job: the holder's completion is refused.
            (Command::Cancel(cmd::Cancel { job }), Outcome::Cancelled(Ok(StateName::Running))) => {
                let receipt = before.job(*job).unwrap().receipt().unwrap();
                let mut probe = self.world.clone();
                let late = probe.apply(
                    self.now,
                    Command::Complete(cmd::Complete {
                        receipts: vec![receipt],
                    }),
                );
                assert!(
                    matches!(&late, Outcome::Completed(Ok(r)) if matches!(r[0], Err(Reject::StaleEpoch { .. }))),
                    "holder of a cancelled job completed it: {late:?}"
                );
                assert_eq!(probe.job(*job), self.world.job(*job));
            }
            // A busy claimer keeps its slot: a grant that claimed jobs
            // within min(idle, ttl)/2 is still valid now.
            (Command::Claim(cmd::Claim { queue, claimer, .. }), Outcome::Claimed(Ok(c)))
                if !c.jobs.is_empty() =>
            {
                let lease = self
                    .world
                    .claimers(queue)
                    .unwrap()
                    .lease(claimer.slot)
                    .unwrap();
                let cfg = config().claimer;
                let safe = Millis(cfg.idle_threshold.half().0.min(cfg.lease_ttl.half().0));
                let horizon = self.now.plus(safe);
                assert!(!lease.is_takeable(horizon.minus(Millis(1)), cfg.idle_threshold));
            }
            _ => {}
        }
    }

    pub fn step(&mut self, op: Op) {
        let q = |i| QueueName::new(name(&QUEUES, i)).unwrap();
        let command = match op {
            Op::Enqueue {
                n,
                delay_ms,
                unique,
                max_attempts,
                queue,
                kind,
            } => {
                let jobs = (0..n)
                    .map(|_| NewJob {
                        max_attempts: u32::from(max_attempts),
                        timeout: Millis(1_000),
                        run_at: (delay_ms > 0).then(|| self.now.plus(Millis(u64::from(delay_ms)))),
                        unique_key: unique.map(|u| UniqueKey::new(format!("k{u}")).unwrap()),
                        priority: Priority(i16::from(n % 2)),
                        ..NewJob::new(
                            q(queue),
                            Kind::new(name(&KINDS, kind)).unwrap(),
                            Payload::default(),
                        )
                    })
                    .collect();
                Command::Enqueue(cmd::Enqueue { jobs })
            }
            Op::Claim {
                p,
                queue,
                max,
                only_kind,
            } => {
                let process = ProcessId(u64::from(p));
                let acquired = self.run(cmd::ClaimerAcquire {
                    queue: q(queue),
                    process,
                });
                let Ok((claimer, _)) = acquired else {
                    return;
                };
                let kinds =
                    only_kind.map(|k| BTreeSet::from([Kind::new(name(&KINDS, k)).unwrap()]));
                Command::Claim(cmd::Claim {
                    queue: q(queue),
                    claimer,
                    max: u32::from(max),
                    kinds,
                })
            }
            Op::ClaimWithOldGrant { g, queue, max } => match pick(&self.claimers, g) {
                Some(claimer) => Command::Claim(cmd::Claim {
                    queue: q(queue),
                    claimer,
                    max: u32::from(max),
                    kinds: None,
                }),
                None => return,
            },
            Op::Heartbeat { r } => match pick(&self.receipts, r) {
                Some(receipt) => Command::Heartbeat(cmd::Heartbeat {
                    receipts: vec![receipt],
                }),
                None => return,
            },
            Op::Complete { r, twice } => match pick(&self.receipts, r) {
                Some(receipt) if twice => Command::Complete(cmd::Complete {
                    receipts: vec![receipt, receipt],
                }),
                Some(receipt) => Command::Complete(cmd::Complete {
                    receipts: vec![receipt],
                }),
                None => return,
            },
            Op::Fail { r, retry, draw } => {
                let Some(receipt) = pick(&self.receipts, r) else {
                    return;
                };
                let retry = match retry {
                    0 => Retry::Backoff,
                    1 => Retry::After(Millis(50)),
                    _ => Retry::Never,
                };
                let error = FailError {
                    retry,
                    message: "e".into(),
                };
                Command::Fail(cmd::Fail {
                    failures: vec![Failure {
                        receipt,
                        error,
                        draw,
                    }],
                })
            }
            Op::Snooze { r, delay_ms } => match pick(&self.receipts, r) {
                Some(receipt) => Command::Snooze(cmd::Snooze {
                    snoozes: vec![(receipt, Millis(u64::from(delay_ms)))],
                }),
                None => return,
            },
            Op::WaitExternal { r, timeout_ms } => match pick(&self.receipts, r) {
                Some(receipt) => Command::WaitExternal(cmd::WaitExternal {
                    waits: vec![(receipt, Millis(u64::from(timeout_ms)))],
                }),
                None => return,
            },
            Op::CancelAttempt { r } => match pick(&self.receipts, r) {
                Some(receipt) => Command::CancelAttempts(cmd::CancelAttempts {
                    receipts: vec![receipt],
                }),
                None => return,
            },
            Op::Resume { r } => match pick(&self.receipts, r) {
                Some(receipt) => Command::ResumeExternal(cmd::ResumeExternal { receipt }),
                None => return,
            },
            Op::Cancel { job } => match pick(&self.job_ids(), job) {
                Some(job) => Command::Cancel(cmd::Cancel { job }),
                None => return,
            },
            Op::Retry { job } => match pick(&self.job_ids(), job) {
                Some(job) => Command::Retry(cmd::Retry { job }),
                None => return,
            },
            Op::Pause {
                queue,
                paused: true,
            } => Command::PauseQueue(cmd::PauseQueue { queue: q(queue) }),
            Op::Pause {
                queue,
                paused: false,
            } => Command::ResumeQueue(cmd::ResumeQueue { queue: q(queue) }),
            Op::ClaimerRelease { p, queue } => {
                let mine = self
                    .claimers
                    .iter()
                    .rev()
                    .find(|g| g.process == ProcessId(u64::from(p)));
                match mine {
                    Some(&claimer) => Command::ClaimerRelease(cmd::ClaimerRelease {
                        queue: q(queue),
                        claimer,
                    }),
                    None => return,
                }
            }
            Op::Elect { p } => Command::LeaderElect(cmd::LeaderElect {
                process: ProcessId(u64::from(p)),
            }),
            Op::Resign { p } => Command::LeaderResign(cmd::LeaderResign {
                leader: self.leader_of(p),
            }),
            Op::Promote { p } => Command::Promote(cmd::Promote {
                leader: self.leader_of(p),
                max: 8,
            }),
            Op::Rescue { p, draw } => Command::Rescue(cmd::Rescue {
                leader: self.leader_of(p),
                draw,
                max: 8,
            }),
            Op::Prune { p } => Command::Prune(cmd::Prune {
                leader: self.leader_of(p),
                older_than: Millis(100),
                max: 8,
            }),
            Op::SlotTry { p, slot, lease } => Command::SlotTry(cmd::SlotTry {
                semaphore: SemaphoreName::new("s").unwrap(),
                permits: 2,
                slot: SlotIndex(u16::from(slot)),
                holder: ProcessId(u64::from(p)),
                lease_ttl: lease.then_some(Millis(250)),
            }),
            Op::SlotRelease { g } => match pick(&self.slots, g) {
                Some(grant) => Command::SlotRelease(cmd::SlotRelease {
                    semaphore: SemaphoreName::new("s").unwrap(),
                    grant,
                }),
                None => return,
            },
            Op::Crash { p } => Command::ProcessCrashed(cmd::ProcessCrashed {
                process: ProcessId(u64::from(p)),
            }),
            Op::Advance { ms } => {
                self.now = self.now.plus(Millis(u64::from(ms)));
                return;
            }
        };
        self.apply(command);
    }
}
