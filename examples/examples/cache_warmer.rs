//! The cache warmer: a rolling deploy starts many processes at once, each
//! wanting to warm its cache from the same backing store. `weir::warmup`
//! keeps them from stampeding it: each waits a start delay plus jitter,
//! takes one slot of a cluster-wide N-slot semaphore (waiting with jittered
//! pauses on a miss, never past a deadline), warms in paced batches while
//! it renews the slot's lease, and releases the slot. If the slot is lost
//! (a renewal refused, or none accepted before the lease would lapse), the
//! batch running is dropped and the warm-up ends with
//! `WarmupError::SlotLost`. Here 8 "processes" (tasks, each with its own
//! process id) share N = 2 slots, and the example checks that no more than
//! 2 ever warm at once and that the last finishes within `herd_bound`.
//!
//! ```sh
//! cargo run -p weir-examples --example cache_warmer
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::core::{herd_bound, Millis, SemaphoreName, WaitConfig, Warmup};
use weir::{warmup, WarmupConfig};
use weir_postgres::{PgBackend, PgConfig};

const PROCESSES: u64 = 8;
const SLOTS: u16 = 2;
const ITEMS: u64 = 40;
const BATCH: u32 = 10;
const BATCH_WORK: Duration = Duration::from_millis(25);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    weir_examples::init_tracing();
    let db = weir_examples::database().await;
    let backend = Arc::new(PgBackend::connect(&db.url, 16, PgConfig::default()).await?);
    backend.migrate().await?;

    let pacing = Warmup {
        delay: Millis(50),
        jitter: Millis(50),
        batch_size: BATCH,
        batch_pause: Millis(5),
    };
    let wait = WaitConfig {
        retry_min: Millis(10),
        retry_max: Millis(40),
        wait_max: Millis(30_000),
    };
    let warming = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let started = weir::wall_clock();
    let mut herd = Vec::new();
    for _ in 0..PROCESSES {
        let config = WarmupConfig {
            // A lease (the default) of 5 s, renewed every third of it while
            // the warmer works: a crashed warmer's slot frees itself within
            // 5 s.
            lease_ttl: Some(Millis(5_000)),
            ..WarmupConfig::new(
                weir::new_process_id(),
                pacing,
                SemaphoreName::new("cache-warm")?,
                SLOTS,
                wait,
            )
        };
        let (backend, warming, most) = (
            Arc::clone(&backend),
            Arc::clone(&warming),
            Arc::clone(&most),
        );
        herd.push(tokio::spawn(async move {
            warmup(backend.as_ref(), &config, ITEMS, |items| {
                let (warming, most) = (Arc::clone(&warming), Arc::clone(&most));
                async move {
                    let now = warming.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Load `items` from the backing store into the cache.
                    let _ = items;
                    tokio::time::sleep(BATCH_WORK).await;
                    warming.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
        }));
    }
    let mut last = started;
    for process in herd {
        let report = process.await??;
        println!(
            "slot {:?}: waited {} for it, warmed in {} batches ({} renewals), done at +{}",
            report.slot.map(|s| s.slot.0),
            report.waited,
            report.batches,
            report.renewals,
            report.finished_at.since(started)
        );
        last = last.max(report.finished_at);
    }
    let batches = ITEMS.div_ceil(u64::from(BATCH));
    let work = Millis(batches * BATCH_WORK.as_millis() as u64 + (batches - 1) * 5);
    let bound = herd_bound(pacing.delay, PROCESSES as u32, SLOTS, work, Millis(50 + 40));
    let most = most.load(Ordering::SeqCst);
    println!(
        "most warming at once: {most} (N = {SLOTS}); last finished after {} (herd bound {bound}, plus the slot tries' round trips)",
        last.since(started)
    );
    assert!(most <= u32::from(SLOTS), "never more than N warm at once");
    Ok(())
}
