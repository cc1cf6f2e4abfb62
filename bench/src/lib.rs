//! `weir bench`: throughput, latency and cost per job, each beside the
//! raw-SQL ceiling measured on the same Postgres in the same run (the
//! contract is `docs/benchmarks/README.md`).
//!
//! An unpublished crate of its own, so that the `weir` binary a user
//! installs carries neither the test harness nor the model checker: the
//! binary offers `weir bench` only with its non-default feature `bench`
//! (`cargo run --release -p weir-cli --features bench -- bench all`). The
//! binary that hosts [`run`] must route `<binary> bench ARGS` to it: worker
//! processes are this same binary started as `bench worker --spec JSON`.
//!
//! | shape | module | what |
//! |---|---|---|
//! | `burn-down` (and `cost`) | `burn.rs` | bulk-insert N no-op jobs, W workers drain them; jobs/s against the ceiling; commits, WAL and row writes per job, claimer-lease writes |
//! | `offered` | `offered.rs` | a producer offers R jobs/s for T s; medians of completion and enqueue rate and backlog, pickup latency, dead tuples |
//! | `enqueue` | `enqueue.rs` | single, batch and bulk (COPY) inserts |
//! | `herd` | `herd.rs` | P processes on an N-slot semaphore: most holders at once, waits, the herd bound |
//! | `core` | `core_bench.rs` | `World::apply`, the simulator, the model checker |
//!
//! Worker processes are real processes of the hosting binary (`child.rs`,
//! `worker.rs`); the database, its settings and the cost counters are in
//! `db.rs`; the ceiling in `ceiling.rs`; the output in `report.rs`.

mod burn;
mod ceiling;
mod child;
mod core_bench;
mod db;
mod enqueue;
mod herd;
mod offered;
mod report;
mod worker;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use ceiling::Ceiling;
use db::{BenchDb, Server, ServerInfo};
use report::{Run, Shape};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeName {
    /// Insert N no-op jobs with the bulk path, then W workers drain them.
    BurnDown,
    /// A producer offers R jobs/s for T seconds to W workers.
    Offered,
    /// Single, batch (128) and bulk (COPY) inserts.
    Enqueue,
    /// Commits, WAL, row writes and claimer-lease writes per job (a burn-down).
    Cost,
    /// P processes on an N-slot semaphore, and the start-up herd.
    Herd,
    /// `World::apply`, the simulator and the model checker.
    Core,
    /// Every shape above (burn-down and cost from one run).
    All,
    /// One worker process of `--processes` (internal).
    #[value(hide = true)]
    Worker,
}

/// `--pooler`: [`weir_postgres::Pooler`] on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PoolerArg {
    /// `Pooler::Direct`.
    Direct,
    /// `Pooler::Transaction`.
    Transaction,
}

impl PoolerArg {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PoolerArg::Direct => "direct",
            PoolerArg::Transaction => "transaction",
        }
    }
}

/// Options of `weir bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The shape to run.
    shape: ShapeName,
    /// Run against this Postgres (each shape in a fresh schema
    /// `weir_bench`); without it a throwaway server is started the way the
    /// tests start theirs.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Weir's own processes (workers, producers, the herd) connect here
    /// instead, for example through a PgBouncer in front of
    /// --database-url's server; the schema set-up, the statistics and the
    /// ceiling's bookkeeping stay on --database-url.
    #[arg(long, requires = "database_url")]
    worker_url: Option<String>,
    /// How Weir's processes send statements: `direct` (straight to
    /// Postgres or a session-pooling PgBouncer) or `transaction` (pooler
    /// mode, for a transaction-pooling PgBouncer: `PgConfig::pooler`).
    #[arg(long, value_enum, env = "WEIR_BENCH_POOLER", default_value = "direct")]
    pooler: PoolerArg,
    /// Worker processes against the one database (default: 1; the herd: 8).
    /// `all` runs the burn-down and the offered load both as 1 x W and as
    /// 2 x W/2.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    processes: Option<u32>,
    /// Workers (handlers) in all, split evenly over the processes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: u32,
    /// Burn-down jobs (default 100,000; --quick 10,000).
    #[arg(long)]
    jobs: Option<u64>,
    /// Offered load, jobs per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Offered-load duration in seconds (default 60; --quick 5).
    #[arg(long)]
    seconds: Option<f64>,
    /// Semaphore slots of the herd.
    #[arg(long, default_value_t = 2)]
    permits: u16,
    /// Seconds each ceiling measurement runs (default 10; --quick 2).
    #[arg(long)]
    ceiling_seconds: Option<f64>,
    /// Smaller shapes, to prove the command end to end (well under two
    /// minutes on two cores). Its figures are marked quick.
    #[arg(long)]
    quick: bool,
    /// Where `results.jsonl` (appended) and `latest.md` (rewritten) go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    /// Worker pools run with `PoolConfig::new`'s defaults except for the
    /// `DispatcherConfig` fields in this JSON object, for example
    /// '{"claim_batch_min": 64, "flush_delay": 5}' (to compare settings).
    #[arg(long)]
    dispatcher: Option<String>,
    /// The `autovacuum_naptime` the offered load runs with on the bench's
    /// own throwaway server (Weir's recommendation for a queue database);
    /// `keep` leaves the server's setting. A server given by
    /// --database-url is never changed.
    #[arg(long, default_value = "1s")]
    autovacuum_naptime: String,
    /// Print the results only.
    #[arg(long)]
    no_write: bool,
    /// The worker process's instructions (internal).
    #[arg(long, hide = true)]
    spec: Option<String>,
}

/// What every shape of one run shares.
pub struct Ctx {
    server: Server,
    /// `--dispatcher`, parsed.
    overrides: Option<Value>,
    /// `--autovacuum-naptime` (`None`: keep the server's).
    naptime: Option<String>,
    quick: bool,
    ceiling_seconds: f64,
    /// The ceilings measured so far in this run, by client count.
    ceilings: Vec<Ceiling>,
}

/// The client count of the reference ceiling (`ceiling.sh`'s default).
pub const REFERENCE_CLIENTS: u32 = 4;

impl Ctx {
    /// A spinner with a message, ticking by itself.
    fn spinner(&self, message: String) -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("a valid template"),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A bar to `len` with a message.
    fn bar(&self, len: u64, message: String) -> ProgressBar {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ({per_sec}) {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(message);
        bar
    }

    /// Every ceiling measured in this run so far, after measuring, on
    /// `db`, the reference client count and `clients` unless this run has
    /// them already. A shape is judged against the highest of all.
    async fn ceilings(&mut self, db: &BenchDb, clients: u32) -> Result<Vec<Ceiling>, String> {
        for c in [REFERENCE_CLIENTS, clients] {
            if !self.ceilings.iter().any(|x| x.clients == c) {
                self.measure_ceiling(db, c, "before the first shape that needs it")
                    .await?;
            }
        }
        Ok(self.ceilings.clone())
    }

    /// Measures the ceiling with `clients` clients on `db` now.
    async fn measure_ceiling(
        &mut self,
        db: &BenchDb,
        clients: u32,
        when: &str,
    ) -> Result<(), String> {
        let bar = self.spinner(format!(
            "raw-SQL ceiling: {clients} clients, {:.0} s from Rust, then through pgbench",
            self.ceiling_seconds
        ));
        let mut measured = ceiling::measure(&db.app_url, clients, self.ceiling_seconds).await?;
        measured.when = when.to_string();
        bar.finish_and_clear();
        println!(
            "ceiling, {clients} clients ({when}): {} jobs/s from Rust, {} through pgbench",
            report::thousands(measured.rust_jobs_per_s),
            measured
                .pgbench_jobs_per_s
                .map_or("-".into(), report::thousands)
        );
        self.ceilings.push(measured);
        Ok(())
    }
}

/// The highest of `ceilings`: what Weir is judged against.
fn best(ceilings: &[Ceiling]) -> f64 {
    ceilings.iter().map(Ceiling::jobs_per_s).fold(0.0, f64::max)
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `weir bench`.
pub fn run(args: &BenchArgs) -> Result<(), String> {
    // Worker processes too: they get it through WEIR_BENCH_POOLER.
    db::set_pooler(args.pooler);
    if args.shape == ShapeName::Worker {
        let spec = args.spec.as_deref().ok_or("worker needs --spec")?;
        return worker::run(spec);
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "weir bench: this is a debug build; run `cargo run --release -p weir-cli --features bench -- bench ...` \
             for figures worth quoting"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(bench(args))
}

async fn bench(args: &BenchArgs) -> Result<(), String> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut ctx = Ctx::new(args)?;
    let postgres = {
        let db = ctx.server.fresh().await?;
        let mut conn = db.admin().await?;
        db::server_info(&mut conn).await?
    };
    let shapes = run_shapes(&mut ctx, args).await?;
    let header = Header::new(args, &ctx, started, postgres);
    let run = Run {
        header: serde_json::to_value(&header).expect("the header serialises"),
        shapes,
    };
    println!();
    print!("{}", run.table());
    if !args.no_write {
        run.write(&args.out)?;
        println!(
            "\nwrote {} and {}",
            args.out.join("results.jsonl").display(),
            args.out.join("latest.md").display()
        );
    }
    Ok(())
}

impl Ctx {
    /// The run's shared state, from the command line.
    fn new(args: &BenchArgs) -> Result<Ctx, String> {
        let quick = args.quick;
        Ok(Ctx {
            server: Server::new(args.database_url.as_deref(), args.worker_url.as_deref())?,
            overrides: match &args.dispatcher {
                Some(json) => {
                    Some(serde_json::from_str(json).map_err(|e| format!("--dispatcher: {e}"))?)
                }
                None => None,
            },
            quick,
            naptime: match args.autovacuum_naptime.as_str() {
                "keep" => None,
                v if v.chars().all(|c| c.is_ascii_alphanumeric()) => Some(v.to_string()),
                v => {
                    return Err(format!(
                        "--autovacuum-naptime {v:?}: a duration like 1s, or keep"
                    ))
                }
            },
            ceiling_seconds: args
                .ceiling_seconds
                .unwrap_or(if quick { 2.0 } else { 10.0 }),
            ceilings: Vec::new(),
        })
    }
}

/// The process counts a burn-down or an offered load runs with: `all`
/// without --processes runs both 1 and 2.
fn process_runs(all: bool, processes: Option<u32>) -> Vec<u32> {
    match (all, processes) {
        (true, None) => vec![1, 2],
        (_, p) => vec![p.unwrap_or(1)],
    }
}

/// Runs the shapes `args` asks for, in the fixed order core, burn-down
/// and cost, offered, enqueue, herd.
async fn run_shapes(ctx: &mut Ctx, args: &BenchArgs) -> Result<Vec<Shape>, String> {
    let quick = args.quick;
    let jobs = args.jobs.unwrap_or(if quick { 10_000 } else { 100_000 });
    let seconds = args.seconds.unwrap_or(if quick { 5.0 } else { 60.0 });
    let mut shapes: Vec<Shape> = Vec::new();
    let shape = args.shape;
    let all = shape == ShapeName::All;
    if all || shape == ShapeName::Core {
        shapes.push(core_bench::run(ctx).await?);
    }
    if all || shape == ShapeName::BurnDown || shape == ShapeName::Cost {
        // `all` drains with one process and with two; the cost is the
        // first run's.
        for (i, processes) in process_runs(all, args.processes).into_iter().enumerate() {
            let (burn, cost) = burn::run(ctx, jobs, args.workers, processes).await?;
            if shape != ShapeName::Cost {
                shapes.push(burn);
            }
            if shape != ShapeName::BurnDown && i == 0 {
                shapes.push(cost);
            }
        }
    }
    if all || shape == ShapeName::Offered {
        for processes in process_runs(all, args.processes) {
            shapes.push(offered::run(ctx, args.rate, seconds, args.workers, processes).await?);
        }
    }
    if all || shape == ShapeName::Enqueue {
        let processes = args.processes.unwrap_or(1);
        shapes.push(enqueue::run(ctx, jobs, processes).await?);
    }
    if all || shape == ShapeName::Herd {
        let processes = match (all, args.processes) {
            (true, _) | (_, None) => 8,
            (_, Some(p)) => p,
        };
        shapes.push(herd::run(ctx, processes, args.permits).await?);
    }
    Ok(shapes)
}

/// What every record of one run carries (`report::Run::header`).
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct Header {
    run: u64,
    at: String,
    command: String,
    git: Option<String>,
    cores: usize,
    build: &'static str,
    quick: bool,
    pooler: &'static str,
    dispatcher_overrides: Option<Value>,
    server_kind: &'static str,
    postgres: ServerInfo,
    ceiling: Vec<Ceiling>,
}

impl Header {
    fn new(args: &BenchArgs, ctx: &Ctx, started: u64, postgres: ServerInfo) -> Header {
        let at = UNIX_EPOCH + Duration::from_secs(started);
        Header {
            run: started,
            at: humantime::format_rfc3339_seconds(at).to_string(),
            command: std::env::args()
                .skip(1)
                .fold("weir".to_string(), |a, b| a + " " + &b),
            git: git_commit(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            quick: args.quick,
            pooler: args.pooler.name(),
            dispatcher_overrides: ctx.overrides.clone(),
            server_kind: match ctx.server {
                Server::Throwaway(_) => "throwaway cluster, a database per shape",
                Server::Url { .. } => "--database-url, a schema per shape",
            },
            postgres,
            ceiling: ctx.ceilings.clone(),
        }
    }
}

/// The ceiling fields every record carries.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(test, derive(Default))]
struct CeilingRecord {
    measured: Vec<Ceiling>,
    judged_against_jobs_per_s: f64,
}

impl CeilingRecord {
    fn new(ceilings: &[Ceiling]) -> CeilingRecord {
        CeilingRecord {
            measured: ceilings.to_vec(),
            judged_against_jobs_per_s: best(ceilings),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::{key_paths, sorted};

    /// The header's keys as the `json!` wrote them before it was typed
    /// (`postgres` and `ceiling[]` are checked by their own structs).
    #[test]
    fn header_keeps_its_keys() {
        let header = Header::default();
        let keys = [
            "run",
            "at",
            "command",
            "git",
            "cores",
            "build",
            "quick",
            "pooler",
            "dispatcher_overrides",
            "server_kind",
            "postgres",
            "postgres.version",
            "postgres.settings",
            "ceiling",
        ];
        assert_eq!(key_paths(&header), sorted(&keys));
    }

    #[test]
    fn ceiling_record_keeps_its_keys() {
        let record = CeilingRecord::default();
        assert_eq!(
            key_paths(&record),
            sorted(&["measured", "judged_against_jobs_per_s"])
        );
    }
}
