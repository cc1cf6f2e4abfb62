//! Bad input: what users get wrong through the library, one row per
//! mistake. Each row makes the mistake through the public API a user would
//! call (`weir::Client`, `weir::PoolConfig`/`WorkerPool`, `weir::warmup`,
//! `weir::Limit`, `weir_postgres::PgBackend`/`migrate`), matches the exact
//! typed error, checks that its message names the input and what is
//! allowed, and then counts what storage holds (jobs, ids handed out,
//! semaphores, held slots, paused queues) before and after: a refusal
//! writes nothing.
//!
//! The backend-agnostic rows run against the in-memory backend and against
//! Postgres (a fresh database per test from the harness, as the
//! non-superuser role); the rows about schemas, connections and lost
//! connections need Postgres. The operator's mistakes through the `weir`
//! binary are in `cli/tests/bad_input.rs` (only that crate can run its
//! binary). `docs/reliability.md` lists every row with its error and the
//! evidence that nothing was written.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use weir::core::cmd;
use weir::core::{
    Command, DispatcherConfig, FailReason, InvalidDispatcherConfig, InvalidJob, InvalidName,
    InvalidWarmup, Job, JobId, JobLimits, JobState, Millis, NameKind, NewJob, Outcome, ProcessId,
    QueueName, Reject, SemaphoreName, SlotIndex, StateName, Timestamp, WaitConfig, Warmup,
    WorldConfig,
};
use weir::{
    warmup, Backend, BackendError, BackendExt, Client, ClientError, InsertOptions, InvalidLimit,
    InvalidPoolConfig, JobArgs, JobOutcome, Limit, PoolConfig, PoolError, Registry, WarmupConfig,
    WarmupError, WorkerPool,
};
use weir_memory::MemoryBackend;
use weir_pg_harness::{test_database, TestDatabase};
use weir_postgres::{migrate, ConfigError, MigrateError, PgBackend, PgConfig, SchemaName};

// ---------------------------------------------------------------------------
// What storage holds, counted.

/// Everything a mistake could have written. A refusal leaves all of it as
/// it was; `ids` also shows that no job id was handed out (Postgres: the
/// sequence; memory: the world's enqueue count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    jobs: i64,
    ids: i64,
    semaphores: i64,
    slots_held: i64,
    paused: i64,
}

trait Store: Backend {
    fn counts(&self) -> impl Future<Output = Counts> + Send;
}

impl Store for MemoryBackend {
    async fn counts(&self) -> Counts {
        self.inspect(|w| Counts {
            jobs: w.jobs().count() as i64,
            ids: w.enqueued_total() as i64,
            semaphores: w.semaphores().count() as i64,
            slots_held: w.semaphores().map(|(_, s)| s.holders(w.now()) as i64).sum(),
            paused: w.paused().count() as i64,
        })
    }
}

impl Store for PgBackend {
    async fn counts(&self) -> Counts {
        let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM weir.jobs),
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM weir.jobs_id_seq),
                    (SELECT count(*) FROM weir.semaphores),
                    (SELECT count(*) FROM weir.semaphore_slots WHERE holder IS NOT NULL),
                    (SELECT count(*) FROM weir.paused_queues)",
        )
        .fetch_one(self.pool())
        .await
        .expect("count what is stored");
        Counts {
            jobs: row.0,
            ids: row.1,
            semaphores: row.2,
            slots_held: row.3,
            paused: row.4,
        }
    }
}

fn memory() -> Arc<MemoryBackend> {
    Arc::new(MemoryBackend::new(weir_tests::suite_config()))
}

fn pg_config(world: WorldConfig) -> PgConfig {
    PgConfig {
        world,
        ..PgConfig::default()
    }
}

/// A fresh database, migrated, and a backend on it as `weir_app`.
async fn postgres_with(world: WorldConfig) -> (TestDatabase, Arc<PgBackend>) {
    let db = test_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url_as_app_user())
        .await
        .expect("connect as weir_app");
    let backend = PgBackend::new(pool, pg_config(world)).expect("valid config");
    backend.migrate().await.expect("migrate");
    (db, Arc::new(backend))
}

async fn postgres() -> (TestDatabase, Arc<PgBackend>) {
    postgres_with(weir_tests::suite_config()).await
}

/// Instantiates each backend-agnostic row for both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::memory()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_db, backend) = super::postgres().await;
                    super::$name(backend).await;
                }
            )*
        }
    };
}

on_both_backends!(
    invalid_queue_names_are_refused_everywhere_a_queue_is_named,
    invalid_kinds_are_refused,
    unique_keys_with_sql_metacharacters_are_stored_verbatim,
    payloads_over_the_limit_are_refused_with_their_index,
    payloads_that_are_not_json_are_refused,
    max_attempts_of_zero_or_above_the_limit_are_refused,
    absurd_delays_and_timeouts_are_refused,
    past_run_ats_run_now_and_the_limits_themselves_are_accepted,
    a_slot_try_with_zero_permits_is_refused_and_stores_nothing,
    zero_slot_limits_and_warmups_are_refused_before_waiting,
    a_payload_that_does_not_decode_fails_the_job_for_good,
);

// ---------------------------------------------------------------------------
// Job types.

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Email {
    to: String,
}

impl JobArgs for Email {
    const KIND: &'static str = "email.send";
}

/// A job type whose queue constant breaks the alphabet.
#[derive(Serialize, Deserialize)]
struct SpacedQueue;

impl JobArgs for SpacedQueue {
    const KIND: &'static str = "spaced";
    const QUEUE: &'static str = "my queue";
}

/// A job type whose kind constant breaks the alphabet.
#[derive(Serialize, Deserialize)]
struct QuotedKind;

impl JobArgs for QuotedKind {
    const KIND: &'static str = "kind'; DROP TABLE weir.jobs; --";
}

/// A job type whose default attempts are 0.
#[derive(Serialize, Deserialize)]
struct NoAttempts;

impl JobArgs for NoAttempts {
    const KIND: &'static str = "no.attempts";
    const MAX_ATTEMPTS: u32 = 0;
}

#[derive(Serialize, Deserialize)]
struct Blob {
    data: String,
}

impl JobArgs for Blob {
    const KIND: &'static str = "blob";
}

/// Serialises to a map with non-string keys, which JSON cannot hold.
#[derive(Serialize, Deserialize)]
struct TupleKeys(BTreeMap<(u8, u8), u8>);

impl JobArgs for TupleKeys {
    const KIND: &'static str = "tuple.keys";
}

#[derive(Serialize, Deserialize)]
struct Typed {
    n: u32,
}

impl JobArgs for Typed {
    const KIND: &'static str = "bad.typed";
}

/// A job whose concurrency limit has 0 slots.
#[derive(Serialize, Deserialize)]
struct ZeroLimit;

impl JobArgs for ZeroLimit {
    const KIND: &'static str = "bad.zero_limit";

    fn concurrency(&self) -> Option<(String, u16)> {
        Some(("tenant:42".into(), 0))
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn options() -> InsertOptions {
    InsertOptions::default()
}

/// The message of a refused name says which name, what is wrong with it
/// and what is allowed.
fn assert_names_the_rule(e: &InvalidName) {
    let m = e.to_string();
    let ok = match e {
        InvalidName::Empty { what } => {
            m.contains(&what.to_string()) && m.contains("must not be empty")
        }
        InvalidName::TooLong { what, len, max } => {
            m.contains(&what.to_string())
                && m.contains(&format!("{len} bytes"))
                && m.contains(&format!("at most {max}"))
        }
        InvalidName::BadChar {
            what,
            ch,
            at,
            allowed,
        } => {
            m.contains(&what.to_string())
                && m.contains(&format!("{ch:?}"))
                && m.contains(&format!("byte {at}"))
                && m.contains(allowed)
        }
        _ => false,
    };
    assert!(ok, "not actionable: {m}");
}

fn bad_char(what: NameKind, ch: char, at: usize, allowed: &'static str) -> InvalidName {
    InvalidName::BadChar {
        what,
        ch,
        at,
        allowed,
    }
}

fn expect_invalid_name<T: std::fmt::Debug>(
    path: &str,
    input: &str,
    result: Result<T, ClientError>,
    expected: &InvalidName,
) {
    match result {
        Err(ClientError::InvalidName(e)) => {
            assert_eq!(&e, expected, "{path} {input:?}");
            assert_names_the_rule(&e);
        }
        other => panic!("{path} {input:?}: expected {expected:?}, got {other:?}"),
    }
}

fn expect_invalid_job<T: std::fmt::Debug>(
    path: &str,
    result: Result<T, ClientError>,
    index: usize,
    expected: &InvalidJob,
) {
    match result {
        Err(ClientError::InvalidJob { index: i, error }) => {
            assert_eq!((i, &error), (index, expected), "{path}");
            let m = ClientError::InvalidJob { index: i, error }.to_string();
            assert!(m.starts_with(&format!("job {index} is invalid: ")), "{m}");
        }
        other => panic!("{path}: expected job {index} {expected:?}, got {other:?}"),
    }
}

async fn wait_for<F: Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

// ---------------------------------------------------------------------------
// Names.

const QUEUE_ALPHABET: &str = "[a-z0-9_.-]";
const SYMBOL_ALPHABET: &str = "[A-Za-z0-9_.:-]";

/// Queue names a user gets wrong, each with its exact refusal.
fn bad_queue_names() -> Vec<(String, InvalidName)> {
    let q = NameKind::Queue;
    vec![
        (String::new(), InvalidName::Empty { what: q }),
        (
            "q".repeat(QueueName::MAX_LEN + 1),
            InvalidName::TooLong {
                what: q,
                len: 65,
                max: 64,
            },
        ),
        (
            "q'; DROP TABLE weir.jobs; --".into(),
            bad_char(q, '\'', 1, QUEUE_ALPHABET),
        ),
        (
            "jobs\"; DELETE FROM weir.jobs; --".into(),
            bad_char(q, '"', 4, QUEUE_ALPHABET),
        ),
        ("q$1".into(), bad_char(q, '$', 1, QUEUE_ALPHABET)),
        ("q\\".into(), bad_char(q, '\\', 1, QUEUE_ALPHABET)),
        ("Default".into(), bad_char(q, 'D', 0, QUEUE_ALPHABET)),
        ("my queue".into(), bad_char(q, ' ', 2, QUEUE_ALPHABET)),
        ("q\0".into(), bad_char(q, '\0', 1, QUEUE_ALPHABET)),
        ("q\tx".into(), bad_char(q, '\t', 1, QUEUE_ALPHABET)),
        ("müll".into(), bad_char(q, 'ü', 1, QUEUE_ALPHABET)),
    ]
}

/// Every place a queue is named refuses a malformed one with the same
/// typed error, before anything is sent to storage.
async fn invalid_queue_names_are_refused_everywhere_a_queue_is_named<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    for (name, expected) in bad_queue_names() {
        let named = || InsertOptions {
            queue: Some(name.clone()),
            ..options()
        };
        let args = Email::default();
        let typed = client.insert_with(&args, named()).await;
        expect_invalid_name("insert_with", &name, typed, &expected);
        let raw = client.insert_json("email.send", b"{}", named()).await;
        expect_invalid_name("insert_json", &name, raw, &expected);
        let many = client
            .insert_many([(&args, options()), (&args, named())])
            .await;
        expect_invalid_name("insert_many", &name, many, &expected);
        let bulk = client.insert_bulk([(&args, named())]).await;
        expect_invalid_name("insert_bulk", &name, bulk, &expected);
        expect_invalid_name("pause", &name, client.pause(&name).await, &expected);
        expect_invalid_name("resume", &name, client.resume(&name).await, &expected);
        assert_eq!(PoolConfig::new(&name, 1).unwrap_err(), expected);
        let config = PoolConfig::new("default", 1).unwrap();
        assert_eq!(config.clone().queue(&name, 1).unwrap_err(), expected);
        assert_eq!(config.queue_limit(&name, 1).unwrap_err(), expected);
        assert_eq!(QueueName::new(name.clone()), Err(expected));
    }
    let from_the_type = client.insert(&SpacedQueue).await;
    let expected = bad_char(NameKind::Queue, ' ', 2, QUEUE_ALPHABET);
    expect_invalid_name("JobArgs::QUEUE", "my queue", from_the_type, &expected);
    assert_eq!(backend.counts().await, before);
}

/// Kinds have their own alphabet and length; a malformed one is refused on
/// insert, and a job type with one cannot even be registered.
async fn invalid_kinds_are_refused<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    let k = NameKind::Kind;
    let table = [
        (String::new(), InvalidName::Empty { what: k }),
        (
            "k".repeat(129),
            InvalidName::TooLong {
                what: k,
                len: 129,
                max: 128,
            },
        ),
        (
            "email'); DROP TABLE weir.jobs; --".into(),
            bad_char(k, '\'', 5, SYMBOL_ALPHABET),
        ),
        ("email send".into(), bad_char(k, ' ', 5, SYMBOL_ALPHABET)),
        ("email\nsend".into(), bad_char(k, '\n', 5, SYMBOL_ALPHABET)),
    ];
    for (kind, expected) in table {
        let raw = client.insert_json(&kind, b"{}", options()).await;
        expect_invalid_name("insert_json", &kind, raw, &expected);
        let built = weir::new_raw_job(&kind, b"{}", &options(), Timestamp(0));
        expect_invalid_name("new_raw_job", &kind, built, &expected);
    }
    let from_the_type = client.insert(&QuotedKind).await;
    let expected = bad_char(k, '\'', 4, SYMBOL_ALPHABET);
    expect_invalid_name("JobArgs::KIND", QuotedKind::KIND, from_the_type, &expected);
    let mut registry = Registry::new();
    let refused = registry
        .register(|_: QuotedKind, _| async { Ok(JobOutcome::Complete) })
        .map(|_| ());
    assert_eq!(refused, Err(expected));
    assert_eq!(registry.kinds().count(), 0);
    assert_eq!(backend.counts().await, before);
}

/// Unique keys are any printable text, so SQL metacharacters are allowed:
/// they travel as bind parameters and come back byte for byte, and a
/// second insert with the same key finds the first job. Control
/// characters, empty and over-long keys are refused.
async fn unique_keys_with_sql_metacharacters_are_stored_verbatim<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    let keys = [
        "'); DROP TABLE weir.jobs; --",
        "\"; DELETE FROM weir.jobs WHERE true; --",
        "Robert'); DROP TABLE students;--",
        "$1 $$ %s %% ? :name \\x00 \\N \\\\",
        "order 42 / line 7 — ключ ✓ 🔑",
    ];
    let keyed = |key: &str| InsertOptions {
        unique_key: Some(key.to_string()),
        ..options()
    };
    let mut ids = Vec::new();
    for key in keys {
        let first = client
            .insert_with(&Email::default(), keyed(key))
            .await
            .unwrap();
        assert!(!first.duplicate, "{key:?}");
        let stored = client.job(first.id).await.unwrap().expect("stored");
        assert_eq!(stored.unique_key.as_ref().map(|k| k.as_str()), Some(key));
        let again = client
            .insert_with(&Email::default(), keyed(key))
            .await
            .unwrap();
        assert_eq!((again.id, again.duplicate), (first.id, true), "{key:?}");
        ids.push(first.id);
    }
    // The bulk path with keys (the batch statement in chunks) finds them too.
    let args = Email::default();
    let bulk = client
        .insert_bulk(keys.iter().map(|key| (&args, keyed(key))))
        .await
        .unwrap();
    assert_eq!(bulk.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(bulk.iter().all(|e| e.duplicate));
    let after_good = backend.counts().await;
    assert_eq!(after_good.jobs, keys.len() as i64, "the table is intact");
    let u = NameKind::UniqueKey;
    let printable = "printable characters";
    let table = [
        (String::new(), InvalidName::Empty { what: u }),
        (
            "k".repeat(513),
            InvalidName::TooLong {
                what: u,
                len: 513,
                max: 512,
            },
        ),
        ("nul\0byte".into(), bad_char(u, '\0', 3, printable)),
        ("line\nbreak".into(), bad_char(u, '\n', 4, printable)),
        ("tab\there".into(), bad_char(u, '\t', 3, printable)),
    ];
    for (key, expected) in table {
        let refused = client.insert_with(&Email::default(), keyed(&key)).await;
        expect_invalid_name("insert_with", &key, refused, &expected);
        let bulk = client.insert_bulk([(&args, keyed(&key))]).await;
        expect_invalid_name("insert_bulk", &key, bulk, &expected);
    }
    assert_eq!(backend.counts().await, after_good);
}

// ---------------------------------------------------------------------------
// Payloads.

/// A payload one byte over `payload_bytes_max` is refused with the
/// position of the offending job, by every insert path, and the rest of
/// the batch is not written either. One of exactly the limit is accepted.
async fn payloads_over_the_limit_are_refused_with_their_index<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    let max = weir_tests::suite_config().limits.payload_bytes_max;
    let expected = InvalidJob::PayloadTooLarge { len: max + 1, max };
    // A JSON string of max + 1 bytes, quotes included.
    let big_json = format!("\"{}\"", "x".repeat(max - 1));
    let raw = client
        .insert_json("blob", big_json.as_bytes(), options())
        .await;
    expect_invalid_job("insert_json", raw, 0, &expected);
    let overhead = serde_json::to_vec(&Blob {
        data: String::new(),
    })
    .unwrap()
    .len();
    let big = Blob {
        data: "x".repeat(max + 1 - overhead),
    };
    let small = Blob { data: "ok".into() };
    let many = client
        .insert_many([(&small, options()), (&small, options()), (&big, options())])
        .await;
    expect_invalid_job("insert_many", many, 2, &expected);
    let mut jobs: Vec<&Blob> = vec![&small; 1000];
    jobs[700] = &big;
    let bulk = client
        .insert_bulk(jobs.into_iter().map(|b| (b, options())))
        .await;
    expect_invalid_job("insert_bulk", bulk, 700, &expected);
    let message = ClientError::InvalidJob {
        index: 700,
        error: expected,
    }
    .to_string();
    assert!(
        message.contains(&format!("{} bytes; the limit is {max}", max + 1)),
        "{message}"
    );
    assert_eq!(backend.counts().await, before);
    // The limit itself is allowed.
    let at_limit = format!("\"{}\"", "x".repeat(max - 2));
    client
        .insert_json("blob", at_limit.as_bytes(), options())
        .await
        .unwrap();
    assert_eq!(backend.counts().await.jobs, before.jobs + 1);
}

/// Raw payloads must be JSON, and typed ones must serialise as JSON; the
/// error is the parser's, with its line and column.
async fn payloads_that_are_not_json_are_refused<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    let table: [&[u8]; 8] = [
        b"",
        b"{",
        b"not json",
        b"{\"to\": \"a\"} trailing",
        b"{'to': 'single quotes'}",
        b"NaN",
        b"\xff\xfe{}",
        b"{\"to\": \"a\",}",
    ];
    for json in table {
        match client.insert_json("email.send", json, options()).await {
            Err(ClientError::Payload(e)) => {
                let m = ClientError::Payload(e).to_string();
                assert!(m.starts_with("job arguments are not valid JSON: "), "{m}");
                assert!(m.contains("line 1 column"), "{m}");
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(json)),
        }
    }
    let unserialisable = TupleKeys(BTreeMap::from([((1, 2), 3)]));
    match client.insert(&unserialisable).await {
        Err(ClientError::Payload(e)) => assert!(e.to_string().contains("key must be a string")),
        other => panic!("{other:?}"),
    }
    assert_eq!(backend.counts().await, before);
}

// ---------------------------------------------------------------------------
// Attempts, delays and timeouts.

/// `max_attempts` of 0 would make a job that can never run; above the
/// configured maximum is refused too, from options or from the job type.
async fn max_attempts_of_zero_or_above_the_limit_are_refused<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    let limits = JobLimits::default();
    let attempts = |n| InsertOptions {
        max_attempts: Some(n),
        ..options()
    };
    let too_many = |requested| InvalidJob::MaxAttemptsTooLarge {
        requested,
        max: limits.max_attempts_max,
    };
    let table = [
        (0, InvalidJob::MaxAttemptsZero),
        (
            limits.max_attempts_max + 1,
            too_many(limits.max_attempts_max + 1),
        ),
        (u32::MAX, too_many(u32::MAX)),
    ];
    for (n, expected) in table {
        let typed = client.insert_with(&Email::default(), attempts(n)).await;
        expect_invalid_job("insert_with", typed, 0, &expected);
        let args = Email::default();
        let bulk = client
            .insert_bulk([(&args, options()), (&args, attempts(n))])
            .await;
        expect_invalid_job("insert_bulk", bulk, 1, &expected);
    }
    let from_the_type = client.insert(&NoAttempts).await;
    expect_invalid_job(
        "JobArgs::MAX_ATTEMPTS",
        from_the_type,
        0,
        &InvalidJob::MaxAttemptsZero,
    );
    let m = InvalidJob::MaxAttemptsZero.to_string();
    assert!(m.contains("max_attempts must be at least 1"), "{m}");
    assert_eq!(backend.counts().await, before);
    for n in [1, limits.max_attempts_max] {
        client
            .insert_with(&Email::default(), attempts(n))
            .await
            .unwrap();
    }
    assert_eq!(backend.counts().await.jobs, before.jobs + 2);
}

/// `Duration` cannot be negative, so a negative delay or timeout cannot be
/// written in Rust; the absurd ones can. Too far, the end of time, zero and
/// sub-millisecond timeouts are refused, and so is a `run_at` before the
/// Unix epoch (where a negative number can arrive), by the single and the
/// bulk insert.
async fn absurd_delays_and_timeouts_are_refused<B: Store>(backend: Arc<B>) {
    assert!(
        Duration::try_from_secs_f64(-1.0).is_err(),
        "no negative Duration"
    );
    let client = Client::new(Arc::clone(&backend));
    client.insert(&Email::default()).await.unwrap();
    let before = backend.counts().await;
    let limits = JobLimits::default();
    let now = backend.now().await.unwrap();
    let with = |f: fn(&mut InsertOptions)| {
        let mut o = options();
        f(&mut o);
        o
    };
    let too_far = |e: &InvalidJob| matches!(e, InvalidJob::RunAtTooFar { max, .. } if *max == limits.delay_max);
    let end_of_time = |e: &InvalidJob| matches!(e, InvalidJob::RunAtTooFar { run_at, .. } if *run_at == Timestamp(i64::MAX));
    let before_epoch =
        |e: &InvalidJob| matches!(e, InvalidJob::RunAtBeforeEpoch { run_at } if run_at.0 < 0);
    let zero = |e: &InvalidJob| *e == InvalidJob::TimeoutZero;
    let too_long = |e: &InvalidJob| matches!(e, InvalidJob::TimeoutTooLong { max, .. } if *max == limits.timeout_max);
    let forever = |e: &InvalidJob| matches!(e, InvalidJob::TimeoutTooLong { requested, .. } if *requested == Millis(u64::MAX));
    #[allow(clippy::type_complexity)]
    let table: Vec<(&str, InsertOptions, &dyn Fn(&InvalidJob) -> bool)> = vec![
        (
            "delay one second past delay_max",
            InsertOptions {
                delay: Some(Duration::from_millis(limits.delay_max.0 + 1_000)),
                ..options()
            },
            &too_far,
        ),
        (
            "delay Duration::MAX",
            with(|o| o.delay = Some(Duration::MAX)),
            &end_of_time,
        ),
        (
            "run_at ten years ahead",
            InsertOptions {
                run_at: Some(now.plus(Millis::from_secs(10 * 366 * 24 * 3600))),
                ..options()
            },
            &too_far,
        ),
        (
            "run_at i64::MAX",
            with(|o| o.run_at = Some(Timestamp(i64::MAX))),
            &end_of_time,
        ),
        (
            "run_at -1",
            with(|o| o.run_at = Some(Timestamp(-1))),
            &before_epoch,
        ),
        (
            "run_at i64::MIN",
            with(|o| o.run_at = Some(Timestamp(i64::MIN))),
            &before_epoch,
        ),
        (
            "timeout zero",
            with(|o| o.timeout = Some(Duration::ZERO)),
            &zero,
        ),
        (
            "timeout 999 µs (rounds down to 0 ms)",
            with(|o| o.timeout = Some(Duration::from_micros(999))),
            &zero,
        ),
        (
            "timeout one ms past timeout_max",
            InsertOptions {
                timeout: Some(Duration::from_millis(limits.timeout_max.0 + 1)),
                ..options()
            },
            &too_long,
        ),
        (
            "timeout Duration::MAX",
            with(|o| o.timeout = Some(Duration::MAX)),
            &forever,
        ),
    ];
    let args = Email::default();
    for (label, bad, expected) in &table {
        for (path, index, result) in [
            (
                "insert_with",
                0,
                client.insert_with(&args, bad.clone()).await.map(|_| ()),
            ),
            (
                "insert_bulk",
                3,
                client
                    .insert_bulk(
                        (0..6).map(|i| (&args, if i == 3 { bad.clone() } else { options() })),
                    )
                    .await
                    .map(|_| ()),
            ),
        ] {
            match result {
                Err(ClientError::InvalidJob { index: i, error }) if i == index => {
                    assert!(expected(&error), "{label} via {path}: {error:?}");
                    let m = error.to_string();
                    assert!(
                        ["run_at", "timeout"].iter().any(|w| m.contains(w)),
                        "{label}: {m}"
                    );
                }
                other => panic!("{label} via {path}: {other:?}"),
            }
        }
    }
    let both = InsertOptions {
        delay: Some(Duration::from_secs(1)),
        run_at: Some(now),
        ..options()
    };
    match client.insert_with(&args, both).await {
        Err(ClientError::Options(m)) => assert!(m.contains("delay or run_at, not both")),
        other => panic!("{other:?}"),
    }
    assert_eq!(backend.counts().await, before);
}

/// The positive space of the row above: a `run_at` in the past (after
/// the epoch) or at the epoch itself is due at once, and a delay and a
/// timeout of exactly their limits are accepted.
async fn past_run_ats_run_now_and_the_limits_themselves_are_accepted<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    let before = backend.counts().await;
    let limits = JobLimits::default();
    let now = backend.now().await.unwrap();
    let args = Email::default();
    let run_at = |t| InsertOptions {
        run_at: Some(t),
        ..options()
    };
    let past = client
        .insert_with(&args, run_at(now.minus(Millis::from_secs(3600))))
        .await
        .unwrap();
    let epoch = client
        .insert_with(&args, run_at(Timestamp::ZERO))
        .await
        .unwrap();
    for id in [past.id, epoch.id] {
        let job = client.job(id).await.unwrap().unwrap();
        assert_eq!(job.state_name(), StateName::Available, "due at once");
    }
    let at_limits = InsertOptions {
        delay: Some(Duration::from_millis(limits.delay_max.0)),
        timeout: Some(Duration::from_millis(limits.timeout_max.0)),
        ..options()
    };
    let scheduled = client.insert_with(&args, at_limits).await.unwrap();
    let job = client.job(scheduled.id).await.unwrap().unwrap();
    assert_eq!(job.state_name(), StateName::Scheduled);
    assert_eq!(backend.counts().await.jobs, before.jobs + 3);
}

// ---------------------------------------------------------------------------
// Semaphores.

/// A slot try with 0 permits is refused and creates no semaphore; once the
/// semaphore exists, 0 is a size mismatch and changes nothing.
async fn a_slot_try_with_zero_permits_is_refused_and_stores_nothing<B: Store>(backend: Arc<B>) {
    let name = SemaphoreName::new("bad-input:zero").unwrap();
    let slot_try = |permits| cmd::SlotTry {
        semaphore: name.clone(),
        permits,
        slot: SlotIndex(0),
        holder: ProcessId(7),
        lease_ttl: Some(Millis(60_000)),
    };
    let before = backend.counts().await;
    let refused = backend.run(slot_try(0)).await.unwrap();
    assert_eq!(refused, Err(Reject::ZeroPermits));
    assert!(Reject::ZeroPermits
        .to_string()
        .contains("at least one permit"));
    assert_eq!(backend.counts().await, before);

    // Once the semaphore exists with 2 slots, 0 is a size mismatch.
    let grant = backend
        .run(slot_try(2))
        .await
        .unwrap()
        .expect("a slot of a new semaphore of 2 is free");
    let held = backend.counts().await;
    assert_eq!(
        (held.semaphores, held.slots_held),
        (before.semaphores + 1, 1)
    );
    let mismatch = backend.run(slot_try(0)).await.unwrap();
    assert_eq!(
        mismatch,
        Err(Reject::PermitsMismatch {
            name: name.clone(),
            configured: 2,
            presented: 0
        })
    );
    assert_eq!(backend.counts().await, held);
    let release = Command::SlotRelease(cmd::SlotRelease {
        semaphore: name.clone(),
        grant,
    });
    assert_eq!(
        backend.execute(release).await.unwrap(),
        Outcome::SlotReleased(true)
    );
    assert_eq!(
        backend.counts().await,
        Counts {
            slots_held: 0,
            ..held
        }
    );
}

/// `weir::Limit`, a pool's queue limit and a warm-up refuse 0 slots before
/// they touch storage; the warm-up does not sleep through its start delay
/// first, and refuses batches of 0 items and a lease too short to renew
/// the same way.
async fn zero_slot_limits_and_warmups_are_refused_before_waiting<B: Store>(backend: Arc<B>) {
    let before = backend.counts().await;
    let limit = Limit::new("tenant:42", 0);
    let semaphore = SemaphoreName::new("tenant:42").unwrap();
    assert_eq!(limit, Err(InvalidLimit::ZeroPermits { semaphore }));
    let m = limit.unwrap_err().to_string();
    assert!(
        m.contains("tenant:42") && m.contains("at least 1 slot"),
        "{m}"
    );
    assert!(matches!(
        Limit::new("tenant 42", 1),
        Err(InvalidLimit::Name(InvalidName::BadChar { ch: ' ', .. }))
    ));

    // A pool's queue limit.
    let config = PoolConfig::new("default", 4)
        .unwrap()
        .queue_limit("default", 0)
        .unwrap();
    match WorkerPool::with_config(Arc::clone(&backend), email_registry(), config) {
        Err(PoolError::Config(InvalidPoolConfig::Dispatcher(
            InvalidDispatcherConfig::QueueLimitZero { queue },
        ))) => {
            assert_eq!(queue.as_str(), "default");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a queue limit of 0 was accepted"),
    }

    // A warm-up, with a start delay it must not sleep through.
    let config = WarmupConfig {
        process: ProcessId(8),
        pacing: Warmup {
            delay: Millis(60_000),
            jitter: Millis(0),
            batch_size: 1,
            batch_pause: Millis(0),
        },
        semaphore: Some((SemaphoreName::new("warm:cache").unwrap(), 0)),
        wait: WaitConfig {
            retry_min: Millis(5),
            retry_max: Millis(10),
            wait_max: Millis(60_000),
        },
        lease_ttl: Some(Millis(1_000)),
    };
    let ran = AtomicU32::new(0);
    let refused = |config: WarmupConfig| {
        let (backend, ran) = (&backend, &ran);
        async move {
            let started = Instant::now();
            let result = warmup(&**backend, &config, 10, |_| async {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "refused up front"
            );
            match result {
                Err(WarmupError::Invalid(invalid)) => invalid,
                other => panic!("{other:?}"),
            }
        }
    };
    let semaphore = SemaphoreName::new("warm:cache").unwrap();
    let invalid = refused(config.clone()).await;
    assert_eq!(invalid, InvalidWarmup::ZeroPermits { semaphore });
    let m = invalid.to_string();
    assert!(
        m.contains("warm:cache") && m.contains("at least 1 slot"),
        "{m}"
    );
    let mut no_batch = config.clone();
    no_batch.semaphore = Some((SemaphoreName::new("warm:cache").unwrap(), 2));
    no_batch.pacing.batch_size = 0;
    let invalid = refused(no_batch.clone()).await;
    assert_eq!(invalid, InvalidWarmup::ZeroBatchSize);
    assert!(invalid.to_string().contains("at least 1 item"), "{invalid}");
    let mut short = no_batch;
    short.pacing.batch_size = 1;
    short.lease_ttl = Some(Millis(2));
    let invalid = refused(short).await;
    assert_eq!(
        invalid,
        InvalidWarmup::LeaseTooShort {
            lease_ttl: Millis(2),
            min: WarmupConfig::LEASE_TTL_MIN,
        }
    );
    let m = invalid.to_string();
    assert!(
        m.contains("lease_ttl 2ms") && m.contains("at least 3ms"),
        "{m}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(backend.counts().await, before);
}

fn email_registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(|_: Email, _| async { Ok(JobOutcome::Complete) })
        .unwrap();
    registry
}

/// Postgres's client-side semaphores refuse 0 slots too: the advisory-lock
/// one when it is opened, the lease-table one when it is acquired (before
/// any try, so it never waits out `wait_max`). No semaphore row is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_semaphores_of_zero_slots_are_refused_up_front() {
    use weir_postgres::semaphore::{acquire, AcquireError, AdvisorySemaphore, LeaseSemaphore};
    let (db, backend) = postgres().await;
    let before = backend.counts().await;
    let name = SemaphoreName::new("warm:cache").unwrap();
    let options: PgConnectOptions = db.url_as_app_user().parse().unwrap();
    let advisory = AdvisorySemaphore::open(
        &backend,
        options,
        name.clone(),
        0,
        ProcessId(3),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(matches!(advisory, Err(Reject::ZeroPermits)), "{advisory:?}");
    let mut lease = LeaseSemaphore::new((*backend).clone(), name, 0, ProcessId(3), Millis(1_000));
    let wait = WaitConfig {
        retry_min: Millis(5),
        retry_max: Millis(10),
        wait_max: Millis(60_000),
    };
    let started = Instant::now();
    let refused = acquire(&mut lease, wait).await;
    assert_eq!(refused, Err(AcquireError::ZeroPermits));
    assert!(refused.unwrap_err().to_string().contains("at least 1 slot"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused up front"
    );
    assert_eq!(backend.counts().await, before);
}

// ---------------------------------------------------------------------------
// A pool's configuration.

fn quick(process: u64) -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Millis(20),
        flush_delay: Millis(5),
        maintenance_interval: Millis(50),
        heartbeat_interval: Millis(100),
        shutdown_timeout: Millis(1_000),
        ..DispatcherConfig::new(ProcessId(process), QueueName::new("default").unwrap(), 4)
    }
}

/// Every setting that cannot work is refused by `WorkerPool::with_config`,
/// naming the setting, before the pool exists (so before any command). The
/// checks do not depend on the backend; they run once, on memory.
#[tokio::test]
async fn pool_settings_that_cannot_work_are_refused() {
    let backend = memory();
    let before = backend.counts().await;
    let q = |s: &str| QueueName::new(s).unwrap();
    let base = || PoolConfig::from_dispatcher(quick(1));
    let with = |f: &dyn Fn(&mut PoolConfig)| {
        let mut c = base();
        f(&mut c);
        c
    };
    let zero =
        |setting| InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::ZeroInterval { setting });
    let short = |setting, got| InvalidPoolConfig::TtlTooShort {
        setting,
        got,
        min: Duration::from_millis(30),
    };
    let table: Vec<(&str, PoolConfig, InvalidPoolConfig)> = vec![
        (
            "no queues",
            with(&|c| c.dispatcher.queues.clear()),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::NoQueues),
        ),
        (
            "max_workers 0",
            PoolConfig::new("default", 0).unwrap(),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::MaxWorkersZero {
                queue: q("default"),
            }),
        ),
        (
            "a queue twice",
            base().queue("default", 2).unwrap(),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::QueueListedTwice {
                queue: q("default"),
            }),
        ),
        (
            "claim_batch_max 0",
            with(&|c| c.dispatcher.claim_batch_max = 0),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::ZeroBatch {
                setting: "claim_batch_max",
            }),
        ),
        (
            "flush_max 0",
            with(&|c| c.dispatcher.flush_max = 0),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::ZeroBatch {
                setting: "flush_max",
            }),
        ),
        (
            "poll_interval 0",
            with(&|c| c.dispatcher.poll_interval = Millis::ZERO),
            zero("poll_interval"),
        ),
        (
            "heartbeat_interval 0",
            with(&|c| c.dispatcher.heartbeat_interval = Millis::ZERO),
            zero("heartbeat_interval"),
        ),
        (
            "maintenance_interval 0 while leading",
            with(&|c| c.dispatcher.maintenance_interval = Millis::ZERO),
            zero("maintenance_interval"),
        ),
        (
            "retry_after 0",
            with(&|c| c.dispatcher.retry_after = Millis::ZERO),
            zero("retry_after"),
        ),
        (
            "queue limit 0",
            base().queue_limit("default", 0).unwrap(),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::QueueLimitZero {
                queue: q("default"),
            }),
        ),
        (
            "queue limit on a queue not worked",
            base().queue_limit("elsewhere", 2).unwrap(),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::QueueLimitUnknownQueue {
                queue: q("elsewhere"),
            }),
        ),
        (
            "limit lease_ttl 1 ms",
            with(&|c| c.dispatcher.limits.lease_ttl = Millis(1)),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::TtlTooShort {
                setting: "limits.lease_ttl",
                got: Millis(1),
                min: Millis(30),
            }),
        ),
        (
            "limit retry_min above retry_max",
            with(&|c| c.dispatcher.limits.retry_min = Millis(2_000)),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::RetryRange {
                retry_min: Millis(2_000),
                retry_max: Millis(1_000),
            }),
        ),
        (
            "claims larger than the backend takes (batch_max 16)",
            with(&|c| {
                c.dispatcher.claim_batch_max = 20;
                c.dispatcher.queues[0].max_workers = 32;
            }),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::BatchOverBackendLimit {
                setting: "claim_batch_max",
                value: 20,
                max: 16,
            }),
        ),
        (
            "flushes larger than the backend takes (batch_max 16)",
            with(&|c| {
                c.dispatcher.claim_batch_max = 16;
                c.dispatcher.queues[0].max_workers = 32;
            }),
            InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::BatchOverBackendLimit {
                setting: "flush_max",
                value: 128,
                max: 16,
            }),
        ),
        (
            "presence_ttl 0",
            with(&|c| c.presence_ttl = Duration::ZERO),
            short("presence_ttl", Duration::ZERO),
        ),
    ];
    for (label, config, expected) in table {
        match WorkerPool::with_config(Arc::clone(&backend), email_registry(), config) {
            Err(PoolError::Config(e)) => {
                assert_eq!(e, expected, "{label}");
                let m = PoolError::Config(e).to_string();
                assert!(m.starts_with("invalid worker pool configuration: "), "{m}");
            }
            Err(other) => panic!("{label}: {other}"),
            Ok(_) => panic!("{label}: accepted"),
        }
    }
    let m = zero("retry_after").to_string();
    assert!(
        m.contains("retry_after is 0 ms; it must be at least 1 ms"),
        "{m}"
    );
    let m =
        InvalidPoolConfig::Dispatcher(InvalidDispatcherConfig::QueueLimitZero { queue: q("mail") })
            .to_string();
    assert!(
        m.contains("queue mail") && m.contains("at least 1 slot"),
        "{m}"
    );
    match WorkerPool::with_config(Arc::clone(&backend), Registry::new(), base()) {
        Err(PoolError::Config(InvalidPoolConfig::NoHandlers)) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a pool without handlers was accepted"),
    }
    // Not leading, the maintenance interval is never used, so 0 is fine.
    let follower = with(&|c| {
        c.dispatcher.lead = false;
        c.dispatcher.maintenance_interval = Millis::ZERO;
    });
    assert!(WorkerPool::with_config(Arc::clone(&backend), email_registry(), follower).is_ok());
    assert_eq!(backend.counts().await, before);
    assert_eq!(backend.snapshot().all_claimers().count(), 0);
}

// ---------------------------------------------------------------------------
// Payloads that do not decode, and limits a handler cannot run under.

/// Runs a pool until every one of `ids` is finished, then shuts it down.
async fn run_until_finished<B: Backend>(backend: Arc<B>, registry: Registry, ids: &[JobId]) {
    let pool = WorkerPool::new(Arc::clone(&backend), registry, quick(11)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pool.run(async {
        let _ = stopped.await;
    }));
    wait_for("every job to finish", Duration::from_secs(20), || {
        let backend = Arc::clone(&backend);
        async move {
            for id in ids {
                let job = backend.job(*id).await.unwrap().expect("not pruned");
                if !job.state_name().is_terminal() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().expect("the pool shuts down cleanly");
}

fn failed_for_good(job: &Job) -> &str {
    match &job.state {
        JobState::Failed {
            reason: FailReason::Terminal,
            ..
        } => {}
        other => panic!("job {} is {other:?}, not failed for good", job.id),
    }
    assert_eq!(
        job.attempt.0, 1,
        "no retry: one attempt of {}",
        job.max_attempts
    );
    &job.last_error().expect("the reason is kept").message
}

/// Valid JSON that is not the job type's shape fails the job for good, with
/// the decode error (retrying cannot fix a payload); a job whose
/// concurrency limit has 0 slots does too, instead of waiting forever.
/// The handler never runs for either, no semaphore is created, and the
/// good job beside them completes.
async fn a_payload_that_does_not_decode_fails_the_job_for_good<B: Store>(backend: Arc<B>) {
    let client = Client::new(Arc::clone(&backend));
    let ran = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let counter = Arc::clone(&ran);
    registry
        .register(move |_: Typed, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(JobOutcome::Complete) }
        })
        .unwrap();
    registry
        .register(|_: ZeroLimit, _| async { Ok(JobOutcome::Complete) })
        .unwrap();
    let wrong_type = client
        .insert_json("bad.typed", br#"{"n": "seven"}"#, options())
        .await
        .unwrap();
    let missing = client
        .insert_json("bad.typed", b"{}", options())
        .await
        .unwrap();
    let zero_limit = client.insert(&ZeroLimit).await.unwrap();
    let good = client.insert(&Typed { n: 7 }).await.unwrap();
    let before = backend.counts().await;
    let ids = [wrong_type.id, missing.id, zero_limit.id, good.id];
    run_until_finished(Arc::clone(&backend), registry, &ids).await;
    let job = |id| {
        let client = client.clone();
        async move { client.job(id).await.unwrap().unwrap() }
    };
    let m = failed_for_good(&job(wrong_type.id).await).to_string();
    assert!(m.contains("payload does not decode as bad.typed"), "{m}");
    assert!(
        m.contains("invalid type: string \"seven\", expected u32"),
        "{m}"
    );
    let m = failed_for_good(&job(missing.id).await).to_string();
    assert!(m.contains("missing field `n`"), "{m}");
    let m = failed_for_good(&job(zero_limit.id).await).to_string();
    assert!(
        m.contains("invalid concurrency limit") && m.contains("tenant:42 has 0 permits"),
        "{m}"
    );
    assert_eq!(job(good.id).await.state_name(), StateName::Completed);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only the good job ran");
    let after = backend.counts().await;
    assert_eq!(
        (after.jobs, after.ids),
        (before.jobs, before.ids),
        "none lost"
    );
    assert_eq!(after.semaphores, 0, "no semaphore of 0 slots was created");
}

// ---------------------------------------------------------------------------
// Postgres: schema names, connections, schema versions, lost connections.

/// A schema name is spliced into SQL (quoted), so its alphabet has no
/// quote: every injection attempt is refused by `SchemaName::new`, and a
/// `PgConfig` cannot hold a name that did not pass it. (The `weir
/// migrate --schema` path, with the database checked afterwards, is in
/// `cli/tests/bad_input.rs`.)
#[test]
fn schema_names_that_try_injection_are_refused() {
    let table = [
        ("weir\"; DROP TABLE x; --", "only [a-z0-9_] are allowed"),
        ("weir; DROP TABLE x", "only [a-z0-9_] are allowed"),
        ("public\".\"jobs", "only [a-z0-9_] are allowed"),
        ("weir\0", "only [a-z0-9_] are allowed"),
        ("Weir", "only [a-z0-9_] are allowed"),
        ("", "it is empty"),
        ("1weir", "must not start with a digit"),
        ("pg_catalog", "reserved by Postgres"),
    ];
    for (name, why) in table {
        let e = SchemaName::new(name).unwrap_err();
        let m = e.to_string();
        assert!(m.contains(&format!("{name:?}")), "names the input: {m}");
        assert!(m.contains(why), "{m}");
    }
    let long = "a".repeat(SchemaName::MAX_LEN + 1);
    assert!(SchemaName::new(long)
        .unwrap_err()
        .to_string()
        .contains("longer than 48"));
    assert_eq!(SchemaName::new("weir_2").unwrap().quoted(), "\"weir_2\"");
}

/// A port nothing listens on (connection refused), and one that accepts
/// TCP but never speaks (a hung server or a black-holed proxy).
async fn dead_ends() -> (u16, TcpListener) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    (closed_port, TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// A database that does not answer is a typed error within the caller's
/// timeout: `Unavailable` (certainly not applied) from every call, never a
/// hang; a malformed URL is refused before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_url_that_does_not_answer_is_a_typed_error() {
    let (closed, hung) = dead_ends().await;
    let hung_port = hung.local_addr().unwrap().port();
    for (what, port) in [("connection refused", closed), ("never answers", hung_port)] {
        let url = format!("postgres://weir_app@127.0.0.1:{port}/weir");
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy(&url)
            .unwrap();
        let backend = Arc::new(PgBackend::new(pool, PgConfig::default()).unwrap());
        let client = Client::new(Arc::clone(&backend));
        let started = Instant::now();
        let insert = client.insert(&Email::default()).await;
        assert!(
            matches!(
                insert,
                Err(ClientError::Backend(BackendError::Unavailable(_)))
            ),
            "{what}: {insert:?}"
        );
        let m = insert.unwrap_err().to_string();
        assert!(m.starts_with("backend unavailable: "), "{m}");
        let check = backend.check_schema().await;
        assert!(
            matches!(check, Err(BackendError::Unavailable(_))),
            "{what}: {check:?}"
        );
        let command = backend
            .execute(Command::Enqueue(cmd::Enqueue { jobs: vec![] }))
            .await;
        assert!(
            matches!(command, Err(BackendError::Unavailable(_))),
            "{what}: {command:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            started.elapsed()
        );
    }
    for url in ["not a url", "postgres://weir@127.0.0.1:notaport/weir"] {
        let started = Instant::now();
        match PgBackend::connect(url, 1, PgConfig::default()).await {
            Err(ConfigError::Connect(sqlx::Error::Configuration(e))) => {
                assert!(!e.to_string().is_empty());
            }
            other => panic!("{url}: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused without connecting"
        );
    }
    drop(hung);
}

/// A database Weir was never migrated into: the schema check, the client
/// and the pool all say `Misconfigured` and what to run; none of them
/// creates the schema or any table behind the operator's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_schema_is_misconfigured_and_nothing_is_created() {
    let db = test_database().await;
    let superuser = db.pool().await;
    let relations = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        )
        .fetch_one(&superuser)
        .await
        .unwrap()
    };
    let before = relations().await;
    let pool = db.app_pool().await;
    let backend = Arc::new(PgBackend::new(pool, PgConfig::default()).unwrap());
    match backend.check_schema().await {
        Err(BackendError::Misconfigured(m)) => {
            assert!(
                m.contains("no Weir schema weir") && m.contains("run `weir migrate`"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let client = Client::new(Arc::clone(&backend));
    let insert = client.insert(&Email::default()).await;
    assert!(
        matches!(
            insert,
            Err(ClientError::Backend(BackendError::Misconfigured(_)))
        ),
        "{insert:?}"
    );
    let queues = client.queues().await;
    assert!(
        matches!(
            queues,
            Err(ClientError::Backend(BackendError::Misconfigured(_)))
        ),
        "{queues:?}"
    );
    let pool = WorkerPool::new(Arc::clone(&backend), email_registry(), quick(21)).unwrap();
    let started = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(10), pool.run(std::future::pending()))
        .await
        .expect("the pool stops by itself, it does not loop");
    match run {
        Err(PoolError::Backend(BackendError::Misconfigured(m))) => {
            assert!(m.contains("run `weir migrate`"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(relations().await, before, "nothing was created");
}

async fn pretend_a_newer_release_migrated(superuser: &sqlx::PgPool) {
    sqlx::query(
        "INSERT INTO weir.schema_migrations (version, name) VALUES ($1, 'from the future')",
    )
    .bind(weir_postgres::LATEST_VERSION + 1)
    .execute(superuser)
    .await
    .unwrap();
}

/// A schema migrated by a newer release: `migrate` refuses to touch it, the
/// schema check says to upgrade, and a pool refuses to start before it
/// claims anything — the waiting job is exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused_and_left_untouched() {
    let (db, backend) = postgres().await;
    let superuser = db.pool().await;
    let client = Client::new(Arc::clone(&backend));
    let waiting = client.insert(&Email::default()).await.unwrap();
    pretend_a_newer_release_migrated(&superuser).await;
    let versions = || async {
        sqlx::query_scalar::<_, i32>("SELECT version FROM weir.schema_migrations ORDER BY version")
            .fetch_all(&superuser)
            .await
            .unwrap()
    };
    let before_versions = versions().await;
    let before_job = client.job(waiting.id).await.unwrap().unwrap();
    let latest = weir_postgres::LATEST_VERSION;
    match migrate(backend.pool(), backend.schema()).await {
        Err(MigrateError::NewerThanCode {
            schema,
            found,
            latest: l,
        }) => {
            assert_eq!((schema.as_str(), found, l), ("weir", latest + 1, latest));
        }
        other => panic!("{other:?}"),
    }
    match backend.check_schema().await {
        Err(BackendError::Misconfigured(m)) => assert!(m.contains("upgrade Weir"), "{m}"),
        other => panic!("{other:?}"),
    }
    let pool = WorkerPool::new(Arc::clone(&backend), email_registry(), quick(22)).unwrap();
    let run = tokio::time::timeout(Duration::from_secs(10), pool.run(std::future::pending()))
        .await
        .expect("the pool refuses at once");
    match run {
        Err(PoolError::Backend(BackendError::Misconfigured(m))) => {
            assert!(m.contains(&format!("version {}", latest + 1)), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(versions().await, before_versions);
    assert_eq!(client.job(waiting.id).await.unwrap().unwrap(), before_job);
    let touched: (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM weir.claimer_leases), (SELECT count(*) FROM weir.workers),
                (SELECT holder FROM weir.leader)",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert_eq!(
        touched,
        (0, 0, None),
        "no lease, presence or leadership taken"
    );
}

/// The schema dropped under a running pool: the first command that finds
/// it missing is `Misconfigured`, and that ends the run with the error
/// rather than a retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_dropped_under_a_running_pool_ends_the_run() {
    let (db, backend) = postgres().await;
    let pool = WorkerPool::new(Arc::clone(&backend), email_registry(), quick(23)).unwrap();
    let run = tokio::spawn(pool.run(std::future::pending()));
    wait_for(
        "the pool to take a claimer lease",
        Duration::from_secs(10),
        || {
            let pool = backend.pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM weir.claimer_leases")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    > 0
            }
        },
    )
    .await;
    sqlx::raw_sql("DROP SCHEMA weir CASCADE")
        .execute(&db.pool().await)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends by itself")
        .unwrap();
    assert!(
        matches!(
            ended,
            Err(PoolError::Backend(BackendError::Misconfigured(_)))
        ),
        "{ended:?}"
    );
}

// ---------------------------------------------------------------------------
// A connection lost in the middle of a batch enqueue.

/// A trigger that stalls the insert of a job of priority 77 (for `secs`),
/// so a batch is reliably caught half-inserted.
async fn stall_on_priority_77(superuser: &sqlx::PgPool, secs: f64) {
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION weir.stall() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.priority = 77 THEN PERFORM pg_sleep({secs}); END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER stall BEFORE INSERT ON weir.jobs
             FOR EACH ROW EXECUTE FUNCTION weir.stall();"
    ))
    .execute(superuser)
    .await
    .unwrap();
}

async fn unstall(superuser: &sqlx::PgPool) {
    sqlx::raw_sql("DROP TRIGGER stall ON weir.jobs; DROP FUNCTION weir.stall();")
        .execute(superuser)
        .await
        .unwrap();
}

/// Waits until the app role's statement sleeps in the trigger, that is,
/// until part of the batch is inserted and the rest is not.
async fn wait_until_stalled(superuser: &sqlx::PgPool) {
    wait_for(
        "the batch to stall mid-insert",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
             WHERE usename = 'weir_app' AND datname = current_database()
               AND wait_event = 'PgSleep'",
            )
            .fetch_one(superuser)
            .await
            .unwrap()
                > 0
        },
    )
    .await;
}

async fn terminate_the_stalled_backend(superuser: &sqlx::PgPool) {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE usename = 'weir_app' AND datname = current_database() AND wait_event = 'PgSleep'",
    )
    .fetch_one(superuser)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one stalled statement was terminated");
}

async fn stored_jobs(superuser: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM weir.jobs")
        .fetch_one(superuser)
        .await
        .unwrap()
}

fn batch(n: usize, stall_at: usize, keyed: bool) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let mut job = weir::new_job(&Email::default(), &options(), Timestamp(0)).unwrap();
            if i == stall_at {
                job.priority = weir::core::Priority(77);
            }
            if keyed {
                job.unique_key = Some(weir::core::UniqueKey::new(format!("order-{i}")).unwrap());
            }
            job
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Path {
    /// `Command::Enqueue`: one statement.
    Statement,
    /// `enqueue_bulk` without keys: `COPY` in a transaction.
    Copy,
    /// `enqueue_bulk` with keys: the statement in chunks, one transaction.
    KeyedChunks,
}

async fn enqueue_by(
    backend: &PgBackend,
    path: Path,
    jobs: Vec<NewJob>,
) -> Result<usize, BackendError> {
    let result = match path {
        Path::Statement => backend.run(cmd::Enqueue { jobs }).await?,
        Path::Copy | Path::KeyedChunks => backend.enqueue_bulk(jobs).await?,
    };
    Ok(result.expect("a valid batch").len())
}

/// The server terminates the connection while the batch is half inserted
/// (`pg_terminate_backend`): none of it is stored, and the retry stores
/// the whole batch once. The one-statement path answers `Lost`: an
/// interrupt may reach a session after its transaction committed and
/// before it answered (the history checker found one that had), so the
/// caller cannot be told "not applied". The bulk paths answer
/// `Unavailable`: they never sent `COMMIT`, so nothing was applied.
async fn terminated_mid_batch(path: Path, n: usize, stall_at: usize, batch_max: usize) {
    let world = WorldConfig {
        batch_max,
        ..weir_tests::suite_config()
    };
    let (db, backend) = postgres_with(world).await;
    let superuser = db.pool().await;
    stall_on_priority_77(&superuser, 60.0).await;
    let keyed = matches!(path, Path::KeyedChunks);
    let jobs = batch(n, stall_at, keyed);
    let enqueue = {
        let (backend, jobs) = (Arc::clone(&backend), jobs.clone());
        tokio::spawn(async move { enqueue_by(&backend, path, jobs).await })
    };
    wait_until_stalled(&superuser).await;
    terminate_the_stalled_backend(&superuser).await;
    let answer = enqueue.await.unwrap();
    eprintln!("{path:?} terminated mid-batch: {answer:?}");
    match (path, &answer) {
        (Path::Statement, Err(BackendError::Lost(m))) => {
            assert!(m.contains("terminating connection"), "{m}")
        }
        (Path::Copy | Path::KeyedChunks, Err(BackendError::Unavailable(m))) => {
            assert!(!m.is_empty())
        }
        other => panic!("{path:?}: {other:?}"),
    }
    assert_eq!(
        stored_jobs(&superuser).await,
        0,
        "{path:?}: none of the batch"
    );
    unstall(&superuser).await;
    assert_eq!(enqueue_by(&backend, path, jobs).await.unwrap(), n);
    assert_eq!(
        stored_jobs(&superuser).await,
        n as i64,
        "{path:?}: all of it, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminating_an_enqueue_statement_mid_batch_leaves_none_of_it() {
    terminated_mid_batch(Path::Statement, 2_000, 1_000, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminating_a_bulk_copy_mid_batch_leaves_none_of_it() {
    terminated_mid_batch(Path::Copy, 20_000, 10_000, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_terminating_a_keyed_bulk_mid_batch_leaves_none_of_its_chunks() {
    // Chunks of 100: chunks 0..7 are inserted (uncommitted) when the
    // eighth stalls.
    terminated_mid_batch(Path::KeyedChunks, 1_000, 750, 100).await;
}

/// A TCP proxy to `target` whose connections can all be cut at once, as a
/// network failure would: the client's socket closes without a word from
/// the server.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn proxy(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, watch) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut watch = watch.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(target).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = watch.wait_for(|cut| *cut) => {}
                }
                // Dropping both sockets here is the cut.
            });
        }
    });
    Proxy { port, cut }
}

/// The network is cut while the batch is half inserted. For the statement,
/// the client cannot know whether the server went on to commit: the error
/// is `Lost`, and the table then holds all of the batch or none of it
/// (the server finishes or aborts the statement on its own). For `COPY`,
/// `COMMIT` was never sent, so the error is `Unavailable` and none of it
/// is stored.
async fn cut_mid_batch(path: Path, n: usize, stall_at: usize) {
    let (db, direct) = postgres().await;
    let superuser = db.pool().await;
    stall_on_priority_77(&superuser, 1.0).await;
    let app: PgConnectOptions = db.url_as_app_user().parse().unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], app.get_port()));
    let proxy = proxy(target).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(app.port(proxy.port))
        .await
        .unwrap();
    let world = WorldConfig {
        batch_max: 10_000,
        ..weir_tests::suite_config()
    };
    let backend = Arc::new(PgBackend::new(pool, pg_config(world)).unwrap());
    let jobs = batch(n, stall_at, false);
    let enqueue = {
        let (backend, jobs) = (Arc::clone(&backend), jobs.clone());
        tokio::spawn(async move { enqueue_by(&backend, path, jobs).await })
    };
    wait_until_stalled(&superuser).await;
    proxy.cut.send(true).unwrap();
    let answer = enqueue.await.unwrap();
    // Let the server finish (or abort) the orphaned statement.
    wait_for(
        "the orphaned statement to end",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
             WHERE usename = 'weir_app' AND datname = current_database() AND state <> 'idle'",
            )
            .fetch_one(&superuser)
            .await
            .unwrap()
                == 0
        },
    )
    .await;
    let stored = stored_jobs(&superuser).await;
    eprintln!("{path:?} cut mid-batch: {answer:?}; {stored} of {n} stored");
    match path {
        Path::Statement => {
            assert!(matches!(answer, Err(BackendError::Lost(_))), "{answer:?}");
            assert!(
                stored == 0 || stored == n as i64,
                "all or nothing: {stored} of {n}"
            );
        }
        _ => {
            assert!(
                matches!(answer, Err(BackendError::Unavailable(_))),
                "{answer:?}"
            );
            assert_eq!(stored, 0);
        }
    }
    unstall(&superuser).await;
    assert!(direct.check_schema().await.is_ok(), "the database is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_mid_enqueue_statement_leaves_all_or_none() {
    cut_mid_batch(Path::Statement, 2_000, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_mid_bulk_copy_leaves_none() {
    cut_mid_batch(Path::Copy, 20_000, 10_000).await;
}
