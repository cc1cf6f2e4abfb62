//! The runtime's async `weir::Backend` trait over the memory backend
//! (feature `runtime`, on by default).
//!
//! Commands go through [`MemoryBackend::apply`], so outcomes are
//! `World::apply`'s by construction. The reads and the bulk path are the
//! core's reference implementations over the world
//! ([`weir::core::reads`]). Presence is a map beside the world; wake-ups are
//! a broadcast channel fed from what each command did, sent only while
//! someone listens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::broadcast;
use weir::{
    Backend, BackendError, JobFilter, Presence, QueueInfo, Subscription, Wakeup, WorkerInfo,
};
use weir_core::cmd;
use weir_core::{
    Command, Enqueued, Epoch, Job, JobId, JobState, Millis, NewJob, Outcome, ProcessId, QueueName,
    Reject, StateName, World,
};

use crate::backend::MemoryBackend;
use crate::clock::Clock;

/// Who ran the attempts a command may take away, read before it runs.
type Holders = BTreeMap<JobId, (Epoch, ProcessId)>;

fn holders(world: &World, command: &Command) -> Holders {
    let running = |job: &Job| match job.state {
        JobState::Running { holder, .. } => Some((job.id, (job.epoch, holder))),
        _ => None,
    };
    match command {
        Command::Cancel(cmd::Cancel { job }) => {
            world.job(*job).and_then(running).into_iter().collect()
        }
        Command::Rescue(_) => world.jobs().filter_map(running).collect(),
        // No other command takes an attempt from its holder: a handler's
        // own `CancelAttempts` ends the attempt that asked, so there is
        // no one else to tell.
        Command::Enqueue(_)
        | Command::Claim(_)
        | Command::Heartbeat(_)
        | Command::Complete(_)
        | Command::Fail(_)
        | Command::Snooze(_)
        | Command::CancelAttempts(_)
        | Command::WaitExternal(_)
        | Command::ResumeExternal(_)
        | Command::Retry(_)
        | Command::PauseQueue(_)
        | Command::ResumeQueue(_)
        | Command::ClaimerAcquire(_)
        | Command::ClaimerRelease(_)
        | Command::SlotTry(_)
        | Command::SlotRenew(_)
        | Command::SlotRelease(_)
        | Command::ProcessCrashed(_)
        | Command::LeaderElect(_)
        | Command::LeaderResign(_)
        | Command::Promote(_)
        | Command::Prune(_) => Holders::new(),
    }
}

/// The wake-ups a command's outcome calls for, as the Postgres backend
/// sends them: `Jobs` for every queue that gained an available job,
/// `Cancelled` for every running attempt taken away.
fn wakeups(world: &World, before: &Holders, command: &Command, outcome: &Outcome) -> Vec<Wakeup> {
    let mut queues: BTreeSet<QueueName> = BTreeSet::new();
    let mut touched: Vec<JobId> = Vec::new();
    let mut taken: Vec<JobId> = Vec::new();
    // Every command is named, so a new one must say what it wakes.
    match command {
        Command::Enqueue(_) => {
            if let Outcome::Enqueued(Ok(ids)) = outcome {
                touched.extend(ids.iter().filter(|e| !e.duplicate).map(|e| e.id))
            }
        }
        Command::Promote(_) => {
            if let Outcome::Promoted(Ok(ids)) = outcome {
                touched.extend(ids)
            }
        }
        Command::Snooze(cmd::Snooze { snoozes }) => {
            if let Outcome::Snoozed(Ok(results)) = outcome {
                touched.extend(
                    snoozes
                        .iter()
                        .zip(results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|((receipt, _), _)| receipt.job),
                )
            }
        }
        Command::ResumeExternal(cmd::ResumeExternal { receipt }) => {
            if let Outcome::Resumed(Ok(())) = outcome {
                touched.push(receipt.job)
            }
        }
        Command::Retry(cmd::Retry { job }) => {
            if let Outcome::Retried(Ok(())) = outcome {
                touched.push(*job)
            }
        }
        Command::ResumeQueue(cmd::ResumeQueue { queue }) => {
            if let Outcome::QueuePauseChanged(true) = outcome {
                queues.insert(queue.clone());
            }
        }
        Command::Cancel(cmd::Cancel { job }) => {
            if let Outcome::Cancelled(Ok(StateName::Running)) = outcome {
                taken.push(*job)
            }
        }
        Command::Rescue(_) => {
            if let Outcome::Rescued(Ok(rescued)) = outcome {
                taken.extend(rescued.iter().map(|(id, _)| *id));
                // A rescued job may be available again at once.
                touched.extend(rescued.iter().map(|(id, _)| *id));
            }
        }
        // Nothing becomes available, and no attempt is taken from another
        // holder (a failure's retry waits for a promote).
        Command::Claim(_)
        | Command::Heartbeat(_)
        | Command::Complete(_)
        | Command::Fail(_)
        | Command::CancelAttempts(_)
        | Command::WaitExternal(_)
        | Command::PauseQueue(_)
        | Command::ClaimerAcquire(_)
        | Command::ClaimerRelease(_)
        | Command::SlotTry(_)
        | Command::SlotRenew(_)
        | Command::SlotRelease(_)
        | Command::ProcessCrashed(_)
        | Command::LeaderElect(_)
        | Command::LeaderResign(_)
        | Command::Prune(_) => {}
    }
    for id in touched {
        if let Some(job) = world.job(id) {
            if job.state_name() == StateName::Available {
                queues.insert(job.queue.clone());
            }
        }
    }
    let mut out: Vec<Wakeup> = queues.into_iter().map(Wakeup::Jobs).collect();
    for id in taken {
        if let Some(&(epoch, holder)) = before.get(&id) {
            out.push(Wakeup::Cancelled {
                job: id,
                epoch,
                holder,
            });
        }
    }
    out
}

struct MemorySubscription {
    receiver: broadcast::Receiver<Wakeup>,
}

#[async_trait::async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self, within: Duration) -> Result<Option<Wakeup>, BackendError> {
        match tokio::time::timeout(within, self.receiver.recv()).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(wakeup)) => Ok(Some(wakeup)),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => Ok(Some(Wakeup::Missed)),
            Ok(Err(broadcast::error::RecvError::Closed)) => Err(BackendError::Unavailable(
                "the memory backend was dropped".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl<C: Clock> Backend for MemoryBackend<C> {
    /// Never fails: an in-memory world has no connection to lose. Use the
    /// simulator for lost results and the other faults.
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        if self.extras.wakeups.receiver_count() == 0 {
            return Ok(self.apply(command));
        }
        let mut locked = self.locked();
        let before = holders(locked.world(), &command);
        let outcome = locked.apply(command.clone());
        let sends = wakeups(locked.world(), &before, &command, &outcome);
        drop(locked);
        for wakeup in sends {
            // No receiver left is fine: wake-ups are hints.
            let _ = self.extras.wakeups.send(wakeup);
        }
        Ok(outcome)
    }

    async fn now(&self) -> Result<weir_core::Timestamp, BackendError> {
        Ok(self.clock().now())
    }

    fn batch_max(&self) -> usize {
        self.inspect(|world| world.config().batch_max)
    }

    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let mut locked = self.locked();
        let now = locked.now().max(locked.world().now());
        let config = locked.world().config().clone();
        let result = weir::core::reads::enqueue_bulk(
            now,
            config.batch_max,
            &config.limits,
            jobs,
            |command| locked.apply(command),
        );
        let queues: BTreeSet<QueueName> = match &result {
            Ok(ids) => ids
                .iter()
                .filter_map(|e| locked.world().job(e.id))
                .filter(|j| j.state_name() == StateName::Available)
                .map(|j| j.queue.clone())
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        drop(locked);
        for queue in queues {
            let _ = self.extras.wakeups.send(Wakeup::Jobs(queue));
        }
        Ok(result)
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        Ok(self.inspect(|world| weir::core::reads::job(world, id)))
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        Ok(self.inspect(|world| weir::core::reads::jobs(world, filter)))
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        Ok(self.inspect(weir::core::reads::queues))
    }

    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        let now = self.clock().now();
        let info = WorkerInfo {
            presence: presence.clone(),
            seen_at: now,
            expires_at: now.plus(Millis::from_duration(ttl)),
        };
        self.presence_map().insert(presence.process, info);
        Ok(())
    }

    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.presence_map().remove(&process);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let now = self.clock().now();
        let mut workers = self.presence_map();
        workers.retain(|_, w| w.expires_at > now);
        Ok(workers.values().cloned().collect())
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, BackendError> {
        Ok(Some(Box::new(MemorySubscription {
            receiver: self.extras.wakeups.subscribe(),
        })))
    }
}

impl<C: Clock> MemoryBackend<C> {
    /// [`Backend::execute`], with every state and step invariant checked
    /// and a violation returned as a value (the command stays applied):
    /// the path of a simulation that drives the real runtime, which must
    /// report a broken invariant rather than panic inside a task.
    pub fn execute_checked(&self, command: Command) -> Result<Outcome, Box<crate::BrokenStep>> {
        let mut locked = self.locked();
        let before = holders(locked.world(), &command);
        let outcome = locked.apply_checked(command.clone())?;
        let sends = wakeups(locked.world(), &before, &command, &outcome);
        drop(locked);
        for wakeup in sends {
            let _ = self.extras.wakeups.send(wakeup);
        }
        Ok(outcome)
    }

    /// Sends `wakeup` to every subscriber, as anyone who can connect to a
    /// real backend could (a forged `NOTIFY`): for tests of what a worker
    /// does with a hint that is not storage's word.
    pub fn send_wakeup(&self, wakeup: Wakeup) {
        let _ = self.extras.wakeups.send(wakeup);
    }

    fn presence_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ProcessId, WorkerInfo>> {
        // Poisoned only if a panic happened while holding it, which the
        // few map operations above cannot do.
        self.extras.workers.lock().expect("presence map poisoned")
    }
}
