//! The chaos suite: several `chaos_worker` processes (real worker pools
//! over Postgres) against one database, while the driver kills them,
//! pauses them, cuts their connections, restarts the server and kills
//! semaphore holders. After each fault a liveness phase with faults off,
//! then the checks of `weir_tests::chaos` against the execution ledger the
//! handlers wrote and the transition audit a trigger wrote.
//!
//! One binary, so the scenarios share the harness's throwaway cluster; they
//! run one at a time (each restarts or floods the server in its own way).
//! Short by default (CI: a few minutes in all); `WEIR_CHAOS_SOAK=1` runs
//! every fault for much longer. Each scenario appends its figures to
//! `target/tmp/chaos-report.md` (see `docs/reliability.md`).
//!
//! Needs the throwaway cluster: with `DATABASE_URL` set, the Postgres
//! restart scenario fails and says why (the harness does not own that
//! server); the others run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use weir::{new_process_id, wall_clock, BackendError, Client, ClientError, InsertOptions};
use weir_pg_harness::{test_database, StopMode, TestDatabase};
use weir_postgres::{PgBackend, PgConfig, SchemaName};
use weir_tests::chaos::{
    check, recovery, world_config, End, Evidence, Execution, Hold, JobRow, LeaseRow, ProcessRecord,
    Recovery, SlotSample, Transition, Verdict, Violation, Work, APP_NAME_LEDGER, APP_NAME_POOL,
    ENV_BROKEN, ENV_LIFETIME, ENV_PROCESS, ENV_URL, ENV_WORKERS, HEARTBEAT_STALE_AFTER,
    HOLD_SEMAPHORE, RECOVERED_FRACTION,
};

/// One scenario at a time: they share the server, and one restarts it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Worker processes per scenario, handlers per process.
const PROCESSES: usize = 3;
const WORKERS: u32 = 8;
/// The driver keeps about this many jobs available, so the workers are
/// always busy and throughput measures them, not the driver.
const BACKLOG: i64 = 150;
/// The semaphore size of the holder scenario.
const PERMITS: u16 = 2;

fn soak() -> bool {
    std::env::var("WEIR_CHAOS_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    wall_clock().0
}

async fn sleep_ms(n: i64) {
    tokio::time::sleep(Duration::from_millis(u64::try_from(n).unwrap_or(0))).await;
}

fn pg_config() -> PgConfig {
    PgConfig {
        world: world_config(),
        ..PgConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Worker processes

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    process: i64,
    os_pid: u32,
    started_at: i64,
    lines: Arc<Mutex<Vec<String>>>,
    end: Option<(i64, End)>,
}

impl Worker {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.os_pid).expect("a pid fits in i32")).expect("pid > 0")
    }

    fn signal(&self, signal: Signal) {
        kill_process(self.pid(), signal).expect("the worker can be signalled");
    }

    fn report(&self) -> Option<serde_json::Value> {
        let lines = self.lines.lock().expect("no panic while holding it");
        lines
            .iter()
            .find_map(|l| l.strip_prefix("report "))
            .and_then(|json| serde_json::from_str(json).ok())
    }

    fn is_ready(&self) -> bool {
        let lines = self.lines.lock().expect("no panic while holding it");
        lines.iter().any(|l| l.starts_with("ready "))
    }
}

struct Fleet {
    url: String,
    logs: PathBuf,
    /// Deliberate bugs for every worker (`WEIR_CHAOS_BROKEN`), or empty.
    broken: &'static str,
    workers: Vec<Worker>,
}

impl Fleet {
    fn new(url: &str, scenario: &str, broken: &'static str) -> Fleet {
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos")
            .join(scenario);
        std::fs::create_dir_all(&logs).expect("the log directory can be created");
        Fleet {
            url: url.to_string(),
            logs,
            broken,
            workers: Vec::new(),
        }
    }

    /// Starts one more worker process; its index.
    fn spawn(&mut self) -> usize {
        let process = i64::try_from(new_process_id().0).expect("process ids are 63 bits");
        let log = File::create(self.logs.join(format!("{process}.log"))).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chaos_worker"));
        command
            .env(ENV_URL, &self.url)
            .env(ENV_PROCESS, process.to_string())
            .env(ENV_WORKERS, WORKERS.to_string())
            .env(ENV_LIFETIME, "1200")
            .env(
                "RUST_LOG",
                std::env::var("WEIR_CHAOS_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        if !self.broken.is_empty() {
            command.env(ENV_BROKEN, self.broken);
        }
        let started_at = now_ms();
        let mut child = command.spawn().expect("the chaos worker starts");
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("no panic while holding it").push(line);
            }
        });
        self.workers.push(Worker {
            os_pid: child.id(),
            stdin: child.stdin.take(),
            child,
            process,
            started_at,
            lines,
            end: None,
        });
        self.workers.len() - 1
    }

    fn live(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|i| self.workers[*i].end.is_none())
            .collect()
    }

    fn by_process(&self, process: i64) -> Option<usize> {
        self.live()
            .into_iter()
            .find(|i| self.workers[*i].process == process)
    }

    /// SIGKILL; the end is stamped just before the signal.
    fn kill(&mut self, i: usize) {
        let worker = &mut self.workers[i];
        worker.end = Some((now_ms(), End::Killed));
        worker.signal(Signal::KILL);
        let _ = worker.child.wait();
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = now_ms() + ms(within);
        while !self.live().iter().all(|i| self.workers[*i].is_ready()) {
            assert!(now_ms() < deadline, "workers not ready within {within:?}");
            sleep_ms(20).await;
        }
    }

    /// SIGTERM to every live worker; each must exit by itself with a
    /// report. One that does not is killed and recorded as unclean; one
    /// that died before being told is recorded as having died.
    async fn shutdown(&mut self) {
        let live = self.live();
        for &i in &live {
            let worker = &mut self.workers[i];
            if let Ok(Some(_)) = worker.child.try_wait() {
                worker.end = Some((now_ms(), End::Died));
                continue;
            }
            worker.signal(Signal::CONT);
            worker.signal(Signal::TERM);
        }
        let deadline = now_ms() + 30_000;
        for i in live {
            let worker = &mut self.workers[i];
            if worker.end.is_some() {
                continue;
            }
            let status = loop {
                match worker.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    _ if now_ms() > deadline => break None,
                    _ => sleep_ms(20).await,
                }
            };
            let ended_at = now_ms();
            if status.is_none() {
                worker.signal(Signal::KILL);
                let _ = worker.child.wait();
            }
            // The reader thread may still be reading the last line.
            sleep_ms(50).await;
            let clean = status.is_some_and(|s| s.success()) && worker.report().is_some();
            worker.end = Some((ended_at, End::Exited { clean }));
        }
    }

    fn records(&self) -> Vec<ProcessRecord> {
        self.workers
            .iter()
            .map(|w| {
                let (ended_at, end) = w.end.expect("every worker has ended");
                ProcessRecord {
                    process: w.process,
                    os_pid: w.os_pid,
                    started_at: w.started_at,
                    ended_at,
                    end,
                }
            })
            .collect()
    }

    /// The sum of one counter over the reports.
    fn sum(&self, counter: &str) -> u64 {
        let reports = self.workers.iter().filter_map(Worker::report);
        reports.filter_map(|r| r[counter].as_u64()).sum()
    }
}

impl Drop for Fleet {
    /// Whatever happened, no worker outlives the scenario.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if worker.end.is_none() {
                let _ = kill_process(worker.pid(), Signal::CONT);
                let _ = worker.child.kill();
                let _ = worker.child.wait();
            }
            drop(worker.stdin.take());
        }
    }
}

// ---------------------------------------------------------------------------
// The driver's side: enqueueing, sampling, measuring

/// What the driver's background tasks share.
#[derive(Default)]
struct Shared {
    enqueued: Mutex<BTreeSet<i64>>,
    in_doubt: AtomicUsize,
    topping_up: AtomicBool,
    sampling: AtomicBool,
    samples: Mutex<Vec<SlotSample>>,
}

/// Keeps about [`BACKLOG`] jobs available while `topping_up` is on.
async fn top_up(shared: Arc<Shared>, client: Client<PgBackend>, admin: PgPool) {
    let mut n: u64 = 0;
    loop {
        sleep_ms(100).await;
        if !shared.topping_up.load(Ordering::SeqCst) {
            continue;
        }
        let sql = "SELECT count(*) FROM weir.jobs WHERE state = 'available'";
        let Ok(available) = sqlx::query_scalar::<_, i64>(sql).fetch_one(&admin).await else {
            continue; // the server is down: try again later
        };
        if available >= BACKLOG {
            continue;
        }
        let want = usize::try_from(BACKLOG - available + 50).unwrap_or(0);
        let jobs: Vec<Work> = (0..want)
            .map(|i| {
                let n = n + i as u64;
                Work {
                    n,
                    work_ms: 50 + (n * 37) % 100,
                }
            })
            .collect();
        n += want as u64;
        match client
            .insert_bulk(jobs.iter().map(|j| (j, InsertOptions::default())))
            .await
        {
            Ok(inserted) => {
                let mut enqueued = shared.enqueued.lock().expect("no panic while holding it");
                enqueued.extend(inserted.iter().map(|e| e.id.0));
            }
            // Maybe applied: the checks allow for that many jobs nobody
            // saw acknowledged.
            Err(ClientError::Backend(BackendError::Lost(_))) => {
                shared.in_doubt.fetch_add(want, Ordering::SeqCst);
            }
            Err(_) => {} // certainly not applied
        }
    }
}

/// Samples the semaphore's slot rows while `sampling` is on.
async fn sample_slots(shared: Arc<Shared>, admin: PgPool) {
    // The statement's start, and a clock read after its snapshot, bracket
    // the snapshot (see `SlotSample`).
    let sql = "SELECT weir.now_ms(), s.slot, s.holder, s.lease_expires_at, \
               floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint + 1 \
               FROM (SELECT 1) AS one LEFT JOIN weir.semaphore_slots AS s \
               ON s.name = $1 AND s.holder IS NOT NULL";
    loop {
        sleep_ms(50).await;
        if !shared.sampling.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(rows) = sqlx::query(sql)
            .bind(HOLD_SEMAPHORE)
            .fetch_all(&admin)
            .await
        else {
            continue;
        };
        let Some((at_ms, until_ms)) = rows.first().map(|r| (r.get(0), r.get(4))) else {
            continue;
        };
        let held = rows
            .iter()
            .filter_map(|r| {
                let slot: Option<i32> = r.get(1);
                let holder: Option<i64> = r.get(2);
                Some((slot?, holder?, r.get::<Option<i64>, _>(3)))
            })
            .collect();
        let sample = SlotSample {
            at_ms,
            until_ms,
            held,
        };
        shared.samples.lock().expect("no panic").push(sample);
    }
}

/// Accepted completions (the audit's transitions into `completed`) in
/// `[from, to)`; `None` while the server does not answer.
async fn completions(admin: &PgPool, from: i64, to: i64) -> Option<i64> {
    let sql = "SELECT count(*) FROM chaos.transitions WHERE new_state = 'completed' \
               AND old_state <> 'completed' AND at_ms >= $1 AND at_ms < $2";
    let query = sqlx::query_scalar(sql).bind(from).bind(to);
    query.fetch_one(admin).await.ok()
}

// ---------------------------------------------------------------------------
// One scenario

/// When the fault was on, and what it did.
struct FaultWindow {
    start: i64,
    end: i64,
    notes: Vec<String>,
}

struct Scenario {
    name: &'static str,
    db: TestDatabase,
    admin: PgPool,
    shared: Arc<Shared>,
    fleet: Fleet,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a scenario found.
struct Findings {
    verdict: Verdict,
    recovery: Recovery,
    /// The longest time without an accepted completion, from the fault's
    /// start to the end of the run.
    gap_ms: i64,
    /// From the fault's end to the first accepted completion after it.
    first_after_ms: Option<i64>,
    /// From the fault's end until every live worker listened for wake-ups
    /// again.
    listeners_back_ms: Option<i64>,
    fleet_fenced: u64,
    fleet_stopped: u64,
    fleet_lost: u64,
    fleet_limited: u64,
    executions: Vec<Execution>,
    transitions: Vec<Transition>,
    /// Each cleanly exited worker's report, by process.
    reports: BTreeMap<i64, serde_json::Value>,
}

impl Scenario {
    async fn new(name: &'static str, broken: &'static str) -> Scenario {
        let db = test_database().await;
        let app = PgBackend::connect(db.url_as_app_user(), 2, pg_config())
            .await
            .expect("the app role connects");
        app.migrate().await.expect("the schema migrates");
        app.pool().close().await;
        // The driver is the superuser: the connection cuts aimed at the
        // workers' role never hit it.
        let admin = PgPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(Duration::from_secs(5))
            .connect(db.url())
            .await
            .expect("the superuser connects");
        let setup = weir_tests::chaos::SETUP_SQL.replace("{s}", &SchemaName::default().quoted());
        sqlx::raw_sql(&setup)
            .execute(&admin)
            .await
            .expect("the ledger and the audit are created");
        let backend = PgBackend::new(admin.clone(), pg_config()).expect("a valid config");
        let shared = Arc::new(Shared::default());
        let tasks = vec![
            tokio::spawn(top_up(
                Arc::clone(&shared),
                Client::new(Arc::new(backend)),
                admin.clone(),
            )),
            tokio::spawn(sample_slots(Arc::clone(&shared), admin.clone())),
        ];
        let fleet = Fleet::new(db.url_as_app_user(), name, broken);
        Scenario {
            name,
            db,
            admin,
            shared,
            fleet,
            tasks,
        }
    }

    /// Starts the workers, keeps them busy, and returns the baseline
    /// window once throughput has settled.
    async fn warm_up(&mut self) -> (i64, i64) {
        for _ in 0..PROCESSES {
            self.fleet.spawn();
        }
        self.shared.topping_up.store(true, Ordering::SeqCst);
        self.fleet.wait_ready(Duration::from_secs(30)).await;
        let deadline = now_ms() + 60_000;
        while completions(&self.admin, 0, i64::MAX).await.unwrap_or(0) == 0 {
            assert!(
                now_ms() < deadline,
                "{}: no job completed in 60 s",
                self.name
            );
            sleep_ms(50).await;
        }
        sleep_ms(2_000).await;
        let from = now_ms();
        sleep_ms(if soak() { 10_000 } else { 4_000 }).await;
        (from, now_ms())
    }

    /// Waits until a one-second window after the fault reaches the
    /// recovered fraction of the baseline (at most 60 s).
    async fn wait_recovered(&self, baseline: (i64, i64), fault_end: i64) {
        let base = completions(&self.admin, baseline.0, baseline.1)
            .await
            .expect("the server answers after warm-up") as f64
            * 1_000.0
            / (baseline.1 - baseline.0) as f64;
        let deadline = fault_end + 60_000;
        loop {
            sleep_ms(250).await;
            let t = now_ms();
            if t - 1_000 >= fault_end {
                let recent = completions(&self.admin, t - 1_000, t).await.unwrap_or(0);
                if recent as f64 >= RECOVERED_FRACTION * base {
                    return;
                }
            }
            if t > deadline {
                return; // the checks below report it
            }
        }
    }

    /// Faults off: every job must finish (within two minutes). When the
    /// backlog stopped being topped up.
    async fn liveness(&self) -> i64 {
        self.shared.topping_up.store(false, Ordering::SeqCst);
        let drained_from = now_ms();
        sleep_ms(200).await; // an insert in flight lands
        let sql = "SELECT count(*) FROM weir.jobs \
                   WHERE state NOT IN ('completed', 'failed', 'cancelled')";
        let deadline = now_ms() + 120_000;
        loop {
            let left: Option<i64> = sqlx::query_scalar(sql).fetch_one(&self.admin).await.ok();
            if left == Some(0) {
                return drained_from;
            }
            if now_ms() > deadline {
                let states: Vec<(String, i64)> =
                    sqlx::query_as("SELECT state, count(*) FROM weir.jobs GROUP BY state")
                        .fetch_all(&self.admin)
                        .await
                        .unwrap_or_default();
                panic!(
                    "{}: jobs left unfinished after 120 s: {states:?}",
                    self.name
                );
            }
            sleep_ms(100).await;
        }
    }

    async fn evidence(&self, fault_end: i64) -> Evidence {
        let read = |sql: &'static str| async move {
            sqlx::query(sql)
                .fetch_all(&self.admin)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        };
        let jobs = read("SELECT id, kind, state, epoch FROM weir.jobs").await;
        let transitions = read(
            "SELECT seq, job, old_state, new_state, old_epoch, new_epoch, at_ms \
             FROM chaos.transitions ORDER BY seq",
        )
        .await;
        let executions = read(
            "SELECT process, seq, job, epoch, kind, started_at, finished_at FROM chaos.executions",
        )
        .await;
        let leases = read("SELECT queue, slot, owner, expires_at FROM weir.claimer_leases").await;
        Evidence {
            enqueued: self.shared.enqueued.lock().expect("no panic").clone(),
            in_doubt: self.shared.in_doubt.load(Ordering::SeqCst),
            jobs: jobs.iter().map(job_row).collect(),
            transitions: transitions.iter().map(transition).collect(),
            executions: executions.iter().map(execution).collect(),
            leases: leases.iter().map(lease_row).collect(),
            processes: self.fleet.records(),
            slot_samples: self.shared.samples.lock().expect("no panic").clone(),
            permits: PERMITS,
            fault_end,
        }
    }

    /// Waits (at most 15 s) until every live worker's wake-up listener is
    /// connected and listening again: the `LISTEN` sessions of the pool's
    /// application name. Its time from `since`.
    async fn wait_listeners(&self, since: i64) -> Option<i64> {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = $1 AND query LIKE 'LISTEN%'";
        loop {
            let query = sqlx::query_scalar::<_, i64>(sql).bind(APP_NAME_POOL);
            let listening = query.fetch_one(&self.admin).await.unwrap_or(0);
            if listening >= self.fleet.live().len() as i64 {
                return Some(now_ms() - since);
            }
            if now_ms() > since + 15_000 {
                return None;
            }
            sleep_ms(50).await;
        }
    }

    /// Live workers whose presence has lapsed.
    async fn absent(&self) -> Vec<i64> {
        let sql = "SELECT process FROM weir.workers WHERE expires_at > weir.now_ms()";
        let present: BTreeSet<i64> = sqlx::query_scalar(sql)
            .fetch_all(&self.admin)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let live = self.fleet.live().into_iter();
        let live = live.map(|i| self.fleet.workers[i].process);
        live.filter(|p| !present.contains(p)).collect()
    }

    /// Liveness, shutdown, evidence, checks; prints and records the
    /// figures.
    async fn finish(mut self, baseline: (i64, i64), fault: &FaultWindow) -> Findings {
        let (listeners_back_ms, ()) = tokio::join!(
            self.wait_listeners(fault.end),
            self.wait_recovered(baseline, fault.end)
        );
        let drained_from = self.liveness().await;
        let absent = self.absent().await;
        self.shared.sampling.store(false, Ordering::SeqCst);
        self.fleet.shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
        let evidence = self.evidence(fault.end).await;
        let mut verdict = check(&evidence);
        if listeners_back_ms.is_none() {
            verdict.violations.push(Violation {
                check: "listeners_resubscribe",
                detail: "a live worker did not listen for wake-ups within 15 s of the fault".into(),
            });
        }
        for process in absent {
            verdict.violations.push(Violation {
                check: "presence_recovers",
                detail: format!("live process {process} is not announced"),
            });
        }
        let completed = completion_times(&evidence.transitions);
        let (gap_ms, first_after_ms) = gap_and_first(&completed, fault, drained_from);
        let findings = Findings {
            recovery: recovery(&completed, baseline, (fault.start, fault.end)),
            gap_ms,
            first_after_ms,
            listeners_back_ms,
            verdict,
            fleet_fenced: self.fleet.sum("fenced"),
            fleet_stopped: self.fleet.sum("stopped"),
            fleet_lost: self.fleet.sum("lost"),
            fleet_limited: self.fleet.sum("limited"),
            executions: evidence.executions,
            transitions: evidence.transitions,
            reports: self
                .fleet
                .workers
                .iter()
                .filter_map(|w| Some((w.process, w.report()?)))
                .collect(),
        };
        self.record(&findings, fault);
        self.admin.close().await;
        drop(self.db);
        findings
    }

    fn record(&self, f: &Findings, fault: &FaultWindow) {
        let v = &f.verdict.figures;
        let r = &f.recovery;
        let recovered = r
            .recovered_after_ms
            .map_or("not recovered".to_string(), |ms| format!("{ms} ms"));
        let line = format!(
            "| {} | {} | {:.0}/s | {:.0}/s | {recovered} | {} | {} ms | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            self.name,
            fault.notes.join("; "),
            r.baseline_per_s,
            r.dip_per_s,
            f.first_after_ms.map_or("none".into(), |ms| format!("{ms} ms")),
            f.gap_ms,
            f.listeners_back_ms.map_or("never".into(), |ms| format!("{ms} ms")),
            v.jobs,
            v.executions,
            v.duplicates,
            v.interrupted,
            v.fenced_executions,
            f.fleet_fenced,
            f.fleet_stopped,
            f.fleet_lost,
            v.max_holders,
            f.verdict.violations.len(),
        );
        eprintln!("chaos {}: {line}", self.name);
        eprintln!(
            "chaos {}: {} claimer lease rows still name an ended process (all within TTL); \
             {} in-doubt inserts",
            self.name,
            v.leases_of_ended,
            self.shared.in_doubt.load(Ordering::SeqCst)
        );
        for violation in &f.verdict.violations {
            eprintln!("  VIOLATION {}: {}", violation.check, violation.detail);
        }
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-report.md");
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&path) {
            let mode = if soak() { "soak" } else { "ci" };
            let _ = writeln!(file, "{line} <!-- {mode}, {} -->", now_ms());
        }
    }
}

fn job_row(r: &PgRow) -> JobRow {
    JobRow {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        epoch: r.get(3),
    }
}

fn transition(r: &PgRow) -> Transition {
    Transition {
        seq: r.get(0),
        job: r.get(1),
        old_state: r.get(2),
        new_state: r.get(3),
        old_epoch: r.get(4),
        new_epoch: r.get(5),
        at_ms: r.get(6),
    }
}

fn execution(r: &PgRow) -> Execution {
    Execution {
        process: r.get(0),
        seq: r.get(1),
        job: r.get(2),
        epoch: r.get(3),
        kind: r.get(4),
        started_at: r.get(5),
        finished_at: r.get(6),
    }
}

fn lease_row(r: &PgRow) -> LeaseRow {
    LeaseRow {
        queue: r.get(0),
        slot: r.get(1),
        owner: r.get(2),
        expires_at: r.get(3),
    }
}

/// Accepted completion times, in order.
fn completion_times(transitions: &[Transition]) -> Vec<i64> {
    let mut completed: Vec<i64> = transitions
        .iter()
        .filter(|t| t.new_state == "completed" && t.old_state != "completed")
        .map(|t| t.at_ms)
        .collect();
    completed.sort_unstable();
    completed
}

/// The longest time without a completion from the fault's start until the
/// backlog stopped being topped up (the drain's tail, the last holders one
/// after another, is not an outage); and the first completion after the
/// fault's end.
fn gap_and_first(completed: &[i64], fault: &FaultWindow, drained_from: i64) -> (i64, Option<i64>) {
    let during: Vec<i64> = std::iter::once(fault.start)
        .chain(completed.iter().copied())
        .filter(|t| (fault.start..=drained_from).contains(t))
        .chain(std::iter::once(drained_from))
        .collect();
    let gap_ms = during.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let first_after_ms = completed
        .iter()
        .find(|t| **t >= fault.end)
        .map(|t| t - fault.end);
    (gap_ms, first_after_ms)
}

/// Fails the test with every violation listed, and the recovery.
fn assert_kept(f: &Findings, name: &str) {
    let violations: Vec<String> = f
        .verdict
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.check, v.detail))
        .collect();
    assert!(
        violations.is_empty(),
        "{name}: promises broken:\n  {}",
        violations.join("\n  ")
    );
    assert!(
        f.recovery.recovered_after_ms.is_some(),
        "{name}: throughput never returned to {}% of its baseline of {:.0}/s (lowest {:.0}/s)",
        RECOVERED_FRACTION * 100.0,
        f.recovery.baseline_per_s,
        f.recovery.dip_per_s
    );
}

// ---------------------------------------------------------------------------
// The faults

/// Executions of `process` that had started and not finished at `at`.
async fn running_in(admin: &PgPool, process: i64, at: i64) -> i64 {
    let sql = "SELECT count(*) FROM chaos.executions WHERE process = $1 \
               AND started_at <= $2 AND finished_at IS NULL";
    let query = sqlx::query_scalar(sql).bind(process).bind(at);
    query.fetch_one(admin).await.unwrap_or(0)
}

/// SIGKILL a worker mid-batch, restart it, again and again.
async fn kill_and_restart(s: &mut Scenario) -> FaultWindow {
    let rounds = if soak() { 30 } else { 4 };
    let (start, mut mid_batch) = (now_ms(), 0);
    for round in 0..rounds {
        if round > 0 {
            sleep_ms(1_000 + (round as i64 * 137) % 500).await;
        }
        let live = s.fleet.live();
        let victim = live[round % live.len()];
        let process = s.fleet.workers[victim].process;
        // Only a worker with handlers running is "in the middle of a batch".
        let deadline = now_ms() + 5_000;
        while running_in(&s.admin, process, now_ms()).await == 0 && now_ms() < deadline {
            sleep_ms(10).await;
        }
        if running_in(&s.admin, process, now_ms()).await > 0 {
            mid_batch += 1;
        }
        s.fleet.kill(victim);
        s.fleet.spawn();
    }
    assert!(mid_batch > 0, "no kill hit a worker with handlers running");
    FaultWindow {
        start,
        end: now_ms(),
        notes: vec![format!("{rounds} kills ({mid_batch} mid-batch)")],
    }
}

/// The current maintenance leader among our workers, if any.
async fn leader(s: &Scenario) -> Option<usize> {
    let sql = "SELECT holder FROM weir.leader WHERE expires_at > weir.now_ms()";
    let holder: Option<Option<i64>> = sqlx::query_scalar(sql)
        .fetch_optional(&s.admin)
        .await
        .ok()
        .flatten();
    s.fleet.by_process(holder.flatten()?)
}

/// SIGSTOP a worker (the leader, when it is one of ours) for longer than
/// the heartbeat staleness limit, then SIGCONT it.
async fn stop_and_continue(s: &mut Scenario) -> (FaultWindow, Vec<(i64, i64, i64)>) {
    let rounds = if soak() { 3 } else { 1 };
    let stop_for = ms(Duration::from_millis(HEARTBEAT_STALE_AFTER.0)) + 3_000;
    let (start, mut stops, mut leaders) = (now_ms(), Vec::new(), 0);
    for round in 0..rounds {
        if round > 0 {
            sleep_ms(2_000).await;
        }
        let victim = match leader(s).await {
            Some(i) => {
                leaders += 1;
                i
            }
            None => s.fleet.live()[round % PROCESSES],
        };
        // Paused with handlers running, so it has attempts to lose.
        let process = s.fleet.workers[victim].process;
        let deadline = now_ms() + 5_000;
        while running_in(&s.admin, process, now_ms()).await == 0 && now_ms() < deadline {
            sleep_ms(10).await;
        }
        let worker = &s.fleet.workers[victim];
        let stopped_at = now_ms();
        worker.signal(Signal::STOP);
        sleep_ms(stop_for).await;
        let continued_at = now_ms();
        worker.signal(Signal::CONT);
        stops.push((worker.process, stopped_at, continued_at));
    }
    let window = FaultWindow {
        start,
        end: stops.last().map_or(start, |s| s.2),
        notes: vec![format!(
            "{rounds} × SIGSTOP {stop_for} ms ({leaders} of the leader)"
        )],
    };
    (window, stops)
}

/// `pg_terminate_backend` on every connection of the workers' role, twice
/// a second.
async fn terminate_connections(s: &mut Scenario) -> FaultWindow {
    let lasting = if soak() { 60_000 } else { 6_000 };
    let sql = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE usename = 'weir_app' AND datname = current_database() \
               AND application_name IN ($1, $2)";
    // Each round first waits (up to 100 ms) for a worker session with a
    // statement in flight and cuts it, so the cuts reliably lose commands
    // (a session cut while idle loses none: its next command finds the
    // connection gone and is retried as refused), then cuts every worker
    // session.
    let active = format!("{sql} AND state = 'active'");
    let (start, mut terminated, mut rounds) = (now_ms(), 0i64, 0);
    while now_ms() < start + lasting {
        for _ in 0..20 {
            let cut = sqlx::query_scalar::<_, i64>(&active)
                .bind(APP_NAME_POOL)
                .bind(APP_NAME_LEDGER)
                .fetch_one(&s.admin)
                .await
                .unwrap_or(0);
            terminated += cut;
            if cut > 0 {
                break;
            }
            sleep_ms(5).await;
        }
        let query = sqlx::query_scalar::<_, i64>(sql)
            .bind(APP_NAME_POOL)
            .bind(APP_NAME_LEDGER);
        terminated += query.fetch_one(&s.admin).await.unwrap_or(0);
        rounds += 1;
        sleep_ms(500).await;
    }
    assert!(terminated > 0, "no worker connection was terminated");
    FaultWindow {
        start,
        end: now_ms(),
        notes: vec![format!(
            "{rounds} rounds over {} s, {terminated} connections terminated",
            lasting / 1_000
        )],
    }
}

/// Stops the server (fast shutdown), keeps it down for longer than the
/// heartbeat staleness limit (so the attempts running across the outage
/// are overdue when it ends, and their completions race the rescue),
/// starts it.
async fn restart_postgres(s: &mut Scenario) -> FaultWindow {
    let rounds = if soak() { 5 } else { 1 };
    let cluster = s.db.cluster();
    let (start, mut down_ms) = (now_ms(), Vec::new());
    for round in 0..rounds {
        if round > 0 {
            sleep_ms(5_000).await;
        }
        let stopped = now_ms();
        tokio::task::spawn_blocking(move || cluster.stop_server(StopMode::Fast))
            .await
            .expect("no panic")
            .unwrap_or_else(|e| panic!("the Postgres restart scenario cannot run: {e}"));
        sleep_ms(ms(Duration::from_millis(HEARTBEAT_STALE_AFTER.0)) + 1_000).await;
        tokio::task::spawn_blocking(move || cluster.start_server())
            .await
            .expect("no panic")
            .unwrap_or_else(|e| panic!("Postgres did not start again: {e}"));
        down_ms.push(now_ms() - stopped);
    }
    FaultWindow {
        start,
        end: now_ms(),
        notes: vec![format!("{rounds} fast restart(s), down {down_ms:?} ms")],
    }
}

/// Kills processes while they hold a slot of the N-slot semaphore and
/// other holders wait; restarts each.
async fn kill_holders(s: &mut Scenario) -> FaultWindow {
    let (kills, holds) = if soak() { (20, 40) } else { (4, 8) };
    enqueue_holds(s, holds).await;
    let (start, mut killed) = (now_ms(), 0);
    for round in 0..kills {
        if round > 0 {
            sleep_ms(1_000).await;
        }
        let deadline = now_ms() + 15_000;
        let victim = loop {
            if let Some(i) = holder(s).await {
                break Some(i);
            }
            if now_ms() > deadline {
                break None;
            }
            sleep_ms(20).await;
        };
        let Some(victim) = victim else { break };
        sleep_ms(300).await; // in the middle of its hold
        s.fleet.kill(victim);
        killed += 1;
        s.fleet.spawn();
    }
    assert!(killed > 0, "no semaphore holder was found to kill");
    FaultWindow {
        start,
        end: now_ms(),
        notes: vec![format!(
            "{killed} holders killed, N = {PERMITS}, {holds} holds"
        )],
    }
}

/// Enqueues `holds` [`Hold`] jobs (3 s each, N = [`PERMITS`]) and starts
/// sampling the semaphore's slots.
async fn enqueue_holds(s: &Scenario, holds: u64) {
    let client = Client::new(Arc::new(
        PgBackend::new(s.admin.clone(), pg_config()).expect("a valid config"),
    ));
    let jobs: Vec<Hold> = (0..holds)
        .map(|n| Hold {
            n,
            hold_ms: 3_000,
            permits: PERMITS,
        })
        .collect();
    let inserted = client
        .insert_bulk(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await
        .expect("the holders are enqueued");
    let ids = inserted.iter().map(|e| e.id.0);
    s.shared.enqueued.lock().expect("no panic").extend(ids);
    s.shared.sampling.store(true, Ordering::SeqCst);
}

/// A live worker holding a slot of the semaphore right now.
async fn holder(s: &Scenario) -> Option<usize> {
    let sql = "SELECT holder FROM weir.semaphore_slots WHERE name = $1 \
               AND holder IS NOT NULL AND lease_expires_at > weir.now_ms() ORDER BY slot";
    let holders: Vec<i64> = sqlx::query_scalar(sql)
        .bind(HOLD_SEMAPHORE)
        .fetch_all(&s.admin)
        .await
        .unwrap_or_default();
    holders.into_iter().find_map(|p| s.fleet.by_process(p))
}

// ---------------------------------------------------------------------------
// The scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_batch_and_restarted_lose_no_job() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("sigkill", "").await;
    let baseline = s.warm_up().await;
    let fault = kill_and_restart(&mut s).await;
    let f = s.finish(baseline, &fault).await;
    assert_kept(&f, "sigkill");
    assert!(
        f.verdict.figures.interrupted > 0,
        "a kill interrupted a handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_heartbeat_is_fenced_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("sigstop", "").await;
    let baseline = s.warm_up().await;
    let (fault, stops) = stop_and_continue(&mut s).await;
    let f = s.finish(baseline, &fault).await;
    assert_kept(&f, "sigstop");
    let (frozen, late) = frozen_executions(&f, &stops);
    let rescued = rescued_from(&f, &stops);
    let count = |counter: &str| -> u64 {
        let reports = stops.iter().filter_map(|(p, ..)| f.reports.get(p));
        reports.filter_map(|r| r[counter].as_u64()).sum()
    };
    let (fenced, discarded) = (count("fenced"), count("stopped"));
    eprintln!(
        "chaos sigstop: {frozen} executions frozen, {late} of them stamped their finish after SIGCONT, \
         {rescued} attempts rescued from the paused worker; it reported {fenced} writes refused \
         by epoch and {discarded} results discarded"
    );
    assert!(
        fenced > 0,
        "the paused worker's late writes were refused by epoch"
    );
    assert!(frozen > 0, "the paused worker had handlers running");
    assert!(rescued > 0, "the paused worker's attempts were rescued");
    assert!(
        f.verdict.figures.fenced_executions > 0,
        "a frozen execution finished under an epoch storage never completed"
    );
}

/// Executions running in a paused worker when it stopped, and how many of
/// them recorded their finish after it continued (late writes).
fn frozen_executions(f: &Findings, stops: &[(i64, i64, i64)]) -> (usize, usize) {
    let frozen: Vec<&Execution> = f
        .executions
        .iter()
        .filter(|x| {
            stops.iter().any(|(p, stop, cont)| {
                x.process == *p && x.started_at < *stop && x.finished_at.is_none_or(|t| t >= *cont)
            })
        })
        .collect();
    let late = frozen.iter().filter(|x| x.finished_at.is_some()).count();
    (frozen.len(), late)
}

/// Attempts of the paused worker that storage took back while it slept.
fn rescued_from(f: &Findings, stops: &[(i64, i64, i64)]) -> usize {
    let frozen: BTreeMap<(i64, i64), i64> = f
        .executions
        .iter()
        .filter(|x| stops.iter().any(|(p, ..)| x.process == *p))
        .map(|x| ((x.job, x.epoch), x.process))
        .collect();
    f.transitions
        .iter()
        .filter(|t| t.old_state == "running" && t.new_epoch > t.old_epoch)
        .filter(|t| frozen.contains_key(&(t.job, t.old_epoch)))
        .filter(|t| {
            stops
                .iter()
                .any(|(_, stop, cont)| *stop <= t.at_ms && t.at_ms <= *cont)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_whose_connections_are_terminated_reconnect_on_their_own() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("terminate", "").await;
    let baseline = s.warm_up().await;
    let fault = terminate_connections(&mut s).await;
    let f = s.finish(baseline, &fault).await;
    assert_kept(&f, "terminate");
    assert!(
        f.fleet_lost > 0,
        "the cuts lost commands, which were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ride_out_a_postgres_restart() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("pg-restart", "").await;
    // Say so at once rather than after the warm-up.
    assert!(
        s.db.cluster().is_throwaway(),
        "the Postgres restart scenario needs the harness's throwaway cluster: it cannot stop \
         the server named by DATABASE_URL. Unset DATABASE_URL to run it."
    );
    let baseline = s.warm_up().await;
    let fault = restart_postgres(&mut s).await;
    let f = s.finish(baseline, &fault).await;
    assert_kept(&f, "pg-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_semaphore_holders_never_let_more_than_n_hold() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("holders", "").await;
    let baseline = s.warm_up().await;
    let fault = kill_holders(&mut s).await;
    let f = s.finish(baseline, &fault).await;
    assert_kept(&f, "holders");
    let figures = &f.verdict.figures;
    assert!(figures.max_holders >= 1 && figures.slot_samples > 0);
    assert!(f.fleet_limited > 0, "holders waited for a slot");
    eprintln!(
        "chaos holders: max {} holders at once (N = {PERMITS}), {} slot samples, at most {} live slot rows, {} misses",
        figures.max_holders, figures.slot_samples, figures.max_slot_rows, f.fleet_limited
    );
}

/// The checks can fail. The same pause, with workers that complete their
/// jobs by raw SQL without the epoch guard and never listen for wake-ups,
/// and with storage that refuses their presence, must break the fencing
/// checks, the listener check and the presence check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_ignore_fencing_or_stop_listening_are_caught() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("broken", "ignore-fencing,no-wakeups").await;
    let baseline = s.warm_up().await;
    let (fault, _) = stop_and_continue(&mut s).await;
    let refuse = "REVOKE INSERT, UPDATE, DELETE ON weir.workers FROM weir_app; \
                  DELETE FROM weir.workers";
    sqlx::raw_sql(refuse)
        .execute(&s.admin)
        .await
        .expect("presence can be refused");
    let f = s.finish(baseline, &fault).await;
    let failed = f.verdict.failed_checks();
    let fencing: BTreeSet<&str> = [
        "finished_jobs_never_change",
        "one_accepted_completion",
        "completion_is_the_current_attempt",
        "completion_backed_by_an_execution",
    ]
    .into();
    assert!(
        failed.intersection(&fencing).count() > 0,
        "the late raw completions went unnoticed; failed checks: {failed:?}"
    );
    assert!(failed.contains("listeners_resubscribe"), "{failed:?}");
    assert!(failed.contains("presence_recovers"), "{failed:?}");
}

/// Not a promise but a limit of leases, shown: a holder paused past its
/// slot lease is no longer a holder for storage, which gives its slot to a
/// waiter, yet it resumes as if it still held it until its next renewal
/// is refused. The checks see the overlap (`docs/reliability.md`). Run on
/// demand: `cargo test -p weir-tests --test chaos -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "demonstrates a known limit of lease-held slots; run on demand"]
async fn a_holder_paused_past_its_slot_lease_overlaps_its_successor() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("paused-holder", "").await;
    let baseline = s.warm_up().await;
    enqueue_holds(&s, 10).await;
    let start = now_ms();
    let victim = loop {
        if let Some(i) = holder(&s).await {
            break i;
        }
        assert!(now_ms() < start + 15_000, "no holder to pause");
        sleep_ms(20).await;
    };
    sleep_ms(300).await;
    let worker = &s.fleet.workers[victim];
    worker.signal(Signal::STOP);
    sleep_ms(weir_tests::chaos::SLOT_LEASE_TTL.0 as i64 + 2_500).await;
    worker.signal(Signal::CONT);
    let fault = FaultWindow {
        start,
        end: now_ms(),
        notes: vec!["1 holder paused past its slot lease".into()],
    };
    let f = s.finish(baseline, &fault).await;
    let failed = f.verdict.failed_checks();
    assert!(
        failed.contains("every_holder_has_a_live_lease"),
        "the paused holder's lapsed lease went unseen: {failed:?}"
    );
}
