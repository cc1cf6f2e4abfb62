//! The operator reads and the bulk path over the reference [`World`], for
//! backends that keep one (the memory backend, test backends): what
//! `weir::Backend`'s `jobs`, `job`, `queues` and `enqueue_bulk` answer.
//! Postgres answers the same questions in SQL; the conformance suite holds
//! both to the same answers. Like the world, nothing here reads a clock:
//! the bulk path is given its `now`.

mod types;

use std::collections::BTreeMap;

use crate::cmd;
use crate::{Command, Outcome};
use crate::{Enqueued, Job, JobId, Kind, NewJob, QueueName, Reject, StateName, Timestamp, World};

pub use types::{JobFilter, QueueInfo};

/// `weir::Backend::jobs` over a world: the jobs `filter` passes, in id
/// order, at most `min(filter.limit, JobFilter::LIMIT_MAX)` of them.
pub fn jobs(world: &World, filter: &JobFilter) -> Vec<Job> {
    let limit = filter.limit.min(JobFilter::LIMIT_MAX) as usize;
    world
        .jobs()
        .filter(|job| filter.matches(job))
        .take(limit)
        .cloned()
        .collect()
}

/// `weir::Backend::job` over a world.
pub fn job(world: &World, id: JobId) -> Option<Job> {
    world.job(id).cloned()
}

/// `weir::Backend::queues` over a world: every queue that has a job or is
/// paused, in queue order.
pub fn queues(world: &World) -> Vec<QueueInfo> {
    let mut by_queue: BTreeMap<QueueName, QueueInfo> = BTreeMap::new();
    let blank = |queue: &QueueName| QueueInfo {
        queue: queue.clone(),
        paused: false,
        depths: StateName::ALL.iter().map(|&s| (s, 0)).collect(),
        unfinished_by_kind: Vec::new(),
    };
    let mut kinds: BTreeMap<(QueueName, Kind), u64> = BTreeMap::new();
    for job in world.jobs() {
        let info = by_queue
            .entry(job.queue.clone())
            .or_insert_with(|| blank(&job.queue));
        let state = job.state_name();
        let slot = info
            .depths
            .iter_mut()
            .find(|(s, _)| *s == state)
            .expect("depths list every state");
        slot.1 += 1;
        if !state.is_terminal() {
            *kinds
                .entry((job.queue.clone(), job.kind.clone()))
                .or_default() += 1;
        }
    }
    for queue in world.paused() {
        by_queue
            .entry(queue.clone())
            .or_insert_with(|| blank(queue))
            .paused = true;
    }
    for ((queue, kind), n) in kinds {
        let info = by_queue
            .get_mut(&queue)
            .expect("counted from this queue's jobs");
        info.unfinished_by_kind.push((kind, n));
    }
    by_queue.into_values().collect()
}

/// `weir::Backend::enqueue_bulk` over a world: every job is validated
/// first, so an invalid one writes nothing; then the jobs go in as
/// enqueue commands of at most `batch_max`, applied back to back by `apply`
/// (which the caller runs under one lock, so nothing interleaves).
pub fn enqueue_bulk(
    now: Timestamp,
    batch_max: usize,
    limits: &crate::JobLimits,
    jobs: Vec<NewJob>,
    mut apply: impl FnMut(Command) -> Outcome,
) -> Result<Vec<Enqueued>, Reject> {
    for (index, job) in jobs.iter().enumerate() {
        job.validate(now, limits)
            .map_err(|error| Reject::InvalidJob { index, error })?;
    }
    let mut out = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let chunk: Vec<NewJob> = jobs.by_ref().take(batch_max.max(1)).collect();
        match apply(Command::Enqueue(cmd::Enqueue { jobs: chunk })) {
            Outcome::Enqueued(Ok(ids)) => out.extend(ids),
            // Validated above, and each chunk is within batch_max: the
            // world refuses neither, so a refusal here is a bug.
            other => panic!("a validated bulk chunk was refused: {other:?}"),
        }
    }
    Ok(out)
}
