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
//! ## Two more shapes
//!
//! The model above is the **classic** shape ([`Lifecycle::new`],
//! [`Lifecycle::without_faults`]). Three smaller shapes widen it where the
//! code is wider, each on its own so that none multiplies another:
//!
//! **Leaders** ([`Lifecycle::leaders`]): one job, two workers, and two
//! maintenance processes whose leader lease (`leader_ttl = 1`) lapses
//! within the clock. The first is elected at `t = 0`; either may `Elect`
//! (win a lapsed lease with a new term, renew its own, or be refused) and
//! `Promote`/`Rescue` with the grant it holds, which it keeps until a write
//! is refused — so a deposed rescuer rescues late. Properties: those of
//! the classic shape, and "a deposed leader's maintenance write is
//! refused" (every accepted `Promote`/`Rescue` carried the latest term
//! granted, from its holder, while its lease was live; ghost from the
//! election outcomes, as in model 4). Examples: a deposed rescuer's
//! `Rescue` refused; a job rescued under a later term.
//!
//! **Batches** ([`Lifecycle::batches`]): three jobs in two queues (jobs 1
//! and 2 in `default`, job 3 in `other`), two workers that claim per queue
//! with `max: 2` and answer a whole batch in one command (`CompleteAll`,
//! `FailAll`: every receipt they hold), `Rescue` of one job per call (so of
//! a batch of two one can be rescued while the other is still live), and
//! `PauseQueue`/`ResumeQueue` (one pause). Time `0..=1`. Properties: those
//! of the classic shape, plus "a batch answers each item as if alone"
//! (every receipt batch is also applied item by item to a copy of the
//! world: the same answers, the same world). Examples: a batch of 2
//! claimed, a receipt batch with an accepted and a refused item, a claim
//! answered empty while its queue is paused.
//!
//! **Steps** ([`Lifecycle::steps`]): two jobs, two workers, and the steps
//! the classic shape lacks: `WaitExternal` (callback timeout 1, one wait in
//! all: a resumed wait refunds its attempt, so like a snooze it needs a
//! bound), the callback's `ResumeExternal` (at any time, once, late ones
//! included), expiry by `Rescue`, admin `Retry` (once) and `Prune` (of jobs
//! finished before now). Time `0..=1`. Properties: those of the classic
//! shape ("no job lost" allows exactly the jobs prune answered). Examples:
//! an admin retry, a resumed wait, an expired wait, a late callback fenced,
//! a pruned job.
//!
//! Neither has heartbeats (but classic and leaders), snoozes, cancels or
//! crashes: the classic shape explores those.
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
use weir_core::cmd;
use weir_core::{
    answer_of, Backoff, ClaimerConfig, ClaimerGrant, Command, Epoch, FailError, Failure, JobId,
    JobLimits, JobState, Kind, LeaderGrant, LeaderTerm, Millis, Mutation, NewJob, Outcome, Payload,
    ProcessId, QueueName, Receipt, Reject, Request, Retry, Timestamp, World, WorldConfig,
};

use crate::check::{apply, run, tick, Faults, STEP_INVARIANTS, WORLD_INVARIANTS};
use crate::symmetry::{least_hash, permutations, permute};
use weir_test_kit::{index, pid, queue};

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
/// Leaders shape: every accepted maintenance write carried the latest term
/// granted, came from its holder, and was made while its lease was live.
pub const DEPOSED_WRITE_REFUSED: &str = "a deposed leader's maintenance write is refused";
/// Example (leaders): a deposed leader's `Rescue` was refused.
pub const DEPOSED_RESCUE_REFUSED: &str = "a deposed rescuer's rescue is refused";
/// Example (leaders): a job was rescued under a term after the first.
pub const RESCUED_UNDER_LATER_TERM: &str = "a job is rescued under a later term";
/// Batches shape: a receipt batch answers each item as that item alone would
/// be answered, in order, and leaves the world as the items one by one do.
pub const BATCH_PER_ITEM: &str = "a batch answers each item as if alone";
/// Example (batches): one claim handed out two jobs.
pub const BATCH_OF_TWO: &str = "a batch of 2 is claimed";
/// Example (batches): one receipt batch had an accepted and a refused item.
pub const MIXED_BATCH: &str = "a receipt batch mixes accepted and refused items";
/// Example (steps): an admin retry was accepted.
pub const ADMIN_RETRIED: &str = "a finished job is retried by an admin";
/// Example (steps): an external callback resumed its wait.
pub const WAIT_RESUMED: &str = "an external wait is resumed";
/// Example (steps): an external wait expired (by rescue).
pub const WAIT_EXPIRED: &str = "an external wait expires";
/// Example (steps): a callback arriving after its wait expired was refused.
pub const LATE_CALLBACK_FENCED: &str = "a late callback is fenced";
/// Example (steps): a finished job was pruned.
pub const PRUNED: &str = "a finished job is pruned";
/// Example (batches): a claim found its queue paused with a job available,
/// and got nothing.
pub const PAUSED_CLAIM_EMPTY: &str = "a claim on a paused queue gets nothing";
/// Example (lost answer): a completion sent again is refused, the first
/// send having applied.
pub const RESENT_REFUSED: &str = "a completion sent again after a lost answer is refused";

/// The maintenance processes: not workers. The first is elected at `t = 0`.
const MAINTAINERS: [ProcessId; 2] = [ProcessId(100), ProcessId(101)];
/// The leader lease of the leaders shape (the others' outlives the clock).
pub const LAPSING_LEADER_TTL: Millis = Millis(1);
/// The callback timeout of the steps shape's external waits.
pub const CALLBACK_TIMEOUT: Millis = Millis(1);

/// Which shape of the model runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Classic,
    Leaders,
    Batches,
    Steps,
}

impl Shape {
    /// Workers that take steps (the others are [`Status::Absent`]).
    fn workers(self) -> usize {
        match self {
            Shape::Classic => WORKERS,
            Shape::Leaders | Shape::Batches | Shape::Steps => 2,
        }
    }

    /// The queue of each job, by job index.
    fn job_queues(self) -> Vec<QueueName> {
        match self {
            Shape::Classic => vec![queue(); JOBS],
            Shape::Leaders => vec![queue()],
            Shape::Batches => vec![queue(), queue(), other_queue()],
            Shape::Steps => vec![queue(); 2],
        }
    }

    /// The queues workers claim from.
    fn queues(self) -> Vec<QueueName> {
        match self {
            Shape::Batches => vec![queue(), other_queue()],
            Shape::Classic | Shape::Leaders | Shape::Steps => vec![queue()],
        }
    }

    /// The most jobs one claim asks for.
    fn claim_max(self) -> u32 {
        match self {
            Shape::Batches => 2,
            Shape::Classic | Shape::Leaders | Shape::Steps => 1,
        }
    }

    /// The most jobs one `Rescue` takes: one at a time in the batches
    /// shape, so that of two jobs claimed in one batch one can be rescued
    /// while the other is still its worker's.
    fn rescue_max(self) -> u32 {
        match self {
            Shape::Batches => 1,
            Shape::Classic | Shape::Leaders | Shape::Steps => 16,
        }
    }

    /// The clock stops here.
    fn time_max(self) -> Timestamp {
        match self {
            // Every example of these happens by t = 1: a claim at 0, a
            // wait due at 1, a rescue at 1 (stale, or the wait's expiry), a
            // job finished at 0 pruned at 1.
            Shape::Batches | Shape::Steps => Timestamp(1),
            Shape::Classic | Shape::Leaders => TIME_MAX,
        }
    }

    fn leader_ttl(self) -> Millis {
        match self {
            Shape::Leaders => LAPSING_LEADER_TTL,
            Shape::Classic | Shape::Batches | Shape::Steps => Millis(1_000),
        }
    }
}

/// The lifecycle model: which faults are on, and which bug (if any) the
/// core makes.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    shape: Shape,
    faults: bool,
    lost_answer: bool,
    liveness: bool,
    mutation: Option<Mutation>,
}

impl Lifecycle {
    /// Faults on (crash, cancel); safety properties.
    pub fn new() -> Lifecycle {
        Lifecycle {
            shape: Shape::Classic,
            faults: true,
            lost_answer: false,
            liveness: false,
            mutation: None,
        }
    }

    /// Crash and cancel off; safety plus the liveness property.
    pub fn without_faults() -> Lifecycle {
        Lifecycle {
            shape: Shape::Classic,
            faults: false,
            lost_answer: false,
            liveness: true,
            mutation: None,
        }
    }

    /// The classic shape with crash and cancel off, and one completion's
    /// answer lost: the worker sends it again, as the runtime retries a
    /// lost result. Its own shape: with crash and cancel on it triples the
    /// space.
    pub fn with_lost_answer() -> Lifecycle {
        Lifecycle {
            shape: Shape::Classic,
            faults: false,
            lost_answer: true,
            liveness: false,
            mutation: None,
        }
    }

    /// The leaders shape (see the module docs): a rescuer whose lease
    /// lapses and a successor with a new term.
    pub fn leaders() -> Lifecycle {
        Lifecycle {
            shape: Shape::Leaders,
            faults: false,
            lost_answer: false,
            liveness: false,
            mutation: None,
        }
    }

    /// The batches shape (see the module docs): claims of 2, receipt
    /// batches, two queues, pause.
    pub fn batches() -> Lifecycle {
        Lifecycle {
            shape: Shape::Batches,
            faults: false,
            lost_answer: false,
            liveness: false,
            mutation: None,
        }
    }

    /// The steps shape (see the module docs): external waits, admin retry,
    /// prune.
    pub fn steps() -> Lifecycle {
        Lifecycle {
            shape: Shape::Steps,
            faults: false,
            lost_answer: false,
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
    /// Not part of this shape: never takes a step.
    Absent,
}

/// One worker process, as it sees itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Worker {
    /// Whether it runs.
    pub status: Status,
    /// Its claimer lease on each queue it claims from, acquired at `t = 0`
    /// (leases outlive the clock).
    pub claimers: Vec<(QueueName, ClaimerGrant)>,
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
    /// Admin retries left.
    pub retries: u8,
    /// Queue pauses left.
    pub pauses: u8,
    /// External waits left (a resumed wait refunds its attempt, so, like
    /// snoozes, without a bound claim/wait/resume never ends).
    pub waits: u8,
}

/// Ghosts of the leaders, batches and steps shapes (constant in the classic one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghosts {
    /// The latest leader term granted, to which maintainer, and until when.
    pub latest: Option<(LeaderTerm, usize, Timestamp)>,
    /// The receipts an external system holds for waits it may resume.
    pub callbacks: BTreeSet<Receipt>,
    /// The jobs prune deleted.
    pub pruned: BTreeSet<JobId>,
    /// Which examples were seen, one bit per example property.
    pub seen: BTreeSet<&'static str>,
}

/// A state of the lifecycle model: the real world plus what the workers
/// hold, and ghost variables for the properties. Its `Hash` is taken up to a
/// relabelling of the workers (see [`crate::symmetry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleState {
    /// The core's reference world; its clock is the model's clock.
    pub world: World,
    /// Each maintainer's leader grant, if it believes it has one (the
    /// first's, from `t = 0`, never lapses but in the leaders shape).
    pub maintainers: [Option<LeaderGrant>; 2],
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
    /// Ghosts of the leaders and batches and steps shapes.
    pub ghosts: Ghosts,
    /// Broken properties (empty in every correct state).
    pub faults: Faults,
}

/// A step of the lifecycle model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LifecycleAction {
    /// Worker claims from a queue (by index: the batches shape has two).
    Claim(usize, usize),
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
    /// Batches: worker completes every attempt it holds, in one batch.
    CompleteAll(usize),
    /// Batches: worker fails every attempt it holds, in one batch.
    FailAll(usize, Retry),
    /// Steps: worker parks an attempt until an external callback.
    WaitExternal(usize, Receipt),
    /// Steps: the external callback for a wait arrives.
    Callback(Receipt),
    /// Steps: an admin retries a failed or cancelled job.
    AdminRetry(JobId),
    /// Batches: an admin pauses a queue (by index).
    Pause(usize),
    /// Batches: an admin resumes a paused queue.
    Unpause(usize),
    /// Leaders: a maintainer asks for (or renews) the leader lease.
    Elect(usize),
    /// Steps: the leader prunes jobs finished before now.
    Prune,
    /// Worker snoozes an attempt (delay 0).
    Snooze(usize, Receipt),
    /// A user cancels a job.
    Cancel(JobId),
    /// A maintainer promotes due jobs with its grant.
    Promote(usize),
    /// A maintainer rescues overdue jobs with its grant.
    Rescue(usize),
    /// A worker dies and loses its receipts.
    Crash(usize),
    /// Time passes.
    Tick,
}

fn other_queue() -> QueueName {
    QueueName::new("other").expect("a valid queue name")
}

fn config(shape: Shape) -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: WORKERS as u16,
            lease_ttl: Millis(1_000),
            idle_threshold: Millis(1_000),
        },
        heartbeat_stale_after: STALE_AFTER,
        backoff: Backoff::constant(Millis(0)),
        leader_ttl: shape.leader_ttl(),
        limits: JobLimits::default(),
        batch_max: 16,
    }
}

fn new_job(queue: QueueName) -> NewJob {
    NewJob {
        max_attempts: MAX_ATTEMPTS,
        timeout: TIMEOUT,
        ..NewJob::new(
            queue,
            Kind::new("work").expect("a valid kind"),
            Payload::default(),
        )
    }
}

/// Each item's answer out of a batch outcome of `len` items (a refusal of
/// the whole batch answers every item with it).
fn items<T: Clone>(
    batch: &Result<Vec<Result<T, Reject>>, Reject>,
    len: usize,
) -> Vec<Result<T, Reject>> {
    match batch {
        Ok(items) if items.len() == len => items.clone(),
        Ok(items) => panic!("a {len}-item batch answered {} items", items.len()),
        Err(reject) => vec![Err(reject.clone()); len],
    }
}

/// `command`'s items applied one at a time to a copy of `before`: the
/// outcome they add up to, and the world they leave. `None` for a command
/// that is not a receipt batch of two or more items, or when an item
/// panicked (the batch's own step reports that).
fn one_by_one(before: &World, command: &Command) -> Option<(Outcome, World)> {
    let len = match command {
        Command::Complete(cmd::Complete { receipts }) => receipts.len(),
        Command::Fail(cmd::Fail { failures }) => failures.len(),
        _ => 0,
    };
    if len < 2 {
        // A batch of one is its item alone (and the classic shapes, whose
        // batches all have one item, do not pay for the copy).
        return None;
    }
    let mut world = before.clone();
    let now = world.now();
    let mut scratch = Faults::default();
    let outcome = match command {
        Command::Complete(cmd::Complete { receipts }) => {
            let mut answers = Vec::new();
            for &receipt in receipts {
                let one = cmd::Complete {
                    receipts: vec![receipt],
                };
                let batch = run(&mut world, now, one, &mut scratch)?;
                answers.extend(items(&batch, 1));
            }
            Outcome::Completed(Ok(answers))
        }
        Command::Fail(cmd::Fail { failures }) => {
            let mut answers = Vec::new();
            for failure in failures {
                let one = cmd::Fail {
                    failures: vec![failure.clone()],
                };
                let batch = run(&mut world, now, one, &mut scratch)?;
                answers.extend(items(&batch, 1));
            }
            Outcome::Failed(Ok(answers))
        }
        _ => return None,
    };
    Some((outcome, world))
}

impl LifecycleState {
    fn now(&self) -> Timestamp {
        self.world.now()
    }

    fn apply(&mut self, command: Command) -> Option<Outcome> {
        let now = self.now();
        apply(&mut self.world, now, command, &mut self.faults)
    }

    /// [`LifecycleState::apply`] of one request, answered with its own type.
    fn run<R: Request>(&mut self, request: R) -> Option<R::Output> {
        self.apply(request.into()).map(answer_of::<R>)
    }

    /// [`LifecycleState::apply`] of a receipt batch, checking that it
    /// answers as its items one by one would ([`BATCH_PER_ITEM`]).
    fn apply_batch(&mut self, command: Command) -> Option<Outcome> {
        let alone = one_by_one(&self.world, &command);
        let outcome = self.apply(command)?;
        if let Some((answers, world)) = alone {
            if answers != outcome || world != self.world {
                self.faults.push(
                    BATCH_PER_ITEM,
                    format!("the batch answered {outcome:?}; item by item: {answers:?}"),
                );
            }
        }
        Some(outcome)
    }

    /// [`LifecycleState::apply_batch`] of one request, answered with its
    /// own type.
    fn run_batch<R: Request>(&mut self, request: R) -> Option<R::Output> {
        self.apply_batch(request.into()).map(answer_of::<R>)
    }

    fn job(&self, id: JobId) -> Option<&weir_core::Job> {
        self.world.job(id)
    }

    fn saw(&mut self, example: &'static str) {
        self.ghosts.seen.insert(example);
    }

    /// A worker's write was refused: it forgets the receipt.
    fn refused(&mut self, worker: usize, receipt: Receipt, reject: &Reject) {
        self.workers[worker].receipts.remove(&receipt);
        if matches!(reject, Reject::StaleEpoch { .. }) {
            self.fenced = true;
        }
    }

    /// A batch's answers had an accepted and a refused item.
    fn note_mixed<T>(&mut self, answers: &[Result<T, Reject>]) {
        if answers.iter().any(Result::is_ok) && answers.iter().any(Result::is_err) {
            self.saw(MIXED_BATCH);
        }
    }

    fn claim(&mut self, worker: usize, q: usize, max: u32) {
        let (queue, claimer) = self.workers[worker].claimers[q].clone();
        let epochs: BTreeMap<JobId, Epoch> = self.world.jobs().map(|j| (j.id, j.epoch)).collect();
        let waiting = self
            .world
            .jobs()
            .any(|j| j.queue == queue && matches!(j.state, JobState::Available { .. }));
        let paused = self.world.is_paused(&queue);
        let claim = cmd::Claim {
            queue,
            claimer,
            max,
            kinds: None,
        };
        let Some(Ok(claimed)) = self.run(claim) else {
            return;
        };
        assert!(
            !claimed.lease_refreshed,
            "claimer leases outlive the clock, so the fingerprint may leave them out"
        );
        if paused && waiting && claimed.jobs.is_empty() {
            self.saw(PAUSED_CLAIM_EMPTY);
        }
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
        let command = cmd::Heartbeat {
            receipts: vec![receipt],
        };
        let Some(batch) = self.run(command) else {
            return;
        };
        if let Err(reject) = items(&batch, 1).remove(0) {
            self.refused(worker, receipt, &reject);
        }
    }

    fn complete(&mut self, worker: usize, receipts: Vec<Receipt>) {
        let command = cmd::Complete {
            receipts: receipts.clone(),
        };
        let Some(batch) = self.run_batch(command) else {
            return;
        };
        let answers = items(&batch, receipts.len());
        self.note_mixed(&answers);
        for (&receipt, answer) in receipts.iter().zip(answers) {
            match answer {
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
    }

    fn fail(&mut self, worker: usize, receipts: Vec<Receipt>, retry: Retry) {
        let failures = receipts
            .iter()
            .map(|&receipt| Failure {
                receipt,
                error: FailError {
                    retry,
                    message: "boom".to_string(),
                },
                draw: 0,
            })
            .collect();
        let Some(batch) = self.run_batch(cmd::Fail { failures }) else {
            return;
        };
        let answers = items(&batch, receipts.len());
        self.note_mixed(&answers);
        for (&receipt, answer) in receipts.iter().zip(answers) {
            match answer {
                Ok(_) => {
                    self.workers[worker].receipts.remove(&receipt);
                }
                Err(reject) => self.refused(worker, receipt, &reject),
            }
        }
    }

    fn snooze(&mut self, worker: usize, receipt: Receipt) {
        let attempt = self
            .job(receipt.job)
            .expect("the classic shape never prunes")
            .attempt;
        let command = cmd::Snooze {
            snoozes: vec![(receipt, Millis(0))],
        };
        let Some(batch) = self.run(command) else {
            return;
        };
        match items(&batch, 1).remove(0) {
            Ok(()) => {
                self.workers[worker].receipts.remove(&receipt);
                self.budget.snoozes -= 1;
                let after = self.job(receipt.job).expect("snoozed, so there").attempt;
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

    fn wait_external(&mut self, worker: usize, receipt: Receipt) {
        let command = cmd::WaitExternal {
            waits: vec![(receipt, CALLBACK_TIMEOUT)],
        };
        let Some(batch) = self.run(command) else {
            return;
        };
        match items(&batch, 1).remove(0) {
            Ok(()) => {
                // The handler returns; the external system holds the receipt.
                self.workers[worker].receipts.remove(&receipt);
                self.ghosts.callbacks.insert(receipt);
                self.budget.waits -= 1;
            }
            Err(reject) => self.refused(worker, receipt, &reject),
        }
    }

    fn callback(&mut self, receipt: Receipt) {
        self.ghosts.callbacks.remove(&receipt);
        let Some(answer) = self.run(cmd::ResumeExternal { receipt }) else {
            return;
        };
        match answer {
            Ok(()) => self.saw(WAIT_RESUMED),
            Err(_)
                if self
                    .job(receipt.job)
                    .is_some_and(|j| j.epoch > receipt.epoch) =>
            {
                self.saw(LATE_CALLBACK_FENCED);
            }
            Err(_) => {}
        }
    }

    fn cancel(&mut self, job: JobId) {
        if let Some(Ok(_)) = self.run(cmd::Cancel { job }) {
            self.budget.cancels -= 1;
        }
    }

    fn retry(&mut self, job: JobId) {
        if let Some(Ok(())) = self.run(cmd::Retry { job }) {
            self.budget.retries -= 1;
        }
    }

    fn pause(&mut self, queue: QueueName, pause: bool) {
        let changed = if pause {
            self.run(cmd::PauseQueue { queue })
        } else {
            self.run(cmd::ResumeQueue { queue })
        };
        if let Some(true) = changed {
            if pause {
                self.budget.pauses -= 1;
            }
        }
    }

    fn elect(&mut self, m: usize) {
        let until = self.now().plus(self.world.config().leader_ttl);
        let command = cmd::LeaderElect {
            process: MAINTAINERS[m],
        };
        let Some(Ok(grant)) = self.run(command) else {
            return;
        };
        self.maintainers[m] = Some(grant);
        let newer = self
            .ghosts
            .latest
            .is_none_or(|(term, _, _)| grant.term >= term);
        if newer {
            self.ghosts.latest = Some((grant.term, m, until));
        }
    }

    /// After a maintenance write by `m` with `leader`: an accepted write
    /// must come from the latest term's holder while its lease is live; a
    /// refused one tells `m` it no longer leads.
    fn maintained(&mut self, m: usize, leader: LeaderGrant, result: Result<(), &Reject>) {
        let now = self.now();
        let latest = self.ghosts.latest;
        let legit = latest
            .is_some_and(|(term, holder, until)| term == leader.term && holder == m && now < until);
        match result {
            Ok(()) if !legit => self.faults.push(
                DEPOSED_WRITE_REFUSED,
                format!("a write with {leader:?} was accepted at {now}; latest is {latest:?}"),
            ),
            Ok(()) => {}
            Err(Reject::NotLeader { .. }) => self.maintainers[m] = None,
            Err(other) => panic!("a maintenance write answered {other:?}"),
        }
    }

    fn promote(&mut self, m: usize) {
        let Some(leader) = self.maintainers[m] else {
            return;
        };
        let command = cmd::Promote { leader, max: 16 };
        let Some(result) = self.run(command) else {
            return;
        };
        self.maintained(m, leader, result.as_ref().map(|_| ()));
    }

    fn prune(&mut self, m: usize) {
        let Some(leader) = self.maintainers[m] else {
            return;
        };
        let command = cmd::Prune {
            leader,
            older_than: Millis(0),
            max: 16,
        };
        let Some(result) = self.run(command) else {
            return;
        };
        self.maintained(m, leader, result.as_ref().map(|_| ()));
        if let Ok(pruned) = result {
            self.ghosts.pruned.extend(pruned);
        }
    }

    fn rescue(&mut self, m: usize, max: u32) {
        let Some(leader) = self.maintainers[m] else {
            return;
        };
        let holders: BTreeMap<JobId, ProcessId> = self
            .world
            .jobs()
            .filter_map(|job| match job.state {
                JobState::Running { holder, .. } => Some((job.id, holder)),
                _ => None,
            })
            .collect();
        let waiting: BTreeSet<JobId> = self
            .world
            .jobs()
            .filter(|job| matches!(job.state, JobState::WaitingExternal { .. }))
            .map(|job| job.id)
            .collect();
        let command = cmd::Rescue {
            leader,
            draw: 0,
            max,
        };
        let Some(result) = self.run(command) else {
            return;
        };
        self.maintained(m, leader, result.as_ref().map(|_| ()));
        let rescued = match result {
            Ok(rescued) => rescued,
            Err(_) => {
                let deposed = self
                    .ghosts
                    .latest
                    .is_some_and(|(term, _, _)| term > leader.term);
                if deposed {
                    self.saw(DEPOSED_RESCUE_REFUSED);
                }
                return;
            }
        };
        if !rescued.is_empty() && leader.term > LeaderTerm(1) {
            self.saw(RESCUED_UNDER_LATER_TERM);
        }
        for (job, _) in rescued {
            if waiting.contains(&job) {
                self.saw(WAIT_EXPIRED);
            }
            if let Some(worker) = (0..WORKERS).find(|&w| Some(&pid(w)) == holders.get(&job)) {
                self.rescued_from.insert(job, worker);
            }
        }
    }

    /// The completion is applied (or refused), but the worker never hears
    /// which: it drops the attempt from its running ones and keeps the
    /// receipt to send again.
    fn complete_answer_lost(&mut self, worker: usize, receipt: Receipt) {
        self.budget.lost_answers -= 1;
        self.workers[worker].receipts.remove(&receipt);
        self.workers[worker].unheard = Some(receipt);
        self.apply(Command::Complete(cmd::Complete {
            receipts: vec![receipt],
        }));
    }

    /// The resent completion: the first send applied or was refused, so
    /// this one changes nothing, and the worker is done with the receipt
    /// whatever the answer (the step checks judge what the world did).
    fn resend(&mut self, worker: usize) {
        let Some(receipt) = self.workers[worker].unheard.take() else {
            return;
        };
        let command = cmd::Complete {
            receipts: vec![receipt],
        };
        if let Some(batch) = self.run(command) {
            let done = self
                .job(receipt.job)
                .is_some_and(|job| job.state_name() == weir_core::StateName::Completed);
            if done && items(&batch, 1)[0].is_err() {
                self.saw(RESENT_REFUSED);
            }
        }
    }

    fn crash(&mut self, worker: usize) {
        self.budget.crashes -= 1;
        self.workers[worker].status = Status::Crashed;
        self.workers[worker].receipts.clear();
        self.workers[worker].unheard = None;
        self.apply(Command::ProcessCrashed(cmd::ProcessCrashed {
            process: pid(worker),
        }));
    }

    /// Ghost bookkeeping after every step.
    fn observe(&mut self) {
        // A (job, epoch) the job has left can never be compared again:
        // epochs only grow (`check_step` ends the path otherwise) and a
        // pruned job never comes back. Forgetting it keeps old histories
        // from splitting states.
        let world = &self.world;
        self.terminal_seen
            .retain(|&(id, epoch), _| world.job(id).is_some_and(|job| job.epoch == epoch));
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
            .filter(|(_, w)| w.status == Status::Alive)
            .flat_map(|(i, w)| w.receipts.iter().map(move |r| (i, *r)))
    }
}

impl LifecycleState {
    /// What the fingerprint covers, with workers relabelled by `perm`
    /// ([`crate::symmetry`]): the three workers are interchangeable (a
    /// shape with fewer marks the others [`Status::Absent`], which the
    /// relabelling carries along, so that is still a symmetry).
    ///
    /// Of the world it takes the clock, the jobs (with a running job's
    /// holder relabelled), the leader lease and the paused queues. The
    /// rest is constant in this model or derived from the jobs: the
    /// claimer tables (each worker's leases, acquired at `t = 0`, outlive
    /// the clock and are never refreshed — `claim` asserts it), the
    /// indexes (`check_invariants` checks they match the jobs) and the
    /// counters (the pruned count is the ghost's). Each worker's claimer
    /// grants are left out for the same reason.
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
        let paused: Vec<&QueueName> = self.world.paused().collect();
        (
            (self.world.now(), jobs, self.world.leadership(), paused),
            workers,
            self.budget,
            rescued_from,
            &self.terminal_seen,
            (self.fenced, self.rescued_completed_elsewhere),
            (&self.maintainers, &self.ghosts),
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
        let live = state
            .job(receipt.job)
            .is_some_and(|job| job.receipt() == Some(receipt));
        !live || current.insert(receipt)
    })
}

fn taken_is_fenced(state: &LifecycleState) -> bool {
    state.holders().all(|(worker, receipt)| {
        // A pruned job takes no write at all.
        let Some(job) = state.job(receipt.job) else {
            return true;
        };
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

/// Every job enqueued exists, but those prune answered, which do not.
fn no_job_lost(state: &LifecycleState, jobs: usize) -> bool {
    let ids: Vec<JobId> = state.world.jobs().map(|job| job.id).collect();
    let expected: Vec<JobId> = (1..=jobs as i64)
        .map(JobId)
        .filter(|id| !state.ghosts.pruned.contains(id))
        .collect();
    ids == expected
        && state.world.enqueued_total() == jobs as u64
        && state.world.pruned_total() == state.ghosts.pruned.len() as u64
}

fn all_terminal(state: &LifecycleState) -> bool {
    state.world.jobs().all(|job| job.state_name().is_terminal())
}

impl Model for Lifecycle {
    type State = LifecycleState;
    type Action = LifecycleAction;

    fn init_states(&self) -> Vec<LifecycleState> {
        let shape = self.shape;
        let mut world = World::new(config(shape));
        if let Some(m) = self.mutation {
            world = world.with_mutation(m);
        }
        let now = Timestamp::ZERO;
        let jobs = shape.job_queues().into_iter().map(new_job).collect();
        let enqueued = world.apply(now, Command::Enqueue(cmd::Enqueue { jobs }));
        assert!(matches!(enqueued, Outcome::Enqueued(Ok(_))), "{enqueued:?}");
        let elected = world.run(
            now,
            cmd::LeaderElect {
                process: MAINTAINERS[0],
            },
        );
        let leader = elected.expect("the first election wins");
        let workers = std::array::from_fn(|w| {
            let claimers = shape
                .queues()
                .into_iter()
                .map(|queue| {
                    let acquire = cmd::ClaimerAcquire {
                        queue: queue.clone(),
                        process: pid(w),
                    };
                    let (claimer, _) = world
                        .run(now, acquire)
                        .expect("K = WORKERS slots, so every worker gets one");
                    (queue, claimer)
                })
                .collect();
            Worker {
                status: if w < shape.workers() {
                    Status::Alive
                } else {
                    Status::Absent
                },
                claimers,
                receipts: BTreeSet::new(),
                unheard: None,
            }
        });
        let on = u8::from(self.faults);
        let steps = u8::from(shape == Shape::Steps);
        let batches = u8::from(shape == Shape::Batches);
        let classic = u8::from(shape == Shape::Classic);
        let until = now.plus(shape.leader_ttl());
        vec![LifecycleState {
            world,
            maintainers: [Some(leader), None],
            workers,
            budget: Budget {
                crashes: on,
                cancels: on,
                snoozes: classic,
                lost_answers: u8::from(self.lost_answer),
                retries: steps,
                pauses: batches,
                waits: steps,
            },
            rescued_from: BTreeMap::new(),
            terminal_seen: BTreeMap::new(),
            fenced: false,
            rescued_completed_elsewhere: false,
            ghosts: Ghosts {
                latest: Some((leader.term, 0, until)),
                ..Ghosts::default()
            },
            faults: Faults::default(),
        }]
    }

    fn actions(&self, state: &LifecycleState, actions: &mut Vec<LifecycleAction>) {
        use LifecycleAction::*;
        if !state.faults.is_empty() {
            return;
        }
        let shape = self.shape;
        let now = state.now();
        let jobs: Vec<&weir_core::Job> = state.world.jobs().collect();
        let queues = shape.queues();
        let available = |q: &QueueName| {
            jobs.iter()
                .any(|j| &j.queue == q && matches!(j.state, JobState::Available { .. }))
        };
        for (w, worker) in state.workers.iter().enumerate() {
            if worker.status != Status::Alive {
                continue;
            }
            // One batch at a time: a worker claims only when idle.
            if worker.receipts.is_empty() {
                for (q, queue) in queues.iter().enumerate() {
                    if available(queue) {
                        actions.push(Claim(w, q));
                    }
                }
            }
            if shape == Shape::Batches {
                if !worker.receipts.is_empty() {
                    actions.push(CompleteAll(w));
                    actions.push(FailAll(w, Retry::Backoff));
                }
            } else if shape == Shape::Steps {
                for &r in &worker.receipts {
                    actions.push(Complete(w, r));
                    actions.push(Fail(w, r, Retry::Backoff));
                    actions.push(Fail(w, r, Retry::Never));
                    if state.budget.waits > 0 {
                        actions.push(WaitExternal(w, r));
                    }
                }
            } else {
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
            if worker.unheard.is_some() {
                actions.push(Resend(w));
            }
            // A worker that holds nothing and crashes is indistinguishable
            // from one that never claims again, which interleaving already
            // explores; only a crash that loses receipts adds behaviour.
            if !worker.receipts.is_empty() && state.budget.crashes > 0 {
                actions.push(Crash(w));
            }
        }
        for &r in &state.ghosts.callbacks {
            actions.push(Callback(r));
        }
        for job in &jobs {
            if state.budget.cancels > 0 && !job.state_name().is_terminal() {
                actions.push(Cancel(job.id));
            }
            let finished = matches!(
                job.state,
                JobState::Failed { .. } | JobState::Cancelled { .. }
            );
            if state.budget.retries > 0 && finished {
                actions.push(AdminRetry(job.id));
            }
        }
        if shape == Shape::Batches {
            for (q, queue) in queues.iter().enumerate() {
                if state.world.is_paused(queue) {
                    actions.push(Unpause(q));
                } else if state.budget.pauses > 0 {
                    actions.push(Pause(q));
                }
            }
        }
        let due = jobs
            .iter()
            .any(|j| j.state.due_at().is_some_and(|at| at <= now));
        let overdue = jobs.iter().any(|j| {
            j.is_overdue(now, STALE_AFTER)
                || matches!(j.state, JobState::WaitingExternal { deadline, .. } if deadline <= now)
        });
        let prunable = jobs
            .iter()
            .any(|j| j.state.finished_at().is_some_and(|at| at < now));
        for (m, grant) in state.maintainers.iter().enumerate() {
            if shape == Shape::Leaders {
                actions.push(Elect(m));
            }
            if grant.is_none() {
                continue;
            }
            if due {
                actions.push(Promote(m));
            }
            if overdue {
                actions.push(Rescue(m));
            }
            if shape == Shape::Steps && prunable {
                actions.push(Prune);
            }
        }
        if now < shape.time_max() {
            actions.push(Tick);
        }
    }

    fn next_state(&self, last: &LifecycleState, action: LifecycleAction) -> Option<LifecycleState> {
        use LifecycleAction::*;
        let mut next = last.clone();
        let queues = self.shape.queues();
        match action {
            Claim(w, q) => next.claim(w, q, self.shape.claim_max()),
            Heartbeat(w, r) => next.heartbeat(w, r),
            Complete(w, r) => next.complete(w, vec![r]),
            CompleteAnswerLost(w, r) => next.complete_answer_lost(w, r),
            Resend(w) => next.resend(w),
            Fail(w, r, retry) => next.fail(w, vec![r], retry),
            CompleteAll(w) => {
                let receipts = next.workers[w].receipts.iter().copied().collect();
                next.complete(w, receipts);
            }
            FailAll(w, retry) => {
                let receipts = next.workers[w].receipts.iter().copied().collect();
                next.fail(w, receipts, retry);
            }
            Snooze(w, r) => next.snooze(w, r),
            WaitExternal(w, r) => next.wait_external(w, r),
            Callback(r) => next.callback(r),
            Cancel(job) => next.cancel(job),
            AdminRetry(job) => next.retry(job),
            Pause(q) => next.pause(queues[q].clone(), true),
            Unpause(q) => next.pause(queues[q].clone(), false),
            Elect(m) => next.elect(m),
            Promote(m) => next.promote(m),
            Rescue(m) => next.rescue(m, self.shape.rescue_max()),
            Prune => next.prune(0),
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
            Property::always(NO_JOB_LOST, |m: &Lifecycle, s: &LifecycleState| {
                no_job_lost(s, m.shape.job_queues().len())
            }),
            Property::sometimes(LATE_WORKER_FENCED, |_, s: &LifecycleState| s.fenced),
            Property::sometimes(RESCUED_COMPLETED_ELSEWHERE, |_, s: &LifecycleState| {
                s.rescued_completed_elsewhere
            }),
        ];
        // An example seen by a step (a ghost of `Ghosts::seen`).
        macro_rules! seen {
            ($name:expr) => {
                Property::sometimes($name, |_, s: &LifecycleState| s.ghosts.seen.contains($name))
            };
        }
        match self.shape {
            Shape::Classic => {}
            Shape::Leaders => {
                properties.push(Property::always(
                    DEPOSED_WRITE_REFUSED,
                    |_, s: &LifecycleState| s.faults.holds(DEPOSED_WRITE_REFUSED),
                ));
                properties.push(seen!(DEPOSED_RESCUE_REFUSED));
                properties.push(seen!(RESCUED_UNDER_LATER_TERM));
            }
            Shape::Batches => {
                properties.push(Property::always(BATCH_PER_ITEM, |_, s: &LifecycleState| {
                    s.faults.holds(BATCH_PER_ITEM)
                }));
                properties.push(Property::sometimes(
                    BATCH_OF_TWO,
                    |_, s: &LifecycleState| s.workers.iter().any(|w| w.receipts.len() == 2),
                ));
                properties.push(seen!(MIXED_BATCH));
                properties.push(seen!(PAUSED_CLAIM_EMPTY));
            }
            Shape::Steps => {
                properties.push(Property::sometimes(
                    ADMIN_RETRIED,
                    |_, s: &LifecycleState| s.budget.retries == 0,
                ));
                properties.push(seen!(WAIT_RESUMED));
                properties.push(seen!(WAIT_EXPIRED));
                properties.push(seen!(LATE_CALLBACK_FENCED));
                properties.push(Property::sometimes(PRUNED, |_, s: &LifecycleState| {
                    !s.ghosts.pruned.is_empty()
                }));
            }
        }
        if self.lost_answer {
            properties.push(seen!(RESENT_REFUSED));
        }
        if self.liveness {
            properties.push(Property::eventually(ALL_TERMINAL, |_, s| all_terminal(s)));
        }
        properties
    }
}
