//! Quick start on Postgres: migrate, define a job, insert some, run a
//! worker pool until they are done, shut down gracefully, and export the
//! pool's metrics in Prometheus's text format.
//!
//! ```sh
//! cargo run -p weir-examples --example quickstart            # throwaway Postgres
//! DATABASE_URL=postgres://... cargo run -p weir-examples --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::core::StateName;
use weir::{Client, InsertOptions, JobArgs, JobOutcome, PoolConfig, Registry, WorkerPool};
use weir_postgres::{PgBackend, PgConfig};

/// A job is a serde type with a kind and defaults.
#[derive(Serialize, Deserialize)]
struct SendWelcome {
    user_id: u64,
    email: String,
}

impl JobArgs for SendWelcome {
    const KIND: &'static str = "email.welcome";
    const QUEUE: &'static str = "mail";
    const MAX_ATTEMPTS: u32 = 5;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weir_examples::init_tracing();
    // Every count and latency of the pool goes to the `metrics` facade; a
    // service installs the exporter it wants. Here: Prometheus text.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    let db = weir_examples::database().await;
    let backend = Arc::new(PgBackend::connect(&db.url, 8, PgConfig::default()).await?);
    backend.migrate().await?;

    let client = Client::new(Arc::clone(&backend));
    let jobs: Vec<SendWelcome> = (1..=100)
        .map(|user_id| SendWelcome {
            user_id,
            email: format!("user{user_id}@example.com"),
        })
        .collect();
    let inserted = client
        .insert_many(jobs.iter().map(|j| (j, InsertOptions::default())))
        .await?;
    println!("inserted {} jobs", inserted.len());

    let mut registry = Registry::new();
    registry.register(|job: SendWelcome, ctx| async move {
        // A real handler would send the email here. Errors are retried
        // with backoff; `ctx.cancelled()` fires on cancel and shutdown.
        if job.user_id.is_multiple_of(25) && ctx.attempt() == 1 {
            return Err(format!("mail server busy for {}", job.email).into());
        }
        Ok(JobOutcome::Complete)
    })?;
    let mut config = PoolConfig::new("mail", 16)?;
    config.dispatcher.poll_interval = weir::core::Millis(200);
    let pool = WorkerPool::with_config(Arc::clone(&backend), registry, config)?;
    let metrics = pool.metrics();

    // Shut down once every job is done (a service would wait for SIGTERM).
    let watcher = client.clone();
    let done = async move {
        loop {
            let queues = watcher.queues().await.expect("queues");
            let mail = queues.iter().find(|q| q.queue.as_str() == "mail");
            if mail.is_some_and(|q| q.depth(StateName::Completed) == 100) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let report = pool.run(done).await?;
    let snapshot = metrics.snapshot();
    println!(
        "completed {} jobs ({} retried once), pickup p99 {} ms",
        snapshot.completed, snapshot.retried, snapshot.pickup_p99_ms
    );
    assert_eq!(
        report.stats.reported, 104,
        "100 completions and 4 failed first attempts"
    );

    let exported = prometheus.render();
    let line = exported
        .lines()
        .find(|l| l.starts_with("weir_jobs_finished_total") && l.contains("completed"))
        .ok_or("no weir_jobs_finished_total in the Prometheus output")?;
    println!("prometheus: {line}");
    Ok(())
}
