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
use weir_core::{
    Command, Enqueued, InvalidClaimerConfig, Job, JobId, NewJob, Outcome, ProcessId, Reject,
    Timestamp, WorldConfig,
};

use crate::migrate::{self, MigrateError, MigrateReport, LATEST_VERSION};
use crate::notify::Listener;
use crate::schema::SchemaName;

/// How a [`PgBackend`] is set up.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// The schema holding Weir's tables.
    pub schema: SchemaName,
    /// The decision settings; the same as the reference world's.
    pub world: WorldConfig,
    /// Send NOTIFY wake-ups when jobs become available and when a running
    /// job is cancelled. Off, workers find work by polling only.
    pub notify: bool,
    /// What the pool's connections go through: straight to Postgres (or a
    /// session-pooling PgBouncer), or a transaction-pooling PgBouncer.
    pub pooler: Pooler,
    /// Where the LISTEN connection of [`Backend::subscribe`] goes, when not
    /// where the pool goes: a URL of the Postgres server itself. Needed
    /// with [`Pooler::Transaction`] and `notify` on, since LISTEN needs a
    /// session of its own. `None`: the pool's connect options.
    pub listen_url: Option<String>,
}

impl Default for PgConfig {
    fn default() -> PgConfig {
        PgConfig {
            schema: SchemaName::default(),
            world: WorldConfig::default(),
            notify: true,
            pooler: Pooler::Direct,
            listen_url: None,
        }
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The listen URL may carry a password.
        let listen = self.listen_url.as_ref().map(|_| "<set>");
        f.debug_struct("PgConfig")
            .field("schema", &self.schema)
            .field("world", &self.world)
            .field("notify", &self.notify)
            .field("pooler", &self.pooler)
            .field("listen_url", &listen)
            .finish()
    }
}

/// What a [`PgBackend`]'s pool connects through, which decides how
/// statements are sent (see the crate README's deployment notes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pooler {
    /// Straight to Postgres, or through PgBouncer in session pooling: each
    /// connection is one server session. Statements are prepared once per
    /// connection (sqlx's statement cache) and reused.
    #[default]
    Direct,
    /// Through PgBouncer in transaction pooling (tested with Debian's
    /// 1.18): between transactions a connection's statements may run on
    /// any server connection. Every statement with parameters is sent
    /// unnamed (never prepared by name) and inside a transaction, its own
    /// when the command has none. Session features are refused: the
    /// `AdvisorySemaphore` (use `LeaseSemaphore`), and LISTEN through the
    /// pool (set [`PgConfig::listen_url`] to the server itself, or
    /// `notify: false`).
    Transaction,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The claimer settings are invalid.
    #[error(transparent)]
    Claimer(#[from] InvalidClaimerConfig),
    /// The connection failed.
    #[error("connecting: {0}")]
    Connect(#[from] sqlx::Error),
}

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
        Ok(Some(Box::new(Listener::connect(self).await?)))
    }
}

/// Maps a driver error to what the caller may assume about the command.
pub(crate) fn db(error: sqlx::Error) -> BackendError {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            BackendError::Unavailable(error.to_string())
        }
        sqlx::Error::Database(e) => match e.code().as_deref() {
            // insufficient_privilege, undefined_table, undefined_function,
            // invalid_schema_name, undefined_column: the schema is missing,
            // old, or the role lacks a grant. Retrying will not help.
            Some("42501" | "42P01" | "42883" | "3F000" | "42703") => {
                BackendError::Misconfigured(error.to_string())
            }
            // duplicate_prepared_statement, invalid_sql_statement_name: a
            // statement sqlx prepared by name on this connection's session
            // collides with another client's, or is gone. A session of our
            // own never does that: the connection goes through a pooler
            // that shares server sessions.
            Some("42P05" | "26000") => BackendError::Misconfigured(format!(
                "{error}: this connection's server session is shared with other clients (a \
                 transaction-pooling PgBouncer?): set PgConfig::pooler to Pooler::Transaction \
                 (see weir-postgres's deployment notes)"
            )),
            // A data exception (class 22: a NUL in text, a value out of
            // range): the statement was rolled back and the same data
            // would be refused again.
            Some(code) if code.starts_with("22") => BackendError::Refused(error.to_string()),
            // An interrupt ended the statement: query_canceled (a statement
            // timeout, a cancel request) or operator intervention (the
            // session terminated, the server shutting down). The server
            // acts on an interrupt wherever it next checks for one, which
            // can be after the transaction committed and before it
            // answered: the command may have been applied. The history
            // checker found exactly that (a cancelled claim whose effect
            // the rest of the history needs).
            Some("57014" | "57P01" | "57P02" | "57P03" | "57P05") => {
                BackendError::Lost(error.to_string())
            }
            // The server answered with an error: the statement (and its
            // transaction) was rolled back, so nothing was applied.
            _ => BackendError::Unavailable(error.to_string()),
        },
        // The connection broke or the answer was garbled: the command may
        // have been applied.
        _ => BackendError::Lost(error.to_string()),
    }
}
