//! `weir demo`: a short, deterministic run of the core's reference world.
//!
//! Several simulated worker processes share one `World` under virtual time:
//! each acquires a claimer lease, claims batches, "runs" jobs, and reports
//! completions, retries and snoozes in batches; the leader promotes and
//! rescues. One process stalls past the heartbeat staleness limit, its jobs
//! are rescued and run elsewhere, and its late completions are fenced. Every
//! decision is made by `World::apply`; this file only plays the processes.

use std::time::Instant;

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, FailError, Failure, JobLimits, Kind,
    LeaderGrant, Millis, NewJob, Outcome, Payload, Priority, ProcessId, QueueName, Receipt, Reject,
    Retry, StateName, Timestamp, World, WorldConfig,
};

/// Options of `weir demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 2_000)]
    jobs: u32,
    /// Simulated worker processes (at least 2: one of them stalls).
    #[arg(long, default_value_t = 3)]
    processes: u8,
    /// Seed for the job durations and outcomes; the same seed prints the
    /// same run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const TICK: Millis = Millis(5);
const CAPACITY: usize = 16;
const STALL_AT: Timestamp = Timestamp(300);
const STALL_FOR: Millis = Millis(1_500);
const TIME_LIMIT: Timestamp = Timestamp(600_000);

enum Fate {
    Complete,
    Retry,
    Snooze,
}

struct Running {
    receipt: Receipt,
    done_at: Timestamp,
    fate: Fate,
}

struct Process {
    id: ProcessId,
    claimer: Option<ClaimerGrant>,
    running: Vec<Running>,
    stalled_until: Option<Timestamp>,
}

#[derive(Default)]
struct Tally {
    commands: u64,
    claims: u64,
    lease_refreshes: u64,
    completed: u64,
    retried: u64,
    snoozed: u64,
    rescued: u64,
    fenced: u64,
    duplicates: u64,
}

struct Demo {
    world: World,
    now: Timestamp,
    rng: ChaCha8Rng,
    tally: Tally,
    queue: QueueName,
    leader: Option<LeaderGrant>,
}

fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 4,
            lease_ttl: Millis(2_000),
            idle_threshold: Millis(1_000),
        },
        heartbeat_stale_after: Millis(1_000),
        backoff: Backoff::new(Millis(50), 2, Millis(1_000), 200).expect("a valid policy"),
        leader_ttl: Millis(1_000),
        limits: JobLimits::default(),
        batch_max: 1_000,
    }
}

/// Runs the demo and prints what happened.
pub fn run(args: &DemoArgs) -> Result<(), String> {
    if args.processes < 2 {
        return Err("--processes must be at least 2 (one of them stalls)".into());
    }
    if args.jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    let started = Instant::now();
    let mut demo = Demo {
        world: World::new(config()),
        now: Timestamp::ZERO,
        rng: ChaCha8Rng::seed_from_u64(args.seed),
        tally: Tally::default(),
        queue: QueueName::new("default").expect("a valid name"),
        leader: None,
    };
    println!(
        "weir demo: {} jobs, {} worker processes, seed {} (virtual time; every decision by World::apply)",
        args.jobs, args.processes, args.seed
    );
    demo.enqueue(args.jobs);
    let mut processes: Vec<Process> = (0..args.processes)
        .map(|i| Process {
            id: ProcessId(u64::from(i) + 1),
            claimer: None,
            running: Vec::new(),
            stalled_until: None,
        })
        .collect();
    while !demo.all_finished() {
        if demo.now >= TIME_LIMIT {
            return Err(format!("jobs still unfinished at {}", demo.now));
        }
        demo.maintain(processes[0].id);
        for process in &mut processes {
            demo.drive(process);
        }
        let last = processes.last_mut().expect("at least two processes");
        if demo.now == STALL_AT {
            last.stalled_until = Some(demo.now.plus(STALL_FOR));
            println!(
                "{:>8}  process {} stalls for {} holding {} jobs (heartbeats stop)",
                demo.now.to_string(),
                last.id,
                STALL_FOR,
                last.running.len()
            );
        }
        demo.now = demo.now.plus(TICK);
    }
    demo.summary(args.jobs, started.elapsed().as_secs_f64());
    Ok(())
}

impl Demo {
    fn apply(&mut self, command: Command) -> Outcome {
        self.tally.commands += 1;
        self.world.apply(self.now, command)
    }

    fn enqueue(&mut self, jobs: u32) {
        let kind = Kind::new("demo.noop").expect("a valid kind");
        let mut left = jobs;
        while left > 0 {
            let n = left.min(500);
            left -= n;
            let batch = (0..n)
                .map(|i| NewJob {
                    priority: Priority(i16::from(i % 10 == 0)),
                    max_attempts: 5,
                    timeout: Millis(10_000),
                    ..NewJob::new(self.queue.clone(), kind.clone(), Payload(b"{}".to_vec()))
                })
                .collect();
            match self.apply(Command::Enqueue { jobs: batch }) {
                Outcome::Enqueued(Ok(ids)) => {
                    self.tally.duplicates += ids.iter().filter(|e| e.duplicate).count() as u64
                }
                other => panic!("enqueue refused: {other:?}"),
            }
        }
        println!(
            "{:>8}  enqueued {jobs} jobs in batches of up to 500",
            self.now.to_string()
        );
    }

    fn all_finished(&self) -> bool {
        self.world.jobs().all(|job| job.state_name().is_terminal())
    }

    /// The first process leads: renew the lease, promote due jobs, rescue
    /// overdue ones.
    fn maintain(&mut self, process: ProcessId) {
        if self.now.0 % 100 != 0 {
            return;
        }
        if let Outcome::LeaderElected(Ok(grant)) = self.apply(Command::LeaderElect { process }) {
            if self.leader.is_none() {
                println!(
                    "{:>8}  process {process} leads maintenance (term {})",
                    self.now.to_string(),
                    grant.term
                );
            }
            self.leader = Some(grant);
        }
        let Some(leader) = self.leader else { return };
        self.apply(Command::Promote { leader, max: 1_000 });
        let draw = self.rng.random();
        if let Outcome::Rescued(Ok(rescued)) = self.apply(Command::Rescue {
            leader,
            draw,
            max: 1_000,
        }) {
            if !rescued.is_empty() {
                println!(
                    "{:>8}  leader rescues {} jobs whose heartbeat went stale (epochs bumped)",
                    self.now.to_string(),
                    rescued.len()
                );
            }
            self.tally.rescued += rescued.len() as u64;
        }
    }

    fn drive(&mut self, process: &mut Process) {
        match process.stalled_until {
            Some(until) if self.now < until => return,
            Some(_) => self.wake_up(process),
            None => {}
        }
        self.report(process);
        if self.now.0 % 200 == 0 && !process.running.is_empty() {
            let receipts = process.running.iter().map(|r| r.receipt).collect();
            self.apply(Command::Heartbeat { receipts });
        }
        if process.running.len() < CAPACITY {
            self.claim(process);
        }
    }

    /// A stalled process comes back and reports its jobs as if nothing
    /// happened: every one of them is fenced.
    fn wake_up(&mut self, process: &mut Process) {
        process.stalled_until = None;
        let receipts: Vec<Receipt> = process.running.drain(..).map(|r| r.receipt).collect();
        let Outcome::Completed(Ok(results)) = self.apply(Command::Complete { receipts }) else {
            panic!("complete batch refused")
        };
        let fenced = results
            .iter()
            .filter(|r| matches!(r, Err(Reject::StaleEpoch { .. })))
            .count();
        self.tally.fenced += fenced as u64;
        println!(
            "{:>8}  process {} wakes up and completes {} jobs late: {} refused as stale epochs, nothing overwritten",
            self.now.to_string(),
            process.id,
            results.len(),
            fenced
        );
    }

    fn report(&mut self, process: &mut Process) {
        let now = self.now;
        let (done, still): (Vec<Running>, Vec<Running>) =
            process.running.drain(..).partition(|r| r.done_at <= now);
        process.running = still;
        let mut completes = Vec::new();
        let mut failures = Vec::new();
        let mut snoozes = Vec::new();
        for job in done {
            match job.fate {
                Fate::Complete => completes.push(job.receipt),
                Fate::Retry => failures.push(Failure {
                    receipt: job.receipt,
                    error: FailError {
                        retry: Retry::Backoff,
                        message: "upstream timed out".into(),
                    },
                    draw: self.rng.random(),
                }),
                Fate::Snooze => snoozes.push((job.receipt, Millis(100))),
            }
        }
        if !completes.is_empty() {
            if let Outcome::Completed(Ok(results)) = self.apply(Command::Complete {
                receipts: completes,
            }) {
                self.tally.completed += results.iter().filter(|r| r.is_ok()).count() as u64;
            }
        }
        if !failures.is_empty() {
            self.tally.retried += failures.len() as u64;
            self.apply(Command::Fail { failures });
        }
        if !snoozes.is_empty() {
            self.tally.snoozed += snoozes.len() as u64;
            self.apply(Command::Snooze { snoozes });
        }
    }

    fn claim(&mut self, process: &mut Process) {
        let claimer = match process.claimer {
            Some(grant) => grant,
            None => match self.apply(Command::ClaimerAcquire {
                queue: self.queue.clone(),
                process: process.id,
            }) {
                Outcome::ClaimerAcquired(Ok((grant, _))) => {
                    process.claimer = Some(grant);
                    grant
                }
                _ => return,
            },
        };
        let max = (CAPACITY - process.running.len()) as u32;
        let command = Command::Claim {
            queue: self.queue.clone(),
            claimer,
            max,
            kinds: None,
        };
        match self.apply(command) {
            Outcome::Claimed(Ok(claimed)) => {
                if !claimed.jobs.is_empty() {
                    self.tally.claims += 1;
                }
                self.tally.lease_refreshes += u64::from(claimed.lease_refreshed);
                for job in claimed.jobs {
                    let done_at = self.now.plus(Millis(self.rng.random_range(5..60)));
                    let roll: u32 = self.rng.random_range(0..100);
                    let fate = match roll {
                        0..=4 => Fate::Retry,
                        5 => Fate::Snooze,
                        _ => Fate::Complete,
                    };
                    process.running.push(Running {
                        receipt: job.receipt,
                        done_at,
                        fate,
                    });
                }
            }
            // The lease lapsed or was taken over: acquire again next time.
            Outcome::Claimed(Err(_)) => process.claimer = None,
            other => panic!("unexpected claim outcome {other:?}"),
        }
    }

    fn summary(&self, jobs: u32, wall_s: f64) {
        let t = &self.tally;
        let virtual_s = self.now.0 as f64 / 1000.0;
        println!();
        println!("all {jobs} jobs finished after {virtual_s:.2} s of virtual time ({wall_s:.3} s of wall time)");
        for (state, count) in self.world.depths(&self.queue) {
            if count > 0 {
                println!("  {:<22} {count}", state.to_string());
            }
        }
        println!("  commands applied       {}", t.commands);
        println!("  non-empty claims       {}", t.claims);
        println!(
            "  claimer lease writes   {} ({:.3} per claim: refreshed only when half-stale)",
            t.lease_refreshes,
            t.lease_refreshes as f64 / t.claims.max(1) as f64
        );
        println!("  completions accepted   {}", t.completed);
        println!("  retries (backoff)      {}", t.retried);
        println!("  snoozes                {}", t.snoozed);
        println!("  rescued by the leader  {}", t.rescued);
        println!("  late writes fenced     {}", t.fenced);
        let failed = self
            .world
            .depths(&self.queue)
            .iter()
            .find(|(s, _)| *s == StateName::Failed)
            .map_or(0, |(_, n)| *n);
        println!("  failed for good        {failed}");
        println!(
            "world check: {}",
            match self.world.check_invariants() {
                Ok(()) => "every invariant holds".to_string(),
                Err(v) => format!("BROKEN: {v}"),
            }
        );
    }
}
