//! Enqueue: the batch insert (one statement, all or none, inside a
//! caller's transaction too) and the validation it shares with the bulk
//! path in `bulk.rs`. Unique keys are decided by the `jobs_unique` index,
//! not by a read before the write.

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};
use weir::{BackendError, ClientError, InsertOptions, Inserted, JobArgs};
use weir_core::{Enqueued, InvalidJob, JobId, JobLimits, NewJob, Reject, Timestamp, UniqueKey};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{span, BackoffColumns};

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
                         $7::integer[], $8::bigint[], $9::bigint[], $10::text[],
                         $15::bigint[], $16::bigint[], $17::bigint[], $18::smallint[])
        AS i(ord, queue, kind, payload, priority, max_attempts, timeout_ms, run_at, unique_key,
             backoff_base_ms, backoff_factor, backoff_cap_ms, backoff_jitter)
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
                               timeout_ms, unique_key, created_at, state, run_at,
                               backoff_base_ms, backoff_factor, backoff_cap_ms, backoff_jitter)
    SELECT f.id, f.queue, f.kind, f.payload, f.priority, 0, f.max_attempts, 0, f.timeout_ms,
           f.unique_key, c.now,
           CASE WHEN coalesce(f.run_at, c.now) > c.now THEN 'scheduled' ELSE 'available' END,
           coalesce(f.run_at, c.now),
           f.backoff_base_ms, f.backoff_factor, f.backoff_cap_ms, f.backoff_jitter
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
        let mut backoff = BackoffColumns::default();
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
            backoff.push(job.backoff.as_ref());
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
            .bind(backoff.base_ms)
            .bind(backoff.factor)
            .bind(backoff.cap_ms)
            .bind(backoff.jitter)
            .fetch_all(self.via(&mut *conn))
            .await
            .map_err(db)
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
        let dup_of = NewJob::batch_duplicates(jobs);
        let send = (0..jobs.len()).filter(|&i| dup_of[i].is_none()).collect();
        EnqueuePlan { send, dup_of }
    }
}
