//! The read-modify-write job commands (resume, cancel, a handler's own
//! cancel, admin retry, pause): they lock their rows, run the core's own
//! [`Job`] transitions on them in Rust, and write back what changed: four
//! round trips (`BEGIN`, `SELECT ... FOR UPDATE`, `UPDATE`, `COMMIT`), with
//! the meaning taken from the core rather than restated. Rescue
//! (`maintenance.rs`) uses the same machinery. Enqueue is in `enqueue.rs`,
//! claim in `claim.rs`, the worker's receipt batches in `receipts.rs`, bulk
//! COPY in `bulk.rs`.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use weir::BackendError;
use weir_core::{
    BatchResult, Job, JobId, JobState, QueueName, Receipt, Reject, StateName, Timestamp,
};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{job_from_row, JobWrites, JOB_COLUMNS, JOB_WRITE_SQL};

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
