//! Concurrent histories against the real Postgres backend, judged by the
//! world (`weir_tests::history`).
//!
//! Each seed is one history: `CLIENTS` clients, each a process of its own
//! id on its own connections, send random commands at one `PgBackend`
//! schema at once — enqueue with unique keys (one client: see
//! "Enqueues" below), claim, heartbeat, complete, fail, snooze, cancel
//! attempts, wait and resume, admin cancel and retry, pause and resume,
//! claimer acquire and release, slot try, renew and release, leader elect
//! and resign, promote, rescue and prune. The seed draws the commands, the
//! clients' pauses between them and the perturbation: a trigger on each of
//! Weir's tables that, for the tables the seed picks, sleeps before every
//! row written, widening the window between a command's reads and its
//! writes without saying where a race is. Every history must be
//! linearizable; one that is not is shrunk and printed with the command
//! that replays its seed.
//!
//! Times: each command runs at a time drawn from one shared virtual clock
//! when it is sent (`PgBackend::execute_at`), so storage and the checker
//! use the same time for it; commands that overlap may commit against the
//! order of their times, as transactions do against
//! `transaction_timestamp()`, and the checker applies each at its own time.
//!
//! Enqueues: job ids come from a sequence, which concurrent inserts draw
//! from in no serial order (and failed ones leave gaps), so only client 0
//! enqueues, and no perturbation makes it lose an answer.
//!
//! `WEIR_HISTORY_SEEDS=A..B` runs another range (CI runs `0..CI_SEEDS`),
//! and `WEIR_HISTORY_REPEAT=N` runs each seed N times: a seed fixes the
//! commands, the pauses and the perturbation, not how the server
//! interleaves them, so a replay may need a few tries;
//! the figures (histories per second, operations, the share with a real
//! overlap) are printed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, FailError, Failure, JobId, Kind, LeaderGrant,
    Millis, NewJob, Outcome, Payload, ProcessId, QueueName, Receipt, Retry, SemaphoreName,
    SlotGrant, SlotIndex, Timestamp, UniqueKey, WorldConfig,
};
use weir_postgres::harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SchemaName};
use weir_tests::history::{self, History, Op, Verdict};

const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 12;
const CI_SEEDS: u64 = 60;
const BUDGET: u64 = 200_000;
const QUEUES: [&str; 2] = ["qa", "qb"];
const SEMAPHORE: &str = "s";
const PERMITS: u16 = 2;

fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 1,
            lease_ttl: Millis(3_000),
            idle_threshold: Millis(800),
        },
        heartbeat_stale_after: Millis(1_000),
        backoff: Backoff::constant(Millis(300)),
        leader_ttl: Millis(1_500),
        batch_max: 4,
        ..WorldConfig::default()
    }
}

fn queue(rng: &mut ChaCha8Rng) -> QueueName {
    QueueName::new(QUEUES[rng.random_range(0..QUEUES.len())]).unwrap()
}

/// What the clients share: the virtual clock, and the ids enqueued so far
/// (for admin cancel and retry).
struct Shared {
    clock: AtomicI64,
    jobs: Mutex<Vec<JobId>>,
    started: Instant,
}

impl Shared {
    fn since(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

/// One client: what it has been granted, and its own random stream.
struct Client {
    id: usize,
    process: ProcessId,
    rng: ChaCha8Rng,
    receipts: Vec<Receipt>,
    waiting: Vec<Receipt>,
    claimers: BTreeMap<QueueName, ClaimerGrant>,
    slots: Vec<SlotGrant>,
    leader: Option<LeaderGrant>,
}

impl Client {
    fn new(seed: u64, id: usize, history: u64) -> Client {
        Client {
            id,
            // A fresh process id per history, so no lease of an earlier
            // history (the tables are emptied, but not the backend) is
            // mistaken for this one's.
            process: ProcessId(history * 100 + id as u64 + 1),
            rng: ChaCha8Rng::seed_from_u64(seed ^ (0x9e37_79b9 * (id as u64 + 1))),
            receipts: Vec::new(),
            waiting: Vec::new(),
            claimers: BTreeMap::new(),
            slots: Vec::new(),
            leader: None,
        }
    }

    fn some_receipts(&mut self) -> Vec<Receipt> {
        let n = self.rng.random_range(1..=self.receipts.len().clamp(1, 3));
        (0..n)
            .filter_map(|_| {
                let i = self.rng.random_range(0..self.receipts.len().max(1));
                self.receipts.get(i).copied()
            })
            .collect()
    }

    fn leader_grant(&mut self) -> LeaderGrant {
        self.leader.unwrap_or(LeaderGrant {
            process: self.process,
            term: weir_core::LeaderTerm(self.rng.random_range(0..3)),
        })
    }

    fn next(&mut self, shared: &Shared, now: Timestamp) -> Command {
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100);
        if self.id == 0 && roll < 30 {
            let jobs = (0..rng.random_range(1..=3))
                .map(|_| {
                    let mut job =
                        NewJob::new(queue(rng), Kind::new("k").unwrap(), Payload(vec![1]));
                    job.max_attempts = rng.random_range(1..=3);
                    job.timeout = Millis(rng.random_range(500..2_000));
                    if rng.random_bool(0.2) {
                        job.run_at = Some(now.plus(Millis(rng.random_range(0..1_500))));
                    }
                    if rng.random_bool(0.3) {
                        let key = format!("u{}", rng.random_range(0..3));
                        job.unique_key = Some(UniqueKey::new(key).unwrap());
                    }
                    job
                })
                .collect();
            return Command::Enqueue { jobs };
        }
        let have_receipts = !self.receipts.is_empty();
        match rng.random_range(0..100) {
            0..=27 => {
                let queue = queue(rng);
                match self.claimers.get(&queue) {
                    Some(claimer) if rng.random_bool(0.85) => Command::Claim {
                        queue,
                        claimer: *claimer,
                        max: rng.random_range(1..=3),
                        kinds: None,
                    },
                    _ => Command::ClaimerAcquire {
                        queue,
                        process: self.process,
                    },
                }
            }
            28..=31 => {
                let queue = queue(rng);
                match self.claimers.get(&queue) {
                    Some(claimer) => Command::ClaimerRelease {
                        queue,
                        claimer: *claimer,
                    },
                    None => Command::ClaimerAcquire {
                        queue,
                        process: self.process,
                    },
                }
            }
            32..=37 if have_receipts => Command::Heartbeat {
                receipts: self.some_receipts(),
            },
            38..=47 if have_receipts => Command::Complete {
                receipts: self.some_receipts(),
            },
            48..=52 if have_receipts => {
                let failures = self
                    .some_receipts()
                    .into_iter()
                    .map(|receipt| Failure {
                        receipt,
                        error: FailError {
                            retry: match self.rng.random_range(0..3) {
                                0 => Retry::Never,
                                1 => Retry::After(Millis(self.rng.random_range(0..300))),
                                _ => Retry::Backoff,
                            },
                            message: "failed".into(),
                        },
                        draw: self.rng.random(),
                    })
                    .collect();
                Command::Fail { failures }
            }
            53..=55 if have_receipts => Command::Snooze {
                snoozes: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(200)))
                    .collect(),
            },
            56..=57 if have_receipts => Command::CancelAttempts {
                receipts: self.some_receipts(),
            },
            58..=59 if have_receipts => Command::WaitExternal {
                waits: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(800)))
                    .collect(),
            },
            60..=61 if !self.waiting.is_empty() => Command::ResumeExternal {
                receipt: self.waiting[rng.random_range(0..self.waiting.len())],
            },
            62..=64 => {
                let jobs = shared.jobs.lock().unwrap();
                match jobs.get(rng.random_range(0..jobs.len().max(1))) {
                    Some(&job) if rng.random_bool(0.5) => Command::Cancel { job },
                    Some(&job) => Command::Retry { job },
                    None => Command::PauseQueue { queue: queue(rng) },
                }
            }
            65..=66 => Command::PauseQueue { queue: queue(rng) },
            67..=69 => Command::ResumeQueue { queue: queue(rng) },
            70..=77 => {
                if let Some(&grant) = self.slots.first().filter(|_| rng.random_bool(0.6)) {
                    if rng.random_bool(0.5) {
                        Command::SlotRenew {
                            semaphore: SemaphoreName::new(SEMAPHORE).unwrap(),
                            grant,
                            lease_ttl: Millis(1_000),
                        }
                    } else {
                        Command::SlotRelease {
                            semaphore: SemaphoreName::new(SEMAPHORE).unwrap(),
                            grant,
                        }
                    }
                } else {
                    Command::SlotTry {
                        semaphore: SemaphoreName::new(SEMAPHORE).unwrap(),
                        permits: PERMITS,
                        slot: SlotIndex(rng.random_range(0..PERMITS)),
                        holder: self.process,
                        lease_ttl: Some(Millis(1_000)),
                    }
                }
            }
            78..=83 => match self.leader {
                Some(leader) if rng.random_bool(0.3) => Command::LeaderResign { leader },
                _ => Command::LeaderElect {
                    process: self.process,
                },
            },
            84..=88 => Command::Promote {
                leader: self.leader_grant(),
                max: 4,
            },
            89..=95 => Command::Rescue {
                leader: self.leader_grant(),
                draw: self.rng.random(),
                max: 4,
            },
            96..=99 => Command::Prune {
                leader: self.leader_grant(),
                older_than: Millis(500),
                max: 4,
            },
            _ => {
                let queue = queue(rng);
                Command::ClaimerAcquire {
                    queue,
                    process: self.process,
                }
            }
        }
    }

    /// Keeps what an answer granted, and forgets what it took away.
    fn learn(&mut self, shared: &Shared, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            (Command::Enqueue { .. }, Outcome::Enqueued(Ok(enqueued))) => {
                shared
                    .jobs
                    .lock()
                    .unwrap()
                    .extend(enqueued.iter().map(|e| e.id));
            }
            (Command::ClaimerAcquire { queue, .. }, Outcome::ClaimerAcquired(Ok((grant, _)))) => {
                self.claimers.insert(queue.clone(), *grant);
            }
            (Command::ClaimerAcquire { queue, .. }, Outcome::ClaimerAcquired(Err(_)))
            | (Command::ClaimerRelease { queue, .. }, _)
            | (Command::Claim { queue, .. }, Outcome::Claimed(Err(_))) => {
                self.claimers.remove(queue);
            }
            (Command::Claim { .. }, Outcome::Claimed(Ok(claimed))) => {
                self.receipts
                    .extend(claimed.jobs.iter().map(|job| job.receipt));
            }
            (Command::Complete { receipts } | Command::CancelAttempts { receipts }, _) => {
                self.receipts.retain(|r| !receipts.contains(r))
            }
            (Command::Fail { failures }, _) => self
                .receipts
                .retain(|r| !failures.iter().any(|f| f.receipt == *r)),
            (Command::Snooze { snoozes }, _) => self
                .receipts
                .retain(|r| !snoozes.iter().any(|(s, _)| s == r)),
            (Command::WaitExternal { waits }, _) => {
                self.receipts.retain(|r| !waits.iter().any(|(w, _)| w == r));
                self.waiting.extend(waits.iter().map(|(w, _)| *w));
            }
            (Command::ResumeExternal { receipt }, _) => self.waiting.retain(|r| r != receipt),
            (Command::SlotTry { .. }, Outcome::SlotTried(Ok(grant))) => self.slots.push(*grant),
            (Command::SlotRenew { grant, .. }, Outcome::SlotRenewed(Err(_)))
            | (Command::SlotRelease { grant, .. }, _) => self.slots.retain(|g| g != grant),
            (Command::LeaderElect { .. }, Outcome::LeaderElected(Ok(grant))) => {
                self.leader = Some(*grant)
            }
            (Command::LeaderElect { .. }, Outcome::LeaderElected(Err(_)))
            | (Command::LeaderResign { .. }, _) => self.leader = None,
            _ => {}
        }
    }
}

/// A client's backend: a process of its own on its own connections.
async fn backend(db: &TestDatabase, client: usize) -> PgBackend {
    let options = PgConnectOptions::from_str(db.url_as_app_user())
        .unwrap()
        .application_name(&format!("weir-history-{client}"));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("connect as weir_app");
    let config = PgConfig {
        schema: SchemaName::new("weir").unwrap(),
        world: config(),
        notify: false,
        ..PgConfig::default()
    };
    PgBackend::new(pool, config).expect("valid config")
}

/// Installs the perturbation: a trigger before every row written to each
/// of Weir's tables, sleeping as long as `weir_perturb.sleep` says for
/// that table (nothing by default).
async fn install_perturbation(superuser: &PgPool) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'weir' \
         AND tablename <> '_migrations' ORDER BY tablename",
    )
    .fetch_all(superuser)
    .await
    .unwrap();
    sqlx::raw_sql(
        r"CREATE SCHEMA weir_perturb;
          CREATE TABLE weir_perturb.sleep (tbl text PRIMARY KEY, ms int NOT NULL);
          CREATE FUNCTION weir_perturb.widen() RETURNS trigger
              LANGUAGE plpgsql SECURITY DEFINER AS $$
          DECLARE pause int;
          BEGIN
              SELECT ms INTO pause FROM weir_perturb.sleep WHERE tbl = TG_TABLE_NAME;
              IF pause IS NOT NULL AND pause > 0 THEN
                  PERFORM pg_sleep(pause / 1000.0);
              END IF;
              IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
              RETURN NEW;
          END $$;",
    )
    .execute(superuser)
    .await
    .unwrap();
    for table in &tables {
        sqlx::raw_sql(&format!(
            "CREATE TRIGGER widen BEFORE INSERT OR UPDATE OR DELETE ON weir.{table} \
             FOR EACH ROW EXECUTE FUNCTION weir_perturb.widen()"
        ))
        .execute(superuser)
        .await
        .unwrap();
    }
    tables
}

/// Empties Weir's tables (ids start again at 1, as in a fresh world; the
/// leader row goes back to the one migration 1 writes) and sets this
/// history's sleeps.
async fn reset(superuser: &PgPool, tables: &[String], rng: &mut ChaCha8Rng) -> Vec<(String, i32)> {
    let list: Vec<String> = tables.iter().map(|t| format!("weir.{t}")).collect();
    sqlx::raw_sql(&format!(
        "TRUNCATE {} RESTART IDENTITY CASCADE; DELETE FROM weir_perturb.sleep; \
         INSERT INTO weir.leader (term, holder, expires_at) VALUES (0, NULL, 0);",
        list.join(", ")
    ))
    .execute(superuser)
    .await
    .unwrap();
    let mut sleeps = Vec::new();
    for table in tables {
        if rng.random_bool(0.5) {
            let ms = rng.random_range(1..=8);
            sqlx::query("INSERT INTO weir_perturb.sleep VALUES ($1, $2)")
                .bind(table)
                .bind(ms)
                .execute(superuser)
                .await
                .unwrap();
            sleeps.push((table.clone(), ms));
        }
    }
    sleeps
}

/// Runs one history of `seed` against `backends` (one per client).
async fn record(seed: u64, nth: u64, backends: &[Arc<PgBackend>]) -> History {
    // The `nth` history of this run gets its own stretch of virtual time
    // (a history spans at most CLIENTS * OPS_PER_CLIENT * 250 ms), later
    // than every earlier one's, since a backend never goes back in time
    // (`execute_at` clamps). Only time differences matter to the world.
    let shared = Arc::new(Shared {
        clock: AtomicI64::new(1_000_000 + nth as i64 * 100_000),
        jobs: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let mut tasks = Vec::new();
    for (id, backend) in backends.iter().enumerate() {
        let backend = Arc::clone(backend);
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(seed, id, seed);
            let mut ops = Vec::new();
            for _ in 0..OPS_PER_CLIENT {
                let pause = client.rng.random_range(0..4u64);
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                let step = client.rng.random_range(0..250);
                let at = Timestamp(shared.clock.fetch_add(step, Ordering::SeqCst));
                let command = client.next(&shared, at);
                let call = shared.since();
                let answer = backend.execute_at(at, command.clone()).await;
                let ret = shared.since();
                let (ret, outcome, lost) = match answer {
                    Ok(outcome) => {
                        client.learn(&shared, &command, &outcome);
                        (Some(ret), Some(outcome), None)
                    }
                    Err(error) => (None, None, Some(error.to_string())),
                };
                ops.push(Op {
                    client: id,
                    at,
                    command,
                    call,
                    ret,
                    outcome,
                    lost,
                });
            }
            ops
        }));
    }
    let mut ops = Vec::new();
    for task in tasks {
        ops.extend(task.await.unwrap());
    }
    ops.sort_by_key(|op| op.call);
    History {
        config: config(),
        ops,
    }
}

fn seeds() -> std::ops::Range<u64> {
    match std::env::var("WEIR_HISTORY_SEEDS") {
        Ok(range) => {
            let (a, b) = range
                .split_once("..")
                .expect("WEIR_HISTORY_SEEDS is a range A..B");
            a.parse().unwrap()..b.parse().unwrap()
        }
        Err(_) => 0..CI_SEEDS,
    }
}

fn replay(seed: u64) -> String {
    format!(
        "WEIR_HISTORY_SEEDS={seed}..{} cargo test -p weir-tests --test histories -- --nocapture",
        seed + 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_concurrent_history_on_postgres_is_explained_by_a_serial_world() {
    let db = test_database().await;
    let superuser = db.pool().await;
    {
        let migrate = backend(&db, 99).await;
        migrate.migrate().await.expect("migrate");
    }
    let tables = install_perturbation(&superuser).await;
    let mut backends = Vec::new();
    for client in 0..CLIENTS {
        backends.push(Arc::new(backend(&db, client).await));
    }
    let repeat: u32 = std::env::var("WEIR_HISTORY_REPEAT").map_or(1, |r| r.parse().unwrap());
    let (mut checked, mut ops, mut overlapping, mut gave_up) = (0u64, 0usize, 0u64, 0u64);
    let mut findings = Vec::new();
    let mut lost = BTreeMap::new();
    let started = Instant::now();
    let mut checking = Duration::ZERO;
    for seed in seeds().flat_map(|seed| std::iter::repeat_n(seed, repeat as usize)) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sleeps = reset(&superuser, &tables, &mut rng).await;
        let history = record(seed, checked, &backends).await;
        let check_started = Instant::now();
        let verdict = history::check(&history, BUDGET);
        checking += check_started.elapsed();
        checked += 1;
        ops += history.ops.len();
        for op in &history.ops {
            if let Some(why) = &op.lost {
                *lost.entry(why.clone()).or_insert(0u64) += 1;
            }
        }
        if history::overlaps(&history) > 0 {
            overlapping += 1;
        }
        match verdict {
            Verdict::Linearizable(_) => {}
            Verdict::GaveUp { explored } => {
                gave_up += 1;
                println!(
                    "seed {seed}: gave up after {explored} steps; replay: {}",
                    replay(seed)
                );
            }
            Verdict::NotLinearizable { .. } => {
                let small = history::shrink(&history, BUDGET);
                findings.push(format!(
                    "seed {seed} (clients {CLIENTS}, sleeps {sleeps:?}): no serial order of the \
                     world explains this history ({} of {} operations kept by shrinking; `->` marks the answers that refute):\n{}\
                     replay: {}",
                    small.history.ops.len(),
                    history.ops.len(),
                    small.render(),
                    replay(seed)
                ));
                println!("{}", findings.last().unwrap());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "histories: {checked} in {seconds:.1}s ({:.1}/s; checking {:.2}s), {CLIENTS} clients, \
         {:.1} operations each, {:.0}% with an overlap between clients, {gave_up} undecided",
        checked as f64 / seconds,
        checking.as_secs_f64(),
        ops as f64 / checked.max(1) as f64,
        100.0 * overlapping as f64 / checked.max(1) as f64,
    );
    println!("answers lost: {lost:?}");
    assert!(
        findings.is_empty(),
        "{} of {checked} histories are not linearizable:\n{}",
        findings.len(),
        findings.join("\n\n")
    );
    assert!(
        overlapping * 2 >= checked,
        "only {overlapping} of {checked} histories had clients overlapping: they prove little"
    );
    assert_eq!(gave_up, 0, "the search gave up on some histories");
}
