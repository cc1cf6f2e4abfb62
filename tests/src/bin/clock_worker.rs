//! `clock_worker`: a worker process whose wall clock the clock tests move.
//!
//! `tests/clocks.rs` starts it under libfaketime (`LD_PRELOAD`), which
//! shifts or steps what the process reads from the wall clock
//! (`CLOCK_REALTIME`) while leaving the monotonic clock alone, as NTP, a
//! resumed VM or an operator's `date -s` would. A real [`WorkerPool`] over
//! [`PgBackend`] runs [`Sleep`] jobs; it does not lead maintenance (the
//! test does, with its own clock), so every decision that depends on time
//! is the pool's own.
//!
//! Configured by `WEIR_CLOCK_URL` and `WEIR_CLOCK_PROCESS`. Prints `ready`
//! once the pool starts and `report {...}` after the graceful shutdown
//! that the end of standard input starts.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use weir::core::{DispatcherConfig, Millis, ProcessId, QueueName};
use weir::{JobOutcome, PoolConfig, Registry, WorkerPool};
use weir_postgres::{PgBackend, PgConfig};
use weir_tests::clocks::{world_config, Sleep, HEARTBEAT_INTERVAL};

async fn run() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let url = var("WEIR_CLOCK_URL")?;
    let process: u64 = var("WEIR_CLOCK_PROCESS")?
        .parse()
        .map_err(|e| format!("WEIR_CLOCK_PROCESS: {e}"))?;
    let config = PgConfig {
        world: world_config(),
        ..PgConfig::default()
    };
    let backend = PgBackend::connect(&url, 4, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut registry = Registry::new();
    registry
        .register(|job: Sleep, _ctx| async move {
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            Ok(JobOutcome::Complete)
        })
        .map_err(|e| e.to_string())?;
    let queue = QueueName::new("default").map_err(|e| e.to_string())?;
    let dispatcher = DispatcherConfig {
        poll_interval: Millis(50),
        heartbeat_interval: HEARTBEAT_INTERVAL,
        flush_delay: Millis(5),
        lead: false,
        ..DispatcherConfig::new(ProcessId(process), queue, 4)
    };
    let pool = WorkerPool::with_config(
        Arc::new(backend),
        registry,
        PoolConfig::from_dispatcher(dispatcher),
    )
    .map_err(|e| e.to_string())?;
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    println!("ready");
    let report = pool
        .run(async move {
            let _ = eof_rx.await;
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "report {{\"timeouts\": {}, \"fenced\": {}}}",
        report.timeouts, report.stats.fenced
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("clock_worker: {error}");
            ExitCode::FAILURE
        }
    }
}
