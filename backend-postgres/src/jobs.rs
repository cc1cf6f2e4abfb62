//! Job commands: enqueue (batch, inside a caller's transaction), claim, and
//! the read-modify-write commands (resume, cancel, a handler's own cancel,
//! admin retry). The worker's receipt batches are in `receipts.rs`, bulk
//! COPY in `bulk.rs`.
//!
//! Enqueue and claim are one statement each (one round trip, autocommit).
//! The read-modify-write commands lock their rows, run the core's own
//! [`Job`] transitions on them in Rust, and write back what changed: four
//! round trips (`BEGIN`, `SELECT ... FOR UPDATE`, `UPDATE`, `COMMIT`), with
//! the meaning taken from the core rather than restated. Rescue uses the
//! same machinery.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};
use weir::{BackendError, ClientError, InsertOptions, Inserted, JobArgs};
use weir_core::{
    BatchResult, Claimed, ClaimedJob, ClaimerGrant, Enqueued, Epoch, InvalidJob, Job, JobId,
    JobLimits, JobState, Kind, NewJob, Payload, QueueName, Receipt, Reject, StateName, Timestamp,
    UniqueKey,
};

use crate::backend::{db, PgBackend};
use crate::rows::{
    i64_to_u64, job_from_row, span, u64_to_i64, JobWrites, JOB_COLUMNS, JOB_WRITE_SQL,
};

/// The batch enqueue, one statement, so all of it commits or none (a
/// second statement after an autocommit first one could fail after the
/// first committed). Unique keys: a key the statement's snapshot sees is a
/// duplicate of that job (`existing`), which it locks `FOR KEY SHARE`
/// until it commits, so a prune cannot remove the job it names meanwhile
/// (a prune passes over it; one that locked it first has deleted it by
/// the time the lock is granted, and the enqueue creates the job); a key a concurrent insert took
/// after the snapshot (committed since, or still in flight: the insert
/// waits for it) is a conflict on `jobs_unique`, and `DO UPDATE` returns
/// the job that holds it as committed, whatever the snapshot (an update
/// of the row to itself, only in that race). `won` matches such a row to
/// its input job by key: its id is not the one drawn for the input. Rows
/// are inserted in key order, not batch order (ids are drawn in batch
/// order first): two enqueues that take the same keys then wait for each
/// other's index entries in one order, never in a cycle (in batch order
/// they deadlocked, one of them refused).
const ENQUEUE_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now),
input AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::smallint[],
                         $7::integer[], $8::bigint[], $9::bigint[], $10::text[])
        AS i(ord, queue, kind, payload, priority, max_attempts, timeout_ms, run_at, unique_key)
),
bad AS (
    SELECT min(t.ord) - 1 AS ord
    FROM unnest($11::bigint[]) WITH ORDINALITY AS t(run_at, ord), clock c
    WHERE t.run_at::numeric > c.now::numeric + $12::bigint
),
existing AS (
    SELECT i.ord, j.id FROM input i
    JOIN {s}.jobs j ON j.kind = i.kind AND j.unique_key = i.unique_key
    FOR KEY SHARE OF j
),
fresh AS (
    SELECT nextval('{s}.jobs_id_seq') AS id, f.* FROM (
        SELECT i.* FROM input i
        WHERE (SELECT ord FROM bad) IS NULL
          AND NOT EXISTS (SELECT 1 FROM existing e WHERE e.ord = i.ord)
        ORDER BY i.ord
        OFFSET 0
    ) f
),
ins AS (
    INSERT INTO {s}.jobs AS j (id, queue, kind, payload, priority, attempt, max_attempts, epoch,
                               timeout_ms, unique_key, created_at, state, run_at)
    SELECT f.id, f.queue, f.kind, f.payload, f.priority, 0, f.max_attempts, 0, f.timeout_ms,
           f.unique_key, c.now,
           CASE WHEN coalesce(f.run_at, c.now) > c.now THEN 'scheduled' ELSE 'available' END,
           coalesce(f.run_at, c.now)
    FROM fresh f, clock c
    ORDER BY f.kind, f.unique_key, f.id
    ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL
        DO UPDATE SET unique_key = j.unique_key
    RETURNING id, queue, state, kind, unique_key
),
notified AS (
    SELECT pg_notify($13, 'j:' || q.queue)
    FROM (SELECT DISTINCT ins.queue FROM ins JOIN fresh f ON f.id = ins.id
          WHERE ins.state = 'available') q
    WHERE $14
)
SELECT (SELECT ord FROM bad) AS bad, (SELECT count(*) FROM notified) AS notified,
       i.ord, coalesce(e.id, ins.id, won.id) AS id, e.id IS NOT NULL OR won.id IS NOT NULL AS dup
FROM input i
LEFT JOIN existing e ON e.ord = i.ord
LEFT JOIN fresh f ON f.ord = i.ord
LEFT JOIN ins ON ins.id = f.id
LEFT JOIN ins won ON ins.id IS NULL AND won.kind = f.kind AND won.unique_key = f.unique_key
ORDER BY i.ord";

const CLAIM_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now, {s}.claim_gate($2) AS open),
lease AS (
    SELECT (l.last_claimed_at::numeric <= c.now::numeric - $6::bigint
            OR l.expires_at <= {s}.plus_ms(c.now, $7::bigint)) AS stale
    FROM {s}.claimer_leases l, clock c
    WHERE l.queue = $2 AND l.slot = $3 AND l.lease_epoch = $4 AND l.owner = $5
      AND l.expires_at > c.now
),
lease_lock AS (
    SELECT 1 FROM {s}.claimer_leases l, clock c
    WHERE l.queue = $2 AND l.slot = $3 AND l.lease_epoch = $4 AND l.owner = $5
      AND l.expires_at > c.now
      AND (l.last_claimed_at::numeric <= c.now::numeric - $6::bigint
           OR l.expires_at <= {s}.plus_ms(c.now, $7::bigint))
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
ORDER BY p.priority, p.run_at, p.id";

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
const CLAIM_FRESH_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now, {s}.claim_gate($2) AS open),
picked AS (
    SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
    WHERE j.state = 'available' AND j.queue = $2
      AND ($8::text[] IS NULL OR j.kind = ANY ($8::text[]))
      AND EXISTS (
          SELECT 1 FROM {s}.claimer_leases l, clock c
          WHERE l.queue = $2 AND l.slot = $3 AND l.lease_epoch = $4 AND l.owner = $5
            AND l.expires_at > c.now
            AND l.last_claimed_at::numeric > c.now::numeric - $6::bigint
            AND l.expires_at > {s}.plus_ms(c.now, $7::bigint))
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
          j.claimed_at, p.priority, p.run_at";

const LOCK_JOBS_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now),
j AS (
    SELECT {cols} FROM {s}.jobs j
    WHERE j.id = ANY ($2::bigint[])
    ORDER BY j.id
    FOR UPDATE
)
SELECT clock.now AS now, j.* FROM clock LEFT JOIN j ON true";

const NOTIFY_SQL: &str = "SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m";

/// Jobs locked for one read-modify-write command, with the core's
/// transitions applied in place, exactly as `World::update` applies them.
pub(crate) struct LockedJobs {
    jobs: BTreeMap<JobId, Job>,
    before: BTreeMap<JobId, Job>,
    /// Whether taking a running attempt away wakes its holder (`c:`).
    /// Off when the holder asked for it itself.
    wake_holders: bool,
}

impl LockedJobs {
    pub(crate) fn new(jobs: impl IntoIterator<Item = Job>) -> LockedJobs {
        let jobs: BTreeMap<JobId, Job> = jobs.into_iter().map(|job| (job.id, job)).collect();
        LockedJobs {
            before: jobs.clone(),
            jobs,
            wake_holders: true,
        }
    }

    /// Sends no `c:` wake-up for the attempts this command takes away: the
    /// holder asked for it (a handler that cancelled its own job), so
    /// there is nothing to stop. The memory backend sends none either.
    pub(crate) fn holders_asked(&mut self) {
        self.wake_holders = false;
    }

    /// Runs one transition; an unknown job is [`Reject::UnknownJob`].
    pub(crate) fn update<T>(
        &mut self,
        id: JobId,
        transition: impl FnOnce(&mut Job) -> Result<T, Reject>,
    ) -> Result<T, Reject> {
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or(Reject::UnknownJob { job: id })?;
        transition(job)
    }

    /// The rows to write back: every job that changed.
    pub(crate) fn writes(&self) -> JobWrites {
        let mut writes = JobWrites::default();
        for (id, job) in &self.jobs {
            if self.before.get(id) != Some(job) {
                writes.push(job);
            }
        }
        writes
    }

    /// Wake-ups this change calls for: queues that got available jobs, and
    /// holders of running jobs that were taken away.
    pub(crate) fn notifications(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (id, job) in &self.jobs {
            let Some(old) = self.before.get(id) else {
                continue;
            };
            if old == job {
                continue;
            }
            if job.state_name() == StateName::Available {
                out.insert(format!("j:{}", job.queue));
            }
            if let JobState::Running { holder, .. } = old.state {
                if self.wake_holders && job.epoch != old.epoch {
                    out.insert(format!("c:{}:{}:{}", id.0, old.epoch.0, holder.0));
                }
            }
        }
        out.into_iter().collect()
    }
}

impl PgBackend {
    /// Enqueues `jobs` through `conn`: a pool, a connection, or the caller's
    /// own transaction, so the jobs commit or roll back with the caller's
    /// data. All or none; a job whose kind and unique key match an existing
    /// job (or an earlier job of the same batch) is not inserted and
    /// answers with the existing id and `duplicate: true`.
    ///
    /// One statement, whatever races it (two when a job is invalid: the
    /// clock is read to name the first one), so a batch is never half
    /// applied. When a concurrent insert takes one of the batch's unique
    /// keys while the statement runs, the statement answers with that job,
    /// which it locks to read it as committed: inside a caller's
    /// transaction the lock on that one job lasts until the transaction
    /// ends. Inside a caller's transaction, NOTIFY wake-ups are delivered
    /// when it commits; a database error aborts it, as any failed
    /// statement does.
    pub async fn enqueue<'a, A>(
        &self,
        conn: A,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError>
    where
        A: sqlx::Acquire<'a, Database = Postgres>,
    {
        self.enqueue_in(conn, None, jobs).await
    }

    /// Inserts one typed job through `conn`, typically the caller's own
    /// transaction, so the job commits or rolls back with the caller's rows:
    ///
    /// ```no_run
    /// # async fn f(backend: weir_postgres::PgBackend, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ship { order: i32 }
    /// # impl weir::JobArgs for Ship { const KIND: &'static str = "ship"; }
    /// let mut tx = pool.begin().await?;
    /// // ... the caller's own writes on `tx` ...
    /// backend.insert_in(&mut *tx, &Ship { order: 7 }, weir::InsertOptions::default()).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The job type's defaults apply under `options`. One statement; one
    /// more (the transaction's clock) when `options` has a delay.
    pub async fn insert_in<'a, A, J>(
        &self,
        conn: A,
        args: &J,
        options: InsertOptions,
    ) -> Result<Inserted, ClientError>
    where
        A: sqlx::Acquire<'a, Database = Postgres>,
        J: JobArgs,
    {
        let mut conn = conn.acquire().await.map_err(db)?;
        // The clock matters only to turn a delay into a `run_at`.
        let now = match options.delay {
            Some(_) => self.now_in(&mut *conn, None).await?,
            None => Timestamp::ZERO,
        };
        let job = weir::new_job(args, &options, now)?;
        match self.enqueue_on(&mut conn, None, vec![job]).await? {
            Ok(mut inserted) => Ok(inserted.remove(0)),
            Err(Reject::InvalidJob { index, error }) => {
                Err(ClientError::InvalidJob { index, error })
            }
            Err(reject) => Err(ClientError::Rejected(reject)),
        }
    }

    pub(crate) async fn enqueue_in<'a, A>(
        &self,
        conn: A,
        now: Option<Timestamp>,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError>
    where
        A: sqlx::Acquire<'a, Database = Postgres>,
    {
        if let Err(reject) = self.check_batch_len(jobs.len()) {
            return Ok(Err(reject));
        }
        let mut conn = conn.acquire().await.map_err(db)?;
        self.enqueue_on(&mut conn, now, jobs).await
    }

    /// [`PgBackend::enqueue_in`] on a connection, for a batch within
    /// `batch_max`. Not generic, so a caller holding a transaction across
    /// several batches (the bulk path) stays a `Send` future.
    pub(crate) async fn enqueue_on(
        &self,
        conn: &mut sqlx::PgConnection,
        now: Option<Timestamp>,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let limits = self.inner.config.world.limits;
        if let Some(index) = clock_free_invalid(&jobs, &limits) {
            // The error path: one more round trip for the clock, then the
            // world's own validation order.
            let now = self.now_in(&mut *conn, now).await?;
            return Ok(Err(first_invalid(now, &jobs, &limits, index)));
        }
        let plan = EnqueuePlan::new(&jobs);
        let rows = self.enqueue_statement(conn, now, &jobs, &plan.send).await?;
        if let Some(first) = rows.first() {
            let bad: Option<i64> = first.try_get("bad").map_err(db)?;
            if let Some(index) = bad {
                let index = usize::try_from(index).expect("an ordinal of the batch");
                let run_at = jobs[index].run_at.expect("only a run_at can be too far");
                let error = InvalidJob::RunAtTooFar {
                    run_at,
                    max: limits.delay_max,
                };
                return Ok(Err(Reject::InvalidJob { index, error }));
            }
        }
        let mut result: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        for row in &rows {
            let ord: i64 = row.try_get("ord").map_err(db)?;
            // Every job sent is a duplicate seen by the snapshot, inserted,
            // or the loser of a race that `DO UPDATE` resolved; were an id
            // missing, the decode error would answer `Lost`, which is true:
            // the statement committed.
            let id: i64 = row.try_get("id").map_err(db)?;
            let duplicate: bool = row.try_get("dup").map_err(db)?;
            let index = usize::try_from(ord).expect("an ordinal of the batch");
            result[index] = Some(Enqueued {
                id: JobId(id),
                duplicate,
            });
        }
        for (i, first) in plan.dup_of.iter().enumerate() {
            if let Some(first) = *first {
                let id = result[first].expect("the first of its key was resolved").id;
                result[i] = Some(Enqueued {
                    id,
                    duplicate: true,
                });
            }
        }
        Ok(Ok(result
            .into_iter()
            .map(|e| e.expect("every job resolved"))
            .collect()))
    }

    async fn enqueue_statement(
        &self,
        conn: &mut sqlx::PgConnection,
        now: Option<Timestamp>,
        jobs: &[NewJob],
        send: &[usize],
    ) -> Result<Vec<PgRow>, BackendError> {
        let mut ord = Vec::with_capacity(send.len());
        let mut queue = Vec::with_capacity(send.len());
        let mut kind = Vec::with_capacity(send.len());
        let mut payload = Vec::with_capacity(send.len());
        let mut priority = Vec::with_capacity(send.len());
        let mut max_attempts = Vec::with_capacity(send.len());
        let mut timeout = Vec::with_capacity(send.len());
        let mut run_at = Vec::with_capacity(send.len());
        let mut unique_key = Vec::with_capacity(send.len());
        for &i in send {
            let job = &jobs[i];
            ord.push(i as i64);
            queue.push(job.queue.as_str());
            kind.push(job.kind.as_str());
            payload.push(job.payload.0.as_slice());
            priority.push(job.priority.0);
            max_attempts.push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            timeout.push(span(job.timeout));
            run_at.push(job.run_at.map(|t| t.0));
            unique_key.push(job.unique_key.as_ref().map(UniqueKey::as_str));
        }
        let all_run_at: Vec<Option<i64>> = jobs.iter().map(|job| job.run_at.map(|t| t.0)).collect();
        let config = &self.inner.config;
        sqlx::query(&self.sql(ENQUEUE_SQL))
            .bind(now.map(|t| t.0))
            .bind(ord)
            .bind(queue)
            .bind(kind)
            .bind(payload)
            .bind(priority)
            .bind(max_attempts)
            .bind(timeout)
            .bind(run_at)
            .bind(unique_key)
            .bind(all_run_at)
            .bind(span(config.world.limits.delay_max))
            .bind(config.schema.channel())
            .bind(config.notify)
            .fetch_all(self.via(&mut *conn))
            .await
            .map_err(db)
    }

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
        let config = self.inner.config.world.claimer;
        let kinds: Option<Vec<&str>> = kinds.map(|k| k.iter().map(Kind::as_str).collect());
        // A batch size the statement cache can hold as a literal: with the
        // limit known, the generic plan is as good as a custom one, so the
        // server stops planning the claim each time (see CLAIM_FRESH_SQL).
        let literal = max <= LITERAL_LIMIT_MAX;
        let sql = if literal {
            self.sql(&CLAIM_FRESH_SQL.replace("LIMIT $9", &format!("LIMIT {max}")))
        } else {
            self.sql(CLAIM_FRESH_SQL)
        };
        let mut fresh = sqlx::query(&sql)
            .bind(now.map(|t| t.0))
            .bind(queue.as_str())
            .bind(i32::from(claimer.slot.0))
            .bind(u64_to_i64(claimer.lease_epoch.0))
            .bind(u64_to_i64(claimer.process.0))
            .bind(span(config.idle_threshold.half()))
            .bind(span(config.lease_ttl.half()))
            .bind(kinds.clone());
        if !literal {
            fresh = fresh.bind(i64::from(max));
        }
        let fresh = fresh
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        if !fresh.is_empty() {
            let mut jobs = Vec::with_capacity(fresh.len());
            for row in &fresh {
                let priority: i16 = row.try_get("priority").map_err(db)?;
                let id: i64 = row.try_get("id").map_err(db)?;
                jobs.push((priority, claimed_job(id, row).map_err(db)?));
            }
            // The world hands jobs out in claim order.
            jobs.sort_by_key(|(priority, job)| (*priority, job.run_at, job.receipt.job));
            return Ok(Ok(Claimed {
                jobs: jobs.into_iter().map(|(_, job)| job).collect(),
                lease_refreshed: false,
            }));
        }
        // Nothing claimed: the queue is empty, or the lease is half-stale
        // (refresh it), lost, or expired. The full statement tells which.
        let rows = sqlx::query(&self.sql(CLAIM_SQL))
            .bind(now.map(|t| t.0))
            .bind(queue.as_str())
            .bind(i32::from(claimer.slot.0))
            .bind(u64_to_i64(claimer.lease_epoch.0))
            .bind(u64_to_i64(claimer.process.0))
            .bind(span(config.idle_threshold.half()))
            .bind(span(config.lease_ttl.half()))
            .bind(kinds)
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

    /// Locks `ids`, runs `apply` over them with the core's transitions,
    /// writes back what changed and sends the wake-ups, in one transaction.
    pub(crate) async fn with_jobs<T>(
        &self,
        now: Option<Timestamp>,
        ids: Vec<i64>,
        apply: impl FnOnce(Timestamp, &mut LockedJobs) -> T,
    ) -> Result<T, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let sql = self.sql(&LOCK_JOBS_SQL.replace("{cols}", JOB_COLUMNS));
        let rows = sqlx::query(&sql)
            .bind(now.map(|t| t.0))
            .bind(ids)
            .fetch_all(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let now = Timestamp(
            rows.first()
                .expect("the clock row is always there")
                .try_get("now")
                .map_err(db)?,
        );
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>, _>("id").map_err(db)?.is_some() {
                jobs.push(job_from_row(row).map_err(db)?);
            }
        }
        let mut locked = LockedJobs::new(jobs);
        let out = apply(now, &mut locked);
        self.write_back(&mut tx, &locked).await?;
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    pub(crate) async fn write_back(
        &self,
        tx: &mut sqlx::PgConnection,
        locked: &LockedJobs,
    ) -> Result<(), BackendError> {
        let writes = locked.writes();
        if !writes.is_empty() {
            writes
                .bind(sqlx::query(&self.sql(JOB_WRITE_SQL)))
                .execute(self.via(&mut *tx))
                .await
                .map_err(db)?;
        }
        let messages = locked.notifications();
        if self.inner.config.notify && !messages.is_empty() {
            sqlx::query(NOTIFY_SQL)
                .bind(self.inner.config.schema.channel())
                .bind(messages)
                .execute(self.via(&mut *tx))
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    pub(crate) async fn resume_external(
        &self,
        now: Option<Timestamp>,
        receipt: Receipt,
    ) -> Result<Result<(), Reject>, BackendError> {
        self.with_jobs(now, vec![receipt.job.0], |now, jobs| {
            jobs.update(receipt.job, |job| job.resume_external(receipt, now))
        })
        .await
    }

    pub(crate) async fn cancel(
        &self,
        now: Option<Timestamp>,
        id: JobId,
    ) -> Result<Result<StateName, Reject>, BackendError> {
        self.with_jobs(now, vec![id.0], |now, jobs| {
            jobs.update(id, |job| {
                let state = job.state_name();
                job.cancel(now)?;
                Ok(state)
            })
        })
        .await
    }

    /// `CancelAttempts`: a handler cancels its own attempt. Receipt-guarded
    /// like every holder write; the core's [`Job::cancel_attempt`] decides
    /// each item in input order on the locked rows, exactly as the world
    /// applies the batch (a cancel bumps the epoch, so a second copy of a
    /// receipt is stale). Four round trips; handlers cancel rarely.
    pub(crate) async fn cancel_attempts(
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
        let ids = receipts.iter().map(|r| r.job.0).collect();
        self.with_jobs(now, ids, |now, jobs| {
            jobs.holders_asked();
            Ok(receipts
                .into_iter()
                .map(|r| jobs.update(r.job, |job| job.cancel_attempt(r, now)))
                .collect())
        })
        .await
    }

    pub(crate) async fn admin_retry(
        &self,
        now: Option<Timestamp>,
        id: JobId,
    ) -> Result<Result<(), Reject>, BackendError> {
        self.with_jobs(now, vec![id.0], |now, jobs| {
            jobs.update(id, |job| job.admin_retry(now))
        })
        .await
    }

    pub(crate) async fn set_paused(
        &self,
        queue: &QueueName,
        paused: bool,
    ) -> Result<bool, BackendError> {
        // A pause is a barrier for the claims under way (`pause_queue` in
        // migration 5): it answers only once they are over.
        let sql = if paused {
            "SELECT {s}.pause_queue($1)"
        } else {
            "WITH d AS (DELETE FROM {s}.paused_queues WHERE queue = $1 RETURNING 1) SELECT count(*) = 1 FROM d"
        };
        let changed: bool = sqlx::query_scalar(&self.sql(sql))
            .bind(queue.as_str())
            .fetch_one(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        if changed && !paused && self.inner.config.notify {
            // Work may have piled up while the queue was paused.
            sqlx::query(NOTIFY_SQL)
                .bind(self.inner.config.schema.channel())
                .bind(vec![format!("j:{queue}")])
                .execute(self.via(&self.inner.pool))
                .await
                .map_err(db)?;
        }
        Ok(changed)
    }
}

/// The first job that is invalid whatever the clock says. Everything but
/// `run_at` is checked without the clock: at the end of time no `run_at`
/// is too far, so what fails then fails at any time.
pub(crate) fn clock_free_invalid(jobs: &[NewJob], limits: &JobLimits) -> Option<usize> {
    jobs.iter()
        .position(|job| job.validate(Timestamp(i64::MAX), limits).is_err())
}

/// The world's refusal of a batch in which job `clock_free` is invalid at
/// any time: the first job (in batch order) that is invalid at `now`,
/// which may be an earlier one whose `run_at` is too far.
pub(crate) fn first_invalid(
    now: Timestamp,
    jobs: &[NewJob],
    limits: &JobLimits,
    clock_free: usize,
) -> Reject {
    let first = jobs
        .iter()
        .enumerate()
        .find_map(|(i, job)| job.validate(now, limits).err().map(|e| (i, e)));
    let (index, error) = first.unwrap_or_else(|| {
        let error = jobs[clock_free]
            .validate(Timestamp(i64::MAX), limits)
            .expect_err("found invalid at the end of time");
        (clock_free, error)
    });
    Reject::InvalidJob { index, error }
}

/// Which jobs of a batch go to the database: the first of each unique key;
/// later ones of the same key answer with the first one's id.
struct EnqueuePlan {
    send: Vec<usize>,
    dup_of: Vec<Option<usize>>,
}

impl EnqueuePlan {
    fn new(jobs: &[NewJob]) -> EnqueuePlan {
        let mut first: BTreeMap<(&Kind, &UniqueKey), usize> = BTreeMap::new();
        let mut send = Vec::with_capacity(jobs.len());
        let mut dup_of = vec![None; jobs.len()];
        for (i, job) in jobs.iter().enumerate() {
            if let Some(key) = &job.unique_key {
                match first.entry((&job.kind, key)) {
                    Entry::Occupied(e) => {
                        dup_of[i] = Some(*e.get());
                        continue;
                    }
                    Entry::Vacant(e) => {
                        e.insert(i);
                    }
                }
            }
            send.push(i);
        }
        EnqueuePlan { send, dup_of }
    }
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
