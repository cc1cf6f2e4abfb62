//! A [`Backend`] that notes every command it executes: how the conformance
//! suite shows that it exercises every [`Command`] variant.
//!
//! [`Recording`] forwards every method of [`Backend`] to the backend it
//! wraps, unchanged, and notes the variant of each command that goes
//! through [`Backend::execute`] (the bulk path, reads, presence and
//! wake-ups are not commands and are not noted). The variant names come
//! from serde ([`weir_core::variants`]), so the list a guard compares with
//! is the enum itself, not a copy that can fall behind it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use weir::{Backend, BackendError, JobFilter, Presence, QueueInfo, Subscription, WorkerInfo};
use weir_core::variants::Tally;
use weir_core::{Command, Enqueued, Job, JobId, NewJob, Outcome, ProcessId, Reject, Timestamp};

/// A backend that forwards everything to `B` and notes the variant of every
/// command it executes, in order.
pub struct Recording<B> {
    inner: B,
    executed: Mutex<Vec<&'static str>>,
}

impl<B: Backend> Recording<B> {
    /// Wraps `inner`, with nothing noted yet.
    pub fn new(inner: B) -> Recording<B> {
        Recording {
            inner,
            executed: Mutex::new(Vec::new()),
        }
    }

    /// The backend behind the recording.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The variant of every command executed so far, in order (a command
    /// is noted as it is sent, whatever the backend answers).
    pub fn executed(&self) -> Vec<&'static str> {
        self.log().clone()
    }

    /// How often each [`Command`] variant was executed.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::of::<Command>();
        for variant in self.log().iter() {
            tally.record_name(variant);
        }
        tally
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<&'static str>> {
        // Poisoned only by a panic while pushing or cloning, which cannot
        // happen on a `Vec` of `&str` short of running out of memory.
        self.executed.lock().expect("recording log poisoned")
    }
}

#[async_trait]
impl<B: Backend> Backend for Recording<B> {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        self.log().push(weir_core::variants::of(&command));
        self.inner.execute(command).await
    }

    async fn now(&self) -> Result<Timestamp, BackendError> {
        self.inner.now().await
    }

    fn batch_max(&self) -> usize {
        self.inner.batch_max()
    }

    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        self.inner.enqueue_bulk(jobs).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        self.inner.job(id).await
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        self.inner.jobs(filter).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        self.inner.queues().await
    }

    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        self.inner.announce(presence, ttl).await
    }

    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.inner.retire(process).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        self.inner.workers().await
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, BackendError> {
        self.inner.subscribe().await
    }

    async fn check(&self) -> Result<(), BackendError> {
        self.inner.check().await
    }
}

/// What a suite executed, scenario by scenario.
#[derive(Clone, Debug, Default)]
pub struct SuiteCoverage {
    by_scenario: BTreeMap<&'static str, Tally>,
}

impl SuiteCoverage {
    /// Nothing recorded yet.
    pub fn new() -> SuiteCoverage {
        SuiteCoverage::default()
    }

    /// Notes what one scenario executed.
    pub fn add(&mut self, scenario: &'static str, tally: Tally) {
        self.by_scenario.insert(scenario, tally);
    }

    /// Every scenario's commands together.
    pub fn total(&self) -> Tally {
        self.total_without(None)
    }

    /// Every scenario's commands but `left_out`'s.
    pub fn total_without(&self, left_out: Option<&str>) -> Tally {
        let mut total = Tally::of::<Command>();
        for (_, tally) in self
            .by_scenario
            .iter()
            .filter(|(name, _)| Some(**name) != left_out)
        {
            total.merge(tally);
        }
        total
    }

    /// The guard: `Ok` when the scenarios together executed every
    /// [`Command`] variant, otherwise a message naming those none did.
    pub fn complete(&self) -> Result<(), String> {
        self.total()
            .complete("the conformance suite never executed")
    }

    /// For each scenario that is the only one to execute some variant,
    /// those variants: what the guard would name if it were removed.
    pub fn sole_exercisers(&self) -> BTreeMap<&'static str, Vec<&'static str>> {
        let never = self.total().missing();
        self.by_scenario
            .keys()
            .map(|&name| {
                let mut missing = self.total_without(Some(name)).missing();
                missing.retain(|variant| !never.contains(variant));
                (name, missing)
            })
            .filter(|(_, missing)| !missing.is_empty())
            .collect()
    }
}
