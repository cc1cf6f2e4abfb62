//! Rows ⇄ the core's values: a job row is a [`Job`], a claimer row a
//! [`ClaimerLease`], a slot row a [`Slot`].
//!
//! Counters and process ids are `u64` in the core and `bigint` here: they
//! are stored bit for bit (`as i64`), so every value round-trips. Spans are
//! `u64` milliseconds; one longer than `i64::MAX` ms is stored as `i64::MAX`,
//! which changes no decision because `Timestamp::plus` saturates there too.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::Row;
use weir_core::{
    Attempt, Backoff, ClaimerLease, ClaimerSlot, ClaimerTable, Epoch, ErrorRecord, FailReason,
    Hold, Job, JobId, JobState, Kind, LeaseEpoch, Millis, Payload, Priority, ProcessId, QueueName,
    Retry, Semaphore, Slot, SlotEpoch, SlotHolder, Timestamp, UniqueKey,
};

/// The columns [`job_from_row`] reads, in `SELECT` form (table alias `j`).
pub(crate) const JOB_COLUMNS: &str = "j.id, j.queue, j.kind, j.payload, j.priority, j.attempt, \
     j.max_attempts, j.epoch, j.timeout_ms, j.unique_key, j.created_at, j.state, j.run_at, \
     j.holder, j.claimed_at, j.heartbeat_at, j.deadline, j.waiting_since, j.finished_at, \
     j.fail_reason, j.errors::text AS errors, j.backoff_base_ms, j.backoff_factor, \
     j.backoff_cap_ms, j.backoff_jitter";

pub(crate) fn u64_to_i64(v: u64) -> i64 {
    v as i64
}

pub(crate) fn i64_to_u64(v: i64) -> u64 {
    v as u64
}

/// A span for SQL: `u64` milliseconds clamped to `i64::MAX`.
pub(crate) fn span(m: Millis) -> i64 {
    i64::try_from(m.0).unwrap_or(i64::MAX)
}

pub(crate) fn corrupt(what: impl Into<String>) -> sqlx::Error {
    sqlx::Error::Decode(what.into().into())
}

fn need<T>(v: Option<T>, state: &str, column: &str) -> Result<T, sqlx::Error> {
    v.ok_or_else(|| corrupt(format!("a {state} job has no {column}")))
}

/// Reads one job row (selected with [`JOB_COLUMNS`]).
pub(crate) fn job_from_row(row: &PgRow) -> Result<Job, sqlx::Error> {
    let ts = |c: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(c)?.map(Timestamp))
    };
    let state_name: String = row.try_get("state")?;
    let s = state_name.as_str();
    let state = match s {
        "scheduled" => JobState::Scheduled {
            run_at: need(ts("run_at")?, s, "run_at")?,
        },
        "available" => JobState::Available {
            run_at: need(ts("run_at")?, s, "run_at")?,
        },
        "retryable" => JobState::Retryable {
            run_at: need(ts("run_at")?, s, "run_at")?,
        },
        "running" => JobState::Running {
            holder: ProcessId(i64_to_u64(need(row.try_get("holder")?, s, "holder")?)),
            claimed_at: need(ts("claimed_at")?, s, "claimed_at")?,
            heartbeat_at: need(ts("heartbeat_at")?, s, "heartbeat_at")?,
            deadline: need(ts("deadline")?, s, "deadline")?,
        },
        "waiting_external" => JobState::WaitingExternal {
            since: need(ts("waiting_since")?, s, "waiting_since")?,
            deadline: need(ts("deadline")?, s, "deadline")?,
        },
        "completed" => JobState::Completed {
            at: need(ts("finished_at")?, s, "finished_at")?,
        },
        "failed" => {
            let reason: String = need(row.try_get("fail_reason")?, s, "fail_reason")?;
            JobState::Failed {
                at: need(ts("finished_at")?, s, "finished_at")?,
                reason: fail_reason(&reason)?,
            }
        }
        "cancelled" => JobState::Cancelled {
            at: need(ts("finished_at")?, s, "finished_at")?,
        },
        other => return Err(corrupt(format!("unknown job state {other:?}"))),
    };
    let errors = errors_from_json(&row.try_get::<String, _>("errors")?)?;
    let backoff = backoff_from_row(row)?;
    let unique_key = match row.try_get::<Option<String>, _>("unique_key")? {
        None => None,
        Some(key) => Some(UniqueKey::new(key).map_err(|e| corrupt(e.to_string()))?),
    };
    Ok(Job {
        id: JobId(row.try_get("id")?),
        queue: QueueName::new(row.try_get::<String, _>("queue")?)
            .map_err(|e| corrupt(e.to_string()))?,
        kind: Kind::new(row.try_get::<String, _>("kind")?).map_err(|e| corrupt(e.to_string()))?,
        payload: Payload(row.try_get("payload")?),
        priority: Priority(row.try_get("priority")?),
        attempt: Attempt(to_u32(row.try_get("attempt")?)?),
        max_attempts: Attempt(to_u32(row.try_get("max_attempts")?)?),
        epoch: Epoch(i64_to_u64(row.try_get("epoch")?)),
        timeout: Millis(i64_to_u64(row.try_get("timeout_ms")?)),
        unique_key,
        created_at: Timestamp(row.try_get("created_at")?),
        backoff,
        errors,
        state,
    })
}

/// One entry of the `errors` column: an [`ErrorRecord`] in the stored
/// layout, which stays as it is whatever the core's serde form becomes.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredError<'a> {
    attempt: u32,
    at: i64,
    message: std::borrow::Cow<'a, str>,
}

/// The `errors` column as JSON text, oldest first.
pub(crate) fn errors_to_json(errors: &[ErrorRecord]) -> String {
    let stored: Vec<StoredError<'_>> = errors
        .iter()
        .map(|e| StoredError {
            attempt: e.attempt.0,
            at: e.at.0,
            message: std::borrow::Cow::Borrowed(&e.message),
        })
        .collect();
    serde_json::to_string(&stored).expect("a list of numbers and strings serialises")
}

fn errors_from_json(text: &str) -> Result<Vec<ErrorRecord>, sqlx::Error> {
    let stored: Vec<StoredError<'_>> = serde_json::from_str(text)
        .map_err(|e| corrupt(format!("a job's errors are not a list of errors: {e}")))?;
    Ok(stored
        .into_iter()
        .map(|e| ErrorRecord {
            attempt: Attempt(e.attempt),
            at: Timestamp(e.at),
            message: e.message.into_owned(),
        })
        .collect())
}

/// A job's own backoff from its four columns (all set, or none).
fn backoff_from_row(row: &PgRow) -> Result<Option<Backoff>, sqlx::Error> {
    let base: Option<i64> = row.try_get("backoff_base_ms")?;
    let factor: Option<i64> = row.try_get("backoff_factor")?;
    let cap: Option<i64> = row.try_get("backoff_cap_ms")?;
    let jitter: Option<i16> = row.try_get("backoff_jitter")?;
    let (Some(base), Some(factor), Some(cap), Some(jitter)) = (base, factor, cap, jitter) else {
        return Ok(None);
    };
    let millis = |v: i64| u64::try_from(v).map(Millis);
    let parts = (
        millis(base),
        u32::try_from(factor),
        millis(cap),
        u16::try_from(jitter),
    );
    let (Ok(base), Ok(factor), Ok(cap), Ok(jitter)) = parts else {
        return Err(corrupt("a job's backoff has a negative part"));
    };
    Backoff::new(base, factor, cap, jitter)
        .map(Some)
        .map_err(|e| corrupt(format!("a job's stored backoff is invalid: {e}")))
}

/// Jobs' own backoffs as the four columns' values, as parallel arrays
/// for an insert (all `None` for a job without one).
#[derive(Default)]
pub(crate) struct BackoffColumns {
    pub base_ms: Vec<Option<i64>>,
    pub factor: Vec<Option<i64>>,
    pub cap_ms: Vec<Option<i64>>,
    pub jitter: Vec<Option<i16>>,
}

impl BackoffColumns {
    pub(crate) fn push(&mut self, backoff: Option<&Backoff>) {
        self.base_ms.push(backoff.map(|b| span(b.base())));
        self.factor.push(backoff.map(|b| i64::from(b.factor())));
        self.cap_ms.push(backoff.map(|b| span(b.cap())));
        // At most 1000: `Backoff::new` refuses more.
        self.jitter
            .push(backoff.map(|b| b.jitter_permille() as i16));
    }
}

fn to_u32(v: i32) -> Result<u32, sqlx::Error> {
    u32::try_from(v).map_err(|_| corrupt(format!("negative counter {v}")))
}

/// The columns of a job that a transition may change, as parallel arrays
/// for one `UPDATE ... FROM unnest(...)`.
#[derive(Default)]
pub(crate) struct JobWrites {
    pub id: Vec<i64>,
    pub attempt: Vec<i32>,
    pub epoch: Vec<i64>,
    pub state: Vec<String>,
    pub run_at: Vec<Option<i64>>,
    pub holder: Vec<Option<i64>>,
    pub claimed_at: Vec<Option<i64>>,
    pub heartbeat_at: Vec<Option<i64>>,
    pub deadline: Vec<Option<i64>>,
    pub waiting_since: Vec<Option<i64>>,
    pub finished_at: Vec<Option<i64>>,
    pub fail_reason: Vec<Option<String>>,
    pub errors: Vec<String>,
}

/// Writes back what a transition may change (`$1`..`$13`).
pub(crate) const JOB_WRITE_SQL: &str = "UPDATE {s}.jobs j SET
        attempt = u.attempt, epoch = u.epoch, state = u.state, run_at = u.run_at,
        holder = u.holder, claimed_at = u.claimed_at, heartbeat_at = u.heartbeat_at,
        deadline = u.deadline, waiting_since = u.waiting_since, finished_at = u.finished_at,
        fail_reason = u.fail_reason, errors = u.errors::jsonb
    FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::text[], $5::bigint[],
                $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                $11::bigint[], $12::text[], $13::text[])
        AS u(id, attempt, epoch, state, run_at, holder, claimed_at, heartbeat_at, deadline,
             waiting_since, finished_at, fail_reason, errors)
    WHERE j.id = u.id";

impl JobWrites {
    pub(crate) fn push(&mut self, job: &Job) {
        let mut run_at = None;
        let mut holder = None;
        let mut claimed_at = None;
        let mut heartbeat_at = None;
        let mut deadline = None;
        let mut waiting_since = None;
        let mut finished_at = None;
        let mut fail_reason = None;
        match job.state {
            JobState::Scheduled { run_at: at }
            | JobState::Available { run_at: at }
            | JobState::Retryable { run_at: at } => run_at = Some(at.0),
            JobState::Running {
                holder: h,
                claimed_at: c,
                heartbeat_at: b,
                deadline: d,
            } => {
                holder = Some(u64_to_i64(h.0));
                claimed_at = Some(c.0);
                heartbeat_at = Some(b.0);
                deadline = Some(d.0);
            }
            JobState::WaitingExternal { since, deadline: d } => {
                waiting_since = Some(since.0);
                deadline = Some(d.0);
            }
            JobState::Completed { at } | JobState::Cancelled { at } => finished_at = Some(at.0),
            JobState::Failed { at, reason } => {
                finished_at = Some(at.0);
                fail_reason = Some(fail_reason_str(reason).to_string());
            }
        }
        self.id.push(job.id.0);
        self.attempt.push(job.attempt.0 as i32);
        self.epoch.push(u64_to_i64(job.epoch.0));
        self.state.push(job.state_name().as_str().to_string());
        self.run_at.push(run_at);
        self.holder.push(holder);
        self.claimed_at.push(claimed_at);
        self.heartbeat_at.push(heartbeat_at);
        self.deadline.push(deadline);
        self.waiting_since.push(waiting_since);
        self.finished_at.push(finished_at);
        self.fail_reason.push(fail_reason);
        self.errors.push(errors_to_json(&job.errors));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub(crate) fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.epoch)
            .bind(self.state)
            .bind(self.run_at)
            .bind(self.holder)
            .bind(self.claimed_at)
            .bind(self.heartbeat_at)
            .bind(self.deadline)
            .bind(self.waiting_since)
            .bind(self.finished_at)
            .bind(self.fail_reason)
            .bind(self.errors)
    }
}

/// A stored `fail_reason`, the inverse of [`fail_reason_str`].
pub(crate) fn fail_reason(stored: &str) -> Result<FailReason, sqlx::Error> {
    match stored {
        "attempts_exhausted" => Ok(FailReason::AttemptsExhausted),
        "terminal" => Ok(FailReason::Terminal),
        other => Err(corrupt(format!("unknown fail_reason {other:?}"))),
    }
}

/// How a failure asks to be retried, as the fail statement reads it (its
/// `retry` column, beside the delay in `arg_ms`): the core's [`Retry`]
/// without its delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryKind {
    /// [`Retry::Never`]: fail for good at once.
    Never,
    /// [`Retry::After`]: retry after the failure's own delay.
    After,
    /// [`Retry::Backoff`]: retry after the backoff policy's delay.
    Backoff,
}

impl RetryKind {
    /// The kind of `retry`, and the delay it carries, if any.
    pub(crate) fn of(retry: Retry) -> (RetryKind, Option<Millis>) {
        match retry {
            Retry::Never => (RetryKind::Never, None),
            Retry::After(delay) => (RetryKind::After, Some(delay)),
            Retry::Backoff => (RetryKind::Backoff, None),
        }
    }

    /// The value the fail statement compares (`i.retry = 'never'`).
    pub(crate) fn as_sql(self) -> &'static str {
        match self {
            RetryKind::Never => "never",
            RetryKind::After => "after",
            RetryKind::Backoff => "backoff",
        }
    }
}

pub(crate) fn fail_reason_str(reason: FailReason) -> &'static str {
    match reason {
        FailReason::AttemptsExhausted => "attempts_exhausted",
        FailReason::Terminal => "terminal",
        // `FailReason` is non-exhaustive; a new reason needs a migration
        // of the CHECK constraint before it can be stored.
        #[allow(unreachable_patterns)]
        _ => "terminal",
    }
}

/// Reads one claimer lease row (`slot, owner, lease_epoch, last_claimed_at,
/// expires_at`).
pub(crate) fn lease_from_row(row: &PgRow) -> Result<(ClaimerSlot, ClaimerLease), sqlx::Error> {
    let slot: i32 = row.try_get("slot")?;
    let slot = u16::try_from(slot).map_err(|_| corrupt(format!("claimer slot {slot}")))?;
    Ok((
        ClaimerSlot(slot),
        ClaimerLease {
            owner: row
                .try_get::<Option<i64>, _>("owner")?
                .map(|p| ProcessId(i64_to_u64(p))),
            lease_epoch: LeaseEpoch(i64_to_u64(row.try_get("lease_epoch")?)),
            last_claimed_at: Timestamp(row.try_get("last_claimed_at")?),
            expires_at: Timestamp(row.try_get("expires_at")?),
        },
    ))
}

/// Rebuilds a [`ClaimerTable`] from its rows.
///
/// The core has no public constructor from stored slots, so this goes
/// through the table's serde form (a `slots` map), which is its exact
/// state. See the report: `ClaimerTable::from_slots` would remove this.
pub(crate) fn claimer_table(slots: BTreeMap<ClaimerSlot, ClaimerLease>) -> ClaimerTable {
    let slots: serde_json::Map<String, serde_json::Value> = slots
        .into_iter()
        .map(|(slot, lease)| {
            let lease = serde_json::to_value(lease).expect("a lease serialises");
            (slot.0.to_string(), lease)
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "slots": slots }))
        .expect("the serde form of a claimer table is {slots: {slot: lease}}")
}

/// Reads one semaphore slot row (`slot, epoch, holder, lease_expires_at`).
pub(crate) fn slot_from_row(row: &PgRow) -> Result<(u16, Slot), sqlx::Error> {
    let index: i32 = row.try_get("slot")?;
    let index = u16::try_from(index).map_err(|_| corrupt(format!("semaphore slot {index}")))?;
    let held = row
        .try_get::<Option<i64>, _>("holder")?
        .map(|holder| -> Result<SlotHolder, sqlx::Error> {
            let hold = match row.try_get::<Option<i64>, _>("lease_expires_at")? {
                None => Hold::Session,
                Some(at) => Hold::Lease {
                    expires_at: Timestamp(at),
                },
            };
            Ok(SlotHolder {
                holder: ProcessId(i64_to_u64(holder)),
                hold,
            })
        })
        .transpose()?;
    Ok((
        index,
        Slot {
            epoch: SlotEpoch(i64_to_u64(row.try_get("epoch")?)),
            held,
        },
    ))
}

/// Rebuilds a [`Semaphore`] of `permits` slots from the rows of some of
/// its slots (the others are free at epoch 0), through its serde form for
/// the same reason as [`claimer_table`].
pub(crate) fn semaphore(permits: u16, rows: impl IntoIterator<Item = (u16, Slot)>) -> Semaphore {
    let mut slots = vec![Slot::default(); usize::from(permits)];
    for (index, slot) in rows {
        if let Some(entry) = slots.get_mut(usize::from(index)) {
            *entry = slot;
        }
    }
    serde_json::from_value(serde_json::json!({ "permits": permits, "slots": slots }))
        .expect("the serde form of a semaphore is {permits, slots}")
}
