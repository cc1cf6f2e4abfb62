//! Worker presence ([`weir::Backend::announce`], [`weir::Backend::retire`],
//! [`weir::Backend::workers`]) in the `workers` table (migration 2).
//!
//! Presence decides nothing (claimer leases say who may claim): it tells an
//! operator which processes are alive and which kinds they can run. Each
//! call is one statement; times are the database clock, like every
//! command's.

use std::time::Duration;

use sqlx::Row;
use weir::{BackendError, Presence, WorkerInfo};
use weir_core::{Kind, ProcessId, QueueName, Timestamp};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{i64_to_u64, u64_to_i64};

/// Upserts the caller's row, and deletes rows of other processes that
/// have expired, so crashed processes do not pile up. `SKIP LOCKED`: two
/// announces never wait on each other's cleanup (so they cannot deadlock),
/// and a row being re-announced is left to its owner.
const ANNOUNCE_SQL: &str = "
WITH clock AS (SELECT {s}.now_ms() AS now),
gone AS (
    DELETE FROM {s}.workers d
    WHERE d.process IN (
        SELECT o.process FROM {s}.workers o, clock c
        WHERE o.expires_at <= c.now AND o.process <> $1
        FOR UPDATE OF o SKIP LOCKED
    )
)
INSERT INTO {s}.workers AS w (process, label, queues, kinds, started_at, seen_at, expires_at)
SELECT $1, $2, $3, $4, $5, c.now, {s}.plus_ms(c.now, $6) FROM clock c
ON CONFLICT (process) DO UPDATE
SET label = EXCLUDED.label, queues = EXCLUDED.queues, kinds = EXCLUDED.kinds,
    started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at,
    expires_at = EXCLUDED.expires_at";

const WORKERS_SQL: &str = "
SELECT process, label, queues, kinds, started_at, seen_at, expires_at
FROM {s}.workers WHERE expires_at > {s}.now_ms()";

fn decode<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, BackendError> {
    r.map_err(|e| BackendError::Unavailable(format!("stored value: {e}")))
}

impl PgBackend {
    pub(crate) async fn announce_presence(
        &self,
        presence: &Presence,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let queues: Vec<&str> = presence.queues.iter().map(QueueName::as_str).collect();
        let kinds: Vec<&str> = presence.kinds.iter().map(Kind::as_str).collect();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(&self.sql(ANNOUNCE_SQL))
            .bind(u64_to_i64(presence.process.0))
            .bind(&presence.label)
            .bind(queues)
            .bind(kinds)
            .bind(presence.started_at.0)
            .bind(ttl_ms)
            .execute(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn retire_presence(&self, process: ProcessId) -> Result<(), BackendError> {
        sqlx::query(&self.sql("DELETE FROM {s}.workers WHERE process = $1"))
            .bind(u64_to_i64(process.0))
            .execute(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Sorted in Rust: process ids are `u64` stored bit for bit, so the
    /// database's `bigint` order is not theirs above `i64::MAX`.
    pub(crate) async fn live_workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let rows = sqlx::query(&self.sql(WORKERS_SQL))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        let mut workers = Vec::with_capacity(rows.len());
        for row in &rows {
            let queues: Vec<String> = row.try_get("queues").map_err(db)?;
            let kinds: Vec<String> = row.try_get("kinds").map_err(db)?;
            workers.push(WorkerInfo {
                presence: Presence {
                    process: ProcessId(i64_to_u64(row.try_get("process").map_err(db)?)),
                    label: row.try_get("label").map_err(db)?,
                    queues: decode(queues.into_iter().map(QueueName::new).collect())?,
                    kinds: decode(kinds.into_iter().map(Kind::new).collect())?,
                    started_at: Timestamp(row.try_get("started_at").map_err(db)?),
                },
                seen_at: Timestamp(row.try_get("seen_at").map_err(db)?),
                expires_at: Timestamp(row.try_get("expires_at").map_err(db)?),
            });
        }
        workers.sort_by_key(|w| w.presence.process);
        Ok(workers)
    }
}
