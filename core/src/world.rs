//! The reference world: every job, claimer lease, semaphore and the leader,
//! and [`World::apply`], the meaning of every storage command.
//!
//! The memory backend is this world behind a lock; the model checker explores
//! it; the Postgres backend must give the same [`Outcome`] for the same
//! sequence of [`Command`]s. Batches answer per item, in input order, so one
//! stale receipt does not spoil its neighbours.
//!
//! The world keeps secondary indexes (available jobs per queue in claim
//! order, due times, running and waiting jobs, finished jobs, unique keys) so
//! each command costs time in what it touches, not in the world's size.
//! [`World::check_invariants`] verifies that the indexes and the jobs agree.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::claimer::{ClaimerConfig, ClaimerGrant, ClaimerTable};
use crate::cmd;
use crate::ids::{
    Epoch, JobId, Kind, LeaderTerm, Priority, ProcessId, QueueName, Receipt, SemaphoreName,
    SlotIndex, UniqueKey,
};
use crate::job::{FailOutcome, Job, JobLimits, JobState, NewJob};
use crate::leader::{LeaderGrant, Leadership};
use crate::mutation::Mutation;
use crate::protocol::{
    answer_of, command_name, BatchResult, Claimed, ClaimedJob, Command, Enqueued, Outcome, Request,
};
use crate::reject::{Reject, StateName};
use crate::semaphore::{Hold, Semaphore, SlotGrant};
use crate::time::{Millis, Timestamp};

/// Settings that shape every decision of a world.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Claimer slots and their freshness rule.
    pub claimer: ClaimerConfig,
    /// A running job whose heartbeat is this old is rescued.
    pub heartbeat_stale_after: Millis,
    /// Retry delays.
    pub backoff: Backoff,
    /// How long a leader lease lasts without renewal.
    pub leader_ttl: Millis,
    /// Bounds on enqueued jobs.
    pub limits: JobLimits,
    /// The most items one batch command may carry.
    pub batch_max: usize,
}

impl Default for WorldConfig {
    fn default() -> WorldConfig {
        WorldConfig {
            claimer: ClaimerConfig::default(),
            heartbeat_stale_after: Millis::from_secs(60),
            backoff: Backoff::standard(),
            leader_ttl: Millis::from_secs(30),
            limits: JobLimits::default(),
            batch_max: 10_000,
        }
    }
}

type ClaimKey = (Priority, Timestamp, JobId);

/// Every job, claimer lease, semaphore and the leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct World {
    pub(crate) config: WorldConfig,
    pub(crate) now: Timestamp,
    pub(crate) next_id: i64,
    pub(crate) jobs: BTreeMap<JobId, Job>,
    pub(crate) available: BTreeMap<QueueName, BTreeSet<ClaimKey>>,
    pub(crate) due: BTreeSet<(Timestamp, JobId)>,
    pub(crate) running: BTreeSet<JobId>,
    pub(crate) waiting: BTreeSet<(Timestamp, JobId)>,
    pub(crate) finished: BTreeSet<(Timestamp, JobId)>,
    pub(crate) unique: BTreeMap<(Kind, UniqueKey), JobId>,
    pub(crate) paused: BTreeSet<QueueName>,
    pub(crate) claimers: BTreeMap<QueueName, ClaimerTable>,
    pub(crate) semaphores: BTreeMap<SemaphoreName, Semaphore>,
    pub(crate) leader: Leadership,
    pub(crate) enqueued_total: u64,
    pub(crate) pruned_total: u64,
    #[cfg(feature = "mutants")]
    pub(crate) mutation: Option<Mutation>,
}

impl World {
    /// An empty world.
    pub fn new(config: WorldConfig) -> World {
        World {
            config,
            now: Timestamp::ZERO,
            next_id: 1,
            jobs: BTreeMap::new(),
            available: BTreeMap::new(),
            due: BTreeSet::new(),
            running: BTreeSet::new(),
            waiting: BTreeSet::new(),
            finished: BTreeSet::new(),
            unique: BTreeMap::new(),
            paused: BTreeSet::new(),
            claimers: BTreeMap::new(),
            semaphores: BTreeMap::new(),
            leader: Leadership::default(),
            enqueued_total: 0,
            pruned_total: 0,
            #[cfg(feature = "mutants")]
            mutation: None,
        }
    }

    /// The same world, but making one deliberate mistake (tests only).
    #[cfg(feature = "mutants")]
    pub fn with_mutation(mut self, mutation: Mutation) -> World {
        self.mutation = Some(mutation);
        self
    }

    /// Whether this world makes the deliberate mistake `m`; always false
    /// without the `mutants` feature.
    #[inline]
    fn mutant(&self, m: Mutation) -> bool {
        #[cfg(feature = "mutants")]
        return self.mutation == Some(m);
        #[cfg(not(feature = "mutants"))]
        {
            let _ = m;
            false
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// The latest time the world has seen (it never goes backwards).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// The claimer slots of a queue.
    pub fn claimers(&self, queue: &QueueName) -> Option<&ClaimerTable> {
        self.claimers.get(queue)
    }

    /// Every queue's claimer slots, in queue order.
    pub fn all_claimers(&self) -> impl Iterator<Item = (&QueueName, &ClaimerTable)> {
        self.claimers.iter()
    }

    /// A semaphore, once its first slot was tried.
    pub fn semaphore(&self, name: &SemaphoreName) -> Option<&Semaphore> {
        self.semaphores.get(name)
    }

    /// Every semaphore, in name order.
    pub fn semaphores(&self) -> impl Iterator<Item = (&SemaphoreName, &Semaphore)> {
        self.semaphores.iter()
    }

    /// The leader lease.
    pub fn leadership(&self) -> &Leadership {
        &self.leader
    }

    /// Whether claims from `queue` are paused.
    pub fn is_paused(&self, queue: &QueueName) -> bool {
        self.paused.contains(queue)
    }

    /// The paused queues, in name order.
    pub fn paused(&self) -> impl Iterator<Item = &QueueName> {
        self.paused.iter()
    }

    /// Jobs ever inserted (duplicates not counted).
    pub fn enqueued_total(&self) -> u64 {
        self.enqueued_total
    }

    /// Jobs deleted by prune.
    pub fn pruned_total(&self) -> u64 {
        self.pruned_total
    }

    /// How many jobs of `queue` are in each state, in [`StateName::ALL`] order.
    pub fn depths(&self, queue: &QueueName) -> [(StateName, usize); 8] {
        let mut depths = StateName::ALL.map(|state| (state, 0));
        for job in self.jobs.values().filter(|job| &job.queue == queue) {
            let i = StateName::ALL
                .iter()
                .position(|&state| state == job.state_name())
                .expect("ALL lists every state");
            depths[i].1 += 1;
        }
        depths
    }

    /// The earliest time at which a promote or rescue would find work:
    /// a due time, a running deadline or staleness, or a callback deadline.
    pub fn next_maintenance_at(&self) -> Option<Timestamp> {
        let due = self.due.first().map(|&(at, _)| at);
        let wait = self.waiting.first().map(|&(at, _)| at);
        let stale_after = self.config.heartbeat_stale_after;
        let run = self
            .running
            .iter()
            .filter_map(|id| match self.jobs[id].state {
                JobState::Running {
                    heartbeat_at,
                    deadline,
                    ..
                } => Some(heartbeat_at.plus(stale_after).min(deadline)),
                _ => None,
            });
        due.into_iter().chain(wait).chain(run).min()
    }

    /// Applies `command` at `now` (clamped so the world's time never goes
    /// backwards) and returns its outcome. Debug builds check every
    /// invariant afterwards.
    pub fn apply(&mut self, now: Timestamp, command: Command) -> Outcome {
        let now = now.max(self.now);
        self.checked_dispatch(now, command)
    }

    /// [`World::apply`] of one typed request, answered with its own type:
    /// `world.run(now, cmd::Claim { .. })` is a `Result<Claimed, Reject>`.
    pub fn run<R: Request>(&mut self, now: Timestamp, request: R) -> R::Output {
        answer_of::<R>(self.apply(now, request.into()))
    }

    /// Applies `command` at exactly `now`, even when an earlier call used
    /// a later time: what storage does when concurrent transactions commit
    /// in an order their own times (`transaction_timestamp()`) do not
    /// follow. The history checker (`weir_tests::history`) judges
    /// concurrent histories with this, and says so; [`World::apply`]'s
    /// clamp is the serial simplification. Debug builds check every
    /// invariant afterwards, so an invariant that needs monotone time
    /// fails here.
    #[doc(hidden)]
    pub fn apply_at_own_time(&mut self, now: Timestamp, command: Command) -> Outcome {
        self.checked_dispatch(now, command)
    }

    /// [`World::apply_at_own_time`], with the jobs of `skip` out of every
    /// sweep's reach for this command only: the claim's available jobs,
    /// promote's due ones, rescue's running and waiting ones, prune's
    /// finished ones. Storage's sweeps take rows `FOR UPDATE SKIP LOCKED`,
    /// passing over rows another transaction holds locked at that moment;
    /// the history checker skips only jobs a concurrent operation (or a
    /// session it records holding locks) could have held. Commands that
    /// name their jobs (receipts, cancel, retry) look jobs up by id, so
    /// `skip` does not change them.
    #[doc(hidden)]
    pub fn apply_skipping(
        &mut self,
        now: Timestamp,
        command: Command,
        skip: &BTreeSet<JobId>,
    ) -> Outcome {
        let mut available = Vec::new();
        for (queue, keys) in &mut self.available {
            let held: Vec<ClaimKey> = keys
                .iter()
                .filter(|k| skip.contains(&k.2))
                .copied()
                .collect();
            for key in held {
                keys.remove(&key);
                available.push((queue.clone(), key));
            }
        }
        let running: Vec<JobId> = self.running.intersection(skip).copied().collect();
        for id in &running {
            self.running.remove(id);
        }
        let mut timed = Vec::new();
        for index in [&mut self.due, &mut self.waiting, &mut self.finished] {
            let held: Vec<(Timestamp, JobId)> = index
                .iter()
                .filter(|(_, id)| skip.contains(id))
                .copied()
                .collect();
            for key in &held {
                index.remove(key);
            }
            timed.push(held);
        }
        let name = command_name(&command);
        let outcome = self.dispatch_at(now, command);
        for (queue, key) in available {
            self.available.entry(queue).or_default().insert(key);
        }
        self.running.extend(running);
        let mut timed = timed.into_iter();
        for index in [&mut self.due, &mut self.waiting, &mut self.finished] {
            index.extend(timed.next().expect("one list per index"));
        }
        self.check_after(name, now);
        outcome
    }

    /// [`Command::Enqueue`] of `jobs` at exactly `now`, giving the `k`-th
    /// job, when it is new, the id `ids[k]` rather than the next one: the
    /// id storage gave it. Storage draws ids from a sequence, which
    /// concurrent inserts draw from in no serial order (and failed ones
    /// leave gaps), so the history checker (`weir_tests::history`) names
    /// each new job as storage did. An id that is missing, or that a job
    /// already holds, gives the next unused id instead, which is none that
    /// storage named (so an answer naming it cannot be explained).
    #[doc(hidden)]
    pub fn enqueue_as(
        &mut self,
        now: Timestamp,
        jobs: Vec<NewJob>,
        ids: &[Option<JobId>],
    ) -> Outcome {
        self.now = now.max(self.now);
        let outcome = Outcome::Enqueued(self.enqueue_naming(now, jobs, ids));
        self.check_after("enqueue", now);
        outcome
    }

    /// Dispatches `command` at `now` and, in debug builds, checks every
    /// invariant afterwards.
    fn checked_dispatch(&mut self, now: Timestamp, command: Command) -> Outcome {
        let name = command_name(&command);
        #[cfg(feature = "mutants")]
        let _mutation = crate::mutation::scope(self.mutation);
        let outcome = self.dispatch_at(now, command);
        self.check_after(name, now);
        outcome
    }

    fn dispatch_at(&mut self, now: Timestamp, command: Command) -> Outcome {
        self.now = now.max(self.now);
        self.dispatch(now, command)
    }

    /// In debug builds, panics naming the command when an invariant no
    /// longer holds.
    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    fn check_after(&self, name: &'static str, now: Timestamp) {
        #[cfg(debug_assertions)]
        if let Err(violation) = self.check_invariants() {
            panic!("invariant broken by {name} at {now}: {violation}");
        }
    }

    fn dispatch(&mut self, now: Timestamp, command: Command) -> Outcome {
        match command {
            Command::Enqueue(cmd::Enqueue { jobs }) => Outcome::Enqueued(self.enqueue(now, jobs)),
            Command::Claim(cmd::Claim {
                queue,
                claimer,
                max,
                kinds,
            }) => Outcome::Claimed(self.claim(now, &queue, &claimer, max, kinds.as_ref())),
            Command::Heartbeat(cmd::Heartbeat { receipts }) => {
                Outcome::Heartbeats(self.batch(receipts, |w, r| {
                    w.update(r.job, |job| job.heartbeat(r, now))
                }))
            }
            Command::Complete(cmd::Complete { receipts }) => {
                Outcome::Completed(self.complete(now, receipts))
            }
            Command::Fail(cmd::Fail { failures }) => {
                let backoff = self.config.backoff;
                Outcome::Failed(self.batch(failures, |w, f| {
                    w.update(f.receipt.job, |job| {
                        job.fail(f.receipt, &f.error, now, &backoff, f.draw)
                    })
                }))
            }
            Command::Snooze(cmd::Snooze { snoozes }) => Outcome::Snoozed(self.snooze(now, snoozes)),
            Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
                Outcome::AttemptsCancelled(self.batch(receipts, |w, r| {
                    w.update(r.job, |job| job.cancel_attempt(r, now))
                }))
            }
            Command::WaitExternal(cmd::WaitExternal { waits }) => {
                Outcome::Waiting(self.batch(waits, |w, (r, timeout)| {
                    w.update(r.job, |job| job.wait_external(r, now.plus(timeout), now))
                }))
            }
            Command::ResumeExternal(cmd::ResumeExternal { receipt }) => {
                Outcome::Resumed(self.update(receipt.job, |job| job.resume_external(receipt, now)))
            }
            Command::Cancel(cmd::Cancel { job }) => Outcome::Cancelled(self.cancel(now, job)),
            Command::Retry(cmd::Retry { job }) => {
                Outcome::Retried(self.update(job, |job| job.admin_retry(now)))
            }
            Command::PauseQueue(cmd::PauseQueue { queue }) => {
                Outcome::QueuePauseChanged(self.paused.insert(queue))
            }
            Command::ResumeQueue(cmd::ResumeQueue { queue }) => {
                Outcome::QueuePauseChanged(self.paused.remove(&queue))
            }
            Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, process }) => {
                let config = self.config.claimer;
                let table = self.claimers.entry(queue).or_default();
                Outcome::ClaimerAcquired(table.acquire(process, now, &config))
            }
            Command::ClaimerRelease(cmd::ClaimerRelease { queue, claimer }) => {
                Outcome::ClaimerReleased(
                    self.claimers
                        .get_mut(&queue)
                        .is_some_and(|table| table.release(&claimer, now)),
                )
            }
            Command::SlotTry(cmd::SlotTry {
                semaphore,
                permits,
                slot,
                holder,
                lease_ttl,
            }) => {
                Outcome::SlotTried(self.slot_try(now, semaphore, permits, slot, holder, lease_ttl))
            }
            Command::SlotRenew(cmd::SlotRenew {
                semaphore,
                grant,
                lease_ttl,
            }) => Outcome::SlotRenewed(match self.semaphores.get_mut(&semaphore) {
                Some(sem) => sem.renew(&grant, now.plus(lease_ttl), now),
                None => Err(Reject::SlotNotHeld { slot: grant.slot }),
            }),
            Command::SlotRelease(cmd::SlotRelease { semaphore, grant }) => {
                let check_epoch = !self.mutant(Mutation::SlotReleaseIgnoresEpoch);
                Outcome::SlotReleased(
                    self.semaphores
                        .get_mut(&semaphore)
                        .is_some_and(|sem| sem.release_checking(&grant, check_epoch)),
                )
            }
            Command::ProcessCrashed(cmd::ProcessCrashed { process }) => {
                Outcome::SessionEnded(self.end_session(process))
            }
            Command::LeaderElect(cmd::LeaderElect { process }) => {
                Outcome::LeaderElected(self.elect(now, process))
            }
            Command::LeaderResign(cmd::LeaderResign { leader }) => {
                Outcome::LeaderResigned(self.leader.resign(&leader, now))
            }
            Command::Promote(cmd::Promote { leader, max }) => {
                Outcome::Promoted(self.promote(now, &leader, max))
            }
            Command::Rescue(cmd::Rescue { leader, draw, max }) => {
                Outcome::Rescued(self.rescue(now, &leader, draw, max))
            }
            Command::Prune(cmd::Prune {
                leader,
                older_than,
                max,
            }) => Outcome::Pruned(self.prune(now, &leader, now.minus(older_than), max)),
        }
    }

    fn complete(&mut self, now: Timestamp, receipts: Vec<Receipt>) -> BatchResult<()> {
        let unchecked = self.mutant(Mutation::CompleteWithoutEpochCheck);
        self.batch(receipts, |w, r| {
            w.update(r.job, |job| match job.complete(r, now) {
                Err(Reject::StaleEpoch { current, .. }) if unchecked => job.complete(
                    Receipt {
                        epoch: current,
                        ..r
                    },
                    now,
                ),
                result => result,
            })
        })
    }

    fn snooze(&mut self, now: Timestamp, snoozes: Vec<(Receipt, Millis)>) -> BatchResult<()> {
        let no_refund = self.mutant(Mutation::SnoozeConsumesAttempt);
        self.batch(snoozes, |w, (r, delay)| {
            w.update(r.job, |job| {
                job.snooze(r, now.plus(delay), now)?;
                if no_refund {
                    job.attempt = job.attempt.next();
                }
                Ok(())
            })
        })
    }

    fn cancel(&mut self, now: Timestamp, id: JobId) -> Result<StateName, Reject> {
        let no_bump = self.mutant(Mutation::CancelWithoutEpochBump);
        self.update(id, |job| {
            let (state, epoch) = (job.state_name(), job.epoch);
            job.cancel(now)?;
            if no_bump {
                job.epoch = epoch;
            }
            Ok(state)
        })
    }

    fn elect(&mut self, now: Timestamp, process: ProcessId) -> Result<LeaderGrant, Reject> {
        let term = self.leader.term;
        let mut grant = self.leader.elect(process, now, self.config.leader_ttl)?;
        if self.mutant(Mutation::ElectWithoutTermBump) && term > LeaderTerm(0) {
            self.leader.term = term;
            grant.term = term;
        }
        Ok(grant)
    }

    fn check_batch_len(&self, len: usize) -> Result<(), Reject> {
        if len > self.config.batch_max {
            return Err(Reject::BatchTooLarge {
                len,
                max: self.config.batch_max,
            });
        }
        Ok(())
    }

    fn batch<I, T>(
        &mut self,
        items: Vec<I>,
        mut each: impl FnMut(&mut World, I) -> Result<T, Reject>,
    ) -> BatchResult<T> {
        self.check_batch_len(items.len())?;
        let stop = self.mutant(Mutation::BatchStopsAtFirstRefusal);
        let mut refused: Option<Reject> = None;
        let answers = items.into_iter().map(|item| match &refused {
            Some(reject) if stop => Err(reject.clone()),
            _ => {
                let answer = each(self, item);
                if let Err(reject) = &answer {
                    refused = Some(reject.clone());
                }
                answer
            }
        });
        Ok(answers.collect())
    }

    /// Runs one job transition with the indexes kept in step: the job
    /// leaves its index, changes (or, on a rejection, does not), and
    /// re-enters the index of its new state.
    fn update<T>(
        &mut self,
        id: JobId,
        transition: impl FnOnce(&mut Job) -> Result<T, Reject>,
    ) -> Result<T, Reject> {
        let mut job = self
            .jobs
            .remove(&id)
            .ok_or(Reject::UnknownJob { job: id })?;
        self.unindex(&job);
        #[cfg(debug_assertions)]
        let before = job.clone();
        let result = transition(&mut job);
        #[cfg(debug_assertions)]
        if result.is_err() {
            assert_eq!(before, job, "a rejected transition changed job {id}");
        }
        self.index(&job);
        self.jobs.insert(id, job);
        result
    }

    fn index(&mut self, job: &Job) {
        let id = job.id;
        match job.state {
            JobState::Available { run_at } => {
                self.available
                    .entry(job.queue.clone())
                    .or_default()
                    .insert((job.priority, run_at, id));
            }
            JobState::Scheduled { run_at } | JobState::Retryable { run_at } => {
                self.due.insert((run_at, id));
            }
            JobState::Running { .. } => {
                self.running.insert(id);
            }
            JobState::WaitingExternal { deadline, .. } => {
                self.waiting.insert((deadline, id));
            }
            JobState::Completed { at }
            | JobState::Failed { at, .. }
            | JobState::Cancelled { at } => {
                self.finished.insert((at, id));
            }
        }
    }

    pub(crate) fn unindex(&mut self, job: &Job) {
        let id = job.id;
        let removed = match job.state {
            JobState::Available { run_at } => {
                let queue = self.available.get_mut(&job.queue);
                let removed = queue.is_some_and(|q| q.remove(&(job.priority, run_at, id)));
                if self
                    .available
                    .get(&job.queue)
                    .is_some_and(BTreeSet::is_empty)
                {
                    self.available.remove(&job.queue);
                }
                removed
            }
            JobState::Scheduled { run_at } | JobState::Retryable { run_at } => {
                self.due.remove(&(run_at, id))
            }
            JobState::Running { .. } => self.running.remove(&id),
            JobState::WaitingExternal { deadline, .. } => self.waiting.remove(&(deadline, id)),
            JobState::Completed { at }
            | JobState::Failed { at, .. }
            | JobState::Cancelled { at } => self.finished.remove(&(at, id)),
        };
        assert!(removed, "job {id} was missing from the index of its state");
    }

    fn enqueue(&mut self, now: Timestamp, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, Reject> {
        self.enqueue_naming(now, jobs, &[])
    }

    /// [`World::enqueue`], the `k`-th job's id `ids[k]` where that is given
    /// and unused ([`World::enqueue_as`]).
    fn enqueue_naming(
        &mut self,
        now: Timestamp,
        jobs: Vec<NewJob>,
        ids: &[Option<JobId>],
    ) -> Result<Vec<Enqueued>, Reject> {
        self.check_batch_len(jobs.len())?;
        // All or none: validate the whole batch before writing anything.
        for (index, job) in jobs.iter().enumerate() {
            job.validate(now, &self.config.limits)
                .map_err(|error| Reject::InvalidJob { index, error })?;
        }
        let batch_duplicates = NewJob::batch_duplicates(&jobs);
        let mut out: Vec<Enqueued> = Vec::with_capacity(jobs.len());
        for (index, new) in jobs.into_iter().enumerate() {
            if let Some(earlier) = batch_duplicates[index] {
                out.push(Enqueued {
                    id: out[earlier].id,
                    duplicate: true,
                });
                continue;
            }
            if let Some(key) = &new.unique_key {
                if let Some(&existing) = self.unique.get(&(new.kind.clone(), key.clone())) {
                    out.push(Enqueued {
                        id: existing,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let id = match ids.get(index).copied().flatten() {
                Some(named) if !self.jobs.contains_key(&named) => named,
                _ => JobId(self.next_id),
            };
            self.next_id = self.next_id.max(id.0.saturating_add(1));
            if let Some(key) = &new.unique_key {
                self.unique.insert((new.kind.clone(), key.clone()), id);
            }
            let job = Job::enqueue(id, new, now);
            self.index(&job);
            self.jobs.insert(id, job);
            self.enqueued_total += 1;
            out.push(Enqueued {
                id,
                duplicate: false,
            });
        }
        Ok(out)
    }

    fn claim(
        &mut self,
        now: Timestamp,
        queue: &QueueName,
        claimer: &ClaimerGrant,
        max: u32,
        kinds: Option<&BTreeSet<Kind>>,
    ) -> Result<Claimed, Reject> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.check_batch_len(max)?;
        let lost = || Reject::ClaimerLeaseLost {
            slot: claimer.slot,
            presented: claimer.lease_epoch,
        };
        self.claimers
            .get(queue)
            .ok_or_else(lost)?
            .check(claimer, now)?;
        if self.paused.contains(queue) {
            return Ok(Claimed::default());
        }
        let picked: Vec<(Timestamp, JobId)> = match self.available.get(queue) {
            None => Vec::new(),
            Some(ready) => ready
                .iter()
                .map(|&(_, run_at, id)| (run_at, id))
                .filter(|(_, id)| kinds.is_none_or(|kinds| kinds.contains(&self.jobs[id].kind)))
                .take(max)
                .collect(),
        };
        let mut claimed = Claimed::default();
        for (run_at, id) in picked {
            claimed.jobs.push(self.claim_one(now, claimer, run_at, id));
        }
        if !claimed.jobs.is_empty() && !self.mutant(Mutation::ClaimerNeverRefreshes) {
            claimed.lease_refreshed = self.refresh_after_claim(now, queue, claimer);
        }
        Ok(claimed)
    }

    /// Claims available job `id` (due at `run_at`) for `claimer`.
    fn claim_one(
        &mut self,
        now: Timestamp,
        claimer: &ClaimerGrant,
        run_at: Timestamp,
        id: JobId,
    ) -> ClaimedJob {
        let no_bump = self.mutant(Mutation::ClaimWithoutEpochBump);
        let receipt = self
            .update(id, |job| {
                let epoch = job.epoch;
                let mut receipt = job.claim(claimer.process, now)?;
                if no_bump && epoch > Epoch(0) {
                    job.epoch = epoch;
                    receipt.epoch = epoch;
                }
                Ok(receipt)
            })
            .expect("picked from the available index, so the job is available");
        let job = &self.jobs[&id];
        let JobState::Running { deadline, .. } = job.state else {
            unreachable!("a successful claim leaves the job running")
        };
        ClaimedJob {
            receipt,
            kind: job.kind.clone(),
            payload: job.payload.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            deadline,
            claimed_at: now,
            run_at,
        }
    }

    /// After a non-empty claim under a checked grant: whether the lease
    /// row was rewritten.
    fn refresh_after_claim(
        &mut self,
        now: Timestamp,
        queue: &QueueName,
        claimer: &ClaimerGrant,
    ) -> bool {
        let config = self.config.claimer;
        let lax = self.mutant(Mutation::RefreshPredicateTooLax);
        let table = self.claimers.get_mut(queue).expect("checked by the claim");
        if lax {
            table.refresh_if(claimer, now, &config, |lease| {
                lease.last_claimed_at <= now.minus(config.idle_threshold) || lease.expires_at <= now
            })
        } else {
            table.refresh_after_claim(claimer, now, &config)
        }
    }

    fn slot_try(
        &mut self,
        now: Timestamp,
        name: SemaphoreName,
        permits: u16,
        slot: SlotIndex,
        holder: ProcessId,
        lease_ttl: Option<Millis>,
    ) -> Result<SlotGrant, Reject> {
        let ignore_holder = self.mutant(Mutation::AcquireIgnoresHolder);
        let hold = match lease_ttl {
            None => Hold::Session,
            Some(ttl) => Hold::Lease {
                expires_at: now.plus(ttl),
            },
        };
        let semaphore = match self.semaphores.get_mut(&name) {
            Some(sem) if sem.permits() != permits => {
                return Err(Reject::PermitsMismatch {
                    name,
                    configured: sem.permits(),
                    presented: permits,
                })
            }
            Some(sem) => sem,
            None => self
                .semaphores
                .entry(name)
                .or_insert(Semaphore::new(permits)?),
        };
        if ignore_holder {
            return semaphore.force_slot(slot, holder, hold);
        }
        semaphore.try_slot(slot, holder, hold, now)
    }

    fn end_session(&mut self, process: ProcessId) -> Vec<(SemaphoreName, SlotIndex)> {
        let mut freed = Vec::new();
        for (name, semaphore) in &mut self.semaphores {
            freed.extend(
                semaphore
                    .release_holder(process)
                    .into_iter()
                    .map(|slot| (name.clone(), slot)),
            );
        }
        freed
    }

    fn maintenance_limit(
        &self,
        leader: &LeaderGrant,
        now: Timestamp,
        max: u32,
    ) -> Result<usize, Reject> {
        if !self.mutant(Mutation::NoTermCheck) {
            self.leader.check_term(leader, now)?;
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.check_batch_len(max)?;
        Ok(max)
    }

    fn promote(
        &mut self,
        now: Timestamp,
        leader: &LeaderGrant,
        max: u32,
    ) -> Result<Vec<JobId>, Reject> {
        let max = self.maintenance_limit(leader, now, max)?;
        let due: Vec<JobId> = self
            .due
            .iter()
            .take_while(|&&(at, _)| at <= now)
            .take(max)
            .map(|&(_, id)| id)
            .collect();
        for &id in &due {
            self.update(id, |job| job.promote(now))
                .expect("taken from the due index at its due time");
        }
        Ok(due)
    }

    fn rescue(
        &mut self,
        now: Timestamp,
        leader: &LeaderGrant,
        draw: u64,
        max: u32,
    ) -> Result<Vec<(JobId, FailOutcome)>, Reject> {
        let max = self.maintenance_limit(leader, now, max)?;
        let stale_after = self.config.heartbeat_stale_after;
        let backoff = self.config.backoff;
        let overdue: Vec<JobId> = self
            .running
            .iter()
            .copied()
            .filter(|id| self.jobs[id].is_overdue(now, stale_after))
            .take(max)
            .collect();
        let mut out = Vec::with_capacity(overdue.len());
        let no_bump = self.mutant(Mutation::RescueWithoutEpochBump);
        for id in overdue {
            let outcome = self.update(id, |job| {
                let epoch = job.epoch;
                let outcome = job.rescue(now, stale_after, &backoff, draw)?;
                if no_bump {
                    job.epoch = epoch;
                }
                Ok(outcome)
            });
            out.push((id, outcome.expect("filtered as overdue")));
        }
        let expired: Vec<JobId> = self
            .waiting
            .iter()
            .take_while(|&&(deadline, _)| deadline <= now)
            .take(max - out.len())
            .map(|&(_, id)| id)
            .collect();
        for id in expired {
            let outcome = self.update(id, |job| job.expire_external(now, &backoff, draw));
            out.push((
                id,
                outcome.expect("taken from the waiting index past its deadline"),
            ));
        }
        Ok(out)
    }

    fn prune(
        &mut self,
        now: Timestamp,
        leader: &LeaderGrant,
        before: Timestamp,
        max: u32,
    ) -> Result<Vec<JobId>, Reject> {
        let max = self.maintenance_limit(leader, now, max)?;
        let old: Vec<(Timestamp, JobId)> = self
            .finished
            .iter()
            .take_while(|&&(at, _)| at < before)
            .take(max)
            .copied()
            .collect();
        let mut pruned = Vec::with_capacity(old.len());
        for key in old {
            self.finished.remove(&key);
            let job = self
                .jobs
                .remove(&key.1)
                .expect("finished index points at a job");
            if let Some(unique_key) = job.unique_key {
                self.unique.remove(&(job.kind, unique_key));
            }
            self.pruned_total += 1;
            pruned.push(key.1);
        }
        Ok(pruned)
    }
}
