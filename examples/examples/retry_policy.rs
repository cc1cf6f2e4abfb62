//! A kind with its own retry policy: `JobArgs::backoff` sets how long its
//! jobs wait between attempts (stored with each job, so every process and
//! the leader's rescue agree), a handler can override the next delay, and
//! every attempt's error is kept on the job (the newest 20), which
//! `Client::job` and `weir jobs show` read.
//!
//! ```sh
//! cargo run -p weir-examples --example retry_policy            # throwaway Postgres
//! DATABASE_URL=postgres://... cargo run -p weir-examples --example retry_policy
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::core::{Backoff, Millis, StateName};
use weir::{Client, JobArgs, JobOutcome, PoolConfig, Registry, WorkerPool};
use weir_postgres::{PgBackend, PgConfig};

/// A call to a flaky partner API.
#[derive(Serialize, Deserialize)]
struct CallPartner {
    order: u64,
}

impl JobArgs for CallPartner {
    const KIND: &'static str = "partner.call";
    const QUEUE: &'static str = "partner";
    const MAX_ATTEMPTS: u32 = 4;

    /// 100 ms, then 200 ms, … at most 1 s, up to 10% earlier: this kind's
    /// own policy instead of the backend's (1 s doubling to 1 h).
    fn backoff() -> Option<Backoff> {
        Backoff::new(Millis(100), 2, Millis(1_000), 100).ok()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weir_examples::init_tracing();
    let db = weir_examples::database().await;
    let backend = Arc::new(PgBackend::connect(&db.url, 4, PgConfig::default()).await?);
    backend.migrate().await?;
    let client = Client::new(Arc::clone(&backend));
    let id = client.insert(&CallPartner { order: 42 }).await?.id;

    let mut registry = Registry::new();
    registry.register(|job: CallPartner, ctx| async move {
        match ctx.attempt() {
            // Retried after the kind's backoff.
            1 => Err(format!("order {}: partner answered 503", job.order).into()),
            // The handler knows better this once: the partner said when.
            2 => Ok(JobOutcome::Retry {
                after: Some(Duration::from_millis(50)),
                error: "partner said: retry after 50 ms".to_string(),
            }),
            _ => Ok(JobOutcome::Complete),
        }
    })?;
    let mut config = PoolConfig::new("partner", 2)?;
    config.dispatcher.poll_interval = Millis(100);
    let pool = WorkerPool::with_config(Arc::clone(&backend), registry, config)?;
    let watcher = client.clone();
    let done = async move {
        loop {
            let job = watcher.job(id).await.expect("read the job");
            if job.is_some_and(|j| j.state_name() == StateName::Completed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), pool.run(done)).await??;

    let job = client.job(id).await?.ok_or("the job is gone")?;
    assert_eq!(
        job.backoff,
        CallPartner::backoff(),
        "the kind's policy is stored"
    );
    println!("job {} completed on attempt {}", job.id.0, job.attempt.0);
    for e in &job.errors {
        println!("  attempt {}: {}", e.attempt.0, e.message);
    }
    let attempts: Vec<u32> = job.errors.iter().map(|e| e.attempt.0).collect();
    assert_eq!(attempts, [1, 2], "both failed attempts' errors are kept");
    assert_eq!(job.attempt.0, 3);
    Ok(())
}
