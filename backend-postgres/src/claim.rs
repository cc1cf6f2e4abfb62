//! Claim: one statement, with the claimer lease checked (and refreshed
//! when due) in the same statement as the jobs it hands out. The lease's
//! freshness is the core's [`weir_core::ClaimerLease`] rule, restated in
//! SQL beside the claim (see `claim_lease_*` below).

use std::collections::BTreeSet;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use weir::BackendError;
use weir_core::{
    Claimed, ClaimedJob, ClaimerConfig, ClaimerGrant, Epoch, JobId, Kind, Payload, QueueName,
    Receipt, Reject, Timestamp,
};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{i64_to_u64, span, u64_to_i64};

/// The claim's restatements of the core's claimer rules, one fragment
/// each, named after the function it mirrors, over the lease row `l` and
/// the clock `c`; `$2..$5` are the grant (queue, slot, lease epoch, owner),
/// `$6` is half the idle threshold and `$7` half the lease length.
///
/// [`weir_core::ClaimerTable::check`]: the grant is the unexpired lease of
/// its slot.
macro_rules! lease_checked {
    () => {
        "l.queue = $2 AND l.slot = $3 AND l.lease_epoch = $4 AND l.owner = $5
      AND l.expires_at > c.now"
    };
}

/// [`weir_core::ClaimerLease::needs_refresh`]: the lease is no longer
/// safely fresh (its last claim is half an idle threshold old, or half its
/// length is left).
macro_rules! lease_needs_refresh {
    () => {
        "(l.last_claimed_at::numeric <= c.now::numeric - $6::bigint
           OR l.expires_at <= {s}.plus_ms(c.now, $7::bigint))"
    };
}

const CLAIM_SQL: &str = concat!(
    "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now, {s}.claim_gate($2) AS open),
lease AS (
    SELECT ",
    lease_needs_refresh!(),
    " AS stale
    FROM {s}.claimer_leases l, clock c
    WHERE ",
    lease_checked!(),
    "
),
lease_lock AS (
    SELECT 1 FROM {s}.claimer_leases l, clock c
    WHERE ",
    lease_checked!(),
    "
      AND ",
    lease_needs_refresh!(),
    "
    FOR NO KEY UPDATE OF l
),
ok AS (
    SELECT EXISTS (SELECT 1 FROM lease WHERE NOT stale)
        OR EXISTS (SELECT 1 FROM lease_lock) AS ok
),
picked AS (
    SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
    WHERE j.state = 'available' AND j.queue = $2
      AND ($8::text[] IS NULL OR j.kind = ANY ($8::text[]))
      AND (SELECT ok FROM ok)
      AND (SELECT open FROM clock)
    ORDER BY j.priority, j.run_at, j.id
    LIMIT $9
    FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE {s}.jobs j
    SET state = 'running', epoch = j.epoch + 1, attempt = j.attempt + 1, holder = $5,
        claimed_at = c.now, heartbeat_at = c.now, deadline = {s}.plus_ms(c.now, j.timeout_ms),
        run_at = NULL
    FROM picked p, clock c
    WHERE j.id = p.id
    RETURNING j.id, j.epoch, j.kind, j.payload, j.attempt, j.max_attempts, j.deadline, j.claimed_at
),
refreshed AS (
    UPDATE {s}.claimer_leases l
    SET last_claimed_at = c.now, expires_at = {s}.plus_ms(c.now, $10::bigint)
    FROM clock c
    WHERE l.queue = $2 AND l.slot = $3 AND l.lease_epoch = $4 AND l.owner = $5
      AND EXISTS (SELECT 1 FROM claimed) AND EXISTS (SELECT 1 FROM lease_lock)
    RETURNING 1
)
SELECT (SELECT ok FROM ok) AS ok, EXISTS (SELECT 1 FROM refreshed) AS refreshed,
       cl.id, cl.epoch, cl.kind, cl.payload, cl.attempt, cl.max_attempts, cl.deadline,
       cl.claimed_at,
       p.run_at
FROM (SELECT 1) one
LEFT JOIN (claimed cl JOIN picked p ON p.id = cl.id) ON true
ORDER BY p.priority, p.run_at, p.id"
);

/// The statement templates of this module, for the check that every SQL
/// mutation still finds its fragment.
#[cfg(all(test, feature = "mutants"))]
pub(crate) fn mutated_statements() -> Vec<String> {
    vec![CLAIM_SQL.to_string(), CLAIM_FRESH_SQL.to_string()]
}

/// Claims of at most this many jobs put their limit in the statement text
/// (one prepared statement per size, each planned generically after its
/// first runs); larger ones pass it as `$9`.
const LITERAL_LIMIT_MAX: u32 = 128;

/// The claim while the claimer lease is fresh — the common case: the
/// lease is only read (one uncorrelated `EXISTS`, which fails unless it is
/// fresh: unexpired, `last_claimed_at > now - idle/2` and
/// `expires_at > now + ttl/2`), no refresh is due, and nothing else is
/// asked. It claims nothing when the lease is not fresh (or the queue is
/// empty); [`CLAIM_SQL`] then decides. Leaner than [`CLAIM_SQL`]: about a
/// third of its planning time (its parameters make every plan a custom
/// one) and no final join. The old `priority` and `run_at` come back from
/// `picked` so the jobs can be put in claim order and carry their due time.
const CLAIM_FRESH_SQL: &str = concat!(
    "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now, {s}.claim_gate($2) AS open),
picked AS (
    SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
    WHERE j.state = 'available' AND j.queue = $2
      AND ($8::text[] IS NULL OR j.kind = ANY ($8::text[]))
      AND EXISTS (
          SELECT 1 FROM {s}.claimer_leases l, clock c
          WHERE ",
    lease_checked!(),
    "
            AND NOT ",
    lease_needs_refresh!(),
    ")
      AND (SELECT open FROM clock)
    ORDER BY j.priority, j.run_at, j.id
    LIMIT $9
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {s}.jobs j
SET state = 'running', epoch = j.epoch + 1, attempt = j.attempt + 1, holder = $5,
    claimed_at = c.now, heartbeat_at = c.now, deadline = {s}.plus_ms(c.now, j.timeout_ms),
    run_at = NULL
FROM picked p, clock c
WHERE j.id = p.id
RETURNING j.id, j.epoch, j.kind, j.payload, j.attempt, j.max_attempts, j.deadline,
          j.claimed_at, p.priority, p.run_at"
);

impl PgBackend {
    pub(crate) async fn claim(
        &self,
        now: Option<Timestamp>,
        queue: &QueueName,
        claimer: &ClaimerGrant,
        max: u32,
        kinds: Option<&BTreeSet<Kind>>,
    ) -> Result<Result<Claimed, Reject>, BackendError> {
        if let Err(reject) = self.check_batch_len(usize::try_from(max).unwrap_or(usize::MAX)) {
            return Ok(Err(reject));
        }
        let kinds: Option<Vec<&str>> = kinds.map(|k| k.iter().map(Kind::as_str).collect());
        if let Some(claimed) = self
            .claim_fresh(now, queue, claimer, max, kinds.clone())
            .await?
        {
            return Ok(Ok(claimed));
        }
        // Nothing claimed: the queue is empty, or the lease is half-stale
        // (refresh it), lost, or expired. The full statement tells which.
        self.claim_full(now, queue, claimer, max, kinds).await
    }

    /// [`CLAIM_FRESH_SQL`]: the jobs claimed under a fresh lease, or
    /// `None` when it claimed nothing.
    async fn claim_fresh(
        &self,
        now: Option<Timestamp>,
        queue: &QueueName,
        claimer: &ClaimerGrant,
        max: u32,
        kinds: Option<Vec<&str>>,
    ) -> Result<Option<Claimed>, BackendError> {
        let config = self.inner.config.world.claimer;
        // A batch size the statement cache can hold as a literal: with the
        // limit known, the generic plan is as good as a custom one, so the
        // server stops planning the claim each time (see CLAIM_FRESH_SQL).
        let literal = max <= LITERAL_LIMIT_MAX;
        let sql = if literal {
            self.sql(&CLAIM_FRESH_SQL.replace("LIMIT $9", &format!("LIMIT {max}")))
        } else {
            self.sql(CLAIM_FRESH_SQL)
        };
        let mut fresh = bind_grant(sqlx::query(&sql), now, queue, claimer, &config, kinds);
        if !literal {
            fresh = fresh.bind(i64::from(max));
        }
        let fresh = fresh
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        if fresh.is_empty() {
            return Ok(None);
        }
        let mut jobs = Vec::with_capacity(fresh.len());
        for row in &fresh {
            let priority: i16 = row.try_get("priority").map_err(db)?;
            let id: i64 = row.try_get("id").map_err(db)?;
            jobs.push((priority, claimed_job(id, row).map_err(db)?));
        }
        // The world hands jobs out in claim order.
        jobs.sort_by_key(|(priority, job)| (*priority, job.run_at, job.receipt.job));
        Ok(Some(Claimed {
            jobs: jobs.into_iter().map(|(_, job)| job).collect(),
            lease_refreshed: false,
        }))
    }

    /// [`CLAIM_SQL`]: the claim that checks the lease, refreshes it when
    /// due, and says whether it was lost.
    async fn claim_full(
        &self,
        now: Option<Timestamp>,
        queue: &QueueName,
        claimer: &ClaimerGrant,
        max: u32,
        kinds: Option<Vec<&str>>,
    ) -> Result<Result<Claimed, Reject>, BackendError> {
        let config = self.inner.config.world.claimer;
        let sql = self.sql(CLAIM_SQL);
        let rows = bind_grant(sqlx::query(&sql), now, queue, claimer, &config, kinds)
            .bind(i64::from(max))
            .bind(span(config.lease_ttl))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        let first = rows
            .first()
            .expect("the claim statement always answers one row");
        let ok: bool = first.try_get("ok").map_err(db)?;
        if !ok {
            return Ok(Err(Reject::ClaimerLeaseLost {
                slot: claimer.slot,
                presented: claimer.lease_epoch,
            }));
        }
        let mut claimed = Claimed {
            jobs: Vec::with_capacity(rows.len()),
            lease_refreshed: first.try_get("refreshed").map_err(db)?,
        };
        for row in &rows {
            let Some(id) = row.try_get::<Option<i64>, _>("id").map_err(db)? else {
                continue;
            };
            claimed.jobs.push(claimed_job(id, row).map_err(db)?);
        }
        Ok(Ok(claimed))
    }
}

/// Both claim statements' parameters `$1..$8`: the clock, the grant
/// (queue, slot, lease epoch, owner), half the idle threshold, half the
/// lease length, and the kinds.
fn bind_grant<'q>(
    query: Query<'q, Postgres, PgArguments>,
    now: Option<Timestamp>,
    queue: &'q QueueName,
    claimer: &ClaimerGrant,
    config: &ClaimerConfig,
    kinds: Option<Vec<&'q str>>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(now.map(|t| t.0))
        .bind(queue.as_str())
        .bind(i32::from(claimer.slot.0))
        .bind(u64_to_i64(claimer.lease_epoch.0))
        .bind(u64_to_i64(claimer.process.0))
        .bind(span(config.idle_threshold.half()))
        .bind(span(config.lease_ttl.half()))
        .bind(kinds)
}

fn claimed_job(id: i64, row: &PgRow) -> Result<ClaimedJob, sqlx::Error> {
    let attempt: i32 = row.try_get("attempt")?;
    let max_attempts: i32 = row.try_get("max_attempts")?;
    Ok(ClaimedJob {
        receipt: Receipt {
            job: JobId(id),
            epoch: Epoch(i64_to_u64(row.try_get("epoch")?)),
        },
        kind: Kind::new(row.try_get::<String, _>("kind")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        payload: Payload(row.try_get("payload")?),
        attempt: weir_core::Attempt(attempt as u32),
        max_attempts: weir_core::Attempt(max_attempts as u32),
        deadline: Timestamp(row.try_get("deadline")?),
        claimed_at: Timestamp(row.try_get("claimed_at")?),
        run_at: Timestamp(row.try_get("run_at")?),
    })
}
