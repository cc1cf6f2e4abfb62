//! How one process behaves, the limits its jobs run under, and the
//! configurations that cannot work.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::{InvalidName, Kind, ProcessId, QueueName, SemaphoreName};
use crate::time::Millis;

/// One queue this process works.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The queue.
    pub queue: QueueName,
    /// At most this many of its jobs run here at once.
    pub max_workers: u32,
}

/// A cluster-wide limit: at most `permits` holders of `semaphore` at once,
/// across every process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Limit {
    /// The semaphore.
    pub semaphore: SemaphoreName,
    /// Its size, the same in every process (the first use fixes it).
    pub permits: u16,
}

impl Limit {
    /// A limit of `permits` (at least 1) on the semaphore `name`
    /// (validated).
    pub fn new(name: impl Into<String>, permits: u16) -> Result<Limit, InvalidLimit> {
        let semaphore = SemaphoreName::new(name)?;
        if permits == 0 {
            return Err(InvalidLimit::ZeroPermits { semaphore });
        }
        Ok(Limit { semaphore, permits })
    }

    /// The limit on a whole queue: semaphore `queue:<name>`.
    pub fn queue(queue: &QueueName, permits: u16) -> Result<Limit, InvalidLimit> {
        Limit::new(format!("queue:{queue}"), permits)
    }
}

/// A [`Limit`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidLimit {
    /// The semaphore's name is malformed.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// A limit of 0 slots: no job under it could ever run.
    #[error("limit {semaphore} has 0 permits; a semaphore needs at least 1 slot")]
    ZeroPermits {
        /// The semaphore.
        semaphore: SemaphoreName,
    },
}

/// How a process takes and keeps the slots of the limits its jobs run
/// under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitConfig {
    /// A slot is held as a lease of this length, renewed at a third of it
    /// while the handler runs. A handler whose slot cannot be renewed
    /// before the lease would lapse is stopped.
    pub lease_ttl: Millis,
    /// On a miss (every slot held) the job is handed back, without using an
    /// attempt, for a pause drawn uniformly from `[retry_min, retry_max]`.
    pub retry_min: Millis,
    /// See `retry_min`.
    pub retry_max: Millis,
}

impl Default for LimitConfig {
    fn default() -> LimitConfig {
        LimitConfig {
            lease_ttl: Millis::from_secs(30),
            retry_min: Millis(250),
            retry_max: Millis(1_000),
        }
    }
}

impl LimitConfig {
    /// The shortest `lease_ttl` allowed: renewals go out at a third of the
    /// lease, and a lease shorter than this leaves a renewal's round trip
    /// no room.
    pub const LEASE_TTL_MIN: Millis = Millis(30);
}

/// How one process behaves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DispatcherConfig {
    /// This process.
    pub process: ProcessId,
    /// The queues it works, in priority order for claiming.
    pub queues: Vec<QueueConfig>,
    /// The kinds it can run; it never claims others (`None`: any kind).
    pub kinds: Option<BTreeSet<Kind>>,
    /// The most jobs one claim asks for.
    pub claim_batch_max: u32,
    /// While handlers run, wait until this many workers are free (or
    /// `claim_delay` passed since the first one freed) before claiming, so
    /// a busy process claims in batches rather than one job per finished
    /// handler. Capped at `max_workers` and `claim_batch_max`; 1 claims at
    /// once. The default is `max_workers` (up to 128): every claim is as
    /// big as the pool allows, and `claim_delay` bounds what waiting for
    /// the slowest handlers costs.
    pub claim_batch_min: u32,
    /// The longest a free worker waits for others before claiming anyway.
    pub claim_delay: Millis,
    /// How long an idle queue waits before polling again without a
    /// notification.
    pub poll_interval: Millis,
    /// Flush results once this many are buffered.
    pub flush_max: usize,
    /// Flush results at most this long after the oldest was buffered.
    pub flush_delay: Millis,
    /// How often running jobs are heartbeated.
    pub heartbeat_interval: Millis,
    /// Whether this process competes for maintenance leadership.
    pub lead: bool,
    /// How often the leader promotes, rescues and prunes (and renews).
    pub maintenance_interval: Millis,
    /// Finished jobs older than this (by storage's clock) are pruned by the
    /// leader.
    pub retention: Millis,
    /// How long shutdown waits for running handlers before stopping them.
    pub shutdown_timeout: Millis,
    /// How long a handler told to stop (shutdown, a lost slot, a fenced
    /// attempt) has to end on its own before it is aborted. Its job is
    /// handed back, and its slots released, only once it has ended.
    pub stop_grace: Millis,
    /// Pause before retrying a command whose result was lost.
    pub retry_after: Millis,
    /// The most items one command may carry: the backend's limit
    /// (`WorldConfig::batch_max` of the world it stands for). No command
    /// the dispatcher sends carries more: heartbeats are cut into chunks,
    /// maintenance asks for at most this many jobs, and
    /// [`DispatcherConfig::validate`] refuses a `claim_batch_max` or
    /// `flush_max` whose batches could be larger (a claim asks for at most
    /// one queue's `max_workers`, a flush holds at most every worker's
    /// result).
    pub batch_max: usize,
    /// Cluster-wide limits per queue: at most N of the queue's jobs run at
    /// once across every process (semaphore `queue:<name>`).
    pub queue_limits: Vec<(QueueName, u16)>,
    /// How limit slots are held, and how long a miss waits.
    pub limits: LimitConfig,
}

/// The most jobs one maintenance command (promote, rescue, prune) asks
/// for, when the backend allows that many.
pub const MAINTENANCE_BATCH_MAX: u32 = 1_000;

impl DispatcherConfig {
    /// A configuration with sensible defaults for one queue.
    pub fn new(process: ProcessId, queue: QueueName, max_workers: u32) -> DispatcherConfig {
        DispatcherConfig {
            process,
            queues: vec![QueueConfig { queue, max_workers }],
            kinds: None,
            claim_batch_max: 128,
            // A claim's cost is mostly per statement: the fewer, the better.
            // Measured (`weir bench burn-down`, 64 workers): half the pool
            // per claim gave 26,000-29,000 jobs/s, the whole pool
            // 31,000-39,000 with 40% fewer commits (docs/benchmarks/CHANGES.md).
            claim_batch_min: max_workers.clamp(1, 128),
            claim_delay: Millis(20),
            poll_interval: Millis(1_000),
            flush_max: 128,
            flush_delay: Millis(10),
            heartbeat_interval: Millis(10_000),
            lead: true,
            maintenance_interval: Millis(1_000),
            retention: Millis::from_secs(24 * 3600),
            shutdown_timeout: Millis::from_secs(30),
            stop_grace: Millis::from_secs(5),
            retry_after: Millis(500),
            batch_max: crate::world::WorldConfig::default().batch_max,
            queue_limits: Vec::new(),
            limits: LimitConfig::default(),
        }
    }

    /// The jobs one maintenance command asks for: as many as the backend
    /// takes, up to [`MAINTENANCE_BATCH_MAX`].
    pub fn maintenance_batch(&self) -> u32 {
        let backend = u32::try_from(self.batch_max).unwrap_or(u32::MAX);
        MAINTENANCE_BATCH_MAX.min(backend).max(1)
    }

    /// The limit on queue `queue`'s jobs, if it has one.
    pub fn queue_limit(&self, queue: &QueueName) -> Option<Limit> {
        let (_, permits) = self.queue_limits.iter().find(|(q, _)| q == queue)?;
        Limit::queue(queue, *permits).ok()
    }

    /// Refuses a configuration that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), InvalidDispatcherConfig> {
        use InvalidDispatcherConfig as Bad;
        if self.queues.is_empty() {
            return Err(Bad::NoQueues);
        }
        let mut names = BTreeSet::new();
        for q in &self.queues {
            let queue = q.queue.clone();
            if q.max_workers == 0 {
                return Err(Bad::MaxWorkersZero { queue });
            }
            if !names.insert(&q.queue) {
                return Err(Bad::QueueListedTwice { queue });
            }
        }
        self.validate_batches()?;
        self.validate_intervals()?;
        for (queue, permits) in &self.queue_limits {
            let queue = queue.clone();
            if *permits == 0 {
                return Err(Bad::QueueLimitZero { queue });
            }
            if !names.contains(&queue) {
                return Err(Bad::QueueLimitUnknownQueue { queue });
            }
            // Every queue name makes a valid semaphore name after the
            // prefix; a failure here would be a bug in the name rules.
            Limit::queue(&queue, *permits).map_err(|_| Bad::QueueLimitZero { queue })?;
        }
        if self.limits.retry_min > self.limits.retry_max {
            return Err(Bad::RetryRange {
                retry_min: self.limits.retry_min,
                retry_max: self.limits.retry_max,
            });
        }
        Ok(())
    }

    fn validate_batches(&self) -> Result<(), InvalidDispatcherConfig> {
        use InvalidDispatcherConfig as Bad;
        let batches = [
            ("claim_batch_max", self.claim_batch_max as usize),
            ("flush_max", self.flush_max),
        ];
        if let Some((setting, _)) = batches.iter().find(|(_, n)| *n == 0) {
            return Err(Bad::ZeroBatch { setting });
        }
        if self.batch_max == 0 {
            return Err(Bad::ZeroBatch {
                setting: "batch_max",
            });
        }
        // What a command can really carry: a claim asks for at most one
        // queue's workers, and a flush holds at most every worker's result.
        let widest = self
            .queues
            .iter()
            .map(|q| q.max_workers as usize)
            .max()
            .unwrap_or(0);
        let workers: usize = self.queues.iter().map(|q| q.max_workers as usize).sum();
        let effective = [batches[0].1.min(widest), batches[1].1.min(workers)];
        let over = batches
            .iter()
            .zip(effective)
            .find(|(_, effective)| *effective > self.batch_max);
        if let Some((&(setting, value), _)) = over {
            return Err(Bad::BatchOverBackendLimit {
                setting,
                value,
                max: self.batch_max,
            });
        }
        Ok(())
    }

    fn validate_intervals(&self) -> Result<(), InvalidDispatcherConfig> {
        use InvalidDispatcherConfig as Bad;
        let intervals = [
            ("poll_interval", self.poll_interval, true),
            ("heartbeat_interval", self.heartbeat_interval, true),
            ("maintenance_interval", self.maintenance_interval, self.lead),
            ("retry_after", self.retry_after, true),
        ];
        let zero = intervals
            .into_iter()
            .find(|(_, ms, used)| *used && *ms == Millis::ZERO);
        if let Some((setting, _, _)) = zero {
            return Err(Bad::ZeroInterval { setting });
        }
        let min = LimitConfig::LEASE_TTL_MIN;
        if self.limits.lease_ttl < min {
            return Err(Bad::TtlTooShort {
                setting: "limits.lease_ttl",
                got: self.limits.lease_ttl,
                min,
            });
        }
        Ok(())
    }
}

/// A [`DispatcherConfig`] that cannot work, and which setting is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDispatcherConfig {
    /// No queue to work.
    #[error("no queues to work")]
    NoQueues,
    /// A queue allows no handler at all in this process.
    #[error("queue {queue} has max_workers = 0; give it at least 1 or leave it out")]
    MaxWorkersZero {
        /// The queue.
        queue: QueueName,
    },
    /// A queue is listed twice.
    #[error("queue {queue} is listed twice")]
    QueueListedTwice {
        /// The queue.
        queue: QueueName,
    },
    /// A batch size of 0 (`claim_batch_max`, `flush_max` or `batch_max`).
    #[error("{setting} is 0; it must be at least 1")]
    ZeroBatch {
        /// The setting.
        setting: &'static str,
    },
    /// A batch the backend would refuse whole.
    #[error(
        "{setting} is {value}, but the backend takes at most {max} items per command; \
         lower {setting} to {max} or less"
    )]
    BatchOverBackendLimit {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: usize,
        /// The backend's limit.
        max: usize,
    },
    /// An interval of 0 would spin: a poll, heartbeat, maintenance round
    /// or retry without pause.
    #[error("{setting} is 0 ms; it must be at least 1 ms")]
    ZeroInterval {
        /// The setting.
        setting: &'static str,
    },
    /// A cluster-wide queue limit of 0 slots: no job of the queue could
    /// ever run.
    #[error("queue limit of queue {queue} is 0; a semaphore needs at least 1 slot")]
    QueueLimitZero {
        /// The queue.
        queue: QueueName,
    },
    /// A queue limit for a queue this process does not work.
    #[error("queue limit names queue {queue}, which this pool does not work")]
    QueueLimitUnknownQueue {
        /// The queue.
        queue: QueueName,
    },
    /// A lease shorter than the process can renew in time.
    #[error("{setting} is {got}; it must be at least {min}")]
    TtlTooShort {
        /// The setting.
        setting: &'static str,
        /// Its value.
        got: Millis,
        /// The least allowed.
        min: Millis,
    },
    /// The pause range of a limit miss is empty.
    #[error("limits.retry_min {retry_min} is above limits.retry_max {retry_max}")]
    RetryRange {
        /// Shortest pause.
        retry_min: Millis,
        /// Longest pause.
        retry_max: Millis,
    },
}
