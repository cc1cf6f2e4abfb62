//! Model 1: a job's lifecycle, and the epoch fence around it.
//!
//! Two jobs, three worker processes and one maintenance leader share a
//! [`World`]. Every step is one real [`World::apply`] call:
//!
//! | action | command |
//! |---|---|
//! | `Claim(w)` | `Claim { max: 1 }` under the worker's claimer lease (each worker acquired one of K = 3 slots at `t = 0`; leases outlive the clock, so they never get in the way — model 2 is about them) |
//! | `Heartbeat`/`Complete`/`Fail`/`Snooze(w, receipt)` | the matching batch command with that one receipt (`Fail` retryable or terminal) |
//! | `Cancel(job)` | `Cancel` (of any unfinished job, running ones included) |
//! | `Promote`, `Rescue` | `Promote`/`Rescue` with the grant of a leader elected at `t = 0` (leader changes are model 4) |
//! | `Crash(w)` | `ProcessCrashed`; the worker loses its receipts and never steps again |
//! | `Tick` | the storage clock advances by one unit |
//!
//! A worker has one handler slot: it claims only while it holds no receipt.
//! It forgets a receipt once it has written a final answer for it
//! (complete, fail, snooze) or was told the receipt is no good, and keeps it
//! across heartbeats and across rescues and cancels it has not heard of.
//!
//! **Pauses need no action of their own.** A paused worker is a worker that
//! takes no step for a while and then goes on with the receipts it kept;
//! the checker explores every interleaving, including all those where a
//! worker sits still past the staleness limit, is rescued, and then
//! delivers its late completion (`a late worker is fenced` is the example).
//! An explicit `Pause` flag only removes behaviours, while multiplying
//! the states. For the same reason a crash is offered only to a worker
//! that holds a receipt: a worker that holds nothing and crashes is
//! indistinguishable from one that never claims again.
//!
//! ## Bounds
//!
//! `max_attempts = 2`; time `0..=2` in steps of 1; heartbeat staleness 1
//! and per-attempt timeout 2, so both rescue causes occur (a job claimed at
//! 0 and heartbeated at 1 is rescued at 2 by its deadline; one claimed at 1
//! and never heartbeated is rescued at 2 as stale); zero backoff and snooze
//! delay 0, so a requeued job is due at once. Faults: at most one crash and
//! one cancel; at most one snooze in all (a snooze refunds its attempt, so
//! without a bound claim/snooze never ends). No admin retry, no external
//! waits.
//!
//! ## Liveness
//!
//! [`Lifecycle::without_faults`] turns crash and cancel off and adds the
//! `eventually` property "every job reaches a terminal state". stateright
//! checks `eventually` on paths that end (a state with no successor). The
//! clock is bounded, every other step grows an epoch or moves a job towards
//! a terminal state or uses up a bounded snooze, and a step that changes
//! nothing is not a step (`next_state` returns `None`), so the state graph
//! is a finite DAG and every path ends. The property is stable (a terminal
//! job stays terminal without admin retry), so the checker's per-path
//! bookkeeping cannot miss a counterexample at a DAG join.
//!
//! What it proves: no interleaving of the modelled steps gets stuck with an
//! unfinished job — in every reachable state some step moves a live job on,
//! and when no step is left every job is finished. What it does not prove:
//! progress under an unbounded clock, or with a worker that heartbeats
//! forever and never finishes (that needs fairness, which this checker
//! cannot express); nor liveness under crashes (a crash just before the
//! clock stops leaves a job only a later rescue could move — the
//! `with_liveness` test shows the checker finds exactly that).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use stateright::{Model, Property};
use weir_core::{
    Backoff, ClaimerConfig, ClaimerGrant, Command, Epoch, FailError, Failure, JobId, JobLimits,
    JobState, Kind, LeaderGrant, Millis, Mutation, NewJob, Outcome, Payload, ProcessId, QueueName,
    Receipt, Reject, Retry, Timestamp, World, WorldConfig,
};

use crate::check::{apply, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::symmetry::{least_hash, permutations, permute};

/// Worker processes.
pub const WORKERS: usize = 3;
/// Jobs, enqueued at `t = 0`.
pub const JOBS: usize = 2;
/// `max_attempts` of every job.
pub const MAX_ATTEMPTS: u32 = 2;
/// The clock stops here.
pub const TIME_MAX: Timestamp = Timestamp(2);
/// A running job whose heartbeat is this old is rescued.
pub const STALE_AFTER: Millis = Millis(1);
/// Per-attempt timeout: a running job is rescued at its deadline.
pub const TIMEOUT: Millis = Millis(2);

/// A worker that still holds its receipt for a job's current epoch is the
/// only one: no two workers hold the current receipt of a running job.
pub const ONE_LIVE_ATTEMPT: &str = "at most one live attempt per job";
/// A worker whose attempt was taken away (rescued, cancelled) is fenced:
/// a receipt a worker still holds is either the job's running attempt
/// under that worker, or older than the job's epoch.
pub const TAKEN_IS_FENCED: &str = "a worker whose attempt was taken away is fenced";
/// Every claim hands out a receipt no earlier attempt had.
pub const OWN_EPOCH: &str = "every attempt has its own epoch";
/// A (job, epoch) that reached a terminal state never shows another one.
pub const ONE_TERMINAL: &str = "at most one terminal outcome per (job, epoch)";
/// `attempt <= max_attempts`, and a snooze gives its attempt back.
pub const ATTEMPTS_BOUNDED: &str = "attempts bounded; snooze uses none";
/// Both jobs exist, in exactly one state each (the index check is
/// `check_invariants`' `NoJobLost`).
pub const NO_JOB_LOST: &str = "no job lost";
/// Example: a worker's write was refused with `Reject::StaleEpoch`.
pub const LATE_WORKER_FENCED: &str = "a late worker is fenced";
/// Example: a job rescued from one worker was completed by another.
pub const RESCUED_COMPLETED_ELSEWHERE: &str = "a rescued job is completed by another process";
/// Liveness (faults off): every path ends with every job terminal.
pub const ALL_TERMINAL: &str = "every job reaches a terminal state";
/// *Sometimes* (lost answer): a completion sent again is refused, the
/// first send having applied.
pub const RESENT_REFUSED: &str = "a completion sent again after a lost answer is refused";

/// The maintenance leader: not one of the workers.
const MAINTAINER: ProcessId = ProcessId(100);

/// The lifecycle model: which faults are on, and which bug (if any) the
/// core makes.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    faults: bool,
    lost_answer: bool,
    liveness: bool,
    mutation: Option<Mutation>,
}

impl Lifecycle {
    /// Faults on (crash, cancel); safety properties.
    pub fn new() -> Lifecycle {
        Lifecycle {
            faults: true,
            lost_answer: false,
            liveness: false,
            mutation: None,
        }
    }

    /// Crash and cancel off; safety plus the liveness property.
    pub fn without_faults() -> Lifecycle {
        Lifecycle {
            faults: false,
            lost_answer: false,
            liveness: true,
            mutation: None,
        }
    }

    /// Crash and cancel off; one completion's answer is lost and the
    /// worker sends it again, as the runtime retries a lost result. Its
    /// own shape: with crash and cancel on it triples the space.
    pub fn with_lost_answer() -> Lifecycle {
        Lifecycle {
            faults: false,
            lost_answer: true,
            liveness: false,
            mutation: None,
        }
    }

    /// Checks the liveness property whatever the faults (with faults on it
    /// fails: the test that says so shows the property is not vacuous).
    pub fn with_liveness(self) -> Lifecycle {
        Lifecycle {
            liveness: true,
            ..self
        }
    }

    /// The same model over a world that makes the deliberate mistake `m`.
    pub fn with_mutation(self, m: Mutation) -> Lifecycle {
        Lifecycle {
            mutation: Some(m),
            ..self
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle::new()
    }
}

/// Whether a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Takes steps.
    Alive,
    /// Gone for good, receipts lost.
    Crashed,
}

/// One worker process, as it sees itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Worker {
    /// Whether it runs.
    pub status: Status,
    /// Its claimer lease, acquired at `t = 0` (leases outlive the clock).
    pub claimer: ClaimerGrant,
    /// The receipts it believes are its running attempts.
    pub receipts: BTreeSet<Receipt>,
    /// A completion whose answer it never heard, which it sends again (the
    /// runtime retries a lost result). The first send may have applied.
    pub unheard: Option<Receipt>,
}

/// Fault budgets left (model bounds, not core rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Crashes left.
    pub crashes: u8,
    /// Cancels left.
    pub cancels: u8,
    /// Snoozes left.
    pub snoozes: u8,
    /// Completion answers to lose, left.
    pub lost_answers: u8,
}

/// A state of the lifecycle model: the real world plus what the workers
/// hold, and ghost variables for the properties. Its `Hash` is taken up to a
/// relabelling of the workers (see [`crate::symmetry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// The maintenance leader's grant (elected at `t = 0`, never lapses).
    pub leader: LeaderGrant,
    /// The workers.
    pub workers: [Worker; WORKERS],
    /// Fault budgets left.
    pub budget: Budget,
    /// Ghost: the worker a job was rescued from, until the job finishes.
    pub rescued_from: BTreeMap<JobId, usize>,
    /// Ghost: the terminal state each (job, epoch) was first seen in.
    pub terminal_seen: BTreeMap<(JobId, Epoch), JobState>,
    /// Ghost: some write was refused with `StaleEpoch`.
    pub fenced: bool,
    /// Ghost: a rescued job was completed by a worker other than the one
    /// it was rescued from.
    pub rescued_completed_elsewhere: bool,
    /// Ghost: a resent completion was refused because its first send had
    /// completed the job.
    pub resent_refused: bool,
    /// Broken properties (empty in every correct state).
    pub faults: Faults,
}

/// A step of the lifecycle model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LifecycleAction {
    /// Worker claims one job.
    Claim(usize),
    /// Worker heartbeats an attempt.
    Heartbeat(usize, Receipt),
    /// Worker completes an attempt.
    Complete(usize, Receipt),
    /// Worker completes an attempt, and the answer is lost: it will send
    /// the completion again.
    CompleteAnswerLost(usize, Receipt),
    /// Worker sends again the completion whose answer it lost.
    Resend(usize),
    /// Worker fails an attempt, retryably or for good.
    Fail(usize, Receipt, Retry),
    /// Worker snoozes an attempt (delay 0).
    Snooze(usize, Receipt),
    /// A user cancels a job.
    Cancel(JobId),
    /// The leader promotes due jobs.
    Promote,
    /// The leader rescues overdue jobs.
    Rescue,
    /// A worker dies and loses its receipts.
    Crash(usize),
    /// Time passes.
    Tick,
}

fn queue() -> QueueName {
    QueueName::new("default").expect("a valid queue name")
}

fn pid(worker: usize) -> ProcessId {
    ProcessId(worker as u64 + 1)
}

fn index(id: ProcessId) -> usize {
    usize::try_from(id.0 - 1).expect("a worker's process id")
}

fn config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: WORKERS as u16,
            lease_ttl: Millis(1_000),
            idle_threshold: Millis(1_000),
        },
        heartbeat_stale_after: STALE_AFTER,
        backoff: Backoff::constant(Millis(0)),
        leader_ttl: Millis(1_000),
        limits: JobLimits::default(),
        batch_max: 16,
    }
}

fn new_job() -> NewJob {
    NewJob {
        max_attempts: MAX_ATTEMPTS,
        timeout: TIMEOUT,
        ..NewJob::new(
            queue(),
            Kind::new("work").expect("a valid kind"),
            Payload::default(),
        )
    }
}

/// Exactly one item's answer out of a one-item batch outcome.
fn single<T: Clone>(batch: &Result<Vec<Result<T, Reject>>, Reject>) -> Result<T, Reject> {
    match batch {
        Ok(items) if items.len() == 1 => items[0].clone(),
        Ok(items) => panic!("a one-item batch answered {} items", items.len()),
        Err(reject) => Err(reject.clone()),
    }
}

impl LifecycleState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    fn apply(&mut self, command: Command) -> Option<Outcome> {
        let now = self.now();
        apply(&mut self.world, now, command, &mut self.faults)
    }

    fn job(&self, id: JobId) -> &weir_core::Job {
        self.world.job(id).expect("the model never prunes")
    }

    /// A worker's write was refused: it forgets the receipt.
    fn refused(&mut self, worker: usize, receipt: Receipt, reject: &Reject) {
        self.workers[worker].receipts.remove(&receipt);
        if matches!(reject, Reject::StaleEpoch { .. }) {
            self.fenced = true;
        }
    }

    fn claim(&mut self, worker: usize) {
        let claimer = self.workers[worker].claimer;
        let epochs: BTreeMap<JobId, Epoch> = self.world.jobs().map(|j| (j.id, j.epoch)).collect();
        let claim = Command::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        };
        let Some(Outcome::Claimed(Ok(claimed))) = self.apply(claim) else {
            return;
        };
        assert!(
            !claimed.lease_refreshed,
            "claimer leases outlive the clock, so the fingerprint may leave them out"
        );
        for job in claimed.jobs {
            let receipt = job.receipt;
            if receipt.epoch <= epochs[&receipt.job] {
                self.faults.push(
                    OWN_EPOCH,
                    format!("claim handed out {receipt}, but the job was already at that epoch"),
                );
            }
            self.workers[worker].receipts.insert(receipt);
        }
    }

    fn heartbeat(&mut self, worker: usize, receipt: Receipt) {
        let command = Command::Heartbeat {
            receipts: vec![receipt],
        };
        let Some(Outcome::Heartbeats(batch)) = self.apply(command) else {
            return;
        };
        if let Err(reject) = single(&batch) {
            self.refused(worker, receipt, &reject);
        }
    }

    fn complete(&mut self, worker: usize, receipt: Receipt) {
        let command = Command::Complete {
            receipts: vec![receipt],
        };
        let Some(Outcome::Completed(batch)) = self.apply(command) else {
            return;
        };
        match single(&batch) {
            Ok(()) => {
                self.workers[worker].receipts.remove(&receipt);
                let from = self.rescued_from.get(&receipt.job);
                if from.is_some_and(|&from| from != worker) {
                    self.rescued_completed_elsewhere = true;
                }
            }
            Err(reject) => self.refused(worker, receipt, &reject),
        }
    }

    /// The completion is applied (or refused), but the worker never hears
    /// which: it drops the attempt from its running ones and keeps the
    /// receipt to send again.
    fn complete_answer_lost(&mut self, worker: usize, receipt: Receipt) {
        self.budget.lost_answers -= 1;
        self.workers[worker].receipts.remove(&receipt);
        self.workers[worker].unheard = Some(receipt);
        self.apply(Command::Complete {
            receipts: vec![receipt],
        });
    }

    /// The resent completion: the first send applied or was refused, so
    /// this one changes nothing, and the worker is done with the receipt
    /// whatever the answer (the step checks judge what the world did).
    fn resend(&mut self, worker: usize) {
        if let Some(receipt) = self.workers[worker].unheard.take() {
            let command = Command::Complete {
                receipts: vec![receipt],
            };
            if let Some(Outcome::Completed(batch)) = self.apply(command) {
                let done = self.job(receipt.job).state_name() == weir_core::StateName::Completed;
                self.resent_refused |= done && single(&batch).is_err();
            }
        }
    }

    fn fail(&mut self, worker: usize, receipt: Receipt, retry: Retry) {
        let failure = Failure {
            receipt,
            error: FailError {
                retry,
                message: "boom".to_string(),
            },
            draw: 0,
        };
        let command = Command::Fail {
            failures: vec![failure],
        };
        let Some(Outcome::Failed(batch)) = self.apply(command) else {
            return;
        };
        match single(&batch) {
            Ok(_) => {
                self.workers[worker].receipts.remove(&receipt);
            }
            Err(reject) => self.refused(worker, receipt, &reject),
        }
    }

    fn snooze(&mut self, worker: usize, receipt: Receipt) {
        let attempt = self.job(receipt.job).attempt;
        let command = Command::Snooze {
            snoozes: vec![(receipt, Millis(0))],
        };
        let Some(Outcome::Snoozed(batch)) = self.apply(command) else {
            return;
        };
        match single(&batch) {
            Ok(()) => {
                self.workers[worker].receipts.remove(&receipt);
                self.budget.snoozes -= 1;
                let after = self.job(receipt.job).attempt;
                if after.0 + 1 != attempt.0 {
                    self.faults.push(
                        ATTEMPTS_BOUNDED,
                        format!("snooze of {receipt} left attempt {attempt} at {after}"),
                    );
                }
            }
            Err(reject) => self.refused(worker, receipt, &reject),
        }
    }

    fn cancel(&mut self, job: JobId) {
        if let Some(Outcome::Cancelled(Ok(_))) = self.apply(Command::Cancel { job }) {
            self.budget.cancels -= 1;
        }
    }

    fn rescue(&mut self) {
        let holders: BTreeMap<JobId, ProcessId> = self
            .world
            .jobs()
            .filter_map(|job| match job.state {
                JobState::Running { holder, .. } => Some((job.id, holder)),
                _ => None,
            })
            .collect();
        let command = Command::Rescue {
            leader: self.leader,
            draw: 0,
            max: 16,
        };
        let Some(Outcome::Rescued(Ok(rescued))) = self.apply(command) else {
            return;
        };
        for (job, _) in rescued {
            if let Some(worker) = (0..WORKERS).find(|&w| Some(&pid(w)) == holders.get(&job)) {
                self.rescued_from.insert(job, worker);
            }
        }
    }

    fn crash(&mut self, worker: usize) {
        self.budget.crashes -= 1;
        self.workers[worker].status = Status::Crashed;
        self.workers[worker].receipts.clear();
        self.workers[worker].unheard = None;
        self.apply(Command::ProcessCrashed {
            process: pid(worker),
        });
    }

    /// Ghost bookkeeping after every step.
    fn observe(&mut self) {
        let finished: Vec<(JobId, Epoch, JobState)> = self
            .world
            .jobs()
            .filter(|job| job.state_name().is_terminal())
            .map(|job| (job.id, job.epoch, job.state.clone()))
            .collect();
        for (id, epoch, state) in finished {
            self.rescued_from.remove(&id);
            match self.terminal_seen.get(&(id, epoch)) {
                Some(seen) if *seen != state => self.faults.push(
                    ONE_TERMINAL,
                    format!("job {id} epoch {epoch} was {seen:?}, is now {state:?}"),
                ),
                Some(_) => {}
                None => {
                    self.terminal_seen.insert((id, epoch), state);
                }
            }
        }
    }

    /// Workers (not crashed) holding each receipt.
    fn holders(&self) -> impl Iterator<Item = (usize, Receipt)> + '_ {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.status != Status::Crashed)
            .flat_map(|(i, w)| w.receipts.iter().map(move |r| (i, *r)))
    }
}

impl LifecycleState {
    /// What the fingerprint covers, with workers relabelled by `perm`
    /// ([`crate::symmetry`]): the three workers are interchangeable.
    ///
    /// Of the world it takes the clock and the jobs (with a running job's
    /// holder relabelled). The rest is constant in this model or derived
    /// from the jobs: the claimer table (each worker's lease, acquired at
    /// `t = 0`, outlives the clock and is never refreshed — `claim` asserts
    /// it), the leader, the indexes (`check_invariants` checks they match
    /// the jobs) and the counters. Each worker's claimer grant is left out
    /// for the same reason.
    fn relabelled(&self, perm: &[usize]) -> impl Hash + '_ {
        let jobs: Vec<weir_core::Job> = self
            .world
            .jobs()
            .map(|job| {
                let mut job = job.clone();
                if let JobState::Running { holder, .. } = &mut job.state {
                    *holder = pid(perm[index(*holder)]);
                }
                job
            })
            .collect();
        let workers = permute(&self.workers, perm).map(|w| (w.status, w.receipts, w.unheard));
        let rescued_from: BTreeMap<JobId, usize> = self
            .rescued_from
            .iter()
            .map(|(&job, &w)| (job, perm[w]))
            .collect();
        (
            self.world.now(),
            jobs,
            workers,
            self.budget,
            rescued_from,
            &self.terminal_seen,
            (
                self.fenced,
                self.rescued_completed_elsewhere,
                self.resent_refused,
            ),
            &self.faults,
        )
    }
}

impl Hash for LifecycleState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        static PERMS: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
        let perms = PERMS.get_or_init(|| permutations(WORKERS));
        state.write_u64(least_hash(perms, |perm| self.relabelled(perm)));
    }
}

fn one_live_attempt(state: &LifecycleState) -> bool {
    let mut current = BTreeSet::new();
    state.holders().all(|(_, receipt)| {
        let job = state.job(receipt.job);
        let live = job.receipt() == Some(receipt);
        !live || current.insert(receipt)
    })
}

fn taken_is_fenced(state: &LifecycleState) -> bool {
    state.holders().all(|(worker, receipt)| {
        let job = state.job(receipt.job);
        let mine = matches!(job.state, JobState::Running { holder, .. } if holder == pid(worker));
        receipt.epoch < job.epoch || (receipt.epoch == job.epoch && mine)
    })
}

fn attempts_bounded(state: &LifecycleState) -> bool {
    state.faults.holds(ATTEMPTS_BOUNDED)
        && state
            .world
            .jobs()
            .all(|job| job.attempt <= job.max_attempts)
}

fn no_job_lost(state: &LifecycleState) -> bool {
    let ids: Vec<JobId> = state.world.jobs().map(|job| job.id).collect();
    let expected: Vec<JobId> = (1..=JOBS as i64).map(JobId).collect();
    ids == expected && state.world.enqueued_total() == JOBS as u64
}

fn all_terminal(state: &LifecycleState) -> bool {
    state.world.jobs().all(|job| job.state_name().is_terminal())
}

impl Model for Lifecycle {
    type State = LifecycleState;
    type Action = LifecycleAction;

    fn init_states(&self) -> Vec<LifecycleState> {
        let mut world = World::new(config());
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        let now = Timestamp::ZERO;
        let enqueued = world.apply(
            now,
            Command::Enqueue {
                jobs: vec![new_job(); JOBS],
            },
        );
        assert!(matches!(enqueued, Outcome::Enqueued(Ok(_))), "{enqueued:?}");
        let elected = world.apply(
            now,
            Command::LeaderElect {
                process: MAINTAINER,
            },
        );
        let Outcome::LeaderElected(Ok(leader)) = elected else {
            panic!("the first election wins: {elected:?}");
        };
        let workers = std::array::from_fn(|w| {
            let acquire = Command::ClaimerAcquire {
                queue: queue(),
                process: pid(w),
            };
            let acquired = world.apply(now, acquire);
            let Outcome::ClaimerAcquired(Ok((claimer, _))) = acquired else {
                panic!("K = WORKERS slots, so every worker gets one: {acquired:?}");
            };
            Worker {
                status: Status::Alive,
                claimer,
                receipts: BTreeSet::new(),
                unheard: None,
            }
        });
        let on = u8::from(self.faults);
        vec![LifecycleState {
            world,
            leader,
            workers,
            budget: Budget {
                crashes: on,
                cancels: on,
                snoozes: 1,
                lost_answers: u8::from(self.lost_answer),
            },
            rescued_from: BTreeMap::new(),
            terminal_seen: BTreeMap::new(),
            fenced: false,
            rescued_completed_elsewhere: false,
            resent_refused: false,
            faults: Faults::default(),
        }]
    }

    fn actions(&self, state: &LifecycleState, actions: &mut Vec<LifecycleAction>) {
        use LifecycleAction::*;
        if !state.faults.is_empty() {
            return;
        }
        let now = state.now();
        let jobs: Vec<&weir_core::Job> = state.world.jobs().collect();
        let available = jobs
            .iter()
            .any(|j| matches!(j.state, JobState::Available { .. }));
        for (w, worker) in state.workers.iter().enumerate() {
            match worker.status {
                Status::Alive => {
                    // One handler slot per worker: it claims only when idle.
                    if available && worker.receipts.is_empty() {
                        actions.push(Claim(w));
                    }
                    for &r in &worker.receipts {
                        actions.push(Heartbeat(w, r));
                        actions.push(Complete(w, r));
                        if state.budget.lost_answers > 0 {
                            actions.push(CompleteAnswerLost(w, r));
                        }
                        actions.push(Fail(w, r, Retry::Backoff));
                        actions.push(Fail(w, r, Retry::Never));
                        if state.budget.snoozes > 0 {
                            actions.push(Snooze(w, r));
                        }
                    }
                }
                Status::Crashed => {}
            }
            if worker.status == Status::Alive && worker.unheard.is_some() {
                actions.push(Resend(w));
            }
            // A worker that holds nothing and crashes is indistinguishable
            // from one that never claims again, which interleaving already
            // explores; only a crash that loses receipts adds behaviour.
            let holds = !worker.receipts.is_empty();
            if worker.status != Status::Crashed && holds && state.budget.crashes > 0 {
                actions.push(Crash(w));
            }
        }
        if state.budget.cancels > 0 {
            for job in &jobs {
                if !job.state_name().is_terminal() {
                    actions.push(Cancel(job.id));
                }
            }
        }
        if jobs
            .iter()
            .any(|j| j.state.due_at().is_some_and(|at| at <= now))
        {
            actions.push(Promote);
        }
        if jobs.iter().any(|j| j.is_overdue(now, STALE_AFTER)) {
            actions.push(Rescue);
        }
        if now < TIME_MAX {
            actions.push(Tick);
        }
    }

    fn next_state(&self, last: &LifecycleState, action: LifecycleAction) -> Option<LifecycleState> {
        use LifecycleAction::*;
        let mut next = last.clone();
        match action {
            Claim(w) => next.claim(w),
            Heartbeat(w, r) => next.heartbeat(w, r),
            Complete(w, r) => next.complete(w, r),
            CompleteAnswerLost(w, r) => next.complete_answer_lost(w, r),
            Resend(w) => next.resend(w),
            Fail(w, r, retry) => next.fail(w, r, retry),
            Snooze(w, r) => next.snooze(w, r),
            Cancel(job) => next.cancel(job),
            Promote => {
                next.apply(Command::Promote {
                    leader: next.leader,
                    max: 16,
                });
            }
            Rescue => next.rescue(),
            Crash(w) => next.crash(w),
            Tick => {
                let now = next.now().plus(Millis(1));
                tick(&mut next.world, now, &mut next.faults);
            }
        }
        next.observe();
        // A step that changes nothing is no step: this keeps every path
        // finite, which the `eventually` property relies on.
        (next != *last).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(WORLD_INVARIANTS, |_, s: &LifecycleState| {
                s.faults.holds(WORLD_INVARIANTS)
            }),
            Property::always(STEP_INVARIANTS, |_, s: &LifecycleState| {
                s.faults.holds(STEP_INVARIANTS)
            }),
            Property::always(ONE_LIVE_ATTEMPT, |_, s: &LifecycleState| {
                one_live_attempt(s)
            }),
            Property::always(TAKEN_IS_FENCED, |_, s: &LifecycleState| taken_is_fenced(s)),
            Property::always(OWN_EPOCH, |_, s: &LifecycleState| s.faults.holds(OWN_EPOCH)),
            Property::always(ONE_TERMINAL, |_, s: &LifecycleState| {
                s.faults.holds(ONE_TERMINAL)
            }),
            Property::always(ATTEMPTS_BOUNDED, |_, s: &LifecycleState| {
                attempts_bounded(s)
            }),
            Property::always(NO_JOB_LOST, |_, s: &LifecycleState| no_job_lost(s)),
            Property::sometimes(LATE_WORKER_FENCED, |_, s: &LifecycleState| s.fenced),
            Property::sometimes(RESCUED_COMPLETED_ELSEWHERE, |_, s: &LifecycleState| {
                s.rescued_completed_elsewhere
            }),
        ];
        if self.liveness {
            properties.push(Property::eventually(ALL_TERMINAL, |_, s| all_terminal(s)));
        }
        if self.lost_answer {
            properties.push(Property::sometimes(RESENT_REFUSED, |_, s: &LifecycleState| {
                s.resent_refused
            }));
        }
        properties
    }
}
