//! A job that waits for an external callback: the handler starts a
//! payment with a (pretend) provider, hands the provider its receipt, and
//! parks the job (`JobOutcome::WaitExternal`) without holding a worker.
//! When the provider calls back, `Client::resume_external(receipt)` makes
//! the job available again; its handler runs once more, finds the result,
//! and completes. A callback that never comes times the wait out and counts
//! as a failed attempt; a callback with a stale receipt is refused.
//!
//! ```sh
//! cargo run -p weir-examples --example external_callback
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::core::{Receipt, StateName};
use weir::{Client, JobArgs, JobOutcome, PoolConfig, Registry, WorkerPool};
use weir_postgres::{PgBackend, PgConfig};

#[derive(Serialize, Deserialize)]
struct Charge {
    order: u32,
    cents: u64,
}

impl JobArgs for Charge {
    const KIND: &'static str = "payments.charge";
    const QUEUE: &'static str = "payments";
}

/// What the provider has confirmed, by order (stands for a table the
/// callback endpoint writes).
type Confirmed = Arc<Mutex<BTreeMap<u32, String>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weir_examples::init_tracing();
    let db = weir_examples::database().await;
    let backend = Arc::new(PgBackend::connect(&db.url, 8, PgConfig::default()).await?);
    backend.migrate().await?;
    let client = Client::new(Arc::clone(&backend));
    let job = client
        .insert(&Charge {
            order: 7,
            cents: 4_200,
        })
        .await?;

    let confirmed: Confirmed = Arc::default();
    // The provider: receives (order, receipt), calls back a little later.
    let (to_provider, mut provider) = tokio::sync::mpsc::unbounded_channel::<(u32, Receipt)>();
    let (callbacks, store) = (client.clone(), Arc::clone(&confirmed));
    tokio::spawn(async move {
        while let Some((order, receipt)) = provider.recv().await {
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.lock().unwrap().insert(order, format!("txn-{order}"));
            callbacks
                .resume_external(receipt)
                .await
                .expect("callback accepted");
            // The same receipt again is refused: the wait is over.
            let again = callbacks.resume_external(receipt).await;
            println!("a duplicate callback is refused: {}", again.unwrap_err());
        }
    });

    let mut registry = Registry::new();
    let seen = Arc::clone(&confirmed);
    registry.register(move |charge: Charge, ctx| {
        let (seen, to_provider) = (Arc::clone(&seen), to_provider.clone());
        async move {
            if let Some(txn) = seen.lock().unwrap().get(&charge.order) {
                println!(
                    "order {} charged {} cents: {txn}",
                    charge.order, charge.cents
                );
                return Ok(JobOutcome::Complete);
            }
            println!(
                "order {}: payment started, waiting for the provider",
                charge.order
            );
            to_provider.send((charge.order, ctx.receipt()))?;
            Ok(JobOutcome::WaitExternal(Duration::from_secs(60)))
        }
    })?;
    let mut config = PoolConfig::new("payments", 4)?;
    config.dispatcher.poll_interval = weir::core::Millis(100);
    let pool = WorkerPool::with_config(Arc::clone(&backend), registry, config)?;
    let watcher = client.clone();
    let id = job.id;
    pool.run(async move {
        loop {
            let state = watcher.job(id).await.ok().flatten().map(|j| j.state_name());
            if state == Some(StateName::Completed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let job = client.job(id).await?.ok_or("the job vanished")?;
    println!(
        "job {id}: {} after {} attempt(s)",
        job.state_name().as_str(),
        job.attempt.0
    );
    assert_eq!(job.attempt.0, 1, "a resumed wait gives the attempt back");
    Ok(())
}
