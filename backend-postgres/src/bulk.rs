//! Bulk enqueue through `COPY ... FROM STDIN`: the fastest way in for many
//! jobs that need no unique key.

use std::fmt::Write as _;

use sqlx::Row;
use weir::BackendError;
use weir_core::{NewJob, Reject, Timestamp};

use crate::backend::{db, PgBackend};
use crate::rows::span;

/// Rows sent per `COPY` data message, so memory stays bounded.
const CHUNK_ROWS: usize = 4096;

/// Why a bulk enqueue did not happen. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A job is invalid ([`Reject::InvalidJob`]), exactly as a batch
    /// enqueue would say.
    #[error(transparent)]
    Rejected(Reject),
    /// `COPY` cannot resolve duplicates: use [`PgBackend::enqueue`] for
    /// jobs with a unique key.
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
    /// how many were inserted. Two round trips plus the data, whatever the
    /// number of jobs.
    pub async fn enqueue_copy(&self, jobs: &[NewJob]) -> Result<u64, CopyError> {
        if let Some(index) = jobs.iter().position(|job| job.unique_key.is_some()) {
            return Err(CopyError::UniqueKey { index });
        }
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let now = self.now_in(&mut *tx, None).await?;
        let limits = self.inner.config.world.limits;
        for (index, job) in jobs.iter().enumerate() {
            if let Err(error) = job.validate(now, &limits) {
                return Err(CopyError::Rejected(Reject::InvalidJob { index, error }));
            }
        }
        let statement = self.sql(
            "COPY {s}.jobs (queue, kind, payload, priority, attempt, max_attempts, epoch, \
             timeout_ms, created_at, state, run_at) FROM STDIN",
        );
        let mut copy = tx.copy_in_raw(&statement).await.map_err(db)?;
        let mut buffer = String::new();
        for chunk in jobs.chunks(CHUNK_ROWS) {
            buffer.clear();
            for job in chunk {
                copy_row(&mut buffer, job, now);
            }
            if let Err(error) = copy.send(buffer.as_bytes()).await {
                let _ = copy.abort("weir: send failed").await;
                return Err(db(error).into());
            }
        }
        let inserted = copy.finish().await.map_err(db)?;
        if self.inner.config.notify {
            let queues: std::collections::BTreeSet<String> = jobs
                .iter()
                .filter(|job| job.run_at.is_none_or(|at| at <= now))
                .map(|job| format!("j:{}", job.queue))
                .collect();
            sqlx::query("SELECT count(pg_notify($1, m)) AS n FROM unnest($2::text[]) AS m")
                .bind(self.inner.config.schema.channel())
                .bind(queues.into_iter().collect::<Vec<_>>())
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?
                .try_get::<i64, _>("n")
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(inserted)
    }
}

/// One row in `COPY` text format. Queue and kind names have no character
/// that needs escaping (their alphabets exclude tab, newline and
/// backslash); the payload goes as bytea hex, its backslash escaped.
fn copy_row(out: &mut String, job: &NewJob, now: Timestamp) {
    let run_at = job.run_at.unwrap_or(now);
    let state = if run_at > now {
        "scheduled"
    } else {
        "available"
    };
    let _ = write!(out, "{}\t{}\t\\\\x", job.queue.as_str(), job.kind.as_str());
    for byte in &job.payload.0 {
        let _ = write!(out, "{byte:02x}");
    }
    let _ = writeln!(
        out,
        "\t{}\t0\t{}\t0\t{}\t{}\t{state}\t{}",
        job.priority.0,
        job.max_attempts,
        span(job.timeout),
        now.0,
        run_at.0
    );
}
