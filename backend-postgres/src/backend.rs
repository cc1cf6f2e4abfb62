//! [`PgBackend`]: every [`Command`] of the core, applied in Postgres.
//!
//! # Time
//!
//! Every statement takes `now` as its first parameter: `NULL` in
//! production, where `coalesce($1, now_ms())` reads the database clock
//! (transaction time, so every statement of one command agrees), or an
//! explicit time through [`PgBackend::execute_at`], which the differential
//! tests use to apply the very `now` the reference world sees.
//!
//! `World::apply` clamps `now` so the world's time never goes backwards. An
//! explicit `now` is clamped the same way here (per backend value). The
//! database clock is not clamped: a table holding "the latest time" would
//! be one more row written by every command and a point every command
//! serialises on. Instead every time-based decision compares `now` with the
//! row it guards (a lease's `expires_at`, a job's `heartbeat_at`, which a
//! heartbeat only ever raises), and fencing never depends on time at all:
//! epochs, lease epochs and terms decide who may write. A clock that steps
//! back makes leases last a little longer and rescues come a little later;
//! it never lets two holders in.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use weir::{Backend, BackendError, JobFilter, Presence, QueueInfo, Subscription, WorkerInfo};
use weir_core::cmd;
use weir_core::{Command, Enqueued, Job, JobId, NewJob, Outcome, ProcessId, Reject, Timestamp};

use crate::config::{ConfigError, PgConfig, Pooler};
use crate::error::db;
use crate::migrate::{self, MigrateError, MigrateReport, LATEST_VERSION};
use crate::notify::Listener;
use crate::schema::SchemaName;

/// The Postgres backend. Cheap to clone: clones share one pool.
#[derive(Clone, Debug)]
pub struct PgBackend {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PgConfig,
    /// The latest explicit `now` seen by `execute_at`, for the clamp.
    explicit_now: AtomicI64,
    /// The connection that carries this backend's session holds
    /// (`Command::SlotTry` without a lease): opened on first use, never
    /// returned to the pool, closed when the backend is dropped; when it
    /// breaks, the holds it carried end (see `leases.rs`).
    pub(crate) session: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    /// The deliberate mistake this backend makes in its SQL, if any.
    #[cfg(feature = "mutants")]
    mutation: Option<crate::mutants::SqlMutation>,
}

impl PgBackend {
    /// A backend on `pool`. Does not touch the database: call
    /// [`PgBackend::migrate`] (or `weir migrate`) first.
    pub fn new(pool: PgPool, config: PgConfig) -> Result<PgBackend, ConfigError> {
        config.world.claimer.validate()?;
        Ok(PgBackend {
            inner: Arc::new(Inner {
                pool,
                config,
                explicit_now: AtomicI64::new(i64::MIN),
                session: tokio::sync::Mutex::new(None),
                #[cfg(feature = "mutants")]
                mutation: None,
            }),
        })
    }

    /// A backend like [`PgBackend::new`]'s that makes one deliberate
    /// mistake in its SQL, for showing that a checker catches it.
    #[cfg(feature = "mutants")]
    pub fn mutated(
        pool: PgPool,
        config: PgConfig,
        mutation: crate::mutants::SqlMutation,
    ) -> Result<PgBackend, ConfigError> {
        let mut backend = PgBackend::new(pool, config)?;
        Arc::get_mut(&mut backend.inner)
            .expect("a new backend is not shared yet")
            .mutation = Some(mutation);
        Ok(backend)
    }

    /// Connects a pool of up to `max_connections` to `url`. With
    /// [`Pooler::Transaction`] the connections do not send sqlx's
    /// `extra_float_digits` startup parameter, which PgBouncer refuses
    /// unless told to ignore it (Weir reads no floats).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        config: PgConfig,
    ) -> Result<PgBackend, ConfigError> {
        let mut options: PgConnectOptions = url.parse()?;
        if config.pooler == Pooler::Transaction {
            options = options.extra_float_digits(None);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        PgBackend::new(pool, config)
    }

    /// Brings the schema up to date (see [`crate::migrate()`]).
    pub async fn migrate(&self) -> Result<MigrateReport, MigrateError> {
        migrate::migrate(&self.inner.pool, &self.inner.config.schema).await
    }

    /// Checks that the schema is at the version this code expects.
    pub async fn check_schema(&self) -> Result<(), BackendError> {
        let found = migrate::schema_version(&self.inner.pool, &self.inner.config.schema)
            .await
            .map_err(db)?;
        if found == LATEST_VERSION {
            return Ok(());
        }
        if found == 0 {
            return Err(BackendError::Misconfigured(format!(
                "there is no Weir schema {} in this database (version 0, this code needs {LATEST_VERSION}): run `weir migrate`",
                self.inner.config.schema
            )));
        }
        Err(BackendError::Misconfigured(format!(
            "schema {} is at version {found}, this code needs {LATEST_VERSION}{}",
            self.inner.config.schema,
            if found < LATEST_VERSION {
                ": run `weir migrate`"
            } else {
                ": upgrade Weir"
            }
        )))
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// A [`Listener`] for this backend's wake-ups, on a connection of its
    /// own (see [`Listener::connect`]).
    pub async fn listener(&self) -> Result<Listener, BackendError> {
        Listener::connect(self.pool(), self.config()).await
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaName {
        &self.inner.config.schema
    }

    /// `template` with `{s}` replaced by the quoted schema name.
    pub(crate) fn sql(&self, template: &str) -> String {
        let sql = template.replace("{s}", &self.inner.config.schema.quoted());
        #[cfg(feature = "mutants")]
        if let Some(mutation) = self.inner.mutation {
            return mutation.apply(sql);
        }
        sql
    }

    /// Applies `command` at an explicit `now` instead of the database clock,
    /// clamped so it never goes backwards, as `World::apply` does. For
    /// differential tests and simulations; production uses
    /// [`Backend::execute`].
    #[doc(hidden)]
    pub async fn execute_at(
        &self,
        now: Timestamp,
        command: Command,
    ) -> Result<Outcome, BackendError> {
        let previous = self.inner.explicit_now.fetch_max(now.0, Ordering::SeqCst);
        let now = Timestamp(now.0.max(previous));
        self.dispatch(Some(now), command).await
    }

    /// Every command, one arm each: the match is exhaustive (the protocol
    /// is closed), so a command this backend does not implement fails to
    /// compile rather than answering at run time.
    pub(crate) async fn dispatch(
        &self,
        now: Option<Timestamp>,
        command: Command,
    ) -> Result<Outcome, BackendError> {
        Ok(match command {
            Command::Enqueue(cmd::Enqueue { jobs }) => {
                Outcome::Enqueued(self.enqueue_in(&self.inner.pool, now, jobs).await?)
            }
            Command::Claim(cmd::Claim {
                queue,
                claimer,
                max,
                kinds,
            }) => Outcome::Claimed(
                self.claim(now, &queue, &claimer, max, kinds.as_ref())
                    .await?,
            ),
            Command::Heartbeat(cmd::Heartbeat { receipts }) => {
                Outcome::Heartbeats(self.heartbeat(now, receipts).await?)
            }
            Command::Complete(cmd::Complete { receipts }) => {
                Outcome::Completed(self.complete(now, receipts).await?)
            }
            Command::Fail(cmd::Fail { failures }) => {
                Outcome::Failed(self.fail(now, failures).await?)
            }
            Command::Snooze(cmd::Snooze { snoozes }) => {
                Outcome::Snoozed(self.snooze(now, snoozes).await?)
            }
            Command::CancelAttempts(cmd::CancelAttempts { receipts }) => {
                Outcome::AttemptsCancelled(self.cancel_attempts(now, receipts).await?)
            }
            Command::WaitExternal(cmd::WaitExternal { waits }) => {
                Outcome::Waiting(self.wait_external(now, waits).await?)
            }
            Command::ResumeExternal(cmd::ResumeExternal { receipt }) => {
                Outcome::Resumed(self.resume_external(now, receipt).await?)
            }
            Command::Cancel(cmd::Cancel { job }) => {
                Outcome::Cancelled(self.cancel(now, job).await?)
            }
            Command::Retry(cmd::Retry { job }) => {
                Outcome::Retried(self.admin_retry(now, job).await?)
            }
            Command::PauseQueue(cmd::PauseQueue { queue }) => {
                Outcome::QueuePauseChanged(self.set_paused(&queue, true).await?)
            }
            Command::ResumeQueue(cmd::ResumeQueue { queue }) => {
                Outcome::QueuePauseChanged(self.set_paused(&queue, false).await?)
            }
            Command::ClaimerAcquire(cmd::ClaimerAcquire { queue, process }) => {
                Outcome::ClaimerAcquired(self.claimer_acquire(now, &queue, process).await?)
            }
            Command::ClaimerRelease(cmd::ClaimerRelease { queue, claimer }) => {
                Outcome::ClaimerReleased(self.claimer_release(now, &queue, &claimer).await?)
            }
            Command::SlotTry(cmd::SlotTry {
                semaphore,
                permits,
                slot,
                holder,
                lease_ttl,
            }) => Outcome::SlotTried(
                self.slot_try(now, semaphore, permits, slot, holder, lease_ttl)
                    .await?,
            ),
            Command::SlotRenew(cmd::SlotRenew {
                semaphore,
                grant,
                lease_ttl,
            }) => Outcome::SlotRenewed(self.slot_renew(now, &semaphore, &grant, lease_ttl).await?),
            Command::SlotRelease(cmd::SlotRelease { semaphore, grant }) => {
                Outcome::SlotReleased(self.slot_release(&semaphore, &grant).await?)
            }
            Command::ProcessCrashed(cmd::ProcessCrashed { process }) => {
                Outcome::SessionEnded(self.end_session(process).await?)
            }
            Command::LeaderElect(cmd::LeaderElect { process }) => {
                Outcome::LeaderElected(self.leader_elect(now, process).await?)
            }
            Command::LeaderResign(cmd::LeaderResign { leader }) => {
                Outcome::LeaderResigned(self.leader_resign(now, &leader).await?)
            }
            Command::Promote(cmd::Promote { leader, max }) => {
                Outcome::Promoted(self.promote(now, &leader, max).await?)
            }
            Command::Rescue(cmd::Rescue { leader, draw, max }) => {
                Outcome::Rescued(self.rescue(now, &leader, draw, max).await?)
            }
            Command::Prune(cmd::Prune {
                leader,
                older_than,
                max,
            }) => Outcome::Pruned(self.prune(now, &leader, older_than, max).await?),
        })
    }

    /// The database clock (or the explicit `now`), in one round trip.
    pub(crate) async fn now_in<'c, E>(
        &self,
        executor: E,
        now: Option<Timestamp>,
    ) -> Result<Timestamp, BackendError>
    where
        E: sqlx::PgExecutor<'c>,
    {
        if let Some(now) = now {
            return Ok(now);
        }
        let sql = self.sql("SELECT {s}.now_ms()");
        let ms: i64 = match self.inner.config.pooler {
            Pooler::Direct => sqlx::query_scalar(&sql)
                .fetch_one(executor)
                .await
                .map_err(db)?,
            // No parameters: one simple-protocol message, which any pooler
            // runs as it stands (no prepared statement, no transaction).
            Pooler::Transaction => {
                let row = sqlx::Executor::fetch_one(executor, sql.as_str())
                    .await
                    .map_err(db)?;
                sqlx::Row::try_get(&row, 0).map_err(db)?
            }
        };
        Ok(Timestamp(ms))
    }

    /// Refuses a batch longer than the configured maximum, as the world does.
    pub(crate) fn check_batch_len(&self, len: usize) -> Result<(), Reject> {
        let max = self.inner.config.world.batch_max;
        if len > max {
            return Err(Reject::BatchTooLarge { len, max });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for PgBackend {
    async fn execute(&self, command: Command) -> Result<Outcome, BackendError> {
        self.dispatch(None, command).await
    }

    async fn now(&self) -> Result<Timestamp, BackendError> {
        self.now_in(&self.inner.pool, None).await
    }

    fn batch_max(&self) -> usize {
        self.inner.config.world.batch_max
    }

    /// `COPY` with ids reserved first, or the batch statement in chunks
    /// in one transaction when a job has a unique key (see `bulk.rs`).
    async fn enqueue_bulk(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Result<Vec<Enqueued>, Reject>, BackendError> {
        self.bulk_at(None, &jobs).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, BackendError> {
        self.read_job(id).await
    }

    async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, BackendError> {
        self.read_jobs(filter).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, BackendError> {
        self.read_queues().await
    }

    async fn announce(&self, presence: &Presence, ttl: Duration) -> Result<(), BackendError> {
        self.announce_presence(presence, ttl).await
    }

    async fn retire(&self, process: ProcessId) -> Result<(), BackendError> {
        self.retire_presence(process).await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        self.live_workers().await
    }

    /// [`PgBackend::check_schema`]: the schema must be at this code's
    /// version.
    async fn check(&self) -> Result<(), BackendError> {
        self.check_schema().await
    }

    /// A [`Listener`] on its own connection when [`PgConfig::notify`] is
    /// on (to [`PgConfig::listen_url`] when set); `None` when it is off
    /// (nothing would be sent). With [`Pooler::Transaction`] and no
    /// `listen_url`, [`BackendError::Misconfigured`]: LISTEN through a
    /// transaction pooler would listen on a server connection other
    /// clients share, and hear nothing reliably.
    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, BackendError> {
        if !self.inner.config.notify {
            return Ok(None);
        }
        Ok(Some(Box::new(self.listener().await?)))
    }
}
