//! Concurrent histories, judged by the world.
//!
//! A [`History`] is what several clients did to one backend at once: each
//! [`Op`] is a command with the time it ran at, when it was sent and when
//! its answer came back (on one monotonic clock), and the answer — or
//! nothing, when the answer was lost and the command may or may not have
//! taken effect. [`check`] decides whether the history is *linearizable*
//! with [`World`] as the sequential specification: whether some serial
//! order of the operations, consistent with real time (an operation that
//! returned before another was sent comes first), makes `World` give every
//! recorded answer. The search is Wing & Gong's, with Lowe's memoisation
//! (a set of operations done and the world they left, seen once).
//!
//! Where storage's freedom is wider than one serial world, the checker
//! says so here rather than loosening silently:
//!
//! - **Own time.** Each operation is applied at the time it ran at
//!   ([`World::apply_at_own_time`]), not clamped to the latest time seen:
//!   a database runs each transaction at its own start time, and commits
//!   need not follow those times.
//! - **Skipped locked rows.** A claim, promote, rescue or prune (each
//!   takes its rows `FOR UPDATE SKIP LOCKED`) may pass over a job that
//!   an operation overlapping it in real time names (another client's, or
//!   its own client's whose answer was lost) (by
//!   receipt, id, or as a job it claimed), or that a [`Hold`] — a session
//!   outside the clients holding rows locked — held while it ran, since
//!   the row may have been locked at that moment
//!   ([`World::apply_skipping`]). An overlapping claim may hold any job of
//!   its queue, and an overlapping promote, rescue or prune any job: a
//!   scan `FOR UPDATE` locks each row its snapshot matched before it
//!   re-checks it, and keeps the lock of a row the re-check drops. So does
//!   a sweep whose answer was lost (cancelled after its `FOR UPDATE`).
//!   An overlapping enqueue may hold the jobs that hold its unique keys
//!   ([`jobs_locked`]): it locks each holder it finds `FOR KEY SHARE`,
//!   and a racing winner's row with `ON CONFLICT DO UPDATE`, until it
//!   commits.
//!   Nothing else is skipped: a sweep that passes over a job nothing could
//!   have held is refuted. A sweep whose own answer was lost overlaps every
//!   operation sent after it, so nearly every job is skippable for it; it
//!   is tried both skipping them all and skipping none (what it does where
//!   no row was locked, and always in the memory backend). Before issue 14
//!   only the first was tried, which refuted simulator seed 28, whose lost
//!   claim had taken jobs in the simulator.
//! - **Lost answers.** An operation whose answer was lost is placed
//!   anywhere between when it was sent and when the error came back
//!   ([`Op::ret`]), or nowhere; with no `ret`, anywhere after it was sent.
//!   The recorder gives a `ret` because every fault it injects acts on the
//!   server (a cancel, a statement timeout, a terminated session), and a
//!   server that has answered with an error, or exited, does nothing
//!   more.
//! - **Refusals.** An operation storage answered with "certainly not
//!   applied" (`BackendError::Unavailable` or `Refused`) is not part of
//!   the history: it took no effect, so no order needs it. If it did take
//!   effect, the history without it is what refutes the answer. The rows
//!   it may have locked before it was rolled back are a [`Hold`] the
//!   recorder adds.
//!
//! - **The end.** When the history carries [`History::last`] (every job
//!   as storage held it after the last answer), the serial order must
//!   also leave exactly those jobs, states, epochs and attempts: a write
//!   no answer mentions is refuted too.
//!
//! [`shrink`] reduces a history the world cannot explain to a minimal
//! one that it still cannot explain, for the failure message.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};
use weir_core::cmd;
use weir_core::{
    Attempt, Command, Epoch, JobId, Outcome, StateName, Timestamp, World, WorldConfig,
};

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client issued it.
    pub client: usize,
    /// The operating-system process the client ran in.
    #[serde(default)]
    pub process: u32,
    /// The time it ran at, on storage's clock.
    pub at: Timestamp,
    /// What it asked.
    pub command: Command,
    /// When it was sent, in nanoseconds on the recorder's monotonic clock.
    pub call: u64,
    /// When its answer came back: for a lost answer, when the error did
    /// (the command took effect before it, or not at all). `None` when
    /// that is not known: a lost answer that may take effect any time
    /// after it was sent.
    pub ret: Option<u64>,
    /// The answer; `None` when it was lost (the command may or may not
    /// have taken effect).
    pub outcome: Option<Outcome>,
    /// Why the answer was lost, when it was.
    pub lost: Option<String>,
    /// For an enqueue whose answer was lost: the id storage gave each of
    /// its jobs, where the recorder found the job afterwards (by its
    /// payload, which no other job shares). The jobs of an answered
    /// enqueue are named by its answer.
    #[serde(default)]
    pub found: Vec<Option<JobId>>,
}

impl Op {
    fn determinate(&self) -> bool {
        self.outcome.is_some()
    }

    fn ret_or_never(&self) -> u64 {
        self.ret.unwrap_or(u64::MAX)
    }

    /// The ids storage gave an enqueue's new jobs, by position in the
    /// batch: from its answer, or what the recorder [`found`](Op::found).
    pub fn created(&self) -> Vec<Option<JobId>> {
        match &self.outcome {
            Some(Outcome::Enqueued(Ok(enqueued))) => enqueued
                .iter()
                .map(|e| (!e.duplicate).then_some(e.id))
                .collect(),
            Some(_) => Vec::new(),
            None => self.found.clone(),
        }
    }
}

/// Operations issued by clients at once, with the world's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct History {
    /// The configuration the backend decides with.
    pub config: WorldConfig,
    /// The operations, in the order they were sent.
    pub ops: Vec<Op>,
    /// Rows held locked by sessions that are not clients, while the
    /// operations ran.
    pub holds: Vec<Hold>,
    /// Every job as storage holds it once every operation has returned
    /// (read after the last one): the serial order must leave exactly
    /// these jobs, in these states, at these epochs and attempts. `None`
    /// when nothing was read.
    pub last: Option<Vec<Observed>>,
}

/// One job as storage held it at the end of a history.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Observed {
    /// The job.
    pub id: JobId,
    /// Its state.
    pub state: StateName,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its attempt count.
    pub attempt: Attempt,
}

/// The jobs of `world` as [`Observed`], in id order.
pub fn observe(world: &World) -> Vec<Observed> {
    let mut jobs: Vec<Observed> = world
        .jobs()
        .map(|job| Observed {
            id: job.id,
            state: job.state_name(),
            epoch: job.epoch,
            attempt: job.attempt,
        })
        .collect();
    jobs.sort();
    jobs
}

/// Jobs' rows a session outside the clients held locked (`FOR UPDATE`)
/// for a while: from before it asked for the locks until after it let
/// them go, on the recorder's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The jobs whose rows it locked.
    pub jobs: Vec<JobId>,
    /// When it asked for the locks.
    pub from: u64,
    /// When it had let them go.
    pub to: u64,
}

/// The most operations one history may hold (the search keeps a 128-bit
/// set of the operations done).
pub const MAX_OPS: usize = 128;

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A serial order explains every answer: the operations' indices in
    /// that order (lost operations that took no effect are left out).
    Linearizable(Vec<usize>),
    /// No serial order does. `longest` is the longest prefix of a serial
    /// order the search found: everything it explains before it is stuck.
    NotLinearizable {
        /// The longest explained prefix, as operation indices.
        longest: Vec<usize>,
    },
    /// The search gave up after `explored` steps without deciding.
    GaveUp {
        /// Steps searched.
        explored: u64,
    },
}

impl Verdict {
    /// True for [`Verdict::NotLinearizable`].
    pub fn refuted(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

/// Decides whether `history` is linearizable with respect to the world,
/// searching at most `budget` steps.
///
/// # Panics
///
/// If the history holds more than [`MAX_OPS`] operations.
pub fn check(history: &History, budget: u64) -> Verdict {
    assert!(
        history.ops.len() <= MAX_OPS,
        "a history holds at most {MAX_OPS} operations, not {}",
        history.ops.len()
    );
    let skippable = (0..history.ops.len())
        .map(|i| skippable(history, i))
        .collect();
    let mut search = Search {
        ops: &history.ops,
        last: history.last.as_ref(),
        skippable,
        memo: HashSet::new(),
        explored: 0,
        budget,
        longest: Vec::new(),
        order: Vec::new(),
    };
    let world = World::new(history.config.clone());
    match search.go(&world, 0) {
        Some(true) => Verdict::Linearizable(search.order),
        Some(false) => Verdict::NotLinearizable {
            longest: search.longest,
        },
        None => Verdict::GaveUp {
            explored: search.explored,
        },
    }
}

/// The jobs a sweep `i` (claim, promote, rescue, prune) may have passed
/// over as locked: those named by another client's operation that
/// overlaps it in real time or held by a [`Hold`] that does, less the
/// ones its answer names.
fn skippable(history: &History, i: usize) -> BTreeSet<JobId> {
    let op = &history.ops[i];
    if !sweeps_jobs(&op.command) {
        return BTreeSet::new();
    }
    let mut named = BTreeSet::new();
    for other in &history.ops {
        // Any client's, this one's too: an operation whose answer was lost
        // with no `ret` may still hold its locks after its client has
        // moved on. (With a `ret`, the server reported the interrupt
        // before it released them: the recorder adds a `Hold` for that.)
        let overlaps = !std::ptr::eq(other, op)
            && other.call < op.ret_or_never()
            && op.call < other.ret_or_never();
        if !overlaps {
            continue;
        }
        match &other.command {
            // A claim locks every row its snapshot showed available before
            // it re-checks it, and keeps the lock of a row the re-check
            // drops (taken meanwhile): any job of its queue.
            Command::Claim(cmd::Claim { queue, .. }) if other.outcome.is_some() => {
                named.extend(jobs_of(history, queue));
            }
            // Likewise promote, rescue and prune (any job their scans may
            // have matched in their snapshots), and any sweep whose answer
            // was lost (cancelled after its `FOR UPDATE`).
            command if sweeps_jobs(command) => named.extend(every_job(history)),
            _ => named.extend(jobs_locked(history, other)),
        }
    }
    for hold in &history.holds {
        if hold.from < op.ret_or_never() && op.call < hold.to {
            named.extend(hold.jobs.iter().copied());
        }
    }
    match &op.outcome {
        Some(Outcome::Claimed(Ok(claimed))) => {
            for job in &claimed.jobs {
                named.remove(&job.receipt.job);
            }
        }
        Some(Outcome::Promoted(Ok(ids)) | Outcome::Pruned(Ok(ids))) => {
            for id in ids {
                named.remove(id);
            }
        }
        Some(Outcome::Rescued(Ok(rescued))) => {
            for (id, _) in rescued {
                named.remove(id);
            }
        }
        _ => {}
    }
    named
}

/// Whether `command` takes the jobs it changes by a scan `FOR UPDATE SKIP
/// LOCKED` rather than by naming them.
pub fn sweeps_jobs(command: &Command) -> bool {
    matches!(
        command,
        Command::Claim(cmd::Claim { .. })
            | Command::Promote(cmd::Promote { .. })
            | Command::Rescue(cmd::Rescue { .. })
            | Command::Prune(cmd::Prune { .. })
    )
}

/// The jobs the history's enqueues created in `queue`.
fn jobs_of(history: &History, queue: &weir_core::QueueName) -> Vec<JobId> {
    history
        .ops
        .iter()
        .filter_map(|op| match &op.command {
            Command::Enqueue(cmd::Enqueue { jobs }) => Some(
                jobs.iter()
                    .zip(op.created())
                    .filter(|(job, _)| &job.queue == queue)
                    .filter_map(|(_, id)| id),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Every job the history's enqueues created.
fn every_job(history: &History) -> Vec<JobId> {
    history
        .ops
        .iter()
        .flat_map(|op| op.created().into_iter().flatten())
        .collect()
}

/// The jobs an operation names, so may hold locked while it runs.
pub fn jobs_named(op: &Op) -> Vec<JobId> {
    let mut jobs: Vec<JobId> = match &op.command {
        Command::Heartbeat(cmd::Heartbeat { receipts })
        | Command::Complete(cmd::Complete { receipts })
        | Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
            receipts.iter().map(|r| r.job).collect()
        }
        Command::Fail(cmd::Fail { failures }) => failures.iter().map(|f| f.receipt.job).collect(),
        Command::Snooze(cmd::Snooze { snoozes }) => snoozes.iter().map(|(r, _)| r.job).collect(),
        Command::WaitExternal(cmd::WaitExternal { waits }) => {
            waits.iter().map(|(r, _)| r.job).collect()
        }
        Command::ResumeExternal(cmd::ResumeExternal { receipt }) => vec![receipt.job],
        Command::Cancel(cmd::Cancel { job }) | Command::Retry(cmd::Retry { job }) => vec![*job],
        _ => Vec::new(),
    };
    if let Some(Outcome::Claimed(Ok(claimed))) = &op.outcome {
        jobs.extend(claimed.jobs.iter().map(|j| j.receipt.job));
    }
    jobs
}

/// The jobs whose rows `op` may have held locked while it ran: the ones
/// it [names](jobs_named), and for an enqueue with unique keys, the jobs
/// that hold its keys. An enqueue locks each holder it finds (`FOR KEY
/// SHARE`) and takes a racing winner's row with `ON CONFLICT DO UPDATE`,
/// both until it commits, so a sweep meanwhile skips that job although
/// it is available or finished: the duplicates the answer names, or,
/// with no answer, every job the history's enqueues created under one of
/// its keys.
pub fn jobs_locked(history: &History, op: &Op) -> Vec<JobId> {
    let mut jobs = jobs_named(op);
    let Command::Enqueue(cmd::Enqueue { jobs: new }) = &op.command else {
        return jobs;
    };
    match &op.outcome {
        Some(Outcome::Enqueued(Ok(enqueued))) => {
            jobs.extend(enqueued.iter().filter(|e| e.duplicate).map(|e| e.id));
        }
        Some(_) => {}
        None => {
            let keys: BTreeSet<_> = new
                .iter()
                .filter_map(|job| Some((&job.kind, job.unique_key.as_ref()?)))
                .collect();
            for other in &history.ops {
                let Command::Enqueue(cmd::Enqueue { jobs: made }) = &other.command else {
                    continue;
                };
                for (job, id) in made.iter().zip(other.created()) {
                    let key = job.unique_key.as_ref().map(|key| (&job.kind, key));
                    if let (Some(key), Some(id)) = (key, id) {
                        if keys.contains(&key) {
                            jobs.push(id);
                        }
                    }
                }
            }
        }
    }
    jobs
}

/// What `world` answers to `op`, applied as the checker applies it: at
/// its own time, an enqueue naming its jobs as storage did, a sweep
/// passing over `skip`.
fn apply(world: &mut World, op: &Op, skip: &BTreeSet<JobId>) -> Outcome {
    if let Command::Enqueue(cmd::Enqueue { jobs }) = &op.command {
        world.enqueue_as(op.at, jobs.clone(), &op.created())
    } else if skip.is_empty() {
        world.apply_at_own_time(op.at, op.command.clone())
    } else {
        world.apply_skipping(op.at, op.command.clone(), skip)
    }
}

/// The world the operations `order` of `history` leave, applied one after
/// another as the checker applies them, with the answer each got.
pub fn replay(history: &History, order: &[usize]) -> (World, Vec<Outcome>) {
    let mut world = World::new(history.config.clone());
    let answers = order
        .iter()
        .map(|&i| apply(&mut world, &history.ops[i], &skippable(history, i)))
        .collect();
    (world, answers)
}

/// What `world` would answer the `i`-th operation of `history` next.
pub fn answer_next(history: &History, world: &World, i: usize) -> Outcome {
    apply(&mut world.clone(), &history.ops[i], &skippable(history, i))
}

struct Search<'a> {
    ops: &'a [Op],
    last: Option<&'a Vec<Observed>>,
    skippable: Vec<BTreeSet<JobId>>,
    memo: HashSet<(u128, u64)>,
    explored: u64,
    budget: u64,
    longest: Vec<usize>,
    order: Vec<usize>,
}

impl Search<'_> {
    /// Some(true): a serial order of the operations not in `done` exists
    /// from `world` (left in `self.order`); Some(false): none does; None:
    /// out of budget.
    fn go(&mut self, world: &World, done: u128) -> Option<bool> {
        let pending: Vec<usize> = (0..self.ops.len())
            .filter(|&i| done & (1u128 << i) == 0)
            .collect();
        if pending.iter().all(|&i| !self.ops[i].determinate()) {
            // Every answer is explained; the jobs left must be the ones
            // storage was seen to hold at the end (lost operations still
            // pending may be placed to get there).
            match self.last {
                None => return Some(true),
                Some(last) if observe(world) == *last => return Some(true),
                Some(_) if pending.is_empty() => return Some(false),
                Some(_) => {}
            }
        }
        let mut hasher = DefaultHasher::new();
        world.hash(&mut hasher);
        if !self.memo.insert((done, hasher.finish())) {
            return Some(false);
        }
        self.explored += 1;
        if self.explored > self.budget {
            return None;
        }
        if self.order.len() > self.longest.len() {
            self.longest = self.order.clone();
        }
        // An operation can go next if none still pending returned before
        // it was sent.
        let first_return = pending
            .iter()
            .map(|&i| self.ops[i].ret_or_never())
            .min()
            .unwrap_or(u64::MAX);
        for &i in &pending {
            let op = &self.ops[i];
            if op.call > first_return {
                continue;
            }
            // A sweep whose answer was lost overlaps everything sent after
            // it, so its skippable set names nearly every job; skipping
            // them all is one thing it may have done, and meeting no lock
            // at all (a backend without row locks always does) another.
            let lost_sweep = !op.determinate() && !self.skippable[i].is_empty();
            let mut skips = vec![self.skippable[i].clone()];
            if lost_sweep {
                skips.push(BTreeSet::new());
            }
            for skip in &skips {
                let mut next = world.clone();
                let outcome = apply(&mut next, op, skip);
                let explains = match &op.outcome {
                    Some(recorded) => *recorded == outcome,
                    None => true,
                };
                if explains {
                    self.order.push(i);
                    match self.go(&next, done | (1u128 << i)) {
                        Some(true) => return Some(true),
                        None => return None,
                        Some(false) => {}
                    }
                    self.order.pop();
                }
            }
            // A lost operation may also have taken no effect at all.
            if !op.determinate() {
                match self.go(world, done | (1u128 << i)) {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
            }
        }
        Some(false)
    }
}

/// Shrinks a history the world cannot explain to one it still cannot,
/// keeping only answers that matter. Each answered operation, latest
/// first, has its answer hidden (made "answer lost", which only widens
/// what explains the history) where the rest still refutes it; then the
/// operations with hidden answers that were sent after every kept answer
/// came back are dropped (they could go last, or nowhere). Operations
/// are never dropped otherwise: a history without one that took effect is
/// not a history the backend could have given. Every step is checked with
/// `budget`; a step whose check gives up is not taken. The hidden answers
/// stay in [`Shrunk::hidden`], for the reader.
pub fn shrink(history: &History, budget: u64) -> Shrunk {
    let mut current = history.clone();
    let mut hidden = vec![None; current.ops.len()];
    for i in (0..current.ops.len()).rev() {
        if !current.ops[i].determinate() {
            continue;
        }
        let mut wider = current.clone();
        wider.ops[i].outcome = None;
        wider.ops[i].ret = None;
        wider.ops[i].lost = Some("hidden by shrinking".into());
        if check(&wider, budget).refuted() {
            hidden[i] = current.ops[i].outcome.clone();
            current = wider;
        }
    }
    let last_return = current
        .ops
        .iter()
        .filter_map(|op| op.outcome.as_ref().and(op.ret))
        .max()
        .unwrap_or(0);
    let keep: Vec<bool> = current
        .ops
        .iter()
        .map(|op| op.determinate() || op.call <= last_return)
        .collect();
    let mut kept = Vec::new();
    let mut kept_hidden = Vec::new();
    for (i, op) in current.ops.into_iter().enumerate() {
        if keep[i] {
            kept.push(op);
            kept_hidden.push(hidden[i].take());
        }
    }
    Shrunk {
        history: History {
            config: current.config,
            ops: kept,
            holds: current.holds,
            last: current.last,
        },
        hidden: kept_hidden,
    }
}

/// A shrunk history, and the answers shrinking hid (per operation).
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// Still refuted by the world.
    pub history: History,
    /// For each operation, the answer it really got, where shrinking hid
    /// it because the refutation does not need it.
    pub hidden: Vec<Option<Outcome>>,
}

impl Shrunk {
    /// The shrunk history as lines: answers the refutation needs as
    /// `->`, hidden ones as `(got …, not needed)`.
    pub fn render(&self) -> String {
        render_with(&self.history, &self.hidden)
    }
}

/// The history as lines, one per operation: client, time, sent and
/// returned (µs since the history began), command and answer.
pub fn render(history: &History) -> String {
    render_with(history, &[])
}

fn render_with(history: &History, hidden: &[Option<Outcome>]) -> String {
    let mut out = String::new();
    if let Some(last) = &history.last {
        let jobs: Vec<String> = last
            .iter()
            .map(|j| format!("{}:{}@e{}a{}", j.id.0, j.state, j.epoch.0, j.attempt.0))
            .collect();
        let _ = writeln!(out, "  storage's jobs at the end: {}", jobs.join(" "));
        let mut answers = history.clone();
        answers.last = None;
        if matches!(check(&answers, 200_000), Verdict::Linearizable(_)) {
            let _ = writeln!(
                out,
                "  (the answers alone are explained; the jobs left at the end are not)"
            );
        }
    }
    for (i, op) in history.ops.iter().enumerate() {
        let ret = match op.ret {
            Some(ret) => format!("{:>8}", ret / 1000),
            None => "       ?".to_owned(),
        };
        let outcome = match (&op.outcome, hidden.get(i).cloned().flatten()) {
            (Some(outcome), _) => format!("{outcome:?}"),
            (None, Some(got)) => format!("(got {got:?}; not needed to refute)"),
            (None, None) => format!(
                "answer lost (may or may not have taken effect): {}",
                op.lost.as_deref().unwrap_or("?")
            ),
        };
        let _ = writeln!(
            out,
            "  #{i:<3} client {} @{} sent {:>8} returned {ret}: {:?}\n         -> {outcome}",
            op.client,
            op.at.0,
            op.call / 1000,
            op.command
        );
    }
    out
}

/// Operations of `history` that overlap in real time with another
/// client's: the share of histories with one is reported, since a history
/// without any proves nothing a serial test would not.
pub fn overlaps(history: &History) -> usize {
    let ops = &history.ops;
    (0..ops.len())
        .filter(|&i| {
            ops.iter().enumerate().any(|(j, other)| {
                j != i
                    && other.client != ops[i].client
                    && other.call < ops[i].ret_or_never()
                    && ops[i].call < other.ret_or_never()
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{
        answer_of, ClaimerConfig, Kind, Millis, NewJob, Payload, ProcessId, QueueName,
    };

    fn config() -> WorldConfig {
        WorldConfig {
            claimer: ClaimerConfig {
                slots_per_queue: 1,
                lease_ttl: Millis(30_000),
                idle_threshold: Millis(10_000),
            },
            ..WorldConfig::default()
        }
    }

    fn queue() -> QueueName {
        QueueName::new("q").unwrap()
    }

    fn acquire(process: u64) -> Command {
        Command::ClaimerAcquire(cmd::ClaimerAcquire {
            queue: queue(),
            process: ProcessId(process),
        })
    }

    /// What the world answers to `commands` applied one after another.
    fn serial(commands: &[(Timestamp, Command)]) -> Vec<Outcome> {
        let mut world = World::new(config());
        commands
            .iter()
            .map(|(at, c)| world.apply_at_own_time(*at, c.clone()))
            .collect()
    }

    fn op(client: usize, at: i64, command: Command, call: u64, ret: u64, outcome: Outcome) -> Op {
        Op {
            client,
            process: 0,
            at: Timestamp(at),
            command,
            call,
            ret: Some(ret),
            outcome: Some(outcome),
            lost: None,
            found: Vec::new(),
        }
    }

    /// Two acquisitions of a one-slot queue at once: either may win, but
    /// not both.
    #[test]
    fn two_overlapping_acquisitions_are_explained_in_either_order_but_not_both_winning() {
        let answers = serial(&[(Timestamp(1), acquire(1)), (Timestamp(2), acquire(2))]);
        let (won, lost) = (answers[0].clone(), answers[1].clone());
        let history = |first: Outcome, second: Outcome| History {
            holds: Vec::new(),
            last: None,
            config: config(),
            ops: vec![
                op(0, 1, acquire(1), 0, 10, first),
                op(1, 2, acquire(2), 1, 9, second),
            ],
        };
        // Client 0 won.
        assert!(matches!(
            check(&history(won.clone(), lost.clone()), 10_000),
            Verdict::Linearizable(_)
        ));
        // Client 1 won (the order 1, 0).
        let swapped = serial(&[(Timestamp(2), acquire(2)), (Timestamp(1), acquire(1))]);
        assert!(matches!(
            check(&history(swapped[1].clone(), swapped[0].clone()), 10_000),
            Verdict::Linearizable(_)
        ));
        // Both won: the broken answer the checker exists to catch.
        let both = history(won, swapped[0].clone());
        assert!(check(&both, 10_000).refuted(), "both winning was explained");
    }

    /// Real time binds: the same two answers are refuted once the second
    /// acquisition was sent after the first returned.
    #[test]
    fn an_order_against_real_time_is_refused() {
        let swapped = serial(&[(Timestamp(2), acquire(2)), (Timestamp(1), acquire(1))]);
        let history = History {
            holds: Vec::new(),
            last: None,
            config: config(),
            ops: vec![
                op(0, 1, acquire(1), 0, 5, swapped[1].clone()),
                op(1, 2, acquire(2), 6, 9, swapped[0].clone()),
            ],
        };
        assert!(check(&history, 10_000).refuted());
    }

    /// A lost answer may have taken effect or not, and the shrinker keeps
    /// only what refutes.
    #[test]
    fn a_lost_answer_is_placed_or_dropped_and_shrinking_keeps_the_refutation() {
        let job = NewJob::new(queue(), Kind::new("k").unwrap(), Payload(vec![]));
        let enqueue = Command::Enqueue(cmd::Enqueue { jobs: vec![job] });
        let answers = serial(&[(Timestamp(1), enqueue.clone()), (Timestamp(2), acquire(1))]);
        let lost = Op {
            ret: None,
            outcome: None,
            ..op(0, 1, enqueue.clone(), 0, 0, answers[0].clone())
        };
        let mut history = History {
            holds: Vec::new(),
            last: None,
            config: config(),
            ops: vec![lost, op(1, 2, acquire(1), 1, 3, answers[1].clone())],
        };
        assert!(matches!(check(&history, 10_000), Verdict::Linearizable(_)));
        // Now a second acquisition that also says it opened the one slot.
        history
            .ops
            .push(op(2, 3, acquire(2), 4, 6, answers[1].clone()));
        assert!(check(&history, 10_000).refuted());
        let small = shrink(&history, 10_000);
        assert!(check(&small.history, 10_000).refuted());
        // Only the wrong answer is needed; the others are hidden.
        let answered: Vec<&Op> = small
            .history
            .ops
            .iter()
            .filter(|o| o.determinate())
            .collect();
        assert_eq!(answered.len(), 1, "{}", small.render());
        assert_eq!(answered[0].command, acquire(2));
        assert!(small.hidden[1].is_some(), "{}", small.render());
    }
    /// A claim may come back empty beside an available job while an
    /// enqueue that answered that job as its key's duplicate ran (its `ON
    /// CONFLICT DO UPDATE` held the row), and not once that enqueue had
    /// returned.
    #[test]
    fn a_claim_may_skip_a_job_only_while_an_enqueue_deduplicates_against_it() {
        let keyed = NewJob {
            unique_key: Some(weir_core::UniqueKey::new("u").unwrap()),
            ..NewJob::new(queue(), Kind::new("k").unwrap(), Payload(vec![]))
        };
        let enqueue = Command::Enqueue(cmd::Enqueue {
            jobs: vec![keyed.clone()],
        });
        let answers = serial(&[
            (Timestamp(1), enqueue.clone()),
            (Timestamp(2), acquire(1)),
            (Timestamp(3), enqueue.clone()),
        ]);
        let (claimer, _) = answer_of::<cmd::ClaimerAcquire>(answers[1].clone()).expect("acquired");
        let claim = Command::Claim(cmd::Claim {
            queue: queue(),
            claimer,
            max: 1,
            kinds: None,
        });
        let empty = Outcome::Claimed(Ok(weir_core::Claimed::default()));
        let history = |dedup: (u64, u64)| History {
            holds: Vec::new(),
            last: None,
            config: config(),
            ops: vec![
                op(0, 1, enqueue.clone(), 0, 1, answers[0].clone()),
                op(1, 2, acquire(1), 2, 3, answers[1].clone()),
                op(0, 3, enqueue.clone(), dedup.0, dedup.1, answers[2].clone()),
                op(1, 4, claim.clone(), 10, 12, empty.clone()),
            ],
        };
        assert!(matches!(answers[2], Outcome::Enqueued(Ok(ref e)) if e[0].duplicate));
        // The duplicate's enqueue overlaps the claim: the row may have
        // been locked.
        assert!(matches!(
            check(&history((9, 13)), 10_000),
            Verdict::Linearizable(_)
        ));
        // It had returned before the claim was sent: nothing held the job.
        assert!(check(&history((4, 5)), 10_000).refuted());
    }
}
