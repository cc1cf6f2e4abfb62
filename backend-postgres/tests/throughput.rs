//! A quick throughput check against the raw-SQL ceiling of
//! `../shared/bench/ceiling.sh`, on the same server in the same run, and
//! the bulk path's rate. Not timed tests: they are ignored by default and
//! only print.
//!
//! ```sh
//! cargo test -p weir-postgres --release --test throughput -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use weir::{Backend, BackendExt};
use weir_core::cmd;
use weir_core::{Command, Kind, NewJob, Payload, ProcessId, QueueName, WorldConfig};

const BULK_JOBS: usize = 100_000;
const BULK_ROUNDS: usize = 3;

const BATCH: usize = 128;
const CLIENTS: u64 = 4;
const SECONDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
async fn enqueue_claim_complete_cycle_against_the_ceiling() {
    let (db, backend) = common::backend_with(WorldConfig::default(), CLIENTS as u32 + 2).await;
    let queue = QueueName::new("bench").unwrap();
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for process in 1..=CLIENTS {
        let backend = backend.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let (claimer, _) = backend
                .run(cmd::ClaimerAcquire {
                    queue: queue.clone(),
                    process: ProcessId(process),
                })
                .await
                .unwrap()
                .unwrap();
            let mut done = 0usize;
            while Instant::now() < stop {
                let jobs = (0..BATCH)
                    .map(|n| {
                        NewJob::new(
                            queue.clone(),
                            Kind::new("noop").unwrap(),
                            Payload(format!("{{\"n\":{n}}}").into_bytes()),
                        )
                    })
                    .collect();
                backend
                    .execute(Command::Enqueue(cmd::Enqueue { jobs }))
                    .await
                    .unwrap();
                let claimed = backend
                    .run(cmd::Claim {
                        queue: queue.clone(),
                        claimer,
                        max: BATCH as u32,
                        kinds: None,
                    })
                    .await
                    .unwrap()
                    .unwrap();
                let receipts: Vec<_> = claimed.jobs.iter().map(|j| j.receipt).collect();
                done += receipts.len();
                backend
                    .execute(Command::Complete(cmd::Complete { receipts }))
                    .await
                    .unwrap();
            }
            done
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let weir_rate = total as f64 / started.elapsed().as_secs_f64();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/bench/ceiling.sh");
    let ceiling = std::process::Command::new("bash")
        .args([script, db.url(), &SECONDS.to_string(), &CLIENTS.to_string()])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<f64>().ok())
        });
    match ceiling {
        Some(ceiling) => eprintln!(
            "weir: {weir_rate:.0} jobs/s (enqueue+claim+complete, {CLIENTS} clients, batches of \
             {BATCH}); ceiling {ceiling:.0} jobs/s; ratio {:.2}",
            weir_rate / ceiling
        ),
        None => eprintln!("weir: {weir_rate:.0} jobs/s; ceiling.sh not found or failed"),
    }
}

fn bulk_jobs() -> Vec<NewJob> {
    let queue = QueueName::new("bench").unwrap();
    (0..BULK_JOBS)
        .map(|n| {
            NewJob::new(
                queue.clone(),
                Kind::new("noop").unwrap(),
                Payload(format!("{{\"n\":{n}}}").into_bytes()),
            )
        })
        .collect()
}

/// 100,000 jobs through `enqueue_copy` and through `Backend::enqueue_bulk`
/// (the same `COPY` path), each into a fresh database, a few rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
async fn bulk_copy_of_100k_jobs() {
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=BULK_ROUNDS {
        for (path, rates) in ["enqueue_copy", "enqueue_bulk"]
            .iter()
            .zip(rates.iter_mut())
        {
            let (_db, backend) = common::backend(WorldConfig::default()).await;
            let jobs = bulk_jobs();
            let started = Instant::now();
            let inserted = if *path == "enqueue_copy" {
                backend.enqueue_copy(&jobs).await.unwrap() as usize
            } else {
                backend.enqueue_bulk(jobs).await.unwrap().unwrap().len()
            };
            let elapsed = started.elapsed();
            assert_eq!(inserted, BULK_JOBS);
            let rate = BULK_JOBS as f64 / elapsed.as_secs_f64();
            eprintln!("round {round}: {path}: {BULK_JOBS} jobs in {elapsed:?}, {rate:.0} jobs/s");
            rates.push(rate);
        }
    }
    for (path, mut rates) in ["enqueue_copy", "enqueue_bulk"].into_iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "{path}: median {:.0} jobs/s over {BULK_ROUNDS} rounds of {BULK_JOBS}",
            rates[rates.len() / 2]
        );
    }
}
