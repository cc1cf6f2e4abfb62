//! Operator reads: [`weir::Backend::job`], [`weir::Backend::jobs`] and
//! [`weir::Backend::queues`], with the answers of the core's reference
//! reads over a `World` (`weir_core::reads`).
//!
//! They decide nothing and lock nothing; each is one statement. Orders
//! that reach the answer (queue and kind names, process ids) are taken in
//! Rust, by the core's own `Ord`, not by the database's collation.

use std::collections::BTreeMap;

use sqlx::Row;
use weir::{BackendError, JobFilter, QueueInfo};
use weir_core::{Job, JobId, Kind, QueueName, StateName};

use crate::backend::PgBackend;
use crate::error::db;
use crate::rows::{job_from_row, JOB_COLUMNS};

/// Queue depths by state, unfinished jobs by kind, and paused queues, as
/// tagged rows. Depths read every job (an operator read, like
/// `count(*)`); the unfinished count is written as one arm per partial
/// index (`jobs_claim`, `jobs_due`, `jobs_running`, `jobs_waiting`), so
/// the planner can read those indexes alone and skip the finished jobs,
/// which are most of the table.
const QUEUES_SQL: &str = "
SELECT 'depth' AS what, queue, state AS name, count(*) AS n
FROM {s}.jobs GROUP BY queue, state
UNION ALL
SELECT 'kind', queue, kind, count(*)
FROM {s}.jobs
WHERE state = 'available' OR state IN ('scheduled', 'retryable') OR state = 'running'
   OR state = 'waiting_external'
GROUP BY queue, kind
UNION ALL
SELECT 'paused', queue, NULL, 0 FROM {s}.paused_queues";

fn decode<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, BackendError> {
    r.map_err(|e| BackendError::Unavailable(format!("stored value: {e}")))
}

fn blank(queue: QueueName) -> QueueInfo {
    QueueInfo {
        queue,
        paused: false,
        depths: StateName::ALL.iter().map(|&s| (s, 0)).collect(),
        unfinished_by_kind: Vec::new(),
    }
}

impl PgBackend {
    pub(crate) async fn read_job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM {{s}}.jobs j WHERE j.id = $1");
        let row = sqlx::query(&self.sql(&sql))
            .bind(id.0)
            .fetch_optional(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        row.as_ref().map(job_from_row).transpose().map_err(db)
    }

    /// Only the filter's own conditions are in the statement (at most 16
    /// texts, each prepared once), so each is planned for what it asks:
    /// the primary key for id order and `after`, the partial indexes for a
    /// state.
    pub(crate) async fn read_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM {{s}}.jobs j WHERE true");
        if filter.queue.is_some() {
            sql.push_str(" AND j.queue = $1");
        }
        if filter.state.is_some() {
            sql.push_str(" AND j.state = $2");
        }
        if filter.kind.is_some() {
            sql.push_str(" AND j.kind = $3");
        }
        if filter.after.is_some() {
            sql.push_str(" AND j.id > $4");
        }
        sql.push_str(" ORDER BY j.id LIMIT $5");
        let limit = filter.limit.min(JobFilter::LIMIT_MAX);
        // Every parameter is bound, used or not: sqlx sends their types,
        // so an unused one is no error.
        sqlx::query(&self.sql(&sql))
            .bind(filter.queue.as_ref().map(QueueName::as_str))
            .bind(filter.state.map(StateName::as_str))
            .bind(filter.kind.as_ref().map(Kind::as_str))
            .bind(filter.after.map(|id| id.0))
            .bind(i64::from(limit))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)
    }

    pub(crate) async fn read_queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        let rows = sqlx::query(&self.sql(QUEUES_SQL))
            .fetch_all(self.via(&self.inner.pool))
            .await
            .map_err(db)?;
        let mut by_queue: BTreeMap<QueueName, QueueInfo> = BTreeMap::new();
        let mut kinds: BTreeMap<(QueueName, Kind), u64> = BTreeMap::new();
        for row in &rows {
            let what: String = row.try_get("what").map_err(db)?;
            let queue = decode(QueueName::new(
                row.try_get::<String, _>("queue").map_err(db)?,
            ))?;
            let name: Option<String> = row.try_get("name").map_err(db)?;
            let n = decode(u64::try_from(row.try_get::<i64, _>("n").map_err(db)?))?;
            let info = by_queue
                .entry(queue.clone())
                .or_insert_with(|| blank(queue.clone()));
            match (what.as_str(), name) {
                ("depth", Some(state)) => {
                    let state = StateName::parse(&state)
                        .ok_or_else(|| decode_error(format!("job state {state:?}")))?;
                    let slot = info
                        .depths
                        .iter_mut()
                        .find(|(s, _)| *s == state)
                        .expect("depths list every state");
                    slot.1 = n;
                }
                ("kind", Some(kind)) => {
                    kinds.insert((queue, decode(Kind::new(kind))?), n);
                }
                ("paused", None) => info.paused = true,
                (what, name) => {
                    return Err(decode_error(format!("queue row {what:?} {name:?}")));
                }
            }
        }
        for ((queue, kind), n) in kinds {
            let info = by_queue
                .get_mut(&queue)
                .expect("a kind row's queue has a depth row");
            info.unfinished_by_kind.push((kind, n));
        }
        Ok(by_queue.into_values().collect())
    }
}

fn decode_error(what: String) -> BackendError {
    BackendError::Unavailable(format!("stored value: unknown {what}"))
}
