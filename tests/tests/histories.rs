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
//! clients' pauses between them and the perturbation, none of which says
//! where a race is:
//!
//! - triggers on Weir's tables that, for the tables the seed picks, sleep
//!   before every row written and before every statement that writes
//!   (after the statement's snapshot, before it reads or locks a row),
//!   widening the window between a command's reads and its writes;
//! - a saboteur that cancels running statements of clients 1 to 3 (what a
//!   statement timeout does) and kills their connections; client 3 also
//!   runs with a real statement timeout;
//! - a third session that holds rows locked for a while: the first
//!   available jobs of a queue, jobs by id, the leader row, claimer leases,
//!   semaphore slots. It also looks for sweeps waiting behind the job rows
//!   it holds, which `SKIP LOCKED` forbids (a finding).
//!
//! Every history must be linearizable, and the jobs left in storage at
//! the end must be the ones the serial order leaves; an answer lost or
//! refused with no fault on its client is a finding too. A refuted history
//! is shrunk and printed with the command that replays its seed.
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
//! The checker must be able to fail: the `the_checker_catches_*` tests run
//! the same recorder over a backend with one deliberate SQL mistake
//! ([`SqlMutation`]) and a mix that weighs where it hides ([`Mix`]), and
//! pass once a history is refuted.
//!
//! `WEIR_HISTORY_SEEDS=A..B` runs another range (CI runs `0..CI_SEEDS`),
//! `WEIR_HISTORY_REPEAT=N` runs each seed N times (a seed fixes the
//! commands, the pauses and the perturbation, not how the server
//! interleaves them, so a replay may need a few tries), and
//! `WEIR_HISTORY_ALL=1` makes a mutation test go on after its first
//! finding and count them all. The figures (histories per second,
//! operations, the share with a real overlap, faults, answers per command)
//! are printed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use weir::BackendError;
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, FailError, Failure, JobId, Kind, LeaderGrant,
    Millis, NewJob, Outcome, Payload, ProcessId, QueueName, Receipt, Retry, SemaphoreName,
    SlotGrant, SlotIndex, StateName, Timestamp, UniqueKey, WorldConfig,
};
use weir_core::{Mutation, World};
use weir_memory::{MemoryBackend, VirtualClock};
use weir_postgres::harness::{test_database, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SchemaName, SqlMutation};
use weir_tests::history::{self, History, Hold, Observed, Op, Verdict};

const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 20;
const CI_SEEDS: u64 = 60;
/// How many seeds a mutation test tries before it says the checker missed
/// the mutation.
const MUTANT_SEEDS: u64 = 100;
/// How long after a refused answer the rows its statement locked may
/// still be held (the server answers before its abort releases them).
const REFUSED_LOCKS_OUTLAST_MS: u64 = 50;
/// The last client's statement timeout.
const STATEMENT_TIMEOUT_MS: u32 = 40;
const BUDGET: u64 = 200_000;
/// The search budget of each shrinking step: a step whose check gives up
/// is not taken, so a smaller budget only shrinks less.
const SHRINK_BUDGET: u64 = 20_000;
const QUEUES: [&str; 2] = ["qa", "qb"];
const SEMAPHORE: &str = "s";
const PERMITS: u16 = 2;

/// What the clients mostly do. The general mix runs in CI on `main`; the
/// focused ones put more weight where a mutation hides, so that its test
/// finds it within a few seeds (the general mix finds each too, about
/// once in a hundred histories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Every command, with the weights of `Client::next`.
    General,
    /// A backlog: client 0 enqueues large batches, every client claims
    /// often and for several jobs, so claims meet.
    Backlog,
    /// Rescues: heartbeats go stale fast and leaders sweep often, so
    /// attempts are rescued and re-claimed while their old holders still
    /// report on them.
    Rescues,
}

fn config(mix: Mix) -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(5_000),
            idle_threshold: Millis(1_500),
        },
        heartbeat_stale_after: Millis(if mix == Mix::Rescues { 250 } else { 600 }),
        backoff: Backoff::constant(Millis(300)),
        leader_ttl: Millis(3_000),
        batch_max: 4,
        ..WorldConfig::default()
    }
}

/// A queue of the mix: the backlog mix runs one queue, so that every
/// claimer lease is on it and claims meet.
fn queue(rng: &mut ChaCha8Rng, mix: Mix) -> QueueName {
    let queues = if mix == Mix::Backlog { 1 } else { QUEUES.len() };
    QueueName::new(QUEUES[rng.random_range(0..queues)]).unwrap()
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
    mix: Mix,
    process: ProcessId,
    rng: ChaCha8Rng,
    receipts: Vec<Receipt>,
    waiting: Vec<Receipt>,
    claimers: BTreeMap<QueueName, ClaimerGrant>,
    slots: Vec<SlotGrant>,
    leader: Option<LeaderGrant>,
}

impl Client {
    fn new(seed: u64, id: usize, history: u64, mix: Mix) -> Client {
        Client {
            id,
            mix,
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

    /// The next command: a worker's mix (claim, report on what it holds),
    /// with an operator's admin commands and, while this client leads, the
    /// maintenance sweeps; client 0 also enqueues.
    fn next(&mut self, shared: &Shared, now: Timestamp) -> Command {
        let roll = self.rng.random_range(0..100);
        let enqueues = if self.mix == Mix::General { 35 } else { 60 };
        if self.id == 0 && roll < enqueues {
            return self.enqueue(now);
        }
        let have_receipts = !self.receipts.is_empty();
        let roll = self.rng.random_range(0..100);
        if self.mix == Mix::Backlog && roll < 40 {
            let queue = queue(&mut self.rng, self.mix);
            return self.claim(queue);
        }
        if self.mix == Mix::Rescues && roll < 25 {
            if let Some(leader) = self.leader {
                return Command::Rescue {
                    leader,
                    draw: self.rng.random(),
                    max: 4,
                };
            }
        }
        if self.mix == Mix::Rescues && roll < 55 {
            // Claim rather than report: attempts pile up, go stale, are
            // rescued and claimed again while their old holders keep the
            // receipts they will report on later.
            let queue = queue(&mut self.rng, self.mix);
            return self.claim(queue);
        }
        match self.rng.random_range(0..100) {
            0..=3 => {
                let queue = queue(&mut self.rng, self.mix);
                match self.claimers.get(&queue) {
                    Some(claimer) => Command::ClaimerRelease {
                        queue,
                        claimer: *claimer,
                    },
                    None => self.claim(queue),
                }
            }
            4..=9 if have_receipts => Command::Heartbeat {
                receipts: self.some_receipts(),
            },
            10..=21 if have_receipts => Command::Complete {
                receipts: self.some_receipts(),
            },
            22..=29 if have_receipts => {
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
            30..=31 if have_receipts => Command::Snooze {
                snoozes: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(200)))
                    .collect(),
            },
            32 if have_receipts => Command::CancelAttempts {
                receipts: self.some_receipts(),
            },
            33 if have_receipts => Command::WaitExternal {
                waits: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(800)))
                    .collect(),
            },
            34 if !self.waiting.is_empty() => Command::ResumeExternal {
                receipt: self.waiting[self.rng.random_range(0..self.waiting.len())],
            },
            35..=37 => {
                let jobs = shared.jobs.lock().unwrap();
                match jobs.get(self.rng.random_range(0..jobs.len().max(1))) {
                    Some(&job) if self.rng.random_bool(0.5) => Command::Cancel { job },
                    Some(&job) => Command::Retry { job },
                    None => Command::ResumeQueue {
                        queue: queue(&mut self.rng, self.mix),
                    },
                }
            }
            38 => Command::PauseQueue {
                queue: queue(&mut self.rng, self.mix),
            },
            39..=40 => Command::ResumeQueue {
                queue: queue(&mut self.rng, self.mix),
            },
            41..=47 => self.slot(),
            48..=51 => match self.leader {
                Some(leader) if self.rng.random_bool(0.4) => Command::LeaderResign { leader },
                _ => Command::LeaderElect {
                    process: self.process,
                },
            },
            52..=65 => match self.leader {
                // A process that does not lead mostly tries to; sometimes
                // it sweeps with a term it guesses, which must be fenced.
                None if self.rng.random_bool(0.9) => Command::LeaderElect {
                    process: self.process,
                },
                _ => {
                    let leader = self.leader_grant();
                    match self.rng.random_range(0..10) {
                        0..=5 => Command::Rescue {
                            leader,
                            draw: self.rng.random(),
                            max: 4,
                        },
                        6..=7 => Command::Promote { leader, max: 4 },
                        _ => Command::Prune {
                            leader,
                            older_than: Millis(500),
                            max: 4,
                        },
                    }
                }
            },
            _ => {
                let queue = queue(&mut self.rng, self.mix);
                self.claim(queue)
            }
        }
    }

    fn enqueue(&mut self, now: Timestamp) -> Command {
        let mix = self.mix;
        let rng = &mut self.rng;
        // Up to the batch limit (4), and now and then one over it, which
        // the backend must refuse whole.
        let fewest = if mix == Mix::General { 1 } else { 2 };
        let n = if rng.random_bool(0.05) {
            5
        } else {
            rng.random_range(fewest..=4)
        };
        let jobs = (0..n)
            .map(|_| {
                let mut job =
                    NewJob::new(queue(rng, mix), Kind::new("k").unwrap(), Payload(vec![1]));
                // Rescues need attempts left to be claimed again.
                job.max_attempts = if mix == Mix::Rescues {
                    rng.random_range(3..=5)
                } else {
                    rng.random_range(1..=3)
                };
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
        Command::Enqueue { jobs }
    }

    /// A claim of `queue` when this client holds a claimer lease there,
    /// else an acquisition of one.
    fn claim(&mut self, queue: QueueName) -> Command {
        match self.claimers.get(&queue) {
            Some(claimer) => Command::Claim {
                queue,
                claimer: *claimer,
                max: self.rng.random_range(1..=4),
                kinds: None,
            },
            None => Command::ClaimerAcquire {
                queue,
                process: self.process,
            },
        }
    }

    fn slot(&mut self) -> Command {
        let semaphore = SemaphoreName::new(SEMAPHORE).unwrap();
        match self.slots.first() {
            Some(&grant) if self.rng.random_bool(0.6) => {
                if self.rng.random_bool(0.5) {
                    Command::SlotRenew {
                        semaphore,
                        grant,
                        lease_ttl: Millis(1_000),
                    }
                } else {
                    Command::SlotRelease { semaphore, grant }
                }
            }
            _ => Command::SlotTry {
                semaphore,
                permits: PERMITS,
                slot: SlotIndex(self.rng.random_range(0..PERMITS)),
                holder: self.process,
                lease_ttl: Some(Millis(1_000)),
            },
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

/// A client's backend: a process of its own on its own connections. The
/// last client's statements time out after [`STATEMENT_TIMEOUT_MS`] (its
/// answers may be lost or refused that way); every client's SQL carries
/// `mutation`, when one is given.
async fn backend(
    db: &TestDatabase,
    client: usize,
    mix: Mix,
    mutation: Option<SqlMutation>,
) -> PgBackend {
    let mut options = PgConnectOptions::from_str(db.url_as_app_user())
        .unwrap()
        .application_name(&app_name(client));
    if client == CLIENTS - 1 {
        options = options.options([("statement_timeout", STATEMENT_TIMEOUT_MS.to_string())]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("connect as weir_app");
    let config = PgConfig {
        schema: SchemaName::new("weir").unwrap(),
        world: config(mix),
        notify: false,
        ..PgConfig::default()
    };
    match mutation {
        None => PgBackend::new(pool, config),
        Some(mutation) => PgBackend::mutated(pool, config, mutation),
    }
    .expect("valid config")
}

fn app_name(client: usize) -> String {
    format!("weir-history-{client}")
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
          CREATE TABLE weir_perturb.statement_sleep (tbl text PRIMARY KEY, ms int NOT NULL);
          CREATE FUNCTION weir_perturb.widen_statement() RETURNS trigger
              LANGUAGE plpgsql SECURITY DEFINER AS $$
          DECLARE pause int;
          BEGIN
              SELECT ms INTO pause FROM weir_perturb.statement_sleep WHERE tbl = TG_TABLE_NAME;
              IF pause IS NOT NULL AND pause > 0 THEN
                  PERFORM pg_sleep(pause / 1000.0);
              END IF;
              RETURN NULL;
          END $$;
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
             FOR EACH ROW EXECUTE FUNCTION weir_perturb.widen(); \
             CREATE TRIGGER widen_statement BEFORE INSERT OR UPDATE OR DELETE ON weir.{table} \
             FOR EACH STATEMENT EXECUTE FUNCTION weir_perturb.widen_statement()"
        ))
        .execute(superuser)
        .await
        .unwrap();
    }
    tables
}

/// What a seed perturbs in its history, besides the clients' own pauses.
struct Perturbation {
    /// Per table, how long the trigger sleeps before each row written.
    sleeps: Vec<(String, i32)>,
    /// Per table, how long the trigger sleeps before each statement that
    /// writes to it: after the statement took its snapshot, before it read
    /// or locked a row.
    statement_sleeps: Vec<(String, i32)>,
    /// Whether a saboteur cancels statements and kills connections of
    /// clients 1.. while they run (client 0 enqueues, see the module docs).
    faults: bool,
    /// Whether a third session holds rows locked for a while, again and
    /// again: jobs', the leader's, a queue's claimer leases', the
    /// semaphore's slots.
    holds: bool,
}

impl Perturbation {
    fn describe(&self) -> String {
        format!(
            "sleeps per row {:?}, per statement {:?}, faults {}, row holds {}",
            self.sleeps,
            self.statement_sleeps,
            if self.faults { "on" } else { "off" },
            if self.holds { "on" } else { "off" }
        )
    }
}

/// Empties Weir's tables (ids start again at 1, as in a fresh world; the
/// leader row goes back to the one migration 1 writes) and sets this
/// history's perturbation.
async fn reset(superuser: &PgPool, tables: &[String], rng: &mut ChaCha8Rng) -> Perturbation {
    let list: Vec<String> = tables.iter().map(|t| format!("weir.{t}")).collect();
    sqlx::raw_sql(&format!(
        "TRUNCATE {} RESTART IDENTITY CASCADE; DELETE FROM weir_perturb.sleep; \
         DELETE FROM weir_perturb.statement_sleep; \
         INSERT INTO weir.leader (term, holder, expires_at) VALUES (0, NULL, 0);",
        list.join(", ")
    ))
    .execute(superuser)
    .await
    .unwrap();
    let (mut sleeps, mut statement_sleeps) = (Vec::new(), Vec::new());
    for table in tables {
        // Per row, then per statement: the seed's draws stay in this order.
        for (into, drawn) in [
            ("weir_perturb.sleep", &mut sleeps),
            ("weir_perturb.statement_sleep", &mut statement_sleeps),
        ] {
            if rng.random_bool(0.5) {
                let ms = rng.random_range(1..=8);
                sqlx::query(&format!("INSERT INTO {into} VALUES ($1, $2)"))
                    .bind(table)
                    .bind(ms)
                    .execute(superuser)
                    .await
                    .unwrap();
                drawn.push((table.clone(), ms));
            }
        }
    }
    Perturbation {
        sleeps,
        statement_sleeps,
        faults: rng.random_bool(0.5),
        holds: rng.random_bool(0.5),
    }
}

/// A fault the saboteur caused: a statement of `client` cancelled (what a
/// statement timeout does) or its connection killed, somewhere between
/// `from` and `to`.
#[derive(Debug)]
struct Fault {
    client: usize,
    from: u64,
    to: u64,
    kill: bool,
}

/// One history as recorded, before it is judged.
struct Recorded {
    history: History,
    /// Operations storage refused ("certainly not applied"), with why:
    /// left out of the history.
    refused: Vec<(Op, String)>,
    /// Answers that a fault does not explain: an answer lost or refused
    /// with no statement timeout, cancel or kill on that client since its
    /// last answer, or a misconfiguration.
    unexplained: Vec<String>,
    faults: Vec<Fault>,
}

/// Runs one history of `seed` against `backends` (one per client).
async fn record(
    seed: u64,
    nth: u64,
    backends: &[Arc<PgBackend>],
    superuser: &PgPool,
    perturbation: &Perturbation,
    mix: Mix,
) -> Recorded {
    // The `nth` history of this run gets its own stretch of virtual time
    // (a history spans at most CLIENTS * OPS_PER_CLIENT * 150 ms), later
    // than every earlier one's, since a backend never goes back in time
    // (`execute_at` clamps). Only time differences matter to the world.
    let shared = Arc::new(Shared {
        clock: AtomicI64::new(1_000_000 + nth as i64 * 100_000),
        jobs: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let done = Arc::new(AtomicBool::new(false));
    let saboteur = perturbation.faults.then(|| {
        tokio::spawn(sabotage(
            ChaCha8Rng::seed_from_u64(seed ^ 0x5ab0),
            superuser.clone(),
            Arc::clone(&shared),
            Arc::clone(&done),
        ))
    });
    let locker = perturbation.holds.then(|| {
        tokio::spawn(hold_locks(
            ChaCha8Rng::seed_from_u64(seed ^ 0x10c4),
            superuser.clone(),
            Arc::clone(&shared),
            Arc::clone(&done),
        ))
    });
    let mut tasks = Vec::new();
    for (id, backend) in backends.iter().enumerate() {
        let backend = Arc::clone(backend);
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(seed, id, seed, mix);
            let mut ops = Vec::new();
            for _ in 0..OPS_PER_CLIENT {
                let pause = client.rng.random_range(0..4u64);
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                let step = client.rng.random_range(0..150);
                let at = Timestamp(shared.clock.fetch_add(step, Ordering::SeqCst));
                let command = client.next(&shared, at);
                let call = shared.since();
                let answer = backend.execute_at(at, command.clone()).await;
                let ret = shared.since();
                if let Ok(outcome) = &answer {
                    client.learn(&shared, &command, outcome);
                }
                ops.push((
                    Op {
                        client: id,
                        at,
                        command,
                        call,
                        ret: None,
                        outcome: None,
                        lost: None,
                    },
                    ret,
                    answer,
                ));
            }
            ops
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.push(task.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let faults = match saboteur {
        Some(task) => task.await.unwrap(),
        None => Vec::new(),
    };
    let (holds, waits) = match locker {
        Some(task) => task.await.unwrap(),
        None => (Vec::new(), Vec::new()),
    };
    let (mut ops, mut refused, mut unexplained) = (Vec::new(), Vec::new(), waits);
    for client_ops in answered {
        // Since when a fault on this client explains a lost or refused
        // answer: its previous answer (a killed connection may fail the
        // next statement sent on it, not the one that ran).
        let mut since = 0;
        for (mut op, ret, answer) in client_ops {
            let faulted = |why: &str| {
                why.contains("statement timeout")
                    || faults
                        .iter()
                        .any(|f| f.client == op.client && f.to >= since && f.from <= ret)
            };
            match answer {
                Ok(outcome) => {
                    op.ret = Some(ret);
                    op.outcome = Some(outcome);
                    ops.push(op);
                }
                Err(BackendError::Lost(why)) => {
                    if !faulted(&why) {
                        unexplained.push(format!(
                            "client {} lost the answer to {:?} with no fault on it: {why}",
                            op.client, op.command
                        ));
                    }
                    op.lost = Some(why);
                    ops.push(op);
                }
                Err(BackendError::Unavailable(why) | BackendError::Refused(why)) => {
                    op.ret = Some(ret);
                    if !faulted(&why) {
                        unexplained.push(format!(
                            "client {} was refused {:?} with no fault on it: {why}",
                            op.client, op.command
                        ));
                    }
                    refused.push((op, why));
                }
                // A misconfiguration, or an error this recorder does not know.
                Err(error) => {
                    unexplained.push(format!(
                        "client {} was told {error} for {:?}",
                        op.client, op.command
                    ));
                    refused.push((op, error.to_string()));
                }
            }
            since = ret;
        }
    }
    ops.sort_by_key(|op| op.call);
    // A refused command may have locked rows before it was rolled back:
    // the jobs it names, or, for a sweep, any job. The server reports the
    // error before it releases the locks, so they may outlast the answer:
    // held until its client's next answer came back, and at least
    // REFUSED_LOCKS_OUTLAST_MS after its own.
    let mut holds = holds;
    let every: Vec<JobId> = shared.jobs.lock().unwrap().clone();
    let next_answer = |op: &Op| {
        ops.iter()
            .filter(|o| o.client == op.client && o.call > op.call)
            .filter_map(|o| o.ret)
            .min()
            .unwrap_or(u64::MAX)
    };
    for (op, _) in &refused {
        let jobs = if history::sweeps_jobs(&op.command) {
            every.clone()
        } else {
            history::jobs_named(op)
        };
        if !jobs.is_empty() {
            let ret = op.ret.unwrap_or(u64::MAX);
            holds.push(Hold {
                jobs,
                from: op.call,
                to: next_answer(op).max(ret.saturating_add(REFUSED_LOCKS_OUTLAST_MS * 1_000_000)),
            });
        }
    }
    let last = observe(superuser).await;
    Recorded {
        history: History {
            config: config(mix),
            ops,
            holds,
            last: Some(last),
        },
        refused,
        unexplained,
        faults,
    }
}

/// Every job as storage holds it now.
async fn observe(superuser: &PgPool) -> Vec<Observed> {
    let rows: Vec<(i64, String, i64, i32)> =
        sqlx::query_as("SELECT id, state::text, epoch, attempt FROM weir.jobs ORDER BY id")
            .fetch_all(superuser)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, state, epoch, attempt)| Observed {
            id: JobId(id),
            state: StateName::parse(&state).expect("a state the core names"),
            epoch: weir_core::Epoch(epoch as u64),
            attempt: weir_core::Attempt(attempt as u32),
        })
        .collect()
}

/// Until `done`, every few milliseconds: cancels the running statement of
/// one of clients 1.. (what its statement timeout would do) or kills its
/// connection. Returns the faults that hit a statement.
async fn sabotage(
    mut rng: ChaCha8Rng,
    superuser: PgPool,
    shared: Arc<Shared>,
    done: Arc<AtomicBool>,
) -> Vec<Fault> {
    let mut faults = Vec::new();
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..50))).await;
        let client = rng.random_range(1..CLIENTS);
        let kill = rng.random_bool(0.4);
        let function = if kill {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        };
        let before = shared.since();
        let hit: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT {function}(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database() \
             AND state <> 'idle') hit"
        ))
        .bind(app_name(client))
        .fetch_one(&superuser)
        .await
        .unwrap();
        if hit > 0 {
            faults.push(Fault {
                client,
                from: before,
                to: shared.since(),
                kill,
            });
        }
    }
    faults
}

/// Until `done`, again and again: a session that is no client locks some
/// rows `FOR UPDATE` — the first available jobs of a queue, one or two
/// jobs by id, the leader row, a queue's claimer leases or the
/// semaphore's slots — for up to 60 ms (below the slot tries' lock wait,
/// so they wait rather than give up), then commits. Returns the jobs'
/// holds (for the checker's skipped rows) and, as findings, every sweep
/// seen waiting for a job row it held (a claim, by its `picked` rows, or
/// a statement that skips locked rows): claims, promote, rescue and prune
/// take rows `SKIP LOCKED`, so none may wait for one (a claim that waits
/// is linearizable, but every claimer of the queue queues behind one
/// slow transaction).
async fn hold_locks(
    mut rng: ChaCha8Rng,
    superuser: PgPool,
    shared: Arc<Shared>,
    done: Arc<AtomicBool>,
) -> (Vec<Hold>, Vec<String>) {
    let (mut holds, mut waits) = (Vec::new(), Vec::new());
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
        let named: Vec<i64> = {
            let known = shared.jobs.lock().unwrap();
            (0..rng.random_range(1..=2))
                .filter_map(|_| known.get(rng.random_range(0..known.len().max(1))))
                .map(|j| j.0)
                .collect()
        };
        let (sql, jobs) = match rng.random_range(0..5) {
            0 => (
                "SELECT id FROM weir.jobs WHERE state = 'available' AND queue = $2 \
                 ORDER BY priority, run_at, id LIMIT 2 FOR UPDATE SKIP LOCKED",
                true,
            ),
            1 if !named.is_empty() => (
                "SELECT id FROM weir.jobs WHERE id = ANY ($1) ORDER BY id FOR UPDATE",
                true,
            ),
            1 | 2 => (
                "SELECT 0::bigint FROM weir.claimer_leases WHERE queue = $2 ORDER BY slot \
                 FOR UPDATE",
                false,
            ),
            3 => ("SELECT 0::bigint FROM weir.leader FOR UPDATE", false),
            _ => (
                "SELECT 0::bigint FROM weir.semaphore_slots WHERE name = $3 ORDER BY slot \
                 FOR UPDATE",
                false,
            ),
        };
        let from = shared.since();
        let mut tx = superuser.begin().await.unwrap();
        let locked: Result<Vec<i64>, _> = sqlx::query_scalar(sql)
            .bind(&named)
            .bind(QUEUES[rng.random_range(0..QUEUES.len())])
            .bind(SEMAPHORE)
            .fetch_all(&mut *tx)
            .await;
        let pause = rng.random_range(5..60);
        let ids = match locked {
            Ok(ids) => {
                tokio::time::sleep(Duration::from_millis(pause / 2)).await;
                if jobs && !ids.is_empty() {
                    let waiting: Vec<(String, String)> = sqlx::query_as(
                        "SELECT application_name, query FROM pg_stat_activity \
                         WHERE datname = current_database() \
                         AND pg_backend_pid() = ANY (pg_blocking_pids(pid)) \
                         AND (query LIKE '%picked AS%' OR query LIKE '%SKIP LOCKED%')",
                    )
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
                    for (client, query) in waiting {
                        waits.push(format!(
                            "{client} waited for a job row another session held (jobs \
                             {ids:?}), in a sweep that should skip locked rows: {}",
                            query.split_whitespace().collect::<Vec<_>>().join(" ")
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(pause - pause / 2)).await;
                tx.commit().await.unwrap();
                ids
            }
            Err(_) => {
                // Chosen as a deadlock's victim: the locks it had are gone.
                tx.rollback().await.unwrap();
                named.clone()
            }
        };
        if jobs && !ids.is_empty() {
            holds.push(Hold {
                jobs: ids.into_iter().map(JobId).collect(),
                from,
                to: shared.since(),
            });
        }
    }
    (holds, waits)
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

fn replay(test: &str, seed: u64) -> String {
    format!(
        "WEIR_HISTORY_SEEDS={seed}..{} cargo test -p weir-tests --test histories {test} -- --nocapture --exact",
        seed + 1
    )
}

/// What a run of histories found, and its figures.
#[derive(Default)]
struct Report {
    checked: u64,
    ops: usize,
    overlapping: u64,
    gave_up: u64,
    findings: Vec<String>,
    lost: u64,
    refused: u64,
    faults: u64,
    kills: u64,
    holds: u64,
    /// How many answers of each command did something, did nothing, or
    /// were refused or lost.
    answers: BTreeMap<(&'static str, &'static str), u64>,
    seconds: f64,
    checking: Duration,
}

impl Report {
    fn figures(&self) -> String {
        let checked = self.checked.max(1) as f64;
        format!(
            "histories: {} in {:.1}s ({:.1}/s; checking {:.2}s), {CLIENTS} clients, \
             {:.1} operations each, {:.0}% with an overlap between clients, {} undecided; \
             {} answers lost, {} refused, {} faults injected ({} connections killed), {} row holds",
            self.checked,
            self.seconds,
            self.checked as f64 / self.seconds,
            self.checking.as_secs_f64(),
            self.ops as f64 / checked,
            100.0 * self.overlapping as f64 / checked,
            self.gave_up,
            self.lost,
            self.refused,
            self.faults,
            self.kills,
            self.holds,
        )
    }
}

/// Records and judges one history per seed of `seeds` (each
/// `WEIR_HISTORY_REPEAT` times), with every client's SQL carrying
/// `mutation` and the clients running `mix`; stops at the first finding
/// when `first` says so.
async fn run(
    test: &str,
    seeds: std::ops::Range<u64>,
    mix: Mix,
    mutation: Option<SqlMutation>,
    first: bool,
) -> Report {
    let db = test_database().await;
    let superuser = db.pool().await;
    {
        let migrate = backend(&db, 99, mix, None).await;
        migrate.migrate().await.expect("migrate");
    }
    let tables = install_perturbation(&superuser).await;
    let mut backends = Vec::new();
    for client in 0..CLIENTS {
        backends.push(Arc::new(backend(&db, client, mix, mutation).await));
    }
    let repeat: u32 = std::env::var("WEIR_HISTORY_REPEAT").map_or(1, |r| r.parse().unwrap());
    let mut report = Report::default();
    let started = Instant::now();
    for seed in seeds.flat_map(|seed| std::iter::repeat_n(seed, repeat as usize)) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let perturbation = reset(&superuser, &tables, &mut rng).await;
        let recorded = record(
            seed,
            report.checked,
            &backends,
            &superuser,
            &perturbation,
            mix,
        )
        .await;
        let history = &recorded.history;
        let check_started = Instant::now();
        let verdict = history::check(history, BUDGET);
        report.checking += check_started.elapsed();
        report.checked += 1;
        report.ops += history.ops.len() + recorded.refused.len();
        report.lost += history.ops.iter().filter(|op| op.lost.is_some()).count() as u64;
        report.refused += recorded.refused.len() as u64;
        report.faults += recorded.faults.len() as u64;
        report.kills += recorded.faults.iter().filter(|f| f.kill).count() as u64;
        report.holds += history.holds.len() as u64;
        if history::overlaps(history) > 0 {
            report.overlapping += 1;
        }
        for op in &history.ops {
            let name = weir_core::command_name(&op.command);
            let good = match &op.outcome {
                None => "lost",
                Some(outcome) => effect(outcome),
            };
            *report.answers.entry((name, good)).or_insert(0) += 1;
        }
        let refused: String = recorded
            .refused
            .iter()
            .map(|(op, why)| {
                format!(
                    "  client {} sent {} refused: {:?}: {why}\n",
                    op.client,
                    op.call / 1000,
                    op.command
                )
            })
            .collect();
        let found = report.findings.len();
        match verdict {
            Verdict::Linearizable(_) => {}
            Verdict::GaveUp { explored } => {
                report.gave_up += 1;
                println!(
                    "seed {seed}: gave up after {explored} steps; replay: {}",
                    replay(test, seed)
                );
            }
            Verdict::NotLinearizable { .. } => {
                println!("seed {seed}: {}", diagnose(&recorded));
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("histories");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("seed-{seed}.txt"));
                std::fs::write(&path, history::render(history)).unwrap();
                std::fs::write(
                    path.with_extension("json"),
                    serde_json::to_string(history).unwrap(),
                )
                .unwrap();
                println!("seed {seed}: the whole history is in {}", path.display());
                let small = history::shrink(history, SHRINK_BUDGET);
                report.findings.push(format!(
                    "seed {seed} (clients {CLIENTS}, {}): no serial order of the \
                     world explains this history ({} of {} operations kept by shrinking; `->` \
                     marks the answers that refute):\n{}\
                     left out as refused (certainly not applied):\n{refused}\
                     replay: {}",
                    perturbation.describe(),
                    small.history.ops.len(),
                    history.ops.len(),
                    small.render(),
                    replay(test, seed)
                ));
            }
        }
        for why in &recorded.unexplained {
            report.findings.push(format!(
                "seed {seed} ({}): {why}\nreplay: {}",
                perturbation.describe(),
                replay(test, seed)
            ));
        }
        for finding in &report.findings[found..] {
            println!("{finding}");
        }
        if first && !report.findings.is_empty() {
            break;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    println!("{}", report.figures());
    println!("answers: {:?}", report.answers);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_concurrent_history_on_postgres_is_explained_by_a_serial_world() {
    let report = run(
        "every_concurrent_history_on_postgres_is_explained_by_a_serial_world",
        seeds(),
        Mix::General,
        None,
        false,
    )
    .await;
    assert!(
        report.findings.is_empty(),
        "{} findings in {} histories:\n{}",
        report.findings.len(),
        report.checked,
        report.findings.join("\n\n")
    );
    assert!(
        report.overlapping * 2 >= report.checked,
        "only {} of {} histories had clients overlapping: they prove little",
        report.overlapping,
        report.checked
    );
    assert_eq!(report.gave_up, 0, "the search gave up on some histories");
}

/// The checker must be able to fail: with one deliberate mistake in the
/// backend's SQL, some history of the seed range is refuted.
async fn catches(test: &str, mix: Mix, mutation: SqlMutation) {
    let range = match std::env::var("WEIR_HISTORY_SEEDS") {
        Ok(_) => seeds(),
        Err(_) => 0..MUTANT_SEEDS,
    };
    let first = std::env::var("WEIR_HISTORY_ALL").is_err();
    let report = run(test, range.clone(), mix, Some(mutation), first).await;
    println!(
        "{mutation:?}: {} findings in {} histories",
        report.findings.len(),
        report.checked
    );
    assert!(
        !report.findings.is_empty(),
        "{mutation:?}: no history of seeds {range:?} was refuted ({})",
        report.figures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_receipt_batches_without_their_row_lock() {
    catches(
        "the_checker_catches_receipt_batches_without_their_row_lock",
        Mix::Rescues,
        SqlMutation::ReceiptsWithoutRowLock,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_claim_without_skip_locked() {
    catches(
        "the_checker_catches_a_claim_without_skip_locked",
        Mix::Backlog,
        SqlMutation::ClaimWithoutSkipLocked,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a known gap: found in about 2 of 100 histories before interrupts became lost \
            answers and claims' scans could hold their queue's jobs, in 0 of 400 since; \
            run it with WEIR_HISTORY_SEEDS=0..400 and --ignored"]
async fn the_checker_catches_a_completion_without_its_epoch_check() {
    catches(
        "the_checker_catches_a_completion_without_its_epoch_check",
        Mix::Rescues,
        SqlMutation::CompleteWithoutEpoch,
    )
    .await;
}

/// What would explain a refuted history: a refused operation that took
/// effect after all (tried one at a time, then all together, as lost
/// answers).
fn diagnose(recorded: &Recorded) -> String {
    let with = |refused: &[&(Op, String)]| {
        let mut history = recorded.history.clone();
        for (op, why) in refused {
            let mut op = op.clone();
            op.ret = None;
            op.outcome = None;
            op.lost = Some(format!("refused, tried as lost: {why}"));
            history.ops.push(op);
        }
        history.ops.sort_by_key(|op| op.call);
        history::check(&history, BUDGET)
    };
    for refused in &recorded.refused {
        if matches!(with(&[refused]), Verdict::Linearizable(_)) {
            return format!(
                "explained if this refused operation took effect: client {} sent {}: {:?}: {}",
                refused.0.client,
                refused.0.call / 1000,
                refused.0.command,
                refused.1
            );
        }
    }
    let all: Vec<&(Op, String)> = recorded.refused.iter().collect();
    if matches!(with(&all), Verdict::Linearizable(_)) {
        return "explained only if several refused operations took effect".into();
    }
    let mut answers = recorded.history.clone();
    answers.last = None;
    if matches!(history::check(&answers, BUDGET), Verdict::Linearizable(_)) {
        return "the answers are explained; the jobs storage holds at the end are not".into();
    }
    // The answers each of which, alone hidden, lets the rest be explained.
    let mut culprits = Vec::new();
    for i in 0..answers.ops.len() {
        if answers.ops[i].outcome.is_none() {
            continue;
        }
        let mut wider = answers.clone();
        wider.ops[i].outcome = None;
        wider.ops[i].ret = None;
        if matches!(history::check(&wider, BUDGET), Verdict::Linearizable(_)) {
            let op = &answers.ops[i];
            culprits.push(format!(
                "client {} sent {} @{}: {:?} -> {:?}",
                op.client,
                op.call / 1000,
                op.at.0,
                op.command,
                recorded.history.ops[i].outcome
            ));
        }
    }
    format!(
        "not explained by any refused operation taking effect; answers one of which is wrong \
         ({}):\n  {}",
        culprits.len(),
        culprits.join("\n  ")
    )
}

/// Whether an answer says its command changed something.
fn effect(outcome: &Outcome) -> &'static str {
    fn batch<T>(result: &weir_core::BatchResult<T>) -> &'static str {
        match result {
            Ok(items) if items.iter().any(|i| i.is_ok()) => "took effect",
            Ok(_) => "every item rejected",
            Err(_) => "rejected",
        }
    }
    fn list<T, E>(result: &Result<Vec<T>, E>) -> &'static str {
        match result {
            Ok(items) if !items.is_empty() => "took effect",
            Ok(_) => "found nothing",
            Err(_) => "rejected",
        }
    }
    match outcome {
        Outcome::Claimed(Ok(claimed)) if !claimed.jobs.is_empty() => "took effect",
        Outcome::Claimed(Ok(_)) => "found nothing",
        Outcome::Heartbeats(r) => batch(r),
        Outcome::Completed(r) => batch(r),
        Outcome::Failed(r) => batch(r),
        Outcome::Snoozed(r) => batch(r),
        Outcome::AttemptsCancelled(r) => batch(r),
        Outcome::Waiting(r) => batch(r),
        Outcome::Promoted(r) => list(r),
        Outcome::Pruned(r) => list(r),
        Outcome::Rescued(r) => list(r),
        other => {
            if format!("{other:?}").contains("Err(") {
                "rejected"
            } else {
                "took effect"
            }
        }
    }
}

// ---------------------------------------------------------------------
// The same checker over the memory backend.
// ---------------------------------------------------------------------

/// One history of `seed` against one memory backend: the same clients and
/// mix, each command applied under the backend's lock at the later of its
/// drawn time and the clock (the memory world clamps time, so the time
/// recorded is the one it ran at), with a random delay before and after
/// it, as a network would add, so that operations overlap.
async fn record_memory(seed: u64, nth: u64, world: World) -> History {
    let shared = Arc::new(Shared {
        clock: AtomicI64::new(1_000_000 + nth as i64 * 100_000),
        jobs: Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let clock = VirtualClock::new(Timestamp(0));
    let backend = Arc::new((
        Mutex::new(()),
        MemoryBackend::from_world(world, clock.clone()),
    ));
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let (shared, backend, clock) = (Arc::clone(&shared), Arc::clone(&backend), clock.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(seed, id, seed, Mix::General);
            let mut ops = Vec::new();
            for _ in 0..OPS_PER_CLIENT {
                let step = client.rng.random_range(0..150);
                let drawn = Timestamp(shared.clock.fetch_add(step, Ordering::SeqCst));
                let command = client.next(&shared, drawn);
                let (before, after) = (
                    client.rng.random_range(0..800u64),
                    client.rng.random_range(0..800u64),
                );
                let call = shared.since();
                tokio::time::sleep(Duration::from_micros(before)).await;
                let (at, outcome) = {
                    let _serial = backend.0.lock().unwrap();
                    let at = clock.advance_to(drawn);
                    (at, backend.1.apply(command.clone()))
                };
                tokio::time::sleep(Duration::from_micros(after)).await;
                let ret = shared.since();
                client.learn(&shared, &command, &outcome);
                ops.push(Op {
                    client: id,
                    at,
                    command,
                    call,
                    ret: Some(ret),
                    outcome: Some(outcome),
                    lost: None,
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
    let last = Some(history::observe(&backend.1.snapshot()));
    History {
        config: config(Mix::General),
        ops,
        holds: Vec::new(),
        last,
    }
}

/// Records and judges memory histories, stopping at the first refuted one
/// when `stop` says so; returns (checked, refuted, the first refutation,
/// overlapping).
async fn run_memory(
    seeds: std::ops::Range<u64>,
    mutation: Option<Mutation>,
    stop: bool,
) -> (u64, u64, Option<String>, u64) {
    let (mut checked, mut refuted, mut first, mut overlapping) = (0, 0, None, 0);
    for seed in seeds {
        let mut world = World::new(config(Mix::General));
        if let Some(mutation) = mutation {
            world = world.with_mutation(mutation);
        }
        let history = record_memory(seed, checked, world).await;
        checked += 1;
        if history::overlaps(&history) > 0 {
            overlapping += 1;
        }
        if history::check(&history, BUDGET).refuted() {
            refuted += 1;
            if first.is_none() {
                let small = history::shrink(&history, SHRINK_BUDGET);
                first = Some(format!(
                    "seed {seed}: no serial order of the world explains this memory history:\n{}",
                    small.render()
                ));
            }
            if stop {
                break;
            }
        }
    }
    (checked, refuted, first, overlapping)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_concurrent_history_on_the_memory_backend_is_explained_by_a_serial_world() {
    let started = Instant::now();
    let (checked, refuted, first, overlapping) = run_memory(seeds(), None, false).await;
    println!(
        "memory histories: {checked} in {:.1}s, {:.0}% with an overlap, {refuted} refuted",
        started.elapsed().as_secs_f64(),
        100.0 * overlapping as f64 / checked.max(1) as f64
    );
    assert_eq!(refuted, 0, "{}", first.unwrap_or_default());
    assert!(
        overlapping * 2 >= checked,
        "only {overlapping} of {checked} memory histories had clients overlapping"
    );
}

/// The memory backend run must be able to fail: over a world that grants
/// a slot without looking at its holder, some history is refuted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_memory_world_that_grants_a_held_slot() {
    let (checked, refuted, first, _) =
        run_memory(0..MUTANT_SEEDS, Some(Mutation::AcquireIgnoresHolder), true).await;
    println!("AcquireIgnoresHolder: {refuted} of {checked} memory histories refuted");
    println!("{}", first.as_deref().unwrap_or("none"));
    assert!(refuted > 0, "no memory history of {checked} was refuted");
}

/// Judges a history a finding wrote (`target/tmp/histories/seed-N.json`)
/// again, offline: `WEIR_HISTORY_FILE=… cargo test -p weir-tests --test
/// histories judge_a_written_history -- --ignored --nocapture`. Prints
/// where the search gets stuck: after the longest explained prefix, what
/// the world answers to each operation that could go next, against what
/// storage answered.
#[test]
#[ignore = "a tool: needs WEIR_HISTORY_FILE"]
fn judge_a_written_history() {
    let path = std::env::var("WEIR_HISTORY_FILE").expect("WEIR_HISTORY_FILE");
    let history: History = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let verdict = history::check(&history, BUDGET);
    let Verdict::NotLinearizable { longest } = verdict else {
        println!("{verdict:?}");
        return;
    };
    // Without the end state: if the answers alone are explained, show
    // where the jobs that order leaves differ from storage's.
    let mut answers = history.clone();
    answers.last = None;
    if let Verdict::Linearizable(order) = history::check(&answers, BUDGET) {
        let mut world = World::new(history.config.clone());
        for &i in &order {
            world.apply_at_own_time(history.ops[i].at, history.ops[i].command.clone());
        }
        let left = history::observe(&world);
        let stored = history.last.clone().unwrap_or_default();
        println!("the answers are explained by {order:?}; the jobs differ:");
        for job in left.iter().filter(|j| !stored.contains(j)) {
            println!("  world:   {job:?}");
        }
        for job in stored.iter().filter(|j| !left.contains(j)) {
            println!("  storage: {job:?}");
        }
    }
    if std::env::var("WEIR_HISTORY_SHRINK").is_ok() {
        let small = history::shrink(&history, 50 * BUDGET);
        println!("shrunk with a larger budget:\n{}", small.render());
    }
    let mut world = World::new(history.config.clone());
    for &i in &longest {
        world.apply_at_own_time(history.ops[i].at, history.ops[i].command.clone());
    }
    println!(
        "longest explained prefix: {} of {} operations",
        longest.len(),
        history.ops.len()
    );
    let pending: Vec<usize> = (0..history.ops.len())
        .filter(|i| !longest.contains(i))
        .collect();
    let first_return = pending
        .iter()
        .filter_map(|&i| history.ops[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    for &i in &pending {
        let op = &history.ops[i];
        if op.call > first_return {
            continue;
        }
        let got = world.clone().apply_at_own_time(op.at, op.command.clone());
        println!(
            "#{i} client {} @{}: {:?}\n   storage: {:?}\n   world:   {got:?}",
            op.client, op.at.0, op.command, op.outcome
        );
    }
}
