//! Claimer leases, and semaphore slots as rows (`Command::SlotTry` and
//! friends: the lease-table semaphore).
//!
//! Acquisition decisions are the core's: the rows are read under a lock and
//! [`ClaimerTable::acquire`] / [`Semaphore::try_slot`] decide; only what
//! they changed is written.

use std::collections::BTreeMap;

use sqlx::Row;
use weir::BackendError;
use weir_core::{
    Acquired, ClaimerGrant, ClaimerSlot, Hold, Millis, ProcessId, QueueName, Reject, Semaphore,
    SemaphoreName, SlotGrant, SlotIndex, Timestamp,
};

use crate::backend::{db, PgBackend};
use crate::rows::{claimer_table, lease_from_row, semaphore, slot_from_row, u64_to_i64};

const MY_LEASE_SQL: &str = "
SELECT l.slot, l.lease_epoch FROM {s}.claimer_leases l
WHERE l.queue = $2 AND l.owner = $3 AND l.expires_at > coalesce($1::bigint, {s}.now_ms())
ORDER BY l.slot
LIMIT 1";

const LEASES_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now)
SELECT clock.now, l.slot, l.owner, l.lease_epoch, l.last_claimed_at, l.expires_at
FROM clock LEFT JOIN {s}.claimer_leases l ON l.queue = $2
ORDER BY l.slot";

const UPSERT_LEASE_SQL: &str = "
INSERT INTO {s}.claimer_leases (queue, slot, owner, lease_epoch, last_claimed_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (queue, slot) DO UPDATE SET
    owner = excluded.owner, lease_epoch = excluded.lease_epoch,
    last_claimed_at = excluded.last_claimed_at, expires_at = excluded.expires_at";

const RELEASE_LEASE_SQL: &str = "
UPDATE {s}.claimer_leases
SET owner = NULL, expires_at = least(expires_at, coalesce($1::bigint, {s}.now_ms()))
WHERE queue = $2 AND slot = $3 AND lease_epoch = $4 AND owner = $5";

const SEMAPHORE_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now)
SELECT clock.now, s.permits FROM clock LEFT JOIN {s}.semaphores s ON s.name = $2";

const CREATE_SEMAPHORE_SQL: &str = "
WITH made AS (
    INSERT INTO {s}.semaphores (name, permits) VALUES ($1, $2)
    ON CONFLICT (name) DO NOTHING
    RETURNING name, permits
),
slots AS (
    INSERT INTO {s}.semaphore_slots (name, slot, epoch)
    SELECT made.name, g, 0 FROM made, generate_series(0, made.permits - 1) AS g
)
SELECT permits FROM made
UNION ALL
SELECT permits FROM {s}.semaphores WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM made)";

const SLOT_SQL: &str = "
SELECT slot, epoch, holder, lease_expires_at FROM {s}.semaphore_slots
WHERE name = $1 AND slot = $2
FOR UPDATE";

const WRITE_SLOT_SQL: &str = "
UPDATE {s}.semaphore_slots SET epoch = $3, holder = $4, lease_expires_at = $5
WHERE name = $1 AND slot = $2";

const END_SESSION_SQL: &str = "
UPDATE {s}.semaphore_slots SET holder = NULL, lease_expires_at = NULL
WHERE holder = $1
RETURNING name, slot";

impl PgBackend {
    pub(crate) async fn claimer_acquire(
        &self,
        now: Option<Timestamp>,
        queue: &QueueName,
        process: ProcessId,
    ) -> Result<Result<(ClaimerGrant, Acquired), Reject>, BackendError> {
        // The common case, one round trip and no write: the caller's own
        // unexpired lease, exactly what `acquire` would reuse.
        let mine = sqlx::query(&self.sql(MY_LEASE_SQL))
            .bind(now.map(|t| t.0))
            .bind(queue.as_str())
            .bind(u64_to_i64(process.0))
            .fetch_optional(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        if let Some(row) = mine {
            let slot: i32 = row.try_get("slot").map_err(db)?;
            let epoch: i64 = row.try_get("lease_epoch").map_err(db)?;
            let grant = ClaimerGrant {
                process,
                slot: ClaimerSlot(slot as u16),
                lease_epoch: weir_core::LeaseEpoch(epoch as u64),
            };
            return Ok(Ok((grant, Acquired::Reused)));
        }
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        // Serialises acquisitions on one queue (opening a slot inserts a row
        // that no row lock could guard); released at commit.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("weir.claimer.{}.{queue}", self.schema()))
            .execute(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let rows = sqlx::query(&self.sql(LEASES_SQL))
            .bind(now.map(|t| t.0))
            .bind(queue.as_str())
            .fetch_all(self.via(&mut *tx))
            .await
            .map_err(db)?;
        let now = Timestamp(rows[0].try_get("now").map_err(db)?);
        let mut slots = BTreeMap::new();
        for row in &rows {
            if row.try_get::<Option<i32>, _>("slot").map_err(db)?.is_some() {
                let (slot, lease) = lease_from_row(row).map_err(db)?;
                slots.insert(slot, lease);
            }
        }
        let mut table = claimer_table(slots.clone());
        let acquired = table.acquire(process, now, &self.inner.config.world.claimer);
        if let Ok((grant, _)) = &acquired {
            let lease = table.lease(grant.slot).expect("acquire returned this slot");
            if slots.get(&grant.slot) != Some(lease) {
                sqlx::query(&self.sql(UPSERT_LEASE_SQL))
                    .bind(queue.as_str())
                    .bind(i32::from(grant.slot.0))
                    .bind(lease.owner.map(|p| u64_to_i64(p.0)))
                    .bind(u64_to_i64(lease.lease_epoch.0))
                    .bind(lease.last_claimed_at.0)
                    .bind(lease.expires_at.0)
                    .execute(self.via(&mut *tx))
                    .await
                    .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(acquired)
    }

    pub(crate) async fn claimer_release(
        &self,
        now: Option<Timestamp>,
        queue: &QueueName,
        grant: &ClaimerGrant,
    ) -> Result<bool, BackendError> {
        let done = sqlx::query(&self.sql(RELEASE_LEASE_SQL))
            .bind(now.map(|t| t.0))
            .bind(queue.as_str())
            .bind(i32::from(grant.slot.0))
            .bind(u64_to_i64(grant.lease_epoch.0))
            .bind(u64_to_i64(grant.process.0))
            .execute(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    /// Reads the clock and the semaphore's size (`None`: never tried).
    async fn semaphore_size(
        &self,
        conn: &mut sqlx::PgConnection,
        now: Option<Timestamp>,
        name: &SemaphoreName,
    ) -> Result<(Timestamp, Option<u16>), BackendError> {
        let row = sqlx::query(&self.sql(SEMAPHORE_SQL))
            .bind(now.map(|t| t.0))
            .bind(name.as_str())
            .fetch_one(self.via(&mut *conn))
            .await
            .map_err(db)?;
        let permits: Option<i32> = row.try_get("permits").map_err(db)?;
        Ok((
            Timestamp(row.try_get("now").map_err(db)?),
            permits.map(|p| p as u16),
        ))
    }

    /// The semaphore with the row of `slot` locked and loaded (the other
    /// slots free at epoch 0: the command touches only this one).
    async fn lock_slot(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &SemaphoreName,
        permits: u16,
        slot: SlotIndex,
    ) -> Result<Semaphore, BackendError> {
        let mut rows = Vec::new();
        if slot.0 < permits {
            if let Some(row) = sqlx::query(&self.sql(SLOT_SQL))
                .bind(name.as_str())
                .bind(i32::from(slot.0))
                .fetch_optional(self.via(&mut *conn))
                .await
                .map_err(db)?
            {
                rows.push(slot_from_row(&row).map_err(db)?);
            }
        }
        Ok(semaphore(permits, rows))
    }

    async fn write_slot(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &SemaphoreName,
        sem: &Semaphore,
        slot: SlotIndex,
    ) -> Result<(), BackendError> {
        let Some((_, entry)) = sem.slots().find(|(i, _)| *i == slot) else {
            return Ok(());
        };
        let (holder, expires) = match entry.held {
            None => (None, None),
            Some(h) => (
                Some(u64_to_i64(h.holder.0)),
                match h.hold {
                    Hold::Session => None,
                    Hold::Lease { expires_at } => Some(expires_at.0),
                },
            ),
        };
        sqlx::query(&self.sql(WRITE_SLOT_SQL))
            .bind(name.as_str())
            .bind(i32::from(slot.0))
            .bind(u64_to_i64(entry.epoch.0))
            .bind(holder)
            .bind(expires)
            .execute(self.via(&mut *conn))
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn slot_try(
        &self,
        now: Option<Timestamp>,
        name: SemaphoreName,
        permits: u16,
        slot: SlotIndex,
        holder: ProcessId,
        lease_ttl: Option<Millis>,
    ) -> Result<Result<SlotGrant, Reject>, BackendError> {
        // Bounded lock waits: a slot row held by a stuck transaction fails
        // this try (an errored try the scan skips) instead of stalling it.
        let begin = crate::semaphore::SLOT_TRY_BEGIN;
        let mut tx = self.inner.pool.begin_with(begin).await.map_err(db)?;
        let (now, configured) = self.semaphore_size(&mut tx, now, &name).await?;
        let configured = match configured {
            Some(configured) => configured,
            None if permits == 0 => return Ok(Err(Reject::ZeroPermits)),
            None => {
                let made: i32 = sqlx::query_scalar(&self.sql(CREATE_SEMAPHORE_SQL))
                    .bind(name.as_str())
                    .bind(i32::from(permits))
                    .fetch_one(self.via(&mut *tx))
                    .await
                    .map_err(db)?;
                made as u16
            }
        };
        if configured != permits {
            return Ok(Err(Reject::PermitsMismatch {
                name,
                configured,
                presented: permits,
            }));
        }
        let hold = match lease_ttl {
            None => Hold::Session,
            Some(ttl) => Hold::Lease {
                expires_at: now.plus(ttl),
            },
        };
        let mut sem = self.lock_slot(&mut tx, &name, permits, slot).await?;
        let grant = sem.try_slot(slot, holder, hold, now);
        if grant.is_ok() {
            self.write_slot(&mut tx, &name, &sem, slot).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(grant)
    }

    pub(crate) async fn slot_renew(
        &self,
        now: Option<Timestamp>,
        name: &SemaphoreName,
        grant: &SlotGrant,
        lease_ttl: Millis,
    ) -> Result<Result<(), Reject>, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (now, permits) = self.semaphore_size(&mut tx, now, name).await?;
        let Some(permits) = permits else {
            return Ok(Err(Reject::SlotNotHeld { slot: grant.slot }));
        };
        let mut sem = self.lock_slot(&mut tx, name, permits, grant.slot).await?;
        let before = sem.clone();
        let renewed = sem.renew(grant, now.plus(lease_ttl), now);
        if sem != before {
            self.write_slot(&mut tx, name, &sem, grant.slot).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(renewed)
    }

    pub(crate) async fn slot_release(
        &self,
        name: &SemaphoreName,
        grant: &SlotGrant,
    ) -> Result<bool, BackendError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (_, permits) = self.semaphore_size(&mut tx, None, name).await?;
        let Some(permits) = permits else {
            return Ok(false);
        };
        let mut sem = self.lock_slot(&mut tx, name, permits, grant.slot).await?;
        let released = sem.release(grant);
        if released {
            self.write_slot(&mut tx, name, &sem, grant.slot).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(released)
    }

    /// Frees every slot row `process` holds (session or lease), as the
    /// world's `ProcessCrashed` does. Advisory-lock holds
    /// ([`crate::semaphore::AdvisorySemaphore`]) need no such call: the
    /// server frees them when the holder's connection closes.
    pub(crate) async fn end_session(
        &self,
        process: ProcessId,
    ) -> Result<Vec<(SemaphoreName, SlotIndex)>, BackendError> {
        let rows = sqlx::query(&self.sql(END_SESSION_SQL))
            .bind(u64_to_i64(process.0))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        let mut freed = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name").map_err(db)?;
            let slot: i32 = row.try_get("slot").map_err(db)?;
            let name = SemaphoreName::new(name)
                .map_err(|e| BackendError::Unavailable(format!("stored semaphore name: {e}")))?;
            freed.push((name, SlotIndex(slot as u16)));
        }
        freed.sort();
        Ok(freed)
    }
}

impl PgBackend {
    /// Creates semaphore `name` with `permits` slot rows unless it exists.
    pub(crate) async fn slot_try_create(
        &self,
        name: &SemaphoreName,
        permits: u16,
    ) -> Result<(), BackendError> {
        sqlx::query(&self.sql(CREATE_SEMAPHORE_SQL))
            .bind(name.as_str())
            .bind(i32::from(permits))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        Ok(())
    }
}
