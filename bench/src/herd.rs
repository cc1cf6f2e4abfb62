//! The semaphore herd: P real processes contend for an N-slot semaphore.
//!
//! Round 0 is the herd: every process starts together (the parent's
//! `go`) and runs `weir::warmup` — a start delay plus jitter, one slot of
//! the semaphore (waiting with jittered pauses on a miss), its batches,
//! release. The time until the last process finished is set against
//! [`herd_bound`]. Rounds 1.. are plain contention: each process takes a
//! slot again at once, holds it for the same work, and releases it; their
//! waits give the acquisition-wait percentiles.
//!
//! Holders are counted from the database, not from the processes' word:
//! a holder inserts its interval's start (`clock_timestamp()`) before its
//! first batch and writes the end after its last, so each recorded
//! interval covers the work done under the slot; the most intervals
//! overlapping at any instant is the most holders seen at once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;
use weir::core::{herd_bound, Millis, SemaphoreName, WaitConfig, Warmup};
use weir::{wall_clock, warmup, WarmupConfig};

use super::child::{send, Children, Message, Orders, WorkerSpec};
use super::db::{backend_at, sql_err, BenchDb, SCHEMA};
use super::report::{Shape, Verdict};
use super::{ceiling_json, Ctx, REFERENCE_CLIENTS};

/// One contender's instructions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HerdSpec {
    pub index: u32,
    pub permits: u16,
    pub rounds: u32,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub batches: u32,
    pub batch_work_ms: u64,
    pub batch_pause_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub wait_max_ms: u64,
}

impl HerdSpec {
    fn defaults(processes: u32, permits: u16, quick: bool) -> HerdSpec {
        HerdSpec {
            index: 0,
            permits,
            rounds: if quick { 1 } else { 4 },
            delay_ms: 50,
            jitter_ms: 50,
            batches: 4,
            batch_work_ms: 25,
            batch_pause_ms: 5,
            retry_min_ms: 10,
            retry_max_ms: 40,
            wait_max_ms: 30_000 + 1_000 * u64::from(processes),
        }
    }

    /// How long one warm-up works: its batches and the pauses between.
    fn work(&self) -> Millis {
        let batches = u64::from(self.batches);
        Millis(batches * self.batch_work_ms + batches.saturating_sub(1) * self.batch_pause_ms)
    }
}

fn semaphore() -> SemaphoreName {
    SemaphoreName::new("bench-herd").expect("a valid name")
}

/// The child: round 0 (the herd) and the contention rounds.
pub async fn contend(url: &str, spec: &HerdSpec, orders: &mut Orders) -> Result<Value, String> {
    let backend = backend_at(url, 2).await?;
    let record = Arc::new(Mutex::new(
        PgConnection::connect(url).await.map_err(sql_err)?,
    ));
    let process = weir::new_process_id();
    send(&Message::Ready);
    if !orders.go().await {
        return Err("stopped before the start".into());
    }
    let items = u64::from(spec.batches);
    let mut rounds = Vec::new();
    for round in 0..=spec.rounds {
        let herd = round == 0;
        if round == 1 {
            // Contention starts only once every process finished the herd,
            // so the herd's finishing time is the herd's alone.
            send(&Message::Phase(0));
            if !orders.go().await {
                return Err("stopped between the herd and the contention rounds".into());
            }
        }
        let config = WarmupConfig {
            process,
            pacing: Warmup {
                delay: Millis(if herd { spec.delay_ms } else { 0 }),
                jitter: Millis(if herd { spec.jitter_ms } else { 0 }),
                batch_size: 1,
                batch_pause: Millis(spec.batch_pause_ms),
            },
            semaphore: Some((semaphore(), spec.permits)),
            wait: WaitConfig {
                retry_min: Millis(spec.retry_min_ms),
                retry_max: Millis(spec.retry_max_ms),
                wait_max: Millis(spec.wait_max_ms),
            },
            // Held for the session (released at the end of the warm-up),
            // so a hold is the work alone, without lease renewals.
            lease_ttl: None,
        };
        let work = Duration::from_millis(spec.batch_work_ms);
        let report = warmup(&backend, &config, items, |range| {
            let record = Arc::clone(&record);
            let index = spec.index as i32;
            async move {
                let mut conn = record.lock().await;
                if range.start == 0 {
                    let sql = format!(
                        "INSERT INTO {SCHEMA}.bench_holds (process, round, began) \
                         VALUES ($1, $2, clock_timestamp())"
                    );
                    let _ = sqlx::query(&sql)
                        .bind(index)
                        .bind(round as i32)
                        .execute(&mut *conn)
                        .await;
                }
                tokio::time::sleep(work).await;
                if range.end == items {
                    let sql = format!(
                        "UPDATE {SCHEMA}.bench_holds SET ended = clock_timestamp() \
                         WHERE process = $1 AND round = $2"
                    );
                    let _ = sqlx::query(&sql)
                        .bind(index)
                        .bind(round as i32)
                        .execute(&mut *conn)
                        .await;
                }
            }
        })
        .await
        .map_err(|e| format!("round {round}: {e}"))?;
        rounds.push(json!({
            "round": round,
            "slot": report.slot.map(|s| s.slot.0),
            "started_at_ms": report.started_at.0,
            "acquired_at_ms": report.acquired_at.0,
            "finished_at_ms": report.finished_at.0,
            "wait_ms": report.acquired_at.since(report.started_at).0,
        }));
    }
    Ok(json!({ "index": spec.index, "pid": std::process::id(), "rounds": rounds }))
}

/// What the recorded holds show.
struct Holds {
    /// The most intervals open at once.
    most: u64,
    recorded: u64,
    never_closed: u64,
    /// Mean and longest hold, milliseconds (closed holds).
    mean_ms: f64,
    longest_ms: f64,
}

/// The most recorded intervals open at once, and whether every one closed.
async fn holds(db: &BenchDb) -> Result<Holds, String> {
    let mut conn = db.admin().await?;
    let rows = sqlx::query(&format!(
        "SELECT (extract(epoch FROM began) * 1e6)::bigint AS began, \
                (extract(epoch FROM ended) * 1e6)::bigint AS ended \
         FROM {SCHEMA}.bench_holds"
    ))
    .fetch_all(&mut conn)
    .await
    .map_err(sql_err)?;
    let _ = conn.close().await;
    let mut events: Vec<(i64, i32)> = Vec::new();
    let mut open = 0u64;
    let mut lengths = Vec::new();
    for row in &rows {
        let began: i64 = row.get("began");
        match row.get::<Option<i64>, _>("ended") {
            Some(ended) => {
                events.push((began, 1));
                events.push((ended, -1));
                lengths.push((ended - began) as f64 / 1000.0);
            }
            // A hold that never closed counts as held to the end.
            None => {
                open += 1;
                events.push((began, 1));
            }
        }
    }
    // At equal times an end comes before a start: touching intervals do
    // not overlap.
    events.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, step) in events {
        now += i64::from(step);
        most = most.max(now);
    }
    let mean_ms = lengths.iter().sum::<f64>() / lengths.len().max(1) as f64;
    let longest_ms = lengths.iter().copied().fold(0.0, f64::max);
    Ok(Holds {
        most: most as u64,
        recorded: rows.len() as u64,
        never_closed: open,
        mean_ms,
        longest_ms,
    })
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `weir bench herd`.
pub async fn run(ctx: &mut Ctx, processes: u32, permits: u16) -> Result<Shape, String> {
    let db = ctx.server.fresh().await?;
    let ceilings = ctx.ceilings(&db, REFERENCE_CLIENTS).await?;
    let mut conn = PgConnection::connect(&db.app_url).await.map_err(sql_err)?;
    let create = format!(
        "CREATE TABLE {SCHEMA}.bench_holds (process int, round int, began timestamptz NOT NULL, \
         ended timestamptz, PRIMARY KEY (process, round))"
    );
    sqlx::query(&create)
        .execute(&mut conn)
        .await
        .map_err(sql_err)?;
    let _ = conn.close().await;
    let base = HerdSpec::defaults(processes, permits, ctx.quick);
    let specs: Vec<WorkerSpec> = (0..processes)
        .map(|index| WorkerSpec::Herd {
            url: db.app_url.clone(),
            herd: HerdSpec {
                index,
                ..base.clone()
            },
        })
        .collect();
    let bar = ctx.spinner(format!(
        "semaphore herd: {processes} processes on {permits} slots, {} rounds",
        base.rounds + 1
    ));
    let mut children = Children::spawn(&specs)?;
    children.ready().await?;
    let go = wall_clock();
    children.go()?;
    if base.rounds > 0 {
        children.phase(0).await?;
        children.go()?;
    }
    let done = children.finish().await?;
    bar.finish_and_clear();
    let recorded = holds(&db).await?;
    let (most, holds, unclosed) = (recorded.most, recorded.recorded, recorded.never_closed);

    let mut last = go;
    let mut waits = Vec::new();
    let mut herd_waits = Vec::new();
    for child in &done {
        for round in child["rounds"].as_array().into_iter().flatten() {
            let wait = round["wait_ms"].as_u64().unwrap_or(0);
            waits.push(wait);
            if round["round"] == 0 {
                herd_waits.push(wait);
                let finished = round["finished_at_ms"].as_i64().unwrap_or(0);
                last = last.max(weir::core::Timestamp(finished));
            }
        }
    }
    waits.sort_unstable();
    herd_waits.sort_unstable();
    let rounds_to_finish = u64::from(processes).div_ceil(u64::from(permits.max(1)));
    // The start jitter, plus one waiter's pause at each of the handoffs on
    // the way to the last round.
    let retry_jitter =
        Millis(base.jitter_ms + rounds_to_finish.saturating_sub(1) * base.retry_max_ms);
    let bound = herd_bound(
        Millis(base.delay_ms),
        processes,
        permits,
        base.work(),
        retry_jitter,
    );
    let took = last.since(go);
    let record = json!({
        "processes": processes,
        "permits": permits,
        "params": base,
        "work_ms": base.work().0,
        "holds_recorded": holds,
        "holds_never_closed": unclosed,
        "hold_mean_ms": recorded.mean_ms,
        "hold_longest_ms": recorded.longest_ms,
        "max_holders": most,
        "wait_p50_ms": percentile(&waits, 0.5),
        "wait_p99_ms": percentile(&waits, 0.99),
        "wait_max_ms": waits.last().copied().unwrap_or(0),
        "herd_wait_p50_ms": percentile(&herd_waits, 0.5),
        "herd_wait_max_ms": herd_waits.last().copied().unwrap_or(0),
        "last_finisher_ms": took.0,
        "herd_bound_ms": bound.0,
        "herd_bound_formula": format!(
            "delay {} + ceil({processes}/{permits}) x work {} + retry_jitter {} \
             (start jitter {} + {} handoffs x retry_max {})",
            base.delay_ms, base.work().0, retry_jitter.0, base.jitter_ms,
            rounds_to_finish.saturating_sub(1), base.retry_max_ms
        ),
        "ceiling": ceiling_json(&ceilings),
        "per_process": done,
    });
    let rows = vec![
        Verdict::new(
            format!("semaphore herd, {processes} processes, N = {permits}: most holders at once"),
            format!("<= {permits}"),
            format!("{most} ({holds} holds recorded)"),
            Some(most <= u64::from(permits) && unclosed == 0),
        ),
        Verdict::new(
            "semaphore: acquisition wait p50 / p99".to_string(),
            "reported".to_string(),
            format!(
                "{} / {} ms",
                percentile(&waits, 0.5),
                percentile(&waits, 0.99)
            ),
            None,
        ),
        Verdict::new(
            "herd: time to the last finisher".to_string(),
            format!("<= herd_bound = {} ms", bound.0),
            format!(
                "{} ms (holds took {:.0} ms on average against {} ms of work)",
                took.0,
                recorded.mean_ms,
                base.work().0
            ),
            Some(took <= bound),
        ),
    ];
    Ok(Shape::new("herd", record, rows))
}
