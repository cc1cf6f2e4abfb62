//! What the operator reads are asked and answer: [`JobFilter`] and
//! [`QueueInfo`] (re-exported by `weir` as `weir::JobFilter` and
//! `weir::QueueInfo`).

use serde::{Deserialize, Serialize};

use crate::{Job, JobId, Kind, QueueName, StateName};

/// Which jobs an operator's listing shows (`weir::Backend::jobs`, and
/// [`jobs`](super::jobs) over a world). Every field narrows the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only jobs in this state.
    pub state: Option<StateName>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only ids greater than this (to page through a long list).
    pub after: Option<JobId>,
    /// At most this many, in id order.
    pub limit: u32,
}

impl Default for JobFilter {
    fn default() -> JobFilter {
        JobFilter {
            queue: None,
            state: None,
            kind: None,
            after: None,
            limit: 100,
        }
    }
}

impl JobFilter {
    /// The most jobs one listing returns, whatever `limit` asks for.
    pub const LIMIT_MAX: u32 = 10_000;

    /// Whether `job` passes the filter (ignoring `limit`).
    pub fn matches(&self, job: &Job) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && self.state.is_none_or(|s| s == job.state_name())
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.after.is_none_or(|after| job.id > after)
    }
}

/// One queue as an operator sees it (`weir::Backend::queues`, and
/// [`queues`](super::queues) over a world).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The queue.
    pub queue: QueueName,
    /// Whether claims from it are paused.
    pub paused: bool,
    /// How many of its jobs are in each state, in [`StateName::ALL`] order.
    pub depths: Vec<(StateName, u64)>,
    /// Unfinished jobs by kind (scheduled, available, running, waiting,
    /// retryable), in kind order: with the live workers
    /// (`weir::Backend::workers`), what shows a kind that no live worker can
    /// run.
    pub unfinished_by_kind: Vec<(Kind, u64)>,
}

impl QueueInfo {
    /// The count for one state.
    pub fn depth(&self, state: StateName) -> u64 {
        self.depths
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}
