//! Client-side semaphores: N slots shared by every process on the database,
//! acquired by the core's sans-IO [`Acquisition`] loop (scan the slots in
//! order, skip a slot whose try errored, sleep a jittered pause on a miss,
//! never past the deadline).
//!
//! Two stores, one interface ([`SlotStore`], driven by [`acquire`]):
//!
//! * [`AdvisorySemaphore`]: session-level advisory locks held on a
//!   dedicated connection. A holder that crashes loses its connection and
//!   the server frees its slot at once. Needs a server session of its own:
//!   a direct connection, or PgBouncer in session pooling. Behind
//!   transaction pooling it refuses ([`SessionNotPinned`]), see below.
//! * [`LeaseSemaphore`]: rows in `semaphore_slots` with an expiry
//!   (`Command::SlotTry` with a lease), for deployments behind a
//!   transaction-pooling PgBouncer, where session locks do not survive the
//!   transaction. A crashed holder's slot frees when its lease lapses.
//!
//! # Advisory-lock keys
//!
//! A slot's lock is `pg_try_advisory_lock(key bigint)` with
//! `key = 1<<62 | namespace<<47 | semaphore<<16 | slot`: `namespace` is 15
//! bits derived from the schema name (so two Weir schemas in one database do
//! not share locks), `semaphore` the semaphore's stable number from the
//! `semaphores` table (never a hash of its name, so two names never share a
//! key), and `slot` its index. Every key is at least 2^62: no lock taken
//! with a 32-bit key (`pg_advisory_lock(int)`, `hashtext`) or the two-key
//! form (a separate key space) can collide with it.
//!
//! # One server session per store
//!
//! A session lock is only as private as the session. Behind a
//! transaction-pooling PgBouncer the store's "dedicated" connection runs
//! each statement on whichever server connection is free, so its lock
//! would sit on a server session other clients use next (where, the lock
//! being re-entrant, they would get it too) and stay there after the store
//! closed. So every session the store opens is marked and checked:
//!
//! 1. On connecting, one statement reads the session's mark (the setting
//!    `weir.advisory_session`) and, if it has none, sets a fresh one
//!    (`gen_random_uuid()`). A session that already carries a mark is
//!    another store's: refused ([`SessionNotPinned::Taken`]).
//! 2. A second, short-lived connection with the same options then reads the
//!    mark of the session it lands on. Finding ours, the pooler has handed
//!    our session to another client: refused
//!    ([`SessionNotPinned::Shared`]). A pooler that reuses the most recent
//!    server connection first (PgBouncer's default) is caught here, before
//!    any lock is taken, whenever no other client of the same pool got in
//!    between.
//! 3. Every lock and unlock statement takes or frees the lock only if the
//!    session it runs on carries our mark, in the same statement; otherwise
//!    it touches nothing and the store is refused for good
//!    ([`SessionNotPinned::Changed`]). So no lock is ever taken on a
//!    session that is not the store's own, whatever step 2 missed.
//!
//! Session pooling's reset (`DISCARD ALL`) clears the mark with the locks,
//! so the next client of that server session starts clean. With
//! [`Pooler::Transaction`] configured the store
//! is refused at once ([`SessionNotPinned::PoolerMode`]).
//!
//! What step 2 can miss: another client of the same PgBouncer pool taking
//! the store's server connection between the mark and the probe. Then the
//! first lock or unlock statement that lands elsewhere refuses the store;
//! a lock it took before that (on its own session, so held by nobody else)
//! stays on that server connection until PgBouncer closes it
//! (`server_idle_timeout`, `server_lifetime`).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use weir::{BackendError, BackendExt};
use weir_core::cmd;
use weir_core::{
    AcquireStep, Acquisition, Millis, ProcessId, Reject, SemaphoreName, SlotEpoch, SlotGrant,
    SlotIndex, Timestamp, TryResult, WaitConfig,
};

use crate::backend::PgBackend;
use crate::config::Pooler;
use crate::error::db;

/// One semaphore's slots, as [`acquire`] drives them.
#[async_trait]
pub trait SlotStore: Send {
    /// N.
    fn permits(&self) -> u16;

    /// Tries one slot. An error of any kind is [`TryResult::Error`]: the
    /// scan goes on to the next slot.
    async fn try_slot(&mut self, slot: SlotIndex) -> TryResult;

    /// Releases a held slot. Idempotent: whether this call released it.
    async fn release(&mut self, grant: &SlotGrant) -> Result<bool, BackendError>;

    /// The acquisition gave up; drop anything kept for it.
    async fn on_timeout(&mut self) {}

    /// Set once the store found it cannot keep its promise at all (an
    /// advisory-lock store whose server session is not its own): [`acquire`]
    /// then stops with [`AcquireError::SessionNotPinned`] instead of
    /// scanning on.
    fn refusal(&self) -> Option<SessionNotPinned> {
        None
    }
}

/// What a store that needs a session lock of its own says when
/// the connection does not give it one.
const USE_LEASES: &str = "session advisory locks need a direct connection or session pooling; \
     behind a transaction-pooling PgBouncer use LeaseSemaphore";

/// An [`AdvisorySemaphore`]'s connection does not keep a server session of
/// its own (a transaction-pooling PgBouncer shares server sessions between
/// clients), so its session locks could be shared and could outlive it.
/// Nothing is held when this is reported for the first time (see the
/// [module docs](self)); use [`LeaseSemaphore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionNotPinned {
    /// The backend is configured for a transaction pooler
    /// ([`Pooler::Transaction`]).
    #[error(
        "the backend is configured for a transaction pooler (Pooler::Transaction): {}",
        USE_LEASES
    )]
    PoolerMode,
    /// The server session the connection got already carried another
    /// store's mark: the pooler handed one server session to two clients.
    #[error("server session {pid} already belongs to another advisory-lock store, so the pooler shares server sessions between clients: {}", USE_LEASES)]
    Taken {
        /// The server session's backend pid.
        pid: i32,
    },
    /// Another client's connection landed on this store's server session.
    #[error("another client's connection ran on this store's server session {pid} (transaction pooling): {}", USE_LEASES)]
    Shared {
        /// The server session's backend pid.
        pid: i32,
    },
    /// A statement of the store ran on a server session other than its own.
    #[error("a statement ran on server session {found} instead of the store's own {expected} (transaction pooling): {}", USE_LEASES)]
    Changed {
        /// The store's server session.
        expected: i32,
        /// Where the statement ran.
        found: i32,
    },
}

/// Why [`AdvisorySemaphore::open`] could not open a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdvisoryError {
    /// The connection does not keep a server session of its own.
    #[error(transparent)]
    SessionNotPinned(#[from] SessionNotPinned),
    /// The database could not be reached or answered with an error.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// How long a lease-table slot try (`Command::SlotTry`, so also the
/// runtime's limits) waits for another transaction's lock on a slot row:
/// far longer than concurrent tries hold it (a few round trips), short
/// enough that a row held by a stuck transaction makes an errored try,
/// which the scan skips, instead of a stall past the acquisition's
/// deadline. The server enforces it (`lock_timeout`, set for the try's
/// transaction only).
pub const SLOT_LOCK_WAIT_MAX: Duration = Duration::from_millis(200);

/// How a slot try's transaction begins: [`SLOT_LOCK_WAIT_MAX`] as the
/// transaction's `lock_timeout`, in the same round trip as `BEGIN`.
pub(crate) const SLOT_TRY_BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '200ms'";

/// How long a [`LeaseSemaphore`] try may take in all (a pool connection,
/// its round trips and its bounded lock wait) unless
/// [`LeaseSemaphore::with_try_timeout`] says otherwise.
pub const DEFAULT_LEASE_TRY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why [`acquire`] returned without a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// `wait_max` passed with every slot busy (or erroring).
    #[error("no slot within the wait ({scans} scans, {errors} failed tries)")]
    TimedOut {
        /// Full scans made.
        scans: u32,
        /// Tries that failed with an error.
        errors: u32,
    },
    /// The store has 0 slots: nothing could ever be acquired, so nothing
    /// is tried.
    #[error("the semaphore has 0 permits; it needs at least 1 slot")]
    ZeroPermits,
    /// The store cannot keep its promise through this connection (see
    /// [`SessionNotPinned`]); retrying will not help.
    #[error(transparent)]
    SessionNotPinned(#[from] SessionNotPinned),
}

/// Milliseconds on a process-local monotonic clock: the Acquisition's time.
fn local_now() -> Timestamp {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    Timestamp(i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX))
}

fn local_instant(at: Timestamp) -> tokio::time::Instant {
    static ORIGIN: OnceLock<(Instant, Timestamp)> = OnceLock::new();
    let (instant, stamp) = *ORIGIN.get_or_init(|| (Instant::now(), local_now()));
    let ahead = Duration::from_millis(u64::try_from(at.0 - stamp.0).unwrap_or(0));
    tokio::time::Instant::from_std(instant + ahead)
}

/// A uniform draw for the pause jitter (std's per-instance random keys).
fn draw() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

/// Acquires a slot of `store`, waiting at most `wait.wait_max` plus one
/// scan's tries (each bounded by the store's own try timeout).
pub async fn acquire<S: SlotStore + ?Sized>(
    store: &mut S,
    wait: WaitConfig,
) -> Result<SlotGrant, AcquireError> {
    if store.permits() == 0 {
        return Err(AcquireError::ZeroPermits);
    }
    if let Some(refusal) = store.refusal() {
        return Err(AcquireError::SessionNotPinned(refusal));
    }
    let mut acquisition = Acquisition::new(Some(store.permits()), local_now(), wait);
    loop {
        match acquisition.poll(local_now(), draw()) {
            AcquireStep::Try(slot) => {
                let result = store.try_slot(slot).await;
                if let Some(refusal) = store.refusal() {
                    store.on_timeout().await;
                    return Err(AcquireError::SessionNotPinned(refusal));
                }
                acquisition.handle_try(slot, result);
            }
            AcquireStep::SleepUntil(until) => {
                tokio::time::sleep_until(local_instant(until)).await;
            }
            AcquireStep::Acquired(grant) => return Ok(grant),
            AcquireStep::TimedOut { scans, errors } => {
                store.on_timeout().await;
                return Err(AcquireError::TimedOut { scans, errors });
            }
            // 0 permits were refused above.
            AcquireStep::Disabled => unreachable!("stores always have permits"),
        }
    }
}

/// The 15-bit lock namespace of a schema (FNV-1a of its name): stable
/// across processes and versions, unlike std's hasher.
pub fn lock_namespace(schema: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in schema.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff) as u16
}

/// The advisory-lock key of one slot; see the module docs.
pub fn lock_key(namespace: u16, semaphore: i32, slot: SlotIndex) -> i64 {
    debug_assert!(semaphore >= 0, "semaphore numbers come from an identity");
    (1_i64 << 62)
        | (i64::from(namespace & 0x7fff) << 47)
        | ((i64::from(semaphore) & 0x7fff_ffff) << 16)
        | i64::from(slot.0)
}

/// A semaphore of session advisory locks on a dedicated connection.
///
/// One value is one server session. Session advisory locks are re-entrant
/// (a session that holds a key gets it again), so the store keeps the
/// slots its session holds and never tries one of them again: a second
/// acquisition through the same store gets another slot or waits, and each
/// grant's release unlocks its slot exactly once. Whatever ends the
/// session (a try that failed or timed out, [`AdvisorySemaphore::close`],
/// a dropped connection) frees every slot the store holds at once; their
/// grants then release nothing (`Ok(false)`). A grant is released through
/// the store that granted it.
pub struct AdvisorySemaphore {
    options: PgConnectOptions,
    session: Option<Session>,
    name: SemaphoreName,
    permits: u16,
    namespace: u16,
    number: i32,
    try_timeout: Duration,
    holder: ProcessId,
    /// Grants made so far: the next grant's epoch, so a stale grant is
    /// recognisable locally.
    acquisitions: u64,
    /// The slots this store's session holds, with their grants' epochs.
    held: BTreeMap<SlotIndex, SlotEpoch>,
    /// Set for good once the connection proved not to keep a session of
    /// its own.
    refused: Option<SessionNotPinned>,
}

/// The store's server session: its connection, backend pid and mark.
struct Session {
    conn: PgConnection,
    pid: i32,
    mark: String,
}

/// Marks a fresh server session as the store's, or says whose it is: one
/// statement, simple protocol (no prepared statement to collide with other
/// clients' on a shared server connection). The CTE is read before the
/// mark is set.
const CLAIM_SESSION_SQL: &str = "
WITH before AS MATERIALIZED (
    SELECT coalesce(current_setting('weir.advisory_session', true), '') AS owner
)
SELECT before.owner, pg_backend_pid() AS pid,
       CASE WHEN before.owner = ''
            THEN set_config('weir.advisory_session', gen_random_uuid()::text, false)
       END AS mark
FROM before";

/// The mark of whatever session a connection lands on.
const PROBE_SESSION_SQL: &str = "
SELECT coalesce(current_setting('weir.advisory_session', true), '') AS owner,
       pg_backend_pid() AS pid";

/// Takes the lock only on the store's own session: `NULL` elsewhere.
const TRY_LOCK_SQL: &str = "
SELECT CASE WHEN current_setting('weir.advisory_session', true) = $2
            THEN pg_try_advisory_lock($1) END AS done,
       pg_backend_pid() AS pid";

/// Frees the lock only on the store's own session: `NULL` elsewhere.
const UNLOCK_SQL: &str = "
SELECT CASE WHEN current_setting('weir.advisory_session', true) = $2
            THEN pg_advisory_unlock($1) END AS done,
       pg_backend_pid() AS pid";

/// Why a statement of the store failed.
enum Failure {
    Backend(BackendError),
    NotPinned(SessionNotPinned),
}

impl From<BackendError> for Failure {
    fn from(error: BackendError) -> Failure {
        Failure::Backend(error)
    }
}

impl std::fmt::Debug for AdvisorySemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisorySemaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .field("connected", &self.session.is_some())
            .field("held", &self.held)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl AdvisorySemaphore {
    /// Registers the semaphore (its size is fixed by the first user, as for
    /// `Command::SlotTry`) and opens its dedicated connection with
    /// `options` (the same server and database as `backend`), checking
    /// that it keeps a server session of its own (see the [module
    /// docs](self)).
    pub async fn open(
        backend: &PgBackend,
        options: PgConnectOptions,
        name: SemaphoreName,
        permits: u16,
        holder: ProcessId,
        try_timeout: Duration,
    ) -> Result<Result<AdvisorySemaphore, Reject>, AdvisoryError> {
        if backend.config().pooler == Pooler::Transaction {
            return Err(AdvisoryError::SessionNotPinned(
                SessionNotPinned::PoolerMode,
            ));
        }
        let Some((configured, number)) = register(backend, &name, permits).await? else {
            return Ok(Err(Reject::ZeroPermits));
        };
        if configured != permits {
            return Ok(Err(Reject::PermitsMismatch {
                name,
                configured,
                presented: permits,
            }));
        }
        let mut semaphore = AdvisorySemaphore {
            options,
            session: None,
            name,
            permits,
            namespace: lock_namespace(backend.schema().as_str()),
            number,
            try_timeout,
            holder,
            acquisitions: 0,
            held: BTreeMap::new(),
            refused: None,
        };
        match semaphore.session().await {
            Ok(_) => Ok(Ok(semaphore)),
            Err(Failure::Backend(error)) => Err(AdvisoryError::Backend(error)),
            Err(Failure::NotPinned(refusal)) => Err(AdvisoryError::SessionNotPinned(refusal)),
        }
    }

    /// The store's session, opened (marked and checked) if there is none.
    async fn session(&mut self) -> Result<&mut Session, Failure> {
        if let Some(refusal) = self.refused {
            return Err(Failure::NotPinned(refusal));
        }
        if self.session.is_none() {
            let opened = open_session(self.options.clone(), self.try_timeout).await;
            match opened {
                Ok(session) => self.session = Some(session),
                Err(Failure::NotPinned(refusal)) => {
                    self.refused = Some(refusal);
                    return Err(Failure::NotPinned(refusal));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(self.session.as_mut().expect("just set"))
    }

    /// Whether the dedicated connection is open (it holds the locks).
    pub fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Why the store refuses, once it found its connection does not keep
    /// a session of its own.
    pub fn refused(&self) -> Option<SessionNotPinned> {
        self.refused
    }

    /// The lock key of `slot`.
    pub fn key(&self, slot: SlotIndex) -> i64 {
        lock_key(self.namespace, self.number, slot)
    }

    /// How many slots this store holds.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Closes the dedicated connection: every slot it held is freed.
    pub async fn close(&mut self) {
        self.held.clear();
        if let Some(session) = self.session.take() {
            let _ = session.conn.close().await;
        }
    }

    /// Drops the dedicated connection without a goodbye (it broke, or a
    /// try on it may still be running): the server ends the session, and
    /// with it every lock the store held.
    fn drop_session(&mut self) {
        self.held.clear();
        self.session = None;
    }

    /// Runs a lock or unlock statement on the store's own session: its
    /// answer, or why not (a statement that landed on another session
    /// refuses the store for good, having touched nothing).
    async fn lock_statement(&mut self, sql: &'static str, key: i64) -> Result<bool, Failure> {
        let timeout = self.try_timeout;
        let session = self.session().await?;
        let query = sqlx::query(sql).bind(key).bind(session.mark.clone());
        match tokio::time::timeout(timeout, query.fetch_one(&mut session.conn)).await {
            Ok(Ok(row)) => {
                let done: Option<bool> = row.try_get("done").map_err(db)?;
                let found: i32 = row.try_get("pid").map_err(db)?;
                match done {
                    Some(done) => Ok(done),
                    None => {
                        let refusal = SessionNotPinned::Changed {
                            expected: session.pid,
                            found,
                        };
                        self.refused = Some(refusal);
                        // Dropped without touching any lock: the statement
                        // ran elsewhere, so ours (if any) stay where they
                        // are until that server session ends.
                        self.drop_session();
                        Err(Failure::NotPinned(refusal))
                    }
                }
            }
            Ok(Err(error)) => {
                // A broken connection is dropped; the next try reopens it.
                self.drop_session();
                Err(Failure::Backend(db(error)))
            }
            Err(_elapsed) => {
                // The try may yet succeed on the server: closing the
                // connection makes sure no lock outlives our giving up.
                self.drop_session();
                Err(Failure::Backend(BackendError::Lost(
                    "advisory lock try timed out".to_string(),
                )))
            }
        }
    }
}

/// Connects, marks the session, and checks that another connection does
/// not land on it (see the module docs). Boxed: a `Send` future of its
/// own, whatever the caller's lifetimes.
fn open_session(
    options: PgConnectOptions,
    timeout: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Session, Failure>> + Send>> {
    Box::pin(async move {
        let mut conn = connect(&options, timeout).await?;
        let row = simple(&mut conn, CLAIM_SESSION_SQL, timeout).await?;
        let pid: i32 = row.try_get("pid").map_err(db)?;
        let Some(mark) = row.try_get::<Option<String>, _>("mark").map_err(db)? else {
            return Err(Failure::NotPinned(SessionNotPinned::Taken { pid }));
        };
        let mut probe = connect(&options, timeout).await?;
        let seen = simple(&mut probe, PROBE_SESSION_SQL, timeout).await;
        let _ = probe.close().await;
        let seen = seen?;
        let other_owner: String = seen.try_get("owner").map_err(db)?;
        let other_pid: i32 = seen.try_get("pid").map_err(db)?;
        if other_owner == mark || other_pid == pid {
            return Err(Failure::NotPinned(SessionNotPinned::Shared { pid }));
        }
        Ok(Session { conn, pid, mark })
    })
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, BackendError> {
    tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| BackendError::Unavailable("connect timed out".to_string()))?
        .map_err(db)
}

/// One row of a statement without parameters (simple protocol), within
/// `timeout`.
async fn simple(
    conn: &mut PgConnection,
    sql: &'static str,
    timeout: Duration,
) -> Result<PgRow, BackendError> {
    tokio::time::timeout(timeout, conn.fetch_one(sql))
        .await
        .map_err(|_| BackendError::Lost("advisory session check timed out".to_string()))?
        .map_err(db)
}

#[async_trait]
impl SlotStore for AdvisorySemaphore {
    fn permits(&self) -> u16 {
        self.permits
    }

    async fn try_slot(&mut self, slot: SlotIndex) -> TryResult {
        // Our own session holds it: the server would grant it again
        // (re-entrant), so it is busy without asking.
        if self.held.contains_key(&slot) {
            return TryResult::Busy;
        }
        let key = self.key(slot);
        match self.lock_statement(TRY_LOCK_SQL, key).await {
            Ok(true) => {
                self.acquisitions += 1;
                // Advisory locks have no stored epoch; this counts this
                // store's grants, so a stale grant is recognisable locally.
                let epoch = SlotEpoch(self.acquisitions);
                self.held.insert(slot, epoch);
                TryResult::Acquired(SlotGrant {
                    slot,
                    epoch,
                    holder: self.holder,
                })
            }
            Ok(false) => TryResult::Busy,
            Err(_) => TryResult::Error,
        }
    }

    async fn release(&mut self, grant: &SlotGrant) -> Result<bool, BackendError> {
        let current = self.held.get(&grant.slot) == Some(&grant.epoch);
        if !current || grant.holder != self.holder || self.session.is_none() {
            return Ok(false);
        }
        let key = self.key(grant.slot);
        let unlocked = self.lock_statement(UNLOCK_SQL, key).await;
        // Unlocked, or (an error) the session is gone and the lock with it.
        self.held.remove(&grant.slot);
        match unlocked {
            Ok(unlocked) => Ok(unlocked),
            Err(Failure::Backend(error)) => Err(error),
            // The lock is on a server session this store cannot reach.
            Err(Failure::NotPinned(refusal)) => {
                Err(BackendError::Misconfigured(refusal.to_string()))
            }
        }
    }

    /// Closes the session when it holds nothing, so no lock granted after
    /// we gave up can outlive us; a session holding other grants stays
    /// (closing it would free their slots behind their holders' backs).
    async fn on_timeout(&mut self) {
        if self.held.is_empty() {
            self.close().await;
        }
    }

    fn refusal(&self) -> Option<SessionNotPinned> {
        self.refused
    }
}

/// Registers `name` with `permits` slots (or finds it): its size and its
/// stable number. `None` when it does not exist and `permits` is 0.
async fn register(
    backend: &PgBackend,
    name: &SemaphoreName,
    permits: u16,
) -> Result<Option<(u16, i32)>, BackendError> {
    let find = backend.sql("SELECT permits, key FROM {s}.semaphores WHERE name = $1");
    let found = sqlx::query(&find)
        .bind(name.as_str())
        .fetch_optional(backend.via(backend.pool()))
        .await
        .map_err(db)?;
    if found.is_none() {
        if permits == 0 {
            return Ok(None);
        }
        backend.slot_try_create(name, permits).await?;
    }
    let row = sqlx::query(&find)
        .bind(name.as_str())
        .fetch_one(backend.via(backend.pool()))
        .await
        .map_err(db)?;
    let configured: i32 = row.try_get("permits").map_err(db)?;
    let number: i32 = row.try_get("key").map_err(db)?;
    Ok(Some((configured as u16, number)))
}

/// A semaphore of lease rows with an expiry: `Command::SlotTry` with a
/// lease, through the backend (any pooling mode).
///
/// Each try is bounded twice: on the server, its wait for a slot row's lock
/// ([`SLOT_LOCK_WAIT_MAX`]); here, the whole try ([`DEFAULT_LEASE_TRY_TIMEOUT`]
/// or [`LeaseSemaphore::with_try_timeout`]). A try past either bound is an
/// errored try: the scan goes on to the next slot. A try given up while
/// its `COMMIT` was already on its way may still have taken the slot; that
/// hold is nobody's and lapses with its lease.
#[derive(Debug)]
pub struct LeaseSemaphore {
    backend: PgBackend,
    name: SemaphoreName,
    permits: u16,
    holder: ProcessId,
    lease_ttl: Millis,
    try_timeout: Duration,
}

impl LeaseSemaphore {
    /// A semaphore whose holds last `lease_ttl` unless renewed.
    pub fn new(
        backend: PgBackend,
        name: SemaphoreName,
        permits: u16,
        holder: ProcessId,
        lease_ttl: Millis,
    ) -> LeaseSemaphore {
        LeaseSemaphore {
            backend,
            name,
            permits,
            holder,
            lease_ttl,
            try_timeout: DEFAULT_LEASE_TRY_TIMEOUT,
        }
    }

    /// The same semaphore with each try bounded by `try_timeout` in all.
    pub fn with_try_timeout(mut self, try_timeout: Duration) -> LeaseSemaphore {
        self.try_timeout = try_timeout;
        self
    }

    /// Extends a hold by the lease length from now.
    pub async fn renew(&self, grant: &SlotGrant) -> Result<Result<(), Reject>, BackendError> {
        let renew = cmd::SlotRenew {
            semaphore: self.name.clone(),
            grant: *grant,
            lease_ttl: self.lease_ttl,
        };
        self.backend.run(renew).await
    }
}

#[async_trait]
impl SlotStore for LeaseSemaphore {
    fn permits(&self) -> u16 {
        self.permits
    }

    async fn try_slot(&mut self, slot: SlotIndex) -> TryResult {
        let request = cmd::SlotTry {
            semaphore: self.name.clone(),
            permits: self.permits,
            slot,
            holder: self.holder,
            lease_ttl: Some(self.lease_ttl),
        };
        let tried = tokio::time::timeout(self.try_timeout, self.backend.run(request));
        match tried.await {
            Ok(Ok(Ok(grant))) => TryResult::Acquired(grant),
            Ok(Ok(Err(Reject::SlotBusy { .. }))) => TryResult::Busy,
            // Refused, failed (a lock wait past its bound among them) or
            // past the try's timeout.
            _ => TryResult::Error,
        }
    }

    async fn release(&mut self, grant: &SlotGrant) -> Result<bool, BackendError> {
        let release = cmd::SlotRelease {
            semaphore: self.name.clone(),
            grant: *grant,
        };
        self.backend.run(release).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_try_begins_with_its_documented_lock_wait() {
        let ms = SLOT_LOCK_WAIT_MAX.as_millis();
        assert!(SLOT_TRY_BEGIN.ends_with(&format!("lock_timeout = '{ms}ms'")));
    }

    #[test]
    fn lock_keys_are_distinct_and_above_the_32_bit_range() {
        let ns = lock_namespace("weir");
        assert_eq!(ns, lock_namespace("weir"));
        assert_ne!(ns, lock_namespace("weir2"));
        let a = lock_key(ns, 1, SlotIndex(0));
        let b = lock_key(ns, 1, SlotIndex(1));
        let c = lock_key(ns, 2, SlotIndex(0));
        let d = lock_key(lock_namespace("other"), 1, SlotIndex(0));
        assert!(a != b && a != c && b != c && a != d);
        for key in [a, b, c, d, lock_key(0x7fff, i32::MAX, SlotIndex(u16::MAX))] {
            assert!(key >= 1 << 62, "{key:#x}");
        }
    }
}
