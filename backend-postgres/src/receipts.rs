//! The worker's batches — heartbeat, complete, fail, snooze, wait-external —
//! each one statement (one round trip), guarded by `(job_id, epoch)` and
//! state, answering per receipt in input order.
//!
//! The statement locks the batch's rows in id order (`FOR UPDATE`, so
//! concurrent batches cannot deadlock and the answer is about the row as it
//! is, not as a snapshot saw it), picks per job the *winner* — the first
//! receipt in the batch that carries the current epoch of a running job —
//! writes the winners, and returns for every item the job's current epoch
//! and state, the winner's position and the state it left. From those, each
//! item gets exactly the answer the world gives it when it applies the batch
//! item by item: `UnknownJob`, `StaleEpoch { current, presented }`, the
//! winner's success, or `NotRunning { state }` with the state the earlier
//! item (or an earlier command) left. A rejected item writes nothing.
//!
//! Retry backoff is the core's own [`Backoff::delay`]: it depends on the
//! row's attempt, which only the statement knows, so Rust passes each
//! failure's delay for every attempt level the policy distinguishes (the
//! delay stops changing once the cap is reached, after at most 64 levels),
//! and the statement indexes that table with the row's attempt.

use sqlx::postgres::PgRow;
use sqlx::Row;
use weir::BackendError;
use weir_core::{
    Attempt, Backoff, BatchResult, Epoch, ErrorRecord, FailOutcome, Failure, Millis, Receipt,
    Reject, StateName, Timestamp,
};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{corrupt, fail_reason, i64_to_u64, span, u64_to_i64, RetryKind};

/// `$1` now; `$2` job ids, `$3` epochs, `$4` a span per item (delay,
/// timeout), `$5` a retry kind per item, `$6` a message per item; `$7` the
/// flat backoff table, `$8` its levels per item; `$9` the channel, `$10`
/// whether to notify; `$11` each item's jitter draw (for a job with a
/// backoff of its own), `$12` how many errors a job keeps.
const PREFIX: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now),
params AS (SELECT $7::bigint[] AS delays, $8::integer AS levels, $9::text AS channel,
                  $10::boolean AS notify, $11::text[]::numeric[] AS draws,
                  $12::integer AS kept),
input AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
        WITH ORDINALITY AS i(id, epoch, arg_ms, retry, message, ord)
    WHERE id IS NOT NULL
),
locked AS (
    SELECT j.id, j.epoch, j.state, j.attempt, j.max_attempts, j.backoff_base_ms,
           j.backoff_factor, j.backoff_cap_ms, j.backoff_jitter
    FROM {s}.jobs j
    WHERE j.id IN (SELECT id FROM input)
    ORDER BY j.id
    FOR UPDATE
),
winner AS (
    SELECT DISTINCT ON (i.id) i.id, i.ord FROM input i
    JOIN locked l ON l.id = i.id AND l.epoch = i.epoch AND l.state = 'running'
    ORDER BY i.id, i.ord
),";

/// Clears what only a running job has.
const LEAVE_RUNNING: &str = "holder = NULL, claimed_at = NULL, heartbeat_at = NULL";

const SUFFIX: &str = "
notified AS (
    SELECT pg_notify(p.channel, 'j:' || q.queue)
    FROM (SELECT DISTINCT queue FROM done WHERE state = 'available') q, params p
    WHERE p.notify
)
SELECT i.ord, l.epoch AS current_epoch, l.state AS current_state, w.ord AS winner_ord,
       d.state AS new_state, d.run_at AS new_run_at, d.fail_reason AS new_reason,
       (SELECT count(*) FROM notified) AS notified
FROM input i
LEFT JOIN locked l ON l.id = i.id
LEFT JOIN winner w ON w.id = i.id
LEFT JOIN done d ON d.id = i.id
ORDER BY i.ord";

const RETURNING: &str = "RETURNING j.id, j.queue, j.state, j.run_at, j.fail_reason";

fn heartbeat_sql() -> String {
    format!(
        "done AS (
            UPDATE {{s}}.jobs j SET heartbeat_at = greatest(j.heartbeat_at, c.now)
            FROM winner w, clock c WHERE j.id = w.id
            {RETURNING}
        ),"
    )
}

fn complete_sql() -> String {
    format!(
        "done AS (
            UPDATE {{s}}.jobs j
            SET state = 'completed', finished_at = c.now, deadline = NULL, {LEAVE_RUNNING}
            FROM winner w, clock c WHERE j.id = w.id
            {RETURNING}
        ),"
    )
}

fn snooze_sql() -> String {
    // Job::snooze: scheduled at now + delay when that is in the future,
    // else available now; the attempt is refunded.
    format!(
        "done AS (
            UPDATE {{s}}.jobs j
            SET attempt = j.attempt - 1,
                state = CASE WHEN {{s}}.plus_ms(c.now, i.arg_ms) > c.now
                             THEN 'scheduled' ELSE 'available' END,
                run_at = greatest({{s}}.plus_ms(c.now, i.arg_ms), c.now),
                deadline = NULL, {LEAVE_RUNNING}
            FROM winner w JOIN input i ON i.ord = w.ord, clock c WHERE j.id = w.id
            {RETURNING}
        ),"
    )
}

fn wait_sql() -> String {
    // Job::wait_external: the deadline is never before now.
    format!(
        "done AS (
            UPDATE {{s}}.jobs j
            SET state = 'waiting_external', waiting_since = c.now,
                deadline = greatest({{s}}.plus_ms(c.now, i.arg_ms), c.now), {LEAVE_RUNNING}
            FROM winner w JOIN input i ON i.ord = w.ord, clock c WHERE j.id = w.id
            {RETURNING}
        ),"
    )
}

fn fail_sql() -> String {
    // Job::fail: record the error at the current attempt, keeping the
    // newest `kept` (Job::record_error); `never` fails at once; otherwise
    // retry after the delay unless attempts are used up. The delay is the
    // job's own backoff where it has one (Job::backoff_or), else the
    // configured one's table.
    format!(
        "decided AS (
            SELECT w.id, i.message, l.attempt,
                   CASE WHEN i.retry = 'never' THEN 'terminal'
                        WHEN l.attempt >= l.max_attempts THEN 'attempts_exhausted' END AS reason,
                   CASE WHEN i.retry = 'after' THEN i.arg_ms
                        WHEN l.backoff_base_ms IS NOT NULL THEN {{s}}.backoff_delay(
                            l.backoff_base_ms, l.backoff_factor, l.backoff_cap_ms,
                            l.backoff_jitter, l.attempt, p.draws[w.ord])
                        ELSE p.delays[((w.ord - 1) * p.levels
                                       + least(greatest(l.attempt, 1), p.levels))::integer]
                   END AS delay
            FROM winner w JOIN input i ON i.ord = w.ord JOIN locked l ON l.id = w.id, params p
        ),
        done AS (
            UPDATE {{s}}.jobs j
            SET state = CASE WHEN x.reason IS NULL THEN 'retryable' ELSE 'failed' END,
                run_at = CASE WHEN x.reason IS NULL THEN {{s}}.plus_ms(c.now, x.delay) END,
                finished_at = CASE WHEN x.reason IS NULL THEN NULL ELSE c.now END,
                fail_reason = x.reason, deadline = NULL, {LEAVE_RUNNING},
                errors = (CASE WHEN jsonb_array_length(j.errors) >= p.kept
                               THEN j.errors - 0 ELSE j.errors END)
                         || jsonb_build_array(jsonb_build_object(
                                'attempt', x.attempt, 'at', c.now, 'message', x.message))
            FROM decided x, clock c, params p WHERE j.id = x.id
            {RETURNING}
        ),"
    )
}

/// Completes, without locking first, every receipt that holds the current
/// epoch of a running job: `$1` now, `$2` ids, `$3` epochs (sorted by id,
/// so rows are taken in id order as the full statement takes them). The
/// guard is in the `UPDATE` itself, so a row that changed meanwhile is
/// re-checked (READ COMMITTED re-evaluates the `WHERE` on the newest
/// version) and left alone. Returns the receipts it completed. No
/// `FOR UPDATE` before the write means one heap lock record less per job
/// and no per-item answer to build: the common case, where every result
/// is accepted.
const COMPLETE_FAST_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now)
UPDATE {s}.jobs j
SET state = 'completed', finished_at = c.now, deadline = NULL,
    holder = NULL, claimed_at = NULL, heartbeat_at = NULL
FROM unnest($2::bigint[], $3::bigint[]) AS i(id, epoch), clock c
WHERE j.id = i.id AND j.epoch = i.epoch AND j.state = 'running'
RETURNING j.id, j.epoch";

/// The statement templates of this module, for the check that every SQL
/// mutation still finds its fragment.
#[cfg(all(test, feature = "mutants"))]
pub(crate) fn mutated_statements() -> Vec<String> {
    let mut all: Vec<String> = [
        heartbeat_sql(),
        complete_sql(),
        snooze_sql(),
        wait_sql(),
        fail_sql(),
    ]
    .into_iter()
    .map(|body| format!("{PREFIX}{body}{SUFFIX}"))
    .collect();
    all.push(COMPLETE_FAST_SQL.to_string());
    all
}

/// How many attempt levels `backoff` distinguishes: from this attempt on,
/// [`Backoff::delay`] no longer depends on the attempt (the cap is reached,
/// or the delay stopped growing). At most 64.
pub(crate) fn backoff_levels(backoff: &Backoff) -> u32 {
    let mut level = 1;
    while level < 64 {
        let here = backoff.delay(Attempt(level), 0);
        let next = backoff.delay(Attempt(level + 1), 0);
        if here == backoff.cap() || here == next {
            break;
        }
        level += 1;
    }
    level
}

/// What one item carries besides its receipt.
#[derive(Default)]
struct Args {
    span_ms: Vec<Option<i64>>,
    retry: Vec<Option<&'static str>>,
    message: Vec<Option<String>>,
    delays: Vec<i64>,
    levels: i32,
    draws: Vec<String>,
}

impl PgBackend {
    pub(crate) async fn heartbeat(
        &self,
        now: Option<Timestamp>,
        receipts: Vec<Receipt>,
    ) -> Result<BatchResult<()>, BackendError> {
        self.receipt_batch(now, receipts, Args::default(), &heartbeat_sql())
            .await
    }

    /// Two steps, each one statement: the guarded `UPDATE` of
    /// [`COMPLETE_FAST_SQL`] for every receipt at once, then — only if some
    /// were not completed (stale, duplicate, not running, unknown) — the
    /// full per-item statement for those alone, in their order. The
    /// answers are the world's: an item succeeds exactly when its job is
    /// running at its epoch and no earlier item of the batch completed it
    /// (complete never changes an epoch, so the first step completes just
    /// those), and every other item is answered against the state the
    /// first step left, as the world answers it after the earlier items.
    pub(crate) async fn complete(
        &self,
        now: Option<Timestamp>,
        receipts: Vec<Receipt>,
    ) -> Result<BatchResult<()>, BackendError> {
        if let Err(reject) = self.check_batch_len(receipts.len()) {
            return Ok(Err(reject));
        }
        if receipts.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut completed = self.complete_fast(now, &receipts).await?;
        let mut answers: Vec<Option<Result<(), Reject>>> = vec![None; receipts.len()];
        let mut rest = Vec::new();
        for (i, receipt) in receipts.iter().enumerate() {
            // The first item with a completed receipt is the one that
            // completed it; any later copy is answered by the full step.
            if completed.remove(receipt) {
                answers[i] = Some(Ok(()));
            } else {
                rest.push(i);
            }
        }
        if !rest.is_empty() {
            let leftover: Vec<Receipt> = rest.iter().map(|&i| receipts[i]).collect();
            // The first step has committed: if it completed anything, an
            // error now does not mean "not applied" but "part of it was".
            let partial = answers.iter().any(|a| matches!(a, Some(Ok(()))));
            let full = self
                .receipt_batch(now, leftover, Args::default(), &complete_sql())
                .await
                .map_err(|error| match error {
                    BackendError::Unavailable(why) | BackendError::Refused(why) if partial => {
                        BackendError::Lost(format!(
                            "{why} (after the batch's first step had completed some receipts)"
                        ))
                    }
                    other => other,
                })?;
            let full = match full {
                Ok(items) => items,
                Err(reject) => return Ok(Err(reject)),
            };
            for (i, answer) in rest.into_iter().zip(full) {
                answers[i] = Some(answer);
            }
        }
        Ok(Ok(answers
            .into_iter()
            .map(|a| a.expect("every item answered"))
            .collect()))
    }

    /// [`COMPLETE_FAST_SQL`]: the guarded `UPDATE` of every receipt at
    /// once (each once, in key order); the receipts it completed.
    async fn complete_fast(
        &self,
        now: Option<Timestamp>,
        receipts: &[Receipt],
    ) -> Result<std::collections::BTreeSet<Receipt>, BackendError> {
        let mut sorted: Vec<Receipt> = receipts.to_vec();
        sorted.sort();
        sorted.dedup();
        let ids: Vec<i64> = sorted.iter().map(|r| r.job.0).collect();
        let epochs: Vec<i64> = sorted.iter().map(|r| u64_to_i64(r.epoch.0)).collect();
        let rows = sqlx::query(&self.sql(COMPLETE_FAST_SQL))
            .bind(now.map(|t| t.0))
            .bind(ids)
            .bind(epochs)
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        let mut completed = std::collections::BTreeSet::new();
        for row in &rows {
            let id: i64 = row.try_get("id").map_err(db)?;
            let epoch: i64 = row.try_get("epoch").map_err(db)?;
            completed.insert(Receipt {
                job: weir_core::JobId(id),
                epoch: Epoch(i64_to_u64(epoch)),
            });
        }
        Ok(completed)
    }

    pub(crate) async fn snooze(
        &self,
        now: Option<Timestamp>,
        snoozes: Vec<(Receipt, Millis)>,
    ) -> Result<BatchResult<()>, BackendError> {
        let (receipts, spans): (Vec<Receipt>, Vec<Option<i64>>) =
            snoozes.into_iter().map(|(r, d)| (r, Some(span(d)))).unzip();
        let args = Args {
            span_ms: spans,
            ..Args::default()
        };
        self.receipt_batch(now, receipts, args, &snooze_sql()).await
    }

    pub(crate) async fn wait_external(
        &self,
        now: Option<Timestamp>,
        waits: Vec<(Receipt, Millis)>,
    ) -> Result<BatchResult<()>, BackendError> {
        let (receipts, spans): (Vec<Receipt>, Vec<Option<i64>>) =
            waits.into_iter().map(|(r, t)| (r, Some(span(t)))).unzip();
        let args = Args {
            span_ms: spans,
            ..Args::default()
        };
        self.receipt_batch(now, receipts, args, &wait_sql()).await
    }

    pub(crate) async fn fail(
        &self,
        now: Option<Timestamp>,
        failures: Vec<Failure>,
    ) -> Result<BatchResult<FailOutcome>, BackendError> {
        let n = failures.len();
        let backoff = self.inner.config.world.backoff;
        let levels = backoff_levels(&backoff);
        let mut args = Args {
            levels: levels as i32,
            ..Args::default()
        };
        let mut receipts = Vec::with_capacity(n);
        for f in failures {
            receipts.push(f.receipt);
            let (retry, delay) = RetryKind::of(f.error.retry);
            args.retry.push(Some(retry.as_sql()));
            args.span_ms.push(delay.map(span));
            args.message
                .push(Some(ErrorRecord::clean(&f.error.message)));
            args.delays
                .extend((1..=levels).map(|level| span(backoff.delay(Attempt(level), f.draw))));
            args.draws.push(f.draw.to_string());
        }
        let rows = self
            .receipt_batch_rows(now, &receipts, args, &fail_sql())
            .await?;
        let rows = match rows {
            Ok(rows) => rows,
            Err(reject) => return Ok(Err(reject)),
        };
        let mut out = Vec::with_capacity(n);
        for (row, receipt) in rows.iter().zip(&receipts) {
            let accepted = accepted(row, receipt).map_err(db)?;
            out.push(match accepted {
                Ok(Accepted::Won(after)) => Ok(fail_outcome(row, after).map_err(db)?),
                Ok(Accepted::Repeated) => {
                    return Err(db(corrupt("a failed job was left running")));
                }
                Err(reject) => Err(reject),
            });
        }
        Ok(Ok(out))
    }

    async fn receipt_batch(
        &self,
        now: Option<Timestamp>,
        receipts: Vec<Receipt>,
        args: Args,
        body: &str,
    ) -> Result<BatchResult<()>, BackendError> {
        let rows = match self.receipt_batch_rows(now, &receipts, args, body).await? {
            Ok(rows) => rows,
            Err(reject) => return Ok(Err(reject)),
        };
        let mut out = Vec::with_capacity(receipts.len());
        for (row, receipt) in rows.iter().zip(&receipts) {
            out.push(accepted(row, receipt).map_err(db)?.map(|_| ()));
        }
        Ok(Ok(out))
    }

    async fn receipt_batch_rows(
        &self,
        now: Option<Timestamp>,
        receipts: &[Receipt],
        args: Args,
        body: &str,
    ) -> Result<Result<Vec<PgRow>, Reject>, BackendError> {
        if let Err(reject) = self.check_batch_len(receipts.len()) {
            return Ok(Err(reject));
        }
        if receipts.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let ids: Vec<i64> = receipts.iter().map(|r| r.job.0).collect();
        let epochs: Vec<i64> = receipts.iter().map(|r| u64_to_i64(r.epoch.0)).collect();
        let sql = self.sql(&format!("{PREFIX}{body}{SUFFIX}"));
        let config = &self.inner.config;
        let rows = sqlx::query(&sql)
            .bind(now.map(|t| t.0))
            .bind(ids)
            .bind(epochs)
            .bind(args.span_ms)
            .bind(args.retry)
            .bind(args.message)
            .bind(args.delays)
            .bind(args.levels)
            .bind(config.schema.channel())
            .bind(config.notify)
            .bind(args.draws)
            .bind(ErrorRecord::KEPT as i32)
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        if rows.len() != receipts.len() {
            return Err(BackendError::Unavailable(format!(
                "a batch of {} receipts answered {} rows",
                receipts.len(),
                rows.len()
            )));
        }
        Ok(Ok(rows))
    }
}

fn state(name: &str) -> Result<StateName, sqlx::Error> {
    StateName::parse(name).ok_or_else(|| sqlx::Error::Decode(format!("state {name:?}").into()))
}

/// An item the world accepts.
enum Accepted {
    /// The item's batch winner: the job was left in this state.
    Won(StateName),
    /// A later item of the same job, after a winner that left the job
    /// running (a heartbeat): accepted too.
    Repeated,
}

/// Whether the world accepts one item, or its refusal; see the module docs.
fn accepted(row: &PgRow, receipt: &Receipt) -> Result<Result<Accepted, Reject>, sqlx::Error> {
    let ord: i64 = row.try_get("ord")?;
    let Some(current) = row.try_get::<Option<i64>, _>("current_epoch")? else {
        return Ok(Err(Reject::UnknownJob { job: receipt.job }));
    };
    let current = Epoch(i64_to_u64(current));
    if current != receipt.epoch {
        return Ok(Err(Reject::StaleEpoch {
            current,
            presented: receipt.epoch,
        }));
    }
    let Some(winner) = row.try_get::<Option<i64>, _>("winner_ord")? else {
        let now: String = row.try_get("current_state")?;
        return Ok(Err(Reject::NotRunning {
            state: state(&now)?,
        }));
    };
    let after: String = row.try_get("new_state")?;
    let after = state(&after)?;
    if winner != ord {
        // An earlier item of this batch already moved the job; a
        // heartbeat leaves it running, so a second one succeeds too.
        if after == StateName::Running {
            return Ok(Ok(Accepted::Repeated));
        }
        return Ok(Err(Reject::NotRunning { state: after }));
    }
    Ok(Ok(Accepted::Won(after)))
}

/// What a winning failure did: a retry at its new `run_at`, or a failure
/// for good with its stored reason.
fn fail_outcome(row: &PgRow, after: StateName) -> Result<FailOutcome, sqlx::Error> {
    Ok(match after {
        StateName::Retryable => FailOutcome::Retrying {
            run_at: Timestamp(row.try_get("new_run_at")?),
        },
        _ => {
            let reason: String = row.try_get("new_reason")?;
            FailOutcome::Failed(fail_reason(&reason)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_levels_stop_where_the_delay_stops_changing() {
        assert_eq!(backoff_levels(&Backoff::constant(Millis(5))), 1);
        // 1 s doubling to 1 h: 2^12 s > 3600 s, so level 13 is capped.
        assert_eq!(backoff_levels(&Backoff::standard()), 13);
        let b = Backoff::new(Millis(100), 3, Millis(1000), 0).unwrap();
        assert_eq!(backoff_levels(&b), 4);
        let levels = backoff_levels(&b);
        for attempt in levels..levels + 50 {
            for draw in [0, 1, 99, u64::MAX] {
                assert_eq!(
                    b.delay(Attempt(attempt), draw),
                    b.delay(Attempt(levels), draw)
                );
            }
        }
    }
}
