//! `weir jobs`, `weir queues` and `weir workers`: what an operator looks at
//! and does, against a Postgres database.

use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use weir::core::{Job, JobId, JobState, Kind, QueueName, StateName, Timestamp};
use weir::{Client, JobFilter};
use weir_postgres::PgBackend;

/// Where the database is.
#[derive(Args, Debug)]
pub struct Target {
    /// The database, e.g. postgres://user:pass@host/db (or DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The schema Weir's tables live in.
    #[arg(long, default_value = "weir")]
    schema: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to wait for a connection before saying the database does
    /// not answer.
    #[arg(long, default_value_t = crate::pg::CONNECT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_s: u64,
}

/// Options of `weir jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: JobsAction,
}

// Negative numbers reach the value parsers (instead of being read as
// unknown flags), so `--limit -1` says which values are allowed.
#[derive(Subcommand, Debug)]
enum JobsAction {
    /// List jobs in id order.
    #[command(allow_negative_numbers = true)]
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state: scheduled, available, running, waiting_external,
        /// retryable, completed, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only ids after this one (paging).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        after: Option<i64>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Show one job.
    #[command(allow_negative_numbers = true)]
    Show {
        /// The job id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Retry a failed or cancelled job with fresh attempts.
    #[command(allow_negative_numbers = true)]
    Retry {
        /// The job id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Cancel a job in any unfinished state (a running one is fenced).
    #[command(allow_negative_numbers = true)]
    Cancel {
        /// The job id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
}

/// Options of `weir queues`.
#[derive(Args, Debug)]
pub struct QueuesArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: Option<QueuesAction>,
}

#[derive(Subcommand, Debug)]
enum QueuesAction {
    /// Stop claims from a queue (its jobs stay where they are).
    Pause {
        /// The queue.
        queue: String,
    },
    /// Allow claims from a queue again.
    Resume {
        /// The queue.
        queue: String,
    },
}

/// Options of `weir workers`.
#[derive(Args, Debug)]
pub struct WorkersArgs {
    #[command(flatten)]
    target: Target,
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

async fn client(target: &Target) -> Result<Client<PgBackend>, String> {
    let timeout = Duration::from_secs(target.connect_timeout_s);
    let backend =
        crate::pg::connect_checked(&target.database_url, &target.schema, 2, timeout).await?;
    Ok(Client::new(std::sync::Arc::new(backend)))
}

fn json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// `weir jobs ...`.
pub fn jobs(args: &JobsArgs) -> Result<(), String> {
    block_on(async {
        let client = client(&args.target).await?;
        match &args.action {
            JobsAction::List {
                queue,
                state,
                kind,
                after,
                limit,
            } => {
                let filter = job_filter(queue, state, kind, *after, *limit)?;
                let jobs = client.jobs(&filter).await.map_err(|e| e.to_string())?;
                if args.target.json {
                    return json(&jobs);
                }
                print_jobs(&jobs);
                Ok(())
            }
            JobsAction::Show { id } => show_job(&client, *id, args.target.json).await,
            JobsAction::Retry { id } => {
                client
                    .retry(JobId(*id))
                    .await
                    .map_err(|e| format!("job {id}: {e}"))?;
                println!("job {id} is available again with fresh attempts");
                Ok(())
            }
            JobsAction::Cancel { id } => {
                let from = client
                    .cancel(JobId(*id))
                    .await
                    .map_err(|e| format!("job {id}: {e}"))?;
                println!("job {id} cancelled (it was {})", from.as_str());
                Ok(())
            }
        }
    })
}

/// The `weir jobs list` filter, each flag checked.
fn job_filter(
    queue: &Option<String>,
    state: &Option<String>,
    kind: &Option<String>,
    after: Option<i64>,
    limit: u32,
) -> Result<JobFilter, String> {
    Ok(JobFilter {
        queue: queue
            .as_deref()
            .map(QueueName::new)
            .transpose()
            .map_err(|e| format!("--queue: {e}"))?,
        state: state.as_deref().map(parse_state).transpose()?,
        kind: kind
            .as_deref()
            .map(Kind::new)
            .transpose()
            .map_err(|e| format!("--kind: {e}"))?,
        after: after.map(JobId),
        limit,
    })
}

/// `weir jobs show ID`, with a note when no live worker can run it.
async fn show_job<B: weir::Backend>(
    client: &weir::Client<B>,
    id: i64,
    as_json: bool,
) -> Result<(), String> {
    let Some(job) = client.job(JobId(id)).await.map_err(|e| e.to_string())? else {
        return Err(format!("no job {id} (never enqueued, or pruned)"));
    };
    if as_json {
        return json(&job);
    }
    print_job(&job);
    if !job.state_name().is_terminal() {
        let workers = client.workers().await.map_err(|e| e.to_string())?;
        let runnable = workers.iter().any(|w| {
            w.presence.queues.contains(&job.queue) && w.presence.kinds.contains(&job.kind)
        });
        if !runnable {
            println!(
                "  note          no live worker on queue {} runs kind {}: it waits until one starts",
                job.queue, job.kind
            );
        }
    }
    Ok(())
}

fn parse_state(s: &str) -> Result<StateName, String> {
    StateName::parse(s).ok_or_else(|| {
        let all: Vec<_> = StateName::ALL.iter().map(|s| s.as_str()).collect();
        format!("--state {s:?}: expected one of {}", all.join(", "))
    })
}

/// `weir queues ...`.
pub fn queues(args: &QueuesArgs) -> Result<(), String> {
    block_on(async {
        let client = client(&args.target).await?;
        if let Some(action) = &args.action {
            return pause_or_resume(&client, action).await;
        }
        let queues = client.queues().await.map_err(|e| e.to_string())?;
        let workers = client.workers().await.map_err(|e| e.to_string())?;
        let stranded = weir::stranded(&queues, &workers);
        if args.target.json {
            return json(&queues_json(&queues, &stranded));
        }
        if queues.is_empty() {
            println!("no queues (no jobs, nothing paused)");
            return Ok(());
        }
        print_queues(&queues);
        println!("{} live worker process(es)", workers.len());
        for s in &stranded {
            println!(
                "warning: {} unfinished {} job(s) in queue {}: no live worker on that queue runs that kind",
                s.jobs, s.kind, s.queue
            );
        }
        Ok(())
    })
}

/// `weir queues pause|resume QUEUE`.
async fn pause_or_resume<B: weir::Backend>(
    client: &weir::Client<B>,
    action: &QueuesAction,
) -> Result<(), String> {
    match action {
        QueuesAction::Pause { queue } => {
            let changed = client.pause(queue).await.map_err(|e| e.to_string())?;
            let what = if changed {
                "paused"
            } else {
                "was already paused"
            };
            println!("queue {queue} {what}");
        }
        QueuesAction::Resume { queue } => {
            let changed = client.resume(queue).await.map_err(|e| e.to_string())?;
            let what = if changed { "resumed" } else { "was not paused" };
            println!("queue {queue} {what}");
        }
    }
    Ok(())
}

/// `weir queues --json`: one object per queue.
fn queues_json(queues: &[weir::QueueInfo], stranded: &[weir::Stranded]) -> Vec<serde_json::Value> {
    queues
        .iter()
        .map(|q| {
            let depths: serde_json::Map<String, serde_json::Value> = q
                .depths
                .iter()
                .map(|(s, n)| (s.as_str().to_string(), (*n).into()))
                .collect();
            let stranded: Vec<_> = stranded
                .iter()
                .filter(|s| s.queue == q.queue)
                .map(|s| serde_json::json!({"kind": s.kind, "jobs": s.jobs}))
                .collect();
            serde_json::json!({
                "queue": q.queue, "paused": q.paused, "depths": depths,
                "no_live_worker_for": stranded,
            })
        })
        .collect()
}

/// `weir queues`: depth per state, one row per queue.
fn print_queues(queues: &[weir::QueueInfo]) {
    print!("{:<24} {:<7}", "queue", "paused");
    for state in StateName::ALL {
        print!(" {:>10}", short(state));
    }
    println!();
    for q in queues {
        print!(
            "{:<24} {:<7}",
            q.queue.as_str(),
            if q.paused { "yes" } else { "no" }
        );
        for state in StateName::ALL {
            print!(" {:>10}", q.depth(state));
        }
        println!();
    }
}

/// `weir workers`.
pub fn workers(args: &WorkersArgs) -> Result<(), String> {
    block_on(async {
        let client = client(&args.target).await?;
        let workers = client.workers().await.map_err(|e| e.to_string())?;
        if args.target.json {
            return json(&workers);
        }
        if workers.is_empty() {
            println!("no live worker processes");
        }
        for w in &workers {
            let p = &w.presence;
            let names = |v: &[String]| v.join(",");
            println!(
                "process {} ({}) since {}, seen {}: queues {} kinds {}",
                p.process.0,
                p.label,
                time(p.started_at),
                time(w.seen_at),
                names(&p.queues.iter().map(|q| q.to_string()).collect::<Vec<_>>()),
                names(&p.kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>()),
            );
        }
        Ok(())
    })
}

fn short(state: StateName) -> &'static str {
    match state {
        StateName::WaitingExternal => "waiting",
        other => other.as_str(),
    }
}

/// A time as RFC 3339, or as raw milliseconds when RFC 3339 cannot show
/// it (before 1970 or after 9999, which a handler's absurd snooze or wait
/// can produce), rather than failing to print the job.
fn time(t: Timestamp) -> String {
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    if !(0..YEAR_10000_MS).contains(&t.0) {
        return format!("t={} ms since the Unix epoch", t.0);
    }
    let at = UNIX_EPOCH + Duration::from_millis(t.0.unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}

fn print_jobs(jobs: &[Job]) {
    println!(
        "{:>10} {:<16} {:<24} {:<20} {:>9} {:<24}",
        "id", "state", "queue", "kind", "attempt", "created"
    );
    for job in jobs {
        println!(
            "{:>10} {:<16} {:<24} {:<20} {:>4}/{:<4} {:<24}",
            job.id.0,
            job.state_name().as_str(),
            job.queue.as_str(),
            job.kind.as_str(),
            job.attempt.0,
            job.max_attempts.0,
            time(job.created_at)
        );
    }
    if jobs.is_empty() {
        println!("(no jobs)");
    }
}

fn print_job(job: &Job) {
    println!("job {}", job.id.0);
    println!("  queue         {}", job.queue);
    println!("  kind          {}", job.kind);
    println!("  state         {}", describe(&job.state));
    println!(
        "  attempts      {} of {}",
        job.attempt.0, job.max_attempts.0
    );
    println!("  epoch         {}", job.epoch.0);
    println!("  priority      {}", job.priority.0);
    println!("  timeout       {} ms", job.timeout.0);
    println!("  created       {}", time(job.created_at));
    if let Some(key) = &job.unique_key {
        println!("  unique key    {key}");
    }
    match std::str::from_utf8(&job.payload.0) {
        Ok(text) => println!("  args          {text}"),
        Err(_) => println!("  args          ({} bytes, not UTF-8)", job.payload.0.len()),
    }
    if let Some(b) = &job.backoff {
        println!(
            "  backoff       {} ms ×{} up to {} ms, jitter {}‰",
            b.base().0,
            b.factor(),
            b.cap().0,
            b.jitter_permille()
        );
    }
    if !job.errors.is_empty() {
        println!("  errors        {} kept, oldest first", job.errors.len());
    }
    for e in &job.errors {
        println!(
            "    attempt {} at {}: {}",
            e.attempt.0,
            time(e.at),
            e.message
        );
    }
}

fn describe(state: &JobState) -> String {
    match *state {
        JobState::Scheduled { run_at } => format!("scheduled for {}", time(run_at)),
        JobState::Available { run_at } => format!("available since {}", time(run_at)),
        JobState::Running {
            holder,
            claimed_at,
            heartbeat_at,
            deadline,
        } => format!(
            "running on process {} since {}, last heartbeat {}, deadline {}",
            holder.0,
            time(claimed_at),
            time(heartbeat_at),
            time(deadline)
        ),
        JobState::WaitingExternal { since, deadline } => format!(
            "waiting for an external callback since {}, until {}",
            time(since),
            time(deadline)
        ),
        JobState::Retryable { run_at } => format!("retryable at {}", time(run_at)),
        JobState::Completed { at } => format!("completed at {}", time(at)),
        JobState::Failed { at, reason } => format!("failed at {} ({reason:?})", time(at)),
        JobState::Cancelled { at } => format!("cancelled at {}", time(at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_show_are_printed_as_milliseconds() {
        assert_eq!(time(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(Timestamp(-1)), "t=-1 ms since the Unix epoch");
        assert_eq!(
            time(Timestamp(i64::MAX)),
            format!("t={} ms since the Unix epoch", i64::MAX)
        );
        assert_eq!(
            time(Timestamp(253_402_300_799_999)),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
