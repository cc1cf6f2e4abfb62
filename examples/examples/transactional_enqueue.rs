//! Transactional enqueue: a job inserted in the caller's own sqlx
//! transaction commits or rolls back with the caller's rows, so there is
//! never an order without its shipping job, or a job for an order that was
//! never saved.
//!
//! ```sh
//! cargo run -p weir-examples --example transactional_enqueue
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::core::StateName;
use weir::{
    Client, InsertOptions, JobArgs, JobFilter, JobOutcome, PoolConfig, Registry, WorkerPool,
};
use weir_postgres::{PgBackend, PgConfig};

#[derive(Serialize, Deserialize)]
struct ShipOrder {
    order_id: i32,
}

impl JobArgs for ShipOrder {
    const KIND: &'static str = "orders.ship";
    const QUEUE: &'static str = "orders";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weir_examples::init_tracing();
    let db = weir_examples::database().await;
    let backend = Arc::new(PgBackend::connect(&db.url, 8, PgConfig::default()).await?);
    backend.migrate().await?;
    let pool = backend.pool().clone();
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL)")
        .execute(&pool)
        .await?;

    // Committed: the order and its job, together.
    let mut tx = pool.begin().await?;
    let order_id: i32 = sqlx::query_scalar("INSERT INTO orders (item) VALUES ($1) RETURNING id")
        .bind("teapot")
        .fetch_one(&mut *tx)
        .await?;
    let job = backend
        .insert_in(&mut *tx, &ShipOrder { order_id }, InsertOptions::default())
        .await?;
    tx.commit().await?;
    println!("order {order_id} committed with job {}", job.id);

    // Rolled back: neither the order nor its job exists afterwards.
    let mut tx = pool.begin().await?;
    let lost: i32 = sqlx::query_scalar("INSERT INTO orders (item) VALUES ($1) RETURNING id")
        .bind("kettle")
        .fetch_one(&mut *tx)
        .await?;
    let ghost = backend
        .insert_in(
            &mut *tx,
            &ShipOrder { order_id: lost },
            InsertOptions::default(),
        )
        .await?;
    tx.rollback().await?;
    println!("order {lost} rolled back with job {}", ghost.id);

    let client = Client::new(Arc::clone(&backend));
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await?;
    let jobs = client.jobs(&JobFilter::default()).await?;
    assert_eq!(orders, 1, "the rolled-back order is gone");
    assert_eq!(jobs.len(), 1, "and so is its job");
    assert!(client.job(ghost.id).await?.is_none());

    // The committed job runs.
    let mut registry = Registry::new();
    registry.register(|job: ShipOrder, _ctx| async move {
        println!("shipping order {}", job.order_id);
        Ok(JobOutcome::Complete)
    })?;
    let worker = WorkerPool::with_config(
        Arc::clone(&backend),
        registry,
        PoolConfig::new("orders", 4)?,
    )?;
    let watcher = client.clone();
    let id = job.id;
    worker
        .run(async move {
            while watcher.job(id).await.ok().flatten().map(|j| j.state_name())
                != Some(StateName::Completed)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?;
    println!("job {id} completed");
    Ok(())
}
