//! The per-process worker logic, sans IO: when and how much to claim, when to
//! flush batched results, when to heartbeat, when to refresh leadership, and
//! how to shut down.
//!
//! The dispatcher never talks to storage or runs a handler. The caller (the
//! runtime's worker pool, or the simulator) drives it:
//!
//! 1. feed an [`Input`] with [`Dispatcher::handle`] (a timer fired, a command
//!    returned, a handler finished, a notification arrived, shutdown);
//! 2. drain [`Dispatcher::poll_effect`] and do what each [`Effect`] says
//!    (execute a storage command and feed its outcome back, start a handler,
//!    tell a handler it lost its job);
//! 3. sleep until [`Dispatcher::poll_timeout`] and feed [`Input::Tick`].
//!
//! Time must not go backwards between calls. Each call takes a uniform
//! random `draw`; the dispatcher uses it only for backoff jitter, so a
//! seeded caller replays exactly.
//!
//! Storage commands run in *lanes*: at most one claim per queue, one claimer
//! acquisition per queue, one heartbeat, one report flush and one maintenance
//! step are in flight at a time. Lanes keep the logic simple and bound the
//! load a process puts on the database.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::claimer::ClaimerGrant;
use crate::ids::{Kind, ProcessId, QueueName, Receipt};
use crate::job::FailError;
use crate::leader::LeaderGrant;
use crate::reject::{Reject, StateName};
use crate::time::{Millis, Timestamp};
use crate::world::{ClaimedJob, Command, Failure, Outcome};

/// One queue this process works.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The queue.
    pub queue: QueueName,
    /// At most this many of its jobs run here at once.
    pub max_workers: u32,
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
    /// Finished jobs older than this are pruned by the leader.
    pub retention: Millis,
    /// How long shutdown waits for running handlers before cancelling them.
    pub shutdown_timeout: Millis,
    /// Pause before retrying a command whose result was lost.
    pub retry_after: Millis,
}

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
            retry_after: Millis(500),
        }
    }
}

/// What a handler decided about its job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HandlerResult {
    /// Done.
    Complete,
    /// Failed; retry per `retry` if attempts remain.
    Fail(FailError),
    /// Not now: run again after this delay, without using an attempt.
    Snooze(Millis),
    /// Parked until an external callback, for at most this long.
    WaitExternal(Millis),
    /// The job should not run at all: cancel it (receipt-guarded).
    Cancel,
}

/// Identifies an executed command, so its outcome can be routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId(pub u64);

/// Something that happened to the process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// A timer from [`Dispatcher::poll_timeout`] is due (extra ticks are harmless).
    Tick,
    /// New jobs were enqueued on this queue (LISTEN/NOTIFY).
    Notified(QueueName),
    /// A command from [`Effect::Execute`] returned.
    Outcome(CommandId, Outcome),
    /// A command from [`Effect::Execute`] failed without a known result
    /// (connection lost mid-flight): it may or may not have been applied.
    Lost(CommandId),
    /// A handler started by [`Effect::StartHandler`] finished.
    HandlerDone(Receipt, HandlerResult),
    /// Storage says this attempt was taken away (a cancel or rescue
    /// notification, or a handler's own heartbeat was refused): stop its
    /// handler now rather than at the next heartbeat. The epoch bump fences
    /// the attempt either way; this only saves the handler's work. A
    /// receipt that is not running here is ignored.
    Fenced(Receipt),
    /// Stop: finish or cancel running handlers, flush, release, resign.
    Shutdown,
}

/// Why a handler should stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopReason {
    /// The job was cancelled, rescued or otherwise fenced: the receipt is stale.
    Fenced,
    /// Shutdown ran out of patience.
    Shutdown,
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// Apply this storage command and feed back [`Input::Outcome`] (or
    /// [`Input::Lost`]) with the same id.
    Execute(CommandId, Command),
    /// Run this job's handler and feed back [`Input::HandlerDone`].
    StartHandler(ClaimedJob),
    /// Tell this handler to stop (fire its cancellation token). Its result,
    /// if it still reports one, is discarded.
    StopHandler(Receipt, StopReason),
    /// Shutdown finished: nothing runs, everything was flushed and released.
    ShutdownComplete,
}

/// Why the dispatcher wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Poll queue `n` (index into the configured queues) for work.
    Claim(usize),
    /// Flush buffered results.
    Flush,
    /// Heartbeat running jobs.
    Heartbeat,
    /// Maintenance (and leader renewal) is due.
    Maintenance,
    /// Shutdown's patience runs out.
    ShutdownDeadline,
}

/// Counters a caller can export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stats {
    /// Jobs claimed.
    pub claimed: u64,
    /// Non-empty claims.
    pub claims: u64,
    /// Claimer lease rows rewritten.
    pub lease_refreshes: u64,
    /// Claimer leases acquired (taken over or opened).
    pub lease_acquisitions: u64,
    /// Results accepted by storage.
    pub reported: u64,
    /// Results and heartbeats refused because the job was fenced.
    pub fenced: u64,
    /// Commands whose result was lost.
    pub lost: u64,
    /// Jobs promoted, rescued and pruned while leading.
    pub maintained: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Lane {
    Acquire(usize),
    Claim { queue: usize, max: u32 },
    Heartbeat(Vec<Receipt>),
    Report(Vec<Receipt>),
    Leader,
    Maintenance,
    Release,
}

impl Lane {
    /// Lanes that are one lane for "at most one in flight": all reports
    /// share one lane, all maintenance commands another.
    fn same_lane(&self, other: &Lane) -> bool {
        use Lane::*;
        match (self, other) {
            (Acquire(a), Acquire(b)) => a == b,
            (Claim { queue: a, .. }, Claim { queue: b, .. }) => a == b,
            (Acquire(a), Claim { queue: b, .. }) | (Claim { queue: b, .. }, Acquire(a)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueueState {
    grant: Option<ClaimerGrant>,
    running: u32,
    next_poll: Timestamp,
    /// When a worker first became free since the last claim was sent.
    freed_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Running,
    Draining { deadline: Timestamp },
    Releasing,
    Done,
}

/// One process's worker logic. See the module docs for the call order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dispatcher {
    config: DispatcherConfig,
    phase: Phase,
    queues: Vec<QueueState>,
    running: BTreeMap<Receipt, usize>,
    buffered: VecDeque<(Timestamp, Receipt, HandlerResult)>,
    reporting: BTreeMap<Receipt, HandlerResult>,
    flush_hold_until: Timestamp,
    next_heartbeat: Timestamp,
    next_maintenance: Timestamp,
    leader: Option<LeaderGrant>,
    maintenance_due: bool,
    in_flight: BTreeMap<CommandId, Lane>,
    next_id: u64,
    effects: VecDeque<Effect>,
    stats: Stats,
}

impl Dispatcher {
    /// A dispatcher starting at `now`.
    pub fn new(config: DispatcherConfig, now: Timestamp) -> Dispatcher {
        let queues = config
            .queues
            .iter()
            .map(|_| QueueState {
                grant: None,
                running: 0,
                next_poll: now,
                freed_at: None,
            })
            .collect();
        Dispatcher {
            next_heartbeat: now.plus(config.heartbeat_interval),
            next_maintenance: now,
            config,
            phase: Phase::Running,
            queues,
            running: BTreeMap::new(),
            buffered: VecDeque::new(),
            reporting: BTreeMap::new(),
            flush_hold_until: now,
            leader: None,
            maintenance_due: false,
            in_flight: BTreeMap::new(),
            next_id: 0,
            effects: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DispatcherConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The receipts of handlers running now.
    pub fn running(&self) -> impl Iterator<Item = Receipt> + '_ {
        self.running.keys().copied()
    }

    /// The queue a running handler's job was claimed from.
    pub fn queue_of(&self, receipt: Receipt) -> Option<&QueueName> {
        self.running
            .get(&receipt)
            .map(|&i| &self.config.queues[i].queue)
    }

    /// The leader lease this process believes it holds.
    pub fn leader(&self) -> Option<LeaderGrant> {
        self.leader
    }

    /// The claimer leases this process believes it holds, by queue.
    pub fn claimers(&self) -> impl Iterator<Item = (&QueueName, ClaimerGrant)> + '_ {
        self.config
            .queues
            .iter()
            .zip(&self.queues)
            .filter_map(|(c, q)| q.grant.map(|g| (&c.queue, g)))
    }

    /// Whether shutdown finished.
    pub fn is_shut_down(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds one input at `now`; then drain [`Dispatcher::poll_effect`].
    /// `draw` is a uniform random number, used only for backoff jitter.
    pub fn handle(&mut self, now: Timestamp, draw: u64, input: Input) {
        match input {
            Input::Tick => {}
            Input::Notified(queue) => {
                if let Some(i) = self.config.queues.iter().position(|q| q.queue == queue) {
                    self.queues[i].next_poll = self.queues[i].next_poll.min(now);
                }
            }
            Input::Outcome(id, outcome) => self.on_outcome(now, id, outcome),
            Input::Lost(id) => self.on_lost(now, id),
            Input::HandlerDone(receipt, result) => self.on_handler_done(now, receipt, result),
            Input::Fenced(receipt) => self.fence(receipt),
            Input::Shutdown => {
                if self.phase == Phase::Running {
                    self.phase = Phase::Draining {
                        deadline: now.plus(self.config.shutdown_timeout),
                    };
                }
            }
        }
        self.step(now, draw);
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("dispatcher invariant broken at {now}: {broken}");
        }
    }

    /// Checks the dispatcher's own bookkeeping: per-queue running counts
    /// match the running handlers and stay within `max_workers`; a result is
    /// never both buffered and being reported; a receipt is never both
    /// running and reported.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            let counted = self.running.values().filter(|&&queue| queue == i).count();
            if counted != q.running as usize {
                return Err(format!(
                    "queue {i}: running count {} but {counted} handlers",
                    q.running
                ));
            }
            if q.running > self.config.queues[i].max_workers {
                return Err(format!(
                    "queue {i}: {} running above max_workers",
                    q.running
                ));
            }
        }
        for (_, receipt, _) in &self.buffered {
            if self.reporting.contains_key(receipt) || self.running.contains_key(receipt) {
                return Err(format!(
                    "{receipt} is buffered and also running or being reported"
                ));
            }
        }
        if let Some(receipt) = self.reporting.keys().find(|r| self.running.contains_key(r)) {
            return Err(format!("{receipt} is being reported while still running"));
        }
        let reported: usize = self
            .in_flight
            .values()
            .map(|lane| {
                if let Lane::Report(rs) = lane {
                    rs.len()
                } else {
                    0
                }
            })
            .sum();
        if reported != self.reporting.len() {
            return Err(format!(
                "{reported} results in flight but {} remembered",
                self.reporting.len()
            ));
        }
        Ok(())
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When to feed the next [`Input::Tick`], and why. `None` when only an
    /// outcome, a handler or a notification can move things on.
    pub fn poll_timeout(&self) -> Option<(Timestamp, Reason)> {
        let mut timers: Vec<(Timestamp, Reason)> = Vec::new();
        match self.phase {
            Phase::Done | Phase::Releasing => return None,
            Phase::Running => {
                for (i, q) in self.queues.iter().enumerate() {
                    if !self.lane_busy(&Lane::Acquire(i))
                        && q.running < self.config.queues[i].max_workers
                    {
                        let at = q.next_poll.max(self.claim_ready_at(i));
                        timers.push((at, Reason::Claim(i)));
                    }
                }
                if self.config.lead {
                    timers.push((self.next_maintenance, Reason::Maintenance));
                }
            }
            Phase::Draining { deadline } => {
                if !self.running.is_empty() {
                    timers.push((deadline, Reason::ShutdownDeadline));
                }
            }
        }
        if let Some((at, _, _)) = self.buffered.front() {
            let due = at.plus(self.config.flush_delay).max(self.flush_hold_until);
            timers.push((due, Reason::Flush));
        }
        if !self.running.is_empty() {
            timers.push((self.next_heartbeat, Reason::Heartbeat));
        }
        timers.into_iter().min()
    }

    fn execute(&mut self, lane: Lane, command: Command) {
        let id = CommandId(self.next_id);
        self.next_id += 1;
        self.in_flight.insert(id, lane);
        self.effects.push_back(Effect::Execute(id, command));
    }

    fn lane_busy(&self, lane: &Lane) -> bool {
        self.in_flight.values().any(|l| l.same_lane(lane))
    }

    /// Everything that is due at `now`, in a fixed order.
    fn step(&mut self, now: Timestamp, draw: u64) {
        self.flush_if_due(now, draw);
        let heartbeat_idle = !self.lane_busy(&Lane::Heartbeat(Vec::new()));
        if !self.running.is_empty() && now >= self.next_heartbeat && heartbeat_idle {
            self.next_heartbeat = now.plus(self.config.heartbeat_interval);
            let receipts: Vec<Receipt> = self.running.keys().copied().collect();
            self.execute(
                Lane::Heartbeat(receipts.clone()),
                Command::Heartbeat { receipts },
            );
        }
        match self.phase {
            Phase::Running => {
                self.maintain(now, draw);
                for i in 0..self.queues.len() {
                    self.claim_if_due(now, i);
                }
            }
            Phase::Draining { deadline } => self.drain(now, deadline),
            Phase::Releasing | Phase::Done => {}
        }
    }

    /// When queue `i`'s next claim may go out as far as gathering free
    /// workers goes: at once when enough are free (or none is busy), else
    /// `claim_delay` after the first one freed.
    fn claim_ready_at(&self, i: usize) -> Timestamp {
        let q = &self.queues[i];
        let max_workers = self.config.queues[i].max_workers;
        let want = self
            .config
            .claim_batch_min
            .min(max_workers)
            .min(self.config.claim_batch_max)
            .max(1);
        if q.grant.is_none() || q.running == 0 || max_workers - q.running >= want {
            return Timestamp::ZERO;
        }
        // `freed_at` is set by `step` for every queue with a free worker.
        q.freed_at
            .map_or(Timestamp::ZERO, |at| at.plus(self.config.claim_delay))
    }

    fn claim_if_due(&mut self, now: Timestamp, i: usize) {
        let max_workers = self.config.queues[i].max_workers;
        let q = &mut self.queues[i];
        if q.running < max_workers && q.freed_at.is_none() {
            q.freed_at = Some(now);
        }
        let q = &self.queues[i];
        if self.lane_busy(&Lane::Acquire(i))
            || q.running >= max_workers
            || now < q.next_poll
            || now < self.claim_ready_at(i)
        {
            return;
        }
        let queue = self.config.queues[i].queue.clone();
        match q.grant {
            None => {
                let process = self.config.process;
                self.execute(Lane::Acquire(i), Command::ClaimerAcquire { queue, process });
            }
            Some(claimer) => {
                let max = (max_workers - q.running).min(self.config.claim_batch_max);
                let kinds = self.config.kinds.clone();
                self.queues[i].freed_at = None;
                self.execute(
                    Lane::Claim { queue: i, max },
                    Command::Claim {
                        queue,
                        claimer,
                        max,
                        kinds,
                    },
                );
            }
        }
    }

    fn maintain(&mut self, now: Timestamp, draw: u64) {
        if !self.config.lead || self.lane_busy(&Lane::Leader) || self.lane_busy(&Lane::Maintenance)
        {
            return;
        }
        if let (true, Some(leader)) = (self.maintenance_due, self.leader) {
            self.maintenance_due = false;
            let max = 1_000;
            self.execute(Lane::Maintenance, Command::Promote { leader, max });
            self.execute(Lane::Maintenance, Command::Rescue { leader, draw, max });
            self.execute(
                Lane::Maintenance,
                Command::Prune {
                    leader,
                    older_than: self.config.retention,
                    max,
                },
            );
            return;
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now.plus(self.config.maintenance_interval);
            let process = self.config.process;
            self.execute(Lane::Leader, Command::LeaderElect { process });
        }
    }

    fn flush_if_due(&mut self, now: Timestamp, draw: u64) {
        let Some(&(oldest, _, _)) = self.buffered.front() else {
            return;
        };
        let full = self.buffered.len() >= self.config.flush_max;
        let due = now >= oldest.plus(self.config.flush_delay) || self.phase != Phase::Running;
        let held = now < self.flush_hold_until;
        if !(full || due) || held || self.lane_busy(&Lane::Report(Vec::new())) {
            return;
        }
        let take = self.buffered.len().min(self.config.flush_max);
        let batch: Vec<_> = self.buffered.drain(..take).collect();
        let (mut completes, mut failures, mut snoozes, mut waits) =
            (vec![], vec![], vec![], vec![]);
        let mut cancels = Vec::new();
        for (_, receipt, result) in &batch {
            match result {
                HandlerResult::Complete => completes.push(*receipt),
                HandlerResult::Fail(error) => failures.push(Failure {
                    receipt: *receipt,
                    error: error.clone(),
                    draw: mix(draw, receipt),
                }),
                HandlerResult::Snooze(delay) => snoozes.push((*receipt, *delay)),
                HandlerResult::WaitExternal(timeout) => waits.push((*receipt, *timeout)),
                HandlerResult::Cancel => cancels.push(*receipt),
            }
        }
        if !cancels.is_empty() {
            let command = Command::CancelAttempts {
                receipts: cancels.clone(),
            };
            self.execute(Lane::Report(cancels), command);
        }
        if !completes.is_empty() {
            self.execute(
                Lane::Report(completes.clone()),
                Command::Complete {
                    receipts: completes,
                },
            );
        }
        if !failures.is_empty() {
            let receipts = failures.iter().map(|f| f.receipt).collect();
            self.execute(Lane::Report(receipts), Command::Fail { failures });
        }
        if !snoozes.is_empty() {
            let receipts = snoozes.iter().map(|s| s.0).collect();
            self.execute(Lane::Report(receipts), Command::Snooze { snoozes });
        }
        if !waits.is_empty() {
            let receipts = waits.iter().map(|w| w.0).collect();
            self.execute(Lane::Report(receipts), Command::WaitExternal { waits });
        }
        self.reporting.extend(
            batch
                .into_iter()
                .map(|(_, receipt, result)| (receipt, result)),
        );
    }

    /// Shutdown: no new claims; wait for handlers until the deadline, then
    /// stop them and hand their jobs back; flush; then release.
    fn drain(&mut self, now: Timestamp, deadline: Timestamp) {
        if now >= deadline && !self.running.is_empty() {
            let receipts: Vec<Receipt> = self.running.keys().copied().collect();
            for receipt in receipts {
                self.effects
                    .push_back(Effect::StopHandler(receipt, StopReason::Shutdown));
                // Hand the job back at once, without using an attempt: it
                // was interrupted by us, not failed by its handler.
                self.finish_handler(now, receipt, HandlerResult::Snooze(Millis::ZERO));
            }
            self.flush_if_due(now, 0);
        }
        let settled = self.running.is_empty()
            && self.buffered.is_empty()
            && self
                .in_flight
                .values()
                .all(|l| matches!(l, Lane::Heartbeat(_)));
        if !settled {
            return;
        }
        self.phase = Phase::Releasing;
        for i in 0..self.queues.len() {
            if let Some(claimer) = self.queues[i].grant.take() {
                let queue = self.config.queues[i].queue.clone();
                self.execute(Lane::Release, Command::ClaimerRelease { queue, claimer });
            }
        }
        if let Some(leader) = self.leader.take() {
            self.execute(Lane::Release, Command::LeaderResign { leader });
        }
        self.finish_release();
    }

    fn finish_release(&mut self) {
        if self.phase == Phase::Releasing && self.in_flight.is_empty() {
            self.phase = Phase::Done;
            self.effects.push_back(Effect::ShutdownComplete);
        }
    }

    fn finish_handler(&mut self, now: Timestamp, receipt: Receipt, result: HandlerResult) {
        if let Some(i) = self.running.remove(&receipt) {
            self.queues[i].running -= 1;
            self.buffered.push_back((now, receipt, result));
        }
    }

    fn on_handler_done(&mut self, now: Timestamp, receipt: Receipt, result: HandlerResult) {
        // A handler that was stopped (fenced or shut down) is no longer in
        // `running`: its late result is dropped here, and would be refused
        // by storage anyway.
        self.finish_handler(now, receipt, result);
    }

    fn on_lost(&mut self, now: Timestamp, id: CommandId) {
        let lane = self
            .in_flight
            .remove(&id)
            .expect("Lost for a command that is not in flight");
        self.stats.lost += 1;
        let retry_at = now.plus(self.config.retry_after);
        match lane {
            // A lost claim may have claimed jobs we will never hear of: the
            // leader rescues them once their heartbeats go stale.
            Lane::Acquire(i) | Lane::Claim { queue: i, .. } => self.queues[i].next_poll = retry_at,
            Lane::Report(receipts) => {
                // Retry the same results: a result that did land is refused
                // as NotRunning the second time, which counts as done.
                for receipt in receipts.into_iter().rev() {
                    if let Some(result) = self.reporting.remove(&receipt) {
                        self.buffered.push_front((now, receipt, result));
                    }
                }
                self.flush_hold_until = retry_at;
            }
            Lane::Leader | Lane::Maintenance => self.next_maintenance = retry_at,
            Lane::Heartbeat(_) | Lane::Release => {}
        }
        self.finish_release();
    }

    fn on_outcome(&mut self, now: Timestamp, id: CommandId, outcome: Outcome) {
        let lane = self
            .in_flight
            .remove(&id)
            .expect("Outcome for a command that is not in flight");
        match (lane, outcome) {
            (Lane::Acquire(i), Outcome::ClaimerAcquired(result)) => {
                self.on_acquired(now, i, result)
            }
            (Lane::Claim { queue, max }, Outcome::Claimed(result)) => {
                self.on_claimed(now, queue, max, result)
            }
            (Lane::Heartbeat(receipts), Outcome::Heartbeats(Ok(results))) => {
                for (receipt, result) in receipts.into_iter().zip(results) {
                    if result.is_err() && self.running.contains_key(&receipt) {
                        self.fence(receipt);
                    }
                }
            }
            (Lane::Report(receipts), outcome) => self.on_reported(receipts, outcome),
            (Lane::Leader, Outcome::LeaderElected(result)) => {
                self.leader = result.ok();
                self.maintenance_due = self.leader.is_some();
            }
            (Lane::Maintenance, outcome) => match outcome {
                Outcome::Promoted(Ok(ids)) | Outcome::Pruned(Ok(ids)) => {
                    self.stats.maintained += ids.len() as u64
                }
                Outcome::Rescued(Ok(ids)) => self.stats.maintained += ids.len() as u64,
                _ => self.leader = None,
            },
            (Lane::Release, _) | (Lane::Heartbeat(_), _) => {}
            (lane, outcome) => panic!("outcome {outcome:?} does not answer {lane:?}"),
        }
        self.finish_release();
    }

    fn on_acquired(
        &mut self,
        now: Timestamp,
        i: usize,
        result: Result<(ClaimerGrant, crate::claimer::Acquired), Reject>,
    ) {
        match result {
            Ok((grant, how)) => {
                self.queues[i].grant = Some(grant);
                self.queues[i].next_poll = now;
                if how != crate::claimer::Acquired::Reused {
                    self.stats.lease_acquisitions += 1;
                }
            }
            // All K slots are busy: another process claims from this queue.
            Err(_) => self.queues[i].next_poll = now.plus(self.config.poll_interval),
        }
    }

    fn on_claimed(
        &mut self,
        now: Timestamp,
        i: usize,
        max: u32,
        result: Result<crate::world::Claimed, Reject>,
    ) {
        let claimed = match result {
            Ok(claimed) => claimed,
            Err(Reject::ClaimerLeaseLost { .. }) => {
                self.queues[i].grant = None;
                self.queues[i].next_poll = now;
                return;
            }
            Err(_) => {
                self.queues[i].next_poll = now.plus(self.config.poll_interval);
                return;
            }
        };
        let full = claimed.jobs.len() as u64 >= u64::from(max);
        self.stats.lease_refreshes += u64::from(claimed.lease_refreshed);
        if !claimed.jobs.is_empty() {
            self.stats.claims += 1;
        }
        for job in claimed.jobs {
            self.stats.claimed += 1;
            if self.phase != Phase::Running {
                // Claimed while shutting down: give it straight back.
                self.buffered
                    .push_back((now, job.receipt, HandlerResult::Snooze(Millis::ZERO)));
                continue;
            }
            self.running.insert(job.receipt, i);
            self.queues[i].running += 1;
            self.effects.push_back(Effect::StartHandler(job));
        }
        // A full batch means more is probably waiting: claim again at once.
        self.queues[i].next_poll = if full {
            now
        } else {
            now.plus(self.config.poll_interval)
        };
    }

    fn on_reported(&mut self, receipts: Vec<Receipt>, outcome: Outcome) {
        let results: Vec<Result<(), Reject>> = match outcome {
            Outcome::Completed(Ok(r))
            | Outcome::Snoozed(Ok(r))
            | Outcome::Waiting(Ok(r))
            | Outcome::AttemptsCancelled(Ok(r)) => r,
            Outcome::Failed(Ok(r)) => r.into_iter().map(|x| x.map(|_| ())).collect(),
            other => panic!("a report batch was refused as a whole: {other:?}"),
        };
        for (receipt, result) in receipts.into_iter().zip(results) {
            self.reporting.remove(&receipt);
            match result {
                Ok(()) => self.stats.reported += 1,
                // The same result landed before its answer was lost.
                Err(Reject::NotRunning { state }) if state != StateName::Running => {
                    self.stats.reported += 1
                }
                Err(_) => self.stats.fenced += 1,
            }
        }
    }

    /// Storage says this attempt is no longer ours: stop its handler.
    fn fence(&mut self, receipt: Receipt) {
        if let Some(i) = self.running.remove(&receipt) {
            self.queues[i].running -= 1;
            self.stats.fenced += 1;
            self.effects
                .push_back(Effect::StopHandler(receipt, StopReason::Fenced));
        }
    }
}

/// A per-receipt draw from one shared draw: deterministic, and different
/// for each job so their jitters differ (splitmix64's finaliser).
fn mix(draw: u64, receipt: &Receipt) -> u64 {
    let mut z = draw ^ (receipt.job.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ receipt.epoch.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, JobId};

    fn dispatcher() -> Dispatcher {
        let queue = QueueName::new("q").unwrap();
        Dispatcher::new(DispatcherConfig::new(ProcessId(1), queue, 2), Timestamp(0))
    }

    #[test]
    fn a_fresh_dispatcher_acquires_a_lease_and_seeks_leadership_first() {
        let mut d = dispatcher();
        d.handle(Timestamp(0), 0, Input::Tick);
        let effects: Vec<Effect> = std::iter::from_fn(|| d.poll_effect()).collect();
        assert!(matches!(
            effects[0],
            Effect::Execute(_, Command::LeaderElect { .. })
        ));
        assert!(matches!(
            effects[1],
            Effect::Execute(_, Command::ClaimerAcquire { .. })
        ));
        assert_eq!(effects.len(), 2);
        assert_eq!(d.check_invariants(), Ok(()));
    }

    #[test]
    fn broken_bookkeeping_is_caught() {
        let receipt = Receipt {
            job: JobId(1),
            epoch: Epoch(1),
        };
        let mut d = dispatcher();
        d.queues[0].running = 1;
        assert!(d.check_invariants().unwrap_err().contains("running count"));

        let mut d = dispatcher();
        d.running.insert(receipt, 0);
        d.queues[0].running = 1;
        d.reporting.insert(receipt, HandlerResult::Complete);
        assert!(d
            .check_invariants()
            .unwrap_err()
            .contains("being reported while still running"));

        let mut d = dispatcher();
        d.reporting.insert(receipt, HandlerResult::Complete);
        assert!(d.check_invariants().unwrap_err().contains("in flight"));

        let mut d = dispatcher();
        for i in 0..3 {
            d.running.insert(
                Receipt {
                    job: JobId(i),
                    epoch: Epoch(1),
                },
                0,
            );
        }
        d.queues[0].running = 3;
        assert!(d.check_invariants().unwrap_err().contains("max_workers"));
    }
}
