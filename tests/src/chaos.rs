//! The chaos suite's shared parts: the settings every process runs with,
//! the jobs, the audit tables, and the checks.
//!
//! The suite runs several `chaos_worker` processes (`src/bin/chaos_worker.rs`:
//! a real [`weir::WorkerPool`] over `weir_postgres::PgBackend`) against one
//! database while the driver (`tests/chaos.rs`) injects faults. What they
//! did is recorded in two places the checks read afterwards:
//!
//! * **the execution ledger** (`chaos.executions`): every handler writes a
//!   row when it starts and stamps it when it finishes, through its own
//!   connection, so an execution that went on after it was fenced is
//!   recorded too;
//! * **the transition audit** (`chaos.transitions`): a trigger on the jobs
//!   table appends a row for every change of state or epoch, every write to
//!   a finished job and every deletion. The workers do not write it and
//!   cannot skip it: what storage accepted is read from here, not from
//!   what the workers say.
//!
//! [`check`] turns that evidence into [`Violation`]s and [`Figures`]; it is
//! pure, so its tests below feed it tampered evidence and require each
//! check to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::{JobArgs, LimitConfig, PoolConfig};
use weir_core::{
    Backoff, ClaimerConfig, DispatcherConfig, JobLimits, Millis, ProcessId, QueueName, WorldConfig,
};

/// The queue every chaos job goes to.
pub const QUEUE: &str = "chaos";
/// The N-slot semaphore [`Hold`] jobs run under.
pub const HOLD_SEMAPHORE: &str = "chaos-holders";
/// The `application_name` of the workers' pool connections (the fault
/// injector finds them by it).
pub const APP_NAME_POOL: &str = "weir-chaos-pool";
/// The `application_name` of the workers' ledger connections.
pub const APP_NAME_LEDGER: &str = "weir-chaos-ledger";

/// Environment of `chaos_worker`: the database URL (as the app role).
pub const ENV_URL: &str = "WEIR_CHAOS_URL";
/// Environment of `chaos_worker`: its process id (a `u63` in decimal).
pub const ENV_PROCESS: &str = "WEIR_CHAOS_PROCESS";
/// Environment of `chaos_worker`: handlers in the pool.
pub const ENV_WORKERS: &str = "WEIR_CHAOS_WORKERS";
/// Environment of `chaos_worker`: exit on its own after this many seconds.
pub const ENV_LIFETIME: &str = "WEIR_CHAOS_LIFETIME_S";
/// Environment of `chaos_worker`: deliberate bugs, comma-separated, for
/// showing that the checks fail: `ignore-fencing` completes every job
/// with raw SQL as well, epoch and state unchecked; `no-wakeups` never
/// listens for wake-ups.
pub const ENV_BROKEN: &str = "WEIR_CHAOS_BROKEN";

/// The world settings: the same in every process and in the driver.
/// Short, so a fault's consequences (rescue, takeover, lapse) happen
/// within seconds; long enough that a busy 2-core machine does not cross
/// them all the time.
pub fn world_config() -> WorldConfig {
    WorldConfig {
        claimer: ClaimerConfig {
            slots_per_queue: 16,
            lease_ttl: CLAIMER_LEASE_TTL,
            idle_threshold: Millis(1_500),
        },
        heartbeat_stale_after: HEARTBEAT_STALE_AFTER,
        backoff: Backoff::new(Millis(100), 2, Millis(1_000), 200).expect("a valid policy"),
        leader_ttl: Millis(2_000),
        limits: JobLimits::default(),
        batch_max: 10_000,
    }
}

/// A running job whose heartbeat is this old is rescued.
pub const HEARTBEAT_STALE_AFTER: Millis = Millis(2_000);
/// A claimer lease lasts this long without a refresh.
pub const CLAIMER_LEASE_TTL: Millis = Millis(3_000);
/// A concurrency slot's lease (renewed at a third while its handler runs:
/// a renewal may come 1.7 s late before the lease lapses).
pub const SLOT_LEASE_TTL: Millis = Millis(2_500);

/// One worker process's pool settings.
pub fn pool_config(process: ProcessId, workers: u32) -> PoolConfig {
    let queue = QueueName::new(QUEUE).expect("a valid queue name");
    let dispatcher = DispatcherConfig {
        claim_batch_max: 32,
        poll_interval: Millis(250),
        heartbeat_interval: Millis(400),
        maintenance_interval: Millis(200),
        flush_delay: Millis(10),
        shutdown_timeout: Millis(3_000),
        stop_grace: Millis(2_000),
        retry_after: Millis(200),
        limits: LimitConfig {
            lease_ttl: SLOT_LEASE_TTL,
            retry_min: Millis(200),
            retry_max: Millis(500),
        },
        ..DispatcherConfig::new(process, queue, workers)
    };
    let mut config = PoolConfig::from_dispatcher(dispatcher);
    config.presence_ttl = Duration::from_secs(3);
    config.label = format!("chaos_worker pid {}", std::process::id());
    config
}

/// The ordinary job: sleeps `work_ms`, recording itself in the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Work {
    /// The driver's sequence number.
    pub n: u64,
    /// How long the handler works.
    pub work_ms: u64,
}

impl JobArgs for Work {
    const KIND: &'static str = "chaos.work";
    const QUEUE: &'static str = QUEUE;
    const MAX_ATTEMPTS: u32 = 25;
    const TIMEOUT: Duration = Duration::from_secs(60);
}

/// A job that runs only while holding one of `permits` slots of
/// [`HOLD_SEMAPHORE`], for `hold_ms` (longer than the slot's lease, so it
/// must be renewed). Claimed before [`Work`] (a lower priority number), so
/// waiting holders are not stuck behind the backlog.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hold {
    /// The driver's sequence number.
    pub n: u64,
    /// How long the handler holds its slot.
    pub hold_ms: u64,
    /// N, the semaphore's size.
    pub permits: u16,
}

impl JobArgs for Hold {
    const KIND: &'static str = "chaos.hold";
    const QUEUE: &'static str = QUEUE;
    const PRIORITY: i16 = -1;
    const MAX_ATTEMPTS: u32 = 25;
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn concurrency(&self) -> Option<(String, u16)> {
        Some((HOLD_SEMAPHORE.to_string(), self.permits))
    }
}

/// The ledger and the audit, created by the superuser after the migration
/// (`{s}` is Weir's quoted schema). The trigger function is `SECURITY
/// DEFINER`: the workers' role can neither write the audit nor avoid it.
pub const SETUP_SQL: &str = r#"
CREATE SCHEMA chaos;
CREATE TABLE chaos.executions (
    process     bigint  NOT NULL,
    seq         bigint  NOT NULL,
    job         bigint  NOT NULL,
    epoch       bigint  NOT NULL,
    attempt     integer NOT NULL,
    kind        text    NOT NULL,
    os_pid      integer NOT NULL,
    started_at  bigint  NOT NULL,
    finished_at bigint,
    stopped     boolean,
    PRIMARY KEY (process, seq)
);
GRANT USAGE ON SCHEMA chaos TO weir_app;
GRANT SELECT, INSERT, UPDATE ON chaos.executions TO weir_app;
CREATE TABLE chaos.transitions (
    seq        bigserial PRIMARY KEY,
    job        bigint NOT NULL,
    old_state  text   NOT NULL,
    new_state  text   NOT NULL,
    old_epoch  bigint NOT NULL,
    new_epoch  bigint NOT NULL,
    old_holder bigint,
    at_ms      bigint NOT NULL
);
CREATE INDEX transitions_completed ON chaos.transitions (at_ms) WHERE new_state = 'completed';
CREATE FUNCTION chaos.audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO chaos.transitions (job, old_state, new_state, old_epoch, new_epoch, old_holder, at_ms)
    VALUES (OLD.id, OLD.state, CASE WHEN TG_OP = 'DELETE' THEN 'deleted' ELSE NEW.state END,
            OLD.epoch, CASE WHEN TG_OP = 'DELETE' THEN OLD.epoch ELSE NEW.epoch END, OLD.holder,
            floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    RETURN NULL;
END
$$;
CREATE TRIGGER chaos_audit AFTER UPDATE ON {s}.jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.epoch IS DISTINCT FROM NEW.epoch
          OR OLD.state IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION chaos.audit();
CREATE TRIGGER chaos_audit_delete AFTER DELETE ON {s}.jobs FOR EACH ROW
    EXECUTE FUNCTION chaos.audit();
"#;

/// A job as stored at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    /// Its id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// Its state (the stored name, `completed`, ...).
    pub state: String,
    /// Its epoch.
    pub epoch: i64,
}

/// One row of the transition audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Audit order.
    pub seq: i64,
    /// The job.
    pub job: i64,
    /// State before.
    pub old_state: String,
    /// State after (`deleted` for a deletion).
    pub new_state: String,
    /// Epoch before.
    pub old_epoch: i64,
    /// Epoch after.
    pub new_epoch: i64,
    /// When (the server's clock, ms).
    pub at_ms: i64,
}

/// One ledger row: one handler execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// The worker's process id.
    pub process: i64,
    /// Its sequence number in that process.
    pub seq: i64,
    /// The job.
    pub job: i64,
    /// The attempt's epoch (its receipt).
    pub epoch: i64,
    /// The job's kind.
    pub kind: String,
    /// When the handler started (ms).
    pub started_at: i64,
    /// When it finished, if it lived to record it.
    pub finished_at: Option<i64>,
}

/// A claimer lease row at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The queue.
    pub queue: String,
    /// The slot.
    pub slot: i32,
    /// Its owner, if any.
    pub owner: Option<i64>,
    /// When it lapses.
    pub expires_at: i64,
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The driver sent it SIGKILL.
    Killed,
    /// It exited by itself after SIGTERM, with this status and report.
    Exited {
        /// Exit status 0 and a report printed.
        clean: bool,
    },
    /// It died without being killed (a crash, a panic).
    Died,
}

/// One worker process's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Its Weir process id.
    pub process: i64,
    /// Its OS pid.
    pub os_pid: u32,
    /// When it was spawned (ms).
    pub started_at: i64,
    /// When it ended (for a kill: just before the signal).
    pub ended_at: i64,
    /// How.
    pub end: End,
}

/// The semaphore's slot rows as one statement saw them. Its snapshot was
/// taken at some instant within `[at_ms, until_ms]`: `at_ms` is the
/// statement's start (rounded down), `until_ms` a clock read after the
/// snapshot (rounded up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSample {
    /// No later than the snapshot (ms).
    pub at_ms: i64,
    /// No earlier than the snapshot (ms).
    pub until_ms: i64,
    /// `(slot, holder, lease_expires_at)` of every slot with a holder.
    pub held: Vec<(i32, i64, Option<i64>)>,
}

/// Everything the checks read.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// Ids the driver's inserts acknowledged.
    pub enqueued: BTreeSet<i64>,
    /// Jobs an unacknowledged (in-doubt) insert may have added.
    pub in_doubt: usize,
    /// Every job, at the end.
    pub jobs: Vec<JobRow>,
    /// The transition audit.
    pub transitions: Vec<Transition>,
    /// The execution ledger.
    pub executions: Vec<Execution>,
    /// The claimer lease rows, at the end.
    pub leases: Vec<LeaseRow>,
    /// Every worker process of the scenario.
    pub processes: Vec<ProcessRecord>,
    /// Samples of the semaphore's slot rows.
    pub slot_samples: Vec<SlotSample>,
    /// N of the semaphore.
    pub permits: u16,
    /// When the faults ended (ms): every worker alive then and at the end
    /// must have started a handler after it.
    pub fault_end: i64,
}

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which check.
    pub check: &'static str,
    /// What it saw.
    pub detail: String,
}

/// What the evidence shows, broken or not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Jobs at the end.
    pub jobs: usize,
    /// Handler executions recorded.
    pub executions: usize,
    /// Executions beyond the first per job (at-least-once's duplicates).
    pub duplicates: usize,
    /// Jobs run more than once.
    pub jobs_run_twice: usize,
    /// Executions that never recorded their finish (their process died).
    pub interrupted: usize,
    /// Executions that finished, but under an epoch storage never
    /// completed: work whose result was (or would have been) fenced.
    pub fenced_executions: usize,
    /// Most [`Hold`] executions running at once.
    pub max_holders: usize,
    /// Slot samples taken.
    pub slot_samples: usize,
    /// Most slot rows held (unexpired) in one sample.
    pub max_slot_rows: usize,
    /// Claimer lease rows still naming a process that ended.
    pub leases_of_ended: usize,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Every broken promise (empty: all kept).
    pub violations: Vec<Violation>,
    /// The figures.
    pub figures: Figures,
}

impl Verdict {
    fn fail(&mut self, check: &'static str, detail: String) {
        // Enough to diagnose; a flood says nothing more.
        if self.violations.iter().filter(|v| v.check == check).count() < 10 {
            self.violations.push(Violation { check, detail });
        }
    }

    /// The names of the checks that failed, each once.
    pub fn failed_checks(&self) -> BTreeSet<&'static str> {
        self.violations.iter().map(|v| v.check).collect()
    }
}

/// How long after its process ended a claimer lease may still run: the
/// TTL from a refresh made by a claim statement the process sent just
/// before it died (the server runs it to the end), plus a margin for that
/// statement's time in the server.
pub const LEASE_SLACK_MS: i64 = 2_000;

/// Runs every check.
pub fn check(evidence: &Evidence) -> Verdict {
    let mut verdict = Verdict::default();
    check_jobs(evidence, &mut verdict);
    check_completions(evidence, &mut verdict);
    check_executions(evidence, &mut verdict);
    check_holders(evidence, &mut verdict);
    check_leases(evidence, &mut verdict);
    check_processes(evidence, &mut verdict);
    verdict
}

/// No job lost, none invented, each in exactly one terminal state.
fn check_jobs(e: &Evidence, v: &mut Verdict) {
    v.figures.jobs = e.jobs.len();
    let stored: BTreeSet<i64> = e.jobs.iter().map(|j| j.id).collect();
    if stored.len() != e.jobs.len() {
        v.fail("no_job_lost", "a job id appears twice".into());
    }
    for id in e.enqueued.difference(&stored) {
        v.fail("no_job_lost", format!("job {id} was enqueued and is gone"));
    }
    let unknown = stored.difference(&e.enqueued).count();
    if unknown > e.in_doubt {
        v.fail(
            "no_job_lost",
            format!(
                "{unknown} jobs nobody enqueued ({} in-doubt inserts)",
                e.in_doubt
            ),
        );
    }
    for job in &e.jobs {
        if job.state != "completed" {
            v.fail(
                "every_job_completed",
                format!("job {} ended {} (epoch {})", job.id, job.state, job.epoch),
            );
        }
    }
}

/// Exactly one accepted completion per job, from an execution of that
/// epoch; finished jobs never written; epochs only grow.
fn check_completions(e: &Evidence, v: &mut Verdict) {
    let mut completions: BTreeMap<i64, Vec<&Transition>> = BTreeMap::new();
    for t in &e.transitions {
        if t.new_epoch < t.old_epoch {
            v.fail(
                "epochs_only_grow",
                format!("job {}: epoch {} -> {}", t.job, t.old_epoch, t.new_epoch),
            );
        }
        if matches!(t.old_state.as_str(), "completed" | "failed" | "cancelled") {
            v.fail(
                "finished_jobs_never_change",
                format!(
                    "job {}: written after it {} (epoch {} -> {}, now {})",
                    t.job, t.old_state, t.old_epoch, t.new_epoch, t.new_state
                ),
            );
        }
        if t.new_state == "completed" && t.old_state != "completed" {
            completions.entry(t.job).or_default().push(t);
        }
    }
    let runs: BTreeMap<(i64, i64), &Execution> =
        e.executions.iter().map(|x| ((x.job, x.epoch), x)).collect();
    for job in &e.jobs {
        let accepted = completions.get(&job.id).map_or(&[][..], Vec::as_slice);
        if accepted.len() != 1 && job.state == "completed" {
            let epochs: Vec<i64> = accepted.iter().map(|t| t.new_epoch).collect();
            v.fail(
                "one_accepted_completion",
                format!(
                    "job {}: {} accepted completions (epochs {epochs:?})",
                    job.id,
                    accepted.len()
                ),
            );
        }
        for t in accepted {
            if t.old_state != "running" || t.new_epoch != t.old_epoch || t.new_epoch != job.epoch {
                v.fail(
                    "completion_is_the_current_attempt",
                    format!(
                        "job {}: completed at epoch {} from {} at epoch {}, stored epoch {}",
                        job.id, t.new_epoch, t.old_state, t.old_epoch, job.epoch
                    ),
                );
            }
            match runs.get(&(job.id, t.new_epoch)) {
                Some(run) if run.started_at <= t.at_ms => {}
                Some(run) => v.fail(
                    "completion_backed_by_an_execution",
                    format!(
                        "job {} epoch {}: completed at {} before its handler started at {}",
                        job.id, t.new_epoch, t.at_ms, run.started_at
                    ),
                ),
                None => v.fail(
                    "completion_backed_by_an_execution",
                    format!(
                        "job {} completed at epoch {}, which no handler ran",
                        job.id, t.new_epoch
                    ),
                ),
            }
        }
    }
}

/// At least one execution per job, at most one per receipt; duplicates
/// counted.
fn check_executions(e: &Evidence, v: &mut Verdict) {
    let final_epoch: BTreeMap<i64, (i64, bool)> = e
        .jobs
        .iter()
        .map(|j| (j.id, (j.epoch, j.state == "completed")))
        .collect();
    let mut per_job: BTreeMap<i64, usize> = BTreeMap::new();
    let mut per_receipt: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for x in &e.executions {
        *per_job.entry(x.job).or_default() += 1;
        *per_receipt.entry((x.job, x.epoch)).or_default() += 1;
        if x.finished_at.is_none() {
            v.figures.interrupted += 1;
        } else if final_epoch.get(&x.job) != Some(&(x.epoch, true)) {
            v.figures.fenced_executions += 1;
        }
    }
    for ((job, epoch), n) in &per_receipt {
        if *n > 1 {
            v.fail(
                "one_execution_per_receipt",
                format!("job {job} epoch {epoch} ran {n} times"),
            );
        }
    }
    for job in &e.jobs {
        if !per_job.contains_key(&job.id) {
            v.fail(
                "every_job_executed",
                format!("job {} ({}) never ran", job.id, job.state),
            );
        }
    }
    v.figures.executions = e.executions.len();
    v.figures.duplicates = per_job.values().map(|n| n.saturating_sub(1)).sum();
    v.figures.jobs_run_twice = per_job.values().filter(|n| **n > 1).count();
}

/// When each process stopped believing anything: its end.
fn ends(e: &Evidence) -> BTreeMap<i64, i64> {
    e.processes
        .iter()
        .map(|p| (p.process, p.ended_at))
        .collect()
}

/// A [`Hold`] execution's interval: from its start to its finish, or to
/// its process's end if it never finished.
fn hold_intervals(e: &Evidence) -> Vec<(i64, i64, i64)> {
    let ends = ends(e);
    e.executions
        .iter()
        .filter(|x| x.kind == Hold::KIND)
        .map(|x| {
            let end = x
                .finished_at
                .or_else(|| ends.get(&x.process).copied())
                .unwrap_or(i64::MAX);
            (x.process, x.started_at, end)
        })
        .collect()
}

/// The semaphore never over N, and every execution that believed it held
/// a slot had a live lease on one whenever the slots were sampled.
fn check_holders(e: &Evidence, v: &mut Verdict) {
    let intervals = hold_intervals(e);
    // Ends before starts at the same instant: a release happens before
    // the next acquisition it makes possible.
    let mut events: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|(_, start, end)| [(*start, 1), (*end, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, delta) in events {
        now += i64::from(delta);
        most = most.max(now);
    }
    v.figures.max_holders = usize::try_from(most).unwrap_or(0);
    if most > i64::from(e.permits) && !intervals.is_empty() {
        v.fail(
            "semaphore_never_over_capacity",
            format!("{most} holders at once, N = {}", e.permits),
        );
    }
    v.figures.slot_samples = e.slot_samples.len();
    for sample in &e.slot_samples {
        let (t, until) = (sample.at_ms, sample.until_ms);
        let live: Vec<i64> = sample
            .held
            .iter()
            .filter(|(_, _, expires)| expires.is_none_or(|x| x > t))
            .map(|(_, holder, _)| *holder)
            .collect();
        v.figures.max_slot_rows = v.figures.max_slot_rows.max(live.len());
        let mut believers: BTreeMap<i64, usize> = BTreeMap::new();
        for (process, start, end) in &intervals {
            // Running over the whole of the snapshot's window (stamps are
            // whole milliseconds, rounded down): its slot was taken before
            // the start was stamped, so before the snapshot, and released
            // after the finish was stamped, so after it.
            if *start < t && until <= *end {
                *believers.entry(*process).or_default() += 1;
            }
        }
        for (process, n) in believers {
            let leases = live.iter().filter(|h| **h == process).count();
            if leases < n {
                v.fail(
                    "every_holder_has_a_live_lease",
                    format!(
                        "at {t}: process {process} ran {n} holders on {leases} live slot leases"
                    ),
                );
            }
        }
    }
}

/// No claimer lease owned by an ended process past its TTL.
fn check_leases(e: &Evidence, v: &mut Verdict) {
    let ends = ends(e);
    let ttl = i64::try_from(CLAIMER_LEASE_TTL.0).unwrap_or(i64::MAX);
    for lease in &e.leases {
        let Some(owner) = lease.owner else { continue };
        let Some(end) = ends.get(&owner) else {
            continue;
        };
        v.figures.leases_of_ended += 1;
        if lease.expires_at > end + ttl + LEASE_SLACK_MS {
            v.fail(
                "no_lease_outlives_its_dead_owner",
                format!(
                    "{}/{}: owned by process {owner}, ended at {end}, expires at {} ({} ms past its TTL)",
                    lease.queue,
                    lease.slot,
                    lease.expires_at,
                    lease.expires_at - end - ttl
                ),
            );
        }
    }
}

/// Every process exited as it was told; every process alive when the
/// faults ended worked again after them.
fn check_processes(e: &Evidence, v: &mut Verdict) {
    for p in &e.processes {
        match p.end {
            End::Killed | End::Exited { clean: true } => {}
            End::Exited { clean: false } => v.fail(
                "workers_exit_cleanly",
                format!(
                    "process {} (pid {}) exited without a clean report",
                    p.process, p.os_pid
                ),
            ),
            End::Died => v.fail(
                "workers_exit_cleanly",
                format!("process {} (pid {}) died unbidden", p.process, p.os_pid),
            ),
        }
        if p.started_at > e.fault_end || p.end == End::Killed {
            continue; // killed by the fault, or not there for it
        }
        let worked = e
            .executions
            .iter()
            .any(|x| x.process == p.process && x.started_at > e.fault_end);
        if !worked {
            v.fail(
                "workers_reconnect_on_their_own",
                format!(
                    "process {} (pid {}) started no handler after the faults ended",
                    p.process, p.os_pid
                ),
            );
        }
    }
}

/// Throughput before, during and after a fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recovery {
    /// Completions per second before the fault.
    pub baseline_per_s: f64,
    /// The lowest rate of a one-second window from the fault's start
    /// until recovery.
    pub dip_per_s: f64,
    /// From the fault's end to the start of the first one-second window
    /// at or above [`RECOVERED_FRACTION`] of the baseline; `None`: never.
    pub recovered_after_ms: Option<i64>,
}

/// "Back to baseline" means this fraction of it.
pub const RECOVERED_FRACTION: f64 = 0.8;
const WINDOW_MS: i64 = 1_000;

fn count_in(sorted: &[i64], from: i64, to: i64) -> usize {
    sorted.partition_point(|t| *t < to) - sorted.partition_point(|t| *t < from)
}

/// Recovery from completion times (`sorted`, ms), the baseline window
/// and the fault window.
pub fn recovery(sorted: &[i64], baseline: (i64, i64), fault: (i64, i64)) -> Recovery {
    let span_s = (baseline.1 - baseline.0).max(1) as f64 / 1_000.0;
    let baseline_per_s = count_in(sorted, baseline.0, baseline.1) as f64 / span_s;
    let need = RECOVERED_FRACTION * baseline_per_s;
    let last = sorted.last().copied().unwrap_or(fault.1);
    let rate = |s: i64| count_in(sorted, s, s + WINDOW_MS) as f64 * 1_000.0 / WINDOW_MS as f64;
    let recovered_at = (0..)
        .map(|i| fault.1 + i * 100)
        .take_while(|s| s + WINDOW_MS <= last + 1)
        .find(|s| rate(*s) >= need);
    let dip_until = recovered_at.unwrap_or(last - WINDOW_MS);
    let dip_per_s = (0..)
        .map(|i| fault.0 + i * 100)
        .take_while(|s| *s <= dip_until)
        .map(rate)
        .fold(f64::INFINITY, f64::min);
    Recovery {
        baseline_per_s,
        dip_per_s: if dip_per_s.is_finite() {
            dip_per_s
        } else {
            baseline_per_s
        },
        recovered_after_ms: recovered_at.map(|at| at - fault.1),
    }
}

#[cfg(test)]
mod tests {
    //! Every check must be able to fail: a sound run's evidence passes,
    //! and each tampering breaks exactly the check meant to catch it.

    use super::*;

    const P1: i64 = 11;
    const P2: i64 = 22;

    fn tr(seq: i64, job: i64, from: (&str, i64), to: (&str, i64), at_ms: i64) -> Transition {
        Transition {
            seq,
            job,
            old_state: from.0.into(),
            new_state: to.0.into(),
            old_epoch: from.1,
            new_epoch: to.1,
            at_ms,
        }
    }

    fn run(
        process: i64,
        seq: i64,
        job: i64,
        epoch: i64,
        kind: &str,
        span: (i64, Option<i64>),
    ) -> Execution {
        Execution {
            process,
            seq,
            job,
            epoch,
            kind: kind.into(),
            started_at: span.0,
            finished_at: span.1,
        }
    }

    /// Two jobs; job 2's first run (process 1) was killed and rescued, its
    /// second run (process 2) completed. Two holders of N = 2 overlap.
    fn sound() -> Evidence {
        let job = |id, kind: &str, epoch| JobRow {
            id,
            kind: kind.into(),
            state: "completed".into(),
            epoch,
        };
        Evidence {
            enqueued: [1, 2].into(),
            in_doubt: 0,
            jobs: vec![job(1, Hold::KIND, 1), job(2, Hold::KIND, 3)],
            transitions: vec![
                tr(1, 1, ("available", 0), ("running", 1), 100),
                tr(2, 2, ("available", 0), ("running", 1), 100),
                tr(3, 2, ("running", 1), ("retryable", 2), 2_500),
                tr(4, 2, ("available", 2), ("running", 3), 2_700),
                tr(5, 1, ("running", 1), ("completed", 1), 3_000),
                tr(6, 2, ("running", 3), ("completed", 3), 4_000),
            ],
            executions: vec![
                run(P2, 1, 1, 1, Hold::KIND, (110, Some(2_990))),
                run(P1, 1, 2, 1, Hold::KIND, (120, None)),
                run(P2, 2, 2, 3, Hold::KIND, (2_710, Some(3_990))),
            ],
            leases: vec![LeaseRow {
                queue: QUEUE.into(),
                slot: 0,
                owner: Some(P1),
                expires_at: 500 + 3_000,
            }],
            processes: vec![
                ProcessRecord {
                    process: P1,
                    os_pid: 1,
                    started_at: 0,
                    ended_at: 500,
                    end: End::Killed,
                },
                ProcessRecord {
                    process: P2,
                    os_pid: 2,
                    started_at: 0,
                    ended_at: 5_000,
                    end: End::Exited { clean: true },
                },
            ],
            slot_samples: vec![
                SlotSample {
                    at_ms: 300,
                    until_ms: 301,
                    held: vec![(0, P2, Some(1_800)), (1, P1, Some(1_900))],
                },
                SlotSample {
                    at_ms: 3_500,
                    until_ms: 3_502,
                    held: vec![(0, P2, Some(4_800))],
                },
            ],
            permits: 2,
            fault_end: 600,
        }
    }

    fn failed(e: &Evidence) -> BTreeSet<&'static str> {
        check(e).failed_checks()
    }

    #[test]
    fn a_sound_run_passes_and_its_figures_add_up() {
        let verdict = check(&sound());
        assert_eq!(verdict.violations, vec![]);
        let f = verdict.figures;
        assert_eq!(
            (f.jobs, f.executions, f.duplicates, f.jobs_run_twice),
            (2, 3, 1, 1)
        );
        assert_eq!(
            (f.interrupted, f.fenced_executions, f.max_holders),
            (1, 0, 2)
        );
        assert_eq!((f.max_slot_rows, f.leases_of_ended), (2, 1));
    }

    #[test]
    fn a_lost_job_is_caught() {
        let mut e = sound();
        e.jobs.remove(1);
        assert!(failed(&e).contains("no_job_lost"));
        let mut e = sound();
        e.enqueued.remove(&2);
        assert!(failed(&e).contains("no_job_lost"), "a job nobody enqueued");
        e.in_doubt = 1;
        assert!(
            !failed(&e).contains("no_job_lost"),
            "unless an insert was in doubt"
        );
    }

    #[test]
    fn an_unfinished_job_is_caught() {
        let mut e = sound();
        e.jobs[0].state = "retryable".into();
        assert!(failed(&e).contains("every_job_completed"));
    }

    #[test]
    fn a_second_accepted_completion_is_caught() {
        let mut e = sound();
        e.transitions
            .push(tr(7, 1, ("running", 1), ("completed", 1), 3_100));
        assert!(failed(&e).contains("one_accepted_completion"));
    }

    #[test]
    fn a_late_write_to_a_finished_job_is_caught() {
        let mut e = sound();
        // What a worker ignoring its fencing does to a completed job.
        e.transitions
            .push(tr(7, 2, ("completed", 3), ("completed", 3), 4_100));
        assert_eq!(failed(&e), ["finished_jobs_never_change"].into());
    }

    #[test]
    fn a_completion_without_its_execution_is_caught() {
        let mut e = sound();
        // The fenced first run of job 2 "completes" the rescued job.
        e.transitions[5] = tr(6, 2, ("retryable", 2), ("completed", 2), 2_600);
        e.jobs[1].epoch = 2;
        e.transitions.retain(|t| t.seq != 4);
        e.executions.remove(2);
        let failed = failed(&e);
        assert!(
            failed.contains("completion_backed_by_an_execution"),
            "{failed:?}"
        );
        assert!(
            failed.contains("completion_is_the_current_attempt"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_receipt_run_twice_and_a_job_never_run_are_caught() {
        let mut e = sound();
        e.executions
            .push(run(P1, 9, 1, 1, Hold::KIND, (111, Some(200))));
        assert!(failed(&e).contains("one_execution_per_receipt"));
        let mut e = sound();
        e.executions.remove(0);
        assert!(failed(&e).contains("every_job_executed"));
    }

    #[test]
    fn a_shrinking_epoch_is_caught() {
        let mut e = sound();
        e.transitions
            .push(tr(7, 9, ("available", 4), ("running", 3), 100));
        assert!(failed(&e).contains("epochs_only_grow"));
    }

    #[test]
    fn too_many_holders_at_once_are_caught() {
        let mut e = sound();
        e.permits = 1;
        assert!(failed(&e).contains("semaphore_never_over_capacity"));
        // A killed holder counts until its process died, not forever and
        // not only until its last record.
        let mut e = sound();
        e.executions
            .push(run(P2, 3, 2, 2, Hold::KIND, (400, Some(450))));
        assert!(failed(&e).contains("semaphore_never_over_capacity"));
        let mut e = sound();
        e.executions
            .push(run(P2, 3, 2, 2, Hold::KIND, (600, Some(650))));
        assert!(!failed(&e).contains("semaphore_never_over_capacity"));
    }

    #[test]
    fn a_holder_without_a_live_lease_is_caught() {
        let mut e = sound();
        e.slot_samples[0].held[1].2 = Some(250); // lapsed while P1 ran
        assert_eq!(failed(&e), ["every_holder_has_a_live_lease"].into());
    }

    #[test]
    fn a_dead_process_lease_past_its_ttl_is_caught() {
        let mut e = sound();
        e.leases[0].expires_at = 500 + 3_000 + LEASE_SLACK_MS + 1;
        assert_eq!(failed(&e), ["no_lease_outlives_its_dead_owner"].into());
    }

    #[test]
    fn a_worker_that_never_came_back_or_crashed_is_caught() {
        let mut e = sound();
        e.fault_end = 3_000;
        assert!(failed(&e).contains("workers_reconnect_on_their_own"));
        let mut e = sound();
        e.processes[1].end = End::Died;
        assert!(failed(&e).contains("workers_exit_cleanly"));
    }

    #[test]
    fn recovery_is_measured_from_the_fault_end() {
        // 100/s until 10 s, nothing until 12 s, 100/s again from 12.5 s.
        let mut t: Vec<i64> = (0..1_000).map(|i| i * 10).collect();
        t.extend((0..500).map(|i| 12_500 + i * 10));
        let r = recovery(&t, (5_000, 10_000), (10_000, 12_000));
        assert!((r.baseline_per_s - 100.0).abs() < 1e-9);
        assert_eq!(r.dip_per_s, 0.0);
        // The first window with 80 completions starts at 12.3 s.
        assert_eq!(r.recovered_after_ms, Some(300));
        let never = recovery(&t[..1_000], (5_000, 10_000), (10_000, 12_000));
        assert_eq!(never.recovered_after_ms, None);
    }
}
