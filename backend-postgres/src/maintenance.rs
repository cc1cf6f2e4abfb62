//! Leadership and the leader's maintenance: promote, rescue, prune.
//!
//! Every maintenance command runs in one transaction that first reads the
//! leader row `FOR SHARE` and checks the caller's grant with the core's
//! [`Leadership::check_term`]: an election (which locks the row for update)
//! cannot commit in between, so a deposed leader's write is refused, never
//! interleaved. Rows are picked with `FOR UPDATE SKIP LOCKED`, so
//! maintenance never waits behind a worker's batch.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use weir::BackendError;
use weir_core::{
    FailOutcome, JobId, LeaderGrant, LeaderTerm, Leadership, Millis, ProcessId, Reject, Timestamp,
};

use crate::backend::PgBackend;
use crate::error::db;
use crate::locked::LockedJobs;
use crate::rows::{i64_to_u64, job_from_row, span, u64_to_i64, JOB_COLUMNS};

const LEADER_SQL: &str = "
SELECT coalesce($1::bigint, {s}.now_ms()) AS now, term, holder, expires_at
FROM {s}.leader";

const PROMOTE_SQL: &str = "
WITH due AS (
    SELECT j.id FROM {s}.jobs j
    WHERE j.state IN ('scheduled', 'retryable') AND j.run_at <= $1
    ORDER BY j.run_at, j.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
up AS (
    UPDATE {s}.jobs j SET state = 'available'
    FROM due WHERE j.id = due.id
    RETURNING j.id, j.run_at, j.queue
),
notified AS (
    SELECT pg_notify($3, 'j:' || q.queue) FROM (SELECT DISTINCT queue FROM up) q WHERE $4
)
SELECT id, run_at, (SELECT count(*) FROM notified) AS notified FROM up ORDER BY run_at, id";

const OVERDUE_SQL: &str = "
SELECT {cols} FROM {s}.jobs j
WHERE j.state = 'running'
  AND ({s}.plus_ms(j.heartbeat_at, $2::bigint) <= $1 OR j.deadline <= $1)
ORDER BY j.id
LIMIT $3
FOR UPDATE SKIP LOCKED";

const EXPIRED_WAITS_SQL: &str = "
SELECT {cols} FROM {s}.jobs j
WHERE j.state = 'waiting_external' AND j.deadline <= $1
ORDER BY j.deadline, j.id
LIMIT $2
FOR UPDATE SKIP LOCKED";

const PRUNE_SQL: &str = "
WITH old AS (
    SELECT j.id FROM {s}.jobs j
    WHERE j.state IN ('completed', 'failed', 'cancelled') AND j.finished_at < $1
    ORDER BY j.finished_at, j.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {s}.jobs j USING old WHERE j.id = old.id
RETURNING j.id, j.finished_at";

fn leadership(row: &sqlx::postgres::PgRow) -> Result<(Timestamp, Leadership), sqlx::Error> {
    Ok((
        Timestamp(row.try_get("now")?),
        Leadership {
            term: LeaderTerm(i64_to_u64(row.try_get("term")?)),
            holder: row
                .try_get::<Option<i64>, _>("holder")?
                .map(|p| ProcessId(i64_to_u64(p))),
            expires_at: Timestamp(row.try_get("expires_at")?),
        },
    ))
}

impl PgBackend {
    async fn read_leader(
        &self,
        conn: &mut PgConnection,
        now: Option<Timestamp>,
        lock: &str,
    ) -> Result<(Timestamp, Leadership), BackendError> {
        let row = sqlx::query(&self.sql(&format!("{LEADER_SQL} {lock}")))
            .bind(now.map(|t| t.0))
            .fetch_one(self.via(&mut *conn))
            .await
            .map_err(db)?;
        leadership(&row).map_err(db)
    }

    async fn write_leader(
        &self,
        conn: &mut PgConnection,
        leader: &Leadership,
    ) -> Result<(), BackendError> {
        sqlx::query(&self.sql("UPDATE {s}.leader SET term = $1, holder = $2, expires_at = $3"))
            .bind(u64_to_i64(leader.term.0))
            .bind(leader.holder.map(|p| u64_to_i64(p.0)))
            .bind(leader.expires_at.0)
            .execute(self.via(&mut *conn))
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn leader_elect(
        &self,
        now: Option<Timestamp>,
        process: ProcessId,
    ) -> Result<Result<LeaderGrant, Reject>, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (now, mut leader) = self.read_leader(&mut tx, now, "FOR UPDATE").await?;
        let before = leader;
        let grant = leader.elect(process, now, self.inner.config.world.leader_ttl);
        if leader != before {
            self.write_leader(&mut tx, &leader).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(grant)
    }

    pub(crate) async fn leader_resign(
        &self,
        now: Option<Timestamp>,
        grant: &LeaderGrant,
    ) -> Result<bool, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (now, mut leader) = self.read_leader(&mut tx, now, "FOR UPDATE").await?;
        let resigned = leader.resign(grant, now);
        if resigned {
            self.write_leader(&mut tx, &leader).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(resigned)
    }

    /// Opens a maintenance transaction for `grant`: the leader row is held
    /// `FOR SHARE` until commit. Refuses, as the world does, a write from
    /// anyone but the live leader of the current term, then a `max` above
    /// the batch limit.
    async fn begin_maintenance(
        &self,
        now: Option<Timestamp>,
        grant: &LeaderGrant,
        max: u32,
    ) -> Result<
        Result<(sqlx::Transaction<'static, sqlx::Postgres>, Timestamp, i64), Reject>,
        BackendError,
    > {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (now, leader) = self.read_leader(&mut tx, now, "FOR SHARE").await?;
        if let Err(reject) = leader.check_term(grant, now) {
            return Ok(Err(reject));
        }
        if let Err(reject) = self.check_batch_len(usize::try_from(max).unwrap_or(usize::MAX)) {
            return Ok(Err(reject));
        }
        Ok(Ok((tx, now, i64::from(max))))
    }

    pub(crate) async fn promote(
        &self,
        now: Option<Timestamp>,
        grant: &LeaderGrant,
        max: u32,
    ) -> Result<Result<Vec<JobId>, Reject>, BackendError> {
        let (mut tx, now, max) = match self.begin_maintenance(now, grant, max).await? {
            Ok(open) => open,
            Err(reject) => return Ok(Err(reject)),
        };
        let rows = sqlx::query(&self.sql(PROMOTE_SQL))
            .bind(now.0)
            .bind(max)
            .bind(self.inner.config.schema.channel())
            .bind(self.inner.config.notify)
            .fetch_all(self.via(&mut *tx))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|row| row.try_get("id").map(JobId))
            .collect::<Result<Vec<_>, _>>()
            .map(Ok)
            .map_err(db)
    }

    pub(crate) async fn rescue(
        &self,
        now: Option<Timestamp>,
        grant: &LeaderGrant,
        draw: u64,
        max: u32,
    ) -> Result<Result<Vec<(JobId, FailOutcome)>, Reject>, BackendError> {
        let (mut tx, now, max) = match self.begin_maintenance(now, grant, max).await? {
            Ok(open) => open,
            Err(reject) => return Ok(Err(reject)),
        };
        let world = &self.inner.config.world;
        let stale_after = world.heartbeat_stale_after;
        let backoff = world.backoff;
        let overdue = sqlx::query(&self.sql(&OVERDUE_SQL.replace("{cols}", JOB_COLUMNS)))
            .bind(now.0)
            .bind(span(stale_after))
            .bind(max)
            .fetch_all(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let left = max - overdue.len() as i64;
        let expired = if left > 0 {
            sqlx::query(&self.sql(&EXPIRED_WAITS_SQL.replace("{cols}", JOB_COLUMNS)))
                .bind(now.0)
                .bind(left)
                .fetch_all(self.via(&mut *tx))
                .await
                .map_err(db)?
        } else {
            Vec::new()
        };
        let overdue = rows_to_jobs(&overdue)?;
        let expired = rows_to_jobs(&expired)?;
        let order: Vec<(JobId, bool)> = overdue
            .iter()
            .map(|job| (job.id, true))
            .chain(expired.iter().map(|job| (job.id, false)))
            .collect();
        let mut locked = LockedJobs::new(overdue.into_iter().chain(expired));
        let mut out = Vec::with_capacity(order.len());
        for (id, running) in order {
            let outcome = locked.update(id, |job| {
                if running {
                    job.rescue(now, stale_after, &backoff, draw)
                } else {
                    job.expire_external(now, &backoff, draw)
                }
            });
            // Selected as overdue under a row lock, so the core agrees.
            let outcome = outcome.map_err(|reject| {
                BackendError::Unavailable(format!("rescue of job {id} refused: {reject}"))
            })?;
            out.push((id, outcome));
        }
        self.write_back(&mut tx, &locked).await?;
        tx.commit().await.map_err(db)?;
        Ok(Ok(out))
    }

    pub(crate) async fn prune(
        &self,
        now: Option<Timestamp>,
        grant: &LeaderGrant,
        older_than: Millis,
        max: u32,
    ) -> Result<Result<Vec<JobId>, Reject>, BackendError> {
        let (mut tx, now, max) = match self.begin_maintenance(now, grant, max).await? {
            Ok(open) => open,
            Err(reject) => return Ok(Err(reject)),
        };
        let rows = sqlx::query(&self.sql(PRUNE_SQL))
            .bind(now.minus(older_than).0)
            .bind(max)
            .fetch_all(self.via(&mut *tx))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut pruned = rows
            .iter()
            .map(|row| -> Result<(i64, i64), sqlx::Error> {
                Ok((row.try_get("finished_at")?, row.try_get("id")?))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        pruned.sort_unstable();
        Ok(Ok(pruned.into_iter().map(|(_, id)| JobId(id)).collect()))
    }
}

fn rows_to_jobs(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<weir_core::Job>, BackendError> {
    rows.iter()
        .map(|row| job_from_row(row).map_err(db))
        .collect()
}
