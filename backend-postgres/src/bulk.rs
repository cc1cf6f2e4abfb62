//! Bulk enqueue: [`weir::Backend::enqueue_bulk`] and
//! [`PgBackend::enqueue_copy`].
//!
//! Jobs without a unique key go in with one `COPY ... FROM STDIN`, the
//! fastest way in. `COPY` cannot return ids, so they are reserved first
//! from `jobs_id_seq`, in input order, by the same statement that reads the
//! clock, checks the one clock-dependent limit (`run_at` too far) and queues
//! the NOTIFY wake-ups (delivered at commit, dropped with a rollback); the
//! rows then carry their ids explicitly. Five round trips plus the data,
//! whatever the number of jobs: `BEGIN`, reserve, `COPY` (start, finish),
//! `COMMIT`.
//!
//! `COPY` cannot resolve duplicates, so a bulk in which any job has a
//! unique key goes through the batch enqueue statement instead, in chunks
//! of `batch_max`, all inside one transaction: still all or none.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::{PgConnection, Row};
use weir::BackendError;
use weir_core::{Enqueued, JobId, NewJob, Reject, Timestamp};

use crate::backend::PgBackend;
use crate::enqueue::{clock_free_invalid, first_invalid};
use crate::error::db;
use crate::rows::span;

/// Rows sent per `COPY` data message, so memory stays bounded.
const CHUNK_ROWS: usize = 4096;

/// Reads the clock and, when no `run_at` is too far, reserves `$2` ids in
/// order and queues a wake-up for each queue that gets an available job.
/// `$3` is the latest `run_at` of the bulk; `$5`/`$6` each queue with its
/// earliest `run_at` (`NULL`: a job runs now).
const RESERVE_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now),
ok AS (
    SELECT $3::bigint IS NULL OR $3::bigint::numeric <= c.now::numeric + $4::bigint AS ok
    FROM clock c
),
ids AS (
    SELECT array_agg(r.id ORDER BY r.id) AS ids FROM (
        SELECT nextval('{s}.jobs_id_seq') AS id FROM generate_series(1, $2::bigint)
        WHERE (SELECT ok FROM ok)
    ) r
),
notified AS (
    SELECT pg_notify($7, 'j:' || q.queue)
    FROM unnest($5::text[], $6::bigint[]) AS q(queue, earliest), clock c
    WHERE $8 AND (SELECT ok FROM ok) AND (q.earliest IS NULL OR q.earliest <= c.now)
)
SELECT c.now, (SELECT ids FROM ids) AS ids, (SELECT count(*) FROM notified) AS notified
FROM clock c";

const COPY_SQL: &str = "COPY {s}.jobs (id, queue, kind, payload, priority, attempt, \
     max_attempts, epoch, timeout_ms, created_at, state, run_at, backoff_base_ms, backoff_factor, \
     backoff_cap_ms, backoff_jitter) FROM STDIN";

/// Why a bulk enqueue did not happen. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A job is invalid ([`Reject::InvalidJob`]), exactly as a batch
    /// enqueue would say.
    #[error(transparent)]
    Rejected(Reject),
    /// `COPY` cannot resolve duplicates: use [`PgBackend::enqueue`] or
    /// [`weir::Backend::enqueue_bulk`] for jobs with a unique key.
    #[error("job {index} has a unique key; COPY cannot check it, use enqueue")]
    UniqueKey {
        /// Its position.
        index: usize,
    },
    /// The database failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PgBackend {
    /// Inserts `jobs` with one `COPY`, in one transaction: all or none, ids
    /// in order from the same sequence as [`PgBackend::enqueue`]. Returns
    /// how many were inserted. Five round trips plus the data, whatever the
    /// number of jobs. [`weir::Backend::enqueue_bulk`] takes the same path
    /// and also accepts unique keys.
    pub async fn enqueue_copy(&self, jobs: &[NewJob]) -> Result<u64, CopyError> {
        if let Some(index) = jobs.iter().position(|job| job.unique_key.is_some()) {
            return Err(CopyError::UniqueKey { index });
        }
        match self.bulk_at(None, jobs).await? {
            Ok(ids) => Ok(ids.len() as u64),
            Err(reject) => Err(CopyError::Rejected(reject)),
        }
    }

    /// [`weir::Backend::enqueue_bulk`] at `now` (`None`: the database
    /// clock): every job validated first, then `COPY`, or the batch
    /// statement in chunks when a job has a unique key.
    pub(crate) async fn bulk_at(
        &self,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        if jobs.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let limits = self.inner.config.world.limits;
        if let Some(index) = clock_free_invalid(jobs, &limits) {
            let now = self.now_in(&self.inner.pool, now).await?;
            return Ok(Err(first_invalid(now, jobs, &limits, index)));
        }
        if jobs.iter().any(|job| job.unique_key.is_some()) {
            return self.bulk_in_chunks(now, jobs).await;
        }
        self.bulk_copy(now, jobs).await
    }

    /// The `COPY` path. Every clock-free check has passed.
    async fn bulk_copy(
        &self,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(uncommitted)?;
        let written = self
            .copy_uncommitted(&mut tx, now, jobs)
            .await
            .map_err(|e| not_applied(e, "COPY"))?;
        finish(tx, written).await
    }

    async fn copy_uncommitted(
        &self,
        tx: &mut PgConnection,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let (now, ids) = self.reserve(&mut *tx, now, jobs).await?;
        let Some(ids) = ids else {
            let limits = self.inner.config.world.limits;
            let (index, error) = jobs
                .iter()
                .enumerate()
                .find_map(|(i, job)| job.validate(now, &limits).err().map(|e| (i, e)))
                // The statement refuses only when the latest `run_at` is
                // too far at `now`, which `validate` reports for that job.
                .expect("a job whose run_at is too far");
            return Ok(Err(Reject::InvalidJob { index, error }));
        };
        // generate_series(1, n) yields n rows, each one id.
        assert_eq!(ids.len(), jobs.len(), "one reserved id per job");
        let mut copy = tx.copy_in_raw(&self.sql(COPY_SQL)).await.map_err(db)?;
        let mut buffer = String::new();
        for (chunk, chunk_ids) in jobs.chunks(CHUNK_ROWS).zip(ids.chunks(CHUNK_ROWS)) {
            buffer.clear();
            for (job, &id) in chunk.iter().zip(chunk_ids) {
                copy_row(&mut buffer, id, job, now);
            }
            if let Err(error) = copy.send(buffer.as_bytes()).await {
                let _ = copy.abort("weir: send failed").await;
                return Err(db(error));
            }
        }
        let inserted = copy.finish().await.map_err(db)?;
        assert_eq!(
            inserted,
            jobs.len() as u64,
            "COPY inserts every row or fails"
        );
        Ok(Ok(ids
            .into_iter()
            .map(|id| Enqueued {
                id: JobId(id),
                duplicate: false,
            })
            .collect()))
    }

    /// One round trip: the clock, the ids (`None` when a `run_at` is too
    /// far at that clock) and the wake-ups, queued for commit.
    async fn reserve(
        &self,
        tx: &mut PgConnection,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<(Timestamp, Option<Vec<i64>>), BackendError> {
        let latest_run_at = jobs.iter().filter_map(|job| job.run_at).max();
        // Per queue, its earliest `run_at`; `None` (a job without one,
        // which runs now) sorts first.
        let mut earliest: BTreeMap<&str, Option<i64>> = BTreeMap::new();
        for job in jobs {
            let at = job.run_at.map(|t| t.0);
            earliest
                .entry(job.queue.as_str())
                .and_modify(|e| *e = (*e).min(at))
                .or_insert(at);
        }
        let (queues, earliest): (Vec<&str>, Vec<Option<i64>>) = earliest.into_iter().unzip();
        let config = &self.inner.config;
        let row = sqlx::query(&self.sql(RESERVE_SQL))
            .bind(now.map(|t| t.0))
            .bind(jobs.len() as i64)
            .bind(latest_run_at.map(|t| t.0))
            .bind(span(config.world.limits.delay_max))
            .bind(queues)
            .bind(earliest)
            .bind(config.schema.channel())
            .bind(config.notify)
            .fetch_one(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let now = Timestamp(row.try_get("now").map_err(db)?);
        let ids: Option<Vec<i64>> = row.try_get("ids").map_err(db)?;
        Ok((now, ids))
    }

    /// The path for bulks with unique keys: the batch enqueue statement in
    /// chunks of `batch_max`, in one transaction, so a later chunk's
    /// refusal (a `run_at` too far) rolls back the chunks before it. Every
    /// clock-free check has passed.
    async fn bulk_in_chunks(
        &self,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(uncommitted)?;
        let written = self
            .chunks_uncommitted(&mut tx, now, jobs)
            .await
            .map_err(|e| not_applied(e, "bulk enqueue"))?;
        finish(tx, written).await
    }

    async fn chunks_uncommitted(
        &self,
        tx: &mut PgConnection,
        now: Option<Timestamp>,
        jobs: &[NewJob],
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        let batch_max = self.inner.config.world.batch_max.max(1);
        let mut out = Vec::with_capacity(jobs.len());
        let mut start = 0;
        while start < jobs.len() {
            let chunk = jobs[start..jobs.len().min(start + batch_max)].to_vec();
            let len = chunk.len();
            match self.enqueue_on(&mut *tx, now, chunk).await? {
                Ok(done) => out.extend(done),
                Err(Reject::InvalidJob { index, error }) => {
                    let index = start + index;
                    return Ok(Err(Reject::InvalidJob { index, error }));
                }
                // A chunk is within batch_max and every job passed the
                // clock-free checks: nothing else can be refused.
                Err(other) => panic!("a validated bulk chunk was refused: {other:?}"),
            }
            start += len;
        }
        Ok(Ok(out))
    }
}

/// Commits a bulk that was written, rolls back one that was refused. Only
/// a failed `COMMIT` leaves the outcome unknown ([`BackendError::Lost`]).
async fn finish(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    written: Result<Vec<Enqueued>, Reject>,
) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
    match written {
        Ok(done) => {
            tx.commit().await.map_err(db)?;
            Ok(Ok(done))
        }
        Err(reject) => {
            // The answer stands whether or not the rollback gets through:
            // an uncommitted transaction never takes effect.
            let _ = tx.rollback().await;
            Ok(Err(reject))
        }
    }
}

/// `BEGIN` failed: nothing was applied.
fn uncommitted(error: sqlx::Error) -> BackendError {
    not_applied(db(error), "BEGIN")
}

/// An error before `COMMIT` was sent: the transaction cannot have
/// committed, so nothing was applied and the bulk is safe to retry, even
/// when the driver lost the connection (which alone would mean
/// [`BackendError::Lost`]). That matters for a bulk: retrying one whose
/// outcome is unknown could insert its jobs twice.
fn not_applied(error: BackendError, step: &str) -> BackendError {
    match error {
        BackendError::Lost(message) => {
            BackendError::Unavailable(format!("{step} failed before commit: {message}"))
        }
        other => other,
    }
}

/// One row in `COPY` text format. Queue and kind names have no character
/// that needs escaping (their alphabets exclude tab, newline and
/// backslash); the payload goes as bytea hex, its backslash escaped.
fn copy_row(out: &mut String, id: i64, job: &NewJob, now: Timestamp) {
    let run_at = job.run_at.unwrap_or(now);
    let state = if run_at > now {
        "scheduled"
    } else {
        "available"
    };
    let _ = write!(
        out,
        "{id}\t{}\t{}\t\\\\x",
        job.queue.as_str(),
        job.kind.as_str()
    );
    for byte in &job.payload.0 {
        let _ = write!(out, "{byte:02x}");
    }
    let _ = write!(
        out,
        "\t{}\t0\t{}\t0\t{}\t{}\t{state}\t{}",
        job.priority.0,
        job.max_attempts,
        span(job.timeout),
        now.0,
        run_at.0
    );
    let _ = match &job.backoff {
        None => writeln!(out, "\t\\N\t\\N\t\\N\t\\N"),
        Some(b) => writeln!(
            out,
            "\t{}\t{}\t{}\t{}",
            span(b.base()),
            b.factor(),
            span(b.cap()),
            b.jitter_permille()
        ),
    };
}
