//! Everything the backend stores, read back as the core's values: for
//! differential tests (compared with a `World`) and for inspection.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::postgres::PgConnection;
use sqlx::Row;
use weir::BackendError;
use weir_core::{
    ClaimerLease, ClaimerSlot, Job, LeaderTerm, Leadership, ProcessId, QueueName, SemaphoreName,
    Slot, Timestamp,
};

use crate::backend::PgBackend;
use crate::error::db;
use crate::leases::SESSION_ENDED;
use crate::rows::{i64_to_u64, job_from_row, lease_from_row, slot_from_row, JOB_COLUMNS};

/// The stored state, in the core's types and orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Every job, by id.
    pub jobs: Vec<Job>,
    /// Every queue's claimer slots (queues with at least one slot).
    pub claimers: BTreeMap<QueueName, Vec<(ClaimerSlot, ClaimerLease)>>,
    /// Every semaphore: its permits and all its slots in order.
    pub semaphores: BTreeMap<SemaphoreName, (u16, Vec<Slot>)>,
    /// The leader lease.
    pub leadership: Leadership,
    /// The paused queues.
    pub paused: BTreeSet<QueueName>,
}

/// Every slot row, a session hold whose session ended read as free (as a
/// slot try reads it). The session columns are read through `to_jsonb`,
/// where a schema from before version 4, which has none, gives `NULL`: the
/// upgrade tests take snapshots of older schemas.
const SLOTS_SQL: &str = "
SELECT s.name, s.slot, s.epoch, s.lease_expires_at,
       CASE WHEN {ended} THEN NULL ELSE s.holder END AS holder
FROM (SELECT t.name, t.slot, t.epoch, t.holder, t.lease_expires_at,
             (to_jsonb(t) ->> 'holder_pid')::integer AS holder_pid,
             (to_jsonb(t) ->> 'holder_session_start')::timestamptz AS holder_session_start
      FROM {s}.semaphore_slots t) s";

fn decode<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, BackendError> {
    r.map_err(|e| BackendError::Unavailable(format!("stored value: {e}")))
}

impl PgBackend {
    /// Reads the whole state in one repeatable-read transaction. For tests
    /// and small databases: it reads every row.
    pub async fn snapshot(&self) -> Result<Snapshot, BackendError> {
        let mut tx = self.pool().begin().await.map_err(db)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let snapshot = Snapshot {
            jobs: self.stored_jobs(&mut tx).await?,
            claimers: self.stored_claimers(&mut tx).await?,
            semaphores: self.stored_semaphores(&mut tx).await?,
            leadership: self.stored_leadership(&mut tx).await?,
            paused: self.stored_paused(&mut tx).await?,
        };
        tx.commit().await.map_err(db)?;
        Ok(snapshot)
    }

    async fn stored_jobs(&self, conn: &mut PgConnection) -> Result<Vec<Job>, BackendError> {
        sqlx::query(&self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM {{s}}.jobs j ORDER BY j.id"
        )))
        .fetch_all(self.via(&mut *conn))
        .await
        .map_err(db)?
        .iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)
    }

    async fn stored_claimers(
        &self,
        conn: &mut PgConnection,
    ) -> Result<BTreeMap<QueueName, Vec<(ClaimerSlot, ClaimerLease)>>, BackendError> {
        let mut claimers: BTreeMap<QueueName, Vec<(ClaimerSlot, ClaimerLease)>> = BTreeMap::new();
        for row in sqlx::query(&self.sql(
            "SELECT queue, slot, owner, lease_epoch, last_claimed_at, expires_at
             FROM {s}.claimer_leases ORDER BY queue, slot",
        ))
        .fetch_all(self.via(&mut *conn))
        .await
        .map_err(db)?
        {
            let queue = decode(QueueName::new(
                row.try_get::<String, _>("queue").map_err(db)?,
            ))?;
            claimers
                .entry(queue)
                .or_default()
                .push(lease_from_row(&row).map_err(db)?);
        }
        Ok(claimers)
    }

    async fn stored_semaphores(
        &self,
        conn: &mut PgConnection,
    ) -> Result<BTreeMap<SemaphoreName, (u16, Vec<Slot>)>, BackendError> {
        let mut semaphores: BTreeMap<SemaphoreName, (u16, Vec<Slot>)> = BTreeMap::new();
        for row in sqlx::query(&self.sql("SELECT name, permits FROM {s}.semaphores"))
            .fetch_all(self.via(&mut *conn))
            .await
            .map_err(db)?
        {
            let name = decode(SemaphoreName::new(
                row.try_get::<String, _>("name").map_err(db)?,
            ))?;
            let permits: i32 = row.try_get("permits").map_err(db)?;
            let permits = permits as u16;
            semaphores.insert(name, (permits, vec![Slot::default(); usize::from(permits)]));
        }
        let slots = self.sql(&SLOTS_SQL.replace("{ended}", SESSION_ENDED));
        for row in sqlx::query(&slots)
            .fetch_all(self.via(&mut *conn))
            .await
            .map_err(db)?
        {
            let name = decode(SemaphoreName::new(
                row.try_get::<String, _>("name").map_err(db)?,
            ))?;
            let (index, slot) = slot_from_row(&row).map_err(db)?;
            if let Some((_, slots)) = semaphores.get_mut(&name) {
                if let Some(entry) = slots.get_mut(usize::from(index)) {
                    *entry = slot;
                }
            }
        }
        Ok(semaphores)
    }

    async fn stored_leadership(&self, conn: &mut PgConnection) -> Result<Leadership, BackendError> {
        let row = sqlx::query(&self.sql("SELECT term, holder, expires_at FROM {s}.leader"))
            .fetch_one(self.via(&mut *conn))
            .await
            .map_err(db)?;
        Ok(Leadership {
            term: LeaderTerm(i64_to_u64(row.try_get("term").map_err(db)?)),
            holder: row
                .try_get::<Option<i64>, _>("holder")
                .map_err(db)?
                .map(|p| ProcessId(i64_to_u64(p))),
            expires_at: Timestamp(row.try_get("expires_at").map_err(db)?),
        })
    }

    async fn stored_paused(
        &self,
        conn: &mut PgConnection,
    ) -> Result<BTreeSet<QueueName>, BackendError> {
        sqlx::query_scalar::<_, String>(&self.sql("SELECT queue FROM {s}.paused_queues"))
            .fetch_all(self.via(&mut *conn))
            .await
            .map_err(db)?
            .into_iter()
            .map(|q| decode(QueueName::new(q)))
            .collect()
    }
}
