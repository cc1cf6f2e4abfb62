//! Claimer leases, and semaphore slots as rows (`Command::SlotTry` and
//! friends: the lease-table semaphore).
//!
//! Acquisition decisions are the core's: [`ClaimerTable::acquire`] /
//! [`Semaphore::try_slot`] decide on the rows as read, and only what they
//! changed is written. A claimer row is written with a compare-and-set
//! against the row the decision read (an owner's claim refreshes its row
//! without the queue's acquisition lock), and the decision is taken again
//! when the row changed meanwhile; a slot row is read under a row lock.
//!
//! # Session holds
//!
//! The world frees a session hold (`SlotTry` without a lease) when its
//! holder's session ends (`ProcessCrashed`); on Postgres the session is a
//! real one. A session hold is tried on the backend's session-hold
//! connection (opened on first use, never returned to the pool), and its
//! row records that connection's process id and start time
//! (`pg_stat_activity.backend_start`). Every slot try, renewal and release
//! reads a hold whose session is no longer in `pg_stat_activity` as free,
//! so a crashed holder's slot frees as soon as the server sees its
//! connection close. The flip side: when that connection breaks, every
//! hold it carried ends, though the holder may still be working; it learns
//! so at its next renewal or try. The world has no sessions, and needs
//! none: on one backend whose connection lives, the answers are its own.

use std::collections::BTreeMap;

use sqlx::{ConnectOptions, Connection, Row};
use weir::BackendError;
use weir_core::{
    Acquired, ClaimerGrant, ClaimerLease, ClaimerSlot, Hold, Millis, ProcessId, QueueName, Reject,
    Semaphore, SemaphoreName, SlotGrant, SlotIndex, Timestamp,
};

use crate::backend::PgBackend;
use crate::config::Pooler;
use crate::error::db;
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

/// How often one acquisition decides again after the row it chose changed
/// between its read and its write. Each retry means an owner refreshed or
/// released that very row meanwhile; the bound only stops a pathological
/// loop.
const ACQUIRE_TRIES: usize = 8;

/// Opens slot `$2`: a row no one else can insert meanwhile (acquisitions of
/// a queue hold its advisory lock), but a conflict is answered as a lost
/// race all the same.
const OPEN_LEASE_SQL: &str = "
INSERT INTO {s}.claimer_leases (queue, slot, owner, lease_epoch, last_claimed_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (queue, slot) DO NOTHING";

/// Takes slot `$2` over: a compare-and-set on the whole row as the decision
/// read it (`$7`-`$10`). The owner's claim refreshes its row without
/// taking the queue's advisory lock and without bumping `lease_epoch`, so
/// a guard on the epoch alone would not see it; this one does. When the
/// row is locked by the owner's claim, the update waits for it and then
/// tests the row as committed (READ COMMITTED re-checks the `WHERE` on the
/// newest version), so it never writes over a refresh or a release.
const TAKE_OVER_SQL: &str = "
UPDATE {s}.claimer_leases
SET owner = $3, lease_epoch = $4, last_claimed_at = $5, expires_at = $6
WHERE queue = $1 AND slot = $2
  AND owner IS NOT DISTINCT FROM $7 AND lease_epoch = $8
  AND last_claimed_at = $9 AND expires_at = $10";

const RELEASE_LEASE_SQL: &str = "
UPDATE {s}.claimer_leases
SET owner = NULL, expires_at = least(expires_at, coalesce($1::bigint, {s}.now_ms()))
WHERE queue = $2 AND slot = $3 AND lease_epoch = $4 AND owner = $5";

const SEMAPHORE_SQL: &str = "
WITH clock AS (SELECT coalesce($1::bigint, {s}.now_ms()) AS now)
SELECT clock.now, s.permits FROM clock LEFT JOIN {s}.semaphores s ON s.name = $2";

/// Creates semaphore `$1` of `$2` slots, or answers the size it already
/// has. Two processes may create it at once: the second one's insert waits
/// for the first's transaction, and a `SELECT` in the same statement would
/// still not see the row the first committed (the statement's snapshot is
/// older). `DO UPDATE` locks and returns the row as committed, whatever the
/// snapshot, so the second sees the first's size (an update to the same
/// value, only in that race: the caller runs this only when it found no
/// semaphore). Its slot rows then already exist, and are left as they are.
const CREATE_SEMAPHORE_SQL: &str = "
WITH made AS (
    INSERT INTO {s}.semaphores AS s (name, permits) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET permits = s.permits
    RETURNING name, permits
),
slots AS (
    INSERT INTO {s}.semaphore_slots (name, slot, epoch)
    SELECT made.name, g, 0 FROM made, generate_series(0, made.permits - 1) AS g
    ON CONFLICT (name, slot) DO NOTHING
)
SELECT permits FROM made";

/// Whether the session hold of slot row `s` has ended, as of the sessions
/// in `pg_stat_activity` when a statement first reads it (a snapshot's
/// view: consistent with the rows it reads). The session it records is
/// gone — its process id is not there, or belongs to a session that
/// started at another time (ids are reused). A session this role may not
/// inspect shows no start time and counts as alive: a hold is never freed
/// on a guess. False for every other row. A slot try reads the sessions as
/// they are now instead (`session_ended`, migration 4).
pub(crate) const SESSION_ENDED: &str = "(s.holder_pid IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pg_stat_get_activity(s.holder_pid) a
    WHERE a.backend_start IS NULL OR a.backend_start = s.holder_session_start))";

/// One slot row, locked, with a session hold whose session ended read as
/// free (holder `NULL`). `session_ended` reads the sessions as they are
/// when it runs; when the row was locked by another try, the row and this
/// test are taken again once it is ours (READ COMMITTED re-reads a row it
/// waited for), so a hold that try just took, on a session it may just
/// have opened, is seen alive.
const SLOT_SQL: &str = "
SELECT s.slot, s.epoch, s.lease_expires_at,
       CASE WHEN s.holder_pid IS NULL THEN s.holder
            WHEN {s}.session_ended(s.holder_pid, s.holder_session_start) THEN NULL
            ELSE s.holder END AS holder
FROM {s}.semaphore_slots s
WHERE s.name = $1 AND s.slot = $2
FOR UPDATE OF s";

/// Writes one slot row; `$6` true for a session hold, which records the
/// session of the connection writing it (the backend's session-hold
/// connection; see [`PgBackend::slot_try`]).
const WRITE_SLOT_SQL: &str = "
UPDATE {s}.semaphore_slots
SET epoch = $3, holder = $4, lease_expires_at = $5,
    holder_pid = CASE WHEN $6 THEN pg_backend_pid() END,
    holder_session_start = CASE WHEN $6 THEN
        (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a) END
WHERE name = $1 AND slot = $2";

const END_SESSION_SQL: &str = "
UPDATE {s}.semaphore_slots
SET holder = NULL, lease_expires_at = NULL, holder_pid = NULL, holder_session_start = NULL
WHERE holder = $1
RETURNING name, slot";

/// One `Command::SlotTry`.
struct SlotAsk {
    name: SemaphoreName,
    permits: u16,
    slot: SlotIndex,
    holder: ProcessId,
    lease_ttl: Option<Millis>,
}

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
        for _ in 0..ACQUIRE_TRIES {
            let (at, slots) = self.read_leases(&mut tx, now, queue).await?;
            let mut table = claimer_table(slots.clone());
            let acquired = table.acquire(process, at, &self.inner.config.world.claimer);
            let settled = match &acquired {
                Ok((grant, _)) => {
                    let lease = table.lease(grant.slot).expect("acquire returned this slot");
                    let before = slots.get(&grant.slot);
                    before == Some(lease)
                        || self
                            .write_lease(&mut tx, queue, grant.slot, before, lease)
                            .await?
                }
                Err(_) => true,
            };
            if settled {
                tx.commit().await.map_err(db)?;
                return Ok(acquired);
            }
            // The chosen row changed after the read (its owner's claim
            // refreshed it, or it was released): decide again on the rows
            // as they are now. The decision and its write are then about
            // the same row state, so the answer is the world's for the
            // moment of the write.
        }
        Err(BackendError::Unavailable(format!(
            "the claimer leases of queue {queue} kept changing under the acquisition; retry"
        )))
    }

    /// The clock and the queue's lease rows, read without locks: a write
    /// guards itself ([`TAKE_OVER_SQL`]).
    async fn read_leases(
        &self,
        tx: &mut sqlx::PgConnection,
        now: Option<Timestamp>,
        queue: &QueueName,
    ) -> Result<(Timestamp, BTreeMap<ClaimerSlot, ClaimerLease>), BackendError> {
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
        Ok((now, slots))
    }

    /// Writes `lease` into `slot`, if the row is still `before` (`None`:
    /// there is no row yet). Whether it was written.
    async fn write_lease(
        &self,
        tx: &mut sqlx::PgConnection,
        queue: &QueueName,
        slot: ClaimerSlot,
        before: Option<&ClaimerLease>,
        lease: &ClaimerLease,
    ) -> Result<bool, BackendError> {
        let sql = self.sql(match before {
            None => OPEN_LEASE_SQL,
            Some(_) => TAKE_OVER_SQL,
        });
        let mut query = sqlx::query(&sql)
            .bind(queue.as_str())
            .bind(i32::from(slot.0))
            .bind(lease.owner.map(|p| u64_to_i64(p.0)))
            .bind(u64_to_i64(lease.lease_epoch.0))
            .bind(lease.last_claimed_at.0)
            .bind(lease.expires_at.0);
        if let Some(old) = before {
            query = query
                .bind(old.owner.map(|p| u64_to_i64(p.0)))
                .bind(u64_to_i64(old.lease_epoch.0))
                .bind(old.last_claimed_at.0)
                .bind(old.expires_at.0);
        }
        let done = query.execute(self.via(&mut *tx)).await.map_err(db)?;
        Ok(done.rows_affected() == 1)
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
        let (holder, expires, session) = match entry.held {
            None => (None, None, false),
            Some(h) => (
                Some(u64_to_i64(h.holder.0)),
                match h.hold {
                    Hold::Session => None,
                    Hold::Lease { expires_at } => Some(expires_at.0),
                },
                h.hold == Hold::Session,
            ),
        };
        sqlx::query(&self.sql(WRITE_SLOT_SQL))
            .bind(name.as_str())
            .bind(i32::from(slot.0))
            .bind(u64_to_i64(entry.epoch.0))
            .bind(holder)
            .bind(expires)
            .bind(session)
            .execute(self.via(&mut *conn))
            .await
            .map_err(db)?;
        Ok(())
    }

    /// A lease hold is tried on any pooled connection. A session hold
    /// lasts as long as the session it is taken on, so it is tried on the
    /// backend's session-hold connection: opened on first use, never
    /// returned to the pool, and recorded in the row it writes. When that
    /// connection breaks, every hold it carried ends with it (the next
    /// session try opens a new one); when the backend is dropped, it
    /// closes.
    pub(crate) async fn slot_try(
        &self,
        now: Option<Timestamp>,
        name: SemaphoreName,
        permits: u16,
        slot: SlotIndex,
        holder: ProcessId,
        lease_ttl: Option<Millis>,
    ) -> Result<Result<SlotGrant, Reject>, BackendError> {
        if lease_ttl.is_none() && self.inner.config.pooler == Pooler::Transaction {
            // The hold would record whichever server connection the pooler
            // lent, which can outlive the holder or close under it.
            return Err(BackendError::Misconfigured(
                "a session hold (a slot try without a lease) cannot work through a \
                 transaction pooler (Pooler::Transaction): hold slots as leases"
                    .to_string(),
            ));
        }
        let ask = SlotAsk {
            name,
            permits,
            slot,
            holder,
            lease_ttl,
        };
        if lease_ttl.is_some() {
            let mut conn = self.inner.pool.acquire().await.map_err(db)?;
            return self.slot_try_on(&mut conn, now, ask).await;
        }
        let mut session = self.inner.session.lock().await;
        if session.is_none() {
            *session = Some(self.open_session().await?);
        }
        let conn = session.as_mut().expect("opened above");
        let tried = self.slot_try_on(conn, now, ask).await;
        if tried.is_err() && conn.ping().await.is_err() {
            // The session is gone, and every hold it carried with it.
            *session = None;
        }
        tried
    }

    /// A new session-hold connection, with the pool's settings.
    async fn open_session(&self) -> Result<sqlx::PgConnection, BackendError> {
        self.inner
            .pool
            .connect_options()
            .connect()
            .await
            .map_err(|e| {
                // Nothing was sent yet: nothing can have been applied.
                BackendError::Unavailable(format!("opening the session-hold connection: {e}"))
            })
    }

    async fn slot_try_on(
        &self,
        conn: &mut sqlx::PgConnection,
        now: Option<Timestamp>,
        ask: SlotAsk,
    ) -> Result<Result<SlotGrant, Reject>, BackendError> {
        let SlotAsk {
            name,
            permits,
            slot,
            holder,
            lease_ttl,
        } = ask;
        // Bounded lock waits: a slot row held by a stuck transaction fails
        // this try (an errored try the scan skips) instead of stalling it.
        let mut tx = conn
            .begin_with(crate::semaphore::SLOT_TRY_BEGIN)
            .await
            .map_err(db)?;
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
