//! Trace validation: a run of the core, written out as a behaviour for TLC
//! to check against `correctness/Lifecycle.tla`.
//!
//! [`LifecycleTrace::replay`] applies a recorded run (the simulator's
//! steps, in order, at their times) to a world with the core's real
//! [`World::apply`], and turns every step that touches a job into the
//! `Lifecycle.tla` action it stands for, with its arguments, the core's
//! answer (accepted or rejected) and the job's `(state, epoch, attempt)`
//! afterwards. [`LifecycleTrace::to_tla`] writes that as the module
//! `LifecycleTraceData`, which `correctness/LifecycleTrace.tla` reads: TLC
//! then checks that the spec can take exactly these steps, in this order,
//! reaching exactly these states. A core that decides differently from the
//! spec, or a mapping that says one thing and does another, fails there.
//!
//! How the core's commands map onto the spec (`correctness/MAPPING.md`,
//! "Trace validation", says why each is sound):
//!
//! | command | event(s) | spec action |
//! |---|---|---|
//! | `Enqueue` | none: the new job's first state goes into `Init` | `Init` |
//! | `Claim` | one `claim` per claimed job, each by a new spec process | `Claim(p, j)` |
//! | `Heartbeat`, `Complete`, `Fail`, `Snooze`, `WaitExternal`, `CancelAttempts` | one `write` per item | `Write(p, r, kind)` |
//! | `Snooze` that makes the job available at once | `write` then `promote` | `Write(p, r, "snooze")`, `Promote(j)` |
//! | `ResumeExternal` | `resume` | `ResumeExternal(r)` |
//! | `Promote` | one `promote` per job | `Promote(j)` |
//! | `Rescue` | one `rescue` per job | `Rescue(j)` or `ExpireExternal(j)` |
//! | `Cancel`, `Retry` | `cancel`, `retry` (also when rejected) | `Cancel(j)`, `AdminRetry(j)` |
//! | `ProcessCrashed` | one `crash` per spec process of it that still holds a receipt it never uses again | `Crash(p)` |
//! | `Prune` | one `prune` per job | none: a stutter (the spec never deletes a job) |
//! | claimer, semaphore, leader and queue-pause commands; rejected claims and maintenance | none | — (not in this spec) |
//!
//! Processes: the spec's `Claim` needs a process with no receipt, while a
//! simulated process runs many attempts at once. So every claim gets a spec
//! process of its own (the attempt's worker slot): spec process `p` holds
//! exactly the receipt of the `p`-th claim. Whether a worker "keeps" its
//! receipt after an accepted write (the spec's `LOST_ACK`: it may send a
//! write with it again) is the environment's choice, so the trace says what
//! happened: kept when the receipt is used again later.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use weir_core::cmd;
use weir_core::{
    answer_of, Command, Epoch, Failure, JobId, Millis, Outcome, ProcessId, Receipt, Reject, Retry,
    StateName, Timestamp, World,
};

/// What a trace event stands for in `Lifecycle.tla`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// `Claim(p, j)`.
    Claim,
    /// `Write(p, r, kind)`.
    Write,
    /// `ResumeExternal(r)`.
    Resume,
    /// `Promote(j)`.
    Promote,
    /// `Rescue(j)` or `ExpireExternal(j)`.
    Rescue,
    /// `Cancel(j)` (or, rejected, a stutter where the spec cannot cancel).
    Cancel,
    /// `AdminRetry(j)` (or, rejected, a stutter where the spec cannot retry).
    Retry,
    /// `Crash(p)`.
    Crash,
    /// A stutter: the job was pruned (the spec requires it to be final).
    Prune,
}

impl EventKind {
    /// The name `LifecycleTrace.tla` matches on.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Claim => "claim",
            EventKind::Write => "write",
            EventKind::Resume => "resume",
            EventKind::Promote => "promote",
            EventKind::Rescue => "rescue",
            EventKind::Cancel => "cancel",
            EventKind::Retry => "retry",
            EventKind::Crash => "crash",
            EventKind::Prune => "prune",
        }
    }
}

/// A job as the spec sees it: `(state, epoch, attempt)`, or `None` once
/// the core has pruned it.
pub type Row = Option<(StateName, u64, u32)>;

/// One step of the behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The index of the recorded step it comes from.
    pub step: usize,
    /// Which action.
    pub kind: EventKind,
    /// The job, as the spec numbers it (1-based, in enqueue order); 0 for
    /// a crash.
    pub job: u32,
    /// The spec process: the claim's, the write's receipt's holder, the
    /// crashed one; 0 when none (a receipt nobody was issued).
    pub proc: u32,
    /// The receipt's epoch, for writes and resumes.
    pub epoch: u64,
    /// The write's kind (`Lifecycle.tla`'s `WriteKinds`), for writes.
    pub write: &'static str,
    /// Whether the core accepted it.
    pub ok: bool,
    /// After an accepted write or resume: the sender still holds the
    /// receipt (it uses it again later).
    pub keep: bool,
    /// The job afterwards, as the core has it (for a crash: unused).
    pub post: Row,
}

impl Event {
    /// An event about a job alone, with no process, receipt or write: an
    /// operator's cancel or retry, a promote, rescue or prune.
    fn on_job(step: usize, kind: EventKind, job: u32, ok: bool, post: Row) -> Event {
        Event {
            step,
            kind,
            job,
            proc: 0,
            epoch: 0,
            write: "",
            ok,
            keep: false,
            post,
        }
    }
}

/// A job of the trace: how it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceJob {
    /// The core's id.
    pub id: JobId,
    /// Scheduled or available.
    pub initial: StateName,
    /// Its `max_attempts`.
    pub max_attempts: u32,
}

/// A run of the core as a `Lifecycle.tla` behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleTrace {
    /// What the trace is of (the command that replays it).
    pub name: String,
    /// The jobs, in the spec's numbering (index + 1).
    pub jobs: Vec<TraceJob>,
    /// Spec processes (one per claim).
    pub procs: u32,
    /// The behaviour's steps.
    pub events: Vec<Event>,
    /// Recorded steps that are no lifecycle step (claimer, semaphore,
    /// leader, pause; rejected claims and maintenance; enqueues), by
    /// command name.
    pub skipped: BTreeMap<&'static str, u64>,
}

/// A recorded step did not get the answer it recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The step's index.
    pub step: usize,
    /// What differed.
    pub detail: String,
}

struct Builder {
    world: World,
    jobs: Vec<TraceJob>,
    index: BTreeMap<JobId, u32>,
    holders: BTreeMap<(JobId, Epoch), u32>,
    claimed_by: Vec<ProcessId>,
    events: Vec<RawEvent>,
    skipped: BTreeMap<&'static str, u64>,
}

enum RawEvent {
    Event(Event),
    Crashed { step: usize, process: ProcessId },
}

impl LifecycleTrace {
    /// Replays `steps` (each: its time, its command, and, when known, the
    /// outcome it was recorded with) on `world` and maps them onto the
    /// spec. With recorded outcomes, every answer of `world` must be the
    /// recorded one (for a world that makes a deliberate mistake, pass
    /// `None`: the trace is then of what that world answers).
    pub fn replay(
        name: impl Into<String>,
        world: World,
        steps: impl IntoIterator<Item = (Timestamp, Command, Option<Outcome>)>,
    ) -> Result<LifecycleTrace, Mismatch> {
        let mut b = Builder {
            world,
            jobs: Vec::new(),
            index: BTreeMap::new(),
            holders: BTreeMap::new(),
            claimed_by: vec![ProcessId(0)],
            events: Vec::new(),
            skipped: BTreeMap::new(),
        };
        for (step, (at, command, recorded)) in steps.into_iter().enumerate() {
            b.step(step, at, command, recorded.as_ref())?;
        }
        Ok(b.finish(name.into()))
    }

    /// How many events of each kind (for writes, of each write kind).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for e in &self.events {
            let name = match e.kind {
                EventKind::Write => format!("write {}", e.write),
                kind => kind.as_str().to_string(),
            };
            *counts.entry(name).or_default() += 1;
        }
        counts
    }

    /// The module `LifecycleTraceData`, which `LifecycleTrace.tla` extends.
    pub fn to_tla(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "-------------------------- MODULE LifecycleTraceData --------------------------\n",
        );
        out.push_str("\\* Written by weir_model_check::tla_trace; do not edit.\n");
        let _ = writeln!(
            out,
            "\\* {} events; {} jobs; {} spec processes.",
            self.events.len(),
            self.jobs.len(),
            self.procs
        );
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "\\* Recorded steps with no lifecycle event: {}.",
            skipped.join(", ")
        );
        out.push_str("EXTENDS Naturals, Sequences\n\n");
        let _ = writeln!(out, "TraceName == \"{}\"", self.name.replace('"', "'"));
        let _ = writeln!(out, "TraceJobCount == {}", self.jobs.len());
        let _ = writeln!(out, "TraceProcCount == {}", self.procs);
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.0.to_string()).collect();
        let _ = writeln!(
            out,
            "\\* The core's job ids, in the spec's order: {}",
            ids.join(" ")
        );
        let initial: Vec<String> = self
            .jobs
            .iter()
            .map(|j| format!("\"{}\"", j.initial))
            .collect();
        let _ = writeln!(out, "TraceInitial == <<{}>>", initial.join(", "));
        let attempts: Vec<String> = self
            .jobs
            .iter()
            .map(|j| j.max_attempts.to_string())
            .collect();
        let _ = writeln!(out, "TraceMaxAttempts == <<{}>>", attempts.join(", "));
        out.push_str("Trace == <<\n");
        for (i, e) in self.events.iter().enumerate() {
            let (state, epoch, attempt) = match e.post {
                Some((state, epoch, attempt)) => (state.as_str(), epoch, attempt),
                None => ("gone", 0, 0),
            };
            let _ = write!(
                out,
                "  [step |-> {}, kind |-> \"{}\", job |-> {}, proc |-> {}, epoch |-> {}, write |-> \"{}\", ok |-> {}, keep |-> {}, post |-> <<\"{}\", {}, {}>>]",
                e.step,
                e.kind.as_str(),
                e.job,
                e.proc,
                e.epoch,
                e.write,
                tla_bool(e.ok),
                tla_bool(e.keep),
                state,
                epoch,
                attempt
            );
            out.push_str(if i + 1 < self.events.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str(">>\n");
        out.push_str(
            "================================================================================\n",
        );
        out
    }
}

fn tla_bool(b: bool) -> &'static str {
    if b {
        "TRUE"
    } else {
        "FALSE"
    }
}

impl Builder {
    fn row(&self, id: JobId) -> Row {
        self.world
            .job(id)
            .map(|job| (job.state_name(), job.epoch.0, job.attempt.0))
    }

    fn job(&self, step: usize, id: JobId) -> Result<u32, Mismatch> {
        self.index.get(&id).copied().ok_or_else(|| Mismatch {
            step,
            detail: format!("job {id} was never enqueued"),
        })
    }

    fn push(&mut self, event: Event) {
        self.events.push(RawEvent::Event(event));
    }

    fn apply(
        &mut self,
        step: usize,
        at: Timestamp,
        command: Command,
        recorded: Option<&Outcome>,
    ) -> Result<Outcome, Mismatch> {
        let outcome = self.world.apply(at, command);
        match recorded {
            Some(recorded) if *recorded != outcome => Err(Mismatch {
                step,
                detail: format!("the core answers {outcome:?}, the run recorded {recorded:?}"),
            }),
            _ => Ok(outcome),
        }
    }

    /// One item of a receipt batch, applied as a batch of one (a batch is
    /// its items one after the other at the same time, so this is the same
    /// run; it gives each item's own after-state).
    fn write(
        &mut self,
        step: usize,
        at: Timestamp,
        receipt: Receipt,
        write: &'static str,
        command: Command,
        recorded: Option<Result<(), Reject>>,
    ) -> Result<(), Mismatch> {
        let outcome = self.world.apply(at, command);
        let answer = batch_item(&outcome).ok_or_else(|| Mismatch {
            step,
            detail: format!("a batch of one was answered {outcome:?}"),
        })?;
        if let Some(recorded) = recorded {
            if recorded != answer {
                return Err(Mismatch {
                    step,
                    detail: format!("{write} of {receipt:?}: the core answers {answer:?}, the run recorded {recorded:?}"),
                });
            }
        }
        let job = self.job(step, receipt.job)?;
        let proc = self
            .holders
            .get(&(receipt.job, receipt.epoch))
            .copied()
            .unwrap_or(0);
        let post = self.row(receipt.job);
        let split = write == "snooze"
            && answer.is_ok()
            && matches!(post, Some((StateName::Available, _, _)));
        // The spec's snooze always goes through scheduled; the core's goes
        // straight to available when the delay has already passed. The
        // same step in the spec is a snooze and then a promote.
        let first_post = match post {
            Some((_, epoch, attempt)) if split => Some((StateName::Scheduled, epoch, attempt)),
            post => post,
        };
        self.push(Event {
            step,
            kind: EventKind::Write,
            job,
            proc,
            epoch: receipt.epoch.0,
            write,
            ok: answer.is_ok(),
            keep: false,
            post: first_post,
        });
        if split {
            self.push(Event::on_job(step, EventKind::Promote, job, true, post));
        }
        Ok(())
    }

    fn step(
        &mut self,
        step: usize,
        at: Timestamp,
        command: Command,
        recorded: Option<&Outcome>,
    ) -> Result<(), Mismatch> {
        let name = weir_core::command_name(&command);
        if recorded
            .and_then(batch_answers)
            .is_some_and(|answers| answers.is_err())
        {
            // A receipt batch refused as a whole (too large): nothing changed.
            self.apply(step, at, command, recorded)?;
            *self.skipped.entry(name).or_default() += 1;
            return Ok(());
        }
        match command {
            Command::Heartbeat(cmd::Heartbeat { receipts }) => {
                self.writes(step, at, recorded, receipts, |r| {
                    (
                        r,
                        "heartbeat",
                        Command::Heartbeat(cmd::Heartbeat { receipts: vec![r] }),
                    )
                })
            }
            Command::Complete(cmd::Complete { receipts }) => {
                self.writes(step, at, recorded, receipts, |r| {
                    (
                        r,
                        "complete",
                        Command::Complete(cmd::Complete { receipts: vec![r] }),
                    )
                })
            }
            Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
                self.writes(step, at, recorded, receipts, |r| {
                    (
                        r,
                        "cancel_attempt",
                        Command::CancelAttempts(cmd::CancelAttempts { receipts: vec![r] }),
                    )
                })
            }
            Command::Snooze(cmd::Snooze { snoozes }) => {
                self.writes(step, at, recorded, snoozes, |s: (Receipt, Millis)| {
                    (
                        s.0,
                        "snooze",
                        Command::Snooze(cmd::Snooze { snoozes: vec![s] }),
                    )
                })
            }
            Command::WaitExternal(cmd::WaitExternal { waits }) => {
                self.writes(step, at, recorded, waits, |w: (Receipt, Millis)| {
                    (
                        w.0,
                        "wait_external",
                        Command::WaitExternal(cmd::WaitExternal { waits: vec![w] }),
                    )
                })
            }
            Command::Fail(cmd::Fail { failures }) => {
                self.writes(step, at, recorded, failures, |f: Failure| {
                    let kind = if f.error.retry == Retry::Never {
                        "fail_terminal"
                    } else {
                        "fail_retryable"
                    };
                    (
                        f.receipt,
                        kind,
                        Command::Fail(cmd::Fail { failures: vec![f] }),
                    )
                })
            }
            Command::Enqueue(cmd::Enqueue { .. }) => {
                let outcome = self.apply(step, at, command, recorded)?;
                if let Ok(enqueued) = answer_of::<cmd::Enqueue>(outcome) {
                    for e in enqueued.into_iter().filter(|e| !e.duplicate) {
                        let job = self.world.job(e.id).expect("just enqueued");
                        self.jobs.push(TraceJob {
                            id: e.id,
                            initial: job.state_name(),
                            max_attempts: job.max_attempts.0,
                        });
                        self.index.insert(e.id, self.jobs.len() as u32);
                    }
                }
                *self.skipped.entry(name).or_default() += 1;
                Ok(())
            }
            Command::Claim(cmd::Claim { ref claimer, .. }) => {
                let process = claimer.process;
                let outcome = self.apply(step, at, command, recorded)?;
                match answer_of::<cmd::Claim>(outcome) {
                    Ok(claimed) if !claimed.jobs.is_empty() => {
                        for c in claimed.jobs {
                            let job = self.job(step, c.receipt.job)?;
                            self.claimed_by.push(process);
                            let proc = (self.claimed_by.len() - 1) as u32;
                            self.holders.insert((c.receipt.job, c.receipt.epoch), proc);
                            let post = self.row(c.receipt.job);
                            self.push(Event {
                                step,
                                kind: EventKind::Claim,
                                job,
                                proc,
                                epoch: c.receipt.epoch.0,
                                write: "",
                                ok: true,
                                keep: false,
                                post,
                            });
                        }
                    }
                    _ => *self.skipped.entry(name).or_default() += 1,
                }
                Ok(())
            }
            Command::ResumeExternal(cmd::ResumeExternal { receipt }) => {
                let outcome = self.apply(step, at, command, recorded)?;
                let answer = answer_of::<cmd::ResumeExternal>(outcome);
                let job = self.job(step, receipt.job)?;
                let post = self.row(receipt.job);
                self.push(Event {
                    step,
                    kind: EventKind::Resume,
                    job,
                    proc: 0,
                    epoch: receipt.epoch.0,
                    write: "",
                    ok: answer.is_ok(),
                    keep: false,
                    post,
                });
                Ok(())
            }
            Command::Cancel(cmd::Cancel { job: id }) | Command::Retry(cmd::Retry { job: id }) => {
                let kind = if matches!(command, Command::Cancel(cmd::Cancel { .. })) {
                    EventKind::Cancel
                } else {
                    EventKind::Retry
                };
                let outcome = self.apply(step, at, command, recorded)?;
                let ok = matches!(
                    outcome,
                    Outcome::Cancelled(Ok(_)) | Outcome::Retried(Ok(()))
                );
                if !ok && !self.index.contains_key(&id) {
                    // The operator named a job that never existed.
                    *self.skipped.entry(name).or_default() += 1;
                    return Ok(());
                }
                let job = self.job(step, id)?;
                let post = self.row(id);
                self.push(Event::on_job(step, kind, job, ok, post));
                Ok(())
            }
            Command::Promote(cmd::Promote { .. })
            | Command::Rescue(cmd::Rescue { .. })
            | Command::Prune(cmd::Prune { .. }) => {
                let outcome = self.apply(step, at, command, recorded)?;
                let (kind, ids): (EventKind, Vec<JobId>) = match outcome {
                    Outcome::Promoted(Ok(ids)) => (EventKind::Promote, ids),
                    Outcome::Rescued(Ok(items)) => (
                        EventKind::Rescue,
                        items.into_iter().map(|(id, _)| id).collect(),
                    ),
                    Outcome::Pruned(Ok(ids)) => (EventKind::Prune, ids),
                    _ => (EventKind::Promote, Vec::new()),
                };
                if ids.is_empty() {
                    *self.skipped.entry(name).or_default() += 1;
                }
                for id in ids {
                    let job = self.job(step, id)?;
                    let post = self.row(id);
                    self.push(Event::on_job(step, kind, job, true, post));
                }
                Ok(())
            }
            Command::ProcessCrashed(cmd::ProcessCrashed { process }) => {
                self.apply(step, at, command, recorded)?;
                self.events.push(RawEvent::Crashed { step, process });
                Ok(())
            }
            Command::PauseQueue(cmd::PauseQueue { .. })
            | Command::ResumeQueue(cmd::ResumeQueue { .. })
            | Command::ClaimerAcquire(cmd::ClaimerAcquire { .. })
            | Command::ClaimerRelease(cmd::ClaimerRelease { .. })
            | Command::SlotTry(cmd::SlotTry { .. })
            | Command::SlotRenew(cmd::SlotRenew { .. })
            | Command::SlotRelease(cmd::SlotRelease { .. })
            | Command::LeaderElect(cmd::LeaderElect { .. })
            | Command::LeaderResign(cmd::LeaderResign { .. }) => {
                self.apply(step, at, command, recorded)?;
                *self.skipped.entry(name).or_default() += 1;
                Ok(())
            }
        }
    }

    /// A receipt batch, item by item (see [`Builder::write`]).
    fn writes<I>(
        &mut self,
        step: usize,
        at: Timestamp,
        recorded: Option<&Outcome>,
        items: Vec<I>,
        one: impl Fn(I) -> (Receipt, &'static str, Command),
    ) -> Result<(), Mismatch> {
        let answers = match recorded {
            None => None,
            Some(outcome) => match batch_answers(outcome) {
                Some(Ok(answers)) => Some(answers),
                Some(Err(_)) => unreachable!("refused batches are handled in step"),
                None => {
                    return Err(Mismatch {
                        step,
                        detail: format!("a write recorded as {outcome:?}"),
                    })
                }
            },
        };
        if answers.as_ref().is_some_and(|a| a.len() != items.len()) {
            return Err(Mismatch {
                step,
                detail: "one answer per item expected".into(),
            });
        }
        for (k, item) in items.into_iter().enumerate() {
            let (receipt, write, command) = one(item);
            let recorded = answers.as_ref().map(|a| a[k].clone());
            self.write(step, at, receipt, write, command, recorded)?;
        }
        Ok(())
    }

    /// Resolves what the raw pass could not know: whether a receipt is
    /// used again (kept), and which of a crashed process's spec processes
    /// still hold one.
    fn finish(self, name: String) -> LifecycleTrace {
        let raw = self.events;
        // The last event index at which each spec process / callback
        // receipt is used.
        let mut last_write: BTreeMap<u32, usize> = BTreeMap::new();
        let mut last_resume: BTreeMap<(u32, u64), usize> = BTreeMap::new();
        for (i, e) in raw.iter().enumerate() {
            if let RawEvent::Event(e) = e {
                match e.kind {
                    EventKind::Write if e.proc != 0 => {
                        last_write.insert(e.proc, i);
                    }
                    EventKind::Resume => {
                        last_resume.insert((e.job, e.epoch), i);
                    }
                    _ => {}
                }
            }
        }
        let mut holding: BTreeSet<u32> = BTreeSet::new();
        let mut events = Vec::with_capacity(raw.len());
        for (i, e) in raw.into_iter().enumerate() {
            match e {
                RawEvent::Event(mut e) => {
                    match e.kind {
                        EventKind::Claim => {
                            holding.insert(e.proc);
                        }
                        EventKind::Write if e.proc != 0 && holding.contains(&e.proc) => {
                            let again = last_write.get(&e.proc).is_some_and(|&last| last > i);
                            e.keep = e.ok && (e.write == "heartbeat" || again);
                            if !e.keep {
                                holding.remove(&e.proc);
                            }
                        }
                        EventKind::Resume => {
                            let again = last_resume
                                .get(&(e.job, e.epoch))
                                .is_some_and(|&last| last > i);
                            e.keep = e.ok && again;
                        }
                        _ => {}
                    }
                    events.push(e);
                }
                RawEvent::Crashed { step, process } => {
                    let lost: Vec<u32> = holding
                        .iter()
                        .copied()
                        .filter(|&p| self.claimed_by[p as usize] == process)
                        .filter(|p| last_write.get(p).is_none_or(|&last| last < i))
                        .collect();
                    for p in lost {
                        holding.remove(&p);
                        events.push(Event {
                            step,
                            kind: EventKind::Crash,
                            job: 0,
                            proc: p,
                            epoch: 0,
                            write: "",
                            ok: true,
                            keep: false,
                            post: None,
                        });
                    }
                }
            }
        }
        LifecycleTrace {
            name,
            jobs: self.jobs,
            procs: (self.claimed_by.len() - 1) as u32,
            events,
            skipped: self.skipped,
        }
    }
}

/// The per-item answers of a receipt batch's outcome, without their values.
fn batch_answers(outcome: &Outcome) -> Option<Result<Vec<Result<(), Reject>>, Reject>> {
    match outcome {
        Outcome::Heartbeats(r)
        | Outcome::Completed(r)
        | Outcome::Snoozed(r)
        | Outcome::AttemptsCancelled(r)
        | Outcome::Waiting(r) => Some(r.clone()),
        Outcome::Failed(r) => Some(r.as_ref().map_err(Clone::clone).map(|items| {
            items
                .iter()
                .map(|item| item.as_ref().map(|_| ()).map_err(Clone::clone))
                .collect()
        })),
        _ => None,
    }
}

fn batch_item(outcome: &Outcome) -> Option<Result<(), Reject>> {
    match batch_answers(outcome)? {
        Ok(mut items) if items.len() == 1 => items.pop(),
        _ => None,
    }
}
