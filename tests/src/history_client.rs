//! The clients of a concurrent history (`tests/histories.rs`): what each
//! one sends, on which connection, at what time, and what it got back.
//!
//! A client runs in the recorder's process (a task) or in a process of
//! its own (`src/bin/history_client.rs`, which the recorder spawns with a
//! [`ClientSpec`]): the same [`run_client`] either way. Every process of a
//! history reads one [`Clock`], the system's monotonic clock, which all
//! processes on a machine share, so real-time order is known across them;
//! storage times come from the same clock.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use weir::BackendError;
use weir_core::cmd;
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, FailError, Failure, JobId, Kind, LeaderGrant,
    Millis, NewJob, Outcome, Payload, ProcessId, QueueName, Receipt, Reject, Retry, SemaphoreName,
    SlotGrant, SlotIndex, Timestamp, UniqueKey, WorldConfig,
};
use weir_postgres::{PgBackend, PgConfig, SchemaName};

use crate::history::Op;

/// Clients per history.
pub const CLIENTS: usize = 4;
/// Operations each client sends.
pub const OPS_PER_CLIENT: usize = 20;
/// The last client's statement timeout.
pub const STATEMENT_TIMEOUT_MS: u32 = 40;
/// The queues clients use.
pub const QUEUES: [&str; 2] = ["qa", "qb"];
/// The semaphore clients try slots of.
pub const SEMAPHORE: &str = "s";
/// Its permits.
pub const PERMITS: u16 = 2;
/// Storage milliseconds per real millisecond: a history runs for a few
/// hundred milliseconds, over which leases, heartbeats and backoffs of a
/// few seconds must lapse.
pub const STORAGE_SPEED: u64 = 20;

/// The recorder's clock for one history, the same in every process:
/// nanoseconds of `CLOCK_MONOTONIC` since `started`, and storage time
/// `base` plus [`STORAGE_SPEED`] times the real milliseconds since.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Clock {
    /// `CLOCK_MONOTONIC` when the history began, in nanoseconds.
    pub started: u64,
    /// Storage time when the history began, in milliseconds.
    pub base: i64,
}

impl Clock {
    /// A clock starting now, at storage time `base`.
    pub fn start(base: i64) -> Clock {
        Clock {
            started: monotonic(),
            base,
        }
    }

    /// Nanoseconds since the history began.
    pub fn since(&self) -> u64 {
        monotonic().saturating_sub(self.started)
    }

    /// Storage time now.
    pub fn storage_time(&self) -> Timestamp {
        let storage = self.since() / 1_000_000 * STORAGE_SPEED;
        Timestamp(self.base + i64::try_from(storage).unwrap_or(i64::MAX / 2))
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the
/// machine (Rust's `Instant` reads it too, but cannot say its value).
fn monotonic() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// What the clients mostly do. The general mix runs in CI on `main`; the
/// focused ones put more weight where a mutation hides, so that its test
/// finds it within a few seeds (the general mix finds each too, about
/// once in a hundred histories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mix {
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

/// The world's configuration of every history of `mix`.
pub fn config(mix: Mix) -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 2,
            lease_ttl: Millis(5_000),
            idle_threshold: Millis(1_500),
        },
        heartbeat_stale_after: Millis(if mix == Mix::Rescues { 250 } else { 600 }),
        backoff: Backoff::constant(Millis(if mix == Mix::Rescues { 100 } else { 300 })),
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

/// What the clients of one process share: the recorder's clock, the
/// ids enqueued so far (for admin cancel and retry, and the lock-holding
/// session), and the memory recorder's drawn storage times.
pub struct Shared {
    /// The history's clock.
    pub clock: Clock,
    /// Jobs enqueued so far, as the answers named them.
    pub jobs: Mutex<Vec<JobId>>,
    /// The memory recorder's storage clock: each command adds a step it
    /// draws.
    pub drawn: AtomicI64,
}

impl Shared {
    /// Shared state for one process of a history on `clock`.
    pub fn new(clock: Clock) -> Shared {
        Shared {
            clock,
            jobs: Mutex::new(Vec::new()),
            drawn: AtomicI64::new(clock.base),
        }
    }

    /// Nanoseconds since the history began, on [`Clock`].
    pub fn since(&self) -> u64 {
        self.clock.since()
    }
}

/// One client: what it has been granted, and its own random stream.
pub struct Client {
    id: usize,
    mix: Mix,
    process: ProcessId,
    /// The client's own random stream: its commands and its pauses.
    pub rng: ChaCha8Rng,
    receipts: Vec<Receipt>,
    waiting: Vec<Receipt>,
    claimers: BTreeMap<QueueName, ClaimerGrant>,
    slots: Vec<SlotGrant>,
    leader: Option<LeaderGrant>,
    /// Jobs this client has asked to enqueue: each job's payload is
    /// `client.n`, so a job found in storage names the enqueue it came
    /// from (the jobs of a lost answer are found that way).
    made: u64,
}

impl Client {
    /// Client `id` of the history `history` of `seed`.
    pub fn new(seed: u64, id: usize, history: u64, mix: Mix) -> Client {
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
            made: 0,
        }
    }

    fn some_receipts(&mut self) -> Vec<Receipt> {
        let n = self.rng.random_range(1..=self.receipts.len().clamp(1, 3));
        (0..n)
            .filter_map(|_| {
                // Where attempts are rescued, the oldest receipt is the
                // likeliest to be stale while its job runs again under a
                // newer epoch: half the time, report on it.
                let oldest = self.mix == Mix::Rescues && self.rng.random_bool(0.5);
                let i = match oldest {
                    true => 0,
                    false => self.rng.random_range(0..self.receipts.len().max(1)),
                };
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
    /// maintenance sweeps; and enqueues, client 0 most.
    pub fn next(&mut self, shared: &Shared, now: Timestamp) -> Command {
        let roll = self.rng.random_range(0..100);
        let enqueues = match (self.mix, self.id) {
            (Mix::General, 0) => 30,
            (_, 0) => 60,
            _ => 8,
        };
        if roll < enqueues {
            return self.enqueue(now);
        }
        let have_receipts = !self.receipts.is_empty();
        let roll = self.rng.random_range(0..100);
        if self.mix == Mix::Backlog && roll < 40 {
            let queue = queue(&mut self.rng, self.mix);
            return self.claim(queue);
        }
        if self.mix == Mix::Rescues && roll < 25 {
            // The leader sweeps: rescues make stale attempts retryable,
            // promotions make them available again, so they are claimed
            // under a newer epoch.
            if let Some(leader) = self.leader {
                return match roll < 15 {
                    true => Command::Rescue(cmd::Rescue {
                        leader,
                        draw: self.rng.random(),
                        max: 4,
                    }),
                    false => Command::Promote(cmd::Promote { leader, max: 4 }),
                };
            }
        }
        if self.mix == Mix::Rescues && roll < 40 {
            // Claim rather than report: attempts pile up, go stale, are
            // rescued and claimed again while their old holders keep the
            // receipts they will report on later.
            let queue = queue(&mut self.rng, self.mix);
            return self.claim(queue);
        }
        if self.mix == Mix::Rescues && roll < 55 && have_receipts {
            // ... and report on them: the oldest first, which is the
            // likeliest to have been rescued and to run again under a
            // newer epoch while this client still holds the old one.
            return Command::Complete(cmd::Complete {
                receipts: self.some_receipts(),
            });
        }
        match self.rng.random_range(0..100) {
            0..=3 => {
                let queue = queue(&mut self.rng, self.mix);
                match self.claimers.get(&queue) {
                    Some(claimer) => Command::ClaimerRelease(cmd::ClaimerRelease {
                        queue,
                        claimer: *claimer,
                    }),
                    None => self.claim(queue),
                }
            }
            4..=9 if have_receipts => Command::Heartbeat(cmd::Heartbeat {
                receipts: self.some_receipts(),
            }),
            10..=21 if have_receipts => Command::Complete(cmd::Complete {
                receipts: self.some_receipts(),
            }),
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
                Command::Fail(cmd::Fail { failures })
            }
            30..=31 if have_receipts => Command::Snooze(cmd::Snooze {
                snoozes: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(200)))
                    .collect(),
            }),
            32 if have_receipts => Command::CancelAttempts(cmd::CancelAttempts {
                receipts: self.some_receipts(),
            }),
            33 if have_receipts => Command::WaitExternal(cmd::WaitExternal {
                waits: self
                    .some_receipts()
                    .into_iter()
                    .map(|r| (r, Millis(800)))
                    .collect(),
            }),
            34 if !self.waiting.is_empty() => Command::ResumeExternal(cmd::ResumeExternal {
                receipt: self.waiting[self.rng.random_range(0..self.waiting.len())],
            }),
            35..=37 => {
                let jobs = shared.jobs.lock().unwrap();
                match jobs.get(self.rng.random_range(0..jobs.len().max(1))) {
                    Some(&job) if self.rng.random_bool(0.5) => Command::Cancel(cmd::Cancel { job }),
                    Some(&job) => Command::Retry(cmd::Retry { job }),
                    None => Command::ResumeQueue(cmd::ResumeQueue {
                        queue: queue(&mut self.rng, self.mix),
                    }),
                }
            }
            38 => Command::PauseQueue(cmd::PauseQueue {
                queue: queue(&mut self.rng, self.mix),
            }),
            39..=40 => Command::ResumeQueue(cmd::ResumeQueue {
                queue: queue(&mut self.rng, self.mix),
            }),
            41..=47 => self.slot(),
            48..=51 => match self.leader {
                Some(leader) if self.rng.random_bool(0.4) => {
                    Command::LeaderResign(cmd::LeaderResign { leader })
                }
                _ => Command::LeaderElect(cmd::LeaderElect {
                    process: self.process,
                }),
            },
            52..=65 => match self.leader {
                // A process that does not lead mostly tries to; sometimes
                // it sweeps with a term it guesses, which must be fenced.
                None if self.rng.random_bool(0.9) => Command::LeaderElect(cmd::LeaderElect {
                    process: self.process,
                }),
                _ => {
                    let leader = self.leader_grant();
                    match self.rng.random_range(0..10) {
                        0..=5 => Command::Rescue(cmd::Rescue {
                            leader,
                            draw: self.rng.random(),
                            max: 4,
                        }),
                        6..=7 => Command::Promote(cmd::Promote { leader, max: 4 }),
                        _ => Command::Prune(cmd::Prune {
                            leader,
                            older_than: Millis(500),
                            max: 4,
                        }),
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
        let (mix, client) = (self.mix, self.id);
        let made = &mut self.made;
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
                *made += 1;
                let payload = Payload(format!("{client}.{made}").into_bytes());
                let mut job = NewJob::new(queue(rng, mix), Kind::new("k").unwrap(), payload);
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
        Command::Enqueue(cmd::Enqueue { jobs })
    }

    /// A claim of `queue` when this client holds a claimer lease there,
    /// else an acquisition of one.
    fn claim(&mut self, queue: QueueName) -> Command {
        match self.claimers.get(&queue) {
            Some(claimer) => Command::Claim(cmd::Claim {
                queue,
                claimer: *claimer,
                max: self.rng.random_range(1..=4),
                kinds: None,
            }),
            None => Command::ClaimerAcquire(cmd::ClaimerAcquire {
                queue,
                process: self.process,
            }),
        }
    }

    fn slot(&mut self) -> Command {
        let semaphore = SemaphoreName::new(SEMAPHORE).unwrap();
        match self.slots.first() {
            Some(&grant) if self.rng.random_bool(0.6) => {
                if self.rng.random_bool(0.5) {
                    Command::SlotRenew(cmd::SlotRenew {
                        semaphore,
                        grant,
                        lease_ttl: Millis(1_000),
                    })
                } else {
                    Command::SlotRelease(cmd::SlotRelease { semaphore, grant })
                }
            }
            _ => Command::SlotTry(cmd::SlotTry {
                semaphore,
                permits: PERMITS,
                slot: SlotIndex(self.rng.random_range(0..PERMITS)),
                holder: self.process,
                lease_ttl: Some(Millis(1_000)),
            }),
        }
    }

    /// Keeps what an answer granted, and forgets what it took away.
    pub fn learn(&mut self, shared: &Shared, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            (Command::Enqueue(cmd::Enqueue { .. }), Outcome::Enqueued(Ok(enqueued))) => {
                shared
                    .jobs
                    .lock()
                    .unwrap()
                    .extend(enqueued.iter().map(|e| e.id));
            }
            (
                Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, .. }),
                Outcome::ClaimerAcquired(Ok((grant, _))),
            ) => {
                self.claimers.insert(queue.clone(), *grant);
            }
            (
                Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, .. }),
                Outcome::ClaimerAcquired(Err(_)),
            )
            | (Command::ClaimerRelease(cmd::ClaimerRelease { queue, .. }), _)
            | (Command::Claim(cmd::Claim { queue, .. }), Outcome::Claimed(Err(_))) => {
                self.claimers.remove(queue);
            }
            (Command::Claim(cmd::Claim { .. }), Outcome::Claimed(Ok(claimed))) => {
                self.receipts
                    .extend(claimed.jobs.iter().map(|job| job.receipt));
            }
            // Where attempts are rescued, a worker told its receipt is
            // stale keeps it and reports again, as a confused worker
            // would: a newer attempt of the job may be running by then,
            // which the receipt must not touch.
            (Command::Complete(cmd::Complete { receipts }), Outcome::Completed(Ok(answers)))
                if self.mix == Mix::Rescues =>
            {
                for (receipt, answer) in receipts.iter().zip(answers) {
                    if !matches!(answer, Err(Reject::StaleEpoch { .. })) {
                        self.receipts.retain(|r| r != receipt);
                    }
                }
            }
            (
                Command::Complete(cmd::Complete { receipts })
                | Command::CancelAttempts(cmd::CancelAttempts { receipts }),
                _,
            ) => self.receipts.retain(|r| !receipts.contains(r)),
            (Command::Fail(cmd::Fail { failures }), _) => self
                .receipts
                .retain(|r| !failures.iter().any(|f| f.receipt == *r)),
            (Command::Snooze(cmd::Snooze { snoozes }), _) => self
                .receipts
                .retain(|r| !snoozes.iter().any(|(s, _)| s == r)),
            (Command::WaitExternal(cmd::WaitExternal { waits }), _) => {
                self.receipts.retain(|r| !waits.iter().any(|(w, _)| w == r));
                self.waiting.extend(waits.iter().map(|(w, _)| *w));
            }
            (Command::ResumeExternal(cmd::ResumeExternal { receipt }), _) => {
                self.waiting.retain(|r| r != receipt)
            }
            (Command::SlotTry(cmd::SlotTry { .. }), Outcome::SlotTried(Ok(grant))) => {
                self.slots.push(*grant)
            }
            (Command::SlotRenew(cmd::SlotRenew { grant, .. }), Outcome::SlotRenewed(Err(_)))
            | (Command::SlotRelease(cmd::SlotRelease { grant, .. }), _) => {
                self.slots.retain(|g| g != grant)
            }
            (Command::LeaderElect(cmd::LeaderElect { .. }), Outcome::LeaderElected(Ok(grant))) => {
                self.leader = Some(*grant)
            }
            (Command::LeaderElect(cmd::LeaderElect { .. }), Outcome::LeaderElected(Err(_)))
            | (Command::LeaderResign(cmd::LeaderResign { .. }), _) => self.leader = None,
            _ => {}
        }
    }
}

/// What storage answered, as the recorder keeps it (a [`BackendError`]
/// by what the caller may assume).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    /// An outcome.
    Ok(Outcome),
    /// The answer was lost: the command may or may not have taken effect.
    Lost(String),
    /// Certainly not applied (`Unavailable` or `Refused`).
    NotApplied(String),
    /// Any other error (a misconfiguration): a finding.
    Other(String),
}

impl From<Result<Outcome, BackendError>> for Answer {
    fn from(answer: Result<Outcome, BackendError>) -> Answer {
        match answer {
            Ok(outcome) => Answer::Ok(outcome),
            Err(BackendError::Lost(why)) => Answer::Lost(why),
            Err(BackendError::Unavailable(why) | BackendError::Refused(why)) => {
                Answer::NotApplied(why)
            }
            Err(error) => Answer::Other(error.to_string()),
        }
    }
}

/// One command a client sent: the [`Op`] without its answer, when the
/// answer came back, and the answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sent {
    /// The operation, its `ret`, `outcome` and `lost` not yet filled in.
    pub op: Op,
    /// When the answer (or error) came back.
    pub ret: u64,
    /// What came back.
    pub answer: Answer,
}

/// Runs client `client` against `backend` for [`OPS_PER_CLIENT`]
/// commands, each at storage time now, with short pauses between them.
pub async fn run_client(backend: &PgBackend, client: &mut Client, shared: &Shared) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(OPS_PER_CLIENT);
    for _ in 0..OPS_PER_CLIENT {
        let pause = client.rng.random_range(0..4u64);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let at = shared.clock.storage_time();
        let command = client.next(shared, at);
        let call = shared.since();
        let answer = backend.execute_at(at, command.clone()).await;
        let ret = shared.since();
        if let Ok(outcome) = &answer {
            client.learn(shared, &command, outcome);
        }
        sent.push(Sent {
            op: Op {
                client: client.id,
                process: std::process::id(),
                at,
                command,
                call,
                ret: None,
                outcome: None,
                lost: None,
                found: Vec::new(),
            },
            ret,
            answer: answer.into(),
        });
    }
    sent
}

/// A client to run in a process of its own: what `history_client` is
/// given (as JSON in `WEIR_HISTORY_CLIENT`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSpec {
    /// The history's seed.
    pub seed: u64,
    /// Which client.
    pub client: usize,
    /// Which history of the run (fresh process ids per history).
    pub history: u64,
    /// What it mostly does.
    pub mix: Mix,
    /// Where, as the application's role.
    pub url: String,
    /// The history's clock.
    pub clock: Clock,
}

/// The connection options of `client` to `url`: its application name
/// (which the saboteur finds it by) and, for the last client, a statement
/// timeout of [`STATEMENT_TIMEOUT_MS`].
pub fn connect_options(url: &str, client: usize) -> PgConnectOptions {
    let options = PgConnectOptions::from_str(url)
        .expect("a Postgres URL")
        .application_name(&app_name(client));
    if client == CLIENTS - 1 {
        options.options([("statement_timeout", STATEMENT_TIMEOUT_MS.to_string())])
    } else {
        options
    }
}

/// A pool of two connections for `client` to `url`.
pub async fn connect(url: &str, client: usize) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect_options(url, client))
        .await
        .expect("connect as weir_app")
}

/// The backend's configuration for `mix`, in schema `weir`, without
/// NOTIFY.
pub fn pg_config(mix: Mix) -> PgConfig {
    PgConfig {
        schema: SchemaName::new("weir").expect("a schema name"),
        world: config(mix),
        notify: false,
        ..PgConfig::default()
    }
}

/// The application name of `client`'s connections.
pub fn app_name(client: usize) -> String {
    format!("weir-history-{client}")
}
