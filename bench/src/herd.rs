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
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;
use weir::core::{herd_bound, Millis, ProcessId, SemaphoreName, Timestamp, WaitConfig, Warmup};
use weir::{wall_clock, warmup, WarmupConfig};

use super::child::{send, Children, Message, Orders, WorkerSpec};
use super::db::{backend_at, sql_err, BenchDb, SCHEMA};
use super::report::{Shape, Verdict};
use super::{CeilingRecord, Ctx, REFERENCE_CLIENTS};

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
        if round == 1 {
            // Contention starts only once every process finished the herd,
            // so the herd's finishing time is the herd's alone.
            send(&Message::Phase(0));
            if !orders.go().await {
                return Err("stopped between the herd and the contention rounds".into());
            }
        }
        let config = warmup_config(spec, process, round);
        let work = Duration::from_millis(spec.batch_work_ms);
        let report = warmup(&backend, &config, items, |range| {
            let record = Arc::clone(&record);
            let hold = Hold {
                process: spec.index as i32,
                round: round as i32,
            };
            async move {
                let mut conn = record.lock().await;
                if range.start == 0 {
                    hold.begin(&mut conn).await;
                }
                tokio::time::sleep(work).await;
                if range.end == items {
                    hold.end(&mut conn).await;
                }
            }
        })
        .await
        .map_err(|e| format!("round {round}: {e}"))?;
        rounds.push(RoundRecord {
            round,
            slot: report.slot.map(|s| s.slot.0),
            started_at_ms: report.started_at.0,
            acquired_at_ms: report.acquired_at.0,
            finished_at_ms: report.finished_at.0,
            wait_ms: report.acquired_at.since(report.started_at).0,
        });
    }
    let record = ContenderRecord {
        index: spec.index,
        pid: std::process::id(),
        rounds,
    };
    Ok(serde_json::to_value(&record).expect("a contender's record serialises"))
}

/// The warm-up of `round`: round 0 (the herd) with the start delay and
/// jitter, the contention rounds without.
fn warmup_config(spec: &HerdSpec, process: ProcessId, round: u32) -> WarmupConfig {
    let herd = round == 0;
    WarmupConfig {
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
    }
}

/// One process's hold of a slot in one round, as `bench_holds` records it.
#[derive(Clone, Copy)]
struct Hold {
    process: i32,
    round: i32,
}

impl Hold {
    /// Before the first batch: the interval's start.
    async fn begin(self, conn: &mut PgConnection) {
        let sql = format!(
            "INSERT INTO {SCHEMA}.bench_holds (process, round, began) \
             VALUES ($1, $2, clock_timestamp())"
        );
        let _ = sqlx::query(&sql)
            .bind(self.process)
            .bind(self.round)
            .execute(&mut *conn)
            .await;
    }

    /// After the last batch: the interval's end.
    async fn end(self, conn: &mut PgConnection) {
        let sql = format!(
            "UPDATE {SCHEMA}.bench_holds SET ended = clock_timestamp() \
             WHERE process = $1 AND round = $2"
        );
        let _ = sqlx::query(&sql)
            .bind(self.process)
            .bind(self.round)
            .execute(&mut *conn)
            .await;
    }
}

/// One contender's record (its entry of the herd's `per_process`).
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct ContenderRecord {
    index: u32,
    pid: u32,
    rounds: Vec<RoundRecord>,
}

/// One round of one contender.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct RoundRecord {
    round: u32,
    slot: Option<u16>,
    started_at_ms: i64,
    acquired_at_ms: i64,
    finished_at_ms: i64,
    wait_ms: u64,
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
    create_holds_table(&db).await?;
    let base = HerdSpec::defaults(processes, permits, ctx.quick);
    let (go, done) = run_contenders(ctx, &db, &base, processes, permits).await?;
    let recorded = holds(&db).await?;
    let waits = Waits::of(&done, go);
    let bound = Bound::new(&base, processes, permits);
    let took = waits.last.since(go);
    let record = HerdRecord {
        processes,
        permits,
        work_ms: base.work().0,
        holds_recorded: recorded.recorded,
        holds_never_closed: recorded.never_closed,
        hold_mean_ms: recorded.mean_ms,
        hold_longest_ms: recorded.longest_ms,
        max_holders: recorded.most,
        wait_p50_ms: percentile(&waits.all, 0.5),
        wait_p99_ms: percentile(&waits.all, 0.99),
        wait_max_ms: waits.all.last().copied().unwrap_or(0),
        herd_wait_p50_ms: percentile(&waits.herd, 0.5),
        herd_wait_max_ms: waits.herd.last().copied().unwrap_or(0),
        last_finisher_ms: took.0,
        herd_bound_ms: bound.bound.0,
        herd_bound_formula: bound.formula(&base, processes, permits),
        ceiling: CeilingRecord::new(&ceilings),
        per_process: done,
        params: base,
    };
    let rows = verdicts(&record);
    Ok(Shape::new("herd", &record, rows))
}

/// The table the holders record their intervals in.
async fn create_holds_table(db: &BenchDb) -> Result<(), String> {
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
    Ok(())
}

/// Starts the `processes` contenders, lets them run the herd and then the
/// contention rounds; the wall clock at `go` and their records.
async fn run_contenders(
    ctx: &Ctx,
    db: &BenchDb,
    base: &HerdSpec,
    processes: u32,
    permits: u16,
) -> Result<(Timestamp, Vec<Value>), String> {
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
    Ok((go, done))
}

/// The contenders' acquisition waits (milliseconds, sorted) and when the
/// herd's last finisher finished.
struct Waits {
    /// Every round's.
    all: Vec<u64>,
    /// Round 0's.
    herd: Vec<u64>,
    last: Timestamp,
}

impl Waits {
    fn of(done: &[Value], go: Timestamp) -> Waits {
        let mut last = go;
        let mut all = Vec::new();
        let mut herd = Vec::new();
        for child in done {
            for round in child["rounds"].as_array().into_iter().flatten() {
                let wait = round["wait_ms"].as_u64().unwrap_or(0);
                all.push(wait);
                if round["round"] == 0 {
                    herd.push(wait);
                    let finished = round["finished_at_ms"].as_i64().unwrap_or(0);
                    last = last.max(Timestamp(finished));
                }
            }
        }
        all.sort_unstable();
        herd.sort_unstable();
        Waits { all, herd, last }
    }
}

/// The herd's bound and what went into it.
struct Bound {
    bound: Millis,
    retry_jitter: Millis,
    rounds_to_finish: u64,
}

impl Bound {
    fn new(base: &HerdSpec, processes: u32, permits: u16) -> Bound {
        let rounds_to_finish = u64::from(processes).div_ceil(u64::from(permits.max(1)));
        // The start jitter, plus one waiter's pause at each of the
        // handoffs on the way to the last round.
        let retry_jitter =
            Millis(base.jitter_ms + rounds_to_finish.saturating_sub(1) * base.retry_max_ms);
        let bound = herd_bound(
            Millis(base.delay_ms),
            processes,
            permits,
            base.work(),
            retry_jitter,
        );
        Bound {
            bound,
            retry_jitter,
            rounds_to_finish,
        }
    }

    fn formula(&self, base: &HerdSpec, processes: u32, permits: u16) -> String {
        format!(
            "delay {} + ceil({processes}/{permits}) x work {} + retry_jitter {} \
             (start jitter {} + {} handoffs x retry_max {})",
            base.delay_ms,
            base.work().0,
            self.retry_jitter.0,
            base.jitter_ms,
            self.rounds_to_finish.saturating_sub(1),
            base.retry_max_ms
        )
    }
}

/// The `herd` shape's record.
#[derive(Serialize)]
struct HerdRecord {
    processes: u32,
    permits: u16,
    params: HerdSpec,
    work_ms: u64,
    holds_recorded: u64,
    holds_never_closed: u64,
    hold_mean_ms: f64,
    hold_longest_ms: f64,
    max_holders: u64,
    wait_p50_ms: u64,
    wait_p99_ms: u64,
    wait_max_ms: u64,
    herd_wait_p50_ms: u64,
    herd_wait_max_ms: u64,
    last_finisher_ms: u64,
    herd_bound_ms: u64,
    herd_bound_formula: String,
    ceiling: CeilingRecord,
    /// The contenders' own records ([`ContenderRecord`]).
    per_process: Vec<Value>,
}

fn verdicts(r: &HerdRecord) -> Vec<Verdict> {
    let (processes, permits, most) = (r.processes, r.permits, r.max_holders);
    vec![
        Verdict::new(
            format!("semaphore herd, {processes} processes, N = {permits}: most holders at once"),
            format!("<= {permits}"),
            format!("{most} ({} holds recorded)", r.holds_recorded),
            Some(most <= u64::from(permits) && r.holds_never_closed == 0),
        ),
        Verdict::new(
            "semaphore: acquisition wait p50 / p99".to_string(),
            "reported".to_string(),
            format!("{} / {} ms", r.wait_p50_ms, r.wait_p99_ms),
            None,
        ),
        Verdict::new(
            "herd: time to the last finisher".to_string(),
            format!("<= herd_bound = {} ms", r.herd_bound_ms),
            format!(
                "{} ms (holds took {:.0} ms on average against {} ms of work)",
                r.last_finisher_ms, r.hold_mean_ms, r.work_ms
            ),
            Some(r.last_finisher_ms <= r.herd_bound_ms),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    /// The keys the herd's `json!` wrote before it was typed (`params` is
    /// `HerdSpec`, serialised as it always was).
    #[test]
    fn herd_record_keeps_its_keys() {
        let record = HerdRecord {
            processes: 8,
            permits: 2,
            params: HerdSpec::defaults(8, 2, true),
            work_ms: 0,
            holds_recorded: 0,
            holds_never_closed: 0,
            hold_mean_ms: 0.0,
            hold_longest_ms: 0.0,
            max_holders: 0,
            wait_p50_ms: 0,
            wait_p99_ms: 0,
            wait_max_ms: 0,
            herd_wait_p50_ms: 0,
            herd_wait_max_ms: 0,
            last_finisher_ms: 0,
            herd_bound_ms: 0,
            herd_bound_formula: String::new(),
            ceiling: CeilingRecord::default(),
            per_process: Vec::new(),
        };
        let keys = [
            "processes",
            "permits",
            "params",
            "work_ms",
            "holds_recorded",
            "holds_never_closed",
            "hold_mean_ms",
            "hold_longest_ms",
            "max_holders",
            "wait_p50_ms",
            "wait_p99_ms",
            "wait_max_ms",
            "herd_wait_p50_ms",
            "herd_wait_max_ms",
            "last_finisher_ms",
            "herd_bound_ms",
            "herd_bound_formula",
            "ceiling",
            "ceiling.measured",
            "ceiling.judged_against_jobs_per_s",
            "per_process",
        ];
        let paths: Vec<String> = key_paths(&record)
            .into_iter()
            .filter(|k| !k.starts_with("params."))
            .collect();
        assert_eq!(paths, sorted(&keys));
    }

    /// The keys of a contender's `json!` before it was typed.
    #[test]
    fn contender_record_keeps_its_keys() {
        let record = ContenderRecord {
            rounds: vec![RoundRecord::default()],
            ..ContenderRecord::default()
        };
        let keys = [
            "index",
            "pid",
            "rounds",
            "rounds[].round",
            "rounds[].slot",
            "rounds[].started_at_ms",
            "rounds[].acquired_at_ms",
            "rounds[].finished_at_ms",
            "rounds[].wait_ms",
        ];
        assert_eq!(key_paths(&record), sorted(&keys));
    }
}
